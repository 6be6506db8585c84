//! Where the demo archives: a directory in its scratch folder, or an S3-compatible store when
//! one is given (`walship demo --archive-to s3://BUCKET/PREFIX`, reached through the usual AWS
//! environment, which the demo's child processes inherit).

use std::path::Path;

use walship::archive::{ArchiveStore, ArchiveTarget};
use walship::error::{Error, Result};

/// The archive the demo's archiver pushes to and its restore reads from, as the commands take
/// it.
pub(super) struct DemoArchive {
    pub(super) target: String,
    pub(super) remote: bool,
}

/// `given` (an S3 URL, which must hold no objects yet, so that every check is about this run),
/// or `local`, which must not exist yet.
pub(super) fn choose(given: Option<&str>, local: &Path) -> Result<DemoArchive> {
    let Some(url) = given else {
        if local.exists() {
            return Err(Error::InvalidArgument(format!(
                "{} already exists: give the demo an empty or new directory",
                local.display()
            )));
        }
        return Ok(DemoArchive {
            target: super::procs::path_str(local)?.to_string(),
            remote: false,
        });
    };
    let store = match ArchiveTarget::parse(url)? {
        t @ ArchiveTarget::S3(_) => t.open()?,
        ArchiveTarget::Dir(_) => {
            return Err(Error::InvalidArgument(format!(
                "--archive-to {url}: the demo takes an s3://BUCKET/PREFIX target (its local archive is in its own directory)"
            )))
        }
    };
    let objects = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start a runtime to look at the demo's archive", e))?
        .block_on(store.list())?;
    if !objects.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{url} already holds {} objects: give the demo an empty prefix (like {url}/run2)",
            objects.len()
        )));
    }
    Ok(DemoArchive {
        target: store.location(),
        remote: true,
    })
}
