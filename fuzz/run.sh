#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from the committed seeds.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets it
# use the sanitizer flags it needs.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
export RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-1}
for t in $(cargo fuzz list); do
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  echo "== $t for ${secs}s"
  cargo fuzz run -O "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+.*DONE)|ERROR|panicked' || true
done
