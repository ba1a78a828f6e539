"""GPT-3's arithmetic task (score_jax/tasks/arithmetic.py): hand-checked questions and prompts,
deterministic generation, disjoint splits, and the grader, including a reward hacker's attacks
(hedges, equations, several numbers, decimals, bad comma groups, text before the number)."""

import numpy as np
import pytest

from configs import base as base_config
from score_jax.tasks import arithmetic
from score_jax.tasks import prompts
from score_jax.tasks import registry
from score_jax.tasks.arithmetic import ArithmeticTask, parse_answer

# The first six test questions, one of each kind, answers worked out by hand.
FIRST_TEST = [("2d+", "3 plus 46", 49), ("2d-", "54 minus 43", 11),
              ("3d+", "546 plus 637", 1183), ("3d-", "745 minus 979", -234),
              ("2dx", "23 times 29", 667), ("1dc", "4-(0-8)", 12)]


@pytest.fixture(scope="module")
def splits():
  return {s: arithmetic.generate(s) for s in ("test", "validation", "train")}


def test_first_test_questions_by_hand(splits):
  assert splits["test"][:6] == FIRST_TEST
  assert [len(splits[s]) for s in ("test", "validation", "train")] == [1200, 600, 6000]


def test_generation_is_deterministic_and_the_answers_are_right(splits):
  assert arithmetic.generate("test") == splits["test"]
  words = {"plus": "+", "minus": "-", "times": "*"}
  for split, rows in splits.items():
    for i, (kind, question, answer) in enumerate(rows):
      assert kind == arithmetic.OPS[i % 6], (split, i)
      expr = " ".join(words.get(w, w) for w in question.split())
      assert eval(expr) == answer, (split, question)   # pylint: disable=eval-used
      numbers = [int(x) for x in expr.replace("(", " ").replace(")", " ").replace(
          "+", " ").replace("-", " ").replace("*", " ").split()]
      high = 1000 if kind.startswith("3d") else 10 if kind == "1dc" else 100
      assert all(0 <= x < high for x in numbers), (kind, question)


def test_splits_do_not_overlap(splits):
  keys = {s: {(k, q) for k, q, _ in rows} for s, rows in splits.items()}
  assert all(len(keys[s]) == len(splits[s]) for s in splits)   # no repeats inside a split
  assert not keys["test"] & keys["validation"]
  assert not keys["test"] & keys["train"]
  assert not keys["validation"] & keys["train"]


def test_zero_shot_prompt_is_gpt3s_question():
  task = ArithmeticTask()
  first = task.load("test")[0]
  assert (first.uid, first.prompt, first.answer) == ("test-0-2d+", "Q: What is 3 plus 46? A:",
                                                      49)
  assert task.load("test")[5].prompt == "Q: What is 4-(0-8)? A:"
  assert len(task.load("train")) == 6000


def test_two_shot_prompt_uses_train_exemplars_of_the_same_kind(splits):
  task = ArithmeticTask(num_shots=2)
  problems = task.load("test")
  # Train problems 0 and 6 are the first two 2d+ ones (70 plus 24, 74 plus 9).
  assert splits["train"][0] == ("2d+", "70 plus 24", 94)
  assert splits["train"][6] == ("2d+", "74 plus 9", 83)
  assert problems[0].prompt == ("Q: What is 70 plus 24? A:\n\n94\n\n"
                                "Q: What is 74 plus 9? A:\n\n83\n\n"
                                "Q: What is 3 plus 46? A:")
  for p in problems[:6]:   # every exemplar is of the question's kind
    kind = p.meta["kind"]
    shots = [splits["train"][arithmetic.OPS.index(kind) + 6 * s] for s in range(2)]
    assert p.prompt.startswith("".join(f"Q: What is {q}? A:\n\n{a}\n\n" for _, q, a in shots))
  train = task.load("train")
  assert len(train) == 6000 - 12
  shots = task.exemplar_indices()
  assert shots == {j + 6 * s for j in range(6) for s in range(2)}
  used = {q for i, (_, q, _) in enumerate(splits["train"]) if i in shots}
  assert len(used) == 12 and not used & {p.meta["question"] for p in train}


@pytest.mark.parametrize("response,value", [
    ("124", 124), (" 124\n\nQ: What is 1 plus 1? A:", 124), ("\n124", 124), ("124.", 124),
    ("-234", -234), ("\u2212234", -234), ("1,183", 1183), ("1,008 apples", 1008), ("0", 0),
    ("-0", 0), ("124 is the answer", 124), ("A: -234", -234), ("A:124", 124)])
def test_grader_reads_the_one_integer_of_the_first_line(response, value):
  assert parse_answer(response) == value


@pytest.mark.parametrize("response", [
    "76 or 77", "76, 77", "48+76=124", "124 = 48 + 76", "A: 124 (or 125)", "124.0", "12,34",
    "1,2345", "about 124 or so 3", "", "   ", "The answer", "\n\n", "--5", "124-5",
    "(124)2", "Q: What is 48 plus 76? A: 124"])
def test_grader_attacks_are_wrong(response):
  assert parse_answer(response) is None


def test_reward_and_answer_key():
  task = ArithmeticTask()
  p = task.load("test")[3]                       # 745 minus 979 = -234
  assert task.reward(p, "-234\nQ: What") == 1.0
  assert task.reward(p, "234") == 0.0            # the sign counts
  assert task.reward(p, "-234 or -233") == 0.0   # a hedge
  assert task.reward(p, "Q: -234") == 1.0        # one integer on the line, words around it
  assert task.reward(p, "\n-234") == 1.0         # leading blank lines are stripped
  assert task.answer_key("-234.") == "-234" and task.answer_key("x") is None


def test_corrupt_and_perturb_change_the_answer():
  task = ArithmeticTask()
  rng = np.random.default_rng(0)
  for p in task.load("test")[:12]:
    bad = task.corrupt(p, str(p.answer), rng)
    assert parse_answer(bad) - p.answer in (-10, -1, 1, 10)
    moved = task.perturb(p, f"{p.answer}\nQ:", rng)
    assert 1 <= abs(parse_answer(moved) - p.answer) <= 9
  assert task.perturb(p, "no number", rng) == "no number"


def test_registry_config_and_instructions():
  c = base_config.get_config()
  c.task.update(name="arithmetic", num_shots=3)
  task = registry.make_task(c.task)
  assert isinstance(task, ArithmeticTask) and task.num_shots == 3
  assert task.stop_texts == ("\n",)
  assert task.turn2_instruction == prompts.ARITHMETIC_TURN2_INSTRUCTION
  assert prompts.self_refine_instruction("arithmetic") == (
      prompts.SELF_REFINE_ARITHMETIC_INSTRUCTION)
  with pytest.raises(ValueError, match="num_shots=-1"):
    ArithmeticTask(num_shots=-1)
  with pytest.raises(ValueError, match="no split 'dev'"):
    task.load("dev")


def test_one_digit_kinds_use_all_100_questions_once():
  kinds = ("1d+", "1d-", "1dx")
  rows = {s: arithmetic.generate(s, kinds) for s in ("test", "validation", "train")}
  assert [len(rows[s]) for s in ("test", "validation", "train")] == [150, 30, 120]
  assert [k for k, _, _ in rows["test"][:6]] == list(kinds) * 2   # round robin
  for kind in kinds:
    questions = [q for s in rows for k, q, _ in rows[s] if k == kind]
    assert len(questions) == len(set(questions)) == 100           # disjoint, all of them
  task = ArithmeticTask(num_shots=16, kinds="1d+,1d-,1dx")
  assert len(task.load("test")) == 150 and len(task.load("train")) == 120 - 48
  first = task.load("test")[0]
  assert first.uid == "test-0-1d+" and first.prompt.count("Q: What is") == 17
  assert all(" plus " in line for line in first.prompt.split("\n\n")[0::2])
  with pytest.raises(ValueError, match="num_shots=41 is more than"):
    ArithmeticTask(num_shots=41, kinds="1dx")
  with pytest.raises(ValueError, match="config.task.kinds='2d\\+,4d\\+' must list"):
    ArithmeticTask(kinds="2d+,4d+")
