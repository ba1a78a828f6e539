"""Math grading: answer extraction, normalisation, equivalence, and the grader pool.

The pool tests use the module-level shared pool (`grade_batch`'s default), which other test
files in the same session reuse; they start it once (a few seconds on a loaded 2-core box).
"""

import json
import time

import pytest

from score_jax.tasks.math import answer as math_answer
from score_jax.tasks.math import grading as math_grading
from score_jax.tasks.math.task import extract_answer, grade_batch, is_equivalent, normalize_answer

# ------------------------------------------------------------------- extraction

EXTRACT_CASES = [
    ("So the answer is $\\boxed{5}$.", "5"),
    ("First \\boxed{3}, then finally \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}"),
    ("our answer is $\\boxed 2$.", "2"),
    ("x = \\boxed 9$.", "9"),
    ("\\fbox{42}", "42"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),               # escaped braces do not count
    ("\\boxed{\\boxed{11}\\times\\boxed{20}}", "\\boxed{11}\\times\\boxed{20}"),  # outer box
    ("Final Answer: The final answer is $18$. I hope it is correct.", "18"),
    ("The final answer is $\\$18.90$. I hope it is correct.", "\\$18.90"),   # escaped dollar
    ("The final answer is $3$. Hmm, no. Final Answer: The final answer is $4$. I hope it is "
     "correct.", "4"),
    ("Final Answer: The final answer is 7. I hope it is correct.", "7"),     # bare, paper form
    ("Final Answer: The final answer is $\\boxed{7}$. I hope it is correct.", "7"),
    ("The final answer is $$\\frac{1}{3}$$", "\\frac{1}{3}"),
    ("The final answer is \\(2\\pi\\).", "2\\pi"),
    # Turn 2 quotes the turn-1 box, then answers again: the final marker wins.
    ("My previous answer $\\boxed{5}$ was wrong. Final Answer: The final answer is $6$. "
     "I hope it is correct.", "6"),
    ("The final answer is $5$. I hope it is correct.\nRechecking: $\\boxed{6}$", "6"),
]

NO_ANSWER_CASES = [
    "no answer here",
    "The final answer is positive, because two of the factors are negative.",  # prose
    "\\boxed{5} and then a truncated \\boxed{\\frac{1}{",      # unclosed final box
    "there are $\\boxed{}$ primes",                             # empty box
    "The final answer is $5",                                   # unclosed dollar
    "\\boxedx{5}",                                              # not a box command
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer(text, expected):
  assert extract_answer(text) == expected


@pytest.mark.parametrize("text", NO_ANSWER_CASES)
def test_extract_answer_none(text):
  assert extract_answer(text) is None


# ------------------------------------------------------------------- normalisation

@pytest.mark.parametrize("raw,expected", [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("\\dfrac{17}{50}", "\\frac{17}{50}"),
    ("\\frac 59", "\\frac{5}{9}"),
    ("\\frac9{19}", "\\frac{9}{19}"),
    ("11\\sqrt2", "11\\sqrt{2}"),
    ("90^\\circ", "90"),
    ("10,\\!080", "10080"),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
    ("\\$32,\\!348", "32348"),
    ("864 \\mbox{ inches}^2", "864"),
    ("5.4 \\text{ cents}", "5.4"),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
    ("\\text{(C)}", "C"),
    ("\\text{Evelyn}", "evelyn"),
    ("x = 5", "5"),
    ("x \\in [-2,7]", "[-2,7]"),
    (".0000672", "0.0000672"),
    ("18.90", "18.9"),
    ("50\\%", "50"),
    ("3, 5, 7", "3,5,7"),      # a list keeps its commas
    ("1,-2", "1,-2"),
    ("$\\boxed{4}.$", "4"),
])
def test_normalize_answer(raw, expected):
  assert normalize_answer(raw) == expected


# ------------------------------------------------------------------- equivalence table

# (prediction, gold, verdict): hand-written; each verdict checked by hand.
EQUIV_CASES = [
    # fractions, decimals
    ("0.5", "\\frac{1}{2}", True), ("\\frac12", "\\frac{1}{2}", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True), ("1/2", "\\frac{1}{2}", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True), ("0.25", "\\frac{1}{2}", False),
    ("0.333", "\\frac{1}{3}", False), ("0.333333", "\\frac{1}{3}", True),  # 6 places
    (".35625", "0.35625", True), ("6.72\\times10^{-5}", ".0000672", True),
    ("5.00", "5", True), ("5.01", "5", False), ("1.5", "\\frac{3}{2}", True),
    # mixed numbers
    ("9/5", "1\\frac{4}{5}", True), ("137.5", "137 \\frac{1}{2}", True),
    # radicals
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True), ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{8}", "2\\sqrt{3}", False), ("11\\sqrt2", "11\\sqrt{2}", True),
    # thousands separators
    ("10080", "10,\\!080", True), ("10,080", "10080", True), ("1,000,000", "1000000", True),
    ("1,000", "100", False),
    # intervals
    ("[-2, 7]", "x \\in [-2,7]", True), ("(-2, 7]", "[-2,7]", False),
    ("(-\\infty, 0]", "(-\\infty,0]", True), ("(0,36)", "(0,9) \\cup (9,36)", False),
    # tuples (ordered)
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(\\frac{\\pi}{2}, 3)", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("(6,31,-1)", "(6, 31, -1)", True),
    # unordered solution sets
    ("1, -2", "-2,1", True), ("7, 5, 3", "3, 5, 7", True), ("3, 5", "3, 5, 7", False),
    ("\\{-2, 1+\\sqrt{5}, 1-\\sqrt{5}\\}", "\\{1\\pm\\sqrt{5},-2\\}", True),
    # units and \text{}
    ("864", "864 \\mbox{ inches}^2", True), ("5.4", "5.4 \\text{ cents}", True),
    ("5.4 cents", "5.4", True), ("\\text{Evelyn}", "Evelyn", True),
    ("Nevely", "\\text{Evelyn}", False),       # an anagram: words compare as strings
    ("East", "\\text{east}", True), ("west", "\\text{east}", False),
    # equations vs values
    ("5", "x=5", True), ("x=5", "5", True), ("x = 6", "5", False),
    ("2x+3", "y = 2x + 3", True),
    # multiple choice
    ("C", "\\text{(C)}", True), ("(C)", "\\text{(C)}", True), ("B", "\\text{(C)}", False),
    ("\\text{(B)}", "\\text{(C)}", False),
    # degrees
    ("90", "90^\\circ", True), ("90^{\\circ}", "90^\\circ", True),
    ("90 degrees", "90^\\circ", True), ("45", "90^\\circ", False),
    # percent: math-verify reads 50% as 50 or as 0.5, so a percent sign on a gold without
    # one is a hedge (two values) and scores 0; a bare number against a percent gold scores
    ("50\\%", "50", False), ("50", "50\\%", True), ("0.5", "50\\%", True), ("5", "50\\%", False),
    ("50\\%", "50\\%", True),
    # negatives
    ("-\\frac{3}{8}", "-\\frac{3}{8}", True), ("\\frac{-3}{8}", "-\\frac{3}{8}", True),
    ("\\frac{3}{8}", "-\\frac{3}{8}", False), ("5", "-5", False),
    # money
    ("32348", "\\$32,\\!348", True), ("18.9", "\\$18.90", True), ("18.09", "\\$18.90", False),
    # expressions, complex numbers, matrices, functions
    ("3x - 6 + x^3", "x^3+3x-6", True), ("x^3+3x+6", "x^3+3x-6", False),
    ("2i + 1", "1+2i", True), ("1 - 2i", "1+2i", False),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
     "\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\end{pmatrix}", True),
    ("\\begin{pmatrix} 1/3 \\\\ 2/3 \\end{pmatrix}",
     "\\begin{pmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\end{pmatrix}", False),
    ("\\frac{\\cos x}{\\sin x}", "\\cot x", True), ("\\tan x", "\\cot x", False),
    ("37.7", "12\\pi", False), ("q-p", "p - q", False), ("2^{2^{2}}", "16", True),
    # no answer
    ("", "5", False), (None, "5", False),
]


def test_equivalence_table_is_big_enough():
  assert len(EQUIV_CASES) >= 40
  assert sum(v for _, _, v in EQUIV_CASES) >= 20 and sum(not v for _, _, v in EQUIV_CASES) >= 20


@pytest.mark.parametrize("pred,gold,expected", EQUIV_CASES)
def test_is_equivalent_in_process(pred, gold, expected):
  assert is_equivalent(pred, gold) is expected


def test_grade_batch_agrees_with_table():
  """Through the pool (whose workers run the faster math-verify): the same verdicts."""
  got = grade_batch([p for p, _, _ in EQUIV_CASES], [g for _, g, _ in EQUIV_CASES])
  assert got == [v for _, _, v in EQUIV_CASES]


def test_quick_verdict():
  assert math_answer.quick_verdict("17", "17") is True
  assert math_answer.quick_verdict("17", "18") is False          # plain numbers: exact
  assert math_answer.quick_verdict("0.5", "\\frac{1}{2}") is True
  assert math_answer.quick_verdict("0.333333", "\\frac{1}{3}") is None   # math-verify rounds
  assert math_answer.quick_verdict("0.5", "50\\%") is None       # percent: math-verify
  assert math_answer.quick_verdict("\\sqrt{2}", "2") is None
  assert math_answer.quick_verdict(None, "2") is False


def test_clearly_different_is_sound():
  sympy = pytest.importorskip("sympy")
  x = sympy.Symbol("x")
  assert math_answer._clearly_different(sympy.sqrt(2) + 1, sympy.Integer(5))
  assert math_answer._clearly_different(x**2 + 1, x**2 - 1)
  assert not math_answer._clearly_different(sympy.sin(x)**2 + sympy.cos(x)**2, sympy.Integer(1))
  assert not math_answer._clearly_different(sympy.sqrt(8), 2 * sympy.sqrt(2))
  assert math_answer._clearly_different(1 + 2 * sympy.I, 1 - 2 * sympy.I)
  assert not math_answer._clearly_different(sympy.sqrt(-4), 2 * sympy.I)
  # Undefined at x = 7/5 but different at x = 5/7.
  assert math_answer._clearly_different(1 / (x - sympy.Rational(7, 5)), sympy.Integer(0))
  # Undefined at both points: no verdict, simplify decides.
  assert not math_answer._clearly_different(1 / ((x - sympy.Rational(7, 5)) *
                                                 (x - sympy.Rational(5, 7))), sympy.Integer(0))
  # A symbol with assumptions: sin(pi n) is 0 for integer n, so no numeric shortcut.
  n = sympy.Symbol("n", integer=True)
  assert not math_answer._clearly_different(sympy.sin(sympy.pi * n), sympy.Integer(0))


# ------------------------------------------------------------------- MATH500

@pytest.fixture(scope="module")
def math500(shared_data):
  with open(shared_data / "math500" / "test.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_math500_gold_against_itself(math500):
  golds = [r["answer"] for r in math500]
  assert sum(grade_batch(golds, golds)) == 500


def test_math500_reference_solutions(math500):
  preds = [extract_answer(r["solution"]) for r in math500]
  assert sum(grade_batch(preds, [r["answer"] for r in math500])) == 500


def test_math500_no_false_positives_against_other_golds(math500):
  """Each gold against the next problem's gold, where the strings differ."""
  golds = [r["answer"] for r in math500]
  pairs = [(golds[(i + 1) % 500], g) for i, g in enumerate(golds) if golds[(i + 1) % 500] != g]
  assert len(pairs) > 490
  verdicts = grade_batch([p for p, _ in pairs], [g for _, g in pairs])
  positives = [pair for pair, v in zip(pairs, verdicts) if v]
  # The only pair of neighbouring golds with the same value: "x=5" and "5" (checked by hand).
  assert positives == [("x=5", "5")]


# ------------------------------------------------------------------- the pool

PATHOLOGICAL = [
    "2^{2^{2^{2^{2^{2}}}}}",
    "1000000!",
    "10^{10^{10^{10}}}",
    "9^{9^{9^{9}}}",
    "(" * 60 + "1" + ")" * 60,
]


def test_pathological_answers_come_back_in_time():
  timeout_s = 2.0
  pool = math_grading.acquire_pool(2)
  try:
    assert pool.grade([("1", "\\sqrt{1}")]) == [True]    # started and warm before timing
    restarts = pool.restarts
    start = time.monotonic()
    verdicts = pool.grade([(p, "5") for p in PATHOLOGICAL], timeout_s=timeout_s)
    elapsed = time.monotonic() - start
    assert verdicts == [False] * len(PATHOLOGICAL)
    # 5 items on 2 graders: at most 3 rounds of timeout_s, plus forking fresh graders.
    assert elapsed < 3 * timeout_s + 10.0, elapsed
    assert pool.restarts > restarts     # stuck graders were killed, not waited for
    # The pool still grades normally afterwards.
    assert pool.grade([("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")]) == [True]
  finally:
    math_grading.release_pool(pool)


def test_grade_batch_pathological_counts_as_wrong():
  preds = [p + " + 0" for p in PATHOLOGICAL[:2]] + ["4"]
  assert grade_batch(["\\sqrt{1}"], ["1"]) == [True]     # the shared pool is up
  start = time.monotonic()
  assert grade_batch(preds, ["5", "5", "4"], timeout_s=2.0) == [False, False, True]
  assert time.monotonic() - start < 2 * 2.0 + 10.0


def test_verdict_cache_remembers_timeouts():
  math_grading.clear_verdict_cache()
  pred = "3^{3^{3^{3^{3}}}}"
  start = time.monotonic()
  assert grade_batch([pred], ["7"], timeout_s=1.0) == [False]
  first = time.monotonic() - start
  start = time.monotonic()
  assert grade_batch([pred], ["7"], timeout_s=1.0) == [False]
  second = time.monotonic() - start
  assert first >= 1.0 and second < 0.5, (first, second)


def _running(pid):
  """Whether a process exists and is not a zombie."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_pool_survives_dead_graders_and_a_dead_zygote():
  pool = math_grading.GraderPool(1, timeout_s=5.0)
  try:
    assert pool.grade([("2", "\\sqrt{4}")]) == [True]
    # 1. The grader dies while idle: its next item counts as wrong (or is re-sent, if the
    # death is seen at send time); the grader is replaced and the rest is graded.
    grader = pool._graders[0]
    grader.zygote.kill(grader.pid)
    verdicts = pool.grade([("\\sqrt{9}", "3"), ("\\sqrt{16}", "4")])
    assert verdicts[1] is True and pool.restarts == 1
    # 2. The zygote dies. The orphaned grader is stuck on the first item and killed at the
    # deadline (by its pidfd); a new zygote is started to fork its successor.
    old_grader = pool._graders[0]
    pool._zygote.proc.kill()
    pool._zygote.proc.wait()
    assert pool.grade([("10^{10^{10^{10}}}", "5"), ("\\sqrt{25}", "5")], timeout_s=1.0) == [
        False, True]
    assert not _running(old_grader.pid)
    assert pool._zygote.proc.poll() is None and pool.restarts == 2
  finally:
    pool.close()
  with pytest.raises(RuntimeError, match="after close"):
    pool.grade([("1", "1")])


def test_grade_batch_rejects_mismatched_lengths():
  with pytest.raises(ValueError, match="2 preds but 1 golds"):
    grade_batch(["1", "2"], ["1"])
