"""The Task interface: problems of a split, turn-1 prompt, turn-2 instruction, reward.

Every task family (toy, math, gsm8k, mbpp, humaneval, the demo's synthetic task) implements
`Task`. The rollout and eval loops only talk to this interface; chat formatting of the
prompts for a model family is done by `score_jax.chat`, not by tasks.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem: a stable id, the turn-1 user message, and what grading needs."""
  uid: str
  prompt: str          # turn-1 user message (the task's template already applied)
  answer: Any          # gold answer (math: str) or tests (code: dict)
  meta: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)


class Task(abc.ABC):
  """A task family. Subclasses set `name` and `turn2_instruction`."""

  name: str = "task"
  turn2_instruction: str = ""     # the fixed self-correction instruction p (never reveals r(y1))
  splits: tuple[str, ...] = ()    # names accepted by `load`

  @abc.abstractmethod
  def load(self, split: str) -> list[Problem]:
    """All problems of `split`; raises ValueError naming the split if it is unknown/empty."""

  @abc.abstractmethod
  def reward(self, problem: Problem, response: str) -> float:
    """Oracle reward r(y, y*) in {0, 1} of one response (used in training and eval)."""

  def rewards(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[float]:
    """Batched rewards; tasks with process pools (math, code) override this."""
    return [self.reward(p, r) for p, r in zip(problems, responses, strict=True)]

  def answer_key(self, response: str) -> str | None:
    """What counts as "the answer" of a response, for the answer-changed rate.

    Math tasks return the extracted final answer; code tasks the normalised program.
    """
    return response.strip()

  def close(self) -> None:
    """Releases worker pools, if any."""


def check_split(task: Task, split: str) -> None:
  """Raises a clear error for a split the task does not know."""
  if split not in task.splits:
    raise ValueError(f"task {task.name!r} has no split {split!r}; choose one of {task.splits}")
