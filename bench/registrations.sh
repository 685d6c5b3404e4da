#!/usr/bin/env bash
# Registration throughput and latency: a 3-node Cairn cluster against a 3-member etcd cluster,
# both on this machine's loopback interface, loaded with wrk at the leader.
#
#   bench/registrations.sh [--build] [--help]
#
# Environment (defaults in brackets):
#   CAIRN_BIN          cairn binary [${CARGO_TARGET_DIR:-<repo>/target}/release/cairn]
#   BENCH_ONLY         run only "etcd" or only "cairn" [both]
#   BENCH_DURATION     seconds per wrk run [10]
#   BENCH_RUNS         runs per (system, connections); the report takes the median [3]
#   BENCH_CONNECTIONS  space-separated connection counts ["1 64 256"]
#   BENCH_WARMUP       seconds of unrecorded load per system before measuring; 0 = none [3]
#   BENCH_TIMEOUT      wrk per-request timeout in seconds; slower responses count as errors [10]
#   BENCH_PORT_BASE    first of the loopback ports used (base+11 .. base+53) [21000]
#   BENCH_OUTPUT       Markdown file whose registrations section is replaced [<repo>/BENCHMARKS.md]
#   BENCH_WRITE        0 = only print the table, leave BENCH_OUTPUT alone [1]
#
# Installs etcd-server, etcd-client, wrk, curl and python3 with apt-get when they are missing.
# Raw wrk output and server logs stay in bench/results/<UTC time>/ (git-ignored).
set -euo pipefail

# --- Command line, captured before defaults are filled in so the report shows what was typed. ---
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
BENCH_LOG_TAG=bench
# log, die, usage, settings checks, process cleanup (exit trap), ports, Cairn start-up waits.
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

capture_command_line registrations.sh CAIRN_BIN BENCH_ONLY BENCH_DURATION BENCH_RUNS \
  BENCH_CONNECTIONS BENCH_WARMUP BENCH_TIMEOUT BENCH_PORT_BASE BENCH_OUTPUT BENCH_WRITE -- "$@"

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
BENCH_DURATION=${BENCH_DURATION:-10}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-1 64 256}
BENCH_WARMUP=${BENCH_WARMUP:-3}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-10}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-21000}
BENCH_OUTPUT=${BENCH_OUTPUT:-$REPO_ROOT/BENCHMARKS.md}
BENCH_WRITE=${BENCH_WRITE:-1}
CAIRN_BIN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/cairn}

require_uint BENCH_DURATION BENCH_RUNS BENCH_WARMUP BENCH_TIMEOUT BENCH_PORT_BASE
require_flag BENCH_WRITE
((BENCH_DURATION >= 1 && BENCH_RUNS >= 1 && BENCH_TIMEOUT >= 1)) ||
  die "BENCH_DURATION, BENCH_RUNS and BENCH_TIMEOUT must be at least 1"
# Stay below Linux's ephemeral range (32768+) so no outgoing wrk socket can take our ports.
((BENCH_PORT_BASE >= 1024 && BENCH_PORT_BASE + 53 < 32768)) ||
  die "BENCH_PORT_BASE must be between 1024 and 32714"
read -r -a CONNECTIONS <<<"$BENCH_CONNECTIONS"
((${#CONNECTIONS[@]} > 0)) || die "BENCH_CONNECTIONS is empty"
for c in "${CONNECTIONS[@]}"; do
  if ! is_uint "$c" || ((c < 1 || c > 10000)); then
    die "bad connection count '$c' in BENCH_CONNECTIONS"
  fi
done
case $BENCH_ONLY in
  "") SYSTEMS=(etcd cairn) ;;
  etcd | cairn) SYSTEMS=("$BENCH_ONLY") ;;
  *) die "BENCH_ONLY must be 'etcd', 'cairn' or empty, got '$BENCH_ONLY'" ;;
esac
wants() { [[ " ${SYSTEMS[*]} " == *" $1 "* ]]; }

# The registration document, identical for both systems: Cairn gets it as the request body,
# etcd stores it as the value (the Lua script base64-encodes it for the gateway).
REG_DOC='{"address":"10.1.2.3","port":8080,"tags":["v1"]}'
ETCD_KEY_PREFIX=/cairn-bench/services/bench/instances/
LUA_SCRIPT=$SCRIPT_DIR/registrations.lua
SUMMARISE=(python3 "$SCRIPT_DIR/summarise.py")
# A per-invocation nonce in every id, so ids cannot repeat even if a data dir were reused.
NONCE=$(printf '%x' "$(date +%s)")

# Ports: etcd clients base+11..13, etcd peers base+21..23, Cairn HTTP base+31..33, Cairn RPC
# base+41..43. Fixed rather than random so a failed run's logs are easy to match up.
ETCD_CLIENT_PORTS=($((BENCH_PORT_BASE + 11)) $((BENCH_PORT_BASE + 12)) $((BENCH_PORT_BASE + 13)))
ETCD_PEER_PORTS=($((BENCH_PORT_BASE + 21)) $((BENCH_PORT_BASE + 22)) $((BENCH_PORT_BASE + 23)))
CAIRN_HTTP_PORTS=($((BENCH_PORT_BASE + 31)) $((BENCH_PORT_BASE + 32)) $((BENCH_PORT_BASE + 33)))
CAIRN_RPC_PORTS=($((BENCH_PORT_BASE + 41)) $((BENCH_PORT_BASE + 42)) $((BENCH_PORT_BASE + 43)))
CAIRN_DNS_PORTS=($((BENCH_PORT_BASE + 51)) $((BENCH_PORT_BASE + 52)) $((BENCH_PORT_BASE + 53)))
ETCD_ENDPOINTS=$(printf 'http://127.0.0.1:%s,' "${ETCD_CLIENT_PORTS[@]}")
ETCD_ENDPOINTS=${ETCD_ENDPOINTS%,}

# --- Process bookkeeping: we only ever signal PIDs we started ourselves. ---
ETCD_PIDS=()
CAIRN_PIDS=()
# For lib.sh's exit trap: what is still running.
owned_pids() { echo ${CAIRN_PIDS[@]+"${CAIRN_PIDS[@]}"} ${ETCD_PIDS[@]+"${ETCD_PIDS[@]}"}; }

# --- Tools. ---
ensure_tools() {
  ensure_packages etcd=etcd-server etcdctl=etcd-client wrk=wrk curl=curl python3=python3
}

ensure_cairn_bin() {
  if ((DO_BUILD)); then
    log "building cairn: cargo build --release -p cairn-node"
    (cd "$REPO_ROOT" && cargo build --release -p cairn-node)
  fi
  require_cairn_bin "no cairn binary at $CAIRN_BIN.
  Build it first:   (cd $REPO_ROOT && cargo build --release -p cairn-node)
  or let this script do it:  bench/registrations.sh --build
  or point CAIRN_BIN at an existing binary, or run only etcd with BENCH_ONLY=etcd."
}

# --- etcd. ---
etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" --dial-timeout=2s --command-timeout=5s "$@"; }

start_etcd_cluster() {
  local i initial=""
  for i in 0 1 2; do initial+="etcd$((i + 1))=http://127.0.0.1:${ETCD_PEER_PORTS[i]},"; done
  initial=${initial%,}
  check_ports_free "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}"
  for i in 0 1 2; do
    local name=etcd$((i + 1)) client=http://127.0.0.1:${ETCD_CLIENT_PORTS[i]}
    local peer=http://127.0.0.1:${ETCD_PEER_PORTS[i]}
    # No durability flags: etcd's default fsyncs the WAL on every commit, which is what a
    # registry that survives power loss has to pay for and what Cairn is compared against.
    etcd --name "$name" --data-dir "$WORK_DIR/$name" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$initial" --initial-cluster-state new \
      --initial-cluster-token "cairn-bench-$$-$NONCE" \
      --logger zap --log-outputs stderr \
      >"$LOG_DIR/$name.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  log "etcd started (pids ${ETCD_PIDS[*]}), clients $ETCD_ENDPOINTS"

  local deadline=$((SECONDS + 60))
  while ! etcdctl_ endpoint health >/dev/null 2>&1; do
    for i in 0 1 2; do assert_alive "etcd$((i + 1))" "${ETCD_PIDS[i]}" "$LOG_DIR/etcd$((i + 1)).log"; done
    ((SECONDS < deadline)) || die "etcd not healthy after 60 s; see $LOG_DIR/etcd*.log"
    sleep 0.5
  done
  log "etcd healthy"
}

# Prints the client URL of the current etcd leader: the endpoint whose own member id equals
# the leader id it reports. Retries through elections for up to 30 s.
etcd_leader_url() {
  local deadline=$((SECONDS + 30)) status url
  while ((SECONDS < deadline)); do
    if status=$(etcdctl_ endpoint status -w json 2>/dev/null) &&
      url=$(python3 -c '
import json, sys
for e in json.load(sys.stdin):
    s = e["Status"]
    if s.get("leader") and s["header"]["member_id"] == s["leader"]:
        print(e["Endpoint"]); break
else:
    sys.exit(1)' <<<"$status"); then
      printf '%s\n' "$url"
      return 0
    fi
    sleep 0.5
  done
  die "no etcd leader found within 30 s"
}

# One put through the gateway before the load, so a wrong path or body format fails loudly
# instead of showing up as a table full of errors.
etcd_preflight() {
  local url=$1 key value body out
  key=$(printf '%s' "${ETCD_KEY_PREFIX}preflight-$NONCE" | base64 -w0)
  value=$(printf '%s' "$REG_DOC" | base64 -w0)
  body=$(printf '{"key":"%s","value":"%s"}' "$key" "$value")
  out=$(curl -sS --max-time 5 -o - -w '\n%{http_code}' -H 'Content-Type: application/json' \
    -X POST --data-binary "$body" "$url/v3/kv/put") || die "etcd preflight put to $url failed"
  [[ ${out##*$'\n'} == 200 && ${out%$'\n'*} == *'"header"'* ]] ||
    die "etcd preflight: POST $url/v3/kv/put answered: $out"
}

# After the load: every successful put created exactly one new key, and a key written by the
# Lua script reads back as the exact document. Catches broken base64 and id collisions.
etcd_verify() {
  local count ok slack
  # etcdctl 3.4 has no --count-only; a range response's "count" is the total in the range
  # whatever the limit, so ask for one key.
  count=$(etcdctl_ get --prefix "$ETCD_KEY_PREFIX" --keys-only --limit 1 -w json |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))') ||
    die "could not count the bench keys in etcd"
  read -r ok slack < <("${SUMMARISE[@]}" ok-count --system etcd "$RESULTS_DIR/runs.jsonl" "$RESULTS_DIR/warmup.jsonl")
  ok=$((ok + 1)) # the preflight key
  if ((count < ok)); then
    die "etcd holds $count bench keys but $ok puts succeeded: ids were reused"
  elif ((count > ok + slack)); then
    log "warning: etcd holds $count bench keys, more than the $ok successful puts + $slack in flight"
  else
    log "etcd check: $count keys for $ok successful puts (+ up to $slack in flight at wrk's stop)"
  fi
  # Read back the first key of run 1 at the first connection count. (Not simply id "-1-1":
  # wrk calls request() once on thread 1 to inspect it without sending it, so that id is
  # skipped.) Key and value must both decode to exactly what the Lua script meant to send.
  local run_prefix="${ETCD_KEY_PREFIX}r1c${CONNECTIONS[0]}-$NONCE-" kv=()
  mapfile -t kv < <(etcdctl_ get --prefix "$run_prefix" --limit 1)
  if ((${#kv[@]} != 2)) || [[ ! ${kv[0]} =~ ^"$run_prefix"[0-9]+-[0-9]+$ || ${kv[1]} != "$REG_DOC" ]]; then
    die "etcd read-back under $run_prefix gave '${kv[*]}', want <prefix><thread>-<n> and $REG_DOC (base64 in the Lua script?)"
  fi
  log "etcd check: ${kv[0]} = ${kv[1]}"
}

# --- Cairn. ---
# The CLI below is the contract agreed for `cairn agent` (lib.sh waits for its output line and
# /v1/ready); if the binary changes them, adapt here and in lib.sh.
start_cairn_cluster() {
  local i peers=""
  for i in 0 1 2; do peers+="$((i + 1))=127.0.0.1:${CAIRN_RPC_PORTS[i]},"; done
  peers=${peers%,}
  check_ports_free "${CAIRN_HTTP_PORTS[@]}" "${CAIRN_RPC_PORTS[@]}" "${CAIRN_DNS_PORTS[@]}"
  for i in 0 1 2; do
    local id=$((i + 1))
    mkdir -p "$WORK_DIR/cairn$id"
    "$CAIRN_BIN" agent --node-id "$id" --data-dir "$WORK_DIR/cairn$id" \
      --http-addr "127.0.0.1:${CAIRN_HTTP_PORTS[i]}" --rpc-addr "127.0.0.1:${CAIRN_RPC_PORTS[i]}" \
      --dns-addr "127.0.0.1:${CAIRN_DNS_PORTS[i]}" --peers "$peers" >"$LOG_DIR/cairn$id.out" 2>"$LOG_DIR/cairn$id.log" &
    CAIRN_PIDS+=($!)
  done
  log "cairn started (pids ${CAIRN_PIDS[*]}), http ports ${CAIRN_HTTP_PORTS[*]}"

  # Each node announces itself with its listening line on stdout; one 30 s deadline for all.
  local deadline=$((SECONDS + 30))
  for i in 0 1 2; do
    wait_cairn_listening "cairn$((i + 1))" "${CAIRN_PIDS[i]}" "$LOG_DIR/cairn$((i + 1)).out" \
      "$LOG_DIR/cairn$((i + 1)).log" "$deadline" 0.2 \
      $((i + 1)) "${CAIRN_HTTP_PORTS[i]}" "${CAIRN_DNS_PORTS[i]}" "${CAIRN_RPC_PORTS[i]}"
  done

  # /v1/ready is 200 once a node knows a leader; wait for all three so the cluster is settled.
  deadline=$((SECONDS + 60))
  for i in 0 1 2; do
    wait_cairn_ready "cairn$((i + 1))" "${CAIRN_PIDS[i]}" "$LOG_DIR/cairn$((i + 1)).log" "$deadline" 0.2 \
      "${CAIRN_HTTP_PORTS[i]}"
  done
  log "cairn ready"
}

# Prints the HTTP base URL of the Cairn leader. Asks each node's /v1/cluster for the leader id,
# then confirms with the leader itself (its node_id and leader agree), retrying for up to 30 s.
cairn_leader_url() {
  local deadline=$((SECONDS + 30)) i leader json
  while ((SECONDS < deadline)); do
    for i in 0 1 2; do
      json=$(curl -sf --max-time 2 "http://127.0.0.1:${CAIRN_HTTP_PORTS[i]}/v1/cluster") || continue
      leader=$(python3 -c 'import json,sys; l=json.load(sys.stdin).get("leader"); print(l if isinstance(l,int) else "")' <<<"$json" 2>/dev/null) || continue
      [[ $leader =~ ^[123]$ ]] || continue
      local url=http://127.0.0.1:${CAIRN_HTTP_PORTS[leader - 1]}
      json=$(curl -sf --max-time 2 "$url/v1/cluster") || continue
      if python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d.get("node_id")==d.get("leader")=='"$leader"' else 1)' <<<"$json" 2>/dev/null; then
        printf '%s\n' "$url"
        return 0
      fi
    done
    sleep 0.5
  done
  die "no cairn leader found within 30 s (GET /v1/cluster)"
}

# One registration before the load: must be HTTP 200 with body {"index":N}.
cairn_preflight() {
  local url=$1 out
  out=$(curl -sS --max-time 5 -o - -w '\n%{http_code}' -H 'Content-Type: application/json' \
    -X PUT --data-binary "$REG_DOC" "$url/v1/services/bench/instances/preflight-$NONCE") ||
    die "cairn preflight PUT to $url failed"
  # Same acceptance rule as the Lua script's response(): status 200 and an "index" number.
  [[ ${out##*$'\n'} == 200 && ${out%$'\n'*} =~ \"index\"[[:space:]]*:[[:space:]]*[0-9] ]] ||
    die "cairn preflight: PUT $url/v1/services/bench/instances/preflight-$NONCE answered: $out"
}

# --- Load. ---
# run_wrk SYSTEM URL CONNECTIONS DURATION LABEL RUN RUNS_FILE
run_wrk() {
  local system=$1 url=$2 conns=$3 duration=$4 label=$5 run=$6 runs_file=$7
  local threads=$((conns < 2 ? conns : 2))
  local out="$RESULTS_DIR/$system-c$conns-$label.txt"
  # The id prefix is unique per run: r<run>c<connections>-<nonce>, or w-<nonce> for warm-up.
  local id_prefix=${label}c$conns-$NONCE
  [[ $label == warmup ]] && id_prefix=w-$NONCE
  # timeout: wrk stops itself after -d, the extra minute only guards against a wedged wrk.
  if ! timeout --kill-after=10 $((duration + 60)) \
    wrk --latency -t "$threads" -c "$conns" -d "${duration}s" --timeout "${BENCH_TIMEOUT}s" \
    -s "$LUA_SCRIPT" "$url" -- "$system" "$id_prefix" "$REG_DOC" "$ETCD_KEY_PREFIX" \
    >"$out" 2>&1; then
    tail -n 20 "$out" >&2 || true
    die "wrk failed for $system c=$conns $label (output in $out)"
  fi
  "${SUMMARISE[@]}" record --runs "$runs_file" --wrk-output "$out" --system "$system" \
    --connections "$conns" --threads "$threads" --run "$run" --label "$label" --target "$url" >&2
}

# bench_system SYSTEM: warm-up, then BENCH_RUNS rounds over all connection counts. Rounds are
# the outer loop so the runs of one connection count are spread over the whole session rather
# than back to back, which keeps slow drift (compaction, page cache) from favouring one row.
bench_system() {
  local system=$1 url run c
  url=$("${system}_leader_url")
  log "$system leader: $url"
  "${system}_preflight" "$url"
  if ((BENCH_WARMUP > 0)); then
    log "$system warm-up: ${BENCH_WARMUP} s at 64 connections (not recorded)"
    run_wrk "$system" "$url" 64 "$BENCH_WARMUP" warmup 0 "$RESULTS_DIR/warmup.jsonl"
  fi
  for ((run = 1; run <= BENCH_RUNS; run++)); do
    for c in "${CONNECTIONS[@]}"; do
      # Re-resolve the leader each run: an election mid-benchmark must not send load to a
      # follower (which would measure forwarding or rejections, not registrations).
      url=$("${system}_leader_url")
      run_wrk "$system" "$url" "$c" "$BENCH_DURATION" "r$run" "$run" "$RESULTS_DIR/runs.jsonl"
    done
  done
}

# --- Main. ---
ensure_tools
wants cairn && ensure_cairn_bin

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$REPO_ROOT/bench/results/$STAMP
LOG_DIR=$RESULTS_DIR/logs
mkdir -p "$LOG_DIR"
# Data dirs live on the default temp filesystem (tmpfs would make fsync free; it is recorded).
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench.XXXXXX")
ulimit -n 65536 2>/dev/null || true # 256 connections plus three servers' files

LOAD_AT_START=$(load_average)
warn_if_loaded "$LOAD_AT_START"
log "results in $RESULTS_DIR; data in $WORK_DIR; $BENCH_RUNS runs x ${BENCH_DURATION} s at connections ${CONNECTIONS[*]}"

if wants etcd; then
  start_etcd_cluster
  bench_system etcd
  etcd_verify
  # Stop etcd before Cairn starts, so neither system's background work eats the other's CPU.
  stop_pids "${ETCD_PIDS[@]}"
  ETCD_PIDS=()
fi
if wants cairn; then
  start_cairn_cluster
  bench_system cairn
  stop_pids "${CAIRN_PIDS[@]}"
  CAIRN_PIDS=()
fi

# --- Report. ---
cairn_commit=n/a
wants cairn && cairn_commit=$(git_commit)
output_args=()
((BENCH_WRITE)) && output_args=(--output "$BENCH_OUTPUT")

printf '\n'
"${SUMMARISE[@]}" report --runs "$RESULTS_DIR/runs.jsonl" ${output_args[@]+"${output_args[@]}"} \
  --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --meta "nproc=$(nproc)" \
  --meta "cpu=$(cpu_model)" \
  --meta "kernel=$(uname -r)" \
  --meta "os=$(os_name)" \
  --meta "fs=$(fs_type "$WORK_DIR")" \
  --meta "load=$LOAD_AT_START" \
  --meta "etcd_version=$(etcd --version | awk '/^etcd Version:/ { print $3 }')" \
  --meta "wrk_version=$(wrk -v 2>&1 | awk 'NR == 1 { print $1, $2 }')" \
  --meta "cairn_commit=$cairn_commit" \
  --meta "duration=$BENCH_DURATION" \
  --meta "runs=$BENCH_RUNS" \
  --meta "warmup=$BENCH_WARMUP" \
  --meta "command=$COMMAND_LINE" \
  --meta "results_dir=${RESULTS_DIR#"$REPO_ROOT"/}/"
