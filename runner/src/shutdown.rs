//! The shared shutdown state: whether the job was asked to stop, why, by when, and
//! whether it is being stopped by force.
//!
//! Everything that can stop a job goes through [`Shutdown`]: the signal task, the
//! `--timeout` timer and the grace deadline. The job sees the state through the
//! `lifecycle` host interface; the runner's main future waits on [`Shutdown::forced`] to
//! drop the job's `run` call (cancelling a job blocked in a host call), and
//! [`Shutdown::force`] bumps the engine's epoch so that a job that is computing traps at
//! its next epoch check.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wasmtime::Engine;

/// Why the runner is stopping the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM.
    Terminate,
    /// SIGINT.
    Interrupt,
    /// SIGHUP.
    Hangup,
    /// The runner's `--timeout` ran out.
    Timeout,
}

impl StopReason {
    /// The signal's name, or `--timeout`.
    pub fn cause(self) -> &'static str {
        match self {
            StopReason::Terminate => "SIGTERM",
            StopReason::Interrupt => "SIGINT",
            StopReason::Hangup => "SIGHUP",
            StopReason::Timeout => "--timeout",
        }
    }
}

/// A request to stop the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// What asked for the stop.
    pub reason: StopReason,
    /// When the job is stopped by force if it has not returned by then.
    pub deadline: Instant,
    /// Set once the job is being stopped by force, with what forced it.
    pub forced: Option<StopReason>,
}

/// What a call to [`Shutdown::request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// This was the first request; the job has until the deadline.
    First,
    /// A stop was already requested: this one forced it.
    Forced,
    /// The job is already being stopped by force; nothing changed.
    AlreadyForced,
}

/// The shutdown state of one run. Cheap to share: hold it in an `Arc`.
pub struct Shutdown {
    grace: Duration,
    state: watch::Sender<Option<Request>>,
    /// The engine whose epoch a forced stop bumps, once the job's engine exists.
    engine: Mutex<Option<Engine>>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("grace", &self.grace)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Shutdown {
    /// A run in which the job gets `grace` between a stop request and a forced stop.
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Shutdown {
            grace,
            state: watch::Sender::new(None),
            engine: Mutex::new(None),
        })
    }

    /// The grace period a request gives the job.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The current request, if the job was asked to stop.
    pub fn current(&self) -> Option<Request> {
        *self.state.borrow()
    }

    /// A receiver that sees every change of the request.
    pub fn subscribe(&self) -> watch::Receiver<Option<Request>> {
        self.state.subscribe()
    }

    /// Asks the job to stop for `reason`. The first request starts the grace period and
    /// the thread that forces the stop at its end; a second one forces the stop now.
    pub fn request(self: &Arc<Self>, reason: StopReason) -> Requested {
        let mut outcome = Requested::AlreadyForced;
        // The line is printed inside the transition, before the waiters are woken: the
        // main thread may exit as soon as it sees a forced stop.
        self.state.send_if_modified(|state| match state {
            None => {
                eprintln!(
                    "runner: {}: asking the job to stop; it has {} before it is stopped by \
                     force (a second signal stops it now)",
                    match reason {
                        StopReason::Timeout => "--timeout ran out".to_owned(),
                        signal => format!("received {}", signal.cause()),
                    },
                    crate::cli::format_duration(self.grace)
                );
                *state = Some(Request {
                    reason,
                    deadline: Instant::now() + self.grace,
                    forced: None,
                });
                outcome = Requested::First;
                true
            }
            Some(request) if request.forced.is_none() => {
                eprintln!(
                    "runner: received {} while stopping: stopping the job by force",
                    reason.cause()
                );
                request.forced = Some(reason);
                outcome = Requested::Forced;
                true
            }
            Some(_) => false,
        });
        match outcome {
            Requested::First => self.start_deadline_thread(),
            Requested::Forced => self.bump_epoch(),
            Requested::AlreadyForced => {}
        }
        outcome
    }

    /// Forces the stop because the grace period ran out, unless it already was.
    fn force_at_deadline(&self) {
        let forced = self.state.send_if_modified(|state| match state {
            Some(request) if request.forced.is_none() => {
                eprintln!(
                    "runner: the grace period of {} ran out: stopping the job by force",
                    crate::cli::format_duration(self.grace)
                );
                request.forced = Some(request.reason);
                true
            }
            _ => false,
        });
        if forced {
            self.bump_epoch();
        }
    }

    /// Registers the engine that runs the job, so that a forced stop interrupts it.
    ///
    /// A stop forced before this call is not seen by the engine: check
    /// [`Shutdown::current`] after creating the store and before running the job.
    pub fn attach_engine(&self, engine: &Engine) {
        *self.engine.lock().unwrap_or_else(PoisonError::into_inner) = Some(engine.clone());
    }

    fn bump_epoch(&self) {
        if let Some(engine) = &*self.engine.lock().unwrap_or_else(PoisonError::into_inner) {
            // The store's epoch deadline is one tick past the epoch it was created at,
            // so one bump makes the job trap at its next epoch check.
            engine.increment_epoch();
        }
    }

    /// The deadline is kept by a plain OS thread rather than a tokio timer: a job
    /// spinning on a runtime thread must not be able to delay its own forced stop.
    fn start_deadline_thread(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("runner-deadline".into())
            .spawn(move || {
                let Some(request) = this.current() else {
                    return;
                };
                std::thread::sleep(request.deadline.saturating_duration_since(Instant::now()));
                this.force_at_deadline();
            });
        if let Err(error) = spawned {
            // Without the thread nothing would enforce the deadline: force now instead
            // of leaving the job unbounded.
            eprintln!(
                "runner: cannot start the deadline thread ({error}): stopping the job by force"
            );
            self.force_at_deadline();
        }
    }

    /// Resolves once the stop is forced, with the reason that forced it.
    pub async fn forced(&self) -> StopReason {
        let mut receiver = self.subscribe();
        let state = receiver
            .wait_for(|state| state.is_some_and(|request| request.forced.is_some()))
            .await;
        match state.ok().and_then(|state| *state) {
            Some(Request {
                forced: Some(reason),
                ..
            }) => reason,
            // The sender lives in `self`, so the channel cannot close while we wait.
            _ => unreachable!("shutdown state closed while borrowed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_starts_grace_second_forces() {
        let shutdown = Shutdown::new(Duration::from_secs(60));
        assert_eq!(shutdown.current(), None);
        assert_eq!(shutdown.request(StopReason::Terminate), Requested::First);
        let request = shutdown.current().expect("requested");
        assert_eq!(request.reason, StopReason::Terminate);
        assert_eq!(request.forced, None);
        assert!(request.deadline > Instant::now() + Duration::from_secs(50));
        assert_eq!(shutdown.request(StopReason::Interrupt), Requested::Forced);
        assert_eq!(
            shutdown.current().and_then(|r| r.forced),
            Some(StopReason::Interrupt)
        );
        assert_eq!(
            shutdown.request(StopReason::Terminate),
            Requested::AlreadyForced
        );
    }

    #[test]
    fn deadline_forces_with_the_requesting_reason() {
        let shutdown = Shutdown::new(Duration::ZERO);
        shutdown.request(StopReason::Timeout);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let reason = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), shutdown.forced())
                .await
                .expect("forced within 30s")
        });
        assert_eq!(reason, StopReason::Timeout);
    }
}
