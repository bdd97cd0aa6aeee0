//! Where jobs' state is kept, as `--state-dir` names it: the one place that maps a
//! location to its backend.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::bucket::s3::S3Url;
use super::fs::StateDir;
use super::{Backend, JobId, Place};

/// A parsed `--state-dir`: a local directory or a bucket.
#[derive(Debug, Clone)]
pub struct Location(Arc<dyn Backend>);

impl Location {
    /// `--state-dir` as given: a URL of a scheme the runner knows, else a directory; `Err`
    /// says what is wrong with a URL.
    pub fn parse(given: PathBuf) -> Result<Location, String> {
        // One arm per URL scheme: `None` is text of another scheme.
        let url = given.to_str().and_then(|text| url(S3Url::parse(text)));
        Ok(Location(match url {
            Some(url) => url?,
            None => Arc::new(StateDir::new(given)),
        }))
    }

    /// The place of `job_id`; nothing is touched yet.
    pub fn job(&self, job_id: &JobId) -> anyhow::Result<Box<dyn Place>> {
        self.0.job(job_id)
    }

    /// The directory the state is kept in, when it is one on this node (so that files
    /// beside it, an `--output` directory, are found by the next run).
    pub fn local_dir(&self) -> Option<&Path> {
        self.0.local_dir()
    }
}

/// A URL of one scheme, parsed, as a backend.
fn url<B: Backend + 'static>(
    parsed: Option<Result<B, String>>,
) -> Option<Result<Arc<dyn Backend>, String>> {
    parsed.map(|url| url.map(|url| Arc::new(url) as Arc<dyn Backend>))
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
