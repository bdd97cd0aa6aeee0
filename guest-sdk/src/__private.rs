//! What `#[guest_sdk::job]` expands to needs; not part of the API.

pub use crate::bindings::*;
use crate::checkpoint::{CheckpointError, Stopped};
use crate::context::Ctx;
use crate::state::State;

/// What the exported `run` returns.
pub type RunResult = Result<Outcome, String>;

/// What a job function may return: `Result<guest_sdk::Outcome, E>` where `E` is an
/// `anyhow::Error` or any `std::error::Error + Send + Sync + 'static`.
#[diagnostic::on_unimplemented(
    message = "a job function returns `Result<guest_sdk::Outcome, E>`, not `{Self}`",
    label = "this should be `guest_sdk::Result<guest_sdk::Outcome>`",
    note = "E is an `anyhow::Error` or any `std::error::Error + Send + Sync + 'static`"
)]
pub trait JobResult {
    /// The WIT result: an error as its message followed by its causes.
    fn into_run_result(self) -> RunResult;
}

impl<E> JobResult for Result<crate::Outcome, E>
where
    E: Into<anyhow::Error>,
{
    fn into_run_result(self) -> RunResult {
        match self {
            Ok(crate::Outcome::Completed) => Ok(Outcome::Completed),
            Ok(crate::Outcome::Suspended) => Ok(Outcome::Suspended),
            Err(error) => {
                let error: anyhow::Error = error.into();
                // A batch saved the state before it ended the run with `Stopped`, which
                // the job may have wrapped in errors of its own.
                if error.chain().any(|cause| cause.is::<Stopped>()) {
                    Ok(Outcome::Suspended)
                } else {
                    Err(format!("{error:#}"))
                }
            }
        }
    }
}

/// Loads the state and runs the job function with it; `crate_name` (the job's crate)
/// names the job in its checkpoints.
pub fn run_job<S, R>(crate_name: &str, job: impl FnOnce(&mut Ctx<S>) -> R) -> RunResult
where
    S: State,
    R: JobResult,
{
    let mut ctx = Ctx::load(format!("rust:{crate_name}")).map_err(|error| format!("{error:#}"))?;
    let result = job(&mut ctx).into_run_result();
    // Whatever the job returned, output it wrote is lost: the run fails.
    if let Some(lost) = crate::output::lost() {
        return Err(format!("cannot write {lost}"));
    }
    if matches!(result, Ok(Outcome::Completed)) && ctx.stopped() {
        // A loop that dropped the batch's `Stopped` (`.flatten()`, `let Ok(..) else`)
        // ended early: the work is not done, and the state saved with the batch's place
        // is where the next run must go on.
        eprintln!(
            "guest-sdk: the job returned `Completed` after a batch stopped on the runner's \
             request: the run ends as suspended"
        );
        return Ok(Outcome::Suspended);
    }
    if matches!(result, Ok(Outcome::Completed)) {
        // The final state and what the job wrote since its last save, which the runner's
        // record of the completion keeps. A state that cannot be saved (too large, not
        // JSON) leaves the last saved one; the output is flushed all the same. A
        // stateless job has no state to save.
        let saved = if ctx.nothing_to_save() {
            Ok(())
        } else {
            ctx.checkpoint()
        };
        match saved {
            Ok(()) => {}
            Err(CheckpointError::TooLarge(_) | CheckpointError::Encoding(_)) => {
                crate::output::flush_all().map_err(|error| format!("cannot write {error}"))?;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    result
}
