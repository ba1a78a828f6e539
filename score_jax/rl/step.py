"""The jitted update steps (RL stages and supervised warm-up) and the optimiser.

Pure functions of (params, opt_state, ref_params, episode): the host loop in `train.py` owns
every side effect. The batch is the rollout's `Episode` (`score_jax.rl.episode`) as it is.
One RL step = score the episodes under the frozen reference (without gradient), weight
every token over the whole batch (`score_jax.rl.objectives`), forward + backward the policy
micro-batch by micro-batch with `lax.scan` and SUM the micro-batches' shares (so
`micro_batches` changes memory and nothing else), clip by global norm, apply the optax
update. A step whose loss or gradient is not finite leaves params and optimiser state
unchanged and reports `skipped = 1`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from score_jax.model import transformer as model_lib
from score_jax.rl import losses
from score_jax.rl import objectives
from score_jax.rl import scoring
from score_jax.rl.episode import Episode


def build_optimizer(optim_cfg: Mapping[str, Any]) -> optax.GradientTransformation:
  """Adam / AdamW with clipping; the learning rate lives in the state (set per step).

  Moments take the params' dtype. With bf16 params (`model.param_dtype=bfloat16`) the
  update is applied in bf16: an update below half a bf16 ulp of its weight (0.2-0.4%)
  rounds away, which is fine at sft learning rates (1e-4..1e-3) but loses most of an RL
  step at 1e-6..1e-5; there keep float32 params and compute in bf16 (`model.dtype`).
  """
  name = optim_cfg["name"]
  if name not in ("adam", "adamw"):
    raise ValueError(f"config.optim.name={name!r} not in ('adam', 'adamw')")

  def make(learning_rate):
    if name == "adamw":
      opt = optax.adamw(learning_rate, b1=optim_cfg["b1"], b2=optim_cfg["b2"],
                        eps=optim_cfg["eps"], weight_decay=optim_cfg["weight_decay"])
    else:
      opt = optax.adam(learning_rate, b1=optim_cfg["b1"], b2=optim_cfg["b2"],
                       eps=optim_cfg["eps"])
    clip = float(optim_cfg["clip_norm"])
    return optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt

  return optax.inject_hyperparams(make)(learning_rate=float(optim_cfg["lr"]))


def learning_rate(optim_cfg: Mapping[str, Any], peak: float, step: int, steps: int) -> float:
  """Warm-up then constant / cosine / linear decay, within a stage of `steps` steps."""
  warmup = int(optim_cfg["warmup_steps"])
  if warmup and step < warmup:
    return peak * (step + 1) / warmup
  schedule = optim_cfg["schedule"]
  frac = (step - warmup) / max(steps - warmup, 1)
  if schedule == "constant":
    return peak
  if schedule == "cosine":
    return peak * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0)))
  if schedule == "linear":
    return peak * max(1.0 - frac, 0.0)
  raise ValueError(f"config.optim.schedule={schedule!r} not in ('constant', 'cosine', 'linear')")


def set_learning_rate(opt_state: Any, lr: float, mesh: jax.sharding.Mesh | None = None) -> Any:
  """Sets the learning rate leaf (float32, replicated on `mesh`) of an injected optimiser."""
  value = np.float32(lr)
  opt_state.hyperparams["learning_rate"] = (
      jax.device_put(value, NamedSharding(mesh, P())) if mesh is not None else jnp.asarray(value))
  return opt_state


def replicate_unsharded(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Puts leaves not already laid out on `mesh` (step counters, scalars) replicated on it,
  so that a step's inputs have the shardings its outputs will have: no recompilation."""
  def place(x):
    if isinstance(getattr(x, "sharding", None), NamedSharding) and x.sharding.mesh == mesh:
      return x
    return jax.device_put(x, NamedSharding(mesh, P()))
  return jax.tree.map(place, tree)


def step_shardings(optimizer: optax.GradientTransformation, params: Any,
                   mesh: jax.sharding.Mesh | None) -> tuple[Any, Any] | None:
  """The (params, opt_state) layouts a step returns, decided once from the logical rules.

  Params take `model.param_shardings` (their logical axes on `mesh`); the optimiser's
  copies of the params (Adam's moments) take the same, and its other leaves (step
  counters, the learning rate) are replicated. `params` may be real or abstract. None
  without a mesh (one device: nothing to decide).
  """
  if mesh is None:
    return None
  params_sh = model_lib.param_shardings(params, mesh)
  abstract_state = jax.eval_shape(optimizer.init, params)
  replicated = NamedSharding(mesh, P())
  opt_state_sh = optax.tree_utils.tree_map_params(
      optimizer, lambda _, sharding: sharding, abstract_state, params_sh,
      transform_non_params=lambda _: replicated)
  return params_sh, opt_state_sh


class _Step:
  """`jax.jit(fn)` with params and optimiser state donated AND returned in the declared
  `shardings` (`step_shardings`).

  Left to itself GSPMD may return some of them in another layout (a replicated norm scale
  came back FSDP-sharded): the second call then compiles the step again, and the params
  drift away from `model.param_shardings`.
  """

  def __init__(self, fn: Callable, shardings: tuple[Any, Any] | None):
    out_shardings = None if shardings is None else (shardings[0], shardings[1], None)
    self._jitted = jax.jit(fn, donate_argnums=(0, 1), out_shardings=out_shardings)

  @property
  def jitted(self) -> Callable:
    """The `jax.jit`-ed step (e.g. for `_cache_size()` in tests)."""
    return self._jitted

  def __call__(self, params, opt_state, ref_params, episode):
    return self._jitted(params, opt_state, ref_params, episode)

  def lower(self, params, opt_state, ref_params, episode):
    return self._jitted.lower(params, opt_state, ref_params, episode)


def _split_micro(tree: Any, micro_batches: int) -> Any:
  return jax.tree.map(lambda x: x.reshape((micro_batches, -1) + x.shape[1:]), tree)


def _unsplit(tree: Any) -> Any:
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def _apply(optimizer, params, opt_state, grads, loss):
  """optax update, skipped (params and state kept) when loss or grads are not finite."""
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
  params = jax.tree.map(keep, new_params, params)
  opt_state = jax.tree.map(keep, new_opt_state, opt_state)
  return params, opt_state, grad_norm, 1.0 - finite.astype(jnp.float32)


def _accumulate(loss_fn: Callable, params, batch: Any, micro_batches: int):
  """SUMMED loss, grads and metrics of `loss_fn(params, mb)` over micro-batches of `batch`.

  `lax.scan` keeps one micro-batch in memory. `loss_fn` must return its rows' share of a
  loss normalised over the whole batch (weights computed before the scan, see
  score_jax.rl.objectives), so the sum IS the whole batch's loss: micro-batching changes
  memory, not the math.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if micro_batches == 1:
    (loss, metrics), grads = grad_fn(params, batch)
    return loss, grads, metrics
  micro = _split_micro(batch, micro_batches)
  first = jax.tree.map(lambda x: x[0], micro)
  (_, metrics_shape), _ = jax.eval_shape(grad_fn, params, first)
  zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params),
           jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics_shape))

  def body(carry, mb):
    (loss, metrics), grads = grad_fn(params, mb)
    return (carry[0] + loss, jax.tree.map(jnp.add, carry[1], grads),
            jax.tree.map(jnp.add, carry[2], metrics)), None

  (loss, grads, metrics), _ = jax.lax.scan(body, zeros, micro)
  return loss, grads, metrics


def _logprobs(graphdef, params_list: tuple[Any, ...], episode: Episode,
              micro_batches: int, logit_chunk: int = 0) -> tuple[jax.Array, ...]:
  """Gradient-free per-token log-probs [B, T] of `episode` under each params, computed one
  micro-batch at a time (their [b, T, V] logits never exist for the whole batch).

  The params ride in the scan's carry rather than in a closure: an NNX model merged inside
  the scan from closed-over arrays fails under `nnx.remat` ("Cannot mutate Param from a
  different trace level").
  """
  def score(params_list, mb):
    out = []
    for params in params_list:
      logp_BT, _ = scoring.sequence_stats(graphdef, params, mb.tokens_BT, mb.valid_BT,
                                          chunk=logit_chunk)
      out.append(jax.lax.stop_gradient(logp_BT))
    return tuple(out)

  if micro_batches == 1:
    return score(params_list, episode)
  _, logp = jax.lax.scan(lambda carry, mb: (carry, score(carry, mb)), params_list,
                         _split_micro(episode, micro_batches))
  return _unsplit(logp)


def make_rl_step(graphdef: Any, optimizer: optax.GradientTransformation,
                 loss_cfg: losses.LossConfig, micro_batches: int = 1,
                 shardings: tuple[Any, Any] | None = None, logit_chunk: int = 0
                 ) -> Callable:
  """Jitted `step(params, opt_state, ref_params, episode) -> (params, opt_state, metrics)`.

  `episode` is the rollout's Episode (arrays with a leading batch dimension); `shardings`
  = the (params, opt_state) layouts the step returns (`step_shardings`). The step:
    1. scores the episode under the frozen reference (and, with kl_mode="reward", under the
       policy, without gradient: the per-row KL sums enter the rewards), micro-batch by
       micro-batch;
    2. computes the stage's per-token weights over the WHOLE batch (`objectives`);
    3. sums each micro-batch's share of the loss and its gradient; clips and applies.
  `logit_chunk` > 0 projects to the vocabulary that many positions at a time (memory only;
  see `score_jax.rl.scoring`).
  """

  def loss_fn(params, mb):
    episode, weights, ref_logp_BT, monitor_BT = mb
    logp_BT, entropy_BT = scoring.sequence_stats(graphdef, params, episode.tokens_BT,
                                                 episode.valid_BT, chunk=logit_chunk,
                                                 entropy=True)
    loss, metrics = objectives.weighted_loss(logp_BT, ref_logp_BT, weights,
                                             loss_cfg.kl_estimator)
    metrics = dict(metrics)
    for t, w in enumerate(weights, start=1):
      metrics[f"entropy_t{t}"] = jnp.sum(w.token_BT * entropy_BT)
    metrics["sampler_logp_gap"] = jnp.sum(
        monitor_BT * jnp.abs(jax.lax.stop_gradient(logp_BT) - episode.sampler_logprobs_BT))
    return loss, metrics

  def step(params, opt_state, ref_params, episode):
    if loss_cfg.kl_mode == "reward":
      ref_logp_BT, logp_BT = _logprobs(graphdef, (ref_params, params), episode, micro_batches,
                                       logit_chunk)
      sums = objectives.kl_sums(logp_BT, ref_logp_BT, episode, loss_cfg.kl_estimator)
    else:
      (ref_logp_BT,), sums = _logprobs(graphdef, (ref_params,), episode, micro_batches,
                                       logit_chunk), None
    weights, row_metrics = objectives.token_weights(episode, loss_cfg, sums)
    monitor_BT = objectives.normaliser(episode.trained_BT, "token")
    loss, grads, metrics = _accumulate(loss_fn, params,
                                       (episode, weights, ref_logp_BT, monitor_BT),
                                       micro_batches)
    params, opt_state, grad_norm, skipped = _apply(optimizer, params, opt_state, grads, loss)
    metrics = dict(metrics, **row_metrics, loss=loss, grad_norm=grad_norm, skipped=skipped)
    return params, opt_state, metrics

  return _Step(step, shardings)


def make_sft_step(graphdef: Any, optimizer: optax.GradientTransformation,
                  micro_batches: int = 1, shardings: tuple[Any, Any] | None = None,
                  logit_chunk: int = 0) -> Callable:
  """Jitted supervised step: mean negative log-likelihood of every attempt's tokens.

    L(theta) = - sum_{b,t} m_bt log pi_theta(tok_bt | tok_b,<t) / sum_{b,t} m_bt,
    m = the trained tokens of every attempt (`Episode.trained_BT`), normalised over the
    whole batch (exact under micro-batching, like the RL step). Logs nll_t<t> per attempt.
  """

  def loss_fn(params, mb):
    episode, w_BT, *w_t_BT = mb
    logp_BT, _ = scoring.sequence_stats(graphdef, params, episode.tokens_BT, episode.valid_BT,
                                        chunk=logit_chunk)
    loss = -jnp.sum(w_BT * logp_BT)
    return loss, {f"nll_t{t}": -jnp.sum(w * jax.lax.stop_gradient(logp_BT))
                  for t, w in enumerate(w_t_BT, start=1)}

  def step(params, opt_state, ref_params, episode):
    del ref_params
    weights = tuple(objectives.normaliser(mask_BT, "token") for mask_BT in (
        episode.trained_BT,
        *(episode.mask(t) for t in range(1, episode.num_attempts + 1))))
    loss, grads, metrics = _accumulate(loss_fn, params, (episode,) + weights, micro_batches)
    params, opt_state, grad_norm, skipped = _apply(optimizer, params, opt_state, grads, loss)
    return params, opt_state, dict(metrics, loss=loss, grad_norm=grad_norm, skipped=skipped)

  return _Step(step, shardings)
