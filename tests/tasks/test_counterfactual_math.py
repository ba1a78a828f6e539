"""MATH and GSM8K near misses for counterfactual first attempts (score_jax/tasks/math/nearmiss.py).

- Hand-built: `bump` moves a digit run by 1..3 and never to or below 0 from a positive run;
  `restate` changes the final answer and its whole-token restatements on its line and the
  line before, nothing else ("17", "0.7", "x_7" are not "7"; "1,000" is 1000); `math_span`
  finds the text the grader reads (the "b" of `\\boxed{b}`, not of "boxed"); the kinds of
  wrong answer (choice letters, \\text{} words from the pool, "+1" for symbols).
- The real data: every MATH500 and GSM8K test gold (the task's demonstration) grades right,
  every corrupted gold grades wrong under the real grader, with a different answer key, an
  exact value different from the gold's where both are plain numbers (a check that does not
  go through the grader), changed only in its last lines; the same seed gives the same text.
- Attacks: a gold the grader reads with tolerance ("1.0000001": math-verify rounds, so
  "1.0000002" grades right) still gets a wrong near miss; "4210_{5}" is not corrupted in
  its base (the grader drops it); a response with no final answer is a clear error.
- perturb: one number of the final answer changed, else the last number of the last lines,
  else the response kept; the counterfactual builds every condition for MATH and GSM8K.
"""

import fractions
import re

import numpy as np
import pytest

from score_jax import counterfactual
from score_jax.tasks.gsm8k import GSM8KTask
from score_jax.tasks.math import nearmiss
from score_jax.tasks.math.task import MathTask
from score_jax.tasks import base


@pytest.fixture(scope="module")
def math_task(shared_data):
  task = MathTask(shared_data)
  yield task
  task.close()


@pytest.fixture(scope="module", params=[0, 4], ids=["zero_shot", "four_shot"])
def gsm8k_task(shared_data, request):
  task = GSM8KTask(shared_data, num_shots=request.param)
  yield task
  task.close()


def _rngs(n=200):
  return [np.random.default_rng(s) for s in range(n)]


def test_bump_moves_by_one_to_three_and_stays_positive():
  assert {nearmiss.bump("5", r) for r in _rngs()} == {"2", "3", "4", "6", "7", "8"}
  assert {nearmiss.bump("1", r) for r in _rngs()} == {"2", "3", "4"}    # 1-d <= 0: up
  assert {nearmiss.bump("0", r) for r in _rngs()} == {"1", "2", "3"}
  assert {nearmiss.bump("3", r) for r in _rngs()} == {"1", "2", "4", "5", "6"}
  assert {nearmiss.bump("05", r) for r in _rngs()} == {"02", "03", "04", "06", "07", "08"}
  assert {nearmiss.bump("10", r) for r in _rngs()} == {"7", "8", "9", "11", "12", "13"}
  assert {nearmiss.bump("99", r) for r in _rngs()} == {"96", "97", "98", "100", "101", "102"}


def test_bump_one_prefers_values_to_bases_and_exponents():
  outs = {nearmiss.bump_one("4210_{5}", r) for r in _rngs()}
  assert outs == {f"{v}_{{5}}" for v in (4207, 4208, 4209, 4211, 4212, 4213)}
  outs = {nearmiss.bump_one("15\\mbox{ cm}^2", r) for r in _rngs()}
  assert all(o.endswith("\\mbox{ cm}^2") for o in outs) and len(outs) == 6
  assert {nearmiss.bump_one("x^2", r) for r in _rngs()} == {"x^1", "x^3", "x^4", "x^5"}
  outs = {nearmiss.bump_one("\\frac{3}{8}", r) for r in _rngs()}
  assert "\\frac{3}{8}" not in outs and all(re.fullmatch(r"\\frac\{\d+\}\{\d+\}", o)
                                             for o in outs)
  assert nearmiss.bump_one("\\pi", np.random.default_rng(0)) is None


def test_restate_changes_the_answer_where_the_solution_states_it():
  text = ("Let 7 be odd and x = 17.\n\nWe get $x - 10 = 7$, not 0.7 or x_7.\n\n"
          "So $\\boxed{7}$ is it.")
  span = nearmiss.math_span(text)
  assert text[span[0]:span[1]] == "7"
  assert nearmiss.restate(text, span, "9") == (
      "Let 7 be odd and x = 17.\n\nWe get $x - 10 = 9$, not 0.7 or x_7.\n\n"
      "So $\\boxed{9}$ is it.")
  gsm = ("He pays 1,000 dollars, 1000 in all.\n"
         "Final Answer: The final answer is 1000. I hope it is correct.")
  span = nearmiss.math_span(gsm)
  assert nearmiss.restate(gsm, span, "1003") == (
      "He pays 1003 dollars, 1003 in all.\n"
      "Final Answer: The final answer is 1003. I hope it is correct.")
  frac = "Thus\n$$p = \\frac{1}{2}.$$\nThe answer is $\\boxed{\\frac{1}{2}}$."
  span = nearmiss.math_span(frac)
  assert nearmiss.restate(frac, span, "\\frac{3}{2}") == (
      "Thus\n$$p = \\frac{3}{2}.$$\nThe answer is $\\boxed{\\frac{3}{2}}$.")


def test_math_span_is_the_text_the_grader_reads():
  cases = {"so $\\boxed{b}$.": "b", "a \\boxed { 12 } b": "12", "x \\boxed 5.": "5",
           "The final answer is $\\frac{1}{2}$. I hope it is correct.": "\\frac{1}{2}",
           "\\boxed{3}\nThe final answer is 72. I hope it is correct.": "72",
           "The final answer is 4. I hope it is correct.\nSo \\boxed{\\sqrt{2}}": "\\sqrt{2}"}
  for text, answer in cases.items():
    span = nearmiss.math_span(text)
    assert text[span[0]:span[1]] == answer, text
  assert nearmiss.math_span("no answer here, 42") is None
  assert nearmiss.math_span("\\boxed{}") is None


def test_wrong_answers_of_each_kind():
  rng = np.random.default_rng(0)
  assert sorted(nearmiss.wrong_answers("\\text{(C)}", rng)) == [
      "\\text{(A)}", "\\text{(B)}", "\\text{(D)}", "\\text{(E)}"]
  assert sorted(nearmiss.wrong_answers("(A)", rng)) == ["(B)", "(C)", "(D)", "(E)"]
  pool = ["\\text{east}", "\\text{even}", "5", "\\text{east}", "\\pi"]
  assert sorted(nearmiss.wrong_answers("\\text{even}", rng, pool)) == ["\\text{east}"]
  assert nearmiss.needs_pool("\\text{even}") and not nearmiss.needs_pool("\\text{(C)}")
  assert list(nearmiss.wrong_answers("\\cot x", rng)) == ["\\cot x+1", "\\cot x+2"]
  numbers = list(nearmiss.wrong_answers("(3, 14)", rng))
  assert len(numbers) == nearmiss.NUMBER_DRAWS and "(3, 14)" not in numbers


def test_perturb_changes_one_number_final_answer_first():
  rng = np.random.default_rng(0)
  text = "x = 3\ny = 4\nSo $\\boxed{12}$."
  out = nearmiss.perturb(text, nearmiss.math_span(text), rng)
  assert out.startswith("x = 3\ny = 4\nSo $\\boxed{") and out != text
  assert int(re.search(r"boxed\{(\d+)\}", out).group(1)) in {9, 10, 11, 13, 14, 15}
  symbolic = "r = 2 here\n\n\nso \\boxed{\\pi}"
  out = nearmiss.perturb(symbolic, nearmiss.math_span(symbolic), rng)
  assert re.fullmatch(r"r = (1|3|4|5) here\n\n\nso \\boxed\{\\pi\}", out)
  old = "a 1\nb\nc\nd \\boxed{x}"                  # no digit in the last 3 lines: kept
  assert nearmiss.perturb(old, nearmiss.math_span(old), rng) == old
  assert nearmiss.perturb("no answer at all", None, rng) == "no answer at all"
  same = [nearmiss.perturb(text, nearmiss.math_span(text), np.random.default_rng(7))
          for _ in range(2)]
  assert same[0] == same[1]


def _value(answer: str) -> fractions.Fraction | None:
  """Exact value of an integer / decimal / \\frac{a}{b} answer (independent of the grader)."""
  s = answer.replace("\\dfrac", "\\frac").replace(",", "").replace(" ", "")
  m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", s)
  if m:
    return (-1 if m[1] else 1) * fractions.Fraction(int(m[2]), int(m[3]))
  return fractions.Fraction(s) if re.fullmatch(r"-?\d*\.?\d+", s) else None


def _check_corrupt_all(task, problems):
  """Gold right, corrupted wrong (real grader) with another key and value, last lines only."""
  golds = [task.demonstration(p, None) for p in problems]
  assert task.rewards(problems, golds) == [1.0] * len(problems)
  corrupted = [task.corrupt(p, g, np.random.default_rng([7, i]))
               for i, (p, g) in enumerate(zip(problems, golds))]
  assert task.rewards(problems, corrupted) == [0.0] * len(problems)
  numeric = 0
  for p, g, c in zip(problems, golds, corrupted):
    assert task.answer_key(c) is not None and task.answer_key(c) != task.answer_key(g), p.uid
    gold_value, new_value = _value(str(p.answer)), _value(task.extract(c))
    if gold_value is not None and new_value is not None:
      numeric += 1
      assert gold_value != new_value, p.uid
    changed = {i for i, (a, b) in enumerate(zip(g.split("\n"), c.split("\n"))) if a != b}
    span = task.answer_span(g)
    first, last = g.count("\n", 0, span[0]), g.count("\n", 0, span[1])
    lines = g.split("\n")
    before = [i for i in range(first) if lines[i].strip()][-1:]
    assert g.count("\n") == c.count("\n") and first in changed, p.uid
    assert changed <= {*before, *range(first, last + 1)}, p.uid   # the closing lines only
  assert task.corrupt(problems[3], golds[3], np.random.default_rng([7, 3])) == corrupted[3]
  return numeric


@pytest.mark.slow  # ~20 s on 2 busy CPU cores (1,000 gradings)
def test_every_math500_corrupted_gold_grades_wrong(math_task):
  problems = math_task.load("test")
  numeric = _check_corrupt_all(math_task, problems)
  assert numeric > 250                              # the value check saw most of them


def test_every_gsm8k_corrupted_gold_grades_wrong(gsm8k_task):   # ~5 s per variant
  problems = gsm8k_task.load("test")
  assert _check_corrupt_all(gsm8k_task, problems) == 1319   # GSM8K answers are all numbers
  gold = gsm8k_task.demonstration(problems[0], None)
  assert gold.endswith("\nFinal Answer: The final answer is 18. I hope it is correct.")
  assert "<<" not in gold


def test_gsm8k_spans_of_each_answer_form(shared_data):
  few = GSM8KTask(shared_data, num_shots=4)
  zero = GSM8KTask(shared_data)
  hashes = "Half of 20 is 10.\n#### 10\n"
  for task in (few, zero):
    span = task.answer_span(hashes)
    assert hashes[span[0]:span[1]] == "10"
    assert task.corrupt(base.Problem("u", "q", "10"), hashes, np.random.default_rng(0)) in {
        f"Half of 20 is {v}.\n#### {v}\n" for v in (7, 8, 9, 11, 12, 13)}
  dollars = "He earns $2.\nThe final answer is $2. I hope it is correct.\nProblem: next"
  span = few.answer_span(dollars)
  assert few.extract(dollars) == "2" and dollars[span[0]:span[1]] == "2"
  assert span[0] == dollars.index("$2. I") + 1
  assert zero.answer_span("nothing here") is None
  with pytest.raises(ValueError, match="corrupt\\(\\) of u: the response has no final answer"):
    zero.corrupt(base.Problem("u", "q", "10"), "nothing here", np.random.default_rng(0))
  few.close()
  zero.close()


def test_attack_a_gold_the_grader_reads_with_tolerance_still_gets_a_wrong_answer(math_task):
  # math-verify compares long decimals after rounding: 1.0000002 grades as 1.0000001. The
  # near misses that only touch the last digits are skipped for one that is really wrong.
  problem = base.Problem("attack/round", "q", "1.0000001")
  assert math_task.reward(problem, "\\boxed{1.0000002}") == 1.0
  for seed in range(12):
    bad = math_task.corrupt(problem, "So \\boxed{1.0000001}.", np.random.default_rng(seed))
    assert math_task.reward(problem, bad) == 0.0
    assert abs(float(math_task.extract(bad)) - 1.0000001) > 1e-3
  # a base subscript stays (the grader compares bases: "4210_{4}" is wrong): the value moves
  problem = base.Problem("attack/base", "q", "4210_{5}")
  assert math_task.reward(problem, "\\boxed{4210_{4}}") == 0.0
  for seed in range(6):
    bad = math_task.corrupt(problem, "\\boxed{4210_{5}}", np.random.default_rng(seed))
    assert bad.endswith("_{5}}") and math_task.reward(problem, bad) == 0.0
  # "1/2" and "0.5" are equal to the grader: a gold boxed as 0.5 never stays equal to 1/2
  problem = base.Problem("attack/half", "q", "\\frac{1}{2}")
  for seed in range(12):
    bad = math_task.corrupt(problem, "\\boxed{0.5}", np.random.default_rng(seed))
    assert _value(math_task.extract(bad)) != fractions.Fraction(1, 2)
    assert math_task.reward(problem, bad) == 0.0


def test_attack_no_wrong_near_miss_is_a_clear_error(math_task):
  # a \\text{} answer with no other \\text{} answer in the pool has no candidate at all
  problem = base.Problem("attack/none", "q", "\\text{even}")
  math_task._text_pool = ["\\text{even}"]
  try:
    with pytest.raises(ValueError, match="attack/none: no near miss .* is graded wrong"):
      math_task.corrupt(problem, "\\boxed{\\text{even}}", np.random.default_rng(0))
  finally:
    math_task._text_pool = None


def test_the_counterfactual_builds_every_condition_for_math(math_task):
  problems = math_task.load("test")[:6]
  y1 = ["I think \\boxed{3}.", "no answer", "x = 2, \\boxed{\\pi}", "\\boxed{7}", "", "12"]
  givens = counterfactual.given_texts(math_task, problems, y1, seed=0)
  for name in counterfactual.CONDITIONS:
    assert isinstance(givens[name], list) and len(givens[name]) == 6, (name, givens[name])
  assert math_task.rewards(problems, givens["gold"]) == [1.0] * 6
  assert math_task.rewards(problems, givens["corrupted"]) == [0.0] * 6
  assert givens["perturbed"][1] == "no answer" and givens["perturbed"][4] == ""
  assert givens["perturbed"][0] != y1[0] and givens["perturbed"][2] != y1[2]
  assert givens["perturbed"][5] in {str(v) for v in (9, 10, 11, 13, 14, 15)}  # last line's 12
