"""Pair-SFT and Self-Refine on MATH: a task with no gold second attempt, graded for real.

A tiny random Gemma 2 checkpoint (tests/hf_tiny.py) stands in for gemma-2-2b-it in
configs/gemma2_2b_math.py at toy size (tests/test_real_configs.py's overrides), on the real
MATH data of ../shared/data:

- two Pair-SFT training steps run (no gold answers: the pairs come
  from the base model's own samples) and log the kept fraction and the fraction of problems
  with a correct sample, consistent with the logged first-attempt reward;
- on hand-written responses to two real MATH problems, graded by the math grader, Pair-SFT
  pairs the wrong first attempts of the solved problem with its correct responses in turn
  and drops the unsolved problem;
- Self-Refine evaluates the trained weights with the MATH Self-Refine instruction, which
  reaches the sampler in the Gemma chat turn; first attempts equal a plain evaluation's.

Slow (`pytest -m slow`): the module's run takes 2-3 min of XLA compilation on 2 CPU cores;
the default suite covers Pair-SFT and Self-Refine on the toy tasks (tests/rl/test_baselines.py,
tests/rl/test_self_refine.py, tests/test_experiment_methods.py).
"""

import numpy as np
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("torch")
pytest.importorskip("transformers")

from score_jax import config_lib  # noqa: E402
from score_jax import evaluate  # noqa: E402
from score_jax import metrics as metrics_lib  # noqa: E402
from score_jax import train  # noqa: E402
from score_jax.rl import baselines  # noqa: E402
from score_jax.rl import rollout as rollout_lib  # noqa: E402
from score_jax.tasks import prompts  # noqa: E402
from tests.test_real_configs import _config_path, _corpus, tiny_checkpoint  # noqa: E402
from tests.test_real_configs import tiny_overrides  # noqa: E402

NAME = "gemma2_2b_math"


@pytest.fixture(scope="module")
def pair_sft_run(tmp_path_factory, shared_data):
  directory = tmp_path_factory.mktemp("math_baselines")
  checkpoint = tiny_checkpoint(directory / "ckpt", NAME, _corpus(shared_data))
  config = config_lib.load(_config_path(NAME), [
      *tiny_overrides(checkpoint, shared_data), "--config.plan.stages=pair_sft",
      "--config.plan.pair_sft_steps=2", "--config.plan.stage1_steps=0",
      "--config.plan.stage2_steps=0"])
  trainer = train.Trainer(config, directory / "run")
  trainer.run()
  yield config, trainer, directory / "run"
  trainer.c.task.close()


def test_pair_sft_steps_on_math_log_what_they_kept(pair_sft_run):
  _, trainer, workdir = pair_sft_run
  rows = metrics_lib.read_jsonl(workdir / "train" / "metrics.jsonl")
  assert [(r["step"], r["stage"]) for r in rows] == [(1, "pair_sft"), (2, "pair_sft")]
  for r in rows:
    assert r["skipped"] == 0 and np.isfinite(r["loss"])
    # 2 problems x 2 samples per step: fractions of 4 rows and of 2 problems.
    assert r["kept_fraction"] * 4 == pytest.approx(round(r["kept_fraction"] * 4))
    assert r["problems_solved_fraction"] * 2 == pytest.approx(
        round(r["problems_solved_fraction"] * 2))
    assert r["kept_fraction"] <= 1.0 - r["reward_t1"] + 1e-9     # only wrong first attempts
    if r["problems_solved_fraction"] == 0.0:
      assert r["kept_fraction"] == 0.0
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) \
      == ["1", "2"]


def test_pair_sft_pairs_real_math_responses_graded_by_the_math_grader(pair_sft_run):
  _, trainer, _ = pair_sft_run
  a, b = trainer.train_problems[:2]
  right1 = f"The answer is $\\boxed{{{a.answer}}}$."
  right2 = f"So we get $\\boxed{{{a.answer}}}$."
  wrong = "The answer is $\\boxed{-98765}$."
  problems = [a, a, b, b]
  y1 = [wrong, "I do not know.", wrong, "No idea."]
  y2 = [right1, right2, wrong, "Still no idea."]
  two_turn = trainer.c.two_turn(64, 64)
  episode = rollout_lib.demonstration_episode(two_turn, problems, y1, y2)
  np.testing.assert_array_equal(episode.r1_B, [0, 0, 0, 0])
  np.testing.assert_array_equal(episode.r2_B, [1, 1, 0, 0])       # the real grader's verdicts
  result = rollout_lib.RolloutResult(episode, problems, [y1, y2], 0)
  targets, stats = baselines.pair_sft_targets(baselines.sample_rows(result))
  assert targets == [right1, right2, None, None]
  assert stats == {"kept_fraction": 0.5, "problems_solved_fraction": 0.5}
  out, stats = baselines.pair_sft_episode(two_turn, result)
  assert stats == {"problems_solved_fraction": 0.5, "kept_fraction": 0.5}
  np.testing.assert_array_equal(out.turn2_mask_BT.any(axis=1), [True, True, False, False])
  assert not out.turn1_mask_BT.any()
  y2_cols = slice(out.tokens_BT.shape[1] - 64, None)
  texts = two_turn.decode(out.tokens_BT[:2, y2_cols], out.valid_BT[:2, y2_cols])
  assert texts == [right1, right2]
  np.testing.assert_array_equal(out.r2_B[:2], [1, 1])


def test_self_refine_evaluation_on_math(pair_sft_run):
  _, trainer, _ = pair_sft_run
  c = trainer.c
  instruction = prompts.self_refine_instruction("math")
  assert "Final Answer: The final answer is $answer$" in instruction
  refine = c.two_turn(8, 8).with_instruction(instruction)
  tokens, valid = refine.extra_chunk(np.array([True]))
  context = c.tokenizer.decode(tokens[0][valid[0]].tolist(), skip_special=False)
  # end_of_turn ended y1 (done); then the model turn's "\n" and the user turn.
  assert context == ("\n<start_of_turn>user\n" + instruction +
                     "<end_of_turn>\n<start_of_turn>model\n")
  problems = evaluate.eval_problems(c)
  assert len(problems) == 4
  kwargs = dict(batch_size=4, turn1_tokens=8, turn2_tokens=8, progress=False)
  refined = evaluate.evaluate_params(c, trainer.params, problems, instruction=instruction,
                                     **kwargs)
  plain = evaluate.evaluate_params(c, trainer.params, problems, **kwargs)
  assert refined["n"] == 4
  for key in metrics_lib.KEYS:
    assert key in refined, key
  assert refined["delta"] == pytest.approx(refined["delta_i2c"] - refined["delta_c2i"])
  assert [r["y1"] for r in refined["records"]] == [r["y1"] for r in plain["records"]]
  for r in refined["records"]:
    assert r["r1"] in (0.0, 1.0) and r["r2"] in (0.0, 1.0) and isinstance(r["y2"], str)
