//! One run of a job, as its phases: open the job's state, start compiling the job, take
//! the job, build its instance, supervise it until it ends or is stopped, release the
//! job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use wasmtime::{Engine, Trap, WasmBacktrace};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::artifact::Cache;
use crate::checkpoint::output::OutputDir;
use crate::checkpoint::{self, Acquire, Acquired, Place, Record, Store};
use crate::cli::RunConfig;
use crate::engine::{self, Entry, LoadedJob};
use crate::host::{self, JobState, Saves};
use crate::human::{format_duration, hex, unix_ms, whole_ms};
use crate::log::Activity;
use crate::memory::Limiter;
use crate::net::AllowList;
use crate::outcome::{Outcome, StopReason};
use crate::shutdown::Shutdown;
use crate::summary::RunStatus;

/// How long a compile goes on before the run says that it is compiling.
const SLOW_COMPILE: Duration = Duration::from_secs(1);

/// Runs the job `config` describes, stopped through `shutdown`, keeping what the summary
/// needs in `status`.
pub async fn run(config: RunConfig, shutdown: Arc<Shutdown>, status: Arc<RunStatus>) -> Outcome {
    let run = Run {
        config,
        shutdown,
        status,
    };
    run.execute().await.unwrap_or_else(|error| {
        if checkpoint::may_pass(&error) {
            Outcome::Unavailable(error)
        } else {
            Outcome::Failed(error)
        }
    })
}

/// A run: what it was asked, how it is stopped, and what it tells the summary.
struct Run {
    config: RunConfig,
    shutdown: Arc<Shutdown>,
    status: Arc<RunStatus>,
}

/// The job, owned by this run.
struct Owned {
    /// Where its checkpoints go.
    store: Arc<dyn Store>,
    /// Its newest usable record, if it has one.
    record: Option<Record>,
    /// Its output directory, put back as that record left it.
    output: Option<OutputDir>,
}

impl Run {
    async fn execute(self) -> Result<Outcome> {
        let (place, output) = self.open_state()?;
        let clock_zero = Instant::now();
        let config = &self.config;
        let wasi = host::wasi_context(
            &config.args,
            &config.env,
            config.dirs.iter().chain(&config.output),
            &config.allow_net,
            clock_zero,
        )?;
        let engine = engine::for_run(&self.shutdown)?;
        let compile = self.start_compile(&engine);
        let owned = match self.take_job(&*place, output).await? {
            Ok(owned) => owned,
            Err(outcome) => return Ok(outcome),
        };
        let store = Arc::clone(&owned.store);
        if let Some(record) = owned.record.as_ref().filter(|record| record.completed) {
            self.status.checkpointed(record.sequence);
            let done = Outcome::AlreadyCompleted(format!(
                "job `{}` completed at {} (checkpoint {} in `{}`, module sha256 {}): not \
                 running it again; --start-over runs it anew",
                self.config.job_id,
                unix_ms(record.written_at_ms),
                record.sequence,
                store.shown(),
                hex(&record.module_digest[..8])
            ));
            return release(&*store, Ok(done)).await;
        }
        let outcome = async {
            // The compile goes on in its thread, and ends with the process. One that has
            // ended counts first: a job file that does not load is an error, stop or not.
            let job = if compile.is_finished() {
                compile.await.context("compiling the job panicked")?
            } else {
                tokio::select! {
                    biased;
                    reason = self.shutdown.forced() => return Ok(Outcome::Forced(reason)),
                    () = self.shutdown.requested() => {
                        say!("not starting the job: the stop came while it compiled");
                        return Ok(Outcome::NotStarted);
                    }
                    compiled = compile => compiled.context("compiling the job panicked")?,
                }
            };
            let job = match job {
                Ok(job) => job,
                Err(error) => {
                    let store = Arc::clone(&store);
                    tokio::task::spawn_blocking(move || store.discard_if_first()).await?;
                    return Err(error);
                }
            };
            let mut instance = self.build_instance(&engine, &job, owned, wasi, clock_zero)?;
            // A stop forced before the store existed did not reach its epoch deadline.
            if let Some(reason) = self.forced() {
                return Ok(Outcome::Forced(reason));
            }
            self.shutdown.start_timeout(config.timeout);
            Ok(self.supervise(&job.entry, &mut instance).await)
        }
        .await;
        release(&*store, outcome).await
    }

    /// The job's place in its state location, ready for a run (an unusable location is
    /// an error before anything is compiled), and its output directory; after a look at
    /// the job file's first bytes.
    fn open_state(&self) -> Result<(Box<dyn Place>, Option<OutputDir>)> {
        // A job file that cannot be a job leaves no state behind.
        engine::check_job_file(&self.config.job)?;
        let place = self.config.state.job(&self.config.job_id)?;
        place.prepare()?;
        let output = self
            .config
            .output
            .as_ref()
            .map(|output| OutputDir::open(&output.host))
            .transpose()?;
        Ok((place, output))
    }

    /// Compiles the job (a large component takes seconds) off the runtime, while the run
    /// takes the job over; a compile that takes longer than [`SLOW_COMPILE`] says so.
    fn start_compile(&self, engine: &Engine) -> JoinHandle<Result<LoadedJob>> {
        let (engine, path) = (engine.clone(), self.config.job.clone());
        let max = self.config.cache_max;
        let cache = self
            .config
            .cache_dir
            .clone()
            .map(|dir| Cache::new(dir, max));
        let why = match &cache {
            Some(_) => "the first run of this job; later runs load it from the cache",
            None => "with --no-cache, every run compiles it",
        };
        let message = format!("compiling `{}` ({why})", path.display());
        let mut compiling =
            tokio::task::spawn_blocking(move || engine::load_job(&engine, &path, cache.as_ref()));
        tokio::spawn(async move {
            let started = Instant::now();
            let compiled = match tokio::time::timeout(SLOW_COMPILE, &mut compiling).await {
                Ok(compiled) => compiled,
                Err(_) => {
                    let activity = Activity::start(message, started.elapsed());
                    let compiled = compiling.await;
                    drop(activity);
                    if let Ok(Ok(_)) = compiled {
                        say!(
                            "compiled in {}",
                            format_duration(whole_ms(started.elapsed()))
                        );
                    }
                    compiled
                }
            };
            compiled.context("compiling the job panicked")?
        })
    }

    /// Takes the job, or says why the run does not get it (another owner kept it, or the
    /// stop came first).
    async fn take_job(
        &self,
        place: &dyn Place,
        output: Option<OutputDir>,
    ) -> Result<Result<Owned, Outcome>> {
        let shutdown = Arc::clone(&self.shutdown);
        let request = Acquire {
            lock_timeout: self.config.lock_timeout,
            lease: self.config.lease,
            start_over: self.config.start_over,
            output: output.as_ref(),
            stop: Box::pin(self.shutdown.requested()),
            on_lost: Box::new(move || shutdown.revoke()),
        };
        Ok(match place.acquire(request).await? {
            Acquired::Owned(store, record) => Ok(Owned {
                store,
                record,
                output,
            }),
            Acquired::Busy(message) => Err(Outcome::Locked(message)),
            Acquired::Stopped => Err(Outcome::NotStarted),
        })
    }

    /// The job's store, with the state its host calls see, armed for a forced stop;
    /// says which checkpoint the job resumes from.
    fn build_instance(
        &self,
        engine: &Engine,
        job: &LoadedJob,
        owned: Owned,
        wasi: (WasiP1Ctx, Arc<AllowList>),
        clock_zero: Instant,
    ) -> Result<wasmtime::Store<JobState>> {
        if let Some(record) = &owned.record {
            self.status.checkpointed(record.sequence);
            say!(
                "resuming job `{}` from checkpoint {} in `{}`",
                self.config.job_id,
                record.sequence,
                owned.store.shown()
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
        let saves = Saves {
            store: owned.store,
            output: owned.output,
            module_digest: job.digest,
            committed: owned.record,
        };
        let state = JobState::new(
            wasi,
            clock_zero,
            Arc::clone(&self.shutdown),
            Arc::clone(&self.status),
            saves,
            Limiter::new(self.config.max_memory.clone()),
        )?;
        Ok(engine::new_store(engine, state))
    }

    /// Runs the job until it ends, or until the stop is forced.
    async fn supervise(&self, entry: &Entry, instance: &mut wasmtime::Store<JobState>) -> Outcome {
        self.status.started_job();
        let ended = tokio::select! {
            biased;
            result = entry.call(instance) => Ok(result),
            // Dropping the call's future cancels whatever host call the job is blocked in;
            // a job that is computing was already trapped by the epoch bump.
            reason = self.shutdown.forced() => Err(reason),
        };
        let outcome = match ended {
            // Whatever the job did after losing the job, only the new owner's state counts.
            _ if self.forced() == Some(StopReason::Fenced) => Outcome::Forced(StopReason::Fenced),
            Err(reason) => Outcome::Forced(reason),
            Ok(Ok(Outcome::JobFailed(message))) => Outcome::JobFailed(self.explain(&message)),
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => self.classify_error(error),
        };
        // A job that failed after its memory limit refused it: the limit is the likely
        // cause, and what to raise goes first (a trap's backtrace follows).
        let outcome = match (outcome, instance.data().memory_refusal()) {
            (Outcome::Trapped(message), Some(refusal)) => {
                Outcome::Trapped(format!("{refusal}\n{message}"))
            }
            (Outcome::JobFailed(message), Some(refusal)) => {
                Outcome::JobFailed(format!("{refusal}\n{message}"))
            }
            (outcome @ Outcome::Exited(code), Some(refusal)) if code != 0 => {
                say!("{refusal}");
                outcome
            }
            (outcome, _) => outcome,
        };
        if !matches!(outcome, Outcome::Completed | Outcome::Exited(0)) {
            if let Some(progress) = instance.data().progress() {
                say!("the job's last progress report: {progress}");
            }
        } else if let Some(progress) = instance.data().unshown_progress() {
            say!("progress {progress}");
        }
        outcome
    }

    /// The job's error message, for people who run it: WASI's error numbers (`os error
    /// 44`, `[Errno 44]`), which are not the host's, left out; and, for a file that is
    /// missing or refused, which host directories the job sees at all.
    fn explain(&self, message: &str) -> String {
        let mut message = without_errno(message, " (os error ", ")");
        message = without_errno(&message, "[Errno ", "] ");
        if !["No such file or directory", "Permission denied"]
            .iter()
            .any(|cause| message.contains(cause))
        {
            return message;
        }
        let seen: Vec<String> = self
            .config
            .dirs
            .iter()
            .chain(&self.config.output)
            .map(|dir| format!("`{}` (host `{}`)", dir.guest, dir.host.display()))
            .collect();
        if message.contains("Permission denied") && self.config.allow_net.is_empty() {
            message.push_str("\n(the job has no network either: --allow-net grants it)");
        }
        if seen.is_empty() {
            message.push_str(
                "\n(the job sees no host directory: give it one with --dir HOST[::GUEST])",
            );
        } else {
            message.push_str(&format!(
                "\n(the job sees only the directories given with --dir and --output: {}; \
                 nothing else of the host's file system exists for it)",
                seen.join(", ")
            ));
        }
        message
    }

    /// What forced the stop, if it is forced.
    fn forced(&self) -> Option<StopReason> {
        self.shutdown.current().and_then(|request| request.forced)
    }

    /// An error out of the job: an exit, the trap of a forced stop, or a trap.
    fn classify_error(&self, error: wasmtime::Error) -> Outcome {
        if let Some(exit) = error.downcast_ref::<I32Exit>() {
            return Outcome::Exited(exit.0);
        }
        if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>()
            && let Some(reason) = self.forced()
        {
            return Outcome::Forced(reason);
        }
        // Not through anyhow: that would capture a host backtrace (slow with
        // RUST_BACKTRACE set) that says nothing about the job. The wasm backtrace does.
        let mut message = error.root_cause().to_string();
        if let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() {
            message = format!("{message}\n{backtrace}");
        }
        Outcome::Trapped(message)
    }
}

/// `message` without each `start` NUMBER `end` in it.
fn without_errno(message: &str, start: &str, end: &str) -> String {
    let mut kept = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(start) {
        let after = &rest[at + start.len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 && after[digits..].starts_with(end) {
            kept.push_str(&rest[..at]);
            rest = &after[digits + end.len()..];
        } else {
            kept.push_str(&rest[..at + start.len()]);
            rest = after;
        }
    }
    kept.push_str(rest);
    kept
}

/// Gives the job up once the run is over (within the store's bound). A run whose job
/// was taken over after its last save is not done: only the new owner's state counts.
async fn release(store: &dyn Store, outcome: Result<Outcome>) -> Result<Outcome> {
    let forced = matches!(outcome, Ok(Outcome::Forced(_)));
    let lost = store.release(forced).await;
    if lost
        && matches!(
            outcome,
            Ok(Outcome::Completed | Outcome::Suspended | Outcome::Exited(0))
        )
    {
        tracing::warn!("another runner has taken this job over before this run ended");
        return Ok(Outcome::Forced(StopReason::Fenced));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::without_errno;

    #[test]
    fn wasi_error_numbers_are_left_out() {
        assert_eq!(
            without_errno(
                "cannot read /x: No such file or directory (os error 44)",
                " (os error ",
                ")"
            ),
            "cannot read /x: No such file or directory"
        );
        assert_eq!(
            without_errno(
                "FileNotFoundError: [Errno 44] No such file: '/x'",
                "[Errno ",
                "] "
            ),
            "FileNotFoundError: No such file: '/x'"
        );
        assert_eq!(
            without_errno("keep (os error x) and (os error 2", " (os error ", ")"),
            "keep (os error x) and (os error 2"
        );
    }
}
