"""Tables and plots of an experiment (`score_jax.experiment`): markdown, PNG, one-liners.

- `markdown_table`: one row per method: acc_t1, acc_t2, delta, delta_i2c, delta_c2i,
  answer_changed, each as `mean ± standard error` in percent.
- `plot_training`: turn-1 / turn-2 training reward and answer-changed rate over steps, per
  method, with the stages shaded (`W/plots/training.png`).
- `plot_results`: bar chart of the table (`W/plots/results.png`).
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import matplotlib

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
  note = (f"\n\nPercent, mean ± {se}; n = {meta.get('n')} held-out problems, seeds {seeds}, "
          f"task `{meta.get('task')}`; greedy two-turn decoding. Δ = Δ i→c − Δ c→i.")
  return "\n".join([head, rule, *rows]) + note


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
