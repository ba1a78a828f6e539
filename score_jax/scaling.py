"""Inference-time scaling: majority vote over K parallel samples vs over self-corrected chains.

  python -m score_jax.scaling --config configs/demo.py --workdir W \
      [--checkpoint best|latest|N|init] [--budgets 2,4,8,16,32] [--temperature 0.7] \
      [--seed 0] [--out DIR] [--config.task.eval_limit=100 ...]

For a budget of K samples per problem (the paper's Figure: K = 32, MATH) it compares

- `parallel`: majority vote over the final answers of K independent first attempts;
- `seq{T}` for T = 2..A (A = config.rollout.num_attempts): majority vote over the last
  attempts of floor(K / T) chains of T attempts (`seq2` is the paper's "K/2 samples, each
  corrected once"); a budget with no whole chain (K < T) is left out.

Sampling: every problem gets K_max = max(budgets) chains of A attempts, sampled once at
`--temperature` (default 0.7, as in the paper); smaller budgets take *nested prefixes* of the
same chains (chains 0..K-1 for `parallel`, 0..floor(K/T)-1 for `seq{T}`; attempt T of an
A-attempt chain is distributed as the last attempt of a T-attempt chain), so a larger budget
adds samples to a smaller one's, the methods are paired over the same problems and chains,
and one sampling run serves all budgets.

Voting: answers are equal when the task's `answer_key` is (math-verify-normalised for MATH);
a response whose key is None (no extractable answer) does not vote. The voted answer is
the key with the most votes; ties go to the key that appeared first (lowest chain index).
Its representative is the first response with that key, and its reward (`task.rewards`, graded
when sampled) is the problem's score (a problem where no response has a key is scored by
its first response). So two votes always
elect the first (a 1:1 tie, or agreement): K = 2 votes give K = 1's accuracy. `any_correct`
(a pass@K-style ceiling) is whether any voted response is right. `vs_parallel` is a
sequential method's accuracy minus `parallel`'s at the same K, with its paired standard
error over problems.

Writes `OUT/scaling.json` (OUT = W/eval by default): per method and budget `acc`,
`acc_se`, `any_correct`, `any_correct_se` (standard errors over problems), `chains`,
`samples`, `n` (and `vs_parallel`, `vs_parallel_se` for `seq{T}`); and `OUT/scaling.png`
(accuracy vs budget with error bars).
"""

from __future__ import annotations

import collections
import json
import pathlib
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from score_jax import build as build_lib
from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import sampler as sampler_lib
from score_jax import startup
from score_jax.tasks import base as task_base

DEFAULT_BUDGETS = (2, 4, 8, 16, 32)


def load_params(c: build_lib.Components, workdir: pathlib.Path, which: str) -> tuple[Any, str]:
  """(params, why) of `which`: "init" (the config's initial weights: random, or
  config.init.checkpoint / config.init.params), or best | latest | a step of W/checkpoints
  (`checkpoint.select_step`, ranked by config.checkpoint.best_metric)."""
  if str(which) == "init":
    return c.base_params, "the config's initial weights (--checkpoint init)"
  step, why = checkpoint_lib.select_step(workdir / "checkpoints", which,
                                         c.config.checkpoint.best_metric)
  params, _, step = checkpoint_lib.restore_params(workdir / "checkpoints", c.base_params, step)
  return params, f"step {step}: {why}"


def sample_chains(c: build_lib.Components, params: Any, problems: Sequence[task_base.Problem],
                  *, chains: int, temperature: float, batch_size: int, seed: int = 0,
                  turn1_tokens: int, turn2_tokens: int) -> tuple[np.ndarray, list]:
  """`chains` sampled chains of A attempts per problem: (rewards_NCA, texts[n][c][a])."""
  sampler = c.two_turn(turn1_tokens, turn2_tokens)
  A = sampler.num_attempts
  rows = [(i, j) for i in range(len(problems)) for j in range(chains)]
  method = sampler_lib.Temperature(temperature) if temperature > 0 else sampler_lib.Greedy()
  rewards_NCA = np.zeros((len(problems), chains, A), np.float32)
  texts = [[[""] * A for _ in range(chains)] for _ in problems]
  key = jax.random.key(seed)
  for k, start in enumerate(range(0, len(rows), batch_size)):
    chunk = rows[start:start + batch_size]
    batch = [problems[i] for i, _ in chunk]
    batch += [batch[-1]] * (batch_size - len(batch))    # fixed shapes: one compilation
    result = sampler.rollout(params, params, batch, method=method,
                             rng=jax.random.fold_in(key, k))
    for t in range(A):
      r = result.episode.reward(t + 1)
      for b, (i, j) in enumerate(chunk):
        rewards_NCA[i, j, t] = r[b]
        texts[i][j][t] = result.texts[t][b]
  return rewards_NCA, texts


def majority_vote(keys: Sequence[str | None]) -> int:
  """Index of the representative response: the first one with the most frequent non-None
  key (ties: the key seen first); 0 when no response has a key."""
  counts = collections.Counter(k for k in keys if k is not None)
  if not counts:
    return 0
  first = {}
  for i, k in enumerate(keys):
    if k is not None and k not in first:
      first[k] = i
  best = max(counts, key=lambda k: (counts[k], -first[k]))
  return first[best]


def mean_se(x: Sequence[float]) -> tuple[float, float]:
  """Mean and standard error (0 for fewer than two values)."""
  x = np.asarray(x, np.float64)
  se = float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
  return float(np.mean(x)), se


def scaling_table(rewards_NCA: np.ndarray, keys: Sequence[Sequence[Sequence[str | None]]],
                  budgets: Sequence[int]) -> dict[str, dict[str, dict[str, float]]]:
  """{method: {str(K): row}} from sampled chains (rewards_NCA and keys[n][c][a] alike)."""
  N, C, A = rewards_NCA.shape
  if max(budgets) > C:
    raise ValueError(f"budget {max(budgets)} needs {max(budgets)} chains; {C} were sampled")
  methods = {"parallel": 1, **{f"seq{T}": T for T in range(2, A + 1)}}
  table: dict[str, dict[str, dict[str, float]]] = {}
  parallel_acc: dict[int, list[float]] = {}
  for name, T in methods.items():
    rows = {}
    for K in budgets:
      n_chains = K // T
      if n_chains == 0:
        continue
      acc, anyc = [], []
      for i in range(N):
        voted = [keys[i][j][T - 1] for j in range(n_chains)]
        rep = majority_vote(voted)
        acc.append(float(rewards_NCA[i, rep, T - 1]))
        anyc.append(float(rewards_NCA[i, :n_chains, T - 1].max()))
      (a, a_se), (p, p_se) = mean_se(acc), mean_se(anyc)
      rows[str(K)] = dict(acc=a, acc_se=a_se, any_correct=p, any_correct_se=p_se,
                          chains=n_chains, attempts=T, samples=n_chains * T, n=N)
      if T == 1:
        parallel_acc[K] = acc
      else:   # paired over problems: the same problems, nested samples
        d, d_se = mean_se(np.subtract(acc, parallel_acc[K]))
        rows[str(K)].update(vs_parallel=d, vs_parallel_se=d_se)
    table[name] = rows
  return table


def run(config, workdir: str | pathlib.Path, *, checkpoint: str = "best",
        budgets: Sequence[int] = DEFAULT_BUDGETS, temperature: float = 0.7, seed: int = 0,
        out: str | pathlib.Path | None = None, plot: bool = True) -> dict[str, Any]:
  """Samples, votes and writes the table (module docstring); returns it."""
  workdir = pathlib.Path(workdir)
  config_lib.check_ranges(config)
  if not workdir.is_dir():
    raise FileNotFoundError(f"--workdir {workdir} does not exist")
  budgets = sorted({int(k) for k in budgets})
  if not budgets or budgets[0] < 1:
    raise ValueError(f"--budgets must be positive integers, got {budgets}")
  start = time.time()
  c = build_lib.build(config)
  params, why = load_params(c, workdir, checkpoint)
  print(f"scaling: {why}", flush=True)
  problems = startup.eval_problems(c)
  rewards_NCA, texts = sample_chains(
      c, params, problems, chains=max(budgets), temperature=temperature, seed=seed,
      batch_size=int(config.eval.batch_size), turn1_tokens=config.eval.max_turn1_tokens,
      turn2_tokens=config.eval.max_turn2_tokens)
  keys = [[[c.task.answer_key(y) for y in chain] for chain in per] for per in texts]
  table = scaling_table(rewards_NCA, keys, budgets)
  result = {"_meta": dict(checkpoint=why, task=config.task.name,
                          split=config.task.eval_split, n=len(problems), budgets=budgets,
                          temperature=temperature, seed=seed,
                          num_attempts=int(rewards_NCA.shape[2]),
                          wall_s=round(time.time() - start, 1),
                          tie_break="most votes; ties: the answer seen first"),
            **table}
  c.task.close()
  out = pathlib.Path(out) if out is not None else workdir / "eval"
  out.mkdir(parents=True, exist_ok=True)
  (out / "scaling.json").write_text(json.dumps(result, indent=1) + "\n")
  if plot:
    from score_jax import report  # pylint: disable=import-outside-toplevel
    report.plot_scaling(out / "scaling.png", result)
  for name, rows in table.items():
    print(f"{name:>9}: " + "  ".join(
        f"K={k} {100 * r['acc']:.1f}±{100 * r['acc_se']:.1f}"
        + (f" ({100 * r['vs_parallel']:+.1f}±{100 * r['vs_parallel_se']:.1f})"
           if "vs_parallel" in r else "") for k, r in rows.items()), flush=True)
  print(f"wrote {out / 'scaling.json'} ({result['_meta']['wall_s']} s)", flush=True)
  return result


def main(argv: list[str] | None = None) -> None:
  config, args = config_lib.parse(
      sys.argv[1:] if argv is None else argv, __doc__,
      extra=[("--checkpoint", dict(default="best", help="best | latest | a step | init")),
             ("--budgets", dict(default=",".join(map(str, DEFAULT_BUDGETS)),
                                help="samples per problem, comma-separated")),
             ("--temperature", dict(type=float, default=0.7)),
             ("--seed", dict(type=int, default=0)),
             ("--out", dict(default=None, help="output folder (default W/eval)"))])
  try:
    budgets = [int(k) for k in args.budgets.split(",") if k.strip()]
    run(config, args.workdir, checkpoint=args.checkpoint, budgets=budgets,
        temperature=args.temperature, seed=args.seed, out=args.out)
  except (ValueError, FileNotFoundError, task_base.MissingCapability) as e:
    config_lib.die(str(e))


if __name__ == "__main__":
  main()
