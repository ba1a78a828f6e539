"""`ModelConfig`: one frozen description of every decoder-only family we run.

Covers Gemma 1 / 2 / 3 and Llama 3 / Qwen2 from one set of switches. Field names are
shared by the model, the checkpoint importers, the configs and the benchmarks; add a
field here (with a default that keeps old behaviour) rather than a side channel.

Legend used across the project: B batch, T query length, S key length, D model width,
N query heads, K kv heads, H head dim, F hidden (MLP) width, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

NORM_STYLES = ("rms", "gemma_rms")          # x * w  |  x * (1 + w)
ACTIVATIONS = ("silu", "gelu_tanh")         # SwiGLU | GeGLU
LAYER_KINDS = ("global", "local")           # full causal | sliding-window causal
ATTENTION_KERNELS = ("auto", "xla", "cudnn")  # see layers.use_cudnn_attention


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style RoPE frequency scaling (`rope_type: llama3` in HF configs)."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer (all families)."""
  vocab_size: int
  num_layers: int                       # L
  embed_dim: int                        # D
  hidden_dim: int                       # F
  num_heads: int                        # N
  num_kv_heads: int                     # K (N % K == 0; K == 1 is MQA)
  head_dim: int                         # H
  family: str = "llama"                 # llama | qwen2 | gemma | gemma2 | gemma3 (informational)
  norm_style: str = "rms"               # "rms" (x*w) or "gemma_rms" (x*(1+w))
  norm_eps: float = 1e-6
  activation: str = "silu"              # "silu" -> SwiGLU, "gelu_tanh" -> GeGLU
  rope_base: float = 10_000.0           # RoPE base of global layers
  rope_local_base: float | None = None  # RoPE base of local layers (Gemma 3: 10k); None -> rope_base
  rope_scale_factor: float = 1.0        # linear position scaling of global layers (Gemma 3: 8)
  rope_scaling: RopeScaling | None = None  # Llama-3 frequency scaling
  qkv_bias: bool = False                # Qwen2
  qk_norm: bool = False                 # Gemma 3: RMSNorm on q and k per head
  post_norms: bool = False              # Gemma 2/3: norm after attention and after MLP
  attn_logit_softcap: float | None = None   # Gemma 2: 50.0
  final_logit_softcap: float | None = None  # Gemma 2: 30.0
  sliding_window: int | None = None     # window (in tokens) of "local" layers
  layer_pattern: tuple[str, ...] = ()   # per-layer kind, cycled; () -> all global
  query_pre_attn_scalar: float | None = None  # scores scaled by this**-0.5; None -> head_dim
  scale_embeddings: bool = False        # Gemma: multiply embeddings by sqrt(D)
  tie_embeddings: bool = True           # output projection = embedding^T
  dtype: str = "bfloat16"               # compute dtype
  param_dtype: str = "float32"          # storage dtype of params
  remat: str = "none"                   # none | full | dots (rematerialisation policy)
  attention: str = "auto"               # auto | xla | cudnn (uncached attention kernel)

  def __post_init__(self):
    problems = []
    if self.num_heads % self.num_kv_heads:
      problems.append(f"num_heads={self.num_heads} is not a multiple of "
                      f"num_kv_heads={self.num_kv_heads}")
    if self.norm_style not in NORM_STYLES:
      problems.append(f"norm_style={self.norm_style!r} not in {NORM_STYLES}")
    if self.activation not in ACTIVATIONS:
      problems.append(f"activation={self.activation!r} not in {ACTIVATIONS}")
    for kind in self.layer_pattern:
      if kind not in LAYER_KINDS:
        problems.append(f"layer_pattern entry {kind!r} not in {LAYER_KINDS}")
    if "local" in self.layer_pattern and not self.sliding_window:
      problems.append("layer_pattern has 'local' layers but sliding_window is unset")
    if self.remat not in ("none", "full", "dots"):
      problems.append(f"remat={self.remat!r} not in ('none', 'full', 'dots')")
    if self.attention not in ATTENTION_KERNELS:
      problems.append(f"attention={self.attention!r} not in {ATTENTION_KERNELS}")
    for name in ("vocab_size", "num_layers", "embed_dim", "hidden_dim", "num_heads",
                 "num_kv_heads", "head_dim"):
      if getattr(self, name) <= 0:
        problems.append(f"{name} must be positive, got {getattr(self, name)}")
    if problems:
      raise ValueError("Invalid ModelConfig: " + "; ".join(problems))

  def layer_kind(self, layer: int) -> str:
    """'global' or 'local' for layer index `layer`."""
    if not self.layer_pattern:
      return "global"
    return self.layer_pattern[layer % len(self.layer_pattern)]

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_dict(cls, fields: Mapping[str, Any]) -> "ModelConfig":
    """Builds from a plain mapping (e.g. a ConfigDict section), checking field names."""
    fields = dict(fields)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"Unknown ModelConfig field(s) {unknown}; known: {sorted(known)}")
    if isinstance(fields.get("rope_scaling"), Mapping):
      fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
    if fields.get("layer_pattern") is not None:
      fields["layer_pattern"] = tuple(fields["layer_pattern"])
    return cls(**fields)


# Tiny presets of each family, for tests and CPU smoke runs. Real sizes come from
# checkpoint configs (score_jax.hub.hf_weights) or from configs/*.py.
def tiny(family: str = "llama", vocab_size: int = 128, **overrides: Any) -> ModelConfig:
  """A tiny config of `family` (llama | qwen2 | gemma | gemma2 | gemma3)."""
  common = dict(vocab_size=vocab_size, num_layers=2, embed_dim=32, hidden_dim=64,
                num_heads=4, num_kv_heads=2, head_dim=8, family=family)
  per_family: dict[str, dict[str, Any]] = {
      "llama": dict(rope_base=500_000.0, tie_embeddings=False, norm_eps=1e-5,
                    rope_scaling=RopeScaling(factor=8.0, original_max_position=64)),
      "qwen2": dict(rope_base=1_000_000.0, qkv_bias=True, tie_embeddings=True,
                    norm_eps=1e-6),
      "gemma": dict(norm_style="gemma_rms", activation="gelu_tanh", num_kv_heads=1,
                    scale_embeddings=True, tie_embeddings=True),
      "gemma2": dict(norm_style="gemma_rms", activation="gelu_tanh", post_norms=True,
                     attn_logit_softcap=50.0, final_logit_softcap=30.0, sliding_window=4,
                     layer_pattern=("local", "global"), query_pre_attn_scalar=8.0,
                     scale_embeddings=True, tie_embeddings=True),
      "gemma3": dict(norm_style="gemma_rms", activation="gelu_tanh", post_norms=True,
                     qk_norm=True, sliding_window=4, num_layers=3,
                     layer_pattern=("local", "local", "global"), rope_base=1_000_000.0,
                     rope_local_base=10_000.0, rope_scale_factor=8.0,
                     query_pre_attn_scalar=8.0, scale_embeddings=True, tie_embeddings=True),
  }
  if family not in per_family:
    raise ValueError(f"unknown family {family!r}; one of {sorted(per_family)}")
  fields = {**common, **per_family[family], "dtype": "float32", **overrides}
  return ModelConfig(**fields)
