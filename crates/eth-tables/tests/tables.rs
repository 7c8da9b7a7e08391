//! A state from a genesis file or a state dump, built into the three
//! tables, reads back exactly: every balance, nonce, storage word and code
//! of every length. Malformed inputs are refused, naming the account.

use std::collections::BTreeMap;

use morphogen_eth::{
    AccountValue, CODE_CHUNKS, EMPTY_CODE_HASH, Error, MAX_CODE_LEN, TABLE_SHAPES, TableRecords, TableShape,
    code_chunk_key, code_from_chunks, code_hash, read_dump, read_genesis, storage_key,
};
use morphogen_table::{BuildOptions, NoProgress, Table, build};
use serde_json::json;

fn address(n: u32) -> String {
    format!("0x{n:040x}")
}

fn code(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
}

/// A genesis of accounts with balances written both ways, nonces, code of
/// several sizes (two contracts sharing one), and storage.
fn genesis() -> serde_json::Value {
    let mut alloc = serde_json::Map::new();
    alloc.insert(address(1)[2..].to_string(), json!({"balance": "1000000000000000000000", "nonce": "0x7"}));
    alloc.insert(
        address(2),
        json!({"balance": "0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"}),
    );
    for (i, len) in [1usize, 1023, 1024, 1025, 5000, MAX_CODE_LEN].into_iter().enumerate() {
        let storage: serde_json::Map<String, serde_json::Value> = (0..i as u64 * 3)
            .map(|slot| (format!("0x{slot:x}"), json!(format!("0x{:x}", slot * 1000 + 1))))
            .collect();
        alloc.insert(
            address(100 + i as u32),
            json!({"balance": "0", "nonce": 1, "code": format!("0x{}", hex::encode(code(len, i as u8))), "storage": storage}),
        );
    }
    // Same code as contract 103: the code table holds it once.
    alloc.insert(address(200), json!({"code": format!("0x{}", hex::encode(code(1025, 3)))}));
    json!({"config": {"chainId": 1337}, "number": "0x10", "alloc": alloc})
}

struct Tables {
    accounts: Table,
    storage: Table,
    code: Table,
}

fn build_tables(records: &TableRecords) -> Tables {
    let table = |records: &[(Vec<u8>, Vec<u8>)], shape: TableShape| {
        let value_size = Some(shape.value_size as u32);
        let options =
            BuildOptions { page_size: shape.page_size, value_size, choices: 2, ..Default::default() };
        build(records, &options, &NoProgress).unwrap()
    };
    let [accounts, storage, code] = TABLE_SHAPES;
    Tables {
        accounts: table(&records.accounts, accounts),
        storage: table(&records.storage, storage),
        code: table(&records.code, code),
    }
}

/// What a reader gets for `address`: its account value, and its code from
/// all chunk lookups.
fn read_account(tables: &Tables, address: &[u8; 20]) -> Option<(AccountValue, Vec<u8>)> {
    let value = AccountValue::decode(tables.accounts.get(address)?).unwrap();
    let chunks: Vec<Option<Vec<u8>>> = (0..CODE_CHUNKS)
        .map(|index| tables.code.get(&code_chunk_key(&value.code_hash, index)).map(<[u8]>::to_vec))
        .collect();
    Some((value, code_from_chunks(&value.code_hash, &chunks).unwrap()))
}

#[test]
fn every_field_of_a_genesis_state_reads_back_from_the_tables() {
    let (chain, accounts) = read_genesis(&genesis().to_string()).unwrap();
    assert_eq!((chain.chain_id, chain.block_number), (1337, 16));
    assert_eq!(accounts.len(), 9);
    let records = TableRecords::of(&accounts).unwrap();
    // 1 + 1 + 1 + 2 + 5 + 24 chunks: the shared code once.
    assert_eq!(records.code.len(), 34);
    let tables = build_tables(&records);

    for account in &accounts {
        let (value, code) = read_account(&tables, &account.address).unwrap();
        assert_eq!((value.balance, value.nonce, &code), (account.balance, account.nonce, &account.code));
        assert_eq!(value.code_hash, code_hash(&account.code));
        for (slot, word) in &account.storage {
            assert_eq!(tables.storage.get(&storage_key(&account.address, slot)), Some(&word[..]));
        }
    }
    let rich = accounts.iter().find(|a| a.address[19] == 1).unwrap();
    assert_eq!(&rich.balance[20..], &1_000_000_000_000_000_000_000u128.to_be_bytes()[4..]);
    assert_eq!(rich.nonce, 7);
    // An account that does not exist is not found; an EOA has no code.
    assert!(read_account(&tables, &[0xee; 20]).is_none());
    let (eoa, code) =
        read_account(&tables, &accounts.iter().find(|a| a.address[19] == 2).unwrap().address).unwrap();
    assert_eq!((eoa.code_hash, code.len()), (EMPTY_CODE_HASH, 0));
}

#[test]
fn a_state_dump_replaces_the_genesis_alloc() {
    let lines = [
        json!({"root": "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421"}).to_string(),
        String::new(),
        json!({"balance": "5", "nonce": 2, "root": "0x00", "codeHash": "0x00", "address": address(7),
               "key": "0x00", "code": "0x6001", "storage": {format!("0x{:064x}", 3): "2a", format!("0x{:064x}", 4): "0x2b"}})
        .to_string(),
        json!({"balance": "0", "nonce": 0, "address": address(8)}).to_string(),
    ];
    let accounts = read_dump(lines.join("\n").as_bytes()).unwrap();
    assert_eq!(accounts.len(), 2);
    assert_eq!(accounts[0].code, vec![0x60, 0x01]);
    let words: Vec<u8> = accounts[0].storage.values().map(|word| word[31]).collect();
    assert_eq!(words, vec![0x2a, 0x2b]);

    let no_address = json!({"balance": "1", "nonce": 0, "key": "0xabc"}).to_string();
    let error = read_dump(format!("{}\n{no_address}\n", lines[0]).as_bytes()).unwrap_err();
    assert!(matches!(error, Error::DumpLine { line: 2, .. }), "{error}");
    let error = read_dump("{not json".as_bytes()).unwrap_err();
    assert!(matches!(error, Error::DumpLine { line: 1, .. }), "{error}");
}

#[test]
fn malformed_accounts_are_refused_naming_the_account_and_field() {
    let refused = |alloc: serde_json::Value| {
        let genesis = json!({"config": {"chainId": 1}, "alloc": alloc});
        read_genesis(&genesis.to_string()).and_then(|(_, accounts)| TableRecords::of(&accounts).map(|_| ()))
    };
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"0x12": {}}), "0x12: address"),
        (json!({(address(1)): {"balance": "-5"}}), "balance"),
        (json!({(address(1)): {"balance": "1e18"}}), "balance"),
        (json!({(address(1)): {"nonce": "0x"}}), "nonce"),
        (json!({(address(1)): {"code": "6001"}}), "code"),
        (json!({(address(1)): {"code": "0x600"}}), "code"),
        (json!({(address(1)): {"storage": {"1": "0x01"}}}), "storage slot 1"),
        (json!({(address(1)): {"storage": {"0x1": 7}}}), "storage slot 0x1"),
        (json!({(address(1)): {"storage": {"0x1": "0x01", "0x01": "0x02"}}}), "appears twice"),
        (
            json!({(address(1)): {"code": format!("0x{}", "00".repeat(MAX_CODE_LEN + 1))}}),
            "more than the limit",
        ),
        (json!({(address(1)): {}, (address(1)[2..].to_string()): {}}), "appears twice"),
    ];
    for (alloc, expected) in cases {
        let error = refused(alloc.clone()).unwrap_err().to_string();
        assert!(error.starts_with("account ") && error.contains(expected), "{alloc}: {error}");
    }
    assert!(read_genesis(&json!({"alloc": {}}).to_string()).unwrap_err().to_string().contains("chainId"));
    assert!(
        read_genesis(&json!({"config": {"chainId": 1}}).to_string())
            .unwrap_err()
            .to_string()
            .contains("alloc")
    );
    // A state with many storage words per account keeps them all.
    let storage: BTreeMap<String, String> =
        (1..=500u32).map(|s| (format!("0x{s:x}"), format!("0x{s:x}"))).collect();
    let genesis = json!({"config": {"chainId": 1}, "alloc": {(address(9)): {"storage": storage}}});
    let (_, accounts) = read_genesis(&genesis.to_string()).unwrap();
    assert_eq!(TableRecords::of(&accounts).unwrap().storage.len(), 500);
}
