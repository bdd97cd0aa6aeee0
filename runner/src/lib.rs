//! `runner`: runs a batch job compiled to a WebAssembly component and stops it cleanly.
//!
//! [`run`] is the whole run: it opens the job's checkpoint store, compiles and links the
//! job, runs it under the shutdown state that signals and `--timeout` drive, and says
//! how it ended as an [`Outcome`].

// Stdout belongs to the job: everything the runner says goes to stderr.
#![warn(clippy::print_stdout)]

/// Prints one line on stderr, prefixed `runner: `, ignoring errors: a broken stderr (a
/// terminal that hung up) must not panic the signal task or the deadline thread.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

pub mod checkpoint;
pub mod cli;
pub mod engine;
pub mod host;
pub mod outcome;
pub mod shutdown;
pub mod signals;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use wasmtime::{Trap, WasmBacktrace};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder};

use crate::checkpoint::Store as _;
use crate::checkpoint::fs::LocalStore;
use crate::cli::RunConfig;
use crate::host::{JobOutcome, JobState, RunnerClock};
pub use crate::outcome::Outcome;
use crate::shutdown::{Shutdown, StopReason};

/// Writes `runner: ` and `message` as one line on stderr; see `say!`.
pub fn print_line(message: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "runner: {message}");
}

/// Runs the job `config` describes, stopped through `shutdown`.
pub async fn run(config: RunConfig, shutdown: Arc<Shutdown>) -> Outcome {
    execute(config, shutdown)
        .await
        .unwrap_or_else(Outcome::Failed)
}

async fn execute(config: RunConfig, shutdown: Arc<Shutdown>) -> Result<Outcome> {
    // The state directory first: it is the cheapest check and the one most often wrong.
    let store = LocalStore::open(&config.state_dir, &config.job_id)
        .with_context(|| format!("unusable state directory for job `{}`", config.job_id))?;
    let committed = store.load()?;
    let clock_zero = Instant::now();
    let wasi = wasi_context(&config, clock_zero)?;

    let engine = engine::new_engine()?;
    shutdown.attach_engine(&engine);
    // Compiling a large component takes seconds: do it off the runtime, and give up on
    // it if the stop is forced meanwhile (a second Ctrl-C must not wait for cranelift).
    let compile = tokio::task::spawn_blocking({
        let (engine, path) = (engine.clone(), config.job.clone());
        move || engine::load_job(&engine, &path)
    });
    let job = tokio::select! {
        compiled = compile => compiled.context("compiling the job panicked")??,
        reason = shutdown.forced() => return Ok(Outcome::Forced(reason)),
    };

    if let Some(record) = &committed {
        say!(
            "resuming job `{}` from checkpoint {} in `{}`",
            config.job_id,
            record.sequence,
            store.dir().display()
        );
    }
    let mut store = wasmtime::Store::new(
        &engine,
        JobState::new(
            wasi,
            clock_zero,
            shutdown.clone(),
            Arc::new(store),
            committed,
        ),
    );
    // One tick past the current epoch: the single bump of a forced stop traps the job.
    store.set_epoch_deadline(1);
    store.epoch_deadline_trap();
    // A stop forced before the store existed did not reach its epoch deadline.
    if let Some(reason) = shutdown.current().and_then(|request| request.forced) {
        return Ok(Outcome::Forced(reason));
    }
    if let Some(timeout) = config.timeout {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            shutdown.request(StopReason::Timeout);
        });
    }

    let ended = tokio::select! {
        biased;
        result = call_run(&job, &mut store) => Ended::Returned(result),
        // Dropping the `run` future cancels whatever host call the job is blocked in; a
        // job that is computing was already trapped by the epoch bump.
        reason = shutdown.forced() => Ended::Forced(reason),
    };
    let outcome = match ended {
        Ended::Forced(reason) => Outcome::Forced(reason),
        Ended::Returned(Ok(Ok(JobOutcome::Completed))) => Outcome::Completed,
        Ended::Returned(Ok(Ok(JobOutcome::Suspended))) => Outcome::Suspended,
        Ended::Returned(Ok(Err(message))) => Outcome::JobFailed(message),
        Ended::Returned(Err(error)) => classify_error(error, &shutdown),
    };
    if !matches!(outcome, Outcome::Completed | Outcome::Exited(0))
        && let Some(progress) = store.data().progress()
    {
        say!("the job's last progress report: {progress}");
    }
    Ok(outcome)
}

enum Ended {
    Returned(wasmtime::Result<Result<JobOutcome, String>>),
    Forced(StopReason),
}

async fn call_run(
    job: &host::JobPre<JobState>,
    store: &mut wasmtime::Store<JobState>,
) -> wasmtime::Result<Result<JobOutcome, String>> {
    let instance = job.instantiate_async(&mut *store).await?;
    instance.call_run(&mut *store).await
}

/// An error out of the job: an exit, the trap of a forced stop, or a trap.
fn classify_error(error: wasmtime::Error, shutdown: &Shutdown) -> Outcome {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Outcome::Exited(exit.0);
    }
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>()
        && let Some(reason) = shutdown.current().and_then(|request| request.forced)
    {
        return Outcome::Forced(reason);
    }
    // Not through anyhow: that would capture a host backtrace (slow with RUST_BACKTRACE
    // set) that says nothing about the job. The wasm backtrace does.
    let mut message = error.root_cause().to_string();
    if let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() {
        message = format!("{message}\n{backtrace}");
    }
    Outcome::Trapped(message)
}

fn wasi_context(config: &RunConfig, clock_zero: Instant) -> Result<WasiCtx> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stdio()
        .args(&config.args)
        .envs(&config.env)
        .monotonic_clock(RunnerClock::new(clock_zero));
    for dir in &config.dirs {
        wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadWrite)
            .map_err(|error| anyhow!(error))
            .with_context(|| format!("cannot open --dir `{}`", dir.host.display()))?;
    }
    Ok(wasi.build())
}
