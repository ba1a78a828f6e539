"""MathTask and GSM8KTask on the real data: counts, prompts, rewards, bad files."""

import json

import pytest

from score_jax.tasks import prompts
from score_jax.tasks import sources
from score_jax.tasks.gsm8k import GSM8KTask, gold_answer
from score_jax.tasks.math.task import MathTask, format_prompt


@pytest.fixture(scope="module")
def math_task(shared_data):
  task = MathTask(shared_data)
  yield task
  task.close()


@pytest.fixture(scope="module")
def gsm8k_task(shared_data):
  task = GSM8KTask(shared_data)
  yield task
  task.close()


# train + validation = the paper's 12,000 training problems (validation: 500 held out of them).
@pytest.mark.parametrize("split,count", [("train", 11_500), ("validation", 500), ("test", 500),
                                         ("test_full", 5_000)])
def test_math_counts(math_task, split, count):
  problems = math_task.load(split)
  assert len(problems) == count
  assert len({p.uid for p in problems}) == count


# train + validation = the file's 7,473 (validation: 500 held out of them).
@pytest.mark.parametrize("split,count", [("train", 6_973), ("validation", 500), ("test", 1_319)])
def test_gsm8k_counts(gsm8k_task, split, count):
  assert len(gsm8k_task.load(split)) == count


def test_math_prompt_layout(math_task):
  problem = math_task.load("test")[0]
  assert problem.uid == "test/precalculus/807.json"
  assert problem.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
  assert problem.prompt == (
      prompts.MATH_TURN1_INSTRUCTION + "\n\nProblem:\nConvert the point $(0,3)$ in "
      "rectangular coordinates to polar coordinates.  Enter your answer in the form "
      "$(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$\n\nSolution:")
  assert problem.meta["subject"] == "Precalculus" and problem.meta["level"] == 2
  assert math_task.turn2_instruction == prompts.MATH_TURN2_INSTRUCTION
  assert math_task.name == "math"
  assert math_task.splits == ("train", "validation", "test", "test_full")


def test_paper_prompts_verbatim():
  assert prompts.MATH_TURN1_INSTRUCTION.startswith("You are a math expert. When you respond,")
  assert prompts.MATH_TURN1_INSTRUCTION.endswith(
      'write it in the form "Final Answer: The final answer is $answer$. I hope it is correct."')
  assert prompts.MATH_TURN2_INSTRUCTION.startswith(
      "There might be an error in the solution above because of lack of understanding of the "
      "question. Please correct the error, if any, and rewrite the solution. Only output the "
      "final solution! At the end of the Solution,")
  assert prompts.CODE_TURN2_INSTRUCTION.endswith("Only output the final correct Python program!")
  assert prompts.MBPP_TURN1_TEMPLATE.format(text="T", tests="A\nB", code="C") == (
      "You are an expert Python programmer, and here is your task: T Your code should pass "
      "these tests:\n\nA\nB\n[BEGIN]\nC\n[DONE]")
  assert prompts.MBPP_FEWSHOT_TASK_IDS == (2, 3, 4)


def test_test_full_answers_come_from_solutions(math_task):
  problems = {p.uid: p for p in math_task.load("test_full")}
  assert problems["test/algebra/1.json"].answer == "2"
  assert problems["test/algebra/2.json"].answer == "\\frac{1}{2}"


def test_math500_reference_solutions_get_reward_1(math_task):
  problems = math_task.load("test")
  assert math_task.rewards(problems, [p.meta["solution"] for p in problems]) == [1.0] * 500


def test_test_full_reference_solutions_get_reward_1(math_task):
  problems = math_task.load("test_full")
  assert sum(math_task.rewards(problems, [p.meta["solution"] for p in problems])) == 5000


def test_wrong_answers_get_reward_0(math_task):
  problems = math_task.load("test")[:50]
  wrong = [f"Final Answer: The final answer is ${p.answer} + 1$. I hope it is correct."
           for p in problems]
  assert math_task.rewards(problems, wrong) == [0.0] * 50
  assert math_task.rewards(problems[:3], ["I don't know."] * 3) == [0.0] * 3


def test_paper_answer_format_gets_reward(math_task):
  problem = math_task.load("test")[1]   # gold p - q
  assert problem.answer == "p - q"
  good = "... so the sum is p - q.\nFinal Answer: The final answer is $p-q$. I hope it is correct."
  assert math_task.reward(problem, good) == 1.0
  assert math_task.reward(problem, good.replace("$p-q$", "$q-p$")) == 0.0


def test_turn2_response_graded_on_final_box(math_task):
  problem = math_task.load("test")[2]
  assert problem.answer == "\\frac{14}{3}"
  quotes_wrong_then_right = ("In the solution above I found $\\boxed{5}$, which is wrong. "
                             "Correcting: the value is $\\boxed{\\frac{14}{3}}$.")
  quotes_right_then_wrong = ("Above: $\\boxed{\\frac{14}{3}}$. On reflection the answer is "
                             "$\\boxed{5}$.")
  assert math_task.rewards([problem] * 2, [quotes_wrong_then_right, quotes_right_then_wrong]) == [
      1.0, 0.0]


def test_answer_key(math_task):
  assert math_task.answer_key("so $\\boxed{\\dfrac{1}{2}}$.") == "\\frac{1}{2}"
  assert math_task.answer_key("Final Answer: The final answer is $10,\\!080$. I hope it is "
                              "correct.") == "10080"
  assert math_task.answer_key("no answer") is None


def test_gsm8k_gold_and_rewards(gsm8k_task):
  problems = gsm8k_task.load("test")
  assert problems[0].answer == "18"
  assert problems[0].prompt == format_prompt(
      "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and "
      "bakes muffins for her friends every day with four. She sells the remainder at the "
      "farmers' market daily for $2 per fresh duck egg. How much in dollars does she make "
      "every day at the farmers' market?")
  assert gsm8k_task.turn2_instruction == prompts.MATH_TURN2_INSTRUCTION
  # Reference solutions (ending in "#### N") get reward 1.
  reference = [p.meta["solution"] + "\n#### " + p.answer for p in problems]
  assert gsm8k_task.rewards(problems, reference) == [1.0] * len(problems)
  paper_form = "Final Answer: The final answer is $\\$18$. I hope it is correct."
  assert gsm8k_task.reward(problems[0], paper_form) == 1.0
  assert gsm8k_task.reward(problems[0], paper_form.replace("18", "19")) == 0.0


def test_gsm8k_gold_answer_strips_thousands():
  assert gold_answer("He pays 2,000 + 125 = <<2000+125=2125>>2,125\n#### 2,125") == "2125"
  assert gold_answer("no hashes") is None


def test_gsm8k_reference_solutions_train(gsm8k_task):
  problems = gsm8k_task.load("train") + gsm8k_task.load("validation")
  with open(gsm8k_task.data_dir / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
    answers = [json.loads(line)["answer"] for line in f]   # the raw reference solutions
  # uids keep the train-file row: gsm8k/train/<row>.
  rows = [int(p.uid.rsplit("/", 1)[1]) for p in problems]
  assert sorted(rows) == list(range(7_473))
  assert sum(gsm8k_task.rewards(problems, [answers[i] for i in rows])) == 7_473


def test_unknown_split(math_task):
  with pytest.raises(ValueError, match="no split 'dev'"):
    math_task.load("dev")


# ------------------------------------------------------------------- bad files

def _write(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_math_malformed_line(tmp_path):
  _write(tmp_path / "math500" / "test.jsonl",
         ['{"problem": "1+1?", "answer": "2"}', '{"problem": "2+2?", "answer": '])
  with pytest.raises(ValueError, match=r"math500/test\.jsonl:2: malformed JSON"):
    MathTask(tmp_path).load("test")


def test_math_missing_field(tmp_path):
  _write(tmp_path / "math500" / "test.jsonl",
         ['{"problem": "1+1?", "answer": "2"}', '{"question": "2+2?", "answer": "4"}'])
  with pytest.raises(ValueError, match=r"test\.jsonl:2: missing field 'problem'"):
    MathTask(tmp_path).load("test")


def test_math_record_without_answer_or_solution(tmp_path):
  _write(tmp_path / "math" / "test.jsonl",
         ['{"problem": "1+1?", "solution": "It is $\\\\boxed{2}$."}', "",
          '{"problem": "2+2?", "solution": "It is 4."}'])
  with pytest.raises(ValueError, match=r"math/test\.jsonl:3: no \\boxed\{\} answer"):
    MathTask(tmp_path).load("test_full")


def test_math_empty_file(tmp_path):
  _write(tmp_path / "math500" / "test.jsonl", [])
  with pytest.raises(ValueError, match="no records"):
    MathTask(tmp_path).load("test")


def test_gsm8k_missing_hashes(tmp_path):
  _write(tmp_path / "gsm8k" / "test.jsonl",
         ['{"question": "1+1?", "answer": "1+1=2\\n#### 2"}',
          '{"question": "2+2?", "answer": "it is four"}'])
  with pytest.raises(ValueError, match=r"gsm8k/test\.jsonl:2: field 'answer' has no '####"):
    GSM8KTask(tmp_path).load("test")


def test_source_serves_extra_split(tmp_path, shared_data):
  _write(tmp_path / "dev.jsonl", ['{"problem": "What is $1+1$?", "answer": "2"}'])
  task = MathTask(shared_data, source=sources.FileSource(tmp_path / "dev.jsonl", "dev"))
  try:
    assert task.splits == ("train", "validation", "test", "test_full", "dev")
    (problem,) = task.load("dev")
    assert problem.uid == "math/dev/0" and problem.answer == "2"
    assert task.reward(problem, "$\\boxed{2}$") == 1.0
  finally:
    task.close()


def test_close_releases_the_shared_pool(shared_data):
  a, b = MathTask(shared_data), GSM8KTask(shared_data)
  problem = a.load("test")[0]
  assert a.reward(problem, "\\boxed{(3, \\pi/2)}") == 1.0
  gsm = b.load("test")[0]
  assert b.reward(gsm, "\\boxed{\\frac{36}{2}}") == 1.0
  assert a._pool is b._pool           # one shared pool, reused
  pool = a._pool
  a.close()
  assert a._pool is None and not pool._closed     # b still holds it
  b.close()
  a.close()                                       # idempotent
  # A task used again after close() takes a new reference (a warm or a fresh pool).
  assert a.reward(problem, "\\boxed{(3, \\pi/2)}") == 1.0
  a.close()
