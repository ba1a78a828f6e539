"""Tests of launch/: syntax, shellcheck and dry-run commands (tpu_worker.sh on real processes:
tests/test_launch_worker.py).

gcloud is never called: every script runs with a `gcloud` on PATH that records any call and
fails, and the tests assert it was not called. The dry-run blocks in launch/README.md are
re-run and compared line by line.
"""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import tarfile

import pytest

from score_jax import config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(p.name for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
LOCAL_SCRIPTS = ["tpu_create.sh", "tpu_setup.sh", "tpu_train.sh", "tpu_eval.sh",
                 "tpu_delete.sh"]


@pytest.fixture
def tripwire(tmp_path):
  """A PATH whose `gcloud` records that it was called; asserts afterwards it never was."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  marker = tmp_path / "gcloud_was_called"
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 97\n')
  gcloud.chmod(0o755)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "JAX_"))}
  env["PATH"] = f"{bin_dir}:{env['PATH']}"
  yield env
  assert not marker.exists(), f"gcloud was called: {marker.read_text()}"


def run(env, *argv, ok=True):
  """Runs a launch script from the repository root; returns the CompletedProcess."""
  result = subprocess.run(["bash", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
  if ok:
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
  return result


def lines(env, *argv):
  return run(env, *argv).stdout.splitlines()


def test_every_expected_script_exists():
  assert set(SCRIPTS) >= set(LOCAL_SCRIPTS) | {"tpu_worker.sh", "slurm_gpu.sbatch",
                                               "_common.sh"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
  result = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
  result = subprocess.run(["shellcheck", "-x", f"launch/{script}"], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != "_common.sh"])
def test_help(script, tripwire):
  out = run(tripwire, f"launch/{script}", "--help").stdout
  assert "--help" in out or "Usage" in out
  assert "--dry-run" in out or script == "tpu_worker.sh"
  assert not out.startswith("#")  # comment markers stripped


def test_v5e_8_dry_run(tripwire):
  create, = lines(tripwire, "launch/tpu_create.sh", "--name", "score-v5e", "--zone",
                  "us-west4-a", "--accelerator-type", "v5litepod-8", "--dry-run")
  assert create.startswith("gcloud compute tpus tpu-vm create score-v5e ")
  for flag in ("--zone=us-west4-a", "--accelerator-type=v5litepod-8",
               "--version=v2-alpha-tpuv5-lite"):
    assert flag in create.split()
  assert "--spot" not in create

  tar, scp, install, check = lines(tripwire, "launch/tpu_setup.sh", "--name", "score-v5e",
                                   "--zone", "us-west4-a", "--dry-run")
  assert "git -C . ls-files" in tar and "/tmp/score_jax-score-v5e.tar.gz" in tar
  assert scp.split()[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  for line in (scp, install, check):
    assert "--worker=all" in line.split() and "--zone=us-west4-a" in line.split()
  assert "tpu_worker.sh setup" in install and "--jax-version 0.10.2" in install
  assert "tpu_worker.sh check" in check

  train, = lines(tripwire, "launch/tpu_train.sh", "--name", "score-v5e", "--zone",
                 "us-west4-a", "--config", "configs/tiny.py", "--workdir", "gs://b/run",
                 "--dry-run")
  words = shlex.split(train)
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "score-v5e"]
  assert "--worker=all" in words and "--zone=us-west4-a" in words
  remote = words[words.index("--command") + 1]
  assert remote.endswith("--config.distributed=True")
  assert "-m score_jax.main --config configs/tiny.py --workdir gs://b/run" in remote

  delete, = lines(tripwire, "launch/tpu_delete.sh", "--name", "score-v5e", "--zone",
                  "us-west4-a", "--dry-run")
  assert delete == "gcloud compute tpus tpu-vm delete score-v5e --zone=us-west4-a"


def test_v5p_64_dry_run(tripwire):
  create, = lines(tripwire, "launch/tpu_create.sh", "--name=score-v5p", "--zone=us-east5-a",
                  "--accelerator-type=v5p-64", "--spot", "--queued", "--valid-until", "6h",
                  "-n")
  words = create.split()
  assert words[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "score-v5p"]
  for flag in ("--node-id=score-v5p", "--zone=us-east5-a", "--accelerator-type=v5p-64",
               "--runtime-version=v2-alpha-tpuv5", "--spot", "--valid-until-duration=6h"):
    assert flag in words

  train, = lines(tripwire, "launch/tpu_train.sh", "--name", "score-v5p", "--zone",
                 "us-east5-a", "--config", "configs/tiny.py", "--workdir", "gs://b/v5p",
                 "--detach", "--config.train.batch_size=64", "-n")
  words = shlex.split(train)
  assert "--worker=all" in words and "--zone=us-east5-a" in words
  remote = words[words.index("--command") + 1]
  assert "--detach --" in remote
  assert remote.endswith("--config.train.batch_size=64 --config.distributed=True")

  delete, = lines(tripwire, "launch/tpu_delete.sh", "--name", "score-v5p", "--zone",
                  "us-east5-a", "--queued", "--yes", "-n")
  assert delete == ("gcloud compute tpus queued-resources delete score-v5p --zone=us-east5-a "
                    "--force --quiet")


@pytest.mark.parametrize("accelerator,runtime", [
    ("v5litepod-8", "v2-alpha-tpuv5-lite"), ("v5litepod-256", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"), ("v5p-64", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e"),
    ("v4-32", "tpu-ubuntu2204-base"),
])
def test_runtime_version_from_accelerator(tripwire, accelerator, runtime):
  create, = lines(tripwire, "launch/tpu_create.sh", "--name", "t", "--zone", "us-east5-a",
                  "--accelerator-type", accelerator, "-n")
  assert f"--version={runtime}" in create.split()


def test_explicit_runtime_version_and_unknown_type(tripwire):
  create, = lines(tripwire, "launch/tpu_create.sh", "--name", "t", "--zone", "us-west4-a",
                  "--accelerator-type", "v5litepod-8", "--version", "v2-alpha-tpuv5-lite-x",
                  "-n")
  assert "--version=v2-alpha-tpuv5-lite-x" in create.split()
  bad = run(tripwire, "launch/tpu_create.sh", "--name", "t", "--zone", "us-west4-a",
            "--accelerator-type", "v9z-8", "-n", ok=False)
  assert bad.returncode == 2 and "pass --version" in bad.stderr and not bad.stdout


def _remote_python_argv(line: str, module: str) -> list[str]:
  """The argv after `-m MODULE` in the --command of a printed gcloud ssh line."""
  words = shlex.split(line)
  remote = shlex.split(words[words.index("--command") + 1])
  start = remote.index(module)
  assert remote[start - 1] == "-m"
  return remote[start + 1:]


def test_train_command_round_trips_through_both_shells_and_the_cli(tripwire, monkeypatch):
  """The overrides survive the local quoting, the remote shell, and score_jax's parser."""
  tricky = "/ckpt/it's a dir"
  train, = lines(tripwire, "launch/tpu_train.sh", "--name", "x", "--zone", "us-west4-a",
                 "--config", "configs/tiny.py", "--workdir", "gs://b/r", "-n",
                 "--config.train.batch_size=8", "--config.distributed=False",
                 "--config.seed", "-7", "--", f"--config.init.checkpoint={tricky}")
  argv = _remote_python_argv(train, "score_jax.main")
  monkeypatch.chdir(REPO)
  config, args = config_lib.parse(argv, "test")
  assert args.workdir == "gs://b/r"
  assert config.train.batch_size == 8 and config.seed == -7
  assert config.init.checkpoint == tricky
  assert config.distributed is True  # forced last, whatever the overrides said


def test_eval_commands(tripwire, monkeypatch):
  own_vm, = lines(tripwire, "launch/tpu_eval.sh", "--name", "ev", "--zone", "us-east5-a",
                  "--config", "configs/tiny.py", "--workdir", "gs://b/r", "--once", "-n")
  assert "--worker=0" in own_vm.split() and "JAX_PLATFORMS" not in own_vm
  argv = _remote_python_argv(own_vm, "score_jax.evaluate")
  argv.remove("--once")
  monkeypatch.chdir(REPO)
  config, args = config_lib.parse(argv, "test")
  assert config.distributed is False and args.workdir == "gs://b/r"

  worker0, = lines(tripwire, "launch/tpu_eval.sh", "--name", "tr", "--zone", "us-east5-a",
                   "--config", "configs/tiny.py", "--workdir", "gs://b/r",
                   "--on-train-worker0", "-n")
  assert "--worker=0" in worker0.split()
  assert "--detach -- env JAX_PLATFORMS=cpu " in worker0

  multi, = lines(tripwire, "launch/tpu_eval.sh", "--name", "ev", "--zone", "us-east5-a",
                 "--config", "configs/tiny.py", "--workdir", "gs://b/r", "--distributed", "-n")
  assert "--worker=all" in multi.split() and multi.endswith("--config.distributed=True'")

  # --checkpoint reaches the evaluator, which picks that step with --once.
  chosen, = lines(tripwire, "launch/tpu_eval.sh", "--name", "ev", "--zone", "us-east5-a",
                  "--config", "configs/tiny.py", "--workdir", "gs://b/r", "--once",
                  "--checkpoint", "latest", "-n")
  argv = _remote_python_argv(chosen, "score_jax.evaluate")
  assert argv[argv.index("--checkpoint") + 1] == "latest" and "--once" in argv


@pytest.mark.parametrize("script", ["tpu_train.sh", "tpu_eval.sh"])
def test_local_workdir_is_refused(tripwire, script):
  common = ["--name", "x", "--zone", "us-west4-a", "--config", "configs/tiny.py", "-n"]
  bad = run(tripwire, f"launch/{script}", *common, "--workdir", "runs/x", ok=False)
  assert bad.returncode == 2 and "gs://" in bad.stderr and not bad.stdout
  allowed = run(tripwire, f"launch/{script}", *common, "--workdir", "runs/x",
                "--allow-local-workdir")
  assert "--workdir runs/x" in allowed.stdout and "warning" in allowed.stderr


@pytest.mark.parametrize("argv,message", [
    (["launch/tpu_create.sh", "--zone", "us-west4-a", "--accelerator-type", "v5p-8"],
     "--name is required"),
    (["launch/tpu_create.sh", "--name", "Bad_Name", "--zone", "us-west4-a"], "lowercase"),
    (["launch/tpu_create.sh", "--name", "t", "--zone", "west", "--accelerator-type", "v5p-8"],
     "does not look like a zone"),
    (["launch/tpu_create.sh", "--name", "t", "--zone", "us-west4-a", "--accelerator-type",
      "v5p-8", "--wait"], "only apply with --queued"),
    (["launch/tpu_setup.sh", "--name", "t", "--zone", "us-west4-a", "--ref", "abc"],
     "--ref needs --repo"),
    (["launch/tpu_setup.sh", "--name", "t", "--zone", "us-west4-a", "--dir", "a b"],
     "no spaces"),
    (["launch/tpu_train.sh", "--name", "t", "--zone", "us-west4-a", "--workdir", "gs://b"],
     "--config is required"),
    (["launch/tpu_train.sh", "--name", "t", "--zone", "us-west4-a", "--batch", "8"],
     "unknown argument '--batch'"),
    (["launch/tpu_train.sh", "--name", "t", "--zone", "us-west4-a", "--stop", "--logs"],
     "only one of"),
    (["launch/tpu_delete.sh", "--name", "t", "--zone"], "--zone needs a value"),
    (["launch/slurm_gpu.sbatch", "--config", "configs/tiny.py", "--workdir", "/x",
      "--ntasks-per-node", "3"], "use 1"),
    (["launch/slurm_gpu.sbatch", "--config", "configs/nope.py", "--workdir", "/x"],
     "not found"),
])
def test_bad_input_fails_with_a_clear_message(tripwire, argv, message):
  result = run(tripwire, *argv, "--dry-run", ok=False)
  assert result.returncode == 2 and message in result.stderr, result.stderr
  assert not result.stdout


def test_without_dry_run_a_missing_gcloud_is_a_clear_error(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("bash", "dirname", "sed"):
    (bin_dir / tool).symlink_to(shutil.which(tool))
  result = subprocess.run([str(bin_dir / "bash"), "launch/tpu_delete.sh", "--name", "t",
                           "--zone", "us-west4-a"], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
  assert result.returncode == 2 and "gcloud not found" in result.stderr


def test_setup_tarball_command_packs_this_checkout(tripwire):
  """The printed tar pipeline, run for real, packs the code and skips ignored files."""
  name = f"pytest-{os.getpid()}"
  tar_cmd = lines(tripwire, "launch/tpu_setup.sh", "--name", name, "--zone", "us-west4-a",
                  "-n")[0]
  tarball = pathlib.Path(f"/tmp/score_jax-{name}.tar.gz")
  try:
    subprocess.run(["bash", "-c", f"set -o pipefail; {tar_cmd}"], cwd=REPO, check=True,
                   timeout=120)
    with tarfile.open(tarball) as tar:
      names = set(tar.getnames())
  finally:
    tarball.unlink(missing_ok=True)
  for needed in ("launch/tpu_worker.sh", "score_jax/main.py", "requirements.txt",
                 "pyproject.toml", "configs/tiny.py"):
    assert needed in names
  assert not any("__pycache__" in n or n.startswith(".git/") for n in names)


# --- SLURM --------------------------------------------------------------------------------

def test_slurm_dry_run_one_process_per_node(tripwire):
  out = lines(tripwire, "launch/slurm_gpu.sbatch", "--dry-run", "--config", "configs/tiny.py",
              "--workdir", "/shared/r", "--gpus-per-node", "4", "--config.seed=1")
  assert out[0] == "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90"
  assert out[1] == "export JAX_LOCAL_DEVICE_IDS=0,1,2,3"
  assert out[2] == ("srun --kill-on-bad-exit=1 python3 -u -m score_jax.main --config "
                    "configs/tiny.py --workdir /shared/r --config.seed=1 "
                    "--config.distributed=True")


def test_slurm_dry_run_one_process_per_gpu(tripwire):
  out = lines(tripwire, "launch/slurm_gpu.sbatch", "-n", "--config", "configs/tiny.py",
              "--workdir", "/shared/r", "--ntasks-per-node", "8", "--venv", "/v")
  assert not any("JAX_LOCAL_DEVICE_IDS" in line for line in out)
  assert out[-1].startswith("srun --kill-on-bad-exit=1 --gpu-bind=none /v/bin/python -u -m "
                            "score_jax.main ")


@pytest.mark.parametrize("tasks,gpus,expect_ids,expect_bind", [
    ("1", "4", "0,1,2,3", False), ("4(x2)", "4", None, True)])
def test_slurm_job_reads_the_allocation(tripwire, tmp_path, tasks, gpus, expect_ids,
                                        expect_bind):
  """Inside a job (SLURM_* set) the script derives the layout; srun is a recording stub."""
  record = tmp_path / "srun.txt"
  srun = pathlib.Path(tripwire["PATH"].split(":")[0]) / "srun"
  srun.write_text(f'#!/bin/sh\necho "ids=${{JAX_LOCAL_DEVICE_IDS:-none}} $*" > {record}\n')
  srun.chmod(0o755)
  env = {**tripwire, "SLURM_JOB_ID": "77", "SLURM_SUBMIT_DIR": str(REPO),
         "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": tasks,
         "SLURM_GPUS_ON_NODE": gpus}
  run(env, str(LAUNCH / "slurm_gpu.sbatch"), "--config", "configs/tiny.py", "--workdir",
      "/shared/r")
  recorded = record.read_text()
  assert recorded.startswith(f"ids={expect_ids or 'none'} ")
  assert ("--gpu-bind=none" in recorded) == expect_bind
  assert recorded.rstrip().endswith("--config.distributed=True")


# --- README ------------------------------------------------------------------------------

@pytest.mark.parametrize("block", ["v5e-8", "v5p-64"])
def test_readme_dry_run_blocks_match_the_scripts(tripwire, block):
  readme = (LAUNCH / "README.md").read_text()
  match = re.search(rf"<!-- BEGIN dry-run {block} -->\n```console\n(.*?)```\n"
                    rf"<!-- END dry-run {block} -->", readme, re.S)
  assert match, f"launch/README.md lacks the dry-run block {block}"
  expected, actual = [], []
  for line in match.group(1).splitlines():
    if line.startswith("$ "):
      actual.append(line)
      actual += lines(tripwire, *shlex.split(line[2:]))
    expected.append(line)
  assert actual == expected, "launch/README.md is stale; the scripts now print:\n" + "\n".join(
      actual)
  joined = "\n".join(expected)
  assert "--worker=all" in joined and "--config.distributed=True" in joined


SRUN_STAND_IN = """#!/bin/bash
# Local stand-in for srun (not installed here): SLURM_NTASKS processes on this machine, each
# with SLURM's per-task variables, as srun would start them on the nodes.
while [[ $1 == --* ]]; do shift; done
pids=()
for i in $(seq 0 $((SLURM_NTASKS - 1))); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" > "$SRUN_LOG_DIR/task$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


@pytest.mark.slow
def test_slurm_script_runs_a_real_two_process_training(tripwire, tmp_path):
  """Two processes find each other through SLURM's variables and train together (CPU).

  jax.distributed.initialize() auto-detects the cluster from SLURM_JOB_ID, SLURM_NTASKS,
  SLURM_PROCID, ... exactly as on a real allocation; only srun is a local stand-in.
  """
  srun = pathlib.Path(tripwire["PATH"].split(":")[0]) / "srun"
  srun.write_text(SRUN_STAND_IN)
  srun.chmod(0o755)
  workdir = tmp_path / "run"
  env = {**tripwire, "SRUN_LOG_DIR": str(tmp_path), "SLURM_JOB_ID": str(os.getpid()),
         "SLURM_SUBMIT_DIR": str(REPO), "SLURM_STEP_NODELIST": "localhost",
         "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS_PER_NODE": "2",
         "SLURM_GPUS_ON_NODE": "2", "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2",
         "XLA_FLAGS": ""}
  result = subprocess.run(
      ["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--config", "configs/tiny.py", "--workdir",
       str(workdir), "--config.plan.stages=sft", "--config.plan.sft_steps=2",
       "--config.checkpoint.every=2"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
  logs = [(tmp_path / f"task{i}.log").read_text() for i in range(2)]
  assert result.returncode == 0, result.stderr + "\n".join(log[-3000:] for log in logs)
  for log in logs:
    assert "Finished 2 steps" in log
  assert any((workdir / "checkpoints").iterdir())
