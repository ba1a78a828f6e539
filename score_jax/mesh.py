"""Device mesh and logical-axis sharding rules.

Every param and activation names its dimensions with *logical* axes (`batch`,
`length`, `embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`, ...). One rules
table, `LOGICAL_AXIS_RULES`, maps them onto the mesh axes `("data", "fsdp", "tensor")`:

  batch    -> ("data", "fsdp")   activations and the KV cache are split over batch
  embed    -> "fsdp"             params are FSDP-sharded over their model dimension
  mlp, heads, kv_heads, vocab -> "tensor"   Megatron-style tensor parallelism
  length, head_dim, norm, act_embed -> replicated

A dimension whose size is not divisible by the product of its mesh axes is left
replicated (e.g. `kv_heads` with K=1 on a tensor=2 mesh), so any config runs on any
mesh. Use `jax.set_mesh(mesh)` outside `jax.jit`; inside, `constrain` reads the
context mesh and is a no-op when no mesh (or a mesh without our axes) is set.

Host batches on several processes (multi-host): every process knows the same global list
of B items; `row_split(mesh, B)` says which rows this process's devices hold under
`batch_sharding`. A process prepares only those rows (`RowSplit.take`), `put_local_batch`
assembles the global array from every process's rows, `local_rows` reads this process's
rows of a global result back, and `gather_rows` collects per-row Python values of all
rows (each row counted once) in global row order. On one process all rows are local and
these are plain `device_put` / `np.asarray`.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axis name(s) (None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),        # norm scales: small, replicated
    ("act_embed", None),   # model dimension of activations (params use `embed`)
)
_RULES = dict(LOGICAL_AXIS_RULES)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh with `AxisType.Auto` on every axis.

  Args:
    data, fsdp, tensor: axis sizes; at most one may be -1 (= all remaining devices).
    devices: devices to use (default `jax.devices()`).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"make_mesh: at most one axis may be -1, got data={data}, "
                     f"fsdp={fsdp}, tensor={tensor}")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
    raise ValueError(f"make_mesh: data={data} x fsdp={fsdp} x tensor={tensor} does not "
                     f"fit {len(devices)} devices")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise ValueError(f"make_mesh: data*fsdp*tensor={math.prod(sizes)} but "
                     f"{len(devices)} devices were given; pass devices=... or -1 on one axis")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def _axis_sizes(mesh) -> dict[str, int]:
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


def logical_to_spec(names: Sequence[str | None], mesh=None,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec via `LOGICAL_AXIS_RULES`.

  Args:
    names: one logical name (or None) per array dimension.
    mesh: a Mesh or AbstractMesh; mesh axes it lacks are dropped.
    shape: the array shape; dimensions not divisible by their mesh axes' product
      are left replicated.
  """
  sizes = _axis_sizes(mesh) if mesh is not None else None
  used: set[str] = set()
  spec = []
  for i, name in enumerate(names):
    if name is not None and name not in _RULES:
      raise ValueError(f"unknown logical axis {name!r}; known: {sorted(_RULES)} "
                       "(add it to LOGICAL_AXIS_RULES in score_jax/mesh.py)")
    axes = _RULES.get(name) if name is not None else None
    axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    if sizes is not None:
      axes = tuple(a for a in axes if a in sizes and sizes[a] > 1)
    axes = tuple(a for a in axes if a not in used)
    if shape is not None and sizes is not None and axes:
      if shape[i] % math.prod(sizes[a] for a in axes):
        axes = ()
    used.update(axes)
    spec.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return PartitionSpec(*spec)


def logical_to_sharding(names: Sequence[str | None], mesh: Mesh,
                        shape: Sequence[int] | None = None) -> NamedSharding:
  """NamedSharding on `mesh` for an array whose dimensions are `names`."""
  return NamedSharding(mesh, logical_to_spec(names, mesh, shape))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` by logical names on the context mesh (else no-op)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  spec = logical_to_spec(names, mesh, x.shape)
  return jax.lax.with_sharding_constraint(x, spec)


def mesh_of(tree: Any) -> Mesh | None:
  """The mesh of the first NamedSharding-placed array in `tree`, if any."""
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding) and not isinstance(leaf, jax.core.Tracer):
      return sharding.mesh
  return None


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
  """Sharding of a [B, ...] host input: batch over ("data", "fsdp"), rest replicated."""
  return logical_to_sharding(("batch",) + (None,) * (len(shape) - 1), mesh, shape)


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


# --- Host batches on several processes --------------------------------------------------

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
