//! `eth.json`: what `morphogen eth build` wrote into its output directory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::records::{ACCOUNT_VALUE_LEN, CODE_VALUE_LEN, STORAGE_VALUE_LEN};
use crate::state::Chain;

/// The file name of the manifest in a table directory.
pub const MANIFEST_FILE: &str = "eth.json";

/// The names of the three tables, each served from `<name>.mgdb`.
pub const TABLE_NAMES: [&str; 3] = ["accounts", "storage", "code"];

/// The page size and value size of a table, and the fewest records it is
/// built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableShape {
    /// Bytes of a page.
    pub page_size: u32,
    /// Bytes of a value.
    pub value_size: usize,
    /// Records a followed chain may soon need room for, however few the
    /// state holds: the storage table gets the slots of the system
    /// contracts' rings (EIP-2935's 8,191 and EIP-4788's 16,382) and more.
    pub min_records: u64,
}

/// The shape of each table, in [`TABLE_NAMES`] order: rows of 80, 40 and
/// 1,036 bytes, so 51, 102 and 7 to a page.
pub const TABLE_SHAPES: [TableShape; 3] = [
    TableShape { page_size: 4096, value_size: ACCOUNT_VALUE_LEN, min_records: 16_384 },
    TableShape { page_size: 4096, value_size: STORAGE_VALUE_LEN, min_records: 65_536 },
    TableShape { page_size: 8192, value_size: CODE_VALUE_LEN, min_records: 1_024 },
];

/// Which chain and block a directory of tables holds, and its tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The chain's id (`eth_chainId`).
    pub chain_id: u64,
    /// The block the state is as of (`eth_blockNumber`).
    pub block_number: u64,
    /// Table name → file name, beside the manifest.
    pub tables: BTreeMap<String, String>,
    /// Accounts, storage words and code chunks in the tables.
    pub counts: BTreeMap<String, u64>,
}

impl Manifest {
    /// The manifest of the three tables for `chain`, with their record counts.
    pub fn new(chain: Chain, counts: [u64; 3]) -> Manifest {
        Manifest {
            chain_id: chain.chain_id,
            block_number: chain.block_number,
            tables: TABLE_NAMES.iter().map(|name| (name.to_string(), format!("{name}.mgdb"))).collect(),
            counts: TABLE_NAMES.iter().zip(counts).map(|(name, count)| (name.to_string(), count)).collect(),
        }
    }
}
