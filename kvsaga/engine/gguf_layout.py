"""Checking a GGUF file's layout against its size before `gguf.GGUFReader` maps it.

The reader slices its memory map wherever the header points and reshapes the slices, so a
truncated or corrupted file fails deep inside numpy ("cannot reshape array of size 0 into
shape ..."). Walking the header here first says what is wrong instead: which metadata entry
or tensor runs past the end of the file, or which count no file of that size can hold.
Files this walk does not understand (another magic, version or byte order) are left to the
reader, which names those problems itself.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from kvsaga.engine.model_config import ModelLoadError

# GGUF value type -> bytes of one value (strings and arrays are walked instead).
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, dimension count, type, offset
_DEFAULT_ALIGNMENT = 32


class _Cursor:
    """Reads little-endian values from `buf`, raising ModelLoadError past its end."""

    def __init__(self, buf: Any, label: str) -> None:
        self.buf, self.label, self.size, self.pos = buf, label, len(buf), 0

    def take(self, n: int, what: str) -> int:
        if self.pos + n > self.size:
            raise ModelLoadError(
                f"{self.label} is truncated: {what} needs {self.pos + n} bytes, "
                f"the file has {self.size}"
            )
        start, self.pos = self.pos, self.pos + n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(what)
        start = self.take(n, what)
        return bytes(self.buf[start : start + n]).decode("utf-8", errors="replace")

    def check_count(self, count: int, min_bytes: int, what: str) -> None:
        """A count read from the file must fit in what is left of it."""
        if count * min_bytes > self.size - self.pos:
            raise ModelLoadError(
                f"{self.label} is corrupt or truncated: it claims {count} {what}, more than "
                f"the {self.size - self.pos} bytes left in the file can hold"
            )


def check_gguf_layout(path: Path) -> None:
    """Raise ModelLoadError naming the first metadata entry or tensor that does not fit in
    the file at `path`; return quietly for a well-formed file or one the reader should judge.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 and head and b"GGUF".startswith(head[:4]):
        _Cursor(head, str(path)).take(24, "the GGUF header")
    if len(head) < 8 or head[:4] != b"GGUF" or struct.unpack_from("<I", head, 4)[0] not in (2, 3):
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, str(path))
        size = cur.size
        cur.pos = 8
        tensor_count = cur.u64("the tensor count")
        kv_count = cur.u64("the metadata count")
        cur.check_count(kv_count, _MIN_KV_BYTES, "metadata entries")
        alignment = _walk_metadata(cur, kv_count)
        cur.check_count(tensor_count, _MIN_TENSOR_INFO_BYTES, "tensors")
        tensors = [_tensor_info(cur, i) for i in range(tensor_count)]
        if alignment <= 0 or alignment & (alignment - 1):
            return  # the reader names a bad general.alignment
        data_offset = -(-cur.pos // alignment) * alignment
        for name, n_bytes, offset in tensors:
            if data_offset + offset + n_bytes > size:
                raise ModelLoadError(
                    f"{path} is truncated: tensor {name!r} needs "
                    f"{data_offset + offset + n_bytes} bytes, the file has {size}"
                )


def _walk_metadata(cur: _Cursor, count: int) -> int:
    """Step over `count` metadata entries; returns general.alignment (32 when absent)."""
    alignment = _DEFAULT_ALIGNMENT
    for i in range(count):
        key = cur.string(f"metadata entry {i}'s key")
        kind = cur.u32(f"metadata {key!r}")
        if key == "general.alignment" and kind == _UINT32:
            alignment = cur.u32(f"metadata {key!r}")
        else:
            _skip_value(cur, kind, f"metadata {key!r}")
    return alignment


def _skip_value(cur: _Cursor, kind: int, what: str) -> None:
    if kind in _SCALAR_BYTES:
        cur.take(_SCALAR_BYTES[kind], what)
    elif kind == _STRING:
        cur.take(cur.u64(what), what)
    elif kind == _ARRAY:
        item = cur.u32(what)
        n = cur.u64(what)
        if item in _SCALAR_BYTES:
            cur.check_count(n, _SCALAR_BYTES[item], f"items in {what}")
            cur.take(n * _SCALAR_BYTES[item], what)
            return
        cur.check_count(n, 8 if item == _STRING else 12, f"items in {what}")
        for _ in range(n):
            _skip_value(cur, item, what)
    else:
        raise ModelLoadError(f"{cur.label} is corrupt: {what} has unknown value type {kind}")


def _tensor_info(cur: _Cursor, i: int) -> tuple[str, int, int]:
    """(name, bytes of data, offset in the data section) of the next tensor's info."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    name = cur.string(f"tensor {i}'s name")
    n_dims = cur.u32(f"tensor {name!r}")
    cur.check_count(n_dims, 8, f"dimensions of tensor {name!r}")
    n_elements = 1
    for _ in range(n_dims):
        n_elements *= cur.u64(f"tensor {name!r}")
    type_id = cur.u32(f"tensor {name!r}")
    offset = cur.u64(f"tensor {name!r}")
    try:
        block, type_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise ModelLoadError(
            f"{cur.label} is corrupt: tensor {name!r} has unknown type id {type_id}"
        ) from None
    return name, n_elements * type_bytes // block, offset
