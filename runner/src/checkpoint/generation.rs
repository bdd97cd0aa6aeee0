//! A job's two generations of records, whatever keeps them: reading one (the same
//! decoding policy for every store) and choosing the newest usable one.

use std::path::PathBuf;

use super::format::FormatError;
use super::{MAX_RECORD_LEN, Record, StoreError};

/// What one generation holds.
#[derive(Debug, Clone)]
pub enum Slot {
    /// No file or object.
    Missing,
    /// A usable record.
    Usable(Record),
    /// Something that is not a usable record, and why.
    Unusable(String),
}

impl Slot {
    /// A stored record of `len` bytes, before it is read: unusable if no record is that
    /// large, so that it is never read into memory.
    pub(crate) fn too_large(len: u64) -> Option<Slot> {
        (len > MAX_RECORD_LEN)
            .then(|| Slot::Unusable(format!("it is {len} bytes, larger than any checkpoint")))
    }

    /// The stored bytes at `path` (a file, or an object's URL) as a generation.
    ///
    /// A record of a newer format is an error, not an unusable generation: it is a newer
    /// runner's, which falling back would destroy. (A version field of garbage is far
    /// larger: that is damage.)
    pub(crate) fn decode(bytes: &[u8], path: impl Into<PathBuf>) -> Result<Slot, StoreError> {
        match Record::decode(bytes) {
            Ok(record) => Ok(Slot::Usable(record)),
            Err(problem @ FormatError::UnsupportedVersion(2..=255)) => Err(StoreError::Corrupt {
                path: path.into(),
                problem: format!(
                    "{problem}: use a newer runner (or --start-over to discard the job's state)"
                ),
            }),
            Err(problem) => Ok(Slot::Unusable(problem.to_string())),
        }
    }
}

/// Which generation holds the newest usable record, for the next commit's rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Newest {
    /// The latest: it becomes the previous generation when the next commit replaces it.
    Latest,
    /// The previous one, or none: the latest is missing or unusable, and the next commit
    /// replaces it without touching the previous generation.
    NotLatest,
}

/// Picks the newest usable generation (`latest`, the newest record as last committed, and
/// `previous`, the one before it, shown in messages as the two names), noting any
/// fallback.
pub(crate) fn choose(
    [latest_name, previous_name]: [String; 2],
    latest: Slot,
    previous: Slot,
    notes: &mut Vec<String>,
) -> Result<(Option<Record>, Newest), StoreError> {
    Ok(match (latest, previous) {
        (Slot::Usable(latest), Slot::Usable(previous)) if previous.sequence > latest.sequence => {
            (Some(previous), Newest::NotLatest)
        }
        (Slot::Usable(latest), Slot::Unusable(problem)) => {
            notes.push(format!(
                "the previous checkpoint generation `{}` is unusable ({problem}); the newest \
                 is intact and the next checkpoint replaces it",
                previous_name
            ));
            (Some(latest), Newest::Latest)
        }
        (Slot::Usable(latest), _) => (Some(latest), Newest::Latest),
        (Slot::Unusable(problem), Slot::Usable(previous)) => {
            notes.push(format!(
                "checkpoint `{}` is unusable ({problem}): falling back to the previous \
                 generation `{}`, checkpoint {}",
                latest_name, previous_name, previous.sequence
            ));
            (Some(previous), Newest::NotLatest)
        }
        (Slot::Missing, Slot::Usable(previous)) => {
            notes.push(format!(
                "`{}` is missing (a commit was cut off between its renames): resuming from \
                 the previous generation `{}`, checkpoint {}",
                latest_name, previous_name, previous.sequence
            ));
            (Some(previous), Newest::NotLatest)
        }
        (Slot::Missing, Slot::Missing) => (None, Newest::NotLatest),
        (latest, previous) => {
            let describe = |name, slot| match slot {
                Slot::Unusable(problem) => format!("`{name}` is unusable ({problem})"),
                _ => format!("`{name}` is missing"),
            };
            return Err(StoreError::NoUsableCheckpoint(format!(
                "{}, and {}",
                describe(&latest_name, latest),
                describe(&previous_name, previous)
            )));
        }
    })
}
