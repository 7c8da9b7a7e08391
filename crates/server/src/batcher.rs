//! Continuous batching: one bounded queue in front of the engine, and the
//! scan thread that runs it.
//!
//! Which queries go through which part of the table, and when a request is
//! answered, is the scheduler's ([`morphogen_scan::schedule`], a plain
//! state machine): part after part, round and round, the waiting queries
//! joining whenever a part is done. This module feeds it from the handlers
//! and carries out what it says on a thread that owns the engine.
//!
//! Update batches and snapshot swaps reach the same thread and are applied
//! between parts once no query is in a round and no request half answered
//! (new requests wait meanwhile), so every query and every request is
//! answered from one epoch. A request is queued for the snapshot its keys were
//! checked against; a swap fails the requests still queued for the old one
//! (`snapshot_changed`), and refuses those submitted for it afterwards.
//!
//! The queue is bounded in queries, not requests: when a request does not
//! fit, [`Batcher::submit`] refuses it at once (the server answers 503), so
//! memory stays bounded under any load. Requests whose client went away
//! before their pass are dropped unanswered instead of scanned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use morphogen_epochs::{Batch, Epochs};
use morphogen_scan::schedule::Scheduler;
use morphogen_scan::{Engine, Query};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::published::Published;
use crate::snapshot::{LoadedSnapshot, SnapshotLoader};

/// A request's answers: its queries' answers in order (each `choices`
/// pages), all from one epoch.
pub(crate) struct Answered {
    /// The epoch of the passes that answered.
    pub(crate) epoch: u64,
    pub(crate) answers: Vec<u8>,
}

impl std::fmt::Debug for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes are a share of private answers: not for logs.
        f.debug_struct("Answered").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

/// Why a queued request was not answered.
#[derive(Clone, Debug)]
pub(crate) enum PassError {
    /// The engine failed.
    Engine(morphogen_scan::Error),
    /// The snapshot its keys were made for was swapped out before its pass.
    SnapshotChanged,
}

/// What a request gets back: its answers, or why it has none.
pub(crate) type Reply = Result<Answered, PassError>;

/// An update batch applied.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    /// What the server publishes from this batch's epoch on.
    pub(crate) published: Arc<Published>,
    pub(crate) changed_rows: usize,
}

/// What is wrong with a table's serving, published by `/v1/health`. Each
/// fault but the failing passes lasts until a restart.
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults {
    /// Why the engine answers nothing more: it panicked, the scan thread
    /// stopped, or an update reached the log but not the engine's pages.
    /// For the server's log, not for clients.
    pub(crate) engine_down: Option<String>,
    /// Why the update log takes no more batches.
    pub(crate) log_broken: Option<String>,
    /// Passes that failed in a row, up to the latest.
    pub(crate) failed_passes: u32,
}

/// Failed passes in a row that make a table unhealthy: one is a fault of a
/// batch, several in a row a fault of the engine.
pub(crate) const FAILING_PASSES: u32 = 3;

impl Faults {
    /// The health check's code and message for the worst fault, if any.
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if self.engine_down.is_some() {
            Some((
                "engine_down",
                "the scan engine is down; the server must be restarted (see its log)".into(),
            ))
        } else if self.log_broken.is_some() {
            Some((
                "log_broken",
                "the update log takes no more batches; restart needed (see the server's log)".into(),
            ))
        } else if self.failed_passes >= FAILING_PASSES {
            Some((
                "engine_failing",
                format!("the last {} passes failed (see the server's log)", self.failed_passes),
            ))
        } else {
            None
        }
    }
}

/// Why an update batch was not applied.
#[derive(Debug)]
pub(crate) enum UpdateError {
    /// The batch itself is at fault (sequence, a full table, a long
    /// value); nothing changed.
    Refused(morphogen_epochs::Error),
    /// The server serves a table that takes no updates.
    ReadOnly,
    /// The update log could not be written (a full disk, an I/O error);
    /// nothing changed. The message is for the server's log.
    NotLogged(String),
    /// The update log takes no more batches until a restart; nothing changed.
    LogBroken,
    /// The engine is down; nothing changed.
    EngineDown,
    /// The server failed; the message is for its log.
    Failed(String),
}

/// What an update batch gets back.
pub(crate) type UpdateOutcome = Result<Applied, UpdateError>;

/// What a swap gets back: the server as it stands after it, or why it
/// did not happen (for the operator).
pub(crate) type SwapOutcome = Result<(), String>;

/// A change of the table waiting for the scan thread, applied in arrival order.
enum Job {
    Update { batch: Batch, ticket: UpdateTicket, reply: oneshot::Sender<UpdateOutcome> },
    Swap { loaded: Box<LoadedSnapshot>, loader: Arc<dyn SnapshotLoader>, reply: oneshot::Sender<SwapOutcome> },
}

/// Decides, once, between the scan thread applying a queued update batch
/// and its request giving up on it: a batch is either applied and its
/// outcome waited for, or never applied.
#[derive(Clone)]
pub(crate) struct UpdateTicket(Arc<std::sync::atomic::AtomicU8>);

const TICKET_QUEUED: u8 = 0;
const TICKET_TAKEN: u8 = 1;
const TICKET_CANCELLED: u8 = 2;

impl UpdateTicket {
    fn new() -> UpdateTicket {
        UpdateTicket(Arc::new(std::sync::atomic::AtomicU8::new(TICKET_QUEUED)))
    }

    fn settle(&self, to: u8) -> bool {
        self.0.compare_exchange(TICKET_QUEUED, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Withdraws the batch; false if the scan thread has taken it already
    /// (its outcome is then on its way).
    pub(crate) fn cancel(&self) -> bool {
        self.settle(TICKET_CANCELLED)
    }

    /// Takes the batch to apply it; false if it was withdrawn.
    fn take(&self) -> bool {
        self.settle(TICKET_TAKEN)
    }
}

/// The handlers' side of the queue. Dropping it stops the scan thread once
/// the requests already queued are answered.
pub(crate) struct Batcher {
    shared: Arc<Shared>,
}

/// Why a request was refused unqueued.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The queue is full; trying again after `retry_after_secs` (at least
    /// 1) is likely to succeed.
    Overloaded { retry_after_secs: u64 },
    /// Its keys were checked against a snapshot swapped out since.
    SnapshotChanged,
    /// The engine is down until a restart ([`Faults::engine_down`]).
    EngineDown,
}

struct Shared {
    intake: Mutex<Intake>,
    /// Signalled when a request arrives or the batcher closes.
    wakeup: Condvar,
    max_queue: usize,
    max_batch: usize,
    /// Duration of a whole pass (every part) at the latest part's pace, for
    /// the Retry-After estimate.
    last_pass_nanos: AtomicU64,
    /// Written by the scan thread only; by a swap under the intake lock,
    /// together with [`Intake::base`].
    published: std::sync::RwLock<Arc<Published>>,
    faults: Mutex<Faults>,
    metrics: Metrics,
}

struct Intake {
    /// Requests the scan thread has not yet seen.
    arrived: Vec<Arrival>,
    /// Update batches and swaps waiting, in arrival order.
    jobs: Vec<Job>,
    /// The first epoch of the snapshot that requests are queued for.
    base: u64,
    /// Queries of every request not yet in a pass, seen by the scan thread or not.
    queued_queries: usize,
    closed: bool,
}

/// What the scan thread keeps of a request: when it came and where its
/// answers go (its queries are the scheduler's).
struct Pending {
    arrived: Instant,
    reply: oneshot::Sender<Reply>,
}

/// A request the scan thread has not taken in yet.
struct Arrival {
    pending: Pending,
    queries: Vec<Query>,
}

impl Batcher {
    /// Starts the scan thread, which owns `engine` and `epochs` from now
    /// on. Without `epochs` the table takes no updates and stays at
    /// `published`'s epoch.
    pub(crate) fn start(
        engine: Box<dyn Engine>,
        epochs: Option<Epochs>,
        published: Published,
        limits: (usize, usize),
        metrics: Metrics,
    ) -> std::io::Result<Batcher> {
        let (max_batch, max_queue) = limits;
        assert!(max_batch >= 1 && max_queue >= max_batch, "the server checks its limits");
        metrics.epoch(published.epoch);
        metrics.snapshot_base(published.base);
        let shared = Arc::new(Shared {
            intake: Mutex::new(Intake {
                arrived: Vec::new(),
                jobs: Vec::new(),
                base: published.base,
                queued_queries: 0,
                closed: false,
            }),
            wakeup: Condvar::new(),
            max_queue,
            max_batch,
            last_pass_nanos: AtomicU64::new(0),
            published: std::sync::RwLock::new(Arc::new(published)),
            faults: Mutex::new(Faults::default()),
            metrics,
        });
        let scan_side = shared.clone();
        std::thread::Builder::new().name("morphogen-scan".to_string()).spawn(move || {
            let _watch = ScanThreadWatch(&scan_side);
            scan_loop(engine, epochs, &scan_side);
        })?;
        Ok(Batcher { shared })
    }

    /// What is wrong with serving this table now.
    pub(crate) fn faults(&self) -> Faults {
        self.shared.faults().clone()
    }

    /// The snapshot and epoch passes answer from now.
    pub(crate) fn published(&self) -> Arc<Published> {
        self.shared.published()
    }

    /// Queues an update batch for the scan thread, which applies it once no
    /// query is in the round; the outcome arrives on the returned channel
    /// once the batch is in the log and the engine's pages. The ticket
    /// withdraws it if the scan thread has not taken it yet; a batch whose
    /// channel is dropped while it waits is withdrawn too.
    pub(crate) fn update(&self, batch: Batch) -> (oneshot::Receiver<UpdateOutcome>, UpdateTicket) {
        let (reply, outcome) = oneshot::channel();
        let ticket = UpdateTicket::new();
        self.queue_job(Job::Update { batch, ticket: ticket.clone(), reply });
        (outcome, ticket)
    }

    /// Queues the swap to `loaded` for the scan thread, which has `loader`
    /// commit it and swaps once no query is in the round; the outcome
    /// arrives on the returned channel.
    pub(crate) fn swap(
        &self,
        loaded: LoadedSnapshot,
        loader: Arc<dyn SnapshotLoader>,
    ) -> oneshot::Receiver<SwapOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.queue_job(Job::Swap { loaded: Box::new(loaded), loader, reply });
        outcome
    }

    /// Takes room for `count` queries' worth of work done outside the
    /// passes (answers taken back to an older epoch), so that it counts
    /// against the queue limit as scans do; refused like a request when
    /// the queue is full.
    pub(crate) fn reserve(&self, count: usize) -> Result<Reservation, Refused> {
        self.shared.take_room(&mut self.shared.lock(), count)?;
        Ok(Reservation { shared: self.shared.clone(), count })
    }

    fn queue_job(&self, job: Job) {
        self.shared.lock().jobs.push(job);
        self.shared.wakeup.notify_one();
    }

    /// Queues a request's queries (at most the batch limit), made for the
    /// snapshot that starts at epoch `base`; its answers arrive on the
    /// returned channel.
    pub(crate) fn submit(&self, queries: Vec<Query>, base: u64) -> Result<oneshot::Receiver<Reply>, Refused> {
        debug_assert!(!queries.is_empty() && queries.len() <= self.shared.max_batch);
        let count = queries.len();
        let (reply, answer) = oneshot::channel();
        if self.shared.faults().engine_down.is_some() {
            return Err(Refused::EngineDown);
        }
        let mut intake = self.shared.lock();
        if intake.base != base {
            return Err(Refused::SnapshotChanged);
        }
        if let Err(refused) = self.shared.take_room(&mut intake, count) {
            drop(intake);
            self.shared.metrics.lookups("rejected", count);
            return Err(refused);
        }
        intake.arrived.push(Arrival { pending: Pending { arrived: Instant::now(), reply }, queries });
        drop(intake);
        self.shared.wakeup.notify_one();
        Ok(answer)
    }
}

/// Room in the queue taken by work done outside passes, given back when dropped.
pub(crate) struct Reservation {
    shared: Arc<Shared>,
    count: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut intake = self.shared.lock();
        intake.queued_queries = intake.queued_queries.saturating_sub(self.count);
        self.shared.metrics.queue_depth(intake.queued_queries);
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wakeup.notify_one();
    }
}

/// Marks the engine down if the scan thread ends by a panic, and fails
/// what waits for it: requests and jobs are answered (by their dropped
/// reply channels) instead of waiting for their deadlines.
struct ScanThreadWatch<'a>(&'a Shared);

impl Drop for ScanThreadWatch<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.0.engine_down("the scan thread stopped by a panic".to_string());
        let mut intake = self.0.lock();
        intake.arrived.clear();
        intake.jobs.clear();
        intake.queued_queries = 0;
    }
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the engine down for good (until a restart), logging why once.
    fn engine_down(&self, reason: String) {
        let mut faults = self.faults();
        if faults.engine_down.is_none() {
            tracing::error!(%reason, "the scan engine is down: new requests get 503 engine_down; restart the server");
            self.metrics.engine_down();
            faults.engine_down = Some(reason);
        }
    }

    /// Counts a pass's outcome for the health check.
    fn pass_outcome(&self, ok: bool) {
        let mut faults = self.faults();
        faults.failed_passes = if ok { 0 } else { faults.failed_passes.saturating_add(1) };
    }

    fn published(&self) -> Arc<Published> {
        self.published.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn lock(&self) -> MutexGuard<'_, Intake> {
        // A panic while holding the lock leaves plain counters and a list
        // behind, still consistent enough to drain: keep serving.
        self.intake.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts `count` more queries against the queue limit, or refuses
    /// them (503 with the time to drain the queue) when there is no room.
    fn take_room(&self, intake: &mut Intake, count: usize) -> Result<(), Refused> {
        if intake.queued_queries + count > self.max_queue {
            return Err(Refused::Overloaded {
                retry_after_secs: self.retry_after_secs(intake.queued_queries),
            });
        }
        intake.queued_queries += count;
        self.metrics.queue_depth(intake.queued_queries);
        Ok(())
    }

    /// The passes needed to drain `queued` queries, at the latest pass's
    /// duration, in whole seconds (Retry-After's unit), at least one.
    fn retry_after_secs(&self, queued: usize) -> u64 {
        let pass = Duration::from_nanos(self.last_pass_nanos.load(Ordering::Relaxed));
        let passes = queued.div_ceil(self.max_batch) as u32 + 1;
        (pass * passes).as_secs_f64().ceil().max(1.0) as u64
    }
}

/// The scan thread: lets waiting queries join the round, scans the next
/// part, hands out the answers of the requests answered whole, and applies
/// update batches and swaps when the scheduler is at rest; until the
/// batcher is dropped and nothing is left to answer.
fn scan_loop(engine: Box<dyn Engine>, epochs: Option<Epochs>, shared: &Shared) {
    let forgotten_for_bytes = epochs.as_ref().map_or(0, Epochs::forgotten_for_bytes);
    let mut scanner = Scanner { engine, epochs, broken: None, forgotten_for_bytes };
    let mut scheduler =
        Scheduler::new(shared.max_batch, scanner.engine.parts(), answer_bytes(&*scanner.engine));
    loop {
        match gather(shared, &mut scheduler) {
            Work::Closed => return,
            Work::Jobs(jobs) => {
                for job in jobs {
                    match job {
                        Job::Update { batch, ticket, reply } => {
                            // Withdrawn, or its request is gone: not applied.
                            if !reply.is_closed() && ticket.take() {
                                let _ = reply.send(scanner.apply(batch, shared));
                            }
                        }
                        Job::Swap { loaded, loader, reply } => {
                            let _ =
                                reply.send(scanner.swap(*loaded, loader.as_ref(), &mut scheduler, shared));
                        }
                    }
                }
                continue;
            }
            Work::Pass => {}
        }
        let epoch = shared.published().epoch;
        let parts = scanner.engine.parts();
        let (part, queries) = scheduler.next_part().expect("gather returns a pass only with a round");
        let batch = queries.len();
        let started = Instant::now();
        let result = scanner.pass_part(queries, part, shared);
        let elapsed = started.elapsed();
        shared.pass_outcome(result.is_ok());
        // Retry-After counts in whole passes: all the parts.
        shared.last_pass_nanos.store(elapsed.as_nanos() as u64 * parts as u64, Ordering::Relaxed);
        shared.metrics.pass(batch, elapsed, &scanner.engine.last_pass_phases());

        match result {
            Ok(answers) => {
                let (answered, left_round) = scheduler.part_done(answers.as_bytes());
                shared.metrics.lookups("answered", left_round);
                for done in answered {
                    // The client may have gone away meanwhile: nothing to do then.
                    let _ = done.request.reply.send(Ok(Answered { epoch, answers: done.answers }));
                }
            }
            Err(error) => {
                let failed = scheduler.part_failed();
                shared.metrics.lookups("failed", failed.in_round);
                shared.lock().queued_queries -= failed.unscanned;
                shared.metrics.lookups("failed", failed.unscanned);
                for pending in failed.requests {
                    let _ = pending.reply.send(Err(PassError::Engine(error.clone())));
                }
            }
        }
    }
}

/// Bytes of one query's answer from `engine`: a page per sub-table.
fn answer_bytes(engine: &dyn Engine) -> usize {
    let layout = engine.layout();
    layout.page_size() as usize * usize::from(layout.choices())
}

/// What the scan thread owns: the engine and the epochs of the snapshot
/// it answers from.
struct Scanner {
    engine: Box<dyn Engine>,
    epochs: Option<Epochs>,
    /// Set when an update reached the log but not the engine: the engine
    /// no longer answers from any epoch, so nothing more is answered until
    /// a restart or a swap to another snapshot.
    broken: Option<String>,
    /// The epochs' [`Epochs::forgotten_for_bytes`] when last looked at.
    forgotten_for_bytes: u64,
}

impl Scanner {
    /// Scans one part of the table for `queries`. A panic of the engine
    /// fails the pass and takes the engine down: its state is unknown.
    fn pass_part(
        &mut self,
        queries: &[morphogen_scan::Query],
        part: usize,
        shared: &Shared,
    ) -> Result<morphogen_scan::Answers, morphogen_scan::Error> {
        if let Some(reason) = &self.broken {
            return Err(morphogen_scan::Error::Fault(reason.clone()));
        }
        let engine = &mut self.engine;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.pass_part(queries, part))) {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_string());
                let reason = format!("the engine panicked during a pass ({message})");
                self.break_down(reason.clone(), shared);
                Err(morphogen_scan::Error::Fault(reason))
            }
        }
    }

    /// Takes the engine out of service until a restart or a swap.
    fn break_down(&mut self, reason: String, shared: &Shared) {
        shared.engine_down(reason.clone());
        self.broken = Some(reason);
    }

    /// Places, logs and applies one update batch, and publishes its epoch.
    fn apply(&mut self, batch: Batch, shared: &Shared) -> UpdateOutcome {
        if self.broken.is_some() {
            return Err(UpdateError::EngineDown);
        }
        let (Some(epochs), Some(table)) = (self.epochs.as_mut(), self.engine.table()) else {
            return Err(UpdateError::ReadOnly);
        };
        let started = Instant::now();
        let plan = epochs.plan(table, batch).map_err(UpdateError::Refused)?;
        let changed_rows = plan.changed_rows();
        // In the log and synced before anything changes: nothing acknowledged is lost.
        let writes = epochs.commit(plan).map_err(|error| {
            if epochs.log_broken() {
                let mut faults = shared.faults();
                if faults.log_broken.is_none() {
                    tracing::error!(%error, "the update log takes no more batches until a restart");
                    faults.log_broken = Some(error.to_string());
                }
            }
            match error {
                morphogen_epochs::Error::BatchTooLarge => UpdateError::Refused(error),
                morphogen_epochs::Error::LogBroken { .. } => UpdateError::LogBroken,
                error => UpdateError::NotLogged(error.to_string()),
            }
        })?;
        if let Err(error) = self.engine.write_pages(&writes) {
            let reason = format!(
                "update batch {} is in the log but the engine could not take it ({error}); \
                 restart the server to replay the log",
                epochs.epoch()
            );
            self.break_down(reason.clone(), shared);
            return Err(UpdateError::Failed(reason));
        }
        let published = Arc::new(shared.published().at(epochs));
        *shared.published.write().unwrap_or_else(std::sync::PoisonError::into_inner) = published.clone();
        shared.metrics.epoch(published.epoch);
        let history = epochs.history();
        shared.metrics.history(history.kept(), history.bytes());
        let forgotten = epochs.forgotten_for_bytes();
        if forgotten > self.forgotten_for_bytes {
            shared.metrics.epochs_forgotten_for_bytes(forgotten - self.forgotten_for_bytes);
            self.forgotten_for_bytes = forgotten;
            tracing::warn!(
                kept = history.kept(),
                window = history.window(),
                bytes = history.bytes(),
                "the epoch history reached its byte bound: answers as of older epochs reach back fewer epochs \
                 than the window (see --max-history-mib)"
            );
        }
        shared.metrics.update_applied(started.elapsed(), changed_rows);
        Ok(Applied { published, changed_rows })
    }

    /// Swaps to the loaded snapshot if its first epoch is the next one:
    /// the loader records the swap durably first. Every request still
    /// queued for the old snapshot is told so.
    fn swap(
        &mut self,
        loaded: LoadedSnapshot,
        loader: &dyn SnapshotLoader,
        scheduler: &mut Scheduler<Pending>,
        shared: &Shared,
    ) -> SwapOutcome {
        let next = shared.published().epoch.saturating_add(1);
        let base = loaded.epochs.base();
        if base != next {
            return Err(format!(
                "sequence number {base} is no longer the next one ({next}): an update batch came first"
            ));
        }
        loader.commit(&loaded)?;
        let LoadedSnapshot { table, engine, epochs, .. } = loaded;
        let published = Published::new(&table, engine.name(), Some(&epochs), shared.max_batch);
        // The old engine and its table are dropped here; a new engine and a
        // new log are sound again.
        let forgotten_for_bytes = epochs.forgotten_for_bytes();
        *self = Scanner { engine, epochs: Some(epochs), broken: None, forgotten_for_bytes };
        *shared.faults() = Faults::default();

        let mut intake = shared.lock();
        intake.base = base;
        *shared.published.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(published);
        let arrived = intake.arrived.drain(..).map(|arrival| (arrival.pending, arrival.queries.len()));
        let stale: Vec<(Pending, usize)> = scheduler.take_all().into_iter().chain(arrived).collect();
        let unscanned: usize = stale.iter().map(|(_, queries)| queries).sum();
        intake.queued_queries -= unscanned;
        shared.metrics.queue_depth(intake.queued_queries);
        drop(intake);
        shared.metrics.lookups("snapshot_changed", unscanned);
        shared.metrics.epoch(base);
        shared.metrics.snapshot_base(base);
        for (pending, _) in stale {
            let _ = pending.reply.send(Err(PassError::SnapshotChanged));
        }
        scheduler.reshape(self.engine.parts(), answer_bytes(&*self.engine));
        Ok(())
    }
}

/// What the scan thread does next.
enum Work {
    /// Scan the next part for the queries in the round.
    Pass,
    /// Apply these update batches and swaps, in order.
    Jobs(Vec<Job>),
    /// Stop: the batcher is gone and nothing is left.
    Closed,
}

/// Waits for work. Update batches and swaps come first once the scheduler
/// is at rest (no query in the round, no request half answered); until
/// then only the queries of requests already started join, so that each is
/// answered from one epoch. Otherwise lets the waiting queries join the
/// round, oldest request first, while it has room for them.
fn gather(shared: &Shared, scheduler: &mut Scheduler<Pending>) -> Work {
    let mut intake = shared.lock();
    loop {
        for arrival in intake.arrived.drain(..) {
            scheduler.add(arrival.pending, arrival.queries);
        }
        // A request whose client has gone away needs no pass, if none of
        // its queries has joined the round.
        for (_, queries) in scheduler.drop_unstarted(|pending| pending.reply.is_closed()) {
            intake.queued_queries -= queries;
            shared.metrics.lookups("abandoned", queries);
        }
        if !intake.jobs.is_empty() && scheduler.at_rest() {
            return Work::Jobs(std::mem::take(&mut intake.jobs));
        }
        let now = Instant::now();
        let new_requests = intake.jobs.is_empty();
        let joined = scheduler.join(new_requests, |pending| shared.metrics.queue_wait(now - pending.arrived));
        intake.queued_queries -= joined;
        shared.metrics.queue_depth(intake.queued_queries);
        if scheduler.in_round() > 0 {
            return Work::Pass;
        }
        if intake.closed && scheduler.is_empty() {
            return Work::Closed;
        }
        intake = shared.wakeup.wait(intake).unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use morphogen_dpf::generate;
    use morphogen_epochs::Epochs;
    use morphogen_scan::{Answers, Profile, ReferenceEngine, Scan, WritePages, reference_pass};
    use morphogen_table::{BuildOptions, Layout, NoProgress, PageWrite, Table, build};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

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
            let options = BuildOptions { page_size: 512, value_size: Some(8), choices: 2, seed: None };
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
                            generate(layout.pages_per_table(), (i as u64 * 5 + j) % 3, &mut self.rng)
                                .unwrap()
                                .0
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
        let (mut update, _ticket) = h.batcher.update(Batch { sequence: 1, changes: Vec::new() });
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
        fn load(&self, _: &str, _: u64) -> Result<LoadedSnapshot, String> {
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
        let options = BuildOptions { page_size: 1024, value_size: Some(8), choices: 3, seed: None };
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
}
