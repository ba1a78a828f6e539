"""The paper's self-correction metrics, checked on hand-computed numbers."""

import math

import pytest

from score_jax import metrics


def test_two_turn_metrics_by_hand():
  # Five problems: c1 = 1 0 0 1 1, c2 = 1 1 0 0 1.
  # i2c = (1-c1) c2 = 0 1 0 0 0 -> 0.2 ; c2i = c1 (1-c2) = 0 0 0 1 0 -> 0.2
  m = metrics.two_turn_metrics([1, 0, 0, 1, 1], [1, 1, 0, 0, 1],
                               ["a", "b", "c", "d", None], ["a", "x", "c", "y", None],
                               ["ab", "", "abc", "x", ""], ["ab", "", "abd", "xy", ""])
  assert m["n"] == 5
  assert m["acc_t1"] == pytest.approx(0.6) and m["acc_t2"] == pytest.approx(0.6)
  assert m["delta"] == pytest.approx(0.0)
  assert m["delta_i2c"] == pytest.approx(0.2) and m["delta_c2i"] == pytest.approx(0.2)
  assert m["delta"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"])
  assert m["answer_changed"] == pytest.approx(2 / 5)
  # lev: 0/4, 0 (both empty), 1/6, 1/3, 0 -> mean = (1/6 + 1/3) / 5 = 0.1
  assert m["edit_distance_ratio"] == pytest.approx(0.1)
  # acc_t1 standard error: std(ddof=1) of 1 0 0 1 1 = sqrt(0.3); / sqrt(5)
  assert m["acc_t1_se"] == pytest.approx(math.sqrt(0.3 / 5))


def test_delta_identity_on_random_outcomes():
  import numpy as np
  rng = np.random.default_rng(0)
  c1, c2 = rng.integers(0, 2, 101), rng.integers(0, 2, 101)
  m = metrics.two_turn_metrics(c1, c2)
  assert m["delta"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"], abs=1e-12)


def test_bad_inputs():
  with pytest.raises(ValueError):
    metrics.two_turn_metrics([], [])
  with pytest.raises(ValueError):
    metrics.two_turn_metrics([1, 0], [1])


def test_writer_appends_json_lines(tmp_path):
  w = metrics.MetricWriter(tmp_path / "m.jsonl", tmp_path / "tb")
  w.write(1, {"stage": "stage1", "loss": 0.5})
  w.write(2, {"stage": "stage2", "loss": float("nan")})
  w.close()
  rows = metrics.read_jsonl(tmp_path / "m.jsonl")
  assert [r["step"] for r in rows] == [1, 2] and rows[0]["stage"] == "stage1"
  assert any(p.name.startswith("events") for p in (tmp_path / "tb").iterdir())


# --- A attempts ---------------------------------------------------------------------------

# Six problems, three attempts:   c1 = 1 0 0 1 0 0,  c2 = 1 1 0 0 0 1,  c3 = 1 1 1 1 0 0.
#   (t1,t2): i2c = 0 1 0 0 0 1 -> 2/6, c2i = 0 0 0 1 0 0 -> 1/6, delta = 3/6 - 2/6 = 1/6
#   (t2,t3): i2c = 0 0 1 1 0 0 -> 2/6, c2i = 0 0 0 0 0 1 -> 1/6, delta = 4/6 - 3/6 = 1/6
#   first correct: t1 = 1 0 0 1 0 0 -> 2/6, t2 = 0 1 0 0 0 1 -> 2/6, t3 = 0 0 1 0 0 0 -> 1/6
#   ever correct = 5/6 (only problem 4 is never right)
C3 = [[1, 0, 0, 1, 0, 0], [1, 1, 0, 0, 0, 1], [1, 1, 1, 1, 0, 0]]


def test_three_attempt_metrics_by_hand():
  answers = [["a", "b", "c", "d", "e", "f"], ["a", "x", "c", "y", "e", "z"],
             ["a", "x", "q", "d", "e", "z"]]
  m = metrics.attempts_metrics(C3, answers, answers)
  assert m["n"] == 6
  for t, acc in ((1, 2 / 6), (2, 3 / 6), (3, 4 / 6)):
    assert m[f"acc_t{t}"] == pytest.approx(acc)
  assert (m["delta"], m["delta_i2c"], m["delta_c2i"]) == pytest.approx((1 / 6, 2 / 6, 1 / 6))
  assert (m["delta_t2_t3"], m["delta_i2c_t2_t3"], m["delta_c2i_t2_t3"]) == pytest.approx(
      (1 / 6, 2 / 6, 1 / 6))
  assert [m[f"first_correct_t{t}"] for t in (1, 2, 3)] == pytest.approx([2 / 6, 2 / 6, 1 / 6])
  assert m["ever_correct"] == pytest.approx(5 / 6)
  assert m["ever_correct"] == pytest.approx(sum(m[f"first_correct_t{t}"] for t in (1, 2, 3)))
  # answers change 1->2 in rows 1, 3, 5; 2->3 in rows 2, 3: answer changes per step
  assert m["answer_changed"] == pytest.approx(3 / 6)
  assert m["answer_changed_t2_t3"] == pytest.approx(2 / 6)
  assert m["edit_distance_ratio_t2_t3"] == pytest.approx((1 / 2 + 1 / 2) / 6)
  assert set(metrics.keys(3)) <= set(m)


@pytest.mark.parametrize("A", [2, 3, 5])
def test_delta_identity_for_every_consecutive_pair(A):
  import numpy as np
  rng = np.random.default_rng(A)
  m = metrics.attempts_metrics(rng.integers(0, 2, (A, 101)))
  for t in range(2, A + 1):
    k = metrics.pair_keys(t)
    assert m[k["delta"]] == pytest.approx(m[k["i2c"]] - m[k["c2i"]], abs=1e-12)
    assert m[k["delta"]] == pytest.approx(m[f"acc_t{t}"] - m[f"acc_t{t - 1}"], abs=1e-12)
  assert m["ever_correct"] == pytest.approx(
      sum(m[f"first_correct_t{t}"] for t in range(1, A + 1)), abs=1e-12)


def test_two_attempts_keep_the_paper_keys_and_values():
  """At A = 2 the generic metrics are today's, in today's order, plus first/ever-correct."""
  c1, c2 = [1, 0, 0, 1, 1], [1, 1, 0, 0, 1]
  a1, a2 = ["a", "b", "c", "d", None], ["a", "x", "c", "y", None]
  y1, y2 = ["ab", "", "abc", "x", ""], ["ab", "", "abd", "xy", ""]
  m = metrics.two_turn_metrics(c1, c2, a1, a2, y1, y2)
  assert list(m)[:14] == ["n", "acc_t1", "acc_t1_se", "acc_t2", "acc_t2_se", "delta",
                          "delta_se", "delta_i2c", "delta_i2c_se", "delta_c2i", "delta_c2i_se",
                          "answer_changed", "answer_changed_se", "edit_distance_ratio"]
  assert m == metrics.attempts_metrics([c1, c2], [a1, a2], [y1, y2])
  assert m["first_correct_t2"] == m["delta_i2c"] and m["first_correct_t1"] == m["acc_t1"]
  assert metrics.keys(2) == metrics.KEYS
  assert metrics.num_attempts(m) == 2 and metrics.num_attempts(metrics.attempts_metrics(C3)) == 3
