//! A job's directory under the state directory, and its files: the lock, the fencing
//! number, the two generations and the atomic, durable writes of them.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::checkpoint::durable::{create_dir_durably, sync_dir};
use crate::checkpoint::{JobId, Record, Slot, StoreError, choose};

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
    pub(super) fn names(&self) -> [String; 2] {
        [CHECKPOINT, PREVIOUS].map(|name| self.file(name).display().to_string())
    }

    /// Creates the directory if needed and checks that files can be written in it, so
    /// that an unusable state directory is an error before the job starts rather than at
    /// its first save.
    pub fn create(&self) -> Result<(), StoreError> {
        create_dir_durably(&self.dir)?;
        self.check_real_dir()?;
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
            open_regular(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false),
                &path,
            )
        };
        // Read-write: on NFS an exclusive flock is a write lock, which needs it.
        let mut file = match open() {
            // `runner state reset` removed the directory while this runner waited.
            Err(error) if error.kind() == ErrorKind::NotFound => {
                create_dir_durably(&self.dir)?;
                self.check_real_dir()?;
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
        let current = fs::symlink_metadata(&path).map(identity).ok();
        if current != file.metadata().map(identity).ok() {
            return Ok(Err("a runner that was removing the job's state".to_owned()));
        }
        let holder = crate::checkpoint::holder();
        file.set_len(0)
            .and_then(|()| file.write_all(holder.as_bytes()))
            .map_err(StoreError::io("write", &path))?;
        Ok(Ok(Lock { _file: file }))
    }

    /// Who holds the job's lock, if anyone; takes it for no longer than the check.
    pub fn owner(&self) -> Result<Option<String>, StoreError> {
        let path = self.file(LOCK);
        let mut file = match open_regular(OpenOptions::new().read(true), &path) {
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
        let mut file = match open_regular(OpenOptions::new().read(true), &path) {
            Ok(file) => file,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Slot::Missing),
            Err(error) => return Err(StoreError::io("open", path)(error)),
        };
        let len = file
            .metadata()
            .map_err(StoreError::io("read", &path))?
            .len();
        if let Some(unusable) = Slot::too_large(len) {
            return Ok(unusable);
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)
            .map_err(StoreError::io("read", &path))?;
        Slot::decode(&bytes, path)
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
        match open_regular(OpenOptions::new().read(true), &path) {
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
    pub(super) fn temp_file(&self) -> Result<NamedTempFile, StoreError> {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(StoreError::io("create a temporary file in", &self.dir))
    }

    /// The temporary file of one commit: `.tmp.checkpoint.FENCE.SEQUENCE`, a name no
    /// other commit uses (each run has its own fencing number), and one a test can
    /// point a fault at. Removed unless persisted.
    pub(super) fn commit_file(
        &self,
        fence: u64,
        sequence: u64,
    ) -> Result<NamedTempFile, StoreError> {
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
    pub(super) fn replace(&self, name: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
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
    pub(super) fn remove_leftovers(&self) -> Result<(), StoreError> {
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

impl JobDir {
    /// Removes the job's directory and everything in it, under `_held`, the job's lock:
    /// the lock file goes last, so that a runner that opened it before sees that it is
    /// no longer the job's lock file and tries again (and then makes the directory
    /// anew, which is its own then).
    pub(super) fn remove_all(&self, _held: &Lock) -> Result<(), StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(StoreError::io("list", &self.dir))?;
        for entry in entries {
            let path = entry.map_err(StoreError::io("list", &self.dir))?.path();
            if path.file_name().is_some_and(|name| name != LOCK) {
                remove_if_present(&path)?;
            }
        }
        remove_if_present(&self.file(LOCK))?;
        match fs::remove_dir(&self.dir) {
            // A runner waiting for the job made a new lock file: the directory is its now.
            Err(error) if error.kind() == ErrorKind::DirectoryNotEmpty => {}
            removed => removed.map_err(StoreError::io("remove", &self.dir))?,
        }
        match self.dir.parent() {
            Some(state_dir) => sync_dir(state_dir),
            None => Ok(()),
        }
    }

    /// Refuses a job directory that is a symbolic link (or not a directory): the state
    /// directory is the runner's alone, and a link in it would send its writes elsewhere.
    pub(super) fn check_real_dir(&self) -> Result<(), StoreError> {
        let meta = fs::symlink_metadata(&self.dir).map_err(StoreError::io("inspect", &self.dir))?;
        if meta.file_type().is_dir() {
            return Ok(());
        }
        Err(StoreError::Io {
            action: "use",
            path: self.dir.clone(),
            cause: io::Error::other(format!(
                "it is {}, not a directory: the runner never follows one in the state directory",
                kind(meta.file_type())
            )),
        })
    }
}

/// Opens a file of the job's directory with `options`, without following a symbolic
/// link and without blocking on a FIFO; anything but a regular file is an error that
/// says what it is. The state directory is the runner's alone: a link there must never
/// send a write (or a read) elsewhere.
fn open_regular(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| {
            if error.raw_os_error() == Some(libc::ELOOP) {
                io::Error::other(
                    "it is a symbolic link, which the runner never follows in the state directory",
                )
            } else {
                error
            }
        })?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(io::Error::other(format!(
            "it is {}, not a regular file: the runner never reads or writes one in the state \
             directory",
            kind(file_type)
        )));
    }
    Ok(file)
}

/// What kind of file `file_type` is, for people.
fn kind(file_type: fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "a device"
    } else {
        "a regular file"
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

/// What the `fence` file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The newest fencing number handed out.
    pub number: u64,
    /// The output directory of the run that took it.
    pub output_dir: Option<String>,
}

/// Removes a file; one that is already gone is not an error. Returns whether it was there.
pub(super) fn remove_if_present(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
        Err(error) => Err(StoreError::io("remove", path)(error)),
    }
}
