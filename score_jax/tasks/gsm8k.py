"""GSM8K (Cobbe et al. 2021): grade-school word problems with integer answers.

Splits (files under `data_dir`): "train" gsm8k/train.jsonl minus "validation" (6,973),
"validation" 500 problems held out of gsm8k/train.jsonl (the rule of `math.task.AnswerTask`:
seeded, fixed; uids keep their train-file row, `gsm8k/train/<row>`), "test" gsm8k/test.jsonl
(1,319). Records are {"question", "answer"}; the gold answer is the text after the last
"####" of "answer" with thousands commas stripped; the reasoning before it is kept in
`Problem.meta["solution"]`.

Not in the SCoRe paper. We use the MATH setup unchanged, zero-shot: the paper's MATH turn-1
instruction with the same layout as `math.format_prompt` ("Problem:\\n{question}\\n\\n
Solution:"), the paper's MATH turn-2 instruction, and the same grader. The final answer of a
response is `extract_answer` (last \\boxed{} or "The final answer is $X$"), else GSM8K's own
"#### X" form (the last one), so GSM8K-style reference solutions grade as correct.
"""

from __future__ import annotations

import re

from score_jax.tasks import base
from score_jax.tasks.math.extract import MAX_RESPONSE_CHARS
from score_jax.tasks.math.task import AnswerTask, extract_answer, format_prompt

_HASHES_RE = re.compile(r"####\s*([^\n]*)")


def gold_answer(answer_field: str) -> str | None:
  """The gold answer of a GSM8K "answer" field: after the last "####", commas stripped."""
  found = _HASHES_RE.findall(answer_field)
  if not found:
    return None
  return found[-1].strip().replace(",", "") or None


class GSM8KTask(AnswerTask):
  """GSM8K with the MATH prompts and grader. See the module docstring.

  Args:
    data_dir: folder laid out like shared/data (gsm8k/train.jsonl, gsm8k/test.jsonl).
    grader_workers: grader processes (items graded at once).
    timeout_s: wall-clock seconds per graded item; an item that takes longer is wrong.
    source: a `sources.RecordSource` (serving the split named by its `.split`) or a mapping
      split -> source, read instead of the files; records need "question" and "answer".
  """

  name = "gsm8k"
  files = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
  required_fields = ("question", "answer")
  text_field = "question"

  def _problem(self, split: str, index: int, rec: dict, where: str) -> base.Problem:
    gold = gold_answer(str(rec["answer"]))
    if gold is None:
      raise ValueError(f"{where}: field 'answer' has no '#### <number>' final answer")
    solution = str(rec["answer"]).rsplit("####", 1)[0].strip()
    return base.Problem(uid=f"gsm8k/{split}/{index}", prompt=format_prompt(rec["question"]),
                        answer=gold, meta={"solution": solution})

  def extract(self, response: str) -> str | None:
    """`extract_answer`, else the last "#### X" (None past `MAX_RESPONSE_CHARS`, as for MATH)."""
    if len(response) > MAX_RESPONSE_CHARS:
      return None
    answer = extract_answer(response)
    if answer is None:
      answer = gold_answer(response)
    return answer
