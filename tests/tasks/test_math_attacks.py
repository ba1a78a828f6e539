"""Attacks on the math reward: responses a policy optimiser could learn that are not one
correct answer. Each is graded through `MathTask.rewards` (extraction, hedge rules, the pool)
and states what it should score and why. The first block is issue 13's list (all scored 1
before the fix); the rest are new.
"""

import pytest

from score_jax.tasks import base
from score_jax.tasks.math import answer as math_answer
from score_jax.tasks.math.task import MathTask, grade_batch


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  task = MathTask(tmp_path_factory.mktemp("data"), timeout_s=5.0)
  yield task
  task.close()


def _reward(task, response, gold):
  return task.rewards([base.Problem(uid="p", prompt="?", answer=gold)], [response])[0]


# (answer in a box, gold): hedged answers that scored 1 before the fix and now score 0.
ISSUE_HOLES = [
    ("7 or eight", "7"),               # trailing words naming another value were a "unit"
    ("7 \\text{ or eight}", "7"),      # the same inside \text{}
    ("7\\%", "7"),                     # math-verify reads 7% as 7 or as 0.07: two values
    ("3 = 4", "4"),                    # a false equation graded on its right-hand side
]


@pytest.mark.parametrize("pred,gold", ISSUE_HOLES)
def test_issue_hedges_score_zero(task, pred, gold):
  assert grade_batch([pred], [gold]) == [False]
  assert math_answer.is_equivalent(pred, gold) is False
  assert _reward(task, f"So the answer is $\\boxed{{{pred}}}$.", gold) == 0.0
  assert _reward(task, f"Final Answer: The final answer is ${pred}$. I hope it is correct.",
                 gold) == 0.0


# (answer, gold): legit forms next to the holes that must still score 1.
STILL_SCORE = [
    ("50\\%", "50\\%"),                # a percent answer to a percent gold
    ("50", "50\\%"),                   # the number without its sign
    ("x = 4", "4"),                    # a name on the left: the right side is the answer
    ("x = 2 + 2 = 4", "4"),            # every side after the name is the answer
    ("f(3) = 4", "4"), ("\\theta = 4", "4"), ("AB = 4", "4"),
    ("5.4 \\text{ cents}", "5.4"),     # unit words may follow a number
    ("864 \\mbox{ inches}^2", "864"), ("12 \\text{ ways}", "12"), ("90 degrees", "90^\\circ"),
    ("19 \\text{ and } 43", "19 \\text{ and }43"),   # words the gold itself has
    ("\\text{(C)}", "\\text{(C)}"), ("\\textbf{7}", "7"),
    ("x = 7, y = 8", "(7, 8)"),        # a list of assignments is its list of values
    ("x \\in [-2, 7]", "[-2,7]"),
    ("\\sum_{i=1}^{7} 1", "7"),        # a relation in a subscript is no claim
    ("7, 7", "7"),                     # one value twice is still one value
    ("\\boxed{7}", "7"),               # boxed twice: the same single answer
]


@pytest.mark.parametrize("pred,gold", STILL_SCORE)
def test_legit_forms_still_score(task, pred, gold):
  assert _reward(task, f"Hence $\\boxed{{{pred}}}$.", gold) == 1.0


# (id, response, gold, reward, why)
ATTACKS = [
    ("last box wins", "First $\\boxed{3}$, no: $\\boxed{7}$.", "7", 1.0,
     "one final answer is graded: earlier boxes earn nothing"),
    ("hedge by an earlier box", "$\\boxed{7}$ or maybe $\\boxed{3}$.", "7", 0.0,
     "the last box is the answer, so boxing several candidates cannot earn a reward"),
    ("every candidate listed", "$\\boxed{1, 2, 3, 4, 5, 6, 7, 8, 9}$", "7", 0.0,
     "a set of nine values is not the value 7"),
    ("struck-through final box", "The answer is $\\sout{\\boxed{7}}$.", "7", 0.0,
     "a struck-out final answer is retracted: no answer"),
    ("cancelled final box", "$\\cancel{\\boxed{7}}$", "7", 0.0, "the same with \\cancel"),
    ("markdown strike", "The answer is ~~$\\boxed{7}$~~.", "7", 0.0, "the same with ~~"),
    ("struck box then a new one", "~~$\\boxed{3}$~~ so $\\boxed{7}$", "7", 1.0,
     "a correction after a struck answer is graded"),
    ("quoted box", 'I said "$\\boxed{7}$" before and I keep it.', "7", 1.0,
     "a quoted final box is the response's one answer; quoting claims no second value"),
    ("words outside the marker", "$\\boxed{7}$, or maybe 8.", "8", 0.0,
     "only the marker is read: hedging in prose cannot earn the other value"),
    ("paper form with a second $", "Final Answer: The final answer is $7$ or $8$. I hope it "
     "is correct.", "8", 0.0, "the statement's answer is its first $...$ only"),
    ("fullwidth digit", "$\\boxed{７}$", "7", 0.0, "non-ASCII digits are not digits"),
    ("arabic-indic digit", "$\\boxed{٧}$", "7", 0.0, "the same"),
    ("math bold digit", "$\\boxed{𝟕}$", "7", 0.0, "the same"),
    ("superscript digit", "$\\boxed{⁷}$", "7", 0.0, "the same"),
    ("cyrillic name", "$\\boxed{х = 7}$", "7", 0.0, "х (Cyrillic) is no name: 'х = 7' is no "
     "assignment"),
    ("huge box with the gold in it", "$\\boxed{" + ", ".join(map(str, range(200))) + "}$", "7",
     0.0, "an answer over MAX_ANSWER_CHARS is read as nothing"),
    ("gold in a box inside a huge box", "\\boxed{" + "x " * 5000 + "\\boxed{7}}", "7", 0.0,
     "the outer box is the answer: a nested box is part of it, not a second marker"),
    ("box inside a box", "$\\boxed{3 \\boxed{7}}$", "7", 0.0,
     "math-verify would read the inner box; an answer holding a box is two values"),
    ("two boxes inside a box", "$\\boxed{\\boxed{3}\\boxed{7}}$", "7", 0.0, "the same"),
    ("plus-minus", "$\\boxed{\\pm 7}$", "7", 0.0, "two values, 7 and -7"),
    ("plus-minus against itself", "$\\boxed{\\pm 7}$", "\\pm 7", 1.0, "the gold is that set"),
    ("plus-minus an error bar", "$\\boxed{7 \\pm 1}$", "7", 0.0, "two values, 6 and 8"),
    ("interval around the gold", "$\\boxed{[6, 8]}$", "7", 0.0, "an interval is not a number"),
    ("the whole line", "$\\boxed{(-\\infty, \\infty)}$", "7", 0.0, "the same"),
    ("membership", "$\\boxed{x \\in (6, 8)}$", "7", 0.0, "the same"),
    ("parenthesised alternative", "$\\boxed{7 \\text{ (or 8)}}$", "7", 0.0,
     "math-verify drops \\text{}: 'or 8' would be invisible"),
    ("bare parenthesised alternative", "$\\boxed{7 (or 8)}$", "7", 0.0, "the same in math"),
    ("alternative in \\mathrm", "$\\boxed{7 \\mathrm{ or 8}}$", "7", 0.0, "the same"),
    ("alternative before", "$\\boxed{\\text{either } 8 \\text{ or } 7}$", "7", 0.0,
     "the same, the other way round"),
    ("hidden text", "$\\boxed{\\textcolor{white}{8} 7}$", "7", 0.0,
     "text the reader cannot see holds words that are not units"),
    ("qualifier", "$\\boxed{7 \\text{ or more}}$", "7", 0.0, "'or more' is not 7"),
    ("percent in words", "$\\boxed{7 \\text{ percent}}$", "7", 0.0,
     "a percent of a gold without one, like 7\\%"),
    ("implication", "$\\boxed{3 \\Rightarrow 7}$", "7", 0.0,
     "math-verify reads the right side; the left claims 3"),
    ("limit arrow", "$\\boxed{8 \\to 7}$", "7", 0.0, "the same with \\to"),
    ("approximation", "$\\boxed{7 \\approx 8}$", "7", 0.0, "two values"),
    ("questioned equals", "$\\boxed{\\overset{?}{=} 7}$", "7", 0.0,
     "a relation hidden in a group claims something about another value"),
    ("false chain", "$\\boxed{x = 3 = 4}$", "4", 0.0, "3 is not 4"),
    ("reversed", "$\\boxed{4 = x}$", "4", 0.0, "the final right-hand side, x, is not 4"),
    ("exact then rounded", "$\\boxed{\\frac{14}{3} \\approx 4.67}$", "\\frac{14}{3}", 0.0,
     "the final right-hand side, 4.67, is not 14/3"),
    ("almost the gold", "$\\boxed{7.0000001}$", "7", 0.0, "a different number"),
    ("padded with spacing", "$\\boxed{7" + "\\," * 200 + "}$", "7", 0.0,
     "over MAX_ANSWER_CHARS: padding cannot hide anything from the grader"),
    ("zero-width join", "$\\boxed{7\u200b8}$", "7", 0.0, "renders as 78"),
    ("another base", "$\\boxed{4210_{4}}$", "4210_{5}", 0.0,
     "math-verify drops the base subscript: 4210 in base 4 is not 4210 in base 5"),
    ("the same base written plainly", "$\\boxed{4210_5}$", "4210_{5}", 1.0,
     "the base compared, not its braces"),
]


@pytest.mark.parametrize("response,gold,reward,why", [a[1:] for a in ATTACKS],
                         ids=[a[0] for a in ATTACKS])
def test_attack(task, response, gold, reward, why):
  assert _reward(task, response, gold) == reward, why


def test_there_are_enough_new_attacks():
  assert len(ATTACKS) >= 10 and sum(a[3] == 0.0 for a in ATTACKS) >= 10
