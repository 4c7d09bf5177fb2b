"""The writer of fedsim.checkpoint.tfv1's format: TF v1 checkpoints of float32 tensors, checksums included, as
tf.raw_ops.Save writes them, so the coordinator writes the global checkpoint without TensorFlow (the
artifact's `restore` signature and tf.train.load_checkpoint both read it; tests check both)."""

from __future__ import annotations

import struct
from collections.abc import Mapping

import crc32c
import numpy as np

from fedsim.checkpoint.tfv1 import _DT_FLOAT, _MAGIC, mask_crc

Parts = list[bytes | memoryview]  # bytes written one after another (joined once, at the end)


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _put_varint(number << 3 | 2) + _put_varint(len(payload)) + payload


def _field_parts(number: int, parts: Parts) -> Parts:
    """A length-delimited protobuf field whose payload is `parts` (not joined)."""
    return [_put_varint(number << 3 | 2) + _put_varint(_length(parts)), *parts]


def _varint_field(number: int, value: int) -> bytes:
    return _put_varint(number << 3) + _put_varint(value)


def _slice_key(name: str, ndims: int) -> bytes:
    """TensorFlow's EncodeTensorNameSlice for a whole tensor, in OrderedCode: 0, name, rank, then
    (start 0, length -1 = all) per dimension."""
    escaped = name.encode().replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff")
    rank = b"\x00" if ndims == 0 else bytes([1, ndims])
    return b"\x00" + escaped + b"\x00\x01" + rank + b"\x80\x7f" * ndims


def _block(entries: list[tuple[bytes, Parts]], restart_interval: int = 16) -> Parts:
    """A LevelDB table block, as pieces to write one after another: keys prefix-compressed, a restart
    point every 16 entries (a value is itself pieces: a tensor's floats are never copied here)."""
    out: Parts = []
    size, restarts, previous = 0, [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(size)
        else:
            limit = min(len(key), len(previous))
            while shared < limit and key[shared] == previous[shared]:
                shared += 1
        length = _length(value)
        head = _put_varint(shared) + _put_varint(len(key) - shared) + _put_varint(length) + key[shared:]
        out += [head, *value]
        size += len(head) + length
        previous = key
    out.append(b"".join(struct.pack("<I", r) for r in restarts or [0]) + struct.pack("<I", len(restarts) or 1))
    return out


def _length(parts: Parts) -> int:
    return sum(len(p) for p in parts)


def _short_successor(key: bytes) -> bytes:
    """The shortest key >= `key` (LevelDB's FindShortSuccessor), used as the index entry."""
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


def write_tfv1(weights: Mapping[str, np.ndarray], one_block: bool = False) -> bytes:
    """{name: float32 array} -> TF v1 checkpoint bytes.

    By default every entry (the meta entry, then each tensor) gets a data block of its own. A Restore
    op reads the meta entry, then its tensor's entry, and each read loads a whole block: with
    tf.raw_ops.Save's single block, restoring a 400 KB model reads those 400 KB twice per Restore op.
    Readers find blocks through the index, so the file is as valid (tf.train.load_checkpoint, the
    artifact's restore signature and read_tfv1 all read it; tests check them). `one_block=True` writes
    byte for byte what tf.raw_ops.Save writes.
    """
    meta = b""
    data_entries: list[tuple[bytes, Parts]] = []
    for name in sorted(weights):
        a = np.asarray(weights[name])
        if a.dtype != np.float32:
            raise TypeError(f"{name}: only float32 tensors are written, got {a.dtype}")
        shape = b"".join(_field(2, _varint_field(1, d)) for d in a.shape)
        whole = b"".join(_field(1, b"") for _ in a.shape)  # one empty extent per dim = the whole tensor
        meta += _field(1, _field(1, name.encode()) + _field(2, shape) + _varint_field(3, _DT_FLOAT) + _field(4, whole))
        floats = np.ascontiguousarray(a, dtype="<f4").reshape(-1).view(np.uint8)
        values = _field_parts(5, [floats.data])  # packed float_val
        saved_slice = [_field(1, name.encode()) + _field(2, whole), *_field_parts(3, values)]
        data_entries.append((_slice_key(name, a.ndim), _field_parts(2, saved_slice)))
    meta_value = _field(1, meta + _field(2, _varint_field(1, 1)))  # versions { producer: 1 }
    meta_entry: Parts = [meta_value]
    entries = sorted([(b"", meta_entry), *data_entries], key=lambda e: e[0])

    out: Parts = []
    at = 0

    def add_block(contents: Parts) -> bytes:
        nonlocal at
        length = _length(contents)
        handle = _put_varint(at) + _put_varint(length)
        trailer = b"\x00"  # no compression
        crc = 0
        for part in [*contents, trailer]:
            crc = crc32c.crc32c(part, crc)
        out.extend([*contents, trailer + struct.pack("<I", mask_crc(crc))])
        at += length + 5
        return handle

    groups = [entries] if one_block else [[e] for e in entries]
    index: list[tuple[bytes, Parts]] = []
    for i, group in enumerate(groups):
        handle = add_block(_block(group))
        # The index key of a block: >= its last key and < the next block's first (its last key
        # serves); after the last block, the shortest key past it, as LevelDB writes it.
        index.append((group[-1][0] if i + 1 < len(groups) else _short_successor(group[-1][0]), [handle]))
    meta_handle = add_block(_block([]))
    index_handle = add_block(_block(index))
    footer = meta_handle + index_handle
    out.append(footer + b"\x00" * (40 - len(footer)) + struct.pack("<Q", _MAGIC))
    return b"".join(out)
