"""Checkpoint selection by validation (score_jax.validation, checkpoint.select_step).

- Checkpoints written directly with chosen metrics: "best" is the argmax of the validation
  metric (not the latest, not the step with the highest training reward), ties go to the
  later step, retention keeps it through a resume, and the experiment driver evaluates it.
- A tiny run (configs/tiny.py, 8 steps) validating every 2 steps writes W/validation lines,
  saves each validated step with its metrics (forced between checkpoint.every saves), and
  `evaluate --once` evaluates the best step (`--checkpoint latest` / a step number on
  request), printing which step and why.
"""

import os
import shutil
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import evaluate
from score_jax import experiment
from score_jax import metrics as metrics_lib
from score_jax import train
from score_jax import validation
from score_jax.tasks import toy
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"


def _config(*overrides):
  return config_lib.load(TINY, list(overrides))


# --------------------------------------------------------------- config checks

@pytest.mark.parametrize("override,message", [
    ("--config.eval.validation_every=-1",
     "config.eval.validation_every=-1 must be an integer >= 0 (0 = off)"),
    ("--config.eval.validation_limit=-5",
     "config.eval.validation_limit=-5 must be an integer >= 0 (0 = the whole split)"),
    ("--config.eval.validation_split=",
     "config.eval.validation_split='' must name a split of the task"),
    ("--config.checkpoint.best_metric=reward_t2",
     "config.checkpoint.best_metric='reward_t2' is not a validation metric of 2 attempts; "
     "choose one of"),
    ("--config.experiment.checkpoint=newest",
     "config.experiment.checkpoint='newest': choose best, latest or a step number"),
])
def test_bad_settings_fail_naming_the_field(override, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validation.check_config(_config(override))
  validation.check_config(_config())        # the defaults are valid


def test_the_defaults_validate_nothing_and_select_by_acc_t2():
  c = _config()
  assert (c.eval.validation_every, c.eval.validation_split, c.eval.validation_limit) == (
      0, "validation", 0)
  assert (c.checkpoint.best_metric, c.experiment.checkpoint) == ("acc_t2", "best")


def test_validation_steps_are_every_n_and_the_last(tmp_path):
  def validator(every):
    c = types.SimpleNamespace(config=_config(f"--config.eval.validation_every={every}"),
                              task=toy.ToyTask())
    return validation.Validator(c, tmp_path, total=8, is_writer=False)
  three = validator(3)
  assert [s for s in range(1, 9) if three.due(s)] == [3, 6, 8]
  assert len(three.problems) == 200                 # the toy task's whole validation split
  off = validator(0)
  assert not any(off.due(s) for s in range(1, 9)) and off.problems == []
  assert off.maybe_run(8, "stage2", params=None) is None


# ------------------------------------------- selection on hand-written checkpoints

# Validation acc_t2 at steps 2, 4, 6, 8; the training reward (the old rule) peaks at 8.
VALIDATION = {2: 0.5, 4: 0.875, 6: 0.625, 8: 0.75}
TRAIN_REWARD = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.3, 5: 0.4, 6: 0.5, 7: 0.6, 8: 0.9}


def _write(directory, steps, metrics, keep=2):
  ckpt = checkpoint_lib.Checkpointer(directory, every=1, keep=keep, async_save=False)
  for step in steps:
    m = metrics.get(step)
    ckpt.save(step, {"w": jnp.full((2,), float(step))}, None, {"step": step},
              metrics=None if m is None else {"acc_t2": m, "delta_c2i": 1 - m, "n": 64})
  ckpt.close()


def test_best_is_the_validation_argmax_not_the_training_reward_or_latest(tmp_path):
  directory = tmp_path / "checkpoints"
  _write(directory, range(1, 9), VALIDATION)
  assert max(TRAIN_REWARD, key=TRAIN_REWARD.get) == 8          # what the old rule kept
  # Kept: the best validated step (4) and the last two (7, 8); 2 and 6 are gone.
  assert checkpoint_lib.Checkpointer(directory, read_only=True).all_steps() == [4, 7, 8]
  step, why = checkpoint_lib.select_step(directory, "best")
  assert step == 4
  assert why == "best acc_t2 0.875 on 64 validation problems (validated steps on disk: 4, 8)"
  # Lower is better with a leading "-": delta_c2i is 0.125 at step 4, 0.25 at step 8.
  assert checkpoint_lib.select_step(directory, "best", "-delta_c2i")[0] == 4
  assert checkpoint_lib.select_step(directory, "latest") == (
      8, "the latest (steps on disk: 4, 7, 8)")
  assert checkpoint_lib.select_step(directory, "7") == (
      7, "step 7 as asked (steps on disk: 4, 7, 8)")
  with pytest.raises(ValueError, match=r"--checkpoint=6: no finished step 6 in .*"
                                       r"\(steps on disk: 4, 7, 8\)"):
    checkpoint_lib.select_step(directory, 6)
  with pytest.raises(ValueError, match="--checkpoint='first': choose best, latest or a step"):
    checkpoint_lib.select_step(directory, "first")


def test_the_best_step_survives_a_resume_until_beaten(tmp_path):
  directory = tmp_path / "checkpoints"
  _write(directory, range(1, 9), VALIDATION)
  _write(directory, [9, 10], {})                       # a resumed trainer, no validation
  assert checkpoint_lib.Checkpointer(directory, read_only=True).all_steps() == [4, 9, 10]
  _write(directory, [11], {11: 0.9})
  assert checkpoint_lib.Checkpointer(directory, read_only=True).all_steps() == [10, 11]
  assert checkpoint_lib.select_step(directory)[0] == 11


def test_ties_go_to_the_later_step_and_no_validation_means_latest(tmp_path):
  _write(tmp_path / "tie", range(1, 5), {1: 0.5, 2: 0.5, 3: 0.25}, keep=1)
  assert checkpoint_lib.Checkpointer(tmp_path / "tie", read_only=True).all_steps() == [2, 4]
  assert checkpoint_lib.select_step(tmp_path / "tie")[0] == 2
  _write(tmp_path / "none", range(1, 4), {})
  step, why = checkpoint_lib.select_step(tmp_path / "none")
  assert step == 3 and why.startswith("the latest (no step on disk has a validation acc_t2; "
                                      "config.eval.validation_every > 0 validates")
  with pytest.raises(FileNotFoundError, match="no finished checkpoint in"):
    checkpoint_lib.select_step(tmp_path / "empty")


def test_the_experiment_evaluates_a_methods_best_step_and_the_base_models_latest(
    tmp_path, capsys):
  _write(tmp_path / "score" / "checkpoints", range(1, 9), VALIDATION)
  like = {"w": jnp.zeros((2,))}
  params = experiment._final_params(tmp_path / "score", like, _config())
  np.testing.assert_array_equal(params["w"], [4.0, 4.0])
  assert (f"{tmp_path / 'score'}: evaluating step 4: best acc_t2 0.875 on 64 validation "
          f"problems") in capsys.readouterr().out
  latest = experiment._final_params(tmp_path / "score", like,
                                    _config("--config.experiment.checkpoint=latest"))
  np.testing.assert_array_equal(latest["w"], [8.0, 8.0])
  base = experiment._final_params(tmp_path / "score", like)
  np.testing.assert_array_equal(base["w"], [8.0, 8.0])
  assert "the base model every method starts from" in capsys.readouterr().out


# ----------------------------------------------------------------- a tiny run

# 8 steps (sft 4, stage1 2, stage2 2); validation at 2, 4, 6, 8 on 16 problems; regular
# saves every 3 steps, so the saves at 2, 4 and 8 are the validation's own. After 8 steps the
# tiny model answers nothing right (acc 0 at every step: every step would tie), so steps are
# ranked by a metric that moves: the lowest edit distance between the two attempts.
RUN = ["--config.task.eval_limit=16", "--config.eval.batch_size=16",
       "--config.eval.validation_every=2", "--config.eval.validation_limit=16",
       "--config.checkpoint.every=3", "--config.checkpoint.keep=20",
       "--config.checkpoint.best_metric=-edit_distance_ratio"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("validated")
  train.Trainer(_config(*RUN), workdir).run()
  return workdir


def _lines(workdir):
  return metrics_lib.read_jsonl(workdir / "validation" / "metrics.jsonl")


def test_validation_lines_and_checkpoint_metrics(run):
  lines = _lines(run)
  assert [r["step"] for r in lines] == [2, 4, 6, 8]
  assert [r["stage"] for r in lines] == ["sft", "sft", "stage1", "stage2"]
  reader = checkpoint_lib.Checkpointer(run / "checkpoints", read_only=True)
  assert reader.all_steps() == [2, 3, 4, 6, 8]
  for r in lines:
    assert r["split"] == "validation" and r["n"] == 16
    assert r["delta"] == pytest.approx(r["delta_i2c"] - r["delta_c2i"], abs=1e-12)
    saved = reader.metrics(r["step"])
    assert saved == {"n": 16.0, **{k: pytest.approx(r[k]) for k in metrics_lib.KEYS}}
  assert reader.metrics(3) is None
  assert (run / "tensorboard" / "validation").is_dir()


def test_best_is_the_argmax_of_the_validation_lines(run):
  lines = _lines(run)
  best = max(lines, key=lambda r: (-r["edit_distance_ratio"], r["step"]))  # ties: later
  step, why = checkpoint_lib.select_step(run / "checkpoints", "best", "-edit_distance_ratio")
  assert step == best["step"]
  assert why == (f"best (lowest) edit_distance_ratio {best['edit_distance_ratio']:.4g} on 16 "
                 f"validation problems (validated steps on disk: 2, 4, 6, 8)")


def test_eval_once_evaluates_the_best_step_and_says_so(run, capsys):
  shutil.rmtree(run / "eval", ignore_errors=True)
  step, why = checkpoint_lib.select_step(run / "checkpoints", "best", "-edit_distance_ratio")
  lines = evaluate.run(_config(*RUN), run, once=True)
  assert [r["step"] for r in lines] == [step]
  assert f"evaluating step {step}: {why}" in capsys.readouterr().out
  assert evaluate.run(_config(*RUN), run, once=True) == []           # not evaluated twice
  assert f"step {step} is already in" in capsys.readouterr().out


def test_eval_once_latest(run, capsys):
  shutil.rmtree(run / "eval", ignore_errors=True)
  lines = evaluate.run(_config(*RUN), run, once=True, checkpoint="latest")
  assert [r["step"] for r in lines] == [8]
  assert "evaluating step 8: the latest (steps on disk: 2, 3, 4, 6, 8)" in capsys.readouterr().out


def test_eval_cli_once_checkpoint_step(run):
  shutil.rmtree(run / "eval", ignore_errors=True)
  proc = subprocess.run(
      [sys.executable, "-m", "score_jax.evaluate", "--config", str(TINY), "--workdir", str(run),
       "--once", "--checkpoint", "3", *RUN], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "evaluating step 3: step 3 as asked (steps on disk: 2, 3, 4, 6, 8)" in proc.stdout
  assert [r["step"] for r in metrics_lib.read_jsonl(run / "eval" / "metrics.jsonl")] == [3]


def test_checkpoint_needs_once_and_an_existing_step(run):
  with pytest.raises(ValueError, match="--checkpoint=3 picks the step of --once"):
    evaluate.run(_config(*RUN), run, checkpoint="3")
  with pytest.raises(ValueError, match=r"--checkpoint=5: no finished step 5 in .*\(steps on "
                                       r"disk: 2, 3, 4, 6, 8\)"):
    evaluate.run(_config(*RUN), run, once=True, checkpoint="5")


def test_best_metric_of_later_attempts():
  """With T attempts, checkpoints can be ranked by any metric of those attempts (acc_t3, the
  second pair's delta, ever_correct); at T = 2 those are not validation metrics."""
  for metric in ("acc_t3", "-delta_c2i_t2_t3", "ever_correct"):
    validation.check_config(_config(f"--config.checkpoint.best_metric={metric}",
                                    "--config.rollout.num_attempts=3"))
    with pytest.raises(ValueError, match="is not a validation metric of 2 attempts"):
      validation.check_config(_config(f"--config.checkpoint.best_metric={metric}"))
  assert checkpoint_lib.check_best_metric("-acc_t4") == "acc_t4"   # after the config check
  with pytest.raises(ValueError, match="of 3 attempts"):
    checkpoint_lib.check_best_metric("reward_t2")
