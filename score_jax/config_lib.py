"""Config files, command-line overrides and the command line itself (ml_collections).

  --config PATH            a config file with get_config()
  --workdir DIR            where checkpoints, metrics and plots go
  --config.a.b=VALUE       overrides (unknown fields fail with the closest names)

A config file is a Python file with `get_config() -> ml_collections.ConfigDict`
(`configs/base.py` documents every field). Overrides are `--config.section.field=value`;
a field that does not exist fails with the closest known names, never silently.

Configs stop at the edge of numeric code: `sections(config)` turns them into frozen
dataclasses that are hashable and can be static arguments of `jax.jit`.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import pathlib
import sys
from typing import Any, Sequence

import ml_collections


class ConfigError(ValueError):
  """A bad config file, field or value; the message says what to change."""


def load_config_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Imports `path` and calls its `get_config()`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {path} not found (expected e.g. configs/tiny.py)")
  spec = importlib.util.spec_from_file_location(f"score_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  # Configs import their parents as `from configs import base`: put the folder that holds
  # `configs/` on the path.
  root = str(path.resolve().parent.parent)
  if root not in sys.path:
    sys.path.insert(0, root)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"config file {path} failed to import: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} has no get_config() function")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  return config


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string such as stage1 or /path/to/ckpt


def _field_names(node: ml_collections.ConfigDict, prefix: str) -> list[str]:
  return [f"{prefix}{k}" for k in node.keys()]


def set_field(config: ml_collections.ConfigDict, dotted: str, raw_value: str) -> None:
  """Sets `config.<dotted> = raw_value` (parsed as a Python literal), checking the name.

  Raises:
    ConfigError: naming the unknown field and its closest known spellings.
  """
  parts = dotted.split(".")
  node = config
  for depth, part in enumerate(parts):
    prefix = ".".join(parts[:depth])
    prefix = prefix + "." if prefix else ""
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = _field_names(node, prefix) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(prefix + part, known, n=3)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(
          f"unknown config field 'config.{dotted}' (no field '{part}' in "
          f"'config{'.' + prefix[:-1] if prefix else ''}').{hint} "
          f"Known fields there: {', '.join(sorted(k.split('.')[-1] for k in known))}.")
    if depth < len(parts) - 1:
      node = node[part]
  key = parts[-1]
  value = _parse_value(raw_value)
  old = node[key]
  if isinstance(old, bool) and isinstance(value, str):
    value = {"true": True, "false": False}.get(value.lower(), value)
  if isinstance(old, str) and not isinstance(value, str):
    value = raw_value  # e.g. --config.plan.stages=1 for a string field
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    node[key] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{dotted}={raw_value!r}: {e} (current value: {old!r})") from e


def parse_overrides(config: ml_collections.ConfigDict, argv: Sequence[str]) -> list[str]:
  """Applies every `--config.a.b=v` (or `--config.a.b v`) in argv; returns the other args."""
  rest: list[str] = []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith("--config."):
      name, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        if i + 1 >= len(args):
          raise ConfigError(f"{arg} needs a value: {arg}=VALUE")
        value = args[i + 1]
        i += 1
      set_field(config, name, value)
    else:
      rest.append(arg)
    i += 1
  return rest


def load(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads a config file and applies `--config.x=y` overrides; raises on unknown args."""
  config = load_config_file(path)
  rest = parse_overrides(config, overrides)
  if rest:
    raise ConfigError(f"unexpected arguments {rest}; overrides look like --config.train.steps=10")
  return config


def to_plain(node: Any) -> Any:
  """ConfigDict -> nested plain dicts / tuples (for JSON and dataclasses)."""
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    return {k: to_plain(v) for k, v in node.items()}
  if isinstance(node, list):
    return tuple(to_plain(v) for v in node)
  return node


def parse(argv: Sequence[str], description: str, extra: Sequence[tuple[str, dict]] = ()
          ) -> tuple[ml_collections.ConfigDict, argparse.Namespace]:
  """The command line of `score_jax.main` / `score_jax.evaluate`: config, workdir, extras."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py")
  parser.add_argument("--workdir", required=True, help="run directory (checkpoints, metrics)")
  for name, kwargs in extra:
    parser.add_argument(name, **kwargs)
  args, rest = parser.parse_known_args(argv)
  try:
    config = load(args.config, rest)
  except ConfigError as e:
    parser.exit(2, f"error: {e}\n")
  return config, args


def die(message: str) -> None:
  """Prints `error: message` to stderr and exits with status 1 (the CLIs' one-line errors)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)
