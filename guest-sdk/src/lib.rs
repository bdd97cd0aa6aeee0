//! Write batch jobs for `runner` that stop cleanly when asked and resume where they
//! stopped.
//!
//! A job is one function marked [`#[guest_sdk::job]`](job). It gets a [`Ctx`] holding
//! its typed state: loaded from the last checkpoint, or `Default` on a first run. The
//! shortest resumable job walks its work with [`Ctx::batch`], which keeps its place in
//! the checkpoint, saves every few seconds, and ends the run with the state saved when
//! the runner asks the job to stop:
//!
//! ```no_run,standalone_crate
//! use guest_sdk::{Ctx, Outcome, Result};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Sum { total: u64 }
//!
//! #[guest_sdk::job]
//! fn sum(ctx: &mut Ctx<Sum>) -> Result<Outcome> {
//!     for n in ctx.batch(0..1_000_000_000u64) {
//!         ctx.state().total += n?; // `?` ends the run, saved, when a stop is requested
//!     }
//!     println!("{}", ctx.state().total);
//!     Ok(Outcome::Completed)
//! }
//! ```
//!
//! A job that is not a loop over items uses the same pieces by hand:
//! [`Ctx::should_stop`], [`Ctx::suspend`], [`Ctx::checkpoint_every`]. A job that writes
//! results writes them through [`Ctx::output`], whose files the SDK flushes before every
//! save: each result is then in the output exactly once, however often the job is
//! stopped or killed.
//!
//! Build a job as a `cdylib` for `wasm32-wasip2` (`cargo build --release --target
//! wasm32-wasip2`) and run it with `runner target/wasm32-wasip2/release/NAME.wasm`. The
//! state is saved as JSON (see [`Ctx`] for the exact layout), so it must implement
//! `serde::Serialize`, `serde::Deserialize` and `Default`.

#![warn(missing_docs)]

#[doc(hidden)]
pub mod __private;
mod batch;
// The generated bindings are not API: hidden, like `__private`, which re-exports them.
#[doc(hidden)]
mod bindings;
mod checkpoint;
mod context;
mod control;
mod output;
mod state;

pub use anyhow::{self, Error, Result};
pub use batch::{Batch, IntoSource, Lines, LinesCursor, Numbers, Records, Source, lines, records};
pub use checkpoint::{CheckpointError, Stopped, load_bytes, save_bytes};
pub use context::Ctx;
pub use control::{
    Pollable, StopReason, deadline, exit, report_progress, shutdown_pollable, shutdown_requested,
    sleep, stop_reason, wait_for, wait_for_shutdown, wait_until,
};
pub use output::Output;
pub use state::State;
/// WASI 0.2's interfaces (the `wasip2` crate): sockets, `wasi:http`'s outgoing requests
/// (which reach what `runner --allow-net` allows), streams and timers, whose pollables
/// [`wait_for`] waits on together with the stop request.
pub use wasip2 as wasi;

/// Marks the function the runner runs: `fn NAME(ctx: &mut Ctx<State>) -> Result<Outcome>`.
///
/// The function gets the job's context with its state loaded, and returns
/// [`Outcome::Completed`] when all the work is done or [`Outcome::Suspended`] when it
/// stopped early with its state saved. An error (an [`anyhow::Error`], or any
/// `std::error::Error + Send + Sync + 'static`) fails the run: the runner prints it,
/// with its chain of causes, and exits 1. A crate has exactly one job function.
///
/// The attribute checks the signature and fails the build with a message at the part
/// that is wrong: a job function is not `async`, not generic, takes one `&mut Ctx<_>`
/// argument and returns a `Result`.
///
/// ```no_run,standalone_crate
/// use guest_sdk::{Ctx, Outcome, Result};
///
/// #[guest_sdk::job]
/// fn hello(_ctx: &mut Ctx) -> Result<Outcome> {
///     println!("hello from a job");
///     Ok(Outcome::Completed)
/// }
/// ```
#[doc(inline)]
pub use guest_sdk_macros::job;

/// How a job's run ended, when it did not fail.
///
/// ```no_run
/// # use guest_sdk::{Ctx, Outcome, Result};
/// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
/// if *ctx.state() == 100 {
///     return Ok(Outcome::Completed); // the runner exits 0
/// }
/// *ctx.state() += 1;
/// ctx.suspend() // saves the state; the runner exits 75 and the next run goes on
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All the work is done: the runner exits 0.
    Completed,
    /// Stopped early with the state saved: the runner exits 75, and the next run
    /// resumes from the state.
    Suspended,
}
