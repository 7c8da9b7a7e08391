//! What one block changes in the three tables: the accounts and slots its
//! transactions' diffs name, its withdrawals and the system contracts'
//! writes, and then, from their values as of the block, each table's
//! changes. Pure: the node's answers go in, the batches come out, in a
//! fixed order, so that the same block always makes the same batches.

use std::collections::{BTreeMap, BTreeSet};

use morphogen_eth::{AccountValue, EMPTY_CODE_HASH, MAX_CODE_LEN, code_hash, code_records, storage_key};
use morphogen_protocol::ChangeBody;

use crate::Error;
use crate::node::{Block, Funds, TxDiff};

/// The EIP-4788 beacon roots contract: each block writes its timestamp and
/// the parent beacon root into two slots of a ring of 8,191.
const BEACON_ROOTS: [u8; 20] = address("000F3df6D732807Ef1319fB7B8bB8522d0Beac02");
/// The EIP-2935 block hashes contract: each block writes its parent's hash
/// into slot `(number - 1) mod 8191`.
const HISTORY: [u8; 20] = address("0000F90827F1C53a10cb7A02335B175320002935");
/// The EIP-7002 withdrawal and EIP-7251 consolidation request queues: the
/// end of each block updates their first four slots (excess, count, head,
/// tail).
const REQUEST_QUEUES: [[u8; 20]; 2] = [
    address("00000961Ef480Eb55e80D19ad83579A64c007002"),
    address("0000BBdDc7CE488642fb579F8B00f3a590007251"),
];
/// Slots of a ring of system-contract history.
const RING: u64 = 8191;

const fn address(hex: &str) -> [u8; 20] {
    let hex = hex.as_bytes();
    let mut out = [0u8; 20];
    let mut i = 0;
    while i < 20 {
        out[i] = (digit(hex[2 * i]) << 4) | digit(hex[2 * i + 1]);
        i += 1;
    }
    out
}

const fn digit(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit"),
    }
}

/// A slot number as a storage key.
fn slot(number: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[24..].copy_from_slice(&number.to_be_bytes());
    key
}

/// What a block touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Touched {
    /// Each account whose balance, nonce or code may have changed, with its
    /// code after the block where the traces tell it (`None`: read it).
    pub(crate) accounts: BTreeMap<[u8; 20], Option<Code>>,
    /// Each storage slot that may have changed.
    pub(crate) slots: BTreeSet<([u8; 20], [u8; 32])>,
}

/// An account's code after a block, as the traces tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Code {
    /// The bytes.
    pub(crate) bytes: Vec<u8>,
    /// Whether the block set it (a deployment): then its chunks are written.
    pub(crate) new: bool,
}

/// What `block`'s transactions (their diffs `txs`), withdrawals, fees and
/// system calls may have changed.
pub(crate) fn touched(block: &Block, txs: &[TxDiff]) -> Touched {
    let mut touched = Touched::default();
    for tx in txs {
        for (address, before) in &tx.pre {
            // The first transaction that touches an account shows its code
            // before the block; an account without code shows none.
            touched
                .accounts
                .entry(*address)
                .or_insert_with(|| Some(Code { bytes: before.code.clone().unwrap_or_default(), new: false }));
            touched.slots.extend(before.storage.keys().map(|slot| (*address, *slot)));
            if !tx.post.contains_key(address) {
                // Deleted by the transaction.
                touched.accounts.insert(*address, Some(Code { bytes: Vec::new(), new: false }));
            }
        }
        for (address, after) in &tx.post {
            let code = touched.accounts.entry(*address).or_insert(None);
            match (&after.code, code.as_mut()) {
                (Some(bytes), _) => *code = Some(Code { bytes: bytes.clone(), new: true }),
                // Created by this transaction, without code.
                (None, None) if !tx.pre.contains_key(address) => {
                    *code = Some(Code { bytes: Vec::new(), new: false })
                }
                _ => {}
            }
            touched.slots.extend(after.storage.keys().map(|slot| (*address, *slot)));
        }
    }
    // Fees, withdrawals: balances that change outside the transactions'
    // diffs (the fee recipient is usually in them too).
    for address in std::iter::once(&block.coinbase).chain(&block.withdrawals) {
        touched.accounts.entry(*address).or_insert(None);
    }
    // System calls before and after the transactions write these slots
    // (where the fork has the contracts; elsewhere they read as zero and
    // their deletes change nothing).
    let ring = block.timestamp % RING;
    touched.slots.insert((BEACON_ROOTS, slot(ring)));
    touched.slots.insert((BEACON_ROOTS, slot(ring + RING)));
    touched.slots.insert((HISTORY, slot(block.number.saturating_sub(1) % RING)));
    for queue in REQUEST_QUEUES {
        touched.slots.extend((0..4).map(|number| (queue, slot(number))));
    }
    touched
}

/// Each table's changes for one block, in the order of the tables
/// (accounts, storage, code).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TableChanges {
    pub(crate) accounts: Vec<ChangeBody>,
    pub(crate) storage: Vec<ChangeBody>,
    pub(crate) code: Vec<ChangeBody>,
}

/// The tables' changes from what a block touched and the values after it:
/// `funds` and `codes` of each account of `touched.accounts` (in its
/// order; the code where the traces did not tell it), `words` of each slot.
/// An account that is empty after the block (EIP-161: no balance, nonce or
/// code) is deleted, as is a slot that reads zero.
pub(crate) fn table_changes(
    touched: &Touched,
    funds: &[Funds],
    codes: &BTreeMap<[u8; 20], Vec<u8>>,
    words: &[[u8; 32]],
) -> Result<TableChanges, Error> {
    let mut changes = TableChanges::default();
    let mut new_code = BTreeMap::new();
    for ((address, code), funds) in touched.accounts.iter().zip(funds) {
        let bytes = match code {
            Some(code) => &code.bytes,
            None => {
                codes.get(address).ok_or_else(|| Error::Internal("an account's code was not read".into()))?
            }
        };
        if bytes.len() > MAX_CODE_LEN {
            return Err(Error::Chain(format!(
                "account 0x{} has {} bytes of code, more than the {MAX_CODE_LEN} the code table holds",
                hex::encode(address),
                bytes.len()
            )));
        }
        let hash = code_hash(bytes);
        let empty = funds.balance == [0; 32] && funds.nonce == 0 && hash == EMPTY_CODE_HASH;
        let value = (!empty).then(|| {
            hex::encode(AccountValue { balance: funds.balance, nonce: funds.nonce, code_hash: hash }.encode())
        });
        changes.accounts.push(ChangeBody { key: hex::encode(address), value });
        // New code, and code the traces did not tell (it may be new): its
        // chunks are written, once per code; a chunk written again with
        // the same bytes changes nothing.
        if !bytes.is_empty() && code.as_ref().is_none_or(|code| code.new) {
            new_code.insert(hash, bytes.as_slice());
        }
    }
    for ((address, slot), word) in touched.slots.iter().zip(words) {
        let value = (*word != [0; 32]).then(|| hex::encode(word));
        changes.storage.push(ChangeBody { key: hex::encode(storage_key(address, slot)), value });
    }
    for code in new_code.into_values() {
        changes.code.extend(
            code_records(code)
                .into_iter()
                .map(|(key, value)| ChangeBody { key: hex::encode(key), value: Some(hex::encode(value)) }),
        );
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::AccountDiff;

    fn block() -> Block {
        Block {
            number: 5,
            hash: [5; 32],
            parent_hash: [4; 32],
            timestamp: 8192,
            base_fee: None,
            gas_limit: 30_000_000,
            coinbase: [0xc0; 20],
            prevrandao: [0; 32],
            withdrawals: vec![[0xd0; 20]],
        }
    }

    fn account(code: Option<&[u8]>, slots: &[(u8, u8)]) -> AccountDiff {
        AccountDiff {
            code: code.map(<[u8]>::to_vec),
            storage: slots.iter().map(|&(slot, word)| ([slot; 32], [word; 32])).collect(),
        }
    }

    #[test]
    fn the_traces_name_accounts_slots_and_code_and_the_block_its_own() {
        let (sender, contract, created, gone) = ([1; 20], [2; 20], [3; 20], [4; 20]);
        let txs = [
            TxDiff {
                pre: [(sender, account(None, &[])), (contract, account(Some(b"old"), &[(7, 1)]))].into(),
                post: [(sender, account(None, &[])), (contract, account(None, &[(8, 2)]))].into(),
            },
            TxDiff {
                pre: [(sender, account(None, &[])), (gone, account(Some(b"bye"), &[]))].into(),
                post: [(sender, account(None, &[])), (created, account(Some(b"new"), &[(1, 1)]))].into(),
            },
        ];
        let touched = touched(&block(), &txs);
        let code = |bytes: &[u8], new| Some(Code { bytes: bytes.to_vec(), new });
        assert_eq!(touched.accounts[&sender], code(b"", false));
        assert_eq!(touched.accounts[&contract], code(b"old", false));
        assert_eq!(touched.accounts[&created], code(b"new", true));
        assert_eq!(touched.accounts[&gone], code(b"", false), "deleted: no code after the block");
        // The fee recipient and the withdrawal's: their code is read.
        assert_eq!(
            (touched.accounts[&[0xc0; 20]].clone(), touched.accounts[&[0xd0; 20]].clone()),
            (None, None)
        );
        for slot in [(contract, [7; 32]), (contract, [8; 32]), (created, [1; 32])] {
            assert!(touched.slots.contains(&slot), "{slot:?}");
        }
        // Timestamp 8192 is slot 1 of the beacon roots ring; block 5 writes slot 4 of the hashes.
        assert!(
            touched.slots.contains(&(BEACON_ROOTS, slot(1)))
                && touched.slots.contains(&(BEACON_ROOTS, slot(8192)))
        );
        assert!(touched.slots.contains(&(HISTORY, slot(4))));
    }

    #[test]
    fn empty_accounts_and_zero_words_are_deleted_and_new_code_is_chunked() {
        let (kept, emptied) = ([1; 20], [2; 20]);
        let touched = Touched {
            accounts: [(kept, Some(Code { bytes: vec![0x60; 1500], new: true })), (emptied, None)].into(),
            slots: [(kept, [1; 32]), (kept, [2; 32])].into(),
        };
        let funds = [Funds { balance: [0; 32], nonce: 1 }, Funds { balance: [0; 32], nonce: 0 }];
        let codes = [(emptied, Vec::new())].into();
        let changes = table_changes(&touched, &funds, &codes, &[[9; 32], [0; 32]]).unwrap();
        let expected = AccountValue { balance: [0; 32], nonce: 1, code_hash: code_hash(&[0x60; 1500]) };
        assert_eq!(changes.accounts[0].value, Some(hex::encode(expected.encode())));
        assert_eq!(
            (changes.accounts[1].key.clone(), changes.accounts[1].value.clone()),
            (hex::encode(emptied), None)
        );
        assert_eq!(changes.storage[0].value, Some(hex::encode([9; 32])));
        assert_eq!(changes.storage[1].value, None);
        assert_eq!(changes.code.len(), 2, "1,500 bytes are two chunks");
        // Code not told by the traces is read, and written, too.
        let unread = table_changes(&touched, &funds, &BTreeMap::new(), &[[9; 32], [0; 32]]);
        assert!(unread.is_err());
    }
}
