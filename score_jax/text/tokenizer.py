"""Tokenizers: one small interface over characters, SentencePiece and HF `tokenizers`.

Every tokenizer maps text to a flat list of int ids and back, knows its `bos_id`
(None when the family has no BOS, e.g. Qwen2), `eos_id` and `pad_id`, and can look
up the id of a special piece such as "<end_of_turn>" (`token_id`). Three kinds:

* `CharTokenizer` -- one id per character of a fixed alphabet, after a few special
  tokens; for the synthetic tasks and tests.
* `SentencePieceTokenizer` -- a SentencePiece `.model` file (Gemma's official
  `tokenizer.model`).
* `HFTokenizer` -- a Hugging Face `tokenizer.json` (Llama 3, Qwen2, HF-format Gemma),
  with `tokenizer_config.json` / `special_tokens_map.json` naming bos / eos / pad
  (`score_jax.text.hf_tokenizer`).

The conventions they share are in `score_jax.text.base`.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Iterable, Mapping, Sequence

from score_jax.text.base import Tokenizer
from score_jax.text.hf_tokenizer import HFTokenizer

# Gemma's chat markers: user-defined pieces that `skip_special` drops, as
# `additional_special_tokens` in Gemma's tokenizer_config.json does for HF.
_SENTENCEPIECE_CHAT_MARKERS = ("<start_of_turn>", "<end_of_turn>")


def _special_regex(pieces: Iterable[str]) -> re.Pattern | None:
  """Alternation matching any of `pieces`, longest first (None when empty)."""
  pieces = sorted(set(pieces), key=len, reverse=True)
  return re.compile("|".join(map(re.escape, pieces))) if pieces else None


class CharTokenizer(Tokenizer):
  """One id per character: ids 0..len(specials)-1 are the specials, then the alphabet.

  With the default specials, pad=0, bos=1, eos=2 and "<eot>"=3. Specials written in
  the text are matched before single characters.
  """

  def __init__(self, alphabet: str,
               specials: Sequence[str] = ("<pad>", "<bos>", "<eos>", "<eot>")):
    specials = tuple(specials)
    if not alphabet:
      raise ValueError("CharTokenizer: the alphabet is empty; pass the characters the task uses")
    dupes = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if dupes:
      raise ValueError(f"CharTokenizer: alphabet repeats the characters {dupes}; list each once")
    if len(set(specials)) != len(specials) or any(not s for s in specials):
      raise ValueError(f"CharTokenizer: specials {specials} must be distinct non-empty strings")
    clash = [s for s in specials if s in alphabet and len(s) == 1]
    if clash:
      raise ValueError(f"CharTokenizer: specials {clash} are also alphabet characters")
    for required in ("<pad>", "<eos>"):
      if required not in specials:
        raise ValueError(f"CharTokenizer: specials {specials} lack {required!r}, which it needs")
    self.alphabet = alphabet
    self.specials = specials
    self._piece_to_id = {s: i for i, s in enumerate(specials)}
    self._piece_to_id.update({c: len(specials) + i for i, c in enumerate(alphabet)})
    self._id_to_piece_list = list(specials) + list(alphabet)
    self._special_re = _special_regex(specials)
    self.vocab_size = len(self._id_to_piece_list)
    self.pad_id = self._piece_to_id["<pad>"]
    self.eos_id = self._piece_to_id["<eos>"]
    self.bos_id = self._piece_to_id.get("<bos>")
    self.path = None

  def _encode(self, text: str) -> list[int]:
    ids, pos = [], 0
    while pos < len(text):
      m = self._special_re.match(text, pos) if self._special_re else None
      if m:
        ids.append(self._piece_to_id[m.group()])
        pos = m.end()
        continue
      ch = text[pos]
      i = self._piece_to_id.get(ch)
      if i is None:
        raise ValueError(
            f"CharTokenizer: character {ch!r} (U+{ord(ch):04X}) at position {pos} of the text "
            f"is not in the alphabet {self.alphabet!r}; add it to the alphabet "
            "(config field tokenizer.alphabet)")
      ids.append(i)
      pos += 1
    return ids

  def _decode(self, ids: list[int], skip_special: bool) -> str:
    n = len(self.specials)
    return "".join(self._id_to_piece_list[i] for i in ids if not (skip_special and i < n))

  def token_id(self, piece: str) -> int | None:
    return self._piece_to_id.get(piece)

  def _id_to_piece(self, i: int) -> str:
    return self._id_to_piece_list[i]


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model file (e.g. Gemma's `tokenizer.model`).

  bos / eos / pad / unk ids come from the model; with no pad piece, `pad_id` is
  `eos_id`. User-defined pieces (Gemma's "<start_of_turn>") are single tokens in
  text, as SentencePiece matches them itself; control pieces ("<bos>", "<eos>",
  "<pad>") and the unk piece written in the text are matched here, as HF does.
  `skip_special` drops control pieces and `special_tokens` (default: the Gemma
  chat markers the model has). Text is split at such pieces before encoding; with
  `add_dummy_prefix` models (not Gemma) the piece after one gets a leading "▁".
  """

  def __init__(self, path: str | pathlib.Path, *,
               special_tokens: Sequence[str] | None = None):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f"SentencePiece model {path} does not exist")
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.Load(str(path))
    except (OSError, RuntimeError) as e:
      raise ValueError(f"{path} is not a SentencePiece model file: {e}") from e
    sp = self._sp
    self.path = str(path)
    self.vocab_size = sp.get_piece_size()
    self.unk_id = sp.unk_id()
    self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
    if sp.eos_id() < 0:
      raise ValueError(f"SentencePiece model {path} has no eos piece (eos_id=-1); "
                       "retrain it with --eos_id set")
    self.eos_id = sp.eos_id()
    self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id
    self._control = {i for i in range(self.vocab_size) if sp.is_control(i)}
    if special_tokens is None:
      special_tokens = [p for p in _SENTENCEPIECE_CHAT_MARKERS if self.token_id(p) is not None]
    extra = {}
    for piece in special_tokens:
      i = self.token_id(piece)
      if i is None:
        raise ValueError(f"special token {piece!r} is not a piece of SentencePiece model {path}")
      extra[piece] = i
    self._skipped = self._control | set(extra.values())
    # Pieces whose text in the input must map to their id (SentencePiece itself
    # only does this for user-defined pieces).
    self._text_specials = {sp.id_to_piece(i): i for i in self._control}
    if self.unk_id >= 0:
      self._text_specials[sp.id_to_piece(self.unk_id)] = self.unk_id
    self._special_re = _special_regex(self._text_specials)

  def _encode(self, text: str) -> list[int]:
    if self._special_re is None or not self._special_re.search(text):
      return self._sp.encode(text)
    ids, pos = [], 0
    for m in self._special_re.finditer(text):
      if m.start() > pos:
        ids.extend(self._sp.encode(text[pos:m.start()]))
      ids.append(self._text_specials[m.group()])
      pos = m.end()
    if pos < len(text):
      ids.extend(self._sp.encode(text[pos:]))
    return ids

  def _decode(self, ids: list[int], skip_special: bool) -> str:
    out, run = [], []
    for i in ids:
      if i in self._control or (skip_special and i in self._skipped):
        if run:
          out.append(self._sp.decode(run))
          run = []
        if not skip_special:
          out.append(self._sp.id_to_piece(i))
      else:
        run.append(i)
    if run:
      out.append(self._sp.decode(run))
    return "".join(out)

  def token_id(self, piece: str) -> int | None:
    i = self._sp.piece_to_id(piece)
    if i == self.unk_id and piece != self._sp.id_to_piece(self.unk_id):
      return None
    return i

  def _id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(i)


def load_tokenizer(path: str | pathlib.Path, **kwargs: Any) -> Tokenizer:
  """Loads a tokenizer from a file or a checkpoint directory.

  A directory is searched for tokenizer.json (HF; preferred, since its
  tokenizer_config.json names the special tokens) then tokenizer.model
  (SentencePiece). A `.json` file is read as HF, anything else as SentencePiece.
  `kwargs` go to the tokenizer class.
  """
  p = pathlib.Path(path).expanduser()
  if p.is_dir():
    if (p / "tokenizer.json").is_file():
      return HFTokenizer(p / "tokenizer.json", **kwargs)
    if (p / "tokenizer.model").is_file():
      return SentencePieceTokenizer(p / "tokenizer.model", **kwargs)
    raise FileNotFoundError(
        f"tokenizer directory {p} holds neither tokenizer.json (Hugging Face) nor "
        "tokenizer.model (SentencePiece); point tokenizer.path at the tokenizer file")
  if p.is_file():
    if p.suffix == ".json":
      return HFTokenizer(p, **kwargs)
    return SentencePieceTokenizer(p, **kwargs)
  raise FileNotFoundError(f"tokenizer path {p} does not exist")


_CONFIG_KEYS = {
    "char": {"kind", "alphabet", "specials"},
    "sentencepiece": {"kind", "path", "special_tokens"},
    "hf": {"kind", "path", "bos_token", "eos_token", "pad_token"},
    "auto": {"kind", "path"},
}


def tokenizer_from_config(cfg: Mapping[str, Any]) -> Tokenizer:
  """Builds a tokenizer from a config section.

  Fields: `kind` ("char" | "sentencepiece" | "hf" | "auto"); for "char"
  `alphabet` (and optional `specials`); for the others `path` (plus optional
  `special_tokens` for sentencepiece, `bos_token` / `eos_token` / `pad_token` for
  hf). Fields of other kinds may be present when empty (None or "") so that one
  base config can list them all; anything else is an error.
  """
  if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict
    cfg = cfg.to_dict()
  cfg = dict(cfg)
  kind = cfg.get("kind")
  if kind not in _CONFIG_KEYS:
    raise ValueError(f"tokenizer.kind={kind!r}; expected one of {sorted(_CONFIG_KEYS)}")
  all_keys = set().union(*_CONFIG_KEYS.values())
  unknown = sorted(set(cfg) - all_keys)
  if unknown:
    raise ValueError(f"unknown tokenizer config fields {unknown}; known: {sorted(all_keys)}")
  stray = sorted(k for k in set(cfg) - _CONFIG_KEYS[kind] if cfg[k] not in (None, "", ()))
  if stray:
    raise ValueError(f"tokenizer fields {stray} do not apply to tokenizer.kind={kind!r}; "
                     f"it uses {sorted(_CONFIG_KEYS[kind] - {'kind'})}")
  opts = {k: v for k, v in cfg.items()
          if k in _CONFIG_KEYS[kind] and k != "kind" and v not in (None, "")}
  if kind == "char":
    if "alphabet" not in opts:
      raise ValueError("tokenizer.kind='char' needs tokenizer.alphabet")
    return CharTokenizer(**opts)
  path = opts.pop("path", None)
  if not path:
    raise ValueError(f"tokenizer.kind={kind!r} needs tokenizer.path (file or directory)")
  if kind == "sentencepiece":
    return SentencePieceTokenizer(path, **opts)
  if kind == "hf":
    return HFTokenizer(path, **opts)
  return load_tokenizer(path)


def check_vocab_fits(tokenizer: Tokenizer, model_vocab_size: int, source: str) -> None:
  """Raises ValueError if the tokenizer has ids the model's embedding lacks.

  Args:
    tokenizer: the tokenizer that will feed the model.
    model_vocab_size: rows of the model's embedding (ModelConfig.vocab_size).
    source: where `model_vocab_size` came from (checkpoint path or config name),
      for the error message.
  """
  if tokenizer.vocab_size > model_vocab_size:
    raise ValueError(
        f"tokenizer {tokenizer.path or repr(tokenizer)} has vocab_size={tokenizer.vocab_size} "
        f"but the model from {source} has vocab_size={model_vocab_size}: ids >= "
        f"{model_vocab_size} would index past its embedding. Use the tokenizer shipped with "
        f"the checkpoint, or a model with vocab_size >= {tokenizer.vocab_size}.")
