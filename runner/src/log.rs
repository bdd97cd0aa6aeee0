//! What the runner says on stderr: log lines, readable (`runner: ...`) or one JSON object
//! per line (`--log-format json`), and, on a terminal, a progress bar that shows the
//! job's progress reports.
//!
//! Lines are `tracing` events of the `runner` crate; other crates' events (wasmtime's)
//! are not shown. They go through a bounded queue to a thread of their own ([`drain`]
//! waits for them at the end), so that saying something never blocks. Stdout belongs to
//! the job and is never written here.

use std::io::{self, IsTerminal as _, Write as _};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{FmtSpan, Writer};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `runner: message`, one line each; the job's progress as a bar on a terminal.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, message and the event's fields.
    Json,
}

/// Whether progress reports may draw a bar: text logs on a terminal.
static BAR_ALLOWED: AtomicBool = AtomicBool::new(false);
/// The bar, once the job has reported progress.
static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Installs the logger. Call once, before anything is logged: earlier events are lost.
pub fn init(format: LogFormat) {
    let only_ours = Targets::new().with_target("runner", Level::INFO);
    let installed = match format {
        LogFormat::Text => {
            BAR_ALLOWED.store(io::stderr().is_terminal(), Ordering::Relaxed);
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(Stderr)
                .log_internal_errors(false)
                .with_span_events(FmtSpan::NONE)
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_ansi(false)
                .fmt_fields(tracing_subscriber::fmt::format::debug_fn(
                    |writer: &mut Writer<'_>, field, value| {
                        // The message only: other fields are for JSON readers.
                        if field.name() == "message" {
                            write!(writer, "runner: {value:?}")
                        } else {
                            Ok(())
                        }
                    },
                ));
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(layer.with_filter(only_ours)),
            )
        }
        LogFormat::Json => {
            lines().json.store(true, Ordering::Relaxed);
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(Stderr)
                .log_internal_errors(false)
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_target(false);
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(layer.with_filter(only_ours)),
            )
        }
    };
    // Only a second call fails, and then the first logger stands.
    let _ = installed;
}

/// Whether the job's progress may show as a bar: then the job's stdout and stderr must
/// be [`JobOutput`]s, so that what the job writes is not written into the bar.
pub fn bar_allowed() -> bool {
    BAR_ALLOWED.load(Ordering::Relaxed)
}

/// Shows a progress report on the bar, if the runner draws one; `false`: the caller logs
/// it as a line instead.
pub fn show_progress(done: u64, total: Option<u64>) -> bool {
    if !bar_allowed() {
        return false;
    }
    let mut new = false;
    let bar = BAR.get_or_init(|| {
        new = true;
        ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
    });
    // A bar with a total, or a count with none; a job may report its total later.
    if new || bar.length().is_some() != total.is_some() {
        let template = match total {
            Some(_) => "runner: {wide_bar} {pos}/{len} ({percent}%) eta {eta}",
            None => "runner: {spinner} {pos} done, {elapsed} elapsed",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
    }
    match total {
        Some(total) => bar.set_length(total),
        None => bar.unset_length(),
    }
    bar.set_position(done);
    true
}

/// Removes the bar, if any, for the lines that end the run (which repeat the last
/// progress report when the job did not complete), and writes out what the job's output
/// held back for it.
pub fn finish_progress() {
    if let Some(spinner) = SPINNER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        spinner.finish_and_clear();
    }
    if let Some(bar) = BAR.get() {
        bar.finish_and_clear();
        JobOutput::Stdout.release();
        JobOutput::Stderr.release();
    }
}

/// Runs `write` with the bar or the spinner, if one is drawn, cleared meanwhile and drawn
/// again after.
fn around_bar<T>(write: impl FnOnce() -> T) -> T {
    let spinner = SPINNER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match (BAR.get(), spinner) {
        (Some(bar), _) if !bar.is_finished() => bar.suspend(write),
        (_, Some(spinner)) if !spinner.is_finished() => spinner.suspend(write),
        _ => write(),
    }
}

/// The spinner of a slow step before the job starts, while one is drawn.
static SPINNER: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A slow step before the job starts (a first compile): on a terminal that shows text
/// logs, a spinner with `message` and the time so far until it is finished or dropped;
/// elsewhere, `message` as a line.
#[derive(Debug)]
pub struct Activity(Option<ProgressBar>);

impl Activity {
    /// Starts showing `message`, for a step that began `elapsed` ago.
    pub fn start(message: String, elapsed: Duration) -> Activity {
        if !bar_allowed() {
            say!("{message}");
            return Activity(None);
        }
        let spinner =
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_elapsed(elapsed);
        if let Ok(style) = ProgressStyle::with_template("runner: {spinner} {msg} ({elapsed})") {
            spinner.set_style(style);
        }
        spinner.set_message(message);
        spinner.enable_steady_tick(Duration::from_millis(100));
        *SPINNER.lock().unwrap_or_else(PoisonError::into_inner) = Some(spinner.clone());
        Activity(Some(spinner))
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        if let Some(spinner) = self.0.take() {
            spinner.finish_and_clear();
            SPINNER
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
    }
}

/// The job's stdout or stderr when a progress bar may be drawn: each write clears the bar
/// and draws it again below what was written, so that the job's lines scroll above the
/// bar instead of being written into it.
#[derive(Debug, Clone, Copy)]
pub enum JobOutput {
    /// The runner's stdout.
    Stdout,
    /// The runner's stderr.
    Stderr,
}

/// What the job wrote to each stream after its last newline, held back while the bar is
/// drawn: the bar, drawn again after each write, would erase it. It goes out with the
/// line's end, at 4 KiB, or when the bar goes.
static PENDING: [Mutex<Vec<u8>>; 2] = [Mutex::new(Vec::new()), Mutex::new(Vec::new())];

/// How much of a partial line is held back at most.
const PENDING_MAX: usize = 4096;

impl JobOutput {
    fn pending(self) -> MutexGuard<'static, Vec<u8>> {
        PENDING[self as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(self, bytes: &[u8]) -> io::Result<()> {
        let mut pending = self.pending();
        match BAR.get() {
            Some(bar) if !bar.is_finished() => {
                pending.extend_from_slice(bytes);
                let whole = match pending.iter().rposition(|&byte| byte == b'\n') {
                    _ if pending.len() >= PENDING_MAX => pending.len(),
                    Some(newline) => newline + 1,
                    None => return Ok(()),
                };
                let lines: Vec<u8> = pending.drain(..whole).collect();
                bar.suspend(|| self.write_out(&lines))
            }
            _ => {
                let held = std::mem::take(&mut *pending);
                self.write_out(&held)?;
                self.write_out(bytes)
            }
        }
    }

    fn write_out(self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        match self {
            // Flushed at once: the bar is drawn again right after.
            JobOutput::Stdout => {
                let mut stdout = io::stdout().lock();
                stdout.write_all(bytes).and_then(|()| stdout.flush())
            }
            JobOutput::Stderr => io::stderr().lock().write_all(bytes),
        }
    }

    /// Writes out what was held back, and ends its line: the runner's last lines follow.
    fn release(self) {
        let mut held = std::mem::take(&mut *self.pending());
        if !held.is_empty() {
            held.push(b'\n');
            let _ = self.write_out(&held);
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for JobOutput {
    fn is_terminal(&self) -> bool {
        match self {
            JobOutput::Stdout => io::IsTerminal::is_terminal(&io::stdout()),
            JobOutput::Stderr => io::IsTerminal::is_terminal(&io::stderr()),
        }
    }
}

impl wasmtime_wasi::cli::StdoutStream for JobOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(*self)
    }
}

impl tokio::io::AsyncWrite for JobOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.write(bytes).map(|()| bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match *self {
            JobOutput::Stdout => io::stdout().flush(),
            JobOutput::Stderr => io::stderr().flush(),
        })
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The writer of log lines: a bounded queue to the thread that writes them to stderr.
/// Errors are ignored: a broken stderr (a terminal that hung up) must not panic the signal
/// task or the deadline thread.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line
    }
}

/// One log line on its way to stderr.
struct Line;

impl io::Write for Line {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        lines().send(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How many lines wait for stderr at most; more are dropped (and counted).
const QUEUE_LINES: usize = 1024;

/// The runner's lines on their way to stderr: a bounded queue and a thread of its own
/// that writes them, so that a stalled stderr (a full pipe nobody reads, a job blocked
/// writing to it, which holds its lock) never blocks the signal path, the deadline, the
/// watchdog or the exit. A line that finds the queue full is dropped and counted, never
/// reordered; the count is said as soon as stderr moves again.
struct Lines {
    queue: SyncSender<Vec<u8>>,
    /// Lines sent and lines written (or given up), for [`drain`].
    progress: Mutex<(u64, u64)>,
    written: Condvar,
    dropped: AtomicU64,
    /// Whether the lines are JSON objects (the count is said as one too).
    json: AtomicBool,
}

/// The queue and its writer thread, once a line was logged.
static LINES: OnceLock<Lines> = OnceLock::new();

/// The queue, and its writer thread, started with the first line.
fn lines() -> &'static Lines {
    LINES.get_or_init(|| {
        let (queue, queued) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES);
        // Without the thread, lines are dropped (and counted) once the queue is full,
        // rather than written inline, which could block.
        let _ = std::thread::Builder::new()
            .name("runner-stderr".into())
            .spawn(move || {
                for line in queued {
                    lines().write(&line);
                }
            });
        Lines {
            queue,
            progress: Mutex::new((0, 0)),
            written: Condvar::new(),
            dropped: AtomicU64::new(0),
            json: AtomicBool::new(false),
        }
    })
}

impl Lines {
    fn send(&self, line: &[u8]) {
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        match self.queue.try_send(line.to_vec()) {
            Ok(()) => progress.0 += 1,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes one line (after the count of lines dropped before it, if any), on the
    /// writer thread.
    fn write(&self, line: &[u8]) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        around_bar(|| {
            let mut stderr = io::stderr().lock();
            if dropped > 0 {
                let note =
                    format!("{dropped} line(s) of the runner dropped: stderr was not being read");
                let _ = if self.json.load(Ordering::Relaxed) {
                    writeln!(
                        stderr,
                        "{}",
                        serde_json::json!({
                            "timestamp": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
                            "level": "WARN",
                            "message": note,
                        })
                    )
                } else {
                    writeln!(stderr, "runner: {note}")
                };
            }
            let _ = stderr.write_all(line);
        });
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        progress.1 += 1;
        self.written.notify_all();
    }
}

/// Writes `text` (a usage error, as clap renders it) to stderr through the same queue.
pub fn write_raw(text: &str) {
    lines().send(text.as_bytes());
}

/// How long the runner waits for its last lines to reach stderr before it exits.
pub const LAST_LINES_WAIT: Duration = Duration::from_secs(1);

/// Waits until every line logged so far is written to stderr, for at most `bound`: the
/// last lines before the runner exits, which a stalled stderr must not hold up.
pub fn drain(bound: Duration) {
    // A run that said nothing has no queue to wait for (and starts no thread for it).
    let Some(lines) = LINES.get() else {
        return;
    };
    let progress = lines
        .progress
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let _ = lines
        .written
        .wait_timeout_while(progress, bound, |(sent, written)| written < sent);
}
