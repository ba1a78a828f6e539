"""Self-correction metrics (pure) and the metric writers (JSON lines, TensorBoard).

Over N problems and A >= 2 attempts with c_t = 1[y_t correct] (the paper's protocol is A = 2):

  acc_t<t> = mean(c_t)                                  (accuracy at attempt t, every t)
  for each consecutive pair (t-1, t):
    Δ(t-1,t) = acc_t<t> - acc_t<t-1>     i->c = mean((1 - c_{t-1}) c_t)
    c->i = mean(c_{t-1} (1 - c_t))       so Δ = i->c - c->i exactly, for every pair.
  first_correct_t<t> = mean(c_t prod_{s<t} (1 - c_s))   (attempt t is the first correct one)
  ever_correct = mean(max_t c_t) = sum_t first_correct_t<t>

The pair (t1, t2) keeps the paper's names: delta, delta_i2c, delta_c2i; later pairs are
delta_t<t-1>_t<t>, delta_i2c_t<t-1>_t<t>, delta_c2i_t<t-1>_t<t> (`pair_keys`).
Collapse monitors, per consecutive pair (answer changes per step): answer_changed =
mean(1[answer(y_{t-1}) != answer(y_t)]) and edit_distance_ratio =
mean(lev(y_{t-1}, y_t) / (|y_{t-1}| + |y_t|)) (0 when both are empty), with the same names.
Standard errors (`*_se`) are those of the mean of the per-problem quantity.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
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


def pair_keys(t: int) -> dict[str, str]:
  """Names of the metrics of the pair (t-1, t), t >= 2: delta, i2c, c2i, changed, edit."""
  if t < 2:
    raise ValueError(f"pair_keys: attempt {t} has no attempt before it")
  if t == 2:
    return dict(delta="delta", i2c="delta_i2c", c2i="delta_c2i", changed="answer_changed",
                edit="edit_distance_ratio")
  pair = f"t{t - 1}_t{t}"
  return dict(delta=f"delta_{pair}", i2c=f"delta_i2c_{pair}", c2i=f"delta_c2i_{pair}",
              changed=f"answer_changed_{pair}", edit=f"edit_distance_ratio_{pair}")


def keys(num_attempts: int) -> tuple[str, ...]:
  """The metrics of A attempts that log lines and aggregates carry: `KEYS` at A = 2 (where
  the first-correct and ever-correct rates are acc_t1, delta_i2c and their sum), and for
  A > 2 also every later attempt's accuracy and pair, first_correct_t<t> and ever_correct."""
  if num_attempts <= 2:
    return KEYS
  extra = [f"acc_t{t}" for t in range(3, num_attempts + 1)]
  for t in range(3, num_attempts + 1):
    extra += [pair_keys(t)[k] for k in ("delta", "i2c", "c2i", "changed", "edit")]
  extra += [f"first_correct_t{t}" for t in range(1, num_attempts + 1)] + ["ever_correct"]
  return KEYS + tuple(extra)


def labels(num_attempts: int) -> dict[str, str]:
  """Table labels of `keys(num_attempts)` (`LABELS` for the paper's pair)."""
  out = dict(LABELS)
  for t in range(3, num_attempts + 1):
    k = pair_keys(t)
    out.update({f"acc_t{t}": f"Acc@t{t}", k["delta"]: f"Δ(t{t - 1},t{t})",
                k["i2c"]: f"Δ(t{t - 1},t{t}) i→c", k["c2i"]: f"Δ(t{t - 1},t{t}) c→i",
                k["changed"]: f"changed t{t - 1}→t{t}"})
  if num_attempts > 2:
    out.update({f"first_correct_t{t}": f"first right @t{t}"
                for t in range(1, num_attempts + 1)})
    out["ever_correct"] = "ever right"
  return out


def num_attempts(row: Mapping[str, Any]) -> int:
  """A of a metrics row: the last t with acc_t<t> in it."""
  t = 1
  while f"acc_t{t + 1}" in row:
    t += 1
  return t


def _se(x: np.ndarray) -> float:
  n = len(x)
  return float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def attempts_metrics(c: Sequence[Sequence[float]],
                     answers: Sequence[Sequence[str | None]] | None = None,
                     texts: Sequence[Sequence[str]] | None = None) -> dict[str, float]:
  """The metrics of the module docstring for A attempts, with standard errors.

  `c[t-1]` holds c_t of every problem; `answers` / `texts` (one list per attempt, optional)
  give the answer-changed and edit-distance monitors.
  """
  c_AN = [np.asarray(x, dtype=np.float64) for x in c]
  if len(c_AN) < 2 or any(x.shape != c_AN[0].shape for x in c_AN) or c_AN[0].ndim != 1 \
      or len(c_AN[0]) == 0:
    raise ValueError(f"c must hold >= 2 equal-length non-empty vectors (one per attempt), got "
                     f"shapes {[x.shape for x in c_AN]}")
  A = len(c_AN)
  out: dict[str, float] = {"n": int(len(c_AN[0]))}
  for t, c_N in enumerate(c_AN, start=1):
    out[f"acc_t{t}"], out[f"acc_t{t}_se"] = float(c_N.mean()), _se(c_N)
  for t in range(2, A + 1):
    prev, cur, k = c_AN[t - 2], c_AN[t - 1], pair_keys(t)
    i2c = (1 - prev) * cur
    c2i = prev * (1 - cur)
    out[k["delta"]], out[k["delta"] + "_se"] = float((cur - prev).mean()), _se(cur - prev)
    out[k["i2c"]], out[k["i2c"] + "_se"] = float(i2c.mean()), _se(i2c)
    out[k["c2i"]], out[k["c2i"] + "_se"] = float(c2i.mean()), _se(c2i)
  if answers is not None:
    for t in range(2, A + 1):
      changed = np.array([a != b for a, b in zip(answers[t - 2], answers[t - 1], strict=True)],
                         np.float64)
      key = pair_keys(t)["changed"]
      out[key], out[key + "_se"] = float(changed.mean()), _se(changed)
  if texts is not None:
    for t in range(2, A + 1):
      ratios = np.array([Levenshtein.distance(a, b) / (len(a) + len(b)) if (a or b) else 0.0
                         for a, b in zip(texts[t - 2], texts[t - 1], strict=True)])
      out[pair_keys(t)["edit"]] = float(ratios.mean())
  wrong_so_far = np.ones_like(c_AN[0])
  for t, c_N in enumerate(c_AN, start=1):
    first = wrong_so_far * c_N
    out[f"first_correct_t{t}"], out[f"first_correct_t{t}_se"] = float(first.mean()), _se(first)
    wrong_so_far = wrong_so_far * (1 - c_N)
  ever = 1 - wrong_so_far
  out["ever_correct"], out["ever_correct_se"] = float(ever.mean()), _se(ever)
  return out


def two_turn_metrics(c1: Sequence[float], c2: Sequence[float],
                     answers1: Sequence[str | None] | None = None,
                     answers2: Sequence[str | None] | None = None,
                     y1: Sequence[str] | None = None,
                     y2: Sequence[str] | None = None) -> dict[str, float]:
  """The paper's metrics (module docstring, A = 2), with standard errors."""
  c1, c2 = np.asarray(c1, dtype=np.float64), np.asarray(c2, dtype=np.float64)
  if c1.shape != c2.shape or c1.ndim != 1 or len(c1) == 0:
    raise ValueError(f"c1 and c2 must be equal-length non-empty vectors, got {c1.shape}, "
                     f"{c2.shape}")
  answers = [answers1, answers2] if answers1 is not None and answers2 is not None else None
  texts = [y1, y2] if y1 is not None and y2 is not None else None
  return attempts_metrics([c1, c2], answers, texts)


def attempt_metrics(c1: Sequence[float], c2: Sequence[float], y1: Sequence[str],
                    y2: Sequence[str], answer_key: Callable[[str], str | None]
                    ) -> dict[str, float]:
  """`two_turn_metrics` of graded attempts, their answers keyed by the task's `answer_key`."""
  return graded_metrics([c1, c2], [y1, y2], answer_key)


def graded_metrics(c: Sequence[Sequence[float]], texts: Sequence[Sequence[str]],
                   answer_key: Callable[[str], str | None]) -> dict[str, float]:
  """`attempts_metrics` of A graded attempts (one list per attempt), answers keyed by the
  task's `answer_key`."""
  return attempts_metrics(c, [[answer_key(y) for y in ys] for ys in texts], texts)


class MetricWriter:
  """Appends one JSON object per call to `path` and mirrors scalars to TensorBoard.

  Only the writing process (process 0 in multi-host runs) should create one.
  """

  def __init__(self, path: str | pathlib.Path, tensorboard_dir: str | pathlib.Path | None = None):
    self.path = epath.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if "://" not in str(path):
      repair_jsonl(self.path)   # a line appended to a half-written one would be garbage
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


def _partial_tail(text: str) -> str | None:
  """The last line of `text` when it was cut off mid-write (no newline, not JSON), else None."""
  if not text or text.endswith("\n"):
    return None
  tail = text.rsplit("\n", 1)[-1]
  try:
    json.loads(tail)
  except json.JSONDecodeError:
    return tail
  return None


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """Reads a metrics file written by MetricWriter. A half-written last line (a writer killed
  mid-line) is skipped with a warning; a bad line elsewhere raises ValueError naming it."""
  path = epath.Path(path)
  if not path.exists():
    return []
  text = path.read_bytes().decode("utf-8", errors="replace")
  tail = _partial_tail(text)
  if tail is not None:
    print(f"warning: {path}: skipping its half-written last line {tail[:60]!r}",
          file=sys.stderr, flush=True)
    text = text[:len(text) - len(tail)]
  out = []
  for number, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number} is not a JSON line ({e}): fix or delete that "
                         f"line") from e
  return out


def repair_jsonl(path: str | pathlib.Path) -> None:
  """Ends a local metrics file on a complete line: drops a half-written last line, or adds
  the missing newline of a complete one."""
  path = pathlib.Path(path)
  if not path.is_file():
    return
  data = path.read_bytes()
  if not data or data.endswith(b"\n"):
    return
  cut = data.rfind(b"\n") + 1
  if _partial_tail(data[cut:].decode("utf-8", errors="replace")) is None:
    with path.open("ab") as f:
      f.write(b"\n")
    return
  print(f"warning: {path}: dropped its half-written last line {data[cut:cut + 60]!r}",
        file=sys.stderr, flush=True)
  with path.open("r+b") as f:
    f.truncate(cut)
