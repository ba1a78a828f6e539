"""An experiment (score_jax.experiment) end to end on the tiny config: base model + SCoRe.

`experiment.run` trains the base model (sft), trains SCoRe from it (Stage I, Stage II),
evaluates both and writes results.json, results.md and the plots. Running it again on the
same workdir retrains nothing (every run is already finished) and writes the same results.

The task is sorting 2-3 letter words, and the base model gets 30 sft steps at a high
learning rate: enough (on the machine these tests were written on) for some first and
second attempts to be right, so the metrics are not all zero.
"""

import json

import pytest

from score_jax import config_lib
from score_jax import experiment
from score_jax import metrics as metrics_lib
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"
OVERRIDES = [
    "--config.experiment.methods=base,score",
    "--config.experiment.seeds=",
    "--config.task.name=sorting",
    "--config.task.min_len=2",
    "--config.task.max_len=3",
    "--config.optim.sft_lr=1e-2",
    "--config.experiment.base_steps=30",
    "--config.experiment.rl_steps=4",          # Stage I 2 steps, Stage II 2 steps
    "--config.experiment.stage1_fraction=0.5",
    "--config.task.eval_limit=16",
    "--config.eval.batch_size=16",
    "--config.train.batch_size=4",
    "--config.train.sft_batch_size=16",
    "--config.train.tensorboard=False",
    "--config.checkpoint.every=100",         # save at the end only
    "--config.checkpoint.async_save=False",
]


@pytest.fixture(scope="module")
def config():
  return config_lib.load(TINY, OVERRIDES)


@pytest.fixture(scope="module")
def finished(config, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("experiment")
  returned = experiment.run(config, workdir)
  return workdir, returned


def test_config_is_the_small_experiment(config):
  assert config.task.name == "sorting" and config.tokenizer.kind == "char"
  assert experiment.method_config(config, "score", 0, "x").plan.stage1_steps == 2
  assert experiment.method_config(config, "score", 0, "x").plan.stage2_steps == 2
  assert experiment.base_config(config, 0).plan.sft_steps == 30


def test_results_json_has_every_metric_of_both_methods(finished):
  workdir, returned = finished
  results = json.loads((workdir / "results.json").read_text())
  assert set(results) == {"base", "score", "_meta"}
  assert results["_meta"]["seeds"] == [0]
  assert results["_meta"]["task"] == "sorting"
  assert results["_meta"]["n"] == 16
  assert results["_meta"]["labels"] == {"base": experiment.METHODS["base"],
                                        "score": experiment.METHODS["score"]}
  for method in ("base", "score"):
    row = results[method]
    assert row["n"] == 16 and row["seeds"] == [0]
    for key in metrics_lib.KEYS:
      assert key in row and f"{key}_se" in row, (method, key)
      assert 0.0 <= abs(row[key]) <= 1.0 and row[f"{key}_se"] >= 0.0
      assert row[f"{key}_per_seed"] == [row[key]]
    # Per problem, delta = i2c - c2i exactly; so are the means (n = 16: multiples of 1/16).
    assert abs(row["delta"] - (row["delta_i2c"] - row["delta_c2i"])) <= 1e-9
    assert abs(row["delta"] - (row["acc_t2"] - row["acc_t1"])) <= 1e-9
    for key in ("acc_t1", "acc_t2", "delta_i2c", "delta_c2i"):
      assert (row[key] * 16) == pytest.approx(round(row[key] * 16), abs=1e-9), key
  assert json.loads(json.dumps(returned)) == results


def test_results_md_and_plots(finished):
  workdir, _ = finished
  table = (workdir / "results.md").read_text()
  assert experiment.METHODS["base"] in table and experiment.METHODS["score"] in table
  assert len([line for line in table.splitlines() if line.startswith("|")]) == 4  # head, rule, 2
  for name in ("training.png", "results.png"):
    path = workdir / "plots" / name
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  assert (workdir / "seed_0" / "base" / "checkpoints").is_dir()
  assert (workdir / "seed_0" / "score" / "checkpoints").is_dir()
  samples = json.loads((workdir / "samples.json").read_text())
  assert set(samples) == {"base", "score"} and len(samples["score"]) == 16


def test_rerun_does_not_retrain_and_gives_the_same_results(config, finished, capsys):
  workdir, _ = finished
  before = (workdir / "results.json").read_text()
  metrics = {m: (workdir / "seed_0" / m / "train" / "metrics.jsonl").read_text()
             for m in ("base", "score")}
  capsys.readouterr()
  experiment.run(config, workdir)
  out = capsys.readouterr().out
  assert f"{workdir / 'seed_0' / 'base'}: already trained (30 steps)" in out
  assert f"{workdir / 'seed_0' / 'score'}: already trained (4 steps)" in out
  assert (workdir / "results.json").read_text() == before
  for m, text in metrics.items():     # no training step ran again
    assert (workdir / "seed_0" / m / "train" / "metrics.jsonl").read_text() == text, m
