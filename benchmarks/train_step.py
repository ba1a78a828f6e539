"""Training-step speed, ours vs transformers, same weights and batch in one run.

  python benchmarks/train_step.py                     # CPU workload: 8 x 128 tokens, fp32
  python benchmarks/train_step.py --step rl           # the RL step instead of the SFT step
  XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/train_step.py --workload anchor
  python benchmarks/train_step.py --smoke             # seconds: checks that it runs

One optimizer step = forward + backward + AdamW update over `train_batch x train_seq`
tokens. Ours (`--step sft`, default): `score_jax.rl.step.make_sft_step` (masked mean
NLL over every predicted token), jitted, params and optimizer state donated; compilation
is timed separately. Ours (`--step rl`): `make_rl_step` on a two-turn batch (prompt,
y1, instruction, y2 in one row; turn masks on y1 and y2; Stage II loss, batch-mean
baseline, k3 KL as a loss): a no-grad forward of the frozen reference plus the policy
forward + backward. Theirs: the same work in PyTorch on `transformers`'
LlamaForCausalLM: `model(input_ids, labels).loss` (sft) or a reference forward under
`no_grad` plus a REINFORCE + k3-KL loss over the same masks (rl), `backward`,
`torch.optim.AdamW` (fused where torch has it). Both: lr 1e-5, betas (0.9, 0.999),
eps 1e-8, weight decay 0.01, no gradient clipping.

Figures: tokens/s = batch * seq / median step seconds, the ratio ours / theirs, and on
the anchor workload MFU = 6 * params * tokens/s / peak FLOP/s (`--peak-tflops`). The
last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import _common as common

LR, BETAS, EPS, WEIGHT_DECAY = 1e-5, (0.9, 0.999), 1e-8, 0.01


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  common.add_common_flags(p)
  p.add_argument("--step", choices=("sft", "rl"), default="sft",
                 help="sft: make_sft_step; rl: make_rl_step on a two-turn batch")
  p.add_argument("--peak-tflops", type=float, default=None,
                 help="peak dense FLOP/s (TFLOP/s) for MFU (default 989, H100/H200 bf16, "
                      "on --workload anchor; no MFU on the CPU workload unless given)")
  p.add_argument("--also-xla-attention", action="store_true",
                 help="also time our step with model.attention='xla' (side ours_xla), e.g. "
                      "to compare with cuDNN's fused attention that 'auto' picks on a GPU")
  return p.parse_args(argv)


def make_batch(w: common.Workload, seed: int) -> Any:
  """A two-turn batch (numpy): row = [prompt | y1 | instruction | y2] in quarters/eighths.

  attempt 1 covers y1 = [T/4, T/2), attempt 2 covers y2 = [5T/8, T); for sft attempt 1
  is every position but the first (every predicted token, as `labels=ids`).
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  B, T = w.train_batch, w.train_seq
  tokens = rng.integers(0, w.vocab, (B, T), dtype=np.int32)
  t1 = np.zeros((B, T), bool)
  t1[:, T // 4:T // 2] = True
  t2 = np.zeros((B, T), bool)
  t2[:, 5 * T // 8:] = True
  from score_jax.rl.episode import from_masks  # pylint: disable=import-outside-toplevel
  return from_masks(tokens, np.ones((B, T), bool), [t1, t2],
                    [rng.integers(0, 2, B).astype(np.float32),
                     rng.integers(0, 2, B).astype(np.float32)])


def ours_step(lm, batch_np: Any, kind: str,
              attention: str | None = None) -> tuple[Any, dict[str, float]]:
  """A call that runs one of our jitted steps (state threaded through the donations);
  `attention` replaces the model's `attention` kernel choice."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from score_jax.rl import losses  # pylint: disable=import-outside-toplevel
  from score_jax.rl import step as ts  # pylint: disable=import-outside-toplevel
  opt = ts.build_optimizer(dict(name="adamw", lr=LR, b1=BETAS[0], b2=BETAS[1], eps=EPS,
                                weight_decay=WEIGHT_DECAY, clip_norm=0.0))
  from score_jax.model import transformer as model_lib  # pylint: disable=import-outside-toplevel
  graphdef, params = lm.graphdef, lm.params
  if attention is not None:     # a second side: its own params (each side donates its own)
    graphdef = model_lib.abstract_params(lm.config.replace(attention=attention))[0]
    params = jax.tree.map(jnp.copy, lm.params)
  batch = batch_np
  if kind == "sft":
    step = ts.make_sft_step(graphdef, opt)
    every_predicted_BT = np.ones_like(batch.valid_BT)
    every_predicted_BT[:, 0] = False
    batch = batch._replace(attempt_BT=every_predicted_BT.astype(np.int32))   # all attempt 1
    ref = None
  else:
    cfg = losses.LossConfig(stage="stage2", baseline="batch_mean", kl_estimator="k3",
                            kl_mode="loss")
    step = ts.make_rl_step(graphdef, opt, cfg)
    ref = jax.tree.map(jnp.copy, params)             # own buffers: params are donated
  device = jax.tree.leaves(params)[0].sharding
  batch = jax.tree.map(lambda v: jax.device_put(v, device), batch)
  # opt.init leaves its scalars (step count, learning rate) uncommitted while the step
  # returns them committed: without this put, the second call compiles the step again.
  state = {"params": params, "opt": jax.device_put(opt.init(params), device),
           "losses": []}

  def call():
    params, opt_state, metrics = step(state["params"], state["opt"], ref, batch)
    jax.block_until_ready((params, opt_state, metrics))
    state["params"], state["opt"] = params, opt_state
    state["losses"].append(float(metrics["loss"]))

  return call, state


def theirs_step(hf, batch_np: Any, kind: str, device: str) -> tuple[Any, dict]:
  """A call that runs one transformers forward + backward + AdamW step."""
  import copy  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  hf.train()
  try:
    opt = torch.optim.AdamW(hf.parameters(), lr=LR, betas=BETAS, eps=EPS,
                            weight_decay=WEIGHT_DECAY, fused=True)
    fused = True
  except (RuntimeError, TypeError):
    opt = torch.optim.AdamW(hf.parameters(), lr=LR, betas=BETAS, eps=EPS,
                            weight_decay=WEIGHT_DECAY)
    fused = False
  t = {k: torch.as_tensor(v, device=device) for k, v in batch_np._asdict().items()}
  ids = t["tokens_BT"].long()
  ref = copy.deepcopy(hf).eval() if kind == "rl" else None
  state = {"losses": [], "fused_adamw": fused}

  def token_logp(logits, ids):
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    return torch.nn.functional.pad(
        logp.gather(-1, ids[:, 1:, None])[..., 0], (1, 0))

  def rl_loss(logits):
    with torch.no_grad():
      ref_logp = token_logp(ref(input_ids=ids).logits, ids)
    logp = token_logp(logits, ids)
    r1, r2 = t["rewards_BA"][:, 0], t["rewards_BA"][:, 1]
    r2 = r2 + 10.0 * (r2 - r1)                               # Stage II shaping, alpha 10
    loss = 0.0
    for mask, r in ((t["attempt_BT"] == 1, r1), (t["attempt_BT"] == 2, r2)):
      m = mask.float()
      adv = (r - r.mean())[:, None]
      d = ref_logp - logp
      k3 = torch.exp(d) - d - 1
      loss = loss + (-(adv * logp) * m).sum() / m.sum() + 0.01 * (k3 * m).sum() / m.sum()
    return loss

  def call():
    if kind == "sft":
      loss = hf(input_ids=ids, labels=ids).loss
    else:
      loss = rl_loss(hf(input_ids=ids).logits)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    common.sync(device)
    state["losses"].append(float(loss.detach()))

  return call, state


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  s = common.setup(args)
  w, device, run_ours, run_theirs, hf, lm = (s.workload, s.device, s.run_ours, s.run_theirs,
                                             s.hf, s.lm)
  if hf is not None:
    n_params = sum(p.numel() for p in hf.parameters())
  else:
    import jax  # pylint: disable=import-outside-toplevel
    n_params = sum(x.size for x in jax.tree.leaves(lm.params))
  batch = make_batch(w, args.seed)
  fns, states = {}, {}
  if run_ours:
    fns["ours"], states["ours"] = ours_step(lm, batch, args.step)
  if run_ours and args.also_xla_attention:
    fns["ours_xla"], states["ours_xla"] = ours_step(
        lm, batch, args.step, attention="xla")
  if run_theirs:
    fns["theirs"], states["theirs"] = theirs_step(hf, batch, args.step, device)

  first = {k: common.first_call(f) for k, f in fns.items()}
  for _ in range(args.warmup):
    for f in fns.values():
      f()
  cpu: dict[str, list[float]] = {}
  times = common.time_interleaved(fns, args.reps, cpu)

  tokens = w.train_batch * w.train_seq
  peak = args.peak_tflops or (989.0 if args.workload == "anchor" else None)
  sides = {}
  for k in fns:
    t = common.median(times[k])
    s = {"seconds": times[k], "median_s": t, "ms_per_step": 1000 * t,
         "first_call_s": first[k], "compile_s": max(first[k] - t, 0.0),
         "tokens_per_s": tokens / t, "first_loss": states[k]["losses"][0],
         "cpu_s": cpu[k], "median_cpu_s": common.median(cpu[k])}
    if peak:
      flops = 6 * n_params * tokens
      attn = 12 * w.layers * w.embed * w.train_seq * tokens       # as hf_anchor.py counts
      s.update(mfu_6N=flops / t / (peak * 1e12),
               mfu_6N_plus_attention=(flops + attn) / t / (peak * 1e12))
    sides[k] = s
  if run_theirs:
    sides["theirs"]["fused_adamw"] = states["theirs"]["fused_adamw"]
    sides["theirs"]["attn_implementation"] = hf.config._attn_implementation  # pylint: disable=protected-access
  result: dict[str, Any] = {
      "benchmark": "train_step", "step": args.step, "workload": dataclasses.asdict(w),
      "smoke": args.smoke, "params": n_params, "tokens_per_step": tokens,
      "optimizer": f"AdamW lr {LR} betas {BETAS} eps {EPS} wd {WEIGHT_DECAY}, no clipping",
      "peak_tflops": peak, "reps": args.reps, "warmup": args.warmup, **sides}
  if run_ours and run_theirs:
    result["ratio_ours_over_theirs"] = common.ratio(sides["ours"]["tokens_per_s"],
                                                    sides["theirs"]["tokens_per_s"])
  if "ours_xla" in sides:
    from score_jax.model import layers  # pylint: disable=import-outside-toplevel
    result["attention_ours"] = ("cudnn" if layers.use_cudnn_attention(lm.config) else "xla")
    if run_theirs:
      result["ratio_ours_xla_over_theirs"] = common.ratio(sides["ours_xla"]["tokens_per_s"],
                                                          sides["theirs"]["tokens_per_s"])
  result["env"] = common.environment(device if run_theirs else None, args.threads)
  _print(result, w)
  common.emit(result)
  return result


def _print(result: dict[str, Any], w: common.Workload) -> None:
  mfu = result["peak_tflops"] is not None
  rows = [("side", "tokens/s", "ms/step", "compile s", "first loss", "CPU s/step")
          + (("MFU (6N)",) if mfu else ())]
  for k in ("ours", "ours_xla", "theirs"):
    if k in result:
      s = result[k]
      rows.append((k, common.fmt(s["tokens_per_s"]), common.fmt(s["ms_per_step"], 1),
                   common.fmt(s["compile_s"], 2), common.fmt(s["first_loss"], 4),
                   common.fmt(s["median_cpu_s"], 2))
                  + ((f"{s['mfu_6N']:.1%}",) if mfu else ()))
  env = result["env"]
  common.print_table(
      f"train step ({result['step']}), workload {w.name}: {w.train_batch} x {w.train_seq} "
      f"tokens, {w.dtype}, {result['params']:,} params; jax {env.get('jax_device', '-')}, "
      f"torch {env.get('torch_device', '-')}; load avg {env['load_avg_1_5_15'][0]:.2f}", rows)
  if "ratio_ours_over_theirs" in result:
    print(f"ours / theirs tokens/s: {result['ratio_ours_over_theirs']:.2f}x")
  if "ratio_ours_xla_over_theirs" in result:
    print(f"ours ({result['attention_ours']} attention) vs ours_xla; ours_xla / theirs "
          f"tokens/s: {result['ratio_ours_xla_over_theirs']:.2f}x")


if __name__ == "__main__":
  main()
