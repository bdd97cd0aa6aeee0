//! The local-directory store: `STATE_DIR/JOB_ID/checkpoint`.
//!
//! A commit writes the record to a new temporary file in the same directory (a unique
//! name per commit, so that two writers can never share one), fsyncs it, renames it over
//! `checkpoint` and fsyncs the directory. A crash at any point leaves the old or the new
//! record, never a mix; a failed fsync fails the commit (retrying an fsync can report
//! success after the data was lost).

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::{JobId, Record, Store, StoreError};

const CHECKPOINT: &str = "checkpoint";
const TEMP_PREFIX: &str = ".checkpoint.";

/// Checkpoints in a local directory.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) the job's directory under `state_dir`, and checks
    /// that a checkpoint can be written there, so that an unusable state directory is
    /// an error before the job starts rather than at its first save.
    pub fn open(state_dir: &Path, job_id: &JobId) -> Result<Self, StoreError> {
        let dir = state_dir.join(job_id.as_str());
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
            // The new directory's entry must be durable before a commit inside it is.
            sync_dir(state_dir)?;
        }
        let store = LocalStore { dir };
        // Creating and writing a file shows the directory is usable; no fsync, which
        // would cost every start milliseconds on a real disk.
        let mut probe = store.temp_file()?;
        probe
            .write_all(b"probe")
            .map_err(StoreError::io("write", probe.path()))?;
        Ok(store)
    }

    /// The job's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding the committed record.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT)
    }

    /// A new, uniquely named file in the job's directory, removed unless persisted.
    fn temp_file(&self) -> Result<NamedTempFile, StoreError> {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(StoreError::io("create a temporary file in", &self.dir))
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

impl Store for LocalStore {
    fn load(&self) -> Result<Option<Record>, StoreError> {
        let path = self.checkpoint_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::io("read", path)(error)),
        };
        Record::decode(&bytes)
            .map(Some)
            .map_err(|problem| StoreError::Corrupt { path, problem })
    }

    fn commit(&self, record: &Record) -> Result<(), StoreError> {
        let mut temp = self.temp_file()?;
        temp.write_all(&record.header())
            .and_then(|()| temp.write_all(&record.payload))
            .map_err(StoreError::io("write", temp.path()))?;
        temp.as_file()
            .sync_all()
            .map_err(StoreError::io("fsync", temp.path()))?;
        let target = self.checkpoint_path();
        temp.persist(&target)
            .map_err(|error| StoreError::io("rename into place", &target)(error.error))?;
        // The rename is durable only once the directory entry is on disk. If that fails
        // the new record is in place but may not survive a crash: say so, distinctly.
        sync_dir(&self.dir).map_err(|error| StoreError::NotDurable(Box::new(error)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &Path) -> LocalStore {
        LocalStore::open(root, &JobId::new("job").expect("id")).expect("open")
    }

    #[test]
    fn commit_then_load() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = store(root.path());
        assert_eq!(store.load().expect("load"), None);
        for sequence in 1..=3 {
            let record = Record {
                sequence,
                payload: vec![sequence as u8; 1000],
            };
            store.commit(&record).expect("commit");
            assert_eq!(store.load().expect("load"), Some(record));
        }
        let leftovers: Vec<_> = fs::read_dir(store.dir())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .filter(|name| name != CHECKPOINT)
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn corrupt_checkpoint_names_the_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = store(root.path());
        fs::write(store.checkpoint_path(), b"RUNRCKPT garbage").expect("write");
        let error = store.load().expect_err("corrupt");
        assert!(
            error
                .to_string()
                .contains(&*store.checkpoint_path().to_string_lossy()),
            "{error}"
        );
    }

    #[test]
    fn a_leftover_temp_file_does_not_change_the_committed_state() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = store(root.path());
        let record = Record {
            sequence: 1,
            payload: b"committed".to_vec(),
        };
        store.commit(&record).expect("commit");
        // A crash after writing the temp file but before the rename.
        fs::write(store.dir().join(".checkpoint.crashed.tmp"), b"half-writ").expect("write");
        assert_eq!(store.load().expect("load"), Some(record));
    }

    #[test]
    fn unusable_state_dir_is_an_error_naming_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("not-a-dir");
        fs::write(&file, b"").expect("write");
        let error = LocalStore::open(&file, &JobId::new("job").expect("id")).expect_err("unusable");
        assert!(error.to_string().contains("not-a-dir"), "{error}");
    }
}
