//! Where an archive is, as the operator names it: a directory (a plain path or a `file://`
//! URL) or a prefix of an S3-compatible bucket (`s3://BUCKET/PREFIX`); and [`AnyStore`], the
//! store for either, so that the archiver, restore and verify take any target.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use super::s3::{S3Config, S3Store};
use super::store::{ArchiveStore, LocalDirStore, ObjectInfo, PutOutcome};
use crate::error::{Error, Result};

/// A parsed archive target.
#[derive(Clone, Debug)]
pub enum ArchiveTarget {
    Dir(PathBuf),
    S3(S3Config),
}

impl ArchiveTarget {
    /// `s3://BUCKET[/PREFIX]`, `file:///ABSOLUTE/PATH`, or a plain path. Any other `SCHEME://`
    /// is refused rather than taken for a relative directory.
    pub fn parse(s: &str) -> Result<ArchiveTarget> {
        if s.starts_with("s3://") {
            return Ok(ArchiveTarget::S3(S3Config::from_url(s)?));
        }
        if let Some(p) = s.strip_prefix("file://") {
            if !p.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "invalid archive URL {s:?}: a file URL names an absolute path (file:///mnt/backup/wal)"
                )));
            }
            return Ok(ArchiveTarget::Dir(PathBuf::from(p)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(Error::InvalidArgument(format!(
                    "unsupported archive URL scheme {scheme:?} in {s:?}: use s3://BUCKET/PREFIX, file:///PATH or a directory path"
                )));
            }
        }
        Ok(ArchiveTarget::Dir(PathBuf::from(s)))
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, ArchiveTarget::S3(_))
    }

    /// The store, creating a missing archive directory (the archiver's way).
    pub fn create(&self) -> Result<AnyStore> {
        match self {
            ArchiveTarget::Dir(p) => Ok(AnyStore::Dir(LocalDirStore::create(p)?)),
            ArchiveTarget::S3(c) => Ok(AnyStore::S3(S3Store::new(c)?)),
        }
    }

    /// The store of an archive that must exist (restore, verify).
    pub fn open(&self) -> Result<AnyStore> {
        match self {
            ArchiveTarget::Dir(p) => Ok(AnyStore::Dir(LocalDirStore::open(p)?)),
            ArchiveTarget::S3(c) => Ok(AnyStore::S3(S3Store::new(c)?)),
        }
    }
}

/// A directory archive or an S3 one.
#[derive(Clone, Debug)]
pub enum AnyStore {
    Dir(LocalDirStore),
    S3(S3Store),
}

impl AnyStore {
    /// Removes what interrupted pushes left behind: temporary files in a directory archive. An
    /// object store has none (a conditional PUT is whole or absent).
    pub fn remove_temporaries(&self) -> Result<usize> {
        match self {
            AnyStore::Dir(d) => d.remove_temporaries(),
            AnyStore::S3(_) => Ok(0),
        }
    }
}

impl ArchiveStore for AnyStore {
    fn location(&self) -> String {
        match self {
            AnyStore::Dir(d) => d.location(),
            AnyStore::S3(s) => s.location(),
        }
    }

    fn local_root(&self) -> Option<&std::path::Path> {
        match self {
            AnyStore::Dir(d) => d.local_root(),
            AnyStore::S3(_) => None,
        }
    }

    fn put(
        &self,
        name: &str,
        data: Arc<Vec<u8>>,
    ) -> impl Future<Output = Result<PutOutcome>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move {
            match s {
                AnyStore::Dir(d) => d.put(&name, data).await,
                AnyStore::S3(x) => x.put(&name, data).await,
            }
        }
    }

    fn get(&self, name: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move {
            match s {
                AnyStore::Dir(d) => d.get(&name).await,
                AnyStore::S3(x) => x.get(&name).await,
            }
        }
    }

    fn list(&self) -> impl Future<Output = Result<Vec<ObjectInfo>>> + Send {
        let s = self.clone();
        async move {
            match s {
                AnyStore::Dir(d) => d.list().await,
                AnyStore::S3(x) => x.list().await,
            }
        }
    }

    fn exists(&self, name: &str) -> impl Future<Output = Result<bool>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move {
            match s {
                AnyStore::Dir(d) => d.exists(&name).await,
                AnyStore::S3(x) => x.exists(&name).await,
            }
        }
    }

    fn sync(&self, name: &str) -> impl Future<Output = Result<()>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move {
            match s {
                AnyStore::Dir(d) => d.sync(&name).await,
                AnyStore::S3(x) => x.sync(&name).await,
            }
        }
    }

    fn delete(&self, name: &str) -> impl Future<Output = Result<bool>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move {
            match s {
                AnyStore::Dir(d) => d.delete(&name).await,
                AnyStore::S3(x) => x.delete(&name).await,
            }
        }
    }

    fn replace(&self, name: &str, data: Arc<Vec<u8>>) -> impl Future<Output = Result<()>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        async move {
            match s {
                AnyStore::Dir(d) => d.replace(&name, data).await,
                AnyStore::S3(x) => x.replace(&name, data).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert!(
            matches!(ArchiveTarget::parse("s3://bkt/p").unwrap(), ArchiveTarget::S3(c) if c.prefix == "p")
        );
        assert!(
            matches!(ArchiveTarget::parse("file:///mnt/a").unwrap(), ArchiveTarget::Dir(p) if p == std::path::Path::new("/mnt/a"))
        );
        assert!(
            matches!(ArchiveTarget::parse("rel/dir").unwrap(), ArchiveTarget::Dir(p) if p == std::path::Path::new("rel/dir"))
        );
        assert!(ArchiveTarget::parse("file://rel").is_err());
        assert!(ArchiveTarget::parse("gs://bkt/p").is_err());
    }
}
