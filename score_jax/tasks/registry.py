"""Builds a task from the `task` config section by name (imports each family lazily).

Every task is built by its class's `Task.from_config(task_cfg)`.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from score_jax.tasks import base

# name -> (module, class); modules are imported only when their task is asked for.
TASKS = {
    "toy": ("score_jax.tasks.toy", "ToyTask"),
    "sorting": ("score_jax.tasks.sorting", "SortingTask"),
    "parity": ("score_jax.tasks.parity", "ParityTask"),
    "math": ("score_jax.tasks.math.task", "MathTask"),
    "gsm8k": ("score_jax.tasks.gsm8k", "GSM8KTask"),
    "arithmetic": ("score_jax.tasks.arithmetic", "ArithmeticTask"),
    "mbpp": ("score_jax.tasks.code", "MBPPTask"),
    "humaneval": ("score_jax.tasks.code", "HumanEvalTask"),
}


def make_task(task_cfg: Mapping[str, Any]) -> base.Task:
  """`task_cfg` is the config's `task` section (name, data_dir, workers, timeout_s, ...)."""
  name = task_cfg["name"]
  if name not in TASKS:
    raise ValueError(f"config.task.name={name!r} is not a known task; choose one of "
                     f"{sorted(TASKS)}")
  module_name, class_name = TASKS[name]
  cls = getattr(importlib.import_module(module_name), class_name)
  return cls.from_config(task_cfg)
