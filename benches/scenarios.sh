#!/usr/bin/env bash
# Runs the BENCHMARKS.md load scenarios: for each, a fresh release relay on core 0 and the load
# generator on core 1 (on a machine with more cores, set RELAY_CORES and LOADGEN_CORES), then
# `loadgen compare` over all runs. Loopback only. Usage: benches/scenarios.sh [OUT_DIR]
# RELAY_BIN=path runs another relay build (for before/after comparisons); SCENARIOS="udp-1w
# tcp-1w" picks scenarios; PLAYERS and DURATION size them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs}
relay_cores=${RELAY_CORES:-0}
loadgen_cores=${LOADGEN_CORES:-1}
players=${PLAYERS:-200}
relay_bin=${RELAY_BIN:-target/release/corecast}
scenarios=${SCENARIOS:-udp-1w tcp-1w udp-2w udp-1w-sampled}
duration=${DURATION:-10}
cargo build --release -p corecast -p loadgen >/dev/null
mkdir -p "$out"

run() { # name workers protocol transport [extra loadgen args...]
    local name=$1 workers=$2 protocol=$3 transport=$4
    shift 4
    local port=18300
    CORECAST_HTTP_LISTEN=127.0.0.1:$port CORECAST_WORKERS_COUNT=$workers CORECAST_WORKERS_PIN=false \
        CORECAST_MEDIA_PORTS=34000-35999 CORECAST_MEDIA_PROTOCOL=$protocol RUST_LOG=warn \
        taskset -c "$relay_cores" "$relay_bin" >"$out/$name.relay.log" 2>&1 &
    local relay=$!
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/metrics" && break; sleep 0.1; done
    echo "== $name: $workers worker(s), $transport, $players players"
    taskset -c "$loadgen_cores" target/release/loadgen --whip "http://127.0.0.1:$port/whip/{stream}" \
        --whep "http://127.0.0.1:$port/whep/{stream}" --streams 1 --players "$players" --ramp 200 \
        --duration "$duration" --transport "$transport" --relay-pid "$relay" \
        --relay-metrics "http://127.0.0.1:$port/metrics" --out "$out/$name" --quiet "$@" | grep -E "^(players|relay|note)"
    kill "$relay"
    wait "$relay" 2>/dev/null || true
}

dirs=()
for scenario in $scenarios; do
    case $scenario in
        udp-1w) run udp-1w 1 udp udp ;;
        tcp-1w) run tcp-1w 1 tcp tcp ;;
        udp-2w) run udp-2w 2 udp udp ;;
        udp-1w-sampled) run udp-1w-sampled 1 udp udp --verify sample ;;
        *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    dirs+=("$out/$scenario")
done
target/release/loadgen compare "${dirs[@]}" --plot "$out/latency.svg"
