//! Reading segment files: whole, into a reused buffer, hashed as read, the open segment's new
//! tail, or as the disk holds it (for recovery).

use super::*;

/// Reads a whole segment file. An open segment is read through a descriptor advised as random
/// access, so the read does not bring large folios into the page cache behind the writer.
pub fn read_segment(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_segment_into(path, &mut buf)?;
    Ok(buf)
}

/// Reads a whole segment file as the disk holds it, for recovery (which runs while no writer
/// has the file open). After a failed write-back, Linux keeps the failed pages in the page
/// cache marked clean: a plain read would return records that never reached the disk, recovery
/// would count them durable, and they would vanish at the next reboot with everything appended
/// after them. So the file is first synced (pages a killed writer left dirty are written; if
/// that fails, those pages were never acknowledged and are dropped with the rest, with a
/// warning), then its clean pages are dropped from the cache (`POSIX_FADV_DONTNEED`), and the
/// read comes from the device. This does not help when the device acknowledges writes it does
/// not keep, and the kernel keeps pages another process has mapped (no walship process maps a
/// data directory's segment while recovery holds the lock).
pub fn read_segment_from_disk(path: &Path) -> Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    {
        let f = File::open(path).ctx(|| format!("open {}", path.display()))?;
        if let Err(e) = f.sync_data() {
            tracing::warn!(
                file = %path.display(),
                error = %e,
                "an earlier write-back of this segment failed: reading what the disk holds"
            );
        }
        // SAFETY: plain syscall on a descriptor we own; it only drops cached clean pages.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if r != 0 {
            return Err(Error::io(
                format!("drop cached pages of {}", path.display()),
                std::io::Error::from_raw_os_error(r),
            ));
        }
    }
    read_segment(path)
}

/// [`read_segment`] into `buf`, replacing its contents. Reusing one buffer across segments
/// spares a fresh 16 MiB allocation (and its page faults and zero-fill) per segment.
pub fn read_segment_into(path: &Path, buf: &mut Vec<u8>) -> Result<()> {
    let f = open_sized(path, buf)?;
    f.read_exact_at(buf, 0)
        .ctx(|| format!("read {}", path.display()))
}

/// Bytes read per call by [`read_segment_hashed`]: hashed right after, while in the CPU's cache.
pub(super) const HASH_CHUNK: usize = 256 << 10;

/// [`read_segment_into`], hashing all but the last [`SEAL_LEN`] bytes chunk by chunk as they
/// are read, for [`SegmentScanner::with_read_checksum`](crate::decoder::SegmentScanner).
pub fn read_segment_hashed(path: &Path, buf: &mut Vec<u8>) -> Result<ReadChecksum> {
    let f = open_sized(path, buf)?;
    let covered = buf.len().saturating_sub(SEAL_LEN);
    let mut hasher = crc32fast::Hasher::new();
    let mut pos = 0;
    while pos < buf.len() {
        let end = (pos + HASH_CHUNK).min(buf.len());
        f.read_exact_at(&mut buf[pos..end], pos as u64)
            .ctx(|| format!("read {}", path.display()))?;
        hasher.update(&buf[pos.min(covered)..end.min(covered)]);
        pos = end;
    }
    Ok(ReadChecksum {
        len: covered,
        crc: hasher.finalize(),
    })
}

/// Opens a segment file and sizes `buf` to it. Only bytes beyond the buffer's current length
/// are zero-filled; the read overwrites all of them.
fn open_sized(path: &Path, buf: &mut Vec<u8>) -> Result<File> {
    let f = crate::fsutil::open_regular(path)?;
    if path.to_string_lossy().ends_with(".wal.open") {
        crate::fsutil::advise_random(&f);
    }
    let len = f
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len() as usize;
    if buf.capacity() < len && len as u64 <= crate::format::MAX_SEGMENT_SIZE {
        // Room for a whole segment (an open one is a power of two long, a sealed one
        // shorter), so that the open segment after sealed ones does not move the buffer.
        buf.reserve_exact(len.next_power_of_two() - buf.len());
    }
    buf.resize(len, 0);
    Ok(f)
}

/// Bytes re-read past the current end of the open segment on each refresh: enough for any
/// burst of appends between polls, without copying the whole zero-filled rest every time.
const REFRESH_WINDOW: usize = 1 << 20;

/// Replaces `buf[from..]` with the file's current bytes from `from` (at least `want` of them, when
/// the file has them); true when they differ from what `buf` held.
pub(super) fn read_tail(
    path: &Path,
    from: usize,
    want: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never blocks on a FIFO swapped in under the open segment's name.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    crate::fsutil::advise_random(&f);
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other(format!(
            "is a {}, not a regular file",
            crate::fsutil::file_kind(&meta.file_type())
        )));
    }
    let len = meta.len() as usize;
    if len <= from {
        return Ok(false);
    }
    let n = (len - from).min(want.max(REFRESH_WINDOW));
    let mut fresh = vec![0u8; n];
    f.read_exact_at(&mut fresh, from as u64)?;
    let changed = buf.get(from..) != Some(&fresh[..]);
    buf.truncate(from);
    buf.extend_from_slice(&fresh);
    Ok(changed)
}

/// The seal checksum of the sealed segment just before `name`, when the folder holds it and
/// its marker is valid (a damaged one is reported when that segment itself is read).
pub(super) fn predecessor_seal(
    dir: &Path,
    names: &[SegmentName],
    name: &SegmentName,
    identity: Option<Identity>,
) -> Option<(u64, u32)> {
    let prev_no = name.segment_no.0.checked_sub(1)?;
    let prev = names
        .iter()
        .find(|n| n.segment_no.0 == prev_no && n.kind == SegmentFileKind::Sealed)?;
    let size = identity?.segment_size;
    let f = crate::fsutil::open_regular(&dir.join(prev.to_string())).ok()?;
    let len = f.metadata().ok()?.len();
    let off = len.checked_sub(SEAL_LEN as u64)?;
    let mut b = vec![0u8; SEAL_LEN];
    f.read_exact_at(&mut b, off).ok()?;
    let lsn = segment_start(prev_no, size)?.checked_add(off)?;
    match crate::format::record::decode_at(&b, 0, lsn, size as usize) {
        Ok(Decoded::Seal(seal)) => Some((prev_no, seal.segment_checksum)),
        _ => None,
    }
}

pub(super) fn segment_size_of(dir: &Path, name: &SegmentName) -> Option<u64> {
    let f = crate::fsutil::open_regular(&dir.join(name.to_string())).ok()?;
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    f.read_exact_at(&mut b, 0).ok()?;
    SegmentHeader::decode(&b).ok().map(|h| h.segment_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_buffer_reads_longer_and_shorter_files_exactly() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let long = tmp.path().join("long");
        let short = tmp.path().join("short");
        let long_bytes: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        std::fs::write(&long, &long_bytes).expect("write");
        std::fs::write(&short, [7u8; 100]).expect("write");
        let mut buf = Vec::new();
        read_segment_into(&long, &mut buf).expect("read");
        assert_eq!(buf, long_bytes);
        read_segment_into(&short, &mut buf).expect("read");
        assert_eq!(buf, [7u8; 100]);
        read_segment_into(&long, &mut buf).expect("read");
        assert_eq!(buf, long_bytes);
        let err = read_segment_into(&tmp.path().join("missing"), &mut buf).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn the_read_checksum_covers_all_but_the_last_seal_len_bytes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut buf = vec![9u8; 3];
        // Several chunks and a partial last one, then shorter than a seal marker.
        for len in [2 * HASH_CHUNK + 1000, HASH_CHUNK + 10, 100, 20] {
            let path = tmp.path().join(format!("f{len}"));
            let bytes: Vec<u8> = (0..len as u32)
                .map(|i| (i * 7 + len as u32) as u8)
                .collect();
            std::fs::write(&path, &bytes).expect("write");
            let sum = read_segment_hashed(&path, &mut buf).expect("read");
            assert_eq!(buf, bytes);
            let covered = len.saturating_sub(SEAL_LEN);
            assert_eq!(sum.len, covered);
            assert_eq!(sum.crc, crc32fast::hash(&bytes[..covered]), "{len}");
        }
        let err = read_segment_hashed(&tmp.path().join("missing"), &mut buf).expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
