//! `eth.json`: what `morphogen eth build` wrote into its output directory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::state::Chain;

/// The file name of the manifest in a table directory.
pub const MANIFEST_FILE: &str = "eth.json";

/// The names of the three tables, each served from `<name>.mgdb`.
pub const TABLE_NAMES: [&str; 3] = ["accounts", "storage", "code"];

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
