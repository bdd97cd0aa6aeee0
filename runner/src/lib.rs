//! `runner`: runs a batch job compiled to a WebAssembly component and stops it cleanly.
//!
//! [`run`] is the whole run: it opens the job's checkpoint store, compiles and links the
//! job, runs it under the shutdown state that signals and `--timeout` drive, and says
//! how it ended as an [`Outcome`].

// Stdout belongs to the job: everything the runner says goes to stderr.
#![warn(clippy::print_stdout)]

/// Logs one line: `runner: ...` on stderr, or a JSON object (see [`log`]).
macro_rules! say {
    ($($arg:tt)*) => {
        ::tracing::info!($($arg)*)
    };
}

pub mod artifact;
pub mod checkpoint;
pub mod cli;
pub mod engine;
pub mod host;
pub mod log;
pub mod outcome;
pub mod shutdown;
pub mod signals;
pub mod state;
pub mod summary;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::{Trap, WasmBacktrace};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder};

use crate::checkpoint::fs::{Claim, JobDir, Lock};
use crate::checkpoint::output::OutputDir;
use crate::checkpoint::s3::{Acquire, Acquired, S3Job, S3Store};
use crate::checkpoint::{Loaded, Store};
use crate::cli::{RunConfig, StateLocation};
use crate::host::{JobOutcome, JobState, RunnerClock, Saves};
pub use crate::outcome::Outcome;
use crate::shutdown::{Shutdown, StopReason};
use crate::summary::RunStatus;

/// Runs the job `config` describes, stopped through `shutdown`, keeping what the summary
/// needs in `status`.
pub async fn run(config: RunConfig, shutdown: Arc<Shutdown>, status: Arc<RunStatus>) -> Outcome {
    execute(config, shutdown, status)
        .await
        .unwrap_or_else(Outcome::Failed)
}

async fn execute(
    config: RunConfig,
    shutdown: Arc<Shutdown>,
    status: Arc<RunStatus>,
) -> Result<Outcome> {
    // The state location first: it is the cheapest check and the one most often wrong.
    let place = match &config.state {
        StateLocation::Dir(dir) => {
            let job_dir = JobDir::new(dir, &config.job_id);
            job_dir
                .create()
                .with_context(|| format!("unusable state directory for job `{}`", config.job_id))?;
            Place::Local(job_dir)
        }
        StateLocation::S3(url) => Place::S3(
            S3Job::new(url, &config.job_id)
                .with_context(|| format!("unusable state location for job `{}`", config.job_id))?,
        ),
    };
    let output = config
        .output
        .as_ref()
        .map(|output| OutputDir::open(&output.host))
        .transpose()?;
    let clock_zero = Instant::now();
    let wasi = wasi_context(&config, clock_zero)?;

    let engine = engine::new_engine()?;
    shutdown.attach_engine(&engine);
    // Compiling a large component takes seconds: do it off the runtime, meanwhile
    // taking the job over, and give up on it if the stop is forced meanwhile (a second
    // Ctrl-C must not wait for cranelift).
    let compile = tokio::task::spawn_blocking({
        let (engine, path) = (engine.clone(), config.job.clone());
        let cache = config.cache_dir.clone().map(artifact::Cache::new);
        move || engine::load_job(&engine, &path, cache.as_ref())
    });
    let opened = match place {
        Place::Local(job_dir) => open_local(job_dir, &config, output.as_ref(), &shutdown).await?,
        Place::S3(job) => open_s3(job, &config, &shutdown).await?,
    };
    let Opened {
        store,
        loaded,
        shown,
        lease,
    } = match opened {
        Ok(opened) => opened,
        Err(outcome) => return Ok(outcome),
    };
    let outcome = async {
        let job = tokio::select! {
            compiled = compile => compiled.context("compiling the job panicked")??,
            reason = shutdown.forced() => return Ok(Outcome::Forced(reason)),
        };

        if let Some(record) = &loaded.record {
            status.checkpointed(record.sequence);
            say!(
                "resuming job `{}` from checkpoint {} in `{shown}`",
                config.job_id,
                record.sequence
            );
            if record.module_digest != job.digest {
                say!(
                    "checkpoint {} was written by another module (sha256 {}); this one is \
                     sha256 {}: loading it anyway, as the job owns its state's format",
                    record.sequence,
                    hex(&record.module_digest[..8]),
                    hex(&job.digest[..8])
                );
            }
        }
        let mut store = wasmtime::Store::new(
            &engine,
            JobState::new(
                wasi,
                clock_zero,
                shutdown.clone(),
                status,
                Saves {
                    store,
                    output,
                    module_digest: job.digest,
                    committed: loaded.record,
                },
            )?,
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
            result = call_run(&job.entry, &mut store) => Ended::Returned(result),
            // Dropping the `run` future cancels whatever host call the job is blocked in;
            // a job that is computing was already trapped by the epoch bump.
            reason = shutdown.forced() => Ended::Forced(reason),
        };
        let revoked = shutdown
            .current()
            .is_some_and(|request| request.forced == Some(StopReason::Fenced));
        let outcome = match ended {
            // Whatever the job did after losing the job, only the new owner's state counts.
            _ if revoked => Outcome::Forced(StopReason::Fenced),
            Ended::Forced(reason) => Outcome::Forced(reason),
            Ended::Returned(Ok(outcome)) => outcome,
            Ended::Returned(Err(error)) => classify_error(error, &shutdown),
        };
        if !matches!(outcome, Outcome::Completed | Outcome::Exited(0))
            && let Some(progress) = store.data().progress()
        {
            say!("the job's last progress report: {progress}");
        }
        Ok::<_, anyhow::Error>(outcome)
    }
    .await;
    if let Some(lease) = lease {
        // Bounded: after a forced stop the runner must still exit well before the
        // orchestrator's SIGKILL; a lease left unreleased only runs out.
        let forced = matches!(outcome, Ok(Outcome::Forced(_)));
        let lost = lease
            .release(if forced {
                RELEASE_TIMEOUT
            } else {
                RELEASE_TIMEOUT * 5
            })
            .await;
        // Taken over after its last save: only the new owner's state counts, and the
        // job is not done.
        if lost
            && matches!(
                outcome,
                Ok(Outcome::Completed | Outcome::Suspended | Outcome::Exited(0))
            )
        {
            tracing::warn!("another runner has taken this job over before this run ended");
            return Ok(Outcome::Forced(StopReason::Fenced));
        }
    }
    outcome
}

/// How long the end of a forced stop waits to release a job kept in a bucket (five times
/// as long after a run that ended otherwise).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the job's state is, before the run owns it.
enum Place {
    Local(JobDir),
    S3(S3Job),
}

/// The job's state, owned by this run.
struct Opened {
    store: Arc<dyn Store>,
    loaded: Loaded,
    /// Where the state is, for people.
    shown: String,
    /// A job kept in a bucket, to release when the run ends.
    lease: Option<Arc<S3Store>>,
}

/// Takes a job kept in a local directory: its lock, its records, its output directory as
/// its last checkpoint left it, and a fencing number.
async fn open_local(
    job_dir: JobDir,
    config: &RunConfig,
    output: Option<&OutputDir>,
    shutdown: &Shutdown,
) -> Result<Result<Opened, Outcome>> {
    let lock = match lock_job(&job_dir, config, shutdown).await? {
        Ok(lock) => lock,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let claim = Claim::new(job_dir, lock, config.start_over)
        .with_context(|| format!("cannot load the state of job `{}`", config.job_id))?;
    for note in &claim.loaded.notes {
        tracing::warn!("{note}");
    }
    // Before taking a fencing number, so that a refused run leaves no trace.
    restore_output(output, &claim.loaded, config)?;
    let (store, loaded) = match output {
        Some(output) => claim.own(Some(output.key()))?,
        None => claim.own_while_starting(),
    };
    Ok(Ok(Opened {
        shown: store.dir().display().to_string(),
        store: Arc::new(store),
        loaded,
        lease: None,
    }))
}

/// Takes a job kept in a bucket: waits for its owner, if it has a live one, then takes
/// it over and loads its records.
async fn open_s3(
    job: S3Job,
    config: &RunConfig,
    shutdown: &Arc<Shutdown>,
) -> Result<Result<Opened, Outcome>> {
    let options = Acquire {
        lease: config.lease,
        lock_timeout: config.lock_timeout,
        start_over: config.start_over,
        holder: format!(
            "pid {} on {}",
            std::process::id(),
            checkpoint::fs::hostname()
        ),
    };
    let on_lost = {
        let shutdown = Arc::clone(shutdown);
        move || shutdown.revoke()
    };
    let acquired = job
        .acquire(&options, shutdown.requested(), on_lost)
        .await
        .with_context(|| format!("cannot load the state of job `{}`", config.job_id))?;
    Ok(match acquired {
        Acquired::Owned(store, loaded) => {
            for note in &loaded.notes {
                tracing::warn!("{note}");
            }
            let store = Arc::new(store);
            Ok(Opened {
                shown: store.url(),
                store: Arc::clone(&store) as Arc<dyn Store>,
                loaded,
                lease: Some(store),
            })
        }
        Acquired::Busy(message) => Err(Outcome::Locked(message)),
        Acquired::Stopped => Err(Outcome::Suspended),
    })
}

/// How often a runner waiting for a job's lock tries again.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// Takes the job's lock, waiting up to `--lock-timeout` for another runner to release
/// it. A stop requested meanwhile ends the wait: the job has not started.
async fn lock_job(
    dir: &JobDir,
    config: &RunConfig,
    shutdown: &Shutdown,
) -> Result<Result<Lock, Outcome>> {
    let start = Instant::now();
    let mut waiting = false;
    loop {
        let holder = match dir.try_lock()? {
            Ok(lock) => {
                if waiting {
                    say!(
                        "took the lock of job `{}` after waiting {}",
                        config.job_id,
                        cli::format_duration(Duration::from_millis(
                            u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
                        ))
                    );
                }
                return Ok(Ok(lock));
            }
            Err(holder) => holder,
        };
        let left = config.lock_timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(Err(Outcome::Locked(format!(
                "job `{}` is owned by {holder}, which still held its lock `{}` after {} \
                 (--lock-timeout)",
                config.job_id,
                dir.file(checkpoint::fs::LOCK).display(),
                cli::format_duration(config.lock_timeout)
            ))));
        }
        if !waiting {
            say!(
                "job `{}` is owned by {holder}: waiting up to {} for it to finish (--lock-timeout)",
                config.job_id,
                cli::format_duration(config.lock_timeout)
            );
            waiting = true;
        }
        tokio::select! {
            () = tokio::time::sleep(LOCK_POLL.min(left)) => {}
            () = shutdown.requested() => {
                say!("not starting the job: the stop came while it waited for its lock");
                return Ok(Err(Outcome::Suspended));
            }
        }
    }
}

/// Puts the output directory back as the job's last checkpoint left it, refusing the run
/// if the directory is not the one the checkpoints track.
fn restore_output(output: Option<&OutputDir>, loaded: &Loaded, config: &RunConfig) -> Result<()> {
    let job_id = &config.job_id;
    let tracked = loaded
        .record
        .as_ref()
        .and_then(|record| record.output_dir.as_deref());
    let Some(output) = output else {
        if let Some(dir) = tracked {
            bail!(
                "job `{job_id}`'s checkpoint tracks the output directory `{dir}`: pass \
                 --output {dir} (or --start-over to start from scratch)"
            );
        }
        return Ok(());
    };
    let shown = output.path().display();
    if let StateLocation::Dir(dir) = &config.state
        && let Ok(state_dir) = dir.canonicalize()
    {
        let key = Path::new(output.key());
        if key.starts_with(&state_dir) || state_dir.starts_with(key) {
            bail!(
                "--output `{shown}` and --state-dir `{}` overlap: the job could overwrite its \
                 own checkpoints",
                dir.display()
            );
        }
    }
    let committed = match &loaded.record {
        Some(record) => match record.output_dir.as_deref() {
            Some(dir) if dir == output.key() => &record.outputs[..],
            Some(dir) => bail!(
                "job `{job_id}`'s checkpoint {} tracks the output directory `{dir}`, not \
                 `{}`: pass --output {dir} (or --start-over to start from scratch)",
                record.sequence,
                output.key()
            ),
            None => bail!(
                "job `{job_id}`'s checkpoint {} was saved without --output: run it without \
                 --output, or pass --start-over to start from scratch with `{shown}`",
                record.sequence
            ),
        },
        // Starting over, or an earlier run of this job with this directory died before
        // its first checkpoint: all it wrote there goes.
        None if config.start_over || loaded.earlier_output.as_deref() == Some(output.key()) => &[],
        None => {
            if output.has_files()? {
                bail!(
                    "--output `{shown}` already holds files, and job `{job_id}` has no \
                     checkpoint that records them: give the job an empty directory (or pass \
                     --start-over to have them removed)"
                );
            }
            return Ok(());
        }
    };
    let restored = output
        .restore(committed)
        .with_context(|| format!("cannot restore --output `{shown}` to the last checkpoint"))?;
    if restored.truncated > 0 || restored.removed > 0 {
        say!(
            "undid what the job wrote to `{shown}` after its last checkpoint: cut {} bytes off \
             {} file(s), removed {} file(s)",
            restored.bytes_dropped,
            restored.truncated,
            restored.removed
        );
    }
    Ok(())
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

enum Ended {
    Returned(wasmtime::Result<Outcome>),
    Forced(StopReason),
}

async fn call_run(
    entry: &engine::Entry,
    store: &mut wasmtime::Store<JobState>,
) -> wasmtime::Result<Outcome> {
    Ok(match entry {
        engine::Entry::Job(pre) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            match instance.call_run(&mut *store).await? {
                Ok(JobOutcome::Completed) => Outcome::Completed,
                Ok(JobOutcome::Suspended) => Outcome::Suspended,
                Err(message) => Outcome::JobFailed(message),
            }
        }
        // As `wasmtime run`: an `Err` from a command exits 1, with nothing to say.
        engine::Entry::Command(pre) => {
            let command = pre.instantiate_async(&mut *store).await?;
            match command.wasi_cli_run().call_run(&mut *store).await? {
                Ok(()) => Outcome::Completed,
                Err(()) => Outcome::Exited(1),
            }
        }
    })
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
    wasi.inherit_stdio();
    // Output to the terminal the progress bar is drawn on goes around the bar.
    if log::bar_allowed() {
        wasi.stderr(log::JobOutput::Stderr);
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            wasi.stdout(log::JobOutput::Stdout);
        }
    }
    wasi.args(&config.args)
        .envs(&config.env)
        .monotonic_clock(RunnerClock::new(clock_zero));
    for dir in config.dirs.iter().chain(&config.output) {
        wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadWrite)
            .map_err(|error| anyhow!(error))
            .with_context(|| format!("cannot open --dir `{}`", dir.host.display()))?;
    }
    Ok(wasi.build())
}
