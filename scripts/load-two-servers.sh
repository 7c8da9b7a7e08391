#!/usr/bin/env bash
# Continuous batching under load, as docs/PERFORMANCE.md reports it: two
# servers on this machine over a 256 MiB table of synthetic records, each
# with half the CPU cores, and `morphogen load` at the given concurrencies
# (default 1 and 32, 20 s each), then an overload run (400 clients, a queue
# of 16 queries, 2 s deadlines). JSON reports and server logs go to $OUT.
#   scripts/load-two-servers.sh [path/to/morphogen] [concurrency...]
set -euo pipefail
bin=${1:-target/release/morphogen}
shift || true
levels=${*:-1 32}
work=$(mktemp -d)
OUT=${OUT:-$work}
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
threads=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
records=254000
$bin build --synthetic $records --value-size 1016 --output "$work/t.mgdb"

# Every client of the load generator has this machine's address: lift the
# per-client connection limit to the whole limit.
serve_pair() {  # extra serve options...
  local common=(--engine cpu --cpu-threads $threads --max-connections-per-client 1024)
  $bin serve --db "$work/t.mgdb" --listen 127.0.0.1:9011 "${common[@]}" "$@" > "$OUT/serve_a.log" 2>&1 &
  $bin serve --db "$work/t.mgdb" --listen 127.0.0.1:9012 "${common[@]}" "$@" > "$OUT/serve_b.log" 2>&1 &
  for log in "$OUT/serve_a.log" "$OUT/serve_b.log"; do
    for _ in $(seq 200); do grep -q "serving address" "$log" && break; sleep 0.1; done
  done
}
load() {  # name, load options...
  local name=$1; shift
  $bin load --server http://127.0.0.1:9011 --server http://127.0.0.1:9012 --synthetic $records \
    --json "$OUT/$name.json" "$@"
}

serve_pair
for c in $levels; do load "c$c" --concurrency "$c" --duration 20; done
kill $(jobs -p); wait || true

serve_pair --max-batch 8 --max-queue 16
load overload --concurrency 400 --duration 20 --timeout 2
