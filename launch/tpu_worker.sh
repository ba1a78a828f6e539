#!/usr/bin/env bash
# Runs ON each TPU worker (the other launch scripts call it through
# `gcloud compute tpus tpu-vm ssh --worker=all --command "..."`), from the repository root.
#
# Usage:
#   launch/tpu_worker.sh setup  [--venv DIR] [--jax-version V]    install Python >= 3.11,
#                                                                 jax[tpu] and the project
#                                                                 with its [tpu,gcs] extras
#   launch/tpu_worker.sh check  [--venv DIR]                      multi-host hello world
#   launch/tpu_worker.sh run    [--job NAME] [--log-dir DIR] [--detach] -- COMMAND...
#   launch/tpu_worker.sh stop   [--job NAME] [--log-dir DIR]
#   launch/tpu_worker.sh status [--job NAME] [--log-dir DIR]
#   launch/tpu_worker.sh logs   [--job NAME] [--log-dir DIR]      follow this worker's log
#
# `run` starts COMMAND in its own session (so it survives the ssh connection), appends its
# output to LOG_DIR/NAME.workerW.log and records its pid (NAME.workerW.pid) and exit status
# (NAME.workerW.rc). Without --detach it then waits: worker 0 streams its log to stdout, the
# other workers stay quiet, and the exit status is COMMAND's. Ctrl-C on your machine stops
# the stream, not the run; stop a run with `stop` (the whole process group, on each worker).
#
# The worker number W comes from $TPU_WORKER_ID, else the TPU VM metadata server
# (attributes/agent-worker-number), else a "-w-N" hostname suffix, else 0.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

die() {
  echo "error: $*" >&2
  exit 2
}

worker_id() {
  if [[ -n ${TPU_WORKER_ID:-} ]]; then
    echo "$TPU_WORKER_ID"
    return
  fi
  local w
  w=$(curl -sf -m 5 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
    2>/dev/null || true)
  if [[ $w =~ ^[0-9]+$ ]]; then
    echo "$w"
    return
  fi
  w=$(hostname)
  if [[ $w =~ -w-([0-9]+)$ ]]; then
    echo "${BASH_REMATCH[1]}"
    return
  fi
  echo 0
}

# The pid recorded in FILE if that process is still alive; else nothing.
live_pid() {
  local pid
  [[ -f $1 ]] || return 0
  pid=$(<"$1")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    echo "$pid"
  fi
}

# Python >= 3.11 (JAX 0.10 needs it; the TPU images ship Ubuntu 22.04's 3.10): prints its name.
find_python() {
  local py
  for py in python3 python3.13 python3.12 python3.11; do
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"
      return
    fi
  done
  return 1
}

apt_install() {
  # The TPU images run unattended upgrades at boot: wait for the dpkg lock, don't fail.
  sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq "$@"
}

cmd_setup() {
  local py ver
  if ! py=$(find_python); then
    echo "worker $W: installing Python 3.11 (deadsnakes PPA)"
    sudo apt-get -o DPkg::Lock::Timeout=900 update -qq
    apt_install software-properties-common
    sudo add-apt-repository -y ppa:deadsnakes/ppa
    apt_install python3.11 python3.11-venv
    py=python3.11
  fi
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  # The code-execution sandbox (score_jax/tasks, MBPP/HumanEval) runs programs in bubblewrap.
  command -v bwrap >/dev/null 2>&1 || apt_install bubblewrap
  if [[ -x $VENV/bin/python ]] &&
    ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "worker $W: $VENV has Python < 3.11; recreating it"
    rm -rf "$VENV"
  fi
  if [[ ! -x $VENV/bin/python ]] && ! "$py" -m venv "$VENV"; then
    # Debian/Ubuntu ship venv's pip bootstrap separately.
    rm -rf "$VENV"
    apt_install "python$ver-venv"
    "$py" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q -U pip
  # One resolver call: jax[tpu] (its libtpu comes from PyPI; no -f index since jax 0.4.3x),
  # the exact CI pins of requirements.txt, and the project with its [tpu] and [gcs] extras
  # (gcsfs and google-cloud-storage: the gs:// work directories these scripts require).
  "$VENV/bin/python" -m pip install -q "jax[tpu]==$JAX_VERSION" -r requirements.txt \
    -e ".[tpu,gcs]"
  "$VENV/bin/python" - "$JAX_VERSION" "$W" <<'EOF'
import platform, sys
import jax, jaxlib
want, worker = sys.argv[1], sys.argv[2]
print(f"worker {worker}: python {platform.python_version()} jax {jax.__version__} "
      f"jaxlib {jaxlib.__version__}", flush=True)
if jax.__version__ != want:
  sys.exit(f"worker {worker}: jax {jax.__version__} installed, expected {want}")
EOF
}

cmd_check() {
  # All workers must run this at the same time (--worker=all): it joins the slice.
  timeout 600 "$VENV/bin/python" - <<'EOF'
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
jax.distributed.initialize()
ids = multihost_utils.process_allgather(jnp.array(jax.process_index()))
print(f"process {jax.process_index()}/{jax.process_count()}: "
      f"{jax.local_device_count()} local of {jax.device_count()} {jax.devices()[0].platform} "
      f"devices; processes seen: {sorted(ids.tolist())}", flush=True)
assert sorted(ids.tolist()) == list(range(jax.process_count()))
EOF
}

cmd_run() {
  (($#)) || die "run: no command given (launch/tpu_worker.sh run [--detach] -- COMMAND...)"
  local pid start waited=0
  mkdir -p "$LOG_DIR"
  if pid=$(live_pid "$PID_FILE") && [[ -n $pid ]]; then
    die "worker $W: job '$JOB' is already running (pid $pid, log $LOG). Stop it first:" \
      "launch/tpu_worker.sh stop --job $JOB --log-dir $LOG_DIR"
  fi
  rm -f "$PID_FILE" "$RC_FILE"
  start=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
  printf '=== %s worker %s: %s\n' "$(date -u +%FT%TZ)" "$W" "$*" >>"$LOG"
  # A new session (process group) that outlives ssh; it records its own pid and exit status.
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid bash -c 'echo $$ >"$1"; shift; rc_file=$1; shift; "$@"; echo $? >"$rc_file"' \
    job-runner "$PID_FILE" "$RC_FILE" "$@" >>"$LOG" 2>&1 </dev/null &
  while [[ ! -s $PID_FILE ]] && ((waited < 100)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  pid=$(<"$PID_FILE")
  if ((DETACH)); then
    echo "worker $W: started '$JOB' (pid $pid); log: $LOG"
    return 0
  fi
  if [[ $W == 0 ]]; then
    tail -c "+$((start + 1))" -F --pid="$pid" "$LOG" 2>/dev/null || true
  else
    while kill -0 "$pid" 2>/dev/null; do sleep 2; done
  fi
  if kill -0 "$pid" 2>/dev/null; then
    echo "worker $W: stopped following; '$JOB' still running (pid $pid); log: $LOG"
    return 0
  fi
  if [[ -f $RC_FILE ]]; then
    local rc
    rc=$(<"$RC_FILE")
    echo "worker $W: '$JOB' exited with status $rc; log: $LOG"
    return "$rc"
  fi
  echo "worker $W: '$JOB' was stopped (no exit status); log: $LOG"
  return 143
}

cmd_stop() {
  local pid
  pid=$(live_pid "$PID_FILE")
  if [[ -z $pid ]]; then
    echo "worker $W: '$JOB' is not running"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"
  fi
  echo "worker $W: stopped '$JOB' (pid $pid)"
}

cmd_status() {
  local pid
  pid=$(live_pid "$PID_FILE")
  if [[ -n $pid ]]; then
    echo "worker $W: '$JOB' running (pid $pid); log: $LOG"
  elif [[ -f $RC_FILE ]]; then
    echo "worker $W: '$JOB' finished with status $(<"$RC_FILE"); log: $LOG"
  else
    echo "worker $W: '$JOB' not running; log: $LOG"
  fi
  [[ ! -f $LOG ]] || tail -n 3 "$LOG"
}

cmd_logs() {
  [[ -f $LOG ]] || die "worker $W: no log $LOG (has '$JOB' been started here?)"
  tail -n 100 -F "$LOG"
}

main() {
  (($#)) || {
    usage
    exit 2
  }
  local sub=$1
  shift
  case $sub in
    -h | --help)
      usage
      exit 0
      ;;
    setup | check | run | stop | status | logs) ;;
    *) die "unknown subcommand '$sub' (see --help)" ;;
  esac
  JOB=train LOG_DIR=$HOME/score_jax_logs VENV=$HOME/score_jax_venv JAX_VERSION=0.10.2 DETACH=0
  while (($#)); do
    case $1 in
      --job | --log-dir | --venv | --jax-version)
        (($# >= 2)) || die "$1 needs a value"
        case $1 in
          --job) JOB=$2 ;;
          --log-dir) LOG_DIR=$2 ;;
          --venv) VENV=$2 ;;
          --jax-version) JAX_VERSION=$2 ;;
        esac
        shift 2
        ;;
      --detach)
        DETACH=1
        shift
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      --)
        shift
        break
        ;;
      *) die "$sub: unknown option '$1' (see --help)" ;;
    esac
  done
  [[ $JOB =~ ^[A-Za-z0-9_-]+$ ]] || die "--job '$JOB': use letters, digits, _ and -"
  W=$(worker_id)
  LOG=$LOG_DIR/$JOB.worker$W.log
  PID_FILE=$LOG_DIR/$JOB.worker$W.pid
  RC_FILE=$LOG_DIR/$JOB.worker$W.rc
  "cmd_$sub" "$@"
}

main "$@"
