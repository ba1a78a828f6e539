"""Tests of the continuous-batching rollout (`config.rollout.batching="continuous"`,
score_jax.rl.continuous_rollout) against the fixed-batch rollout:

- greedy rollouts of 2 and 3 attempts give the same Episode (tokens, masks, log-probs),
  texts and rewards as the fixed path, on fewer slots than rows, on the (1, 8, 1) mesh of
  tests/rl/test_rollout.py and on a 2x2x2 (data, fsdp, tensor) mesh;
- the overlapped grader gives the rewards of serial grading (the real MATH grader on real
  MATH500 solutions, right and wrong), and the rollout's rewards are serial `task.rewards`;
- the config switch: rollout.batching / slots / segment_steps reach the sampler;
- 2 processes x 4 CPU devices (real jax.distributed): process-local rows of the continuous
  rollout are those of the fixed rollout. This file is also the program those processes
  run: `python -m tests.rl.test_continuous_rollout MODE ARGS...`.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np
import pytest

from score_jax import mesh as mesh_lib
from score_jax import multihost
from score_jax import sampler as sampler_lib
from score_jax.model import config as model_config_lib
from score_jax.model import transformer as model_lib
from score_jax.rl import continuous_rollout
from score_jax.rl import rollout as rollout_lib
from tests.rl.test_rollout import (PROBLEMS, _small_sampler,
                                   assert_logprobs_are_the_trainers)

# Seed 4 of the tiny model stops its greedy rows at different steps (attempt 1: lengths
# 2, 2, 2, 2, 2, 2, 4, 4; attempt 2: 2, ..., 2, 1, 1) and gets some rewards right.
SEED = 4


@functools.lru_cache(maxsize=None)
def _model(data=1, fsdp=-1, tensor=1):
  mesh = mesh_lib.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
  config = model_config_lib.tiny("llama", vocab_size=16)
  return model_lib.init_params(config, mesh, seed=SEED)[1]


def _pair(sampler, params, slots=3, segment_steps=64):
  """(fixed, continuous) greedy rollouts of PROBLEMS."""
  kw = dict(method=sampler_lib.Greedy(), rng=jax.random.key(3))
  fixed = sampler.rollout(params, params, PROBLEMS, **kw)
  cont = sampler.with_batching("continuous", slots=slots, segment_steps=segment_steps)
  return fixed, cont.rollout(params, params, PROBLEMS, **kw)


def assert_same_rollout(fixed, cont):
  a, b = fixed.episode, cont.episode
  for name in ("tokens_BT", "valid_BT", "attempt_BT", "rewards_BA"):
    np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
  np.testing.assert_allclose(b.sampler_logprobs_BT, a.sampler_logprobs_BT, rtol=1e-5,
                             atol=2e-5)
  assert cont.texts == fixed.texts
  assert cont.problems == fixed.problems
  assert cont.truncated_prompts == fixed.truncated_prompts


def test_continuous_rollout_equals_fixed_greedy_two_and_three_attempts():
  params = _model()
  sampler = _small_sampler()
  for attempts in (2, 3):
    s = sampler.with_attempts(attempts)
    fixed, cont = _pair(s, params, slots=3, segment_steps=2)
    assert_same_rollout(fixed, cont)
    assert len(cont.texts) == attempts and fixed.stats is None
    assert cont.stats["prefills"] == len(PROBLEMS)
    assert cont.stats["extra_prefills"] == len(PROBLEMS) * (attempts - 1)
    lengths = fixed.episode.valid_BT[:, s.lengths.attempt_cols(1)].sum(1)
    assert lengths.min() < lengths.max()          # rows really stop at different steps
    # The rewards are the task's serial rewards of the decoded attempts.
    for t in range(1, attempts + 1):
      np.testing.assert_array_equal(cont.episode.reward(t),
                                    s.task.rewards(cont.problems, cont.texts[t - 1]))
    assert set(cont.episode.r1_B.tolist()) == {0.0, 1.0}   # not a constant reward


def test_continuous_rollout_on_a_2x2x2_mesh_equals_fixed():
  params = _model(data=2, fsdp=2, tensor=2)
  fixed, cont = _pair(_small_sampler(), params, slots=4)
  assert_same_rollout(fixed, cont)
  assert dict(mesh_lib.mesh_of(params).shape) == dict(data=2, fsdp=2, tensor=2)


def test_sampled_continuous_rollout_logprobs_are_the_trainers():
  """Temperature 1 (the training setting): only tokenizer ids are drawn, every attempt ends
  with a stop id or at its budget, and one forward pass over the Episode gives the
  sampler's log-probs at every attempt token (same positions, same context)."""
  params = _model()
  sampler = _small_sampler().with_batching("continuous", slots=3, segment_steps=4)
  result = sampler.rollout(params, params, PROBLEMS, method=sampler_lib.Temperature(1.0),
                           rng=jax.random.key(5))
  ep = result.episode
  attempts = ep.attempt_BT > 0
  assert ep.tokens_BT.max() < 7 and (ep.sampler_logprobs_BT[attempts] < 0).all()
  for t in (1, 2):
    cols = sampler.lengths.attempt_cols(t)
    n_B = ep.valid_BT[:, cols].sum(1)
    last_B = ep.tokens_BT[:, cols][np.arange(len(n_B)), n_B - 1]
    assert (np.isin(last_B, sampler.stop_ids) | (n_B == cols.stop - cols.start)).all()
    np.testing.assert_array_equal(ep.reward(t), sampler.task.rewards(PROBLEMS,
                                                                     result.texts[t - 1]))
  assert len(set(result.y1)) > 1                                 # really sampled
  assert_logprobs_are_the_trainers(sampler.graphdef, params, ep)


def test_off_policy_turn1_and_given_attempts_take_the_fixed_path():
  params = _model()
  params2 = jax.tree.map(lambda x: x, params)
  sampler = _small_sampler()
  kw = dict(method=sampler_lib.Greedy(), rng=jax.random.key(3))
  cont = sampler.with_batching("continuous", slots=3)
  off = cont.rollout(params, params2, PROBLEMS, **kw)
  assert off.stats is None                      # the fixed path ran
  assert_same_rollout(sampler.rollout(params, params2, PROBLEMS, **kw), off)
  given = cont.rollout(params, params, PROBLEMS, given=[["ab"] * len(PROBLEMS)], **kw)
  assert given.stats is None and given.y1 == ["ab"] * len(PROBLEMS)


def test_batching_config_reaches_the_sampler_and_bad_values_fail():
  sampler = _small_sampler()
  cont = sampler.with_batching("continuous", slots=4, segment_steps=8)
  assert (cont.batching, cont.slots, cont.segment_steps) == ("continuous", 4, 8)
  assert cont.with_attempts(3).batching == "continuous"
  assert cont.with_instruction("ba").slots == 4
  with pytest.raises(ValueError, match="config.rollout.batching='dynamic'"):
    sampler.with_batching("dynamic")
  kwargs = rollout_lib.batching_kwargs(ml_collections.ConfigDict(
      dict(batching="continuous", slots=2, segment_steps=16)))
  assert kwargs == dict(batching="continuous", slots=2, segment_steps=16)



def test_the_runs_config_reaches_the_trainers_sampler():
  """build.Components.two_turn (what Trainer, validation and evaluate use) passes
  config.rollout.batching / slots / segment_steps to the sampler (it once dropped them)."""
  from score_jax import build as build_lib  # pylint: disable=import-outside-toplevel
  from score_jax import config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load("configs/tiny.py", ["--config.rollout.batching=continuous",
                                               "--config.rollout.slots=3",
                                               "--config.rollout.segment_steps=5"])
  sampler = build_lib.build(config, with_params=False).two_turn(4, 4)
  assert (sampler.batching, sampler.slots, sampler.segment_steps) == ("continuous", 3, 5)

# --- grading off the critical path: the real MATH grader ----------------------------------

def test_overlap_grader_equals_serial_grading_on_real_math(shared_data):
  from score_jax.tasks.math.task import MathTask  # pylint: disable=import-outside-toplevel
  task = MathTask(shared_data, grader_workers=2, timeout_s=20.0)
  try:
    problems = task.load("test")[:12]
    # Right answers (the reference solutions), wrong ones (another problem's solution),
    # and no answer at all.
    responses = [p.meta["solution"] if i % 3 == 0 else
                 problems[(i + 1) % 12].meta["solution"] if i % 3 == 1 else "I give up."
                 for i, p in enumerate(problems)]
    serial = task.rewards(problems, responses)
    assert serial.count(1.0) >= 3 and serial.count(0.0) >= 7
    decode = lambda tokens_BW, valid_BW: [responses[int(row[0])] for row in tokens_BW]  # noqa: E731
    grader = continuous_rollout.OverlapGrader(task, problems, decode, attempts=2)
    order = [5, 0, 11, 3, 7, 1, 2, 9, 4, 10, 8, 6]      # finishing order, in 3 batches
    for b in range(3):
      grader.add([(r, 1, np.array([r, 0]), np.array([True, False]))
                  for r in order[4 * b:4 * b + 4]])
    grader.add([(r, 2, np.array([r]), np.array([True])) for r in range(12)])
    texts, rewards = grader.results(list(range(12)))
    assert rewards[0] == serial and rewards[1] == serial
    assert texts[0] == responses and texts[1] == responses
  finally:
    task.close()


def test_overlap_grader_reports_rows_never_finished():
  sampler = _small_sampler()
  grader = continuous_rollout.OverlapGrader(sampler.task, PROBLEMS, sampler.decode, attempts=2)
  grader.add([(0, 1, np.array([4, 3]), np.array([True, True]))])
  with pytest.raises(RuntimeError, match=r"never graded"):
    grader.results([0])


# --- two processes -------------------------------------------------------------------------

def worker_rollouts(argv: list[str]) -> None:
  """Fixed and continuous greedy rollouts, process-local and whole, on 2 processes."""
  out_dir = pathlib.Path(argv[0])
  multihost.maybe_initialize_distributed(ml_collections.ConfigDict({"distributed": True}))
  params = _model()
  sampler = _small_sampler()
  kw = dict(method=sampler_lib.Greedy(), rng=jax.random.key(3))
  cont = sampler.with_batching("continuous", slots=4, segment_steps=3)
  got = {}
  for name, s, local in (("fixed", sampler, True), ("cont", cont, True),
                         ("cont_whole", cont, False)):
    r = s.rollout(params, params, PROBLEMS, process_local=local, **kw)
    got[name] = dict(rows=(r.split.rows.tolist() if r.split else None), texts=r.texts,
                     tokens=r.episode.tokens_BT.tolist(), r1=r.episode.r1_B.tolist(),
                     r2=r.episode.r2_B.tolist(), logp=r.episode.sampler_logprobs_BT.tolist())
  (out_dir / f"rollouts{jax.process_index()}.json").write_text(json.dumps(got))


WORKERS = {"rollouts": worker_rollouts}


def _launch(mode, out_dir: pathlib.Path, processes=2, devices=4, timeout=420):
  from tests.test_multiprocess import launch  # pylint: disable=import-outside-toplevel
  launch(mode, [str(out_dir)], processes=processes, devices=devices, log_dir=out_dir,
         timeout=timeout, module="tests.rl.test_continuous_rollout")


@pytest.mark.slow
def test_two_processes_continuous_rollout_equals_fixed(tmp_path):
  _launch("rollouts", tmp_path)
  got = [json.loads((tmp_path / f"rollouts{i}.json").read_text()) for i in range(2)]
  params = _model()
  one = _small_sampler().rollout(params, params, PROBLEMS, method=sampler_lib.Greedy(),
                                 rng=jax.random.key(3))
  for i, g in enumerate(got):
    fixed, cont, whole = g["fixed"], g["cont"], g["cont_whole"]
    assert fixed["rows"] == cont["rows"] == list(range(4 * i, 4 * i + 4))
    for key in ("texts", "tokens", "r1", "r2"):
      assert cont[key] == fixed[key], key
    np.testing.assert_allclose(cont["logp"], fixed["logp"], rtol=1e-5, atol=2e-5)
    assert whole["rows"] is None and whole["texts"] == one.texts
    assert whole["tokens"] == one.episode.tokens_BT.tolist()


if __name__ == "__main__":
  WORKERS[sys.argv[1]](sys.argv[2:])
