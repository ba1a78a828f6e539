#!/usr/bin/env bash
# Runs the score_jax eval loop (score_jax.evaluate) against a training run's workdir.
#
# Usage: launch/tpu_eval.sh --name NAME --zone ZONE --config CONFIG --workdir gs://...
#                           [options] [--config.a.b=VALUE ...] [-- --config.c=VALUE ...]
#
# Two places to run it:
#   * its own TPU VM (default, recommended): a single-host slice such as v5litepod-8 made
#     with launch/tpu_create.sh and launch/tpu_setup.sh. It watches WORKDIR/checkpoints
#     while the training slice writes them; streams its log here unless --detach.
#   * --on-train-worker0: in the background on worker 0 of the training slice itself,
#     on CPU (JAX_PLATFORMS=cpu) because training holds the TPU chips. Only for small
#     models; the eval of a real model on CPU is very slow.
# Either way it runs `python -u -m score_jax.evaluate --config CONFIG --workdir WORKDIR
# [overrides] --config.distributed=False` on worker 0 (with --distributed, for a multi-host
# eval slice: --config.distributed=True on all its workers).
#
#   --name NAME           the eval TPU VM (with --on-train-worker0: the training slice)
#   --zone ZONE           its zone
#   --config CONFIG       the training run's config file (relative to the repository root)
#   --workdir WORKDIR     the training run's gs:// workdir
#   --config.a.b=VALUE    config overrides, passed through (also anything after --)
#   --once                evaluate one checkpoint and exit (--checkpoint picks it)
#   --checkpoint WHICH    with --once: best (by validation; the default) | latest | STEP
#   --on-train-worker0    run on worker 0 of the training slice, on CPU, detached
#   --distributed         the eval slice has several hosts: run on all of them
#   --project PROJECT     Google Cloud project (default: gcloud's configured one)
#   --detach              start the eval loop and return (follow it with --logs)
#   --logs | --status | --stop   follow / show / stop the eval loop
#   --dir DIR, --venv DIR, --log-dir DIR   as for launch/tpu_train.sh
#   --allow-local-workdir accept a non-gs:// workdir (eval on the training VM itself)
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

NAME="" ZONE="" PROJECT="" CONFIG="" WORKDIR="" DIR=score_jax VENV=score_jax_venv CHECKPOINT=""
LOG_DIR=score_jax_logs ACTION=run DETACH=0 ALLOW_LOCAL=0 ONCE=0 WORKER0=0 DISTRIBUTED=0
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
      --checkpoint | --gcloud-arg)
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
        --checkpoint) CHECKPOINT=$2 ;;
        --gcloud-arg) GCLOUD_EXTRA+=("$2") ;;
      esac
      shift 2
      ;;
    --config.*=*) OVERRIDES+=("$1") && shift ;;
    --config.*)
      (($# >= 2)) || die "$1 needs a value: $1=VALUE"
      OVERRIDES+=("$1" "$2") && shift 2
      ;;
    --once) ONCE=1 && shift ;;
    --on-train-worker0) WORKER0=1 && shift ;;
    --distributed) DISTRIBUTED=1 && shift ;;
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
((!(WORKER0 && DISTRIBUTED))) || die "--on-train-worker0 and --distributed exclude each other"
rdir=$(remote_path "$DIR")
rvenv=$(remote_path "$VENV")
rlogs=$(remote_path "$LOG_DIR")
worker_sh="cd $rdir && bash launch/tpu_worker.sh"
job="--job eval --log-dir $rlogs"
# One process evaluates (worker 0), unless the eval slice is multi-host (--distributed).
workers=0
((!DISTRIBUTED)) || workers=all

case $ACTION in
  run)
    check_config "$CONFIG"
    check_workdir "$WORKDIR" "$ALLOW_LOCAL"
    need_gcloud
    args=(-u -m score_jax.evaluate --config "$CONFIG" --workdir "$WORKDIR")
    ((!ONCE)) || args+=(--once)
    [[ -z $CHECKPOINT ]] || args+=(--checkpoint "$CHECKPOINT")
    distributed=False
    ((!DISTRIBUTED)) || distributed=True
    args+=("${OVERRIDES[@]}" "--config.distributed=$distributed")
    python_cmd="$rvenv/bin/python $(quote_args "${args[@]}")"
    detach=""
    if ((WORKER0)); then
      python_cmd="env JAX_PLATFORMS=cpu $python_cmd"
      detach=" --detach"
    fi
    ((!DETACH)) || detach=" --detach"
    gcloud_ssh "$NAME" "$ZONE" "$PROJECT" "$workers" "$worker_sh run $job$detach -- $python_cmd"
    [[ -z $detach ]] || note "started; follow with: $0 --name $NAME --zone $ZONE --logs"
    ;;
  logs)
    need_gcloud
    gcloud_ssh "$NAME" "$ZONE" "$PROJECT" 0 "$worker_sh logs $job"
    ;;
  status | stop)
    need_gcloud
    gcloud_ssh "$NAME" "$ZONE" "$PROJECT" "$workers" "$worker_sh $ACTION $job"
    ;;
esac
