//! The endpoint over two real servers of the three tables: every value of a
//! state made here reads back through JSON-RPC, malformed calls get the
//! standard error codes, and only other methods reach the upstream node.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use morphogen_client::Settings;
use morphogen_eth::{Account, Chain, MANIFEST_FILE, MAX_CODE_LEN, TABLE_NAMES};
use morphogen_eth_rpc::jsonrpc::{
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR,
};
use morphogen_eth_rpc::{Endpoint, StateReader, Upstream};
use morphogen_eth_tables::write_tables;
use morphogen_scan::CpuEngine;
use morphogen_server::{Config, ServedTable, Server, TableInfo};
use morphogen_table::{NoProgress, Table, Verify};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const CHAIN: Chain = Chain { chain_id: 1337, block_number: 42 };

fn word(n: u64) -> [u8; 32] {
    let mut word = [0u8; 32];
    word[24..].copy_from_slice(&n.to_be_bytes());
    word
}

fn address(n: u8) -> [u8; 20] {
    let mut address = [0u8; 20];
    address[0] = 0xa0;
    address[19] = n;
    address
}

/// Accounts without code, with code of several lengths (up to the limit),
/// with storage, and one with the largest balance and nonce.
fn accounts() -> Vec<Account> {
    let mut accounts = vec![
        Account { address: address(1), balance: word(10u64.pow(18)), nonce: 3, ..Account::default() },
        Account { address: address(2), balance: [0xff; 32], nonce: u64::MAX, ..Account::default() },
    ];
    for (i, len) in [1usize, 1024, 1025, 3000, MAX_CODE_LEN].into_iter().enumerate() {
        let code = (0..len).map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8)).collect();
        let storage: BTreeMap<[u8; 32], [u8; 32]> =
            (0..i as u64 * 2).map(|slot| (word(slot), word(slot * 1000 + 1))).collect();
        accounts.push(Account {
            address: address(10 + i as u8),
            balance: word(i as u64),
            nonce: 1,
            code,
            storage,
        });
    }
    // A slot of all ones, to check slots are not truncated.
    accounts[0].storage.insert([0xff; 32], word(99));
    accounts
}

/// A server of the three tables in `dir`, with the manifest's chain.
async fn serve(dir: &Path) -> (String, oneshot::Sender<()>) {
    let tables = TABLE_NAMES
        .iter()
        .map(|name| {
            let table = Table::open(&dir.join(format!("{name}.mgdb")), Verify::Digest, &NoProgress).unwrap();
            ServedTable::new(name, TableInfo::of(&table), Box::new(CpuEngine::new(table)))
        })
        .collect();
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    let mut about = manifest.as_object().unwrap().clone();
    about.remove("tables");
    let server = Server::new(tables, Config { about, ..Config::default() }).unwrap();
    spawn(|listener, stopped| server.serve(listener, None, stopped)).await
}

/// Completes when the test drops the stop sender.
type Stopped = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs `serve` on a loopback port; its URL and a sender that stops it.
async fn spawn<F>(serve: impl FnOnce(TcpListener, Stopped) -> F) -> (String, oneshot::Sender<()>)
where
    F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped: Stopped = Box::pin(async move {
        let _ = stopped.await;
    });
    tokio::spawn(serve(listener, stopped));
    (url, stop)
}

/// Two servers of the tables of [`accounts`] and an endpoint over them.
struct Setup {
    endpoint: Endpoint,
    _dir: tempfile::TempDir,
    _servers: [oneshot::Sender<()>; 2],
}

async fn setup(upstream: Option<Upstream>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    write_tables(&accounts(), CHAIN, 0, dir.path(), &NoProgress).unwrap();
    let (a, stop_a) = serve(dir.path()).await;
    let (b, stop_b) = serve(dir.path()).await;
    let reader = StateReader::connect(&a, &b, &Settings::default()).await.unwrap();
    Setup { endpoint: Endpoint::new(reader, upstream), _dir: dir, _servers: [stop_a, stop_b] }
}

/// The answer to one call.
async fn call(endpoint: &Endpoint, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    endpoint.answer(body.to_string().as_bytes()).await.expect("an answer")
}

async fn result(endpoint: &Endpoint, method: &str, params: Value) -> Value {
    let answer = call(endpoint, method, params.clone()).await;
    assert_eq!(answer["id"], 1);
    answer.get("result").unwrap_or_else(|| panic!("{method} {params}: {answer}")).clone()
}

async fn error_code(endpoint: &Endpoint, body: &str) -> i64 {
    let answer = endpoint.answer(body.as_bytes()).await.expect("an answer");
    answer["error"]["code"].as_i64().unwrap_or_else(|| panic!("{body}: {answer}"))
}

fn hex(bytes: &[u8]) -> String {
    format!("0x{}", ::hex::encode(bytes))
}

fn quantity(bytes: &[u8]) -> String {
    let digits = ::hex::encode(bytes);
    let digits = digits.trim_start_matches('0');
    format!("0x{}", if digits.is_empty() { "0" } else { digits })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_reads_back_through_json_rpc() {
    let setup = setup(None).await;
    let endpoint = &setup.endpoint;
    assert_eq!(result(endpoint, "eth_chainId", json!([])).await, "0x539");
    assert_eq!(result(endpoint, "net_version", json!([])).await, "1337");
    assert_eq!(result(endpoint, "eth_blockNumber", json!([])).await, "0x2a");

    for account in accounts() {
        let who = hex(&account.address);
        let balance = result(endpoint, "eth_getBalance", json!([who, "latest"])).await;
        assert_eq!(balance, quantity(&account.balance), "{who}");
        let nonce = result(endpoint, "eth_getTransactionCount", json!([who, "0x2a"])).await;
        assert_eq!(nonce, quantity(&account.nonce.to_be_bytes()), "{who}");
        let code = result(endpoint, "eth_getCode", json!([who, {"blockNumber": "0x2a"}])).await;
        assert_eq!(code, hex(&account.code), "{who}");
        for (slot, value) in &account.storage {
            let read = result(endpoint, "eth_getStorageAt", json!([who, quantity(slot), "latest"])).await;
            assert_eq!(read, hex(value), "{who} {}", hex(slot));
        }
        let unwritten = result(endpoint, "eth_getStorageAt", json!([who, "0x1234567", "latest"])).await;
        assert_eq!(unwritten, hex(&[0; 32]));
    }

    // An account that does not exist reads as a node reads it.
    let nobody = hex(&address(200));
    assert_eq!(result(endpoint, "eth_getBalance", json!([nobody, "latest"])).await, "0x0");
    assert_eq!(result(endpoint, "eth_getTransactionCount", json!([nobody])).await, "0x0");
    assert_eq!(result(endpoint, "eth_getCode", json!([nobody, "latest"])).await, "0x");

    // A batch: answers for every call with an id, in any order, by id.
    let batch = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "eth_getBalance", "params": [hex(&address(1)), "latest"]},
        {"jsonrpc": "2.0", "method": "eth_getBalance", "params": [hex(&address(1)), "latest"]},
        {"jsonrpc": "2.0", "id": 9, "method": "eth_getCode", "params": [hex(&address(14)), "latest"]},
        {"jsonrpc": "2.0", "id": 10, "method": "eth_nothing", "params": []},
    ]);
    let answers = endpoint.answer(batch.to_string().as_bytes()).await.unwrap();
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 3, "the notification is not answered: {answers:?}");
    let by_id = |id: Value| answers.iter().find(|answer| answer["id"] == id).unwrap().clone();
    assert_eq!(by_id(json!("a"))["result"], "0xde0b6b3a7640000");
    assert_eq!(by_id(json!(9))["result"].as_str().unwrap().len(), 2 + 2 * MAX_CODE_LEN);
    assert_eq!(by_id(json!(10))["error"]["code"], METHOD_NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calls_get_the_standard_codes() {
    let setup = setup(None).await;
    let endpoint = &setup.endpoint;
    let who = hex(&address(1));
    let call = |method: &str, params: Value| {
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string()
    };
    let cases = [
        ("{\"jsonrpc\": \"2.0\", ".to_string(), PARSE_ERROR),
        ("[]".to_string(), INVALID_REQUEST),
        ("{\"jsonrpc\": \"2.0\", \"id\": 1}".to_string(), INVALID_REQUEST),
        ("{\"id\": 1, \"method\": \"eth_chainId\"}".to_string(), INVALID_REQUEST),
        (call("eth_sendRawTransaction", json!(["0x00"])), METHOD_NOT_FOUND),
        (call("eth_getBalance", json!([])), INVALID_PARAMS),
        (call("eth_getBalance", json!([who, "latest", 3])), INVALID_PARAMS),
        (call("eth_getBalance", json!({"address": who})), INVALID_PARAMS),
        (call("eth_getBalance", json!(["0x1234", "latest"])), INVALID_PARAMS),
        (call("eth_getBalance", json!([who[2..].to_string(), "latest"])), INVALID_PARAMS),
        (call("eth_getBalance", json!([format!("0x{}", "g".repeat(40)), "latest"])), INVALID_PARAMS),
        (call("eth_getBalance", json!([who, "0x02a"])), INVALID_PARAMS),
        (call("eth_getBalance", json!([who, "newest"])), INVALID_PARAMS),
        (call("eth_getStorageAt", json!([who, "0x", "latest"])), INVALID_PARAMS),
        (call("eth_getStorageAt", json!([who, format!("0x{}", "1".repeat(65)), "latest"])), INVALID_PARAMS),
        (call("eth_getStorageAt", json!([who])), INVALID_PARAMS),
        (call("eth_chainId", json!([1])), INVALID_PARAMS),
    ];
    for (body, code) in cases {
        assert_eq!(error_code(endpoint, &body).await, code, "{body}");
    }
    // Another block: a clear error naming the blocks held.
    for (block, says) in [
        (json!("0x2b"), "block 43 is not yet held: these tables hold blocks 42 to 42"),
        (json!("0x29"), "block 41 is no longer held: these tables hold blocks 42 to 42"),
        (
            json!({"blockHash": format!("0x{}", "0".repeat(64))}),
            "is not held: these tables hold blocks 42 to 42",
        ),
        (json!("earliest"), "epoch window only"),
        (json!("pending"), "mined blocks only"),
    ] {
        let answer = endpoint.answer(call("eth_getBalance", json!([who, block])).as_bytes()).await.unwrap();
        assert_eq!(answer["error"]["code"], -32000, "{block}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(says), "{answer}");
    }
}

/// An upstream node that answers every call with `"upstream"` and keeps
/// what it was sent.
async fn fake_upstream() -> (String, Arc<Mutex<Vec<Value>>>, oneshot::Sender<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let router = axum::Router::new().route(
        "/",
        axum::routing::post(move |axum::Json(call): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(call.clone());
                axum::Json(json!({"jsonrpc": "2.0", "id": call["id"], "result": "upstream"}))
            }
        }),
    );
    let (url, stop) = spawn(|listener, stopped| async move {
        axum::serve(listener, router).with_graceful_shutdown(stopped).await
    })
    .await;
    (url, seen, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_other_methods_reach_the_upstream_node() {
    let (url, seen, _stop) = fake_upstream().await;
    let forwarding = setup(Some(Upstream::new(&url, Duration::from_secs(5)).unwrap())).await;
    let endpoint = &forwarding.endpoint;
    let who = hex(&address(1));
    assert_eq!(result(endpoint, "eth_sendRawTransaction", json!(["0x00"])).await, "upstream");
    assert_eq!(result(endpoint, "eth_getBalance", json!([who, "latest"])).await, "0xde0b6b3a7640000");
    // A state call refused for its block or its parameters is not forwarded either.
    for params in [json!([who, "0x2b"]), json!([format!("0x{}", "g".repeat(40)), "latest"])] {
        assert!(call(endpoint, "eth_getBalance", params).await.get("error").is_some());
    }
    assert_eq!(result(endpoint, "eth_getStorageAt", json!([who, "0x0", "latest"])).await, hex(&[0; 32]));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["method"], "eth_sendRawTransaction");

    // An upstream that does not answer: -32603, not a hang.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let setup =
        setup(Some(Upstream::new(&format!("http://{closed}"), Duration::from_secs(5)).unwrap())).await;
    assert_eq!(call(&setup.endpoint, "eth_gasPrice", json!([])).await["error"]["code"], INTERNAL_ERROR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_over_http() {
    let setup = setup(None).await;
    let Setup { endpoint, _dir, _servers } = setup;
    let (url, _stop) = spawn(|listener, stopped| endpoint.serve(listener, stopped)).await;
    let http = reqwest::Client::new();
    let body = json!({"jsonrpc": "2.0", "id": 5, "method": "eth_getBalance", "params": [hex(&address(1)), "latest"]});
    let answer: Value = http.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer, json!({"jsonrpc": "2.0", "id": 5, "result": "0xde0b6b3a7640000"}));
    let response = http.post(&url).body("{").send().await.unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], PARSE_ERROR);
    assert_eq!(answer["id"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_of_other_states_are_refused() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_tables(&accounts(), CHAIN, 0, dir_a.path(), &NoProgress).unwrap();
    write_tables(&accounts(), Chain { block_number: 43, ..CHAIN }, 0, dir_b.path(), &NoProgress).unwrap();
    let ((a, _stop_a), (b, _stop_b)) = (serve(dir_a.path()).await, serve(dir_b.path()).await);
    let error = StateReader::connect(&a, &b, &Settings::default()).await.unwrap_err();
    assert!(error.to_string().contains("different states"), "{error}");
}
