"""Math answers: is a predicted final answer the gold answer? (`quick_verdict`, `is_equivalent`).

Extraction (`extract.extract_answer`: the last \\boxed{} or "The final answer is $X$" of a
response) and normalisation (`normalize.normalize_answer`) live in their own modules and are
re-exported here. A prediction is judged in three steps:

1. `hedges.rejection`: forms that claim several values score 0 (a percent sign on a gold
   without one, words after the number that are not units, a box inside the answer, non-ASCII
   digits); an answer longer than `MAX_ANSWER_CHARS` scores 0 unread.
2. `hedges.relation_sides`: `x = 4` is graded on 4; in `2 + 2 = 4` every side that is not a
   name must be the answer; `3 = 4` scores 0 (unless the gold is itself a relation).
3. Each remaining part against the gold: equal after normalisation, or two plain numbers of
   equal value (decided here, `quick_verdict`), else math-verify (`is_equivalent`).

Steps 1-2 and the fast part of 3 run in the training process in bounded time (linear passes
over at most `MAX_ANSWER_CHARS` characters). `is_equivalent` calls math-verify, whose timeouts
use `signal.alarm` (main thread only) and cannot interrupt C code, so untrusted model output
must be graded through `score_jax.tasks.math.grading.grade_batch` (a process pool with a
wall-clock kill); `is_equivalent` is what the pool's workers run.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import re
import signal
import threading

from score_jax.tasks.math import hedges
from score_jax.tasks.math.extract import MAX_RESPONSE_CHARS, extract_answer
from score_jax.tasks.math.normalize import MAX_ANSWER_CHARS, is_words, normalize_answer, words_of

__all__ = ["MAX_ANSWER_CHARS", "MAX_RESPONSE_CHARS", "MAX_VERIFY_CHARS", "extract_answer",
           "normalize_answer", "is_words", "quick_verdict", "is_equivalent",
           "speed_up_math_verify"]

# Answers longer than this are not given to math-verify (they score 0 unread: the same cap).
MAX_VERIFY_CHARS = MAX_ANSWER_CHARS


@dataclasses.dataclass(frozen=True)
class _Gold:
  """What the verdicts need of a gold answer, computed once per gold."""
  text: str
  normalised: str
  words: frozenset[str]      # its words: units a prediction may also drop
  tokens: frozenset[str]     # its words and numbers: allowed inside a prediction's \\text{}
  relation: bool             # a relation itself (`x^2 + y^2 = 13`): math-verify compares


@functools.lru_cache(maxsize=1 << 14)
def _gold(gold: str) -> _Gold:
  words = words_of(gold)
  normalised = normalize_answer(gold, words)
  return _Gold(gold, normalised, words, hedges.tokens_of(gold), hedges.is_relation(normalised))


def _parts(pred: str | None, gold: _Gold) -> bool | list[str]:
  """False if the prediction cannot score (steps 1-2 of the module docstring), else the parts
  that must ALL be equivalent to the gold."""
  if pred is None:
    return False
  pred = pred.strip()
  if not pred or len(pred) > MAX_ANSWER_CHARS:
    return False
  if hedges.rejection(pred, gold.text, gold.tokens) is not None:
    return False
  if not gold.relation:
    sides = hedges.relation_sides(pred)
    if sides is not None:
      return sides or False
  return [pred]


# ---------------------------------------------------------------- equivalence

def _alarm_seconds(timeout_s: float) -> int | None:
  """math-verify's signal.alarm timeout: only usable in the main thread."""
  if threading.current_thread() is not threading.main_thread():
    return None
  if not hasattr(signal, "SIGALRM"):
    return None
  return max(1, int(timeout_s))


@functools.lru_cache(maxsize=1 << 15)
def _parse(answer: str, timeout: int | None):
  import math_verify  # pylint: disable=import-outside-toplevel
  return math_verify.parse("\\boxed{" + answer + "}", parsing_timeout=timeout)


_SIMPLE_NUMBER_RE = re.compile(
    r"(?P<sign>-?)(?:(?P<int>\d+)(?:\.(?P<dec>\d*))?|\\frac\{(?P<num>\d+)\}\{(?P<den>\d+)\}"
    r"|(?P<snum>\d+)/(?P<sden>\d+))", re.ASCII)


def _simple_number(normalised: str) -> fractions.Fraction | None:
  """The exact value of an integer, a decimal with < 5 places, or a fraction of integers."""
  if len(normalised) > 40:
    return None
  m = _SIMPLE_NUMBER_RE.fullmatch(normalised)
  if m is None:
    return None
  sign = -1 if m["sign"] else 1
  if m["int"] is not None:
    dec = m["dec"] or ""
    if len(dec) >= 5:
      return None   # math-verify compares such decimals after rounding: let it decide
    return sign * fractions.Fraction(m["int"] + "." + dec if dec else m["int"])
  num, den = (m["num"], m["den"]) if m["num"] is not None else (m["snum"], m["sden"])
  if int(den) == 0:
    return None
  return sign * fractions.Fraction(int(num), int(den))


# A numeric subscript: a base ("4210_{5}", "1011_2") or an index ("x_{1}").
_SUBSCRIPT_RE = re.compile(r"_\{?\s*(\d+)\s*\}?")


def _part_verdict(part: str, gold: _Gold) -> bool | None:
  """Step 3 without math-verify: True / False, or None when math-verify must decide."""
  p, g = normalize_answer(part, gold.words), gold.normalised
  if not p:
    return False
  if p == g:
    return True
  if is_words(p) or is_words(g):
    return False
  # math-verify drops numeric subscripts ("4210_{4}" would equal "4210_{5}"): another base
  # or index is another answer
  p_subs, g_subs = set(_SUBSCRIPT_RE.findall(p)), set(_SUBSCRIPT_RE.findall(g))
  if p_subs and g_subs and p_subs != g_subs:
    return False
  if "%" not in part + gold.text:
    p_val, g_val = _simple_number(p), _simple_number(g)
    if p_val is not None and g_val is not None:
      return p_val == g_val
  return None


def quick_verdict(pred: str | None, gold: str) -> bool | None:
  """The verdict when it needs no math-verify, else None (bounded time, in-process).

  False for no answer, an answer over `MAX_ANSWER_CHARS`, a hedge, a relation whose sides
  are not the answer (module docstring), two different word answers, and two plain numbers
  (integers, short decimals, integer fractions) of different exact value, two different
  numeric subscripts (a base: "4210_{4}" is not "4210_{5}"); True when every
  part equals the gold after normalisation or in exact value.
  """
  g = _gold(gold)
  parts = _parts(pred, g)
  if isinstance(parts, bool):
    return parts
  verdicts = [_part_verdict(p, g) for p in parts]
  if False in verdicts:
    return False
  return True if all(verdicts) else None


def is_equivalent(pred: str | None, gold: str, *, timeout_s: float = 5.0) -> bool:
  """True iff the predicted answer has the value of the gold answer.

  The module docstring's steps: hedges and relations, then per part `quick_verdict`'s checks
  (normalised string match, exact comparison of plain numbers), then math-verify
  (`verify(parse(gold), parse(pred))`) for numbers, expressions, intervals, sets, tuples,
  matrices and equations. Word answers (`\\text{east}`) are compared as strings only
  (math-verify would read a word as a product of commuting symbols, so anagrams would match).
  In-process: the math-verify timeouts use signal.alarm and cannot stop C code, so grade
  untrusted text with `grading.grade_batch`, which kills a stuck worker.
  """
  g = _gold(gold)
  parts = _parts(pred, g)
  if isinstance(parts, bool):
    return parts
  for part in parts:
    verdict = _part_verdict(part, g)
    if verdict is None:
      verdict = _math_verify(part, gold, timeout_s)
    if not verdict:
      return False
  return True


def _math_verify(pred: str, gold: str, timeout_s: float) -> bool:
  """math-verify's `verify(parse(gold), parse(pred))`."""
  import math_verify  # pylint: disable=import-outside-toplevel
  timeout = _alarm_seconds(timeout_s)
  gold_parsed = _parse(gold.strip(), timeout)
  pred_parsed = _parse(pred.strip(), timeout)
  if not gold_parsed or not pred_parsed:
    return False
  return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


# ---------------------------------------------------------------- faster math-verify

_POINTS = ((fractions.Fraction(7, 5), fractions.Fraction(13, 4), fractions.Fraction(17, 9)),
           (fractions.Fraction(5, 7), fractions.Fraction(2, 13), fractions.Fraction(11, 3)))


def _clearly_different(a, b) -> bool:
  """True if a - b is numerically far from 0 somewhere (no free symbols, or at two points).

  Sound for "not symbolically equal": if simplify(a - b) were 0, the difference would be 0
  wherever it is defined. Points are positive non-integers and symbols must carry no
  assumptions (an `integer=True` n could make sin(pi n) = 0 symbolically). Undefined values
  say nothing; any other doubt gives False.
  """
  import sympy  # pylint: disable=import-outside-toplevel
  if not isinstance(a, sympy.Expr) or not isinstance(b, sympy.Expr):
    return False
  symbols = sorted(a.free_symbols | b.free_symbols, key=str)
  if len(symbols) > 3 or any(not isinstance(x, sympy.Symbol) or
                             set(x.assumptions0) - {"commutative"} for x in symbols):
    return False
  points = [()] if not symbols else [p[:len(symbols)] for p in _POINTS]
  for point in points:
    subs = {x: sympy.Rational(v.numerator, v.denominator) for x, v in zip(symbols, point)}
    va, vb = (sympy.N(e.subs(subs), 30) for e in (a, b))
    if not (va.is_number and vb.is_number and va.is_finite and vb.is_finite):
      continue
    diff, scale = sympy.Abs(va - vb), 1 + sympy.Abs(va) + sympy.Abs(vb)
    if diff.is_comparable and scale.is_comparable and diff > 1e-9 * scale:
      return True
  return False


def speed_up_math_verify() -> None:
  """Makes math-verify skip `simplify(a - b)` when a - b is clearly nonzero numerically.

  math-verify ends its comparison of two expressions with `simplify(a - b) == 0`, which
  costs ~0.1 s even for `5` vs `\\sqrt{2} + 1`; most wrong answers end there. We first
  evaluate a - b (at two points per free symbol) and answer False at once when it is far
  from 0; a zero or doubtful difference still goes to simplify. This cannot turn a False
  into a True. Patches the process's math-verify: the grader processes call it.
  """
  from math_verify import grader  # pylint: disable=import-outside-toplevel
  original = getattr(grader.sympy_symbolic_eq, "_score_jax_original", grader.sympy_symbolic_eq)

  def symbolic_eq(a, b):
    try:
      if _clearly_different(a, b):
        return False
    except Exception:  # pylint: disable=broad-except
      pass
    return original(a, b)

  symbolic_eq._score_jax_original = original  # pylint: disable=protected-access
  grader.sympy_symbolic_eq = symbolic_eq
