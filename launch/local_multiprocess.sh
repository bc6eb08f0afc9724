#!/usr/bin/env bash
# N CPU processes on this machine as N hosts of one JAX run (real multi-host: a coordinator,
# gloo collectives, per-process batch slices and checkpoint shards).
#
#   launch/local_multiprocess.sh N DEVICES_PER_PROCESS python -m zel_jax.train \
#       --config=configs/blink_biencoder.py:runlocal --workdir=/tmp/mh --config.data.dir=...
#
# Each process gets --coordinator_address/--num_processes/--process_id appended and
# DEVICES_PER_PROCESS CPU devices (ZEL_CPU_DEVICES); its output lines are prefixed "[i]".
# Exits non-zero when any process does. PORT (default: a free one) picks the coordinator port.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 N DEVICES_PER_PROCESS COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1; devices=$2; shift 2
port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < n; i++)); do
  ZEL_CPU_DEVICES=$devices "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$n" \
      --process_id="$i" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status
