"""One whole SCoRe Stage II step, timed piece by piece, and the same two-turn rollout with
transformers `generate`.

  python benchmarks/rl_step.py                        # CPU workload (4-6 min, 2 busy cores)
  python benchmarks/rl_step.py --workload anchor      # 0.85B Llama, bf16, one GPU
  python benchmarks/rl_step.py --workload qwen1p5b --side ours   # Qwen2.5-1.5B shapes
  python benchmarks/rl_step.py --smoke                # seconds: checks that it runs
  python benchmarks/rl_step.py --arms fixed:off,fixed:rows --side ours --ab-reps 3
                            # the whole-step A/B: today's batch vs rows packed (issue 16)

A step is what `Trainer.run` does for a Stage II step (`score_jax.train`): the trainer's own
pieces, called in its order: `MultiTurnSampler.rollout` (turn-1 generate, decode, the
instruction chunk, turn-2 generate on the turn-1 cache, the real MATH grader, the Episode
layout), `Trainer.rollout_stats`, `train.global_batch` (which drops padding as the trainer
does, `train.compact_episodes`: the columns that are padding in every row, "columns", or
each row's own padding, its needed columns packed to the left, "rows"), then the jitted
`make_rl_step`
(reference and policy scoring without gradient, policy forward + backward, Adam). Rows get
forced lengths from the MATH length distribution (see `_rl_workload.py`). With
`--batching both` (default) every batching mode the checkout has runs in the same process,
interleaved: "fixed" and, when configs/base.py has `rollout.batching` or `MultiTurnSampler`
has `with_batching`, "continuous" (`score_jax.continuous`, grading while decoding), plus the
transformers rollout (`--side both`), all on the same problems and forced lengths.
`--arms batching:compaction,...` (e.g. `fixed:off,fixed:rows,continuous:rows`) runs those
configurations instead, interleaved the same way, each named by its spec; the ratios are
each arm's step valid tok/s over the first arm's (the baseline).

The breakdown of a step (seconds; they add up to the step's wall time):
  prefill, decode_useful, idle_rows   the generate calls, split with 1-token calls at the
        same shapes (t(1) = prefill + one step); decode is split in proportion to slot-steps:
        idle_rows = decode * (slot-steps of rows already stopped) / (all slot-steps).
        Continuous batching: one undivided sampling_s (its chunked prefills run between
        decode segments); idle_slot_fraction = 1 - useful / (slots x decode steps)
  grading_wait   grading time with nothing queued on the accelerator (grading_total_s
        is all of the grader's wall time, overlapped or not)
  reference      the step's scoring passes without gradient (reference, and the policy
        with rl.kl_mode=reward), timed alone afterwards at the same shapes
  update         the rest of the jitted step: policy forward + backward, clip, Adam
  host           everything else (tokenising, decoding, layout, metrics, transfers)
  step_cpu_s     CPU seconds of this process during the step (the grader's worker
        processes not included)
A step whose compacted width (columns) was not met before first runs the jitted step once
on copies, untimed (one compilation per width; a run has at most ceil(T / bucket) + 1).
Useful tokens are tokens of rows not yet stopped (= the forced lengths). The last line of
output is one JSON object (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import statistics
import tempfile
import time
import types
from typing import Any

import _common as common
import _rl_report as report
import _rl_workload as rlw


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workload", choices=sorted(rlw.WORKLOADS), default="cpu")
  p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 timed step")
  p.add_argument("--batching", choices=("both", "fixed", "continuous"), default="both",
                 help="both: fixed, and continuous where the checkout has it")
  p.add_argument("--side", choices=("both", "ours"), default="both",
                 help="both: also the transformers two-turn rollout")
  p.add_argument("--reps", type=int, default=2, help="timed steps per mode")
  p.add_argument("--warmup", type=int, default=1, help="untimed first steps (compilation)")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
  p.add_argument("--grader-workers", type=int, default=2, help="math grader processes")
  p.add_argument("--no-answer-suffix", dest="answer_suffix", action="store_false",
                 help="grade the raw sampled texts (no final answer: almost free)")
  p.add_argument("--slots", type=int, default=0,
                 help="continuous batching: rows decoded at once (0: the sampler's default)")
  p.add_argument("--compact-bucket", type=int, default=None,
                 help="drop the Episode's padding, padding back to a multiple of this "
                      "(default: configs/base.py train.compact_*, as the trainer; 0: off)")
  p.add_argument("--compact", choices=("columns", "rows", "off"), default=None,
                 help="which padding goes (default: configs/base.py "
                      "train.compact_episodes): the all-padding columns or each row's own")
  p.add_argument("--arms", default=None,
                 help="comma-separated batching:compaction configurations to interleave "
                      "instead of --batching, e.g. fixed:off,fixed:rows (the first is the "
                      "baseline of the ratios)")
  p.add_argument("--ab-reps", type=int, default=0,
                 help="also time the jitted step on the last episode at full width, columns "
                      "dropped and rows packed, interleaved, this many times each")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def compact_setting(bucket: int | None, mode: str | None) -> tuple[int, str]:
  """(bucket, mode) of `train.global_batch`: configs/base.py's train.compact_* (as the
  trainer), or --compact-bucket / --compact (bucket 0, mode "off": compaction off)."""
  from configs import base  # pylint: disable=import-outside-toplevel
  from score_jax.rl import episode  # pylint: disable=import-outside-toplevel
  t = base.get_config().train
  default_bucket, default_mode = episode.compact_setting(t)
  mode = default_mode if mode is None else episode.compact_mode(mode)
  bucket = (default_bucket or int(t.compact_bucket)) if bucket is None else max(int(bucket), 0)
  return (bucket, mode) if bucket and mode else (0, "off")


def batching_modes(requested: str) -> tuple[list[str], str | None]:
  """Modes to run and, when continuous batching is missing, why: it is there when
  configs/base.py has `rollout.batching` or `MultiTurnSampler` has `with_batching`."""
  from configs import base  # pylint: disable=import-outside-toplevel
  from score_jax.rl import rollout  # pylint: disable=import-outside-toplevel
  if ("batching" in base.get_config().rollout
      or hasattr(rollout.MultiTurnSampler, "with_batching")):
    return (["fixed", "continuous"] if requested == "both" else [requested]), None
  why = ("neither configs/base.py rollout.batching nor MultiTurnSampler.with_batching exists "
         "(no continuous sampler in this checkout)")
  if requested == "continuous":
    raise SystemExit(f"--batching continuous: {why}; run with --batching fixed")
  return ["fixed"], why


class Ours:
  """One batching mode: its own params / optimizer state, the trainer's pieces."""

  def __init__(self, mode: str, slots: int, w: rlw.RLWorkload, lm: Any, graphdef: Any,
               ref: Any, parts: dict, shared: dict, bucket: int = 0, compact: str = "off"):
    """`shared` holds the jitted step and scoring function of every mode (one compile)."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from configs import base  # pylint: disable=import-outside-toplevel
    from score_jax import build, train  # pylint: disable=import-outside-toplevel
    from score_jax.rl import step as step_lib  # pylint: disable=import-outside-toplevel
    config = base.get_config()
    config.rollout.update(max_prompt_len=w.prompt_len, max_instruction_len=parts["extra"],
                          samples_per_prompt=w.samples, temperature=1.0)
    if "batching" in config.rollout:
      config.rollout.batching = mode
      if slots and "slots" in config.rollout:
        config.rollout.slots = slots
    config.train.update(micro_batches=w.micro_batches, logit_chunk=w.logit_chunk)
    self.mode, self.w, self.config, self.ref, self.graphdef = mode, w, config, ref, graphdef
    self.bucket, self.compact = bucket, compact
    self.params = jax.tree.map(jnp.copy, lm.params)        # the step donates them
    self.components = build.Components(config, None, parts["task"], parts["tokenizer"],
                                       parts["chat"], parts["model_config"], graphdef,
                                       self.params)
    self.two_turn = self.components.two_turn(w.turn_tokens, w.turn_tokens)
    if getattr(self.two_turn, "batching", "fixed") != mode or (slots and mode == "continuous"):
      self.two_turn = self.two_turn.with_batching(mode, slots=slots)
    self.optimizer = step_lib.build_optimizer(config.optim)
    device = jax.tree.leaves(self.params)[0].sharding
    self.opt_state = jax.device_put(step_lib.set_learning_rate(
        self.optimizer.init(self.params), config.optim.lr), device)
    self.loss_cfg = train.loss_config(config, "stage2")
    if not shared:
      shared["step"] = step_lib.make_rl_step(graphdef, self.optimizer, self.loss_cfg,
                                             w.micro_batches, logit_chunk=w.logit_chunk)
      logprobs = step_lib._logprobs  # pylint: disable=protected-access
      shared["score"] = jax.jit(lambda ps, ep: logprobs(graphdef, ps, ep, w.micro_batches,
                                                        w.logit_chunk))
    self.step, self.score, self.shared = shared["step"], shared["score"], shared
    self.records: list[dict] = []

  def run(self, index: int, problems: list, targets: list, method: Any, holder: Any) -> Any:
    """One Stage II step as Trainer.run does it; returns the batch (numpy Episode)."""
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from score_jax import train  # pylint: disable=import-outside-toplevel
    from score_jax.rl import step as step_lib  # pylint: disable=import-outside-toplevel
    holder.log = log = rlw.StepLog(targets=targets)
    rows = [p for p in problems for _ in range(self.w.samples)]
    key = jax.random.fold_in(jax.random.key(self.config.seed), index)
    t0, cpu0 = time.perf_counter(), time.process_time()
    self.opt_state = step_lib.set_learning_rate(self.opt_state, self.config.optim.lr)
    result = self.two_turn.rollout(self.params, self.params, rows, method=method, rng=key,
                                   process_local=True)
    stats = train.Trainer.rollout_stats(types.SimpleNamespace(c=self.components), [result])
    batch = train.global_batch([(result.episode, result.split)], None, self.bucket,
                               self.compact)
    columns = int(batch.tokens_BT.shape[1])
    if columns not in self.shared.setdefault("batches", {}):
      # A width met for the first time compiles the step once (a run has at most
      # ceil(T / bucket) + 1 widths): done on copies, untimed, so each timed step is one
      # compiled call whatever its width.
      w0, wcpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(self.step(jax.tree.map(jax.numpy.copy, self.params),
                                      jax.tree.map(jax.numpy.copy, self.opt_state),
                                      self.ref, batch))
      self.shared["batches"][columns] = batch
      t0 += time.perf_counter() - w0
      cpu0 += time.process_time() - wcpu
    u0 = time.perf_counter()
    self.params, self.opt_state, out = self.step(self.params, self.opt_state, self.ref, batch)
    out = jax.device_get(out)
    t1 = time.perf_counter()
    self.records.append(dict(log=log, t0=t0, t1=t1, u0=u0, stats=stats, loss=float(out["loss"]),
                             step_cpu_s=time.process_time() - cpu0,
                             sampler_stats=getattr(result, "stats", None),
                             valid_tokens=int(np.sum(result.episode.valid_BT)),
                             slots=int(np.size(batch.valid_BT)),
                             slots_before=int(result.episode.valid_BT.size),
                             columns=columns,
                             columns_before=int(result.episode.tokens_BT.shape[1])))
    return result.episode

  def calibrate(self, episode: Any, reps: int = 3) -> None:
    """1-token generate calls at each turn's shapes, and the scoring passes alone (once for
    every mode: the same jitted program on the same shapes)."""
    import jax  # pylint: disable=import-outside-toplevel
    from score_jax import sampler as sampler_lib  # pylint: disable=import-outside-toplevel
    calls = self.records[-1]["log"].calls
    self.one_token_s = None
    if [c["kind"] for c in calls] == ["fixed", "fixed"] and not calls[0]["continued"]:
      times = []
      for _ in range(reps + 1):                   # the first call compiles
        row, cache = [], None
        for call in calls:
          start = time.perf_counter()
          out = sampler_lib.generate(self.graphdef, self.params, *call["args"], **dict(
              call["kw"], max_new_tokens=1, max_new_tokens_B=None, cache=cache))
          jax.block_until_ready(out.tokens_BS)
          row.append(time.perf_counter() - start)
          cache = out.cache
        times.append(row)
      self.one_token_s = [statistics.median(t) for t in zip(*times[1:])]
    # The same program for every mode, at each width a step had (compaction: widths vary).
    scoring_s = self.shared.setdefault("scoring_s", {})
    scored = (self.ref, self.params) if self.loss_cfg.kl_mode == "reward" else (self.ref,)
    for columns in sorted({r["columns"] for r in self.records} - set(scoring_s)):
      batch = jax.tree.map(jax.numpy.asarray, self.shared["batches"][columns])
      jax.block_until_ready(self.score(scored, batch))
      times = []
      for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(self.score(scored, batch))
        times.append(time.perf_counter() - start)
      scoring_s[columns] = statistics.median(times)
    self.scoring_s = scoring_s

  def compare_widths(self, episode: Any, reps: int, bucket: int) -> dict:
    """The jitted step on `episode` at its full width, with the all-padding columns dropped
    and with its rows packed (`bucket`), interleaved `reps` times each, on copies of the
    state (--ab-reps): the same work, three widths, one process; all must give the same
    loss."""
    import jax  # pylint: disable=import-outside-toplevel
    from score_jax import multihost, train  # pylint: disable=import-outside-toplevel
    split = multihost.RowSplit.everything(episode.tokens_BT.shape[0])
    batches = {name: train.global_batch([(episode, split)], None, b, mode) for name, b, mode in (
        ("full", 0, None), ("columns", bucket, "columns"), ("rows", bucket, "rows"))}

    def call(batch):
      start = time.perf_counter()
      _, _, out = jax.block_until_ready(self.step(
          jax.tree.map(jax.numpy.copy, self.params),
          jax.tree.map(jax.numpy.copy, self.opt_state), self.ref, batch))
      return time.perf_counter() - start, float(jax.device_get(out["loss"]))

    losses = {k: call(b)[1] for k, b in batches.items()}          # compiles
    times: dict = {k: [] for k in batches}
    for _ in range(reps):
      for k, b in batches.items():
        times[k].append(call(b)[0])
    return {"columns": {k: int(b.tokens_BT.shape[1]) for k, b in batches.items()},
            "bucket": bucket, "step_call_s": times,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "loss": losses}


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  w = rlw.resolve(args.workload, args.smoke)
  if args.smoke:
    args.reps, args.warmup = 1, 1
  common.setup_env(w.model)
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  if args.arms:
    arms = rlw.parse_arms(args.arms)
    if any(b == "continuous" for b, _ in arms):
      batching_modes("continuous")                # fails where the checkout has none
    why, bucket = None, compact_setting(args.compact_bucket, None)[0] or 64
    modes = [f"{b}:{c}" for b, c in arms]
    settings = {m: (b, *((bucket, c) if c != "off" else (0, "off"))) for m, (b, c) in
                zip(modes, arms)}
  else:
    modes, why = batching_modes(args.batching)
    bucket, mode = compact_setting(args.compact_bucket, args.compact)
    settings = {m: (m, bucket, mode) for m in modes}
  device = common.torch_device(w.model)
  run_theirs = args.side == "both"
  hf, lm = common.build_models(w.model, args.seed, device, need_hf=run_theirs)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from score_jax import sampler as sampler_lib  # pylint: disable=import-outside-toplevel
  from score_jax import train  # pylint: disable=import-outside-toplevel
  from score_jax.model import transformer as model_lib  # pylint: disable=import-outside-toplevel
  from score_jax.tasks.math import grading  # pylint: disable=import-outside-toplevel
  from score_jax.text import chat as chat_lib  # pylint: disable=import-outside-toplevel
  model_config = lm.config.replace(remat=w.remat)
  graphdef = (model_lib.abstract_params(model_config)[0] if w.remat != lm.config.remat
              else lm.graphdef)
  holder = types.SimpleNamespace(log=rlw.StepLog())
  tmp = tempfile.TemporaryDirectory(prefix="rl_step_tok_")
  tokenizer = rlw.build_tokenizer(w.model.vocab, pathlib.Path(tmp.name), w.tokenizer_texts)
  task = rlw.answered_math_task(rlw.DATA, args.grader_workers, lambda: holder.log,
                                args.answer_suffix)
  chat = chat_lib.chat_format("plain", tokenizer=tokenizer)
  extra = len(chat_lib.second_turn_ids(chat, tokenizer, task.turn2_instruction)) + 1
  parts = dict(task=task, tokenizer=tokenizer, chat=chat, extra=-(-extra // 8) * 8,
               model_config=model_config)
  real_lengths = rlw.solution_lengths(tokenizer)
  pool = rlw.scaled_lengths(real_lengths, w.turn_tokens)
  ref = jax.tree.map(jnp.copy, lm.params)
  shared: dict = {}
  runs = {m: Ours(b, args.slots, w, lm, graphdef, ref, parts, shared, mb, c)
          for m, (b, mb, c) in settings.items()}
  first = runs[modes[0]].two_turn
  method = rlw.NeverStop(sampler_lib.Temperature(1.0), first.stop_ids)
  problems = task.load("train")
  task.wrong_answers = [p.answer for p in problems]
  data = train.DataStream(problems, args.seed)
  steps = [data.take(w.prompts) for _ in range(args.warmup + args.reps)]
  targets = [rlw.draw_targets(pool, w.rows, args.seed, i) for i in range(len(steps))]
  theirs_s, theirs_cpu, theirs_ok, first_s = [], [], True, {}

  def theirs(i):
    rows = [p for p in steps[i] for _ in range(w.samples)]
    prompt_BP, valid_BP, _ = first.encode_prompts(rows)
    start, cpu = time.perf_counter(), time.process_time()
    outs = rlw.theirs_two_turn(hf, device, prompt_BP, valid_BP, targets[i], w.turn_tokens,
                               first.second_turn_ids, first.eot_id, first.stop_ids,
                               first.pad_id, args.seed + i)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    got = [(o == first.eot_id).int().argmax(dim=1).numpy() + 1 for o in outs]
    return elapsed, cpu, all(np.array_equal(g, t) for g, t in zip(got, targets[i]))

  with rlw.forced_lengths(lambda: holder.log):
    for i in range(len(steps)):                   # interleaved: mode, mode, theirs, ...
      for m in modes:
        grading.clear_verdict_cache()             # each arm grades its texts afresh
        start = time.perf_counter()
        episode = runs[m].run(i, steps[i], targets[i], method, holder)
        print(f"step {i} {m}: {time.perf_counter() - start:.2f} s", flush=True)
        if i < args.warmup:
          first_s.setdefault(m, time.perf_counter() - start)
          runs[m].records.clear()
      if run_theirs:
        elapsed, cpu, ok = theirs(i)
        print(f"step {i} transformers rollout: {elapsed:.2f} s", flush=True)
        theirs_ok &= ok
        if i >= args.warmup:
          theirs_s.append(elapsed)
          theirs_cpu.append(cpu)
        else:
          first_s.setdefault("theirs", elapsed)
  for m in modes:
    runs[m].calibrate(episode)
  task.close()
  ab = (runs[modes[0]].compare_widths(episode, args.ab_reps, bucket or 64) if args.ab_reps
        else None)
  ours_ok = all(np.array_equal(np.concatenate(lengths), np.concatenate(
      [np.minimum(t, width) for t, width in zip(rec["log"].targets, widths)]))
                for r in runs.values() for rec in r.records
                for lengths, widths in [([x for c in rec["log"].calls for x in c["lengths"]],
                                         [x for c in rec["log"].calls for x in c["widths"]])])
  result: dict[str, Any] = {
      "benchmark": "rl_step", "workload": dataclasses.asdict(w), "smoke": args.smoke,
      "reps": args.reps, "warmup": args.warmup, "batching": modes, "continuous_missing": why,
      "answer_suffix": args.answer_suffix, "first_step_s": first_s, "compact_bucket": bucket,
      "arms": {m: {"batching": b, "bucket": mb, "compact": c}
               for m, (b, mb, c) in settings.items()},
      "compact_ab": ab,
      "checks": {"ours_lengths_match_targets": bool(ours_ok)},
      "lengths": rlw.length_stats(real_lengths, pool, tokenizer.vocab_size, w.turn_tokens)}
  for m in modes:
    result[m] = report.summarize(runs[m])
  if run_theirs:
    useful = statistics.mean(sum(int(t.sum()) for t in targets[i])
                             for i in range(args.warmup, len(steps)))
    result["theirs"] = {"rollout_s": theirs_s, "mean_rollout_s": statistics.mean(theirs_s),
                        "rollout_useful_tokens_per_s": useful / statistics.mean(theirs_s),
                        "rollout_cpu_s": theirs_cpu,
                        "rollout_useful_tokens_per_cpu_s": useful / statistics.mean(theirs_cpu)}
    result["checks"]["theirs_lengths_match_targets"] = bool(theirs_ok)
  result["ratios"] = report.ratios(result, modes)
  result["env"] = common.environment(device if run_theirs else None, args.threads)
  report.print_report(result, w, modes)
  common.emit(result)
  return result


if __name__ == "__main__":
  main()
