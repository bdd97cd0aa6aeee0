//! SIGTERM, SIGINT and SIGHUP: the first asks the job to stop, the next forces it.

use std::io;
use std::sync::Arc;

use futures::StreamExt;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use crate::shutdown::{Shutdown, StopReason};

/// SIGTERM, SIGINT and SIGHUP held pending (blocked) on the main thread, from the first
/// line of `main` until their handlers exist: a signal in between is delivered then
/// instead of killing the runner (or, as PID 1, being dropped). Threads started
/// meanwhile (the runtime's workers) keep them blocked, so the main thread takes them.
#[derive(Debug)]
pub struct Held(SigSet);

/// Blocks the stop signals on this thread; see [`Held`].
pub fn hold() -> io::Result<Held> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
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

/// Installs the runner's signal handlers. Call it first thing, inside the tokio runtime:
/// as PID 1 a process gets no default signal actions, so a SIGTERM that arrives before
/// the handlers exist is dropped and the container hangs until SIGKILL.
pub fn install() -> io::Result<Signals> {
    Signals::new([SIGTERM, SIGINT, SIGHUP])
}

/// Turns each signal into a shutdown request, for as long as the run lasts.
pub async fn forward(mut signals: Signals, shutdown: Arc<Shutdown>) {
    while let Some(signal) = signals.next().await {
        let reason = match signal {
            SIGTERM => StopReason::Terminate,
            SIGINT => StopReason::Interrupt,
            SIGHUP => StopReason::Hangup,
            _ => continue,
        };
        shutdown.request(reason);
    }
}
