//! The on-disk checkpoint record: a versioned header, then the job's payload.
//!
//! ```text
//! offset size  field (integers little-endian)
//!  0      8    magic "RUNRCKPT"
//!  8      2    format version (1)
//! 10      2    header length in bytes (40 in version 1; readers skip what they do not know)
//! 12      4    flags (0; reserved)
//! 16      8    sequence number: 1 for a job's first commit, +1 for each one after
//! 24      8    payload length
//! 32      4    CRC-32 of the payload
//! 36      4    CRC-32 of bytes 0..36
//! 40      -    payload
//! ```
//!
//! The header length field leaves room for later fields (fencing number, module
//! digest) without breaking readers of version 1.

use std::fmt;

const MAGIC: &[u8; 8] = b"RUNRCKPT";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 40;

/// One committed checkpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// 1 for a job's first commit, one more for each commit after it.
    pub sequence: u64,
    /// The job's state, opaque to the runner.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("sequence", &self.sequence)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Too short to hold a header, or the magic is wrong.
    #[error("not a runner checkpoint (bad magic or truncated header)")]
    NotACheckpoint,
    /// Written by a newer runner.
    #[error("written in checkpoint format version {0}; this runner reads version {VERSION}")]
    UnsupportedVersion(u16),
    /// The header is damaged.
    #[error("the header is damaged (checksum mismatch)")]
    HeaderChecksum,
    /// The payload length disagrees with the file's length (a torn write).
    #[error("the payload is {actual} bytes, the header says {expected} (truncated or torn)")]
    Length {
        /// From the header.
        expected: u64,
        /// In the file.
        actual: u64,
    },
    /// The payload is damaged.
    #[error("the payload is damaged (checksum mismatch)")]
    PayloadChecksum,
}

impl Record {
    /// The header as stored; the payload follows it. Writing the two separately spares a
    /// copy of a large payload.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..10].copy_from_slice(&VERSION.to_le_bytes());
        header[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        // 12..16: flags, 0.
        header[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        header[24..32].copy_from_slice(&(self.payload.len() as u64).to_le_bytes());
        header[32..36].copy_from_slice(&crc32fast::hash(&self.payload).to_le_bytes());
        let header_crc = crc32fast::hash(&header[..36]);
        header[36..40].copy_from_slice(&header_crc.to_le_bytes());
        header
    }

    /// The record as stored: header, then payload.
    pub fn encode(&self) -> Vec<u8> {
        [&self.header()[..], &self.payload].concat()
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
        if crc32fast::hash(&bytes[..36]) != u32_at(36) {
            return Err(FormatError::HeaderChecksum);
        }
        let payload = &bytes[header_len..];
        let expected = u64_at(24);
        if payload.len() as u64 != expected {
            return Err(FormatError::Length {
                expected,
                actual: payload.len() as u64,
            });
        }
        if crc32fast::hash(payload) != u32_at(32) {
            return Err(FormatError::PayloadChecksum);
        }
        Ok(Record {
            sequence: u64_at(16),
            payload: payload.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            sequence: 7,
            payload: b"state".to_vec(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = record().encode();
        assert_eq!(bytes.len(), HEADER_LEN + 5);
        assert_eq!(Record::decode(&bytes), Ok(record()));
        let empty = Record {
            sequence: 1,
            payload: Vec::new(),
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
    fn newer_versions_are_named() {
        let mut bytes = record().encode();
        bytes[8] = 9;
        assert_eq!(
            Record::decode(&bytes),
            Err(FormatError::UnsupportedVersion(9))
        );
    }
}
