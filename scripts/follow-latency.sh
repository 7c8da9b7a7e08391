#!/usr/bin/env bash
# How long a block of about 2,000 state changes takes to be readable on both
# servers once the follower has the block: an anvil node, two CPU servers of
# Ethereum tables whose accounts table is 1 GiB (eth build --headroom), and
# `eth follow`; blocks of 1,000 transfers to new accounts (each changes the
# sender, the new account and the fee recipient: 2,001 accounts), next to
# empty blocks in the same run. With --keep-up MINUTES instead, the node
# makes a block a second of 200 transfers for that long, and the follower's
# lag behind it is sampled every 10 seconds. docs/PERFORMANCE.md has the
# results.
#   scripts/follow-latency.sh [path/to/morphogen] [blocks | --keep-up MINUTES]
set -euo pipefail
BIN=$(realpath "${1:-target/release/morphogen}")
BLOCKS=${2:-5}
MINUTES=0
if [ "$BLOCKS" = --keep-up ]; then MINUTES=${3:-10}; fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ANVIL=$ROOT/tests/ethers/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
[ -x "$ANVIL" ] || npm ci --prefix "$ROOT/tests/ethers" --no-audit --no-fund
WORK=$(mktemp -d)
cd "$WORK"
SENDERS=1000
node -e '
const alloc = {};
for (let i = 0; i < '$SENDERS'; i++) alloc["0x" + (0x1000 + i).toString(16).padStart(40, "0")] = { balance: "0x3635c9adc5dea00000" };
require("fs").writeFileSync("genesis.json", JSON.stringify({ config: { chainId: 1337 }, gasLimit: "0x3938700", alloc }));'
MINING=--no-mining
HEADROOM=1300000
# Room for the 120,000 new accounts of 10 minutes.
if [ "$MINUTES" != 0 ]; then MINING="--block-time 1"; HEADROOM=$((MINUTES * 2000)); fi
"$ANVIL" --init genesis.json --port 18545 $MINING --accounts 0 --chain-id 1337 --gas-limit 60000000 > anvil.log 2>&1 &
PIDS=$!
trap 'kill $PIDS 2>/dev/null' EXIT
until grep -q 'Listening on' anvil.log; do sleep 0.2; done
NODE=http://127.0.0.1:18545
rpc() { curl -s -H 'content-type: application/json' "$NODE" -d "$1"; }
# The tables are built from the node's state at block 0 (with its system contracts).
rpc '{"jsonrpc":"2.0","id":1,"method":"anvil_dumpState","params":[]}' | node -e '
const zlib = require("zlib");
let input = ""; process.stdin.on("data", d => input += d).on("end", () => {
  const hex = JSON.parse(input).result.slice(2);
  const state = JSON.parse(zlib.gunzipSync(Buffer.from(hex, "hex")));
  require("fs").writeFileSync("state-0.json", JSON.stringify({ config: { chainId: 1337 }, number: "0x0", alloc: state.accounts }));
});'
# 1 GiB: 262,144 pages of 51 rows at the builder's 97% load, for ~1,000 records.
"$BIN" eth build --genesis state-0.json --output state --headroom $HEADROOM | tail -1
echo "follow latency test token" > token
for s in a b; do
    mkdir $s && cp state/* $s/
    "$BIN" serve --tables $s/eth.json --listen 127.0.0.1:0 --engine cpu --cpu-threads 1 --admin-token-file token 2> $s.log &
    PIDS="$PIDS $!"
done
until grep -q 'serving address' a.log && grep -q 'serving address' b.log; do sleep 0.2; done
A=$(grep -o 'serving address=[0-9.:]*' a.log | cut -d= -f2)
B=$(grep -o 'serving address=[0-9.:]*' b.log | cut -d= -f2)
curl -s "http://$A/v1/tables/accounts/meta" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const m=JSON.parse(s);console.log(`accounts table: ${m.sub_tables.length} x ${m.sub_tables[0]} pages of ${m.page_size} bytes, ${m.records} records`)})'
"$BIN" eth follow --node $NODE --admin http://$A --admin http://$B --token-file token --poll-interval 0.01 \
    --metrics-listen 127.0.0.1:18546 2> follow.log &
PIDS="$PIDS $!"
until grep -q 'following' follow.log; do sleep 0.2; done
rpc '{"jsonrpc":"2.0","id":1,"method":"anvil_autoImpersonateAccount","params":[true]}' > /dev/null
if [ "$MINUTES" != 0 ]; then
    # 200 transfers a second, from 200 of the senders in turn, to new accounts.
    (second=0; while [ ! -f stop ]; do
        second=$((second + 1))
        node -e '
const calls = [];
for (let i = 0; i < 200; i++) { const from = ('$second' * 200 + i) % '$SENDERS'; calls.push({ jsonrpc: "2.0", id: i,
  method: "eth_sendTransaction", params: [{ from: "0x" + (0x1000 + from).toString(16).padStart(40, "0"),
  to: "0x" + ('$second' * 0x1000 + i + 0x9000000).toString(16).padStart(40, "0"), value: "0x1", gas: "0x5208" }] }); }
process.stdout.write(JSON.stringify(calls));' > load.json
        curl -s -H 'content-type: application/json' "$NODE" --data @load.json > /dev/null
        sleep 1
    done) &
    LOAD=$!
    max=0
    for i in $(seq 1 $((MINUTES * 6))); do
        sleep 10
        behind=$(curl -s http://127.0.0.1:18546/metrics | awk '$1 == "morphogen_follow_blocks_behind" { print $2 }')
        held=$(curl -s http://127.0.0.1:18546/metrics | awk '$1 == "morphogen_follow_block" { print $2 }')
        echo "after $((i * 10)) s: block $held, $behind behind"
        [ "${behind:-0}" -gt "$max" ] && max=$behind
    done
    touch stop; wait $LOAD
    echo "most blocks behind: $max"
    grep 'block applied' follow.log | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'accounts=[0-9]*\|total_ms=[0-9]*' | paste - - |
        awk '{ split($1, a, "="); split($2, t, "="); if (a[2] > 100) { n++; s += t[2]; if (t[2] > m) m = t[2] } }
             END { printf "blocks of over 100 accounts: %d, mean %.0f ms, most %d ms (trace, read and send)\n", n, s / n, m }'
    exit 0
fi
applied() { until [ "$(grep -c 'block applied' follow.log)" -ge "$1" ]; do sleep 0.05; done; }
n=0
for round in $(seq 1 "$BLOCKS"); do
    # An empty block, then one of 1,000 transfers to new accounts.
    rpc '{"jsonrpc":"2.0","id":1,"method":"evm_mine","params":[]}' > /dev/null
    n=$((n + 1)); applied $n
    node -e '
const calls = [];
for (let i = 0; i < '$SENDERS'; i++) calls.push({ jsonrpc: "2.0", id: i, method: "eth_sendTransaction", params: [{
  from: "0x" + (0x1000 + i).toString(16).padStart(40, "0"),
  to: "0x" + ('$round' * 0x100000 + i + 0x9000000).toString(16).padStart(40, "0"), value: "0x1", gas: "0x5208" }] });
process.stdout.write(JSON.stringify(calls));' > batch.json
    curl -s -H 'content-type: application/json' "$NODE" --data @batch.json > /dev/null
    rpc '{"jsonrpc":"2.0","id":1,"method":"evm_mine","params":[]}' > /dev/null
    n=$((n + 1)); applied $n
done
grep 'block applied' follow.log | sed 's/.*block applied //' | sed 's/\x1b\[[0-9;]*m//g'
