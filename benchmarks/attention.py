"""Attention kernels on a GPU: cuDNN's fused flash attention vs our reference, same inputs.

  JAX_PLATFORMS=cuda python benchmarks/attention.py       # anchor shapes, bf16, on a GPU
  python benchmarks/attention.py --smoke                  # CPU, tiny, "xla" stands in

Checks, then times, what `model.attention` chooses between (score_jax.model.layers):
- kernel: `dot_product_attention` (float32 scores materialised) against `fused_attention`
  (`jax.nn.dot_product_attention`, implementation "cudnn"; on a CPU "xla") on
  B x T x N x H queries with GQA, left padding and a causal mask: the largest difference of
  the outputs and of the q/k/v gradients over query rows that attend something (rows that
  attend nothing are padding and never reach a loss), and the median time of a jitted
  forward + backward;
- model: the logits of a 4-layer model built with attention "xla" vs the fused kernel, same
  params, left-padded rows: the largest difference over valid positions.
bf16 inputs: differences of a few 1e-3 relative are bf16 rounding of two summation orders.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import _common as common


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=1024)
  p.add_argument("--heads", type=int, default=32)
  p.add_argument("--kv-heads", type=int, default=8)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--reps", type=int, default=10)
  p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, 'xla' kernel")
  return p.parse_args(argv)


def _inputs(B, T, N, K, H, dtype, seed=0):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  q, k, v, g = (jnp.asarray(rng.normal(size=s), dtype)
                for s in ((B, T, N, H), (B, T, K, H), (B, T, K, H), (B, T, N, H)))
  pad_B = rng.integers(0, T // 2, B)               # left padding of each row
  slot = np.arange(T)
  valid_BS = slot[None, :] >= pad_B[:, None]
  mask_BTS = valid_BS[:, None, :] & (slot[None, None, :] <= slot[None, :, None])
  return q, k, v, g, jnp.asarray(mask_BTS), np.asarray(mask_BTS.any(-1))


def bench_kernel(args, impl: str) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from score_jax.model import layers  # pylint: disable=import-outside-toplevel
  dtype = jnp.float32 if args.smoke else jnp.bfloat16
  q, k, v, g, mask, rows_BT = _inputs(args.batch, args.seq, args.heads, args.kv_heads,
                                      args.head_dim, dtype)
  scale = args.head_dim ** -0.5
  fns = {"ours": lambda q, k, v: layers.dot_product_attention(q, k, v, mask, scale=scale),
         impl: lambda q, k, v: layers.fused_attention(q, k, v, mask, scale=scale,
                                                      implementation=impl)}
  w = jnp.asarray(rows_BT[:, :, None, None], dtype)
  out, calls = {}, {}
  for name, fn in fns.items():
    def fwd_bwd(q, k, v, fn=fn):
      y, vjp = jax.vjp(fn, q, k, v)
      return (y,) + vjp(g * w)
    jitted = jax.jit(fwd_bwd)
    out[name] = [np.asarray(x, np.float32) for x in jitted(q, k, v)]
    calls[name] = lambda jitted=jitted: jax.block_until_ready(jitted(q, k, v))
  diffs = {}
  for i, what in enumerate(("out", "dq", "dk", "dv")):
    a, b = out["ours"][i], out[impl][i]
    if what in ("out", "dq"):
      a, b = a[rows_BT], b[rows_BT]
    diffs[what] = {"max_abs": float(np.abs(a - b).max()),
                   "max_abs_ref": float(np.abs(a).max())}
  times = common.time_interleaved(calls, args.reps)
  return {"implementation": impl, "diffs": diffs,
          "fwd_bwd_ms": {k: 1000 * statistics.median(t) for k, t in times.items()}}


def check_model(args, impl: str) -> dict[str, Any]:
  if impl != "cudnn":   # the model has no setting for jax.nn's "xla" stand-in
    return {"skipped": "model check needs the cudnn kernel (a GPU)"}
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from score_jax.model import transformer as model_lib  # pylint: disable=import-outside-toplevel
  from score_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  config = ModelConfig(vocab_size=512, num_layers=4, embed_dim=256, hidden_dim=512,
                       num_heads=8, num_kv_heads=4, head_dim=64, dtype="bfloat16",
                       attention="xla")
  graphdef, params = model_lib.init_params(config, seed=0)
  fused_graphdef = model_lib.abstract_params(config.replace(attention="cudnn"))[0]
  rng = np.random.default_rng(1)
  B, T = 4, min(args.seq, 256)
  tokens = rng.integers(0, 512, (B, T)).astype(np.int32)
  valid = np.arange(T)[None, :] >= rng.integers(0, T // 2, B)[:, None]
  want = np.asarray(jax.jit(model_lib.forward)(graphdef, params, tokens, valid)[0])
  got = np.asarray(jax.jit(model_lib.forward)(fused_graphdef, params, tokens, valid)[0])
  return {"max_abs": float(np.abs(got - want)[valid].max()),
          "max_abs_ref": float(np.abs(want)[valid].max())}


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.smoke:
    args.batch, args.seq, args.heads, args.kv_heads, args.head_dim, args.reps = 2, 16, 4, 2, 8, 2
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # pylint: disable=import-outside-toplevel
  impl = "cudnn" if jax.default_backend() == "gpu" else "xla"
  t = time.perf_counter()
  kernel = bench_kernel(args, impl)
  model = check_model(args, impl)
  table = [("", "ours (f32 scores)", f"fused ({impl})")]
  ms = kernel["fwd_bwd_ms"]
  table.append(("fwd + bwd ms", common.fmt(ms["ours"], 2), common.fmt(ms[impl], 2)))
  for what, d in kernel["diffs"].items():
    table.append((f"max |diff| {what} (max |ours| {d['max_abs_ref']:.3g})", "",
                  f"{d['max_abs']:.3g}"))
  if "max_abs" in model:
    table.append((f"model logits max |diff| (max |logit| {model['max_abs_ref']:.3g})", "",
                  f"{model['max_abs']:.3g}"))
  common.print_table(
      f"attention B={args.batch} T={args.seq} N={args.heads} K={args.kv_heads} "
      f"H={args.head_dim}, left padding + causal; {jax.devices()[0]}", table)
  result = {"benchmark": "attention", "smoke": args.smoke, "shape": vars(args),
            "kernel": kernel, "model": model, "seconds": time.perf_counter() - t,
            "env": common.environment(None, None)}
  common.emit(result)
  return result


if __name__ == "__main__":
  main()
