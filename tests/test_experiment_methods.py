"""The paper's other rows in the experiment driver: Self-Refine, Pair-SFT, STaR in Stage II.

On the small sorting experiment of tests/test_experiment.py, with a 150-step base model
(right on about half the held-out words, so Pair-SFT finds wrong and right samples),
`experiment.run` with methods base, self_refine, pair_sft and star_stage2:

- self_refine is the base model itself with Self-Refine's turn-2 instruction: no training
  run, and its greedy first attempts are exactly the base row's;
- pair_sft logs, per step, the share of rows trained (`kept_fraction`) and of problems with a
  correct sample (`problems_solved_fraction`); only wrong first attempts are kept, and only
  for problems with a correct sample;
- star_stage2 runs Stage I, then STaR steps in place of Stage II.
"""

import json

import pytest

from score_jax import config_lib
from score_jax import experiment
from score_jax import metrics as metrics_lib
from tests.test_experiment import OVERRIDES, TINY

METHODS = ["base", "self_refine", "pair_sft", "star_stage2"]
EXTRA = [f"--config.experiment.methods={','.join(METHODS)}",
         "--config.experiment.sft_baseline_steps=3",
         "--config.experiment.sft_baseline_lr=1e-3",
         "--config.experiment.base_steps=150"]


@pytest.fixture(scope="module")
def config():
  return config_lib.load(TINY, [*OVERRIDES, *EXTRA])


@pytest.fixture(scope="module")
def finished(config, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("methods")
  return workdir, experiment.run(config, workdir)


def test_method_configs(config):
  star2 = experiment.method_config(config, "star_stage2", 0, "x")
  assert star2.plan.stages == "stage1,star"
  assert (star2.plan.stage1_steps, star2.plan.star_steps) == (2, 2)    # rl_steps=4, half each
  assert star2.optim.lr == config.optim.lr                             # the RL learning rate
  pair = experiment.method_config(config, "pair_sft", 0, "x")
  assert (pair.plan.stages, pair.plan.pair_sft_steps, pair.optim.lr) == ("pair_sft", 3, 1e-3)
  with pytest.raises(ValueError, match="'self_refine' is not trained"):
    experiment.method_config(config, "self_refine", 0, "x")


def test_every_row_is_in_the_results(finished):
  workdir, results = finished
  assert set(results) == {*METHODS, "_meta"}
  assert results["_meta"]["labels"]["base"] == "Base model"
  assert results["_meta"]["labels"]["self_refine"] == "Self-Refine (zero-shot prompt)"
  table = (workdir / "results.md").read_text()
  for method in METHODS:
    assert experiment.METHODS[method] in table, method
    row = results[method]
    assert row["n"] == 16
    assert abs(row["delta"] - (row["delta_i2c"] - row["delta_c2i"])) <= 1e-9


def test_self_refine_is_the_base_model_with_another_turn2_instruction(finished):
  workdir, results = finished
  assert not (workdir / "seed_0" / "self_refine").exists()            # nothing trained
  samples = json.loads((workdir / "samples.json").read_text())
  assert [s["y1"] for s in samples["self_refine"]] == [s["y1"] for s in samples["base"]]
  assert results["self_refine"]["acc_t1"] == results["base"]["acc_t1"]


def test_pair_sft_logs_what_it_kept(finished):
  workdir, _ = finished
  rows = metrics_lib.read_jsonl(workdir / "seed_0" / "pair_sft" / "train" / "metrics.jsonl")
  assert [r["stage"] for r in rows] == ["pair_sft"] * 3
  for r in rows:
    # 4 problems x 2 samples = 8 rows: kept rows are wrong first attempts of solved problems.
    assert r["kept_fraction"] * 8 == pytest.approx(round(r["kept_fraction"] * 8))
    assert r["problems_solved_fraction"] * 4 == pytest.approx(
        round(r["problems_solved_fraction"] * 4))
    assert r["kept_fraction"] <= 1.0 - r["reward_t1"] + 1e-9
    if r["problems_solved_fraction"] == 0.0:
      assert r["kept_fraction"] == 0.0
  # The base model solves some problems and misses others (the data is not empty).
  assert any(r["kept_fraction"] > 0 for r in rows)


def test_star_stage2_runs_stage1_then_star(finished):
  workdir, _ = finished
  rows = metrics_lib.read_jsonl(workdir / "seed_0" / "star_stage2" / "train" / "metrics.jsonl")
  assert [r["stage"] for r in rows] == ["stage1", "stage1", "star", "star"]
  assert all("kept_fraction" in r for r in rows[2:])
  assert not any("kept_fraction" in r for r in rows[:2])       # RL steps
