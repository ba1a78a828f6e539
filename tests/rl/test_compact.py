"""Column compaction of the Episode (score_jax.rl.episode.compact_columns, train.global_batch):
a speed setting that must not change the math.

- A hand-made Episode with known padding -> the exact compacted arrays, including a column
  that is padding in every row but is kept because the next column holds a trained token
  (its hidden state predicts that token).
- `compact_width`: kept columns rounded up to the bucket, at most T.
- On a real two-turn rollout of a tiny model: the Stage I and Stage II losses, metrics and
  gradients of `make_rl_step` are the same with and without compaction, with 1 and 2
  micro-batches and a chunked vocabulary projection; `train.global_batch` gives the
  bucketed number of columns.
- Two processes: both keep the same columns, and both pack rows ("rows", test_pack.py) to
  the same width, the widest row of either process.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import multihost
from score_jax import sampler as sampler_lib
from score_jax import train as train_lib
from score_jax.rl import episode as episode_lib
from score_jax.rl import losses
from score_jax.rl import rollout as rollout_lib
from score_jax.rl import scoring
from score_jax.rl import step as step_lib
from score_jax.text import chat as chat_lib
from score_jax.text.tokenizer import CharTokenizer
from tests.episodes import KEEP_GRADS
from tests.rl.test_rollout import PROBLEMS, _FirstLetterTask, _model

T, F = True, False


def _hand_made():
  """B = 2, T = 8. Column 0, 4, 7: padding everywhere; column 5: padding everywhere but
  right before row 0's trained token in column 6."""
  tokens = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [11, 12, 13, 14, 15, 16, 17, 18]], np.int32)
  valid = np.array([[F, T, T, F, F, F, T, F], [F, F, T, T, F, F, T, F]])
  attempt = np.array([[0, 0, 1, 0, 0, 0, 2, 0], [0, 0, 0, 1, 0, 0, 0, 0]], np.int32)
  rewards = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  logp = np.array([[0.0, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7],
                   [-1.0, -1.1, -1.2, -1.3, -1.4, -1.5, -1.6, -1.7]], np.float32)
  return episode_lib.Episode(tokens, valid, attempt, rewards, logp)


def test_needed_columns_by_hand():
  need = episode_lib.needed_columns(_hand_made())
  # Row 0: valid 1, 2, 6; trained 2, 6 -> also 5 (1 is valid). Row 1: valid 2, 3, 6;
  # trained 3 -> 2 (valid already).
  np.testing.assert_array_equal(need, [[F, T, T, F, F, T, T, F], [F, F, T, T, F, F, T, F]])
  np.testing.assert_array_equal(need.any(axis=0), [F, T, T, T, F, T, T, F])


def test_compact_columns_by_hand():
  ep = _hand_made()
  keep = episode_lib.needed_columns(ep).any(axis=0)             # columns 1, 2, 3, 5, 6
  got = episode_lib.compact_columns(ep, keep, bucket=3)          # 5 -> 6 columns
  np.testing.assert_array_equal(got.tokens_BT, [[2, 3, 4, 6, 7, 0], [12, 13, 14, 16, 17, 0]])
  np.testing.assert_array_equal(got.valid_BT, [[T, T, F, F, T, F], [F, T, T, F, T, F]])
  np.testing.assert_array_equal(got.attempt_BT, [[0, 1, 0, 0, 2, 0], [0, 0, 1, 0, 0, 0]])
  np.testing.assert_array_equal(got.sampler_logprobs_BT,
                                np.array([[-0.1, -0.2, -0.3, -0.5, -0.6, 0.0],
                                          [-1.1, -1.2, -1.3, -1.5, -1.6, 0.0]], np.float32))
  np.testing.assert_array_equal(got.rewards_BA, ep.rewards_BA)
  assert got.tokens_BT.dtype == np.int32 and got.valid_BT.dtype == bool
  assert got.attempt_BT.dtype == np.int32 and got.sampler_logprobs_BT.dtype == np.float32
  # bucket 1: exactly the kept columns; a bucket past T: T columns (nothing to gain).
  assert episode_lib.compact_columns(ep, keep, 1).tokens_BT.shape == (2, 5)
  assert episode_lib.compact_columns(ep, keep, 64).tokens_BT.shape == (2, 8)
  with pytest.raises(ValueError, match="keep_T has shape"):
    episode_lib.compact_columns(ep, keep[:-1], 1)


def test_compact_width():
  assert episode_lib.compact_width(5, 8, 3) == 6
  assert episode_lib.compact_width(300, 416, 64) == 320
  assert episode_lib.compact_width(320, 416, 64) == 320
  assert episode_lib.compact_width(410, 416, 64) == 416      # never wider than the layout
  assert episode_lib.compact_width(0, 416, 64) == 64
  with pytest.raises(ValueError, match="config.train.compact_bucket"):
    episode_lib.compact_width(5, 8, 0)


def test_trained_logprobs_survive_an_all_padding_predecessor():
  """Row 0's y2 token (column 6) is predicted from column 5, padding in every row: kept,
  its log-prob is the same; the columns' model outputs move with them."""
  _, graphdef, params = _model()
  ep = _hand_made()
  ep = ep._replace(tokens_BT=ep.tokens_BT % 7)                  # the model has 16 ids
  keep = episode_lib.needed_columns(ep).any(axis=0)
  small = episode_lib.compact_columns(ep, keep, 1)
  want, _ = scoring.sequence_stats(graphdef, params, jnp.asarray(ep.tokens_BT),
                                   jnp.asarray(ep.valid_BT))
  got, _ = scoring.sequence_stats(graphdef, params, jnp.asarray(small.tokens_BT),
                                  jnp.asarray(small.valid_BT))
  want = np.asarray(want)[:, np.flatnonzero(keep)]
  trained = small.attempt_BT > 0
  np.testing.assert_allclose(np.asarray(got)[trained], want[trained], rtol=1e-6, atol=1e-6)


# --- a real rollout -------------------------------------------------------------------------

# Long budgets for short prompts and answers: many columns are padding in every row.
LENGTHS = rollout_lib.Lengths(prompt=10, turn1=10, extra=10, turn2=10)


@functools.lru_cache(maxsize=None)
def _rollout_episode() -> episode_lib.Episode:
  _, graphdef, params = _model()
  chat = chat_lib.chat_format("plain", tokenizer=CharTokenizer("ab\n"))
  two_turn = rollout_lib.TwoTurnSampler(graphdef, CharTokenizer("ab\n"), chat,
                                        _FirstLetterTask(), LENGTHS, model_vocab=16)
  result = two_turn.rollout(params, params, PROBLEMS, method=sampler_lib.Temperature(1.0),
                            rng=jax.random.key(5))
  return result.episode


def _compacted(ep, bucket):
  parts = [(ep, multihost.RowSplit.everything(ep.tokens_BT.shape[0]))]
  return train_lib.global_batch(parts, None, compact_bucket=bucket)


def test_rollout_episode_has_padding_to_drop():
  ep = _rollout_episode()
  kept = int(episode_lib.needed_columns(ep).any(axis=0).sum())
  assert ep.tokens_BT.shape == (8, 40) and kept < 34, kept
  assert _compacted(ep, 1).tokens_BT.shape == (8, kept)
  assert _compacted(ep, 4).tokens_BT.shape == (8, -(-kept // 4) * 4)
  # the trainer's path: two parts, one bucketed width, the rows stacked
  split = multihost.RowSplit.everything(8)
  batch = train_lib.global_batch([(ep, split), (ep, split)], None, compact_bucket=4)
  assert batch.tokens_BT.shape == (16, -(-kept // 4) * 4)
  assert int(np.sum(batch.valid_BT)) == 2 * int(np.sum(ep.valid_BT))
  assert int(np.sum(batch.attempt_BT == 2)) == 2 * int(np.sum(ep.attempt_BT == 2))
  assert train_lib.global_batch([(ep, split)], None).tokens_BT.shape == (8, 40)   # off


def _step(cfg, episode, micro, chunk):
  _, graphdef, params = _model()
  ref = jax.tree.map(lambda x: x * 1.03, params)        # the reference is not the policy
  step = step_lib.make_rl_step(graphdef, KEEP_GRADS, cfg, micro, logit_chunk=chunk)
  _, grads, metrics = step(jax.tree.map(jnp.copy, params), KEEP_GRADS.init(params), ref,
                           jax.tree.map(jnp.asarray, episode))
  return jax.device_get(metrics), jax.device_get(grads)


STAGE1 = losses.LossConfig(stage="stage1", beta1=0.1, beta2=0.3, baseline="loo",
                           samples_per_prompt=2, kl_mode="loss", kl_estimator="k3")
STAGE2 = losses.LossConfig(stage="stage2", alpha=10.0, beta1=0.3, baseline="loo",
                           samples_per_prompt=2, kl_mode="reward", kl_estimator="k1")


@pytest.mark.parametrize("cfg,micro,chunk,bucket", [
    (STAGE1, 1, 0, 1), (STAGE1, 2, 0, 4), (STAGE2, 1, 0, 4), (STAGE2, 2, 3, 1)])
def test_step_is_the_same_with_compaction(cfg, micro, chunk, bucket):
  ep = _rollout_episode()
  assert_same_step(cfg, ep, _compacted(ep, bucket), micro, chunk)


def assert_same_step(cfg, ep, small, micro, chunk):
  """`small` (ep without padding) is narrower and gives the step's metrics and gradients."""
  assert small.tokens_BT.shape[1] < ep.tokens_BT.shape[1]
  want_m, want_g = _step(cfg, ep, micro, chunk)
  got_m, got_g = _step(cfg, small, micro, chunk)
  assert abs(float(want_m["loss"])) > 1e-4 and float(want_m["grad_norm"]) > 1e-4
  assert set(got_m) == set(want_m)
  for key, want in want_m.items():
    np.testing.assert_allclose(got_m[key], want, rtol=2e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max() + 1e-10)


# --- two processes --------------------------------------------------------------------------

def _staircase() -> episode_lib.Episode:
  """B = 8, T = 12: row r holds columns r and r + 1 (the second trained); 9-11 are padding.
  Rows 0-3 (process 0 on 2 x 4 devices) need columns 0-4, rows 4-7 need 4-8."""
  cols_T = np.arange(12)
  valid = np.stack([(cols_T == r) | (cols_T == r + 1) for r in range(8)])
  attempt = np.stack([np.where(cols_T == r + 1, 1, 0) for r in range(8)]).astype(np.int32)
  tokens = (np.arange(8 * 12).reshape(8, 12) % 13).astype(np.int32)
  logp = -np.arange(8 * 12, dtype=np.float32).reshape(8, 12) / 100
  return episode_lib.Episode(tokens, valid, attempt, np.zeros((8, 2), np.float32), logp)


def _ragged() -> episode_lib.Episode:
  """The staircase, but rows 4-7 (process 1) hold 4 columns, r .. r + 3: packed per row,
  process 0's rows need 2 columns and process 1's need 4."""
  ep = _staircase()
  cols_T = np.arange(12)
  valid = np.stack([(cols_T >= r) & (cols_T <= r + (1 if r < 4 else 3)) for r in range(8)])
  return ep._replace(valid_BT=valid)


def worker_compact(argv: list[str]) -> None:
  """One process of `test_two_processes_keep_the_same_columns`: its rows, compacted
  ("columns", on `_staircase`) and packed ("rows", on `_ragged`)."""
  import json  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from score_jax import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  multihost.maybe_initialize_distributed(ml_collections.ConfigDict({"distributed": True}))
  mesh = mesh_lib.make_mesh(fsdp=-1)
  split = multihost.row_split(mesh, 8)
  for mode, ep, bucket in (("columns", _staircase(), 2), ("rows", _ragged(), 1)):
    local = jax.tree.map(lambda x, s=split: x[s.rows], ep)
    batch = train_lib.global_batch([(local, split)], mesh, bucket, mode)
    got = {"rows": split.rows.tolist(), "shape": list(batch.tokens_BT.shape)}
    for name in ("tokens_BT", "valid_BT", "attempt_BT", "sampler_logprobs_BT"):
      got[name] = multihost.local_rows(getattr(batch, name), split).tolist()
    out = pathlib.Path(argv[0]) / f"{mode}.{jax.process_index()}.json"
    out.write_text(json.dumps(got))


def test_two_processes_keep_the_same_columns(tmp_path):
  """Each process's rows need other columns; the kept set is gathered, so both processes
  build the same 10 columns (9 needed, bucket 2), those of the one-process compaction.
  Packed per row, both processes pack to the widest row of either (4 columns: process 0's
  rows need 2), as one process does."""
  import json  # pylint: disable=import-outside-toplevel
  from tests.test_multiprocess import launch  # pylint: disable=import-outside-toplevel
  wants = {"columns": _compacted(_staircase(), 2),
           "rows": train_lib.global_batch([(_ragged(), multihost.RowSplit.everything(8))],
                                          None, 1, "rows")}
  assert wants["columns"].tokens_BT.shape == (8, 10)
  assert wants["rows"].tokens_BT.shape == (8, 4)
  launch("compact", [str(tmp_path)], processes=2, devices=4, log_dir=tmp_path, timeout=300,
         module="tests.rl.test_compact")
  for (mode, want), p in ((m, p) for m in wants.items() for p in range(2)):
    got = json.loads((tmp_path / f"{mode}.{p}.json").read_text())
    rows = got["rows"]
    assert got["shape"] == list(want.tokens_BT.shape) and len(rows) == 4, mode
    for name in ("tokens_BT", "valid_BT", "attempt_BT", "sampler_logprobs_BT"):
      np.testing.assert_array_equal(np.asarray(got[name]), getattr(want, name)[rows],
                                    err_msg=f"{mode} {name}")


if __name__ == "__main__":
  import sys
  {"compact": worker_compact}[sys.argv[1]](sys.argv[2:])
