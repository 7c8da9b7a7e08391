//! Prometheus metrics of one server. Each server has its own recorder, so
//! two servers in one process (the demo, the tests) keep separate counts.
//! What concerns one of its tables carries the label `table`; what concerns
//! connections and the process does not.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Recorder, counter, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use morphogen_scan::Phase;

/// Seconds: from half a millisecond to ten seconds.
const SECONDS_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Queries per pass.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The server's recorder and the handle that renders it, and the table
/// that table-scoped metrics recorded through this value are labelled with.
#[derive(Clone)]
pub(crate) struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    table: Arc<str>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("morphogen_batch_size".to_string()), BATCH_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics { recorder: Arc::new(recorder), handle, table: Arc::from("") };
        metrics.describe();
        metrics
    }

    /// The same recorder, labelling table-scoped metrics with `table`.
    pub(crate) fn for_table(&self, table: &str) -> Metrics {
        Metrics { table: Arc::from(table), ..self.clone() }
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        with_local_recorder(&*self.recorder as &dyn Recorder, f)
    }

    fn describe(&self) {
        self.with(|| {
            metrics::describe_counter!(
                "morphogen_requests_total",
                "Query requests by outcome (ok or an error code)."
            );
            metrics::describe_histogram!(
                "morphogen_request_duration_seconds",
                "Time to answer a query request."
            );
            metrics::describe_histogram!(
                "morphogen_pass_duration_seconds",
                "Time of one engine pass over one part of the table (the whole table for an engine of one part)."
            );
            metrics::describe_histogram!("morphogen_batch_size", "Queries in one pass over a part of the table.");
            metrics::describe_histogram!(
                "morphogen_pass_phase_duration_seconds",
                "Time of each phase of a pass (expand, scan, reduce, copy), for engines that time them on their device."
            );
            metrics::describe_gauge!("morphogen_queue_depth", "Queries waiting for a pass.");
            metrics::describe_histogram!(
                "morphogen_queue_wait_seconds",
                "Time from a request's arrival to the start of the first pass that scans one of its queries."
            );
            metrics::describe_counter!(
                "morphogen_lookups_total",
                "Queries by outcome: answered, rejected (queue full), abandoned (client gone before its first pass), failed (engine fault), snapshot_changed (queued when the snapshot was swapped)."
            );
            metrics::describe_gauge!("morphogen_epoch", "The epoch passes answer from now.");
            metrics::describe_gauge!(
                "morphogen_free_rows",
                "Rows no record holds: room for new keys (a key needs one in its candidate pages)."
            );
            metrics::describe_counter!(
                "morphogen_updates_total",
                "Update batches by outcome: applied, or the error code they were refused with."
            );
            metrics::describe_histogram!(
                "morphogen_update_apply_seconds",
                "Time the scan thread spent on one update batch between passes: placing it, syncing it to the log, writing the engine's pages."
            );
            metrics::describe_counter!("morphogen_update_rows_total", "Table rows changed by applied update batches.");
            metrics::describe_counter!(
                "morphogen_asof_answers_total",
                "Queries answered as of an older epoch than their pass's, by rewinding page diffs."
            );
            metrics::describe_counter!(
                "morphogen_snapshot_swaps_total",
                "Snapshot swaps by outcome: swapped, failed (the old snapshot kept answering), or the error code the request was refused with."
            );
            metrics::describe_histogram!(
                "morphogen_snapshot_load_seconds",
                "Time to load and verify a snapshot file and ready an engine over it, in the background."
            );
            metrics::describe_gauge!(
                "morphogen_snapshot_base_epoch",
                "The epoch the snapshot answered from now was swapped in at (0 for the first)."
            );
            metrics::describe_gauge!("morphogen_open_connections", "Connections open now, on all listeners.");
            metrics::describe_counter!(
                "morphogen_connections_refused_total",
                "Connections closed unserved when accepted, by reason: per_client_limit (the client address held its share of the connection limit)."
            );
            metrics::describe_counter!(
                "morphogen_tls_handshake_failures_total",
                "Connections closed because their TLS handshake failed or timed out."
            );
            metrics::describe_counter!(
                "morphogen_deadline_exceeded_total",
                "Requests answered 503 deadline_exceeded: not answered within the request timeout."
            );
            metrics::describe_gauge!(
                "morphogen_history_epochs",
                "Epochs of diffs kept for answers as of older epochs (the window, or fewer where the byte bound forgot some)."
            );
            metrics::describe_gauge!("morphogen_history_bytes", "Bytes the kept epoch diffs take, about.");
            metrics::describe_counter!(
                "morphogen_history_forgotten_for_bytes_total",
                "Epochs of diffs forgotten because the history reached its byte bound before the window: the reach of answers as of older epochs shrank."
            );
            metrics::describe_gauge!(
                "morphogen_engine_down",
                "1 when the table's scan engine is down (it panicked, or an update reached the log but not its pages) until a restart; /v1/health answers 503 then."
            );
            metrics::describe_gauge!(
                "morphogen_resident_memory_bytes",
                "Resident memory of the server process (Linux only)."
            );
        });
    }

    /// Counts a query request and, if it was answered, its duration.
    pub(crate) fn request(&self, outcome: &'static str, duration: Duration) {
        self.with(|| {
            counter!("morphogen_requests_total", "table" => self.table.clone(), "outcome" => outcome)
                .increment(1);
            histogram!("morphogen_request_duration_seconds", "table" => self.table.clone())
                .record(duration.as_secs_f64());
        });
    }

    /// Counts a connection open until the returned guard is dropped.
    pub(crate) fn connection_opened(&self) -> OpenConnection {
        self.with(|| gauge!("morphogen_open_connections").increment(1.0));
        OpenConnection(self.clone())
    }

    /// What the table's epoch history holds after an update.
    pub(crate) fn history(&self, epochs: u64, bytes: u64) {
        self.with(|| {
            gauge!("morphogen_history_epochs", "table" => self.table.clone()).set(epochs as f64);
            gauge!("morphogen_history_bytes", "table" => self.table.clone()).set(bytes as f64);
        });
    }

    /// Counts epochs the history's byte bound forgot before the window did.
    pub(crate) fn epochs_forgotten_for_bytes(&self, epochs: u64) {
        self.with(|| {
            counter!("morphogen_history_forgotten_for_bytes_total", "table" => self.table.clone())
                .increment(epochs)
        });
    }

    /// Marks the table's engine down.
    pub(crate) fn engine_down(&self) {
        self.with(|| gauge!("morphogen_engine_down", "table" => self.table.clone()).set(1.0));
    }

    /// Counts a connection closed unserved as soon as it was accepted.
    pub(crate) fn connection_refused(&self, reason: &'static str) {
        self.with(|| counter!("morphogen_connections_refused_total", "reason" => reason).increment(1));
    }

    /// Counts a connection whose TLS handshake failed or timed out.
    pub(crate) fn tls_handshake_failed(&self) {
        self.with(|| counter!("morphogen_tls_handshake_failures_total").increment(1));
    }

    /// Counts a request that missed its deadline.
    pub(crate) fn deadline_exceeded(&self) {
        self.with(|| counter!("morphogen_deadline_exceeded_total").increment(1));
    }

    /// Records one engine pass and the phases the engine timed.
    pub(crate) fn pass(&self, queries: usize, duration: Duration, phases: &[Phase]) {
        self.with(|| {
            histogram!("morphogen_pass_duration_seconds", "table" => self.table.clone()).record(duration.as_secs_f64());
            histogram!("morphogen_batch_size", "table" => self.table.clone()).record(queries as f64);
            for phase in phases {
                histogram!("morphogen_pass_phase_duration_seconds", "table" => self.table.clone(), "phase" => phase.name)
                    .record(phase.seconds);
            }
        });
    }

    /// Sets the number of queries waiting for a pass.
    pub(crate) fn queue_depth(&self, queries: usize) {
        self.with(|| gauge!("morphogen_queue_depth", "table" => self.table.clone()).set(queries as f64));
    }

    /// Records how long a request waited before its first pass.
    pub(crate) fn queue_wait(&self, wait: Duration) {
        self.with(|| {
            histogram!("morphogen_queue_wait_seconds", "table" => self.table.clone())
                .record(wait.as_secs_f64())
        });
    }

    /// Counts `queries` lookups that ended in `outcome`.
    pub(crate) fn lookups(&self, outcome: &'static str, queries: usize) {
        self.with(|| {
            counter!("morphogen_lookups_total", "table" => self.table.clone(), "outcome" => outcome)
                .increment(queries as u64)
        });
    }

    /// Sets the epoch passes answer from.
    /// What the table publishes now: its epoch and free rows.
    pub(crate) fn published(&self, published: &crate::published::Published) {
        self.with(|| {
            gauge!("morphogen_epoch", "table" => self.table.clone()).set(published.epoch as f64);
            gauge!("morphogen_free_rows", "table" => self.table.clone()).set(published.free_rows() as f64);
        });
    }

    /// Records an applied update batch.
    pub(crate) fn update_applied(&self, duration: Duration, rows: usize) {
        self.with(|| {
            counter!("morphogen_updates_total", "table" => self.table.clone(), "outcome" => "applied")
                .increment(1);
            counter!("morphogen_update_rows_total", "table" => self.table.clone()).increment(rows as u64);
            histogram!("morphogen_update_apply_seconds", "table" => self.table.clone())
                .record(duration.as_secs_f64());
        });
    }

    /// Counts an update batch refused with `code`.
    pub(crate) fn update_refused(&self, code: &'static str) {
        self.with(|| {
            counter!("morphogen_updates_total", "table" => self.table.clone(), "outcome" => code).increment(1)
        });
    }

    /// Records how long loading a snapshot took.
    pub(crate) fn snapshot_loaded(&self, duration: Duration) {
        self.with(|| {
            histogram!("morphogen_snapshot_load_seconds", "table" => self.table.clone())
                .record(duration.as_secs_f64())
        });
    }

    /// Counts a snapshot swap that ended in `outcome` (`swapped` or `failed`).
    pub(crate) fn snapshot_swap(&self, outcome: &'static str) {
        self.with(|| {
            counter!("morphogen_snapshot_swaps_total", "table" => self.table.clone(), "outcome" => outcome)
                .increment(1)
        });
    }

    /// Sets the first epoch of the snapshot answered from.
    pub(crate) fn snapshot_base(&self, epoch: u64) {
        self.with(|| {
            gauge!("morphogen_snapshot_base_epoch", "table" => self.table.clone()).set(epoch as f64)
        });
    }

    /// Counts queries answered as of an older epoch.
    pub(crate) fn asof_answers(&self, queries: usize) {
        self.with(|| {
            counter!("morphogen_asof_answers_total", "table" => self.table.clone()).increment(queries as u64)
        });
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        if let Some(bytes) = resident_memory_bytes() {
            self.with(|| gauge!("morphogen_resident_memory_bytes").set(bytes as f64));
        }
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Folds histogram samples into buckets now and then, so that memory
    /// stays bounded between scrapes.
    pub(crate) async fn upkeep(self) {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            self.handle.run_upkeep();
        }
    }
}

/// The process's resident set size, from the `VmRSS` line of
/// `/proc/self/status` (in kB); None where there is no procfs.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// An open connection, counted in `morphogen_open_connections` while it lives.
pub(crate) struct OpenConnection(Metrics);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.with(|| gauge!("morphogen_open_connections").decrement(1.0));
    }
}
