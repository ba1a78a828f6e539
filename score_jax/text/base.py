"""The tokenizer interface every tokenizer implements (`score_jax.text.tokenizer` has them).

Conventions shared by every tokenizer:

* `encode` never adds special tokens on its own; `add_bos=True` prepends `bos_id`
  (a no-op when the tokenizer has no BOS). Special pieces written in the text
  (e.g. "<end_of_turn>", "<eos>") become their single ids, as in HF tokenizers, so
  a rendered chat transcript tokenizes to the ids the model was trained on.
* `decode` drops `pad_id` (so a padded row decodes cleanly; where a tokenizer has
  no pad token, `pad_id` falls back to `eos_id` and EOS is dropped too). With
  `skip_special=True` it also drops the other special tokens. Ids outside
  `[0, vocab_size)` raise: a sampler must mask logits of ids the tokenizer lacks
  (models often pad their vocabulary; see `tokenizer.check_vocab_fits`).
* `vocab_size` is 1 + the largest id, i.e. the embedding rows the tokenizer needs.
"""

from __future__ import annotations

import abc
from typing import Iterable, Sequence

# When a tokenizer.json comes without tokenizer_config.json / special_tokens_map.json,
# the end-of-sequence token is looked up among these (first present wins).
EOS_CANDIDATES = ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>")
PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]")


class Tokenizer(abc.ABC):
  """Text <-> ids. Subclasses set the attributes below and implement the hooks."""

  vocab_size: int
  bos_id: int | None
  eos_id: int
  pad_id: int
  path: str | None = None  # file the tokenizer was loaded from (None if built in code)

  @abc.abstractmethod
  def _encode(self, text: str) -> list[int]:
    """Ids of `text` without BOS."""

  @abc.abstractmethod
  def _decode(self, ids: list[int], skip_special: bool) -> str:
    """Text of `ids` (already without pad ids and range-checked)."""

  @abc.abstractmethod
  def token_id(self, piece: str) -> int | None:
    """Id of a single token such as "<end_of_turn>", or None if it is not one token."""

  @abc.abstractmethod
  def _id_to_piece(self, i: int) -> str:
    """The vocabulary entry of id `i` (range-checked)."""

  def id_to_piece(self, i: int) -> str:
    """The vocabulary entry of id `i`, e.g. the text of the EOS token."""
    i = int(i)
    if not 0 <= i < self.vocab_size:
      raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size}) of "
                       f"tokenizer {self.path or type(self).__name__}")
    return self._id_to_piece(i)

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Token ids of `text`; `add_bos` prepends BOS when the tokenizer has one."""
    if not isinstance(text, str):
      raise TypeError(f"{type(self).__name__}.encode expects a str, got {type(text).__name__}")
    ids = self._encode(text)
    if add_bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def encode_batch(self, texts: Iterable[str], *, add_bos: bool = False) -> list[list[int]]:
    """`encode` of each text."""
    return [self.encode(t, add_bos=add_bos) for t in texts]

  def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
    """Text of `ids` (a list or 1-D array); pad ids are always dropped."""
    if hasattr(ids, "tolist"):  # numpy / jax arrays
      ids = ids.tolist()
    out = []
    for i in ids:
      if isinstance(i, (list, tuple)):
        raise ValueError(f"{type(self).__name__}.decode expects a flat sequence of ids; "
                         "decode each row of a batch separately")
      i = int(i)
      if i == self.pad_id:
        continue
      if not 0 <= i < self.vocab_size:
        raise ValueError(
            f"token id {i} is outside the vocabulary [0, {self.vocab_size}) of tokenizer "
            f"{self.path or type(self).__name__}; the sampler must mask logits of ids >= "
            "tokenizer.vocab_size")
      out.append(i)
    return self._decode(out, skip_special)

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(path={self.path!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id})")
