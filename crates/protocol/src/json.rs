//! The JSON bodies: a server's metadata and the error shape.

use serde::{Deserialize, Serialize};

/// What `GET /v1/meta` returns: everything a client needs to form queries
/// and to check that two servers hold the same table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// [`crate::PROTOCOL_VERSION`] of the server.
    pub protocol_version: u8,
    /// BLAKE3 of the table's pages, hex.
    pub digest: String,
    /// The epoch the server answers from now.
    pub epoch: u64,
    /// Bytes per page.
    pub page_size: u32,
    /// Bytes per row: tag and value.
    pub row_size: u32,
    /// Bytes per value.
    pub value_size: u32,
    /// Pages in each sub-table, one entry per sub-table.
    pub sub_tables: Vec<u64>,
    /// Seed of the table's hash keys, hex.
    pub hash_seed: String,
    /// Records in the table.
    pub records: u64,
    /// The engine answering queries.
    pub engine: String,
    /// Most queries the server takes in one request.
    pub max_batch: usize,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// What went wrong, for programs: a short snake_case code.
    pub code: String,
}
