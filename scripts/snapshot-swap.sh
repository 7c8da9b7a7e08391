#!/usr/bin/env bash
# A snapshot swap under continuous checked lookups, then a SIGKILL and a
# restart of one server on the swapped-in snapshot.
#
# Two servers, each with its own snapshot directory holding two tables of
# the same N synthetic records built with different parameters (page size,
# sub-tables), so that a client must re-read the servers' metadata and make
# its keys anew at the swap. `morphogen load` looks keys up and checks every
# value throughout; `morphogen snapshot` swaps both servers halfway; an
# update batch follows, and must survive the restart.
#   scripts/snapshot-swap.sh [path/to/morphogen] [engine] [records] [work dir]
set -euo pipefail
BIN=$(realpath "${1:-target/release/morphogen}")
ENGINE=${2:-cpu}
N=${3:-1000000}
WORK=${4:-$(mktemp -d)}
mkdir -p "$WORK"
cd "$WORK"
rm -rf a b ./*.log
mkdir a b
"$BIN" build --synthetic "$N" --page-size 4096 --choices 2 --output a/old.mgdb | tail -1
"$BIN" build --synthetic "$N" --page-size 8192 --choices 3 --output a/new.mgdb | tail -1
cp a/old.mgdb a/new.mgdb b/
echo "swap test token" > token
THREADS=()
if [ "$ENGINE" = cpu ]; then THREADS=(--cpu-threads $(( ($(nproc) + 1) / 2 ))); fi
serve() { # dir port
    "$BIN" serve --db "$1/old.mgdb" --snapshot-dir "$1" --listen 127.0.0.1:$2 --engine "$ENGINE" \
        "${THREADS[@]}" --admin-token-file token > /dev/null 2>> "$1.log" &
    echo $!
}
serving() { until grep -q 'serving address' "$1.log"; do sleep 0.2; done; }
A=http://127.0.0.1:18281; B=http://127.0.0.1:18282
PA=$(serve a 18281); PB=$(serve b 18282)
trap 'kill $PA $PB 2>/dev/null' EXIT
serving a; serving b
grep -m1 'scan engine' a.log | sed 's/.*scan engine/scan engine/'

"$BIN" load --server $A --server $B --synthetic "$N" --concurrency 16 --duration 20 --json load-swap.json > load-swap.txt &
LOAD=$!
sleep 6
"$BIN" snapshot --admin $A --admin $B --token-file token --file new.mgdb
wait $LOAD
echo "== lookups across the swap"; cat load-swap.txt
for server in $A $B; do
    curl -s $server/metrics | grep -E '^morphogen_snapshot_(load_seconds_(sum|count)|swaps_total)|^morphogen_requests_total\{outcome="snapshot_changed"\}' | sed "s|^|$server |"
done

echo "== an update batch to the new snapshot: a key the synthetic records do not hold"
KEY=$(printf 'ab%.0s' $(seq 32))
printf 'key,value\n%s,0123456789abcdef\n' "$KEY" > change.csv
"$BIN" update --admin $A --admin $B --token-file token --input change.csv

echo "== SIGKILL server a, restart it with the same command line"
kill -9 $PA; wait $PA 2>/dev/null || true
PA=$(serve a 18281)
until [ "$(grep -c 'serving address' a.log)" -ge 2 ]; do sleep 0.2; done
grep -E 'not --db' a.log | sed 's/.*INFO/INFO/'
meta() { curl -s "$1/v1/meta" | grep -oE "\"($2)\":(\"[0-9a-f]*\"|[0-9]+)" | tr '\n' ' '; }
echo "a: $(meta $A 'epoch|snapshot_digest|page_size')"
echo "b: $(meta $B 'epoch|snapshot_digest|page_size')"
"$BIN" get --server $A --server $B "$KEY" | cut -c1-8,65-
# The load test counts the records: delete the extra key again (epoch 3).
printf 'key,value\n%s,\n' "$KEY" > change.csv
"$BIN" update --admin $A --admin $B --token-file token --input change.csv | cut -d, -f1-3
"$BIN" load --server $A --server $B --synthetic "$N" --concurrency 16 --duration 5 > load-restart.txt
echo "== lookups after the restart"; cat load-restart.txt
