#!/usr/bin/env bash
# Installs score_jax on ALL workers of a TPU VM or pod slice.
#
# Usage: launch/tpu_setup.sh --name NAME --zone ZONE [options]
#
# Steps (each printed, not run, under --dry-run):
#   1. the code: by default a tarball of this checkout (tracked and untracked, non-ignored
#      files, uncommitted edits included) copied with `tpu-vm scp --worker=all`; with
#      --repo URL a `git clone` on every worker instead
#   2. on every worker (`tpu-vm ssh --worker=all`): launch/tpu_worker.sh setup: Python >= 3.11
#      (the TPU images ship 3.10; JAX 0.10 needs 3.11), a venv, then in one pip call
#      "jax[tpu]==0.10.2" -r requirements.txt -e ".[tpu,gcs]" so every worker gets the same
#      versions, libtpu from PyPI and gcsfs / google-cloud-storage for gs:// work directories
#   3. a multi-host check on every worker: jax.distributed.initialize() and an all-gather
#      of the process ids (skip with --no-check)
#
#   --name NAME         the TPU (from launch/tpu_create.sh)
#   --zone ZONE         its zone
#   --project PROJECT   Google Cloud project (default: gcloud's configured one)
#   --repo URL          clone URL instead of copying this checkout
#   --ref REF           with --repo: commit, tag or branch to check out (default: the
#                       remote's default branch); use a commit so all workers match
#   --dir DIR           code directory on the workers (default: score_jax, under $HOME)
#   --venv DIR          virtualenv on the workers (default: score_jax_venv, under $HOME)
#   --jax-version V     default 0.10.2 (must match requirements.txt)
#   --no-check          skip step 3
#   --gcloud-arg ARG    extra flag for every gcloud ssh/scp (repeatable), e.g.
#                       --gcloud-arg=--tunnel-through-iap or --gcloud-arg=--internal-ip
#   --dry-run, -n       print the commands instead of running them
#   -h, --help          this help
#
# Re-run it after changing the code: every worker must run the same code and versions.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
# shellcheck source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

NAME="" ZONE="" PROJECT="" REPO="" REF="" DIR=score_jax VENV=score_jax_venv JAX_VERSION=0.10.2
CHECK=1
normalize_args "$@"
set -- "${ARGS[@]}"
while (($#)); do
  case $1 in
    --name | --zone | --project | --repo | --ref | --dir | --venv | --jax-version | --gcloud-arg)
      need_value "$@"
      case $1 in
        --name) NAME=$2 ;;
        --zone) ZONE=$2 ;;
        --project) PROJECT=$2 ;;
        --repo) REPO=$2 ;;
        --ref) REF=$2 ;;
        --dir) DIR=$2 ;;
        --venv) VENV=$2 ;;
        --jax-version) JAX_VERSION=$2 ;;
        --gcloud-arg) GCLOUD_EXTRA+=("$2") ;;
      esac
      shift 2
      ;;
    --no-check) CHECK=0 && shift ;;
    --dry-run | -n) DRY_RUN=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

check_tpu_name "$NAME"
check_zone "$ZONE"
[[ -z $REF || -n $REPO ]] || die "--ref needs --repo (without it, this checkout is copied)"
[[ $JAX_VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--jax-version '$JAX_VERSION' is not X.Y.Z"
rdir=$(remote_path "$DIR")
rvenv=$(remote_path "$VENV")
need_gcloud

worker_setup="bash launch/tpu_worker.sh setup --venv $rvenv --jax-version $JAX_VERSION"
if [[ -z $REPO ]]; then
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  [[ $root == "$PWD" ]] && src=. || src=$root
  git -C "$root" rev-parse --git-dir >/dev/null 2>&1 ||
    die "$root is not a git checkout: pass --repo URL to clone the code on the workers instead"
  tarball=/tmp/score_jax-$NAME.tar.gz
  remote_tar=score_jax-src.tar.gz
  q_src=$(quote_args "$src")
  run_shell "git -C $q_src ls-files -z -co --exclude-standard | tar -C $q_src --null -T - --ignore-failed-read -czf $tarball"
  scp=(gcloud compute tpus tpu-vm scp "$tarball" "$NAME:$remote_tar" "--zone=$ZONE" --worker=all)
  [[ -z $PROJECT ]] || scp+=("--project=$PROJECT")
  run "${scp[@]}" "${GCLOUD_EXTRA[@]}"
  fetch="rm -rf $rdir.new && mkdir -p $rdir.new && tar -xzf $remote_tar -C $rdir.new"
  fetch+=" && rm -rf $rdir && mv $rdir.new $rdir && rm -f $remote_tar"
else
  q_repo=$(quote_args "$REPO")
  fetch="if [ -d $rdir/.git ]; then git -C $rdir fetch --tags origin; else git clone $q_repo $rdir; fi"
  if [[ -n $REF ]]; then
    fetch+=" && git -C $rdir checkout --detach $(quote_args "$REF")"
  else
    fetch+=" && git -C $rdir checkout --detach origin/HEAD"
  fi
fi
gcloud_ssh "$NAME" "$ZONE" "$PROJECT" all "set -e; $fetch && cd $rdir && $worker_setup"
if ((CHECK)); then
  gcloud_ssh "$NAME" "$ZONE" "$PROJECT" all \
    "cd $rdir && bash launch/tpu_worker.sh check --venv $rvenv"
fi
note "next: launch/tpu_train.sh --name $NAME --zone $ZONE --config configs/CONFIG.py" \
  "--workdir gs://BUCKET/runs/RUN"
