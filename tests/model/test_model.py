"""Tests of score_jax.model.transformer / score_jax.model.layers: cached decode == full forward, exact
masking (causal, padding, sliding window through depth), padding invariance, hand
checks of the numeric features (RMSNorm, RoPE, softcaps, sqrt(D) scaling, remat), and
logits parity with `transformers` for every family through the documented HF mapping."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from score_jax.model import layers
from score_jax.model import transformer as M
from tests.model_helpers import randomize
from score_jax.model.config import RopeScaling, tiny

FAMILIES = ("gemma", "gemma2", "gemma3", "llama", "qwen2")
_forward = jax.jit(M.forward, static_argnums=0)




@functools.lru_cache(maxsize=None)
def _make(family, overrides):
  config = tiny(family, **dict(overrides))
  # Eager construction: each random draw compiles once per size for the whole session.
  graphdef, params = nnx.split(M.Transformer(config, rngs=nnx.Rngs(0)))
  return config, graphdef, randomize(params)


def make(family, **overrides):
  return _make(family, tuple(sorted(overrides.items())))


def _tokens(config, B, T, seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, config.vocab_size)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decode_matches_full_forward(family):
  config, graphdef, params = make(family)
  B, T = 2, 11
  tokens = _tokens(config, B, T)
  valid = np.ones((B, T), bool)
  valid[0, :2] = False      # left padding
  valid[0, 6] = False       # padding inside the sequence (e.g. after a stop token)
  full, _ = _forward(graphdef, params, tokens, valid)

  cache = M.init_cache(config, B, 16)
  pieces = []
  for lo, hi in [(0, 3), (3, 6), (6, 7), (7, 8), (8, 11)]:
    logits, cache = _forward(graphdef, params, tokens[:, lo:hi], valid[:, lo:hi], cache)
    pieces.append(logits)
  cached = np.concatenate(pieces, axis=1)
  # fp32 round-off relative to the logit scale (random params give |logits| ~ 30).
  scale = float(np.abs(full).max())
  np.testing.assert_allclose(cached[valid], np.asarray(full)[valid], rtol=1e-5,
                             atol=1e-5 * scale)
  assert int(cache.index) == T
  np.testing.assert_array_equal(cache.pos_B, valid.sum(1))
  np.testing.assert_array_equal(cache.valid_BS[:, :T], valid)
  assert not cache.valid_BS[:, T:].any()
  assert np.isfinite(np.asarray(full)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_future_and_padding_tokens_never_change_logits(family):
  config, graphdef, params = make(family)
  B, T, t = 2, 11, 5
  tokens = _tokens(config, B, T)
  valid = np.ones((B, T), bool)
  valid[:, 2] = False
  base, _ = _forward(graphdef, params, tokens, valid)
  later = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 7) % config.vocab_size)
  got, _ = _forward(graphdef, params, later, valid)
  np.testing.assert_array_equal(got[:, :t + 1], base[:, :t + 1])
  assert not np.allclose(got[:, t + 1:], base[:, t + 1:])     # the edit did something
  padded = tokens.at[:, 2].set((tokens[:, 2] + 5) % config.vocab_size)
  got, _ = _forward(graphdef, params, padded, valid)
  np.testing.assert_array_equal(np.asarray(got)[valid], np.asarray(base)[valid])


def _changes_logits_at(graphdef, params, config, tokens, valid, s, t):
  base, _ = _forward(graphdef, params, tokens, valid)
  edited = tokens.at[:, s].set((tokens[:, s] + 11) % config.vocab_size)
  got, _ = _forward(graphdef, params, edited, valid)
  return not np.array_equal(np.asarray(got[:, t]), np.asarray(base[:, t]))


def test_sliding_window_one_layer():
  """window 4: query t sees keys with pos[t] - pos[s] in {0, 1, 2, 3}."""
  config, graphdef, params = make("gemma2", num_layers=1, layer_pattern=("local",))
  tokens = _tokens(config, 1, 10)
  valid = np.ones((1, 10), bool)
  assert not _changes_logits_at(graphdef, params, config, tokens, valid, s=5, t=9)
  assert _changes_logits_at(graphdef, params, config, tokens, valid, s=6, t=9)
  # The window counts positions, not slots: with slots 4..7 invalid, slot 9 has
  # position 5, slot 3 position 3 (inside the window) and slot 1 position 1 (outside).
  valid[0, 4:8] = False
  assert _changes_logits_at(graphdef, params, config, tokens, valid, s=3, t=9)
  assert not _changes_logits_at(graphdef, params, config, tokens, valid, s=1, t=9)


def test_sliding_window_receptive_field_through_depth():
  """Two local layers of window 4: receptive field 2 * (4 - 1) = 6 positions back."""
  config, graphdef, params = make("gemma2", num_layers=2, layer_pattern=("local",))
  tokens = _tokens(config, 1, 12)
  valid = np.ones((1, 12), bool)
  assert not _changes_logits_at(graphdef, params, config, tokens, valid, s=4, t=11)
  assert _changes_logits_at(graphdef, params, config, tokens, valid, s=5, t=11)
  # gemma3's (local, local, global) stack sees everything through its global layer.
  config, graphdef, params = make("gemma3")
  tokens = _tokens(config, 2, 11)
  valid = np.ones((2, 11), bool)
  assert _changes_logits_at(graphdef, params, config, tokens, valid, s=0, t=10)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_and_inner_padding_equal_unpadded(family):
  config, graphdef, params = make(family)
  row = np.asarray(_tokens(config, 1, 6, seed=3))[0]
  junk = [5, 9, 1, 17, 4]
  # Row 0: the row alone (then invalid junk, which causality hides anyway).
  # Row 1: 5 left pads, then the row.
  batch = np.array([list(row) + junk, junk + list(row)], np.int32)
  valid = np.array([[True] * 6 + [False] * 5, [False] * 5 + [True] * 6])
  got, _ = _forward(graphdef, params, batch, valid)
  alone = np.asarray(got[0, :6])
  atol = 1e-5 * float(np.abs(alone).max())
  np.testing.assert_allclose(got[1, 5:], alone, rtol=1e-5, atol=atol)
  # Row 0: two invalid junk tokens inside the row, and junk at the end.
  batch = np.array([list(row[:3]) + junk[:2] + list(row[3:]) + junk[:3]] * 2, np.int32)
  valid = np.array([[True] * 3 + [False] * 2 + [True] * 3 + [False] * 3] * 2)
  got, _ = _forward(graphdef, params, batch, valid)
  np.testing.assert_allclose(got[0, [0, 1, 2, 5, 6, 7]], alone, rtol=1e-5, atol=atol)


def test_all_invalid_row_is_finite():
  config, graphdef, params = make("gemma2")
  logits, _ = _forward(graphdef, params, _tokens(config, 2, 11), np.zeros((2, 11), bool))
  assert np.isfinite(np.asarray(logits)).all()


def test_bfloat16_compute_is_close_to_float32():
  config, graphdef, params = make("gemma3")
  graphdef_bf16, _ = M.abstract_params(config.replace(dtype="bfloat16"))
  tokens = _tokens(config, 2, 11)
  valid = np.ones((2, 11), bool)
  want, _ = _forward(graphdef, params, tokens, valid)
  got, cache = _forward(graphdef_bf16, params, tokens, valid,
                        M.init_cache(config.replace(dtype="bfloat16"), 2, 11))
  assert got.dtype == jnp.float32 and cache.k_BSKH[0].dtype == jnp.bfloat16
  scale = float(np.abs(want).max())
  assert float(np.abs(got - want).max()) < 0.1 * scale
  assert float(np.abs(got - want).max()) > 0                  # really computed in bf16


def test_rmsnorm_by_hand():
  x = jnp.array([[3.0, 4.0]])                 # mean square 12.5, rms 3.5355339
  config = tiny("llama", norm_eps=0.0)
  norm = layers.RMSNorm(2, config)
  norm.scale[...] = jnp.array([2.0, 0.5])
  np.testing.assert_allclose(norm(x), [[3 / 3.5355339 * 2, 4 / 3.5355339 * 0.5]], rtol=1e-6)
  gnorm = layers.RMSNorm(2, tiny("gemma", norm_eps=0.0))
  gnorm.scale[...] = jnp.array([2.0, 0.5])    # applied as (1 + w)
  np.testing.assert_allclose(gnorm(x), [[3 / 3.5355339 * 3, 4 / 3.5355339 * 1.5]], rtol=1e-6)


def test_rope_by_hand():
  np.testing.assert_allclose(layers.rope_inv_freq(4, 10_000.0), [1.0, 0.01], rtol=1e-6)
  np.testing.assert_allclose(layers.rope_inv_freq(4, 10_000.0, 8.0), [0.125, 0.00125],
                             rtol=1e-6)
  # Llama 3, factor 8, low 1, high 4. Wavelengths: 2*pi = 6.28 (freq 1), 628.3 (freq .01).
  # original 64: 6.28 < 16 keeps 1; 628.3 > 64 gives 0.01 / 8.
  got = layers.rope_inv_freq(4, 10_000.0, scaling=RopeScaling(8.0, 1.0, 4.0, 64))
  np.testing.assert_allclose(got, [1.0, 0.00125], rtol=1e-6)
  # original 1000: 250 <= 628.3 <= 1000 is the smooth band:
  # s = (1000 / 628.3185 - 1) / 3 = 0.1971831; (1 - s) * 0.01 / 8 + s * 0.01 = 0.00297535
  got = layers.rope_inv_freq(4, 10_000.0, scaling=RopeScaling(8.0, 1.0, 4.0, 1000))
  np.testing.assert_allclose(got, [1.0, 0.00297535], rtol=1e-5)
  # rotate_half: the pairs are (x[i], x[i + H/2]); position 2, frequencies [1, 0.01].
  x = jnp.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
  out = layers.apply_rope(x, jnp.array([[2]]), np.array([1.0, 0.01], np.float32))
  c0, s0, c1, s1 = math.cos(2), math.sin(2), math.cos(0.02), math.sin(0.02)
  want = [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1]
  np.testing.assert_allclose(out.reshape(4), want, rtol=1e-5)
  # Gemma 3: local layers use rope_local_base unscaled; global ones rope_base / 8.
  config = tiny("gemma3")
  np.testing.assert_allclose(layers.layer_inv_freq(config, 0),
                             layers.rope_inv_freq(8, 10_000.0), rtol=1e-7)
  np.testing.assert_allclose(layers.layer_inv_freq(config, 2),
                             layers.rope_inv_freq(8, 1_000_000.0) / 8, rtol=1e-7)


def test_attention_softcap_and_scale_by_hand():
  # One query, two keys; scores q.k * scale = [4, 0] -> softcap 2: [2 tanh 2, 0] = [1.928055, 0]
  q = jnp.array([1.0, 0.0]).reshape(1, 1, 1, 2)
  k = jnp.array([[8.0, 0.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)
  v = jnp.array([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
  mask = jnp.ones((1, 1, 2), bool)
  p = 1 / (1 + math.exp(-2 * math.tanh(2)))                 # 0.872939
  out = layers.dot_product_attention(q, k, v, mask, scale=0.5, logit_softcap=2.0)
  np.testing.assert_allclose(out.reshape(2), [p, 1 - p], rtol=1e-6)
  out = layers.dot_product_attention(q, k, v, mask, scale=0.5)
  p = 1 / (1 + math.exp(-4))
  np.testing.assert_allclose(out.reshape(2), [p, 1 - p], rtol=1e-6)
  # A masked key gets exactly zero weight.
  out = layers.dot_product_attention(q, k, v, jnp.array([[[False, True]]]), scale=0.5)
  np.testing.assert_array_equal(out.reshape(2), [0.0, 1.0])
  # query_pre_attn_scalar sets the scale.
  assert layers.Attention(tiny("gemma2"), 0, rngs=nnx.Rngs(0)).scale == 8.0 ** -0.5
  assert layers.Attention(tiny("llama"), 0, rngs=nnx.Rngs(0)).scale == 8 ** -0.5


def test_final_logit_softcap_by_hand():
  config, graphdef, params = make("gemma2")
  graphdef_nocap, _ = M.abstract_params(config.replace(final_logit_softcap=None))
  tokens = _tokens(config, 2, 11)
  valid = np.ones((2, 11), bool)
  capped, _ = _forward(graphdef, params, tokens, valid)
  raw, _ = _forward(graphdef_nocap, params, tokens, valid)
  assert np.abs(raw).max() > 30.0 / 2                       # the cap matters here
  np.testing.assert_allclose(capped, np.tanh(raw / 30.0) * 30.0, rtol=1e-5, atol=1e-5)


def test_embedding_sqrt_d_scaling():
  """scale_embeddings == an embedding table multiplied by sqrt(D) (untied head)."""
  config, graphdef, params = make("gemma", tie_embeddings=False)
  graphdef_plain, _ = M.abstract_params(config.replace(scale_embeddings=False))
  scaled = jax.tree_util.tree_map_with_path(
      lambda path, x: x * math.sqrt(32) if "embedding" in jax.tree_util.keystr(path) else x,
      params)
  tokens = _tokens(config, 2, 11)
  valid = np.ones((2, 11), bool)
  want, _ = _forward(graphdef, params, tokens, valid)
  got, _ = _forward(graphdef_plain, scaled, tokens, valid)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_same_gradients(remat):
  config, graphdef, params = make("gemma2")
  graphdef_remat, _ = M.abstract_params(config.replace(remat=remat))
  tokens = _tokens(config, 2, 6)
  valid = np.ones((2, 6), bool)

  def loss(p, g):
    logits, _ = M.forward(g, p, tokens, valid)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()

  want = jax.jit(jax.grad(loss), static_argnums=1)(params, graphdef)
  got = jax.jit(jax.grad(loss), static_argnums=1)(params, graphdef_remat)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(want)) > 0


def test_param_tree_layout():
  _, params = M.abstract_params(tiny("qwen2", tie_embeddings=False))
  layer = params["layers"][0]
  assert params["embedder"]["embedding"].shape == (128, 32)
  assert layer["attn"]["q_proj"]["kernel"].shape == (32, 4, 8)
  assert layer["attn"]["q_proj"]["bias"].shape == (4, 8)
  assert layer["attn"]["k_proj"]["kernel"].shape == (32, 2, 8)
  assert layer["attn"]["v_proj"]["bias"].shape == (2, 8)
  assert layer["attn"]["o_proj"]["kernel"].shape == (4, 8, 32)
  assert layer["mlp"]["gate_proj"]["kernel"].shape == (32, 64)
  assert layer["mlp"]["down_proj"]["kernel"].shape == (64, 32)
  assert layer["pre_attn_norm"]["scale"].shape == (32,)
  assert params["final_norm"]["scale"].shape == (32,)
  assert params["lm_head"]["kernel"].shape == (32, 128)
  _, gemma3 = M.abstract_params(tiny("gemma3"))
  assert gemma3["layers"][2]["attn"]["q_norm"]["scale"].shape == (8,)
  assert gemma3["layers"][2]["post_ffw_norm"]["scale"].shape == (32,)
  assert "lm_head" not in gemma3


# --- Parity with the reference PyTorch implementation (transformers) ----------------------

def _hf_model(family):
  """A tiny random transformers model matching tiny(family), with O(1) norm weights and
  biases and sharpened q/k so that RoPE and masks visibly matter."""
  torch = pytest.importorskip("torch")
  tf = pytest.importorskip("transformers")
  torch.manual_seed(0)
  common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, attn_implementation="eager")
  gemma = dict(hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6)
  if family == "llama":
    hf = tf.LlamaForCausalLM(tf.LlamaConfig(
        num_hidden_layers=2, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=64),
        **common))
  elif family == "qwen2":
    common.pop("head_dim")
    hf = tf.Qwen2ForCausalLM(tf.Qwen2Config(num_hidden_layers=2, rms_norm_eps=1e-6,
                                            rope_theta=1e6, tie_word_embeddings=True, **common))
  elif family == "gemma":
    common["num_key_value_heads"] = 1
    hf = tf.GemmaForCausalLM(tf.GemmaConfig(num_hidden_layers=2, **gemma, **common))
  elif family == "gemma2":
    hf = tf.Gemma2ForCausalLM(tf.Gemma2Config(
        num_hidden_layers=2, query_pre_attn_scalar=8, sliding_window=4,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        layer_types=["sliding_attention", "full_attention"], **gemma, **common))
  else:
    hf = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
        num_hidden_layers=3, query_pre_attn_scalar=8, sliding_window=4, rope_theta=1e6,
        rope_local_base_freq=10000.0, rope_scaling=dict(rope_type="linear", factor=8.0),
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        **gemma, **common))
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if p.ndim == 1:
        p.add_(torch.randn_like(p) * 0.5)
      if "q_proj.weight" in name or "k_proj.weight" in name:
        p.mul_(30)
  return hf.eval()


def _params_from_hf(config, state_dict):
  """HF names -> our param tree (the mapping documented in score_jax/model.py)."""
  N, K, H, D = config.num_heads, config.num_kv_heads, config.head_dim, config.embed_dim
  get = lambda k: state_dict[k].float().numpy()
  flat = {("embedder", "embedding"): get("model.embed_tokens.weight"),
          ("final_norm", "scale"): get("model.norm.weight")}
  if not config.tie_embeddings:
    flat[("lm_head", "kernel")] = get("lm_head.weight").T
  for i in range(config.num_layers):
    hf, ours = f"model.layers.{i}.", ("layers", i)
    for n, heads in (("q", N), ("k", K), ("v", K)):
      flat[ours + ("attn", f"{n}_proj", "kernel")] = (
          get(hf + f"self_attn.{n}_proj.weight").T.reshape(D, heads, H))
      if config.qkv_bias:
        flat[ours + ("attn", f"{n}_proj", "bias")] = (
            get(hf + f"self_attn.{n}_proj.bias").reshape(heads, H))
    flat[ours + ("attn", "o_proj", "kernel")] = (
        get(hf + "self_attn.o_proj.weight").T.reshape(N, H, D))
    if config.qk_norm:
      flat[ours + ("attn", "q_norm", "scale")] = get(hf + "self_attn.q_norm.weight")
      flat[ours + ("attn", "k_norm", "scale")] = get(hf + "self_attn.k_norm.weight")
    flat[ours + ("pre_attn_norm", "scale")] = get(hf + "input_layernorm.weight")
    if config.post_norms:
      flat[ours + ("post_attn_norm", "scale")] = get(hf + "post_attention_layernorm.weight")
      flat[ours + ("pre_ffw_norm", "scale")] = get(hf + "pre_feedforward_layernorm.weight")
      flat[ours + ("post_ffw_norm", "scale")] = get(hf + "post_feedforward_layernorm.weight")
    else:
      flat[ours + ("pre_ffw_norm", "scale")] = get(hf + "post_attention_layernorm.weight")
    for n in ("gate_proj", "up_proj", "down_proj"):
      flat[ours + ("mlp", n, "kernel")] = get(hf + f"mlp.{n}.weight").T

  def fill(path, leaf):
    key = tuple(getattr(p, "key", getattr(p, "name", None)) for p in path)[:-1]  # drop .value
    value = flat.pop(key)
    assert value.shape == leaf.shape, (key, value.shape, leaf.shape)
    return jnp.asarray(value)

  _, abstract = M.abstract_params(config)
  params = jax.tree_util.tree_map_with_path(fill, abstract)
  assert not flat, f"unused HF weights: {sorted(flat)}"
  return params


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family):
  torch = pytest.importorskip("torch")
  config = tiny(family)
  hf = _hf_model(family)
  params = _params_from_hf(config, hf.state_dict())
  graphdef, _ = M.abstract_params(config)
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 11))
  with torch.no_grad():
    want = hf(torch.as_tensor(tokens)).logits.float().numpy()
  got, _ = _forward(graphdef, params, jnp.asarray(tokens), np.ones((2, 11), bool))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
