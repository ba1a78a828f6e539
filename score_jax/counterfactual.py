"""Counterfactual first attempts: does the second attempt read the first?

  python -m score_jax.counterfactual --config configs/demo.py --workdir W \
      [--checkpoint best|latest|N|init] [--temperature 0] [--seed 0] [--out DIR] [overrides]

The model's own first attempts y1 are sampled (greedy by default), then the later attempts
are re-run (`MultiTurnSampler.rollout(..., given=[y1'])`) with y1 replaced by y1' under
each condition:

  model      y1 itself (the reference row)
  gold       a correct response: `task.demonstration` drawn until the task grades it right
             (up to 64 draws; a task without demonstrations: MissingCapability)
  corrupted  `task.corrupt` of that gold response (sorting: two different letters swapped)
  other      another problem's y1 (a random derangement of the problems' y1, Sattolo's
             algorithm: no problem keeps its own)
  perturbed  `task.perturb` of y1 (sorting: a random permutation of y1's letters)

Per condition, with standard errors over problems: `acc_given` (the reward of y1' as turn 2
reads it: cut to the turn-1 budget like a sampled y1),
`acc_t2` (turn-2 accuracy), `kept_t2` (the answer-kept rate: turn 2's `answer_key` equals
y1''s, a None key never counts as kept), `fix_t2` (turn-2 accuracy where y1' is wrong) and
`keep_right_t2` (where y1' is right); with A > 2 attempts (config.rollout.num_attempts)
also `acc_last` and `kept_last` for attempt A. A condition the task cannot build is a row
`{"skipped": reason}`. A method that reads its first attempt keeps gold, fixes corrupted
and is not pulled towards other. Writes OUT/counterfactual.json and OUT/counterfactual.md
(OUT = W/eval by default). Every random choice follows `--seed`.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from score_jax import build as build_lib
from score_jax import config_lib
from score_jax import sampler as sampler_lib
from score_jax import scaling
from score_jax import startup
from score_jax.rl import rollout as rollout_lib
from score_jax.tasks import base as task_base

CONDITIONS = ("model", "gold", "corrupted", "other", "perturbed")
GOLD_DRAWS = 64


def _batched(sampler: rollout_lib.MultiTurnSampler, params: Any,
             problems: Sequence[task_base.Problem], given: Sequence[str] | None, *,
             method: Any, rng: jax.Array, batch_size: int) -> tuple[np.ndarray, list[list[str]]]:
  """Rollouts of every problem (given first attempts, or none): (rewards_AN, texts[a][n])."""
  A, N = sampler.num_attempts, len(problems)
  rewards_AN = np.zeros((A, N), np.float32)
  texts: list[list[str]] = [[] for _ in range(A)]
  for k, i in enumerate(range(0, N, batch_size)):
    chunk = list(problems[i:i + batch_size])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)        # fixed shapes: one compilation
    g = None
    if given is not None:
      g = list(given[i:i + batch_size])
      g = [g + [g[-1]] * (batch_size - n)]
    result = sampler.rollout(params, params, chunk, method=method,
                             rng=jax.random.fold_in(rng, k), given=g)
    for t in range(A):
      rewards_AN[t, i:i + n] = result.episode.reward(t + 1)[:n]
      texts[t] += result.texts[t][:n]
  return rewards_AN, texts


def gold_response(task: task_base.Task, problem: task_base.Problem,
                  rng: np.random.Generator) -> str:
  """A response the task grades right: demonstrations drawn until one is (module doc)."""
  for _ in range(GOLD_DRAWS):
    y = task.demonstration(problem, rng)
    if task.rewards([problem], [y])[0] == 1.0:
      return y
  raise task_base.MissingCapability(
      f"task {task.name!r}: no correct demonstration of {problem.uid} in {GOLD_DRAWS} draws")


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
  """A random permutation with no fixed point (Sattolo's algorithm: one n-cycle), n >= 2."""
  perm = np.arange(n)
  for i in range(n - 1, 0, -1):
    j = int(rng.integers(i))
    perm[i], perm[j] = perm[j], perm[i]
  return perm


def given_texts(task: task_base.Task, problems: Sequence[task_base.Problem],
                y1: Sequence[str], seed: int) -> dict[str, list[str] | str]:
  """y1' of every condition (or the reason it cannot be built), seeded per condition."""
  rng = lambda k: np.random.default_rng([seed, k])  # noqa: E731
  out: dict[str, list[str] | str] = {"model": list(y1)}

  def attempt(name: str, make: Callable[[], list[str]]):
    try:
      out[name] = make()
    except (task_base.MissingCapability, ValueError) as e:
      out[name] = str(e)

  r1, r2, r3, r4 = rng(1), rng(2), rng(3), rng(4)
  attempt("gold", lambda: [gold_response(task, p, r1) for p in problems])
  gold = out["gold"]
  if isinstance(gold, list):
    attempt("corrupted", lambda: [task.corrupt(p, g, r2) for p, g in zip(problems, gold)])
  else:
    out["corrupted"] = f"needs the gold condition: {gold}"
  if len(y1) >= 2:
    perm = derangement(len(y1), r3)
    out["other"] = [y1[j] for j in perm]
  else:
    out["other"] = "needs at least 2 problems"
  attempt("perturbed", lambda: [task.perturb(p, y, r4) for p, y in zip(problems, y1)])
  return out


def _rate(x: Sequence[float]) -> tuple[float | None, float | None]:
  """Mean and standard error; None for no rows (e.g. fix rate where y1' is never wrong)."""
  return (None, None) if len(x) == 0 else scaling.mean_se(x)


def condition_row(task: task_base.Task, given: Sequence[str], given_r: Sequence[float],
                  rewards_AN: np.ndarray, texts: Sequence[Sequence[str]]) -> dict[str, float]:
  """The metrics of one condition (module docstring)."""
  key_g = [task.answer_key(y) for y in given]
  row: dict[str, float] = {"n": len(given)}
  given_r = np.asarray(given_r, np.float64)
  attempts = [(2, "t2")] + ([(rewards_AN.shape[0], "last")] if rewards_AN.shape[0] > 2 else [])
  for t, name in attempts:
    r = rewards_AN[t - 1].astype(np.float64)
    kept = [float(g is not None and task.answer_key(y) == g)
            for g, y in zip(key_g, texts[t - 1])]
    row[f"acc_{name}"], row[f"acc_{name}_se"] = _rate(r)
    row[f"kept_{name}"], row[f"kept_{name}_se"] = _rate(kept)
    if name == "t2":
      row["fix_t2"], row["fix_t2_se"] = _rate(r[given_r == 0])
      row["keep_right_t2"], row["keep_right_t2_se"] = _rate(r[given_r == 1])
  row["acc_given"], row["acc_given_se"] = _rate(given_r)
  return row


def counterfactual_table(c: build_lib.Components, params: Any,
                         problems: Sequence[task_base.Problem], *, temperature: float = 0.0,
                         seed: int = 0, batch_size: int, turn1_tokens: int,
                         turn2_tokens: int) -> dict[str, dict[str, Any]]:
  """{condition: row} for `problems` (module docstring)."""
  sampler = c.two_turn(turn1_tokens, turn2_tokens)
  method = sampler_lib.Temperature(temperature) if temperature > 0 else sampler_lib.Greedy()
  key = jax.random.key(seed)
  run = lambda given, k: _batched(sampler, params, problems, given, method=method,  # noqa: E731
                                  rng=jax.random.fold_in(key, k), batch_size=batch_size)
  _, texts = run(None, 0)
  givens = given_texts(c.task, problems, texts[0], seed)
  table: dict[str, dict[str, Any]] = {}
  for k, name in enumerate(CONDITIONS, start=1):
    given = givens[name]
    if isinstance(given, str):
      table[name] = {"skipped": given}
      continue
    rewards_AN, out = run(given, k)
    # out[0]: the given texts as the model read them (cut to the turn-1 budget, as a sampled
    # y1 would be), so "y1' right" and "kept" describe what turn 2 saw
    table[name] = condition_row(c.task, out[0], c.task.rewards(problems, out[0]), rewards_AN,
                                out)
  return table


def markdown(table: dict[str, Any]) -> str:
  """The table as markdown: percent, mean ± standard error."""
  rows = {k: v for k, v in table.items() if not k.startswith("_")}
  last = any("acc_last" in r for r in rows.values())
  cols = [("acc_given", "y1' right"), ("acc_t2", "Acc@t2"), ("kept_t2", "kept@t2"),
          ("fix_t2", "Acc@t2 where y1' wrong"),
          ("keep_right_t2", "Acc@t2 where y1' right")]
  if last:
    cols += [("acc_last", "Acc@last"), ("kept_last", "kept@last")]
  head = "| y1' | " + " | ".join(name for _, name in cols) + " |"
  rule = "|---|" + "---:|" * len(cols)
  lines = [head, rule]
  for name, r in rows.items():
    if "skipped" in r:
      lines.append(f"| {name} | skipped: {r['skipped']} |" + " |" * (len(cols) - 1))
      continue
    cells = ["–" if r[k] is None else f"{100 * r[k]:.1f} ± {100 * r[k + '_se']:.1f}"
             for k, _ in cols]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  meta = table.get("_meta", {})
  note = (f"\n\nPercent, mean ± standard error over n = {meta.get('n')} problems; "
          f"{meta.get('checkpoint')}; temperature {meta.get('temperature')}. kept = the "
          f"attempt's answer equals y1''s.")
  return "\n".join(lines) + note + "\n"


def run(config, workdir: str | pathlib.Path, *, checkpoint: str = "best",
        temperature: float = 0.0, seed: int = 0, out: str | pathlib.Path | None = None
        ) -> dict[str, Any]:
  """Builds, restores, runs every condition, writes the JSON and markdown tables."""
  workdir = pathlib.Path(workdir)
  config_lib.check_ranges(config)
  if not workdir.is_dir():
    raise FileNotFoundError(f"--workdir {workdir} does not exist")
  start = time.time()
  c = build_lib.build(config)
  params, why = scaling.load_params(c, workdir, checkpoint)
  print(f"counterfactual: {why}", flush=True)
  problems = startup.eval_problems(c)
  table = counterfactual_table(
      c, params, problems, temperature=temperature, seed=seed,
      batch_size=int(config.eval.batch_size), turn1_tokens=config.eval.max_turn1_tokens,
      turn2_tokens=config.eval.max_turn2_tokens)
  c.task.close()
  result = {"_meta": dict(checkpoint=why, task=config.task.name, split=config.task.eval_split,
                          n=len(problems), temperature=temperature, seed=seed,
                          num_attempts=int(c.two_turn(1, 1).num_attempts),
                          wall_s=round(time.time() - start, 1)), **table}
  out = pathlib.Path(out) if out is not None else workdir / "eval"
  out.mkdir(parents=True, exist_ok=True)
  (out / "counterfactual.json").write_text(json.dumps(result, indent=1) + "\n")
  md = markdown(result)
  (out / "counterfactual.md").write_text(md)
  print(md, flush=True)
  print(f"wrote {out / 'counterfactual.json'} ({result['_meta']['wall_s']} s)", flush=True)
  return result


def main(argv: list[str] | None = None) -> None:
  config, args = config_lib.parse(
      sys.argv[1:] if argv is None else argv, __doc__,
      extra=[("--checkpoint", dict(default="best", help="best | latest | a step | init")),
             ("--temperature", dict(type=float, default=0.0, help="0: greedy")),
             ("--seed", dict(type=int, default=0)),
             ("--out", dict(default=None, help="output folder (default W/eval)"))])
  try:
    run(config, args.workdir, checkpoint=args.checkpoint, temperature=args.temperature,
        seed=args.seed, out=args.out)
  except (ValueError, FileNotFoundError) as e:
    config_lib.die(str(e))


if __name__ == "__main__":
  main()
