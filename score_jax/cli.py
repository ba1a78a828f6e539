"""Command-line parsing shared by `score_jax.main` and `score_jax.evaluate`.

  --config PATH            a config file with get_config()
  --workdir DIR            where checkpoints, metrics and plots go
  --config.a.b=VALUE       overrides (unknown fields fail with the closest names)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import ml_collections

from score_jax import config_lib


def parse(argv: Sequence[str], description: str, extra: Sequence[tuple[str, dict]] = ()
          ) -> tuple[ml_collections.ConfigDict, argparse.Namespace]:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py")
  parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics)")
  for name, kwargs in extra:
    parser.add_argument(name, **kwargs)
  args, rest = parser.parse_known_args(argv)
  try:
    config = config_lib.load(args.config, rest)
  except config_lib.ConfigError as e:
    parser.exit(2, f"error: {e}\n")
  return config, args


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """jax.distributed.initialize() when config.distributed.

  TPU pods and SLURM jobs are detected by JAX itself. Elsewhere (e.g. N processes on one
  machine) set JAX_COORDINATOR_ADDRESS=host:port (read by JAX), JAX_NUM_PROCESSES=N and
  JAX_PROCESS_ID=i in each process's environment.
  """
  if config.distributed:
    import jax  # pylint: disable=import-outside-toplevel
    kwargs = {}
    for var, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
      if os.environ.get(var):
        try:
          kwargs[arg] = int(os.environ[var])
        except ValueError:
          die(f"{var}={os.environ[var]!r} is not an integer")
    jax.distributed.initialize(**kwargs)


def die(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def quiet_tensorflow_logs() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
