"""Shared pieces of the speed benchmarks: workloads, one set of weights for both sides,
interleaved timing, the environment record and the output format.

Nothing here imports JAX or torch at module level: a script parses its flags, calls
`setup_env` (which must run before JAX is first imported) and only then builds models.
Both sides run the *same* random weights: a random `transformers` LlamaForCausalLM is
written with `save_pretrained` to a temporary directory and read back with
`score_jax.load`, which is also how a user brings a Hugging Face checkpoint in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:        # run as `python benchmarks/x.py` from anywhere
  sys.path.insert(0, str(REPO_ROOT))


@dataclasses.dataclass(frozen=True)
class Workload:
  """A Llama-architecture model shape plus the sampling and training shapes to time.

  `device` is "cpu" (JAX and torch both forced to the CPU) or "gpu" (JAX's default
  backend, torch on CUDA when available).
  """
  name: str
  layers: int
  embed: int
  heads: int
  kv_heads: int
  mlp: int
  vocab: int
  batch: int            # sampler rows
  prompt: int           # sampler prompt tokens per row
  new: int              # sampler new tokens per row
  train_batch: int
  train_seq: int
  dtype: str            # "float32" | "bfloat16", params and compute on both sides
  device: str           # "cpu" | "gpu"

  def hf_config(self) -> dict[str, Any]:
    """kwargs of transformers.LlamaConfig."""
    return dict(vocab_size=self.vocab, hidden_size=self.embed, intermediate_size=self.mlp,
                num_hidden_layers=self.layers, num_attention_heads=self.heads,
                num_key_value_heads=self.kv_heads,
                max_position_embeddings=max(2048, self.prompt + self.new, self.train_seq))


WORKLOADS = {
    # Small Llama on the CPU, fp32 on both sides.
    "cpu": Workload("cpu", layers=4, embed=256, heads=8, kv_heads=4, mlp=1024, vocab=32000,
                    batch=8, prompt=64, new=64, train_batch=8, train_seq=128,
                    dtype="float32", device="cpu"),
    # The 0.85B Llama of /work/shared/bench/hf_anchor.py, bf16 on one GPU.
    "anchor": Workload("anchor", layers=16, embed=2048, heads=32, kv_heads=8, mlp=5632,
                       vocab=32000, batch=64, prompt=256, new=256, train_batch=8,
                       train_seq=1024, dtype="bfloat16", device="gpu"),
}

# --smoke: the same code path on tiny shapes (seconds on a CPU); figures are meaningless.
SMOKE = dict(layers=2, embed=64, heads=4, kv_heads=2, mlp=128, vocab=512, batch=2, prompt=8,
             new=6, train_batch=2, train_seq=16)


def add_common_flags(parser) -> None:
  """Flags shared by both scripts."""
  parser.add_argument("--workload", choices=sorted(WORKLOADS), default="cpu",
                      help="cpu: 4-layer D=256 Llama, fp32 on CPU; anchor: the 0.85B Llama "
                           "of shared/bench/hf_anchor.py, bf16 on GPU")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny shapes, 1 repetition: checks the script runs (no real figures)")
  parser.add_argument("--side", choices=("both", "ours", "theirs"), default="both",
                      help="run one side only (one process per side if memory is short)")
  parser.add_argument("--reps", type=int, default=5, help="timed repetitions per side")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed warm-up calls per side after the first (compiling) call")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch intra-op threads (default: all cores; XLA uses all cores)")
  parser.add_argument("--seed", type=int, default=0)


def resolve_workload(args) -> Workload:
  """The workload named by the flags (shrunk by --smoke)."""
  w = WORKLOADS[args.workload]
  if args.smoke:
    w = dataclasses.replace(w, name=w.name + "-smoke", **SMOKE)
    args.reps, args.warmup = 1, 0
  return w


def setup_env(w: Workload) -> None:
  """Environment for JAX; call before JAX is imported.

  The CPU workload pins JAX to the CPU (`JAX_PLATFORMS=cpu` unless already set). XLA_FLAGS
  is left alone: without it JAX has one CPU device, whose thread pool uses every core.
  `OMP_WAIT_POLICY=PASSIVE` (unless set): torch's OpenMP threads otherwise spin-wait, and
  on a machine shared with other busy processes that made torch's decode step 15x slower
  (1,138 ms vs 74 ms measured on 2 loaded cores); XLA's thread pool does not spin so.
  """
  if w.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def torch_device(w: Workload) -> str:
  """"cuda" for the GPU workload when torch sees a GPU, else "cpu"."""
  import torch  # pylint: disable=import-outside-toplevel
  return "cuda" if w.device == "gpu" and torch.cuda.is_available() else "cpu"


def sync(device: str) -> None:
  """Waits for queued torch work on `device`."""
  if device == "cuda":
    import torch  # pylint: disable=import-outside-toplevel
    torch.cuda.synchronize()


def build_models(w: Workload, seed: int, device: str, need_hf: bool = True,
                 need_ours: bool = True) -> tuple[Any, Any]:
  """(transformers LlamaForCausalLM on `device` in eval mode, score_jax LM) with the
  same random weights, both in `w.dtype`. A side not needed is returned as None."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  transformers.utils.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  torch.manual_seed(seed)
  config = transformers.LlamaConfig(**w.hf_config())
  with torch.device("cuda" if device == "cuda" else "cpu"):   # init where it will run
    hf = transformers.LlamaForCausalLM(config).to(getattr(torch, w.dtype)).eval()
  lm = None
  if need_ours:
    import jax  # pylint: disable=import-outside-toplevel
    import score_jax  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory(prefix="bench_weights_") as d:
      hf.save_pretrained(d)
      lm = score_jax.load(d, dtype=w.dtype)
      jax.block_until_ready(lm.params)
  if not need_hf:
    del hf
    hf = None
  return hf, lm


@dataclasses.dataclass
class Setup:
  """What `setup` prepared: the workload, torch's device, which sides run, both models."""
  workload: Workload
  device: str
  run_ours: bool
  run_theirs: bool
  hf: Any
  lm: Any


def setup(args) -> Setup:
  """Workload, environment, torch threads and device, and the two models (a side that
  `--side` leaves out gets None); call before JAX or torch is imported elsewhere."""
  w = resolve_workload(args)
  setup_env(w)
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  device = torch_device(w)
  run_ours, run_theirs = args.side in ("both", "ours"), args.side in ("both", "theirs")
  hf, lm = build_models(w, args.seed, device, need_hf=run_theirs, need_ours=run_ours)
  return Setup(w, device, run_ours, run_theirs, hf, lm)


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int,
                     cpu_times: dict[str, list[float]] | None = None
                     ) -> dict[str, list[float]]:
  """Wall seconds of `reps` calls of each fn, interleaved (a, b, a, b, ...), so that a
  change in machine load hits both sides alike. Each fn must wait for its own results.

  If `cpu_times` is given, it receives the process CPU seconds (all threads, user + sys)
  of each call: on a shared machine a steadier measure of the work done than wall time.
  """
  times: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      c = time.process_time()
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
      if cpu_times is not None:
        cpu_times.setdefault(k, []).append(time.process_time() - c)
  return times


def first_call(fn: Callable[[], Any]) -> float:
  """Seconds of one call (the first one: tracing + compilation + one run)."""
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def median(xs: list[float]) -> float:
  return statistics.median(xs)


def cpu_model() -> str:
  try:
    for line in open("/proc/cpuinfo", encoding="utf-8"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def environment(torch_dev: str | None, threads: int | None) -> dict[str, Any]:
  """Versions, devices, thread counts and machine load (call after the imports)."""
  env: dict[str, Any] = {"python": platform.python_version(), "cpu": cpu_model(),
                         "cores": os.cpu_count(), "load_avg_1_5_15": list(os.getloadavg()),
                         "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
                         "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", ""),
                         "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""),
                         "jax_compilation_cache_dir": os.environ.get(
                             "JAX_COMPILATION_CACHE_DIR")}
  if "jax" in sys.modules:
    import jax  # pylint: disable=import-outside-toplevel
    import flax  # pylint: disable=import-outside-toplevel
    dev = jax.devices()[0]
    env.update(jax=jax.__version__, flax=flax.__version__, jax_backend=jax.default_backend(),
               jax_device=f"{dev.platform}:{dev.device_kind}", jax_device_count=jax.device_count())
  if "torch" in sys.modules and torch_dev is not None:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    env.update(torch=torch.__version__, transformers=transformers.__version__,
               torch_device=(torch.cuda.get_device_name() if torch_dev == "cuda" else "cpu"),
               torch_threads=threads)
  return env


def print_table(title: str, rows: list[tuple[str, ...]]) -> None:
  """A plain aligned table: the first row is the header."""
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  print(f"\n{title}")
  for j, r in enumerate(rows):
    print("  ".join(c.ljust(wd) if i == 0 else c.rjust(wd) for i, (c, wd) in
                    enumerate(zip(r, widths))))
    if j == 0:
      print("  ".join("-" * wd for wd in widths))


def fmt(x: float | None, digits: int = 1) -> str:
  return "-" if x is None else f"{x:,.{digits}f}"


def emit(result: dict[str, Any]) -> None:
  """Prints `result` as one JSON line: always the last line of a benchmark's output."""
  sys.stdout.flush()
  print(json.dumps(result, sort_keys=True), flush=True)


def ratio(a: float | None, b: float | None) -> float | None:
  return None if not a or not b else a / b
