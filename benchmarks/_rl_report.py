"""The report of `rl_step.py`: a step's breakdown into parts (they add up to its wall
time), the mean over the timed steps with the tokens/s figures, the ratios between modes
and sides, and the printed table (see rl_step.py's docstring for what each part is)."""

from __future__ import annotations

import statistics
from typing import Any

import _common as common
import _rl_workload as rlw

PARTS = ("prefill_s", "decode_useful_s", "idle_rows_s", "grading_wait_s", "reference_s",
         "update_s", "host_s")


def breakdown(rec: dict, one_token_s: list[float] | None, scoring_s: dict) -> dict:
  """The step's parts (module docstring); they sum to step_s. `scoring_s`: the scoring
  passes' time alone at each width (columns)."""
  log = rec["log"]
  step_s, update_call_s = rec["t1"] - rec["t0"], rec["t1"] - rec["u0"]
  b: dict[str, Any] = dict(step_s=step_s, useful_tokens=0, slot_steps=0, idle_slot_steps=0,
                           sampling_s=sum(c["end"] - c["start"] for c in log.calls),
                           sampling_cpu_s=sum(c["cpu"] for c in log.calls))
  split = one_token_s is not None
  b.update(prefill_s=0.0 if split else None, decode_useful_s=0.0 if split else None,
           idle_rows_s=0.0 if split else None)
  for turn, c in enumerate(log.calls):
    if c["kind"] == "fixed":
      iters, useful, idle = rlw.slot_steps(c["lengths"][0], c["widths"][0])
    else:                      # continuous: S slots for every decode step of every segment
      useful = int(sum(int(x.sum()) for x in c["lengths"]))
      iters, idle = c["stats"]["decode_steps"], c["slots"] * c["stats"]["decode_steps"] - useful
    b["useful_tokens"] += useful
    b["slot_steps"] += useful + idle
    b["idle_slot_steps"] += idle
    if split:
      prefill, decode = rlw.split_call(c["end"] - c["start"], one_token_s[turn], iters)
      idle_s = decode * idle / max(useful + idle, 1)
      b["prefill_s"] += prefill
      b["idle_rows_s"] += idle_s
      b["decode_useful_s"] += decode - idle_s
  busy = [(c["start"], c["end"]) for c in log.calls] + [(rec["u0"], rec["t1"])]
  b["grading_total_s"] = sum(e - s for s, e in log.grading)
  b["grading_wait_s"] = rlw.uncovered(log.grading, busy)
  b["reference_s"] = min(scoring_s[rec["columns"]], update_call_s)
  b["update_s"] = update_call_s - b["reference_s"]
  b["host_s"] = step_s - b["sampling_s"] - b["grading_wait_s"] - update_call_s
  b["valid_tokens"], b["train_slots"] = rec["valid_tokens"], rec["slots"]
  b["train_slots_before"], b["columns"] = rec["slots_before"], rec["columns"]
  b["columns_before"], b["step_cpu_s"] = rec["columns_before"], rec["step_cpu_s"]
  return b


def summarize(ours: Any) -> dict:
  """Mean breakdown over the timed steps of `ours` (an `rl_step.Ours`), and the tokens/s
  figures."""
  rows = [breakdown(r, ours.one_token_s, ours.scoring_s) for r in ours.records]
  mean = {k: (None if rows[0][k] is None else statistics.mean(r[k] for r in rows))
          for k in rows[0]}
  s = dict(breakdown=mean, steps_s=[r["step_s"] for r in rows], losses=[r["loss"] for r in
                                                                         ours.records],
           one_token_call_s=ours.one_token_s,
           scoring_alone_s=statistics.mean(ours.scoring_s[r["columns"]] for r in rows),
           scoring_alone_s_by_columns={str(k): v for k, v in sorted(ours.scoring_s.items())},
           columns={"before": rows[0]["columns_before"],
                    "after": [r["columns"] for r in rows], "bucket": ours.bucket,
                    "compact": ours.compact if ours.bucket else "off"},
           step_cpu_s_per_step=[r["step_cpu_s"] for r in rows],
           rollout_useful_tokens_per_s=mean["useful_tokens"] / mean["sampling_s"],
           rollout_useful_tokens_per_cpu_s=mean["useful_tokens"] / mean["sampling_cpu_s"],
           sampling_s_per_step=[r["sampling_s"] for r in rows],
           step_useful_tokens_per_s=mean["useful_tokens"] / mean["step_s"],
           step_tokens_per_s=mean["valid_tokens"] / mean["step_s"],
           idle_slot_fraction=mean["idle_slot_steps"] / max(mean["slot_steps"], 1),
           grading_wait_fraction=mean["grading_wait_s"] / mean["step_s"],
           reward_t1=ours.records[-1]["stats"].get("reward_t1"),
           sampler_stats=ours.records[-1]["sampler_stats"])
  return s


def ratios(result: dict, modes: list[str]) -> dict:
  r = {}
  fixed = result["fixed"] if "fixed" in modes else None
  if fixed and "continuous" in modes:
    cont = result["continuous"]
    for unit in ("", "cpu_"):
      r[f"continuous_over_fixed_rollout_useful_{unit}s"] = common.ratio(
          cont[f"rollout_useful_tokens_per_{unit}s"], fixed[f"rollout_useful_tokens_per_{unit}s"])
    r["continuous_over_fixed_step"] = common.ratio(cont["step_tokens_per_s"],
                                                   fixed["step_tokens_per_s"])
  if result.get("arms"):                  # --arms: each arm over the first (the baseline)
    base = result[modes[0]]
    for m in modes[1:]:
      r[f"{m}_over_{modes[0]}_step_valid_tok_s"] = common.ratio(
          result[m]["step_tokens_per_s"], base["step_tokens_per_s"])
      r[f"{m}_over_{modes[0]}_step_cpu_s"] = common.ratio(
          base["breakdown"]["step_cpu_s"], result[m]["breakdown"]["step_cpu_s"])
  if "theirs" in result:
    for m, unit in ((m, u) for m in modes for u in ("", "cpu_")):
      r[f"{m}_over_theirs_rollout_useful_{unit}s"] = common.ratio(
          result[m][f"rollout_useful_tokens_per_{unit}s"],
          result["theirs"][f"rollout_useful_tokens_per_{unit}s"])
  return r


def print_report(result: dict, w: rlw.RLWorkload, modes: list[str]) -> None:
  rows = [("mode", "step s") + tuple(k[:-2] for k in PARTS) + (
      "grading all", "useful tok/s roll", "useful tok/s step", "valid tok/s step", "cpu s",
      "idle slots")]
  for m in modes:
    s = result[m]
    b = s["breakdown"]
    rows.append((m, common.fmt(b["step_s"], 2)) + tuple(common.fmt(b[k], 2) for k in PARTS)
                + (common.fmt(b["grading_total_s"], 2),
                   common.fmt(s["rollout_useful_tokens_per_s"]),
                   common.fmt(s["step_useful_tokens_per_s"]), common.fmt(s["step_tokens_per_s"]),
                   common.fmt(b["step_cpu_s"], 2), f"{s['idle_slot_fraction']:.0%}"))
  env = result["env"]
  common.print_table(
      f"rl_step (Stage II), workload {w.name}: {w.prompts} prompts x {w.samples}, prompt "
      f"{w.prompt_len}, turns {w.turn_tokens} + {w.turn_tokens}, {w.model.dtype}; "
      f"jax {env.get('jax_device', '-')}; load avg {env['load_avg_1_5_15'][0]:.2f}", rows)
  if "theirs" in result:
    t = result["theirs"]
    print(f"transformers two-turn rollout: {t['mean_rollout_s']:.2f} s, "
          f"{t['rollout_useful_tokens_per_s']:.1f} useful tok/s")
  for m in modes:
    c = result[m]["columns"]
    print(f"{m}: Episode columns {c['before']} -> {c['after']} ({c['compact']}, bucket "
          f"{c['bucket']})")
  ab = result.get("compact_ab")
  for name in (ab or {}).get("median_s", {}):
    print(f"jitted step A/B, {name} ({ab['columns'][name]} columns): median "
          f"{ab['median_s'][name]:.2f} s of {[round(x, 2) for x in ab['step_call_s'][name]]}, "
          f"loss {ab['loss'][name]:.9g}")
  for k, v in result["ratios"].items():
    print(f"{k}: {v:.2f}x")
  if result["continuous_missing"]:
    print(f"continuous batching not run: {result['continuous_missing']}")
