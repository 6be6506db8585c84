//! A data directory: its layout, identity (control file), writer lock and segment listing.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, IoContext, Result};
use crate::format::{check_segment_size, ControlFile, SegmentName, FORMAT_VERSION};
use crate::fsutil::{fsync_dir, write_new};

/// The file in `state/` whose shared lock every running `serve` of the directory holds; each
/// one's address is in `SERVING.PID` beside it.
const SERVING: &str = "serving";

/// Opens (creating it) the file at `path` for writing and takes the flock `op` on it, waiting
/// for it.
pub(crate) fn open_flocked(path: &Path, op: libc::c_int) -> Result<File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx(|| format!("open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::io(format!("lock {}", path.display()), err));
    }
    Ok(file)
}

/// A directory marked as served ([`DataDir::mark_served`]) while this lives.
#[derive(Debug)]
pub struct ServedMark {
    /// The shared lock on `serving`, and this serve's own address file, held locked.
    locks: (File, File),
    own: PathBuf,
}

impl Drop for ServedMark {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.own);
        // Unlocked explicitly, as `DirLock` is: a child another thread forked meanwhile shares
        // the open files until its exec, and closing ours alone would leave the marks held.
        for f in [&self.locks.0, &self.locks.1] {
            // SAFETY: flock on a descriptor we own, still open.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// The name of a data directory's control file, in its root.
pub const CONTROL_NAME: &str = "control";

/// Mode of a data directory walship creates: its owner only, since segments hold the data in
/// clear. A directory that already exists keeps the mode its owner gave it.
pub const DATA_DIR_MODE: u32 = 0o700;

/// Creates `root` (and missing parents) if absent; `root` itself gets [`DATA_DIR_MODE`].
pub fn create_private_dir(root: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if root.is_dir() {
        return Ok(());
    }
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| crate::fsutil::create_error(root, "directory", e))?;
    }
    match fs::DirBuilder::new().mode(DATA_DIR_MODE).create(root) {
        Ok(()) => Ok(()),
        // Raced with another creator: what exists is kept as it is.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && root.is_dir() => Ok(()),
        Err(e) => Err(crate::fsutil::create_error(root, "directory", e)),
    }
}

/// Paths inside a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn wal_dir(&self) -> PathBuf {
        self.root.join("wal")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn control_path(&self) -> PathBuf {
        self.root.join(CONTROL_NAME)
    }
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("LOCK")
    }
    pub fn segment_path(&self, name: &SegmentName) -> PathBuf {
        self.wal_dir().join(name.to_string())
    }

    /// True when `root` holds a control file.
    pub fn is_initialized(&self) -> bool {
        self.control_path().exists()
    }

    /// Makes a new data directory with a fresh identity. The directory may exist, empty or
    /// holding only what an interrupted init leaves (empty `wal/` and `state/` folders): one
    /// with a control file is already initialised, and one with anything else is refused,
    /// naming the entry, so that segments of a directory whose control file was lost never
    /// get a new identity.
    pub fn init(root: impl Into<PathBuf>, segment_size: u64) -> Result<ControlFile> {
        check_segment_size(segment_size).map_err(Error::InvalidArgument)?;
        let root = root.into();
        check_init_target(&root)?;
        let control = ControlFile {
            identity: crate::format::SystemIdentity {
                format_version: FORMAT_VERSION,
                timeline: 1,
                system_id: Uuid::new_v4(),
                segment_size,
            },
            created_us: crate::now_us(),
        };
        DataDir::create_with_identity(root, &control)?;
        Ok(control)
    }

    /// Makes a data directory with a given identity (a standby or a restore copies its source's).
    pub fn create_with_identity(
        root: impl Into<PathBuf>,
        control: &ControlFile,
    ) -> Result<DataDir> {
        let dir = DataDir::new(root);
        if dir.is_initialized() {
            return Err(Error::AlreadyInitialized {
                path: dir.root.clone(),
            });
        }
        create_private_dir(&dir.root)?;
        for d in [dir.wal_dir(), dir.state_dir()] {
            fs::create_dir_all(&d).ctx(|| format!("create directory {}", d.display()))?;
        }
        fsync_dir(&dir.wal_dir())?;
        fsync_dir(&dir.state_dir())?;
        // Created only if absent: of two made at once, one is refused rather than both
        // reporting an identity of which only the last would stay.
        if !write_new(&dir.control_path(), &control.encode())? {
            return Err(Error::AlreadyInitialized {
                path: dir.root.clone(),
            });
        }
        if let Some(parent) = dir.root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        Ok(dir)
    }

    /// Reads and checks the control file.
    pub fn read_control(&self) -> Result<ControlFile> {
        let path = self.control_path();
        let mut file = match crate::fsutil::open_regular(&path) {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotADataDir {
                    path: self.root.clone(),
                    reason: "no control file (run `walship init` first)".into(),
                })
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(Error::NotADataDir {
                    path: self.root.clone(),
                    reason: "it is not a directory".into(),
                })
            }
            Err(e) => return Err(e),
        };
        // A control file is 64 bytes: a longer one is never read whole.
        let len = file
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        let want = crate::format::control::CONTROL_LEN as u64;
        if len != want {
            return Err(Error::Corrupt {
                file: path,
                offset: 0,
                lsn: crate::Lsn(0),
                reason: format!("control file is {len} bytes, expected {want}"),
            });
        }
        let mut bytes = Vec::new();
        (&mut file)
            .take(want)
            .read_to_end(&mut bytes)
            .ctx(|| format!("read {}", path.display()))?;
        ControlFile::decode(&bytes).map_err(|reason| Error::Corrupt {
            file: path,
            offset: 0,
            lsn: crate::Lsn(0),
            reason,
        })
    }

    /// [`DataDir::lock`] for a command that must not run beside another process: a held lock
    /// is refused with `advice` (what to stop first).
    pub fn lock_or_refuse(&self, advice: &str) -> Result<DirLock> {
        self.lock().map_err(|e| match e {
            Error::Locked { path, pid } => Error::Refused(format!(
                "{} is locked by a running process{}: {advice}",
                path.display(),
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            )),
            e => e,
        })
    }

    /// Takes the exclusive writer lock, failing at once when another process holds it.
    pub fn lock(&self) -> Result<DirLock> {
        let not_a_dir = |reason: &str| Error::NotADataDir {
            path: self.root.clone(),
            reason: reason.into(),
        };
        match fs::metadata(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not_a_dir("it does not exist"))
            }
            Ok(m) if !m.is_dir() => return Err(not_a_dir("it is not a directory")),
            _ => {}
        }
        let path = self.lock_path();
        let mut file = crate::fsutil::open_in_place(&path)?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                return Err(Error::Locked {
                    path: self.root.clone(),
                    pid: s.trim().parse().ok(),
                });
            }
            return Err(Error::io(format!("lock {}", path.display()), err));
        }
        // The directory itself is locked too: a lock file can be removed while held, and a
        // second process would then lock a new one. The directory cannot be replaced while
        // it holds the data.
        let dir = File::open(&self.root).ctx(|| format!("open {}", self.root.display()))?;
        // Held from here, so that a refusal below releases the lock file again.
        let mut held = DirLock { file, dir: None };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::Locked {
                    path: self.root.clone(),
                    pid: None,
                });
            }
            return Err(Error::io(format!("lock {}", self.root.display()), err));
        }
        held.dir = Some(dir);
        held.file
            .set_len(0)
            .and_then(|_| held.file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(held.file, "{}", std::process::id()))
            .ctx(|| format!("write pid to {}", path.display()))?;
        Ok(held)
    }

    /// Marks the directory as served, at `listen`, for as long as the returned mark lives: a
    /// shared lock on `state/serving`, which every `serve` on it holds, and the address in
    /// `state/serving.PID.N`. A standby may not adopt a directory that is served, nor follow a
    /// primary at an address its own directory is served at: it would be following itself.
    pub fn mark_served(&self, listen: std::net::SocketAddr) -> Result<ServedMark> {
        // Waits, if need be, only for a check of `is_served`, which holds the lock exclusively
        // for an instant.
        let file = open_flocked(&self.state_dir().join(SERVING), libc::LOCK_SH)?;
        // Its address, in a file of its own that it holds locked: a file no process holds (its
        // serve was killed) is passed over, whoever has its pid now. One file per shipper: a
        // serve following its directory onto a new timeline starts its next shipper before the
        // last has let go.
        static SHIPPERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SHIPPERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let own = self
            .state_dir()
            .join(format!("{SERVING}.{}.{n}", std::process::id()));
        let mut addr = open_flocked(&own, libc::LOCK_EX)?;
        addr.write_all(listen.to_string().as_bytes())
            .ctx(|| format!("write {}", own.display()))?;
        Ok(ServedMark {
            locks: (file, addr),
            own,
        })
    }

    /// True while some process serves the directory ([`DataDir::mark_served`]).
    pub fn is_served(&self) -> Result<bool> {
        let path = self.state_dir().join(SERVING);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
        };
        // SAFETY: flock on a descriptor we own; released when it is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(false);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(true);
        }
        Err(Error::io(format!("lock {}", path.display()), err))
    }

    /// The addresses running `serve` processes serve this directory at (the marks of
    /// processes that are gone, which no process holds locked, are passed over).
    pub fn served_addresses(&self) -> Vec<std::net::SocketAddr> {
        let Ok(entries) = fs::read_dir(self.state_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix(SERVING)?.strip_prefix('.')?;
                let mut f = File::open(e.path()).ok()?;
                // A file no process holds locked is a killed serve's. SAFETY: flock on a
                // descriptor we own; released when it is closed.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
                    return None;
                }
                let mut text = String::new();
                f.read_to_string(&mut text).ok()?;
                text.trim().parse().ok()
            })
            .collect()
    }

    /// Every segment file in wal/, ordered by segment number then state.
    pub fn list_segments(&self) -> Result<Vec<SegmentName>> {
        list_segments_in(&self.wal_dir())
    }
}

/// Refuses to initialise `root` unless it is absent, empty, or holds only empty `wal/` and
/// `state/` folders and the control file's temporary (an init interrupted before its control
/// file). Entries are checked without
/// following links: a link named `wal` is not a folder init made.
fn check_init_target(root: &Path) -> Result<()> {
    let refuse = |reason: String| Error::NotEmpty {
        path: root.to_path_buf(),
        reason,
    };
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(refuse("it exists and is not a directory".into()))
        }
        Err(e) => return Err(Error::io(format!("list {}", root.display()), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.ctx(|| format!("list {}", root.display()))?;
        names.push((entry.file_name(), entry.path()));
    }
    // wal/ first: segments there are what a refusal protects.
    names.sort_by(|a, b| (a.0 != "wal", &a.0).cmp(&(b.0 != "wal", &b.0)));
    if names.iter().any(|(n, _)| n == CONTROL_NAME) {
        return Err(Error::AlreadyInitialized {
            path: root.to_path_buf(),
        });
    }
    for (name, path) in &names {
        // The control file's temporaries (`.control.PID.RANDOM.tmp`): left by an init stopped
        // before its link, or another init's under way (gone by now, perhaps). Never read.
        let n = name.to_string_lossy();
        if n.starts_with(".control.") && n.ends_with(".tmp") {
            continue;
        }
        let t = fs::symlink_metadata(path)
            .ctx(|| format!("stat {}", path.display()))?
            .file_type();
        let init_made = (name == "wal" || name == "state") && t.is_dir();
        let empty = init_made
            && fs::read_dir(path)
                .ctx(|| format!("list {}", path.display()))?
                .next()
                .is_none();
        if !empty {
            let what = if init_made {
                format!(
                    "{}/ is not empty (a data directory that lost its control file? its segments cannot be given a new identity)",
                    name.to_string_lossy()
                )
            } else {
                format!(
                    "it holds {:?} (a {}), which init does not make",
                    name.to_string_lossy(),
                    crate::fsutil::file_kind(&t)
                )
            };
            return Err(refuse(what));
        }
    }
    Ok(())
}

/// Segment files in a folder, ordered by (timeline, segment number, kind). Files with other
/// names are ignored. A segment name that holds anything but a regular file (a FIFO, socket,
/// device, directory or symbolic link) is refused: opening a FIFO would block forever, and the
/// writer's truncation, renames and removals must act on the segment itself, not on a link.
pub fn list_segments_in(dir: &Path) -> Result<Vec<SegmentName>> {
    let (names, refused) = list_segments_and_refused(dir)?;
    match refused.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(names),
    }
}

/// [`list_segments_in`] that goes on past names holding something other than a regular file,
/// returning the error for each of them beside the regular segments (for `verify`, which lists
/// every problem).
pub fn list_segments_and_refused(dir: &Path) -> Result<(Vec<SegmentName>, Vec<Error>)> {
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for entry in fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str().and_then(SegmentName::parse) {
            // The type from the listing itself (lstat when the file system does not give it):
            // the entry is never opened to find out.
            let t = entry
                .file_type()
                .ctx(|| format!("stat {}", entry.path().display()))?;
            if !t.is_file() {
                refused.push(Error::NotRegularFile {
                    path: entry.path(),
                    kind: crate::fsutil::file_kind(&t),
                });
                continue;
            }
            out.push(name);
        }
    }
    out.sort_by_key(|n| (n.segment_no, n.timeline, n.kind));
    refused.sort_by_key(|e| e.to_string());
    Ok((out, refused))
}

/// Held while a process writes a data directory; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    /// The data directory, locked as well once the lock file is.
    dir: Option<File>,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Unlock explicitly rather than by closing: a child forked by another thread shares
        // the open file (until its exec closes it), and closing our descriptor alone would
        // leave the lock held by the child for that moment, so a reopen right after a close
        // would find its own process's lock.
        for f in std::iter::once(&self.file).chain(&self.dir) {
            // SAFETY: flock on a descriptor we own, still open.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_served_mark_counts_while_its_serve_holds_it_whoever_has_its_pid() {
        let t = tempfile::tempdir().unwrap();
        DataDir::init(t.path(), 1 << 16).unwrap();
        let dd = DataDir::new(t.path());
        assert!(!dd.is_served().unwrap());
        // A killed serve's address file, its pid now any live process's (this one's): no one
        // holds it, so it is passed over.
        let stale = dd
            .state_dir()
            .join(format!("{SERVING}.{}", std::process::id() + 1));
        fs::write(&stale, "127.0.0.1:5433").unwrap();
        assert_eq!(dd.served_addresses(), Vec::new());
        let addr: std::net::SocketAddr = "127.0.0.1:6543".parse().unwrap();
        let mark = dd.mark_served(addr).unwrap();
        assert!(dd.is_served().unwrap());
        assert_eq!(dd.served_addresses(), vec![addr]);
        drop(mark);
        assert!(!dd.is_served().unwrap());
        assert_eq!(dd.served_addresses(), Vec::new());
    }

    #[test]
    fn a_lock_released_while_another_thread_forks_can_be_taken_again_at_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("d");
        DataDir::init(&root, 1 << 20).expect("init");
        let dd = DataDir::new(&root);
        let stop = Arc::new(AtomicBool::new(false));
        let forker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::process::Command::new("true").status();
                }
            })
        };
        let mut refused = 0;
        for _ in 0..2000 {
            let held = dd.lock().expect("the first lock");
            drop(held);
            if dd.lock().is_err() {
                refused += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        forker.join().expect("forker");
        assert_eq!(
            refused, 0,
            "a released lock was still held by a forked child"
        );
    }
}
