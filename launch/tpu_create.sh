#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice for score_jax.
#
# Usage: launch/tpu_create.sh --name NAME --zone ZONE --accelerator-type TYPE [options]
#
#   --name NAME              TPU name (lowercase letters, digits, hyphens)
#   --zone ZONE              e.g. us-west4-a (v5e), us-east5-a (v5p); see
#                            https://cloud.google.com/tpu/docs/regions-zones
#   --accelerator-type TYPE  e.g. v5litepod-8 (v5e, 8 chips, 1 host),
#                            v5p-64 (v5p, 64 TensorCores = 32 chips, 8 hosts)
#   --version RUNTIME        TPU software version; default from TYPE:
#                            v5litepod-* v2-alpha-tpuv5-lite, v5p-* v2-alpha-tpuv5,
#                            v6e-* v2-alpha-tpuv6e, v4-*/v3-*/v2-* tpu-ubuntu2204-base
#   --project PROJECT        Google Cloud project (default: gcloud's configured one)
#   --spot                   Spot VMs: much cheaper, can be preempted at any time
#                            (score_jax resumes from the last checkpoint on restart)
#   --queued                 request through the queued-resources API: waits in a queue
#                            for capacity instead of failing when none is free now
#   --valid-until DURATION   with --queued: give up if not provisioned within DURATION (6h)
#   --wait                   with --queued: poll until the slice is ACTIVE
#   --gcloud-arg ARG         extra flag for the create command (repeatable), e.g.
#                            --gcloud-arg=--service-account=SA_EMAIL, --gcloud-arg=--reserved
#   --dry-run, -n            print the gcloud commands instead of running them
#   -h, --help               this help
#
# Next: launch/tpu_setup.sh --name NAME --zone ZONE. Afterwards: launch/tpu_delete.sh
# (a TPU bills until it is deleted, whether or not anything runs on it).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

NAME="" ZONE="" TYPE="" VERSION="" PROJECT="" SPOT=0 QUEUED=0 VALID_UNTIL="" WAIT=0
normalize_args "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --name | --zone | --accelerator-type | --version | --project | --valid-until | --gcloud-arg)
      need_value "$@"
      case $1 in
        --name) NAME=$2 ;;
        --zone) ZONE=$2 ;;
        --accelerator-type) TYPE=$2 ;;
        --version) VERSION=$2 ;;
        --project) PROJECT=$2 ;;
        --valid-until) VALID_UNTIL=$2 ;;
        --gcloud-arg) GCLOUD_EXTRA+=("$2") ;;
      esac
      shift 2
      ;;
    --spot) SPOT=1 && shift ;;
    --queued) QUEUED=1 && shift ;;
    --wait) WAIT=1 && shift ;;
    --dry-run | -n) DRY_RUN=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

check_tpu_name "$NAME"
check_zone "$ZONE"
[[ -n $TYPE ]] || die "--accelerator-type is required, e.g. v5litepod-8 or v5p-64"
[[ $TYPE =~ ^[a-z0-9]+-[0-9]+$ ]] || die "--accelerator-type '$TYPE' should look like v5litepod-8"
if [[ -z $VERSION ]]; then
  VERSION=$(runtime_for_accelerator "$TYPE") ||
    die "no default runtime for '$TYPE': pass --version (see https://cloud.google.com/tpu/docs/runtimes)"
fi
if ((!QUEUED)) && [[ -n $VALID_UNTIL || $WAIT == 1 ]]; then
  die "--valid-until and --wait only apply with --queued"
fi
need_gcloud

extra=()
[[ -z $PROJECT ]] || extra+=("--project=$PROJECT")
((!SPOT)) || extra+=(--spot)
extra+=("${GCLOUD_EXTRA[@]}")

if ((QUEUED)); then
  [[ -z $VALID_UNTIL ]] || extra+=("--valid-until-duration=$VALID_UNTIL")
  run gcloud compute tpus queued-resources create "$NAME" "--node-id=$NAME" "--zone=$ZONE" \
    "--accelerator-type=$TYPE" "--runtime-version=$VERSION" "${extra[@]}"
  describe=(gcloud compute tpus queued-resources describe "$NAME" "--zone=$ZONE")
  [[ -z $PROJECT ]] || describe+=("--project=$PROJECT")
  if ((WAIT)); then
    if ((DRY_RUN)); then
      quote_args "${describe[@]}" "--format=value(state.state)"
    else
      note "waiting for queued resource $NAME to become ACTIVE (Ctrl-C stops waiting only)"
      while :; do
        state=$("${describe[@]}" "--format=value(state.state)")
        note "state: $state"
        case $state in
          ACTIVE) break ;;
          FAILED | SUSPENDED) die "queued resource $NAME is $state: $(quote_args "${describe[@]}")" ;;
        esac
        sleep 60
      done
    fi
  else
    note "queued: check with '$(quote_args "${describe[@]}")' until state is ACTIVE"
  fi
else
  run gcloud compute tpus tpu-vm create "$NAME" "--zone=$ZONE" "--accelerator-type=$TYPE" \
    "--version=$VERSION" "${extra[@]}"
fi
note "next: launch/tpu_setup.sh --name $NAME --zone $ZONE; when done: launch/tpu_delete.sh" \
  "--name $NAME --zone $ZONE$( ((QUEUED)) && echo ' --queued')"
