"""Useful tokens/s of continuous batching (`score_jax.continuous`) against the fixed-batch
sampler (`score_jax.sampler.generate`) on a long-tailed length distribution.

  python benchmarks/continuous_sampler.py [--prompts 64] [--width 256] [--slots 16,32]

Random weights never stop by themselves, so every row gets a target length, drawn from a
long-tailed distribution (lognormal, median `width / 8`, sigma 1, clipped to [1, width]),
enforced by the samplers' own per-row limits (`max_new_tokens_B` / `limits_NA`); no stop
ids. Useful tokens = the sum of the targets (the tokens of rows not yet stopped), the same
for both. The fixed path decodes all prompts as one batch until its longest row ends; the
continuous path decodes `slots` rows at a time and refills a slot as soon as its row ends.
Both greedy, `--attempts` attempts (the second after the same 8-token instruction, on the
first attempt's KV cache), the same prompts, the same tokens (checked); each timed after a
warm-up call (compiles). The model: 4 layers, D 256, vocab 512, float32. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from score_jax import continuous  # noqa: E402
from score_jax import sampler as sampler_lib  # noqa: E402
from score_jax.model import transformer as model_lib  # noqa: E402
from score_jax.model.config import ModelConfig  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--prompts", type=int, default=64)
  p.add_argument("--prompt-len", type=int, default=32)
  p.add_argument("--width", type=int, default=256)
  p.add_argument("--slots", default="16,32")
  p.add_argument("--segment-steps", type=int, default=64)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--attempts", type=int, default=2, choices=(1, 2),
                 help="2: a second attempt after an instruction, on the first's KV cache")
  args = p.parse_args()
  config = ModelConfig(vocab_size=512, num_layers=4, embed_dim=256, hidden_dim=512,
                       num_heads=4, num_kv_heads=2, head_dim=64, dtype="float32")
  graphdef, params = model_lib.init_params(config, None, seed=0)
  rng = np.random.default_rng(args.seed)
  N, W = args.prompts, args.width
  A = args.attempts
  limits_NA = np.clip(np.round(rng.lognormal(np.log(W / 8), 1.0, (N, A))), 1, W).astype(np.int32)
  rows = [[int(t) for t in rng.integers(3, 500, args.prompt_len)] for _ in range(N)]
  tokens, valid, _ = sampler_lib.left_pad(rows, 0)
  instruction = [3, 7, 8, 9, 10, 11, 12, 13]       # the turn-2 context of every row
  extra, extra_valid, _ = sampler_lib.left_pad([instruction] * N, 0)
  useful = int(limits_NA.sum())
  greedy = sampler_lib.Greedy()

  def fixed():
    out = sampler_lib.generate(graphdef, params, tokens, valid, max_new_tokens=W, method=greedy,
                               max_new_tokens_B=limits_NA[:, 0],
                               max_cache_len=args.prompt_len + A * W + len(instruction))
    outs = [jax.tree.map(np.asarray, out.replace(cache=None))]
    if A == 2:
      out = sampler_lib.generate(graphdef, params, extra, extra_valid, max_new_tokens=W,
                                 method=greedy, max_new_tokens_B=limits_NA[:, 1],
                                 cache=out.cache)
      outs.append(jax.tree.map(np.asarray, out.replace(cache=None)))
    return np.concatenate([o.tokens_BS for o in outs], 1), np.stack([o.lengths_B for o in outs])

  def cont(slots):
    out = continuous.generate_continuous(graphdef, params, rows, widths=(W,) * A, method=greedy,
                                         slots=slots, segment_steps=args.segment_steps,
                                         chunk=32, limits_NA=limits_NA,
                                         extra_fn=lambda p, t, done: instruction)
    return (np.concatenate([a.tokens_BS for a in out.attempts], 1),
            np.stack([a.lengths_B for a in out.attempts]), out.stats)

  def timed(fn):
    fn()                                       # compile
    best = None
    for _ in range(args.repeats):
      start = time.perf_counter()
      result = fn()
      seconds = time.perf_counter() - start
      best = seconds if best is None else min(best, seconds)
    return best, result

  results = {"prompts": N, "width": W, "attempts": A, "useful_tokens": useful,
             "max_len": int(limits_NA.max()), "mean_len": float(limits_NA.mean()),
             "load_avg_1m": os.getloadavg()[0]}
  t_fixed, (ref_tokens, ref_lengths) = timed(fixed)
  # Row-steps: rows x decode steps the device ran (the work, whatever the load): the fixed
  # batch runs all N rows until each attempt's longest row ends.
  fixed_row_steps = N * int(limits_NA.max(axis=0).sum())
  results["fixed"] = {"seconds": t_fixed, "useful_tok_s": useful / t_fixed,
                      "row_steps": fixed_row_steps}
  print(f"fixed batch {N}: {t_fixed:.2f} s, {useful / t_fixed:.0f} useful tok/s", flush=True)
  for slots in [int(s) for s in args.slots.split(",")]:
    t, (tok, lengths, stats) = timed(lambda s=slots: cont(s))
    assert (lengths == ref_lengths).all() and (tok == ref_tokens).all(), "not the same tokens"
    results[f"continuous_{slots}"] = {"seconds": t, "useful_tok_s": useful / t,
                                      "speedup": t_fixed / t,
                                      "row_steps": slots * stats["decode_steps"], **stats}
    print(f"continuous {slots} slots: {t:.2f} s, {useful / t:.0f} useful tok/s, "
          f"{t_fixed / t:.2f}x, {stats}", flush=True)
  results["load_avg_1m_end"] = os.getloadavg()[0]
  print(json.dumps(results))


if __name__ == "__main__":
  main()
