//! Write batch jobs for `runner` that stop cleanly and resume where they stopped.
//!
//! A job is a function that takes a [`Ctx`] holding its typed state. The runner loads the
//! state saved by the last run (or `Default` on the first), and the job checks
//! [`Ctx::should_stop`] between units of work:
//!
//! ```no_run
//! use guest_sdk::{Ctx, Outcome};
//! use std::time::Duration;
//!
//! #[derive(Default, guest_sdk::serde::Serialize, guest_sdk::serde::Deserialize)]
//! #[serde(crate = "guest_sdk::serde")]
//! struct State { next: u64, sum: u64 }
//!
//! fn run(ctx: &mut Ctx<State>) -> guest_sdk::Result<Outcome> {
//!     while ctx.state.next < 1_000_000 {
//!         if ctx.should_stop() {
//!             return ctx.suspend(); // saves the state; the runner exits 75
//!         }
//!         ctx.state.sum += ctx.state.next;
//!         ctx.state.next += 1;
//!         ctx.checkpoint_every(Duration::from_secs(5))?;
//!     }
//!     println!("{}", ctx.state.sum);
//!     Ok(Outcome::Completed)
//! }
//!
//! guest_sdk::job!(run);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` as a `cdylib` and run it
//! with `runner target/wasm32-wasip2/release/NAME.wasm`.
//!
//! State is saved as JSON through `serde`; derive with `#[serde(crate = "guest_sdk::serde")]`
//! so that the job needs no dependency besides this crate.

use std::fmt;
use std::time::{Duration, Instant};

pub use anyhow::{self, Error, Result};
pub use serde;

#[doc(hidden)]
pub mod __private {
    wit_bindgen::generate!({
        path: "../wit",
        world: "runner:job/job",
        pub_export_macro: true,
        generate_all,
    });

    pub use self::Outcome as WitOutcome;

    /// What the exported `run` returns.
    pub type RunResult = Result<WitOutcome, String>;

    /// Runs the job function `run` with its state loaded, for [`crate::job!`].
    pub fn run_job<S, F>(run: F) -> RunResult
    where
        S: serde::Serialize + serde::de::DeserializeOwned + Default,
        F: FnOnce(&mut crate::Ctx<S>) -> anyhow::Result<crate::Outcome>,
    {
        let mut ctx = crate::Ctx::load().map_err(|error| format!("{error:#}"))?;
        match run(&mut ctx) {
            Ok(crate::Outcome::Completed) => Ok(WitOutcome::Completed),
            Ok(crate::Outcome::Suspended) => Ok(WitOutcome::Suspended),
            Err(error) => Err(format!("{error:#}")),
        }
    }
}

use __private::runner::job::{checkpoint, lifecycle, progress};
use __private::wasi::clocks::monotonic_clock;

/// Exports `run` (a function `fn(&mut Ctx<S>) -> guest_sdk::Result<Outcome>`) as the
/// job's entry point.
#[macro_export]
macro_rules! job {
    ($run:path) => {
        const _: () = {
            struct Job;
            impl $crate::__private::Guest for Job {
                fn run() -> $crate::__private::RunResult {
                    $crate::__private::run_job($run)
                }
            }
            $crate::__private::export! { Job with_types_in $crate::__private }
        };
    };
}

/// How a job's run ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All the work is done.
    Completed,
    /// Stopped early with the state saved; the next run resumes from it.
    Suspended,
}

/// Why the runner asked the job to stop.
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

/// True once the runner has asked the job to stop. Cheap: call it as often as you like.
pub fn shutdown_requested() -> bool {
    lifecycle::shutdown_requested()
}

/// Why the runner asked the job to stop, once it has.
pub fn stop_reason() -> Option<StopReason> {
    lifecycle::shutdown_reason().map(|reason| match reason {
        lifecycle::StopReason::Terminate => StopReason::Terminate,
        lifecycle::StopReason::Interrupt => StopReason::Interrupt,
        lifecycle::StopReason::Hangup => StopReason::Hangup,
        lifecycle::StopReason::Timeout => StopReason::Timeout,
        lifecycle::StopReason::Fenced => StopReason::Fenced,
    })
}

/// How long the job has before the runner stops it by force, once a stop was requested.
pub fn time_left() -> Option<Duration> {
    let deadline = lifecycle::deadline()?;
    Some(Duration::from_nanos(
        deadline.saturating_sub(monotonic_clock::now()),
    ))
}

/// Blocks until the runner asks the job to stop.
pub fn wait_for_shutdown() {
    lifecycle::subscribe_shutdown().block();
}

/// Sleeps for `duration`, or less if a stop is requested meanwhile. Returns true if it
/// slept the whole time.
pub fn sleep(duration: Duration) -> bool {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let timer = monotonic_clock::subscribe_duration(nanos);
    let stop = lifecycle::subscribe_shutdown();
    __private::wasi::io::poll::poll(&[&timer, &stop]);
    !shutdown_requested()
}

/// Ends the job at once with exit code `code`, which the runner exits with.
///
/// Rust's `std::process::exit` reports only success or failure (exit 0 or 1) through
/// WASI 0.2; this passes the whole code (`wasi:cli/exit.exit-with-code`).
pub fn exit(code: u8) -> ! {
    __private::wasi::cli::exit::exit_with_code(code);
    unreachable!("wasi:cli/exit.exit-with-code returned")
}

/// Reports progress: `done` units out of `total`, if known. The runner shows it.
pub fn report_progress(done: u64, total: Option<u64>) {
    progress::report(done, total);
}

/// Why a checkpoint was not saved. The state saved before is still the current one.
#[derive(Debug)]
pub enum CheckpointError {
    /// The encoded state is larger than the runner accepts (the limit, in bytes).
    TooLarge(u64),
    /// Another runner now owns this job; this one must stop without further work.
    Fenced,
    /// The runner could not store the state; the message says why.
    Io(String),
    /// The state could not be encoded (or a saved one decoded) as JSON.
    Encoding(serde_json::Error),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::TooLarge(limit) => {
                write!(
                    f,
                    "checkpoint too large: the runner accepts at most {limit} bytes"
                )
            }
            CheckpointError::Fenced => {
                f.write_str("checkpoint refused: another runner now owns this job")
            }
            CheckpointError::Io(message) => write!(f, "checkpoint not saved: {message}"),
            CheckpointError::Encoding(error) => write!(f, "checkpoint state as JSON: {error}"),
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Encoding(error) => Some(error),
            _ => None,
        }
    }
}

/// Saves raw bytes as the job's state. Prefer [`Ctx`], which keeps typed state.
pub fn save_bytes(state: &[u8]) -> Result<(), CheckpointError> {
    checkpoint::save(state).map_err(|error| match error {
        checkpoint::Error::TooLarge(limit) => CheckpointError::TooLarge(limit),
        checkpoint::Error::Fenced => CheckpointError::Fenced,
        checkpoint::Error::Io(message) => CheckpointError::Io(message),
    })
}

/// The raw bytes last saved for this job, if any. Prefer [`Ctx`].
pub fn load_bytes() -> Option<Vec<u8>> {
    checkpoint::load()
}

/// A running job: its typed state, saved as JSON at each checkpoint.
#[derive(Debug)]
pub struct Ctx<S> {
    /// The job's state: loaded from the last checkpoint, or `Default` on a first run.
    pub state: S,
    resumed: bool,
    last_save: Instant,
}

impl<S> Ctx<S>
where
    S: serde::Serialize + serde::de::DeserializeOwned + Default,
{
    fn load() -> Result<Self> {
        let (state, resumed) = match load_bytes() {
            Some(bytes) => (
                serde_json::from_slice(&bytes)
                    .map_err(CheckpointError::Encoding)
                    .map_err(|error| {
                        Error::new(error)
                            .context("the saved state does not fit this job's state type")
                    })?,
                true,
            ),
            None => (S::default(), false),
        };
        Ok(Ctx {
            state,
            resumed,
            last_save: Instant::now(),
        })
    }

    /// True if the state came from a checkpoint of an earlier run.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// True once the runner has asked the job to stop: save and return soon.
    pub fn should_stop(&self) -> bool {
        shutdown_requested()
    }

    /// Saves the state now. When it returns `Ok` the state is durable.
    pub fn checkpoint(&mut self) -> Result<(), CheckpointError> {
        let bytes = serde_json::to_vec(&self.state).map_err(CheckpointError::Encoding)?;
        save_bytes(&bytes)?;
        self.last_save = Instant::now();
        Ok(())
    }

    /// Saves the state if `interval` has passed since the last save (or since the job
    /// started). Returns whether it saved.
    pub fn checkpoint_every(&mut self, interval: Duration) -> Result<bool, CheckpointError> {
        if self.last_save.elapsed() < interval {
            return Ok(false);
        }
        self.checkpoint()?;
        Ok(true)
    }

    /// Saves the state and returns [`Outcome::Suspended`], for `return ctx.suspend();`.
    pub fn suspend(&mut self) -> Result<Outcome> {
        self.checkpoint()?;
        Ok(Outcome::Suspended)
    }

    /// Reports progress: `done` units out of `total`, if known.
    pub fn progress(&self, done: u64, total: Option<u64>) {
        report_progress(done, total);
    }
}
