"""The continuous-batching rollout (`config.rollout.batching="continuous"`) and grading off
the critical path.

`MultiTurnSampler.rollout` calls `rollout(sampler, params, problems, ...)` here when every
attempt is sampled with one policy and none is given. Each problem runs its whole chain of
A attempts in one slot of `score_jax.continuous.generate_continuous`: attempt t >= 2
appends `end_of_turn` (where attempt t-1 did not end on a stop id: budget or stop text)
+ the instruction turn to the slot's
own cache, i.e. the turn-t context is built as soon as that row's attempt t-1 ends, and the
slot takes the next problem when its chain ends.

Grading: after each decode segment the host hands the attempts that ended in it (as one
batch) to `OverlapGrader`, which decodes and grades them on a worker thread
(`task.rewards`: the math grader pool / code sandbox are process pools, so the thread
mostly waits on pipes) while decoding goes on; `results()` collects them at the end. The
rewards are those of serial grading: each text is graded once by the same `task.rewards`.

Sampling keys (see `score_jax.continuous`): attempt t of problem row p draws with keys from
fold_in(fold_in(rng, p), t), so the draws differ from the fixed path's (greedy equals it).
On several processes every process runs the sampler over every row (same decisions on all)
and, with `process_local`, decodes and grades only its own rows (`multihost.row_split`).
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Sequence

import numpy as np

from score_jax import continuous
from score_jax import mesh as mesh_lib
from score_jax import multihost
from score_jax.rl.episode import layout
from score_jax.tasks import base


class OverlapGrader:
  """Decodes and grades batches of finished attempts on a worker thread.

  add(batch) with batch = [(row, attempt t, tokens_W, valid_W)]: submits one future;
  results() -> (texts[t - 1][row], rewards[t - 1][row]) for the rows given, once all are done.
  `wait_s` is the time results() waited for the grader after decoding ended (the grader on
  the critical path).
  """

  def __init__(self, task: base.Task, problems: Sequence[base.Problem], decode: Any,
               attempts: int):
    self.task, self.problems, self.decode, self.attempts = task, problems, decode, attempts
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                       thread_name_prefix="overlap-grader")
    self._futures: list[concurrent.futures.Future] = []
    self.wait_s = 0.0

  def _grade(self, batch):
    texts = self.decode(np.stack([b[2] for b in batch]), np.stack([b[3] for b in batch]))
    rewards = self.task.rewards([self.problems[b[0]] for b in batch], texts)
    return [(row, t, text, r) for (row, t, _, _), text, r in zip(batch, texts, rewards)]

  def add(self, batch: Sequence[continuous.Finished]) -> None:
    if batch:
      self._futures.append(self._pool.submit(self._grade, list(batch)))

  def close(self) -> None:
    """Stops the thread after the batches already submitted (their results dropped)."""
    self._pool.shutdown(wait=True, cancel_futures=True)

  def results(self, rows: Sequence[int]) -> tuple[list[list[str]], list[list[float]]]:
    start = time.perf_counter()
    texts: list[dict[int, str]] = [{} for _ in range(self.attempts)]
    rewards: list[dict[int, float]] = [{} for _ in range(self.attempts)]
    try:
      for future in self._futures:
        for row, t, text, r in future.result():
          texts[t - 1][row], rewards[t - 1][row] = text, r
    finally:
      self._pool.shutdown(wait=True)
      self.wait_s = time.perf_counter() - start
    missing = [(t + 1, r) for t in range(self.attempts) for r in rows if r not in texts[t]]
    if missing:
      raise RuntimeError(f"continuous_rollout: attempts (t, row) {missing[:8]} were never "
                         "graded; the sampler did not report them finished")
    return ([[texts[t][r] for r in rows] for t in range(self.attempts)],
            [[rewards[t][r] for r in rows] for t in range(self.attempts)])


def rollout(sampler: Any, params: Any, problems: Sequence[base.Problem], *, method: Any,
            rng: Any, result_type: Any, process_local: bool = False):
  """`MultiTurnSampler.rollout` of every attempt with `params`, by continuous batching;
  returns a `result_type` (rl.rollout.RolloutResult, passed in: no import cycle)."""
  lengths, A = sampler.lengths, sampler.lengths.attempts
  mesh = mesh_lib.mesh_of(params)
  split = (multihost.row_split(mesh, len(problems)) if process_local
           else multihost.RowSplit.everything(len(problems)))
  prompt_BP, prompt_valid_BP, truncated = sampler.encode_prompts(problems)
  mine = np.zeros(len(problems), bool)
  mine[split.rows] = True
  grader = OverlapGrader(sampler.task, problems, sampler.decode, A)
  second = list(sampler.second_turn_ids)

  def extra_fn(p: int, t: int, done: bool) -> list[int]:
    del p, t
    return ([] if done else [sampler.eot_id]) + second

  def on_finish(finished: list[continuous.Finished]) -> None:
    grader.add([f for f in finished if mine[f[0]]])

  try:
    out = continuous.generate_continuous(
        sampler.graphdef, params, continuous.prompt_rows(prompt_BP, prompt_valid_BP),
        widths=(lengths.turn1,) + (lengths.turn2,) * (A - 1), method=method, rng=rng,
        stop_ids=sampler.stop_ids, stop_sequences=sampler.stop_sequences,
        pad_id=sampler.pad_id, slots=sampler.slots,
        segment_steps=sampler.segment_steps, chunk=sampler.prefill_chunk,
        extra_fn=extra_fn, on_finish=on_finish, mesh=mesh)
  except BaseException:
    grader.close()
    raise
  texts, rewards = grader.results(split.rows)
  rows = split.rows
  prompt = (prompt_BP[rows], prompt_valid_BP[rows])
  attempts = [(a.tokens_BS[rows], a.valid_BS[rows]) for a in out.attempts]
  logps = [a.logprobs_BS[rows] for a in out.attempts]
  extras = [sampler.extra_chunk(sampler.ended_on_stop_id(a.tokens_BS[rows], a.valid_BS[rows],
                                                         a.done_B[rows]))
            for a in out.attempts[:-1]]
  episode = layout(prompt, attempts, extras, rewards, logps)
  local = split.take(list(problems))
  if not split.is_everything:
    truncated = sampler.encode_prompts(local)[2]
  return result_type(episode, local, texts, truncated,
                     split=split if process_local else None,
                     stats=dict(out.stats, grader_wait_s=grader.wait_s))
