//! The job's state: what a state type must be, and the state a context and its batches
//! share, with the checkpoint book-keeping that loads and saves it.

use std::cell::{RefCell, RefMut};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::{CheckpointError, load_bytes, save_bytes};
use crate::{Error, Result};

/// What a job's state must be: saved as JSON, and `Default` on a first run. Every type
/// that is `Serialize + Deserialize + Default` is one.
///
/// ```no_run
/// use std::collections::BTreeMap;
///
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Tally {
///     counts: BTreeMap<String, u64>,
/// }
///
/// fn is_state<S: guest_sdk::State>() {}
/// is_state::<Tally>();
/// ```
pub trait State: Serialize + DeserializeOwned + Default {}

impl<S: Serialize + DeserializeOwned + Default> State for S {}

/// What a [`Ctx`](crate::Ctx) and its batches share.
#[derive(Debug)]
pub(crate) struct Shared<S> {
    state: RefCell<S>,
    book: RefCell<Book>,
    /// The job's name in its checkpoints, `rust:CRATE`.
    job: String,
}

/// Checkpoint book-keeping.
#[derive(Debug)]
struct Book {
    resumed: bool,
    last_save: Instant,
    /// The cursors in the checkpoint this run started from, by batch number.
    loaded: Vec<Value>,
    /// Where each batch of this run that has ended stopped, by batch number.
    ended: Vec<Value>,
    /// Whether a batch is running now (it will be batch number `ended.len()`).
    open: bool,
    /// Whether a batch ended the run with `Stopped`.
    stopped: bool,
    /// Whether this run has saved.
    saved: bool,
}

#[derive(Serialize)]
struct SavedRef<'a, S> {
    state: &'a S,
    batches: &'a [&'a Value],
    job: &'a str,
}

#[derive(Deserialize)]
struct Saved<S> {
    state: S,
    #[serde(default)]
    batches: Vec<Value>,
    /// Absent in checkpoints of SDKs before it was written.
    #[serde(default)]
    job: Option<String>,
}

impl<S> Shared<S> {
    /// The job's state, to read or change.
    pub(crate) fn state(&self) -> RefMut<'_, S> {
        self.state.borrow_mut()
    }

    /// True if the state came from a checkpoint of an earlier run.
    pub(crate) fn resumed(&self) -> bool {
        self.book.borrow().resumed
    }

    /// Whether a batch is running now.
    pub(crate) fn batch_open(&self) -> bool {
        self.book.borrow().open
    }

    /// Whether a batch of this run stopped on the runner's request.
    pub(crate) fn stopped(&self) -> bool {
        self.book.borrow().stopped
    }

    /// Starts a batch: its number, and the place the checkpoint holds for it. `Err` if
    /// another batch is running.
    pub(crate) fn open_batch(&self) -> Result<(usize, Option<Value>)> {
        let mut book = self.book.borrow_mut();
        if book.open {
            anyhow::bail!(
                "a batch started inside another batch: a job runs its batches one after \
                 another (flatten nested items into one source)"
            );
        }
        book.open = true;
        let number = book.ended.len();
        Ok((number, book.loaded.get(number).cloned()))
    }

    /// Ends the running batch at `place`.
    pub(crate) fn close_batch(&self, place: Value) {
        let mut book = self.book.borrow_mut();
        book.open = false;
        book.ended.push(place);
    }

    /// Records that a batch saved and stopped on the runner's request.
    pub(crate) fn mark_stopped(&self) {
        self.book.borrow_mut().stopped = true;
    }

    /// Whether the job holds the state borrowed (from `Ctx::state`) now.
    pub(crate) fn state_in_use(&self) -> bool {
        self.state.try_borrow().is_err()
    }

    /// Whether the job has nothing to save: it never had a checkpoint, has not saved in
    /// this run, opened no output file (a save records the output), runs no batch and
    /// has none behind it, and its state is empty (`()`, or an empty JSON object). A
    /// stateless worker's suspend saves nothing.
    pub(crate) fn nothing_to_save(&self) -> bool
    where
        S: Serialize,
    {
        let book = self.book.borrow();
        if book.resumed || book.saved || book.open || !book.ended.is_empty() {
            return false;
        }
        if crate::output::any_opened() {
            return false;
        }
        serde_json::to_value(&*self.state.borrow()).is_ok_and(|value| match value {
            Value::Null => true,
            Value::Object(fields) => fields.is_empty(),
            _ => false,
        })
    }

    /// Time since the last save.
    pub(crate) fn since_save(&self) -> Duration {
        self.book.borrow().last_save.elapsed()
    }
}

impl<S: State> Shared<S> {
    /// Loads the state saved by the last run of the job named `job`, or starts from
    /// `S::default()`.
    pub(crate) fn load(job: String) -> Result<Self> {
        let (state, loaded, resumed) = match load_bytes() {
            Some(bytes) => {
                let saved: Saved<S> = match serde_json::from_slice(&bytes) {
                    Ok(saved) => saved,
                    Err(error) => {
                        // Another job's state rarely fits: say whose it is, if it says.
                        if let Ok(Named { job: Some(saver) }) = serde_json::from_slice(&bytes) {
                            check_job(&saver, &job)?;
                        }
                        return Err(Error::new(CheckpointError::Encoding(error)).context(
                            "the saved state does not fit this job's state type (a job \
                             changed since it saved? start over with `runner --start-over`)",
                        ));
                    }
                };
                if let Some(saver) = &saved.job {
                    check_job(saver, &job)?;
                }
                (saved.state, saved.batches, true)
            }
            None => (S::default(), Vec::new(), false),
        };
        Ok(Shared {
            state: RefCell::new(state),
            book: RefCell::new(Book {
                resumed,
                last_save: Instant::now(),
                loaded,
                ended: Vec::new(),
                open: false,
                stopped: false,
                saved: false,
            }),
            job,
        })
    }

    /// Saves the state with the places of the batches that have ended, the running
    /// batch's `place` if one is running, and the places loaded for the batches this run
    /// has not reached yet (the state holds their work).
    pub(crate) fn save(&self, running: Option<Value>) -> Result<(), CheckpointError> {
        let bytes = {
            let book = self.book.borrow();
            // `Ctx::state` borrows the context mutably, so no borrow of the state is
            // left when the job can call `Ctx::checkpoint`; a batch checks first.
            let state = self.state.borrow();
            let reached = book.ended.len() + usize::from(running.is_some());
            let batches: Vec<&Value> = book
                .ended
                .iter()
                .chain(running.as_ref())
                .chain(book.loaded.iter().skip(reached))
                .collect();
            let bytes = serde_json::to_vec(&SavedRef {
                state: &*state,
                batches: &batches,
                job: &self.job,
            })
            .map_err(CheckpointError::Encoding)?;
            // What cannot be loaded back must not replace the state that can. serde_json
            // writes a NaN or an infinity as `null`, which does not load back as a
            // float; a `null` is rare enough in a state (a `None`), and decoding slow
            // enough (25 ms for a 40,000-entry map), to decode only when one is there.
            if bytes.windows(4).any(|window| window == b"null") {
                serde_json::from_slice::<Saved<S>>(&bytes).map_err(CheckpointError::Encoding)?;
            }
            bytes
        };
        save_bytes(&bytes)?;
        let mut book = self.book.borrow_mut();
        book.last_save = Instant::now();
        book.saved = true;
        Ok(())
    }
}

/// Whose checkpoint it is, read on its own.
#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    job: Option<String>,
}

/// Refuses a checkpoint that another job (`saver`) saved: two jobs given one job id (the
/// default is the job file's name, which two jobs may share) must not take each other's
/// state. A new version of the same job (the same crate) loads it.
fn check_job(saver: &str, job: &str) -> Result<()> {
    if saver != job {
        anyhow::bail!(
            "the checkpoint was saved by another job (`{saver}`), not by this one (`{job}`): \
             two jobs share one job id (by default, the job file's name). Give each its own \
             --job-id, or pass --start-over to start this one from scratch"
        );
    }
    Ok(())
}
