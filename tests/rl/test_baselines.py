"""Tests of the supervised baselines' training data (score_jax.rl.baselines).

On a hand-built RolloutResult of four sorting traces, one of each outcome
(wrong->wrong, wrong->right, right->wrong, right->right):

- `star_episode` trains only the y2 tokens of the traces that end right (with
  include_right_right=False only wrong->right), never a y1 token, and leaves the tokens,
  rewards and log-probs as they were;
- `pair_sft_episode` replaces each second attempt with the task's correct answer and trains
  it only where the first attempt was wrong.
"""

import numpy as np

from score_jax.rl import baselines
from score_jax.rl import episode as episode_lib
from score_jax.rl import rollout as rollout_lib
from score_jax.tasks import base
from score_jax.tasks import sorting
from score_jax.text import chat as chat_lib
from score_jax.text.tokenizer import CharTokenizer

T, F = True, False
# CharTokenizer over SortingTask.alphabet(): <pad>=0 <bos>=1 <eos>=2 <eot>=3, a=4 b=5 c=6.
PAD, EOT = 0, 3
P, T1, I, T2 = 12, 4, 19, 4                     # the turn-2 text takes 18 tokens
Y1, Y2 = slice(P, P + T1), slice(P + T1 + I, P + T1 + I + T2)

PROBLEMS = [base.Problem("p0", "sort: ba", "ab"),
            base.Problem("p1", "sort: cba", "abc"),
            base.Problem("p2", "sort: ca", "ac"),
            base.Problem("p3", "sort: bb", "bb")]
Y1_TEXTS = ["ba", "acb", "ac", "bb"]            # wrong, wrong, right, right
Y2_TEXTS = ["ba", "abc", "ca", "bb"]            # wrong, right, wrong, right


def _two_turn():
  task = sorting.SortingTask()
  tokenizer = CharTokenizer(task.alphabet())
  chat = chat_lib.chat_format("plain", tokenizer=tokenizer)
  return rollout_lib.TwoTurnSampler(None, tokenizer, chat, task,
                                    rollout_lib.Lengths(prompt=P, turn1=T1, extra=I, turn2=T2))


def _result():
  """The four traces as a RolloutResult, with made-up sampler log-probs on the attempts."""
  ep = rollout_lib.demonstration_episode(_two_turn(), PROBLEMS, Y1_TEXTS, Y2_TEXTS)
  attempts = ep.turn1_mask_BT | ep.turn2_mask_BT
  ep = ep._replace(sampler_logprobs_BT=np.where(attempts, -0.75, 0.0).astype(np.float32))
  return rollout_lib.RolloutResult(ep, list(PROBLEMS), list(Y1_TEXTS), list(Y2_TEXTS), 0)


def test_hand_built_result():
  ep = _result().episode
  np.testing.assert_array_equal(ep.r1_B, [0, 0, 1, 1])
  np.testing.assert_array_equal(ep.r2_B, [0, 1, 0, 1])
  np.testing.assert_array_equal(ep.tokens_BT[:, Y1], [[5, 4, EOT, PAD],     # "ba"
                                                      [4, 6, 5, EOT],       # "acb"
                                                      [4, 6, EOT, PAD],     # "ac"
                                                      [5, 5, EOT, PAD]])    # "bb"
  np.testing.assert_array_equal(ep.tokens_BT[:, Y2], [[5, 4, EOT, PAD],     # "ba"
                                                      [4, 5, 6, EOT],       # "abc"
                                                      [6, 4, EOT, PAD],     # "ca"
                                                      [5, 5, EOT, PAD]])    # "bb"
  np.testing.assert_array_equal(ep.turn2_mask_BT[:, Y2], [[T, T, T, F], [T, T, T, T],
                                                          [T, T, T, F], [T, T, T, F]])
  assert ep.turn1_mask_BT.sum() == 13 and ep.turn2_mask_BT.sum() == 13


def _assert_same_except_masks(out, ep):
  for field in ("tokens_BT", "valid_BT", "r1_B", "r2_B", "sampler_logprobs_BT"):
    np.testing.assert_array_equal(getattr(out, field), getattr(ep, field), err_msg=field)


def test_star_keeps_y2_of_traces_that_end_right():
  result = _result()
  ep = result.episode
  before = ep.turn2_mask_BT.copy()
  out, kept = baselines.star_episode(result, include_right_right=True)
  assert isinstance(out, episode_lib.Episode)
  assert kept == 0.5                                          # rows 1 and 3 of 4
  assert out.turn1_mask_BT.shape == (4, P + T1 + I + T2)
  assert not out.turn1_mask_BT.any()                          # no y1 token trained
  np.testing.assert_array_equal(out.turn2_mask_BT[:, Y2], [[F, F, F, F],
                                                           [T, T, T, T],    # wrong -> right
                                                           [F, F, F, F],
                                                           [T, T, T, F]])   # right -> right
  assert out.turn2_mask_BT.sum() == 7                         # nothing outside y2
  _assert_same_except_masks(out, ep)
  np.testing.assert_array_equal(result.episode.turn2_mask_BT, before)   # input untouched
  assert result.episode.turn1_mask_BT.sum() == 13


def test_star_without_right_right_keeps_only_corrections():
  result = _result()
  out, kept = baselines.star_episode(result, include_right_right=False)
  assert kept == 0.25                                         # row 1 only
  assert not out.turn1_mask_BT.any()
  np.testing.assert_array_equal(out.turn2_mask_BT[:, Y2], [[F, F, F, F],
                                                           [T, T, T, T],
                                                           [F, F, F, F],
                                                           [F, F, F, F]])
  assert out.turn2_mask_BT.sum() == 4
  _assert_same_except_masks(out, result.episode)


def test_star_keeps_nothing_when_no_trace_ends_right():
  result = _result()
  ep = result.episode._replace(r2_B=np.zeros(4, np.float32))
  out, kept = baselines.star_episode(rollout_lib.RolloutResult(ep, PROBLEMS, Y1_TEXTS,
                                                               Y2_TEXTS, 0))
  assert kept == 0.0
  assert not out.turn1_mask_BT.any() and not out.turn2_mask_BT.any()


def test_pair_sft_pairs_wrong_first_attempts_with_the_correct_answer():
  two_turn = _two_turn()
  result = _result()
  out, kept = baselines.pair_sft_episode(two_turn, result, two_turn.task.correct_answer)
  assert isinstance(out, episode_lib.Episode)
  assert kept == 0.5                                          # rows 0 and 1 (r1 = 0)
  L = P + T1 + I + T2
  assert out.tokens_BT.shape == (4, L)
  # Prompt and extra columns are those of the rollout; y1 is the rollout's first attempt.
  np.testing.assert_array_equal(out.tokens_BT[:, :P + T1 + I],
                                result.episode.tokens_BT[:, :P + T1 + I])
  np.testing.assert_array_equal(out.valid_BT[:, :P + T1 + I],
                                result.episode.valid_BT[:, :P + T1 + I])
  # y2 is the correct answer + end_of_turn, right-padded.
  np.testing.assert_array_equal(out.tokens_BT[:, Y2], [[4, 5, EOT, PAD],     # "ab"
                                                       [4, 5, 6, EOT],       # "abc"
                                                       [4, 6, EOT, PAD],     # "ac"
                                                       [5, 5, EOT, PAD]])    # "bb"
  np.testing.assert_array_equal(out.valid_BT[:, Y2], [[T, T, T, F], [T, T, T, T],
                                                      [T, T, T, F], [T, T, T, F]])
  # Only the y2 tokens of rows whose first attempt was wrong are trained.
  assert not out.turn1_mask_BT.any()
  np.testing.assert_array_equal(out.turn2_mask_BT[:, Y2], [[T, T, T, F],
                                                           [T, T, T, T],
                                                           [F, F, F, F],
                                                           [F, F, F, F]])
  assert out.turn2_mask_BT.sum() == 7
  np.testing.assert_array_equal(out.r1_B, [0, 0, 1, 1])
  np.testing.assert_array_equal(out.r2_B, [1, 1, 1, 1])       # every answer is correct
  np.testing.assert_array_equal(out.sampler_logprobs_BT, np.zeros((4, L)))  # demonstrations


def test_pair_sft_keeps_nothing_when_every_first_attempt_is_right():
  two_turn = _two_turn()
  result = _result()
  ep = result.episode._replace(r1_B=np.ones(4, np.float32))
  out, kept = baselines.pair_sft_episode(
      two_turn, rollout_lib.RolloutResult(ep, PROBLEMS, Y1_TEXTS, Y2_TEXTS, 0),
      two_turn.task.correct_answer)
  assert kept == 0.0
  assert not out.turn1_mask_BT.any() and not out.turn2_mask_BT.any()
