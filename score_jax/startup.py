"""The start-up summary of `score_jax.main` and `score_jax.evaluate`, and the splits' problems.

`summary` returns one block of text (printed once, by process 0) from a run's Components,
its config and work directory:

  score_jax train: start-up
    devices    8 x cpu (cpu), 1 process(es); mesh data=1 fsdp=8 tensor=1
    model      llama, 2 layers, D=32 F=64, 4 heads / 2 kv of 8; 21,856 (21.9K) parameters
               (float32, compute float32); random init (seed 0)       [one line]
    tokenizer  char (CharTokenizer), vocab 102 (model 102); chat format plain
    data       toy: train 'train' 2,000 | eval 'test' 32 of 200 | validation off
    plan       sft 4 -> stage1 2 -> stage2 2: 8 steps, 2 attempts
    workdir    runs/tiny
    config     configs/tiny.py

with the devices and the mesh, the model family and parameter count, the tokenizer and its
vocabulary, the task's split sizes (train / eval / validation, with the limits that apply),
the stage plan, the work directory and where the config came from. `split_sizes` loads the
splits to count them; `summary` itself only formats.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np

from score_jax.rl import plan as plan_lib
from score_jax.tasks import base as task_base


def split_problems(task: task_base.Task, split: str, limit: int) -> list[task_base.Problem]:
  """The first `limit` problems of `split` (0: all of them)."""
  problems = task.load(split)
  return problems[:limit] if int(limit) > 0 else problems


def eval_problems(c: Any) -> list[task_base.Problem]:
  """The eval split's problems (config.task.eval_split, up to config.task.eval_limit)."""
  return split_problems(c.task, c.config.task.eval_split, int(c.config.task.eval_limit))


def param_count(params: Any) -> int:
  """Elements of every array leaf of `params` (concrete or abstract)."""
  return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def split_sizes(task: task_base.Task, splits: Any, known: Mapping[str, int] | None = None
                ) -> dict[str, int | None]:
  """{split: problem count} (None for a split the task does not have); `known` counts are
  taken as given (a split already loaded)."""
  out: dict[str, int | None] = {}
  for split in dict.fromkeys(splits):
    if known and split in known:
      out[split] = int(known[split])
    else:
      out[split] = len(task.load(split)) if split in task.splits else None
  return out


def run_splits(config: Any) -> list[str]:
  """The splits a run reads: train, eval, and validation when it validates."""
  task, ev = config.task, config.eval
  return [task.train_split, task.eval_split] + (
      [ev.validation_split] if int(ev.validation_every) > 0 else [])


def _count(n: int) -> str:
  for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= size:
      return f"{n:,} ({n / size:.1f}{unit})"
  return f"{n:,}"


def _limited(sizes: Mapping[str, int | None], split: str, limit: int) -> str:
  n = sizes.get(split)
  if n is None:
    return f"'{split}' (no such split)"
  used = min(n, int(limit)) if int(limit) > 0 else n
  return f"'{split}' {used:,}" + (f" of {n:,}" if used != n else "")


def summary(c: Any, *, workdir: Any, source: str, sizes: Mapping[str, int | None],
            what: str = "train") -> str:
  """The start-up block (module docstring) of Components `c`; `sizes` from `split_sizes`,
  `source` says where the config came from, `what` is "train" or "evaluate"."""
  config, m = c.config, c.model_config
  devices = list(c.mesh.devices.flat)
  kinds = sorted({d.device_kind for d in devices})
  mesh = " ".join(f"{axis}={size}" for axis, size in c.mesh.shape.items())
  init = (f"from {config.init.checkpoint}" if config.init.checkpoint else
          f"random init (seed {config.seed})")
  if config.init.params:
    init += f", params from {config.init.params}"
  vocab = getattr(c.tokenizer, "vocab_size", None)
  vocab = "?" if vocab is None else f"{vocab:,}"
  tok = config.tokenizer
  task = config.task
  ev = config.eval
  validation = (_limited(sizes, ev.validation_split, ev.validation_limit)
                + f" every {ev.validation_every} steps" if int(ev.validation_every) > 0
                else "off")
  blocks = plan_lib.build_plan(config.plan)
  plan = " -> ".join(f"{b.stage} {b.steps}" for b in blocks) or "no steps"
  lines = [
      f"score_jax {what}: start-up",
      f"  devices    {len(devices)} x {c.mesh.devices.flat[0].platform} ({', '.join(kinds)}), "
      f"{jax.process_count()} process(es); mesh {mesh}",
      f"  model      {m.family}, {m.num_layers} layers, D={m.embed_dim} F={m.hidden_dim}, "
      f"{m.num_heads} heads / {m.num_kv_heads} kv of {m.head_dim}; "
      f"{_count(param_count(c.base_params))} parameters ({m.param_dtype}, compute "
      f"{m.dtype}); {init}",
      f"  tokenizer  {tok.kind}{' ' + tok.path if tok.path else ''} "
      f"({type(c.tokenizer).__name__}), vocab {vocab} (model {m.vocab_size:,}); "
      f"chat format {config.chat_format}",
      f"  data       {task.name}: train {_limited(sizes, task.train_split, 0)} | eval "
      f"{_limited(sizes, task.eval_split, task.eval_limit)} | validation {validation}",
      f"  plan       {plan}: {plan_lib.total_steps(blocks)} steps, {config.rollout.num_attempts} "
      f"attempts",
      f"  workdir    {workdir}",
      f"  config     {source}",
  ]
  return "\n".join(lines)
