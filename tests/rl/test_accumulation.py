"""Gradient accumulation is a memory setting, nothing else.

The step weights every token over the WHOLE batch before it splits it into micro-batches
(score_jax.rl.objectives) and sums the micro-batches' shares, so 1, 2 and 4 micro-batches
give the same loss and gradient for every baseline x normalisation x KL placement, on
rows of very different lengths. Before, each micro-batch was normalised by its own token
count and its baselines computed inside it: a length bias (toy below) and, for
`batch_mean` at one row per micro-batch, a policy gradient of exactly zero.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.model import transformer as model_lib
from score_jax.model.config import tiny
from score_jax.rl import losses
from score_jax.rl import objectives
from score_jax.rl import step as step_lib
from tests.episodes import KEEP_GRADS, loss_episode, varied_episode

@pytest.fixture(scope="module")
def model():
  config = tiny("llama")
  graphdef, params = model_lib.init_params(config, None, seed=0)
  ref = jax.tree.map(lambda x: x * 1.03, params)        # the reference is not the policy
  return graphdef, params, ref, varied_episode(config.vocab_size)


def _close(got, want, rtol=1e-4):
  """Leaf by leaf, to `rtol` of the leaf's largest entry (summation order differs)."""
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max() + 1e-12)


def _sgd_step(model, cfg, micro):
  """(metrics, grads) of one RL step."""
  graphdef, params, ref, episode = model
  step = step_lib.make_rl_step(graphdef, KEEP_GRADS, cfg, micro)
  _, grads, metrics = step(jax.tree.map(jnp.copy, params), KEEP_GRADS.init(params), ref,
                           episode)
  return jax.device_get(metrics), jax.device_get(grads)


GRID = list(itertools.product(("none", "batch_mean", "loo"), ("token", "sequence"),
                              (("loss", "k2"), ("reward", "k1"), ("loss", "k3"))))
# Every baseline, normalisation and KL placement once by default; the whole grid is slow.
DEFAULT = [("none", "sequence", ("reward", "k1")), ("batch_mean", "token", ("loss", "k3")),
           ("loo", "token", ("reward", "k1")), ("loo", "sequence", ("loss", "k2"))]


@pytest.mark.parametrize("baseline,normalization,kl", [
    pytest.param(*combo, marks=() if combo in DEFAULT else pytest.mark.slow) for combo in GRID])
def test_micro_batches_change_nothing(model, baseline, normalization, kl):
  kl_mode, estimator = kl
  cfg = losses.LossConfig(stage="stage2", alpha=10.0, beta1=0.3, baseline=baseline,
                          samples_per_prompt=2, normalization=normalization,
                          kl_mode=kl_mode, kl_estimator=estimator)
  want_m, want_g = _sgd_step(model, cfg, 1)
  assert abs(float(want_m["pg_loss_t2"])) > 1e-3 and float(want_m["kl_t2"]) != 0
  for micro in (2, 4):
    got_m, got_g = _sgd_step(model, cfg, micro)
    for key in ("loss", "pg_loss_t1", "pg_loss_t2", "kl_loss_t1", "kl_t1", "kl_seq_t2",
                "total_reward_t2", "adv_abs_t2", "entropy_t2", "grad_norm"):
      np.testing.assert_allclose(got_m[key], want_m[key], rtol=2e-5, atol=1e-7, err_msg=key)
    _close(got_g, want_g)


def test_batch_mean_at_one_row_per_micro_batch_has_the_full_batch_gradient(model):
  """A per-micro-batch mean of one row is the row itself: its advantage was 0, so only the
  KL trained. Over the whole batch the policy gradient is there, and the same."""
  cfg = losses.LossConfig(stage="stage2", baseline="batch_mean", samples_per_prompt=1,
                          beta1=0.0)
  want_m, want_g = _sgd_step(model, cfg, 1)
  got_m, got_g = _sgd_step(model, cfg, 8)   # 8 rows: one per micro-batch
  assert float(want_m["grad_norm"]) > 1e-3 and float(want_m["adv_abs_t2"]) > 1.0
  np.testing.assert_allclose(got_m["grad_norm"], want_m["grad_norm"], rtol=1e-5)
  _close(got_g, want_g)


def test_sft_step_is_exact_under_accumulation(model):
  graphdef, params, _, episode = model
  out = []
  for micro in (1, 4):
    step = step_lib.make_sft_step(graphdef, KEEP_GRADS, micro)
    _, grads, m = step(jax.tree.map(jnp.copy, params), KEEP_GRADS.init(params), None, episode)
    out.append((jax.device_get(m), jax.device_get(grads)))
  (m1, g1), (m4, g4) = out
  for key in ("loss", "nll_t1", "nll_t2"):
    np.testing.assert_allclose(m4[key], m1[key], rtol=1e-6)
  _close(g4, g1)


# --- the length-bias toy ----------------------------------------------------------------
# 32 prompts x 4 responses, two correct and two wrong, each 10, 40 or 100 tokens long
# (drawn with seed 0); leave-one-out baseline, token means. The "push" on a response is the
# per-token gradient of the loss on its log-probs; we compare short wrong (10 tokens) with
# long wrong (100 tokens) responses. Every wrong response has the same advantage (-2/3), so
# over the whole batch the push is the same; normalised per micro-batch, a long response
# inflates its own micro-batch's token count and is pushed less.

def _toy(seed=0):
  rng = np.random.default_rng(seed)
  lengths, rewards = [], []
  for _ in range(32):
    order = rng.permutation(4)
    lengths += list(rng.choice([10, 40, 100], size=4))
    rewards += [(1.0, 1.0, 0.0, 0.0)[i] for i in order]
  rows, width = len(lengths), 2 + max(lengths)
  mask = np.zeros((rows, width), bool)
  for b, n in enumerate(lengths):
    mask[b, 2:2 + n] = True
  episode = loss_episode(jnp.zeros_like(mask), jnp.asarray(mask), jnp.zeros(rows),
                         jnp.asarray(rewards, jnp.float32))
  return episode, np.asarray(lengths), np.asarray(rewards)


def _push_ratio(grad_BT, lengths, rewards):
  per_token = np.abs(np.asarray(grad_BT)).sum(axis=1) / lengths
  short = per_token[(lengths == 10) & (rewards == 0)].mean()
  long = per_token[(lengths == 100) & (rewards == 0)].mean()
  return short / long


def test_length_bias_toy():
  episode, lengths, rewards = _toy()
  cfg = losses.LossConfig(stage="stage1", baseline="loo", samples_per_prompt=4, beta1=0.0,
                          beta2=0.0, kl_estimator="k1", kl_mode="loss")
  logp = jnp.full(episode.turn2_mask_BT.shape, -1.0)
  split = lambda x, m: x.reshape((m, -1) + x.shape[1:])  # noqa: E731

  def whole(logp_BT):
    return objectives.score_loss(logp_BT, logp_BT, episode, cfg)[0]

  def exact(logp_BT, micro):   # what the step does: whole-batch weights, summed shares
    weights, _ = objectives.token_weights(episode, cfg)
    parts = [objectives.weighted_loss(lp, lp, jax.tree.map(lambda x, i=i: split(x, micro)[i],
                                                            weights), "k1")[0]
             for i, lp in enumerate(split(logp_BT, micro))]
    return sum(parts)

  def per_micro_batch(logp_BT, micro):   # the old accumulation: each micro-batch its own
    ep = jax.tree.map(lambda x: split(x, micro), episode)
    return sum(objectives.score_loss(lp, lp, jax.tree.map(lambda x, i=i: x[i], ep), cfg)[0]
               for i, lp in enumerate(split(logp_BT, micro))) / micro

  unaccumulated = _push_ratio(jax.grad(whole)(logp), lengths, rewards)
  for rows in (8, 4):
    micro = len(lengths) // rows
    ratio = _push_ratio(jax.grad(lambda x, m=micro: exact(x, m))(logp), lengths, rewards)
    assert ratio == pytest.approx(unaccumulated, rel=0.02), (rows, ratio, unaccumulated)
    old = _push_ratio(jax.grad(lambda x, m=micro: per_micro_batch(x, m))(logp), lengths,
                      rewards)
    # The old scheme pushed short wrong answers down harder (a bias toward long ones).
    assert old > 1.1 * unaccumulated, (rows, old, unaccumulated)
  assert unaccumulated == pytest.approx(1.0, abs=1e-6)   # same advantage, same token weight
