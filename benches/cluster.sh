#!/usr/bin/env bash
# The BENCHMARKS.md cluster run: one Redis and three release relays (nodes a, b, c, one worker
# each) on this machine's loopback, one publisher on node a, and loadgen's players joining the
# three nodes in turn (--whep three times), so b and c each pull the stream from a once.
# Prints per node: players, packets forwarded, CPU seconds and CPU per forwarded packet, and
# what /api/cluster said; then the same players on node a alone, for the cost of a pull.
# Bounded: DURATION seconds of steady load per run (default 15), PLAYERS in all (default 60).
# Usage: benches/cluster.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/cluster}
players=${PLAYERS:-60}
duration=${DURATION:-15}
relay_bin=${RELAY_BIN:-target/release/corecast}
loadgen_bin=${LOADGEN_BIN:-target/release/loadgen}
mkdir -p "$out"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.3f", (f[12] + f[13]) / hz }' "/proc/$1/stat"; }
metric() { curl -s "$1/metrics" | awk -v m="$2" 'index($0, m) == 1 { s += $NF } END { printf "%d", s }'; }

redis_port=$(free_port)
redis_dir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$redis_dir" \
    --loglevel warning >"$out/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done

declare -A url pid
start_node() {
    local id=$1 port media
    port=$(free_port)
    media=$2
    CORECAST_HTTP_LISTEN=127.0.0.1:$port CORECAST_WORKERS_COUNT=1 CORECAST_WORKERS_PIN=false \
    CORECAST_MEDIA_PORTS=$media CORECAST_CLUSTER_REDIS=redis://127.0.0.1:$redis_port/0 \
    CORECAST_CLUSTER_NODE_ID=$id RUST_LOG=warn "$relay_bin" >"$out/node-$id.log" 2>&1 &
    pids+=($!)
    pid[$id]=$!
    url[$id]=http://127.0.0.1:$port
    until curl -s "${url[$id]}/metrics" >/dev/null; do sleep 0.1; done
}
start_node a 41000-41499
start_node b 41500-41999
start_node c 42000-42499
sleep 2

run() {
    local name=$1; shift
    declare -A cpu_before fwd_before
    for id in a b c; do
        cpu_before[$id]=$(cpu_seconds "${pid[$id]}")
        fwd_before[$id]=$(metric "${url[$id]}" corecast_forwarded_packets_total)
    done
    local t0 t1
    t0=$(date +%s.%N)
    "$loadgen_bin" --whip "${url[a]}/whip/{stream}" "$@" --streams 1 --players "$players" \
        --ramp 20 --duration "$duration" --stream-prefix "$name" --out "$out/$name" | grep -E "^players" || true
    t1=$(date +%s.%N)
    curl -s "${url[a]}/api/cluster" >"$out/$name/cluster.json" || true
    printf '%-6s %10s %12s %10s %14s\n' node forwarded "pkt/s" "CPU s" "CPU µs/pkt"
    for id in a b c; do
        local cpu fwd
        cpu=$(awk -v a="$(cpu_seconds "${pid[$id]}")" -v b="${cpu_before[$id]}" 'BEGIN { printf "%.2f", a - b }')
        fwd=$(( $(metric "${url[$id]}" corecast_forwarded_packets_total) - ${fwd_before[$id]} ))
        awk -v id="$id" -v fwd="$fwd" -v cpu="$cpu" -v d="$(awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }')" 'BEGIN {
            printf "%-6s %10d %12.0f %10.2f %14.2f\n", id, fwd, fwd / d, cpu, (fwd > 0 ? cpu * 1e6 / fwd : 0) }'
    done
}

echo "== $players players over nodes a, b, c (publisher on a) =="
run spread --whep "${url[a]}/whep/{stream}" --whep "${url[b]}/whep/{stream}" --whep "${url[c]}/whep/{stream}"
echo "== $players players on node a alone =="
run single --whep "${url[a]}/whep/{stream}"
