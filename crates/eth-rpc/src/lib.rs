//! An Ethereum JSON-RPC endpoint that wallets can point at, answering the
//! state methods through private lookups.
//!
//! ```text
//! wallet --JSON-RPC--> endpoint --DPF keys--> server A (accounts, storage, code)
//!                               --DPF keys--> server B (the same tables)
//!                               --other methods, if --upstream--> a node
//! ```
//!
//! `eth_getBalance`, `eth_getTransactionCount`, `eth_getCode` and
//! `eth_getStorageAt` are answered from the tables of `morphogen eth build`
//! ([`StateReader`]); `eth_chainId`, `net_version` and `eth_blockNumber`
//! from what the servers publish about them. Every other method is
//! forwarded unchanged to the upstream node if one is configured, and
//! otherwise answered -32601. The state methods are never forwarded, and
//! their parameters (addresses, slots) are never logged: they leave the
//! endpoint only as DPF keys. Single calls and batches (JSON-RPC 2.0) are
//! both answered; a batch's calls run concurrently, so that their lookups
//! share the servers' passes.

pub mod jsonrpc;
pub mod params;
mod reader;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use jsonrpc::{Body, Call, INTERNAL_ERROR, METHOD_NOT_FOUND, RpcError, STATE_UNAVAILABLE};
pub use reader::{At, Chain, Error, Held, StateReader};

/// Largest request body: a full batch of calls with their parameters.
const MAX_BODY: usize = 1 << 20;

/// A node that methods other than the state methods are forwarded to.
#[derive(Clone, Debug)]
pub struct Upstream {
    url: reqwest::Url,
    http: reqwest::Client,
}

impl Upstream {
    /// The node at `url` (http or https), waited for at most `timeout` per call.
    pub fn new(url: &str, timeout: Duration) -> Result<Upstream, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{url}: the scheme must be http or https"));
        }
        let http = reqwest::Client::builder().timeout(timeout).build().map_err(|e| e.to_string())?;
        Ok(Upstream { url, http })
    }

    /// The node's answer to `call`, sent as it came.
    async fn forward(&self, call: &Value) -> Result<Value, RpcError> {
        let failed =
            |why: String| RpcError::new(INTERNAL_ERROR, format!("the upstream node did not answer: {why}"));
        let response =
            self.http.post(self.url.clone()).json(call).send().await.map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let answer: Value = response.json().await.map_err(|e| failed(format!("HTTP {status}, {e}")))?;
        match answer {
            Value::Object(_) => Ok(answer),
            _ => Err(failed("its answer is not a JSON-RPC response".to_string())),
        }
    }
}

/// The endpoint: state read privately, other methods forwarded.
#[derive(Debug)]
pub struct Endpoint {
    reader: StateReader,
    upstream: Option<Upstream>,
}

/// What one call comes to.
enum Outcome {
    /// Answered here.
    Answered(Result<Value, RpcError>),
    /// Sent to the upstream node, whose answer is passed on as it is.
    Forwarded(Result<Value, RpcError>),
}

impl Endpoint {
    /// An endpoint reading state through `reader`, forwarding other methods
    /// to `upstream` if given.
    pub fn new(reader: StateReader, upstream: Option<Upstream>) -> Endpoint {
        Endpoint { reader, upstream }
    }

    /// The answer to a request body: `None` when it held only notifications.
    pub async fn answer(&self, body: &[u8]) -> Option<Value> {
        match jsonrpc::parse(body) {
            Body::Invalid(error) => Some(jsonrpc::error(Value::Null, &error)),
            Body::Single(call) => self.answer_call(call).await,
            Body::Batch(calls) => {
                let answers: Vec<Value> = join_all(calls.into_iter().map(|call| self.answer_call(call)))
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                (!answers.is_empty()).then_some(Value::Array(answers))
            }
        }
    }

    async fn answer_call(&self, call: Result<Call, RpcError>) -> Option<Value> {
        let call = match call {
            Ok(call) => call,
            Err(error) => return Some(jsonrpc::error(Value::Null, &error)),
        };
        let local = Local::named(&call.method);
        // A notification gets no answer: one for a local method would read
        // state for nothing; others may matter upstream (a transaction).
        if call.id.is_none() && local.is_some() {
            return None;
        }
        let outcome = match local {
            Some(local) => Outcome::Answered(self.answer_locally(local, &call).await),
            None => self.forward(&call).await,
        };
        let id = call.id?;
        let method = call.method.as_str();
        Some(match outcome {
            Outcome::Answered(Ok(result)) => {
                tracing::debug!(method, "answered");
                jsonrpc::result(id, result)
            }
            Outcome::Answered(Err(error)) | Outcome::Forwarded(Err(error)) => {
                tracing::debug!(method, code = error.code, "answered with an error");
                jsonrpc::error(id, &error)
            }
            Outcome::Forwarded(Ok(answer)) => {
                tracing::debug!(method, "forwarded");
                answer
            }
        })
    }

    async fn answer_locally(&self, local: Local, call: &Call) -> Result<Value, RpcError> {
        let chain = self.reader.chain();
        match local {
            Local::ChainId => no_params(call).map(|()| json!(format!("{:#x}", chain.chain_id))),
            Local::NetVersion => no_params(call).map(|()| json!(chain.chain_id.to_string())),
            Local::BlockNumber => {
                no_params(call)?;
                let latest = self.reader.resolve(At::Latest).await.map_err(lookup_failed)?;
                Ok(json!(format!("{:#x}", latest.number)))
            }
            Local::Balance => {
                let (address, at) = address_at_block(call)?;
                let address = &address;
                let reader = &self.reader;
                let account = reader.read_at(at, |at| reader.account_at(address, at));
                Ok(json!(params::format_quantity(&account.await.map_err(lookup_failed)?.balance)))
            }
            Local::TransactionCount => {
                let (address, at) = address_at_block(call)?;
                let address = &address;
                let reader = &self.reader;
                let account = reader.read_at(at, |at| reader.account_at(address, at));
                Ok(json!(params::format_quantity(&account.await.map_err(lookup_failed)?.nonce.to_be_bytes())))
            }
            Local::Code => {
                let (address, at) = address_at_block(call)?;
                let address = &address;
                let reader = &self.reader;
                let code = reader.read_at(at, |at| reader.code_at(address, at));
                Ok(json!(params::format_data(&code.await.map_err(lookup_failed)?)))
            }
            Local::StorageAt => {
                let given = params::positional(&call.params, &["address", "slot", "block"], 1)?;
                let address = params::address(given[0])?;
                let slot = params::slot(given[1])?;
                let at = params::block(given.get(2).copied())?;
                let (address, slot) = (&address, &slot);
                let reader = &self.reader;
                let word = reader.read_at(at, |at| reader.storage_at(address, slot, at));
                Ok(json!(params::format_data(&word.await.map_err(lookup_failed)?)))
            }
        }
    }

    /// A method not answered here: to the upstream node, or -32601.
    async fn forward(&self, call: &Call) -> Outcome {
        match &self.upstream {
            Some(upstream) => Outcome::Forwarded(upstream.forward(&call.raw).await),
            None => Outcome::Answered(Err(RpcError::new(
                METHOD_NOT_FOUND,
                format!(
                    "the method {:?} is not answered here (only the state methods, privately) \
                     and no upstream node is configured",
                    call.method
                ),
            ))),
        }
    }

    /// Serves the endpoint at `POST /` on `listener` until `shutdown`
    /// completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = Router::new()
            .route("/", post(handle))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(Arc::new(self));
        axum::serve(listener, router).with_graceful_shutdown(shutdown).await
    }
}

/// The methods answered here, never forwarded: the one list of them.
#[derive(Clone, Copy, Debug)]
enum Local {
    ChainId,
    NetVersion,
    BlockNumber,
    Balance,
    TransactionCount,
    Code,
    StorageAt,
}

impl Local {
    fn named(method: &str) -> Option<Local> {
        Some(match method {
            "eth_chainId" => Local::ChainId,
            "net_version" => Local::NetVersion,
            "eth_blockNumber" => Local::BlockNumber,
            "eth_getBalance" => Local::Balance,
            "eth_getTransactionCount" => Local::TransactionCount,
            "eth_getCode" => Local::Code,
            "eth_getStorageAt" => Local::StorageAt,
            _ => return None,
        })
    }
}

fn no_params(call: &Call) -> Result<(), RpcError> {
    params::positional(&call.params, &[], 0).map(|_| ())
}

/// -32603 for a failed private lookup; the error names servers, never keys.
/// The address and block of `[address, block]` parameters.
fn address_at_block(call: &Call) -> Result<([u8; 20], At), RpcError> {
    let given = params::positional(&call.params, &["address", "block"], 1)?;
    Ok((params::address(given[0])?, params::block(given.get(1).copied())?))
}

fn lookup_failed(error: Error) -> RpcError {
    if let Error::BlockUnavailable(message) = &error {
        return RpcError::new(STATE_UNAVAILABLE, message.clone());
    }
    tracing::warn!(%error, "a private lookup failed");
    RpcError::new(INTERNAL_ERROR, format!("private lookup failed: {error}"))
}

async fn handle(State(endpoint): State<Arc<Endpoint>>, body: Bytes) -> Response {
    match endpoint.answer(&body).await {
        Some(answer) => ([(header::CONTENT_TYPE, "application/json")], answer.to_string()).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}
