"""A run survives bad state on disk and stops on what it cannot survive (issue 13, items 4-5).

- A byte flipped in a stored checkpoint, or a garbage step directory, is reported with its
  path and never used: a resumed run and `evaluate --once` take the previous good step (the
  trainer moves the bad one aside so that it can save that step again).
- A byte flipped in `W/models/base` (the KL reference) is a clear error, not a silently
  different reference.
- A run whose checkpoint directory cannot be written exits non-zero within 30 s with one
  line naming the path, whether that shows at start or in a background (async) save.
- `evaluate` drops a half-written last metrics line and refuses a missing work directory.
"""

import os
import shutil
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
from tests.conftest import REPO_ROOT
from tests.test_checkpoint import flip_array_bytes

TINY = REPO_ROOT / "configs" / "tiny.py"
FAST = ["--config.task.eval_limit=16", "--config.eval.batch_size=16"]
RUN = [*FAST, "--config.checkpoint.keep=20", "--config.checkpoint.async_save=false"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _config(*overrides):
  return config_lib.load(TINY, [*RUN, *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished tiny run: checkpoints at steps 2, 4, 6, 8 and W/models/base."""
  workdir = tmp_path_factory.mktemp("trained")
  train.Trainer(_config(), workdir).run()
  return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


def _steps(workdir):
  return sorted(checkpoint_lib.Checkpointer(workdir / "checkpoints", read_only=True)
                .all_steps())


def test_resume_skips_a_flipped_step_and_moves_it_aside(run_copy, capsys):
  assert _steps(run_copy) == [2, 4, 6, 8]
  flip_array_bytes(run_copy / "checkpoints" / "8")
  trainer = train.Trainer(_config(), run_copy)
  _, _, step, _ = trainer.initial_state()
  assert step == 6
  err = capsys.readouterr().err
  assert f"checkpoint step 8 at {run_copy / 'checkpoints' / '8'}" in err
  assert "does not match its digests" in err
  assert _steps(run_copy) == [2, 4, 6]
  assert len(list((run_copy / "checkpoints").glob("8.corrupt-*"))) == 1
  trainer.run()                          # resumes from 6 and writes a good step 8 again
  assert _steps(run_copy) == [2, 4, 6, 8]
  checkpoint_lib.restore_params(run_copy / "checkpoints", trainer.c.base_params, 8)


def test_resume_skips_a_garbage_step_directory(run_copy, capsys):
  garbage = run_copy / "checkpoints" / "10"
  garbage.mkdir()
  (garbage / "meta").write_text("{")
  trainer = train.Trainer(_config(), run_copy)
  _, _, step, _ = trainer.initial_state()
  assert step == 8
  assert f"checkpoint step 10 at {garbage} cannot be read" in capsys.readouterr().err
  trainer.ckpt.close()


def test_eval_once_evaluates_the_previous_good_step(run_copy, capsys):
  flip_array_bytes(run_copy / "checkpoints" / "8")
  lines = evaluate.run(_config(), run_copy, once=True)
  assert [line["step"] for line in lines] == [6]
  assert [r["step"] for r in metrics_lib.read_jsonl(run_copy / "eval" / "metrics.jsonl")] == [6]
  out = capsys.readouterr()
  assert f"checkpoint step 8 at {run_copy / 'checkpoints' / '8'}" in out.err
  assert "evaluating step 6 instead" in out.out
  assert _steps(run_copy) == [2, 4, 6, 8]          # a reader never moves anything


def test_eval_once_of_a_corrupt_step_asked_by_number_is_refused(run_copy):
  flip_array_bytes(run_copy / "checkpoints" / "8")
  with pytest.raises(checkpoint_lib.CorruptCheckpointError,
                     match=f"no good checkpoint to evaluate .*step 8 at "
                           f"{run_copy / 'checkpoints' / '8'}"):
    evaluate.run(_config(), run_copy, once=True, checkpoint="8")
  assert not metrics_lib.read_jsonl(run_copy / "eval" / "metrics.jsonl")


def test_a_flipped_reference_model_is_an_error_not_another_reference(run_copy):
  trainer = train.Trainer(_config(), run_copy)
  like = trainer.c.base_params
  good = jax.tree.map(np.asarray, trainer.reference("stage1", like))
  flip_array_bytes(run_copy / "models" / "base" / "0")
  with pytest.raises(checkpoint_lib.CorruptCheckpointError,
                     match=f"checkpoint step 0 at {run_copy / 'models' / 'base' / '0'}"):
    trainer.reference("stage1", like)
  assert jax.tree.leaves(good)                        # the intact one restored before
  trainer.ckpt.close()


def test_eval_repairs_a_half_written_last_metrics_line(run_copy):
  metrics = run_copy / "eval" / "metrics.jsonl"
  metrics.parent.mkdir(parents=True)
  metrics.write_text('{"step": 8, "acc_t2": 0.5}\n{"step": 6, "acc_t1": 0.1')
  assert evaluate.run(_config(), run_copy, once=True, checkpoint="latest") == []  # 8 is done
  lines = evaluate.run(_config(), run_copy, once=True, checkpoint="6")
  assert [line["step"] for line in lines] == [6]
  assert [r["step"] for r in metrics_lib.read_jsonl(metrics)] == [8, 6]
  assert metrics.read_text().endswith("\n")


def test_eval_refuses_a_missing_workdir(tmp_path):
  missing = tmp_path / "no_such_run"
  for once in (True, False):
    with pytest.raises(FileNotFoundError, match=f"--workdir {missing} does not exist"):
      evaluate.run(_config("--config.eval.timeout_s=1.0", "--config.eval.poll_s=0.1"),
                   missing, once=once)
  assert not missing.exists()
  proc = subprocess.run(
      [sys.executable, "-m", "score_jax.evaluate", "--config", str(TINY), "--workdir",
       str(missing), "--once"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
      env=ENV)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --workdir {missing} does "
                                                         f"not exist")
  assert "Traceback" not in proc.stderr


def _main(workdir, *prefix, timeout=60):
  cmd = [sys.executable, *prefix, "--config", str(TINY), "--workdir", str(workdir), *FAST]
  start = time.monotonic()
  try:
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV)
  except subprocess.TimeoutExpired as e:
    raise AssertionError(f"still running after {timeout} s (hung?)") from e
  return proc, time.monotonic() - start


def test_an_unwritable_checkpoint_directory_exits_nonzero_within_30s(tmp_path):
  (tmp_path / "checkpoints").write_text("a file where the directory should be")
  proc, elapsed = _main(tmp_path, "-m", "score_jax.main")
  assert proc.returncode == 1 and elapsed < 30, (proc.returncode, elapsed, proc.stderr[-2000:])
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: checkpoint directory") and str(tmp_path / "checkpoints") in last


def test_an_immutable_checkpoint_directory_exits_nonzero_within_30s(tmp_path):
  # As root, permissions do not stop writes; the immutable attribute (ext4) does.
  (tmp_path / "checkpoints").mkdir()
  if shutil.which("chattr") is None or subprocess.run(
      ["chattr", "+i", str(tmp_path / "checkpoints")], capture_output=True).returncode:
    pytest.skip("chattr +i is not available here")
  try:
    proc, elapsed = _main(tmp_path, "-m", "score_jax.main")
  finally:
    subprocess.run(["chattr", "-i", str(tmp_path / "checkpoints")], check=True)
  assert proc.returncode == 1 and elapsed < 30, (proc.returncode, elapsed, proc.stderr[-2000:])
  assert str(tmp_path / "checkpoints") in proc.stderr.strip().splitlines()[-1]


# The same run with the start-up check disabled: the first (asynchronous) save fails in
# Orbax's background thread, which leaves threads that a normal exit would wait for forever.
LATE_FAILURE = ("import sys; from score_jax import checkpoint, main; "
                "checkpoint.Checkpointer._check_writable = lambda self: None; "
                "main.main(sys.argv[1:])")


def test_a_failed_background_save_exits_nonzero_instead_of_hanging(tmp_path):
  (tmp_path / "checkpoints").write_text("a file where the directory should be")
  proc, elapsed = _main(tmp_path, "-c", LATE_FAILURE, timeout=120)
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
  assert "Finished" not in proc.stdout
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: saving") and str(tmp_path / "checkpoints") in last, last
  print(f"exited after {elapsed:.1f} s")
