//! Why a lookup, or an admin request, failed.

/// Why a lookup failed. Messages name servers and parameters, never keys or values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server URL is malformed.
    #[error("server URL {url:?}: {message}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// A server could not be reached or did not answer in time.
    #[error("server {server}: {message}")]
    Unreachable {
        /// The server's URL.
        server: String,
        /// What happened.
        message: String,
    },
    /// A server answered with an error.
    #[error("server {server} answered {status} ({code}): {message}")]
    Server {
        /// The server's URL.
        server: String,
        /// HTTP status.
        status: u16,
        /// The server's error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// A server's answer does not follow the protocol.
    #[error("server {server}: {message}")]
    Protocol {
        /// The server's URL.
        server: String,
        /// What is wrong.
        message: String,
    },
    /// The two servers do not serve the same table.
    #[error("the two servers disagree on the {0}; they must serve the same table")]
    Mismatch(&'static str),
    /// The two URLs reach one server, which would see both shares of every key.
    #[error(
        "both server URLs reach the same server (instance {instance}), which would learn every key looked up: \
         give the URLs of two servers run by parties that do not collude"
    )]
    SameServer {
        /// The server's instance id.
        instance: String,
    },
    /// A key to look up is empty or too long.
    #[error("key {index} is {len} bytes; keys are 1 to 64 bytes")]
    KeyLength {
        /// Position of the key in the request.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// The client could not be set up or could not form a request.
    #[error("client setup: {0}")]
    Setup(String),
}
