# shellcheck shell=bash
# Code shared by the benchmark drivers (bench/registrations.sh, dns.sh, checks.sh, reads.sh).
# Sourced, never run: `source "$SCRIPT_DIR/lib.sh"` right after SCRIPT_DIR is set.
#
# Before sourcing, a driver sets:
#   BENCH_LOG_TAG   the prefix of its log lines, e.g. "dns-bench" -> "[dns-bench 12:00:00] ..."
# After sourcing, it may define:
#   owned_pids      prints the PIDs of the processes it started and has not stopped yet; the
#                   exit trap stops exactly these, and other_benchmarks never counts them.
# and it sets WORK_DIR (a temp dir the exit trap removes) and RESULTS_DIR (named on failure).
#
# Everything here signals only PIDs the driver started itself, never processes found by name,
# and every wait loop has a deadline.

# The driver that sourced this file: its header comment is its --help text.
BENCH_SCRIPT=${BASH_SOURCE[1]}

# Every load generator here opens its connections from one address (127.0.0.1): lift the
# per-client connection caps that protect a node from one noisy client (README "Limits and
# protections"), or a 256-connection wrk run or 10,000 watchers would be refused at accept.
# The agents the drivers start read these from the environment, as they read every flag.
export CAIRN_HTTP_MAX_CONNS=${CAIRN_HTTP_MAX_CONNS:-20000}
export CAIRN_HTTP_MAX_CONNS_PER_CLIENT=${CAIRN_HTTP_MAX_CONNS_PER_CLIENT:-20000}
export CAIRN_DNS_TCP_MAX_CONNS_PER_CLIENT=${CAIRN_DNS_TCP_MAX_CONNS_PER_CLIENT:-512}
BENCH_LOG_TAG=${BENCH_LOG_TAG:-bench}
WORK_DIR=""
RESULTS_DIR=""

# --- Logging and the command line. ---

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH_LOG_TAG" -1 "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# usage: the driver's header comment, from line 2 down to `set -euo pipefail`.
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$BENCH_SCRIPT"; }

# no_arguments ARG...: the command line of a driver that takes no argument but --help.
no_arguments() {
  local arg
  for arg in "$@"; do
    case $arg in
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $arg" ;;
    esac
  done
}

# capture_command_line NAME VAR... -- ARG...: sets COMMAND_LINE to what was typed, as
# "VAR=value ... bench/NAME arg ...", listing only the VARs set in the environment. Call it
# before defaults are filled in, so the report shows the knobs the user chose, not the defaults.
capture_command_line() {
  local name=$1 var
  shift
  COMMAND_LINE=""
  while (($# > 0)) && [[ $1 != -- ]]; do
    var=$1
    shift
    if [[ -n ${!var+set} ]]; then COMMAND_LINE+="$var=$(printf '%q' "${!var}") "; fi
  done
  (($# > 0)) && shift # the --
  COMMAND_LINE+="bench/$name"
  for var in "$@"; do COMMAND_LINE+=" $(printf '%q' "$var")"; done
}

# --- Settings. ---

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# require_uint VAR...: each named setting is a whole number.
require_uint() {
  local var
  for var in "$@"; do
    is_uint "${!var}" || die "$var must be a whole number, got '${!var}'"
  done
}

# require_flag VAR...: each named setting is 0 or 1.
require_flag() {
  local var
  for var in "$@"; do
    [[ ${!var} == [01] ]] || die "$var must be 0 or 1, got '${!var}'"
  done
}

# --- Tools. ---

# ensure_packages CMD=PACKAGE...: installs (as root, with apt-get) the Debian packages of the
# commands that are missing, then checks the commands are there.
ensure_packages() {
  local pair cmd missing=()
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
  done
  ((${#missing[@]} == 0)) && return 0
  ((EUID == 0)) || die "missing packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}"
  log "installing ${missing[*]} with apt-get"
  # Bounded: a stuck mirror must not hang the benchmark forever.
  timeout 600 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "${missing[@]}" >/dev/null
  for pair in "$@"; do
    cmd=${pair%%=*}
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing ${pair#*=}"
  done
}

# require_cairn_bin MESSAGE: CAIRN_BIN is executable (else die with MESSAGE); makes it absolute,
# so it still works from the directories the servers are started in.
require_cairn_bin() {
  [[ -x $CAIRN_BIN ]] || die "$1"
  CAIRN_BIN=$(cd -- "$(dirname -- "$CAIRN_BIN")" && pwd)/$(basename -- "$CAIRN_BIN")
}

# --- Processes we own. ---

# stop_pids PID...: SIGTERM, up to 10 s for a clean exit, then SIGKILL; reaps them.
stop_pids() {
  local pid deadline
  (($# > 0)) || return 0
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 10))
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
}

# The exit trap: stop what the driver still owns (owned_pids), remove WORK_DIR, and on failure
# say where the logs are. INT and TERM exit through it with the usual 128+signal status.
cleanup() {
  local rc=$? pids=()
  trap - EXIT INT TERM
  if declare -F owned_pids >/dev/null; then read -r -a pids <<<"$(owned_pids)"; fi
  stop_pids ${pids[@]+"${pids[@]}"}
  if [[ -n $WORK_DIR && -d $WORK_DIR ]]; then rm -rf -- "$WORK_DIR"; fi
  ((rc == 0)) || log "failed (exit $rc); logs and raw output are in ${RESULTS_DIR:-<none yet>}"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# assert_alive NAME PID LOG: fail early, with the log tail, if a server died.
assert_alive() {
  kill -0 "$2" 2>/dev/null && return 0
  log "$1 (pid $2) exited; last lines of $3:"
  tail -n 30 "$3" >&2 || true
  die "$1 did not stay up"
}

# --- Ports. ---

# Set PORT_CHECK_UDP=1 for servers that listen on UDP (DNS): a UDP listener accepts no TCP
# connection, so it is looked up with ss as well.
PORT_CHECK_UDP=0

# port_in_use PORT: something accepts connections on 127.0.0.1:PORT (or, see above, listens on
# UDP there).
port_in_use() {
  timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0
  ((PORT_CHECK_UDP)) && ss -Hlun "sport = :$1" 2>/dev/null | grep -q . && return 0
  return 1
}

check_ports_free() {
  local p
  for p in "$@"; do
    ! port_in_use "$p" || die "127.0.0.1:$p is already in use; pick other ports with BENCH_PORT_BASE"
  done
}

# --- Cairn nodes. ---
# The CLI, output line and HTTP endpoints below are the contract agreed for `cairn agent`;
# if the binary changes them, this is the place to adapt.

# wait_cairn_listening NAME PID OUT ERRLOG DEADLINE SLEEP ID HTTP DNS RPC [HTTPS [REST]]: until
# the node prints exactly its "cairn listening ..." line on stdout (OUT). DEADLINE is a value of
# $SECONDS, so one deadline can cover several nodes. HTTPS: the port of --https-addr, if given
# (empty if not); REST: the end of the line after it, e.g. " dot=127.0.0.1:853 doh=...".
wait_cairn_listening() {
  local name=$1 pid=$2 out=$3 errlog=$4 deadline=$5 pause=$6
  local want="cairn listening node_id=$7 http=127.0.0.1:$8 dns=127.0.0.1:$9 rpc=127.0.0.1:${10}"
  [[ -n ${11:-} ]] && want+=" https=127.0.0.1:${11}"
  want+=${12:-}
  until grep -qxF -- "$want" "$out"; do
    assert_alive "$name" "$pid" "$errlog"
    ((SECONDS < deadline)) || die "$name did not print '$want' within 30 s; see $out and $errlog"
    sleep "$pause"
  done
}

# wait_cairn_ready NAME PID ERRLOG DEADLINE SLEEP HTTP: until GET /v1/ready answers 200, which
# it does once the node knows a leader.
wait_cairn_ready() {
  local name=$1 pid=$2 errlog=$3 deadline=$4 pause=$5 http=$6
  until [[ $(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/v1/ready") == 200 ]]; do
    assert_alive "$name" "$pid" "$errlog"
    ((SECONDS < deadline)) || die "$name not ready (GET /v1/ready != 200) after 60 s"
    sleep "$pause"
  done
}

# --- Other benchmarks on this machine (checks.sh, reads.sh). ---
# They set BENCH_WAIT_FOR (process names), BENCH_WAIT_MAX (seconds) and OTHER_SCRIPTS (an ERE
# for the command lines of the other drivers), and read UNDER_LOAD and WAITED for the report.
# shellcheck disable=SC2034 # read by the drivers
UNDER_LOAD="" WAITED=""

# other_benchmarks: prints "name(pid) ..." for running processes of another benchmark; empty if
# none. Our own children (owned_pids) never count, even if one has a listed name.
other_benchmarks() {
  local name pid own=" " found=()
  if declare -F owned_pids >/dev/null; then own=" $(owned_pids) "; fi
  for name in $BENCH_WAIT_FOR; do
    while read -r pid; do
      [[ -n $pid && $own != *" $pid "* ]] && found+=("$name($pid)")
    done < <(pgrep -x -- "$name" 2>/dev/null || true)
  done
  while read -r pid name; do
    [[ -n $pid ]] && found+=("$name($pid)")
  done < <(pgrep -af -- "$OTHER_SCRIPTS" 2>/dev/null | awk '{ print $1, $NF }' || true)
  printf '%s' "${found[*]:-}"
}

# wait_for_quiet: waits up to BENCH_WAIT_MAX s (checking every 10 s) while another benchmark
# runs, then 10 s more for the machine to settle. With WAIT_MAX_ZERO_SKIPS=1 (reads.sh, whose
# help says "0 = do not wait"), BENCH_WAIT_MAX=0 skips the wait and notes that another benchmark
# ran at the start; otherwise 0 still goes through the "still running after 0 s" path.
WAIT_MAX_ZERO_SKIPS=0
# shellcheck disable=SC2034 # WAITED is read by the drivers
wait_for_quiet() {
  local busy start=$SECONDS
  busy=$(other_benchmarks)
  [[ -z $busy ]] && return 0
  if ((WAIT_MAX_ZERO_SKIPS && BENCH_WAIT_MAX == 0)); then
    log "warning: another benchmark is running ($busy); BENCH_WAIT_MAX=0, measuring anyway"
    UNDER_LOAD+="another benchmark was running at the start ($busy). "
    return 0
  fi
  log "another benchmark is running ($busy); waiting up to $BENCH_WAIT_MAX s for it to finish"
  while [[ -n $busy ]] && ((SECONDS - start < BENCH_WAIT_MAX)); do
    sleep 10
    busy=$(other_benchmarks)
  done
  if [[ -n $busy ]]; then
    log "warning: still running after $BENCH_WAIT_MAX s ($busy); measuring anyway"
    UNDER_LOAD+="another benchmark was still running after waiting $BENCH_WAIT_MAX s ($busy). "
  else
    log "the other benchmark finished after $((SECONDS - start)) s; waiting 10 s more for the machine to settle"
    WAITED="waited $((SECONDS - start)) s for another benchmark to finish"
    sleep 10
  fi
}

# note_load WHAT: records in the report when another benchmark runs while we measure.
note_load() {
  local busy
  busy=$(other_benchmarks)
  if [[ -n $busy ]]; then
    log "warning: another benchmark is running during $1: $busy"
    UNDER_LOAD+="another benchmark ran during $1 ($busy). "
  fi
}

# --- Machine description for the report. ---

load_average() { cut -d' ' -f1-3 /proc/loadavg; }

# warn_if_loaded LOAD: a warning when the 1-minute load is above half the CPUs.
warn_if_loaded() {
  if awk -v l="${1%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    log "warning: load average is $1 on $(nproc) CPUs; other work will skew the results"
  fi
}

os_name() {
  # shellcheck disable=SC1091 # a system file, not part of this repo
  (. /etc/os-release 2>/dev/null && printf '%s' "${PRETTY_NAME:-unknown}") || printf unknown
}

cpu_model() {
  local model
  model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  printf '%s' "${model:-unknown}"
}

# fs_type DIR: the filesystem DIR is on (tmpfs would make fsync free, so the report says).
fs_type() { findmnt -no FSTYPE -T "$1" 2>/dev/null || stat -f -c %T "$1"; }

# git_commit: HEAD of the repo, marked when tracked files have uncommitted changes.
git_commit() {
  local commit
  if commit=$(git -C "$REPO_ROOT" rev-parse --short=12 HEAD 2>/dev/null); then
    [[ -z $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] ||
      commit+=" (with uncommitted changes)"
    printf '%s' "$commit"
  else
    printf 'unknown (no git commit)'
  fi
}

# repo_relative PATH: PATH without the leading "<repo>/", for paths shown in the report.
repo_relative() {
  local p=$1
  [[ $p == "$REPO_ROOT"/* ]] && p=${p#"$REPO_ROOT"/}
  printf '%s' "$p"
}
