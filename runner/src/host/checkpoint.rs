//! `runner:job/checkpoint`: loads come from memory (the record read before the job
//! started, or the last one saved); saves commit to the [`Store`] off the runtime's
//! threads, and return only once the record is durable.

use std::sync::Arc;

use super::bindings::runner::job::checkpoint::{Error, Host};
use crate::checkpoint::{MAX_STATE_LEN, Record, Store, StoreError};

/// The checkpoint host: the store and the last committed record.
#[derive(Debug)]
pub struct Checkpoints {
    store: Arc<dyn Store>,
    committed: Option<Record>,
}

impl Checkpoints {
    pub(super) fn new(store: Arc<dyn Store>, committed: Option<Record>) -> Self {
        Checkpoints { store, committed }
    }
}

impl Host for Checkpoints {
    fn load(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.committed.as_ref().map(|record| record.payload.clone()))
    }

    async fn save(&mut self, state: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        if state.len() as u64 > MAX_STATE_LEN {
            return Ok(Err(Error::TooLarge(MAX_STATE_LEN)));
        }
        let record = Record {
            sequence: self.committed.as_ref().map_or(1, |last| last.sequence + 1),
            payload: state,
        };
        let store = Arc::clone(&self.store);
        // fsync blocks: keep it off the runtime's threads. If the run is stopped by
        // force meanwhile, this future is dropped and the commit finishes or not on
        // its own; either way the store holds a whole record.
        let (record, committed) = tokio::task::spawn_blocking(move || {
            let committed = store.commit(&record);
            (record, committed)
        })
        .await?;
        match committed {
            Ok(()) => {
                self.committed = Some(record);
                Ok(Ok(()))
            }
            Err(error @ StoreError::NotDurable(_)) => {
                // The record is what a load returns now: keep the sequence moving on.
                self.committed = Some(record);
                say!("checkpoint saved but not durable: {error}");
                Ok(Err(Error::Io(error.to_string())))
            }
            Err(error) => {
                say!("checkpoint not saved: {error}");
                Ok(Err(Error::Io(error.to_string())))
            }
        }
    }
}
