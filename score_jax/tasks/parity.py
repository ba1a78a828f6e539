"""The check demo's synthetic task: suffix parities with a check digit. The first answer bit
needs a computation the tiny model cannot do; the end of an attempt reveals it.

Problem: `xor: 0110`; answer: `00100=0`: the parity of every suffix of the bits, the empty
one included (y_i = x_i XOR ... XOR x_{n-1} for i < n, y_n = 0), then `=` and a check digit
c = y_0 XOR y_n. Written left to right:

  y_0 = the parity of all n bits (a global computation the demo's tiny model cannot learn),
  y_i = y_{i-1} XOR x_{i-1}       (local: the previous answer bit and one prompt bit),
  y_n = 0                         (a right chain ends in 0),
  c   = y_0 XOR y_n               (local: equals y_0 for a right answer).

A writer that knows the local rule but not the parity guesses y_0 and chains on; when the
guess is wrong its chain is the complement of the right one and ends in 1, and its check
digit c = y_0 XOR 1 is then the right first bit. So the end of any consistent attempt, right
or wrong, holds the parity that its first bit needed: a second attempt that reads the first
can start right, while one that ignores it can only guess again (whether the first attempt
is wrong is not predictable from the prompt without the parity). This is the demo of issue
15 item 5 (`configs/demo_check.py`); in the sorting demo (`score_jax.tasks.sorting`) the
second attempt can re-solve the task from the letters of whatever it is shown.

`demonstration` is the noisy solver the base model imitates: its first bit is wrong with
probability `wrong_start_rate` (config.task.blind_spot_rate; 1/2: a solver that cannot
compute the parity either and guesses it), seeded per sample, not a function of the prompt;
it chains correctly, writes the check digit, and with probability `error_rate` then flips
one random character (a typo; one on the "=" changes nothing). Two-attempt demonstrations
pair independent attempts (`score_jax.train`), so the base model's second attempt guesses
its first bit afresh: no correction skill (measured: it does learn to copy the first
attempt's check digit into its own, on which the demonstrations always agree, and never to
compute it). For counterfactual first attempts (`score_jax.counterfactual`), `corrupt` is the
solver's kind of error: the right answer chained from the wrong first bit (every chain bit
flipped, the check digit unchanged, as the chain recomputes it); `perturb` flips the check
digit of a model's answer (a turn 2 that starts from the first attempt's check digit is
misled; one that recomputes it from the chain, or ignores the first attempt, is not).

Splits, disjoint by bit string: "test" (500, seed 22), "train" (20,000, seed 21, skipping
test's strings) and "validation" (500, seed 23, skipping the strings of train and test);
lengths uniform in `min_len`..`max_len` (the demo: 16 bits).
"""

from __future__ import annotations

import string
from typing import Any, Mapping

import numpy as np

from score_jax.tasks import base

_SPLIT_SEEDS = {"train": 21, "test": 22, "validation": 23}
PREFIX = "xor: "
CHECK = "="


def suffix_parities(bits: str) -> str:
  """y_i = XOR of bits[i:] for i = 0..n (the empty suffix last), e.g. "0110" -> "00100"."""
  out, acc = ["0"], 0
  for b in reversed(bits):
    acc ^= int(b)
    out.append(str(acc))
  return "".join(reversed(out))


def with_check(chain: str) -> str:
  """`chain` + "=" + its check digit y_0 XOR y_n, e.g. "11011" -> "11011=0"."""
  return f"{chain}{CHECK}{int(chain[0]) ^ int(chain[-1])}"


def answer(bits: str) -> str:
  """The right answer for prompt bits `bits`, e.g. "0110" -> "00100=0"."""
  return with_check(suffix_parities(bits))


def flip(bits: str) -> str:
  """Every 0 <-> 1 (any other character kept)."""
  return bits.translate(str.maketrans("01", "10"))


class ParityTask(base.Task):
  """Suffix parities of `min_len`..`max_len` random bits (module docstring)."""

  name = "parity"
  splits = ("train", "validation", "test")
  turn2_instruction = "Check and fix."

  def __init__(self, *, num_train: int = 20000, num_test: int = 500,
               num_validation: int = 500, min_len: int = 16, max_len: int = 16,
               error_rate: float = 0.1, wrong_start_rate: float = 0.5, **unused):
    del unused
    if not 1 <= min_len <= max_len:
      raise ValueError(f"parity task: need 1 <= config.task.min_len ({min_len}) <= "
                       f"config.task.max_len ({max_len})")
    self.sizes = {"train": num_train, "test": num_test, "validation": num_validation}
    self.min_len, self.max_len = min_len, max_len
    self.error_rate = error_rate
    self.wrong_start_rate = wrong_start_rate

  @classmethod
  def from_config(cls, task_cfg: Mapping[str, Any]) -> "ParityTask":
    return cls(min_len=task_cfg["min_len"], max_len=task_cfg["max_len"],
               error_rate=task_cfg["error_rate"], wrong_start_rate=task_cfg["blind_spot_rate"])

  def alphabet(self) -> str:
    return string.ascii_letters + string.digits + " .,:;!?'\"-()=\n"

  def load(self, split: str) -> list[base.Problem]:
    base.check_split(self, split)
    rng = np.random.default_rng(_SPLIT_SEEDS[split])
    # no test string in train; no train or test string in validation
    held_out = base.held_out(self, split, lambda p: p.prompt)
    if split != "test":
      possible = sum(2 ** n for n in range(self.min_len, self.max_len + 1))
      if possible - len(held_out) < (self.sizes[split] if split == "validation" else 1):
        raise ValueError(
            f"parity task: only {possible} bit strings of {self.min_len}..{self.max_len} "
            f"bits, {len(held_out)} of them held out, too few for the {split} split; raise "
            f"config.task.max_len")
    problems: list[base.Problem] = []
    while len(problems) < self.sizes[split]:
      n = int(rng.integers(self.min_len, self.max_len + 1))
      bits = "".join(str(b) for b in rng.integers(0, 2, size=n))
      prompt = PREFIX + bits
      if prompt in held_out:
        continue
      problems.append(base.Problem(uid=f"{split}-{len(problems)}", prompt=prompt,
                                   answer=answer(bits)))
    return problems

  def reward(self, problem: base.Problem, response: str) -> float:
    return float(response.strip() == problem.answer)

  def answer_key(self, response: str) -> str | None:
    return response.strip()

  def demonstration(self, problem: base.Problem, rng: np.random.Generator) -> str:
    """One attempt of the noisy solver: a first bit wrong with probability wrong_start_rate
    (the chain complemented, its check digit the same), then (error_rate) one random
    character flipped (a typo: 0 <-> 1; one that lands on "=" changes nothing)."""
    chain = problem.answer.split(CHECK)[0]
    wrong = rng.random() >= 1.0 - self.wrong_start_rate
    text = list(with_check(flip(chain) if wrong else chain))
    if rng.random() < self.error_rate:
      i = int(rng.integers(len(text)))
      text[i] = flip(text[i])
    return "".join(text)

  def corrupt(self, problem: base.Problem, response: str, rng: np.random.Generator) -> str:
    """The right `response` chained from the wrong first bit: every chain bit flipped, the
    check digit (recomputed from the chain) the same, e.g. "00100=0" -> "11011=0"."""
    del problem, rng
    chain, sep, digit = response.strip().partition(CHECK)
    return flip(chain) + sep + digit

  def perturb(self, problem: base.Problem, response: str, rng: np.random.Generator) -> str:
    """A model's `response` with its last character (the check digit) flipped (0 <-> 1)."""
    del problem, rng
    text = response.strip()
    return text[:-1] + flip(text[-1:])
