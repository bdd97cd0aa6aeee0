//! The shared shutdown state: whether the job was asked to stop, why, by when, and
//! whether it is being stopped by force.
//!
//! Everything that can stop a job goes through [`Shutdown`]: the signal task (and, for a
//! signal that has arrived before that task ran, the job's own lifecycle calls: see
//! `signals::catch_up`), the `--timeout` timer and the grace deadline. The job sees the
//! state through the
//! `lifecycle` host interface; the runner's main future waits on [`Shutdown::forced`] to
//! drop the job's `run` call (cancelling a job blocked in an async host call), and a
//! forced stop bumps the engine's epoch so that a job that is computing traps at its
//! next epoch check.
//!
//! The rules: the first request (a signal, from its arrival, or `--timeout`) starts the
//! grace period; a
//! signal after a signal forces the stop at once; `--timeout` never forces a stop that is
//! already under way, and a signal after it is only noted (the next one forces).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wasmtime::Engine;

use crate::human::format_duration;
use crate::outcome::{Outcome, StopReason};

/// How long after a forced stop the runner exits even if the job has not stopped: for a
/// job stuck in a host call that neither the epoch nor cancellation can interrupt (a
/// synchronous write to a full stdout pipe). Short, so that the runner still exits
/// before the orchestrator's SIGKILL.
pub const FORCED_EXIT_AFTER: Duration = Duration::from_secs(2);

/// A request to stop the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// What asked for the stop first.
    pub reason: StopReason,
    /// When the job is stopped by force if it has not returned by then.
    pub deadline: Instant,
    /// Whether a signal has asked (so that the next signal forces the stop).
    pub signalled: bool,
    /// Set once the job is being stopped by force, with what forced it.
    pub forced: Option<StopReason>,
    /// Made from a stop signal's arrival ([`Shutdown::request_on_arrival`]) before the
    /// runtime delivered that signal: its delivery is this same signal, not a second.
    early: bool,
}

/// What a call to [`Shutdown::request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// This was the first request; the job has until the deadline.
    First,
    /// A signal came while a stop asked by `--timeout` was under way: the next forces.
    Noted,
    /// A signal came after a signal: the stop is forced.
    Forced,
    /// Nothing changed: the stop is already forced, or `--timeout` ran out during one.
    Ignored,
}

/// The shutdown state of one run. Cheap to share: hold it in an `Arc`.
pub struct Shutdown {
    grace: Duration,
    state: watch::Sender<Option<Request>>,
    /// The engine whose epoch a forced stop bumps, once the job's engine exists.
    engine: Mutex<Option<Engine>>,
    /// What the watchdog does with the outcome before it exits the process.
    on_stuck_exit: OnceLock<StuckExit>,
    /// The requests made, by reason (in the order of [`StopReason::ALL`]), for the
    /// metrics: every signal, not only the one that counted.
    requests: [AtomicU64; StopReason::ALL.len()],
}

/// See [`Shutdown::on_stuck_exit`].
type StuckExit = Arc<dyn Fn(StopReason, &str) -> u8 + Send + Sync>;

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
            on_stuck_exit: OnceLock::new(),
            requests: Default::default(),
        })
    }

    /// How many requests to stop `reason` made.
    pub fn requests(&self, reason: StopReason) -> u64 {
        self.requests[reason as usize].load(Ordering::Relaxed)
    }

    fn count(&self, reason: StopReason) {
        self.requests[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Has the watchdog, when it exits the process because a job did not stop after a
    /// forced stop, call `report` first with the reason that forced it and the line that
    /// says so; `report` prints and records them and returns the exit code. Only the
    /// first call counts.
    pub fn on_stuck_exit(&self, report: impl Fn(StopReason, &str) -> u8 + Send + Sync + 'static) {
        let _ = self.on_stuck_exit.set(Arc::new(report));
    }

    /// The current request, if the job was asked to stop.
    pub fn current(&self) -> Option<Request> {
        *self.state.borrow()
    }

    /// A receiver that sees every change of the request.
    pub fn subscribe(&self) -> watch::Receiver<Option<Request>> {
        self.state.subscribe()
    }

    /// Asks the job to stop for `reason`, following the rules in the module docs.
    pub fn request(self: &Arc<Self>, reason: StopReason) -> Requested {
        self.request_since(reason, Instant::now())
    }

    /// [`Shutdown::request`] for a request that arrived at `arrived`: a first request's
    /// grace period counts from then.
    pub fn request_since(self: &Arc<Self>, reason: StopReason, arrived: Instant) -> Requested {
        self.count(reason);
        let is_signal = reason != StopReason::Timeout;
        let mut outcome = Requested::Ignored;
        // Lines are printed inside the transition, before the waiters are woken: the
        // main thread may exit as soon as it sees a forced stop.
        self.state.send_if_modified(|state| match state {
            None => {
                *state = Some(self.first_request(reason, arrived, false));
                outcome = Requested::First;
                true
            }
            Some(request) if request.early && is_signal => {
                // The delivery of the signal the request was made from.
                request.early = false;
                false
            }
            Some(request) if request.forced.is_some() || !is_signal => false,
            Some(request) if !request.signalled => {
                say!(
                    "received {}: the job is already stopping (--timeout ran out); it has \
                     until the deadline (a second signal stops it now)",
                    reason.cause()
                );
                request.signalled = true;
                outcome = Requested::Noted;
                // Nothing a waiter acts on has changed.
                false
            }
            Some(request) => {
                tracing::warn!(
                    "received {} while stopping: stopping the job by force",
                    reason.cause()
                );
                request.forced = Some(reason);
                outcome = Requested::Forced;
                true
            }
        });
        match outcome {
            Requested::First => self.start_deadline_thread(),
            Requested::Forced => self.after_forcing(reason),
            Requested::Noted | Requested::Ignored => {}
        }
        outcome
    }

    /// Makes the first request from a stop signal's arrival, as the signal handler noted
    /// it, if no request exists yet: the job sees it at once, not only once the runtime
    /// thread that handles signals gets a CPU, which a computing job can hold for a
    /// scheduler tick. The signal's delivery to [`Shutdown::request_since`] that follows
    /// is matched to this request, not taken for a second signal.
    pub fn request_on_arrival(self: &Arc<Self>, reason: StopReason, arrived: Instant) {
        let made = self.state.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some(self.first_request(reason, arrived, true));
            true
        });
        if made {
            self.start_deadline_thread();
        }
    }

    /// The first request, announced on stderr.
    fn first_request(&self, reason: StopReason, arrived: Instant, early: bool) -> Request {
        say!(
            "{}: asking the job to stop; it has {} before it is stopped by force \
             (a second signal stops it now)",
            match reason {
                StopReason::Timeout => "--timeout ran out".to_owned(),
                signal => format!("received {}", signal.cause()),
            },
            format_duration(self.grace)
        );
        Request {
            reason,
            // A --grace too long for the clock: the deadline is as good as never.
            deadline: arrived
                .checked_add(self.grace)
                .unwrap_or_else(|| arrived + Duration::from_secs(100 * 365 * 24 * 3600)),
            signalled: reason != StopReason::Timeout,
            forced: None,
            early,
        }
    }

    /// Asks the job to stop once it has run for `timeout` (`--timeout`), if given.
    pub fn start_timeout(self: &Arc<Self>, timeout: Option<Duration>) {
        if let Some(timeout) = timeout {
            let shutdown = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                shutdown.request(StopReason::Timeout);
            });
        }
    }

    /// Stops the job at once because another runner owns it now (a save was fenced):
    /// there is nothing left for it to save.
    pub fn revoke(&self) {
        self.stop_now(
            StopReason::Fenced,
            "another runner has taken this job over: stopping the job now",
        );
    }

    /// Stops the job at once, with no grace, for SIGQUIT.
    pub fn quit(&self) {
        self.stop_now(
            StopReason::Quit,
            "received SIGQUIT: stopping the job now, with no grace",
        );
    }

    /// Forces the stop for `reason` now, whatever came before, unless it already is;
    /// says `why` first.
    fn stop_now(&self, reason: StopReason, why: &str) {
        self.count(reason);
        let mut forced = false;
        self.state.send_if_modified(|state| {
            if state.is_some_and(|request| request.forced.is_some()) {
                return false;
            }
            tracing::warn!("{why}");
            let request = state.get_or_insert(Request {
                reason,
                deadline: Instant::now(),
                signalled: false,
                forced: None,
                early: false,
            });
            request.forced = Some(reason);
            forced = true;
            true
        });
        if forced {
            self.after_forcing(reason);
        }
    }

    /// Resolves once a stop has been requested, for any reason.
    pub async fn requested(&self) {
        let mut receiver = self.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(Option::is_some).await;
    }

    /// Forces the stop for `reason` (the request's) because the grace period ran out,
    /// unless it already was.
    ///
    /// The watchdog is armed first: should the line that says so block (a stalled
    /// stderr, which would also hold the state's lock), the watchdog still ends the run.
    /// One armed for a stop forced earlier is harmless: the first to report decides.
    fn force_at_deadline(&self, reason: StopReason) {
        self.arm_watchdog(reason);
        let mut forced = false;
        self.state.send_if_modified(|state| match state {
            Some(request) if request.forced.is_none() => {
                tracing::warn!(
                    "the grace period of {} ran out: stopping the job by force",
                    format_duration(self.grace)
                );
                request.forced = Some(request.reason);
                forced = true;
                true
            }
            _ => false,
        });
        if forced {
            self.interrupt();
        }
    }

    /// Registers the engine that runs the job, so that a forced stop interrupts it.
    ///
    /// A stop forced before this call is not seen by the engine: check
    /// [`Shutdown::current`] after creating the store and before running the job.
    pub fn attach_engine(&self, engine: &Engine) {
        *self.engine.lock().unwrap_or_else(PoisonError::into_inner) = Some(engine.clone());
    }

    /// Interrupts a computing job and starts the watchdog for one that cannot be. Before
    /// an engine is attached there is no job to stop, and the main thread exits by itself.
    fn after_forcing(&self, reason: StopReason) {
        if self.arm_watchdog(reason) {
            self.interrupt();
        }
    }

    /// Bumps the engine's epoch: a computing job traps at its next epoch check (the
    /// store's deadline is one tick past the epoch it was created at).
    fn interrupt(&self) {
        if let Some(engine) = &*self.engine.lock().unwrap_or_else(PoisonError::into_inner) {
            engine.increment_epoch();
        }
    }

    /// Starts the watchdog that exits the process [`FORCED_EXIT_AFTER`] from now, for a
    /// job that does not stop; `false`: no engine is attached, so no job runs (the main
    /// thread exits by itself).
    fn arm_watchdog(&self, reason: StopReason) -> bool {
        if self
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            return false;
        }
        let report = self.on_stuck_exit.get().cloned();
        let watchdog = std::thread::Builder::new()
            .name("runner-watchdog".into())
            .spawn(move || {
                std::thread::sleep(FORCED_EXIT_AFTER);
                exit_stuck(reason, report)
            });
        if let Err(error) = watchdog {
            tracing::error!("cannot start the watchdog thread: {error}");
        }
        true
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
                this.force_at_deadline(request.reason);
            });
        if let Err(error) = spawned {
            // Without the thread nothing would enforce the deadline: force now instead
            // of leaving the job unbounded.
            tracing::error!(
                "cannot start the deadline thread ({error}): stopping the job by force"
            );
            if let Some(request) = self.current() {
                self.force_at_deadline(request.reason);
            }
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

/// Exits the process for a forced stop that the job did not honour in time.
#[expect(
    clippy::exit,
    reason = "the main thread is stuck in the job's host call and cannot return"
)]
fn exit_stuck(reason: StopReason, report: Option<StuckExit>) -> ! {
    let outcome = Outcome::Forced(reason);
    let said = format!(
        "the job did not stop within {} of being stopped by force (it is blocked in a call \
         that cannot be cancelled): exiting {}; its last checkpoint stands",
        format_duration(FORCED_EXIT_AFTER),
        outcome.exit_code()
    );
    let reporting = Instant::now();
    let code = match report {
        Some(report) => report(reason, &said),
        None => {
            tracing::warn!("{said}");
            outcome.exit_code()
        }
    };
    // The report and the last lines share one bound: the exit comes at most that long
    // after the watchdog's wait.
    crate::log::drain(crate::log::LAST_LINES_WAIT.saturating_sub(reporting.elapsed()));
    std::process::exit(i32::from(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forced(shutdown: &Shutdown) -> Option<StopReason> {
        shutdown.current().and_then(|request| request.forced)
    }

    #[test]
    fn a_signal_after_a_signal_forces() {
        let shutdown = Shutdown::new(Duration::from_secs(600));
        assert_eq!(shutdown.current(), None);
        assert_eq!(shutdown.request(StopReason::Terminate), Requested::First);
        let request = shutdown.current().expect("requested");
        assert_eq!(request.reason, StopReason::Terminate);
        assert!(request.deadline > Instant::now() + Duration::from_secs(500));
        assert_eq!(forced(&shutdown), None);
        // --timeout running out meanwhile changes nothing.
        assert_eq!(shutdown.request(StopReason::Timeout), Requested::Ignored);
        assert_eq!(forced(&shutdown), None);
        assert_eq!(shutdown.request(StopReason::Interrupt), Requested::Forced);
        assert_eq!(forced(&shutdown), Some(StopReason::Interrupt));
        assert_eq!(shutdown.request(StopReason::Terminate), Requested::Ignored);
    }

    #[test]
    fn the_grace_period_counts_from_the_signal_s_arrival() {
        let shutdown = Shutdown::new(Duration::from_secs(600));
        let arrived = Instant::now()
            .checked_sub(Duration::from_secs(60))
            .unwrap_or_else(Instant::now);
        assert_eq!(
            shutdown.request_since(StopReason::Terminate, arrived),
            Requested::First
        );
        let request = shutdown.current().expect("requested");
        assert_eq!(request.deadline, arrived + Duration::from_secs(600));
    }

    #[test]
    fn a_request_made_on_arrival_is_matched_by_its_delivery() {
        let shutdown = Shutdown::new(Duration::from_secs(600));
        let arrived = Instant::now();
        shutdown.request_on_arrival(StopReason::Terminate, arrived);
        let request = shutdown.current().expect("requested");
        assert_eq!(request.reason, StopReason::Terminate);
        assert_eq!(request.deadline, arrived + Duration::from_secs(600));
        // Once made, a request is not made again.
        shutdown.request_on_arrival(StopReason::Interrupt, Instant::now());
        assert_eq!(shutdown.current(), Some(request));
        // The runtime delivers the signal it came from: the same signal, no force.
        assert_eq!(
            shutdown.request_since(StopReason::Terminate, Instant::now()),
            Requested::Ignored
        );
        assert_eq!(forced(&shutdown), None);
        // The next signal is a second one.
        assert_eq!(shutdown.request(StopReason::Interrupt), Requested::Forced);
        assert_eq!(forced(&shutdown), Some(StopReason::Interrupt));
    }

    #[test]
    fn a_grace_period_too_long_for_the_clock_never_ends() {
        let shutdown = Shutdown::new(Duration::MAX);
        assert_eq!(shutdown.request(StopReason::Terminate), Requested::First);
        let request = shutdown.current().expect("requested");
        assert!(request.deadline > Instant::now() + Duration::from_secs(50 * 365 * 24 * 3600));
    }

    #[test]
    fn after_timeout_the_first_signal_is_noted_and_the_second_forces() {
        let shutdown = Shutdown::new(Duration::from_secs(600));
        assert_eq!(shutdown.request(StopReason::Timeout), Requested::First);
        assert_eq!(shutdown.request(StopReason::Terminate), Requested::Noted);
        assert_eq!(forced(&shutdown), None);
        assert_eq!(shutdown.request(StopReason::Terminate), Requested::Forced);
        assert_eq!(forced(&shutdown), Some(StopReason::Terminate));
    }

    #[test]
    fn the_deadline_forces_with_the_reason_that_asked() {
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

    #[test]
    fn a_revoked_job_is_stopped_at_once_whatever_came_before() {
        let shutdown = Shutdown::new(Duration::from_secs(600));
        shutdown.revoke();
        assert_eq!(forced(&shutdown), Some(StopReason::Fenced));
        assert_eq!(shutdown.request(StopReason::Terminate), Requested::Ignored);

        let shutdown = Shutdown::new(Duration::from_secs(600));
        shutdown.request(StopReason::Terminate);
        shutdown.revoke();
        assert_eq!(forced(&shutdown), Some(StopReason::Fenced));
        assert_eq!(
            shutdown.current().map(|request| request.reason),
            Some(StopReason::Terminate)
        );
    }
}
