"""The Task interface: problems of a split, turn-1 prompt, turn-2 instruction, reward.

Every task family (toy, math, gsm8k, mbpp, humaneval, the demo's synthetic task) implements
`Task`. The rollout and eval loops only talk to this interface; chat formatting of the
prompts for a model family is done by `score_jax.text.chat`, not by tasks.

Optional capabilities are declared here and raise `MissingCapability` (naming the task, what
needs the capability and what to do instead) unless a task provides them:
`demonstration` (the sft stage's warm-up data), `alphabet` (the character tokenizer),
`corrupt` and `perturb` (counterfactual first attempts, `score_jax.counterfactual`). Every
task is built the same way, by `Task.from_config(task_cfg)` on the config's `task` section
(`score_jax.tasks.registry`).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem: a stable id, the turn-1 user message, and what grading needs."""
  uid: str
  prompt: str          # turn-1 user message (the task's template already applied)
  answer: Any          # gold answer (math: str) or tests (code: dict)
  meta: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)


class MissingCapability(ValueError):
  """A task lacks an optional capability that a stage or setting needs."""


class Task(abc.ABC):
  """A task family. Subclasses set `name` and `turn2_instruction`."""

  name: str = "task"
  turn2_instruction: str = ""     # the fixed self-correction instruction p (never reveals r(y1))
  splits: tuple[str, ...] = ()    # names accepted by `load`
  # Texts at which an attempt ends (the sampler stops a row whose generated tokens end with
  # one; `score_jax.stops`): the text is kept at the end of the attempt, like a stop token,
  # so the grader sees it and must ignore it; the next turn's context gets end_of_turn after
  # it. () : only the end-of-turn / eos tokens end an attempt.
  stop_texts: tuple[str, ...] = ()

  @classmethod
  def from_config(cls, task_cfg: Mapping[str, Any]) -> "Task":
    """The task of the config's `task` section (data_dir, workers, timeout_s, ...).

    File-based tasks (the default here) read `data_dir` and grade in `workers` processes
    with a `timeout_s` limit; synthetic tasks override this.
    """
    return cls(task_cfg["data_dir"], workers=task_cfg["workers"],
               timeout_s=task_cfg["timeout_s"])

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

  # --- optional capabilities -------------------------------------------------------------
  def demonstration(self, problem: Problem, rng: np.random.Generator) -> str:
    """One sampled attempt of the task's noisy "base policy" (the sft stage's data)."""
    raise MissingCapability(
        f"task {self.name!r} has no demonstrations, which the sft stage needs: start from a "
        "pretrained model (config.init.checkpoint) and drop sft from config.plan.stages")

  def corrupt(self, problem: Problem, response: str, rng: np.random.Generator) -> str:
    """A near miss of the correct `response`: a small task-specific change that makes it
    wrong (counterfactual first attempts, `score_jax.counterfactual`)."""
    raise MissingCapability(
        f"task {self.name!r} has no corrupt(), which the corrupted-gold counterfactual "
        "needs: that condition is left out for this task")

  def perturb(self, problem: Problem, response: str, rng: np.random.Generator) -> str:
    """A task-specific perturbation of a model's `response` (counterfactual first
    attempts, `score_jax.counterfactual`)."""
    raise MissingCapability(
        f"task {self.name!r} has no perturb(), which the perturbed-y1 counterfactual "
        "needs: that condition is left out for this task")

  def alphabet(self) -> str:
    """Every character its texts use (the character tokenizer's alphabet)."""
    raise MissingCapability(
        f"task {self.name!r} has no alphabet, which config.tokenizer.kind='char' needs: use "
        "tokenizer.kind='sentencepiece' / 'hf' with a tokenizer.path")


class ExactAnswerTask(Task):
  """A task graded by exact match: the response, stripped, must be the answer string (the
  synthetic tasks whose answer is a whole string: sorting, parity)."""

  def reward(self, problem: Problem, response: str) -> float:
    return float(response.strip() == problem.answer)

  def answer_key(self, response: str) -> str | None:
    return response.strip()


def check_split(task: Task, split: str) -> None:
  """Raises a clear error for a split the task does not know."""
  if split not in task.splits:
    raise ValueError(f"task {task.name!r} has no split {split!r}; choose one of {task.splits}")


def held_out(task: Task, split: str, key: Callable[[Problem], str]) -> set[str]:
  """What a generated split must not contain (`key` of each problem): the test split's
  problems for train, the test and train splits' for validation, nothing for test."""
  if split == "test":
    return set()
  out = {key(p) for p in task.load("test")}
  if split == "validation":
    out |= {key(p) for p in task.load("train")}
  return out
