//! The segment files' unit tests: the prefault's direction and stop, pages unmapped before a sync.

use std::os::fd::AsRawFd;

use super::*;
use crate::format::SegmentFileKind;

const SIZE: usize = 64 * PAGE;

fn active(dir: &Path) -> (ActiveSegment, Prefault) {
    let prepared = PreparedSegment::create(dir.join("s.prep"), SIZE as u64, SegmentFill::Reserve)
        .expect("create");
    let prefault = prepared.prefault();
    let name = SegmentName::new(1, 0, SegmentFileKind::Open);
    let seg = ActiveSegment::from_prepared(prepared, dir.join("s.open"), name);
    (seg, prefault)
}

/// Which pages of `seg` are in the page cache: a reserved block's page gets there only when
/// something faults it in.
fn resident(seg: &ActiveSegment) -> Vec<bool> {
    let mut v = vec![0u8; SIZE / PAGE];
    // SAFETY: `v` has a byte per page of the mapped range.
    let r = unsafe { libc::mincore(seg.map.map.as_mut_ptr().cast(), SIZE, v.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    v.iter().map(|b| b & 1 == 1).collect()
}

fn store(seg: &ActiveSegment, off: usize, bytes: &[u8]) {
    // SAFETY: the test is the only writer.
    unsafe { seg.slice_mut(off, bytes.len()) }.copy_from_slice(bytes);
}

#[test]
fn the_prefault_works_down_from_the_end_and_stops_at_the_writer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (seg, mut prefault) = active(tmp.path());
    assert!(prefault.step(8 * PAGE), "more to do");
    let after_one_step: Vec<bool> = (0..SIZE / PAGE).map(|p| p >= 56).collect();
    assert_eq!(
        resident(&seg),
        after_one_step,
        "the last 8 pages, nothing else"
    );
    // The writer stores into page 20 meanwhile: the prefault must leave that page and every
    // page below it to the writer.
    store(&seg, 20 * PAGE + 100, b"x");
    let steps = std::iter::from_fn(|| Some(prefault.step(16 * PAGE)))
        .take_while(|more| *more)
        .count();
    assert_eq!(steps, 2, "pages 40..56 and 24..40, then 21..24 and done");
    assert!(!prefault.step(16 * PAGE), "stays stopped");
    let expect: Vec<bool> = (0..SIZE / PAGE).map(|p| p >= 20).collect();
    assert_eq!(resident(&seg), expect);
}

#[test]
fn a_retired_segment_is_no_longer_prefaulted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (seg, mut prefault) = active(tmp.path());
    store(&seg, 0, b"header");
    seg.retire();
    assert!(!prefault.step(SIZE));
    assert_eq!(
        resident(&seg).iter().filter(|r| **r).count(),
        1,
        "the page stored to"
    );
}

#[test]
fn pages_unmapped_before_a_sync_keep_every_stored_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (seg, prefault) = active(tmp.path());
    prefault.run();
    // Stores on both sides of page boundaries, unmapped in ranges that cut pages, stored
    // to again after the unmapping, then synced.
    let a: Vec<u8> = (0..3 * PAGE + 300).map(|i| (i % 251) as u8).collect();
    store(&seg, 100, &a);
    seg.unmap_pages(50, 2 * PAGE + 10);
    seg.unmap_pages(0, SIZE);
    let b = vec![0xEEu8; PAGE];
    store(&seg, 100 + a.len(), &b);
    seg.unmap_pages(PAGE, SIZE);
    let end = 100 + a.len() + b.len();
    seg.sync_range(0, end).expect("msync");
    // The msync wrote them back: clean, unmapped pages leave the page cache when asked (dirty
    // ones or pages under write-back would stay), so the bytes read next come from the disk.
    let path = tmp.path().join("s.prep");
    let f = File::open(&path).expect("open");
    // SAFETY: plain syscall on a descriptor we own.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise");
    let synced_pages = end.div_ceil(PAGE);
    assert_eq!(
        resident(&seg)[..synced_pages],
        vec![false; synced_pages][..],
        "every synced page was clean"
    );
    let on_disk = std::fs::read(&path).expect("read");
    assert_eq!(&on_disk[100..100 + a.len()], &a[..]);
    assert_eq!(&on_disk[100 + a.len()..100 + a.len() + b.len()], &b[..]);
    assert!(on_disk[..100].iter().all(|&x| x == 0));
}
