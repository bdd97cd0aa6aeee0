//! `runner state show|reset JOB_ID`: a job's committed state, for people.

use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::checkpoint::JobId;
use tokio::runtime::Runtime;

use crate::checkpoint::Slot;
use crate::checkpoint::fs::{CHECKPOINT, FENCE, JobDir, LOCK, PREVIOUS, sync_dir};
use crate::checkpoint::s3::{S3Job, S3Url};
use crate::checkpoint::{OutputLen, Record, StoreError};
use crate::cli::StateLocation;
use crate::hex;

/// `runner state reset` refused: a runner holds the job.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Owned(pub String);

/// What `runner state show` prints.
pub fn show(location: &StateLocation, job_id: &JobId, runtime: &Runtime) -> Result<String> {
    let state_dir = match location {
        StateLocation::Dir(dir) => dir,
        StateLocation::S3(url) => return runtime.block_on(show_s3(url, job_id)),
    };
    let dir = existing(state_dir, job_id)?;
    let mut text = format!("job `{job_id}` in `{}`\n", dir.path().display());
    newest(&mut text, dir.load_newest());
    let _ = writeln!(
        text,
        "{CHECKPOINT}: {}",
        slot_summary(dir.read_slot(CHECKPOINT))
    );
    let _ = writeln!(
        text,
        "{PREVIOUS}: {}",
        slot_summary(dir.read_slot(PREVIOUS))
    );
    let fence = match dir.read_fence() {
        Ok(None) => "none taken yet".to_owned(),
        Ok(Some(fence)) => fence.number.to_string(),
        Err(error) => error.to_string(),
    };
    let _ = writeln!(text, "newest fencing number: {fence}");
    let owner = dir
        .owner()?
        .unwrap_or_else(|| "none (no runner holds the job)".to_owned());
    let _ = writeln!(text, "owner: {owner}");
    Ok(text)
}

/// Removes a job's state, returning what it removed; an [`Owned`] error if a runner
/// holds the job.
pub fn reset(location: &StateLocation, job_id: &JobId, runtime: &Runtime) -> Result<String> {
    let state_dir = match location {
        StateLocation::Dir(dir) => dir,
        StateLocation::S3(url) => return runtime.block_on(reset_s3(url, job_id)),
    };
    let dir = existing(state_dir, job_id)?;
    let lock = match dir.try_lock()? {
        Ok(lock) => lock,
        Err(holder) => {
            return Err(Owned(format!(
                "job `{job_id}` is owned by {holder}: stop that run before resetting its state"
            ))
            .into());
        }
    };
    let mut text = format!(
        "removing the state of job `{job_id}` in `{}`:\n",
        dir.path().display()
    );
    for name in [CHECKPOINT, PREVIOUS] {
        match dir.read_slot(name)? {
            Slot::Missing => {}
            Slot::Usable(record) => {
                let _ = writeln!(
                    text,
                    "  {name}: checkpoint {}, {} bytes of state",
                    record.sequence,
                    record.payload.len()
                );
            }
            Slot::Unusable(problem) => {
                let _ = writeln!(text, "  {name}: unusable ({problem})");
            }
        }
    }
    match dir.read_fence() {
        Ok(Some(fence)) => {
            let _ = writeln!(text, "  {FENCE}: fencing number {}", fence.number);
        }
        Ok(None) => {}
        Err(error) => {
            let _ = writeln!(text, "  {FENCE}: {error}");
        }
    }
    let entries = fs::read_dir(dir.path())
        .with_context(|| format!("cannot list `{}`", dir.path().display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list `{}`", dir.path().display()))?
            .path();
        // The lock goes last, while still held: a runner that opened it before sees
        // that it is no longer the job's lock file and tries again.
        if path.file_name().is_some_and(|name| name != LOCK) {
            remove(&path)?;
        }
    }
    remove(&dir.file(LOCK))?;
    drop(lock);
    match fs::remove_dir(dir.path()) {
        // A runner waiting for the job made a new lock file: the directory is its now.
        Err(error) if error.kind() == ErrorKind::DirectoryNotEmpty => {}
        removed => removed.with_context(|| format!("cannot remove `{}`", dir.path().display()))?,
    }
    sync_dir(state_dir)?;
    text.push_str(
        "done. The job's --output directory, if it has one, is not touched: empty it before \
         the job runs again.\n",
    );
    Ok(text)
}

/// The newest record as a run would load it, and what the run would say about it.
fn newest(text: &mut String, loaded: Result<(Option<Record>, Vec<String>), StoreError>) {
    match loaded {
        Ok((Some(record), notes)) => {
            describe(text, "checkpoint", &record);
            for note in notes {
                let _ = writeln!(text, "  note: {note}");
            }
        }
        Ok((None, _)) => text.push_str("checkpoint: none (the job has not saved yet)\n"),
        Err(error) => {
            let _ = writeln!(text, "checkpoint: none usable: {error}");
        }
    }
}

async fn show_s3(url: &S3Url, job_id: &JobId) -> Result<String> {
    let job = S3Job::new(url, job_id)?;
    let Some(found) = job.inspect().await? else {
        bail!("job `{job_id}` has no state in `{url}`");
    };
    let mut text = format!("job `{job_id}` in `{}`\n", job.url());
    newest(&mut text, found.newest);
    for (object, slot) in found.generations {
        let _ = writeln!(text, "{object}: {}", slot_summary(Ok(slot)));
    }
    let fence = match found.fence {
        Ok(fence) => fence.to_string(),
        Err(problem) => format!("unknown: the head is unusable ({problem})"),
    };
    let _ = writeln!(text, "newest fencing number: {fence}");
    let _ = writeln!(text, "owner: {}", found.owner);
    Ok(text)
}

async fn reset_s3(url: &S3Url, job_id: &JobId) -> Result<String> {
    let job = S3Job::new(url, job_id)?;
    let removed = job.reset().await?.map_err(Owned)?;
    if removed.is_empty() {
        bail!("job `{job_id}` has no state in `{url}`");
    }
    let mut text = format!("removing the state of job `{job_id}` in `{}`:\n", job.url());
    for line in removed {
        let _ = writeln!(text, "  {line}");
    }
    text.push_str("done.\n");
    Ok(text)
}

fn existing(state_dir: &Path, job_id: &JobId) -> Result<JobDir> {
    let dir = JobDir::new(state_dir, job_id);
    match fs::metadata(dir.path()) {
        Ok(meta) if meta.is_dir() => Ok(dir),
        Ok(_) => bail!("`{}` is not a directory", dir.path().display()),
        Err(error) if error.kind() == ErrorKind::NotFound => bail!(
            "job `{job_id}` has no state in `{}` (is the job id or --state-dir wrong?)",
            state_dir.display()
        ),
        Err(error) => Err(error).with_context(|| format!("cannot read `{}`", dir.path().display())),
    }
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove `{}`", path.display()))
        }
        _ => Ok(()),
    }
}

fn describe(text: &mut String, what: &str, record: &Record) {
    let _ = writeln!(text, "{what}: {}", record.sequence);
    let _ = writeln!(text, "  state: {} bytes", record.payload.len());
    // RFC 3339 stops at the year 9999; a later time is shown as it is stored.
    let written = match record.written_at_ms {
        ms if ms < 253_402_300_800_000 => {
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        ms => format!("{ms} ms after the Unix epoch"),
    };
    let _ = writeln!(text, "  written: {written}");
    if let Some(dir) = &record.output_dir {
        let _ = writeln!(text, "  output directory: {dir}");
    }
    let _ = writeln!(text, "  module: sha256 {}", hex(&record.module_digest));
    let _ = writeln!(text, "  fencing number: {}", record.fence);
    if record.outputs.is_empty() {
        text.push_str("  outputs: none recorded\n");
    }
    for OutputLen { path, len } in &record.outputs {
        let _ = writeln!(text, "  output: {path} {len} bytes");
    }
}

fn slot_summary(slot: Result<Slot, StoreError>) -> String {
    match slot {
        Ok(Slot::Usable(record)) => format!("checkpoint {}", record.sequence),
        Ok(Slot::Missing) => "missing".to_owned(),
        Ok(Slot::Unusable(problem)) => format!("unusable ({problem})"),
        Err(error) => error.to_string(),
    }
}
