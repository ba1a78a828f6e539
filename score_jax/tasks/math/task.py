"""The MATH task (Hendrycks et al.): the SCoRe paper's training split and MATH500.

Splits (files under `data_dir`, the layout of `shared/data`):
  "train"      math/prm800k_style_train12k.reconstructed.jsonl  11,500 problems: the paper's
               12,000 training problems (MATH minus MATH500) minus "validation"
  "validation" the same file's 500 held-out problems (checkpoint selection; see below)
  "test"       math500/test.jsonl                                500 problems (MATH500)
  "test_full"  math/test.jsonl                                   5,000 problems; the gold
               answer is extracted from the reference solution (its last \\boxed{})
Two records of the 12k split (train/number_theory/7115 and 7117) have an empty gold answer
(`\\boxed{}` upstream): no response is graded correct on them.

Validation (`AnswerTask`, also GSM8K's): the records at `held_out_indices(...)` of the train
file: among the records whose problem text occurs once in the file, the first
`validation_size` (500) of `numpy.random.default_rng(validation_seed=0).permutation`, in file
order. "train" is the file without them, so the two never share a problem text. Problems keep
the uid of their train-file record. When a `source` serves "validation" itself, "train" is
served whole.

Prompt (zero-shot; the paper's MATH turn-1 instruction, then the problem):

    {MATH_TURN1_INSTRUCTION}

    Problem:
    {problem}

    Solution:

The turn-2 instruction is the paper's MATH turn-2 text. The reward is 1.0 iff the FINAL answer
of the response (`extract_answer`: the last \\boxed{} or "The final answer is $X$") is
equivalent to the gold answer (`is_equivalent`; hedged answers such as `7 or eight`, `7\\%`
against a gold without a percent sign, or `3 = 4` score 0), graded within `timeout_s` of wall
time per item however long the response: extraction and the fast checks run in the training
process in linear time on bounded text (`math.extract`, `math.normalize`), math-verify in a
process pool with a wall-clock kill (`math_grading`). The pool is shared at module level;
`close()` releases it.

Counterfactual first attempts (`score_jax.counterfactual`): `demonstration` is the record's
reference solution (also the sft stage's data); `corrupt` (the final answer changed to a wrong
one of the same kind, checked wrong by the grader) and `perturb` (one number changed, the final
answer's first) follow `math.nearmiss`, for MATH and GSM8K alike.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from score_jax.tasks import base
from score_jax.tasks import prompts
from score_jax.tasks import sources
from score_jax.tasks.math import grading as math_grading
from score_jax.tasks.math import nearmiss
from score_jax.tasks.math.answer import extract_answer, is_equivalent, normalize_answer
from score_jax.tasks.math.grading import grade_batch

__all__ = ["MathTask", "AnswerTask", "extract_answer", "is_equivalent", "normalize_answer",
           "grade_batch", "format_prompt"]

PROMPT_TEMPLATE = "{instruction}\n\nProblem:\n{problem}\n\nSolution:"


def format_prompt(problem: str) -> str:
  """The turn-1 user message for a math word problem (layout in the module docstring)."""
  return PROMPT_TEMPLATE.format(instruction=prompts.MATH_TURN1_INSTRUCTION, problem=problem)


SourceArg = sources.RecordSource | Mapping[str, sources.RecordSource] | None


def held_out_indices(texts: Sequence[str], size: int, seed: int) -> list[int]:
  """Indices (ascending) of `size` records held out of a split for validation: among the
  records whose text occurs once, the first `size` of a seeded permutation."""
  counts: dict[str, int] = {}
  for t in texts:
    counts[t] = counts.get(t, 0) + 1
  once = np.array([i for i, t in enumerate(texts) if counts[t] == 1], np.int64)
  if len(once) <= size:
    raise ValueError(f"{len(texts)} records ({len(once)} with a unique text) are too few to "
                     f"hold out {size} for validation and train on the rest")
  order = np.random.default_rng(seed).permutation(len(once))
  return sorted(once[order[:size]].tolist())


class AnswerTask(base.Task):
  """A task whose responses end in one final answer graded by the math grader.

  Subclasses set `name`, `files` (split -> path under data_dir) and `_problem`.
  """

  turn2_instruction = prompts.MATH_TURN2_INSTRUCTION
  files: Mapping[str, str] = {}
  required_fields: tuple[str, ...] = ()
  text_field = "problem"       # the record field whose text identifies a problem
  validation_size = 500        # problems of "train" held out as "validation" (module docstring)
  validation_seed = 0

  @classmethod
  def from_config(cls, task_cfg: Mapping[str, Any]) -> "AnswerTask":
    return cls(task_cfg["data_dir"], grader_workers=task_cfg["workers"],
               timeout_s=task_cfg["timeout_s"])

  def __init__(self, data_dir: str | pathlib.Path, *, grader_workers: int = 2,
               timeout_s: float = 5.0, source: SourceArg = None):
    self.data_dir = pathlib.Path(data_dir)
    self.grader_workers = grader_workers
    self.timeout_s = math_grading.check_timeout(timeout_s, f"task {self.name!r}")
    if source is None:
      self.sources: dict[str, sources.RecordSource] = {}
    elif isinstance(source, Mapping):
      self.sources = dict(source)
    else:
      self.sources = {source.split: source}
    held_out = ("train", "validation") if "train" in self.files else ()
    self.splits = tuple(dict.fromkeys([*held_out, *self.files, *self.sources]))
    self._pool: math_grading.GraderPool | None = None
    self._text_pool: list[str] | None = None   # corrupt()'s \text{} answers

  # ---- data

  def _problem(self, split: str, index: int, rec: dict, where: str) -> base.Problem:
    raise NotImplementedError

  def _records(self, split: str) -> list[tuple[str, dict]]:
    """(where, record) of every record that serves `split` (its source, else its file)."""
    if split in self.sources:
      src = self.sources[split]
      return [(f"{src!r} record {i}", rec)
              for i, rec in enumerate(src.read(self.required_fields))]
    path = self.data_dir / self.files[split]
    return [(f"{path}:{line}", rec)
            for line, rec in sources.read_numbered_records(path, self.required_fields)]

  def load(self, split: str) -> list[base.Problem]:
    """All problems of `split` (from `source` if it serves the split, else from the file);
    "train" / "validation" split the train records when no source serves "validation"."""
    base.check_split(self, split)
    if split not in ("train", "validation") or "validation" in self.sources:
      numbered = self._records(split)
      return [self._problem(split, i, rec, where) for i, (where, rec) in enumerate(numbered)]
    numbered = self._records("train")
    try:
      held = set(held_out_indices([str(rec.get(self.text_field, "")).strip()
                                   for _, rec in numbered],
                                  self.validation_size, self.validation_seed))
    except ValueError as e:
      raise ValueError(f"task {self.name!r}, split 'train': {e}; serve a 'validation' split "
                       f"too (source={{'validation': ...}}), then 'train' is not cut") from None
    return [self._problem("train", i, rec, where) for i, (where, rec) in enumerate(numbered)
            if (i in held) == (split == "validation")]

  # ---- grading

  def extract(self, response: str) -> str | None:
    """The final answer of a response."""
    return extract_answer(response)

  def _grader(self) -> math_grading.GraderPool:
    if self._pool is None:
      self._pool = math_grading.acquire_pool(self.grader_workers)
    return self._pool

  def rewards(self, problems: Sequence[base.Problem],
              responses: Sequence[str]) -> list[float]:
    """1.0 where the final answer is equivalent to the gold answer, else 0.0 (batched)."""
    if len(problems) != len(responses):
      raise ValueError(f"{self.name}.rewards: {len(problems)} problems but "
                       f"{len(responses)} responses")
    preds = [self.extract(r) for r in responses]
    verdicts = grade_batch(preds, [p.answer for p in problems], timeout_s=self.timeout_s,
                           pool=self._grader() if any(p is not None for p in preds) else None)
    return [float(v) for v in verdicts]

  def reward(self, problem: base.Problem, response: str) -> float:
    """r(y, y*) of one response (through the same pool as `rewards`)."""
    return self.rewards([problem], [response])[0]

  def answer_key(self, response: str) -> str | None:
    """The normalised final answer (None if the response has none)."""
    answer = self.extract(response)
    return None if answer is None else normalize_answer(answer)

  # ---- counterfactual first attempts (score_jax.counterfactual; rules in math.nearmiss)

  def answer_span(self, response: str) -> tuple[int, int] | None:
    """(start, end) of the text `extract` reads as the final answer, None if it reads none."""
    return nearmiss.math_span(response)

  def _text_answers(self) -> list[str]:
    """Other problems' answers for a "\\text{word}" answer's near miss: the test split's."""
    if self._text_pool is None:
      try:
        self._text_pool = [str(p.answer) for p in self.load("test")]
      except (ValueError, OSError, KeyError):
        self._text_pool = []
    return self._text_pool

  def corrupt(self, problem: base.Problem, response: str, rng: np.random.Generator) -> str:
    """`response` (a correct one, e.g. the gold solution) with its final answer replaced,
    where it states it, by the first of `nearmiss.wrong_answers` that the grader grades
    wrong (`math.nearmiss`: a digit run moved by 1..3, another choice letter, another
    problem's \\text{} answer, or "+1"). ValueError if it has no final answer or none is
    wrong."""
    span = self.answer_span(response)
    if span is None:
      raise ValueError(f"task {self.name!r}: corrupt() of {problem.uid}: the response has no "
                       "final answer the grader reads (a \\boxed{} or 'The final answer is')")
    old = response[span[0]:span[1]]
    pool = self._text_answers() if nearmiss.needs_pool(old) else []
    for new in nearmiss.wrong_answers(old, rng, pool):
      corrupted = nearmiss.restate(response, span, new)
      if new != old and self.rewards([problem], [corrupted])[0] == 0.0:
        return corrupted
    raise ValueError(f"task {self.name!r}: corrupt() of {problem.uid}: no near miss of the "
                     f"final answer {old!r} is graded wrong (score_jax/tasks/math/nearmiss.py)")

  def perturb(self, problem: base.Problem, response: str, rng: np.random.Generator) -> str:
    """`response` with one number changed, its final answer's first (`nearmiss.perturb`:
    else the last number of its last 3 lines; a response without a digit is kept)."""
    return nearmiss.perturb(response, self.answer_span(response), rng)

  def close(self) -> None:
    """Releases this task's reference to the shared grader pool."""
    if self._pool is not None:
      math_grading.release_pool(self._pool)
      self._pool = None


class MathTask(AnswerTask):
  """MATH: train (12k split minus validation), validation (500 of the 12k split), test
  (MATH500), test_full (5,000). See the module docstring.

  Args:
    data_dir: folder laid out like shared/data (math/..., math500/...).
    grader_workers: grader processes (items graded at once).
    timeout_s: wall-clock seconds per graded item (> 0); an item that takes longer is wrong.
    source: a `sources.RecordSource` (serving the split named by its `.split`) or a mapping
      split -> source; those splits are read from it instead of the files. Records need
      "problem" and "answer" or "solution"; "unique_id", "subject", "level" are optional.
  """

  name = "math"
  files = {
      "train": "math/prm800k_style_train12k.reconstructed.jsonl",
      "test": "math500/test.jsonl",
      "test_full": "math/test.jsonl",
  }
  required_fields = ("problem",)

  def _problem(self, split: str, index: int, rec: dict, where: str) -> base.Problem:
    answer = rec.get("answer")
    if answer is None:
      if "solution" not in rec:
        raise ValueError(f"{where}: needs field 'answer' or 'solution' (has {sorted(rec)})")
      answer = extract_answer(rec["solution"])
      if answer is None:
        raise ValueError(f"{where}: no \\boxed{{}} answer in field 'solution'")
    meta = {k: rec[k] for k in ("solution", "subject", "type", "level") if k in rec}
    return base.Problem(uid=str(rec.get("unique_id", f"math/{split}/{index}")),
                        prompt=format_prompt(rec["problem"]), answer=str(answer), meta=meta)

  def demonstration(self, problem: base.Problem, rng: np.random.Generator) -> str:
    """The record's reference solution (its final \\boxed{} is the answer; deterministic):
    the gold first attempt of `score_jax.counterfactual`, and the sft stage's data."""
    if "solution" not in problem.meta:
      raise base.MissingCapability(
          f"task 'math': problem {problem.uid} has no reference solution (record field "
          "'solution'), which a demonstration needs: serve records with one")
    return str(problem.meta["solution"])
