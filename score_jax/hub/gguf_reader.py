"""A fast reader of GGUF headers: metadata, tensor infos and memory-mapped tensor data.

  header = read_gguf("model.gguf")
  header.metadata["general.architecture"]     # "gemma3"
  header.tensors["blk.0.attn_q.weight"]       # TensorInfo(name, ggml_type, shape, ...)
  raw = header.raw("blk.0.attn_q.weight")     # what gguf.quants.dequantize takes

Why not `gguf.GGUFReader`: it builds a numpy view for every part of every field, which
for a 262,144-token vocabulary takes ~15 s; this reads the same file in well under a
second by parsing the (simple, documented) layout with `struct` and skipping the
contents of long string arrays (the tokenizer's, which transformers reads itself):

  magic "GGUF", version u32 (2 or 3), tensor count u64, metadata count u64,
  metadata: key (u64 length + utf-8), value type u32, value,
  tensor infos: name, n_dims u32, dims u64 * n_dims (innermost first), ggml type u32,
                offset u64 (from the data start),
  data start: the end of the infos rounded up to `general.alignment` (default 32).
All little-endian. Raw tensors are laid out as `gguf.GGUFReader` gives them (its
`ReaderTensor.data`), so `gguf.quants.dequantize` reads them unchanged.
"""

from __future__ import annotations

import dataclasses
import pathlib
import struct
from typing import Any

import numpy as np

MAGIC = b"GGUF"
# GGUF value type -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
# ggml types stored as plain numpy items (all others are raw bytes)
_PLAIN = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8,
          "I16": np.int16, "I32": np.int32, "I64": np.int64}
LONG_STRING_ARRAY = 1024     # string arrays longer than this are kept as their length


@dataclasses.dataclass(frozen=True)
class SkippedStrings:
  """A long string array (e.g. tokenizer.ggml.tokens) whose contents were not decoded."""
  count: int


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  ggml_type: int            # gguf.GGMLQuantizationType value
  shape: tuple[int, ...]    # ggml order (innermost first), as in the file
  offset: int               # absolute byte offset of the data


class _Cursor:
  def __init__(self, buf: memoryview, path: pathlib.Path):
    self.buf, self.pos, self.path = buf, 0, path

  def unpack(self, fmt: str) -> Any:
    try:
      (value,) = struct.unpack_from(fmt, self.buf, self.pos)
    except struct.error as e:
      raise ValueError(f"{self.path} is truncated (at byte {self.pos}): {e}") from e
    self.pos += struct.calcsize(fmt)
    return value

  def string(self) -> str:
    n = self.unpack("<Q")
    if self.pos + n > len(self.buf):
      raise ValueError(f"{self.path} is truncated (a string at byte {self.pos} runs past the end)")
    s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
    self.pos += n
    return s

  def value(self, vtype: int) -> Any:
    if vtype in _SCALARS:
      return self.unpack(_SCALARS[vtype])
    if vtype == _STRING:
      return self.string()
    if vtype == _ARRAY:
      item, count = self.unpack("<I"), self.unpack("<Q")
      if item in _NUMPY:
        dtype = np.dtype(_NUMPY[item]).newbyteorder("<")
        end = self.pos + count * dtype.itemsize
        values = np.frombuffer(self.buf[self.pos:end], dtype).tolist()
        self.pos = end
        return values
      if item == _STRING and count > LONG_STRING_ARRAY:
        for _ in range(count):
          n = self.unpack("<Q")           # (not `pos += unpack()`: unpack moves pos)
          self.pos += n
        return SkippedStrings(count)
      return [self.value(item) for _ in range(count)]
    raise ValueError(f"{self.path}: unknown GGUF value type {vtype} at byte {self.pos}")


class GGUFHeader:
  """Metadata and tensor infos of a GGUF file; tensor data stays memory-mapped."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    try:
      self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
      raise ValueError(f"{self.path} is not a readable GGUF file: {e}") from e
    data = np.asarray(self._map)        # a plain view: slicing it skips memmap's overhead
    cur = _Cursor(memoryview(data), self.path)
    if bytes(data[:4]) != MAGIC:
      raise ValueError(f"{self.path} is not a GGUF file (it does not start with b'GGUF')")
    cur.pos = 4
    self.version = cur.unpack("<I")
    if self.version not in (2, 3):
      raise ValueError(f"{self.path}: GGUF version {self.version} is not supported (2 or 3; "
                       "a big-endian file reads as a huge version)")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    self.metadata: dict[str, Any] = {}
    for _ in range(n_kv):
      key = cur.string()
      self.metadata[key] = cur.value(cur.unpack("<I"))
    infos = []
    for _ in range(n_tensors):
      name = cur.string()
      n_dims = cur.unpack("<I")
      shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
      infos.append((name, shape, cur.unpack("<I"), cur.unpack("<Q")))
    align = int(self.metadata.get("general.alignment", 32))
    start = -(-cur.pos // align) * align
    self.tensors: dict[str, TensorInfo] = {}
    for name, shape, ggml_type, offset in infos:
      if name in self.tensors:
        raise ValueError(f"{self.path}: tensor {name} appears twice")
      self.tensors[name] = TensorInfo(name, ggml_type, shape, start + offset)
    self._data = data

  def raw(self, name: str) -> np.ndarray:
    """Tensor `name` as stored: numpy items for F32 / F16 / I*, else bytes [..., row bytes]."""
    import gguf  # pylint: disable=import-outside-toplevel
    info = self.tensors[name]
    qtype = gguf.GGMLQuantizationType(info.ggml_type)
    shape = tuple(reversed(info.shape))
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    nbytes = int(np.prod(shape)) * type_size // block
    if info.offset + nbytes > self._data.size:
      raise ValueError(f"{self.path} is truncated: tensor {name} ends at byte "
                       f"{info.offset + nbytes}, past the end ({self._data.size})")
    raw = self._data[info.offset:info.offset + nbytes]
    if qtype.name in _PLAIN:
      return raw.view(_PLAIN[qtype.name]).reshape(shape)
    return raw.reshape(gguf.quants.quant_shape_to_byte_shape(shape, qtype))


def read_gguf(path: str | pathlib.Path) -> GGUFHeader:
  """The header of the GGUF file at `path` (see `GGUFHeader`)."""
  return GGUFHeader(path)
