//! Snapshot swaps through real servers: lookups running across a swap to
//! a table of other parameters, and the admin route's refusals.

mod common;

use common::{padded, post_admin, post_query, spawn};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use morphogen_client::{Admin, Client};
use morphogen_dpf::generate;
use morphogen_engines::Choice;
use morphogen_epochs::{Bounds, SnapshotDir, Tail, log_path};
use morphogen_protocol::{
    AdminStatus, CONTENT_TYPE, ChangeBody, Epoch, ErrorBody, GrowRequest, Request, SnapshotRequest,
    SwapState, UpdateRequest,
};
use morphogen_scan::{CpuEngine, Engine, EngineKind};
use morphogen_server::{
    Config, DEFAULT_TABLE, FileSnapshots, LoadedSnapshot, OpenOptions, ServedTable, Server, SnapshotLoader,
    Start, open_manifest, open_single, open_table, start as start_file,
};
use morphogen_table::{BuildOptions, KeyDigest, NoProgress, Table, build, keys_path, write_keys};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::oneshot;

const TOKEN: &str = "test admin token";

/// `count` records `key-i` → `{prefix}-i`.
fn write_table(path: &Path, count: usize, prefix: &str, page_size: u32, choices: u8) -> Table {
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..count).map(|i| (format!("key-{i}").into_bytes(), format!("{prefix}-{i}").into_bytes())).collect();
    let options = BuildOptions { page_size, value_size: Some(16), choices, ..Default::default() };
    let table = build(&records[..], &options, &NoProgress).unwrap();
    table.write(path).unwrap();
    table
}

/// The server's loader of snapshot files behind a gate: when there is one,
/// each load waits for the test to let it go.
#[derive(Debug)]
struct Gated {
    files: FileSnapshots,
    gate: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl SnapshotLoader for Gated {
    fn load(&self, file: &str, epoch: u64, label: Option<Vec<u8>>) -> Result<LoadedSnapshot, String> {
        self.gate.lock().unwrap().recv().map_err(|_| "the test went away".to_string())?;
        self.files.load(file, epoch, label)
    }

    fn commit(&self, loaded: &LoadedSnapshot) -> Result<(), String> {
        self.files.commit(loaded)
    }
}

/// A running server; stops when dropped.
struct Live {
    url: String,
    admin: Admin,
    /// Its snapshot directory.
    dir: PathBuf,
    _stop: oneshot::Sender<()>,
}

/// How a test server takes swaps.
enum Swaps {
    Disabled,
    Enabled,
    /// Each load waits for a message on this channel.
    Gated(std::sync::mpsc::Receiver<()>),
}

/// Serves `first`, a table file of `dir`, with an update log, from a
/// directory of its own holding copies of the files of `dir` (as each
/// server has its own disk).
async fn start(dir: &Path, first: &str, swaps: Swaps) -> Live {
    let own = dir.join(format!("server-{}", rand::random::<u64>()));
    std::fs::create_dir(&own).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "mgdb" || e == "keys") {
            std::fs::copy(&path, own.join(path.file_name().unwrap())).unwrap();
        }
    }
    let path = own.join(first);
    // The server's own opening of a table file and of a snapshot
    // directory, guard included, with CPU engines.
    let options = OpenOptions {
        engine: Choice::Kind(EngineKind::Cpu),
        max_batch: 8,
        bounds: Bounds::window(1024),
        tail: Tail::Refuse,
        updates: true,
    };
    let dir = SnapshotDir::new(&own).unwrap();
    let served = match swaps {
        Swaps::Disabled => {
            let start = Start { log: log_path(&path), table: path, pointer: None };
            open_table(DEFAULT_TABLE, &start, &options, &NoProgress).unwrap()
        }
        Swaps::Enabled => open_single(Some(dir), Some(&path), None, &options, &NoProgress).unwrap(),
        Swaps::Gated(gate) => {
            // The server's loader, held by a gate until the test lets each load go.
            let served = open_single(None, Some(&path), None, &options, &NoProgress).unwrap();
            let open_engine = Box::new(|table: Table| Ok(Box::new(CpuEngine::new(table)) as Box<dyn Engine>));
            let files = FileSnapshots::new(dir, open_engine, options.bounds, Some((&path, &log_path(&path))));
            let gated = Arc::new(Gated { files, gate: Mutex::new(gate) }) as Arc<dyn SnapshotLoader>;
            ServedTable { snapshots: Some(gated), ..served }
        }
    };
    let config = Config { max_batch: 8, admin_token: Some(TOKEN.to_string()), ..Config::default() };
    let server = Server::new(vec![served], config).unwrap();
    let (url, stop) = spawn(server).await;
    let admin = common::admin(&url, TOKEN);
    Live { url, admin, dir: own, _stop: stop }
}

/// Waits until every looker has finished a lookup on side `side` of the
/// swap (0: before, 1: after).
async fn wait_for_each(progress: &[Arc<[AtomicUsize; 2]>], side: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.iter().any(|counts| counts[side].load(Ordering::Relaxed) == 0) {
        assert!(Instant::now() < deadline, "every looker gets to look up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the server's latest swap is no longer loading.
async fn swap_done(server: &Live) -> AdminStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = server.admin.status().await.unwrap();
        let swap = status.snapshot_swap.as_ref().expect("a swap was asked for");
        if swap.state != SwapState::Loading {
            return status;
        }
        assert!(Instant::now() < deadline, "the swap finishes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_under_continuous_lookups_fails_no_lookup_and_answers_from_the_new_table() {
    let dir = tempfile::tempdir().unwrap();
    // The new snapshot differs in every parameter a client derives its keys from.
    let old = write_table(&dir.path().join("old.mgdb"), 1_500, "old", 512, 3);
    let new = write_table(&dir.path().join("new.mgdb"), 2_500, "new", 1024, 2);
    assert_ne!(old.layout(), new.layout());
    let (a, b) = (
        start(dir.path(), "old.mgdb", Swaps::Enabled).await,
        start(dir.path(), "old.mgdb", Swaps::Enabled).await,
    );
    let client = Arc::new(Client::new(&a.url, &b.url).await.unwrap());

    // Lookups of keys of both tables, checked as they come back: each
    // value is the old table's or the new one's, never anything else.
    let swapped = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Lookups each looker has finished before and after the swap.
    let progress: Vec<Arc<[AtomicUsize; 2]>> = (0..4).map(|_| Arc::default()).collect();
    let mut lookers = Vec::new();
    for seed in 0..4 {
        let (client, swapped, stop) = (client.clone(), swapped.clone(), stop.clone());
        let progress = progress[seed as usize].clone();
        lookers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut before, mut after) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let indexes: Vec<usize> =
                    (0..rng.random_range(1..12)).map(|_| rng.random_range(0..3_000)).collect();
                let keys: Vec<String> = indexes.iter().map(|i| format!("key-{i}")).collect();
                let done_before = swapped.load(Ordering::Relaxed);
                let values = client.get_many(&keys).await.expect("no lookup fails across a swap");
                for (&i, value) in indexes.iter().zip(values) {
                    let old_value = (i < 1_500).then(|| padded(&format!("old-{i}")));
                    let new_value = (i < 2_500).then(|| padded(&format!("new-{i}")));
                    if done_before {
                        assert_eq!(value, new_value, "key-{i} after the swap");
                    } else {
                        assert!(value == old_value || value == new_value, "key-{i}: {value:?}");
                    }
                }
                if done_before {
                    after += 1
                } else {
                    before += 1
                }
                progress[usize::from(done_before)].fetch_add(1, Ordering::Relaxed);
            }
            (before, after)
        }));
    }
    wait_for_each(&progress, 0).await;
    let request = SnapshotRequest { file: "new.mgdb".to_string(), label: None, sequence: 1 };
    for server in [&a, &b] {
        let status = server.admin.swap(&request).await.unwrap();
        assert_eq!(status.state, SwapState::Loading);
    }
    let (status_a, status_b) = (swap_done(&a).await, swap_done(&b).await);
    for status in [&status_a, &status_b] {
        assert_eq!(status.snapshot_swap.as_ref().unwrap().state, SwapState::Swapped, "{status:?}");
        assert_eq!(status.meta.epoch, 1);
        assert_eq!(status.meta.snapshot_digest, hex::encode(new.digest()));
        assert_eq!(status.meta.digest, status.meta.snapshot_digest, "the swap's epoch has the file's digest");
        assert_eq!((status.meta.oldest_epoch, status.meta.records), (1, 2_500));
    }
    swapped.store(true, Ordering::Relaxed);
    wait_for_each(&progress, 1).await;

    // The new snapshot takes updates from the next sequence number on.
    let update = UpdateRequest {
        sequence: 2,
        changes: vec![ChangeBody { key: hex::encode("key-3"), value: Some(hex::encode("updated")) }],
        label: None,
    };
    for server in [&a, &b] {
        assert_eq!(server.admin.update(&update).await.unwrap().epoch, 2);
    }
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for looker in lookers {
        counts.push(looker.await.unwrap());
    }
    assert!(
        counts.iter().all(|&(before, after)| before > 0 && after > 0),
        "lookups on both sides: {counts:?}"
    );
    // The client reads the servers' metadata again within its refresh
    // period (a second) and then the update.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(b"key-3").await.unwrap() != Some(padded("updated")) {
        assert!(Instant::now() < deadline, "the client reads the new epoch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.meta().epoch, 2);
    assert_eq!(client.meta().page_size, 1024);

    // Each server recorded the swap for its restarts.
    for server in [&a, &b] {
        let pointer = SnapshotDir::new(&server.dir).unwrap().current().unwrap().unwrap();
        assert_eq!((pointer.file.as_str(), pointer.epoch), ("new.mgdb", 1));
        assert_eq!(pointer.digest, hex::encode(new.digest()));
    }
    let mut told_to_reread = 0;
    for server in [&a, &b] {
        let metrics = reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap();
        assert!(
            metrics.contains("morphogen_snapshot_swaps_total{table=\"default\",outcome=\"swapped\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("morphogen_snapshot_base_epoch{table=\"default\"} 1"));
        told_to_reread += metrics
            .lines()
            .filter_map(|line| {
                line.strip_prefix("morphogen_requests_total{table=\"default\",outcome=\"snapshot_changed\"} ")
            })
            .map(|count| count.parse::<u64>().unwrap())
            .sum::<u64>();
    }
    // Lookups did reach a swapped server with the old snapshot's epoch, and
    // the client recovered from it unseen.
    assert!(told_to_reread > 0);
}

/// Posts a raw JSON body to an admin route with the admin token; returns
/// the status and error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_does_not_fit_grows_the_table_alike_on_two_servers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.mgdb");
    let table = write_table(&path, 1_000, "v", 512, 2);
    let mut keys: Vec<KeyDigest> = (0..1_000).map(|i| KeyDigest::of(format!("key-{i}").as_bytes())).collect();
    write_keys(&keys_path(&path), &mut keys).unwrap();
    write_table(&dir.path().join("keyless.mgdb"), 1_000, "v", 512, 2);
    let (a, b) = (
        start(dir.path(), "full.mgdb", Swaps::Enabled).await,
        start(dir.path(), "full.mgdb", Swaps::Enabled).await,
    );
    let change =
        |key: &str, value: Option<&str>| ChangeBody { key: hex::encode(key), value: value.map(hex::encode) };
    let first = UpdateRequest {
        sequence: 1,
        changes: vec![
            change("key-1", Some("changed")),
            change("key-2", None),
            change("added", Some("later")),
        ],
        label: None,
    };
    // More new keys than the table has rows, and changes of keys it holds.
    let mut changes: Vec<ChangeBody> =
        (0..table.layout().capacity()).map(|i| change(&format!("new-{i}"), Some("n"))).collect();
    changes.extend([change("key-3", None), change("key-4", Some("in the batch"))]);
    let full = UpdateRequest { sequence: 2, changes, label: Some(serde_json::json!({"block": 2})) };
    for server in [&a, &b] {
        server.admin.update(&first).await.unwrap();
        let refused = server.admin.update(&full).await.unwrap_err();
        assert!(
            matches!(&refused, morphogen_client::Error::Server { status: 409, code, .. } if code == "table_full"),
            "{refused}"
        );
        let (status, error) = post(
            &server.url,
            "/admin/v1/grow",
            serde_json::json!({"sequence": 2, "pages_per_table": 0, "changes": []}),
        )
        .await;
        assert_eq!((status, error.code.as_str()), (400, "bad_size"));
        let pages = table.layout().pages_per_table() * 2;
        let started =
            server.admin.grow(&GrowRequest { pages_per_table: pages, batch: full.clone() }).await.unwrap();
        assert_eq!((started.state, started.file.as_str()), (SwapState::Loading, "grown-2.mgdb"));
        let status = swap_done(server).await;
        assert_eq!(status.snapshot_swap.unwrap().state, SwapState::Swapped);
        assert_eq!(status.meta.epoch, 2);
        assert!(status.meta.sub_tables.iter().all(|&p| p >= pages), "{:?}", status.meta.sub_tables);
        assert_eq!(status.meta.label, full.label);
        assert!(server.dir.join("grown-2.keys").exists(), "the grown table can grow again");
    }
    let (meta_a, meta_b) = (a.admin.status().await.unwrap().meta, b.admin.status().await.unwrap().meta);
    assert_eq!(meta_a.digest, meta_b.digest, "both servers grew the same table");
    let client = Client::new(&a.url, &b.url).await.unwrap();
    let value = |text: &str| Some(padded(text));
    assert_eq!(client.get(b"key-1").await.unwrap(), value("changed"));
    assert_eq!(client.get(b"key-4").await.unwrap(), value("in the batch"));
    assert_eq!(client.get(b"key-5").await.unwrap(), value("v-5"));
    assert_eq!(client.get(b"added").await.unwrap(), value("later"));
    assert_eq!(client.get(b"new-17").await.unwrap(), value("n"));
    for gone in ["key-2", "key-3", "never"] {
        assert_eq!(client.get(gone.as_bytes()).await.unwrap(), None, "{gone}");
    }
    // Two keys deleted, one added, then the batch's new ones.
    assert_eq!(meta_a.records, 1_000 - 2 + 1 + table.layout().capacity());

    // A table without a key list cannot grow: the growth fails, saying
    // why, and the table answers on at its epoch.
    let keyless = start(dir.path(), "keyless.mgdb", Swaps::Enabled).await;
    keyless
        .admin
        .grow(&GrowRequest { pages_per_table: 64, batch: UpdateRequest { sequence: 1, ..full.clone() } })
        .await
        .unwrap();
    let status = swap_done(&keyless).await;
    let swap = status.snapshot_swap.unwrap();
    assert_eq!(swap.state, SwapState::Failed);
    assert!(swap.error.as_deref().unwrap().contains("key list"), "{swap:?}");
    assert_eq!(status.meta.epoch, 0);
}

async fn post(url: &str, route: &str, body: serde_json::Value) -> (u16, ErrorBody) {
    post_admin(url, route, Some(TOKEN), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_are_sequenced_refuse_what_would_race_them_and_fail_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let old = write_table(&dir.path().join("old.mgdb"), 1_000, "old", 512, 3);
    write_table(&dir.path().join("new.mgdb"), 800, "new", 512, 2);
    std::fs::write(dir.path().join("broken.mgdb"), b"not a table").unwrap();
    let whole = std::fs::read(dir.path().join("new.mgdb")).unwrap();
    std::fs::write(dir.path().join("truncated.mgdb"), &whole[..whole.len() - 100]).unwrap();

    let no_swaps = start(dir.path(), "old.mgdb", Swaps::Disabled).await;
    let body = serde_json::json!({"file": "new.mgdb", "sequence": 1});
    let (status, error) = post(&no_swaps.url, "/admin/v1/snapshot", body.clone()).await;
    assert_eq!((status, error.code.as_str()), (409, "snapshots_disabled"));

    let (release, gate) = std::sync::mpsc::channel();
    let server = start(dir.path(), "old.mgdb", Swaps::Gated(gate)).await;
    let (status, error) =
        post(&server.url, "/admin/v1/snapshot", serde_json::json!({"file": "new.mgdb", "sequence": 2})).await;
    assert_eq!((status, error.code.as_str(), error.expected_sequence), (409, "sequence", Some(1)));

    // A file that is not a table: the swap fails, the old snapshot answers on.
    let (status, _) =
        post(&server.url, "/admin/v1/snapshot", serde_json::json!({"file": "broken.mgdb", "sequence": 1}))
            .await;
    assert_eq!(status, 202);
    release.send(()).unwrap();
    let failed = swap_done(&server).await;
    let swap = failed.snapshot_swap.unwrap();
    assert_eq!(swap.state, SwapState::Failed);
    assert!(swap.error.as_deref().unwrap_or_default().contains("broken.mgdb"), "{swap:?}");
    assert_eq!((failed.meta.epoch, failed.meta.snapshot_digest), (0, hex::encode(old.digest())));
    for (name, problem) in [
        ("../old.mgdb", "not a table file name"),
        ("missing.mgdb", "cannot read"),
        ("truncated.mgdb", "truncated"),
        // The loader's guard: the file served now would have its log replaced.
        ("old.mgdb", "the snapshot served now"),
    ] {
        post(&server.url, "/admin/v1/snapshot", serde_json::json!({"file": name, "sequence": 1})).await;
        release.send(()).unwrap();
        let swap = swap_done(&server).await.snapshot_swap.unwrap();
        assert_eq!(swap.state, SwapState::Failed, "{name}");
        assert!(swap.error.as_deref().unwrap_or_default().contains(problem), "{name}: {swap:?}");
    }

    // While a swap loads, update batches and other swaps are refused.
    let (status, _) = post(&server.url, "/admin/v1/snapshot", body.clone()).await;
    assert_eq!(status, 202);
    let (status, error) = post(&server.url, "/admin/v1/snapshot", body.clone()).await;
    assert_eq!((status, error.code.as_str()), (409, "swap_in_progress"));
    let update = serde_json::json!({"sequence": 1, "changes": []});
    let (status, error) = post(&server.url, "/admin/v1/updates", update).await;
    assert_eq!((status, error.code.as_str()), (409, "swap_in_progress"));
    // Queries made for the old snapshot are answered meanwhile.
    let layout = old.layout();
    let mut rng = StdRng::seed_from_u64(1);
    let keys: Vec<_> =
        (0..layout.choices()).map(|_| generate(layout.pages_per_table(), 3, &mut rng).unwrap().0).collect();
    let old_query = Request { epoch: Epoch::Exact(0), queries: vec![keys] }.encode().unwrap();
    assert_eq!(post_query(&server.url, CONTENT_TYPE, old_query.clone()).await.0, 200);
    release.send(()).unwrap();
    assert_eq!(swap_done(&server).await.snapshot_swap.unwrap().state, SwapState::Swapped);

    // After the swap, a query for the old snapshot's epoch is told to re-read.
    let (status, body) = post_query(&server.url, CONTENT_TYPE, old_query.clone()).await;
    let error: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, error.code.as_str()), (410, "snapshot_changed"));
    let meta = server.admin.status().await.unwrap().meta;
    assert_eq!((meta.epoch, meta.sub_tables.len(), meta.records), (1, 2, 800));
    let names: BTreeSet<String> = std::fs::read_dir(&server.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".log"))
        .collect();
    assert!(names.contains("new.mgdb.log"), "the new snapshot's log is beside it: {names:?}");
    let metrics = reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap();
    for outcome in ["swapped", "failed", "sequence", "swap_in_progress"] {
        assert!(
            metrics.contains(&format!(
                "morphogen_snapshot_swaps_total{{table=\"default\",outcome=\"{outcome}\"}}"
            )),
            "{outcome}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tables_of_a_manifest_swap_one_by_one_from_a_directory_each() {
    let dir = tempfile::tempdir().unwrap();
    write_table(&dir.path().join("fruit.mgdb"), 200, "apple", 512, 2);
    write_table(&dir.path().join("veg.mgdb"), 200, "leek", 512, 2);
    let manifest = dir.path().join("tables.json");
    let tables = serde_json::json!({"tables": {"fruit": "fruit.mgdb", "veg": "veg.mgdb"}});
    std::fs::write(&manifest, tables.to_string()).unwrap();
    let snapshots = dir.path().join("snapshots");
    let options = OpenOptions {
        engine: Choice::Kind(EngineKind::Cpu),
        max_batch: 8,
        bounds: Bounds::window(64),
        tail: Tail::Refuse,
        updates: true,
    };
    let (served, _) = open_manifest(&manifest, Some(&snapshots), &options, &NoProgress).unwrap();
    assert!(served.iter().all(|table| table.snapshots.is_some()), "each table takes swaps");
    // The fruit table's directory was made; a new fruit table goes in it.
    write_table(&snapshots.join("fruit").join("fruit-2.mgdb"), 300, "pear", 1024, 3);
    let config = Config { max_batch: 8, admin_token: Some(TOKEN.to_string()), ..Config::default() };
    let (url, _stop) = spawn(Server::new(served, config).unwrap()).await;
    let settings = morphogen_client::Settings::default();
    let fruit = Admin::for_table(&url, "fruit", TOKEN, &settings).unwrap();
    let label = serde_json::json!({"number": 7, "grown": true});
    let request =
        SnapshotRequest { file: "fruit-2.mgdb".to_string(), label: Some(label.clone()), sequence: 1 };
    fruit.swap(&request).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fruit.status().await.unwrap().snapshot_swap.unwrap().state == SwapState::Loading {
        assert!(Instant::now() < deadline, "the swap ends");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let swapped = fruit.status().await.unwrap();
    assert_eq!(swapped.snapshot_swap.unwrap().state, SwapState::Swapped);
    assert_eq!((swapped.meta.epoch, swapped.meta.records), (1, 300));
    // The new snapshot's first epoch has the swap's label, also after a
    // restart (it is the first record of the new log).
    assert_eq!(swapped.meta.label, Some(label.clone()));
    assert_eq!(fruit.epochs(0).await.unwrap()[0].label, Some(label.clone()));
    let mut reopened = morphogen_table::Table::open(
        &snapshots.join("fruit").join("fruit-2.mgdb"),
        morphogen_table::Verify::Digest,
        &NoProgress,
    )
    .unwrap();
    let log = log_path(&snapshots.join("fruit").join("fruit-2.mgdb"));
    let (epochs, replayed) = morphogen_epochs::Epochs::open(&mut reopened, &log, 64).unwrap();
    assert_eq!((replayed.batches, epochs.base()), (0, 1));
    assert_eq!(epochs.label(1), Some(serde_json::to_vec(&label).unwrap()));
    let veg = Admin::for_table(&url, "veg", TOKEN, &settings).unwrap().status().await.unwrap();
    assert_eq!((veg.meta.epoch, veg.meta.records), (0, 200), "the other table is as it was");
    // A file of another table's directory is not this table's.
    let wrong = SnapshotRequest { file: "fruit-2.mgdb".to_string(), label: None, sequence: 1 };
    let veg_admin = Admin::for_table(&url, "veg", TOKEN, &settings).unwrap();
    veg_admin.swap(&wrong).await.unwrap();
    while veg_admin.status().await.unwrap().snapshot_swap.unwrap().state == SwapState::Loading {
        assert!(Instant::now() < deadline, "the swap ends");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(veg_admin.status().await.unwrap().snapshot_swap.unwrap().state, SwapState::Failed);
    // Started again, the fruit table starts on the file swapped in.
    let fruit_dir = SnapshotDir::new(&snapshots.join("fruit")).unwrap();
    let start = start_file(Some(&fruit_dir), Some(&dir.path().join("fruit.mgdb")), None).unwrap().unwrap();
    assert_eq!(start.table.file_name().unwrap(), "fruit-2.mgdb");
}
