"""Tiny GGUF files written the way llama.cpp's convert_hf_to_gguf.py writes them.

`write_gguf(path, model, family)` takes a transformers model and writes its weights
under llama.cpp's names (`gguf.get_tensor_name_map`), with llama.cpp's two value
changes (Gemma norms stored as w + 1; Llama q / k rows permuted for its rope), the
metadata keys llama.cpp writes for the family, and a small sentencepiece-style
vocabulary. `types` picks the ggml type of each tensor (by a substring of its GGUF
name); norms and 1-D tensors stay F32 as llama.cpp keeps them.
"""

from __future__ import annotations

import numpy as np

gguf = __import__("pytest").importorskip("gguf")

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
            "<s>", "</s>"]
GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "gemma": "gemma", "gemma2": "gemma2",
             "gemma3": "gemma3"}


def vocab(size: int) -> tuple[list[str], list[float], list[int]]:
  """(tokens, scores, token types): specials (Gemma's, and the "<s>" / "</s>" that
  transformers' Llama tokenizer adds when missing), "▁", letters, then "▁"-words."""
  letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?+=")
  tokens = SPECIALS + ["\u2581"] + letters
  words = ["\u2581" + a + b for a in "abcdefgh" for b in "aeiou"]
  tokens += words[:size - len(tokens)]
  tokens += [f"<unused{i}>" for i in range(size - len(tokens))]
  types = [3, 3, 3, 2, 3, 4, 4, 3, 3] + [1] * (size - len(SPECIALS))
  scores = [0.0] * len(SPECIALS) + [-float(i) for i in range(size - len(SPECIALS))]
  return tokens, scores, types


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's LlamaModel.permute (q / k rows, for its rope layout)."""
  return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def write_gguf(path, model, family: str, *, types: dict[str, str] | None = None,
               skip_keys: tuple[str, ...] = (), extra_keys: dict | None = None,
               extra_tensors: dict[str, np.ndarray] | None = None) -> None:
  """Writes `model` (a transformers CausalLM) as a GGUF file at `path`."""
  cfg = model.config
  arch = GGUF_ARCH[family]
  arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
  names = gguf.get_tensor_name_map(arch_id, cfg.num_hidden_layers)
  w = gguf.GGUFWriter(str(path), arch)
  head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
  rope = cfg.rope_parameters
  rope = rope.get("full_attention", rope) if isinstance(rope, dict) else {}
  keys = {
      f"{arch}.context_length": ("uint32", cfg.max_position_embeddings),
      f"{arch}.block_count": ("uint32", cfg.num_hidden_layers),
      f"{arch}.embedding_length": ("uint32", cfg.hidden_size),
      f"{arch}.feed_forward_length": ("uint32", cfg.intermediate_size),
      f"{arch}.attention.head_count": ("uint32", cfg.num_attention_heads),
      f"{arch}.attention.head_count_kv": ("uint32", cfg.num_key_value_heads),
      f"{arch}.attention.layer_norm_rms_epsilon": ("float32", cfg.rms_norm_eps),
      f"{arch}.rope.freq_base": ("float32", rope.get("rope_theta", 10000.0)),
      "tokenizer.ggml.model": ("string", "llama"),
      "tokenizer.ggml.bos_token_id": ("uint32", 2),
      "tokenizer.ggml.eos_token_id": ("uint32", 1),
      "tokenizer.ggml.unknown_token_id": ("uint32", 3),
      "tokenizer.ggml.padding_token_id": ("uint32", 0),
      "tokenizer.ggml.add_bos_token": ("bool", True),
  }
  if family == "llama":
    keys[f"{arch}.rope.dimension_count"] = ("uint32", head_dim)
  if family.startswith("gemma"):
    keys[f"{arch}.attention.key_length"] = ("uint32", head_dim)
    keys[f"{arch}.attention.value_length"] = ("uint32", head_dim)
  if family in ("gemma2", "gemma3"):
    keys[f"{arch}.attention.sliding_window"] = ("uint32", cfg.sliding_window)
  if family == "gemma2":
    keys[f"{arch}.attn_logit_softcapping"] = ("float32", cfg.attn_logit_softcapping)
    keys[f"{arch}.final_logit_softcapping"] = ("float32", cfg.final_logit_softcapping)
  if rope.get("rope_type") == "linear":
    keys[f"{arch}.rope.scaling.type"] = ("string", "linear")
    keys[f"{arch}.rope.scaling.factor"] = ("float32", rope["factor"])
  keys.update(extra_keys or {})
  for key, (kind, value) in keys.items():
    if key not in skip_keys:
      getattr(w, f"add_{kind}")(key, value)
  tokens, scores, token_types = vocab(cfg.vocab_size)
  w.add_token_list(tokens)
  w.add_token_scores(scores)
  w.add_token_types(token_types)

  types = types or {}
  for hf_name, tensor in model.state_dict().items():
    if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue
    base, suffix = hf_name.rsplit(".", 1)
    name = f"{names.get_name(base)}.{suffix}"
    data = tensor.float().numpy()
    if family.startswith("gemma") and name.endswith("norm.weight"):
      data = data + 1.0
    if family == "llama" and name.endswith("attn_q.weight"):
      data = _permute(data, cfg.num_attention_heads)
    if family == "llama" and name.endswith("attn_k.weight"):
      data = _permute(data, cfg.num_key_value_heads)
    _add(w, name, data, "F32" if data.ndim == 1 else next(
        (t for pat, t in types.items() if pat in name), "F32"))
  for name, data in (extra_tensors or {}).items():
    _add(w, name, data, "F32")
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def _add(w, name: str, data: np.ndarray, type_name: str) -> None:
  qtype = gguf.GGMLQuantizationType[type_name]
  if type_name in ("F32", "F16"):
    w.add_tensor(name, np.ascontiguousarray(data, np.float32 if type_name == "F32" else np.float16))
  elif type_name == "I32":                  # a type nothing dequantises
    w.add_tensor(name, data.astype(np.int32))
  else:
    w.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
