"""The jitted kernels of continuous batching (`score_jax.continuous`): per-slot KV caches,
a chunked prefill into chosen slots, and a decode segment that stops when a slot frees.

Slot state (`Slots`, every array [S, ...] over the S slots): the KV cache of each slot is
the model's `KVCache` with one write index PER SLOT (`cache.index` is [S], not a scalar):
the model runs under `jax.vmap` over slots, each slot a batch-1 cache, so that each slot
writes at its own index and a refilled slot starts again at slot 0 of its own row.
A refilled slot's old entries are marked invalid (`valid_BS` False) and its position
counter reset, so the new occupant never attends to the previous one's keys; positions
count valid tokens exactly as in `score_jax.sampler.generate` (left padding and chunk
padding take no position).

Decode (one step, every active slot): token = method.sample(fold_in(key_s, step_s),
logits_s) per slot (a batch-1 draw: results do not depend on which slot or which other rows
run beside it); log-prob = log_softmax(raw logits) at the token (temperature 1, unfiltered,
as in `generate`); the token is fed to the slot's cache. A slot is active while it has
not drawn a stop id (or ended on a stop sequence: the last tokens of its attempt, kept in
`tail_SL` as in `sampler.generate`, see `score_jax.stops`) and has drawn fewer than its
limit. Inactive slots feed an invalid token that does not advance their index.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from score_jax import stops as stops_lib
from score_jax.model.transformer import KVCache


@flax.struct.dataclass
class Slots:
  """Device state of S slots (see the module docstring).

  Attributes:
    cache: KVCache with index [S].
    logits_SV: float32 logits of each slot's next token.
    step_S: int32 tokens drawn in the slot's current attempt.
    limit_S: int32 the attempt's token limit (0: the slot is idle).
    done_S: bool, the slot drew a stop id or ended on a stop sequence.
    tokens_SW, logprobs_SW: the current attempt's tokens (pad after the end) and
      log-probs (0.0 after the end); W = the widest attempt.
    key_S: uint32 raw PRNG key data of the slot's (prompt, attempt) key.
    tail_SL: int32 the last L tokens of the current attempt (`stops.EMPTY` before it has
      L; L = 1 and unread without stop sequences).
  """
  cache: KVCache
  logits_SV: jax.Array
  step_S: jax.Array
  limit_S: jax.Array
  done_S: jax.Array
  tokens_SW: jax.Array
  logprobs_SW: jax.Array
  key_S: jax.Array
  tail_SL: jax.Array


def _compute_params(graphdef, params):
  """Matrices in the compute dtype once (as `sampler._generate_impl` does)."""
  dtype = jnp.dtype(nnx.merge(graphdef, params).config.dtype)
  return jax.tree.map(
      lambda x: x.astype(dtype) if x.ndim >= 2 and jnp.issubdtype(x.dtype, jnp.floating)
      else x, params)


def _rows_hidden(graphdef, params, tokens_RT, valid_RT, cache_R: KVCache):
  """`Transformer.hidden` of each row on its own batch-1 cache (index [R])."""

  def one(tokens_T, valid_T, cache):
    model = nnx.merge(graphdef, params)
    cache1 = jax.tree.map(lambda x: x[None], cache)
    cache1 = cache1.replace(index=cache.index)
    x_1TD, cache1 = model.hidden(tokens_T[None], valid_T[None], cache1)
    out = jax.tree.map(lambda x: x[0], cache1.replace(index=cache1.index[None]))
    return x_1TD[0], out

  return jax.vmap(one)(tokens_RT, valid_RT, cache_R)


def _where_rows(keep_R, new, old):
  """Per leaf: rows of `new` where keep_R, else rows of `old`."""
  def one(n, o):
    return jnp.where(keep_R.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(one, new, old)


@functools.partial(jax.jit, static_argnames=("graphdef", "pad_id"), donate_argnames=("state",))
def prefill(graphdef, params, state: Slots, slot_R, tokens_RC, valid_RC, real_R, first_R,
            last_R, limit_R, key_R, *, pad_id: int) -> Slots:
  """Appends the chunk tokens_RC to slots slot_R (distinct) where real_R.

  first_R: the chunk starts a new occupant (the slot's cache is emptied first).
  last_R: the chunk ends the context: its last valid token's logits start an attempt of
    limit_R tokens with PRNG key data key_R (the attempt state is reset).
  Rows with real_R False are carried along unchanged (padding of the bucket of R).
  """
  params = _compute_params(graphdef, params)
  model = nnx.merge(graphdef, params)
  sub = jax.tree.map(lambda x: x[slot_R], state.cache)
  fresh = sub.replace(valid_BS=jnp.zeros_like(sub.valid_BS), pos_B=jnp.zeros_like(sub.pos_B),
                      index=jnp.zeros_like(sub.index))
  start = _where_rows(first_R, fresh, sub)
  x_RCD, new = _rows_hidden(graphdef, params, tokens_RC, valid_RC, start)
  new = _where_rows(real_R, new, sub)
  cache = jax.tree.map(lambda c, n: c.at[slot_R].set(n), state.cache, new)
  C = valid_RC.shape[1]
  last_pos_R = C - 1 - jnp.argmax(valid_RC[:, ::-1], axis=1)
  x_RD = jnp.take_along_axis(x_RCD, last_pos_R[:, None, None], axis=1)[:, 0]
  logits_RV = model.logits(x_RD)
  begin_R = real_R & last_R
  W = state.tokens_SW.shape[1]

  def put(x_S, v_R):
    old_R = x_S[slot_R]
    return x_S.at[slot_R].set(_where_rows(begin_R, v_R, old_R))

  R = slot_R.shape[0]
  return Slots(cache=cache,
               logits_SV=put(state.logits_SV, logits_RV),
               step_S=put(state.step_S, jnp.zeros((R,), jnp.int32)),
               limit_S=put(state.limit_S, limit_R.astype(jnp.int32)),
               done_S=put(state.done_S, jnp.zeros((R,), bool)),
               tokens_SW=put(state.tokens_SW, jnp.full((R, W), pad_id, jnp.int32)),
               logprobs_SW=put(state.logprobs_SW, jnp.zeros((R, W), jnp.float32)),
               key_S=put(state.key_S, key_R),
               tail_SL=put(state.tail_SL, jnp.full((R, state.tail_SL.shape[1]),
                                                   stops_lib.EMPTY, jnp.int32)))


def active(state: Slots) -> jax.Array:
  return ~state.done_S & (state.step_S < state.limit_S)


@functools.partial(jax.jit, static_argnames=("graphdef", "method", "stop_ids", "pad_id",
                                             "stop_sequences"),
                   donate_argnames=("state",))
def segment(graphdef, params, state: Slots, max_steps, stop_on_free, *, method,
            stop_ids: tuple[int, ...], pad_id: int,
            stop_sequences: stops_lib.StopSequences = ()) -> tuple[Slots, jax.Array]:
  """Up to `max_steps` decode steps of every active slot; stops early when no slot is
  active or, with `stop_on_free`, as soon as a slot that was active at the start ends its
  attempt (so that the host can refill it). Returns (state, steps run)."""
  params = _compute_params(graphdef, params)
  stops = jnp.asarray(stop_ids, jnp.int32)
  seqs_SL = jnp.asarray(stops_lib.stop_array(stop_sequences)) if stop_sequences else None
  S, W = state.tokens_SW.shape
  rows_S = jnp.arange(S)
  free0 = jnp.sum(~active(state))

  def cond(carry):
    i, st = carry
    act = active(st)
    freed = stop_on_free & (jnp.sum(~act) > free0)
    return (i < max_steps) & jnp.any(act) & ~freed

  def body(carry):
    i, st = carry
    act_S = active(st)
    keys_S = jax.vmap(jax.random.fold_in)(jax.random.wrap_key_data(st.key_S), st.step_S)
    token_S = jax.vmap(lambda k, l: method.sample(k, l[None])[0])(keys_S, st.logits_SV)
    logp_S = jnp.take_along_axis(jax.nn.log_softmax(st.logits_SV, axis=-1),
                                 token_S[:, None], axis=-1)[:, 0]
    token_S = jnp.where(act_S, token_S, pad_id).astype(jnp.int32)
    tokens_SW = st.tokens_SW.at[rows_S, st.step_S].set(token_S, mode="drop")
    logprobs_SW = st.logprobs_SW.at[rows_S, st.step_S].set(jnp.where(act_S, logp_S, 0.0),
                                                           mode="drop")
    done_S = st.done_S
    if stop_ids:
      done_S = done_S | (act_S & jnp.any(token_S[:, None] == stops[None, :], axis=1))
    tail_SL = st.tail_SL
    if stop_sequences:
      tail_SL = stops_lib.push(tail_SL, token_S, act_S)
      done_S = done_S | (act_S & stops_lib.matches(tail_SL, seqs_SL))
    x_S1D, cache = _rows_hidden(graphdef, params, token_S[:, None], act_S[:, None], st.cache)
    cache = cache.replace(index=jnp.where(act_S, cache.index, st.cache.index))
    logits_SV = nnx.merge(graphdef, params).logits(x_S1D[:, 0])
    st = st.replace(cache=cache, logits_SV=jnp.where(act_S[:, None], logits_SV, st.logits_SV),
                    step_S=st.step_S + act_S.astype(jnp.int32), done_S=done_S,
                    tokens_SW=tokens_SW, logprobs_SW=logprobs_SW, tail_SL=tail_SL)
    return i + 1, st

  steps, state = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))
  return state, steps
