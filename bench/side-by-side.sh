#!/usr/bin/env bash
# The standard side-by-side: a 3-node Quarry and a 3-node etcd (Debian's etcd-server,
# fsync on) on 127.0.0.1, each driven by quarry-bench with puts of 256-byte values
# from 1, 16, 128 and 512 clients; prints one table of both and their ratio. Every
# process it starts is stopped by PID when it exits.
#
#   bench/side-by-side.sh            # DURATION=10 WARMUP=2 CLIENTS="1 16 128 512"
#   TLS=1 bench/side-by-side.sh      # both over mutual TLS (certificates made here)
#
# Outputs (JSON, .hgrm, and a PNG per client count with both curves) go to
# $OUT (default target/side-by-side).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-10}
warmup=${WARMUP:-2}
clients_list=${CLIENTS:-"1 16 128 512"}
out=${OUT:-target/side-by-side}
qbase=${QUARRY_BASE_PORT:-7701}
ebase=${ETCD_BASE_PORT:-12379}
etcd_bin=${ETCD:-$(command -v etcd || true)}
if [ -z "$etcd_bin" ]; then
    echo "side-by-side: no etcd binary (apt-get install etcd-server, or set ETCD=...)" >&2
    exit 2
fi

cargo build --profile ci --bin quarryd --bin quarry-bench --bin quarryctl
bin=target/ci
data=$(mktemp -d -t quarry-vs-etcd-XXXXXX)
mkdir -p "$out"

# TLS=1: one CA; nodes 1-3 are Quarry's, 11-13 etcd's; the load generator is an operator.
q_tls=() e_tls=() bench_tls=() scheme=http
if [ "${TLS:-0}" = 1 ]; then
    pki="$data/pki"
    "$bin/quarryctl" certs ca --dir "$pki" >/dev/null
    for id in 1 2 3 11 12 13; do "$bin/quarryctl" certs node "$id" --hosts 127.0.0.1 --dir "$pki" >/dev/null; done
    "$bin/quarryctl" certs admin --dir "$pki" >/dev/null
    bench_tls=(--cacert "$pki/ca.pem" --cert "$pki/admin.pem" --key "$pki/admin.key")
    scheme=https
fi

pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$data"
}
trap stop EXIT
trap 'exit 130' INT TERM

q_cluster="1=127.0.0.1:${qbase},2=127.0.0.1:$((qbase + 1)),3=127.0.0.1:$((qbase + 2))"
q_endpoints="127.0.0.1:${qbase},127.0.0.1:$((qbase + 1)),127.0.0.1:$((qbase + 2))"
q_metrics="127.0.0.1:$((qbase + 100)),127.0.0.1:$((qbase + 101)),127.0.0.1:$((qbase + 102))"
for id in 1 2 3; do
    if [ "$scheme" = https ]; then
        q_tls=(--cert-file "$pki/node-$id.pem" --key-file "$pki/node-$id.key" --trusted-ca-file "$pki/ca.pem"
            --client-cert-auth)
    fi
    "$bin/quarryd" --node-id "$id" --initial-cluster "$q_cluster" --data-dir "$data/quarry$id" \
        --metrics-listen "127.0.0.1:$((qbase + 100 + id - 1))" --shards "${QUARRY_SHARDS:-1}" "${q_tls[@]}" \
        2>"$data/quarry$id.log" &
    pids+=($!)
done

e_cluster="" e_endpoints=""
for i in 0 1 2; do
    e_cluster+="${e_cluster:+,}e$i=$scheme://127.0.0.1:$((ebase + 2 * i + 1))"
    e_endpoints+="${e_endpoints:+,}127.0.0.1:$((ebase + 2 * i))"
done
for i in 0 1 2; do
    client="$scheme://127.0.0.1:$((ebase + 2 * i))" peer="$scheme://127.0.0.1:$((ebase + 2 * i + 1))"
    if [ "$scheme" = https ]; then
        n="$pki/node-$((11 + i))"
        e_tls=(--cert-file "$n.pem" --key-file "$n.key" --trusted-ca-file "$pki/ca.pem" --client-cert-auth
            --peer-cert-file "$n.pem" --peer-key-file "$n.key" --peer-trusted-ca-file "$pki/ca.pem"
            --peer-client-cert-auth)
    fi
    "$etcd_bin" --name "e$i" --data-dir "$data/etcd$i" "${e_tls[@]}" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$e_cluster" --initial-cluster-state new --initial-cluster-token side-by-side \
        2>"$data/etcd$i.log" &
    pids+=($!)
done

# Ready when a put goes through.
ready() {
    for _ in $(seq 1 150); do
        if "$bin/quarry-bench" --system "$1" --endpoints "$2" --requests 1 --warmup 0 --no-progress "${bench_tls[@]}" \
            >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "side-by-side: $1 did not come up (logs in $data)" >&2
    exit 1
}
ready quarry "$q_endpoints"
ready etcd "$e_endpoints"

field() { sed -n "s/^  \"$2\": \([0-9.]*\),*$/\1/p" "$1" | head -1; }
lat() { sed -n "s/^    \"$2\": \([0-9.]*\),*$/\1/p" "$1" | head -1; }

rows=()
for c in $clients_list; do
    common=(--workload put --value-size 256 --clients "$c" --duration "$duration" --warmup "$warmup" --out "$out" --no-progress
        "${bench_tls[@]}")
    "$bin/quarry-bench" --system quarry --endpoints "$q_endpoints" --metrics "$q_metrics" --label "quarry-c$c" \
        "${common[@]}"
    "$bin/quarry-bench" --system etcd --endpoints "$e_endpoints" --metrics "$e_endpoints" --label "etcd-c$c" \
        --plot-with "$out/quarry-c$c.json" "${common[@]}"
    q="$out/quarry-c$c.json" e="$out/etcd-c$c.json"
    rows+=("$(awk -v c="$c" -v qt="$(field "$q" throughput)" -v et="$(field "$e" throughput)" \
        -v q50="$(lat "$q" p50_ms)" -v q99="$(lat "$q" p99_ms)" -v e50="$(lat "$e" p50_ms)" -v e99="$(lat "$e" p99_ms)" \
        'BEGIN { printf "| %7d | %10.0f | %10.0f | %5.2f | %6.2f / %6.2f | %6.2f / %6.2f |", c, qt, et, (et > 0 ? qt / et : 0), q50, q99, e50, e99 }')")
done

echo
echo "put, 256 B values, ${duration} s per run after ${warmup} s warm-up; 3 nodes each on 127.0.0.1 (TLS ${TLS:-0})"
echo "| clients | quarry/s   | etcd/s     | ratio | quarry p50/p99 ms | etcd p50/p99 ms  |"
echo "|--------:|-----------:|-----------:|------:|------------------:|-----------------:|"
printf '%s\n' "${rows[@]}"
echo "(plots: $out/etcd-c<clients>.png has both systems' curves)"
