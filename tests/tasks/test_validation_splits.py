"""Every task's validation split (checkpoint selection) is fixed and disjoint from train and
test; HumanEval has none, and asking for it says so. MATH / GSM8K use the real data."""

import hashlib
import json
import types

import pytest

from score_jax import config_lib
from score_jax import validation
from score_jax.tasks import code
from score_jax.tasks.gsm8k import GSM8KTask
from score_jax.tasks.math.task import MathTask, held_out_indices
from score_jax.tasks.sorting import SortingTask
from score_jax.tasks.toy import ToyTask
from tests.conftest import REPO_ROOT


def _digest(problems):
  text = "\n".join(f"{p.uid} {p.prompt} {p.answer}" for p in problems)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _texts(problems):
  return {p.prompt for p in problems}


def test_held_out_indices_keep_repeated_texts_out_and_follow_the_seed():
  texts = ["a", "b", "c", "b", "d", "e"]            # "b" twice: never held out
  # Unique-text records: rows 0, 2, 4, 5; default_rng(0).permutation(4) = [2, 0, 1, 3],
  # so the first two are rows 4 and 0, the first three rows 4, 0 and 2 (returned sorted).
  assert held_out_indices(texts, 2, seed=0) == [0, 4]
  assert held_out_indices(texts, 3, seed=0) == [0, 2, 4]
  with pytest.raises(ValueError, match="6 records \\(4 with a unique text\\) are too few to "
                                       "hold out 4"):
    held_out_indices(texts, 4, seed=0)


@pytest.fixture(scope="module")
def math_splits(shared_data):
  task = MathTask(shared_data)
  yield {s: task.load(s) for s in task.splits}
  task.close()


def test_math_validation_is_500_of_the_12k_split_and_disjoint(math_splits, shared_data):
  train, val = math_splits["train"], math_splits["validation"]
  assert (len(train), len(val)) == (11_500, 500)
  with open(shared_data / "math" / "prm800k_style_train12k.reconstructed.jsonl") as f:
    file_uids = [json.loads(line)["unique_id"] for line in f]
  # Together they are the 12k file, in file order, each record once.
  assert sorted(p.uid for p in train + val) == sorted(file_uids)
  assert [p.uid for p in val] == [u for u in file_uids if u in {p.uid for p in val}]
  # The fixed slice (seed 0): its first and last records.
  assert (val[0].uid, val[-1].uid) == ("test/algebra/125.json", "train/precalculus/1258.json")
  assert not _texts(val) & _texts(train)
  assert not _texts(val) & _texts(math_splits["test"])      # MATH500


def test_math_validation_is_the_same_for_every_instance(math_splits, shared_data):
  other = MathTask(shared_data)
  assert other.load("validation") == math_splits["validation"]


def test_gsm8k_validation_is_500_rows_of_train_and_disjoint(shared_data):
  task = GSM8KTask(shared_data)
  train, val, test = (task.load(s) for s in ("train", "validation", "test"))
  assert (len(train), len(val), len(test)) == (6_973, 500, 1_319)
  rows = [int(p.uid.rsplit("/", 1)[1]) for p in val]
  assert rows == sorted(rows) and (rows[0], rows[-1]) == (12, 7470)
  assert {p.uid for p in train} | {p.uid for p in val} == {f"gsm8k/train/{i}"
                                                             for i in range(7_473)}
  assert not _texts(val) & _texts(train) and not _texts(val) & _texts(test)


def test_mbpp_validation_is_task_ids_511_to_600(shared_data):
  task = code.MBPPTask(shared_data)
  ids = {s: {p.meta["task_id"] for p in task.load(s)} for s in ("train", "validation", "test")}
  assert ids["validation"] == set(range(511, 601))
  assert not ids["validation"] & (ids["train"] | ids["test"])
  assert min(ids["train"]) == 601 and max(ids["test"]) == 510


def test_humaneval_has_no_validation_and_says_what_to_do(shared_data):
  task = code.HumanEvalTask(shared_data)
  with pytest.raises(ValueError, match=r"task 'humaneval' has no split 'validation'"):
    task.load("validation")
  config = config_lib.load(REPO_ROOT / "configs" / "tiny.py",
                           ["--config.task.name=humaneval", "--config.eval.validation_every=5"])
  c = types.SimpleNamespace(config=config, task=task)
  with pytest.raises(ValueError, match=r"config.eval.validation_split='validation': task "
                                       r"'humaneval' has no such split \(it has \('test',\)\); "
                                       r"set config.eval.validation_every=0"):
    validation.validation_problems(c)


def test_validation_split_may_not_be_the_train_or_eval_split():
  config = config_lib.load(REPO_ROOT / "configs" / "tiny.py",
                           ["--config.eval.validation_split=test"])
  c = types.SimpleNamespace(config=config, task=ToyTask())
  with pytest.raises(ValueError, match="validation_split='test' is also config.task.eval_split"):
    validation.validation_problems(c)


def test_validation_limit_takes_the_first_problems():
  config = config_lib.load(REPO_ROOT / "configs" / "tiny.py",
                           ["--config.eval.validation_limit=3"])
  task = ToyTask()
  problems = validation.validation_problems(types.SimpleNamespace(config=config, task=task))
  assert problems == task.load("validation")[:3]


def test_sorting_validation_is_disjoint_and_train_test_are_unchanged():
  task = SortingTask(min_len=5, max_len=8, error_rate=0.1, blind_spot_rate=0.8)   # the demo's
  train, val, test = (task.load(s) for s in ("train", "validation", "test"))
  # The digests of train and test from before validation existed (commit 2740d24).
  assert (_digest(train), _digest(test)) == ("51e594e073848896", "9027185b2e0d219f")
  assert len(val) == 500 and val[0].prompt == "sort: mpjjm" and val[0].answer == "jjmmp"
  answers = {s: {p.answer for p in ps} for s, ps in (("train", train), ("val", val),
                                                       ("test", test))}
  assert not answers["val"] & answers["train"] and not answers["val"] & answers["test"]


def test_sorting_validation_that_cannot_exist_is_an_error_not_a_hang():
  # 2-3 letters: 952 sorted words; test draws 328 of them and train every other one.
  with pytest.raises(ValueError, match="all 952 sorted words of 2..3 letters are in the train "
                                       "and test splits, so none is left for validation; .*"
                                       "or set config.eval.validation_every=0"):
    SortingTask(min_len=2, max_len=3).load("validation")


def test_toy_validation_is_disjoint_and_train_test_are_unchanged():
  task = ToyTask()
  train, val, test = (task.load(s) for s in ("train", "validation", "test"))
  assert (_digest(train), _digest(test)) == ("572fcda4274df297", "713af902aa203c5c")
  assert len(val) == 200 and val[0].prompt == "cegeuw" and val[0].answer == "CEGEUW"
  assert not _texts(val) & (_texts(train) | _texts(test))
