"""Tiny random Hugging Face checkpoints of each model family, with a family-like tokenizer.

`make_checkpoint(directory, family, corpus=...)` writes what `score_jax.load` (and
`config.init.checkpoint`) reads for a real model, at toy size:

  config.json + model.safetensors   random transformers weights (2 layers, D=32)
  generation_config.json            the family's EOS ids (e.g. Gemma 2: <eos>, <end_of_turn>)
  tokenizer.json                    a byte-level BPE trained on `corpus`, with the family's
                                    special tokens where the real tokenizer has them
  tokenizer_config.json             bos / eos / pad as the real one names them
  chat_template.jinja               the family's official chat template (tests/text/test_chat.py;
                                    older transformers put it in tokenizer_config.json)

Families (`FAMILIES`): "gemma" (Gemma 1.1 it), "gemma2" (Gemma 2 it), "qwen2.5"
(Qwen2.5 Instruct), "llama3" (Meta-Llama-3 Instruct). Layouts follow the real tokenizers:
Gemma's specials come first (<pad>=0, <eos>=1, <bos>=2, <unk>=3, then the turn markers);
Qwen's and Llama 3's come after the BPE vocabulary; Qwen has no BOS and its model's
embedding is larger than the tokenizer (Qwen2.5-1.5B: 151,936 rows for 151,665 ids), which
`vocab_padding` reproduces.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Sequence

from tests.text.test_chat import GEMMA_TEMPLATE, LLAMA3_TEMPLATE, QWEN25_TEMPLATE


@dataclasses.dataclass(frozen=True)
class Family:
  """What a family's tokenizer and config look like."""
  name: str                       # key of FAMILIES
  model_family: str               # score_jax ModelConfig.family
  chat_format: str                # score_jax.text.chat format name
  template: str                   # official Jinja chat template
  specials_first: tuple[str, ...]  # special tokens at ids 0, 1, ... (before the BPE pieces)
  specials_last: tuple[str, ...]   # special tokens after the BPE pieces
  bos: str | None
  eos: str
  pad: str | None
  end_of_turn: str
  generation_eos: tuple[str, ...]  # generation_config.json eos_token_id


_GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")

FAMILIES = {
    "gemma": Family("gemma", "gemma", "gemma", GEMMA_TEMPLATE, _GEMMA_SPECIALS, (),
                    "<bos>", "<eos>", "<pad>", "<end_of_turn>", ("<eos>",)),
    "gemma2": Family("gemma2", "gemma2", "gemma", GEMMA_TEMPLATE, _GEMMA_SPECIALS, (),
                     "<bos>", "<eos>", "<pad>", "<end_of_turn>", ("<eos>", "<end_of_turn>")),
    "qwen2.5": Family("qwen2.5", "qwen2", "qwen2.5", QWEN25_TEMPLATE, (),
                      ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                      None, "<|im_end|>", "<|endoftext|>", "<|im_end|>",
                      ("<|im_end|>", "<|endoftext|>")),
    "llama3": Family("llama3", "llama", "llama3", LLAMA3_TEMPLATE, (),
                     ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                      "<|end_header_id|>", "<|eot_id|>"),
                     "<|begin_of_text|>", "<|eot_id|>", None, "<|eot_id|>",
                     ("<|end_of_text|>", "<|eot_id|>")),
}

# Text the tokenizer always learns from (plus the caller's corpus): chat roles and the
# words of the SCoRe instructions, so that common pieces get merged.
_BASE_CORPUS = ["user model assistant system You are a helpful assistant.",
                "There might be an error in the solution above. Final Answer: The final answer "
                "is $5$. I hope it is correct. def f(x):\n    return x\n"]


def write_tokenizer(directory: str | pathlib.Path, family: str, corpus: Sequence[str] = (),
                    vocab_size: int = 512):
  """Trains and saves a byte-level BPE tokenizer shaped like `family`'s; returns it (HF).

  Args:
    directory: where tokenizer.json, tokenizer_config.json, special_tokens_map.json go.
    family: a key of FAMILIES.
    corpus: texts to learn merges from (real task text gives realistic lengths).
    vocab_size: ids in total, special tokens included.
  """
  import transformers  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  spec = FAMILIES[family]
  raw = Tokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.decoder = decoders.ByteLevel()
  raw.train_from_iterator(
      list(_BASE_CORPUS) + list(corpus),
      trainer=trainers.BpeTrainer(vocab_size=vocab_size - len(spec.specials_last),
                                  special_tokens=list(spec.specials_first), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if spec.specials_last:
    raw.add_special_tokens(list(spec.specials_last))
  names = {"bos_token": spec.bos, "eos_token": spec.eos, "pad_token": spec.pad}
  if "<unk>" in spec.specials_first:
    names["unk_token"] = "<unk>"
  hf = transformers.PreTrainedTokenizerFast(
      tokenizer_object=raw, chat_template=spec.template,
      **{k: v for k, v in names.items() if v is not None})
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  hf.save_pretrained(str(directory))
  return hf


def _model_config(spec: Family, vocab_size: int, ids: dict[str, int | None]):
  import transformers  # pylint: disable=import-outside-toplevel
  common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                max_position_embeddings=4096, bos_token_id=ids["bos"],
                eos_token_id=ids["eos"], pad_token_id=ids["pad"])
  if spec.model_family == "gemma":     # Gemma 2B: multi-query attention
    return transformers.GemmaConfig(**{**common, "num_key_value_heads": 1})
  if spec.model_family == "gemma2":    # a window shorter than the prompts, real softcaps
    return transformers.Gemma2Config(**common, sliding_window=32, query_pre_attn_scalar=8,
                                     attn_logit_softcapping=50.0,
                                     final_logit_softcapping=30.0)
  if spec.model_family == "qwen2":     # Qwen2.5-1.5B ties its embeddings
    return transformers.Qwen2Config(**common, tie_word_embeddings=True,
                                    rope_parameters=dict(rope_type="default", rope_theta=1e6))
  if spec.model_family == "llama":
    return transformers.LlamaConfig(**common, tie_word_embeddings=False,
                                    rope_parameters=dict(rope_type="default",
                                                         rope_theta=500000.0))
  raise ValueError(f"no tiny config for family {spec.model_family!r}")


def make_checkpoint(directory: str | pathlib.Path, family: str, *, corpus: Sequence[str] = (),
                    vocab_size: int = 512, vocab_padding: int = 0,
                    seed: int = 0) -> pathlib.Path:
  """Writes a tiny random `family` checkpoint with its tokenizer to `directory`.

  Args:
    directory: the checkpoint directory (created).
    family: a key of FAMILIES.
    corpus: texts for the tokenizer's merges.
    vocab_size: tokenizer ids.
    vocab_padding: extra embedding rows beyond the tokenizer (ids no text maps to).
    seed: torch seed of the random weights.

  Returns:
    `directory` as a Path.
  """
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  spec = FAMILIES[family]
  directory = pathlib.Path(directory)
  tok = write_tokenizer(directory, family, corpus, vocab_size)
  ids = {"bos": tok.convert_tokens_to_ids(spec.bos) if spec.bos else None,
         "eos": tok.convert_tokens_to_ids(spec.eos),
         "pad": tok.convert_tokens_to_ids(spec.pad) if spec.pad else None}
  torch.manual_seed(seed)
  config = _model_config(spec, len(tok) + vocab_padding, ids)
  model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
  model.save_pretrained(str(directory))
  generation = {"bos_token_id": ids["bos"],
                "eos_token_id": [tok.convert_tokens_to_ids(p) for p in spec.generation_eos]}
  if ids["pad"] is not None:
    generation["pad_token_id"] = ids["pad"]
  (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
  return directory
