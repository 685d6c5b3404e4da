#!/usr/bin/env bash
# Health checks: what 10,000 HTTP checks cost the agent that runs them, and how long a failed
# target takes to leave the DNS answers of every node. Everything runs on this machine's
# loopback interface against local HTTP targets (bench/checks_tool.py target): one that keeps
# connections alive between requests, as HTTP/1.1 servers do, and one that closes each connection
# after its response, so every probe pays a TCP connect.
#
#   bench/checks.sh [--help]
#   bench/checks.sh --report-only bench/results/checks-<time>   re-render a finished run's section
#
# Phase 1, agent cost: for each kind of target in BENCH_TARGETS, BENCH_RUNS runs of: a fresh
#   single-node cluster (--bootstrap), so that node runs every check; BENCH_CHECKS instances with
#   one HTTP check each, every BENCH_INTERVAL. Once all are passing (and BENCH_SETTLE more
#   seconds), the agent's CPU (utime+stime from /proc) and RSS are sampled for
#   BENCH_CPU_SECONDS; the target's CPU is reported separately. The report gives the medians of
#   the runs. Goal: the agent's CPU against the keep-alive target <= 8% of one core.
# Phase 2, failure detection: a three-node cluster (--peers) with BENCH_DETECT_CHECKS services of
#   one instance each; BENCH_DETECT_SAMPLES instances are switched to failing one at a time, and
#   each is timed from the switch until its A answer is empty on all three nodes (polled every
#   BENCH_POLL_MS). Goal: p99 <= fall x interval + 100 ms.
#
# Before starting it waits (up to BENCH_WAIT_MAX seconds) while another benchmark runs
# (processes named in BENCH_WAIT_FOR, or bench/dns.sh / bench/registrations.sh), and it notes in
# the report if it had to measure under load.
#
# Environment (defaults in brackets):
#   CAIRN_BIN                cairn binary [${CARGO_TARGET_DIR:-<repo>/target}/release/cairn]
#   BENCH_TARGETS            kinds of target in phase 1, in order: keep-alive, close [keep-alive close]
#   BENCH_RUNS               runs per kind of target in phase 1 [3]
#   BENCH_DETECT_TARGET      kind of target in phase 2 [keep-alive]
#   BENCH_CHECKS             checks on the single node in phase 1 [10000]
#   BENCH_PER_SERVICE        instances per service in phase 1 [100]
#   BENCH_INTERVAL           check interval in phase 1 [10s]
#   BENCH_TIMEOUT            check time-out in phase 1 [2s]
#   BENCH_FALL               fall in phase 1 [3]
#   BENCH_SETTLE             seconds to wait after every instance passes, before measuring [5]
#   BENCH_CPU_SECONDS        length of the CPU/RSS window [60]
#   BENCH_DETECT_CHECKS      checks (= services) in the phase-2 cluster [1000]
#   BENCH_DETECT_INTERVAL    check interval in phase 2 [1s]
#   BENCH_DETECT_TIMEOUT     check time-out in phase 2 [1s]
#   BENCH_DETECT_FALL        fall in phase 2 [2]
#   BENCH_DETECT_SAMPLES     instances switched to failing in phase 2 [50]
#   BENCH_POLL_MS            DNS poll period per node in phase 2 [10]
#   BENCH_REG_CONNECTIONS    concurrent connections used to register [64]
#   BENCH_PORT_BASE          first of the loopback ports used (base+1 .. base+33) [23000]
#   BENCH_CAIRN_LOG          the agents' log filter (CAIRN_LOG) [warn]
#   BENCH_WAIT_FOR           process names that mean another benchmark runs ["dnsperf knotd wrk etcd hickory-dns"]
#   BENCH_WAIT_MAX           longest wait for them, in seconds [1200]
#   BENCH_OUTPUT             Markdown file whose checks section is replaced [<repo>/BENCHMARKS.md]
#   BENCH_WRITE              0 = only print the section, leave BENCH_OUTPUT alone [1]
#
# Raw output and the agents' logs stay in bench/results/checks-<UTC time>/ (git-ignored).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
BENCH_LOG_TAG=checks
# log, die, usage, settings checks, process cleanup (exit trap), ports, Cairn start-up waits,
# waiting for other benchmarks.
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

KNOBS=(CAIRN_BIN BENCH_TARGETS BENCH_RUNS BENCH_DETECT_TARGET BENCH_CHECKS BENCH_PER_SERVICE BENCH_INTERVAL BENCH_TIMEOUT BENCH_FALL BENCH_SETTLE
  BENCH_CPU_SECONDS BENCH_DETECT_CHECKS BENCH_DETECT_INTERVAL BENCH_DETECT_TIMEOUT BENCH_DETECT_FALL
  BENCH_DETECT_SAMPLES BENCH_POLL_MS BENCH_REG_CONNECTIONS BENCH_PORT_BASE BENCH_CAIRN_LOG
  BENCH_WAIT_FOR BENCH_WAIT_MAX BENCH_OUTPUT BENCH_WRITE)
capture_command_line checks.sh "${KNOBS[@]}" -- "$@"

REPORT_ONLY=""
while (($# > 0)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --report-only)
      (($# >= 2)) || die "--report-only needs a results directory"
      REPORT_ONLY=$2
      shift
      ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

# --- Settings. ---
BENCH_TARGETS=${BENCH_TARGETS:-keep-alive close}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_DETECT_TARGET=${BENCH_DETECT_TARGET:-keep-alive}
BENCH_CHECKS=${BENCH_CHECKS:-10000}
BENCH_PER_SERVICE=${BENCH_PER_SERVICE:-100}
BENCH_INTERVAL=${BENCH_INTERVAL:-10s}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-2s}
BENCH_FALL=${BENCH_FALL:-3}
BENCH_SETTLE=${BENCH_SETTLE:-5}
BENCH_CPU_SECONDS=${BENCH_CPU_SECONDS:-60}
BENCH_DETECT_CHECKS=${BENCH_DETECT_CHECKS:-1000}
BENCH_DETECT_INTERVAL=${BENCH_DETECT_INTERVAL:-1s}
BENCH_DETECT_TIMEOUT=${BENCH_DETECT_TIMEOUT:-1s}
BENCH_DETECT_FALL=${BENCH_DETECT_FALL:-2}
BENCH_DETECT_SAMPLES=${BENCH_DETECT_SAMPLES:-50}
BENCH_POLL_MS=${BENCH_POLL_MS:-10}
BENCH_REG_CONNECTIONS=${BENCH_REG_CONNECTIONS:-64}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-23000}
BENCH_CAIRN_LOG=${BENCH_CAIRN_LOG:-warn}
BENCH_WAIT_FOR=${BENCH_WAIT_FOR:-dnsperf knotd wrk etcd hickory-dns}
BENCH_WAIT_MAX=${BENCH_WAIT_MAX:-1200}
BENCH_OUTPUT=${BENCH_OUTPUT:-$REPO_ROOT/BENCHMARKS.md}
BENCH_WRITE=${BENCH_WRITE:-1}
CAIRN_BIN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/cairn}

# dur_ms DURATION: milliseconds of "250ms", "10s" or "2m" (whole numbers only).
dur_ms() {
  case $1 in
    *ms) is_uint "${1%ms}" && echo "${1%ms}" ;;
    *s) is_uint "${1%s}" && echo $((${1%s} * 1000)) ;;
    *m) is_uint "${1%m}" && echo $((${1%m} * 60000)) ;;
    *) return 1 ;;
  esac
}
require_uint BENCH_RUNS BENCH_CHECKS BENCH_PER_SERVICE BENCH_FALL BENCH_SETTLE BENCH_CPU_SECONDS BENCH_DETECT_CHECKS \
  BENCH_DETECT_FALL BENCH_DETECT_SAMPLES BENCH_POLL_MS BENCH_REG_CONNECTIONS BENCH_PORT_BASE BENCH_WAIT_MAX
for var in BENCH_INTERVAL BENCH_TIMEOUT BENCH_DETECT_INTERVAL BENCH_DETECT_TIMEOUT; do
  dur_ms "${!var}" >/dev/null || die "$var must be a duration like 500ms, 10s or 2m, got '${!var}'"
done
INTERVAL_MS=$(dur_ms "$BENCH_INTERVAL")
DETECT_INTERVAL_MS=$(dur_ms "$BENCH_DETECT_INTERVAL")
((BENCH_CHECKS >= 1 && BENCH_PER_SERVICE >= 1 && BENCH_CPU_SECONDS >= 2)) ||
  die "BENCH_CHECKS and BENCH_PER_SERVICE must be at least 1, BENCH_CPU_SECONDS at least 2"
((BENCH_DETECT_CHECKS >= 1 && BENCH_DETECT_SAMPLES >= 1 && BENCH_DETECT_SAMPLES <= BENCH_DETECT_CHECKS)) ||
  die "need 1 <= BENCH_DETECT_SAMPLES <= BENCH_DETECT_CHECKS"
((BENCH_FALL >= 1 && BENCH_DETECT_FALL >= 1 && BENCH_POLL_MS >= 1 && BENCH_REG_CONNECTIONS >= 1)) ||
  die "fall, BENCH_POLL_MS and BENCH_REG_CONNECTIONS must be at least 1"
((BENCH_PORT_BASE >= 1024 && BENCH_PORT_BASE + 33 < 32768)) || die "BENCH_PORT_BASE must be between 1024 and 32734"
require_flag BENCH_WRITE
read -r -a TARGET_KINDS <<<"$BENCH_TARGETS"
((${#TARGET_KINDS[@]} >= 1 && BENCH_RUNS >= 1)) || die "BENCH_TARGETS needs a kind of target and BENCH_RUNS must be at least 1"
for kind in "${TARGET_KINDS[@]}" "$BENCH_DETECT_TARGET"; do
  [[ $kind == keep-alive || $kind == close ]] || die "a kind of target is keep-alive or close, got '$kind'"
done

# Ports: targets base+1 (keep-alive) and base+2 (close); the phase-1 node http/rpc/dns base+10/20/30; the phase-2 nodes
# base+11..13 / base+21..23 / base+31..33.
declare -A TARGET_PORT=([keep-alive]=$((BENCH_PORT_BASE + 1)) [close]=$((BENCH_PORT_BASE + 2)))
declare -A TARGET_PID=()
SOLO_HTTP=$((BENCH_PORT_BASE + 10))
SOLO_RPC=$((BENCH_PORT_BASE + 20))
SOLO_DNS=$((BENCH_PORT_BASE + 30))
HTTP_PORTS=($((BENCH_PORT_BASE + 11)) $((BENCH_PORT_BASE + 12)) $((BENCH_PORT_BASE + 13)))
RPC_PORTS=($((BENCH_PORT_BASE + 21)) $((BENCH_PORT_BASE + 22)) $((BENCH_PORT_BASE + 23)))
DNS_PORTS=($((BENCH_PORT_BASE + 31)) $((BENCH_PORT_BASE + 32)) $((BENCH_PORT_BASE + 33)))

# The targets are on loopback, which health checks may not reach unless a flag allows it.
CHECK_ALLOW=127.0.0.0/8

# --- Process bookkeeping: only PIDs started here are ever signalled. ---
CAIRN_PIDS=()
# For lib.sh's exit trap: what is still running.
owned_pids() { echo ${CAIRN_PIDS[@]+"${CAIRN_PIDS[@]}"} ${TARGET_PID[@]+"${TARGET_PID[@]}"}; }

# --- Tools. ---
ensure_packages curl=curl python3=python3
require_cairn_bin "no cairn binary at $CAIRN_BIN; build it (cargo build --release -p cairn-node) or set CAIRN_BIN"
# The real interpreter (not a pyenv shim), so the target's PID is the process that does the work.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
TOOL=("$PYTHON" "$SCRIPT_DIR/checks_tool.py")

# report DIR [--meta K=V ...]: renders DIR's section (and writes BENCH_OUTPUT unless BENCH_WRITE=0).
# The meta data is kept in DIR/meta.json, so --report-only can re-render a run later.
report() {
  local dir=$1 output_args=()
  shift
  ((BENCH_WRITE)) && output_args=(--output "$BENCH_OUTPUT")
  local cpu_args=() f
  # cpu.json: a run of the script before it measured several runs per kind of target.
  for f in "$dir"/cpu.json "$dir"/cpu-*.json; do [[ -e $f ]] && cpu_args+=(--cpu "$f"); done
  "${TOOL[@]}" report ${cpu_args[@]+"${cpu_args[@]}"} --reg "$dir/register-solo.json" \
    --detect "$dir/detect.jsonl" --detect-reg "$dir/register-cluster.json" \
    --section-out "$dir/section.md" --meta-file "$dir/meta.json" ${output_args[@]+"${output_args[@]}"} "$@"
}
if [[ -n $REPORT_ONLY ]]; then
  [[ -f $REPORT_ONLY/meta.json ]] || die "$REPORT_ONLY/meta.json not found: not a finished bench/checks.sh run"
  report "$REPORT_ONLY"
  exit 0
fi

# --- Other benchmarks on this machine (lib.sh's wait_for_quiet and note_load). ---
OTHER_SCRIPTS='bench/(dns|registrations)\.sh'

# --- Cairn. ---
# wait_node ID PID HTTP DNS RPC OUT LOG: the node printed its listening line and is ready.
wait_node() {
  local id=$1 pid=$2 http=$3 dns=$4 rpc=$5 out=$6 errlog=$7
  wait_cairn_listening "cairn$id" "$pid" "$out" "$errlog" $((SECONDS + 30)) 0.2 "$id" "$http" "$dns" "$rpc"
  wait_cairn_ready "cairn$id" "$pid" "$errlog" $((SECONDS + 60)) 0.2 "$http"
}

# leader_http: the HTTP port of the phase-2 leader, per /v1/ready on the nodes.
leader_http() {
  local deadline=$((SECONDS + 30)) i leader
  while ((SECONDS < deadline)); do
    for i in 0 1 2; do
      leader=$(curl -sf --max-time 2 "http://127.0.0.1:${HTTP_PORTS[i]}/v1/ready" |
        "$PYTHON" -c 'import json,sys; l=json.load(sys.stdin).get("leader"); print(l if isinstance(l,int) else "")' 2>/dev/null) || continue
      if [[ $leader =~ ^[123]$ ]]; then
        echo "${HTTP_PORTS[leader - 1]}"
        return 0
      fi
    done
    sleep 0.5
  done
  die "no leader known within 30 s"
}

# rss_kib PID
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# log_counts FILE...: "N warnings, M errors" over the agents' stderr (ANSI colours stripped),
# then the most common messages (numbers replaced by N), so the report says what they were.
log_counts() {
  local w e top
  w=$(cat "$@" | sed 's/\x1b\[[0-9;]*m//g' | grep -c ' WARN ' || true)
  e=$(cat "$@" | sed 's/\x1b\[[0-9;]*m//g' | grep -c ' ERROR ' || true)
  printf '%s warnings, %s errors' "$w" "$e"
  top=$(cat "$@" | sed 's/\x1b\[[0-9;]*m//g' | grep -E ' (WARN|ERROR) ' | sed -E 's/^[^ ]+ +//; s/[0-9]+/N/g; s/`//g' |
    cut -c1-110 | sort | uniq -c | sort -rn | head -n 3 | awk '{ n = $1; $1 = ""; sub(/^ /, ""); printf "%s`%s` ×%d", (NR > 1 ? ", " : ""), $0, n }')
  [[ -z $top ]] || printf ' (%s)' "$top"
}

# --- Main. ---
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$REPO_ROOT/bench/results/checks-$STAMP
LOG_DIR=$RESULTS_DIR/logs
mkdir -p "$LOG_DIR"
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cairn-checks-bench.XXXXXX")
ulimit -n 65536 2>/dev/null || true

# What the binary contains, taken before the run (the repo may move on while it runs): the newest
# commit older than the binary, and HEAD now.
bin_mtime=$(stat -c %Y "$CAIRN_BIN")
if head_commit=$(git -C "$REPO_ROOT" rev-parse --short=12 HEAD 2>/dev/null); then
  [[ -z $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] ||
    head_commit+=" with uncommitted changes"
  built_after=$(git -C "$REPO_ROOT" log -1 --format='%h (%s)' --before="@$bin_mtime" 2>/dev/null || true)
  CAIRN_BUILD="built $(date -u -d "@$bin_mtime" '+%Y-%m-%d %H:%M UTC')${built_after:+, after commit $built_after}; HEAD at the start of the run: $head_commit"
else
  CAIRN_BUILD="built $(date -u -d "@$bin_mtime" '+%Y-%m-%d %H:%M UTC'); not a git checkout"
fi

wait_for_quiet
LOAD_AT_START=$(load_average)
log "results in $RESULTS_DIR; data in $WORK_DIR; load average $LOAD_AT_START"
check_ports_free "${TARGET_PORT[@]}" "$SOLO_HTTP" "$SOLO_RPC" "$SOLO_DNS" "${HTTP_PORTS[@]}" "${RPC_PORTS[@]}" "${DNS_PORTS[@]}"

# The targets, shared by both phases (they keep per-id state, and the ids of the phases differ).
for kind in keep-alive close; do
  port=${TARGET_PORT[$kind]}
  flags=()
  [[ $kind == keep-alive ]] && flags=(--keep-alive)
  "${TOOL[@]}" target --port "$port" --max-seconds 7200 ${flags[@]+"${flags[@]}"} \
    >"$LOG_DIR/target-$kind.out" 2>"$LOG_DIR/target-$kind.log" &
  TARGET_PID[$kind]=$!
  deadline=$((SECONDS + 15))
  until grep -qs '^target listening' "$LOG_DIR/target-$kind.out"; do
    assert_alive "target ($kind)" "${TARGET_PID[$kind]}" "$LOG_DIR/target-$kind.log"
    ((SECONDS < deadline)) || die "the $kind target did not start within 15 s"
    sleep 0.1
  done
  [[ $(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health/x") == 200 ]] ||
    die "the $kind target does not answer 200 on /health/x"
  log "$kind target up (pid ${TARGET_PID[$kind]}) on 127.0.0.1:$port"
done

# --- Phase 1: one node runs every check; BENCH_RUNS fresh nodes per kind of target. ---
# solo_run KIND RUN: one measured run; writes cpu-KIND-RUN.json and register-solo.json.
solo_run() {
  local kind=$1 run=$2 port=${TARGET_PORT[$1]} tag="$1-$2"
  rm -rf "$WORK_DIR/solo"
  mkdir -p "$WORK_DIR/solo"
  CAIRN_LOG=$BENCH_CAIRN_LOG "$CAIRN_BIN" agent --node-id 1 --data-dir "$WORK_DIR/solo" --bootstrap \
    --check-allow "$CHECK_ALLOW" --http-addr "127.0.0.1:$SOLO_HTTP" --rpc-addr "127.0.0.1:$SOLO_RPC" --dns-addr "127.0.0.1:$SOLO_DNS" \
    >"$LOG_DIR/solo-$tag.out" 2>"$LOG_DIR/solo-$tag.log" &
  SOLO_PID=$!
  CAIRN_PIDS+=("$SOLO_PID")
  wait_node 1 "$SOLO_PID" "$SOLO_HTTP" "$SOLO_DNS" "$SOLO_RPC" "$LOG_DIR/solo-$tag.out" "$LOG_DIR/solo-$tag.log"
  sleep 2
  IDLE_RSS=$(rss_kib "$SOLO_PID")
  log "phase 1, $kind target, run $run: single node up (pid $SOLO_PID, RSS $((IDLE_RSS / 1024)) MiB); registering $BENCH_CHECKS checks every $BENCH_INTERVAL"
  "${TOOL[@]}" register --url "127.0.0.1:$SOLO_HTTP" --count "$BENCH_CHECKS" --per-service "$BENCH_PER_SERVICE" \
    --prefix c --target-port "$port" --interval "$BENCH_INTERVAL" --timeout "$BENCH_TIMEOUT" \
    --fall "$BENCH_FALL" --rise 1 --connections "$BENCH_REG_CONNECTIONS" --max-seconds 600 \
    --out "$RESULTS_DIR/register-solo.json" || die "registration failed; see $RESULTS_DIR/register-solo.json"
  assert_alive cairn1 "$SOLO_PID" "$LOG_DIR/solo-$tag.log"
  # First probes are spread over one interval: wait until every instance has passed once.
  "${TOOL[@]}" wait-passing --url "127.0.0.1:$SOLO_HTTP" --want "$BENCH_CHECKS" \
    --timeout $((INTERVAL_MS * 3 / 1000 + 60)) >/dev/null || die "not every instance became passing"
  log "all $BENCH_CHECKS passing; settling $BENCH_SETTLE s, then measuring for $BENCH_CPU_SECONDS s"
  sleep "$BENCH_SETTLE"
  note_load "the CPU window ($tag)"
  LOAD_CPU=$(load_average)
  "${TOOL[@]}" measure --pid "agent=$SOLO_PID" --pid "target=${TARGET_PID[$kind]}" --seconds "$BENCH_CPU_SECONDS" \
    --node "127.0.0.1:$SOLO_HTTP" --target "127.0.0.1:$port" --label "$kind" --run "$run" \
    --idle-rss "$IDLE_RSS" --out "$RESULTS_DIR/cpu-$tag.json" || die "measurement failed"
  note_load "the end of the CPU window ($tag)"
  curl -sf --max-time 5 "http://127.0.0.1:$SOLO_HTTP/metrics" >"$RESULTS_DIR/metrics-solo-$tag.txt" || true
  stop_pids "$SOLO_PID"
  CAIRN_PIDS=()
}
SOLO_LOG_FILES=()
for kind in "${TARGET_KINDS[@]}"; do
  for ((run = 1; run <= BENCH_RUNS; run++)); do
    solo_run "$kind" "$run"
    SOLO_LOG_FILES+=("$LOG_DIR/solo-$kind-$run.log")
  done
done
SOLO_LOGS=$(log_counts "${SOLO_LOG_FILES[@]}")
log "phase 1 done; agent logs: $SOLO_LOGS"

# --- Phase 2: three nodes, failure detection through DNS. ---
PEERS=""
for i in 0 1 2; do PEERS+="$((i + 1))=127.0.0.1:${RPC_PORTS[i]},"; done
PEERS=${PEERS%,}
for i in 0 1 2; do
  id=$((i + 1))
  mkdir -p "$WORK_DIR/node$id"
  CAIRN_LOG=$BENCH_CAIRN_LOG "$CAIRN_BIN" agent --node-id "$id" --data-dir "$WORK_DIR/node$id" --peers "$PEERS" \
    --check-allow "$CHECK_ALLOW" --http-addr "127.0.0.1:${HTTP_PORTS[i]}" --rpc-addr "127.0.0.1:${RPC_PORTS[i]}" --dns-addr "127.0.0.1:${DNS_PORTS[i]}" \
    >"$LOG_DIR/node$id.out" 2>"$LOG_DIR/node$id.log" &
  CAIRN_PIDS+=($!)
done
for i in 0 1 2; do
  wait_node $((i + 1)) "${CAIRN_PIDS[i]}" "${HTTP_PORTS[i]}" "${DNS_PORTS[i]}" "${RPC_PORTS[i]}" \
    "$LOG_DIR/node$((i + 1)).out" "$LOG_DIR/node$((i + 1)).log"
done
LEADER_HTTP=$(leader_http)
log "phase 2: three nodes up (pids ${CAIRN_PIDS[*]}), leader http 127.0.0.1:$LEADER_HTTP; registering $BENCH_DETECT_CHECKS checks every $BENCH_DETECT_INTERVAL"
"${TOOL[@]}" register --url "127.0.0.1:$LEADER_HTTP" --count "$BENCH_DETECT_CHECKS" --per-service 1 \
  --prefix s --target-port "${TARGET_PORT[$BENCH_DETECT_TARGET]}" --interval "$BENCH_DETECT_INTERVAL" --timeout "$BENCH_DETECT_TIMEOUT" \
  --fall "$BENCH_DETECT_FALL" --rise 1 --connections "$BENCH_REG_CONNECTIONS" --max-seconds 600 \
  --out "$RESULTS_DIR/register-cluster.json" || die "registration failed; see $RESULTS_DIR/register-cluster.json"
wait_urls=()
for p in "${HTTP_PORTS[@]}"; do wait_urls+=(--url "127.0.0.1:$p"); done
"${TOOL[@]}" wait-passing "${wait_urls[@]}" --want "$BENCH_DETECT_CHECKS" \
  --timeout $((DETECT_INTERVAL_MS * 3 / 1000 + 60)) >/dev/null || die "not every instance became passing on every node"
sleep 2
note_load "the detection runs"
LOAD_DETECT=$(load_average)
# Per sample: give up after three times the expected detection time plus 5 s.
SAMPLE_TIMEOUT=$(((BENCH_DETECT_FALL * DETECT_INTERVAL_MS * 3 + 5000) / 1000))
DNS_CSV=$(IFS=,; echo "${DNS_PORTS[*]}")
"${TOOL[@]}" detect --target "127.0.0.1:${TARGET_PORT[$BENCH_DETECT_TARGET]}" --dns-ports "$DNS_CSV" --prefix s \
  --count "$BENCH_DETECT_CHECKS" --samples "$BENCH_DETECT_SAMPLES" --fall "$BENCH_DETECT_FALL" \
  --poll "$(awk -v ms="$BENCH_POLL_MS" 'BEGIN { print ms / 1000 }')" --sample-timeout "$SAMPLE_TIMEOUT" \
  --max-seconds 1800 --out "$RESULTS_DIR/detect.jsonl" || die "detection runs failed; see $RESULTS_DIR/detect.jsonl"
note_load "the end of the detection runs"
for i in 0 1 2; do
  curl -sf --max-time 5 "http://127.0.0.1:${HTTP_PORTS[i]}/metrics" >"$RESULTS_DIR/metrics-node$((i + 1)).txt" || true
done
stop_pids "${CAIRN_PIDS[@]}"
CAIRN_PIDS=()
stop_pids "${TARGET_PID[@]}"
TARGET_PID=()
CLUSTER_LOGS=$(log_counts "$LOG_DIR"/node?.log)
log "phase 2 done; cluster logs: $CLUSTER_LOGS"

# --- Report. ---
printf '\n'
report "$RESULTS_DIR" \
  --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --meta "nproc=$(nproc)" \
  --meta "cpu=$(cpu_model)" \
  --meta "kernel=$(uname -r)" \
  --meta "os=$(os_name)" \
  --meta "fs=$(fs_type "$WORK_DIR")" \
  --meta "load=$LOAD_AT_START (before the last CPU window $LOAD_CPU, before detection $LOAD_DETECT)" \
  --meta "cairn_bin=$(repo_relative "$CAIRN_BIN")" \
  --meta "cairn_build=$CAIRN_BUILD" \
  --meta "cairn_log=$BENCH_CAIRN_LOG" \
  --meta "logs=single node: $SOLO_LOGS; three nodes: $CLUSTER_LOGS" \
  --meta "python=$("$PYTHON" -c 'import platform; print(platform.python_version())')" \
  --meta "command=$COMMAND_LINE" \
  --meta "checks=$BENCH_CHECKS" \
  --meta "runs=$BENCH_RUNS" \
  --meta "detect_target=$BENCH_DETECT_TARGET" \
  --meta "interval=$BENCH_INTERVAL" \
  --meta "timeout=$BENCH_TIMEOUT" \
  --meta "fall=$BENCH_FALL" \
  --meta "window=10" \
  --meta "settle=$BENCH_SETTLE" \
  --meta "detect_checks=$BENCH_DETECT_CHECKS" \
  --meta "detect_interval=$BENCH_DETECT_INTERVAL" \
  --meta "detect_timeout=$BENCH_DETECT_TIMEOUT" \
  --meta "detect_fall=$BENCH_DETECT_FALL" \
  --meta "poll_ms=$BENCH_POLL_MS" \
  --meta "under_load=$UNDER_LOAD" \
  --meta "waited=$WAITED" \
  --meta "results_dir=${RESULTS_DIR#"$REPO_ROOT"/}/"
