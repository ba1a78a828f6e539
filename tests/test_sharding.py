"""Tests of score_jax.mesh and of sharded execution: the same params and inputs give the
same logits and greedy tokens on 1 device and on a 2x2x2 (data, fsdp, tensor) mesh, and
params / caches are really sharded."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from score_jax import mesh as mesh_lib
from score_jax import multihost
from score_jax import sampler as S
from score_jax.model import transformer as M
from tests.model_helpers import randomize
from score_jax.model.config import tiny




@functools.lru_cache(maxsize=None)
def make(family):
  config = tiny(family)
  graphdef, params = nnx.split(M.Transformer(config, rngs=nnx.Rngs(0)))
  return config, graphdef, randomize(params)


@functools.lru_cache(maxsize=None)
def mesh222():
  return mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)


def test_make_mesh_axes_and_errors():
  mesh = mesh_lib.make_mesh(tensor=2)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(zip(mesh.axis_names, mesh.axis_sizes)) == {"data": 1, "fsdp": 4, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="does not fit"):
    mesh_lib.make_mesh(data=3)
  with pytest.raises(ValueError, match="at most one"):
    mesh_lib.make_mesh(data=-1, fsdp=-1)


def test_logical_rules_and_divisibility():
  mesh = mesh222()
  assert mesh_lib.logical_to_spec(("embed", "mlp"), mesh) == P("fsdp", "tensor")
  assert mesh_lib.logical_to_spec(("batch", "length", "act_embed"), mesh) == P(
      ("data", "fsdp"), None, None)
  # batch 6 is not divisible by data*fsdp=4, kv_heads=1 not by tensor=2: replicated.
  assert mesh_lib.logical_to_spec(("batch", "kv_heads"), mesh, (6, 1)) == P(None, None)
  # fsdp is taken by batch first, so embed is not sharded twice.
  assert mesh_lib.logical_to_spec(("batch", "embed"), mesh, (4, 8)) == P(("data", "fsdp"),
                                                                         None)
  with pytest.raises(ValueError, match="LOGICAL_AXIS_RULES"):
    mesh_lib.logical_to_spec(("nope",), mesh)


def test_init_params_is_sharded_and_mesh_independent():
  config = tiny("gemma3")
  mesh = mesh222()
  graphdef, params = M.init_params(config, mesh, seed=3)
  _, local = M.init_params(config, None, seed=3)
  kernel = params["layers"][0]["mlp"]["gate_proj"]["kernel"][...]
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert not kernel.sharding.is_fully_replicated
  assert params["embedder"]["embedding"][...].sharding.spec == P("tensor", "fsdp")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(local)):      # up to 1 ulp
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  want = M.param_shardings(config, mesh)
  got = jax.tree.map(lambda x: x.sharding, params)
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    assert w == g
  stds = [float(x.std()) for x in jax.tree.leaves(local) if x.ndim > 1]
  assert min(stds) > 0.05                                  # kernels are random


@pytest.mark.parametrize("family", [
    "gemma",                                  # MQA: kv heads stay replicated on tensor=2
    "gemma3",                                 # local layers, qk-norm, sandwich norms
    "llama",                                  # untied lm_head
    pytest.param("gemma2", marks=pytest.mark.slow),
    pytest.param("qwen2", marks=pytest.mark.slow),
])
def test_same_logits_on_one_device_and_on_mesh(family):
  config, graphdef, params = make(family)
  mesh = mesh222()
  tokens = jax.random.randint(jax.random.key(0), (4, 9), 0, config.vocab_size)
  valid = np.ones((4, 9), bool)
  valid[1, :3] = False
  forward = jax.jit(M.forward, static_argnums=0)
  want, _ = forward(graphdef, params, tokens, valid)
  sharded = jax.device_put(params, M.param_shardings(params, mesh))
  assert not sharded["layers"][0]["attn"]["q_proj"]["kernel"][...].sharding.is_fully_replicated
  with jax.set_mesh(mesh):
    got, _ = forward(graphdef, sharded, multihost.put_batch(tokens, mesh),
                     multihost.put_batch(valid, mesh))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("family", ["llama", pytest.param("gemma3", marks=pytest.mark.slow)])
def test_same_greedy_tokens_on_one_device_and_on_mesh(family):
  config, graphdef, params = make(family)
  mesh = mesh222()
  tokens = np.array([[5, 6, 7, 8], [0, 0, 9, 10], [0, 11, 12, 13], [14, 15, 16, 17]])
  valid = tokens != 0
  kwargs = dict(max_new_tokens=6, method=S.Greedy(), pad_id=0)
  want = S.generate(graphdef, params, tokens, valid, **kwargs)
  sharded = jax.device_put(params, M.param_shardings(params, mesh))
  got = S.generate(graphdef, sharded, tokens, valid, **kwargs)      # mesh from the params
  np.testing.assert_array_equal(got.tokens_BS, want.tokens_BS)
  np.testing.assert_allclose(got.logprobs_BS, want.logprobs_BS, rtol=1e-5, atol=1e-5)
  k = got.cache.k_BSKH[0]
  assert k.sharding.spec[0] == ("data", "fsdp")             # cache split over batch
  assert got.tokens_BS.sharding.mesh == mesh


def test_init_cache_shardings():
  config = tiny("qwen2")                                    # K = 2 kv heads
  cache = M.init_cache(config, 4, 16, mesh=mesh222())
  assert cache.k_BSKH[0].sharding.spec == P(("data", "fsdp"), None, "tensor", None)
  assert cache.valid_BS.sharding.spec == P(("data", "fsdp"), None)
  assert len(cache.k_BSKH) == config.num_layers and cache.k_BSKH[0].dtype == jnp.float32
