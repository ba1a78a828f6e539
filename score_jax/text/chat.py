"""Chat formats: the text around the two SCoRe attempts for each model family.

A two-attempt episode is laid out as

    [BOS] first_turn(x) y1 END second_turn(p) y2 END

where END is `end_of_turn` (the sampler's stop token), `x` the problem and `p` the
fixed self-correction instruction. `first_turn` / `second_turn` hold no BOS: the
tokenizer adds it (`first_turn_ids` does so when `fmt.add_bos`). The layouts
reproduce each family's official Hugging Face chat template (tests compare the
ids with `transformers.apply_chat_template`):

* gemma  -- `<start_of_turn>user\\n{x}<end_of_turn>\\n<start_of_turn>model\\n`, BOS
  first; the template strips each message (`| trim`). Gemma 1.1 / 2 / 3 render
  the same when there is no system message.
* llama3 -- `<|start_header_id|>user<|end_header_id|>\\n\\n{x}<|eot_id|>` then
  `<|start_header_id|>assistant<|end_header_id|>\\n\\n`, BOS `<|begin_of_text|>`
  first; messages stripped. This is Meta-Llama-3-*-Instruct's template; Llama
  3.1+ templates add a dated system turn by default, which we do not.
* qwen2 / qwen2.5 -- ChatML `<|im_start|>user\\n{x}<|im_end|>\\n<|im_start|>assistant\\n`,
  no BOS, messages not stripped. Qwen's templates insert a default system turn
  when the conversation has none, so we do too, to match what the models saw in
  training: "You are a helpful assistant." (Qwen2) or "You are Qwen, created by
  Alibaba Cloud. You are a helpful assistant." (Qwen2.5). `system=` replaces it.
* plain (base models) -- `{x}\\n\\n` for the first turn, `\\n\\n{p}\\n\\n` for the
  second, turns ending with "<eot>" (the `CharTokenizer` special). For a real
  base model the turns end with its EOS piece: pass `tokenizer=` (used when it
  has no "<eot>") or `end_of_turn="<eos>"`.

A base (pretrained) checkpoint has no chat template and was never trained on these
markers: `score_jax.load(...).generate(chat=True)` refuses it (`base_model_message`);
train it with "plain".

`render_conversation` writes whole transcripts; it closes a finished model turn
with `model_suffix` (the "\\n" after Gemma's / Qwen's end marker) as the
templates do. Rollouts never contain that suffix after y2: the sampler stops at
END, and `second_turn` starts with it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from score_jax.text.base import Tokenizer

QWEN2_SYSTEM = "You are a helpful assistant."
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  """Text layout of a user/model conversation for one model family."""
  name: str
  end_of_turn: str          # closes a model turn; the sampler's stop token
  user_prefix: str = ""     # opens a user turn
  user_suffix: str = ""     # closes a user turn
  model_prefix: str = ""    # opens a model turn (the "generation prompt")
  model_suffix: str = ""    # text after end_of_turn, before the next user turn
  system_prefix: str = ""   # text at the very start (after BOS): e.g. a system turn
  strip: bool = False       # the template strips whitespace around each message
  add_bos: bool = True      # the conversation starts with the tokenizer's BOS

  def _content(self, text: str) -> str:
    return text.strip() if self.strip else text

  def _user_turn(self, user: str) -> str:
    return self.user_prefix + self._content(user) + self.user_suffix + self.model_prefix

  def first_turn(self, user: str) -> str:
    """Text the model sees before y1 (no BOS)."""
    return self.system_prefix + self._user_turn(user)

  def second_turn(self, user: str) -> str:
    """Text between the end_of_turn that closes y1 and y2."""
    return self.model_suffix + self._user_turn(user)

  def model_turn(self, text: str) -> str:
    """A finished model turn: its text and end_of_turn (model_suffix not included)."""
    return self._content(text) + self.end_of_turn


def _llama3_header(role: str) -> str:
  return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


_FORMATS = {
    "plain": ChatFormat(name="plain", end_of_turn="<eot>", user_suffix="\n\n",
                        model_suffix="\n\n"),
    "gemma": ChatFormat(
        name="gemma", end_of_turn="<end_of_turn>",
        user_prefix="<start_of_turn>user\n", user_suffix="<end_of_turn>\n",
        model_prefix="<start_of_turn>model\n", model_suffix="\n", strip=True),
    "llama3": ChatFormat(
        name="llama3", end_of_turn="<|eot_id|>", user_prefix=_llama3_header("user"),
        user_suffix="<|eot_id|>", model_prefix=_llama3_header("assistant"), strip=True),
    "qwen2": ChatFormat(
        name="qwen2", end_of_turn="<|im_end|>", user_prefix="<|im_start|>user\n",
        user_suffix="<|im_end|>\n", model_prefix="<|im_start|>assistant\n", model_suffix="\n",
        system_prefix=f"<|im_start|>system\n{QWEN2_SYSTEM}<|im_end|>\n", add_bos=False),
}
_FORMATS["qwen2.5"] = dataclasses.replace(
    _FORMATS["qwen2"], name="qwen2.5",
    system_prefix=f"<|im_start|>system\n{QWEN25_SYSTEM}<|im_end|>\n")

CHAT_FORMATS = tuple(_FORMATS)


def _system_prefix(fmt: ChatFormat, system: str) -> str:
  if fmt.name in ("qwen2", "qwen2.5"):
    return f"<|im_start|>system\n{system}<|im_end|>\n"
  if fmt.name == "llama3":
    return _llama3_header("system") + system.strip() + "<|eot_id|>"
  if fmt.name == "plain":
    return system + "\n\n"
  raise ValueError(f"chat format {fmt.name!r} has no system turn (its official template "
                   "rejects system messages); put the instructions in the user turn")


def chat_format(name: str, *, system: str | None = None, end_of_turn: str | None = None,
                tokenizer: Tokenizer | None = None) -> ChatFormat:
  """The chat format `name` (one of CHAT_FORMATS).

  Args:
    name: "plain" | "gemma" | "llama3" | "qwen2" | "qwen2.5".
    system: a system message to put first (replaces Qwen's default one).
    end_of_turn: override of the end marker, "plain" only (for a real base model,
      its EOS piece such as "<eos>" or "<|endoftext|>").
    tokenizer: the run's tokenizer; with "plain" and no `end_of_turn`, a tokenizer
      without an "<eot>" token makes the turns end with its EOS piece.
  """
  if name not in _FORMATS:
    raise ValueError(f"unknown chat format {name!r}; expected one of {list(CHAT_FORMATS)}")
  fmt = _FORMATS[name]
  if system is not None:
    fmt = dataclasses.replace(fmt, system_prefix=_system_prefix(fmt, system))
  if end_of_turn is not None:
    if not end_of_turn:
      raise ValueError("end_of_turn must be a non-empty token string")
    if name != "plain":
      # The instruction-tuned families' user turns close with the same marker.
      raise ValueError(f"chat format {name!r} fixes end_of_turn={fmt.end_of_turn!r}; "
                       "only 'plain' takes an override")
    fmt = dataclasses.replace(fmt, end_of_turn=end_of_turn)
  elif name == "plain" and tokenizer is not None and tokenizer.token_id(fmt.end_of_turn) is None:
    fmt = dataclasses.replace(fmt, end_of_turn=tokenizer.id_to_piece(tokenizer.eos_id))
  return fmt


_ROLES = {"user": "user", "model": "model", "assistant": "model"}


def render_conversation(fmt: ChatFormat, turns: Sequence[tuple[str, str]]) -> str:
  """Text of a conversation [("user", x), ("model", y1), ("user", p), ...] (no BOS).

  Roles alternate, starting with "user" ("assistant" is accepted for "model").
  A final user turn is followed by the model prefix (the generation prompt); a
  final model turn is closed by end_of_turn + model_suffix, like the official
  templates.
  """
  if not turns:
    raise ValueError("render_conversation needs at least one turn")
  parts = []
  for k, turn in enumerate(turns):
    if not (isinstance(turn, (tuple, list)) and len(turn) == 2):
      raise ValueError(f"turn {k} is {turn!r}; expected a (role, text) pair")
    role, text = turn
    expected = "user" if k % 2 == 0 else "model"
    if _ROLES.get(role) != expected:
      raise ValueError(f"turn {k} has role {role!r}; roles must alternate user, model, "
                       f"user, ... so turn {k} must be {expected!r}")
    if not isinstance(text, str):
      raise ValueError(f"turn {k} text is {type(text).__name__}, expected str")
    if expected == "user":
      parts.append(fmt.second_turn(text) if k else fmt.first_turn(text))
    else:
      parts.append(fmt.model_turn(text))
  if len(turns) % 2 == 0:
    parts.append(fmt.model_suffix)
  return "".join(parts)


def base_model_message(source: str, family_format: str) -> str:
  """The error for chat turns on a base (pretrained, not instruction-tuned) model: its
  tokenizer ships no chat template, so the model never saw the chat markers."""
  return (f"{source} is a base model without a chat template; use chat=False (plain "
          f"continuation) or an instruction-tuned checkpoint (chat={family_format!r} "
          f"forces the {family_format} format anyway)")


def end_of_turn_id(fmt: ChatFormat, tokenizer: Tokenizer) -> int:
  """Id of `fmt.end_of_turn` in `tokenizer` (the sampler's stop token)."""
  i = tokenizer.token_id(fmt.end_of_turn)
  if i is None:
    raise ValueError(
        f"chat format {fmt.name!r} ends turns with {fmt.end_of_turn!r}, which is not a single "
        f"token of tokenizer {tokenizer.path or repr(tokenizer)}; use the chat format of the "
        "model's family, or for 'plain' pass end_of_turn=<the tokenizer's EOS piece>")
  return i


def first_turn_ids(fmt: ChatFormat, tokenizer: Tokenizer, user: str) -> list[int]:
  """Token ids of the turn-1 prompt, with BOS when the family uses one."""
  return tokenizer.encode(fmt.first_turn(user), add_bos=fmt.add_bos)


def second_turn_ids(fmt: ChatFormat, tokenizer: Tokenizer, user: str) -> list[int]:
  """Token ids to append after y1's end_of_turn id, before sampling y2."""
  return tokenizer.encode(fmt.second_turn(user))
