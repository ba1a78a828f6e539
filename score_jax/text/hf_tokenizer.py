"""`HFTokenizer`: a Hugging Face `tokenizer.json` behind the `score_jax.text.base` interface.

Special tokens (bos / eos / pad) come from the constructor, `tokenizer_config.json` and
`special_tokens_map.json` next to the file, in that order; see `HFTokenizer`. The shared
conventions (encode / decode / special pieces / vocab_size) are in `score_jax.text.base`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterable

from score_jax.text.base import EOS_CANDIDATES, PAD_CANDIDATES, Tokenizer


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path} should hold a JSON object, found {type(data).__name__}")
  return data


def _token_content(value: Any) -> str | None:
  """A special-token entry of tokenizer_config.json: a str, {"content": str} or null."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  raise ValueError(f"unexpected special-token entry {value!r}")


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizer.json`, loaded with the `tokenizers` package.

  bos / eos / pad come from (highest first) the constructor arguments,
  tokenizer_config.json, then special_tokens_map.json next to tokenizer.json. A
  null or missing bos_token means no BOS; a missing eos_token is looked up among
  common EOS pieces; a missing pad_token falls back to "<pad>"-like pieces, then
  to EOS. Decoding is the `tokenizers` decoder without transformers'
  `clean_up_tokenization_spaces` (which is lossy), so ids round-trip to text.
  """

  def __init__(self, path: str | pathlib.Path, *, bos_token: str | None = None,
               eos_token: str | None = None, pad_token: str | None = None):
    import tokenizers  # pylint: disable=import-outside-toplevel
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
      path = path / "tokenizer.json"
    if not path.is_file():
      raise FileNotFoundError(f"HF tokenizer file {path} does not exist")
    try:
      self._tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad files
      raise ValueError(f"{path} is not a Hugging Face tokenizer.json: {e}") from e
    self._tok.no_truncation()
    self._tok.no_padding()
    self.path = str(path)
    vocab = self._tok.get_vocab(with_added_tokens=True)
    self.vocab_size = max(vocab.values()) + 1

    config: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later wins
      file = path.parent / name
      if file.is_file():
        for key, value in _read_json(file).items():
          if key in ("bos_token", "eos_token", "pad_token"):
            try:
              config[key] = _token_content(value)
            except ValueError as e:
              raise ValueError(f"{file}: field {key}: {e}") from e
            sources[key] = f"{file} field {key}"
    for key, value in (("bos_token", bos_token), ("eos_token", eos_token),
                       ("pad_token", pad_token)):
      if value is not None:
        config[key], sources[key] = value, f"argument {key}"

    def lookup(key: str) -> int | None:
      piece = config.get(key)
      if piece is None:
        return None
      i = self._tok.token_to_id(piece)
      if i is None:
        raise ValueError(f"{sources[key]} names {piece!r}, which is not a token of {path}")
      return i

    self.bos_id = lookup("bos_token")
    eos_id = lookup("eos_token")
    if eos_id is None:
      eos_id = next((self._tok.token_to_id(p) for p in EOS_CANDIDATES
                     if self._tok.token_to_id(p) is not None), None)
    if eos_id is None:
      raise ValueError(
          f"cannot tell the end-of-sequence token of {path}: no eos_token in "
          "tokenizer_config.json / special_tokens_map.json next to it and none of "
          f"{EOS_CANDIDATES} in its vocabulary; pass eos_token=...")
    self.eos_id = eos_id
    pad_id = lookup("pad_token")
    if pad_id is None:
      pad_id = next((self._tok.token_to_id(p) for p in PAD_CANDIDATES
                     if self._tok.token_to_id(p) is not None), self.eos_id)
    self.pad_id = pad_id

  def _encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Iterable[str], *, add_bos: bool = False) -> list[list[int]]:
    texts = list(texts)
    for t in texts:
      if not isinstance(t, str):
        raise TypeError(f"HFTokenizer.encode_batch expects strs, got {type(t).__name__}")
    prefix = [self.bos_id] if add_bos and self.bos_id is not None else []
    return [prefix + e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

  def _decode(self, ids: list[int], skip_special: bool) -> str:
    return self._tok.decode(ids, skip_special_tokens=skip_special)

  def token_id(self, piece: str) -> int | None:
    return self._tok.token_to_id(piece)

  def _id_to_piece(self, i: int) -> str:
    piece = self._tok.id_to_token(i)
    if piece is None:  # a hole in a non-contiguous vocabulary
      raise ValueError(f"token id {i} is unused in {self.path}")
    return piece
