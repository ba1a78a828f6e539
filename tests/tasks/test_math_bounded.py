"""The math grader is bounded: any response, however long or crafted, is graded within
`timeout_s` of wall time in the training process, and `timeout_s` must be > 0.

Before the fix, extraction and normalisation ran in the training process, before the pool's
timeout, with quadratic steps: "The final answer is 7" and 64k spaces took ~25 s, and
`\\boxed{1 ab ab ... 1}` over 64k characters ~45 s, with `timeout_s=2`.
"""

import random
import string
import time

import pytest

from score_jax.tasks import base
from score_jax.tasks.math import answer as math_answer
from score_jax.tasks.math import grading as math_grading
from score_jax.tasks.math.task import MathTask, extract_answer

N = 64_000          # characters per adversarial response
TIMEOUT_S = 2.0


def _random_printable(n: int) -> str:
  rng = random.Random(0)
  return "".join(rng.choice(string.printable) for _ in range(n))


# name -> a response of about N characters built to hit a slow path of the old grader.
LONG_RESPONSES = {
    "final answer then spaces": "The final answer is 7" + " " * N,
    "final answer, spaces, hope": "The final answer is 7" + " " * N + "I hope it is correct",
    "final answer repeated": "The final answer is " * (N // 20),
    "final answer $ repeated": "The final answer is $" * (N // 21),
    "hope repeated": "The final answer is " + "I hope it is correc " * (N // 20),
    "spaces": " " * N,
    "open braces": "\\boxed{" + "{" * N,
    "boxed repeated": "\\boxed{" * (N // 7),
    "closed boxes repeated": "\\boxed{1}" * (N // 9),
    "bare boxes repeated": "\\boxed 1 " * (N // 9),
    "nested braces 32k deep": "\\boxed{" + "{" * (N // 2) + "7" + "}" * (N // 2) + "}",
    "nested boxes": "\\boxed{" * (N // 8) + "7" + "}" * (N // 8),
    "dollars": "The final answer is " + "$" * N,
    "double dollars": "The final answer is $$" * (N // 22),
    "digits": "\\boxed{" + "1" * N + "}",
    "digits and commas": "\\boxed{" + "1," * (N // 2) + "}",
    "box of spaces": "\\boxed{7" + " " * N + "x}",
    "box of words": "\\boxed{1" + " ab" * (N // 3) + " 1}",
    "box of dots": "\\boxed{" + "." * N + "}",
    "box of backslashes": "\\boxed{" + "\\" * N + "}",
    "strike-outs": "\\sout{" * (N // 6) + "\\boxed{7}",
    "struck out by tildes": "~~" * (N // 2 + 1) + "\\boxed{7}~~",
    "64k random printable": _random_printable(N),
    "random printable then a box": _random_printable(N) + "\\boxed{7}",
    "64k prose then a correct box": ("The sum is odd. " * (N // 16)) + "So $\\boxed{7}$.",
}
# The responses that hold one final answer, 7, and score 1; every other one scores 0.
SCORES_1 = {
    "final answer, spaces, hope",      # the paper's bare form, its line padded with spaces
    "random printable then a box",     # junk before the final box does not matter
    "64k prose then a correct box",
}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  task = MathTask(tmp_path_factory.mktemp("data"), timeout_s=TIMEOUT_S)
  problem = base.Problem(uid="p", prompt="?", answer="7")
  assert task.rewards([problem], ["\\boxed{\\sqrt{49}}"]) == [1.0]   # the pool is up and warm
  yield task
  task.close()


@pytest.mark.parametrize("name", list(LONG_RESPONSES))
def test_long_response_is_graded_within_timeout(task, name):
  response = LONG_RESPONSES[name]
  assert len(response) >= N - 100
  problem = base.Problem(uid="p", prompt="?", answer="7")
  math_grading.clear_verdict_cache()
  start = time.monotonic()
  reward = task.rewards([problem], [response])
  elapsed = time.monotonic() - start
  assert elapsed < TIMEOUT_S + 1.0, (name, elapsed)
  assert reward == [1.0 if name in SCORES_1 else 0.0]


@pytest.mark.parametrize("name", ["final answer repeated", "box of words", "nested boxes",
                                  "strike-outs", "open braces", "64k random printable"])
def test_extraction_up_to_the_cap_is_fast(name):
  """Extraction is linear: a response of MAX_RESPONSE_CHARS takes well under a second."""
  unit = LONG_RESPONSES[name]
  cap = math_answer.MAX_RESPONSE_CHARS
  text = (unit * (cap // len(unit) + 1))[:cap]
  start = time.monotonic()
  extract_answer(text)
  assert time.monotonic() - start < 1.0


def test_response_over_the_cap_has_no_answer():
  legit = "x" * math_answer.MAX_RESPONSE_CHARS + "\\boxed{7}"
  assert extract_answer(legit[-1000:]) == "7"
  assert extract_answer(legit) is None


def test_answer_over_the_cap_scores_zero_unread():
  """A 400+ character answer scores 0 even when it is the gold padded with spacing."""
  padded = "7" + "\\," * 200
  assert len(padded) > math_answer.MAX_ANSWER_CHARS
  assert math_answer.quick_verdict("7" + "\\," * 10, "7") is True
  assert math_answer.quick_verdict(padded, "7") is False
  start = time.monotonic()
  assert math_answer.normalize_answer("{" * 50_000 + "7" + "}" * 50_000).startswith("{")
  assert time.monotonic() - start < 0.5


# ------------------------------------------------------------------- timeout_s > 0

@pytest.mark.parametrize("bad", [0, 0.0, -1, float("nan"), float("inf"), None, "5"])
def test_timeout_s_must_be_positive(tmp_path, bad):
  with pytest.raises(ValueError, match="timeout_s must be a finite number of seconds > 0"):
    MathTask(tmp_path, timeout_s=bad)
  with pytest.raises(ValueError, match="timeout_s must be"):
    math_grading.grade_batch(["7"], ["7"], timeout_s=bad)
  with pytest.raises(ValueError, match="timeout_s must be"):
    math_grading.GraderPool(1, timeout_s=bad)


def test_pool_grade_refuses_a_zero_timeout():
  pool = math_grading.GraderPool(1, timeout_s=1.0)
  try:
    with pytest.raises(ValueError, match="GraderPool.grade: timeout_s must be"):
      pool.grade([("\\sqrt{4}", "2")], timeout_s=0)
  finally:
    pool.close()
