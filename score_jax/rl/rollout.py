"""Rollouts of A attempts (A = config.rollout.num_attempts >= 2; the paper's protocol is
A = 2): the host loop between tasks, the sampler and the losses.

For a batch of problems (each repeated k times, so rows [i*k, (i+1)*k) share problem i):

  x   = chat.first_turn(problem.prompt)                  -> left-padded to P tokens
  y1  ~ pi(. | x)                                        (sampler, up to T1 tokens)
  x_t = x_{t-1} + y_{t-1} + end_of_turn + chat.second_turn(instruction)
  y_t ~ pi(. | x_t)   continuing the previous attempt's KV cache   (up to T2 tokens each)

for t = 2..A, so attempt t reads `x, y1, p, y2, p, ..., y_{t-1}, p` (p the instruction), and
the result is one `Episode` per batch (`score_jax.rl.episode`: the layout
`[x | y1 | extra | y2 | ... | extra | yA]` the trainer scores in one forward pass).

`rollout(..., given=[texts_1, ..., texts_g])` feeds fixed texts as the first g < A attempts
(context only: graded, not trained) and samples the rest: the same host loop re-runs the
later attempts from any given earlier ones (counterfactual first attempts, or the last
attempt of a longer chain).

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
from score_jax import stops as stops_lib
from score_jax.rl import continuous_rollout
from score_jax.rl.episode import Episode, Lengths, Segment, layout
from score_jax.tasks import base
from score_jax.text import chat as chat_lib

BATCHING = ("fixed", "continuous")

__all__ = ["BATCHING", "Episode", "Lengths", "MultiTurnSampler", "RolloutResult",
           "TwoTurnSampler", "batching_kwargs", "demonstration_episode",
           "without_turn1_training"]


@dataclasses.dataclass
class RolloutResult:
  episode: Episode
  problems: list[base.Problem]   # one per row
  texts: list[list[str]]         # texts[t - 1][b]: attempt t of row b, decoded
  truncated_prompts: int         # prompts cut from the left to fit P
  split: multihost.RowSplit | None = None  # which global rows these are (None: all rows)
  stats: dict | None = None      # continuous batching: the sampler's counts, grader_wait_s

  @property
  def y1(self) -> list[str]:
    return self.texts[0]

  @property
  def y2(self) -> list[str]:
    return self.texts[1]


class MultiTurnSampler:
  """Turns problems into Episodes of `lengths.attempts` attempts with a tokenizer, a chat
  format and the sampler.

  The instruction before every later attempt is the task's (`task.turn2_instruction`)
  unless `instruction` gives another one (e.g. Self-Refine's; see `with_instruction`).

  The task's stop texts (`task.stop_texts`, tokenised by `score_jax.stops.token_sequences`)
  end an attempt like a stop token: the stop text is the attempt's last tokens (kept, trained,
  in its text), and the next turn's context gets end_of_turn after it, as if the model had
  emitted end_of_turn right there (on both batching paths).
  """

  def __init__(self, graphdef: Any, tokenizer: Any, chat: Any, task: base.Task,
               lengths: Lengths, model_vocab: int | None = None,
               instruction: str | None = None, batching: str = "fixed", slots: int = 0,
               segment_steps: int = 64, prefill_chunk: int = 64):
    if batching not in BATCHING:
      raise ValueError(f"config.rollout.batching={batching!r}: choose one of {BATCHING}")
    self.graphdef, self.tokenizer, self.chat, self.task = graphdef, tokenizer, chat, task
    self.batching, self.slots, self.segment_steps = batching, slots, segment_steps
    self.prefill_chunk = prefill_chunk
    self.model_vocab = model_vocab or tokenizer.vocab_size
    self.head_ids = tokenizer.encode(chat.system_prefix + chat.user_prefix, add_bos=chat.add_bos)
    self.lengths = lengths
    self.eot_id = chat_lib.end_of_turn_id(chat, tokenizer)
    self.stop_ids = tuple(sorted({self.eot_id, int(tokenizer.eos_id)}))
    self.pad_id = int(tokenizer.pad_id)
    self.stop_sequences = stops_lib.token_sequences(tokenizer, getattr(task, "stop_texts", ()))
    self.instruction = task.turn2_instruction if instruction is None else instruction
    self.second_turn_ids = chat_lib.second_turn_ids(chat, tokenizer, self.instruction)
    if len(self.second_turn_ids) + 1 > lengths.extra:
      needed = len(self.second_turn_ids) + 1
      raise ValueError(f"the turn-2 context (end_of_turn + chat turn + instruction "
                       f"{self.instruction[:40]!r}...) needs {needed} tokens but "
                       f"config.rollout.max_instruction_len is {lengths.extra}; pass "
                       f"--config.rollout.max_instruction_len={needed}")

  @property
  def num_attempts(self) -> int:
    return self.lengths.attempts

  def with_instruction(self, instruction: str) -> "MultiTurnSampler":
    """This sampler with another instruction; `lengths.extra` (the extra-chunk budget,
    config.rollout.max_instruction_len) grows to fit it, never shrinks."""
    needed = len(chat_lib.second_turn_ids(self.chat, self.tokenizer, instruction)) + 1
    lengths = dataclasses.replace(self.lengths, extra=max(self.lengths.extra, needed))
    return type(self)(self.graphdef, self.tokenizer, self.chat, self.task, lengths,
                      model_vocab=self.model_vocab, instruction=instruction,
                      **self._batching_kwargs())

  def _batching_kwargs(self) -> dict[str, Any]:
    return dict(batching=self.batching, slots=self.slots, segment_steps=self.segment_steps,
                prefill_chunk=self.prefill_chunk)

  def with_batching(self, batching: str, slots: int = 0, segment_steps: int = 64
                    ) -> "MultiTurnSampler":
    """This sampler with another batching ("fixed" | "continuous"; see `rollout`)."""
    return type(self)(self.graphdef, self.tokenizer, self.chat, self.task, self.lengths,
                      model_vocab=self.model_vocab, instruction=self.instruction,
                      batching=batching, slots=slots, segment_steps=segment_steps,
                      prefill_chunk=self.prefill_chunk)

  def with_attempts(self, attempts: int) -> "MultiTurnSampler":
    """This sampler with another number of attempts (same budgets per attempt)."""
    return type(self)(self.graphdef, self.tokenizer, self.chat, self.task,
                      dataclasses.replace(self.lengths, attempts=attempts),
                      model_vocab=self.model_vocab, instruction=self.instruction,
                      **self._batching_kwargs())

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

  def ended_on_stop_id(self, tokens_BS: np.ndarray, valid_BS: np.ndarray,
                       done_B: np.ndarray) -> np.ndarray:
    """Rows that ended with a stop token (end_of_turn / eos as their last valid token);
    a row that ended on a stop sequence is not among them: end_of_turn follows it."""
    if not self.stop_sequences:
      return done_B
    last_B = np.take_along_axis(
        tokens_BS, np.maximum(valid_BS.sum(axis=1) - 1, 0)[:, None], axis=1)[:, 0]
    return np.asarray(done_B) & np.isin(last_B, self.stop_ids)

  def extra_chunk(self, done_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """end_of_turn (only where the attempt before did not stop by itself) + the instruction
    turn."""
    seqs = [([] if d else [self.eot_id]) + self.second_turn_ids for d in done_B]
    tokens, valid, _ = sampler_lib.left_pad(seqs, self.pad_id, self.lengths.extra)
    return tokens, valid

  def encode_attempt(self, texts: Sequence[str], length: int) -> tuple[Segment, list[str]]:
    """Given attempt texts as a segment of `length` tokens, each ended by end_of_turn, and
    the texts kept: an attempt longer than the budget keeps its first (length - 1) tokens."""
    tokens = np.full((len(texts), length), self.pad_id, np.int32)
    valid = np.zeros((len(texts), length), bool)
    kept = []
    for i, text in enumerate(texts):
      ids = self.tokenizer.encode(text)
      if len(ids) >= length:
        ids = ids[:length - 1]
        text = self.tokenizer.decode(ids, skip_special=True)
      ids = ids + [self.eot_id]
      tokens[i, :len(ids)], valid[i, :len(ids)] = ids, True
      kept.append(text)
    return (tokens, valid), kept

  def rollout(self, params1: Any, params2: Any, problems: Sequence[base.Problem], *,
              method: Any, rng: jax.Array, process_local: bool = False,
              given: Sequence[Sequence[str]] | None = None) -> RolloutResult:
    """Samples y1 with `params1` and y2..yA with `params2` (the same params on-policy).

    Every process passes the same global `problems` (and `given` texts, one list per given
    attempt, one text per problem). With `process_local`, the result holds only the rows
    this process's devices hold (see the module docstring). Attempt t continues the KV cache
    of attempt t - 1 when both were sampled with the same params; otherwise it re-reads its
    whole context.

    `batching="continuous"` (config.rollout.batching) samples every attempt with
    `score_jax.continuous` and grades finished attempts while the rest decode
    (`score_jax.rl.continuous_rollout`) when the attempts share one policy and none is
    given; otherwise (another policy for y1, given attempts) the fixed path runs.
    """
    lengths, A = self.lengths, self.lengths.attempts
    given = [list(texts) for texts in (given or [])]
    if len(given) >= A or any(len(texts) != len(problems) for texts in given):
      raise ValueError(f"rollout: `given` holds {len(given)} attempts (each one text per "
                       f"problem); at most {A - 1} of the {A} attempts can be given")
    # never sample ids the tokenizer lacks
    method = sampler_lib.limit_vocab(method, self.tokenizer.vocab_size, self.model_vocab)
    if self.batching == "continuous" and not given and params1 is params2:
      return continuous_rollout.rollout(self, params1, problems, method=method, rng=rng,
                                        result_type=RolloutResult,
                                        process_local=process_local)
    mesh = mesh_lib.mesh_of(params1)
    split = (multihost.row_split(mesh, len(problems)) if process_local
             else multihost.RowSplit.everything(len(problems)))
    problems = split.take(problems)
    given = [split.take(texts) for texts in given]
    put = lambda a: multihost.put_local_batch(a, mesh, split)  # noqa: E731
    get = lambda a: multihost.local_rows(a, split)  # noqa: E731
    prompt_BP, prompt_valid_BP, truncated = self.encode_prompts(problems)
    rng1, rng2 = jax.random.split(rng)
    keys = [rng1, rng2] + [jax.random.fold_in(rng, t) for t in range(3, A + 1)]
    segments: list[Segment] = [(prompt_BP, prompt_valid_BP)]   # the context so far
    attempts, extras, logps, texts = [], [], [], []
    cache, cache_params, fed, done_B = None, None, 0, None
    for t in range(1, A + 1):
      budget = lengths.turn1 if t == 1 else lengths.turn2
      if t > 1:
        extras.append(self.extra_chunk(done_B))
        segments.append(extras[-1])
      if t <= len(given):
        attempt, kept = self.encode_attempt(given[t - 1], budget)
        attempts.append(attempt)
        texts.append(kept)
        logps.append(None)
        segments.append(attempt)
        done_B = np.ones(len(problems), bool)   # every given attempt ends its turn
        continue
      params = params1 if t == 1 else params2
      if cache is None or cache_params is not params:
        # A fresh cache (or another policy's: it cannot be reused) reads the whole context.
        cache, fed = None, 0
      chunk = segments[fed:]
      input_BC = np.concatenate([tokens for tokens, _ in chunk], axis=1)
      input_valid_BC = np.concatenate([valid for _, valid in chunk], axis=1)
      out = sampler_lib.generate(
          self.graphdef, params, put(input_BC), put(input_valid_BC), max_new_tokens=budget,
          method=method, rng=keys[t - 1], stop_ids=self.stop_ids, pad_id=self.pad_id,
          cache=cache, max_cache_len=None if cache is not None else lengths.total,
          stop_sequences=self.stop_sequences)
      tokens, valid, done_B = get(out.tokens_BS), get(out.valid_BS), get(out.done_B)
      done_B = self.ended_on_stop_id(tokens, valid, done_B)
      attempts.append((tokens, valid))
      logps.append(get(out.logprobs_BS).astype(np.float32))
      texts.append(self.decode(tokens, valid))
      segments.append((tokens, valid))
      cache, cache_params, fed = out.cache, params, len(segments)
    rewards = [self.task.rewards(problems, y) for y in texts]
    episode = layout((prompt_BP, prompt_valid_BP), attempts, extras, rewards, logps)
    for t in range(1, len(given) + 1):        # given attempts are context, not trained
      episode = episode.without_attempt(t)
    return RolloutResult(episode, list(problems), texts, truncated,
                         split=split if process_local else None)


TwoTurnSampler = MultiTurnSampler   # the name the two-attempt code used


def batching_kwargs(rollout_cfg: Any) -> dict[str, Any]:
  """MultiTurnSampler's batching arguments from the config's `rollout` section:
  `MultiTurnSampler(..., **batching_kwargs(config.rollout))` (defaults where absent)."""
  get = rollout_cfg.get if hasattr(rollout_cfg, "get") else lambda k, d: d  # noqa: E731
  return dict(batching=str(get("batching", "fixed")), slots=int(get("slots", 0)),
              segment_steps=int(get("segment_steps", 64)))


def demonstration_episode(sampler: MultiTurnSampler, problems: Sequence[base.Problem],
                          *attempts: Sequence[str]) -> Episode:
  """An Episode from given texts, one list per attempt (for supervised warm-up, STaR and
  Pair-SFT data): `demonstration_episode(sampler, problems, y1s, y2s, ...)`.

  Texts are tokenised and laid out exactly like sampled episodes; each attempt ends with the
  end-of-turn token. An attempt longer than its budget keeps its first (budget - 1) tokens
  and still ends with end-of-turn, and the task grades the text that was kept.
  """
  lengths = sampler.lengths
  if len(attempts) != lengths.attempts:
    raise ValueError(f"demonstration_episode: {len(attempts)} attempt lists for a sampler of "
                     f"{lengths.attempts} attempts (config.rollout.num_attempts)")
  prompt_BP, prompt_valid_BP, _ = sampler.encode_prompts(problems)
  segments, kept = [], []
  for t, texts in enumerate(attempts, start=1):
    segment, kept_t = sampler.encode_attempt(texts, lengths.turn1 if t == 1 else lengths.turn2)
    segments.append(segment)
    kept.append(kept_t)
  done = np.ones(len(problems), bool)  # every demonstration attempt ends with end_of_turn
  extras = [sampler.extra_chunk(done) for _ in range(lengths.attempts - 1)]
  return layout((prompt_BP, prompt_valid_BP), segments, extras,
                [sampler.task.rewards(problems, k) for k in kept])


def without_turn1_training(result: RolloutResult) -> RolloutResult:
  """The same rollouts with no y1 token trained (first attempts from another policy)."""
  return dataclasses.replace(result, episode=result.episode.without_attempt(1))
