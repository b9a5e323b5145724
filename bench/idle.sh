#!/usr/bin/env bash
# The idle cost of a 3-node Quarry on 127.0.0.1: each node's CPU (user + system, from
# /proc/<pid>/stat) over SECONDS seconds with no requests, after one write has
# elected the leaders and SETTLE seconds have let idle groups fall asleep. Every
# process it starts is stopped by PID when it exits.
#
#   bench/idle.sh                    # QUARRY_GROUPS=64 SECONDS_IDLE=20 SETTLE=5
#   QUARRY_GROUPS=10000 bench/idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."

groups=${QUARRY_GROUPS:-64}
idle=${SECONDS_IDLE:-20}
settle=${SETTLE:-5}
base=${QUARRY_BASE_PORT:-7751}

cargo build --profile ci --bin quarryd --bin quarry-bench
bin=target/ci
data=$(mktemp -d -t quarry-idle-XXXXXX)
pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$data"
}
trap stop EXIT
trap 'exit 130' INT TERM

cluster="1=127.0.0.1:${base},2=127.0.0.1:$((base + 1)),3=127.0.0.1:$((base + 2))"
endpoints="127.0.0.1:${base},127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
for id in 1 2 3; do
    "$bin/quarryd" --node-id "$id" --initial-cluster "$cluster" --data-dir "$data/quarry$id" \
        --groups "$groups" --shards "${QUARRY_SHARDS:-1}" 2>"$data/quarry$id.log" &
    pids+=($!)
done
for _ in $(seq 1 600); do
    "$bin/quarry-bench" --endpoints "$endpoints" --requests 1 --warmup 0 --no-progress >/dev/null 2>&1 && break
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "idle: a node exited; see its log:" >&2; cat "$data"/quarry*.log >&2; exit 1; }
    done
    sleep 0.2
done
sleep "$settle"

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A before
for pid in "${pids[@]}"; do before[$pid]=$(cpu_ticks "$pid"); done
sleep "$idle"
echo "idle for ${idle} s, ${groups} groups per node"
for i in 0 1 2; do
    pid=${pids[$i]}
    used=$(($(cpu_ticks "$pid") - before[$pid]))
    awk -v n=$((i + 1)) -v t="$used" -v hz="$ticks" -v s="$idle" \
        'BEGIN { printf "node %d: %.2f %% of a core\n", n, 100 * t / hz / s }'
done
