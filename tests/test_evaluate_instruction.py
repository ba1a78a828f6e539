"""`evaluate --instruction self_refine` (issue 14 item 7): the Self-Refine row of a model's
initial weights from the command line, into its own metrics directory, next to the Base row.

The CLI's records must equal `evaluate_params` called directly with
`prompts.self_refine_instruction(task)` (greedy decoding is deterministic), so the option
really changes the turn-2 instruction. About 30-60 s on a loaded 2-core host (three tiny
evaluations, in process).
"""

import json

import pytest

from score_jax import build as build_lib
from score_jax import config_lib
from score_jax import evaluate
from score_jax import metrics as metrics_lib
from score_jax.tasks import prompts
from tests.conftest import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny.py")
ARGS = ["--config.task.eval_limit=3", "--config.eval.batch_size=3"]


def test_self_refine_row_from_the_cli(tmp_path, capsys):
  workdir = tmp_path / "w"
  evaluate.main(["--config", TINY, "--workdir", str(workdir), "--step", "0", *ARGS])
  evaluate.main(["--config", TINY, "--workdir", str(workdir), "--step", "0",
                 "--instruction", "self_refine", *ARGS])
  out = capsys.readouterr().out
  assert out.count("step 0 (init): acc_t1=") == 2
  base = metrics_lib.read_jsonl(workdir / "eval" / "metrics.jsonl")
  refine = metrics_lib.read_jsonl(workdir / "eval_self_refine" / "metrics.jsonl")
  assert [(r["step"], r["n"]) for r in base] == [(0, 3)]
  assert [(r["step"], r["n"]) for r in refine] == [(0, 3)]
  assert refine[0]["acc_t1"] == base[0]["acc_t1"]          # the same first attempts
  samples = [json.loads(line) for line in
             (workdir / "eval_self_refine" / "samples" / "0.jsonl").read_text().splitlines()]

  config = config_lib.load(TINY, ARGS)
  c = build_lib.build(config)
  problems = evaluate.eval_problems(c)
  direct = evaluate.evaluate_params(
      c, c.base_params, problems, batch_size=3, turn1_tokens=config.eval.max_turn1_tokens,
      turn2_tokens=config.eval.max_turn2_tokens, progress=False,
      instruction=prompts.self_refine_instruction(config.task.name))
  assert samples == direct["records"]
  assert refine[0]["acc_t2"] == direct["acc_t2"]
  # Run again: the step is already in its own metrics file, not evaluated again.
  evaluate.main(["--config", TINY, "--workdir", str(workdir), "--step", "0",
                 "--instruction", "self_refine", *ARGS])
  assert "not evaluated again" in capsys.readouterr().out


def test_instruction_is_checked(tmp_path):
  with pytest.raises(SystemExit):      # argparse: not one of the choices
    evaluate.main(["--config", TINY, "--workdir", str(tmp_path), "--step", "0",
                   "--instruction", "critique"])
  config = config_lib.load(TINY, ARGS)
  with pytest.raises(ValueError, match="--instruction 'critique': choose one of"):
    evaluate.run(config, tmp_path, once=True, checkpoint=0, instruction="critique")
