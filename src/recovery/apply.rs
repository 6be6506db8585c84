//! The changes recovery makes on disk, decided first by the plan and then applied in order.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use super::*;

/// A change recovery makes on disk. Every check that can fail runs while the plan is made;
/// only then are the changes applied, in order.
#[derive(Debug)]
pub(super) enum Action {
    /// Move a file whose bytes may hold records into `setaside/` (see [`crate::setaside`]).
    MoveAside { path: PathBuf, why: String },
    /// Remove a file that holds nothing but zeros.
    Remove { path: PathBuf },
    /// Keep a copy of the file in `setaside/`, then zero `[from, to]` of it and sync it.
    ZeroTail {
        path: PathBuf,
        from: usize,
        to: usize,
        why: String,
    },
    /// Cut a segment after its seal marker, sync it and give it its sealed name. When bytes
    /// other than zeros follow the marker, a copy is kept first.
    FinishSeal {
        path: PathBuf,
        len: usize,
        sealed: PathBuf,
        keep_copy: bool,
    },
    /// Give an all-zero open segment the prepared name, for the writer to start it again.
    Restart { path: PathBuf, prepared: PathBuf },
    /// Make records found in the page cache durable.
    SyncData { path: PathBuf },
}

/// Applies a plan made by [`plan`](super::plan), in order.
pub(super) fn apply(dir: &DataDir, actions: &[Action], rec: &mut Recovered) -> Result<()> {
    for a in actions {
        match a {
            Action::MoveAside { path, why } => {
                let to = crate::setaside::move_aside(dir, path)?;
                tracing::error!(file = %path.display(), set_aside_as = %to.display(), "recovery took a file that may hold records out of the log: {why}; nothing was deleted: inspect it with `walship dump` and remove it once you know it holds nothing you need");
                rec.repairs.push(format!(
                    "{}: set aside as {} ({why})",
                    path.display(),
                    to.display()
                ));
            }
            Action::Remove { path } => {
                fs::remove_file(path).ctx(|| format!("remove {}", path.display()))?;
            }
            Action::ZeroTail {
                path,
                from,
                to,
                why,
            } => {
                let bytes = fs::read(path).ctx(|| format!("read {}", path.display()))?;
                let copy = crate::setaside::copy_aside(dir, path, &bytes)?;
                tracing::warn!(file = %path.display(), copy = %copy.display(), "recovery zeroed a torn tail: {why}; the file as found is kept as the copy: if the machine did not crash or lose power, check the disk");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .ctx(|| format!("open {}", path.display()))?;
                f.write_all_at(&vec![0u8; to + 1 - from], *from as u64)
                    .ctx(|| format!("zero torn tail of {}", path.display()))?;
                f.sync_data().ctx(|| format!("fsync {}", path.display()))?;
                rec.repairs
                    .push(format!("zeroed {why}; copy kept as {}", copy.display()));
            }
            Action::FinishSeal {
                path,
                len,
                sealed,
                keep_copy,
            } => {
                if *keep_copy {
                    let bytes = fs::read(path).ctx(|| format!("read {}", path.display()))?;
                    let copy = crate::setaside::copy_aside(dir, path, &bytes)?;
                    tracing::warn!(file = %path.display(), copy = %copy.display(), "bytes other than zeros follow an interrupted seal's marker; the file as found is kept as the copy");
                }
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .ctx(|| format!("open {}", path.display()))?;
                f.set_len(*len as u64)
                    .ctx(|| format!("truncate {}", path.display()))?;
                f.sync_all().ctx(|| format!("fsync {}", path.display()))?;
                fs::rename(path, sealed)
                    .ctx(|| format!("rename {} to {}", path.display(), sealed.display()))?;
                fsync_dir(&dir.wal_dir())?;
            }
            Action::Restart { path, prepared } => {
                fs::rename(path, prepared)
                    .ctx(|| format!("rename {} to {}", path.display(), prepared.display()))?;
            }
            Action::SyncData { path } => {
                fs::File::open(path)
                    .and_then(|f| f.sync_data())
                    .ctx(|| format!("fsync {}", path.display()))?;
            }
        }
    }
    Ok(())
}
