//! Attacks and faults, each sent or caused as it would happen and checked
//! against the bound the server promises (docs/SECURITY.md): oversized
//! batches, values echoed back, engines that fail or panic, old epochs,
//! updates at their deadline. (Unauthenticated bodies are in memory.rs,
//! which measures memory and so runs alone.)

mod common;

use common::{Fault, FaultyEngine, SlowEngine, post_admin, post_huge, post_query, spawn};

use std::sync::Arc;
use std::time::Duration;

use morphogen_dpf::generate;
use morphogen_epochs::{Bounds, Epochs, Tail};
use morphogen_protocol::{CONTENT_TYPE, Epoch, ErrorBody, Request};
use morphogen_scan::{CpuEngine, Engine};
use morphogen_server::{Config, DEFAULT_TABLE, Limits, ServedTable, Server, TableInfo};
use morphogen_table::{BuildOptions, NoProgress, Table, build};
use rand::SeedableRng;
use tokio::sync::oneshot;

const TOKEN: &str = "a test admin token of some length";

fn table() -> Table {
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..500).map(|i| (format!("key-{i}").into_bytes(), format!("value-{i}").into_bytes())).collect();
    let options = BuildOptions { page_size: 512, value_size: Some(16), choices: 2, ..Default::default() };
    build(&records[..], &options, &NoProgress).unwrap()
}

/// A server with an update log and the admin routes, made with `config`
/// (its admin token set here); its URL, and what keeps it running.
async fn start(config: Config) -> (String, oneshot::Sender<()>, tempfile::TempDir) {
    start_with(config, |table| Box::new(CpuEngine::new(table.clone()))).await
}

/// [`start`] with the engine that `engine` makes over the table.
async fn start_with(
    config: Config,
    engine: impl FnOnce(&Table) -> Box<dyn Engine>,
) -> (String, oneshot::Sender<()>, tempfile::TempDir) {
    start_bounded(config, Bounds::window(16), engine).await
}

/// [`start_with`], the epochs within `bounds`.
async fn start_bounded(
    config: Config,
    bounds: Bounds,
    engine: impl FnOnce(&Table) -> Box<dyn Engine>,
) -> (String, oneshot::Sender<()>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut table = table();
    let (epochs, _) =
        Epochs::open_with(&mut table, &dir.path().join("table.log"), bounds, Tail::Refuse).unwrap();
    let info = TableInfo::of(&table);
    let engine = engine(&table);
    let served = ServedTable { epochs: Some(epochs), ..ServedTable::new(DEFAULT_TABLE, info, engine) };
    let config = Config { admin_token: Some(TOKEN.to_string()), ..config };
    let (url, stop) = spawn(Server::new(vec![served], config).unwrap()).await;
    (url, stop, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_change_limit_gets_413_that_names_the_limit() {
    let (url, _stop, _dir) = start(Config { max_batch_changes: 10, ..Config::default() }).await;
    let address = url.trim_start_matches("http://");
    let change = |i: usize| serde_json::json!({"key": hex::encode(format!("key-{i}")), "value": "00"});
    let eleven: Vec<_> = (0..11).map(change).collect();
    let body = serde_json::json!({"sequence": 1, "changes": eleven});
    let (status, error) = post_admin(&url, "/admin/v1/updates", Some(TOKEN), body).await;
    assert_eq!((status, error.code.as_str()), (413, "too_many_changes"));
    assert!(error.error.contains("at most 10"), "{}", error.error);

    // A body longer than ten changes can be, announced or not, is refused
    // before it is read whole.
    let bearer = format!("authorization: bearer {TOKEN}\r\n");
    let status = post_huge(address, "/admin/v1/updates", &bearer, 8 << 20).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status:?}");

    let ten: Vec<_> = (0..10).map(change).collect();
    let body = serde_json::json!({"sequence": 1, "changes": ten});
    let (status, error) = post_admin(&url, "/admin/v1/updates", Some(TOKEN), body).await;
    assert_eq!(status, 200, "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_admin_body_is_refused_without_quoting_it() {
    let (url, _stop, _dir) = start(Config::default()).await;
    let secret = "0xfeedfacecafebeef";
    let bodies = [
        serde_json::json!({"sequence": secret, "changes": []}),
        serde_json::json!({"sequence": 1, "changes": [{"key": 1234567, "value": secret}]}),
        serde_json::json!({"sequence": 1, "changes": [{"key": "00", "value": [secret]}]}),
        serde_json::json!({"sequence": 1, "changes": {secret: secret}}),
    ];
    for body in bodies {
        let (status, error) = post_admin(&url, "/admin/v1/updates", Some(TOKEN), body.clone()).await;
        assert_eq!((status, error.code.as_str()), (422, "bad_body"), "{body}");
        assert!(!error.error.contains("feedface") && !error.error.contains("1234567"), "{}", error.error);
        assert!(error.error.contains("line 1"), "the message says where: {}", error.error);
    }
    let (status, error) =
        post_admin(&url, "/admin/v1/updates", Some(TOKEN), serde_json::json!({"changes": []})).await;
    assert_eq!((status, error.code.as_str()), (422, "bad_body"));
    assert!(error.error.contains("missing field `sequence`"), "{}", error.error);
}

/// A valid one-query body for the tests' table.
fn query_body() -> Vec<u8> {
    let pages = table().layout().pages_per_table();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let keys = (0..2).map(|_| generate(pages, 1, &mut rng).unwrap().0).collect();
    Request { epoch: Epoch::Latest, queries: vec![keys] }.encode().unwrap()
}

/// `/v1/health`'s status and body.
async fn health(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("{url}/v1/health")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A query's status and error code (empty when answered).
async fn query(url: &str) -> (u16, String) {
    let (status, body) = post_query(url, CONTENT_TYPE, query_body()).await;
    (status, serde_json::from_slice::<ErrorBody>(&body).map(|e| e.code).unwrap_or_default())
}

/// A faulty engine over the tests' table, and its switch.
async fn start_faulty() -> (String, Arc<std::sync::Mutex<Fault>>, oneshot::Sender<()>, tempfile::TempDir) {
    let mut switch = None;
    let (url, stop, dir) = start_with(Config::default(), |table| {
        let (engine, fault) = FaultyEngine::new(table);
        switch = Some(fault);
        Box::new(engine)
    })
    .await;
    (url, switch.unwrap(), stop, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_passes_answer_500_and_the_scan_thread_carries_on() {
    let (url, fault, _stop, _dir) = start_faulty().await;
    assert_eq!(query(&url).await, (200, String::new()));
    *fault.lock().unwrap() = Fault::Fail;
    for failed in 1..=3 {
        assert_eq!(query(&url).await, (500, "internal".to_string()));
        let (status, body) = health(&url).await;
        if failed < 3 {
            assert_eq!(status, 200, "one failed pass is not yet an unhealthy engine: {body}");
        } else {
            assert_eq!(status, 503, "three failed passes in a row make health fail");
            assert_eq!(body["problems"][0]["code"], "engine_failing", "{body}");
        }
    }
    // The engine recovers: answers and health are back.
    *fault.lock().unwrap() = Fault::None;
    assert_eq!(query(&url).await, (200, String::new()));
    assert_eq!(health(&url).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_panics_is_down_health_says_so_and_requests_get_503_at_once() {
    let (url, fault, _stop, _dir) = start_faulty().await;
    assert_eq!(health(&url).await.0, 200);
    *fault.lock().unwrap() = Fault::PanicInPass;
    assert_eq!(query(&url).await, (500, "internal".to_string()));
    let (status, body) = health(&url).await;
    assert_eq!((status, body["problems"][0]["code"].as_str()), (503, Some("engine_down")), "{body}");
    // Down for good, even once the engine would answer again.
    *fault.lock().unwrap() = Fault::None;
    let started = std::time::Instant::now();
    assert_eq!(query(&url).await, (503, "engine_down".to_string()));
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not at a deadline");
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("morphogen_engine_down{table=\"default\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_thread_that_dies_fails_what_waits_and_takes_the_engine_down() {
    let (url, fault, _stop, _dir) = start_faulty().await;
    *fault.lock().unwrap() = Fault::PanicInWrite;
    let change = serde_json::json!({"key": hex::encode("key-1"), "value": "01"});
    let body = serde_json::json!({"sequence": 1, "changes": [change]});
    let started = std::time::Instant::now();
    let (status, error) = post_admin(&url, "/admin/v1/updates", Some(TOKEN), body).await;
    assert_eq!(status, 500, "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered when the thread died");
    let (status, body) = health(&url).await;
    assert_eq!((status, body["problems"][0]["code"].as_str()), (503, Some("engine_down")), "{body}");
    assert_eq!(query(&url).await, (503, "engine_down".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_given_twice_is_refused_by_its_instance_id() {
    let (url, _stop, _dir) = start(Config::default()).await;
    let (other, _stop_other, _dir_other) = start(Config::default()).await;
    let localhost = url.replace("127.0.0.1", "localhost");
    for twice in [url.clone(), format!("{url}/"), localhost] {
        let error = morphogen_client::Client::new(&url, &twice).await.unwrap_err();
        assert!(matches!(error, morphogen_client::Error::SameServer { .. }), "{twice}: {error}");
    }
    // Two servers of the same table have different ids.
    morphogen_client::Client::new(&url, &other).await.unwrap();
}

/// A one-query body as of `epoch`.
fn query_body_at(epoch: u64) -> Vec<u8> {
    let pages = table().layout().pages_per_table();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let keys = (0..2).map(|_| generate(pages, 2, &mut rng).unwrap().0).collect();
    Request { epoch: Epoch::Exact(epoch), queries: vec![keys] }.encode().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_as_of_older_epochs_stay_within_the_rewind_budget() {
    let (url, _stop, _dir) = start(Config { max_rewind_rows: 100, ..Config::default() }).await;
    let batch = |sequence: u64, changes: std::ops::Range<usize>| {
        let changes: Vec<_> = changes
            .map(|i| serde_json::json!({"key": hex::encode(format!("key-{i}")), "value": "07"}))
            .collect();
        serde_json::json!({"sequence": sequence, "changes": changes})
    };
    let meta =
        || async { reqwest::get(format!("{url}/v1/meta")).await.unwrap().json::<serde_json::Value>().await };
    // A small batch: epoch 0 is 20 rows back, within the budget.
    assert_eq!(post_admin(&url, "/admin/v1/updates", Some(TOKEN), batch(1, 0..20)).await.0, 200);
    assert_eq!(meta().await.unwrap()["oldest_epoch"], 0);
    assert_eq!(post_query(&url, CONTENT_TYPE, query_body_at(0)).await.0, 200);
    // A large one: 300 rows would have to be taken back to reach epoch 1.
    assert_eq!(post_admin(&url, "/admin/v1/updates", Some(TOKEN), batch(2, 100..400)).await.0, 200);
    assert_eq!(meta().await.unwrap()["oldest_epoch"], 2, "the window shrinks to the budget");
    for epoch in [0, 1] {
        let started = std::time::Instant::now();
        let (status, body) = post_query(&url, CONTENT_TYPE, query_body_at(epoch)).await;
        let error: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, error.code.as_str(), error.oldest_epoch), (410, "epoch_unavailable", Some(2)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // Small batches after it: the epochs after the large one are in reach again.
    assert_eq!(post_admin(&url, "/admin/v1/updates", Some(TOKEN), batch(3, 0..10)).await.0, 200);
    assert_eq!(meta().await.unwrap()["oldest_epoch"], 2);
    assert_eq!(post_query(&url, CONTENT_TYPE, query_body_at(2)).await.0, 200);
}

/// A batch of changes `key-i` → `value` for `i` in `keys`, as JSON.
fn batch(sequence: u64, keys: std::ops::Range<usize>, value: &str) -> serde_json::Value {
    let changes: Vec<_> =
        keys.map(|i| serde_json::json!({"key": hex::encode(format!("key-{i}")), "value": value})).collect();
    serde_json::json!({"sequence": sequence, "changes": changes})
}

/// Posts an update; its status and the whole JSON answer.
async fn update(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/admin/v1/updates"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_is_answered_already_applied_and_changes_nothing() {
    let (url, _stop, _dir) = start(Config::default()).await;
    let (status, first) = update(&url, batch(1, 0..30, "01")).await;
    assert_eq!((status, &first["already_applied"]), (200, &serde_json::json!(false)), "{first}");
    assert_eq!(update(&url, batch(2, 30..40, "02")).await.0, 200);
    // The first batch again, as a feeder retrying after a lost answer would.
    let (status, again) = update(&url, batch(1, 0..30, "01")).await;
    assert_eq!((status, &again["already_applied"]), (200, &serde_json::json!(true)), "{again}");
    for field in ["epoch", "digest", "records", "changed_rows"] {
        assert_eq!(again[field], first[field], "{field}");
    }
    let (status, error) = update(&url, batch(1, 0..30, "ff")).await;
    assert_eq!((status, &error["code"]), (409, &serde_json::json!("sequence")), "{error}");
    let meta: serde_json::Value = reqwest::get(format!("{url}/v1/meta")).await.unwrap().json().await.unwrap();
    assert_eq!(meta["epoch"], 2, "nothing was applied again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_at_its_deadline_is_applied_and_said_so_or_not_applied() {
    let limits = Limits { request_timeout: Duration::from_millis(300), ..Limits::default() };
    let config = Config { limits, ..Config::default() };
    let mut passes = None;
    let (url, _stop, _dir) = start_with(config, |table| {
        let engine = SlowEngine::with_writes(table, 900, 900);
        passes = Some(engine.passes());
        Box::new(engine)
    })
    .await;
    let passes = passes.unwrap();
    // Taken at once by an idle scan thread, applied past the deadline: the
    // answer waits for it and says it was applied.
    let started = std::time::Instant::now();
    let (status, reply) = update(&url, batch(1, 0..5, "01")).await;
    assert_eq!((status, &reply["epoch"]), (200, &serde_json::json!(1)), "{reply}");
    assert!(started.elapsed() >= Duration::from_millis(800), "the write was slow");
    // Queued behind a pass until past the deadline: withdrawn, not applied.
    let url_copy = url.clone();
    let pass = tokio::spawn(async move { post_query(&url_copy, CONTENT_TYPE, query_body()).await });
    passes.wait(1, false).await;
    let (status, error) = update(&url, batch(2, 5..10, "02")).await;
    assert_eq!((status, &error["code"]), (503, &serde_json::json!("deadline_exceeded")), "{error}");
    // The query itself meets its deadline too; the pass goes on to its end.
    pass.await.unwrap();
    passes.wait(1, true).await;
    // Had the withdrawn batch been applied, another batch 2 would be refused.
    let (status, reply) = update(&url, batch(2, 10..15, "03")).await;
    assert_eq!((status, &reply["already_applied"]), (200, &serde_json::json!(false)), "{reply}");
    assert_eq!(reply["epoch"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_epochs_is_a_409_that_says_to_build_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let table = table();
    let epochs = Epochs::create(&table, &dir.path().join("table.log"), u64::MAX, 16).unwrap();
    let info = TableInfo::of(&table);
    let engine = Box::new(CpuEngine::new(table));
    let served = ServedTable { epochs: Some(epochs), ..ServedTable::new(DEFAULT_TABLE, info, engine) };
    let config = Config { admin_token: Some(TOKEN.to_string()), ..Config::default() };
    let (url, _stop) = spawn(Server::new(vec![served], config).unwrap()).await;
    let (status, error) = update(&url, batch(0, 0..1, "01")).await;
    assert_eq!((status, &error["code"]), (409, &serde_json::json!("epochs_exhausted")), "{error}");
    assert!(error["error"].as_str().unwrap().contains("new snapshot"), "{error}");
}

#[test]
fn rejects_an_admin_token_shorter_than_16_bytes() {
    for (token, accepted) in [("fifteen bytes..", false), ("   padded   ", false), ("sixteen bytes...", true)]
    {
        let table = table();
        let engine = Box::new(CpuEngine::new(table.clone()));
        let served = ServedTable::new(DEFAULT_TABLE, TableInfo::of(&table), engine);
        let config = Config { admin_token: Some(token.to_string()), ..Config::default() };
        match Server::new(vec![served], config) {
            Ok(_) => assert!(accepted, "{token:?} was accepted"),
            Err(error) => {
                assert!(!accepted, "{token:?}: {error}");
                assert!(error.to_string().contains("at least 16"), "{error}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_kept_off_the_public_listener() {
    use morphogen_server::{Listeners, MetricsAt};
    use tokio::net::TcpListener;
    let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let url_of = |listener: &TcpListener| format!("http://{}", listener.local_addr().unwrap());
    let status = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    for on_admin in [true, false] {
        let table = table();
        let engine = Box::new(CpuEngine::new(table.clone()));
        let served = ServedTable::new(DEFAULT_TABLE, TableInfo::of(&table), engine);
        let config = Config { admin_token: Some(TOKEN.to_string()), ..Config::default() };
        let server = Server::new(vec![served], config).unwrap();
        let (public, admin, own) = (bind().await, bind().await, bind().await);
        let (public_url, admin_url, own_url) = (url_of(&public), url_of(&admin), url_of(&own));
        let metrics = if on_admin { MetricsAt::Admin } else { MetricsAt::Own(own) };
        let listeners = Listeners { public, admin: Some(admin), metrics };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve_on(listeners, async move {
            let _ = stopped.await;
        }));
        let metrics_url = if on_admin { &admin_url } else { &own_url };
        assert_eq!(status(format!("{public_url}/metrics")).await, 404, "not on the public listener");
        assert_eq!(status(format!("{metrics_url}/metrics")).await, 200, "on_admin: {on_admin}");
        assert_eq!(status(format!("{public_url}/v1/health")).await, 200);
        assert_eq!(status(format!("{admin_url}/admin/v1/status")).await, 401, "the admin routes are there");
        drop(stop);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_memory_is_bounded_by_the_batch_and_history_bounds() {
    // Room for 4 pages a batch, and for a few small epochs of history.
    let bounds = Bounds { window: 16, history_bytes: 2_000, batch_bytes: 4 * 512 };
    let cpu = |table: &Table| Box::new(CpuEngine::new(table.clone())) as Box<dyn Engine>;
    let (url, _stop, _dir) = start_bounded(Config::default(), bounds, cpu).await;
    let (status, error) = update(&url, batch(1, 0..200, "01")).await;
    assert_eq!((status, &error["code"]), (413, &serde_json::json!("batch_too_large")), "{error}");
    assert!(error["error"].as_str().unwrap().contains("more than 4 pages"), "{error}");
    for sequence in 1..=10 {
        assert_eq!(update(&url, batch(sequence, 0..2, &format!("{sequence:02x}"))).await.0, 200);
    }
    let meta: serde_json::Value = reqwest::get(format!("{url}/v1/meta")).await.unwrap().json().await.unwrap();
    let oldest = meta["oldest_epoch"].as_u64().unwrap();
    assert!(oldest > 0 && oldest < 10, "the window shrank to what 2,000 bytes hold: oldest {oldest}");
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("morphogen_history_forgotten_for_bytes_total{table=\"default\"}"), "{metrics}");
    let bytes_line = metrics.lines().find(|l| l.starts_with("morphogen_history_bytes{")).unwrap();
    let bytes: f64 = bytes_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(bytes <= 2_000.0, "{bytes_line}");
}

#[test]
fn rejects_an_engine_over_another_table() {
    let table = table();
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..50).map(|i: u32| (i.to_le_bytes().to_vec(), vec![1; 4])).collect();
    let options = BuildOptions { page_size: 1024, value_size: Some(4), choices: 3, ..Default::default() };
    let other = build(&records[..], &options, &NoProgress).unwrap();
    let served = ServedTable::new(DEFAULT_TABLE, TableInfo::of(&table), Box::new(CpuEngine::new(other)));
    let error = Server::new(vec![served], Config::default()).err().expect("refused");
    assert!(error.to_string().contains("answers from another table"), "{error}");
}
