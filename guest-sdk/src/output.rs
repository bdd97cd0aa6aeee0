//! The job's output files: appended to through a buffer the SDK owns, and flushed before
//! every save, so that what a checkpoint records is what the job wrote.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::{Rc, Weak};

/// A file in the job's output directory (`runner --output DIR`), open for appending:
/// what the job writes to it is exactly once in the file, however often the job is
/// stopped, killed and resumed.
///
/// Writes are buffered (as a [`BufWriter`] buffers them), and the SDK flushes every open
/// `Output` before each save, whoever saves: a [`Ctx::batch`](crate::Ctx::batch) on its
/// own, [`Ctx::checkpoint`](crate::Ctx::checkpoint), [`Ctx::suspend`](crate::Ctx::suspend)
/// or [`save_bytes`](crate::save_bytes); and again when the job completes. A checkpoint
/// therefore records every byte written before it, and a resumed run, whose file the
/// runner cut back to that length, goes on where it left off.
///
/// Write results through an `Output`, never through a writer of your own over a file in
/// the output directory: the SDK cannot flush that one before a save, and a crash then
/// loses the lines it held or tears them.
///
/// ```no_run
/// # use guest_sdk::{Ctx, Outcome, Result};
/// # use std::io::Write;
/// # fn job(ctx: &mut Ctx) -> Result<Outcome> {
/// let mut out = ctx.output("squares.txt")?;
/// for n in ctx.batch(1..=1_000_000u64) {
///     let n = n?;
///     writeln!(out, "{n} {}", n * n)?; // flushed before every save the batch makes
/// }
/// # Ok(Outcome::Completed) }
/// ```
#[derive(Debug)]
pub struct Output {
    file: Rc<RefCell<Open>>,
}

/// An open output file.
#[derive(Debug)]
struct Open {
    /// The path the job gave, for messages.
    name: String,
    writer: BufWriter<File>,
}

thread_local! {
    /// Every output file the job has open, for the flush before each save.
    static OPEN: RefCell<Vec<Weak<RefCell<Open>>>> = const { RefCell::new(Vec::new()) };
    /// Why a flush when an output was dropped failed: every later save fails with it,
    /// and so does the run.
    static LOST: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether the job opened an output file in this run.
    static OPENED: Cell<bool> = const { Cell::new(false) };
}

impl Output {
    /// Opens `path`, relative to the output directory, for appending; creates it and its
    /// parent directories if needed.
    pub(crate) fn open(path: &str) -> io::Result<Output> {
        let dir = std::env::var_os("RUNNER_OUTPUT_DIR").ok_or_else(|| {
            io::Error::other("the job has no output directory: run it with `runner --output DIR`")
        })?;
        let relative = Path::new(path);
        let plain = relative
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
        if path.is_empty() || !plain {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "output `{path}` is not a path inside the output directory (use a \
                     relative path without `..`)"
                ),
            ));
        }
        let full = PathBuf::from(dir).join(relative);
        let opened = full
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&full));
        let file = opened
            .map_err(|error| io::Error::new(error.kind(), format!("output `{path}`: {error}")))?;
        let file = Rc::new(RefCell::new(Open {
            name: path.to_owned(),
            writer: BufWriter::new(file),
        }));
        OPEN.with_borrow_mut(|open| {
            open.retain(|file| file.strong_count() > 0);
            open.push(Rc::downgrade(&file));
        });
        OPENED.set(true);
        Ok(Output { file })
    }
}

impl Write for Output {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.borrow_mut().writer.write(bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.borrow_mut().writer.write_all(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.borrow_mut().flush()
    }
}

impl Open {
    fn flush(&mut self) -> io::Result<()> {
        let name = &self.name;
        self.writer
            .flush()
            .map_err(|error| io::Error::new(error.kind(), format!("output `{name}`: {error}")))
    }
}

impl Drop for Output {
    /// Flushes what is buffered; a failure is kept: every later save fails with it, and
    /// so does the run.
    fn drop(&mut self) {
        if let Err(error) = self.file.borrow_mut().flush() {
            LOST.with_borrow_mut(|lost| {
                lost.get_or_insert_with(|| error.to_string());
            });
        }
    }
}

/// Whether the job opened an output file in this run: then a save records the output,
/// and there is something to save.
pub(crate) fn any_opened() -> bool {
    OPENED.get()
}

/// Flushes every open output file, before a save records their lengths; fails, for good,
/// once an output dropped earlier could not be flushed: bytes the job wrote are lost,
/// and no later save may record a state past them.
pub(crate) fn flush_all() -> io::Result<()> {
    if let Some(lost) = LOST.with_borrow(Clone::clone) {
        return Err(io::Error::other(lost));
    }
    let open: Vec<_> = OPEN.with_borrow(|open| open.iter().filter_map(Weak::upgrade).collect());
    for file in open {
        file.borrow_mut().flush()?;
    }
    Ok(())
}

/// Why an output dropped in this run could not be flushed, if one could not.
pub(crate) fn lost() -> Option<String> {
    LOST.with_borrow(Clone::clone)
}
