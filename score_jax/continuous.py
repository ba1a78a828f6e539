"""Continuous batching: a sampler that never waits on its slowest row.

  out = generate_continuous(graphdef, params, prompts, widths=(T1, T2), method=Greedy(),
                            rng=key, stop_ids=(eos,), pad_id=pad, slots=16,
                            extra_fn=lambda p, t, done: instruction_ids,
                            on_finish=lambda p, t, tokens, valid: ...)
  out.attempts[t - 1].tokens_BS   # [N, widths[t - 1]], rows in the order of `prompts`

A fixed number of slots S decode together (`score_jax.continuous_step`). A queue holds the
N prompts; each prompt runs a "program" of A = len(widths) attempts in one slot: prefill
the prompt, decode attempt 1; then for t = 2..A append `extra_fn(p, t, done)` (e.g.
end_of_turn + the instruction turn) to the SAME slot's cache and decode attempt t. So turn
t continues the slot's turn t-1 cache, as `generate(..., cache=out.cache)` does, and no
per-problem cache is kept anywhere else: a slot's memory is one chain's capacity. When a
slot's chain ends, the slot takes the next queued prompt (its cache rows are emptied first).

Host loop: decode a segment (a jitted `while_loop` of up to `segment_steps` steps that
also ends as soon as one slot finishes its attempt while work is waiting), harvest the
finished attempts (`on_finish` is called with each: the rollout hands them to the grader
from there, so grading overlaps decoding), then refill: prefill new prompts and turn-t
contexts into the freed slots in chunks of `chunk` tokens (static shapes: one program per
bucket of refilled rows, a power of two <= S), and decode on.

Equivalence: positions and masks are those of `sampler.generate` (padding takes no
position, a slot never attends to a previous occupant), so greedy tokens are the fixed-batch
sampler's and log-probs agree to float rounding (the attention sums run over another cache
layout). Sampling: attempt t of prompt p draws step i with the key
fold_in(fold_in(fold_in(rng, p), t), i) from batch-1 logits, so its tokens do not depend on
the slot, on S or on the other prompts (they differ from `generate`'s, which draws one
[B, V] Gumbel tensor per step).

Sharding: slot arrays are batch-sharded over ("data", "fsdp") like `generate`'s batch;
params keep their layout (GSPMD propagates). Several processes: every process runs the same
host loop on the same global prompts (the slot state read back each segment is all-gathered,
so every process takes the same decisions) and gets every row's result.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from score_jax import mesh as mesh_lib
from score_jax import multihost
from score_jax import stops as stops_lib
from score_jax.continuous_step import Slots, prefill, segment
from score_jax.model.transformer import cache_shardings, init_cache


@dataclasses.dataclass
class Attempt:
  """One attempt of every prompt (host arrays, rows in prompt order), as `SampleOutput`."""
  tokens_BS: np.ndarray      # int32, pad after the stop token
  logprobs_BS: np.ndarray    # float32, 0.0 where not valid
  valid_BS: np.ndarray       # bool
  done_B: np.ndarray         # bool, stopped on a stop id or a stop sequence

  @property
  def lengths_B(self) -> np.ndarray:
    return self.valid_BS.sum(axis=1).astype(np.int32)


Finished = tuple[int, int, np.ndarray, np.ndarray]   # (prompt, attempt, tokens_W, valid_W)


@dataclasses.dataclass
class ContinuousOutput:
  """`attempts[t - 1]`: attempt t; `stats`: counts of the host loop (prefills: prompts
  prefilled; extra_prefills: turn-t contexts appended; prefill_calls: jitted chunk calls;
  segments: decode segments; decode_steps: decode steps summed over segments)."""
  attempts: list[Attempt]
  stats: dict[str, int]


def prompt_rows(tokens_BT: Any, valid_BT: Any) -> list[list[int]]:
  """The valid ids of each row of a padded batch (the `generate` inputs)."""
  tokens_BT, valid_BT = np.asarray(tokens_BT), np.asarray(valid_BT, bool)
  return [[int(t) for t in row[ok]] for row, ok in zip(tokens_BT, valid_BT)]


def _host(x: jax.Array) -> np.ndarray:
  """The whole global array on this host (an all-gather across processes if needed)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _chunks(ids: Sequence[int], chunk: int) -> int:
  return max(1, -(-len(ids) // chunk))


def _bucket(r: int, slots: int) -> int:
  b = 1
  while b < r:
    b *= 2
  return min(b, slots)


def _init_slots(config, S: int, L: int, W: int, key_shape, mesh, tail_len: int = 1) -> Slots:
  cache = init_cache(config, S, L)
  cache = cache.replace(index=jnp.zeros((S,), jnp.int32))
  V = config.vocab_size
  state = Slots(cache=cache, logits_SV=jnp.zeros((S, V), jnp.float32),
                step_S=jnp.zeros((S,), jnp.int32), limit_S=jnp.zeros((S,), jnp.int32),
                done_S=jnp.zeros((S,), bool), tokens_SW=jnp.zeros((S, W), jnp.int32),
                logprobs_SW=jnp.zeros((S, W), jnp.float32),
                key_S=jnp.zeros((S,) + tuple(key_shape), jnp.uint32),
                tail_SL=stops_lib.empty_tail(S, tail_len))
  if mesh is None:
    return state
  shard = cache_shardings(config, S, L, mesh)
  shard = shard.replace(index=shard.pos_B)
  rows = lambda x: mesh_lib.batch_sharding(mesh, x.shape)  # noqa: E731
  shardings = Slots(cache=shard, logits_SV=rows(state.logits_SV), step_S=rows(state.step_S),
                    limit_S=rows(state.limit_S), done_S=rows(state.done_S),
                    tokens_SW=rows(state.tokens_SW), logprobs_SW=rows(state.logprobs_SW),
                    key_S=rows(state.key_S), tail_SL=rows(state.tail_SL))
  return jax.jit(lambda s: s, out_shardings=shardings)(state)


@jax.jit
def _attempt_keys(rng, prompt_R, attempt_R):
  one = lambda p, t: jax.random.key_data(  # noqa: E731
      jax.random.fold_in(jax.random.fold_in(rng, p), t))
  return jax.vmap(one)(prompt_R, attempt_R)


def generate_continuous(graphdef: Any, params: Any, prompts: Sequence[Sequence[int]], *,
                        widths: Sequence[int], method: Any, rng: jax.Array | None = None,
                        stop_ids: Sequence[int] = (), pad_id: int = 0, slots: int = 0,
                        segment_steps: int = 64, chunk: int = 32,
                        extra_fn: Callable[[int, int, bool], Sequence[int]] | None = None,
                        limits_NA: Any = None, stop_sequences: Sequence[Sequence[int]] = (),
                        on_finish: Callable[[list[Finished]], None] | None = None,
                        mesh: jax.sharding.Mesh | None = None) -> ContinuousOutput:
  """Samples A = len(widths) attempts of every prompt with continuous batching.

  Args:
    graphdef, params: the model.
    prompts: N lists of token ids (no padding; at least one id each).
    widths: the token budget of each attempt (the output widths).
    method, stop_ids, pad_id: as in `sampler.generate`.
    rng: PRNG key (default key 0); see the module docstring for the rule per step.
    slots: S, rows decoded at once (0: all N prompts at once, capped at N).
    segment_steps: most decode steps per segment before the host looks again.
    chunk: prefill chunk length C (contexts are left-padded to a multiple of C).
    extra_fn: (prompt index, attempt t >= 2, attempt t-1 ended on a stop id) -> ids
      appended before attempt t (required when A > 1). An attempt that ended on a stop
      sequence did not end on a stop id (so end_of_turn can follow it).
    limits_NA: optional int per-prompt, per-attempt limits (<= widths).
    stop_sequences: token-id sequences that end an attempt when its tokens end with one
      (`sampler.generate`'s; `score_jax.stops`).
    on_finish: called after each segment with the attempts that ended in it, a list of
      (prompt index, attempt t, tokens [W_t], valid [W_t]) (e.g. to hand them to a grader
      while decoding goes on).
    mesh: default the params' mesh.

  Returns:
    ContinuousOutput: one `Attempt` per attempt, rows in prompt order, and the loop's counts.
  """
  N, A = len(prompts), len(widths)
  if N == 0:
    raise ValueError("generate_continuous: no prompts given")
  if any(len(p) == 0 for p in prompts):
    raise ValueError("generate_continuous: a prompt has no ids; every prompt needs >= 1")
  if A > 1 and extra_fn is None:
    raise ValueError(f"generate_continuous: {A} attempts need an extra_fn giving the ids "
                     "appended before each later attempt")
  if min(widths) < 1 or chunk < 1 or segment_steps < 1 or slots < 0:
    raise ValueError(f"generate_continuous: widths {tuple(widths)}, chunk {chunk} and "
                     f"segment_steps {segment_steps} must be >= 1 and slots {slots} >= 0")
  widths = tuple(int(w) for w in widths)
  limits = np.tile(np.asarray(widths, np.int32), (N, 1))
  if limits_NA is not None:
    limits = np.minimum(np.asarray(limits_NA, np.int32).reshape(N, A), limits)
  stop_ids = tuple(int(s) for s in np.asarray(stop_ids, np.int64).reshape(-1))
  stop_sequences = stops_lib.canonical(stop_sequences)
  tail_len = max((len(q) for q in stop_sequences), default=1)
  mesh = mesh if mesh is not None else mesh_lib.mesh_of(params)
  rng = jax.random.key(0) if rng is None else rng
  config = nnx.merge(graphdef, params).config
  S = min(slots or N, N)
  W = max(widths)
  # Capacity of one slot: the longest chunk-padded prompt + every later context + budgets.
  extra_len = 0
  if A > 1:
    extra_len = max(len(extra_fn(p, t, d)) for p in range(N) for t in range(2, A + 1)
                    for d in (False, True))
  L = (max(_chunks(p, chunk) for p in prompts) * chunk + widths[0]
       + sum(-(-max(extra_len, 1) // chunk) * chunk + w for w in widths[1:]) + 1)
  key_shape = jax.random.key_data(rng).shape
  state = _init_slots(config, S, L, W, key_shape, mesh, tail_len)
  if mesh is not None:
    put = lambda x: multihost.put_batch(np.asarray(x), mesh)  # noqa: E731
  else:
    put = jnp.asarray

  out_tokens = [np.full((N, w), pad_id, np.int32) for w in widths]
  out_logps = [np.zeros((N, w), np.float32) for w in widths]
  out_done = [np.zeros(N, bool) for _ in widths]
  out_len = [np.zeros(N, np.int32) for _ in widths]
  stats = collections.Counter(prefills=0, extra_prefills=0, prefill_calls=0, segments=0,
                              decode_steps=0)
  queue = collections.deque(range(N))
  occupant = [-1] * S          # prompt index in each slot
  attempt = [0] * S            # its current attempt (1-based)
  work: list[tuple[int, list[int], bool]] = []   # (slot, ids, first) to prefill
  for s in range(S):
    occupant[s], attempt[s] = queue.popleft(), 1
    work.append((s, list(prompts[occupant[s]]), True))

  while True:
    if work:
      state = _refill(graphdef, params, state, work, occupant, attempt, limits, rng, chunk,
                      pad_id, S, stats, put)
      work = []
    if all(o < 0 for o in occupant):
      break
    # Stop a segment at the first finished attempt only when the host has work for the slot.
    waiting = bool(queue) or any(o >= 0 and a < A for o, a in zip(occupant, attempt))
    state, steps = segment(graphdef, params, state, np.int32(segment_steps), np.bool_(waiting),
                           method=method, stop_ids=stop_ids, pad_id=int(pad_id),
                           stop_sequences=stop_sequences)
    stats["segments"] += 1
    stats["decode_steps"] += int(_host(steps))
    step_S, done_S = _host(state.step_S), _host(state.done_S)
    ended = [s for s in range(S) if occupant[s] >= 0 and
             (done_S[s] or step_S[s] >= limits[occupant[s], attempt[s] - 1])]
    if not ended:
      continue
    tokens_SW, logps_SW = _host(state.tokens_SW), _host(state.logprobs_SW)
    finished = []
    for s in ended:
      p, t = occupant[s], attempt[s]
      w = widths[t - 1]
      out_tokens[t - 1][p] = tokens_SW[s, :w]
      out_logps[t - 1][p] = logps_SW[s, :w]
      out_done[t - 1][p] = bool(done_S[s])
      out_len[t - 1][p] = int(step_S[s])
      finished.append((p, t, tokens_SW[s, :w].copy(), np.arange(w) < int(step_S[s])))
      if t < A:
        attempt[s] = t + 1
        by_id = bool(done_S[s]) and (not stop_sequences or step_S[s] < 1 or
                                     int(tokens_SW[s, step_S[s] - 1]) in stop_ids)
        work.append((s, list(extra_fn(p, t + 1, by_id)), False))
      elif queue:
        occupant[s], attempt[s] = queue.popleft(), 1
        work.append((s, list(prompts[occupant[s]]), True))
      else:
        occupant[s], attempt[s] = -1, 0
    if on_finish is not None:
      on_finish(finished)
  attempts = []
  for t in range(A):
    valid = np.arange(widths[t])[None, :] < out_len[t][:, None]
    attempts.append(Attempt(tokens_BS=out_tokens[t], logprobs_BS=out_logps[t],
                            valid_BS=valid, done_B=out_done[t]))
  return ContinuousOutput(attempts, dict(stats))


def _refill(graphdef, params, state, work, occupant, attempt, limits, rng, chunk, pad_id, S,
            stats, put):
  """Prefills each (slot, ids, first) of `work` in chunks; the last chunk starts the slot's
  next attempt."""
  R = len(work)
  B = _bucket(R, S)
  used = {s for s, _, _ in work}
  spare = [s for s in range(S) if s not in used][:B - R]
  n_chunks = max(_chunks(ids, chunk) for _, ids, _ in work)
  width = n_chunks * chunk
  tokens = np.full((B, width), pad_id, np.int32)
  valid = np.zeros((B, width), bool)
  for r, (_, ids, _) in enumerate(work):
    tokens[r, width - len(ids):] = ids
    valid[r, width - len(ids):] = True
  slot_R = np.asarray([s for s, _, _ in work] + spare, np.int32)
  real = np.arange(B) < R
  first = np.asarray([f for _, _, f in work] + [False] * len(spare))
  prompt_R = np.asarray([occupant[s] for s in slot_R], np.int32)
  attempt_R = np.asarray([max(attempt[s], 1) for s in slot_R], np.int32)
  limit_R = np.asarray([limits[max(p, 0), a - 1] for p, a in zip(prompt_R, attempt_R)],
                       np.int32)
  key_R = np.asarray(_attempt_keys(rng, prompt_R, attempt_R))
  for j in range(n_chunks):
    cols = slice(j * chunk, (j + 1) * chunk)
    # A row takes part from its first chunk with a valid id (left padding: every later
    # chunk has some); that chunk empties the slot when the row starts a new occupant.
    real_j = real & valid[:, cols].any(axis=1)
    begins = ~valid[:, :j * chunk].any(axis=1)
    state = prefill(graphdef, params, state, put(slot_R), put(tokens[:, cols]),
                    put(valid[:, cols]), put(real_j), put(first & begins),
                    put(np.full(B, j == n_chunks - 1) & real),
                    put(limit_R), put(key_R), pad_id=int(pad_id))
    stats["prefill_calls"] += 1
  stats["prefills"] += int(sum(f for _, _, f in work))
  stats["extra_prefills"] += int(sum(not f for _, _, f in work))
  return state
