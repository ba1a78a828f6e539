"""Separate parameter layouts for sampling and training, with a measured reshard.

Training wants FSDP: params sharded over ("data", "fsdp") on their model dimension, so
each device stores 1/fsdp of the weights, optimiser state and gradients. Decoding wants the
opposite: every decode step of an FSDP-sharded model all-gathers every weight matrix for
one token per row. With `config.mesh.sampling_fsdp=False` the trainer gathers the params
ONCE per step into a sampling layout (the same specs without the "data" and "fsdp" axes:
replicated over them, still sharded over "tensor"), decodes both turns from that copy,
and frees it before the train step:

  sampling = SamplingParams(fsdp=False)
  params_s = sampling.get("policy", params)   # reshards (timed); same object on reuse
  ... rollouts with params_s ...
  seconds = sampling.release()                 # drops the copies -> `reshard_time_s`

Memory: while sampling, a device holds its FSDP shard plus a full (tensor-sharded) copy
of the weights; the copy is gone during the train step, where activations and optimiser
state dominate. With `sampling_fsdp=True` (the default) sampling uses the training
params as they are (no copy, no reshard, `reshard_time_s` = 0).
"""

from __future__ import annotations

import time
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

SAMPLING_DROPPED_AXES = ("data", "fsdp")


def drop_axes(spec: PartitionSpec, axes: tuple[str, ...] = SAMPLING_DROPPED_AXES
              ) -> PartitionSpec:
  """`spec` with the mesh axes `axes` removed (those dimensions become replicated)."""
  out = []
  for entry in spec:
    names = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
    kept = tuple(n for n in names if n not in axes)
    out.append(None if not kept else (kept[0] if len(kept) == 1 else kept))
  return PartitionSpec(*out)


def sampling_shardings(params: Any) -> Any:
  """NamedShardings of the sampling layout for a tree of NamedSharding-placed arrays."""
  def one(x):
    sharding = x.sharding
    if not isinstance(sharding, NamedSharding):
      raise ValueError(f"sampling_shardings: a param of shape {x.shape} is not placed with a "
                       f"NamedSharding ({sharding}); create params with model.init_params "
                       f"(mesh=...) or load them onto a mesh")
    return NamedSharding(sharding.mesh, drop_axes(sharding.spec))
  return jax.tree.map(one, params)


def _identity(tree: Any) -> Any:
  return tree


_RESHARDERS: dict[Any, Any] = {}


def reshard(params: Any, shardings: Any) -> Any:
  """A copy of `params` in `shardings` (one compiled program; works across processes)."""
  leaves, treedef = jax.tree.flatten(shardings)
  key = (treedef, tuple(leaves))
  if key not in _RESHARDERS:
    _RESHARDERS[key] = jax.jit(_identity, out_shardings=shardings)
  return _RESHARDERS[key](params)


class SamplingParams:
  """Per-step cache of params in the sampling layout (see module docstring)."""

  def __init__(self, fsdp: bool):
    self.fsdp = bool(fsdp)
    self._copies: dict[str, tuple[Any, Any]] = {}
    self._seconds = 0.0

  def get(self, name: str, params: Any) -> Any:
    """`params` laid out for sampling; the cached copy while `params` is the same object."""
    if self.fsdp:
      return params
    hit = self._copies.get(name)
    if hit is not None and hit[0] is params:
      return hit[1]
    start = time.perf_counter()
    copy = jax.block_until_ready(reshard(params, sampling_shardings(params)))
    self._seconds += time.perf_counter() - start
    self._copies[name] = (params, copy)
    return copy

  def release(self) -> float:
    """Drops every cached copy; returns the seconds spent resharding since the last call."""
    self._copies.clear()
    seconds, self._seconds = self._seconds, 0.0
    return seconds
