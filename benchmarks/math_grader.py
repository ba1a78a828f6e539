"""Grading time for 500 MATH500 items through the pool (wall and CPU seconds).

  python benchmarks/math_grader.py [path/to/shared/data]
"""
import json, os, pathlib, time, sys
from score_jax.tasks.math import grading as math_grading
from score_jax.tasks.math.task import extract_answer, grade_batch

def cpu_of(pids):
  tot = 0.0
  for pid in pids:
    try:
      f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
      tot += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except FileNotFoundError:
      pass
  return tot

DATA = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data')
rs = [json.loads(l) for l in open(DATA / 'math500' / 'test.jsonl')]
golds = [r['answer'] for r in rs]
print("load", os.getloadavg())
pool = math_grading.GraderPool(2)
t = time.time(); pool.grade([("\\sqrt{2}", "2^{1/2}")]); print(f"pool start (zygote import + warm-up + fork): {time.time()-t:.1f}s")
def run(name, preds):
  math_grading.clear_verdict_cache()
  pids = [g.pid for g in pool._graders]
  c0, p0 = cpu_of(pids), time.process_time()
  t = time.time(); v = grade_batch(preds, golds, pool=pool); wall = time.time() - t
  pids2 = [g.pid for g in pool._graders]
  print(f"{name:45s} correct {sum(v):3d}/500  wall {wall:6.2f}s  parent cpu {time.process_time()-p0:5.2f}s  grader cpu {cpu_of(pids2)-c0:6.2f}s  restarts {pool.restarts}")
run("gold vs itself", golds)
run("extract(reference solution) vs gold", [extract_answer(r['solution']) for r in rs])
others = [golds[(i + 1) % 500] for i in range(500)]
run("next problem's gold vs gold (cold parsers)", others)
run("next problem's gold vs gold (again, no cache)", others)
run("'\\sqrt{2}+1' vs every gold", ["\\sqrt{2}+1"] * 500)
mix = [g if i % 2 else o for i, (g, o) in enumerate(zip(golds, others))]
run("half right / half wrong", mix)
pool.close()
