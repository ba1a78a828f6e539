"""Inference-time scaling (score_jax.scaling): majority vote over K parallel first attempts
vs over chains of T attempts.

- `majority_vote`: most votes, ties to the answer seen first, None keys do not vote.
- `scaling_table` on hand-made chains: nested prefixes, the voted representative's reward,
  budgets with no whole chain left out, any-correct >= accuracy.
- The command line on MATH500 (real data, math-verify keys, the math grader) with a tiny random
  Gemma 2 checkpoint (tests/hf_tiny.py) from `--checkpoint init`, K up to 4 on 2 problems:
  JSON table and PNG plot in W/eval.
- The tiny config on the sorting task with 3 attempts: seq2 and seq3 curves, deterministic.
"""

import json

import numpy as np
import pytest

from score_jax import config_lib
from score_jax import scaling
from tests.conftest import REPO_ROOT


def test_majority_vote_breaks_ties_by_first_appearance_and_ignores_none():
  assert scaling.majority_vote(["a", "b", "b", "a"]) == 0      # tie: "a" came first
  assert scaling.majority_vote(["a", "b", "b"]) == 1           # first "b"
  assert scaling.majority_vote([None, None, "c", "d", "c"]) == 2
  assert scaling.majority_vote([None, None]) == 0


def test_table_votes_nested_prefixes_and_grades_the_representative():
  # One problem, 4 chains of 2 attempts; keys are the answers, "x" is right.
  keys = [[["x", "x"], ["y", "x"], ["y", "x"], ["y", "z"]]]
  rewards_NCA = np.array([[[1, 1], [0, 1], [0, 1], [0, 0]]], np.float32)
  table = scaling.scaling_table(rewards_NCA, keys, [1, 2, 4])
  par, seq = table["parallel"], table["seq2"]
  assert par["1"]["acc"] == 1.0 and par["2"]["acc"] == 1.0   # tie x/y: x first
  assert par["4"]["acc"] == 0.0 and par["4"]["any_correct"] == 1.0   # y wins 3:1
  assert "1" not in seq                                       # no whole chain of 2
  assert seq["2"] == dict(acc=1.0, acc_se=0.0, any_correct=1.0, any_correct_se=0.0,
                          chains=1, attempts=2, samples=2, n=1, vs_parallel=0.0,
                          vs_parallel_se=0.0)
  assert seq["4"]["vs_parallel"] == 1.0         # paired: seq2 right where parallel is not
  assert seq["4"]["chains"] == 2 and seq["4"]["acc"] == 1.0
  with pytest.raises(ValueError, match="chains"):
    scaling.scaling_table(rewards_NCA, keys, [8])


def _check_table(result, budgets, methods):
  assert set(result) - {"_meta"} == set(methods)
  for method in methods:
    rows = result[method]
    for k, row in rows.items():
      assert int(k) in budgets and row["samples"] <= int(k)
      for key in ("acc", "any_correct", "acc_se", "any_correct_se"):
        assert 0.0 <= row[key] <= 1.0
      assert row["any_correct"] >= row["acc"]


def test_tiny_sorting_three_attempts_is_deterministic(tmp_path):
  argv = [f"--config={REPO_ROOT / 'configs' / 'tiny.py'}", f"--workdir={tmp_path}",
          "--checkpoint=init", "--budgets=2,4,6", "--config.task.name=sorting",
          "--config.task.eval_limit=5", "--config.rollout.num_attempts=3",
          "--config.eval.batch_size=10"]
  scaling.main(argv)
  first = json.loads((tmp_path / "eval" / "scaling.json").read_text())
  _check_table(first, {2, 4, 6}, ["parallel", "seq2", "seq3"])
  assert sorted(first["seq3"], key=int) == ["4", "6"]
  assert (tmp_path / "eval" / "scaling.png").stat().st_size > 0
  scaling.main(argv + [f"--out={tmp_path / 'again'}"])
  again = json.loads((tmp_path / "again" / "scaling.json").read_text())
  assert {k: v for k, v in again.items() if k != "_meta"} == \
      {k: v for k, v in first.items() if k != "_meta"}


def test_math500_with_a_tiny_random_gemma2(tmp_path, shared_data):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from tests import test_real_configs as real  # pylint: disable=import-outside-toplevel
  _config_path, tiny_overrides = real._config_path, real.tiny_overrides  # noqa: N806
  checkpoint = real.tiny_checkpoint(tmp_path / "ckpt", "gemma2_2b_math",
                                    real._corpus(shared_data))
  workdir = tmp_path / "run"
  workdir.mkdir()
  config = config_lib.load(_config_path("gemma2_2b_math"), [
      *tiny_overrides(checkpoint, shared_data), "--config.task.eval_limit=2",
      "--config.eval.batch_size=8"])
  result = scaling.run(config, workdir, checkpoint="init", budgets=[2, 4], temperature=0.7)
  assert result["_meta"]["task"] == "math" and result["_meta"]["n"] == 2
  _check_table(result, {2, 4}, ["parallel", "seq2"])
  saved = json.loads((workdir / "eval" / "scaling.json").read_text())
  assert saved["seq2"]["4"]["chains"] == 2 and saved["parallel"]["4"]["chains"] == 4
  assert (workdir / "eval" / "scaling.png").stat().st_size > 0
