//! Shutdown requests, waiting that a request cuts short, progress, and the exit code.

use std::time::{Duration, Instant};

use crate::bindings::runner::job::{lifecycle, progress};
use crate::bindings::wasi::cli::exit::exit_with_code;
use crate::bindings::wasi::clocks::monotonic_clock;
use wasip2::io::poll::poll;

/// Why the runner asked the job to stop.
///
/// ```no_run
/// use guest_sdk::StopReason;
///
/// if guest_sdk::stop_reason() == Some(StopReason::Timeout) {
///     eprintln!("out of time: saving and stopping");
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM: the container is being stopped.
    Terminate,
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGHUP: the terminal went away.
    Hangup,
    /// The runner's `--timeout` ran out.
    Timeout,
    /// Another runner took the job over; the job is being stopped at once.
    Fenced,
}

/// True once the runner has asked the job to stop. Cheap: it reads a flag in the host.
///
/// Jobs usually ask [`Ctx::should_stop`](crate::Ctx::should_stop), or let
/// [`Ctx::batch`](crate::Ctx::batch) ask for them.
///
/// ```no_run
/// while !guest_sdk::shutdown_requested() {
///     // one unit of work
/// }
/// ```
pub fn shutdown_requested() -> bool {
    lifecycle::shutdown_requested()
}

/// Why the runner asked the job to stop, once it has; `None` before.
///
/// ```no_run
/// if let Some(reason) = guest_sdk::stop_reason() {
///     eprintln!("stopping: {reason:?}");
/// }
/// ```
pub fn stop_reason() -> Option<StopReason> {
    lifecycle::shutdown_reason().map(|reason| match reason {
        lifecycle::StopReason::Terminate => StopReason::Terminate,
        lifecycle::StopReason::Interrupt => StopReason::Interrupt,
        lifecycle::StopReason::Hangup => StopReason::Hangup,
        lifecycle::StopReason::Timeout => StopReason::Timeout,
        lifecycle::StopReason::Fenced => StopReason::Fenced,
    })
}

/// When the runner will stop the job by force, once a stop was requested; `None` before.
///
/// Between the request and this instant the job saves its state and returns. The
/// runner's `--grace` sets the distance (25 s by default).
///
/// ```no_run
/// use std::time::Instant;
///
/// if let Some(deadline) = guest_sdk::deadline() {
///     let left = deadline.saturating_duration_since(Instant::now());
///     eprintln!("{} ms left to save", left.as_millis());
/// }
/// ```
pub fn deadline() -> Option<Instant> {
    let deadline = lifecycle::deadline()?;
    let left = Duration::from_nanos(deadline.saturating_sub(monotonic_clock::now()));
    Some(Instant::now() + left)
}

/// Blocks until the runner asks the job to stop.
///
/// ```no_run
/// // A job that serves until it is told to stop.
/// guest_sdk::wait_for_shutdown();
/// eprintln!("asked to stop: {:?}", guest_sdk::stop_reason());
/// ```
pub fn wait_for_shutdown() {
    lifecycle::subscribe_shutdown().block();
}

/// A `wasi:io/poll` pollable: what [`wait_for`] waits on, and what [`shutdown_pollable`]
/// returns. It is the [`wasi`](crate::wasi) crate's, so the pollables of its sockets,
/// HTTP responses, streams and timers go to [`wait_for`] as they are. One from another
/// binding of WASI 0.2.12 is the same resource: move it over by its handle,
/// `unsafe { guest_sdk::Pollable::from_handle(theirs.take_handle()) }`.
pub use wasip2::io::poll::Pollable;

/// A pollable that becomes ready when the runner asks the job to stop, and stays ready:
/// for a job that polls its own pollables with `wasi:io/poll` itself. [`wait_for`] does
/// that for you.
pub fn shutdown_pollable() -> Pollable {
    lifecycle::subscribe_shutdown()
}

/// Waits until one of the job's own `pollables` is ready (a socket, a stream, a timer),
/// or the runner asks the job to stop, whichever comes first: `Some(i)` with the index of
/// a ready pollable, `None` for the stop request (which wins when both are ready).
///
/// It is how a worker waits for its next piece of work without making a stop wait: a
/// job blocked in it wakes the moment the request comes, finishes what it holds, and
/// returns.
///
/// ```no_run
/// // `message` becomes ready when a message can be read (a socket's, a stream's).
/// fn next(message: &guest_sdk::Pollable) -> bool {
///     match guest_sdk::wait_for(&[message]) {
///         Some(_) => true, // take the message and handle it
///         None => false,   // asked to stop: return
///     }
/// }
/// ```
pub fn wait_for(pollables: &[&Pollable]) -> Option<usize> {
    let stop = lifecycle::subscribe_shutdown();
    let mut all: Vec<&Pollable> = pollables.to_vec();
    all.push(&stop);
    let ready = poll(&all);
    if shutdown_requested() {
        return None;
    }
    ready
        .into_iter()
        .map(|index| index as usize)
        .find(|&index| index < pollables.len())
}

/// Sleeps for `duration`, or less if the runner asks the job to stop meanwhile.
/// Returns `true` if it slept the whole time, `false` if a stop request woke it.
///
/// ```no_run
/// use std::time::Duration;
///
/// # fn upload() -> bool { true }
/// // Retry every 30 s, but do not make the runner wait out the 30 s to stop the job.
/// while !upload() {
///     if !guest_sdk::sleep(Duration::from_secs(30)) {
///         break; // asked to stop
///     }
/// }
/// ```
pub fn sleep(duration: Duration) -> bool {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let timer = monotonic_clock::subscribe_duration(nanos);
    let stop = lifecycle::subscribe_shutdown();
    poll(&[&timer, &stop]);
    !shutdown_requested()
}

/// Waits until `ready()` returns `true`, asking it every `interval`, and returns `true`;
/// or returns `false` as soon as the runner asks the job to stop.
///
/// `ready` is asked at once, and then after each `interval`; a stop request ends the
/// wait between two asks, without waiting out the interval.
///
/// ```no_run
/// use std::path::Path;
/// use std::time::Duration;
///
/// // Wait for the upstream job's marker file, for as long as the runner lets us.
/// let marker = Path::new("/input/_SUCCESS");
/// if !guest_sdk::wait_until(|| marker.exists(), Duration::from_secs(5)) {
///     eprintln!("stopped while waiting for {}", marker.display());
/// }
/// ```
pub fn wait_until(mut ready: impl FnMut() -> bool, interval: Duration) -> bool {
    loop {
        if shutdown_requested() {
            return false;
        }
        if ready() {
            return true;
        }
        if !sleep(interval) {
            return false;
        }
    }
}

/// Reports progress: `done` units of work out of `total`, if it is known. The runner
/// keeps the latest report and shows it from time to time and when the job stops.
///
/// ```no_run
/// let files = ["a.csv", "b.csv", "c.csv"];
/// for (done, file) in files.iter().enumerate() {
///     guest_sdk::report_progress(done as u64, Some(files.len() as u64));
///     // process `file`
/// }
/// ```
pub fn report_progress(done: u64, total: Option<u64>) {
    progress::report(done, total);
}

/// Ends the job at once; the runner exits with `code`.
///
/// Rust's `std::process::exit` reports only success or failure (exit 0 or 1) through
/// WASI 0.2; this passes the whole code (`wasi:cli/exit.exit-with-code`). Nothing is
/// saved: use it for failures that a retry will not fix, with a code your orchestrator
/// knows.
///
/// ```no_run
/// if std::env::args().count() < 2 {
///     eprintln!("usage: job.wasm INPUT");
///     guest_sdk::exit(2);
/// }
/// ```
pub fn exit(code: u8) -> ! {
    exit_with_code(code);
    unreachable!("wasi:cli/exit.exit-with-code returned")
}
