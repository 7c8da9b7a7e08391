//! Progress bars on standard error for long work; hidden when standard error
//! is not a terminal (indicatif draws nothing then).

use indicatif::{ProgressBar, ProgressStyle};
use morphogen_table::Progress;
use std::sync::Mutex;

/// One bar per phase, replaced when the next phase starts.
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bar {
    pub fn new() -> Bar {
        Bar { bar: Mutex::new(None) }
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        let bar = if total == 0 {
            ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg}: {human_pos} {per_sec}")
                    .expect("valid template"),
            )
        } else {
            ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{msg:>16} [{bar:40}] {percent:>3}% {human_pos}/{human_len} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            )
        };
        bar.set_message(phase.to_string());
        if let Some(old) = self.bar.lock().expect("progress lock").replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, done: u64) {
        if let Some(bar) = self.bar.lock().expect("progress lock").as_ref() {
            bar.inc(done);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}
