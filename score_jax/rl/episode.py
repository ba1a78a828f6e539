"""The one batch type from the sampler to the loss: `Episode`, and its layout.

Each row is ONE two-turn episode laid out as a single sequence of fixed length
P + T1 + I + T2 (fixed shapes: one compilation per run):

  [ x (prompt, left-padded to P) | y1 (T1) | extra (I) | y2 (T2) ]

`extra` is end_of_turn (where y1 did not stop by itself) + the second-turn instruction,
left-padded to I. Padding is marked invalid in `valid_BT`; `turn1_mask_BT` covers the y1
tokens and `turn2_mask_BT` the y2 tokens (y1 inside the turn-2 context is prompt for
turn 2, so only `turn1_mask_BT` covers it). One forward pass of the trainer scores both
turns with exactly the positions and masks the sampler used.

An Episode is a pytree (a NamedTuple of arrays): the rollout builds it in numpy, the
trainer puts it on the mesh as it is, and the jitted step and the losses read its
shape-suffixed fields directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np


class Episode(NamedTuple):
  """A batch of two-turn episodes (see the module docstring)."""
  tokens_BT: Any                 # int32
  valid_BT: Any                  # bool: real tokens (padding is False)
  turn1_mask_BT: Any             # bool: y1 tokens
  turn2_mask_BT: Any             # bool: y2 tokens
  r1_B: Any                      # float32 reward of y1
  r2_B: Any                      # float32 reward of y2
  sampler_logprobs_BT: Any       # float32 log pi_sampler(token), 0 outside y1 / y2


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Fixed sequence budgets of the four segments."""
  prompt: int          # P
  turn1: int           # T1
  extra: int           # I: end_of_turn + second-turn text
  turn2: int           # T2

  @property
  def total(self) -> int:
    return self.prompt + self.turn1 + self.extra + self.turn2


Segment = tuple[np.ndarray, np.ndarray]   # (tokens [B, n] int32, valid [B, n] bool)


def layout(prompt: Segment, turn1: Segment, extra: Segment, turn2: Segment,
           r1_B: Any, r2_B: Any, logprobs1_BS: np.ndarray | None = None,
           logprobs2_BS: np.ndarray | None = None) -> Episode:
  """The Episode `[prompt | turn1 | extra | turn2]` of four (tokens, valid) segments.

  `logprobs*_BS` are the sampler's log-probs of the attempts (zeros when None, e.g. for
  demonstrations).
  """
  segments = (prompt, turn1, extra, turn2)
  none_BS = [np.zeros(tokens.shape, bool) for tokens, _ in segments]
  zeros_BS = [np.zeros(tokens.shape, np.float32) for tokens, _ in segments]
  logp1 = zeros_BS[1] if logprobs1_BS is None else np.asarray(logprobs1_BS, np.float32)
  logp2 = zeros_BS[3] if logprobs2_BS is None else np.asarray(logprobs2_BS, np.float32)
  return Episode(
      tokens_BT=np.concatenate([tokens for tokens, _ in segments], axis=1),
      valid_BT=np.concatenate([valid for _, valid in segments], axis=1),
      turn1_mask_BT=np.concatenate([none_BS[0], turn1[1], none_BS[2], none_BS[3]], axis=1),
      turn2_mask_BT=np.concatenate([none_BS[0], none_BS[1], none_BS[2], turn2[1]], axis=1),
      r1_B=np.asarray(r1_B, np.float32), r2_B=np.asarray(r2_B, np.float32),
      sampler_logprobs_BT=np.concatenate([zeros_BS[0], logp1, zeros_BS[2], logp2], axis=1),
  )


def concat(episodes: list[Episode]) -> Episode:
  """Episodes stacked row-wise (same lengths)."""
  return Episode(*[np.concatenate(fields, axis=0) for fields in zip(*episodes)])
