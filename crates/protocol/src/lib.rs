//! The wire format between a morphogen client and a server (see
//! `docs/PROTOCOL.md` for every byte).
//!
//! ```text
//! client                                   server A            server B
//!   locate(key) -> page p_j in each sub-table j
//!   (kA_j, kB_j) = dpf::generate(pages_j, p_j)
//!   --- Request {epoch, [kA_1..kA_k]} ---->  scan
//!   --- Request {epoch, [kB_1..kB_k]} ------------------------>  scan
//!   <-- Response [pages A_1..A_k] ---------
//!   <-- Response [pages B_1..B_k] -------------------------------
//!   page_j = A_j xor B_j ; find the row whose tag matches the key
//! ```
//!
//! Query batches and answers are compact binary bodies; metadata and errors
//! are JSON. Decoders check every length before they allocate and never panic.

mod json;

pub use json::{
    AdminStatus, Catalog, ChangeBody, ChangeError, EpochEntry, EpochList, ErrorBody, GrowRequest,
    MAX_EPOCHS_LISTED, Meta, RevertRequest, SnapshotRequest, SwapState, SwapStatus, UpdateReply,
    UpdateRequest, is_table_name,
};
use morphogen_dpf::Key;

/// The version byte this crate writes and reads.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes before the keys of a request and before the pages of a response.
pub const HEADER_LEN: usize = 16;

/// Content type of request and response bodies.
pub const CONTENT_TYPE: &str = "application/vnd.morphogen.v1";

/// The epoch a request names; [`Epoch::Latest`] takes whatever the server has now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epoch {
    /// The server's current epoch (encoded as 2^64 - 1).
    Latest,
    /// This exact epoch.
    Exact(u64),
}

/// Wire value of [`Epoch::Latest`].
const LATEST: u64 = u64::MAX;

impl Epoch {
    fn to_wire(self) -> u64 {
        match self {
            Epoch::Latest => LATEST,
            Epoch::Exact(epoch) => epoch,
        }
    }

    fn from_wire(value: u64) -> Epoch {
        if value == LATEST { Epoch::Latest } else { Epoch::Exact(value) }
    }
}

/// A batch of queries for one server: `keys[q][j]` is query q's key for sub-table j.
#[derive(Clone, Debug)]
pub struct Request {
    /// The epoch the answers must come from.
    pub epoch: Epoch,
    /// One entry per query, each with one key per sub-table.
    pub queries: Vec<Vec<Key>>,
}

impl Request {
    /// Encodes the request. Every query must have the same number of keys
    /// (1 to 255), every key the same domain, and there must be 1 to 65535
    /// queries; the encoder checks this.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let count = u16::try_from(self.queries.len()).map_err(|_| Error::QueryCount(self.queries.len()))?;
        if count == 0 {
            return Err(Error::QueryCount(0));
        }
        let choices = self.queries[0].len();
        let choices_byte = u8::try_from(choices).ok().filter(|&k| k > 0).ok_or(Error::Choices(choices))?;
        let domain = self.queries[0].first().map(Key::domain).unwrap_or(0);
        let key_len =
            Key::encoded_len(domain).map_err(|source| Error::Key { query: 0, sub_table: 0, source })?;
        let mut out = Vec::with_capacity(HEADER_LEN + usize::from(count) * choices * key_len);
        out.extend_from_slice(&[PROTOCOL_VERSION, choices_byte]);
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_wire().to_le_bytes());
        out.extend_from_slice(&(key_len as u32).to_le_bytes());
        for (query, keys) in self.queries.iter().enumerate() {
            if keys.len() != choices {
                return Err(Error::MixedChoices { query, expected: choices, actual: keys.len() });
            }
            for (sub_table, key) in keys.iter().enumerate() {
                if key.domain() != domain {
                    return Err(Error::MixedDomains { query, sub_table });
                }
                key.write_to(&mut out);
            }
        }
        Ok(out)
    }

    /// Decodes and checks a request body. `max_queries` bounds the batch
    /// before any key is decoded.
    pub fn decode(body: &[u8], max_queries: usize) -> Result<Request, Error> {
        let header = Header::read(body)?;
        let count = usize::from(header.count);
        if count == 0 || count > max_queries {
            return Err(Error::TooManyQueries { count, max: max_queries });
        }
        let choices = usize::from(header.choices);
        if choices == 0 {
            return Err(Error::Choices(0));
        }
        let key_len = header.size as usize;
        let expected = count
            .checked_mul(choices)
            .and_then(|n| n.checked_mul(key_len))
            .and_then(|n| n.checked_add(HEADER_LEN))
            .ok_or(Error::BodyLength { expected: u64::MAX, actual: body.len() })?;
        if body.len() != expected {
            return Err(Error::BodyLength { expected: expected as u64, actual: body.len() });
        }
        let mut keys = body[HEADER_LEN..].chunks_exact(key_len.max(1));
        let mut queries = Vec::with_capacity(count);
        let mut domain = None;
        for query in 0..count {
            let mut row = Vec::with_capacity(choices);
            for sub_table in 0..choices {
                let bytes =
                    keys.next().ok_or(Error::BodyLength { expected: expected as u64, actual: body.len() })?;
                let key = Key::from_bytes(bytes).map_err(|source| Error::Key { query, sub_table, source })?;
                // A request speaks for one table: every key has the same domain.
                if *domain.get_or_insert(key.domain()) != key.domain() {
                    return Err(Error::MixedDomains { query, sub_table });
                }
                row.push(key);
            }
            queries.push(row);
        }
        Ok(Request { epoch: Epoch::from_wire(header.epoch), queries })
    }
}

/// A server's answers to one request: for each query, one page per sub-table.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// The epoch every answer comes from.
    pub epoch: u64,
    /// Number of queries answered.
    pub queries: usize,
    /// Pages per answer (the table's number of sub-tables).
    pub choices: usize,
    /// Bytes per page.
    pub page_size: usize,
    /// `queries × choices` pages, query after query.
    pub pages: Vec<u8>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pages are a share of a private answer: not for logs.
        f.debug_struct("Response")
            .field("epoch", &self.epoch)
            .field("queries", &self.queries)
            .field("choices", &self.choices)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// Encodes answers: `pages` holds `queries × choices` pages of `page_size` bytes.
    pub fn encode(epoch: u64, choices: usize, page_size: usize, pages: &[u8]) -> Result<Vec<u8>, Error> {
        let choices_byte = u8::try_from(choices).ok().filter(|&k| k > 0).ok_or(Error::Choices(choices))?;
        let page_size_word =
            u32::try_from(page_size).ok().filter(|&p| p > 0).ok_or(Error::PageSize(page_size))?;
        let per_query = choices * page_size;
        if !pages.len().is_multiple_of(per_query) {
            return Err(Error::BodyLength { expected: per_query as u64, actual: pages.len() });
        }
        let queries = pages.len() / per_query;
        let count = u16::try_from(queries).map_err(|_| Error::QueryCount(queries))?;
        let mut out = Vec::with_capacity(HEADER_LEN + pages.len());
        out.extend_from_slice(&[PROTOCOL_VERSION, choices_byte]);
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&page_size_word.to_le_bytes());
        out.extend_from_slice(pages);
        Ok(out)
    }

    /// Decodes a response body and checks its length. Answers of no pages
    /// or empty pages are refused: no table has them, and the encoder
    /// cannot write them.
    pub fn decode(body: &[u8]) -> Result<Response, Error> {
        let header = Header::read(body)?;
        let (queries, choices, page_size) =
            (usize::from(header.count), usize::from(header.choices), header.size as usize);
        if choices == 0 {
            return Err(Error::Choices(0));
        }
        if page_size == 0 {
            return Err(Error::PageSize(0));
        }
        let expected = (queries as u64) * (choices as u64) * (page_size as u64) + HEADER_LEN as u64;
        if body.len() as u64 != expected {
            return Err(Error::BodyLength { expected, actual: body.len() });
        }
        Ok(Response { epoch: header.epoch, queries, choices, page_size, pages: body[HEADER_LEN..].to_vec() })
    }

    /// The pages answering query `query`, sub-table after sub-table.
    pub fn answer(&self, query: usize) -> &[u8] {
        let len = self.choices * self.page_size;
        &self.pages[query * len..(query + 1) * len]
    }
}

/// The 16-byte header shared by requests and responses.
struct Header {
    choices: u8,
    count: u16,
    epoch: u64,
    /// Key length in a request, page size in a response.
    size: u32,
}

impl Header {
    fn read(body: &[u8]) -> Result<Header, Error> {
        let header: &[u8; HEADER_LEN] = body
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Error::BodyLength { expected: HEADER_LEN as u64, actual: body.len() })?;
        if header[0] != PROTOCOL_VERSION {
            return Err(Error::Version(header[0]));
        }
        let [_, choices, c0, c1, e0, e1, e2, e3, e4, e5, e6, e7, s0, s1, s2, s3] = *header;
        Ok(Header {
            choices,
            count: u16::from_le_bytes([c0, c1]),
            epoch: u64::from_le_bytes([e0, e1, e2, e3, e4, e5, e6, e7]),
            size: u32::from_le_bytes([s0, s1, s2, s3]),
        })
    }
}

/// Why a body could not be encoded or decoded. Never quotes key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The version byte is not [`PROTOCOL_VERSION`].
    #[error("protocol version {0} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version(u8),
    /// The body's length does not match what its header announces.
    #[error("body is {actual} bytes, its header announces {expected}")]
    BodyLength {
        /// Length the header implies (2^64 - 1 if it overflows).
        expected: u64,
        /// Length received.
        actual: usize,
    },
    /// The batch holds no queries or more than the limit.
    #[error("batch holds {count} queries, the limit is 1 to {max}")]
    TooManyQueries {
        /// Queries announced.
        count: usize,
        /// Most this side accepts.
        max: usize,
    },
    /// A batch to encode holds no queries or more than 65535.
    #[error("a batch holds 1 to 65535 queries, not {0}")]
    QueryCount(usize),
    /// Queries have no keys, or more than 255 (answers: pages per answer).
    #[error("a query holds 1 to 255 keys, not {0}")]
    Choices(usize),
    /// An answer's pages are empty or larger than 2^32 - 1 bytes.
    #[error("pages are 1 to 4294967295 bytes, not {0}")]
    PageSize(usize),
    /// Queries of one batch have different numbers of keys.
    #[error("query {query} has {actual} keys, the first has {expected}")]
    MixedChoices {
        /// Index of the query.
        query: usize,
        /// Keys of the first query.
        expected: usize,
        /// Keys of this one.
        actual: usize,
    },
    /// Keys of one batch have different domains.
    #[error("query {query}, key {sub_table}: domain differs from the first key's")]
    MixedDomains {
        /// Index of the query.
        query: usize,
        /// Index of the key in the query.
        sub_table: usize,
    },
    /// A key does not decode.
    #[error("query {query}, key {sub_table}: {source}")]
    Key {
        /// Index of the query.
        query: usize,
        /// Index of the key in the query.
        sub_table: usize,
        /// What is wrong with it.
        source: morphogen_dpf::Error,
    },
}
