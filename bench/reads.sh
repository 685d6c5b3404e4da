#!/usr/bin/env bash
# Blocking queries and watches: watch fan-out on one node, and read throughput of one service
# against etcd's serializable range reads. Everything runs on this machine's loopback interface.
#
#   bench/reads.sh [--help]
#
# Fan-out: for each W in BENCH_WATCHERS, BENCH_RUNS times, a fresh single node (--bootstrap)
#   with a service of BENCH_INSTANCES instances; W blocking GETs (?index=N&wait=) from one Python
#   asyncio process; once all are parked, one registration; the time from that write's 200 until
#   the last watcher has its response, and the node's RSS per waiting watcher. Goal: < 1 s at
#   10,000 watchers.
# Reads: a single node with the same service, then a single-member etcd with the same number of
#   records under a prefix; wrk at each of BENCH_CONNECTIONS against Cairn's
#   GET /v1/services/<svc> and etcd's gateway POST /v3/kv/range (serializable). Goal: >= 5x etcd.
# ACLs (BENCH_ACL=1): the reads also run, in the same invocation, on two more fresh nodes with
#   `--acl` (default deny), the load sent with a token whose policy is `service_prefix "<svc>"
#   read`: one node with 10 tokens in the registry, one with BENCH_ACL_TOKENS (created through
#   `POST /v1/acl/tokens` before the load, timed). Goals: ACLs cost <= 5% of the throughput with
#   ACLs off; both token counts give the same throughput (O(1) token lookup and rule evaluation).
#
# Before starting it waits (up to BENCH_WAIT_MAX seconds) while another benchmark runs
# (processes named in BENCH_WAIT_FOR, or bench/{dns,registrations,checks}.sh), and notes in the
# report if it had to measure under load.
#
# Environment (defaults in brackets):
#   CAIRN_BIN          cairn binary [${CARGO_TARGET_DIR:-<repo>/target}/release/cairn]
#   BENCH_ONLY         run only "fanout" or only "reads" [both]
#   BENCH_ACL          1 = the reads also with ACLs on, with 10 and with BENCH_ACL_TOKENS tokens [0]
#   BENCH_ACL_TOKENS   tokens in the registry for the second ACL node [100000]
#   BENCH_WATCHERS     space-separated watcher counts for the fan-out ["1000 10000"]
#   BENCH_RUNS         runs per fan-out size and per (system, connections); medians reported [3]
#   BENCH_DURATION     seconds per wrk run [10]
#   BENCH_CONNECTIONS  space-separated wrk connection counts ["1 64 256"]
#   BENCH_WARMUP       seconds of unrecorded wrk load per system before measuring; 0 = none [3]
#   BENCH_INSTANCES    instances of the service (records in etcd) [10]
#   BENCH_SETTLE       seconds to wait after all watchers are parked, before RSS and the change [2]
#   BENCH_WATCH_WAIT   the watchers' wait= (longer than opening them takes) [300s]
#   BENCH_PIN          1 = pin the server to CPU 0 and wrk / the fan-out client to CPU 1 [0]
#   BENCH_TIMEOUT      wrk per-request timeout in seconds; slower responses count as errors [10]
#   BENCH_PORT_BASE    first of the loopback ports used (base+1 .. base+5) [24000]
#   BENCH_CAIRN_LOG    the node's log filter (CAIRN_LOG) [warn]
#   BENCH_WAIT_FOR     process names that mean another benchmark runs ["dnsperf knotd wrk etcd hickory-dns"]
#   BENCH_WAIT_MAX     longest wait for them, in seconds; 0 = do not wait [1200]
#   BENCH_OUTPUT       Markdown file whose reads section is replaced [<repo>/BENCHMARKS.md]
#   BENCH_WRITE        0 = only print the section, leave BENCH_OUTPUT alone [1]
#
# Raises its open-file limit (65536, or the hard limit if lower: 10,000 watchers need 10,000
# sockets in the node and as many in the client). Installs etcd-server, wrk, curl and python3
# with apt-get when they are missing. Raw output and logs stay in bench/results/reads-<UTC time>/
# (git-ignored).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
BENCH_LOG_TAG=reads
# log, die, usage, settings checks, process cleanup (exit trap), ports, Cairn start-up waits,
# waiting for other benchmarks.
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

KNOBS=(CAIRN_BIN BENCH_ONLY BENCH_ACL BENCH_ACL_TOKENS BENCH_WATCHERS BENCH_RUNS BENCH_DURATION BENCH_CONNECTIONS BENCH_WARMUP
  BENCH_INSTANCES BENCH_SETTLE BENCH_WATCH_WAIT BENCH_PIN BENCH_TIMEOUT BENCH_PORT_BASE BENCH_CAIRN_LOG
  BENCH_WAIT_FOR BENCH_WAIT_MAX BENCH_OUTPUT BENCH_WRITE)
capture_command_line reads.sh "${KNOBS[@]}" -- "$@"

no_arguments "$@"

# --- Settings. ---
BENCH_ONLY=${BENCH_ONLY:-}
BENCH_ACL=${BENCH_ACL:-0}
BENCH_ACL_TOKENS=${BENCH_ACL_TOKENS:-100000}
BENCH_WATCHERS=${BENCH_WATCHERS:-1000 10000}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_DURATION=${BENCH_DURATION:-10}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-1 64 256}
BENCH_WARMUP=${BENCH_WARMUP:-3}
BENCH_INSTANCES=${BENCH_INSTANCES:-10}
BENCH_SETTLE=${BENCH_SETTLE:-2}
BENCH_WATCH_WAIT=${BENCH_WATCH_WAIT:-300s}
BENCH_PIN=${BENCH_PIN:-0}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-10}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-24000}
BENCH_CAIRN_LOG=${BENCH_CAIRN_LOG:-warn}
BENCH_WAIT_FOR=${BENCH_WAIT_FOR:-dnsperf knotd wrk etcd hickory-dns}
BENCH_WAIT_MAX=${BENCH_WAIT_MAX:-1200}
BENCH_OUTPUT=${BENCH_OUTPUT:-$REPO_ROOT/BENCHMARKS.md}
BENCH_WRITE=${BENCH_WRITE:-1}
CAIRN_BIN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/cairn}
SERVICE=web
ETCD_PREFIX=/cairn-bench/services/$SERVICE/instances/

require_uint BENCH_RUNS BENCH_DURATION BENCH_WARMUP BENCH_INSTANCES BENCH_SETTLE BENCH_TIMEOUT \
  BENCH_PORT_BASE BENCH_WAIT_MAX BENCH_ACL_TOKENS
((BENCH_RUNS >= 1 && BENCH_DURATION >= 1 && BENCH_TIMEOUT >= 1)) ||
  die "BENCH_RUNS, BENCH_DURATION and BENCH_TIMEOUT must be at least 1"
((BENCH_INSTANCES >= 1 && BENCH_INSTANCES <= 250)) || die "BENCH_INSTANCES must be 1..250"
if ! [[ $BENCH_WATCH_WAIT =~ ^[0-9]+s$ ]] || ((${BENCH_WATCH_WAIT%s} < 30 || ${BENCH_WATCH_WAIT%s} > 600)); then
  die "BENCH_WATCH_WAIT must be 30s..600s, got '$BENCH_WATCH_WAIT'"
fi
require_flag BENCH_WRITE BENCH_PIN BENCH_ACL
# The few-token node holds 10 tokens (bootstrap, load, 8 more); the many-token node more.
((BENCH_ACL_TOKENS > 10 && BENCH_ACL_TOKENS <= 1000000)) || die "BENCH_ACL_TOKENS must be 11..1000000"
ACL_FEW_TOKENS=10
# Stay below Linux's ephemeral range (32768+) so no outgoing socket can take our ports.
((BENCH_PORT_BASE >= 1024 && BENCH_PORT_BASE + 5 < 32768)) || die "BENCH_PORT_BASE must be between 1024 and 32762"
read -r -a WATCHERS <<<"$BENCH_WATCHERS"
read -r -a CONNECTIONS <<<"$BENCH_CONNECTIONS"
case $BENCH_ONLY in
  "") PHASES=(fanout reads) ;;
  fanout | reads) PHASES=("$BENCH_ONLY") ;;
  *) die "BENCH_ONLY must be 'fanout', 'reads' or empty, got '$BENCH_ONLY'" ;;
esac
wants() { [[ " ${PHASES[*]} " == *" $1 "* ]]; }
MAX_W=0
if wants fanout; then
  ((${#WATCHERS[@]} > 0)) || die "BENCH_WATCHERS is empty"
  for w in "${WATCHERS[@]}"; do
    if ! is_uint "$w" || ((w < 1 || w > 100000)); then die "bad watcher count '$w' in BENCH_WATCHERS"; fi
    ((w > MAX_W)) && MAX_W=$w
  done
fi
if wants reads; then
  ((${#CONNECTIONS[@]} > 0)) || die "BENCH_CONNECTIONS is empty"
  for c in "${CONNECTIONS[@]}"; do
    if ! is_uint "$c" || ((c < 1 || c > 10000)); then die "bad connection count '$c' in BENCH_CONNECTIONS"; fi
  done
fi

# Ports: Cairn http/rpc/dns base+1..3, etcd client base+4, etcd peer base+5.
CAIRN_HTTP=$((BENCH_PORT_BASE + 1))
CAIRN_RPC=$((BENCH_PORT_BASE + 2))
CAIRN_DNS=$((BENCH_PORT_BASE + 3))
ETCD_CLIENT=$((BENCH_PORT_BASE + 4))
ETCD_PEER=$((BENCH_PORT_BASE + 5))

# --- Process bookkeeping: only PIDs started here are ever signalled. ---
CAIRN_PID=""
ETCD_PID=""
# For lib.sh's exit trap (what is still running) and other_benchmarks (never our own etcd).
owned_pids() { echo ${CAIRN_PID:+"$CAIRN_PID"} ${ETCD_PID:+"$ETCD_PID"}; }

# --- Tools. ---
ensure_tools() {
  local pkgs=(curl=curl python3=python3)
  if wants reads; then pkgs+=(etcd=etcd-server wrk=wrk); fi
  ensure_packages "${pkgs[@]}"
}
ensure_tools
require_cairn_bin "no cairn binary at $CAIRN_BIN; build it (cargo build --release -p cairn-node) or set CAIRN_BIN"
if wants fanout && ! "$CAIRN_BIN" agent --help 2>/dev/null | grep -q -- '--max-waiting-per-client'; then
  die "$CAIRN_BIN has no --max-waiting-per-client: it was built before blocking queries; rebuild it
  (cargo build --release -p cairn-node), or run only the read benchmark with BENCH_ONLY=reads"
fi
# The real interpreter (not a pyenv shim), so that what we time and pin is the process doing the work.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
TOOL=("$PYTHON" "$SCRIPT_DIR/reads_tool.py")
ACL_TOOL=("$PYTHON" "$SCRIPT_DIR/acl_tool.py")

# Pinning: the server on CPU 0, the load (wrk, the fan-out client) on CPU 1.
SERVER_PIN=()
CLIENT_PIN=()
if ((BENCH_PIN)); then
  (($(nproc) >= 2)) || die "BENCH_PIN=1 needs at least 2 CPUs"
  command -v taskset >/dev/null || die "BENCH_PIN=1 needs taskset (util-linux)"
  SERVER_PIN=(taskset -c 0)
  CLIENT_PIN=(taskset -c 1)
fi

# --- Other benchmarks on this machine (lib.sh's wait_for_quiet and note_load; never our own
# children, see owned_pids). BENCH_WAIT_MAX=0 means "do not wait", as the help says. ---
OTHER_SCRIPTS='bench/(dns|registrations|checks)\.sh'
WAIT_MAX_ZERO_SKIPS=1

# --- Cairn. ---
# start_cairn NAME [EXTRA ARGS...]: a fresh single node in WORK_DIR/NAME; sets CAIRN_PID.
start_cairn() {
  local name=$1
  shift
  local out=$LOG_DIR/$name.out errlog=$LOG_DIR/$name.log
  check_ports_free "$CAIRN_HTTP" "$CAIRN_RPC" "$CAIRN_DNS"
  rm -rf -- "${WORK_DIR:?}/$name"
  mkdir -p "$WORK_DIR/$name"
  CAIRN_LOG=$BENCH_CAIRN_LOG ${SERVER_PIN[@]+"${SERVER_PIN[@]}"} "$CAIRN_BIN" agent --node-id 1 \
    --data-dir "$WORK_DIR/$name" --bootstrap --http-addr "127.0.0.1:$CAIRN_HTTP" \
    --rpc-addr "127.0.0.1:$CAIRN_RPC" --dns-addr "127.0.0.1:$CAIRN_DNS" "$@" >"$out" 2>"$errlog" &
  CAIRN_PID=$!
  wait_cairn_listening "cairn ($name)" "$CAIRN_PID" "$out" "$errlog" $((SECONDS + 30)) 0.1 \
    1 "$CAIRN_HTTP" "$CAIRN_DNS" "$CAIRN_RPC"
  wait_cairn_ready "cairn ($name)" "$CAIRN_PID" "$errlog" $((SECONDS + 60)) 0.1 "$CAIRN_HTTP"
  local limit
  limit=$(awk '/^Max open files/ { print $4 }' "/proc/$CAIRN_PID/limits")
  log "cairn ($name) ready, pid $CAIRN_PID, open-file limit $limit"
}

stop_cairn() {
  stop_pids "$CAIRN_PID"
  CAIRN_PID=""
}

# log_counts FILE...: "N warnings, M errors" over the servers' stderr (ANSI colours stripped).
log_counts() {
  local w e
  w=$(cat "$@" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -ciE '( WARN |"level":"warn")' || true)
  e=$(cat "$@" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -ciE '( ERROR |"level":"error")' || true)
  printf '%s warnings, %s errors' "$w" "$e"
}

# --- etcd. ---
start_etcd() {
  local deadline
  check_ports_free "$ETCD_CLIENT" "$ETCD_PEER"
  ${SERVER_PIN[@]+"${SERVER_PIN[@]}"} etcd --name bench --data-dir "$WORK_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" --initial-cluster-state new \
    --initial-cluster-token "cairn-reads-bench-$$" \
    --logger zap --log-outputs stderr --log-level warn >"$LOG_DIR/etcd.log" 2>&1 &
  ETCD_PID=$!
  deadline=$((SECONDS + 60))
  until [[ $(curl -s --max-time 2 "http://127.0.0.1:$ETCD_CLIENT/health" 2>/dev/null) == *'"health":"true"'* ]]; do
    assert_alive etcd "$ETCD_PID" "$LOG_DIR/etcd.log"
    ((SECONDS < deadline)) || die "etcd not healthy after 60 s; see $LOG_DIR/etcd.log"
    sleep 0.2
  done
  log "etcd ready, pid $ETCD_PID, client http://127.0.0.1:$ETCD_CLIENT"
}

# --- wrk. ---
# run_wrk SYSTEM URL CONNS DURATION LABEL RUN RUNS_FILE [LUA ARGS...]: the Lua script's mode is
# SYSTEM up to its first "-" (cairn-acl is cairn with a token).
run_wrk() {
  local system=$1 url=$2 conns=$3 duration=$4 label=$5 run=$6 runs_file=$7
  shift 7
  local threads=$((conns < 2 ? conns : 2))
  local out="$RESULTS_DIR/wrk-$system-c$conns-$label.txt"
  # wrk stops itself after -d; the extra minute only guards against a wedged wrk.
  if ! timeout --kill-after=10 $((duration + 60)) ${CLIENT_PIN[@]+"${CLIENT_PIN[@]}"} \
    wrk --latency -t "$threads" -c "$conns" -d "${duration}s" --timeout "${BENCH_TIMEOUT}s" \
    -s "$SCRIPT_DIR/reads.lua" "$url" -- "${system%%-*}" "$@" >"$out" 2>&1; then
    tail -n 20 "$out" >&2 || true
    die "wrk failed for $system c=$conns $label (output in $out)"
  fi
  "${TOOL[@]}" record-wrk --runs "$runs_file" --wrk-output "$out" --system "$system" \
    --connections "$conns" --threads "$threads" --run "$run" --label "$label"
}

# bench_reads SYSTEM URL [LUA ARGS...]: warm-up, then BENCH_RUNS rounds over the connection
# counts (rounds outside, so slow drift is spread over all rows rather than hitting one).
bench_reads() {
  local system=$1 url=$2 run c
  shift 2
  if ((BENCH_WARMUP > 0)); then
    log "$system warm-up: ${BENCH_WARMUP} s at 64 connections (not recorded)"
    run_wrk "$system" "$url" 64 "$BENCH_WARMUP" warmup 0 "$RESULTS_DIR/warmup.jsonl" "$@"
  fi
  for ((run = 1; run <= BENCH_RUNS; run++)); do
    for c in "${CONNECTIONS[@]}"; do
      run_wrk "$system" "$url" "$c" "$BENCH_DURATION" "r$run" "$run" "$RESULTS_DIR/reads.jsonl" "$@"
    done
  done
}

# cairn_reads SYSTEM NAME [TOKENS]: a fresh node NAME seeded with the service, then wrk as
# SYSTEM. With TOKENS: the node runs with --acl (default deny), acl_tool.py bootstraps it, makes
# the policy and the load token and fills the registry up to TOKENS tokens; the seed goes in
# with the management token, the load with the read token.
ACL_META=()
cairn_reads() {
  local system=$1 name=$2 tokens=${3:-} acl_flags=() seed_token=() load_token=() admin=()
  [[ -n $tokens ]] && acl_flags=(--acl)
  start_cairn "$name" ${acl_flags[@]+"${acl_flags[@]}"}
  LOG_FILES+=("$LOG_DIR/$name.log")
  if [[ -n $tokens ]]; then
    local acl_json=$RESULTS_DIR/acl-$name.json mgmt load
    log "cairn ($name): ACL bootstrap, policy, load token, $tokens tokens in all"
    "${ACL_TOOL[@]}" setup --url "http://127.0.0.1:$CAIRN_HTTP" --service "$SERVICE" --access read \
      --tokens "$tokens" --out "$acl_json" || die "preparing the ACLs of cairn ($name) failed"
    mgmt=$(acl_field "$acl_json" management)
    load=$(acl_field "$acl_json" load)
    seed_token=(--token "$mgmt")
    load_token=("$load")
    admin=(-H "X-Cairn-Token: $mgmt")
    if [[ $system == cairn-acl ]]; then
      ACL_META+=(--meta "acl_tokens_few=$(acl_field "$acl_json" tokens)")
    else
      ACL_META+=(--meta "acl_tokens_many=$(acl_field "$acl_json" tokens)"
        --meta "acl_create_count=$(acl_field "$acl_json" created)"
        --meta "acl_create_seconds=$(acl_field "$acl_json" create_seconds)"
        --meta "acl_create_rate=$(acl_field "$acl_json" create_rate)"
        --meta "acl_create_connections=$(acl_field "$acl_json" connections)"
        --meta "acl_rule=$(acl_field "$acl_json" rules)")
    fi
  fi
  "${TOOL[@]}" seed-cairn --port "$CAIRN_HTTP" --service "$SERVICE" --count "$BENCH_INSTANCES" \
    ${seed_token[@]+"${seed_token[@]}"} >"$RESULTS_DIR/seed-$name.json" || die "seeding cairn ($name) failed"
  CAIRN_BODY=$("$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["body_bytes"])' <"$RESULTS_DIR/seed-$name.json")
  bench_reads "$system" "http://127.0.0.1:$CAIRN_HTTP/v1/services/$SERVICE" "$BENCH_INSTANCES" \
    ${load_token[@]+"${load_token[@]}"}
  assert_alive cairn "$CAIRN_PID" "$LOG_DIR/$name.log"
  curl -sf --max-time 5 ${admin[@]+"${admin[@]}"} "http://127.0.0.1:$CAIRN_HTTP/metrics" \
    >"$RESULTS_DIR/metrics-$name.txt" || true
  # One server at a time: stop this node before the next starts.
  stop_cairn
}

# acl_field FILE KEY: one field of acl_tool.py's output, JSON text for objects.
acl_field() {
  "$PYTHON" -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(v if isinstance(v,(str,int,float)) else json.dumps(v))' "$1" "$2"
}

# --- Main. ---
# Open files: W sockets in the node and W in the client (separate processes, one limit each),
# plus listeners, RocksDB and the like. Inherited by everything started below.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if wants fanout && [[ $NOFILE != unlimited ]] && ((NOFILE < MAX_W + 512)); then
  die "open-file limit is $NOFILE (hard $(ulimit -Hn)), too low for $MAX_W watchers; need at least $((MAX_W + 512))"
fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$REPO_ROOT/bench/results/reads-$STAMP
LOG_DIR=$RESULTS_DIR/logs
mkdir -p "$LOG_DIR"
# Data dirs on the default temp filesystem (recorded in the report).
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cairn-reads-bench.XXXXXX")


wait_for_quiet
LOAD_AT_START=$(load_average)
log "results in $RESULTS_DIR; data in $WORK_DIR; load average $LOAD_AT_START; open-file limit $NOFILE"

CAIRN_BODY="?"
ETCD_BODY="?"
LOG_FILES=()
if wants fanout; then
  note_load "the fan-out runs"
  # Rounds outside, sizes inside: every run of every size on its own fresh node, so one run's
  # freed-but-kept allocator memory does not hide the next run's per-watcher cost.
  for ((run = 1; run <= BENCH_RUNS; run++)); do
    for w in "${WATCHERS[@]}"; do
      start_cairn "fanout-w$w-r$run" --max-waiting-per-client "$w"
      LOG_FILES+=("$LOG_DIR/fanout-w$w-r$run.log")
      "${TOOL[@]}" seed-cairn --port "$CAIRN_HTTP" --service "$SERVICE" --count "$BENCH_INSTANCES" \
        >"$RESULTS_DIR/seed-fanout-w$w-r$run.json" || die "seeding the fan-out node failed"
      # A few plain reads first, so lazy initialisation is not counted as watcher memory.
      for _ in 1 2 3; do curl -sf --max-time 5 -o /dev/null "http://127.0.0.1:$CAIRN_HTTP/v1/services/$SERVICE"; done
      # Bound: opening W watchers, the parked probe, the settle time and their return.
      ${CLIENT_PIN[@]+"${CLIENT_PIN[@]}"} timeout --kill-after=10 $((w / 50 + BENCH_SETTLE + 240)) \
        "${TOOL[@]}" fanout --port "$CAIRN_HTTP" --pid "$CAIRN_PID" --service "$SERVICE" --watchers "$w" \
        --run "$run" --wait "$BENCH_WATCH_WAIT" --settle "$BENCH_SETTLE" \
        --max-seconds $((w / 100 + BENCH_SETTLE + 120)) --out "$RESULTS_DIR/fanout.jsonl" ||
        die "fan-out run W=$w #$run failed (node log: $LOG_DIR/fanout-w$w-r$run.log)"
      assert_alive cairn "$CAIRN_PID" "$LOG_DIR/fanout-w$w-r$run.log"
      stop_cairn
    done
  done
  note_load "the end of the fan-out runs"
fi

if wants reads; then
  note_load "the read runs"
  cairn_reads cairn reads-cairn
  if ((BENCH_ACL)); then
    cairn_reads cairn-acl reads-cairn-acl "$ACL_FEW_TOKENS"
    cairn_reads cairn-acl-many reads-cairn-acl-many "$BENCH_ACL_TOKENS"
  fi

  start_etcd
  LOG_FILES+=("$LOG_DIR/etcd.log")
  "${TOOL[@]}" seed-etcd --port "$ETCD_CLIENT" --service "$SERVICE" --prefix "$ETCD_PREFIX" \
    --count "$BENCH_INSTANCES" --body-out "$RESULTS_DIR/etcd-range-body.json" \
    >"$RESULTS_DIR/seed-reads-etcd.json" || die "seeding etcd failed"
  ETCD_BODY=$("$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["body_bytes"])' <"$RESULTS_DIR/seed-reads-etcd.json")
  bench_reads etcd "http://127.0.0.1:$ETCD_CLIENT/v3/kv/range" "$BENCH_INSTANCES" "$(cat "$RESULTS_DIR/etcd-range-body.json")"
  assert_alive etcd "$ETCD_PID" "$LOG_DIR/etcd.log"
  stop_pids "$ETCD_PID"
  ETCD_PID=""
  note_load "the end of the read runs"
fi

# --- Report. ---
[[ -n $WAITED ]] && UNDER_LOAD="${UNDER_LOAD}(Before starting: $WAITED.) "
pin_note=""
((BENCH_PIN)) && pin_note=", each pinned to CPU 0 with wrk pinned to CPU 1"
output_args=()
((BENCH_WRITE)) && output_args=(--output "$BENCH_OUTPUT")
etcd_version=n/a
wrk_version=n/a
if wants reads; then
  # `wrk -v` exits non-zero after printing its version.
  etcd_version=$(etcd --version 2>/dev/null | awk '/^etcd Version:/ { print $3 }') || true
  wrk_version=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }') || true
fi
logs_summary=""
((${#LOG_FILES[@]} > 0)) && logs_summary=$(log_counts "${LOG_FILES[@]}")

printf '\n'
"${TOOL[@]}" report --fanout "$RESULTS_DIR/fanout.jsonl" --reads "$RESULTS_DIR/reads.jsonl" \
  --section-out "$RESULTS_DIR/section.md" ${output_args[@]+"${output_args[@]}"} \
  --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --meta "nproc=$(nproc)" \
  --meta "cpu=$(cpu_model)" \
  --meta "kernel=$(uname -r)" \
  --meta "os=$(os_name)" \
  --meta "fs=$(fs_type "$WORK_DIR")" \
  --meta "load=$LOAD_AT_START" \
  --meta "cairn_commit=$(git_commit)" \
  --meta "cairn_bin=$(repo_relative "$CAIRN_BIN")" \
  --meta "cairn_bin_mtime=built $(date -u -r "$CAIRN_BIN" '+%Y-%m-%d %H:%M UTC')" \
  --meta "cairn_log=$BENCH_CAIRN_LOG" \
  --meta "etcd_version=$etcd_version" \
  --meta "wrk_version=$wrk_version" \
  --meta "python=$("$PYTHON" -c 'import platform; print(platform.python_version())')" \
  --meta "nofile=$NOFILE" \
  --meta "service=$SERVICE" \
  --meta "instances=$BENCH_INSTANCES" \
  --meta "watchers=${WATCHERS[*]}" \
  --meta "watchers_max=$MAX_W" \
  --meta "wait=$BENCH_WATCH_WAIT" \
  --meta "settle=$BENCH_SETTLE" \
  --meta "duration=$BENCH_DURATION" \
  --meta "runs=$BENCH_RUNS" \
  --meta "warmup=$BENCH_WARMUP" \
  --meta "pin_note=$pin_note" \
  --meta "cairn_body=$CAIRN_BODY" \
  --meta "etcd_body=$ETCD_BODY" \
  --meta "logs=$logs_summary" \
  --meta "under_load=$UNDER_LOAD" \
  --meta "command=$COMMAND_LINE" \
  ${ACL_META[@]+"${ACL_META[@]}"} \
  --meta "results_dir=${RESULTS_DIR#"$REPO_ROOT"/}/"
