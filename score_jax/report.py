"""Tables and plots of an experiment (`score_jax.experiment`): markdown, PNG, one-liners.

- `markdown_table`: one row per method: acc_t1, acc_t2, delta, delta_i2c, delta_c2i,
  answer_changed, each as `mean ± standard error` in percent.
- `plot_training`: turn-1 / turn-2 training reward and answer-changed rate over steps, per
  method, with the stages shaded (`W/plots/training.png`).
- `plot_results`: bar chart of the table (`W/plots/results.png`).
- `attempts_table` / `plot_attempts`: accuracy by attempt for A attempts
  (config.rollout.num_attempts): Acc@t for every t, Δ(t-1,t) with its i→c / c→i split for
  every consecutive pair, and the rate of problems ever right (`W/plots/attempts.png`).
- `plot_scaling`: majority-vote accuracy vs budget per method (`score_jax.scaling`).
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from score_jax import metrics as metrics_lib  # noqa: E402  pylint: disable=wrong-import-position

COLUMNS = tuple(metrics_lib.LABELS.items())
STAGE_COLORS = {"sft": "#eeeeee", "stage1": "#dceefb", "stage2": "#fde9d9",
                "single_turn": "#e5f5e0", "star": "#f2e6f7", "pair_sft": "#fff5cc"}
# Methods evaluated with the base model's weights: no training run, no training curves.
UNTRAINED = ("base", "self_refine")
# Whose samples a stage's logged rollout metrics describe, where it is not the policy's own.
SAMPLES_NOTE = {"pair_sft": "rollouts of the frozen base model (the Pair-SFT data), "
                            "not of the model in training"}


def _pct(row: dict[str, Any], key: str) -> str:
  sign = "+" if key.startswith("delta") and row[key] > 0 else ""
  return f"{sign}{100 * row[key]:.1f} ± {100 * row[key + '_se']:.1f}"


def one_line(label: str, row: dict[str, Any]) -> str:
  return f"{label}: " + ", ".join(f"{name} {_pct(row, key)}" for key, name in COLUMNS)


def markdown_table(results: dict[str, Any], methods: Sequence[str]) -> str:
  meta = results.get("_meta", {})
  labels = meta.get("labels", {})
  seeds = meta.get("seeds", [])
  head = "| Method | " + " | ".join(name for _, name in COLUMNS) + " |"
  rule = "|---|" + "---:|" * len(COLUMNS)
  rows = [f"| {labels.get(m, m)} | " + " | ".join(_pct(results[m], k) for k, _ in COLUMNS)
          + " |" for m in methods]
  se = ("standard error over seeds" if len(seeds) > 1 else "standard error over problems")
  A = min(metrics_lib.num_attempts(results[m]) for m in methods)
  decoding = ("greedy two-turn decoding" if A == 2 else
              f"greedy decoding of {A} attempts, the first two shown")
  note = (f"\n\nPercent, mean ± {se}; n = {meta.get('n')} held-out problems, seeds {seeds}, "
          f"task `{meta.get('task')}`; {decoding}. Δ = Δ i→c − Δ c→i.")
  return "\n".join([head, rule, *rows]) + note


def attempts_columns(num_attempts: int) -> list[tuple[str, str]]:
  """(key, label) of the accuracy-by-attempt table of A attempts."""
  names = metrics_lib.labels(max(num_attempts, 3))
  cols = [(f"acc_t{t}", f"Acc@t{t}") for t in range(1, num_attempts + 1)]
  for t in range(2, num_attempts + 1):
    k = metrics_lib.pair_keys(t)
    cols += [(k["delta"], f"Δ(t{t - 1},t{t})"), (k["i2c"], "i→c"), (k["c2i"], "c→i")]
  return cols + [("ever_correct", names["ever_correct"])]


def attempts_table(results: dict[str, Any], methods: Sequence[str]) -> str:
  """Markdown table of accuracy by attempt, one row per method (`mean ± standard error` in
  percent); A is the fewest attempts any method's row has."""
  meta = results.get("_meta", {})
  labels = meta.get("labels", {})
  A = min(metrics_lib.num_attempts(results[m]) for m in methods)
  cols = [(k, name) for k, name in attempts_columns(A)
          if all(k in results[m] for m in methods)]
  head = "| Method | " + " | ".join(name for _, name in cols) + " |"
  rule = "|---|" + "---:|" * len(cols)
  rows = [f"| {labels.get(m, m)} | " + " | ".join(_pct(results[m], k) for k, _ in cols)
          + " |" for m in methods]
  note = (f"\n\nPercent, mean ± standard error; greedy decoding of {A} attempts. Each Δ(t-1,t) "
          f"= i→c − c→i.")
  return "\n".join([head, rule, *rows]) + note


def plot_attempts(workdir: pathlib.Path, results: dict[str, Any], methods: Sequence[str]
                  ) -> pathlib.Path:
  """Accuracy at each attempt, one line per method, standard-error bars
  (`W/plots/attempts.png`)."""
  labels = results.get("_meta", {}).get("labels", {})
  fig, ax = plt.subplots(figsize=(6, 4))
  for method in methods:
    row = results[method]
    t = np.arange(1, metrics_lib.num_attempts(row) + 1)
    ax.errorbar(t, [100 * row[f"acc_t{i}"] for i in t],
                yerr=[100 * row.get(f"acc_t{i}_se", 0.0) for i in t], marker="o", capsize=3,
                label=labels.get(method, method))
  ax.set_xlabel("attempt")
  ax.set_ylabel("accuracy (% of held-out problems)")
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.legend(fontsize=7)
  ax.set_title("Greedy accuracy by attempt (error bars: standard error)", fontsize=10)
  return _save(fig, workdir / "plots" / "attempts.png")


def plot_scaling(path: pathlib.Path, table: dict[str, Any]) -> pathlib.Path:
  """Majority-vote accuracy vs samples per problem (`score_jax.scaling`), one line per
  method (solid) with standard-error bars, and its any-correct ceiling (dotted)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (method, rows) in enumerate((m, r) for m, r in table.items() if m != "_meta"):
    budgets = sorted(rows, key=int)
    k = [int(b) for b in budgets]
    color = f"C{i}"
    ax.errorbar(k, [100 * rows[b]["acc"] for b in budgets],
                yerr=[100 * rows[b]["acc_se"] for b in budgets], marker="o", capsize=3,
                color=color, label=f"{method}: majority vote")
    ax.plot(k, [100 * rows[b]["any_correct"] for b in budgets], ls=":", color=color,
            label=f"{method}: any correct")
  ax.set_xscale("log", base=2)
  ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.set_xlabel("budget K (samples per problem)")
  ax.set_ylabel("accuracy (% of held-out problems)")
  ax.legend(fontsize=7)
  meta = table.get("_meta", {})
  ax.set_title(f"Inference-time scaling, temperature {meta.get('temperature', '?')} "
               f"(error bars: standard error)", fontsize=9)
  return _save(fig, path)


def _stage_spans(rows: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
  spans: list[tuple[str, int, int]] = []
  for r in rows:
    if spans and spans[-1][0] == r["stage"]:
      spans[-1] = (r["stage"], spans[-1][1], r["step"])
    else:
      spans.append((r["stage"], r["step"], r["step"]))
  return spans


def _smooth(x: np.ndarray, k: int = 10) -> np.ndarray:
  if len(x) < k:
    return x
  return np.convolve(x, np.ones(k) / k, mode="valid")


def plot_training(workdir: pathlib.Path, methods: Sequence[str], seed: int,
                  labels: dict[str, str] | None = None) -> pathlib.Path:
  """Training curves of each trained method of `seed` (module docstring)."""
  labels = labels or {}
  trained = [m for m in methods if m not in UNTRAINED]
  fig, axes = plt.subplots(len(trained) or 1, 2, figsize=(11, 2.6 * max(len(trained), 1)),
                           squeeze=False)
  for ax_row, method in zip(axes, trained):
    rows = [r for r in metrics_lib.read_jsonl(
        workdir / f"seed_{seed}" / method / "train" / "metrics.jsonl") if "reward_t1" in r]
    if not rows:
      continue
    steps = np.array([r["step"] for r in rows])
    for ax in ax_row:
      for stage, lo, hi in _stage_spans(rows):
        ax.axvspan(lo - 0.5, hi + 0.5, color=STAGE_COLORS.get(stage, "#ffffff"), lw=0)
        ax.text((lo + hi) / 2, 0.97, stage, ha="center", va="top", fontsize=7, alpha=0.7,
                transform=ax.get_xaxis_transform())
    for key, label in (("reward_t1", "turn-1 reward"), ("reward_t2", "turn-2 reward")):
      y = _smooth(np.array([r[key] for r in rows], float))
      ax_row[0].plot(steps[len(steps) - len(y):], y, label=label)
    ax_row[0].set_ylabel(labels.get(method, method), fontsize=8)
    notes = {SAMPLES_NOTE[r["stage"]] for r in rows if r.get("stage") in SAMPLES_NOTE}
    for ax in ax_row:
      for i, note in enumerate(sorted(notes)):
        ax.text(0.02, 0.86 - 0.08 * i, note, fontsize=7, style="italic",
                transform=ax.transAxes)
    ax_row[0].set_ylim(0, 1)
    ax_row[0].legend(fontsize=7, loc="lower right")
    if "answer_changed" in rows[0]:
      y = _smooth(np.array([r["answer_changed"] for r in rows], float))
      ax_row[1].plot(steps[len(steps) - len(y):], y, color="C2", label="answer changed")
      ax_row[1].set_ylim(0, 1)
      ax_row[1].legend(fontsize=7, loc="best")
    else:
      ax_row[1].text(0.5, 0.5, "answer changes not logged by this run", ha="center",
                     fontsize=8, transform=ax_row[1].transAxes)
  axes[0][0].set_title("training rollout reward (moving average of 10 steps)", fontsize=9)
  axes[0][1].set_title("rate of second answers that differ from the first", fontsize=9)
  axes[-1][0].set_xlabel("step")
  axes[-1][1].set_xlabel("step")
  return _save(fig, workdir / "plots" / "training.png")


def _save(fig: Any, path: pathlib.Path) -> pathlib.Path:
  """Writes `fig` to `path` (a PNG) and closes it."""
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_results(workdir: pathlib.Path, results: dict[str, Any], methods: Sequence[str]
                 ) -> pathlib.Path:
  """Grouped bars (one group per metric, one bar per method) with standard-error bars."""
  labels = results.get("_meta", {}).get("labels", {})
  fig, ax = plt.subplots(figsize=(11, 4))
  width = 0.8 / max(len(methods), 1)
  x = np.arange(len(COLUMNS))
  for i, method in enumerate(methods):
    row = results[method]
    ax.bar(x + i * width, [100 * row[k] for k, _ in COLUMNS], width,
           yerr=[100 * row[k + "_se"] for k, _ in COLUMNS], capsize=2,
           label=labels.get(method, method))
  ax.axhline(0, color="black", lw=0.8)
  ax.set_xticks(x + width * (len(methods) - 1) / 2, [name for _, name in COLUMNS])
  ax.set_ylabel("percent of held-out problems")
  ax.legend(fontsize=7, ncol=2)
  ax.set_title("Greedy two-turn evaluation (error bars: standard error)", fontsize=10)
  return _save(fig, workdir / "plots" / "results.png")
