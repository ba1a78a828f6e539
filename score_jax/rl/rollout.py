"""Two-turn rollouts: the host loop between tasks, the sampler and the losses.

For a batch of problems (each repeated k times, so rows [i*k, (i+1)*k) share problem i):

  x  = chat.first_turn(problem.prompt)                 -> left-padded to P tokens
  y1 ~ pi(. | x)                                       (sampler, up to T1 tokens)
  x2 = x + y1 + end_of_turn + chat.second_turn(instruction)
  y2 ~ pi(. | x2)   continuing the turn-1 KV cache     (up to T2 tokens)

and the result is one `Episode` per batch (`score_jax.rl.episode`: the layout
`[x | y1 | extra | y2]` the trainer scores in one forward pass).

On several processes (multi-host) `rollout(..., process_local=True)` has each process
encode, decode and grade only the rows its devices hold (`multihost.row_split`); the
sampler still runs on the global batch. The result then holds this process's rows and
their `split`; the trainer assembles the global train batch and gathers global metrics
from them. The default (`process_local=False`) returns every row on every process.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from score_jax import mesh as mesh_lib
from score_jax import multihost
from score_jax import sampler as sampler_lib
from score_jax.rl.episode import Episode, Lengths, layout
from score_jax.tasks import base
from score_jax.text import chat as chat_lib

__all__ = ["Episode", "Lengths", "RolloutResult", "TwoTurnSampler", "demonstration_episode",
           "without_turn1_training"]


@dataclasses.dataclass
class RolloutResult:
  episode: Episode
  problems: list[base.Problem]   # one per row
  y1: list[str]
  y2: list[str]
  truncated_prompts: int         # prompts cut from the left to fit P
  split: multihost.RowSplit | None = None  # which global rows these are (None: all rows)


class TwoTurnSampler:
  """Turns problems into Episodes with a tokenizer, a chat format and the sampler.

  The turn-2 instruction is the task's (`task.turn2_instruction`) unless `instruction`
  gives another one (e.g. Self-Refine's; see `with_instruction`).
  """

  def __init__(self, graphdef: Any, tokenizer: Any, chat: Any, task: base.Task,
               lengths: Lengths, model_vocab: int | None = None,
               instruction: str | None = None):
    self.graphdef, self.tokenizer, self.chat, self.task = graphdef, tokenizer, chat, task
    self.model_vocab = model_vocab or tokenizer.vocab_size
    self.head_ids = tokenizer.encode(chat.system_prefix + chat.user_prefix, add_bos=chat.add_bos)
    self.lengths = lengths
    self.eot_id = chat_lib.end_of_turn_id(chat, tokenizer)
    self.stop_ids = tuple(sorted({self.eot_id, int(tokenizer.eos_id)}))
    self.pad_id = int(tokenizer.pad_id)
    self.instruction = task.turn2_instruction if instruction is None else instruction
    self.second_turn_ids = chat_lib.second_turn_ids(chat, tokenizer, self.instruction)
    if len(self.second_turn_ids) + 1 > lengths.extra:
      needed = len(self.second_turn_ids) + 1
      raise ValueError(f"the turn-2 context (end_of_turn + chat turn + instruction "
                       f"{self.instruction[:40]!r}...) needs {needed} tokens but "
                       f"config.rollout.max_instruction_len is {lengths.extra}; pass "
                       f"--config.rollout.max_instruction_len={needed}")

  def with_instruction(self, instruction: str) -> "TwoTurnSampler":
    """This sampler with another turn-2 instruction; `lengths.extra` (the extra-chunk
    budget, config.rollout.max_instruction_len) grows to fit it, never shrinks."""
    needed = len(chat_lib.second_turn_ids(self.chat, self.tokenizer, instruction)) + 1
    lengths = dataclasses.replace(self.lengths, extra=max(self.lengths.extra, needed))
    return TwoTurnSampler(self.graphdef, self.tokenizer, self.chat, self.task, lengths,
                          model_vocab=self.model_vocab, instruction=instruction)

  def encode_prompts(self, problems: Sequence[base.Problem]) -> tuple[np.ndarray, np.ndarray, int]:
    ids = [chat_lib.first_turn_ids(self.chat, self.tokenizer, p.prompt) for p in problems]
    P, head = self.lengths.prompt, self.head_ids
    cut = [r[:len(head)] + r[len(r) - (P - len(head)):]
           if len(r) > P and r[:len(head)] == head else r for r in ids]
    tokens, valid, _ = sampler_lib.left_pad(cut, self.pad_id, P)
    return tokens, valid, sum(len(r) > P for r in ids)

  def decode(self, tokens_BS: np.ndarray, valid_BS: np.ndarray) -> list[str]:
    texts = []
    for row, ok in zip(tokens_BS, valid_BS):
      ids = [int(t) for t, v in zip(row, ok) if v and int(t) not in self.stop_ids]
      texts.append(self.tokenizer.decode(ids, skip_special=True))
    return texts

  def extra_chunk(self, done_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """end_of_turn (only where y1 did not stop by itself) + the second-turn text."""
    seqs = [([] if d else [self.eot_id]) + self.second_turn_ids for d in done_B]
    tokens, valid, _ = sampler_lib.left_pad(seqs, self.pad_id, self.lengths.extra)
    return tokens, valid

  def rollout(self, params1: Any, params2: Any, problems: Sequence[base.Problem], *,
              method: Any, rng: jax.Array, process_local: bool = False) -> RolloutResult:
    """Samples y1 with `params1` and y2 with `params2` (the same params on-policy).

    Every process passes the same global `problems`. With `process_local`, the result
    holds only the rows this process's devices hold (see the module docstring).
    """
    lengths = self.lengths
    # never sample ids the tokenizer lacks
    method = sampler_lib.limit_vocab(method, self.tokenizer.vocab_size, self.model_vocab)
    mesh = mesh_lib.mesh_of(params1)
    split = (multihost.row_split(mesh, len(problems)) if process_local
             else multihost.RowSplit.everything(len(problems)))
    problems = split.take(problems)
    put = lambda a: multihost.put_local_batch(a, mesh, split)  # noqa: E731
    get = lambda a: multihost.local_rows(a, split)  # noqa: E731
    prompt_BP, prompt_valid_BP, truncated = self.encode_prompts(problems)
    rng1, rng2 = jax.random.split(rng)
    out1 = sampler_lib.generate(
        self.graphdef, params1, put(prompt_BP), put(prompt_valid_BP),
        max_new_tokens=lengths.turn1, method=method, rng=rng1, stop_ids=self.stop_ids,
        pad_id=self.pad_id, max_cache_len=lengths.total)
    tok1, val1, done1 = get(out1.tokens_BS), get(out1.valid_BS), get(out1.done_B)
    logp1 = get(out1.logprobs_BS).astype(np.float32)
    extra_BI, extra_valid_BI = self.extra_chunk(done1)
    if params2 is params1:
      # Turn 2 continues the turn-1 cache: feed only the extra chunk.
      cache, turn2_input_BC, turn2_input_valid_BC = out1.cache, extra_BI, extra_valid_BI
    else:
      # A different turn-2 policy cannot reuse the turn-1 cache: feed the whole context.
      cache = None
      turn2_input_BC = np.concatenate([prompt_BP, tok1, extra_BI], axis=1)
      turn2_input_valid_BC = np.concatenate([prompt_valid_BP, val1, extra_valid_BI], axis=1)
    out2 = sampler_lib.generate(
        self.graphdef, params2, put(turn2_input_BC), put(turn2_input_valid_BC),
        max_new_tokens=lengths.turn2, method=method, rng=rng2, stop_ids=self.stop_ids,
        pad_id=self.pad_id, cache=cache, max_cache_len=lengths.total)
    tok2, val2 = get(out2.tokens_BS), get(out2.valid_BS)
    logp2 = get(out2.logprobs_BS).astype(np.float32)
    y1, y2 = self.decode(tok1, val1), self.decode(tok2, val2)
    r1 = self.task.rewards(problems, y1)
    r2 = self.task.rewards(problems, y2)
    episode = layout((prompt_BP, prompt_valid_BP), (tok1, val1), (extra_BI, extra_valid_BI),
                     (tok2, val2), r1, r2, logp1, logp2)
    return RolloutResult(episode, list(problems), y1, y2, truncated,
                         split=split if process_local else None)


def demonstration_episode(two_turn: TwoTurnSampler, problems: Sequence[base.Problem],
                          attempts1: Sequence[str], attempts2: Sequence[str],
                          ) -> Episode:
  """An Episode from given texts (for supervised warm-up, STaR and Pair-SFT data).

  Texts are tokenised and laid out exactly like sampled episodes; each attempt ends with the
  end-of-turn token. An attempt longer than its budget keeps its first (budget - 1) tokens
  and still ends with end-of-turn, and the task grades the text that was kept.
  """
  lengths, tok = two_turn.lengths, two_turn.tokenizer
  prompt_BP, prompt_valid_BP, _ = two_turn.encode_prompts(problems)

  def right_pad(texts, length):
    tokens = np.full((len(texts), length), two_turn.pad_id, np.int32)
    valid = np.zeros((len(texts), length), bool)
    kept = []
    for i, text in enumerate(texts):
      ids = tok.encode(text)
      if len(ids) >= length:
        ids = ids[:length - 1]
        text = tok.decode(ids, skip_special=True)
      ids = ids + [two_turn.eot_id]
      tokens[i, :len(ids)], valid[i, :len(ids)] = ids, True
      kept.append(text)
    return (tokens, valid), kept

  turn1, kept1 = right_pad(attempts1, lengths.turn1)
  turn2, kept2 = right_pad(attempts2, lengths.turn2)
  done1 = np.ones(len(problems), bool)  # every demonstration attempt ends with end_of_turn
  return layout((prompt_BP, prompt_valid_BP), turn1, two_turn.extra_chunk(done1), turn2,
                two_turn.task.rewards(problems, kept1), two_turn.task.rewards(problems, kept2))


def without_turn1_training(result: RolloutResult) -> RolloutResult:
  """The same rollouts with no y1 token trained (first attempts from another policy)."""
  episode = result.episode._replace(turn1_mask_BT=np.zeros_like(result.episode.turn1_mask_BT))
  return dataclasses.replace(result, episode=episode)
