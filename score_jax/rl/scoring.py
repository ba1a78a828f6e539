"""Per-token log-probs and entropies of whole sequences, with the vocabulary projection done
a chunk of positions at a time.

A step needs, for every position t >= 1 of an episode, `log pi(tok_t | tok_<t)` (and, to
monitor, the entropy of that next-token distribution). The direct way (`model_lib.forward`,
then `losses.token_logprobs`) materialises float32 logits [B, T, V]: with Gemma's 262,144-token
vocabulary that is 1 GiB per 1,024 positions of one row, and the backward pass keeps it (and
its softmax) alive.

With `chunk = C > 0`, `sequence_stats` runs the transformer once to the final hidden states
x_BTD, then scans over the positions C at a time: each chunk's logits [B, C, V] are computed,
reduced to log-probs (and entropies) [B, C] and dropped; `jax.checkpoint` makes the backward
pass recompute each chunk's logits instead of saving them. The logits that exist at once are
then B * C * V floats (a small multiple of that in the backward pass), whatever T.

The math is unchanged: the same log-softmax of the same logits. Values agree with the
unchunked path to float32 rounding (XLA may block a [B, C, D] x [D, V] product differently
from a [B, T, D] one); tests check log-probs, entropies, the loss and its gradient.
`chunk = 0` (or a chunk >= T - 1) takes the direct path.
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from score_jax.model import transformer as model_lib
from score_jax.rl import losses


def sequence_stats(graphdef: nnx.GraphDef, params: nnx.State, tokens_BT: jax.Array,
                   valid_BT: jax.Array, *, chunk: int = 0, entropy: bool = False
                   ) -> tuple[jax.Array, jax.Array | None]:
  """(logp_BT, entropy_BT or None), aligned like `losses.token_logprobs` (column 0 is 0).

  `logp_BT` carries the gradient with respect to `params`; `entropy_BT` never does.
  """
  if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
    raise ValueError(f"sequence_stats: chunk={chunk!r} must be an int >= 0 "
                     "(0 = project the whole sequence at once)")
  B, T = tokens_BT.shape
  if chunk == 0 or chunk >= T - 1:
    logits_BTV, _ = model_lib.forward(graphdef, params, tokens_BT, valid_BT)
    logp_BT = losses.token_logprobs(logits_BTV, tokens_BT)
    entropy_BT = (jax.lax.stop_gradient(losses.token_entropy(logits_BTV)) if entropy
                  else None)
    return logp_BT, entropy_BT

  model = nnx.merge(graphdef, params)
  config = model.config
  x_BTD, _ = model.hidden(tokens_BT, valid_BT)
  head_weight = model.head_weight()
  n_chunks = -(-(T - 1) // chunk)
  pad = n_chunks * chunk - (T - 1)
  D = x_BTD.shape[-1]
  # Position s of the padded sequence predicts token s + 1.
  x_BSD = jnp.pad(x_BTD[:, :-1], ((0, 0), (0, pad), (0, 0)))
  target_BS = jnp.pad(tokens_BT[:, 1:], ((0, 0), (0, pad)))
  x_NBCD = x_BSD.reshape(B, n_chunks, chunk, D).swapaxes(0, 1)
  target_NBC = target_BS.reshape(B, n_chunks, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(weight: jax.Array, x_BCD: jax.Array, target_BC: jax.Array):
    logits_BCV = model_lib.unembed(config, weight, x_BCD)
    logp_BC = losses.logprobs_of(logits_BCV, target_BC)
    if entropy:
      entropy_BC = jax.lax.stop_gradient(losses.entropy_of(logits_BCV))
    else:
      entropy_BC = jnp.zeros_like(logp_BC)
    return logp_BC, entropy_BC

  def body(carry: None, xs: tuple[jax.Array, jax.Array]):
    return carry, one_chunk(head_weight, *xs)

  _, (logp_NBC, entropy_NBC) = jax.lax.scan(body, None, (x_NBCD, target_NBC))

  def unchunk(v_NBC: jax.Array) -> jax.Array:
    v_BS = v_NBC.swapaxes(0, 1).reshape(B, n_chunks * chunk)[:, :T - 1]
    return jnp.pad(v_BS, ((0, 0), (1, 0)))

  return unchunk(logp_NBC), (unchunk(entropy_NBC) if entropy else None)
