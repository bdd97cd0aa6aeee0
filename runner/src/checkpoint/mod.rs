//! Checkpoint storage: where a job's committed state lives between runs.
//!
//! The host interface (`host::checkpoint`) talks to a [`Store`]; [`fs::LocalStore`] is
//! the local-directory backend. A record is a versioned header and the job's opaque
//! payload ([`format`]).

pub mod format;
pub mod fs;

use std::fmt;
use std::path::PathBuf;

pub use format::Record;

/// The largest state a job may save, in bytes.
///
/// A record is written, and read back at the next start, in one piece: the bound keeps
/// the record, and the memory a load takes, within reason.
pub const MAX_STATE_LEN: u64 = 256 << 20;

/// A job's identity in the state directory: one directory per id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobId(String);

impl JobId {
    /// Accepts ids of 1 to 128 letters, digits, `.`, `_` and `-`, not starting with `.`,
    /// so that an id is always one safe directory name.
    pub fn new(id: &str) -> Result<Self, InvalidJobId> {
        let valid_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if id.is_empty() || id.len() > 128 || id.starts_with('.') || !valid_chars {
            return Err(InvalidJobId(id.to_owned()));
        }
        Ok(JobId(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job id that is not usable as a directory name.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a job id: use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'"
)]
pub struct InvalidJobId(String);

/// Why the store could not load or commit a record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed; the message names the operation and the path.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// What the store was doing, such as "fsync".
        action: &'static str,
        /// The path it touched.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The new record was renamed into place, but the directory could not be fsynced:
    /// it is the current record now, yet may not survive a crash.
    #[error("the new checkpoint is in place but may not survive a crash: {0}")]
    NotDurable(Box<StoreError>),
    /// The stored record is not a valid checkpoint.
    #[error("checkpoint `{path}` is unusable: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: format::FormatError,
    },
}

impl StoreError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    }
}

/// Durable storage for one job's checkpoints.
///
/// Both methods block on I/O: call them off the async runtime's worker threads.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The last committed record, if the job ever committed one.
    fn load(&self) -> Result<Option<Record>, StoreError>;

    /// Replaces the committed record with `record`. When it returns `Ok` the record is
    /// on stable storage. If it fails (other than with [`StoreError::NotDurable`]) or the
    /// process dies during the call, the previous record is still the committed one.
    fn commit(&self, record: &Record) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        for good in ["primes", "job-1", "a.b_c", "X"] {
            assert!(JobId::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(JobId::new(bad).is_err(), "{bad}");
        }
    }
}
