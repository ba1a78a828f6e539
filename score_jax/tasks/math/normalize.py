"""Canonical strings for math answers: `normalize_answer`, and the unit words it may drop.

Bounded work: an answer longer than `MAX_ANSWER_CHARS` is not normalised (only its whitespace
is collapsed), and every step below is linear or at worst quadratic in the answer's length
with no nested backtracking (no pattern has two adjacent quantifiers that can trade the same
characters), so normalising any answer costs about a millisecond at most, whatever text it is
made of. All patterns are ASCII-only (`re.ASCII`): `\\d` is 0-9, nothing else.

Trailing words after a number (`5.4 cents`, `864 \\mbox{ inches}^2`) are dropped only when
every word is a unit or counted noun of `UNIT_WORDS` (plurals included) or one of
`extra_words` (for a prediction: the gold answer's own words). Anything else (`7 or eight`,
`7 \\text{ or eight}`, `7 maybe`) stays in the answer, so it no longer equals the bare number.
"""

from __future__ import annotations

import re

from score_jax.tasks.math import extract

# Answers longer than this (characters) are wrong without being read: the longest gold answer
# in MATH (train 12k, test 5k) and GSM8K has 159 characters, and normalisation removes only
# spacing, wrappers and units, so no legit answer is 2.5 times as long as its gold.
MAX_ANSWER_CHARS = 400

# Units of measure and counted nouns that may follow a number in an answer ("5 \\text{ cm}",
# "12 ways"). Number words, connectives and qualifiers (or, and, eight, maybe, ...) are
# deliberately absent: words after the answer that are not here make it a different answer.
UNIT_WORDS = frozenset("""
mm cm dm km m meter meters metre metres millimeter centimeter kilometer decimeter
in inch inches ft foot feet yd yard mi mile unit units sq square cubic cu
l liter litre ml milliliter gallon gal quart qt pint pt cup ounce oz acre hectare ha
g gm gram kg kilogram mg milligram lb lbs pound ton tonne
s sec second min minute h hr hour day week month year yr
mph kph kmh rpm revolution rev
dollar dollars cent cents euro euros usd yen penny pennies nickel dime
degree deg radian rad calorie cal kcal joule watt volt ohm amp byte bit
way people person student child children adult teacher boy girl man men woman women
integer number value digit multiple piece box item object point element
triangle rectangle polygon side edge face vertex vertices diagonal line segment path route
arrangement combination permutation outcome solution root term factor divisor prime
coin card ball marble book page word letter seat chair table tile cube block step move
game team player handshake committee pair group color gift meal ticket dog cat animal
egg apple cookie candy candies slice pie cake bottle can bag jar flower tree
""".split())

_WORD_TOKEN_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])", re.ASCII)
_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textrm|textit|textnormal|mbox|mathrm|mathbf|mathit|operatorname)"
    r"\s*\{([^{}]*)\}", re.ASCII)
_SIZING_RE = re.compile(r"\\(?:left|right|[bB]igg?[lr]?|displaystyle)(?![A-Za-z])", re.ASCII)
_SPACING_RE = re.compile(r"\\(?:[!,;: ]|quad|qquad)(?![A-Za-z])|~", re.ASCII)
_DEGREE_RE = re.compile(r"\^\s*(?:\{\s*)?\\circ(?:\s*\})?|°|\\degree(?![A-Za-z])", re.ASCII)
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", re.ASCII)
_POWER = r"(?:\s*\^\s*(?:\{[23]\}|[23]))?"
_TEXT_UNIT_TAIL_RE = re.compile(
    r"\\(?:text|textrm|mbox|mathrm)\s*\{\s*([A-Za-z][A-Za-z ]*)\.?\s*\}" + _POWER + r"\s*\Z",
    re.ASCII)
_WORD_UNIT_TAIL_RE = re.compile(
    r"(?<=\S)\s+([A-Za-z]{2,}(?:\s+[A-Za-z]+)*)" + _POWER + r"\s*\Z", re.ASCII)
_NUMERIC_RE = re.compile(
    r"[-+]?(?:[\d,]+(?:\.\d*)?|\.\d+)|[-+]?\\frac(?:\d|\{\d+\})(?:\d|\{\d+\})", re.ASCII)
_LHS_RE = re.compile(r"[A-Za-z](?:_\{?\w+\}?)?\s*(?:=|\\in(?![A-Za-z]))(.*)", re.ASCII)
_WORDS_RE = re.compile(r"[A-Za-z]{2,}(?:\s+[A-Za-z]+)*", re.ASCII)
_WHITESPACE_RE = re.compile(r"\s+")


def words_of(text: str) -> frozenset[str]:
  """The lower-cased words (2+ letters, not LaTeX command names) of a text."""
  return frozenset(w.lower() for w in _WORD_TOKEN_RE.findall(text))


def is_unit_word(word: str, extra_words: frozenset[str] = frozenset()) -> bool:
  """Whether a word may follow a number without changing the answer (plurals included)."""
  w = word.lower()
  if w in UNIT_WORDS or w in extra_words:
    return True
  return ((w.endswith("s") and w[:-1] in UNIT_WORDS) or
          (w.endswith("es") and w[:-2] in UNIT_WORDS) or
          (w.endswith("ies") and w[:-3] + "y" in UNIT_WORDS))


def strip_delims(s: str) -> str:
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
    if s.startswith(("\\boxed", "\\fbox")):
      found = extract.boxes(s)
      if len(found) == 1 and found[0][0] == 0 and found[0][1] == len(s) and found[0][2]:
        s = found[0][2].strip()
  return s


def unwrap_text(s: str) -> str:
  """`s` with `\\text{...}`-like wrappers (no braces inside) replaced by their content."""
  return _TEXT_CMD_RE.sub(lambda m: m.group(1), s)


def _unwrap_braces(s: str) -> str:
  """Removes braces that wrap the whole string (`{{5}}` -> `5`), in one linear pass."""
  if not s.startswith("{"):
    return s
  closing: dict[int, int] = {}
  stack: list[int] = []
  for m in re.finditer(r"\\.|[{}]", s, re.DOTALL):
    if m.group() == "{":
      stack.append(m.start())
    elif m.group() == "}" and stack:
      closing[stack.pop()] = m.start()
  n, layers = len(s), 0
  while n - 2 * layers > 2 and s[layers] == "{" and closing.get(layers) == n - 1 - layers:
    layers += 1
  return s[layers:n - layers] if layers else s


def _drop_units(s: str, extra_words: frozenset[str]) -> str:
  """`s` without trailing unit words after a number (module docstring); `\\text{}` unwrapped."""
  for tail_re in (_TEXT_UNIT_TAIL_RE, _WORD_UNIT_TAIL_RE):
    tail = tail_re.search(s)
    if (tail and _NUMERIC_RE.fullmatch(_WHITESPACE_RE.sub("", s[:tail.start()])) and
        all(is_unit_word(w, extra_words) for w in tail.group(1).split())):
      s = s[:tail.start()]
    s = unwrap_text(s).strip()
  return s


def normalize_answer(answer: str, extra_words: frozenset[str] = frozenset()) -> str:
  """A canonical string for an answer, for the fast exact-match check and answer keys.

  Removes what does not change the value: `\\left`/`\\right`, LaTeX spacing, `dfrac`/`tfrac`
  (-> `frac`), degree signs, `\\$`, `%`, `\\text{...}` wrappers and unit words after a number
  (`UNIT_WORDS` or `extra_words`; module docstring), a leading `x =` / `x \\in`, thousands
  separators (`1,000` / `10,\\!080`), a trailing `.`, trailing decimal zeros, all whitespace,
  braces of `\\frac12` / `\\sqrt2` shorthands, and parentheses around a multiple-choice letter
  `(C)`. Word answers are lower-cased. An answer longer than `MAX_ANSWER_CHARS` is returned
  with its whitespace collapsed, nothing else.
  """
  if len(answer) > MAX_ANSWER_CHARS:
    return " ".join(answer.split())
  s = strip_delims(answer.strip())
  s = _SIZING_RE.sub("", s)
  s = _SPACING_RE.sub("", s)
  s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
  s = _DEGREE_RE.sub("", s)
  s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
  s = s.replace("{,}", ",")
  s = re.sub(r"\\text\s*\{\s*\.?\s*\}", "", s)
  s = s.strip().rstrip(".").strip()
  s = _drop_units(s, extra_words)
  lhs = _LHS_RE.fullmatch(s.strip())
  if lhs and "=" not in lhs.group(1) and lhs.group(1).strip():
    s = lhs.group(1)
  if _WORDS_RE.fullmatch(s.strip()):
    return " ".join(s.lower().split())
  s = _WHITESPACE_RE.sub("", s)
  if _THOUSANDS_RE.fullmatch(s):
    s = s.replace(",", "")
  s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s, flags=re.ASCII)
  s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s, flags=re.ASCII)
  s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s, flags=re.ASCII)
  s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s, flags=re.ASCII)
  s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s, flags=re.ASCII)
  if re.fullmatch(r"-?\d+\.\d*", s, flags=re.ASCII):
    s = s.rstrip("0").rstrip(".")
  if s == "-0":
    s = "0"
  letter = re.fullmatch(r"\(([A-Ea-e])\)", s)
  if letter:
    s = letter.group(1).upper()
  return _unwrap_braces(s)


def is_words(normalised: str) -> bool:
  """Whether a normalised answer is a word answer (compared as a string only)."""
  return bool(_WORDS_RE.fullmatch(normalised))
