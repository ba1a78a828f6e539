"""Orbax checkpoints: retention (last K + best by validation metric), restore into another
mesh's shardings, and readers that never see a half-written step."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from score_jax import checkpoint as checkpoint_lib


def _tree(mesh, spec):
  x = jnp.arange(64, dtype=jnp.float32).reshape(8, 8)
  return {"w": jax.device_put(x, NamedSharding(mesh, spec)), "b": jnp.ones((3,), jnp.float32)}


def test_keeps_last_k_and_best(tmp_path):
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  params = _tree(mesh, P("fsdp"))
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "c", every=1, keep=2, keep_best=True,
                                     async_save=False)
  for step, acc in zip(range(1, 7), [0.1, 0.9, 0.3, 0.2, 0.4, 0.5]):
    ckpt.save(step, params, None, {"step": step}, metrics={"acc_t2": acc})
  ckpt.close()
  reader = checkpoint_lib.Checkpointer(tmp_path / "c", read_only=True)
  assert sorted(reader.all_steps()) == [2, 5, 6]  # best (0.9 at step 2) + last two


def test_restore_into_another_mesh(tmp_path):
  mesh8 = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  saved = _tree(mesh8, P("fsdp"))
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "c", async_save=True)
  ckpt.save(1, saved, {"count": jnp.zeros((), jnp.int32)}, {"step": 1, "stage": "stage1"},
            force=True)
  ckpt.close()
  mesh222 = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                          axis_types=(jax.sharding.AxisType.Auto,) * 3)
  target = _tree(mesh222, P("tensor", "fsdp"))
  params, opt_state, meta = checkpoint_lib.Checkpointer(tmp_path / "c").restore(
      1, target, {"count": jnp.ones((), jnp.int32)})
  assert meta == {"step": 1, "stage": "stage1"}
  assert params["w"].sharding == target["w"].sharding
  np.testing.assert_array_equal(np.asarray(params["w"]), np.asarray(saved["w"]))
  assert int(opt_state["count"]) == 0


def test_reader_ignores_unfinished_steps(tmp_path):
  directory = tmp_path / "c"
  ckpt = checkpoint_lib.Checkpointer(directory, async_save=False)
  ckpt.save(3, {"w": jnp.ones((2,))}, None, {"step": 3}, force=True)
  ckpt.close()
  # What an interrupted write leaves behind: a temporary directory of a later step.
  (directory / "7.orbax-checkpoint-tmp-1234567").mkdir()
  reader = checkpoint_lib.Checkpointer(directory, read_only=True)
  assert reader.all_steps() == [3] and reader.latest_step() == 3
  assert list(checkpoint_lib.follow(directory, poll_s=0.01, timeout_s=0.2)) == [3]


def test_restore_params_takes_the_latest_or_a_given_step(tmp_path):
  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  like = _tree(mesh, P("fsdp"))
  assert checkpoint_lib.latest_step(tmp_path / "c") is None
  try:
    checkpoint_lib.restore_params(tmp_path / "c", like)
    raise AssertionError("restored from an empty directory")
  except FileNotFoundError as e:
    assert "no finished checkpoint in" in str(e) and str(tmp_path / "c") in str(e)
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "c", keep=3, keep_best=False, async_save=False)
  for step in (1, 2):
    ckpt.save(step, jax.tree.map(lambda x, s=step: x * s, like), None, {"step": step})
  ckpt.close()
  assert checkpoint_lib.latest_step(tmp_path / "c") == 2
  params, meta, step = checkpoint_lib.restore_params(tmp_path / "c", like)
  assert step == 2 and meta == {"step": 2}
  np.testing.assert_array_equal(params["w"], 2 * np.arange(64).reshape(8, 8))
  assert params["w"].sharding.spec == P("fsdp")
  params, meta, step = checkpoint_lib.restore_params(tmp_path / "c", like, 1)
  assert step == 1 and meta == {"step": 1}
  np.testing.assert_array_equal(params["b"], np.ones(3))
