"""The run's config read back from W/config.json, and the rules for changing it (issue 14.3).

- `load_run_config` round-trips every config file through `to_json_best_effort` (tuples,
  typed Nones, nested sections); a field the file lacks takes its default with a note.
- `resolve_eval_config`: the run's config plus the command-line overrides, each printed;
  a `--config` file that differs is reported and not used; `--config` is required only
  without W/config.json.
- `record_run_config` (the trainer): a resumed run refuses changed fields outside `SAFE`
  unless forced, keeping the old config as config.<time>.json.
- A checkpoint of another model raises TreeMismatchError naming the arrays and shapes, never
  CorruptCheckpointError (which would be skipped for another step).
- evaluate reads its workdir and config without a JAX call before
  jax.distributed.initialize() (a multi-process eval failed there: the workdir probe asked
  jax.process_index()).
"""

import json
import shutil
import subprocess
import sys

import jax.numpy as jnp
import pytest

from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import run_config
from tests.conftest import REPO_ROOT

CONFIGS = sorted(p for p in (REPO_ROOT / "configs").glob("*.py") if p.stem != "__init__")
TINY = REPO_ROOT / "configs" / "tiny.py"


def _write_run(workdir, overrides=(), path=TINY):
  config = config_lib.load(path, list(overrides))
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  return config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_file_round_trips_through_config_json(tmp_path, path):
  written = _write_run(tmp_path, path=path)
  loaded, notes = run_config.load_run_config(tmp_path)
  assert run_config.diff(written, loaded) == [] and notes == []
  assert config_lib.to_plain(loaded) == config_lib.to_plain(written)
  assert isinstance(loaded.model.layer_pattern, tuple)
  assert isinstance(loaded.required_fields, tuple)
  # Typed Nones stay typed: a float field set from None takes a float, refuses a string.
  config_lib.set_field(loaded, "model.attn_logit_softcap", "50")
  assert loaded.model.attn_logit_softcap == 50.0
  with pytest.raises(config_lib.ConfigError):
    config_lib.set_field(loaded, "model.sliding_window", "wide")


def test_a_field_added_after_the_run_takes_its_default_with_a_note(tmp_path):
  _write_run(tmp_path, ["--config.rl.shaping_baseline=true"])
  data = json.loads((tmp_path / "config.json").read_text())
  del data["rl"]["shaping_baseline"], data["experiment"]
  data["task"]["legacy_field"] = 3          # a field this version no longer has: kept
  (tmp_path / "config.json").write_text(json.dumps(data))
  loaded, notes = run_config.load_run_config(tmp_path)
  assert loaded.rl.shaping_baseline is False          # configs/base.py's default
  assert loaded.experiment.rl_steps == 0 and loaded.task.legacy_field == 3
  assert loaded.model.embed_dim == 32                  # the run's (tiny), not base's 64
  assert any(n.startswith("config.rl.shaping_baseline is not in the run's config.json")
             and "configs/base.py's value False" in n for n in notes), notes
  assert any(n.startswith("config.experiment is not in") for n in notes), notes
  # With a --config file, its values fill the gaps.
  demo = config_lib.load(REPO_ROOT / "configs" / "demo.py")
  loaded, notes = run_config.load_run_config(tmp_path, defaults=demo)
  assert loaded.experiment.rl_steps == demo.experiment.rl_steps != 0
  assert any("--config's section" in n for n in notes), notes


def test_a_broken_config_json_is_named(tmp_path):
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(config_lib.ConfigError, match=f"{tmp_path / 'config.json'} is not valid"):
    run_config.load_run_config(tmp_path)


def test_diff_lists_each_changed_field():
  a = config_lib.load(TINY)
  b = config_lib.load(TINY, ["--config.optim.lr=0.5", "--config.model.layer_pattern=['x']"])
  assert run_config.diff(a, b) == [("model.layer_pattern", (), ("x",)),
                                   ("optim.lr", 1e-5, 0.5)]
  assert run_config.format_changes(run_config.diff(a, b)) == (
      "  model.layer_pattern: () -> ('x',)\n  optim.lr: 1e-05 -> 0.5")


def test_eval_config_is_the_runs_plus_the_overrides(tmp_path):
  _write_run(tmp_path, ["--config.init.checkpoint=/weights/of/the/run",
                        "--config.eval.batch_size=16"])
  printed = []
  config = run_config.resolve_eval_config(tmp_path, None, ["--config.eval.batch_size=8"],
                                          log=printed.append)
  assert config.init.checkpoint == "/weights/of/the/run" and config.eval.batch_size == 8
  assert printed == [f"config: the run's {tmp_path / 'config.json'} with 1 field(s) changed "
                     f"on the command line (run -> eval):\n  eval.batch_size: 16 -> 8"]


def test_a_differing_config_file_is_reported_and_not_used(tmp_path):
  _write_run(tmp_path, ["--config.init.checkpoint=/weights/of/the/run"])
  printed = []
  config = run_config.resolve_eval_config(tmp_path, str(REPO_ROOT / "configs" / "base.py"),
                                          ["--config.task.eval_limit=4"], log=printed.append)
  assert config.init.checkpoint == "/weights/of/the/run"   # not base.py's ""
  assert config.model.embed_dim == 32 and config.task.eval_limit == 4
  report = printed[-1]
  assert report.startswith(f"--config {REPO_ROOT / 'configs' / 'base.py'} differs from the "
                           f"run's config in ")
  assert "  init.checkpoint: '/weights/of/the/run' -> ''" in report
  assert "  model.embed_dim: 32 -> 64" in report and "task.eval_limit" not in report
  assert report.endswith("using the run's config plus the command-line overrides (set a "
                         "field with --config.FIELD=VALUE)")


def test_config_is_required_only_without_a_run_config(tmp_path):
  with pytest.raises(config_lib.ConfigError,
                     match=f"--config is required: {tmp_path / 'config.json'} not found"):
    run_config.resolve_eval_config(tmp_path, None, [])
  config = run_config.resolve_eval_config(tmp_path, str(TINY), ["--config.seed=3"])
  assert config.seed == 3 and config.model.embed_dim == 32
  with pytest.raises(config_lib.ConfigError, match="unknown config field 'config.sed'"):
    _write_run(tmp_path)
    run_config.resolve_eval_config(tmp_path, None, ["--config.sed=3"])


def test_safe_fields_exist():
  fields = run_config.flatten(config_lib.load(REPO_ROOT / "configs" / "base.py"))
  for key in run_config.SAFE:
    assert (key in fields if not key.endswith(".") else
            any(f.startswith(key) for f in fields)), key
  assert run_config.is_safe("mesh.fsdp") and run_config.is_safe("train.micro_batches")
  for unsafe in ("seed", "optim.lr", "plan.stage2_steps", "model.embed_dim", "init.checkpoint",
                 "task.data_dir", "eval.max_turn1_tokens", "eval.validation_every",
                 "model.dtype", "train.batch_size"):
    assert not run_config.is_safe(unsafe), unsafe


def _trained_step(workdir):
  (workdir / "checkpoints" / "2").mkdir(parents=True)    # a finished step, as Orbax lists it
  assert run_config.trained(workdir)


def test_resume_accepts_safe_changes_and_refuses_the_others(tmp_path):
  log = []
  run_config.record_run_config(tmp_path, config_lib.load(TINY), log=log.append)
  run_config.record_run_config(tmp_path, config_lib.load(TINY), log=log.append)
  assert log == [] and [p.name for p in tmp_path.iterdir()] == ["config.json"]
  _trained_step(tmp_path)
  safe = config_lib.load(TINY, ["--config.checkpoint.keep=5", "--config.mesh.fsdp=2",
                                "--config.train.micro_batches=2"])
  run_config.record_run_config(tmp_path, safe, log=log.append)
  assert "  checkpoint.keep: 2 -> 5  (safe: how many are kept)" in log[0]
  assert len(list(tmp_path.glob("config.*.json"))) == 1
  assert run_config.load_run_config(tmp_path)[0].checkpoint.keep == 5
  unsafe = config_lib.load(TINY, ["--config.checkpoint.keep=5", "--config.mesh.fsdp=2",
                                  "--config.train.micro_batches=2", "--config.optim.lr=0.1",
                                  "--config.plan.stage2_steps=9"])
  before = (tmp_path / "config.json").read_text()
  with pytest.raises(run_config.ConfigChangeError,
                     match=r"resuming with a changed config \(optim.lr, plan.stage2_steps\) "
                           r".* or pass --force"):
    run_config.record_run_config(tmp_path, unsafe, log=log.append)
  assert "  optim.lr: 1e-05 -> 0.1  (needs --force)" in log[-1]
  assert (tmp_path / "config.json").read_text() == before
  shutil.rmtree(tmp_path)
  run_config.record_run_config(tmp_path, safe, log=log.append)
  _trained_step(tmp_path)
  run_config.record_run_config(tmp_path, unsafe, force=True, log=log.append)
  assert run_config.load_run_config(tmp_path)[0].optim.lr == 0.1
  backups = list(tmp_path.glob("config.*.json"))
  assert len(backups) == 1 and json.loads(backups[0].read_text())["optim"]["lr"] == 1e-5


def test_a_start_that_trained_nothing_may_change_any_field(tmp_path):
  """E.g. a mistyped --config.init.checkpoint failed the first start: fixing it is no
  resume of another run."""
  run_config.record_run_config(tmp_path, config_lib.load(TINY, ["--config.init.checkpoint=/typo"]))
  (tmp_path / "checkpoints").mkdir()                      # Orbax made it, no step in it
  assert not run_config.trained(tmp_path)
  run_config.record_run_config(tmp_path, config_lib.load(TINY, ["--config.seed=4"]))
  assert run_config.load_run_config(tmp_path)[0].seed == 4


def test_a_workdir_that_is_a_file_or_not_writable_is_refused(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("")
  with pytest.raises(NotADirectoryError, match=f"--workdir {afile} is a file"):
    run_config.check_workdir(afile, create=True)
  with pytest.raises(NotADirectoryError, match=f"--workdir {afile / 'run'} is inside {afile}"):
    run_config.check_workdir(afile / "run", create=True)
  run_config.check_workdir(tmp_path / "new" / "run", create=True)
  assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())
  frozen = tmp_path / "frozen"
  frozen.mkdir()
  if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(frozen)],
                                                      capture_output=True).returncode:
    pytest.skip("chattr +i is not available here")
  try:
    with pytest.raises(PermissionError, match=f"--workdir {frozen} is not writable"):
      run_config.check_workdir(frozen, create=False)
  finally:
    subprocess.run(["chattr", "-i", str(frozen)], check=True)


# evaluate.main up to jax.distributed.initialize(), which must still be possible there.
_EVAL_BEFORE_DISTRIBUTED = """
import sys
from jax._src import xla_bridge
from score_jax import evaluate, multihost
def check(config):
  print("backends initialized:", xla_bridge.backends_are_initialized())
  raise SystemExit(0)
multihost.maybe_initialize_distributed = check
evaluate.main(["--workdir", sys.argv[1], "--step", "0"])
"""


def test_evaluate_makes_no_jax_call_before_distributed_initialize(tmp_path):
  _write_run(tmp_path / "run")
  out = subprocess.run([sys.executable, "-c", _EVAL_BEFORE_DISTRIBUTED, str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "backends initialized: False" in out.stdout, out.stdout + out.stderr[-2000:]


def test_tree_mismatches_name_each_array():
  target = {"a": jnp.zeros((2, 3)), "b": {"w": jnp.zeros((4,))}, "new": jnp.zeros(1)}
  records = {"['a']": {"shape": [2, 3]}, "['b']['w']": {"shape": [5]},
             "['old']": {"shape": [1]}}
  assert run_config.tree_mismatches(target, records) == [
      "['old']: in the checkpoint, not in the model",
      "['new']: in the model, not in the checkpoint",
      "['b']['w']: checkpoint shape (5,) != model shape (4,)"]
  assert run_config.tree_mismatches(target, {"['a']": {"shape": [2, 3]},
                                             "['b']['w']": {"shape": [4]},
                                             "['new']": {"shape": [1]}}) == []


@pytest.mark.parametrize("digests", [True, False], ids=["digests", "no_digests"])
def test_another_models_checkpoint_is_a_mismatch_not_corruption(tmp_path, digests):
  saver = checkpoint_lib.Checkpointer(tmp_path, async_save=False)
  saver.save(1, {"a": jnp.ones((2, 3)), "b": {"w": jnp.zeros((4,))}}, None, {"step": 1},
             force=True)
  saver.close()
  if not digests:
    shutil.rmtree(tmp_path / "1" / "digest")
  reader = checkpoint_lib.Checkpointer(tmp_path, read_only=True, keep_best=False)
  other = {"a": jnp.ones((2, 3)), "b": {"w": jnp.zeros((5,))}}
  words = ("['b']['w']: checkpoint shape (4,) != model shape (5,)" if digests
           else "Requested shape: (5,) is not compatible with the stored shape: (4,)")
  for restore in (lambda: reader.restore(1, other),
                  lambda: reader.restore_first_good([1], other)):   # not skipped
    with pytest.raises(checkpoint_lib.TreeMismatchError) as raised:
      restore()
    assert not isinstance(raised.value, checkpoint_lib.CorruptCheckpointError)
    text = str(raised.value)
    assert text.startswith(f"checkpoint step 1 at {tmp_path / '1'} (") and words in text
    assert "config.model.* / config.init.*" in text and "a new --workdir" in text
  if digests:       # a missing array is named too
    with pytest.raises(checkpoint_lib.TreeMismatchError,
                       match=r"\['c'\]: in the model, not in the checkpoint"):
      reader.restore(1, {**other, "c": jnp.zeros(2)})


def test_one_line_errors():
  assert run_config.one_line(ValueError("Invalid config:\n  a=1 bad\n  b=2 bad")) == (
      "Invalid config: a=1 bad b=2 bad")
  assert run_config.one_line(IsADirectoryError(21, "Is a directory")) == (
      "IsADirectoryError: [Errno 21] Is a directory")
  assert run_config.one_line(checkpoint_lib.CorruptCheckpointError("x")) == "x"
