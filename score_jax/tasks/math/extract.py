"""The final answer of a math response, found in time linear in the response's length.

Extraction (`extract_answer`): the answer is the content of the LAST answer marker in the
text, where a marker is either a `\\boxed{...}` / `\\fbox{...}` (brace-matched; also `\\boxed 5`
without braces; a box nested inside another box belongs to the outer one) or the paper's
"The final answer is $X$" form (also `$$X$$`, `\\(X\\)`, or a bare X followed by the paper's
"I hope it is correct" on the same line; "the final answer is" in prose is no marker). So a
turn-2 response that quotes the turn-1 box and then gives a new final answer is graded on
the new one. A final marker that is unusable (an unclosed box of a truncated response, an
empty box) gives None: an earlier marker is never used instead. A final marker that is
struck out (inside `\\sout{...}`, `\\st{...}`, `\\cancel{...}` and the like, or between
Markdown `~~` on its line) is a retracted answer: None too.

Bounded work. This runs in the training process, before any grader pool, on untrusted text,
so every step is linear: one pass finds the boxes (each brace group is scanned once, boxes
nested in a box are skipped), the "final answer is" statements are visited from the last one
back and only the last real one is read, and newline / "I hope it is correct" positions are
found once and looked up by bisection. A response longer than `MAX_RESPONSE_CHARS` has no
answer (None, reward 0): at 1,024 new tokens per turn (configs/gemma2_2b_math.py) a real
response would need 256 characters per token to reach it, so no sampled response is cut; a
64k-character response is read whole in a few milliseconds.

Why not read only a tail of the response: a cut that lands inside an open box would promote a
box nested in it to the final answer (`\\boxed{<junk>\\boxed{7}}` would grade as 7, where
the whole response's final answer is the junk); reading the whole text keeps the verdict
exactly that of the rule above.
"""

from __future__ import annotations

import bisect
import re

# Responses longer than this (characters) have no answer; see the module docstring.
MAX_RESPONSE_CHARS = 1 << 18

BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_FINAL_RE = re.compile(r"final answer is\s*:?\s*", re.IGNORECASE)
_HOPE_RE = re.compile(r"I hope it is correct", re.IGNORECASE)
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_DOLLAR_TOKEN_RE = re.compile(r"\\.|\$", re.DOTALL)
_BARE_TOKEN_RE = re.compile(r"[^\s$]*")
_STRIKE_RE = re.compile(
    r"\\(?:sout|st|cancel|bcancel|xcancel|xout|stkout|hcancel|strike)(?![A-Za-z])\s*\{")


def match_brace(text: str, i: int) -> int | None:
  """Index just past the `}` matching the `{` at text[i]; None if unclosed.

  Escaped braces (`\\{`, `\\}`) do not count. Linear in the length scanned.
  """
  depth = 0
  for m in _BRACE_TOKEN_RE.finditer(text, i):
    c = m.group()
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return m.end()
  return None


def boxes(text: str) -> list[tuple[int, int, str | None]]:
  """(start, end, content) of every box that is not inside another box; content None if bad.

  Linear: each box's group is scanned once and boxes inside it are skipped; an unclosed box
  runs to the end of the text and ends the list.
  """
  out: list[tuple[int, int, str | None]] = []
  for m in BOX_RE.finditer(text):
    if out and m.start() < out[-1][1]:
      continue  # nested inside the previous (outer) box
    i = m.end()
    while i < len(text) and text[i] in " \t":
      i += 1
    if i < len(text) and text[i] == "{":
      end = match_brace(text, i)
      if end is None:
        out.append((m.start(), len(text), None))
        break
      out.append((m.start(), end, text[i + 1:end - 1]))
    elif i > m.end():  # `\boxed 5`: one token, up to whitespace or `$`
      tok = _BARE_TOKEN_RE.match(text, i).group(0)
      out.append((m.start(), i + len(tok), tok.rstrip(".,;") or None))
    else:
      out.append((m.start(), i, None))
  return out


def _closing_dollar(text: str, i: int) -> int | None:
  """Index of the first unescaped `$` at or after i."""
  for m in _DOLLAR_TOKEN_RE.finditer(text, i):
    if m.group() == "$":
      return m.start()
  return None


def _last_final_answer(text: str) -> tuple[int, str | None] | None:
  """(start, content) of the last "The final answer is X" statement, None if there is none.

  Statements are visited from the last one back; a prose "the final answer is ..." (bare, with
  no "I hope it is correct" on its line) is no statement and is skipped in O(log n).
  """
  markers = list(_FINAL_RE.finditer(text))
  if not markers:
    return None
  newlines: list[int] | None = None
  hopes: list[int] | None = None
  for m in reversed(markers):
    i = m.end()
    if text.startswith("$$", i):
      end = text.find("$$", i + 2)
      return m.start(), (text[i + 2:end] if end >= 0 else None)
    if text.startswith("$", i):
      end = _closing_dollar(text, i + 1)
      return m.start(), (text[i + 1:end] if end is not None else None)
    if text.startswith("\\(", i) or text.startswith("\\[", i):
      end = text.find("\\)" if text[i + 1] == "(" else "\\]", i + 2)
      return m.start(), (text[i + 2:end] if end >= 0 else None)
    # Bare: only in the paper's full form, "... is X. I hope it is correct." on one line.
    if newlines is None:
      newlines = [n.start() for n in re.finditer("\n", text)]
      hopes = [h.start() for h in _HOPE_RE.finditer(text)]
    k = bisect.bisect_left(newlines, i)
    line_end = newlines[k] if k < len(newlines) else len(text)
    k = bisect.bisect_left(hopes, i)
    if k == len(hopes) or hopes[k] >= line_end:
      continue  # prose such as "the final answer is positive, because ..."
    content = text[i:hopes[k]].strip()
    return m.start(), (content[:-1] if content.endswith(".") else content)
  return None


def _struck_out(text: str, start: int, end: int) -> bool:
  """Whether text[start:end] lies inside a strike-out command's group or between `~~`."""
  group_end = -1
  for m in _STRIKE_RE.finditer(text, 0, start):
    if m.start() < group_end:
      continue  # inside the previous strike-out group
    close = match_brace(text, m.end() - 1)
    group_end = len(text) if close is None else close
    if group_end > start:
      return True
  line_start = text.rfind("\n", 0, start) + 1
  line_end = text.find("\n", end)
  line_end = len(text) if line_end < 0 else line_end
  return text.count("~~", line_start, start) % 2 == 1 and text.find("~~", end, line_end) >= 0


def extract_answer(text: str) -> str | None:
  """The final answer of a response (see the module docstring), or None if there is none."""
  if len(text) > MAX_RESPONSE_CHARS:
    return None
  found = boxes(text)
  final: tuple[int, int, str | None] | None = found[-1] if found else None
  statement = _last_final_answer(text)
  if statement is not None and (final is None or statement[0] > final[0]):
    final = (statement[0], statement[0], statement[1])
  if final is None or final[2] is None:
    return None
  if _struck_out(text, final[0], final[1]):
    return None
  content = final[2].strip()
  return content or None
