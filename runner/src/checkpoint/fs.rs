//! The local-directory store: `STATE_DIR/JOB_ID/checkpoint`.
//!
//! A commit writes the record to `checkpoint.tmp` in the same directory, fsyncs it,
//! renames it over `checkpoint` and fsyncs the directory. A crash at any point leaves
//! the old or the new record, never a mix; a failed fsync fails the commit (retrying an
//! fsync can report success after the data was lost).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::{JobId, Record, Store, StoreError};

const CHECKPOINT: &str = "checkpoint";
const TEMP: &str = "checkpoint.tmp";

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
        fs::create_dir_all(&dir).map_err(StoreError::io("create directory", &dir))?;
        let store = LocalStore { dir };
        let probe = store.dir.join(TEMP);
        File::create(&probe)
            .and_then(|file| file.sync_all())
            .map_err(StoreError::io("write", &probe))?;
        fs::remove_file(&probe).map_err(StoreError::io("remove", &probe))?;
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
        let temp = self.dir.join(TEMP);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(StoreError::io("create", &temp))?;
        file.write_all(&record.encode())
            .map_err(StoreError::io("write", &temp))?;
        file.sync_all().map_err(StoreError::io("fsync", &temp))?;
        drop(file);
        let target = self.checkpoint_path();
        fs::rename(&temp, &target).map_err(StoreError::io("rename into place", &target))?;
        // The rename is durable only once the directory entry is on disk.
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(StoreError::io("fsync directory", &self.dir))?;
        Ok(())
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
        assert!(!store.dir().join(TEMP).exists());
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
        fs::write(store.dir().join(TEMP), b"half-writ").expect("write");
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
