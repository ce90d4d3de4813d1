#!/usr/bin/env bash
# Fuzzing smoke run: build every cargo-fuzz target in fuzz/ (libFuzzer,
# AddressSanitizer, debug assertions) and run each for a few seconds from its
# checked-in seed corpus. A crash, a failed invariant, a leak or a timeout
# fails the run; the input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz-smoke.sh              every target, FUZZ_SECONDS (default 20) each
#   scripts/fuzz-smoke.sh manifest     only the named targets
#
# Installs cargo-fuzz when missing; needs the nightly toolchain (libFuzzer's
# instrumentation flags are nightly-only). New corpus entries go to
# fuzz/work/<target>/ (ignored by git), never into the checked-in seeds.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECONDS:-20}
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "error: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install --locked cargo-fuzz
fi
# Instrumented builds never share the workspace's target directory.
export CARGO_TARGET_DIR="$PWD/target"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
start=$(date +%s)
cargo +nightly fuzz build
echo "fuzz: built ${#targets[@]} targets in $(($(date +%s) - start))s"
passed=0 failed=0
for t in "${targets[@]}"; do
  rm -rf "work/$t"
  mkdir -p "work/$t"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: 2 GiB is a leak or a bomb.
  if cargo +nightly fuzz run "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"work/$t.log" 2>&1; then
    passed=$((passed + 1))
    echo "fuzz: $t ok: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "work/$t.log" | grep -o '[0-9]*$') execs in ${secs}s"
  else
    failed=$((failed + 1))
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/):" >&2
    tail -n 60 "work/$t.log" >&2
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
