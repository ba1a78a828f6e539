"""Counterfactual first attempts (score_jax.counterfactual): turn 2 re-run from a given y1'.

- The tiny config on the sorting task (random weights, `--checkpoint init`): the table has
  every condition with rates in [0, 1]; the model row's given accuracy is the greedy turn-1
  accuracy and its turn 2 is a plain greedy evaluation's; gold is right where it fits the
  turn-1 budget (a given y1 is scored as turn 2 reads it, cut to the budget: also with a
  3-token budget), corrupted is wrong; the same seed gives the same table; the markdown table
  has a row per condition.
- The pieces: a derangement has no fixed point; sorting's corrupt is wrong and perturb is a
  permutation; a task without corrupt / perturb (toy) gets rows that say why they are
  skipped.
"""

import json

import numpy as np

from score_jax import config_lib
from score_jax import counterfactual
from score_jax import evaluate
from score_jax import scaling
from score_jax import build as build_lib
from score_jax.tasks import sorting
from score_jax.tasks import toy
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"
OVERRIDES = ["--config.task.name=sorting", "--config.task.eval_limit=12",
             "--config.eval.batch_size=8"]


def test_tiny_sorting_table_has_every_condition_and_is_deterministic(tmp_path):
  argv = [f"--config={TINY}", f"--workdir={tmp_path}", "--checkpoint=init", *OVERRIDES]
  counterfactual.main(argv)
  table = json.loads((tmp_path / "eval" / "counterfactual.json").read_text())
  assert list(table) == ["_meta", *counterfactual.CONDITIONS]
  for name in counterfactual.CONDITIONS:
    row = table[name]
    assert "skipped" not in row and row["n"] == 12
    for key in ("acc_given", "acc_t2", "kept_t2"):
      assert 0.0 <= row[key] <= 1.0 and 0.0 <= row[key + "_se"] <= 1.0
  # gold is right where it fits the 8-token turn-1 budget (7 letters + end of turn): a longer
  # word is cut there, as turn 2 reads it, and is wrong; corrupted gold is never right
  config = config_lib.load(TINY, OVERRIDES)
  c = build_lib.build(config)
  fits = np.mean([len(p.answer) <= 7 for p in evaluate.eval_problems(c)])
  assert 0.0 < fits < 1.0
  assert table["gold"]["acc_given"] == fits and table["corrupted"]["acc_given"] == 0.0
  # The model row re-runs turn 2 from the model's own y1: a plain greedy evaluation.
  plain = evaluate.evaluate_params(c, c.base_params, evaluate.eval_problems(c), batch_size=8,
                                   turn1_tokens=8, turn2_tokens=8, progress=False)
  assert table["model"]["acc_given"] == plain["acc_t1"]
  assert table["model"]["acc_t2"] == plain["acc_t2"]
  md = (tmp_path / "eval" / "counterfactual.md").read_text()
  assert all(f"| {name} |" in md for name in counterfactual.CONDITIONS)
  counterfactual.main(argv + [f"--out={tmp_path / 'again'}"])
  again = json.loads((tmp_path / "again" / "counterfactual.json").read_text())
  assert {k: v for k, v in again.items() if k != "_meta"} == \
      {k: v for k, v in table.items() if k != "_meta"}


def test_derangement_moves_every_item():
  rng = np.random.default_rng(0)
  for n in (2, 3, 10):
    perm = counterfactual.derangement(n, rng)
    assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))


def test_sorting_corrupt_and_perturb():
  task = sorting.SortingTask()
  rng = np.random.default_rng(0)
  for p in task.load("test")[:20]:
    bad = task.corrupt(p, p.answer, rng)
    assert task.reward(p, bad) == 0.0
    assert sorted(task.perturb(p, p.answer, rng)) == sorted(p.answer)
  assert task.corrupt(None, "aaa", rng) != "aaa"


def test_a_task_without_the_capabilities_gets_skipped_rows():
  task = toy.ToyTask()
  problems = task.load("test")[:3]
  y1 = ["A", "B", "C"]
  givens = counterfactual.given_texts(task, problems, y1, seed=0)
  assert givens["model"] == y1
  assert all(task.reward(p, g) == 1.0 for p, g in zip(problems, givens["gold"]))
  assert "corrupt" in givens["corrupted"] and "perturb" in givens["perturbed"]
  assert sorted(givens["other"]) == y1 and givens["other"] != y1
  rows = {"_meta": {"n": 3}, "corrupted": {"skipped": givens["corrupted"]}}
  assert "skipped" in counterfactual.markdown(rows)
  assert scaling.mean_se([1.0, 0.0]) == (0.5, 0.5)


def test_a_given_y1_longer_than_the_budget_is_scored_as_the_model_read_it():
  # Regression: "y1' right" / "kept" were computed on the whole given text while turn 2
  # read it cut to the turn-1 budget (a MATH gold solution is longer than most budgets).
  # Sorting words have >= 5 letters; with a 3-token turn-1 budget (characters here) the gold
  # is cut to 2 letters, which is not the sorted word: wrong, and never "kept".
  config = config_lib.load(TINY, OVERRIDES)
  c = build_lib.build(config)
  problems = evaluate.eval_problems(c)[:8]
  assert min(len(p.answer) for p in problems) >= 5
  table = counterfactual.counterfactual_table(c, c.base_params, problems, batch_size=8,
                                              turn1_tokens=3, turn2_tokens=4)
  assert table["gold"]["acc_given"] == 0.0 and table["gold"]["fix_t2"] is not None
  assert table["gold"]["keep_right_t2"] is None          # no cut gold is right
