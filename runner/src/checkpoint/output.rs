//! The transactional output directory (`--output`): files the job appends to, kept in
//! step with its checkpoints so that each record the job writes ends up there exactly
//! once, however often the job is stopped.
//!
//! At each checkpoint, before the record is written, every file in the directory is
//! fsynced (and every directory, for the entries) and its length goes into the record.
//! Before a resumed run starts, files are truncated back to the recorded lengths and files
//! no record knows are removed: what the job wrote after its last checkpoint is undone,
//! and the job writes it again from the state it resumes with.
//!
//! This holds for files the job only appends to. A file rewritten in place, or made
//! shorter, cannot be put back; a file found shorter than its committed length stops
//! the run. Only regular files and directories are tracked.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, bail};

use super::durable::{create_dir_durably, sync_dir};
use super::{JobId, Loaded, OutputLen, StoreError, format};

/// A job's output directory on the host.
#[derive(Debug, Clone)]
pub struct OutputDir {
    root: PathBuf,
    key: String,
    /// The files a save found ending in the middle of a line, said once each.
    mid_line: Arc<Mutex<BTreeSet<String>>>,
}

/// What [`OutputDir::restore`] undid.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Files cut back to their committed length.
    pub truncated: usize,
    /// Bytes cut off them.
    pub bytes_dropped: u64,
    /// Files removed because no checkpoint recorded them.
    pub removed: usize,
}

impl OutputDir {
    /// The directory at `root`, created if missing.
    pub fn open(root: &Path) -> Result<Self> {
        create_dir_durably(root)
            .with_context(|| format!("cannot create --output directory `{}`", root.display()))?;
        if !root.is_dir() {
            bail!("--output `{}` is not a directory", root.display());
        }
        let canonical = root
            .canonicalize()
            .with_context(|| format!("cannot resolve --output `{}`", root.display()))?;
        let key = canonical
            .to_str()
            .with_context(|| format!("--output `{}` is not UTF-8", root.display()))?
            .to_owned();
        Ok(OutputDir {
            root: root.to_owned(),
            key,
            mid_line: Arc::default(),
        })
    }

    /// The directory on the host.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The directory's canonical path: how records and runs name it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Makes every file and directory entry durable, and returns the files' lengths,
    /// sorted by path: the output half of a commit.
    pub fn sync(&self) -> Result<Vec<OutputLen>, StoreError> {
        let mut files = Vec::new();
        self.walk(&self.root, "", &mut files, &mut |dir| sync_dir(dir))?;
        let mut lengths = Vec::with_capacity(files.len());
        for (path, _) in files {
            let full = self.root.join(&path);
            // Measured after the fsync; nothing writes while the job is in `save`.
            let (file, len) = File::open(&full)
                .and_then(|file| {
                    file.sync_all()?;
                    let len = file.metadata()?.len();
                    Ok((file, len))
                })
                .map_err(StoreError::io("fsync output file", &full))?;
            if ends_mid_line(&file, len) {
                self.say_mid_line(&path);
            }
            lengths.push(OutputLen { path, len });
        }
        lengths.sort();
        Ok(lengths)
    }

    /// Says, once per file, that a save found `path` ending in the middle of a line of
    /// text: the sign of a writer of the job's own that holds the rest in its buffer,
    /// which the save does not record and a crash loses or tears.
    fn say_mid_line(&self, path: &str) {
        let mut said = self.mid_line.lock().unwrap_or_else(PoisonError::into_inner);
        if said.insert(path.to_owned()) {
            tracing::warn!(
                "output `{path}` ends in the middle of a line at this save: a buffered \
                 writer of the job's own may hold the rest, which a crash would lose or \
                 tear. Write results through the SDK's `ctx.output(...)`, which it flushes \
                 before every save"
            );
        }
    }

    /// True if the directory holds files (empty directories do not count).
    pub fn has_files(&self) -> Result<bool> {
        let mut files = Vec::new();
        self.walk(&self.root, "", &mut files, &mut |_| Ok(()))?;
        Ok(!files.is_empty())
    }

    /// Puts the directory back as the checkpoint that recorded `committed` left it.
    pub fn restore(&self, committed: &[OutputLen]) -> Result<Restored> {
        let mut found = Vec::new();
        self.walk(&self.root, "", &mut found, &mut |_| Ok(()))?;
        let mut found: BTreeMap<String, u64> = found.into_iter().collect();
        let mut restored = Restored::default();
        for output in committed {
            let full = self.root.join(&output.path);
            match found.remove(&output.path) {
                None => bail!(
                    "output file `{}` is missing, but the last checkpoint recorded {} bytes \
                     of it: it was removed outside the job",
                    full.display(),
                    output.len
                ),
                Some(len) if len < output.len => bail!(
                    "output file `{}` is {len} bytes, but the last checkpoint recorded {}: \
                     it was cut short outside the job (output files must be append-only)",
                    full.display(),
                    output.len
                ),
                Some(len) if len > output.len => {
                    OpenOptions::new()
                        .write(true)
                        .open(&full)
                        .and_then(|file| {
                            file.set_len(output.len)?;
                            file.sync_all()
                        })
                        .with_context(|| {
                            format!("cannot truncate output file `{}`", full.display())
                        })?;
                    restored.truncated += 1;
                    restored.bytes_dropped += len - output.len;
                }
                Some(_) => {}
            }
        }
        for path in found.keys() {
            let full = self.root.join(path);
            fs::remove_file(&full)
                .with_context(|| format!("cannot remove output file `{}`", full.display()))?;
            restored.removed += 1;
        }
        if restored.removed > 0 {
            self.walk(&self.root, "", &mut Vec::new(), &mut |dir| sync_dir(dir))?;
        }
        Ok(restored)
    }

    /// Lists the regular files under `dir` (whose path relative to the root is
    /// `prefix`) with their lengths, calling `on_dir` on every directory.
    /// Removes what the job left below `dir` that is neither a regular file nor a
    /// directory (links, FIFOs, sockets), which no record tracks; returns how many.
    fn remove_others(dir: &Path) -> Result<usize> {
        let mut removed = 0;
        let entries =
            fs::read_dir(dir).with_context(|| format!("cannot list `{}`", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list `{}`", dir.display()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .with_context(|| format!("cannot inspect `{}`", path.display()))?;
            if kind.is_dir() {
                removed += Self::remove_others(&path)?;
            } else if !kind.is_file() {
                fs::remove_file(&path)
                    .with_context(|| format!("cannot remove `{}`", path.display()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn walk(
        &self,
        dir: &Path,
        prefix: &str,
        files: &mut Vec<(String, u64)>,
        on_dir: &mut dyn FnMut(&Path) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        on_dir(dir)?;
        let entries = fs::read_dir(dir).map_err(StoreError::io("list", dir))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", dir))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(StoreError::Corrupt {
                    path,
                    problem: "an output file's name must be UTF-8".into(),
                });
            };
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if relative.len() > usize::from(u16::MAX) || !format::is_safe_relative_path(&relative) {
                return Err(StoreError::Corrupt {
                    path,
                    problem: "the output file's path cannot be recorded (too long, or not a \
                              plain relative path)"
                        .into(),
                });
            }
            let meta = entry.metadata().map_err(StoreError::io("inspect", &path))?;
            if meta.is_dir() {
                self.walk(&path, &relative, files, on_dir)?;
            } else if meta.is_file() {
                files.push((relative, meta.len()));
            }
        }
        Ok(())
    }
}

/// Puts a run's output directory back as the job's last checkpoint (in `loaded`) left
/// it, refusing the run if the directory is not the one the checkpoints track.
pub(crate) fn restore(
    output: Option<&OutputDir>,
    loaded: &Loaded,
    job_id: &JobId,
    start_over: bool,
) -> Result<()> {
    // A completed job is not run again: its output is left as it is, whatever happened
    // to it since (a later step may have moved its files), and with or without --output.
    if !start_over
        && loaded
            .record
            .as_ref()
            .is_some_and(|record| record.completed)
    {
        return Ok(());
    }
    let tracked = loaded
        .record
        .as_ref()
        .and_then(|record| record.output_dir.as_deref());
    let Some(output) = output else {
        if let Some(dir) = tracked {
            bail!(
                "job `{job_id}`'s checkpoint tracks the output directory `{dir}`: pass \
                 --output {dir} (or --start-over to start from scratch)"
            );
        }
        return Ok(());
    };
    let shown = output.path().display();
    let committed = match &loaded.record {
        Some(record) => match record.output_dir.as_deref() {
            Some(dir) if dir == output.key() => &record.outputs[..],
            Some(dir) => bail!(
                "job `{job_id}`'s checkpoint {} tracks the output directory `{dir}`, not \
                 `{}`: pass --output {dir} (or --start-over to start from scratch)",
                record.sequence,
                output.key()
            ),
            None => bail!(
                "job `{job_id}`'s checkpoint {} was saved without --output: run it without \
                 --output, or pass --start-over to start from scratch with `{shown}`",
                record.sequence
            ),
        },
        // Starting over, or an earlier run of this job with this directory died before
        // its first checkpoint: all it wrote there goes, links included.
        None if start_over || loaded.earlier_output.as_deref() == Some(output.key()) => {
            let removed = OutputDir::remove_others(output.path())?;
            if removed > 0 {
                say!("removed {removed} link(s) or special file(s) from `{shown}`");
            }
            &[]
        }
        None => {
            if output.has_files()? {
                bail!(
                    "--output `{shown}` already holds files, and job `{job_id}` has no \
                     checkpoint that records them: give the job an empty directory (or pass \
                     --start-over to have them removed)"
                );
            }
            return Ok(());
        }
    };
    let restored = output
        .restore(committed)
        .with_context(|| format!("cannot restore --output `{shown}` to the last checkpoint"))?;
    if restored.truncated > 0 || restored.removed > 0 {
        say!(
            "undid what the job wrote to `{shown}` after its last checkpoint: cut {} bytes off \
             {} file(s), removed {} file(s)",
            restored.bytes_dropped,
            restored.truncated,
            restored.removed
        );
    }
    Ok(())
}

/// Whether the text file `file`, `len` bytes long, ends in the middle of a line: its
/// last 4 KiB hold a line break and no NUL (text, in lines), and its last byte is not a
/// line break.
fn ends_mid_line(file: &File, len: u64) -> bool {
    let tail_len = len.min(4096);
    let mut tail = vec![0; tail_len as usize];
    if tail.is_empty() || file.read_exact_at(&mut tail, len - tail_len).is_err() {
        return false;
    }
    tail.last() != Some(&b'\n') && tail.contains(&b'\n') && !tail.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_undoes_what_came_after_the_checkpoint() {
        let root = tempfile::tempdir().expect("tempdir");
        let output = OutputDir::open(&root.path().join("out")).expect("open");
        fs::create_dir(output.path().join("sub")).expect("mkdir");
        fs::write(output.path().join("a.txt"), "1\n2\n").expect("write");
        fs::write(output.path().join("sub/b.txt"), "x").expect("write");
        let committed = output.sync().expect("sync");
        assert_eq!(
            committed,
            [
                OutputLen {
                    path: "a.txt".into(),
                    len: 4
                },
                OutputLen {
                    path: "sub/b.txt".into(),
                    len: 1
                },
            ]
        );
        // After the checkpoint: more lines, a new file.
        fs::write(output.path().join("a.txt"), "1\n2\n3\n").expect("append");
        fs::write(output.path().join("sub/c.txt"), "new").expect("write");
        let restored = output.restore(&committed).expect("restore");
        assert_eq!(
            restored,
            Restored {
                truncated: 1,
                bytes_dropped: 2,
                removed: 1
            }
        );
        assert_eq!(output.sync().expect("sync"), committed);
        assert_eq!(
            fs::read_to_string(output.path().join("a.txt")).expect("read"),
            "1\n2\n"
        );
    }

    #[test]
    fn a_file_cut_short_outside_the_job_stops_the_run() {
        let root = tempfile::tempdir().expect("tempdir");
        let output = OutputDir::open(root.path()).expect("open");
        fs::write(output.path().join("a.txt"), "1\n2\n").expect("write");
        let committed = output.sync().expect("sync");
        fs::write(output.path().join("a.txt"), "1").expect("shorten");
        let error = output.restore(&committed).expect_err("shorter");
        assert!(error.to_string().contains("append-only"), "{error}");
        fs::remove_file(output.path().join("a.txt")).expect("remove");
        let error = output.restore(&committed).expect_err("missing");
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
