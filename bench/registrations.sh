#!/usr/bin/env bash
# Registration throughput and latency: a 3-node Cairn cluster against a 3-member etcd cluster,
# both on this machine's loopback interface, loaded with wrk at the leader. With BENCH_TLS=1 the
# same run also measures both with TLS: Cairn with mutual TLS between nodes and wrk speaking
# HTTPS to its --https-addr, etcd with mutual TLS between members and HTTPS for clients, all
# certificates made by `cairn tls`. wrk cannot present a client certificate, so the client
# side is server-authenticated only on both systems (no --tls-client-ca, no --client-cert-auth).
# Before loading a TLS cluster the script checks that its peer port refuses a client without a
# certificate. With BENCH_ACL=1 the same run also loads Cairn with ACLs on (`--acl`, default
# deny), the registrations sent with a token whose policy is `service_prefix "bench" write`:
# once on a fresh cluster with 10 tokens in the registry, once on a fresh cluster with
# BENCH_ACL_TOKENS tokens (created through `POST /v1/acl/tokens` before the load, timed). Goals:
# ACLs cost <= 5% of the throughput with ACLs off; both token counts give the same throughput.
#
#   bench/registrations.sh [--build] [--help]
#
# Environment (defaults in brackets):
#   CAIRN_BIN          cairn binary [${CARGO_TARGET_DIR:-<repo>/target}/release/cairn]
#   BENCH_ONLY         run only "etcd" or only "cairn" [both]
#   BENCH_TLS          1 = plaintext and then TLS, in one run; 0 = plaintext only [0]
#   BENCH_ACL          1 = Cairn also with ACLs on, with 10 and BENCH_ACL_TOKENS tokens [0]
#   BENCH_ACL_TOKENS   tokens in the registry of the second ACL cluster [100000]
#   BENCH_DURATION     seconds per wrk run [10]
#   BENCH_RUNS         runs per (system, transport, connections); the report takes the median [3]
#   BENCH_CONNECTIONS  space-separated connection counts ["1 64 256"]
#   BENCH_WARMUP       seconds of unrecorded load per cluster before measuring; 0 = none [3]
#   BENCH_TIMEOUT      wrk per-request timeout in seconds; slower responses count as errors [10]
#   BENCH_PORT_BASE    first of the loopback ports used (base+11 .. base+63) [21000]
#   BENCH_OUTPUT       Markdown file whose registrations section is replaced [<repo>/BENCHMARKS.md]
#   BENCH_WRITE        0 = only print the table, leave BENCH_OUTPUT alone [1]
#
# Installs etcd-server, etcd-client, wrk, curl and python3 (and openssl with BENCH_TLS=1) with
# apt-get when they are missing. BENCH_TLS=1 needs the cairn binary even with BENCH_ONLY=etcd:
# it makes the certificates.
# Raw wrk output and server logs stay in bench/results/<UTC time>/ (git-ignored).
set -euo pipefail

# --- Command line, captured before defaults are filled in so the report shows what was typed. ---
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
BENCH_LOG_TAG=bench
# log, die, usage, settings checks, process cleanup (exit trap), ports, Cairn start-up waits.
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

capture_command_line registrations.sh CAIRN_BIN BENCH_ONLY BENCH_TLS BENCH_ACL BENCH_ACL_TOKENS BENCH_DURATION BENCH_RUNS \
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
BENCH_TLS=${BENCH_TLS:-0}
BENCH_ACL=${BENCH_ACL:-0}
BENCH_ACL_TOKENS=${BENCH_ACL_TOKENS:-100000}
BENCH_DURATION=${BENCH_DURATION:-10}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-1 64 256}
BENCH_WARMUP=${BENCH_WARMUP:-3}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-10}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-21000}
BENCH_OUTPUT=${BENCH_OUTPUT:-$REPO_ROOT/BENCHMARKS.md}
BENCH_WRITE=${BENCH_WRITE:-1}
CAIRN_BIN=${CAIRN_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/cairn}

require_uint BENCH_DURATION BENCH_RUNS BENCH_WARMUP BENCH_TIMEOUT BENCH_PORT_BASE BENCH_ACL_TOKENS
require_flag BENCH_WRITE BENCH_TLS BENCH_ACL
# The few-token cluster holds 10 tokens (bootstrap, load, 8 more); the many-token one more.
((BENCH_ACL_TOKENS > 10 && BENCH_ACL_TOKENS <= 1000000)) || die "BENCH_ACL_TOKENS must be 11..1000000"
ACL_FEW_TOKENS=10
((BENCH_DURATION >= 1 && BENCH_RUNS >= 1 && BENCH_TIMEOUT >= 1)) ||
  die "BENCH_DURATION, BENCH_RUNS and BENCH_TIMEOUT must be at least 1"
# Stay below Linux's ephemeral range (32768+) so no outgoing wrk socket can take our ports.
((BENCH_PORT_BASE >= 1024 && BENCH_PORT_BASE + 63 < 32768)) ||
  die "BENCH_PORT_BASE must be between 1024 and 32704"
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
# The order of the phases (system and transport), each on a fresh cluster. Every pair the report
# compares runs back to back: etcd and Cairn in plaintext, Cairn in plaintext and with TLS, Cairn
# and etcd with TLS. The cluster functions below read TRANSPORT, the phase's transport.
PHASES=()
wants etcd && PHASES+=(etcd:plain)
wants cairn && PHASES+=(cairn:plain)
# ACLs: right after Cairn in plaintext, the run they are compared with (plaintext too).
if ((BENCH_ACL)) && wants cairn; then PHASES+=(cairn:acl cairn:acl-many); fi
if ((BENCH_TLS)); then
  wants cairn && PHASES+=(cairn:tls)
  wants etcd && PHASES+=(etcd:tls)
fi
TRANSPORT=plain
tls() { [[ $TRANSPORT == tls ]]; }
# The ACL phases: plaintext, with --acl and a token on every request.
acl() { [[ $TRANSPORT == acl* ]]; }
# The management and load tokens of the current ACL phase (set by cairn_acl_setup).
CAIRN_ADMIN_TOKEN=""
CAIRN_LOAD_TOKEN=""

# The registration document, identical for both systems: Cairn gets it as the request body,
# etcd stores it as the value (the Lua script base64-encodes it for the gateway).
REG_DOC='{"address":"10.1.2.3","port":8080,"tags":["v1"]}'
ETCD_KEY_PREFIX=/cairn-bench/services/bench/instances/
LUA_SCRIPT=$SCRIPT_DIR/registrations.lua
SUMMARISE=(python3 "$SCRIPT_DIR/summarise.py")
# A per-invocation nonce in every id, so ids cannot repeat even if a data dir were reused.
NONCE=$(printf '%x' "$(date +%s)")

# Ports: etcd clients base+11..13, etcd peers base+21..23, Cairn HTTP base+31..33, Cairn RPC
# base+41..43, Cairn DNS base+51..53, Cairn HTTPS base+61..63. Fixed rather than random so a
# failed run's logs are easy to match up. The TLS phases reuse the plaintext ones' ports: one
# cluster runs at a time.
ETCD_CLIENT_PORTS=($((BENCH_PORT_BASE + 11)) $((BENCH_PORT_BASE + 12)) $((BENCH_PORT_BASE + 13)))
ETCD_PEER_PORTS=($((BENCH_PORT_BASE + 21)) $((BENCH_PORT_BASE + 22)) $((BENCH_PORT_BASE + 23)))
CAIRN_HTTP_PORTS=($((BENCH_PORT_BASE + 31)) $((BENCH_PORT_BASE + 32)) $((BENCH_PORT_BASE + 33)))
CAIRN_RPC_PORTS=($((BENCH_PORT_BASE + 41)) $((BENCH_PORT_BASE + 42)) $((BENCH_PORT_BASE + 43)))
CAIRN_DNS_PORTS=($((BENCH_PORT_BASE + 51)) $((BENCH_PORT_BASE + 52)) $((BENCH_PORT_BASE + 53)))
CAIRN_HTTPS_PORTS=($((BENCH_PORT_BASE + 61)) $((BENCH_PORT_BASE + 62)) $((BENCH_PORT_BASE + 63)))
# http or https, by the phase's transport.
scheme() { if tls; then printf https; else printf http; fi; }
etcd_endpoints() {
  local endpoints
  endpoints=$(printf "$(scheme)://127.0.0.1:%s," "${ETCD_CLIENT_PORTS[@]}")
  printf '%s' "${endpoints%,}"
}

# --- Process bookkeeping: we only ever signal PIDs we started ourselves. ---
ETCD_PIDS=()
CAIRN_PIDS=()
# For lib.sh's exit trap: what is still running.
owned_pids() { echo ${CAIRN_PIDS[@]+"${CAIRN_PIDS[@]}"} ${ETCD_PIDS[@]+"${ETCD_PIDS[@]}"}; }

# --- Tools. ---
ensure_tools() {
  ensure_packages etcd=etcd-server etcdctl=etcd-client wrk=wrk curl=curl python3=python3
  if ((BENCH_TLS)); then ensure_packages openssl=openssl; fi
}

ensure_cairn_bin() {
  if ((DO_BUILD)); then
    log "building cairn: cargo build --release -p cairn-node"
    (cd "$REPO_ROOT" && cargo build --release -p cairn-node)
  fi
  require_cairn_bin "no cairn binary at $CAIRN_BIN.
  Build it first:   (cd $REPO_ROOT && cargo build --release -p cairn-node)
  or let this script do it:  bench/registrations.sh --build
  or point CAIRN_BIN at an existing binary, or run only etcd with BENCH_ONLY=etcd (and BENCH_TLS=0)."
}

# --- Certificates (BENCH_TLS=1), all from `cairn tls`. ---
# One CA; each Cairn node and each etcd member gets a node certificate of its own: its SANs
# include localhost, 127.0.0.1 and ::1, which etcd checks, and it serves both server and client
# authentication, which etcd's peer TLS needs. PKI_COMMANDS records them for the report.
PKI_DIR=""
PKI_COMMANDS=""
make_pki() {
  PKI_DIR=$WORK_DIR/pki
  local id dir ca_flags="--ca $PKI_DIR/cairn-ca.pem --ca-key $PKI_DIR/cairn-ca-key.pem"
  pki_run tls ca create --dir "$PKI_DIR"
  for dir in cairn etcd; do
    for id in 1 2 3; do
      # shellcheck disable=SC2086 # ca_flags is two flags with their values, no spaces in them
      pki_run tls cert create --node "$id" --dir "$PKI_DIR/$dir" $ca_flags
    done
  done
  PKI_COMMANDS="\`cairn tls ca create\`, then \`cairn tls cert create --node N\` for N = 1..3 once for Cairn's nodes and once for etcd's members"
  log "certificates in $PKI_DIR (log: $LOG_DIR/pki.log)"
}
pki_run() {
  printf '$ cairn %s\n' "$*" >>"$LOG_DIR/pki.log"
  "$CAIRN_BIN" "$@" >>"$LOG_DIR/pki.log" 2>&1 || die "cairn $* failed; see $LOG_DIR/pki.log"
}

# cert_key_type CERT: its key's algorithm and curve, e.g. "ECDSA P-256".
cert_key_type() {
  openssl x509 -in "$1" -noout -text 2>/dev/null | awk '
    /Public Key Algorithm:/ { a = $NF; sub(/^id-ecPublicKey$/, "ECDSA", a) }
    /NIST CURVE:/ { c = $NF }
    END { print (a ? a (c ? " " c : "") : "unknown key type") }'
}

# curl_ ARGS...: curl, trusting the benchmark CA in the TLS phases (so a certificate without the
# right SANs fails here, not silently inside wrk, which verifies nothing).
curl_() {
  if tls; then curl --cacert "$PKI_DIR/cairn-ca.pem" "$@"; else curl "$@"; fi
}

# check_mutual_tls WHAT PORT CERT KEY: the peer port on 127.0.0.1:PORT answers HTTPS only to a
# client that presents a certificate (CERT and KEY, signed by the CA): so the TLS rows really ran
# with mutual TLS between members. Any HTTP status counts as an answer, 000 as none.
check_mutual_tls() {
  local what=$1 url=https://127.0.0.1:$2/ without with
  # HTTP/1.1: etcd's peer port closes HTTP/2 streams to paths it does not serve without a status.
  without=$(curl_ -s --http1.1 --max-time 5 -o /dev/null -w '%{http_code}' "$url" 2>/dev/null) || true
  with=$(curl_ -s --http1.1 --max-time 5 -o /dev/null -w '%{http_code}' --cert "$3" --key "$4" "$url" 2>/dev/null) || true
  [[ $without == 000 && $with != 000 ]] ||
    die "$what on port $2 is not mutual TLS: HTTP status $without without a client certificate, $with with one (000 = none)"
  log "$what on port $2: mutual TLS (no answer without a client certificate, HTTP $with with one)"
}

# tls_session URL: the protocol and cipher OpenSSL (wrk's library, with the same defaults)
# negotiates with URL's server, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384".
tls_session() {
  local hostport=${1#https://} out
  out=$(timeout 10 openssl s_client -connect "$hostport" -brief </dev/null 2>&1) || true
  awk -F': ' '/^Protocol version/ { p = $2 } /^Ciphersuite/ { c = $2 } END { print (p && c) ? p " " c : "unknown" }' <<<"$out"
}

# --- etcd. ---
etcdctl_() {
  local tls_flags=()
  tls && tls_flags=(--cacert "$PKI_DIR/cairn-ca.pem")
  ETCDCTL_API=3 etcdctl --endpoints="$(etcd_endpoints)" ${tls_flags[@]+"${tls_flags[@]}"} \
    --dial-timeout=2s --command-timeout=5s "$@"
}

# The etcd flags of member ID (1..3) for the phase's transport. With TLS: mutual TLS between
# members; clients get HTTPS with the server's certificate only, like Cairn's HTTPS listener
# here, since wrk has no client certificate (--trusted-ca-file would require one, as
# --client-cert-auth does).
ETCD_TLS_FLAGS_SHOWN="--peer-cert-file --peer-key-file --peer-trusted-ca-file --peer-client-cert-auth --cert-file --key-file"
etcd_tls_flags() {
  local cert=$PKI_DIR/etcd/node-$1.pem key=$PKI_DIR/etcd/node-$1-key.pem
  tls || return 0
  printf '%s\n' --peer-cert-file "$cert" --peer-key-file "$key" \
    --peer-trusted-ca-file "$PKI_DIR/cairn-ca.pem" --peer-client-cert-auth \
    --cert-file "$cert" --key-file "$key"
}

start_etcd_cluster() {
  local i initial="" scheme
  scheme=$(scheme)
  for i in 0 1 2; do initial+="etcd$((i + 1))=$scheme://127.0.0.1:${ETCD_PEER_PORTS[i]},"; done
  initial=${initial%,}
  check_ports_free "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}"
  for i in 0 1 2; do
    local name=etcd$((i + 1)) client=$scheme://127.0.0.1:${ETCD_CLIENT_PORTS[i]}
    local peer=$scheme://127.0.0.1:${ETCD_PEER_PORTS[i]} tls_flags=()
    mapfile -t tls_flags < <(etcd_tls_flags $((i + 1)))
    # No durability flags: etcd's default fsyncs the WAL on every commit, which is what a
    # registry that survives power loss has to pay for and what Cairn is compared against.
    etcd --name "$name" --data-dir "$WORK_DIR/$TRANSPORT-$name" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$initial" --initial-cluster-state new \
      --initial-cluster-token "cairn-bench-$$-$NONCE-$TRANSPORT" \
      ${tls_flags[@]+"${tls_flags[@]}"} \
      --logger zap --log-outputs stderr \
      >"$LOG_DIR/$TRANSPORT-$name.log" 2>&1 &
    ETCD_PIDS+=($!)
  done
  log "etcd ($TRANSPORT) started (pids ${ETCD_PIDS[*]}), clients $(etcd_endpoints)"

  local deadline=$((SECONDS + 60))
  while ! etcdctl_ endpoint health >/dev/null 2>&1; do
    for i in 0 1 2; do
      assert_alive "etcd$((i + 1))" "${ETCD_PIDS[i]}" "$LOG_DIR/$TRANSPORT-etcd$((i + 1)).log"
    done
    ((SECONDS < deadline)) || die "etcd not healthy after 60 s; see $LOG_DIR/$TRANSPORT-etcd*.log"
    sleep 0.5
  done
  log "etcd ($TRANSPORT) healthy"
  if tls; then
    check_mutual_tls "etcd peer port" "${ETCD_PEER_PORTS[0]}" "$PKI_DIR/etcd/node-2.pem" "$PKI_DIR/etcd/node-2-key.pem"
  fi
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
  out=$(curl_ -sS --max-time 5 -o - -w '\n%{http_code}' -H 'Content-Type: application/json' \
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
  read -r ok slack < <("${SUMMARISE[@]}" ok-count --system etcd --transport "$TRANSPORT" \
    "$RESULTS_DIR/runs.jsonl" "$RESULTS_DIR/warmup.jsonl")
  ok=$((ok + 1)) # the preflight key
  if ((count < ok)); then
    die "etcd ($TRANSPORT) holds $count bench keys but $ok puts succeeded: ids were reused"
  elif ((count > ok + slack)); then
    log "warning: etcd ($TRANSPORT) holds $count bench keys, more than the $ok successful puts + $slack in flight"
  else
    log "etcd ($TRANSPORT) check: $count keys for $ok successful puts (+ up to $slack in flight at wrk's stop)"
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

# The cairn agent flags of node ID (1..3) for the phase's transport. With TLS: mutual TLS on
# the cluster RPC, and the HTTPS API beside the plain one (which only the readiness and leader
# look-ups use); no --tls-client-ca, since wrk has no client certificate.
CAIRN_TLS_FLAGS_SHOWN="--ca-file --tls-cert --tls-key --https-addr"
cairn_tls_flags() {
  if acl; then
    printf '%s\n' --acl
    return 0
  fi
  tls || return 0
  printf '%s\n' --ca-file "$PKI_DIR/cairn-ca.pem" --tls-cert "$PKI_DIR/cairn/node-$1.pem" \
    --tls-key "$PKI_DIR/cairn/node-$1-key.pem" --https-addr "127.0.0.1:${CAIRN_HTTPS_PORTS[$1 - 1]}"
}

start_cairn_cluster() {
  local i peers=""
  for i in 0 1 2; do peers+="$((i + 1))=127.0.0.1:${CAIRN_RPC_PORTS[i]},"; done
  peers=${peers%,}
  check_ports_free "${CAIRN_HTTP_PORTS[@]}" "${CAIRN_RPC_PORTS[@]}" "${CAIRN_DNS_PORTS[@]}"
  tls && check_ports_free "${CAIRN_HTTPS_PORTS[@]}"
  for i in 0 1 2; do
    local id=$((i + 1)) name=$TRANSPORT-cairn$((i + 1)) tls_flags=()
    mapfile -t tls_flags < <(cairn_tls_flags "$id")
    mkdir -p "$WORK_DIR/$name"
    "$CAIRN_BIN" agent --node-id "$id" --data-dir "$WORK_DIR/$name" \
      --http-addr "127.0.0.1:${CAIRN_HTTP_PORTS[i]}" --rpc-addr "127.0.0.1:${CAIRN_RPC_PORTS[i]}" \
      --dns-addr "127.0.0.1:${CAIRN_DNS_PORTS[i]}" --peers "$peers" ${tls_flags[@]+"${tls_flags[@]}"} \
      >"$LOG_DIR/$name.out" 2>"$LOG_DIR/$name.log" &
    CAIRN_PIDS+=($!)
  done
  log "cairn ($TRANSPORT) started (pids ${CAIRN_PIDS[*]}), http ports ${CAIRN_HTTP_PORTS[*]}$(
    tls && printf ', https ports %s' "${CAIRN_HTTPS_PORTS[*]}")"

  # Each node announces itself with its listening line on stdout; one 30 s deadline for all.
  local deadline=$((SECONDS + 30))
  for i in 0 1 2; do
    local name=$TRANSPORT-cairn$((i + 1)) https=()
    tls && https=("${CAIRN_HTTPS_PORTS[i]}")
    wait_cairn_listening "$name" "${CAIRN_PIDS[i]}" "$LOG_DIR/$name.out" \
      "$LOG_DIR/$name.log" "$deadline" 0.2 \
      $((i + 1)) "${CAIRN_HTTP_PORTS[i]}" "${CAIRN_DNS_PORTS[i]}" "${CAIRN_RPC_PORTS[i]}" \
      ${https[@]+"${https[@]}"}
  done

  # /v1/ready is 200 once a node knows a leader; wait for all three so the cluster is settled.
  deadline=$((SECONDS + 60))
  for i in 0 1 2; do
    wait_cairn_ready "$TRANSPORT-cairn$((i + 1))" "${CAIRN_PIDS[i]}" "$LOG_DIR/$TRANSPORT-cairn$((i + 1)).log" \
      "$deadline" 0.2 "${CAIRN_HTTP_PORTS[i]}"
  done
  log "cairn ($TRANSPORT) ready"
  if tls; then
    check_mutual_tls "cairn RPC" "${CAIRN_RPC_PORTS[0]}" "$PKI_DIR/cairn/node-2.pem" "$PKI_DIR/cairn/node-2-key.pem"
  fi
}

# Prints the base URL of the Cairn leader's API, HTTPS in the TLS phase. Asks each node's
# /v1/cluster (plain HTTP) for the leader id, then confirms with the leader itself (its node_id
# and leader agree), retrying for up to 30 s.
cairn_leader_url() {
  local deadline=$((SECONDS + 30)) i leader json admin=()
  # With ACLs on, /v1/cluster needs operator:read: the management token.
  [[ -n $CAIRN_ADMIN_TOKEN ]] && admin=(-H "X-Cairn-Token: $CAIRN_ADMIN_TOKEN")
  while ((SECONDS < deadline)); do
    for i in 0 1 2; do
      json=$(curl -sf --max-time 2 ${admin[@]+"${admin[@]}"} "http://127.0.0.1:${CAIRN_HTTP_PORTS[i]}/v1/cluster") || continue
      leader=$(python3 -c 'import json,sys; l=json.load(sys.stdin).get("leader"); print(l if isinstance(l,int) else "")' <<<"$json" 2>/dev/null) || continue
      [[ $leader =~ ^[123]$ ]] || continue
      local url=http://127.0.0.1:${CAIRN_HTTP_PORTS[leader - 1]}
      json=$(curl -sf --max-time 2 ${admin[@]+"${admin[@]}"} "$url/v1/cluster") || continue
      if python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d.get("node_id")==d.get("leader")=='"$leader"' else 1)' <<<"$json" 2>/dev/null; then
        tls && url=https://127.0.0.1:${CAIRN_HTTPS_PORTS[leader - 1]}
        printf '%s\n' "$url"
        return 0
      fi
    done
    sleep 0.5
  done
  die "no cairn leader found within 30 s (GET /v1/cluster)"
}

# ACL phases: bootstrap the cluster through its leader, found with /v1/status/leader (which
# needs no token) as "127.0.0.1:<rpc port>"; acl_tool.py makes the policy, the load token and
# fills the registry up to TOKENS tokens. Sets CAIRN_ADMIN_TOKEN and CAIRN_LOAD_TOKEN.
ACL_META=()
cairn_acl_setup() {
  local tokens=$1 deadline=$((SECONDS + 30)) addr i url="" out=$RESULTS_DIR/acl-$TRANSPORT.json
  while [[ -z $url ]] && ((SECONDS < deadline)); do
    addr=$(curl -sf --max-time 2 "http://127.0.0.1:${CAIRN_HTTP_PORTS[0]}/v1/status/leader") || addr=""
    for i in 0 1 2; do
      [[ $addr == "\"127.0.0.1:${CAIRN_RPC_PORTS[i]}\"" ]] && url=http://127.0.0.1:${CAIRN_HTTP_PORTS[i]}
    done
    [[ -n $url ]] || sleep 0.5
  done
  [[ -n $url ]] || die "no cairn leader in /v1/status/leader within 30 s"
  log "cairn ($TRANSPORT): ACL bootstrap at $url, policy, load token, $tokens tokens in all"
  python3 "$SCRIPT_DIR/acl_tool.py" setup --url "$url" --service bench --access write \
    --tokens "$tokens" --out "$out" || die "preparing the ACLs of cairn ($TRANSPORT) failed"
  CAIRN_ADMIN_TOKEN=$(acl_field "$out" management)
  CAIRN_LOAD_TOKEN=$(acl_field "$out" load)
  if [[ $TRANSPORT == acl ]]; then
    ACL_META+=(--meta "acl_tokens_few=$(acl_field "$out" tokens)")
  else
    ACL_META+=(--meta "acl_tokens_many=$(acl_field "$out" tokens)"
      --meta "acl_create_count=$(acl_field "$out" created)"
      --meta "acl_create_seconds=$(acl_field "$out" create_seconds)"
      --meta "acl_create_rate=$(acl_field "$out" create_rate)"
      --meta "acl_create_connections=$(acl_field "$out" connections)"
      --meta "acl_rule=$(acl_field "$out" rules)")
  fi
}

# acl_field FILE KEY: one field of acl_tool.py's output, JSON text for objects.
acl_field() {
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print(v if isinstance(v,(str,int,float)) else json.dumps(v))' "$1" "$2"
}

# One registration before the load: must be HTTP 200 with body {"index":N}.
cairn_preflight() {
  local url=$1 out auth=()
  [[ -n $CAIRN_LOAD_TOKEN ]] && auth=(-H "X-Cairn-Token: $CAIRN_LOAD_TOKEN")
  out=$(curl_ -sS --max-time 5 -o - -w '\n%{http_code}' -H 'Content-Type: application/json' ${auth[@]+"${auth[@]}"} \
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
  local out="$RESULTS_DIR/$system-$TRANSPORT-c$conns-$label.txt"
  # The id prefix is unique per run: r<run>c<connections>-<nonce>, or w-<nonce> for warm-up.
  local id_prefix=${label}c$conns-$NONCE
  [[ $label == warmup ]] && id_prefix=w-$NONCE
  # wrk sends the URL's host as TLS SNI even when it is an IP address, which rustls logs as a
  # warning on every connection; "localhost" is a name both systems' certificates carry. (wrk
  # drops any address of a name that refuses connections, so a ::1 for localhost is harmless.)
  tls && url=${url/#https:\/\/127.0.0.1:/https://localhost:}
  # timeout: wrk stops itself after -d, the extra minute only guards against a wedged wrk.
  if ! timeout --kill-after=10 $((duration + 60)) \
    wrk --latency -t "$threads" -c "$conns" -d "${duration}s" --timeout "${BENCH_TIMEOUT}s" \
    -s "$LUA_SCRIPT" "$url" -- "$system" "$id_prefix" "$REG_DOC" "$ETCD_KEY_PREFIX" "$CAIRN_LOAD_TOKEN" \
    >"$out" 2>&1; then
    tail -n 20 "$out" >&2 || true
    die "wrk failed for $system ($TRANSPORT) c=$conns $label (output in $out)"
  fi
  "${SUMMARISE[@]}" record --runs "$runs_file" --wrk-output "$out" --system "$system" --transport "$TRANSPORT" \
    --connections "$conns" --threads "$threads" --run "$run" --label "$label" --target "$url" >&2
}

# bench_system SYSTEM: warm-up, then BENCH_RUNS rounds over all connection counts. Rounds are
# the outer loop so the runs of one connection count are spread over the whole session rather
# than back to back, which keeps slow drift (compaction, page cache) from favouring one row.
bench_system() {
  local system=$1 url run c
  url=$("${system}_leader_url")
  log "$system ($TRANSPORT) leader: $url"
  "${system}_preflight" "$url"
  if tls; then
    TLS_SESSIONS+=("$system=$(tls_session "$url")")
    log "$system TLS session with OpenSSL's defaults: ${TLS_SESSIONS[-1]#*=}"
  fi
  if ((BENCH_WARMUP > 0)); then
    log "$system ($TRANSPORT) warm-up: ${BENCH_WARMUP} s at 64 connections (not recorded)"
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
if wants cairn || ((BENCH_TLS)); then ensure_cairn_bin; fi

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS_DIR=$REPO_ROOT/bench/results/$STAMP
LOG_DIR=$RESULTS_DIR/logs
mkdir -p "$LOG_DIR"
# Data dirs live on the default temp filesystem (tmpfs would make fsync free; it is recorded).
WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench.XXXXXX")
ulimit -n 65536 2>/dev/null || true # 256 connections plus three servers' files

LOAD_AT_START=$(load_average)
warn_if_loaded "$LOAD_AT_START"
log "results in $RESULTS_DIR; data in $WORK_DIR; $BENCH_RUNS runs x ${BENCH_DURATION} s at connections ${CONNECTIONS[*]}; phases ${PHASES[*]}"

((BENCH_TLS)) && make_pki
TLS_SESSIONS=()
for phase in "${PHASES[@]}"; do
  TRANSPORT=${phase#*:}
  case ${phase%:*} in
    etcd)
      start_etcd_cluster
      bench_system etcd
      etcd_verify
      # Stop each cluster before the next starts, so no system's background work eats
      # another's CPU.
      stop_pids "${ETCD_PIDS[@]}"
      ETCD_PIDS=()
      ;;
    cairn)
      start_cairn_cluster
      case $TRANSPORT in
        acl) cairn_acl_setup "$ACL_FEW_TOKENS" ;;
        acl-many) cairn_acl_setup "$BENCH_ACL_TOKENS" ;;
      esac
      bench_system cairn
      stop_pids "${CAIRN_PIDS[@]}"
      CAIRN_PIDS=()
      CAIRN_ADMIN_TOKEN=""
      CAIRN_LOAD_TOKEN=""
      ;;
  esac
done

# --- Report. ---
cairn_commit=n/a
wants cairn && cairn_commit=$(git_commit)
output_args=()
((BENCH_WRITE)) && output_args=(--output "$BENCH_OUTPUT")
tls_meta=()
if ((BENCH_TLS)); then
  phases_text=""
  for phase in "${PHASES[@]}"; do
    name=${phase%:*}
    [[ $name == cairn ]] && name=Cairn
    [[ $phase == *:tls ]] && name+=" TLS"
    phases_text+="${phases_text:+, }$name"
  done
  tls_meta=(--meta "tls_certs=$PKI_COMMANDS" --meta "tls_key=$(cert_key_type "$PKI_DIR/cairn/node-1.pem")"
    --meta "cairn_tls_flags=$CAIRN_TLS_FLAGS_SHOWN" --meta "etcd_tls_flags=$ETCD_TLS_FLAGS_SHOWN"
    --meta "phases=$phases_text")
  for session in ${TLS_SESSIONS[@]+"${TLS_SESSIONS[@]}"}; do
    tls_meta+=(--meta "tls_session_${session%%=*}=${session#*=}")
  done
fi

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
  ${tls_meta[@]+"${tls_meta[@]}"} \
  ${ACL_META[@]+"${ACL_META[@]}"} \
  --meta "results_dir=${RESULTS_DIR#"$REPO_ROOT"/}/"
