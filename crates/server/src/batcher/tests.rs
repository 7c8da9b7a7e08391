//! The batcher against a gated engine: who joins which pass, and what a
//! swap does to the requests queued.

use std::sync::mpsc;

use morphogen_dpf::generate;
use morphogen_epochs::Epochs;
use morphogen_scan::{Answers, Profile, ReferenceEngine, Scan, WritePages, reference_pass};
use morphogen_table::{BuildOptions, Layout, NoProgress, PageWrite, Table, build};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::faults::FAILING_PASSES;
use super::*;

/// The reference engine behind a gate: each pass announces itself, then
/// waits for the test to let it run, and records its batch size.
///
/// Cut into `parts` parts, it puts a query's whole answer in part 0 and
/// zeros in the others: a query that missed part 0 gets a wrong answer.
struct GatedEngine {
    inner: ReferenceEngine,
    parts: usize,
    /// Each pass's batch size and part.
    entered: mpsc::Sender<(usize, usize)>,
    gate: mpsc::Receiver<Result<(), morphogen_scan::Error>>,
}

impl Scan for GatedEngine {
    fn kind(&self) -> morphogen_scan::EngineKind {
        self.inner.kind()
    }
    fn name(&self) -> &'static str {
        "gated"
    }
    fn device(&self) -> String {
        "test".to_string()
    }
    fn layout(&self) -> &Layout {
        self.inner.layout()
    }
    fn pass(&mut self, _: &[Query]) -> Result<Answers, morphogen_scan::Error> {
        unreachable!("the batcher scans part by part")
    }
    fn parts(&self) -> usize {
        self.parts
    }
    fn pass_part(&mut self, queries: &[Query], part: usize) -> Result<Answers, morphogen_scan::Error> {
        assert!(part < self.parts);
        self.entered.send((queries.len(), part)).unwrap();
        self.gate.recv().unwrap()?;
        if part == 0 {
            self.inner.pass(queries)
        } else {
            Ok(Answers::zeroed(self.inner.layout(), queries.len()))
        }
    }
}

impl WritePages for GatedEngine {
    fn table(&self) -> Option<&Table> {
        self.inner.table()
    }
    fn write_pages(&mut self, writes: &[PageWrite]) -> Result<(), morphogen_scan::Error> {
        self.inner.write_pages(writes)
    }
}

impl Profile for GatedEngine {
    fn plain_read_seconds(&mut self) -> Result<f64, morphogen_scan::Error> {
        self.inner.plain_read_seconds()
    }
}

struct Harness {
    batcher: Batcher,
    table: Table,
    entered: mpsc::Receiver<(usize, usize)>,
    gate: mpsc::Sender<Result<(), morphogen_scan::Error>>,
    rng: StdRng,
}

impl Harness {
    fn new(max_batch: usize, max_queue: usize) -> Harness {
        Harness::with_parts(max_batch, max_queue, 1)
    }

    fn with_parts(max_batch: usize, max_queue: usize, parts: usize) -> Harness {
        let records: Vec<(Vec<u8>, Vec<u8>)> =
            (0..300u32).map(|i| (i.to_le_bytes().to_vec(), (i * 7).to_le_bytes().to_vec())).collect();
        let options = BuildOptions { page_size: 512, value_size: Some(8), choices: 2, ..Default::default() };
        let table = build(&records[..], &options, &NoProgress).unwrap();
        let (entered_tx, entered) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let engine = GatedEngine {
            inner: ReferenceEngine::new(table.clone()),
            parts,
            entered: entered_tx,
            gate: gate_rx,
        };
        let published = Published::new(&crate::TableInfo::of(&table), "gated", None, max_batch);
        let limits = (max_batch, max_queue);
        let batcher = Batcher::start(Box::new(engine), None, published, limits, Metrics::new()).unwrap();
        Harness { batcher, table, entered, gate, rng: StdRng::seed_from_u64(7) }
    }

    fn queries(&mut self, count: usize) -> Vec<Query> {
        let layout = self.table.layout();
        (0..count)
            .map(|i| Query {
                keys: (0..u64::from(layout.choices()))
                    .map(|j| {
                        generate(layout.pages_per_table(), (i as u64 * 5 + j) % 3, &mut self.rng).unwrap().0
                    })
                    .collect(),
            })
            .collect()
    }

    /// Submits `queries`, returning them for the expected answers.
    fn submit(&mut self, count: usize) -> (Vec<Query>, oneshot::Receiver<Reply>) {
        let queries = self.queries(count);
        let answer = self.batcher.submit(queries.clone(), 0).expect("room in the queue");
        (queries, answer)
    }

    /// Waits for the reply to `queries` and checks their answers.
    fn assert_answered(&self, reply: oneshot::Receiver<Reply>, queries: &[Query]) {
        assert_eq!(reply.blocking_recv().unwrap().unwrap().answers, self.expected(queries));
    }

    fn expected(&self, queries: &[Query]) -> Vec<u8> {
        reference_pass(&self.table, queries).unwrap().as_bytes().to_vec()
    }

    /// Waits for a pass to start and returns its batch size.
    fn next_pass(&self) -> usize {
        self.next_part().0
    }

    /// Waits for a pass to start and returns its batch size and part.
    fn next_part(&self) -> (usize, usize) {
        self.entered.recv_timeout(Duration::from_secs(10)).expect("a pass starts")
    }

    fn release(&self, outcome: Result<(), morphogen_scan::Error>) {
        self.gate.send(outcome).unwrap();
    }
}

#[test]
fn queued_requests_share_passes_and_large_ones_are_split_in_order() {
    let mut h = Harness::new(8, 64);
    let (first, first_answer) = h.submit(1);
    assert_eq!(h.next_pass(), 1, "an idle server answers a lone request alone");
    let waiting: Vec<_> = (0..5).map(|_| h.submit(3)).collect();
    h.release(Ok(()));
    h.assert_answered(first_answer, &first);
    // 15 queries waited: one full pass of 8 (the third request split) and one of 7.
    assert_eq!(h.next_pass(), 8);
    h.release(Ok(()));
    assert_eq!(h.next_pass(), 7);
    h.release(Ok(()));
    for (queries, answer) in waiting {
        h.assert_answered(answer, &queries);
    }
}

#[test]
fn queries_join_at_the_next_part_and_leave_after_every_part() {
    let mut h = Harness::with_parts(8, 64, 3);
    let (first, first_answer) = h.submit(1);
    assert_eq!(h.next_part(), (1, 0));
    let (second, second_answer) = h.submit(2);
    h.release(Ok(()));
    assert_eq!(h.next_part(), (3, 1), "the second request joins at the next part");
    h.release(Ok(()));
    assert_eq!(h.next_part(), (3, 2));
    h.release(Ok(()));
    h.assert_answered(first_answer, &first);
    assert_eq!(h.next_part(), (2, 0), "the first request left after its three parts");
    h.release(Ok(()));
    h.assert_answered(second_answer, &second);
}

#[test]
fn an_update_waits_for_the_round_and_new_requests_wait_for_the_update() {
    let mut h = Harness::with_parts(8, 64, 2);
    let (first, first_answer) = h.submit(1);
    assert_eq!(h.next_part(), (1, 0));
    let batch = morphogen_epochs::Batch { sequence: 1, changes: Vec::new(), label: None };
    let (mut update, _ticket) = h.batcher.update(Update::Batch(batch));
    let (later, later_answer) = h.submit(1);
    h.release(Ok(()));
    assert_eq!(h.next_part(), (1, 1), "the later request waits behind the update");
    assert!(update.try_recv().is_err(), "the update waits for the first request's last part");
    h.release(Ok(()));
    h.assert_answered(first_answer, &first);
    // This server takes no updates: what matters is that it was tried now.
    assert!(matches!(update.blocking_recv().unwrap(), Err(UpdateError::ReadOnly)));
    assert_eq!(h.next_part(), (1, 0));
    h.release(Ok(()));
    assert_eq!(h.next_part(), (1, 1));
    h.release(Ok(()));
    h.assert_answered(later_answer, &later);
}

#[test]
fn a_full_queue_refuses_requests_until_it_drains() {
    let mut h = Harness::new(2, 4);
    let (_, in_pass) = h.submit(2);
    assert_eq!(h.next_pass(), 2);
    let queued = [h.submit(2), h.submit(2)];
    let extra = h.queries(1);
    let refused = h.batcher.submit(extra, 0).expect_err("the queue holds 4 queries");
    assert!(matches!(refused, Refused::Overloaded { retry_after_secs } if retry_after_secs >= 1));
    h.release(Ok(()));
    in_pass.blocking_recv().unwrap().unwrap();
    for (queries, answer) in queued {
        assert_eq!(h.next_pass(), 2);
        h.release(Ok(()));
        h.assert_answered(answer, &queries);
    }
    // Drained: a full queue's worth fits again.
    let again = [h.submit(2), h.submit(2)];
    for (queries, answer) in again {
        assert_eq!(h.next_pass(), 2);
        h.release(Ok(()));
        h.assert_answered(answer, &queries);
    }
}

#[test]
fn health_names_the_worst_fault() {
    let mut faults = Faults::default();
    assert!(faults.problem().is_none());
    faults.failed_passes = FAILING_PASSES - 1;
    assert!(faults.problem().is_none(), "fewer failed passes than the threshold are not a fault");
    faults.failed_passes = FAILING_PASSES;
    assert_eq!(faults.problem().unwrap().0, "engine_failing");
    faults.log_broken = Some("an append could not be undone".to_string());
    let (code, message) = faults.problem().unwrap();
    assert_eq!(code, "log_broken");
    assert!(message.contains("restart needed"), "{message}");
    faults.engine_down = Some("a panic".to_string());
    assert_eq!(faults.problem().unwrap().0, "engine_down");
}

#[test]
fn reserved_room_counts_against_the_queue_until_given_back() {
    let mut h = Harness::new(2, 4);
    let room = h.batcher.reserve(3).expect("an empty queue has room");
    assert!(matches!(h.batcher.reserve(2), Err(Refused::Overloaded { .. })));
    let (queries, answer) = h.submit(1);
    // In the round now: the queue counts the 3 reserved alone.
    assert_eq!(h.next_pass(), 1);
    let extra = h.queries(2);
    let refused = h.batcher.submit(extra, 0).expect_err("3 reserved and 2 more overfill 4");
    assert!(matches!(refused, Refused::Overloaded { .. }));
    h.release(Ok(()));
    h.assert_answered(answer, &queries);
    drop(room);
    let (queries, answer) = h.submit(2);
    let (more, more_answer) = h.submit(2);
    for (queries, answer) in [(queries, answer), (more, more_answer)] {
        assert_eq!(h.next_pass(), 2);
        h.release(Ok(()));
        h.assert_answered(answer, &queries);
    }
}

#[test]
fn requests_whose_client_left_are_not_scanned() {
    let mut h = Harness::new(8, 64);
    let (_, in_pass) = h.submit(1);
    assert_eq!(h.next_pass(), 1);
    drop(h.submit(4).1);
    let (queries, answer) = h.submit(2);
    h.release(Ok(()));
    in_pass.blocking_recv().unwrap().unwrap();
    assert_eq!(h.next_pass(), 2, "the abandoned request's 4 queries are skipped");
    h.release(Ok(()));
    h.assert_answered(answer, &queries);
}

#[test]
fn an_engine_fault_fails_each_request_in_the_pass_whole_and_frees_its_queue_room() {
    let mut h = Harness::new(2, 4);
    let (_, in_pass) = h.submit(1);
    assert_eq!(h.next_pass(), 1);
    let (_, whole) = h.submit(1);
    let (_, straddling) = h.submit(2);
    let (queries, after) = h.submit(1);
    h.release(Ok(()));
    in_pass.blocking_recv().unwrap().unwrap();
    // The next pass holds `whole` and the first query of `straddling`; it fails.
    assert_eq!(h.next_pass(), 2);
    h.release(Err(morphogen_scan::Error::Fault("test".to_string())));
    assert!(whole.blocking_recv().unwrap().is_err());
    assert!(straddling.blocking_recv().unwrap().is_err(), "its unscanned query is not answered alone");
    assert_eq!(h.next_pass(), 1);
    h.release(Ok(()));
    h.assert_answered(after, &queries);
    // Nothing is left counted against the queue: a full queue's worth fits.
    let refill = [h.submit(2), h.submit(2)];
    for (queries, answer) in refill {
        assert_eq!(h.next_pass(), 2);
        h.release(Ok(()));
        h.assert_answered(answer, &queries);
    }
}

/// A loader that only commits, successfully or not.
#[derive(Debug)]
struct Committer {
    fails: bool,
}

impl SnapshotLoader for Committer {
    fn load(&self, _: &str, _: u64, _: Option<Vec<u8>>) -> Result<LoadedSnapshot, String> {
        unreachable!("the tests hand the batcher loaded snapshots")
    }
    fn commit(&self, _: &LoadedSnapshot) -> Result<(), String> {
        if self.fails { Err("the disk is full".to_string()) } else { Ok(()) }
    }
}

/// A snapshot of other parameters than the harness's, loaded to start at `epoch`.
fn loaded(dir: &std::path::Path, epoch: u64) -> (Table, LoadedSnapshot) {
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..1000u32).map(|i| (i.to_le_bytes().to_vec(), i.to_be_bytes().to_vec())).collect();
    let options = BuildOptions { page_size: 1024, value_size: Some(8), choices: 3, ..Default::default() };
    let table = build(&records[..], &options, &NoProgress).unwrap();
    let epochs = Epochs::create(&table, &dir.join("new.log"), epoch, 16).unwrap();
    let engine = Box::new(ReferenceEngine::new(table.clone()));
    let loaded =
        LoadedSnapshot { file: "new".to_string(), table: crate::TableInfo::of(&table), engine, epochs };
    (table, loaded)
}

#[test]
fn a_swap_fails_the_requests_queued_for_the_old_snapshot_and_refuses_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(8, 64);
    let (first, in_pass) = h.submit(2);
    assert_eq!(h.next_pass(), 2);
    let (_, queued) = h.submit(3);
    let (new_table, snapshot) = loaded(dir.path(), 1);
    let swapped = h.batcher.swap(snapshot, Arc::new(Committer { fails: false }));
    h.release(Ok(()));
    // The pass under way answers from the old snapshot; the swap follows it.
    let answered = in_pass.blocking_recv().unwrap().unwrap();
    assert_eq!((answered.epoch, answered.answers), (0, h.expected(&first)));
    swapped.blocking_recv().unwrap().unwrap();
    assert!(matches!(queued.blocking_recv().unwrap(), Err(PassError::SnapshotChanged)));
    let published = h.batcher.published();
    assert_eq!((published.base, published.epoch), (1, 1));
    assert_eq!(&published.table.layout, new_table.layout());
    assert_eq!(published.table.digest, new_table.digest());
    let stale = h.queries(1);
    assert!(matches!(h.batcher.submit(stale, 0), Err(Refused::SnapshotChanged)));

    // Queries for the new snapshot are answered by its engine, and the
    // queue has room for a full queue's worth again.
    h.table = new_table;
    let queries = h.queries(8);
    let answer = h.batcher.submit(queries.clone(), 1).unwrap();
    let answered = answer.blocking_recv().unwrap().unwrap();
    assert_eq!((answered.epoch, answered.answers), (1, h.expected(&queries)));
    for _ in 0..8 {
        let queries = h.queries(8);
        h.batcher.submit(queries, 1).expect("room for 64 queries");
    }
}

#[test]
fn a_swap_that_cannot_be_committed_or_is_out_of_sequence_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(8, 64);
    let (_, snapshot) = loaded(dir.path(), 1);
    let refused = h.batcher.swap(snapshot, Arc::new(Committer { fails: true })).blocking_recv().unwrap();
    assert_eq!(refused.unwrap_err(), "the disk is full");
    let (_, snapshot) = loaded(dir.path(), 2);
    let refused = h.batcher.swap(snapshot, Arc::new(Committer { fails: false })).blocking_recv().unwrap();
    assert!(refused.unwrap_err().contains("no longer the next one"));
    let published = h.batcher.published();
    assert_eq!((published.base, published.epoch), (0, 0));
    assert_eq!(&published.table.layout, h.table.layout());
}
