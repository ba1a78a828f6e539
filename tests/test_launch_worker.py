"""launch/tpu_worker.sh run for real on local processes: log streaming, detach / status / stop
of the process group, the worker id, and a two-process jax.distributed hello world."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT as REPO

LAUNCH = REPO / "launch"


def worker(tmp_path, worker_id, *argv, timeout=60):
  env = {**os.environ, "TPU_WORKER_ID": str(worker_id), "HOME": str(tmp_path)}
  return subprocess.run(["bash", "launch/tpu_worker.sh", *argv], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_worker_run_streams_worker0_logs_others_and_returns_the_status(tmp_path):
  logs = tmp_path / "logs"
  job = ["--job", "t", "--log-dir", str(logs), "--"]
  first = worker(tmp_path, 0, "run", *job, "bash", "-c", "echo out-0; echo err-0 >&2; exit 3")
  assert first.returncode == 3
  assert "out-0" in first.stdout and "err-0" in first.stdout
  assert "exited with status 3" in first.stdout
  other = worker(tmp_path, 1, "run", *job, "bash", "-c", "echo out-1")
  assert other.returncode == 0 and "out-1" not in other.stdout
  assert "out-1" in (logs / "t.worker1.log").read_text()
  assert (logs / "t.worker1.rc").read_text().strip() == "0"
  # A second run on worker 0 appends to its log and streams only the new output.
  again = worker(tmp_path, 0, "run", *job, "echo", "second")
  assert "second" in again.stdout and "out-0" not in again.stdout
  assert (logs / "t.worker0.log").read_text().count("\nout-0\n") == 1


def test_worker_detach_status_refuse_and_stop_the_process_group(tmp_path):
  logs = tmp_path / "logs"
  child_pid_file = tmp_path / "child.pid"
  opts = ["--job", "d", "--log-dir", str(logs)]
  script = f"sleep 300 & echo $! > {child_pid_file}; wait"
  started = worker(tmp_path, 0, "run", *opts, "--detach", "--", "bash", "-c", script)
  pid = int((logs / "d.worker0.pid").read_text())
  try:
    assert started.returncode == 0 and "started 'd'" in started.stdout
    for _ in range(50):
      if child_pid_file.exists() and child_pid_file.read_text().strip():
        break
      time.sleep(0.1)
    child = int(child_pid_file.read_text())
    assert "running" in worker(tmp_path, 0, "status", *opts).stdout
    refused = worker(tmp_path, 0, "run", *opts, "--", "true")
    assert refused.returncode == 2 and "already running" in refused.stderr
    stopped = worker(tmp_path, 0, "stop", *opts)
    assert stopped.returncode == 0 and "stopped 'd'" in stopped.stdout
    for _ in range(50):
      if not _alive(child):
        break
      time.sleep(0.1)
    assert not _alive(pid) and not _alive(child), "stop must end the whole process group"
    assert "not running" in worker(tmp_path, 0, "status", *opts).stdout
  finally:
    if _alive(pid):
      os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie still answers kill(0); count it as gone.
  stat = pathlib.Path(f"/proc/{pid}/stat")
  return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_worker_id_comes_from_the_hostname_when_there_is_no_metadata(tmp_path):
  script = LAUNCH / "tpu_worker.sh"
  text = script.read_text()
  assert "agent-worker-number" in text  # the TPU VM metadata attribute
  result = subprocess.run(
      ["bash", "-c", f'source <(sed -n "/^worker_id()/,/^}}/p" {script}); '
       'hostname() { echo t1v-n-abc-w-5; }; curl() { return 7; }; TPU_WORKER_ID= worker_id'],
      capture_output=True, text=True)
  assert result.stdout.strip() == "5"


def test_worker_check_is_a_real_multi_process_hello_world(tmp_path):
  """`tpu_worker.sh check` on two local processes (CPU) that find each other.

  The TPU metadata that jax.distributed.initialize() reads on a slice is not here, so the
  processes get SLURM's variables, which it auto-detects the same way.
  """
  venv_bin = tmp_path / "venv" / "bin"
  venv_bin.mkdir(parents=True)
  # A wrapper, not a symlink: a symlinked interpreter outside its virtualenv no longer
  # finds the venv's pyvenv.cfg and loses its site-packages.
  (venv_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
  (venv_bin / "python").chmod(0o755)
  procs = []
  for i in range(2):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "XLA_"))}
    env.update(SLURM_JOB_ID=str(os.getpid() + 1), SLURM_STEP_NODELIST="localhost",
               SLURM_NTASKS="2", SLURM_PROCID=str(i), SLURM_LOCALID=str(i),
               JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", TPU_WORKER_ID=str(i))
    procs.append(subprocess.Popen(
        ["bash", "launch/tpu_worker.sh", "check", "--venv", str(tmp_path / "venv")], cwd=REPO,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, out
    assert f"process {i}/2: 2 local of 4 cpu devices; processes seen: [0, 1]" in out
