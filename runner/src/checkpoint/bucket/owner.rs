//! A job in a bucket, owned by this run: its commits, the lease's renewal and the
//! release.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use object_store::{PutMode, PutOptions, PutPayload};
use tokio::runtime::Handle;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::head::{Generation, Head, update};
use super::{BucketJob, HEAD};
use crate::checkpoint::{BoxFuture, Commit, Landed, Newest, Record, Store, StoreError, choose};
use crate::human::{format_duration, whole_ms};

/// How long the end of a forced stop waits to release the job (five times as long after
/// a run that ended otherwise): after a forced stop the runner must still exit well
/// before the orchestrator's SIGKILL, and a lease left unreleased only runs out.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// A job's checkpoints in a bucket, owned by this run.
#[derive(Debug)]
pub(super) struct BucketStore {
    owner: Arc<Owner>,
    /// The runtime the client runs on: commits come from a thread of their own.
    runtime: Handle,
}

struct Owner {
    job: BucketJob,
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
            if let Some(etag) = self.job.put_head(&next, update(&state.etag)).await? {
                state.head = next;
                state.etag = etag;
                return Ok(());
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

impl BucketStore {
    /// The store of a run that has swapped in `head` (of ETag `etag`): it renews the
    /// lease from now on (loading a large record can take longer than a lease), and calls
    /// `on_lost` if the renewal finds the job taken over.
    pub(super) fn start(
        job: BucketJob,
        head: Head,
        etag: String,
        run: String,
        lease: Duration,
        on_lost: Box<dyn Fn() + Send + Sync>,
    ) -> BucketStore {
        let owner = Arc::new(Owner {
            job,
            fence: head.fence,
            run,
            state: Mutex::new(State {
                head,
                etag,
                newest: Newest::NotLatest,
                lost: None,
                released: false,
            }),
            on_lost,
            cleanup: std::sync::Mutex::default(),
        });
        tokio::spawn(renew(Arc::downgrade(&owner), lease / 3));
        BucketStore {
            owner,
            runtime: Handle::current(),
        }
    }

    /// Starts removing the records no head names and loads the newest usable record the
    /// head names.
    pub(super) async fn load(&self, notes: &mut Vec<String>) -> Result<Option<Record>, StoreError> {
        self.owner.load(notes).await
    }

    /// Gives the job up, so that the next run takes it without waiting for the lease to
    /// run out, then lets the removal of records no head names finish: all within
    /// `bound` (what is left then is removed by a later owner). No commit succeeds after
    /// it. Returns whether this run found that another had taken the job over.
    pub(super) async fn release_within(&self, bound: Duration) -> bool {
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

impl Store for BucketStore {
    fn fence(&self) -> u64 {
        self.owner.fence
    }

    fn shown(&self) -> String {
        self.owner.job.url()
    }

    fn release(&self, hurry: bool) -> BoxFuture<'_, bool> {
        let bound = if hurry {
            RELEASE_TIMEOUT
        } else {
            RELEASE_TIMEOUT * 5
        };
        Box::pin(self.release_within(bound))
    }

    /// Runs the commit as a task of its own and waits for it: the task goes on if the
    /// job is stopped meanwhile. Once the runtime has shut down (the run is over), the
    /// commit fails instead.
    fn commit(&self, record: &Record, payload: &[u8], landed: Landed) -> Commit {
        let (owner, sequence) = (Arc::clone(&self.owner), record.sequence);
        let mut bytes = record.head(payload);
        bytes.extend_from_slice(payload);
        let commit = self.runtime.spawn(async move {
            let committed = owner.commit(sequence, bytes).await;
            if committed.is_ok() {
                landed();
            }
            committed
        });
        let object = self.owner.job.url();
        Commit::Pending(Box::pin(async move {
            commit.await.unwrap_or_else(|_| {
                Err(StoreError::Remote {
                    action: "commit to",
                    object,
                    cause: "the runner is exiting".into(),
                })
            })
        }))
    }
}
