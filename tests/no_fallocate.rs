//! A real file system without `fallocate`: an ext2 image mounted through a loop device, where the
//! call fails with EOPNOTSUPP as on FUSE and some NFS mounts. `walship write`, `seal`, `restore`
//! and `verify` work there, segments get real blocks, and a full disk is still an error. Needs
//! root to mount; skipped with a printed reason otherwise.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{code, run, stderr, stdout};

/// An ext2 image of `size` mounted for one test; unmounted when dropped, panics included.
struct Ext2 {
    _parent: tempfile::TempDir,
    point: PathBuf,
}

impl Ext2 {
    fn mount(size: u64) -> Result<Ext2, String> {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root, cannot mount a loop device".into());
        }
        let parent = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = parent.path().join("ext2.img");
        let point = parent.path().join("mnt");
        std::fs::create_dir(&point).map_err(|e| e.to_string())?;
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size))
            .map_err(|e| e.to_string())?;
        let sh = |cmd: &mut Command, what: &str| -> Result<(), String> {
            let out = cmd
                .output()
                .map_err(|e| format!("cannot run {what}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{what} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(())
        };
        sh(
            Command::new("mkfs.ext2").args(["-q", "-F"]).arg(&image),
            "mkfs.ext2",
        )?;
        sh(
            Command::new("mount")
                .args(["-t", "ext2", "-o", "loop"])
                .arg(&image)
                .arg(&point),
            "mount -o loop",
        )?;
        Ok(Ext2 {
            _parent: parent,
            point,
        })
    }
}

impl Drop for Ext2 {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

fn mount_or_skip(size: u64) -> Option<Ext2> {
    match Ext2::mount(size) {
        Ok(m) => Some(m),
        Err(why) => {
            println!("SKIPPED: {why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
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

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
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
    let out = run(&["init", s(&dir), "--segment-size", "64KiB"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // Several 64 KiB segments, every line acknowledged.
    let lines: String = (0..1500)
        .map(|i| format!("line-{i:05}-{}\n", "e".repeat(80)))
        .collect();
    let out = run(&["write", s(&dir), "--durable"], lines.as_bytes());
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    assert_eq!(stdout(&out).lines().count(), 1500);
    assert!(err.contains("does not support fallocate"), "{err}");
    // The open segment (and a prepared one) are whole files with real blocks.
    let mut reserved = 0;
    for e in std::fs::read_dir(dir.join("wal")).expect("read wal/") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".wal.open") || name.ends_with(".wal.prep") {
            let m = e.metadata().expect("stat");
            assert_eq!(m.len(), common::SEG, "{name}");
            assert!(
                m.blocks() * 512 >= common::SEG,
                "{name}: {} blocks",
                m.blocks()
            );
            reserved += 1;
        }
    }
    assert!(reserved > 0);
    assert_eq!(code(&run(&["seal", s(&dir)], b"")), 0);
    let out = run(&["verify", s(&dir)], b"");
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));

    // Archive and restore on the same file system, cut inside a segment: the restored open
    // segment is reserved by the same fallback and takes new writes.
    let records = common::read_all(&dir).expect("read");
    assert_eq!(records.len(), 1500);
    let archive = fs.point.join("archive");
    let out = run(&["archive", s(&dir), "--to", s(&archive), "--once"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let restored = fs.point.join("restored");
    let cut = records[700].end_lsn.to_string();
    let out = run(
        &["restore", s(&archive), s(&restored), "--until-lsn", &cut],
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(&["write", s(&restored), "--durable"], b"after restore\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let got = common::read_all(&restored).expect("read the restore");
    assert_eq!(got.len(), 702);
    assert_eq!(got[700].payload, records[700].payload);
    assert_eq!(got[701].payload, b"after restore");
    let out = run(&["verify", s(&restored)], b"");
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
    let out = run(&["init", s(&dir), "--segment-size", "64KiB"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut acked = 0usize;
    let mut failure = None;
    // 100 lines of 100 bytes per run: each run is acknowledged whole, or fails.
    for run_no in 0..400 {
        let lines: String = (0..100)
            .map(|i| format!("r{run_no:03}-{i:03}-{}\n", "f".repeat(90)))
            .collect();
        let out = run(&["write", s(&dir), "--durable"], lines.as_bytes());
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
    let out = run(&["verify", s(&dir)], b"");
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
}
