"""Trains SCoRe: `python -m score_jax.main --config configs/tiny.py --workdir runs/tiny`.

Runs the config's stage plan (e.g. sft -> Stage I -> Stage II), or, for configs with an
`experiment` section (configs/demo.py, configs/paper_table.py), a whole experiment
(score_jax.experiment). A training run writes checkpoints to
`W/checkpoints/`, train metrics to `W/train/metrics.jsonl` and TensorBoard. Re-running the
same command resumes from the latest good checkpoint. Evaluate with `python -m
score_jax.evaluate --config ... --workdir W` (a separate process, watching the checkpoints).

A checkpoint that cannot be written (`checkpoint.CheckpointSaveError`: an unwritable or
missing directory, a full disk) ends the process at once with status 1 and one line naming
the path and the cause, through `os._exit`: after a failed asynchronous save Orbax leaves
non-daemon threads waiting for completion signals that never come, so a normal exit (which
joins them) would hang forever, holding the run's accelerators.
"""

from __future__ import annotations

import os
import sys

from score_jax import config_lib
from score_jax import multihost


def stop_now(message: str) -> None:
  """Prints `error: message` and ends the process with status 1 without joining threads."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


def main(argv: list[str] | None = None) -> dict:
  config, args = config_lib.parse(sys.argv[1:] if argv is None else argv, __doc__)
  try:
    config_lib.check_ranges(config)
    multihost.maybe_initialize_distributed(config)
  except ValueError as e:
    config_lib.die(str(e))
  from score_jax import checkpoint  # pylint: disable=import-outside-toplevel
  if config.experiment.methods:
    from score_jax import experiment  # pylint: disable=import-outside-toplevel
    try:
      return experiment.run(config, args.workdir)
    except checkpoint.CheckpointSaveError as e:
      stop_now(str(e))
    except ValueError as e:
      config_lib.die(str(e))
  from score_jax import train  # pylint: disable=import-outside-toplevel
  try:
    trainer = train.Trainer(config, args.workdir)
  except checkpoint.CheckpointSaveError as e:
    stop_now(str(e))
  except ValueError as e:
    config_lib.die(str(e))
  try:
    last = trainer.run()
  except checkpoint.CheckpointSaveError as e:
    stop_now(str(e))
  except checkpoint.CorruptCheckpointError as e:   # e.g. no good step, a corrupt reference
    config_lib.die(str(e))
  print(f"Finished {trainer.total} steps in {args.workdir}. Last step: "
        + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)), flush=True)
  return last


if __name__ == "__main__":
  main()
