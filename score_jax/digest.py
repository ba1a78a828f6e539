"""Per-array digests of saved weights, so that a checkpoint that changed on disk is never used.

Every array leaf of a saved pytree (params, optimiser state) gets a record `{shape, dtype,
digest}`; `score_jax.checkpoint` stores the records in the step itself (its `digest` item,
written inside Orbax's temporary directory, so it is committed with the step) and checks them
on every restore, in the saved dtype, before anything uses the arrays.

The digest is a function of the global array's value alone, whatever its sharding, and is
computed on the devices that hold it: for each element with bit pattern `v` (its bytes read
as an unsigned integer: 4-byte dtypes as uint32, 2- and 1-byte dtypes widened, 8-byte dtypes
as two uint32 words) at row-major position `i`,

  lane_s = sum_i fmix32(v_i XOR fmix32(i XOR seed_s))  mod 2^32,   s = 0, 1

(`fmix32`: MurmurHash3's 32-bit finaliser, a bijection), 64 bits in all. For a fixed position
the term is a bijection of the value, so any change of one element changes both lanes, and
several changes cancel with probability ~2^-64; positions enter the term, so moved blocks are
caught too. It guards against corruption (a flipped bit, a truncated or partially copied
file, an edit), not against an adversary who can also rewrite the digests.

Why not sha256 of the bytes: a sum over elements splits over shards, so one jitted
reduction gives the same value on one device, on an FSDP mesh or across hosts (each process
hashes only the shards it holds; XLA adds the partial sums) without gathering the params to
a host, and the check after a restore into another mesh (another sharding) compares equal
values. The cost is one fused elementwise pass over the arrays on their own devices.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FORMAT = "score_jax.digest.v1"


class CorruptCheckpointError(ValueError):
  """A checkpoint step whose arrays do not match their digests, or that cannot be read."""

_SEEDS = (0x9E3779B9, 0x7F4A7C15)


def _fmix32(h: jax.Array) -> jax.Array:
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _bits(x: jax.Array) -> jax.Array:
  """The elements' bit patterns as uint32 (8-byte dtypes: a trailing axis of two words)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = np.dtype(x.dtype).itemsize
  if size in (4, 8):
    return lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    return lax.bitcast_convert_type(x, jnp.uint8 if size == 1 else jnp.uint16).astype(jnp.uint32)
  raise TypeError(f"no digest for dtype {x.dtype}")


def _lanes(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  b = _bits(x)
  position = jnp.zeros(b.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(b.ndim)):        # row-major index, mod 2^32
    position = position + lax.broadcasted_iota(jnp.uint32, b.shape, axis) * jnp.uint32(
        stride % 2**32)
    stride *= b.shape[axis]
  return tuple(jnp.sum(_fmix32(b ^ _fmix32(position ^ jnp.uint32(seed))), dtype=jnp.uint32)
               for seed in _SEEDS)


# One small program per leaf shape / dtype / sharding (Adam's moments reuse the params'),
# compiled once per process: far less compile time than one program over the whole tree.
_leaf_lanes = jax.jit(_lanes)


def _hex(lanes: Any) -> str:
  return "".join(f"{int(v):08x}" for v in lanes)


def _flat(tree: Any) -> tuple[list[str], list[Any]]:
  pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(path) for path, _ in pairs], [leaf for _, leaf in pairs]


def _digests(leaves: list[Any]) -> list[str]:
  # One leaf at a time, each fetched before the next is dispatched: the sums of sharded
  # leaves are all-reduces, and many small collective programs in flight at once can
  # starve XLA:CPU's rendezvous of threads (an abort after 40 s on a loaded 2-core host).
  return [_hex(jax.device_get(_leaf_lanes(x if isinstance(x, jax.Array) else jnp.asarray(x))))
          for x in leaves]


def record(tree: Any) -> dict[str, dict[str, Any]]:
  """{leaf path: {shape, dtype, digest}} of every array leaf of `tree` (a collective: every
  process of a multi-host run calls it with the same tree)."""
  names, leaves = _flat(tree)
  out = {}
  for name, leaf, digest in zip(names, leaves, _digests(leaves)):
    out[name] = {"shape": list(np.shape(leaf)), "dtype": str(np.dtype(leaf.dtype)),
                 "digest": digest}
  return out


def restore_target(target: Any, records: Mapping[str, Mapping[str, Any]]) -> Any:
  """The abstract restore `target` (ShapeDtypeStructs) with each leaf's saved dtype, so that
  the digests are checked on the values as saved (the caller casts afterwards)."""
  names, leaves = _flat(target)
  out = [jax.ShapeDtypeStruct(t.shape, np.dtype(records[n]["dtype"]), sharding=t.sharding)
         if n in records else t for n, t in zip(names, leaves)]
  return jax.tree.unflatten(jax.tree.structure(target), out)


def verify(tree: Any, records: Mapping[str, Mapping[str, Any]], where: str) -> None:
  """Raises CorruptCheckpointError naming `where` when `tree` differs from `records`."""
  bad = mismatches(tree, records)
  if bad:
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    raise CorruptCheckpointError(
        f"{where} does not match its digests: {'; '.join(bad[:3])}{more}. Its files changed "
        f"after they were written (disk corruption, a partial copy or an edit): not used")


def mismatches(tree: Any, records: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """Leaves of `tree` (restored, in the saved dtypes) that differ from `records`: one line
  per leaf, empty when every leaf matches."""
  names, leaves = _flat(tree)
  found = dict(zip(names, leaves))
  bad = [f"{n}: not restored" for n in records if n not in found]
  bad += [f"{n}: no digest was saved for it" for n in names if n not in records]
  checked = [n for n in names if n in records]
  for name, digest in zip(checked, _digests([found[n] for n in checked])):
    want, leaf = records[name], found[name]
    got = {"shape": list(np.shape(leaf)), "dtype": str(np.dtype(leaf.dtype)), "digest": digest}
    for key in ("shape", "dtype", "digest"):
      if got[key] != want[key]:
        bad.append(f"{name}: {key} {got[key]} != saved {want[key]}")
        break
  return bad
