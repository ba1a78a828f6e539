"""Gradient tests of the SCoRe objectives: the four public-port mistakes and KL bias.

The "policy" is a free logits parameter per position, `theta_BTV`, scored with
`token_logprobs` exactly as the trainer does: token t is scored by theta[:, t-1], so the
gradient reaching token t lives in theta[:, t-1] (`_per_token`). Episodes use the layout
  position: 0  1  2   3   4  5  6   7
  row 0:    x  x  y1  y1  e  e  y2  y2      (e = x2-extra: instruction)
  row 1:    x  x  y1  pad e  e  y2  pad
so y1 tokens sit inside the turn-2 prompt and the turn-2 mask must not cover them.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.rl import losses
from score_jax.rl import objectives
from score_jax.rl.losses import LossConfig
from tests.episodes import loss_episode

B, T, V = 2, 8, 5
M1 = np.zeros((B, T), bool)
M1[0, 2:4] = True
M1[1, 2] = True
M2 = np.zeros((B, T), bool)
M2[0, 6:8] = True
M2[1, 6] = True
OUTSIDE = ~(M1 | M2)
TOKENS = jax.random.randint(jax.random.key(0), (B, T), 0, V)
THETA = jax.random.normal(jax.random.key(1), (B, T, V))
REF_LOGP = losses.token_logprobs(jax.random.normal(jax.random.key(2), (B, T, V)), TOKENS)
INPUTS = loss_episode(jnp.asarray(M1), jnp.asarray(M2), jnp.array([0.0, 1.0]),
                    jnp.array([1.0, 0.0]))
BASE = LossConfig(stage="stage2", alpha=10.0, beta1=0.3, beta2=0.7, kl_estimator="k3",
                  kl_mode="loss", baseline="loo", samples_per_prompt=2,
                  normalization="token")
ESTIMATORS = ("k1", "k2", "k3")
MODES = ("loss", "reward")


def _grad_theta(cfg, inputs=INPUTS, theta=THETA):
  """d loss / d theta_BTV for the tiny per-position categorical policy."""
  def loss_fn(theta_BTV):
    logp_BT = losses.token_logprobs(theta_BTV, TOKENS)
    return objectives.score_loss(logp_BT, REF_LOGP, inputs, cfg)[0]
  grad_BTV = jax.grad(loss_fn)(theta)
  # theta[:, T-1] scores no token: it can never receive gradient.
  np.testing.assert_array_equal(grad_BTV[:, -1], 0.0)
  return np.asarray(grad_BTV)


def _per_token(grad_BTV):
  """grad_BTV re-indexed by the token it scores: out[:, t] = grad[:, t-1], out[:, 0] = 0."""
  out = np.zeros_like(grad_BTV)
  out[:, 1:] = grad_BTV[:, :-1]
  return out


def _grad_logp(cfg, inputs=INPUTS, logp=None, ref=REF_LOGP):
  """d loss / d logp_BT (and d loss / d ref_logp_BT) at the policy's log-probs."""
  logp = losses.token_logprobs(THETA, TOKENS) if logp is None else logp
  fn = lambda lp, ref: objectives.score_loss(lp, ref, inputs, cfg)[0]
  g_logp, g_ref = jax.grad(fn, argnums=(0, 1))(logp, ref)
  return np.asarray(g_logp), np.asarray(g_ref)


def _nonzero_rows(per_token_BTV, mask_BT):
  """True where a masked token's logits get a non-zero gradient."""
  return np.abs(per_token_BTV).sum(-1)[mask_BT] > 0


# ----------------------------------------------------------------------------- mistake 1


@pytest.mark.parametrize("est", ESTIMATORS)
@pytest.mark.parametrize("mode", MODES)
def test_stage1_beta2_anchors_turn1_tokens(est, mode):
  """(a) Stage I: beta2 puts gradient on every y1 token; beta1 = beta2 = 0 puts none."""
  cfg = BASE.replace(stage="stage1", kl_estimator=est, kl_mode=mode)
  g = _per_token(_grad_theta(cfg.replace(beta1=0.0, beta2=0.7)))
  assert _nonzero_rows(g, M1).all()
  np.testing.assert_array_equal(g[OUTSIDE], 0.0)
  g0 = _per_token(_grad_theta(cfg.replace(beta1=0.0, beta2=0.0)))
  np.testing.assert_array_equal(g0[M1], 0.0)
  np.testing.assert_array_equal(g0[OUTSIDE], 0.0)
  assert _nonzero_rows(g0, M2).all()     # turn 2 still learns from r2 = [1, 0]


def test_stage1_beta2_term_is_exactly_the_turn1_kl_gradient():
  """In loss mode the y1-token gradient is beta2 * grad masked_mean(k3, m1), nothing else."""
  cfg = BASE.replace(stage="stage1", beta1=0.0, beta2=0.7)
  g = _grad_theta(cfg)
  def kl1(theta_BTV):
    logp_BT = losses.token_logprobs(theta_BTV, TOKENS)
    return 0.7 * losses.masked_mean(losses.kl_per_token(logp_BT, REF_LOGP, "k3"), M1, "token")
  g_kl1 = np.asarray(jax.grad(kl1)(THETA))
  np.testing.assert_allclose(_per_token(g)[M1], _per_token(g_kl1)[M1], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- mistake 2


@pytest.mark.parametrize("est", ESTIMATORS)
@pytest.mark.parametrize("stage", ("stage1", "stage2", "single_turn"))
def test_kl_loss_terms_carry_gradient(est, stage):
  """(b) In loss mode each estimator's KL term changes the gradient by beta * grad KL."""
  cfg = BASE.replace(stage=stage, kl_estimator=est, kl_mode="loss")
  g_on = _grad_theta(cfg)
  g_off = _grad_theta(cfg.replace(beta1=0.0, beta2=0.0))
  def kl_terms(theta_BTV):
    logp_BT = losses.token_logprobs(theta_BTV, TOKENS)
    kl_BT = losses.kl_per_token(logp_BT, REF_LOGP, est)
    w1 = cfg.beta2 if stage == "stage1" else cfg.beta1
    w2 = 0.0 if stage == "single_turn" else cfg.beta1
    return (w1 * losses.masked_mean(kl_BT, M1, "token")
            + w2 * losses.masked_mean(kl_BT, M2, "token"))
  g_kl = np.asarray(jax.grad(kl_terms)(THETA))
  assert np.abs(g_kl).max() > 1e-3
  np.testing.assert_allclose(g_on - g_off, g_kl, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("est", ESTIMATORS)
@pytest.mark.parametrize("stage", ("stage1", "stage2", "single_turn"))
def test_kl_in_reward_has_no_gradient_path_but_moves_advantage(est, stage):
  """(b) kl_mode=reward: d loss / d logp = -A_b m / n exactly, A from the folded reward."""
  cfg = BASE.replace(stage=stage, kl_estimator=est, kl_mode="reward")
  logp = losses.token_logprobs(THETA, TOKENS)
  kl = np.asarray(losses.kl_per_token(logp, REF_LOGP, est))
  sum1, sum2 = (kl * M1).sum(1), (kl * M2).sum(1)
  r1, r2 = np.asarray(INPUTS.r1_B), np.asarray(INPUTS.r2_B)
  if stage == "stage1":
    task1, beta_t1, task2 = np.zeros(B), cfg.beta2, r2
  elif stage == "stage2":
    task1, beta_t1, task2 = r1, cfg.beta1, r2 + cfg.alpha * (r2 - r1)
  else:
    task1, beta_t1, task2 = r1, cfg.beta1, None
  loo = lambda r: r - r[::-1]      # k = 2, one group
  a1 = loo(task1 - beta_t1 * sum1)
  want = -a1[:, None] * M1 / M1.sum()
  if task2 is not None:
    want = want - loo(task2 - cfg.beta1 * sum2)[:, None] * M2 / M2.sum()
  g_logp, g_ref = _grad_logp(cfg)
  np.testing.assert_allclose(g_logp, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(g_ref, 0.0)          # the reference is stop-gradient'ed
  # The KL moved the advantage: without it the turn-1 gradient differs.
  g_no_kl, _ = _grad_logp(cfg.replace(beta1=0.0, beta2=0.0))
  assert np.abs(g_logp - g_no_kl)[M1].max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stage", ("stage1", "stage2", "single_turn"))
def test_reference_and_rewards_get_no_gradient(mode, stage):
  """Mistake 2: rewards are constants and the reference is frozen (zero gradients)."""
  cfg = BASE.replace(stage=stage, kl_mode=mode)
  logp = losses.token_logprobs(THETA, TOKENS)
  def fn(ref, rewards_BA):
    return objectives.score_loss(logp, ref, INPUTS._replace(rewards_BA=rewards_BA), cfg)[0]
  grads = jax.grad(fn, argnums=(0, 1))(REF_LOGP, INPUTS.rewards_BA)
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


# ----------------------------------------------------------------------------- shaping / mistake 3


def test_turn2_advantage_is_shaped_reward_all_four_cases():
  """(c) baseline none, alpha 10: turn-2 tokens weighted by exactly 0, 11, -10, 1."""
  r1 = jnp.array([0.0, 0.0, 1.0, 1.0])
  r2 = jnp.array([0.0, 1.0, 0.0, 1.0])
  m1 = jnp.asarray(np.tile(M1[:1], (4, 1)))
  m2 = jnp.asarray(np.tile(M2[:1], (4, 1)))        # 2 turn-2 tokens per row -> n2 = 8
  inputs = loss_episode(m1, m2, r1, r2)
  cfg = BASE.replace(baseline="none", samples_per_prompt=1, beta1=0.0)
  logp = jnp.tile(losses.token_logprobs(THETA, TOKENS)[:1], (4, 1))
  g_logp, _ = _grad_logp(cfg, inputs, logp, ref=logp - 0.5)
  # d L / d logp[b, t] = -A_b / n on the turn's tokens.
  np.testing.assert_allclose(-g_logp[:, 6] * 8, [0.0, 11.0, -10.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(-g_logp[:, 7] * 8, [0.0, 11.0, -10.0, 1.0], rtol=1e-6)
  # Turn-1 tokens see r1 alone (n1 = 8 too), never the total return r1 + R2.
  np.testing.assert_allclose(-g_logp[:, 2] * 8, [0.0, 0.0, 1.0, 1.0], rtol=1e-6)
  _, m = objectives.score_loss(logp, logp, inputs, cfg)
  np.testing.assert_allclose(m["shaped_reward_t2"], (0 + 11 - 10 + 1) / 4, rtol=1e-6)
  np.testing.assert_allclose(m["adv_t2"], 0.5, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_stage2_turn1_tokens_see_only_r1(mode):
  """(d) Changing r2 leaves the y1-token gradient unchanged; changing r1 moves it."""
  cfg = BASE.replace(kl_mode=mode)
  g = _per_token(_grad_theta(cfg))
  r2_both_right = INPUTS._replace(rewards_BA=INPUTS.rewards_BA.at[:, 1].set(1.0))
  g_r2 = _per_token(_grad_theta(cfg, r2_both_right))
  np.testing.assert_array_equal(g_r2[M1], g[M1])
  assert np.abs(g_r2[M2] - g[M2]).max() > 1e-3
  r1_flipped = INPUTS._replace(rewards_BA=INPUTS.rewards_BA.at[:, 0].set(jnp.array([1.0, 0.0])))
  g_r1 = _per_token(_grad_theta(cfg, r1_flipped))
  assert np.abs(g_r1[M1] - g[M1]).max() > 1e-3


# ----------------------------------------------------------------------------- mistake 4


@pytest.mark.parametrize("est", ESTIMATORS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stage", ("stage1", "stage2", "single_turn"))
def test_positions_outside_both_masks_get_zero_gradient(est, mode, stage):
  """(e) x, x2-extra and padding tokens never receive gradient."""
  cfg = BASE.replace(stage=stage, kl_estimator=est, kl_mode=mode)
  g = _per_token(_grad_theta(cfg))
  np.testing.assert_array_equal(g[OUTSIDE], 0.0)
  if stage == "single_turn":          # turn 2 is ignored entirely
    np.testing.assert_array_equal(g[M2], 0.0)


def test_turn2_term_alone_gives_zero_gradient_on_y1_tokens():
  """(e) The turn-2 REINFORCE term never reaches the y1 tokens (prompt of turn 2)."""
  adv = jnp.array([2.0, -1.0])
  def pg2(theta_BTV):
    logp_BT = losses.token_logprobs(theta_BTV, TOKENS)
    return losses.policy_gradient_term(logp_BT, adv, M2, "token")
  g = _per_token(np.asarray(jax.grad(pg2)(THETA)))
  np.testing.assert_array_equal(g[M1], 0.0)
  np.testing.assert_array_equal(g[OUTSIDE], 0.0)
  assert _nonzero_rows(g, M2).all()
  # Same through Stage I with no KL: only the turn-2 term is left (r2 = [1, 0]).
  g = _per_token(_grad_theta(BASE.replace(stage="stage1", beta1=0.0, beta2=0.0)))
  np.testing.assert_array_equal(g[M1], 0.0)
  assert _nonzero_rows(g, M2).all()


# ----------------------------------------------------------------------------- estimator bias

# pi = softmax(theta) = [.4, .3, .2, .1], ref = uniform; d = log pi - log ref.
# Exact: KL(pi||ref) = sum pi d = 0.10644014. Per sample y, grad_theta log pi(y) = e_y - pi.
#   E[grad k1] = sum_y pi(y) (e_y - pi) = 0.
#   E[grad k2] = sum_y pi(y) d(y) (e_y - pi) = pi * (d - KL) = grad KL(pi||ref)
#              = [0.14542540, 0.02276443, -0.06591674, -0.10227309].
#   E[grad k3] = sum_y pi(y) (1 - ref(y)/pi(y)) (e_y - pi) = pi - ref = [.15, .05, -.05, -.15]
#              (= grad KL(ref||pi)), which differs from grad KL(pi||ref) by up to 0.0477.
#   E[k1] = E[k3] = KL(pi||ref) (unbiased values); E[k2] = 0.09612559 (biased).
# With N = 200k samples the Monte Carlo standard errors are <= 0.0011 (grad k1), 0.00054
# (grad k2), 0.0009 (grad k3), 0.00095 (E k1), 0.00036 (E k3): tolerance 0.006 (>5 sigma).
PI = np.array([0.4, 0.3, 0.2, 0.1])
KL_PI_REF = 0.10644014
GRAD_KL = np.array([0.14542540, 0.02276443, -0.06591674, -0.10227309])
GRAD_K3 = np.array([0.15, 0.05, -0.05, -0.15])
MC_TOL = 0.006


def test_exact_expected_values_used_below():
  d = np.log(PI) - np.log(0.25)
  assert abs(np.sum(PI * d) - KL_PI_REF) < 1e-7
  np.testing.assert_allclose(PI * (d - np.sum(PI * d)), GRAD_KL, atol=1e-7)
  # grad KL(pi||ref) by finite differences of the exact KL.
  kl = lambda th: float(np.sum(jax.nn.softmax(th) * (jax.nn.log_softmax(th) - math.log(.25))))
  theta = np.log(PI)
  fd = [(kl(theta + 1e-3 * e) - kl(theta - 1e-3 * e)) / 2e-3 for e in np.eye(4)]
  np.testing.assert_allclose(fd, GRAD_KL, atol=1e-4)


def test_monte_carlo_kl_estimator_gradients():
  """(f) On-policy: E grad k1 = 0, E grad k2 = grad KL(pi||ref), E grad k3 is biased."""
  theta = jnp.log(jnp.asarray(PI, jnp.float32))
  y_B = jax.random.categorical(jax.random.key(42), theta, shape=(200_000,))
  ref_B = jnp.full(y_B.shape, math.log(0.25))

  def mean_estimate(theta_V, est):
    logp_B = jax.nn.log_softmax(theta_V)[y_B]
    return jnp.mean(losses.kl_per_token(logp_B[:, None], ref_B[:, None], est))

  grads = {est: np.asarray(jax.grad(mean_estimate)(theta, est)) for est in ESTIMATORS}
  values = {est: float(mean_estimate(theta, est)) for est in ESTIMATORS}
  np.testing.assert_allclose(grads["k1"], 0.0, atol=MC_TOL)
  np.testing.assert_allclose(grads["k2"], GRAD_KL, atol=MC_TOL)
  np.testing.assert_allclose(grads["k3"], GRAD_K3, atol=MC_TOL)
  assert np.abs(grads["k3"] - GRAD_KL).max() > 0.03     # biased: not grad KL(pi||ref)
  assert np.abs(grads["k1"] - GRAD_KL).max() > 0.09     # k1-as-loss: no KL gradient at all
  np.testing.assert_allclose(values["k1"], KL_PI_REF, atol=MC_TOL)
  np.testing.assert_allclose(values["k3"], KL_PI_REF, atol=MC_TOL)
  np.testing.assert_allclose(values["k2"], 0.09612559, atol=MC_TOL)
