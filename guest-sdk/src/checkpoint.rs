//! Saving and loading the job's state as bytes, and the errors of a save.

use std::fmt;

use crate::bindings::runner::job::checkpoint;

/// Why a checkpoint was not saved. The state saved before is still the current one.
///
/// ```no_run
/// # use guest_sdk::{CheckpointError, Ctx, Outcome, Result};
/// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
/// match ctx.checkpoint() {
///     Ok(()) => {}
///     Err(CheckpointError::TooLarge(limit)) => eprintln!("state over {limit} bytes"),
///     Err(error) => return Err(error.into()),
/// }
/// # Ok(Outcome::Completed) }
/// ```
#[derive(Debug)]
pub enum CheckpointError {
    /// The encoded state is larger than the runner accepts (the limit, in bytes).
    TooLarge(u64),
    /// Another runner now owns this job; this one must stop without further work.
    Fenced,
    /// The runner could not store the state; the message says why.
    Io(String),
    /// The state could not be encoded as JSON that decodes back into its type (a map
    /// with keys that are not strings, a NaN), or a saved one could not be decoded. The
    /// JSON error is the [`source`](std::error::Error::source).
    Encoding(serde_json::Error),
    /// A checkpoint was asked for inside a [`Ctx::batch`](crate::Ctx::batch) loop, which
    /// saves the state itself, together with its place in the items.
    InBatch,
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::TooLarge(limit) => {
                write!(
                    f,
                    "checkpoint too large: the runner accepts at most {limit} bytes"
                )
            }
            CheckpointError::Fenced => {
                f.write_str("checkpoint refused: another runner now owns this job")
            }
            CheckpointError::Io(message) => write!(f, "checkpoint not saved: {message}"),
            CheckpointError::Encoding(_) => {
                f.write_str("checkpoint state is not JSON that decodes back into its type")
            }
            CheckpointError::InBatch => f.write_str(
                "checkpoint inside a `ctx.batch` loop: the batch saves the state with its \
                 place in the items (set how often with `save_every`); checkpoint after the \
                 loop instead",
            ),
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Encoding(error) => Some(error),
            _ => None,
        }
    }
}

/// The error a [`Batch`](crate::Batch) yields when the runner asked the job to stop,
/// after it saved the state. Pass it on with `?`: a job function that returns it ends
/// the run as [`Outcome::Suspended`](crate::Outcome::Suspended).
///
/// ```no_run
/// # use guest_sdk::{Ctx, Outcome, Result, Stopped};
/// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
/// for item in ctx.batch(0..100u64) {
///     match item {
///         Ok(n) => *ctx.state() += n,
///         Err(error) if error.is::<Stopped>() => {
///             eprintln!("stopping, state saved");
///             return Err(error);
///         }
///         Err(error) => return Err(error),
///     }
/// }
/// # Ok(Outcome::Completed) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the runner asked the job to stop; its state is saved")
    }
}

impl std::error::Error for Stopped {}

/// Saves raw bytes as the job's state, replacing the last one; durable when it returns
/// `Ok`. Prefer [`Ctx`](crate::Ctx), which keeps typed state.
///
/// Every open [`Output`](crate::Output) is flushed first, so that the checkpoint records
/// what the job wrote; if one cannot be, nothing is saved (`Io`).
///
/// ```no_run
/// guest_sdk::save_bytes(b"page=42")?;
/// # Ok::<(), guest_sdk::CheckpointError>(())
/// ```
pub fn save_bytes(state: &[u8]) -> Result<(), CheckpointError> {
    crate::output::flush_all()
        .map_err(|error| CheckpointError::Io(format!("cannot write {error}")))?;
    checkpoint::save(state).map_err(|error| match error {
        checkpoint::Error::TooLarge(limit) => CheckpointError::TooLarge(limit),
        checkpoint::Error::Fenced => CheckpointError::Fenced,
        checkpoint::Error::Io(message) => CheckpointError::Io(message),
    })
}

/// The raw bytes last saved for this job, by this run or an earlier one; `None` if it
/// never saved. Prefer [`Ctx`](crate::Ctx).
///
/// ```no_run
/// let page = match guest_sdk::load_bytes() {
///     Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
///     None => "page=0".to_owned(),
/// };
/// ```
pub fn load_bytes() -> Option<Vec<u8>> {
    checkpoint::load()
}
