//! The records of the three tables, and how a reader turns looked-up
//! values back into account fields and code.

use std::collections::BTreeMap;

use sha3::{Digest, Keccak256};

use crate::state::{Account, Error};

/// Bytes of an `accounts` value: balance, nonce, code hash.
pub const ACCOUNT_VALUE_LEN: usize = 32 + 8 + 32;
/// Bytes of a `storage` value: one word.
pub const STORAGE_VALUE_LEN: usize = 32;
/// Bytes of code per `code` record.
pub const CODE_CHUNK_LEN: usize = 1024;
/// The most code an account may have (EIP-170).
pub const MAX_CODE_LEN: usize = 24_576;
/// Chunks a reader asks for, whatever the code's length.
pub const CODE_CHUNKS: usize = MAX_CODE_LEN / CODE_CHUNK_LEN;
/// Bytes of a `code` value: the code's length, then a chunk.
pub const CODE_VALUE_LEN: usize = 4 + CODE_CHUNK_LEN;

/// Keccak-256 of no bytes: the code hash of an account without code.
pub const EMPTY_CODE_HASH: [u8; 32] = [
    0xc5, 0xd2, 0x46, 0x01, 0x86, 0xf7, 0x23, 0x3c, 0x92, 0x7e, 0x7d, 0xb2, 0xdc, 0xc7, 0x03, 0xc0, 0xe5,
    0x00, 0xb6, 0x53, 0xca, 0x82, 0x27, 0x3b, 0x7b, 0xfa, 0xd8, 0x04, 0x5d, 0x85, 0xa4, 0x70,
];

/// Keccak-256 of `code`.
pub fn code_hash(code: &[u8]) -> [u8; 32] {
    Keccak256::digest(code).into()
}

/// An `accounts` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountValue {
    /// Balance in wei, big-endian.
    pub balance: [u8; 32],
    /// The account's nonce.
    pub nonce: u64,
    /// Keccak-256 of its code ([`EMPTY_CODE_HASH`] without code).
    pub code_hash: [u8; 32],
}

impl AccountValue {
    /// The value stored for `account`.
    pub fn of(account: &Account) -> AccountValue {
        AccountValue { balance: account.balance, nonce: account.nonce, code_hash: code_hash(&account.code) }
    }

    /// The stored bytes.
    pub fn encode(&self) -> [u8; ACCOUNT_VALUE_LEN] {
        let mut value = [0u8; ACCOUNT_VALUE_LEN];
        value[..32].copy_from_slice(&self.balance);
        value[32..40].copy_from_slice(&self.nonce.to_be_bytes());
        value[40..].copy_from_slice(&self.code_hash);
        value
    }

    /// Reads a looked-up value (the table may pad it; padding must be zero).
    pub fn decode(value: &[u8]) -> Result<AccountValue, String> {
        if value.len() < ACCOUNT_VALUE_LEN || value[ACCOUNT_VALUE_LEN..].iter().any(|&b| b != 0) {
            return Err(format!("an account value is {ACCOUNT_VALUE_LEN} bytes, not {}", value.len()));
        }
        Ok(AccountValue {
            balance: value[..32].try_into().expect("32 bytes"),
            nonce: u64::from_be_bytes(value[32..40].try_into().expect("8 bytes")),
            code_hash: value[40..72].try_into().expect("32 bytes"),
        })
    }
}

/// The `storage` key of `slot` of `address`.
pub fn storage_key(address: &[u8; 20], slot: &[u8; 32]) -> [u8; 52] {
    let mut key = [0u8; 52];
    key[..20].copy_from_slice(address);
    key[20..].copy_from_slice(slot);
    key
}

/// The `code` key of chunk `index` of the code with hash `hash`.
pub fn code_chunk_key(hash: &[u8; 32], index: usize) -> [u8; 34] {
    assert!(index < CODE_CHUNKS, "code has {CODE_CHUNKS} chunks");
    let mut key = [0u8; 34];
    key[..32].copy_from_slice(hash);
    key[32..].copy_from_slice(&(index as u16).to_be_bytes());
    key
}

/// The `code` values of `code`: one per started chunk, each with the length.
fn code_values(code: &[u8]) -> Vec<Vec<u8>> {
    code.chunks(CODE_CHUNK_LEN)
        .map(|chunk| {
            let mut value = Vec::with_capacity(CODE_VALUE_LEN);
            value.extend_from_slice(&(code.len() as u32).to_be_bytes());
            value.extend_from_slice(chunk);
            value.resize(CODE_VALUE_LEN, 0);
            value
        })
        .collect()
}

/// The `code` table's records of `code` (at most [`MAX_CODE_LEN`] bytes,
/// not empty): chunk key and value, one per started chunk.
pub fn code_records(code: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let hash = code_hash(code);
    code_values(code)
        .into_iter()
        .enumerate()
        .map(|(index, value)| (code_chunk_key(&hash, index).to_vec(), value))
        .collect()
}

/// Code back from the looked-up values of all [`CODE_CHUNKS`] chunk keys
/// of `hash` (`None` where not found), checked against the hash.
pub fn code_from_chunks(hash: &[u8; 32], chunks: &[Option<Vec<u8>>]) -> Result<Vec<u8>, String> {
    if *hash == EMPTY_CODE_HASH {
        return Ok(Vec::new());
    }
    let first = chunks.first().and_then(Option::as_ref).ok_or("the code's first chunk is missing")?;
    let len = first.get(..4).map(|bytes| u32::from_be_bytes(bytes.try_into().expect("4 bytes")) as usize);
    let len = len.filter(|&len| len > 0 && len <= MAX_CODE_LEN).ok_or("a code chunk has a bad length")?;
    let mut code = Vec::with_capacity(len);
    for index in 0..len.div_ceil(CODE_CHUNK_LEN) {
        let chunk =
            chunks.get(index).and_then(Option::as_ref).ok_or(format!("code chunk {index} is missing"))?;
        if chunk.len() < CODE_VALUE_LEN || chunk[..4] != first[..4] {
            return Err(format!("code chunk {index} is malformed"));
        }
        let take = (len - code.len()).min(CODE_CHUNK_LEN);
        code.extend_from_slice(&chunk[4..4 + take]);
    }
    if code_hash(&code) != *hash {
        return Err("the code read does not match its hash".to_string());
    }
    Ok(code)
}

/// The records of the three tables for a state, as (key, value) pairs.
#[derive(Debug, Default)]
pub struct TableRecords {
    /// One per account.
    pub accounts: Vec<(Vec<u8>, Vec<u8>)>,
    /// One per non-zero storage word.
    pub storage: Vec<(Vec<u8>, Vec<u8>)>,
    /// One per chunk of each distinct code.
    pub code: Vec<(Vec<u8>, Vec<u8>)>,
}

impl TableRecords {
    /// The records of `accounts`; refuses code over [`MAX_CODE_LEN`],
    /// naming the account.
    pub fn of(accounts: &[Account]) -> Result<TableRecords, Error> {
        let mut records = TableRecords::default();
        let mut codes: BTreeMap<[u8; 32], &[u8]> = BTreeMap::new();
        for account in accounts {
            if account.code.len() > MAX_CODE_LEN {
                return Err(Error::Account {
                    account: format!("0x{}", hex::encode(account.address)),
                    message: format!(
                        "code: {} bytes, more than the limit of {MAX_CODE_LEN}",
                        account.code.len()
                    ),
                });
            }
            let value = AccountValue::of(account);
            records.accounts.push((account.address.to_vec(), value.encode().to_vec()));
            for (slot, word) in &account.storage {
                records.storage.push((storage_key(&account.address, slot).to_vec(), word.to_vec()));
            }
            if !account.code.is_empty() {
                codes.insert(value.code_hash, &account.code);
            }
        }
        // Contracts with the same code share its chunks.
        for code in codes.into_values() {
            records.code.extend(code_records(code));
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_code_hash_is_keccak_of_nothing() {
        assert_eq!(code_hash(&[]), EMPTY_CODE_HASH);
    }

    #[test]
    fn code_of_every_length_comes_back_from_its_chunks() {
        for len in [1, 2, 1023, 1024, 1025, 5000, MAX_CODE_LEN - 1, MAX_CODE_LEN] {
            let code: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let hash = code_hash(&code);
            let mut chunks: Vec<Option<Vec<u8>>> = code_values(&code).into_iter().map(Some).collect();
            chunks.resize(CODE_CHUNKS, None);
            assert_eq!(code_from_chunks(&hash, &chunks).unwrap(), code, "{len}");
            // A missing chunk is an error, not shorter code.
            if len > CODE_CHUNK_LEN {
                let mut missing = chunks.clone();
                missing[1] = None;
                assert!(code_from_chunks(&hash, &missing).is_err(), "{len}");
            }
            // A damaged byte is caught by the hash.
            let mut damaged = chunks.clone();
            damaged[0].as_mut().unwrap()[4] ^= 1;
            assert!(code_from_chunks(&hash, &damaged).is_err(), "{len}");
        }
        assert_eq!(code_from_chunks(&EMPTY_CODE_HASH, &[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn account_values_round_trip_and_refuse_trailing_bytes() {
        let value = AccountValue { balance: [7; 32], nonce: 1 << 40, code_hash: [9; 32] };
        let mut padded = value.encode().to_vec();
        padded.resize(80, 0);
        assert_eq!(AccountValue::decode(&padded).unwrap(), value);
        padded[79] = 1;
        assert!(AccountValue::decode(&padded).is_err());
        assert!(AccountValue::decode(&value.encode()[..71]).is_err());
    }
}
