"""Official Gemma Orbax layout: written by hand from a transformers model's weights.

The test converts an HF Gemma model's tensors to the layout of google-deepmind/gemma
(q_einsum [N,D,H], kv_einsum [2,K,D,H] / qkv_einsum [3,N,D,H], attn_vec_einsum
[N,H,D], gating_einsum [2,F,D] or [2,D,F], linear [F,D]) on its own, checks that
conversion against the official einsum equations on random inputs, writes it with
checkpoint.write_pytree next to a SentencePiece tokenizer.model, and loads it with
score_jax.load: the logits must equal those of the HF path and of transformers.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import score_jax  # noqa: E402
from score_jax import checkpoint  # noqa: E402
from score_jax.hub import gemma_orbax  # noqa: E402
from tests.hub.test_hf_weights import (hf_config_for, hf_logits, padded_batch,  # noqa: E402
                                 randomize_)


def _gemma_qkv_model():
  """Gemma 1 with N == K (official layout: qkv_einsum)."""
  cfg = hf_config_for("gemma")
  cfg.num_key_value_heads = cfg.num_attention_heads
  return cfg


def _hf_model(cfg, family, seed=0):
  model = transformers.AutoModelForCausalLM.from_config(
      cfg, attn_implementation="eager").float().eval()
  randomize_(model, family, seed)
  return model


def to_official(model, *, transposed_gating: bool, flat_layout: bool) -> dict:
  """The HF model's weights in the official Gemma Flax layout (see module docstring)."""
  cfg = model.config
  D, N, K, H = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                cfg.head_dim)
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  modules = {"embedder": {"input_embedding": sd["model.embed_tokens.weight"]},
             "final_norm": {"scale": sd["model.norm.weight"]}}
  for i in range(cfg.num_hidden_layers):
    p = f"model.layers.{i}."
    # torch: q[n*H + h] = sum_d W[n*H + h, d] x[d]; official: q[n, h] = sum_d w[n, d, h] x[d]
    q = sd[p + "self_attn.q_proj.weight"].reshape(N, H, D).transpose(0, 2, 1)
    k = sd[p + "self_attn.k_proj.weight"].reshape(K, H, D).transpose(0, 2, 1)
    v = sd[p + "self_attn.v_proj.weight"].reshape(K, H, D).transpose(0, 2, 1)
    # torch: y[d] = sum W[d, n*H + h] a[n*H + h]; official: y[d] = sum w[n, h, d] a[n, h]
    o = sd[p + "self_attn.o_proj.weight"].reshape(D, N, H).transpose(1, 2, 0)
    gate, up = sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]   # [F, D]
    layer = {
        "pre_attention_norm": {"scale": sd[p + "input_layernorm.weight"]},
        "attn/attn_vec_einsum": {"w": o},
        "mlp/gating_einsum": {"w": np.stack([gate, up]) if transposed_gating
                              else np.stack([gate.T, up.T])},
        "mlp/linear": {"w": sd[p + "mlp.down_proj.weight"].T},               # [F, D]
    }
    if N == K:
      layer["attn/qkv_einsum"] = {"w": np.stack([q, k, v])}
    else:
      layer["attn/q_einsum"] = {"w": q}
      layer["attn/kv_einsum"] = {"w": np.stack([k, v])}
    if cfg.model_type == "gemma":
      layer["pre_ffw_norm"] = {"scale": sd[p + "post_attention_layernorm.weight"]}
    else:
      layer["post_attention_norm"] = {"scale": sd[p + "post_attention_layernorm.weight"]}
      layer["pre_ffw_norm"] = {"scale": sd[p + "pre_feedforward_layernorm.weight"]}
      layer["post_ffw_norm"] = {"scale": sd[p + "post_feedforward_layernorm.weight"]}
    if cfg.model_type == "gemma3_text":
      layer["attn/_query_norm"] = {"scale": sd[p + "self_attn.q_norm.weight"]}
      layer["attn/_key_norm"] = {"scale": sd[p + "self_attn.k_norm.weight"]}
    for name, params in layer.items():
      modules[f"layer_{i}/{name}"] = params
  if flat_layout:   # as released: {'transformer/layer_0/attn/q_einsum': {'w': ...}}
    return {f"transformer/{name}": params for name, params in modules.items()}
  nested: dict = {}
  for name, params in modules.items():
    node = nested
    for part in name.split("/"):
      node = node.setdefault(part, {})
    node.update(params)
  return {"transformer": nested}


def _check_against_official_einsums(model, tree, transposed_gating):
  """The converted layer 0 computes what torch computes, with the official equations."""
  flat = gemma_orbax.normalize_tree(tree)
  layer = model.model.layers[0]
  x = np.random.RandomState(0).randn(1, 3, model.config.hidden_size).astype(np.float32)
  xt = torch.tensor(x)
  with torch.no_grad():
    tq, tk = layer.self_attn.q_proj(xt).numpy(), layer.self_attn.k_proj(xt).numpy()
    tgate, tup = layer.mlp.gate_proj(xt).numpy(), layer.mlp.up_proj(xt).numpy()
  if "layer_0/attn/qkv_einsum/w" in flat:
    q, k, _ = np.einsum("BTD,SNDH->SBTNH", x, flat["layer_0/attn/qkv_einsum/w"])
  else:
    q = np.einsum("BTD,NDH->BTNH", x, flat["layer_0/attn/q_einsum/w"])
    k, _ = np.einsum("BSD,CKDH->CBSKH", x, flat["layer_0/attn/kv_einsum/w"])
  np.testing.assert_allclose(q.reshape(tq.shape), tq, atol=1e-5)
  np.testing.assert_allclose(k.reshape(tk.shape), tk, atol=1e-5)
  eq = "...F,NHF->...NH" if transposed_gating else "...F,NFH->...NH"
  gate = np.einsum(eq, x, flat["layer_0/mlp/gating_einsum"])
  np.testing.assert_allclose(gate[..., 0, :], tgate, atol=1e-5)
  np.testing.assert_allclose(gate[..., 1, :], tup, atol=1e-5)
  a = np.random.RandomState(1).randn(1, 3, model.config.num_attention_heads,
                                     model.config.head_dim).astype(np.float32)
  with torch.no_grad():
    to = layer.self_attn.o_proj(torch.tensor(a.reshape(1, 3, -1))).numpy()
  np.testing.assert_allclose(np.einsum("BTNH,NHD->BTD", a, flat["layer_0/attn/attn_vec_einsum/w"]),
                             to, atol=1e-5)


def _train_sentencepiece(directory):
  """A 100-piece tokenizer.model with Gemma's settings (ids, no dummy prefix, no
  normalisation); fits the tiny models' 128-row embedding."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  corpus = directory / "corpus.txt"
  corpus.write_text("\n".join(f"the answer to problem {i} is {i * 7}" for i in range(200)))
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(directory / "tokenizer"), vocab_size=100,
      model_type="bpe", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
      bos_piece="<bos>", unk_piece="<unk>", byte_fallback=False, add_dummy_prefix=False,
      remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2)
  corpus.unlink()
  (directory / "tokenizer.vocab").unlink()
  return directory / "tokenizer.model"


CASES = {
    # name: (family, config, transposed gating, flat layout, overrides)
    "gemma_qkv_nested": ("gemma", _gemma_qkv_model, False, False, None),
    "gemma3_kv_flat": ("gemma3", lambda: hf_config_for("gemma3"), True, True,
                       dict(sliding_window=4, layer_pattern=("local", "local", "global"),
                            query_pre_attn_scalar=16.0)),
    "gemma2_kv_nested": ("gemma2", lambda: hf_config_for("gemma2"), False, False,
                         dict(sliding_window=4, attn_logit_softcap=2.0,
                              final_logit_softcap=3.0, query_pre_attn_scalar=16.0)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_orbax_checkpoint_matches_hf_path(tmp_path, case):
  family, make_cfg, transposed, flat_layout, overrides = CASES[case]
  model = _hf_model(make_cfg(), family)
  model.save_pretrained(tmp_path / "hf")
  tree = to_official(model, transposed_gating=transposed, flat_layout=flat_layout)
  _check_against_official_einsums(model, tree, transposed)
  kaggle = tmp_path / "kaggle"          # <dir>/tokenizer.model + <dir>/<ckpt>/
  kaggle.mkdir()
  _train_sentencepiece(kaggle)
  checkpoint.write_pytree(kaggle / "ckpt", tree)

  lm = score_jax.load(kaggle / "ckpt", overrides=overrides)
  ref = score_jax.load(tmp_path / "hf")
  assert lm.config.family == family
  assert lm.config == ref.config, (lm.config, ref.config)
  tokens, valid = padded_batch()
  ours = np.asarray(lm.logits(tokens, valid))
  np.testing.assert_allclose(ours[valid], np.asarray(ref.logits(tokens, valid))[valid],
                             atol=1e-6, rtol=0)
  assert np.abs(ours - hf_logits(model, tokens, valid))[valid].max() <= 1e-4
  assert lm.tokenizer.path == str(kaggle / "tokenizer.model")
  assert (lm.tokenizer.eos_id, lm.tokenizer.bos_id) == (1, 2)
  assert lm.chat.name == "gemma"


def test_export_of_orbax_checkpoint_loads_in_transformers(tmp_path):
  model = _hf_model(_gemma_qkv_model(), "gemma")
  kaggle = tmp_path / "kaggle"
  kaggle.mkdir()
  _train_sentencepiece(kaggle)
  checkpoint.write_pytree(kaggle / "ckpt",
                          to_official(model, transposed_gating=False, flat_layout=True))
  lm = score_jax.load(kaggle / "ckpt", family="gemma")
  out = score_jax.export_hf(lm, tmp_path / "hf_out")
  assert (out / "tokenizer.model").is_file() and (out / "tokenizer_config.json").is_file()
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      out, attn_implementation="eager").eval()
  tokens, valid = padded_batch()
  np.testing.assert_allclose(hf_logits(reloaded, tokens, valid)[valid],
                             hf_logits(model, tokens, valid)[valid], atol=1e-5, rtol=0)
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  for text in ("the answer to problem 12 is 84", "<start_of_turn>user\nhi<end_of_turn>"):
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == lm.tokenizer.encode(text)
    assert hf_tok(text)["input_ids"] == lm.tokenizer.encode(text, add_bos=True)
  assert hf_tok.eos_token_id == lm.tokenizer.eos_id


def _fake_tree(L, V, D, N, K, H, F, *, qk_norm, post_norms, transposed):
  """Shape-only official tree (zero-stride views: no memory) for config inference."""
  z = lambda *shape: np.broadcast_to(np.float32(0), shape)  # noqa: E731
  flat = {"embedder/input_embedding": z(V, D), "final_norm/scale": z(D)}
  for i in range(L):
    p = f"layer_{i}/"
    flat[p + "pre_attention_norm/scale"] = z(D)
    flat[p + "pre_ffw_norm/scale"] = z(D)
    if N == K:
      flat[p + "attn/qkv_einsum/w"] = z(3, N, D, H)
    else:
      flat[p + "attn/q_einsum/w"] = z(N, D, H)
      flat[p + "attn/kv_einsum/w"] = z(2, K, D, H)
    flat[p + "attn/attn_vec_einsum/w"] = z(N, H, D)
    flat[p + "mlp/gating_einsum"] = z(2, F, D) if transposed else z(2, D, F)
    flat[p + "mlp/linear"] = z(F, D)
    if qk_norm:
      flat[p + "attn/_query_norm/scale"] = z(H)
      flat[p + "attn/_key_norm/scale"] = z(H)
    if post_norms:
      flat[p + "post_attention_norm/scale"] = z(D)
      flat[p + "post_ffw_norm/scale"] = z(D)
  return flat


def test_infer_config_of_released_variants():
  """Numbers from gemma/transformer.py's TransformerConfig.gemma*_* constructors."""
  g2b = _fake_tree(18, 256128, 2048, 8, 1, 256, 16384, qk_norm=False, post_norms=False,
                   transposed=False)
  c, transposed = gemma_orbax.infer_config(g2b)
  assert (c.family, c.num_layers, c.vocab_size, c.embed_dim, c.hidden_dim) == (
      "gemma", 18, 256128, 2048, 16384)
  assert (c.num_heads, c.num_kv_heads, c.head_dim, transposed) == (8, 1, 256, False)
  assert c.layer_pattern == () and c.query_pre_attn_scalar is None

  g27 = _fake_tree(46, 64, 4608, 32, 16, 128, 36864, qk_norm=False, post_norms=True,
                   transposed=True)
  c, transposed = gemma_orbax.infer_config(g27)
  assert c.family == "gemma2" and transposed
  assert c.query_pre_attn_scalar == 144.0           # 4608 // 32, not head_dim 128
  assert (c.attn_logit_softcap, c.final_logit_softcap, c.sliding_window) == (50.0, 30.0, 4096)
  assert c.layer_kind(0) == "local" and c.layer_kind(1) == "global"

  g1b = _fake_tree(26, 64, 1152, 4, 1, 256, 6912, qk_norm=True, post_norms=True,
                   transposed=True)
  c, _ = gemma_orbax.infer_config(g1b)
  assert (c.family, c.sliding_window, c.rope_scale_factor, c.query_pre_attn_scalar) == (
      "gemma3", 512, 1.0, 256.0)
  assert [c.layer_kind(i) for i in range(7)] == ["local"] * 5 + ["global", "local"]
  assert (c.rope_base, c.rope_local_base) == (1e6, 1e4)

  g4b = _fake_tree(34, 64, 2560, 8, 4, 256, 10240, qk_norm=True, post_norms=True,
                   transposed=True)
  c, _ = gemma_orbax.infer_config(g4b)
  assert (c.sliding_window, c.rope_scale_factor) == (1024, 8.0)


def test_orbax_errors(tmp_path):
  small = _fake_tree(2, 16, 8, 2, 1, 4, 12, qk_norm=True, post_norms=True, transposed=True)
  with pytest.raises(ValueError, match="gemma3-1b.*26 layers of width 1152"):
    gemma_orbax.infer_config(small, family="gemma3-1b")
  with pytest.raises(ValueError, match="unknown Gemma family"):
    gemma_orbax.infer_config(small, family="gemma4")
  broken = dict(small)
  del broken["layer_1/mlp/linear"]
  config, transposed = gemma_orbax.infer_config(broken)
  with pytest.raises(ValueError, match="layer_1/mlp/linear is missing"):
    gemma_orbax.orbax_sources(broken, config, transposed, "ckpt")
  # Declaring the wrong family leaves weights unused: a clear error, not a silent drop.
  model = _hf_model(hf_config_for("gemma3"), "gemma3")
  checkpoint.write_pytree(tmp_path / "ckpt", to_official(model, transposed_gating=True,
                                                         flat_layout=False))
  with pytest.raises(ValueError, match="lacks"):
    score_jax.load(tmp_path / "ckpt", family="gemma")


def test_find_tokenizer_next_to_or_in_checkpoint(tmp_path):
  (tmp_path / "ckpt").mkdir()
  assert gemma_orbax.find_tokenizer(tmp_path / "ckpt") is None
  (tmp_path / "tokenizer.model").write_bytes(b"x")
  assert gemma_orbax.find_tokenizer(tmp_path / "ckpt") == tmp_path / "tokenizer.model"
  (tmp_path / "ckpt" / "tokenizer.model").write_bytes(b"x")
  assert gemma_orbax.find_tokenizer(tmp_path / "ckpt") == tmp_path / "ckpt" / "tokenizer.model"
