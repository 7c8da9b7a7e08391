//! morphogen for Ethereum: the state of a chain at one block, read from a
//! geth-style genesis file or state dump, as three tables that private
//! lookups can read.
//!
//! | table | key | value |
//! |---|---|---|
//! | `accounts` | address (20 bytes) | balance (32, big-endian), nonce (8, big-endian), code hash (32) |
//! | `storage` | address ‖ slot (52) | the slot's word (32); zero words are not stored |
//! | `code` | code hash ‖ chunk index (34) | code length (4, big-endian) ‖ 1,024 bytes of code |
//!
//! Code is split into [`CODE_CHUNKS`] chunks of [`CODE_CHUNK_LEN`] bytes,
//! enough for the 24,576-byte limit of EIP-170, and a reader always asks for
//! all of them, so that how much code an account has does not show in how
//! many lookups read it. [`state`] parses the inputs strictly, naming the
//! account at fault; [`records`] encodes and decodes the tables' records.
//! Building the tables is `morphogen-eth-tables`': this crate needs neither
//! the table builder nor its files, so a reader depends on it alone.

pub mod blocks;
pub mod manifest;
pub mod records;
pub mod state;

pub use blocks::{BlockRef, FINALIZED, REVERT_TO, SAFE, followed_chain, parse_hash};
pub use manifest::{MANIFEST_FILE, Manifest, TABLE_NAMES, TABLE_SHAPES, TableShape};
pub use records::{
    ACCOUNT_VALUE_LEN, AccountValue, CODE_CHUNK_LEN, CODE_CHUNKS, CODE_VALUE_LEN, EMPTY_CODE_HASH,
    MAX_CODE_LEN, STORAGE_VALUE_LEN, TableRecords, code_chunk_key, code_from_chunks, code_hash, code_records,
    storage_key,
};
pub use state::{Account, Chain, Error, read_dump, read_genesis};
