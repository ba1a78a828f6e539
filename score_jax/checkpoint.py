"""Orbax checkpoints of a run: the only module that imports Orbax.

Layout: `W/checkpoints/<step>/{params, opt_state, meta}`: pytrees restored straight into the
current mesh's shardings; `meta` is JSON (step, stage, data position, RNG key data, config).
Orbax writes each step to a temporary directory and renames it when complete: a reader that
lists steps (the eval loop) never sees a half-written checkpoint.

Integrity: each step also holds `digest`, per-array digests of params and opt_state
(`score_jax.digest`) written inside the step before Orbax commits it; every restore checks
them in the saved dtype before the arrays are used. A step that does not match, or cannot be
read (a garbage or half-copied directory), raises `CorruptCheckpointError` naming its path;
`restore_first_good` falls back to the next candidate (the previous step), reporting each one
skipped. Steps written before digests restore with a warning. A step of another model
(arrays that do not fit the target) raises `TreeMismatchError`, never skipped. A failed save
(async: at the next save or wait) raises `CheckpointSaveError`: end the process then.

Retention: the last `keep` steps plus the best validated step. A step saved with `metrics`
(the trainer's greedy validation, `score_jax.validation`: every `metrics.keys(A)` value and
`n`) ranks by `best_metric` (higher is better; "-key" ranks lower as better); steps saved
without metrics are kept only while among the last `keep`. `select_step` picks the step
that the eval loop and the experiments evaluate: "best" (that validated step; the latest
when no step was validated), "latest", or a step number.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import sys
import time
from typing import Any, Iterator, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from score_jax import digest as digest_lib
from score_jax import metrics as metrics_lib
from score_jax import run_config as run_config_lib

CHOICES = ("best", "latest")     # and step numbers: which checkpoint `select_step` picks
CorruptCheckpointError = digest_lib.CorruptCheckpointError
TreeMismatchError = run_config_lib.TreeMismatchError     # another model's checkpoint


class _QuietMissingMetrics(logging.Filter):
  """Orbax warns at every save without metrics once it tracks them; ours are by design."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietMissingMetrics())


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written. Orbax's background threads may never finish after
  this, so the process must end with `os._exit` (see `score_jax.main`)."""


def _warn(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def check_best_metric(best_metric: str, num_attempts: int | None = None) -> str:
  """The key of `best_metric` ("acc_t2"; "-delta_c2i": lower is better) in `metrics.keys(A)`;
  A = `num_attempts`, else (config checked at start) as many as the name says (acc_t3: 3)."""
  key = str(best_metric).removeprefix("-")
  num_attempts = num_attempts or max([3] + [int(t) for t in re.findall(r"_t(\d+)", key)])
  if key not in (allowed := metrics_lib.keys(num_attempts)):
    raise ValueError(f"config.checkpoint.best_metric={best_metric!r} is not a validation "
                     f"metric of {num_attempts} attempts; choose one of {allowed} (a leading "
                     f"'-' ranks lower as better)")
  return key


def metric_value(metrics: Any, best_metric: str) -> float:
  """A step's rank under `best_metric` (higher is better); -inf when it lacks the key."""
  key = check_best_metric(best_metric)
  if not isinstance(metrics, dict) or metrics.get(key) is None:
    return float("-inf")
  return -float(metrics[key]) if str(best_metric).startswith("-") else float(metrics[key])


def parse_choice(which: str | int, field: str = "--checkpoint") -> str | int:
  """"best", "latest" or a step number (int) from `which`; a clear error otherwise."""
  text = str(which).strip()
  if text in CHOICES:
    return text
  if text.isdigit() and int(text) > 0:
    return int(text)
  raise ValueError(f"{field}={which!r}: choose best, latest or a step number (e.g. 40)")


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
               keep_best: bool = True, best_metric: str = "acc_t2", async_save: bool = True,
               read_only: bool = False):
    self.directory = as_path(directory)
    check_best_metric(best_metric)
    rank = lambda metrics: metric_value(metrics, best_metric)  # noqa: E731
    policies = [ocp.checkpoint_managers.LatestN(n=max(int(keep), 1))]
    if keep_best:
      # Ties go to the later step (a stable sort keeps its last), as in `select_step`.
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=rank, n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(max(int(every), 1)),
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        # With best_fn set, Orbax writes each step's metrics to disk (<step>/metrics), so a
        # resumed trainer still knows its best step; retention is `policies` alone.
        best_fn=rank, best_mode="max",
        enable_async_checkpointing=async_save,
        read_only=read_only,
        create=not read_only,
    )
    if read_only and not self.directory.exists():
      self.directory.mkdir(parents=True, exist_ok=True)
    elif not read_only:
      self._check_writable()
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def _check_writable(self) -> None:
    """Fails now, not at the first save, when a local directory cannot be written."""
    if "://" in str(self.directory):
      return
    probe = pathlib.Path(self.directory) / f".write-probe-{os.getpid()}-{jax.process_index()}"
    try:
      probe.parent.mkdir(parents=True, exist_ok=True)
      probe.write_bytes(b"")
      probe.unlink()
    except OSError as e:
      raise CheckpointSaveError(f"checkpoint directory {self.directory} is not writable: "
                                f"{type(e).__name__}: {e.strerror or e}") from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def reload(self) -> None:
    """Re-reads the directory (for a reader that follows a running trainer)."""
    self._manager.reload()

  def metrics(self, step: int) -> dict[str, Any] | None:
    """The metrics `step` was saved with (None for a step saved without)."""
    found = self._manager.metrics(step)
    return dict(found) if found is not None else None

  def _failed(self, what: str, e: Exception) -> CheckpointSaveError:
    return CheckpointSaveError(f"{what} to {self.directory} failed: {type(e).__name__}: "
                               f"{(str(e).splitlines() or [''])[0]}")

  def save(self, step: int, params: Any, opt_state: Any | None, meta: dict[str, Any], *,
           metrics: dict[str, float] | None = None, force: bool = False) -> bool:
    """Saves (asynchronously unless disabled) if the policy says so or `force`. `metrics`
    (validation results) rank the step for retention and `select_step`. Raises
    CheckpointSaveError when this save, or an earlier asynchronous one, failed."""
    try:
      if not self._manager.is_saving_in_progress():   # a failed background save: now, at
        self._manager.wait_until_finished()           # the next step, not the next save
      if not force and not self._manager.should_save(step):
        return False
      metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
      records = {"format": digest_lib.FORMAT, "params": digest_lib.record(params)}
      items = dict(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta))
      if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(opt_state)
        records["opt_state"] = digest_lib.record(opt_state)
      items["digest"] = ocp.args.JsonSave(records)
      return self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                                force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(f"saving checkpoint step {step}", e) from e

  def _digests(self, step: int) -> dict[str, Any] | None:
    """The step's digest records; None for a step written before digests existed."""
    path = self.directory / str(step)
    if not (path / "digest").exists() and (path / "params").exists():
      _warn(f"warning: checkpoint step {step} at {path} has no digest (written before "
            f"digests existed): restored unverified")
      return None
    records = self._manager.restore(step, args=ocp.args.Composite(
        digest=ocp.args.JsonRestore()))["digest"]
    if not isinstance(records, dict) or records.get("format") != digest_lib.FORMAT:
      raise CorruptCheckpointError(f"checkpoint step {step} at {path}: unreadable digest "
                                   f"record {str(records)[:80]!r}")
    return records

  def restore(self, step: int, params_like: Any, opt_state_like: Any | None = None
              ) -> tuple[Any, Any | None, dict[str, Any]]:
    """Restores step into the shardings (and dtypes) of `params_like` / `opt_state_like`
    (arrays or abstract), checking every array against its saved digest; raises
    CorruptCheckpointError naming the step's path when it cannot be read or differs."""
    path = self.directory / str(step)
    try:
      records = self._digests(step)
      likes = {"params": params_like}
      if opt_state_like is not None:
        likes["opt_state"] = opt_state_like
      items: dict[str, Any] = dict(meta=ocp.args.JsonRestore())
      for name, like in likes.items():
        if records is not None and name not in records:
          raise CorruptCheckpointError(f"checkpoint step {step} at {path}: no {name} digest")
        target = abstract_tree(like)
        run_config_lib.check_fits(target, records, name, f"checkpoint step {step} at {path}")
        items[name] = ocp.args.StandardRestore(
            target if records is None else digest_lib.restore_target(target, records[name]))
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except (CorruptCheckpointError, TreeMismatchError):
      raise
    except Exception as e:  # pylint: disable=broad-except
      run_config_lib.raise_if_mismatch(e, f"checkpoint step {step} at {path}")
      raise CorruptCheckpointError(f"checkpoint step {step} at {path} cannot be read: "
                                   f"{type(e).__name__}: {str(e)[:300]}") from e
    out = {}
    for name, like in likes.items():
      tree = restored[name]
      if records is not None:
        digest_lib.verify(tree, records[name], f"checkpoint step {step} at {path} ({name})")
      out[name] = jax.tree.map(lambda x, t: x if x.dtype == t.dtype else x.astype(t.dtype),
                               tree, abstract_tree(like))
    return out["params"], out.get("opt_state"), dict(restored["meta"])

  def restore_first_good(self, steps: Sequence[int], params_like: Any,
                         opt_state_like: Any | None = None
                         ) -> tuple[Any, Any | None, dict[str, Any], int, list[int]]:
    """(params, opt_state, meta, step, skipped) of the first of `steps` (in the order given)
    that restores and matches its digests, reporting each one skipped on stderr; raises
    CorruptCheckpointError with every step's cause when none of them is good."""
    causes, skipped = [], []
    for step in steps:
      try:
        params, opt_state, meta = self.restore(step, params_like, opt_state_like)
      except CorruptCheckpointError as e:
        _warn(f"skipping {e}")
        causes.append(str(e))
        skipped.append(step)
        continue
      if skipped:
        _warn(f"using checkpoint step {step} in {self.directory} instead (skipped steps "
              f"{', '.join(map(str, skipped))})")
      return params, opt_state, meta, step, skipped
    if not causes:
      raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
    raise CorruptCheckpointError(f"no good checkpoint in {self.directory}: "
                                 + " | ".join(causes))

  def quarantine(self, steps: Sequence[int]) -> None:
    """Renames bad steps to `<step>.corrupt-<time>` (kept for inspection, no longer listed)
    so the trainer can save those steps again; every process calls it, process 0 renames."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for step in steps if jax.process_index() == 0 else ():
      if (path := self.directory / str(step)).exists():
        path.rename(self.directory / f"{step}.corrupt-{stamp}")
        _warn(f"moved the bad checkpoint step {step} to {path}.corrupt-{stamp}")
    if steps and jax.process_count() > 1:
      multihost_utils.sync_global_devices("score_jax.checkpoint.quarantine")
    self._manager.reload()

  def restore_meta(self, step: int) -> dict[str, Any]:
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def wait(self) -> None:
    """Blocks until pending async saves are on disk; CheckpointSaveError if one failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed("saving a checkpoint", e) from e

  def close(self) -> None:
    self.wait()
    self._manager.close()


def candidates(directory: str | pathlib.Path, which: str | int = "best",
               best_metric: str = "acc_t2") -> list[tuple[int, str]]:
  """(step, why) of the checkpoints to try for `which`, in order: `select_step`'s choice,
  then its fallbacks should it be corrupt ("latest": the earlier steps; "best": the other
  validated steps by rank, then the rest latest first; a step number: none)."""
  choice = parse_choice(which)
  reader = Checkpointer(directory, read_only=True, keep_best=False)
  steps = sorted(reader.all_steps())
  if not steps:
    raise FileNotFoundError(f"no finished checkpoint in {reader.directory}")
  listed = ", ".join(map(str, steps))
  if isinstance(choice, int):
    if choice not in steps:
      raise ValueError(f"--checkpoint={choice}: no finished step {choice} in "
                       f"{reader.directory} (steps on disk: {listed})")
    return [(choice, f"step {choice} as asked (steps on disk: {listed})")]
  validated = {s: m for s in steps if (m := reader.metrics(s)) is not None
               and metric_value(m, best_metric) > float("-inf")}
  if choice == "latest" or not validated:
    why = ("the latest" if choice == "latest" else
           f"the latest (no step on disk has a validation {check_best_metric(best_metric)}; "
           f"config.eval.validation_every > 0 validates during training)")
    order, why = steps[::-1], f"{why} (steps on disk: {listed})"
  else:
    ranked = sorted(validated, key=lambda s: (metric_value(validated[s], best_metric), s),
                    reverse=True)
    best, key = ranked[0], check_best_metric(best_metric)
    n = validated[best].get("n")
    on = f" on {int(n)} validation problems" if n is not None else ""
    name = f"(lowest) {key}" if str(best_metric).startswith("-") else key
    why = (f"best {name} {validated[best][key]:.4g}{on} (validated steps on disk: "
           f"{', '.join(map(str, sorted(validated)))})")
    order = ranked + [s for s in steps[::-1] if s not in validated]
  return [(order[0], why)] + [(s, f"the next candidate for {which} (those before it are "
                                  f"unusable)") for s in order[1:]]


def select_step(directory: str | pathlib.Path, which: str | int = "best",
                best_metric: str = "acc_t2") -> tuple[int, str]:
  """(step, why) of the checkpoint to evaluate: "best" (the validated step ranked first by
  `best_metric`, the later one on ties; the latest step when none was validated), "latest",
  or a step number. Raises FileNotFoundError / ValueError naming the directory."""
  return candidates(directory, which, best_metric)[0]


def latest_step(directory: str | pathlib.Path) -> int | None:
  """The latest finished step in a checkpoints directory (None when it holds none)."""
  return Checkpointer(directory, read_only=True, keep_best=False).latest_step()


def restore_params(directory: str | pathlib.Path, like: Any, step: int | None = None
                   ) -> tuple[Any, dict[str, Any], int]:
  """(params, meta, step) of `step` (default: the latest good step: a corrupt or unreadable
  later step is reported and skipped) in `like`'s shardings, verified against its digests;
  FileNotFoundError when the directory holds no finished checkpoint, CorruptCheckpointError
  when no step (or not the asked `step`) is good."""
  reader = Checkpointer(directory, read_only=True, keep_best=False)
  steps = sorted(reader.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise FileNotFoundError(f"no finished checkpoint in {reader.directory}")
  params, _, meta, step, _ = reader.restore_first_good(steps, like)
  return params, meta, step


def follow(directory: str | pathlib.Path, *, poll_s: float, timeout_s: float,
           start_after: int | None = None) -> Iterator[int]:
  """Yields each new finished checkpoint step in `directory`, oldest first, until `timeout_s`
  seconds pass without a new one; steps deleted before we reach them are skipped."""
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
