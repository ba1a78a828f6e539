"""Self-correction metrics (pure) and the metric writers (JSON lines, TensorBoard).

Over N problems with c1 = 1[y1 correct], c2 = 1[y2 correct]:

  acc_t1 = mean(c1)                    acc_t2 = mean(c2)
  delta = acc_t2 - acc_t1              delta_i2c = mean((1 - c1) c2)
  delta_c2i = mean(c1 (1 - c2))        so delta = delta_i2c - delta_c2i exactly.

Collapse monitors: answer_changed = mean(1[answer(y1) != answer(y2)]) and
edit_distance_ratio = mean(lev(y1, y2) / (|y1| + |y2|)) (0 when both are empty).
Standard errors (`*_se`) are those of the mean of the per-problem quantity.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from etils import epath
from rapidfuzz.distance import Levenshtein


# The two-turn metrics that log lines, eval lines, experiment aggregates and tables carry.
KEYS = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i", "answer_changed",
        "edit_distance_ratio")
# Column labels of the tables (`score_jax.report`), in table order.
LABELS = {"acc_t1": "Acc@t1", "acc_t2": "Acc@t2", "delta": "Δ(t1,t2)", "delta_i2c": "Δ i→c",
          "delta_c2i": "Δ c→i", "answer_changed": "changed"}


def _se(x: np.ndarray) -> float:
  n = len(x)
  return float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def two_turn_metrics(c1: Sequence[float], c2: Sequence[float],
                     answers1: Sequence[str | None] | None = None,
                     answers2: Sequence[str | None] | None = None,
                     y1: Sequence[str] | None = None,
                     y2: Sequence[str] | None = None) -> dict[str, float]:
  """The paper's metrics (module docstring), with standard errors."""
  c1 = np.asarray(c1, dtype=np.float64)
  c2 = np.asarray(c2, dtype=np.float64)
  if c1.shape != c2.shape or c1.ndim != 1 or len(c1) == 0:
    raise ValueError(f"c1 and c2 must be equal-length non-empty vectors, got {c1.shape}, "
                     f"{c2.shape}")
  i2c = (1 - c1) * c2
  c2i = c1 * (1 - c2)
  out = {
      "n": int(len(c1)),
      "acc_t1": float(c1.mean()), "acc_t1_se": _se(c1),
      "acc_t2": float(c2.mean()), "acc_t2_se": _se(c2),
      "delta": float((c2 - c1).mean()), "delta_se": _se(c2 - c1),
      "delta_i2c": float(i2c.mean()), "delta_i2c_se": _se(i2c),
      "delta_c2i": float(c2i.mean()), "delta_c2i_se": _se(c2i),
  }
  if answers1 is not None and answers2 is not None:
    changed = np.array([a != b for a, b in zip(answers1, answers2, strict=True)], np.float64)
    out["answer_changed"] = float(changed.mean())
    out["answer_changed_se"] = _se(changed)
  if y1 is not None and y2 is not None:
    ratios = np.array([Levenshtein.distance(a, b) / (len(a) + len(b)) if (a or b) else 0.0
                       for a, b in zip(y1, y2, strict=True)])
    out["edit_distance_ratio"] = float(ratios.mean())
  return out


def attempt_metrics(c1: Sequence[float], c2: Sequence[float], y1: Sequence[str],
                    y2: Sequence[str], answer_key: Callable[[str], str | None]
                    ) -> dict[str, float]:
  """`two_turn_metrics` of graded attempts, their answers keyed by the task's `answer_key`."""
  return two_turn_metrics(c1, c2, [answer_key(y) for y in y1], [answer_key(y) for y in y2],
                          y1, y2)


class MetricWriter:
  """Appends one JSON object per call to `path` and mirrors scalars to TensorBoard.

  Only the writing process (process 0 in multi-host runs) should create one.
  """

  def __init__(self, path: str | pathlib.Path, tensorboard_dir: str | pathlib.Path | None = None):
    self.path = epath.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    # Object stores (gs://) cannot append: keep the lines and rewrite the file.
    self._lines = ([] if "://" not in str(path) else
                   [json.dumps(r) for r in read_jsonl(path)])
    self._tb = None
    if tensorboard_dir is not None:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(str(tensorboard_dir))

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
    line = json.dumps(record)
    if "://" in str(self.path):
      self._lines.append(line)
      self.path.write_text("".join(x + "\n" for x in self._lines))
    else:
      with self.path.open("a") as f:
        f.write(line + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _plain(v: Any) -> Any:
  if isinstance(v, (np.generic,)):
    return v.item()
  if hasattr(v, "item") and getattr(v, "shape", None) == ():
    return v.item()
  return v


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """Reads a metrics file written by MetricWriter."""
  path = epath.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
