"""score_jax.load / LM / export_hf: behaviour and the errors bad checkpoints raise."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import score_jax  # noqa: E402
from score_jax import sampler  # noqa: E402
from score_jax.hub import lm as api  # noqa: E402
from score_jax.text import chat as chat_lib  # noqa: E402
from tests.hub.test_hf_weights import make_hf_checkpoint, write_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("gemma")
  make_hf_checkpoint(d, "gemma")
  return d


@pytest.fixture(scope="module")
def gemma_lm(gemma_dir):
  return score_jax.load(gemma_dir)


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def _edit_config(directory, **changes):
  path = directory / "config.json"
  cfg = json.loads(path.read_text())
  cfg.update(changes)
  path.write_text(json.dumps(cfg))


# ----------------------------------------------------------------------------- errors

def test_missing_path_and_missing_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    score_jax.load(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty has no config\.json"):
    score_jax.load(tmp_path / "empty")


def test_unsupported_architecture_names_the_supported_ones(gemma_dir, tmp_path):
  d = _copy(gemma_dir, tmp_path / "m")
  _edit_config(d, architectures=["MistralForCausalLM"], model_type="mistral")
  with pytest.raises(ValueError, match=r"config\.json: unsupported architecture "
                     r"'MistralForCausalLM'; supported: LlamaForCausalLM, Qwen2ForCausalLM"):
    score_jax.load(d)


def test_missing_shard_names_shard_and_index(tmp_path):
  d = tmp_path / "sharded"
  make_hf_checkpoint(d, "llama", shard=True, tokenizer=False)
  index = json.loads((d / "model.safetensors.index.json").read_text())
  shard = sorted(set(index["weight_map"].values()))[1]
  (d / shard).unlink()
  with pytest.raises(FileNotFoundError,
                     match=f"shard {shard} listed in .*model.safetensors.index.json is missing"):
    score_jax.load(d)


def test_no_weights_file(gemma_dir, tmp_path):
  d = _copy(gemma_dir, tmp_path / "m")
  (d / "model.safetensors").rename(d / "weights.bin")
  with pytest.raises(FileNotFoundError, match="neither model.safetensors nor"):
    score_jax.load(d)


def test_shape_mismatch_names_param_shapes_and_file(gemma_dir, tmp_path):
  d = _copy(gemma_dir, tmp_path / "m")
  _edit_config(d, intermediate_size=48)
  with pytest.raises(ValueError, match=r"shape mismatch for param layers\.0\.mlp\.gate_proj"
                     r"\.kernel: config\.json implies HF tensor model\.layers\.0\.mlp\.gate_proj"
                     r"\.weight of shape \(48, 32\), found \(64, 32\) in .*model\.safetensors"):
    score_jax.load(d)


def test_layer_count_mismatch_both_ways(gemma_dir, tmp_path):
  more = _copy(gemma_dir, tmp_path / "more")
  _edit_config(more, num_hidden_layers=3)
  with pytest.raises(ValueError, match=r"tensor model\.layers\.2\.input_layernorm\.weight .*is "
                     r"not in .*model\.safetensors"):
    score_jax.load(more)
  fewer = _copy(gemma_dir, tmp_path / "fewer")
  _edit_config(fewer, num_hidden_layers=1)
  with pytest.raises(ValueError, match="not used by the model config.json describes"):
    score_jax.load(fewer)


def test_tokenizer_larger_than_model_vocab(gemma_dir, tmp_path):
  d = _copy(gemma_dir, tmp_path / "m")
  write_tokenizer(d, vocab_size=200)
  with pytest.raises(ValueError, match=r"vocab_size=200 but the model from .* has "
                     r"vocab_size=128"):
    score_jax.load(d)


def test_bad_arguments(gemma_dir):
  with pytest.raises(ValueError, match="dtype='float16'"):
    score_jax.load(gemma_dir, dtype="float16")
  with pytest.raises(ValueError, match="family='gemma2' but .*describes a 'gemma' model"):
    score_jax.load(gemma_dir, family="gemma2")
  with pytest.raises(ValueError, match="overrides= applies to Orbax"):
    score_jax.load(gemma_dir, overrides={"sliding_window": 4})
  with pytest.raises(ValueError, match="is a file"):
    score_jax.load(gemma_dir / "config.json")


def test_generate_argument_errors(gemma_lm, tmp_path):
  with pytest.raises(ValueError, match="top_k or top_p, not both"):
    gemma_lm.generate(["w1"], 4, temperature=1.0, top_k=3, top_p=0.5)
  with pytest.raises(TypeError, match="list of prompts"):
    gemma_lm.generate("w1", 4)
  no_tok = api.LM(**{**gemma_lm.__dict__, "tokenizer": None})
  with pytest.raises(ValueError, match="ships no tokenizer"):
    no_tok.generate(["w1"], 4)
  with pytest.raises(ValueError, match=r"tokens_BT must be \[batch, length\]"):
    gemma_lm.logits(np.zeros((4,), np.int32))


# ----------------------------------------------------------------------------- behaviour

def test_lm_fields(gemma_lm, gemma_dir):
  lm = gemma_lm
  assert lm.source == str(gemma_dir) and lm.config.family == "gemma"
  assert lm.chat == chat_lib.chat_format("gemma")
  assert lm.tokenizer.vocab_size == 128 and lm.tokenizer.eos_id == 1
  assert lm.params["embedder"]["embedding"][...].shape == (128, 32)
  logits = lm.logits(np.array([[2, 7, 8]]))
  assert logits.shape == (1, 3, 128) and logits.dtype == jnp.float32


def test_stop_ids_are_eos_and_end_of_turn(gemma_lm, tmp_path):
  # Tokenizer: <eos> = 1, <end_of_turn> = 5; config.json eos_token_id = 1.
  assert gemma_lm.stop_ids() == (1, 5)
  llama_dir = tmp_path / "llama"
  make_hf_checkpoint(llama_dir, "llama")
  lm = score_jax.load(llama_dir)
  assert lm.chat.name == "llama3" and lm.stop_ids() == (1,)   # no <|eot_id|> piece


def test_chat_generate_uses_the_chat_prompt(gemma_lm):
  ids = chat_lib.first_turn_ids(gemma_lm.chat, gemma_lm.tokenizer, "w5 w6")
  assert ids[0] == 2 and ids[1] == gemma_lm.tokenizer.token_id("<start_of_turn>")
  expected = gemma_lm.generate_ids([ids], 8)[0]
  if expected and expected[-1] in gemma_lm.stop_ids():
    expected = expected[:-1]
  # The fixture's tokenizer has no chat template (a base model): name the format.
  assert gemma_lm.generate(["w5 w6"], 8, chat="gemma") == [
      gemma_lm.tokenizer.decode(expected, skip_special=True)]


def test_top_k_1_is_greedy(gemma_lm):
  prompts = [[2, 30, 31, 32], [2, 9]]
  greedy = gemma_lm.generate_ids(prompts, 6, stop_ids=())
  assert gemma_lm.generate_ids(prompts, 6, temperature=1.0, top_k=1, seed=3,
                               stop_ids=()) == greedy


def test_sampling_method_mapping():
  assert sampler.sampling_method(0.0) == sampler.Greedy()
  assert sampler.sampling_method(0.7) == sampler.Temperature(0.7)
  assert sampler.sampling_method(0.7, top_k=5) == sampler.TopK(5, 0.7)
  assert sampler.sampling_method(1.0, top_p=0.9) == sampler.TopP(0.9, 1.0)
  # "off" is 0 / None for top_k and 1.0 / None for top_p (the config's convention and
  # the Python API's): both give plain temperature sampling.
  assert sampler.sampling_method(0.7, top_k=0, top_p=1.0) == sampler.Temperature(0.7)
  assert sampler.sampling_method(0.7, top_k=None, top_p=None) == sampler.Temperature(0.7)
  with pytest.raises(ValueError, match="temperature=-1"):
    sampler.sampling_method(-1.0)
  with pytest.raises(ValueError, match="not both"):
    sampler.sampling_method(0.7, top_k=5, top_p=0.9)


def test_vocab_limit_never_draws_ids_the_tokenizer_lacks():
  logits_BV = jnp.array([[0.0, 1.0, 5.0, 3.0], [2.0, 0.0, 1.0, 9.0]])
  limited = sampler.VocabLimit(sampler.Greedy(), 2)
  assert limited.sample(None, logits_BV).tolist() == [1, 0]
  assert sampler.Greedy().sample(None, logits_BV).tolist() == [2, 3]
  applied = np.asarray(limited.apply(logits_BV))
  assert np.isneginf(applied[:, 2:]).all()


def test_left_pad():
  tokens, valid, truncated = sampler.left_pad([[5, 6, 7], [8]], pad_id=0)
  assert tokens.tolist() == [[5, 6, 7], [0, 0, 8]]
  assert valid.tolist() == [[True, True, True], [False, False, True]]
  assert truncated == 0
  # A fixed length cuts long rows from the left and counts them.
  tokens, valid, truncated = sampler.left_pad([[5, 6, 7], [8], []], pad_id=9, length=2)
  assert tokens.tolist() == [[6, 7], [9, 8], [9, 9]]
  assert valid.tolist() == [[True, True], [False, True], [False, False]]
  assert truncated == 1
  with pytest.raises(ValueError, match="no prompts"):
    sampler.left_pad([], 0)
  with pytest.raises(ValueError, match="all prompts are empty"):
    sampler.left_pad([[]], 0)


def test_qwen_chat_format_from_tokenizer_config(tmp_path):
  d = tmp_path / "qwen"
  make_hf_checkpoint(d, "qwen2")
  assert score_jax.load(d).chat.name == "qwen2"
  cfg = json.loads((d / "tokenizer_config.json").read_text())
  cfg["chat_template"] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
  (d / "tokenizer_config.json").write_text(json.dumps(cfg))
  assert score_jax.load(d).chat.name == "qwen2.5"


def test_tokenizer_override_and_checkpoint_without_tokenizer(tmp_path, gemma_dir):
  d = tmp_path / "bare"
  make_hf_checkpoint(d, "gemma", tokenizer=False)
  lm = score_jax.load(d)
  assert lm.tokenizer is None
  lm = score_jax.load(d, tokenizer=gemma_dir / "tokenizer.json")
  assert lm.tokenizer.vocab_size == 128
  out = score_jax.export_hf(score_jax.load(d), tmp_path / "out")
  cfg = json.loads((out / "config.json").read_text())
  assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (2, 1, 0)
  assert not (out / "tokenizer.json").exists()


def test_export_generation_config(gemma_lm, gemma_dir, tmp_path):
  """The source's generation_config.json is kept; without one, EOS + end of turn."""
  out = score_jax.export_hf(gemma_lm, tmp_path / "out")
  assert (json.loads((out / "generation_config.json").read_text())
          == json.loads((gemma_dir / "generation_config.json").read_text()))
  d = _copy(gemma_dir, tmp_path / "m")
  (d / "generation_config.json").unlink()
  out = score_jax.export_hf(score_jax.load(d), tmp_path / "out2")
  gen = json.loads((out / "generation_config.json").read_text())
  assert gen == {"bos_token_id": 2, "pad_token_id": 0, "eos_token_id": [1, 5]}
  assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<eos>"
