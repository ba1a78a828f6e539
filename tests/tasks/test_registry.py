"""Every task is built the same way (`Task.from_config`), and the optional capabilities
(demonstration, alphabet) are declared on the base class with errors that
say which task lacks what, and what to do instead."""

import numpy as np
import pytest

from score_jax import build as build_lib
from score_jax import config_lib
from score_jax.tasks import base
from score_jax.tasks import registry
from tests.conftest import REPO_ROOT

TASK_CFG = {"data_dir": "", "workers": 1, "timeout_s": 5.0, "min_len": 5, "max_len": 6,
            "error_rate": 0.0, "blind_spot_rate": 0.0}


def test_registry_builds_every_synthetic_task_from_its_config():
  sorting = registry.make_task(dict(TASK_CFG, name="sorting"))
  assert (sorting.min_len, sorting.max_len, sorting.error_rate) == (5, 6, 0.0)
  problem = sorting.load("test")[0]
  # error_rate 0 and no blind spot: the demonstration is the correct answer.
  assert sorting.demonstration(problem, np.random.default_rng(0)) == problem.answer
  assert set(problem.prompt) <= set(sorting.alphabet())
  toy = registry.make_task(dict(TASK_CFG, name="toy"))
  assert toy.name == "toy" and "A" in toy.alphabet()
  with pytest.raises(ValueError, match="config.task.name='nope' is not a known task"):
    registry.make_task(dict(TASK_CFG, name="nope"))


def test_registry_builds_the_file_tasks_with_their_workers(shared_data):
  math = registry.make_task(dict(TASK_CFG, name="math", data_dir=str(shared_data), workers=3))
  assert math.grader_workers == 3 and math.timeout_s == 5.0
  math.close()


class _Bare(base.Task):
  name = "bare"
  splits = ("test",)

  def load(self, split):
    return [base.Problem("0", "p", "a")]

  def reward(self, problem, response):
    return 0.0


@pytest.mark.parametrize("call,needs", [
    (lambda t: t.demonstration(t.load("test")[0], np.random.default_rng(0)), "the sft stage"),
    (lambda t: t.alphabet(), "config.tokenizer.kind='char'"),
])
def test_missing_capabilities_say_which_task_lacks_what(call, needs):
  with pytest.raises(base.MissingCapability, match=f"task 'bare' has no .*{needs}"):
    call(_Bare())


def test_a_char_tokenizer_on_a_task_without_an_alphabet_fails_at_build(shared_data):
  config = config_lib.load(REPO_ROOT / "configs" / "tiny.py",
                           ["--config.task.name=gsm8k", f"--config.task.data_dir={shared_data}",
                            "--config.tokenizer.kind=char"])
  with pytest.raises(base.MissingCapability, match="task 'gsm8k' has no alphabet"):
    build_lib.build(config)


def test_a_sorting_train_split_that_cannot_exist_is_an_error_not_a_hang():
  # 1-letter words: 16 sorted words, all drawn by the 500-word test split (it used to
  # loop forever looking for a training word outside the test split).
  task = registry.make_task(dict(TASK_CFG, name="sorting", min_len=1, max_len=1))
  assert len({p.answer for p in task.load("test")}) == 16
  with pytest.raises(ValueError, match="all 16 sorted words of 1..1 letters are in the test"):
    task.load("train")
