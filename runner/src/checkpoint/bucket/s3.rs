//! S3 and S3-compatible servers (MinIO, Ceph, s3s): the `s3://BUCKET/PREFIX` location
//! and the client's configuration. The rest of the store is the object store's, in the
//! parent module.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::BucketJob;
use crate::checkpoint::{Backend, JobId, Place, StoreError};

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

impl Backend for S3Url {
    fn job(&self, job_id: &JobId) -> anyhow::Result<Box<dyn Place>> {
        let client = self
            .client()
            .with_context(|| format!("unusable state location for job `{job_id}`"))?;
        let base = match &self.prefix {
            Some(prefix) => prefix.clone().join(job_id.as_str()),
            None => ObjectPath::from(job_id.as_str()),
        };
        let mut job = BucketJob::new(
            Arc::new(client),
            format!("s3://{}", self.bucket),
            self.to_string(),
            base,
            job_id.clone(),
        );
        if !has_credentials() {
            job.hint = Some(
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a web \
                 identity, AWS_WEB_IDENTITY_TOKEN_FILE) in the runner's environment; without \
                 them the client asked the instance metadata service",
            );
        }
        Ok(Box::new(job))
    }

    /// A bucket is reached from every node.
    fn local_dir(&self) -> Option<&std::path::Path> {
        None
    }
}

/// Whether the environment names credentials, or where to get them, other than the
/// instance metadata service (the client's last resort, which is only there on a cloud
/// instance).
fn has_credentials() -> bool {
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

impl S3Url {
    /// A client for the bucket, with credentials, region and endpoint from the standard
    /// AWS environment variables; nothing is sent yet.
    fn client(&self) -> Result<AmazonS3, StoreError> {
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
        builder
            .with_bucket_name(&self.bucket)
            .build()
            .map_err(|error| StoreError::Remote {
                action: "set up a client for",
                object: self.to_string(),
                cause: Box::new(error),
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
}
