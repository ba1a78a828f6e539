"""The attention kernel choice: cuDNN's fused kernel computes what our reference does.

On a CPU the fused path is checked through `jax.nn.dot_product_attention`'s "xla"
implementation (same call, same mask-to-bias conversion); on a GPU,
`benchmarks/attention.py` checks the "cudnn" implementation against ours and times both.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.model import layers
from score_jax.model.config import ModelConfig, tiny


def _inputs(B=2, T=7, N=4, K=2, H=8, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(B, T, K, H)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(B, T, K, H)), jnp.float32)
  # Left padding (row 0: 2 pad slots) + causal + a sliding window of 3 on row 1.
  valid_BS = np.ones((B, T), bool)
  valid_BS[0, :2] = False
  slot = np.arange(T)
  mask_BTS = valid_BS[:, None, :] & (slot[None, None, :] <= slot[None, :, None])
  mask_BTS[1] &= (slot[:, None] - slot[None, :]) < 3
  # A fully masked query row (a pad slot attends nothing) must stay finite.
  mask_BTS[0, 0] = False
  return q, k, v, jnp.asarray(mask_BTS)


def test_fused_call_matches_ours_with_padding_causal_window_and_gqa():
  q, k, v, mask = _inputs()
  want = layers.dot_product_attention(q, k, v, mask, scale=0.3)
  got = layers.fused_attention(q, k, v, mask, scale=0.3, implementation="xla")
  rows = np.asarray(mask.any(-1))                   # query rows with something to attend
  np.testing.assert_allclose(np.asarray(got)[rows], np.asarray(want)[rows], atol=1e-5)
  assert np.isfinite(np.asarray(got)).all()
  # GQA order: query head n reads kv head n // (N // K); heads 0,1 -> kv 0; 2,3 -> kv 1.
  # Changing kv head 1 must leave query heads 0 and 1 untouched.
  v2 = v.at[:, :, 1].add(1.0)
  got2 = layers.fused_attention(q, k, v2, mask, scale=0.3, implementation="xla")
  np.testing.assert_allclose(np.asarray(got2)[rows][:, :2], np.asarray(got)[rows][:, :2])
  assert not np.allclose(np.asarray(got2)[rows][:, 2:], np.asarray(got)[rows][:, 2:])


def test_fused_call_gradients_match_ours():
  q, k, v, mask = _inputs(seed=1)
  w = jnp.asarray(np.asarray(mask.any(-1))[:, :, None, None], jnp.float32)

  def loss(fn, q, k, v):
    return jnp.sum(w * jnp.sin(fn(q, k, v)))

  ours = jax.grad(lambda *a: loss(
      lambda q, k, v: layers.dot_product_attention(q, k, v, mask, scale=0.3), *a),
      argnums=(0, 1, 2))(q, k, v)
  fused = jax.grad(lambda *a: loss(
      lambda q, k, v: layers.fused_attention(q, k, v, mask, scale=0.3,
                                             implementation="xla"), *a),
      argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(fused, ours):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_kernel_choice():
  llama = tiny("llama")
  assert jax.default_backend() == "cpu"
  assert not layers.use_cudnn_attention(llama.replace(dtype="bfloat16"))   # auto, on a CPU
  assert not layers.use_cudnn_attention(llama.replace(attention="xla"))
  assert layers.use_cudnn_attention(llama.replace(attention="cudnn", dtype="bfloat16"))
  with pytest.raises(ValueError, match="model.attention='cudnn' needs bf16/fp16 compute"):
    layers.use_cudnn_attention(llama.replace(attention="cudnn", dtype="float32"))
  with pytest.raises(ValueError, match="no attention soft-cap"):
    layers.use_cudnn_attention(tiny("gemma2").replace(attention="cudnn", dtype="bfloat16"))
  with pytest.raises(ValueError, match="attention='flash' not in"):
    ModelConfig(vocab_size=8, num_layers=1, embed_dim=8, hidden_dim=8, num_heads=1,
                num_kv_heads=1, head_dim=8, attention="flash")
