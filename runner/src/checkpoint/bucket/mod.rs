//! The bucket store: a job's checkpoints as objects in an object store that honours
//! conditional writes (S3 and S3-compatible servers: [`s3`]), so that a job resumes on
//! whichever node it lands. Another such store (GCS, Azure) is a module beside [`s3`]
//! with its URL and client builder, and one arm in `Location::parse`.
//!
//! ```text
//! s3://BUCKET/PREFIX/JOB_ID/head                         owner, fencing number, records
//! s3://BUCKET/PREFIX/JOB_ID/records/FENCE-SEQUENCE-RUN   one record each
//! ```
//!
//! The head is the only object that is ever replaced, and only by compare-and-swap: each
//! write of it is a PUT with `If-Match` on the ETag this run last saw (`If-None-Match: *`
//! for a job's first), which S3 refuses with 412 if anyone wrote it since. A run owns the
//! job from the moment its write of a head with a fencing number above any before (one
//! above the head it replaced, or above every record's) is accepted, until another
//! run's is.
//!
//! A commit PUTs the record under a name only this run uses (its fencing number, the
//! record's sequence and the run's random identity), then swaps the head to point at it,
//! the record before it becoming the previous generation. The swap is the commit point:
//! once S3 accepts it the commit is whole and durable, and until then the head names the
//! old records (a swap whose reply was lost may have landed: the run finds its own head
//! at its next write and goes on from it). A run that has lost the job fails the swap,
//! because the head it last saw is gone, and its save gets `fenced`; the record it wrote
//! is named by no head, and the first owner to take the job after it was written removes
//! it. A stale owner can therefore never change what the head names, and a record object
//! is never written by another run than its own: newer state is safe from it.
//!
//! Ownership needs no live process to release it. The owner renews its lease by
//! rewriting the head every third of its lease (`--lease`, 30 s by default) and releases
//! it when the run ends. A successor takes over a released head at once, a head that has
//! not changed for the owner's lease (by the successor's own clock, so clock skew does
//! not matter) or whose last renewal is older than the lease plus a minute of clock skew;
//! while the head keeps changing, the owner is alive, and the successor gives up after
//! `--lock-timeout`. A crashed owner so delays its successor by at most its lease. The
//! lease only decides when a successor may try; safety rests on the swap alone: a
//! successor that takes over an owner still running (a partition, a paused process, a
//! wrong clock) makes that owner's next head write fail, so the old owner can lose work
//! since its last checkpoint but never overwrite the new owner's. Its lease renewal finds
//! out too, and stops its job at once.

mod acquire;
mod admin;
mod head;
mod owner;
pub mod s3;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use super::{Acquire, Acquired, BoxFuture, Inspection, JobId, Place, Removed, Slot, StoreError};
use head::{Generation, Head};

/// The object naming the job's owner and newest records.
const HEAD: &str = "head";
/// The folder of the job's records.
const RECORDS: &str = "records";
/// How far apart two hosts' clocks may be before a successor's reading of the owner's
/// last renewal time can be wrong.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A job's place in a bucket, not (yet) owned.
#[derive(Debug, Clone)]
struct BucketJob {
    client: Arc<dyn ObjectStore>,
    /// The bucket, as a URL: `s3://BUCKET`.
    root: String,
    /// The location the job is in, as `--state-dir` named it.
    location: String,
    /// The job's folder.
    base: ObjectPath,
    job_id: JobId,
    /// What to say with a failed request: why it may have failed (no credentials).
    hint: Option<&'static str>,
}

impl BucketJob {
    /// The job `job_id` in folder `base` of the bucket `client` reaches; nothing is sent
    /// yet.
    fn new(
        client: Arc<dyn ObjectStore>,
        root: String,
        location: String,
        base: ObjectPath,
        job_id: JobId,
    ) -> BucketJob {
        BucketJob {
            client,
            root,
            location,
            base,
            job_id,
            hint: None,
        }
    }

    /// A failed request, with the hint of why it may have failed, if there is one.
    fn explain(&self, error: StoreError) -> StoreError {
        match (self.hint, error) {
            (Some(hint), error @ StoreError::Remote { .. }) => StoreError::Remote {
                action: "use",
                object: self.url(),
                cause: format!("{hint}: {error}").into(),
            },
            (_, error) => error,
        }
    }

    /// The job's place, as `s3://BUCKET/PREFIX/JOB_ID`.
    fn url(&self) -> String {
        format!("{}/{}", self.root, self.base)
    }

    fn object(&self, name: &str) -> ObjectPath {
        self.base.clone().join(name)
    }

    fn record(&self, name: &str) -> ObjectPath {
        self.base.clone().join(RECORDS).join(name)
    }

    fn shown(&self, path: &ObjectPath) -> String {
        format!("{}/{path}", self.root)
    }

    fn remote(
        &self,
        action: &'static str,
        path: &ObjectPath,
    ) -> impl FnOnce(object_store::Error) -> StoreError {
        let object = self.shown(path);
        move |error| StoreError::Remote {
            action,
            object,
            cause: Box::new(error),
        }
    }

    /// One generation, as the head names it.
    async fn read_slot(&self, generation: Option<&Generation>) -> Result<Slot, StoreError> {
        let Some(generation) = generation else {
            return Ok(Slot::Missing);
        };
        let path = self.record(&generation.name);
        let got = match self.client.get(&path).await {
            Err(object_store::Error::NotFound { .. }) => {
                return Ok(Slot::Unusable("the object is missing".into()));
            }
            got => got.map_err(self.remote("read", &path))?,
        };
        if let Some(unusable) = Slot::too_large(got.meta.size) {
            return Ok(unusable);
        }
        let bytes = got.bytes().await.map_err(self.remote("read", &path))?;
        Ok(match Slot::decode(&bytes, self.shown(&path))? {
            Slot::Usable(record) if record.sequence != generation.sequence => {
                Slot::Unusable(format!(
                    "it holds checkpoint {}, not checkpoint {} as the head says",
                    record.sequence, generation.sequence
                ))
            }
            slot => slot,
        })
    }

    /// The highest fencing number among the job's record objects: what a head that is
    /// lost or damaged leaves to go by.
    async fn newest_record_fence(&self) -> Result<u64, StoreError> {
        let records = self.records().await?;
        Ok(records.iter().map(|(_, fence)| *fence).max().unwrap_or(0))
    }

    /// The job's record objects and their fencing numbers.
    async fn records(&self) -> Result<Vec<(ObjectPath, u64)>, StoreError> {
        let folder = self.base.clone().join(RECORDS);
        let mut listing = self.client.list(Some(&folder));
        let mut records = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(self.remote("list", &folder))?;
            if let Some(fence) = meta.location.filename().and_then(record_fence) {
                records.push((meta.location, fence));
            }
        }
        Ok(records)
    }

    /// Removes the record objects no head names any more: those of commits that failed
    /// their swap (this run's own, or a stale owner's) and of generations replaced.
    /// Only for the owner, whose head it reads `keep` from.
    async fn remove_unnamed(&self, keep: Vec<String>, below: u64) {
        let Ok(records) = self.records().await else {
            return;
        };
        for (path, fence) in records {
            // Only older runs' records: this run's are its own business.
            let named = path
                .filename()
                .is_some_and(|name| keep.iter().any(|kept| kept == name));
            if fence < below && !named {
                let _ = self.client.delete(&path).await;
            }
        }
    }

    /// The generations' objects, as messages show them.
    fn generation_names(&self, head: &Head) -> [String; 2] {
        [&head.latest, &head.previous].map(|generation| match generation {
            Some(generation) => self.shown(&self.record(&generation.name)),
            None => "none".to_owned(),
        })
    }
}

impl Place for BucketJob {
    /// Nothing to prepare: the first request is the acquisition's.
    fn prepare(&self) -> anyhow::Result<()> {
        Ok(())
    }

    fn acquire<'a>(&'a self, request: Acquire<'a>) -> BoxFuture<'a, anyhow::Result<Acquired>> {
        Box::pin(async move {
            let acquired = self
                .clone()
                .acquire_job(request)
                .await
                .map_err(|error| self.explain(error))
                .with_context(|| format!("cannot load the state of job `{}`", self.job_id))?;
            Ok(acquired)
        })
    }

    fn inspect(&self) -> BoxFuture<'_, anyhow::Result<Inspection>> {
        Box::pin(async {
            match self
                .inspect_job()
                .await
                .map_err(|error| self.explain(error))?
            {
                Some(inspection) => Ok(inspection),
                None => anyhow::bail!("job `{}` has no state in `{}`", self.job_id, self.location),
            }
        })
    }

    fn reset(&self) -> BoxFuture<'_, anyhow::Result<Result<Removed, String>>> {
        Box::pin(async {
            let lines = match self
                .reset_job()
                .await
                .map_err(|error| self.explain(error))?
            {
                Ok(lines) => lines,
                Err(owned) => return Ok(Err(owned)),
            };
            if lines.is_empty() {
                anyhow::bail!("job `{}` has no state in `{}`", self.job_id, self.location);
            }
            Ok(Ok(Removed {
                shown: self.url(),
                lines,
                note: None,
            }))
        })
    }
}

/// The fencing number in a record object's name, `FENCE-SEQUENCE-RUN`.
fn record_fence(name: &str) -> Option<u64> {
    name.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_carry_the_fencing_number() {
        assert_eq!(
            record_fence("00000000000000000007-00000000000000000042-0123456789abcdef"),
            Some(7)
        );
        assert_eq!(record_fence("precondition-probe"), None);
        assert_eq!(record_fence("7"), None);
    }
}
