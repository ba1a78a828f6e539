"""The building blocks of the SCoRe objectives (`score_jax.rl.objectives`), pure and jit-able.

Per token: log-probs and entropies from logits, KL estimators, masked means. Per episode:
baseline advantages and Stage II's shaped rewards. `LossConfig` holds the objective's
static settings. Rows `[g*k, (g+1)*k)` share a prompt (k = samples_per_prompt) for
leave-one-out baselines.

Legend: B batch, T sequence length, V vocab.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

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
  kl_estimator: str = "k1"       # "k1" | "k2" | "k3"
  kl_mode: str = "reward"        # "reward" (folded into the reward, no grad) | "loss" (a term)
  baseline: str = "loo"          # "none" | "batch_mean" | "loo" (leave-one-out over k samples)
  samples_per_prompt: int = 1    # k: rows [g*k, (g+1)*k) share prompt g
  normalization: str = "token"   # "token" | "sequence" (see masked_mean; sequence is
                                 # length-biased: see score_jax.rl.objectives)
  shaping_baseline: bool = False  # Stage II: drop the -alpha r1 part of the turn-2 reward
                                  # (zero expected gradient, only variance; beyond the paper)

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
  logp_BT = logprobs_of(logits_BTV[:, :-1], tokens_BT[:, 1:])
  return jnp.pad(logp_BT, ((0, 0), (1, 0)))


def logprobs_of(logits_BTV: jax.Array, target_BT: jax.Array) -> jax.Array:
  """`log softmax(logits_BTV[b, t])[target_BT[b, t]]` in float32 (no shift)."""
  logits_BTV = logits_BTV.astype(jnp.float32)
  picked_BT = jnp.take_along_axis(logits_BTV, target_BT[..., None].astype(jnp.int32),
                                  axis=-1)[..., 0]
  return picked_BT - jax.nn.logsumexp(logits_BTV, axis=-1)


def entropy_of(logits_BTV: jax.Array) -> jax.Array:
  """`- sum_v p log p` with `p = softmax(logits_BTV[b, t])`, in float32 (no shift)."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  p_BTV = jnp.exp(logp_BTV)
  return -jnp.sum(jnp.where(p_BTV > 0, p_BTV * logp_BTV, 0.0), axis=-1)


def token_entropy(logits_BTV: jax.Array) -> jax.Array:
  """Entropy of the next-token distribution that scores token t, aligned like token_logprobs.

  `entropy_BT[b, t] = - sum_v p log p` with `p = softmax(logits_BTV[b, t-1])`; column 0 is 0.
  """
  if logits_BTV.ndim != 3:
    raise ValueError(f"token_entropy: logits_BTV must be [B, T, V], got {logits_BTV.shape}")
  return jnp.pad(entropy_of(logits_BTV[:, :-1]), ((0, 0), (1, 0)))


def kl_per_token(logp_BT: jax.Array, ref_logp_BT: jax.Array, estimator: str) -> jax.Array:
  """Per-token estimate of KL(pi || ref) from on-policy samples (Schulman's k1/k2/k3).

  With `d = ref_logp - logp` (the reference is stop-gradient'ed):
    k1 = -d                   unbiased value; as a loss its expected gradient is 0.
    k2 = d^2 / 2              biased value; as a loss its expected gradient is that of the
                              per-token KL(pi || ref) at the sampled contexts.
    k3 = exp(d) - d - 1 >= 0  unbiased value; as a loss its expected gradient is that of
                              KL(ref || pi), not KL(pi || ref) (biased).
  None of them, as a loss term, follows the gradient of the paper's sequence-level
  KL(pi || ref); k1 summed per sequence and folded into the reward does
  (kl_mode="reward"; see score_jax.rl.objectives).
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
