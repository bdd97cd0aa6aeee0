//! The S3 store: a job's checkpoints as objects in an S3-compatible bucket, so that a job
//! resumes on whichever node it lands.
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

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::format::FormatError;
use super::{JobId, Loaded, MAX_RECORD_LEN, Newest, Record, Slot, Store, StoreError, choose};
use crate::cli::format_duration;

/// The object naming the job's owner and newest records.
pub const HEAD: &str = "head";
/// The folder of the job's records.
pub const RECORDS: &str = "records";
/// The object a run writes, then writes again with an `If-Match` that must fail, to check
/// that the server honours conditional writes.
const PROBE: &str = "precondition-probe";
/// The head's format; a head of a higher one is a newer runner's.
const HEAD_FORMAT: u32 = 1;
/// No head is larger.
const MAX_HEAD_LEN: u64 = 64 << 10;
/// How far apart two hosts' clocks may be before a successor's reading of the owner's
/// last renewal time can be wrong.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// A request's limits: a checkpoint that waits minutes on an unreachable server helps no
/// job, least of all one in its grace period.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request, body included: a record of hundreds of megabytes must fit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(15);

/// A state location in a bucket: `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    bucket: String,
    prefix: Option<ObjectPath>,
}

impl S3Url {
    /// `None` for text that is not an `s3://` URL; otherwise the URL, or what is wrong
    /// with it.
    pub fn parse(text: &str) -> Option<Result<S3Url, String>> {
        let rest = text.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'));
        if !valid_bucket {
            return Some(Err(format!(
                "`{text}` does not name a bucket: use s3://BUCKET/PREFIX, BUCKET being 3 to 63 \
                 lower-case letters, digits, '.' or '-'"
            )));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            None
        } else {
            match ObjectPath::parse(prefix) {
                Ok(path) => Some(path),
                Err(error) => {
                    return Some(Err(format!("`{text}` has an unusable prefix: {error}")));
                }
            }
        };
        Some(Ok(S3Url {
            bucket: bucket.to_owned(),
            prefix,
        }))
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        match &self.prefix {
            Some(prefix) => write!(f, "/{prefix}"),
            None => Ok(()),
        }
    }
}

/// A job's place in a bucket, not (yet) owned.
#[derive(Debug, Clone)]
pub struct S3Job {
    client: Arc<AmazonS3>,
    bucket: String,
    base: ObjectPath,
}

/// The head: who owns the job, under which fencing number, and its newest records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    format: u32,
    /// The newest fencing number handed out.
    fence: u64,
    /// Who owns the job, for people; `None` once its owner released it.
    owner: Option<String>,
    /// The run that wrote this head: with the fencing number, what tells a run its own
    /// write from another's.
    run: String,
    /// One more at each write, so that each write is new content (and a new ETag).
    beat: u64,
    /// When the owner last renewed its lease, in milliseconds since the Unix epoch.
    renewed_ms: u64,
    /// The owner's lease, in milliseconds.
    lease_ms: u64,
    /// The newest record.
    latest: Option<Generation>,
    /// The record before it.
    previous: Option<Generation>,
}

/// One record of the head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Generation {
    /// The object's name in the job's records folder.
    name: String,
    /// The record's sequence number.
    sequence: u64,
}

impl Head {
    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// A copy to write next: a new beat, renewed now.
    fn renewed(&self) -> Head {
        Head {
            beat: self.beat + 1,
            renewed_ms: now_ms(),
            ..self.clone()
        }
    }

    /// The names of the records it refers to.
    fn names(&self) -> impl Iterator<Item = &str> {
        [&self.latest, &self.previous]
            .into_iter()
            .flatten()
            .map(|generation| generation.name.as_str())
    }
}

/// How a run asks for a job.
#[derive(Debug, Clone)]
pub struct Acquire {
    /// The run's lease.
    pub lease: Duration,
    /// How long to wait for an owner that renews its lease.
    pub lock_timeout: Duration,
    /// Whether to discard the job's records.
    pub start_over: bool,
    /// Who this run is, for people.
    pub holder: String,
}

/// What came of asking for a job.
#[derive(Debug)]
pub enum Acquired {
    /// This run owns the job.
    Owned(S3Store, Loaded),
    /// Another run owns it and renewed its lease until `--lock-timeout` ran out.
    Busy(String),
    /// The stop came first.
    Stopped,
}

impl S3Job {
    /// The job `job_id` under `url`, with credentials, region and endpoint from the
    /// standard AWS environment variables; nothing is sent yet.
    pub fn new(url: &S3Url, job_id: &JobId) -> Result<S3Job, StoreError> {
        // TLS through rustls with ring: installed once, before the first client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = ClientOptions::new()
            // Some servers (moto) refuse a PUT without one.
            .with_default_content_type("application/octet-stream")
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let mut builder = AmazonS3Builder::new()
            .with_client_options(options)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
            });
        // As AmazonS3Builder::from_env, on top of the options above.
        for (key, value) in std::env::vars_os() {
            if let (Some(key), Some(value)) = (key.to_str(), value.to_str())
                && key.starts_with("AWS_")
                && let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
            {
                builder = builder.with_config(key, value);
            }
        }
        // A local or in-cluster endpoint (MinIO, moto) often speaks plain HTTP.
        let plain_http = [AmazonS3ConfigKey::Endpoint, AmazonS3ConfigKey::S3Endpoint]
            .iter()
            .filter_map(|key| builder.get_config_value(key))
            .any(|endpoint| endpoint.starts_with("http://"));
        if plain_http {
            builder = builder.with_allow_http(true);
        }
        let client = builder
            .with_bucket_name(&url.bucket)
            .build()
            .map_err(|error| StoreError::Remote {
                action: "set up a client for",
                object: url.to_string(),
                cause: Box::new(error),
            })?;
        let base = match &url.prefix {
            Some(prefix) => prefix.clone().join(job_id.as_str()),
            None => ObjectPath::from(job_id.as_str()),
        };
        Ok(S3Job {
            client: Arc::new(client),
            bucket: url.bucket.clone(),
            base,
        })
    }

    /// The job's place, as `s3://BUCKET/PREFIX/JOB_ID`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.base)
    }

    fn object(&self, name: &str) -> ObjectPath {
        self.base.clone().join(name)
    }

    fn record(&self, name: &str) -> ObjectPath {
        self.base.clone().join(RECORDS).join(name)
    }

    fn shown(&self, path: &ObjectPath) -> String {
        format!("s3://{}/{path}", self.bucket)
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

    /// The head and its ETag, if the job has one; a head that is not one is `Err` with
    /// what is wrong.
    async fn read_head(&self) -> Result<Option<(Result<Head, String>, String)>, StoreError> {
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

    fn no_etag(&self, path: &ObjectPath) -> StoreError {
        StoreError::Remote {
            action: "compare and swap",
            object: self.shown(path),
            cause: "the server sent no ETag, without which a write cannot be conditional".into(),
        }
    }

    /// Writes the head if `mode`'s condition holds; returns its new ETag.
    async fn put_head(&self, head: &Head, mode: PutMode) -> Result<String, PutHeadError> {
        let path = self.object(HEAD);
        let bytes = serde_json::to_vec(head).map_err(|error| {
            PutHeadError::Other(StoreError::Remote {
                action: "encode",
                object: self.shown(&path),
                cause: Box::new(error),
            })
        })?;
        match self
            .client
            .put_opts(&path, PutPayload::from(bytes), PutOptions::from(mode))
            .await
        {
            Ok(put) => put
                .e_tag
                .ok_or_else(|| PutHeadError::Other(self.no_etag(&path))),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Err(PutHeadError::Changed),
            Err(error) => Err(PutHeadError::Other(self.remote("write", &path)(error))),
        }
    }

    /// Refuses a server that ignores conditional writes: on it, no fencing would hold. The
    /// probe object exists (it is written first), so only a server that compares ETags
    /// refuses the write.
    async fn check_preconditions(&self) -> Result<(), StoreError> {
        const ACTION: &str =
            "check that conditional writes (If-Match), which the runner needs, work with";
        let path = self.object(PROBE);
        self.client
            .put(&path, PutPayload::from_static(b"probe"))
            .await
            .map_err(self.remote(ACTION, &path))?;
        let mode = PutMode::Update(UpdateVersion {
            e_tag: Some("\"no-object-has-this-etag\"".to_owned()),
            version: None,
        });
        match self
            .client
            .put_opts(
                &path,
                PutPayload::from_static(b"probe"),
                PutOptions::from(mode),
            )
            .await
        {
            Err(object_store::Error::Precondition { .. }) => Ok(()),
            Err(error) => Err(self.remote(ACTION, &path)(error)),
            Ok(_) => Err(StoreError::Remote {
                action: "use",
                object: self.url(),
                cause: "the server ignored a conditional write (If-Match): it cannot fence a \
                        stale owner off, so the runner does not keep checkpoints on it"
                    .into(),
            }),
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
        if got.meta.size > MAX_RECORD_LEN {
            return Ok(Slot::Unusable(format!(
                "it is {} bytes, larger than any checkpoint",
                got.meta.size
            )));
        }
        let bytes = got.bytes().await.map_err(self.remote("read", &path))?;
        match Record::decode(&bytes) {
            Ok(record) if record.sequence == generation.sequence => Ok(Slot::Usable(record)),
            Ok(record) => Ok(Slot::Unusable(format!(
                "it holds checkpoint {}, not checkpoint {} as the head says",
                record.sequence, generation.sequence
            ))),
            // Not damage: a newer runner's record, which falling back would destroy.
            Err(problem @ FormatError::UnsupportedVersion(2..=255)) => Err(StoreError::Corrupt {
                path: self.shown(&path).into(),
                problem: format!(
                    "{problem}: use a newer runner (or --start-over to discard the job's state)"
                ),
            }),
            Err(problem) => Ok(Slot::Unusable(problem.to_string())),
        }
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
    /// Takes ownership of the job: waits while another run owns it and renews its lease
    /// (up to `--lock-timeout`), or until its lease runs out; then swaps in a head with a
    /// fencing number one above the last, starts renewing the lease and loads the newest
    /// usable record. `stop` resolving ends the wait. `on_lost` is called if the lease
    /// renewal finds that another run has taken the job over.
    pub async fn acquire(
        self,
        options: &Acquire,
        stop: impl Future<Output = ()>,
        on_lost: impl Fn() + Send + Sync + 'static,
    ) -> Result<Acquired, StoreError> {
        self.check_preconditions().await?;
        let run = run_id();
        let mut notes = Vec::new();
        let (head, etag) = match self.take(options, &run, stop, &mut notes).await? {
            Ok(taken) => taken,
            Err(not_taken) => return Ok(not_taken),
        };
        let owner = Arc::new(Owner {
            job: self,
            fence: head.fence,
            run,
            state: Mutex::new(State {
                head,
                etag,
                newest: Newest::NotLatest,
                lost: None,
                released: false,
            }),
            on_lost: Box::new(on_lost),
            cleanup: std::sync::Mutex::default(),
        });
        // Renewing from now on: loading a large record can take longer than a lease.
        tokio::spawn(renew(Arc::downgrade(&owner), options.lease / 3));
        let store = S3Store {
            owner,
            runtime: Handle::current(),
        };
        match store.owner.load(&mut notes).await {
            Ok(record) => {
                let loaded = Loaded {
                    record,
                    earlier_output: None,
                    notes,
                };
                Ok(Acquired::Owned(store, loaded))
            }
            Err(error) => {
                // The job is this run's, but it will not run: let the next run have it
                // without waiting for the lease.
                store.release(Duration::from_secs(2)).await;
                Err(error)
            }
        }
    }

    /// Waits for the job to be free and swaps in this run's head: the head and its ETag,
    /// or why the run does not get the job.
    async fn take(
        &self,
        options: &Acquire,
        run: &str,
        stop: impl Future<Output = ()>,
        notes: &mut Vec<String>,
    ) -> Result<Result<(Head, String), Acquired>, StoreError> {
        let started = Instant::now();
        let mut stop = std::pin::pin!(stop);
        // The head as last seen, since when, and whether it replaced one seen before (the
        // owner is alive).
        let mut watched: Option<(String, Instant, bool)> = None;
        let mut waiting = false;
        let new_head = |fence, latest, previous| Head {
            format: HEAD_FORMAT,
            fence,
            owner: Some(options.holder.clone()),
            run: run.to_owned(),
            beat: 0,
            renewed_ms: now_ms(),
            lease_ms: u64::try_from(options.lease.as_millis()).unwrap_or(u64::MAX),
            latest,
            previous,
        };
        loop {
            let (current, etag) = match self.read_head().await? {
                None => {
                    // A head never goes (`runner state reset` keeps it): records without
                    // one were orphaned by hand, and are not silently dropped.
                    let fence = self.newest_record_fence().await?;
                    if fence > 0 && !options.start_over {
                        return Err(StoreError::Corrupt {
                            path: self.shown(&self.object(HEAD)).into(),
                            problem: "it is missing, but the job has records: pass --start-over \
                                      to start from scratch"
                                .into(),
                        });
                    }
                    let head = new_head(fence.saturating_add(1), None, None);
                    match self.put_head(&head, PutMode::Create).await {
                        Ok(etag) => return Ok(Ok((head, etag))),
                        Err(PutHeadError::Changed) => continue,
                        Err(PutHeadError::Other(error)) => return Err(error),
                    }
                }
                Some(found) => found,
            };
            let current = match current {
                // This run's own swap, which landed though its reply was lost.
                Ok(current) if current.run == run => return Ok(Ok((current, etag))),
                Ok(current) => current,
                Err(problem) if options.start_over => {
                    notes.push(format!(
                        "starting over: ignoring `{}`, which is unusable ({problem})",
                        self.shown(&self.object(HEAD))
                    ));
                    let fence = self.newest_record_fence().await?.saturating_add(1);
                    let head = new_head(fence, None, None);
                    match self.put_head(&head, update(&etag)).await {
                        Ok(etag) => return Ok(Ok((head, etag))),
                        Err(PutHeadError::Changed) => continue,
                        Err(PutHeadError::Other(error)) => return Err(error),
                    }
                }
                Err(problem) => {
                    return Err(StoreError::Corrupt {
                        path: self.shown(&self.object(HEAD)).into(),
                        problem: format!(
                            "{problem}. Pass --start-over to start from scratch (`runner state \
                             reset` removes the job's state)"
                        ),
                    });
                }
            };
            let (unchanged_for, alive) = match &watched {
                Some((seen, since, alive)) if *seen == etag => (since.elapsed(), *alive),
                _ => {
                    let alive = watched.is_some();
                    watched = Some((etag.clone(), Instant::now(), alive));
                    (Duration::ZERO, alive)
                }
            };
            let renewed_ago = Duration::from_millis(now_ms().saturating_sub(current.renewed_ms));
            let expired = current.owner.is_none()
                || unchanged_for >= current.lease()
                || renewed_ago > current.lease().saturating_add(CLOCK_SKEW);
            if expired {
                let Some(fence) = current.fence.checked_add(1) else {
                    return Err(StoreError::Corrupt {
                        path: self.shown(&self.object(HEAD)).into(),
                        problem: "the fencing numbers are exhausted".into(),
                    });
                };
                let head = if options.start_over {
                    new_head(fence, None, None)
                } else {
                    new_head(fence, current.latest.clone(), current.previous.clone())
                };
                match self.put_head(&head, update(&etag)).await {
                    Ok(etag) => {
                        if let Some(owner) = &current.owner {
                            say!(
                                "took job `{}` over from {owner}, whose lease of {} ran out \
                                 without a renewal",
                                self.url(),
                                format_duration(whole_ms(current.lease()))
                            );
                        }
                        if options.start_over && current.latest.is_some() {
                            notes.push(format!(
                                "starting over as asked (--start-over): the job's records in \
                                 `{}` go",
                                self.shown(&self.base.clone().join(RECORDS))
                            ));
                        }
                        return Ok(Ok((head, etag)));
                    }
                    // The owner renewed, another successor won, or this run's swap landed
                    // though its reply was lost: look again.
                    Err(PutHeadError::Changed) => continue,
                    Err(PutHeadError::Other(error)) => return Err(error),
                }
            }
            let owner = current.owner.as_deref().unwrap_or("another runner");
            // Only an owner seen renewing is waited out; a silent one is waited for until
            // its lease runs out, whatever --lock-timeout says.
            if alive && started.elapsed() >= options.lock_timeout {
                return Ok(Err(Acquired::Busy(format!(
                    "job `{}` is owned by {owner}, which renewed its lease {} ago, still within \
                     its lease of {}; waited {} (--lock-timeout)",
                    self.url(),
                    format_duration(whole_ms(unchanged_for)),
                    format_duration(whole_ms(current.lease())),
                    format_duration(options.lock_timeout)
                ))));
            }
            if !waiting {
                say!(
                    "job `{}` is owned by {owner}: waiting up to {} while it renews its lease, \
                     or until its lease of {} runs out (--lock-timeout)",
                    self.url(),
                    format_duration(options.lock_timeout),
                    format_duration(whole_ms(current.lease()))
                );
                waiting = true;
            }
            let poll =
                (current.lease() / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = &mut stop => {
                    say!("not starting the job: the stop came while it waited for its owner");
                    return Ok(Err(Acquired::Stopped));
                }
            }
        }
    }
}

/// A duration to the millisecond, for people.
fn whole_ms(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// A job in a bucket as `runner state show` describes it.
#[derive(Debug)]
pub struct Inspection {
    /// The newest fencing number, or why the head is unusable.
    pub fence: Result<u64, String>,
    /// Who owns the job, and how fresh its lease is.
    pub owner: String,
    /// The newest usable record as a run would load it, with what it would say.
    pub newest: Result<(Option<Record>, Vec<String>), StoreError>,
    /// Each generation the head names: its object and what it holds.
    pub generations: Vec<(String, Slot)>,
}

impl S3Job {
    /// The job's head and records, read without taking the job; `None` if it has no head.
    pub async fn inspect(&self) -> Result<Option<Inspection>, StoreError> {
        let Some((head, _)) = self.read_head().await? else {
            return Ok(None);
        };
        let head = match head {
            Ok(head) => head,
            Err(problem) => {
                return Ok(Some(Inspection {
                    newest: Err(StoreError::Corrupt {
                        path: self.shown(&self.object(HEAD)).into(),
                        problem: problem.clone(),
                    }),
                    fence: Err(problem),
                    owner: "unknown".to_owned(),
                    generations: Vec::new(),
                }));
            }
        };
        let renewed_ago = Duration::from_millis(now_ms().saturating_sub(head.renewed_ms));
        let owner = match &head.owner {
            None => "none (the last run released the job)".to_owned(),
            Some(owner) => format!(
                "{owner}, whose lease of {} was last renewed {} ago{}",
                format_duration(head.lease()),
                format_duration(Duration::from_secs(renewed_ago.as_secs())),
                if renewed_ago > head.lease() {
                    " (it has run out)"
                } else {
                    ""
                }
            ),
        };
        let latest = self.read_slot(head.latest.as_ref()).await?;
        let previous = self.read_slot(head.previous.as_ref()).await?;
        let names = self.generation_names(&head);
        let generations = [(&head.latest, &latest), (&head.previous, &previous)]
            .into_iter()
            .filter(|(generation, _)| generation.is_some())
            .zip(names.iter())
            .map(|((_, slot), name)| (name.clone(), slot.clone()))
            .collect();
        let mut notes = Vec::new();
        let newest = choose(names, latest, previous, &mut notes).map(|(record, _)| (record, notes));
        Ok(Some(Inspection {
            fence: Ok(head.fence),
            owner,
            newest,
            generations,
        }))
    }

    /// Removes the job's records and leaves a head naming none, released and with the
    /// same fencing number, so that numbers keep rising and a stale owner stays fenced.
    /// Refused (`Err` with who owns it) while an owner's lease runs. Returns what went.
    pub async fn reset(&self) -> Result<Result<Vec<String>, String>, StoreError> {
        let mut removed = Vec::new();
        // The records of runs up to this number go; a run that takes the job meanwhile
        // has a higher one, and its records stay.
        let mut up_to = None;
        if let Some((head, etag)) = self.read_head().await? {
            let fence = match head {
                Ok(head) => {
                    let renewed_ago =
                        Duration::from_millis(now_ms().saturating_sub(head.renewed_ms));
                    if let Some(owner) = &head.owner
                        && renewed_ago <= head.lease().saturating_add(CLOCK_SKEW)
                    {
                        return Ok(Err(format!(
                            "job `{}` is owned by {owner}, whose lease was renewed {} ago: stop \
                             that run (or wait {} after it died) before resetting its state",
                            self.url(),
                            format_duration(Duration::from_secs(renewed_ago.as_secs())),
                            format_duration(head.lease().saturating_add(CLOCK_SKEW))
                        )));
                    }
                    head.fence
                }
                Err(_) => self.newest_record_fence().await?,
            };
            let cleared = Head {
                format: HEAD_FORMAT,
                fence,
                owner: None,
                run: run_id(),
                beat: 0,
                renewed_ms: now_ms(),
                lease_ms: 0,
                latest: None,
                previous: None,
            };
            match self.put_head(&cleared, update(&etag)).await {
                Ok(_) => {
                    removed.push(format!(
                        "{}: cleared (fencing number {fence} kept)",
                        self.shown(&self.object(HEAD))
                    ));
                    up_to = Some(fence);
                }
                Err(PutHeadError::Changed) => {
                    return Ok(Err(format!(
                        "job `{}` changed while it was being reset: a runner has taken it; try \
                         again once it has stopped",
                        self.url()
                    )));
                }
                Err(PutHeadError::Other(error)) => return Err(error),
            }
        }
        let records = self.records().await?;
        let up_to =
            up_to.unwrap_or_else(|| records.iter().map(|(_, fence)| *fence).max().unwrap_or(0));
        for (path, fence) in records {
            if fence > up_to {
                continue;
            }
            self.client
                .delete(&path)
                .await
                .map_err(self.remote("remove", &path))?;
            removed.push(format!("{}: removed", self.shown(&path)));
        }
        Ok(Ok(removed))
    }

    /// The generations' objects, as messages show them.
    fn generation_names(&self, head: &Head) -> [String; 2] {
        [&head.latest, &head.previous].map(|generation| match generation {
            Some(generation) => self.shown(&self.record(&generation.name)),
            None => "none".to_owned(),
        })
    }
}

/// A head write that did not happen.
enum PutHeadError {
    /// Someone wrote the head since the ETag the write was conditional on.
    Changed,
    /// Anything else.
    Other(StoreError),
}

fn update(etag: &str) -> PutMode {
    PutMode::Update(UpdateVersion {
        e_tag: Some(etag.to_owned()),
        version: None,
    })
}

/// The fencing number in a record object's name, `FENCE-SEQUENCE-RUN`.
fn record_fence(name: &str) -> Option<u64> {
    name.split_once('-')?.0.parse().ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A new run's identity: random, so that no two runs share one even when a job's state
/// was removed and its fencing numbers start again.
fn run_id() -> String {
    let seed = (std::process::id(), SystemTime::now(), Instant::now());
    format!("{:016x}", RandomState::new().hash_one(format!("{seed:?}")))
}

/// A job's checkpoints in a bucket, owned by this run.
#[derive(Debug)]
pub struct S3Store {
    owner: Arc<Owner>,
    /// The runtime the client runs on: commits come from a thread of their own.
    runtime: Handle,
}

struct Owner {
    job: S3Job,
    fence: u64,
    run: String,
    /// Held across each head write (not the record upload before it): commits, renewals
    /// and the release take turns.
    state: Mutex<State>,
    on_lost: Box<dyn Fn() + Send + Sync>,
    /// Removals of records no head names, which the release waits for.
    cleanup: std::sync::Mutex<JoinSet<()>>,
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("job", &self.job.url())
            .field("fence", &self.fence)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

/// The head as this run last wrote it.
#[derive(Debug)]
struct State {
    head: Head,
    etag: String,
    newest: Newest,
    /// Once another run took the job over: its fencing number as the head showed it (or
    /// why it is unknown).
    lost: Option<String>,
    /// Whether this run has released the job.
    released: bool,
}

impl Owner {
    /// Starts removing the records no head names (a crashed commit's, a stale owner's)
    /// and loads the newest usable record the head names.
    async fn load(&self, notes: &mut Vec<String>) -> Result<Option<Record>, StoreError> {
        // Not under the lock: the lease's renewal must not wait for a large download.
        let head = self.state.lock().await.head.clone();
        self.clean_up({
            let (job, fence) = (self.job.clone(), self.fence);
            let keep: Vec<String> = head.names().map(str::to_owned).collect();
            async move { job.remove_unnamed(keep, fence).await }
        });
        let latest = self.job.read_slot(head.latest.as_ref()).await?;
        let previous = self.job.read_slot(head.previous.as_ref()).await?;
        let names = self.job.generation_names(&head);
        let (record, newest) = choose(names, latest, previous, notes)?;
        // No commit came meanwhile: the job has not started.
        self.state.lock().await.newest = newest;
        Ok(record)
    }

    /// Removes records on the side; finished removals are let go at once, the rest are
    /// waited for at the release.
    fn clean_up(&self, removal: impl Future<Output = ()> + Send + 'static) {
        let mut cleanup = self.cleanup.lock().unwrap_or_else(PoisonError::into_inner);
        while cleanup.try_join_next().is_some() {}
        cleanup.spawn(removal);
    }

    /// Swaps `next` in for the head this run last wrote. Refused (412) when anyone wrote
    /// it since: if that was this run (a write whose reply was lost, then retried), the
    /// write is adopted or made again on the head as it is; otherwise the job is lost.
    async fn write_head(&self, state: &mut State, next: Head) -> Result<(), StoreError> {
        for _ in 0..2 {
            match self.job.put_head(&next, update(&state.etag)).await {
                Ok(etag) => {
                    state.head = next;
                    state.etag = etag;
                    return Ok(());
                }
                Err(PutHeadError::Other(error)) => return Err(error),
                Err(PutHeadError::Changed) => {}
            }
            let newest = match self.job.read_head().await {
                Ok(Some((Ok(head), etag))) if head.run == self.run && head.fence == self.fence => {
                    state.etag = etag;
                    if head == next {
                        state.head = next;
                        return Ok(());
                    }
                    state.head = head;
                    continue;
                }
                Ok(Some((Ok(head), _))) => head.fence.to_string(),
                Ok(Some((Err(_), _))) => "unknown (the head is damaged)".to_owned(),
                Ok(None) => "none".to_owned(),
                Err(StoreError::Corrupt { .. }) => "unknown (a newer runner's head)".to_owned(),
                Err(error) => return Err(error),
            };
            state.lost = Some(newest.clone());
            return Err(StoreError::Fenced {
                ours: self.fence,
                newest,
            });
        }
        Err(StoreError::Remote {
            action: "compare and swap",
            object: self.job.shown(&self.job.object(HEAD)),
            cause: "the head kept changing under this run's own writes".into(),
        })
    }

    /// `Err` once the run has lost or released the job: nothing more may be written.
    fn still_owned(&self, state: &State) -> Result<(), StoreError> {
        match (&state.lost, state.released) {
            (Some(newest), _) => Err(StoreError::Fenced {
                ours: self.fence,
                newest: newest.clone(),
            }),
            (None, true) => Err(StoreError::Remote {
                action: "commit to",
                object: self.job.url(),
                cause: "this run has released the job: its run is over".into(),
            }),
            (None, false) => Ok(()),
        }
    }

    /// Commits the record of `sequence`, encoded as `bytes`.
    async fn commit(&self, sequence: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.still_owned(&*self.state.lock().await)?;
        // Only this run writes under its fencing number and identity: no other run's
        // commit can ever replace this object, even one that took the same number after
        // the job's head was removed by hand. Uploaded without the lock, so that a large
        // record does not hold up the lease's renewal.
        let name = format!("{:020}-{:020}-{}", self.fence, sequence, self.run);
        let path = self.job.record(&name);
        self.job
            .client
            .put_opts(
                &path,
                PutPayload::from(bytes),
                PutOptions::from(PutMode::Overwrite),
            )
            .await
            .map_err(self.job.remote("write", &path))?;

        let mut state = self.state.lock().await;
        self.still_owned(&state)?;
        let mut next = state.head.renewed();
        // The same sequence again (a commit that failed, or seemed to) replaces itself.
        let replaces_itself = next
            .latest
            .as_ref()
            .is_some_and(|latest| latest.name == name);
        if state.newest == Newest::Latest && !replaces_itself {
            next.previous = next.latest.take();
        }
        next.latest = Some(Generation { name, sequence });
        let before: Vec<String> = state.head.names().map(str::to_owned).collect();
        self.write_head(&mut state, next).await?;
        state.newest = Newest::Latest;
        // The generation that dropped out: no head names it now. Removed on the side.
        let dropped: Vec<ObjectPath> = before
            .iter()
            .filter(|name| state.head.names().all(|kept| kept != name.as_str()))
            .map(|name| self.job.record(name))
            .collect();
        drop(state);
        for path in dropped {
            let client = Arc::clone(&self.job.client);
            self.clean_up(async move {
                let _ = client.delete(&path).await;
            });
        }
        Ok(())
    }

    /// Clears the head's owner; returns whether the job had been taken over.
    async fn release(&self) -> bool {
        let mut state = self.state.lock().await;
        let lost = if state.lost.is_some() {
            true
        } else if state.released {
            false
        } else {
            let mut next = state.head.renewed();
            next.owner = None;
            match self.write_head(&mut state, next).await {
                Ok(()) => false,
                Err(StoreError::Fenced { .. }) => true,
                Err(error) => {
                    tracing::warn!(
                        "cannot release job `{}`: {error}; the next run waits up to {} for it",
                        self.job.url(),
                        format_duration(whole_ms(state.head.lease()))
                    );
                    false
                }
            }
        };
        state.released = true;
        lost
    }

    /// Rewrites the head with a new beat; `Ok(false)` once the run has released the job,
    /// `Err` once it lost it.
    async fn renew(&self) -> Result<bool, StoreError> {
        let mut state = self.state.lock().await;
        if state.released {
            return Ok(false);
        }
        self.still_owned(&state)?;
        let next = state.head.renewed();
        self.write_head(&mut state, next).await.map(|()| true)
    }
}

/// Renews the lease every `every` until the run releases the job, loses it, or ends.
async fn renew(owner: Weak<Owner>, every: Duration) {
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let Some(owner) = owner.upgrade() else {
            return;
        };
        match owner.renew().await {
            Ok(false) => return,
            Ok(true) if failing => {
                say!("renewed the lease on job `{}` again", owner.job.url());
                failing = false;
            }
            Ok(true) => {}
            Err(error @ StoreError::Fenced { .. }) => {
                tracing::warn!("lost job `{}`: {error}", owner.job.url());
                (owner.on_lost)();
                return;
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(
                        "cannot renew the lease on job `{}`: {error}; the job goes on, and \
                         another runner may take it over once the lease runs out",
                        owner.job.url()
                    );
                }
                failing = true;
            }
        }
    }
}

impl S3Store {
    /// The job's place, as `s3://BUCKET/PREFIX/JOB_ID`.
    pub fn url(&self) -> String {
        self.owner.job.url()
    }

    /// Gives the job up, so that the next run takes it without waiting for the lease to
    /// run out, then lets the removal of records no head names finish: all within
    /// `bound` (what is left then is removed by a later owner). No commit succeeds after
    /// it. Returns whether this run found that another had taken the job over.
    pub async fn release(&self, bound: Duration) -> bool {
        let owner = &self.owner;
        let deadline = tokio::time::Instant::now() + bound;
        let lost = match tokio::time::timeout_at(deadline, owner.release()).await {
            Ok(lost) => lost,
            // Behind a head swap that is taking long: the lease runs out instead.
            Err(_) => {
                tracing::warn!(
                    "cannot release job `{}` within {}: the next run may wait for its lease",
                    owner.job.url(),
                    format_duration(bound)
                );
                false
            }
        };
        let mut cleanup =
            std::mem::take(&mut *owner.cleanup.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = tokio::time::timeout_at(deadline, async {
            while cleanup.join_next().await.is_some() {}
        })
        .await;
        lost
    }
}

impl Store for S3Store {
    fn fence(&self) -> u64 {
        self.owner.fence
    }

    /// Runs the commit on the runtime and waits for it: once the runtime has shut down
    /// (the run is over), the commit fails instead.
    fn commit(&self, record: &Record) -> Result<(), StoreError> {
        let (owner, sequence) = (Arc::clone(&self.owner), record.sequence);
        let mut bytes = record.head();
        bytes.extend_from_slice(&record.payload);
        let (done, result) = tokio::sync::oneshot::channel();
        self.runtime.spawn(async move {
            let _ = done.send(owner.commit(sequence, bytes).await);
        });
        result.blocking_recv().unwrap_or_else(|_| {
            Err(StoreError::Remote {
                action: "commit to",
                object: self.url(),
                cause: "the runner is exiting".into(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        assert!(S3Url::parse("/var/state").is_none());
        assert!(S3Url::parse("s3:/bucket").is_none());
        let url = |text| S3Url::parse(text).expect("an s3:// URL");
        for (text, shown) in [
            ("s3://bucket", "s3://bucket"),
            ("s3://bucket/", "s3://bucket"),
            (
                "s3://my-bucket.1/jobs/batch/",
                "s3://my-bucket.1/jobs/batch",
            ),
        ] {
            assert_eq!(url(text).expect("valid").to_string(), shown, "{text}");
        }
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Bucket/x",
            "s3://b_c/x",
            "s3://bucket/a/../b",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn record_names_carry_the_fencing_number() {
        assert_eq!(
            record_fence("00000000000000000007-00000000000000000042-0123456789abcdef"),
            Some(7)
        );
        assert_eq!(record_fence("precondition-probe"), None);
        assert_eq!(record_fence("7"), None);
    }

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
