//! The JSON bodies: a server's metadata and the error shape.

use serde::{Deserialize, Serialize};

/// What `GET /v1/meta` returns: everything a client needs to form queries
/// and to check that two servers hold the same table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// [`crate::PROTOCOL_VERSION`] of the server.
    pub protocol_version: u8,
    /// The digest of the current epoch, hex: at the snapshot's first
    /// epoch the BLAKE3 of its pages, after that the epoch digest chain.
    pub digest: String,
    /// The epoch the server answers from now.
    pub epoch: u64,
    /// BLAKE3 of the snapshot's pages (the `.mgdb` file's digest), hex.
    pub snapshot_digest: String,
    /// The oldest epoch the server can answer as of now.
    pub oldest_epoch: u64,
    /// How many epochs back the server keeps answering as of.
    pub epoch_window: u64,
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
    /// Rows no record holds: room for new keys (each needs a free row in
    /// one of its candidate pages, so a table can refuse a key before this
    /// reaches zero). Zero from servers older than the field.
    #[serde(default)]
    pub free_rows: u64,
    /// The engine answering queries.
    pub engine: String,
    /// Most queries the server takes in one request.
    pub max_batch: usize,
    /// A random id the server process draws at start-up, hex: two URLs
    /// whose metadata name the same instance reach the same server, which
    /// must never be given both shares of a key. Empty from servers older
    /// than the field.
    #[serde(default)]
    pub instance: String,
    /// The label of the batch that made the current epoch, as it was sent
    /// (see [`UpdateRequest::label`]); absent when it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<serde_json::Value>,
}

/// What `GET /v1/tables/{name}/epochs?from=E` returns: the epochs the
/// server can answer as of, from `E` (or its oldest) on, at most
/// [`MAX_EPOCHS_LISTED`], oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochList {
    /// The epochs, oldest first.
    pub epochs: Vec<EpochEntry>,
    /// The server's current epoch (the list may stop short of it).
    pub current: u64,
}

/// The most epochs one `GET …/epochs` lists.
pub const MAX_EPOCHS_LISTED: usize = 256;

/// One epoch a server can answer as of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEntry {
    /// Its number.
    pub epoch: u64,
    /// Its digest, hex.
    pub digest: String,
    /// The label of the batch that made it; absent when it had none (and
    /// for the snapshot's first epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<serde_json::Value>,
}

/// What `GET /v1/tables` returns: the names of the tables a server serves
/// (each at `/v1/tables/{name}/meta` and `/v1/tables/{name}/query`) and
/// what its operator's manifest says about them as a whole, for example
/// the chain and block of Ethereum tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Table names, sorted.
    pub tables: Vec<String>,
    /// The manifest's fields other than its list of files; empty for a
    /// server started on one table file.
    #[serde(default)]
    pub about: serde_json::Map<String, serde_json::Value>,
}

/// Whether `name` can name a table: 1 to 64 lower-case ASCII letters,
/// digits, `-` and `_`, so that it is a path segment and a metrics label
/// as it is.
pub fn is_table_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The body of every error answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// What went wrong, for programs: a short snake_case code.
    pub code: String,
    /// With `epoch_unavailable`: the oldest epoch the server can answer as of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_epoch: Option<u64>,
    /// With `sequence`: the sequence number the server expects next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_sequence: Option<u64>,
}

/// `POST /admin/v1/updates`: one batch of changes, applied as one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// One more than the last batch applied.
    pub sequence: u64,
    /// Applied in order.
    pub changes: Vec<ChangeBody>,
    /// What the epoch is to whoever feeds the table (for Ethereum tables,
    /// the block): any JSON, at most 4,096 bytes written compactly. The
    /// server logs it with the batch, makes it part of the epoch's digest,
    /// and publishes it with the epoch; it reads nothing in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<serde_json::Value>,
}

/// One change: set `key` to `value`, or delete `key` when `value` is null.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBody {
    /// The key, hex (1 to 64 bytes).
    pub key: String,
    /// The value, hex (at most the value size), or null to delete the key.
    pub value: Option<String>,
}

impl ChangeBody {
    /// The change's key and value (`None`: delete), decoded from hex and
    /// checked: the key is 1 to `max_key_len` bytes. The error quotes
    /// neither.
    pub fn decode(&self, max_key_len: usize) -> Result<(Vec<u8>, Option<Vec<u8>>), ChangeError> {
        let key = hex::decode(&self.key).map_err(|_| ChangeError::KeyNotHex)?;
        if key.is_empty() || key.len() > max_key_len {
            return Err(ChangeError::KeyLength { len: key.len(), max: max_key_len });
        }
        let value = match &self.value {
            Some(value) => Some(hex::decode(value).map_err(|_| ChangeError::ValueNotHex)?),
            None => None,
        };
        Ok((key, value))
    }
}

/// Why a change of an update batch does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The key is not hex.
    #[error("the key is not hex")]
    KeyNotHex,
    /// The key is empty or too long.
    #[error("the key is {len} bytes; keys are 1 to {max} bytes")]
    KeyLength {
        /// Its length.
        len: usize,
        /// The longest allowed.
        max: usize,
    },
    /// The value is not hex.
    #[error("the value is not hex")]
    ValueNotHex,
}

impl std::fmt::Debug for ChangeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and values are not for logs.
        f.debug_struct("ChangeBody").field("delete", &self.value.is_none()).finish_non_exhaustive()
    }
}

/// The answer to an applied update batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateReply {
    /// The epoch the batch made (its sequence number).
    pub epoch: u64,
    /// That epoch's digest, hex.
    pub digest: String,
    /// Records in the table now.
    pub records: u64,
    /// Rows the batch changed.
    pub changed_rows: usize,
    /// The batch had been applied before (it was sent again, the same
    /// sequence number and changes): nothing changed now, and the fields
    /// above are those of its epoch.
    #[serde(default)]
    pub already_applied: bool,
}

/// `POST /admin/v1/revert`: take the table's records back to what they
/// were at an earlier epoch, as the next sequenced step (a new epoch: the
/// log only grows). Answered as an update batch is ([`UpdateReply`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertRequest {
    /// One more than the last batch applied.
    pub sequence: u64,
    /// The epoch whose records to go back to, within the epoch window.
    pub to: u64,
    /// The new epoch's label, as an update batch's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<serde_json::Value>,
}

/// `POST /admin/v1/snapshot`: swap to another table file as the next
/// sequenced step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// The file's name in the server's snapshot directory.
    pub file: String,
    /// The label of the new snapshot's first epoch, as an update batch's
    /// (for a chain, the block the new table holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<serde_json::Value>,
    /// One more than the last batch applied: the epoch the new snapshot
    /// starts at.
    pub sequence: u64,
}

/// `POST /admin/v1/grow`: a batch that does not fit (409 `table_full`),
/// applied by growing: the server builds a larger table of its records at
/// the current epoch with the batch applied, and swaps to it as the
/// batch's epoch, like a snapshot swap (202, then the admin status). Two
/// servers at the same epoch given the same request build the same table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrowRequest {
    /// Pages of each sub-table of the new table (placement may take a few
    /// more); every server of a table must be given the same.
    pub pages_per_table: u64,
    /// The batch, as `POST /admin/v1/updates` takes it.
    #[serde(flatten)]
    pub batch: UpdateRequest,
}

/// Where a snapshot swap stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwapState {
    /// The file is being loaded and verified; the old snapshot answers.
    Loading,
    /// The new snapshot answers from the swap's epoch on.
    Swapped,
    /// The swap did not happen; the old snapshot still answers.
    Failed,
}

/// The latest snapshot swap a server was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapStatus {
    /// Where it stands.
    pub state: SwapState,
    /// The file asked for.
    pub file: String,
    /// Its sequence number: the epoch the new snapshot starts at.
    pub sequence: u64,
    /// With `failed`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /admin/v1/status`: the metadata of `/v1/meta` and the latest
/// snapshot swap, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStatus {
    /// What `/v1/meta` answers now.
    #[serde(flatten)]
    pub meta: Meta,
    /// The latest swap since the server started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_swap: Option<SwapStatus>,
}
