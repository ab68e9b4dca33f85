#!/usr/bin/env bash
# Flash-crowd joins (issue 21): one publisher, PLAYERS players of its stream joining at each
# ramp rate, a fresh release relay per run on RELAY_CORES and loadgen on LOADGEN_CORES (taskset).
# Prints per run: players joined and shed, join time p50/p99 (offer sent to first media packet),
# media loss and latency (publisher to player, over the whole run, the ramp included), and the
# relay's CPU per join by thread group over the ramp (the control thread, the DTLS pool
# `corecast-dtls`, the workers; the workers' share includes forwarding the media to the players
# already joined). loadgen's summary.json (with join times by second of the
# ramp) is kept under OUT_DIR/<relay>-<ramp>-r<round>. Loopback only.
#
# Usage: benches/joins.sh [OUT_DIR]
#   RELAYS="before=/path/to/old/corecast after=target/release/corecast" compares builds; each
#   round runs them in the other order, so a noisy neighbour costs both alike (ROUNDS=N).
#   RAMPS="200 500 1000", PLAYERS=1000, RELAY_ENV="CORECAST_WORKERS_COUNT=8 ..." (settings for
#   every relay, after the script's own, so they win; a build that does not know a key refuses
#   to start), LOADGEN_THREADS (loadgen's client threads), VIDEO_KBPS=200 and FPS=15 (the
#   stream the players get: lighter media leaves the relay's core to the joins).
#   A relay named NAME@N (RELAYS="after@0=target/release/corecast") has its DTLS pool threads
#   reniced to N after start (root): the pool runs at nice 10, which on a machine shared with
#   other work also yields to that work.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/joins}
relay_cores=${RELAY_CORES:-0}
loadgen_cores=${LOADGEN_CORES:-1}
players=${PLAYERS:-1000}
ramps=${RAMPS:-200 500 1000}
rounds=${ROUNDS:-1}
relays=${RELAYS:-after=target/release/corecast}
loadgen=${LOADGEN_BIN:-target/release/loadgen}
mkdir -p "$out"

# utime+stime (clock ticks) of a process's threads, by group: control dtls workers other.
cpu_by_group() { # pid
    python3 - "$1" <<'PY'
import os, sys
pid = sys.argv[1]
groups = {"control": 0, "dtls": 0, "workers": 0, "other": 0}
for tid in os.listdir(f"/proc/{pid}/task"):
    try:
        stat = open(f"/proc/{pid}/task/{tid}/stat").read()
    except OSError:
        continue
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if tid == pid:
        groups["control"] += ticks
    elif name.startswith("corecast-dtls"):
        groups["dtls"] += ticks
    elif name.startswith("corecast-w"):
        groups["workers"] += ticks
    else:
        groups["other"] += ticks
print(groups["control"], groups["dtls"], groups["workers"], groups["other"])
PY
}

run_one() { # name bin ramp round
    local name=$1 bin=$2 ramp=$3 round=$4
    local dir="$out/$name-$ramp-r$round"
    local port=$((18000 + RANDOM % 2000))
    rm -rf "$dir"
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    env CORECAST_HTTP_LISTEN=127.0.0.1:$port CORECAST_MEDIA_PORTS=30000-31999 \
        CORECAST_WORKERS_COUNT=1 RUST_LOG=warn ${RELAY_ENV:-} \
        taskset -c "$relay_cores" "$bin" >"$dir/relay.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/metrics" >/dev/null && break
        sleep 0.1
    done
    if [[ $name == *@* ]]; then
        for task in /proc/"$pid"/task/*; do
            [[ $(cat "$task/comm") == corecast-dtls ]] && renice -n "${name#*@}" -p "${task##*/}" >/dev/null
        done
    fi
    local threads=()
    [[ -n ${LOADGEN_THREADS:-} ]] && threads=(--threads "$LOADGEN_THREADS")
    taskset -c "$loadgen_cores" "$loadgen" --quiet --streams 1 --players "$players" \
        --ramp "$ramp" --duration 8 --video-kbps "${VIDEO_KBPS:-200}" --fps "${FPS:-15}" --no-audio --verify sample \
        --connect-timeout 10 "${threads[@]}" \
        --whip "http://127.0.0.1:$port/whip/{stream}" \
        --whep "http://127.0.0.1:$port/whep/{stream}" --out "$dir" >"$dir/loadgen.txt" 2>&1 &
    local lg=$!
    # The ramp's CPU: from its start (the publisher is up within half a second) to 4 s after
    # its last join started (the joins' handshakes are done by then); the players' DELETEs,
    # 8 s after the last join, are not in it.
    sleep 0.5
    local start end
    start=$(cpu_by_group "$pid")
    sleep "$(python3 -c "print($players / $ramp + 4.0)")"
    end=$(cpu_by_group "$pid")
    curl -s "http://127.0.0.1:$port/metrics" >"$dir/metrics.txt" || true
    wait "$lg" || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 - "$dir" "$start" "$end" "$name" "$ramp" "$round" <<'PY'
import json, os, sys
d, start, end, name, ramp, rnd = sys.argv[1:7]
tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
s = json.load(open(f"{d}/summary.json"))
joined = s["players"]["joined"]
shed = sum(r.get("shed", 0) for r in s.get("join_by_second", []))
delta = [(int(b) - int(a)) * tick_ms for a, b in zip(start.split(), end.split())]
# The relay's own handshake times (corecast_dtls_handshake_seconds, where it has them): the
# bucket bound under which half and 99 % of them fall.
buckets = []
for line in open(f"{d}/metrics.txt"):
    if line.startswith("corecast_dtls_handshake_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), int(line.split()[-1])))
def bound(q):
    total = buckets[-1][1] if buckets else 0
    return next((le * 1e3 for le, n in buckets if total and n >= q * total), float("nan"))
handshake = f"relay handshake p50 <= {bound(0.5):.0f} p99 <= {bound(0.99):.0f} ms" if buckets else ""
rows = s.get("join_by_second", [])
first_second = rows[0]["started"] if rows else 0
per = lambda ms: ms / max(joined, 1)
print(f"{name:>7} ramp {ramp:>4}/s r{rnd}: joined {joined:>4} shed {shed:>4} "
      f"join p50 {s['join_ms']['p50']:7.1f} p99 {s['join_ms']['p99']:7.1f} ms "
      f"loss {s['totals']['loss_percent']:.3f}% media latency p50 {s['latency_ms']['p50']:.1f} "
      f"p99 {s['latency_ms']['p99']:.1f} ms | relay CPU per join: control {per(delta[0]):.3f} "
      f"dtls {per(delta[1]):.3f} workers {per(delta[2]):.3f} other {per(delta[3]):.3f} ms "
      f"(total {sum(delta):.0f} ms) | loadgen CPU {s['loadgen']['cpu_percent']:.0f}%, "
      f"{first_second} joins started in the ramp's first second {handshake}")
PY
}

for round in $(seq "$rounds"); do
    order=($relays)
    if ((round % 2 == 0)); then
        reversed=()
        for ((i = ${#order[@]} - 1; i >= 0; i--)); do reversed+=("${order[i]}"); done
        order=("${reversed[@]}")
    fi
    for ramp in $ramps; do
        for relay in "${order[@]}"; do
            run_one "${relay%%=*}" "${relay#*=}" "$ramp" "$round"
        done
    done
done
