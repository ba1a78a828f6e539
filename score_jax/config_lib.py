"""Config files, command-line overrides and the command line itself (ml_collections).

  --config PATH            a config file with get_config()
  --workdir DIR            where checkpoints, metrics and plots go
  --config.a.b=VALUE       overrides (unknown fields fail with the closest names)

A config file is a Python file with `get_config() -> ml_collections.ConfigDict`
(`configs/base.py` documents every field). Overrides are `--config.section.field=value`;
a field that does not exist fails with the closest known names, never silently.

Configs stop at the edge of numeric code: `sections(config)` turns them into frozen
dataclasses that are hashable and can be static arguments of `jax.jit`.

`RANGES` gives every numeric field its valid range (learning rates > 0, batch sizes >= 1,
probabilities in [0, 1], ...); `check_ranges` enforces it at start, before anything loads,
with the field, the value, the rule and the fix. A new numeric field needs a rule here
(tests/test_config.py walks every config file).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import math
import pathlib
import sys
from typing import Any, Sequence

import ml_collections


class ConfigError(ValueError):
  """A bad config file, field or value; the message says what to change."""


def load_config_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Imports `path` and calls its `get_config()`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {path} not found (expected e.g. configs/tiny.py)")
  spec = importlib.util.spec_from_file_location(f"score_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  # Configs import their parents as `from configs import base`: put the folder that holds
  # `configs/` on the path.
  root = str(path.resolve().parent.parent)
  if root not in sys.path:
    sys.path.insert(0, root)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"config file {path} failed to import: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} has no get_config() function")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  return config


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string such as stage1 or /path/to/ckpt


def _field_names(node: ml_collections.ConfigDict, prefix: str) -> list[str]:
  return [f"{prefix}{k}" for k in node.keys()]


def set_field(config: ml_collections.ConfigDict, dotted: str, raw_value: str) -> None:
  """Sets `config.<dotted> = raw_value` (parsed as a Python literal), checking the name.

  Raises:
    ConfigError: naming the unknown field and its closest known spellings.
  """
  parts = dotted.split(".")
  node = config
  for depth, part in enumerate(parts):
    prefix = ".".join(parts[:depth])
    prefix = prefix + "." if prefix else ""
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = _field_names(node, prefix) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(prefix + part, known, n=3)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(
          f"unknown config field 'config.{dotted}' (no field '{part}' in "
          f"'config{'.' + prefix[:-1] if prefix else ''}').{hint} "
          f"Known fields there: {', '.join(sorted(k.split('.')[-1] for k in known))}.")
    if depth < len(parts) - 1:
      node = node[part]
  key = parts[-1]
  value = _parse_value(raw_value)
  old = node[key]
  if isinstance(old, bool) and isinstance(value, str):
    value = {"true": True, "false": False}.get(value.lower(), value)
  if isinstance(old, str) and not isinstance(value, str):
    value = raw_value  # e.g. --config.plan.stages=1 for a string field
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    node[key] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{dotted}={raw_value!r}: {e} (current value: {old!r})") from e


def parse_overrides(config: ml_collections.ConfigDict, argv: Sequence[str]) -> list[str]:
  """Applies every `--config.a.b=v` (or `--config.a.b v`) in argv; returns the other args."""
  rest: list[str] = []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith("--config."):
      name, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        if i + 1 >= len(args):
          raise ConfigError(f"{arg} needs a value: {arg}=VALUE")
        value = args[i + 1]
        i += 1
      set_field(config, name, value)
    else:
      rest.append(arg)
    i += 1
  return rest


def load(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads a config file and applies `--config.x=y` overrides; raises on unknown args."""
  config = load_config_file(path)
  rest = parse_overrides(config, overrides)
  if rest:
    raise ConfigError(f"unexpected arguments {rest}; overrides look like --config.train.steps=10")
  return config


def _int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Rule kind -> (test, what it means in an error message).
RULE_KINDS = {
    "int>=0": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "int>=1": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "int>=2": (lambda v: _int(v) and v >= 2, "an integer >= 2"),
    "int>=1|-1": (lambda v: _int(v) and (v >= 1 or v == -1),
                  "an integer >= 1, or -1 (all remaining devices)"),
    "None|int>=1": (lambda v: v is None or (_int(v) and v >= 1), "None or an integer >= 1"),
    ">0": (lambda v: _num(v) and v > 0, "a finite number > 0"),
    ">=0": (lambda v: _num(v) and v >= 0, "a finite number >= 0"),
    "None|>0": (lambda v: v is None or (_num(v) and v > 0), "None or a finite number > 0"),
    "[0,1]": (lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "[0,1)": (lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "(0,1]": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
}

# Every numeric field of configs/base.py -> (rule kind, meaning / a typical value).
RANGES: dict[str, tuple[str, str]] = {
    "seed": ("int>=0", "seeds numpy's and JAX's generators, e.g. 0"),
    **{f"mesh.{a}": ("int>=1|-1", "devices on this mesh axis, e.g. 1")
       for a in ("data", "fsdp", "tensor")},
    "model.vocab_size": ("int>=0", "0 takes the tokenizer's vocabulary size"),
    **{f"model.{f}": ("int>=1", "a model dimension, e.g. 2 layers / 64 wide")
       for f in ("num_layers", "embed_dim", "hidden_dim", "num_heads", "num_kv_heads",
                 "head_dim")},
    "model.norm_eps": (">0", "RMSNorm epsilon, e.g. 1e-6"),
    "model.rope_base": (">0", "RoPE base, e.g. 10000.0"),
    "model.rope_local_base": ("None|>0", "RoPE base of local layers, None = rope_base"),
    "model.rope_scale_factor": (">0", "RoPE position scaling, 1.0 = none"),
    "model.attn_logit_softcap": ("None|>0", "None = no soft-cap, e.g. 50.0"),
    "model.final_logit_softcap": ("None|>0", "None = no soft-cap, e.g. 30.0"),
    "model.sliding_window": ("None|int>=1", "None = full attention, e.g. 4096"),
    "model.query_pre_attn_scalar": ("None|>0", "None = head_dim"),
    "task.eval_limit": ("int>=0", "0 evaluates every problem"),
    "task.workers": ("int>=1", "grader / sandbox processes, e.g. 2"),
    "task.num_shots": ("int>=0", "GSM8K few-shot exemplars in the prompt, 0 (zero-shot) to 8"),
    "task.timeout_s": (">0", "per-item grading limit in seconds, e.g. 10.0; 0 would "
                             "grade every answer wrong"),
    "task.min_len": ("int>=1", "shortest synthetic word, e.g. 5"),
    "task.max_len": ("int>=1", "longest synthetic word, e.g. 8"),
    "task.error_rate": ("[0,1]", "a probability, e.g. 0.3"),
    "task.blind_spot_rate": ("[0,1]", "a probability, e.g. 0.0"),
    "rollout.num_attempts": ("int>=2", "attempts per episode, the paper's 2"),
    **{f"rollout.{f}": ("int>=1", "a token budget, e.g. 16")
       for f in ("max_prompt_len", "max_turn1_tokens", "max_turn2_tokens",
                 "max_instruction_len")},
    "rollout.temperature": (">=0", "sampling temperature, 1.0 on-policy (0 = greedy)"),
    "rollout.top_k": ("int>=0", "0 = off"),
    "rollout.top_p": ("(0,1]", "1.0 = off"),
    "rollout.samples_per_prompt": ("int>=1", "rollouts per prompt, e.g. 2"),
    "rollout.offline_fraction": ("[0,1)", "a share of first attempts, e.g. 0.0"),
    "rollout.slots": ("int>=0", "continuous batching slots, 0 = the batch size"),
    "rollout.segment_steps": ("int>=1", "decode steps between refills, e.g. 64"),
    **{f"rl.{f}": (">=0", "a weight; the paper: alpha 10, beta1 0.01, beta2 0.1")
       for f in ("alpha", "beta1", "beta2")},
    **{f"plan.{f}": ("int>=0", "steps of a stage, 0 = skip it")
       for f in ("sft_steps", "stage1_steps", "stage2_steps", "single_turn_steps",
                 "star_steps", "pair_sft_steps")},
    "plan.interleave": ("int>=0", "0 = no interleaving"),
    "optim.lr": (">0", "peak learning rate, e.g. 1e-5"),
    "optim.sft_lr": (">0", "learning rate of the sft stage, e.g. 1e-3"),
    "optim.warmup_steps": ("int>=0", "0 = no warm-up"),
    "optim.b1": ("[0,1)", "Adam's first-moment decay, e.g. 0.9"),
    "optim.b2": ("[0,1)", "Adam's second-moment decay, e.g. 0.999"),
    "optim.eps": (">0", "Adam's epsilon, e.g. 1e-8"),
    "optim.weight_decay": (">=0", "adamw's decay, 0.0 = none"),
    "optim.clip_norm": (">=0", "global gradient-norm clip, 0 = off"),
    "train.batch_size": ("int>=1", "prompts per step, e.g. 8"),
    "train.sft_batch_size": ("int>=1", "sequences per sft step, e.g. 32"),
    "train.micro_batches": ("int>=1", "1 = no accumulation"),
    "train.logit_chunk": ("int>=0", "0 = all positions at once"),
    "train.compact_bucket": ("int>=1", "columns per shape bucket, e.g. 64"),
    "train.log_every": ("int>=1", "1 = every step"),
    "train.max_nan_steps": ("int>=1", "e.g. 3"),
    "checkpoint.every": ("int>=1", "steps between checkpoints, e.g. 2"),
    "checkpoint.keep": ("int>=1", "checkpoints kept, e.g. 2"),
    "eval.batch_size": ("int>=1", "problems per sampler call, e.g. 32"),
    "eval.max_turn1_tokens": ("int>=1", "a token budget, e.g. 16"),
    "eval.max_turn2_tokens": ("int>=1", "a token budget, e.g. 16"),
    "eval.poll_s": (">0", "seconds between looks for new checkpoints, e.g. 5.0"),
    "eval.timeout_s": (">0", "seconds to wait for a new checkpoint, e.g. 3600.0"),
    "eval.validation_every": ("int>=0", "0 = no validation"),
    "eval.validation_limit": ("int>=0", "0 = the whole split"),
    "experiment.base_steps": ("int>=0", "sft steps of the base model"),
    "experiment.rl_steps": ("int>=0", "RL steps of each method"),
    "experiment.stage1_fraction": ("[0,1]", "a share of rl_steps, e.g. 0.5"),
    "experiment.sft_baseline_steps": ("int>=0", "steps of STaR / Pair-SFT"),
    "experiment.sft_baseline_lr": (">0", "learning rate of STaR / Pair-SFT, e.g. 1e-4"),
}


def _leaf(config: Any, dotted: str) -> tuple[bool, Any]:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False, None
    node = node[part]
  return True, node


def check_ranges(config: Any) -> None:
  """Raises ConfigError listing every numeric field outside its range (`RANGES`)."""
  errors = []
  for field, (kind, meaning) in RANGES.items():
    present, value = _leaf(config, field)
    test, text = RULE_KINDS[kind]
    if present and not test(value):
      errors.append(f"config.{field}={value!r} is out of range: it must be {text} "
                    f"({meaning}). Fix: set --config.{field} to {text}")
  if errors:
    raise ConfigError("Invalid config:\n  " + "\n  ".join(errors))


def numeric_fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Dotted names of the int / float fields of `config` (None-valued typed fields too)."""
  out = []
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out += numeric_fields(value, f"{prefix}{key}.")
      continue
    kind = config.get_ref(key).get_type() if value is None else type(value)
    if kind in (int, float):
      out.append(prefix + key)
  return out


def to_plain(node: Any) -> Any:
  """ConfigDict -> nested plain dicts / tuples (for JSON and dataclasses)."""
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    return {k: to_plain(v) for k, v in node.items()}
  if isinstance(node, list):
    return tuple(to_plain(v) for v in node)
  return node


def parse(argv: Sequence[str], description: str, extra: Sequence[tuple[str, dict]] = ()
          ) -> tuple[ml_collections.ConfigDict, argparse.Namespace]:
  """The command line of `score_jax.main` / `score_jax.evaluate`: config, workdir, extras."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py")
  parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics)")
  for name, kwargs in extra:
    parser.add_argument(name, **kwargs)
  args, rest = parser.parse_known_args(argv)
  try:
    config = load(args.config, rest)
  except ConfigError as e:
    parser.exit(2, f"error: {e}\n")
  return config, args


def die(message: str) -> None:
  """Prints `error: message` to stderr and exits with status 1 (the CLIs' one-line errors)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)
