//! The local-directory store: one directory per job under the state directory.
//!
//! ```text
//! STATE_DIR/JOB_ID/lock             flock(2)ed by the run that owns the job
//! STATE_DIR/JOB_ID/fence            the newest fencing number handed out
//! STATE_DIR/JOB_ID/checkpoint       the newest record
//! STATE_DIR/JOB_ID/checkpoint.prev  the generation before it
//! ```
//!
//! A commit writes the record to a new temporary file in the same directory, fsyncs it,
//! renames `checkpoint` to `checkpoint.prev`, renames the new file to `checkpoint` and
//! fsyncs the directory. A crash at any point leaves the old or the new record as the
//! newest usable one, never a mix: loading takes the usable generation with the highest
//! sequence number, so a crash between the two renames (no `checkpoint`) or a damaged
//! `checkpoint` falls back to `checkpoint.prev`. A failed fsync fails the commit
//! (retrying an fsync can report success after the data was lost).
//!
//! Ownership: a run holds the lock for its whole life and takes a fencing number one
//! above any seen before; every commit checks, after its fsync and just before its
//! renames, that `fence` still holds its number.
//! The lock keeps two runners apart; the fence stops a runner whose lock did not (a lock
//! file removed under it, a shared file system that does not honour flock) from
//! overwriting its successor's state. The fence covers commits from the moment the new
//! owner's number is durable; a stale commit that lands between the new owner reading
//! the records and writing its number is superseded by the new owner's first commit, and
//! a check-then-rename window of microseconds remains in each commit. Only the lock keeps
//! two runners from writing one output directory at the same time. A run without an
//! output directory writes its number while its job starts, and its first commit waits
//! for the number to be durable (a failed write fails every commit of the run); with one,
//! the number (which records the directory) is durable before the job starts. The lock
//! is held until the write is over, even by a run that ends first.

mod dir;
mod store;

use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use dir::{CHECKPOINT, FENCE, JobDir, LOCK, Lock, PREVIOUS};
use store::Claim;

use super::output::{self, OutputDir};
use super::{Acquire, Acquired, Backend, BoxFuture, Inspection, JobId, Place, Removed, Slot};
use crate::human::{format_duration, whole_ms};

/// A state directory: one directory per job under it.
#[derive(Debug)]
pub(crate) struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub(crate) fn new(root: PathBuf) -> Self {
        StateDir { root }
    }
}

impl fmt::Display for StateDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.root.display())
    }
}

impl Backend for StateDir {
    fn job(&self, job_id: &JobId) -> Result<Box<dyn Place>> {
        Ok(Box::new(LocalJob {
            state_dir: self.root.clone(),
            job_id: job_id.clone(),
            dir: JobDir::new(&self.root, job_id),
        }))
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.root)
    }
}

/// A job's directory under a state directory.
#[derive(Debug)]
struct LocalJob {
    state_dir: PathBuf,
    job_id: JobId,
    dir: JobDir,
}

/// How often a runner waiting for a job's lock tries again.
const LOCK_POLL: Duration = Duration::from_millis(50);

impl Place for LocalJob {
    fn prepare(&self) -> Result<()> {
        self.dir
            .create()
            .with_context(|| format!("unusable state directory for job `{}`", self.job_id))
    }

    fn acquire<'a>(&'a self, request: Acquire<'a>) -> BoxFuture<'a, Result<Acquired>> {
        Box::pin(self.take(request))
    }

    fn inspect(&self) -> BoxFuture<'_, Result<Inspection>> {
        Box::pin(async { self.inspect_now() })
    }

    fn reset(&self) -> BoxFuture<'_, Result<Result<Removed, String>>> {
        Box::pin(async { self.reset_now() })
    }
}

impl LocalJob {
    /// Takes the job's lock, reads its records, puts its output directory back as its
    /// last checkpoint left it, and takes a fencing number.
    async fn take(&self, mut request: Acquire<'_>) -> Result<Acquired> {
        let lock = match self.wait_for_lock(&mut request).await? {
            Ok(lock) => lock,
            Err(not_taken) => return Ok(not_taken),
        };
        let claim = Claim::new(self.dir.clone(), lock, request.start_over)
            .with_context(|| format!("cannot load the state of job `{}`", self.job_id))?;
        for note in &claim.loaded.notes {
            tracing::warn!("{note}");
        }
        // Before taking a fencing number, so that a refused run leaves no trace.
        if let Some(output) = request.output {
            self.check_apart(output)?;
        }
        output::restore(
            request.output,
            &claim.loaded,
            &self.job_id,
            request.start_over,
        )?;
        let (store, loaded) = match request.output {
            Some(output) => claim.own(Some(output.key()))?,
            None => claim.own_while_starting(),
        };
        Ok(Acquired::Owned(Arc::new(store), loaded.record))
    }

    /// Takes the job's lock, waiting up to `--lock-timeout` for another runner to
    /// release it. A stop requested meanwhile ends the wait: the job has not started.
    async fn wait_for_lock(&self, request: &mut Acquire<'_>) -> Result<Result<Lock, Acquired>> {
        let start = Instant::now();
        let mut waiting = false;
        loop {
            let holder = match self.dir.try_lock()? {
                Ok(lock) => {
                    if waiting {
                        say!(
                            "took the lock of job `{}` after waiting {}",
                            self.job_id,
                            format_duration(whole_ms(start.elapsed()))
                        );
                    }
                    return Ok(Ok(lock));
                }
                Err(holder) => holder,
            };
            let left = request.lock_timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(Err(Acquired::Busy(format!(
                    "job `{}` is owned by {holder}, which still held its lock `{}` after {} \
                     (--lock-timeout)",
                    self.job_id,
                    self.dir.file(LOCK).display(),
                    format_duration(request.lock_timeout)
                ))));
            }
            if !waiting {
                say!(
                    "job `{}` is owned by {holder}: waiting up to {} for it to finish \
                     (--lock-timeout)",
                    self.job_id,
                    format_duration(request.lock_timeout)
                );
                waiting = true;
            }
            tokio::select! {
                () = tokio::time::sleep(LOCK_POLL.min(left)) => {}
                () = &mut request.stop => {
                    say!("not starting the job: the stop came while it waited for its lock");
                    return Ok(Err(Acquired::Stopped));
                }
            }
        }
    }

    /// Refuses an output directory inside the state directory, or around it: the job
    /// could overwrite its own checkpoints.
    fn check_apart(&self, output: &OutputDir) -> Result<()> {
        if let Ok(state_dir) = self.state_dir.canonicalize() {
            let key = Path::new(output.key());
            if key.starts_with(&state_dir) || state_dir.starts_with(key) {
                bail!(
                    "--output `{}` and --state-dir `{}` overlap: the job could overwrite its \
                     own checkpoints",
                    output.path().display(),
                    self.state_dir.display()
                );
            }
        }
        Ok(())
    }

    fn inspect_now(&self) -> Result<Inspection> {
        self.existing()?;
        let newest = self.dir.load_newest();
        let generations = [CHECKPOINT, PREVIOUS]
            .map(|name| (name.to_owned(), self.dir.read_slot(name)))
            .into();
        let fence = match self.dir.read_fence() {
            Ok(None) => "none taken yet".to_owned(),
            Ok(Some(fence)) => fence.number.to_string(),
            Err(error) => error.to_string(),
        };
        let owner = self
            .dir
            .owner()?
            .unwrap_or_else(|| "none (no runner holds the job)".to_owned());
        Ok(Inspection {
            shown: self.dir.path().display().to_string(),
            newest,
            generations,
            fence,
            owner,
        })
    }

    fn reset_now(&self) -> Result<Result<Removed, String>> {
        self.existing()?;
        let dir = &self.dir;
        let lock = match dir.try_lock()? {
            Ok(lock) => lock,
            Err(holder) => {
                return Ok(Err(format!(
                    "job `{}` is owned by {holder}: stop that run before resetting its state",
                    self.job_id
                )));
            }
        };
        let mut lines = Vec::new();
        for name in [CHECKPOINT, PREVIOUS] {
            match dir.read_slot(name)? {
                Slot::Missing => {}
                Slot::Usable(record) => lines.push(format!(
                    "{name}: checkpoint {}, {} bytes of state",
                    record.sequence,
                    record.payload.len()
                )),
                Slot::Unusable(problem) => lines.push(format!("{name}: unusable ({problem})")),
            }
        }
        match dir.read_fence() {
            Ok(Some(fence)) => lines.push(format!("{FENCE}: fencing number {}", fence.number)),
            Ok(None) => {}
            Err(error) => lines.push(format!("{FENCE}: {error}")),
        }
        dir.remove_all(&lock)?;
        drop(lock);
        Ok(Ok(Removed {
            shown: dir.path().display().to_string(),
            lines,
            note: Some(
                "The job's --output directory, if it has one, is not touched: empty it before \
                 the job runs again.",
            ),
        }))
    }

    /// Refuses a job that has no directory, for `runner state`.
    fn existing(&self) -> Result<()> {
        let path = self.dir.path();
        match fs::symlink_metadata(path) {
            Ok(_) => Ok(self.dir.check_real_dir()?),
            Err(error) if error.kind() == ErrorKind::NotFound => bail!(
                "job `{}` has no state in `{}` (is the job id or --state-dir wrong?)",
                self.job_id,
                self.state_dir.display()
            ),
            Err(error) => Err(error).with_context(|| format!("cannot read `{}`", path.display())),
        }
    }
}
