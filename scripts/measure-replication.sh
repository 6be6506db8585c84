#!/usr/bin/env bash
# Measures replication on loopback with the release binary, outside the tests:
#   1. seal-to-applied: the time from starting `walship seal` on a primary whose open segment
#      holds ~15.5 MiB (16 MiB segments) until a connected standby's applied_lsn reaches the
#      primary's flush_lsn; median, min and max over RUNS runs;
#   2. catch-up: a fresh standby copying, verifying, storing and applying 1 GiB of sealed
#      16 MiB segments (just written, so in the primary's page cache); bytes per second.
# Usage: scripts/measure-replication.sh [RUNS] [PARENT_DIR]    (build first: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${WALSHIP:-$PWD/target/release/walship}
runs=${1:-9}
work=$(mktemp -d "${2:-${TMPDIR:-/tmp}}/walship-repl.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

now_ns() { date +%s%N; }
applied() { sed -n 's/.*"applied_lsn": *\([0-9]*\).*/\1/p' "$1/state/applied.json" 2>/dev/null || true; }
flush() { "$W" status "$1" --json | sed 's/.*"flush_lsn":\([0-9]*\).*/\1/'; }
# N lines of 1000 bytes each: 1040 bytes per record on disk.
lines() { awk -v n="$1" 'BEGIN { s = sprintf("%992s", ""); gsub(/ /, "x", s); for (i = 0; i < n; i++) printf "%07d-%s\n", i, s }'; }
wait_applied() { # DIR TARGET
  local a
  while :; do
    a=$(applied "$1")
    [ "${a:-0}" -ge "$2" ] && return
  done
}
start_serve() { # DIR OUTFILE: sets $addr
  "$W" serve "$1" --listen 127.0.0.1:0 >"$2" 2>"$2.log" &
  pids+=($!)
  until grep -q '^listening on ' "$2" 2>/dev/null; do sleep 0.05; done
  addr=$(sed -n 's/^listening on //p' "$2")
}

echo "== seal to applied, 16 MiB segments, $runs runs"
"$W" init "$work/p1" --segment-size 16MiB >/dev/null
start_serve "$work/p1" "$work/serve1.out"
"$W" standby "$work/s1" --primary "$addr" 2>"$work/s1.log" &
pids+=($!)
until [ -f "$work/s1/control" ]; do sleep 0.05; done
times=()
for i in $(seq 1 "$runs"); do
  lines 15627 | "$W" write "$work/p1" >/dev/null
  target=$(flush "$work/p1")
  t0=$(now_ns)
  "$W" seal "$work/p1" >/dev/null
  t1=$(now_ns)
  wait_applied "$work/s1" "$target"
  t2=$(now_ns)
  ms=$(( (t2 - t0) / 1000000 ))
  echo "run $i: seal command $(( (t1 - t0) / 1000000 )) ms, seal to applied $ms ms"
  times+=("$ms")
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
echo "seal to applied: median ${sorted[$(( runs / 2 ))]} ms (min ${sorted[0]}, max ${sorted[$(( runs - 1 ))]})"

echo "== catch-up of 1 GiB of sealed segments"
"$W" init "$work/p2" --segment-size 16MiB >/dev/null
lines 1032444 | "$W" write "$work/p2" >/dev/null
"$W" seal "$work/p2" >/dev/null || true
bytes=$(cat "$work"/p2/wal/*.wal | wc -c)
segs=$(ls "$work"/p2/wal/*.wal | wc -l)
target=$(flush "$work/p2")
start_serve "$work/p2" "$work/serve2.out"
t0=$(now_ns)
"$W" standby "$work/s2" --primary "$addr" 2>"$work/s2.log" &
pids+=($!)
wait_applied "$work/s2" "$target"
t1=$(now_ns)
ms=$(( (t1 - t0) / 1000000 ))
cmp <(cat "$work"/p2/wal/*.wal) <(cat "$work"/s2/wal/*.wal) && echo "standby copy is byte-identical"
echo "catch-up: $segs segments, $bytes bytes in $ms ms: $(( bytes / 1048576 * 1000 / ms )) MiB/s"
