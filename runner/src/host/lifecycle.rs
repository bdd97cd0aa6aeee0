//! `runner:job/lifecycle`: the job's view of the shutdown state.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::HostMonotonicClock;
use wasmtime_wasi::p2::{DynPollable, Pollable};

use super::bindings::runner::job::lifecycle::{Host, StopReason as WitStopReason};
use crate::outcome::StopReason;
use crate::shutdown::{Request, Shutdown};
use crate::signals;

/// The lifecycle host: the run's shutdown state, and the zero of the job's monotonic
/// clock, so that `deadline` is an instant on the clock the job reads.
#[derive(Debug)]
pub struct Lifecycle {
    shutdown: Arc<Shutdown>,
    clock_zero: Instant,
}

impl Lifecycle {
    pub(super) fn new(shutdown: Arc<Shutdown>, clock_zero: Instant) -> Self {
        Lifecycle {
            shutdown,
            clock_zero,
        }
    }

    /// The request, including one whose signal has arrived but that the runtime has not
    /// turned into a request yet.
    fn current(&self) -> Option<Request> {
        match self.shutdown.current() {
            Some(request) => Some(request),
            None if signals::catch_up(&self.shutdown) => self.shutdown.current(),
            None => None,
        }
    }
}

/// The job's `wasi:clocks/monotonic-clock`: nanoseconds since `zero`, the same zero
/// `lifecycle.deadline` counts from.
#[derive(Debug, Clone, Copy)]
pub struct RunnerClock {
    zero: Instant,
}

impl RunnerClock {
    /// A clock that reads 0 at `zero`.
    pub fn new(zero: Instant) -> Self {
        RunnerClock { zero }
    }
}

impl HostMonotonicClock for RunnerClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        nanos_since(self.zero, Instant::now())
    }
}

fn nanos_since(zero: Instant, instant: Instant) -> u64 {
    u64::try_from(instant.saturating_duration_since(zero).as_nanos()).unwrap_or(u64::MAX)
}

/// What the lifecycle functions need from the store: the state and the resource table
/// (for the pollable).
pub(super) struct LifecycleView<'a> {
    pub(super) lifecycle: &'a Lifecycle,
    pub(super) table: &'a mut ResourceTable,
}

pub(super) struct LifecycleData;

impl HasData for LifecycleData {
    type Data<'a> = LifecycleView<'a>;
}

/// Ready once shutdown is requested, and stays ready.
struct ShutdownPollable(Arc<Shutdown>, watch::Receiver<Option<Request>>);

#[wasmtime_wasi::async_trait]
impl Pollable for ShutdownPollable {
    async fn ready(&mut self) {
        signals::catch_up(&self.0);
        // An error means the sender is gone, which only happens as the run ends:
        // being ready then is harmless.
        let _ = self.1.wait_for(Option::is_some).await;
    }
}

impl Lifecycle {
    /// `shutdown-requested`.
    pub(super) fn requested(&self) -> bool {
        self.current().is_some()
    }

    /// `deadline`: nanoseconds on the job's monotonic clock.
    pub(super) fn deadline(&self) -> Option<u64> {
        self.current()
            .map(|request| nanos_since(self.clock_zero, request.deadline))
    }

    /// `shutdown-reason`.
    pub(super) fn reason(&self) -> Option<WitStopReason> {
        self.current().map(|request| match request.reason {
            StopReason::Terminate => WitStopReason::Terminate,
            StopReason::Interrupt => WitStopReason::Interrupt,
            StopReason::Hangup => WitStopReason::Hangup,
            // Forced at once: the job does not run to ask, but the contract has one
            // reason per signal the job could act on.
            StopReason::Quit => WitStopReason::Terminate,
            StopReason::Timeout => WitStopReason::Timeout,
            StopReason::Fenced => WitStopReason::Fenced,
        })
    }

    /// Waits until shutdown is requested (at once if it has been).
    pub(super) async fn wait(&self) {
        ShutdownPollable(Arc::clone(&self.shutdown), self.shutdown.subscribe())
            .ready()
            .await;
    }
}

impl Host for LifecycleView<'_> {
    fn shutdown_requested(&mut self) -> wasmtime::Result<bool> {
        Ok(self.lifecycle.requested())
    }

    fn subscribe_shutdown(&mut self) -> wasmtime::Result<Resource<DynPollable>> {
        let pollable = self.table.push(ShutdownPollable(
            Arc::clone(&self.lifecycle.shutdown),
            self.lifecycle.shutdown.subscribe(),
        ))?;
        wasmtime_wasi::p2::subscribe(self.table, pollable)
    }

    fn deadline(&mut self) -> wasmtime::Result<Option<u64>> {
        Ok(self.lifecycle.deadline())
    }

    fn shutdown_reason(&mut self) -> wasmtime::Result<Option<WitStopReason>> {
        Ok(self.lifecycle.reason())
    }
}
