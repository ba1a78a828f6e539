"""The workload of `rl_step.py`: model shapes, a tokenizer, a MATH length distribution,
forced per-row stops, timing hooks around the real sampler and grader, and the transformers
two-turn side.

Lengths. Random weights never stop by themselves, so every row is given a target length per
turn, drawn from the turn-1 lengths of the real MATH reference solutions
(`shared/data/math/train.jsonl`, field "solution", 7,500 texts) tokenised with the workload's
tokenizer, capped at 1,024 tokens (the attempt budget of configs/*_math.py) and scaled to the
workload's attempt budget T: n = clip(round(min(L, 1024) * T / 1024), 1, T). Turn 1 and turn
2 lengths are independent draws from it (a second attempt rewrites the solution). The targets
are enforced with the samplers' own per-row limits (`generate(..., max_new_tokens_B=...)`,
`generate_continuous(..., limits_NA=...)`, injected by `forced_lengths` around the functions
`rl/rollout.py` calls), and the stop tokens are masked (`NeverStop`) so no row ends early by
chance: the useful tokens are exactly the targets, the same for every side and batching mode.

Tokenizer. A byte-level BPE trained here (with the `tokenizers` package, ~2 s) on the
problems and solutions of MATH train, with the specials <pad> <bos> <eos> <eot>: prompts,
the turn-2 instruction and solution lengths get a realistic token count for a ~20-30k
vocabulary (2.7 characters per token on the solutions). The model's vocabulary may be larger
(the rollout never samples ids the tokenizer lacks, as for Qwen2.5's padded embedding).

Grading. The real MATH task grades the sampled texts (`AnsweredMathTask`). A random model's
text has no final answer, so grading would cost nothing; each graded text therefore ends
with "Final Answer: The final answer is $A$. I hope it is correct." where A is the gold
answer of another train problem, picked by a hash of the sampled text (so it does not depend
on how the texts are batched for grading, and repeats as rarely as real answers do): a wrong
answer of a real shape, graded by the real extractor, quick checks and math-verify pool
(`--no-answer-suffix` grades the raw texts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time
import zlib
from typing import Any, Callable

import _common as common

DATA = common.REPO_ROOT.parent / "shared" / "data"
SOLUTIONS = DATA / "math" / "train.jsonl"
REAL_CAP = 1024                 # the attempt budget the distribution is capped at
SPECIALS = ("<pad>", "<bos>", "<eos>", "<eot>")


@dataclasses.dataclass(frozen=True)
class ModelSpec(common.Workload):
  """A `common.Workload` model (Llama architecture), optionally with tied embeddings,
  an explicit head_dim and RoPE base (Qwen2.5 shapes; no q/k/v biases)."""
  tie: bool = False
  head_dim: int | None = None
  rope_theta: float = 10_000.0

  def hf_config(self) -> dict[str, Any]:
    return dict(super().hf_config(), tie_word_embeddings=self.tie, rope_theta=self.rope_theta,
                **({"head_dim": self.head_dim} if self.head_dim else {}))


def _model(name, layers, embed, heads, kv_heads, mlp, vocab, dtype, device, **kw) -> ModelSpec:
  """A model spec; its sampler / train shape fields only size max_position_embeddings (4,096)
  here: the rollout and step shapes are the RLWorkload's."""
  return ModelSpec(name, layers, embed, heads, kv_heads, mlp, vocab, batch=1, prompt=512,
                   new=1024, train_batch=1, train_seq=4096, dtype=dtype, device=device, **kw)


@dataclasses.dataclass(frozen=True)
class RLWorkload:
  """One Stage II step: `prompts` x `samples` rows, prompt budget P, attempt budget T."""
  name: str
  model: ModelSpec
  prompts: int
  samples: int
  prompt_len: int
  turn_tokens: int
  micro_batches: int = 1
  logit_chunk: int = 0
  remat: str = "none"
  tokenizer_texts: int | None = None    # MATH train records the BPE learns from (None: all)

  @property
  def rows(self) -> int:
    return self.prompts * self.samples


_CPU = common.WORKLOADS["cpu"]
WORKLOADS = {
    # The layers of sampler.py / train_step.py's cpu model with an 8,192-id vocabulary
    # (8.1M params, fp32), 8 prompts x 2 samples, turns of 128 (the MATH 1,024 scaled by 1/8).
    "cpu": RLWorkload("cpu", _model("cpu", _CPU.layers, _CPU.embed, _CPU.heads, _CPU.kv_heads,
                                    _CPU.mlp, 8192, "float32", "cpu"),
                      prompts=8, samples=2, prompt_len=64, turn_tokens=128),
    # The 0.85B Llama of shared/bench/hf_anchor.py, bf16, 32 prompts x 2 = its batch of 64.
    "anchor": RLWorkload("anchor", _model("anchor", 16, 2048, 32, 8, 5632, 32000, "bfloat16",
                                          "gpu"),
                         prompts=32, samples=2, prompt_len=256, turn_tokens=1024,
                         micro_batches=8, logit_chunk=512),
    # Qwen2.5-1.5B's shapes (28 layers, D 1536, 12 q / 2 kv heads of 128, MLP 8960, vocab
    # 151,936, tied), bf16, random weights; 128 prompts x 2 = 256 rollouts (issue 16).
    "qwen1p5b": RLWorkload("qwen1p5b", _model("qwen1p5b", 28, 1536, 12, 2, 8960, 151_936,
                                              "bfloat16", "gpu", tie=True, head_dim=128,
                                              rope_theta=1e6),
                           prompts=128, samples=2, prompt_len=512, turn_tokens=1024,
                           micro_batches=32, logit_chunk=256, remat="full"),
}
# --smoke: the same code path on tiny shapes (seconds on a CPU); figures are meaningless.
SMOKE = dict(prompts=2, samples=2, prompt_len=32, turn_tokens=16, micro_batches=1,
             logit_chunk=0, tokenizer_texts=400)
SMOKE_MODEL = dict(layers=2, embed=64, heads=4, kv_heads=2, mlp=128, vocab=512)


def resolve(name: str, smoke: bool) -> RLWorkload:
  w = WORKLOADS[name]
  if smoke:
    model = dataclasses.replace(w.model, name=w.name + "-smoke", head_dim=None, **SMOKE_MODEL)
    w = dataclasses.replace(w, name=w.name + "-smoke", model=model, **SMOKE)
  return w


def parse_arms(spec: str) -> list[tuple[str, str]]:
  """--arms "fixed:off,fixed:rows" -> [("fixed", "off"), ("fixed", "rows")]."""
  arms = []
  for item in spec.split(","):
    batching, _, compaction = item.strip().partition(":")
    if batching not in ("fixed", "continuous") or compaction not in ("off", "columns", "rows"):
      raise SystemExit(f"--arms {item!r}: use batching:compaction with batching fixed or "
                       "continuous and compaction off, columns or rows")
    arms.append((batching, compaction))
  if len(set(arms)) != len(arms):
    raise SystemExit(f"--arms {spec!r} names an arm twice")
  return arms


# ------------------------------------------------------------------ tokenizer and lengths

def _math_records(limit: int | None) -> list[dict]:
  with open(SOLUTIONS, encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  return records[:limit] if limit else records


def build_tokenizer(vocab: int, directory: pathlib.Path, texts: int | None = None) -> Any:
  """A byte-level BPE of at most `vocab` ids (specials first) trained on MATH train's
  problems and solutions, saved in `directory` and loaded as a score_jax HFTokenizer."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  from tokenizers import (  # pylint: disable=import-outside-toplevel
      decoders, models, pre_tokenizers, trainers)
  from score_jax.text.hf_tokenizer import HFTokenizer  # pylint: disable=import-outside-toplevel
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=min(vocab, 32000), special_tokens=list(SPECIALS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator([r[k] for r in _math_records(texts) for k in ("problem", "solution")],
                          trainer)
  directory.mkdir(parents=True, exist_ok=True)
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}))
  return HFTokenizer(directory)


def solution_lengths(tokenizer: Any) -> Any:
  """Token counts of the 7,500 MATH train reference solutions (the turn-1 distribution)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  return np.array([len(tokenizer.encode(r["solution"])) for r in _math_records(None)])


def scaled_lengths(lengths: Any, turn_tokens: int, cap: int = REAL_CAP) -> Any:
  """clip(round(min(L, cap) * T / cap), 1, T): the distribution on a budget of T tokens."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  scaled = np.rint(np.minimum(np.asarray(lengths), cap) * (turn_tokens / cap))
  return np.clip(scaled, 1, turn_tokens).astype(np.int32)


def draw_targets(pool: Any, rows: int, seed: int, step: int, turns: int = 2) -> list[Any]:
  """Per turn, `rows` target lengths drawn with replacement from `pool` (seeded by step)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng([seed, step])
  return [rng.choice(pool, size=rows).astype(np.int32) for _ in range(turns)]


def length_stats(real: Any, pool: Any, vocab: int, turn_tokens: int) -> dict:
  """Percentiles of the real and the scaled length distributions (for the JSON record)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  pct = lambda x: {f"p{q}": float(np.percentile(x, q)) for q in (50, 90, 99)}  # noqa: E731
  return {"source": str(SOLUTIONS.relative_to(DATA.parent)), "solutions": len(real),
          "tokenizer_vocab": vocab, "cap": REAL_CAP, "turn_tokens": turn_tokens,
          "real_mean": float(np.mean(real)), "real": pct(real),
          "scaled_mean": float(np.mean(pool)), "scaled": pct(pool)}


# ------------------------------------------------------------------ accounting (pure)

def slot_steps(lengths_B: Any, width: int) -> tuple[int, int, int]:
  """(iterations, useful, idle) slot-steps of one fixed-batch decode: the loop runs until
  its longest row ends (lengths are cut at `width`), iterations of B slots each; a row is
  useful for its own length and idle for the rest."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  lengths_B = np.minimum(np.asarray(lengths_B), width)
  iters = int(lengths_B.max(initial=0))
  useful = int(lengths_B.sum())
  return iters, useful, iters * len(lengths_B) - useful


def split_call(call_s: float, one_token_s: float, iters: int) -> tuple[float, float]:
  """(prefill, decode) seconds of a generate call of `iters` loop iterations from the time
  of a 1-token call at the same shapes. Each iteration samples a token and runs one
  forward, so t(1) = prefill + step and t(n) = prefill + n * step."""
  if iters <= 1:
    return min(max(one_token_s, 0.0), call_s), max(call_s - one_token_s, 0.0)
  step = max((call_s - one_token_s) / (iters - 1), 0.0)
  prefill = min(max(one_token_s - step, 0.0), call_s)
  return prefill, call_s - prefill


def uncovered(intervals: list[tuple[float, float]],
              busy: list[tuple[float, float]]) -> float:
  """Seconds of the union of `intervals` not covered by the union of `busy` (e.g. grading
  time during which the accelerator had nothing queued)."""
  def union(xs):
    out: list[list[float]] = []
    for a, b in sorted(xs):
      if out and a <= out[-1][1]:
        out[-1][1] = max(out[-1][1], b)
      elif b > a:
        out.append([a, b])
    return out
  total = 0.0
  for a, b in union(intervals):
    covered = sum(max(0.0, min(b, d) - max(a, c)) for c, d in union(busy))
    total += (b - a) - covered
  return total


# ------------------------------------------------------------------ hooks around the real code

@dataclasses.dataclass(frozen=True)
class NeverStop:
  """`inner`, but never drawing `stop_ids`: rows end only at their forced lengths."""
  inner: Any
  stop_ids: tuple[int, ...]

  def _mask(self, logits_BV):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    ids_V = jnp.arange(logits_BV.shape[-1])
    hit_V = jnp.isin(ids_V, jnp.asarray(self.stop_ids))
    return jnp.where(hit_V, -jnp.inf, logits_BV)

  def apply(self, logits_BV):
    return self.inner.apply(self._mask(logits_BV))

  def sample(self, rng, logits_BV):
    return self.inner.sample(rng, self._mask(logits_BV))


@dataclasses.dataclass
class StepLog:
  """What the hooks saw during one step: generate calls and grading calls (perf_counter)."""
  targets: list[Any] | None = None      # per turn, [B] target lengths to force
  calls: list[dict] = dataclasses.field(default_factory=list)
  grading: list[tuple[float, float]] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def forced_lengths(log_ref: Callable[[], StepLog]):
  """Wraps the samplers rl/rollout.py calls so that every row gets its forced lengths, each
  call waits for its result and is logged: `score_jax.sampler.generate` (fixed batch: call
  t of a step gets `max_new_tokens_B = targets[t]`) and, where the checkout has it,
  `score_jax.continuous.generate_continuous` (`limits_NA` = the targets, [N, A])."""
  import importlib  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from score_jax import sampler as sampler_lib  # pylint: disable=import-outside-toplevel
  real = sampler_lib.generate
  try:
    cont_lib = importlib.import_module("score_jax.continuous")
  except ImportError:
    cont_lib = None
  real_cont = getattr(cont_lib, "generate_continuous", None)

  def generate(*args, **kw):
    log = log_ref()
    if log.targets is not None:
      kw["max_new_tokens_B"] = log.targets[len(log.calls)]
    start, cpu = time.perf_counter(), time.process_time()
    out = real(*args, **kw)
    jax.block_until_ready(out.tokens_BS)
    log.calls.append(dict(kind="fixed", start=start, end=time.perf_counter(),
                          cpu=time.process_time() - cpu,
                          lengths=[np.asarray(out.lengths_B)], widths=[kw["max_new_tokens"]],
                          args=args[2:4], kw={k: v for k, v in kw.items() if k != "cache"},
                          continued=kw.get("cache") is not None))
    return out

  def generate_continuous(graphdef, params, prompts, **kw):
    log = log_ref()
    if log.targets is not None:
      kw["limits_NA"] = np.stack(log.targets, axis=1)
    start, cpu = time.perf_counter(), time.process_time()
    out = real_cont(graphdef, params, prompts, **kw)
    log.calls.append(dict(kind="continuous", start=start, end=time.perf_counter(),
                          cpu=time.process_time() - cpu,
                          lengths=[a.lengths_B for a in out.attempts], widths=kw["widths"],
                          slots=min(kw.get("slots") or len(prompts), len(prompts)),
                          stats=dict(out.stats)))
    return out

  sampler_lib.generate = generate
  if real_cont is not None:
    cont_lib.generate_continuous = generate_continuous
  try:
    yield real
  finally:
    sampler_lib.generate = real
    if real_cont is not None:
      cont_lib.generate_continuous = real_cont


def answered_math_task(data_dir: pathlib.Path, workers: int, log_ref: Callable[[], StepLog],
                       suffix: bool) -> Any:
  """The real MathTask whose `rewards` is timed into the step's log and (if `suffix`)
  grades each text with a wrong final answer of a real shape appended (module docstring)."""
  from score_jax.tasks.math.task import MathTask  # pylint: disable=import-outside-toplevel

  class AnsweredMathTask(MathTask):
    wrong_answers: list[str] = []      # gold answers of the train split, set by the caller

    def rewards(self, problems, responses):
      if suffix:
        pool = self.wrong_answers or ["0"]
        picks = [zlib.crc32(r.encode()) % len(pool) for r in responses]
        other = [pool[i] if pool[i] != p.answer else pool[(i + 1) % len(pool)]
                 for i, p in zip(picks, problems)]
        responses = [f"{r}\nFinal Answer: The final answer is ${a}$. I hope it is correct."
                     for r, a in zip(responses, other)]
      start = time.perf_counter()
      out = super().rewards(problems, responses)
      log_ref().grading.append((start, time.perf_counter()))
      return out

  return AnsweredMathTask(data_dir, grader_workers=workers, timeout_s=10.0)


# ------------------------------------------------------------------ transformers side

def theirs_two_turn(hf: Any, device: str, prompt_BP: Any, valid_BP: Any, targets: list[Any],
                    turn_tokens: int, second_turn_ids: list[int], stop_id: int,
                    never_ids: tuple[int, ...], pad_id: int, seed: int) -> list[Any]:
  """Two `generate` calls (temperature 1, dynamic cache) with each row forced to stop with
  `stop_id` after exactly its target number of tokens; turn 2 re-reads its whole context
  (prompt + y1 + instruction, left-padded), as a two-turn transformers rollout does.
  Returns the new tokens of each turn ([B, <= T] tensors)."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  class ForceLength(transformers.LogitsProcessor):
    def __init__(self, targets_B, start):
      self.targets_B = torch.as_tensor(targets_B, device=device)
      self.start = start

    def __call__(self, input_ids, scores):
      scores[:, list(never_ids)] = -torch.inf
      last_B = self.targets_B == input_ids.shape[1] - self.start + 1
      scores[last_B] = -torch.inf
      scores[last_B, stop_id] = 0.0
      return scores

  torch.manual_seed(seed)
  outs, contexts = [], [[int(t) for t, v in zip(r, ok) if v] for r, ok in zip(prompt_BP, valid_BP)]
  for turn, targets_B in enumerate(targets):
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, c in enumerate(contexts):
      ids[i, width - len(c):] = torch.as_tensor(c)
      mask[i, width - len(c):] = 1
    with torch.no_grad():
      out = hf.generate(ids.to(device), attention_mask=mask.to(device), do_sample=True,
                        temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=turn_tokens,
                        eos_token_id=stop_id, pad_token_id=pad_id,
                        logits_processor=transformers.LogitsProcessorList(
                            [ForceLength(targets_B, width)]))
    common.sync(device)
    new = out[:, width:].cpu()
    outs.append(new)
    if turn + 1 < len(targets):
      contexts = [c + [int(t) for t in row[:n]] + list(second_turn_ids)
                  for c, row, n in zip(contexts, new, targets_B)]
  return outs
