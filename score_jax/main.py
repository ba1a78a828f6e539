"""Trains SCoRe: `python -m score_jax.main --config configs/tiny.py --workdir runs/tiny`.

Runs the config's stage plan (e.g. sft -> Stage I -> Stage II), or, for configs with an
`experiment` section (configs/demo.py, configs/paper_table.py), a whole experiment
(score_jax.experiment). A training run writes checkpoints to
`W/checkpoints/`, train metrics to `W/train/metrics.jsonl` and TensorBoard. Re-running the
same command resumes from the latest checkpoint. Evaluate with `python -m
score_jax.evaluate --config ... --workdir W` (a separate process, watching the checkpoints).
"""

from __future__ import annotations

import sys

from score_jax import config_lib
from score_jax import multihost


def main(argv: list[str] | None = None) -> dict:
  config, args = config_lib.parse(sys.argv[1:] if argv is None else argv, __doc__)
  try:
    multihost.maybe_initialize_distributed(config)
  except ValueError as e:
    config_lib.die(str(e))
  if config.experiment.methods:
    from score_jax import experiment  # pylint: disable=import-outside-toplevel
    try:
      return experiment.run(config, args.workdir)
    except ValueError as e:
      config_lib.die(str(e))
  from score_jax import train  # pylint: disable=import-outside-toplevel
  try:
    trainer = train.Trainer(config, args.workdir)
  except ValueError as e:
    config_lib.die(str(e))
  last = trainer.run()
  print(f"Finished {trainer.total} steps in {args.workdir}. Last step: "
        + ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float)), flush=True)
  return last


if __name__ == "__main__":
  main()
