//! `morphogen eth build` from the outside: the files it writes, and its
//! errors for bad input.

mod common;

use common::{morphogen, text};

use std::fs;

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
    let built = morphogen(&[
        "eth",
        "build",
        "--genesis",
        genesis.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
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
    let args = ["eth", "build", "--genesis", genesis.to_str().unwrap(), "--output", output.to_str().unwrap()];
    let built =
        morphogen(&[&args[..], &["--state-dump", dump.to_str().unwrap(), "--block-number", "12"]].concat());
    assert!(built.status.success(), "{}", text(&built.stderr));
    assert!(
        text(&built.stderr).contains("chain 31337 at block 12: 1 accounts, 0 storage words, 0 code chunks")
    );
    // A dump needs its block number.
    let refused = morphogen(&[&args[..], &["--state-dump", dump.to_str().unwrap()]].concat());
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("--block-number"), "{}", text(&refused.stderr));

    // A bad balance names its account.
    fs::write(&genesis, r#"{"config": {"chainId": 1}, "alloc": {"0x00000000000000000000000000000000000000aa": {"balance": "ten"}}}"#).unwrap();
    let refused = morphogen(&args);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("account 0x00000000000000000000000000000000000000aa: balance"), "{stderr}");
}
