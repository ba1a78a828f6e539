"""Autoregressive sampling: jitted prefill + `lax.while_loop` decode over a KV cache.

  out = generate(graphdef, params, prompt_BT, prompt_valid_BT, max_new_tokens=256,
                 method=TopP(0.95), rng=key, stop_ids=(eos,), pad_id=pad,
                 max_cache_len=turn1_and_turn2_capacity)
  out2 = generate(graphdef, params, extra_BT, extra_valid_BT, max_new_tokens=256,
                  method=..., rng=key2, stop_ids=(eos,), pad_id=pad, cache=out.cache)

The second call appends the turn-2 tokens (`x2 = [x, y1, instruction]` minus what the
cache already holds: a left-padded chunk whose padding is marked invalid) to the
turn-1 cache and continues from there; it donates (invalidates) `out.cache`.

Log-probs: `logprobs_BS` is `log_softmax(raw logits)` at the sampled token, where the raw
logits are the model's output (after the final softcap) at temperature 1 with no
top-k / top-p filtering, i.e. log pi(y_t | context): the policy log-prob that RL needs,
whatever sampling method drew the token.

Each prompt row must end its chunk with a valid token (left padding; right padding is
also fine because the last *valid* position is used); a row with no valid token in its
chunk samples from unspecified logits. One compiled program per (graphdef, method,
max_new_tokens, stop_ids, pad_id, shapes): bucket prompt lengths to avoid recompiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from score_jax import mesh as mesh_lib
from score_jax import multihost
from score_jax import stops as stops_lib
from score_jax.model.transformer import KVCache, init_cache


@dataclasses.dataclass(frozen=True)
class Greedy:
  """Argmax decoding (temperature 0)."""

  def apply(self, logits_BV: jax.Array) -> jax.Array:
    """Keeps only the maximal logit(s); the rest become -inf."""
    top_B1 = jnp.max(logits_BV, axis=-1, keepdims=True)
    return jnp.where(logits_BV >= top_B1, logits_BV, -jnp.inf)

  def sample(self, rng: jax.Array, logits_BV: jax.Array) -> jax.Array:
    del rng
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Stochastic:
  """Shared sampling: a categorical draw from `apply(logits)`."""

  def apply(self, logits_BV: jax.Array) -> jax.Array:
    raise NotImplementedError

  def sample(self, rng: jax.Array, logits_BV: jax.Array) -> jax.Array:
    """Gumbel-max draw: argmax(logits + Gumbel noise), the same draw as
    `jax.random.categorical(rng, logits)`, written as max-then-first-index because XLA on
    CPU otherwise fuses the noise into a slow, unvectorised argmax."""
    logits_BV = self.apply(logits_BV.astype(jnp.float32))
    z_BV = logits_BV + jax.random.gumbel(rng, logits_BV.shape, jnp.float32)
    top_B1 = jnp.max(z_BV, axis=-1, keepdims=True)
    ids_V = jnp.arange(z_BV.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(z_BV >= top_B1, ids_V, z_BV.shape[-1]), axis=-1)


def _check_temperature(t: float, name: str):
  if not t > 0:
    raise ValueError(f"{name}: temperature t={t} must be > 0 (use Greedy() for t=0)")


@dataclasses.dataclass(frozen=True)
class Temperature(_Stochastic):
  """Samples from softmax(logits / t)."""
  t: float = 1.0

  def __post_init__(self):
    _check_temperature(self.t, "Temperature")

  def apply(self, logits_BV: jax.Array) -> jax.Array:
    return logits_BV / self.t


@dataclasses.dataclass(frozen=True)
class TopK(_Stochastic):
  """Samples among the k largest logits of logits / t (ties at the k-th value kept)."""
  k: int
  t: float = 1.0

  def __post_init__(self):
    if self.k < 1:
      raise ValueError(f"TopK: k={self.k} must be >= 1")
    _check_temperature(self.t, "TopK")

  def apply(self, logits_BV: jax.Array) -> jax.Array:
    logits_BV = logits_BV / self.t
    k = min(self.k, logits_BV.shape[-1])
    kth_B1 = jax.lax.top_k(logits_BV, k)[0][..., -1:]
    return jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class TopP(_Stochastic):
  """Nucleus sampling: the smallest set of most likely tokens of softmax(logits / t)
  whose total probability is >= p (ties at the threshold kept)."""
  p: float
  t: float = 1.0

  def __post_init__(self):
    if not 0 < self.p <= 1:
      raise ValueError(f"TopP: p={self.p} must be in (0, 1]")
    _check_temperature(self.t, "TopP")

  def apply(self, logits_BV: jax.Array) -> jax.Array:
    logits_BV = logits_BV / self.t
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)                   # descending
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV         # mass of better tokens
    keep_BV = before_BV < self.p
    keep_BV = keep_BV.at[..., 0].set(True)
    threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV >= threshold_B1, logits_BV, -jnp.inf)


Method = Greedy | Temperature | TopK | TopP


def sampling_method(temperature: float = 0.0, top_k: int | None = 0,
                    top_p: float | None = 1.0) -> Method:
  """The method for (temperature, top_k, top_p); temperature 0 is greedy.

  top_k 0 or None and top_p 1.0 or None mean "off" (the config's and transformers'
  conventions); giving both top_k and top_p is an error.
  """
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0")
  use_top_k = bool(top_k)
  use_top_p = top_p is not None and float(top_p) < 1.0
  if use_top_k and use_top_p:
    raise ValueError(f"top_k={top_k} and top_p={top_p}: give top_k or top_p, not both")
  if temperature == 0:
    return Greedy()
  if use_top_k:
    return TopK(int(top_k), float(temperature))
  if use_top_p:
    return TopP(float(top_p), float(temperature))
  return Temperature(float(temperature))


@dataclasses.dataclass(frozen=True)
class VocabLimit:
  """`inner`, but never drawing ids >= `vocab` (ids the tokenizer lacks: models often pad
  their embedding past the tokenizer's vocabulary)."""
  inner: Any
  vocab: int

  def _mask(self, logits_BV: jax.Array) -> jax.Array:
    ids_V = jnp.arange(logits_BV.shape[-1])
    return jnp.where(ids_V < self.vocab, logits_BV, -jnp.inf)

  def apply(self, logits_BV: jax.Array) -> jax.Array:
    return self.inner.apply(self._mask(logits_BV))

  def sample(self, rng: jax.Array, logits_BV: jax.Array) -> jax.Array:
    return self.inner.sample(rng, self._mask(logits_BV))


def limit_vocab(method: Any, tokenizer_vocab: int, model_vocab: int) -> Any:
  """`method` restricted to the tokenizer's ids when the model's vocabulary is larger."""
  return VocabLimit(method, tokenizer_vocab) if model_vocab > tokenizer_vocab else method


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, length: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, int]:
  """(tokens_BT, valid_BT, truncated) of id lists left-padded with `pad_id`.

  `length` None pads to the longest row (no rows, or only empty ones, is an error);
  otherwise rows longer than `length` lose their first ids, and `truncated` counts them.
  """
  if length is None:
    if not rows:
      raise ValueError("no prompts given")
    length = max(len(r) for r in rows)
    if length == 0:
      raise ValueError("all prompts are empty")
  tokens_BT = np.full((len(rows), length), pad_id, np.int32)
  valid_BT = np.zeros((len(rows), length), bool)
  truncated = 0
  for i, ids in enumerate(rows):
    ids = list(ids)
    if len(ids) > length:
      ids, truncated = ids[len(ids) - length:], truncated + 1
    if ids:
      tokens_BT[i, length - len(ids):] = ids
      valid_BT[i, length - len(ids):] = True
  return tokens_BT, valid_BT, truncated


@flax.struct.dataclass
class SampleOutput:
  """Result of `generate`.

  Attributes:
    tokens_BS: int32 new tokens; the stop token is the last valid one, pad_id after it.
    logprobs_BS: float32 log pi(token | context) at temperature 1; 0.0 where not valid.
    valid_BS: bool, generated and not after the stop token.
    lengths_B: int32 number of valid new tokens (stop token included).
    done_B: bool, the row stopped on a stop token or a stop sequence.
    cache: the KVCache after the call (prompt + all fed tokens), to continue from.
  """
  tokens_BS: jax.Array
  logprobs_BS: jax.Array
  valid_BS: jax.Array
  lengths_B: jax.Array
  done_B: jax.Array
  cache: KVCache


def _last_valid(x_BTD: jax.Array, valid_BT: jax.Array) -> jax.Array:
  """x at the last valid position of each row -> [B, D]."""
  T = valid_BT.shape[1]
  last_B = T - 1 - jnp.argmax(valid_BT[:, ::-1], axis=1)
  return jnp.take_along_axis(x_BTD, last_B[:, None, None], axis=1)[:, 0]


def _generate_impl(graphdef, params, tokens_BT, valid_BT, max_new_B, rng, cache, *,
                   max_new_tokens, method, stop_ids, pad_id, max_cache_len, mesh,
                   stop_sequences=()):
  dtype = jnp.dtype(nnx.merge(graphdef, params).config.dtype)
  # Matrices in the compute dtype once, not at every step: the same values the model
  # would cast them to at use (decode is memory-bound); 1-D norm scales stay as stored.
  params = jax.tree.map(
      lambda x: x.astype(dtype) if x.ndim >= 2 and jnp.issubdtype(x.dtype, jnp.floating)
      else x, params)
  model = nnx.merge(graphdef, params)
  B = tokens_BT.shape[0]
  S = max_new_tokens
  if cache is None:
    cache = init_cache(model.config, B, max_cache_len, mesh=mesh)
  x_BTD, cache = model.hidden(tokens_BT, valid_BT, cache)
  logits_BV = model.logits(_last_valid(x_BTD, valid_BT))
  stops = jnp.asarray(stop_ids, jnp.int32)
  seqs_SL = jnp.asarray(stops_lib.stop_array(stop_sequences)) if stop_sequences else None

  def cond(carry):
    i, _, _, _, _, _, done_B = carry[:7]
    finished_B = done_B | (i >= max_new_B)
    return (i < S) & ~jnp.all(finished_B)

  def body(carry):
    i, cache, logits_BV, tokens_BS, logprobs_BS, valid_BS, done_B = carry[:7]
    active_B = ~done_B & (i < max_new_B)
    token_B = method.sample(jax.random.fold_in(rng, i), logits_BV)
    logprob_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BV, axis=-1),
                                    token_B[:, None], axis=-1)[:, 0]
    token_B = jnp.where(active_B, token_B, pad_id).astype(jnp.int32)
    tokens_BS = jax.lax.dynamic_update_slice(tokens_BS, token_B[:, None], (0, i))
    logprobs_BS = jax.lax.dynamic_update_slice(
        logprobs_BS, jnp.where(active_B, logprob_B, 0.0)[:, None], (0, i))
    valid_BS = jax.lax.dynamic_update_slice(valid_BS, active_B[:, None], (0, i))
    if stop_ids:
      done_B = done_B | (active_B & jnp.any(token_B[:, None] == stops[None, :], axis=1))
    tail = ()
    if stop_sequences:   # the last L generated tokens of each row (see score_jax.stops)
      tail = (stops_lib.push(carry[7], token_B, active_B),)
      done_B = done_B | (active_B & stops_lib.matches(tail[0], seqs_SL))
    step = nnx.merge(graphdef, params)
    x_B1D, cache = step.hidden(token_B[:, None], active_B[:, None], cache)
    logits_BV = step.logits(x_B1D[:, 0])
    return (i + 1, cache, logits_BV, tokens_BS, logprobs_BS, valid_BS, done_B) + tail

  carry = (jnp.zeros((), jnp.int32), cache, logits_BV,
           jnp.full((B, S), pad_id, jnp.int32), jnp.zeros((B, S), jnp.float32),
           jnp.zeros((B, S), bool), jnp.zeros((B,), bool))
  if stop_sequences:
    carry += (stops_lib.empty_tail(B, seqs_SL.shape[1]),)
  _, cache, _, tokens_BS, logprobs_BS, valid_BS, done_B = jax.lax.while_loop(
      cond, body, carry)[:7]
  return SampleOutput(tokens_BS=tokens_BS, logprobs_BS=logprobs_BS, valid_BS=valid_BS,
                      lengths_B=valid_BS.sum(axis=1).astype(jnp.int32), done_B=done_B,
                      cache=cache)


_generate_jit = jax.jit(
    _generate_impl,
    static_argnames=("graphdef", "max_new_tokens", "method", "stop_ids", "pad_id",
                     "max_cache_len", "mesh", "stop_sequences"),
    donate_argnames=("cache",))


def _batch_input(x: Any, dtype: Any, mesh: jax.sharding.Mesh | None) -> jax.Array:
  """A [B, ...] input batch-sharded on `mesh`: host data (the same global batch on every
  process) or a global jax.Array (e.g. `multihost.put_local_batch` of each process's rows)."""
  if isinstance(x, jax.Array):
    x = x if x.dtype == dtype else x.astype(dtype)
    return multihost.put_batch(x, mesh)
  x = np.asarray(x, dtype)
  return multihost.put_batch(x, mesh) if mesh is not None else jnp.asarray(x)


def generate(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT: Any, valid_BT: Any, *,
             max_new_tokens: int, method: Method, rng: jax.Array | None = None,
             stop_ids: Sequence[int] | np.ndarray = (), pad_id: int = 0,
             cache: KVCache | None = None, max_cache_len: int | None = None,
             max_new_tokens_B: Any = None, mesh: jax.sharding.Mesh | None = None,
             stop_sequences: Sequence[Sequence[int]] = ()) -> SampleOutput:
  """Samples up to `max_new_tokens` tokens per row after the chunk `tokens_BT`.

  Args:
    graphdef, params: the model (`score_jax.model.transformer.init_params` or an importer).
    tokens_BT, valid_BT: the chunk to append (prompt, or the turn-2 extra tokens);
      invalid tokens are padding (not attended to, no position). Host arrays (the whole
      batch, the same on every process) or global jax.Arrays (on several processes: built
      from each process's rows with `multihost.put_local_batch`).
    max_new_tokens: static decode budget S (the output width).
    method: Greedy() | Temperature(t) | TopK(k, t) | TopP(p, t).
    rng: PRNG key (default key 0; fold_in(rng, step) is used at each step).
    stop_ids: token ids that end a row (kept as its last valid token).
    pad_id: token written after a row ended.
    cache: continue this cache (it is donated: do not reuse it after the call);
      None starts a fresh cache of `max_cache_len` slots.
    max_cache_len: capacity of a fresh cache (default T + max_new_tokens); make it
      cover every later continuation too.
    max_new_tokens_B: optional int per-row limits (<= max_new_tokens).
    mesh: mesh to run on (default: the mesh the params are sharded on, if any).
    stop_sequences: token-id sequences that end a row when its generated tokens end with
      one (kept as its last valid tokens, like a stop id; `score_jax.stops`).

  Returns:
    SampleOutput (see its docstring); logprobs are temperature-1, unfiltered.
  """
  B, T = np.shape(tokens_BT)
  if np.shape(valid_BT) != (B, T):
    raise ValueError(f"valid_BT shape {np.shape(valid_BT)} != tokens_BT shape {(B, T)}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  stop_ids = tuple(int(s) for s in np.asarray(stop_ids, dtype=np.int64).reshape(-1))
  mesh = mesh if mesh is not None else mesh_lib.mesh_of(params)
  if cache is None:
    max_cache_len = max_cache_len or T + max_new_tokens
    if max_cache_len < T + max_new_tokens:
      raise ValueError(f"max_cache_len={max_cache_len} < prompt length {T} + "
                       f"max_new_tokens {max_new_tokens}")
  else:
    if max_cache_len not in (None, cache.max_len):
      raise ValueError(f"max_cache_len={max_cache_len} given with a cache of "
                       f"{cache.max_len} slots; leave it None when continuing a cache")
    max_cache_len = None
    if not isinstance(cache.index, jax.core.Tracer):
      need = int(cache.index) + T + max_new_tokens
      if need > cache.max_len:
        raise ValueError(
            f"cache too small: {int(cache.index)} slots used + chunk {T} + max_new_tokens "
            f"{max_new_tokens} = {need} > capacity {cache.max_len}; pass a larger "
            "max_cache_len to the first generate call")
    if cache.batch != B:
      raise ValueError(f"cache batch {cache.batch} != tokens batch {B}")
  if max_new_tokens_B is None:
    max_new_B = np.full((B,), max_new_tokens, np.int32)
  else:
    max_new_B = np.minimum(np.asarray(max_new_tokens_B, np.int32), max_new_tokens)
    if max_new_B.shape != (B,):
      raise ValueError(f"max_new_tokens_B shape {max_new_B.shape} != ({B},)")
  rng = jax.random.key(0) if rng is None else rng
  tokens_BT = _batch_input(tokens_BT, jnp.int32, mesh)
  valid_BT = _batch_input(valid_BT, bool, mesh)
  max_new_B = _batch_input(max_new_B, jnp.int32, mesh)
  ctx = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  with ctx:
    return _generate_jit(graphdef, params, tokens_BT, valid_BT, max_new_B, rng, cache,
                         max_new_tokens=max_new_tokens, method=method, stop_ids=stop_ids,
                         pad_id=int(pad_id), max_cache_len=max_cache_len, mesh=mesh,
                         stop_sequences=stops_lib.canonical(stop_sequences))
