"""Tests of the supervised baselines' training data (score_jax.rl.baselines).

- `star_episode`, on a hand-built RolloutResult of four sorting traces, one of each outcome
  (wrong->wrong, wrong->right, right->wrong, right->right), trains only the y2 tokens of the
  traces that end right (with include_right_right=False only wrong->right), never a y1
  token, and leaves the tokens, rewards and log-probs as they were;
- Pair-SFT (`pair_sft_targets`, `pair_sft_episode`), on a hand-built RolloutResult of 3
  problems x 3 samples of a task graded like MATH (only the last word counts, so several
  texts are right), pairs each wrong first attempt with a correct response sampled for the
  same problem (round-robin over its distinct correct texts), drops problems with no
  correct sample and responses that are no longer right once cut to the turn-2 budget,
  and pairs with every row of the step when a process holds only some of them.
"""

import string

import numpy as np
import pytest

from score_jax import multihost
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
  return rollout_lib.RolloutResult(ep, list(PROBLEMS), [list(Y1_TEXTS), list(Y2_TEXTS)], 0)


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
  ep = result.episode._replace(rewards_BA=result.episode.rewards_BA * np.float32([1, 0]))
  out, kept = baselines.star_episode(rollout_lib.RolloutResult(ep, PROBLEMS,
                                                               [Y1_TEXTS, Y2_TEXTS], 0))
  assert kept == 0.0
  assert not out.turn1_mask_BT.any() and not out.turn2_mask_BT.any()


# --------------------------------------------------------------------------- Pair-SFT

class LastWordTask(base.Task):
  """Graded like MATH: only the response's last word counts, so several texts are right."""

  name = "last_word"
  splits = ("test",)
  turn2_instruction = "fix"

  def load(self, split):
    return []

  def reward(self, problem, response):
    words = response.split()
    return float(bool(words) and words[-1] == problem.answer)

  def alphabet(self):
    # a=4 ... z=29, 0=30 ... 9=39, " "=40, "\n"=41 (after <pad> <bos> <eos> <eot>)
    return string.ascii_lowercase + string.digits + " \n"


Q0, Q1, Q2 = (base.Problem(f"q{i}", f"q{i}", answer) for i, answer in enumerate("496"))
PAIR_PROBLEMS = [Q0] * 3 + [Q1] * 3 + [Q2] * 3        # k = 3 samples per problem
PAIR_Y1 = ["is 5", "so 4", "a 3",                      # q0: wrong, right, wrong
           "1", "3", "8",                              # q1: nothing right
           "6", "6", "5"]                              # q2: right, right, wrong
PAIR_Y2 = ["is 4", "so 4", "b 2",
           "2", "3", "7",
           "x 6", "6", "5"]
# q0's distinct correct texts, in row order (y1 before y2): "is 4" (row 0's y2), "so 4"
# (row 1); its wrong first attempts, rows 0 and 2, get them in turn. q1 has none: dropped.
# q2's: "6", "x 6"; its one wrong first attempt (row 8) gets "6".
TARGETS = ["is 4", None, "so 4", None, None, None, None, None, "6"]
PL, PT1, PI = 6, 5, 8                                  # "q0" + "\n\n"; "\n\nfix\n\n" + eot


def _pair_two_turn(turn2=5):
  task = LastWordTask()
  tokenizer = CharTokenizer(task.alphabet())
  chat = chat_lib.chat_format("plain", tokenizer=tokenizer)
  return rollout_lib.TwoTurnSampler(None, tokenizer, chat, task,
                                    rollout_lib.Lengths(prompt=PL, turn1=PT1, extra=PI,
                                                        turn2=turn2))


def _pair_result(two_turn, rows=range(9)):
  """The rows `rows` of the 9 samples as a RolloutResult (a process's share if not all)."""
  rows = list(rows)
  problems = [PAIR_PROBLEMS[i] for i in rows]
  y1, y2 = [PAIR_Y1[i] for i in rows], [PAIR_Y2[i] for i in rows]
  ep = rollout_lib.demonstration_episode(two_turn, problems, y1, y2)
  split = None if len(rows) == 9 else multihost.RowSplit(9, np.array(rows),
                                                        np.ones(len(rows), bool))
  return rollout_lib.RolloutResult(ep, problems, [y1, y2], 0, split=split)


def test_pair_sft_hand_built_samples_are_graded_as_written():
  ep = _pair_result(_pair_two_turn()).episode
  np.testing.assert_array_equal(ep.r1_B, [0, 1, 0, 0, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(ep.r2_B, [1, 1, 0, 0, 0, 0, 1, 1, 0])


def test_pair_sft_targets_pair_wrong_first_attempts_with_sampled_correct_ones():
  rows = baselines.sample_rows(_pair_result(_pair_two_turn()))
  assert rows[0] == ("q0", "is 5", 0.0, "is 4", 1.0)
  targets, stats = baselines.pair_sft_targets(rows)
  assert targets == TARGETS
  assert stats == {"kept_fraction": 3 / 9, "problems_solved_fraction": 2 / 3}


def test_pair_sft_targets_cycle_over_distinct_correct_texts():
  # Three wrong first attempts of one problem, two distinct correct texts (one repeated).
  rows = [("p", "1", 0.0, "a 4", 1.0), ("p", "2", 0.0, "a 4", 1.0),
          ("p", "b 4", 1.0, "3", 0.0), ("p", "5", 0.0, "6", 0.0)]
  targets, stats = baselines.pair_sft_targets(rows)
  assert targets == ["a 4", "b 4", None, "a 4"]
  assert stats == {"kept_fraction": 0.75, "problems_solved_fraction": 1.0}


def test_pair_sft_episode_trains_the_paired_correct_samples():
  two_turn = _pair_two_turn()
  result = _pair_result(two_turn)
  out, stats = baselines.pair_sft_episode(two_turn, result)
  assert isinstance(out, episode_lib.Episode)
  assert stats == {"problems_solved_fraction": 2 / 3, "kept_fraction": 3 / 9}
  y2 = slice(PL + PT1 + PI, PL + PT1 + PI + 5)
  # Prompt, y1 and extra columns are those of the rollout.
  np.testing.assert_array_equal(out.tokens_BT[:, :y2.start],
                                result.episode.tokens_BT[:, :y2.start])
  # Rows 0, 2, 8 hold their paired correct samples (+ end_of_turn); the others keep
  # their own, untrained, second attempts.
  assert two_turn.decode(out.tokens_BT[:, y2], out.valid_BT[:, y2]) == [
      "is 4", "so 4", "so 4", "2", "3", "7", "x 6", "6", "6"]
  np.testing.assert_array_equal(out.tokens_BT[0, y2], [12, 22, 40, 34, EOT])   # "is 4"
  np.testing.assert_array_equal(out.tokens_BT[8, y2], [36, EOT, PAD, PAD, PAD])  # "6"
  # Only the y2 tokens of rows 0, 2 and 8 are trained; no y1 token.
  assert not out.turn1_mask_BT.any()
  np.testing.assert_array_equal(out.turn2_mask_BT.any(axis=1), [T, F, T, F, F, F, F, F, T])
  np.testing.assert_array_equal(out.turn2_mask_BT[[0, 2, 8]][:, y2],
                                [[T, T, T, T, T], [T, T, T, T, T], [T, T, F, F, F]])
  assert out.turn2_mask_BT.sum() == 12
  np.testing.assert_array_equal(out.r2_B[[0, 2, 8]], [1, 1, 1])
  np.testing.assert_array_equal(out.sampler_logprobs_BT, 0.0)     # demonstrations


def test_pair_sft_drops_a_correct_sample_that_the_turn2_budget_cuts_wrong():
  # With T2 = 4, "is 4" and "so 4" keep 3 characters ("is ", "so ") + end_of_turn: wrong.
  two_turn = _pair_two_turn(turn2=4)
  out, stats = baselines.pair_sft_episode(two_turn, _pair_result(two_turn))
  np.testing.assert_array_equal(out.turn2_mask_BT.any(axis=1), [F] * 8 + [T])
  assert stats == {"problems_solved_fraction": 2 / 3, "kept_fraction": 1 / 9}


def test_pair_sft_pairs_with_every_row_of_the_step_on_a_process_holding_some():
  """A process holding rows 2 and 8 only: row 2's partner comes from rows 0-1 (elsewhere)."""
  two_turn = _pair_two_turn()
  everything = baselines.sample_rows(_pair_result(two_turn))
  local = _pair_result(two_turn, rows=[2, 8])
  out, stats = baselines.pair_sft_episode(two_turn, local, everything)
  y2 = slice(PL + PT1 + PI, PL + PT1 + PI + 5)
  assert two_turn.decode(out.tokens_BT[:, y2], out.valid_BT[:, y2]) == ["so 4", "6"]
  np.testing.assert_array_equal(out.turn2_mask_BT.any(axis=1), [T, T])
  assert stats == {"problems_solved_fraction": 2 / 3, "kept_fraction": 1.0}
  with pytest.raises(ValueError, match="all_rows has 2 rows but the step has 9"):
    baselines.pair_sft_episode(two_turn, local)


def test_pair_sft_keeps_nothing_when_no_first_attempt_is_wrong_or_nothing_is_right():
  two_turn = _pair_two_turn()
  result = _pair_result(two_turn)
  all_right = [(u, a, 1.0, b, z) for u, a, _, b, z in baselines.sample_rows(result)]
  none_right = [(u, a, 0.0, b, 0.0) for u, a, _, b, _ in baselines.sample_rows(result)]
  for rows, solved in ((all_right, 1.0), (none_right, 0.0)):
    out, stats = baselines.pair_sft_episode(two_turn, result, rows)
    assert stats == {"problems_solved_fraction": solved, "kept_fraction": 0.0}
    assert not out.turn1_mask_BT.any() and not out.turn2_mask_BT.any()


def test_an_answer_beyond_the_turn_budget_earns_no_reward():
  """Attack: put the right final answer after the tokens the episode keeps. The second
  row's y1 is "so s" + <eot> (the 5-token budget), so grading must see "so s", not
  "so so 4": before, the whole text was graded and the row counted as right although its
  laid-out attempt is wrong."""
  two_turn = _pair_two_turn()
  ep = rollout_lib.demonstration_episode(two_turn, [Q0, Q0], ["so 4", "so so 4"], ["4", "4"])
  assert two_turn.tokenizer.decode(ep.tokens_BT[1, PL:PL + PT1], skip_special=True) == "so s"
  np.testing.assert_array_equal(ep.r1_B, [1.0, 0.0])    # "so 4" fits; "so so 4" is cut
  np.testing.assert_array_equal(ep.r2_B, [1.0, 1.0])
