"""Chunked vocabulary projection (`score_jax.rl.scoring`) is a memory setting, nothing else.

Log-probs, entropies, the RL and SFT losses and their gradients agree with the direct path
(whole [B, T, V] logits) for tied and untied heads, with and without a final softcap, for
chunks that do and do not divide T - 1; and the compiled step's temporary memory no longer
holds a [B, T, V] float32 logits tensor.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.model import transformer as model_lib
from score_jax.model.config import tiny
from score_jax.rl import losses
from score_jax.rl import scoring
from score_jax.rl import step as step_lib
from score_jax.rl.episode import from_masks
from tests.episodes import KEEP_GRADS, varied_episode


def _close(got, want, rtol=1e-5):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max() + 1e-12)


@pytest.mark.parametrize("family", ["llama", "gemma2"])   # untied / tied + final softcap
@pytest.mark.parametrize("chunk", [1, 5, 23])             # 23 = T - 1: one chunk, no pad
def test_chunked_stats_match_the_direct_path(family, chunk):
  config = tiny(family)
  graphdef, params = model_lib.init_params(config, None, seed=1)
  episode = varied_episode(config.vocab_size, seed=2)
  want_logp, want_ent = scoring.sequence_stats(graphdef, params, episode.tokens_BT,
                                               episode.valid_BT, chunk=0, entropy=True)
  # The direct path is the old code: forward + token_logprobs / token_entropy.
  logits_BTV, _ = model_lib.forward(graphdef, params, episode.tokens_BT, episode.valid_BT)
  np.testing.assert_array_equal(want_logp, losses.token_logprobs(logits_BTV,
                                                                 episode.tokens_BT))
  np.testing.assert_array_equal(want_ent, losses.token_entropy(logits_BTV))
  got_logp, got_ent = scoring.sequence_stats(graphdef, params, episode.tokens_BT,
                                             episode.valid_BT, chunk=chunk, entropy=True)
  assert got_logp.shape == want_logp.shape == (8, 24)
  np.testing.assert_allclose(got_logp, want_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_ent, want_ent, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(got_logp[:, 0]).max()) == 0.0 and float(got_ent[:, 0].max()) == 0.0


def test_chunked_gradient_matches_and_entropy_has_none():
  config = tiny("gemma2")
  graphdef, params = model_lib.init_params(config, None, seed=3)
  episode = varied_episode(config.vocab_size, seed=4)
  w_BT = jnp.asarray(np.random.default_rng(0).normal(size=(8, 24)), jnp.float32)

  def loss(p, chunk):
    logp_BT, ent_BT = scoring.sequence_stats(graphdef, p, episode.tokens_BT, episode.valid_BT,
                                             chunk=chunk, entropy=True)
    return jnp.sum(w_BT * logp_BT) + jnp.sum(ent_BT)   # the entropy must add no gradient

  want = jax.grad(lambda p: jnp.sum(w_BT * scoring.sequence_stats(
      graphdef, p, episode.tokens_BT, episode.valid_BT)[0]))(params)
  for chunk in (0, 4):
    _close(jax.grad(loss)(params, chunk), want)


@pytest.mark.parametrize("kl_mode,estimator,micro", [("reward", "k1", 1), ("loss", "k3", 2)])
def test_rl_step_is_the_same_with_chunked_logits(kl_mode, estimator, micro):
  config = tiny("gemma3")
  graphdef, params = model_lib.init_params(config, None, seed=0)
  ref = jax.tree.map(lambda x: x * 1.03, params)
  episode = varied_episode(config.vocab_size)
  cfg = losses.LossConfig(stage="stage2", beta1=0.3, samples_per_prompt=2,
                          kl_mode=kl_mode, kl_estimator=estimator)
  out = []
  for chunk in (0, 6):
    step = step_lib.make_rl_step(graphdef, KEEP_GRADS, cfg, micro, logit_chunk=chunk)
    _, grads, metrics = step(jax.tree.map(jnp.copy, params), KEEP_GRADS.init(params), ref,
                             episode)
    out.append((jax.device_get(metrics), jax.device_get(grads)))
  (want_m, want_g), (got_m, got_g) = out
  assert abs(float(want_m["pg_loss_t2"])) > 1e-3
  for key in ("loss", "pg_loss_t1", "pg_loss_t2", "kl_t1", "kl_t2", "entropy_t1",
              "entropy_t2", "sampler_logp_gap", "grad_norm"):
    np.testing.assert_allclose(got_m[key], want_m[key], rtol=1e-5, atol=1e-7, err_msg=key)
  _close(got_g, want_g)


def test_sft_step_is_the_same_with_chunked_logits():
  config = tiny("llama")
  graphdef, params = model_lib.init_params(config, None, seed=0)
  episode = varied_episode(config.vocab_size)
  out = []
  for chunk in (0, 7):
    step = step_lib.make_sft_step(graphdef, KEEP_GRADS, 2, logit_chunk=chunk)
    _, grads, m = step(jax.tree.map(jnp.copy, params), KEEP_GRADS.init(params), None, episode)
    out.append((jax.device_get(m), jax.device_get(grads)))
  (m0, g0), (m1, g1) = out
  for key in ("loss", "nll_t1", "nll_t2"):
    np.testing.assert_allclose(m1[key], m0[key], rtol=1e-6)
  _close(g1, g0)


def test_bad_chunk_is_refused():
  config = tiny("llama")
  graphdef, params = model_lib.init_params(config, None, seed=0)
  tokens_BT = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="chunk=-1 must be an int >= 0"):
    scoring.sequence_stats(graphdef, params, tokens_BT, tokens_BT > -1, chunk=-1)


def test_chunked_step_never_holds_whole_logits():
  """A large vocabulary (V = 65536, T = 128): the direct step's compiled temporaries hold
  several [B, T, V] float32 tensors (128 MiB each here; measured 547 MB in all); with chunks
  of 8 positions, less than half of one (measured 45.5 MB)."""
  config = tiny("gemma3", vocab_size=65536)
  graphdef, params = model_lib.init_params(config, None, seed=0)
  B, T = 4, 128
  rng = np.random.default_rng(0)
  tokens_BT = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
  mask_BT = np.zeros((B, T), bool)
  mask_BT[:, 10:] = True
  episode = from_masks(tokens_BT, np.ones((B, T), bool), [mask_BT & False, mask_BT],
                       [np.zeros(B, np.float32), np.ones(B, np.float32)])
  cfg = losses.LossConfig(stage="stage1", baseline="batch_mean", samples_per_prompt=1)
  logits_bytes = B * T * config.vocab_size * 4
  temp = {}
  for chunk in (0, 8):
    step = step_lib.make_rl_step(graphdef, KEEP_GRADS, cfg, 1, logit_chunk=chunk)
    compiled = step.lower(params, KEEP_GRADS.init(params), params, episode).compile()
    temp[chunk] = compiled.memory_analysis().temp_size_in_bytes
  assert temp[0] >= 2 * logits_bytes, temp
  assert temp[8] < logits_bytes / 2, (temp, logits_bytes)
