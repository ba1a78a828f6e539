#!/usr/bin/env bash
# Deletes a TPU VM or pod slice (a TPU bills until it is deleted, idle or not).
#
# Usage: launch/tpu_delete.sh --name NAME --zone ZONE [options]
#
#   --name NAME         the TPU (or queued resource) to delete
#   --zone ZONE         its zone
#   --project PROJECT   Google Cloud project (default: gcloud's configured one)
#   --queued            it was created with launch/tpu_create.sh --queued: delete the queued
#                       resource and its TPU (--force); a plain TPU delete would leave the
#                       queued resource behind
#   --yes, -y           do not ask for confirmation (gcloud --quiet)
#   --async             return without waiting for the deletion to finish
#   --dry-run, -n       print the gcloud command instead of running it
#   -h, --help          this help
#
# Checkpoints and metrics in the gs:// workdir are not touched. Logs in the workers'
# score_jax_logs/ directories are lost with the VMs: copy what you need first, e.g.
#   gcloud compute tpus tpu-vm scp NAME:score_jax_logs/train.worker0.log . --zone ZONE
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

NAME="" ZONE="" PROJECT="" QUEUED=0 YES=0 ASYNC=0
normalize_args "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --name | --zone | --project)
      need_value "$@"
      case $1 in
        --name) NAME=$2 ;;
        --zone) ZONE=$2 ;;
        --project) PROJECT=$2 ;;
      esac
      shift 2
      ;;
    --queued) QUEUED=1 && shift ;;
    --yes | -y) YES=1 && shift ;;
    --async) ASYNC=1 && shift ;;
    --dry-run | -n) DRY_RUN=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

check_tpu_name "$NAME"
check_zone "$ZONE"
need_gcloud

extra=()
[[ -z $PROJECT ]] || extra+=("--project=$PROJECT")
((!ASYNC)) || extra+=(--async)
((!YES)) || extra+=(--quiet)
if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "$NAME" "--zone=$ZONE" --force "${extra[@]}"
else
  run gcloud compute tpus tpu-vm delete "$NAME" "--zone=$ZONE" "${extra[@]}"
fi
