"""Gradient variance of Stage II with and without the shaping baseline (`rl.shaping_baseline`).

  python benchmarks/shaping_variance.py --base runs/demo/seed_0/base     # the demo's base model
  python benchmarks/shaping_variance.py --smoke                          # seconds: checks it runs

Stage II's turn-2 reward is r2 + alpha (r2 - r1). With per-turn credit the -alpha r1 part is
fixed before y2 is sampled: its expected gradient is zero and it only adds noise.
`shaping_baseline=True` removes it. Here both objectives score the SAME rollouts (paired):
`--batches` independent Stage II rollout batches of the demo config at fixed weights; for
each, the gradient of the Stage II loss (one jitted step, nothing applied) with the flag off
and on. Reported per setting: the mean gradient's norm, the total variance over batches
(mean squared distance of a batch's gradient to the mean gradient, summed over weights)
and its ratio on / off; also the turn-2 part alone (the y1 tokens' gradient is the same).
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_jax import build as build_lib
from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import sampler as sampler_lib
from score_jax.rl import step as step_lib
from score_jax import train as train_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# An "optimiser" that returns the gradient as its state and never moves the params.
KEEP_GRADS = optax.GradientTransformation(
    lambda params: jax.tree.map(jnp.zeros_like, params),
    lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=str(CONFIGS / "demo.py"))
  parser.add_argument("--base", help="a run directory whose checkpoints/ hold the base model "
                                     "(default: the config's random initial weights)")
  parser.add_argument("--batches", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--smoke", action="store_true")
  args, overrides = parser.parse_known_args(argv)
  if args.smoke:
    args.config, args.batches = str(CONFIGS / "tiny.py"), 3
  config = config_lib.load(args.config, overrides)
  c = build_lib.build(config)
  params = c.base_params
  if args.base:
    params, _, step = checkpoint_lib.restore_params(f"{args.base}/checkpoints", params)
    print(f"base model: step {step} of {args.base}", flush=True)
  two_turn = c.two_turn(config.rollout.max_turn1_tokens, config.rollout.max_turn2_tokens)
  r = config.rollout
  method = sampler_lib.sampling_method(float(r.temperature), int(r.top_k), float(r.top_p))
  k, prompts = int(r.samples_per_prompt), int(config.train.batch_size)
  problems = c.task.load(config.task.train_split)
  rng = np.random.default_rng(args.seed)
  steps = {flag: step_lib.make_rl_step(
      c.graphdef, KEEP_GRADS, train_lib.loss_config(config, "stage2").replace(
          shaping_baseline=flag)) for flag in (False, True)}
  grads: dict[bool, list[np.ndarray]] = {False: [], True: []}
  turn2: dict[bool, list[np.ndarray]] = {False: [], True: []}
  for i in range(args.batches):
    batch = [problems[j] for j in rng.choice(len(problems), prompts, replace=False)
             for _ in range(k)]
    result = two_turn.rollout(params, params, batch, method=method,
                              rng=jax.random.key(args.seed * 100_000 + i))
    episode = result.episode
    only_t2 = episode.without_attempt(1)
    for flag, step in steps.items():
      for table, ep in ((grads, episode), (turn2, only_t2)):
        # The step donates its params and state: give it copies (the reference is `params`).
        _, g, _ = step(jax.tree.map(jnp.copy, params), KEEP_GRADS.init(params), params, ep)
        table[flag].append(_flat(g))
  out = {"config": args.config, "base": args.base, "batches": args.batches,
         "rows_per_batch": prompts * k, "seed": args.seed}
  for name, table in (("all", grads), ("turn2", turn2)):
    for flag in (False, True):
      g = np.stack(table[flag])
      mean = g.mean(axis=0)
      out[f"{name}_{'on' if flag else 'off'}"] = {
          "mean_grad_norm": float(np.linalg.norm(mean)),
          "total_variance": float(np.mean(np.sum((g - mean) ** 2, axis=1)))}
    out[f"{name}_variance_ratio_on_off"] = (out[f"{name}_on"]["total_variance"]
                                            / max(out[f"{name}_off"]["total_variance"], 1e-30))
  for name in ("all", "turn2"):
    print(f"{name}: variance off {out[name + '_off']['total_variance']:.4g}, on "
          f"{out[name + '_on']['total_variance']:.4g} (ratio "
          f"{out[name + '_variance_ratio_on_off']:.3f}); mean grad norm off "
          f"{out[name + '_off']['mean_grad_norm']:.4g}, on "
          f"{out[name + '_on']['mean_grad_norm']:.4g}", flush=True)
  print(json.dumps(out), flush=True)
  c.task.close()
  return out


if __name__ == "__main__":
  main(sys.argv[1:])
