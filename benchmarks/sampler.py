"""Sampling speed, ours vs transformers, same weights and workload in one run.

  python benchmarks/sampler.py                        # CPU workload (fp32, 1 JAX device)
  XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/sampler.py --workload anchor
  python benchmarks/sampler.py --smoke                # seconds: checks that it runs

Ours: `score_jax.sampler.generate` (jitted prefill + `lax.while_loop` decode), warm:
compilation is timed separately. Theirs: `transformers` `generate` with the dynamic KV
cache (`--static`: also the static cache + `torch.compile`). Both sample at temperature
1.0 with no top-k / top-p and run every row for exactly `new` tokens (no stop token on
our side; `min_new_tokens` on theirs, as shared/bench/hf_anchor.py does).

Figures (see benchmarks/README.md): new tokens/s = batch * new / seconds of one
generate call (prefill included); ms per new token = seconds / new; ms per decode
step and prefill ms from the difference between a `new`-token and a 1-token call;
the ratio ours / theirs of new tokens/s. On the anchor workload also the fraction of
the memory-bandwidth limit. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from typing import Any

import _common as common


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  common.add_common_flags(p)
  p.add_argument("--static", action="store_true",
                 help="also time transformers with a static cache + torch.compile")
  p.add_argument("--no-split", dest="split", action="store_false",
                 help="skip the 1-token calls that split prefill from decode")
  p.add_argument("--hbm-gbps", type=float, default=None,
                 help="device memory bandwidth in GB/s for the bandwidth fraction "
                      "(default on --workload anchor: measured by a JAX elementwise pass)")
  return p.parse_args(argv)


def _ours_fn(lm, tokens, S: int, counter) -> Any:
  """A call that samples S new tokens per row with our sampler and waits for them."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from score_jax import sampler as sampler_lib  # pylint: disable=import-outside-toplevel
  valid = np.ones(tokens.shape, bool)
  method = sampler_lib.Temperature(1.0)

  def call():
    out = sampler_lib.generate(lm.graphdef, lm.params, tokens, valid, max_new_tokens=S,
                               method=method, rng=jax.random.key(next(counter)),
                               stop_ids=(), pad_id=0)
    jax.block_until_ready(out)
    return out

  return call


def _theirs_fn(hf, ids, S: int, device: str, static_forward=None) -> Any:
  """A call of transformers generate for S new tokens per row (dynamic or static cache)."""
  import torch  # pylint: disable=import-outside-toplevel
  kw = dict(max_new_tokens=S, min_new_tokens=S, do_sample=True, temperature=1.0, top_k=0,
            top_p=1.0, pad_token_id=0, attention_mask=torch.ones_like(ids))
  if static_forward is not None:
    kw["cache_implementation"] = "static"

  def call():
    if static_forward is not None:
      hf.forward = static_forward            # instance attribute: only for this call
    try:
      with torch.no_grad():
        out = hf.generate(ids, **kw)
      common.sync(device)
    finally:
      if static_forward is not None:
        del hf.forward
    return out

  return call


def measure_hbm_bytes_per_s(smoke: bool) -> float:
  """Read+write bytes/s of a jitted `x * 2` over a bf16 array (2 GiB; 8 MiB with --smoke),
  like shared/bench/hf_anchor.py's elementwise pass."""
  import time  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jnp.ones((2**22 if smoke else 2**30,), jnp.bfloat16)
  f = jax.jit(lambda x: x * 2)
  f(x).block_until_ready()
  t = time.perf_counter()
  for _ in range(10):
    y = f(x)
  y.block_until_ready()
  return 2 * x.nbytes * 10 / (time.perf_counter() - t)


def bandwidth_limit(w: common.Workload, param_bytes: int, embed_bytes: int,
                    itemsize: int) -> dict[str, float]:
  """Bytes a decode step must read: every param but the embedding table (only B rows of
  it are gathered) plus the K and V cache over the mean context P + (S + 1) / 2."""
  head_dim = w.embed // w.heads
  mean_ctx = w.prompt + (w.new + 1) / 2
  kv = 2 * w.layers * w.batch * mean_ctx * w.kv_heads * head_dim * itemsize
  weights = param_bytes - embed_bytes + w.batch * w.embed * itemsize
  return {"param_bytes_per_step": weights, "kv_bytes_per_step_mean": kv,
          "bytes_per_step": weights + kv}


def summarize(times: list[float], times_1: list[float] | None, first: float,
              first_1: float | None, w: common.Workload, forwards_per_token: bool = False
              ) -> dict[str, Any]:
  """Figures of one side from its timed calls (S tokens, and 1 token if split).

  A call for S tokens costs prefill + (S - 1) decode steps, plus one more step when the
  side runs a forward after every sampled token (`forwards_per_token`: ours, whose loop
  body feeds the token it just drew, the last time needlessly). Either way
  step = (t(S) - t(1)) / (S - 1); prefill = t(1), less one step if `forwards_per_token`.
  """
  t = common.median(times)
  out = {"seconds": times, "median_s": t, "first_call_s": first,
         "compile_s": max(first - t, 0.0),
         "new_tokens_per_s": w.batch * w.new / t, "ms_per_new_token": 1000 * t / w.new}
  if times_1 is not None and w.new > 1:
    t1 = common.median(times_1)
    step = (t - t1) / (w.new - 1)
    ok = step > 0                  # not so when noise swamps a tiny (--smoke) workload
    out.update(seconds_1_token=times_1, median_1_token_s=t1, first_call_1_token_s=first_1,
               ms_per_decode_step=1000 * step if ok else None,
               prefill_ms=1000 * (t1 - step * forwards_per_token) if ok else None,
               decode_tokens_per_s=w.batch / step if ok else None)
  return out


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  s = common.setup(args)
  w, device, run_ours, run_theirs, hf, lm = (s.workload, s.device, s.run_ours, s.run_theirs,
                                             s.hf, s.lm)
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  tokens = np.random.default_rng(args.seed).integers(0, w.vocab, (w.batch, w.prompt),
                                                     dtype=np.int32)
  counter = itertools.count(1)
  fns, fns_1 = {}, {}
  if run_ours:
    fns["ours"] = _ours_fn(lm, tokens, w.new, counter)
    fns_1["ours"] = _ours_fn(lm, tokens, 1, counter)
  if run_theirs:
    ids = torch.as_tensor(tokens, dtype=torch.long, device=device)
    fns["theirs"] = _theirs_fn(hf, ids, w.new, device)
    fns_1["theirs"] = _theirs_fn(hf, ids, 1, device)
    if args.static:
      compiled = torch.compile(hf.forward)
      fns["theirs_static"] = _theirs_fn(hf, ids, w.new, device, compiled)
      fns_1["theirs_static"] = _theirs_fn(hf, ids, 1, device, compiled)

  # First calls (ours: trace + compile + run), then warm-up, then interleaved reps.
  first = {k: common.first_call(f) for k, f in fns.items()}
  first_1 = {k: common.first_call(f) for k, f in fns_1.items()} if args.split else {}
  for _ in range(args.warmup):
    for f in fns.values():
      f()
  check = {}
  if run_ours:
    out = fns["ours"]()
    check["ours_lengths_all_new"] = bool(np.all(np.asarray(out.lengths_B) == w.new))
  if run_theirs:
    out = fns["theirs"]()
    check["theirs_shape"] = list(out.shape)
    check["theirs_all_new"] = tuple(out.shape) == (w.batch, w.prompt + w.new)
  cpu: dict[str, list[float]] = {}
  times = common.time_interleaved(fns, args.reps, cpu)
  times_1 = common.time_interleaved(fns_1, args.reps) if args.split else {}

  sides = {k: summarize(times[k], times_1.get(k), first[k], first_1.get(k), w,
                       forwards_per_token=(k == "ours")) for k in fns}
  for k in fns:
    sides[k]["cpu_s"] = cpu[k]
    sides[k]["median_cpu_s"] = common.median(cpu[k])
  if run_theirs:
    sides["theirs"]["attn_implementation"] = hf.config._attn_implementation  # pylint: disable=protected-access
  result: dict[str, Any] = {
      "benchmark": "sampler", "workload": dataclasses.asdict(w), "smoke": args.smoke,
      "sampling": "temperature 1.0, no top-k/top-p, every row runs `new` tokens",
      "reps": args.reps, "warmup": args.warmup, "checks": check, **sides}
  if run_ours and run_theirs:
    result["ratio_ours_over_theirs"] = common.ratio(sides["ours"]["new_tokens_per_s"],
                                                    sides["theirs"]["new_tokens_per_s"])
    if args.static:
      result["ratio_ours_over_theirs_static"] = common.ratio(
          sides["ours"]["new_tokens_per_s"], sides["theirs_static"]["new_tokens_per_s"])
  if args.workload == "anchor" or args.hbm_gbps:
    result["bandwidth"] = _bandwidth(args, w, lm, hf, sides)
  result["env"] = common.environment(device if run_theirs else None, args.threads)
  _print(result, w)
  common.emit(result)
  return result


def _bandwidth(args, w, lm, hf, sides) -> dict[str, Any]:
  """Fraction of the memory-bandwidth limit reached by each side's decode steps."""
  if lm is not None:
    import jax  # pylint: disable=import-outside-toplevel
    leaves = jax.tree.leaves(lm.params)
    param_bytes = sum(x.nbytes for x in leaves)
    itemsize = leaves[0].dtype.itemsize
  else:
    param_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    itemsize = next(hf.parameters()).element_size()
  limit = bandwidth_limit(w, param_bytes, w.vocab * w.embed * itemsize, itemsize)
  if args.hbm_gbps:
    bw, source = args.hbm_gbps * 1e9, "--hbm-gbps"
  else:
    bw, source = measure_hbm_bytes_per_s(args.smoke), "measured: jitted x*2 read+write"
  limit.update(hbm_bytes_per_s=bw, hbm_source=source,
               limit_ms_per_step=1000 * limit["bytes_per_step"] / bw)
  for k, s in sides.items():
    step_ms = s.get("ms_per_decode_step") or s["ms_per_new_token"]
    limit[f"{k}_fraction_of_limit"] = limit["limit_ms_per_step"] / step_ms if step_ms > 0 else None
  return limit


def _print(result: dict[str, Any], w: common.Workload) -> None:
  rows = [("side", "new tok/s", "ms/new tok", "ms/decode step", "prefill ms", "compile s",
           "first call s", "CPU s/call")]
  for k in ("ours", "theirs", "theirs_static"):
    if k in result:
      s = result[k]
      rows.append((k, common.fmt(s["new_tokens_per_s"]), common.fmt(s["ms_per_new_token"], 2),
                   common.fmt(s.get("ms_per_decode_step"), 2), common.fmt(s.get("prefill_ms"), 1),
                   common.fmt(s["compile_s"], 2), common.fmt(s["first_call_s"], 2),
                   common.fmt(s["median_cpu_s"], 2)))
  env = result["env"]
  common.print_table(
      f"sampler, workload {w.name}: batch {w.batch}, {w.prompt} prompt + {w.new} new tokens, "
      f"{w.dtype}; jax {env.get('jax_device', '-')}, torch {env.get('torch_device', '-')}; "
      f"load avg {env['load_avg_1_5_15'][0]:.2f}", rows)
  if "ratio_ours_over_theirs" in result:
    print(f"ours / theirs new tokens/s: {result['ratio_ours_over_theirs']:.2f}x")
  if "bandwidth" in result:
    b = result["bandwidth"]
    fr = ", ".join(f"{k[:-len('_fraction_of_limit')]} {v:.1%}" for k, v in b.items()
                   if k.endswith("_fraction_of_limit") and v is not None)
    print(f"bandwidth limit {b['limit_ms_per_step']:.3f} ms/step "
          f"({b['bytes_per_step'] / 1e9:.2f} GB/step at {b['hbm_bytes_per_s'] / 1e9:.0f} GB/s); "
          f"fraction reached: {fr}")


if __name__ == "__main__":
  main()
