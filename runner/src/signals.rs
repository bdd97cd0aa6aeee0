//! SIGTERM, SIGINT and SIGHUP: the first asks the job to stop, the next forces it.
//! SIGQUIT stops it at once.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook_tokio::Signals;

use crate::outcome::StopReason;
use crate::shutdown::Shutdown;

/// SIGTERM, SIGINT, SIGHUP and SIGQUIT held pending (blocked) on the main thread, from the first
/// line of `main` until their handlers exist: a signal in between is delivered then
/// instead of killing the runner (or, as PID 1, being dropped). Threads started
/// meanwhile (the runtime's workers) keep them blocked, so the main thread takes them.
#[derive(Debug)]
pub struct Held(SigSet);

/// Blocks the stop signals on this thread; see [`Held`].
pub fn hold() -> io::Result<Held> {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(signal);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(io::Error::from)?;
    Ok(Held(set))
}

impl Held {
    /// Unblocks the signals: any that came while held are delivered now, to the
    /// handlers [`install`] registered.
    pub fn release(self) -> io::Result<()> {
        pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&self.0), None).map_err(io::Error::from)
    }
}

/// When the first stop signal arrived: nanoseconds after [`CLOCK_ZERO`], 0 before one
/// did. Noted by a signal handler of its own, because the task that turns the signal
/// into a request may get a CPU only milliseconds later: the signal interrupts the
/// thread running the job, and the runtime thread it wakes can wait a scheduler tick
/// behind a job that computes. The grace period counts from the arrival, and the job's
/// calls see the request from then ([`catch_up`]).
static FIRST_ARRIVAL_NS: AtomicU64 = AtomicU64::new(0);
/// The first two stop signals that arrived, in the order they did (0: none yet).
static SIGNALS: [AtomicI32; 2] = [AtomicI32::new(0), AtomicI32::new(0)];
/// How many stop signals have arrived. Counted here because deliveries cannot be:
/// signal-hook delivers pending signals by number, not in the order they came, and one
/// signal that comes twice before the delivery is delivered once ([`forward`]).
static ARRIVALS: AtomicU64 = AtomicU64::new(0);
static CLOCK_ZERO: OnceLock<Instant> = OnceLock::new();

/// Installs the runner's signal handlers. Call it first thing, inside the tokio runtime:
/// as PID 1 a process gets no default signal actions, so a SIGTERM that arrives before
/// the handlers exist is dropped and the container hangs until SIGKILL.
pub fn install() -> io::Result<Signals> {
    let zero = *CLOCK_ZERO.get_or_init(Instant::now);
    for signal in [SIGTERM, SIGINT, SIGHUP] {
        note_arrivals(signal, zero)?;
    }
    Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT])
}

#[expect(unsafe_code, reason = "signal_hook's low-level registration is unsafe")]
fn note_arrivals(signal: i32, zero: Instant) -> io::Result<()> {
    let action = move || {
        let nanos = u64::try_from(zero.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let _ =
            FIRST_ARRIVAL_NS.compare_exchange(0, nanos.max(1), Ordering::AcqRel, Ordering::Relaxed);
        // The signal before the count, so that a reader of the count finds it (a
        // handler interrupted by another one's takes the next slot).
        for slot in &SIGNALS {
            if slot
                .compare_exchange(0, signal, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        ARRIVALS.fetch_add(1, Ordering::AcqRel);
    };
    // SAFETY: the action runs inside a signal handler, and only reads the monotonic clock
    // (clock_gettime, async-signal-safe) and does arithmetic and atomic operations: it
    // neither allocates nor takes a lock.
    unsafe { signal_hook::low_level::register(signal, action) }.map(drop)
}

/// When the first stop signal arrived, if one did.
fn first_arrival() -> Option<Instant> {
    let nanos = FIRST_ARRIVAL_NS.load(Ordering::Acquire);
    let zero = CLOCK_ZERO.get()?;
    (nanos != 0).then(|| *zero + Duration::from_nanos(nanos))
}

fn reason(signal: i32) -> Option<StopReason> {
    match signal {
        SIGTERM => Some(StopReason::Terminate),
        SIGINT => Some(StopReason::Interrupt),
        SIGHUP => Some(StopReason::Hangup),
        SIGQUIT => Some(StopReason::Quit),
        _ => None,
    }
}

/// Makes the request from the first stop signal's arrival if the runtime has not yet
/// ([`Shutdown::request_on_arrival`]); true if a stop signal has arrived. For the job's
/// calls that look at the request.
pub fn catch_up(shutdown: &Arc<Shutdown>) -> bool {
    let Some(arrived) = first_arrival() else {
        return false;
    };
    // Stored just after the arrival: a reader in between takes the runtime's path.
    let Some(reason) = reason(SIGNALS[0].load(Ordering::Acquire)) else {
        return false;
    };
    shutdown.request_on_arrival(reason, arrived);
    true
}

/// Turns each stop signal into a shutdown request, for as long as the run lasts.
///
/// The requests follow the arrivals the handler counted, not the deliveries: a SIGINT
/// that came after a SIGTERM may be delivered first, and a second SIGTERM that came
/// before the first was delivered is not delivered again. Each delivery makes the
/// requests of the arrivals not made yet (none, if an earlier delivery made them), the
/// first two with their own signals.
pub async fn forward(mut signals: Signals, shutdown: Arc<Shutdown>) {
    let mut made = 0;
    while let Some(signal) = signals.next().await {
        match reason(signal) {
            // A core-dump request: no grace, the summary still written.
            Some(StopReason::Quit) => shutdown.quit(),
            Some(delivered) => {
                // Counted before the delivery: the handlers run in that order.
                let arrived = ARRIVALS.load(Ordering::Acquire);
                for arrival in made..arrived {
                    let reason = SIGNALS
                        .get(arrival as usize)
                        .and_then(|slot| reason(slot.load(Ordering::Acquire)))
                        .unwrap_or(delivered);
                    // Only a first request uses the time: the first arrival is its own.
                    shutdown.request_since(reason, first_arrival().unwrap_or_else(Instant::now));
                }
                made = arrived;
            }
            None => {}
        }
    }
}

/// Runs `work` on a thread of its own and waits for it, unless a stop signal comes first:
/// then its reason, at once. For the subcommands, which have no job to ask to stop (the
/// thread is left to the process's exit).
pub fn unless_stopped<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    signals: &mut Signals,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<anyhow::Result<T>, StopReason> {
    let (done, result) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("runner-subcommand".into())
        .spawn(move || {
            let _ = done.send(work());
        });
    if let Err(error) = spawned {
        return Ok(Err(anyhow::anyhow!("cannot start a thread: {error}")));
    }
    let panicked = |_| Err(anyhow::anyhow!("the subcommand panicked"));
    runtime.block_on(async {
        let mut result = std::pin::pin!(result);
        loop {
            tokio::select! {
                done = &mut result => return Ok(done.unwrap_or_else(panicked)),
                signal = signals.next() => match signal {
                    Some(signal) => {
                        if let Some(reason) = reason(signal) {
                            return Err(reason);
                        }
                    }
                    // No more signals can come: only the work is left to wait for.
                    None => return Ok((&mut result).await.unwrap_or_else(panicked)),
                },
            }
        }
    })
}
