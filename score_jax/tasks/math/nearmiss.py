"""Near misses of math responses: the final answer changed (counterfactual first attempts).

`score_jax.counterfactual` re-runs turn 2 with the first attempt replaced; MATH and GSM8K
(`math.task.MathTask`, `gsm8k.GSM8KTask`) build two of its conditions with this module:

corrupted (`Task.corrupt`, of the gold response): the final answer replaced by a WRONG one of
  the same kind, where the response states it: the final answer's own text (the last
  `\\boxed{}`, "The final answer is X" or "#### X", whichever the task's grader reads), and
  every whole-token occurrence of the same answer on that answer's line and on the last
  non-empty line before it (the solution's closing sentence, e.g. "so x = 5"; a number written
  with thousands commas, "1,000", counts as "1000"). The wrong answer is the first of
  `wrong_answers(answer, rng, pool)` that the task's own grader grades wrong (so a corrupted
  gold is never right, even where the grader calls "1/2" and "0.5" equal); the task raises
  ValueError if none of them is.
perturbed (`Task.perturb`, of the model's response): ONE number changed (`bump`): a digit run
  of the final answer's text if it has one (`bump_one`), else the last digit run of the
  response's last `PERTURB_LINES` non-empty lines, else the response is kept as it is.

`bump` moves a digit run (an unsigned integer: "3" of "-3", "5" of "0.5" and of "\\frac{5}{8}")
by a nonzero amount d in 1..`MAX_STEP`, up with probability 1/2, down otherwise but up where
down would cross zero (a positive run stays positive, so no denominator becomes 0; a 0 goes
up); a run with a leading zero keeps its width ("05" -> "07", "10" -> "7"). `bump_one` draws
the run uniformly among those that are no sub- or superscript (the grader drops a base,
"4210_{5}", and a unit's power, "cm^2"), among all where every run is one ("x^2"). A
"whole-token occurrence" is not preceded by a letter, digit, ".", "\\", "_" or "^" nor
followed by a letter or digit (a number: nor by ".digit"): "17", "0.7", "x_7" are not "7".

`wrong_answers` (candidates, in order; every draw from `rng`):
  an answer with a digit:       `bump_one` of it, NUMBER_DRAWS draws
  a choice "(C)" / "\\text{(C)}": the other letters of A-E, in a random order
  a "\\text{word}":              the pool's other "\\text{...}" answers, in a random order
  any other answer ("\\pi", "p - q"): "answer+1", then "answer+2"
"""

from __future__ import annotations

import re
from typing import Iterator, Sequence

import numpy as np

from score_jax.tasks.math import extract

MAX_STEP = 3           # a bumped digit run moves by 1..MAX_STEP
NUMBER_DRAWS = 16      # candidates of an answer with a digit
PERTURB_LINES = 3      # perturb's fallback: the last digit run of this many last lines

_DIGITS_RE = re.compile(r"[0-9]+")
_CHOICE_RE = re.compile(r"^(\\text\{)?\(([A-E])\)(\})?$")
_TEXT_RE = re.compile(r"^\\text\{[^{}]*\}$")
_NUMBER_TOKEN_RE = re.compile(
    r"(?<![0-9A-Za-z.\\_^])-?[0-9][0-9,]*(?:\.[0-9]+)?(?![0-9]|\.[0-9])")
_SCRIPT_RE = re.compile(r"[_^]\{?$")      # text before a run ends in "_", "^{"...
_FULL_NUMBER_RE = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")


def bump(run: str, rng: np.random.Generator) -> str:
  """The digit run `run` moved by a nonzero d in 1..MAX_STEP (module docstring)."""
  value, d = int(run), int(rng.integers(1, MAX_STEP + 1))
  down = bool(rng.integers(2)) and value - d >= (1 if value > 0 else 0)
  new = str(value - d if down else value + d)
  return new.zfill(len(run)) if run.startswith("0") else new


def bump_one(text: str, rng: np.random.Generator) -> str | None:
  """`text` with one digit run bumped, or None if `text` has no digit: one drawn uniformly
  of the runs that are no sub- or superscript ("4210_5", "cm^2":
  the grader drops bases and units), or of all runs where every run is one ("x^2")."""
  runs = list(_DIGITS_RE.finditer(text))
  if not runs:
    return None
  values = [m for m in runs if not _SCRIPT_RE.search(text, 0, m.start())]
  runs = values or runs          # a base or an exponent only where nothing else has a digit
  m = runs[int(rng.integers(len(runs)))]
  return text[:m.start()] + bump(m.group(), rng) + text[m.end():]


def needs_pool(answer: str) -> bool:
  """Whether `wrong_answers(answer, ...)` reads the pool (a "\\text{word}" answer)."""
  answer = answer.strip()
  return not _DIGITS_RE.search(answer) and not _CHOICE_RE.match(answer) and bool(
      _TEXT_RE.match(answer))


def wrong_answers(answer: str, rng: np.random.Generator,
                  pool: Sequence[str] = ()) -> Iterator[str]:
  """Candidate wrong answers of the same kind as `answer`, in order (module docstring);
  `pool`: other problems' answers, for "\\text{word}" answers."""
  answer = answer.strip()
  if _DIGITS_RE.search(answer):
    for _ in range(NUMBER_DRAWS):
      yield bump_one(answer, rng)
    return
  choice = _CHOICE_RE.match(answer)
  if choice:
    for letter in rng.permutation([c for c in "ABCDE" if c != choice.group(2)]):
      yield f"{choice.group(1) or ''}({letter}){choice.group(3) or ''}"
    return
  if _TEXT_RE.match(answer):
    others = sorted({a.strip() for a in pool if _TEXT_RE.match(a.strip())} - {answer})
    for i in rng.permutation(len(others)):
      yield others[int(i)]
    return
  yield f"{answer}+1"
  yield f"{answer}+2"


def _line(text: str, i: int) -> tuple[int, int]:
  """(start, end) of the line holding text[i]."""
  start = text.rfind("\n", 0, i) + 1
  end = text.find("\n", i)
  return start, len(text) if end < 0 else end


def _occurrences(text: str, start: int, end: int, answer: str) -> list[tuple[int, int]]:
  """Spans of whole-token occurrences of `answer` in text[start:end] (numbers: by value
  with commas dropped, "1,000" == "1000")."""
  if _FULL_NUMBER_RE.fullmatch(answer):
    plain = answer.replace(",", "")
    return [m.span() for m in _NUMBER_TOKEN_RE.finditer(text, start, end)
            if m.group().replace(",", "") == plain]
  out = []
  pattern = re.compile(r"(?<![0-9A-Za-z\\_^])" + re.escape(answer) + r"(?![0-9A-Za-z])")
  for m in pattern.finditer(text, start, end):
    out.append(m.span())
  return out


def restate(text: str, span: tuple[int, int], new: str) -> str:
  """`text` with its final answer text[span] replaced by `new`, and every whole-token
  occurrence of the old answer on its line and on the last non-empty line before it (module
  docstring)."""
  old = text[span[0]:span[1]]
  line_start, line_end = _line(text, span[0])
  prev_end = line_start - 1
  while prev_end > 0 and not text[text.rfind("\n", 0, prev_end) + 1:prev_end].strip():
    prev_end = text.rfind("\n", 0, prev_end)     # skip blank lines
  spans = {span}
  if prev_end > 0:
    spans.update(_occurrences(text, text.rfind("\n", 0, prev_end) + 1, prev_end, old))
  spans.update(s for s in _occurrences(text, line_start, _line(text, span[1])[1], old)
               if s[1] <= span[0] or s[0] >= span[1])
  for a, b in sorted(spans, reverse=True):
    text = text[:a] + new + text[b:]
  return text


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
  while start < end and text[start].isspace():
    start += 1
  while end > start and text[end - 1].isspace():
    end -= 1
  return start, end


def math_span(text: str) -> tuple[int, int] | None:
  """(start, end) of the final answer `extract.extract_answer(text)` reads, stripped, or
  None where it reads none."""
  content = extract.extract_answer(text)
  if content is None:
    return None
  found = extract.boxes(text)
  statement = extract._last_final_answer(text)  # pylint: disable=protected-access
  if statement is not None and (not found or statement[0] > found[-1][0]):
    at = extract._FINAL_RE.match(text, statement[0]).end()  # pylint: disable=protected-access
    start = text.find(statement[1], at)
    return _stripped(text, start, start + len(statement[1]))
  box_start, box_end, raw = found[-1]
  at = extract.BOX_RE.match(text, box_start).end()
  start = text.find(raw, at)
  return _stripped(text, start, start + len(raw))


def perturb(text: str, span: tuple[int, int] | None, rng: np.random.Generator) -> str:
  """`text` with one number changed: in its final answer text[span] if that has a digit,
  else the last digit run of its last PERTURB_LINES non-empty lines; else `text` itself."""
  if span is not None:
    new = bump_one(text[span[0]:span[1]], rng)
    if new is not None:
      return text[:span[0]] + new + text[span[1]:]
  lines = [m for m in re.finditer(r"[^\n]*", text) if m.group().strip()][-PERTURB_LINES:]
  for line in reversed(lines):
    runs = list(_DIGITS_RE.finditer(text, line.start(), line.end()))
    if runs:
      m = runs[-1]
      return text[:m.start()] + bump(m.group(), rng) + text[m.end():]
  return text
