//! What is wrong with a table's serving, for the health check.

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
