"""Public API: load a pretrained checkpoint as an `LM`, run it, export it.

  lm = score_jax.load("path/to/Qwen2.5-0.5B-Instruct", dtype="bfloat16", mesh=mesh)
  logits_BTV = lm.logits(tokens_BT, valid_BT)            # float32 [B, T, V]
  texts = lm.generate(["What is 2+2?"], max_new_tokens=64, chat=True)
  score_jax.export_hf(lm, "out/")                        # transformers can load out/

`load` accepts a Hugging Face directory (config.json + safetensors; see
score_jax.hub.hf_weights), a llama.cpp `.gguf` file or a directory holding just one
(dequantised; see score_jax.hub.gguf), or an official Gemma Orbax checkpoint
directory (see score_jax.hub.gemma_orbax; `family` names its architecture when
shapes cannot).
The `LM` holds the functional model (`graphdef` + sharded `params`, as everywhere
else in score_jax), its `ModelConfig`, the tokenizer shipped with the checkpoint
(None if there is none) and the family's chat format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from score_jax import multihost
from score_jax import sampler as sampler_lib
from score_jax.hub import gemma_orbax
from score_jax.hub import gguf as gguf_lib
from score_jax.hub import hf_weights as weights_lib
from score_jax.hub.hf_export import export_hf  # noqa: F401  (public: score_jax.export_hf)
from score_jax.model import transformer as model_lib
from score_jax.model.config import ModelConfig
from score_jax.text import chat as chat_lib
from score_jax.text import tokenizer as tokenizer_lib

DTYPES = ("float32", "bfloat16")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def _forward_logits(graphdef, params, tokens_BT, valid_BT):
  return model_lib.forward(graphdef, params, tokens_BT, valid_BT)[0]


_forward_jit = jax.jit(_forward_logits, static_argnums=0)


@dataclasses.dataclass
class LM:
  """A loaded language model (see the module docstring).

  Attributes:
    config: the architecture.
    graphdef, params: the functional model (`score_jax.model.transformer.forward`).
    tokenizer: the checkpoint's tokenizer, or None if it ships none.
    chat: the family's chat format (`score_jax.text.chat`).
    source: the checkpoint path.
    mesh: the mesh params are sharded on (None: one device).
    hf_config: the source's parsed config.json (None for Orbax checkpoints).
    generation_config: the source's generation_config.json, if any.
  """
  config: ModelConfig
  graphdef: nnx.GraphDef
  params: nnx.State
  tokenizer: tokenizer_lib.Tokenizer | None
  chat: chat_lib.ChatFormat
  source: str
  mesh: jax.sharding.Mesh | None = None
  hf_config: dict[str, Any] | None = None
  generation_config: dict[str, Any] | None = None

  def _mesh_ctx(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def logits(self, tokens_BT: Any, valid_BT: Any = None) -> jax.Array:
    """float32 logits [B, T, V] of a (left-)padded batch; `valid_BT` marks real tokens."""
    tokens_BT = np.asarray(tokens_BT)
    if tokens_BT.ndim != 2:
      raise ValueError(f"tokens_BT must be [batch, length], got shape {tokens_BT.shape}")
    valid_BT = (np.ones(tokens_BT.shape, bool) if valid_BT is None
                else np.asarray(valid_BT, bool))
    if valid_BT.shape != tokens_BT.shape:
      raise ValueError(f"valid_BT shape {valid_BT.shape} != tokens_BT shape {tokens_BT.shape}")
    tokens = multihost.put_batch(tokens_BT.astype(np.int32), self.mesh)
    valid = multihost.put_batch(valid_BT, self.mesh)
    with self._mesh_ctx():
      return _forward_jit(self.graphdef, self.params, tokens, valid)

  def stop_ids(self) -> tuple[int, ...]:
    """Ids that end generation: EOS (tokenizer, config.json, generation_config.json)
    and the chat format's end-of-turn token when the tokenizer has it."""
    ids: list[int] = []
    for cfg in (self.generation_config or {}, self.hf_config or {}):
      eos = cfg.get("eos_token_id")
      ids.extend([eos] if isinstance(eos, int) else list(eos or []))
    if self.tokenizer is not None:
      ids.append(self.tokenizer.eos_id)
      eot = self.tokenizer.token_id(self.chat.end_of_turn)
      if eot is not None:
        ids.append(eot)
    return tuple(sorted(set(int(i) for i in ids)))

  def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                   temperature: float = 0.0, top_k: int | None = None,
                   top_p: float | None = None, seed: int = 0,
                   stop_ids: Sequence[int] | None = None) -> list[list[int]]:
    """New token ids for each prompt (ids), the stop token included when one ended it."""
    method = sampler_lib.sampling_method(temperature, top_k, top_p)
    if self.tokenizer is not None:
      method = sampler_lib.limit_vocab(method, self.tokenizer.vocab_size, self.config.vocab_size)
    pad_id = self.tokenizer.pad_id if self.tokenizer is not None else 0
    tokens, valid, _ = sampler_lib.left_pad(prompts, pad_id)
    out = sampler_lib.generate(
        self.graphdef, self.params, tokens, valid, max_new_tokens=max_new_tokens,
        method=method, rng=jax.random.key(seed),
        stop_ids=self.stop_ids() if stop_ids is None else tuple(stop_ids),
        pad_id=pad_id, mesh=self.mesh)
    toks, ok = np.asarray(out.tokens_BS), np.asarray(out.valid_BS)
    return [[int(t) for t, v in zip(row, m) if v] for row, m in zip(toks, ok)]

  def generate(self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int = 0,
               chat: bool = False) -> list[str]:
    """Completions of `prompts` (greedy at temperature 0), without the stop token.

    With `chat=True` each prompt is a user turn in the family's chat format (and
    generation stops at its end-of-turn token); otherwise the text is encoded as is,
    after BOS when the tokenizer has one.
    """
    if self.tokenizer is None:
      raise ValueError(f"{self.source} ships no tokenizer; pass tokenizer=... to load(), "
                       "or use generate_ids")
    if isinstance(prompts, str):
      raise TypeError("generate takes a list of prompts; wrap a single prompt in [...]")
    tok = self.tokenizer
    if chat:
      chat_lib.end_of_turn_id(self.chat, tok)     # clear error if the token is missing
      ids = [chat_lib.first_turn_ids(self.chat, tok, p) for p in prompts]
    else:
      ids = [tok.encode(p, add_bos=True) for p in prompts]
    stops = set(self.stop_ids())
    out = self.generate_ids(ids, max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed)
    texts = []
    for row in out:
      if row and row[-1] in stops:
        row = row[:-1]
      texts.append(tok.decode(row, skip_special=True))
    return texts


def _chat_for(family: str, tokenizer: tokenizer_lib.Tokenizer | None) -> chat_lib.ChatFormat:
  if family == "llama":
    return chat_lib.chat_format("llama3")
  if family == "qwen2":
    name = "qwen2"
    path = pathlib.Path(tokenizer.path).parent / "tokenizer_config.json" if (
        tokenizer is not None and tokenizer.path) else None
    if path is not None and path.is_file() and "Alibaba Cloud" in path.read_text():
      name = "qwen2.5"
    return chat_lib.chat_format(name)
  return chat_lib.chat_format("gemma")


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e


def load(path: str | pathlib.Path, *, dtype: str = "float32", compute_dtype: str | None = None,
         mesh: jax.sharding.Mesh | None = None, family: str | None = None,
         tokenizer: str | pathlib.Path | tokenizer_lib.Tokenizer | None = None,
         overrides: dict[str, Any] | None = None) -> LM:
  """Loads a pretrained checkpoint as an `LM`.

  Args:
    path: an HF directory (config.json + model.safetensors or sharded with
      model.safetensors.index.json), a `.gguf` file (or a directory holding exactly
      one and no safetensors; its embedded tokenizer is used), or an official Gemma
      Orbax checkpoint directory.
    dtype: param storage dtype, "float32" or "bfloat16" (whatever the file holds).
    compute_dtype: activation dtype (default: `dtype`).
    mesh: shard params over this mesh (`score_jax.mesh.make_mesh`); None: one device.
    family: Orbax only: "gemma" | "gemma2" | "gemma3" or a variant such as
      "gemma3-1b" (default: inferred from the params). For an HF directory it must
      agree with config.json if given.
    tokenizer: a tokenizer (or its path) to use instead of the checkpoint's.
    overrides: Orbax only: ModelConfig fields that shapes cannot tell.
  """
  for name, value in (("dtype", dtype), ("compute_dtype", compute_dtype or dtype)):
    if value not in DTYPES:
      raise ValueError(f"{name}={value!r}; expected one of {DTYPES}")
  p = pathlib.Path(path).expanduser()
  if not p.exists():
    raise FileNotFoundError(f"checkpoint path {p} does not exist")
  gguf_file = p if p.suffix == ".gguf" and p.is_file() else None
  if not p.is_dir() and gguf_file is None:
    raise ValueError(f"{p} is a file; pass the checkpoint directory that holds it (or a "
                     ".gguf file)")
  if gguf_file is None and not (p / "config.json").is_file():
    gguf_file = gguf_lib.find_gguf(p)
  hf_config = generation_config = None
  if gguf_file is not None:
    if overrides:
      raise ValueError("overrides= applies to Orbax checkpoints; a GGUF's metadata is "
                       "authoritative")
    config, graphdef, params, hf_config, tok_path = gguf_lib.load_gguf(
        gguf_file, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh)
    if family is not None and family != config.family:
      raise ValueError(f"family={family!r} but {gguf_file} holds a {config.family!r} model")
  elif (p / "config.json").is_file():
    if overrides:
      raise ValueError("overrides= applies to Orbax checkpoints; an HF config.json is "
                       "authoritative (edit it instead)")
    config, graphdef, params, hf_config = weights_lib.load_hf(
        p, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh)
    if family is not None and family != config.family and not (
        family in gemma_orbax.VARIANTS and gemma_orbax.VARIANTS[family][0] == config.family):
      raise ValueError(f"family={family!r} but {p / 'config.json'} describes a "
                       f"{config.family!r} model")
    generation_config = _read_json(p / "generation_config.json")
    tok_path = p if any((p / f).is_file() for f in _TOKENIZER_FILES) else None
  elif gemma_orbax.is_orbax_dir(p):
    config, graphdef, params = gemma_orbax.load_gemma_orbax(
        p, family=family, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh,
        overrides=overrides)
    tok_path = gemma_orbax.find_tokenizer(p)
  else:
    weights_lib.read_hf_config(p)   # raises: no config.json
    raise AssertionError("unreachable")
  if isinstance(tokenizer, tokenizer_lib.Tokenizer):
    tok = tokenizer
  elif tokenizer is not None:
    tok = tokenizer_lib.load_tokenizer(tokenizer)
  elif tok_path is not None:
    tok = tokenizer_lib.load_tokenizer(tok_path)
  else:
    tok = None
  if tok is not None:
    tokenizer_lib.check_vocab_fits(tok, config.vocab_size, source=str(p))
  return LM(config=config, graphdef=graphdef, params=params, tokenizer=tok,
            chat=_chat_for(config.family, tok), source=str(p), mesh=mesh,
            hf_config=hf_config, generation_config=generation_config)
