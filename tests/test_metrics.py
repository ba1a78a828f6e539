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
