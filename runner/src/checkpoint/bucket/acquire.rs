//! Taking a job: the check that the server honours conditional writes, the wait for a
//! live owner, and the swap that makes this run the owner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::head::{Head, run_id, update};
use super::owner::BucketStore;
use super::{BucketJob, HEAD, RECORDS};
use crate::checkpoint::{Acquire, Acquired, StoreError, holder};
use crate::human::{format_duration, whole_ms};

/// The object a run writes, then writes again with an `If-Match` that must fail, to check
/// that the server honours conditional writes.
const PROBE: &str = "precondition-probe";

/// A run's watch over the head while it waits for the job.
#[derive(Debug)]
struct Watch {
    /// When the run began to look.
    started: Instant,
    /// The head's ETag as last seen, since when, and whether it replaced one seen before
    /// (the owner is alive).
    last: Option<(String, Instant, bool)>,
    /// Whether the run has said that it waits.
    announced: bool,
}

/// What a look at the head showed.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// How long the head has been seen unchanged.
    unchanged_for: Duration,
    /// Whether its owner was seen renewing it.
    alive: bool,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            started: Instant::now(),
            last: None,
            announced: false,
        }
    }

    /// Notes the head of `etag`.
    fn see(&mut self, etag: &str) -> Seen {
        match &self.last {
            Some((seen, since, alive)) if seen == etag => Seen {
                unchanged_for: since.elapsed(),
                alive: *alive,
            },
            _ => {
                let alive = self.last.is_some();
                self.last = Some((etag.to_owned(), Instant::now(), alive));
                Seen {
                    unchanged_for: Duration::ZERO,
                    alive,
                }
            }
        }
    }
}

impl BucketJob {
    /// Takes ownership of the job: waits while another run owns it and renews its lease
    /// (up to `--lock-timeout`), or until its lease runs out; then swaps in a head with a
    /// fencing number one above the last, starts renewing the lease and loads the newest
    /// usable record.
    pub(super) async fn acquire_job(
        self,
        mut request: Acquire<'_>,
    ) -> Result<Acquired, StoreError> {
        self.check_preconditions().await?;
        let run = run_id();
        let mut notes = Vec::new();
        let (head, etag) = match self.take(&mut request, &run, &mut notes).await? {
            Ok(taken) => taken,
            Err(not_taken) => return Ok(not_taken),
        };
        let store = BucketStore::start(self, head, etag, run, request.lease, request.on_lost);
        match store.load(&mut notes).await {
            Ok(record) => {
                for note in &notes {
                    tracing::warn!("{note}");
                }
                Ok(Acquired::Owned(Arc::new(store), record))
            }
            Err(error) => {
                // The job is this run's, but it will not run: let the next run have it
                // without waiting for the lease.
                store.release_within(Duration::from_secs(2)).await;
                Err(error)
            }
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

    /// Waits for the job to be free and swaps in this run's head: the head and its ETag,
    /// or why the run does not get the job.
    async fn take(
        &self,
        request: &mut Acquire<'_>,
        run: &str,
        notes: &mut Vec<String>,
    ) -> Result<Result<(Head, String), Acquired>, StoreError> {
        let mut watch = Watch::new();
        loop {
            let taken = match self.read_head().await? {
                None => self.take_headless(request, run).await?,
                // This run's own swap, which landed though its reply was lost.
                Some((Ok(current), etag)) if current.run == run => Some((current, etag)),
                Some((Err(problem), etag)) => {
                    self.take_damaged(problem, &etag, request, run, notes)
                        .await?
                }
                Some((Ok(current), etag)) => {
                    let seen = watch.see(&etag);
                    if !current.may_be_held() || seen.unchanged_for >= current.lease() {
                        self.take_over(&current, &etag, request, run, notes).await?
                    } else if let Some(not_taken) =
                        self.wait(&current, seen, &mut watch, request).await
                    {
                        return Ok(Err(not_taken));
                    } else {
                        None
                    }
                }
            };
            // `None`: the head changed under this run (the owner renewed, another run
            // won, or this run's swap landed though its reply was lost): look again.
            if let Some(taken) = taken {
                return Ok(Ok(taken));
            }
        }
    }

    /// A head for this run, with the fencing number `fence`, naming the records `from`
    /// names.
    fn new_head(&self, fence: u64, run: &str, request: &Acquire<'_>, from: Option<&Head>) -> Head {
        Head::new(fence, Some(holder()), run.to_owned(), request.lease, from)
    }

    /// Writes `head` if `mode`'s condition holds: it and its ETag, or `None` if the head
    /// changed.
    async fn swap_in(
        &self,
        head: Head,
        mode: PutMode,
    ) -> Result<Option<(Head, String)>, StoreError> {
        Ok(self.put_head(&head, mode).await?.map(|etag| (head, etag)))
    }

    /// A job without a head: a new one, or records whose head was removed by hand.
    async fn take_headless(
        &self,
        request: &Acquire<'_>,
        run: &str,
    ) -> Result<Option<(Head, String)>, StoreError> {
        // A head never goes (`runner state reset` keeps it): records without one were
        // orphaned by hand, and are not silently dropped.
        let fence = self.newest_record_fence().await?;
        if fence > 0 && !request.start_over {
            return Err(StoreError::Corrupt {
                path: self.shown(&self.object(HEAD)).into(),
                problem: "it is missing, but the job has records: pass --start-over to start \
                          from scratch"
                    .into(),
            });
        }
        let head = self.new_head(fence.saturating_add(1), run, request, None);
        self.swap_in(head, PutMode::Create).await
    }

    /// A head that is not one: replaced when starting over, an error otherwise.
    async fn take_damaged(
        &self,
        problem: String,
        etag: &str,
        request: &Acquire<'_>,
        run: &str,
        notes: &mut Vec<String>,
    ) -> Result<Option<(Head, String)>, StoreError> {
        let path = self.shown(&self.object(HEAD));
        if !request.start_over {
            return Err(StoreError::Corrupt {
                path: path.into(),
                problem: format!(
                    "{problem}. Pass --start-over to start from scratch (`runner state reset` \
                     removes the job's state)"
                ),
            });
        }
        notes.push(format!(
            "starting over: ignoring `{path}`, which is unusable ({problem})"
        ));
        let fence = self.newest_record_fence().await?.saturating_add(1);
        self.swap_in(self.new_head(fence, run, request, None), update(etag))
            .await
    }

    /// Takes over from an owner that released the job or let its lease run out.
    async fn take_over(
        &self,
        current: &Head,
        etag: &str,
        request: &Acquire<'_>,
        run: &str,
        notes: &mut Vec<String>,
    ) -> Result<Option<(Head, String)>, StoreError> {
        let Some(fence) = current.fence.checked_add(1) else {
            return Err(StoreError::Corrupt {
                path: self.shown(&self.object(HEAD)).into(),
                problem: "the fencing numbers are exhausted".into(),
            });
        };
        let from = (!request.start_over).then_some(current);
        let head = self.new_head(fence, run, request, from);
        let Some(taken) = self.swap_in(head, update(etag)).await? else {
            return Ok(None);
        };
        if let Some(owner) = &current.owner {
            say!(
                "took job `{}` over from {owner}, whose lease of {} ran out without a renewal",
                self.url(),
                format_duration(whole_ms(current.lease()))
            );
        }
        if request.start_over && current.latest.is_some() {
            notes.push(format!(
                "starting over as asked (--start-over): the job's records in `{}` go",
                self.shown(&self.base.clone().join(RECORDS))
            ));
        }
        Ok(Some(taken))
    }

    /// Waits a poll's time for `current`'s owner, which may be alive; `Some` once the
    /// run gives up (`--lock-timeout` ran out while the owner renewed, or a stop).
    async fn wait(
        &self,
        current: &Head,
        seen: Seen,
        watch: &mut Watch,
        request: &mut Acquire<'_>,
    ) -> Option<Acquired> {
        let owner = current.owner.as_deref().unwrap_or("another runner");
        // Only an owner seen renewing is waited out; a silent one is waited for until
        // its lease runs out, whatever --lock-timeout says.
        if seen.alive && watch.started.elapsed() >= request.lock_timeout {
            return Some(Acquired::Busy(format!(
                "job `{}` is owned by {owner}, which renewed its lease {} ago, still within \
                 its lease of {}; waited {} (--lock-timeout)",
                self.url(),
                format_duration(whole_ms(seen.unchanged_for)),
                format_duration(whole_ms(current.lease())),
                format_duration(request.lock_timeout)
            )));
        }
        if !watch.announced {
            say!(
                "job `{}` is owned by {owner}: waiting up to {} while it renews its lease, \
                 or until its lease of {} runs out (--lock-timeout)",
                self.url(),
                format_duration(request.lock_timeout),
                format_duration(whole_ms(current.lease()))
            );
            watch.announced = true;
        }
        let poll = (current.lease() / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep(poll) => None,
            () = &mut request.stop => {
                say!("not starting the job: the stop came while it waited for its owner");
                Some(Acquired::Stopped)
            }
        }
    }
}
