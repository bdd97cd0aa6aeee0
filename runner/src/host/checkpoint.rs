//! `runner:job/checkpoint`: loads come from memory (the record read before the job
//! started, or the last one saved); saves commit the output directory and then the
//! record to the [`Store`], and return only once both are durable.
//!
//! A save's state is copied once out of the job's memory, into a buffer the runner
//! keeps: the one that held the state saved before the last, whose pages are already
//! the process's. A job saving a large state again and again thus pays a copy, not a
//! fresh allocation (a page fault and a page zeroed per 4 KiB: for 64 MiB, more than the
//! write) and its release. The runner then holds two states between saves, as it did
//! during each.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::bindings::runner::job::checkpoint::Error;
use crate::checkpoint::format::Digest;
use crate::checkpoint::output::OutputDir;
use crate::checkpoint::{Record, Store, StoreError};
use crate::shutdown::Shutdown;
use crate::summary::RunStatus;

/// The checkpoint host: the store, the output directory, and the last committed record.
#[derive(Debug)]
pub struct Checkpoints {
    store: Arc<dyn Store>,
    output: Option<OutputDir>,
    fence: u64,
    module_digest: Digest,
    shutdown: Arc<Shutdown>,
    status: Arc<RunStatus>,
    committed: Option<Record>,
    /// The buffer the next save copies its state into.
    spare: Vec<u8>,
}

impl Checkpoints {
    /// The host of a job whose saves go to `store` (after `output`), and whose last
    /// committed record is `committed`. Commits are noted in `status` as they land.
    pub(super) fn new(
        store: Arc<dyn Store>,
        output: Option<OutputDir>,
        module_digest: Digest,
        shutdown: Arc<Shutdown>,
        committed: Option<Record>,
        status: Arc<RunStatus>,
    ) -> Self {
        Checkpoints {
            fence: store.fence(),
            store,
            output,
            module_digest,
            shutdown,
            status,
            committed,
            spare: Vec::new(),
        }
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

    /// `save` of `state` (in a buffer from [`buffer`](Self::buffer)), at most
    /// [`MAX_STATE_LEN`](crate::checkpoint::MAX_STATE_LEN) bytes.
    pub(super) async fn save(&mut self, state: Vec<u8>) -> Result<(), Error> {
        let record = self.next_record(state, false)?;
        self.commit(record).await
    }
}

impl Checkpoints {
    /// Records that the job completed: the last state it saved (none if it never saved),
    /// the output as it left it, marked completed, so that a later run does not run the
    /// job again. Returns the record's sequence number; `None` if it was not recorded
    /// (after saying why).
    pub async fn complete(&mut self) -> Option<u64> {
        // No load follows: the state moves into the record rather than being copied.
        let state = self
            .committed
            .as_mut()
            .map(|record| std::mem::take(&mut record.payload))
            .unwrap_or_default();
        let Ok(record) = self.next_record(state, true) else {
            tracing::warn!("the sequence numbers of the job's checkpoints are exhausted");
            return None;
        };
        let sequence = record.sequence;
        self.commit(record).await.ok().map(|()| sequence)
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

    /// Commits `record` and waits for it to be durable.
    async fn commit(&mut self, mut record: Record) -> Result<(), Error> {
        let committed = self.write(&mut record).await;
        let kept = match committed {
            Ok(()) => Ok(()),
            Err(error @ StoreError::NotDurable(_)) => {
                // The record is what a load returns now: keep the sequence moving on.
                tracing::warn!("checkpoint saved but not durable: {error}");
                Err(Error::Io(error.to_string()))
            }
            Err(error @ StoreError::Fenced { .. }) => {
                tracing::warn!("checkpoint not saved: {error}");
                self.shutdown.revoke();
                self.spare = record.payload;
                return Err(Error::Fenced);
            }
            Err(error) => {
                tracing::warn!("checkpoint not saved: {error}");
                self.spare = record.payload;
                return Err(Error::Io(error.to_string()));
            }
        };
        if let Some(previous) = self.committed.replace(record) {
            self.spare = previous.payload;
        }
        kept
    }
}

impl Checkpoints {
    /// Data before record: the output files first, so that the lengths a record promises
    /// are already durable when it is. On the job's own thread, like the store's local
    /// commit: a small commit is mostly its fsyncs, and handing it to another thread and
    /// back would add a third to its time.
    async fn write(&self, record: &mut Record) -> Result<(), StoreError> {
        if let Some(output) = &self.output {
            record.output_dir = Some(output.key().to_owned());
            record.outputs = tokio::task::block_in_place(|| output.sync())?;
        }
        let status = Arc::clone(&self.status);
        let sequence = record.sequence;
        let landed = Box::new(move || status.committed(sequence));
        self.store.commit(record, landed).await
    }
}
