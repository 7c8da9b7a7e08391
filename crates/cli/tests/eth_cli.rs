//! `morphogen eth` from the outside: the files `eth build` writes and its
//! errors for bad input; the tables served with `serve --tables`; and
//! ethers.js, a client no one here wrote, reading them through `eth rpc`.

mod common;

use common::{eth_rpc, morphogen, serve_with, text};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

#[test]
fn eth_build_writes_three_tables_and_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = dir.path().join("genesis.json");
    fs::write(
        &genesis,
        r#"{"config": {"chainId": 31337}, "alloc": {
            "0x00000000000000000000000000000000000000aa": {"balance": "1000", "nonce": "0x1"},
            "00000000000000000000000000000000000000bb": {"code": "0x6080", "storage": {"0x0": "0x5"}}}}"#,
    )
    .unwrap();
    let output = dir.path().join("tables");
    let built = eth_build(&genesis, &output, &[]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    assert!(
        text(&built.stderr).contains("chain 31337 at block 0: 2 accounts, 1 storage words, 1 code chunks")
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(output.join("eth.json")).unwrap()).unwrap();
    assert_eq!(manifest["chain_id"], 31337);
    for (name, records) in [("accounts", 2), ("storage", 1), ("code", 1)] {
        assert_eq!(manifest["tables"][name], format!("{name}.mgdb"));
        let inspected =
            morphogen(&["inspect", "--json", output.join(format!("{name}.mgdb")).to_str().unwrap()]);
        let inspected: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
        assert_eq!(inspected["records"], records, "{name}");
    }

    // A state dump at a given block replaces the alloc.
    let dump = dir.path().join("dump.jsonl");
    fs::write(&dump, "{\"root\": \"0x00\"}\n{\"balance\": \"7\", \"nonce\": 0, \"address\": \"0x00000000000000000000000000000000000000cc\"}\n").unwrap();
    let built =
        eth_build(&genesis, &output, &["--state-dump", dump.to_str().unwrap(), "--block-number", "12"]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    assert!(
        text(&built.stderr).contains("chain 31337 at block 12: 1 accounts, 0 storage words, 0 code chunks")
    );
    // A dump needs its block number.
    let refused = eth_build(&genesis, &output, &["--state-dump", dump.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("--block-number"), "{}", text(&refused.stderr));

    // A bad balance names its account.
    fs::write(&genesis, r#"{"config": {"chainId": 1}, "alloc": {"0x00000000000000000000000000000000000000aa": {"balance": "ten"}}}"#).unwrap();
    let refused = eth_build(&genesis, &output, &[]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("account 0x00000000000000000000000000000000000000aa: balance"), "{stderr}");
}

/// Runs `morphogen eth build --genesis GENESIS --output OUTPUT EXTRA...`.
fn eth_build(genesis: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let args = ["eth", "build", "--genesis", genesis.to_str().unwrap(), "--output", output.to_str().unwrap()];
    morphogen(&[&args[..], extra].concat())
}

/// What to do when a tool this test runs cannot be started.
fn missing_tool(tool: &str, error: &std::io::Error) -> String {
    format!(
        "cannot run `{tool}` ({error}): this test needs Node.js 18 or newer with npm; install it, then \
         `npm ci --prefix tests/ethers` once (README.md, \"Development\"; .ci/run does both)"
    )
}

/// The ethers.js project (tests/ethers), its packages installed from its
/// lock file if they are not yet (CI installs them before the tests).
fn ethers_project() -> PathBuf {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ethers");
    if !project.join("node_modules/ethers").exists() {
        let installed = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&project)
            .output()
            .unwrap_or_else(|error| panic!("{}", missing_tool("npm", &error)));
        assert!(installed.status.success(), "npm ci in tests/ethers: {}", text(&installed.stderr));
    }
    project
}

/// A genesis of accounts ethers.js will read: balances past 2^64, nonces,
/// code of one byte up to the 24,576-byte limit, storage.
fn wallet_genesis() -> (Value, Vec<Value>) {
    let mut alloc = serde_json::Map::new();
    let mut expected = Vec::new();
    let balances = ["1", "123456789012345678901234567890", "0", "340282366920938463463374607431768211455"];
    for (i, code_len) in [0usize, 1, 1025, 24_576].into_iter().enumerate() {
        let address = format!("0x{:040x}", 0xabc0 + i);
        let code: Vec<u8> = (0..code_len).map(|j| (j * 13 + i) as u8).collect();
        let code = format!("0x{}", hex::encode(code));
        let storage: Vec<(String, String)> =
            (0..i).map(|slot| (format!("0x{:x}", slot + 1), format!("0x{:064x}", 1000 * slot + 7))).collect();
        let mut account = json!({"balance": balances[i], "nonce": format!("0x{:x}", i * 5)});
        if code_len > 0 {
            account["code"] = json!(code);
            account["storage"] = storage.iter().map(|(slot, value)| (slot.clone(), json!(value))).collect();
        }
        alloc.insert(address.clone(), account);
        let mut slots: Vec<Value> =
            storage.iter().map(|(slot, value)| json!({"slot": slot, "value": value})).collect();
        // A slot never written reads as zero.
        slots.push(json!({"slot": "0x77", "value": format!("0x{}", "0".repeat(64))}));
        expected.push(json!({"address": address, "balance": balances[i], "nonce": i * 5, "code": code, "storage": slots}));
    }
    // An account that does not exist.
    expected.push(json!({"address": format!("0x{:040x}", 0xdead), "balance": "0", "nonce": 0, "code": "0x", "storage": []}));
    (json!({"config": {"chainId": 31337}, "number": "0x10", "alloc": alloc}), expected)
}

#[test]
fn ethers_reads_balances_nonces_code_and_storage_through_eth_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let (genesis, accounts) = wallet_genesis();
    let genesis_path = dir.path().join("genesis.json");
    fs::write(&genesis_path, genesis.to_string()).unwrap();
    let output = dir.path().join("state");
    let built = eth_build(&genesis_path, &output, &[]);
    assert!(built.status.success(), "{}", text(&built.stderr));

    let manifest = output.join("eth.json");
    let tables = ["--tables", manifest.to_str().unwrap(), "--engine", "cpu"];
    let (a, b) = (serve_with(&tables), serve_with(&tables));

    // The tables are served by name; `get --table` reads one of them.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = morphogen_client::Settings::default();
    let catalog = runtime.block_on(morphogen_client::fetch_catalog(&a.url, &settings)).unwrap();
    assert_eq!(catalog.tables, ["accounts", "code", "storage"]);
    assert_eq!((&catalog.about["chain_id"], &catalog.about["block_number"]), (&json!(31337), &json!(16)));
    let address = accounts[1]["address"].as_str().unwrap();
    let got = morphogen(&["get", "--server", &a.url, "--server", &b.url, "--table", "accounts", address]);
    assert!(got.status.success(), "{}", text(&got.stderr));
    let balance = format!("{:064x}", 123456789012345678901234567890u128);
    assert!(text(&got.stdout).starts_with(&format!("{} {balance}", &address[2..])), "{}", text(&got.stdout));

    let rpc = eth_rpc(&a.url, &b.url);
    let project = ethers_project();
    let expected = json!({"chainId": 31337, "blockNumber": 16, "accounts": accounts});
    let check = |expected: &Value| {
        let path = dir.path().join("expected.json");
        fs::write(&path, expected.to_string()).unwrap();
        Command::new("node")
            .arg(project.join("check.mjs"))
            .arg(&rpc.url)
            .arg(&path)
            .output()
            .unwrap_or_else(|error| panic!("{}", missing_tool("node", &error)))
    };
    let checked = check(&expected);
    let report = text(&checked.stdout);
    assert!(checked.status.success(), "{report}{}", text(&checked.stderr));
    // 2 network checks, 3 per account, one per slot.
    let slots: usize = accounts.iter().map(|a| a["storage"].as_array().unwrap().len()).sum();
    let checks = 2 + 3 * accounts.len() + slots;
    assert!(report.contains(&format!("{checks} checks, 0 failed")), "{report}");

    // No address read appears in any log.
    for (who, serving) in [("server a", &a), ("server b", &b), ("eth rpc", &rpc)] {
        let log = serving.log.lock().unwrap().to_lowercase();
        assert!(log.contains("info"), "{who} logged nothing: {log}");
        for account in &accounts {
            let address = &account["address"].as_str().unwrap()[2..];
            assert!(!log.contains(address), "{who} logged {address}: {log}");
        }
    }

    // The checker catches a wrong value.
    let mut wrong = expected.clone();
    wrong["accounts"][3]["storage"][0]["value"] = json!(format!("0x{}", "1".repeat(64)));
    let checked = check(&wrong);
    assert!(!checked.status.success());
    assert!(
        text(&checked.stdout).contains(&format!("{checks} checks, 1 failed")),
        "{}",
        text(&checked.stdout)
    );
}
