#!/usr/bin/env bash
# The Cloud Map-compatible API's DiscoverInstances against the native read of the same service,
# in the same run, on one node on this machine's loopback interface.
#
#   bench/cloudmap.sh [--help]
#
# One node (--bootstrap, --cloudmap-addr, a credentials file with one key). Through boto3 (from
# $CAIRN_PYDEPS, as scripts/deps --test installs it): namespace bench.internal, service web,
# BENCH_INSTANCES instances by RegisterInstance. Then, after a warm-up, BENCH_RUNS rounds over
# BENCH_CONNECTIONS of: wrk against the native GET /v1/services/web?health=passing, and wrk
# against DiscoverInstances (AWS JSON 1.1, HealthStatus HEALTHY), one request signed with SigV4
# by botocore before each run and sent unchanged (the node verifies its signature every time;
# wrk spends nothing on signing). Every response's status and instance count is checked. Goal:
# DiscoverInstances >= 0.5x the native read. With BENCH_SDK=1 it also measures what the client
# costs: boto3 discover_instances calls/s in one Python thread beside plain http.client GETs.
#
# Environment (defaults in brackets):
#   CAIRN_BIN          cairn binary [${CARGO_TARGET_DIR:-<repo>/target}/release/cairn]
#   CAIRN_PYDEPS       where scripts/deps --test put boto3 [/var/tmp/cairn-pydeps]
#   BENCH_BOTO3        the boto3 release used to seed and sign [1.44.8]
#   BENCH_INSTANCES    instances of the service [10]
#   BENCH_CONNECTIONS  space-separated wrk connection counts ["1 64"]
#   BENCH_DURATION     seconds per wrk run [10]
#   BENCH_RUNS         runs per (system, connections); medians reported [3]
#   BENCH_WARMUP       seconds of unrecorded load per system before measuring; 0 = none [3]
#   BENCH_PIN          1 = the node on CPU 0, wrk on CPU 1 [1 when there are 2+ CPUs]
#   BENCH_SDK          1 = also the client-cost loop (BENCH_SDK_SECONDS per client and run) [1]
#   BENCH_SDK_SECONDS  seconds per client-cost loop [5]
#   BENCH_PORT_BASE    first of the loopback ports used (base+1 .. base+4) [25000]
#   BENCH_OUTPUT       Markdown file whose cloudmap section is replaced [<repo>/BENCHMARKS.md]
#   BENCH_WRITE        0 = only print the section, leave BENCH_OUTPUT alone [1]
#
# Installs wrk, curl and python3 with apt-get when missing. Raw output and logs stay in
# bench/results/cloudmap-<UTC time>/ (git-ignored).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
BENCH_LOG_TAG=cloudmap
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

ENV_VARS=(CAIRN_BIN CAIRN_PYDEPS BENCH_BOTO3 BENCH_INSTANCES BENCH_CONNECTIONS BENCH_DURATION
  BENCH_RUNS BENCH_WARMUP BENCH_PIN BENCH_SDK BENCH_SDK_SECONDS BENCH_PORT_BASE BENCH_OUTPUT
  BENCH_WRITE)
capture_command_line cloudmap.sh "${ENV_VARS[@]}" -- "$@"
no_arguments "$@"

CAIRN_BIN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/cairn}
CAIRN_PYDEPS=${CAIRN_PYDEPS:-/var/tmp/cairn-pydeps}
BENCH_BOTO3=${BENCH_BOTO3:-1.44.8}
BENCH_INSTANCES=${BENCH_INSTANCES:-10}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-1 64}
BENCH_DURATION=${BENCH_DURATION:-10}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_WARMUP=${BENCH_WARMUP:-3}
if (($(nproc) >= 2)); then BENCH_PIN=${BENCH_PIN:-1}; else BENCH_PIN=${BENCH_PIN:-0}; fi
BENCH_SDK=${BENCH_SDK:-1}
BENCH_SDK_SECONDS=${BENCH_SDK_SECONDS:-5}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-25000}
BENCH_OUTPUT=${BENCH_OUTPUT:-$REPO_ROOT/BENCHMARKS.md}
BENCH_WRITE=${BENCH_WRITE:-1}
require_uint BENCH_INSTANCES BENCH_DURATION BENCH_RUNS BENCH_WARMUP BENCH_SDK_SECONDS BENCH_PORT_BASE
require_flag BENCH_PIN BENCH_SDK BENCH_WRITE
((BENCH_INSTANCES >= 1 && BENCH_INSTANCES <= 100)) ||
  die "BENCH_INSTANCES must be 1-100 (DiscoverInstances answers at most 100 without paging)"
((BENCH_DURATION >= 1 && BENCH_RUNS >= 1)) || die "BENCH_DURATION and BENCH_RUNS must be at least 1"
# A signature is good for 15 minutes: a run must end well within it.
((BENCH_DURATION <= 600)) || die "BENCH_DURATION must be at most 600 s (the signature's lifetime)"
((BENCH_PORT_BASE >= 1024 && BENCH_PORT_BASE + 4 < 32768)) ||
  die "BENCH_PORT_BASE must be between 1024 and 32763"
read -r -a CONNECTIONS <<<"$BENCH_CONNECTIONS"
for c in "${CONNECTIONS[@]}"; do
  is_uint "$c" && ((c >= 1)) || die "BENCH_CONNECTIONS takes whole numbers of at least 1, got '$c'"
done
BOTO3_DIR=$CAIRN_PYDEPS/boto3-$BENCH_BOTO3
[[ -d $BOTO3_DIR/boto3 ]] || die "no boto3 in $BOTO3_DIR: run scripts/deps --test"

SERVER_PIN=() CLIENT_PIN=()
if ((BENCH_PIN)); then SERVER_PIN=(taskset -c 0) CLIENT_PIN=(taskset -c 1); fi

HTTP_PORT=$((BENCH_PORT_BASE + 1)) RPC_PORT=$((BENCH_PORT_BASE + 2))
DNS_PORT=$((BENCH_PORT_BASE + 3)) CLOUDMAP_PORT=$((BENCH_PORT_BASE + 4))
KEY_ID=AKIDCAIRNBENCH0001
SECRET=cairn-bench-secret/0001
CAIRN_PID=""
owned_pids() { echo ${CAIRN_PID:+"$CAIRN_PID"}; }

ensure_packages wrk=wrk curl=curl python3=python3 taskset=util-linux
require_cairn_bin "no cairn binary at $CAIRN_BIN; build it: cargo build --release -p cairn-node"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$REPO_ROOT/bench/results/cloudmap-$STAMP
LOG_DIR=$RESULTS_DIR/logs
mkdir -p "$LOG_DIR"
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cairn-cloudmap-bench.XXXXXX")
TOOL=(env "PYTHONPATH=$BOTO3_DIR" python3 "$SCRIPT_DIR/cloudmap_tool.py")
KEYS=(--cloudmap-port "$CLOUDMAP_PORT" --http-port "$HTTP_PORT" --key-id "$KEY_ID" --secret "$SECRET"
  --instances "$BENCH_INSTANCES")
LOAD_AT_START=$(load_average)
warn_if_loaded "$LOAD_AT_START"

# --- The node. ---
printf '[[key]]\naccess_key_id = "%s"\nsecret_access_key = "%s"\n' "$KEY_ID" "$SECRET" \
  >"$WORK_DIR/credentials.toml"
check_ports_free "$HTTP_PORT" "$RPC_PORT" "$DNS_PORT" "$CLOUDMAP_PORT"
mkdir -p "$WORK_DIR/data"
CAIRN_LOG=warn ${SERVER_PIN[@]+"${SERVER_PIN[@]}"} "$CAIRN_BIN" agent --node-id 1 \
  --data-dir "$WORK_DIR/data" --bootstrap --http-addr "127.0.0.1:$HTTP_PORT" \
  --rpc-addr "127.0.0.1:$RPC_PORT" --dns-addr "127.0.0.1:$DNS_PORT" \
  --cloudmap-addr "127.0.0.1:$CLOUDMAP_PORT" --cloudmap-credentials "$WORK_DIR/credentials.toml" \
  >"$LOG_DIR/cairn.out" 2>"$LOG_DIR/cairn.log" &
CAIRN_PID=$!
wait_cairn_listening cairn "$CAIRN_PID" "$LOG_DIR/cairn.out" "$LOG_DIR/cairn.log" $((SECONDS + 30)) 0.1 \
  1 "$HTTP_PORT" "$DNS_PORT" "$RPC_PORT" "" " cloudmap=127.0.0.1:$CLOUDMAP_PORT"
wait_cairn_ready cairn "$CAIRN_PID" "$LOG_DIR/cairn.log" $((SECONDS + 60)) 0.1 "$HTTP_PORT"
log "seeding through boto3 $BENCH_BOTO3: $BENCH_INSTANCES instances"
"${TOOL[@]}" seed "${KEYS[@]}" | tee "$RESULTS_DIR/seed.json" >&2

# --- Load. ---
NATIVE_URL=http://127.0.0.1:$HTTP_PORT/v1/services/web?health=passing
CLOUDMAP_URL=http://127.0.0.1:$CLOUDMAP_PORT/
REQUEST=$WORK_DIR/discover.txt
# run_wrk SYSTEM CONNS DURATION LABEL RUN RUNS_FILE
run_wrk() {
  local system=$1 conns=$2 duration=$3 label=$4 run=$5 runs_file=$6 url extra=()
  local threads=$((conns < 2 ? conns : 2)) out="$RESULTS_DIR/wrk-$1-c$2-$4.txt"
  if [[ $system == native ]]; then
    url=$NATIVE_URL
  else
    url=$CLOUDMAP_URL
    # Signed now: the node accepts it for 15 minutes.
    "${TOOL[@]}" sign "${KEYS[@]}" --out "$REQUEST"
    extra=("$REQUEST")
  fi
  assert_alive cairn "$CAIRN_PID" "$LOG_DIR/cairn.log"
  timeout --kill-after=10 $((duration + 60)) ${CLIENT_PIN[@]+"${CLIENT_PIN[@]}"} \
    wrk --latency -t "$threads" -c "$conns" -d "${duration}s" -s "$SCRIPT_DIR/cloudmap.lua" \
    "$url" -- "$system" "$BENCH_INSTANCES" ${extra[@]+"${extra[@]}"} >"$out" 2>&1 ||
    die "wrk failed for $system c=$conns $label (output in $out)"
  "${TOOL[@]}" record --runs "$runs_file" --wrk-output "$out" --system "$system" \
    --connections "$conns" --run "$run"
}

if ((BENCH_WARMUP > 0)); then
  for s in native cloudmap; do
    log "$s warm-up: $BENCH_WARMUP s at 64 connections (not recorded)"
    run_wrk "$s" 64 "$BENCH_WARMUP" warmup 0 "$RESULTS_DIR/warmup.jsonl"
  done
fi
# Rounds outside, systems alternating inside: a drift of the machine hits both alike.
for ((run = 1; run <= BENCH_RUNS; run++)); do
  for c in "${CONNECTIONS[@]}"; do
    for s in native cloudmap; do
      run_wrk "$s" "$c" "$BENCH_DURATION" "r$run" "$run" "$RESULTS_DIR/runs.jsonl"
    done
  done
done

SDK_META=()
if ((BENCH_SDK)); then
  log "client cost: boto3 and http.client, $BENCH_SDK_SECONDS s each, $BENCH_RUNS runs"
  for ((run = 1; run <= BENCH_RUNS; run++)); do
    ${CLIENT_PIN[@]+"${CLIENT_PIN[@]}"} "${TOOL[@]}" sdk "${KEYS[@]}" --seconds "$BENCH_SDK_SECONDS" \
      >>"$RESULTS_DIR/sdk.jsonl"
  done
  median() { python3 -c 'import json,statistics,sys; print(f"{statistics.median(json.loads(l)[sys.argv[1]] for l in open(sys.argv[2])):,.0f}")' "$1" "$RESULTS_DIR/sdk.jsonl"; }
  SDK_META=(--meta sdk=1 --meta "sdk_seconds=$BENCH_SDK_SECONDS" --meta "sdk_boto3=$(median boto3)"
    --meta "sdk_http=$(median http_client)" --meta "boto3_version=$BENCH_BOTO3")
fi
stop_pids "$CAIRN_PID"
CAIRN_PID=""

if ((BENCH_PIN)); then pin="node pinned to CPU 0, wrk to CPU 1"; else pin="not pinned"; fi
output=()
((BENCH_WRITE)) && output=(--output "$BENCH_OUTPUT")
"${TOOL[@]}" report --runs "$RESULTS_DIR/runs.jsonl" ${output[@]+"${output[@]}"} \
  --meta "command=$COMMAND_LINE" --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --meta "commit=$(git_commit)" --meta "nproc=$(nproc)" --meta "cpu=$(cpu_model)" \
  --meta "load=$LOAD_AT_START" --meta "instances=$BENCH_INSTANCES" \
  --meta "wrk=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')" --meta "duration=$BENCH_DURATION" \
  --meta "runs=$BENCH_RUNS" --meta "warmup=$BENCH_WARMUP" --meta "pin=$pin" \
  --meta "results_dir=${RESULTS_DIR#"$REPO_ROOT"/}/" ${SDK_META[@]+"${SDK_META[@]}"}
