//! `morphogen eth follow` against a real node (anvil): after every block,
//! the whole state as the node holds it, read privately from the two
//! servers' tables, equals the node's own answers; with the follower killed
//! at random moments and a server killed and restarted on the way.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Serving, eth_rpc, morphogen, serve_at, serve_with, text};
use morphogen_eth::{AccountValue, EMPTY_CODE_HASH, TABLE_NAMES, code_hash};
use morphogen_eth_rpc::StateReader;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const TOKEN: &str = "a follow test admin token";
const CHAIN_ID: u64 = 1337;
/// Accounts the genesis funds, which send the workload's transactions.
const FUNDED: usize = 120;
const BLOCKS: u64 = 12;

/// The anvil binary from the npm registry (tests/ethers), installed from
/// its lock file if it is not yet (CI installs it before the tests).
fn anvil_binary() -> PathBuf {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ethers");
    let binary = project.join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    if !binary.exists() {
        let installed = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&project)
            .output()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run `npm` ({error}): this test needs Node.js 18 or newer with npm; install it, then \
                     `npm ci --prefix tests/ethers` once (README.md, \"Development\"; .ci/run does both)"
                )
            });
        assert!(installed.status.success(), "npm ci in tests/ethers: {}", text(&installed.stderr));
    }
    binary
}

/// An anvil node on a port of the system's choice; killed when dropped.
struct Anvil {
    child: Child,
    url: String,
}

impl Anvil {
    /// Starts anvil on a genesis of `alloc`, written into `dir`.
    fn on_genesis(dir: &Path, alloc: serde_json::Map<String, Value>) -> Anvil {
        let genesis = json!({"config": {"chainId": CHAIN_ID}, "gasLimit": "0x1c9c380", "difficulty": "0x0", "alloc": alloc});
        let path = dir.join("genesis.json");
        std::fs::write(&path, genesis.to_string()).unwrap();
        Anvil::start(&path)
    }

    /// Starts anvil on `genesis`, mining only when told to, with no dev
    /// accounts of its own (the genesis is the whole state). Its safe block
    /// is two behind its newest, its finalized block four.
    fn start(genesis: &Path) -> Anvil {
        let mut child = Command::new(anvil_binary())
            .args(["--init", genesis.to_str().unwrap(), "--port", "0", "--no-mining", "--accounts", "0"])
            .args(["--chain-id", &CHAIN_ID.to_string(), "--slots-in-an-epoch", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("anvil starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let address = loop {
            let line = lines.next().expect("anvil says where it listens").unwrap();
            if let Some(address) = line.strip_prefix("Listening on ") {
                break address.trim().to_string();
            }
        };
        // Keep reading, so that anvil never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Anvil { child, url: format!("http://{address}") }
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `method` on the node at `url`; panics on an error answer.
async fn rpc(http: &reqwest::Client, url: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let response = http.post(url).header("content-type", "application/json").body(body.to_string()).send();
    let bytes = response.await.unwrap().bytes().await.unwrap();
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(answer.get("error").is_none(), "{method}: {answer}");
    answer["result"].clone()
}

/// The node's whole state (`anvil_dumpState`): each account's balance,
/// nonce, code and storage.
async fn dump(http: &reqwest::Client, url: &str) -> serde_json::Map<String, Value> {
    let packed = rpc(http, url, "anvil_dumpState", json!([])).await;
    let gzipped = hex::decode(packed.as_str().unwrap().trim_start_matches("0x")).unwrap();
    let mut unpacked = String::new();
    flate2::read::GzDecoder::new(&gzipped[..]).read_to_string(&mut unpacked).unwrap();
    let state: Value = serde_json::from_str(&unpacked).unwrap();
    state["accounts"].as_object().unwrap().clone()
}

fn address(i: usize) -> String {
    format!("0x{:040x}", 0x1000 + i)
}

/// The runtime code `SSTORE(calldata[0..32], calldata[32..64])`.
const SETTER: &str = "6020356000355500";
/// Init code that deploys the 8 bytes that follow it ([`SETTER`]).
const SETTER_INIT: &str = "600880600b6000396000f3";

/// Init code whose contract is 3,000 zero bytes (four code chunks).
const LARGE_INIT: &str = "610bb86000f3";

/// Init code that destroys itself at once, sending its value to `to`.
fn self_destructing_init(to: &str) -> String {
    format!("73{}ff", &to[2..])
}

/// A block's transactions: transfers among the funded accounts and to new
/// ones, and, by block, deployments, storage written and cleared, and a
/// contract created and destroyed in one transaction.
fn workload(block: u64, rng: &mut StdRng, setter: Option<&str>) -> Vec<Value> {
    let mut txs = Vec::new();
    for _ in 0..8 {
        let from = address(rng.random_range(0..FUNDED));
        let to = if rng.random_bool(0.2) {
            format!("0x{:040x}", 0x9000_0000u64 + rng.random_range(0..1_000_000u64))
        } else {
            address(rng.random_range(0..FUNDED))
        };
        let value = format!("0x{:x}", rng.random_range(1..1_000_000_000_000u64));
        txs.push(json!({"from": from, "to": to, "value": value}));
    }
    let deployer = address(0);
    match block {
        2 => txs.push(json!({"from": deployer, "data": format!("0x{SETTER_INIT}{SETTER}")})),
        4 => txs.push(json!({"from": deployer, "data": format!("0x{LARGE_INIT}")})),
        5 => txs.push(json!({
            "from": deployer, "value": "0x1234", "data": format!("0x{}", self_destructing_init(&address(7)))
        })),
        _ => {}
    }
    if let Some(setter) = setter {
        for _ in 0..4 {
            let slot = rng.random_range(0..6u64);
            // Every other write clears a slot.
            let word = if rng.random_bool(0.5) { 0 } else { rng.random_range(1..u64::MAX) };
            let data = format!("0x{slot:064x}{word:064x}");
            // Gas given: an estimate against the state before the block's
            // other writes of the slot may fall short.
            txs.push(
                json!({"from": address(1 + block as usize), "to": setter, "data": data, "gas": "0x30000"}),
            );
        }
    }
    txs
}

/// Waits until every table of both servers is at `epoch`.
async fn wait_for_epoch(http: &reqwest::Client, servers: [&str; 2], epoch: u64, follower: &Serving) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for server in servers {
        for table in TABLE_NAMES {
            loop {
                let url = format!("{server}/v1/tables/{table}/meta");
                let meta: Value =
                    serde_json::from_slice(&http.get(url).send().await.unwrap().bytes().await.unwrap())
                        .unwrap();
                if meta["epoch"] == json!(epoch) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{table} of {server} stays at epoch {}; the follower logged:\n{}",
                    meta["epoch"],
                    follower.log.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Compares every account and slot of the node's state, and some that are
/// not in it, with what the tables say; returns the number of checks.
async fn compare(http: &reqwest::Client, node: &str, reader: &StateReader, rng: &mut StdRng) -> usize {
    let state = dump(http, node).await;
    let mut checks = 0;
    let absent: Vec<String> = (0..3).map(|_| format!("0x{:040x}", rng.random::<u64>() | 1 << 63)).collect();
    for address in state.keys().chain(&absent) {
        let bytes: [u8; 20] = hex::decode(&address[2..]).unwrap().try_into().unwrap();
        let account = reader.account(&bytes).await.unwrap();
        let balance = rpc(http, node, "eth_getBalance", json!([address, "latest"])).await;
        let nonce = rpc(http, node, "eth_getTransactionCount", json!([address, "latest"])).await;
        let code = rpc(http, node, "eth_getCode", json!([address, "latest"])).await;
        let code = hex::decode(&code.as_str().unwrap()[2..]).unwrap();
        let expected = AccountValue {
            balance: word(&balance),
            nonce: u64::from_str_radix(&nonce.as_str().unwrap()[2..], 16).unwrap(),
            code_hash: code_hash(&code),
        };
        assert_eq!(account, expected, "account {address}");
        if expected.code_hash != EMPTY_CODE_HASH {
            assert_eq!(reader.code(&bytes).await.unwrap(), code, "code of {address}");
            checks += 1;
        }
        let mut slots: Vec<String> = state
            .get(address)
            .and_then(|account| account["storage"].as_object())
            .map(|storage| storage.keys().cloned().collect())
            .unwrap_or_default();
        slots.push(format!("0x{:064x}", rng.random::<u64>()));
        for slot in slots {
            let key: [u8; 32] = word(&json!(slot));
            let stored = reader.storage(&bytes, &key).await.unwrap();
            let expected = rpc(http, node, "eth_getStorageAt", json!([address, slot, "latest"])).await;
            assert_eq!(stored, word(&expected), "slot {slot} of {address}");
            checks += 1;
        }
        checks += 1;
    }
    checks
}

/// The follower's metrics, from the address it logged.
async fn scrape(http: &reqwest::Client, follower: &Serving) -> String {
    let log = follower.log.lock().unwrap().clone();
    let address = log.split("metrics address=").nth(1).and_then(|rest| rest.split_whitespace().next());
    let address = address.unwrap_or_else(|| panic!("no metrics address in\n{log}"));
    let body = http.get(format!("http://{address}/metrics")).send().await.unwrap();
    String::from_utf8(body.bytes().await.unwrap().to_vec()).unwrap()
}

/// A JSON-RPC quantity or data of up to 32 bytes, as 32 big-endian bytes.
fn word(value: &Value) -> [u8; 32] {
    let digits = value.as_str().unwrap().trim_start_matches("0x");
    let mut out = [0u8; 32];
    hex::decode_to_slice(format!("{digits:0>64}"), &mut out).unwrap();
    out
}

/// Builds the tables (`eth build`, with `options`) into `dir/state` from
/// the node's state at block 0, which holds the system contracts it adds
/// to the genesis alloc; returns that directory.
fn build_tables(
    runtime: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    anvil: &Anvil,
    dir: &Path,
    options: &[&str],
) -> PathBuf {
    let state = runtime.block_on(dump(http, &anvil.url));
    let built_from = json!({"config": {"chainId": CHAIN_ID}, "number": "0x0", "alloc": state});
    let built_from_path = dir.join("state-0.json");
    std::fs::write(&built_from_path, built_from.to_string()).unwrap();
    let output = dir.join("state");
    let mut args = vec!["eth", "build", "--genesis", built_from_path.to_str().unwrap()];
    args.extend(["--output", output.to_str().unwrap()]);
    args.extend(options);
    let built = morphogen(&args);
    assert!(built.status.success(), "{}", text(&built.stderr));
    output
}

/// A server's own copy of the tables in `built`, as on its own disk, in
/// `own`; returns its manifest.
fn copy_tables(built: &Path, own: &Path) -> String {
    std::fs::create_dir(own).unwrap();
    for entry in std::fs::read_dir(built).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, own.join(path.file_name().unwrap())).unwrap();
    }
    own.join("eth.json").to_str().unwrap().to_string()
}

/// One test of this file at a time: each runs a node, two servers and a
/// follower, and waits on them with deadlines.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_tables_follow_a_node_block_by_block() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let alloc: serde_json::Map<String, Value> =
        (0..FUNDED).map(|i| (address(i), json!({"balance": "0x3635c9adc5dea00000"}))).collect();
    let anvil = Anvil::on_genesis(dir.path(), alloc);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();

    let output = build_tables(&runtime, &http, &anvil, dir.path(), &[]);
    let token = dir.path().join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let copy_for = |name: &str| copy_tables(&output, &dir.path().join(name));
    let (manifest_a, manifest_b) = (copy_for("a"), copy_for("b"));
    let options = |manifest: &str| {
        ["--tables", manifest, "--engine", "cpu", "--admin-token-file", token.to_str().unwrap()]
            .map(str::to_string)
            .to_vec()
    };
    let serve =
        |manifest: &str| serve_with(&options(manifest).iter().map(String::as_str).collect::<Vec<_>>());
    let (a, mut b) = (serve(&manifest_a), serve(&manifest_b));
    let b_url = b.url.clone();
    let follow = |servers: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_morphogen"));
        command.args(["eth", "follow", "--node", &anvil.url]);
        for server in servers {
            command.args(["--admin", server]);
        }
        command.args(["--token-file", token.to_str().unwrap(), "--poll-interval", "0.02"]);
        command.args(["--metrics-listen", "127.0.0.1:0"]);
        Serving::start_until(command, "following")
    };
    let start_follower = || follow(&[&a.url, &b_url]);
    let mut follower = start_follower();
    // `eth build` left each table room to grow (25% by default), published
    // and exported as free rows.
    runtime.block_on(async {
        for table in TABLE_NAMES {
            let url = format!("{}/v1/tables/{table}/meta", a.url);
            let meta: Value =
                serde_json::from_slice(&http.get(url).send().await.unwrap().bytes().await.unwrap()).unwrap();
            let (records, free) = (meta["records"].as_u64().unwrap(), meta["free_rows"].as_u64().unwrap());
            assert!(free * 4 >= records, "{table}: {free} free rows for {records} records");
            let metrics = http.get(format!("{}/metrics", a.url)).send().await.unwrap().bytes().await.unwrap();
            let line = format!("morphogen_free_rows{{table=\"{table}\"}} {free}");
            assert!(String::from_utf8_lossy(&metrics).lines().any(|l| l == line), "{line}");
        }
    });
    let settings = morphogen_client::Settings { meta_refresh: Duration::ZERO, ..Default::default() };
    let reader = runtime.block_on(StateReader::connect(&a.url, &b.url, &settings)).unwrap();
    let mut rng = StdRng::seed_from_u64(25);
    let mut setter: Option<String> = None;
    runtime.block_on(async {
        rpc(&http, &anvil.url, "anvil_autoImpersonateAccount", json!([true])).await;
        let mut checks = 0;
        for block in 1..=BLOCKS {
            let mut hashes = Vec::new();
            for tx in workload(block, &mut rng, setter.as_deref()) {
                hashes.push(rpc(&http, &anvil.url, "eth_sendTransaction", json!([tx])).await);
            }
            rpc(&http, &anvil.url, "evm_mine", json!([])).await;
            if block % 3 == 0 {
                // Killed at a moment of the block's sending, and started again.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
                follower.stop();
                follower = start_follower();
            }
            if block == 10 {
                // One server a block ahead of the other, as when a follower
                // dies between their acknowledgements: the next follower
                // brings the other up from the labels of the one ahead.
                follower.stop();
                let mut alone = follow(&[&a.url]);
                wait_for_epoch(&http, [&a.url, &a.url], block, &alone).await;
                alone.stop();
                follower = start_follower();
                wait_for_epoch(&http, [&a.url, &b_url], block, &follower).await;
                let log = follower.log.lock().unwrap().clone();
                assert!(log.contains("bringing tables that are behind up"), "{log}");
            }
            if block == 7 {
                // A server killed while the block is sent, and restarted
                // where the follower knows it: it replays its log.
                b.stop();
                let listen = b_url.trim_start_matches("http://").to_string();
                b = serve_at(&listen, &options(&manifest_b).iter().map(String::as_str).collect::<Vec<_>>());
            }
            for hash in &hashes {
                let receipt = rpc(&http, &anvil.url, "eth_getTransactionReceipt", json!([hash])).await;
                assert_eq!(receipt["status"], json!("0x1"), "block {block}: {receipt}");
                if block == 2 && setter.is_none() && receipt["contractAddress"].is_string() {
                    setter = receipt["contractAddress"].as_str().map(str::to_string);
                }
            }
            wait_for_epoch(&http, [&a.url, &b_url], block, &follower).await;
            checks += compare(&http, &anvil.url, &reader, &mut rng).await;
        }
        assert!(checks > BLOCKS as usize * FUNDED, "{checks} checks");
        eprintln!("{checks} checks");
        // The workload reached the storage it means to write and clear.
        let setter = setter.expect("the setter was deployed");
        let code = rpc(&http, &anvil.url, "eth_getCode", json!([setter, "latest"])).await;
        assert_eq!(code, json!(format!("0x{SETTER}")));
    });
    // Both servers hold the same epochs, block by block: none skipped, none twice.
    let log = follower.log.lock().unwrap().clone();
    for i in 0..FUNDED {
        assert!(!log.contains(&address(i)[2..]), "the follower logged an address: {log}");
    }
    let epochs = |url: &str| {
        let list = runtime.block_on(async {
            let body = http.get(format!("{url}/v1/tables/accounts/epochs")).send().await.unwrap();
            serde_json::from_slice::<Value>(&body.bytes().await.unwrap()).unwrap()
        });
        list["epochs"].clone()
    };
    let (listed_a, listed_b) = (epochs(&a.url), epochs(&b.url));
    assert_eq!(listed_a, listed_b, "the same digests and labels at every epoch");
    let numbers: Vec<Value> =
        listed_a.as_array().unwrap().iter().map(|e| e["label"]["number"].clone()).collect();
    let expected: Vec<Value> = std::iter::once(Value::Null).chain((1..=BLOCKS).map(|n| json!(n))).collect();
    assert_eq!(numbers, expected);

    // `eth rpc` speaks in block numbers: the newest block held, and every
    // account and slot as of each older block of the window, by number and
    // by hash, as the node answers them.
    let rpc_endpoint = eth_rpc(&a.url, &b_url);
    runtime.block_on(async {
        let number = rpc(&http, &rpc_endpoint.url, "eth_blockNumber", json!([])).await;
        assert_eq!(number, json!(format!("{BLOCKS:#x}")));
        let state = dump(&http, &anvil.url).await;
        let setter = state.iter().find(|(_, account)| account["code"] == json!(format!("0x{SETTER}"))).unwrap().0;
        let mut compared = 0;
        for block in 1..=BLOCKS {
            let header = rpc(&http, &anvil.url, "eth_getBlockByNumber", json!([format!("{block:#x}"), false])).await;
            let by_number = json!(format!("{block:#x}"));
            let by_hash = json!({"blockHash": header["hash"]});
            // A sample of the accounts at each block, a different one each time.
            let sample = state.keys().filter(|_| rng.random_bool(0.3));
            for address in sample {
                let at = if block % 2 == 0 { &by_number } else { &by_hash };
                for method in ["eth_getBalance", "eth_getTransactionCount"] {
                    let expected = rpc(&http, &anvil.url, method, json!([address, by_number])).await;
                    let got = rpc(&http, &rpc_endpoint.url, method, json!([address, at])).await;
                    assert_eq!(got, expected, "{method} {address} at block {block}");
                    compared += 1;
                }
            }
            for slot in 0..6u64 {
                let slot = format!("{slot:#x}");
                let expected = rpc(&http, &anvil.url, "eth_getStorageAt", json!([setter, slot, by_number])).await;
                let got = rpc(&http, &rpc_endpoint.url, "eth_getStorageAt", json!([setter, slot, by_number])).await;
                assert_eq!(got, expected, "slot {slot} at block {block}");
            }
        }
        assert!(compared > BLOCKS as usize * FUNDED / 2, "{compared}");
        // A block not yet held is refused, naming the blocks held.
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [address(0), format!("{:#x}", BLOCKS + 1)]});
        let answer = http.post(&rpc_endpoint.url).header("content-type", "application/json").body(body.to_string()).send();
        let answer: Value = serde_json::from_slice(&answer.await.unwrap().bytes().await.unwrap()).unwrap();
        assert_eq!(answer["error"]["code"], json!(-32000), "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("hold blocks 0 to {BLOCKS}")), "{message}");
        // `safe` and `finalized` name the blocks the node called so.
        for tag in ["safe", "finalized"] {
            let header = rpc(&http, &anvil.url, "eth_getBlockByNumber", json!([tag, false])).await;
            assert!(header["number"] != json!(format!("{BLOCKS:#x}")), "{tag} is an older block: {header}");
            for address in state.keys().take(20) {
                let expected = rpc(&http, &anvil.url, "eth_getBalance", json!([address, tag])).await;
                let got = rpc(&http, &rpc_endpoint.url, "eth_getBalance", json!([address, tag])).await;
                assert_eq!(got, expected, "balance of {address} at the {tag} block");
            }
        }

        // Reorganisations: the node replaces its newest block, then its
        // newest five, then goes back to a snapshot and builds a longer
        // branch. Each time the tables go back to the newest block both
        // branches share (one epoch) and follow the new branch.
        let transfer = |to: u64| {
            json!({"from": address(3), "to": format!("0x{:040x}", 0xfeed_0000u64 + to), "value": "0x77"})
        };
        let mut epoch = BLOCKS;
        rpc(&http, &anvil.url, "anvil_reorg", json!([1, [[transfer(1), 0]]])).await;
        epoch += 2;
        wait_for_epoch(&http, [&a.url, &b_url], epoch, &follower).await;
        compare(&http, &anvil.url, &reader, &mut rng).await;
        rpc(&http, &anvil.url, "anvil_reorg", json!([5, [[transfer(2), 0], [transfer(3), 4]]])).await;
        epoch += 1 + 5;
        wait_for_epoch(&http, [&a.url, &b_url], epoch, &follower).await;
        compare(&http, &anvil.url, &reader, &mut rng).await;
        let snapshot = rpc(&http, &anvil.url, "evm_snapshot", json!([])).await;
        for to in 4..6 {
            rpc(&http, &anvil.url, "eth_sendTransaction", json!([transfer(to)])).await;
            rpc(&http, &anvil.url, "evm_mine", json!([])).await;
        }
        epoch += 2;
        wait_for_epoch(&http, [&a.url, &b_url], epoch, &follower).await;
        assert_eq!(rpc(&http, &anvil.url, "evm_revert", json!([snapshot])).await, json!(true));
        for to in 6..9 {
            rpc(&http, &anvil.url, "eth_sendTransaction", json!([transfer(to)])).await;
            rpc(&http, &anvil.url, "evm_mine", json!([])).await;
        }
        epoch += 1 + 3;
        wait_for_epoch(&http, [&a.url, &b_url], epoch, &follower).await;
        compare(&http, &anvil.url, &reader, &mut rng).await;
        let log = follower.log.lock().unwrap().clone();
        assert_eq!(log.matches("reorganisation").count(), 3, "{log}");
        // What an operator scrapes says as much.
        let metrics = scrape(&http, &follower).await;
        for line in [
            "morphogen_follow_reorgs_total 3".to_string(),
            format!("morphogen_follow_block {}", BLOCKS + 3),
            "morphogen_follow_blocks_behind 0".to_string(),
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }

        // Answers by number follow the branch the node is on now.
        let height = BLOCKS + 3;
        let number = rpc(&http, &rpc_endpoint.url, "eth_blockNumber", json!([])).await;
        assert_eq!(number, json!(format!("{height:#x}")));
        let state = dump(&http, &anvil.url).await;
        for block in 1..=height {
            let at = json!(format!("{block:#x}"));
            for address in state.keys().filter(|_| rng.random_bool(0.2)) {
                let expected = rpc(&http, &anvil.url, "eth_getBalance", json!([address, at])).await;
                let got = rpc(&http, &rpc_endpoint.url, "eth_getBalance", json!([address, at])).await;
                assert_eq!(got, expected, "balance of {address} at block {block} after the reorganisations");
            }
        }
    });
    let (listed_a, listed_b) = (epochs(&a.url), epochs(&b_url));
    assert_eq!(listed_a, listed_b, "the same digests and labels at every epoch, reverts included");
    drop(b);
    drop(a);
}

/// Accounts of the growth test's genesis that hold one wei each: with the
/// senders and system contracts, a little more than the accounts table's
/// smallest size, so that a table built without headroom is nearly full.
const FILLERS: usize = 16_560;

fn filler(i: usize) -> String {
    format!("0x{:040x}", 0x2000_0000 + i)
}

/// Checks each of `addresses` read through the tables against the node.
async fn compare_accounts(http: &reqwest::Client, node: &str, reader: &StateReader, addresses: &[String]) {
    for address in addresses {
        let bytes: [u8; 20] = hex::decode(&address[2..]).unwrap().try_into().unwrap();
        let account = reader.account(&bytes).await.unwrap();
        let balance = rpc(http, node, "eth_getBalance", json!([address, "latest"])).await;
        let nonce = rpc(http, node, "eth_getTransactionCount", json!([address, "latest"])).await;
        let nonce = u64::from_str_radix(&nonce.as_str().unwrap()[2..], 16).unwrap();
        assert_eq!((account.balance, account.nonce), (word(&balance), nonce), "account {address}");
    }
}

#[test]
fn a_table_a_block_does_not_fit_grows_on_both_servers_and_lookups_go_on() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    const SENDERS: usize = 40;
    const NEW_PER_BLOCK: usize = 150;
    const BLOCKS: u64 = 6;
    let dir = tempfile::tempdir().unwrap();
    let mut alloc: serde_json::Map<String, Value> =
        (0..SENDERS).map(|i| (address(i), json!({"balance": "0x3635c9adc5dea00000"}))).collect();
    alloc.extend((0..FILLERS).map(|i| (filler(i), json!({"balance": "0x1"}))));
    let anvil = Anvil::on_genesis(dir.path(), alloc);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let output = build_tables(&runtime, &http, &anvil, dir.path(), &["--headroom", "0"]);

    let token = dir.path().join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    let serve = |name: &str| {
        let manifest = copy_tables(&output, &dir.path().join(name));
        let snapshots = dir.path().join(format!("{name}-snapshots"));
        std::fs::create_dir(&snapshots).unwrap();
        serve_with(&[
            "--tables",
            &manifest,
            "--snapshot-dir",
            snapshots.to_str().unwrap(),
            "--engine",
            "cpu",
            "--admin-token-file",
            token.to_str().unwrap(),
        ])
    };
    let (a, b) = (serve("a"), serve("b"));
    let meta = |url: &str, table: &str| -> Value {
        runtime.block_on(async {
            let body = http.get(format!("{url}/v1/tables/{table}/meta")).send().await.unwrap();
            serde_json::from_slice(&body.bytes().await.unwrap()).unwrap()
        })
    };
    let before = meta(&a.url, "accounts");
    let free = before["free_rows"].as_u64().unwrap();
    assert!(free < NEW_PER_BLOCK as u64 * BLOCKS, "the table starts nearly full: {free} free rows");
    let mut command = Command::new(env!("CARGO_BIN_EXE_morphogen"));
    command.args(["eth", "follow", "--node", &anvil.url, "--admin", &a.url, "--admin", &b.url]);
    command.args(["--token-file", token.to_str().unwrap(), "--poll-interval", "0.02"]);
    command.args(["--metrics-listen", "127.0.0.1:0"]);
    let follower = Serving::start_until(command, "following");

    let settings = morphogen_client::Settings { meta_refresh: Duration::ZERO, ..Default::default() };
    let reader =
        std::sync::Arc::new(runtime.block_on(StateReader::connect(&a.url, &b.url, &settings)).unwrap());
    // Lookups all along, also while a table grows and both servers swap to
    // it: through the library, and through `eth rpc` as a wallet reads.
    let endpoint = eth_rpc(&a.url, &b.url);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looker = {
        let (reader, stop, http, url) = (reader.clone(), stop.clone(), http.clone(), endpoint.url.clone());
        runtime.spawn(async move {
            let (mut done, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let address = filler(done as usize % FILLERS);
                let bytes: [u8; 20] = hex::decode(&address[2..]).unwrap().try_into().unwrap();
                match reader.account(&bytes).await {
                    Ok(account) if account.balance[31] == 1 => {}
                    other => failed.push(format!("{other:?}")),
                }
                let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": [address, "latest"]});
                let answer = http.post(&url).header("content-type", "application/json").body(body.to_string()).send();
                let answer: Value = serde_json::from_slice(&answer.await.unwrap().bytes().await.unwrap()).unwrap();
                if answer["result"] != json!("0x1") {
                    failed.push(answer.to_string());
                }
                done += 1;
            }
            (done, failed)
        })
    };
    let mut rng = StdRng::seed_from_u64(29);
    let mut created = Vec::new();
    runtime.block_on(async {
        rpc(&http, &anvil.url, "anvil_autoImpersonateAccount", json!([true])).await;
        for block in 1..=BLOCKS {
            for i in 0..NEW_PER_BLOCK {
                let to = format!("0x{:040x}", 0x5000_0000u64 + rng.random_range(0..u32::MAX as u64));
                let tx = json!({"from": address(i % SENDERS), "to": to, "value": "0x3b9aca00"});
                rpc(&http, &anvil.url, "eth_sendTransaction", json!([tx])).await;
                created.push(to);
            }
            rpc(&http, &anvil.url, "evm_mine", json!([])).await;
            wait_for_epoch(&http, [&a.url, &b.url], block, &follower).await;
            let mut sample: Vec<String> = (0..SENDERS).map(address).collect();
            sample.extend(created.iter().cloned());
            sample.extend((0..50).map(|_| filler(rng.random_range(0..FILLERS))));
            compare_accounts(&http, &anvil.url, &reader, &sample).await;
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (looked_up, failed) = runtime.block_on(looker).unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} lookups failed: {:?}",
        failed.len(),
        looked_up,
        &failed[..failed.len().min(3)]
    );
    assert!(looked_up > 100, "{looked_up} lookups");

    // The accounts table grew, alike on both servers, and says so.
    let log = follower.log.lock().unwrap().clone();
    assert!(log.contains("the block does not fit the table: growing it"), "{log}");
    assert_eq!(log.matches("the table grew").count(), 2, "once on each server: {log}");
    let (grown_a, grown_b) = (meta(&a.url, "accounts"), meta(&b.url, "accounts"));
    let pages = |meta: &Value| meta["sub_tables"][0].as_u64().unwrap();
    assert!(pages(&grown_a) >= 2 * pages(&before), "{grown_a}");
    assert_eq!(grown_a["digest"], grown_b["digest"]);
    assert_eq!(grown_a["epoch"], json!(BLOCKS));
    assert!(grown_a["free_rows"].as_u64().unwrap() > free, "{grown_a}");
    let metrics = runtime.block_on(scrape(&http, &follower));
    let line = "morphogen_follow_tables_grown_total{table=\"accounts\"} 2";
    assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    // Every table of both servers holds the same block at every epoch.
    for table in TABLE_NAMES {
        let epochs = |url: &str| {
            runtime.block_on(async {
                let body = http.get(format!("{url}/v1/tables/{table}/epochs")).send().await.unwrap();
                serde_json::from_slice::<Value>(&body.bytes().await.unwrap()).unwrap()["epochs"].clone()
            })
        };
        let listed = epochs(&a.url);
        assert_eq!(listed, epochs(&b.url), "{table}: the same digests and labels at every epoch");
        let last = listed.as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["label"]["number"], json!(BLOCKS), "{table}: {last}");
    }
    // eth rpc reads the grown table as the node does.
    runtime.block_on(async {
        for address in created.iter().step_by(7) {
            let expected = rpc(&http, &anvil.url, "eth_getBalance", json!([address, "latest"])).await;
            let got = rpc(&http, &endpoint.url, "eth_getBalance", json!([address, "latest"])).await;
            assert_eq!(got, expected, "{address}");
        }
    });
}
