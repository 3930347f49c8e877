#!/usr/bin/env bash
# The fuzz targets (fuzz/, cargo fuzz with libFuzzer and AddressSanitizer, nightly Rust).
#
#   scripts/fuzz.sh smoke          every target for 10 seconds from its seeds (the test command runs this)
#   scripts/fuzz.sh run [SECONDS]  every target for SECONDS (600) each, two at a time; prints a table
#                                  of executions and crashes (the README's table comes from it)
#   scripts/fuzz.sh run SECONDS TARGET...   only those targets
#
# A crash leaves its input in fuzz/artifacts/<target>/; reproduce it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

TARGETS=(decode_pgoutput decode_wal2json replication_wire gateway_request gateway_token gateway_session action_template event_stub amqp_url)

ensure_fuzzer
mode=${1:-smoke}
seconds=${2:-600}
if [ "$mode" = smoke ]; then seconds=10; fi
if [ $# -gt 2 ]; then TARGETS=("${@:3}"); fi

(cd fuzz && cargo +nightly fuzz build -O >&2)

results=$(mktemp -d)
run_target() {
  local target=$1 log="$results/$1.log"
  (cd fuzz && cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096) >"$log" 2>&1 || true
}

# Two at a time (one per core).
for ((i = 0; i < ${#TARGETS[@]}; i += 2)); do
  run_target "${TARGETS[i]}" &
  if [ $((i + 1)) -lt ${#TARGETS[@]} ]; then run_target "${TARGETS[i + 1]}" & fi
  wait
done

failed=0
printf '| target | seconds | executions | crashes |\n| --- | ---: | ---: | ---: |\n'
for target in "${TARGETS[@]}"; do
  log="$results/$target.log"
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | awk '{print $2}' | tail -1)
  crashes=$(grep -c 'Test unit written to .*/\(crash\|leak\|oom\|timeout\)-' "$log" || true)
  printf '| `%s` | %s | %s | %s |\n' "$target" "$seconds" "${execs:-?}" "$crashes"
  if [ -z "$execs" ] || [ "$crashes" != 0 ]; then
    failed=1
    echo "fuzz target $target failed; its log:" >&2
    tail -40 "$log" >&2
  fi
done
rm -rf "$results"
exit $failed
