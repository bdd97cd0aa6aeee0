//! `runner:job/checkpoint`: loads come from memory (the record read before the job
//! started, or the last one saved); saves commit the output directory and then the
//! record to the [`Store`] on the run's checkpoint thread, and return only once both are
//! durable.
//!
//! A save's state is copied once out of the job's memory, into a buffer the runner
//! keeps: the one that held the state saved before the last, whose pages are already
//! the process's. A job saving a large state again and again thus pays a copy, not a
//! fresh allocation (a page fault and a page zeroed per 4 KiB: for 64 MiB, more than the
//! write) and its release. The runner then holds two states between saves, as it did
//! during each.

use std::sync::{Arc, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::oneshot;

use super::bindings::runner::job::checkpoint::Error;
use crate::checkpoint::format::Digest;
use crate::checkpoint::output::OutputDir;
use crate::checkpoint::{MAX_STATE_LEN, Record, Store, StoreError};
use crate::shutdown::Shutdown;
use crate::summary::RunStatus;

/// The checkpoint host: the checkpoint thread, and the last committed record.
#[derive(Debug)]
pub struct Checkpoints {
    writer: mpsc::Sender<Commit>,
    fence: u64,
    module_digest: Digest,
    shutdown: Arc<Shutdown>,
    committed: Option<Record>,
    /// The buffer the next save copies its state into.
    spare: Vec<u8>,
}

/// One commit for the checkpoint thread, and where its result goes.
type Commit = (Record, oneshot::Sender<(Record, Result<(), StoreError>)>);

impl Checkpoints {
    /// Starts the checkpoint thread. Commits run there, one at a time and in order, off
    /// the runtime's threads (fsync blocks); one thread, so that the store's system
    /// calls form one sequence (the crash tests count them). The thread notes each
    /// commit in `status` as it lands, even one the job no longer waits for.
    pub(super) fn new(
        store: Arc<dyn Store>,
        output: Option<OutputDir>,
        module_digest: Digest,
        shutdown: Arc<Shutdown>,
        committed: Option<Record>,
        status: Arc<RunStatus>,
    ) -> anyhow::Result<Self> {
        let (writer, commits) = mpsc::channel::<Commit>();
        let fence = store.fence();
        std::thread::Builder::new()
            .name("runner-checkpoint".into())
            .spawn(move || {
                for (mut record, done) in commits {
                    let committed = commit(&*store, output.as_ref(), &mut record);
                    if matches!(committed, Ok(()) | Err(StoreError::NotDurable(_))) {
                        status.committed(record.sequence);
                    }
                    // The job may have been stopped meanwhile: nobody waits any more.
                    let _ = done.send((record, committed));
                }
            })
            .context("cannot start the checkpoint thread")?;
        Ok(Checkpoints {
            writer,
            fence,
            module_digest,
            shutdown,
            committed,
            spare: Vec::new(),
        })
    }
}

impl Checkpoints {
    /// `load`: the state last committed, if any.
    pub(super) fn load(&self) -> Option<Vec<u8>> {
        self.committed.as_ref().map(|record| record.payload.clone())
    }

    /// The buffer for the next save's state of `len` bytes, empty: the one that held
    /// the state saved before the last (see the module's doc), unless that is more than
    /// twice as large, then a new one. Give it back through [`save`](Self::save).
    pub(super) fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buffer = std::mem::take(&mut self.spare);
        if buffer.capacity() / 2 > len {
            return Vec::new();
        }
        buffer.clear();
        buffer
    }

    /// `save` of a state of `len` bytes, copied into `state` (from [`buffer`](Self::buffer))
    /// unless it is over the limit.
    pub(super) async fn save(
        &mut self,
        len: usize,
        state: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        if len as u64 > MAX_STATE_LEN {
            self.spare = state;
            return Ok(Err(Error::TooLarge(MAX_STATE_LEN)));
        }
        match self.next_record(state, false) {
            Ok(record) => self.commit(record).await,
            Err(error) => Ok(Err(error)),
        }
    }
}

impl Checkpoints {
    /// Records that the job completed: the last state it saved (none if it never saved),
    /// the output as it left it, marked completed, so that a later run does not run the
    /// job again. Returns the record's sequence number; `None` if it was not recorded
    /// (after saying why).
    pub async fn complete(&mut self) -> wasmtime::Result<Option<u64>> {
        // No load follows: the state moves into the record rather than being copied.
        let state = self
            .committed
            .as_mut()
            .map(|record| std::mem::take(&mut record.payload))
            .unwrap_or_default();
        let Ok(record) = self.next_record(state, true) else {
            tracing::warn!("the sequence numbers of the job's checkpoints are exhausted");
            return Ok(None);
        };
        let sequence = record.sequence;
        Ok(self.commit(record).await?.ok().map(|()| sequence))
    }

    /// The record after the last committed one, holding `state`.
    fn next_record(&self, state: Vec<u8>, completed: bool) -> Result<Record, Error> {
        let sequence = match &self.committed {
            None => 1,
            Some(last) => last
                .sequence
                .checked_add(1)
                .ok_or_else(|| Error::Io("the sequence numbers are exhausted".into()))?,
        };
        Ok(Record {
            sequence,
            fence: self.fence,
            written_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            module_digest: self.module_digest,
            output_dir: None,
            outputs: Vec::new(),
            payload: state,
            completed,
        })
    }

    /// Commits `record` on the checkpoint thread and waits for it to be durable.
    async fn commit(&mut self, record: Record) -> wasmtime::Result<Result<(), Error>> {
        // If the run is stopped by force meanwhile, this future is dropped and the commit
        // finishes or not on its own; either way the store holds a whole record.
        let (done, result) = oneshot::channel();
        self.writer
            .send((record, done))
            .map_err(|_| wasmtime::Error::msg("the checkpoint thread has stopped"))?;
        let (record, committed) = result
            .await
            .map_err(|_| wasmtime::Error::msg("the checkpoint thread has stopped"))?;
        let kept = match committed {
            Ok(()) => Ok(Ok(())),
            Err(error @ StoreError::NotDurable(_)) => {
                // The record is what a load returns now: keep the sequence moving on.
                tracing::warn!("checkpoint saved but not durable: {error}");
                Ok(Err(Error::Io(error.to_string())))
            }
            Err(error @ StoreError::Fenced { .. }) => {
                tracing::warn!("checkpoint not saved: {error}");
                self.shutdown.revoke();
                self.spare = record.payload;
                return Ok(Err(Error::Fenced));
            }
            Err(error) => {
                tracing::warn!("checkpoint not saved: {error}");
                self.spare = record.payload;
                return Ok(Err(Error::Io(error.to_string())));
            }
        };
        if let Some(previous) = self.committed.replace(record) {
            self.spare = previous.payload;
        }
        kept
    }
}

/// Data before record: the output files first, so that the lengths a record promises
/// are already durable when it is.
fn commit(
    store: &dyn Store,
    output: Option<&OutputDir>,
    record: &mut Record,
) -> Result<(), StoreError> {
    if let Some(output) = output {
        record.output_dir = Some(output.key().to_owned());
        record.outputs = output.sync()?;
    }
    store.commit(record)
}
