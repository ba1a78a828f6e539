"""The eval loop, a separate process that follows a run's checkpoints.

  python -m score_jax.evaluate --config configs/tiny.py --workdir W [--once [--checkpoint C]]

Waits for new checkpoints in `W/checkpoints/`, evaluates each with greedy two-turn
decoding on the task's eval split, and appends one JSON line per checkpoint to
`W/eval/metrics.jsonl` (step, stage, n, acc_t1, acc_t2, delta, delta_i2c, delta_c2i,
answer_changed, edit_distance_ratio, with standard errors) plus TensorBoard scalars, and
the first responses to `W/eval/samples/<step>.jsonl`. `--once` evaluates one checkpoint and
exits: `--checkpoint best` (the default: the best step by the training run's validation,
config.checkpoint.best_metric; the latest when no step was validated), `latest`, a step
number, or `init` (the config's initial weights, logged as step 0: the "Base" row); it prints
which step and why. Steps already in the metrics file are not evaluated
again. A step that does not match its digests (or cannot be read) is reported and skipped,
never evaluated: `--once` falls back to the previous good step. A work directory that does
not exist is refused; a half-written last line of the metrics file (a killed writer) is
dropped (`metrics.MetricWriter` repairs the file before appending).
"""

from __future__ import annotations

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
from score_jax import sampler as sampler_lib
from score_jax.rl import plan as plan_lib
from score_jax.tasks import base as task_base


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


def split_problems(task: task_base.Task, split: str, limit: int) -> list[task_base.Problem]:
  """The first `limit` problems of `split` (0: all of them)."""
  problems = task.load(split)
  return problems[:limit] if int(limit) > 0 else problems


def eval_problems(c: build_lib.Components) -> list[task_base.Problem]:
  """The eval split's problems (config.task.eval_split, up to config.task.eval_limit)."""
  return split_problems(c.task, c.config.task.eval_split, int(c.config.task.eval_limit))


def eval_dir(config, workdir):
  """W/eval for the run's own eval task and split, W/eval_<task>_<split> for others."""
  trained = workdir / "config.json"
  if trained.is_file():
    task = json.loads(trained.read_text())["task"]
    if (task["name"], task["eval_split"]) != (config.task.name, config.task.eval_split):
      return workdir / f"eval_{config.task.name}_{config.task.eval_split}"
  return workdir / "eval"


def run(config, workdir: str | pathlib.Path, *, once: bool = False,
        checkpoint: str | int | None = None) -> list[dict[str, Any]]:
  """Evaluates checkpoints of `workdir` (see module docstring); returns the new lines.

  `checkpoint` (best | latest | a step; default best) picks the step of `once`; `init`
  evaluates the config's initial weights (config.init.*: the base model, the paper's "Base"
  row) and logs them as step 0, with no checkpoint needed. A step that
  does not match its digests or cannot be read is reported and skipped, never evaluated:
  `once` then evaluates the next candidate (the previous step for latest, the next best
  for best; none for a step number), following skips it.
  """
  workdir = checkpoint_lib.as_path(workdir)
  config_lib.check_ranges(config)
  plan_lib.validate(config)
  if checkpoint is not None and not once:
    raise ValueError(f"--checkpoint={checkpoint} picks the step of --once; without --once "
                     f"every new checkpoint is evaluated: add --once or drop --checkpoint")
  init = once and str(checkpoint) == "init"
  if init:
    workdir.mkdir(parents=True, exist_ok=True)     # the base row needs no training run
  if not workdir.is_dir():
    raise FileNotFoundError(f"--workdir {workdir} does not exist: pass the --workdir of a "
                            f"training run (python -m score_jax.main ... --workdir W creates "
                            f"it), or start the training run first")
  ckpt_dir = workdir / "checkpoints"
  if init:
    choices = [(0, "the config's initial weights (--checkpoint init)")]
    if jax.process_index() == 0:
      print(f"evaluating {choices[0][1]} as step 0", flush=True)
  elif once:
    choices = checkpoint_lib.candidates(ckpt_dir, "best" if checkpoint is None else checkpoint,
                                        config.checkpoint.best_metric)
    if jax.process_index() == 0:
      print(f"evaluating step {choices[0][0]}: {choices[0][1]}", flush=True)
  c = build_lib.build(config)
  problems = eval_problems(c)
  out = eval_dir(config, workdir)
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
                             turn2_tokens=config.eval.max_turn2_tokens)
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
  if writer is not None:
    writer.close()
  c.task.close()
  if once and not lines and len(causes) == len(choices):
    raise checkpoint_lib.CorruptCheckpointError(
        f"no good checkpoint to evaluate in {ckpt_dir}: " + " | ".join(causes))
  return lines


def main(argv: list[str] | None = None) -> None:
  config, args = config_lib.parse(
      sys.argv[1:] if argv is None else argv, __doc__,
      extra=[("--once", dict(action="store_true", help="evaluate one checkpoint, exit")),
             ("--checkpoint", dict(default=None, help="with --once: best (default: by "
                                   "validation, else the latest) | latest | a step number | "
                                   "init (the initial weights, as step 0)"))])
  try:
    multihost.maybe_initialize_distributed(config)
    run(config, args.workdir, once=args.once, checkpoint=args.checkpoint)
  except (ValueError, FileNotFoundError) as e:
    config_lib.die(str(e))


if __name__ == "__main__":
  main()
