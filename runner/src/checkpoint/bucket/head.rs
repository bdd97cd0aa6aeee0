//! The head object: its format, and the one conditional write that swaps it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::{BucketJob, CLOCK_SKEW, HEAD};
use crate::checkpoint::StoreError;

/// The head's format; a head of a higher one is a newer runner's.
const HEAD_FORMAT: u32 = 1;
/// No head is larger.
const MAX_HEAD_LEN: u64 = 64 << 10;

/// The head: who owns the job, under which fencing number, and its newest records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Head {
    pub(super) format: u32,
    /// The newest fencing number handed out.
    pub(super) fence: u64,
    /// Who owns the job, for people; `None` once its owner released it.
    pub(super) owner: Option<String>,
    /// The run that wrote this head: with the fencing number, what tells a run its own
    /// write from another's.
    pub(super) run: String,
    /// One more at each write, so that each write is new content (and a new ETag).
    pub(super) beat: u64,
    /// When the owner last renewed its lease, in milliseconds since the Unix epoch.
    pub(super) renewed_ms: u64,
    /// The owner's lease, in milliseconds.
    pub(super) lease_ms: u64,
    /// The newest record.
    pub(super) latest: Option<Generation>,
    /// The record before it.
    pub(super) previous: Option<Generation>,
}

/// One record of the head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Generation {
    /// The object's name in the job's records folder.
    pub(super) name: String,
    /// The record's sequence number.
    pub(super) sequence: u64,
}

impl Head {
    pub(super) fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// A copy to write next: a new beat, renewed now.
    pub(super) fn renewed(&self) -> Head {
        Head {
            beat: self.beat + 1,
            renewed_ms: now_ms(),
            ..self.clone()
        }
    }

    /// The names of the records it refers to.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        [&self.latest, &self.previous]
            .into_iter()
            .flatten()
            .map(|generation| generation.name.as_str())
    }

    /// A new run's first head: `fence`, owned by `owner` for `lease`, naming the records
    /// `from` names (none without it).
    pub(super) fn new(
        fence: u64,
        owner: Option<String>,
        run: String,
        lease: Duration,
        from: Option<&Head>,
    ) -> Head {
        Head {
            format: HEAD_FORMAT,
            fence,
            owner,
            run,
            beat: 0,
            renewed_ms: now_ms(),
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            latest: from.and_then(|head| head.latest.clone()),
            previous: from.and_then(|head| head.previous.clone()),
        }
    }

    /// How long ago, by this host's clock, the owner last renewed its lease.
    pub(super) fn renewed_ago(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.renewed_ms))
    }

    /// Whether an owner may still hold the job by the time it last renewed, even with
    /// the hosts' clocks a minute apart.
    pub(super) fn may_be_held(&self) -> bool {
        self.owner.is_some() && self.renewed_ago() <= self.lease().saturating_add(CLOCK_SKEW)
    }
}

impl BucketJob {
    /// The head and its ETag, if the job has one; a head that is not one is `Err` with
    /// what is wrong.
    pub(super) async fn read_head(
        &self,
    ) -> Result<Option<(Result<Head, String>, String)>, StoreError> {
        let path = self.object(HEAD);
        let got = match self.client.get(&path).await {
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            got => got.map_err(self.remote("read", &path))?,
        };
        let etag = got.meta.e_tag.clone().ok_or_else(|| self.no_etag(&path))?;
        if got.meta.size > MAX_HEAD_LEN {
            let problem = format!("it is {} bytes, larger than any head", got.meta.size);
            return Ok(Some((Err(problem), etag)));
        }
        let bytes = got.bytes().await.map_err(self.remote("read", &path))?;
        let head = match serde_json::from_slice::<Head>(&bytes) {
            Ok(head) if head.format == HEAD_FORMAT => Ok(head),
            Ok(head) => {
                return Err(StoreError::Corrupt {
                    path: self.shown(&path).into(),
                    problem: format!(
                        "it is of format {}, from a newer runner: use a newer runner",
                        head.format
                    ),
                });
            }
            Err(error) => Err(format!("it is not a head: {error}")),
        };
        Ok(Some((head, etag)))
    }

    pub(super) fn no_etag(&self, path: &ObjectPath) -> StoreError {
        StoreError::Remote {
            action: "compare and swap",
            object: self.shown(path),
            cause: "the server sent no ETag, without which a write cannot be conditional".into(),
        }
    }

    /// Writes the head if `mode`'s condition holds: its new ETag, or `None` if someone
    /// wrote the head since the ETag the write was conditional on.
    pub(super) async fn put_head(
        &self,
        head: &Head,
        mode: PutMode,
    ) -> Result<Option<String>, StoreError> {
        let path = self.object(HEAD);
        let bytes = serde_json::to_vec(head).map_err(|error| StoreError::Remote {
            action: "encode",
            object: self.shown(&path),
            cause: Box::new(error),
        })?;
        match self
            .client
            .put_opts(&path, PutPayload::from(bytes), PutOptions::from(mode))
            .await
        {
            Ok(put) => put.e_tag.map(Some).ok_or_else(|| self.no_etag(&path)),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Ok(None),
            Err(error) => Err(self.remote("write", &path)(error)),
        }
    }
}

/// The condition of a write over the head of ETag `etag`.
pub(super) fn update(etag: &str) -> PutMode {
    PutMode::Update(UpdateVersion {
        e_tag: Some(etag.to_owned()),
        version: None,
    })
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A new run's identity: random, so that no two runs share one even when a job's state
/// was removed and its fencing numbers start again.
pub(super) fn run_id() -> String {
    let seed = (std::process::id(), SystemTime::now(), Instant::now());
    format!("{:016x}", RandomState::new().hash_one(format!("{seed:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_names_its_generations_and_reads_back() {
        let head = Head {
            format: HEAD_FORMAT,
            fence: 3,
            owner: Some("pid 1 on host".into()),
            run: run_id(),
            beat: 9,
            renewed_ms: 1,
            lease_ms: 30_000,
            latest: Some(Generation {
                name: "b".into(),
                sequence: 2,
            }),
            previous: Some(Generation {
                name: "a".into(),
                sequence: 1,
            }),
        };
        assert_eq!(head.names().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(head.lease(), Duration::from_secs(30));
        let bytes = serde_json::to_vec(&head).expect("encode");
        assert_eq!(
            serde_json::from_slice::<Head>(&bytes).expect("decode"),
            head
        );
        assert_ne!(run_id(), run_id());
    }
}
