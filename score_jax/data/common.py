"""Shared plumbing of `python -m score_jax.data prepare NAME --out DIR [--from PATH]`.

Finding the upstream files under a local copy (or a Hugging Face Hub snapshot), reading them
(JSON Lines, gzip, JSON lists, Parquet), serialising records the way the upstream files are
written (`json.dumps` per line, "\\n" after each), and writing one output folder with its
`SOURCE.txt` and `SHA256SUMS`. Every failure is a `DataError`: one line that names the file
and the fix.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import hashlib
import json
import pathlib
import re
from typing import Iterable, Sequence

from score_jax.tasks import sources


class DataError(ValueError):
  """A data problem, as one line naming the file and the fix."""


@dataclasses.dataclass
class OutFile:
  """One file of an output folder: its bytes, record count and reference sha256 if known."""
  name: str
  data: bytes
  records: int
  reference: str | None = None     # sha256 of the same file built from the documented upstream
  documented: int | None = None    # the documented record count

  @property
  def sha256(self) -> str:
    return hashlib.sha256(self.data).hexdigest()


@dataclasses.dataclass
class Folder:
  """One output folder (`<out>/<name>/`): files, the task's splits and where it came from."""
  name: str
  files: list[OutFile]
  splits: list[str]                # lines: what the tasks read from it, with counts
  source: list[str]                # lines: where the records came from
  license: str = ""


def holdout_split(task: str, n: int) -> str:
  """What a train file of `n` problems gives the task: train + 500 held out for validation."""
  if n > 500:
    return f"task {task!r} splits 'train' ({n - 500}) + 'validation' (500, held out)"
  return (f"too few for task {task!r}'s 'train' / 'validation' splits (500 are held out for "
          "validation: it needs more than 500)")


def sha256_file(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def find(roots: Sequence[pathlib.Path], pattern: str) -> list[pathlib.Path]:
  """Files under `roots` (or the roots themselves) whose path ends with regex `pattern`.

  The pattern is matched against the path relative to its root, in POSIX form, anchored at
  the end and at a "/" (or the start); results are sorted by path.
  """
  rx = re.compile(rf"(^|/){pattern}$")
  found: list[pathlib.Path] = []
  for root in roots:
    if root.is_file():
      if rx.search(root.name):
        found.append(root)
      continue
    if not root.is_dir():
      continue
    for p in sorted(root.rglob("*")):
      if p.is_file() and rx.search(p.relative_to(root).as_posix()):
        found.append(p)
  return sorted(dict.fromkeys(found))


def find_one(roots: Sequence[pathlib.Path], pattern: str, what: str) -> pathlib.Path | None:
  """The one file matching `pattern` (None if none); several is an error naming them."""
  found = find(roots, pattern)
  if len(found) > 1:
    raise DataError(f"several files could be {what}: {[str(p) for p in found[:4]]}; pass "
                    "--from the one folder (or file) that holds the upstream copy")
  return found[0] if found else None


def read_jsonl_bytes(data: bytes, where: str) -> list[dict]:
  """Records of JSON Lines bytes; errors name `where` and the line."""
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{where}: not UTF-8 text ({e.reason}); is it the upstream file?") from None
  records = []
  for lineno, line in enumerate(text.split("\n"), 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{where}:{lineno}: malformed JSON ({e.msg}); re-download the upstream "
                      "file") from None
    if not isinstance(rec, dict):
      raise DataError(f"{where}:{lineno}: expected a JSON object per line")
    records.append(rec)
  return records


def raw_bytes(path: pathlib.Path) -> bytes:
  """The file's bytes, gunzipped if it is a .gz file."""
  data = path.read_bytes()
  if path.name.endswith(".gz"):
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise DataError(f"{path}: not a valid gzip file ({e}); re-download it") from None
  return data


def read_records(path: pathlib.Path) -> list[dict]:
  """Records of a .jsonl / .jsonl.gz / .json (list) / .parquet file."""
  name = path.name.lower()
  if name.endswith(".parquet"):
    return read_parquet([path])
  data = raw_bytes(path)
  if name.endswith(".json"):
    try:
      records = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise DataError(f"{path}: not a JSON file ({e}); re-download the upstream file") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
      raise DataError(f"{path}: expected a JSON list of objects")
    return records
  return read_jsonl_bytes(data, str(path))


def read_parquet(paths: Iterable[pathlib.Path]) -> list[dict]:
  """Rows of Parquet files (the Hub's format), in file then row order, as plain dicts."""
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError("reading the Hub's Parquet files needs pyarrow: pip install pyarrow (or "
                    "pass --from a local copy of the upstream .jsonl files)") from None
  rows: list[dict] = []
  for path in paths:
    try:
      rows.extend(pq.read_table(path).to_pylist())
    except Exception as e:  # pyarrow raises several kinds for a bad file
      raise DataError(f"{path}: cannot read it as Parquet ({type(e).__name__}: {e}); delete it "
                      "and download again") from None
  return rows


def check_fields(records: Sequence[dict], fields: dict[str, type], where: str) -> None:
  """Every record has `fields` with the given types (list means a list of strings)."""
  for i, rec in enumerate(records):
    for field, kind in fields.items():
      if field not in rec:
        raise DataError(f"{where} record {i}: missing field {field!r} (has {sorted(rec)}); "
                        "is it the upstream file?")
      value = rec[field]
      if not sources.has_type(value, kind):
        raise DataError(f"{where} record {i}: field {field!r} should be "
                        f"{'a list of strings' if kind is list else kind.__name__}, got "
                        f"{value!r:.60}")


def jsonl_bytes(records: Iterable[dict], keys: Sequence[str] | None = None) -> bytes:
  """One `json.dumps(record)` per line, each followed by "\\n" (the upstream files' form);
  with `keys`, each record is written with exactly these keys in this order."""
  lines = []
  for rec in records:
    if keys is not None:
      rec = {k: rec[k] for k in keys}
    lines.append(json.dumps(rec) + "\n")
  return "".join(lines).encode("utf-8")


def hub_snapshot(repo_id: str, patterns: Sequence[str], dataset: str) -> pathlib.Path:
  """A local snapshot of the files `patterns` of Hub dataset `repo_id` (cache or download)."""
  fix = (f"or pass --from LOCAL_PATH with a copy of the upstream files (python -m "
         f"score_jax.data prepare {dataset} --out DIR --from LOCAL_PATH)")
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError(f"downloading {repo_id} needs huggingface_hub (pip install "
                    f"huggingface_hub), {fix}") from None
  try:
    path = huggingface_hub.snapshot_download(repo_id=repo_id, repo_type="dataset",
                                             allow_patterns=list(patterns))
  except Exception as e:  # network, offline mode, missing cache, gated repo, ...
    first = " ".join(str(e).split())[:120]
    raise DataError(f"cannot get {repo_id} from the Hugging Face Hub: no network, or "
                    f"HF_HUB_OFFLINE=1 and not in the cache {huggingface_hub.constants.HF_HUB_CACHE}"
                    f" ({type(e).__name__}: {first}...); connect and retry, {fix}") from None
  return pathlib.Path(path)


def describe_root(root: pathlib.Path) -> str:
  """`root`, with the Hub repo and commit when it is a Hub cache snapshot."""
  parts = root.parts
  if "snapshots" in parts:
    i = parts.index("snapshots")
    repo = parts[i - 1]
    if repo.startswith("datasets--") and i + 1 < len(parts):
      return (f"Hugging Face Hub dataset {repo[len('datasets--'):].replace('--', '/')} "
              f"revision {parts[i + 1]}")
  return str(root)


def check_writable(out: pathlib.Path, folders: Sequence[Folder], force: bool) -> None:
  """Refuses to write into a non-empty output folder unless `force`."""
  if out.exists() and not out.is_dir():
    raise DataError(f"--out {out} is a file; give a folder (the data root, "
                    "config.task.data_dir)")
  for folder in folders:
    target = out / folder.name
    if target.exists() and not target.is_dir():
      raise DataError(f"{target} is a file; remove it or choose another --out")
    if target.is_dir() and any(target.iterdir()) and not force:
      raise DataError(f"{target} is not empty; pass --force to overwrite it, or choose "
                      "another --out")


def write_folder(out: pathlib.Path, folder: Folder, command: str) -> list[str]:
  """Writes the files, SOURCE.txt and SHA256SUMS of `folder` under `out`; returns the
  report lines (files, counts, sha256 checks, splits)."""
  target = out / folder.name
  try:
    target.mkdir(parents=True, exist_ok=True)
    for f in folder.files:
      (target / f.name).write_bytes(f.data)
  except OSError as e:
    raise DataError(f"cannot write {target} ({e.strerror}); choose a writable --out") from None
  lines, checks = [], []
  for f in folder.files:
    count = f"{f.records} records"
    if f.documented is not None and f.records != f.documented:
      count += f" (WARNING: the upstream has {f.documented})"
    if f.reference is None:
      check = "no reference sha256"
    elif f.sha256 == f.reference:
      check = "= reference sha256 (byte-identical to the reference build)"
    else:
      check = f"WARNING: differs from the reference sha256 {f.reference[:16]}..."
    lines.append(f"  {folder.name}/{f.name}: {count}, sha256 {f.sha256[:16]}... {check}")
    checks.append(f"  {f.name}: {count}; sha256 {f.sha256}; {check}")
  lines += [f"    {s}" for s in folder.splits]
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  source = [f"Built by : {command}", f"Date     : {now}", "From     :",
            *[f"  {s}" for s in folder.source], "Files    :", *checks,
            "Splits   :", *[f"  {s}" for s in folder.splits]]
  if folder.license:
    source.append(f"License  : {folder.license}")
  (target / "SOURCE.txt").write_text("\n".join(source) + "\n", encoding="utf-8")
  sums = sorted(f"{f.sha256}  {f.name}" for f in folder.files)
  (target / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
  return lines


def read_file_or_parquet(roots: Sequence[pathlib.Path], name: str, parquet: str, what: str
                         ) -> tuple[list[dict], str] | None:
  """(records, where from) of the upstream file `name` under `roots`, else of the Hub's Parquet
  files matching `parquet`; None when neither is there."""
  path = find_one(roots, re.escape(name), what)
  if path is not None:
    return read_records(path), str(path)
  paths = find(roots, parquet)
  if paths:
    return read_parquet(paths), ", ".join(map(str, paths))
  return None
