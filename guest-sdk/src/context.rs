//! The job's context: the handle through which a job reads its typed state, saves it
//! and walks batches.

use std::cell::RefMut;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::batch::{Batch, IntoSource};
use crate::checkpoint::CheckpointError;
use crate::output::Output;
use crate::state::{Shared, State};
use crate::{Outcome, Result, control};

/// A running job: its typed state, and the way to save it.
///
/// The state of type `S` is loaded from the last checkpoint when the job starts, or is
/// `S::default()` on a first run; [`Ctx::state`] reads and changes it. Each checkpoint
/// saves it, durably, as the JSON object `{"state": STATE, "batches": [CURSOR, ...],
/// "job": "rust:CRATE"}`, where the cursors are the places reached by the job's
/// [`Ctx::batch`] loops, in the order the job ran them, and `job` names the job: a
/// checkpoint saved by another job (two jobs given one job id) is refused, not loaded.
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

impl<S: State> Ctx<S> {
    /// Loads the state saved by the last run of the job named `job`, or starts from
    /// `S::default()`.
    pub(crate) fn load(job: String) -> Result<Self> {
        Ok(Ctx {
            shared: Rc::new(Shared::load(job)?),
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
        self.shared.state()
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
        self.shared.resumed()
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
        if self.shared.batch_open() {
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
        if self.shared.batch_open() {
            return Err(CheckpointError::InBatch);
        }
        if self.shared.since_save() < interval {
            return Ok(false);
        }
        self.checkpoint()?;
        Ok(true)
    }

    /// Saves the state and returns [`Outcome::Suspended`], for `return ctx.suspend();`. A
    /// job with nothing to save (a stateless worker: no checkpoint, no batch, an empty
    /// state) saves nothing, and the runner says so rather than that a state is saved.
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
        // A stateless job (a worker with `Ctx<()>`) has nothing to save, and says so.
        if !self.nothing_to_save() {
            self.checkpoint()?;
        }
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

    /// Opens `path`, a file in the job's output directory (`runner --output DIR`), for
    /// appending results that are written exactly once: see [`Output`]. Its parent
    /// directories are created; an absolute path or one with `..` is refused.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # use std::io::Write;
    /// # fn job(ctx: &mut Ctx) -> Result<Outcome> {
    /// let mut out = ctx.output("results/primes.txt")?;
    /// writeln!(out, "2")?;
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn output(&self, path: &str) -> std::io::Result<Output> {
        Output::open(path)
    }

    /// Whether the job has nothing to save (a stateless job).
    pub(crate) fn nothing_to_save(&self) -> bool {
        self.shared.nothing_to_save()
    }

    /// Whether a batch of this run stopped on the runner's request.
    pub(crate) fn stopped(&self) -> bool {
        self.shared.stopped()
    }
}
