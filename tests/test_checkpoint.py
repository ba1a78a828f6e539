"""Orbax checkpoints: retention (last K + best by validation metric), restore into another
mesh's shardings, readers that never see a half-written step, and steps that verify
themselves: a flipped byte or a garbage step directory is reported with its path and the
previous good step is used; a directory that cannot be written fails at once."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from score_jax import checkpoint as checkpoint_lib
from score_jax import digest as digest_lib


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


def _read_unverified(item_dir: pathlib.Path, restore_args) -> list[np.ndarray]:
  """The arrays of a saved item as a plain Orbax read gives them (no digest check)."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    return jax.tree.leaves(checkpointer.restore(item_dir, restore_args=restore_args))


def flip_array_bytes(step_dir: pathlib.Path, item: str = "params", tries: int = 48
                     ) -> pathlib.Path:
  """Flips 4 bytes of an array data file Orbax wrote for `item` of a step (its OCDBT data
  files, `<item>/**/d/*`) where an unverified read still succeeds with changed values:
  silent rot, what a restore without digests would use. Tries the files largest first,
  `tries` offsets spread over each, from the middle out; returns the file it changed."""
  item_dir = pathlib.Path(step_dir) / item
  files = sorted((p for p in item_dir.rglob("*") if p.is_file() and p.parent.name == "d"),
                 key=lambda p: -p.stat().st_size)
  assert files, f"no array data files under {item_dir}"
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(item_dir).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  before = _read_unverified(item_dir, restore_args)
  for path in files:
    original = path.read_bytes()
    spots = sorted((len(original) * (2 * k + 1) // (2 * tries) for k in range(tries)),
                   key=lambda offset: abs(offset - len(original) // 2))
    for offset in spots:
      data = bytearray(original)
      data[offset:offset + 4] = bytes(b ^ 0xFF for b in data[offset:offset + 4])
      path.write_bytes(bytes(data))
      try:
        after = _read_unverified(item_dir, restore_args)
      except Exception:  # pylint: disable=broad-except
        continue
      if any(not np.array_equal(a, b, equal_nan=True) for a, b in zip(before, after)):
        return path
    path.write_bytes(original)
  raise AssertionError(f"no 4-byte flip in {item_dir} changes values silently")


def _random_tree(scale: float = 1.0):
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(64, 128)).astype(np.float32) * scale),
          "b": jnp.ones((3,), jnp.float32) * scale}


def _two_steps(directory):
  ckpt = checkpoint_lib.Checkpointer(directory, keep=5, keep_best=False, async_save=False)
  for step in (1, 2):
    ckpt.save(step, _random_tree(step), None, {"step": step}, force=True)
  ckpt.close()


def test_a_flipped_byte_is_detected_and_the_previous_step_is_used(tmp_path, capsys):
  _two_steps(tmp_path / "c")
  flip_array_bytes(tmp_path / "c" / "2")
  like = _random_tree()
  params, meta, step = checkpoint_lib.restore_params(tmp_path / "c", like)
  assert step == 1 and meta == {"step": 1}
  np.testing.assert_array_equal(params["w"], np.asarray(_random_tree(1)["w"]))
  err = capsys.readouterr().err
  assert f"checkpoint step 2 at {tmp_path / 'c' / '2'}" in err
  with pytest.raises(checkpoint_lib.CorruptCheckpointError, match=str(tmp_path / "c" / "2")):
    checkpoint_lib.restore_params(tmp_path / "c", like, 2)    # never used, even when asked


def test_a_garbage_step_directory_is_skipped(tmp_path, capsys):
  _two_steps(tmp_path / "c")
  garbage = tmp_path / "c" / "3"
  garbage.mkdir()
  (garbage / "params").write_text("not a checkpoint")
  assert checkpoint_lib.select_step(tmp_path / "c", "latest")[0] == 3
  assert [s for s, _ in checkpoint_lib.candidates(tmp_path / "c", "latest")] == [3, 2, 1]
  _, meta, step = checkpoint_lib.restore_params(tmp_path / "c", _random_tree())
  assert step == 2 and meta == {"step": 2}
  assert f"checkpoint step 3 at {garbage} cannot be read" in capsys.readouterr().err


def test_no_good_step_is_a_clear_error(tmp_path):
  _two_steps(tmp_path / "c")
  for step in (1, 2):
    flip_array_bytes(tmp_path / "c" / str(step))
  with pytest.raises(checkpoint_lib.CorruptCheckpointError,
                     match=f"no good checkpoint in {tmp_path / 'c'}: .*step 2.*step 1"):
    checkpoint_lib.restore_params(tmp_path / "c", _random_tree())


def test_the_digest_is_checked_in_the_saved_dtype_then_cast(tmp_path):
  _two_steps(tmp_path / "c")
  like = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _random_tree())
  params, _, step = checkpoint_lib.restore_params(tmp_path / "c", like)
  assert step == 2 and params["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(params["w"], np.asarray(_random_tree(2)["w"]).astype(
      jnp.bfloat16))


def test_the_digest_does_not_depend_on_the_sharding():
  x = np.random.default_rng(1).normal(size=(16, 24)).astype(np.float32)
  mesh8 = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  mesh222 = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                          axis_types=(jax.sharding.AxisType.Auto,) * 3)
  a = digest_lib.record({"w": jax.device_put(x, NamedSharding(mesh8, P("fsdp")))})
  b = digest_lib.record({"w": jax.device_put(x, NamedSharding(mesh222, P("tensor", "fsdp")))})
  assert a == b == digest_lib.record({"w": x})
  y = x.copy()
  y[[0, 1]] = y[[1, 0]]                                   # same values, moved
  assert digest_lib.mismatches({"w": y}, a) and not digest_lib.mismatches({"w": x}, a)


def test_a_step_without_digests_restores_with_a_warning(tmp_path, capsys):
  _two_steps(tmp_path / "c")
  import shutil
  shutil.rmtree(tmp_path / "c" / "2" / "digest")          # as written before digests
  _, _, step = checkpoint_lib.restore_params(tmp_path / "c", _random_tree())
  assert step == 2 and "has no digest" in capsys.readouterr().err


def test_an_unwritable_directory_fails_at_once(tmp_path):
  (tmp_path / "c").write_text("a file where the directory should be")
  with pytest.raises(checkpoint_lib.CheckpointSaveError, match=f"{tmp_path / 'c'} is not "
                                                               f"writable"):
    checkpoint_lib.Checkpointer(tmp_path / "c")
