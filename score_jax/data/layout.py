"""The files each task reads under `config.task.data_dir`, and the start-up check of them.

`check_task_data(task, data_dir, splits)` runs in `score_jax.build.build` before anything
else (so before any weights load): when a file a split needs is missing it raises
`DataMissing`, one line naming the path and the command that makes it:

  python -m score_jax.data prepare math --out DATA_DIR

Layout (that of `shared/data`; `tests/test_data_prepare.py` checks it against the readers):
  math       train, validation  math/prm800k_style_train12k.reconstructed.jsonl
             test               math500/test.jsonl
             test_full          math/test.jsonl
  gsm8k      train, validation  gsm8k/train.jsonl;   test  gsm8k/test.jsonl
  mbpp       every split        mbpp/mbpp.jsonl
  humaneval  test               humaneval/HumanEval.jsonl.gz (or HumanEval.jsonl)
Tasks without data files (toy, sorting, the demo's) are not checked.
"""

from __future__ import annotations

import pathlib
from typing import Iterable

MATH_12K = "math/prm800k_style_train12k.reconstructed.jsonl"

# task -> split -> alternatives (any one will do), paths relative to data_dir.
TASK_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "math": {"train": (MATH_12K,), "validation": (MATH_12K,), "test": ("math500/test.jsonl",),
             "test_full": ("math/test.jsonl",)},
    "gsm8k": {"train": ("gsm8k/train.jsonl",), "validation": ("gsm8k/train.jsonl",),
              "test": ("gsm8k/test.jsonl",)},
    "mbpp": {s: ("mbpp/mbpp.jsonl", "mbpp.jsonl")
             for s in ("prompt", "test", "validation", "train")},
    "humaneval": {"test": ("humaneval/HumanEval.jsonl.gz", "humaneval/HumanEval.jsonl",
                           "HumanEval.jsonl.gz", "HumanEval.jsonl")},
}
# task -> the `prepare` dataset that writes its files.
PREPARE_NAME = {"math": "math", "gsm8k": "gsm8k", "mbpp": "mbpp", "humaneval": "humaneval"}


class DataMissing(ValueError):
  """A task's data files are not under data_dir (the message says how to get them)."""


def prepare_command(task: str, data_dir: str | pathlib.Path) -> str:
  return f"python -m score_jax.data prepare {PREPARE_NAME[task]} --out {data_dir}"


def missing_files(task: str, data_dir: str | pathlib.Path,
                  splits: Iterable[str]) -> list[str]:
  """Paths (one per missing requirement) that `splits` of `task` need and data_dir lacks."""
  if task not in TASK_FILES:
    return []
  root = pathlib.Path(data_dir)
  if root.is_file():  # the code tasks also take the data file itself
    return [] if task in ("mbpp", "humaneval") else [str(root / TASK_FILES[task]["test"][0])]
  missing = []
  for split in dict.fromkeys(splits):
    options = TASK_FILES[task].get(split)
    if not options:
      continue  # unknown split: the task's own error names it later
    if not any((root / o).is_file() and (root / o).stat().st_size > 0 for o in options):
      path = str(root / options[0])
      if path not in missing:
        missing.append(path)
  return missing


def check_task_data(task: str, data_dir: str | pathlib.Path, splits: Iterable[str]) -> None:
  """Raises `DataMissing` (one line: the missing paths and the fix) if `splits` of `task`
  lack their files under `data_dir`; does nothing for tasks without data files."""
  missing = missing_files(task, data_dir, splits)
  if not missing:
    return
  root = pathlib.Path(data_dir)
  where = (f"config.task.data_dir={data_dir} does not exist" if not root.exists() else
           f"task {task!r} needs {', '.join(missing)} (missing or empty)")
  raise DataMissing(f"{where}; get the data with `{prepare_command(task, data_dir)}` (see "
                    "README, Getting the data), or point --config.task.data_dir at the folder "
                    "that holds it")
