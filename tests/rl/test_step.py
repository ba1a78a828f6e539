"""The train step's memory options on one process (8 CPU devices): remat, bf16 params,
gradient accumulation, and the sampling layout.

- remat none / full / dots give the same RL step (also with gradient accumulation) and
  sample with a KV cache; accumulation over micro-batches equals one batch and keeps the
  reference's logits per micro-batch; the step keeps param shardings and compiles once;
  bf16 params train;
- the sampling-layout copy is tensor-only sharded, cached per step, decodes the same
  tokens, and the trainer logs its time.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import config_lib
from score_jax import mesh as mesh_lib
from score_jax import metrics as metrics_lib
from score_jax import multihost
from score_jax import reshard
from score_jax import sampler as sampler_lib
from score_jax import train
from score_jax.model import transformer as model_lib
from score_jax.model.config import tiny
from score_jax.rl import losses
from score_jax.rl import step as step_lib
from score_jax.rl.episode import from_masks
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"


# --- remat, bf16 params, gradient accumulation ------------------------------------------

def _rl_batch(config, B=4, T=12, seed=0):
  rng = np.random.default_rng(seed)
  turn1 = np.zeros((B, T), bool)
  turn1[:, 3:6] = True
  turn2 = np.zeros((B, T), bool)
  turn2[:, 8:] = True
  return from_masks(rng.integers(0, config.vocab_size, (B, T)).astype(np.int32),
                    np.ones((B, T), bool), [turn1, turn2],
                    [np.tile(np.array([0, 1, 1, 0], np.float32), B // 4),
                     np.tile(np.array([1, 1, 0, 0], np.float32), B // 4)])


def _on_mesh(episode, mesh):
  return jax.tree.map(lambda x: multihost.put_batch(x, mesh), episode)


def _rl_step_result(remat: str, micro_batches: int):
  config = tiny("llama", remat=remat)
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  graphdef, params = model_lib.init_params(config, mesh, seed=0)
  optimizer = step_lib.build_optimizer(dict(name="adam", lr=1e-2, b1=0.9, b2=0.999, eps=1e-8,
                                            weight_decay=0.0, clip_norm=1.0))
  opt_state = step_lib.replicate_unsharded(optimizer.init(params), mesh)
  cfg = losses.LossConfig(stage="stage2", baseline="loo", samples_per_prompt=2)
  step = step_lib.make_rl_step(graphdef, optimizer, cfg, micro_batches,
                               step_lib.step_shardings(optimizer, params, mesh))
  ref = jax.tree.map(jnp.copy, params)
  batch = _on_mesh(_rl_batch(config), mesh)
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
    batch = _on_mesh(_rl_batch(config), mesh)
    shardings = step_lib.step_shardings(optimizer, params, mesh)
    new_params, _, out = step_lib.make_rl_step(graphdef, optimizer, cfg, micro, shardings)(
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
  batch = _on_mesh(_rl_batch(config, B=8), mesh)
  shardings = step_lib.step_shardings(optimizer, params, mesh)
  return params, opt_state, step_lib.make_sft_step(graphdef, optimizer, 1, shardings), batch


def test_train_step_keeps_param_shardings_and_compiles_once():
  """Without pinned output shardings GSPMD returned the replicated norm scales FSDP-
  sharded, and the second step compiled again."""
  params, opt_state, step, batch = _sft_setup(tiny("llama"), lr=1e-3)
  before = [x.sharding for x in jax.tree.leaves(params)]
  assert params["final_norm"]["scale"].sharding.spec == jax.P(None)
  for _ in range(3):
    params, opt_state, _ = step(params, opt_state, None, batch)
  assert [x.sharding for x in jax.tree.leaves(params)] == before
  assert step.jitted._cache_size() == 1


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
                                  "--config.checkpoint.async_save=false",
                                  "--config.mesh.sampling_fsdp=False"])
  trainer = train.Trainer(config, tmp_path)
  trainer.run()
  rows = metrics_lib.read_jsonl(tmp_path / "train" / "metrics.jsonl")
  assert len(rows) == 2
  for r in rows:
    assert r["reshard_time_s"] > 0 and np.isfinite(r["loss"]) and r["skipped"] == 0
