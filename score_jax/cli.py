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
  """jax.distributed.initialize() when config.distributed (auto-detects TPU pods / SLURM)."""
  if config.distributed:
    import jax  # pylint: disable=import-outside-toplevel
    jax.distributed.initialize()


def die(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def quiet_tensorflow_logs() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
