"""Test helper: an Episode holding only what the losses read (masks and rewards)."""

import jax.numpy as jnp

from score_jax.rl.episode import Episode


def loss_episode(turn1_mask_BT, turn2_mask_BT, r1_B, r2_B) -> Episode:
  """An Episode with these masks and rewards; tokens, valid and sampler log-probs are zeros
  of the masks' shape (the losses never read them)."""
  shape = jnp.shape(turn1_mask_BT)
  return Episode(tokens_BT=jnp.zeros(shape, jnp.int32), valid_BT=jnp.ones(shape, bool),
                 turn1_mask_BT=turn1_mask_BT, turn2_mask_BT=turn2_mask_BT, r1_B=r1_B,
                 r2_B=r2_B, sampler_logprobs_BT=jnp.zeros(shape, jnp.float32))
