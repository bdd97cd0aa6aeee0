//! A job in a local directory, owned by this run: the claim (lock held, records read)
//! and the store its commits go to.

use std::fs::{self, File};
use std::io::{self, ErrorKind, IoSlice, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::dir::{CHECKPOINT, FENCE, JobDir, Lock, PREVIOUS, remove_if_present};
use crate::checkpoint::durable::sync_dir;
use crate::checkpoint::{
    BoxFuture, Commit, Landed, Loaded, MAX_RECORD_LEN, Newest, Record, Slot, Store, StoreError,
    choose,
};

/// A job's checkpoints in a local directory, owned by this run.
#[derive(Debug)]
pub struct LocalStore {
    dir: JobDir,
    fence: u64,
    /// The write of this run's fencing number, when it runs while the job starts: every
    /// commit waits for it to be durable.
    fence_write: Mutex<FenceWrite>,
    newest: Mutex<Newest>,
    /// Shared with the thread writing the fencing number, if any: the job stays locked
    /// until that write is over, even when the store goes first.
    lock: Arc<Lock>,
    /// Whether no run owned the job before this one.
    first: bool,
}

/// Where the write of a run's fencing number stands.
#[derive(Debug, Default)]
struct FenceWrite {
    /// The thread writing it, until a commit has waited for it.
    pending: Option<JoinHandle<Result<(), StoreError>>>,
    /// Why it could not be written; `None` once it is durable (or while pending).
    failed: Option<String>,
}

/// A job whose lock this run holds and whose records it has read, before it takes a
/// fencing number: the last moment to refuse the job without a trace.
#[derive(Debug)]
pub struct Claim {
    dir: JobDir,
    lock: Lock,
    newest_fence: u64,
    newest: Newest,
    /// What the run found.
    pub loaded: Loaded,
}

impl Claim {
    /// Reads the job whose lock is `lock`: removes what crashed commits left and loads
    /// the newest usable record (falling back to the previous generation and saying
    /// so). With `start_over`, removes the job's records instead of loading them.
    pub fn new(dir: JobDir, lock: Lock, start_over: bool) -> Result<Claim, StoreError> {
        dir.remove_leftovers()?;
        let mut loaded = Loaded::default();
        let fenced_before = match dir.read_fence() {
            Ok(fence) => fence,
            Err(error) if start_over => {
                // Removed before anything else: a `fence` that cannot be replaced (a
                // directory) must refuse the run now, not fail every save after the
                // checkpoints are gone.
                remove_if_present(&dir.file(FENCE))?;
                loaded
                    .notes
                    .push(format!("starting over: ignoring {error}"));
                None
            }
            Err(error) => return Err(error),
        };
        let (record, newest, record_fences) = if start_over {
            let mut fences = Vec::new();
            for name in [CHECKPOINT, PREVIOUS] {
                // A usable record's fencing number still counts: a stale owner of it
                // must stay fenced.
                if let Ok(Slot::Usable(record)) = dir.read_slot(name) {
                    fences.push(record.fence);
                }
                let path = dir.file(name);
                if remove_if_present(&path)? {
                    loaded.notes.push(format!(
                        "starting over as asked (--start-over): removed `{}`",
                        path.display()
                    ));
                }
            }
            sync_dir(dir.path())?;
            (None, Newest::NotLatest, fences)
        } else {
            let latest = dir.read_slot(CHECKPOINT)?;
            let previous = dir.read_slot(PREVIOUS)?;
            let fences = [&latest, &previous]
                .into_iter()
                .filter_map(|slot| match slot {
                    Slot::Usable(record) => Some(record.fence),
                    _ => None,
                })
                .collect();
            let (record, newest) = choose(dir.names(), latest, previous, &mut loaded.notes)?;
            (record, newest, fences)
        };
        loaded.record = record;
        loaded.earlier_output = fenced_before
            .as_ref()
            .and_then(|fence| fence.output_dir.clone());
        let newest_fence = record_fences
            .into_iter()
            .chain(fenced_before.map(|fence| fence.number))
            .max()
            .unwrap_or(0);
        if newest_fence == u64::MAX {
            return Err(StoreError::Corrupt {
                path: dir.file(FENCE),
                problem: "the fencing numbers are exhausted".into(),
            });
        }
        Ok(Claim {
            dir,
            lock,
            newest_fence,
            newest,
            loaded,
        })
    }

    /// Takes ownership: a fencing number one above any the job has seen, durably
    /// recorded with the run's output directory, after which any older owner's commit
    /// is refused.
    pub fn own(self, output_dir: Option<&str>) -> Result<(LocalStore, Loaded), StoreError> {
        let fence = self.newest_fence + 1;
        let mut text = format!("{fence}\n");
        if let Some(dir) = output_dir {
            text.push_str(&format!("output {dir}\n"));
        }
        self.dir.replace(FENCE, &[text.as_bytes()])?;
        let store = LocalStore {
            dir: self.dir,
            fence,
            fence_write: Mutex::default(),
            newest: Mutex::new(self.newest),
            lock: Arc::new(self.lock),
            first: self.newest_fence == 0,
        };
        Ok((store, self.loaded))
    }

    /// [`Claim::own`] for a run without an output directory, with the fencing number
    /// written (two fsyncs) while the job starts rather than before: the first commit
    /// waits for it to be durable, so no record carries a number that is not. Until it
    /// is, an older owner's commit can still land, as one can between reading the
    /// records and taking the number, and this run's first commit supersedes it. With an
    /// output directory the number must come first: it records the directory, which
    /// tells the next run that files there without a checkpoint are this run's.
    ///
    /// If the write fails, every commit of the run fails with `io` naming it: writing
    /// the number again could overwrite a newer owner's.
    pub fn own_while_starting(self) -> (LocalStore, Loaded) {
        let fence = self.newest_fence + 1;
        let lock = Arc::new(self.lock);
        let (dir, held) = (self.dir.clone(), Arc::clone(&lock));
        let write = move || {
            let written = dir.replace(FENCE, &[format!("{fence}\n").as_bytes()]);
            drop(held);
            written
        };
        let state = match std::thread::Builder::new()
            .name("runner-fence".into())
            .spawn(write)
        {
            Ok(pending) => FenceWrite {
                pending: Some(pending),
                failed: None,
            },
            Err(error) => FenceWrite {
                pending: None,
                failed: Some(format!("cannot start a thread: {error}")),
            },
        };
        let store = LocalStore {
            dir: self.dir,
            fence,
            fence_write: Mutex::new(state),
            newest: Mutex::new(self.newest),
            lock,
            first: self.newest_fence == 0,
        };
        (store, self.loaded)
    }
}

impl LocalStore {
    /// Waits for this run's fencing number to be durable, if it is still being written.
    fn fence_durable(&self) -> Result<(), StoreError> {
        let mut write = self
            .fence_write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pending) = write.pending.take() {
            write.failed = match pending.join() {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some("the thread writing it panicked".into()),
            };
        }
        match &write.failed {
            None => Ok(()),
            Some(problem) => Err(StoreError::Io {
                action: "take a fencing number in",
                path: self.dir.file(FENCE),
                cause: io::Error::other(problem.clone()),
            }),
        }
    }

    fn check_fence(&self) -> Result<(), StoreError> {
        match self.dir.read_fence()? {
            Some(fence) if fence.number == self.fence => Ok(()),
            newest => Err(StoreError::Fenced {
                ours: self.fence,
                newest: newest.map_or_else(|| "none".to_owned(), |fence| fence.number.to_string()),
            }),
        }
    }
}

impl Store for LocalStore {
    fn fence(&self) -> u64 {
        self.fence
    }

    fn shown(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// Nothing to do: the lock goes with the store.
    fn release(&self, _hurry: bool) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }

    /// Removes the job's directory if no run took a fencing number before this one and
    /// no checkpoint is there; once this run's number is written, under its lock.
    fn discard_if_first(&self) {
        if !self.first {
            return;
        }
        let _ = self.fence_durable();
        let exists = |name| fs::symlink_metadata(self.dir.file(name)).is_ok();
        if exists(CHECKPOINT) || exists(PREVIOUS) {
            return;
        }
        if let Err(error) = self.dir.remove_all(&self.lock) {
            tracing::warn!("cannot remove the state of the job that did not start: {error}");
        }
    }

    fn commit(&self, record: &Record, payload: &[u8], landed: Landed) -> Commit {
        let committed = tokio::task::block_in_place(|| self.commit_here(record, payload));
        if matches!(committed, Ok(()) | Err(StoreError::NotDurable(_))) {
            landed();
        }
        Commit::Done(committed)
    }
}

impl LocalStore {
    /// [`Store::commit`], on this thread: the job's, so that a small commit costs its
    /// system calls and no hand-off to another thread and back (which would add a third
    /// to it).
    fn commit_here(&self, record: &Record, payload: &[u8]) -> Result<(), StoreError> {
        self.fence_durable()?;
        let head = record.head(payload);
        let len = head.len() as u64 + payload.len() as u64;
        if len > MAX_RECORD_LEN {
            return Err(StoreError::Corrupt {
                path: self.dir.file(CHECKPOINT),
                problem: format!(
                    "the new record would be {len} bytes, more than the {MAX_RECORD_LEN} a \
                     checkpoint may take (too many output files?)"
                ),
            });
        }
        let temp = self.dir.commit_file(self.fence, record.sequence)?;
        write_both(temp.as_file(), &head, payload).map_err(StoreError::io("write", temp.path()))?;
        temp.as_file()
            .sync_all()
            .map_err(StoreError::io("fsync", temp.path()))?;
        // Just before the state changes, not before the write: the write and fsync may
        // take long, and a check before them would only spare a fenced run's write.
        self.check_fence()?;
        let mut newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        let target = self.dir.file(CHECKPOINT);
        if *newest == Newest::Latest {
            let previous = self.dir.file(PREVIOUS);
            match fs::rename(&target, &previous) {
                // Missing after a commit that failed between its renames: nothing to keep.
                Err(error) if error.kind() != ErrorKind::NotFound => {
                    return Err(StoreError::io("keep the previous generation as", previous)(
                        error,
                    ));
                }
                _ => {}
            }
        }
        temp.persist(&target)
            .map_err(|error| StoreError::io("rename into place", &target)(error.error))?;
        *newest = Newest::Latest;
        // The renames are durable only once the directory is. If that fails the new
        // record is in place but may not survive a crash: say so, distinctly.
        sync_dir(self.dir.path()).map_err(|error| StoreError::NotDurable(Box::new(error)))
    }
}

/// Writes `head` and then `body` to `file` without concatenating them: in one system
/// call, unless the kernel takes less than the whole.
fn write_both(mut file: &File, head: &[u8], body: &[u8]) -> io::Result<()> {
    let written = loop {
        match file.write_vectored(&[IoSlice::new(head), IoSlice::new(body)]) {
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            written => break written?,
        }
    };
    let (head_left, body_written) = match written.checked_sub(head.len()) {
        Some(into_body) => (&[][..], into_body),
        None => (&head[written..], 0),
    };
    file.write_all(head_left)?;
    file.write_all(&body[body_written..])
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::dir::LOCK;
    use super::*;
    use crate::checkpoint::{JobId, OutputLen};

    fn job_dir(root: &Path) -> JobDir {
        let dir = JobDir::new(root, &JobId::new("job").expect("id"));
        dir.create().expect("create");
        dir
    }

    fn acquire(root: &Path) -> (LocalStore, Loaded) {
        let dir = job_dir(root);
        let lock = dir.try_lock().expect("lock").expect("free");
        Claim::new(dir, lock, false)
            .and_then(|claim| claim.own(Some("/out")))
            .expect("acquire")
    }

    fn record(sequence: u64, fence: u64) -> Record {
        Record {
            sequence,
            fence,
            written_at_ms: 0,
            module_digest: [1; 32],
            output_dir: Some("/out".into()),
            outputs: vec![OutputLen {
                path: "out.txt".into(),
                len: sequence * 10,
            }],
            payload: vec![sequence as u8; 1000],
            completed: false,
        }
    }

    fn commit(store: &LocalStore, record: &Record) -> Result<(), StoreError> {
        store.commit_here(record, &record.payload)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn commits_keep_two_generations() {
        let root = tempfile::tempdir().expect("tempdir");
        let (store, loaded) = acquire(root.path());
        assert_eq!(loaded.record, None);
        assert_eq!(loaded.earlier_output, None);
        assert_eq!(store.fence(), 1);
        for sequence in 1..=3 {
            commit(&store, &record(sequence, 1)).expect("commit");
        }
        assert_eq!(names(store.dir.path()), [CHECKPOINT, PREVIOUS, FENCE, LOCK]);
        drop(store);
        let (store, loaded) = acquire(root.path());
        assert_eq!(loaded.record, Some(record(3, 1)));
        assert_eq!(loaded.earlier_output.as_deref(), Some("/out"));
        assert_eq!(store.fence(), 2);
        assert!(matches!(
            store.dir.read_slot(PREVIOUS).expect("read"),
            Slot::Usable(previous) if previous == record(2, 1)
        ));
    }

    #[test]
    fn a_damaged_newest_falls_back_to_the_previous_generation() {
        let root = tempfile::tempdir().expect("tempdir");
        let (store, _) = acquire(root.path());
        commit(&store, &record(1, 1)).expect("commit");
        commit(&store, &record(2, 1)).expect("commit");
        let path = store.dir.file(CHECKPOINT);
        let bytes = fs::read(&path).expect("read");
        fs::write(&path, &bytes[..bytes.len() - 3]).expect("tear");
        drop(store);

        let (store, loaded) = acquire(root.path());
        assert_eq!(loaded.record, Some(record(1, 1)));
        assert!(
            loaded.notes[0].contains("falling back"),
            "{:?}",
            loaded.notes
        );
        // The next commit replaces the damaged file and keeps the good generation.
        commit(&store, &record(2, 2)).expect("commit");
        drop(store);
        let (_, loaded) = acquire(root.path());
        assert_eq!(loaded.record, Some(record(2, 2)));
        assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    }

    #[test]
    fn no_usable_generation_refuses_unless_starting_over() {
        let root = tempfile::tempdir().expect("tempdir");
        let (store, _) = acquire(root.path());
        commit(&store, &record(1, 1)).expect("commit");
        fs::write(store.dir.file(CHECKPOINT), b"RUNRCKPT garbage").expect("damage");
        drop(store);
        let dir = job_dir(root.path());
        let lock = dir.try_lock().expect("lock").expect("free");
        let error = Claim::new(dir.clone(), lock, false).expect_err("unusable");
        let message = error.to_string();
        assert!(
            message.contains(&*dir.file(CHECKPOINT).to_string_lossy()),
            "{message}"
        );
        assert!(message.contains("--start-over"), "{message}");
        // Refusing changed nothing.
        assert_eq!(
            fs::read(dir.file(CHECKPOINT)).expect("kept"),
            b"RUNRCKPT garbage"
        );

        let lock = dir.try_lock().expect("lock").expect("free");
        let (store, loaded) = Claim::new(dir.clone(), lock, true)
            .and_then(|claim| claim.own(None))
            .expect("start over");
        assert_eq!(loaded.record, None);
        assert_eq!(loaded.notes.len(), 1, "{:?}", loaded.notes);
        commit(&store, &record(1, store.fence())).expect("commit");
    }

    #[test]
    fn a_fencing_number_written_while_the_job_starts_is_durable_before_the_first_commit() {
        let root = tempfile::tempdir().expect("tempdir");
        let (old, _) = acquire(root.path());
        commit(&old, &record(1, old.fence())).expect("commit");
        drop(old);
        let dir = job_dir(root.path());
        let lock = dir.try_lock().expect("lock").expect("free");
        let (store, loaded) = Claim::new(dir.clone(), lock, false)
            .expect("claim")
            .own_while_starting();
        assert_eq!((store.fence(), loaded.record), (2, Some(record(1, 1))));
        commit(&store, &record(2, 2)).expect("commit");
        assert_eq!(dir.read_fence().expect("fence").map(|f| f.number), Some(2));
        commit(&store, &record(3, 2)).expect("and again");
    }

    #[test]
    fn the_lock_is_exclusive_and_names_its_holder() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = job_dir(root.path());
        let lock = dir.try_lock().expect("lock").expect("free");
        let holder = dir.try_lock().expect("lock").expect_err("held");
        assert!(
            holder.contains(&format!("pid {}", std::process::id())),
            "{holder}"
        );
        drop(lock);
        dir.try_lock().expect("lock").expect("free again");
    }

    #[test]
    fn a_newer_owner_fences_the_old_one() {
        let root = tempfile::tempdir().expect("tempdir");
        let (old, _) = acquire(root.path());
        commit(&old, &record(1, old.fence())).expect("commit");
        // The lock did not hold (its file was removed): a second run takes the job.
        fs::remove_file(old.dir.file(LOCK)).expect("remove lock");
        let (new, loaded) = acquire(root.path());
        assert_eq!(new.fence(), 2);
        assert_eq!(loaded.record, Some(record(1, 1)));
        assert!(matches!(
            commit(&old, &record(2, 1)),
            Err(StoreError::Fenced { ours: 1, .. })
        ));
        commit(&new, &record(2, 2)).expect("the new owner commits");
    }

    #[test]
    fn leftover_temp_files_are_removed_and_change_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let (store, _) = acquire(root.path());
        commit(&store, &record(1, 1)).expect("commit");
        // A crash after writing the temp file but before the rename.
        fs::write(store.dir.file(".tmp.crashed"), b"half-writ").expect("write");
        drop(store);
        let (store, loaded) = acquire(root.path());
        assert_eq!(loaded.record, Some(record(1, 1)));
        assert_eq!(names(store.dir.path()), [CHECKPOINT, FENCE, LOCK]);
    }

    #[test]
    fn unusable_state_dir_is_an_error_naming_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("not-a-dir");
        fs::write(&file, b"").expect("write");
        let error = JobDir::new(&file, &JobId::new("job").expect("id"))
            .create()
            .expect_err("unusable");
        assert!(error.to_string().contains("not-a-dir"), "{error}");
    }
}
