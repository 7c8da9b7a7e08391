//! Live updates through real servers: lookups racing a stream of update
//! batches, answers as of older epochs, two servers kept in step, and the
//! admin routes' refusals.

mod common;

use common::{padded, post_admin, post_query, spawn};

use std::sync::Arc;
use std::time::Duration;

use morphogen_client::{Admin, Client};
use morphogen_dpf::{Key, generate};
use morphogen_epochs::{Batch, Change, Epochs};
use morphogen_protocol::{
    CONTENT_TYPE, ChangeBody, Epoch, EpochList, ErrorBody, Meta, Request, Response, RevertRequest,
    UpdateRequest,
};
use morphogen_scan::{CpuEngine, Query, reference_pass};
use morphogen_server::{Config, DEFAULT_TABLE, ServedTable, Server, TableInfo};
use morphogen_table::{BuildOptions, NoProgress, Table, build};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::oneshot;

const TOKEN: &str = "test admin token";

/// 2,000 records `key-i` → `value-i` in 512-byte pages of 21 rows, 3 sub-tables.
fn table() -> Table {
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..2_000).map(|i| (format!("key-{i}").into_bytes(), format!("value-{i}").into_bytes())).collect();
    let options = BuildOptions { page_size: 512, value_size: Some(16), choices: 3, ..Default::default() };
    build(&records[..], &options, &NoProgress).unwrap()
}

/// A running server with an update log; stops when dropped.
struct Live {
    url: String,
    admin: Admin,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// Serves a copy of `table` with a fresh update log keeping `window` epochs.
async fn start(table: &Table, window: u64) -> Live {
    let dir = tempfile::tempdir().unwrap();
    let mut table = table.clone();
    let (epochs, _) = Epochs::open(&mut table, &dir.path().join("table.log"), window).unwrap();
    let info = TableInfo::of(&table);
    let engine = CpuEngine::new(table);
    let config = Config { max_batch: 8, admin_token: Some(TOKEN.to_string()), ..Config::default() };
    let served =
        ServedTable { epochs: Some(epochs), ..ServedTable::new(DEFAULT_TABLE, info, Box::new(engine)) };
    serve(Server::new(vec![served], config).unwrap(), dir).await
}

async fn serve(server: Server, dir: tempfile::TempDir) -> Live {
    let (url, stop) = spawn(server).await;
    let admin = common::admin(&url, TOKEN);
    Live { url, admin, _stop: stop, _dir: dir }
}

/// Random batches: values of existing keys changed, some deleted and
/// added back, a few new keys.
fn random_batches(count: usize, seed: u64) -> Vec<Vec<(String, Option<String>)>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            (0..rng.random_range(1..12))
                .map(|_| {
                    let key = match rng.random_bool(0.95) {
                        true => format!("key-{}", rng.random_range(0..2_000)),
                        false => format!("new-{}", rng.random_range(0..10)),
                    };
                    let value = rng.random_bool(0.8).then(|| format!("v{}", rng.random::<u32>()));
                    (key, value)
                })
                .collect()
        })
        .collect()
}

fn request(sequence: u64, changes: &[(String, Option<String>)]) -> UpdateRequest {
    let changes = changes
        .iter()
        .map(|(key, value)| ChangeBody { key: hex::encode(key), value: value.as_ref().map(hex::encode) })
        .collect();
    UpdateRequest { sequence, changes, label: None }
}

/// The table and its digest at every epoch of `batches`, applied in memory.
fn model(table: &Table, batches: &[Vec<(String, Option<String>)>]) -> Vec<(Table, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut table = table.clone();
    let (mut epochs, _) = Epochs::open(&mut table, &dir.path().join("model.log"), 1024).unwrap();
    let mut states = vec![(table.clone(), hex::encode(epochs.digest()))];
    for (i, changes) in batches.iter().enumerate() {
        let changes = changes
            .iter()
            .map(|(key, value)| match value {
                Some(value) => Change::set(key.as_bytes(), value.as_bytes()),
                None => Change::delete(key.as_bytes()),
            })
            .collect();
        let plan = epochs.plan(&table, Batch { sequence: i as u64 + 1, changes, label: None }).unwrap();
        table.apply(&epochs.commit(plan).unwrap()).unwrap();
        states.push((table.clone(), hex::encode(epochs.digest())));
    }
    states
}

/// Random queries of party 0 for the table's layout.
fn queries(table: &Table, count: usize, rng: &mut StdRng) -> Vec<Vec<Key>> {
    let layout = table.layout();
    (0..count)
        .map(|_| {
            (0..layout.choices())
                .map(|_| {
                    let page = rng.random_range(0..layout.pages_per_table());
                    generate(layout.pages_per_table(), page, rng).unwrap().0
                })
                .collect()
        })
        .collect()
}

/// Sends a raw query request; returns the answer or the status and error.
async fn query(url: &str, epoch: Epoch, queries: &[Vec<Key>]) -> Result<Response, (u16, ErrorBody)> {
    let body = Request { epoch, queries: queries.to_vec() }.encode().unwrap();
    let (status, bytes) = post_query(url, CONTENT_TYPE, body).await;
    if status == 200 {
        Ok(Response::decode(&bytes).unwrap())
    } else {
        Err((status, serde_json::from_slice(&bytes).unwrap()))
    }
}

/// What the reference engine answers to `queries` from `table`.
fn reference(table: &Table, queries: &[Vec<Key>]) -> Vec<u8> {
    let queries: Vec<Query> = queries.iter().map(|keys| Query { keys: keys.clone() }).collect();
    reference_pass(table, &queries).unwrap().as_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_racing_updates_match_the_reference_at_the_epoch_they_report() {
    let table = table();
    let batches = random_batches(25, 1);
    let states = model(&table, &batches);
    let server = Arc::new(start(&table, 1024).await);

    let updater = {
        let server = server.clone();
        let expected: Vec<String> = states.iter().map(|(_, digest)| digest.clone()).collect();
        tokio::spawn(async move {
            for (i, changes) in batches.iter().enumerate() {
                let sequence = i as u64 + 1;
                let reply = server.admin.update(&request(sequence, changes)).await.unwrap();
                assert_eq!(reply.epoch, sequence);
                assert_eq!(reply.digest, expected[i + 1], "digest of epoch {sequence}");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(2);
    let mut answered = Vec::new();
    let mut as_of = 0;
    while !updater.is_finished() || answered.len() < 20 {
        let asked = queries(&table, rng.random_range(1..=5), &mut rng);
        // Every other request names an epoch at or behind the current one.
        let epoch = match answered.len() % 2 {
            0 => Epoch::Latest,
            _ => {
                as_of += 1;
                let meta: morphogen_protocol::Meta =
                    reqwest::get(format!("{}/v1/meta", server.url)).await.unwrap().json().await.unwrap();
                Epoch::Exact(meta.epoch.saturating_sub(rng.random_range(0..4)))
            }
        };
        let response = query(&server.url, epoch, &asked).await.unwrap();
        if let Epoch::Exact(wanted) = epoch {
            assert_eq!(response.epoch, wanted);
        }
        answered.push((asked, response));
    }
    updater.await.unwrap();
    let epochs: std::collections::BTreeSet<u64> = answered.iter().map(|(_, r)| r.epoch).collect();
    assert!(epochs.len() > 3, "lookups saw several epochs: {epochs:?}");
    assert!(as_of > 5);
    for (asked, response) in &answered {
        let (state, _) = &states[response.epoch as usize];
        assert!(response.pages == reference(state, asked), "epoch {}", response.epoch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_as_of_an_epoch_outside_the_window_are_gone() {
    let table = table();
    let batches = random_batches(5, 3);
    let states = model(&table, &batches);
    let server = start(&table, 3).await;
    for (i, changes) in batches.iter().enumerate() {
        server.admin.update(&request(i as u64 + 1, changes)).await.unwrap();
    }
    let mut rng = StdRng::seed_from_u64(4);
    let asked = queries(&table, 3, &mut rng);
    for epoch in 2..=5 {
        let response = query(&server.url, Epoch::Exact(epoch), &asked).await.unwrap();
        assert_eq!(response.epoch, epoch);
        assert!(response.pages == reference(&states[epoch as usize].0, &asked), "epoch {epoch}");
    }
    for (epoch, problem) in [(1, "older than the oldest"), (6, "newer than")] {
        let (status, error) = query(&server.url, Epoch::Exact(epoch), &asked).await.unwrap_err();
        assert_eq!((status, error.code.as_str(), error.oldest_epoch), (410, "epoch_unavailable", Some(2)));
        assert!(error.error.contains(problem), "{}", error.error);
    }
    let meta = server.admin.status().await.unwrap().meta;
    assert_eq!((meta.epoch, meta.oldest_epoch, meta.epoch_window), (5, 2, 3));
    assert_eq!(meta.digest, states[5].1);
    assert_eq!(meta.snapshot_digest, hex::encode(table.digest()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_the_epoch_both_servers_have_reached() {
    let table = table();
    let (a, b) = (start(&table, 1024).await, start(&table, 1024).await);
    // Metadata read again before every lookup: what each lookup sees is the
    // servers' state when it starts, with no refresh period to wait out.
    let settings = morphogen_client::Settings { meta_refresh: Duration::ZERO, ..Default::default() };
    let client = Client::with_settings(&a.url, &b.url, &settings).await.unwrap();
    assert_eq!(client.get(b"key-7").await.unwrap(), Some(padded("value-7")));

    let changes = vec![("key-7".to_string(), Some("seven".to_string())), ("key-8".to_string(), None)];
    let reply_a = a.admin.update(&request(1, &changes)).await.unwrap();
    // Only A has epoch 1: the client keeps reading epoch 0 from both.
    assert_eq!(client.get(b"key-7").await.unwrap(), Some(padded("value-7")));
    assert_eq!(client.meta().epoch, 0);

    let reply_b = b.admin.update(&request(1, &changes)).await.unwrap();
    assert_eq!(reply_a.digest, reply_b.digest, "the same batch gives the same digest on both");
    assert_eq!(client.get(b"key-7").await.unwrap(), Some(padded("seven")));
    assert_eq!(client.get(b"key-8").await.unwrap(), None);
    assert_eq!(client.meta().epoch, 1);
}

/// Posts a raw update body with `token`; returns the status and error body.
async fn post_update(url: &str, token: Option<&str>, body: serde_json::Value) -> (u16, ErrorBody) {
    post_admin(url, "/admin/v1/updates", token, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_routes_refuse_bad_tokens_sequences_and_batches_and_change_nothing() {
    let table = table();
    let server = start(&table, 1024).await;
    let change =
        |key: &str, value: &str| serde_json::json!({"key": hex::encode(key), "value": hex::encode(value)});
    let good = serde_json::json!({"sequence": 1, "changes": [change("key-1", "x")]});
    for token in [None, Some("wrong token")] {
        let (status, error) = post_update(&server.url, token, good.clone()).await;
        assert_eq!((status, error.code.as_str()), (401, "unauthorized"));
    }
    let (status, error) =
        post_update(&server.url, Some(TOKEN), serde_json::json!({"sequence": 2, "changes": []})).await;
    assert_eq!((status, error.code.as_str(), error.expected_sequence), (409, "sequence", Some(1)));

    let new_keys: Vec<_> = (0..3_000).map(|i| change(&format!("fresh-{i}"), "v")).collect();
    let (status, error) =
        post_update(&server.url, Some(TOKEN), serde_json::json!({"sequence": 1, "changes": new_keys})).await;
    assert_eq!((status, error.code.as_str()), (409, "table_full"));
    assert!(error.error.contains("rebuild needed"), "{}", error.error);

    let long = serde_json::json!({"sequence": 1, "changes": [change("key-1", &"x".repeat(17))]});
    let (status, error) = post_update(&server.url, Some(TOKEN), long).await;
    assert_eq!((status, error.code.as_str()), (400, "value_too_long"));
    let not_hex = serde_json::json!({"sequence": 1, "changes": [{"key": "zz", "value": null}]});
    let (status, error) = post_update(&server.url, Some(TOKEN), not_hex).await;
    assert_eq!((status, error.code.as_str()), (400, "bad_key"));
    let (status, _) = post_update(&server.url, Some(TOKEN), serde_json::json!({"changes": 5})).await;
    assert_eq!(status, 422);

    // Nothing was applied; the good batch still is.
    let meta = server.admin.status().await.unwrap().meta;
    assert_eq!((meta.epoch, meta.records, meta.digest), (0, 2_000, hex::encode(table.digest())));
    let (status, _) = post_update(&server.url, Some(TOKEN), good).await;
    assert_eq!(status, 200);
    assert_eq!(server.admin.status().await.unwrap().meta.epoch, 1);
    let metrics = reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap();
    for outcome in ["applied", "sequence", "table_full", "value_too_long"] {
        assert!(
            metrics.contains(&format!("morphogen_updates_total{{table=\"default\",outcome=\"{outcome}\"}}")),
            "{outcome}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_exist_only_with_a_token_and_need_an_update_log() {
    let table = table();
    let plain = |admin_token: Option<&str>| {
        let config = Config { admin_token: admin_token.map(str::to_string), ..Config::default() };
        let engine = CpuEngine::new(table.clone());
        Server::new(vec![ServedTable::new(DEFAULT_TABLE, TableInfo::of(&table), Box::new(engine))], config)
            .unwrap()
    };
    let without = serve(plain(None), tempfile::tempdir().unwrap()).await;
    let body = serde_json::json!({"sequence": 1, "changes": []});
    assert_eq!(post_update(&without.url, Some(TOKEN), body.clone()).await.0, 404);
    let read_only = serve(plain(Some(TOKEN)), tempfile::tempdir().unwrap()).await;
    let (status, error) = post_update(&read_only.url, Some(TOKEN), body).await;
    assert_eq!((status, error.code.as_str()), (409, "read_only"));
}

/// GET `{url}{route}` as JSON of type `T`.
async fn get_json<T: serde::de::DeserializeOwned>(url: &str, route: &str) -> T {
    reqwest::get(format!("{url}{route}")).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_logged_hashed_and_published_with_their_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let open = |table: &Table, log: &std::path::Path| {
        let mut table = table.clone();
        let (epochs, _) = Epochs::open(&mut table, log, 64).unwrap();
        let info = TableInfo::of(&table);
        let config = Config { max_batch: 8, admin_token: Some(TOKEN.to_string()), ..Config::default() };
        let engine = Box::new(CpuEngine::new(table));
        let served = ServedTable { epochs: Some(epochs), ..ServedTable::new(DEFAULT_TABLE, info, engine) };
        Server::new(vec![served], config).unwrap()
    };
    let label = |block: u64| serde_json::json!({"number": block, "hash": format!("0x{block:064x}")});
    let batch = |sequence: u64, label: Option<serde_json::Value>| UpdateRequest {
        label,
        ..request(sequence, &[(format!("key-{sequence}"), Some("labelled".to_string()))])
    };
    let log = dir.path().join("table.log");
    let (url, _stop) = spawn(open(&table(), &log)).await;
    let admin = common::admin(&url, TOKEN);
    let mut digests = Vec::new();
    for sequence in 1..=3 {
        // Epoch 2 has no label: labels are optional, epoch by epoch.
        let labelled = (sequence != 2).then(|| label(100 + sequence));
        digests.push(admin.update(&batch(sequence, labelled)).await.unwrap().digest);
    }
    // The same batch again is applied already; another label makes it another batch.
    assert!(admin.update(&batch(3, Some(label(103)))).await.unwrap().already_applied);
    let other = admin.update(&batch(3, Some(label(999)))).await.unwrap_err();
    assert!(other.to_string().contains("other changes"), "{other}");
    let too_long = serde_json::json!({"padding": "x".repeat(5000)});
    let (status, error) =
        post_update(&url, Some(TOKEN), serde_json::to_value(batch(4, Some(too_long))).unwrap()).await;
    assert_eq!((status, error.code.as_str()), (413, "label_too_long"));

    let check = |meta: Meta, list: EpochList| {
        assert_eq!((meta.epoch, meta.label), (3, Some(label(103))));
        let listed: Vec<(u64, Option<serde_json::Value>)> =
            list.epochs.iter().map(|entry| (entry.epoch, entry.label.clone())).collect();
        assert_eq!(listed, [(0, None), (1, Some(label(101))), (2, None), (3, Some(label(103)))]);
        let listed_digests: Vec<&str> = list.epochs[1..].iter().map(|entry| entry.digest.as_str()).collect();
        assert_eq!(listed_digests, digests.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(list.current, 3);
    };
    check(get_json(&url, "/v1/meta").await, get_json(&url, "/v1/epochs").await);
    let from_two: EpochList = get_json(&url, "/v1/epochs?from=2").await;
    assert_eq!(from_two.epochs.iter().map(|entry| entry.epoch).collect::<Vec<_>>(), [2, 3]);
    let bad = reqwest::get(format!("{url}/v1/epochs?from=soon")).await.unwrap();
    assert_eq!(bad.status(), 400);

    // A server started on (a copy of) the log replays the labels.
    let copy = dir.path().join("copy.log");
    std::fs::copy(&log, &copy).unwrap();
    let (url, _stop) = spawn(open(&table(), &copy)).await;
    check(get_json(&url, "/v1/meta").await, get_json(&url, "/v1/epochs").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_is_a_new_epoch_with_the_records_of_an_earlier_one() {
    let table = table();
    let live = start(&table, 16).await;
    let settings = morphogen_client::Settings { meta_refresh: Duration::ZERO, ..Default::default() };
    let other = start(&table, 16).await;
    let client = Client::with_settings(&live.url, &other.url, &settings).await.unwrap();
    let batches = [
        vec![("key-1".to_string(), Some("one".to_string())), ("added".to_string(), Some("new".to_string()))],
        vec![("key-2".to_string(), None), ("key-1".to_string(), Some("uno".to_string()))],
        vec![("added".to_string(), None), ("later".to_string(), Some("late".to_string()))],
    ];
    for (i, changes) in batches.iter().enumerate() {
        for server in [&live, &other] {
            server.admin.update(&request(i as u64 + 1, changes)).await.unwrap();
        }
    }
    let keys = ["key-1", "key-2", "added", "later", "key-3"];
    let read = || async { client.get_many(&keys).await.unwrap() };
    let at_one = client.get_many_at(&keys, 1).await.unwrap();
    let revert = RevertRequest { sequence: 4, to: 1, label: Some(serde_json::json!({"back": 1})) };
    let mut digests = Vec::new();
    for server in [&live, &other] {
        let reply = server.admin.revert(&revert).await.unwrap();
        assert_eq!((reply.epoch, reply.already_applied), (4, false));
        digests.push(reply.digest);
        // Sent again, it is the revert applied.
        assert!(server.admin.revert(&revert).await.unwrap().already_applied);
    }
    assert_eq!(digests[0], digests[1], "both servers make the same epoch");
    assert_eq!(read().await, at_one);
    assert_eq!(at_one[..3], [Some(padded("one")), Some(padded("value-2")), Some(padded("new"))]);
    // Outside the window, or out of sequence: refused, nothing changed.
    let (status, error) =
        post_admin(&live.url, "/admin/v1/revert", Some(TOKEN), serde_json::json!({"sequence": 5, "to": 5}))
            .await;
    assert_eq!((status, error.code.as_str()), (409, "revert_unavailable"));
    let (status, error) =
        post_admin(&live.url, "/admin/v1/revert", Some(TOKEN), serde_json::json!({"sequence": 9, "to": 1}))
            .await;
    assert_eq!((status, error.code.as_str()), (409, "revert_unavailable"));
    let meta: Meta = get_json(&live.url, "/v1/meta").await;
    assert_eq!((meta.epoch, meta.label), (4, Some(serde_json::json!({"back": 1}))));
}
