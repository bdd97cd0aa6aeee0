//! The local-directory store: one directory per job under the state directory.
//!
//! ```text
//! STATE_DIR/JOB_ID/lock             flock(2)ed by the run that owns the job
//! STATE_DIR/JOB_ID/fence            the newest fencing number handed out
//! STATE_DIR/JOB_ID/checkpoint       the newest record
//! STATE_DIR/JOB_ID/checkpoint.prev  the generation before it
//! ```
//!
//! A commit writes the record to a new temporary file in the same directory, fsyncs it,
//! renames `checkpoint` to `checkpoint.prev`, renames the new file to `checkpoint` and
//! fsyncs the directory. A crash at any point leaves the old or the new record as the
//! newest usable one, never a mix: loading takes the usable generation with the highest
//! sequence number, so a crash between the two renames (no `checkpoint`) or a damaged
//! `checkpoint` falls back to `checkpoint.prev`. A failed fsync fails the commit
//! (retrying an fsync can report success after the data was lost).
//!
//! Ownership: a run holds the lock for its whole life and takes a fencing number one
//! above any seen before; every commit first checks that `fence` still holds its number.
//! The lock keeps two runners apart; the fence stops a runner whose lock did not (a lock
//! file removed under it, a shared file system that does not honour flock) from
//! overwriting its successor's state. The fence covers commits from the moment the new
//! owner's number is durable; a stale commit that lands between the new owner reading
//! the records and writing its number is superseded by the new owner's first commit, and
//! a check-then-rename window of microseconds remains in each commit. Only the lock keeps
//! two runners from writing one output directory at the same time. A run without an
//! output directory writes its number while its job starts, and its first commit waits
//! for the number to be durable (a failed write fails every commit of the run); with one,
//! the number (which records the directory) is durable before the job starts. The lock
//! is held until the write is over, even by a run that ends first.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tempfile::NamedTempFile;

use super::format::FormatError;
use super::{JobId, Loaded, MAX_RECORD_LEN, Newest, Record, Slot, Store, StoreError, choose};

/// The newest record.
pub const CHECKPOINT: &str = "checkpoint";
/// The record before it.
pub const PREVIOUS: &str = "checkpoint.prev";
/// The newest fencing number.
pub const FENCE: &str = "fence";
/// The lock file.
pub const LOCK: &str = "lock";
const TEMP_PREFIX: &str = ".tmp.";

/// A job's directory in the state directory, not (yet) owned.
#[derive(Debug, Clone)]
pub struct JobDir {
    dir: PathBuf,
}

/// The lock on a job, held until dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl JobDir {
    /// The directory of `job_id` under `state_dir`; nothing is touched.
    pub fn new(state_dir: &Path, job_id: &JobId) -> Self {
        JobDir {
            dir: state_dir.join(job_id.as_str()),
        }
    }

    /// The job's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The path of one of the job's files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The paths of the two generations, as messages show them.
    fn names(&self) -> [String; 2] {
        [CHECKPOINT, PREVIOUS].map(|name| self.file(name).display().to_string())
    }

    /// Creates the directory if needed and checks that files can be written in it, so
    /// that an unusable state directory is an error before the job starts rather than at
    /// its first save.
    pub fn create(&self) -> Result<(), StoreError> {
        create_dir_durably(&self.dir)?;
        // No fsync: it would cost every start milliseconds on a real disk.
        let mut probe = self.temp_file()?;
        probe
            .write_all(b"probe")
            .map_err(StoreError::io("write", probe.path()))
    }

    /// Takes the job's lock if it is free; otherwise says who holds it.
    ///
    /// The lock is held on a read-only descriptor: a run keeps no file in the state
    /// directory open for writing between commits.
    pub fn try_lock(&self) -> Result<Result<Lock, String>, StoreError> {
        let path = self.file(LOCK);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        // Read-write: on NFS an exclusive flock is a write lock, which needs it.
        let mut file = match open() {
            // `runner state reset` removed the directory while this runner waited.
            Err(error) if error.kind() == ErrorKind::NotFound => {
                create_dir_durably(&self.dir)?;
                open()
            }
            opened => opened,
        }
        .map_err(StoreError::io("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Err(holder(&mut file))),
            Err(TryLockError::Error(error)) => return Err(StoreError::io("lock", path)(error)),
        }
        // `runner state reset` removes the lock file while holding it: a lock taken on
        // a file no longer at the path guards nothing. Try again on the new one.
        let identity = |meta: fs::Metadata| (meta.dev(), meta.ino());
        let current = fs::metadata(&path).map(identity).ok();
        if current != file.metadata().map(identity).ok() {
            return Ok(Err("a runner that was removing the job's state".to_owned()));
        }
        let holder = format!("pid {} on {}", std::process::id(), hostname());
        file.set_len(0)
            .and_then(|()| file.write_all(holder.as_bytes()))
            .map_err(StoreError::io("write", &path))?;
        Ok(Ok(Lock { _file: file }))
    }

    /// Who holds the job's lock, if anyone; takes it for no longer than the check.
    pub fn owner(&self) -> Result<Option<String>, StoreError> {
        let path = self.file(LOCK);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::io("open", path)(error)),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => Ok(Some(holder(&mut file))),
            Err(TryLockError::Error(error)) => Err(StoreError::io("lock", path)(error)),
        }
    }

    /// Reads one generation.
    pub fn read_slot(&self, name: &str) -> Result<Slot, StoreError> {
        let path = self.file(name);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Slot::Missing),
            Err(error) => return Err(StoreError::io("open", path)(error)),
        };
        let len = file
            .metadata()
            .map_err(StoreError::io("read", &path))?
            .len();
        if len > MAX_RECORD_LEN {
            return Ok(Slot::Unusable(format!(
                "it is {len} bytes, larger than any checkpoint"
            )));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)
            .map_err(StoreError::io("read", &path))?;
        match Record::decode(&bytes) {
            Ok(record) => Ok(Slot::Usable(record)),
            // Not damage: a newer runner's record, which falling back would destroy.
            // (A version field of garbage is far larger: that is damage.)
            Err(problem @ FormatError::UnsupportedVersion(2..=255)) => Err(StoreError::Corrupt {
                path,
                problem: format!(
                    "{problem}: use a newer runner (or --start-over to discard the job's state)"
                ),
            }),
            Err(problem) => Ok(Slot::Unusable(problem.to_string())),
        }
    }

    /// The newest usable record, as a run would load it, and what the user should know
    /// about the choice.
    pub fn load_newest(&self) -> Result<(Option<Record>, Vec<String>), StoreError> {
        let mut notes = Vec::new();
        let (record, _) = choose(
            self.names(),
            self.read_slot(CHECKPOINT)?,
            self.read_slot(PREVIOUS)?,
            &mut notes,
        )?;
        Ok((record, notes))
    }

    /// The newest fencing number handed out and the output directory of the run that
    /// took it, if a run ever took one.
    pub fn read_fence(&self) -> Result<Option<Fence>, StoreError> {
        let path = self.file(FENCE);
        let mut text = String::new();
        match File::open(&path) {
            Ok(file) => file
                .take(64 << 10)
                .read_to_string(&mut text)
                .map_err(StoreError::io("read", &path))?,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::io("read", path)(error)),
        };
        let mut lines = text.lines();
        let number = lines.next().and_then(|line| line.trim().parse().ok());
        let output_dir = match lines.next() {
            None => Some(None),
            Some(line) => line.strip_prefix("output ").map(|dir| Some(dir.to_owned())),
        };
        match (number, output_dir) {
            (Some(number), Some(output_dir)) => Ok(Some(Fence { number, output_dir })),
            _ => Err(StoreError::Corrupt {
                path,
                problem: "it does not hold a fencing number".into(),
            }),
        }
    }

    /// A new, uniquely named file in the job's directory, removed unless persisted.
    fn temp_file(&self) -> Result<NamedTempFile, StoreError> {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(StoreError::io("create a temporary file in", &self.dir))
    }

    /// The temporary file of one commit: `.tmp.checkpoint.FENCE.SEQUENCE`, a name no
    /// other commit uses (each run has its own fencing number), and one a test can
    /// point a fault at. Removed unless persisted.
    fn commit_file(&self, fence: u64, sequence: u64) -> Result<NamedTempFile, StoreError> {
        let name = format!("{TEMP_PREFIX}{CHECKPOINT}.{fence}.{sequence}");
        let create = || {
            tempfile::Builder::new()
                .prefix(&name)
                .rand_bytes(0)
                .tempfile_in(&self.dir)
        };
        create()
            .or_else(|error| {
                // Only this run uses its fencing number: a file of that name is its own,
                // left by a commit of this sequence that failed before its rename.
                if error.kind() != ErrorKind::AlreadyExists {
                    return Err(error);
                }
                fs::remove_file(self.dir.join(&name))?;
                create()
            })
            .map_err(StoreError::io("create", self.dir.join(&name)))
    }

    /// Writes `bytes` to `name` atomically and durably: temporary file, fsync, rename,
    /// directory fsync.
    fn replace(&self, name: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
        let mut temp = self.temp_file()?;
        for part in parts {
            temp.write_all(part)
                .map_err(StoreError::io("write", temp.path()))?;
        }
        temp.as_file()
            .sync_all()
            .map_err(StoreError::io("fsync", temp.path()))?;
        let target = self.file(name);
        temp.persist(&target)
            .map_err(|error| StoreError::io("rename into place", &target)(error.error))?;
        sync_dir(&self.dir)
    }

    /// Removes the files of crashed commits. Only under the lock: nobody else commits.
    fn remove_leftovers(&self) -> Result<(), StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(StoreError::io("list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", &self.dir))?;
            if entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(TEMP_PREFIX.as_bytes())
            {
                // Another runner's start-up probe may vanish meanwhile.
                remove_if_present(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// Who holds a lock, as its holder wrote it into the file.
fn holder(file: &mut File) -> String {
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    match holder.trim() {
        "" => "another runner".to_owned(),
        holder => format!("another runner ({holder})"),
    }
}

/// This host's name, for people.
pub(crate) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "this host".to_owned())
}

/// What the `fence` file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The newest fencing number handed out.
    pub number: u64,
    /// The output directory of the run that took it.
    pub output_dir: Option<String>,
}

/// Removes a file; one that is already gone is not an error. Returns whether it was there.
fn remove_if_present(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
        Err(error) => Err(StoreError::io("remove", path)(error)),
    }
}

/// Creates `dir` and any missing parents, and makes their entries durable (a commit in
/// a directory that a crash can make vanish is not durable).
pub fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let missing: Vec<&Path> = dir.ancestors().take_while(|path| !path.exists()).collect();
    fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
    for created in missing.iter().rev() {
        if let Some(parent) = created
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Fsyncs a directory, so that the entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

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
    _lock: Arc<Lock>,
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
            _lock: Arc::new(self.lock),
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
            _lock: lock,
        };
        (store, self.loaded)
    }
}

impl LocalStore {
    /// The job's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

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
                source: std::io::Error::other(problem.clone()),
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

    fn commit(&self, record: &Record) -> Result<(), StoreError> {
        self.fence_durable()?;
        self.check_fence()?;
        let head = record.head();
        let len = head.len() as u64 + record.payload.len() as u64;
        if len > MAX_RECORD_LEN {
            return Err(StoreError::Corrupt {
                path: self.dir.file(CHECKPOINT),
                problem: format!(
                    "the new record would be {len} bytes, more than the {MAX_RECORD_LEN} a \
                     checkpoint may take (too many output files?)"
                ),
            });
        }
        let mut temp = self.dir.commit_file(self.fence, record.sequence)?;
        temp.write_all(&head)
            .and_then(|()| temp.write_all(&record.payload))
            .map_err(StoreError::io("write", temp.path()))?;
        temp.as_file()
            .sync_all()
            .map_err(StoreError::io("fsync", temp.path()))?;
        // Again, just before the state changes: the write and fsync may have taken long.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::OutputLen;

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
        }
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
            store.commit(&record(sequence, 1)).expect("commit");
        }
        assert_eq!(names(store.dir()), [CHECKPOINT, PREVIOUS, FENCE, LOCK]);
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
        store.commit(&record(1, 1)).expect("commit");
        store.commit(&record(2, 1)).expect("commit");
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
        store.commit(&record(2, 2)).expect("commit");
        drop(store);
        let (_, loaded) = acquire(root.path());
        assert_eq!(loaded.record, Some(record(2, 2)));
        assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    }

    #[test]
    fn no_usable_generation_refuses_unless_starting_over() {
        let root = tempfile::tempdir().expect("tempdir");
        let (store, _) = acquire(root.path());
        store.commit(&record(1, 1)).expect("commit");
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
        store.commit(&record(1, store.fence())).expect("commit");
    }

    #[test]
    fn a_fencing_number_written_while_the_job_starts_is_durable_before_the_first_commit() {
        let root = tempfile::tempdir().expect("tempdir");
        let (old, _) = acquire(root.path());
        old.commit(&record(1, old.fence())).expect("commit");
        drop(old);
        let dir = job_dir(root.path());
        let lock = dir.try_lock().expect("lock").expect("free");
        let (store, loaded) = Claim::new(dir.clone(), lock, false)
            .expect("claim")
            .own_while_starting();
        assert_eq!((store.fence(), loaded.record), (2, Some(record(1, 1))));
        store.commit(&record(2, 2)).expect("commit");
        assert_eq!(dir.read_fence().expect("fence").map(|f| f.number), Some(2));
        store.commit(&record(3, 2)).expect("and again");
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
        old.commit(&record(1, old.fence())).expect("commit");
        // The lock did not hold (its file was removed): a second run takes the job.
        fs::remove_file(old.dir.file(LOCK)).expect("remove lock");
        let (new, loaded) = acquire(root.path());
        assert_eq!(new.fence(), 2);
        assert_eq!(loaded.record, Some(record(1, 1)));
        assert!(matches!(
            old.commit(&record(2, 1)),
            Err(StoreError::Fenced { ours: 1, .. })
        ));
        new.commit(&record(2, 2)).expect("the new owner commits");
    }

    #[test]
    fn leftover_temp_files_are_removed_and_change_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let (store, _) = acquire(root.path());
        store.commit(&record(1, 1)).expect("commit");
        // A crash after writing the temp file but before the rename.
        fs::write(store.dir.file(".tmp.crashed"), b"half-writ").expect("write");
        drop(store);
        let (store, loaded) = acquire(root.path());
        assert_eq!(loaded.record, Some(record(1, 1)));
        assert_eq!(names(store.dir()), [CHECKPOINT, FENCE, LOCK]);
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
