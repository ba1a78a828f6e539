"""The decoder-only transformer (Gemma 1/2/3, Llama 3, Qwen2) and its KV cache.

Outside this file the model is `graphdef` + `params` (an `nnx.State`):

  graphdef, params = init_params(config, mesh)          # params already sharded
  logits_BTV, cache = forward(graphdef, params, tokens_BT, valid_BT, cache=None)

Masking and positions (`valid_BT`, bool): invalid tokens are padding anywhere in a row.
They are never attended to and do not advance positions: the RoPE position of a valid
token is the number of valid tokens before it in its row, cache included. Query slot t
attends key slot s iff valid[s] and s <= t and, on "local" layers,
pos[t] - pos[s] < sliding_window. Logits at invalid positions are finite but unspecified.

Sharding: params carry logical axis names (`out_sharding` metadata) mapped by
score_jax.mesh.LOGICAL_AXIS_RULES; `init_params(config, mesh)` creates them sharded and
`param_shardings` gives the NamedSharding tree (e.g. for Orbax restore). Activations are
constrained batch-sharded when the caller jits under `jax.set_mesh(mesh)`; without a
context mesh the constraints are no-ops and GSPMD propagates from the inputs.

With a `KVCache`, the call writes the chunk `tokens_BT` at slots [index, index+T) and
attends over the whole cache: prefill = append a chunk to an empty cache, decode = append
a chunk of length 1, turn 2 = append the turn-2 tokens to the turn-1 cache.

Param tree (`params`, an nnx.State; leaves are nnx.Param; shapes with the legend
V vocab, D embed, N heads, K kv heads, H head dim, F mlp hidden; logical axis names
in brackets, see score_jax.mesh.LOGICAL_AXIS_RULES):

  embedder.embedding                   [V, D]     (vocab, embed)
  layers[i].pre_attn_norm.scale        [D]        (norm,)
  layers[i].attn.q_proj.kernel         [D, N, H]  (embed, heads, head_dim)
  layers[i].attn.q_proj.bias           [N, H]     (heads, head_dim)       if qkv_bias
  layers[i].attn.k_proj.kernel         [D, K, H]  (embed, kv_heads, head_dim)
  layers[i].attn.k_proj.bias           [K, H]     (kv_heads, head_dim)    if qkv_bias
  layers[i].attn.v_proj.kernel         [D, K, H]  (embed, kv_heads, head_dim)
  layers[i].attn.v_proj.bias           [K, H]     (kv_heads, head_dim)    if qkv_bias
  layers[i].attn.o_proj.kernel         [N, H, D]  (heads, head_dim, embed)
  layers[i].attn.q_norm.scale          [H]        (head_dim,)             if qk_norm
  layers[i].attn.k_norm.scale          [H]        (head_dim,)             if qk_norm
  layers[i].post_attn_norm.scale       [D]        (norm,)                 if post_norms
  layers[i].pre_ffw_norm.scale         [D]        (norm,)
  layers[i].mlp.gate_proj.kernel       [D, F]     (embed, mlp)
  layers[i].mlp.up_proj.kernel         [D, F]     (embed, mlp)
  layers[i].mlp.down_proj.kernel       [F, D]     (mlp, embed)
  layers[i].post_ffw_norm.scale        [D]        (norm,)                 if post_norms
  final_norm.scale                     [D]        (norm,)
  lm_head.kernel                       [D, V]     (embed, vocab)          if not tie_embeddings

In the State, `layers` is a dict keyed by int i: `params["layers"][0]["attn"]["q_proj"]
["kernel"]` (use `[...]` or `.value` on the nnx.Param to get the array).
Mapping from HF `transformers` names (torch Linear weights are [out, in]: transpose,
then reshape the out dim to (N, H) / (K, H); o_proj: transpose to [N*H, D] -> [N, H, D]):
  model.embed_tokens.weight -> embedder.embedding; model.norm.weight -> final_norm.scale;
  lm_head.weight -> lm_head.kernel (transposed); self_attn.{q,k,v,o}_proj -> attn.*;
  self_attn.{q,k}_norm -> attn.{q,k}_norm; mlp.{gate,up,down}_proj -> mlp.*;
  input_layernorm -> pre_attn_norm. Llama/Qwen2: post_attention_layernorm -> pre_ffw_norm.
  Gemma 2/3: post_attention_layernorm -> post_attn_norm, pre_feedforward_layernorm ->
  pre_ffw_norm, post_feedforward_layernorm -> post_ffw_norm. Gemma norms are stored as
  HF stores them (w, applied as x * (1 + w), norm_style="gemma_rms").
This mapping is checked against transformers' Llama/Qwen2/Gemma/Gemma2/Gemma3 logits in
tests/model/test_model.py::test_logits_match_transformers (`_params_from_hf` there).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from score_jax import mesh as mesh_lib
from score_jax.model.config import ModelConfig
from score_jax.model.layers import Block, Proj, RMSNorm, normal, softcap

_KV_NAMES = ("batch", "length", "kv_heads", "head_dim")


@flax.struct.dataclass
class KVCache:
  """Explicit KV cache pytree.

  Attributes:
    k_BSKH, v_BSKH: tuples with one [B, S, K, H] array per layer.
    valid_BS: bool, slot holds a valid token.
    positions_BS: int32 RoPE position of each slot (for sliding-window masks).
    pos_B: int32, next RoPE position of each row (= number of valid tokens so far).
    index: int32 scalar, next slot to write.
  """
  k_BSKH: tuple[jax.Array, ...]
  v_BSKH: tuple[jax.Array, ...]
  valid_BS: jax.Array
  positions_BS: jax.Array
  pos_B: jax.Array
  index: jax.Array

  @property
  def max_len(self) -> int:
    return self.valid_BS.shape[1]

  @property
  def batch(self) -> int:
    return self.valid_BS.shape[0]


def cache_shardings(config: ModelConfig, batch: int, max_len: int, mesh: Mesh) -> KVCache:
  """KVCache of NamedShardings: batch over (data, fsdp), kv heads over tensor if divisible."""
  kv_shape = (batch, max_len, config.num_kv_heads, config.head_dim)
  kv = mesh_lib.logical_to_sharding(_KV_NAMES, mesh, kv_shape)
  bs = mesh_lib.logical_to_sharding(("batch", "length"), mesh, (batch, max_len))
  return KVCache(k_BSKH=(kv,) * config.num_layers, v_BSKH=(kv,) * config.num_layers,
                 valid_BS=bs, positions_BS=bs,
                 pos_B=mesh_lib.logical_to_sharding(("batch",), mesh, (batch,)),
                 index=NamedSharding(mesh, jax.P()))


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype: Any = None,
               mesh: Mesh | None = None) -> KVCache:
  """An empty cache for `batch` rows and `max_len` slots (dtype default: config.dtype).

  Usable inside jit; with `mesh` its arrays are placed (or constrained) batch-sharded.
  """
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch, max_len, config.num_kv_heads, config.head_dim)
  # Distinct buffers per layer, so that a donated cache never donates one buffer twice.
  cache = KVCache(k_BSKH=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
                  v_BSKH=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
                  valid_BS=jnp.zeros((batch, max_len), bool),
                  positions_BS=jnp.zeros((batch, max_len), jnp.int32),
                  pos_B=jnp.zeros((batch,), jnp.int32), index=jnp.zeros((), jnp.int32))
  if mesh is not None:
    shardings = cache_shardings(config, batch, max_len, mesh)
    if isinstance(cache.valid_BS, jax.core.Tracer):
      cache = jax.lax.with_sharding_constraint(cache, shardings)
    else:
      cache = jax.device_put(cache, shardings)
  return cache


class Embedder(nnx.Module):
  """Token embedding [V, D]; also the output projection when embeddings are tied."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    V, D = config.vocab_size, config.embed_dim
    self.init_std = D ** -0.5
    table = normal(rngs.params(), (V, D), self.init_std)
    self.embedding = nnx.Param(table.astype(jnp.dtype(config.param_dtype)),
                               out_sharding=("vocab", "embed"), eager_sharding=False)


class Transformer(nnx.Module):
  """Decoder-only transformer built from a `ModelConfig` (see the module docstring)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embedder = Embedder(config, rngs=rngs)
    self.layers = nnx.List([Block(config, i, rngs=rngs) for i in range(config.num_layers)])
    self.final_norm = RMSNorm(config.embed_dim, config)
    if not config.tie_embeddings:
      self.lm_head = Proj("BTD,DV->BTV", (config.embed_dim, config.vocab_size),
                          ("embed", "vocab"), fan_in=config.embed_dim, config=config,
                          rngs=rngs)

  def __call__(self, tokens_BT: jax.Array, valid_BT: jax.Array,
               cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    """Returns float32 logits_BTV and the updated cache (None without a cache).

    With a cache, the chunk must fit: index + T <= max_len (checked when the index is
    concrete; under jit an overflowing write would be clamped by dynamic_update_slice).
    """
    x_BTD, cache = self.hidden(tokens_BT, valid_BT, cache)
    return self.logits(x_BTD), cache

  def hidden(self, tokens_BT: jax.Array, valid_BT: jax.Array,
             cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    """Final-normed hidden states x_BTD (compute dtype) and the updated cache."""
    config = self.config
    B, T = tokens_BT.shape
    valid_BT = valid_BT.astype(bool)
    count_BT = jnp.cumsum(valid_BT.astype(jnp.int32), axis=1)
    if cache is None:
      positions_BT = jnp.maximum(count_BT - 1, 0)
      key_valid_BS, key_pos_BS = valid_BT, positions_BT
      q_slot_T = jnp.arange(T)
      k_slot_S = jnp.arange(T)
      index = None
    else:
      if cache.batch != B:
        raise ValueError(f"cache batch {cache.batch} != tokens batch {B}")
      index = cache.index
      if not isinstance(index, jax.core.Tracer) and int(index) + T > cache.max_len:
        raise ValueError(f"KVCache full: {int(index)} slots used + chunk of {T} > "
                         f"max_len {cache.max_len}; make the cache larger (init_cache)")
      positions_BT = jnp.maximum(cache.pos_B[:, None] + count_BT - 1, 0)
      key_valid_BS = jax.lax.dynamic_update_slice(cache.valid_BS, valid_BT, (0, index))
      key_pos_BS = jax.lax.dynamic_update_slice(cache.positions_BS, positions_BT,
                                                (0, index))
      q_slot_T = index + jnp.arange(T)
      k_slot_S = jnp.arange(cache.max_len)
    mask_BTS = key_valid_BS[:, None, :] & (k_slot_S[None, None, :] <= q_slot_T[None, :, None])
    if config.sliding_window:
      dist_BTS = positions_BT[:, :, None] - key_pos_BS[:, None, :]
      local_mask_BTS = mask_BTS & (dist_BTS < config.sliding_window)
    else:
      local_mask_BTS = mask_BTS

    table = self.embedder.embedding[...]
    x_BTD = jnp.take(table, tokens_BT, axis=0, mode="clip").astype(jnp.dtype(config.dtype))
    if config.scale_embeddings:
      x_BTD = x_BTD * jnp.asarray(config.embed_dim ** 0.5, x_BTD.dtype)
    x_BTD = mesh_lib.constrain(x_BTD, ("batch", "length", "act_embed"))

    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      mask = local_mask_BTS if layer.kind == "local" else mask_BTS
      kv = None if cache is None else (cache.k_BSKH[i], cache.v_BSKH[i])
      x_BTD, kv = _call_block(layer, config.remat, x_BTD, positions_BT, mask, kv, index)
      if cache is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
    x_BTD = self.final_norm(x_BTD)

    if cache is not None:
      cache = KVCache(k_BSKH=tuple(new_k), v_BSKH=tuple(new_v), valid_BS=key_valid_BS,
                      positions_BS=key_pos_BS,
                      pos_B=cache.pos_B + count_BT[:, -1].astype(jnp.int32),
                      index=(index + T).astype(jnp.int32))
    return x_BTD, cache

  def head_weight(self) -> jax.Array:
    """The output projection: the embedding [V, D] when tied, else lm_head.kernel [D, V]."""
    if self.config.tie_embeddings:
      return self.embedder.embedding[...]
    return self.lm_head.kernel[...]

  def logits(self, x_BTD: jax.Array) -> jax.Array:
    """float32 logits [..., V] of final hidden states (with the final softcap)."""
    return unembed(self.config, self.head_weight(), x_BTD)


def unembed(config: ModelConfig, head_weight: jax.Array, x_BTD: jax.Array) -> jax.Array:
  """float32 logits [..., V] of hidden states under `head_weight` (`Transformer.head_weight`),
  with the final softcap; a pure function, so that callers can project chunks of a sequence
  (see `score_jax.rl.scoring`)."""
  weight = head_weight.astype(x_BTD.dtype)
  spec = "...D,VD->...V" if config.tie_embeddings else "...D,DV->...V"
  logits = jnp.einsum(spec, x_BTD, weight, preferred_element_type=jnp.float32)
  return softcap(logits, config.final_logit_softcap)


_REMAT_POLICIES = {
    "full": None,   # save nothing: recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projections
}


def _call_block(layer, remat, x_BTD, positions_BT, mask_BTS, kv, index):
  """One block, rematerialised in the backward pass per `remat` (none | full | dots).

  Calls with a KV cache (prefill and decode) are never differentiated, so they skip remat:
  nothing to save, and nnx.remat cannot merge the block inside the sampler's while loop.
  """
  if remat == "none" or kv is not None:
    return layer(x_BTD, positions_BT, mask_BTS, kv, index)
  fn = nnx.remat(lambda blk, *args: blk(*args), policy=_REMAT_POLICIES[remat])
  return fn(layer, x_BTD, positions_BT, mask_BTS, kv, index)


def forward(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT: jax.Array,
            valid_BT: jax.Array, cache: KVCache | None = None
            ) -> tuple[jax.Array, KVCache | None]:
  """Pure forward pass: (float32 logits_BTV, updated cache). Usable under jit / grad."""
  model = nnx.merge(graphdef, params)
  return model(tokens_BT, valid_BT, cache)


def abstract_params(config: ModelConfig, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
  """graphdef and a params State of ShapeDtypeStructs (no allocation)."""
  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(seed)))
  return nnx.split(model)


def param_shardings(params_or_config: nnx.State | ModelConfig, mesh: Mesh) -> nnx.State:
  """Pytree of NamedSharding matching `params` (from logical names; for Orbax restore).

  Accepts a params State (real or abstract) or a ModelConfig.
  """
  state = params_or_config
  if isinstance(state, ModelConfig):
    _, state = abstract_params(state)

  def one(var):
    names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
    return var.replace(mesh_lib.logical_to_sharding(names, mesh, var.shape))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _redraw_grouped(model: Transformer, seed: int):
  """Redraws every random param with one normal draw per (shape, std) group.

  Compiling one threefry per param is slow (~0.1-0.4 s each on CPU); grouping makes
  the number of draws independent of the depth. The constructor's own draws become
  dead code and are removed by XLA.
  """
  groups: dict[tuple, list[nnx.Param]] = {}
  for _, node in nnx.iter_graph(model):
    if isinstance(node, Proj):
      groups.setdefault((node.kernel.shape, node.init_std), []).append(node.kernel)
    elif isinstance(node, Embedder):
      groups.setdefault((node.embedding.shape, node.init_std), []).append(node.embedding)
  key = jax.random.key(seed)
  for g, ((shape, std), params) in enumerate(sorted(groups.items())):
    draws = normal(jax.random.fold_in(key, g), (len(params),) + shape, std)
    for j, param in enumerate(params):
      param[...] = draws[j].astype(param.dtype)


def init_params(config: ModelConfig, mesh: Mesh | None = None, seed: int = 0
                ) -> tuple[nnx.GraphDef, nnx.State]:
  """Random params, created directly sharded on `mesh` (jit with out_shardings).

  Kernels and the embedding are N(0, 1/fan_in) (embedding: N(0, 1/D)), norm scales
  are the identity (ones, or zeros for gemma_rms), biases zero. Values depend only on
  (config, seed), not on the mesh. Params are stored in config.param_dtype; without a
  mesh they land on the default device.
  """
  graphdef, abstract = abstract_params(config, seed)
  shardings = param_shardings(abstract, mesh) if mesh is not None else None

  def create():
    model = Transformer(config, rngs=nnx.Rngs(seed))
    _redraw_grouped(model, seed)
    return nnx.state(model)

  params = jax.jit(create, out_shardings=shardings)()
  return graphdef, params
