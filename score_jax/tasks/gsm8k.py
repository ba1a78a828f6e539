"""GSM8K (Cobbe et al. 2021): grade-school word problems with integer answers.

Splits (files under `data_dir`): "train" gsm8k/train.jsonl minus "validation" (6,973),
"validation" 500 problems held out of gsm8k/train.jsonl (the rule of `math.task.AnswerTask`:
seeded, fixed; uids keep their train-file row, `gsm8k/train/<row>`), "test" gsm8k/test.jsonl
(1,319). Records are {"question", "answer"}; the gold answer is the text after the last
"####" of "answer" with thousands commas stripped; the reasoning before it is kept in
`Problem.meta["solution"]`.

Not in the SCoRe paper. We use the MATH setup unchanged: the paper's MATH turn-1 instruction
with the same layout as `math.format_prompt` ("Problem:\\n{question}\\n\\nSolution:"), the
paper's MATH turn-2 instruction, and the same grader. The final answer of a response is
`extract_answer` (last \\boxed{} or "The final answer is $X$"), else GSM8K's own "#### X" form
(the last one), so GSM8K-style reference solutions grade as correct.

Few-shot (`num_shots` = k > 0, config.task.num_shots; 0, the default, is the zero-shot prompt
above, unchanged): for base (not instruction-tuned) models, which do not follow the zero-shot
instruction. The exemplars are the first k of `FEWSHOT_ROWS`, fixed rows of gsm8k/train.jsonl
(none of them in "validation"; their questions are not in "test"), removed from "train" when
used. Each exemplar is its question and its reference solution with the calculator
annotations `<<48/2=24>>` removed and the "#### X" line replaced by the paper's answer form,
with a bare number (the grader reads "The final answer is X. I hope it is correct."; with
`$X$` the model wrote dollar amounts such as "$2. I hope", which have no answer):

    {MATH_TURN1_INSTRUCTION}

    Problem:
    {question 1}

    Solution:
    {solution 1}
    Final Answer: The final answer is X1. I hope it is correct.

    ... (k exemplars, separated by one blank line)

    Problem:
    {question}

    Solution:

A base model continues past its answer with a new "Problem:" of its own; with k > 0 a response
is graded (and `answer_key`-ed) on its text before the first line that opens a new problem
(`response_text`), so the invented problem's answer never counts; where the grader's forms
give no answer, the number right after the last "final answer is" is read (`final_number`:
the model writes "The final answer is $2. I hope it is correct." for dollar amounts; a
sentence that names a second number or says "or" / "and" after it is a hedge and gives none).
With k > 0 the task's stop text "\nProblem:" (`Task.stop_texts`) ends an attempt there, so
the invented problem does not reach the turn-2 context.

Counterfactual first attempts: `demonstration` (the gold y1) is the reference solution in the
exemplars' form, calculator annotations removed, ending "Final Answer: The final answer is X. I
hope it is correct."; `corrupt` / `perturb` are `AnswerTask`'s (`math.nearmiss`), reading the
final answer where `extract` reads it (`answer_span`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from score_jax.tasks import base
from score_jax.tasks import prompts
from score_jax.tasks.math import nearmiss
from score_jax.tasks.math.extract import MAX_RESPONSE_CHARS
from score_jax.tasks.math.task import AnswerTask, SourceArg, extract_answer, format_prompt

_HASHES_RE = re.compile(r"####\s*([^\n]*)")
_CALCULATOR_RE = re.compile(r"<<[^<>\n]*>>")
# A line that opens a new problem: the exemplar header (or "Question:", the other common one).
_NEXT_PROBLEM_RE = re.compile(r"\n[ \t]*(?:Problem|Question)[ \t]*:")
# Few-shot fallback: a number right after the LAST "final answer is" ("$2. I hope ...").
_FINAL_MARK_RE = re.compile(r"final answer is", re.IGNORECASE)
_NUMBER_RE = re.compile(r"\s*:?\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")
_HEDGE_RE = re.compile(r"[0-9]|\b(?:or|and)\b", re.IGNORECASE)

# Rows (0-based line numbers) of gsm8k/train.jsonl used as few-shot exemplars, in order: the
# first 8 rows outside "validation", except row 3 (its solution names another person).
FEWSHOT_ROWS = (0, 1, 2, 4, 5, 6, 7, 8)
EXEMPLAR_TEMPLATE = ("Problem:\n{question}\n\nSolution:\n{solution}\n"
                     "Final Answer: The final answer is {answer}. I hope it is correct.")


def gold_answer(answer_field: str) -> str | None:
  """The gold answer of a GSM8K "answer" field: after the last "####", commas stripped."""
  found = _HASHES_RE.findall(answer_field)
  if not found:
    return None
  return found[-1].strip().replace(",", "") or None


def format_exemplar(rec: Mapping[str, Any]) -> str:
  """One worked example: the record's question and solution, in the paper's answer form."""
  answer_field = str(rec["answer"])
  solution = _CALCULATOR_RE.sub("", answer_field.rsplit("####", 1)[0]).strip()
  return EXEMPLAR_TEMPLATE.format(question=str(rec["question"]).strip(), solution=solution,
                                  answer=gold_answer(answer_field))


def format_fewshot_prompt(question: str, exemplars: list[str]) -> str:
  """The turn-1 prompt: the instruction, the exemplars, then the question (module docstring);
  with no exemplars, `math.format_prompt(question)` exactly."""
  if not exemplars:
    return format_prompt(question)
  shots = "\n\n".join(exemplars)
  return (f"{prompts.MATH_TURN1_INSTRUCTION}\n\n{shots}\n\n"
          f"Problem:\n{question}\n\nSolution:")


def response_text(response: str) -> str:
  """The response before the first line that opens a new problem ("Problem:" / "Question:"),
  trailing whitespace dropped; the whole response when there is none (a header on its first
  line is kept)."""
  found = _NEXT_PROBLEM_RE.search(response)
  return response if found is None else response[:found.start()].rstrip()


def final_number(response: str) -> str | None:
  """The number right after the last "final answer is" (an optional "$" and ":" before it,
  thousands commas kept for the grader), else None: reads "$2. I hope it is correct". A
  hedge is None: the rest of that sentence (up to ". ", a newline or the end) may not hold
  another number or an "or" / "and" ("72 or 73", "72, maybe 73", "72 and seventy")."""
  last = None
  for last in _FINAL_MARK_RE.finditer(response):
    pass
  if last is None:
    return None
  found = _NUMBER_RE.match(response, last.end())
  if found is None:
    return None
  rest = _SENTENCE_END_RE.split(response[found.end():], maxsplit=1)[0]
  return None if _HEDGE_RE.search(rest) else found.group(1)


class GSM8KTask(AnswerTask):
  """GSM8K with the MATH prompts and grader, zero- or few-shot. See the module docstring.

  Args:
    data_dir: folder laid out like shared/data (gsm8k/train.jsonl, gsm8k/test.jsonl).
    grader_workers: grader processes (items graded at once).
    timeout_s: wall-clock seconds per graded item; an item that takes longer is wrong.
    source: a `sources.RecordSource` (serving the split named by its `.split`) or a mapping
      split -> source, read instead of the files; records need "question" and "answer".
    num_shots: exemplars in the prompt (0..len(FEWSHOT_ROWS)); they come from the train
      records (the source serving "train", else gsm8k/train.jsonl).
  """

  name = "gsm8k"
  files = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
  required_fields = ("question", "answer")
  text_field = "question"

  @classmethod
  def from_config(cls, task_cfg: Mapping[str, Any]) -> "GSM8KTask":
    return cls(task_cfg["data_dir"], grader_workers=task_cfg["workers"],
               timeout_s=task_cfg["timeout_s"], num_shots=task_cfg.get("num_shots", 0))

  def __init__(self, data_dir, *, grader_workers: int = 2, timeout_s: float = 5.0,
               source: SourceArg = None, num_shots: int = 0):
    super().__init__(data_dir, grader_workers=grader_workers, timeout_s=timeout_s,
                     source=source)
    if not 0 <= int(num_shots) <= len(FEWSHOT_ROWS) or int(num_shots) != num_shots:
      raise ValueError(f"task 'gsm8k': config.task.num_shots={num_shots!r} must be an integer "
                       f"in 0..{len(FEWSHOT_ROWS)} (the exemplars are FEWSHOT_ROWS of "
                       f"score_jax/tasks/gsm8k.py)")
    self.num_shots = int(num_shots)
    # a base model writes its own next "Problem:" after the answer (EXEMPLAR_TEMPLATE's
    # header): end the attempt there; `response_text` cuts it before grading
    self.stop_texts = ("\nProblem:",) if self.num_shots else ()
    self._exemplars: list[str] | None = None

  @property
  def exemplar_rows(self) -> tuple[int, ...]:
    """The train-file rows in this task's prompt (removed from "train")."""
    return FEWSHOT_ROWS[:self.num_shots]

  def exemplars(self) -> list[str]:
    """The formatted exemplars of the prompt (read once from the train records)."""
    if self._exemplars is None:
      numbered = self._records("train") if self.num_shots else []
      if self.num_shots and len(numbered) <= max(self.exemplar_rows):
        raise ValueError(f"task 'gsm8k': num_shots={self.num_shots} needs train row "
                         f"{max(self.exemplar_rows)} but the train records have "
                         f"{len(numbered)}; lower config.task.num_shots")
      self._exemplars = [format_exemplar(numbered[i][1]) for i in self.exemplar_rows]
    return self._exemplars

  def load(self, split: str) -> list[base.Problem]:
    """`AnswerTask.load`, without the exemplar rows in "train"; with exemplars, a problem
    whose question is an exemplar's is an error (it would be answered in the prompt)."""
    problems = super().load(split)
    if not self.num_shots:
      return problems
    if split == "train":
      used = {f"gsm8k/train/{i}" for i in self.exemplar_rows}
      problems = [p for p in problems if p.uid not in used]
    numbered = self._records("train")
    shot_questions = {str(numbered[i][1]["question"]).strip() for i in self.exemplar_rows}
    for p in problems:
      if p.meta["question"].strip() in shot_questions:
        raise ValueError(f"task 'gsm8k', split {split!r}: problem {p.uid} is a few-shot "
                         f"exemplar (FEWSHOT_ROWS of score_jax/tasks/gsm8k.py); lower "
                         f"config.task.num_shots or drop the problem")
    return problems

  def _problem(self, split: str, index: int, rec: dict, where: str) -> base.Problem:
    gold = gold_answer(str(rec["answer"]))
    if gold is None:
      raise ValueError(f"{where}: field 'answer' has no '#### <number>' final answer")
    solution = str(rec["answer"]).rsplit("####", 1)[0].strip()
    meta = {"solution": solution}
    if self.num_shots:
      meta["question"] = str(rec["question"])
    return base.Problem(uid=f"gsm8k/{split}/{index}",
                        prompt=format_fewshot_prompt(rec["question"], self.exemplars()),
                        answer=gold, meta=meta)

  def extract(self, response: str) -> str | None:
    """`extract_answer`, else the last "#### X" (None past `MAX_RESPONSE_CHARS`, as for MATH);
    few-shot: of `response_text(response)` (what comes before an invented next problem)."""
    if len(response) > MAX_RESPONSE_CHARS:
      return None
    if self.num_shots:
      response = response_text(response)
    answer = extract_answer(response)
    if answer is None:
      answer = gold_answer(response)
    if answer is None and self.num_shots:
      answer = final_number(response)
    return answer

  # ---- counterfactual first attempts (`AnswerTask.corrupt` / `perturb`, math.nearmiss)

  def demonstration(self, problem: base.Problem, rng: np.random.Generator) -> str:
    """The reference solution in the exemplars' form (calculator annotations removed, then
    "Final Answer: The final answer is X. I hope it is correct."; deterministic): the gold
    first attempt of `score_jax.counterfactual`, and the sft stage's data."""
    solution = _CALCULATOR_RE.sub("", problem.meta["solution"]).strip()
    return f"{solution}\nFinal Answer: The final answer is {problem.answer}. I hope it is correct."

  def answer_span(self, response: str) -> tuple[int, int] | None:
    """(start, end) of the text `extract` reads as the final answer (the same order of forms:
    `extract_answer`'s, the last "#### X", few-shot the number after "final answer is")."""
    if len(response) > MAX_RESPONSE_CHARS:
      return None
    if self.num_shots:
      response = response_text(response)    # a prefix: the spans hold in the whole response
    span = nearmiss.math_span(response)
    if span is None:
      found = list(_HASHES_RE.finditer(response))
      if found and found[-1].group(1).strip():
        start = found[-1].start(1)
        span = (start, start + len(found[-1].group(1).rstrip()))
    if span is None and self.num_shots and final_number(response) is not None:
      last = list(_FINAL_MARK_RE.finditer(response))[-1]
      found = _NUMBER_RE.match(response, last.end())
      span = found.span(1)
    return span

