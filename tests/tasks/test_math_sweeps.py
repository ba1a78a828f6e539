"""Slow sweeps of the math grader over the whole MATH training data (`pytest -m slow`).

Every gold answer of the 12k training split and of the 7,500-problem MATH train file against
itself, and every reference solution's final answer against its gold, through `grade_batch`:
the hedge rules and the bounded extraction must not cost a single correct answer. The only
misses are the two records whose gold is empty upstream (`\\boxed{}`; see `math.task`).
MATH500 and the 5,000-problem test split are swept in the fast tests.
"""

import json

import pytest

from score_jax.tasks.math.task import extract_answer, grade_batch

pytestmark = pytest.mark.slow

FILES = {
    "math/prm800k_style_train12k.reconstructed.jsonl": 12_000,
    "math/train.jsonl": 7_500,
}
EMPTY_GOLDS = 2     # train/number_theory/7115 and 7117 in both files


@pytest.mark.parametrize("name", list(FILES))
def test_train_golds_and_reference_solutions(shared_data, name):
  with open(shared_data / name, encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert len(records) == FILES[name]
  solutions = [extract_answer(r["solution"]) for r in records]
  golds = [r.get("answer") or solution or "" for r, solution in zip(records, solutions)]
  assert sum(grade_batch(golds, golds, timeout_s=10.0)) == len(records) - EMPTY_GOLDS
  assert sum(grade_batch(solutions, golds, timeout_s=10.0)) == len(records) - EMPTY_GOLDS
