//! `runner`: runs a batch job compiled to a WebAssembly component and stops it cleanly.
//!
//! [`run`] is the whole run: it takes the job in its checkpoint store, compiles and
//! links the job, runs it under the shutdown state that signals and `--timeout` drive,
//! and says how it ended as an [`Outcome`]. ARCHITECTURE.md maps the modules.

// Stdout belongs to the job: everything the runner says goes to stderr.
#![warn(clippy::print_stdout)]

/// Logs one line: `runner: ...` on stderr, or a JSON object (see [`log`]).
macro_rules! say {
    ($($arg:tt)*) => {
        ::tracing::info!($($arg)*)
    };
}

pub mod artifact;
pub mod checkpoint;
pub mod cli;
pub mod engine;
pub mod host;
pub mod human;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod outcome;
mod run;
pub mod shutdown;
pub mod signals;
pub mod state;
pub mod summary;

pub use crate::outcome::Outcome;
pub use crate::run::run;
