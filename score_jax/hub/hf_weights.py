"""Hugging Face safetensors checkpoints -> sharded params (and the name map export uses).

  config, graphdef, params, hf_config = load_hf(directory, dtype="float32", mesh=mesh)

`directory` holds `config.json` (read by `score_jax.hub.hf_config`) and either one
`model.safetensors` or shards listed in `model.safetensors.index.json`. Tensors are
read one at a time straight from memory-mapped files: `safetensors`' numpy backend
cannot represent bfloat16, so `SafetensorsFile` parses the (documented, simple)
format itself: 8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then the raw little-endian data.

Each param is created with `jax.make_array_from_callback` in its final sharding
(`score_jax.model.transformer.param_shardings`): the callback slices the memory-mapped tensor
(after a lazy transpose / reshape view into our layout), so a host reads and
converts only the slices its own devices hold -- the same code serves one host
and many. Nothing is materialised whole on the host except a replicated param.

Name / layout map (torch Linear weights are [out, in]; see score_jax/model/transformer.py):
  model.embed_tokens.weight [V, D]       -> embedder.embedding [V, D]
  model.norm.weight [D]                  -> final_norm.scale
  lm_head.weight [V, D]                  -> lm_head.kernel [D, V]      (untied only)
  model.layers.i.self_attn.q_proj.weight [N*H, D] -> attn.q_proj.kernel [D, N, H]
  ...k_proj / v_proj [K*H, D]            -> attn.k_proj / v_proj.kernel [D, K, H]
  ...{q,k,v}_proj.bias [N*H] / [K*H]     -> attn.*.bias [N, H] / [K, H]  (Qwen2)
  ...o_proj.weight [D, N*H]              -> attn.o_proj.kernel [N, H, D]
  ...self_attn.{q,k}_norm.weight [H]     -> attn.{q,k}_norm.scale       (Gemma 3)
  ...mlp.{gate,up}_proj.weight [F, D]    -> mlp.{gate,up}_proj.kernel [D, F]
  ...mlp.down_proj.weight [D, F]         -> mlp.down_proj.kernel [F, D]
  ...input_layernorm                     -> pre_attn_norm
  ...post_attention_layernorm            -> pre_ffw_norm (Llama, Qwen2, Gemma 1) or
                                            post_attn_norm (Gemma 2/3)
  ...pre_feedforward_layernorm / post_feedforward_layernorm -> pre_ffw_norm / post_ffw_norm
Gemma norm weights are stored as HF stores them (applied as x * (1 + w)).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import struct
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from score_jax.hub import hf_config as hf_config_lib
from score_jax.model import transformer as model_lib
from score_jax.model.config import ModelConfig

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Tensors some checkpoints carry that are not params.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class SafetensorsFile:
  """One .safetensors file: header parsed eagerly, data memory-mapped on first use."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    try:
      with open(self.path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
      raise ValueError(f"{self.path} is not a readable safetensors file: {e}") from e
    self.metadata = header.pop("__metadata__", None) or {}
    self.entries: dict[str, dict[str, Any]] = header
    self._data_start = 8 + n
    self._mmap: np.memmap | None = None

  def keys(self) -> list[str]:
    return list(self.entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name]["shape"])

  def tensor(self, name: str) -> np.ndarray:
    """A read-only numpy view of tensor `name` (no copy; pages load on access)."""
    entry = self.entries[name]
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
      raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {entry['dtype']}")
    start, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    raw = self._mmap[self._data_start + start:self._data_start + end]
    if raw.size != int(np.prod(shape)) * dtype.itemsize:
      raise ValueError(f"{self.path}: tensor {name} has {raw.size} bytes, expected "
                       f"{int(np.prod(shape)) * dtype.itemsize} for {shape} {entry['dtype']}")
    return raw.view(dtype).reshape(shape)


class SafetensorsCheckpoint:
  """All tensors of a checkpoint directory (single file or sharded with an index)."""

  def __init__(self, directory: str | pathlib.Path):
    directory = pathlib.Path(directory)
    self.directory = directory
    index = directory / INDEX_FILE
    self.files: dict[str, SafetensorsFile] = {}
    self.location: dict[str, str] = {}     # tensor name -> file name
    if index.is_file():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (ValueError, KeyError) as e:
        raise ValueError(f"{index} is not a safetensors index (needs a weight_map): {e}") from e
      for shard in sorted(set(weight_map.values())):
        if not (directory / shard).is_file():
          raise FileNotFoundError(f"shard {shard} listed in {index} is missing from "
                                  f"{directory}; download it again")
        self.files[shard] = SafetensorsFile(directory / shard)
      for name, shard in weight_map.items():
        if name not in self.files[shard].entries:
          raise ValueError(f"{index} puts tensor {name} in {shard}, but that shard does "
                           "not hold it")
        self.location[name] = shard
    elif (directory / SINGLE_FILE).is_file():
      self.files[SINGLE_FILE] = SafetensorsFile(directory / SINGLE_FILE)
      self.location = {name: SINGLE_FILE for name in self.files[SINGLE_FILE].keys()}
    else:
      others = sorted(p.name for p in directory.glob("*.bin")) + sorted(
          p.name for p in directory.glob("*.safetensors"))
      hint = f" (found {others[:4]})" if others else ""
      raise FileNotFoundError(
          f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}{hint}; save the model "
          "with save_pretrained(..., safe_serialization=True)")

  def names(self) -> list[str]:
    return list(self.location)

  def file_of(self, name: str) -> pathlib.Path:
    return self.files[self.location[name]].path

  def shape(self, name: str) -> tuple[int, ...]:
    return self.files[self.location[name]].shape(name)

  def tensor(self, name: str) -> np.ndarray:
    return self.files[self.location[name]].tensor(name)


@dataclasses.dataclass(frozen=True)
class HFTensor:
  """Where one param lives in an HF checkpoint and how its layout differs from ours."""
  name: str                                   # e.g. "model.layers.0.self_attn.q_proj.weight"
  shape: tuple[int, ...]                      # its HF shape
  to_ours: Callable[[np.ndarray], np.ndarray]  # HF layout -> ours (a view where possible)
  to_hf: Callable[[np.ndarray], np.ndarray]    # ours -> HF layout


def _same(name, shape):
  return HFTensor(name, tuple(shape), lambda a: a, lambda a: a)


def _linear(name, out_dim, in_dim):
  """torch Linear [out, in] <-> our kernel [in, out]."""
  return HFTensor(name, (out_dim, in_dim), lambda a: a.T, lambda a: a.T)


def _heads_in(name, heads, head_dim, d):
  """[heads*H, D] <-> [D, heads, H] (q/k/v projections)."""
  return HFTensor(name, (heads * head_dim, d),
                  lambda a: a.reshape(heads, head_dim, d).transpose(2, 0, 1),
                  lambda a: a.transpose(1, 2, 0).reshape(heads * head_dim, d))


def _heads_out(name, heads, head_dim, d):
  """[D, N*H] <-> [N, H, D] (output projection)."""
  return HFTensor(name, (d, heads * head_dim),
                  lambda a: a.reshape(d, heads, head_dim).transpose(1, 2, 0),
                  lambda a: a.transpose(2, 0, 1).reshape(d, heads * head_dim))


def _bias(name, heads, head_dim):
  return HFTensor(name, (heads * head_dim,), lambda a: a.reshape(heads, head_dim),
                  lambda a: a.reshape(heads * head_dim))


def hf_tensor_map(config: ModelConfig) -> dict[str, HFTensor]:
  """Our param path ("layers.0.attn.q_proj.kernel") -> its HF tensor, for `config`."""
  V, D, F = config.vocab_size, config.embed_dim, config.hidden_dim
  N, K, H = config.num_heads, config.num_kv_heads, config.head_dim
  out = {"embedder.embedding": _same("model.embed_tokens.weight", (V, D)),
         "final_norm.scale": _same("model.norm.weight", (D,))}
  if not config.tie_embeddings:
    out["lm_head.kernel"] = _linear("lm_head.weight", V, D)
  for i in range(config.num_layers):
    ours, hf = f"layers.{i}.", f"model.layers.{i}."
    out[ours + "pre_attn_norm.scale"] = _same(hf + "input_layernorm.weight", (D,))
    out[ours + "attn.q_proj.kernel"] = _heads_in(hf + "self_attn.q_proj.weight", N, H, D)
    out[ours + "attn.k_proj.kernel"] = _heads_in(hf + "self_attn.k_proj.weight", K, H, D)
    out[ours + "attn.v_proj.kernel"] = _heads_in(hf + "self_attn.v_proj.weight", K, H, D)
    out[ours + "attn.o_proj.kernel"] = _heads_out(hf + "self_attn.o_proj.weight", N, H, D)
    if config.qkv_bias:
      out[ours + "attn.q_proj.bias"] = _bias(hf + "self_attn.q_proj.bias", N, H)
      out[ours + "attn.k_proj.bias"] = _bias(hf + "self_attn.k_proj.bias", K, H)
      out[ours + "attn.v_proj.bias"] = _bias(hf + "self_attn.v_proj.bias", K, H)
    if config.qk_norm:
      out[ours + "attn.q_norm.scale"] = _same(hf + "self_attn.q_norm.weight", (H,))
      out[ours + "attn.k_norm.scale"] = _same(hf + "self_attn.k_norm.weight", (H,))
    if config.post_norms:
      out[ours + "post_attn_norm.scale"] = _same(hf + "post_attention_layernorm.weight", (D,))
      out[ours + "pre_ffw_norm.scale"] = _same(hf + "pre_feedforward_layernorm.weight", (D,))
      out[ours + "post_ffw_norm.scale"] = _same(hf + "post_feedforward_layernorm.weight", (D,))
    else:
      out[ours + "pre_ffw_norm.scale"] = _same(hf + "post_attention_layernorm.weight", (D,))
    out[ours + "mlp.gate_proj.kernel"] = _linear(hf + "mlp.gate_proj.weight", F, D)
    out[ours + "mlp.up_proj.kernel"] = _linear(hf + "mlp.up_proj.weight", F, D)
    out[ours + "mlp.down_proj.kernel"] = _linear(hf + "mlp.down_proj.weight", D, F)
  return out


def param_path(key: tuple) -> str:
  """"layers.0.attn.q_proj.kernel" for an nnx.State flat-state key."""
  return ".".join(str(k) for k in key)


def place(source: np.ndarray, sharding: jax.sharding.Sharding, dtype: Any) -> jax.Array:
  """A jax.Array of `source` (a numpy array or lazy view) in `sharding`, cast to `dtype`.

  Built with `jax.make_array_from_callback`: each addressable device's slice is read
  (and cast) on its own, and a slice several devices share is read once.
  """
  dtype = np.dtype(dtype)
  read: dict[Any, np.ndarray] = {}

  def callback(index):
    key = tuple((s.start, s.stop, s.step) if isinstance(s, slice) else s for s in index)
    if key not in read:
      read[key] = np.asarray(source[index]).astype(dtype, order="C")
    return read[key]

  return jax.make_array_from_callback(tuple(source.shape), sharding, callback)


def build_params(config: ModelConfig, sources: Mapping[str, np.ndarray],
                 mesh: jax.sharding.Mesh | None, origin: str
                 ) -> tuple[nnx.GraphDef, nnx.State]:
  """graphdef and params of `config` from `sources` (param path -> array in our layout).

  Params are placed in `model.param_shardings(config, mesh)` (one device without a
  mesh) in `config.param_dtype`. Raises on a missing source or a shape mismatch,
  naming `origin`.
  """
  graphdef, abstract = model_lib.abstract_params(config)
  if mesh is not None:
    shardings = model_lib.param_shardings(abstract, mesh)
  else:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda v: v.replace(device), abstract,
                             is_leaf=lambda x: isinstance(x, nnx.Variable))
  dtype = jnp.dtype(config.param_dtype)
  flat_shardings = dict(nnx.to_flat_state(shardings))

  def one(key, var):
    path = param_path(key)
    if path not in sources:
      raise ValueError(f"{origin}: no weights for param {path}")
    src = sources[path]
    if tuple(src.shape) != tuple(var.shape):
      raise ValueError(f"{origin}: param {path} expects shape {tuple(var.shape)} but the "
                       f"checkpoint gives {tuple(src.shape)}")
    return var.replace(place(src, flat_shardings[key].get_value(), dtype))

  flat = [(key, one(key, var)) for key, var in nnx.to_flat_state(abstract)]
  extra = sorted(set(sources) - {param_path(key) for key, _ in flat})
  if extra:
    raise ValueError(f"{origin}: the checkpoint has weights for {extra[:4]}, which a model "
                     f"of this config lacks (family={config.family!r}); check the family / "
                     "config")
  params = nnx.from_flat_state(flat)
  return graphdef, params


def read_hf_config(directory: str | pathlib.Path) -> dict[str, Any]:
  """The parsed config.json of an HF checkpoint directory (clear errors if absent)."""
  directory = pathlib.Path(directory)
  path = directory / "config.json"
  if not directory.exists():
    raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
  if not path.is_file():
    raise FileNotFoundError(
        f"{directory} has no config.json, so it is not a Hugging Face checkpoint directory; "
        "for an official Gemma Orbax checkpoint pass its checkpoint directory (with "
        "family='gemma' / 'gemma2' / 'gemma3' if needed)")
  try:
    data = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path} should hold a JSON object")
  return data


def _text_prefix(ckpt: SafetensorsCheckpoint) -> tuple[str, str]:
  """(prefix replacing "model.", prefix of lm_head) — multimodal Gemma 3 nests the text
  model under "language_model.model." or "model.language_model."."""
  embeds = sorted((n for n in ckpt.names() if n.endswith("embed_tokens.weight")), key=len)
  if not embeds:
    raise ValueError(f"{ckpt.directory}: no *embed_tokens.weight tensor; not a causal LM "
                     "checkpoint of a supported architecture")
  model_prefix = embeds[0][:-len("embed_tokens.weight")]
  heads = sorted((n for n in ckpt.names() if n.endswith("lm_head.weight")), key=len)
  head_prefix = heads[0][:-len("lm_head.weight")] if heads else ""
  return model_prefix, head_prefix


def hf_sources(ckpt: SafetensorsCheckpoint, config: ModelConfig) -> dict[str, np.ndarray]:
  """Our param path -> lazy view of its checkpoint tensor in our layout (shape-checked)."""
  model_prefix, head_prefix = _text_prefix(ckpt)

  def real_name(name: str) -> str:
    if name.startswith("model."):
      return model_prefix + name[len("model."):]
    return head_prefix + name

  sources, used = {}, set()
  for path, t in hf_tensor_map(config).items():
    name = real_name(t.name)
    if name not in ckpt.location:
      where = ckpt.directory / (INDEX_FILE if (ckpt.directory / INDEX_FILE).is_file()
                                else SINGLE_FILE)
      raise ValueError(f"tensor {name} (for param {path}) is not in {where}; the checkpoint "
                       "does not match its config.json")
    found = ckpt.shape(name)
    if found != t.shape:
      raise ValueError(f"shape mismatch for param {path}: config.json implies HF tensor {name} "
                       f"of shape {t.shape}, found {found} in {ckpt.file_of(name)}")
    sources[path] = t.to_ours(ckpt.tensor(name))
    used.add(name)
  text = [n for n in ckpt.names()
          if (n.startswith(model_prefix) or n == head_prefix + "lm_head.weight")]
  unused = [n for n in text if n not in used and not n.endswith(_IGNORED_SUFFIXES)
            and not (config.tie_embeddings and n.endswith("lm_head.weight"))]
  if unused:
    raise ValueError(f"{ckpt.directory}: {len(unused)} tensors are not used by the model "
                     f"config.json describes (e.g. {unused[:4]}); config and weights disagree")
  return sources


def load_hf(directory: str | pathlib.Path, *, dtype: str = "float32",
            compute_dtype: str | None = None, mesh: jax.sharding.Mesh | None = None
            ) -> tuple[ModelConfig, nnx.GraphDef, nnx.State, dict[str, Any]]:
  """Loads an HF checkpoint directory.

  Args:
    directory: holds config.json and model.safetensors (or an index and shards).
    dtype: param storage dtype ("float32" | "bfloat16"), whatever the file holds.
    compute_dtype: activation dtype (default: `dtype`).
    mesh: place params in `model.param_shardings(config, mesh)`; None: one device.

  Returns:
    (config, graphdef, params, the parsed config.json).
  """
  directory = pathlib.Path(directory)
  hf = read_hf_config(directory)
  config = hf_config_lib.config_from_hf(hf, source=str(directory / "config.json"),
                                        dtype=compute_dtype or dtype, param_dtype=dtype)
  ckpt = SafetensorsCheckpoint(directory)
  sources = hf_sources(ckpt, config)
  graphdef, params = build_params(config, sources, mesh, str(directory))
  return config, graphdef, params, hf
