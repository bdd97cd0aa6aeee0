//! SIGTERM, SIGINT and SIGHUP: the first asks the job to stop, the next forces it.

use std::io;
use std::sync::Arc;

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use crate::shutdown::{Shutdown, StopReason};

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
