"""Export an `LM` (or any config + params) as a Hugging Face checkpoint directory.

  score_jax.export_hf(lm, "out/")      # then AutoModelForCausalLM.from_pretrained("out/")
  export_model("out/", config=..., params=..., tokenizer=..., hf_config=...)  # a trained run
                                       # (python -m score_jax.export does this)

Writes config.json (score_jax.hub.hf_config.config_to_hf, carrying over the source's
token ids and max_position_embeddings), model.safetensors (or shards plus
model.safetensors.index.json above `max_shard_bytes`) in the param dtype or `dtype`,
the tokenizer files of the source (tokenizer.json, tokenizer_config.json,
special_tokens_map.json, tokenizer.model, ...), and generation_config.json (the
source's, else one naming BOS / EOS / pad and the chat end-of-turn token). The written
config.json is read back with `hf_config.config_from_hf` and must describe the same
architecture as `config` (else nothing is written). A GGUF-converted tokenizer's
tokenizer_config.json loses its `source_gguf` key (a local path).

Tensors are streamed: each param is gathered to the host (across processes with
`process_allgather` when sharded over several hosts), converted to HF layout
(score_jax.hub.hf_weights.hf_tensor_map) and written before the next is read, so host
memory holds one tensor at a time. Only process 0 writes.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any, Callable, Sequence

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from score_jax.hub import hf_config as hf_config_lib
from score_jax.hub import hf_weights as weights_lib

_DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16",
                np.dtype(np.float16): "F16"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
                    "chat_template.jinja", "chat_template.json")
# Non-architecture keys carried over from the source config.json.
_CARRIED_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings",
                 "initializer_range", "attention_dropout", "use_cache")


def _host(x: jax.Array) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def write_safetensors(path: pathlib.Path,
                      tensors: Sequence[tuple[str, tuple[int, ...], np.dtype,
                                              Callable[[], np.ndarray]]]) -> int:
  """Writes a .safetensors file, producing each tensor only when it is written.

  Args:
    path: output file.
    tensors: (name, shape, dtype, produce) in file order; `produce()` returns the array.

  Returns:
    Bytes of tensor data written.
  """
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, shape, dtype, _ in tensors:
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    header[name] = {"dtype": _DTYPE_NAMES[np.dtype(dtype)], "shape": list(shape),
                    "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)                 # align the data start to 8 bytes
  with open(path, "wb") as f:
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for name, shape, dtype, produce in tensors:
      arr = np.ascontiguousarray(produce(), dtype=dtype)
      if arr.shape != tuple(shape):
        raise AssertionError(f"{name}: produced shape {arr.shape} != {shape}")
      f.write(arr.tobytes())
  return offset


def _token_ids(tokenizer, hf_config) -> dict[str, Any]:
  """bos / eos / pad ids for config.json: the source's, else the tokenizer's."""
  src = hf_config or {}
  ids = {k: src[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in src}
  if tokenizer is not None:
    ids.setdefault("bos_token_id", tokenizer.bos_id)
    ids.setdefault("eos_token_id", tokenizer.eos_id)
    ids.setdefault("pad_token_id", tokenizer.pad_id)
  return ids


def _copy_tokenizer(tok, out: pathlib.Path) -> list[str]:
  """Copies the tokenizer's files next to the weights; returns their names."""
  if tok is None or not getattr(tok, "path", None):
    return []
  src = pathlib.Path(tok.path).parent
  copied = []
  for name in _TOKENIZER_FILES:
    if (src / name).is_file():
      shutil.copyfile(src / name, out / name)
      copied.append(name)
  if pathlib.Path(tok.path).name not in copied:       # e.g. tokenizer_2b.model
    target = "tokenizer.json" if tok.path.endswith(".json") else "tokenizer.model"
    shutil.copyfile(tok.path, out / target)
    copied.append(target)
  if "tokenizer_config.json" in copied:
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    if isinstance(cfg, dict) and cfg.pop("source_gguf", None) is not None:
      (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
  if "tokenizer_config.json" not in copied and copied == ["tokenizer.model"]:
    # An official Gemma download ships only tokenizer.model; tell AutoTokenizer what it is.
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
         "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True,
         "add_eos_token": False}, indent=2))
    copied.append("tokenizer_config.json")
  return copied


def _generation_config(tokenizer, chat, hf_config, generation_config) -> dict[str, Any]:
  if generation_config:
    return dict(generation_config)
  ids = _token_ids(tokenizer, hf_config)
  eos = ids.get("eos_token_id")
  eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
  if tokenizer is not None and chat is not None:
    eot = tokenizer.token_id(chat.end_of_turn)
    if eot is not None and eot not in eos:
      eos.append(eot)
  cfg = {k: v for k, v in ids.items() if k != "eos_token_id" and v is not None}
  if eos:
    cfg["eos_token_id"] = eos[0] if len(eos) == 1 else eos
  return cfg


def hf_config_for(config, *, tokenizer=None, hf_config=None, dtype_name: str) -> dict[str, Any]:
  """config.json of an export: `config_to_hf(config)` plus the source's non-architecture
  keys (_CARRIED_KEYS, token ids); checked to read back as the same architecture."""
  extra = {k: hf_config[k] for k in _CARRIED_KEYS if hf_config and k in hf_config}
  extra.update(_token_ids(tokenizer, hf_config))
  hf = hf_config_lib.config_to_hf(config, **extra, torch_dtype=dtype_name)
  back = hf_config_lib.config_from_hf(hf, source="the exported config.json",
                                      dtype=config.dtype, param_dtype=config.param_dtype)
  if diff := hf_config_lib.same_architecture(config, back):
    raise ValueError(f"the exported config.json would describe a different model ({diff} "
                     f"differ: {[(getattr(config, k), getattr(back, k)) for k in diff]}); "
                     f"this ModelConfig cannot be written as {hf['architectures'][0]}")
  return hf


def export_hf(lm, out_dir: str | pathlib.Path, *, dtype: str | None = None,
              max_shard_bytes: int = 5 * 2**30) -> pathlib.Path:
  """Writes `lm` (a `score_jax.hub.lm.LM`, or anything with config, params, tokenizer,
  chat, hf_config and generation_config attributes) as an HF checkpoint directory that
  `transformers` loads; see `export_model` for the arguments."""
  return export_model(out_dir, config=lm.config, params=lm.params, tokenizer=lm.tokenizer,
                      chat=lm.chat, hf_config=lm.hf_config,
                      generation_config=lm.generation_config, dtype=dtype,
                      max_shard_bytes=max_shard_bytes)


def export_model(out_dir: str | pathlib.Path, *, config, params, tokenizer=None, chat=None,
                 hf_config: dict[str, Any] | None = None,
                 generation_config: dict[str, Any] | None = None, dtype: str | None = None,
                 max_shard_bytes: int = 5 * 2**30) -> pathlib.Path:
  """Writes a model as an HF checkpoint directory that `transformers` loads.

  Args:
    out_dir: the directory to write (created; existing files are overwritten).
    config: its `ModelConfig`.
    params: its params (nnx.State, possibly sharded over several processes).
    tokenizer: its tokenizer (files copied from beside `tokenizer.path`), or None.
    chat: its chat format (end-of-turn token for generation_config.json), or None.
    hf_config: the source's config.json (token ids and max_position_embeddings are
      carried over), or None.
    generation_config: the source's generation_config.json (written as is), or None.
    dtype: tensor dtype in the file ("float32" | "bfloat16"); default the params'.
    max_shard_bytes: above this, split into model-0000i-of-0000n.safetensors shards.

  Returns:
    out_dir as a Path.
  """
  np_dtype = np.dtype(jax.numpy.dtype(dtype or config.param_dtype))
  if np_dtype not in _DTYPE_NAMES:
    raise ValueError(f"dtype={dtype!r}: export supports float32, bfloat16, float16")
  out = pathlib.Path(out_dir)
  dtype_name = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[_DTYPE_NAMES[np_dtype]]
  hf = hf_config_for(config, tokenizer=tokenizer, hf_config=hf_config, dtype_name=dtype_name)

  flat = {weights_lib.param_path(k): v for k, v in nnx.to_flat_state(params)}
  names = []
  for path, t in weights_lib.hf_tensor_map(config).items():
    if path not in flat:
      raise ValueError(f"params lack {path}, which ModelConfig({config.family}) needs")
    var = flat[path]
    produce = (lambda var=var, t=t: t.to_hf(_host(var.get_value())))
    names.append((t.name, t.shape, np_dtype, produce))

  shards: list[list] = [[]]
  size = 0
  for entry in names:
    nbytes = int(np.prod(entry[1])) * np_dtype.itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(entry)
    size += nbytes

  writer = jax.process_index() == 0
  if writer:
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("model*.safetensors")) + [out / weights_lib.INDEX_FILE]:
      stale.unlink(missing_ok=True)
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
  if len(shards) == 1:
    if writer:
      write_safetensors(out / weights_lib.SINGLE_FILE, shards[0])
    else:
      for *_, produce in shards[0]:
        produce()                     # take part in the collective gathers
  else:
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
      name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      if writer:
        total += write_safetensors(out / name, shard)
      else:
        for *_, produce in shard:
          produce()
      weight_map.update({entry[0]: name for entry in shard})
    if writer:
      (out / weights_lib.INDEX_FILE).write_text(json.dumps(
          {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  if writer:
    _copy_tokenizer(tokenizer, out)
    gen = _generation_config(tokenizer, chat, hf_config, generation_config)
    if gen:
      (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
  return out
