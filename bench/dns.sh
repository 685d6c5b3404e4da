#!/usr/bin/env bash
# DNS throughput and latency: Cairn's DNS interface against Knot DNS and hickory-dns serving the
# same records, each server alone on one CPU, dnsperf on the other, everything on 127.0.0.1.
#
#   bench/dns.sh [--build] [--help]
#
# One Cairn node is started (`--bootstrap`) and loaded over HTTP with BENCH_SERVICES services x
# BENCH_INSTANCES_PER_SERVICE instances; Knot and hickory-dns get a zone file with the same
# records. Every server is checked with dig against the data set before it is measured. Then per
# server: a warm-up, BENCH_RUNS runs at full speed (peak QPS), BENCH_RUNS runs at a fixed rate
# with per-query latencies (percentiles), and for Cairn with BENCH_CHURN=1 BENCH_RUNS more full-
# speed runs while registrations and health flips hit the same node.
#
# Environment (defaults in brackets):
#   CAIRN_BIN                   cairn binary [${CARGO_TARGET_DIR:-<repo>/target}/release/cairn]
#   HICKORY_BIN                 hickory-dns binary [<repo>/bench/.tools/bin/hickory-dns]; when it is
#                               missing the script runs `cargo install --locked --no-default-features
#                               hickory-dns --version $HICKORY_VERSION --root <repo>/bench/.tools`
#   HICKORY_VERSION             hickory-dns version to install [0.26.3] (its config syntax is what
#                               this script writes)
#   BENCH_ONLY                  run only these servers: cairn, knot, hickory (comma-separated) [all]
#   BENCH_SERVICES              services svc0..svcN-1 [10000]
#   BENCH_INSTANCES_PER_SERVICE instances per service, each with its own IPv4 address [10]
#   BENCH_TAGS                  tags, instance i gets tag i mod count [v1,v2]
#   BENCH_QUERIES               lines in the dnsperf query file (dnsperf loops over it) [200000]
#   BENCH_MIX                   weights of A, SRV, tag A, NXDOMAIN queries [40,30,20,10]
#   BENCH_DURATION              seconds per dnsperf run [10]
#   BENCH_RUNS                  runs per row; the report takes the median [3]
#   BENCH_WARMUP                seconds of unrecorded load per server before measuring [3]
#   BENCH_CLIENTS               dnsperf -c, UDP sockets [8]
#   BENCH_OUTSTANDING           dnsperf -q, most queries in flight [100]
#   BENCH_LATENCY               rate of the latency runs: "half" = half of each server's own median
#                               peak, a number = that many QPS for every server, 0 = skip [half]
#   BENCH_BY_TYPE               1 = also one full-speed run per query type (A, SRV, tag A,
#                               NXDOMAIN) of min(BENCH_DURATION, 5) s per server [1]
#   BENCH_CHURN                 1 = also measure Cairn under write churn [0]
#   BENCH_CHURN_RATE            registrations per second during churn (plus one health flip per 5) [100]
#   BENCH_SERVER_CPU            CPU the server is pinned to [0]
#   BENCH_CLIENT_CPU            CPU dnsperf (and the HTTP load clients) are pinned to [1]
#   BENCH_REGISTER_CONCURRENCY  registrations in flight while loading Cairn [64]
#   BENCH_PORT_BASE             first of the loopback ports used (base+1 .. base+5) [22000]
#   BENCH_OUTPUT                Markdown file whose DNS section is replaced [<repo>/BENCHMARKS.md]
#   BENCH_WRITE                 0 = only print the tables, leave BENCH_OUTPUT alone [1]
#
# Installs dnsperf, knot, bind9-dnsutils (dig), curl and python3 with apt-get when missing.
# Raw dnsperf output and server logs stay in bench/results/dns-<UTC time>/ (git-ignored).
set -euo pipefail

# --- Command line, captured before defaults are filled in so the report shows what was typed. ---
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
BENCH_LOG_TAG=dns-bench
# log, die, usage, settings checks, process cleanup (exit trap), ports, Cairn start-up waits.
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

ENV_VARS=(CAIRN_BIN HICKORY_BIN HICKORY_VERSION BENCH_ONLY BENCH_SERVICES BENCH_INSTANCES_PER_SERVICE
  BENCH_TAGS BENCH_QUERIES BENCH_MIX BENCH_DURATION BENCH_RUNS BENCH_WARMUP BENCH_CLIENTS
  BENCH_OUTSTANDING BENCH_LATENCY BENCH_BY_TYPE BENCH_CHURN BENCH_CHURN_RATE BENCH_SERVER_CPU BENCH_CLIENT_CPU
  BENCH_REGISTER_CONCURRENCY BENCH_PORT_BASE BENCH_OUTPUT BENCH_WRITE)
capture_command_line dns.sh "${ENV_VARS[@]}" -- "$@"

DO_BUILD=0
for arg in "$@"; do
  case $arg in
    --build) DO_BUILD=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $arg" ;;
  esac
done

# --- Settings. ---
BENCH_ONLY=${BENCH_ONLY:-}
BENCH_SERVICES=${BENCH_SERVICES:-10000}
BENCH_INSTANCES_PER_SERVICE=${BENCH_INSTANCES_PER_SERVICE:-10}
BENCH_TAGS=${BENCH_TAGS:-v1,v2}
BENCH_QUERIES=${BENCH_QUERIES:-200000}
BENCH_MIX=${BENCH_MIX:-40,30,20,10}
BENCH_DURATION=${BENCH_DURATION:-10}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_WARMUP=${BENCH_WARMUP:-3}
BENCH_CLIENTS=${BENCH_CLIENTS:-8}
BENCH_OUTSTANDING=${BENCH_OUTSTANDING:-100}
BENCH_LATENCY=${BENCH_LATENCY:-half}
BENCH_BY_TYPE=${BENCH_BY_TYPE:-1}
BENCH_CHURN=${BENCH_CHURN:-0}
BENCH_CHURN_RATE=${BENCH_CHURN_RATE:-100}
BENCH_SERVER_CPU=${BENCH_SERVER_CPU:-0}
BENCH_CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
BENCH_REGISTER_CONCURRENCY=${BENCH_REGISTER_CONCURRENCY:-64}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-22000}
BENCH_OUTPUT=${BENCH_OUTPUT:-$REPO_ROOT/BENCHMARKS.md}
BENCH_WRITE=${BENCH_WRITE:-1}
CAIRN_BIN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/cairn}
TOOLS_DIR=$REPO_ROOT/bench/.tools
HICKORY_BIN=${HICKORY_BIN:-$TOOLS_DIR/bin/hickory-dns}
HICKORY_VERSION=${HICKORY_VERSION:-0.26.3}

require_uint BENCH_SERVICES BENCH_INSTANCES_PER_SERVICE BENCH_QUERIES BENCH_DURATION BENCH_RUNS \
  BENCH_WARMUP BENCH_CLIENTS BENCH_OUTSTANDING BENCH_CHURN_RATE BENCH_SERVER_CPU BENCH_CLIENT_CPU \
  BENCH_REGISTER_CONCURRENCY BENCH_PORT_BASE
require_flag BENCH_WRITE BENCH_CHURN BENCH_BY_TYPE
[[ $BENCH_LATENCY == half ]] || is_uint "$BENCH_LATENCY" ||
  die "BENCH_LATENCY must be 'half', a QPS number or 0, got '$BENCH_LATENCY'"
((BENCH_SERVICES >= 1 && BENCH_INSTANCES_PER_SERVICE >= 1 && BENCH_QUERIES >= 1)) ||
  die "BENCH_SERVICES, BENCH_INSTANCES_PER_SERVICE and BENCH_QUERIES must be at least 1"
((BENCH_DURATION >= 1 && BENCH_RUNS >= 1 && BENCH_CLIENTS >= 1 && BENCH_OUTSTANDING >= 1)) ||
  die "BENCH_DURATION, BENCH_RUNS, BENCH_CLIENTS and BENCH_OUTSTANDING must be at least 1"
((BENCH_CHURN_RATE >= 1 && BENCH_REGISTER_CONCURRENCY >= 1)) ||
  die "BENCH_CHURN_RATE and BENCH_REGISTER_CONCURRENCY must be at least 1"
# Stay below Linux's ephemeral range (32768+) so no outgoing socket can take our ports.
((BENCH_PORT_BASE >= 1024 && BENCH_PORT_BASE + 5 < 32768)) ||
  die "BENCH_PORT_BASE must be between 1024 and 32762"
BYTYPE_DURATION=$((BENCH_DURATION < 5 ? BENCH_DURATION : 5))
NCPU=$(nproc)
((BENCH_SERVER_CPU < NCPU && BENCH_CLIENT_CPU < NCPU)) ||
  die "BENCH_SERVER_CPU and BENCH_CLIENT_CPU must be below the CPU count ($NCPU)"
((BENCH_SERVER_CPU != BENCH_CLIENT_CPU)) ||
  log "warning: server and dnsperf share CPU $BENCH_SERVER_CPU; the figures will mix both"

SYSTEMS=()
if [[ -z $BENCH_ONLY ]]; then
  SYSTEMS=(cairn knot hickory)
else
  IFS=', ' read -r -a only <<<"$BENCH_ONLY"
  for s in "${only[@]}"; do
    case $s in
      cairn | knot | hickory) [[ " ${SYSTEMS[*]-} " == *" $s "* ]] || SYSTEMS+=("$s") ;;
      *) die "BENCH_ONLY takes cairn, knot and/or hickory, got '$s'" ;;
    esac
  done
fi
((${#SYSTEMS[@]} > 0)) || die "BENCH_ONLY selects no server"
wants() { [[ " ${SYSTEMS[*]} " == *" $1 "* ]]; }

TOOL=(python3 "$SCRIPT_DIR/dns_tool.py")
DATA_ARGS=(--services "$BENCH_SERVICES" --instances "$BENCH_INSTANCES_PER_SERVICE" --tags "$BENCH_TAGS")

# Ports: Cairn HTTP base+1, RPC base+2, DNS base+3; Knot base+4; hickory-dns base+5.
CAIRN_HTTP_PORT=$((BENCH_PORT_BASE + 1))
CAIRN_RPC_PORT=$((BENCH_PORT_BASE + 2))
CAIRN_DNS_PORT=$((BENCH_PORT_BASE + 3))
KNOT_PORT=$((BENCH_PORT_BASE + 4))
HICKORY_PORT=$((BENCH_PORT_BASE + 5))
CAIRN_URL=http://127.0.0.1:$CAIRN_HTTP_PORT
declare -A DNS_PORT=([cairn]=$CAIRN_DNS_PORT [knot]=$KNOT_PORT [hickory]=$HICKORY_PORT)

# --- Process bookkeeping: we only ever signal PIDs we started ourselves. ---
declare -A SERVER_PID=()
CHURN_PID=""
# For lib.sh's exit trap: what is still running.
owned_pids() { echo ${CHURN_PID:+"$CHURN_PID"} ${SERVER_PID[@]+"${SERVER_PID[@]}"}; }

stop_server() {
  local pid=${SERVER_PID[$1]:-}
  [[ -n $pid ]] || return 0
  stop_pids "$pid"
  unset "SERVER_PID[$1]"
}

# --- Tools. ---
ensure_tools() {
  # command -> Debian package providing it
  local pkgs=(dnsperf=dnsperf dig=bind9-dnsutils curl=curl python3=python3 taskset=util-linux)
  wants knot && pkgs+=(knotd=knot)
  ensure_packages "${pkgs[@]}"
}

# wait_for_other_builds: on a small machine two Rust builds at once take longer than one after
# the other; wait (at most 15 minutes) for cargo/rustc processes that are not ours to finish.
wait_for_other_builds() {
  local deadline=$((SECONDS + 900))
  while pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null; do
    ((SECONDS < deadline)) || die "another cargo/rustc is still running after 15 minutes; try again later"
    log "another cargo/rustc process is running; waiting for it before building"
    sleep 20
  done
}

ensure_cairn_bin() {
  if ((DO_BUILD)); then
    wait_for_other_builds
    log "building cairn: cargo build --release -p cairn-node"
    (cd "$REPO_ROOT" && cargo build --release -p cairn-node)
  fi
  require_cairn_bin "no cairn binary at $CAIRN_BIN.
  Build it first:   (cd $REPO_ROOT && cargo build --release -p cairn-node)
  or let this script do it:  bench/dns.sh --build
  or point CAIRN_BIN at an existing binary, or leave Cairn out with BENCH_ONLY=knot,hickory."
}

ensure_hickory_bin() {
  [[ -x $HICKORY_BIN ]] && return 0
  [[ $HICKORY_BIN == "$TOOLS_DIR/bin/hickory-dns" ]] ||
    die "HICKORY_BIN=$HICKORY_BIN is not an executable"
  command -v cargo >/dev/null 2>&1 || die "hickory-dns is missing and there is no cargo to install it"
  wait_for_other_builds
  # Only the file store is needed: no default features (SQLite, resolver, TLS verifier), which
  # also keeps the build short. Bounded: a build that hangs must not hold the benchmark forever.
  log "installing hickory-dns $HICKORY_VERSION into $TOOLS_DIR (cargo install, several minutes)"
  timeout 3600 cargo install --locked --no-default-features hickory-dns --version "$HICKORY_VERSION" \
    --root "$TOOLS_DIR" || die "cargo install hickory-dns failed"
  [[ -x $HICKORY_BIN ]] || die "cargo install finished but $HICKORY_BIN is missing"
}

# DNS servers listen on UDP: lib.sh's check_ports_free must look for UDP listeners too.
PORT_CHECK_UDP=1

# server_alive NAME: fail early, with the log tail, if the server NAME died.
server_alive() { assert_alive "$1" "${SERVER_PID[$1]}" "$LOG_DIR/$1.log"; }

# wait_dns NAME PORT TIMEOUT: until the server answers the zone's SOA authoritatively.
wait_dns() {
  local name=$1 port=$2 deadline=$((SECONDS + $3)) out
  while true; do
    out=$(dig @127.0.0.1 -p "$port" +tries=1 +time=1 +norec +nocookie cairn. SOA 2>/dev/null || true)
    if [[ $out == *"status: NOERROR"* && $out == *" aa"* && $out == *"IN"*"SOA"* ]]; then
      return 0
    fi
    server_alive "$name"
    ((SECONDS < deadline)) || die "$name did not answer cairn. SOA on port $port within $3 s"
    sleep 0.5
  done
}

# cpu_ticks PID: user+system clock ticks of a process, all threads.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# wait_quiet NAME: until the server uses under 5% of a CPU for two seconds in a row (zone
# loading, a snapshot after the bulk load, compactions), at most 120 s.
wait_quiet() {
  local pid=${SERVER_PID[$1]} hz deadline=$((SECONDS + 120)) calm=0 a b
  hz=$(getconf CLK_TCK)
  a=$(cpu_ticks "$pid")
  while ((calm < 2)); do
    sleep 1
    b=$(cpu_ticks "$pid")
    if (((b - a) * 100 < 5 * hz)); then calm=$((calm + 1)); else calm=0; fi
    a=$b
    server_alive "$1"
    if ((SECONDS >= deadline)); then
      log "warning: $1 still busy after 120 s; measuring anyway"
      return 0
    fi
  done
}

# --- Servers. ---
start_knot() {
  local dir=$WORK_DIR/knot
  mkdir -p "$dir/zones" "$dir/db" "$dir/run"
  cp "$DATA_DIR/cairn.zone" "$dir/zones/cairn.zone"
  # One UDP and one TCP worker, one background worker: Knot on one core, like the others. No
  # journal and no zone file sync: the zone is served as loaded. Answer rotation on, the closest
  # Knot comes to Cairn's per-query shuffle (it costs Knot next to nothing).
  cat >"$dir/knot.conf" <<EOF
server:
    rundir: "$dir/run"
    listen: 127.0.0.1@$KNOT_PORT
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    answer-rotation: on
database:
    storage: "$dir/db"
log:
  - target: stderr
    any: notice
template:
  - id: default
    storage: "$dir/zones"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: cairn.
    file: cairn.zone
EOF
  cp "$dir/knot.conf" "$RESULTS_DIR/knot.conf"
  knotc -c "$dir/knot.conf" conf-check >/dev/null || die "knot.conf is not valid (see $RESULTS_DIR/knot.conf)"
  check_ports_free "$KNOT_PORT"
  taskset -c "$BENCH_SERVER_CPU" knotd -c "$dir/knot.conf" >"$LOG_DIR/knot.log" 2>&1 &
  SERVER_PID[knot]=$!
  log "knot started (pid ${SERVER_PID[knot]}) on 127.0.0.1:$KNOT_PORT"
  wait_dns knot "$KNOT_PORT" 300
}

start_hickory() {
  local dir=$WORK_DIR/hickory
  mkdir -p "$dir"
  cp "$DATA_DIR/cairn.zone" "$dir/cairn.zone"
  # Syntax of hickory-dns 0.26 (crates/server config, `[[zones]]` with a file store); checked
  # with --validate below. drop_privileges = false: as root it would otherwise switch to nobody.
  cat >"$dir/named.toml" <<EOF
listen_addrs_ipv4 = ["127.0.0.1"]
listen_port = $HICKORY_PORT
directory = "$dir"
drop_privileges = false

[[zones]]
zone = "cairn."
zone_type = "Primary"

[zones.stores]
type = "file"
zone_path = "cairn.zone"
EOF
  cp "$dir/named.toml" "$RESULTS_DIR/hickory.toml"
  "$HICKORY_BIN" --validate -c "$dir/named.toml" >"$LOG_DIR/hickory-validate.log" 2>&1 ||
    die "hickory-dns rejected its config: $(tail -n 5 "$LOG_DIR/hickory-validate.log")"
  check_ports_free "$HICKORY_PORT"
  # One Tokio worker: one core. Logging at WARN (-q), so no per-query log lines are written.
  taskset -c "$BENCH_SERVER_CPU" "$HICKORY_BIN" --workers 1 -q -c "$dir/named.toml" \
    >"$LOG_DIR/hickory.log" 2>&1 &
  SERVER_PID[hickory]=$!
  log "hickory-dns started (pid ${SERVER_PID[hickory]}) on 127.0.0.1:$HICKORY_PORT"
  wait_dns hickory "$HICKORY_PORT" 300
}

# The CLI below is the contract agreed for `cairn agent` (lib.sh waits for its output line and
# /v1/ready); if the binary changes them, adapt here and in lib.sh.
start_cairn() {
  local dir=$WORK_DIR/cairn
  mkdir -p "$dir"
  check_ports_free "$CAIRN_HTTP_PORT" "$CAIRN_RPC_PORT" "$CAIRN_DNS_PORT"
  taskset -c "$BENCH_SERVER_CPU" "$CAIRN_BIN" agent --node-id 1 --data-dir "$dir" --bootstrap \
    --http-addr "127.0.0.1:$CAIRN_HTTP_PORT" --rpc-addr "127.0.0.1:$CAIRN_RPC_PORT" \
    --dns-addr "127.0.0.1:$CAIRN_DNS_PORT" >"$LOG_DIR/cairn.out" 2>"$LOG_DIR/cairn.log" &
  SERVER_PID[cairn]=$!
  log "cairn started (pid ${SERVER_PID[cairn]}), http $CAIRN_URL, dns 127.0.0.1:$CAIRN_DNS_PORT"

  wait_cairn_listening cairn "${SERVER_PID[cairn]}" "$LOG_DIR/cairn.out" "$LOG_DIR/cairn.log" \
    $((SECONDS + 30)) 0.2 1 "$CAIRN_HTTP_PORT" "$CAIRN_DNS_PORT" "$CAIRN_RPC_PORT"
  wait_cairn_ready cairn "${SERVER_PID[cairn]}" "$LOG_DIR/cairn.log" $((SECONDS + 60)) 0.2 "$CAIRN_HTTP_PORT"
  log "cairn ready; registering $((BENCH_SERVICES * BENCH_INSTANCES_PER_SERVICE)) instances"
  # Bounded by --deadline; the client runs on the load CPU like dnsperf will.
  taskset -c "$BENCH_CLIENT_CPU" "${TOOL[@]}" register "${DATA_ARGS[@]}" --url "$CAIRN_URL" \
    --concurrency "$BENCH_REGISTER_CONCURRENCY" --deadline 1200 | tee "$RESULTS_DIR/register.txt" >&2 ||
    die "registration failed"
  wait_dns cairn "$CAIRN_DNS_PORT" 30
}

# --- Load. ---
# cpu_busy CPU: "busy total" jiffies of one CPU from /proc/stat.
cpu_busy() {
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

pct() { echo $((($2 - $1) * 100 / ($4 - $3 > 0 ? $4 - $3 : 1))); }

# run_dnsperf SERVER KIND RUN DURATION [QPS [QTYPE]]: one dnsperf run, recorded in runs.jsonl
# (warm-ups in warmup.jsonl). With QPS > 0 it is rate-limited and prints per-query lines for
# percentiles. With QTYPE (a, srv, tag, nx) it sends only that type's queries. For KIND churn the
# churn client (CHURN_PID) is stopped after dnsperf and its summary attached.
# Besides dnsperf's own figures it records how busy both CPUs were and the CPU time the server
# process used, which gives the server's CPU cost per query even when dnsperf is the bottleneck.
run_dnsperf() {
  local server=$1 kind=$2 run=$3 duration=$4 qps=${5:-0} qtype=${6:-}
  local out=$RESULTS_DIR/$server-$kind${qtype:+-$qtype}-$run.txt verbose="" runs_file=$RESULTS_DIR/runs.jsonl
  local pid=${SERVER_PID[$server]} queries=$DATA_DIR/queries${qtype:+-$qtype}.txt
  local args=(-s 127.0.0.1 -p "${DNS_PORT[$server]}" -d "$queries" -l "$duration"
    -c "$BENCH_CLIENTS" -q "$BENCH_OUTSTANDING" -t 1 -e)
  [[ $kind == warmup ]] && runs_file=$RESULTS_DIR/warmup.jsonl
  local s0 c0 s1 c1 t0 t1 rc=0 times=$WORK_DIR/time.txt TIMEFORMAT='%R %U %S' real user sys
  read -r -a s0 < <(cpu_busy "$BENCH_SERVER_CPU")
  read -r -a c0 < <(cpu_busy "$BENCH_CLIENT_CPU")
  t0=$(cpu_ticks "$pid")
  # `time` gives dnsperf's own CPU time (wall, user, system), whatever else runs on its CPU.
  if ((qps > 0)); then
    # The per-query lines are large (tens of MB): keep them in the temp dir, keep the summary.
    verbose=$WORK_DIR/$server-$kind-$run.verbose
    { time timeout --kill-after=10 $((duration + 30)) taskset -c "$BENCH_CLIENT_CPU" \
      dnsperf "${args[@]}" -Q "$qps" -v >"$verbose" 2>&1; } 2>"$times" || rc=$?
    grep -v '^> ' "$verbose" >"$out" || true
  else
    { time timeout --kill-after=10 $((duration + 30)) taskset -c "$BENCH_CLIENT_CPU" \
      dnsperf "${args[@]}" >"$out" 2>&1; } 2>"$times" || rc=$?
  fi
  t1=$(cpu_ticks "$pid")
  read -r real user sys <"$times" || true
  read -r -a s1 < <(cpu_busy "$BENCH_SERVER_CPU")
  read -r -a c1 < <(cpu_busy "$BENCH_CLIENT_CPU")
  if ((rc != 0)); then
    tail -n 20 "$out" >&2
    die "dnsperf failed (exit $rc) for $server $kind run $run"
  fi
  local extra=()
  if [[ $kind == churn ]]; then
    stop_pids "$CHURN_PID"
    CHURN_PID=""
    [[ -s $RESULTS_DIR/churn-$run.json ]] || die "the churn client wrote no summary; see $LOG_DIR/churn.log"
    extra+=(--churn "$RESULTS_DIR/churn-$run.json")
  fi
  {
    printf '# cpu%s busy %s%%, cpu%s busy %s%% (all processes)\n' \
      "$BENCH_SERVER_CPU" "$(pct "${s0[0]}" "${s1[0]}" "${s0[1]}" "${s1[1]}")" \
      "$BENCH_CLIENT_CPU" "$(pct "${c0[0]}" "${c1[0]}" "${c0[1]}" "${c1[1]}")"
    printf '# server process cpu ticks %s hz %s\n' $((t1 - t0)) "$(getconf CLK_TCK)"
    printf '# dnsperf process real %s user %s sys %s\n' "${real:-0}" "${user:-0}" "${sys:-0}"
  } >>"$out"
  [[ -n $verbose ]] && extra+=(--verbose-output "$verbose")
  [[ -n $qtype ]] && extra+=(--qtype "$qtype")
  "${TOOL[@]}" record --runs "$runs_file" --dnsperf-output "$out" --server "$server" --kind "$kind" \
    --run "$run" --clients "$BENCH_CLIENTS" --target-qps "$qps" --mix "$DATA_DIR/queries.json" \
    ${extra[@]+"${extra[@]}"} >&2
  [[ -n $verbose ]] && rm -f -- "$verbose"
  server_alive "$server"
}

# bench_server SERVER: warm-up, peak runs, latency runs, (Cairn) churn runs.
bench_server() {
  local server=$1 run qps
  if ((BENCH_WARMUP > 0)); then
    log "$server: warm-up ${BENCH_WARMUP} s (not recorded)"
    run_dnsperf "$server" warmup 0 "$BENCH_WARMUP"
  fi
  for ((run = 1; run <= BENCH_RUNS; run++)); do
    run_dnsperf "$server" peak "$run" "$BENCH_DURATION"
  done
  if [[ $BENCH_LATENCY != 0 ]]; then
    if [[ $BENCH_LATENCY == half ]]; then
      qps=$("${TOOL[@]}" peak --runs "$RESULTS_DIR/runs.jsonl" --server "$server")
      qps=$((qps / 2))
    else
      qps=$BENCH_LATENCY
    fi
    ((qps >= 1)) || die "$server: no rate for the latency runs (peak was $qps)"
    for ((run = 1; run <= BENCH_RUNS; run++)); do
      run_dnsperf "$server" latency "$run" "$BENCH_DURATION" "$qps"
    done
  fi
  if ((BENCH_BY_TYPE)); then
    local qtype
    for qtype in a srv tag nx; do
      run_dnsperf "$server" bytype 1 "$BYTYPE_DURATION" 0 "$qtype"
    done
  fi
  if [[ $server == cairn ]] && ((BENCH_CHURN)); then
    log "cairn: churn runs, $BENCH_CHURN_RATE registrations/s + health flips during dnsperf"
    for ((run = 1; run <= BENCH_RUNS; run++)); do
      # Starts a second before dnsperf, is stopped right after it, and stops by itself after
      # --duration in any case. It runs on the load CPU, next to dnsperf.
      taskset -c "$BENCH_CLIENT_CPU" "${TOOL[@]}" churn "${DATA_ARGS[@]}" --url "$CAIRN_URL" \
        --rate "$BENCH_CHURN_RATE" --duration $((BENCH_DURATION + 5)) \
        --seed "$run" --out "$RESULTS_DIR/churn-$run.json" 2>>"$LOG_DIR/churn.log" &
      CHURN_PID=$!
      sleep 1
      kill -0 "$CHURN_PID" 2>/dev/null || die "the churn client exited at once; see $LOG_DIR/churn.log"
      run_dnsperf cairn churn "$run" "$BENCH_DURATION"
    done
  fi
}

# --- Main. ---
ensure_tools
wants cairn && ensure_cairn_bin
wants hickory && ensure_hickory_bin

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$REPO_ROOT/bench/results/dns-$STAMP
LOG_DIR=$RESULTS_DIR/logs
mkdir -p "$LOG_DIR"
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cairn-dns-bench.XXXXXX")
DATA_DIR=$WORK_DIR/data
ulimit -n 65536 2>/dev/null || true

LOAD_AT_START=$(load_average)
warn_if_loaded "$LOAD_AT_START"
log "results in $RESULTS_DIR; servers: ${SYSTEMS[*]}; $BENCH_RUNS runs x ${BENCH_DURATION} s"

"${TOOL[@]}" dataset "${DATA_ARGS[@]}" --out-dir "$DATA_DIR" --queries "$BENCH_QUERIES" \
  --mix "$BENCH_MIX" | tee "$RESULTS_DIR/dataset.txt" >&2
cp "$DATA_DIR/queries.json" "$RESULTS_DIR/"

# All servers come up and are checked first, so a wrong answer fails the run before any time is
# spent measuring. Idle servers use no CPU; each is stopped once measured (Cairn first, as it is
# the only one with background work, so the others are measured with nothing else running).
verify_args=()
for s in "${SYSTEMS[@]}"; do
  "start_$s"
  verify_args+=(--server "$s=${DNS_PORT[$s]}")
done
log "checking answers against the data set"
# hickory-server 0.26 follows only the first record of an SRV RRset for additional-section glue
# (store/in_memory `maybe_next_name` takes `records_without_rrsigs().next()`), so its SRV answers
# carry one target address instead of all of them. That is hickory's behaviour, not a setup
# mistake: accepted (any other difference still fails the run) and stated in the report.
"${TOOL[@]}" verify "${DATA_ARGS[@]}" "${verify_args[@]}" --sample 6 --partial-additional hickory \
  --notes-out "$RESULTS_DIR/notes.txt" | tee "$RESULTS_DIR/verify.txt" >&2 ||
  die "the servers' answers differ from the data set (see above); not measuring"
if wants hickory; then
  # Also hickory's, not the setup's: for a name without records, hickory-server 0.26's in-memory
  # store scans every name of the zone (store/in_memory lookup: `records.keys().any(..)`) to tell
  # NODATA from NXDOMAIN, so an NXDOMAIN costs time proportional to the zone's size.
  see=""
  ((BENCH_BY_TYPE)) && see=" (see the by-type table)"
  echo "hickory-dns tells NXDOMAIN from NODATA by scanning every name in the zone (hickory-server 0.26, store/in_memory \`lookup\`: \`records.keys().any(..)\`), so its NXDOMAIN answers cost time proportional to the zone size and dominate its figures for large zones$see" >>"$RESULTS_DIR/notes.txt"
fi

for s in "${SYSTEMS[@]}"; do
  log "$s: waiting for the server to go idle"
  wait_quiet "$s"
  bench_server "$s"
  stop_server "$s"
done

# --- Report. ---
cairn_commit=n/a
wants cairn && cairn_commit=$(git_commit)
knot_version=n/a
wants knot && knot_version=$(knotd --version | sed 's/knotd (Knot DNS), version /Knot DNS /')
hickory_version=n/a
wants hickory && hickory_version=$("$HICKORY_BIN" --version 2>/dev/null | awk '{ print $NF }')
case $BENCH_LATENCY in
  0) latency_rate="" ;;
  half) latency_rate="half of each server's median peak QPS" ;;
  *) latency_rate="$BENCH_LATENCY QPS" ;;
esac
output_args=()
((BENCH_WRITE)) && output_args=(--output "$BENCH_OUTPUT")

printf '\n'
"${TOOL[@]}" report --runs "$RESULTS_DIR/runs.jsonl" ${output_args[@]+"${output_args[@]}"} \
  --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --meta "nproc=$NCPU" \
  --meta "cpu=$(cpu_model)" \
  --meta "kernel=$(uname -r)" \
  --meta "os=$(os_name)" \
  --meta "load=$LOAD_AT_START" \
  --meta "cairn_commit=$cairn_commit" \
  --meta "knot_version=$knot_version" \
  --meta "hickory_version=$hickory_version" \
  --meta "dnsperf_version=$(dnsperf -h 2>&1 | awk '/^Version/ { print $2 }')" \
  --meta "server_cpu=$BENCH_SERVER_CPU" \
  --meta "client_cpu=$BENCH_CLIENT_CPU" \
  --meta "dataset=$(cat "$RESULTS_DIR/dataset.txt"); tags ${BENCH_TAGS}, TTL 5, every instance passing" \
  --meta "mix=weights ${BENCH_MIX} for A svcN.service.cairn / SRV _svcN._tcp.service.cairn / A <tag>.svcN.service.cairn / A nosuchN.service.cairn (NXDOMAIN), services uniform; the same file for every server" \
  --meta "dnsperf_cmd=dnsperf -s 127.0.0.1 -p PORT -d queries.txt -l $BENCH_DURATION -c $BENCH_CLIENTS -q $BENCH_OUTSTANDING -t 1 -e [-Q QPS -v]" \
  --meta "duration=$BENCH_DURATION" \
  --meta "runs=$BENCH_RUNS" \
  --meta "warmup=$BENCH_WARMUP" \
  --meta "latency_rate=$latency_rate" \
  --meta "bytype_duration=$BYTYPE_DURATION" \
  --meta "notes=$(cat "$RESULTS_DIR/notes.txt" 2>/dev/null)" \
  --meta "command=$COMMAND_LINE" \
  --meta "results_dir=${RESULTS_DIR#"$REPO_ROOT"/}/"
