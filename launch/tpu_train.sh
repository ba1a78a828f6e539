#!/usr/bin/env bash
# Runs score_jax training on ALL workers of a TPU VM or pod slice (JAX multi-controller).
#
# Usage: launch/tpu_train.sh --name NAME --zone ZONE --config CONFIG --workdir gs://...
#                            [options] [--config.a.b=VALUE ...] [-- --config.c=VALUE ...]
#
# Every worker runs, from the code directory that launch/tpu_setup.sh installed:
#   python -u -m score_jax.main --config CONFIG --workdir WORKDIR [overrides]
#          --config.distributed=True
# (jax.distributed.initialize() then finds the other hosts of the slice by itself). The run
# lives in its own session on each worker, logging to LOG_DIR/train.workerN.log there;
# worker 0's log streams here. Ctrl-C stops the stream, not the run (see --stop). Re-running
# the same command resumes from the last checkpoint in WORKDIR.
#
#   --name NAME           the TPU
#   --zone ZONE           its zone
#   --config CONFIG       config file, relative to the repository root (e.g. configs/tiny.py)
#   --workdir WORKDIR     gs://BUCKET/PATH shared by all hosts and the eval loop
#   --config.a.b=VALUE    config overrides, passed through (also anything after --)
#   --project PROJECT     Google Cloud project (default: gcloud's configured one)
#   --detach              start the run and return (follow it with --logs)
#   --logs                follow worker 0's log of the current run (--worker N for another)
#   --status              show each worker's state and last log lines
#   --stop                stop the run on every worker (the whole process group)
#   --worker N            with --logs: which worker (default 0)
#   --dir DIR             code directory on the workers (default: score_jax, under $HOME)
#   --venv DIR            virtualenv on the workers (default: score_jax_venv, under $HOME)
#   --log-dir DIR         log directory on the workers (default: score_jax_logs, under $HOME)
#   --allow-local-workdir accept a non-gs:// workdir (single-host slices only)
#   --gcloud-arg ARG      extra flag for every gcloud ssh (repeatable)
#   --dry-run, -n         print the gcloud command instead of running it
#   -h, --help            this help
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

NAME="" ZONE="" PROJECT="" CONFIG="" WORKDIR="" DIR=score_jax VENV=score_jax_venv
LOG_DIR=score_jax_logs ACTION=run DETACH=0 ALLOW_LOCAL=0 WORKER=0
OVERRIDES=()
set_action() {
  [[ $ACTION == run ]] || die "use only one of --logs, --status, --stop"
  ACTION=$1
}
normalize_args "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --name | --zone | --project | --config | --workdir | --dir | --venv | --log-dir | \
      --worker | --gcloud-arg)
      need_value "$@"
      case $1 in
        --name) NAME=$2 ;;
        --zone) ZONE=$2 ;;
        --project) PROJECT=$2 ;;
        --config) CONFIG=$2 ;;
        --workdir) WORKDIR=$2 ;;
        --dir) DIR=$2 ;;
        --venv) VENV=$2 ;;
        --log-dir) LOG_DIR=$2 ;;
        --worker) WORKER=$2 ;;
        --gcloud-arg) GCLOUD_EXTRA+=("$2") ;;
      esac
      shift 2
      ;;
    --config.*=*) OVERRIDES+=("$1") && shift ;;
    --config.*)
      (($# >= 2)) || die "$1 needs a value: $1=VALUE"
      OVERRIDES+=("$1" "$2") && shift 2
      ;;
    --detach) DETACH=1 && shift ;;
    --logs) set_action logs && shift ;;
    --status) set_action status && shift ;;
    --stop) set_action stop && shift ;;
    --allow-local-workdir) ALLOW_LOCAL=1 && shift ;;
    --dry-run | -n) DRY_RUN=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    --)
      shift
      OVERRIDES+=("$@")
      break
      ;;
    *) die "unknown argument '$1' (see --help; config overrides look like --config.a.b=VALUE)" ;;
  esac
done

check_tpu_name "$NAME"
check_zone "$ZONE"
[[ $WORKER =~ ^[0-9]+$ ]] || die "--worker '$WORKER' must be a worker number"
rdir=$(remote_path "$DIR")
rvenv=$(remote_path "$VENV")
rlogs=$(remote_path "$LOG_DIR")
worker_sh="cd $rdir && bash launch/tpu_worker.sh"
job="--job train --log-dir $rlogs"

case $ACTION in
  run)
    check_config "$CONFIG"
    check_workdir "$WORKDIR" "$ALLOW_LOCAL"
    need_gcloud
    # distributed=True goes last so that no override can turn it off on a multi-host slice.
    # ($rvenv is unquoted: its $HOME is for the remote shell; remote_path checked its characters.)
    python_cmd="$rvenv/bin/python $(quote_args -u -m score_jax.main --config "$CONFIG" \
      --workdir "$WORKDIR" "${OVERRIDES[@]}" --config.distributed=True)"
    detach=""
    ((!DETACH)) || detach=" --detach"
    gcloud_ssh "$NAME" "$ZONE" "$PROJECT" all "$worker_sh run $job$detach -- $python_cmd"
    ((!DETACH)) || note "started; follow with: $0 --name $NAME --zone $ZONE --logs"
    ;;
  logs)
    need_gcloud
    gcloud_ssh "$NAME" "$ZONE" "$PROJECT" "$WORKER" "$worker_sh logs $job"
    ;;
  status | stop)
    need_gcloud
    gcloud_ssh "$NAME" "$ZONE" "$PROJECT" all "$worker_sh $ACTION $job"
    ;;
esac
