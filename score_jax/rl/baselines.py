"""Training data of the paper's supervised baselines, built from the model's own samples.

- STaR (Zelikman et al.; SCoRe paper Sec. 4, "STaR D+"): sample two-turn traces, keep those
  that end right (wrong -> right, plus right -> right when `include_right_right`), and fine-tune
  on their second attempts. We run it online: each step samples from the current policy, which
  approximates the paper's rounds of generate -> filter -> fine-tune.
- Pair-SFT (Welleck et al.; SCoRe paper "Pair-SFT"): the frozen base model answers each
  problem k times (both attempts); each wrong first attempt is paired with a correct answer
  the base model itself sampled for the same problem, and the model is fine-tuned on that
  answer as the second attempt. Problems with no correct sample are dropped. No gold
  solution is needed, so it runs on any task (MATH, MBPP, ...). `pair_sft_targets` makes
  the pairs (a pure function of the sampled texts and rewards), `pair_sft_episode` the
  batch.

Both return Episodes for the supervised step (`score_jax.rl.step.make_sft_step`, which trains
every attempt's trained tokens): here only the kept rows' y2 tokens. Both are the paper's
two-attempt methods: they raise on rollouts of more attempts (config.rollout.num_attempts).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from score_jax.rl import rollout as rollout_lib


def _two_attempts(method: str, episode: rollout_lib.Episode) -> None:
  if episode.num_attempts != 2:
    raise ValueError(f"{method} is defined for two attempts (the paper's protocol); these "
                     f"rollouts have {episode.num_attempts}: set "
                     f"--config.rollout.num_attempts=2 for {method} runs")


def star_episode(result: rollout_lib.RolloutResult, *, include_right_right: bool = True
                 ) -> tuple[rollout_lib.Episode, float]:
  """Keeps the y2 tokens of successful traces; returns (episode, fraction of rows kept)."""
  ep = result.episode
  _two_attempts("STaR", ep)
  keep = ep.r2_B > 0.5
  if not include_right_right:
    keep &= ep.r1_B < 0.5
  return ep.train_only(2, keep), float(keep.mean())


# One sampled row, as `pair_sft_targets` reads it: (problem uid, y1, r1, y2, r2).
SampleRow = tuple[str, str, float, str, float]


def sample_rows(result: rollout_lib.RolloutResult) -> list[SampleRow]:
  """The rows of `result` (this process's) as `pair_sft_targets` reads them."""
  ep = result.episode
  _two_attempts("Pair-SFT", ep)
  return [(p.uid, a, float(x), b, float(z)) for p, a, x, b, z in
          zip(result.problems, result.y1, ep.r1_B.tolist(), result.y2, ep.r2_B.tolist())]


def pair_sft_targets(rows: Sequence[SampleRow]) -> tuple[list[str | None], dict[str, float]]:
  """The second attempt each row is trained on (None: not trained), and the pairing's stats.

  Per problem (rows with the same uid), its correct responses are the distinct texts of the
  attempts graded right, in row order, y1 before y2 within a row. The j-th row (in row
  order) of that problem whose first attempt is wrong gets correct response j mod (their
  number): deterministic, and spread over the distinct correct answers like the paper's
  "random correct answer". Rows whose first attempt is right, and every row of a problem
  with no correct response, get None.

  Stats: `kept_fraction` (rows with a target / rows) and `problems_solved_fraction`
  (problems with at least one correct response / problems).
  """
  correct: dict[str, list[str]] = {}
  for uid, y1, r1, y2, r2 in rows:
    texts = correct.setdefault(uid, [])
    for text, r in ((y1, r1), (y2, r2)):
      if r > 0.5 and text not in texts:
        texts.append(text)
  wrong_seen: dict[str, int] = {}
  targets: list[str | None] = []
  for uid, _, r1, _, _ in rows:
    if r1 > 0.5 or not correct[uid]:
      targets.append(None)
      continue
    j = wrong_seen.get(uid, 0)
    wrong_seen[uid] = j + 1
    targets.append(correct[uid][j % len(correct[uid])])
  n_rows, n_problems = max(len(rows), 1), max(len(correct), 1)
  return targets, {
      "kept_fraction": sum(t is not None for t in targets) / n_rows,
      "problems_solved_fraction": sum(bool(t) for t in correct.values()) / n_problems}


def pair_sft_episode(two_turn: rollout_lib.TwoTurnSampler, result: rollout_lib.RolloutResult,
                     all_rows: Sequence[SampleRow] | None = None
                     ) -> tuple[rollout_lib.Episode, dict[str, Any]]:
  """Pair-SFT's batch from the base model's rollouts; returns (episode, stats).

  Args:
    two_turn: the run's sampler (tokenizer, chat format, lengths, task).
    result: the base model's two-turn rollouts of the step: every problem k times (on
      several processes, this process's rows of them).
    all_rows: `sample_rows` of EVERY row of the step, in global row order (on several
      processes `multihost.gather_rows(sample_rows(result), result.split)`, so that a
      problem's correct samples held by another process count); default: `result`'s rows,
      which is every row on one process.

  Row i of the episode is [x, y1 of row i, instruction, its paired correct response] laid
  out by `rollout.demonstration_episode` (a response longer than the turn-2 budget is cut
  and still ends its turn; a row whose cut response is no longer graded right is dropped).
  Only the y2 tokens of kept rows are trained. Stats: `problems_solved_fraction` (over
  all rows, see `pair_sft_targets`) and `kept_fraction`, the share of this process's rows
  that are trained.
  """
  _two_attempts("Pair-SFT", result.episode)
  rows = sample_rows(result) if all_rows is None else list(all_rows)
  batch = len(result.problems) if result.split is None else result.split.batch
  if len(rows) != batch:
    raise ValueError(f"pair_sft_episode: all_rows has {len(rows)} rows but the step has "
                     f"{batch}; pass every row of the step, "
                     f"multihost.gather_rows(sample_rows(result), result.split)")
  local = range(batch) if result.split is None else result.split.rows
  targets, stats = pair_sft_targets(rows)
  targets = [targets[int(i)] for i in local]
  paired = np.array([t is not None for t in targets], bool)
  # Rows without a pair keep their own y2 as a placeholder: it is laid out, never trained.
  answers = [t if t is not None else y2 for t, y2 in zip(targets, result.y2)]
  episode = rollout_lib.demonstration_episode(two_turn, result.problems, result.y1, answers)
  keep = paired & (episode.r2_B > 0.5)
  episode = episode.train_only(2, keep)
  return episode, {"problems_solved_fraction": stats["problems_solved_fraction"],
                   "kept_fraction": float(keep.mean()) if len(keep) else 0.0}
