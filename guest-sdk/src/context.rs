//! The job's context: its typed state and the book-keeping of checkpoints.

use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::batch::{Batch, IntoSource};
use crate::checkpoint::{CheckpointError, load_bytes, save_bytes};
use crate::{Error, Outcome, Result, control};

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

/// A running job: its typed state, and the way to save it.
///
/// The state of type `S` is loaded from the last checkpoint when the job starts, or is
/// `S::default()` on a first run; [`Ctx::state`] reads and changes it. Each checkpoint
/// saves it, durably, as the JSON object `{"state": STATE, "batches": [CURSOR, ...]}`,
/// where the cursors are the places reached by the job's [`Ctx::batch`] loops, in the
/// order the job ran them.
///
/// ```no_run
/// use std::time::Duration;
///
/// use guest_sdk::{Ctx, Outcome, Result};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Crawl { page: u32, seen: u64 }
///
/// fn crawl(ctx: &mut Ctx<Crawl>) -> Result<Outcome> {
///     while ctx.state().page < 500 {
///         if ctx.should_stop() {
///             return ctx.suspend();
///         }
///         let mut state = ctx.state();
///         state.seen += 20; // fetch and count one page
///         state.page += 1;
///         drop(state);
///         ctx.checkpoint_every(Duration::from_secs(5))?;
///     }
///     Ok(Outcome::Completed)
/// }
/// ```
#[derive(Debug)]
pub struct Ctx<S = ()> {
    shared: Rc<Shared<S>>,
}

/// What a [`Ctx`] and its batches share.
#[derive(Debug)]
pub(crate) struct Shared<S> {
    state: RefCell<S>,
    book: RefCell<Book>,
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
}

#[derive(Serialize)]
struct SavedRef<'a, S> {
    state: &'a S,
    batches: &'a [&'a Value],
}

#[derive(Deserialize)]
struct Saved<S> {
    state: S,
    #[serde(default)]
    batches: Vec<Value>,
}

impl<S: State> Ctx<S> {
    /// Loads the state saved by the last run, or starts from `S::default()`.
    pub(crate) fn load() -> Result<Self> {
        let (state, loaded, resumed) = match load_bytes() {
            Some(bytes) => {
                let saved: Saved<S> = serde_json::from_slice(&bytes)
                    .map_err(CheckpointError::Encoding)
                    .map_err(|error| {
                        Error::new(error).context(
                            "the saved state does not fit this job's state type (a job \
                             changed since it saved? start over with `runner --start-over`)",
                        )
                    })?;
                (saved.state, saved.batches, true)
            }
            None => (S::default(), Vec::new(), false),
        };
        Ok(Ctx {
            shared: Rc::new(Shared {
                state: RefCell::new(state),
                book: RefCell::new(Book {
                    resumed,
                    last_save: Instant::now(),
                    loaded,
                    ended: Vec::new(),
                    open: false,
                    stopped: false,
                }),
            }),
        })
    }

    /// The job's state, to read or change. It is saved at the next checkpoint.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # #[derive(Default, serde::Serialize, serde::Deserialize)]
    /// # struct Count { lines: u64 }
    /// # fn job(ctx: &mut Ctx<Count>) -> Result<Outcome> {
    /// ctx.state().lines += 1;
    /// println!("{} lines", ctx.state().lines);
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn state(&mut self) -> RefMut<'_, S> {
        self.shared.state.borrow_mut()
    }

    /// True if the state came from a checkpoint of an earlier run.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
    /// if ctx.resumed() {
    ///     eprintln!("resuming at item {}", ctx.state());
    /// }
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn resumed(&self) -> bool {
        self.shared.book.borrow().resumed
    }

    /// True once the runner has asked the job to stop: save and return soon, as
    /// [`Ctx::suspend`] does. Cheap enough for a hot loop.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
    /// loop {
    ///     if ctx.should_stop() {
    ///         return ctx.suspend();
    ///     }
    ///     *ctx.state() += 1;
    /// }
    /// # }
    /// ```
    pub fn should_stop(&self) -> bool {
        control::shutdown_requested()
    }

    /// When the runner will stop the job by force, once it has asked it to stop.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # use std::time::{Duration, Instant};
    /// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
    /// if let Some(deadline) = ctx.deadline() {
    ///     if deadline.saturating_duration_since(Instant::now()) > Duration::from_secs(5) {
    ///         // time enough to finish the chunk at hand before saving
    ///     }
    ///     return ctx.suspend();
    /// }
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn deadline(&self) -> Option<Instant> {
        control::deadline()
    }

    /// Saves the state now; when it returns `Ok`, the state is durable and the next run
    /// starts from it.
    ///
    /// Inside a [`Ctx::batch`] loop it returns [`CheckpointError::InBatch`]: the batch
    /// saves, with its place in the items.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
    /// *ctx.state() = 42; // an expensive step is done
    /// ctx.checkpoint()?;
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn checkpoint(&mut self) -> Result<(), CheckpointError> {
        if self.shared.book.borrow().open {
            return Err(CheckpointError::InBatch);
        }
        self.shared.save(None)
    }

    /// Saves the state if `interval` has passed since the last save (or since the job
    /// started). Returns whether it saved.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # use std::time::Duration;
    /// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
    /// while *ctx.state() < 1_000_000 {
    ///     *ctx.state() += 1;
    ///     ctx.checkpoint_every(Duration::from_secs(10))?;
    /// }
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn checkpoint_every(&mut self, interval: Duration) -> Result<bool, CheckpointError> {
        if self.shared.book.borrow().open {
            return Err(CheckpointError::InBatch);
        }
        if self.shared.book.borrow().last_save.elapsed() < interval {
            return Ok(false);
        }
        self.checkpoint()?;
        Ok(true)
    }

    /// Saves the state and returns [`Outcome::Suspended`], for `return ctx.suspend();`.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
    /// if ctx.should_stop() {
    ///     return ctx.suspend(); // the runner exits 75; the next run resumes
    /// }
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn suspend(&mut self) -> Result<Outcome> {
        self.checkpoint()?;
        Ok(Outcome::Suspended)
    }

    /// Reports progress: `done` units of work out of `total` (a number, or `None` when
    /// it is not known). [`Ctx::batch`] reports for you.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
    /// let done = *ctx.state();
    /// ctx.progress(done, 1_000);
    /// ctx.progress(done, None); // no end in sight
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn progress(&self, done: u64, total: impl Into<Option<u64>>) {
        control::report_progress(done, total.into());
    }

    /// Walks `items` (a range of numbers, [`lines`](crate::lines) of files,
    /// [`records`](crate::records) of any iterator, or your own [`Source`](crate::Source))
    /// with its place kept in the checkpoint.
    ///
    /// The batch saves the state with its place every 5 seconds (see
    /// [`Batch::save_every`] and [`Batch::save_every_items`]) and reports progress. When
    /// the runner asks the job to stop it saves between two items and yields the error
    /// [`Stopped`](crate::Stopped), which `?` passes on: the run ends as suspended, and
    /// the next run's batch starts at the first item whose loop body had not finished.
    /// The state and the place are saved together, so no item is counted twice or
    /// skipped.
    ///
    /// The next run matches batches to the places in its checkpoint in the order it
    /// starts them, so a job starts the same batches in the same order each run, one at
    /// a time: a batch inside a batch yields an error (flatten the items instead, as
    /// [`Lines`](crate::Lines) does for many files). A loop left with `break` keeps its
    /// place at the item it broke on.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
    /// for n in ctx.batch(1..=1_000_000u64) {
    ///     *ctx.state() += n?;
    /// }
    /// println!("{}", ctx.state());
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn batch<I: IntoSource>(&mut self, items: I) -> Batch<S, I::Source> {
        Batch::new(Rc::clone(&self.shared), items.into_source())
    }

    /// Whether a batch of this run stopped on the runner's request.
    pub(crate) fn stopped(&self) -> bool {
        self.shared.book.borrow().stopped
    }
}

impl<S> Shared<S> {
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

    /// Time since the last save.
    pub(crate) fn since_save(&self) -> Duration {
        self.book.borrow().last_save.elapsed()
    }
}

impl<S: State> Shared<S> {
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
        self.book.borrow_mut().last_save = Instant::now();
        Ok(())
    }
}
