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

Host batches on the mesh (one process or several) are `score_jax.multihost`'s.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
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
