"""Official Gemma Flax / Orbax checkpoints (Kaggle "flax" downloads) -> sharded params.

The layout, as defined by google-deepmind/gemma (`gemma/gm/nn/_modules.py`,
`gemma/transformer.py`, `gemma/gm/ckpts/_compat.py`), with the legend of score_jax/model/transformer.py:

  transformer/embedder/input_embedding        [V, D]
  transformer/layer_{i}/pre_attention_norm/scale     [D]
  transformer/layer_{i}/attn/q_einsum/w       [N, D, H]      (when K != N)
  transformer/layer_{i}/attn/kv_einsum/w      [2, K, D, H]   (k, v; when K != N)
  transformer/layer_{i}/attn/qkv_einsum/w     [3, N, D, H]   (q, k, v; when K == N)
  transformer/layer_{i}/attn/attn_vec_einsum/w       [N, H, D]
  transformer/layer_{i}/attn/_query_norm/scale, _key_norm/scale [H]    (Gemma 3)
  transformer/layer_{i}/post_attention_norm/scale    [D]   (Gemma 2/3)
  transformer/layer_{i}/pre_ffw_norm/scale    [D]
  transformer/layer_{i}/mlp/gating_einsum(/w) [2, F, D] (Gemma 2 9B/27B, Gemma 3) or
                                              [2, D, F] (Gemma 1, Gemma 2 2B); [0] is
                                              the gelu-gated half, [1] the linear half
  transformer/layer_{i}/mlp/linear(/w)        [F, D]
  transformer/layer_{i}/post_ffw_norm/scale   [D]   (Gemma 2/3)
  transformer/final_norm/scale                [D]

stored either nested ({'transformer': {'layer_0': {...}}}), "flat" as released
({'transformer/layer_0/attn/q_einsum': {'w': ...}}) or without the 'transformer'
level; all three are read. Multimodal parts (SigLiP encoder, `embedder/mm_*`) are
ignored. Norm scales are applied as x * (1 + scale), as HF stores them; RoPE uses
the split-halves convention, so no permutation is needed.

The directory has no config.json: the architecture is inferred from the shapes
(V, D, L, N, K, H, F) and from which params exist (`_query_norm` -> Gemma 3,
`post_attention_norm` -> Gemma 2, else Gemma 1), or from `family` ("gemma",
"gemma2", "gemma3") or a variant name (`VARIANTS`, e.g. "gemma3-1b"). Fields that
shapes cannot tell (sliding window, RoPE bases and scaling, softcaps, the query
scale) come from the variant matched by (family, L, D), else from the family's
defaults; `overrides` replaces any ModelConfig field (e.g. for non-standard sizes).
The tokenizer (`tokenizer.model`) sits next to the checkpoint directory or in it.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from score_jax import checkpoint as checkpoint_lib
from score_jax.hub import hf_weights as weights_lib
from score_jax.model.config import ModelConfig

_GEMMA3_PATTERN = ("local",) * 5 + ("global",)
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma": dict(),
    "gemma2": dict(post_norms=True, attn_logit_softcap=50.0, final_logit_softcap=30.0,
                   sliding_window=4096, layer_pattern=("local", "global")),
    "gemma3": dict(post_norms=True, qk_norm=True, sliding_window=1024,
                   layer_pattern=_GEMMA3_PATTERN, rope_base=1_000_000.0,
                   rope_local_base=10_000.0, rope_scale_factor=8.0),
}
# name -> (family, num_layers, embed_dim, non-shape fields); from gemma/transformer.py.
VARIANTS: dict[str, tuple[str, int, int, dict[str, Any]]] = {
    "gemma-2b": ("gemma", 18, 2048, {}),
    "gemma-7b": ("gemma", 28, 3072, {}),
    "gemma2-2b": ("gemma2", 26, 2304, {}),
    "gemma2-9b": ("gemma2", 42, 3584, {}),
    # BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS: scores scaled by (D // N) ** -0.5
    "gemma2-27b": ("gemma2", 46, 4608, {"query_pre_attn_scalar": 4608 // 32}),
    "gemma3-1b": ("gemma3", 26, 1152, {"sliding_window": 512, "rope_scale_factor": 1.0}),
    "gemma3-4b": ("gemma3", 34, 2560, {}),
    "gemma3-12b": ("gemma3", 48, 3840, {}),
    "gemma3-27b": ("gemma3", 62, 5376, {"query_pre_attn_scalar": 5376 // 32}),
}
FAMILIES = tuple(_FAMILY_DEFAULTS)
_IGNORED = re.compile(r"^(SigLiPFromPatches_0|vision_encoder|audio_encoder)/|^embedder/mm_")


def is_orbax_dir(path: pathlib.Path) -> bool:
  """Whether `path` looks like an Orbax checkpoint directory."""
  return path.is_dir() and any((path / name).exists() for name in (
      "_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint", "_sharding"))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(_flatten(value, path))
    else:
      out[path] = value
  return out


def normalize_tree(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Flat {"layer_0/attn/q_einsum/w": array, "layer_0/mlp/linear": array, ...} of any of
  the stored layouts, without the 'transformer/' level and multimodal params."""
  out = {}
  for path, value in _flatten(tree).items():
    if path.startswith("transformer/"):
      path = path[len("transformer/"):]
    if _IGNORED.search(path):
      continue
    if re.search(r"/mlp/(gating_einsum|linear)/w$", path):
      path = path[:-2]
    out[path] = value
  return out


def _shape(flat: Mapping[str, Any], key: str, origin: str) -> tuple[int, ...]:
  if key not in flat:
    raise ValueError(f"{origin}: param {key} is missing; not an official Gemma checkpoint "
                     f"(found e.g. {sorted(flat)[:6]})")
  return tuple(np.shape(flat[key]))


def _resolve_family(family: str | None, flat: Mapping[str, Any]
                    ) -> tuple[str, str | None]:
  """(family, variant name or None) from the argument or the params present."""
  if family is not None and family in VARIANTS:
    return VARIANTS[family][0], family
  if family is not None and family not in _FAMILY_DEFAULTS:
    raise ValueError(f"unknown Gemma family/variant {family!r}; use one of "
                     f"{list(_FAMILY_DEFAULTS) + list(VARIANTS)}")
  if family is not None:
    return family, None
  if "layer_0/attn/_query_norm/scale" in flat:
    return "gemma3", None
  if "layer_0/post_attention_norm/scale" in flat:
    return "gemma2", None
  return "gemma", None


def infer_config(flat: Mapping[str, Any], *, family: str | None = None,
                 overrides: Mapping[str, Any] | None = None, dtype: str = "float32",
                 param_dtype: str | None = None, origin: str = "checkpoint"
                 ) -> tuple[ModelConfig, bool]:
  """(ModelConfig, gating_transposed) of a normalized Gemma tree (see module docstring)."""
  family, variant = _resolve_family(family, flat)
  V, D = _shape(flat, "embedder/input_embedding", origin)
  layers = sorted(int(m.group(1)) for k in flat
                  if (m := re.match(r"layer_(\d+)/pre_attention_norm/scale$", k)))
  if not layers or layers != list(range(len(layers))):
    raise ValueError(f"{origin}: expected params layer_0 ... layer_(L-1), found layers "
                     f"{layers[:8]}; stacked layouts are not supported")
  L = len(layers)
  if "layer_0/attn/qkv_einsum/w" in flat:
    _, N, _, H = _shape(flat, "layer_0/attn/qkv_einsum/w", origin)
    K = N
  else:
    N, _, H = _shape(flat, "layer_0/attn/q_einsum/w", origin)
    _, K, _, _ = _shape(flat, "layer_0/attn/kv_einsum/w", origin)
  _, a, b = _shape(flat, "layer_0/mlp/gating_einsum", origin)
  if a == D and b != D:
    F, transposed = b, False
  elif b == D and a != D:
    F, transposed = a, True
  else:   # F == D: shapes cannot tell; use what the family releases use
    F, transposed = D, family == "gemma3" or variant in ("gemma2-9b", "gemma2-27b")
  if variant is None:
    variant = next((name for name, (fam, l, d, _) in VARIANTS.items()
                    if fam == family and l == L and d == D), None)
  elif (VARIANTS[variant][1], VARIANTS[variant][2]) != (L, D):
    raise ValueError(f"{origin}: family={variant!r} has {VARIANTS[variant][1]} layers of "
                     f"width {VARIANTS[variant][2]}, but the checkpoint has {L} of width {D}")
  fields: dict[str, Any] = dict(
      vocab_size=V, num_layers=L, embed_dim=D, hidden_dim=F, num_heads=N, num_kv_heads=K,
      head_dim=H, family=family, norm_style="gemma_rms", norm_eps=1e-6,
      activation="gelu_tanh", scale_embeddings=True, tie_embeddings=True,
      dtype=dtype, param_dtype=param_dtype or dtype)
  fields.update(_FAMILY_DEFAULTS[family])
  if variant is not None:
    fields.update(VARIANTS[variant][3])
  if "query_pre_attn_scalar" not in fields and family != "gemma":
    fields["query_pre_attn_scalar"] = float(H)
  fields.update(overrides or {})
  return ModelConfig.from_dict(fields), transposed


def _attn_sources(get, i):
  """q/k/v/o kernels of layer i in our layout ([D,N,H], [D,K,H], [D,K,H], [N,H,D])."""
  p = f"layer_{i}/attn/"
  try:
    w = get(p + "qkv_einsum/w")                        # [3, N, D, H]
    q, k, v = (w[j].transpose(1, 0, 2) for j in range(3))
  except ValueError:
    q = get(p + "q_einsum/w").transpose(1, 0, 2)       # [N, D, H] -> [D, N, H]
    kv = get(p + "kv_einsum/w")                        # [2, K, D, H]
    k, v = kv[0].transpose(1, 0, 2), kv[1].transpose(1, 0, 2)
  return q, k, v, get(p + "attn_vec_einsum/w")


def orbax_sources(flat: Mapping[str, Any], config: ModelConfig, transposed: bool,
                  origin: str = "checkpoint") -> dict[str, np.ndarray]:
  """Our param path -> array (numpy views) of a normalized Gemma tree."""
  def get(key):
    if key not in flat:
      raise ValueError(f"{origin}: param {key} is missing")
    return np.asarray(flat[key])

  out = {"embedder.embedding": get("embedder/input_embedding"),
         "final_norm.scale": get("final_norm/scale")}
  for i in range(config.num_layers):
    ours, p = f"layers.{i}.", f"layer_{i}/"
    q, k, v, o = _attn_sources(get, i)
    out.update({ours + "attn.q_proj.kernel": q, ours + "attn.k_proj.kernel": k,
                ours + "attn.v_proj.kernel": v, ours + "attn.o_proj.kernel": o,
                ours + "pre_attn_norm.scale": get(p + "pre_attention_norm/scale"),
                ours + "pre_ffw_norm.scale": get(p + "pre_ffw_norm/scale"),
                ours + "mlp.down_proj.kernel": get(p + "mlp/linear")})
    gating = get(p + "mlp/gating_einsum")
    gate, up = (gating[0].T, gating[1].T) if transposed else (gating[0], gating[1])
    out[ours + "mlp.gate_proj.kernel"] = gate
    out[ours + "mlp.up_proj.kernel"] = up
    optional = {"attn.q_norm.scale": "attn/_query_norm/scale",
                "attn.k_norm.scale": "attn/_key_norm/scale",
                "post_attn_norm.scale": "post_attention_norm/scale",
                "post_ffw_norm.scale": "post_ffw_norm/scale"}
    for name, key in optional.items():
      if p + key in flat:
        out[ours + name] = get(p + key)
  return out


def find_tokenizer(path: pathlib.Path) -> pathlib.Path | None:
  """tokenizer.model in the checkpoint directory or next to it (Kaggle layout)."""
  for d in (path, path.parent):
    for name in ("tokenizer.model",):
      if (d / name).is_file():
        return d / name
    models = sorted(d.glob("tokenizer*.model"))
    if models:
      return models[0]
  return None


def load_gemma_orbax(path: str | pathlib.Path, *, family: str | None = None,
                     dtype: str = "float32", compute_dtype: str | None = None,
                     mesh: jax.sharding.Mesh | None = None,
                     overrides: Mapping[str, Any] | None = None
                     ) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
  """Loads an official Gemma Orbax checkpoint directory into sharded params.

  Args:
    path: the Orbax checkpoint directory (holding _METADATA / manifest.ocdbt).
    family: "gemma" | "gemma2" | "gemma3" or a `VARIANTS` name; None: inferred.
    dtype: param storage dtype; compute_dtype: activation dtype (default `dtype`).
    mesh: place params in `model.param_shardings(config, mesh)`; None: one device.
    overrides: ModelConfig fields to set (e.g. sliding_window for a custom size).
  """
  path = pathlib.Path(path)
  origin = str(path)
  flat = normalize_tree(checkpoint_lib.read_pytree(path))
  config, transposed = infer_config(flat, family=family, overrides=overrides,
                                    dtype=compute_dtype or dtype, param_dtype=dtype,
                                    origin=origin)
  sources = orbax_sources(flat, config, transposed, origin)
  graphdef, params = weights_lib.build_params(config, sources, mesh, origin)
  return config, graphdef, params
