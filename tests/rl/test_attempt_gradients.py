"""Gradient tests of the SCoRe objectives over A attempts (score_jax.rl.objectives).

The policy is a free logits parameter per position, `theta_BTV`, scored with `token_logprobs`
as the trainer does (token t is scored by theta[:, t-1]). Three attempts:
  position: 0  1  2   3   4  5  6   7   8  9  10  11
  row 0:    x  x  y1  y1  e  e  y2  y2  e  e  y3  y3      (e = instruction)
  row 1:    x  x  y1  pad e  e  y2  pad e  e  y3  pad
so y1 sits inside the contexts of y2 and y3, and y2 inside y3's.

- Stage II: each attempt's tokens get exactly their own credit R_1 = r1,
  R_t = r_t + alpha (r_t - r_{t-1}); a later attempt's reward never reaches an earlier one.
- Stage I: the beta2 KL reaches every earlier attempt (exactly beta2 grad KL_t), the reward
  only the last.
- At A = 2 the A-attempt code equals the paper's two-turn formulas, written out here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.rl import losses
from score_jax.rl import objectives
from score_jax.rl.losses import LossConfig
from tests.episodes import loss_episode

B, T, V = 2, 12, 5
SPANS = {1: [(2, 4), (2, 3)], 2: [(6, 8), (6, 7)], 3: [(10, 12), (10, 11)]}
M = {}
for _t, _spans in SPANS.items():
  M[_t] = np.zeros((B, T), bool)
  for _b, (_s, _e) in enumerate(_spans):
    M[_t][_b, _s:_e] = True
OUTSIDE = ~(M[1] | M[2] | M[3])
R = {1: jnp.array([0.0, 1.0]), 2: jnp.array([1.0, 1.0]), 3: jnp.array([1.0, 0.0])}
TOKENS = jax.random.randint(jax.random.key(0), (B, T), 0, V)
THETA = jax.random.normal(jax.random.key(1), (B, T, V))
REF_LOGP = losses.token_logprobs(jax.random.normal(jax.random.key(2), (B, T, V)), TOKENS)
LOGP = losses.token_logprobs(THETA, TOKENS)
BASE = LossConfig(stage="stage2", alpha=10.0, beta1=0.3, beta2=0.7, kl_estimator="k3",
                  kl_mode="loss", baseline="loo", samples_per_prompt=2, normalization="token")


def _episode(r=R, masks=M):
  return loss_episode(jnp.asarray(masks[1]), jnp.asarray(masks[2]), r[1], r[2],
                      jnp.asarray(masks[3]), r[3])


def _grad_logp(cfg, episode=None, logp=LOGP):
  fn = lambda lp: objectives.score_loss(lp, REF_LOGP, episode or _episode(), cfg)[0]
  return np.asarray(jax.grad(fn)(logp))


def _grad_theta(cfg, episode=None):
  """d loss / d theta re-indexed by the token each position scores (out[:, t] = grad[:, t-1])."""
  def loss_fn(theta_BTV):
    return objectives.score_loss(losses.token_logprobs(theta_BTV, TOKENS), REF_LOGP,
                                 episode or _episode(), cfg)[0]
  g = np.asarray(jax.grad(loss_fn)(THETA))
  out = np.zeros_like(g)
  out[:, 1:] = g[:, :-1]
  return out


def _loo(r):        # k = 2, one group
  return r - r[::-1]


def _kl_sums(est):
  k = np.asarray(losses.kl_per_token(LOGP, REF_LOGP, est))
  return {t: (k * M[t]).sum(1) for t in M}


# ----------------------------------------------------------------------------- Stage II


@pytest.mark.parametrize("mode", ("loss", "reward"))
@pytest.mark.parametrize("est", ("k1", "k3"))
def test_stage2_each_attempt_gets_exactly_its_own_credit(mode, est):
  """d L / d logp on attempt t's tokens = -loo(R_t - [beta1 KL_t]) / n_t, R_t written out."""
  cfg = BASE.replace(kl_mode=mode, kl_estimator=est, beta1=0.0 if mode == "loss" else 0.3)
  r = {t: np.asarray(v) for t, v in R.items()}
  credit = {1: r[1], 2: r[2] + 10.0 * (r[2] - r[1]), 3: r[3] + 10.0 * (r[3] - r[2])}
  if mode == "reward":
    sums = _kl_sums(est)
    credit = {t: credit[t] - 0.3 * sums[t] for t in credit}
  want = sum(-_loo(credit[t])[:, None] * M[t] / M[t].sum() for t in M)
  np.testing.assert_allclose(_grad_logp(cfg), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ("loss", "reward"))
def test_stage2_later_rewards_never_reach_earlier_attempts(mode):
  """Changing r3 moves only y3's gradient; changing r2 moves y2's and y3's (through
  alpha (r3 - r2)), never y1's. Prompts, instructions and padding get none."""
  cfg = BASE.replace(kl_mode=mode)
  g = _grad_theta(cfg)
  np.testing.assert_array_equal(g[OUTSIDE], 0.0)
  g_r3 = _grad_theta(cfg, _episode({**R, 3: jnp.array([0.0, 1.0])}))
  np.testing.assert_array_equal(g_r3[M[1]], g[M[1]])
  np.testing.assert_array_equal(g_r3[M[2]], g[M[2]])
  assert np.abs(g_r3[M[3]] - g[M[3]]).max() > 1e-3
  g_r2 = _grad_theta(cfg, _episode({**R, 2: jnp.array([0.0, 1.0])}))
  np.testing.assert_array_equal(g_r2[M[1]], g[M[1]])
  assert np.abs(g_r2[M[2]] - g[M[2]]).max() > 1e-3
  assert np.abs(g_r2[M[3]] - g[M[3]]).max() > 1e-3


def test_later_attempt_term_alone_gives_zero_gradient_on_its_context():
  """The y3 REINFORCE term reaches only y3's tokens, not y1 / y2 inside its context."""
  def pg3(theta_BTV):
    logp_BT = losses.token_logprobs(theta_BTV, TOKENS)
    return losses.policy_gradient_term(logp_BT, jnp.array([2.0, -1.0]), M[3], "token")
  g = np.asarray(jax.grad(pg3)(THETA))
  per_token = np.zeros_like(g)
  per_token[:, 1:] = g[:, :-1]
  np.testing.assert_array_equal(per_token[~M[3]], 0.0)
  assert (np.abs(per_token).sum(-1)[M[3]] > 0).all()


# ----------------------------------------------------------------------------- Stage I


@pytest.mark.parametrize("est", ("k1", "k2", "k3"))
def test_stage1_kl_reaches_every_earlier_attempt_with_beta2(est):
  """Loss mode, beta1 = 0: y1 and y2 get exactly beta2 grad masked_mean(k, m_t); y3 gets
  only the REINFORCE term of r3; with beta2 = 0 the earlier attempts get nothing."""
  cfg = BASE.replace(stage="stage1", kl_estimator=est, beta1=0.0, beta2=0.7)
  g = _grad_theta(cfg)
  for t in (1, 2):
    def kl_t(theta_BTV, t=t):
      logp_BT = losses.token_logprobs(theta_BTV, TOKENS)
      return 0.7 * losses.masked_mean(losses.kl_per_token(logp_BT, REF_LOGP, est), M[t],
                                      "token")
    g_kl = np.asarray(jax.grad(kl_t)(THETA))
    want = np.zeros_like(g_kl)
    want[:, 1:] = g_kl[:, :-1]
    assert (np.abs(g).sum(-1)[M[t]] > 0).all()
    np.testing.assert_allclose(g[M[t]], want[M[t]], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(g[OUTSIDE], 0.0)
  g_free = _grad_theta(cfg.replace(beta2=0.0))
  np.testing.assert_array_equal(g_free[M[1] | M[2]], 0.0)
  assert (np.abs(g_free).sum(-1)[M[3]] > 0).all()       # r3 = [1, 0] trains y3


@pytest.mark.parametrize("mode", ("loss", "reward"))
def test_stage1_rewards_only_the_last_attempt(mode):
  """Changing r1 or r2 changes no gradient at all; changing r3 changes only y3's."""
  cfg = BASE.replace(stage="stage1", kl_mode=mode)
  g = _grad_theta(cfg)
  for t in (1, 2):
    other = _grad_theta(cfg, _episode({**R, t: 1.0 - R[t]}))
    np.testing.assert_array_equal(other, g)
  g_r3 = _grad_theta(cfg, _episode({**R, 3: jnp.array([0.0, 1.0])}))
  np.testing.assert_array_equal(g_r3[M[1] | M[2]], g[M[1] | M[2]])
  assert np.abs(g_r3[M[3]] - g[M[3]]).max() > 1e-3


def test_stage1_reward_mode_written_out():
  """kl_mode=reward: R_t = -beta2 KL_t (t < 3), R_3 = r3 - beta1 KL_3, per attempt."""
  cfg = BASE.replace(stage="stage1", kl_mode="reward", kl_estimator="k1")
  sums = _kl_sums("k1")
  credit = {1: -0.7 * sums[1], 2: -0.7 * sums[2], 3: np.asarray(R[3]) - 0.3 * sums[3]}
  want = sum(-_loo(credit[t])[:, None] * M[t] / M[t].sum() for t in M)
  np.testing.assert_allclose(_grad_logp(cfg), want, rtol=1e-5, atol=1e-7)


def test_single_turn_trains_only_the_first_attempt():
  g = _grad_theta(BASE.replace(stage="single_turn"))
  np.testing.assert_array_equal(g[~M[1]], 0.0)
  assert (np.abs(g).sum(-1)[M[1]] > 0).all()


# ----------------------------------------------------------------------------- A = 2


def _two_turn_gradient(stage, mode, est, cfg, r1, r2):
  """The paper's two-turn objective's d L / d logp, written out (token means, loo k = 2)."""
  m1, m2 = M[1], M[2]
  k = np.asarray(losses.kl_per_token(LOGP, REF_LOGP, est))
  s1, s2 = (k * m1).sum(1), (k * m2).sum(1)
  if stage == "stage1":
    R1, R2, b1, b2, on2 = np.zeros(B), r2, cfg.beta2, cfg.beta1, 1.0
  elif stage == "stage2":
    R1, R2, b1, b2, on2 = r1, r2 + cfg.alpha * (r2 - r1), cfg.beta1, cfg.beta1, 1.0
  else:
    R1, R2, b1, b2, on2 = r1, np.zeros(B), cfg.beta1, 0.0, 0.0
  if mode == "reward":
    R1, R2 = R1 - b1 * s1, R2 - b2 * s2
  grad = -_loo(R1)[:, None] * m1 / m1.sum() - on2 * _loo(R2)[:, None] * m2 / m2.sum()
  if mode == "loss":
    dk = {"k1": np.ones_like(k), "k2": -(np.asarray(REF_LOGP) - np.asarray(LOGP)),
          "k3": 1.0 - np.exp(np.asarray(REF_LOGP) - np.asarray(LOGP))}[est]
    grad = grad + b1 * dk * m1 / m1.sum() + on2 * b2 * dk * m2 / m2.sum()
  return grad


@pytest.mark.parametrize("est", ("k1", "k2", "k3"))
@pytest.mark.parametrize("mode", ("loss", "reward"))
@pytest.mark.parametrize("stage", ("stage1", "stage2", "single_turn"))
def test_two_attempts_equal_the_two_turn_formulas(stage, mode, est):
  cfg = BASE.replace(stage=stage, kl_mode=mode, kl_estimator=est)
  two = loss_episode(jnp.asarray(M[1]), jnp.asarray(M[2]), R[1], R[3])
  want = _two_turn_gradient(stage, mode, est, cfg, np.asarray(R[1]), np.asarray(R[3]))
  np.testing.assert_allclose(_grad_logp(cfg, two), want, rtol=1e-5, atol=1e-6)
