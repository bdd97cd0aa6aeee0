//! What the runner says on stderr: log lines, readable (`runner: ...`) or one JSON object
//! per line (`--log-format json`), and, on a terminal, a progress bar that shows the
//! job's progress reports.
//!
//! Lines are `tracing` events of the `runner` crate; other crates' events (wasmtime's)
//! are not shown. They go through a bounded queue to a thread of their own ([`drain`]
//! waits for them at the end), so that saying something never blocks. Stdout belongs to
//! the job: the runner writes there only the job's own lines, as JSON objects with JSON
//! logs ([`JobOutput`]).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hash::{BuildHasher as _, Hasher as _, RandomState};
use std::io::{self, IsTerminal as _, Write as _};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::Level;
use tracing::field::{Field, Visit};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::{FmtSpan, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `runner: message`, one line each; the job's progress as a bar on a terminal.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, run and job ids, message and the
    /// event's fields; the job's lines become objects too.
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
                .event_format(JsonFormat);
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(layer.with_filter(only_ours)),
            )
        }
    };
    // Only a second call fails, and then the first logger stands.
    let _ = installed;
}

/// Whether lines are JSON objects (`--log-format json`): then the job's stdout and stderr
/// must be [`JobOutput`]s, which make each line the job writes an object too.
pub fn json() -> bool {
    LINES
        .get()
        .is_some_and(|lines| lines.json.load(Ordering::Relaxed))
}

/// This run's id: 16 hexadecimal digits, random, in every JSON line and in the summary,
/// so that a collector tells apart the runs of one job (retries, resumptions).
pub fn run_id() -> &'static str {
    static RUN_ID: OnceLock<String> = OnceLock::new();
    RUN_ID.get_or_init(|| {
        // RandomState's keys come from the operating system's random source.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        hasher.write_u32(std::process::id());
        format!("{:016x}", hasher.finish())
    })
}

/// The job's id, in every JSON line from when it is known.
static JOB_ID: OnceLock<String> = OnceLock::new();

/// Names the job in the JSON lines from now on.
pub fn set_job_id(job_id: &str) {
    let _ = JOB_ID.set(job_id.to_owned());
}

/// The start of a JSON line: `{"timestamp":...`, the level (the runner's lines), the
/// run's and the job's id; [`field`] adds the rest, and the caller closes it.
fn json_head(level: Option<Level>) -> String {
    let mut object = String::with_capacity(160);
    object.push('{');
    let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let _ = write!(object, "\"timestamp\":\"{now}\"");
    if let Some(level) = level {
        field(&mut object, "level", level.as_str());
    }
    field(&mut object, "run_id", run_id());
    if let Some(job_id) = JOB_ID.get() {
        field(&mut object, "job_id", job_id);
    }
    object
}

/// Adds `,"name":value` to a JSON line.
fn field(object: &mut String, name: &str, value: &(impl serde::Serialize + ?Sized)) {
    // Serialising a string or a number cannot fail.
    let _ = write!(
        object,
        ",{}:{}",
        serde_json::to_string(name).unwrap_or_default(),
        serde_json::to_string(value).unwrap_or_default()
    );
}

/// The runner's lines as JSON objects: `timestamp`, `level`, `run_id`, `job_id` (once
/// known), `message`, and the event's other fields (a progress report's `done`, `total`).
struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut object = json_head(Some(*event.metadata().level()));
        event.record(&mut JsonFields(&mut object));
        writeln!(writer, "{object}}}")
    }
}

/// An event's fields, added to a JSON line.
struct JsonFields<'a>(&'a mut String);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, name: &Field, value: &dyn std::fmt::Debug) {
        field(self.0, name.name(), &format!("{value:?}"));
    }

    fn record_str(&mut self, name: &Field, value: &str) {
        field(self.0, name.name(), value);
    }

    fn record_u64(&mut self, name: &Field, value: u64) {
        field(self.0, name.name(), &value);
    }

    fn record_i64(&mut self, name: &Field, value: i64) {
        field(self.0, name.name(), &value);
    }

    fn record_f64(&mut self, name: &Field, value: f64) {
        field(self.0, name.name(), &value);
    }

    fn record_bool(&mut self, name: &Field, value: bool) {
        field(self.0, name.name(), &value);
    }
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
    if json() {
        JobOutput::Stdout.end_json();
        JobOutput::Stderr.end_json();
    }
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

/// The job's stdout or stderr when the runner stands between the job and the stream.
/// With JSON logs, each line the job writes becomes a JSON object (see
/// [`JobOutput::write_json`]). On a terminal where a progress bar may be drawn, each write
/// clears the bar and draws it again below what was written, so that the job's lines
/// scroll above the bar instead of being written into it.
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

/// With JSON logs, the longest line of the job's that goes out as one object; a longer
/// one goes in pieces of this size. Under the 16 KiB at which container runtimes split a
/// line themselves, with room for the object around it.
const JSON_LINE_MAX: usize = 8192;

impl JobOutput {
    fn pending(self) -> MutexGuard<'static, Vec<u8>> {
        PENDING[self as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn put(self, bytes: &[u8]) -> io::Result<()> {
        if json() {
            return self.write_json(bytes);
        }
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

    fn flush_now(self) -> io::Result<()> {
        match self {
            JobOutput::Stdout => io::stdout().flush(),
            // Stderr holds nothing back; its lock, held by a write to a slow stderr, would
            // hold up the job.
            JobOutput::Stderr => Ok(()),
        }
    }

    /// With JSON logs: each whole line the job writes becomes an object with its
    /// `stream` and its text as `message` (see [`JobOutput::emit`]); one longer than
    /// [`JSON_LINE_MAX`] goes out in pieces marked `partial`; what follows the last newline
    /// waits for its end, or the job's ([`finish_progress`]). The job's stdout lines go to
    /// stdout, written here (a job blocked on a full pipe is blocked here, as on a pipe of
    /// its own); its stderr lines join the runner's lines on their way to stderr, in order.
    fn write_json(self, bytes: &[u8]) -> io::Result<()> {
        let mut pending = self.pending();
        pending.extend_from_slice(bytes);
        let mut taken = 0;
        while let Some((line, used, whole)) = next_line(&pending[taken..]) {
            self.emit(line, whole, true)?;
            taken += used;
        }
        pending.drain(..taken);
        Ok(())
    }

    /// Sends one line of the job's as a JSON object: `timestamp`, `run_id`, `job_id`,
    /// `stream`, `message`; `partial` if the line goes on in the next object; `escaped` if
    /// it was not UTF-8, and then in `message` `\\` stands for a backslash and `\xNN` for
    /// each byte that is not part of a UTF-8 character.
    /// On stderr, waits for room in the queue if `wait`, else (at the end) drops the line
    /// when there is none.
    fn emit(self, line: &[u8], whole: bool, wait: bool) -> io::Result<()> {
        let mut object = json_head(None);
        field(&mut object, "stream", self.name());
        match std::str::from_utf8(line) {
            Ok(text) => field(&mut object, "message", text),
            Err(_) => {
                field(&mut object, "message", &escaped(line));
                field(&mut object, "escaped", &true);
            }
        }
        if !whole {
            field(&mut object, "partial", &true);
        }
        object.push_str("}\n");
        match self {
            JobOutput::Stdout => io::stdout().lock().write_all(object.as_bytes()),
            JobOutput::Stderr => {
                lines().send(Whose::Job, object.into_bytes(), wait);
                Ok(())
            }
        }
    }

    /// With JSON logs, at the end of the run: the job's last line, if it did not end it,
    /// as an object; unless the job is blocked writing to this stream (a forced stop).
    fn end_json(self) {
        let mut pending = match PENDING[self as usize].try_lock() {
            Ok(pending) => pending,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let last = std::mem::take(&mut *pending);
        if !last.is_empty() {
            let _ = self.emit(&last, true, false);
        }
    }

    fn name(self) -> &'static str {
        match self {
            JobOutput::Stdout => "stdout",
            JobOutput::Stderr => "stderr",
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

/// The next line of the job's output in `rest`, the bytes it takes and whether it is
/// whole (else a piece of a long line); `None`: no line is complete yet.
fn next_line(rest: &[u8]) -> Option<(&[u8], usize, bool)> {
    match rest
        .iter()
        .take(JSON_LINE_MAX + 1)
        .position(|&byte| byte == b'\n')
    {
        Some(newline) => Some((&rest[..newline], newline + 1, true)),
        None if rest.len() > JSON_LINE_MAX => {
            let cut = utf8_cut(&rest[..JSON_LINE_MAX]);
            Some((&rest[..cut], cut, false))
        }
        None => None,
    }
}

/// Where to cut `piece` so that a UTF-8 character at its end stays whole: before the
/// character if it is not complete.
fn utf8_cut(piece: &[u8]) -> usize {
    let len = piece.len();
    for back in 1..=len.min(3) {
        let byte = piece[len - back];
        // Not a continuation byte: a character starts here.
        if byte & 0xc0 != 0x80 {
            let needs = match byte {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            return if needs > back { len - back } else { len };
        }
    }
    len
}

/// `line`, which is not UTF-8, as text: `\\` for a backslash, `\xNN` for a byte that is
/// not part of a character, the rest as it is.
fn escaped(line: &[u8]) -> String {
    let mut text = String::with_capacity(line.len() + 16);
    for chunk in line.utf8_chunks() {
        text.push_str(&chunk.valid().replace('\\', "\\\\"));
        for byte in chunk.invalid() {
            let _ = write!(text, "\\x{byte:02x}");
        }
    }
    text
}

impl wasmtime_wasi::cli::IsTerminal for JobOutput {
    fn is_terminal(&self) -> bool {
        if json() {
            // The job's lines go out as JSON objects, not to the terminal as written.
            return false;
        }
        match self {
            JobOutput::Stdout => io::IsTerminal::is_terminal(&io::stdout()),
            JobOutput::Stderr => io::IsTerminal::is_terminal(&io::stderr()),
        }
    }
}

impl wasmtime_wasi::cli::StdoutStream for JobOutput {
    /// Written on the job's thread, as the runner's own stdout and stderr are: the
    /// default, a task that writes behind the job, costs a wake-up of another thread per
    /// write (a tenth of the speed, for a job that writes many lines).
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(*self)
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(*self)
    }
}

impl OutputStream for JobOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.put(&bytes).map_err(stream_error)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.flush_now().map_err(stream_error)
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Any size: a write blocks until it is done.
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for JobOutput {
    async fn ready(&mut self) {}
}

/// A failed write as WASI says it: a stream nobody reads any more is closed.
fn stream_error(error: io::Error) -> StreamError {
    if error.kind() == io::ErrorKind::BrokenPipe {
        StreamError::Closed
    } else {
        StreamError::LastOperationFailed(error.into())
    }
}

impl tokio::io::AsyncWrite for JobOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.put(bytes).map(|()| bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.flush_now())
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
        lines().send(Whose::Runner, line.to_vec(), false);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How many of the runner's lines wait for stderr at most; more are dropped (and counted).
const QUEUE_LINES: usize = 1024;

/// How many of the job's lines (JSON logs) wait for stderr at most: a job that writes
/// more waits, as it would on a full pipe, and leaves the runner's lines their room.
const QUEUE_JOB_LINES: usize = 256;

/// Whose a queued line is, and so whose room in the queue it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whose {
    Runner,
    Job,
}

/// The lines waiting for stderr, and the counts [`drain`] and the senders wait on.
#[derive(Default)]
struct Queue {
    lines: VecDeque<(Whose, Vec<u8>)>,
    /// Lines of the runner's, and of the job's, in `lines`.
    runner: usize,
    job: usize,
    /// Lines queued and lines written (or given up) since the start.
    sent: u64,
    written: u64,
    /// Whether the writer waits for a line, and how many wait for one to be written:
    /// a signal to a condition variable costs a system call even when nobody waits.
    writer_idle: bool,
    waiting: usize,
}

/// The lines on their way to stderr: a bounded queue and a thread of its own that writes
/// them, so that a stalled stderr (a full pipe nobody reads, a job blocked writing to it,
/// which holds its lock) never blocks the signal path, the deadline, the watchdog or the
/// exit. A runner's line that finds its room full is dropped and counted, never
/// reordered; the count is said as soon as stderr moves again.
struct Lines {
    queue: Mutex<Queue>,
    /// Signalled when a line is queued (the writer waits), and when one is written
    /// (senders waiting for room and [`drain`] wait).
    queued: Condvar,
    written: Condvar,
    /// The runner's lines and the job's dropped since the last line written.
    dropped: [AtomicU64; 2],
    /// Whether the lines are JSON objects (the count is said as one too).
    json: AtomicBool,
}

/// The queue and its writer thread, once a line was logged.
static LINES: OnceLock<Lines> = OnceLock::new();

/// The queue, and its writer thread, started with the first line.
fn lines() -> &'static Lines {
    LINES.get_or_init(|| {
        // Without the thread, lines are dropped (and counted) once the queue is full,
        // rather than written inline, which could block; and the job's wait for the
        // deadline.
        let _ = std::thread::Builder::new()
            .name("runner-stderr".into())
            .spawn(|| {
                let lines = lines();
                loop {
                    let (from, line) = lines.next();
                    lines.write(&line);
                    lines.done(from);
                }
            });
        Lines {
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            written: Condvar::new(),
            dropped: [AtomicU64::new(0), AtomicU64::new(0)],
            json: AtomicBool::new(false),
        }
    })
}

impl Lines {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `line` in `from`'s room; when that is full, waits for room if `wait` (the
    /// job's lines while it runs), else drops the line and counts it.
    fn send(&self, from: Whose, line: Vec<u8>, wait: bool) {
        let mut queue = self.queue();
        let full = |queue: &Queue| match from {
            Whose::Runner => queue.runner >= QUEUE_LINES,
            Whose::Job => queue.job >= QUEUE_JOB_LINES,
        };
        if wait {
            queue.waiting += 1;
            queue = self
                .written
                .wait_while(queue, |queue| full(queue))
                .unwrap_or_else(PoisonError::into_inner);
            queue.waiting -= 1;
        } else if full(&queue) {
            self.dropped[from as usize].fetch_add(1, Ordering::Relaxed);
            return;
        }
        match from {
            Whose::Runner => queue.runner += 1,
            Whose::Job => queue.job += 1,
        }
        queue.sent += 1;
        queue.lines.push_back((from, line));
        if queue.writer_idle {
            self.queued.notify_one();
        }
    }

    /// The next line to write, on the writer thread.
    fn next(&self) -> (Whose, Vec<u8>) {
        let mut queue = self.queue();
        queue.writer_idle = true;
        let mut queue = self
            .queued
            .wait_while(queue, |queue| queue.lines.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        queue.writer_idle = false;
        queue
            .lines
            .pop_front()
            .expect("the wait ends with a line queued")
    }

    /// Writes one line (after the counts of lines dropped before it, if any), on the
    /// writer thread.
    fn write(&self, line: &[u8]) {
        let [runner, job] = [Whose::Runner, Whose::Job]
            .map(|whose| self.dropped[whose as usize].swap(0, Ordering::Relaxed));
        around_bar(|| {
            let mut stderr = io::stderr().lock();
            for (dropped, whose) in [(runner, ""), (job, "of the job's ")] {
                if dropped == 0 {
                    continue;
                }
                let note = format!("{dropped} {whose}line(s) dropped: stderr was not being read");
                let _ = if self.json.load(Ordering::Relaxed) {
                    let mut object = json_head(Some(Level::WARN));
                    field(&mut object, "message", &note);
                    object.push_str("}\n");
                    stderr.write_all(object.as_bytes())
                } else {
                    writeln!(stderr, "runner: {note}")
                };
            }
            let _ = stderr.write_all(line);
        });
    }

    /// Counts a line written, on the writer thread.
    fn done(&self, from: Whose) {
        let mut queue = self.queue();
        match from {
            Whose::Runner => queue.runner -= 1,
            Whose::Job => queue.job -= 1,
        }
        queue.written += 1;
        if queue.waiting > 0 {
            self.written.notify_all();
        }
    }
}

/// Writes `text` (a usage error, as clap renders it) to stderr through the same queue.
pub fn write_raw(text: &str) {
    lines().send(Whose::Runner, text.as_bytes().to_vec(), false);
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
    let mut queue = lines.queue();
    queue.waiting += 1;
    let (mut queue, _) = lines
        .written
        .wait_timeout_while(queue, bound, |queue| queue.written < queue.sent)
        .unwrap_or_else(PoisonError::into_inner);
    queue.waiting -= 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_utf8_are_escaped_and_backslashes_doubled() {
        assert_eq!(
            escaped(b"a\\b \xff\xfe \xc3\xa9 \xe2\x82"),
            r"a\\b \xff\xfe é \xe2\x82"
        );
    }

    #[test]
    fn a_long_line_is_cut_between_characters() {
        let mut line = vec![b'a'; JSON_LINE_MAX - 1];
        line.extend_from_slice("é".as_bytes());
        line.extend_from_slice(b"rest");
        // "é" would straddle the bound: the piece ends before it.
        assert_eq!(
            next_line(&line),
            Some((&line[..JSON_LINE_MAX - 1], JSON_LINE_MAX - 1, false))
        );
        // A line of exactly the bound is whole; a shorter one without its end waits.
        let mut whole = vec![b'a'; JSON_LINE_MAX];
        whole.push(b'\n');
        assert_eq!(
            next_line(&whole),
            Some((&whole[..JSON_LINE_MAX], JSON_LINE_MAX + 1, true))
        );
        assert_eq!(next_line(b"no end yet"), None);
        // Bytes that are not UTF-8 at the bound are cut where they fall.
        let mut bad = vec![b'a'; JSON_LINE_MAX - 1];
        bad.extend_from_slice(b"\xff\xff");
        assert_eq!(
            next_line(&bad).map(|(_, used, _)| used),
            Some(JSON_LINE_MAX)
        );
    }
}
