"""Math answers: extract the final answer of a response, normalise it, compare two answers.

Pure text functions, run in-process. `is_equivalent` calls math-verify, whose timeouts use
`signal.alarm` (main thread only) and cannot interrupt C code, so untrusted model output must
be graded through `score_jax.tasks.math.grading.grade_batch` (a process pool with a wall-clock
kill); `is_equivalent` is what the pool's workers run.

Extraction (`extract_answer`): the answer is the content of the LAST answer marker in the
text, where a marker is either a `\\boxed{...}` / `\\fbox{...}` (brace-matched; also `\\boxed 5`
without braces; a box nested inside another box belongs to the outer one) or the paper's
"The final answer is $X$" form (also `$$X$$`, `\\(X\\)`, or a bare X followed by the paper's
"I hope it is correct" on the same line; "the final answer is" in prose is no marker). So a
turn-2 response that quotes the turn-1 box and then gives a new final answer is graded on
the new one. A final marker that is unusable (an unclosed box of a truncated response, an
empty box) gives None: an earlier marker is never used instead.
"""

from __future__ import annotations

import fractions
import functools
import re
import signal
import threading

# Answers longer than this (characters) are compared by normalised string only: math-verify
# is not run on them (no gold answer in MATH/GSM8K comes close to this length).
MAX_VERIFY_CHARS = 400

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_FINAL_RE = re.compile(r"final answer is\s*:?\s*", re.IGNORECASE)
_HOPE_RE = re.compile(r"\s*I hope it is correct", re.IGNORECASE)


def _match_brace(text: str, i: int) -> int | None:
  """Index just past the `}` matching the `{` at text[i]; None if unclosed.

  Escaped braces (`\\{`, `\\}`) do not count.
  """
  depth = 0
  j = i
  while j < len(text):
    c = text[j]
    if c == "\\":
      j += 2
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return j + 1
    j += 1
  return None


def _boxes(text: str) -> list[tuple[int, int, str | None]]:
  """(start, end, content) of every box that is not inside another box; content None if bad."""
  out: list[tuple[int, int, str | None]] = []
  for m in _BOX_RE.finditer(text):
    if out and m.start() < out[-1][1]:
      continue  # nested inside the previous (outer) box
    i = m.end()
    while i < len(text) and text[i] in " \t":
      i += 1
    if i < len(text) and text[i] == "{":
      end = _match_brace(text, i)
      if end is None:
        out.append((m.start(), len(text), None))
        break
      out.append((m.start(), end, text[i + 1:end - 1]))
    elif i > m.end():  # `\boxed 5`: one token, up to whitespace or `$`
      tok = re.match(r"[^\s$]*", text[i:]).group(0)
      out.append((m.start(), i + len(tok), tok.rstrip(".,;") or None))
    else:
      out.append((m.start(), i, None))
  return out


def _closing_dollar(text: str, i: int) -> int | None:
  """Index of the first unescaped `$` at or after i."""
  j = i
  while j < len(text):
    if text[j] == "\\":
      j += 2
      continue
    if text[j] == "$":
      return j
    j += 1
  return None


def _final_answers(text: str) -> list[tuple[int, str | None]]:
  """(start, content) of each "The final answer is X" statement."""
  out: list[tuple[int, str | None]] = []
  for m in _FINAL_RE.finditer(text):
    i = m.end()
    content: str | None
    if text.startswith("$$", i):
      end = text.find("$$", i + 2)
      content = text[i + 2:end] if end >= 0 else None
    elif text.startswith("$", i):
      end = _closing_dollar(text, i + 1)
      content = text[i + 1:end] if end is not None else None
    elif text.startswith("\\(", i) or text.startswith("\\[", i):
      end = text.find("\\)" if text[i + 1] == "(" else "\\]", i + 2)
      content = text[i + 2:end] if end >= 0 else None
    else:  # bare: only in the paper's full form, "... is X. I hope it is correct."
      line = text[i:].split("\n", 1)[0]
      parts = _HOPE_RE.split(line, maxsplit=1)
      if len(parts) < 2:
        continue  # prose such as "the final answer is positive, because ..."
      content = parts[0].strip()
      content = content[:-1] if content.endswith(".") else content
    out.append((m.start(), content))
  return out


def extract_answer(text: str) -> str | None:
  """The final answer of a response (see the module docstring), or None if there is none."""
  candidates: list[tuple[int, str | None]] = [(s, c) for s, _, c in _boxes(text)]
  candidates += _final_answers(text)
  if not candidates:
    return None
  _, content = max(candidates, key=lambda sc: sc[0])
  if content is None:
    return None
  content = content.strip()
  return content or None


# ---------------------------------------------------------------- normalisation

_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textrm|textit|textnormal|mbox|mathrm|mathbf|mathit|operatorname)"
    r"\s*\{([^{}]*)\}")
_SIZING_RE = re.compile(r"\\(?:left|right|[bB]igg?[lr]?|displaystyle)(?![A-Za-z])")
_SPACING_RE = re.compile(r"\\(?:[!,;: ]|quad|qquad)(?![A-Za-z])|~")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_POWER = r"\s*(?:\^\s*\{?[23]\}?)?"
_TEXT_UNIT_RE = re.compile(
    r"(.*?)\s*\\(?:text|textrm|mbox|mathrm)\s*\{\s*([A-Za-z][A-Za-z ]*)\}" + _POWER)
_WORD_UNIT_RE = re.compile(r"(.*?\S)\s+[A-Za-z]{2,}(?:\s+[A-Za-z]+)*" + _POWER)
_NUMERIC_RE = re.compile(
    r"[-+]?(?:[\d,]+(?:\.\d*)?|\.\d+)|[-+]?\\frac(?:\d|\{\d+\})(?:\d|\{\d+\})")
_LHS_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*(?:=|\\in(?![A-Za-z]))(.*)")
_WORDS_RE = re.compile(r"[A-Za-z]{2,}(?:\s+[A-Za-z]+)*")


def _strip_delims(s: str) -> str:
  """Removes enclosing `$...$`, `\\(...\\)`, `\\[...\\]`, `\\boxed{...}` and trailing dots."""
  prev = None
  while s != prev:
    prev = s
    s = s.strip()
    s = s[:-1].rstrip() if s.endswith(".") and len(s) > 1 else s
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
      if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
        s = s[len(a):-len(b)].strip()
        break
    boxes = _boxes(s)
    if len(boxes) == 1 and boxes[0][0] == 0 and boxes[0][1] == len(s) and boxes[0][2]:
      s = boxes[0][2].strip()
  return s


def normalize_answer(answer: str) -> str:
  """A canonical string for an answer, for the fast exact-match check and answer keys.

  Removes what does not change the value: `\\left`/`\\right`, LaTeX spacing, `dfrac`/`tfrac`
  (-> `frac`), degree signs, `\\$`, `%`, `\\text{...}` wrappers and units after a number, a
  leading `x =` / `x \\in`, thousands separators (`1,000` / `10,\\!080`), a trailing `.`,
  trailing decimal zeros, all whitespace, braces of `\\frac12` / `\\sqrt2` shorthands, and
  parentheses around a multiple-choice letter `(C)`. Word answers are lower-cased.
  """
  s = _strip_delims(answer.strip())
  s = _SIZING_RE.sub("", s)
  s = _SPACING_RE.sub("", s)
  s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
  s = _DEGREE_RE.sub("", s)
  s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
  s = s.replace("{,}", ",")
  s = re.sub(r"\\text\s*\{\s*\.?\s*\}", "", s)
  s = s.strip().rstrip(".").strip()
  for unit_re in (_TEXT_UNIT_RE, _WORD_UNIT_RE):
    unit = unit_re.fullmatch(s)
    if unit and _NUMERIC_RE.fullmatch(re.sub(r"\s+", "", unit.group(1))):
      s = unit.group(1)
    s = _TEXT_CMD_RE.sub(lambda m: m.group(1), s).strip()
  lhs = _LHS_RE.fullmatch(s.strip())
  if lhs and "=" not in lhs.group(1) and lhs.group(1).strip():
    s = lhs.group(1)
  if _WORDS_RE.fullmatch(s.strip()):
    return " ".join(s.lower().split())
  s = re.sub(r"\s+", "", s)
  if _THOUSANDS_RE.fullmatch(s):
    s = s.replace(",", "")
  s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
  s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
  s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
  s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
  if re.fullmatch(r"-?\d+\.\d*", s):
    s = s.rstrip("0").rstrip(".")
  if s == "-0":
    s = "0"
  letter = re.fullmatch(r"\(([A-Ea-e])\)", s)
  if letter:
    s = letter.group(1).upper()
  while len(s) > 2 and s[0] == "{" and _match_brace(s, 0) == len(s):
    s = s[1:-1]
  return s


def is_words(normalised: str) -> bool:
  """Whether a normalised answer is a word answer (compared as a string only)."""
  return bool(_WORDS_RE.fullmatch(normalised))


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
    r"|(?P<snum>\d+)/(?P<sden>\d+))")


def _simple_number(normalised: str) -> fractions.Fraction | None:
  """The exact value of an integer, a decimal with < 5 places, or a fraction of integers."""
  m = _SIMPLE_NUMBER_RE.fullmatch(normalised)
  if m is None or len(normalised) > 40:
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


def quick_verdict(pred: str | None, gold: str) -> bool | None:
  """The verdict when it needs no math-verify, else None.

  True if the normalised strings are equal; False for no answer, for two different word
  answers, for answers too long to verify, and for two plain numbers (integers, short
  decimals, integer fractions) of different exact value.
  """
  if pred is None:
    return False
  p, g = normalize_answer(pred), normalize_answer(gold)
  if not p:
    return False
  if p == g:
    return True
  if is_words(p) or is_words(g) or len(pred) > MAX_VERIFY_CHARS:
    return False
  if "%" not in pred + gold:
    p_val, g_val = _simple_number(p), _simple_number(g)
    if p_val is not None and g_val is not None:
      return p_val == g_val
  return None


def is_equivalent(pred: str | None, gold: str, *, timeout_s: float = 5.0) -> bool:
  """True iff the predicted answer has the value of the gold answer.

  `quick_verdict` first (normalised string match, exact comparison of plain numbers); then
  math-verify
  (`verify(parse(gold), parse(pred))`) for numbers, expressions, intervals, sets, tuples,
  matrices and equations. Word answers (`\\text{east}`) are compared as strings only
  (math-verify would read a word as a product of commuting symbols, so anagrams would match).
  In-process: the math-verify timeouts use signal.alarm and cannot stop C code, so grade
  untrusted text with `grading.grade_batch`, which kills a stuck worker.
  """
  quick = quick_verdict(pred, gold)
  if quick is not None:
    return quick
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
