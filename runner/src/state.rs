//! `runner state show|reset JOB_ID`: a job's committed state, for people. The store
//! reads it; this module only words it.

use anyhow::Result;
use std::fmt::Write as _;
use tokio::runtime::Handle;

use crate::checkpoint::{JobId, Location, OutputLen, Record, Slot, StoreError};
use crate::human::{hex, unix_ms};

/// `runner state reset` refused: a runner holds the job.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Owned(pub String);

/// What `runner state show` prints.
pub fn show(location: &Location, job_id: &JobId, runtime: &Handle) -> Result<String> {
    let place = location.job(job_id)?;
    let found = runtime.block_on(place.inspect())?;
    let mut text = format!("job `{job_id}` in `{}`\n", found.shown);
    newest(&mut text, found.newest);
    for (name, slot) in found.generations {
        let _ = writeln!(text, "generation `{name}`: {}", slot_summary(slot));
    }
    let _ = writeln!(text, "newest fencing number: {}", found.fence);
    let _ = writeln!(text, "owner: {}", found.owner);
    Ok(text)
}

/// Removes a job's state, returning what it removed; an [`Owned`] error if a runner
/// holds the job.
pub fn reset(location: &Location, job_id: &JobId, runtime: &Handle) -> Result<String> {
    let place = location.job(job_id)?;
    let removed = runtime.block_on(place.reset())?.map_err(Owned)?;
    let mut text = format!(
        "removing the state of job `{job_id}` in `{}`:\n",
        removed.shown
    );
    for line in removed.lines {
        let _ = writeln!(text, "  {line}");
    }
    text.push_str("done.");
    if let Some(note) = removed.note {
        let _ = write!(text, " {note}");
    }
    text.push('\n');
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

fn describe(text: &mut String, what: &str, record: &Record) {
    let _ = writeln!(text, "{what}: {}", record.sequence);
    let _ = writeln!(text, "  state: {} bytes", record.payload.len());
    let _ = writeln!(text, "  written: {}", unix_ms(record.written_at_ms));
    if record.completed {
        text.push_str(
            "  completed: yes, the job completed with it: a run does not run the job again \
             (--start-over runs it anew)\n",
        );
    }
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
        Ok(Slot::Usable(record)) => format!("sequence {}", record.sequence),
        Ok(Slot::Missing) => "missing".to_owned(),
        Ok(Slot::Unusable(problem)) => format!("unusable ({problem})"),
        Err(error) => error.to_string(),
    }
}
