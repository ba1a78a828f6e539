"""The CLIs on a real tiny run: the run's config, `--step`, modes, and one-line errors (issue 14).

- `evaluate --workdir W` reads W/config.json (no --config), applies only the overrides,
  evaluates `--step 0` (the initial weights), runs `--mode scaling`.
- Every filesystem / checkpoint / Hub-id mistake ends with exactly one stderr line
  `error: ...` naming the path, status 1, no traceback (unless --verbose): a missing
  init.checkpoint path, a Hub id that is not cached (offline), a work directory that is a
  file or read-only, a missing step, a checkpoint of another model, a resume with a changed
  config (which --force accepts).

Each subprocess test starts a Python with JAX (about 10-25 s on a loaded 2-core host).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from score_jax import config_lib
from score_jax import evaluate
from score_jax import main as main_lib
from score_jax import metrics as metrics_lib
from score_jax import train
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"
RUN = ["--config.plan.stages=sft", "--config.plan.sft_steps=2", "--config.task.eval_limit=4",
       "--config.eval.batch_size=4", "--config.checkpoint.async_save=false"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished 2-step run: W/config.json and checkpoint step 2."""
  workdir = tmp_path_factory.mktemp("run")
  train.Trainer(config_lib.load(TINY, RUN), workdir).run()
  return workdir


def _cli(module, *args, timeout=300):
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout, env=ENV)


def _one_line_error(proc, *needles, status=1):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == status and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
  assert lines[0].startswith("error: "), lines[0]
  for needle in needles:
    assert str(needle) in lines[0], (needle, lines[0])
  return lines[0]


def _train(workdir, *overrides):
  return _cli("score_jax.main", "--config", TINY, "--workdir", workdir, *RUN, *overrides)


def test_a_missing_init_checkpoint_path(tmp_path):
  missing = tmp_path / "no" / "weights"
  line = _one_line_error(_train(tmp_path / "w", f"--config.init.checkpoint={missing}"), missing)
  assert "does not exist" in line


def test_a_hub_id_that_is_not_cached_offline(tmp_path):
  _one_line_error(_train(tmp_path / "w", "--config.init.checkpoint=google/gemma-3-270m"),
                  "google/gemma-3-270m")


def test_a_workdir_that_is_a_file(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("")
  _one_line_error(_train(afile), f"--workdir {afile} is a file")


def test_a_read_only_workdir(tmp_path):
  # As root, permissions do not stop writes: the immutable attribute (ext4) does; without
  # chattr, /sys (sysfs refuses new entries) stands in for a read-only place.
  frozen = tmp_path / "frozen"
  frozen.mkdir()
  if shutil.which("chattr") and not subprocess.run(["chattr", "+i", str(frozen)],
                                                   capture_output=True).returncode:
    try:
      proc = _train(frozen)
    finally:
      subprocess.run(["chattr", "-i", str(frozen)], check=True)
  else:
    frozen = "/sys/score_jax_test_run"
    proc = _train(frozen)
  _one_line_error(proc, f"--workdir {frozen} is not writable")


def test_evaluate_a_missing_step_and_verbose(run):
  _one_line_error(_cli("score_jax.evaluate", "--workdir", run, "--step", "7"),
                  "no finished step 7", run / "checkpoints", "steps on disk: 2")
  verbose = _cli("score_jax.evaluate", "--workdir", run, "--step", "7", "--verbose")
  assert verbose.returncode == 1 and "Traceback" in verbose.stderr
  assert verbose.stderr.strip().splitlines()[-1].startswith("error: --checkpoint=7: no")


def test_evaluate_needs_a_config_without_a_run_config(tmp_path):
  _one_line_error(_cli("score_jax.evaluate", "--workdir", tmp_path, "--once"),
                  f"--config is required: {tmp_path / 'config.json'} not found", status=2)
  missing = tmp_path / "nothing"
  _one_line_error(_cli("score_jax.evaluate", "--workdir", missing, "--once"),
                  f"--workdir {missing} does not exist")


def test_evaluate_a_checkpoint_of_another_model_is_an_error(run):
  line = _one_line_error(_cli("score_jax.evaluate", "--workdir", run, "--once",
                              "--config.model.embed_dim=16"),
                         f"checkpoint step 2 at {run / 'checkpoints' / '2'} (params) does "
                         f"not fit", "checkpoint shape (102, 32) != model shape (102, 16)")
  assert "config.model.* / config.init.*" in line
  assert not (run / "eval" / "metrics.jsonl").exists()


def test_evaluate_reads_the_runs_config_and_step_0(run, capsys):
  evaluate.main(["--workdir", str(run), "--step", "0", "--config.task.eval_limit=2"])
  out = capsys.readouterr().out
  assert (f"config: the run's {run / 'config.json'} with 1 field(s) changed on the command "
          f"line (run -> eval):\n  task.eval_limit: 4 -> 2\n") in out
  assert "evaluating the config's initial weights (--step 0) as step 0" in out
  assert "score_jax evaluate: start-up" in out and "eval 'test' 2 of 200" in out
  assert "  config     the run's config.json + 1 command-line override(s)" in out
  rows = metrics_lib.read_jsonl(run / "eval" / "metrics.jsonl")
  assert [(r["step"], r["stage"], r["n"]) for r in rows] == [(0, "init", 2)]
  # --checkpoint is --step's alias; a differing --config file is reported, not used.
  evaluate.main(["--workdir", str(run), "--checkpoint", "2", "--config",
                 str(REPO_ROOT / "configs" / "base.py"), "--config.task.eval_limit=2"])
  out = capsys.readouterr().out
  assert f"--config {REPO_ROOT / 'configs' / 'base.py'} differs from the run's config" in out
  assert "  model.embed_dim: 32 -> 64" in out
  assert "evaluating step 2: step 2 as asked" in out
  rows = metrics_lib.read_jsonl(run / "eval" / "metrics.jsonl")
  assert [(r["step"], r["stage"]) for r in rows] == [(0, "init"), (2, "sft")]


def test_evaluate_mode_scaling(run, tmp_path, capsys):
  evaluate.main(["--workdir", str(run), "--mode", "scaling", "--step", "0", "--budgets", "2",
                 "--out", str(tmp_path), "--config.task.eval_limit=2"])
  table = json.loads((tmp_path / "scaling.json").read_text())
  assert table["_meta"]["n"] == 2 and table["_meta"]["budgets"] == [2]
  assert table["_meta"]["checkpoint"] == "the config's initial weights (--checkpoint init)"
  assert table["parallel"]["2"]["samples"] == 2 and table["seq2"]["2"]["chains"] == 1
  assert "scaling: the config's initial weights" in capsys.readouterr().out


def test_resume_with_a_changed_config_refuses_unless_forced(run, tmp_path, capsys):
  copy = tmp_path / "run"
  shutil.copytree(run, copy)
  proc = _train(copy, "--config.optim.sft_lr=0.5", "--config.checkpoint.keep=3")
  line = _one_line_error(proc, copy / "config.json", "(optim.sft_lr)", "--force")
  assert "checkpoint.keep" not in line                      # a safe change
  assert "  optim.sft_lr: 0.001 -> 0.5  (needs --force)" in proc.stdout
  assert "  checkpoint.keep: 2 -> 3  (safe: how many are kept)" in proc.stdout
  assert not list(copy.glob("config.*.json"))
  main_lib.main(["--config", str(TINY), "--workdir", str(copy), *RUN,
                 "--config.optim.sft_lr=0.5", "--force"])
  assert "score_jax train: start-up" in capsys.readouterr().out
  assert json.loads((copy / "config.json").read_text())["optim"]["sft_lr"] == 0.5
  (backup,) = copy.glob("config.*.json")
  assert json.loads(backup.read_text())["optim"]["sft_lr"] == 0.001
