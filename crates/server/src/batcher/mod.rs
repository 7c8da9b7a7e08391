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
//!
//! Here: the intake (the handlers' side). `scan_thread`: the thread's loop
//! and what it owns. `jobs`: update batches and swaps waiting for it.
//! `faults`: what the health check reports.

mod faults;
mod jobs;
mod scan_thread;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use morphogen_epochs::Epochs;
use morphogen_scan::{Engine, Query};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::published::Published;
use crate::snapshot::{LoadedSnapshot, SnapshotLoader};
pub(crate) use faults::Faults;
use jobs::Job;
pub(crate) use jobs::{Applied, SwapOutcome, Update, UpdateError, UpdateOutcome, UpdateTicket};

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
        metrics.published(&published);
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
            scan_thread::run(engine, epochs, &scan_side);
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
    pub(crate) fn update(&self, update: Update) -> (oneshot::Receiver<UpdateOutcome>, UpdateTicket) {
        let (reply, outcome) = oneshot::channel();
        let ticket = UpdateTicket::new();
        self.queue_job(Job::Update { update, ticket: ticket.clone(), reply });
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
