//! A real file system mounted from an ext2 image through a loop device. ext2 has no
//! `fallocate` (the call fails with EOPNOTSUPP, as on FUSE and some NFS mounts): `walship
//! write`, `seal`, `restore` and `verify` work there, segments get real blocks, and a full disk
//! is still an error. And since the test owns the image, it can change a segment's blocks on the
//! disk under the page cache, as a failed write-back leaves them: recovery must read what the
//! disk holds. Needs root to mount; skipped with a printed reason otherwise.

mod common;

use std::path::Path;

use common::mount::{self, Mount};
use common::{code, p, run, stderr, stdout};

fn mount_or_skip(size: u64) -> Option<Mount> {
    mount::or_skip(Mount::ext2(size))
}

/// The errno `fallocate` gives on this file system (None when it works).
fn fallocate_errno(dir: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let path = dir.join("probe");
    let f = std::fs::File::create(&path).expect("create probe");
    // SAFETY: plain syscall on a descriptor we own.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 65536) };
    let errno = (r != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    drop(f);
    std::fs::remove_file(&path).expect("remove probe");
    errno
}

#[test]
fn write_seal_restore_and_verify_work_without_fallocate() {
    let Some(fs) = mount_or_skip(16 << 20) else {
        return;
    };
    assert_eq!(
        fallocate_errno(&fs.point),
        Some(libc::EOPNOTSUPP),
        "ext2 is expected to lack fallocate"
    );
    let dir = fs.point.join("data");
    let out = run(&["init", p(&dir), "--segment-size", "64KiB"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Several 64 KiB segments, every line acknowledged.
    let lines: String = (0..1500)
        .map(|i| format!("line-{i:05}-{}\n", "e".repeat(80)))
        .collect();
    let out = run(&["write", p(&dir), "--durable"], lines.as_bytes());
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    assert_eq!(stdout(&out).lines().count(), 1500);
    assert!(err.contains("does not support fallocate"), "{err}");
    // The open segment (and a prepared one) are whole files with real blocks.
    common::assert_segments_reserved(&dir);
    assert_eq!(code(&run(&["seal", p(&dir)], b"")), 0);
    let out = run(&["verify", p(&dir)], b"");
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));

    // Archive and restore on the same file system, cut inside a segment: the restored open
    // segment is reserved by the same fallback and takes new writes.
    let records = common::read_all(&dir).expect("read");
    assert_eq!(records.len(), 1500);
    let archive = fs.point.join("archive");
    let out = run(&["archive", p(&dir), "--to", p(&archive), "--once"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = fs.point.join("restored");
    let cut = records[700].end_lsn.to_string();
    let out = run(
        &["restore", p(&archive), p(&restored), "--until-lsn", &cut],
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&["write", p(&restored), "--durable"], b"after restore\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let got = common::read_all(&restored).expect("read the restore");
    assert_eq!(got.len(), 702);
    assert_eq!(got[700].payload, records[700].payload);
    assert_eq!(got[701].payload, b"after restore");
    let out = run(&["verify", p(&restored)], b"");
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}

/// Writing zeros instead of `fallocate` still runs out of space as an error: exit 2 naming the
/// cause, no half-made segment, and every acknowledged record still there.
#[test]
fn a_full_disk_without_fallocate_is_still_an_error() {
    let Some(fs) = mount_or_skip(2 << 20) else {
        return;
    };
    let dir = fs.point.join("data");
    let out = run(&["init", p(&dir), "--segment-size", "64KiB"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut acked = 0usize;
    let mut failure = None;
    // 100 lines of 100 bytes per run: each run is acknowledged whole, or fails.
    for run_no in 0..400 {
        let lines: String = (0..100)
            .map(|i| format!("r{run_no:03}-{i:03}-{}\n", "f".repeat(90)))
            .collect();
        let out = run(&["write", p(&dir), "--durable"], lines.as_bytes());
        if code(&out) == 0 {
            acked += stdout(&out).lines().count();
            continue;
        }
        acked += stdout(&out).lines().count();
        failure = Some((code(&out), stderr(&out)));
        break;
    }
    let (exit, err) = failure.expect("2 MiB never filled");
    assert_eq!(exit, 2, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        acked > 500,
        "too few records before the disk filled: {acked}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .expect("read wal/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp") || n.ends_with(".wal.prep"))
        .collect();
    assert!(leftovers.is_empty(), "half-made files: {leftovers:?}");
    let got = common::read_all(&dir).expect("read back");
    assert!(
        got.len() >= acked,
        "{} records, {acked} acknowledged",
        got.len()
    );
    let out = run(&["verify", p(&dir)], b"");
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
}

/// The block on the device (in 4 KiB blocks) that holds block `n` of the file.
fn physical_block(f: &std::fs::File, n: u64) -> u64 {
    use std::os::fd::AsRawFd;
    const FIBMAP: libc::c_ulong = 1;
    let mut block = n as libc::c_int;
    // SAFETY: FIBMAP reads and writes one int through the pointer we pass.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FIBMAP as _, &mut block) };
    assert_eq!(r, 0, "FIBMAP: {}", std::io::Error::last_os_error());
    assert_ne!(block, 0, "block {n} of the segment is a hole");
    block as u64
}

/// After a write-back fails, Linux keeps the failed pages in the page cache marked clean, while
/// the disk holds something else. Simulated exactly: the tail pages of the open segment are
/// zeroed in the image under the mounted file system, so the cache shows records the disk does
/// not have. A reopen must end the log where the disk's records end and append from there:
/// once the cache is gone (a remount, like a reboot) every record acknowledged after the reopen
/// is there and the directory verifies. Trusting the cache would append behind pages the disk
/// never got, and those records would sit behind a hole after a reboot.
#[test]
fn recovery_reads_what_the_disk_holds_not_pages_left_in_the_cache() {
    use std::os::unix::fs::FileExt;
    let Some(fs) = mount_or_skip(16 << 20) else {
        return;
    };
    let dir = fs.point.join("data");
    let out = run(&["init", p(&dir), "--segment-size", "64KiB"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines: String = (0..300)
        .map(|i| format!("first-{i:04}-{}\n", "c".repeat(90)))
        .collect();
    let out = run(&["write", p(&dir), "--durable"], lines.as_bytes());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let before = common::read_all(&dir).expect("read");
    assert_eq!(before.len(), 300);
    let end = before[299].end_lsn.0;
    let (_, seg) = common::open_segment(&dir).expect("an open segment");

    // The disk loses pages 3 to the last one with records (at least two pages): the cache
    // keeps them.
    const PAGE: u64 = 4096;
    let (first_lost, last_lost) = (3, (end - 1) / PAGE);
    assert!(
        last_lost > first_lost,
        "records end at {end}: too few pages"
    );
    {
        let f = std::fs::File::open(&seg).expect("open segment");
        let image = std::fs::OpenOptions::new()
            .write(true)
            .open(fs.image())
            .expect("open image");
        for page in first_lost..=last_lost {
            let block = physical_block(&f, page);
            image
                .write_all_at(&[0u8; PAGE as usize], block * PAGE)
                .expect("zero a block in the image");
        }
        image.sync_all().expect("fsync image");
    }
    // A failed write-back fails the sync that would have acknowledged those records, so the
    // writer never published a durable position past what the disk holds.
    let disk_end = before
        .iter()
        .map(|r| r.end_lsn.0)
        .filter(|&e| e <= first_lost * PAGE)
        .max()
        .expect("records on the pages the disk keeps");
    std::fs::write(
        dir.join("state/flush_position"),
        walship::flush_position::encode_position(disk_end),
    )
    .expect("write the published position");
    // Nothing looks different through the cache: all 300 records still read back (unless memory
    // pressure evicted the pages meanwhile, which leaves nothing to test).
    if common::read_all(&dir).map(|r| r.len()).ok() != Some(300) {
        println!(
            "SKIPPED: the page cache dropped the segment's pages before the test could use them"
        );
        return;
    }

    let lines: String = (0..100)
        .map(|i| format!("after-{i:04}-{}\n", "d".repeat(90)))
        .collect();
    let out = run(&["write", p(&dir), "--durable"], lines.as_bytes());
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 100);

    fs.remount();
    let after = common::read_all(&dir).expect("read after the cache is gone");
    let out = run(&["verify", p(&dir)], b"");
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let new: Vec<_> = after
        .iter()
        .filter(|r| r.payload.starts_with(b"after-"))
        .collect();
    assert_eq!(
        new.len(),
        100,
        "records acknowledged after the reopen are missing"
    );
    assert!(
        new[0].lsn.0 <= first_lost * PAGE,
        "the log went on at {} behind the lost pages (from {})",
        new[0].lsn,
        first_lost * PAGE
    );
    // Every record that ended before the lost pages is still there, in order.
    let kept: Vec<_> = before
        .iter()
        .filter(|r| r.end_lsn.0 <= first_lost * PAGE)
        .collect();
    assert!(!kept.is_empty());
    for (a, b) in kept.iter().zip(after.iter()) {
        assert_eq!((a.lsn, &a.payload), (b.lsn, &b.payload));
    }
}
