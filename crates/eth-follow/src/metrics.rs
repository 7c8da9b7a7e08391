//! What an operator watches of a follower: the block it holds, how far
//! behind the node it is, how long since a block was applied, and the
//! reorganisations and retries it has seen, in Prometheus' text format.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Recorder, counter, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Buckets of the time to apply a block, in seconds.
const BLOCK_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The follower's recorder and the handle that renders it.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A recorder of its own (not the process's global one).
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("morphogen_follow_block_seconds".to_string()),
                BLOCK_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics { recorder: Arc::new(recorder), handle };
        metrics.with(|| {
            metrics::describe_gauge!("morphogen_follow_block", "The newest block every table holds.");
            metrics::describe_gauge!(
                "morphogen_follow_node_head",
                "The node's newest block, when last asked."
            );
            metrics::describe_gauge!(
                "morphogen_follow_blocks_behind",
                "Blocks the tables are behind the node's head."
            );
            metrics::describe_gauge!(
                "morphogen_follow_seconds_since_block",
                "Seconds since the follower last applied a block (or went back for a reorganisation)."
            );
            metrics::describe_counter!("morphogen_follow_blocks_total", "Blocks applied.");
            metrics::describe_counter!("morphogen_follow_reorgs_total", "Reorganisations taken back.");
            metrics::describe_counter!(
                "morphogen_follow_tables_grown_total",
                "Tables grown because a block did not fit, by table (once per server)."
            );
            metrics::describe_counter!(
                "morphogen_follow_retries_total",
                "Steps tried again because the node or a server could not be reached."
            );
            metrics::describe_histogram!(
                "morphogen_follow_block_seconds",
                "Time from reading a block to every table's acknowledgement."
            );
        });
        metrics
    }

    fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        with_local_recorder(&*self.recorder as &dyn Recorder, f)
    }

    /// The tables hold `block`; the node's head is `head`.
    pub(crate) fn position(&self, block: u64, head: u64) {
        self.with(|| {
            gauge!("morphogen_follow_block").set(block as f64);
            gauge!("morphogen_follow_node_head").set(head as f64);
            gauge!("morphogen_follow_blocks_behind").set(head.saturating_sub(block) as f64);
        });
    }

    /// A block was applied in `took`.
    pub(crate) fn block_applied(&self, took: Duration) {
        self.with(|| {
            counter!("morphogen_follow_blocks_total").increment(1);
            histogram!("morphogen_follow_block_seconds").record(took.as_secs_f64());
        });
    }

    /// A reorganisation was taken back.
    pub(crate) fn reorg(&self) {
        self.with(|| counter!("morphogen_follow_reorgs_total").increment(1));
    }

    /// A step is tried again.
    pub(crate) fn grown(&self, table: &'static str) {
        self.with(|| counter!("morphogen_follow_tables_grown_total", "table" => table).increment(1));
    }

    pub(crate) fn retry(&self) {
        self.with(|| counter!("morphogen_follow_retries_total").increment(1));
    }

    /// Time since a block was last applied.
    pub(crate) fn since_block(&self, since: Duration) {
        self.with(|| gauge!("morphogen_follow_seconds_since_block").set(since.as_secs_f64()));
    }

    /// Everything, in Prometheus' text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// Serves `metrics` at `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = metrics.render();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
        }),
    );
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
