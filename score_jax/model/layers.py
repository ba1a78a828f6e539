"""Transformer building blocks: RMSNorm, projections, RoPE, attention, gated MLP, block.

All modules read their switches from a `ModelConfig`. Params are created in
`config.param_dtype` with logical axis names in their `out_sharding` metadata (mapped to
mesh axes by `score_jax.mesh.LOGICAL_AXIS_RULES`; `eager_sharding=False`, so modules can
be built with or without a mesh); compute runs in `config.dtype`, norms, RoPE and
softmax in float32. The param layout is documented in `score_jax/model/transformer.py`.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from score_jax.mesh import constrain
from score_jax.model.config import ModelConfig, RopeScaling

# Finite "minus infinity" for masked scores: a fully masked row gives a uniform
# softmax (finite, never NaN) instead of 0/0.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def normal(key: jax.Array, shape: Sequence[int], std: float) -> jax.Array:
  """float32 N(0, std^2) of `shape`, drawn flat and reshaped (XLA on CPU compiles a
  flat threefry draw ~10x faster than a rank-4 one)."""
  return jax.random.normal(key, (math.prod(shape),), jnp.float32).reshape(shape) * std


def _param(value: jax.Array, names: Sequence[str | None]) -> nnx.Param:
  return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis, in float32: `x * w` ("rms") or `x * (1 + w)` ("gemma_rms")."""

  def __init__(self, dim: int, config: ModelConfig, names: Sequence[str | None] = ("norm",)):
    self.gemma_style = config.norm_style == "gemma_rms"
    self.eps = config.norm_eps
    init = jnp.zeros if self.gemma_style else jnp.ones
    self.scale = _param(init((dim,), jnp.dtype(config.param_dtype)), names)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    w = self.scale[...].astype(jnp.float32)
    y = y * (1.0 + w) if self.gemma_style else y * w
    return y.astype(x.dtype)


class Proj(nnx.Module):
  """A dense projection written as one einsum, e.g. `BTD,DNH->BTNH`, with optional bias.

  The kernel has the shape of the einsum's second operand; the bias (if any) has the
  shape of the output's trailing (non-B, non-T) axes.
  """

  def __init__(self, eqn: str, kernel_shape: Sequence[int], names: Sequence[str | None],
               *, fan_in: int, config: ModelConfig, rngs: nnx.Rngs,
               bias_names: Sequence[str | None] | None = None):
    self.eqn = eqn
    self.dtype = jnp.dtype(config.dtype)
    pdtype = jnp.dtype(config.param_dtype)
    self.init_std = fan_in ** -0.5
    kernel = normal(rngs.params(), tuple(kernel_shape), self.init_std)
    self.kernel = _param(kernel.astype(pdtype), names)
    if bias_names is not None:
      out_axes = eqn.split("->")[1][2:]          # drop the B, T axes of the output
      _, rhs = eqn.split("->")[0].split(",")
      shape = tuple(kernel_shape[rhs.index(a)] for a in out_axes)
      self.bias = _param(jnp.zeros(shape, pdtype), bias_names)
    else:
      self.bias = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.einsum(self.eqn, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def rope_inv_freq(head_dim: int, base: float, scale_factor: float = 1.0,
                  scaling: RopeScaling | None = None) -> np.ndarray:
  """Inverse RoPE frequencies [H/2] (HF convention), with optional linear / Llama-3 scaling.

  inv_freq[i] = base**(-2i/H) / scale_factor; Llama-3 scaling then divides low
  frequencies (wavelength > original_max_position / low_freq_factor) by `factor`,
  keeps high ones (wavelength < original_max_position / high_freq_factor) and
  interpolates smoothly in between (as `transformers`' `_compute_llama3_parameters`).
  """
  inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  inv_freq = inv_freq / scale_factor
  if scaling is not None:
    old = scaling.original_max_position
    low_wavelen = old / scaling.low_freq_factor
    high_wavelen = old / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = np.where(medium, smoothed, scaled)
  return inv_freq.astype(np.float32)


def layer_inv_freq(config: ModelConfig, layer: int) -> np.ndarray:
  """RoPE frequencies of `layer`: local layers use `rope_local_base` without scaling."""
  if config.layer_kind(layer) == "local" and config.rope_local_base is not None:
    return rope_inv_freq(config.head_dim, config.rope_local_base)
  if config.layer_kind(layer) == "local":
    return rope_inv_freq(config.head_dim, config.rope_base)
  return rope_inv_freq(config.head_dim, config.rope_base, config.rope_scale_factor,
                       config.rope_scaling)


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates [B,T,N,H] by `positions` (HF "rotate_half": halves of H are the pairs)."""
  angles_BTh = positions_BT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
  sin_BT1h = jnp.sin(angles_BTh)[:, :, None, :]
  cos_BT1h = jnp.cos(angles_BTh)[:, :, None, :]
  x32 = x_BTNH.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  out = jnp.concatenate([x1 * cos_BT1h - x2 * sin_BT1h, x2 * cos_BT1h + x1 * sin_BT1h], -1)
  return out.astype(x_BTNH.dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
  """`tanh(x / cap) * cap` (identity when cap is None)."""
  return x if cap is None else jnp.tanh(x / cap) * cap


def dot_product_attention(q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array,
                          mask_BTS: jax.Array, *, scale: float,
                          logit_softcap: float | None = None) -> jax.Array:
  """softmax(softcap(scale * q.k) masked) @ v with grouped kv heads; returns [B,T,N,H].

  Query head n uses kv head n // (N // K) (HF `repeat_kv` order). Scores and softmax
  are float32; masked scores get MASK_VALUE, so a fully masked row stays finite.
  """
  B, T, N, H = q_BTNH.shape
  K = k_BSKH.shape[2]
  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  scores_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH.astype(q_BTNH.dtype),
                            preferred_element_type=jnp.float32) * scale
  scores_BKGTS = softcap(scores_BKGTS, logit_softcap)
  scores_BKGTS = jnp.where(mask_BTS[:, None, None], scores_BKGTS, MASK_VALUE)
  probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(q_BTNH.dtype)
  out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BKGTS, v_BSKH.astype(q_BTNH.dtype))
  return out_BTKGH.reshape(B, T, N, H)


def use_cudnn_attention(config: ModelConfig) -> bool:
  """Whether uncached attention (training, scoring) runs cuDNN's fused flash kernel.

  `config.attention`: "xla" never; "cudnn" always (an error where cuDNN cannot run it);
  "auto" when JAX runs on a GPU and the model fits the kernel: bf16/fp16 compute, no
  attention logit soft-cap (Gemma 2), head_dim a multiple of 8 and at most 128.
  """
  fits = (config.dtype in ("bfloat16", "float16") and config.attn_logit_softcap is None
          and config.head_dim % 8 == 0 and config.head_dim <= 128)
  if config.attention == "cudnn":
    if not fits:
      raise ValueError(
          f"model.attention='cudnn' needs bf16/fp16 compute (model.dtype={config.dtype!r}), "
          f"no attention soft-cap (attn_logit_softcap={config.attn_logit_softcap}) and "
          f"head_dim a multiple of 8 up to 128 (head_dim={config.head_dim}); set "
          f"model.attention='auto' or 'xla'")
    return True
  return config.attention == "auto" and fits and jax.default_backend() == "gpu"


def fused_attention(q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array,
                    mask_BTS: jax.Array, *, scale: float, implementation: str) -> jax.Array:
  """`dot_product_attention` (no soft-cap) through `jax.nn.dot_product_attention`.

  With implementation="cudnn" this is one flash-attention kernel forward and backward (no
  [B,N,T,S] float32 scores in memory); the mask becomes an additive bias (False -> a large
  negative number), so any mask (left padding, causal, sliding window) is exact. "xla" is
  JAX's reference implementation of the same call, used to check the semantics on a CPU.
  """
  return jax.nn.dot_product_attention(q_BTNH, k_BSKH.astype(q_BTNH.dtype),
                                      v_BSKH.astype(q_BTNH.dtype), mask=mask_BTS[:, None],
                                      scale=scale, implementation=implementation)


class Attention(nnx.Module):
  """Multi-head attention (MHA / GQA / MQA) with RoPE, optional qkv bias and qk-norm."""

  def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
    D, N, K, H = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim
    bias = config.qkv_bias
    self.q_proj = Proj("BTD,DNH->BTNH", (D, N, H), ("embed", "heads", "head_dim"), fan_in=D,
                       config=config, rngs=rngs,
                       bias_names=("heads", "head_dim") if bias else None)
    self.k_proj = Proj("BTD,DKH->BTKH", (D, K, H), ("embed", "kv_heads", "head_dim"),
                       fan_in=D, config=config, rngs=rngs,
                       bias_names=("kv_heads", "head_dim") if bias else None)
    self.v_proj = Proj("BTD,DKH->BTKH", (D, K, H), ("embed", "kv_heads", "head_dim"),
                       fan_in=D, config=config, rngs=rngs,
                       bias_names=("kv_heads", "head_dim") if bias else None)
    self.o_proj = Proj("BTNH,NHD->BTD", (N, H, D), ("heads", "head_dim", "embed"),
                       fan_in=N * H, config=config, rngs=rngs)
    if config.qk_norm:
      self.q_norm = RMSNorm(H, config, names=("head_dim",))
      self.k_norm = RMSNorm(H, config, names=("head_dim",))
    self.qk_norm = config.qk_norm
    self.inv_freq = tuple(float(f) for f in layer_inv_freq(config, layer))
    self.scale = (config.query_pre_attn_scalar or H) ** -0.5
    self.logit_softcap = config.attn_logit_softcap
    self.cudnn = use_cudnn_attention(config)

  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array, mask_BTS: jax.Array,
               kv: tuple[jax.Array, jax.Array] | None = None,
               index: jax.Array | None = None):
    """Attends the chunk x_BTD; with `kv` (cache k_BSKH, v_BSKH) writes the chunk's keys
    and values at slots [index, index+T) first and attends over the whole cache."""
    q_BTNH = self.q_proj(x_BTD)
    k_BTKH = self.k_proj(x_BTD)
    v_BTKH = self.v_proj(x_BTD)
    if self.qk_norm:
      q_BTNH = self.q_norm(q_BTNH)
      k_BTKH = self.k_norm(k_BTKH)
    inv_freq = np.asarray(self.inv_freq, np.float32)
    q_BTNH = apply_rope(q_BTNH, positions_BT, inv_freq)
    k_BTKH = apply_rope(k_BTKH, positions_BT, inv_freq)
    if kv is None:
      k_BSKH, v_BSKH, new_kv = k_BTKH, v_BTKH, None
    else:
      k_cache, v_cache = kv
      start = (0, index, 0, 0)
      k_BSKH = jax.lax.dynamic_update_slice(k_cache, k_BTKH.astype(k_cache.dtype), start)
      v_BSKH = jax.lax.dynamic_update_slice(v_cache, v_BTKH.astype(v_cache.dtype), start)
      k_BSKH = constrain(k_BSKH, ("batch", "length", "kv_heads", "head_dim"))
      v_BSKH = constrain(v_BSKH, ("batch", "length", "kv_heads", "head_dim"))
      new_kv = (k_BSKH, v_BSKH)
    if self.cudnn and kv is None:
      out_BTNH = fused_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS, scale=self.scale,
                                 implementation="cudnn")
    else:
      out_BTNH = dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS, scale=self.scale,
                                       logit_softcap=self.logit_softcap)
    return self.o_proj(out_BTNH), new_kv


class MLP(nnx.Module):
  """Gated MLP: down(act(gate(x)) * up(x)); act = silu (SwiGLU) or tanh-gelu (GeGLU)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    D, F = config.embed_dim, config.hidden_dim
    self.gate_proj = Proj("BTD,DF->BTF", (D, F), ("embed", "mlp"), fan_in=D, config=config,
                          rngs=rngs)
    self.up_proj = Proj("BTD,DF->BTF", (D, F), ("embed", "mlp"), fan_in=D, config=config,
                        rngs=rngs)
    self.down_proj = Proj("BTF,FD->BTD", (F, D), ("mlp", "embed"), fan_in=F, config=config,
                          rngs=rngs)
    self.activation = config.activation

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    gate_BTF = self.gate_proj(x_BTD)
    if self.activation == "silu":
      gate_BTF = jax.nn.silu(gate_BTF)
    else:
      gate_BTF = jax.nn.gelu(gate_BTF, approximate=True)
    return self.down_proj(gate_BTF * self.up_proj(x_BTD))


class Block(nnx.Module):
  """Pre-norm decoder block, with Gemma 2/3 sandwich norms when `config.post_norms`."""

  def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
    D = config.embed_dim
    self.kind = config.layer_kind(layer)
    self.post_norms = config.post_norms
    self.pre_attn_norm = RMSNorm(D, config)
    self.attn = Attention(config, layer, rngs=rngs)
    if config.post_norms:
      self.post_attn_norm = RMSNorm(D, config)
    self.pre_ffw_norm = RMSNorm(D, config)
    self.mlp = MLP(config, rngs=rngs)
    if config.post_norms:
      self.post_ffw_norm = RMSNorm(D, config)

  def __call__(self, x_BTD, positions_BT, mask_BTS, kv=None, index=None):
    h_BTD, new_kv = self.attn(self.pre_attn_norm(x_BTD), positions_BT, mask_BTS, kv, index)
    if self.post_norms:
      h_BTD = self.post_attn_norm(h_BTD)
    x_BTD = x_BTD + h_BTD
    h_BTD = self.mlp(self.pre_ffw_norm(x_BTD))
    if self.post_norms:
      h_BTD = self.post_ffw_norm(h_BTD)
    x_BTD = constrain(x_BTD + h_BTD, ("batch", "length", "act_embed"))
    return x_BTD, new_kv
