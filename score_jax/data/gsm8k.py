"""GSM8K (Cobbe et al. 2021) in the layout `GSM8KTask` reads.

  python -m score_jax.data prepare gsm8k --out DATA_DIR [--from PATH]

Writes gsm8k/train.jsonl (7,473), gsm8k/test.jsonl (1,319) and, when the source has it,
gsm8k/test_socratic.jsonl (1,319): {"question", "answer"} per line, the answer ending in
"#### N", exactly as openai/grade-school-math ships them (byte-identical: the sha256s below
are the upstream files', recorded by HF datasets). `--from` takes the upstream folder
(grade_school_math/data/{train,test}.jsonl) or the Hub's Parquet files
(main/{train,test}-*.parquet, socratic/test-*.parquet); without it they come from the Hub
dataset openai/gsm8k.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

from score_jax.data import common

HUB = [("openai/gsm8k", ["main/*.parquet", "socratic/test-*.parquet"])]
LICENSE = "MIT (openai/grade-school-math)"
REFERENCE = {
    "train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "test_socratic.jsonl": "c96673362fa7a699f4836a9b6474a067448f95fe58064727501ee63ba4c3fdb6",
}
DOCUMENTED = {"train.jsonl": 7473, "test.jsonl": 1319, "test_socratic.jsonl": 1319}
# output name -> (upstream JSON Lines name, Hub Parquet pattern)
INPUTS = {"train.jsonl": ("train.jsonl", r"main/train-[^/]*\.parquet"),
          "test.jsonl": ("test.jsonl", r"main/test-[^/]*\.parquet"),
          "test_socratic.jsonl": ("test_socratic.jsonl", r"socratic/test-[^/]*\.parquet")}


def _records(roots: Sequence[pathlib.Path], name: str) -> tuple[list[dict], str] | None:
  jsonl, parquet = INPUTS[name]
  return common.read_file_or_parquet(roots, jsonl, parquet, f"GSM8K's {jsonl}")


def build(roots: Sequence[pathlib.Path]) -> list[common.Folder]:
  files, source = [], [common.describe_root(r) for r in roots]
  for name in INPUTS:
    found = _records(roots, name)
    if found is None:
      if name == "test_socratic.jsonl":
        continue
      raise common.DataError(f"no GSM8K {name} (or main/{name.split('.')[0]}-*.parquet) under "
                             f"{', '.join(map(str, roots))}; pass --from the folder "
                             "grade_school_math/data of openai/grade-school-math")
    records, where = found
    common.check_fields(records, {"question": str, "answer": str}, where)
    for i, rec in enumerate(records):
      if "####" not in rec["answer"]:
        raise common.DataError(f"{where} record {i}: the answer has no '#### N' final line; "
                               "is it the upstream GSM8K file?")
    files.append(common.OutFile(name, common.jsonl_bytes(records, ("question", "answer")),
                                len(records), REFERENCE[name], DOCUMENTED[name]))
    source.append(f"read: {where}")
  n_train, n_test = files[0].records, files[1].records
  splits = [f"train.jsonl: {n_train} -> {common.holdout_split('gsm8k', n_train)}",
            f"test.jsonl: {n_test} -> split 'test'"]
  return [common.Folder("gsm8k", files, splits, source, LICENSE)]
