"""Per-row packing of the Episode (score_jax.rl.episode.pack_rows, `train.compact_episodes`
= "rows"): a speed setting that must not change the math.

- A hand-made Episode -> the exact packed arrays: each row keeps its own needed columns, in
  order, moved to the left, including a padding column kept because the next column holds
  a trained token; `compact_episodes` packs every part to the widest row of ALL parts.
- The column before a trained token is the one piece of the layout the step reads by
  column (its hidden state scores the token): packing that drops it (only the valid and
  trained columns) gives another log-prob; `pack_rows` gives the same.
- `compact_mode`: the config values, True (older runs) meaning "columns".
- On a real two-turn rollout of a tiny model: the Stage I and Stage II losses, metrics and
  gradients of `make_rl_step` are the same packed and unpacked, with 1 and 2 micro-batches
  and a chunked vocabulary projection; so are the sft step's. Two processes:
  tests/rl/test_compact.py.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_jax import multihost
from score_jax import train as train_lib
from score_jax.rl import episode as episode_lib
from score_jax.rl import scoring
from tests.rl.test_compact import STAGE1, STAGE2, _hand_made, _rollout_episode
from tests.rl.test_compact import assert_same_step
from tests.rl.test_rollout import _model

T, F = True, False


def test_pack_rows_by_hand():
  ep = _hand_made()
  # Row 0 needs columns 1, 2, 5, 6 (5: padding before the trained 6); row 1 needs 2, 3, 6.
  got = episode_lib.pack_rows(ep, 6)
  np.testing.assert_array_equal(got.tokens_BT, [[2, 3, 6, 7, 0, 0], [13, 14, 17, 0, 0, 0]])
  np.testing.assert_array_equal(got.valid_BT, [[T, T, F, T, F, F], [T, T, T, F, F, F]])
  np.testing.assert_array_equal(got.attempt_BT, [[0, 1, 0, 2, 0, 0], [0, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(got.sampler_logprobs_BT,
                                np.array([[-0.1, -0.2, -0.5, -0.6, 0, 0],
                                          [-1.2, -1.3, -1.6, 0, 0, 0]], np.float32))
  np.testing.assert_array_equal(got.rewards_BA, ep.rewards_BA)
  assert got.tokens_BT.dtype == np.int32 and got.valid_BT.dtype == bool
  assert got.attempt_BT.dtype == np.int32 and got.sampler_logprobs_BT.dtype == np.float32
  assert episode_lib.pack_rows(ep, 4).tokens_BT.shape == (2, 4)      # the widest row
  assert episode_lib.pack_rows(ep, 8).tokens_BT.shape == (2, 8)
  for width in (3, 9):
    with pytest.raises(ValueError, match="most columns a row needs"):
      episode_lib.pack_rows(ep, width)


def test_compact_episodes_packs_every_part_to_the_widest_row():
  ep = _hand_made()
  one_row = jax.tree.map(lambda x: x[1:], ep)           # 3 needed columns
  seen = []

  def gather(i, values):                                # one process: its own values
    seen.append((i, list(values)))
    return values

  got = episode_lib.compact_episodes([ep, one_row], "rows", 3, gather)
  assert seen == [(0, [4, 3]), (1, [3])]                # per-row needed counts
  assert [g.tokens_BT.shape for g in got] == [(2, 6), (1, 6)]      # 4 -> bucket of 3: 6
  np.testing.assert_array_equal(got[1].tokens_BT, got[0].tokens_BT[1:])
  # Another process's row needing 7 columns widens this process's batch alike.
  wide = episode_lib.compact_episodes([one_row], "rows", 1, lambda i, v: v + [7])
  assert wide[0].tokens_BT.shape == (1, 7)
  cols = episode_lib.compact_episodes([ep], "columns", 1, gather)
  np.testing.assert_array_equal(cols[0].tokens_BT, episode_lib.compact_columns(
      ep, episode_lib.needed_columns(ep).any(axis=0), 1).tokens_BT)
  with pytest.raises(ValueError, match="config.train.compact_episodes"):
    episode_lib.compact_episodes([ep], "packed", 1, gather)


def test_compact_mode_and_setting():
  for value, want in ((True, "columns"), ("true", "columns"), ("columns", "columns"),
                      ("rows", "rows"), ("Rows", "rows"), (False, None), ("false", None),
                      ("off", None), (None, None)):
    assert episode_lib.compact_mode(value) == want, value
  with pytest.raises(ValueError, match="config.train.compact_episodes='packed'"):
    episode_lib.compact_mode("packed")
  train = ml_collections.ConfigDict(dict(compact_episodes="rows", compact_bucket=64))
  assert episode_lib.compact_setting(train) == (64, "rows")
  train = ml_collections.ConfigDict(dict(compact_episodes=False, compact_bucket=64))
  assert episode_lib.compact_setting(train) == (0, None)


def test_config_values_and_older_runs(tmp_path):
  """Command-line values of the str field, and a W/config.json written when the field was a
  bool (True: "columns") read back and resumed from: a safe change."""
  import json  # pylint: disable=import-outside-toplevel
  from score_jax import config_lib, run_config  # pylint: disable=import-outside-toplevel
  base = run_config.BASE_CONFIG
  assert episode_lib.compact_setting(config_lib.load(base).train) == (64, "rows")
  for raw, want in (("false", (0, None)), ("False", (0, None)), ("True", (64, "columns")),
                    ("columns", (64, "columns"))):
    config = config_lib.load(base, [f"--config.train.compact_episodes={raw}"])
    assert episode_lib.compact_setting(config.train) == want, raw
  old = config_lib.to_plain(config_lib.load(base))
  old["train"]["compact_episodes"] = True
  (tmp_path / run_config.RUN_CONFIG).write_text(json.dumps(old))
  read, notes = run_config.load_run_config(tmp_path)
  assert read.train.compact_episodes is True and not notes
  assert episode_lib.compact_setting(read.train) == (64, "columns")
  assert run_config.is_safe("train.compact_episodes")
  log = []
  run_config.record_run_config(tmp_path, config_lib.load(base), log=log.append)  # no raise
  assert "train.compact_episodes: True -> 'rows'" in log[0]


def _trained_logprobs(graphdef, params, ep):
  logp, _ = scoring.sequence_stats(graphdef, params, jnp.asarray(ep.tokens_BT),
                                   jnp.asarray(ep.valid_BT))
  return np.asarray(logp)[np.asarray(ep.attempt_BT) > 0]


def test_packing_keeps_the_column_that_scores_each_trained_token():
  """Row 0's y2 token (column 6) is scored from column 5, padding in that row. Packing only
  the valid and trained columns moves it next to column 2 and changes its log-prob; packing
  the needed columns (`pack_rows`) keeps it: the same log-probs, in the same order."""
  _, graphdef, params = _model()
  ep = _hand_made()
  ep = ep._replace(tokens_BT=ep.tokens_BT % 7)                  # the model has 16 ids
  want = _trained_logprobs(graphdef, params, ep)
  got = _trained_logprobs(graphdef, params, episode_lib.pack_rows(ep, 4))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # The same packing without the column before a trained token (valid or trained only).
  naive_BT = np.asarray(ep.valid_BT) | (np.asarray(ep.attempt_BT) > 0)
  order = np.argsort(~naive_BT, axis=1, kind="stable")[:, :4]
  keep = np.take_along_axis(naive_BT, order, axis=1)
  naive = ep._replace(**{name: np.where(keep, np.take_along_axis(
      np.asarray(getattr(ep, name)), order, axis=1), 0).astype(getattr(ep, name).dtype)
                         for name in ("tokens_BT", "valid_BT", "attempt_BT")})
  wrong = _trained_logprobs(graphdef, params, naive)
  assert abs(wrong[1] - want[1]) > 1e-3            # row 0's y2 token: another log-prob
  np.testing.assert_allclose(wrong[[0, 2]], want[[0, 2]], rtol=1e-6, atol=1e-6)


# --- a real rollout -------------------------------------------------------------------------

def _packed(ep, bucket):
  parts = [(ep, multihost.RowSplit.everything(ep.tokens_BT.shape[0]))]
  return train_lib.global_batch(parts, None, bucket, "rows")


def test_rollout_rows_are_packed_narrower_than_columns():
  ep = _rollout_episode()
  need = episode_lib.needed_columns(ep)
  longest, kept = int(need.sum(axis=1).max()), int(need.any(axis=0).sum())
  assert longest < kept < 40, (longest, kept)
  small = _packed(ep, 1)
  assert small.tokens_BT.shape == (8, longest)
  assert _packed(ep, 4).tokens_BT.shape == (8, -(-longest // 4) * 4)
  for name in ("valid_BT", "attempt_BT"):                   # per row: the same counts
    np.testing.assert_array_equal(np.asarray(getattr(small, name)).sum(axis=1),
                                  np.asarray(getattr(ep, name)).sum(axis=1), err_msg=name)
  np.testing.assert_array_equal(np.asarray(small.tokens_BT)[np.asarray(small.valid_BT)],
                                ep.tokens_BT[ep.valid_BT])  # every valid token, in order
  # two parts: one width, the rows stacked
  split = multihost.RowSplit.everything(8)
  batch = train_lib.global_batch([(ep, split), (ep, split)], None, 4, "rows")
  assert batch.tokens_BT.shape == (16, -(-longest // 4) * 4)


@pytest.mark.parametrize("cfg,micro,chunk,bucket", [
    (STAGE1, 1, 0, 1), (STAGE1, 2, 3, 4), (STAGE2, 1, 0, 4), (STAGE2, 2, 3, 1)])
def test_step_is_the_same_with_packed_rows(cfg, micro, chunk, bucket):
  ep = _rollout_episode()
  assert_same_step(cfg, ep, _packed(ep, bucket), micro, chunk)


def test_sft_step_is_the_same_with_packed_rows():
  """The sft / STaR / Pair-SFT step (`make_sft_step`) reads the same batch: packed rows,
  2 micro-batches and a chunked projection give the same loss, nll_t<t> and gradients."""
  from score_jax.rl import step as step_lib  # pylint: disable=import-outside-toplevel
  from tests.episodes import KEEP_GRADS  # pylint: disable=import-outside-toplevel
  ep = _rollout_episode()
  _, graphdef, params = _model()
  step = step_lib.make_sft_step(graphdef, KEEP_GRADS, 2, logit_chunk=3)
  outs = []
  for batch in (ep, _packed(ep, 4)):
    _, grads, metrics = step(jax.tree.map(jnp.copy, params), KEEP_GRADS.init(params), None,
                             jax.tree.map(jnp.asarray, batch))
    outs.append((jax.device_get(metrics), jax.device_get(grads)))
  (want_m, want_g), (got_m, got_g) = outs
  assert float(want_m["loss"]) > 0.1 and set(got_m) == set(want_m)
  for key, want in want_m.items():
    np.testing.assert_allclose(got_m[key], want, rtol=2e-5, atol=1e-6, err_msg=key)
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max() + 1e-10)
