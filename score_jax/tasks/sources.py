"""Where task records come from: local JSON Lines / JSON files, or any TFDS dataset.

`read_records` reads `.jsonl`, `.jsonl.gz` and `.json` (a list of objects) and fails with the
file, line and problem (malformed JSON, a missing field, an empty file). Tasks read their
default files with it; a `RecordSource` (`FileSource`, `TFDSSource`) lets a task read a split
from elsewhere instead (tasks take `source=`).

`TFDSSource` reads through `tfds.data_source` (random access over ArrayRecord files), which
needs neither TensorFlow nor a network: `pip install tensorflow-datasets array-record`. It is
imported only when a `TFDSSource` is read. A dataset prepared in the TFRecord format cannot be
read this way; prepare it with `file_format="array_record"`. TFDS stores examples in a hashed
order, so records do not come back in the order they were generated.
"""

from __future__ import annotations

import gzip
import json
import pathlib
from typing import Any, Mapping, Protocol, Sequence


def _check_fields(rec: Any, required: Sequence[str], where: str) -> dict:
  if not isinstance(rec, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
  for field in required:
    if field not in rec:
      raise ValueError(f"{where}: missing field {field!r} (the record has {sorted(rec)}); "
                       f"add it or fix the file")
  return rec


def has_type(value: Any, kind: type) -> bool:
  """Whether a record field holds a `kind` (`list`: a list of strings; a bool is no int)."""
  if kind is list:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
  return isinstance(value, kind) and not isinstance(value, bool)


def _read_jsonl(path: pathlib.Path, required: Sequence[str]) -> list[tuple[int, dict]]:
  opener = gzip.open if path.name.endswith(".gz") else open
  records = []
  lineno = 0
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                           "each line must be one JSON object") from None
        records.append((lineno, _check_fields(rec, required, f"{path}:{lineno}")))
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}:{lineno + 1}: not UTF-8 text ({e.reason})") from None
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    if isinstance(e, FileNotFoundError):
      raise
    raise ValueError(f"{path}: cannot read it as {'gzip ' if opener is gzip.open else ''}"
                     f"JSON Lines: {e}") from None
  return records


def _read_json_list(path: pathlib.Path, required: Sequence[str]) -> list[tuple[int, dict]]:
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e.reason})") from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
  # Line of each element, for error messages: decode the list again element by element.
  decoder, lines, pos = json.JSONDecoder(), [], text.index("[") + 1
  for _ in data:
    while text[pos] in " \t\r\n,":
      pos += 1
    lines.append(text.count("\n", 0, pos) + 1)
    _, pos = decoder.raw_decode(text, pos)
  return [(line, _check_fields(rec, required, f"{path}:{line} (record {i})"))
          for i, (rec, line) in enumerate(zip(data, lines))]


def read_numbered_records(path: str | pathlib.Path,
                          required_fields: Sequence[str] = ()) -> list[tuple[int, dict]]:
  """(line number, record) for all records of a `.jsonl`, `.jsonl.gz` or `.json` file.

  A `.json` file holds one list of objects; the line is where each object starts.

  Args:
    path: the file.
    required_fields: fields every record must have.

  Raises:
    FileNotFoundError: no such file.
    ValueError: unknown extension, malformed JSON, a record that is not an object or lacks a
      required field (the message names file, line and field), or no records at all.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file (check the task's data_dir)")
  name = path.name.lower()
  if name.endswith((".jsonl", ".jsonl.gz")):
    records = _read_jsonl(path, required_fields)
  elif name.endswith(".json"):
    records = _read_json_list(path, required_fields)
  else:
    raise ValueError(f"{path}: unknown format; expected .jsonl, .jsonl.gz or .json")
  if not records:
    raise ValueError(f"{path}: no records (the file is empty)")
  return records


def read_records(path: str | pathlib.Path, required_fields: Sequence[str] = ()) -> list[dict]:
  """All records of a `.jsonl`, `.jsonl.gz` or `.json` (list of objects) file.

  Errors as in `read_numbered_records` (they name file, line and field).
  """
  return [rec for _, rec in read_numbered_records(path, required_fields)]


class RecordSource(Protocol):
  """Records of one split from somewhere; tasks accept these as `source=`."""

  split: str

  def read(self, required_fields: Sequence[str] = ()) -> list[dict]:
    """All records, each with at least `required_fields`; raises ValueError if none."""


class FileSource:
  """A local `.jsonl` / `.jsonl.gz` / `.json` file serving as the task split `split`."""

  def __init__(self, path: str | pathlib.Path, split: str):
    self.path, self.split = pathlib.Path(path), split

  def read(self, required_fields: Sequence[str] = ()) -> list[dict]:
    return read_records(self.path, required_fields)

  def __repr__(self) -> str:
    return f"FileSource({str(self.path)!r}, split={self.split!r})"


def _to_python(value: Any) -> Any:
  """TFDS/numpy values as plain Python: bytes -> str, numpy scalars/arrays -> numbers/lists."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, dict):
    return {k: _to_python(v) for k, v in value.items()}
  if hasattr(value, "tolist"):  # numpy scalar or array
    return _to_python(value.tolist())
  if isinstance(value, list):
    return [_to_python(v) for v in value]
  return value


class TFDSSource:
  """A TFDS dataset split mapped onto a task's record fields.

  Args:
    name: TFDS name, e.g. "gsm8k" or "my_math:1.0.0".
    split: TFDS split, e.g. "test" or "train[:90%]"; also the task split this source serves
      (see the task's `source=`).
    field_map: task field -> TFDS feature (nested features as "a/b"); task fields not in
      the map are looked up under their own name.
    data_dir: where the prepared dataset lives (None: TFDS's default).
    download: let TFDS download and prepare the dataset if it is not there yet.
  """

  def __init__(self, name: str, split: str, field_map: Mapping[str, str] | None = None,
               data_dir: str | pathlib.Path | None = None, *, download: bool = False):
    self.name, self.split = name, split
    self.field_map = dict(field_map or {})
    self.data_dir = None if data_dir is None else str(data_dir)
    self.download = download

  def __repr__(self) -> str:
    return f"TFDSSource({self.name!r}, split={self.split!r}, data_dir={self.data_dir!r})"

  def _open(self):
    try:
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(f"{self!r} needs TFDS: pip install tensorflow-datasets array-record "
                        f"({e})") from e
    try:
      return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                              download=self.download)
    except Exception as e:  # TFDS raises many kinds; all mean "cannot open this split"
      msg = str(e) if len(str(e)) < 300 else str(e)[:300] + "..."
      raise ValueError(
          f"{self!r}: cannot open it with tfds.data_source ({type(e).__name__}: {msg}). Is it "
          "prepared under data_dir in the array_record format (download_and_prepare("
          "file_format='array_record'))?") from e

  def read(self, required_fields: Sequence[str] = ()) -> list[dict]:
    """All examples of the split as task records (`field_map` applied)."""
    ds = self._open()
    fields = list(dict.fromkeys([*self.field_map, *required_fields]))
    records = []
    for i in range(len(ds)):
      example = ds[i]
      rec = {}
      for field in fields:
        value: Any = example
        feature = self.field_map.get(field, field)
        for part in feature.split("/"):
          if not isinstance(value, Mapping) or part not in value:
            raise ValueError(
                f"{self!r} example {i}: no feature {feature!r} for task field {field!r} "
                f"(features: {sorted(example)}); fix field_map")
          value = value[part]
        rec[field] = _to_python(value)
      records.append(rec)
    if not records:
      raise ValueError(f"{self!r}: the split has no examples")
    return records
