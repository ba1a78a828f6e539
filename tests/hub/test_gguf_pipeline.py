"""The real model through the real command lines on CPU: Gemma 3 270M (GGUF), real MATH.

`python -m score_jax.main` with the gemma2_2b_math config as written except
`--config.init.checkpoint=<the .gguf file>` and toy sizes (1 problem x 2 samples,
128-token prompts, 8-token attempts, logits projected 32 positions at a time): two SCoRe
Stage I steps; then `python -m score_jax.evaluate --once` of the last checkpoint: greedy
two-turn decoding of the first 2 MATH500 problems; then `python -m score_jax.export` of
that step, which transformers reloads with our logits on the step's params (< 1e-3, as
the GGUF parity tests) and our tokenizer's ids.

Both run as subprocesses on ONE CPU device (the tests' 8 virtual devices would each
all-gather Gemma's 262,144 x 640 embedding and its gradient: ~18 GB instead of ~8 GB).
Slow: several minutes of CPU.
"""

import os
import subprocess
import sys

import pytest

from score_jax import metrics as metrics_lib
from tests import real_model
from tests.conftest import REPO_ROOT


def overrides(checkpoint, data):
  return [f"--config.init.checkpoint={checkpoint}", f"--config.task.data_dir={data}",
          "--config.train.batch_size=1", "--config.rollout.samples_per_prompt=2",
          "--config.train.micro_batches=2", "--config.train.logit_chunk=32",
          "--config.rollout.max_prompt_len=128", "--config.rollout.max_turn1_tokens=8",
          "--config.rollout.max_turn2_tokens=8", "--config.eval.max_turn1_tokens=8",
          "--config.eval.max_turn2_tokens=8", "--config.eval.batch_size=2",
          "--config.task.eval_limit=2", "--config.task.workers=1",
          "--config.plan.stages=stage1", "--config.plan.stage1_steps=2",
          "--config.plan.stage2_steps=0", "--config.model.dtype=float32",
          "--config.eval.validation_every=0", "--config.checkpoint.every=2",
          "--config.checkpoint.async_save=False", "--config.train.tensorboard=False"]


def _run(module, workdir, args, extra=()):
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_force_host_platform_device_count"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", XLA_FLAGS=flags)
  cmd = [sys.executable, "-m", module, "--config", "configs/gemma2_2b_math.py",
         "--workdir", str(workdir), *args, *extra]
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=3600, check=False)
  assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


@pytest.mark.slow
def test_two_stage1_steps_then_a_two_turn_eval_on_math(tmp_path, shared_data):
  path = real_model.gguf_path()
  real_model.load_lm()             # skips without transformers (the tokenizer converter)
  workdir = tmp_path / "run"
  args = overrides(path, shared_data)
  _run("score_jax.main", workdir, args)
  rows = metrics_lib.read_jsonl(workdir / "train" / "metrics.jsonl")
  assert [(r["step"], r["stage"]) for r in rows] == [(1, "stage1"), (2, "stage1")]
  for r in rows:
    assert r["skipped"] == 0 and abs(r["loss"]) < 1e6 and abs(r["kl_t1"]) < 1e6
    assert 0 < r["len_t1"] <= 8 and 0 < r["len_t2"] <= 8

  _run("score_jax.evaluate", workdir, args, ["--once", "--checkpoint", "latest"])
  line = metrics_lib.read_jsonl(workdir / "eval" / "metrics.jsonl")[-1]
  assert line["step"] == 2 and line["n"] == 2
  assert 0.0 <= line["acc_t1"] <= 1.0 and 0.0 <= line["acc_t2"] <= 1.0
  samples = metrics_lib.read_jsonl(workdir / "eval" / "samples" / "2.jsonl")
  assert [s["uid"] for s in samples] == ["test/precalculus/807.json",
                                         "test/intermediate_algebra/1994.json"]
  for s in samples:
    assert s["y1"] and s["y2"] and s["r1"] in (0.0, 1.0) and s["r2"] in (0.0, 1.0)

  out = tmp_path / "hf"
  proc = _cli(["score_jax.export", "--workdir", str(workdir), "--step", "latest",
               "--out", str(out)])
  assert "exporting step 2: the latest" in proc.stdout
  check_export(path, workdir, out, step=2)


def _cli(args):
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_force_host_platform_device_count"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", XLA_FLAGS=flags)
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=3600, check=False)
  assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


def check_export(gguf, workdir, out, step):
  """transformers' reading of the exported `out` against our model on `step`'s params."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  import score_jax  # pylint: disable=import-outside-toplevel
  from score_jax import checkpoint as checkpoint_lib  # pylint: disable=import-outside-toplevel
  lm = score_jax.load(gguf, dtype="float32")
  init = lm.params
  lm.params, _, _ = checkpoint_lib.restore_params(workdir / "checkpoints", init, step)
  # Often 0 here: with 0/2 rewards the LOO advantages and the step-1 KL are 0, so the two
  # Stage I steps leave the params as they were (tests/hub/test_export_cli.py moves them).
  moved = max(float(jax.numpy.abs(a - b).max())
              for a, b in zip(jax.tree.leaves(lm.params), jax.tree.leaves(init)))
  model = transformers.AutoModelForCausalLM.from_pretrained(
      out, dtype=torch.float32, attn_implementation="eager").eval()
  assert type(model).__name__ == "Gemma3ForCausalLM"
  tok = transformers.AutoTokenizer.from_pretrained(out)
  worst = 0.0
  for text in real_model.PROMPTS + [real_model.long_prompt()]:
    ids = lm.tokenizer.encode(text, add_bos=True)
    assert tok(text).input_ids == ids
    assert tok.decode(ids, skip_special_tokens=True) == lm.tokenizer.decode(
        ids, skip_special=True)
    with torch.no_grad():
      ref = model(torch.tensor([ids])).logits[0].float().numpy()
    ours = np.asarray(lm.logits(np.array([ids]))[0])
    worst = max(worst, float(np.abs(ours - ref).max()))
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
  print(f"export of step {step}: max |logits diff| vs transformers {worst:.2e}; "
        f"max |param change| {moved:.2e}")
  assert worst < 1e-3
