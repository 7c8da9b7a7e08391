// Reads every value of a state through `morphogen eth rpc` with ethers.js's
// JsonRpcProvider and compares it with what the state holds.
//
//   node check.mjs RPC_URL EXPECTED.json
//
// EXPECTED.json: {"chainId", "blockNumber", "accounts": [{"address",
// "balance" (decimal), "nonce", "code" (0x-hex), "storage": [{"slot",
// "value"}]}]}. Prints one line per check that fails and a summary; exits
// 1 if any failed.
import { readFileSync } from "node:fs";
import { JsonRpcProvider, getAddress } from "ethers";

const [url, expectedPath] = process.argv.slice(2);
if (!url || !expectedPath) {
  console.error("usage: node check.mjs RPC_URL EXPECTED.json");
  process.exit(2);
}
const expected = JSON.parse(readFileSync(expectedPath, "utf8"));
const provider = new JsonRpcProvider(url);

let checks = 0;
const failures = [];
function check(what, got, want) {
  checks += 1;
  if (got !== want) failures.push(`${what}: got ${got}, expected ${want}`);
}

const network = await provider.getNetwork();
check("chain id", network.chainId, BigInt(expected.chainId));
check("block number", await provider.getBlockNumber(), expected.blockNumber);

// All reads at once: ethers gathers them into JSON-RPC batches.
await Promise.all(
  expected.accounts.flatMap((account) => {
    // Checksummed, as wallets send addresses.
    const address = getAddress(account.address);
    return [
      provider.getBalance(address).then((v) => check(`balance of ${address}`, v, BigInt(account.balance))),
      provider.getTransactionCount(address).then((v) => check(`nonce of ${address}`, v, account.nonce)),
      provider.getCode(address).then((v) => check(`code of ${address}`, v, account.code)),
      ...account.storage.map(({ slot, value }) =>
        provider.getStorage(address, slot).then((v) => check(`slot ${slot} of ${address}`, v, value)),
      ),
    ];
  }),
);
provider.destroy();

for (const failure of failures) console.log(failure);
console.log(`ethers ${(await import("ethers")).version}: ${checks} checks, ${failures.length} failed`);
process.exit(failures.length === 0 ? 0 : 1);
