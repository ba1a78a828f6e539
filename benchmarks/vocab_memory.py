"""Peak host memory of a large-vocabulary RL step, with and without chunked log-probs.

    python benchmarks/vocab_memory.py                    # Gemma 3 270M shape, chunks 0,256,64
    python benchmarks/vocab_memory.py --chunks 0,128 --batch 2 --turn-tokens 128
    python benchmarks/vocab_memory.py --smoke            # seconds: checks that it runs

The workload of issue 16 item 4: one Stage I step (reference scoring, then the policy's
forward and backward, Adam) of a model with Gemma 3 270M's shapes (18 layers, D 640, 4 heads
of 256, 1 kv head, MLP 2048, 262,144-token vocabulary, tied embeddings; random weights,
which do not change memory) on `--batch` rows of a prompt plus two turns of
`--turn-tokens` tokens each, float32, on one CPU device. Each `train.logit_chunk` value runs
in a fresh process (`sys.executable`), which reports its peak resident memory
(`ru_maxrss`), XLA's temporary bytes for the compiled step, the step time (second call) and
the loss, so the rows can be checked to compute the same thing. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GEMMA3_270M = dict(vocab_size=262_144, num_layers=18, embed_dim=640, hidden_dim=2048,
                   num_heads=4, num_kv_heads=1, head_dim=256, sliding_window=512,
                   layer_pattern=("local",) * 5 + ("global",), query_pre_attn_scalar=256.0)
SMOKE = dict(vocab_size=4096, num_layers=2, embed_dim=64, hidden_dim=128, num_heads=2,
             num_kv_heads=1, head_dim=32, sliding_window=16, layer_pattern=("local", "global"),
             query_pre_attn_scalar=32.0)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--chunks", default="0,256,64", help="comma list of train.logit_chunk values")
  p.add_argument("--batch", type=int, default=2, help="rollouts in the step")
  p.add_argument("--prompt-tokens", type=int, default=64)
  p.add_argument("--turn-tokens", type=int, default=128, help="tokens of each attempt")
  p.add_argument("--smoke", action="store_true", help="a tiny model (no real figures)")
  p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def child(args) -> dict:
  """One step with logit_chunk = args.child, in this (fresh) process."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  from score_jax.model import transformer as model_lib  # pylint: disable=import-outside-toplevel
  from score_jax.model.config import tiny  # pylint: disable=import-outside-toplevel
  from score_jax.rl import losses  # pylint: disable=import-outside-toplevel
  from score_jax.rl import step as step_lib  # pylint: disable=import-outside-toplevel
  from score_jax.rl.episode import from_masks  # pylint: disable=import-outside-toplevel

  config = tiny("gemma3", **(SMOKE if args.smoke else GEMMA3_270M))
  graphdef, params = model_lib.init_params(config, None, seed=0)
  ref = jax.tree.map(lambda x: x * 1.01, params)   # the KL terms are not 0
  optimizer = step_lib.build_optimizer(dict(name="adam", lr=1e-6, b1=0.9, b2=0.999, eps=1e-8,
                                            weight_decay=0.0, clip_norm=1.0))
  opt_state = optimizer.init(params)
  B, P, L = args.batch, args.prompt_tokens, args.turn_tokens
  T = P + 2 * L
  rng = np.random.default_rng(0)
  t1, t2 = np.zeros((B, T), bool), np.zeros((B, T), bool)
  t1[:, P:P + L] = True
  t2[:, P + L:] = True
  episode = from_masks(rng.integers(0, config.vocab_size, (B, T)).astype(np.int32),
                       np.ones((B, T), bool), [t1, t2],
                       [np.zeros(B, np.float32), (np.arange(B) % 2).astype(np.float32)])
  cfg = losses.LossConfig(stage="stage1", baseline="batch_mean", samples_per_prompt=1)
  step = step_lib.make_rl_step(graphdef, optimizer, cfg, 1, logit_chunk=args.child)
  compiled = step.lower(params, opt_state, ref, episode).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  params, opt_state, metrics = compiled(params, opt_state, ref, episode)   # donates both
  first_loss = float(jax.block_until_ready(metrics)["loss"])
  start = time.perf_counter()
  _, _, metrics = compiled(params, opt_state, ref, episode)
  loss = float(jax.block_until_ready(metrics)["loss"])
  return {"logit_chunk": args.child, "step_s": round(time.perf_counter() - start, 2),
          "xla_temp_gb": round(temp / 1e9, 3), "loss": first_loss, "loss_step2": loss,
          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
          "rows": B, "tokens_per_row": T, "vocab": config.vocab_size}


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.child is not None:
    print(json.dumps(child(args)))
    return
  rows = []
  for chunk in [int(c) for c in args.chunks.split(",")]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(chunk), "--batch",
           str(args.batch), "--prompt-tokens", str(args.prompt_tokens), "--turn-tokens",
           str(args.turn_tokens)] + (["--smoke"] if args.smoke else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
      raise SystemExit(f"logit_chunk={chunk} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append(row)
    print(f"logit_chunk={chunk:>4}: peak RSS {row['peak_rss_gb']} GB, XLA temporaries "
          f"{row['xla_temp_gb']} GB, step {row['step_s']} s, loss {row['loss']:.6f}",
          flush=True)
  base = rows[0]["peak_rss_gb"]
  print(json.dumps({"benchmark": "vocab_memory", "load_avg_1m": os.getloadavg()[0],
                    "runs": rows, "peak_ratio_to_first": [round(r["peak_rss_gb"] / base, 3)
                                                          for r in rows]}))


if __name__ == "__main__":
  main()
