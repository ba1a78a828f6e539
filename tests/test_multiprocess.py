"""Multi-process (multi-host) runs and the memory options (remat, bf16, sampling layout).

Processes on this machine stand in for the hosts of a pod: each gets its own CPU devices
(JAX_NUM_CPU_DEVICES) and joins the others through score_jax.cli's
jax.distributed.initialize('localhost:PORT', N, i) (from JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID); collectives go over gloo. This file is also the
program those processes run: `python -m tests.test_multiprocess MODE ARGS...`.

Default run:
- 2 processes x 4 devices split a batch by rows, rebuild global arrays, gather per-row
  values, reshard params to the sampling layout, and sample two-turn rollouts whose
  process-local rows are exactly the rows of the all-rows rollout;
- in one process: remat none / full / dots give the same RL step (also with gradient
  accumulation) and sample with a KV cache; bf16 params train; the sampling-layout copy
  is tensor-only sharded, cached per step, decodes the same tokens, and its time is logged.
Slow (`pytest -m slow`):
- 2 processes x 4 devices train sft + Stage I + Stage II with the same per-step metrics and
  final params as 1 process x 8 devices; a checkpoint of either resumes in the other.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_jax import build as build_lib
from score_jax import checkpoint as checkpoint_lib
from score_jax import cli
from score_jax import config_lib
from score_jax import evaluate as evaluate_lib
from score_jax import losses
from score_jax import main as main_lib
from score_jax import mesh as mesh_lib
from score_jax import metrics as metrics_lib
from score_jax import model as model_lib
from score_jax import reshard
from score_jax import sampler as sampler_lib
from score_jax import train
from score_jax import train_step as step_lib
from score_jax.model_config import tiny
from score_jax.tasks import toy

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.py"


# --- running processes ------------------------------------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(mode: str, args: list[str], *, processes: int, devices: int,
           log_dir: pathlib.Path, timeout: float) -> None:
  """Runs `processes` copies of this file's worker `mode`, each with `devices` CPU devices;
  raises with their logs unless all exit 0."""
  port = _free_port()
  procs, logs = [], []
  for i in range(processes):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XLA_", "SLURM_", "JAX_NUM_CPU_DEVICES", "JAX_PROCESS",
                                "JAX_NUM_PROCESSES", "JAX_COORDINATOR"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
               PYTHONPATH=str(REPO))
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                 JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
    log = log_dir / f"{mode}.{processes}x{devices}.{i}.log"
    logs.append(log)
    with open(log, "w") as f:
      procs.append(subprocess.Popen([sys.executable, "-m", "tests.test_multiprocess", mode,
                                     *args], cwd=REPO, env=env, stdout=f,
                                    stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  if any(codes):
    tails = "\n".join(f"--- {log.name} (exit {c}) ---\n{log.read_text()[-4000:]}"
                      for log, c in zip(logs, codes))
    raise AssertionError(f"worker {mode} failed:\n{tails}")


# --- worker programs (run in the subprocesses) ---------------------------------------------

def _parity_rewards(self, problems, responses):
  """A dense reward: 1 when the response has an even number of upper-case letters.

  A few sft steps leave the toy model's answers random, so the toy task's exact-match
  reward is always 0 and the policy-gradient terms vanish; this one is 1 about half the
  time, so rewards, baselines and their gathering all matter.
  """
  del self, problems
  return [float(sum(ch.isupper() for ch in y) % 2 == 0) for y in responses]


def worker_train(argv: list[str]) -> None:
  """`score_jax.main` on the toy task with the parity reward."""
  toy.ToyTask.rewards = _parity_rewards
  main_lib.main(argv)


def worker_checks(argv: list[str]) -> None:
  """Row split, global arrays, gathers, sampling reshard and process-local rollouts."""
  out_dir = pathlib.Path(argv[0])
  cli.maybe_initialize_distributed(ml_collections.ConfigDict({"distributed": True}))
  me = jax.process_index()
  got: dict = {"process": me, "processes": jax.process_count(),
               "local_devices": jax.local_device_count(), "devices": jax.device_count()}
  mesh = mesh_lib.make_mesh(fsdp=-1)

  # 8 rows over 8 devices: 4 rows per process, each owned once.
  split = mesh_lib.row_split(mesh, 8)
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  g = mesh_lib.put_local_batch(x[split.rows], mesh, split)
  got["rows8"], got["owned8"] = split.rows.tolist(), split.owned.tolist()
  got["global_row_sums8"] = np.asarray(jax.jit(lambda a: a.sum(1), out_shardings=(
      jax.sharding.NamedSharding(mesh, jax.P())))(g)).tolist()
  got["local_rows8"] = mesh_lib.local_rows(g, split).tolist()
  got["gather8"] = mesh_lib.gather_rows([f"row{r}" for r in split.rows], split)
  # 4 rows do not divide 8 devices: replicated, every process holds (and prepares) all.
  split4 = mesh_lib.row_split(mesh, 4)
  got["rows4"], got["owned4"] = split4.rows.tolist(), split4.owned.tolist()
  got["gather4"] = mesh_lib.gather_rows([f"p{me}r{r}" for r in split4.rows], split4)
  g4 = mesh_lib.put_local_batch(x[:4], mesh, split4)
  got["sum4"] = float(jax.jit(jnp.sum)(g4))

  # Params in the sampling layout (replicated over fsdp), and process-local rollouts.
  config = config_lib.load(TINY, [])
  c = build_lib.build(config)
  copy = reshard.SamplingParams(fsdp=False).get("policy", c.base_params)
  specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(copy)}
  got["sampling_specs"] = sorted(specs)
  got["train_specs"] = sorted({str(leaf.sharding.spec)
                               for leaf in jax.tree.leaves(c.base_params)})
  two_turn = c.two_turn(8, 8)
  problems = [p for p in c.task.load("train")[:4] for _ in range(2)]
  kw = dict(method=sampler_lib.Temperature(1.0), rng=jax.random.key(3))
  local = two_turn.rollout(c.base_params, c.base_params, problems, process_local=True, **kw)
  whole = two_turn.rollout(c.base_params, c.base_params, problems, **kw)
  from_copy = two_turn.rollout(copy, copy, problems, process_local=True, **kw)
  got["local_rows"] = local.split.rows.tolist()
  got["local_y1"], got["local_y2"] = local.y1, local.y2
  got["local_tokens"] = local.episode.tokens_BT.tolist()
  got["local_logprobs"] = local.episode.sampler_logprobs_BT.tolist()
  got["whole_y1"], got["whole_y2"] = whole.y1, whole.y2
  got["whole_tokens"] = whole.episode.tokens_BT.tolist()
  got["whole_logprobs"] = whole.episode.sampler_logprobs_BT.tolist()
  got["copy_tokens"] = from_copy.episode.tokens_BT.tolist()
  got["gathered_y2"] = mesh_lib.gather_rows(local.y2, local.split)
  (out_dir / f"checks{me}.json").write_text(json.dumps(got))


def worker_eval(argv: list[str]) -> None:
  """`score_jax.evaluate` on the toy task with the parity reward."""
  toy.ToyTask.rewards = _parity_rewards
  evaluate_lib.main(argv)


WORKERS = {"train": worker_train, "checks": worker_checks, "eval": worker_eval}


# --- tests ---------------------------------------------------------------------------------


def test_two_processes_split_rows_gather_and_sample(tmp_path):
  launch("checks", [str(tmp_path)], processes=2, devices=4, log_dir=tmp_path, timeout=300)
  got = [json.loads((tmp_path / f"checks{i}.json").read_text()) for i in range(2)]
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  for i, g in enumerate(got):
    assert (g["process"], g["processes"], g["local_devices"], g["devices"]) == (i, 2, 4, 8)
    # Each process holds a contiguous half of the rows (so k | 4 keeps prompt groups).
    assert g["rows8"] == list(range(4 * i, 4 * i + 4)) and all(g["owned8"])
    assert g["global_row_sums8"] == x.sum(1).tolist()   # [3, 12, 21, ..., 66]
    assert g["local_rows8"] == x[4 * i:4 * i + 4].tolist()
    assert g["gather8"] == [f"row{r}" for r in range(8)]
    assert g["rows4"] == [0, 1, 2, 3] and all(g["owned4"]) == (i == 0)
    assert g["gather4"] == [f"p0r{r}" for r in range(4)]   # each row from its owner
    assert g["sum4"] == float(x[:4].sum()) == 66.0
    # Training layout: FSDP over 8 devices; sampling layout: nothing over fsdp.
    assert any("fsdp" in s for s in g["train_specs"])
    assert not any("fsdp" in s for s in g["sampling_specs"])
    # Process-local rows of the rollout are exactly those rows of the all-rows rollout.
    rows = g["local_rows"]
    assert rows == list(range(4 * i, 4 * i + 4))
    assert g["local_y1"] == [g["whole_y1"][r] for r in rows]
    assert g["local_y2"] == [g["whole_y2"][r] for r in rows]
    assert g["local_tokens"] == [g["whole_tokens"][r] for r in rows]
    np.testing.assert_allclose(g["local_logprobs"], [g["whole_logprobs"][r] for r in rows],
                               rtol=1e-6, atol=1e-6)
    assert g["copy_tokens"] == g["local_tokens"]
    assert g["gathered_y2"] == g["whole_y2"]
  assert got[0]["whole_y1"] == got[1]["whole_y1"]
  assert len(set(got[0]["whole_y1"])) > 1   # really sampled, not a constant


def test_row_split_on_one_process_is_everything():
  mesh = mesh_lib.make_mesh(fsdp=-1)
  split = mesh_lib.row_split(mesh, 8)
  assert split.rows.tolist() == list(range(8)) and split.owned.all() and split.is_everything
  assert mesh_lib.gather_rows(["a", "b", "c", "d", "e", "f", "g", "h"], split)[3] == "d"
  x = np.arange(16).reshape(8, 2)
  g = mesh_lib.put_local_batch(x, mesh, split)
  assert g.sharding.spec == jax.P("fsdp", None)
  np.testing.assert_array_equal(mesh_lib.local_rows(g, split), x)
  with pytest.raises(ValueError, match="7 rows given for the 8 local rows"):
    mesh_lib.put_local_batch(x[:7], mesh, split)
  with pytest.raises(ValueError, match="3 items for a batch of 8"):
    split.take([1, 2, 3])


# --- remat, bf16 params, gradient accumulation ------------------------------------------

def _rl_batch(config, B=4, T=12, seed=0):
  rng = np.random.default_rng(seed)
  turn1 = np.zeros((B, T), bool)
  turn1[:, 3:6] = True
  turn2 = np.zeros((B, T), bool)
  turn2[:, 8:] = True
  return {"tokens": rng.integers(0, config.vocab_size, (B, T)).astype(np.int32),
          "valid": np.ones((B, T), bool), "turn1_mask": turn1, "turn2_mask": turn2,
          "r1": np.array([0, 1, 1, 0], np.float32), "r2": np.array([1, 1, 0, 0], np.float32),
          "sampler_logprobs": np.zeros((B, T), np.float32)}


def _rl_step_result(remat: str, micro_batches: int):
  config = tiny("llama", remat=remat)
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  graphdef, params = model_lib.init_params(config, mesh, seed=0)
  optimizer = step_lib.build_optimizer(dict(name="adam", lr=1e-2, b1=0.9, b2=0.999, eps=1e-8,
                                            weight_decay=0.0, clip_norm=1.0))
  opt_state = step_lib.replicate_unsharded(optimizer.init(params), mesh)
  cfg = losses.LossConfig(stage="stage2", baseline="loo", samples_per_prompt=2)
  step = step_lib.make_rl_step(graphdef, optimizer, cfg, micro_batches)
  ref = jax.tree.map(jnp.copy, params)
  batch = {k: mesh_lib.put_batch(v, mesh) for k, v in _rl_batch(config).items()}
  params, _, out = step(params, opt_state, ref, batch)
  return jax.tree.map(np.asarray, params), jax.device_get(out)


def test_gradient_accumulation_equals_one_batch_with_the_reference_per_micro_batch():
  """Leave-one-out groups whole and equal token counts per micro-batch: 2 micro-batches
  give the one-batch loss, KL and update. The reference differs from the policy, so the
  per-micro-batch reference log-probs are exercised."""
  config = tiny("llama")
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  results = []
  for micro in (1, 2):
    graphdef, params = model_lib.init_params(config, mesh, seed=0)
    optimizer = step_lib.build_optimizer(dict(name="adam", lr=1e-2, b1=0.9, b2=0.999,
                                              eps=1e-8, weight_decay=0.0, clip_norm=1.0))
    opt_state = step_lib.replicate_unsharded(optimizer.init(params), mesh)
    cfg = losses.LossConfig(stage="stage2", baseline="loo", samples_per_prompt=2, beta2=0.5)
    ref = jax.tree.map(lambda x: x * 1.05, params)
    batch = {k: mesh_lib.put_batch(v, mesh) for k, v in _rl_batch(config).items()}
    new_params, _, out = step_lib.make_rl_step(graphdef, optimizer, cfg, micro)(
        params, opt_state, ref, batch)
    results.append((jax.tree.map(np.asarray, new_params), jax.device_get(out)))
  (p1, m1), (p2, m2) = results
  assert m1["kl_t2"] > 1e-4                                  # the reference is not the policy
  for key in ("loss", "kl_t1", "kl_t2", "grad_norm"):
    np.testing.assert_allclose(m2[key], m1[key], rtol=1e-5, atol=1e-7)
  # Adam's first step is ~lr * g / |g| per weight: summation-order noise in a near-zero
  # gradient moves that weight by a fraction of lr (1e-2) -- 1e-4 is 1% of a step.
  for a, b in zip(jax.tree.leaves(p2), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_reference_logits_are_never_whole_batch_under_accumulation():
  """4 micro-batches must cut the step's temporaries (dominated by [b,T,V] float32 logits
  at a large vocabulary) about 4x: measured 147 -> 40 MB. When the frozen reference still
  scored the whole batch at once, its logits stayed whole-batch: 147 -> 71 MB."""
  config = tiny("llama").replace(vocab_size=8192)
  graphdef, params = model_lib.init_params(config, None, seed=0)
  optimizer = step_lib.build_optimizer(dict(name="adam", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                                            weight_decay=0.0, clip_norm=1.0))
  opt_state = jax.device_put(optimizer.init(params))
  cfg = losses.LossConfig(stage="stage2", baseline="loo", samples_per_prompt=2)
  B, T = 16, 64
  batch = _rl_batch(config, B=B, T=T)
  batch["r1"] = np.tile(batch["r1"], B // 4)
  batch["r2"] = np.tile(batch["r2"], B // 4)
  whole_logits = B * T * config.vocab_size * 4
  temp = {}
  for micro in (1, 4):
    step = step_lib.make_rl_step(graphdef, optimizer, cfg, micro)
    temp[micro] = step.lower(params, opt_state, params, batch).compile(
        ).memory_analysis().temp_size_in_bytes
  assert temp[1] > whole_logits                    # one batch: the logits are there
  assert temp[4] < temp[1] / 3, (temp, whole_logits)


def _sft_setup(config, lr):
  """An FSDP mesh, params, Adam state, the sft step and an 8-row batch for `config`."""
  mesh = mesh_lib.make_mesh(fsdp=-1)
  graphdef, params = model_lib.init_params(config, mesh, seed=0)
  optimizer = step_lib.build_optimizer(dict(name="adam", lr=lr, b1=0.9, b2=0.999, eps=1e-8,
                                            weight_decay=0.0, clip_norm=1.0))
  opt_state = step_lib.replicate_unsharded(optimizer.init(params), mesh)
  batch = {k: mesh_lib.put_batch(v, mesh) for k, v in _rl_batch(config, B=8).items()
           if k in ("tokens", "valid", "turn1_mask", "turn2_mask")}
  return params, opt_state, step_lib.make_sft_step(graphdef, optimizer), batch


def test_train_step_keeps_param_shardings_and_compiles_once():
  """Without pinned output shardings GSPMD returned the replicated norm scales FSDP-
  sharded, and the second step compiled again."""
  params, opt_state, step, batch = _sft_setup(tiny("llama"), lr=1e-3)
  before = [x.sharding for x in jax.tree.leaves(params)]
  assert params["final_norm"]["scale"].sharding.spec == jax.P(None)
  for _ in range(3):
    params, opt_state, _ = step(params, opt_state, None, batch)
  assert [x.sharding for x in jax.tree.leaves(params)] == before
  assert step.jitted(params, opt_state)._cache_size() == 1


@pytest.mark.parametrize("remat,micro_batches", [("full", 1), ("dots", 1), ("full", 2)])
def test_remat_gives_the_same_rl_step(remat, micro_batches):
  want_params, want = _rl_step_result("none", micro_batches)
  got_params, got = _rl_step_result(remat, micro_batches)
  assert float(want["grad_norm"]) > 0 and float(want["pg_loss_t2"]) != 0
  for k in ("loss", "grad_norm", "pg_loss_t1", "pg_loss_t2", "kl_t1"):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_remat_model_samples_with_a_kv_cache():
  """Decoding never differentiates, so the cached path skips remat (nnx.remat inside the
  sampler's while loop used to fail with TraceContextError)."""
  config = tiny("llama")
  mesh = mesh_lib.make_mesh(fsdp=-1)
  graphdef, params = model_lib.init_params(config, mesh, seed=0)
  graphdef_remat, _ = model_lib.abstract_params(config.replace(remat="full"))
  tokens = np.arange(1, 17, dtype=np.int32).reshape(8, 2)
  valid = np.ones((8, 2), bool)
  kw = dict(max_new_tokens=4, method=sampler_lib.Greedy())
  want = sampler_lib.generate(graphdef, params, tokens, valid, **kw)
  got = sampler_lib.generate(graphdef_remat, params, tokens, valid, **kw)
  np.testing.assert_array_equal(got.tokens_BS, want.tokens_BS)


def test_bf16_params_train():
  """Adam on bf16 params (moments in bf16 too): the sft loss falls at an sft-sized lr.

  Simple, not exact: an update below half a bf16 ulp of its weight (0.2-0.4%) rounds
  away, so RL learning rates (1e-6..1e-5) need float32 params (`param_dtype=float32`,
  `dtype=bfloat16` computes in bf16 anyway).
  """
  params, opt_state, step, batch = _sft_setup(
      tiny("llama", dtype="bfloat16", param_dtype="bfloat16"), lr=1e-2)
  first = None
  for _ in range(5):
    params, opt_state, out = step(params, opt_state, params, batch)
    first = float(out["loss"]) if first is None else first
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  mu = opt_state.inner_state[1][0].mu
  assert {x.dtype for x in jax.tree.leaves(mu)} == {jnp.dtype(jnp.bfloat16)}
  assert float(out["skipped"]) == 0 and float(out["loss"]) < first - 0.5, (first, out)


# --- the sampling layout --------------------------------------------------------------------

def test_sampling_copy_is_tensor_sharded_cached_and_decodes_the_same():
  config = tiny("llama")
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  graphdef, params = model_lib.init_params(config, mesh, seed=0)
  q = params["layers"][0]["attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == jax.P("fsdp", "tensor", None)
  assert reshard.drop_axes(jax.P(("data", "fsdp"), "tensor", None)) == jax.P(None, "tensor",
                                                                            None)
  sampling = reshard.SamplingParams(fsdp=False)
  copy = sampling.get("policy", params)
  assert sampling.get("policy", params) is copy          # reused within the step
  q_copy = copy["layers"][0]["attn"]["q_proj"]["kernel"]
  assert q_copy.sharding.spec == jax.P(None, "tensor", None)
  # Each device holds the whole [D, N/2, H] half: 2x the FSDP shard of 1/4.
  assert q_copy.addressable_shards[0].data.shape == (32, 2, 8)
  assert q.addressable_shards[0].data.shape == (16, 2, 8)
  for a, b in zip(jax.tree.leaves(copy), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  seconds = sampling.release()
  assert seconds > 0 and sampling.release() == 0.0
  assert sampling.get("policy", params) is not copy       # released: a fresh copy
  untouched = reshard.SamplingParams(fsdp=True)
  assert untouched.get("policy", params) is params and untouched.release() == 0.0
  tokens = np.arange(1, 17, dtype=np.int32).reshape(8, 2)
  kw = dict(max_new_tokens=5, method=sampler_lib.Greedy())
  want = sampler_lib.generate(graphdef, params, tokens, np.ones((8, 2), bool), **kw)
  got = sampler_lib.generate(graphdef, copy, tokens, np.ones((8, 2), bool), **kw)
  np.testing.assert_array_equal(got.tokens_BS, want.tokens_BS)
  np.testing.assert_allclose(got.logprobs_BS, want.logprobs_BS, rtol=1e-5, atol=1e-5)


def test_trainer_logs_the_reshard_time(tmp_path):
  config = config_lib.load(TINY, ["--config.plan.stages=stage1", "--config.plan.stage1_steps=2",
                                  "--config.checkpoint.async_save=false"])
  config.mesh.sampling_fsdp = False  # TODO(lead): a field of configs/base.py
  trainer = train.Trainer(config, tmp_path)
  trainer.run()
  rows = metrics_lib.read_jsonl(tmp_path / "train" / "metrics.jsonl")
  assert len(rows) == 2
  for r in rows:
    assert r["reshard_time_s"] > 0 and np.isfinite(r["loss"]) and r["skipped"] == 0


# --- 2 processes x 4 devices vs 1 process x 8 devices (slow) -------------------------------

RUN = ["--config", str(TINY), "--config.plan.sft_steps=2", "--config.plan.stage1_steps=2",
       "--config.plan.stage2_steps=2", "--config.checkpoint.every=2",
       "--config.checkpoint.keep=20", "--config.checkpoint.async_save=false",
       "--config.train.tensorboard=false", "--config.optim.lr=1e-3"]
TIMING = ("step_time_s", "rollout_time_s", "reshard_time_s", "tokens_per_s")


def _train(workdir, processes, log_dir):
  launch("train", [*RUN, "--workdir", str(workdir),
                   f"--config.distributed={processes > 1}"],
         processes=processes, devices=8 // processes, log_dir=log_dir, timeout=900)


def _final_params(workdir, step):
  c = build_lib.build(config_lib.load(TINY, []))
  reader = checkpoint_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", read_only=True,
                                       keep_best=False)
  params, _, meta = reader.restore(step, c.base_params)
  return jax.tree.map(np.asarray, params), meta


# Computed from the sampled texts: identical when both runs sample the same tokens.
SAMPLED = ("reward_t1", "reward_t2", "acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i",
           "answer_changed", "edit_distance_ratio", "len_t1", "len_t2")


def _assert_same_metrics(a_path, b_path):
  """Same sampled data exactly; losses and norms to float32 round-off (the two runs sum
  over devices in different orders: in-process vs gloo collectives)."""
  a, b = metrics_lib.read_jsonl(a_path), metrics_lib.read_jsonl(b_path)
  assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
  for ra, rb in zip(a, b):
    assert set(ra) == set(rb)
    for k in ra:
      if k in TIMING:
        continue
      if isinstance(ra[k], str) or k in SAMPLED:
        assert ra[k] == rb[k], (ra["step"], k, ra[k], rb[k])
      else:
        np.testing.assert_allclose(rb[k], ra[k], rtol=1e-5, atol=1e-5,
                                   err_msg=f"step {ra['step']} {k}")


def _assert_params_close(want, got):
  """Nearly every weight to 1e-6; every weight within a tenth of one Adam step (lr 1e-3).

  Adam divides by sqrt(v): a weight whose gradients are at round-off level moves by up to
  lr per step in a direction set by that round-off, so a few weights differ by ~lr/10.
  """
  total = close = 0
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4)
    total += a.size
    close += int(np.sum(np.abs(b - a) <= 1e-6 + 1e-5 * np.abs(a)))
  assert close >= 0.999 * total, f"{total - close} of {total} weights differ by > 1e-6"


def _truncate(src, dst, keep_step):
  """A copy of run `src` as it was after checkpoint `keep_step` (later ones removed)."""
  shutil.copytree(src, dst)
  for p in (dst / "checkpoints").iterdir():
    if p.name.isdigit() and int(p.name) > keep_step:
      shutil.rmtree(p)
  (dst / "train" / "metrics.jsonl").unlink()


@pytest.mark.slow
def test_two_processes_train_like_one_and_checkpoints_cross_over(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _train(one, 1, tmp_path)
  _train(two, 2, tmp_path)
  metrics_one = metrics_lib.read_jsonl(one / "train" / "metrics.jsonl")
  assert [r["stage"] for r in metrics_one] == ["sft"] * 2 + ["stage1"] * 2 + ["stage2"] * 2
  rl = metrics_one[2:]
  assert any(0 < r["reward_t2"] < 1 for r in rl)                  # rewards vary ...
  assert any(abs(r["pg_loss_t2"]) > 0 for r in rl)                 # ... and are trained on
  _assert_same_metrics(one / "train" / "metrics.jsonl", two / "train" / "metrics.jsonl")
  p_one, meta_one = _final_params(one, 6)
  p_two, meta_two = _final_params(two, 6)     # a 2-process checkpoint restored in 1 process
  assert meta_one["data_position"] == meta_two["data_position"]
  _assert_params_close(p_one, p_two)

  # The evaluator on 2 processes: one line per checkpoint (process 0 writes), the numbers
  # of a 1-process evaluation of the same checkpoint.
  one_eval2 = tmp_path / "one_eval2"
  shutil.copytree(one, one_eval2)
  for workdir, processes in ((one, 1), (one_eval2, 2)):
    launch("eval", [*RUN, "--workdir", str(workdir), "--once",
                    f"--config.distributed={processes > 1}"],
           processes=processes, devices=8 // processes, log_dir=tmp_path, timeout=600)
  e_one = metrics_lib.read_jsonl(one / "eval" / "metrics.jsonl")
  e_two = metrics_lib.read_jsonl(one_eval2 / "eval" / "metrics.jsonl")
  assert [r["step"] for r in e_one] == [r["step"] for r in e_two] == [6]
  assert e_one[0]["n"] == e_two[0]["n"] > 0
  for key in ("acc_t1", "acc_t2", "delta"):   # greedy decoding on 1x8 vs 2x4 meshes
    assert abs(e_one[0][key] - e_two[0][key]) <= 2 / e_one[0]["n"], (key, e_one, e_two)

  # Resume across the switch: 2 processes continue the 1-process run from step 4, and
  # 1 process continues the 2-process run from step 4; both end where the others did.
  one_then_two, two_then_one = tmp_path / "one_then_two", tmp_path / "two_then_one"
  _truncate(one, one_then_two, 4)
  _truncate(two, two_then_one, 4)
  _train(one_then_two, 2, tmp_path)
  _train(two_then_one, 1, tmp_path)
  for resumed, straight in ((one_then_two, p_one), (two_then_one, p_two)):
    rows = metrics_lib.read_jsonl(resumed / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 6]
    got, _ = _final_params(resumed, 6)
    _assert_params_close(straight, got)


if __name__ == "__main__":
  WORKERS[sys.argv[1]](sys.argv[2:])
