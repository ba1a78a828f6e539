"""`python -m score_jax.export`: a trained run's checkpoint out as a Hugging Face model.

A tiny Gemma 2 checkpoint (tests/hf_tiny.py: softcaps, a 32-token sliding window, a BPE
tokenizer with the official chat template) initialises a two-step run of configs/tiny.py
(sft steps at lr 1e-3, so that the weights move; the slow GGUF pipeline test exports a
SCoRe Stage I step). The CLI exports it; transformers reloads the directory and must give
our model's logits on the checkpoint's params (float32, max abs diff < 1e-4; measured
2e-07) and our tokenizer's ids and text. A random-init run (char tokenizer) exports its
weights alone. The mistakes (a step that does not exist, a missing work directory, another
model's --init-checkpoint, --push-to-hub offline or without huggingface_hub) are one line
each. ~60 s on the 2-core CPU, most of it the module's training run.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import score_jax  # noqa: E402
from score_jax import checkpoint as checkpoint_lib  # noqa: E402
from score_jax import config_lib  # noqa: E402
from score_jax import export as export_lib  # noqa: E402
from score_jax import train  # noqa: E402
from tests import hf_tiny  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402

TEXTS = ["Sort the letters: dcba", "user model: There might be an error in the solution "
         "above. Final Answer: The final answer is $5$. def f(x):\n    return x\n" * 2]


def train_tiny(directory, family="gemma2", extra=()):
  """(init checkpoint, workdir) of a 2-step sft run (lr 1e-3) from a tiny HF model (the
  checkpoints are the same params tree as a SCoRe stage's: tests/hub/test_gguf_pipeline.py
  exports a Stage I step)."""
  checkpoint = hf_tiny.make_checkpoint(directory / "init", family)
  config = config_lib.load(REPO_ROOT / "configs" / "tiny.py", [
      f"--config.init.checkpoint={checkpoint}", "--config.tokenizer.kind=auto",
      f"--config.chat_format={hf_tiny.FAMILIES[family].chat_format}",
      "--config.plan.stages=sft", "--config.plan.sft_steps=2", "--config.plan.stage1_steps=0",
      "--config.plan.stage2_steps=0", "--config.train.sft_batch_size=4",
      "--config.train.batch_size=2", "--config.rollout.max_instruction_len=128",
      "--config.checkpoint.every=1", "--config.checkpoint.async_save=False",
      "--config.train.tensorboard=False", "--config.task.eval_limit=4", *extra])
  workdir = directory / "run"
  train.Trainer(config, workdir).run()
  return checkpoint, workdir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return train_tiny(tmp_path_factory.mktemp("export"))


def export_cli(*args):
  return subprocess.run([sys.executable, "-m", "score_jax.export", *map(str, args)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                        check=False)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  _, workdir = run
  out = tmp_path_factory.mktemp("hf") / "model"
  proc = export_cli("--workdir", workdir, "--out", out)     # --step best (the default)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc.stdout


def ours_at(checkpoint, workdir, step):
  """Our model (score_jax.load of the init checkpoint) with the params of `step`."""
  lm = score_jax.load(checkpoint)
  params, _, _ = checkpoint_lib.restore_params(workdir / "checkpoints", lm.params, step)
  lm.params = params
  return lm


def logits_pair(lm, model, texts):
  """(ours, transformers') float32 logits of each text (BOS first), as lists."""
  ours, theirs = [], []
  for text in texts:
    ids = lm.tokenizer.encode(text, add_bos=True)
    ours.append(np.asarray(lm.logits(np.array([ids]))[0]))
    with torch.no_grad():
      theirs.append(model(torch.tensor([ids])).logits[0].float().numpy())
  return ours, theirs


def test_transformers_reloads_the_exported_step_with_our_logits(run, exported):
  checkpoint, workdir = run
  out, stdout = exported
  assert "exporting step 2: the latest (no step on disk has a validation acc_t2" in stdout
  model = transformers.AutoModelForCausalLM.from_pretrained(
      out, attn_implementation="eager", dtype=torch.float32).eval()
  assert type(model).__name__ == "Gemma2ForCausalLM"
  lm = ours_at(checkpoint, workdir, 2)
  lengths = [len(lm.tokenizer.encode(t, add_bos=True)) for t in TEXTS]
  assert max(lengths) > 32          # past the sliding window: local and global layers differ
  ours, theirs = logits_pair(lm, model, TEXTS)
  diff = max(float(np.abs(o - t).max()) for o, t in zip(ours, theirs))
  print(f"max |logits diff| ours vs transformers(export): {diff:.2e}")
  assert diff < 1e-4
  # The export holds the trained weights, not the init model's.
  init, _ = logits_pair(score_jax.load(checkpoint), model, TEXTS[:1])
  assert float(np.abs(init[0] - ours[0]).max()) > 1e-3


def test_config_carries_the_init_models_settings(run, exported):
  checkpoint, _ = run
  out, _ = exported
  src = json.loads((checkpoint / "config.json").read_text())
  cfg = json.loads((out / "config.json").read_text())
  for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_key_value_heads",
              "head_dim", "sliding_window", "query_pre_attn_scalar", "attn_logit_softcapping",
              "final_logit_softcapping", "max_position_embeddings", "bos_token_id",
              "eos_token_id", "pad_token_id", "tie_word_embeddings", "initializer_range",
              "attention_dropout", "use_cache"):
    assert cfg[key] == src[key], key
  # transformers 5 spells rope rope_parameters; we write the Hub's spelling, which it reads.
  assert cfg["rope_theta"] == src["rope_parameters"]["rope_theta"] == 10_000.0
  assert cfg["layer_types"] == ["sliding_attention", "full_attention"]
  gen = json.loads((out / "generation_config.json").read_text())
  assert gen == json.loads((checkpoint / "generation_config.json").read_text())


def test_tokenizer_round_trip(run, exported):
  checkpoint, _ = run
  out, _ = exported
  ours = score_jax.load(checkpoint).tokenizer
  theirs = transformers.AutoTokenizer.from_pretrained(out)
  for text in TEXTS + ["Ünïcödé ½ <end_of_turn> tabs\tand  spaces"]:
    ids = ours.encode(text)   # the tiny tokenizer.json adds no BOS itself (Gemma's GGUF one
    assert theirs(text, add_special_tokens=False).input_ids == ids   # does: see the slow test)
    assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids, skip_special=True)
  # The chat template travels too: the official template's ids are ours.
  chat = theirs.apply_chat_template([{"role": "user", "content": "dcba"}],
                                    add_generation_prompt=True, tokenize=True,
                                    return_dict=False)
  lm = score_jax.load(out)
  assert lm.has_chat_template is True
  from score_jax.text import chat as chat_lib  # pylint: disable=import-outside-toplevel
  assert list(chat) == chat_lib.first_turn_ids(lm.chat, lm.tokenizer, "dcba")


def test_a_step_number_and_the_library_call(run, tmp_path):
  checkpoint, workdir = run
  lines = []
  out, step = export_lib.export_run(workdir, tmp_path / "s1", step="1", log=lines.append)
  assert step == 1 and lines[0] == "exporting step 1: step 1 as asked (steps on disk: 1, 2)"
  lm = ours_at(checkpoint, workdir, 1)
  reloaded = score_jax.load(out)
  ids = np.array([lm.tokenizer.encode(TEXTS[1], add_bos=True)])
  np.testing.assert_array_equal(np.asarray(reloaded.logits(ids)), np.asarray(lm.logits(ids)))


def _main_error(capsys, *argv):
  with pytest.raises(SystemExit) as e:
    export_lib.main([str(a) for a in argv])
  assert e.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), "\n".join(err)
  return err[0]


def test_mistakes_are_one_line(run, tmp_path, capsys, monkeypatch):
  _, workdir = run
  err = _main_error(capsys, "--workdir", workdir, "--out", tmp_path / "x", "--step", "7")
  assert "no finished step 7" in err and "steps on disk: 1, 2" in err
  err = _main_error(capsys, "--workdir", tmp_path / "nope", "--out", tmp_path / "x")
  assert f"--workdir {tmp_path / 'nope'} does not exist" in err
  (tmp_path / "empty").mkdir()
  err = _main_error(capsys, "--workdir", tmp_path / "empty", "--out", tmp_path / "x")
  assert "config.json not found: not the work directory of a training run" in err
  err = _main_error(capsys, "--workdir", workdir, "--out", tmp_path / "x", "--step", "last")
  assert "--step='last': choose best, latest or a step number" in err
  err = _main_error(capsys, "--workdir", workdir, "--out", tmp_path / "x",
                    "--init-checkpoint", tmp_path / "moved")
  assert "--init-checkpoint=" in err and "does not exist here" in err
  other = hf_tiny.make_checkpoint(tmp_path / "other", "llama3")   # not the run's model
  capsys.readouterr()
  err = _main_error(capsys, "--workdir", workdir, "--out", tmp_path / "x",
                    "--init-checkpoint", other)
  assert "checkpoint step 2" in err and str(workdir / "checkpoints") in err, err
  err = _main_error(capsys, "--workdir", workdir, "--out", tmp_path / "x",
                    "--push-to-hub", "not a repo")
  assert "--push-to-hub='not a repo' is not a Hub repo id" in err
  assert not (tmp_path / "x").exists()
  pytest.importorskip("huggingface_hub")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")      # never the network
  err = _main_error(capsys, "--workdir", workdir, "--out", tmp_path / "x", "--step", "1",
                    "--push-to-hub", "someone/tiny")
  assert "HF_HUB_OFFLINE is set" in err and f"hf upload someone/tiny {tmp_path / 'x'}" in err
  assert (tmp_path / "x" / "model.safetensors").is_file()     # written before the upload


def test_push_without_huggingface_hub_is_one_line(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)    # an ImportError on import
  with pytest.raises(ImportError, match=r"^--push-to-hub needs huggingface_hub \(pip install "
                     r"huggingface_hub\); the model is in "):
    export_lib.push_to_hub(tmp_path, "someone/tiny")



def test_a_random_init_run_exports_without_a_tokenizer(tmp_path):
  """configs/tiny.py as it is (random Llama-style model, char tokenizer): weights and
  config out, no tokenizer files (a char tokenizer has no Hugging Face form)."""
  config = config_lib.load(REPO_ROOT / "configs" / "tiny.py", [
      "--config.plan.stages=sft", "--config.plan.sft_steps=1", "--config.plan.stage1_steps=0",
      "--config.plan.stage2_steps=0", "--config.checkpoint.async_save=False",
      "--config.train.tensorboard=False", "--config.task.eval_limit=4"])
  trainer = train.Trainer(config, tmp_path / "run")
  trainer.run()
  lines = []
  out, step = export_lib.export_run(tmp_path / "run", tmp_path / "hf", log=lines.append)
  assert step == 1 and "gets no tokenizer files" in lines[1]
  assert not list(out.glob("tokenizer*"))
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(model).__name__ == "LlamaForCausalLM"
  params, _, _ = checkpoint_lib.restore_params(tmp_path / "run" / "checkpoints",
                                               trainer.c.base_params, 1)
  from score_jax.model import transformer as model_lib  # pylint: disable=import-outside-toplevel
  ids = np.array([trainer.c.tokenizer.encode("dcba", add_bos=True)])
  ours = np.asarray(model_lib.forward(trainer.c.graphdef, params, ids,
                                      np.ones(ids.shape, bool))[0])
  with torch.no_grad():
    theirs = model(torch.tensor(ids)).logits.float().numpy()
  assert np.abs(ours - theirs).max() < 1e-4
