#!/usr/bin/env bash
# Times the operator's commands on a loaded cluster: a 3-node Quarry (64 groups) on
# 127.0.0.1 is filled by quarry-bench (KEYS puts of 256-byte values), then node 4 is
# added, node 3 is killed and replaced by node 5, node 1 drained, leaders balanced,
# node 2 removed, and a backup saved and verified. Every process it starts is stopped
# by PID when it exits.
#
#   bench/membership.sh              # KEYS=200000 QUARRY_BASE_PORT=19001
set -euo pipefail
cd "$(dirname "$0")/.."

keys=${KEYS:-200000}
base=${QUARRY_BASE_PORT:-19001}
cargo build --profile ci --bin quarryd --bin quarryctl --bin quarry-bench
bin=target/ci
data=$(mktemp -d -t quarry-membership-XXXXXX)
declare -A pids
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT

addr() { echo "127.0.0.1:$((base + $1 - 1))"; }
founders="1=$(addr 1),2=$(addr 2),3=$(addr 3)"
start() { # start ID INITIAL_CLUSTER [FLAGS...]
    local id=$1 initial=$2
    shift 2
    "$bin/quarryd" --node-id "$id" --data-dir "$data/n$id" --initial-cluster "$initial" --segment-mib 16 "$@" \
        2>"$data/n$id.log" &
    pids[$id]=$!
}
wait_serving() {
    for _ in $(seq 100); do "$bin/quarryctl" --endpoints "$(addr "$1")" status >/dev/null 2>&1 && return; sleep 0.1; done
    echo "membership: node $1 never answered" >&2
    exit 1
}
timed() { # timed LABEL COMMAND...
    local label=$1 started
    shift
    started=$(date +%s.%N)
    "$@" >/dev/null
    printf '%-16s %6.2f s\n' "$label" "$(echo "$(date +%s.%N) - $started" | bc)"
}

for id in 1 2 3; do start $id "$founders"; done
for id in 1 2 3; do wait_serving $id; done
endpoints="$(addr 1),$(addr 2),$(addr 3)"
"$bin/quarry-bench" --endpoints "$endpoints" --workload put --keys "$keys" --requests "$keys" --clients 256 \
    --warmup 0 --no-progress | grep 'req/s'
ctl=("$bin/quarryctl" --endpoints "$endpoints")

start 4 "$founders,4=$(addr 4)" --initial-cluster-state existing
wait_serving 4
timed "member add" "${ctl[@]}" member add 4 "$(addr 4)"
kill -9 "${pids[3]}"
unset 'pids[3]'
start 5 "$founders,5=$(addr 5)" --initial-cluster-state existing
wait_serving 5
timed "member replace" "${ctl[@]}" member replace 3 5 "$(addr 5)"
timed "leader drain" "${ctl[@]}" leader drain 1
timed "leader balance" "${ctl[@]}" leader balance
timed "member remove" "${ctl[@]}" member remove 2
timed "snapshot save" "$bin/quarryctl" --endpoints "$(addr 1)" snapshot save "$data/backup"
"$bin/quarryctl" snapshot status "$data/backup"
