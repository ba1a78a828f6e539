"""The stage plan: which training stages run, in which order, for how many steps.

`stages = "sft,stage1,stage2"` with per-stage step counts becomes a list of `Block`s. With
`interleave = n > 0`, Stage I and Stage II alternate in blocks of n steps (arXiv v1's variant)
until each has used its steps. A global step index maps to exactly one block, which is how a
resumed run knows its stage. `validate` checks a whole config before anything is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

STAGES = ("sft", "stage1", "stage2", "single_turn", "star", "pair_sft")
SUPERVISED_STAGES = ("sft", "star", "pair_sft")
RL_STAGES = tuple(s for s in STAGES if s not in SUPERVISED_STAGES)   # on-policy, with a loss
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_MODES = ("loss", "reward")
BASELINES = ("none", "batch_mean", "loo")


@dataclasses.dataclass(frozen=True)
class Block:
  stage: str
  steps: int
  start: int  # global step of the block's first step


def stage_names(plan_cfg: Mapping[str, Any]) -> list[str]:
  return [s.strip() for s in str(plan_cfg["stages"]).split(",") if s.strip()]


def build_plan(plan_cfg: Mapping[str, Any]) -> list[Block]:
  """Blocks of the run, in order (see module docstring)."""
  names = stage_names(plan_cfg)
  steps = {name: int(plan_cfg[f"{name}_steps"]) for name in names}
  order: list[tuple[str, int]] = []
  n = int(plan_cfg.get("interleave", 0))
  for name in names:
    if n > 0 and name in ("stage1", "stage2"):
      if name == "stage2" and "stage1" in names:
        continue  # emitted together with stage1 below
      if name == "stage1" and "stage2" in names:
        left = {"stage1": steps["stage1"], "stage2": steps["stage2"]}
        while left["stage1"] or left["stage2"]:
          for s in ("stage1", "stage2"):
            take = min(n, left[s])
            if take:
              order.append((s, take))
              left[s] -= take
        continue
    order.append((name, steps[name]))
  blocks, start = [], 0
  for name, k in order:
    if k > 0:
      blocks.append(Block(name, k, start))
      start += k
  return blocks


def total_steps(blocks: list[Block]) -> int:
  return sum(b.steps for b in blocks)


def block_at(blocks: list[Block], step: int) -> Block:
  """The block that global step `step` (0-based) belongs to."""
  for b in blocks:
    if b.start <= step < b.start + b.steps:
      return b
  raise IndexError(f"step {step} is past the end of the plan ({total_steps(blocks)} steps)")


def validate(config: Mapping[str, Any]) -> None:
  """Fails at start, with the field and the fix, on settings that cannot run."""
  errors = []
  names = stage_names(config["plan"])
  for name in names:
    if name not in STAGES:
      errors.append(f"config.plan.stages: unknown stage {name!r}; stages are {STAGES}")
  if not names:
    errors.append("config.plan.stages is empty; e.g. --config.plan.stages=stage1,stage2")
  for name in names:
    if name in STAGES and int(config["plan"][f"{name}_steps"]) < 0:
      errors.append(f"config.plan.{name}_steps must be >= 0")
  rl = config["rl"]
  for field in ("alpha", "beta1", "beta2"):
    if float(rl[field]) < 0:
      errors.append(f"config.rl.{field}={rl[field]} must be >= 0 (the paper uses "
                    f"alpha=10, beta1=0.01, beta2=0.1)")
  if rl["kl_estimator"] not in KL_ESTIMATORS:
    errors.append(f"config.rl.kl_estimator={rl['kl_estimator']!r} not in {KL_ESTIMATORS}")
  if rl["kl_mode"] not in KL_MODES:
    errors.append(f"config.rl.kl_mode={rl['kl_mode']!r} not in {KL_MODES}")
  if rl["baseline"] not in BASELINES:
    errors.append(f"config.rl.baseline={rl['baseline']!r} not in {BASELINES}")
  k = int(config["rollout"]["samples_per_prompt"])
  if k < 1:
    errors.append(f"config.rollout.samples_per_prompt={k} must be >= 1")
  if rl["baseline"] == "loo" and k < 2:
    errors.append(f"config.rl.baseline='loo' (leave-one-out) needs "
                  f"config.rollout.samples_per_prompt >= 2, got {k}; set "
                  f"--config.rollout.samples_per_prompt=2 or --config.rl.baseline=batch_mean")
  if rl["stage2_reference"] not in ("base", "stage1"):
    errors.append(f"config.rl.stage2_reference={rl['stage2_reference']!r} not in "
                  f"('base', 'stage1')")
  if "shaping_baseline" in rl and not isinstance(rl["shaping_baseline"], bool):
    errors.append(f"config.rl.shaping_baseline={rl['shaping_baseline']!r} must be True/False")
  rollout = config["rollout"]
  attempts = rollout.get("num_attempts", 2)
  if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 2:
    errors.append(f"config.rollout.num_attempts={attempts!r} must be an integer >= 2 (the "
                  f"first attempt and at least one correction; the paper uses 2)")
  elif attempts != 2:
    two_only = [n for n in names if n in ("star", "pair_sft")
                and int(config["plan"][f"{n}_steps"]) > 0]
    if two_only:
      errors.append(f"stages {two_only} are the paper's two-attempt baselines: set "
                    f"--config.rollout.num_attempts=2 (got {attempts})")
  rl_stages = [n for n in names if n in RL_STAGES and int(config["plan"][f"{n}_steps"]) > 0]
  off_policy = [f"{field}={rollout[field]}" for field, on_policy in
                (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0))
                if float(rollout[field]) != on_policy]
  if rl_stages and off_policy:
    errors.append(
        f"config.rollout {', '.join(off_policy)} samples from another distribution than the "
        f"temperature-1 log-probs the RL losses use: stages {rl_stages} would train "
        "off-policy. Set --config.rollout.temperature=1.0 --config.rollout.top_k=0 "
        "--config.rollout.top_p=1.0 (the paper's setting); evaluation temperature is "
        "separate")
  if not 0.0 <= float(config["rollout"]["offline_fraction"]) < 1.0:
    errors.append("config.rollout.offline_fraction must be in [0, 1)")
  if int(config["train"]["batch_size"]) < 1 or int(config["train"]["micro_batches"]) < 1:
    errors.append("config.train.batch_size and config.train.micro_batches must be >= 1")
  elif (int(config["train"]["batch_size"]) * k) % int(config["train"]["micro_batches"]):
    errors.append("config.train.batch_size * samples_per_prompt must be divisible by "
                  "config.train.micro_batches (micro-batches hold equal numbers of rows)")
  for dotted in config.get("required_fields", ()):
    node = config
    try:
      for part in dotted.split("."):
        node = node[part]
    except (KeyError, TypeError):
      errors.append(f"config.required_fields names {dotted!r}, which is not a config field")
      continue
    if node in ("", None):
      errors.append(f"config.{dotted} is required by this config and is empty: pass "
                    f"--config.{dotted}=... (the config file's docstring has the command)")
  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))
