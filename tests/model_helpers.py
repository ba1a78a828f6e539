"""Helpers shared by the model, sampler and sharding tests."""

import jax


def randomize(params, seed=1):
  """Params with O(1) random norm scales / biases and larger kernels, so that every feature
  (biases, Gemma (1+w) norms, post-norms) affects the logits and greedy text is not
  degenerate."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = []
  for key, x in zip(keys, leaves):
    noise = jax.random.normal(key, x.shape, x.dtype)
    new.append(x + 2.0 * noise if x.ndim == 1 or x.std() == 0 else 3.0 * x.std() * noise)
  return jax.tree.unflatten(treedef, new)
