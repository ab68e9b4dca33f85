#!/usr/bin/env bash
# Runs the BENCHMARKS.md load scenarios: for each, a fresh release relay on core 0 and the load
# generator on core 1 (on a machine with more cores, set RELAY_CORES and LOADGEN_CORES), then
# `loadgen compare` over all runs. Loopback only. Usage: benches/scenarios.sh [OUT_DIR]
#
# RELAY_BIN=path runs another relay build (for before/after comparisons); SCENARIOS="udp-1w
# tcp-1w" picks scenarios; PLAYERS and DURATION size them.
#
# BACKENDS="io_uring epoll" runs each scenario once per workers.backend (named
# SCENARIO-BACKEND), ROUNDS=N repeats the whole set N times, each round in the other backend
# and scenario order, so a noisy neighbour costs both alike (named ...-rN).
#
# tcp-1w-http runs tcp-1w with media.tcp_on_http: every ICE-TCP connection on the HTTP port,
# handed to the worker by the HTTP listener.
#
# Single-port mode: a scenario named ...-mux runs the relay with media.mux_port (every session
# on one port) instead of a port per session; udp-2w-many[-mux] runs 20 streams over 2 workers,
# so about half of the publishers' packets reach a worker that does not own their session and
# are handed over (corecast_mux_handoffs_total, printed after the run). SYSCALLS=1 counts the worker
# threads' system calls (perf stat, raw_syscalls:sys_enter) over 3 s of each run's steady phase
# and prints them per forwarded packet.
#
# Scaling series: udp-<N>w-hd-scaled runs N workers (HD media, one stream) with N x PLAYERS
# players, so each worker carries the same load and most players are fed across workers. On a
# 16-core machine:
#   RELAY_CORES=0-7 LOADGEN_CORES=8-15 SCENARIOS="udp-1w-hd-scaled udp-2w-hd-scaled
#   udp-4w-hd-scaled udp-8w-hd-scaled" benches/scenarios.sh runs/scaling
# N workers scale when forwarded packets/s grow N-fold with 0 loss and the relay's CPU per
# forwarded packet stays within 1/0.8 of one worker's.
#
# STEER_RX=1 (the default where network namespaces can be made, i.e. as root) runs everything
# in a network namespace of its own whose loopback hands received packets to the load
# generator's cores (RPS). On loopback the kernel otherwise delivers each datagram into its
# receiver's socket on the sending CPU, so the relay's CPU would include every player's receive
# path; with a NIC those costs are on the players' machines. STEER_RX=0 measures plain loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs}
relay_cores=${RELAY_CORES:-0}
loadgen_cores=${LOADGEN_CORES:-1}
players=${PLAYERS:-200}
relay_bin=${RELAY_BIN:-target/release/corecast}
scenarios=${SCENARIOS:-udp-1w udp-1w-nogso tcp-1w udp-2w udp-1w-hd udp-1w-hd-nogso}
duration=${DURATION:-10}
backends=${BACKENDS:-default}
rounds=${ROUNDS:-1}
count_syscalls=${SYSCALLS:-0}

# A CPU list ("1", "8-15", "2,4-5") as the hex mask sysfs takes, in 32-bit groups.
cpumask() {
    python3 - "$1" <<'PY'
import sys
mask = 0
for part in sys.argv[1].split(","):
    first, _, last = part.partition("-")
    for cpu in range(int(first), int(last or first) + 1):
        mask |= 1 << cpu
digits = format(mask, "x")
groups = []
while digits:
    groups.insert(0, digits[-8:])
    digits = digits[:-8]
print(",".join(groups))
PY
}

if [[ -z ${IN_BENCH_NETNS_OF_CORECAST:-} && ${STEER_RX:-auto} != 0 ]]; then
    if unshare -n true 2>/dev/null; then
        cargo build --release -p corecast -p loadgen >/dev/null
        netns=corecast-bench-$$
        ip netns add "$netns"
        trap 'ip netns delete "$netns"' EXIT
        ip netns exec "$netns" ip link set lo up
        ip netns exec "$netns" sh -c "echo $(cpumask "$loadgen_cores") > /sys/class/net/lo/queues/rx-0/rps_cpus"
        echo "network namespace $netns: loopback receive processing steered to cores $loadgen_cores"
        IN_BENCH_NETNS_OF_CORECAST=$netns ip netns exec "$netns" "$0" "$@"
        exit
    elif [[ ${STEER_RX:-auto} == 1 ]]; then
        echo "STEER_RX=1 needs network namespaces (root)" >&2
        exit 2
    fi
    echo "note: no network namespace (not root): receivers' kernel work counts in the relay's CPU"
fi

cargo build --release -p corecast -p loadgen >/dev/null
mkdir -p "$out"

forwarded() { # port
    curl -s "http://127.0.0.1:$1/metrics" | awk '/^corecast_forwarded_packets_total/ { s += $2 } END { print s + 0 }'
}

# The worker threads' system calls per forwarded packet over 3 s of the steady phase.
syscalls_per_packet() { # name relay_pid port
    local name=$1 relay=$2 port=$3
    sleep $((duration / 3 + 2))
    local tids
    tids=$(for t in /proc/"$relay"/task/*; do [[ $(cat "$t/comm") == corecast-w* ]] && echo "${t##*/}"; done | paste -sd,)
    local before after calls
    before=$(forwarded "$port")
    calls=$(perf stat -x, -e raw_syscalls:sys_enter -t "$tids" -- sleep 3 2>&1 >/dev/null | awk -F, '/raw_syscalls/ { print $1 }')
    after=$(forwarded "$port")
    awk -v c="${calls:-0}" -v f=$((after - before)) -v n="$name" \
        'BEGIN { printf "syscalls %s: %d in 3 s for %d forwarded packets: %.4f per packet\n", n, c, f, (f > 0 ? c / f : 0) }' \
        >"$out/$name.syscalls"
}

run() { # name workers protocol transport gso [extra loadgen args...]
    local name=$1 workers=$2 protocol=$3 transport=$4 gso=$5
    shift 5
    local port=18300
    # Only "off" is spelled out, so a RELAY_BIN from before media.gso existed still runs.
    local gso_env=()
    [[ $gso == false ]] && gso_env=(CORECAST_MEDIA_GSO=false)
    # Likewise only a chosen backend is, for a RELAY_BIN from before workers.backend.
    [[ $backend != default ]] && gso_env+=(CORECAST_WORKERS_BACKEND=$backend) && name=$name-$backend
    [[ $rounds -gt 1 ]] && name=$name-r$round
    [[ ${single_port:-0} == 1 ]] && gso_env+=(CORECAST_MEDIA_MUX_PORT=18400)
    [[ ${tcp_on_http:-0} == 1 ]] && gso_env+=(CORECAST_MEDIA_TCP_ON_HTTP=true)
    env CORECAST_HTTP_LISTEN=127.0.0.1:$port CORECAST_WORKERS_COUNT=$workers CORECAST_WORKERS_PIN=false \
        CORECAST_MEDIA_PORTS=30000-39999 CORECAST_MEDIA_PROTOCOL=$protocol "${gso_env[@]}" \
        RUST_LOG=warn taskset -c "$relay_cores" "$relay_bin" >"$out/$name.relay.log" 2>&1 &
    local relay=$!
    run_name=$name
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/metrics" && break; sleep 0.1; done
    if ! curl -s -o /dev/null "http://127.0.0.1:$port/metrics"; then
        echo "the relay did not start:" >&2
        cat "$out/$name.relay.log" >&2
        exit 1
    fi
    echo "== $name: $workers worker(s), $transport, GSO $gso, backend $backend, $players players $*"
    local counter=
    if [[ $count_syscalls == 1 ]]; then
        syscalls_per_packet "$name" "$relay" "$port" &
        counter=$!
    fi
    taskset -c "$loadgen_cores" target/release/loadgen --whip "http://127.0.0.1:$port/whip/{stream}" \
        --whep "http://127.0.0.1:$port/whep/{stream}" --streams "${streams:-1}" --players "$players" --ramp 200 \
        --duration "$duration" --transport "$transport" --relay-pid "$relay" \
        --relay-metrics "http://127.0.0.1:$port/metrics" --out "$out/$name" --quiet "$@" | grep -E "^(players|relay|note)"
    curl -s "http://127.0.0.1:$port/metrics" | grep -E "^corecast_(gso_sends|gso_segments|tx_packets|send_errors|mux_handoffs|rx_packets)_total" \
        | awk '{ split($1, m, "{"); sum[m[1]] += $2 } END { for (k in sum) printf "%s %d  ", k, sum[k]; print "" }'
    if [[ -n $counter ]]; then
        wait "$counter" || true
        cat "$out/$name.syscalls"
    fi
    kill "$relay"
    wait "$relay" 2>/dev/null || true
}

dirs=()
for round in $(seq "$rounds"); do
# Every other round runs the backends, and the scenarios, in the opposite order.
order=$backends
round_scenarios=$scenarios
if ((round % 2 == 0)); then
    order=$(echo "$backends" | tr ' ' '\n' | tac | paste -sd' ')
    round_scenarios=$(echo "$scenarios" | tr ' ' '\n' | tac | paste -sd' ')
fi
for scenario in $round_scenarios; do
for backend in $order; do
    case $scenario in
        udp-1w) run udp-1w 1 udp udp true ;;
        udp-1w-nogso) run udp-1w-nogso 1 udp udp false ;;
        tcp-1w) run tcp-1w 1 tcp tcp true ;;
        udp-2w) run udp-2w 2 udp udp true ;;
        udp-1w-sampled) run udp-1w-sampled 1 udp udp true --verify sample ;;
        # Three encodings (l/m/h at a quarter, a third and all of the 1 Mbit/s): players on
        # their estimate's layer, probing, feedback, timestamp maps; against udp-1w.
        udp-1w-simulcast) run udp-1w-simulcast 1 udp udp true --simulcast ;;
        # 4 Mbit/s video without audio: frames of 14 packets, the case GSO is built for.
        udp-1w-hd) run udp-1w-hd 1 udp udp true --video-kbps 4000 --no-audio ;;
        udp-1w-hd-nogso) run udp-1w-hd-nogso 1 udp udp false --video-kbps 4000 --no-audio ;;
        tcp-1w-hd) run tcp-1w-hd 1 tcp tcp true --video-kbps 4000 --no-audio ;;
        udp-2w-hd) run udp-2w-hd 2 udp udp true --video-kbps 4000 --no-audio ;;
        udp-1w-mux) single_port=1 run udp-1w-mux 1 udp udp true ;;
        tcp-1w-mux) single_port=1 run tcp-1w-mux 1 tcp tcp true ;;
        # ICE-TCP on the HTTP listener's port (media.tcp_on_http): against tcp-1w.
        tcp-1w-http) tcp_on_http=1 run tcp-1w-http 1 tcp tcp true ;;
        udp-2w-mux) single_port=1 run udp-2w-mux 2 udp udp true ;;
        # PLAYERS in all, spread over the 20 streams (loadgen's --players is per stream).
        udp-2w-many) streams=20 players=$((${PLAYERS:-200} / 20)) run udp-2w-many 2 udp udp true ;;
        udp-2w-many-mux)
            single_port=1 streams=20 players=$((${PLAYERS:-200} / 20)) run udp-2w-many-mux 2 udp udp true
            ;;
        udp-*w-hd-scaled)
            n=${scenario#udp-}
            n=${n%w-hd-scaled}
            [[ $n =~ ^[0-9]+$ ]] || { echo "unknown scenario $scenario" >&2; exit 2; }
            players=$((${PLAYERS:-200} * n)) run "$scenario" "$n" udp udp true --video-kbps 4000 --no-audio
            ;;
        *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    dirs+=("$out/$run_name")
done
done
done
target/release/loadgen compare "${dirs[@]}" --plot "$out/latency.svg"
