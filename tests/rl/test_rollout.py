"""Tests of the Episode layout (score_jax.rl.episode) and the two-turn rollouts
(score_jax.rl.rollout).

- `layout` / `concat` on tiny literal segments: where every segment, mask and log-prob lands.
- `demonstration_episode` on a hand-built sorting example (char tokenizer, "plain" chat):
  every token of `[prompt | y1 | extra | y2]` written out, with padding and masks.
- `encode_prompts` truncation (the BOS head is kept), `extra_chunk` (end_of_turn only
  where y1 did not stop), the instruction-length check, `without_turn1_training`.
- `TwoTurnSampler.rollout` on a tiny random model: the masks match the sampled tokens, the
  rewards are the task's rewards of the decoded attempts, the sampler's log-probs are those
  a forward pass over the Episode gives (the trainer's view), and continuing the turn-1
  cache samples the same y2 as re-reading the whole context.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import mesh as mesh_lib
from score_jax import sampler as sampler_lib
from score_jax.model import config as model_config_lib
from score_jax.model import transformer as model_lib
from score_jax.rl import episode as episode_lib
from score_jax.rl import rollout as rollout_lib
from score_jax.tasks import base
from score_jax.tasks import sorting
from score_jax.text import chat as chat_lib
from score_jax.text.tokenizer import CharTokenizer

T, F = True, False


# --- layout / concat on literal segments ---------------------------------------------------

def _segments():
  """Two rows; prompt (P=3, left-padded), y1 (T1=2), extra (I=2), y2 (T2=2)."""
  prompt = (np.array([[0, 11, 12], [13, 14, 15]], np.int32),
            np.array([[F, T, T], [T, T, T]]))
  turn1 = (np.array([[21, 3], [22, 0]], np.int32), np.array([[T, T], [T, F]]))
  extra = (np.array([[0, 31], [3, 31]], np.int32), np.array([[F, T], [T, T]]))
  turn2 = (np.array([[41, 0], [42, 3]], np.int32), np.array([[T, F], [T, T]]))
  return prompt, turn1, extra, turn2


def _layout(segments, r1_B, r2_B, logprobs1_BS=None, logprobs2_BS=None):
  """The two-attempt `layout` of `_segments()`-style (prompt, y1, extra, y2)."""
  prompt, turn1, extra, turn2 = segments
  return episode_lib.layout(prompt, [turn1, turn2], [extra], [r1_B, r2_B],
                            [logprobs1_BS, logprobs2_BS])


def test_layout_places_segments_masks_and_logprobs():
  logp1 = np.array([[-0.5, -1.5], [-2.0, 0.0]], np.float32)
  logp2 = np.array([[-0.25, 0.0], [-3.0, -4.0]], np.float64)    # cast to float32
  ep = _layout(_segments(), r1_B=[1, 0], r2_B=[0.0, 1.0],
                          logprobs1_BS=logp1, logprobs2_BS=logp2)
  assert isinstance(ep, episode_lib.Episode)
  #                  prompt       y1      extra     y2
  np.testing.assert_array_equal(ep.tokens_BT, [[0, 11, 12, 21, 3, 0, 31, 41, 0],
                                               [13, 14, 15, 22, 0, 3, 31, 42, 3]])
  np.testing.assert_array_equal(ep.valid_BT, [[F, T, T, T, T, F, T, T, F],
                                              [T, T, T, T, F, T, T, T, T]])
  np.testing.assert_array_equal(ep.turn1_mask_BT, [[F, F, F, T, T, F, F, F, F],
                                                   [F, F, F, T, F, F, F, F, F]])
  np.testing.assert_array_equal(ep.turn2_mask_BT, [[F, F, F, F, F, F, F, T, F],
                                                   [F, F, F, F, F, F, F, T, T]])
  np.testing.assert_array_equal(ep.sampler_logprobs_BT,
                                [[0, 0, 0, -0.5, -1.5, 0, 0, -0.25, 0],
                                 [0, 0, 0, -2.0, 0, 0, 0, -3.0, -4.0]])
  np.testing.assert_array_equal(ep.r1_B, [1.0, 0.0])
  np.testing.assert_array_equal(ep.r2_B, [0.0, 1.0])
  assert ep.tokens_BT.dtype == np.int32 and ep.valid_BT.dtype == bool
  assert ep.turn1_mask_BT.dtype == bool and ep.turn2_mask_BT.dtype == bool
  for x in (ep.r1_B, ep.r2_B, ep.sampler_logprobs_BT):
    assert x.dtype == np.float32


def test_layout_without_logprobs_is_zero_there():
  ep = _layout(_segments(), r1_B=[0, 0], r2_B=[1, 1])
  assert ep.sampler_logprobs_BT.shape == (2, 9)
  assert ep.sampler_logprobs_BT.dtype == np.float32
  np.testing.assert_array_equal(ep.sampler_logprobs_BT, np.zeros((2, 9)))
  # Only turn 1's log-probs given: turn 2 stays zero.
  ep1 = _layout(_segments(), r1_B=[0, 0], r2_B=[1, 1],
                           logprobs1_BS=np.array([[-1.0, -2.0], [-3.0, 0.0]]))
  np.testing.assert_array_equal(ep1.sampler_logprobs_BT,
                                [[0, 0, 0, -1, -2, 0, 0, 0, 0],
                                 [0, 0, 0, -3, 0, 0, 0, 0, 0]])


def test_lengths_total():
  assert episode_lib.Lengths(prompt=12, turn1=4, extra=19, turn2=4).total == 39


def test_concat_stacks_rows_field_by_field():
  a = _layout(_segments(), r1_B=[1, 0], r2_B=[0, 1],
                         logprobs1_BS=np.full((2, 2), -1.0), logprobs2_BS=np.full((2, 2), -2.0))
  seg = [(tok[1:], val[1:]) for tok, val in _segments()]           # row 1 alone
  b = _layout(seg, r1_B=[1], r2_B=[1])
  ab = episode_lib.concat([a, b])
  assert isinstance(ab, episode_lib.Episode)
  np.testing.assert_array_equal(ab.tokens_BT, [[0, 11, 12, 21, 3, 0, 31, 41, 0],
                                               [13, 14, 15, 22, 0, 3, 31, 42, 3],
                                               [13, 14, 15, 22, 0, 3, 31, 42, 3]])
  np.testing.assert_array_equal(ab.turn2_mask_BT[2], [F, F, F, F, F, F, F, T, T])
  np.testing.assert_array_equal(ab.r1_B, [1, 0, 1])
  np.testing.assert_array_equal(ab.r2_B, [0, 1, 1])
  np.testing.assert_array_equal(ab.sampler_logprobs_BT,
                                [[0, 0, 0, -1, -1, 0, 0, -2, -2],
                                 [0, 0, 0, -1, -1, 0, 0, -2, -2],
                                 [0, 0, 0, 0, 0, 0, 0, 0, 0]])
  for field in episode_lib.Episode._fields:
    assert getattr(ab, field).shape[0] == 3, field


# --- a hand-built sorting example ------------------------------------------------------------
#
# CharTokenizer over SortingTask.alphabet(): <pad>=0 <bos>=1 <eos>=2 <eot>=3, then
# string.ascii_letters (a=4 .. z=29, A=30 .. Z=55), digits (56..65), " .,:;!?'\"-()\n"
# (" "=66 "."=67 ":"=69 "\n"=78). "plain" chat: first turn "<bos>{x}\n\n", second turn
# "\n\n{p}\n\n" with p = "Check and fix.", turns ended by <eot>.

PAD, BOS, EOT = 0, 1, 3
# "\n\nCheck and fix.\n\n": 18 tokens, so the extra chunk needs I >= 19 (with end_of_turn).
SECOND_TURN = [78, 78, 32, 11, 8, 6, 14, 66, 4, 17, 7, 66, 9, 12, 27, 67, 78, 78]
LENGTHS = rollout_lib.Lengths(prompt=12, turn1=4, extra=19, turn2=4)   # total 39


def _sorting_sampler(lengths=LENGTHS):
  task = sorting.SortingTask()
  tokenizer = CharTokenizer(task.alphabet())
  chat = chat_lib.chat_format("plain", tokenizer=tokenizer)
  # No model is needed for the host-side layout (graphdef is only used by `rollout`).
  return rollout_lib.TwoTurnSampler(None, tokenizer, chat, task, lengths)


def test_char_tokenizer_ids_used_below():
  two_turn = _sorting_sampler()
  tok = two_turn.tokenizer
  assert (tok.pad_id, tok.bos_id, tok.eos_id, two_turn.eot_id) == (PAD, BOS, 2, EOT)
  assert tok.encode("abcsortx:. \nC") == [4, 5, 6, 22, 18, 21, 23, 27, 69, 67, 66, 78, 32]
  assert two_turn.second_turn_ids == SECOND_TURN
  assert two_turn.stop_ids == (2, 3)
  assert two_turn.head_ids == [BOS]


def test_demonstration_episode_hand_built():
  two_turn = _sorting_sampler()
  problems = [base.Problem("p0", "sort: cba", "abc"), base.Problem("p1", "sort: ba", "ab")]
  # Row 0: right then wrong; row 1: wrong then right.
  ep = rollout_lib.demonstration_episode(two_turn, problems, ["abc", "ba"], ["acb", "ab"])

  #        prompt "<bos>sort: cba\n\n" (12 = P: no padding)
  row0 = ([1, 22, 18, 21, 23, 69, 66, 6, 5, 4, 78, 78]
          + [4, 5, 6, 3]                  # y1 "abc<eot>" (fills T1 = 4)
          + [PAD] + SECOND_TURN           # extra: y1 ended with <eot>, so only the text
          + [4, 6, 5, 3])                 # y2 "acb<eot>"
  #        prompt "<bos>sort: ba\n\n" (11), left-padded by one
  row1 = ([PAD, 1, 22, 18, 21, 23, 69, 66, 5, 4, 78, 78]
          + [5, 4, 3, PAD]                # y1 "ba<eot>", right-padded
          + [PAD] + SECOND_TURN
          + [4, 5, 3, PAD])               # y2 "ab<eot>", right-padded
  np.testing.assert_array_equal(ep.tokens_BT, [row0, row1])
  assert ep.tokens_BT.shape == (2, 39)

  valid0 = [T] * 12 + [T, T, T, T] + [F] + [T] * 18 + [T, T, T, T]
  valid1 = [F] + [T] * 11 + [T, T, T, F] + [F] + [T] * 18 + [T, T, T, F]
  np.testing.assert_array_equal(ep.valid_BT, [valid0, valid1])

  turn1_0 = [F] * 12 + [T, T, T, T] + [F] * 19 + [F] * 4
  turn1_1 = [F] * 12 + [T, T, T, F] + [F] * 19 + [F] * 4
  np.testing.assert_array_equal(ep.turn1_mask_BT, [turn1_0, turn1_1])
  turn2_0 = [F] * 12 + [F] * 4 + [F] * 19 + [T, T, T, T]
  turn2_1 = [F] * 12 + [F] * 4 + [F] * 19 + [T, T, T, F]
  np.testing.assert_array_equal(ep.turn2_mask_BT, [turn2_0, turn2_1])

  np.testing.assert_array_equal(ep.r1_B, [1.0, 0.0])
  np.testing.assert_array_equal(ep.r2_B, [0.0, 1.0])
  np.testing.assert_array_equal(ep.sampler_logprobs_BT, np.zeros((2, 39)))
  assert ep.r1_B.dtype == np.float32 and ep.sampler_logprobs_BT.dtype == np.float32


def test_a_demonstration_longer_than_its_budget_still_ends_its_turn():
  """An attempt cut to its budget keeps end-of-turn (as the sampler's turns end) and is
  graded on the text that was kept. It used to lose <eot>, running y1 straight into the
  instruction, and was graded on the whole text."""
  two_turn = _sorting_sampler()
  problems = [base.Problem("p0", "sort: cba", "abc")]
  ep = rollout_lib.demonstration_episode(two_turn, problems, ["abcde"], ["abcab"])
  np.testing.assert_array_equal(ep.tokens_BT[0, 12:16], [4, 5, 6, 3])      # "abc<eot>"
  np.testing.assert_array_equal(ep.tokens_BT[0, 35:39], [4, 5, 6, 3])      # "abc<eot>"
  np.testing.assert_array_equal(ep.r1_B, [1.0])      # "abc" is kept and correct
  np.testing.assert_array_equal(ep.r2_B, [1.0])


def test_extra_chunk_adds_end_of_turn_only_where_turn1_did_not_stop():
  two_turn = _sorting_sampler()
  tokens, valid = two_turn.extra_chunk(np.array([True, False]))
  np.testing.assert_array_equal(tokens, [[PAD] + SECOND_TURN, [EOT] + SECOND_TURN])
  np.testing.assert_array_equal(valid, [[F] + [T] * 18, [T] * 19])


def test_encode_prompts_left_pads_and_truncates_keeping_bos():
  two_turn = _sorting_sampler(rollout_lib.Lengths(prompt=8, turn1=4, extra=19, turn2=4))
  problems = [base.Problem("a", "sort: cba", "abc"),      # 12 ids -> BOS + last 7
              base.Problem("b", "sort: ba", "ab"),        # 11 ids -> BOS + last 7
              base.Problem("c", "ab", "ab")]              # 5 ids -> 3 pads
  tokens, valid, truncated = two_turn.encode_prompts(problems)
  np.testing.assert_array_equal(tokens, [[1, 69, 66, 6, 5, 4, 78, 78],     # "<bos>: cba\n\n"
                                         [1, 23, 69, 66, 5, 4, 78, 78],    # "<bos>t: ba\n\n"
                                         [0, 0, 0, 1, 4, 5, 78, 78]])      # "<bos>ab\n\n"
  np.testing.assert_array_equal(valid, [[T] * 8, [T] * 8, [F, F, F, T, T, T, T, T]])
  assert truncated == 2


def test_instruction_budget_is_checked():
  with pytest.raises(ValueError, match="needs 19 tokens"):
    _sorting_sampler(rollout_lib.Lengths(prompt=12, turn1=4, extra=18, turn2=4))


def test_without_turn1_training_clears_only_the_turn1_mask():
  two_turn = _sorting_sampler()
  problems = [base.Problem("p0", "sort: cba", "abc"), base.Problem("p1", "sort: ba", "ab")]
  ep = rollout_lib.demonstration_episode(two_turn, problems, ["abc", "ba"], ["acb", "ab"])
  ep = ep._replace(sampler_logprobs_BT=np.where(ep.valid_BT, -0.5, 0.0).astype(np.float32))
  result = rollout_lib.RolloutResult(ep, problems, [["abc", "ba"], ["acb", "ab"]],
                                     truncated_prompts=1)
  before = {f: np.copy(getattr(ep, f)) for f in episode_lib.Episode._fields}
  out = rollout_lib.without_turn1_training(result)
  assert out.episode.turn1_mask_BT.shape == (2, 39)
  assert not out.episode.turn1_mask_BT.any()
  np.testing.assert_array_equal(out.episode.turn2_mask_BT, ep.turn2_mask_BT)
  for field in episode_lib.Episode._fields:
    if field != "attempt_BT":
      np.testing.assert_array_equal(getattr(out.episode, field), before[field], err_msg=field)
  assert (out.problems, out.y1, out.y2, out.truncated_prompts, out.split) == (
      problems, ["abc", "ba"], ["acb", "ab"], 1, None)
  # The input is left as it was.
  assert result.episode.turn1_mask_BT.sum() == 7
  np.testing.assert_array_equal(result.episode.attempt_BT, before["attempt_BT"])


# --- rollouts of a tiny random model ------------------------------------------------------

class _FirstLetterTask(base.Task):
  """Reward 1 when the response starts with the problem's letter: about half the random
  attempts are right, so the rewards are not all equal."""

  name = "first_letter"
  turn2_instruction = "b"
  splits = ("train",)

  def load(self, split):
    raise NotImplementedError

  def reward(self, problem, response):
    return float(response[:1] == problem.answer)


# Alphabet "ab\n": <pad>=0 <bos>=1 <eos>=2 <eot>=3 a=4 b=5 "\n"=6; a model of 16 ids (the
# sampler must never draw ids >= 7). Random attempts stop on <eos>/<eot> often.
SMALL_LENGTHS = rollout_lib.Lengths(prompt=6, turn1=5, extra=6, turn2=5)
PROBLEMS = [base.Problem(f"p{i}", prompt, answer)
            for i, (prompt, answer) in enumerate([("ab", "a"), ("ba", "b"), ("aab", "a"),
                                                  ("b", "b")])
            for _ in range(2)]                   # k = 2 samples per prompt: 8 rows


@functools.lru_cache(maxsize=None)
def _model():
  mesh = mesh_lib.make_mesh(data=1, fsdp=-1, tensor=1)
  config = model_config_lib.tiny("llama", vocab_size=16)
  graphdef, params = model_lib.init_params(config, mesh, seed=0)
  return mesh, graphdef, params


def _small_sampler():
  _, graphdef, _ = _model()
  tokenizer = CharTokenizer("ab\n")
  chat = chat_lib.chat_format("plain", tokenizer=tokenizer)
  return rollout_lib.TwoTurnSampler(graphdef, tokenizer, chat, _FirstLetterTask(),
                                    SMALL_LENGTHS, model_vocab=16)


@functools.lru_cache(maxsize=None)
def _rollout(separate_turn2_params: bool):
  _, _, params = _model()
  params2 = jax.tree.map(lambda x: x, params) if separate_turn2_params else params
  two_turn = _small_sampler()
  return two_turn.rollout(params, params2, PROBLEMS, method=sampler_lib.Temperature(1.0),
                          rng=jax.random.key(3))


def _check_attempts(tokens_BS, valid_BS, budget, stops):
  """Each row is a run of valid tokens from column 0, ended by a stop id or by the budget,
  then padding; returns which rows stopped."""
  stopped = []
  for row, ok in zip(tokens_BS, valid_BS):
    k = int(ok.sum())
    assert k >= 1 and ok[:k].all() and not ok[k:].any()
    assert (row[k:] == PAD).all()
    assert not np.isin(row[:k - 1], stops).any()
    stopped.append(bool(row[k - 1] in stops))
    assert stopped[-1] or k == budget
  return stopped


def test_rollout_episode_masks_rewards_and_logprobs():
  two_turn = _small_sampler()
  result = _rollout(False)
  ep = result.episode
  P, T1, I, T2 = 6, 5, 6, 5
  B, L = 8, P + T1 + I + T2
  assert isinstance(ep, episode_lib.Episode)
  assert ep.tokens_BT.shape == ep.valid_BT.shape == ep.sampler_logprobs_BT.shape == (B, L)
  assert ep.r1_B.shape == ep.r2_B.shape == (B,)
  assert result.problems == PROBLEMS and result.truncated_prompts == 0 and result.split is None
  y1_cols, extra_cols, y2_cols = slice(P, P + T1), slice(P + T1, P + T1 + I), slice(P + T1 + I, L)

  # The prompt: "<bos>ab\n\n" etc., left-padded to P = 6.
  np.testing.assert_array_equal(ep.tokens_BT[0:2, :P], [[0, 1, 4, 5, 6, 6]] * 2)
  np.testing.assert_array_equal(ep.tokens_BT[6:8, :P], [[0, 0, 1, 5, 6, 6]] * 2)

  # Masks: exactly the valid tokens of y1 / y2, nothing else, never both.
  np.testing.assert_array_equal(ep.turn1_mask_BT[:, y1_cols], ep.valid_BT[:, y1_cols])
  np.testing.assert_array_equal(ep.turn2_mask_BT[:, y2_cols], ep.valid_BT[:, y2_cols])
  assert not ep.turn1_mask_BT[:, :P].any() and not ep.turn1_mask_BT[:, P + T1:].any()
  assert not ep.turn2_mask_BT[:, :P + T1 + I].any()
  assert not (ep.turn1_mask_BT & ep.turn2_mask_BT).any()
  attempts = ep.turn1_mask_BT | ep.turn2_mask_BT
  assert (ep.sampler_logprobs_BT[~attempts] == 0).all()
  assert (ep.sampler_logprobs_BT[attempts] < 0).all()
  assert ep.tokens_BT.max() < 7                                   # tokenizer ids only

  # Each attempt ends with a stop id or at its budget; the extra chunk has end_of_turn
  # exactly where y1 did not stop.
  stops = (2, 3)
  y1_stopped = _check_attempts(ep.tokens_BT[:, y1_cols], ep.valid_BT[:, y1_cols], T1, stops)
  _check_attempts(ep.tokens_BT[:, y2_cols], ep.valid_BT[:, y2_cols], T2, stops)
  y1_stopped = np.array(y1_stopped)
  assert y1_stopped.any() and not y1_stopped.all()                # both cases occur (seed 3)
  second = [6, 6, 5, 6, 6]                                       # "\n\nb\n\n"
  for b in range(B):
    want = ([PAD] if y1_stopped[b] else [EOT]) + second
    np.testing.assert_array_equal(ep.tokens_BT[b, extra_cols], want)
    np.testing.assert_array_equal(ep.valid_BT[b, extra_cols], [not y1_stopped[b]] + [T] * 5)

  # y1 / y2 are the decoded attempts (stop ids and specials dropped), and the rewards the
  # task's rewards of those texts.
  tok = two_turn.tokenizer
  def decode(cols):
    return [tok.decode([int(t) for t, v in zip(row, ok) if v and int(t) not in stops],
                       skip_special=True)
            for row, ok in zip(ep.tokens_BT[:, cols], ep.valid_BT[:, cols])]
  assert result.y1 == decode(y1_cols) and result.y2 == decode(y2_cols)
  task = _FirstLetterTask()
  np.testing.assert_array_equal(ep.r1_B, task.rewards(PROBLEMS, result.y1))
  np.testing.assert_array_equal(ep.r2_B, task.rewards(PROBLEMS, result.y2))
  rewards = np.concatenate([ep.r1_B, ep.r2_B])
  assert 0 < rewards.mean() < 1                                   # not all equal (seed 3)

  # The trainer's view: one forward pass over the Episode gives the sampler's log-probs
  # at every y1 / y2 token (same positions, same context).
  mesh, graphdef, params = _model()
  with jax.set_mesh(mesh):
    assert_logprobs_are_the_trainers(graphdef, params, ep)


def assert_logprobs_are_the_trainers(graphdef, params, ep: episode_lib.Episode):
  """One forward pass over the Episode gives the sampler's log-prob at every attempt token."""
  logits_BTV, _ = jax.jit(model_lib.forward, static_argnums=0)(
      graphdef, params, jnp.asarray(ep.tokens_BT), jnp.asarray(ep.valid_BT))
  logp_BTV = np.asarray(jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1))
  next_logp_BT = np.take_along_axis(logp_BTV[:, :-1], ep.tokens_BT[:, 1:, None], -1)[..., 0]
  attempts = ep.attempt_BT > 0
  np.testing.assert_allclose(np.where(attempts[:, 1:], next_logp_BT, 0.0),
                             ep.sampler_logprobs_BT[:, 1:], rtol=1e-4, atol=1e-4)


def test_rollout_with_separate_turn2_params_reads_the_whole_context():
  """params2 is not params1: turn 2 re-reads [x | y1 | extra] instead of continuing the
  turn-1 cache. With equal weights and the same rng, the episode is the same."""
  cached, reread = _rollout(False).episode, _rollout(True).episode
  for field in ("tokens_BT", "valid_BT", "attempt_BT", "rewards_BA"):
    np.testing.assert_array_equal(getattr(reread, field), getattr(cached, field), err_msg=field)
  np.testing.assert_allclose(reread.sampler_logprobs_BT, cached.sampler_logprobs_BT,
                             rtol=1e-4, atol=1e-4)
