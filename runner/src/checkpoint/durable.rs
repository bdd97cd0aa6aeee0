//! Directory operations whose effect must survive a crash: a commit in a directory that
//! a crash can make vanish, or whose entries are not yet on disk, is not durable.

use std::fs::{self, File};
use std::path::Path;

use super::StoreError;

/// Creates `dir` and any missing parents, and makes their entries durable (a commit in
/// a directory that a crash can make vanish is not durable).
pub(crate) fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
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
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}
