"""Trains SCoRe: `python -m score_jax.main --config configs/tiny.py --workdir runs/tiny`.

Runs the config's stage plan (e.g. sft -> Stage I -> Stage II), or, for configs with an
`experiment` section (configs/demo.py, configs/paper_table.py), a whole experiment
(score_jax.experiment). A training run writes its config to `W/config.json`, checkpoints to
`W/checkpoints/`, train metrics to `W/train/metrics.jsonl` and TensorBoard, and prints a
start-up summary (devices and mesh, model and parameter count, tokenizer, split sizes, stage
plan: `score_jax.startup`). Re-running the same command resumes from the latest good
checkpoint; a changed config is refused unless every change is safe
(`score_jax.run_config.SAFE`) or `--force` is given (the new config is recorded, the old one
kept as `W/config.<time>.json`). Evaluate with `python -m score_jax.evaluate --workdir W`
(a separate process, watching the checkpoints, with the run's config).

Mistakes (a missing checkpoint path, a Hub id that cannot be fetched, a work directory that
is a file or read-only, a checkpoint of another model) end with one line `error: ...` naming
the path and the fix, status 1; `--verbose` also prints the traceback.

A checkpoint that cannot be written (`checkpoint.CheckpointSaveError`: an unwritable or
missing directory, a full disk) ends the process at once with status 1 and one line naming
the path and the cause, through `os._exit`: after a failed asynchronous save Orbax leaves
non-daemon threads waiting for completion signals that never come, so a normal exit (which
joins them) would hang forever, holding the run's accelerators.
"""

from __future__ import annotations

import os
import sys
import traceback

from score_jax import config_lib
from score_jax import multihost
from score_jax import run_config


def stop_now(message: str, error: BaseException | None = None, verbose: bool = False) -> None:
  """Prints `error: message` and ends the process with status 1 without joining threads."""
  if verbose and error is not None:
    traceback.print_exception(error, file=sys.stderr)
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


EXTRA = [("--force", dict(action="store_true", help="resume even when the config changed "
                          "in fields that are not safe (records the new config)")),
         ("--verbose", dict(action="store_true", help="tracebacks with errors"))]


def main(argv: list[str] | None = None) -> dict:
  config, args = config_lib.parse(sys.argv[1:] if argv is None else argv, __doc__,
                                  extra=EXTRA)
  from score_jax import checkpoint  # pylint: disable=import-outside-toplevel
  try:
    config_lib.check_ranges(config)
    multihost.maybe_initialize_distributed(config)
    if config.experiment.methods:
      from score_jax import experiment  # pylint: disable=import-outside-toplevel
      return experiment.run(config, args.workdir, force=args.force)
    from score_jax import startup  # pylint: disable=import-outside-toplevel
    from score_jax import train  # pylint: disable=import-outside-toplevel
    trainer = train.Trainer(config, args.workdir, force=args.force)
    if trainer.is_writer:
      sizes = startup.split_sizes(trainer.c.task, startup.run_splits(config),
                                  known={config.task.train_split: len(trainer.train_problems)})
      print(startup.summary(trainer.c, workdir=trainer.workdir, source=args.config,
                            sizes=sizes), flush=True)
    last = trainer.run()
  except checkpoint.CheckpointSaveError as e:
    stop_now(str(e), e, args.verbose)
  except run_config.USER_ERRORS as e:   # e.g. no good step, a corrupt reference, bad paths
    run_config.fail(e, args.verbose)
  print(f"Finished {trainer.total} steps in {args.workdir}. Last step: "
        + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)), flush=True)
  return last


if __name__ == "__main__":
  main()
