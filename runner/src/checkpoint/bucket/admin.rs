//! `runner state show|reset` for a job in a bucket.

use std::time::Duration;

use object_store::ObjectStoreExt;

use super::CLOCK_SKEW;
use super::head::{Head, run_id, update};
use super::{BucketJob, HEAD};
use crate::checkpoint::{Inspection, StoreError, choose};
use crate::human::format_duration;

impl BucketJob {
    /// The job's head and records, read without taking the job; `None` if it has no head.
    pub(super) async fn inspect_job(&self) -> Result<Option<Inspection>, StoreError> {
        let Some((head, _)) = self.read_head().await? else {
            return Ok(None);
        };
        let head = match head {
            Ok(head) => head,
            Err(problem) => {
                return Ok(Some(Inspection {
                    shown: self.url(),
                    newest: Err(StoreError::Corrupt {
                        path: self.shown(&self.object(HEAD)).into(),
                        problem: problem.clone(),
                    }),
                    fence: format!("unknown: the head is unusable ({problem})"),
                    owner: "unknown".to_owned(),
                    generations: Vec::new(),
                }));
            }
        };
        let renewed_ago = head.renewed_ago();
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
            .map(|((_, slot), name)| (name.clone(), Ok(slot.clone())))
            .collect();
        let mut notes = Vec::new();
        let newest = choose(names, latest, previous, &mut notes).map(|(record, _)| (record, notes));
        Ok(Some(Inspection {
            shown: self.url(),
            fence: head.fence.to_string(),
            owner,
            newest,
            generations,
        }))
    }

    /// Removes the job's records and leaves a head naming none, released and with the
    /// same fencing number, so that numbers keep rising and a stale owner stays fenced.
    /// Refused (`Err` with who owns it) while an owner's lease runs. Returns what went.
    pub(super) async fn reset_job(&self) -> Result<Result<Vec<String>, String>, StoreError> {
        let mut removed = Vec::new();
        // The records of runs up to this number go; a run that takes the job meanwhile
        // has a higher one, and its records stay.
        let mut up_to = None;
        if let Some((head, etag)) = self.read_head().await? {
            let fence = match head {
                Ok(head) => {
                    let renewed_ago = head.renewed_ago();
                    if let Some(owner) = &head.owner
                        && head.may_be_held()
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
            let cleared = Head::new(fence, None, run_id(), Duration::ZERO, None);
            match self.put_head(&cleared, update(&etag)).await? {
                Some(_) => {
                    removed.push(format!(
                        "{}: cleared (fencing number {fence} kept)",
                        self.shown(&self.object(HEAD))
                    ));
                    up_to = Some(fence);
                }
                None => {
                    return Ok(Err(format!(
                        "job `{}` changed while it was being reset: a runner has taken it; try \
                         again once it has stopped",
                        self.url()
                    )));
                }
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
}
