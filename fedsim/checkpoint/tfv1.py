"""A numpy reader and writer for the TF v1 checkpoints the artifact's `save` signature writes.

Every device checkpoint is read once per round, so tf.train.load_checkpoint's ~0.8 ms per file
(mostly copying float_val element by element) was the largest cost a host added to the TFLite work.
This reader handles exactly what tf.raw_ops.Save writes for whole float32 tensors: a LevelDB-format
table, uncompressed, whose entries are SavedTensorSlices protos with the values packed in
TensorProto.float_val (or tensor_content). Anything else raises UnsupportedCheckpoint, and the caller
falls back to TensorFlow's reader; a file that is not a well-formed table raises ValueError, and
one whose bytes do not match a block's crc32c checksum raises ChecksumError (a ValueError): every
block is verified, on the full parse and on the fast path alike (TensorFlow's reader does not verify
them by default, so a flipped bit in a weight would otherwise be averaged in).

fedsim.checkpoint.tfv1_write writes the same format for float32 tensors.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

import crc32c
import numpy as np

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_DT_FLOAT = 1


class UnsupportedCheckpoint(Exception):
    """Well-formed, but uses a feature this reader leaves to TensorFlow (slices, other dtypes...)."""


class ChecksumError(ValueError):
    """A block's bytes do not match the crc32c checksum stored after it: the file was altered."""


def masked_crc(data: bytes | memoryview) -> int:
    """The table format's checksum: crc32c, rotated and offset ("masked") as LevelDB stores it."""
    return mask_crc(crc32c.crc32c(data))


def mask_crc(crc: int) -> int:
    return ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF


def _verify_block(data: memoryview, offset: int, size: int) -> None:
    """The block's contents and its compression-type byte against the 4 checksum bytes after them."""
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if masked_crc(data[offset : offset + size + 1]) != stored:
        raise ChecksumError(f"block at byte {offset} fails its crc32c checksum (the file was altered or corrupted)")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview):
    """The top-level fields of a protobuf message: ints for varints, memoryviews for bytes."""
    pos = 0
    value: int | bytes | memoryview
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = bytes(buf[pos : pos + 4]), pos + 4
        elif wire == 1:
            value, pos = bytes(buf[pos : pos + 8]), pos + 8
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield number, wire, value


def _block_entries(data: memoryview, offset: int, size: int) -> list[tuple[bytes, memoryview]]:
    if offset + size + 5 > len(data):
        raise ValueError("block past end of file")
    _verify_block(data, offset, size)
    if data[offset + size] != 0:
        raise UnsupportedCheckpoint("compressed block")
    block = data[offset : offset + size]
    (restarts,) = struct.unpack_from("<I", block, size - 4)
    end = size - 4 * (restarts + 1)
    if end < 0:
        raise ValueError("bad restart array")
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + bytes(block[pos : pos + non_shared])
        pos += non_shared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    if pos != end:
        raise ValueError("block entries overrun")
    return entries


def _shape(shape_proto: memoryview) -> tuple[int, ...]:
    dims = []
    for number, _, dim in _fields(shape_proto):
        if number == 2:  # TensorShapeProto.dim
            size = 0
            for n, _, v in _fields(dim):
                if n == 1:
                    size = v
            dims.append(size)
    return tuple(dims)


@functools.lru_cache(maxsize=64)
def _meta_shapes(meta: bytes) -> dict[str, tuple[int, ...]]:
    """name -> shape from the table's meta entry (SavedTensorSlices.meta). Every checkpoint of one
    model has the same meta entry, so it is parsed once and looked up after that."""
    shapes = {}
    for number, _, field in _fields(memoryview(meta)):
        if number != 1:
            continue
        for n, _, tensor in _fields(field):
            if n != 1:
                continue
            name, shape, dtype, slices = "", tuple[int, ...](), 0, 0
            for tn, _, tv in _fields(tensor):
                if tn == 1:
                    name = bytes(tv).decode()
                elif tn == 2:
                    shape = _shape(tv)
                elif tn == 3:
                    dtype = tv
                elif tn == 4:
                    slices += 1
            if dtype != _DT_FLOAT or slices != 1:
                raise UnsupportedCheckpoint(f"{name}: dtype {dtype}, {slices} slices")
            shapes[name] = shape
    return shapes


@dataclass(frozen=True)
class _Layout:
    """Where a model's checkpoint keeps its floats. Every checkpoint of one model has the same bytes
    outside its float values and data-block checksums, so after one full parse the next ones only
    compare those fixed bytes and take the floats at the same offsets."""

    fixed: list[tuple[int, bytes]]  # (offset, the bytes that must be there)
    tensors: list[tuple[str, int, int, tuple[int, ...]]]  # (name, byte offset, float count, shape)
    blocks: list[tuple[int, int]]  # (offset, size) of each data block: their checksums change with the floats


_LAYOUTS: dict[int, _Layout] = {}  # by file length


def cached_layout(size: int) -> _Layout | None:
    """The layout of the checkpoints of `size` bytes that read_tfv1 has parsed, if any."""
    return _LAYOUTS.get(size)


def read_tfv1(data: bytes) -> dict[str, np.ndarray]:
    """TF v1 checkpoint bytes -> {name: float32 array}; the arrays are read-only views into `data`."""
    layout = _LAYOUTS.get(len(data))
    if layout is not None and all(data[o : o + len(b)] == b for o, b in layout.fixed):
        view = memoryview(data)
        for offset, size in layout.blocks:
            _verify_block(view, offset, size)
        return {
            name: np.frombuffer(data, dtype="<f4", count=count, offset=offset).reshape(shape)
            for name, offset, count, shape in layout.tensors
        }
    out, variable, blocks = _parse(data)
    fixed, tensors, pos = [], [], 0
    base = np.frombuffer(data, dtype=np.uint8).ctypes.data if data else 0
    regions = sorted(variable + [(out[n].ctypes.data - base, out[n].nbytes) for n in out])
    for start, size in regions:
        fixed.append((pos, data[pos:start]))
        pos = start + size
    fixed.append((pos, data[pos:]))
    for name, a in out.items():
        tensors.append((name, a.ctypes.data - base, a.size, a.shape))
    if len(_LAYOUTS) >= 16:
        _LAYOUTS.clear()
    _LAYOUTS[len(data)] = _Layout(fixed, tensors, blocks)
    return out


def _parse(data: bytes) -> tuple[dict[str, np.ndarray], list[tuple[int, int]], list[tuple[int, int]]]:
    """The full parse, every block's checksum verified: the tensors, the (offset, size) of every
    data-block checksum, and the (offset, size) of every data block."""
    buf = memoryview(data)
    if len(buf) < _FOOTER:
        raise ValueError("shorter than a table footer")
    footer = buf[len(buf) - _FOOTER :]
    (magic,) = struct.unpack_from("<Q", footer, _FOOTER - 8)
    if magic != _MAGIC:
        raise ValueError("no table magic number at the end")
    pos = 0
    metaindex_offset, pos = _varint(footer, pos)
    metaindex_size, pos = _varint(footer, pos)
    _block_entries(buf, metaindex_offset, metaindex_size)  # empty in these files; read for its checksum
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)

    shapes: dict[str, tuple[int, ...]] = {}
    values: dict[str, np.ndarray] = {}
    checksums: list[tuple[int, int]] = []
    blocks: list[tuple[int, int]] = []
    for _, handle in _block_entries(buf, index_offset, index_size):
        block_offset, p = _varint(handle, 0)
        block_size, _ = _varint(handle, p)
        checksums.append((block_offset + block_size + 1, 4))  # after the compression-type byte
        blocks.append((block_offset, block_size))
        for key, value in _block_entries(buf, block_offset, block_size):
            if key == b"":
                shapes.update(_meta_shapes(bytes(value)))
                continue
            for number, _, field in _fields(value):
                if number == 2:  # SavedTensorSlices.data -> SavedSlice
                    name, array = "", None
                    for sn, _, sv in _fields(field):
                        if sn == 1:
                            name = bytes(sv).decode()
                        elif sn == 3:  # TensorProto
                            for pn, wire, pv in _fields(sv):
                                if pn in (4, 5) and wire == 2:  # tensor_content / packed float_val
                                    array = np.frombuffer(pv, dtype="<f4")
                                elif pn == 5:
                                    raise UnsupportedCheckpoint("unpacked float_val")
                    if array is None:
                        raise UnsupportedCheckpoint(f"{name}: no float data")
                    values[name] = array
    if set(shapes) != set(values):
        raise ValueError(f"tensors listed {sorted(shapes)} but stored {sorted(values)}")
    out = {}
    for name, shape in shapes.items():
        flat = values[name]
        if flat.size != int(np.prod(shape)):
            raise ValueError(f"{name}: shape {list(shape)} but {flat.size} values")
        out[name] = flat.reshape(shape)  # a read-only view into `data`: no copy on the hot path
    return out, checksums, blocks
