"""Tests of score_jax.continuous (continuous batching) against the fixed-batch sampler
`score_jax.sampler.generate` on a tiny random model:

- greedy tokens, masks, stop flags and log-probs equal `generate`'s on a left-padded batch
  with very different stop positions (stop ids from the greedy outputs, per-row limits);
- turn 2 appended to each slot's turn-1 cache equals `generate(..., cache=out.cache)`;
- slots are reused: N prompts on S < N slots are exactly N prefills, and the decode steps
  of a long-tailed batch are the hand-computed schedule, fewer than the fixed batches';
- sampled tokens do not depend on the number of slots (the per-prompt key rule);
- the same on a 2x2x2 (data, fsdp, tensor) mesh of 8 CPU devices.
"""

import jax
import numpy as np
import pytest

from score_jax import continuous as C
from score_jax import mesh as mesh_lib
from score_jax import sampler as S
from tests.test_sampler import PAD, make

W1, W2 = 12, 6

# Eight left-padded prompts of lengths 1..7 (ids 1..127 of the tiny model's 128).
LENGTHS = [7, 1, 4, 6, 2, 5, 3, 7]


def batch():
  rows = [[(13 * i + 7 * j) % 120 + 5 for j in range(n)] for i, n in enumerate(LENGTHS)]
  tokens, valid, _ = S.left_pad(rows, PAD)
  return tokens, valid


def fixed(graphdef, params, tokens, valid, width, stop_ids=(), limits=None, cache=None,
          cache_len=None, method=S.Greedy()):
  return S.generate(graphdef, params, tokens, valid, max_new_tokens=width, method=method,
                    stop_ids=stop_ids, pad_id=PAD, cache=cache, max_cache_len=cache_len,
                    max_new_tokens_B=limits)


def assert_same(attempt, ref, atol=2e-5):
  np.testing.assert_array_equal(attempt.tokens_BS, np.asarray(ref.tokens_BS))
  np.testing.assert_array_equal(attempt.valid_BS, np.asarray(ref.valid_BS))
  np.testing.assert_array_equal(attempt.done_B, np.asarray(ref.done_B))
  np.testing.assert_array_equal(attempt.lengths_B, np.asarray(ref.lengths_B))
  np.testing.assert_allclose(attempt.logprobs_BS, np.asarray(ref.logprobs_BS), atol=atol,
                             rtol=1e-5)


def long_tail_stops(graphdef, params, tokens, valid):
  """Stop ids that end the greedy rows at very different steps, and per-row limits."""
  free = np.asarray(fixed(graphdef, params, tokens, valid, W1).tokens_BS)
  stops = (int(free[1, 1]), int(free[4, 3]))
  limits = np.array([W1, W1, 2, W1, W1, 1, W1, 9], np.int32)
  return stops, limits


@pytest.mark.parametrize("slots, chunk", [(3, 4), (8, 16), (1, 3)])
def test_greedy_equals_fixed_batch_with_long_tail(slots, chunk):
  _, graphdef, params = make()
  tokens, valid = batch()
  stops, limits = long_tail_stops(graphdef, params, tokens, valid)
  ref = fixed(graphdef, params, tokens, valid, W1, stops, limits)
  lengths = np.asarray(ref.lengths_B)
  assert len(set(lengths.tolist())) >= 4, lengths      # the stops really differ
  out = C.generate_continuous(graphdef, params, C.prompt_rows(tokens, valid), widths=(W1,),
                              method=S.Greedy(), stop_ids=stops, pad_id=PAD, slots=slots,
                              chunk=chunk, limits_NA=limits[:, None])
  assert_same(out.attempts[0], ref)
  assert out.stats["prefills"] == len(LENGTHS)
  assert out.stats["extra_prefills"] == 0


def instruction(p, t, done):
  """The turn-t context: end_of_turn (here id 3) when attempt t-1 did not stop, then a
  prompt-dependent instruction, so that rows differ."""
  del t
  return ([] if done else [3]) + [50 + p, 51, 52]


def test_turn2_on_the_turn1_cache_equals_fixed_continuation():
  _, graphdef, params = make()
  tokens, valid = batch()
  stops, limits = long_tail_stops(graphdef, params, tokens, valid)
  cache_len = tokens.shape[1] + W1 + 4 + W2
  out1 = fixed(graphdef, params, tokens, valid, W1, stops, limits, cache_len=cache_len)
  done1 = np.asarray(out1.done_B)
  assert done1.any() and not done1.all()
  extra, extra_valid, _ = S.left_pad([instruction(p, 2, d) for p, d in enumerate(done1)], PAD,
                                     4)
  ref1 = jax.tree.map(np.asarray, out1.replace(cache=None))
  out2 = fixed(graphdef, params, extra, extra_valid, W2, stops, cache=out1.cache)
  for slots in (3, 8):
    out = C.generate_continuous(graphdef, params, C.prompt_rows(tokens, valid),
                                widths=(W1, W2), method=S.Greedy(), stop_ids=stops,
                                pad_id=PAD, slots=slots, chunk=4, extra_fn=instruction,
                                limits_NA=np.stack([limits, np.full(8, W2)], 1))
    assert_same(out.attempts[0], ref1)
    assert_same(out.attempts[1], out2)
    assert out.stats["prefills"] == 8 and out.stats["extra_prefills"] == 8


def test_slots_are_reused_and_the_long_tail_takes_fewer_steps():
  """Limits [16, 1, 1, 1, 1, 1, 1, 16] on 2 slots, one token per prompt chunk.

  Continuous: slot 0 decodes prompt 0 (16 steps); slot 1 decodes prompts 1..6 one step
  each (6 segments: each ends when the slot frees and the queue is not empty), then
  prompt 7 from step 7 to step 22 in a 7th segment: 22 decode steps, 8 prefills in
  1 + 6 + ... calls. The fixed path on batches of 2 rows waits for each batch's longest
  row: 16 + 1 + 1 + 16 = 34 steps.
  """
  _, graphdef, params = make()
  rows = [[10 + i] for i in range(8)]
  limits = np.array([16, 1, 1, 1, 1, 1, 1, 16], np.int32)
  out = C.generate_continuous(graphdef, params, rows, widths=(16,), method=S.Greedy(),
                              pad_id=PAD, slots=2, chunk=4, limits_NA=limits[:, None])
  assert out.stats["prefills"] == 8          # N prompts -> exactly N prefills
  assert out.stats["prefill_calls"] == 7     # the first two together, then one per refill
  assert out.stats["segments"] == 7
  assert out.stats["decode_steps"] == 22
  fixed_steps = sum(int(limits[i:i + 2].max()) for i in range(0, 8, 2))
  assert fixed_steps == 34 and out.stats["decode_steps"] < fixed_steps
  np.testing.assert_array_equal(out.attempts[0].lengths_B, limits)
  tokens, valid, _ = S.left_pad(rows, PAD)
  ref = fixed(graphdef, params, tokens, valid, 16, limits=limits)
  assert_same(out.attempts[0], ref)


def test_sampled_tokens_do_not_depend_on_the_slots():
  _, graphdef, params = make()
  tokens, valid = batch()
  rows = C.prompt_rows(tokens, valid)
  runs = [C.generate_continuous(graphdef, params, rows, widths=(W1, W2), method=S.TopK(8),
                                rng=jax.random.key(3), pad_id=PAD, slots=s, chunk=4,
                                extra_fn=instruction) for s in (1, 3, 8)]
  for run in runs[1:]:
    for a, b in zip(run.attempts, runs[0].attempts):
      np.testing.assert_array_equal(a.tokens_BS, b.tokens_BS)
      np.testing.assert_allclose(a.logprobs_BS, b.logprobs_BS, atol=2e-5, rtol=1e-5)
  other = C.generate_continuous(graphdef, params, rows, widths=(W1, W2), method=S.TopK(8),
                                rng=jax.random.key(4), pad_id=PAD, slots=3, chunk=4,
                                extra_fn=instruction)
  assert (other.attempts[0].tokens_BS != runs[0].attempts[0].tokens_BS).any()
  assert len(set(runs[0].attempts[0].tokens_BS.ravel().tolist())) > 8   # real draws


def test_on_finish_sees_every_attempt_once_with_its_tokens():
  _, graphdef, params = make()
  tokens, valid = batch()
  stops, limits = long_tail_stops(graphdef, params, tokens, valid)
  seen = {}

  def record(finished):
    for p, t, tokens_W, valid_W in finished:
      assert (p, t) not in seen
      seen[p, t] = (tokens_W, valid_W)

  out = C.generate_continuous(graphdef, params, C.prompt_rows(tokens, valid), widths=(W1, W2),
                              method=S.Greedy(), stop_ids=stops, pad_id=PAD, slots=3,
                              chunk=4, extra_fn=instruction, on_finish=record)
  assert sorted(seen) == [(p, t) for p in range(8) for t in (1, 2)]
  for (p, t), (tok, ok) in seen.items():
    np.testing.assert_array_equal(tok, out.attempts[t - 1].tokens_BS[p])
    np.testing.assert_array_equal(ok, out.attempts[t - 1].valid_BS[p])


def test_greedy_on_a_2x2x2_mesh_equals_fixed_batch():
  assert jax.device_count() == 8
  mesh = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  config, graphdef, params = make()
  params = jax.device_put(params, _shardings(params, mesh))
  tokens, valid = batch()
  stops, limits = long_tail_stops(graphdef, params, tokens, valid)
  cache_len = tokens.shape[1] + W1 + 4 + W2
  out1 = fixed(graphdef, params, tokens, valid, W1, stops, limits, cache_len=cache_len)
  extra, extra_valid, _ = S.left_pad(
      [instruction(p, 2, d) for p, d in enumerate(np.asarray(out1.done_B))], PAD, 4)
  ref1 = jax.tree.map(np.asarray, out1.replace(cache=None))
  out2 = fixed(graphdef, params, extra, extra_valid, W2, stops, cache=out1.cache)
  out = C.generate_continuous(graphdef, params, C.prompt_rows(tokens, valid), widths=(W1, W2),
                              method=S.Greedy(), stop_ids=stops, pad_id=PAD, slots=4,
                              chunk=4, extra_fn=instruction,
                              limits_NA=np.stack([limits, np.full(8, W2)], 1), mesh=mesh)
  assert_same(out.attempts[0], ref1)
  assert_same(out.attempts[1], out2)


def _shardings(params, mesh):
  from score_jax.model import transformer as M  # pylint: disable=import-outside-toplevel
  return M.param_shardings(params, mesh)


def test_argument_errors_name_the_problem():
  _, graphdef, params = make()
  with pytest.raises(ValueError, match="no ids"):
    C.generate_continuous(graphdef, params, [[1], []], widths=(4,), method=S.Greedy())
  with pytest.raises(ValueError, match="extra_fn"):
    C.generate_continuous(graphdef, params, [[1]], widths=(4, 4), method=S.Greedy())


@pytest.mark.slow
def test_benchmark_runs_small_and_checks_the_same_tokens():
  """benchmarks/continuous_sampler.py on 8 prompts (asserts the tokens of both paths agree;
  ~40 s on the 2-core CPU)."""
  import json  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "continuous_sampler.py"
  r = subprocess.run([sys.executable, str(script), "--prompts", "8", "--width", "16",
                      "--prompt-len", "4", "--slots", "2", "--repeats", "1"],
                     capture_output=True, text=True, timeout=600, check=True)
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result["useful_tokens"] > 0 and result["continuous_2"]["prefills"] == 8
  assert result["continuous_2"]["extra_prefills"] == 8
  assert result["continuous_2"]["row_steps"] == 2 * result["continuous_2"]["decode_steps"]
