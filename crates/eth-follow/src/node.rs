//! The Ethereum node the follower reads: blocks, their state diffs, and the
//! values of what they touched, over standard JSON-RPC (plus
//! `debug_traceBlockByHash`, which geth, reth, erigon and anvil answer).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::Error;

/// Calls sent in one JSON-RPC batch at most: large enough that a busy
/// block's reads take few round trips, small enough for any node's limits.
const CALLS_PER_BATCH: usize = 500;

/// A node, reached over HTTP(S).
#[derive(Clone, Debug)]
pub struct Node {
    url: reqwest::Url,
    http: reqwest::Client,
}

/// What the follower needs of a block's header and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Its number.
    pub number: u64,
    /// Its hash.
    pub hash: [u8; 32],
    /// Its parent's hash.
    pub parent_hash: [u8; 32],
    /// Its timestamp, in seconds.
    pub timestamp: u64,
    /// Its base fee per gas, hex (`None` before London).
    pub base_fee: Option<String>,
    /// Its gas limit.
    pub gas_limit: u64,
    /// Who its fees go to.
    pub coinbase: [u8; 20],
    /// `mixHash`, the beacon chain's randomness since the merge.
    pub prevrandao: [u8; 32],
    /// The addresses its withdrawals credit.
    pub withdrawals: Vec<[u8; 20]>,
}

/// One transaction's diff from the `prestateTracer` in diff mode: the state
/// before of what it changed, and the changed fields after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxDiff {
    /// Accounts before the transaction.
    pub pre: BTreeMap<[u8; 20], AccountDiff>,
    /// Accounts after it: the fields that changed. An account in `pre` and
    /// not here was deleted.
    pub post: BTreeMap<[u8; 20], AccountDiff>,
}

/// The fields of one account in a [`TxDiff`] side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountDiff {
    /// Its code, when given.
    pub code: Option<Vec<u8>>,
    /// Storage slots given, with their words.
    pub storage: BTreeMap<[u8; 32], [u8; 32]>,
}

/// The block whose state to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateAt {
    /// The node's block of this number: fast on every node, but it may be
    /// another block than meant if the chain moves meanwhile (check after).
    Number(u64),
    /// The block of this hash (EIP-1898): what is meant, but slow on some
    /// nodes (anvil replays the state).
    Hash([u8; 32]),
}

impl StateAt {
    fn param(self) -> Value {
        match self {
            StateAt::Number(number) => json!(format!("0x{number:x}")),
            StateAt::Hash(hash) => json!({"blockHash": hex32(&hash)}),
        }
    }
}

/// The balance and nonce of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Funds {
    /// Balance in wei, big-endian.
    pub balance: [u8; 32],
    /// Its nonce.
    pub nonce: u64,
}

impl Node {
    /// The node at `url` (http or https), each call waited for at most `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Node, Error> {
        let parsed = reqwest::Url::parse(url).map_err(|e| Error::Config(format!("--node {url}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Config(format!("--node {url}: the scheme must be http or https")));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::Config(format!("an HTTP client: {e}")))?;
        Ok(Node { url: parsed, http })
    }

    /// Sends `calls` (method, params) as JSON-RPC batches and returns their
    /// results in order.
    async fn batch(&self, calls: &[(&str, Value)]) -> Result<Vec<Value>, Error> {
        let mut results = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(CALLS_PER_BATCH) {
            let body: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(id, (method, params))| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
                .collect();
            let response = self
                .http
                .post(self.url.clone())
                .json(&body)
                .send()
                .await
                .map_err(|e| self.unreachable(e.to_string()))?;
            let status = response.status();
            let answers: Value =
                response.json().await.map_err(|e| self.unreachable(format!("HTTP {status}: {e}")))?;
            let answers = match answers {
                Value::Array(answers) => answers,
                other => vec![other],
            };
            let mut by_id: BTreeMap<u64, Value> = BTreeMap::new();
            for answer in answers {
                let id = answer.get("id").and_then(Value::as_u64);
                if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
                    let method = id.and_then(|id| chunk.get(id as usize)).map_or("a call", |(m, _)| m);
                    let message = error.get("message").and_then(Value::as_str).unwrap_or("no message");
                    return Err(Error::Rpc { method: method.to_string(), message: message.to_string() });
                }
                if let Some(id) = id {
                    by_id.insert(id, answer.get("result").cloned().unwrap_or(Value::Null));
                }
            }
            for (id, (method, _)) in chunk.iter().enumerate() {
                let result = by_id.remove(&(id as u64)).ok_or_else(|| Error::Answer {
                    method: method.to_string(),
                    message: "no answer to the call in the node's batch".to_string(),
                })?;
                results.push(result);
            }
        }
        Ok(results)
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, Error> {
        Ok(self.batch(&[(method, params)]).await?.remove(0))
    }

    fn unreachable(&self, message: String) -> Error {
        Error::Node { url: self.url.to_string(), message }
    }

    /// The number of the node's newest block.
    pub async fn block_number(&self) -> Result<u64, Error> {
        let number = self.call("eth_blockNumber", json!([])).await?;
        quantity(&number, "eth_blockNumber")
    }

    /// Block `number`, or `None` if the node has none of that number yet.
    pub async fn block_by_number(&self, number: u64) -> Result<Option<Block>, Error> {
        let block = self.call("eth_getBlockByNumber", json!([format!("0x{number:x}"), false])).await?;
        parse_block(&block, "eth_getBlockByNumber")
    }

    /// The numbers of the blocks the node calls `safe` and `finalized`, each
    /// `None` where it names none (a chain without proof of stake, a node
    /// that does not track them: it answers with an error or null).
    pub async fn safe_and_finalized(&self) -> Result<(Option<u64>, Option<u64>), Error> {
        let number = |tag: &'static str| async move {
            match self.call("eth_getBlockByNumber", json!([tag, false])).await {
                Ok(block) => Ok(parse_block(&block, "eth_getBlockByNumber")?.map(|block| block.number)),
                Err(Error::Rpc { .. }) => Ok(None),
                Err(error) => Err(error),
            }
        };
        tokio::try_join!(number("safe"), number("finalized"))
    }

    /// The block of hash `hash`, or `None` if the node does not know it.
    pub async fn block_by_hash(&self, hash: &[u8; 32]) -> Result<Option<Block>, Error> {
        let block = self.call("eth_getBlockByHash", json!([hex32(hash), false])).await?;
        parse_block(&block, "eth_getBlockByHash")
    }

    /// Each transaction's state diff of the block of hash `hash`.
    pub async fn trace(&self, hash: &[u8; 32]) -> Result<Vec<TxDiff>, Error> {
        const METHOD: &str = "debug_traceBlockByHash";
        let config = json!({"tracer": "prestateTracer", "tracerConfig": {"diffMode": true}});
        let traces = self.call(METHOD, json!([hex32(hash), config])).await?;
        let bad = |message: String| Error::Answer { method: METHOD.to_string(), message };
        let traces = traces.as_array().ok_or_else(|| bad("not a list of transaction traces".into()))?;
        traces
            .iter()
            .enumerate()
            .map(|(index, trace)| {
                if let Some(error) = trace.get("error").and_then(Value::as_str) {
                    return Err(bad(format!("transaction {index} could not be traced: {error}")));
                }
                let result = trace.get("result").unwrap_or(trace);
                Ok(TxDiff {
                    pre: accounts(result.get("pre"), &bad)?,
                    post: accounts(result.get("post"), &bad)?,
                })
            })
            .collect()
    }

    /// The balance and nonce of each of `addresses` as of `at`.
    pub async fn funds(&self, at: StateAt, addresses: &[[u8; 20]]) -> Result<Vec<Funds>, Error> {
        let at = at.param();
        let calls: Vec<(&str, Value)> = addresses
            .iter()
            .flat_map(|address| {
                let address = format!("0x{}", hex::encode(address));
                [("eth_getBalance", json!([address, at])), ("eth_getTransactionCount", json!([address, at]))]
            })
            .collect();
        let results = self.batch(&calls).await?;
        results
            .chunks(2)
            .map(|pair| {
                Ok(Funds {
                    balance: word(&pair[0], "eth_getBalance")?,
                    nonce: quantity(&pair[1], "eth_getTransactionCount")?,
                })
            })
            .collect()
    }

    /// The storage words of `slots` as of `at`.
    pub async fn words(&self, at: StateAt, slots: &[([u8; 20], [u8; 32])]) -> Result<Vec<[u8; 32]>, Error> {
        let at = at.param();
        let calls: Vec<(&str, Value)> = slots
            .iter()
            .map(|(address, slot)| {
                ("eth_getStorageAt", json!([format!("0x{}", hex::encode(address)), hex32(slot), at]))
            })
            .collect();
        self.batch(&calls).await?.iter().map(|word_value| word(word_value, "eth_getStorageAt")).collect()
    }

    /// The code of each of `addresses` as of `at`.
    pub async fn codes(&self, at: StateAt, addresses: &[[u8; 20]]) -> Result<Vec<Vec<u8>>, Error> {
        let at = at.param();
        let calls: Vec<(&str, Value)> = addresses
            .iter()
            .map(|address| ("eth_getCode", json!([format!("0x{}", hex::encode(address)), at])))
            .collect();
        self.batch(&calls).await?.iter().map(|code| bytes(code, "eth_getCode")).collect()
    }
}

/// `0x` and the 64 hex digits of `bytes`.
pub(crate) fn hex32(bytes: &[u8; 32]) -> String {
    format!("0x{}", hex::encode(bytes))
}

fn parse_block(block: &Value, method: &str) -> Result<Option<Block>, Error> {
    if block.is_null() {
        return Ok(None);
    }
    let field =
        |name: &str| block.get(name).ok_or_else(|| answer(method, format!("the block has no {name}")));
    let withdrawals = match block.get("withdrawals") {
        Some(Value::Array(withdrawals)) => withdrawals
            .iter()
            .map(|w| fixed::<20>(w.get("address").unwrap_or(&Value::Null), method))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    let base_fee = block.get("baseFeePerGas").and_then(Value::as_str).map(str::to_string);
    Ok(Some(Block {
        number: quantity(field("number")?, method)?,
        hash: fixed(field("hash")?, method)?,
        parent_hash: fixed(field("parentHash")?, method)?,
        timestamp: quantity(field("timestamp")?, method)?,
        base_fee,
        gas_limit: quantity(field("gasLimit")?, method)?,
        coinbase: fixed(field("miner")?, method)?,
        prevrandao: block.get("mixHash").map_or(Ok([0; 32]), |mix| fixed(mix, method))?,
        withdrawals,
    }))
}

/// The accounts of one side of a diff-mode trace.
fn accounts(
    side: Option<&Value>,
    bad: &dyn Fn(String) -> Error,
) -> Result<BTreeMap<[u8; 20], AccountDiff>, Error> {
    let Some(side) = side.and_then(Value::as_object) else {
        return Ok(BTreeMap::new());
    };
    side.iter()
        .map(|(address, account)| {
            let address =
                parse_hex::<20>(address).ok_or_else(|| bad(format!("{address:?} is not an address")))?;
            let code = match account.get("code").and_then(Value::as_str) {
                Some(code) => Some(decode_hex(code).ok_or_else(|| bad("code is not hex".into()))?),
                None => None,
            };
            let mut storage = BTreeMap::new();
            if let Some(slots) = account.get("storage").and_then(Value::as_object) {
                for (slot, value) in slots {
                    let slot = parse_hex::<32>(slot).ok_or_else(|| bad(format!("{slot:?} is not a slot")))?;
                    let value = value
                        .as_str()
                        .and_then(parse_hex::<32>)
                        .ok_or_else(|| bad("a word is not hex".into()))?;
                    storage.insert(slot, value);
                }
            }
            Ok((address, AccountDiff { code, storage }))
        })
        .collect()
}

fn answer(method: &str, message: String) -> Error {
    Error::Answer { method: method.to_string(), message }
}

/// A JSON-RPC quantity (`0x` and hex digits) that fits in 64 bits.
fn quantity(value: &Value, method: &str) -> Result<u64, Error> {
    value
        .as_str()
        .and_then(|text| text.strip_prefix("0x"))
        .and_then(|digits| u64::from_str_radix(digits, 16).ok())
        .ok_or_else(|| answer(method, format!("{value} is not a quantity")))
}

/// A quantity of up to 256 bits, as 32 big-endian bytes.
fn word(value: &Value, method: &str) -> Result<[u8; 32], Error> {
    value
        .as_str()
        .and_then(parse_hex::<32>)
        .ok_or_else(|| answer(method, format!("{value} is not a 256-bit number")))
}

/// Data of `N` bytes (`0x` and up to 2N hex digits, left-padded).
fn fixed<const N: usize>(value: &Value, method: &str) -> Result<[u8; N], Error> {
    value
        .as_str()
        .and_then(parse_hex::<N>)
        .ok_or_else(|| answer(method, format!("{value} is not {N} bytes of hex")))
}

fn bytes(value: &Value, method: &str) -> Result<Vec<u8>, Error> {
    value.as_str().and_then(decode_hex).ok_or_else(|| answer(method, "not hex data".to_string()))
}

/// `0x` and an even number of hex digits.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text.strip_prefix("0x")?).ok()
}

/// `0x` and 1 to 2N hex digits, as N big-endian bytes.
pub(crate) fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    if digits.is_empty() || digits.len() > 2 * N {
        return None;
    }
    let padded = format!("{digits:0>width$}", width = 2 * N);
    let mut out = [0u8; N];
    hex::decode_to_slice(padded, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_mode_trace_reads_into_its_accounts() {
        let trace = json!({
            "pre": {"0x00000000000000000000000000000000000000aa": {"balance": "0x1", "code": "0x6001", "storage": {"0x0": "0x5"}}},
            "post": {"0x00000000000000000000000000000000000000aa": {"storage": {"0x0": "0x01"}}}
        });
        let bad = |message: String| Error::Answer { method: "test".into(), message };
        let pre = accounts(trace.get("pre"), &bad).unwrap();
        let post = accounts(trace.get("post"), &bad).unwrap();
        let mut address = [0u8; 20];
        address[19] = 0xaa;
        assert_eq!(pre[&address].code, Some(vec![0x60, 0x01]));
        assert_eq!(pre[&address].storage[&[0; 32]][31], 5);
        assert_eq!((post[&address].code.clone(), post[&address].storage[&[0; 32]][31]), (None, 1));
        assert!(accounts(Some(&json!({"0xzz": {}})), &bad).is_err());
    }

    #[test]
    fn quantities_and_words_are_strict() {
        assert_eq!(quantity(&json!("0x1f"), "t").unwrap(), 31);
        assert!(quantity(&json!("1f"), "t").is_err());
        assert!(quantity(&json!("0x10000000000000000"), "t").is_err());
        assert_eq!(parse_hex::<2>("0x1"), Some([0, 1]));
        assert_eq!(parse_hex::<2>("0x12345"), None);
        assert_eq!(parse_hex::<2>("0x"), None);
    }
}
