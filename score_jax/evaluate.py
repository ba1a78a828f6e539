"""The eval loop, a separate process that follows a run's checkpoints.

  python -m score_jax.evaluate --workdir W [--once] [--step best|latest|N|0]
      [--config FILE] [--config.x=y ...] [--mode standard|scaling|counterfactual] [--verbose]

The run's config is the eval's config: when `W/config.json` exists (the training run wrote
it), it is the base and only the `--config.x=y` overrides given here apply on top, each
changed field printed (`field: run -> eval`); `--config FILE` is then optional, and a file
that differs from the run's config is reported field by field and not used
(`score_jax.run_config`). Without `W/config.json`, `--config FILE` is required.

Waits for new checkpoints in `W/checkpoints/`, evaluates each with greedy two-turn
decoding on the task's eval split, and appends one JSON line per checkpoint to
`W/eval/metrics.jsonl` (step, stage, n, acc_t1, acc_t2, delta, delta_i2c, delta_c2i,
answer_changed, edit_distance_ratio, with standard errors) plus TensorBoard scalars, and
the first responses to `W/eval/samples/<step>.jsonl`. `--once` evaluates one checkpoint and
exits; `--step` (implies `--once`; `--checkpoint` is its alias) picks it: `best` (the
default: the best step by the training run's validation, config.checkpoint.best_metric; the
latest when no step was validated), `latest`, a step number, or `0` (`init`: the config's
initial weights, logged as step 0: the "Base" row, no training run needed); it prints which
step and why. Steps already in the metrics file are not evaluated again. A step that does
not match its digests (or cannot be read) is reported and skipped, never evaluated: `--once`
falls back to the previous good step. A step written by another model (its arrays do not fit
this config's: `checkpoint.TreeMismatchError`) is an error, never skipped. A work directory
that does not exist is refused; a half-written last line of the metrics file (a killed
writer) is dropped (`metrics.MetricWriter` repairs the file before appending).

`--instruction self_refine` evaluates with the Self-Refine turn-2 instruction
(`prompts.self_refine_instruction`) instead of the task's, into `W/eval_self_refine` (or
`W/eval_<task>_<split>_self_refine`): with `--step 0`, the paper's "Self-Refine" row.

`--mode scaling` / `--mode counterfactual` run `score_jax.scaling` / `score_jax.counterfactual`
(majority voting over K samples vs self-corrected chains; counterfactual first attempts) on
the same config and `--step` (default best), with their options `--budgets`, `--temperature`,
`--seed`, `--out`. Mistakes (paths, checkpoints, Hub ids) end with one line `error: ...` and
status 1; `--verbose` also prints the traceback.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any, Sequence

import jax
import tqdm

from score_jax import build as build_lib
from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import metrics as metrics_lib
from score_jax import multihost
from score_jax import run_config
from score_jax import sampler as sampler_lib
from score_jax import startup
from score_jax.rl import plan as plan_lib
from score_jax.tasks import base as task_base
from score_jax.tasks import prompts


def evaluate_params(c: build_lib.Components, params: Any, problems: Sequence[task_base.Problem],
                    *, batch_size: int, turn1_tokens: int, turn2_tokens: int,
                    params_turn2: Any = None, instruction: str | None = None,
                    progress: bool = True, num_attempts: int | None = None) -> dict[str, Any]:
  """Greedy evaluation of A attempts (config.rollout.num_attempts, or `num_attempts`);
  returns `metrics.graded_metrics` plus per-problem records (uid, y1..yA, r1..rA) under
  'records'.

  `params_turn2` (default: `params`) lets baselines such as "base model corrects itself"
  use different weights for the first attempt and the later ones. `instruction` (default: the task's
  turn-2 instruction) replaces the turn-2 instruction, e.g. Self-Refine's
  (`score_jax.tasks.prompts.self_refine_instruction`); the extra-chunk budget
  (config.rollout.max_instruction_len) grows to fit it for this evaluation.
  """
  if not problems:
    raise ValueError("no problems to evaluate (empty eval split or config.eval_limit)")
  two_turn = c.two_turn(turn1_tokens, turn2_tokens)
  if instruction is not None:
    two_turn = two_turn.with_instruction(instruction)
  if num_attempts is not None:
    two_turn = two_turn.with_attempts(num_attempts)
  params_turn2 = params if params_turn2 is None else params_turn2
  A = two_turn.num_attempts
  rewards, texts = [[] for _ in range(A)], [[] for _ in range(A)]   # per attempt
  for i in tqdm.trange(0, len(problems), batch_size, desc="eval", disable=not progress,
                       dynamic_ncols=True):
    chunk = list(problems[i:i + batch_size])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)  # fixed shapes: one compilation
    result = two_turn.rollout(params, params_turn2, chunk, method=sampler_lib.Greedy(),
                              rng=jax.random.key(0))
    for t in range(A):
      rewards[t] += result.episode.reward(t + 1)[:n].tolist()
      texts[t] += result.texts[t][:n]
  out = metrics_lib.graded_metrics(rewards, texts, c.task.answer_key)
  out["records"] = [{"uid": p.uid, **{f"y{t + 1}": texts[t][i] for t in range(A)},
                     **{f"r{t + 1}": rewards[t][i] for t in range(A)}}
                    for i, p in enumerate(problems)]
  return out


# The splits' problems live in score_jax.startup (also used by scaling / counterfactual).
split_problems, eval_problems = startup.split_problems, startup.eval_problems


def eval_dir(config, workdir):
  """W/eval for the run's own eval task and split, W/eval_<task>_<split> for others."""
  trained = workdir / "config.json"
  if trained.is_file():
    task = json.loads(trained.read_text())["task"]
    if (task["name"], task["eval_split"]) != (config.task.name, config.task.eval_split):
      return workdir / f"eval_{config.task.name}_{config.task.eval_split}"
  return workdir / "eval"


INIT = ("0", "init")          # --step 0 / --checkpoint init: the config's initial weights


def run(config, workdir: str | pathlib.Path, *, once: bool = False,
        checkpoint: str | int | None = None, source: str = "a config object (Python API)",
        instruction: str = "task") -> list[dict[str, Any]]:
  """Evaluates checkpoints of `workdir` (see module docstring); returns the new lines.

  `checkpoint` (best | latest | a step; default best) picks the step of `once`; 0 or `init`
  evaluates the config's initial weights (config.init.*: the base model, the paper's "Base"
  row) and logs them as step 0, with no checkpoint needed. A step that
  does not match its digests or cannot be read is reported and skipped, never evaluated:
  `once` then evaluates the next candidate (the previous step for latest, the next best
  for best; none for a step number), following skips it. A step of another model raises
  `checkpoint.TreeMismatchError`. `source` (where the config came from) is printed in the
  start-up summary. `instruction` "self_refine" uses the Self-Refine turn-2 instruction and
  writes to the eval directory's name + "_self_refine".
  """
  if instruction not in INSTRUCTIONS:
    raise ValueError(f"--instruction {instruction!r}: choose one of {INSTRUCTIONS}")
  workdir = checkpoint_lib.as_path(workdir)
  config_lib.check_ranges(config)
  plan_lib.validate(config)
  if checkpoint is not None and not once:
    raise ValueError(f"--checkpoint={checkpoint} picks the step of --once; without --once "
                     f"every new checkpoint is evaluated: add --once or drop --checkpoint")
  init = once and str(checkpoint) in INIT
  if init:
    workdir.mkdir(parents=True, exist_ok=True)     # the base row needs no training run
  if not workdir.is_dir():
    raise FileNotFoundError(f"--workdir {workdir} does not exist: pass the --workdir of a "
                            f"training run (python -m score_jax.main ... --workdir W creates "
                            f"it), or start the training run first")
  ckpt_dir = workdir / "checkpoints"
  if init:
    choices = [(0, "the config's initial weights (--step 0)")]
    if jax.process_index() == 0:
      print(f"evaluating {choices[0][1]} as step 0", flush=True)
  elif once:
    try:
      choices = checkpoint_lib.candidates(ckpt_dir, "best" if checkpoint is None
                                          else checkpoint, config.checkpoint.best_metric)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"{e}: train first (python -m score_jax.main --workdir "
                              f"{workdir}), or evaluate the initial weights with --step 0"
                              ) from e
    if jax.process_index() == 0:
      print(f"evaluating step {choices[0][0]}: {choices[0][1]}", flush=True)
  c = build_lib.build(config)
  if jax.process_index() == 0:
    sizes = startup.split_sizes(c.task, startup.run_splits(config))
    print(startup.summary(c, workdir=workdir, source=source, sizes=sizes, what="evaluate"),
          flush=True)
  problems = eval_problems(c)
  out = eval_dir(config, workdir)
  turn2 = None
  if instruction == "self_refine":
    out, turn2 = out.with_name(out.name + "_self_refine"), prompts.self_refine_instruction(
        config.task.name)
  # Every process evaluates (the sampler's arrays span all of them); process 0 writes.
  is_writer = jax.process_index() == 0
  writer = (metrics_lib.MetricWriter(out / "metrics.jsonl", workdir / "tensorboard" / out.name)
            if is_writer else None)
  done = {r["step"] for r in metrics_lib.read_jsonl(out / "metrics.jsonl")}
  reader = checkpoint_lib.Checkpointer(ckpt_dir, read_only=True, keep_best=False)
  if once:
    steps: Any = [step for step, _ in choices]
  else:
    steps = checkpoint_lib.follow(ckpt_dir, poll_s=config.eval.poll_s,
                                  timeout_s=config.eval.timeout_s)
  lines, causes = [], []
  try:   # a step of another model (TreeMismatchError) ends the loop, closed
    for step in steps:
      if step in done:
        if once and is_writer:
          print(f"step {step} is already in {out / 'metrics.jsonl'}: not evaluated again",
                flush=True)
        if once:
          break
        continue
      reader.reload()
      try:
        params, _, meta = ((c.base_params, None, {"stage": "init"}) if init else
                           reader.restore(step, c.base_params))
      except checkpoint_lib.CorruptCheckpointError as e:  # corrupt, or deleted meanwhile
        print(f"skipping {e}", file=sys.stderr, flush=True)
        causes.append(str(e))
        continue
      if once and causes and is_writer:
        print(f"evaluating step {step} instead: {dict(choices)[step]}", flush=True)
      result = evaluate_params(c, params, problems, batch_size=config.eval.batch_size,
                               turn1_tokens=config.eval.max_turn1_tokens,
                               turn2_tokens=config.eval.max_turn2_tokens, instruction=turn2)
      records = result.pop("records")
      line = {"stage": meta.get("stage"), **result}
      lines.append({"step": step, **line})
      if is_writer:
        writer.write(step, line)
        samples = out / "samples" / f"{step}.jsonl"
        samples.parent.mkdir(parents=True, exist_ok=True)
        samples.write_text("".join(json.dumps(r) + "\n" for r in records[:50]))
        print(f"step {step} ({line['stage']}): acc_t1={line['acc_t1']:.3f} "
              f"acc_t2={line['acc_t2']:.3f} delta={line['delta']:+.3f} "
              f"i2c={line['delta_i2c']:.3f} c2i={line['delta_c2i']:.3f}", flush=True)
      if once:
        break
  finally:
    if writer is not None:
      writer.close()
    c.task.close()
  if once and not lines and len(causes) == len(choices):
    raise checkpoint_lib.CorruptCheckpointError(
        f"no good checkpoint to evaluate in {ckpt_dir}: " + " | ".join(causes))
  return lines


MODES = ("standard", "scaling", "counterfactual")
INSTRUCTIONS = ("task", "self_refine")   # --instruction: the turn-2 instruction evaluated


def parse_args(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace,
                                            list[str]]:
  """(parser, args, the --config.x=y overrides) of the command line (module docstring)."""
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=None, help="config file; optional when "
                      "W/config.json exists (the run's config is used, see above)")
  parser.add_argument("--workdir", required=True, help="the training run's directory")
  parser.add_argument("--once", action="store_true", help="evaluate one checkpoint, exit")
  parser.add_argument("--step", default=None, help="best (default: by validation, else the "
                      "latest) | latest | a step number | 0 (the initial weights); implies "
                      "--once")
  parser.add_argument("--checkpoint", default=None, help="alias of --step (init = 0)")
  parser.add_argument("--mode", choices=MODES, default="standard")
  parser.add_argument("--verbose", action="store_true", help="tracebacks with errors")
  parser.add_argument("--instruction", choices=INSTRUCTIONS, default="task", help="standard "
                      "mode: the task's turn-2 instruction, or Self-Refine's (into "
                      "W/eval_self_refine)")
  parser.add_argument("--budgets", default=None, help="scaling: samples per problem, e.g. "
                      "2,4,8")
  parser.add_argument("--temperature", type=float, default=None,
                      help="scaling (default 0.7) / counterfactual (default 0: greedy)")
  parser.add_argument("--seed", type=int, default=0, help="scaling / counterfactual")
  parser.add_argument("--out", default=None, help="scaling / counterfactual output folder "
                      "(default W/eval)")
  args, rest = parser.parse_known_args(list(argv))
  if None not in (args.step, args.checkpoint) and args.step != args.checkpoint:
    parser.error(f"--step {args.step} and --checkpoint {args.checkpoint} disagree: pass one")
  args.step = args.step if args.step is not None else args.checkpoint
  return parser, args, rest


def _run_mode(config, args: argparse.Namespace, source: str) -> None:
  """Dispatches `--mode` (imported here: scaling / counterfactual build on this module)."""
  if args.mode == "standard":
    run(config, args.workdir, once=args.once or args.step is not None, checkpoint=args.step,
        source=source, instruction=args.instruction)
    return
  if args.instruction != "task":
    raise ValueError(f"--instruction {args.instruction} works with --mode standard only")
  which = "best" if args.step is None else ("init" if str(args.step) in INIT else args.step)
  extra = {} if args.temperature is None else {"temperature": args.temperature}
  if args.mode == "scaling":
    from score_jax import scaling  # pylint: disable=import-outside-toplevel
    if args.budgets:
      extra["budgets"] = [int(k) for k in args.budgets.split(",") if k.strip()]
    scaling.run(config, args.workdir, checkpoint=which, seed=args.seed, out=args.out, **extra)
  else:
    from score_jax import counterfactual  # pylint: disable=import-outside-toplevel
    counterfactual.run(config, args.workdir, checkpoint=which, seed=args.seed, out=args.out,
                       **extra)


def main(argv: list[str] | None = None) -> None:
  parser, args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    run_config.check_workdir(args.workdir, create=False)
    if args.config is None and not checkpoint_lib.as_path(args.workdir).exists():
      raise FileNotFoundError(f"--workdir {args.workdir} does not exist: pass the --workdir "
                              f"of a training run, or --config FILE to evaluate a config's "
                              f"initial weights (--step 0) in a new directory")
    try:
      config = run_config.resolve_eval_config(args.workdir, args.config, overrides)
    except config_lib.ConfigError as e:        # a usage mistake, as argparse's
      parser.exit(2, f"error: {run_config.one_line(e)}\n")
    has_run = (checkpoint_lib.as_path(args.workdir) / run_config.RUN_CONFIG).exists()
    source = (f"the run's {run_config.RUN_CONFIG}" if has_run else str(args.config)) + (
        f" + {len(overrides)} command-line override(s)" if overrides else "")
    multihost.maybe_initialize_distributed(config)
    _run_mode(config, args, source)
  except run_config.USER_ERRORS as e:
    run_config.fail(e, args.verbose)


if __name__ == "__main__":
  main()
