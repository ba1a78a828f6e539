"""The one batch type from the sampler to the loss: `Episode`, and its layout.

Each row is ONE episode of A >= 2 attempts (A = config.rollout.num_attempts; the paper's
protocol is A = 2) laid out as a single sequence of fixed length P + T1 + (A-1) (I + T2)
(fixed shapes: one compilation per run):

  [ x (prompt, left-padded to P) | y1 (T1) | extra (I) | y2 (T2) | extra (I) | y3 (T2) | ... ]

Each `extra` is end_of_turn (where the attempt before it did not stop by itself) + the
instruction p, left-padded to I, so that attempt t reads `x, y1, p, y2, p, ..., y_{t-1}, p`.
Padding is marked invalid in `valid_BT`. `attempt_BT[b, s] = t` marks the tokens of attempt
t (1-based) that are trained; 0 marks everything else: prompt, instructions, padding, and
attempts that are context only (e.g. another policy's first attempts). An earlier attempt
inside the context of a later one is prompt for the later one, so each token belongs to at
most one attempt by construction. `rewards_BA[b, t-1]` is the task's reward of attempt t.
One forward pass of the trainer scores every attempt with exactly the positions and masks
the sampler used. The trainer drops padding before the step (config.train.compact_*, see
`compact_episodes`): either the columns that no row of the step's batch needs
(`compact_columns`), or, per row, every column that row does not need, its needed columns
packed to the left (`pack_rows`); both pad back to a bucket: the same math on fewer columns.

An Episode is a pytree (a NamedTuple of arrays, every one with the batch first): the rollout
builds it in numpy, the trainer puts it on the mesh as it is, and the jitted step and the
losses read its shape-suffixed fields directly. `turn1_mask_BT`, `turn2_mask_BT`, `r1_B`,
`r2_B` are read-only views of attempts 1 and 2 (the paper's two turns).

Legend: B batch, T sequence length, A attempts, S segment length.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Episode(NamedTuple):
  """A batch of A-attempt episodes (see the module docstring)."""
  tokens_BT: Any                 # int32
  valid_BT: Any                  # bool: real tokens (padding is False)
  attempt_BT: Any                # int32: t on the trained tokens of attempt t, 0 elsewhere
  rewards_BA: Any                # float32: reward of attempt t in column t - 1
  sampler_logprobs_BT: Any       # float32 log pi_sampler(token), 0 outside the attempts

  @property
  def num_attempts(self) -> int:
    """A (static: the shape of `rewards_BA`)."""
    return int(self.rewards_BA.shape[1])

  def mask(self, t: int) -> Any:
    """bool [B, T]: the trained tokens of attempt t (1-based)."""
    return self.attempt_BT == t

  def reward(self, t: int) -> Any:
    """[B]: the reward of attempt t (1-based)."""
    return self.rewards_BA[:, t - 1]

  @property
  def trained_BT(self) -> Any:
    """bool [B, T]: the trained tokens of every attempt."""
    return self.attempt_BT > 0

  # Read-only views of the paper's two turns.
  turn1_mask_BT = property(lambda self: self.mask(1))
  turn2_mask_BT = property(lambda self: self.mask(2))
  r1_B = property(lambda self: self.reward(1))
  r2_B = property(lambda self: self.reward(2))

  def train_only(self, t: int, rows_B: Any = None) -> "Episode":
    """The same episodes with only attempt t trained, on the rows of `rows_B` (bool [B];
    default all): every other token becomes context (numpy only)."""
    keep_BT = self.attempt_BT == t
    if rows_B is not None:
      keep_BT = keep_BT & np.asarray(rows_B, bool)[:, None]
    return self._replace(attempt_BT=np.where(keep_BT, self.attempt_BT, 0).astype(np.int32))

  def without_attempt(self, t: int) -> "Episode":
    """The same episodes with attempt t's tokens as context only (not trained; numpy)."""
    return self._replace(attempt_BT=np.where(self.attempt_BT == t, 0, self.attempt_BT)
                         .astype(np.int32))


def from_masks(tokens_BT: Any, valid_BT: Any, masks_BT: Sequence[Any], rewards_B: Sequence[Any],
               sampler_logprobs_BT: Any = None) -> Episode:
  """An Episode from one disjoint bool mask and one reward vector per attempt (in order).

  numpy in, numpy out; jax arrays (or tracers) in, jax arrays out.
  """
  if len(masks_BT) != len(rewards_B) or len(masks_BT) < 1:
    raise ValueError(f"from_masks: {len(masks_BT)} masks and {len(rewards_B)} rewards: give "
                     "one of each per attempt")
  xp = jnp if any(isinstance(x, jax.Array) for x in (tokens_BT, *masks_BT, *rewards_B)) else np
  attempt_BT = xp.zeros(xp.shape(tokens_BT), xp.int32)
  for t, mask_BT in enumerate(masks_BT, start=1):
    overlap = attempt_BT > 0
    if xp is np and np.any(overlap & np.asarray(mask_BT, bool)):
      raise ValueError(f"from_masks: the mask of attempt {t} overlaps an earlier attempt's")
    attempt_BT = xp.where(xp.asarray(mask_BT, bool), t, attempt_BT).astype(xp.int32)
  rewards_BA = xp.stack([xp.asarray(r, xp.float32) for r in rewards_B], axis=1)
  if sampler_logprobs_BT is None:
    sampler_logprobs_BT = xp.zeros(xp.shape(tokens_BT), xp.float32)
  return Episode(tokens_BT, valid_BT, attempt_BT, rewards_BA, sampler_logprobs_BT)


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Fixed sequence budgets of the segments."""
  prompt: int          # P
  turn1: int           # T1: the first attempt
  extra: int           # I: end_of_turn + instruction, before each later attempt
  turn2: int           # T2: each later attempt (2..A)
  attempts: int = 2    # A

  def __post_init__(self):
    if not isinstance(self.attempts, int) or isinstance(self.attempts, bool) or self.attempts < 2:
      raise ValueError(f"Lengths.attempts={self.attempts!r} must be an int >= 2 "
                       "(config.rollout.num_attempts)")

  @property
  def total(self) -> int:
    return self.prompt + self.turn1 + (self.attempts - 1) * (self.extra + self.turn2)

  def attempt_start(self, t: int) -> int:
    """Column of the first token of attempt t (1-based) in the Episode."""
    if t == 1:
      return self.prompt
    return self.prompt + self.turn1 + (t - 1) * self.extra + (t - 2) * self.turn2

  def attempt_cols(self, t: int) -> slice:
    """Columns of attempt t's segment."""
    start = self.attempt_start(t)
    return slice(start, start + (self.turn1 if t == 1 else self.turn2))


Segment = tuple[np.ndarray, np.ndarray]   # (tokens [B, S] int32, valid [B, S] bool)


def layout(prompt: Segment, attempts: Sequence[Segment], extras: Sequence[Segment],
           rewards: Sequence[Any], logprobs: Sequence[np.ndarray | None] | None = None
           ) -> Episode:
  """The Episode `[prompt | y1 | extra | y2 | ... | extra | yA]` of (tokens, valid) segments.

  `attempts` holds the A attempt segments, `extras` the A - 1 extra chunks before attempts
  2..A, `rewards` one [B] vector per attempt; `logprobs` the sampler's log-probs per attempt
  (zeros where None or not given, e.g. for demonstrations).
  """
  A = len(attempts)
  if A < 1 or len(extras) != A - 1 or len(rewards) != A:
    raise ValueError(f"layout: {A} attempts need {A - 1} extra chunks and {A} reward vectors, "
                     f"got {len(extras)} and {len(rewards)}")
  logprobs = list(logprobs or []) + [None] * (A - len(logprobs or []))
  segments, attempt_of, logp_of = [prompt], [0], [None]
  for t, (attempt, logp) in enumerate(zip(attempts, logprobs), start=1):
    if t > 1:
      segments.append(extras[t - 2])
      attempt_of.append(0)
      logp_of.append(None)
    segments.append(attempt)
    attempt_of.append(t)
    logp_of.append(logp)
  attempt_BS, logp_BS = [], []
  for (tokens, valid), t, logp in zip(segments, attempt_of, logp_of):
    attempt_BS.append(np.where(valid, t, 0).astype(np.int32) if t else
                      np.zeros(tokens.shape, np.int32))
    logp_BS.append(np.zeros(tokens.shape, np.float32) if logp is None
                   else np.asarray(logp, np.float32))
  return Episode(
      tokens_BT=np.concatenate([tokens for tokens, _ in segments], axis=1),
      valid_BT=np.concatenate([valid for _, valid in segments], axis=1),
      attempt_BT=np.concatenate(attempt_BS, axis=1),
      rewards_BA=np.stack([np.asarray(r, np.float32) for r in rewards], axis=1),
      sampler_logprobs_BT=np.concatenate(logp_BS, axis=1),
  )


def concat(episodes: list[Episode]) -> Episode:
  """Episodes stacked row-wise (same lengths)."""
  return Episode(*[np.concatenate(fields, axis=0) for fields in zip(*episodes)])


# --- Column compaction ----------------------------------------------------------------------
# The fixed layout pads every segment to its budget, so many columns hold no valid token in
# any row of a step's batch. Dropping them (and padding at the end up to a bucket) changes
# nothing the model computes on the columns that remain:
#   * RoPE positions are the cumsum of `valid_BT` along the row, and a query attends a key
#     iff the key is valid and not after it (`model/transformer.py`): neither reads an
#     absolute column index, and a dropped column is invalid in every row;
#   * the log-prob of the token in column s is read from the hidden state of column s - 1
#     (`scoring.sequence_stats`): `needed_columns` keeps column s - 1 of every trained token,
#     so that pair stays adjacent even where column s - 1 is padding in the row;
#   * every per-token weight of the losses comes from `attempt_BT`, which moves with its
#     column; the columns appended at the end are invalid and untrained, and come after
#     every kept column, so causal attention never lets them change the kept ones.
# Packing each row (`pack_rows`) is the same argument row by row: a row keeps the columns IT
# needs, in order, so its valid tokens keep their order (hence their RoPE positions and what
# each attends; sliding windows compare positions), each trained token keeps the column
# before it (the hidden state that scores it, even where that column is padding:
# `needed_columns`), and the log-probs, sampler log-probs and attempt ids move with their
# columns. Nothing after `train.global_batch` reads an absolute column: the losses, the KL,
# Stage II's shaped rewards and every metric are per-token masks from `attempt_BT` or per
# row (`rewards_BA`); micro-batches split rows; `logit_chunk` splits the (shifted) columns
# of each row alike; `Lengths.attempt_start` and `train_only` / `without_attempt` are used
# on the rollout's Episode, before compaction.
# tests/rl/test_compact.py and test_pack.py check the arrays by hand and the losses and
# gradients of the step (test_pack.py fails if the column before a trained token is dropped).


def needed_columns(episode: Episode) -> np.ndarray:
  """bool [B, T]: per row, the columns that are valid or just before a trained token.

  A step keeps a column if any row of its whole batch needs it (`.any(axis=0)`, gathered
  over processes: `train.global_batch`).
  """
  valid_BT = np.asarray(episode.valid_BT, bool)
  trained_BT = np.asarray(episode.attempt_BT) > 0
  need_BT = valid_BT.copy()
  need_BT[:, :-1] |= trained_BT[:, 1:]
  return need_BT


def compact_width(kept: int, T: int, bucket: int) -> int:
  """The compacted number of columns: `kept` rounded up to a multiple of `bucket`, at most T
  (so a step has at most ceil(T / bucket) + 1 shapes, one compilation each)."""
  if not isinstance(bucket, int) or isinstance(bucket, bool) or bucket < 1:
    raise ValueError(f"compact_width: bucket={bucket!r} must be an int >= 1 "
                     "(config.train.compact_bucket)")
  return min(T, max(1, -(-kept // bucket)) * bucket)


def compact_columns(episode: Episode, keep_T: Any, bucket: int) -> Episode:
  """The Episode with only the columns of `keep_T` (bool [T]), in order, padded at the end
  with invalid, untrained columns (token 0, log-prob 0) to `compact_width` columns (numpy).

  `keep_T` must be the same for every part of a step's batch (on every process): use
  `needed_columns(...).any(axis=0)` over all rows. The math is unchanged (see the comment above).
  """
  keep_T = np.asarray(keep_T, bool)
  T = np.shape(episode.tokens_BT)[1]
  if keep_T.shape != (T,):
    raise ValueError(f"compact_columns: keep_T has shape {keep_T.shape}, expected ({T},) "
                     "like Episode.tokens_BT [B, T]")
  cols = np.flatnonzero(keep_T)
  width = compact_width(len(cols), T, bucket)
  if len(cols) == width == T:
    return episode
  return _map_columns(episode, lambda x: np.pad(  # zeros: 0 / False / 0.0
      np.asarray(x)[:, cols], ((0, 0), (0, width - len(cols)))))


def _map_columns(episode: Episode, take: Callable[[Any], np.ndarray]) -> Episode:
  """The Episode with `take` applied to each of its [B, T] fields (rewards_BA is per row)."""
  return episode._replace(tokens_BT=take(episode.tokens_BT), valid_BT=take(episode.valid_BT),
                          attempt_BT=take(episode.attempt_BT),
                          sampler_logprobs_BT=take(episode.sampler_logprobs_BT))


def pack_rows(episode: Episode, width: int, need_BT: Any = None) -> Episode:
  """Each row's needed columns (`needed_columns`), in order, moved to the left and padded at
  the end with invalid, untrained columns (token 0, log-prob 0) to `width` columns (numpy).

  `width` must be the same for every part of a step's batch (on every process): use
  `compact_width` of the largest `needed_columns(...).sum(axis=1)` over all rows (`need_BT`:
  this episode's `needed_columns`, if already computed). The math is unchanged (see the
  comment above).
  """
  need_BT = needed_columns(episode) if need_BT is None else np.asarray(need_BT, bool)
  B, T = need_BT.shape
  longest = int(need_BT.sum(axis=1).max(initial=0))
  if not longest <= width <= T:
    raise ValueError(f"pack_rows: width={width} must be in [{longest}, {T}]: at least the most "
                     f"columns a row needs ({longest}) and at most Episode.tokens_BT's {T}")
  # A stable sort of (not needed) puts each row's needed columns first, in their order.
  order_BW = np.argsort(~need_BT, axis=1, kind="stable")[:, :width]
  keep_BW = np.take_along_axis(need_BT, order_BW, axis=1)

  def take(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return np.where(keep_BW, np.take_along_axis(x, order_BW, axis=1), 0).astype(x.dtype)

  return _map_columns(episode, take)


COMPACT_MODES = ("columns", "rows")


def compact_mode(value: Any) -> str | None:
  """config.train.compact_episodes -> "columns", "rows" or None (off).

  True means "columns" (what True did before "rows" existed: W/config.json files of older
  runs read back unchanged); False, None, "false", "off", "none" mean off.
  """
  if value is True or (isinstance(value, str) and value.lower() == "true"):
    return "columns"
  if value is False or value is None or (isinstance(value, str)
                                         and value.lower() in ("false", "off", "none", "")):
    return None
  if isinstance(value, str) and value.lower() in COMPACT_MODES:
    return value.lower()
  raise ValueError(f"config.train.compact_episodes={value!r} is unknown: use one of "
                   f"{COMPACT_MODES} or False (off); True means 'columns'")


def compact_setting(train: Any) -> tuple[int, str | None]:
  """(bucket, mode) of config.train for `train.global_batch`: bucket 0 when off."""
  mode = compact_mode(train.get("compact_episodes", False))
  return (int(train.compact_bucket) if mode else 0), mode


def compact_episodes(episodes: Sequence[Episode], mode: str, bucket: int,
                     gather: Callable[[int, list], list]) -> list[Episode]:
  """The parts of one step's batch, compacted alike (`mode` "columns" or "rows").

  `gather(i, values)` returns one value per row of the WHOLE step's part i, given this
  process's rows' `values` (`multihost.gather_rows`): every process then keeps the same
  columns ("columns") or packs to the same width ("rows").
  """
  if mode not in COMPACT_MODES:
    raise ValueError(f"compact_episodes: mode={mode!r}: use one of {COMPACT_MODES} "
                     "(config.train.compact_episodes)")
  if not episodes:
    return []
  T = np.shape(episodes[0].tokens_BT)[1]
  needs = [needed_columns(ep) for ep in episodes]
  if mode == "columns":
    keep_T = np.zeros(T, bool)
    for i, need_BT in enumerate(needs):
      for row in gather(i, list(need_BT)):
        keep_T |= np.asarray(row, bool)
    return [compact_columns(ep, keep_T, bucket) for ep in episodes]
  longest = max(max(gather(i, need_BT.sum(axis=1).tolist()), default=0)
                for i, need_BT in enumerate(needs))
  width = compact_width(int(longest), T, bucket)
  return [pack_rows(ep, width, need_BT) for ep, need_BT in zip(episodes, needs)]
