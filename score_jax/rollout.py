"""Two-turn rollouts: the host loop between tasks, the sampler and the losses.

For a batch of problems (each repeated k times, so rows [i*k, (i+1)*k) share problem i):

  x  = chat.first_turn(problem.prompt)                 -> left-padded to P tokens
  y1 ~ pi(. | x)                                       (sampler, up to T1 tokens)
  x2 = x + y1 + end_of_turn + chat.second_turn(instruction)
  y2 ~ pi(. | x2)   continuing the turn-1 KV cache     (up to T2 tokens)

The `Episode` lays each row out as ONE sequence `[x | y1 | extra | y2]` of fixed length
P + T1 + I + T2 (padding marked invalid), so one forward pass of the trainer scores both
turns with exactly the positions and masks the sampler used. `turn1_mask` covers the y1
tokens and `turn2_mask` the y2 tokens; y1 inside x2 is prompt for turn 2.

On several processes (multi-host) `rollout(..., process_local=True)` has each process
encode, decode and grade only the rows its devices hold (`mesh.row_split`); the sampler
still runs on the global batch. The result then holds this process's rows and their
`split`; the trainer assembles the global train batch and gathers global metrics from
them. The default (`process_local=False`) returns every row on every process.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from score_jax import chat as chat_lib
from score_jax import mesh as mesh_lib
from score_jax import sampler as sampler_lib
from score_jax.tasks import base


class Episode(NamedTuple):
  """A batch of two-turn episodes (numpy arrays; see module docstring)."""
  tokens_BT: np.ndarray          # int32
  valid_BT: np.ndarray           # bool: real tokens (padding is False)
  turn1_mask_BT: np.ndarray      # bool: y1 tokens
  turn2_mask_BT: np.ndarray      # bool: y2 tokens
  r1_B: np.ndarray               # float32 reward of y1
  r2_B: np.ndarray               # float32 reward of y2
  sampler_logprobs_BT: np.ndarray  # float32 log pi_sampler(token), 0 outside y1 / y2


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Fixed sequence budgets (fixed shapes: one compilation per run)."""
  prompt: int          # P
  turn1: int           # T1
  extra: int           # I: end_of_turn + second-turn text
  turn2: int           # T2

  @property
  def total(self) -> int:
    return self.prompt + self.turn1 + self.extra + self.turn2


@dataclasses.dataclass
class RolloutResult:
  episode: Episode
  problems: list[base.Problem]   # one per row
  y1: list[str]
  y2: list[str]
  truncated_prompts: int         # prompts cut from the left to fit P
  split: mesh_lib.RowSplit | None = None  # which global rows these are (None: all rows)


def to_host(x: Any) -> np.ndarray:
  """A global array as numpy on every process (gathers shards other processes hold)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def left_pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray, int]:
  """Left-pads (and left-truncates) id lists to `length`; returns tokens, valid, #truncated."""
  tokens = np.full((len(seqs), length), pad_id, np.int32)
  valid = np.zeros((len(seqs), length), bool)
  truncated = 0
  for i, ids in enumerate(seqs):
    ids = list(ids)
    if len(ids) > length:
      ids, truncated = ids[-length:], truncated + 1
    if ids:
      tokens[i, length - len(ids):] = ids
      valid[i, length - len(ids):] = True
  return tokens, valid, truncated


class TwoTurnSampler:
  """Turns problems into Episodes with a tokenizer, a chat format and the sampler."""

  def __init__(self, graphdef: Any, tokenizer: Any, chat: Any, task: base.Task,
               lengths: Lengths, model_vocab: int | None = None):
    self.graphdef, self.tokenizer, self.chat, self.task = graphdef, tokenizer, chat, task
    self.vocab_limit = (tokenizer.vocab_size if model_vocab and model_vocab > tokenizer.vocab_size
                        else None)
    self.head_ids = tokenizer.encode(chat.system_prefix + chat.user_prefix, add_bos=chat.add_bos)
    self.lengths = lengths
    self.eot_id = chat_lib.end_of_turn_id(chat, tokenizer)
    self.stop_ids = tuple(sorted({self.eot_id, int(tokenizer.eos_id)}))
    self.pad_id = int(tokenizer.pad_id)
    self.second_turn_ids = chat_lib.second_turn_ids(chat, tokenizer, task.turn2_instruction)
    if len(self.second_turn_ids) + 1 > lengths.extra:
      raise ValueError(f"the turn-2 context needs {len(self.second_turn_ids) + 1} tokens but "
                       f"config.rollout.max_instruction_len is {lengths.extra}")

  def encode_prompts(self, problems: Sequence[base.Problem]) -> tuple[np.ndarray, np.ndarray, int]:
    ids = [chat_lib.first_turn_ids(self.chat, self.tokenizer, p.prompt) for p in problems]
    P, head = self.lengths.prompt, self.head_ids
    cut = [r[:len(head)] + r[len(r) - (P - len(head)):]
           if len(r) > P and r[:len(head)] == head else r for r in ids]
    tokens, valid, _ = left_pad(cut, P, self.pad_id)
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
    tokens, valid, _ = left_pad(seqs, self.lengths.extra, self.pad_id)
    return tokens, valid

  def rollout(self, params1: Any, params2: Any, problems: Sequence[base.Problem], *,
              method: Any, rng: jax.Array, process_local: bool = False) -> RolloutResult:
    """Samples y1 with `params1` and y2 with `params2` (the same params on-policy).

    Every process passes the same global `problems`. With `process_local`, the result
    holds only the rows this process's devices hold (see the module docstring).
    """
    lengths = self.lengths
    if self.vocab_limit is not None:   # never sample ids the tokenizer lacks
      from score_jax import api  # pylint: disable=import-outside-toplevel
      method = api._VocabLimit(method, self.vocab_limit)  # pylint: disable=protected-access
    mesh = mesh_lib.mesh_of(params1)
    split = (mesh_lib.row_split(mesh, len(problems)) if process_local
             else mesh_lib.RowSplit.everything(len(problems)))
    problems = split.take(problems)
    put = lambda a: mesh_lib.put_local_batch(a, mesh, split)  # noqa: E731
    get = lambda a: mesh_lib.local_rows(a, split)  # noqa: E731
    prompt_BP, prompt_valid_BP, truncated = self.encode_prompts(problems)
    rng1, rng2 = jax.random.split(rng)
    out1 = sampler_lib.generate(
        self.graphdef, params1, put(prompt_BP), put(prompt_valid_BP),
        max_new_tokens=lengths.turn1, method=method, rng=rng1, stop_ids=self.stop_ids,
        pad_id=self.pad_id, max_cache_len=lengths.total)
    tok1, val1, done1 = get(out1.tokens_BS), get(out1.valid_BS), get(out1.done_B)
    logp1 = get(out1.logprobs_BS).astype(np.float32)
    extra_BI, extra_valid_BI = self.extra_chunk(done1)
    cache = out1.cache
    if params2 is not params1:
      # A different turn-2 policy cannot reuse the turn-1 cache: recompute it.
      cache = None
      extra_BI = np.concatenate([prompt_BP, tok1, extra_BI], axis=1)
      extra_valid_BI = np.concatenate([prompt_valid_BP, val1, extra_valid_BI], axis=1)
    out2 = sampler_lib.generate(
        self.graphdef, params2, put(extra_BI), put(extra_valid_BI),
        max_new_tokens=lengths.turn2, method=method, rng=rng2, stop_ids=self.stop_ids,
        pad_id=self.pad_id, cache=cache, max_cache_len=lengths.total)
    extra_BI, extra_valid_BI = self.extra_chunk(done1)
    tok2, val2 = get(out2.tokens_BS), get(out2.valid_BS)
    logp2 = get(out2.logprobs_BS).astype(np.float32)
    y1, y2 = self.decode(tok1, val1), self.decode(tok2, val2)
    r1 = np.asarray(self.task.rewards(problems, y1), np.float32)
    r2 = np.asarray(self.task.rewards(problems, y2), np.float32)
    zeros = lambda a: np.zeros_like(a, dtype=bool)  # noqa: E731
    episode = Episode(
        tokens_BT=np.concatenate([prompt_BP, tok1, extra_BI, tok2], axis=1),
        valid_BT=np.concatenate([prompt_valid_BP, val1, extra_valid_BI, val2], axis=1),
        turn1_mask_BT=np.concatenate(
            [zeros(prompt_BP), val1, zeros(extra_BI), zeros(tok2)], axis=1),
        turn2_mask_BT=np.concatenate(
            [zeros(prompt_BP), zeros(tok1), zeros(extra_BI), val2], axis=1),
        r1_B=r1, r2_B=r2,
        sampler_logprobs_BT=np.concatenate(
            [np.zeros(prompt_BP.shape, np.float32), logp1,
             np.zeros(extra_BI.shape, np.float32), logp2], axis=1),
    )
    return RolloutResult(episode, list(problems), y1, y2, truncated,
                         split=split if process_local else None)


def demonstration_episode(two_turn: TwoTurnSampler, problems: Sequence[base.Problem],
                          attempts1: Sequence[str], attempts2: Sequence[str],
                          ) -> Episode:
  """An Episode from given texts (for supervised warm-up, STaR and Pair-SFT data).

  Texts are tokenised and laid out exactly like sampled episodes; each attempt ends with the
  end-of-turn token. Rewards are graded by the task.
  """
  lengths, tok = two_turn.lengths, two_turn.tokenizer
  prompt_BP, prompt_valid_BP, _ = two_turn.encode_prompts(problems)

  def right_pad(texts, length):
    tokens = np.full((len(texts), length), two_turn.pad_id, np.int32)
    valid = np.zeros((len(texts), length), bool)
    for i, text in enumerate(texts):
      ids = (tok.encode(text) + [two_turn.eot_id])[:length]
      tokens[i, :len(ids)], valid[i, :len(ids)] = ids, True
    return tokens, valid

  tok1, val1 = right_pad(attempts1, lengths.turn1)
  tok2, val2 = right_pad(attempts2, lengths.turn2)
  done1 = np.ones(len(problems), bool)  # every demonstration attempt ends with end_of_turn
  extra_BI, extra_valid_BI = two_turn.extra_chunk(done1)
  zeros = lambda a: np.zeros_like(a, dtype=bool)  # noqa: E731
  return Episode(
      tokens_BT=np.concatenate([prompt_BP, tok1, extra_BI, tok2], axis=1),
      valid_BT=np.concatenate([prompt_valid_BP, val1, extra_valid_BI, val2], axis=1),
      turn1_mask_BT=np.concatenate([zeros(prompt_BP), val1, zeros(extra_BI), zeros(tok2)], 1),
      turn2_mask_BT=np.concatenate([zeros(prompt_BP), zeros(tok1), zeros(extra_BI), val2], 1),
      r1_B=np.asarray(two_turn.task.rewards(problems, attempts1), np.float32),
      r2_B=np.asarray(two_turn.task.rewards(problems, attempts2), np.float32),
      sampler_logprobs_BT=np.zeros((len(problems), lengths.total), np.float32),
  )


def concat_results(results: Sequence[RolloutResult]) -> RolloutResult:
  """Stacks rollout results row-wise (same lengths; whole batches, not process-local)."""
  if any(r.split is not None and not r.split.is_everything for r in results):
    raise ValueError("concat_results: process-local results hold only some rows of their "
                     "batches; keep them as separate parts (see Trainer.rl_batch)")
  episode = Episode(*[np.concatenate(fields, axis=0)
                      for fields in zip(*(r.episode for r in results))])
  return RolloutResult(episode, [p for r in results for p in r.problems],
                       [y for r in results for y in r.y1], [y for r in results for y in r.y2],
                       sum(r.truncated_prompts for r in results))


def without_turn1_training(result: RolloutResult) -> RolloutResult:
  """The same rollouts with no y1 token trained (first attempts from another policy)."""
  episode = result.episode._replace(turn1_mask_BT=np.zeros_like(result.episode.turn1_mask_BT))
  return dataclasses.replace(result, episode=episode)
