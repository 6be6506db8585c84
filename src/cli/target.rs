//! Archive targets on the command line: a directory, `file:///PATH` or `s3://BUCKET/PREFIX`,
//! and the flags that override the AWS environment for an S3 target.

use std::path::PathBuf;

use clap::Args;
use walship::archive::{AnyStore, ArchiveTarget};

use super::Failure;

/// Where an S3-compatible store is and how to sign in; each flag overrides its environment
/// variable. No secret is ever logged or printed.
#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// S3 endpoint URL, for a store other than AWS (overrides AWS_ENDPOINT_URL), like
    /// http://127.0.0.1:9000.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// Region (overrides AWS_REGION).
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Access key id (overrides AWS_ACCESS_KEY_ID).
    #[arg(long, value_name = "ID")]
    pub s3_access_key_id: Option<String>,
    /// A file holding the secret access key on its first line (overrides
    /// AWS_SECRET_ACCESS_KEY; a file keeps the secret out of the process list).
    #[arg(long, value_name = "FILE")]
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// Allow plain HTTP to the endpoint (a store on loopback; overrides AWS_ALLOW_HTTP).
    #[arg(long)]
    pub s3_allow_http: bool,
}

/// Parses a target and applies the S3 flags to an S3 one. A path that is not UTF-8 (which no
/// URL is) is a directory.
pub fn parse(target: &std::path::Path, s3: &S3Args) -> Result<ArchiveTarget, Failure> {
    let Some(text) = target.to_str() else {
        return Ok(ArchiveTarget::Dir(target.to_path_buf()));
    };
    let mut t = ArchiveTarget::parse(text)?;
    if let ArchiveTarget::S3(c) = &mut t {
        if s3.s3_endpoint.is_some() {
            c.endpoint.clone_from(&s3.s3_endpoint);
        }
        if s3.s3_region.is_some() {
            c.region.clone_from(&s3.s3_region);
        }
        if s3.s3_access_key_id.is_some() {
            c.access_key_id.clone_from(&s3.s3_access_key_id);
        }
        if let Some(f) = &s3.s3_secret_access_key_file {
            let text = std::fs::read_to_string(f).map_err(|e| {
                Failure::Error(format!(
                    "read the secret access key from {}: {e}",
                    f.display()
                ))
            })?;
            let secret = text.lines().next().unwrap_or("").trim().to_string();
            if secret.is_empty() {
                return Err(Failure::Error(format!(
                    "{}: no secret access key on its first line",
                    f.display()
                )));
            }
            c.secret_access_key = Some(secret);
        }
        if s3.s3_allow_http {
            c.allow_http = Some(true);
        }
    }
    Ok(t)
}

/// The store of an archive that must already exist.
pub fn open(target: impl AsRef<std::path::Path>, s3: &S3Args) -> Result<AnyStore, Failure> {
    Ok(parse(target.as_ref(), s3)?.open()?)
}
