"""Sandbox throughput: programs per second on the MBPP reference solutions.

    python benchmarks/sandbox.py [--data_dir ../shared/data] [--workers 2,4] [--limit 0]

For each pool size, runs (1) a trivial program (`pass`) `--trivial` times, which measures
the sandbox's own cost (bubblewrap + Python start-up + driver), and (2) every MBPP
reference solution with its tests (`run_tests`, as the reward does). Prints programs/s,
CPU milliseconds per program (all processes of the sandboxes and, for MBPP, of the pool's
verifier processes, from RUSAGE_CHILDREN once the pool is closed) and
the capacity that CPU cost allows on 2 idle cores; the load average is printed because on
a shared machine the wall-clock figures depend on it. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from score_jax import sandbox  # noqa: E402  pylint: disable=wrong-import-position
from score_jax.tasks import code  # noqa: E402  pylint: disable=wrong-import-position


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _measure(pool: sandbox.SandboxPool, programs, tests=None, setups=None, names=None,
             close=False, **limits) -> dict:
  """With `close`, closes the pool before reading the CPU time, so that the verifier
  processes (which live as long as the pool) are reaped and counted."""
  cpu0, t0 = _children_cpu(), time.perf_counter()
  results = pool.map(programs, tests, setups, names, **limits)
  wall = time.perf_counter() - t0
  if close:
    pool.close()
  cpu = _children_cpu() - cpu0
  n = len(programs)
  slowest = sorted(r.elapsed_s for r in results)[-3:]
  return {"programs": n, "passed": sum(r.passed for r in results), "wall_s": round(wall, 2),
          "programs_per_s": round(n / wall, 1), "cpu_ms_per_program": round(1e3 * cpu / n, 1),
          "capacity_2_idle_cores_per_s": round(2 * n / cpu, 1),
          "slowest_s": [round(s, 2) for s in slowest]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  repo = pathlib.Path(__file__).resolve().parents[1]
  parser.add_argument("--data_dir", default=str(repo.parent / "shared" / "data"))
  parser.add_argument("--workers", default="2,4", help="pool sizes, comma-separated")
  parser.add_argument("--limit", type=int, default=0, help="first N MBPP problems (0 = all)")
  parser.add_argument("--trivial", type=int, default=200, help="runs of `pass`")
  parser.add_argument("--timeout_s", type=float, default=60.0,
                      help="per program (mbpp/123 alone needs 5-15 s of CPU)")
  args = parser.parse_args()

  task = code.MBPPTask(args.data_dir)
  problems = [p for s in task.splits for p in task.load(s)]
  if args.limit:
    problems = problems[:args.limit]
  programs = [task.program(p, p.meta["reference"]) for p in problems]
  tests = [p.answer["tests"] for p in problems]
  setups = [p.answer["setup"] for p in problems]
  names = [p.answer["names"] for p in problems]
  print(f"cpus: {os.cpu_count()}  load average before: {os.getloadavg()}")
  report = {"cpus": os.cpu_count(), "load_avg_1m_before": round(os.getloadavg()[0], 2),
            "runs": []}
  for workers in [int(w) for w in args.workers.split(",")]:
    with sandbox.SandboxPool(workers, timeout_s=args.timeout_s) as pool:
      pool.map(["pass"] * workers)                                # warm-up
      trivial = _measure(pool, ["pass"] * args.trivial)
      mbpp = _measure(pool, programs, tests, setups, names, close=True)
    print(f"workers={workers}  trivial `pass`: {trivial['programs_per_s']}/s, "
          f"{trivial['cpu_ms_per_program']} ms CPU each")
    print(f"workers={workers}  MBPP references: {mbpp['passed']}/{mbpp['programs']} passed, "
          f"{mbpp['programs_per_s']}/s ({mbpp['wall_s']} s), "
          f"{mbpp['cpu_ms_per_program']} ms CPU each "
          f"(-> {mbpp['capacity_2_idle_cores_per_s']}/s on 2 idle cores), "
          f"slowest {mbpp['slowest_s']} s")
    report["runs"].append({"workers": workers, "trivial": trivial, "mbpp": mbpp})
  report["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
  best = max(report["runs"], key=lambda r: r["mbpp"]["programs_per_s"])
  report["best_mbpp_programs_per_s"] = best["mbpp"]["programs_per_s"]
  print(json.dumps(report))


if __name__ == "__main__":
  main()
