"""GGUF files (llama.cpp's format) -> `ModelConfig`, sharded params and a tokenizer.

  config, graphdef, params, hf_config, tokenizer_dir = load_gguf("model.gguf", mesh=mesh)

`score_jax.load` calls this for a `.gguf` file, or for a directory holding exactly one
`.gguf` and no safetensors. The header is parsed by `score_jax.hub.gguf_reader` (the
`gguf` package's reader takes ~15 s on a 262k-token vocabulary), tensors stay
memory-mapped and are dequantised to float32 with `gguf.quants.dequantize`, one tensor
at a time, then cast to the param dtype.

Supported architectures (`general.architecture`): gemma3 (checked against transformers
on Gemma 3 270M), gemma2, gemma, llama, qwen2. Supported tensor types: whatever the
installed `gguf` dequantises -- F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
Q4_K, Q5_K, Q6_K, the IQ* and TQ* types, MXFP4 (`supported_types()`). Anything else
(I8-I64, F64, Q8_1, Q8_K, ...) is an error naming the file, tensor and type.

How llama.cpp's layout maps back to ours (the same undoing transformers'
`modeling_gguf_pytorch_utils` does), so that `hf_weights.hf_tensor_map` does the rest:
* Names: `gguf.get_tensor_name_map` (llama.cpp's own table) maps each HF tensor name
  to its GGUF name (`model.layers.0.self_attn.q_proj` -> `blk.0.attn_q`).
* Layout: a GGUF tensor of ggml shape [in, out] is a row-major [out, in] array, i.e.
  the torch Linear layout HF uses.
* Gemma norms: llama.cpp stores every `*norm.weight` as w + 1; we subtract 1.
* Llama q / k: llama.cpp permutes their rows for its rope layout; we permute back.
* Config: metadata `{arch}.block_count`, `.embedding_length`, ... become an HF
  config dict (`hf_config_from_gguf`), read by `hf_config.config_from_hf`. What GGUF
  does not store follows llama.cpp: Gemma 3's local rope base 10k and every 6th layer
  global, Gemma 2 alternating, query_pre_attn_scalar = head_dim except 27B models.
The tokenizer is built from the embedded vocabulary with transformers' own GGUF
converter (`transformers.integrations.gguf`), saved once as tokenizer.json +
tokenizer_config.json under `cache_dir()` and loaded as an `HFTokenizer`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Callable

import numpy as np

from score_jax.hub import gguf_reader
from score_jax.hub import hf_config as hf_config_lib
from score_jax.hub import hf_weights as weights_lib
from score_jax.model.config import ModelConfig

# general.architecture -> (HF architecture, model_type)
ARCHITECTURES = {"gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
                 "gemma2": ("Gemma2ForCausalLM", "gemma2"),
                 "gemma": ("GemmaForCausalLM", "gemma"),
                 "llama": ("LlamaForCausalLM", "llama"),
                 "qwen2": ("Qwen2ForCausalLM", "qwen2")}
_NORM_OFFSET = ("gemma", "gemma2", "gemma3")          # norms stored as w + 1
_LAYERS_27B = {"gemma2": 46, "gemma3": 62}            # llama.cpp's 27B rule (attention scale)
# Version of what `tokenizer_dir` writes (in its cache key): 2 = tokenizer.json adds BOS
# itself, so that an exported copy does (caches written before are converted again).
TOKENIZER_FORMAT = 2


def _gguf():
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("reading .gguf files needs the gguf package: pip install gguf") from e
  return gguf


def supported_types() -> list[str]:
  """Names of the GGML tensor types the installed `gguf` package dequantises."""
  gguf = _gguf()
  traits = getattr(gguf.quants, "_type_traits", {})
  return ["F32", "F16"] + sorted(t.name for t in traits)


def find_gguf(directory: pathlib.Path) -> pathlib.Path | None:
  """The one .gguf in `directory` when it holds no safetensors; None when it holds none."""
  files = sorted(directory.glob("*.gguf"))
  if not files or any(directory.glob("*.safetensors")):
    return None
  if len(files) > 1:
    raise ValueError(f"{directory} holds {len(files)} .gguf files ({[f.name for f in files]}); "
                     "pass the path of the one to load")
  return files[0]


class GGUFFile:
  """A GGUF file's metadata and tensors (memory-mapped), with errors naming the file."""

  def __init__(self, path: str | pathlib.Path):
    self.header = gguf_reader.read_gguf(path)
    self.path = self.header.path
    self.tensors = self.header.tensors
    self.arch = None
    self.arch = self.require("general.architecture")
    if self.arch not in ARCHITECTURES:
      raise ValueError(f"{self.path}: unsupported GGUF architecture {self.arch!r}; supported: "
                       f"{', '.join(ARCHITECTURES)}")

  def get(self, key: str, default: Any = None) -> Any:
    """Metadata value of `key` ("{arch}" is filled in), or `default`."""
    return self.header.metadata.get(key.format(arch=self.arch), default)

  def require(self, key: str) -> Any:
    value = self.get(key)
    if value is None:
      raise ValueError(f"{self.path}: GGUF metadata key {key.format(arch=self.arch)!r} is "
                       "missing; the file is incomplete (convert the model again with "
                       "llama.cpp's convert_hf_to_gguf.py)")
    return value

  def shape(self, name: str) -> tuple[int, ...]:
    """Numpy (row-major) shape of tensor `name`: ggml's shape reversed."""
    return tuple(int(n) for n in reversed(self.tensors[name].shape))

  def dequantize(self, name: str) -> np.ndarray:
    """Tensor `name` as float32 in its numpy shape."""
    gguf = _gguf()
    ggml_type = self.tensors[name].ggml_type
    try:
      qtype = gguf.GGMLQuantizationType(ggml_type)
    except ValueError:
      qtype = None
    try:
      if qtype is None or qtype.name not in supported_types():
        raise NotImplementedError
      values = gguf.quants.dequantize(self.header.raw(name), qtype)
    except NotImplementedError as e:
      type_name = qtype.name if qtype is not None else f"ggml type {ggml_type}"
      raise ValueError(
          f"{self.path}: tensor {name} is stored as {type_name}, which the gguf package "
          f"cannot dequantise (supported: {', '.join(supported_types())}); re-quantise the "
          "model to one of those (e.g. Q8_0 or Q4_K_M) or load its HF checkpoint") from e
    return np.asarray(values, np.float32).reshape(self.shape(name))


def _layer_types(f: GGUFFile, num_layers: int) -> list[str] | None:
  """HF `layer_types` from `{arch}.attention.sliding_window_pattern` or llama.cpp's default."""
  pattern = f.get("{arch}.attention.sliding_window_pattern")
  if pattern is None:
    pattern = {"gemma3": 6, "gemma2": 2}.get(f.arch)
  if pattern is None:
    return None
  if isinstance(pattern, list):                # one bool per layer: True = sliding
    if len(pattern) != num_layers:
      raise ValueError(f"{f.path}: {f.arch}.attention.sliding_window_pattern has "
                       f"{len(pattern)} entries but block_count={num_layers}")
    local = [bool(p) for p in pattern]
  else:                                        # every n-th layer is global
    n = int(pattern)
    local = [n > 0 and (i % n) < n - 1 for i in range(num_layers)]
  return ["sliding_attention" if s else "full_attention" for s in local]


def hf_config_from_gguf(f: GGUFFile) -> dict[str, Any]:
  """An HF config.json dict describing the model in `f` (see the module docstring)."""
  arch = f.arch
  num_layers = int(f.require("{arch}.block_count"))
  embed_dim = int(f.require("{arch}.embedding_length"))
  num_heads = int(f.require("{arch}.attention.head_count"))
  kv = f.get("{arch}.attention.head_count_kv", num_heads)
  if isinstance(kv, list):
    if len(set(kv)) != 1:
      raise ValueError(f"{f.path}: per-layer kv head counts {sorted(set(kv))} are not supported")
    kv = kv[0]
  head_dim = f.get("{arch}.attention.key_length")
  value_dim = f.get("{arch}.attention.value_length", head_dim)
  if head_dim is None:
    head_dim = f.get("{arch}.rope.dimension_count") if arch == "llama" else None
  head_dim = int(head_dim or embed_dim // num_heads)
  if value_dim not in (None, head_dim):
    raise ValueError(f"{f.path}: key_length {head_dim} != value_length {value_dim} is not "
                     "supported")
  if "token_embd.weight" not in f.tensors:
    raise ValueError(f"{f.path}: no token_embd.weight tensor; not a causal LM of a supported "
                     "architecture")
  hf_arch, model_type = ARCHITECTURES[arch]
  hf: dict[str, Any] = dict(
      architectures=[hf_arch], model_type=model_type, num_hidden_layers=num_layers,
      hidden_size=embed_dim, intermediate_size=int(f.require("{arch}.feed_forward_length")),
      num_attention_heads=num_heads, num_key_value_heads=int(kv), head_dim=head_dim,
      vocab_size=f.shape("token_embd.weight")[0],
      tie_word_embeddings="output.weight" not in f.tensors,
      bos_token_id=f.get("tokenizer.ggml.bos_token_id"),
      eos_token_id=f.get("tokenizer.ggml.eos_token_id"),
      pad_token_id=f.get("tokenizer.ggml.padding_token_id"))
  hf = {k: v for k, v in hf.items() if v is not None}
  optional = {"max_position_embeddings": "{arch}.context_length",
              "rms_norm_eps": "{arch}.attention.layer_norm_rms_epsilon",
              "rope_theta": "{arch}.rope.freq_base",
              "sliding_window": "{arch}.attention.sliding_window",
              "attn_logit_softcapping": "{arch}.attn_logit_softcapping",
              "final_logit_softcapping": "{arch}.final_logit_softcapping"}
  for hf_key, key in optional.items():
    value = f.get(key)
    if value is not None:
      hf[hf_key] = value
  if "rope_freqs.weight" in f.tensors:
    raise ValueError(f"{f.path}: rope_freqs.weight (Llama-3.1-style rope scaling) is not "
                     "supported from GGUF; load the model's HF checkpoint instead")
  scaling = f.get("{arch}.rope.scaling.type", "none")
  factor = f.get("{arch}.rope.scaling.factor")
  if factor is None and f.get("{arch}.rope.scale_linear") is not None:
    scaling, factor = "linear", 1.0 / float(f.get("{arch}.rope.scale_linear"))
  if scaling != "none" and not (scaling == "linear" and factor in (None, 1.0)):
    hf["rope_scaling"] = {"rope_type": scaling, "factor": float(factor or 1.0)}
  if arch in _LAYERS_27B:
    types = _layer_types(f, num_layers)
    hf["layer_types"] = types
    hf["query_pre_attn_scalar"] = (embed_dim // num_heads if num_layers == _LAYERS_27B[arch]
                                   else head_dim)
  if arch == "gemma3":
    hf["rope_local_base_freq"] = float(f.get("{arch}.rope.freq_base_swa", 10_000.0))
  if arch == "qwen2":
    hf["use_sliding_window"] = False
  return hf


def _hf_to_gguf_names(f: GGUFFile, config: ModelConfig) -> dict[str, str]:
  """HF tensor name -> GGUF tensor name, for the tensors `config` needs."""
  gguf = _gguf()
  arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == f.arch)
  table = gguf.get_tensor_name_map(arch_id, config.num_layers)
  out = {}
  for t in weights_lib.hf_tensor_map(config).values():
    base, suffix = t.name.rsplit(".", 1)
    name = table.get_name(base)
    if name is None:
      raise AssertionError(f"gguf has no {f.arch} name for {t.name}")
    out[t.name] = f"{name}.{suffix}"
  return out


def _unpermute(w_RD: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's rope permutation of Llama q / k rows (per head: pairs -> halves)."""
  rows = w_RD.shape[0]
  return (w_RD.reshape(heads, rows // heads // 2, 2, *w_RD.shape[1:])
          .swapaxes(1, 2).reshape(w_RD.shape))


class _Lazy:
  """A param source that dequantises on first access. One slot is shared by all, so the
  host holds one dequantised tensor at a time while params are placed."""
  _slot: list = [None, None]

  def __init__(self, produce: Callable[[], np.ndarray], shape: tuple[int, ...]):
    self.produce, self.shape = produce, shape

  def __getitem__(self, index):
    if _Lazy._slot[0] is not self:
      _Lazy._slot[:] = [self, self.produce()]
    return _Lazy._slot[1][index]


def gguf_sources(f: GGUFFile, config: ModelConfig) -> dict[str, _Lazy]:
  """Our param path -> lazy float32 array in our layout (names and shapes checked)."""
  names = _hf_to_gguf_names(f, config)
  sources, used = {}, set()
  for path, t in weights_lib.hf_tensor_map(config).items():
    name = names[t.name]
    if name not in f.tensors:
      raise ValueError(f"{f.path}: tensor {name} (HF {t.name}, for param {path}) is missing; "
                       "the file does not match its own metadata")
    if f.shape(name) != t.shape:
      raise ValueError(f"{f.path}: tensor {name} has shape {f.shape(name)}, but the metadata "
                       f"implies {t.shape} (HF {t.name})")

    def produce(name=name, t=t):
      w = f.dequantize(name)
      if f.arch in _NORM_OFFSET and name.endswith("norm.weight"):
        w = w - 1.0
      if f.arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
        w = _unpermute(w, config.num_heads if "attn_q" in name else config.num_kv_heads)
      return np.ascontiguousarray(t.to_ours(w))

    sources[path] = _Lazy(produce, tuple(t.to_ours(np.empty(t.shape, np.bool_)).shape))
    used.add(name)
  unused = sorted(set(f.tensors) - used)
  if unused:
    raise ValueError(f"{f.path}: {len(unused)} tensors are not used by the model its metadata "
                     f"describes (e.g. {unused[:4]}); metadata and tensors disagree")
  return sources


def cache_dir() -> pathlib.Path:
  """Where converted GGUF tokenizers are kept: $SCORE_JAX_CACHE, else ~/.cache/score_jax."""
  root = os.environ.get("SCORE_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "score_jax")
  return pathlib.Path(root) / "gguf_tokenizers"


def tokenizer_dir(f: GGUFFile) -> pathlib.Path | None:
  """A directory with the tokenizer.json + tokenizer_config.json of `f`'s embedded
  tokenizer (converted once, then cached); None when the file carries no tokenizer."""
  if f.get("tokenizer.ggml.model") is None:
    return None
  try:
    import transformers  # pylint: disable=import-outside-toplevel
    from transformers.integrations.gguf import (  # pylint: disable=import-outside-toplevel
        convert_gguf_tokenizer, get_gguf_tokenizer)
  except ImportError as e:
    raise ImportError(f"building the tokenizer embedded in {f.path} needs transformers "
                      "(pip install transformers); or pass tokenizer=... to load()") from e
  stat = f.path.stat()
  key = hashlib.sha256(f"{f.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:"
                       f"{transformers.__version__}:{TOKENIZER_FORMAT}".encode()).hexdigest()[:20]
  target = cache_dir() / key
  if (target / "tokenizer_config.json").is_file():
    return target
  arch, tokenizer_dict, tok_config = get_gguf_tokenizer(str(f.path))
  backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
  bos = tok_config.get("bos_token")
  if tok_config.get("add_bos_token") and bos is not None:
    # As in the Hub's tokenizer.json files, so that an exported copy adds BOS too
    # (HFTokenizer encodes without special tokens and adds BOS itself).
    from tokenizers import processors  # pylint: disable=import-outside-toplevel
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
        special_tokens=[(bos, backend.token_to_id(bos))])
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=target.parent))
  except OSError:                       # unwritable cache: convert into a private temp dir
    tmp = target = pathlib.Path(tempfile.mkdtemp(prefix="score_jax_gguf_tok_"))
  backend.save(str(tmp / "tokenizer.json"))
  tok_config = {k: v for k, v in tok_config.items() if v is not None}
  if not tok_config.get("add_bos_token", True):
    tok_config["bos_token"] = None      # e.g. Qwen: the file names a BOS it never adds
  tok_config["source_gguf"] = str(f.path)
  (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
  if tmp != target:
    try:
      os.rename(tmp, target)
    except OSError:                     # another process got there first
      pass
  return target if (target / "tokenizer_config.json").is_file() else tmp


def load_gguf(path: str | pathlib.Path, *, dtype: str = "float32",
              compute_dtype: str | None = None, mesh=None):
  """Loads a .gguf file.

  Returns:
    (config, graphdef, params, the synthesised HF config dict, tokenizer directory or None).
  """
  f = GGUFFile(path)
  hf = hf_config_from_gguf(f)
  config = hf_config_lib.config_from_hf(hf, source=str(f.path), dtype=compute_dtype or dtype,
                                        param_dtype=dtype)
  sources = gguf_sources(f, config)
  try:
    graphdef, params = weights_lib.build_params(config, sources, mesh, str(f.path))
  finally:
    _Lazy._slot[:] = [None, None]
  return config, graphdef, params, hf, tokenizer_dir(f)
