"""Config files, overrides and start-up validation fail with messages that say what to fix."""

import re
import subprocess
import sys

import pytest

from score_jax import config_lib
from score_jax.rl import plan
from tests.conftest import REPO_ROOT


def test_override_sets_typed_values():
  c = config_lib.load(REPO_ROOT / "configs/tiny.py",
                      ["--config.model.num_layers=3", "--config.rl.alpha", "5",
                       "--config.plan.stages=stage2", "--config.model.sliding_window=4",
                       "--config.checkpoint.async_save=false"])
  assert c.model.num_layers == 3 and c.rl.alpha == 5.0
  assert c.plan.stages == "stage2" and c.model.sliding_window == 4
  assert c.checkpoint.async_save is False


def test_misspelled_override_names_the_field():
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.d_modle.*model\.embed_dim"):
    config_lib.load(REPO_ROOT / "configs/tiny.py", ["--config.model.d_modle=8"])


def test_wrong_type_is_rejected():
  with pytest.raises(config_lib.ConfigError, match="num_layers"):
    config_lib.load(REPO_ROOT / "configs/tiny.py", ["--config.model.num_layers=abc"])


def test_cli_misspelled_field_exits_with_message(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "score_jax.main", "--config", "configs/tiny.py",
       "--workdir", str(tmp_path), "--config.model.d_modle=8"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "config.model.d_modle" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_config_file():
  with pytest.raises(config_lib.ConfigError, match="not found"):
    config_lib.load("configs/nope.py")


@pytest.mark.parametrize("override, message", [
    ("--config.plan.stages=stage1,stage3", "unknown stage 'stage3'"),
    ("--config.rl.alpha=-1", r"config.rl.alpha=-1.0 must be >= 0"),
    ("--config.rl.beta2=-0.5", r"config.rl.beta2=-0.5 must be >= 0"),
    ("--config.rollout.samples_per_prompt=1", "leave-one-out"),
    ("--config.rl.kl_estimator=k4", "kl_estimator"),
    ("--config.rollout.temperature=0.7", r"temperature=0.7 samples from another .* "
                                         r"off-policy. Set --config.rollout.temperature=1.0"),
    ("--config.rollout.top_k=5", r"top_k=5 .* off-policy"),
    ("--config.rollout.top_p=0.9", r"top_p=0.9 .* off-policy"),
])
def test_bad_settings_fail_at_start(override, message):
  c = config_lib.load(REPO_ROOT / "configs/tiny.py", [override])
  with pytest.raises(ValueError, match=message):
    plan.validate(c)


def test_off_policy_sampling_is_fine_for_supervised_stages():
  # STaR / Pair-SFT / sft train on samples as data, not with their log-probs.
  c = config_lib.load(REPO_ROOT / "configs/tiny.py", [
      "--config.rollout.temperature=0.7", "--config.plan.stages=sft,star",
      "--config.plan.star_steps=2"])
  plan.validate(c)
  # An RL stage with zero steps does not sample either.
  c = config_lib.load(REPO_ROOT / "configs/tiny.py", [
      "--config.rollout.temperature=0.7", "--config.plan.stages=sft,stage1",
      "--config.plan.stage1_steps=0"])
  plan.validate(c)


def test_plan_blocks_and_interleaving():
  cfg = dict(stages="sft,stage1,stage2", sft_steps=3, stage1_steps=5, stage2_steps=4,
             single_turn_steps=0, interleave=2)
  blocks = plan.build_plan(cfg)
  assert [(b.stage, b.steps, b.start) for b in blocks] == [
      ("sft", 3, 0), ("stage1", 2, 3), ("stage2", 2, 5), ("stage1", 2, 7), ("stage2", 2, 9),
      ("stage1", 1, 11)]
  assert plan.total_steps(blocks) == 12
  assert plan.block_at(blocks, 6).stage == "stage2"
  with pytest.raises(IndexError):
    plan.block_at(blocks, 12)
  cfg["interleave"] = 0
  assert [(b.stage, b.steps) for b in plan.build_plan(cfg)] == [
      ("sft", 3), ("stage1", 5), ("stage2", 4)]


# ------------------------------------------------------------------ numeric ranges at start

@pytest.mark.parametrize("override, rule", [
    ("--config.optim.lr=-0.001", "a finite number > 0"),                  # > 0
    ("--config.optim.sft_lr=0.0", "a finite number > 0"),
    ("--config.task.timeout_s=0", "a finite number > 0"),
    ("--config.train.sft_batch_size=0", "an integer >= 1"),               # >= 1
    ("--config.checkpoint.keep=0", "an integer >= 1"),
    ("--config.plan.stage1_steps=-1", "an integer >= 0"),                 # >= 0 (0 = off)
    ("--config.mesh.fsdp=0", r"an integer >= 1, or -1 \(all remaining devices\)"),
    ("--config.rollout.temperature=-0.5", "a finite number >= 0"),
    ("--config.task.error_rate=1.5", r"a number in \[0, 1\]"),           # probabilities
    ("--config.optim.b2=1.0", r"a number in \[0, 1\)"),
    ("--config.rollout.top_p=0.0", r"a number in \(0, 1\]"),
    ("--config.model.sliding_window=0", "None or an integer >= 1"),       # optional
    ("--config.model.final_logit_softcap=-30.0", "None or a finite number > 0"),
    ("--config.eval.poll_s=1e999", "a finite number > 0"),                # inf
])
def test_out_of_range_values_fail_naming_field_value_rule_and_fix(override, rule):
  field, value = override.removeprefix("--config.").split("=")
  c = config_lib.load(REPO_ROOT / "configs/tiny.py", [override])
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_ranges(c)
  message = str(e.value)
  assert f"config.{field}=" in message and "is out of range: it must be" in message
  assert re.search(rule, message), message
  assert f"Fix: set --config.{field} to" in message


def test_several_bad_values_are_reported_together():
  c = config_lib.load(REPO_ROOT / "configs/tiny.py", [
      "--config.optim.lr=-1e-3", "--config.train.sft_batch_size=0", "--config.task.timeout_s=0"])
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_ranges(c)
  for text in ("config.optim.lr=-0.001", "config.train.sft_batch_size=0",
               "config.task.timeout_s=0.0"):
    assert text in str(e.value)


CONFIG_FILES = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py")
                      if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_numeric_field_has_a_range_and_the_defaults_pass(name):
  c = config_lib.load_config_file(REPO_ROOT / "configs" / f"{name}.py")
  missing = [f for f in config_lib.numeric_fields(c) if f not in config_lib.RANGES]
  assert not missing, (f"numeric fields of configs/{name}.py without a rule in "
                       f"config_lib.RANGES: {missing}")
  config_lib.check_ranges(c)


def test_every_rule_names_a_numeric_field_of_the_base_config():
  fields = set(config_lib.numeric_fields(config_lib.load_config_file(
      REPO_ROOT / "configs/base.py")))
  assert set(config_lib.RANGES) <= fields, set(config_lib.RANGES) - fields
  assert {kind for kind, _ in config_lib.RANGES.values()} <= set(config_lib.RULE_KINDS)


def test_trainer_refuses_bad_ranges_before_building_anything(tmp_path, monkeypatch):
  from score_jax import build as build_lib
  from score_jax import train
  monkeypatch.setattr(build_lib, "build", lambda *a, **k: pytest.fail("built a model"))
  c = config_lib.load(REPO_ROOT / "configs/tiny.py", ["--config.optim.lr=-1e-3"])
  with pytest.raises(config_lib.ConfigError, match="config.optim.lr=-0.001"):
    train.Trainer(c, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_cli_bad_range_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "score_jax.main", "--config", "configs/tiny.py",
       "--workdir", str(tmp_path / "w"), "--config.train.sft_batch_size=0"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "config.train.sft_batch_size=0 is out of range" in proc.stderr
  assert not (tmp_path / "w").exists()
