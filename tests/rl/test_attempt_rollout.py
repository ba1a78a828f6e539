"""Rollouts and runs of A > 2 attempts (score_jax.rl.episode, score_jax.rl.rollout, train).

- `layout` of three attempts on literal segments; `Lengths` columns.
- A 3-attempt rollout on a tiny random model: masks, extra chunks and rewards per attempt,
  the sampler's log-probs equal a forward pass over the Episode (the trainer's view), its
  first two attempts are the 2-attempt rollout's (same rng), continuing the cache samples
  what re-reading the context samples, and `given` first attempts are context only.
- The two-attempt baselines refuse more attempts; `plan.validate` checks num_attempts.
- The tiny config trains (sft, Stage I, Stage II) and evaluates with 3 attempts end to end.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import checkpoint as checkpoint_lib
from score_jax import config_lib
from score_jax import evaluate
from score_jax import metrics as metrics_lib
from score_jax import sampler as sampler_lib
from score_jax import train
from score_jax.model import transformer as model_lib
from score_jax.rl import baselines
from score_jax.rl import episode as episode_lib
from score_jax.rl import plan as plan_lib
from score_jax.rl import rollout as rollout_lib
from score_jax.text import chat as chat_lib
from score_jax.text.tokenizer import CharTokenizer
from tests.conftest import REPO_ROOT
from tests.rl.test_rollout import PROBLEMS, SMALL_LENGTHS, _FirstLetterTask, _model

T, F = True, False


def test_layout_of_three_attempts():
  prompt = (np.array([[0, 11], [12, 13]], np.int32), np.array([[F, T], [T, T]]))
  y = [(np.array([[21, 3], [22, 0]], np.int32), np.array([[T, T], [T, F]])),
       (np.array([[41], [42]], np.int32), np.array([[T], [T]])),
       (np.array([[51, 3], [0, 0]], np.int32), np.array([[T, T], [F, F]]))]
  extra = (np.array([[31], [31]], np.int32), np.array([[T], [T]]))
  ep = episode_lib.layout(prompt, y, [extra, extra], [[1, 0], [0, 1], [1, 1]],
                          [np.full((2, 2), -1.0), None, np.full((2, 2), -3.0)])
  #                       x      y1     e   y2  e   y3
  np.testing.assert_array_equal(ep.tokens_BT, [[0, 11, 21, 3, 31, 41, 31, 51, 3],
                                               [12, 13, 22, 0, 31, 42, 31, 0, 0]])
  np.testing.assert_array_equal(ep.attempt_BT, [[0, 0, 1, 1, 0, 2, 0, 3, 3],
                                                [0, 0, 1, 0, 0, 2, 0, 0, 0]])
  np.testing.assert_array_equal(ep.rewards_BA, [[1, 0, 1], [0, 1, 1]])
  np.testing.assert_array_equal(ep.sampler_logprobs_BT[0], [0, 0, -1, -1, 0, 0, 0, -3, -3])
  assert ep.num_attempts == 3 and ep.rewards_BA.dtype == np.float32
  np.testing.assert_array_equal(ep.mask(3)[0], [F] * 7 + [T, T])
  np.testing.assert_array_equal(ep.without_attempt(2).attempt_BT[0], [0, 0, 1, 1, 0, 0, 0, 3, 3])
  np.testing.assert_array_equal(ep.train_only(1, [F, T]).attempt_BT,
                                [[0] * 9, [0, 0, 1, 0, 0, 0, 0, 0, 0]])
  lengths = episode_lib.Lengths(prompt=2, turn1=2, extra=1, turn2=1, attempts=3)
  assert lengths.total == 8 and lengths.attempt_cols(3) == slice(7, 8)
  assert [lengths.attempt_start(t) for t in (1, 2, 3)] == [2, 5, 7]
  with pytest.raises(ValueError, match="attempts"):
    episode_lib.Lengths(prompt=2, turn1=2, extra=1, turn2=1, attempts=1)


def _sampler(attempts):
  _, graphdef, _ = _model()
  tokenizer = CharTokenizer("ab\n")
  chat = chat_lib.chat_format("plain", tokenizer=tokenizer)
  lengths = episode_lib.Lengths(prompt=SMALL_LENGTHS.prompt, turn1=SMALL_LENGTHS.turn1,
                                extra=SMALL_LENGTHS.extra, turn2=SMALL_LENGTHS.turn2,
                                attempts=attempts)
  return rollout_lib.MultiTurnSampler(graphdef, tokenizer, chat, _FirstLetterTask(), lengths,
                                      model_vocab=16)


@functools.lru_cache(maxsize=None)
def _rollout(attempts, separate=False, given=None):
  _, _, params = _model()
  params2 = jax.tree.map(lambda x: x, params) if separate else params
  return _sampler(attempts).rollout(params, params2, PROBLEMS,
                                    method=sampler_lib.Temperature(1.0), rng=jax.random.key(3),
                                    given=None if given is None else [list(given)])


def _forward_logp(ep):
  mesh, graphdef, params = _model()
  with jax.set_mesh(mesh):
    logits_BTV, _ = jax.jit(model_lib.forward, static_argnums=0)(
        graphdef, params, jnp.asarray(ep.tokens_BT), jnp.asarray(ep.valid_BT))
  logp_BTV = np.asarray(jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1))
  return np.take_along_axis(logp_BTV[:, :-1], ep.tokens_BT[:, 1:, None], -1)[..., 0]


def test_three_attempt_rollout():
  result, two = _rollout(3), _rollout(2)
  ep, lengths = result.episode, _sampler(3).lengths
  assert ep.tokens_BT.shape == (8, lengths.total) and ep.rewards_BA.shape == (8, 3)
  task, stops = _FirstLetterTask(), (2, 3)
  for t in (1, 2, 3):
    cols = lengths.attempt_cols(t)
    np.testing.assert_array_equal(ep.mask(t)[:, cols], ep.valid_BT[:, cols])
    assert ep.mask(t).sum() == ep.mask(t)[:, cols].sum()            # nothing outside
    np.testing.assert_array_equal(ep.reward(t), task.rewards(PROBLEMS, result.texts[t - 1]))
    if t > 1:   # end_of_turn exactly where the attempt before did not stop, then "\n\nb\n\n"
      prev = lengths.attempt_cols(t - 1)
      last_B = ep.tokens_BT[np.arange(8), prev.start + ep.valid_BT[:, prev].sum(1) - 1]
      extra = slice(prev.stop, cols.start)
      np.testing.assert_array_equal(ep.valid_BT[:, extra][:, 0], ~np.isin(last_B, stops))
      np.testing.assert_array_equal(ep.tokens_BT[:, extra][:, 1:], [[6, 6, 5, 6, 6]] * 8)
  # The trainer's view: a forward pass gives the sampler's log-probs of every attempt.
  attempts = ep.trained_BT
  np.testing.assert_allclose(np.where(attempts[:, 1:], _forward_logp(ep), 0.0),
                             ep.sampler_logprobs_BT[:, 1:], rtol=1e-4, atol=1e-4)
  # The first two attempts are those of the 2-attempt rollout (same rng).
  n = two.episode.tokens_BT.shape[1]
  np.testing.assert_array_equal(ep.tokens_BT[:, :n], two.episode.tokens_BT)
  np.testing.assert_array_equal(ep.attempt_BT[:, :n], two.episode.attempt_BT)
  assert result.texts[:2] == two.texts and (result.y1, result.y2) == (two.y1, two.y2)
  # Another policy for attempts 2..A: attempt 2 re-reads the context, 3 continues its cache.
  reread = _rollout(3, separate=True).episode
  for field in ("tokens_BT", "valid_BT", "attempt_BT", "rewards_BA"):
    np.testing.assert_array_equal(getattr(reread, field), getattr(ep, field), err_msg=field)


def test_given_first_attempts_are_context_only():
  given = ("a", "b", "ab", "ba", "", "bb", "a", "b")
  result = _rollout(3, given=given)
  ep = result.episode
  assert not ep.mask(1).any() and ep.mask(2).any() and ep.mask(3).any()
  assert result.texts[0] == list(given)
  np.testing.assert_array_equal(ep.reward(1), _FirstLetterTask().rewards(PROBLEMS, given))
  cols = _sampler(3).lengths.attempt_cols(1)
  assert _sampler(3).decode(ep.tokens_BT[:, cols], ep.valid_BT[:, cols]) == list(given)
  assert (ep.sampler_logprobs_BT[:, cols] == 0).all()
  np.testing.assert_allclose(np.where(ep.trained_BT[:, 1:], _forward_logp(ep), 0.0),
                             ep.sampler_logprobs_BT[:, 1:], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="at most 2"):
    _sampler(3).rollout(None, None, PROBLEMS, method=sampler_lib.Greedy(),
                        rng=jax.random.key(0), given=[list(given)] * 3)


def test_two_attempt_baselines_refuse_more_attempts():
  result = _rollout(3)
  with pytest.raises(ValueError, match="num_attempts=2"):
    baselines.star_episode(result)
  with pytest.raises(ValueError, match="num_attempts=2"):
    baselines.sample_rows(result)
  with pytest.raises(ValueError, match="2 attempt lists for a sampler of 3"):
    rollout_lib.demonstration_episode(_sampler(3), PROBLEMS[:1], ["a"], ["b"])
  demo = rollout_lib.demonstration_episode(_sampler(3), PROBLEMS[:2], ["a", "b"], ["b", "a"],
                                           ["a", "a"])
  np.testing.assert_array_equal(demo.rewards_BA, [[1, 0, 1], [0, 1, 1]])   # answer "a"


def _tiny(*overrides):
  return config_lib.load(REPO_ROOT / "configs" / "tiny.py",
                         ["--config.task.eval_limit=16", "--config.eval.batch_size=16",
                          *overrides])


def test_plan_validates_num_attempts():
  for bad in (1, 0, 2.5):
    with pytest.raises(ValueError, match="num_attempts"):
      plan_lib.validate(_tiny(f"--config.rollout.num_attempts={bad}"))
  with pytest.raises(ValueError, match="two-attempt baselines"):
    plan_lib.validate(_tiny("--config.rollout.num_attempts=3", "--config.plan.stages=star",
                            "--config.plan.star_steps=2"))
  plan_lib.validate(_tiny("--config.rollout.num_attempts=3"))


def test_tiny_config_trains_and_evaluates_three_attempts(tmp_path):
  # Validated every 4 steps, checkpoints ranked by the third attempt's accuracy.
  config = _tiny("--config.rollout.num_attempts=3", "--config.eval.validation_every=4",
                 "--config.eval.validation_limit=8", "--config.checkpoint.best_metric=acc_t3")
  trainer = train.Trainer(config, tmp_path)
  trainer.run()
  validated = metrics_lib.read_jsonl(tmp_path / "validation" / "metrics.jsonl")
  assert [r["step"] for r in validated] == [4, 8]
  assert all(set(metrics_lib.keys(3)) <= set(r) for r in validated)
  step, why = checkpoint_lib.select_step(tmp_path / "checkpoints", "best", "acc_t3")
  assert step in (4, 8) and "acc_t3" in why, why
  rows = metrics_lib.read_jsonl(tmp_path / "train" / "metrics.jsonl")
  assert [r["stage"] for r in rows] == ["sft"] * 4 + ["stage1"] * 2 + ["stage2"] * 2
  assert {"nll_t1", "nll_t2", "nll_t3"} <= set(rows[0])
  for row in rows[4:]:
    assert {"reward_t3", "len_t3", "kl_t3", "entropy_t3", "pg_loss_t3", "tokens_t3",
            "shaped_reward_t3", "delta_t2_t3", "ever_correct"} <= set(row), set(row)
    assert np.isfinite(row["loss"])
  lines = evaluate.run(config, tmp_path, once=True, checkpoint="best")
  assert len(lines) == 1
  line = lines[0]
  for key in metrics_lib.keys(3):
    assert key in line, key
  assert line["delta_t2_t3"] == pytest.approx(line["delta_i2c_t2_t3"] - line["delta_c2i_t2_t3"])
  assert line["acc_t3"] == pytest.approx(line["acc_t1"] + line["delta"] + line["delta_t2_t3"])
