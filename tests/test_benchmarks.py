"""Smoke tests of the benchmarks (sampler.py, train_step.py, vocab_memory.py, ...).

Each script runs end to end with --smoke (tiny shapes, one repetition) in a subprocess,
as a user would run it, and its last output line must be the JSON record. Nothing here
asserts on speed; the numbers checked are the bookkeeping (hand-computed) and the
parity of the two sides (same weights give the same first loss).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402  pylint: disable=wrong-import-position
import _rl_workload as rl_workload  # noqa: E402  pylint: disable=wrong-import-position
import sampler as bench_sampler  # noqa: E402  pylint: disable=wrong-import-position


def _run(script: str, *flags: str, marker: str = "ours / theirs") -> dict:
  """Runs benchmarks/<script> with flags; returns the JSON of its last output line."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""                    # the benchmark's default: one CPU device
  env.pop("JAX_NUM_CPU_DEVICES", None)
  proc = subprocess.run([sys.executable, str(BENCH / script), *flags], env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert marker in proc.stdout                 # the readable table came first
  return json.loads(lines[-1])


def test_sampler_smoke_runs_both_sides_to_the_full_length():
  r = _run("sampler.py", "--smoke")
  assert r["benchmark"] == "sampler" and r["workload"]["name"] == "cpu-smoke"
  assert r["checks"] == {"ours_lengths_all_new": True, "theirs_all_new": True,
                         "theirs_shape": [2, 8 + 6]}
  for side in ("ours", "theirs"):
    s = r[side]
    assert s["new_tokens_per_s"] == pytest.approx(2 * 6 / s["median_s"])
    assert s["ms_per_new_token"] == pytest.approx(1000 * s["median_s"] / 6)
    assert s["compile_s"] >= 0 and s["first_call_s"] > 0
  assert r["ratio_ours_over_theirs"] == pytest.approx(
      r["ours"]["new_tokens_per_s"] / r["theirs"]["new_tokens_per_s"])
  env = r["env"]
  assert env["jax_backend"] == "cpu" and env["jax_device_count"] == 1
  assert env["torch_threads"] == os.cpu_count() and len(env["load_avg_1_5_15"]) == 3


def test_train_step_smoke_same_weights_give_the_same_loss():
  r = _run("train_step.py", "--smoke")
  assert r["benchmark"] == "train_step" and r["step"] == "sft"
  assert r["tokens_per_step"] == 2 * 16
  # Same weights and tokens: our masked-mean NLL equals transformers' labels=ids loss.
  assert r["ours"]["first_loss"] == pytest.approx(r["theirs"]["first_loss"], abs=1e-4)
  for side in ("ours", "theirs"):
    assert r[side]["tokens_per_s"] == pytest.approx(32 / r[side]["median_s"])
  assert "mfu_6N" not in r["ours"]                 # no MFU on the CPU workload by default


@pytest.mark.slow
def test_train_step_smoke_rl_and_mfu():
  r = _run("train_step.py", "--smoke", "--step", "rl", "--peak-tflops", "1")
  assert r["step"] == "rl"
  # Stage II loss with the same masks, rewards and weights on both sides.
  assert r["ours"]["first_loss"] == pytest.approx(r["theirs"]["first_loss"], abs=1e-4)
  s = r["ours"]
  assert s["mfu_6N"] == pytest.approx(6 * r["params"] * 32 / s["median_s"] / 1e12)


@pytest.mark.slow
def test_sampler_smoke_anchor_path_reports_bandwidth():
  r = _run("sampler.py", "--smoke", "--workload", "anchor", "--hbm-gbps", "100")
  b = r["bandwidth"]
  assert r["workload"]["dtype"] == "bfloat16" and b["hbm_source"] == "--hbm-gbps"
  assert b["limit_ms_per_step"] == pytest.approx(1000 * b["bytes_per_step"] / 100e9)


def test_bandwidth_limit_by_hand():
  w = _common.Workload("t", layers=2, embed=8, heads=2, kv_heads=1, mlp=16, vocab=25,
                       batch=3, prompt=5, new=3, train_batch=1, train_seq=4,
                       dtype="bfloat16", device="cpu")
  b = bench_sampler.bandwidth_limit(w, param_bytes=1000, embed_bytes=200, itemsize=2)
  # mean context 5 + (3 + 1) / 2 = 7; K and V: 2 * layers 2 * batch 3 * 7 * kv 1 * H 4 * 2 B
  assert b["kv_bytes_per_step_mean"] == 672
  # every param but the table, plus the 3 gathered rows of 8 bf16 values
  assert b["param_bytes_per_step"] == 1000 - 200 + 3 * 8 * 2
  assert b["bytes_per_step"] == 848 + 672


def test_bandwidth_limit_of_the_anchor_workload():
  """0.85B bf16 Llama, batch 64, 256 + 256 tokens: ~2.38 GB a step, 0.74 ms at 3.2 TB/s."""
  w = _common.WORKLOADS["anchor"]
  per_layer = 2048 * 2048 * 2 + 2048 * 512 * 2 + 3 * 2048 * 5632 + 2 * 2048
  params = 2 * 32000 * 2048 + 16 * per_layer + 2048
  assert params == 852_559_872
  b = bench_sampler.bandwidth_limit(w, 2 * params, 2 * 32000 * 2048, 2)
  assert b["kv_bytes_per_step_mean"] == 2 * 16 * 64 * 384.5 * 8 * 64 * 2
  assert b["bytes_per_step"] == pytest.approx(2.3806e9, rel=1e-4)
  assert 1000 * b["bytes_per_step"] / 3.2e12 == pytest.approx(0.744, abs=1e-3)


def test_summarize_splits_prefill_and_decode_by_hand():
  w = _common.Workload("t", layers=1, embed=8, heads=2, kv_heads=1, mlp=16, vocab=25,
                       batch=2, prompt=5, new=4, train_batch=1, train_seq=4,
                       dtype="float32", device="cpu")
  s = bench_sampler.summarize([2.0, 3.0, 2.5], [0.9, 0.8, 1.0], first=7.5, first_1=3.0, w=w,
                              forwards_per_token=True)
  assert s["median_s"] == 2.5 and s["compile_s"] == 5.0
  assert s["new_tokens_per_s"] == pytest.approx(2 * 4 / 2.5)
  assert s["ms_per_new_token"] == pytest.approx(625.0)
  # ours: t(4) = prefill + 4 steps, t(1) = prefill + 1 step -> step = (2.5 - 0.9) / 3
  assert s["ms_per_decode_step"] == pytest.approx(1600 / 3)
  assert s["prefill_ms"] == pytest.approx(900 - 1600 / 3)
  assert s["decode_tokens_per_s"] == pytest.approx(2 / (1.6 / 3))
  # transformers: t(4) = prefill + 3 steps, t(1) = prefill -> same step, prefill = t(1)
  s = bench_sampler.summarize([2.5], [0.9], first=2.6, first_1=1.0, w=w)
  assert s["ms_per_decode_step"] == pytest.approx(1600 / 3)
  assert s["prefill_ms"] == pytest.approx(900)


def test_time_interleaved_alternates_the_sides():
  calls = []
  times = _common.time_interleaved({"a": lambda: calls.append("a"),
                                    "b": lambda: calls.append("b")}, reps=3)
  assert calls == ["a", "b"] * 3
  assert [len(v) for v in times.values()] == [3, 3]


def test_attention_smoke_fused_call_matches_ours():
  r = _run("attention.py", "--smoke", marker="fwd + bwd ms")
  assert r["benchmark"] == "attention" and r["kernel"]["implementation"] == "xla"
  for d in r["kernel"]["diffs"].values():
    assert d["max_abs"] < 1e-5 < d["max_abs_ref"]


def test_train_step_smoke_also_times_the_xla_attention_side():
  r = _run("train_step.py", "--smoke", "--also-xla-attention")
  assert r["attention_ours"] == "xla"                      # CPU: "auto" keeps ours
  assert abs(r["ours_xla"]["first_loss"] - r["ours"]["first_loss"]) < 1e-6


def test_shaping_variance_smoke_reports_both_settings():
  r = _run("shaping_variance.py", "--smoke", marker="turn2: variance off")
  assert r["batches"] == 3 and r["rows_per_batch"] == 8
  for name in ("all", "turn2"):
    for flag in ("off", "on"):
      assert set(r[f"{name}_{flag}"]) == {"mean_grad_norm", "total_variance"}
      assert r[f"{name}_{flag}"]["total_variance"] >= 0


def test_vocab_memory_smoke_chunks_give_the_same_loss():
  r = _run("vocab_memory.py", "--smoke", "--chunks", "0,8", marker="logit_chunk=")
  assert r["benchmark"] == "vocab_memory" and [x["logit_chunk"] for x in r["runs"]] == [0, 8]
  direct, chunked = r["runs"]
  assert direct["loss"] != 0.0
  assert chunked["loss"] == pytest.approx(direct["loss"], rel=1e-5)
  assert chunked["xla_temp_gb"] < direct["xla_temp_gb"]
  assert r["peak_ratio_to_first"][0] == 1.0


def _check_rl_step(r: dict) -> None:
  """The rl_step record's bookkeeping: every mode's parts add up to its step time."""
  assert r["benchmark"] == "rl_step" and r["workload"]["name"] == "cpu-smoke"
  assert r["checks"] == {"ours_lengths_match_targets": True, "theirs_lengths_match_targets": True}
  assert "fixed" in r["batching"] and r["reps"] == 1
  for mode in r["batching"]:
    s = r[mode]
    b = s["breakdown"]
    parts = ("grading_wait_s", "reference_s", "update_s", "host_s")
    assert all(b[k] >= 0 for k in parts + ("sampling_s",))
    assert b["sampling_s"] + sum(b[k] for k in parts) == pytest.approx(b["step_s"], rel=1e-6)
    if b["prefill_s"] is not None:           # the fixed batch splits its generate calls
      split = b["prefill_s"] + b["decode_useful_s"] + b["idle_rows_s"]
      assert split == pytest.approx(b["sampling_s"], rel=1e-6)
    assert b["slot_steps"] == b["useful_tokens"] + b["idle_slot_steps"]
    assert b["idle_slot_steps"] >= 0
    assert s["rollout_useful_tokens_per_s"] == pytest.approx(
        b["useful_tokens"] / b["sampling_s"])
    assert b["grading_wait_s"] <= b["grading_total_s"] + 1e-9
  assert r["theirs"]["rollout_useful_tokens_per_s"] > 0
  assert r["lengths"]["scaled"]["p99"] <= r["workload"]["turn_tokens"] == 16


def test_rl_step_smoke_breakdown_adds_up_to_the_step():
  r = _run("rl_step.py", "--smoke", "--batching", "fixed", marker="rl_step (Stage II)")
  assert r["batching"] == ["fixed"] and r["fixed"]["breakdown"]["prefill_s"] is not None
  _check_rl_step(r)


@pytest.mark.slow
def test_rl_step_smoke_every_batching_mode():
  """17 s at load 6 (2 min at load 15): fixed and, where the checkout has it, continuous."""
  _check_rl_step(_run("rl_step.py", "--smoke", marker="rl_step (Stage II)"))


@pytest.mark.slow
def test_rl_step_smoke_arms_and_the_width_ab():
  """~40 s at load 7: --arms runs each batching:compaction arm on the same problems and
  forced lengths, with its ratios over the first arm; --ab-reps times the jitted step at
  full width, columns dropped and rows packed, all with the same loss."""
  r = _run("rl_step.py", "--smoke", "--arms", "fixed:off,fixed:rows", "--side", "ours",
           "--ab-reps", "1", marker="rl_step (Stage II)")
  assert r["batching"] == ["fixed:off", "fixed:rows"] and "theirs" not in r
  assert r["checks"] == {"ours_lengths_match_targets": True}
  assert r["arms"] == {"fixed:off": {"batching": "fixed", "bucket": 0, "compact": "off"},
                       "fixed:rows": {"batching": "fixed", "bucket": 64, "compact": "rows"}}
  off, rows = r["fixed:off"], r["fixed:rows"]
  assert off["columns"]["compact"] == "off" and rows["columns"]["compact"] == "rows"
  assert rows["breakdown"]["valid_tokens"] == off["breakdown"]["valid_tokens"]
  for s in (off, rows):
    b = s["breakdown"]
    assert 0 < b["step_cpu_s"] and len(s["step_cpu_s_per_step"]) == 1
    assert s["step_tokens_per_s"] == pytest.approx(b["valid_tokens"] / b["step_s"])
  assert r["ratios"]["fixed:rows_over_fixed:off_step_valid_tok_s"] == pytest.approx(
      rows["step_tokens_per_s"] / off["step_tokens_per_s"])
  assert r["ratios"]["fixed:rows_over_fixed:off_step_cpu_s"] == pytest.approx(
      off["breakdown"]["step_cpu_s"] / rows["breakdown"]["step_cpu_s"])
  ab = r["compact_ab"]
  assert set(ab["median_s"]) == {"full", "columns", "rows"}
  assert ab["columns"]["full"] >= ab["columns"]["columns"] >= ab["columns"]["rows"]
  for name in ("columns", "rows"):
    assert ab["loss"][name] == pytest.approx(ab["loss"]["full"], rel=1e-4, abs=1e-6)


def test_rl_step_arms_by_hand():
  assert rl_workload.parse_arms("fixed:off, continuous:rows") == [("fixed", "off"),
                                                                  ("continuous", "rows")]
  for bad in ("fixed", "fixed:packed", "slots:rows", "fixed:off,fixed:off"):
    with pytest.raises(SystemExit, match="--arms"):
      rl_workload.parse_arms(bad)


def test_rl_workload_accounting_by_hand():
  # rows of 3, 1 and 5 tokens in a 6-wide decode: 5 iterations x 3 slots, 9 useful, 6 idle
  assert rl_workload.slot_steps([3, 1, 5], 6) == (5, 9, 6)
  assert rl_workload.slot_steps([7, 2], 6) == (6, 8, 4)   # a length above the width is cut
  # t(1) = 0.5 = prefill + step; t(5) = 0.9 -> step = 0.1, prefill 0.4, decode 0.5
  prefill, decode = rl_workload.split_call(0.9, 0.5, 5)
  assert (prefill, decode) == (pytest.approx(0.4), pytest.approx(0.5))
  # grading [1, 4] and [3, 6] (union [1, 6]) against busy [2, 3] and [5, 10]: 5 - 1 - 1 = 3
  assert rl_workload.uncovered([(1, 4), (3, 6)], [(2, 3), (5, 10)]) == pytest.approx(3.0)
  assert rl_workload.uncovered([(0, 1)], []) == 1.0
  # 1024-token budget scaled to 128: 100 -> 12.5 -> 12 (round half to even), cap, floor of 1
  assert rl_workload.scaled_lengths([100, 2000, 3, 1024], 128).tolist() == [12, 128, 1, 128]
