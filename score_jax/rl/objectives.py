"""The SCoRe objectives (Kumar et al. 2024, Eq. 2-4) as per-token weights over a whole step.

Every objective is a sum of per-turn terms on the Episode's turn masks m_i (y1 tokens: m_1,
y2 tokens: m_2), with rewards R_i[b] per row and advantages A_i = baseline(R_i) (stop-grad):

  L = sum_i [ - sum_{b,t} A_i[b] w_i[b,t] logp[b,t]                   (REINFORCE)
              + beta_i sum_{b,t} w_i[b,t] k(logp, ref)[b,t] ]         (kl_mode="loss")

where w_i is the normaliser of `losses.masked_mean` over the WHOLE step's batch:
  token:    w_i[b,t] = m_i[b,t] / max(1, sum_{b',t'} m_i[b',t'])      (every token weighs the same)
  sequence: w_i[b,t] = m_i[b,t] / (B * max(1, sum_t' m_i[b,t']))      (every row weighs the same,
            so each token of an L-token attempt weighs 1/L: length-biased. With equal
            advantages a 10-token wrong attempt's tokens are pushed down 10x as hard as a
            100-token one's; token means push them alike)
With kl_mode="reward" the KL leaves the loss and is folded into the reward before the
baseline, R_i[b] -= beta_i sg(sum_t m_i[b,t] k(logp, ref)[b,t]).

Per stage (r1, r2 in {0, 1} the graded attempts):
  Stage I  (Eq. 3): R_1 = 0, R_2 = r2; KL weights beta_1 := beta2 on y1 (the strong anchor of
            the first attempt to the base model), beta_2 := beta1 on y2.
  Stage II (Eq. 4): R_1 = r1, R_2 = r2 + alpha (r2 - r1); KL weight beta1 on both turns.
            With `shaping_baseline` (beyond the paper) R_2 = r2 + alpha r2: the -alpha r1 part
            is fixed before y2 is sampled, so it has zero expected gradient on the y2 tokens
            and only adds variance.
  single_turn (Eq. 2 on attempt 1): R_1 = r1, KL beta1 on y1; turn 2 is only monitored.

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

Legend: B batch, T sequence length.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from score_jax.rl import losses
from score_jax.rl.episode import Episode
from score_jax.rl.losses import LossConfig


class TurnWeights(NamedTuple):
  """One turn's per-token weights over the whole step's batch (all stop-gradient)."""
  pg_BT: jax.Array      # -A[b] w[b,t]: the REINFORCE surrogate is sum pg_BT * logp_BT
  kl_BT: jax.Array      # beta w[b,t] (kl_mode="loss"; 0 otherwise): + sum kl_BT * k_BT
  token_BT: jax.Array   # m[b,t] / max(1, N): token means of monitored quantities
  row_BT: jax.Array     # m[b,t] / B: per-row sums averaged over rows


class Weights(NamedTuple):
  """The step's weights (a pytree with a leading batch dimension: split into micro-batches)."""
  t1: TurnWeights
  t2: TurnWeights


def _check(episode: Episode, cfg: LossConfig) -> None:
  """Shape checks done at trace time (static shapes only)."""
  if not isinstance(cfg, LossConfig):
    raise ValueError(f"cfg must be a LossConfig, got {type(cfg).__name__}")
  shape = episode.turn1_mask_BT.shape
  if len(shape) != 2 or episode.turn2_mask_BT.shape != shape:
    raise ValueError(f"Episode.turn1_mask_BT {shape} and turn2_mask_BT "
                     f"{episode.turn2_mask_BT.shape} must be the same [B, T] shape")
  for name in ("r1_B", "r2_B"):
    if getattr(episode, name).shape != shape[:1]:
      raise ValueError(f"Episode.{name} has shape {getattr(episode, name).shape}, "
                       f"expected ({shape[0]},)")
  if shape[0] % cfg.samples_per_prompt:
    raise ValueError(
        f"batch size {shape[0]} is not divisible by LossConfig.samples_per_prompt="
        f"{cfg.samples_per_prompt}: feed whole groups of k samples per prompt")


class StageRewards(NamedTuple):
  """What a stage rewards and anchors, per turn (rewards before any KL fold)."""
  R1_B: jax.Array             # turn-1 reward fed to the baseline
  R2_B: jax.Array             # turn-2 reward fed to the baseline
  shaped_t2_B: jax.Array      # the stage's turn-2 task reward (logged as shaped_reward_t2)
  beta_t1: float              # KL weight on the y1 tokens
  beta_t2: float              # KL weight on the y2 tokens
  trains_t2: bool             # whether the y2 tokens are trained at all


def turn_rewards(episode: Episode, cfg: LossConfig) -> StageRewards:
  """The stage's rewards and KL weights per turn (see the module docstring)."""
  r1_B = jax.lax.stop_gradient(episode.r1_B).astype(jnp.float32)
  r2_B = jax.lax.stop_gradient(episode.r2_B).astype(jnp.float32)
  if cfg.stage == "stage1":
    return StageRewards(jnp.zeros_like(r1_B), r2_B, r2_B, cfg.beta2, cfg.beta1, True)
  if cfg.stage == "stage2":
    _, shaped_B = losses.shaped_turn_rewards(r1_B, r2_B, cfg.alpha)
    # The shaping baseline adds back alpha r1 (fixed before y2): R2 = r2 + alpha r2.
    R2_B = shaped_B + cfg.alpha * r1_B if cfg.shaping_baseline else shaped_B
    return StageRewards(r1_B, R2_B, shaped_B, cfg.beta1, cfg.beta1, True)
  zeros_B = jnp.zeros_like(r2_B)
  return StageRewards(r1_B, zeros_B, zeros_B, cfg.beta1, 0.0, False)


def normaliser(mask_BT: jax.Array, normalization: str) -> jax.Array:
  """w[b,t] of the module docstring: masked_mean(x, m) == sum(w * x) over the batch."""
  mask_BT = mask_BT.astype(jnp.float32)
  if normalization == "token":
    return mask_BT / jnp.maximum(jnp.sum(mask_BT), 1.0)
  rows = mask_BT.shape[0]
  return mask_BT / (rows * jnp.maximum(jnp.sum(mask_BT, axis=1, keepdims=True), 1.0))


def token_weights(episode: Episode, cfg: LossConfig, kl_sums_B: tuple[jax.Array, jax.Array]
                  | None = None) -> tuple[Weights, dict[str, jax.Array]]:
  """The stage's per-token weights over the whole batch, and its per-row metrics.

  `kl_sums_B` = (sum_t m_1 k, sum_t m_2 k) per row, needed with kl_mode="reward" only.
  Metrics: total_reward_ti (mean R_i after any KL fold), adv_ti / adv_abs_ti (mean and
  mean |.| advantage), tokens_ti (mean attempt length), shaped_reward_t2 (mean turn-2 task
  reward of the stage: r2 in Stage I, r2 + alpha (r2 - r1) in Stage II, 0 single-turn).
  """
  _check(episode, cfg)
  if cfg.kl_mode == "reward" and kl_sums_B is None:
    raise ValueError("token_weights: kl_mode='reward' needs the per-row KL sums")
  stage = turn_rewards(episode, cfg)
  turns, metrics = [], {"shaped_reward_t2": jnp.mean(stage.shaped_t2_B)}
  for i, (mask_BT, R_B, beta, trained) in enumerate(
      ((episode.turn1_mask_BT, stage.R1_B, stage.beta_t1, True),
       (episode.turn2_mask_BT, stage.R2_B, stage.beta_t2, stage.trains_t2)), start=1):
    mask_BT = mask_BT.astype(jnp.float32)
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
  weights = jax.tree.map(jax.lax.stop_gradient, Weights(*turns))
  return weights, {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}


def weighted_loss(logp_BT: jax.Array, ref_logp_BT: jax.Array, weights: Weights,
                  kl_estimator: str) -> tuple[jax.Array, dict[str, jax.Array]]:
  """These rows' share of the objective, and of its additive metrics.

  Summed over the micro-batches of a step this is the whole batch's loss exactly. Metrics
  (sums too): loss, pg_loss_ti, kl_loss_ti (the weighted KL term, 0 in reward mode), kl_ti
  (mean per-token estimate), kl_seq_ti (mean per-row sum).
  """
  logp_BT = logp_BT.astype(jnp.float32)
  k_BT = losses.kl_per_token(logp_BT, ref_logp_BT, kl_estimator)
  k_sg_BT = jax.lax.stop_gradient(k_BT)
  loss, metrics = jnp.zeros((), jnp.float32), {}
  for turn, w in (("t1", weights.t1), ("t2", weights.t2)):
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
            kl_estimator: str) -> tuple[jax.Array, jax.Array]:
  """Per-row KL sums over each turn's tokens (stop-gradient), for kl_mode="reward"."""
  k_BT = jax.lax.stop_gradient(losses.kl_per_token(logp_BT, ref_logp_BT, kl_estimator))
  return tuple(jnp.sum(k_BT * m.astype(jnp.float32), axis=1)
               for m in (episode.turn1_mask_BT, episode.turn2_mask_BT))


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
  if episode.turn1_mask_BT.shape != logp_BT.shape:
    raise ValueError(f"Episode.turn1_mask_BT has shape {episode.turn1_mask_BT.shape}, "
                     f"expected {logp_BT.shape} like logp_BT")
  sums = (kl_sums(logp_BT, ref_logp_BT, episode, cfg.kl_estimator)
          if cfg.kl_mode == "reward" else None)
  weights, row_metrics = token_weights(episode, cfg, sums)
  loss, metrics = weighted_loss(logp_BT, ref_logp_BT, weights, cfg.kl_estimator)
  return loss, {**metrics, **row_metrics}


def stage1_loss(logp_BT, ref_logp_BT, episode: Episode, cfg: LossConfig):
  """SCoRe Stage I (Eq. 3): reward only y2, anchor y1 to the reference with beta2.

  kl_mode="loss" (A2 = baseline(r2), KL_i = sum w_i k):
    L = -sum A2 w_2 logp + beta1 KL_2 + beta2 KL_1
  so the y1 tokens get gradient only (and always, for beta2 > 0) from beta2 KL_1.
  kl_mode="reward": R1 = -beta2 sg(sum_t k m1), R2 = r2 - beta1 sg(sum_t k m2),
    L = -sum A1 w_1 logp - sum A2 w_2 logp, A_i = baseline(R_i).
  """
  return score_loss(logp_BT, ref_logp_BT, episode, cfg.replace(stage="stage1"))


def stage2_loss(logp_BT, ref_logp_BT, episode: Episode, cfg: LossConfig):
  """SCoRe Stage II (Eq. 4): per-turn rewards (discount 0) with the shaping bonus.

  R1 = r1, R2 = r2 + alpha (r2 - r1); with kl_mode="loss", A_i = baseline(R_i):
    L = -sum A1 w_1 logp - sum A2 w_2 logp + beta1 (KL_1 + KL_2)
  so the y1 tokens see only r1 and the y2 tokens only the shaped R2 (never the total).
  kl_mode="reward": R_i -= beta1 sg(sum_t k m_i) and the KL terms leave the loss.
  """
  return score_loss(logp_BT, ref_logp_BT, episode, cfg.replace(stage="stage2"))


def single_turn_loss(logp_BT, ref_logp_BT, episode: Episode, cfg: LossConfig):
  """Single-turn RL baseline (Eq. 2 on attempt 1); turn-2 tokens get no gradient.

  kl_mode="loss": L = -sum A1 w_1 logp + beta1 KL_1 with A1 = baseline(r1).
  kl_mode="reward": R1 = r1 - beta1 sg(sum_t k m1), L = -sum A1 w_1 logp.
  Turn-2 metrics (kl_t2, kl_seq_t2, tokens_t2) are reported for monitoring only.
  """
  return score_loss(logp_BT, ref_logp_BT, episode, cfg.replace(stage="single_turn"))
