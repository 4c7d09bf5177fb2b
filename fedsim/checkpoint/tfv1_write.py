"""The writer of fedsim.checkpoint.tfv1's format: TF v1 checkpoints of float32 tensors, checksums included, as
tf.raw_ops.Save writes them, so the coordinator writes the global checkpoint without TensorFlow (the
artifact's `restore` signature and tf.train.load_checkpoint both read it; tests check both)."""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

from fedsim.checkpoint.tfv1 import _DT_FLOAT, _MAGIC, masked_crc


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


def _varint_field(number: int, value: int) -> bytes:
    return _put_varint(number << 3) + _put_varint(value)


def _slice_key(name: str, ndims: int) -> bytes:
    """TensorFlow's EncodeTensorNameSlice for a whole tensor, in OrderedCode: 0, name, rank, then
    (start 0, length -1 = all) per dimension."""
    escaped = name.encode().replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff")
    rank = b"\x00" if ndims == 0 else bytes([1, ndims])
    return b"\x00" + escaped + b"\x00\x01" + rank + b"\x80\x7f" * ndims


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 16) -> bytes:
    """A LevelDB table block: keys prefix-compressed, a restart point every 16 entries."""
    body, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(body))
        else:
            limit = min(len(key), len(previous))
            while shared < limit and key[shared] == previous[shared]:
                shared += 1
        body += _put_varint(shared) + _put_varint(len(key) - shared) + _put_varint(len(value))
        body += key[shared:] + value
        previous = key
    for r in restarts or [0]:
        body += struct.pack("<I", r)
    body += struct.pack("<I", len(restarts) or 1)
    return bytes(body)


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
    meta, data_entries = b"", []
    for name in sorted(weights):
        a = np.asarray(weights[name])
        if a.dtype != np.float32:
            raise TypeError(f"{name}: only float32 tensors are written, got {a.dtype}")
        shape = b"".join(_field(2, _varint_field(1, d)) for d in a.shape)
        whole = b"".join(_field(1, b"") for _ in a.shape)  # one empty extent per dim = the whole tensor
        meta += _field(1, _field(1, name.encode()) + _field(2, shape) + _varint_field(3, _DT_FLOAT) + _field(4, whole))
        values = _field(5, np.ascontiguousarray(a, dtype="<f4").tobytes())  # packed float_val
        saved_slice = _field(1, name.encode()) + _field(2, whole) + _field(3, values)
        data_entries.append((_slice_key(name, a.ndim), _field(2, saved_slice)))
    meta_value = _field(1, meta + _field(2, _varint_field(1, 1)))  # versions { producer: 1 }
    entries = sorted([(b"", meta_value), *data_entries])

    out = bytearray()

    def add_block(contents: bytes) -> bytes:
        handle = _put_varint(len(out)) + _put_varint(len(contents))
        trailer = b"\x00"  # no compression
        out.extend(contents + trailer + struct.pack("<I", masked_crc(contents + trailer)))
        return handle

    groups = [entries] if one_block else [[e] for e in entries]
    index = []
    for i, group in enumerate(groups):
        handle = add_block(_block(group))
        # The index key of a block: >= its last key and < the next block's first (its last key
        # serves); after the last block, the shortest key past it, as LevelDB writes it.
        index.append((group[-1][0] if i + 1 < len(groups) else _short_successor(group[-1][0]), handle))
    meta_handle = add_block(_block([]))
    index_handle = add_block(_block(index))
    footer = meta_handle + index_handle
    out += footer + b"\x00" * (40 - len(footer)) + struct.pack("<Q", _MAGIC)
    return bytes(out)
