//! `morphogen eth follow`: tables that follow a chain block by block.
//!
//! For each block after the one the servers hold, the follower reads the
//! block and the state diff of each of its transactions from a node (the
//! `prestateTracer` in diff mode), adds what changes outside transactions
//! (fees, withdrawals, the system contracts' slots), reads the values of
//! all of it as of the block, and sends each table of each server one
//! batch, even an empty one, labelled with the block. It keeps no state of
//! its own: the servers' labels say where to go on from.

mod changes;
mod feed;
mod metrics;
mod node;

pub use feed::{Follower, Settings, Step};
pub use metrics::{Metrics, serve_metrics};
pub use morphogen_eth::BlockRef;
pub use node::{Block, Node};

/// Why the follower stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It was started with settings it cannot use.
    #[error("{0}")]
    Config(String),
    /// The node could not be reached, or did not answer in time.
    #[error("the node at {url}: {message}")]
    Node {
        /// The node's URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// The node answered a call with an error.
    #[error("the node answered {method} with an error: {message}")]
    Rpc {
        /// The method called.
        method: String,
        /// The node's message.
        message: String,
    },
    /// The node's answer is not what the method answers.
    #[error("the node's answer to {method}: {message}")]
    Answer {
        /// The method called.
        method: String,
        /// What is wrong with it.
        message: String,
    },
    /// The chain or the tables are not as the follower needs them.
    #[error("{0}")]
    Chain(String),
    /// A server refused or failed a request.
    #[error("server {server}, table {table}: {source}")]
    Server {
        /// The server's admin URL.
        server: String,
        /// The table.
        table: &'static str,
        /// What the server said.
        source: morphogen_client::Error,
    },
    /// Work a server was doing for the follower stopped (it restarted):
    /// the next step does it again.
    #[error("{0}")]
    Interrupted(String),
    /// A bug of the follower.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether trying again later may succeed: the node or a server could
    /// not be reached, or a server was briefly unable to answer (503).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Node { .. } | Error::Interrupted(_) => true,
            Error::Server { source, .. } => match source {
                morphogen_client::Error::Unreachable { .. }
                | morphogen_client::Error::Server { status: 503, .. } => true,
                // A table being grown (or swapped) takes batches again once it is done.
                morphogen_client::Error::Server { status: 409, code, .. } => code == "swap_in_progress",
                _ => false,
            },
            _ => false,
        }
    }
}
