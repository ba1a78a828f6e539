"""The training loop: stage plan -> rollouts -> jitted steps -> metrics and checkpoints.

One readable loop over global steps. Each step belongs to one block of the stage plan
(`rl/plan.py`): `sft` steps fit the task's demonstrations (building a base model from scratch),
`stage1` / `stage2` / `single_turn` steps sample two-turn rollouts on-policy and apply the
matching SCoRe objective. Everything a resumed run needs is in the checkpoint: params,
optimiser state, the step (hence the stage), the data position and the RNG key; reference
weights produced inside the run (the base model after `sft`, the Stage I model when it is
Stage II's reference) are saved once under `W/models/`.

Multi-host (`config.distributed`): every process runs this loop and draws the same global
batch of problems, but prepares, samples into, decodes and grades only the rows its
devices hold (`multihost.row_split`); the jitted step gets global arrays assembled from every
process's rows (`multihost.put_local_batch`), so its losses, leave-one-out groups included,
are computed over the whole batch exactly as on one process. Logged rewards and metrics
are gathered over all rows (`multihost.gather_rows`). With `config.mesh.sampling_fsdp=False`
rollouts decode from a per-step copy of the params gathered out of the FSDP layout
(score_jax.reshard); its cost is logged as `reshard_time_s`.
"""

from __future__ import annotations

import functools
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from score_jax import build as build_lib
from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import mesh as mesh_lib
from score_jax import metrics as metrics_lib
from score_jax import multihost
from score_jax import reshard as reshard_lib
from score_jax import run_config
from score_jax import sampler as sampler_lib
from score_jax import validation as validation_lib
from score_jax.rl import baselines
from score_jax.rl import episode as episode_lib
from score_jax.rl import losses
from score_jax.rl import plan as plan_lib
from score_jax.rl import rollout as rollout_lib
from score_jax.rl import step as step_lib
from score_jax.tasks import base as task_base

class NonFiniteLossError(RuntimeError):
  """Too many non-finite losses in a row; the last good checkpoint is kept."""


class DataStream:
  """Deterministic, resumable order over the training problems (reshuffled every epoch)."""

  def __init__(self, problems: list[task_base.Problem], seed: int, position: int = 0):
    if not problems:
      raise ValueError("the training split is empty")
    self.problems, self.seed, self.position = problems, seed, position

  def take(self, n: int) -> list[task_base.Problem]:
    out = []
    for _ in range(n):
      epoch, i = divmod(self.position, len(self.problems))
      order = np.random.default_rng([self.seed, epoch]).permutation(len(self.problems))
      out.append(self.problems[order[i]])
      self.position += 1
    return out


# A step's training data: this process's rows of one or more global sub-batches, in order.
Parts = list[tuple[episode_lib.Episode, multihost.RowSplit]]


def _copy(tree: Any) -> Any:
  return jax.tree.map(jnp.copy, tree)


@functools.partial(jax.jit, static_argnums=0)
def _concat_rows(mesh: jax.sharding.Mesh, episodes: list[episode_lib.Episode]
                 ) -> episode_lib.Episode:
  def rows(*fields):
    x = jnp.concatenate(fields, axis=0)
    return jax.lax.with_sharding_constraint(x, mesh_lib.batch_sharding(mesh, x.shape))
  return jax.tree.map(rows, *episodes)


def global_batch(parts: Parts, mesh: jax.sharding.Mesh | None, compact_bucket: int = 0,
                 compact: str = "columns") -> episode_lib.Episode:
  """The step's global Episode (sub-batches stacked row-wise) from this process's rows, with
  `compact_bucket` > 0 (config.train.compact_*) without the padding of `compact` "columns" or
  "rows" over every process (a collective), padded to a multiple of it (same math: see
  `episode.compact_episodes`)."""
  if compact_bucket:
    gather = lambda i, rows: multihost.gather_rows(rows, parts[i][1])  # noqa: E731
    episodes = episode_lib.compact_episodes([ep for ep, _ in parts], compact, compact_bucket,
                                            gather)
    parts = [(ep, split) for ep, (_, split) in zip(episodes, parts)]
  if all(split.is_everything for _, split in parts):
    episode = episode_lib.concat([ep for ep, _ in parts])
    return jax.tree.map(lambda x: multihost.put_batch(x, mesh), episode)
  episodes = [jax.tree.map(lambda x, s=split: multihost.put_local_batch(x, mesh, s), ep)
              for ep, split in parts]
  return episodes[0] if len(episodes) == 1 else _concat_rows(mesh, episodes)


def loss_config(config: ml_collections.ConfigDict, stage: str) -> losses.LossConfig:
  rl = config.rl
  return losses.LossConfig(stage=stage, alpha=rl.alpha, beta1=rl.beta1, beta2=rl.beta2,
                           kl_estimator=rl.kl_estimator, kl_mode=rl.kl_mode,
                           baseline=rl.baseline,
                           samples_per_prompt=config.rollout.samples_per_prompt,
                           normalization=rl.normalization,
                           shaping_baseline=bool(rl.shaping_baseline))


class Trainer:
  """Owns the run's state and side effects (see module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
               force: bool = False):
    config_lib.check_ranges(config)
    plan_lib.validate(config)
    validation_lib.check_config(config)
    self.compact = episode_lib.compact_setting(config.train)   # (bucket, mode): global_batch
    self.config, self.workdir = config, checkpoint_lib.as_path(workdir)
    # W/config.json; resuming with a changed config refuses unless it is safe or `force`.
    run_config.record_run_config(self.workdir, config, force=force,
                                 is_writer=jax.process_index() == 0)
    ck = config.checkpoint
    # Before any weights load: an unwritable directory fails here (CheckpointSaveError).
    self.ckpt = checkpoint_lib.Checkpointer(self.workdir / "checkpoints", every=ck.every,
                                            keep=ck.keep, keep_best=ck.keep_best,
                                            best_metric=ck.best_metric,
                                            async_save=ck.async_save)
    self.c = build_lib.build(config)
    self.blocks = plan_lib.build_plan(config.plan)
    self.total = plan_lib.total_steps(self.blocks)
    self.optimizer = step_lib.build_optimizer(config.optim)
    self.is_writer = jax.process_index() == 0
    tb = self.workdir / "tensorboard" / "train" if config.train.tensorboard else None
    self.writer = (metrics_lib.MetricWriter(self.workdir / "train" / "metrics.jsonl", tb)
                   if self.is_writer else None)
    self.train_problems = self.c.task.load(config.task.train_split)
    self.two_turn = self.c.two_turn(config.rollout.max_turn1_tokens,
                                    config.rollout.max_turn2_tokens)
    r = config.rollout
    self.method = sampler_lib.sampling_method(float(r.temperature), int(r.top_k),
                                              float(r.top_p))
    self.sampling = reshard_lib.SamplingParams(fsdp=config.mesh.sampling_fsdp)
    self.shardings = step_lib.step_shardings(self.optimizer, self.c.base_params, self.c.mesh)
    self._steps: dict[str, Any] = {}
    # Greedy validation every config.eval.validation_every steps (score_jax.validation).
    self.validator = validation_lib.Validator(self.c, self.workdir, self.total,
                                              is_writer=self.is_writer)

  # --- state -------------------------------------------------------------------------
  def _model_store(self, name: str) -> checkpoint_lib.Checkpointer:
    return checkpoint_lib.Checkpointer(self.workdir / "models" / name, keep=1,
                                       keep_best=False, async_save=False)

  def _save_model(self, name: str, params: Any) -> None:
    store = self._model_store(name)
    # A run stopped between this save and its next checkpoint saved these same weights
    # already (the run is deterministic): keep them when it resumes.
    if store.latest_step() is None:
      store.save(0, params, None, {"name": name}, force=True)
    store.close()

  def _load_model(self, name: str, like: Any) -> Any | None:
    """The stored model `name` (verified against its digests; CorruptCheckpointError when
    it changed on disk: a reference model is never used unverified), None when absent."""
    directory = self.workdir / "models" / name
    if checkpoint_lib.latest_step(directory) is None:
      return None
    params, _, _ = checkpoint_lib.restore_params(directory, like)
    return params

  def initial_state(self):
    """(params, opt_state, step, data position), resumed from W/checkpoints when present:
    from the latest step that matches its digests. Later steps that do not (corrupt or
    unreadable) are reported and moved aside (`<step>.corrupt-<time>`), never used."""
    params = _copy(self.c.base_params)  # the step donates params; keep the base intact
    opt_state = self.init_opt_state(params)
    steps = sorted(self.ckpt.all_steps(), reverse=True)
    if not steps:
      return params, opt_state, 0, 0
    params, opt_state, meta, latest, skipped = self.ckpt.restore_first_good(steps, params,
                                                                            opt_state)
    self.ckpt.quarantine(skipped)   # all later than `latest`, which this config restores
    expected_key = np.asarray(jax.random.key_data(self.base_key())).tolist()
    if meta.get("rng_key") != expected_key:
      raise ValueError(f"checkpoint {latest} in {self.ckpt.directory} was written with another "
                       f"seed (config.seed differs); use a new --workdir")
    print(f"Resumed from step {latest} (stage {meta['stage']}, data position "
          f"{meta['data_position']}).", flush=True)
    return params, opt_state, int(meta["step"]), int(meta["data_position"])

  def init_opt_state(self, params: Any) -> Any:
    # The learning rate is a float32 leaf of the state from the start, so that setting it
    # every step never changes the jitted step's input types (no recompilation).
    opt_state = step_lib.replicate_unsharded(self.optimizer.init(params), self.c.mesh)
    return step_lib.set_learning_rate(opt_state, self.config.optim.lr, self.c.mesh)

  def base_key(self) -> jax.Array:
    return jax.random.key(self.config.seed)

  def reference(self, stage: str, params: Any) -> Any:
    """Frozen reference weights of `stage` (the base model unless configured otherwise)."""
    names = plan_lib.stage_names(self.config.plan)
    if stage == "stage2" and self.config.rl.stage2_reference == "stage1":
      ref = self._load_model("stage1", params)
      if ref is not None:
        return ref
    if "sft" in names:
      ref = self._load_model("base", params)
      if ref is None:
        raise RuntimeError(f"no base model under {self.workdir / 'models' / 'base'}: the sft "
                           f"stage must finish before RL stages")
      return ref
    return self.c.base_params

  def base_policy(self, like: Any) -> Any:
    """The base model's weights (for offline first attempts), loaded once."""
    if not hasattr(self, "_base_policy"):
      self._base_policy = self.reference("stage1", like)
    return self._base_policy

  def step_fn(self, stage: str):
    if stage not in self._steps:
      micro = int(self.config.train.micro_batches)
      chunk = int(self.config.train.logit_chunk)
      if stage in plan_lib.SUPERVISED_STAGES:
        self._steps[stage] = step_lib.make_sft_step(self.c.graphdef, self.optimizer, micro,
                                                    self.shardings, logit_chunk=chunk)
      else:
        self._steps[stage] = step_lib.make_rl_step(self.c.graphdef, self.optimizer,
                                                   loss_config(self.config, stage), micro,
                                                   self.shardings, logit_chunk=chunk)
    return self._steps[stage]

  # --- one step ------------------------------------------------------------------------
  # Each returns (parts, stats): this process's rows of the step's episodes (see Parts)
  # and global statistics (gathered over every process's rows).
  def sft_batch(self, data: DataStream, rng: np.random.Generator) -> tuple[Parts, dict]:
    problems = data.take(int(self.config.train.sft_batch_size))
    demo = self.c.task.demonstration
    # Every process draws all demonstrations (one RNG stream, so the batch does not depend
    # on the number of processes) and tokenises only its own rows.
    attempts = [[demo(p, rng) for p in problems]
                for _ in range(self.two_turn.num_attempts)]   # one list per attempt
    split = multihost.row_split(self.c.mesh, len(problems))
    episode = rollout_lib.demonstration_episode(
        self.two_turn, split.take(problems), *(split.take(texts) for texts in attempts))
    return [(episode, split)], {}

  def baseline_batch(self, stage: str, params: Any, data: DataStream, key: jax.Array
                     ) -> tuple[Parts, dict]:
    """STaR / Pair-SFT data from the model's own samples (see score_jax.rl.baselines)."""
    k = int(self.config.rollout.samples_per_prompt)
    problems = [p for p in data.take(int(self.config.train.batch_size)) for _ in range(k)]
    extra: dict[str, float] = {}
    if stage == "star":
      policy = self.sampling.get("policy", params)
      result = self.two_turn.rollout(policy, policy, problems, method=self.method, rng=key,
                                     process_local=True)
      episode, _ = baselines.star_episode(
          result, include_right_right=bool(self.config.rollout.star_right_right))
    else:
      base = self.sampling.get("base", self.base_policy(params))
      result = self.two_turn.rollout(base, base, problems, method=self.method, rng=key,
                                     process_local=True)
      # Pairs use every row's samples (a problem's k rows may span processes).
      rows = multihost.gather_rows(baselines.sample_rows(result), result.split)
      episode, data_stats = baselines.pair_sft_episode(self.two_turn, result, rows)
      extra = {"problems_solved_fraction": data_stats["problems_solved_fraction"]}
    # A row is kept when any of its y2 tokens is trained (every y2 has at least one token).
    kept = np.asarray(multihost.gather_rows(episode.turn2_mask_BT.any(axis=1).tolist(),
                                           result.split), bool)
    # The sampled rollouts' metrics: STaR's own samples, Pair-SFT's base-model samples.
    stats = dict(self.rollout_stats([result]), kept_fraction=float(kept.mean()), **extra)
    return [(episode, result.split)], stats

  def rl_batch(self, stage: str, params: Any, ref: Any, data: DataStream, key: jax.Array
               ) -> tuple[Parts, dict]:
    del ref  # the reference enters the jitted step, not the rollouts
    k = int(self.config.rollout.samples_per_prompt)
    n_prompts = int(self.config.train.batch_size)
    problems = [p for p in data.take(n_prompts) for _ in range(k)]
    n_offline = 0
    if stage == "stage2":
      n_offline = int(round(float(self.config.rollout.offline_fraction) * n_prompts)) * k
    policy = self.sampling.get("policy", params)
    if n_offline == 0:
      results = [self.two_turn.rollout(policy, policy, problems, method=self.method, rng=key,
                                       process_local=True)]
    else:
      # "Offline prompts": first attempts from the base model, second attempts on-policy.
      # The base model's y1 tokens are context only (off-policy): they are not trained.
      key_off, key_on = jax.random.split(key)
      base = self.sampling.get("base", self.base_policy(params))
      offline = self.two_turn.rollout(base, policy, problems[:n_offline], method=self.method,
                                      rng=key_off, process_local=True)
      results = [rollout_lib.without_turn1_training(offline)]
      if n_offline < len(problems):
        results.append(self.two_turn.rollout(policy, policy, problems[n_offline:],
                                             method=self.method, rng=key_on,
                                             process_local=True))
    return [(r.episode, r.split) for r in results], self.rollout_stats(results)

  def rollout_stats(self, results: list[Any]) -> dict[str, float]:
    """Metrics of rollouts of A attempts over every process's rows (rewards per attempt,
    deltas, answer changes, attempt lengths in trained tokens; `metrics.keys(A)`)."""
    rows, A = [], results[0].episode.num_attempts
    attempts = range(1, A + 1)
    for result in results:
      ep = result.episode
      rows += multihost.gather_rows(
          list(zip(*(ep.reward(t).tolist() for t in attempts), *result.texts,
                   *(ep.mask(t).sum(axis=1).tolist() for t in attempts))), result.split)
    cols = [list(col) for col in zip(*rows)]
    m = metrics_lib.graded_metrics(cols[:A], cols[A:2 * A], self.c.task.answer_key)
    return {**{f"reward_t{t}": m[f"acc_t{t}"] for t in attempts},
            **{key: m[key] for key in metrics_lib.keys(A)},
            **{f"len_t{t}": float(np.mean(cols[2 * A + t - 1])) for t in attempts}}

  # --- the loop ------------------------------------------------------------------------
  def run(self) -> dict[str, Any]:
    params, opt_state, start, position = self.initial_state()
    data = DataStream(self.train_problems, self.config.seed, position)
    key = self.base_key()
    ref, ref_stage = None, None
    nan_streak, last = 0, {}
    bar = tqdm.tqdm(total=self.total, initial=start, desc="train", disable=not self.is_writer,
                    dynamic_ncols=True)
    for step in range(start, self.total):
      block = plan_lib.block_at(self.blocks, step)
      stage = block.stage
      if step == block.start and step > 0:
        previous = plan_lib.block_at(self.blocks, step - 1).stage
        if previous == "sft" and stage != "sft":
          self._save_model("base", params)
          opt_state = self.init_opt_state(params)  # RL starts with fresh Adam moments
        if previous == "stage1" and stage == "stage2":
          self._save_model("stage1", params)
      if stage not in plan_lib.SUPERVISED_STAGES and ref_stage != stage:
        ref, ref_stage = _copy(self.reference(stage, params)), stage
      peak = self.config.optim.sft_lr if stage == "sft" else self.config.optim.lr
      lr = step_lib.learning_rate(self.config.optim, peak, step - block.start, block.steps)
      opt_state = step_lib.set_learning_rate(opt_state, lr, self.c.mesh)
      t0 = time.perf_counter()
      step_key = jax.random.fold_in(key, step)
      if stage == "sft":
        parts, stats = self.sft_batch(data, np.random.default_rng([self.config.seed, step]))
      elif stage in plan_lib.SUPERVISED_STAGES:
        parts, stats = self.baseline_batch(stage, params, data, step_key)
      else:
        parts, stats = self.rl_batch(stage, params, ref, data, step_key)
      reshard_s = self.sampling.release()   # sampling copies are freed before training
      t_rollout = time.perf_counter() - t0
      batch = global_batch(parts, self.c.mesh, *self.compact)
      params, opt_state, out = self.step_fn(stage)(params, opt_state, ref if ref is not None
                                                   else params, batch)
      out = {k: float(v) for k, v in jax.device_get(out).items()}
      elapsed = time.perf_counter() - t0
      tokens = float(jnp.sum(batch.valid_BT))    # the global batch's valid tokens
      record = {"stage": stage, "lr": lr, **stats, **out, "step_time_s": elapsed,
                "rollout_time_s": t_rollout, "reshard_time_s": reshard_s,
                "tokens_per_s": tokens / elapsed}
      nan_streak = nan_streak + 1 if out["skipped"] else 0
      if self.writer and (step % self.config.train.log_every == 0 or out["skipped"]):
        self.writer.write(step + 1, record)
      if nan_streak >= int(self.config.train.max_nan_steps):
        self.ckpt.wait()
        raise NonFiniteLossError(
            f"{nan_streak} non-finite losses in a row at step {step + 1}; stopping. The last "
            f"good checkpoint (step {self.ckpt.latest_step()}) in {self.ckpt.directory} is "
            f"intact")
      meta = {"step": step + 1, "stage": stage, "data_position": data.position,
              "rng_key": np.asarray(jax.random.key_data(key)).tolist(),
              "config": config_lib.to_plain(self.config)}
      if not out["skipped"]:
        # A validated step is always saved, with its validation metrics (its rank).
        validated = self.validator.maybe_run(step + 1, stage, params)
        self.ckpt.save(step + 1, params, opt_state, meta, metrics=validated,
                       force=(step + 1 == self.total) or validated is not None)
      last = record
      bar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "reward_t1", "reward_t2")
                       if k in record})
      bar.update(1)
    bar.close()
    self.ckpt.close()
    self.validator.close()
    if self.writer:
      self.writer.close()
    self.params = params
    return last
