"""Math grading with a wall-clock kill per item: `grade_batch` and the shared `GraderPool`s.

math-verify's own timeouts use `signal.alarm`, which works only in a main thread and cannot
interrupt C code (a big-integer power inside sympy runs to the end), so a pathological answer
such as `2^{2^{2^{2^{2^{2}}}}}` could stall training. `grade_batch` therefore decides in the
calling process what needs no math-verify (`math_answer.quick_verdict`: equal after
normalisation, different plain numbers, ...) and sends the rest to a `GraderPool`: grader
processes forked from a warm zygote (`workers`), one item in flight per grader,
`timeout_s` seconds of wall-clock time per item. A grader that runs over is killed (SIGKILL)
and replaced by a fresh fork in milliseconds; its item counts as wrong. A grader that dies
counts its item as wrong the same way. Graders run under an address-space limit (RLIMIT_AS),
so `1000000!` cannot eat the machine's memory.

Pools are shared per worker count at module level (`acquire_pool` / `release_pool`, with a
reference count), so tasks and `grade_batch` reuse warm processes instead of paying the
~1-2 s sympy start-up per batch. `shutdown_pools()` (also run at exit) closes them.
"""

from __future__ import annotations

import atexit
import collections
import math
import multiprocessing.connection
import threading
import time
from typing import Sequence

from score_jax.tasks.math import answer as math_answer
from score_jax.tasks.math import workers as math_workers

# The zygote must import sympy + math-verify and warm up within this many seconds.
STARTUP_TIMEOUT_S = 120.0
DEFAULT_MEMORY_LIMIT_BYTES = 4 << 30
# Verdicts remembered by grade_batch (RL samples repeat answers): (pred, gold) -> bool.
VERDICT_CACHE_SIZE = 1 << 16


def check_timeout(timeout_s: float, where: str) -> float:
  """`timeout_s` if it is a finite number of seconds > 0, else a ValueError naming `where`.

  A timeout of 0 (or less) would not grade anything that needs math-verify: every such answer,
  right or wrong, would count as timed out and score 0, silently.
  """
  try:
    seconds = math.nan if isinstance(timeout_s, (bool, str)) else float(timeout_s)
  except (TypeError, ValueError):
    seconds = math.nan
  if not math.isfinite(seconds) or seconds <= 0:
    raise ValueError(f"{where}: timeout_s must be a finite number of seconds > 0, got "
                     f"{timeout_s!r} (at 0 every answer that needs math-verify would score 0)")
  return seconds


class GraderPool:
  """Grader processes that decide (pred, gold) pairs with `math_answer.is_equivalent`.

  Args:
    workers: items graded at once (one grader process each).
    timeout_s: default wall-clock seconds per item before its grader is killed (item: False).
    memory_limit_bytes: RLIMIT_AS of the zygote and graders (None: no limit).
  """

  def __init__(self, workers: int = 2, *, timeout_s: float = 5.0,
               memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES):
    if workers < 1:
      raise ValueError(f"GraderPool: workers must be >= 1, got {workers}")
    self.workers = workers
    self.timeout_s = check_timeout(timeout_s, "GraderPool")
    self.memory_limit_bytes = memory_limit_bytes
    self.restarts = 0        # graders killed for running over time, or found dead
    self._lock = threading.Lock()
    self._zygote: math_workers.Zygote | None = None
    self._graders: list[math_workers.Grader] = []
    self._closed = False

  def _fork(self) -> math_workers.Grader:
    """A fresh grader; (re)starts the zygote if there is none or it stopped answering."""
    for attempt in range(2):
      if self._zygote is None:
        # math-verify's own (signal.alarm) timeouts: a cheaper first line of defence.
        self._zygote = math_workers.Zygote(self.memory_limit_bytes, max(1.0, self.timeout_s / 2),
                                           STARTUP_TIMEOUT_S)
      try:
        return self._zygote.fork()
      except math_workers.ZygoteError:
        self._zygote.close()
        self._zygote = None
        if attempt:
          raise
    raise AssertionError("unreachable")

  def _replace(self, grader: math_workers.Grader) -> None:
    grader.kill()
    self.restarts += 1
    self._graders[self._graders.index(grader)] = self._fork()

  def grade(self, pairs: Sequence[tuple[str | None, str]], *,
            timeout_s: float | None = None) -> list[bool]:
    """Verdicts for (pred, gold) pairs; an item past `timeout_s` seconds counts as False."""
    timeout_s = (self.timeout_s if timeout_s is None else
                 check_timeout(timeout_s, "GraderPool.grade"))
    results = [False] * len(pairs)
    todo = collections.deque(i for i, (p, _) in enumerate(pairs) if p is not None)
    with self._lock:
      if self._closed:
        raise RuntimeError("GraderPool.grade called after close()")
      while len(self._graders) < self.workers:
        self._graders.append(self._fork())
      while todo or any(g.item is not None for g in self._graders):
        now = time.monotonic()
        for g in list(self._graders):
          if g.item is None and todo:
            i = todo.popleft()
            try:
              g.send(i, pairs[i][0], pairs[i][1])
            except OSError:
              todo.appendleft(i)
              self._replace(g)
              continue
            g.item, g.deadline = i, now + timeout_s
        busy = [g for g in self._graders if g.item is not None]
        if not busy:
          continue  # a send failed and its grader was replaced: dispatch again
        readable = multiprocessing.connection.wait(
            busy, timeout=max(0.0, min(g.deadline for g in busy) - now))
        now = time.monotonic()
        for g in busy:
          msg = g.recv() if g in readable else False   # None: died or garbled
          if msg and msg[0] == g.item:
            results[g.item] = bool(msg[1])
            g.item = None
          elif msg is not False or now >= g.deadline:
            g.item = None          # the item counts as wrong
            self._replace(g)
    return results

  def close(self) -> None:
    """Stops all processes (a closed pool cannot grade)."""
    with self._lock:
      self._closed = True
      for g in self._graders:
        g.kill()
      self._graders = []
      if self._zygote is not None:
        self._zygote.close()
        self._zygote = None


_SHARED: dict[int, tuple[GraderPool, int]] = {}
_DEFAULT_HELD: dict[int, GraderPool] = {}
_VERDICTS: collections.OrderedDict[tuple[str, str], bool] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
_SHARED_LOCK = threading.RLock()


def acquire_pool(workers: int = 2) -> GraderPool:
  """The module's shared pool with `workers` workers, with one more reference."""
  with _SHARED_LOCK:
    pool, refs = _SHARED.get(workers, (None, 0))
    if pool is None:
      pool = GraderPool(workers)
    _SHARED[workers] = (pool, refs + 1)
    return pool


def release_pool(pool: GraderPool) -> None:
  """Drops one reference to a shared pool; the last one closes it."""
  with _SHARED_LOCK:
    entry = _SHARED.get(pool.workers)
    if entry is None or entry[0] is not pool:
      pool.close()
      return
    if entry[1] <= 1:
      del _SHARED[pool.workers]
    else:
      _SHARED[pool.workers] = (pool, entry[1] - 1)
      return
  pool.close()


def _default_pool(workers: int) -> GraderPool:
  """The shared pool that `grade_batch` uses; it holds one reference until shutdown_pools."""
  with _SHARED_LOCK:
    if workers not in _DEFAULT_HELD:
      _DEFAULT_HELD[workers] = acquire_pool(workers)
    return _DEFAULT_HELD[workers]


def clear_verdict_cache() -> None:
  """Forgets the verdicts remembered by grade_batch."""
  with _CACHE_LOCK:
    _VERDICTS.clear()


@atexit.register
def shutdown_pools() -> None:
  """Closes every shared pool (also run at interpreter exit)."""
  with _SHARED_LOCK:
    pools = [p for p, _ in _SHARED.values()]
    _SHARED.clear()
    _DEFAULT_HELD.clear()
  for p in pools:
    p.close()


def grade_batch(preds: Sequence[str | None], golds: Sequence[str], *, timeout_s: float = 5.0,
                workers: int = 2, pool: GraderPool | None = None) -> list[bool]:
  """`is_equivalent(pred, gold)` for each pair, with a wall-clock limit per pair.

  Pairs that `math_answer.quick_verdict` decides (equal after normalisation, no answer,
  different plain numbers, ...) are decided here; the rest go to a process pool running
  math-verify, `timeout_s` seconds each; an item that takes longer counts as wrong.

  Args:
    preds: extracted answers (None: no answer, graded False).
    golds: gold answers, same length.
    timeout_s: wall-clock seconds per pair (> 0; a ValueError otherwise).
    workers: size of the shared pool used when `pool` is None; that pool stays warm for the
      next call until `shutdown_pools()`.
    pool: a pool to use instead of the shared one.

  Verdicts from the pool are remembered (LRU, `VERDICT_CACHE_SIZE` pairs), a timed-out
  pair's False included, so a repeated pathological answer costs its timeout once.
  """
  check_timeout(timeout_s, "grade_batch")
  if len(preds) != len(golds):
    raise ValueError(f"grade_batch: {len(preds)} preds but {len(golds)} golds")
  results = [False] * len(preds)
  rest: list[int] = []
  for i, (p, g) in enumerate(zip(preds, golds)):
    quick = math_answer.quick_verdict(p, g)
    if quick is None:
      rest.append(i)
    else:
      results[i] = quick
  with _CACHE_LOCK:
    hits = {i: _VERDICTS.get((preds[i], golds[i])) for i in rest}
  for i, hit in hits.items():
    if hit is not None:
      results[i] = hit
  rest = [i for i in rest if hits[i] is None]
  if rest:
    pool = _default_pool(workers) if pool is None else pool
    verdicts = pool.grade([(preds[i], golds[i]) for i in rest], timeout_s=timeout_s)
    with _CACHE_LOCK:
      for i, v in zip(rest, verdicts):
        results[i] = v
        _VERDICTS[(preds[i], golds[i])] = v
        _VERDICTS.move_to_end((preds[i], golds[i]))
      while len(_VERDICTS) > VERDICT_CACHE_SIZE:
        _VERDICTS.popitem(last=False)
  return results
