"""Hugging Face `config.json` <-> `ModelConfig`, for the five families we run.

`config_from_hf` reads the fields of a `transformers` config (LlamaForCausalLM,
Qwen2ForCausalLM, GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM and the
text part of Gemma3ForConditionalGeneration) into a `ModelConfig`; `config_to_hf`
writes one back. Both RoPE spellings are read: the Hub's (`rope_theta`,
`rope_scaling`, Gemma 3's `rope_local_base_freq` / `sliding_window_pattern`) and
transformers 5's `rope_parameters` (flat, or keyed by layer type). We write the
Hub's spelling, which transformers 4.4x-5.x all read.

Semantics that matter for parity (as in transformers' modeling code):
* A key missing from config.json takes that transformers config class's default
  (e.g. Gemma 2's softcaps 50 / 30, `tie_word_embeddings` False for Llama / Qwen2).
* Local ("sliding_attention") layers come from `layer_types` when present, else
  from the family rule: Gemma 2 alternates local, global; Gemma 3 has every
  `sliding_window_pattern`-th layer global; Qwen2 has local layers from
  `max_window_layers` on, only when `use_sliding_window` is true.
* Gemma 3's global layers use `rope_theta` with the linear `rope_scaling` factor,
  its local layers `rope_local_base_freq` unscaled. Llama 3's `rope_type: llama3`
  becomes `RopeScaling`.
* Gemma 1's legacy `hidden_act: "gelu"` means the tanh approximation (transformers
  rewrites it so); Gemma 2/3 read `hidden_activation`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from score_jax.model.config import ModelConfig, RopeScaling

# architectures[0] -> family
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # text weights only
}
# model_type -> family (used when `architectures` is absent)
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "gemma": "gemma", "gemma2": "gemma2",
               "gemma3_text": "gemma3", "gemma3": "gemma3"}
# family -> (architecture, model_type) written by `config_to_hf`
EXPORT_NAMES = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2"),
                "gemma": ("GemmaForCausalLM", "gemma"), "gemma2": ("Gemma2ForCausalLM", "gemma2"),
                "gemma3": ("Gemma3ForCausalLM", "gemma3_text")}
FAMILIES = tuple(EXPORT_NAMES)

# Defaults of the transformers config classes for keys a config.json may omit.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10_000.0,
                  hidden_act="silu"),
    "qwen2": dict(rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10_000.0,
                  hidden_act="silu", use_sliding_window=False, max_window_layers=28),
    "gemma": dict(rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=10_000.0,
                  hidden_act="gelu_pytorch_tanh"),
    "gemma2": dict(rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=10_000.0,
                   hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256,
                   sliding_window=4096, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0),
    "gemma3": dict(rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=1_000_000.0,
                   rope_local_base_freq=10_000.0, hidden_activation="gelu_pytorch_tanh",
                   query_pre_attn_scalar=256, sliding_window=4096, sliding_window_pattern=6,
                   final_logit_softcapping=None, attn_logit_softcapping=None),
}
_TANH_GELUS = ("gelu_pytorch_tanh", "gelu_new", "gelu_tanh", "gelu_fast")
_LAYER_KIND = {"full_attention": "global", "sliding_attention": "local"}


def supported_architectures() -> str:
  """The supported `architectures` names, comma-separated (for error messages)."""
  return ", ".join(ARCHITECTURES)


def family_of(hf: Mapping[str, Any], source: str) -> str:
  """The family of an HF config (from `architectures`, else `model_type`)."""
  archs = hf.get("architectures") or []
  for arch in archs:
    if arch in ARCHITECTURES:
      return ARCHITECTURES[arch]
  if archs:
    raise ValueError(f"{source}: unsupported architecture {archs[0]!r}; supported: "
                     f"{supported_architectures()}")
  model_type = hf.get("model_type")
  if model_type in MODEL_TYPES:
    return MODEL_TYPES[model_type]
  raise ValueError(f"{source}: cannot tell the architecture (architectures={archs}, "
                   f"model_type={model_type!r}); supported: {supported_architectures()}")


def text_config(hf: Mapping[str, Any]) -> dict[str, Any]:
  """The language-model part of a config (Gemma3ForConditionalGeneration nests it)."""
  if "text_config" in hf and hf.get("model_type") == "gemma3":
    return dict(hf["text_config"])
  return dict(hf)


def _get(hf: Mapping[str, Any], family: str, key: str) -> Any:
  if key in hf:
    return hf[key]
  return _DEFAULTS[family].get(key)


def _require(hf: Mapping[str, Any], key: str, source: str) -> Any:
  if hf.get(key) is None:
    raise ValueError(f"{source}: required field {key!r} is missing")
  return hf[key]


def _rope_params(hf: Mapping[str, Any], family: str) -> tuple[dict, dict | None]:
  """(global layers' rope dict, local layers' rope dict or None), each with rope_type
  and rope_theta, from either spelling."""
  params = hf.get("rope_parameters")
  if params:
    if "full_attention" in params or "sliding_attention" in params:
      glob = dict(params.get("full_attention") or {})
      local = dict(params["sliding_attention"]) if params.get("sliding_attention") else None
    else:
      glob, local = dict(params), None
  else:
    glob = dict(hf.get("rope_scaling") or {})
    local = None
  if family == "gemma3" and local is None:
    local = {"rope_type": "default", "rope_theta": _get(hf, family, "rope_local_base_freq")}
  for d in (glob, local):
    if d is not None:
      d.setdefault("rope_type", d.get("type", "default"))
  glob.setdefault("rope_theta", _get(hf, family, "rope_theta"))
  if local is not None:
    local.setdefault("rope_theta", glob["rope_theta"])
  return glob, local


def _layer_kinds(hf: Mapping[str, Any], family: str, num_layers: int,
                 source: str) -> list[str]:
  """"global" / "local" per layer (see the module docstring)."""
  types = hf.get("layer_types")
  if family == "qwen2" and not _get(hf, family, "use_sliding_window"):
    return ["global"] * num_layers          # transformers drops the window then
  if types:
    unknown = sorted(set(types) - set(_LAYER_KIND))
    if unknown:
      raise ValueError(f"{source}: layer_types has unsupported entries {unknown}; "
                       f"supported: {sorted(_LAYER_KIND)}")
    if len(types) != num_layers:
      raise ValueError(f"{source}: layer_types has {len(types)} entries but num_hidden_layers="
                       f"{num_layers}")
    return [_LAYER_KIND[t] for t in types]
  if family == "gemma2":
    return ["local" if (i + 1) % 2 else "global" for i in range(num_layers)]
  if family == "gemma3":
    pattern = int(_get(hf, family, "sliding_window_pattern"))
    return ["local" if (i + 1) % pattern else "global" for i in range(num_layers)]
  if family == "qwen2":
    start = int(_get(hf, family, "max_window_layers"))
    return ["local" if i >= start else "global" for i in range(num_layers)]
  return ["global"] * num_layers


def _compress(kinds: list[str]) -> tuple[str, ...]:
  """Shortest period of `kinds` (ModelConfig cycles layer_pattern); () if all global."""
  if all(k == "global" for k in kinds):
    return ()
  n = len(kinds)
  for p in range(1, n + 1):
    if all(kinds[i] == kinds[i % p] for i in range(n)):
      return tuple(kinds[:p])
  return tuple(kinds)


def config_from_hf(hf: Mapping[str, Any], *, source: str = "config.json",
                   dtype: str = "float32", param_dtype: str | None = None) -> ModelConfig:
  """ModelConfig of an HF config dict.

  Args:
    hf: the parsed config.json.
    source: where it came from, for error messages.
    dtype: compute dtype of the model.
    param_dtype: storage dtype of the params (default: `dtype`).
  """
  family = family_of(hf, source)
  hf = text_config(hf)
  problems = []
  num_layers = int(_require(hf, "num_hidden_layers", source))
  embed_dim = int(_require(hf, "hidden_size", source))
  num_heads = int(_require(hf, "num_attention_heads", source))
  num_kv_heads = int(hf.get("num_key_value_heads") or num_heads)
  head_dim = int(hf.get("head_dim") or embed_dim // num_heads)

  if family in ("gemma2", "gemma3"):
    act = _get(hf, family, "hidden_activation") or _get(hf, family, "hidden_act")
  else:
    act = _get(hf, family, "hidden_act")
  if family == "gemma" and act == "gelu":
    act = "gelu_pytorch_tanh"     # transformers' GemmaConfig does the same
  if act in ("silu", "swish"):
    activation = "silu"
  elif act in _TANH_GELUS:
    activation = "gelu_tanh"
  else:
    activation = "silu"
    problems.append(f"hidden activation {act!r} is not supported (silu or tanh-gelu)")

  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key) and family != "qwen2":
      problems.append(f"{key}=true is not supported for {family}")
  if hf.get("use_bidirectional_attention"):
    problems.append("use_bidirectional_attention=true (embedding models) is not supported")
  if hf.get("partial_rotary_factor") not in (None, 1, 1.0):
    problems.append(f"partial_rotary_factor={hf['partial_rotary_factor']} is not supported")

  kinds = _layer_kinds(hf, family, num_layers, source)
  pattern = _compress(kinds)
  window = None
  if "local" in kinds:
    window = _get(hf, family, "sliding_window")
    if not window:
      problems.append("the config has sliding-window layers but no sliding_window")

  glob, local = _rope_params(hf, family)
  rope_scaling, scale_factor = None, 1.0
  if glob["rope_type"] == "llama3":
    original = glob.get("original_max_position_embeddings") or hf.get(
        "max_position_embeddings")
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in glob]
    if missing or original is None:
      missing = missing or ["original_max_position_embeddings"]
      problems.append(f"llama3 rope scaling lacks {missing}")
    else:
      rope_scaling = RopeScaling(
          factor=float(glob["factor"]), low_freq_factor=float(glob["low_freq_factor"]),
          high_freq_factor=float(glob["high_freq_factor"]), original_max_position=int(original))
  elif glob["rope_type"] == "linear":
    scale_factor = float(glob["factor"])
  elif glob["rope_type"] != "default":
    problems.append(f"rope type {glob['rope_type']!r} is not supported "
                    "(default, linear, llama3)")
  rope_local_base = None
  if family == "gemma3":                # local layers: own base, never scaled
    if local["rope_type"] != "default":
      problems.append(f"rope type {local['rope_type']!r} on sliding layers is not supported")
    rope_local_base = float(local["rope_theta"])
  elif "local" in kinds and (rope_scaling is not None or scale_factor != 1.0):
    problems.append("RoPE scaling together with sliding-window layers is only supported "
                    "for gemma3")
  if problems:
    raise ValueError(f"{source}: unsupported {family} config: " + "; ".join(problems))

  gemma = family.startswith("gemma")
  softcaps = family in ("gemma2", "gemma3")
  qpas = _get(hf, family, "query_pre_attn_scalar") if softcaps else None
  return ModelConfig(
      vocab_size=int(_require(hf, "vocab_size", source)), num_layers=num_layers,
      embed_dim=embed_dim, hidden_dim=int(_require(hf, "intermediate_size", source)),
      num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, family=family,
      norm_style="gemma_rms" if gemma else "rms",
      norm_eps=float(_get(hf, family, "rms_norm_eps")), activation=activation,
      rope_base=float(glob["rope_theta"]), rope_local_base=rope_local_base,
      rope_scale_factor=scale_factor, rope_scaling=rope_scaling,
      qkv_bias=family == "qwen2", qk_norm=family == "gemma3",
      post_norms=family in ("gemma2", "gemma3"),
      attn_logit_softcap=_float_or_none(_get(hf, family, "attn_logit_softcapping"))
      if softcaps else None,
      final_logit_softcap=_float_or_none(_get(hf, family, "final_logit_softcapping"))
      if softcaps else None,
      sliding_window=int(window) if window else None, layer_pattern=pattern,
      query_pre_attn_scalar=float(qpas) if qpas is not None else None,
      scale_embeddings=gemma, tie_embeddings=bool(_get(hf, family, "tie_word_embeddings")),
      dtype=dtype, param_dtype=param_dtype or dtype)


def _float_or_none(x: Any) -> float | None:
  return None if x is None else float(x)


def _int_if_whole(x: float) -> int | float:
  """transformers' strict configs want ints where the value is integral."""
  return int(x) if float(x).is_integer() else float(x)


def _check_exportable(config: ModelConfig) -> None:
  """Raises if `config` uses a switch its family's HF class cannot express."""
  family = config.family
  if family not in EXPORT_NAMES:
    raise ValueError(f"cannot export family {family!r}; supported: {list(EXPORT_NAMES)}")
  gemma = family.startswith("gemma")
  expected = dict(
      norm_style="gemma_rms" if gemma else "rms",
      activation="gelu_tanh" if gemma else "silu",
      qkv_bias=family == "qwen2", qk_norm=family == "gemma3",
      post_norms=family in ("gemma2", "gemma3"), scale_embeddings=gemma)
  if family not in ("gemma2", "gemma3"):
    expected.update(attn_logit_softcap=None, final_logit_softcap=None,
                    query_pre_attn_scalar=None)
  if family in ("llama", "gemma"):
    expected.update(layer_pattern=())
  if family != "llama":
    expected.update(rope_scaling=None)
  wrong = {k: getattr(config, k) for k, v in expected.items() if getattr(config, k) != v}
  if family != "gemma3" and "local" in config.layer_pattern:
    if config.rope_local_base not in (None, config.rope_base):
      wrong["rope_local_base"] = config.rope_local_base
  if wrong:
    raise ValueError(f"ModelConfig(family={family!r}) has {wrong}, which "
                     f"{EXPORT_NAMES[family][0]} cannot express; expected {expected}")


def config_to_hf(config: ModelConfig, **extra: Any) -> dict[str, Any]:
  """An HF config.json dict for `config` (inverse of `config_from_hf`).

  `extra` adds or overrides keys (e.g. bos_token_id, eos_token_id,
  max_position_embeddings).
  """
  _check_exportable(config)
  family = config.family
  arch, model_type = EXPORT_NAMES[family]
  kinds = [config.layer_kind(i) for i in range(config.num_layers)]
  hf: dict[str, Any] = dict(
      architectures=[arch], model_type=model_type, vocab_size=config.vocab_size,
      hidden_size=config.embed_dim, intermediate_size=config.hidden_dim,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
      rms_norm_eps=config.norm_eps, rope_theta=config.rope_base,
      tie_word_embeddings=config.tie_embeddings,
      torch_dtype=config.param_dtype, max_position_embeddings=8192)
  act_key = "hidden_activation" if family in ("gemma2", "gemma3") else "hidden_act"
  hf[act_key] = "silu" if config.activation == "silu" else "gelu_pytorch_tanh"
  if family == "llama":
    hf.update(attention_bias=False, mlp_bias=False)
    if config.rope_scaling is not None:
      rs = config.rope_scaling
      hf["rope_scaling"] = dict(rope_type="llama3", factor=rs.factor,
                                low_freq_factor=rs.low_freq_factor,
                                high_freq_factor=rs.high_freq_factor,
                                original_max_position_embeddings=rs.original_max_position)
  if config.rope_scale_factor != 1.0:
    if config.rope_scaling is not None:
      raise ValueError("cannot export both rope_scale_factor and Llama-3 rope_scaling")
    hf["rope_scaling"] = dict(rope_type="linear", factor=config.rope_scale_factor)
  if family == "qwen2":
    local = "local" in kinds
    hf.update(use_sliding_window=local, sliding_window=config.sliding_window if local else None,
              max_window_layers=kinds.index("local") if local else config.num_layers)
    if local and kinds != ["global"] * kinds.index("local") + ["local"] * (
        config.num_layers - kinds.index("local")):
      raise ValueError(f"Qwen2 can only have sliding layers from some layer on; got {kinds}")
  if family in ("gemma2", "gemma3"):
    hf.update(query_pre_attn_scalar=_int_if_whole(config.query_pre_attn_scalar
                                                  or config.head_dim),
              sliding_window=config.sliding_window or 4096,
              layer_types=["sliding_attention" if k == "local" else "full_attention"
                           for k in kinds],
              final_logit_softcapping=config.final_logit_softcap,
              attn_logit_softcapping=config.attn_logit_softcap, cache_implementation="hybrid")
  if family == "gemma3":
    hf["rope_local_base_freq"] = config.rope_local_base or config.rope_base
    hf.setdefault("rope_scaling", None)
    period = len(config.layer_pattern) or 1
    hf["sliding_window_pattern"] = period
  hf.update(extra)
  return hf


def same_architecture(a: ModelConfig, b: ModelConfig) -> list[str]:
  """Names of the fields (other than dtypes and kernel choices) where `a` and `b` differ."""
  skip = {"dtype", "param_dtype", "remat", "attention"}
  return [f.name for f in dataclasses.fields(ModelConfig)
          if f.name not in skip and getattr(a, f.name) != getattr(b, f.name)]
