"""The SCoRe objectives (Kumar et al. 2024, Eq. 2-4) as per-token weights over a whole step.

Every objective is a sum of per-attempt terms on the Episode's attempt masks m_t (the
trained tokens of attempt t = 1..A; A = 2 is the paper's protocol), with rewards R_t[b] per
row and advantages A_t = baseline(R_t) (stop-grad):

  L = sum_t [ - sum_{b,s} A_t[b] w_t[b,s] logp[b,s]                   (REINFORCE)
              + beta_t sum_{b,s} w_t[b,s] k(logp, ref)[b,s] ]         (kl_mode="loss")

where w_t is the normaliser of `losses.masked_mean` over the WHOLE step's batch:
  token:    w_t[b,s] = m_t[b,s] / max(1, sum_{b',s'} m_t[b',s'])  (every token weighs the same)
  sequence: w_t[b,s] = m_t[b,s] / (B * max(1, sum_s' m_t[b,s']))  (every row weighs the same,
            so each token of an L-token attempt weighs 1/L: length-biased. With equal
            advantages a 10-token wrong attempt's tokens are pushed down 10x as hard as a
            100-token one's; token means push them alike)
With kl_mode="reward" the KL leaves the loss and is folded into the reward before the
baseline, R_t[b] -= beta_t sg(sum_s m_t[b,s] k(logp, ref)[b,s]).

Per stage (r_t in {0, 1} the graded attempts; the paper defines A = 2, where these are
exactly its Eq. 3 and 4):
  Stage I  (Eq. 3): R_t = 0 for t < A, R_A = r_A; KL weights beta_t := beta2 on every earlier
            attempt (the strong anchor to the base model), beta_A := beta1 on the last.
  Stage II (Eq. 4): R_1 = r_1, R_t = r_t + alpha (r_t - r_{t-1}) for t >= 2; beta1 on every
            attempt. With `shaping_baseline` (beyond the paper) R_t = r_t + alpha r_t: the
            -alpha r_{t-1} part is fixed before y_t is sampled, so it has zero expected
            gradient on the y_t tokens and only adds variance.
  single_turn (Eq. 2 on attempt 1): R_1 = r_1, KL beta1 on y1; later attempts only monitored.
For A > 2 (our extension, not the paper's) see `stage1_loss` and `stage2_loss`.

Exact accumulation: rewards and masks are known before any forward pass, so `token_weights`
computes every advantage (any baseline, over the whole batch or its groups of k rows) and
every normaliser over the whole step's batch FIRST; the loss of a micro-batch is then its
rows' share of the sum above (`weighted_loss`), and the micro-batch losses and gradients are
SUMMED. Micro-batching therefore changes memory and nothing else, for every baseline,
normalisation, KL estimator and KL placement, on one process or many (the step's arrays are
global). With kl_mode="reward" the per-row KL sums need the policy's log-probs before the
advantages: the step computes them in a first, gradient-free pass.

Which KL does what (d = ref_logp - logp on the sampled tokens, see `losses.kl_per_token`):
the paper's objective is E[r] - beta KL(pi || ref) of whole sequences. Folded into the reward
(kl_mode="reward"), k1's per-sequence sum is an unbiased estimate of that KL and REINFORCE on
R - beta sg(KL_seq) follows its gradient (the REINFORCE-with-KL baseline the paper builds on).
As loss terms (kl_mode="loss") the estimators are not that objective: k1's expected gradient
is 0; k2's is the gradient of the per-token KL(pi || ref) at the sampled contexts (the
sequence-level KL's gradient minus the reward-to-go part); k3's is that of KL(ref || pi).

Legend: B batch, T sequence length, A attempts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from score_jax.rl import losses
from score_jax.rl.episode import Episode
from score_jax.rl.losses import LossConfig


class TurnWeights(NamedTuple):
  """One attempt's per-token weights over the whole step's batch (all stop-gradient)."""
  pg_BT: jax.Array      # -A[b] w[b,t]: the REINFORCE surrogate is sum pg_BT * logp_BT
  kl_BT: jax.Array      # beta w[b,t] (kl_mode="loss"; 0 otherwise): + sum kl_BT * k_BT
  token_BT: jax.Array   # m[b,t] / max(1, N): token means of monitored quantities
  row_BT: jax.Array     # m[b,t] / B: per-row sums averaged over rows


# The step's weights: one TurnWeights per attempt, in order (a pytree whose leaves have a
# leading batch dimension: split into micro-batches).
Weights = tuple[TurnWeights, ...]


def _check(episode: Episode, cfg: LossConfig) -> None:
  """Shape checks done at trace time (static shapes only)."""
  if not isinstance(cfg, LossConfig):
    raise ValueError(f"cfg must be a LossConfig, got {type(cfg).__name__}")
  shape = episode.attempt_BT.shape
  if len(shape) != 2:
    raise ValueError(f"Episode.attempt_BT {shape} must be [B, T]")
  rewards = episode.rewards_BA.shape
  if len(rewards) != 2 or rewards[0] != shape[0] or rewards[1] < 2:
    raise ValueError(f"Episode.rewards_BA has shape {rewards}, expected ({shape[0]}, A) with "
                     "A >= 2 attempts")
  if shape[0] % cfg.samples_per_prompt:
    raise ValueError(
        f"batch size {shape[0]} is not divisible by LossConfig.samples_per_prompt="
        f"{cfg.samples_per_prompt}: feed whole groups of k samples per prompt")


class StageRewards(NamedTuple):
  """What a stage rewards and anchors, per attempt (rewards before any KL fold)."""
  R_B: tuple[jax.Array, ...]       # attempt t's reward fed to the baseline, t = 1..A
  shaped_B: tuple[jax.Array, ...]  # the stage's task reward of attempts 2..A (logged as
                                   # shaped_reward_t<t>)
  beta: tuple[float, ...]          # KL weight on each attempt's tokens
  trains: tuple[bool, ...]         # whether each attempt's tokens are trained at all


def turn_rewards(episode: Episode, cfg: LossConfig) -> StageRewards:
  """The stage's rewards and KL weights per attempt (see the module docstring)."""
  A = episode.num_attempts
  r_B = [jax.lax.stop_gradient(episode.reward(t)).astype(jnp.float32) for t in range(1, A + 1)]
  if cfg.stage == "stage1":
    zeros_B = jnp.zeros_like(r_B[0])
    R_B = (zeros_B,) * (A - 1) + (r_B[-1],)
    return StageRewards(R_B, R_B[1:], (cfg.beta2,) * (A - 1) + (cfg.beta1,), (True,) * A)
  if cfg.stage == "stage2":
    R_B, shaped = [r_B[0]], []
    for t in range(2, A + 1):
      _, shaped_B = losses.shaped_turn_rewards(r_B[t - 2], r_B[t - 1], cfg.alpha)
      # The shaping baseline adds back alpha r_{t-1} (fixed before y_t): R_t = r_t + alpha r_t.
      R_B.append(shaped_B + cfg.alpha * r_B[t - 2] if cfg.shaping_baseline else shaped_B)
      shaped.append(shaped_B)
    return StageRewards(tuple(R_B), tuple(shaped), (cfg.beta1,) * A, (True,) * A)
  zeros_B = jnp.zeros_like(r_B[-1])
  return StageRewards((r_B[0],) + (zeros_B,) * (A - 1), (zeros_B,) * (A - 1),
                      (cfg.beta1,) + (0.0,) * (A - 1), (True,) + (False,) * (A - 1))


def normaliser(mask_BT: jax.Array, normalization: str) -> jax.Array:
  """w[b,t] of the module docstring: masked_mean(x, m) == sum(w * x) over the batch."""
  mask_BT = mask_BT.astype(jnp.float32)
  if normalization == "token":
    return mask_BT / jnp.maximum(jnp.sum(mask_BT), 1.0)
  rows = mask_BT.shape[0]
  return mask_BT / (rows * jnp.maximum(jnp.sum(mask_BT, axis=1, keepdims=True), 1.0))


def token_weights(episode: Episode, cfg: LossConfig, kl_sums_B: tuple[jax.Array, ...]
                  | None = None) -> tuple[Weights, dict[str, jax.Array]]:
  """The stage's per-token weights over the whole batch, and its per-row metrics.

  `kl_sums_B` = (sum_s m_t k per row for t = 1..A), needed with kl_mode="reward" only.
  Metrics, for each attempt t: total_reward_t<t> (mean R_t after any KL fold), adv_t<t> /
  adv_abs_t<t> (mean and mean |.| advantage), tokens_t<t> (mean attempt length); and for
  t >= 2 shaped_reward_t<t> (mean task reward of attempt t in the stage: 0 before the last
  attempt and r_A at it in Stage I, r_t + alpha (r_t - r_{t-1}) in Stage II, 0 single-turn).
  """
  _check(episode, cfg)
  if cfg.kl_mode == "reward" and kl_sums_B is None:
    raise ValueError("token_weights: kl_mode='reward' needs the per-row KL sums")
  stage = turn_rewards(episode, cfg)
  metrics = {f"shaped_reward_t{t}": jnp.mean(shaped_B)
             for t, shaped_B in enumerate(stage.shaped_B, start=2)}
  turns = []
  for i, (R_B, beta, trained) in enumerate(zip(stage.R_B, stage.beta, stage.trains), start=1):
    mask_BT = episode.mask(i).astype(jnp.float32)
    if cfg.kl_mode == "reward":
      R_B = R_B - beta * jax.lax.stop_gradient(kl_sums_B[i - 1]).astype(jnp.float32)
    adv_B = losses.baseline_advantages(R_B, cfg.baseline, cfg.samples_per_prompt)
    w_BT = normaliser(mask_BT, cfg.normalization)
    on = 1.0 if trained else 0.0
    turns.append(TurnWeights(
        pg_BT=-on * adv_B[:, None] * w_BT,
        kl_BT=(on * beta * w_BT if cfg.kl_mode == "loss" else jnp.zeros_like(w_BT)),
        token_BT=normaliser(mask_BT, "token"),
        row_BT=mask_BT / mask_BT.shape[0]))
    metrics[f"total_reward_t{i}"] = on * jnp.mean(R_B)
    metrics[f"adv_t{i}"] = on * jnp.mean(adv_B)
    metrics[f"adv_abs_t{i}"] = on * jnp.mean(jnp.abs(adv_B))
    metrics[f"tokens_t{i}"] = jnp.mean(jnp.sum(mask_BT, axis=1))
  weights = jax.tree.map(jax.lax.stop_gradient, tuple(turns))
  return weights, {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}


def weighted_loss(logp_BT: jax.Array, ref_logp_BT: jax.Array, weights: Weights,
                  kl_estimator: str) -> tuple[jax.Array, dict[str, jax.Array]]:
  """These rows' share of the objective, and of its additive metrics.

  Summed over the micro-batches of a step this is the whole batch's loss exactly. Metrics
  (sums too), per attempt t: pg_loss_t<t>, kl_loss_t<t> (the weighted KL term, 0 in reward
  mode), kl_t<t> (mean per-token estimate), kl_seq_t<t> (mean per-row sum); and loss.
  """
  logp_BT = logp_BT.astype(jnp.float32)
  k_BT = losses.kl_per_token(logp_BT, ref_logp_BT, kl_estimator)
  k_sg_BT = jax.lax.stop_gradient(k_BT)
  loss, metrics = jnp.zeros((), jnp.float32), {}
  for t, w in enumerate(weights, start=1):
    turn = f"t{t}"
    pg = jnp.sum(w.pg_BT * logp_BT)
    kl_loss = jnp.sum(w.kl_BT * k_BT)
    loss = loss + pg + kl_loss
    metrics[f"pg_loss_{turn}"] = pg
    metrics[f"kl_loss_{turn}"] = kl_loss
    metrics[f"kl_{turn}"] = jnp.sum(w.token_BT * k_sg_BT)
    metrics[f"kl_seq_{turn}"] = jnp.sum(w.row_BT * k_sg_BT)
  metrics["loss"] = loss
  return loss, {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}


def kl_sums(logp_BT: jax.Array, ref_logp_BT: jax.Array, episode: Episode,
            kl_estimator: str) -> tuple[jax.Array, ...]:
  """Per-row KL sums over each attempt's tokens (stop-gradient), for kl_mode="reward"."""
  k_BT = jax.lax.stop_gradient(losses.kl_per_token(logp_BT, ref_logp_BT, kl_estimator))
  return tuple(jnp.sum(k_BT * episode.mask(t).astype(jnp.float32), axis=1)
               for t in range(1, episode.num_attempts + 1))


def score_loss(logp_BT: jax.Array, ref_logp_BT: jax.Array, episode: Episode,
               cfg: LossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The stage's objective on one whole batch: (loss, metrics) (see the module docstring).

  The jitted step computes the same thing in micro-batches (`score_jax.rl.step`).
  """
  if not isinstance(cfg, LossConfig):
    raise ValueError(f"score_loss: cfg must be a LossConfig, got {type(cfg).__name__}")
  if logp_BT.ndim != 2 or ref_logp_BT.shape != logp_BT.shape:
    raise ValueError(f"logp_BT {logp_BT.shape} and ref_logp_BT {ref_logp_BT.shape} must be "
                     "the same [B, T] shape")
  if episode.attempt_BT.shape != logp_BT.shape:
    raise ValueError(f"Episode.attempt_BT has shape {episode.attempt_BT.shape}, "
                     f"expected {logp_BT.shape} like logp_BT")
  sums = (kl_sums(logp_BT, ref_logp_BT, episode, cfg.kl_estimator)
          if cfg.kl_mode == "reward" else None)
  weights, row_metrics = token_weights(episode, cfg, sums)
  loss, metrics = weighted_loss(logp_BT, ref_logp_BT, weights, cfg.kl_estimator)
  return loss, {**metrics, **row_metrics}


def stage1_loss(logp_BT, ref_logp_BT, episode: Episode, cfg: LossConfig):
  """SCoRe Stage I (Eq. 3): reward only the last attempt, anchor every earlier one to the
  reference with beta2.

  A = 2 (the paper), kl_mode="loss" (A2 = baseline(r2), KL_t = sum w_t k):
    L = -sum A2 w_2 logp + beta1 KL_2 + beta2 KL_1
  so the y1 tokens get gradient only (and always, for beta2 > 0) from beta2 KL_1.
  kl_mode="reward": R1 = -beta2 sg(sum_s k m1), R2 = r2 - beta1 sg(sum_s k m2),
    L = -sum A1 w_1 logp - sum A2 w_2 logp, A_t = baseline(R_t).

  A > 2 (our extension): L = -sum A_A w_A logp + beta1 KL_A + beta2 sum_{t<A} KL_t (or the
  same KLs folded into R_t = -beta2 sg(KL_seq_t), t < A, and R_A = r_A - beta1 sg(KL_seq_A)).
  Rationale: Stage I exists to train the correction step while the attempts it corrects stay
  the base model's, so that Stage II does not start from a policy whose attempts have
  collapsed together. With A attempts the step being trained is the last one and everything
  before it is its input distribution: each earlier attempt keeps the strong anchor, and
  only the final outcome is rewarded (no intermediate attempt is pushed to be right or
  wrong; each gets only its own KL term).
  """
  return score_loss(logp_BT, ref_logp_BT, episode, cfg.replace(stage="stage1"))


def stage2_loss(logp_BT, ref_logp_BT, episode: Episode, cfg: LossConfig):
  """SCoRe Stage II (Eq. 4): per-attempt rewards (discount 0) with the shaping bonus.

  A = 2 (the paper): R1 = r1, R2 = r2 + alpha (r2 - r1); with kl_mode="loss",
  A_t = baseline(R_t):
    L = -sum A1 w_1 logp - sum A2 w_2 logp + beta1 (KL_1 + KL_2)
  so the y1 tokens see only r1 and the y2 tokens only the shaped R2 (never the total).
  kl_mode="reward": R_t -= beta1 sg(sum_s k m_t) and the KL terms leave the loss.

  A > 2 (our extension): R_1 = r_1 and R_t = r_t + alpha (r_t - r_{t-1}) for t = 2..A,
    L = -sum_t A_t w_t logp + beta1 sum_t KL_t.
  Rationale: the paper's bonus rewards the transition an attempt makes from the one it
  reads (wrong -> right +alpha, right -> wrong -alpha), which is what self-correction is;
  every later attempt reads the one just before it, so each transition is shaped the same
  way, and with discount 0 each attempt's tokens get exactly their own R_t: an attempt is
  never credited with a later attempt's reward (the earlier attempts are prompt for the
  later ones and get no gradient from their terms).
  """
  return score_loss(logp_BT, ref_logp_BT, episode, cfg.replace(stage="stage2"))


def single_turn_loss(logp_BT, ref_logp_BT, episode: Episode, cfg: LossConfig):
  """Single-turn RL baseline (Eq. 2 on attempt 1); later attempts get no gradient.

  kl_mode="loss": L = -sum A1 w_1 logp + beta1 KL_1 with A1 = baseline(r1).
  kl_mode="reward": R1 = r1 - beta1 sg(sum_s k m1), L = -sum A1 w_1 logp.
  Later attempts' metrics (kl_t<t>, kl_seq_t<t>, tokens_t<t>) are for monitoring only.
  """
  return score_loss(logp_BT, ref_logp_BT, episode, cfg.replace(stage="single_turn"))
