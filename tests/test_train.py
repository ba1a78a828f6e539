"""End-to-end behaviour of the trainer and the eval loop on the toy task (tiny model, CPU).

- `main` runs sft -> Stage I -> Stage II, writing checkpoints and per-step train metrics;
  `evaluate --once` writes the paper's metrics for the latest checkpoint.
- A run SIGKILLed after its first checkpoint resumes and ends with the same params as an
  uninterrupted run.
- Non-finite losses skip the update; too many in a row stop the run with the last good
  checkpoint intact.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import evaluate
from score_jax import metrics as metrics_lib
from score_jax import train
from score_jax.tasks import toy
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"
# Short, synchronous, every-step checkpoints keep these tests fast and deterministic.
FAST = ["--config.task.eval_limit=16", "--config.eval.batch_size=16"]


def _config(*overrides):
  return config_lib.load(TINY, [*FAST, *overrides])


def _params_of(workdir, step=None):
  config = config_lib.load(TINY, FAST)
  from score_jax import build as build_lib
  c = build_lib.build(config)
  params, meta, _ = checkpoint_lib.restore_params(pathlib.Path(workdir) / "checkpoints",
                                                  c.base_params, step)
  return jax.tree.map(np.asarray, params), meta


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tiny")
  trainer = train.Trainer(_config(), workdir)
  last = trainer.run()
  return workdir, trainer, last


def test_tiny_run_writes_checkpoints_and_metrics(finished_run):
  workdir, trainer, last = finished_run
  rows = metrics_lib.read_jsonl(workdir / "train" / "metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(1, trainer.total + 1))
  assert [r["stage"] for r in rows] == ["sft"] * 4 + ["stage1"] * 2 + ["stage2"] * 2
  for r in rows:
    assert np.isfinite(r["loss"]) and r["skipped"] == 0
  for r in rows[4:]:
    for key in ("reward_t1", "reward_t2", "acc_t1", "acc_t2", "delta", "answer_changed",
                "kl_t1", "kl_t2", "entropy_t1", "grad_norm", "tokens_per_s"):
      assert key in r, key
    assert r["delta"] == pytest.approx(r["delta_i2c"] - r["delta_c2i"])
  steps = checkpoint_lib.Checkpointer(workdir / "checkpoints", read_only=True).all_steps()
  assert trainer.total in steps
  assert (workdir / "models" / "base").is_dir()
  assert last["stage"] == "stage2"


def test_eval_once_writes_paper_metrics(finished_run):
  workdir, trainer, _ = finished_run
  lines = evaluate.run(_config(), workdir, once=True)
  assert len(lines) == 1 and lines[0]["step"] == trainer.total
  rows = metrics_lib.read_jsonl(workdir / "eval" / "metrics.jsonl")
  for field in ("step", "stage", "n", "acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i",
                "answer_changed", "edit_distance_ratio"):
    assert field in rows[-1], field
  assert rows[-1]["n"] == 16 and rows[-1]["stage"] == "stage2"
  for r in rows:
    assert r["delta"] == pytest.approx(r["delta_i2c"] - r["delta_c2i"], abs=1e-12)
  # A second --once on the same step does not evaluate again.
  assert evaluate.run(_config(), workdir, once=True) == []


def test_eval_cli_once(finished_run):
  workdir, _, _ = finished_run
  proc = subprocess.run(
      [sys.executable, "-m", "score_jax.evaluate", "--config", str(TINY), "--workdir",
       str(workdir), "--once", *FAST], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]


def _wait_for_checkpoint(directory: pathlib.Path, proc, timeout=240.0) -> int:
  start = time.time()
  while time.time() - start < timeout:
    if directory.is_dir():
      finished = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
      if finished:
        return min(finished)
    if proc.poll() is not None:
      raise AssertionError(f"trainer exited early: {proc.stderr.read()[-2000:]}")
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


def test_sigkill_and_resume_matches_uninterrupted(tmp_path):
  # Long enough that the kill lands mid-run; checkpoints every 2 steps.
  overrides = ["--config.plan.sft_steps=6", "--config.plan.stage1_steps=4",
               "--config.plan.stage2_steps=4", "--config.checkpoint.every=2",
               "--config.checkpoint.keep=20"]
  cmd = [sys.executable, "-m", "score_jax.main", "--config", str(TINY), *FAST, *overrides]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  killed = tmp_path / "killed"
  proc = subprocess.Popen(cmd + ["--workdir", str(killed)], cwd=REPO_ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  first = _wait_for_checkpoint(killed / "checkpoints", proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  before = [int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit()]
  assert first in before and max(before) < 14, "the kill landed after the run finished"
  resumed = subprocess.run(cmd + ["--workdir", str(killed)], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from step" in resumed.stdout
  straight = tmp_path / "straight"
  full = subprocess.run(cmd + ["--workdir", str(straight)], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert full.returncode == 0, full.stderr[-3000:]
  p_killed, meta_killed = _params_of(killed, 14)
  p_straight, meta_straight = _params_of(straight, 14)
  assert meta_killed["data_position"] == meta_straight["data_position"]
  for a, b in zip(jax.tree.leaves(p_killed), jax.tree.leaves(p_straight)):
    np.testing.assert_array_equal(a, b)


class NaNRewardToy(toy.ToyTask):
  """The toy task with a reward that turns NaN after `good_calls` calls."""

  def __init__(self, good_calls: int):
    super().__init__()
    self.calls = 0
    self.good_calls = good_calls

  def rewards(self, problems, responses):
    self.calls += 1
    value = 0.0 if self.calls <= self.good_calls else float("nan")
    return [value] * len(responses)


def test_nan_losses_skip_then_stop_with_last_good_checkpoint(tmp_path):
  config = _config("--config.plan.stages=stage1", "--config.plan.stage1_steps=10",
                   "--config.checkpoint.every=1", "--config.checkpoint.keep=20",
                   "--config.checkpoint.async_save=false", "--config.train.max_nan_steps=3")
  trainer = train.Trainer(config, tmp_path)
  # Two reward calls (turn 1 and turn 2) per step: steps 1-2 are finite, then NaN.
  trainer.c.task = NaNRewardToy(good_calls=4)
  trainer.two_turn.task = trainer.c.task
  with pytest.raises(train.NonFiniteLossError, match="3 non-finite losses in a row"):
    trainer.run()
  rows = metrics_lib.read_jsonl(tmp_path / "train" / "metrics.jsonl")
  assert [r["skipped"] for r in rows] == [0, 0, 1, 1, 1]
  reader = checkpoint_lib.Checkpointer(tmp_path / "checkpoints", read_only=True)
  assert reader.latest_step() == 2
  params, _, meta = reader.restore(2, trainer.c.base_params)
  assert meta["step"] == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_eval_once_of_the_initial_weights_is_step_0(tmp_path):
  """`--checkpoint init`: the base model's row, with no training run and no checkpoint."""
  workdir = tmp_path / "base_only"
  lines = evaluate.run(_config(), workdir, once=True, checkpoint="init")
  assert len(lines) == 1 and lines[0]["step"] == 0 and lines[0]["stage"] == "init"
  assert lines[0]["n"] == 16 and checkpoint_lib.latest_step(workdir / "checkpoints") is None
  assert metrics_lib.read_jsonl(workdir / "eval" / "metrics.jsonl")[0]["step"] == 0
  assert evaluate.run(_config(), workdir, once=True, checkpoint="init") == []   # done
