//! Small durable-file helpers shared by every component that writes to disk.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Fsyncs a directory so that entries created, renamed or removed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("fsync directory {}", dir.display()))
}

/// Replaces `path` atomically and durably: write a temporary file beside it, fsync it, rename it
/// over `path`, fsync the directory. A crash leaves the old content or the new, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)
            .ctx(|| format!("write {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).ctx(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    fsync_dir(dir)
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
