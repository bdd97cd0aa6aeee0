//! Checkpoint storage: where a job's committed state lives between runs, and who owns it.
//!
//! `--state-dir` is parsed into a [`Location`]; the location and a job id give the job's
//! [`Place`], which a run acquires (waiting for another owner, taking a fencing number
//! and loading the newest record) to get the [`Store`] it alone commits to and at last
//! releases; `runner state` inspects or resets a place. Code above this module names no
//! backend: `fs` keeps a job in a local directory under a lock, `bucket` in an
//! object store (S3) under a lease, and a new backend is a module plus one arm in
//! [`Location::parse`]. A record is a versioned header, the lengths of the output
//! files, and the job's opaque payload ([`format`]); [`output`] keeps the transactional
//! output directory in step with the records.

mod bucket;
mod durable;
pub mod format;
mod fs;
mod generation;
mod location;
pub mod output;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use format::{OutputLen, Record};
pub use generation::Slot;
pub(crate) use generation::{Newest, choose};
pub use location::Location;
use output::OutputDir;

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
    /// Accepts ids of 1 to 128 letters, digits, `.`, `_` and `-`, not starting with `.`
    /// or `-`, so that an id is always one safe directory name and never reads as a flag.
    pub fn new(id: &str) -> Result<Self, InvalidJobId> {
        let valid_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if id.is_empty() || id.len() > 128 || id.starts_with(['.', '-']) || !valid_chars {
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

/// A job id that is not usable as a directory name; shown with control characters
/// escaped.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{}` is not a job id: use 1 to 128 letters, digits, '.', '_' or '-', not starting with \
     '.' or '-'",
    .0.escape_debug()
)]
pub struct InvalidJobId(String);

/// Why the store could not load or commit a record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed; the message names the operation and the path.
    #[error("cannot {action} `{path}`: {cause}")]
    Io {
        /// What the store was doing, such as "fsync".
        action: &'static str,
        /// The path it touched.
        path: PathBuf,
        /// The operating system's error; not a `source`, as the message already says it
        /// (a chain printed whole would say it twice).
        cause: std::io::Error,
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
    /// Whether the failure is the infrastructure's and may pass by itself, so that the
    /// same run later could succeed: an object store unreachable, timing out, or
    /// answering 5xx or 429 (after the client's own retries), or a file system that
    /// fails with a transport error (a network file system that does not answer). Not a
    /// refusal (403, a missing bucket, a read-only or full file system), damage, or a
    /// lost job: no retry mends those.
    pub fn may_pass(&self) -> bool {
        match self {
            StoreError::Io { cause, .. } => io_may_pass(cause),
            StoreError::Remote { cause, .. } => remote_may_pass(&**cause),
            StoreError::NotDurable(inner) => inner.may_pass(),
            StoreError::Corrupt { .. }
            | StoreError::NoUsableCheckpoint(_)
            | StoreError::Fenced { .. } => false,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |cause| StoreError::Io {
            action,
            path,
            cause,
        }
    }
}

/// Whether `error`, which kept a run from starting its job, may pass by itself: a
/// [`StoreError`] that [may pass](StoreError::may_pass), or an I/O error with a transport
/// error number, anywhere in its chain.
pub fn may_pass(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<StoreError>()
            .is_some_and(StoreError::may_pass)
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(io_may_pass)
    })
}

/// The error numbers of a file system that cannot reach its storage right now: a
/// network file system's server down or unreachable (NFS soft mounts fail with EIO).
fn io_may_pass(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::EIO
                | libc::ETIMEDOUT
                | libc::ESTALE
                | libc::ENOTCONN
                | libc::ECONNREFUSED
                | libc::ECONNRESET
                | libc::ECONNABORTED
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::ENOLCK
        )
    )
}

/// Whether an object store client's error may pass: a failure to connect or to get an
/// answer in time (a DNS failure included), or a status of 5xx, 429 (slow down) or 408.
/// Refusals the client names (not found, forbidden, unauthenticated, a failed
/// precondition) do not.
fn remote_may_pass(error: &(dyn std::error::Error + 'static)) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(http) = error.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        if let Some(store) = error.downcast_ref::<object_store::Error>()
            && !matches!(store, object_store::Error::Generic { .. })
        {
            return false;
        }
        if let Some(status) = http_status(&error.to_string()) {
            return status >= 500 || status == 429 || status == 408;
        }
        cause = error.source();
    }
    false
}

/// The HTTP status in an object store client's error text ("... status code: 503
/// Service Unavailable ..."): the client keeps the status in a type of its own that it
/// does not export.
fn http_status(text: &str) -> Option<u16> {
    let (_, after) = text.split_once("status code: ")?;
    after.get(..3)?.parse().ok()
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

/// A future a store returns: boxed, so that [`Place`] and [`Store`] are object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a commit calls once its record is in place (durable or, with
/// [`StoreError::NotDurable`], not), even if nobody awaits the commit any more.
pub type Landed = Box<dyn FnOnce() + Send>;

/// A commit, as [`Store::commit`] leaves it.
pub enum Commit {
    /// Done, on the caller's thread (a local store's).
    Done(Result<(), StoreError>),
    /// Going on as a task of its own (a bucket's): dropping this leaves it running, to
    /// land or not.
    Pending(BoxFuture<'static, Result<(), StoreError>>),
}

impl fmt::Debug for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Commit::Done(result) => f.debug_tuple("Done").field(result).finish(),
            Commit::Pending(_) => f.write_str("Pending"),
        }
    }
}

impl Commit {
    /// How the commit ended.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self {
            Commit::Done(result) => result,
            Commit::Pending(commit) => commit.await,
        }
    }
}

/// What a kind of [`Location`] does: give each job its place. Implemented by each
/// backend; nothing outside this module sees it.
pub(crate) trait Backend: Send + Sync + fmt::Debug + fmt::Display {
    /// The place of `job_id`; nothing is touched yet.
    fn job(&self, job_id: &JobId) -> anyhow::Result<Box<dyn Place>>;

    /// The directory the state is kept in, when it is one on this node.
    fn local_dir(&self) -> Option<&std::path::Path>;
}

/// A job's place in a [`Location`], not owned by this run: what a run acquires and
/// `runner state` inspects or resets.
pub trait Place: Send + Sync + fmt::Debug {
    /// Makes sure a run can keep the job's state here (a local directory is created and
    /// probed), so that an unusable location is an error before the job is compiled.
    fn prepare(&self) -> anyhow::Result<()>;

    /// Takes the job for this run: waits while another run owns it (up to
    /// `--lock-timeout`, or a dead owner's lease), takes a fencing number above any the
    /// job has seen, and loads the newest usable record, saying what it found. A stop
    /// requested meanwhile ends the wait: the job has not started.
    fn acquire<'a>(&'a self, request: Acquire<'a>) -> BoxFuture<'a, anyhow::Result<Acquired>>;

    /// The job's state as `runner state show` describes it, read without taking the job.
    fn inspect(&self) -> BoxFuture<'_, anyhow::Result<Inspection>>;

    /// Removes the job's state, keeping its fencing number from going back; `Err` with
    /// who owns the job while a run holds it.
    fn reset(&self) -> BoxFuture<'_, anyhow::Result<Result<Removed, String>>>;
}

/// How a run asks for a job.
pub struct Acquire<'a> {
    /// How long to wait for a live owner.
    pub lock_timeout: Duration,
    /// How long this run's ownership outlives its last renewal, where a store has leases.
    pub lease: Duration,
    /// Whether to discard the job's records instead of loading them.
    pub start_over: bool,
    /// The run's output directory, put back as the last checkpoint left it before the
    /// run takes a fencing number. Only a location on this node takes one.
    pub output: Option<&'a OutputDir>,
    /// Resolves when a stop is requested, which ends the wait for another owner.
    pub stop: Pin<Box<dyn Future<Output = ()> + Send + Sync + 'a>>,
    /// Called if the store finds, while the job runs, that another run has taken it over.
    pub on_lost: Box<dyn Fn() + Send + Sync>,
}

impl fmt::Debug for Acquire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("lock_timeout", &self.lock_timeout)
            .field("lease", &self.lease)
            .field("start_over", &self.start_over)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// What came of asking for a job.
#[derive(Debug)]
pub enum Acquired {
    /// This run owns the job; the newest usable record, if the job has one.
    Owned(Arc<dyn Store>, Option<Record>),
    /// Another run owns it and did not let go within `--lock-timeout`; what to say.
    Busy(String),
    /// The stop came first.
    Stopped,
}

/// Durable storage for one job's checkpoints, owned by one run.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// This run's fencing number, written into every record it commits.
    fn fence(&self) -> u64;

    /// Where the job's state is, for people.
    fn shown(&self) -> String;

    /// Replaces the committed record with `record` holding `payload` (which the commit
    /// reads instead of `record.payload`: a save writes the state from the job's memory
    /// while it copies it aside). Once it ends `Ok` the record is on stable storage. If it fails (other than with [`StoreError::NotDurable`]) or the
    /// process dies during the call, the previous record is still the committed one;
    /// except that a request to an object store whose reply was lost may have landed, so
    /// that `record` is the committed one (a save of the same sequence replaces it). A
    /// run that is no longer the job's owner gets [`StoreError::Fenced`] and changes
    /// nothing. `landed` is called once the record is in place.
    ///
    /// A local commit runs on the caller's thread (leaving the runtime's worker, if the
    /// caller is on one, to the runtime's other tasks meanwhile) and is
    /// [done](Commit::Done) when this returns: a forced stop waits for it, and the
    /// watchdog bounds that. A remote one [goes on](Commit::Pending) by itself.
    fn commit(&self, record: &Record, payload: &[u8], landed: Landed) -> Commit;

    /// Gives the job up at the end of the run, within a bound of the store's own (a
    /// shorter one when `hurry`: after a forced stop the runner must exit well before
    /// the orchestrator's kill), so that the next run need not wait for it. No commit
    /// succeeds after it. Returns whether this run found that another had taken the job
    /// over. Dropping the store lets go of whatever the release did not.
    fn release(&self, hurry: bool) -> BoxFuture<'_, bool>;

    /// The job could not start (its file does not load): if no run owned the job
    /// before this one, removes what taking it made (a local directory with its lock and
    /// fencing number), so that a job file that cannot run leaves no state behind. Blocks
    /// on I/O; call it before [`Store::release`]. An object store keeps its head, which
    /// holds the fencing number.
    fn discard_if_first(&self) {}
}

/// A job's state as `runner state show` describes it.
#[derive(Debug)]
pub struct Inspection {
    /// Where the job's state is, for people.
    pub shown: String,
    /// The newest usable record as a run would load it, with what the run would say.
    pub newest: Result<(Option<Record>, Vec<String>), StoreError>,
    /// Each generation: its name and what it holds.
    pub generations: Vec<(String, Result<Slot, StoreError>)>,
    /// The newest fencing number, or why it is unknown.
    pub fence: String,
    /// Who owns the job.
    pub owner: String,
}

/// What `runner state reset` removed.
#[derive(Debug)]
pub struct Removed {
    /// Where the job's state was, for people.
    pub shown: String,
    /// One line per file or object.
    pub lines: Vec<String>,
    /// What the user should still know.
    pub note: Option<&'static str>,
}

/// This runner, as an owner of a job is shown to people: its process and host.
pub(crate) fn holder() -> String {
    format!("pid {} on {}", std::process::id(), hostname())
}

/// This host's name, for people.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "this host".to_owned())
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
            "-x",
            "--grace",
            "a/b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(JobId::new(bad).is_err(), "{bad}");
        }
        let error = JobId::new("a\nb\x1b").expect_err("control characters");
        assert!(
            error.to_string().starts_with("`a\\nb\\u{1b}` is not"),
            "{error}"
        );
    }
}
