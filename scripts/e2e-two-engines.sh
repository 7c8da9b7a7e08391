#!/usr/bin/env bash
# End to end with two engines: two servers on the engine under test
# (default cuda, which then share the GPU) and two `serve --engine cpu` processes over one table file of 200,000 CSV records;
# the same `get` of 121 keys through each pair must give identical answers,
# and every present key its source value. Run on a machine with a GPU:
#   scripts/e2e-two-engines.sh [path/to/morphogen] [engine, default cuda]
# Server logs go to $OUT (default: the temporary directory).
set -euo pipefail
bin=${1:-target/release/morphogen}
engine=${2:-cuda}
work=$(mktemp -d)
OUT=${OUT:-$work}
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
python3 - "$work/records.csv" <<'PY'
import sys, hashlib
with open(sys.argv[1], "w") as f:
    f.write("key,value\n")
    for i in range(200000):
        k = hashlib.sha256(b"k%d" % i).hexdigest()
        v = hashlib.sha256(b"v%d" % i).hexdigest()
        f.write(f"{k},{v}\n")
PY
$bin build --input "$work/records.csv" --output "$work/t.mgdb"
$bin inspect "$work/t.mgdb"
$bin serve --db "$work/t.mgdb" --listen 127.0.0.1:9001 --engine "$engine" > "$OUT/serve_a.log" 2>&1 &
$bin serve --db "$work/t.mgdb" --listen 127.0.0.1:9002 --engine "$engine" > "$OUT/serve_b.log" 2>&1 &
$bin serve --db "$work/t.mgdb" --listen 127.0.0.1:9003 --engine cpu > /dev/null 2>&1 &
$bin serve --db "$work/t.mgdb" --listen 127.0.0.1:9004 --engine cpu > /dev/null 2>&1 &
for port in 9001 9002 9003 9004; do
  for _ in $(seq 100); do python3 -c "import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:$port/v1/health\")" 2>/dev/null && break; sleep 0.2; done
done
keys=$(python3 -c '
import hashlib
ks=[hashlib.sha256(b"k%d" % i).hexdigest() for i in range(0,200000,1999)]
ks+=[hashlib.sha256(b"absent%d" % i).hexdigest() for i in range(20)]
print(" ".join(ks))')
$bin get --server http://127.0.0.1:9001 --server http://127.0.0.1:9002 --json $keys > "$work/cuda.json"
$bin get --server http://127.0.0.1:9003 --server http://127.0.0.1:9004 --json $keys > "$work/cpu.json"
python3 - "$work/cuda.json" "$work/cpu.json" "$engine" <<'PY'
import sys, json, hashlib
cuda, cpu = (json.load(open(p)) for p in sys.argv[1:3])
expected = {hashlib.sha256(b"k%d" % i).hexdigest(): hashlib.sha256(b"v%d" % i).hexdigest() for i in range(0,200000,1999)}
assert cuda == cpu, "the two engines' answers differ"
found = sum(1 for r in cuda if r["value"] is not None)
right = sum(1 for r in cuda if r["key"] in expected and expected[r["key"]] == r["value"])
print(f"e2e: {len(cuda)} lookups, {found} found, {right} equal to the source records; {sys.argv[3]} answers == cpu answers")
assert right == len(expected) and found == len(expected)
PY
grep -h "scan engine" "$OUT/serve_a.log" | head -1
