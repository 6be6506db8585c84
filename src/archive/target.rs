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

/// The path of the file URL `url`, whose path part is `p`: percent-escapes decoded to the bytes
/// they stand for. A query, a fragment, a malformed escape or an escaped NUL is refused.
fn file_url_path(url: &str, p: &str) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "invalid archive URL {url:?}: {why} (write a space as %20, or give the directory as a plain path)"
        ))
    };
    if p.contains(['?', '#']) {
        return Err(bad("a file URL has no query or fragment"));
    }
    let mut out = Vec::with_capacity(p.len());
    let mut bytes = p.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex: Vec<u8> = bytes.by_ref().take(2).collect();
        let v = std::str::from_utf8(&hex)
            .ok()
            .filter(|h| h.len() == 2 && h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| bad("a % must be followed by two hex digits"))?;
        if v == 0 {
            return Err(bad("%00 (a NUL byte) cannot be in a path"));
        }
        out.push(v);
    }
    Ok(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

impl ArchiveTarget {
    /// `s3://BUCKET[/PREFIX]`, `file:///ABSOLUTE/PATH`, or a plain path. Any other `SCHEME://`
    /// is refused rather than taken for a relative directory.
    pub fn parse(s: &str) -> Result<ArchiveTarget> {
        if s.starts_with("s3://") {
            return Ok(ArchiveTarget::S3(S3Config::from_url(s)?));
        }
        if let Some(p) = s.strip_prefix("file://") {
            // `file://localhost/PATH` is the same URL as `file:///PATH`.
            let p = p.strip_prefix("localhost").unwrap_or(p);
            if !p.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "invalid archive URL {s:?}: a file URL names an absolute path (file:///mnt/backup/wal)"
                )));
            }
            return Ok(ArchiveTarget::Dir(file_url_path(s, p)?));
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
        // Percent-encoded bytes are decoded; a bad escape, a query or a fragment is refused.
        assert!(
            matches!(ArchiveTarget::parse("file:///mnt/my%20wal/%C3%A9t%C3%A9").unwrap(), ArchiveTarget::Dir(p) if p == std::path::Path::new("/mnt/my wal/été"))
        );
        assert!(
            matches!(ArchiveTarget::parse("file://localhost/mnt/a").unwrap(), ArchiveTarget::Dir(p) if p == std::path::Path::new("/mnt/a"))
        );
        for bad in [
            "file:///mnt/a%+1",
            "file:///mnt/a%2",
            "file:///mnt/a%zz",
            "file:///mnt/a?x=1",
            "file:///mnt/a#f",
            "file:///mnt/a%00b",
        ] {
            let e = ArchiveTarget::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(ArchiveTarget::parse("gs://bkt/p").is_err());
    }
}
