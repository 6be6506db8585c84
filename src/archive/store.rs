//! Where archived objects live. [`ArchiveStore`] is the interface the archiver, restore and
//! verify use; [`LocalDirStore`] implements it over a directory (a mounted backup volume).
//!
//! The interface is shaped after object stores so that one can implement it without changing
//! its callers: flat names at the archive's root, whole-object `put` that never replaces an
//! existing object (an object store's conditional put, `If-None-Match: *`), and async methods.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::blocking;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::fsync_dir;

/// What `put` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written and is durable. `verified`: the store's answer proves it holds
    /// exactly the bytes sent (an S3 ETag equal to the MD5 of what was sent); otherwise the
    /// caller reads the object back to know.
    Created { verified: bool },
    /// An object of that name already exists; nothing was written. The caller compares it.
    AlreadyExists,
}

/// One object in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
}

/// Backup storage for one archive. Names are flat (no '/'), 1 to 128 characters of ASCII
/// letters, digits, '.', '-' and '_', never starting with '.' (those are the store's own
/// temporary names).
pub trait ArchiveStore: Send + Sync + 'static {
    /// Where the archive is, for messages and the archiver's registry entry.
    fn location(&self) -> String;

    /// The archive's directory when it is one on this machine (resolved: no `.`, `..` or
    /// symbolic links), so that a restore can refuse to write over it.
    fn local_root(&self) -> Option<&Path> {
        None
    }

    /// Stores `data` under `name` durably and atomically: a reader sees either no object or the
    /// whole of it, never a part. An existing object is never replaced.
    fn put(
        &self,
        name: &str,
        data: Arc<Vec<u8>>,
    ) -> impl Future<Output = Result<PutOutcome>> + Send;

    /// The object's bytes, read from storage (not from a copy kept by the store), or `None`.
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;

    /// Every object at the archive's root, in name order.
    fn list(&self) -> impl Future<Output = Result<Vec<ObjectInfo>>> + Send;

    fn exists(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Makes an existing object durable, its bytes and its name. An object that was found
    /// rather than written (a push that crashed between naming the object and syncing the
    /// directory, a copy made by hand) may not be yet; nothing may count it as archived before
    /// this succeeded.
    fn sync(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Removes an object; false when there was none.
    fn delete(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Writes `data` under `name` durably, replacing what is there at once: a reader sees the
    /// old object or the new one, whole. Only the identity file is ever replaced (pruning moves
    /// the segment the archive begins at).
    fn replace(&self, name: &str, data: Arc<Vec<u8>>) -> impl Future<Output = Result<()>> + Send;
}

/// Checks an object name (see [`ArchiveStore`]).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid archive object name {name:?}"
        )))
    }
}

/// An archive in a local directory.
#[derive(Clone, Debug)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// Uses `root`, creating it (and fsyncing its parent) when it does not exist. The root is
    /// kept as an absolute path: it is the archive's location in the consumer registry, which
    /// other processes (retention) read from other working directories. A root inside a data
    /// directory is refused before anything is created: `restore --force` of that directory,
    /// or its removal, would take the archive with it.
    pub fn create(root: impl Into<PathBuf>) -> Result<LocalDirStore> {
        let root = absolute(root.into())?;
        // A path that cannot be resolved (a file in the way) is named by the create below.
        if let Some(dd) = resolve(&root).ok().and_then(|r| enclosing_data_dir(&r)) {
            return Err(Error::Refused(format!(
                "{} is inside the walship data directory {}: an archive there goes with that directory when it is replaced (`restore --force`) or removed; nothing was written. Archive into a directory outside every data directory (--to)",
                root.display(),
                dd.display()
            )));
        }
        if !root.is_dir() {
            fs::create_dir_all(&root)
                .map_err(|e| crate::fsutil::create_error(&root, "archive", e))?;
            if let Some(p) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(p)?;
            }
        }
        Ok(LocalDirStore {
            root: canonical(root)?,
        })
    }

    /// Uses an existing directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalDirStore> {
        let root = absolute(root.into())?;
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: is a {}, not an archive directory",
                    root.display(),
                    crate::fsutil::file_kind(&m.file_type())
                )))
            }
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: no such archive directory",
                    root.display()
                )))
            }
        }
        Ok(LocalDirStore {
            root: canonical(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes temporary files a killed `put` left behind. They never carry a final name, so
    /// nothing reads them; this only frees their space. A temporary of a process still running
    /// on this machine (its pid is in the name) is another archiver's upload under way and is
    /// left alone, unless it is older than [`STALE_TEMPORARY`] (a pid taken again, or a
    /// process of another machine sharing the archive).
    pub fn remove_temporaries(&self) -> Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.root).ctx(|| format!("list {}", self.root.display()))? {
            let entry = entry.ctx(|| format!("list {}", self.root.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                let fresh = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < STALE_TEMPORARY);
                if fresh && temporary_writer(name).is_some_and(crate::fsutil::process_alive) {
                    continue;
                }
                let p = entry.path();
                fs::remove_file(&p).ctx(|| format!("remove {}", p.display()))?;
                n += 1;
            }
        }
        if n > 0 {
            self.sync_root()?;
        }
        Ok(n)
    }

    /// Fsyncs the archive directory, making the names created or removed in it durable.
    fn sync_root(&self) -> Result<()> {
        crate::fault!("archive::dir_fsync", e => Error::io(format!("fsync directory {}", self.root.display()), e));
        fsync_dir(&self.root)
    }

    fn sync_blocking(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let path = self.root.join(name);
        // Read-only is enough: fsync writes back whatever of the file is not on the device.
        File::open(&path)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("fsync {}", path.display()))?;
        self.sync_root()
    }

    /// Creates the archive directory again when it was removed while in use, as starting the
    /// archiver would.
    fn ensure_root(&self) -> Result<()> {
        if self.root.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(&self.root)
            .map_err(|e| crate::fsutil::create_error(&self.root, "archive", e))?;
        if let Some(p) = self.root.parent() {
            fsync_dir(p)?;
        }
        Ok(())
    }

    /// A new temporary file beside the objects, made for `name`, holding `data`, synced: its
    /// path and the open file. It is removed again when anything fails. `put`: the write is
    /// the failpoint `archive::put::write` (a short write).
    fn write_synced_temp(&self, name: &str, data: &[u8], put: bool) -> Result<(PathBuf, File)> {
        let tmp = self.root.join(format!(
            ".{name}.{}.{:08x}.tmp",
            std::process::id(),
            rand::random::<u32>()
        ));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .ctx(|| format!("create {}", tmp.display()))?;
            if put {
                crate::fault!("archive::put::write", e => Error::io(format!("write {}", tmp.display()), crate::faults::short_write(&mut f, data, e)));
            }
            f.write_all(data)
                .ctx(|| format!("write {}", tmp.display()))?;
            f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
            Ok(f)
        })();
        match written {
            Ok(f) => Ok((tmp, f)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn put_blocking(&self, name: &str, data: &[u8]) -> Result<PutOutcome> {
        check_name(name)?;
        self.ensure_root()?;
        let path = self.root.join(name);
        if path.exists() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let (tmp, f) = self.write_synced_temp(name, data, true)?;
        // The pages are clean now: drop them so the read-back check reads the device.
        drop_cache(&f);
        let result = link_new(&tmp, &path);
        let removed = fs::remove_file(&tmp);
        let outcome = result?;
        removed.ctx(|| format!("remove {}", tmp.display()))?;
        self.sync_root()?;
        Ok(outcome)
    }

    fn replace_blocking(&self, name: &str, data: &[u8]) -> Result<()> {
        check_name(name)?;
        let path = self.root.join(name);
        let (tmp, _f) = self.write_synced_temp(name, data, false)?;
        // A rename replaces the name at once.
        let result = fs::rename(&tmp, &path)
            .ctx(|| format!("rename {} to {}", tmp.display(), path.display()));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        self.sync_root()
    }

    fn get_blocking(&self, name: &str) -> Result<Option<Vec<u8>>> {
        check_name(name)?;
        let path = self.root.join(name);
        // Never blocks on a FIFO under an object's name; anything not a regular file is refused.
        let mut f = match crate::fsutil::open_regular(&path) {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut b).ctx(|| format!("read {}", path.display()))?;
        Ok(Some(b))
    }

    fn delete_blocking(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let path = self.root.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.sync_root()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }
}

/// A temporary file this old is removed whoever made it.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The pid in a temporary file's name (`.NAME.PID.RANDOM.tmp`).
fn temporary_writer(file_name: &str) -> Option<i32> {
    let stem = file_name.strip_suffix(".tmp")?;
    let (rest, _random) = stem.rsplit_once('.')?;
    let (_, pid) = rest.rsplit_once('.')?;
    pid.parse().ok()
}

/// Lists the objects of a local archive directory (temporary files and subdirectories are not
/// objects).
pub fn list_dir(root: &Path) -> Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root).ctx(|| format!("list {}", root.display()))? {
        let entry = entry.ctx(|| format!("list {}", root.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if check_name(&name).is_err() {
            continue;
        }
        let meta = entry
            .metadata()
            .ctx(|| format!("stat {}", entry.path().display()))?;
        // A segment's name holding a FIFO, socket, device, directory or link is refused rather
        // than skipped, which would look like a missing segment.
        if !meta.is_file() && super::parse_object_name(&name).is_some() {
            return Err(Error::NotRegularFile {
                path: entry.path(),
                kind: crate::fsutil::file_kind(&meta.file_type()),
            });
        }
        if meta.is_file() {
            out.push(ObjectInfo {
                name,
                size: meta.len(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `p` as the file system will reach it, whether or not it exists yet: its nearest existing
/// ancestor's one spelling (no `.`, `..` or symbolic links) followed by the parts below it.
pub fn resolve(p: &Path) -> Result<PathBuf> {
    let abs = absolute(p.to_path_buf())?;
    let mut rest = Vec::new();
    let mut base = abs.as_path();
    loop {
        match fs::canonicalize(base) {
            Ok(c) => return Ok(rest.iter().rev().fold(c, |acc, part| acc.join(part))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(name)) = (base.parent(), base.file_name()) else {
                    return Ok(abs);
                };
                rest.push(name.to_os_string());
                base = parent;
            }
            Err(e) => return Err(Error::io(format!("resolve {}", base.display()), e)),
        }
    }
}

/// The data directory `path` (resolved) lies inside: the nearest directory above it holding a
/// walship control file (checked by its magic, so that another program's `control` does not
/// count). `path` itself is not looked at.
pub fn enclosing_data_dir(path: &Path) -> Option<PathBuf> {
    use std::io::Read;
    path.ancestors().skip(1).find_map(|dir| {
        let f = crate::fsutil::open_regular(&dir.join(crate::datadir::CONTROL_NAME)).ok()?;
        let mut magic = [0u8; 8];
        f.take(8).read_exact(&mut magic).ok()?;
        (&magic == crate::format::control::CONTROL_MAGIC).then(|| dir.to_path_buf())
    })
}

/// `p` made absolute against the working directory.
fn absolute(p: PathBuf) -> Result<PathBuf> {
    std::path::absolute(&p).ctx(|| format!("resolve {}", p.display()))
}

/// The one spelling of an existing directory (no `.`, `..` or symbolic links), so that the
/// same archive always has the same location however it was named.
fn canonical(p: PathBuf) -> Result<PathBuf> {
    fs::canonicalize(&p).ctx(|| format!("resolve {}", p.display()))
}

fn drop_cache(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a valid descriptor; failure only loses the hint.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

impl ArchiveStore for LocalDirStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn put(
        &self,
        name: &str,
        data: Arc<Vec<u8>>,
    ) -> impl Future<Output = Result<PutOutcome>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        blocking(move || s.put_blocking(&name, &data))
    }

    fn get(&self, name: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        blocking(move || s.get_blocking(&name))
    }

    fn list(&self) -> impl Future<Output = Result<Vec<ObjectInfo>>> + Send {
        let root = self.root.clone();
        // A removed archive directory holds nothing (the archiver decides what that means).
        blocking(move || match fs::symlink_metadata(&root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            _ => list_dir(&root),
        })
    }

    fn exists(&self, name: &str) -> impl Future<Output = Result<bool>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        blocking(move || {
            check_name(&name)?;
            Ok(s.root.join(&name).is_file())
        })
    }

    fn delete(&self, name: &str) -> impl Future<Output = Result<bool>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        blocking(move || s.delete_blocking(&name))
    }

    fn sync(&self, name: &str) -> impl Future<Output = Result<()>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        blocking(move || s.sync_blocking(&name))
    }

    fn replace(&self, name: &str, data: Arc<Vec<u8>>) -> impl Future<Output = Result<()>> + Send {
        let (s, name) = (self.clone(), name.to_string());
        blocking(move || s.replace_blocking(&name, &data))
    }
}

/// Gives the synced temporary file `tmp` the name `path` by a hard link, a rename that never
/// replaces: the final name appears whole or not at all, and an object that appeared
/// meanwhile is left alone.
fn link_new(tmp: &Path, path: &Path) -> Result<PutOutcome> {
    crate::fault!("archive::put::link", e => Error::io(format!("link {} to {}", tmp.display(), path.display()), e));
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(PutOutcome::Created { verified: false }),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyExists),
        Err(e) => Err(Error::io(
            format!("link {} to {}", tmp.display(), path.display()),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_never_replaces() {
        let t = tempfile::tempdir().unwrap();
        let s = LocalDirStore::create(t.path().join("a")).unwrap();
        let one = Arc::new(b"one".to_vec());
        assert_eq!(
            s.put("x.wal", one.clone()).await.unwrap(),
            PutOutcome::Created { verified: false }
        );
        let two = Arc::new(b"two".to_vec());
        assert_eq!(
            s.put("x.wal", two).await.unwrap(),
            PutOutcome::AlreadyExists
        );
        assert_eq!(s.get("x.wal").await.unwrap(), Some(b"one".to_vec()));
        assert!(s.exists("x.wal").await.unwrap());
        assert_eq!(
            s.list().await.unwrap(),
            vec![ObjectInfo {
                name: "x.wal".into(),
                size: 3
            }]
        );
        assert!(s.delete("x.wal").await.unwrap());
        assert!(!s.delete("x.wal").await.unwrap());
        assert_eq!(s.get("x.wal").await.unwrap(), None);
        assert!(s.get("../x").await.is_err());
        assert!(s.put(".hidden", one).await.is_err());
    }
}
