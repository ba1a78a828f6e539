"""Orbax checkpoints of a run: the only module that imports Orbax.

Layout: `W/checkpoints/<step>/{params, opt_state, meta}`. `params` and `opt_state` are
pytrees restored straight into the current mesh's shardings (from an abstract tree of
`ShapeDtypeStruct`s); `meta` is JSON (step, stage, data position, RNG key data, config).
Orbax writes each step to a temporary directory and renames it when complete, so a reader
that lists steps (the eval loop) never sees a half-written checkpoint.

Retention: the last `keep` steps plus the best step by training reward (the paper selects
checkpoints by highest training reward).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

_REWARD_KEY = "train_reward"


def as_path(path: str | pathlib.Path) -> epath.Path:
  """A local or cloud (gs://) path; local paths are made absolute."""
  p = epath.Path(path)
  return p if "://" in str(path) else epath.Path(pathlib.Path(path).absolute())


def abstract_tree(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of `tree`, the restore target."""
  def leaf(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(leaf, tree)


class Checkpointer:
  """Saves and restores run state under `directory` (see module docstring)."""

  def __init__(self, directory: str | pathlib.Path, *, every: int = 1, keep: int = 2,
               keep_best: bool = True, async_save: bool = True, read_only: bool = False):
    self.directory = as_path(directory)
    policies = [ocp.checkpoint_managers.LatestN(n=max(int(keep), 1))]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[_REWARD_KEY], n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(max(int(every), 1)),
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        read_only=read_only,
        create=not read_only,
    )
    if read_only and not self.directory.exists():
      self.directory.mkdir(parents=True, exist_ok=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def reload(self) -> None:
    """Re-reads the directory (for a reader that follows a running trainer)."""
    self._manager.reload()

  def save(self, step: int, params: Any, opt_state: Any | None, meta: dict[str, Any], *,
           train_reward: float | None = None, force: bool = False) -> bool:
    """Saves (asynchronously unless disabled) if the policy says so or `force`."""
    metrics = None if train_reward is None else {_REWARD_KEY: float(train_reward)}
    items = dict(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta))
    if opt_state is not None:
      items["opt_state"] = ocp.args.StandardSave(opt_state)
    return self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                              force=force)

  def restore(self, step: int, params_like: Any, opt_state_like: Any | None = None
              ) -> tuple[Any, Any | None, dict[str, Any]]:
    """Restores step into the shardings of `params_like` / `opt_state_like` (arrays or abstract)."""
    items = dict(params=ocp.args.StandardRestore(abstract_tree(params_like)),
                 meta=ocp.args.JsonRestore())
    if opt_state_like is not None:
      items["opt_state"] = ocp.args.StandardRestore(abstract_tree(opt_state_like))
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    opt_state = restored["opt_state"] if opt_state_like is not None else None
    return restored["params"], opt_state, dict(restored["meta"])

  def restore_meta(self, step: int) -> dict[str, Any]:
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def latest_step(directory: str | pathlib.Path) -> int | None:
  """The latest finished step in a checkpoints directory (None when it holds none)."""
  return Checkpointer(directory, read_only=True, keep_best=False).latest_step()


def restore_params(directory: str | pathlib.Path, like: Any, step: int | None = None
                   ) -> tuple[Any, dict[str, Any], int]:
  """(params, meta, step) of `step` (default: the latest) in `like`'s shardings.

  Raises FileNotFoundError naming the directory when it holds no finished checkpoint.
  """
  reader = Checkpointer(directory, read_only=True, keep_best=False)
  step = reader.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no finished checkpoint in {reader.directory}")
  params, _, meta = reader.restore(step, like)
  return params, meta, step


def follow(directory: str | pathlib.Path, *, poll_s: float, timeout_s: float,
           start_after: int | None = None) -> Iterator[int]:
  """Yields each new finished checkpoint step in `directory`, oldest first.

  Stops after `timeout_s` seconds without a new step. Steps the trainer deletes before
  we reach them are skipped.
  """
  reader = Checkpointer(directory, read_only=True, keep_best=False)
  last = -1 if start_after is None else start_after
  waited_since = time.monotonic()
  while True:
    reader.reload()
    new = [s for s in sorted(reader.all_steps()) if s > last]
    if new:
      last = new[-1]
      waited_since = time.monotonic()
      for step in new:
        if step in reader.all_steps():
          yield step
    elif time.monotonic() - waited_since > timeout_s:
      return
    else:
      time.sleep(poll_s)


def read_pytree(path: str | pathlib.Path) -> Any:
  """Reads a plain Orbax PyTree checkpoint directory (e.g. official Gemma Flax weights) as
  host numpy arrays, whatever sharding it was saved with."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"Orbax checkpoint directory {path} not found")
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=restore_args)


def write_pytree(path: str | pathlib.Path, tree: Any) -> None:
  """Writes `tree` as a plain Orbax PyTree checkpoint directory (synchronously)."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(pathlib.Path(path).absolute(), tree)
