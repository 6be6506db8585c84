//! Small durable-file helpers shared by every component that writes to disk.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Opens (creating it when absent) a file of a data directory that walship overwrites in place
/// (a lock file, a published position), for reading and writing. Never through a symbolic
/// link: writing through one would overwrite whatever it points to, a segment included. A
/// link there is refused with an error naming it.
pub fn open_in_place(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::Refused(format!(
                    "{} is a symbolic link: walship writes this file in place and never through a link (it would overwrite what the link points to); remove the link",
                    path.display()
                ))
            } else {
                Error::io(format!("open {}", path.display()), e)
            }
        })
}

/// True when a process of this pid runs on this machine.
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync directory {}", dir.display()))
}

/// Reads a JSON state file (one that [`write_atomic`] replaces whole): `None` when there is
/// none. A file that does not parse is reported by `invalid`, given the parse error, so each
/// caller names its own kind of file.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    invalid: impl FnOnce(serde_json::Error) -> Error,
) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(invalid),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// Replaces `path` atomically and durably: write a temporary file beside it, fsync it, rename it
/// over `path`, fsync the directory. A crash leaves the old content or the new, never a mix.
///
/// The temporary name is unique to this call (pid and random bits, created exclusively):
/// several processes (the shipper saving a slot, a checkpoint marking it lost) may replace the
/// same file at once, and with one shared temporary name one could rename the other's
/// half-written file into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temporary(path, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        // Best effort: a leftover temporary is only a stray dot-file, never read as state.
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(
            format!("rename {} to {}", tmp.display(), path.display()),
            e,
        ));
    }
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes `bytes` durably under `path` only if nothing is there yet: a whole file appears (a
/// temporary, synced, then linked to the name) or nothing does. False when the name was taken,
/// by another process too.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = write_temporary(path, bytes)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    let linked = match linked {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => {
            return Err(Error::io(
                format!("link {} to {}", tmp.display(), path.display()),
                e,
            ))
        }
    };
    fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(linked)
}

/// `bytes` in a fresh temporary beside `path` ([`temp_name`]), synced; its path. Nothing is
/// left behind on an error.
fn write_temporary(path: &Path, bytes: &[u8]) -> Result<std::path::PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(temp_name(name));
    let written = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)
            .ctx(|| format!("write {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("fsync {}", tmp.display()))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// A temporary name for replacing `name`: `.NAME.PID.RANDOM.tmp`.
pub fn temp_name(name: &str) -> String {
    format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// True for a name [`temp_name`] made for `name`.
pub fn is_temp_name_of(candidate: &str, name: &str) -> bool {
    candidate
        .strip_prefix('.')
        .and_then(|c| c.strip_prefix(name))
        .and_then(|c| c.strip_prefix('.'))
        .is_some_and(|c| c.ends_with(".tmp"))
}

/// Advises the kernel that `file` is read at random: reads then bring in single pages instead
/// of readahead-sized folios, which would make the writer's later syncs write whole folios.
pub fn advise_random(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a valid descriptor; failure only loses the hint.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
    }
}

/// Why `path` (a `what`: "archive", "directory") cannot be created, as an I/O error (a
/// watching archiver retries it: a backup volume may come back): with the part of the path
/// that is in the way when one is not a directory, named with what it is.
pub fn create_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    let blocker = path
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find_map(|a| fs::metadata(a).ok().filter(|m| !m.is_dir()).map(|m| (a, m)));
    let why = blocker.map_or(String::new(), |(a, m)| {
        format!(
            ": {} is a {}, not a directory",
            a.display(),
            file_kind(&m.file_type())
        )
    });
    Error::io(format!("create {what} {}{why}", path.display()), e)
}

/// What kind of file system object a non-regular file is, for error messages.
pub fn file_kind(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// The bytes of a small file (a token, a key, a certificate) that must be a regular file: a
/// FIFO or a device is an error naming what it is, never a read that waits for ever.
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    match open_regular(path) {
        Ok(mut f) => {
            let mut out = Vec::new();
            f.read_to_end(&mut out)?;
            Ok(out)
        }
        Err(Error::Io { source, .. }) => Err(source),
        Err(Error::NotRegularFile { kind, .. }) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is a {kind}, not a regular file"),
        )),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// Opens a file for reading only if it is a regular file. The open never blocks (a FIFO
/// opened for reading waits for a writer forever), and the type is checked on the opened
/// descriptor, so a file swapped in after a listing is refused too.
pub fn open_regular(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ctx(|| format!("open {}", path.display()))?;
    let t = f
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .file_type();
    if !t.is_file() {
        return Err(Error::NotRegularFile {
            path: path.to_path_buf(),
            kind: file_kind(&t),
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_json_tells_missing_from_invalid() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("state.json");
        let invalid = |e: serde_json::Error| Error::Other(format!("bad state: {e}"));
        assert_eq!(read_json::<u64>(&path, invalid).expect("missing"), None);
        write_atomic(&path, b"42").expect("write");
        assert_eq!(read_json::<u64>(&path, invalid).expect("valid"), Some(42));
        std::fs::write(&path, b"{").expect("write");
        match read_json::<u64>(&path, invalid) {
            Err(Error::Other(m)) => assert!(m.starts_with("bad state: "), "{m}"),
            other => panic!("expected the caller's error, got {other:?}"),
        }
        // A directory where the file should be is an I/O error, not a missing file.
        let dir = tmp.path().join("dir.json");
        std::fs::create_dir(&dir).expect("mkdir");
        assert!(matches!(
            read_json::<u64>(&dir, invalid),
            Err(Error::Io { .. })
        ));
    }
}
