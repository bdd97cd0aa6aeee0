//! Checkpoint storage: where a job's committed state lives between runs.
//!
//! The host interface (`host::checkpoint`) commits through a [`Store`], which a run
//! owns alone: [`fs::LocalStore`] is the local-directory backend, owned under a lock and
//! a fencing number. A record is a versioned header, the lengths of the output files,
//! and the job's opaque payload ([`format`]); [`output`] keeps the transactional output
//! directory in step with the records.

pub mod format;
pub mod fs;
pub mod output;
pub mod s3;

use std::fmt;
use std::path::PathBuf;

pub use format::{OutputLen, Record};

/// The largest state a job may save, in bytes.
///
/// A record is written, and read back at the next start, in one piece: the bound keeps
/// the record, and the memory a load takes, within reason.
pub const MAX_STATE_LEN: u64 = 256 << 20;

/// No record is larger (the state, and room for the list of output files): a stored one
/// that is, is not read, and a commit that would write one fails.
pub(crate) const MAX_RECORD_LEN: u64 = MAX_STATE_LEN + (64 << 20);

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
    /// A request to the object store failed; the message names the request, the object
    /// and every cause the client gave.
    #[error("cannot {action} `{object}`: {}", causes(&**cause))]
    Remote {
        /// What the store was doing, such as "write".
        action: &'static str,
        /// The object's URL.
        object: String,
        /// What went wrong; not a `source`, as the message already says what matters.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The new record was renamed into place, but the directory could not be fsynced:
    /// it is the current record now, yet may not survive a crash.
    #[error("the new checkpoint is in place but may not survive a crash: {0}")]
    NotDurable(Box<StoreError>),
    /// A stored file is not what the store wrote.
    #[error("`{path}` is unusable: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The job has checkpoints, and none of them is usable.
    #[error(
        "no usable checkpoint for this job: {0}. Repair or remove the files, or pass \
         --start-over to start from scratch (`runner state reset` removes the job's state)"
    )]
    NoUsableCheckpoint(String),
    /// Another runner has taken ownership of the job since this one started.
    #[error(
        "another runner has taken this job over: this run's fencing number is {ours}, the \
         newest is {newest}"
    )]
    Fenced {
        /// This run's fencing number.
        ours: u64,
        /// What the store holds now (`none` if the job's state was removed).
        newest: String,
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

/// An error and, unless its text already says it, its root cause: clients wrap a cause
/// in layers that repeat each other, and the innermost (a refused connection, a DNS
/// failure) is often the one that matters.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    // One line: a server's XML error body has line breaks.
    let one_line = |error: &dyn std::error::Error| {
        error
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let text = one_line(error);
    let mut root = error;
    while let Some(cause) = root.source() {
        root = cause;
    }
    let root_text = one_line(root);
    if text.contains(&root_text) {
        text
    } else {
        format!("{text}: {root_text}")
    }
}

/// What a run found in the store when it took ownership of the job.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The newest usable record, if the job has one.
    pub record: Option<Record>,
    /// The output directory of the last run that owned the job, which may have died
    /// before its first commit, leaving output that no record covers.
    pub earlier_output: Option<String>,
    /// What the user should know: a fallback to the previous generation, files removed.
    pub notes: Vec<String>,
}

/// Durable storage for one job's checkpoints, owned by one run.
///
/// `commit` blocks on I/O: call it off the async runtime's worker threads.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// This run's fencing number, written into every record it commits.
    fn fence(&self) -> u64;

    /// Replaces the committed record with `record`. When it returns `Ok` the record is
    /// on stable storage. If it fails (other than with [`StoreError::NotDurable`]) or the
    /// process dies during the call, the previous record is still the committed one;
    /// except that a request to an object store whose reply was lost may have landed, so
    /// that `record` is the committed one (a save of the same sequence replaces it). A
    /// run that is no longer the job's owner gets [`StoreError::Fenced`] and changes
    /// nothing.
    fn commit(&self, record: &Record) -> Result<(), StoreError>;
}

/// What one generation holds.
#[derive(Debug, Clone)]
pub enum Slot {
    /// No file or object.
    Missing,
    /// A usable record.
    Usable(Record),
    /// Something that is not a usable record, and why.
    Unusable(String),
}

/// Which generation holds the newest usable record, for the next commit's rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Newest {
    /// The latest: it becomes the previous generation when the next commit replaces it.
    Latest,
    /// The previous one, or none: the latest is missing or unusable, and the next commit
    /// replaces it without touching the previous generation.
    NotLatest,
}

/// Picks the newest usable generation (`latest`, the newest record as last committed, and
/// `previous`, the one before it, shown in messages as the two names), noting any
/// fallback.
pub(crate) fn choose(
    [latest_name, previous_name]: [String; 2],
    latest: Slot,
    previous: Slot,
    notes: &mut Vec<String>,
) -> Result<(Option<Record>, Newest), StoreError> {
    Ok(match (latest, previous) {
        (Slot::Usable(latest), Slot::Usable(previous)) if previous.sequence > latest.sequence => {
            (Some(previous), Newest::NotLatest)
        }
        (Slot::Usable(latest), Slot::Unusable(problem)) => {
            notes.push(format!(
                "the previous checkpoint generation `{}` is unusable ({problem}); the newest \
                 is intact and the next checkpoint replaces it",
                previous_name
            ));
            (Some(latest), Newest::Latest)
        }
        (Slot::Usable(latest), _) => (Some(latest), Newest::Latest),
        (Slot::Unusable(problem), Slot::Usable(previous)) => {
            notes.push(format!(
                "checkpoint `{}` is unusable ({problem}): falling back to the previous \
                 generation `{}`, checkpoint {}",
                latest_name, previous_name, previous.sequence
            ));
            (Some(previous), Newest::NotLatest)
        }
        (Slot::Missing, Slot::Usable(previous)) => {
            notes.push(format!(
                "`{}` is missing (a commit was cut off between its renames): resuming from \
                 the previous generation `{}`, checkpoint {}",
                latest_name, previous_name, previous.sequence
            ));
            (Some(previous), Newest::NotLatest)
        }
        (Slot::Missing, Slot::Missing) => (None, Newest::NotLatest),
        (latest, previous) => {
            let describe = |name, slot| match slot {
                Slot::Unusable(problem) => format!("`{name}` is unusable ({problem})"),
                _ => format!("`{name}` is missing"),
            };
            return Err(StoreError::NoUsableCheckpoint(format!(
                "{}, and {}",
                describe(&latest_name, latest),
                describe(&previous_name, previous)
            )));
        }
    })
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
