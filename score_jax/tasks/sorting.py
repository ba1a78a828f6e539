"""The demo's synthetic task: sort the letters of a word. Checking is easier than producing.

Problem: `sort: hdkab`; answer: `abdhk` (letters from a small alphabet, repeats allowed).
Producing the answer needs a global computation (rank every letter); checking a candidate
is local (is every adjacent pair in order, and are the letters those of the problem?),
and a wrong but nearly sorted first attempt can be fixed by local edits. So a second
attempt can genuinely use the first, which is the situation SCoRe is built for, and a
character-level model of well under 1M parameters learns the format in CPU-minutes.

`demonstration` is a noisy solver (the "base policy" the base model imitates): with
probability `error_rate` its answer has one adjacent pair swapped or one letter replaced.
With `blind_spot_rate` > 0 it also has a systematic blind spot: on odd-length words it swaps
the last two letters with that probability, so a model imitating it is wrong on those
words even when decoding greedily, in a way its own answer shows (the last pair is out
of order). Two-turn demonstrations pair independent attempts, so a model fine-tuned on them starts
with no self-correction skill.

Splits, disjoint by sorted word (no anagram of one split's word is in another): "test" (500
words, seed 12), "train" (20,000, seed 11, skipping test's sorted words) and "validation"
(500, seed 13, skipping the sorted words of train and test). Train and test are drawn exactly
as before validation existed. Because train's 20,000 words cover the likeliest short sorted
words, validation has fewer short words than test (with the demo's 5-8 letters, 5-letter words
are 21% of validation and 24% of test); it ranks checkpoints, it does not report results.
"""

from __future__ import annotations

import math
import string
from typing import Any, Mapping

import numpy as np

from score_jax.tasks import base

_SPLIT_SEEDS = {"train": 11, "test": 12, "validation": 13}


class SortingTask(base.ExactAnswerTask):
  """Sorting words of `min_len`..`max_len` letters drawn from the first `letters` letters."""

  name = "sorting"
  splits = ("train", "validation", "test")
  turn2_instruction = "Check and fix."

  def __init__(self, *, num_train: int = 20000, num_test: int = 500,
               num_validation: int = 500, min_len: int = 5, max_len: int = 8,
               letters: int = 16, error_rate: float = 0.3, blind_spot_rate: float = 0.0,
               **unused):
    del unused
    if not 2 <= letters <= 26:
      raise ValueError(f"letters={letters} must be in [2, 26]")
    self.sizes = {"train": num_train, "test": num_test, "validation": num_validation}
    self.min_len, self.max_len = min_len, max_len
    self.letters = string.ascii_lowercase[:letters]
    self.error_rate = error_rate
    self.blind_spot_rate = blind_spot_rate

  @classmethod
  def from_config(cls, task_cfg: Mapping[str, Any]) -> "SortingTask":
    return cls(**{k: task_cfg[k] for k in ("min_len", "max_len", "error_rate",
                                           "blind_spot_rate")})

  def alphabet(self) -> str:
    return string.ascii_letters + string.digits + " .,:;!?'\"-()\n"

  def load(self, split: str) -> list[base.Problem]:
    base.check_split(self, split)
    rng = np.random.default_rng(_SPLIT_SEEDS[split])
    # no test word in train; no train or test word in validation
    held_out = base.held_out(self, split, lambda p: p.answer)
    if split != "test":
      # Sorted words are multisets: C(letters + n - 1, n) of each length n.
      possible = sum(math.comb(len(self.letters) + n - 1, n)
                     for n in range(self.min_len, self.max_len + 1))
      if possible <= len(held_out):
        where, what, other = (
            ("test split", "training", "") if split == "train" else
            ("train and test splits", "validation", ", or set config.eval.validation_every=0"))
        raise ValueError(
            f"sorting task: all {possible} sorted words of {self.min_len}..{self.max_len} "
            f"letters are in the {where}, so none is left for {what}; raise "
            f"config.task.max_len or config.task.min_len{other}")
    problems: list[base.Problem] = []
    while len(problems) < self.sizes[split]:
      n = int(rng.integers(self.min_len, self.max_len + 1))
      word = "".join(rng.choice(list(self.letters), size=n))
      answer = "".join(sorted(word))
      if answer in held_out:
        continue
      problems.append(base.Problem(uid=f"{split}-{len(problems)}", prompt=f"sort: {word}",
                                   answer=answer))
    return problems

  def demonstration(self, problem: base.Problem, rng: np.random.Generator) -> str:
    """One attempt of the noisy solver (module docstring)."""
    answer = list(problem.answer)
    if (len(answer) % 2 and answer[-2] != answer[-1] and rng.random() < self.blind_spot_rate):
      # The solver's blind spot: on odd-length words it tends to swap the last two letters,
      # a mistake that is visible locally in its own answer.
      answer[-2], answer[-1] = answer[-1], answer[-2]
    elif rng.random() < self.error_rate:
      i = int(rng.integers(len(answer)))
      if rng.random() < 0.5 and len(answer) > 1 and i + 1 < len(answer) \
          and answer[i] != answer[i + 1]:
        answer[i], answer[i + 1] = answer[i + 1], answer[i]
      else:
        answer[i] = rng.choice([c for c in self.letters if c != answer[i]])
    return "".join(answer)

  def corrupt(self, problem: base.Problem, response: str, rng: np.random.Generator) -> str:
    """`response` with two different letters swapped (one letter replaced if all agree)."""
    letters = list(response.strip())
    pairs = [(i, j) for i in range(len(letters)) for j in range(i + 1, len(letters))
             if letters[i] != letters[j]]
    if pairs:
      i, j = pairs[int(rng.integers(len(pairs)))]
      letters[i], letters[j] = letters[j], letters[i]
    elif letters:
      i = int(rng.integers(len(letters)))
      letters[i] = str(rng.choice([c for c in self.letters if c != letters[i]]))
    return "".join(letters)

  def perturb(self, problem: base.Problem, response: str, rng: np.random.Generator) -> str:
    """A random permutation of `response`'s letters (for a well-formed attempt: of the
    word's letters)."""
    return "".join(rng.permutation(list(response.strip())).tolist())
