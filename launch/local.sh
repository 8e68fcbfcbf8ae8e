#!/usr/bin/env bash
# N processes of one JAX job on this machine (127.0.0.1), each with K CPU devices: the same
# multi-controller setup as a TPU pod or GPU cluster, small enough for a laptop.
#
#   launch/local.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] [-l LOG_DIR] [-- COMMAND ...]
#
#   launch/local.sh -n 2 -d 2                                   # smoke test (cross-process sum)
#   launch/local.sh -n 2 -d 4 -- python -m disrouter_jax.train \
#       --config configs/sft.py:toy --workdir workdir/local2x4
#
# Each process gets DISROUTER_COORDINATOR / DISROUTER_NUM_PROCESSES / DISROUTER_PROCESS_ID, read by
# disrouter_jax.distributed.initialize(). Output is prefixed with [pI] and kept in LOG_DIR. The
# script waits for all processes; as soon as one fails the others are stopped and the script
# exits with that failure's status.
set -euo pipefail

num_processes=2
devices_per_process=2
port=""
log_dir=""

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while getopts "n:d:p:l:h" opt; do
  case "$opt" in
    n) num_processes="$OPTARG" ;;
    d) devices_per_process="$OPTARG" ;;
    p) port="$OPTARG" ;;
    l) log_dir="$OPTARG" ;;
    h) usage 0 ;;
    *) usage 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 ]]; then
  set -- python -m disrouter_jax.distributed --selftest --expect-processes "$num_processes"
fi
for value in "$num_processes" "$devices_per_process"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || { echo "local.sh: -n and -d need positive integers, got '$value'" >&2; exit 2; }
done

python_bin="${PYTHON:-python}"
if [[ -z "$port" ]]; then
  # A free port chosen by the OS; tiny race window before process 0 binds it.
  port="$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
log_dir="${log_dir:-$(mktemp -d "${TMPDIR:-/tmp}/disrouter_local.XXXXXX")}"
mkdir -p "$log_dir"
echo "local.sh: $num_processes processes x $devices_per_process CPU devices, coordinator 127.0.0.1:$port, logs in $log_dir" >&2

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM

for ((i = 0; i < num_processes; i++)); do
  (
    export DISROUTER_COORDINATOR="127.0.0.1:$port"
    export DISROUTER_NUM_PROCESSES="$num_processes"
    export DISROUTER_PROCESS_ID="$i"
    export JAX_PLATFORMS=cpu
    # Last occurrence wins, so -d overrides a device count already in XLA_FLAGS.
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices_per_process"
    export PYTHONUNBUFFERED=1
    exec "$@" > >(tee "$log_dir/process$i.log" | sed -u "s/^/[p$i] /") 2>&1
  ) &
  pids+=("$!")
done

status=0
remaining=$num_processes
while ((remaining > 0)); do
  finished_pid=""
  if wait -n -p finished_pid; then rc=0; else rc=$?; fi
  remaining=$((remaining - 1))
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "local.sh: a process (pid $finished_pid) exited with status $rc; stopping the others" >&2
    cleanup
  fi
done
if ((status == 0)); then
  echo "local.sh: all $num_processes processes succeeded" >&2
fi
exit "$status"
