"""Validation during training: the checkpoint-selection signal.

Every `config.eval.validation_every` steps, and at the last step, the trainer evaluates the
params it is training with greedy two-turn decoding (`evaluate.evaluate_params`, the eval
loop's settings: `config.eval.batch_size`, `max_turn1_tokens`, `max_turn2_tokens`) on the
first `config.eval.validation_limit` problems (0 = all) of the task's
`config.eval.validation_split`, which every task keeps disjoint from its train and test
splits (HumanEval has none). Each validation

  - appends one line to `W/validation/metrics.jsonl` (step, stage, split, n, the metrics of
    `metrics.keys(A)` with standard errors, time_s) and TensorBoard (`W/tensorboard/validation`);
  - forces a checkpoint at that step, saved with the metrics: Orbax keeps the best one by
    `config.checkpoint.best_metric` besides the last `config.checkpoint.keep`, and
    `checkpoint.select_step` (the eval loop, the experiments) evaluates it.

Steps in between are saved without metrics (kept only while among the last `keep`). With
`validation_every = 0` (the default: no extra cost) nothing is validated and "best" means
the latest step. A skipped (non-finite) step is neither saved nor validated.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Mapping

import ml_collections
import tqdm

from score_jax import build as build_lib
from score_jax import checkpoint as checkpoint_lib
from score_jax import evaluate as evaluate_lib
from score_jax import metrics as metrics_lib
from score_jax.tasks import base as task_base


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_config(config: Mapping[str, Any]) -> None:
  """Fails at start, naming the field and the fix, on bad validation / selection settings."""
  ev, errors = config["eval"], []
  for field in ("validation_every", "validation_limit"):
    value = ev[field]
    if not _is_int(value) or value < 0:
      errors.append(f"config.eval.{field}={value!r} must be an integer >= 0 (0 = "
                    f"{'off' if field == 'validation_every' else 'the whole split'})")
  if not isinstance(ev["validation_split"], str) or not ev["validation_split"].strip():
    errors.append(f"config.eval.validation_split={ev['validation_split']!r} must name a split "
                  f"of the task, e.g. 'validation'")
  try:
    checkpoint_lib.check_best_metric(config["checkpoint"]["best_metric"],
                                     int(config.get("rollout", {}).get("num_attempts", 2)))
  except ValueError as e:
    errors.append(str(e))
  if "checkpoint" in config.get("experiment", {}):
    try:
      checkpoint_lib.parse_choice(config["experiment"]["checkpoint"],
                                  "config.experiment.checkpoint")
    except ValueError as e:
      errors.append(str(e))
  if errors:
    raise ValueError("; ".join(errors))


def validation_problems(c: build_lib.Components) -> list[task_base.Problem]:
  """The first `config.eval.validation_limit` problems of the validation split."""
  ev, task = c.config.eval, c.task
  split = str(ev.validation_split)
  if split not in task.splits:
    raise ValueError(f"config.eval.validation_split={split!r}: task {task.name!r} has no such "
                     f"split (it has {task.splits}); set config.eval.validation_every=0 to "
                     f"train without validation, or name one of its splits")
  if split in (c.config.task.train_split, c.config.task.eval_split):
    raise ValueError(f"config.eval.validation_split={split!r} is also config.task."
                     f"{'train_split' if split == c.config.task.train_split else 'eval_split'}; "
                     f"validate on a held-out split such as 'validation'")
  return evaluate_lib.split_problems(task, split, int(ev.validation_limit))


class Validator:
  """Runs the validations of one training run (see the module docstring)."""

  def __init__(self, c: build_lib.Components, workdir: pathlib.Path, total: int, *,
               is_writer: bool):
    config: ml_collections.ConfigDict = c.config
    self.c, self.total = c, int(total)
    self.every = int(config.eval.validation_every)
    self.split = str(config.eval.validation_split)
    self.problems = validation_problems(c) if self.every > 0 else []
    self.writer = None
    if self.every > 0 and is_writer:
      tb = workdir / "tensorboard" / "validation" if config.train.tensorboard else None
      self.writer = metrics_lib.MetricWriter(workdir / "validation" / "metrics.jsonl", tb)

  def due(self, step: int) -> bool:
    """Whether the params after `step` steps are validated."""
    return self.every > 0 and (step % self.every == 0 or step == self.total)

  def maybe_run(self, step: int, stage: str, params: Any) -> dict[str, float] | None:
    """Validates the params after `step` steps when due; returns the checkpoint's metrics
    (`n` and `metrics.keys(A)`), else None."""
    if not self.due(step):
      return None
    ev = self.c.config.eval
    t0 = time.perf_counter()
    result = evaluate_lib.evaluate_params(self.c, params, self.problems,
                                          batch_size=int(ev.batch_size),
                                          turn1_tokens=int(ev.max_turn1_tokens),
                                          turn2_tokens=int(ev.max_turn2_tokens), progress=False)
    result.pop("records")
    if self.writer is not None:
      self.writer.write(step, {"stage": stage, "split": self.split, **result,
                               "time_s": time.perf_counter() - t0})
      tqdm.tqdm.write(f"validation at step {step} ({stage}, {result['n']} problems): "
                      f"acc_t1={result['acc_t1']:.3f} acc_t2={result['acc_t2']:.3f} "
                      f"delta={result['delta']:+.3f}")
    keys = metrics_lib.keys(int(self.c.config.rollout.num_attempts))
    return {k: float(result[k]) for k in ("n", *keys) if k in result}

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
