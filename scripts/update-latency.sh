#!/usr/bin/env bash
# Acknowledgement time of update batches of 1,000 changes on a 253 MiB
# table (6.4 million records of 32-byte values), idle and under lookups,
# next to the server's pass time; docs/PERFORMANCE.md has the results.
#   scripts/update-latency.sh [path/to/morphogen] [work dir]
set -euo pipefail
BIN=$(realpath "${1:-target/release/morphogen}")
WORK=${2:-$(mktemp -d)}
N=6400000
cd "$WORK"
if [ ! -f t.mgdb ]; then
    awk -v n=$N 'BEGIN { print "key,value"; for (i = 0; i < n; i++) printf "%08x,%064x\n", 2 * i, i }' > records.csv
    "$BIN" build --input records.csv --output t.mgdb | tail -1
fi
rm -f t.mgdb.log
# Ten batches of 1,000 changes to random existing keys, a fifth of them deletions.
for b in $(seq 1 10); do
    awk -v n=$N -v seed=$b 'BEGIN { srand(seed); print "key,value";
        for (i = 0; i < 1000; i++) { k = int(rand() * n) * 2;
            if (rand() < 0.2) printf "%08x,\n", k; else printf "%08x,%016x%016x%016x%016x\n", k, rand()*2^52, rand()*2^52, rand()*2^52, rand()*2^52 } }' > ch$b.csv
done
echo "latency test token" > token
"$BIN" serve --db t.mgdb --listen 127.0.0.1:18181 --engine cpu --admin-token-file token 2> serve.log &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
until grep -q 'serving address' serve.log; do sleep 0.2; done
URL=http://127.0.0.1:18181
update() { "$BIN" update --admin $URL --token-file token --input ch$1.csv | sed "s/^/batch $1 ($2): /"; }
for b in 1 2 3 4 5; do update $b idle; done
# Lookups from 8 concurrent clients of 32 keys each while batches 6-10 arrive.
KEYS=$(seq 0 31 | awk '{ printf "%08x ", $1 * 2 }')
for c in $(seq 8); do ( while [ ! -f stop ]; do "$BIN" get --server $URL --server $URL $KEYS > /dev/null; done ) & done
sleep 2
for b in 6 7 8 9 10; do update $b "under lookups"; sleep 0.5; done
touch stop; wait $(jobs -p | grep -v $SERVER) 2>/dev/null || true
curl -s $URL/metrics | grep -E '^morphogen_(update_apply_seconds|pass_duration_seconds)_(sum|count)|^morphogen_batch_size_(sum|count)'
rm -f stop
