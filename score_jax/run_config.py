"""A run's own config (`W/config.json`), the rules for changing it, and the CLIs' errors.

`train.Trainer` records the run's whole config in `W/config.json` (`to_json_best_effort`).
`load_run_config` reads it back faithfully: JSON lists become the tuples they were, `null`
stays a typed None, sections nest, and fields added to configs/base.py (or to the `--config`
file) after the run was written take their default from there, with a note.

Evaluation (`resolve_eval_config`): the run's config is the eval's config. With
`W/config.json` present, `--config FILE` is optional; only the command-line overrides apply
on top of the run's config, and each changed field is printed (`field: run -> eval`). A
`--config FILE` that differs from the run's config is reported field by field and not used
(its fields only fill in those the run's file lacks), so an eval without
`--config.init.checkpoint=...` cannot silently load other weights. Without `W/config.json`,
`--config FILE` is required.

Resuming (`record_run_config`): a run whose `W/config.json` differs from the new config
prints the differences and refuses unless every changed field is in `SAFE` (fields that do
not change what the run trains), the run has not trained a step yet (a start that failed,
e.g. on a mistyped path), or `force` is set; the new config is then recorded and the old
one kept as `W/config.<time>.json`.

Restores: `tree_mismatches` compares a restore target with a checkpoint's saved array
records (names and shapes), so that a checkpoint of another model is named as such
(`checkpoint.TreeMismatchError`), never skipped as if corrupt.

CLI edge: `USER_ERRORS` are the exceptions the CLIs print as one line `error: ...`
(`fail`; the traceback only with `--verbose`); Orbax's notices that a reader's directory is
read-only are filtered out of the log (by design, and noise next to those lines).
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import pathlib
import socket
import sys
import time
import traceback
import uuid
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
from etils import epath

from score_jax import config_lib

RUN_CONFIG = "config.json"
BASE_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "base.py"
_ABSENT = "<absent>"

# Fields that a resumed run may change without --force: none changes what is trained.
SAFE: dict[str, str] = {
    "checkpoint.every": "when checkpoints are written",
    "checkpoint.keep": "how many are kept",
    "checkpoint.keep_best": "retention only",
    "checkpoint.async_save": "how they are written",
    "checkpoint.best_metric": "which saved step ranks best (every step keeps every metric)",
    "eval.batch_size": "problems per sampler call (the same greedy answers)",
    "eval.poll_s": "the eval loop's polling",
    "eval.timeout_s": "the eval loop's patience",
    "task.eval_split": "the eval loop's split (not trained on, not validated)",
    "task.eval_limit": "the eval loop's problem count",
    "task.workers": "grader processes (the same grades)",
    "train.log_every": "logging",
    "train.tensorboard": "logging",
    "train.max_nan_steps": "when to stop; the steps taken are the same",
    "train.micro_batches": "memory: the same loss and gradient (tests/rl/test_step.py)",
    "train.logit_chunk": "memory: the same loss and gradient (tests/rl/test_step.py)",
    "train.compact_episodes": "speed: the same loss and gradient (tests/rl/test_compact.py, "
                              "test_pack.py; True, of older runs, means 'columns')",
    "train.compact_bucket": "speed: the same loss and gradient (tests/rl/test_compact.py)",
    "model.remat": "memory: recomputes the same forward pass",
    "model.attention": "the attention kernel, not the function",
    "mesh.": "device layout: the same functions on any mesh (tests/test_sharding.py)",
    "distributed": "multi-host start-up",
    "required_fields": "a start-up check",
    "experiment.": "read by the experiment driver only, which sets plan / optim fields",
}


class ConfigChangeError(ValueError):
  """A resumed run's config differs from `W/config.json` in fields that are not safe."""


def is_safe(field: str) -> bool:
  return any(field == k or (k.endswith(".") and field.startswith(k)) for k in SAFE)


def _path(workdir: Any) -> epath.Path:
  text = str(workdir)
  check_cloud_path(text)
  return epath.Path(text if "://" in text else pathlib.Path(text).absolute())


def _tuples(value: Any) -> Any:
  """JSON lists -> tuples (configs hold tuples; `config_lib.to_plain` does the same)."""
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def _set(node: ml_collections.ConfigDict, key: str, value: Any) -> None:
  try:
    node[key] = value
  except (TypeError, ValueError):  # a type the defaults do not have: the run's value wins
    del node[key]
    node[key] = value


def _overlay(node: ml_collections.ConfigDict, data: Mapping[str, Any], prefix: str,
             notes: list[str], source: str) -> None:
  for key, value in data.items():
    if isinstance(value, dict):
      if key not in node or not isinstance(node[key], ml_collections.ConfigDict):
        if key in node:
          del node[key]
        node[key] = ml_collections.ConfigDict()
      _overlay(node[key], value, f"{prefix}{key}.", notes, source)
    else:
      _set(node, key, _tuples(value))
  for key in node.keys():
    if key not in data:
      value = ("section" if isinstance(node[key], ml_collections.ConfigDict)
               else f"value {node[key]!r}")
      notes.append(f"config.{prefix}{key} is not in the run's {RUN_CONFIG} (a field added "
                   f"after the run was written): {source}'s {value}")


def load_run_config(workdir: Any, defaults: ml_collections.ConfigDict | None = None
                    ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """(config, notes) of `W/config.json`; fields it lacks come from `defaults` (default:
  configs/base.py), each with a note. Raises FileNotFoundError / ConfigError naming it."""
  path = _path(workdir) / RUN_CONFIG
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: not the work directory of a training run")
  try:
    data = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise config_lib.ConfigError(
        f"{path} is not valid JSON ({e}): restore it (an older copy may be in "
        f"config.<time>.json next to it) or pass --config FILE") from e
  source = "--config"
  if defaults is None and BASE_CONFIG.is_file():
    defaults, source = config_lib.load_config_file(BASE_CONFIG), "configs/base.py"
  config = copy.deepcopy(defaults) if defaults is not None else ml_collections.ConfigDict()
  notes: list[str] = []
  _overlay(config, data, "", notes, source)
  return config, notes


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
  """{dotted field: value} of a config (tuples for lists)."""
  out: dict[str, Any] = {}
  for key, value in node.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = _tuples(value)
  return out


def diff(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
  """(field, value in a, value in b) of every field that differs (`_ABSENT` when missing)."""
  fa, fb = flatten(a), flatten(b)
  fields = list(fa) + [f for f in fb if f not in fa]
  return [(f, fa.get(f, _ABSENT), fb.get(f, _ABSENT)) for f in fields
          if fa.get(f, _ABSENT) != fb.get(f, _ABSENT)]


def format_changes(changes: Sequence[tuple[str, Any, Any]], mark: bool = False) -> str:
  """One line per change, `  field: a -> b` (with `mark`: safe / needs --force)."""
  return "\n".join(f"  {f}: {a!r} -> {b!r}"
                   + (("  (safe: " + _why(f) + ")" if is_safe(f) else "  (needs --force)")
                      if mark else "") for f, a, b in changes)


def _why(field: str) -> str:
  return next(v for k, v in SAFE.items() if field == k or (k.endswith(".")
                                                           and field.startswith(k)))


def resolve_eval_config(workdir: Any, config_file: str | None, overrides: Sequence[str], *,
                        log: Callable[[str], None] = print) -> ml_collections.ConfigDict:
  """The eval's config (see module docstring): `W/config.json` plus `overrides`, or the
  `--config` file plus `overrides` when the work directory holds no run config."""
  run_path = _path(workdir) / RUN_CONFIG
  if not run_path.exists():
    if config_file is None:
      raise config_lib.ConfigError(
          f"--config is required: {run_path} not found (--workdir {workdir} holds no "
          f"training run's config); pass --config FILE, e.g. --config configs/tiny.py")
    return config_lib.load(config_file, overrides)
  file_config = config_lib.load_config_file(config_file) if config_file else None
  run, notes = load_run_config(workdir, defaults=file_config)
  for note in notes:
    log(f"note: {note}")
  config = _with_overrides(run, overrides)
  changes = diff(run, config)
  if changes:
    log(f"config: the run's {run_path} with {len(changes)} field(s) changed on the command "
        f"line (run -> eval):\n{format_changes(changes)}")
  else:
    log(f"config: the run's {run_path}")
  if file_config is not None:
    differ = diff(config, _with_overrides(file_config, overrides))
    if differ:
      log(f"--config {config_file} differs from the run's config in {len(differ)} field(s) "
          f"(run -> {config_file}):\n{format_changes(differ)}\nusing the run's config plus "
          f"the command-line overrides (set a field with --config.FIELD=VALUE)")
  return config


def _with_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]
                    ) -> ml_collections.ConfigDict:
  out = copy.deepcopy(config)
  rest = config_lib.parse_overrides(out, overrides)
  if rest:
    raise config_lib.ConfigError(f"unexpected arguments {rest}; overrides look like "
                                 f"--config.train.steps=10")
  return out


# What gs:// paths need (pyproject.toml's [gcs] extra): etils / Orbax read and write them
# through gcsfs, tensorboardX's writer through google-cloud-storage.
GCS_PACKAGES = (("gcsfs", "gcsfs"), ("google-cloud-storage", "google.cloud.storage"))


def check_cloud_path(path: Any) -> None:
  """A gs:// `path` while the [gcs] extra is not installed: an ImportError naming the path,
  what is missing and the install command, before anything is read or written."""
  text = str(path)
  if not text.startswith("gs://"):
    return
  missing = []
  for dist, module in GCS_PACKAGES:
    try:
      importlib.import_module(module)
    except ImportError:
      missing.append(dist)
  if missing:
    raise ImportError(f"{text}: a gs:// path needs {' and '.join(missing)} (not installed): "
                      f"pip install -e '.[gcs]' in the score_jax checkout (or pip install "
                      f"{' '.join(missing)})")


def check_workdir(workdir: Any, *, create: bool) -> None:
  """Fails with one clear line when the (local) work directory is a file, sits under a
  file, cannot be created, or cannot be written (a probe file, so that it holds for root
  too); `create=False` only checks an existing one."""
  text = str(workdir)
  if "://" in text:                    # cloud storage: its client reports its own errors
    check_cloud_path(text)
    if create:
      epath.Path(text).mkdir(parents=True, exist_ok=True)
    return
  path = pathlib.Path(text).absolute()
  for parent in [path, *path.parents]:
    if parent.exists():
      if not parent.is_dir():
        where = "is a file" if parent == path else f"is inside {parent}, which is a file"
        raise NotADirectoryError(f"--workdir {path} {where}, not a directory: pass a "
                                 f"directory path (a new one is created)")
      break
  try:
    if create:
      path.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
      # No JAX call here: evaluate checks the workdir before jax.distributed.initialize().
      probe = path / f".score_jax-probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
      probe.write_bytes(b"")
      probe.unlink()
  except OSError as e:
    raise PermissionError(f"--workdir {path} is not writable ({type(e).__name__}: "
                          f"{e.strerror or e}): choose a writable directory, or make it "
                          f"writable (chmod u+w; chattr -i for an immutable one)") from e


def trained(workdir: Any) -> bool:
  """Whether the run has trained anything: a checkpoint step or a stored model on disk (a
  start that failed before its first step may change any field)."""
  root = _path(workdir)
  steps = root / "checkpoints"
  return (root / "models").exists() or (steps.is_dir() and any(
      p.name.isdigit() for p in steps.iterdir()))


def record_run_config(workdir: Any, config: ml_collections.ConfigDict, *,
                      force: bool = False, is_writer: bool = True,
                      log: Callable[[str], None] = print) -> None:
  """Writes `W/config.json`; when it exists and differs, prints the changes and raises
  ConfigChangeError unless every change is safe (`SAFE`), nothing was trained yet
  (`trained`), or `force`; the old file is kept as `W/config.<time>.json`."""
  check_workdir(workdir, create=True)
  path = _path(workdir) / RUN_CONFIG
  if path.exists():
    old, _ = load_run_config(workdir)
    changes = diff(old, config)
    if changes:
      unsafe = [f for f, _, _ in changes if not is_safe(f)] if trained(workdir) else []
      log(f"{path}: the config differs from the run's in {len(changes)} field(s) (run -> "
          f"now):\n{format_changes(changes, mark=True)}")
      if unsafe and not force:
        raise ConfigChangeError(
            f"{path}: resuming with a changed config ({', '.join(unsafe)}) would continue "
            f"another run's training; resume with the run's settings, use a new --workdir, "
            f"or pass --force to continue with the new config")
      if is_writer:
        backup = path.parent / f"config.{time.strftime('%Y%m%d-%H%M%S')}.json"
        backup.write_text(path.read_text())
        log(f"recorded the new config in {path} (the previous one: {backup})")
  if is_writer:
    path.write_text(config.to_json_best_effort(indent=2))


class TreeMismatchError(ValueError):
  """A checkpoint whose arrays (names, shapes) do not fit the model being restored: written
  by another model or optimiser config, not corrupt (never skipped for another step)."""


def tree_mismatches(target: Any, records: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """How a restore `target`'s arrays (names, shapes) differ from a checkpoint's saved
  records (`score_jax.digest.record`): one line per array, empty when they fit."""
  pairs = jax.tree_util.tree_flatten_with_path(target)[0]
  shapes = {jax.tree_util.keystr(p): tuple(leaf.shape) for p, leaf in pairs}
  bad = [f"{n}: in the checkpoint, not in the model" for n in records if n not in shapes]
  bad += [f"{n}: in the model, not in the checkpoint" for n in shapes if n not in records]
  bad += [f"{n}: checkpoint shape {tuple(r['shape'])} != model shape {shapes[n]}"
          for n, r in records.items() if n in shapes and tuple(r["shape"]) != shapes[n]]
  return bad


def mismatch_text(where: str, bad: Sequence[str], item: str = "params") -> str:
  more = f" (and {len(bad) - 4} more)" if len(bad) > 4 else ""
  fields = "config.optim.*" if item == "opt_state" else "config.model.* / config.init.*"
  return (f"{where} ({item}) does not fit: {'; '.join(bad[:4])}{more}. It was written "
          f"with another config than this one ({fields} differ from the run's): use the "
          f"run's config (W/config.json: drop --config and the overrides of {fields}), or "
          f"a new --workdir")


def check_fits(target: Any, records: Mapping[str, Any] | None, item: str, where: str
               ) -> None:
  """Raises TreeMismatchError when `target` does not fit the saved `records[item]`."""
  if records is not None and (bad := tree_mismatches(target, records[item])):
    raise TreeMismatchError(mismatch_text(where, bad, item))


# Orbax's words for a restore target that does not fit the saved tree.
_ORBAX_MISMATCH = ("tree structures do not match", "is not compatible with the stored shape")


def raise_if_mismatch(error: BaseException, where: str) -> None:
  """Raises TreeMismatchError from Orbax's `error` when it says the tree does not fit."""
  if any(words in str(error) for words in _ORBAX_MISMATCH):
    first = (str(error).splitlines() or [""])[0]
    raise TreeMismatchError(mismatch_text(where, [first], "params or opt_state")) from error


class _QuietReadOnly(logging.Filter):
  """Orbax's notices that a reader's directory is read-only: by design (the eval loop, the
  stored models), and noise between a CLI's output and its one-line errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not ("Given directory is read only" in message
                or "read_only=True, setting save_interval_steps=0" in message)


logging.getLogger("absl").addFilter(_QuietReadOnly())

# What the CLIs print as one line: filesystem, config, checkpoint, Hub and data mistakes.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, ImportError,
                                               RuntimeError)


def one_line(error: BaseException) -> str:
  """`error` as one line (its lines joined); foreign error types keep their name."""
  text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
  mine = type(error).__module__.startswith("score_jax") or type(error) in (
      ValueError, FileNotFoundError, NotADirectoryError, PermissionError, ImportError)
  return text if mine and text else f"{type(error).__name__}: {text}"


def fail(error: BaseException, verbose: bool = False) -> None:
  """Exits with status 1 and `error: <one line>` (after the traceback with `verbose`)."""
  if verbose:
    traceback.print_exception(error, file=sys.stderr)
  config_lib.die(one_line(error))
