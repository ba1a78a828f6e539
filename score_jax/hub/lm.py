"""Public API: load a pretrained checkpoint as an `LM`, run it, export it.

  lm = score_jax.load("path/to/Qwen2.5-0.5B-Instruct", dtype="bfloat16", mesh=mesh)
  logits_BTV = lm.logits(tokens_BT, valid_BT)            # float32 [B, T, V]
  texts = lm.generate(["What is 2+2?"], max_new_tokens=64, chat=True)
  score_jax.export_hf(lm, "out/")                        # transformers can load out/

`load` accepts a Hugging Face directory (config.json + safetensors; see
score_jax.hub.hf_weights), a llama.cpp `.gguf` file or a directory holding just one
(dequantised; see score_jax.hub.gguf), an official Gemma Orbax checkpoint
directory (see score_jax.hub.gemma_orbax; `family` names its architecture when
shapes cannot), or a Hugging Face Hub id "org/name" (score_jax.hub.resolve: fetched
with huggingface_hub when online, read from the local HF cache when offline). Each
misuse (a missing path, a file that is not .gguf, a directory that holds no model, an
uncached Hub id offline) is one exception with a one-line message naming the path
and the fix.

Chat: `has_chat_template` says whether the checkpoint's tokenizer ships a chat template
(tokenizer_config.json's chat_template, chat_template.jinja / .json, a GGUF's
tokenizer.chat_template; None when the format cannot tell, e.g. Gemma Orbax). A base
(pretrained, not instruction-tuned) checkpoint has none, and its model was never
trained on chat turns: `generate(..., chat=True)` then raises instead of producing
garbage; `chat="gemma"` (a format name) forces a format explicitly.
The `LM` holds the functional model (`graphdef` + sharded `params`, as everywhere
else in score_jax), its `ModelConfig`, the tokenizer shipped with the checkpoint
(None if there is none) and the family's chat format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from score_jax import multihost
from score_jax import sampler as sampler_lib
from score_jax.hub import gemma_orbax
from score_jax.hub import gguf as gguf_lib
from score_jax.hub import hf_config as hf_config_lib
from score_jax.hub import hf_weights as weights_lib
from score_jax.hub import resolve as resolve_lib
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
    has_chat_template: whether the tokenizer ships a chat template (False: a base
      model; None: the checkpoint format cannot tell).
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
  has_chat_template: bool | None = None

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

  def stop_ids(self, chat: chat_lib.ChatFormat | None = None) -> tuple[int, ...]:
    """Ids that end generation: EOS (tokenizer, config.json, generation_config.json)
    and the end-of-turn token of `chat` (default: the family's format) when the
    tokenizer has it."""
    ids: list[int] = []
    for cfg in (self.generation_config or {}, self.hf_config or {}):
      eos = cfg.get("eos_token_id")
      ids.extend([eos] if isinstance(eos, int) else list(eos or []))
    if self.tokenizer is not None:
      ids.append(self.tokenizer.eos_id)
      eot = self.tokenizer.token_id((chat or self.chat).end_of_turn)
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

  def chat_format_for(self, chat: bool | str | chat_lib.ChatFormat) -> chat_lib.ChatFormat:
    """The chat format `generate(chat=...)` uses: True -> the family's (refused for a base
    model without a chat template), a name ("gemma", "plain", ...) or a ChatFormat -> it."""
    if isinstance(chat, chat_lib.ChatFormat):
      return chat
    if isinstance(chat, str):
      return chat_lib.chat_format(chat, tokenizer=self.tokenizer)
    if self.has_chat_template is False:
      raise ValueError(chat_lib.base_model_message(self.source, self.chat.name))
    return self.chat

  def generate(self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int = 0,
               chat: bool | str | chat_lib.ChatFormat = False) -> list[str]:
    """Completions of `prompts` (greedy at temperature 0), without the stop token.

    With `chat=True` each prompt is a user turn in the family's chat format (and
    generation stops at its end-of-turn token); a base model without a chat template
    refuses it (ValueError): pass `chat=False`, or a format name such as "gemma" to
    force one. Otherwise the text is encoded as is, after BOS when the tokenizer has one.
    """
    if self.tokenizer is None:
      raise ValueError(f"{self.source} ships no tokenizer; pass tokenizer=... to load(), "
                       "or use generate_ids")
    if isinstance(prompts, str):
      raise TypeError("generate takes a list of prompts; wrap a single prompt in [...]")
    tok = self.tokenizer
    fmt = self.chat_format_for(chat) if chat else None
    if fmt is not None:
      chat_lib.end_of_turn_id(fmt, tok)     # clear error if the token is missing
      ids = [chat_lib.first_turn_ids(fmt, tok, p) for p in prompts]
    else:
      ids = [tok.encode(p, add_bos=True) for p in prompts]
    stops = set(self.stop_ids(fmt))
    out = self.generate_ids(ids, max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed, stop_ids=sorted(stops))
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
    # Qwen2.5's template names Alibaba Cloud in its default system turn (in
    # tokenizer_config.json, or chat_template.jinja with transformers >= 4.5x).
    d = pathlib.Path(tokenizer.path).parent if tokenizer is not None and tokenizer.path else None
    qwen25 = d is not None and any(
        (d / f).is_file() and "Alibaba Cloud" in (d / f).read_text()
        for f in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"))
    return chat_lib.chat_format("qwen2.5" if qwen25 else "qwen2")
  return chat_lib.chat_format("gemma")


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e


def has_chat_template(tokenizer_path: str | pathlib.Path | None) -> bool | None:
  """Whether the tokenizer at `tokenizer_path` (a file or its directory) ships a chat
  template: chat_template.jinja / .json, or tokenizer_config.json's chat_template (a
  GGUF's tokenizer.chat_template lands there). None when there is no tokenizer_config.json
  to tell (e.g. a bare tokenizer.model)."""
  if not tokenizer_path:
    return None
  p = pathlib.Path(tokenizer_path)
  d = p if p.is_dir() else p.parent
  if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
    return True
  cfg = _read_json(d / "tokenizer_config.json")
  return None if cfg is None else bool(cfg.get("chat_template"))


def warn_if_base_chat(lm: LM, chat_format: str, field: str = "config.chat_format"
                      ) -> str | None:
  """Prints (to stderr) and returns a warning when `lm` is a base model without a chat
  template but `chat_format` wraps prompts in chat turns; None otherwise."""
  if chat_format == "plain" or lm.has_chat_template is not False:
    return None
  message = (f"warning: {lm.source} is a base model without a chat template, but "
             f"{field}={chat_format!r} wraps every prompt in chat turns it was not trained "
             f"on; use {field}=plain (plain continuation) or an instruction-tuned checkpoint")
  print(message, file=sys.stderr, flush=True)
  return message


def abstract_model(config: ModelConfig, mesh: jax.sharding.Mesh | None):
  """graphdef and ShapeDtypeStruct params (with shardings when `mesh`), no allocation."""
  graphdef, abstract = model_lib.abstract_params(config)
  if mesh is not None:
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        model_lib.param_shardings(abstract, mesh))
  return graphdef, abstract


def _locate(path: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None, str]:
  """(local path, the .gguf file to read or None, kind: "gguf" | "hf" | "orbax"), or one
  exception with a one-line message naming the path and the fix."""
  p = resolve_lib.resolve(path)
  if p.is_file():
    if p.suffix == ".gguf":
      return p, p, "gguf"
    raise ValueError(f"{p} is a file, not a checkpoint; pass the directory that holds it "
                     f"({p.parent}) if it is a Hugging Face model, or a .gguf file")
  if (p / "config.json").is_file():
    return p, None, "hf"
  gguf_file = gguf_lib.find_gguf(p)
  if gguf_file is not None:
    return p, gguf_file, "gguf"
  if gemma_orbax.is_orbax_dir(p):
    return p, None, "orbax"
  raise FileNotFoundError(f"{p} has no config.json, no .gguf file and no Orbax checkpoint; "
                          f"pass {resolve_lib.KINDS}")


def load(path: str | pathlib.Path, *, dtype: str = "float32", compute_dtype: str | None = None,
         mesh: jax.sharding.Mesh | None = None, family: str | None = None,
         tokenizer: str | pathlib.Path | tokenizer_lib.Tokenizer | None = None,
         overrides: dict[str, Any] | None = None, with_params: bool = True) -> LM:
  """Loads a pretrained checkpoint as an `LM`.

  Args:
    path: an HF directory (config.json + model.safetensors or sharded with
      model.safetensors.index.json), a `.gguf` file (or a directory holding exactly
      one and no safetensors; its embedded tokenizer is used), an official Gemma
      Orbax checkpoint directory, or a Hugging Face Hub id "org/name".
    dtype: param storage dtype, "float32" or "bfloat16" (whatever the file holds).
    compute_dtype: activation dtype (default: `dtype`).
    mesh: shard params over this mesh (`score_jax.mesh.make_mesh`); None: one device.
    family: Orbax only: "gemma" | "gemma2" | "gemma3" or a variant such as
      "gemma3-1b" (default: inferred from the params). For an HF directory it must
      agree with config.json if given.
    tokenizer: a tokenizer (or its path) to use instead of the checkpoint's.
    overrides: Orbax only: ModelConfig fields that shapes cannot tell.
    with_params: False reads no weights (HF and GGUF; Orbax checkpoints are read in
      full): `params` are ShapeDtypeStructs (in `mesh`'s shardings), a restore target
      for trained params (score_jax.export).
  """
  for name, value in (("dtype", dtype), ("compute_dtype", compute_dtype or dtype)):
    if value not in DTYPES:
      raise ValueError(f"{name}={value!r}; expected one of {DTYPES}")
  p, gguf_file, kind = _locate(path)
  source = str(p) if p == pathlib.Path(os.fspath(path)).expanduser() else os.fspath(path)
  if overrides and kind != "orbax":
    raise ValueError(f"overrides= applies to Orbax checkpoints; {p}'s "
                     f"{'GGUF metadata' if kind == 'gguf' else 'config.json'} is authoritative")
  hf_config = generation_config = None
  dtypes = dict(dtype=compute_dtype or dtype, param_dtype=dtype)
  if kind == "gguf":
    if with_params:
      config, graphdef, params, hf_config, tok_path = gguf_lib.load_gguf(
          gguf_file, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh)
    else:
      f = gguf_lib.GGUFFile(gguf_file)
      hf_config = gguf_lib.hf_config_from_gguf(f)
      config = hf_config_lib.config_from_hf(hf_config, source=str(f.path), **dtypes)
      (graphdef, params), tok_path = abstract_model(config, mesh), gguf_lib.tokenizer_dir(f)
    if family is not None and family != config.family:
      raise ValueError(f"family={family!r} but {gguf_file} holds a {config.family!r} model")
  elif kind == "hf":
    if with_params:
      config, graphdef, params, hf_config = weights_lib.load_hf(
          p, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh)
    else:
      hf_config = weights_lib.read_hf_config(p)
      config = hf_config_lib.config_from_hf(hf_config, source=str(p / "config.json"), **dtypes)
      graphdef, params = abstract_model(config, mesh)
    if family is not None and family != config.family and not (
        family in gemma_orbax.VARIANTS and gemma_orbax.VARIANTS[family][0] == config.family):
      raise ValueError(f"family={family!r} but {p / 'config.json'} describes a "
                       f"{config.family!r} model")
    generation_config = _read_json(p / "generation_config.json")
    tok_path = p if any((p / f).is_file() for f in _TOKENIZER_FILES) else None
  else:
    config, graphdef, params = gemma_orbax.load_gemma_orbax(
        p, family=family, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh,
        overrides=overrides)
    tok_path = gemma_orbax.find_tokenizer(p)
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
            chat=_chat_for(config.family, tok), source=source, mesh=mesh,
            hf_config=hf_config, generation_config=generation_config,
            has_chat_template=has_chat_template(tok.path if tok is not None else None))
