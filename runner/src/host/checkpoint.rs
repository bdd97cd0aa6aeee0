//! `runner:job/checkpoint`: loads come from memory (the record read before the job
//! started, or the last one saved); saves commit the output directory and then the
//! record to the [`Store`], and return only once both are durable.
//!
//! A save writes the state from the job's memory, and copies it once, for later loads
//! and the completion record, into a buffer the runner keeps: the one that held the
//! state saved before the last, whose pages are already the process's. A job saving a
//! large state again and again thus pays a copy, not a fresh allocation (a page fault
//! and a page zeroed per 4 KiB: for 64 MiB, more than the write) and its release; and
//! the copy of a large state runs on a thread of its own while the commit writes, so
//! that the save waits for the write only. The runner holds two states between saves,
//! as it did during each.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::bindings::runner::job::checkpoint::Error;
use crate::checkpoint::format::Digest;
use crate::checkpoint::output::OutputDir;
use crate::checkpoint::{Commit, Record, Store, StoreError};
use crate::shutdown::Shutdown;
use crate::summary::RunStatus;

/// From how many bytes a save's state is copied aside on a thread of its own, while the
/// commit writes it: below, starting the thread would cost more than the copy.
const COPY_ASIDE_FROM: usize = 1 << 20;

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
    pub(super) fn load(&self) -> Option<&[u8]> {
        self.committed.as_ref().map(|record| &record.payload[..])
    }

    /// The buffer for the next save's state of `len` bytes, empty: the one that held
    /// the state saved before the last (see the module's doc), unless that is more than
    /// twice as large, then a new one. Give it to [`start_save`](Self::start_save).
    pub(super) fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buffer = std::mem::take(&mut self.spare);
        if buffer.capacity() / 2 > len {
            return Vec::new();
        }
        buffer.clear();
        buffer
    }

    /// The first half of `save` of `state`, the job's memory, at most
    /// [`MAX_STATE_LEN`](crate::checkpoint::MAX_STATE_LEN) bytes: commits it as the
    /// record after the last and copies it into `buffer` (from [`buffer`](Self::buffer)),
    /// a large one on a thread of its own meanwhile. Returns the record, holding the
    /// copy, and the commit, for [`finish_save`](Self::finish_save) once it has ended.
    pub(super) fn start_save(
        &self,
        state: &[u8],
        mut buffer: Vec<u8>,
    ) -> Result<(Record, Commit), Error> {
        let mut record = self.next_record(false)?;
        let commit = std::thread::scope(|scope| {
            let copy = if state.len() >= COPY_ASIDE_FROM {
                Some(scope.spawn(|| buffer.extend_from_slice(state)))
            } else {
                buffer.extend_from_slice(state);
                None
            };
            let commit = self.write(&mut record, state);
            if let Some(copy) = copy
                && let Err(panic) = copy.join()
            {
                std::panic::resume_unwind(panic);
            }
            commit
        });
        record.payload = buffer;
        Ok((record, commit))
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
        let Ok(mut record) = self.next_record(true) else {
            tracing::warn!("the sequence numbers of the job's checkpoints are exhausted");
            return None;
        };
        let sequence = record.sequence;
        let committed = self.write(&mut record, &state).wait().await;
        record.payload = state;
        self.finish_save(record, committed).ok().map(|()| sequence)
    }

    /// The record after the last committed one, its state not yet in it.
    fn next_record(&self, completed: bool) -> Result<Record, Error> {
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
            payload: Vec::new(),
            completed,
        })
    }

    /// The second half of `save` (and of the completion): keeps `record` as the last
    /// committed one, which a load returns, if its commit landed, and its state's buffer
    /// for the next save if it did not.
    pub(super) fn finish_save(
        &mut self,
        record: Record,
        committed: Result<(), StoreError>,
    ) -> Result<(), Error> {
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
    /// The bytes the runner holds for the job's states: the last committed one and the
    /// buffer for the next.
    pub(super) fn held(&self) -> u64 {
        let committed = self
            .committed
            .as_ref()
            .map_or(0, |record| record.payload.capacity());
        (committed + self.spare.capacity()) as u64
    }

    /// Commits `record` holding `state`. Data before record: the output files first, so
    /// that the lengths a record promises are already durable when it is. On the job's
    /// own thread, like the store's local commit: a small commit is mostly its fsyncs,
    /// and handing it to another thread and back would add a third to its time.
    fn write(&self, record: &mut Record, state: &[u8]) -> Commit {
        if let Some(output) = &self.output {
            record.output_dir = Some(output.key().to_owned());
            match tokio::task::block_in_place(|| output.sync()) {
                Ok(outputs) => record.outputs = outputs,
                Err(error) => return Commit::Done(Err(error)),
            }
        }
        let status = Arc::clone(&self.status);
        let (sequence, bytes, began) = (record.sequence, state.len() as u64, Instant::now());
        let landed = Box::new(move || status.committed(sequence, bytes, began.elapsed()));
        self.store.commit(record, state, landed)
    }
}
