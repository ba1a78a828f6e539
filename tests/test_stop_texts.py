"""Tests of stop sequences (score_jax.stops, `sampler.generate(stop_sequences=...)`) and of a
task's stop texts in the rollout (`Task.stop_texts`, `MultiTurnSampler`).

- The matching helpers on literal arrays (right alignment, wildcard padding, empty tails).
- `generate` on the tiny random model of tests/test_sampler.py, whose greedy tokens are
  (read once, see GREEDY below): a stop sequence ends its row right after it (hand-checked
  lengths), the kept tokens and their log-probs are those of the run without stop sequences,
  rows without a match are unchanged; two sequences of lengths 1 and 3 at once.
- The rollout with a task whose stop text is "a" (char tokenizer, tiny model): y1 ends after
  the first "a", and turn 2 reads [x, y1, end_of_turn, instruction], the context it would
  read had the model emitted end_of_turn there (y2 is the greedy continuation of exactly that).
- Continuous batching (`score_jax.continuous`, `batching="continuous"`) with stop sequences:
  the same tokens, masks, stop flags and log-probs as `generate` (2 slots for 3 rows: a
  refilled slot starts a fresh tail), and the same rollout episode as the fixed path (a
  stop-text end gets end_of_turn in turn 2's context, a stop-id end does not).
- GSM8K declares "\\nProblem:" only few-shot.
- Real Gemma 3 270M (slow, ~60-100 s on 2 shared CPU cores): GSM8K 2-shot, the first
  attempt ends at "\\nProblem:" instead of running to its budget.
"""

import functools

import jax
import numpy as np
import pytest

from score_jax import continuous
from score_jax import sampler as S
from score_jax import stops
from score_jax.rl import rollout as rollout_lib
from score_jax.tasks import base
from score_jax.tasks import gsm8k
from score_jax.text import chat as chat_lib
from score_jax.text.tokenizer import CharTokenizer
from tests import real_model
from tests.rl.test_rollout import PROBLEMS, _model
from tests.test_sampler import PAD, make, prompts

# Greedy tokens of tests/test_sampler.py's tiny llama on its three prompts (8 steps).
GREEDY = [[100, 52, 100, 97, 64, 51, 56, 94],
          [102, 110, 34, 100, 34, 52, 52, 52],
          [40, 100, 43, 100, 43, 126, 101, 64]]


def test_stop_array_and_matching_by_hand():
  seqs = stops.canonical([(34, 100, 34), (52,), (52,)])
  assert seqs == ((52,), (34, 100, 34))
  np.testing.assert_array_equal(stops.stop_array(seqs), [[-1, -1, 52], [34, 100, 34]])
  stops_SL = jax.numpy.asarray(stops.stop_array(seqs))
  tail_BL = stops.empty_tail(4, 3)
  tail_BL = stops.push(tail_BL, jax.numpy.array([34, 52, 7, 34]),
                       jax.numpy.array([True, True, True, False]))
  np.testing.assert_array_equal(tail_BL, [[-2, -2, 34], [-2, -2, 52], [-2, -2, 7],
                                          [-2, -2, -2]])
  np.testing.assert_array_equal(stops.matches(tail_BL, stops_SL), [False, True, False, False])
  tail_BL = jax.numpy.array([[34, 100, 34], [100, 34, 100], [-2, 100, 34]])
  np.testing.assert_array_equal(stops.matches(tail_BL, stops_SL), [True, False, False])
  assert stops.ends_on_stop_sequence([5, 34, 100, 34], seqs)
  assert not stops.ends_on_stop_sequence([100, 34], seqs)
  with pytest.raises(ValueError, match="empty stop sequence"):
    stops.canonical([()])


def test_token_sequences_of_a_char_tokenizer():
  tok = CharTokenizer("ab\n")        # a=4 b=5 "\n"=6
  assert stops.token_sequences(tok, ("\nab", "b")) == ((5,), (6, 4, 5))
  with pytest.raises(ValueError, match="Task.stop_texts"):
    stops.token_sequences(tok, ("",))


@functools.lru_cache(maxsize=None)
def _generate(stop_sequences=()):
  _, graphdef, params = make()
  tokens, valid = prompts()
  return S.generate(graphdef, params, tokens, valid, max_new_tokens=8, method=S.Greedy(),
                    pad_id=PAD, max_cache_len=30, stop_sequences=stop_sequences)


def test_greedy_tokens_read_for_these_tests():
  out = _generate()
  np.testing.assert_array_equal(out.tokens_BS, GREEDY)
  assert not np.asarray(out.done_B).any()


def _check_prefix(out, free, lengths):
  """Row b keeps the first lengths[b] tokens of the free run, their log-probs, then PAD."""
  np.testing.assert_array_equal(out.lengths_B, lengths)
  for b, k in enumerate(lengths):
    np.testing.assert_array_equal(out.tokens_BS[b, :k], free.tokens_BS[b, :k])
    np.testing.assert_allclose(out.logprobs_BS[b, :k], free.logprobs_BS[b, :k],
                               rtol=1e-6, atol=1e-6)
    assert (np.asarray(out.tokens_BS[b, k:]) == PAD).all()
    assert not np.asarray(out.valid_BS[b, k:]).any()
    assert (np.asarray(out.logprobs_BS[b, k:]) == 0).all()


def test_a_stop_sequence_ends_its_row_right_after_it():
  free, out = _generate(), _generate(((100, 97),))
  # row 0 writes 100, 97 at steps 2, 3 -> 4 tokens; rows 1 and 2 never write 100 then 97
  _check_prefix(out, free, [4, 8, 8])
  np.testing.assert_array_equal(out.done_B, [True, False, False])


def test_two_stop_sequences_of_different_lengths():
  free, out = _generate(), _generate(((52,), (34, 100, 34)))
  # row 0: 52 at step 1 -> 2 tokens; row 1: 34 100 34 at steps 2-4 (before its 52s) -> 5;
  # row 2 writes neither 52 nor 34 -> all 8
  _check_prefix(out, free, [2, 5, 8])
  np.testing.assert_array_equal(out.done_B, [True, True, False])


def test_a_single_token_stop_sequence_is_a_stop_id():
  by_seq = _generate(((52,),))
  _, graphdef, params = make()
  tokens, valid = prompts()
  by_id = S.generate(graphdef, params, tokens, valid, max_new_tokens=8, method=S.Greedy(),
                     pad_id=PAD, max_cache_len=30, stop_ids=(52,))
  for name in ("tokens_BS", "valid_BS", "lengths_B", "done_B"):
    np.testing.assert_array_equal(getattr(by_seq, name), getattr(by_id, name), err_msg=name)


# --- rollout --------------------------------------------------------------------------------

class _StopAtA(base.Task):
  """First-letter task (as in tests/rl/test_rollout.py) whose attempts end at "a"."""
  name = "stop_at_a"
  turn2_instruction = "b"
  stop_texts = ("a",)

  def load(self, split):
    raise NotImplementedError

  def reward(self, problem, response):
    return float(response[:1] == problem.answer)


class _NoStops(_StopAtA):
  stop_texts = ()


LENGTHS = rollout_lib.Lengths(prompt=6, turn1=5, extra=6, turn2=5)
EOT, A = 3, 4


def _rollout(task):
  _, graphdef, params = _model()
  tokenizer = CharTokenizer("ab\n")
  chat = chat_lib.chat_format("plain", tokenizer=tokenizer)
  sampler = rollout_lib.MultiTurnSampler(graphdef, tokenizer, chat, task, LENGTHS,
                                         model_vocab=16)
  return sampler, sampler.rollout(params, params, PROBLEMS[::2], method=S.Greedy(),
                                  rng=jax.random.key(0))


def _segment(episode, start, width):
  return episode.tokens_BT[:, start:start + width], episode.valid_BT[:, start:start + width]


def test_rollout_stops_at_the_stop_text_and_turn2_reads_end_of_turn_after_it():
  _, free = _rollout(_NoStops())
  sampler, out = _rollout(_StopAtA())
  P, T1, I = LENGTHS.prompt, LENGTHS.turn1, LENGTHS.extra
  y1_free, _ = _segment(free.episode, P, T1)
  y1, y1_valid = _segment(out.episode, P, T1)
  # Without stop texts greedy y1 is (bos = 1, pad = 0 are sampled ids of this random model):
  np.testing.assert_array_equal(y1_free, [[1, 1, 4, 1, 1], [0, 5, 1, 4, 0], [1, 1, 1, 5, 1],
                                          [1, 4, 1, 1, 1]])
  # ... so "a" (id 4) ends rows 0, 1, 3 after 3, 4, 2 tokens; row 2 has no "a".
  np.testing.assert_array_equal(y1_valid.sum(axis=1), [3, 4, 5, 2])
  assert out.y1 == ["a", "ba", "b", "a"]
  for b, k in enumerate([3, 4, 5, 2]):
    np.testing.assert_array_equal(y1[b, :k], y1_free[b, :k])
  np.testing.assert_allclose(out.episode.sampler_logprobs_BT[:, P:P + T1][y1_valid],
                             free.episode.sampler_logprobs_BT[:, P:P + T1][y1_valid],
                             rtol=1e-6, atol=1e-6)
  # turn 2's context: end_of_turn after the stop text (and after row 2's budget-ended y1)
  extra, extra_valid = _segment(out.episode, P + T1, I)
  for b in range(4):
    assert list(extra[b][extra_valid[b]]) == [EOT] + sampler.second_turn_ids
  # y2 is the greedy continuation of [x, y1, end_of_turn, instruction] read afresh
  context = [list(out.episode.tokens_BT[b, :P + T1 + I][out.episode.valid_BT[b, :P + T1 + I]])
             for b in range(4)]
  tokens, valid, _ = S.left_pad(context, PAD)
  _, graphdef, params = _model()
  ref = S.generate(graphdef, params, tokens, valid, max_new_tokens=LENGTHS.turn2,
                   method=S.limit_vocab(S.Greedy(), 7, 16), stop_ids=sampler.stop_ids, pad_id=PAD,
                   stop_sequences=sampler.stop_sequences)
  y2, y2_valid = _segment(out.episode, P + T1 + I, LENGTHS.turn2)
  np.testing.assert_array_equal(y2_valid, ref.valid_BS)
  np.testing.assert_array_equal(np.where(y2_valid, y2, PAD), ref.tokens_BS)
  np.testing.assert_allclose(out.episode.sampler_logprobs_BT[:, P + T1 + I:],
                             ref.logprobs_BS, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stop_sequences", [((100, 97),), ((52,), (34, 100, 34))])
def test_continuous_batching_stops_where_generate_does(stop_sequences):
  ref = _generate(stop_sequences)
  assert np.asarray(ref.done_B).any() and not np.asarray(ref.done_B).all()
  _, graphdef, params = make()
  tokens, valid = prompts()
  out = continuous.generate_continuous(graphdef, params, continuous.prompt_rows(tokens, valid),
                                       widths=(8,), method=S.Greedy(), pad_id=PAD, slots=2,
                                       chunk=4, stop_sequences=stop_sequences)
  got = out.attempts[0]
  assert out.stats["prefills"] == 3          # row 2 refilled a slot whose tail was not empty
  for name in ("tokens_BS", "valid_BS", "done_B", "lengths_B"):
    np.testing.assert_array_equal(getattr(got, name), np.asarray(getattr(ref, name)),
                                  err_msg=name)
  np.testing.assert_allclose(got.logprobs_BS, np.asarray(ref.logprobs_BS), atol=2e-5,
                             rtol=1e-5)


def test_continuous_rollout_with_stop_texts_gives_the_fixed_episode():
  sampler, ref = _rollout(_StopAtA())
  _, graphdef, params = _model()
  cont = sampler.with_batching("continuous", slots=2)
  out = cont.rollout(params, params, PROBLEMS[::2], method=S.Greedy(), rng=jax.random.key(0))
  assert out.y1 == ref.y1 == ["a", "ba", "b", "a"] and out.y2 == ref.y2
  for name in ("tokens_BT", "valid_BT", "attempt_BT"):
    np.testing.assert_array_equal(getattr(out.episode, name), getattr(ref.episode, name),
                                  err_msg=name)
  np.testing.assert_allclose(out.episode.sampler_logprobs_BT, ref.episode.sampler_logprobs_BT,
                             atol=2e-5, rtol=1e-5)


def test_gsm8k_stops_at_the_next_problem_only_few_shot(tmp_path):
  assert gsm8k.GSM8KTask(tmp_path, num_shots=0).stop_texts == ()
  task = gsm8k.GSM8KTask(tmp_path, num_shots=2)
  assert task.stop_texts == ("\nProblem:",)
  assert gsm8k.EXEMPLAR_TEMPLATE.startswith("Problem:\n")   # the header the model repeats


@pytest.mark.slow
def test_gemma3_gsm8k_two_shot_first_attempt_ends_at_the_next_problem(shared_data):
  lm = real_model.load_lm()
  task = gsm8k.GSM8KTask(shared_data, num_shots=2, grader_workers=1)
  try:
    # test problems 0 and 3: greedy, the model answers them and writes "\n\nProblem:" after
    # 70 and 61 tokens (problem 1 loops to any budget: "The blue fiber + white fiber = ...")
    problems = [task.load("test")[i] for i in (0, 3)]
    chat = chat_lib.chat_format("plain", tokenizer=lm.tokenizer)
    lengths = rollout_lib.Lengths(prompt=640, turn1=120, extra=96, turn2=4)
    sampler = rollout_lib.MultiTurnSampler(lm.graphdef, lm.tokenizer, chat, task, lengths,
                                           model_vocab=lm.config.vocab_size)
    # "\n\n" "Problem" ":" (one token for the two newlines) is among the variants
    assert tuple(lm.tokenizer.encode("\n\nProblem:")) in sampler.stop_sequences
    assert tuple(lm.tokenizer.encode("\nProblem:")) in sampler.stop_sequences
    out = sampler.rollout(lm.params, lm.params, problems, method=S.Greedy(),
                          rng=jax.random.key(0))
  finally:
    task.close()
  P = lengths.prompt
  y1_valid = out.episode.valid_BT[:, P:P + lengths.turn1]
  for b, text in enumerate(out.y1):
    assert text.endswith("\n\nProblem:"), text
    assert text.count("\nProblem:") == 1, text
    assert y1_valid[b].sum() < lengths.turn1
    assert gsm8k.response_text(text) == text[:-len("\nProblem:")].rstrip()
