#!/usr/bin/env bash
# Runs every fuzz target (or those in TARGETS) for SECONDS each (default 60), starting from the
# committed seeds: ./run.sh 600, or TARGETS=record_decoder ./run.sh 600.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets it
# use the sanitizer flags it needs.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
export RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-1}
# The recovery target makes real data directories: on tmpfs their fsyncs cost nothing.
[ -d /dev/shm ] && export TMPDIR=${TMPDIR:-/dev/shm}
targets=${TARGETS:-$(cargo fuzz list)}
for t in $targets; do
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  echo "== $t for ${secs}s"
  cargo fuzz run -O "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+.*DONE)|ERROR|panicked' || true
done
