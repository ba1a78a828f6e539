"""score_jax.load on tiny hand-made GGUF files (tests/hub/gguf_files.py writes them).

Each family's tiny random transformers model is written as GGUF the way llama.cpp
does (names, Gemma norms + 1, Llama q / k permuted, metadata keys) and read back:
logits must match the original transformers model (F32 files), and transformers' own
GGUF loader on the same file (quantised files: an independent reading of the same
bytes). Plus the reader, the tokenizer, and the errors bad files raise.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

import score_jax  # noqa: E402
from score_jax.hub import gguf as gguf_lib  # noqa: E402
from score_jax.hub import gguf_reader  # noqa: E402
from tests.hub import gguf_files  # noqa: E402
from tests.hub.test_hf_weights import hf_logits, randomize_  # noqa: E402

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0,
               eos_token_id=1, bos_token_id=2, max_position_embeddings=256)
# Mixed quantised types (by GGUF name substring); norms stay F32.
QUANT_TYPES = {"token_embd": "Q8_0", "attn_q": "Q5_0", "attn_k": "Q5_1", "attn_v": "Q4_0",
               "attn_output": "F16", "ffn_gate": "BF16", "ffn_up": "Q4_1", "ffn_down": "Q8_0"}


def gguf_config(family: str):
  """A tiny config of `family` that GGUF can express (llama.cpp's conventions: Gemma's
  query_pre_attn_scalar = head_dim, Gemma 3 has every 6th layer global)."""
  t = transformers
  if family == "llama":
    return t.LlamaConfig(**_COMMON, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         rope_parameters=dict(rope_type="default", rope_theta=500000.0))
  if family == "qwen2":
    return t.Qwen2Config(**_COMMON, tie_word_embeddings=True,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6))
  if family == "gemma":
    return t.GemmaConfig(**{**_COMMON, "num_key_value_heads": 1})
  if family == "gemma2":
    return t.Gemma2Config(**_COMMON, sliding_window=4, query_pre_attn_scalar=8,
                          attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
  if family == "gemma3":
    return t.Gemma3TextConfig(
        **{**_COMMON, "num_hidden_layers": 6}, sliding_window=4, query_pre_attn_scalar=8,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        rope_parameters={"full_attention": dict(rope_type="linear", factor=8.0,
                                                rope_theta=1e6),
                         "sliding_attention": dict(rope_type="default", rope_theta=1e4)})
  if family == "gemma3-hf":   # what transformers' GGUF loader assumes: no scaling, qpas 256
    return t.Gemma3TextConfig(
        **{**_COMMON, "num_hidden_layers": 6, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 256}, sliding_window=4,
        query_pre_attn_scalar=256, layer_types=["sliding_attention"] * 5 + ["full_attention"],
        rope_parameters={"full_attention": dict(rope_type="default", rope_theta=1e6),
                         "sliding_attention": dict(rope_type="default", rope_theta=1e4)})
  raise ValueError(family)


def make_model(family: str, seed: int = 0):
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
      gguf_config(family), attn_implementation="eager").float().eval()
  randomize_(model, family.split("-")[0], seed)
  return model


def batch():
  """2 rows of 10 tokens (> the window 4), the second left-padded by 4."""
  tokens = np.random.RandomState(1).randint(9, VOCAB, size=(2, 10)).astype(np.int32)
  valid = np.ones_like(tokens, bool)
  valid[1, :4], tokens[1, :4] = False, 0
  return tokens, valid


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
  mp = pytest.MonkeyPatch()
  mp.setenv("SCORE_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
  yield
  mp.undo()


@pytest.fixture(scope="module")
def models():
  return {}


def written(tmp_path, family, models, name="model.gguf", **kwargs):
  if family not in models:
    models[family] = make_model(family)
  path = tmp_path / name
  gguf_files.write_gguf(path, models[family], family.split("-")[0], **kwargs)
  return path, models[family]


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gemma2", "gemma3"])
def test_f32_file_matches_the_original_model(tmp_path, models, family):
  path, model = written(tmp_path, family, models)
  lm = score_jax.load(path)
  assert lm.config.family == family
  tokens, valid = batch()
  ref = hf_logits(model, tokens, valid)
  assert np.abs(np.asarray(lm.logits(tokens, valid)) - ref)[valid].max() <= 1e-4


def test_config_from_metadata(tmp_path, models):
  config = score_jax.load(written(tmp_path, "gemma3", models)[0]).config
  assert (config.layer_pattern, config.sliding_window, config.rope_base, config.rope_local_base,
          config.rope_scale_factor, config.query_pre_attn_scalar, config.qk_norm) == (
              ("local",) * 5 + ("global",), 4, 1e6, 1e4, 8.0, 8.0, True)
  config = score_jax.load(written(tmp_path, "gemma2", models)[0]).config
  assert (config.attn_logit_softcap, config.final_logit_softcap, config.layer_pattern) == (
      2.0, 3.0, ("local", "global"))
  # An explicit per-layer pattern (True = sliding) wins over the family default.
  path, _ = written(tmp_path, "gemma3", models, name="p.gguf", extra_keys={
      "gemma3.attention.sliding_window_pattern": ("array", [True, False] * 3)})
  assert score_jax.load(path).config.layer_pattern == ("local", "global")


@pytest.mark.parametrize("family", ["llama", "gemma3-hf"])
def test_quantised_file_matches_transformers_gguf_loader(tmp_path, models, family):
  pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF")
  path, model = written(tmp_path, family, models, types=QUANT_TYPES)
  ref_model = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
  tokens, valid = batch()
  ref = hf_logits(ref_model, tokens, valid)
  ours = np.asarray(score_jax.load(path).logits(tokens, valid))
  assert np.abs(ours - ref)[valid].max() <= 1e-4
  # Quantisation really changed the weights (so this is not the F32 test again).
  assert np.abs(hf_logits(model, tokens, valid) - ref)[valid].max() > 1e-3


def test_tokenizer_matches_transformers(tmp_path, models):
  path, _ = written(tmp_path, "gemma3", models)
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
  lm = score_jax.load(tmp_path)            # a directory holding one .gguf
  tok = lm.tokenizer
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (2, 1, 0, VOCAB)
  for text in ["ba be ci", "a<start_of_turn>abc 12!<end_of_turn>", " hi  there\n"]:
    assert tok.encode(text, add_bos=True) == ref(text).input_ids
  assert lm.stop_ids() == (1, 6)
  again = score_jax.load(path).tokenizer     # from the cache this time
  assert again.path == tok.path and again.encode("ba be") == tok.encode("ba be")


def test_export_of_a_gguf_model_reloads_in_transformers(tmp_path, models):
  path, model = written(tmp_path, "gemma3", models)
  out = score_jax.export_hf(score_jax.load(path), tmp_path / "hf")
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
  tokens, valid = batch()
  ref = hf_logits(model, tokens, valid)
  assert np.abs(hf_logits(reloaded, tokens, valid) - ref)[valid].max() <= 1e-4
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok("ba be").input_ids == [2] + score_jax.load(path).tokenizer.encode("ba be")
  assert json.loads((out / "config.json").read_text())["eos_token_id"] == 1


# ----------------------------------------------------------------------------- reader

def test_reader_agrees_with_gguf_package(tmp_path, models):
  path, _ = written(tmp_path, "llama", models, types=QUANT_TYPES)
  ours = gguf_reader.read_gguf(path)
  ref = gguf.GGUFReader(path)
  for key, field in ref.fields.items():
    if key.startswith("GGUF."):
      continue
    want = field.contents()
    got = ours.metadata[key]
    assert got == pytest.approx(want) if isinstance(want, float) else got == want, key
  assert list(ours.tensors) == [t.name for t in ref.tensors]
  for t in ref.tensors:
    assert ours.tensors[t.name].ggml_type == t.tensor_type
    np.testing.assert_array_equal(ours.raw(t.name), np.asarray(t.data))


def test_long_string_arrays_are_skipped(tmp_path):
  w = gguf.GGUFWriter(str(tmp_path / "s.gguf"), "llama")
  w.add_array("big", [f"t{i}" for i in range(gguf_reader.LONG_STRING_ARRAY + 1)])
  w.add_uint32("after", 7)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  header = gguf_reader.read_gguf(tmp_path / "s.gguf")
  assert header.metadata["big"] == gguf_reader.SkippedStrings(gguf_reader.LONG_STRING_ARRAY + 1)
  assert header.metadata["after"] == 7


# ----------------------------------------------------------------------------- errors

def test_unsupported_tensor_type_names_file_tensor_type_and_fix(tmp_path, models):
  path, _ = written(tmp_path, "llama", models, types={"ffn_down": "I32"})
  with pytest.raises(ValueError, match=r"model\.gguf: tensor blk\.0\.ffn_down\.weight is stored "
                     r"as I32, which the gguf package cannot dequantise \(supported: F32, F16, "
                     r".*Q4_K.*\); re-quantise"):
    score_jax.load(path)


def test_missing_metadata_key_is_named(tmp_path, models):
  path, _ = written(tmp_path, "gemma3", models,
                    skip_keys=("gemma3.attention.head_count",))
  with pytest.raises(ValueError, match=r"model\.gguf: GGUF metadata key "
                     r"'gemma3\.attention\.head_count' is missing"):
    score_jax.load(path)


def test_file_and_directory_errors(tmp_path, models):
  path, _ = written(tmp_path, "llama", models, extra_tensors={
      "blk.0.extra.weight": np.zeros((4,), np.float32)})
  with pytest.raises(ValueError, match=r"1 tensors are not used .*blk\.0\.extra\.weight"):
    score_jax.load(path)
  path, _ = written(tmp_path, "llama", models, name="b.gguf", extra_keys={
      "llama.feed_forward_length": ("uint32", 48)})
  with pytest.raises(ValueError, match=r"tensor blk\.0\.ffn_gate\.weight has shape \(64, 32\), "
                     r"but the metadata implies \(48, 32\)"):
    score_jax.load(path)
  with pytest.raises(ValueError, match=r"holds 2 \.gguf files"):
    score_jax.load(tmp_path)
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
  with pytest.raises(ValueError, match=r"junk\.gguf is not a GGUF file"):
    score_jax.load(tmp_path / "junk.gguf")
  w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match=r"unsupported GGUF architecture 'mamba'; supported: "
                     r"gemma3, gemma2, gemma, llama, qwen2"):
    score_jax.load(tmp_path / "m.gguf")
  with pytest.raises(ValueError, match="family='gemma3' but .* holds a 'llama' model"):
    score_jax.load(written(tmp_path, "llama", models, name="c.gguf")[0], family="gemma3")


def test_supported_types_lists_what_gguf_dequantises():
  types = gguf_lib.supported_types()
  assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K"} <= set(types)
  assert not {"Q8_K", "I32", "F64"} & set(types)
