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
# With BENCH_DNS_TLS=1 it measures encrypted DNS instead: Cairn (`--dns-tls-addr`,
# `--dns-https-addr`, a node certificate from `cairn tls`) against unbound serving the same records
# as a local zone (`local-zone`/`local-data`, `tls-port`, `https-port`, the same certificate), each
# over plain TCP, DNS over TLS and DNS over HTTPS (dnsperf -m tcp / dot / doh) at each of
# BENCH_TLS_CONNECTIONS connections: a warm-up and BENCH_RUNS full-speed runs per cell, written to
# the dns-tls section of BENCH_OUTPUT (the UDP section is left alone).
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
#   BENCH_PORT_BASE             first of the loopback ports used (base+1 .. base+10) [22000]
#   BENCH_DNS_TLS               1 = the encrypted DNS comparison above (Cairn vs unbound; BENCH_ONLY
#                               then takes cairn, unbound; no latency, by-type or churn runs) [0]
#   BENCH_TLS_MODES             transports measured with BENCH_DNS_TLS=1: tcp, dot, doh [tcp,dot,doh]
#   BENCH_TLS_CONNECTIONS       dnsperf -c (TCP/TLS connections, HTTP/2 for DoH) per row, with
#                               BENCH_DNS_TLS=1; -q BENCH_OUTSTANDING is shared among them [4,64]
#   BENCH_DOH_CLIENT            the DoH load generator: h2load (nghttp2-client; GET, the queries
#                               base64url-encoded) or dnsperf (-m doh; see the report's note on why
#                               h2load is the default) [h2load]
#   BENCH_DOH_METHOD            dnsperf's DoH method, GET or POST [GET]
#   BENCH_OUTPUT                Markdown file whose DNS section is replaced [<repo>/BENCHMARKS.md]
#   BENCH_WRITE                 0 = only print the tables, leave BENCH_OUTPUT alone [1]
#
# Installs dnsperf, knot, bind9-dnsutils (dig), curl and python3 (and unbound with
# BENCH_DNS_TLS=1) with apt-get when missing. Raw dnsperf output and server logs stay in
# bench/results/dns-<UTC time>/ (dns-tls-<UTC time>/ with BENCH_DNS_TLS=1; git-ignored).
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
  BENCH_REGISTER_CONCURRENCY BENCH_PORT_BASE BENCH_OUTPUT BENCH_WRITE BENCH_DNS_TLS BENCH_TLS_MODES
  BENCH_TLS_CONNECTIONS BENCH_DOH_CLIENT BENCH_DOH_METHOD)
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
BENCH_DNS_TLS=${BENCH_DNS_TLS:-0}
BENCH_TLS_MODES=${BENCH_TLS_MODES:-tcp,dot,doh}
BENCH_TLS_CONNECTIONS=${BENCH_TLS_CONNECTIONS:-4,64}
BENCH_DOH_METHOD=${BENCH_DOH_METHOD:-GET}
BENCH_DOH_CLIENT=${BENCH_DOH_CLIENT:-h2load}
CAIRN_BIN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/cairn}
TOOLS_DIR=$REPO_ROOT/bench/.tools
HICKORY_BIN=${HICKORY_BIN:-$TOOLS_DIR/bin/hickory-dns}
HICKORY_VERSION=${HICKORY_VERSION:-0.26.3}

require_uint BENCH_SERVICES BENCH_INSTANCES_PER_SERVICE BENCH_QUERIES BENCH_DURATION BENCH_RUNS \
  BENCH_WARMUP BENCH_CLIENTS BENCH_OUTSTANDING BENCH_CHURN_RATE BENCH_SERVER_CPU BENCH_CLIENT_CPU \
  BENCH_REGISTER_CONCURRENCY BENCH_PORT_BASE
require_flag BENCH_WRITE BENCH_CHURN BENCH_BY_TYPE BENCH_DNS_TLS
[[ $BENCH_LATENCY == half ]] || is_uint "$BENCH_LATENCY" ||
  die "BENCH_LATENCY must be 'half', a QPS number or 0, got '$BENCH_LATENCY'"
((BENCH_SERVICES >= 1 && BENCH_INSTANCES_PER_SERVICE >= 1 && BENCH_QUERIES >= 1)) ||
  die "BENCH_SERVICES, BENCH_INSTANCES_PER_SERVICE and BENCH_QUERIES must be at least 1"
((BENCH_DURATION >= 1 && BENCH_RUNS >= 1 && BENCH_CLIENTS >= 1 && BENCH_OUTSTANDING >= 1)) ||
  die "BENCH_DURATION, BENCH_RUNS, BENCH_CLIENTS and BENCH_OUTSTANDING must be at least 1"
((BENCH_CHURN_RATE >= 1 && BENCH_REGISTER_CONCURRENCY >= 1)) ||
  die "BENCH_CHURN_RATE and BENCH_REGISTER_CONCURRENCY must be at least 1"
# Stay below Linux's ephemeral range (32768+) so no outgoing socket can take our ports.
((BENCH_PORT_BASE >= 1024 && BENCH_PORT_BASE + 10 < 32768)) ||
  die "BENCH_PORT_BASE must be between 1024 and 32757"
BYTYPE_DURATION=$((BENCH_DURATION < 5 ? BENCH_DURATION : 5))
NCPU=$(nproc)
((BENCH_SERVER_CPU < NCPU && BENCH_CLIENT_CPU < NCPU)) ||
  die "BENCH_SERVER_CPU and BENCH_CLIENT_CPU must be below the CPU count ($NCPU)"
((BENCH_SERVER_CPU != BENCH_CLIENT_CPU)) ||
  log "warning: server and dnsperf share CPU $BENCH_SERVER_CPU; the figures will mix both"

# The servers of this run: Knot and hickory-dns beside Cairn over UDP, unbound over TCP and TLS.
if ((BENCH_DNS_TLS)); then KNOWN=(cairn unbound); else KNOWN=(cairn knot hickory); fi
SYSTEMS=()
if [[ -z $BENCH_ONLY ]]; then
  SYSTEMS=("${KNOWN[@]}")
else
  IFS=', ' read -r -a only <<<"$BENCH_ONLY"
  for s in "${only[@]}"; do
    [[ " ${KNOWN[*]} " == *" $s "* ]] ||
      die "BENCH_ONLY takes $(IFS=,; echo "${KNOWN[*]}") with BENCH_DNS_TLS=$BENCH_DNS_TLS, got '$s'"
    [[ " ${SYSTEMS[*]-} " == *" $s "* ]] || SYSTEMS+=("$s")
  done
fi
TLS_MODES=() TLS_CONNECTIONS=()
if ((BENCH_DNS_TLS)); then
  IFS=', ' read -r -a modes <<<"$BENCH_TLS_MODES"
  for m in "${modes[@]}"; do
    [[ $m == tcp || $m == dot || $m == doh ]] || die "BENCH_TLS_MODES takes tcp, dot and/or doh, got '$m'"
    [[ " ${TLS_MODES[*]-} " == *" $m "* ]] || TLS_MODES+=("$m")
  done
  IFS=', ' read -r -a TLS_CONNECTIONS <<<"$BENCH_TLS_CONNECTIONS"
  for c in "${TLS_CONNECTIONS[@]}"; do
    is_uint "$c" && ((c >= 1)) || die "BENCH_TLS_CONNECTIONS takes whole numbers of at least 1, got '$c'"
  done
  ((${#TLS_MODES[@]} > 0 && ${#TLS_CONNECTIONS[@]} > 0)) ||
    die "BENCH_TLS_MODES and BENCH_TLS_CONNECTIONS must name at least one each"
  [[ $BENCH_DOH_METHOD == GET || $BENCH_DOH_METHOD == POST ]] ||
    die "BENCH_DOH_METHOD must be GET or POST, got '$BENCH_DOH_METHOD'"
  [[ $BENCH_DOH_CLIENT == h2load || $BENCH_DOH_CLIENT == dnsperf ]] ||
    die "BENCH_DOH_CLIENT must be h2load or dnsperf, got '$BENCH_DOH_CLIENT'"
fi
((${#SYSTEMS[@]} > 0)) || die "BENCH_ONLY selects no server"
wants() { [[ " ${SYSTEMS[*]} " == *" $1 "* ]]; }

TOOL=(python3 "$SCRIPT_DIR/dns_tool.py")
DATA_ARGS=(--services "$BENCH_SERVICES" --instances "$BENCH_INSTANCES_PER_SERVICE" --tags "$BENCH_TAGS")

# Ports: Cairn HTTP base+1, RPC base+2, DNS base+3; Knot base+4; hickory-dns base+5; Cairn DNS
# over TLS base+6, over HTTPS base+7; unbound plain (UDP and TCP) base+8, TLS base+9, HTTPS base+10.
CAIRN_HTTP_PORT=$((BENCH_PORT_BASE + 1))
CAIRN_RPC_PORT=$((BENCH_PORT_BASE + 2))
CAIRN_DNS_PORT=$((BENCH_PORT_BASE + 3))
KNOT_PORT=$((BENCH_PORT_BASE + 4))
HICKORY_PORT=$((BENCH_PORT_BASE + 5))
CAIRN_DOT_PORT=$((BENCH_PORT_BASE + 6))
CAIRN_DOH_PORT=$((BENCH_PORT_BASE + 7))
UNBOUND_PORT=$((BENCH_PORT_BASE + 8))
UNBOUND_DOT_PORT=$((BENCH_PORT_BASE + 9))
UNBOUND_DOH_PORT=$((BENCH_PORT_BASE + 10))
CAIRN_URL=http://127.0.0.1:$CAIRN_HTTP_PORT
declare -A DNS_PORT=([cairn]=$CAIRN_DNS_PORT [knot]=$KNOT_PORT [hickory]=$HICKORY_PORT [unbound]=$UNBOUND_PORT)
declare -A DOT_PORT=([cairn]=$CAIRN_DOT_PORT [unbound]=$UNBOUND_DOT_PORT)
declare -A DOH_PORT=([cairn]=$CAIRN_DOH_PORT [unbound]=$UNBOUND_DOH_PORT)
# port_of SERVER MODE: where SERVER takes queries over MODE (udp and tcp share a port).
port_of() {
  case $2 in
    dot) echo "${DOT_PORT[$1]}" ;;
    doh) echo "${DOH_PORT[$1]}" ;;
    *) echo "${DNS_PORT[$1]}" ;;
  esac
}

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
  wants unbound && pkgs+=(unbound=unbound unbound-checkconf=unbound)
  if ((BENCH_DNS_TLS)) && [[ $BENCH_DOH_CLIENT == h2load && ",$BENCH_TLS_MODES," == *,doh,* ]]; then
    pkgs+=(h2load=nghttp2-client)
  fi
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

# One node certificate from `cairn tls` (its names include localhost and 127.0.0.1) serves TLS for
# both Cairn and unbound, so both present the same key and chain.
NODE_CERT="" NODE_KEY="" CERT_KEY_TYPE=""
make_pki() {
  local pki=$WORK_DIR/pki
  pki_run tls ca create --dir "$pki"
  pki_run tls cert create --node 1 --dir "$pki" --ca "$pki/cairn-ca.pem" --ca-key "$pki/cairn-ca-key.pem"
  NODE_CERT=$pki/node-1.pem NODE_KEY=$pki/node-1-key.pem
  [[ -s $NODE_CERT && -s $NODE_KEY ]] || die "cairn tls made no $NODE_CERT / $NODE_KEY; see $LOG_DIR/pki.log"
  CERT_KEY_TYPE=$(openssl x509 -in "$NODE_CERT" -noout -text 2>/dev/null | awk '
    /Public Key Algorithm:/ { a = $NF; sub(/^id-ecPublicKey$/, "ECDSA", a) }
    /NIST CURVE:/ { c = $NF }
    END { print (a ? a (c ? " " c : "") : "unknown key type") }')
  log "certificates in $pki ($CERT_KEY_TYPE; log: $LOG_DIR/pki.log)"
}
pki_run() {
  printf '$ cairn %s\n' "$*" >>"$LOG_DIR/pki.log"
  "$CAIRN_BIN" "$@" >>"$LOG_DIR/pki.log" 2>&1 || die "cairn $* failed; see $LOG_DIR/pki.log"
}

start_unbound() {
  local dir=$WORK_DIR/unbound slots=1024 c
  mkdir -p "$dir"
  # The zone file as unbound local data: absolute owner names, the zone's TTL on every record.
  awk '
    /^\$/ { next }
    { owner = ($1 == "@") ? "cairn." : $1 ".cairn."; $1 = ""
      printf "    local-data: \"%s 5 IN%s\"\n", owner, $0 }' "$DATA_DIR/cairn.zone" >"$dir/zone.conf"
  # One thread: one core, like Cairn. Enough TCP slots for every dnsperf connection (the default
  # is 10 per thread); idle connections closed after 10 s, as Cairn's. Every name is in the
  # static local zone, which unbound answers before any cache lookup or module.
  for c in "${TLS_CONNECTIONS[@]}"; do ((c + 64 > slots)) && slots=$((c + 64)); done
  {
    echo "server:"
    printf '    %s
' "interface: 127.0.0.1@$UNBOUND_PORT" "interface: 127.0.0.1@$UNBOUND_DOT_PORT" \
      "interface: 127.0.0.1@$UNBOUND_DOH_PORT" "tls-port: $UNBOUND_DOT_PORT" \
      "https-port: $UNBOUND_DOH_PORT" 'http-endpoint: "/dns-query"' \
      "tls-service-key: \"$NODE_KEY\"" "tls-service-pem: \"$NODE_CERT\"" \
      "num-threads: 1" "incoming-num-tcp: $slots" "tcp-idle-timeout: 10000" "do-ip6: no" \
      "do-daemonize: no" "use-syslog: no" 'logfile: ""' "verbosity: 1" 'username: ""' \
      'chroot: ""' 'pidfile: ""' "directory: \"$dir\"" "access-control: 127.0.0.0/8 allow" \
      'module-config: "iterator"' 'local-zone: "cairn." static' "include: \"$dir/zone.conf\""
    printf '%s
' "remote-control:" "    control-enable: no"
  } >"$dir/unbound.conf"
  cp "$dir/unbound.conf" "$RESULTS_DIR/unbound.conf"
  unbound-checkconf "$dir/unbound.conf" >"$LOG_DIR/unbound-checkconf.log" 2>&1 ||
    die "unbound rejected its config: $(tail -n 5 "$LOG_DIR/unbound-checkconf.log")"
  check_ports_free "$UNBOUND_PORT" "$UNBOUND_DOT_PORT" "$UNBOUND_DOH_PORT"
  taskset -c "$BENCH_SERVER_CPU" unbound -d -c "$dir/unbound.conf" >"$LOG_DIR/unbound.log" 2>&1 &
  SERVER_PID[unbound]=$!
  log "unbound started (pid ${SERVER_PID[unbound]}) on 127.0.0.1:$UNBOUND_PORT (TLS $UNBOUND_DOT_PORT, HTTPS $UNBOUND_DOH_PORT)"
  wait_dns unbound "$UNBOUND_PORT" 300
}

# The CLI below is the contract agreed for `cairn agent` (lib.sh waits for its output line and
# /v1/ready); if the binary changes them, adapt here and in lib.sh.
start_cairn() {
  local dir=$WORK_DIR/cairn tls=() listening=""
  mkdir -p "$dir"
  check_ports_free "$CAIRN_HTTP_PORT" "$CAIRN_RPC_PORT" "$CAIRN_DNS_PORT"
  if ((BENCH_DNS_TLS)); then
    check_ports_free "$CAIRN_DOT_PORT" "$CAIRN_DOH_PORT"
    tls=(--tls-cert "$NODE_CERT" --tls-key "$NODE_KEY" --dns-tls-addr "127.0.0.1:$CAIRN_DOT_PORT"
      --dns-https-addr "127.0.0.1:$CAIRN_DOH_PORT")
    listening=" dot=127.0.0.1:$CAIRN_DOT_PORT doh=127.0.0.1:$CAIRN_DOH_PORT"
  fi
  taskset -c "$BENCH_SERVER_CPU" "$CAIRN_BIN" agent --node-id 1 --data-dir "$dir" --bootstrap \
    --http-addr "127.0.0.1:$CAIRN_HTTP_PORT" --rpc-addr "127.0.0.1:$CAIRN_RPC_PORT" \
    --dns-addr "127.0.0.1:$CAIRN_DNS_PORT" ${tls[@]+"${tls[@]}"} >"$LOG_DIR/cairn.out" 2>"$LOG_DIR/cairn.log" &
  SERVER_PID[cairn]=$!
  log "cairn started (pid ${SERVER_PID[cairn]}), http $CAIRN_URL, dns 127.0.0.1:$CAIRN_DNS_PORT$listening"

  wait_cairn_listening cairn "${SERVER_PID[cairn]}" "$LOG_DIR/cairn.out" "$LOG_DIR/cairn.log" \
    $((SECONDS + 30)) 0.2 1 "$CAIRN_HTTP_PORT" "$CAIRN_DNS_PORT" "$CAIRN_RPC_PORT" "" "$listening"
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
# churn client (CHURN_PID) is stopped after dnsperf and its summary attached. The transport is
# PERF_MODE (udp, tcp, dot, doh) over PERF_CLIENTS sockets or connections.
# Besides dnsperf's own figures it records how busy both CPUs were and the CPU time the server
# process used, which gives the server's CPU cost per query even when dnsperf is the bottleneck.
PERF_MODE=udp
PERF_CLIENTS=$BENCH_CLIENTS
run_dnsperf() {
  local server=$1 kind=$2 run=$3 duration=$4 qps=${5:-0} qtype=${6:-} port
  local out=$RESULTS_DIR/$server-$kind${qtype:+-$qtype}-$run.txt verbose="" runs_file=$RESULTS_DIR/runs.jsonl
  local pid=${SERVER_PID[$server]} queries=$DATA_DIR/queries${qtype:+-$qtype}.txt
  port=$(port_of "$server" "$PERF_MODE")
  [[ $PERF_MODE == udp ]] || out=$RESULTS_DIR/$server-$kind-$PERF_MODE-c$PERF_CLIENTS-$run.txt
  local args=(-m "$PERF_MODE" -s 127.0.0.1 -p "$port" -d "$queries" -l "$duration"
    -c "$PERF_CLIENTS" -q "$BENCH_OUTSTANDING" -t 1 -e) client=dnsperf format=dnsperf
  # dnsperf connects to -s/-p; the URI gives the HTTP/2 :authority and :path.
  [[ $PERF_MODE == doh ]] &&
    args+=(-O "doh-uri=https://localhost:$port/dns-query" -O "doh-method=$BENCH_DOH_METHOD")
  if [[ $PERF_MODE == doh && $BENCH_DOH_CLIENT == h2load ]]; then
    # The same queries as GET URIs (made once per server), the same queries in flight in all:
    # BENCH_OUTSTANDING shared among the connections as HTTP/2 streams.
    client=h2load format=h2load
    [[ -s $WORK_DIR/uris-$server.txt ]] ||
      "${TOOL[@]}" doh-uris --queries "$queries" --url "https://127.0.0.1:$port/dns-query" \
        --out "$WORK_DIR/uris-$server.txt"
    args=(-i "$WORK_DIR/uris-$server.txt" -D "$duration" -c "$PERF_CLIENTS"
      -m $(((BENCH_OUTSTANDING + PERF_CLIENTS - 1) / PERF_CLIENTS)) -t 1)
  fi
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
      "$client" "${args[@]}" >"$out" 2>&1; } 2>"$times" || rc=$?
  fi
  t1=$(cpu_ticks "$pid")
  read -r real user sys <"$times" || true
  read -r -a s1 < <(cpu_busy "$BENCH_SERVER_CPU")
  read -r -a c1 < <(cpu_busy "$BENCH_CLIENT_CPU")
  if ((rc != 0)); then
    tail -n 20 "$out" >&2
    die "$client failed (exit $rc) for $server $kind run $run"
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
    --run "$run" --clients "$PERF_CLIENTS" --mode "$PERF_MODE" --format "$format" --target-qps "$qps" \
    --mix "$DATA_DIR/queries.json" \
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

# bench_server_tls SERVER: per connection count and transport, a warm-up and the peak runs. The
# transports alternate within a connection count, so a drift of the machine over the run hits
# them alike.
bench_server_tls() {
  local server=$1 run c
  for c in "${TLS_CONNECTIONS[@]}"; do
    PERF_CLIENTS=$c
    for PERF_MODE in "${TLS_MODES[@]}"; do
      if ((BENCH_WARMUP > 0)); then
        log "$server: $PERF_MODE, $c connections: warm-up ${BENCH_WARMUP} s (not recorded)"
        run_dnsperf "$server" warmup 0 "$BENCH_WARMUP"
      fi
    done
    for ((run = 1; run <= BENCH_RUNS; run++)); do
      for PERF_MODE in "${TLS_MODES[@]}"; do
        run_dnsperf "$server" peak "$run" "$BENCH_DURATION"
      done
    done
  done
  PERF_MODE=udp PERF_CLIENTS=$BENCH_CLIENTS
}

# --- Main. ---
ensure_tools
# With BENCH_DNS_TLS=1 the binary also makes the certificates, whoever is measured.
if wants cairn || ((BENCH_DNS_TLS)); then ensure_cairn_bin; fi
wants hickory && ensure_hickory_bin
((BENCH_DNS_TLS)) && ensure_packages openssl=openssl

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$REPO_ROOT/bench/results/dns-$STAMP
((BENCH_DNS_TLS)) && RESULTS_DIR=$REPO_ROOT/bench/results/dns-tls-$STAMP
LOG_DIR=$RESULTS_DIR/logs
mkdir -p "$LOG_DIR"
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cairn-dns-bench.XXXXXX")
DATA_DIR=$WORK_DIR/data
ulimit -n 65536 2>/dev/null || true

LOAD_AT_START=$(load_average)
warn_if_loaded "$LOAD_AT_START"
log "results in $RESULTS_DIR; servers: ${SYSTEMS[*]}; $BENCH_RUNS runs x ${BENCH_DURATION} s"
((BENCH_DNS_TLS)) && make_pki

"${TOOL[@]}" dataset "${DATA_ARGS[@]}" --out-dir "$DATA_DIR" --queries "$BENCH_QUERIES" \
  --mix "$BENCH_MIX" | tee "$RESULTS_DIR/dataset.txt" >&2
cp "$DATA_DIR/queries.json" "$RESULTS_DIR/"

# All servers come up and are checked first, so a wrong answer fails the run before any time is
# spent measuring. Idle servers use no CPU; each is stopped once measured (Cairn first, as it is
# the only one with background work, so the others are measured with nothing else running).
verify_args=()
for s in "${SYSTEMS[@]}"; do
  "start_$s"
  if ((BENCH_DNS_TLS)); then
    # Over each transport measured: dig +tcp, +tls and +https (POST).
    for m in "${TLS_MODES[@]}"; do verify_args+=(--server "$s/$m=$(port_of "$s" "$m")"); done
  else
    verify_args+=(--server "$s=${DNS_PORT[$s]}")
  fi
done
log "checking answers against the data set"
# hickory-server 0.26 follows only the first record of an SRV RRset for additional-section glue
# (store/in_memory `maybe_next_name` takes `records_without_rrsigs().next()`), so its SRV answers
# carry one target address instead of all of them. That is hickory's behaviour, not a setup
# mistake: accepted (any other difference still fails the run) and stated in the report.
# unbound's local data adds no glue at all: likewise accepted for unbound only, and stated.
"${TOOL[@]}" verify "${DATA_ARGS[@]}" "${verify_args[@]}" --sample 6 --partial-additional hickory \
  --no-additional unbound \
  --notes-out "$RESULTS_DIR/notes.txt" | tee "$RESULTS_DIR/verify.txt" >&2 ||
  die "the servers' answers differ from the data set (see above); not measuring"
if wants unbound; then
  echo "unbound answers from its local zone without the SRV targets' addresses in the additional section (local-data adds no glue), so its SRV responses are smaller than Cairn's" >>"$RESULTS_DIR/notes.txt"
fi
if ((BENCH_DNS_TLS)) && [[ $BENCH_DOH_CLIENT == h2load && " ${TLS_MODES[*]} " == *" doh "* ]]; then
  echo "DoH is loaded with h2load, not dnsperf -m doh: dnsperf 2.10's DoH client takes at most one response per read and then waits for the socket to become readable again (src/net_doh.c, \`have_more\` is a TODO; dnsperf issue 240), so a server that puts several HTTP/2 responses into one write, as hyper does for Cairn, stalls it until its 1 s time-out (in a 2 s trial here at 4 connections: Cairn 33 QPS with 75% of the queries lost, unbound 33,313 QPS; BENCH_DOH_CLIENT=dnsperf repeats it). h2load sends the same queries as GET requests (base64url, ID 0, EDNS0) and counts 2xx responses; the DNS answers over DoH were checked with dig +https before the runs" >>"$RESULTS_DIR/notes.txt"
fi
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
  if ((BENCH_DNS_TLS)); then bench_server_tls "$s"; else bench_server "$s"; fi
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
if ((BENCH_DNS_TLS)); then
  unbound_version=n/a h2load_version=n/a
  doh_cmd="dnsperf -m tcp|dot|doh -s 127.0.0.1 -p PORT -d queries.txt -l $BENCH_DURATION -c CONNECTIONS -q $BENCH_OUTSTANDING -t 1 -e [-O doh-uri=https://localhost:PORT/dns-query -O doh-method=$BENCH_DOH_METHOD]"
  if [[ $BENCH_DOH_CLIENT == h2load ]]; then
    h2load_version=$(h2load --version 2>/dev/null | awk '{ print $NF; exit }')
    doh_cmd="dnsperf -m tcp|dot -s 127.0.0.1 -p PORT -d queries.txt -l $BENCH_DURATION -c CONNECTIONS -q $BENCH_OUTSTANDING -t 1 -e\`; DoH: \`h2load -i uris.txt -D $BENCH_DURATION -c CONNECTIONS -m ⌈$BENCH_OUTSTANDING/CONNECTIONS⌉ -t 1"
  fi
  wants unbound && unbound_version=$(unbound -V 2>/dev/null | awk '/^Version/ { print $2; exit }')
  "${TOOL[@]}" tls-report --runs "$RESULTS_DIR/runs.jsonl" ${output_args[@]+"${output_args[@]}"} \
    --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --meta "nproc=$NCPU" \
    --meta "cpu=$(cpu_model)" \
    --meta "kernel=$(uname -r)" \
    --meta "os=$(os_name)" \
    --meta "load=$LOAD_AT_START" \
    --meta "cairn_commit=$cairn_commit" \
    --meta "unbound_version=$unbound_version" \
    --meta "openssl_version=$(openssl version 2>/dev/null | awk '{ print $2 }')" \
    --meta "cert=$CERT_KEY_TYPE" \
    --meta "dnsperf_version=$(dnsperf -h 2>&1 | awk '/^Version/ { print $2 }')" \
    --meta "server_cpu=$BENCH_SERVER_CPU" \
    --meta "client_cpu=$BENCH_CLIENT_CPU" \
    --meta "dataset=$(cat "$RESULTS_DIR/dataset.txt"); tags ${BENCH_TAGS}, TTL 5, every instance passing" \
    --meta "mix=weights ${BENCH_MIX} for A / SRV / tag A / NXDOMAIN, as in the UDP section; the same file for every server and transport" \
    --meta "dnsperf_cmd=$doh_cmd" \
    --meta "doh_client=$BENCH_DOH_CLIENT" \
    --meta "h2load_version=$h2load_version" \
    --meta "duration=$BENCH_DURATION" \
    --meta "runs=$BENCH_RUNS" \
    --meta "warmup=$BENCH_WARMUP" \
    --meta "notes=$(cat "$RESULTS_DIR/notes.txt" 2>/dev/null)" \
    --meta "command=$COMMAND_LINE" \
    --meta "results_dir=${RESULTS_DIR#"$REPO_ROOT"/}/"
  exit 0
fi
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
