"""Tests of score_jax.sampler: greedy == argmax of the full forward, log-probs, stop
tokens, padding invariance, turn-2 continuation on the cache, per-row limits, and the
distributions drawn by Temperature / TopK / TopP (chi-square with fixed seeds)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from score_jax import sampler as S
from score_jax.model import transformer as M
from tests.model_helpers import randomize
from score_jax.model.config import tiny

_forward = jax.jit(M.forward, static_argnums=0)
PAD = 0
T, STEPS, EXTRA = 6, 8, 5
CACHE_LEN = T + STEPS + EXTRA + STEPS      # room for turn 1 and turn 2




@functools.lru_cache(maxsize=None)
def make(family="llama", **overrides):
  config = tiny(family, **overrides)
  graphdef, params = nnx.split(M.Transformer(config, rngs=nnx.Rngs(0)))
  return config, graphdef, randomize(params)


def prompts():
  """Three prompts, left-padded to T: lengths 6, 4, 2."""
  tokens = np.array([[11, 12, 13, 14, 15, 16],
                     [PAD, PAD, 21, 22, 23, 24],
                     [PAD, PAD, PAD, PAD, 31, 32]], np.int32)
  return tokens, tokens != PAD


@functools.lru_cache(maxsize=None)
def greedy_run():
  _, graphdef, params = make()
  tokens, valid = prompts()
  return S.generate(graphdef, params, tokens, valid, max_new_tokens=STEPS, method=S.Greedy(),
                    pad_id=PAD, max_cache_len=CACHE_LEN)


def full_logprobs(graphdef, params, tokens, valid):
  logits, _ = _forward(graphdef, params, jnp.asarray(tokens), jnp.asarray(valid))
  return np.asarray(jax.nn.log_softmax(logits, axis=-1))


def test_greedy_is_argmax_of_full_forward_with_its_logprobs():
  _, graphdef, params = make()
  tokens, valid = prompts()
  out = greedy_run()
  assert out.tokens_BS.shape == (3, STEPS) and out.valid_BS.all()
  np.testing.assert_array_equal(out.lengths_B, [STEPS] * 3)
  assert not out.done_B.any()
  seq = np.concatenate([tokens, out.tokens_BS], 1)
  seq_valid = np.concatenate([valid, out.valid_BS], 1)
  logp = full_logprobs(graphdef, params, seq, seq_valid)[:, T - 1:-1]   # predicts new tokens
  np.testing.assert_array_equal(logp.argmax(-1), out.tokens_BS)
  picked = np.take_along_axis(logp, np.asarray(out.tokens_BS)[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.logprobs_BS, picked, rtol=1e-5, atol=1e-5)
  assert len(set(np.asarray(out.tokens_BS).ravel().tolist())) > 4   # not a degenerate model
  # Deterministic, and the second call reuses the compiled program.
  before = S._generate_jit._cache_size()
  again = S.generate(graphdef, params, tokens, valid, max_new_tokens=STEPS, method=S.Greedy(),
                     pad_id=PAD, max_cache_len=CACHE_LEN)
  np.testing.assert_array_equal(again.tokens_BS, out.tokens_BS)
  assert S._generate_jit._cache_size() == before


def test_stop_token_ends_rows_with_pads_and_zero_logprobs():
  _, graphdef, params = make()
  tokens, valid = prompts()
  free = greedy_run()
  stop = int(free.tokens_BS[0, 2])
  out = S.generate(graphdef, params, tokens, valid, max_new_tokens=STEPS, method=S.Greedy(),
                   stop_ids=(stop,), pad_id=PAD, max_cache_len=CACHE_LEN)
  for b in range(3):
    row = list(np.asarray(free.tokens_BS[b]))
    n = row.index(stop) + 1 if stop in row else STEPS
    assert int(out.lengths_B[b]) == n and bool(out.done_B[b]) == (stop in row)
    np.testing.assert_array_equal(out.tokens_BS[b, :n], row[:n])
    np.testing.assert_array_equal(out.tokens_BS[b, n:], PAD)
    np.testing.assert_array_equal(out.valid_BS[b], np.arange(STEPS) < n)
    np.testing.assert_allclose(out.logprobs_BS[b, :n], free.logprobs_BS[b, :n], rtol=1e-6)
    np.testing.assert_array_equal(out.logprobs_BS[b, n:], 0.0)
  assert int(out.lengths_B[0]) <= 3
  # The cache holds exactly the valid new tokens (invalid after the stop).
  steps_run = int(out.cache.index) - T
  np.testing.assert_array_equal(out.cache.valid_BS[:, T:T + steps_run],
                                out.valid_BS[:, :steps_run])
  np.testing.assert_array_equal(out.cache.pos_B, valid.sum(1) + np.asarray(out.lengths_B))


def test_prompt_alone_equals_left_padded_in_batch():
  _, graphdef, params = make()
  tokens, _ = prompts()
  batch = greedy_run()
  alone = S.generate(graphdef, params, tokens[1:2, 2:], np.ones((1, 4), bool),
                     max_new_tokens=STEPS, method=S.Greedy(), pad_id=PAD)
  np.testing.assert_array_equal(alone.tokens_BS[0], batch.tokens_BS[1])
  np.testing.assert_allclose(alone.logprobs_BS[0], batch.logprobs_BS[1], rtol=1e-5, atol=1e-5)


def test_generate_into_a_given_empty_cache():
  config, graphdef, params = make()
  tokens, valid = prompts()
  cache = M.init_cache(config, 3, T + STEPS)
  out = S.generate(graphdef, params, tokens, valid, max_new_tokens=STEPS, method=S.Greedy(),
                   pad_id=PAD, cache=cache)
  np.testing.assert_array_equal(out.tokens_BS, greedy_run().tokens_BS)
  assert int(out.cache.index) == T + STEPS and out.cache.max_len == T + STEPS
  with pytest.raises(ValueError, match="cache too small"):
    S.generate(graphdef, params, tokens, valid, max_new_tokens=STEPS, method=S.Greedy(),
               cache=out.cache)


def test_per_row_max_new_tokens():
  _, graphdef, params = make()
  tokens, valid = prompts()
  free = greedy_run()
  out = S.generate(graphdef, params, tokens, valid, max_new_tokens=STEPS, method=S.Greedy(),
                   pad_id=PAD, max_cache_len=CACHE_LEN, max_new_tokens_B=[2, 8, 0])
  np.testing.assert_array_equal(out.lengths_B, [2, 8, 0])
  np.testing.assert_array_equal(out.valid_BS, np.arange(STEPS)[None] < np.array([[2], [8], [0]]))
  np.testing.assert_array_equal(np.where(out.valid_BS, free.tokens_BS, PAD), out.tokens_BS)
  assert not out.done_B.any()


def test_turn2_continuation_equals_generation_from_scratch():
  """Appending x2's extra tokens to the turn-1 cache == prefilling [x, y1, extra]."""
  _, graphdef, params = make()
  tokens, valid = prompts()
  turn1 = S.generate(graphdef, params, tokens, valid, max_new_tokens=STEPS, method=S.Greedy(),
                     stop_ids=(int(greedy_run().tokens_BS[0, 2]),), pad_id=PAD,
                     max_cache_len=CACHE_LEN)
  y1, y1_valid = np.asarray(turn1.tokens_BS), np.asarray(turn1.valid_BS)
  assert not y1_valid.all()                       # row 0 stopped: pads inside the context
  extra = np.array([[41, 42, 43, 44, 45], [PAD, 51, 52, 53, 54], [PAD, PAD, PAD, 61, 62]],
                   np.int32)
  extra_valid = extra != PAD
  turn2 = S.generate(graphdef, params, extra, extra_valid, max_new_tokens=STEPS,
                     method=S.Greedy(), pad_id=PAD, cache=turn1.cache)
  full = np.concatenate([tokens, y1, extra], 1)
  full_valid = np.concatenate([valid, y1_valid, extra_valid], 1)
  scratch = S.generate(graphdef, params, full, full_valid, max_new_tokens=STEPS,
                       method=S.Greedy(), pad_id=PAD)
  np.testing.assert_array_equal(turn2.tokens_BS, scratch.tokens_BS)
  np.testing.assert_allclose(turn2.logprobs_BS, scratch.logprobs_BS, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(turn2.cache.pos_B, full_valid.sum(1) + STEPS)


def test_bfloat16_generate_logprobs_match_full_forward():
  config, graphdef, params = make("gemma3")
  graphdef_bf16, _ = M.abstract_params(config.replace(dtype="bfloat16"))
  tokens, valid = prompts()
  out = S.generate(graphdef_bf16, params, tokens, valid, max_new_tokens=STEPS,
                   method=S.Temperature(1.0), rng=jax.random.key(1), pad_id=PAD)
  assert out.cache.k_BSKH[0].dtype == jnp.bfloat16 and out.logprobs_BS.dtype == jnp.float32
  seq = np.concatenate([tokens, out.tokens_BS], 1)
  seq_valid = np.concatenate([valid, out.valid_BS], 1)
  logp = full_logprobs(graphdef, params, seq, seq_valid)[:, T - 1:-1]      # float32 model
  picked = np.take_along_axis(logp, np.asarray(out.tokens_BS)[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.logprobs_BS, picked, atol=0.25)
  assert np.abs(np.asarray(out.logprobs_BS) - picked).mean() < 0.05


def test_generate_rejects_a_too_small_cache():
  _, graphdef, params = make()
  tokens, valid = prompts()
  with pytest.raises(ValueError, match="max_cache_len"):
    S.generate(graphdef, params, tokens, valid, max_new_tokens=STEPS, method=S.Greedy(),
               max_cache_len=T + STEPS - 1)


def _chi2(counts, probs):
  """Pearson chi-square statistic over the categories with probs > 0."""
  n = counts.sum()
  keep = probs > 0
  expected = n * probs[keep]
  return float(((counts[keep] - expected) ** 2 / expected).sum())


# 99.9% quantiles of chi-square with df = 1..7 degrees of freedom.
_CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}

LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], np.float32)
# softmax(LOGITS) = [.5609, .2063, .1252, .0759, .0279, .0038]; cumulative .5609, .7672,
# .8924: top-p 0.8 keeps tokens {0, 1, 2}, top-p 0.5 keeps {0}.


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


@pytest.mark.parametrize("method, expected", [
    (S.Temperature(0.7), _softmax(LOGITS / 0.7)),
    (S.TopK(3, t=1.5), np.r_[_softmax(LOGITS[:3] / 1.5), 0, 0, 0]),
    (S.TopP(0.8), np.r_[_softmax(LOGITS[:3]), 0, 0, 0]),
    (S.TopP(0.8, t=2.0), np.r_[_softmax(LOGITS[:4] / 2.0), 0, 0]),
    (S.TopP(0.5), np.array([1.0, 0, 0, 0, 0, 0])),
])
def test_methods_draw_the_intended_distribution(method, expected):
  n = 20_000
  filtered = np.asarray(method.apply(jnp.asarray(LOGITS)[None]))[0]
  np.testing.assert_array_equal(np.isfinite(filtered), expected > 0)
  draws = method.sample(jax.random.key(0), jnp.broadcast_to(jnp.asarray(LOGITS), (n, 6)))
  counts = np.bincount(np.asarray(draws), minlength=6)
  assert counts[expected == 0].sum() == 0
  df = int((expected > 0).sum()) - 1
  if df:
    assert _chi2(counts, expected) < _CHI2_999[df]


def test_topp_with_temperature_by_hand():
  # LOGITS / 2 = [1, .5, .25, 0, -.5, -1.5]; exp = [2.718, 1.649, 1.284, 1, .607, .223],
  # sum 7.480: probs [.3634, .2204, .1717, .1337, .0811, .0298]; mass before each
  # token: 0, .363, .584, .756, .889 -> p=0.8 keeps 4 tokens, p=0.9 keeps 5.
  logits = jnp.asarray(LOGITS)[None]
  kept = np.isfinite(np.asarray(S.TopP(0.8, t=2.0).apply(logits))[0])
  np.testing.assert_array_equal(kept, [1, 1, 1, 1, 0, 0])
  kept = np.isfinite(np.asarray(S.TopP(0.9, t=2.0).apply(logits))[0])
  np.testing.assert_array_equal(kept, [1, 1, 1, 1, 1, 0])


def test_greedy_apply_and_sample():
  logits = jnp.array([[0.1, 3.0, -1.0], [5.0, 4.0, 4.5]])
  np.testing.assert_array_equal(S.Greedy().sample(None, logits), [1, 0])
  np.testing.assert_array_equal(np.isfinite(S.Greedy().apply(logits)),
                                [[0, 1, 0], [1, 0, 0]])


def test_sampling_through_generate_matches_model_distribution():
  """First sampled token over many identical rows ~ TopK(4, t=1.5) of the model's logits;
  its log-prob is the raw (temperature-1, unfiltered) log-softmax."""
  config, graphdef, params = make("llama", vocab_size=8, num_layers=1)
  n = 2000
  prompt = np.tile(np.array([[3, 1, 4, 1, 5]], np.int32), (n, 1))
  valid = np.ones_like(prompt, bool)
  method = S.TopK(4, t=1.5)
  out = S.generate(graphdef, params, prompt, valid, max_new_tokens=2, method=method,
                   rng=jax.random.key(7), pad_id=PAD)
  logits, _ = _forward(graphdef, params, jnp.asarray(prompt[:1]), jnp.asarray(valid[:1]))
  raw = logits[0, -1]
  expected = np.asarray(jax.nn.softmax(method.apply(raw[None])[0]))
  first = np.asarray(out.tokens_BS[:, 0])
  counts = np.bincount(first, minlength=config.vocab_size)
  assert (expected > 0).sum() == 4 and counts[expected == 0].sum() == 0
  assert _chi2(counts, expected) < _CHI2_999[3]
  np.testing.assert_allclose(out.logprobs_BS[:, 0],
                             np.asarray(jax.nn.log_softmax(raw))[first], rtol=1e-5, atol=1e-6)
  # Same key -> same draws; another key -> other draws.
  same = S.generate(graphdef, params, prompt, valid, max_new_tokens=2, method=method,
                    rng=jax.random.key(7), pad_id=PAD)
  other = S.generate(graphdef, params, prompt, valid, max_new_tokens=2, method=method,
                     rng=jax.random.key(8), pad_id=PAD)
  np.testing.assert_array_equal(same.tokens_BS, out.tokens_BS)
  assert (np.asarray(other.tokens_BS) != np.asarray(out.tokens_BS)).any()


def test_method_validation():
  with pytest.raises(ValueError, match="Greedy"):
    S.Temperature(0.0)
  with pytest.raises(ValueError, match="k=0"):
    S.TopK(0)
  with pytest.raises(ValueError, match="p=1.5"):
    S.TopP(1.5)
