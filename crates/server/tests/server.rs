//! Two real servers on loopback: private lookups through the client, and
//! every kind of malformed request answered with its documented error.

mod common;

use common::{SlowEngine, padded, post_query, spawn};

use std::sync::Arc;
use std::time::Duration;

use morphogen_client::Client;
use morphogen_dpf::generate;
use morphogen_protocol::{CONTENT_TYPE, Epoch, ErrorBody, Request};
use morphogen_scan::{CpuEngine, Engine};
use morphogen_server::{Config, DEFAULT_TABLE, ServedTable, Server, TableInfo};
use morphogen_table::{BuildOptions, NoProgress, Table, build};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::oneshot;

/// Records `key-i` → `value-i` for even i below 2n (odd i are absent).
fn records(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n).map(|i| (format!("key-{}", 2 * i).into_bytes(), format!("value-{}", 2 * i).into_bytes())).collect()
}

fn small_table() -> Table {
    let options = BuildOptions { page_size: 512, value_size: Some(16), choices: 3, ..Default::default() };
    build(&records(2_000)[..], &options, &NoProgress).unwrap()
}

/// A running server; stops when dropped.
struct Running {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn start(table: &Table, config: Config) -> Running {
    start_with(table, Box::new(CpuEngine::new(table.clone())), config).await
}

async fn start_with(table: &Table, engine: Box<dyn Engine>, config: Config) -> Running {
    let server =
        Server::new(vec![ServedTable::new(DEFAULT_TABLE, TableInfo::of(table), engine)], config).unwrap();
    let (url, stop) = spawn(server).await;
    Running { url, _stop: stop }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_through_two_servers_find_present_keys_and_miss_absent_ones() {
    let table = small_table();
    let config = Config { max_batch: 7, ..Config::default() };
    let (a, b) = (start(&table, config.clone()).await, start(&table, config).await);
    let client = Client::new(&a.url, &b.url).await.unwrap();
    assert_eq!(client.meta().records, 2_000);

    assert_eq!(client.get(b"key-10").await.unwrap(), Some(padded("value-10")));
    assert_eq!(client.get(b"key-11").await.unwrap(), None);
    // 40 keys: split into requests of at most 7 queries, answered in order.
    let keys: Vec<Vec<u8>> = (100..140).map(|i| format!("key-{i}").into_bytes()).collect();
    let values = client.get_many(&keys).await.unwrap();
    for (i, value) in (100..140).zip(values) {
        let expected = (i % 2 == 0).then(|| padded(&format!("value-{i}")));
        assert_eq!(value, expected, "key-{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_servers_of_different_tables() {
    let table = small_table();
    let other = Arc::new(
        build(
            &records(100)[..],
            &BuildOptions { page_size: 512, value_size: Some(16), choices: 3, ..Default::default() },
            &NoProgress,
        )
        .unwrap(),
    );
    let (a, b) = (start(&table, Config::default()).await, start(&other, Config::default()).await);
    let error = Client::new(&a.url, &b.url).await.unwrap_err();
    assert!(error.to_string().contains("disagree"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reports_an_unreachable_server() {
    let table = small_table();
    let a = start(&table, Config::default()).await;
    // A port that was free a moment ago.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let error = Client::new(&a.url, &format!("http://{closed}")).await.unwrap_err();
    assert!(matches!(error, morphogen_client::Error::Unreachable { .. }), "{error}");
}

/// Posts `body` and returns the status and the decoded error body.
async fn post(url: &str, content_type: &str, body: Vec<u8>) -> (u16, ErrorBody) {
    let (status, bytes) = post_query(url, content_type, body).await;
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("status {status}: not a JSON error")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_their_error_and_the_server_keeps_answering() {
    let table = small_table();
    let pages = table.layout().pages_per_table();
    let a = start(&table, Config { max_batch: 4, ..Config::default() }).await;
    let mut rng = StdRng::seed_from_u64(1);
    let mut query = |count: usize, domain: u64| -> Vec<Vec<morphogen_dpf::Key>> {
        (0..count).map(|_| (0..3).map(|_| generate(domain, 0, &mut rng).unwrap().0).collect()).collect()
    };
    let valid = Request { epoch: Epoch::Latest, queries: query(1, pages) }.encode().unwrap();

    let mut bad_version = valid.clone();
    bad_version[0] = 9;
    let mut truncated = valid.clone();
    truncated.truncate(valid.len() - 1);
    let too_many = Request { epoch: Epoch::Latest, queries: query(5, pages) }.encode().unwrap();
    let mut huge_claim = valid[..16].to_vec();
    huge_claim[2..4].copy_from_slice(&4u16.to_le_bytes());
    huge_claim[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut wrong_domain = query(1, pages);
    wrong_domain[0][2] = query(1, pages + 1).remove(0).remove(0);
    let mut two_keys = query(1, pages);
    two_keys[0].pop();
    let future_epoch = Request { epoch: Epoch::Exact(5), queries: query(1, pages) }.encode().unwrap();

    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        ("bad version", bad_version, CONTENT_TYPE, 400, "bad_version"),
        ("truncated", truncated, CONTENT_TYPE, 400, "bad_body"),
        ("empty body", vec![], CONTENT_TYPE, 400, "bad_body"),
        ("garbage", b"GET / HTTP/1.1 garbage".to_vec(), CONTENT_TYPE, 400, "bad_version"),
        ("too many queries", too_many, CONTENT_TYPE, 400, "batch_too_large"),
        ("huge claimed keys", huge_claim, CONTENT_TYPE, 400, "bad_body"),
        (
            "two keys for three sub-tables",
            Request { epoch: Epoch::Latest, queries: two_keys }.encode().unwrap(),
            CONTENT_TYPE,
            400,
            "wrong_key_count",
        ),
        ("key for another domain", encode_mixed(wrong_domain), CONTENT_TYPE, 400, "wrong_domain"),
        ("epoch not served", future_epoch, CONTENT_TYPE, 410, "epoch_unavailable"),
        ("wrong content type", valid.clone(), "application/json", 415, "unsupported_media_type"),
        ("body too large", vec![1; 256 << 10], CONTENT_TYPE, 413, "body_too_large"),
    ];
    for (name, body, content_type, status, code) in cases {
        let (got_status, error) = post(&a.url, content_type, body).await;
        assert_eq!((got_status, error.code.as_str()), (status, code), "{name}: {}", error.error);
        assert!(!error.error.is_empty(), "{name}");
    }

    // Oversized headers: within the HTTP layer's buffer they get the JSON
    // error; past it, the HTTP layer's bare 431 (docs/PROTOCOL.md), after
    // which it closes the connection. A client still writing its head then
    // sees the connection broken instead of the answer, a race the test
    // must accept.
    for (size, json) in [(20 << 10, true), (1 << 20, false)] {
        let sent = reqwest::Client::new()
            .post(format!("{}/v1/query", a.url))
            .header("content-type", CONTENT_TYPE)
            .header("x-padding", "p".repeat(size))
            .body(valid.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if !json && error.is_request() => continue,
            Err(error) => panic!("{size} bytes of headers: {error}"),
        };
        assert_eq!(response.status().as_u16(), 431, "{size} bytes of headers");
        let error: Result<ErrorBody, _> = serde_json::from_slice(&response.bytes().await.unwrap());
        assert_eq!(error.ok().map(|e| e.code), json.then(|| "headers_too_large".to_string()));
    }

    let response = reqwest::get(format!("{}/v1/nothing", a.url)).await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let response = reqwest::get(format!("{}/v1/query", a.url)).await.unwrap();
    assert_eq!(response.status().as_u16(), 405);

    // Still healthy, and a valid query is answered with one page per sub-table.
    let health = reqwest::get(format!("{}/v1/health", a.url)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/query", a.url))
        .header("content-type", CONTENT_TYPE)
        .body(valid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), 16 + 3 * 512);

    // The metrics count each outcome.
    let metrics = reqwest::get(format!("{}/metrics", a.url)).await.unwrap().text().await.unwrap();
    for outcome in ["ok", "bad_version", "wrong_domain", "batch_too_large", "body_too_large"] {
        assert!(
            metrics.contains(&format!("morphogen_requests_total{{table=\"default\",outcome=\"{outcome}\"}}")),
            "{outcome}\n{metrics}"
        );
    }
    assert!(metrics.contains("morphogen_pass_duration_seconds_bucket"), "{metrics}");
}

/// Encodes a request whose keys have different domains, which the encoder
/// refuses: each key written after the header by hand.
fn encode_mixed(queries: Vec<Vec<morphogen_dpf::Key>>) -> Vec<u8> {
    let first =
        Request { epoch: Epoch::Latest, queries: vec![vec![queries[0][0].clone(); queries[0].len()]] };
    let mut body = first.encode().unwrap()[..16].to_vec();
    let keys: Vec<u8> = queries.iter().flatten().flat_map(|k| k.to_bytes()).collect();
    body.extend_from_slice(&keys);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_describes_the_table() {
    let table = small_table();
    let a = start(&table, Config { max_batch: 9, ..Config::default() }).await;
    let meta: morphogen_protocol::Meta = serde_json::from_slice(
        &reqwest::get(format!("{}/v1/meta", a.url)).await.unwrap().bytes().await.unwrap(),
    )
    .unwrap();
    assert_eq!(meta.digest, hex::encode(table.digest()));
    assert_eq!(meta.sub_tables, vec![table.layout().pages_per_table(); 3]);
    assert_eq!((meta.page_size, meta.value_size, meta.row_size), (512, 16, 24));
    assert_eq!((meta.epoch, meta.max_batch, meta.engine.as_str()), (0, 9, "cpu"));
}

async fn start_slow(table: &Table, pass_ms: u64, config: Config) -> Running {
    start_with(table, Box::new(SlowEngine::new(table, pass_ms)), config).await
}

/// The value of a metric of the server's one table in its /metrics text.
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix("{table=\"default\"} ")?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// `count` lookups of present and absent keys at once, each checked.
async fn concurrent_lookups(client: &Arc<Client>, count: usize) {
    let lookups: Vec<_> = (0..count)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let value = client.get(format!("key-{}", 300 + i).as_bytes()).await.unwrap();
                assert_eq!(
                    value,
                    (i % 2 == 0).then(|| padded(&format!("value-{}", 300 + i))),
                    "key-{}",
                    300 + i
                );
            })
        })
        .collect();
    for lookup in lookups {
        lookup.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_share_passes() {
    let table = small_table();
    let config = Config { max_batch: 16, ..Config::default() };
    let (a, b) = (start_slow(&table, 50, config.clone()).await, start_slow(&table, 50, config).await);
    let client = Arc::new(Client::new(&a.url, &b.url).await.unwrap());
    concurrent_lookups(&client, 24).await;
    for server in [&a, &b] {
        let passes = metric(&server.url, "morphogen_batch_size_count").await;
        let queries = metric(&server.url, "morphogen_batch_size_sum").await;
        assert_eq!(queries, 24.0);
        // Passes take 50 ms and the 24 requests arrive within a few: after
        // the first pass, the rest wait together and share passes.
        assert!(passes <= 8.0, "24 concurrent lookups took {passes} passes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after_and_the_client_retries() {
    let table = small_table();
    let config = Config { max_batch: 1, max_queue: 2, ..Config::default() };
    let (a, b) = (start_slow(&table, 50, config.clone()).await, start_slow(&table, 50, config).await);

    // Raw requests, all at once: three fit (one in a pass, two queued); the rest are refused.
    let mut rng = StdRng::seed_from_u64(3);
    let pages = table.layout().pages_per_table();
    let body = Request {
        epoch: Epoch::Latest,
        queries: vec![(0..3).map(|_| generate(pages, 1, &mut rng).unwrap().0).collect()],
    }
    .encode()
    .unwrap();
    let http = reqwest::Client::new();
    let sends: Vec<_> = (0..12)
        .map(|_| {
            let request = http
                .post(format!("{}/v1/query", a.url))
                .header("content-type", CONTENT_TYPE)
                .body(body.clone());
            tokio::spawn(request.send())
        })
        .collect();
    let mut refused = 0;
    for send in sends {
        let response = send.await.unwrap().unwrap();
        if response.status() == 503 {
            refused += 1;
            let retry_after = response.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap();
            assert!(retry_after >= 1);
            let error: ErrorBody = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert_eq!(error.code, "overloaded");
        } else {
            assert_eq!(response.status(), 200);
        }
    }
    assert!(refused > 0, "12 requests at once into a queue of 2 were all accepted");
    assert_eq!(metric(&a.url, "morphogen_queue_depth").await, 0.0);

    // The client retries refused requests within its deadline: every lookup is answered, and right.
    let client = Arc::new(
        Client::with_settings(
            &a.url,
            &b.url,
            &morphogen_client::Settings { timeout: Duration::from_secs(20), ..Default::default() },
        )
        .await
        .unwrap(),
    );
    concurrent_lookups(&client, 12).await;
}
