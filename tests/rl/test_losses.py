"""Hand-computed values of the SCoRe loss pieces (score_jax/losses.py).

Every expected number is derived in the comments next to it; the gradient properties
(public-port mistakes, estimator bias) are in tests/rl/test_loss_gradients.py.
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

TOL = dict(rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- per token


def test_token_logprobs_shifted_fp32():
  # V=3. Position 0 logits are uniform -> token[1] has log(1/3). Position 1 logits
  # [0, ln 2, 0] -> probs [1/4, 1/2, 1/4]; token[2] = 1 -> log(1/2). Position 2's
  # logits score nothing (no token 3). logp[:, 0] = 0.
  logits = np.array([[[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [9.0, -9.0, 3.0]]])
  tokens = np.array([[2, 0, 1]])
  logp = losses.token_logprobs(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(tokens))
  assert logp.dtype == jnp.float32 and logp.shape == (1, 3)
  np.testing.assert_allclose(logp, [[0.0, math.log(1 / 3), math.log(1 / 2)]], atol=1e-2)
  logp32 = losses.token_logprobs(jnp.asarray(logits, jnp.float32), jnp.asarray(tokens))
  np.testing.assert_allclose(logp32, [[0.0, math.log(1 / 3), math.log(1 / 2)]], **TOL)
  # The last position's logits never matter.
  logits[0, 2] = [-5.0, 1.0, 7.0]
  np.testing.assert_allclose(losses.token_logprobs(jnp.asarray(logits), jnp.asarray(tokens)),
                             logp32, **TOL)


def test_token_logprobs_bad_input():
  with pytest.raises(ValueError, match="tokens_BT"):
    losses.token_logprobs(jnp.zeros((1, 3, 4)), jnp.zeros((1, 2), jnp.int32))
  with pytest.raises(ValueError, match="integer"):
    losses.token_logprobs(jnp.zeros((1, 3, 4)), jnp.zeros((1, 3)))


def test_token_entropy_aligned_with_logprobs():
  # Position 0: uniform over 3 -> ln 3. Position 1: probs [1/4, 1/2, 1/4] ->
  # -(2 * 1/4 ln 1/4 + 1/2 ln 1/2) = 1/2 ln 4 + 1/2 ln 2 = 1.5 ln 2. Column 0 = 0.
  # Row 2: a -inf logit has p = 0 and contributes 0 (not nan): [0, -inf, -inf] -> 0.
  logits = jnp.array([[[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [1.0, 2.0, 3.0]],
                      [[0.0, -jnp.inf, -jnp.inf], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
  ent = losses.token_entropy(logits)
  np.testing.assert_allclose(ent, [[0.0, math.log(3.0), 1.5 * math.log(2.0)],
                                   [0.0, 0.0, math.log(3.0)]], **TOL)


def test_kl_estimators_hand_values():
  # d = ref - logp = [0, 1, -1].
  # k1 = -d = [0, -1, 1]; k2 = d^2/2 = [0, .5, .5];
  # k3 = e^d - d - 1 = [0, e - 2, e^-1] = [0, 0.7182818, 0.3678794].
  logp = jnp.array([[-1.0, -2.0, -0.5]])
  ref = jnp.array([[-1.0, -1.0, -1.5]])
  np.testing.assert_allclose(losses.kl_per_token(logp, ref, "k1"), [[0.0, -1.0, 1.0]], **TOL)
  np.testing.assert_allclose(losses.kl_per_token(logp, ref, "k2"), [[0.0, 0.5, 0.5]], **TOL)
  np.testing.assert_allclose(losses.kl_per_token(logp, ref, "k3"),
                             [[0.0, math.e - 2.0, 1.0 / math.e]], **TOL)
  with pytest.raises(ValueError, match="kl_estimator"):
    losses.kl_per_token(logp, ref, "k4")


def test_masked_mean_both_normalizations():
  x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  mask = jnp.array([[1, 1, 0], [0, 0, 1]], bool)
  # token: (1 + 2 + 6) / 3 = 3; sequence: ((1 + 2)/2 + 6/1) / 2 = 3.75.
  np.testing.assert_allclose(losses.masked_mean(x, mask, "token"), 3.0, **TOL)
  np.testing.assert_allclose(losses.masked_mean(x, mask, "sequence"), 3.75, **TOL)
  # An empty row contributes 0 and still counts in B: token (1+2)/2 = 1.5; seq (1.5+0)/2.
  mask = jnp.array([[1, 1, 0], [0, 0, 0]], bool)
  np.testing.assert_allclose(losses.masked_mean(x, mask, "token"), 1.5, **TOL)
  np.testing.assert_allclose(losses.masked_mean(x, mask, "sequence"), 0.75, **TOL)
  # All empty: 0, not nan.
  np.testing.assert_allclose(losses.masked_mean(x, jnp.zeros((2, 3)), "token"), 0.0)
  np.testing.assert_allclose(losses.masked_mean(x, jnp.zeros((2, 3)), "sequence"), 0.0)
  with pytest.raises(ValueError, match="normalization"):
    losses.masked_mean(x, mask, "batch")


# ----------------------------------------------------------------------------- per episode


def test_baseline_none_and_batch_mean():
  r = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
  np.testing.assert_allclose(losses.baseline_advantages(r, "none"), r, **TOL)
  # mean = 4/6 = 2/3 -> [1/3, -2/3, -2/3, 1/3, 1/3, 1/3].
  np.testing.assert_allclose(losses.baseline_advantages(r, "batch_mean", 1),
                             [1 / 3, -2 / 3, -2 / 3, 1 / 3, 1 / 3, 1 / 3], **TOL)


def test_baseline_loo_k2_groups():
  # Groups (1,0), (1,1), (0,0): A = r_b - r_other -> [1, -1, 0, 0, 0, 0].
  r = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(losses.baseline_advantages(r, "loo", 2),
                             [1, -1, 0, 0, 0, 0], **TOL)
  # Groups do not mix: (1, 0) next to (5, 5) -> [1, -1, 0, 0].
  np.testing.assert_allclose(losses.baseline_advantages(jnp.array([1.0, 0.0, 5.0, 5.0]),
                                                        "loo", 2), [1, -1, 0, 0], **TOL)


def test_baseline_loo_k3_groups():
  # Group (1,0,0): 1 - (0+0)/2 = 1; 0 - (1+0)/2 = -0.5 (twice).
  # Group (1,1,0): 1 - (1+0)/2 = 0.5 (twice); 0 - (1+1)/2 = -1.
  r = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
  np.testing.assert_allclose(losses.baseline_advantages(r, "loo", 3),
                             [1, -0.5, -0.5, 0.5, 0.5, -1], **TOL)
  # Shaped values (11, -10, 1): 11 - (-9)/2 = 15.5; -10 - 12/2 = -16; 1 - 1/2 = 0.5.
  np.testing.assert_allclose(losses.baseline_advantages(jnp.array([11.0, -10.0, 1.0]),
                                                        "loo", 3), [15.5, -16, 0.5], **TOL)


def test_baseline_bad_args():
  with pytest.raises(ValueError, match="samples_per_prompt"):
    losses.baseline_advantages(jnp.zeros(6), "loo", 4)
  with pytest.raises(ValueError, match="samples_per_prompt"):
    losses.baseline_advantages(jnp.zeros(6), "loo", 1)
  with pytest.raises(ValueError, match="LossConfig.baseline"):
    losses.baseline_advantages(jnp.zeros(6), "mean", 2)


def test_shaped_turn_rewards_all_cases():
  # alpha=10, (r1, r2): (0,0) -> 0; (0,1) -> 1 + 10 = 11; (1,0) -> 0 - 10 = -10; (1,1) -> 1.
  r1 = jnp.array([0.0, 0.0, 1.0, 1.0])
  r2 = jnp.array([0.0, 1.0, 0.0, 1.0])
  t1, t2 = losses.shaped_turn_rewards(r1, r2, 10.0)
  np.testing.assert_allclose(t1, r1)
  np.testing.assert_allclose(t2, [0.0, 11.0, -10.0, 1.0], **TOL)
  _, t2 = losses.shaped_turn_rewards(r1, r2, 0.0)     # no shaping: r2 itself
  np.testing.assert_allclose(t2, r2)


def test_policy_gradient_term_both_normalizations():
  # -sum A logp m / n: A = [2, -1]; tokens (row, logp): (0,-1), (0,-3), (1,-2).
  # token: -(2(-1) + 2(-3) + (-1)(-2)) / 3 = -(-6)/3 = 2.
  # sequence: row0 -(2)(-2) = 4 (mean logp -2); row1 -(-1)(-2) = -2; mean 1.
  logp = jnp.array([[-1.0, -3.0, -7.0], [-9.0, -2.0, 0.0]])
  mask = jnp.array([[1, 1, 0], [0, 1, 0]], bool)
  adv = jnp.array([2.0, -1.0])
  np.testing.assert_allclose(losses.policy_gradient_term(logp, adv, mask, "token"), 2.0, **TOL)
  np.testing.assert_allclose(losses.policy_gradient_term(logp, adv, mask, "sequence"), 1.0,
                             **TOL)
  with pytest.raises(ValueError, match="adv_B"):
    losses.policy_gradient_term(logp, jnp.zeros(3), mask, "token")


# ----------------------------------------------------------------------------- objectives
# The 2x5 example. Row 0: [x, y1, y1, y2, y2]; row 1: [x, y1, x2-extra, y2, pad].
#   logp = [[0, -1,   -2, -1,   -0.5], [0, -2, -1, -1, -3]]
#   ref  = [[0, -1.5, -2, -0.5, -0.5], [0, -1, -1, -3, -3]]
#   logp - ref = [[0, .5, 0, -.5, 0], [0, -1, 0, 2, 0]]
#   r1 = [0, 1], r2 = [1, 0] (row 0 wrong->right, row 1 right->wrong); k = 2, loo.
#   Turn-1 tokens (logp, logp-ref): (-1, .5), (-2, 0) in row 0; (-2, -1) in row 1. n1 = 3.
#   Turn-2 tokens: (-1, -.5), (-.5, 0) in row 0; (-1, 2) in row 1. n2 = 3.
#   k1 means: KL1 = (.5 + 0 - 1)/3 = -1/6; KL2 = (-.5 + 0 + 2)/3 = 1/2.
LOGP = jnp.array([[0.0, -1.0, -2.0, -1.0, -0.5], [0.0, -2.0, -1.0, -1.0, -3.0]])
REF = jnp.array([[0.0, -1.5, -2.0, -0.5, -0.5], [0.0, -1.0, -1.0, -3.0, -3.0]])
INPUTS = loss_episode(
    turn1_mask_BT=jnp.array([[0, 1, 1, 0, 0], [0, 1, 0, 0, 0]], bool),
    turn2_mask_BT=jnp.array([[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]], bool),
    r1_B=jnp.array([0.0, 1.0]), r2_B=jnp.array([1.0, 0.0]))
CFG = LossConfig(alpha=10.0, beta1=0.5, beta2=2.0, kl_estimator="k1", kl_mode="loss",
                 baseline="loo", samples_per_prompt=2, normalization="token")


def _loss(stage, **changes):
  cfg = CFG.replace(stage=stage, **changes)
  return objectives.score_loss(LOGP, REF, INPUTS, cfg)


def test_stage2_loss_hand_value_k1_token():
  # A1 = loo(r1 = [0, 1]) = [-1, 1].
  # PG1 = -((-1)(-1) + (-1)(-2) + (1)(-2)) / 3 = -(1)/3 = -1/3.
  # R2 = r2 + 10 (r2 - r1) = [11, -10]; A2 = loo = [21, -21].
  # PG2 = -(21(-1) + 21(-.5) + (-21)(-1)) / 3 = -(-10.5)/3 = 3.5.
  # L = -1/3 + 3.5 + 0.5 (-1/6 + 1/2) = 19/6 + 1/6 = 10/3.
  loss, m = _loss("stage2")
  np.testing.assert_allclose(loss, 10 / 3, **TOL)
  np.testing.assert_allclose(m["loss"], 10 / 3, **TOL)
  np.testing.assert_allclose(m["pg_loss_t1"], -1 / 3, **TOL)
  np.testing.assert_allclose(m["pg_loss_t2"], 3.5, **TOL)
  np.testing.assert_allclose(m["kl_t1"], -1 / 6, **TOL)
  np.testing.assert_allclose(m["kl_t2"], 0.5, **TOL)
  np.testing.assert_allclose(m["kl_loss_t1"], 0.5 * -1 / 6, **TOL)
  np.testing.assert_allclose(m["shaped_reward_t2"], (11 - 10) / 2, **TOL)
  np.testing.assert_allclose(m["adv_abs_t2"], 21.0, **TOL)
  np.testing.assert_allclose(m["adv_t2"], 0.0, **TOL)
  np.testing.assert_allclose(m["tokens_t1"], 1.5, **TOL)


def test_stage2_loss_hand_value_k2_k3():
  # Same PG terms (19/6). k2 = (logp-ref)^2/2: turn 1 (.125 + 0 + .5)/3, turn 2
  # (.125 + 0 + 2)/3 -> L = 19/6 + 0.5 * 2.75/3 = 21.75/6 = 3.625.
  np.testing.assert_allclose(_loss("stage2", kl_estimator="k2")[0], 3.625, **TOL)
  # k3 = e^{-(logp-ref)} + (logp-ref) - 1:
  #  turn 1: e^-.5 - .5 = 0.1065307, 0, e - 2 = 0.7182818 -> mean 0.2749375
  #  turn 2: e^.5 - 1.5 = 0.1487213, 0, e^-2 + 1 = 1.1353353 -> mean 0.4280189
  # L = 19/6 + 0.5 (0.2749375 + 0.4280189) = 3.5181449.
  kl1 = (math.exp(-0.5) - 0.5 + math.e - 2.0) / 3
  kl2 = (math.exp(0.5) - 1.5 + math.exp(-2.0) + 1.0) / 3
  assert abs(19 / 6 + 0.5 * (kl1 + kl2) - 3.5181449) < 1e-6
  np.testing.assert_allclose(_loss("stage2", kl_estimator="k3")[0], 3.5181449, **TOL)


def test_stage2_loss_hand_value_sequence_normalization():
  # PG1: row0 -(-1) * mean(-1, -2) = -1.5; row1 -(1)(-2) = 2; mean 0.25.
  # PG2: row0 -(21) * mean(-1, -.5) = 15.75; row1 -(-21)(-1) = -21; mean -2.625.
  # KL1: row0 mean(.5, 0) = .25; row1 -1; mean -.375.  KL2: row0 -.25; row1 2; mean .875.
  # L = .25 - 2.625 + .5 (-.375 + .875) = -2.125.
  loss, m = _loss("stage2", normalization="sequence")
  np.testing.assert_allclose(m["pg_loss_t1"], 0.25, **TOL)
  np.testing.assert_allclose(m["pg_loss_t2"], -2.625, **TOL)
  np.testing.assert_allclose(loss, -2.125, **TOL)


def test_stage1_loss_hand_value():
  # Turn 1: no task reward -> A1 = 0, PG1 = 0. Turn 2: A2 = loo(r2 = [1, 0]) = [1, -1].
  # PG2 = -(1(-1) + 1(-.5) + (-1)(-1)) / 3 = -(-.5)/3 = 1/6.
  # L = 1/6 + beta1 KL2 + beta2 KL1 = 1/6 + .5 (.5) + 2 (-1/6) = (2 + 3 - 4)/12 = 1/12.
  loss, m = _loss("stage1")
  np.testing.assert_allclose(m["pg_loss_t1"], 0.0, **TOL)
  np.testing.assert_allclose(m["pg_loss_t2"], 1 / 6, **TOL)
  np.testing.assert_allclose(m["kl_loss_t1"], -1 / 3, **TOL)
  np.testing.assert_allclose(m["shaped_reward_t2"], 0.5, **TOL)   # no shaping in Stage I
  np.testing.assert_allclose(loss, 1 / 12, **TOL)


def test_stage1_loss_hand_value_kl_in_reward():
  # Turn-1 reward = -beta2 * sum KL1: row0 -2 (.5) = -1; row1 -2 (-1) = 2. A1 = [-3, 3].
  # PG1 = -((-3)(-1) + (-3)(-2) + 3(-2)) / 3 = -(3)/3 = -1.
  # Turn-2 reward = r2 - beta1 * sum KL2: row0 1 - .5(-.5) = 1.25; row1 0 - .5 (2) = -1.
  # A2 = [2.25, -2.25]; PG2 = -(2.25(-1) + 2.25(-.5) + (-2.25)(-1)) / 3 = 1.125/3 = .375.
  # L = -1 + .375 = -.625 (no KL term in the loss).
  loss, m = _loss("stage1", kl_mode="reward")
  np.testing.assert_allclose(m["pg_loss_t1"], -1.0, **TOL)
  np.testing.assert_allclose(m["pg_loss_t2"], 0.375, **TOL)
  np.testing.assert_allclose(m["kl_loss_t1"] + m["kl_loss_t2"], 0.0)
  np.testing.assert_allclose(m["total_reward_t1"], 0.5, **TOL)        # (-1 + 2)/2
  np.testing.assert_allclose(m["total_reward_t2"], 0.125, **TOL)      # (1.25 - 1)/2
  np.testing.assert_allclose(m["kl_seq_t2"], 0.75, **TOL)             # (-.5 + 2)/2
  np.testing.assert_allclose(loss, -0.625, **TOL)


def test_stage2_loss_hand_value_kl_in_reward():
  # R1 = r1 - .5 sum KL1 = [0 - .25, 1 + .5] = [-.25, 1.5]; A1 = [-1.75, 1.75].
  # PG1 = -((-1.75)(-1) + (-1.75)(-2) + 1.75(-2)) / 3 = -1.75/3 = -7/12.
  # R2 = [11, -10] - .5 [-.5, 2] = [11.25, -11]; A2 = [22.25, -22.25].
  # PG2 = -(22.25(-1) + 22.25(-.5) + (-22.25)(-1)) / 3 = 11.125/3 = 89/24.
  # L = -14/24 + 89/24 = 75/24 = 3.125.
  loss, m = _loss("stage2", kl_mode="reward")
  np.testing.assert_allclose(m["pg_loss_t1"], -7 / 12, **TOL)
  np.testing.assert_allclose(m["pg_loss_t2"], 89 / 24, **TOL)
  np.testing.assert_allclose(loss, 3.125, **TOL)


def test_single_turn_loss_hand_value():
  # A1 = loo(r1) = [-1, 1]; PG1 = -1/3; + beta1 KL1 = .5 (-1/6) -> L = -5/12.
  # Turn 2 adds nothing but its KL is still reported (kl_t2 = 1/2).
  loss, m = _loss("single_turn")
  np.testing.assert_allclose(loss, -5 / 12, **TOL)
  np.testing.assert_allclose(m["pg_loss_t2"], 0.0)
  np.testing.assert_allclose(m["kl_loss_t2"], 0.0)
  np.testing.assert_allclose(m["kl_t2"], 0.5, **TOL)
  # kl in reward: R1 = [-.25, 1.5], A1 = [-1.75, 1.75], L = -7/12.
  np.testing.assert_allclose(_loss("single_turn", kl_mode="reward")[0], -7 / 12, **TOL)


def test_score_loss_dispatches_and_jits():
  for stage in losses.STAGES:
    cfg = CFG.replace(stage=stage)
    eager_loss, eager_m = objectives.score_loss(LOGP, REF, INPUTS, cfg)
    jit_loss, jit_m = jax.jit(objectives.score_loss, static_argnames="cfg")(
        LOGP, REF, INPUTS, cfg=cfg)
    np.testing.assert_allclose(jit_loss, eager_loss, **TOL)
    assert set(jit_m) == set(eager_m)
    assert all(v.shape == () for v in jit_m.values())
  # Same metric keys for every stage, so the trainer can log them uniformly.
  keys = [set(_loss(s)[1]) for s in losses.STAGES]
  assert keys[0] == keys[1] == keys[2]
  assert {"loss", "pg_loss_t1", "pg_loss_t2", "kl_t1", "kl_t2",
          "shaped_reward_t2", "adv_t1", "adv_t2"} <= keys[0]


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("changes,field", [
    (dict(stage="stage3"), "stage"),
    (dict(kl_estimator="k4"), "kl_estimator"),
    (dict(kl_mode="both"), "kl_mode"),
    (dict(baseline="mean"), "baseline"),
    (dict(normalization="batch"), "normalization"),
    (dict(alpha=-1.0), "alpha"),
    (dict(beta1=-0.01), "beta1"),
    (dict(beta2=float("nan")), "beta2"),
    (dict(samples_per_prompt=0, baseline="none"), "samples_per_prompt"),
    (dict(samples_per_prompt=1, baseline="loo"), "samples_per_prompt"),
])
def test_bad_config_raises_naming_field(changes, field):
  with pytest.raises(ValueError, match=f"LossConfig.{field}"):
    LossConfig(**{"samples_per_prompt": 2, **changes})


def test_loo_default_needs_k():
  with pytest.raises(ValueError, match="baseline='loo'"):
    LossConfig()   # default baseline is loo, default k = 1
  LossConfig(baseline="none")   # fine


def test_bad_batch_or_shapes_raise():
  cfg = CFG.replace(samples_per_prompt=3, baseline="batch_mean")
  with pytest.raises(ValueError, match="not divisible by LossConfig.samples_per_prompt"):
    objectives.score_loss(LOGP, REF, INPUTS, cfg)
  with pytest.raises(ValueError, match="attempt_BT"):
    objectives.score_loss(LOGP, REF, INPUTS._replace(attempt_BT=jnp.zeros((2, 4), jnp.int32)),
                          CFG)
  with pytest.raises(ValueError, match="rewards_BA"):
    objectives.score_loss(LOGP, REF, INPUTS._replace(rewards_BA=jnp.zeros((3, 2))), CFG)
  with pytest.raises(ValueError, match="A >= 2"):
    objectives.score_loss(LOGP, REF, INPUTS._replace(rewards_BA=jnp.zeros((2, 1))), CFG)
  with pytest.raises(ValueError, match="ref_logp_BT"):
    objectives.score_loss(LOGP, REF[:, :4], INPUTS, CFG)
