#!/usr/bin/env bash
# Runs each fuzz target for a time or a number of executions and prints, per target, the
# executions, executions per second, crashes and corpus size.
#
#   fuzz/run.sh                      # every target, 60 s each
#   fuzz/run.sh -t 600 dns_query     # one target, ten minutes
#   fuzz/run.sh -n 10000000          # every target, ten million executions each
#   fuzz/run.sh -B -t 30             # without building first (the build waits for the lock)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Targets build once, under
# the machine's build lock, without a sanitizer (the code under test forbids `unsafe`, so what
# fuzzing finds is a panic or a broken property, both of which abort) and with debug assertions.
# Each target starts from its committed corpus (corpus/<target>, read only) and keeps what it finds
# in work/<target>; a crash's input goes to artifacts/<target>/. To keep new inputs, minimise them
# into the committed corpus (it stays small: CI replays it on every test run):
#
#   cargo +nightly fuzz cmin -s none <target> corpus/<target> work/<target>   (merges in place)
set -euo pipefail
cd "$(dirname "$0")"

seconds=60
runs=
build=1
while getopts "t:n:B" opt; do
  case $opt in
    B) build= ;;
    t) seconds=$OPTARG ;;
    n) runs=$OPTARG; seconds= ;;
    *) echo "usage: $0 [-B] [-t seconds | -n executions] [target...]" >&2; exit 64 ;;
  esac
done
shift $((OPTIND - 1))
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

if [[ -n $build ]]; then
  flock /tmp/cairn-build.lock cargo +nightly fuzz build -s none -a
fi
bin=target/x86_64-unknown-linux-gnu/release

limit=(-max_total_time="${seconds:-0}")
[[ -n $runs ]] && limit=(-runs="$runs")

printf '%-22s %10s %14s %10s %8s %8s\n' target seconds executions exec/s crashes corpus
status=0
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  log="work/$t.log"
  touch "work/$t.start"
  start=$(date +%s)
  "$bin/$t" "work/$t" "corpus/$t" "${limit[@]}" -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || status=1
  took=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  found=$(find "artifacts/$t" -type f -newer "work/$t.start")
  crashes=$(grep -c . <<<"$found" || true)
  corpus=$(find "work/$t" "corpus/$t" -type f | wc -l)
  printf '%-22s %10s %14s %10s %8s %8s\n' "$t" "$took" "${execs:-?}" "${rate:-?}" "$crashes" "$corpus"
  if (( crashes > 0 )); then
    grep -m5 -E "panicked at|ERROR: libFuzzer" "$log" | sed 's/^/    /'
    sed 's/^/    input: /' <<<"$found"
  fi
done
exit $status
