#!/usr/bin/env bash
# A Cloud TPU pod slice: create it, copy this checkout to every worker, install, run the same
# command on all workers at once (one JAX process per worker host; jax.distributed detects the
# slice by itself), delete it.
#
#   launch/tpu_pod.sh create
#   launch/tpu_pod.sh copy
#   launch/tpu_pod.sh install
#   launch/tpu_pod.sh run [COMMAND ...]      # default: SFT with configs/sft.py
#   launch/tpu_pod.sh selftest               # cross-host sum over every chip of the slice
#   launch/tpu_pod.sh ssh-all 'COMMAND'      # any shell command on every worker
#   launch/tpu_pod.sh delete
#   launch/tpu_pod.sh up [COMMAND ...]       # create + copy + install + run
#
# Settings (environment): TPU_NAME (disrouter), ZONE (us-central2-b), ACCELERATOR_TYPE (v4-32 =
# 16 chips on 4 hosts), RUNTIME_VERSION (tpu-ubuntu2204-base), PROJECT (gcloud's default),
# SPOT=1 for a spot slice, REMOTE_DIR (disrouter_jax, under each worker's home), WORKDIR (must be
# visible to every worker, e.g. gs://bucket/run; default gs://$BUCKET/$TPU_NAME when BUCKET is set),
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

TPU_NAME="${TPU_NAME:-disrouter}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-disrouter_jax}"
PROJECT="${PROJECT:-}"
WORKDIR="${WORKDIR:-${BUCKET:+gs://$BUCKET/$TPU_NAME}}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

gcloud_tpu() {
  local args=(gcloud compute tpus tpu-vm "$@" --zone="$ZONE")
  [[ -n "$PROJECT" ]] && args+=(--project="$PROJECT")
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '%q ' "${args[@]}"
    printf '\n'
  else
    "${args[@]}"
  fi
}

# Runs one shell command on every worker of the slice, concurrently.
on_all_workers() {
  gcloud_tpu ssh "$TPU_NAME" --worker=all --command="$1"
}

quote_command() {
  local quoted
  printf -v quoted '%q ' "$@"
  echo "${quoted% }"
}

create() {
  local extra=()
  [[ "${SPOT:-0}" == "1" ]] && extra+=(--spot)
  gcloud_tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${extra[@]}"
}

copy() {
  # Tracked and untracked-but-not-ignored files only: no venv, workdirs or caches.
  local archive
  archive="$(mktemp "${TMPDIR:-/tmp}/disrouter_code.XXXXXX.tgz")"
  (cd "$repo_root" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar czf "$archive")
  gcloud_tpu scp "$archive" "$TPU_NAME:~/disrouter_code.tgz" --worker=all
  on_all_workers "mkdir -p ~/$REMOTE_DIR && tar xzf ~/disrouter_code.tgz -C ~/$REMOTE_DIR"
  rm -f "$archive"
}

install() {
  # jax[tpu] brings the matching libtpu; the project pins jax itself in setup.py.
  on_all_workers "cd ~/$REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install --quiet --upgrade pip \
&& .venv/bin/pip install --quiet -e . 'jax[tpu]'"
}

run() {
  if [[ $# -eq 0 ]]; then
    [[ -n "$WORKDIR" ]] || { echo "tpu_pod.sh run: set WORKDIR (or BUCKET) to a path every worker sees, e.g. gs://bucket/run" >&2; exit 2; }
    set -- python -m disrouter_jax.train --config configs/sft.py --workdir "$WORKDIR"
  fi
  # No DISROUTER_COORDINATOR: initialize() lets JAX read the slice's topology from the TPU
  # metadata server. The ssh session streams every worker's output; a failure on any worker makes
  # gcloud exit non-zero.
  on_all_workers "cd ~/$REMOTE_DIR && source .venv/bin/activate && PYTHONUNBUFFERED=1 $(quote_command "$@")"
}

main() {
  local step="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$step" in
    create) create ;;
    copy) copy ;;
    install) install ;;
    run) run "$@" ;;
    selftest) run python -m disrouter_jax.distributed --selftest ;;
    ssh-all) on_all_workers "$*" ;;
    delete) gcloud_tpu delete "$TPU_NAME" --quiet ;;
    up) create && copy && install && run "$@" ;;
    *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
