"""A toy task with checkable answers, for tests and seconds-long smoke runs.

Problem: a lowercase word such as `kvtq`; answer: the word in upper case (`KVTQ`). A
character-level model learns the format in a few hundred CPU steps. `demonstration` draws
*noisy* attempts (one character replaced with probability `error_rate`), so a model
fine-tuned on them starts imperfect, with errors that a second attempt can fix; the
two-turn traces pair independent attempts, so the base model has no self-correction skill.

Splits: "train" (2,000 words, seed 1), "test" (200, seed 2) and "validation" (200, seed 3,
skipping every word of train or test, so it shares no word with either; train and test are
drawn as before it existed).
"""

from __future__ import annotations

import string
from typing import Any, Mapping

import numpy as np

from score_jax.tasks import base

ALPHABET = string.printable.replace("\x0b", "").replace("\x0c", "")
_SPLIT_SEEDS = {"train": 1, "test": 2, "validation": 3}


class ToyTask(base.Task):
  """Upper-casing words of `min_len`..`max_len` lowercase letters."""

  name = "toy"
  splits = ("train", "validation", "test")
  turn2_instruction = "Check and rewrite."

  def __init__(self, *, num_train: int = 2000, num_test: int = 200,
               num_validation: int = 200, min_len: int = 3, max_len: int = 6,
               error_rate: float = 0.5, **unused):
    del unused
    self.sizes = {"train": num_train, "test": num_test, "validation": num_validation}
    self.min_len, self.max_len, self.error_rate = min_len, max_len, error_rate

  @classmethod
  def from_config(cls, task_cfg: Mapping[str, Any]) -> "ToyTask":
    del task_cfg   # the toy task has no settings
    return cls()

  def alphabet(self) -> str:
    return ALPHABET

  def load(self, split: str) -> list[base.Problem]:
    base.check_split(self, split)
    rng = np.random.default_rng(_SPLIT_SEEDS[split])
    seen = set()
    if split == "validation":
      seen = {p.prompt for other in ("train", "test") for p in self.load(other)}
    problems: list[base.Problem] = []
    while len(problems) < self.sizes[split]:
      n = int(rng.integers(self.min_len, self.max_len + 1))
      word = "".join(rng.choice(list(string.ascii_lowercase), size=n))
      if word not in seen:
        problems.append(base.Problem(uid=f"{split}-{len(problems)}", prompt=word,
                                     answer=word.upper()))
    return problems

  def reward(self, problem: base.Problem, response: str) -> float:
    return float(response.strip() == problem.answer)

  def demonstration(self, problem: base.Problem, rng: np.random.Generator) -> str:
    """One attempt of the noisy "base policy": correct, or with one character replaced."""
    answer = list(problem.answer)
    if rng.random() < self.error_rate:
      i = int(rng.integers(len(answer)))
      answer[i] = rng.choice([c for c in string.ascii_uppercase if c != answer[i]])
    return "".join(answer)
