"""GSM8K few-shot (config.task.num_shots): the exact prompt, the exemplars kept out of every
split that is evaluated or trained on, grading of a base model's run-on response, and
num_shots=0 unchanged."""

import json

import pytest

from configs import base as base_config
from score_jax import config_lib
from score_jax.tasks import base
from score_jax.tasks import gsm8k
from score_jax.tasks import prompts
from score_jax.tasks import registry
from score_jax.tasks.gsm8k import FEWSHOT_ROWS, GSM8KTask
from score_jax.tasks.math.task import format_prompt

# The instruction (prompts.MATH_TURN1_INSTRUCTION, the paper's), then train rows 0 and 1 of
# gsm8k/train.jsonl, written out by hand: calculator annotations gone, "#### 72" turned into
# the paper's answer sentence with a bare number.
TWO_SHOTS = (
    "Problem:\n"
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?\n"
    "\n"
    "Solution:\n"
    "Natalia sold 48/2 = 24 clips in May.\n"
    "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
    "Final Answer: The final answer is 72. I hope it is correct.\n"
    "\n"
    "Problem:\n"
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
    "babysitting. How much did she earn?\n"
    "\n"
    "Solution:\n"
    "Weng earns 12/60 = $0.2 per minute.\n"
    "Working 50 minutes, she earned 0.2 x 50 = $10.\n"
    "Final Answer: The final answer is 10. I hope it is correct.")


@pytest.fixture(scope="module")
def zero_shot(shared_data):
  task = GSM8KTask(shared_data)
  yield task
  task.close()


@pytest.fixture(scope="module")
def eight_shot(shared_data):
  task = GSM8KTask(shared_data, num_shots=8)
  yield task
  task.close()


def test_two_shot_prompt_is_exactly_the_hand_written_text(shared_data):
  task = GSM8KTask(shared_data, num_shots=2)
  first = task.load("test")[0]
  question = json.loads((shared_data / "gsm8k/test.jsonl").read_text().splitlines()[0])
  assert question["question"].startswith("Janet’s ducks lay 16 eggs per day.")
  expected = (prompts.MATH_TURN1_INSTRUCTION + "\n\n" + TWO_SHOTS + "\n\n"
              + "Problem:\n" + question["question"] + "\n\nSolution:")
  assert first.prompt == expected
  assert first.answer == "18" and first.uid == "gsm8k/test/0"
  assert task.exemplar_rows == (0, 1)


def test_num_shots_zero_is_todays_zero_shot_task(shared_data, zero_shot):
  via_config = registry.make_task(dict(base_config.get_config().task, name="gsm8k",
                                       data_dir=str(shared_data)))
  assert via_config.num_shots == 0
  for split in ("test", "validation", "train"):
    problems = zero_shot.load(split)
    assert problems == via_config.load(split)
    records = {}
    for p in problems[:50]:
      assert p.meta.keys() == {"solution"}
      records[p.uid] = p
    path = "gsm8k/test.jsonl" if split == "test" else "gsm8k/train.jsonl"
    lines = (shared_data / path).read_text().splitlines()
    for uid, p in records.items():
      assert p.prompt == format_prompt(json.loads(lines[int(uid.rsplit("/", 1)[1])])["question"])
  assert len(zero_shot.load("train")) == 6_973


def test_config_reaches_the_task(shared_data):
  cfg = dict(base_config.get_config().task, name="gsm8k", data_dir=str(shared_data),
             num_shots=3)
  task = registry.make_task(cfg)
  assert task.num_shots == 3 and task.exemplar_rows == (0, 1, 2)
  assert task.load("test")[5].prompt.count("\nFinal Answer: The final answer is ") == 3


def test_exemplars_are_in_no_split_that_is_trained_or_evaluated(shared_data, eight_shot,
                                                                zero_shot):
  lines = (shared_data / "gsm8k/train.jsonl").read_text().splitlines()
  shot_questions = {json.loads(lines[i])["question"].strip() for i in FEWSHOT_ROWS}
  shot_uids = {f"gsm8k/train/{i}" for i in FEWSHOT_ROWS}
  train = eight_shot.load("train")
  validation = eight_shot.load("validation")
  test = eight_shot.load("test")
  assert len(train) == 6_973 - 8 and len(validation) == 500 and len(test) == 1_319
  # validation and test are the zero-shot task's: the exemplar rows were never in them
  assert [p.uid for p in validation] == [p.uid for p in zero_shot.load("validation")]
  for split in (train, validation, test):
    assert not shot_uids & {p.uid for p in split}
    assert not shot_questions & {p.meta["question"].strip() for p in split}
  assert {p.uid for p in zero_shot.load("train")} - {p.uid for p in train} == shot_uids


def test_a_split_holding_an_exemplar_is_refused(tmp_path, shared_data):
  (tmp_path / "gsm8k").mkdir()
  train_lines = (shared_data / "gsm8k/train.jsonl").read_text().splitlines()[:9]
  (tmp_path / "gsm8k/train.jsonl").write_text("\n".join(train_lines) + "\n")
  # test row 1 is train row 2 (an exemplar with num_shots >= 3)
  (tmp_path / "gsm8k/test.jsonl").write_text(train_lines[8] + "\n" + train_lines[2] + "\n")
  assert len(GSM8KTask(tmp_path, num_shots=2).load("test")) == 2
  with pytest.raises(ValueError, match=r"gsm8k/test/1 is a few-shot exemplar"):
    GSM8KTask(tmp_path, num_shots=3).load("test")
  (tmp_path / "gsm8k/train.jsonl").write_text("\n".join(train_lines[:4]) + "\n")
  with pytest.raises(ValueError, match="needs train row 4 but the train records have 4"):
    GSM8KTask(tmp_path, num_shots=4).load("test")


@pytest.mark.parametrize("bad", [-1, 9, 2.5])
def test_num_shots_out_of_range(bad, shared_data):
  with pytest.raises(ValueError, match=r"config.task.num_shots=.* must be an integer in 0..8"):
    GSM8KTask(shared_data, num_shots=bad)


def test_negative_num_shots_fails_the_config_check():
  c = base_config.get_config()
  c.task.num_shots = -1
  with pytest.raises(config_lib.ConfigError, match=r"config.task.num_shots=-1 is out of range"):
    config_lib.check_ranges(c)


# What Gemma 3 270M wrote, 4-shot (shortened): an answer, then a problem of its own.
RUN_ON = ("James runs 3*60 = 180 meters.\nHe runs 60+30+60 = 180+180 = 360 meters.\n"
          "Final Answer: The final answer is 360. I hope it is correct.\n\nProblem:\n"
          "A store has 100 computers.\n\nSolution:\nThe store made 100.\n"
          "Final Answer: The final answer is 100. I hope it is correct.\n\nProblem:\nA")


def test_response_text_stops_at_the_next_problem():
  assert gsm8k.response_text(RUN_ON) == RUN_ON.split("\n\nProblem:")[0]
  assert gsm8k.response_text("a\n  Question: b") == "a"
  assert gsm8k.response_text("Problem: restated\nanswer") == "Problem: restated\nanswer"
  assert gsm8k.response_text("no header") == "no header"


def test_run_on_response_is_graded_on_its_own_answer(shared_data):
  few = GSM8KTask(shared_data, num_shots=4, grader_workers=1)
  zero = GSM8KTask(shared_data, grader_workers=1)
  try:
    problem = few.load("test")[3]          # James's sprints: 3 x 3 x 60 = 540
    assert problem.answer == "540"
    assert few.extract(RUN_ON) == "360"    # zero-shot reads the invented problem's 100
    assert zero.extract(RUN_ON) == "100"
    right = RUN_ON.replace("360. I hope", "540. I hope")
    assert few.rewards([problem] * 3, [RUN_ON, right, right.replace("100. I", "540. I")]) == [
        0.0, 1.0, 1.0]
    assert zero.reward(problem, right) == 0.0
  finally:
    few.close()
    zero.close()


@pytest.mark.parametrize("response,answer", [
    ("Final Answer: The final answer is $2. I hope it is correct.", "2"),
    ("The final answer is $250,000. I hope it is correct.", "250,000"),
    ("the final answer is: -3.5 apples", "-3.5"),
    # only the last marker is read (and it has no number)
    ("The final answer is $5. No, the final answer is $x. I hope it is correct.", None),
    ("The final answer is 4 ... \n\nProblem:\nThe final answer is $7.", "4"),
    # hedges claim several values: the fallback reads no number from them
    ("The final answer is 72, maybe 73.", None),
    ("The final answer is $72 and seventy-three", None),
    ("The final answer is 72 (or 73)\nProblem:", None),
])
def test_few_shot_reads_a_number_after_the_last_final_answer(response, answer, shared_data):
  assert GSM8KTask(shared_data, num_shots=1).extract(response) == answer
  assert gsm8k.final_number("nothing here") is None


def test_a_hedged_final_answer_scores_zero(shared_data):
  """Attack: one final answer that claims two values, the right one first (the few-shot
  fallback once read "72, maybe 73" as 72)."""
  task = GSM8KTask(shared_data, num_shots=1)
  problem = base.Problem(uid="gsm8k/test/x", prompt="q", answer="72", meta={})
  try:
    hedges = ["The final answer is 72 or 73. I hope it is correct.",
              "The final answer is 72, maybe 73.", "The final answer is $72 and seventy-three",
              "The final answer is 72 (or 73)\nProblem:"]
    assert list(task.rewards([problem] * 5, hedges + ["The final answer is 72."])) == [
        0.0, 0.0, 0.0, 0.0, 1.0]
  finally:
    task.close()


def test_zero_shot_extraction_is_unchanged(zero_shot):
  assert zero_shot.extract("Final Answer: The final answer is $2. I hope it is correct.") is None
  assert zero_shot.extract("#### 1,234") == "1234"
