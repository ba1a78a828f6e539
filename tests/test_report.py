"""Experiment tables and plots (score_jax.report) on hand-written results and logs."""

import json

import matplotlib.image
import numpy as np

from score_jax import report


def _row(**pct):
  """A results row from percent values (mean, se) per column."""
  row = {}
  for key, (mean, se) in pct.items():
    row[key], row[key + "_se"] = mean / 100, se / 100
  return row


RESULTS = {
    "_meta": {"seeds": [0, 1, 2], "n": 500, "task": "sorting",
              "labels": {"base": "Base model", "score": "SCoRe"}},
    "base": _row(acc_t1=(57.4, 2.2), acc_t2=(50.0, 2.2), delta=(-7.4, 1.7),
                 delta_i2c=(4.0, 0.9), delta_c2i=(11.4, 1.4), answer_changed=(22.4, 1.9)),
    "score": _row(acc_t1=(88.2, 1.4), acc_t2=(92.8, 1.2), delta=(4.6, 1.2),
                  delta_i2c=(5.8, 1.0), delta_c2i=(1.2, 0.5), answer_changed=(8.2, 1.2)),
}


def test_markdown_table_rows_signs_and_note():
  text = report.markdown_table(RESULTS, ["base", "score"])
  lines = text.splitlines()
  assert lines[0] == "| Method | Acc@t1 | Acc@t2 | Δ(t1,t2) | Δ i→c | Δ c→i | changed |"
  assert lines[2] == ("| Base model | 57.4 ± 2.2 | 50.0 ± 2.2 | -7.4 ± 1.7 | +4.0 ± 0.9 | "
                      "+11.4 ± 1.4 | 22.4 ± 1.9 |")
  assert lines[3] == ("| SCoRe | 88.2 ± 1.4 | 92.8 ± 1.2 | +4.6 ± 1.2 | +5.8 ± 1.0 | "
                      "+1.2 ± 0.5 | 8.2 ± 1.2 |")
  assert "mean ± standard error over seeds; n = 500" in text


def _write_log(path, stage_rows):
  path.parent.mkdir(parents=True)
  with open(path, "w") as f:
    for row in stage_rows:
      f.write(json.dumps(row) + "\n")


def test_training_plot_has_a_row_per_trained_method(tmp_path):
  rng = np.random.default_rng(0)
  for method, stages in (("pair_sft", ["pair_sft"] * 30),
                         ("score", ["stage1"] * 20 + ["stage2"] * 10)):
    rows = [{"step": i + 1, "stage": s, "reward_t1": rng.random(), "reward_t2": rng.random()}
            for i, s in enumerate(stages)]
    if method == "score":                      # answer changes logged for one method only
      for r in rows:
        r["answer_changed"] = rng.random()
    _write_log(tmp_path / "seed_0" / method / "train" / "metrics.jsonl", rows)
  path = report.plot_training(tmp_path, ["base", "pair_sft", "score"], seed=0)
  image = matplotlib.image.imread(path)
  # Two rows of panels (base is not trained): taller than wide-per-row figures of one row.
  assert image.shape[0] > 500 and image.shape[1] > 1000
  bars = report.plot_results(tmp_path, RESULTS, ["base", "score"])
  assert matplotlib.image.imread(bars).shape[1] > 1000


def test_attempts_table_and_plot(tmp_path):
  """Three attempts: Acc@t for every t, both pairs with their split, ever right."""
  row = _row(acc_t1=(50.0, 2.0), acc_t2=(60.0, 2.0), acc_t3=(65.0, 2.0), delta=(10.0, 1.0),
             delta_i2c=(12.0, 1.0), delta_c2i=(2.0, 0.5), delta_t2_t3=(5.0, 1.0),
             delta_i2c_t2_t3=(6.0, 1.0), delta_c2i_t2_t3=(1.0, 0.5),
             ever_correct=(70.0, 2.0))
  results = {"_meta": {"labels": {"score": "SCoRe"}}, "score": row}
  lines = report.attempts_table(results, ["score"]).splitlines()
  assert lines[0] == ("| Method | Acc@t1 | Acc@t2 | Acc@t3 | Δ(t1,t2) | i→c | c→i | Δ(t2,t3) | "
                      "i→c | c→i | ever right |")
  assert lines[2] == ("| SCoRe | 50.0 ± 2.0 | 60.0 ± 2.0 | 65.0 ± 2.0 | +10.0 ± 1.0 | "
                      "+12.0 ± 1.0 | +2.0 ± 0.5 | +5.0 ± 1.0 | +6.0 ± 1.0 | +1.0 ± 0.5 | "
                      "70.0 ± 2.0 |")
  # Two attempts: the columns of the pair (t1, t2); no ever-right column without the key.
  two = report.attempts_table(RESULTS, ["base", "score"]).splitlines()
  assert two[0] == "| Method | Acc@t1 | Acc@t2 | Δ(t1,t2) | i→c | c→i |"
  path = report.plot_attempts(tmp_path, results, ["score"])
  assert path.name == "attempts.png" and matplotlib.image.imread(path).shape[0] > 200
