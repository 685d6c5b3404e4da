#!/usr/bin/env bash
# Failover after kill -9 of the leader: the time from the kill to the first write accepted
# through a surviving node, p50 and p99 over BENCH_KILLS kills, for a three-node Cairn cluster
# and, in the same run, a three-member etcd with its default timings (heartbeat 100 ms,
# election time-out 1000 ms). Everything runs on this machine's loopback interface.
#
#   bench/failover.sh [--help]
#
# Each kill: wait BENCH_SETTLE seconds on a steady cluster, find the leader, SIGKILL it, then
# write through a surviving node in a loop (a new key each attempt, each attempt bounded by 1 s,
# 10 ms apart) until one is accepted; restart the killed node and wait until it follows again.
# Cairn writes are PUT /v1/services/failover/instances/<id>; etcd writes are the gateway's
# POST /v3/kv/put. Goal (issue 17): Cairn p50 <= 1 s and p99 <= 2 s.
#
# Environment (defaults in brackets):
#   CAIRN_BIN         cairn binary [${CARGO_TARGET_DIR:-<repo>/target}/release/cairn]
#   BENCH_KILLS       kills per system [20]
#   BENCH_SETTLE      seconds of steady cluster before each kill [2]
#   BENCH_PORT_BASE   first of the loopback ports used (base+1 .. base+53) [24000]
#   BENCH_CAIRN_LOG   the agents' log filter (CAIRN_LOG) [warn]
#
# Installs etcd-server and python3 with apt-get when they are missing. Raw output and logs stay
# in bench/results/failover-<UTC time>/ (not committed).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SCRIPT_DIR/.." && pwd)
BENCH_LOG_TAG=failover-bench
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
[[ ${1:-} == --help || ${1:-} == -h ]] && { usage; exit 0; }
(($# == 0)) || die "unknown argument: $1 (see --help)"

capture_command_line failover.sh CAIRN_BIN BENCH_KILLS BENCH_SETTLE BENCH_PORT_BASE --
CAIRN_BIN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/cairn}
BENCH_KILLS=${BENCH_KILLS:-20}
BENCH_SETTLE=${BENCH_SETTLE:-2}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-24000}
require_uint BENCH_KILLS BENCH_SETTLE BENCH_PORT_BASE

ensure_packages etcd=etcd-server python3=python3
require_cairn_bin "no cairn binary at $CAIRN_BIN; build it (cargo build --release -p cairn-node) or set CAIRN_BIN"
ETCD_BIN=$(command -v etcd)

RESULTS_DIR=$REPO/bench/results/failover-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS_DIR"
WORK_DIR=$(mktemp -d)

for system in cairn etcd; do
  bin=$CAIRN_BIN
  [[ $system == etcd ]] && bin=$ETCD_BIN
  log "$system: $BENCH_KILLS kills of the leader"
  mkdir -p "$WORK_DIR/$system"
  timeout $((BENCH_KILLS * 90 + 120)) python3 "$SCRIPT_DIR/failover_tool.py" "$system" \
    --bin "$bin" --dir "$WORK_DIR/$system" --port-base "$BENCH_PORT_BASE" \
    --kills "$BENCH_KILLS" --settle "$BENCH_SETTLE" --out "$RESULTS_DIR/$system.json" \
    | tee "$RESULTS_DIR/$system.txt" >&2
  cp "$WORK_DIR/$system"/*.log "$RESULTS_DIR/" 2>/dev/null || true
done

python3 - "$RESULTS_DIR" "$COMMAND_LINE" "$("$CAIRN_BIN" --version)" "$("$ETCD_BIN" --version | head -1)" <<'PY'
import json, statistics, sys
out, command, cairn_v, etcd_v = sys.argv[1:5]
def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
rows, res = [], {}
for s in ("cairn", "etcd"):
    ms = json.load(open(f"{out}/{s}.json"))["ms"]
    res[s] = (pct(ms, 50), pct(ms, 99), min(ms), max(ms), len(ms))
print(f"Command: `{command}` ({cairn_v}; {etcd_v}), raw output in `bench/{out.split('/bench/')[-1]}` (not committed).\n")
print("| System | Kills | p50 ms | p99 ms | min ms | max ms |")
print("|---|---:|---:|---:|---:|---:|")
for s, name in (("cairn", "Cairn"), ("etcd", "etcd (defaults)")):
    p50, p99, lo, hi, n = res[s]
    print(f"| {name} | {n} | {p50:.0f} | {p99:.0f} | {lo:.0f} | {hi:.0f} |")
c, e = res["cairn"], res["etcd"]
met = c[0] <= 1000 and c[1] <= 2000
print(f"\nCairn / etcd: p50 {c[0] / e[0]:.2f}x, p99 {c[1] / e[1]:.2f}x. "
      f"Goal (p50 <= 1 s, p99 <= 2 s): **{'met' if met else 'not met'}**.")
PY
