//! `runner:job/progress`: the job's progress reports, shown on a bar on a terminal, else
//! as a log line now and then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bindings::runner::job::progress::Host;
use crate::summary::RunStatus;

/// At most one progress line per interval, however often the job reports.
const SHOW_EVERY: Duration = Duration::from_secs(5);

/// Where the latest report is kept, and when one was last shown.
#[derive(Debug)]
pub struct Progress {
    status: Arc<RunStatus>,
    last_shown: Option<Instant>,
    /// Whether the latest report came after the last line shown.
    unshown: bool,
}

impl Progress {
    pub(super) fn new(status: Arc<RunStatus>) -> Self {
        Progress {
            status,
            last_shown: None,
            unshown: false,
        }
    }

    /// The latest report, if no line has shown it: a job that completes says where it
    /// ended rather than leaving an older line as the last word.
    pub fn unshown(&self) -> Option<String> {
        self.unshown.then(|| self.latest()).flatten()
    }

    /// The latest report as text, such as `1200/5000 (24.0%)`.
    pub fn latest(&self) -> Option<String> {
        let (done, total) = self.status.progress()?;
        Some(match total {
            // Past the total (a job's own count): as it is, without a nonsense percentage.
            Some(total) if done > total || total == 0 => format!("{done}/{total}"),
            Some(total) => format!(
                "{done}/{total} ({:.1}%)",
                done as f64 * 100.0 / total as f64
            ),
            None => done.to_string(),
        })
    }
}

impl Host for Progress {
    fn report(&mut self, done: u64, total: Option<u64>) -> wasmtime::Result<()> {
        let now = Instant::now();
        self.status.progressed(done, total, now);
        if crate::log::show_progress(done, total) {
            return Ok(());
        }
        self.unshown = true;
        if self
            .last_shown
            .is_none_or(|shown| now.duration_since(shown) >= SHOW_EVERY)
        {
            self.last_shown = Some(now);
            self.unshown = false;
            if let Some(text) = self.latest() {
                say!(done, total, "progress {text}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_past_their_total_show_no_percentage() {
        let status = Arc::new(RunStatus::default());
        let progress = Progress::new(Arc::clone(&status));
        let shown = |done, total| {
            status.progressed(done, total, Instant::now());
            progress.latest().expect("a report")
        };
        assert_eq!(shown(1200, Some(5000)), "1200/5000 (24.0%)");
        assert_eq!(shown(u64::MAX, Some(100)), format!("{}/100", u64::MAX));
        assert_eq!(shown(3, Some(0)), "3/0");
        assert_eq!(shown(7, None), "7");
    }
}
