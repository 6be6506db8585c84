//! The standby's copy of the segment still open on the primary (`.wal.partial`): which prefix of
//! it is valid, and taking it up again after a disconnect or a restart.
//!
//! A copy is valid up to its last whole record: its header must be this standby's system,
//! timeline, size and segment number, and chain to its previous segment when the standby holds
//! that one; each record must pass every check a recovery applies. Streamed bytes are checked
//! as they arrive (a record the primary sent whole and that fails is damage); a copy found on
//! disk at start is cut after its last valid record (a crash can leave a torn tail), never
//! trusted unchecked and never thrown away whole while a prefix of it is valid.
//!
//! A copy is kept zero-filled ahead of its records ([`ZERO_AHEAD`] at a time, up to the
//! segment size, written while the stream is idle right after a sync): a sync of streamed
//! records then overwrites written blocks inside the file's length and has no metadata to
//! write (an `fdatasync` that grows a file writes its inode too; on a journaling file system it
//! waits for a journal commit shared with every other change there). So a copy's file may be longer than what it holds: its records
//! end at the first byte that is not a whole, valid record (zeros after the last one, as in
//! the writer's open segment), and a copy taken up again is not shortened but has every byte
//! past its valid prefix zeroed. The sealed copy is cut to its sealed length before its sync.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::format::record::{decode_at, Decoded, RecordError};
use crate::format::segment_header::{SegmentHeader, SEGMENT_HEADER_LEN};
use crate::format::{ControlFile, SegmentFileKind, SegmentName};
use crate::segment_check::check_identity;

/// How far ahead of its records a copy of the open segment is zero-filled: written in one go
/// when less than half of it is left.
pub(super) const ZERO_AHEAD: u64 = 1 << 20;

/// How the end of the bytes is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tail {
    /// Bytes as the primary streamed them: only a record cut by the end of what arrived so far
    /// is incomplete; anything else that is not a record is damage.
    Streamed,
    /// Bytes found on disk: the valid prefix ends at the first byte that is not a whole,
    /// valid record.
    OnDisk,
}

/// Where the valid prefix of a copy's bytes `buf` ends, scanning records from `from` (0, or
/// an end found earlier). `Err((offset, reason))`: streamed bytes that are damage.
pub(super) fn valid_prefix(
    buf: &[u8],
    path: &Path,
    name: &SegmentName,
    control: &ControlFile,
    prev_checksum: Option<u32>,
    from: usize,
    tail: Tail,
) -> std::result::Result<usize, (usize, String)> {
    if buf.len() < SEGMENT_HEADER_LEN {
        return Ok(0);
    }
    let bad_header = |reason: String| match tail {
        Tail::Streamed => Err((0, reason)),
        Tail::OnDisk => Ok(0),
    };
    let header = match SegmentHeader::decode(buf) {
        Ok(h) => h,
        Err(reason) => return bad_header(reason),
    };
    let sealed_name = name.with_kind(SegmentFileKind::Sealed);
    if let Err(e) = check_identity(path, &header, &sealed_name, control) {
        return bad_header(e.to_string());
    }
    if let Some(want) = prev_checksum {
        if header.prev_checksum != Some(want) {
            return bad_header(format!(
                "the header chains to a segment with checksum {}, the standby's previous segment has {want:08x}",
                header.prev_checksum.map_or("none".into(), |c| format!("{c:08x}"))
            ));
        }
    }
    let start = header.start_lsn();
    let limit = control.segment_size as usize;
    let mut off = from.max(SEGMENT_HEADER_LEN);
    loop {
        if off >= buf.len() {
            return Ok(off);
        }
        match decode_at(buf, off, start + off as u64, limit) {
            Ok(Decoded::Record(r)) => off = (r.end_lsn() - start) as usize,
            Err(RecordError::Truncated { .. }) => return Ok(off),
            Ok(Decoded::Seal(_)) => match tail {
                Tail::Streamed => {
                    return Err((off, "a seal marker in the open segment's records".into()))
                }
                Tail::OnDisk => return Ok(off),
            },
            Err(e) => match tail {
                Tail::Streamed => return Err((off, e.to_string())),
                Tail::OnDisk => return Ok(off),
            },
        }
    }
}

/// Where the records of a standby's copy of the primary's open segment end, for `status`: the
/// end of the valid prefix of its newest `.wal.partial` on the directory's timeline (None when
/// it holds no record). Read as found on disk; the standby that owns it judges it the same way
/// when it takes the copy up again.
pub fn copy_end(dd: &DataDir, control: &ControlFile) -> Result<Option<crate::Lsn>> {
    Ok(copy_records(dd, control)?.map(|c| c.end))
}

/// The records of a standby's copy of the primary's open segment, as [`copy_end`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyRecords {
    pub name: SegmentName,
    pub records: u64,
    pub first: crate::Lsn,
    pub end: crate::Lsn,
}

/// The valid records of the newest `.wal.partial` on the directory's timeline (None when it
/// holds none), for `status` and `verify`.
pub fn copy_records(dd: &DataDir, control: &ControlFile) -> Result<Option<CopyRecords>> {
    let Some((name, path, buf)) = read_copy(dd, |n| n.timeline == control.timeline)? else {
        return Ok(None);
    };
    let end = valid_prefix(&buf, &path, &name, control, None, 0, Tail::OnDisk).unwrap_or(0);
    if end <= SEGMENT_HEADER_LEN {
        return Ok(None);
    }
    let start = name.segment_no.start_lsn_saturating(control.segment_size);
    let records = crate::decoder::SegmentScanner::new(&buf[..end])
        .map(|mut s| {
            s.by_ref().for_each(drop);
            s.record_count()
        })
        .unwrap_or(0);
    Ok(Some(CopyRecords {
        name,
        records,
        first: start + SEGMENT_HEADER_LEN as u64,
        end: start + end as u64,
    }))
}

/// The checksum of this directory's copy of the primary's open segment up to `flushed`, as
/// `Identify` states it (`segments::copy_checksum`); None when no copy holds records up to it.
pub fn copy_checksum_at(
    dd: &DataDir,
    control: &ControlFile,
    flushed: crate::Lsn,
) -> Result<Option<u32>> {
    let Some((no, off)) = crate::replication::segments::copy_extent(flushed, control.segment_size)
    else {
        return Ok(None);
    };
    let Some((_, _, buf)) = read_copy(dd, |n| n.segment_no.0 == no)? else {
        return Ok(None);
    };
    Ok(buf
        .get(SEGMENT_HEADER_LEN..off)
        .map(crate::replication::segments::copy_checksum))
}

/// The newest `.wal.partial` that `which` picks (by segment number, then timeline), its path
/// and its bytes; None when there is none, or it was sealed or discarded since the listing.
fn read_copy(
    dd: &DataDir,
    which: impl Fn(&SegmentName) -> bool,
) -> Result<Option<(SegmentName, PathBuf, Vec<u8>)>> {
    let Some(name) = dd
        .list_segments()?
        .into_iter()
        .filter(|n| n.kind == SegmentFileKind::Partial && which(n))
        .max_by_key(|n| (n.segment_no, n.timeline))
    else {
        return Ok(None);
    };
    let path = dd.segment_path(&name);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some((name, path, b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// A copy being received: its file, and its bytes so far.
pub(super) struct PartialCopy {
    pub name: SegmentName,
    pub path: PathBuf,
    pub file: std::fs::File,
    /// The bytes so far (the file's contents), kept to check each record as it arrives.
    pub buf: Vec<u8>,
    /// End of the valid prefix: the header and whole, checked records.
    pub valid_end: usize,
    /// End of the prefix a sync succeeded for: what counts as flushed. Bytes past it were
    /// written but not (successfully) synced: after a failed sync they may never reach the
    /// disk, whatever a later sync says, so they are never counted, applied or kept.
    pub synced_end: usize,
    /// The file's length: `buf.len()`, or more where it is zero-filled ahead.
    pub file_len: u64,
    /// End of the records already handed to the applier (0: none yet).
    pub sent_end: usize,
}

impl PartialCopy {
    /// A new, empty copy of segment `name` (a partial name).
    pub fn create(dd: &DataDir, name: SegmentName) -> Result<PartialCopy> {
        let path = dd.segment_path(&name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        // The new name durable before any of its records is counted as flushed: a power loss
        // must not take the whole copy away after the primary heard it was synced.
        crate::fault!("standby::create_dir_fsync", e => Error::io(format!("fsync directory {}", dd.wal_dir().display()), e));
        crate::fsutil::fsync_dir(&dd.wal_dir())?;
        Ok(PartialCopy {
            name,
            path,
            file,
            buf: Vec::new(),
            valid_end: 0,
            synced_end: 0,
            file_len: 0,
            sent_end: 0,
        })
    }

    /// Takes up the copy of segment `segment_no` found on disk: checks it, cuts it after its
    /// last valid record (synced), and returns it; None when there is none, or when not even
    /// its header is valid (then the file is removed: it holds nothing of the segment).
    ///
    /// `durable`: how many of its bytes this process counted as flushed, when it stored the
    /// copy itself (a reconnect): nothing past that is taken up, whatever the file shows (the
    /// page cache may hold bytes whose sync failed). None at start: the valid prefix on disk.
    pub fn resume(
        dd: &DataDir,
        control: &ControlFile,
        segment_no: u64,
        prev_checksum: Option<u32>,
        durable: Option<usize>,
    ) -> Result<Option<PartialCopy>> {
        let ours = SegmentName::new(control.timeline, segment_no, SegmentFileKind::Partial);
        // A copy of the segment under an earlier timeline: the standby moved onto the primary's
        // new timeline (control file first) before it took its copy over.
        let older = dd
            .list_segments()?
            .into_iter()
            .filter(|n| {
                n.kind == SegmentFileKind::Partial
                    && n.segment_no.0 == segment_no
                    && n.timeline < control.timeline
            })
            .max_by_key(|n| n.timeline);
        let name = match older {
            Some(old) if !dd.segment_path(&ours).exists() => old,
            _ => ours,
        };
        let path = dd.segment_path(&name);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
        };
        let mut buf = Vec::new();
        {
            use std::io::Read;
            (&file)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        }
        let on_disk =
            valid_prefix(&buf, &path, &name, control, prev_checksum, 0, Tail::OnDisk).unwrap_or(0);
        let valid_end = durable.map_or(on_disk, |d| on_disk.min(d));
        if valid_end <= SEGMENT_HEADER_LEN {
            tracing::info!(file = %path.display(), "discarding a partial copy that holds no valid record");
            drop(file);
            std::fs::remove_file(&path)
                .map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
            crate::fsutil::fsync_dir(&dd.wal_dir())?;
            return Ok(None);
        }
        let file_len = buf.len() as u64;
        // Bytes past the valid prefix: zeros filled ahead, or a torn or unsynced tail, which
        // is zeroed (the file keeps its length) so that nothing of it can reappear.
        let dirty_end = crate::format::zeros::last_nonzero(&buf[valid_end..])
            .map_or(valid_end, |i| valid_end + i + 1);
        if dirty_end > valid_end {
            tracing::warn!(file = %path.display(), valid_end, dirty_end, "cutting the partial copy after its last valid record");
            zero_range(&file, &path, valid_end as u64, dirty_end as u64)?;
        }
        buf.truncate(valid_end);
        crate::fault!("standby::fsync", e => Error::io(format!("fsync {}", path.display()), e));
        file.sync_all()
            .map_err(|e| Error::io(format!("fsync {}", path.display()), e))?;
        let mut copy = PartialCopy {
            name,
            path,
            file,
            buf,
            valid_end,
            synced_end: valid_end,
            file_len,
            sent_end: 0,
        };
        if let Some(old) = older.filter(|o| *o != name) {
            // Taken over already: what is left under the old name is a prefix of this copy.
            remove_copy(dd, &dd.segment_path(&old))?;
        }
        if copy.name.timeline < control.timeline {
            copy.retitle(dd, control.timeline)?;
        }
        Ok(Some(copy))
    }

    /// Moves this copy of an earlier timeline's segment onto `timeline`, which continues the
    /// segment: the switch segment, whose records are the old timeline's up to the switch point
    /// under the old header with the new timeline in it (as promotion writes it). The copy is
    /// written whole under the new name (synced, renamed into place), then the old copy is
    /// removed: a crash leaves the new copy whole, or the old one untouched.
    pub fn retitle(&mut self, dd: &DataDir, timeline: u32) -> Result<()> {
        let name = SegmentName::new(timeline, self.name.segment_no.0, SegmentFileKind::Partial);
        let path = dd.segment_path(&name);
        let mut header = SegmentHeader::decode(&self.buf).map_err(|reason| {
            Error::io(
                format!("read the header of {}", self.path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
            )
        })?;
        header.timeline = timeline;
        let mut bytes = std::mem::take(&mut self.buf);
        bytes[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
        crate::fault!("standby::retitle", e => Error::io(format!("write {}", path.display()), e));
        crate::fsutil::write_atomic(&path, &bytes)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        remove_copy(dd, &self.path)?;
        tracing::info!(from = %self.name, to = %name, "the copy of the open segment continues on the new timeline");
        self.file_len = bytes.len() as u64;
        self.synced_end = self.valid_end;
        self.buf = bytes;
        self.name = name;
        self.path = path;
        self.file = file;
        Ok(())
    }

    /// Cuts the copy back to `len` bytes (what the primary continues from): the bytes past it
    /// are zeroed, the file keeps its length.
    pub fn cut_to(&mut self, len: usize) -> Result<()> {
        if self.buf.len() > len {
            zero_range(&self.file, &self.path, len as u64, self.buf.len() as u64)?;
            self.buf.truncate(len);
            self.valid_end = self.valid_end.min(len);
            self.synced_end = self.synced_end.min(len);
            self.sent_end = self.sent_end.min(len);
        }
        Ok(())
    }

    /// Writes `data` at the end of the copy (not synced).
    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, self.buf.len() as u64)
            .map_err(|e| Error::io(format!("write {}", self.path.display()), e))?;
        self.buf.extend_from_slice(data);
        self.file_len = self.file_len.max(self.buf.len() as u64);
        Ok(())
    }

    /// Zero-fills the file ahead of the records when less than half of [`ZERO_AHEAD`] is left,
    /// up to `segment_size` at most, and syncs it: called while the stream is idle, so that
    /// the syncs of the next records overwrite blocks that are already written.
    pub fn zero_ahead(&mut self, segment_size: u64) -> Result<()> {
        let end = self.buf.len() as u64;
        if self.file_len >= segment_size || self.file_len - end.min(self.file_len) >= ZERO_AHEAD / 2
        {
            return Ok(());
        }
        let to = (end + ZERO_AHEAD).min(segment_size);
        let from = self.file_len.max(end);
        if to <= from {
            return Ok(());
        }
        zero_range(&self.file, &self.path, from, to)?;
        crate::fault!("standby::fsync", e => Error::io(format!("fsync {}", self.path.display()), e));
        self.file
            .sync_data()
            .map_err(|e| Error::io(format!("fsync {}", self.path.display()), e))?;
        self.file_len = to;
        Ok(())
    }

    /// After a failure: cuts the file to its synced prefix, so that nothing whose sync failed
    /// (or never came) is found in it again, in this process or the next one. The cut drops
    /// those bytes from the page cache too; it is synced as far as the disk lets it be (a
    /// copy taken up again by this process is limited to what it counted flushed anyway).
    pub fn discard_unsynced(&mut self) {
        // Always cut: a short write may have left bytes past what `buf` holds.
        let keep = self.synced_end;
        if let Err(e) = self
            .file
            .set_len(keep as u64)
            .and_then(|()| self.file.sync_all())
        {
            tracing::warn!(file = %self.path.display(), keep, error = %e, "could not cut the partial copy to its synced prefix");
        }
        self.buf.truncate(keep);
        self.valid_end = self.valid_end.min(keep);
        self.sent_end = self.sent_end.min(keep);
        self.file_len = keep as u64;
    }

    /// Cuts the file to the sealed length `len` of the segment it now holds whole.
    pub fn fit_to(&mut self, len: u64) -> Result<()> {
        if self.file_len > len {
            self.file
                .set_len(len)
                .map_err(|e| Error::io(format!("truncate {}", self.path.display()), e))?;
            self.file_len = len;
        }
        Ok(())
    }
}

/// Writes zeros over `[from, to)` of `file`.
/// Removes a copy that another copy replaced, durably.
fn remove_copy(dd: &DataDir, path: &Path) -> Result<()> {
    std::fs::remove_file(path).map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
    crate::fsutil::fsync_dir(&dd.wal_dir())
}

fn zero_range(file: &std::fs::File, path: &Path, from: u64, to: u64) -> Result<()> {
    const STEP: usize = 64 << 10;
    let zeros = [0u8; STEP];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(STEP);
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| Error::io(format!("zero {} at {at}", path.display()), e))?;
        at += n as u64;
    }
    Ok(())
}
