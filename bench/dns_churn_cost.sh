#!/usr/bin/env bash
# Where a DNS node's CPU goes under write churn: a profile of the node while dnsperf and the churn
# client run together, and the CPU the churn's writes cost the node with no DNS load at all.
#
#   bench/dns_churn_cost.sh [--help]
#
# One node (`--bootstrap`) on BENCH_SERVER_CPU, loaded with BENCH_SERVICES x 10 instances
# (bench/dns_tool.py's data set). Then:
#   1. dnsperf (BENCH_CLIENT_CPU) for BENCH_DURATION s while bench/dns_tool.py churn writes at
#      BENCH_CHURN_RATE registrations/s (plus a health flip per 5) and `perf record -g` samples
#      the node: its QPS, its CPU per query, and perf's split of the node's samples by thread
#      (DNS workers, the runtime, RocksDB) and, within the DNS threads, kernel / user;
#   2. BENCH_DURATION s with no load: the idle node's own CPU;
#   3. BENCH_RUNS windows of BENCH_DURATION s with the churn client alone: the node's CPU over
#      each window, the writes' own cost (also without the idle share), and the CPU the churn
#      client takes on BENCH_CLIENT_CPU (which dnsperf shares in bench/dns.sh).
#
# Environment (defaults in brackets):
#   CAIRN_BIN         cairn binary [${CARGO_TARGET_DIR:-<repo>/target}/release/cairn]
#   BENCH_SERVICES    services [2000]
#   BENCH_DURATION    seconds per window [10]
#   BENCH_RUNS        churn-only windows [3]
#   BENCH_CHURN_RATE  registrations per second [100]
#   BENCH_SERVER_CPU  CPU the node is pinned to [0]
#   BENCH_CLIENT_CPU  CPU of dnsperf and the HTTP clients [1]
#   BENCH_PORT_BASE   first of the loopback ports used (base+1 .. base+3) [23000]
#
# Prints its figures; raw output (perf.data, dnsperf, churn summaries) stays in
# bench/results/dns-churn-<UTC time>/ (git-ignored). Needs dnsperf, perf and python3.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
BENCH_LOG_TAG=dns-churn
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"
no_arguments "$@"

CAIRN_BIN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/cairn}
BENCH_SERVICES=${BENCH_SERVICES:-2000}
BENCH_DURATION=${BENCH_DURATION:-10}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_CHURN_RATE=${BENCH_CHURN_RATE:-100}
BENCH_SERVER_CPU=${BENCH_SERVER_CPU:-0}
BENCH_CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-23000}
require_uint BENCH_SERVICES BENCH_DURATION BENCH_RUNS BENCH_CHURN_RATE BENCH_SERVER_CPU \
  BENCH_CLIENT_CPU BENCH_PORT_BASE
require_cairn_bin "no cairn binary at $CAIRN_BIN; build it or set CAIRN_BIN"
ensure_packages dnsperf=dnsperf perf=linux-perf python3=python3 taskset=util-linux

HTTP=$((BENCH_PORT_BASE + 1)) RPC=$((BENCH_PORT_BASE + 2)) DNS=$((BENCH_PORT_BASE + 3))
URL=http://127.0.0.1:$HTTP
TOOL=(python3 "$SCRIPT_DIR/dns_tool.py")
DATA=(--services "$BENCH_SERVICES" --instances 10 --tags v1,v2)
RESULTS_DIR=$REPO_ROOT/bench/results/dns-churn-$(date -u +%Y%m%dT%H%M%SZ)
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cairn-dns-churn.XXXXXX")
mkdir -p "$RESULTS_DIR"
NODE_PID="" CHURN_PID=""
owned_pids() { echo ${CHURN_PID:+"$CHURN_PID"} ${NODE_PID:+"$NODE_PID"}; }

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

check_ports_free "$HTTP" "$RPC" "$DNS"
"${TOOL[@]}" dataset "${DATA[@]}" --out-dir "$WORK_DIR/data" --queries 50000 >/dev/null
taskset -c "$BENCH_SERVER_CPU" "$CAIRN_BIN" agent --node-id 1 --data-dir "$WORK_DIR/node" --bootstrap \
  --http-addr "127.0.0.1:$HTTP" --rpc-addr "127.0.0.1:$RPC" --dns-addr "127.0.0.1:$DNS" \
  >"$RESULTS_DIR/node.out" 2>"$RESULTS_DIR/node.log" &
NODE_PID=$!
wait_cairn_ready cairn "$NODE_PID" "$RESULTS_DIR/node.log" $((SECONDS + 60)) 0.2 "$HTTP"
log "loading $((BENCH_SERVICES * 10)) instances"
taskset -c "$BENCH_CLIENT_CPU" "${TOOL[@]}" register "${DATA[@]}" --url "$URL" --concurrency 64 >/dev/null
sleep 3
taskset -c "$BENCH_CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$DNS" -d "$WORK_DIR/data/queries.txt" -l 3 \
  -c 8 -q 100 -t 1 -e >/dev/null 2>&1

churn() { # churn SEED OUT: the churn client in the background, CHURN_PID set
  taskset -c "$BENCH_CLIENT_CPU" "${TOOL[@]}" churn "${DATA[@]}" --url "$URL" --rate "$BENCH_CHURN_RATE" \
    --duration $((BENCH_DURATION + 2)) --seed "$1" --out "$2" 2>>"$RESULTS_DIR/churn.log" &
  CHURN_PID=$!
  sleep 1
}

log "dnsperf and churn together, perf recording the node"
churn 1 "$RESULTS_DIR/churn-dns.json"
t0=$(ticks "$NODE_PID")
perf record -F 2000 -g -p "$NODE_PID" -o "$RESULTS_DIR/perf.data" -- sleep "$BENCH_DURATION" \
  >/dev/null 2>&1 &
perf_pid=$!
taskset -c "$BENCH_CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$DNS" -d "$WORK_DIR/data/queries.txt" \
  -l "$BENCH_DURATION" -c 8 -q 100 -t 1 -e >"$RESULTS_DIR/dnsperf.txt" 2>&1
t1=$(ticks "$NODE_PID")
wait "$perf_pid" || true
wait "$CHURN_PID" || true
CHURN_PID=""
hz=$(getconf CLK_TCK)
queries=$(awk '/Queries completed/ { print $3 }' "$RESULTS_DIR/dnsperf.txt")
qps=$(awk '/Queries per second/ { printf "%.0f", $4 }' "$RESULTS_DIR/dnsperf.txt")
echo "dnsperf + churn: $qps QPS, node CPU $(awk -v t=$((t1 - t0)) -v hz="$hz" -v q="$queries" \
  'BEGIN { printf "%.2f", t / hz * 1e6 / q }') µs per query (writes included)"
echo "node samples by thread:"
perf report -i "$RESULTS_DIR/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
  grep -v '^#' | grep -v '^$' | head -5
echo "DNS thread samples, kernel / user:"
perf report -i "$RESULTS_DIR/perf.data" --no-children --comm cairn-dns-udp-0 --sort dso --stdio \
  -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -3

log "no load for $BENCH_DURATION s: the idle node's own CPU"
sleep 2
t0=$(ticks "$NODE_PID")
sleep "$BENCH_DURATION"
idle=$(($(ticks "$NODE_PID") - t0))
echo "idle: node CPU $(awk -v t="$idle" -v hz="$hz" -v d="$BENCH_DURATION" \
  'BEGIN { printf "%.1f", 100 * t / hz / d }')% of a core"

log "churn alone, $BENCH_RUNS windows of $BENCH_DURATION s"
for ((run = 1; run <= BENCH_RUNS; run++)); do
  churn $((run + 1)) "$RESULTS_DIR/churn-$run.json"
  t0=$(ticks "$NODE_PID") c0=$(ticks "$CHURN_PID")
  sleep "$BENCH_DURATION"
  t1=$(ticks "$NODE_PID") c1=$(ticks "$CHURN_PID")
  wait "$CHURN_PID" || true
  CHURN_PID=""
  python3 - "$RESULTS_DIR/churn-$run.json" $((t1 - t0)) "$hz" "$BENCH_DURATION" "$idle" \
    $((c1 - c0)) <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
hz, secs = int(sys.argv[3]), float(sys.argv[4])
cpu, idle, client = (int(t) / hz / secs for t in (sys.argv[2], sys.argv[5], sys.argv[6]))
writes = c["registrations_per_s"] + c["health_flips_per_s"]
print(f"churn alone: node CPU {100 * cpu:.1f}% of a core for {c['registrations_per_s']} "
      f"registrations/s + {c['health_flips_per_s']} flips/s ({1000 * cpu / writes:.2f} ms per write, "
      f"{1000 * (cpu - idle) / writes:.2f} ms without the idle node's share), the churn client "
      f"{100 * client:.1f}% of its CPU, {c['errors']} errors")
EOF
done
