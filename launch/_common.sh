# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, never run): argument parsing, checks,
# quoting, and the --dry-run switch that prints each command instead of running it.
#
# Under --dry-run, stdout carries exactly the commands that would run, one per line, quoted
# so that they can be pasted into a shell; notes go to stderr. Nothing here calls gcloud.

DRY_RUN=0
GCLOUD_EXTRA=()   # extra flags for every gcloud ssh/scp call (--gcloud-arg, repeatable)

# The TPU software ("runtime") version for an accelerator type, from the Cloud TPU docs
# (https://cloud.google.com/tpu/docs/runtimes): the images to use with JAX.
runtime_for_accelerator() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v4-* | v3-* | v2-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

die() {
  echo "error: $*" >&2
  exit 2
}

note() {
  echo "[${0##*/}] $*" >&2
}

# Prints its arguments as one shell-quoted command line (quotes only where needed).
quote_args() {
  local out="" arg q="'"
  for arg in "$@"; do
    if [[ -n $arg && $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//$q/$q\\$q$q}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# Runs a command, or prints it under --dry-run.
run() {
  if ((DRY_RUN)); then
    quote_args "$@"
  else
    "$@"
  fi
}

# Runs a shell pipeline given as one string, or prints it under --dry-run.
run_shell() {
  if ((DRY_RUN)); then
    printf '%s\n' "$1"
  else
    bash -c "set -euo pipefail; $1"
  fi
}

need_gcloud() {
  if ((!DRY_RUN)) && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found. Install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)" \
      "and run 'gcloud auth login', or add --dry-run to only print the commands."
  fi
}

# Splits "--option=value" into "--option" "value" (not --config.a.b=v overrides, which
# contain dots and pass through unchanged). Result in the array ARGS.
normalize_args() {
  ARGS=()
  local arg
  for arg in "$@"; do
    if [[ $arg =~ ^--[a-z][a-z0-9-]*= ]]; then
      ARGS+=("${arg%%=*}" "${arg#*=}")
    else
      ARGS+=("$arg")
    fi
  done
}

# need_value OPTION "$@": fails unless OPTION is followed by a value (one that does not look
# like an option, except for --gcloud-arg, whose values are gcloud flags).
need_value() {
  if (($# < 2)) || [[ -z $2 ]] || [[ $2 == -* && $1 != --gcloud-arg ]]; then
    die "$1 needs a value (see --help)"
  fi
}

check_tpu_name() {
  [[ -n $1 ]] || die "--name is required: the TPU VM (or queued resource) name (see --help)"
  [[ $1 =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name '$1': use lowercase letters, digits and hyphens, starting with a letter"
}

check_zone() {
  [[ -n $1 ]] || die "--zone is required, e.g. --zone us-west4-a (v5e) or us-east5-a (v5p)"
  [[ $1 =~ ^[a-z]+-[a-z]+[0-9]+-[a-z0-9]+$ ]] ||
    die "--zone '$1' does not look like a zone (e.g. us-west4-a)"
}

# remote_path PATH: a path on the TPU workers; relative paths are under the remote $HOME
# (printed literally as $HOME, expanded by the remote shell).
remote_path() {
  [[ $1 =~ ^[A-Za-z0-9_./-]+$ ]] ||
    die "remote path '$1': use only letters, digits and _ . / - (no spaces or quotes)"
  if [[ $1 == /* ]]; then
    printf '%s\n' "$1"
  else
    printf '%s\n' "\$HOME/$1"
  fi
}

# check_workdir WORKDIR ALLOW_LOCAL: the run directory must be a bucket all hosts share.
check_workdir() {
  [[ -n $1 ]] || die "--workdir is required, e.g. --workdir gs://MY_BUCKET/runs/math"
  if [[ $1 != gs://* ]]; then
    if (($2)); then
      note "warning: --workdir '$1' is not a gs:// bucket: only valid on a single-host slice" \
        "with the eval loop on the same VM"
    else
      die "--workdir '$1' is not a gs:// bucket. On a TPU slice every host must write to the" \
        "same directory (Orbax writes gs:// directly) and the eval VM must read it; a local" \
        "path loses the other hosts' checkpoint shards and the eval loop sees nothing." \
        "Use --workdir gs://BUCKET/PATH (or --allow-local-workdir on a single-host slice)."
    fi
  fi
}

# check_config CONFIG: warns when the config file is not in this checkout (it is read on
# the workers, relative to the repository root there).
check_config() {
  [[ -n $1 ]] || die "--config is required, e.g. --config configs/tiny.py"
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [[ $1 != /* && ! -f $root/$1 ]]; then
    note "warning: $1 is not in this checkout ($root); it must exist on the workers"
  fi
}

# gcloud_ssh NAME ZONE PROJECT WORKER COMMAND: runs (or prints) COMMAND on the workers.
gcloud_ssh() {
  local cmd=(gcloud compute tpus tpu-vm ssh "$1" "--zone=$2" "--worker=$4")
  [[ -z $3 ]] || cmd+=("--project=$3")
  cmd+=("${GCLOUD_EXTRA[@]}" --command "$5")
  run "${cmd[@]}"
}
