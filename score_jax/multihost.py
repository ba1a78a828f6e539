"""Host batches on a mesh, on one process or several (multi-host), and distributed start-up.

Host batches on several processes (multi-host): every process knows the same global list
of B items; `row_split(mesh, B)` says which rows this process's devices hold under
`batch_sharding`. A process prepares only those rows (`RowSplit.take`), `put_local_batch`
assembles the global array from every process's rows, `local_rows` reads this process's
rows of a global result back, and `gather_rows` collects per-row Python values of all
rows (each row counted once) in global row order. On one process all rows are local and
these are plain `device_put` / `np.asarray`.

`maybe_initialize_distributed` starts `jax.distributed` for multi-process runs.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from score_jax.mesh import batch_sharding


def put_batch(x: Any, mesh: Mesh | None) -> Any:
  """Places a [B, ...] array on `mesh` with `batch_sharding` (no-op if `mesh` is None).

  A host (numpy) array must be the whole global batch, the same on every process; each
  process copies only the rows its devices hold.
  """
  if mesh is None:
    return x
  if isinstance(x, jax.Array):
    return jax.device_put(x, batch_sharding(mesh, x.shape))
  x = np.asarray(x)
  sharding = batch_sharding(mesh, x.shape)
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


@dataclasses.dataclass(frozen=True)
class RowSplit:
  """The rows of a global [B, ...] host batch that this process prepares.

  Attributes:
    batch: B, the global number of rows.
    rows: sorted global indices of the rows this process's devices hold (all rows on a
      single process, and on every process when the batch is replicated).
    owned: bool per entry of `rows`: this process is the lowest-indexed one holding the
      row; `gather_rows` takes each row from its owner only.
  """
  batch: int
  rows: np.ndarray
  owned: np.ndarray

  @classmethod
  def everything(cls, batch: int) -> "RowSplit":
    """All rows on this process (process 0 owns them)."""
    return cls(batch, np.arange(batch), np.full(batch, jax.process_index() == 0))

  @property
  def is_everything(self) -> bool:
    return len(self.rows) == self.batch

  def take(self, items: Sequence[Any]) -> list[Any]:
    """This process's items of a global per-row list."""
    if len(items) != self.batch:
      raise ValueError(f"RowSplit.take: got {len(items)} items for a batch of {self.batch}")
    return [items[int(i)] for i in self.rows]


def row_split(mesh: Mesh | None, batch: int) -> RowSplit:
  """Which rows of a `batch_sharding`ed [batch, ...] array this process holds.

  Computed from the sharding alone (no communication): the same on every process. Rows
  land in contiguous blocks of `batch / (data * fsdp)` per device, so groups of k
  consecutive rows (the k samples of a prompt) stay on one process when k divides that.
  """
  if mesh is None or jax.process_count() == 1:
    return RowSplit(batch, np.arange(batch), np.ones(batch, bool))
  me = jax.process_index()
  owner = np.full(batch, np.iinfo(np.int32).max)
  mine = np.zeros(batch, bool)
  for device, index in batch_sharding(mesh, (batch,)).devices_indices_map((batch,)).items():
    rows = np.arange(batch)[index[0]]
    owner[rows] = np.minimum(owner[rows], device.process_index)
    if device.process_index == me:
      mine[rows] = True
  rows = np.flatnonzero(mine)
  return RowSplit(batch, rows, owner[rows] == me)


def put_local_batch(x_local: Any, mesh: Mesh | None, split: RowSplit) -> Any:
  """The global [split.batch, ...] array whose rows `split.rows` are `x_local` (host data).

  Every process calls this with its own rows; the result is batch-sharded on `mesh`
  (`x_local` itself when `mesh` is None, which needs all rows).
  """
  x_local = np.asarray(x_local)
  if x_local.shape[:1] != (len(split.rows),):
    raise ValueError(f"put_local_batch: {x_local.shape[0] if x_local.ndim else 'no'} rows "
                     f"given for the {len(split.rows)} local rows of a {split.batch}-row batch")
  if mesh is None or split.is_everything:
    return put_batch(x_local, mesh)
  shape = (split.batch,) + x_local.shape[1:]
  position = np.full(split.batch, -1)
  position[split.rows] = np.arange(len(split.rows))

  def rows_of(index):
    local = position[np.arange(split.batch)[index[0]]]
    if (local < 0).any():
      raise ValueError("put_local_batch: a device of this process needs rows the RowSplit "
                       "does not hold; build the split with row_split(mesh, batch)")
    return x_local[local][(slice(None),) + tuple(index[1:])]

  return jax.make_array_from_callback(shape, batch_sharding(mesh, shape), rows_of)


def local_rows(x: Any, split: RowSplit) -> np.ndarray:
  """Rows `split.rows` of the global array `x`, as numpy, read from this process's shards.

  Falls back to an all-gather when this process's shards do not cover those rows.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    x = np.asarray(x)
    return x if split.is_everything else x[split.rows]
  position = np.full(split.batch, -1)
  position[split.rows] = np.arange(len(split.rows))
  out = np.zeros((len(split.rows),) + x.shape[1:], x.dtype)
  covered = np.zeros(out.shape, bool)
  for shard in x.addressable_shards:
    local = position[np.arange(x.shape[0])[shard.index[0]]]
    keep = local >= 0
    if keep.any():
      target = (local[keep],) + tuple(shard.index[1:])
      out[target] = np.asarray(shard.data)[keep]
      covered[target] = True
  if covered.all():
    return out
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))[split.rows]


def _allgather_bytes(blob: bytes) -> list[bytes]:
  """Every process's `blob`, in process order (collective: all processes must call)."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  sizes = np.asarray(multihost_utils.process_allgather(np.array([len(blob)], np.int64)))
  sizes = sizes.reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:len(blob)] = np.frombuffer(blob, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [gathered[p, :int(n)].tobytes() for p, n in enumerate(sizes)]


def gather_rows(values: Sequence[Any], split: RowSplit) -> list[Any]:
  """Per-row values of ALL rows in global row order, from every process's `values`.

  `values[i]` belongs to row `split.rows[i]` (picklable Python or numpy values). A
  collective on several processes (every process must call it); on one process the
  values themselves.
  """
  if len(values) != len(split.rows):
    raise ValueError(f"gather_rows: {len(values)} values for {len(split.rows)} local rows")
  if jax.process_count() == 1:
    return list(values)
  mine = [(int(r), v) for r, v, owned in zip(split.rows, values, split.owned) if owned]
  out: list[Any] = [None] * split.batch
  seen = np.zeros(split.batch, bool)
  for blob in _allgather_bytes(pickle.dumps(mine)):
    for r, v in pickle.loads(blob):
      out[r], seen[r] = v, True
  if not seen.all():
    raise RuntimeError(f"gather_rows: rows {np.flatnonzero(~seen)[:8].tolist()} have no "
                       "owner; every process must pass a split from row_split(mesh, batch)")
  return out


def maybe_initialize_distributed(config: Any) -> None:
  """jax.distributed.initialize() when `config.distributed`.

  TPU pods and SLURM jobs are detected by JAX itself. Elsewhere (e.g. N processes on one
  machine) set JAX_COORDINATOR_ADDRESS=host:port (read by JAX), JAX_NUM_PROCESSES=N and
  JAX_PROCESS_ID=i in each process's environment.
  """
  if not config.distributed:
    return
  kwargs = {}
  for var, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
    if os.environ.get(var):
      try:
        kwargs[arg] = int(os.environ[var])
      except ValueError:
        raise ValueError(f"{var}={os.environ[var]!r} is not an integer") from None
  jax.distributed.initialize(**kwargs)
