"""Device memory and step time of the train step with and without remat; the sampling reshard.

  python benchmarks/memory.py                       # 8 layers, D=512, RL step on 8 x 512 tokens
  python benchmarks/memory.py --remat none,full --step sft --reps 3
  python benchmarks/memory.py --smoke               # seconds: checks that it runs
  JAX_PLATFORMS=cuda python benchmarks/memory.py --anchor --devices 1 --dtype bfloat16

What is measured, for each remat policy (config.model.remat: none | full | dots):
- memory per device of the jitted step (`make_rl_step` or `make_sft_step`, params and
  optimiser state donated), from XLA's buffer assignment (`compiled.memory_analysis()`):
  arguments + outputs - aliased (donated) + temporaries (the JSON also has XLA's
  `peak_memory_in_bytes`, which on the CPU backend counts little more than the arguments).
  On a GPU/TPU the JSON also has the allocator's peak (`device.memory_stats()`) over the
  whole run (CPU devices report none);
- step time: median of `--reps` steps after one compiling call and `--warmup` more, the
  policies' steps interleaved (none, full, dots, none, ...) so that load changes on a
  shared machine hit them alike; ratios to the first policy.
Then the reshard of the params from the training layout (FSDP over all devices) to the
sampling layout (replicated over fsdp, score_jax.reshard; what the trainer does once per
step with `config.mesh.sampling_fsdp=False`): median seconds and bytes per device; and,
unless `--no-decode`, greedy decode time from either layout.

CPU figures are relative (2 shared cores run 8 virtual devices); compare rows of one run.
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from typing import Any

import _common as common


@dataclasses.dataclass(frozen=True)
class Shape:
  layers: int = 8
  embed: int = 512
  heads: int = 8
  kv_heads: int = 4
  head_dim: int = 64
  mlp: int = 2048
  vocab: int = 4096
  batch: int = 8
  seq: int = 512
  decode_batch: int = 8
  decode_prompt: int = 64
  decode_new: int = 32


# The 0.85B Llama of shared/bench/hf_anchor.py (benchmarks/_common.py's "anchor" workload)
# at its training shape; decode from its sampler prompt, 64 new tokens. A GPU / TPU workload.
_A = common.WORKLOADS["anchor"]
ANCHOR = Shape(layers=_A.layers, embed=_A.embed, heads=_A.heads, kv_heads=_A.kv_heads,
               head_dim=_A.embed // _A.heads, mlp=_A.mlp, vocab=_A.vocab, batch=_A.train_batch,
               seq=_A.train_seq, decode_batch=_A.batch, decode_prompt=_A.prompt, decode_new=64)

SMOKE = Shape(layers=2, embed=64, heads=4, kv_heads=2, head_dim=16, mlp=128, vocab=256,
              batch=8, seq=32, decode_batch=8, decode_prompt=8, decode_new=4)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--remat", default="none,full,dots", help="comma list of remat policies")
  p.add_argument("--step", choices=("rl", "sft"), default="rl",
                 help="rl: make_rl_step (reference forward + policy forward/backward); "
                      "sft: make_sft_step")
  p.add_argument("--micro-batches", type=int, default=1, help="gradient accumulation")
  p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute dtype")
  p.add_argument("--devices", type=int, default=8,
                 help="CPU devices (sets JAX_NUM_CPU_DEVICES when JAX runs on the CPU)")
  p.add_argument("--layers", type=int, default=Shape.layers)
  p.add_argument("--embed", type=int, default=Shape.embed)
  p.add_argument("--batch", type=int, default=Shape.batch)
  p.add_argument("--seq", type=int, default=Shape.seq)
  p.add_argument("--reps", type=int, default=3, help="timed steps per policy")
  p.add_argument("--warmup", type=int, default=0, help="untimed steps after the first")
  p.add_argument("--no-decode", action="store_true", help="skip the decode comparison")
  p.add_argument("--anchor", action="store_true",
                 help="the 0.85B anchor model (16 layers, D 2048) at batch 8 x 1024: a GPU "
                      "workload; --layers/--embed/--batch/--seq then do not apply")
  p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 rep (no real figures)")
  return p.parse_args(argv)


def setup_env(args) -> None:
  """CPU JAX with `--devices` devices unless another platform is asked for (before import)."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if os.environ["JAX_PLATFORMS"] == "cpu":
    os.environ["JAX_NUM_CPU_DEVICES"] = str(args.devices)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(flags)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def model_config(shape: Shape, args):
  from score_jax.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  return ModelConfig(vocab_size=shape.vocab, num_layers=shape.layers, embed_dim=shape.embed,
                     hidden_dim=shape.mlp, num_heads=shape.heads, num_kv_heads=shape.kv_heads,
                     head_dim=shape.head_dim, dtype=args.dtype, param_dtype=args.param_dtype,
                     tie_embeddings=True)


def make_batch(shape: Shape, seed: int = 0) -> Any:
  """A two-turn batch: y1 = positions [T/4, T/2), y2 = [5T/8, T), binary rewards."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  B, T = shape.batch, shape.seq
  t1 = np.zeros((B, T), bool)
  t1[:, T // 4:T // 2] = True
  t2 = np.zeros((B, T), bool)
  t2[:, 5 * T // 8:] = True
  from score_jax.rl.episode import from_masks  # pylint: disable=import-outside-toplevel
  return from_masks(rng.integers(0, shape.vocab, (B, T)).astype(np.int32),
                    np.ones((B, T), bool), [t1, t2],
                    [rng.integers(0, 2, B).astype(np.float32),
                     rng.integers(0, 2, B).astype(np.float32)])


def step_memory(compiled) -> dict[str, int]:
  """Per-device bytes from XLA's buffer assignment of a compiled step."""
  m = compiled.memory_analysis()
  if m is None:
    return {}
  out = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
         "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes}
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  out["xla_peak"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
  return out


def allocator_peak(jax) -> int | None:
  stats = [d.memory_stats() for d in jax.local_devices()]
  if any(s is None for s in stats):
    return None
  return max(int(s.get("peak_bytes_in_use", 0)) for s in stats)


def build_step(shape: Shape, args, remat: str) -> tuple[Any, dict[str, Any]]:
  """Compiles one train step with `remat`; returns (call running one step, its row)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from score_jax import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from score_jax import multihost  # pylint: disable=import-outside-toplevel
  from score_jax.model import transformer as model_lib  # pylint: disable=import-outside-toplevel
  from score_jax.rl import losses  # pylint: disable=import-outside-toplevel
  from score_jax.rl import step as step_lib  # pylint: disable=import-outside-toplevel

  config = model_config(shape, args).replace(remat=remat)
  mesh = mesh_lib.make_mesh(fsdp=-1)
  graphdef, params = model_lib.init_params(config, mesh, seed=0)
  optimizer = step_lib.build_optimizer(dict(name="adam", lr=1e-5, b1=0.9, b2=0.999, eps=1e-8,
                                            weight_decay=0.0, clip_norm=1.0))
  opt_state = step_lib.replicate_unsharded(optimizer.init(params), mesh)
  shardings = step_lib.step_shardings(optimizer, params, mesh)
  if args.step == "rl":
    # The figures in benchmarks/README.md were measured with the KL as a k3 loss term.
    cfg = losses.LossConfig(stage="stage2", baseline="batch_mean", samples_per_prompt=1,
                            kl_estimator="k3", kl_mode="loss")
    step = step_lib.make_rl_step(graphdef, optimizer, cfg, args.micro_batches, shardings)
    ref = jax.tree.map(jnp.copy, params)
  else:
    step = step_lib.make_sft_step(graphdef, optimizer, args.micro_batches, shardings)
    ref = None
  batch = jax.tree.map(lambda x: multihost.put_batch(x, mesh), make_batch(shape))
  t = time.perf_counter()
  compiled = step.lower(params, opt_state, ref, batch).compile()
  compile_s = time.perf_counter() - t
  state = {"params": params, "opt_state": opt_state, "loss": None}

  def run():
    state["params"], state["opt_state"], out = compiled(state["params"], state["opt_state"],
                                                        ref, batch)
    state["loss"] = float(jax.block_until_ready(out)["loss"])

  run()
  for _ in range(args.warmup):
    run()
  row = {"remat": remat, "compile_s": compile_s, "memory": step_memory(compiled),
         "params_bytes_per_device": sum(
             x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state["params"]))}
  return run, row


def bench_steps(shape: Shape, args) -> list[dict[str, Any]]:
  """Every remat policy's step, timed interleaved (a change in machine load hits all)."""
  import jax  # pylint: disable=import-outside-toplevel
  calls, rows = {}, []
  for remat in args.remat.split(","):
    calls[remat], row = build_step(shape, args, remat)
    rows.append(row)
  times = common.time_interleaved(calls, args.reps)
  tokens = shape.batch * shape.seq
  for row in rows:
    row["step_s"] = statistics.median(times[row["remat"]])
    row["step_s_all"] = times[row["remat"]]
    row["tokens_per_s"] = tokens / row["step_s"]
  # On a GPU / TPU: the allocator's peak over all of the above (every policy's state was
  # live at once, so this bounds the sum, not one policy).
  rows[0]["allocator_peak_all"] = allocator_peak(jax)
  return rows


def bench_reshard(shape: Shape, args) -> dict[str, Any]:
  """Training -> sampling layout reshard time, bytes, and decode time from each layout."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from score_jax import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from score_jax.model import transformer as model_lib  # pylint: disable=import-outside-toplevel
  from score_jax import reshard  # pylint: disable=import-outside-toplevel
  from score_jax import sampler as sampler_lib  # pylint: disable=import-outside-toplevel

  config = model_config(shape, args)
  mesh = mesh_lib.make_mesh(fsdp=-1)
  graphdef, params = model_lib.init_params(config, mesh, seed=0)
  sampling = reshard.SamplingParams(fsdp=False)
  sampling.get("policy", params)               # compiles the reshard
  first_s = sampling.release()
  times = []
  for _ in range(max(args.reps, 3)):
    copy = sampling.get("policy", params)
    times.append(sampling.release())
  per_device = lambda tree: sum(  # noqa: E731
      x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))
  out = {"first_s": first_s, "median_s": statistics.median(times),
         "train_bytes_per_device": per_device(params),
         "sampling_bytes_per_device": per_device(copy)}
  if not args.no_decode:
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, shape.vocab, (shape.decode_batch, shape.decode_prompt))
    valid = np.ones(prompt.shape, bool)
    for name, p in (("decode_fsdp_s", params), ("decode_sampling_s", copy)):
      def run(p=p):
        out_ = sampler_lib.generate(graphdef, p, prompt, valid, max_new_tokens=shape.decode_new,
                                    method=sampler_lib.Greedy())
        jax.block_until_ready(out_.tokens_BS)
      run()
      reps = []
      for _ in range(max(args.reps, 3)):
        t = time.perf_counter()
        run()
        reps.append(time.perf_counter() - t)
      out[name] = statistics.median(reps)
  return out


def mib(x: int | None) -> str:
  return "-" if x is None else f"{x / 2**20:,.1f}"


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.smoke:
    shape = SMOKE
  elif args.anchor:
    shape = ANCHOR
  else:
    shape = dataclasses.replace(Shape(), layers=args.layers, embed=args.embed,
                                batch=args.batch, seq=args.seq)
  if args.smoke:
    args.reps, args.warmup = 1, 0
  setup_env(args)
  import jax  # pylint: disable=import-outside-toplevel
  if shape.batch % jax.device_count():
    sys.exit(f"error: --batch {shape.batch} must be divisible by the {jax.device_count()} "
             f"devices (the batch is sharded over all of them)")
  rows = bench_steps(shape, args)
  base = rows[0]
  table = [("remat", "step s", f"time / {base['remat']}", "tokens/s", "compile s", "args MiB",
            "out MiB", "alias MiB", "temp MiB", "total MiB", f"total / {base['remat']}")]
  for r in rows:
    m = r["memory"]
    table.append((r["remat"], common.fmt(r["step_s"], 2),
                  common.fmt(common.ratio(r["step_s"], base["step_s"]), 2),
                  common.fmt(r["tokens_per_s"], 0), common.fmt(r["compile_s"], 1),
                  mib(m.get("argument")), mib(m.get("output")), mib(m.get("alias")),
                  mib(m.get("temp")), mib(m.get("total")),
                  common.fmt(common.ratio(m.get("total"), base["memory"].get("total")), 2)))
  common.print_table(
      f"{args.step} step, {shape.layers} layers, D={shape.embed}, batch {shape.batch} x "
      f"{shape.seq}, params {args.param_dtype}, compute {args.dtype}, micro-batches "
      f"{args.micro_batches}; memory per device over {jax.device_count()} devices "
      f"(params FSDP-sharded)", table)
  rs = bench_reshard(shape, args)
  table = [("", "value")]
  table.append(("reshard train -> sampling, first call s", common.fmt(rs["first_s"], 3)))
  table.append(("reshard train -> sampling, median s", common.fmt(rs["median_s"], 4)))
  table.append(("params MiB/device, training layout", mib(rs["train_bytes_per_device"])))
  table.append(("params MiB/device, sampling layout", mib(rs["sampling_bytes_per_device"])))
  if "decode_fsdp_s" in rs:
    table.append((f"greedy decode {shape.decode_batch} x {shape.decode_new} from FSDP params s",
                  common.fmt(rs["decode_fsdp_s"], 3)))
    table.append((f"greedy decode {shape.decode_batch} x {shape.decode_new} from sampling "
                  f"copy s", common.fmt(rs["decode_sampling_s"], 3)))
  common.print_table("Sampling layout (score_jax.reshard)", table)
  result = {"benchmark": "memory", "shape": dataclasses.asdict(shape), "step": args.step,
            "param_dtype": args.param_dtype, "dtype": args.dtype,
            "micro_batches": args.micro_batches, "smoke": args.smoke, "steps": rows,
            "reshard": rs, "env": common.environment(None, None)}
  common.emit(result)
  return result


if __name__ == "__main__":
  main()
