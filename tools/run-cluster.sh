#!/usr/bin/env bash
# Builds quarryd and runs a 3-node cluster on 127.0.0.1 until Ctrl-C (or SIGTERM),
# then stops every node it started, by PID. Data lives in a temporary directory
# (kept with --keep). Ports: QUARRY_BASE_PORT (default 7001) .. +2 for gRPC, +100 ..
# +102 for metrics. One shard per node by default (QUARRY_SHARDS), since the three
# nodes share this host's cores.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=false
[ "${1:-}" = "--keep" ] && keep=true
base=${QUARRY_BASE_PORT:-7001}
data=$(mktemp -d -t quarry-cluster-XXXXXX)

bin=target/ci
# `cargo test --profile ci` builds these binaries too: use them when no source is
# newer, rather than asking cargo (which would rebuild some dependencies with the
# features a plain build resolves).
if [ -x "$bin/quarryd" ] && [ -x "$bin/quarryctl" ] &&
    [ -z "$(find src tools proto bench build.rs Cargo.toml Cargo.lock -newer "$bin/quarryd" -print -quit)" ] &&
    [ -z "$(find src tools proto bench build.rs Cargo.toml Cargo.lock -newer "$bin/quarryctl" -print -quit)" ]; then
    echo "using $bin/quarryd and $bin/quarryctl (up to date)"
else
    cargo build --profile ci --bin quarryd --bin quarryctl
fi

cluster="1=127.0.0.1:${base},2=127.0.0.1:$((base + 1)),3=127.0.0.1:$((base + 2))"
pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if $keep; then echo "data kept in $data"; else rm -rf "$data"; fi
}
trap stop EXIT
trap 'exit 0' INT TERM

for id in 1 2 3; do
    "$bin/quarryd" --node-id "$id" --initial-cluster "$cluster" --data-dir "$data/node$id" \
        --metrics-listen "127.0.0.1:$((base + 100 + id - 1))" --shards "${QUARRY_SHARDS:-1}" \
        2>"$data/node$id.log" &
    pids+=($!)
done

endpoints="127.0.0.1:${base},127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
# Ready when every node answers (nothing is written into the key space).
for _ in $(seq 1 100); do
    if "$bin/quarryctl" --endpoints "$endpoints" --timeout 2 status >/dev/null 2>&1; then break; fi
    sleep 0.2
done

echo "Quarry 3-node cluster running (Ctrl-C to stop)"
echo "  endpoints: $endpoints"
echo "  metrics:   http://127.0.0.1:$((base + 100))/metrics (and /health), +1, +2"
echo "  logs:      $data/node{1,2,3}.log"
echo "  try:       $bin/quarryctl --endpoints $endpoints put hello world"
echo "             $bin/quarryctl --endpoints $endpoints get hello"
echo "             $bin/quarryctl --endpoints $endpoints status"
wait
