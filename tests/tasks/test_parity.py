"""The parity task (score_jax.tasks.parity) and its demo config (configs/demo_check.py).

- Hand-checked answers: "1000" -> "1=01111" (the parity, then the parities of the prefixes
  "", "1", "10", "100", "1000"), and the facts the demo rests on: z_0 = 0, z_i = z_{i-1} ^
  x_{i-1} (local), z_n is the parity of all bits, i.e. the right first bit; an answer with
  the wrong first bit and the same work is wrong, and its last bit is the right first bit.
- Splits: sizes, disjoint prompts, deterministic, the right answer everywhere; a split that
  cannot exist is an error that names the config field.
- The noisy solver: with error_rate 0 it gives the answer or the chain from the wrong first
  bit, the latter at wrong_start_rate (1/2 by default, as in the demo config's
  blind_spot_rate); error_rate 1 adds one typo (one flipped digit, or none on the "=").
- Counterfactual pieces: corrupt is the right answer with the wrong first bit (always
  wrong, the same work); perturb flips the last bit (z_n).
- The reward is exact match (`base.ExactAnswerTask`, shared with sorting): surrounding
  whitespace is ignored, but no hedge, extra text, second answer or look-alike digit scores.
- The registry builds it from the config's task section; the demo config's sizes fit it.
- End to end (slow, 1-3 min wall on 2 shared cores: 52 s quiet, 192 s at load 8): shrunk
  configs/demo_check.py (a few steps) trains the base model and SCoRe, writes results.json, the
  counterfactual table of the SCoRe run has every condition (gold right, corrupted wrong).
"""

import json

import numpy as np
import pytest

from score_jax import config_lib
from score_jax import counterfactual
from score_jax import experiment
from score_jax.tasks import base
from score_jax.tasks import parity
from score_jax.tasks import registry
from score_jax.tasks import sorting
from tests.conftest import REPO_ROOT

DEMO_CHECK = REPO_ROOT / "configs" / "demo_check.py"


def test_prefix_parities_and_answers_by_hand():
  assert parity.prefix_parities("1000") == "01111"   # "", "1", "10", "100", "1000"
  assert parity.prefix_parities("111") == "0101" and parity.prefix_parities("") == "0"
  assert parity.prefix_parities("0110") == "00100"
  assert parity.answer("1000") == "1=01111" and parity.answer("111") == "1=0101"
  assert parity.answer("0110") == "0=00100"
  assert parity.flip("00100") == "11011" and parity.flip("a1=") == "a0="


def test_the_answer_is_a_global_bit_then_local_work_that_ends_in_it():
  rng = np.random.default_rng(0)
  for _ in range(50):
    x = "".join(str(b) for b in rng.integers(0, 2, size=16))
    p, sep, z = parity.answer(x).partition("=")
    assert sep == "=" and p == str(x.count("1") % 2)           # the parity of all bits
    assert len(z) == 17 and z[0] == "0"
    assert all(int(z[i]) == int(z[i - 1]) ^ int(x[i - 1]) for i in range(1, 17))
    assert z[-1] == p                    # the work ends in the right first bit
    assert parity.flip(p) + sep + z != parity.answer(x)      # a wrong guess, the same work


def test_splits_are_disjoint_deterministic_and_right():
  task = parity.ParityTask(num_train=300, num_test=50, num_validation=40, min_len=3,
                           max_len=10)
  splits = {s: task.load(s) for s in task.splits}
  assert {s: len(p) for s, p in splits.items()} == {"train": 300, "validation": 40,
                                                     "test": 50}
  prompts = {s: {p.prompt for p in ps} for s, ps in splits.items()}
  assert not prompts["test"] & prompts["train"]
  assert not prompts["validation"] & (prompts["train"] | prompts["test"])
  assert [p.prompt for p in task.load("test")] == [p.prompt for p in splits["test"]]
  for ps in splits.values():
    for p in ps:
      bits = p.prompt[len(parity.PREFIX):]
      assert p.prompt.startswith("xor: ") and 3 <= len(bits) <= 10
      assert task.reward(p, p.answer) == 1.0 and task.reward(p, " " + p.answer + "\n") == 1.0
      assert p.answer == parity.answer(bits)
      assert task.reward(p, parity.flip(p.answer[0]) + p.answer[1:]) == 0.0  # wrong first bit
      assert task.reward(p, p.answer[:-1] + parity.flip(p.answer[-1])) == 0.0  # wrong work
  with pytest.raises(ValueError, match="no split 'dev'"):
    task.load("dev")
  tiny = parity.ParityTask(num_train=10, num_test=4, num_validation=4, min_len=2, max_len=2)
  with pytest.raises(ValueError, match="config.task.max_len"):
    tiny.load("validation")      # 4 strings of 2 bits, all of them in test
  with pytest.raises(ValueError, match="config.task.min_len"):
    parity.ParityTask(min_len=5, max_len=4)


def test_noisy_solver_and_counterfactual_pieces():
  problem = base.Problem(uid="t", prompt="xor: 1000", answer="1=01111")
  rng = np.random.default_rng(0)
  guess = parity.ParityTask(error_rate=0.0)
  demos = [guess.demonstration(problem, rng) for _ in range(400)]
  assert set(demos) == {"1=01111", "0=01111"}
  assert 160 <= demos.count("1=01111") <= 240   # 1/2 of 400, +- 4 standard deviations
  mostly = parity.ParityTask(error_rate=0.0, wrong_start_rate=0.1)
  demos = [mostly.demonstration(problem, rng) for _ in range(400)]
  assert 16 <= demos.count("0=01111") <= 64     # 40 of 400, +- 4 standard deviations
  never = parity.ParityTask(error_rate=0.0, wrong_start_rate=0.0)
  assert {never.demonstration(problem, rng) for _ in range(50)} == {"1=01111"}
  always = parity.ParityTask(error_rate=1.0)
  typos = []
  for _ in range(70):
    slip = always.demonstration(problem, rng)
    assert slip[1] == "="
    typos.append(min(sum(a != b for a, b in zip(slip, y))
                     for y in ("1=01111", "0=01111")))
  # 0 when it lands on "=" or on the guessed first bit (2 in 7: 20 of 70 expected)
  assert set(typos) == {0, 1} and typos.count(0) <= 30
  assert guess.corrupt(problem, " 1=01111\n", rng) == "0=01111"
  assert guess.reward(problem, "0=01111") == 0.0
  assert guess.perturb(problem, " 1=01111\n", rng) == "1=01110"
  assert guess.perturb(problem, "", rng) == "" and guess.answer_key(" 01 ") == "01"


def test_registry_and_demo_config_fit_the_task():
  config = config_lib.load(DEMO_CHECK, [])
  task = registry.make_task(config.task)
  assert isinstance(task, parity.ParityTask)
  assert (task.min_len, task.max_len, task.error_rate) == (16, 16, 0.1)
  assert task.wrong_start_rate == config.task.blind_spot_rate == 0.5
  problems = task.load("test")
  assert len(problems) == 500 and problems[0].prompt == "xor: 1010100100010101"
  # seven 1s: the parity 1, "=", the prefix parities (ending in 1)
  assert problems[0].answer == "1=01100111000011001"
  assert set("".join(p.prompt for p in problems[:50])) <= set(task.alphabet())
  assert set(task.turn2_instruction) <= set(task.alphabet())
  # Every prompt fits the prompt budget; answers (+ end of turn) fit the turn budgets.
  assert max(len(p.prompt) for p in problems) <= config.rollout.max_prompt_len
  for budget in ("max_turn1_tokens", "max_turn2_tokens"):
    assert 19 + 1 <= min(config.rollout[budget], config.eval[budget])


SHRINK = [
    "--config.experiment.base_steps=30",
    "--config.experiment.rl_steps=4",
    "--config.experiment.stage1_fraction=0.5",
    "--config.optim.sft_lr=1e-2",
    "--config.task.eval_limit=16",
    "--config.eval.batch_size=16",
    "--config.eval.validation_every=2",
    "--config.eval.validation_limit=16",
    "--config.train.batch_size=4",
    "--config.train.sft_batch_size=16",
    "--config.train.tensorboard=False",
    "--config.checkpoint.every=100",
    "--config.checkpoint.async_save=False",
]


@pytest.mark.slow
def test_demo_check_config_runs_end_to_end_at_toy_size(tmp_path):
  """1-3 min wall on the shared 2-core machine (52 s quiet, 192 s at load 8): compilation."""
  config = config_lib.load(DEMO_CHECK, SHRINK)
  experiment.run(config, tmp_path)
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["_meta"]["task"] == "parity" and results["_meta"]["n"] == 16
  assert set(results) == {"base", "score", "_meta"}
  cf_argv = [f"--config={DEMO_CHECK}", f"--workdir={tmp_path / 'seed_0' / 'score'}",
             "--checkpoint=latest", f"--out={tmp_path / 'cf'}", *SHRINK]
  counterfactual.main(cf_argv)
  table = json.loads((tmp_path / "cf" / "counterfactual.json").read_text())
  assert list(table) == ["_meta", *counterfactual.CONDITIONS]
  assert all("skipped" not in table[name] for name in counterfactual.CONDITIONS)
  assert table["gold"]["acc_given"] == 1.0 and table["corrupted"]["acc_given"] == 0.0
  assert table["_meta"]["n"] == 16


@pytest.mark.parametrize("task", [parity.ParityTask(num_train=1, num_test=1, num_validation=1),
                                  sorting.SortingTask()], ids=["parity", "sorting"])
def test_exact_answer_reward_cannot_be_gamed(task):
  gold = "1=01111"
  problem = base.Problem("attack", "q", gold)
  assert task.reward(problem, f"  {gold}\n") == 1.0
  for attack in (f"{gold} or 0=01111", f"0=01111\n{gold}", f"answer: {gold}", f"{gold}.",
                 gold.replace("1", "\uff11"), gold.replace("=", " = "), "", gold[:-1]):
    assert task.reward(problem, attack) == 0.0, attack
  assert task.answer_key(f" {gold} ") == gold
