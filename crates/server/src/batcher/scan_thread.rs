//! The scan thread: it owns the engine and the epochs, runs the
//! scheduler's rounds and applies the jobs between them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use morphogen_epochs::Epochs;
use morphogen_scan::Engine;
use morphogen_scan::schedule::Scheduler;

use super::{
    Answered, Applied, Faults, Job, PassError, Pending, Shared, SwapOutcome, Update, UpdateError,
    UpdateOutcome,
};
use crate::published::Published;
use crate::snapshot::{LoadedSnapshot, SnapshotLoader};

/// Runs the scan thread's loop on `shared` until the batcher is gone,
/// marking the engine down should it end by a panic.
pub(super) fn run(engine: Box<dyn Engine>, epochs: Option<Epochs>, shared: &Shared) {
    let _watch = ScanThreadWatch(shared);
    scan_loop(engine, epochs, shared);
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
                        Job::Update { update, ticket, reply } => {
                            // Withdrawn, or its request is gone: not applied.
                            if !reply.is_closed() && ticket.take() {
                                let _ = reply.send(scanner.apply(update, shared));
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
    fn apply(&mut self, update: Update, shared: &Shared) -> UpdateOutcome {
        if self.broken.is_some() {
            return Err(UpdateError::EngineDown);
        }
        let (Some(epochs), Some(table)) = (self.epochs.as_mut(), self.engine.table()) else {
            return Err(UpdateError::ReadOnly);
        };
        let started = Instant::now();
        let batch = match update {
            Update::Batch(batch) => batch,
            Update::Revert { to, sequence, label } => {
                epochs.revert_batch(to, sequence, label).map_err(UpdateError::Refused)?
            }
        };
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
        shared.metrics.published(&published);
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
        let published = Arc::new(Published::new(&table, engine.name(), Some(&epochs), shared.max_batch));
        // The old engine and its table are dropped here; a new engine and a
        // new log are sound again.
        let forgotten_for_bytes = epochs.forgotten_for_bytes();
        *self = Scanner { engine, epochs: Some(epochs), broken: None, forgotten_for_bytes };
        *shared.faults() = Faults::default();

        let mut intake = shared.lock();
        intake.base = base;
        *shared.published.write().unwrap_or_else(std::sync::PoisonError::into_inner) = published.clone();
        let arrived = intake.arrived.drain(..).map(|arrival| (arrival.pending, arrival.queries.len()));
        let stale: Vec<(Pending, usize)> = scheduler.take_all().into_iter().chain(arrived).collect();
        let unscanned: usize = stale.iter().map(|(_, queries)| queries).sum();
        intake.queued_queries -= unscanned;
        shared.metrics.queue_depth(intake.queued_queries);
        drop(intake);
        shared.metrics.lookups("snapshot_changed", unscanned);
        shared.metrics.published(&published);
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
