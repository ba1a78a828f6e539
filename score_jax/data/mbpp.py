"""MBPP (Austin et al. 2021) in the layout `MBPPTask` reads.

  python -m score_jax.data prepare mbpp --out DATA_DIR [--from PATH]

Writes mbpp/mbpp.jsonl (974 records, by task_id: 1-10 few-shot prompts, 11-510 test,
511-600 validation, 601-974 train) and, when the source has it, mbpp/sanitized-mbpp.json
(427), both as google-research/mbpp ships them (byte-identical: the sha256s below are the
upstream files', recorded by HF datasets). `--from` takes the upstream folder (mbpp.jsonl,
sanitized-mbpp.json) or the Hub's Parquet files (full/*.parquet, sanitized/*.parquet);
without it they come from the Hub dataset google-research-datasets/mbpp.
"""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

from score_jax.data import common

HUB = [("google-research-datasets/mbpp", ["full/*.parquet", "sanitized/*.parquet"])]
LICENSE = "CC-BY-4.0 (MBPP data); google-research repository Apache-2.0"
REFERENCE = {
    "mbpp.jsonl": "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
    "sanitized-mbpp.json": "ca95deaa9a01ef0a6f439f88bcf0dd3db3563d22f22aad6cae04ebb9a8d8c8e9",
}
SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
FEWSHOT_IDS = (2, 3, 4)  # the paper's 3-shot exemplars (tasks.prompts.MBPP_FEWSHOT_TASK_IDS)
FULL = {"text": str, "code": str, "task_id": int, "test_setup_code": str, "test_list": list,
        "challenge_test_list": list}
SANITIZED = {"source_file": str, "task_id": int, "prompt": str, "code": str,
             "test_imports": list, "test_list": list}


def _sorted_unique(records: list[dict], where: str) -> list[dict]:
  seen: set[int] = set()
  for rec in records:
    if rec["task_id"] in seen:
      raise common.DataError(f"{where}: task_id {rec['task_id']} appears twice; pass --from "
                             "one copy of the upstream files")
    seen.add(rec["task_id"])
  return sorted(records, key=lambda r: r["task_id"])


def _read(roots, name: str, parquet: str) -> tuple[list[dict], str] | None:
  return common.read_file_or_parquet(roots, name, parquet, f"MBPP's {name}")


def build(roots: Sequence[pathlib.Path]) -> list[common.Folder]:
  found = _read(roots, "mbpp.jsonl", r"full/[^/]*\.parquet")
  if found is None:
    raise common.DataError(f"no mbpp.jsonl (or full/*.parquet) under "
                           f"{', '.join(map(str, roots))}; pass --from the mbpp/ folder of "
                           "google-research/google-research")
  records, where = found
  common.check_fields(records, FULL, where)
  records = _sorted_unique(records, where)
  ids = {r["task_id"] for r in records}
  if not set(FEWSHOT_IDS) <= ids:
    raise common.DataError(f"{where}: lacks the few-shot exemplars task_id {FEWSHOT_IDS} that "
                           "the MBPP prompt needs; pass --from the complete upstream mbpp.jsonl")
  files = [common.OutFile("mbpp.jsonl", common.jsonl_bytes(records, list(FULL)), len(records),
                          REFERENCE["mbpp.jsonl"], 974)]
  source = [common.describe_root(r) for r in roots] + [f"read: {where}"]
  sanitized = _read(roots, "sanitized-mbpp.json", r"sanitized/[^/]*\.parquet")
  if sanitized is not None:
    s_records, s_where = sanitized
    common.check_fields(s_records, SANITIZED, s_where)
    s_records = [{k: r[k] for k in SANITIZED} for r in _sorted_unique(s_records, s_where)]
    files.append(common.OutFile("sanitized-mbpp.json", json.dumps(s_records).encode("utf-8"),
                                len(s_records), REFERENCE["sanitized-mbpp.json"], 427))
    source.append(f"read: {s_where}")
  splits = [f"{s} (task_id {lo}-{hi}): {sum(lo <= t <= hi for t in ids)} -> task 'mbpp' split "
            f"{s!r}" for s, (lo, hi) in SPLITS.items()]
  return [common.Folder("mbpp", files, splits, source, LICENSE)]
