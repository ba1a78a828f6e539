"""Math grading throughput on MATH500 through the pool: answers/s, wall and CPU seconds.

  python benchmarks/math_grader.py [path/to/shared/data] [--skip-adversarial]

Rows: `grade_batch` on extracted answers (gold vs itself, reference solutions, wrong answers
with cold and warm parsers, one expression vs every gold, half right), then whole responses
through extraction + grading: the 500 reference solutions, and 64k-character adversarial
responses (the shapes that were quadratic before the bounded grader). The load average is
printed first and last: other work on the machine changes every figure. `--skip-adversarial`
leaves out the last row (for a grader without the bounds, where it takes many minutes).
"""
import json
import os
import pathlib
import sys
import time

from score_jax.tasks.math import grading as math_grading
from score_jax.tasks.math.task import extract_answer, grade_batch


def cpu_of(pids):
  """User + system CPU seconds of live processes."""
  total = 0.0
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except FileNotFoundError:
      pass
  return total


ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
DATA = pathlib.Path(ARGS[0] if ARGS else
                    pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")
with open(DATA / "math500" / "test.jsonl", encoding="utf-8") as f:
  records = [json.loads(line) for line in f]
golds = [r["answer"] for r in records]
print("load average", os.getloadavg())
pool = math_grading.GraderPool(2)
start = time.time()
pool.grade([("\\sqrt{2}", "2^{1/2}")])
print(f"pool start (zygote import + warm-up + fork): {time.time() - start:.1f}s")


def run(name, responses, row_golds=None, extract=False):
  """Grades one row (extracting first if `extract`) and prints its figures."""
  row_golds = golds if row_golds is None else row_golds
  math_grading.clear_verdict_cache()
  pids = [g.pid for g in pool._graders]  # pylint: disable=protected-access
  c0, p0 = cpu_of(pids), time.process_time()
  t0 = time.time()
  preds = [extract_answer(r) for r in responses] if extract else responses
  verdicts = grade_batch(preds, row_golds, pool=pool)
  wall = time.time() - t0
  grader_cpu = cpu_of([g.pid for g in pool._graders]) - c0  # pylint: disable=protected-access
  print(f"{name:48s} correct {sum(verdicts):3d}/{len(verdicts)}  {len(verdicts) / wall:7.0f} "
        f"answers/s  wall {wall:6.2f}s  parent cpu {time.process_time() - p0:5.2f}s  "
        f"grader cpu {grader_cpu:6.2f}s  restarts {pool.restarts}")


run("gold vs itself", golds)
run("extract(reference solution) vs gold", [extract_answer(r["solution"]) for r in records])
others = [golds[(i + 1) % 500] for i in range(500)]
run("next problem's gold vs gold (cold parsers)", others)
run("next problem's gold vs gold (again, no cache)", others)
run("'\\sqrt{2}+1' vs every gold", ["\\sqrt{2}+1"] * 500)
mix = [g if i % 2 else o for i, (g, o) in enumerate(zip(golds, others))]
run("half right / half wrong", mix)
run("whole reference solutions (extract + grade)", [r["solution"] for r in records],
    extract=True)
N = 64_000
adversarial = [
    "The final answer is 7" + " " * N,
    "The final answer is " * (N // 20),
    "\\boxed{1" + " ab" * (N // 3) + " 1}",
    "\\boxed{" + "{" * (N // 2) + "7" + "}" * (N // 2) + "}",
    "\\boxed{7" + " " * N + "x}",
    "\\boxed{" + "." * N + "}",
]
if "--skip-adversarial" not in sys.argv:
  run("64k adversarial responses (extract + grade)", adversarial * 5, ["7"] * 30, extract=True)
pool.close()
print("load average", os.getloadavg())
