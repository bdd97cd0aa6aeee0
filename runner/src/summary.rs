//! The run's summary, written when the runner exits: one JSON object, at most
//! [`MAX_LEN`] bytes, in the termination log (`--termination-log`). Kubernetes shows that
//! file as the container's termination message (`kubectl describe pod`,
//! `.status.containerStatuses[].state.terminated.message`), so whoever looks at a
//! stopped job sees what happened without its logs.
//!
//! ```json
//! {"outcome":"suspended","exit_code":75,"stop_reason":"SIGTERM","job_id":"primes",
//!  "run_id":"5f0c3a9e12d4b7c1",
//!  "checkpoint_sequence":12,"progress":{"done":5200000,"total":70000000},
//!  "run_time_seconds":12.345,"message":"job suspended: ..."}
//! ```

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;

use crate::outcome::Outcome;
use crate::outcome::StopReason;

/// Kubernetes keeps at most 4096 bytes of a termination message.
pub const MAX_LEN: usize = 4096;

/// Where Kubernetes reads the termination message from, unless the pod says otherwise.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

/// What the runner learns about the run while it goes: updated by the host calls, read
/// for the summary (also from the watchdog thread, while the job is stuck).
#[derive(Debug)]
pub struct RunStatus {
    started: Instant,
    /// The sequence number of the job's latest committed checkpoint; 0: none (sequences
    /// start at 1).
    checkpoint: AtomicU64,
    /// Whether this run committed a checkpoint.
    saved: AtomicBool,
    /// The job's latest progress report.
    progress: Mutex<Option<(u64, Option<u64>)>>,
    /// Where Argo Workflows reads the job's progress (`$ARGO_PROGRESS_FILE`), if it does.
    argo: Option<ArgoProgress>,
    /// This run's commits: how many, their states' bytes, how long each took.
    commits: AtomicU64,
    saved_bytes: AtomicU64,
    commit_latency: Histogram,
    /// Whether the job has started.
    running: AtomicBool,
    /// The outcome's name and the exit code, once the run is reported.
    exit: OnceLock<(&'static str, u8)>,
}

/// What this run's commits came to, for the metrics.
#[derive(Debug)]
pub struct Commits {
    pub count: u64,
    pub bytes: u64,
    /// Seconds each took, from the save to the record in place.
    pub latency: Histogram,
}

/// The file Argo Workflows reads a step's progress from: `done/total`, written at most
/// once a second (a job may report a million times a second) and at the end.
#[derive(Debug)]
struct ArgoProgress {
    path: PathBuf,
    /// When it may be written next, in nanoseconds from the run's start: a report checks
    /// it without a lock.
    due: AtomicU64,
}

/// How often the Argo progress file is written at most.
const ARGO_EVERY: Duration = Duration::from_secs(1);

impl ArgoProgress {
    /// Writes `done/total` if it is due at `at` (from the run's start), or `now`. Whole,
    /// through a rename: Argo may read it at any moment.
    fn write(&self, done: u64, total: u64, at: Duration, now: bool) {
        let at = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        if !now && at < self.due.load(Ordering::Relaxed) {
            return;
        }
        let next = at.saturating_add(u64::try_from(ARGO_EVERY.as_nanos()).unwrap_or(u64::MAX));
        self.due.store(next, Ordering::Relaxed);
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        let written = std::fs::write(&temporary, format!("{done}/{total}"))
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(error) = written {
            static SAID: AtomicBool = AtomicBool::new(false);
            if !SAID.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "cannot write the progress file `{}` (ARGO_PROGRESS_FILE): {error}",
                    self.path.display()
                );
            }
        }
    }
}

impl Default for RunStatus {
    fn default() -> Self {
        RunStatus::new(None)
    }
}

impl RunStatus {
    /// The status of a run whose progress Argo Workflows reads from `argo_progress_file`,
    /// if it does.
    pub fn new(argo_progress_file: Option<PathBuf>) -> Self {
        RunStatus {
            started: Instant::now(),
            checkpoint: AtomicU64::new(0),
            saved: AtomicBool::new(false),
            progress: Mutex::new(None),
            argo: argo_progress_file.map(|path| ArgoProgress {
                path,
                due: AtomicU64::new(0),
            }),
            commits: AtomicU64::new(0),
            saved_bytes: AtomicU64::new(0),
            // From half a millisecond to 16 seconds.
            commit_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            running: AtomicBool::new(false),
            exit: OnceLock::new(),
        }
    }

    /// Notes that checkpoint `sequence` is the job's latest (loaded or committed).
    pub fn checkpointed(&self, sequence: u64) {
        self.checkpoint.fetch_max(sequence, Ordering::Relaxed);
    }

    /// Notes that this run committed checkpoint `sequence`, of a state of `bytes`, in
    /// `took`.
    pub fn committed(&self, sequence: u64, bytes: u64, took: Duration) {
        self.saved.store(true, Ordering::Relaxed);
        self.checkpointed(sequence);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.saved_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.commit_latency.observe(took.as_secs_f64());
    }

    /// What this run's commits came to.
    pub fn commits(&self) -> Commits {
        Commits {
            count: self.commits.load(Ordering::Relaxed),
            bytes: self.saved_bytes.load(Ordering::Relaxed),
            latency: self.commit_latency.clone(),
        }
    }

    /// Notes that the job has started.
    pub fn started_job(&self) {
        self.running.store(true, Ordering::Relaxed);
    }

    /// Whether the job has started.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// The outcome's name and the exit code, once the run is reported.
    pub fn exit(&self) -> Option<(&'static str, u8)> {
        self.exit.get().copied()
    }

    /// The latest checkpoint's sequence number, if the job has one.
    pub fn checkpoint(&self) -> Option<u64> {
        Some(self.checkpoint.load(Ordering::Relaxed)).filter(|&sequence| sequence > 0)
    }

    /// Notes the job's latest progress report, made at `now`.
    pub fn progressed(&self, done: u64, total: Option<u64>, now: Instant) {
        *self.progress.lock().unwrap_or_else(PoisonError::into_inner) = Some((done, total));
        if let (Some(argo), Some(total)) = (&self.argo, total) {
            argo.write(done, total, now.duration_since(self.started), false);
        }
    }

    /// The job's latest progress report.
    pub fn progress(&self) -> Option<(u64, Option<u64>)> {
        *self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    outcome: &'static str,
    exit_code: u8,
    /// What asked the job to stop (or forced it), if anything did.
    stop_reason: Option<&'static str>,
    job_id: Option<&'a str>,
    /// The run's id, as in its JSON log lines.
    run_id: &'static str,
    checkpoint_sequence: Option<u64>,
    progress: Option<Progress>,
    run_time_seconds: f64,
    message: Option<String>,
}

#[derive(Debug, Serialize)]
struct Progress {
    done: u64,
    total: Option<u64>,
}

/// The line that ends the run: [`Outcome::message`], except that a job stopped by force
/// that never saved is told it starts over, rather than that its last checkpoint stands.
fn message(outcome: &Outcome, status: &RunStatus) -> Option<String> {
    match outcome {
        // A stateless job (a worker) suspends without saving: no state was saved.
        Outcome::Suspended if !status.saved.load(Ordering::Relaxed) => {
            Some(match status.checkpoint() {
                None => "job suspended on request; it saved no state, so its next run starts \
                         from the beginning (exit 75)"
                    .to_owned(),
                Some(sequence) => format!(
                    "job suspended on request; it saved nothing in this run, so its next run \
                     resumes from checkpoint {sequence} (exit 75)"
                ),
            })
        }
        Outcome::Forced(reason)
            if *reason != StopReason::Fenced && status.checkpoint().is_none() =>
        {
            Some(format!(
                "job stopped by force after {}; it saved no checkpoint, so its next run \
                 starts from the beginning (exit {})",
                reason.cause(),
                outcome.exit_code()
            ))
        }
        _ => outcome.message(),
    }
}

/// The summary of a run that ended with `outcome`, as JSON of at most [`MAX_LEN`] bytes:
/// a long message (a trap's backtrace) is cut short to fit.
pub fn to_json(
    outcome: &Outcome,
    stop_reason: Option<StopReason>,
    job_id: Option<&str>,
    status: &RunStatus,
) -> String {
    let mut summary = Summary {
        outcome: outcome.name(),
        exit_code: outcome.exit_code(),
        stop_reason: match outcome {
            Outcome::Forced(reason) => Some(reason.name()),
            _ => stop_reason.map(StopReason::name),
        },
        job_id,
        run_id: crate::log::run_id(),
        checkpoint_sequence: status.checkpoint(),
        progress: status
            .progress()
            .map(|(done, total)| Progress { done, total }),
        // Milliseconds are enough, and keep the number short.
        run_time_seconds: (status.started.elapsed().as_millis() as f64) / 1000.0,
        message: message(outcome, status),
    };
    // Serialising plain data into a String cannot fail.
    let json = |summary: &Summary<'_>| serde_json::to_string(summary).unwrap_or_default();
    let whole = json(&summary);
    let Some(message) = summary.message.take().filter(|_| whole.len() > MAX_LEN) else {
        return whole;
    };
    // The longest prefix of the message (whole characters) that fits with the marker.
    const CUT: &str = " [...]";
    let ends: Vec<usize> = message.char_indices().map(|(at, _)| at).collect();
    let (mut fits, mut too_long) = (0, ends.len());
    while too_long - fits > 1 {
        let middle = (fits + too_long) / 2;
        summary.message = Some(format!("{}{CUT}", &message[..ends[middle]]));
        if json(&summary).len() <= MAX_LEN {
            fits = middle;
        } else {
            too_long = middle;
        }
    }
    summary.message = Some(format!("{}{CUT}", &message[..ends[fits]]));
    json(&summary)
}

/// Where the summary goes.
#[derive(Debug, Clone)]
pub struct TerminationLog {
    path: PathBuf,
    /// Given with `--termination-log`: created if missing, and a failure is reported.
    explicit: bool,
}

impl TerminationLog {
    /// `path` if given, else [`DEFAULT_TERMINATION_LOG`] if it exists; `None`: no log.
    pub fn new(path: Option<PathBuf>) -> Option<Self> {
        match path {
            Some(path) => Some(TerminationLog {
                path,
                explicit: true,
            }),
            None => Path::new(DEFAULT_TERMINATION_LOG)
                .exists()
                .then(|| TerminationLog {
                    path: DEFAULT_TERMINATION_LOG.into(),
                    explicit: false,
                }),
        }
    }

    /// Replaces the log's contents with `summary`. The default log is written only when
    /// it is writable; a failure to write one given with `--termination-log` is reported.
    pub fn write(&self, summary: &str) {
        let written = OpenOptions::new()
            .write(true)
            .truncate(true)
            .create(self.explicit)
            .open(&self.path)
            .and_then(|mut file| file.write_all(summary.as_bytes()));
        if let Err(error) = written
            && self.explicit
        {
            tracing::warn!(
                "cannot write the run's summary to --termination-log `{}`: {error}",
                self.path.display()
            );
        }
    }
}

/// Writes the summary of a command line that did not parse (`clap_error`, as clap
/// renders it: the error, then usage after a blank line) to the termination log: $RUNNER_TERMINATION_LOG, else the default. The
/// options were not read, so `--termination-log` is not.
pub fn usage_error(clap_error: &str) {
    let explicit = std::env::var_os("RUNNER_TERMINATION_LOG")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from);
    let Some(log) = TerminationLog::new(explicit) else {
        return;
    };
    // The error, without the usage and hint that follow it after a blank line.
    let error: Vec<&str> = clap_error
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let error = error.join(" ");
    let message = error.strip_prefix("error: ").unwrap_or(&error);
    let outcome = Outcome::Failed(anyhow::anyhow!("{message}"));
    log.write(&to_json(&outcome, None, None, &RunStatus::default()));
}

/// Ends a run: writes the summary to the termination log and says how the run ended on
/// stderr. Shared by the main thread and the watchdog (which exits for a job that does
/// not stop): only the first to finish reports, and the other gets the code it reported,
/// so that the process exits with the code the summary gives.
#[derive(Debug)]
pub struct Report {
    status: Arc<RunStatus>,
    log: Option<TerminationLog>,
    job_id: OnceLock<String>,
    /// Held while reporting.
    reporting: Mutex<()>,
    /// The exit code reported, set once the summary is written.
    code: OnceLock<u8>,
}

impl Report {
    /// The report of a run that keeps its status in `status`.
    pub fn new(status: Arc<RunStatus>, log: Option<TerminationLog>) -> Self {
        Report {
            status,
            log,
            job_id: OnceLock::new(),
            reporting: Mutex::new(()),
            code: OnceLock::new(),
        }
    }

    /// Names the job, once the command line says which it is.
    pub fn set_job_id(&self, job_id: &str) {
        let _ = self.job_id.set(job_id.to_owned());
    }

    /// Reports `outcome` (the job was asked to stop for `stop_reason`, if it was), after
    /// the line `preface` if one is given, and returns the exit code. The summary first:
    /// it goes to a file, while a stalled terminal can block the lines on stderr.
    pub fn finish(
        &self,
        outcome: &Outcome,
        stop_reason: Option<StopReason>,
        preface: Option<&str>,
    ) -> u8 {
        let _reporting = self
            .reporting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(&code) = self.code.get() {
            return code;
        }
        if let Some(log) = &self.log {
            log.write(&to_json(
                outcome,
                stop_reason,
                self.job_id.get().map(String::as_str),
                &self.status,
            ));
        }
        let code = outcome.exit_code();
        let _ = self.code.set(code);
        let _ = self.status.exit.set((outcome.name(), code));
        // The last progress report, which the file may not have had yet.
        if let (Some(argo), Some((done, Some(total)))) = (&self.status.argo, self.status.progress())
        {
            argo.write(done, total, self.status.started.elapsed(), true);
        }
        crate::log::finish_progress();
        if let Some(preface) = preface {
            tracing::warn!("{preface}");
        }
        if let Some(message) = message(outcome, &self.status) {
            match outcome {
                Outcome::Suspended | Outcome::NotStarted | Outcome::AlreadyCompleted(_) => {
                    tracing::info!("{message}")
                }
                Outcome::Forced(_) => tracing::warn!("{message}"),
                _ => tracing::error!("{message}"),
            }
        }
        code
    }

    /// [`Report::finish`] for the watchdog, which must exit even if reporting blocks (on a
    /// stalled stderr, or while the main thread reports): it waits for the report at most
    /// [`STUCK_REPORT_WAIT`], and returns the code to exit with.
    pub fn finish_stuck(self: &Arc<Self>, reason: StopReason, preface: &str) -> u8 {
        let (done, finished) = mpsc::channel();
        let report = Arc::clone(self);
        let preface = preface.to_owned();
        let reporting = std::thread::Builder::new()
            .name("runner-report".into())
            .spawn(move || {
                let _ = done.send(report.finish(&Outcome::Forced(reason), None, Some(&preface)));
            });
        let reported = reporting
            .ok()
            .and_then(|_| finished.recv_timeout(STUCK_REPORT_WAIT).ok());
        reported
            .or_else(|| self.code.get().copied())
            .unwrap_or_else(|| Outcome::Forced(reason).exit_code())
    }
}

/// How long the watchdog waits for the report before it exits anyway.
pub const STUCK_REPORT_WAIT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argo_progress_file_is_written_at_most_once_a_second_and_at_the_end() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("progress");
        let argo = ArgoProgress {
            path: path.clone(),
            due: AtomicU64::new(0),
        };
        let read = || std::fs::read_to_string(&path).expect("the file");
        let ms = Duration::from_millis;
        argo.write(1, 10, ms(0), false);
        assert_eq!(read(), "1/10");
        argo.write(2, 10, ms(999), false);
        assert_eq!(read(), "1/10");
        argo.write(3, 10, ms(1000), false);
        assert_eq!(read(), "3/10");
        // The last report, whenever it comes.
        argo.write(4, 10, ms(1001), true);
        assert_eq!(read(), "4/10");
        // Whole, through a file of its own: nothing else is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    fn parse(json: &str) -> serde_json::Value {
        serde_json::from_str(json).expect("valid JSON")
    }

    #[test]
    fn a_summary_says_what_happened() {
        let status = RunStatus::default();
        status.checkpointed(3);
        status.checkpointed(2);
        status.progressed(40, Some(100), Instant::now());
        let json = to_json(
            &Outcome::Suspended,
            Some(StopReason::Terminate),
            Some("primes"),
            &status,
        );
        let summary = parse(&json);
        assert_eq!(summary["outcome"], "suspended");
        assert_eq!(summary["exit_code"], 75);
        assert_eq!(summary["stop_reason"], "SIGTERM");
        assert_eq!(summary["job_id"], "primes");
        assert_eq!(summary["checkpoint_sequence"], 3);
        assert_eq!(summary["progress"]["done"], 40);
        assert_eq!(summary["progress"]["total"], 100);
        assert!(summary["run_time_seconds"].as_f64().is_some());
        assert!(
            summary["message"]
                .as_str()
                .is_some_and(|message| message.contains("suspended"))
        );

        let summary = parse(&to_json(
            &Outcome::Forced(StopReason::Timeout),
            Some(StopReason::Timeout),
            None,
            &RunStatus::default(),
        ));
        assert_eq!(summary["outcome"], "stopped-by-force");
        assert_eq!(summary["exit_code"], 124);
        assert_eq!(summary["stop_reason"], "timeout");
        assert_eq!(summary["checkpoint_sequence"], serde_json::Value::Null);
        assert_eq!(summary["progress"], serde_json::Value::Null);
    }

    #[test]
    fn only_the_first_to_finish_reports_and_both_get_its_code() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("termination-log");
        let report = Arc::new(Report::new(
            Arc::new(RunStatus::default()),
            TerminationLog::new(Some(path.clone())),
        ));
        report.set_job_id("job");
        assert_eq!(report.finish(&Outcome::Suspended, None, None), 75);
        let written = std::fs::read_to_string(&path).expect("a summary");
        // The watchdog, too late: the run has been reported.
        assert_eq!(report.finish_stuck(StopReason::Terminate, "stuck"), 75);
        assert_eq!(report.finish(&Outcome::Completed, None, None), 75);
        assert_eq!(std::fs::read_to_string(&path).expect("a summary"), written);
        assert_eq!(parse(&written)["outcome"], "suspended");
    }

    #[test]
    fn a_stuck_watchdog_does_not_wait_for_a_report_that_does_not_end() {
        let report = Arc::new(Report::new(Arc::new(RunStatus::default()), None));
        // The main thread is reporting, and stuck (on a stalled stderr).
        let reporting = report.reporting.lock().expect("the lock");
        let start = Instant::now();
        assert_eq!(report.finish_stuck(StopReason::Interrupt, "stuck"), 130);
        assert!(start.elapsed() >= STUCK_REPORT_WAIT);
        drop(reporting);
    }

    #[test]
    fn a_long_message_is_cut_to_fit() {
        for message in [
            "x".repeat(10_000),
            "é\"\\\u{1}".repeat(3_000),
            "\u{1}".repeat(5_000),
        ] {
            let json = to_json(
                &Outcome::Trapped(message.clone()),
                None,
                Some("job"),
                &RunStatus::default(),
            );
            assert!(json.len() <= MAX_LEN, "{} bytes", json.len());
            assert!(
                json.len() > MAX_LEN - 64,
                "cut too much: {} bytes",
                json.len()
            );
            let summary = parse(&json);
            let kept = summary["message"].as_str().expect("a message");
            assert!(kept.ends_with(" [...]"), "{kept}");
            assert!(message.starts_with(&kept["job trapped: ".len()..kept.len() - 6]));
        }
    }
}
