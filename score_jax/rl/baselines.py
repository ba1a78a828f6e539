"""Training data of the paper's supervised baselines, built from the model's own samples.

- STaR (Zelikman et al.; SCoRe paper Sec. 4, "STaR D+"): sample two-turn traces, keep those
  that end right (wrong -> right, plus right -> right when `include_right_right`), and fine-tune
  on their second attempts. We run it online: each step samples from the current policy, which
  approximates the paper's rounds of generate -> filter -> fine-tune.
- Pair-SFT (Welleck et al.; SCoRe paper "Pair-SFT"): pair a wrong first attempt of the base
  model with a correct answer to the same problem, and fine-tune on that answer as the second
  attempt.

Both return Episodes for the supervised step (`score_jax.rl.step.make_sft_step`, which trains the
tokens of `turn1_mask | turn2_mask`): here only the kept rows' y2 tokens.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from score_jax.rl import rollout as rollout_lib
from score_jax.tasks import base


def star_episode(result: rollout_lib.RolloutResult, *, include_right_right: bool = True
                 ) -> tuple[rollout_lib.Episode, float]:
  """Keeps the y2 tokens of successful traces; returns (episode, fraction of rows kept)."""
  ep = result.episode
  keep = ep.r2_B > 0.5
  if not include_right_right:
    keep &= ep.r1_B < 0.5
  episode = ep._replace(turn1_mask_BT=np.zeros_like(ep.turn1_mask_BT),
                        turn2_mask_BT=ep.turn2_mask_BT & keep[:, None])
  return episode, float(keep.mean())


def pair_sft_episode(two_turn: rollout_lib.TwoTurnSampler, result: rollout_lib.RolloutResult,
                     correct_answer: Callable[[base.Problem], str]
                     ) -> tuple[rollout_lib.Episode, float]:
  """Pairs each wrong base first attempt with a correct answer; returns (episode, kept)."""
  problems: Sequence[base.Problem] = result.problems
  answers = [correct_answer(p) for p in problems]
  episode = rollout_lib.demonstration_episode(two_turn, problems, result.y1, answers)
  keep = result.episode.r1_B < 0.5
  episode = episode._replace(turn1_mask_BT=np.zeros_like(episode.turn1_mask_BT),
                             turn2_mask_BT=episode.turn2_mask_BT & keep[:, None])
  return episode, float(keep.mean())
