//! The stored checkpoint record: a versioned header, the output lengths, then the job's
//! payload.
//!
//! ```text
//! offset size  field (integers little-endian)
//!  0      8    magic "RUNRCKPT"
//!  8      2    format version (2)
//! 10      2    header length in bytes (96 in version 2; readers skip what they do not know)
//! 12      4    flags: bit 0 set when the job completed with this record (the others 0)
//! 16      8    sequence number: 1 for a job's first commit, +1 for each one after
//! 24      8    fencing number of the run that wrote it
//! 32      8    when it was written, in milliseconds since the Unix epoch
//! 40     32    SHA-256 of the job module that wrote it
//! 72      8    length of the outputs section
//! 80      8    payload length
//! 88      4    CRC-32 of the outputs section and the payload
//! 92      4    CRC-32 of bytes 0..92
//! 96      -    outputs section: a u16 length and the output directory's absolute host
//!              path (length 0: the run had no output directory); then per file a u16
//!              path length, the UTF-8 path relative to the output directory
//!              ('/'-separated), and its u64 committed length
//!  -      -    payload
//! ```
//!
//! The bytes come from disk and are not trusted: decoding checks every length against
//! the bytes actually present before using it, allocates nothing a length field asks
//! for, and accepts only output paths that stay inside the output directory.

use std::fmt;

/// The first bytes of every record.
pub const MAGIC: &[u8; 8] = b"RUNRCKPT";
const VERSION: u16 = 2;
/// The header's length in the current version.
pub const HEADER_LEN: usize = 96;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// One committed checkpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// 1 for a job's first commit, one more for each commit after it.
    pub sequence: u64,
    /// The fencing number of the run that wrote it.
    pub fence: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub written_at_ms: u64,
    /// SHA-256 of the job module that wrote it.
    pub module_digest: Digest,
    /// The output directory (`--output`) the record tracks, as a canonical host path.
    pub output_dir: Option<String>,
    /// The committed length of each file in the output directory, sorted by path.
    pub outputs: Vec<OutputLen>,
    /// The job's state, opaque to the runner.
    pub payload: Vec<u8>,
    /// Whether the job completed: the runner writes this record when the job returns
    /// `completed`, and a later run does not run the job again.
    pub completed: bool,
}

/// Bit 0 of the flags: the job completed.
const COMPLETED: u32 = 1;

/// A file of the output directory and its committed length.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutputLen {
    /// The path relative to the output directory, `/`-separated.
    pub path: String,
    /// Its length in bytes when the record was committed.
    pub len: u64,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("sequence", &self.sequence)
            .field("fence", &self.fence)
            .field("outputs", &self.outputs)
            .field("payload_len", &self.payload.len())
            .field("completed", &self.completed)
            .finish_non_exhaustive()
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Too short to hold a header, or the magic is wrong.
    #[error("not a runner checkpoint (bad magic or truncated header)")]
    NotACheckpoint,
    /// Written in a format this runner does not read.
    #[error("written in checkpoint format version {0}; this runner reads version {VERSION}")]
    UnsupportedVersion(u16),
    /// The header is damaged.
    #[error("the header is damaged (checksum mismatch)")]
    HeaderChecksum,
    /// The lengths in the header disagree with the record's length (a torn write).
    #[error("the record is {actual} bytes, its header says {expected} (truncated or torn)")]
    Length {
        /// From the header.
        expected: u128,
        /// In the file.
        actual: u64,
    },
    /// The outputs section or the payload is damaged.
    #[error("the body is damaged (checksum mismatch)")]
    BodyChecksum,
    /// The outputs section is malformed, or names a path outside the output directory.
    #[error("the list of output files is malformed: {0}")]
    Outputs(&'static str),
}

impl Record {
    /// The header and the outputs section as stored for this record holding `payload`
    /// (its own, or the same bytes where they are); the payload follows them. Writing
    /// the payload separately spares a copy of a large one.
    pub fn head(&self, payload: &[u8]) -> Vec<u8> {
        // Paths come from the file system and are far shorter than 64 KiB; the output
        // directory refuses longer ones before they get here.
        let push_path = |bytes: &mut Vec<u8>, path: &str| {
            let len = u16::try_from(path.len()).unwrap_or(u16::MAX);
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&path.as_bytes()[..usize::from(len)]);
        };
        let mut outputs = Vec::new();
        push_path(&mut outputs, self.output_dir.as_deref().unwrap_or(""));
        for output in &self.outputs {
            push_path(&mut outputs, &output.path);
            outputs.extend_from_slice(&output.len.to_le_bytes());
        }
        let mut body_crc = crc32fast::Hasher::new();
        body_crc.update(&outputs);
        body_crc.update(payload);

        let mut head = vec![0u8; HEADER_LEN];
        head[..8].copy_from_slice(MAGIC);
        head[8..10].copy_from_slice(&VERSION.to_le_bytes());
        head[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        let flags = if self.completed { COMPLETED } else { 0 };
        head[12..16].copy_from_slice(&flags.to_le_bytes());
        head[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        head[24..32].copy_from_slice(&self.fence.to_le_bytes());
        head[32..40].copy_from_slice(&self.written_at_ms.to_le_bytes());
        head[40..72].copy_from_slice(&self.module_digest);
        head[72..80].copy_from_slice(&(outputs.len() as u64).to_le_bytes());
        head[80..88].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        head[88..92].copy_from_slice(&body_crc.finalize().to_le_bytes());
        let header_crc = crc32fast::hash(&head[..92]);
        head[92..96].copy_from_slice(&header_crc.to_le_bytes());
        head.extend_from_slice(&outputs);
        head
    }

    /// The record as stored: header, outputs, payload.
    pub fn encode(&self) -> Vec<u8> {
        [self.head(&self.payload), self.payload.clone()].concat()
    }

    /// Reads a stored record, checking everything the header promises.
    pub fn decode(bytes: &[u8]) -> Result<Record, FormatError> {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(FormatError::NotACheckpoint);
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let header_len = usize::from(u16::from_le_bytes([bytes[10], bytes[11]]));
        if header_len < HEADER_LEN || bytes.len() < header_len {
            return Err(FormatError::NotACheckpoint);
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if crc32fast::hash(&bytes[..92]) != u32_at(92) {
            return Err(FormatError::HeaderChecksum);
        }
        let (outputs_len, payload_len) = (u64_at(72), u64_at(80));
        // In u128, so that no pair of lengths can overflow.
        let expected = header_len as u128 + u128::from(outputs_len) + u128::from(payload_len);
        if expected != bytes.len() as u128 {
            return Err(FormatError::Length {
                expected,
                actual: bytes.len() as u64,
            });
        }
        // Both fit: their sum with the header is the slice's length.
        let (outputs, payload) = bytes[header_len..].split_at(outputs_len as usize);
        let mut body_crc = crc32fast::Hasher::new();
        body_crc.update(outputs);
        body_crc.update(payload);
        if body_crc.finalize() != u32_at(88) {
            return Err(FormatError::BodyChecksum);
        }
        let (output_dir, outputs) = decode_outputs(outputs)?;
        Ok(Record {
            sequence: u64_at(16),
            fence: u64_at(24),
            written_at_ms: u64_at(32),
            module_digest: bytes[40..72].try_into().expect("32 bytes"),
            output_dir,
            outputs,
            payload: payload.to_vec(),
            completed: u32_at(12) & COMPLETED != 0,
        })
    }
}

/// A u16-length-prefixed UTF-8 string, and the bytes after it.
fn take_path(bytes: &[u8]) -> Result<(&str, &[u8]), FormatError> {
    let (len, rest) = split(bytes, 2)?;
    let (path, rest) = split(rest, usize::from(u16::from_le_bytes([len[0], len[1]])))?;
    let path =
        std::str::from_utf8(path).map_err(|_| FormatError::Outputs("a path is not UTF-8"))?;
    Ok((path, rest))
}

fn decode_outputs(bytes: &[u8]) -> Result<(Option<String>, Vec<OutputLen>), FormatError> {
    let (dir, mut bytes) = take_path(bytes)?;
    let output_dir = match dir {
        "" => None,
        dir if dir.starts_with('/') && !dir.contains('\0') => Some(dir.to_owned()),
        _ => {
            return Err(FormatError::Outputs(
                "the output directory is not an absolute path",
            ));
        }
    };
    if output_dir.is_none() && !bytes.is_empty() {
        return Err(FormatError::Outputs(
            "output files without an output directory",
        ));
    }
    let mut outputs: Vec<OutputLen> = Vec::new();
    while !bytes.is_empty() {
        let (path, rest) = take_path(bytes)?;
        let (len, rest) = split(rest, 8)?;
        bytes = rest;
        if !is_safe_relative_path(path) {
            return Err(FormatError::Outputs(
                "a path is not a plain relative path inside the output directory",
            ));
        }
        if outputs
            .last()
            .is_some_and(|last| last.path.as_str() >= path)
        {
            return Err(FormatError::Outputs("the paths are not sorted and unique"));
        }
        outputs.push(OutputLen {
            path: path.to_owned(),
            len: u64::from_le_bytes(len.try_into().expect("8 bytes")),
        });
    }
    Ok((output_dir, outputs))
}

fn split(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8]), FormatError> {
    if bytes.len() < at {
        return Err(FormatError::Outputs("an entry is cut short"));
    }
    Ok(bytes.split_at(at))
}

/// True for `a/b.txt`; false for anything that could leave the directory or is not a
/// file name: empty, absolute, `.`/`..` components, empty components, NUL.
pub fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            sequence: 7,
            fence: 3,
            written_at_ms: 1_700_000_000_000,
            module_digest: [0xab; 32],
            output_dir: Some("/data/out".into()),
            outputs: vec![
                OutputLen {
                    path: "a/out.txt".into(),
                    len: 12,
                },
                OutputLen {
                    path: "b.txt".into(),
                    len: 0,
                },
            ],
            payload: b"state".to_vec(),
            completed: false,
        }
    }

    #[test]
    fn round_trip() {
        let bytes = record().encode();
        assert_eq!(bytes.len(), HEADER_LEN + 2 + 9 + 2 + 9 + 8 + 2 + 5 + 8 + 5);
        assert_eq!(Record::decode(&bytes), Ok(record()));
        let empty = Record {
            output_dir: None,
            outputs: Vec::new(),
            payload: Vec::new(),
            completed: true,
            ..record()
        };
        assert_eq!(Record::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = record().encode();
        for len in 0..bytes.len() {
            assert!(Record::decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = record().encode();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(Record::decode(&damaged).is_err(), "bit {bit} flipped");
        }
    }

    #[test]
    fn other_versions_are_named() {
        let mut bytes = record().encode();
        bytes[8] = 9;
        assert_eq!(
            Record::decode(&bytes),
            Err(FormatError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn paths_that_leave_the_directory_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/",
            "a\0b",
        ] {
            assert!(!is_safe_relative_path(bad), "{bad:?}");
            let mut evil = record();
            evil.outputs = vec![OutputLen {
                path: bad.into(),
                len: 0,
            }];
            assert!(Record::decode(&evil.encode()).is_err(), "{bad:?}");
        }
        assert!(is_safe_relative_path("a/b/c.txt"));
        assert!(is_safe_relative_path(".hidden"));
    }

    proptest::proptest! {
        /// Arbitrary bytes, and bytes that start like a record: an error or a record,
        /// never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            valid_prefix in 0usize..HEADER_LEN + 40,
        ) {
            let _ = Record::decode(&bytes);
            let mut spliced = record().encode();
            spliced.truncate(valid_prefix.min(spliced.len()));
            spliced.extend_from_slice(&bytes);
            let _ = Record::decode(&spliced);
        }

        /// Any record survives a round trip, and every truncation of it is an error.
        #[test]
        fn records_round_trip_and_every_truncation_fails(
            sequence in proptest::prelude::any::<u64>(),
            fence in proptest::prelude::any::<u64>(),
            lengths in proptest::collection::btree_map("[a-z]{1,8}(/[a-z]{1,8}){0,2}", proptest::prelude::any::<u64>(), 0..5),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            completed in proptest::prelude::any::<bool>(),
        ) {
            let original = Record {
                sequence,
                fence,
                written_at_ms: sequence ^ fence,
                module_digest: [sequence as u8; 32],
                output_dir: Some("/out".into()),
                outputs: lengths
                    .into_iter()
                    .map(|(path, len)| OutputLen { path, len })
                    .collect(),
                payload,
                completed,
            };
            let bytes = original.encode();
            proptest::prop_assert_eq!(Record::decode(&bytes), Ok(original));
            for len in 0..bytes.len() {
                proptest::prop_assert!(Record::decode(&bytes[..len]).is_err());
            }
        }
    }

    #[test]
    fn huge_lengths_are_refused_without_allocating() {
        let mut bytes = record().encode();
        bytes[80..88].copy_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..92]);
        bytes[92..96].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Record::decode(&bytes),
            Err(FormatError::Length { .. })
        ));
    }
}
