"""The check demo's synthetic task: the parity of a bit string, stated first, then the work
(the parity of every prefix). The first bit needs a computation the tiny model cannot do; the
end of an attempt reveals it.

Problem: `xor: 0110`; answer: `0=00100`: the parity p of all the bits, then `=` and the
parity of every prefix, the empty one first (z_0 = 0, z_i = x_0 XOR ... XOR x_{i-1}). Written
left to right, every bit but the first is local (the previous bit XOR one prompt bit):

  p   = the parity of all n bits (a global computation the demo's tiny model cannot learn),
  z_0 = 0,   z_i = z_{i-1} XOR x_{i-1},   z_n = the parity of all n bits = the right p.

A writer that knows the local rule but not the parity guesses p and works on; the work does
not depend on the guess, so it ends in the right p whether the guess was right or not. So the
end of any attempt that does the work right holds the bit its first bit needed: a second
attempt that reads the first can start right, while one that ignores it can only guess again
(whether the first attempt is wrong is not predictable from the prompt without the parity).
This is the demo of issue 15 item 5 (`configs/demo_check.py`); in the sorting demo
(`score_jax.tasks.sorting`) the second attempt can re-solve the task from the letters of
whatever it is shown. (Earlier designs, measured: the suffix parities with a check digit
y_0 XOR y_n, whose base model never wrote the check digit right, an XOR of two distant bits;
the suffix parities then the prefix parities, 35 characters, whose base model wrote the work
right but whose turn 2 never learnt to read it in RL.)

`demonstration` is the noisy solver the base model imitates: its first bit is wrong with
probability `wrong_start_rate` (config.task.blind_spot_rate; 1/2: a solver that cannot
compute the parity either and guesses it), seeded per sample, not a function of the prompt;
it does the work right, and with probability `error_rate` then flips one random character (a
typo; one on the "=" changes nothing). Two-attempt demonstrations pair independent attempts
(`score_jax.train`), so the base model's second attempt guesses its first bit afresh: no
correction skill. For counterfactual first attempts (`score_jax.counterfactual`), `corrupt`
is the solver's kind of error: the right answer with the wrong first bit (the work the same);
`perturb` flips the last character (z_n) of a model's answer (a turn 2 that starts from the
first attempt's last bit is misled; one that ignores the first attempt is not).

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


def prefix_parities(bits: str) -> str:
  """z_i = XOR of bits[:i] for i = 0..n (the empty prefix first), e.g. "1000" -> "01111"."""
  out, acc = ["0"], 0
  for b in bits:
    acc ^= int(b)
    out.append(str(acc))
  return "".join(out)


def answer(bits: str) -> str:
  """The right answer for prompt bits `bits`: the parity, "=", the work; "1000" -> "1=01111"."""
  return f"{bits.count('1') % 2}{CHECK}{prefix_parities(bits)}"


def flip(bits: str) -> str:
  """Every 0 <-> 1 (any other character kept)."""
  return bits.translate(str.maketrans("01", "10"))


class ParityTask(base.ExactAnswerTask):
  """The parity of `min_len`..`max_len` random bits, then the work (module docstring)."""

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

  def demonstration(self, problem: base.Problem, rng: np.random.Generator) -> str:
    """One attempt of the noisy solver: a first bit wrong with probability wrong_start_rate
    (the work the same), then (error_rate) one random character flipped (a typo: 0 <-> 1;
    one that lands on "=" changes nothing)."""
    wrong = rng.random() >= 1.0 - self.wrong_start_rate
    text = list((flip(problem.answer[:1]) if wrong else problem.answer[:1]) + problem.answer[1:])
    if rng.random() < self.error_rate:
      i = int(rng.integers(len(text)))
      text[i] = flip(text[i])
    return "".join(text)

  def corrupt(self, problem: base.Problem, response: str, rng: np.random.Generator) -> str:
    """The right `response` with the wrong first bit, the work the same: "1=01111" ->
    "0=01111"."""
    del problem, rng
    text = response.strip()
    return flip(text[:1]) + text[1:]

  def perturb(self, problem: base.Problem, response: str, rng: np.random.Generator) -> str:
    """A model's `response` with its last character (z_n) flipped (0 <-> 1)."""
    del problem, rng
    text = response.strip()
    return text[:-1] + flip(text[-1:])
