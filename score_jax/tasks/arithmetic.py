"""The arithmetic tasks of GPT-3 (Brown et al. 2020, section 3.9.1), generated, with integer answers.

Six kinds of question (`OPS`), as in the paper: 2-digit addition and subtraction ("2d+", "2d-":
two integers drawn uniformly from [0, 100)), 3-digit addition and subtraction ("3d+", "3d-":
from [0, 1000)), 2-digit multiplication ("2dx": from [0, 100)) and one-digit composite ("1dc":
three integers from [0, 10) joined by two of +, -, * with parentheses around the first or the
last pair, e.g. "6+(4*8)"). Subtraction answers can be negative. Three easier kinds are ours,
for small models (Gemma 3 270M is at 0% on all six of GPT-3's): one-digit addition,
subtraction and multiplication ("1d+", "1d-", "1dx": two integers from [0, 10)).
`kinds` (config.task.kinds, comma-separated) picks the kinds; the default is GPT-3's six.
The paper's question form:

    Q: What is 48 plus 76? A:        (minus, times; "Q: What is 6+(4*8)? A:" for 1dc)

Splits, generated here (no files; the same on every machine), per kind: "test" 200,
"validation" 100, "train" 1,000 (GPT-3's six kinds: 1,200 / 600 / 6,000); a one-digit kind has
only 100 questions, split 50 / 10 / 40. The kinds take turns in a split (round robin in the
order of `kinds`), so the first N problems of any split (config.task.eval_limit) are a
balanced mix; uids are "<split>-<i>-<kind>". Each kind is drawn with numpy's
`default_rng([SPLIT_SEEDS[split], index in KINDS])`, skipping
questions already drawn: test first, then validation (skipping test's questions), then train
(skipping both), so no question is in two splits (tests/tasks/test_arithmetic.py checks it).

Few-shot (`num_shots` = k, config.task.num_shots; 0 is the zero-shot question alone): the
exemplars of a question of a kind are the first k train problems of that kind, removed from
"train" when k > 0. They are laid out as the "plain" chat format
lays out a turn and its answer, so that a base model's answer to the query comes where the
exemplars' answers are:

    Q: What is 17 plus 25? A:

    42

    ... (k exemplars)

    Q: What is 48 plus 76? A:

Grading (`parse_answer`): the response's first line (after stripping leading blank space) must
hold exactly one integer: an optional "-" (or U+2212), then digits or comma-grouped thousands
("1,008"), and no other digit on the line; words without digits may surround it ("124",
"124.", "-5", "A: 1,008 apples"; no second minus sign before it: "--5" is wrong). A hedge ("76 or 77"), an equation ("48+76=124"), a
decimal ("124.0"), a bad grouping ("12,34") or a first line with no number are wrong: a model
cannot list candidates or hide the answer among other numbers. Only the first line counts
(GPT-3 reads the completion up to the newline; `stop_texts` stops the sampler there), so what a
base model writes after its answer (usually a new "Q:") is never graded.

Turn-2 instruction (ours, for a base model in the plain format; the paper's instruction is
written for chat models): a new question in the same Q/A form, `TURN2_INSTRUCTION`, which asks
for the answer again without saying whether the first was right. The Self-Refine variant is
`prompts.SELF_REFINE_ARITHMETIC_INSTRUCTION`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from score_jax.tasks import base
from score_jax.tasks import prompts

OPS = ("2d+", "2d-", "3d+", "3d-", "2dx", "1dc")          # GPT-3's kinds (the default)
ONE_DIGIT = ("1d+", "1d-", "1dx")                          # easier kinds (ours)
KINDS = OPS + ONE_DIGIT
SPLIT_SEEDS = {"test": 2020, "validation": 2021, "train": 2022}
# Problems per kind and split; a one-digit kind has only 100 questions, all of them used.
SIZES = {"test": 200, "validation": 100, "train": 1000}
SMALL_SIZES = {"test": 50, "validation": 10, "train": 40}
TURN2_INSTRUCTION = prompts.ARITHMETIC_TURN2_INSTRUCTION
_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_BINARY = {"2d+": ("+", 100), "2d-": ("-", 100), "3d+": ("+", 1000), "3d-": ("-", 1000),
           "2dx": ("*", 100), "1d+": ("+", 10), "1d-": ("-", 10), "1dx": ("*", 10)}
# One integer: optional minus, then plain digits or comma-grouped thousands; the text around
# it may hold no digit (nor, before it, another minus sign).
_LINE = re.compile(r"^[^\d\-\u2212]*([-\u2212]?)(\d{1,3}(?:,\d{3})+|\d+)([^\d]*)$")


def _apply(op: str, a: int, b: int) -> int:
  return a + b if op == "+" else a - b if op == "-" else a * b


def draw(kind: str, rng: np.random.Generator) -> tuple[str, int]:
  """(question text, answer) of one question of `kind` (one of KINDS)."""
  if kind in _BINARY:
    op, high = _BINARY[kind]
    a, b = (int(x) for x in rng.integers(0, high, size=2))
    return f"{a} {_WORDS[op]} {b}", _apply(op, a, b)
  if kind != "1dc":
    raise ValueError(f"arithmetic: unknown kind {kind!r}; choose one of {KINDS}")
  a, b, c = (int(x) for x in rng.integers(0, 10, size=3))
  op1, op2 = (str(x) for x in rng.choice(["+", "-", "*"], size=2))
  if rng.integers(2):      # a op1 (b op2 c)
    return f"{a}{op1}({b}{op2}{c})", _apply(op1, a, _apply(op2, b, c))
  return f"({a}{op1}{b}){op2}{c}", _apply(op2, _apply(op1, a, b), c)


def question_text(question: str) -> str:
  """GPT-3's form of one question."""
  return f"Q: What is {question}? A:"


def parse_answer(response: str) -> int | None:
  """The integer of the response's first line, or None (module docstring: the rules)."""
  lines = response.strip().split("\n")
  m = _LINE.match(lines[0].strip()) if lines else None
  if m is None:
    return None
  value = int(m.group(2).replace(",", ""))
  return -value if m.group(1) else value


def parse_kinds(kinds: str | tuple[str, ...]) -> tuple[str, ...]:
  """config.task.kinds ("2d+,1dx" or a tuple) as a tuple of known kinds."""
  out = tuple(k.strip() for k in kinds.split(",")) if isinstance(kinds, str) else tuple(kinds)
  bad = [k for k in out if k not in KINDS]
  if not out or bad or len(set(out)) != len(out):
    raise ValueError(f"task 'arithmetic': config.task.kinds={kinds!r} must list distinct kinds "
                     f"of {KINDS}, comma-separated (score_jax/tasks/arithmetic.py)")
  return out


def generate(split: str, kinds: tuple[str, ...] = OPS) -> list[tuple[str, str, int]]:
  """[(kind, question, answer)] of `split`, disjoint from the splits drawn before it; the
  kinds take turns (round robin, in the order given, while each has problems left)."""
  order = ("test", "validation", "train")
  if split not in order:
    raise ValueError(f"task 'arithmetic' has no split {split!r}; choose one of {order}")
  taken: set[tuple[str, str]] = set()
  for earlier in order[:order.index(split)]:
    taken |= {(k, q) for k, q, _ in generate(earlier, kinds)}
  per_kind: dict[str, list[tuple[str, int]]] = {}
  for kind in kinds:
    rng = np.random.default_rng([SPLIT_SEEDS[split], KINDS.index(kind)])
    want = (SMALL_SIZES if kind in ONE_DIGIT else SIZES)[split]
    seen: list[tuple[str, int]] = []
    while len(seen) < want:
      q, a = draw(kind, rng)
      if (kind, q) not in taken:
        taken.add((kind, q))
        seen.append((q, a))
    per_kind[kind] = seen
  longest = max(len(v) for v in per_kind.values())
  return [(kind, *per_kind[kind][r]) for r in range(longest) for kind in kinds
          if r < len(per_kind[kind])]


class ArithmeticTask(base.Task):
  """GPT-3's arithmetic questions (module docstring), `num_shots` exemplars per prompt."""

  name = "arithmetic"
  splits = ("train", "validation", "test")
  turn2_instruction = TURN2_INSTRUCTION
  stop_texts = ("\n",)

  def __init__(self, *, num_shots: int = 0, kinds: str | tuple[str, ...] = OPS, **unused):
    del unused
    self.kinds = parse_kinds(kinds)
    if int(num_shots) != num_shots or not 0 <= int(num_shots) <= 50:
      raise ValueError(f"task 'arithmetic': config.task.num_shots={num_shots!r} must be an "
                       "integer in 0..50")
    self.num_shots = int(num_shots)
    train = generate("train", self.kinds)
    self._shots = {k: [r for r in train if r[0] == k][:self.num_shots] for k in self.kinds}
    if any(len(v) < self.num_shots for v in self._shots.values()):
      raise ValueError(f"task 'arithmetic': config.task.num_shots={num_shots} is more than a "
                       f"kind's train problems ({SMALL_SIZES['train']} for {ONE_DIGIT})")

  @classmethod
  def from_config(cls, task_cfg: Mapping[str, Any]) -> "ArithmeticTask":
    return cls(num_shots=task_cfg.get("num_shots", 0), kinds=task_cfg.get("kinds", OPS))

  def exemplar_indices(self) -> set[int]:
    """Train indices used as exemplars (the first num_shots of each kind)."""
    used = {(k, q) for v in self._shots.values() for k, q, _ in v}
    return {i for i, (k, q, _) in enumerate(generate("train", self.kinds)) if (k, q) in used}

  def prompt(self, kind: str, question: str) -> str:
    shots = self._shots[kind]
    return "".join(f"{question_text(q)}\n\n{a}\n\n" for _, q, a in shots) + question_text(
        question)

  def load(self, split: str) -> list[base.Problem]:
    base.check_split(self, split)
    skip = self.exemplar_indices() if split == "train" else set()
    return [base.Problem(uid=f"{split}-{i}-{kind}", prompt=self.prompt(kind, q), answer=a,
                         meta={"kind": kind, "question": q})
            for i, (kind, q, a) in enumerate(generate(split, self.kinds)) if i not in skip]

  def reward(self, problem: base.Problem, response: str) -> float:
    return float(parse_answer(response) == problem.answer)

  def answer_key(self, response: str) -> str | None:
    value = parse_answer(response)
    return None if value is None else str(value)

  def demonstration(self, problem: base.Problem, rng: np.random.Generator) -> str:
    """The right answer, or (probability 0.3) one off by 1 or 10."""
    if rng.random() < 0.3:
      return self.corrupt(problem, str(problem.answer), rng)
    return str(problem.answer)

  def corrupt(self, problem: base.Problem, response: str, rng: np.random.Generator) -> str:
    """The gold answer moved by one of -10, -1, +1, +10 (a near miss)."""
    return str(problem.answer + int(rng.choice([-10, -1, 1, 10])))

  def perturb(self, problem: base.Problem, response: str, rng: np.random.Generator) -> str:
    """`response`'s integer moved by 1..9 either way; a response without one is kept."""
    value = parse_answer(response)
    if value is None:
      return response
    return str(value + int(rng.integers(1, 10)) * int(rng.choice([-1, 1])))
