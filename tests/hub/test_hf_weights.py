"""HF import / export parity with `transformers` on tiny random models of each family.

Each family's tiny model is built with transformers (random weights large enough that
greedy decoding has clear margins), written with save_pretrained (Gemma 1 sharded),
and read back with score_jax.load. We compare logits on a left-padded batch (valid
positions only), 32 greedy tokens, and the model transformers loads from export_hf.
Also: config.json parsing of the Hub's spellings, checked field by field by hand.
"""

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import score_jax  # noqa: E402
from score_jax import mesh as mesh_lib  # noqa: E402
from score_jax import sampler as sampler_lib  # noqa: E402
from score_jax.hub import hf_config  # noqa: E402
from score_jax.hub import hf_weights as weights  # noqa: E402
from score_jax.model import config as mc  # noqa: E402
from score_jax.model import transformer as model_lib  # noqa: E402

VOCAB = 128
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
FAMILIES = ["llama", "qwen2", "gemma", "gemma2", "gemma3"]
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0,
               eos_token_id=1, bos_token_id=2, max_position_embeddings=256)


def hf_config_for(family: str):
  """A tiny transformers config of `family` that exercises its special features."""
  t = transformers
  if family == "llama":
    return t.LlamaConfig(**_COMMON, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         rope_parameters=dict(rope_type="llama3", rope_theta=500000.0,
                                              factor=8.0, low_freq_factor=1.0,
                                              high_freq_factor=4.0,
                                              original_max_position_embeddings=16))
  if family == "qwen2":
    return t.Qwen2Config(**_COMMON, tie_word_embeddings=True,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6))
  if family == "gemma":
    return t.GemmaConfig(**{**_COMMON, "num_key_value_heads": 1})
  if family == "gemma2":
    # Small caps and window so that both softcaps and the window change the logits.
    return t.Gemma2Config(**_COMMON, sliding_window=4, query_pre_attn_scalar=16,
                          attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
  if family == "gemma3":
    return t.Gemma3TextConfig(
        **{**_COMMON, "num_hidden_layers": 3}, sliding_window=4, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": dict(rope_type="linear", factor=8.0,
                                                rope_theta=1e6),
                         "sliding_attention": dict(rope_type="default", rope_theta=1e4)})
  raise ValueError(family)


def randomize_(model, family: str, seed: int = 0) -> None:
  """Weights with O(1) activations: matrices ~ N(0, 1/fan_in); norms / biases vary."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
      else:
        base = 1.0 if ("norm" in name and not family.startswith("gemma")) else 0.0
        p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))


def write_tokenizer(directory, specials=SPECIALS, vocab_size=VOCAB) -> None:
  """A word-level tokenizer.json with exactly `vocab_size` ids (+ tokenizer_config)."""
  from tokenizers import (Tokenizer, models,  # pylint: disable=import-outside-toplevel
                          pre_tokenizers)
  vocab = {s: i for i, s in enumerate(specials)}
  vocab.update({f"w{i}": len(specials) + i for i in range(vocab_size - len(specials))})
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(list(specials))
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
       "unk_token": "<unk>", "tokenizer_class": "PreTrainedTokenizerFast"}))


def make_hf_checkpoint(directory, family: str, *, seed: int = 0, shard: bool = False,
                       tokenizer: bool = True):
  """Writes a tiny random `family` model to `directory`; returns the torch model."""
  torch.manual_seed(seed)
  cls = transformers.AutoModelForCausalLM
  model = cls.from_config(hf_config_for(family), attn_implementation="eager").float().eval()
  randomize_(model, family, seed)
  model.save_pretrained(directory, max_shard_size="20KB" if shard else "1GB")
  if tokenizer:
    write_tokenizer(directory)
  return model


def hf_logits(model, tokens_BT, valid_BT) -> np.ndarray:
  positions = np.maximum(np.cumsum(valid_BT, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens_BT, dtype=torch.long),
                attention_mask=torch.tensor(valid_BT.astype(np.int64)),
                position_ids=torch.tensor(positions, dtype=torch.long))
  return out.logits.float().numpy()


def padded_batch(seed: int = 1):
  """3 rows of length 12 (> the window 4), left-padded by 0, 3 and 7."""
  rng = np.random.RandomState(seed)
  tokens = rng.randint(len(SPECIALS), VOCAB, size=(3, 12)).astype(np.int32)
  valid = np.ones_like(tokens, bool)
  for row, pad in enumerate((0, 3, 7)):
    valid[row, :pad] = False
    tokens[row, :pad] = 0
  return tokens, valid


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """family -> (directory, torch model); Gemma 1 is written sharded."""
  out = {}
  for family in FAMILIES:
    d = tmp_path_factory.mktemp(family)
    out[family] = (d, make_hf_checkpoint(d, family, shard=family == "gemma"))
  return out


@pytest.fixture(scope="module")
def mesh():
  return mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)


@pytest.fixture(scope="module")
def lms(checkpoints, mesh):
  """Loaded onto a 2x2x2 (data, fsdp, tensor) mesh."""
  return {f: score_jax.load(d, mesh=mesh) for f, (d, _) in checkpoints.items()}


@pytest.fixture(scope="module")
def lms1(checkpoints):
  """Loaded onto one device (cheaper to compile the sampler for)."""
  return {f: score_jax.load(d) for f, (d, _) in checkpoints.items()}


def test_gemma_checkpoint_is_sharded(checkpoints):
  d, _ = checkpoints["gemma"]
  index = json.loads((d / weights.INDEX_FILE).read_text())
  assert len(set(index["weight_map"].values())) > 1


@pytest.mark.parametrize("family", FAMILIES)
def test_config_read_from_checkpoint(lms, family):
  config = lms[family].config
  expected = {
      "llama": dict(tie_embeddings=False, norm_style="rms", rope_base=500000.0,
                    rope_scaling=mc.RopeScaling(8.0, 1.0, 4.0, 16), norm_eps=1e-5),
      "qwen2": dict(qkv_bias=True, tie_embeddings=True, rope_base=1e6),
      "gemma": dict(num_kv_heads=1, norm_style="gemma_rms", activation="gelu_tanh",
                    scale_embeddings=True),
      "gemma2": dict(attn_logit_softcap=2.0, final_logit_softcap=3.0, sliding_window=4,
                     layer_pattern=("local", "global"), query_pre_attn_scalar=16.0,
                     post_norms=True),
      "gemma3": dict(qk_norm=True, layer_pattern=("local", "local", "global"),
                     rope_base=1e6, rope_local_base=1e4, rope_scale_factor=8.0,
                     sliding_window=4, query_pre_attn_scalar=16.0),
  }[family]
  assert {k: getattr(config, k) for k in expected} == expected
  assert config.family == family and config.dtype == "float32"


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_left_padded(lms, lms1, checkpoints, family):
  _, model = checkpoints[family]
  tokens, valid = padded_batch()
  ours = np.asarray(lms[family].logits(tokens, valid))
  ref = hf_logits(model, tokens, valid)
  assert ours.dtype == np.float32 and ours.shape == ref.shape == (3, 12, VOCAB)
  assert np.abs(ours - ref)[valid].max() <= 1e-4
  # The features really matter on this input: without them the logits differ.
  changes = {"gemma2": dict(sliding_window=None, layer_pattern=()),
             "gemma3": dict(sliding_window=None, layer_pattern=())}.get(family)
  if family == "gemma2":
    for change in (changes, dict(attn_logit_softcap=None), dict(final_logit_softcap=None)):
      assert np.abs(_logits_with(lms1[family], change, tokens, valid) - ref)[valid].max() > 1e-2
  elif changes:
    assert np.abs(_logits_with(lms1[family], changes, tokens, valid) - ref)[valid].max() > 1e-2


def _logits_with(lm, changes, tokens, valid):
  """Our logits with the same params under a config changed by `changes`."""
  graphdef, _ = model_lib.abstract_params(lm.config.replace(**changes))
  logits, _ = jax.jit(model_lib.forward, static_argnums=0)(graphdef, lm.params, tokens, valid)
  return np.asarray(logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_params_are_sharded(lms, family):
  kernel = lms[family].params["layers"][0]["mlp"]["gate_proj"]["kernel"][...]
  assert not kernel.sharding.is_fully_replicated
  assert len(kernel.addressable_shards) == 8


def _hf_greedy(model, prompts, n):
  tokens, valid, _ = sampler_lib.left_pad(prompts, pad_id=0)
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                         attention_mask=torch.tensor(valid.astype(np.int64)),
                         do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         eos_token_id=None, pad_token_id=0, num_beams=1)
  return out[:, tokens.shape[1]:].numpy().tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_32_tokens_match_transformers(lms1, checkpoints, family):
  _, model = checkpoints[family]
  prompts = [[2, 10, 11, 12, 13, 14, 15], [2, 40, 41]]   # left-padded batch
  ours = lms1[family].generate_ids(prompts, 32, stop_ids=())
  ref = _hf_greedy(model, prompts, 32)
  assert [len(r) for r in ours] == [32, 32]
  assert ours == ref


def test_generate_text_stops_at_eos(lms1, checkpoints):
  """lm.generate(strings): encodes with BOS, stops at EOS, decodes without it."""
  lm = lms1["llama"]
  _, model = checkpoints["llama"]
  ids = lm.generate_ids([[2, 7, 8, 9]], 32)
  ref = _hf_greedy(model, [[2, 7, 8, 9]], 32)[0]
  if 1 in ref:                                      # HF's eos is 1 = our tokenizer's eos
    ref = ref[:ref.index(1) + 1]
  assert ids[0] == ref
  text = lm.generate([lm.tokenizer.decode([7, 8, 9])], 32)[0]
  body = [t for t in ref if t != 1]
  assert text == lm.tokenizer.decode(body, skip_special=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_in_transformers(lms, checkpoints, family, tmp_path):
  _, model = checkpoints[family]
  out = score_jax.export_hf(lms[family], tmp_path / "export")
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["architectures"] == [hf_config.EXPORT_NAMES[family][0]]
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      out, attn_implementation="eager", dtype=torch.float32).eval()
  assert type(reloaded) is type(model)
  tokens, valid = padded_batch(seed=2)
  np.testing.assert_allclose(hf_logits(reloaded, tokens, valid)[valid],
                             hf_logits(model, tokens, valid)[valid], atol=1e-5, rtol=0)
  for name, p in model.state_dict().items():
    np.testing.assert_array_equal(reloaded.state_dict()[name].numpy(), p.numpy(), err_msg=name)
  assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
  # Our own reader agrees, config included.
  again = score_jax.load(out)
  assert hf_config.same_architecture(again.config, lms[family].config) == []


def test_export_bf16_sharded_round_trip(lms, checkpoints, tmp_path):
  """bf16 export in several shards: transformers sees the bf16-rounded weights, and our
  bf16 reader (memory-mapped, ml_dtypes) gives the same values back."""
  _, model = checkpoints["qwen2"]
  out = score_jax.export_hf(lms["qwen2"], tmp_path / "bf16", dtype="bfloat16",
                            max_shard_bytes=30_000)
  index = json.loads((out / weights.INDEX_FILE).read_text())
  assert len(set(index["weight_map"].values())) > 1
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
  for name, p in model.state_dict().items():
    np.testing.assert_array_equal(reloaded.state_dict()[name].float().numpy(),
                                  p.to(torch.bfloat16).float().numpy(), err_msg=name)
  lm32 = score_jax.load(out, dtype="float32")
  emb = np.asarray(lm32.params["embedder"]["embedding"][...])
  np.testing.assert_array_equal(
      emb, model.model.embed_tokens.weight.detach().to(torch.bfloat16).float().numpy())
  lm16 = score_jax.load(out, dtype="bfloat16")
  assert lm16.params["embedder"]["embedding"][...].dtype == np.dtype("bfloat16")
  tokens, valid = padded_batch()
  diff = np.abs(np.asarray(lm16.logits(tokens, valid)) - np.asarray(lm32.logits(tokens, valid)))
  assert diff[valid].max() < 0.25        # bf16 compute, same weights


def test_safetensors_reader_matches_safe_open(checkpoints):
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  d, _ = checkpoints["llama"]
  ours = weights.SafetensorsCheckpoint(d)
  with safe_open(str(d / "model.safetensors"), framework="numpy") as f:
    assert sorted(f.keys()) == sorted(ours.names())
    for name in f.keys():
      np.testing.assert_array_equal(ours.tensor(name), f.get_tensor(name))


def test_layout_transforms_by_hand():
  """q_proj [N*H, D] -> [D, N, H]: kernel[d, n, h] == weight[n*H + h, d]; o_proj
  [D, N*H] -> [N, H, D]: kernel[n, h, d] == weight[d, n*H + h]; and back."""
  N, H, D = 3, 2, 5
  w = np.arange(N * H * D, dtype=np.float32).reshape(N * H, D)
  t = weights._heads_in("q", N, H, D)  # pylint: disable=protected-access
  k = t.to_ours(w)
  assert k.shape == (D, N, H) and k[4, 2, 1] == w[2 * H + 1, 4]
  np.testing.assert_array_equal(t.to_hf(k), w)
  wo = np.arange(D * N * H, dtype=np.float32).reshape(D, N * H)
  t = weights._heads_out("o", N, H, D)  # pylint: disable=protected-access
  k = t.to_ours(wo)
  assert k.shape == (N, H, D) and k[1, 0, 3] == wo[3, 1 * H + 0]
  np.testing.assert_array_equal(t.to_hf(k), wo)


# ----------------------------------------------------------------------------- config.json

def test_hub_llama31_config():
  """Meta-Llama-3.1-8B's config.json (Hub spelling: rope_theta + rope_scaling)."""
  cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
         "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
         "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
         "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192, "rope_type": "llama3"},
         "tie_word_embeddings": False, "vocab_size": 128256, "hidden_act": "silu",
         "max_position_embeddings": 131072, "model_type": "llama"}
  c = hf_config.config_from_hf(cfg)
  assert (c.num_layers, c.embed_dim, c.hidden_dim, c.num_heads, c.num_kv_heads,
          c.head_dim) == (32, 4096, 14336, 32, 8, 128)
  assert c.rope_scaling == mc.RopeScaling(8.0, 1.0, 4.0, 8192)
  assert c.rope_base == 500000.0 and c.norm_eps == 1e-5 and not c.tie_embeddings


def test_hub_gemma3_1b_and_4b_configs():
  g1b = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
         "head_dim": 256, "hidden_size": 1152, "intermediate_size": 6912,
         "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
         "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
         "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512,
         "sliding_window_pattern": 6, "vocab_size": 262144,
         "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None,
         "attn_logit_softcapping": None}
  c = hf_config.config_from_hf(g1b)
  assert c.layer_pattern == ("local",) * 5 + ("global",)
  assert (c.rope_base, c.rope_local_base, c.rope_scale_factor) == (1e6, 1e4, 1.0)
  assert (c.sliding_window, c.query_pre_attn_scalar, c.qk_norm) == (512, 256.0, True)
  assert c.final_logit_softcap is None and c.tie_embeddings
  # Gemma 3 4B: multimodal wrapper, text config nested, linear RoPE scaling factor 8.
  g4b = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
         "text_config": {**g1b, "model_type": "gemma3_text", "hidden_size": 2560,
                         "num_hidden_layers": 34, "sliding_window": 1024,
                         "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}}
  c = hf_config.config_from_hf(g4b)
  assert (c.embed_dim, c.num_layers, c.rope_scale_factor) == (2560, 34, 8.0)


def test_hub_gemma1_qwen25_gemma2_defaults():
  g = hf_config.config_from_hf({"architectures": ["GemmaForCausalLM"], "hidden_act": "gelu",
                                "hidden_size": 2048, "intermediate_size": 16384,
                                "num_attention_heads": 8, "num_hidden_layers": 18,
                                "num_key_value_heads": 1, "head_dim": 256,
                                "vocab_size": 256000})
  assert g.activation == "gelu_tanh" and g.scale_embeddings and g.tie_embeddings
  q = hf_config.config_from_hf({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
                                "intermediate_size": 4864, "num_attention_heads": 14,
                                "num_hidden_layers": 24, "num_key_value_heads": 2,
                                "vocab_size": 151936, "rope_theta": 1000000.0,
                                "sliding_window": 32768, "use_sliding_window": False,
                                "max_window_layers": 21, "tie_word_embeddings": True})
  assert q.layer_pattern == () and q.sliding_window is None and q.head_dim == 64
  assert q.qkv_bias and q.tie_embeddings
  # Gemma 2 without explicit softcaps gets transformers' defaults (50, 30).
  g2 = hf_config.config_from_hf({"model_type": "gemma2", "hidden_size": 64,
                                 "intermediate_size": 128, "num_attention_heads": 2,
                                 "num_hidden_layers": 4, "vocab_size": 100, "head_dim": 32})
  assert (g2.attn_logit_softcap, g2.final_logit_softcap) == (50.0, 30.0)
  assert g2.layer_pattern == ("local", "global") and g2.sliding_window == 4096


@pytest.mark.parametrize("family", FAMILIES)
def test_config_round_trip(family):
  c = mc.tiny(family)
  assert hf_config.same_architecture(hf_config.config_from_hf(hf_config.config_to_hf(c)), c) == []


def test_config_unsupported_features():
  base = {"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
          "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 10}
  with pytest.raises(ValueError, match="rope type 'yarn'"):
    hf_config.config_from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
  with pytest.raises(ValueError, match="attention_bias"):
    hf_config.config_from_hf({**base, "attention_bias": True})
  with pytest.raises(ValueError, match="cannot express"):
    hf_config.config_to_hf(mc.tiny("llama", post_norms=True))
