"""Hedged answers: forms that let one answer claim several values, decided before math-verify.

math-verify is lenient by design: it reads `7 \\text{ (or 8)}` as 7 (text is dropped), `3 = 4`
as its right side 4, `3 \\Rightarrow 7` as 7, a `\\boxed{7}` anywhere inside an answer as 7,
and `7\\%` as 7 or as 0.07. A policy that learns these gets credit for answers that are not
one value. So before any equivalence test (`answer.quick_verdict`, in the training process and
in the graders) a prediction scores 0 when:

- it contains a non-ASCII numeric character (`７`, `٧`, `𝟕`, `⁷`, `Ⅶ`): answers are ASCII
  LaTeX; a look-alike digit is not read as the digit it resembles;
- it has a percent sign (`%`, `\\%`, the word "percent") and the gold has none (`50\\%` against
  gold `50\\%` still scores: both sides drop the sign);
- it holds a `\\boxed` / `\\fbox` that is not the whole answer (`3 \\boxed{7}`);
- a `\\text{}`-like group (`\\text`, `\\textbf`, `\\mathrm`, `\\mbox`, `\\operatorname`, ...)
  holds a word or a number that is neither a unit word (`normalize.UNIT_WORDS`) nor in the
  gold: `7 \\text{ or eight}`, `7 \\text{ (8)}`, `\\frac{7}{1} \\text{ maybe}`.

Relations (`=`, `\\approx`, `\\equiv`, `\\to`, `\\Rightarrow`, `\\in`, ... ; `relation_sides`),
when the gold is not itself a relation: the final right-hand side must be equivalent to the
gold, and so must every other side that is not a name (`x`, `a_1`, `x'`, `\\theta`, `f(3)`,
`f^{-1}(x)`, `AB`, `\\angle ABC`: a name claims no value). So `x = 4`, `x = 2 + 2 = 4` and
`2 + 2 = 4` score against gold 4, while `3 = 4`, `x = 3 = 4`, `4 = x` and `x = y` do not. A
list of assignments `x = 7, y = 8` is its list of values `7, 8`. A relation inside a group
(`\\overset{?}{=} 7`, `(3 = 4)`) scores 0, except inside a sub- or superscript
(`\\sum_{i=1}^{7} 1`) or a `\\text{}` wrapper. Inequalities (`<`, `\\le`, `\\neq`) are left
to math-verify, which never equates them with a value.
"""

from __future__ import annotations

import re

from score_jax.tasks.math import extract
from score_jax.tasks.math import normalize

_TEXT_GROUP_RE = re.compile(
    r"\\(?:text[A-Za-z]*|math(?:rm|bf|it|sf|tt|normal)|mbox|hbox|emph|operatorname)\s*\{")
_TOKEN_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])|\d+", re.ASCII)
_PERCENT_RE = re.compile(r"%|percent", re.IGNORECASE)
RELATIONS = frozenset(
    "approx equiv sim simeq cong doteq coloneqq to rightarrow Rightarrow longrightarrow "
    "Longrightarrow leftarrow Leftarrow gets implies iff Leftrightarrow leftrightarrow mapsto "
    "in ni propto".split())
_RELATION_RE = re.compile(r"=|\\(?:" + "|".join(sorted(RELATIONS, key=len, reverse=True)) +
                          r")(?![A-Za-z])")
# Tokens of one left-to-right scan: script groups, commands, escapes, brackets, `=`, commas.
_SCAN_RE = re.compile(r"[_^]\s*\{|\\[A-Za-z]+|\\.|[{}()\[\]=,]", re.DOTALL)
_GREEK = ("alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|lambda|"
          "mu|nu|xi|rho|sigma|tau|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Xi|"
          "Sigma|Phi|Psi|Omega")
_NAME_RE = re.compile(
    r"(?:[A-Za-z]|\\(?:" + _GREEK + r")(?![A-Za-z]))(?:_(?:\w|\{\w+\}))?'*(?:\^\{?-1\}?)?"
    r"(?:\([^()=]*\))?"
    r"|[A-Z]{2,3}|(?:m)?\\angle[A-Z]{1,3}|\\overline\{[A-Z]{2}\}", re.ASCII)


def tokens_of(text: str) -> frozenset[str]:
  """Words (2+ letters, lower-cased, not command names) and digit runs of a text."""
  return frozenset(t.lower() for t in _TOKEN_RE.findall(text))


def has_percent(text: str) -> bool:
  """Whether an answer has a percent sign or the word "percent"."""
  return bool(_PERCENT_RE.search(text))


def _text_group_tokens(text: str) -> set[str]:
  """The tokens inside `\\text{}`-like groups (an unclosed group runs to the end)."""
  tokens: set[str] = set()
  group_end = -1
  for m in _TEXT_GROUP_RE.finditer(text):
    if m.start() < group_end:
      continue  # inside the previous group: already read
    close = extract.match_brace(text, m.end() - 1)
    group_end = len(text) if close is None else close
    tokens |= tokens_of(text[m.end():group_end])
  return tokens


def rejection(pred: str, gold: str, gold_tokens: frozenset[str]) -> str | None:
  """Why a prediction is a hedge and scores 0 (see the module docstring), or None."""
  if any(not c.isascii() and c.isnumeric() for c in pred):
    return "non-ASCII digit"
  if has_percent(pred) and not has_percent(gold):
    return "percent sign on a gold without one"
  if extract.BOX_RE.search(normalize.strip_delims(pred)):
    return "a box inside the answer"
  for token in _text_group_tokens(pred):
    if token not in gold_tokens and (token.isdigit() or
                                     not normalize.is_unit_word(token, gold_tokens)):
      return f"text {token!r} that is neither a unit nor in the gold"
  return None


def is_relation(normalised: str) -> bool:
  """Whether a (normalised) answer contains a relation such as `=` or `\\in`."""
  return bool(_RELATION_RE.search(normalised))


def is_name(side: str) -> bool:
  """Whether one side of a relation is a name (`x`, `a_1`, `\\theta`, `f(3)`, `AB`)."""
  return bool(_NAME_RE.fullmatch(re.sub(r"\s+", "", side)))


def _scan(text: str) -> tuple[list[tuple[int, int]], list[int], bool]:
  """(top-level relations as (start, end), top-level comma positions, whether a relation sits
  in a group that is not a sub/superscript). One linear pass."""
  relations: list[tuple[int, int]] = []
  commas: list[int] = []
  stack: list[bool] = []       # per open group: is it a sub/superscript?
  scripts = 0                  # sub/superscript groups on the stack
  unbalanced = nested = False
  for m in _SCAN_RE.finditer(text):
    tok = m.group()
    if tok[0] in "_^" or tok in ("{", "(", "[", "\\{"):
      stack.append(tok[0] in "_^")
      scripts += stack[-1]
    elif tok in ("}", ")", "]", "\\}"):
      if stack:
        scripts -= stack.pop()
      else:
        unbalanced = True
    elif tok == "=" or (tok[0] == "\\" and tok[1:] in RELATIONS):
      if unbalanced or (stack and not scripts):
        nested = True
      elif not stack:
        relations.append((m.start(), m.end()))
    elif tok == "," and not stack and not unbalanced:
      commas.append(m.start())
  return relations, commas, nested


def _split(text: str, cuts: list[tuple[int, int]]) -> list[str]:
  out, prev = [], 0
  for start, end in cuts:
    out.append(text[prev:start])
    prev = end
  out.append(text[prev:])
  return out


def relation_sides(pred: str) -> list[str] | None:
  """The parts of a prediction that must each be equivalent to the gold (module docstring):
  None if it has no relation; [] if its relation cannot score."""
  text = normalize.strip_delims(pred)
  relations, commas, nested = _scan(text)
  if nested and normalize.unwrap_text(text) != text:   # `\\text{x = 5}`: read through it
    text = normalize.unwrap_text(text)
    relations, commas, nested = _scan(text)
  if nested:
    return []
  if not relations:
    return None
  parts = _split(text, [(c, c + 1) for c in commas])
  if len(parts) > 1:
    values = []
    for part in parts:
      part_relations, _, part_nested = _scan(part)
      if part_nested or len(part_relations) != 1 or part[slice(*part_relations[0])] != "=":
        break
      name, value = _split(part, part_relations)
      if not is_name(name) or not value.strip():
        break
      values.append(value.strip())
    else:
      return [", ".join(values)]
  sides = _split(text, relations)
  sides = [side for side in sides[:-1] if not is_name(side)] + sides[-1:]
  return [] if any(not side.strip() for side in sides) else sides
