"""Test helpers: Episodes for the losses and steps, and an optimiser that exposes grads."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_jax.rl import episode as episode_lib
from score_jax.rl.episode import Episode


def loss_episode(turn1_mask_BT, turn2_mask_BT, r1_B, r2_B, *later) -> Episode:
  """An Episode with these masks and rewards (`later` = mask3, r3, mask4, r4, ... for more
  attempts); tokens, valid and sampler log-probs are zeros of the masks' shape (the losses
  never read them)."""
  shape = jnp.shape(turn1_mask_BT)
  masks = [turn1_mask_BT, turn2_mask_BT, *later[0::2]]
  rewards = [r1_B, r2_B, *later[1::2]]
  return episode_lib.from_masks(jnp.zeros(shape, jnp.int32), jnp.ones(shape, bool),
                                [jnp.asarray(m) for m in masks],
                                [jnp.asarray(r) for r in rewards])


# Rows of very different lengths: (y1 span, y2 span) per row of a [8, 24] batch; groups of
# k = 2 rows share a prompt.
SPANS = [((2, 4), (6, 22)), ((2, 12), (13, 15)), ((2, 3), (5, 6)), ((2, 20), (21, 24)),
         ((2, 8), (10, 11)), ((2, 5), (7, 24)), ((2, 2), (4, 9)), ((2, 17), (18, 20))]
R1 = np.array([0, 1, 1, 0, 0, 0, 1, 1], np.float32)
R2 = np.array([1, 1, 0, 0, 1, 0, 1, 0], np.float32)


def varied_episode(vocab: int, seed: int = 0) -> Episode:
  """8 rows x 24 positions whose attempts have very different lengths (`SPANS`)."""
  rng = np.random.default_rng(seed)
  rows, width = len(SPANS), 24
  turn1, turn2 = np.zeros((rows, width), bool), np.zeros((rows, width), bool)
  for b, ((s1, e1), (s2, e2)) in enumerate(SPANS):
    turn1[b, s1:e1] = True
    turn2[b, s2:e2] = True
  return episode_lib.from_masks(rng.integers(0, vocab, (rows, width)).astype(np.int32),
                                np.ones((rows, width), bool), [turn1, turn2], [R1, R2])


# An "optimiser" whose state is the last gradient and whose update is zero: a step with it
# returns its exact gradient as the new optimiser state.
KEEP_GRADS = optax.GradientTransformation(
    lambda params: jax.tree.map(jnp.zeros_like, params),
    lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))
