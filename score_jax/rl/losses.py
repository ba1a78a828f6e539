"""SCoRe objectives (Kumar et al. 2024, Eq. 2-4) as pure, jit-able functions.

One row of the batch is one two-turn episode laid out as a single token sequence
`[x, y1, x2-extra, y2]` (`score_jax.rl.episode.Episode`); the trainer gives per-position
log-probs of the policy (`logp_BT`) and of the frozen reference (`ref_logp_BT`), and the
losses read the Episode's boolean masks of the y1 tokens (`turn1_mask_BT`) and of the y2
tokens (`turn2_mask_BT`) and its binary rewards `r1_B`, `r2_B`. The y1 tokens are prompt
for turn 2, so only `turn1_mask_BT` covers them.

Every objective here is a sum of per-turn terms, each normalised over its own mask:

  PG_i  = - masked_mean(A_i[b] * logp[b, t], mask_i)        (REINFORCE, A_i stop-gradient)
  KL_i  = beta_i * masked_mean(k(logp, ref_logp)[b, t], mask_i)   (kl_mode="loss")

or, with kl_mode="reward", the KL is folded into that turn's reward before the baseline:
`R_i[b] - beta_i * sg(sum_t k(logp, ref)[b, t] mask_i[b, t])`, and no KL term is in the loss.
Rows `[g*k, (g+1)*k)` share a prompt (k = samples_per_prompt) for leave-one-out baselines.

Legend: B batch, T sequence length, V vocab.
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp

from score_jax.rl.episode import Episode

STAGES = ("stage1", "stage2", "single_turn")
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_MODES = ("loss", "reward")
BASELINES = ("none", "batch_mean", "loo")
NORMALIZATIONS = ("token", "sequence")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static settings of the SCoRe objective (hashable: pass it as a static jit arg)."""
  stage: str = "stage2"          # "stage1" | "stage2" | "single_turn"
  alpha: float = 10.0            # Stage II shaping bonus alpha * (r2 - r1)
  beta1: float = 0.01            # default KL weight (turn 2 in Stage I; both turns in Stage II)
  beta2: float = 0.1             # Stage I KL weight on turn-1 tokens
  kl_estimator: str = "k3"       # "k1" | "k2" | "k3"
  kl_mode: str = "loss"          # "loss" (KL term in the loss) | "reward" (folded, no grad)
  baseline: str = "loo"          # "none" | "batch_mean" | "loo" (leave-one-out over k samples)
  samples_per_prompt: int = 1    # k: rows [g*k, (g+1)*k) share prompt g
  normalization: str = "token"   # "token" | "sequence" (see masked_mean)

  def __post_init__(self):
    problems = []
    for field, allowed in (("stage", STAGES), ("kl_estimator", KL_ESTIMATORS),
                           ("kl_mode", KL_MODES), ("baseline", BASELINES),
                           ("normalization", NORMALIZATIONS)):
      value = getattr(self, field)
      if value not in allowed:
        problems.append(f"LossConfig.{field}={value!r} is unknown: use one of {allowed}")
    for field in ("alpha", "beta1", "beta2"):
      value = getattr(self, field)
      if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        problems.append(f"LossConfig.{field}={value!r} must be a finite number >= 0")
    k = self.samples_per_prompt
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
      problems.append(f"LossConfig.samples_per_prompt={k!r} must be an int >= 1")
    elif self.baseline == "loo" and k < 2:
      problems.append(
          f"LossConfig.samples_per_prompt={k} is too small for LossConfig.baseline='loo' "
          "(needs >= 2): sample k >= 2 answers per prompt, or set baseline='batch_mean' "
          "or 'none'")
    if problems:
      raise ValueError("Invalid LossConfig: " + "; ".join(problems))

  def replace(self, **changes) -> "LossConfig":
    return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- per token


def token_logprobs(logits_BTV: jax.Array, tokens_BT: jax.Array) -> jax.Array:
  """Log-prob of each token under the logits of the previous position, in float32.

  `logp_BT[b, t] = log softmax(logits_BTV[b, t-1])[tokens_BT[b, t]]` for t >= 1 and
  `logp_BT[:, 0] = 0` (the first token has no prediction).
  """
  if logits_BTV.ndim != 3 or tokens_BT.shape != logits_BTV.shape[:2]:
    raise ValueError(f"token_logprobs: logits_BTV {logits_BTV.shape} and tokens_BT "
                     f"{tokens_BT.shape} must be [B, T, V] and [B, T]")
  if not jnp.issubdtype(tokens_BT.dtype, jnp.integer):
    raise ValueError(f"token_logprobs: tokens_BT must be integer, got {tokens_BT.dtype}")
  logits_BTV = logits_BTV[:, :-1].astype(jnp.float32)
  target_BT = tokens_BT[:, 1:, None].astype(jnp.int32)
  picked_BT = jnp.take_along_axis(logits_BTV, target_BT, axis=-1)[..., 0]
  logp_BT = picked_BT - jax.nn.logsumexp(logits_BTV, axis=-1)
  return jnp.pad(logp_BT, ((0, 0), (1, 0)))


def token_entropy(logits_BTV: jax.Array) -> jax.Array:
  """Entropy of the next-token distribution that scores token t, aligned like token_logprobs.

  `entropy_BT[b, t] = - sum_v p log p` with `p = softmax(logits_BTV[b, t-1])`; column 0 is 0.
  """
  if logits_BTV.ndim != 3:
    raise ValueError(f"token_entropy: logits_BTV must be [B, T, V], got {logits_BTV.shape}")
  logp_BTV = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32), axis=-1)
  p_BTV = jnp.exp(logp_BTV)
  entropy_BT = -jnp.sum(jnp.where(p_BTV > 0, p_BTV * logp_BTV, 0.0), axis=-1)
  return jnp.pad(entropy_BT, ((0, 0), (1, 0)))


def kl_per_token(logp_BT: jax.Array, ref_logp_BT: jax.Array, estimator: str) -> jax.Array:
  """Per-token estimate of KL(pi || ref) from on-policy samples (Schulman's k1/k2/k3).

  With `d = ref_logp - logp` (the reference is stop-gradient'ed):
    k1 = -d                   unbiased value; as a loss its expected gradient is 0.
    k2 = d^2 / 2              biased value; as a loss its expected gradient is grad KL(pi||ref).
    k3 = exp(d) - d - 1 >= 0  unbiased value; as a loss its expected gradient is
                              grad KL(ref||pi), not grad KL(pi||ref) (biased).
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f"kl_per_token: estimator={estimator!r} is unknown: use one of "
                     f"{KL_ESTIMATORS} (LossConfig.kl_estimator)")
  logp_BT = logp_BT.astype(jnp.float32)
  d_BT = jax.lax.stop_gradient(ref_logp_BT).astype(jnp.float32) - logp_BT
  if estimator == "k1":
    return -d_BT
  if estimator == "k2":
    return 0.5 * jnp.square(d_BT)
  return jnp.expm1(d_BT) - d_BT


def masked_mean(x_BT: jax.Array, mask_BT: jax.Array, normalization: str) -> jax.Array:
  """Mean of x over the masked positions.

  token:    sum_{b,t} x m / max(1, sum_{b,t} m)                 (every token weighs the same)
  sequence: (1/B) sum_b [sum_t x m / max(1, sum_t m)]           (every row weighs the same;
            rows with no masked token contribute 0 but still count in B)
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"masked_mean: normalization={normalization!r} is unknown: use one of "
                     f"{NORMALIZATIONS} (LossConfig.normalization)")
  if x_BT.shape != mask_BT.shape:
    raise ValueError(f"masked_mean: x {x_BT.shape} and mask {mask_BT.shape} differ in shape")
  mask_BT = mask_BT.astype(jnp.float32)
  total_BT = x_BT.astype(jnp.float32) * mask_BT
  if normalization == "token":
    return jnp.sum(total_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)
  per_row_B = jnp.sum(total_BT, axis=1) / jnp.maximum(jnp.sum(mask_BT, axis=1), 1.0)
  return jnp.mean(per_row_B)


# ----------------------------------------------------------------------------- per episode


def baseline_advantages(rewards_B: jax.Array, baseline: str, k: int = 1) -> jax.Array:
  """Advantages `A = R - b` (stop-gradient'ed), rows [g*k, (g+1)*k) sharing a prompt.

  none:        A_b = R_b
  batch_mean:  A_b = R_b - mean_j R_j                       (over the whole batch)
  loo:         A_b = R_b - (1/(k-1)) sum_{j in group(b), j != b} R_j
                   = k/(k-1) * (R_b - mean_{j in group(b)} R_j)
  """
  if baseline not in BASELINES:
    raise ValueError(f"baseline_advantages: baseline={baseline!r} is unknown: use one of "
                     f"{BASELINES} (LossConfig.baseline)")
  rewards_B = jax.lax.stop_gradient(rewards_B).astype(jnp.float32)
  if rewards_B.ndim != 1:
    raise ValueError(f"baseline_advantages: rewards must be [B], got {rewards_B.shape}")
  if baseline == "none":
    return rewards_B
  if baseline == "batch_mean":
    return rewards_B - jnp.mean(rewards_B)
  batch = rewards_B.shape[0]
  if k < 2 or batch % k:
    raise ValueError(
        f"baseline_advantages: baseline='loo' needs samples_per_prompt k >= 2 dividing the "
        f"batch; got k={k}, batch={batch}: set LossConfig.samples_per_prompt to the number "
        "of samples per prompt and feed whole groups")
  r_GK = rewards_B.reshape(batch // k, k)
  others_GK = (jnp.sum(r_GK, axis=1, keepdims=True) - r_GK) / (k - 1)
  return (r_GK - others_GK).reshape(batch)


def shaped_turn_rewards(r1_B: jax.Array, r2_B: jax.Array,
                        alpha: float) -> tuple[jax.Array, jax.Array]:
  """Stage II per-turn rewards: turn 1 gets `r1`, turn 2 gets `r2 + alpha * (r2 - r1)`.

  With binary rewards and alpha=10, (r1, r2) = (0,0) -> 0, (0,1) -> 11, (1,0) -> -10,
  (1,1) -> 1 at turn 2.
  """
  r1_B = jax.lax.stop_gradient(r1_B).astype(jnp.float32)
  r2_B = jax.lax.stop_gradient(r2_B).astype(jnp.float32)
  return r1_B, r2_B + alpha * (r2_B - r1_B)


def policy_gradient_term(logp_BT: jax.Array, adv_B: jax.Array, mask_BT: jax.Array,
                         normalization: str) -> jax.Array:
  """REINFORCE surrogate `-masked_mean(sg(A)[b] * logp[b, t], mask)`.

  Its gradient is `-masked_mean(A[b] * grad logp[b, t], mask)`: only the masked tokens
  receive gradient, each scaled by its row's advantage.
  """
  if adv_B.shape != logp_BT.shape[:1]:
    raise ValueError(f"policy_gradient_term: adv_B {adv_B.shape} does not match the batch "
                     f"of logp_BT {logp_BT.shape}")
  adv_B = jax.lax.stop_gradient(adv_B).astype(jnp.float32)
  return masked_mean(-adv_B[:, None] * logp_BT.astype(jnp.float32), mask_BT, normalization)


# ----------------------------------------------------------------------------- objectives


def _check(logp_BT, ref_logp_BT, episode: Episode, cfg: LossConfig) -> None:
  """Shape checks done at trace time (static shapes only)."""
  if not isinstance(cfg, LossConfig):
    raise ValueError(f"cfg must be a LossConfig, got {type(cfg).__name__}")
  if logp_BT.ndim != 2 or ref_logp_BT.shape != logp_BT.shape:
    raise ValueError(f"logp_BT {logp_BT.shape} and ref_logp_BT {ref_logp_BT.shape} must be "
                     "the same [B, T] shape")
  batch = logp_BT.shape[0]
  for name in ("turn1_mask_BT", "turn2_mask_BT"):
    if getattr(episode, name).shape != logp_BT.shape:
      raise ValueError(f"Episode.{name} has shape {getattr(episode, name).shape}, "
                       f"expected {logp_BT.shape} like logp_BT")
  for name in ("r1_B", "r2_B"):
    if getattr(episode, name).shape != (batch,):
      raise ValueError(f"Episode.{name} has shape {getattr(episode, name).shape}, "
                       f"expected ({batch},)")
  if batch % cfg.samples_per_prompt:
    raise ValueError(
        f"batch size {batch} is not divisible by LossConfig.samples_per_prompt="
        f"{cfg.samples_per_prompt}: feed whole groups of k samples per prompt")


def _turn(logp_BT, ref_logp_BT, mask_BT, reward_B, beta, cfg: LossConfig) -> dict:
  """One turn's REINFORCE + KL pieces (KL as a loss term or folded into the reward)."""
  kl_BT = kl_per_token(logp_BT, ref_logp_BT, cfg.kl_estimator)
  mask_f_BT = mask_BT.astype(jnp.float32)
  kl_sum_B = jax.lax.stop_gradient(jnp.sum(kl_BT * mask_f_BT, axis=1))
  reward_B = jax.lax.stop_gradient(reward_B).astype(jnp.float32)
  if cfg.kl_mode == "loss":
    kl_loss = beta * masked_mean(kl_BT, mask_BT, cfg.normalization)
  else:
    reward_B = reward_B - beta * kl_sum_B
    kl_loss = jnp.zeros((), jnp.float32)
  adv_B = baseline_advantages(reward_B, cfg.baseline, cfg.samples_per_prompt)
  return dict(
      pg=policy_gradient_term(logp_BT, adv_B, mask_BT, cfg.normalization),
      kl_loss=kl_loss,
      kl=jax.lax.stop_gradient(masked_mean(kl_BT, mask_BT, "token")),
      kl_seq=jnp.mean(kl_sum_B),
      total_reward=jnp.mean(reward_B),
      adv=jnp.mean(adv_B),
      adv_abs=jnp.mean(jnp.abs(adv_B)),
      tokens=jnp.mean(jnp.sum(mask_f_BT, axis=1)))


def _assemble(t1: dict, t2: dict | None, logp_BT, ref_logp_BT, episode: Episode,
              cfg: LossConfig, shaped_t2_B) -> tuple[jax.Array, dict]:
  """Total loss and the metrics dict (same keys for every stage).

  Per turn i: pg_loss_ti, kl_loss_ti (the weighted KL term, 0 in reward mode), kl_ti (mean
  per-token estimate), kl_seq_ti (mean per-row sum), total_reward_ti (mean reward fed to the
  baseline, after any KL fold), adv_ti / adv_abs_ti (mean and mean |.| advantage), tokens_ti
  (mean masked tokens per row). Also shaped_reward_t2 (mean turn-2 task reward the stage
  uses: r2 in Stage I, r2 + alpha (r2 - r1) in Stage II, 0 single-turn). The raw rewards and
  deltas of the rollouts are the trainer's (`Trainer.rollout_stats`), not the loss's.
  """
  if t2 is None:   # single-turn: turn 2 is only monitored (no gradient)
    t2 = _turn(jax.lax.stop_gradient(logp_BT), ref_logp_BT, episode.turn2_mask_BT,
               jnp.zeros_like(episode.r2_B, jnp.float32), 0.0, cfg)
    t2["pg"] = t2["kl_loss"] = jnp.zeros((), jnp.float32)
    t2["total_reward"] = t2["adv"] = t2["adv_abs"] = jnp.zeros((), jnp.float32)
  loss = t1["pg"] + t1["kl_loss"] + t2["pg"] + t2["kl_loss"]
  metrics = {"loss": loss, "shaped_reward_t2": jnp.mean(shaped_t2_B)}
  for turn, parts in (("t1", t1), ("t2", t2)):
    metrics[f"pg_loss_{turn}"] = parts["pg"]
    for key in ("kl_loss", "kl", "kl_seq", "total_reward", "adv", "adv_abs", "tokens"):
      metrics[f"{key}_{turn}"] = parts[key]
  metrics = {name: jax.lax.stop_gradient(value) for name, value in metrics.items()}
  return loss, metrics


def stage1_loss(logp_BT, ref_logp_BT, episode: Episode,
                cfg: LossConfig) -> tuple[jax.Array, dict]:
  """SCoRe Stage I (Eq. 3): reward only y2, anchor y1 to the reference with beta2.

  kl_mode="loss" (m_i = turn-i mask, A2 = baseline(r2), KL_i = masked_mean(k, m_i)):
    L = -masked_mean(A2 logp, m2) + beta1 KL_2 + beta2 KL_1
    grad L = -masked_mean(A2 grad logp, m2) + beta1 grad KL_2 + beta2 grad KL_1
  so the y1 tokens get gradient only (and always, for beta2 > 0) from beta2 KL_1.
  kl_mode="reward": R1 = -beta2 sg(sum_t k m1), R2 = r2 - beta1 sg(sum_t k m2),
    L = -masked_mean(A1 logp, m1) - masked_mean(A2 logp, m2), A_i = baseline(R_i),
    grad L = -masked_mean(A1 grad logp, m1) - masked_mean(A2 grad logp, m2).
  Returns (loss, metrics).
  """
  _check(logp_BT, ref_logp_BT, episode, cfg)
  r2_B = jax.lax.stop_gradient(episode.r2_B).astype(jnp.float32)
  t1 = _turn(logp_BT, ref_logp_BT, episode.turn1_mask_BT, jnp.zeros_like(r2_B),
             cfg.beta2, cfg)
  t2 = _turn(logp_BT, ref_logp_BT, episode.turn2_mask_BT, r2_B, cfg.beta1, cfg)
  return _assemble(t1, t2, logp_BT, ref_logp_BT, episode, cfg, r2_B)


def stage2_loss(logp_BT, ref_logp_BT, episode: Episode,
                cfg: LossConfig) -> tuple[jax.Array, dict]:
  """SCoRe Stage II (Eq. 4): per-turn rewards (discount 0) with the shaping bonus.

  R1 = r1, R2 = r2 + alpha (r2 - r1); with kl_mode="loss", A_i = baseline(R_i):
    L = -masked_mean(A1 logp, m1) - masked_mean(A2 logp, m2) + beta1 (KL_1 + KL_2)
    grad L = -masked_mean(A1 grad logp, m1) - masked_mean(A2 grad logp, m2)
             + beta1 (grad KL_1 + grad KL_2)
  so the y1 tokens see only r1 and the y2 tokens only the shaped R2 (never the total).
  kl_mode="reward": R_i -= beta1 sg(sum_t k m_i) and the KL terms leave the loss.
  Returns (loss, metrics).
  """
  _check(logp_BT, ref_logp_BT, episode, cfg)
  r1_B, shaped_B = shaped_turn_rewards(episode.r1_B, episode.r2_B, cfg.alpha)
  t1 = _turn(logp_BT, ref_logp_BT, episode.turn1_mask_BT, r1_B, cfg.beta1, cfg)
  t2 = _turn(logp_BT, ref_logp_BT, episode.turn2_mask_BT, shaped_B, cfg.beta1, cfg)
  return _assemble(t1, t2, logp_BT, ref_logp_BT, episode, cfg, shaped_B)


def single_turn_loss(logp_BT, ref_logp_BT, episode: Episode,
                     cfg: LossConfig) -> tuple[jax.Array, dict]:
  """Single-turn RL baseline (Eq. 2 on attempt 1); turn-2 tokens get no gradient.

  kl_mode="loss": L = -masked_mean(A1 logp, m1) + beta1 KL_1 with A1 = baseline(r1),
    grad L = -masked_mean(A1 grad logp, m1) + beta1 grad KL_1.
  kl_mode="reward": R1 = r1 - beta1 sg(sum_t k m1), L = -masked_mean(A1 logp, m1).
  Turn-2 metrics (kl_t2, reward_t2) are reported for monitoring only.
  Returns (loss, metrics).
  """
  _check(logp_BT, ref_logp_BT, episode, cfg)
  r1_B = jax.lax.stop_gradient(episode.r1_B).astype(jnp.float32)
  t1 = _turn(logp_BT, ref_logp_BT, episode.turn1_mask_BT, r1_B, cfg.beta1, cfg)
  return _assemble(t1, None, logp_BT, ref_logp_BT, episode, cfg, jnp.zeros_like(r1_B))


def score_loss(logp_BT, ref_logp_BT, episode: Episode,
               cfg: LossConfig) -> tuple[jax.Array, dict]:
  """Dispatches on `cfg.stage` to stage1_loss / stage2_loss / single_turn_loss."""
  if not isinstance(cfg, LossConfig):
    raise ValueError(f"score_loss: cfg must be a LossConfig, got {type(cfg).__name__}")
  fn = {"stage1": stage1_loss, "stage2": stage2_loss,
        "single_turn": single_turn_loss}[cfg.stage]
  return fn(logp_BT, ref_logp_BT, episode, cfg)
