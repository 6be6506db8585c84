//! Files recovery takes out of the log without destroying them: bytes it cannot prove were never
//! acknowledged are moved (or copied, before a repair changes them) into `DATA_DIR/setaside/`,
//! under their original name followed by the time, which no reader takes for a segment. A
//! rewind's are named by the switch point instead (`src/rewind.rs`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::datadir::DataDir;
use crate::error::{IoContext, Result};
use crate::fsutil::fsync_dir;

/// The directory that holds set-aside files.
pub fn setaside_dir(dir: &DataDir) -> PathBuf {
    dir.root().join("setaside")
}

/// A name under the set-aside directory for `path`'s file, not taken yet.
fn target(dir: &DataDir, path: &Path) -> Result<PathBuf> {
    let aside = setaside_dir(dir);
    if !aside.is_dir() {
        fs::create_dir(&aside).ctx(|| format!("create directory {}", aside.display()))?;
        fsync_dir(dir.root())?;
    }
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    for n in 0u32..10_000 {
        let name = if n == 0 {
            format!("{base}.{stamp}")
        } else {
            format!("{base}.{stamp}.{n}")
        };
        let p = aside.join(name);
        if !p.exists() {
            return Ok(p);
        }
    }
    Err(crate::Error::Other(format!(
        "no free name for {} in {}",
        base,
        aside.display()
    )))
}

/// Moves `path` into the set-aside directory; both directories are synced, so the move is
/// durable before anything relies on the file being gone. Returns the new path.
pub fn move_aside(dir: &DataDir, path: &Path) -> Result<PathBuf> {
    let to = target(dir, path)?;
    fs::rename(path, &to).ctx(|| format!("rename {} to {}", path.display(), to.display()))?;
    fsync_dir(&setaside_dir(dir))?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(to)
}

/// Stores `bytes` (a file's content before a repair changes it) in the set-aside directory
/// under `path`'s name, durably. Returns the copy's path.
pub fn copy_aside(dir: &DataDir, path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let to = target(dir, path)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&to)
        .ctx(|| format!("create {}", to.display()))?;
    f.write_all(bytes)
        .ctx(|| format!("write {}", to.display()))?;
    f.sync_all().ctx(|| format!("fsync {}", to.display()))?;
    fsync_dir(&setaside_dir(dir))?;
    Ok(to)
}

/// The segment a single file given by a user (to `dump` or `verify`) holds, by its name: a
/// segment file's name, or a set-aside copy's. A prepared file (`.wal.prep`) is refused: it is
/// the writer's next segment or a released one kept for reuse, and holds no record of the log.
pub fn single_segment_name(path: &std::path::Path) -> crate::Result<crate::format::SegmentName> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match segment_name_of(file_name) {
        Some(n) if n.kind == crate::format::SegmentFileKind::Prepared => {
            Err(crate::Error::InvalidArgument(format!(
                "{}: a prepared file (the writer's next segment, or a released segment kept for reuse): it holds no record of the log",
                path.display()
            )))
        }
        Some(n) => Ok(n),
        None => Err(crate::Error::InvalidArgument(format!(
            "{}: not a segment file name (expected 24 hex digits and .wal, .wal.open or .wal.partial, or a set-aside copy's name)",
            path.display()
        ))),
    }
}

/// The segment a file given by name stands for: a segment name, or a set-aside file's name (a
/// segment name followed by the time it was set aside), so that `dump` and `verify` read both.
pub fn segment_name_of(file_name: &str) -> Option<crate::format::SegmentName> {
    if let Some(n) = crate::format::SegmentName::parse(file_name) {
        return Some(n);
    }
    let mut base = file_name;
    // Strip `.N` (a second file under a name already taken).
    if let Some((b, n)) = base.rsplit_once('.') {
        if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) {
            base = b;
        }
    }
    // A rewind's: `.diverged-` and the switch point in 16 hex digits.
    if let Some((b, lsn)) = base.rsplit_once(".diverged-") {
        if lsn.len() == 16 && lsn.bytes().all(|c| c.is_ascii_hexdigit()) {
            return crate::format::SegmentName::parse(b);
        }
    }
    // Then `.YYYYMMDDTHHMMSS.ffffffZ` (whose own dot splits it in two).
    let (b, frac) = base.rsplit_once('.')?;
    let (b, secs) = b.rsplit_once('.')?;
    let stamp_ok = frac.len() == 7
        && frac.ends_with('Z')
        && frac[..6].bytes().all(|c| c.is_ascii_digit())
        && secs.len() == 15
        && secs.as_bytes()[8] == b'T';
    stamp_ok
        .then(|| crate::format::SegmentName::parse(b))
        .flatten()
}

/// The files set aside so far, by name.
pub fn list(dir: &DataDir) -> Result<Vec<String>> {
    let aside = setaside_dir(dir);
    let entries = match fs::read_dir(&aside) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::Error::io(format!("list {}", aside.display()), e)),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.ctx(|| format!("list {}", aside.display()))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_names_stand_for_their_segment() {
        let seg = "000000010000000000000003.wal.open";
        let n = segment_name_of(seg).expect("segment");
        assert_eq!(
            segment_name_of(&format!("{seg}.20261127T173901.123456Z")),
            Some(n)
        );
        assert_eq!(
            segment_name_of(&format!("{seg}.20261127T173901.123456Z.2")),
            Some(n)
        );
        assert_eq!(
            segment_name_of(&format!("{seg}.diverged-000000000000FF90")),
            Some(n)
        );
        assert_eq!(
            segment_name_of(&format!("{seg}.diverged-000000000000FF90.2")),
            Some(n)
        );
        for bad in [
            "000000010000000000000003.wal.open.diverged-FF90",
            "000000010000000000000003.wal.open.2026",
            "000000010000000000000003.wal.open.x.y",
            "notes.20261127T173901.123456Z",
        ] {
            assert_eq!(segment_name_of(bad), None, "{bad}");
        }
    }
}
