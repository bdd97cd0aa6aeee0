//! Resumable loops: a batch walks a source of items with its place in the checkpoint.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::checkpoint::Stopped;
use crate::control::{report_progress, shutdown_requested};
use crate::state::{Shared, State};
use crate::{Error, Result};

/// How often a batch saves unless told otherwise.
const DEFAULT_SAVE_EVERY: Duration = Duration::from_secs(5);
/// How often a batch looks at the clock and the shutdown flag, and reports progress.
/// It counts items between looks and adapts the count to this interval, so that a loop
/// over cheap items does not pay for a host call (about 40 ns) per item.
const LOOK_EVERY: Duration = Duration::from_millis(1);
/// The most items between two looks. A look costs about 150 ns, so above a few ns an
/// item this costs nothing measurable; it bounds how late a request is seen when the
/// items turn slow all at once (the stride shrinks at the next look).
const MAX_STRIDE: u32 = 1 << 14;

/// Items a [`Ctx::batch`](crate::Ctx::batch) can walk, and resume in the middle of.
///
/// A source yields items one at a time, and can say where it is (its cursor, saved in
/// the checkpoint) and go back there on the next run. Implement it for your own
/// sources (pages of an API, rows of a database) when [`Numbers`], [`Lines`] and
/// [`Records`] do not fit.
///
/// ```no_run
/// use guest_sdk::{Result, Source};
///
/// /// Pages 0, 1, 2, ... of a paginated API, until one comes back empty.
/// struct Pages { next: u32 }
///
/// impl Source for Pages {
///     type Item = Vec<String>;
///     type Cursor = u32;
///     fn cursor(&self) -> u32 { self.next }
///     fn seek(&mut self, cursor: u32) -> Result<()> { self.next = cursor; Ok(()) }
///     fn next_item(&mut self) -> Option<Result<Vec<String>>> {
///         let page = fetch(self.next);
///         self.next += 1;
///         (!page.is_empty()).then_some(Ok(page))
///     }
/// }
/// # fn fetch(_page: u32) -> Vec<String> { Vec::new() }
/// ```
pub trait Source {
    /// What the loop body gets.
    type Item;
    /// A place in the items, saved in the checkpoint as JSON.
    type Cursor: Serialize + DeserializeOwned + Clone;
    /// The place of the next item `next_item` would return.
    fn cursor(&self) -> Self::Cursor;
    /// Goes to a place an earlier [`Source::cursor`] returned, before the first item.
    fn seek(&mut self, cursor: Self::Cursor) -> Result<()>;
    /// The next item, `None` at the end, or what went wrong reading it.
    fn next_item(&mut self) -> Option<Result<Self::Item>>;
    /// How far the walk has got, out of how much, for the runner's progress report;
    /// `None` (the default) if the source cannot tell.
    fn progress(&self) -> Option<(u64, Option<u64>)> {
        None
    }
}

/// What [`Ctx::batch`](crate::Ctx::batch) accepts: a [`Source`], or something that
/// becomes one, as a range of integers becomes [`Numbers`].
///
/// ```no_run
/// use guest_sdk::IntoSource;
///
/// let numbers = (0..10u32).into_source();
/// ```
pub trait IntoSource {
    /// The source it becomes.
    type Source: Source;
    /// Makes the source.
    fn into_source(self) -> Self::Source;
}

impl<S: Source> IntoSource for S {
    type Source = S;
    fn into_source(self) -> S {
        self
    }
}

/// A resumable loop over a [`Source`], made by [`Ctx::batch`](crate::Ctx::batch).
///
/// Each item comes as `Ok(item)`; an `Err` is [`Stopped`] (the state is saved and the
/// job should return, which `?` does) or what went wrong reading the source.
///
/// ```no_run
/// # use guest_sdk::{Ctx, Outcome, Result};
/// # use std::time::Duration;
/// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
/// for n in ctx.batch(0..10_000u64).save_every(Duration::from_secs(1)) {
///     *ctx.state() += n?;
/// }
/// # Ok(Outcome::Completed) }
/// ```
pub struct Batch<S, Src: Source> {
    shared: Rc<Shared<S>>,
    source: Src,
    /// Whether this batch holds a batch number (`None` only when it could not start).
    number: Option<usize>,
    /// An error found when starting, yielded first.
    failed: Option<Error>,
    /// The place of the item the loop body has now, which is not finished: where the
    /// next run starts if this one saves now.
    resume_at: Src::Cursor,
    save_every: Duration,
    save_every_items: Option<u64>,
    items_since_save: u64,
    /// Items between two looks at the clock and the shutdown flag, and how many remain.
    stride: u32,
    countdown: u32,
    last_look: Instant,
    done: bool,
}

impl<S, Src: Source> fmt::Debug for Batch<S, Src> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("number", &self.number)
            .field("save_every", &self.save_every)
            .field("save_every_items", &self.save_every_items)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<S: State, Src: Source> Batch<S, Src> {
    pub(crate) fn new(shared: Rc<Shared<S>>, mut source: Src) -> Self {
        let (number, failed) = match shared.open_batch() {
            Ok((number, place)) => (Some(number), resume(&mut source, number, place).err()),
            Err(error) => (None, Some(error)),
        };
        let resume_at = source.cursor();
        Batch {
            shared,
            source,
            number,
            failed,
            resume_at,
            save_every: DEFAULT_SAVE_EVERY,
            save_every_items: None,
            items_since_save: 0,
            stride: 1,
            countdown: 1,
            last_look: Instant::now(),
            done: false,
        }
    }

    /// Saves when `interval` has passed since the last save (5 seconds unless set).
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # use std::time::Duration;
    /// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
    /// for n in ctx.batch(0..1_000u64).save_every(Duration::from_secs(30)) {
    ///     *ctx.state() += n?;
    /// }
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn save_every(mut self, interval: Duration) -> Self {
        self.save_every = interval;
        self
    }

    /// Also saves after every `items` items (at least 1), however little time they took.
    ///
    /// ```no_run
    /// # use guest_sdk::{Ctx, Outcome, Result};
    /// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
    /// // Each item is an expensive call: never redo more than 10 of them.
    /// for n in ctx.batch(0..1_000u64).save_every_items(10) {
    ///     *ctx.state() += n?;
    /// }
    /// # Ok(Outcome::Completed) }
    /// ```
    pub fn save_every_items(mut self, items: u64) -> Self {
        self.save_every_items = Some(items.max(1));
        self
    }

    fn place(&self) -> Result<Value> {
        serde_json::to_value(&self.resume_at).context("cannot encode the batch's place as JSON")
    }

    fn save(&mut self) -> Result<()> {
        if self.shared.state_in_use() {
            bail!(
                "the batch cannot save: the job holds `ctx.state()` from an earlier item \
                 (let it go at the end of the loop body)"
            );
        }
        let place = self.place()?;
        self.shared.save(Some(place))?;
        self.items_since_save = 0;
        Ok(())
    }

    /// Looks at the shutdown flag and the clock, reports progress, and saves if due.
    /// `Err` ends the batch.
    fn look(&mut self) -> Result<()> {
        let now = Instant::now();
        let since = now.duration_since(self.last_look);
        self.last_look = now;
        // Towards a look every LOOK_EVERY: at once when items turned slow, at most
        // twice as many items when they turned fast.
        let fitting = u128::from(self.stride) * LOOK_EVERY.as_nanos() / since.as_nanos().max(1);
        self.stride = u32::try_from(fitting)
            .unwrap_or(u32::MAX)
            .clamp(1, (self.stride * 2).min(MAX_STRIDE));
        self.countdown = self.stride;
        if let Some((done, total)) = self.source.progress() {
            report_progress(done, total);
        }
        if shutdown_requested() {
            self.save()?;
            self.shared.mark_stopped();
            return Err(Error::new(Stopped));
        }
        if self.shared.since_save() >= self.save_every {
            self.save()?;
        }
        Ok(())
    }

    /// What happens between two items: a look now and then, and a save when due.
    fn between_items(&mut self) -> Result<()> {
        self.countdown -= 1;
        if self.countdown == 0 {
            self.look()?;
        }
        if self
            .save_every_items
            .is_some_and(|items| self.items_since_save >= items)
        {
            self.save()?;
        }
        Ok(())
    }
}

/// Moves `source` to the place the checkpoint holds for batch `number`, if any.
fn resume<Src: Source>(source: &mut Src, number: usize, place: Option<Value>) -> Result<()> {
    let Some(place) = place else {
        return Ok(());
    };
    let cursor = serde_json::from_value(place.clone()).with_context(|| {
        format!(
            "the checkpoint's place for batch {number} ({place}) does not fit this batch: \
             did the job change since it saved?"
        )
    })?;
    source
        .seek(cursor)
        .with_context(|| format!("cannot resume batch {number} at {place}"))
}

impl<S: State, Src: Source> Iterator for Batch<S, Src> {
    type Item = Result<Src::Item>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(error) = self.failed.take() {
            self.done = true;
            return Some(Err(error));
        }
        // The body of the item before this one has finished.
        self.resume_at = self.source.cursor();
        if let Err(error) = self.between_items() {
            self.done = true;
            return Some(Err(error));
        }
        match self.source.next_item() {
            Some(item) => {
                if item.is_err() {
                    self.done = true;
                }
                self.items_since_save += 1;
                Some(item)
            }
            None => {
                self.done = true;
                if let Some((done, total)) = self.source.progress() {
                    report_progress(done, total);
                }
                None
            }
        }
    }
}

impl<S, Src: Source> Drop for Batch<S, Src> {
    fn drop(&mut self) {
        if self.number.is_some() {
            // A loop left early keeps its place at the item it was on; one that ran to
            // the end has its place at the end.
            let place = serde_json::to_value(&self.resume_at).unwrap_or(Value::Null);
            self.shared.close_batch(place);
        }
    }
}

/// The integers of a range, as a [`Source`] whose cursor is the next number (or `null`
/// once a range that ends at the type's largest number is done).
///
/// `ctx.batch(a..b)` and `ctx.batch(a..=b)` make one for `u32`, `u64`, `usize`, `i32`
/// and `i64`.
///
/// ```no_run
/// # use guest_sdk::{Ctx, Numbers, Outcome, Result};
/// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
/// for n in ctx.batch(Numbers::from(2..100u64)) {
///     *ctx.state() += n?;
/// }
/// # Ok(Outcome::Completed) }
/// ```
#[derive(Debug, Clone)]
pub struct Numbers<T> {
    start: T,
    next: T,
    /// One past the last number; `None` when the last number is `T::MAX`.
    end: Option<T>,
    /// Whether a range without `end` has yielded `T::MAX`.
    past_max: bool,
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl From<Range<$t>> for Numbers<$t> {
            fn from(range: Range<$t>) -> Self {
                let end = range.end.max(range.start);
                Numbers { start: range.start, next: range.start, end: Some(end), past_max: false }
            }
        }

        impl From<RangeInclusive<$t>> for Numbers<$t> {
            fn from(range: RangeInclusive<$t>) -> Self {
                let (start, last) = range.into_inner();
                match last.checked_add(1) {
                    Some(end) => Numbers::from(start..end),
                    None => Numbers { start, next: start, end: None, past_max: false },
                }
            }
        }

        impl IntoSource for Range<$t> {
            type Source = Numbers<$t>;
            fn into_source(self) -> Numbers<$t> {
                Numbers::from(self)
            }
        }

        impl IntoSource for RangeInclusive<$t> {
            type Source = Numbers<$t>;
            fn into_source(self) -> Numbers<$t> {
                Numbers::from(self)
            }
        }

        impl Source for Numbers<$t> {
            type Item = $t;
            type Cursor = Option<$t>;

            fn cursor(&self) -> Option<$t> {
                (!self.past_max).then_some(self.next)
            }

            fn seek(&mut self, cursor: Option<$t>) -> Result<()> {
                let Some(cursor) = cursor else {
                    if self.end.is_some() {
                        bail!("the checkpoint is past the largest number, outside this batch");
                    }
                    self.next = <$t>::MAX;
                    self.past_max = true;
                    return Ok(());
                };
                let past_end = self.end.is_some_and(|end| cursor > end);
                if cursor < self.start || past_end {
                    bail!(
                        "the checkpoint is at number {cursor}, outside this batch's {}..{}",
                        self.start,
                        self.end.map_or_else(|| format!("={}", <$t>::MAX), |end| end.to_string()),
                    );
                }
                self.next = cursor;
                Ok(())
            }

            #[inline]
            fn next_item(&mut self) -> Option<Result<$t>> {
                let n = self.next;
                match self.end {
                    Some(end) if n >= end => None,
                    Some(_) => {
                        self.next = n + 1;
                        Some(Ok(n))
                    }
                    // The range runs to the type's last number: stop after yielding it.
                    None => {
                        if self.past_max {
                            return None;
                        }
                        if n == <$t>::MAX {
                            self.past_max = true;
                        } else {
                            self.next = n + 1;
                        }
                        Some(Ok(n))
                    }
                }
            }

            fn progress(&self) -> Option<(u64, Option<u64>)> {
                let done = (self.next.abs_diff(self.start) as u64).saturating_add(u64::from(self.past_max));
                let total = self.end.map(|end| end.abs_diff(self.start) as u64);
                Some((done, total))
            }
        }
    )*};
}

numbers!(u32, u64, usize, i32, i64);

/// The lines of one or more files, one after the other, as a [`Source`] whose cursor is
/// a file and a byte offset in it.
///
/// Each item is a line without its line ending (`\n` or `\r\n`); bytes that are not
/// UTF-8 become U+FFFD. Progress is reported in bytes of all the files. The files must
/// not change between runs: the next run starts at the byte offset this one saved.
///
/// ```no_run
/// # use guest_sdk::{Ctx, Lines, Outcome, Result};
/// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
/// for line in ctx.batch(Lines::new(["/data/part-1.csv", "/data/part-2.csv"])) {
///     if line?.contains("ERROR") {
///         *ctx.state() += 1;
///     }
/// }
/// # Ok(Outcome::Completed) }
/// ```
#[derive(Debug)]
pub struct Lines {
    paths: Vec<PathBuf>,
    /// The size of each file, read when the walk starts.
    sizes: Option<Vec<u64>>,
    at: LinesCursor,
    reader: Option<BufReader<File>>,
    buffer: Vec<u8>,
}

/// A place in [`Lines`]: the file (its index in the list) and the byte offset in it.
///
/// ```no_run
/// use guest_sdk::{Lines, LinesCursor, Source};
///
/// let mut lines = Lines::new(["/data/a.txt", "/data/b.txt"]);
/// lines.seek(LinesCursor { file: 1, offset: 0 })?; // the start of b.txt
/// # Ok::<(), guest_sdk::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinesCursor {
    /// Index of the file in the list given to [`Lines::new`].
    pub file: usize,
    /// Bytes of that file already walked.
    pub offset: u64,
}

/// The lines of one file; see [`Lines`].
///
/// ```no_run
/// # use guest_sdk::{Ctx, Outcome, Result};
/// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
/// for line in ctx.batch(guest_sdk::lines("/data/input.txt")) {
///     *ctx.state() += line?.len() as u64;
/// }
/// # Ok(Outcome::Completed) }
/// ```
pub fn lines(path: impl Into<PathBuf>) -> Lines {
    Lines::new([path])
}

impl Lines {
    /// The lines of `paths`, in that order.
    ///
    /// ```
    /// let lines = guest_sdk::Lines::new(["a.txt", "b.txt"]);
    /// ```
    pub fn new<P: Into<PathBuf>>(paths: impl IntoIterator<Item = P>) -> Lines {
        Lines {
            paths: paths.into_iter().map(Into::into).collect(),
            sizes: None,
            at: LinesCursor { file: 0, offset: 0 },
            reader: None,
            buffer: Vec::new(),
        }
    }

    fn sizes(&mut self) -> Result<&[u64]> {
        if self.sizes.is_none() {
            let sizes = self
                .paths
                .iter()
                .map(|path| {
                    Ok(std::fs::metadata(path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                        .len())
                })
                .collect::<Result<Vec<u64>>>()?;
            self.sizes = Some(sizes);
        }
        Ok(self.sizes.as_deref().unwrap_or_default())
    }

    fn read_line(&mut self) -> Result<Option<String>> {
        self.sizes()?;
        while let Some(path) = self.paths.get(self.at.file) {
            let reader = match &mut self.reader {
                Some(reader) => reader,
                None => {
                    let mut file = File::open(path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    file.seek(SeekFrom::Start(self.at.offset))
                        .with_context(|| format!("cannot seek in {}", path.display()))?;
                    self.reader.insert(BufReader::new(file))
                }
            };
            self.buffer.clear();
            let read = reader
                .read_until(b'\n', &mut self.buffer)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if read == 0 {
                self.at = LinesCursor {
                    file: self.at.file + 1,
                    offset: 0,
                };
                self.reader = None;
                continue;
            }
            self.at.offset += read as u64;
            let mut line = &self.buffer[..];
            if let Some(rest) = line.strip_suffix(b"\n") {
                line = rest.strip_suffix(b"\r").unwrap_or(rest);
            }
            return Ok(Some(String::from_utf8_lossy(line).into_owned()));
        }
        Ok(None)
    }
}

impl Source for Lines {
    type Item = String;
    type Cursor = LinesCursor;

    fn cursor(&self) -> LinesCursor {
        self.at
    }

    fn seek(&mut self, cursor: LinesCursor) -> Result<()> {
        let sizes = self.sizes()?;
        let fits = match sizes.get(cursor.file) {
            Some(&size) => cursor.offset <= size,
            None => cursor.file == sizes.len() && cursor.offset == 0,
        };
        if !fits {
            bail!(
                "the checkpoint is at byte {} of file {}, which these {} files do not have \
                 (did the input change?)",
                cursor.offset,
                cursor.file,
                sizes.len()
            );
        }
        self.at = cursor;
        self.reader = None;
        Ok(())
    }

    fn next_item(&mut self) -> Option<Result<String>> {
        self.read_line().transpose()
    }

    fn progress(&self) -> Option<(u64, Option<u64>)> {
        let sizes = self.sizes.as_deref()?;
        let before: u64 = sizes.iter().take(self.at.file).sum();
        Some((before + self.at.offset, Some(sizes.iter().sum())))
    }
}

/// The items of any iterator, as a [`Source`] whose cursor is how many were walked.
///
/// The next run skips that many items of a new iterator, so the iterator must yield the
/// same items in the same order on each run (a sorted listing, a file's records).
///
/// ```no_run
/// # use guest_sdk::{Ctx, Outcome, Result};
/// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
/// let mut files: Vec<_> = std::fs::read_dir("/data")?.collect::<Result<_, _>>()?;
/// files.sort_by_key(|entry| entry.file_name());
/// for file in ctx.batch(guest_sdk::records(files)) {
///     *ctx.state() += file?.metadata()?.len();
/// }
/// # Ok(Outcome::Completed) }
/// ```
pub fn records<I: IntoIterator>(items: I) -> Records<I::IntoIter> {
    let items = items.into_iter();
    let total = match items.size_hint() {
        (low, Some(high)) if low == high => Some(low as u64),
        _ => None,
    };
    Records {
        items,
        walked: 0,
        total,
    }
}

/// The items of an iterator; see [`records`].
///
/// ```no_run
/// # use guest_sdk::{Ctx, Outcome, Result};
/// # fn job(ctx: &mut Ctx<u64>) -> Result<Outcome> {
/// let names = ["alpha", "beta", "gamma"];
/// let records: guest_sdk::Records<_> = guest_sdk::records(names);
/// for name in ctx.batch(records) {
///     *ctx.state() += name?.len() as u64;
/// }
/// # Ok(Outcome::Completed) }
/// ```
#[derive(Debug)]
pub struct Records<I> {
    items: I,
    walked: u64,
    total: Option<u64>,
}

impl<I: Iterator> Source for Records<I> {
    type Item = I::Item;
    type Cursor = u64;

    fn cursor(&self) -> u64 {
        self.walked
    }

    fn seek(&mut self, cursor: u64) -> Result<()> {
        let mut skipped = self.walked;
        while skipped < cursor {
            if self.items.next().is_none() {
                return Err(anyhow!(
                    "the checkpoint has walked {cursor} records, but there are only \
                     {skipped} now (did the input change?)"
                ));
            }
            skipped += 1;
        }
        self.walked = skipped;
        Ok(())
    }

    fn next_item(&mut self) -> Option<Result<I::Item>> {
        let item = self.items.next()?;
        self.walked += 1;
        Some(Ok(item))
    }

    fn progress(&self) -> Option<(u64, Option<u64>)> {
        Some((self.walked, self.total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(numbers: &mut Numbers<i32>) -> Vec<i32> {
        std::iter::from_fn(|| numbers.next_item().map(|item| item.expect("number"))).collect()
    }

    #[test]
    fn a_range_to_the_largest_number_resumes_past_its_end() {
        let mut numbers = Numbers::from(i32::MAX - 2..=i32::MAX);
        assert_eq!(rest(&mut numbers), [i32::MAX - 2, i32::MAX - 1, i32::MAX]);
        let done = numbers.cursor();
        assert_eq!(done, None);
        let mut resumed = Numbers::from(i32::MAX - 2..=i32::MAX);
        resumed.seek(done).expect("seek");
        assert!(rest(&mut resumed).is_empty());

        let mut resumed = Numbers::from(i32::MAX - 2..=i32::MAX);
        resumed.seek(Some(i32::MAX)).expect("seek");
        assert_eq!(rest(&mut resumed), [i32::MAX]);
    }

    #[test]
    fn a_place_outside_the_range_is_refused() {
        let mut numbers = Numbers::from(10..20);
        assert!(numbers.seek(Some(9)).is_err());
        assert!(numbers.seek(Some(21)).is_err());
        assert!(numbers.seek(None).is_err());
        numbers.seek(Some(20)).expect("the end is a place");
        assert!(rest(&mut numbers).is_empty());
    }
}
