//! Recovery never destroys bytes it cannot prove were never acknowledged: such bytes are refused
//! (exit 1, naming file, offset, LSN and reason) or set aside intact in `setaside/`; every check
//! that can fail runs before the first change on disk; `verify` and `write` agree.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use walship::format::record::{encode_record, encoded_len, SEAL_LEN};
use walship::format::segment_header::SEGMENT_HEADER_LEN;
use walship::format::{SegmentFileKind, SegmentHeader, SEGMENT_FORMAT_VERSION};
use walship::{DataDir, Entry, EntryType, Lsn, Wal, WalOptions};

/// Every file under `dir` (relative path, bytes): a directory's whole state.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, at: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(at).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out.remove(Path::new("LOCK"));
    out
}

/// Appends `n` durable records of `size` bytes and seals, so that every record sits in a
/// sealed segment; returns their (LSN, end LSN).
fn fill_sealed(dir: &Path, n: usize, size: usize) -> Vec<(Lsn, Lsn)> {
    let out = fill(dir, n, size);
    let wal = Wal::open(dir, WalOptions::default()).expect("open");
    wal.seal().expect("seal");
    drop(wal);
    for n in DataDir::new(dir).list_segments().expect("list") {
        if n.kind != SegmentFileKind::Sealed {
            std::fs::remove_file(dir.join("wal").join(n.to_string())).expect("remove");
        }
    }
    out
}

/// Appends `n` durable records of `size` bytes; returns their (LSN, end LSN).
fn fill(dir: &Path, n: usize, size: usize) -> Vec<(Lsn, Lsn)> {
    let wal = Wal::open(dir, WalOptions::default()).expect("open");
    let out = (0..n)
        .map(|i| {
            let p = format!("{i:0size$}");
            let a = wal
                .append_durable(&Entry::new(EntryType::Insert, None, p.as_bytes()))
                .expect("append");
            (a.lsn, a.end_lsn)
        })
        .collect();
    drop(wal);
    out
}

/// `verify`, `write` and `dump` all find `dir` damaged (exit 1) and name the same file and LSN;
/// returns what `verify` said.
fn damage_named_alike(what: &str, dir: &Path) -> String {
    let v = verify(dir);
    let said = common::stdout(&v);
    assert_eq!(common::code(&v), 1, "{what}: verify: {said}");
    let line = said
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{what}: verify names the damage: {said}"));
    let place = line
        .strip_prefix("error: ")
        .and_then(|l| l.split(": ").next())
        .expect("a place");
    let (file, lsn) = (
        place.split(' ').next().expect("file"),
        place.rsplit("(LSN ").next().expect("lsn"),
    );
    let d = dir.to_str().expect("utf8");
    for (cmd, out) in [
        ("write", write_one(dir)),
        ("dump", common::run(&["dump", d], b"")),
    ] {
        let err = common::stderr(&out);
        assert_eq!(common::code(&out), 1, "{what}: {cmd}: {err}");
        assert!(
            err.contains(file) && err.contains(&format!("(LSN {lsn}")),
            "{what}: {cmd} names {place} as verify does: {err}"
        );
    }
    said
}

fn write_one(dir: &Path) -> std::process::Output {
    common::run(&["write", dir.to_str().expect("utf8"), "--durable"], b"x\n")
}

fn verify(dir: &Path) -> std::process::Output {
    common::run(&["verify", dir.to_str().expect("utf8")], b"")
}

/// The newest sealed segment is put back as the writer leaves it mid-seal: still named open,
/// at full size (or cut to its used length); `damage` then changes its bytes. Returns its path.
fn unseal_newest(dir: &Path, cut: bool, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let sealed = DataDir::new(dir)
        .list_segments()
        .expect("list")
        .into_iter()
        .rfind(|n| n.kind == SegmentFileKind::Sealed)
        .expect("a sealed segment");
    let from = dir.join("wal").join(sealed.to_string());
    let mut b = std::fs::read(&from).expect("read");
    if !cut {
        b.resize(common::SEG as usize, 0);
    }
    damage(&mut b);
    let to = dir
        .join("wal")
        .join(sealed.with_kind(SegmentFileKind::Open).to_string());
    std::fs::write(&to, &b).expect("write");
    std::fs::remove_file(&from).expect("remove");
    to
}

fn sealed_len(dir: &Path) -> usize {
    let n = DataDir::new(dir)
        .list_segments()
        .expect("list")
        .into_iter()
        .rfind(|n| n.kind == SegmentFileKind::Sealed)
        .expect("sealed");
    std::fs::metadata(dir.join("wal").join(n.to_string()))
        .expect("stat")
        .len() as usize
}

/// An older open segment whose seal marker is damaged, followed by a newer open segment whose
/// records were acknowledged (the writer had made the log durable inside it): refused, in every
/// mode, whether the older file is at full size or already cut, with nothing changed on disk.
#[test]
fn a_damaged_seal_before_acknowledged_records_is_refused_and_nothing_changes() {
    for cut in [false, true] {
        for flip in [0usize, 20, 44, 63] {
            let (_t, dir) = common::new_dir();
            let acked = fill(&dir, 700, 100);
            let marker = sealed_len(&dir) - SEAL_LEN;
            let older = unseal_newest(&dir, cut, |b| b[marker + flip] ^= 0x10);
            let before = snapshot(&dir);
            let out = write_one(&dir);
            let err = common::stderr(&out);
            assert_eq!(common::code(&out), 1, "cut={cut} flip={flip}: {err}");
            let name = older
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            assert!(err.contains(&name), "names the file: {err}");
            assert!(
                err.contains(&format!("offset {marker}")),
                "names the offset: {err}"
            );
            assert_eq!(
                snapshot(&dir),
                before,
                "cut={cut} flip={flip}: refused open changed files"
            );
            assert_eq!(common::code(&verify(&dir)), 1, "verify agrees: damage");
            let strict = Wal::open(
                &dir,
                WalOptions {
                    recovery_mode: walship::RecoveryMode::Strict,
                    ..WalOptions::default()
                },
            );
            assert!(strict.is_err());
            assert_eq!(snapshot(&dir), before);
            // Every acknowledged record is still there for whoever repairs the marker.
            assert_eq!(acked.len(), 700);
        }
    }
}

/// A segment image of version 2 with `n` records whose durable offset is `durable`.
fn segment_image(dir: &Path, no: u64, prev: Option<u32>, n: usize, durable: u32) -> Vec<u8> {
    let c = DataDir::new(dir).read_control().expect("control");
    let h = SegmentHeader {
        format_version: SEGMENT_FORMAT_VERSION,
        timeline: 1,
        segment_size: c.segment_size,
        segment_no: no,
        system_id: c.system_id,
        prev_checksum: prev,
        created_us: 1,
    };
    let mut b = vec![0u8; c.segment_size as usize];
    b[..SEGMENT_HEADER_LEN].copy_from_slice(&h.encode());
    let mut off = SEGMENT_HEADER_LEN;
    for i in 0..n {
        let p = format!("unacknowledged {i}");
        let len = encoded_len(p.len());
        encode_record(
            &mut b[off..off + len],
            h.start_lsn() + off as u64,
            durable.min(off as u32),
            EntryType::Insert.code(),
            None,
            2,
            p.as_bytes(),
        );
        off += len;
    }
    b
}

/// The older open segment's marker never became durable (zeros, or a torn marker), and the
/// newer open segment holds records appended before the log was durable in it: the log ends
/// in the older segment, and the newer one is moved to setaside/ intact, never deleted.
#[test]
fn newer_open_segments_whose_records_were_never_durable_are_set_aside_intact() {
    for torn in [false, true] {
        let (_t, dir) = common::new_dir();
        let acked = fill_sealed(&dir, 700, 100);
        let marker = sealed_len(&dir) - SEAL_LEN;
        let older = unseal_newest(&dir, false, |b| {
            b[marker..marker + SEAL_LEN].fill(0);
            if torn {
                b[marker..marker + 24].fill(0x5A);
            }
        });
        let name = walship::format::SegmentName::parse(
            older.file_name().expect("name").to_str().expect("utf8"),
        )
        .expect("segment name");
        let newer_name =
            walship::format::SegmentName::new(1, name.segment_no.0 + 1, SegmentFileKind::Open);
        let newer = dir.join("wal").join(newer_name.to_string());
        // Whatever newer open segment the last writer left behind goes; ours replaces it.
        let _ = std::fs::remove_file(&newer);
        let image = segment_image(&dir, name.segment_no.0 + 1, None, 5, 0);
        std::fs::write(&newer, &image).expect("write newer");

        let strict = Wal::open(
            &dir,
            WalOptions {
                recovery_mode: walship::RecoveryMode::Strict,
                ..WalOptions::default()
            },
        );
        assert!(strict.is_err(), "strict mode refuses to set anything aside");
        assert!(newer.exists());
        // Before recovery runs, the end every other command reads is where recovery will end
        // the log: a checkpoint can never be put past it, into records it will set aside.
        let end = acked[acked.len() - 1].1 .0;
        assert_eq!(common::status(&dir)["flush_lsn"].as_u64(), Some(end));
        let inside_newer = ((name.segment_no.0 + 1) * common::SEG + 200).to_string();
        let out = common::run(
            &[
                "checkpoint",
                dir.to_str().expect("utf8"),
                "--lsn",
                &inside_newer,
            ],
            b"",
        );
        assert_eq!(common::code(&out), 2, "{}", common::stderr(&out));
        assert!(newer.exists());

        assert_eq!(
            common::code(&verify(&dir)),
            0,
            "{}",
            common::stdout(&verify(&dir))
        );
        let out = write_one(&dir);
        assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
        let err = common::stderr(&out);
        assert!(
            err.contains("set aside") || err.contains("setaside"),
            "logged: {err}"
        );
        assert!(!newer.exists());
        let aside = walship::setaside::list(&DataDir::new(&dir)).expect("list");
        let kept = aside
            .iter()
            .find(|n| n.starts_with(&newer_name.to_string()))
            .unwrap_or_else(|| panic!("newer segment not set aside: {aside:?}"));
        let bytes = std::fs::read(walship::setaside::setaside_dir(&DataDir::new(&dir)).join(kept))
            .expect("read set-aside file");
        assert_eq!(bytes, image, "the set-aside file is not intact");
        // status shows it.
        let st = common::run(&["status", dir.to_str().expect("utf8"), "--json"], b"");
        let st: serde_json::Value =
            serde_json::from_str(common::stdout(&st).trim()).expect("status json");
        assert!(
            st["set_aside"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == kept.as_str())),
            "{st}"
        );
        // dump reads a set-aside file as the segment it was.
        let kept_path = walship::setaside::setaside_dir(&DataDir::new(&dir)).join(kept);
        let out = common::run(&["dump", kept_path.to_str().expect("utf8")], b"");
        assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
        assert_eq!(common::stdout(&out).matches("unacknowledged").count(), 5);
        // Every acknowledged record is kept, and the new one follows the last of them.
        let recs = common::read_recs(&dir).expect("read");
        assert_eq!(recs.len(), acked.len() + 1);
        assert_eq!(recs[acked.len() - 1].end_lsn, acked[acked.len() - 1].1 .0);
        assert_eq!(common::code(&verify(&dir)), 0);
    }
}

/// Proof that the older marker was durable comes from any record of the newer segment that
/// was appended after the log was durable inside it, wherever it sits.
#[test]
fn one_record_written_after_a_sync_in_the_newer_segment_is_proof_enough() {
    let (_t, dir) = common::new_dir();
    fill_sealed(&dir, 700, 100);
    let marker = sealed_len(&dir) - SEAL_LEN;
    let older = unseal_newest(&dir, false, |b| b[marker..marker + SEAL_LEN].fill(0));
    let no =
        walship::format::SegmentName::parse(older.file_name().expect("n").to_str().expect("u"))
            .expect("name")
            .segment_no
            .0;
    let newer = common::seg_path(&dir, no + 1, SegmentFileKind::Open);
    let _ = std::fs::remove_file(&newer);
    std::fs::write(&newer, segment_image(&dir, no + 1, None, 6, 200)).expect("write");
    let before = snapshot(&dir);
    let out = write_one(&dir);
    assert_eq!(common::code(&out), 1, "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("durable"),
        "{}",
        common::stderr(&out)
    );
    assert_eq!(snapshot(&dir), before);
    assert_eq!(common::code(&verify(&dir)), 1);
}

/// A prepared file never holds acknowledged records, but one that holds data is set aside, not
/// deleted; an all-zero one is simply removed.
#[test]
fn a_prepared_file_holding_data_is_set_aside() {
    let (_t, dir) = common::new_dir();
    fill(&dir, 50, 100);
    let prep = common::seg_path(&dir, 40, SegmentFileKind::Prepared);
    let image = segment_image(&dir, 40, None, 3, 0);
    std::fs::write(&prep, &image).expect("write");
    let zero = common::seg_path(&dir, 41, SegmentFileKind::Prepared);
    std::fs::write(&zero, vec![0u8; common::SEG as usize]).expect("write");
    let out = write_one(&dir);
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    assert!(!prep.exists() && !zero.exists());
    let aside = walship::setaside::list(&DataDir::new(&dir)).expect("list");
    assert_eq!(aside.len(), 1, "{aside:?}");
    let got = std::fs::read(walship::setaside::setaside_dir(&DataDir::new(&dir)).join(&aside[0]))
        .expect("read");
    assert_eq!(got, image);
}

/// An open segment whose header never became durable holds no acknowledged record, unless one
/// of its records says the log was durable inside it; its bytes are set aside either way or
/// refused, never deleted.
#[test]
fn a_segment_whose_header_is_zeros_is_set_aside_or_refused() {
    for durable in [0u32, 120] {
        let (_t, dir) = common::new_dir();
        let acked = fill(&dir, 30, 100);
        let open = common::open_segment(&dir).expect("open segment").1;
        let name =
            walship::format::SegmentName::parse(open.file_name().expect("n").to_str().expect("u"))
                .expect("name");
        // Seal what there is so that the next segment is the open one.
        let wal = Wal::open(&dir, WalOptions::default()).expect("open");
        wal.seal().expect("seal");
        drop(wal);
        let next = common::seg_path(&dir, name.segment_no.0 + 1, SegmentFileKind::Open);
        let _ = std::fs::remove_file(common::seg_path(
            &dir,
            name.segment_no.0 + 1,
            SegmentFileKind::Prepared,
        ));
        let mut image = segment_image(&dir, name.segment_no.0 + 1, None, 4, durable);
        image[..SEGMENT_HEADER_LEN].fill(0);
        std::fs::write(&next, &image).expect("write");
        let before = snapshot(&dir);
        let out = write_one(&dir);
        if durable == 0 {
            assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
            let aside = walship::setaside::list(&DataDir::new(&dir)).expect("list");
            assert_eq!(aside.len(), 1, "{aside:?}");
            assert_eq!(
                common::read_recs(&dir).expect("read").len(),
                acked.len() + 1
            );
        } else {
            assert_eq!(common::code(&out), 1, "{}", common::stderr(&out));
            assert!(
                common::stderr(&out).contains("header is zeros"),
                "{}",
                common::stderr(&out)
            );
            assert_eq!(snapshot(&dir), before);
            assert_eq!(common::code(&verify(&dir)), 1);
            let out = common::run(&["dump", dir.to_str().expect("utf8")], b"");
            assert_eq!(common::code(&out), 1, "{}", common::stderr(&out));
            assert!(
                common::stderr(&out).contains("header is zeros"),
                "{}",
                common::stderr(&out)
            );
        }
    }
}

/// An open segment of the wrong length: longer than a segment, or cut short without a seal
/// marker at its end. `write` refuses and `verify` reports damage: they agree. Cut short right
/// after a valid marker is an interrupted seal, which both accept.
#[test]
fn open_segments_of_the_wrong_length_are_damage_for_verify_and_write_alike() {
    type Change = fn(&mut Vec<u8>, usize);
    let cases: [(&str, Change); 7] = [
        ("one byte longer", |b, _| b.push(0)),
        ("a page longer", |b, _| b.extend_from_slice(&[0u8; 4096])),
        ("cut inside the records", |b, end| b.truncate(end - 30)),
        ("cut at the last record's end", |b, end| b.truncate(end)),
        // Without a header the records are gone, but the published durable position says some
        // were acknowledged: damage, never a segment started again at their LSNs.
        ("cut to nothing", |b, _| b.clear()),
        ("cut to a page of zeros", |b, _| {
            b.truncate(4096);
            b.fill(0);
        }),
        ("zeroed whole", |b, _| b.fill(0)),
    ];
    for (what, change) in cases {
        let (_t, dir) = common::new_dir();
        fill(&dir, 20, 100);
        let (_, path) = common::open_segment(&dir).expect("open segment");
        let mut b = std::fs::read(&path).expect("read");
        let end = walship::decoder::SegmentScanner::new(&b)
            .map(|mut s| s.finish().offset())
            .expect("scan");
        change(&mut b, end);
        std::fs::write(&path, &b).expect("write");
        let before = snapshot(&dir);
        // `dump` reads the same records and stops at the same damage.
        damage_named_alike(what, &dir);
        assert_eq!(snapshot(&dir), before, "{what}: refused open changed files");
    }
    // An interrupted seal cut right after its marker: both accept it, recovery finishes it.
    let (_t, dir) = common::new_dir();
    fill(&dir, 700, 100);
    unseal_newest(&dir, true, |_| {});
    assert_eq!(common::code(&verify(&dir)), 0);
    let out = write_one(&dir);
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    assert_eq!(common::code(&verify(&dir)), 0);
}

/// Records the writer published as durable (`state/flush_position`) that the log no longer
/// reaches are damage, whatever took them: the open segment removed or renamed to a prepared
/// name, every segment removed, the last records zeroed or garbled so that they read as a torn
/// tail. `verify`, `dump` and `write` agree: exit 1, the same file and LSN named, nothing
/// changed. Bytes past the published position stay a torn tail that `write` repairs.
#[test]
fn acknowledged_records_the_log_no_longer_reaches_are_damage_for_every_command() {
    type Change = fn(&Path, &Path, usize);
    let cases: [(&str, Change); 5] = [
        ("open segment removed", |_, open, _| {
            std::fs::remove_file(open).expect("rm")
        }),
        ("open segment renamed to a prepared name", |_, open, _| {
            let prep = open.with_extension("prep");
            std::fs::rename(open, prep).expect("rename")
        }),
        ("every segment removed", |dir, _, _| {
            for e in std::fs::read_dir(dir.join("wal")).expect("list") {
                std::fs::remove_file(e.expect("entry").path()).expect("rm");
            }
        }),
        ("last records zeroed", |_, open, end| {
            let mut b = std::fs::read(open).expect("read");
            b[end - 350..end].fill(0);
            std::fs::write(open, b).expect("write")
        }),
        ("last records garbled", |_, open, end| {
            let mut b = std::fs::read(open).expect("read");
            for (i, x) in b[end - 350..end].iter_mut().enumerate() {
                *x = (i as u8).wrapping_mul(31) ^ 0x5A;
            }
            std::fs::write(open, b).expect("write")
        }),
    ];
    for (what, change) in cases {
        let (_t, dir) = common::new_dir();
        let acked = fill(&dir, 700, 100);
        let published = std::fs::read(dir.join("state/flush_position")).expect("published");
        assert_eq!(
            walship::flush_position::decode_position(&published),
            acked.last().map(|a| a.1 .0),
            "{what}: the writer published its last acknowledged record"
        );
        let (_, path) = common::open_segment(&dir).expect("open segment");
        let b = std::fs::read(&path).expect("read");
        let end = walship::decoder::SegmentScanner::new(&b)
            .map(|mut s| s.finish().offset())
            .expect("scan");
        change(&dir, &path, end);
        let before = snapshot(&dir);
        let said = damage_named_alike(what, &dir);
        assert!(
            said.contains("state/flush_position")
                || said.contains("prepared segment holds records"),
            "{what}: {said}"
        );
        assert_eq!(snapshot(&dir), before, "{what}: a refusal changed files");
    }
    // Past the published position, bytes no sync covered are a torn tail: repaired.
    let (_t, dir) = common::new_dir();
    fill(&dir, 700, 100);
    let (_, path) = common::open_segment(&dir).expect("open segment");
    let mut b = std::fs::read(&path).expect("read");
    let end = walship::decoder::SegmentScanner::new(&b)
        .map(|mut s| s.finish().offset())
        .expect("scan");
    b[end..end + 200].fill(0xA7);
    std::fs::write(&path, b).expect("write");
    assert_eq!(common::code(&verify(&dir)), 0);
    let out = write_one(&dir);
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
}

mod crash_states {
    //! Any state a crash can leave, then any single corruption: recovery keeps every
    //! acknowledged record's bytes or refuses without changing anything; whatever it takes out
    //! of the log is kept in setaside/, byte for byte.

    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// A directory after 700 acknowledged records of 100 bytes (several sealed segments and an
    /// open one), and those records.
    type Base = (tempfile::TempDir, PathBuf, Vec<(Lsn, Lsn)>);

    fn base() -> &'static Base {
        static BASE: OnceLock<Base> = OnceLock::new();
        BASE.get_or_init(|| {
            let (t, dir) = common::new_dir();
            let acked = fill(&dir, 700, 100);
            for n in DataDir::new(&dir).list_segments().expect("list") {
                if n.kind == SegmentFileKind::Prepared {
                    std::fs::remove_file(dir.join("wal").join(n.to_string())).expect("rm");
                }
            }
            (t, dir, acked)
        })
    }

    /// The crash shapes: how the writer (or recovery itself) may have left the files.
    #[derive(Clone, Copy, Debug)]
    enum Shape {
        Clean,
        /// Killed mid-seal: marker durable, file not yet cut, or cut but not renamed.
        SealNotNamed {
            cut: bool,
        },
        /// Killed before the marker became durable: the newer segment holds unacknowledged
        /// records (written before the log was durable in it).
        SealNotDurable,
        /// Recovery of that state itself killed after it set the newer segment aside, before
        /// it zeroed anything.
        RecoveryInterrupted,
        /// A segment activated just before the crash whose new name was lost.
        PreparedWithData,
        /// Unsynced garbage after the open segment's last record.
        TornTail,
        /// The newest segment's header never became durable.
        HeaderLost,
    }

    #[derive(Clone, Copy, Debug)]
    enum Corruption {
        None,
        Flip { file: usize, at: usize, bit: u8 },
        Zero { file: usize, at: usize, len: usize },
        Truncate { file: usize, at: usize },
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Clean),
            any::<bool>().prop_map(|cut| Shape::SealNotNamed { cut }),
            Just(Shape::SealNotDurable),
            Just(Shape::RecoveryInterrupted),
            Just(Shape::PreparedWithData),
            Just(Shape::TornTail),
            Just(Shape::HeaderLost),
        ]
    }

    fn corruption() -> impl Strategy<Value = Corruption> {
        prop_oneof![
            Just(Corruption::None),
            (0usize..8, 0usize..65536, 0u8..8).prop_map(|(file, at, bit)| Corruption::Flip {
                file,
                at,
                bit
            }),
            (0usize..8, 0usize..65536, 1usize..600).prop_map(|(file, at, len)| Corruption::Zero {
                file,
                at,
                len
            }),
            (0usize..8, 0usize..65536).prop_map(|(file, at)| Corruption::Truncate { file, at }),
        ]
    }

    /// Builds the shape in a copy of the base; returns the directory and the acknowledged
    /// records that the shape keeps acknowledged.
    fn build(shape: Shape) -> (tempfile::TempDir, PathBuf, Vec<(Lsn, Lsn)>) {
        let (_, base_dir, acked) = base();
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("data");
        common::copy_tree(base_dir, &dir);
        let mut acked = acked.clone();
        let wal = dir.join("wal");
        let open = common::open_segment(&dir).map(|(n, _)| n);
        match shape {
            Shape::Clean => {}
            Shape::SealNotNamed { cut } => {
                unseal_newest(&dir, cut, |_| {});
            }
            Shape::SealNotDurable | Shape::RecoveryInterrupted => {
                let marker = sealed_len(&dir) - SEAL_LEN;
                let older = unseal_newest(&dir, false, |b| b[marker..marker + SEAL_LEN].fill(0));
                let no = walship::format::SegmentName::parse(
                    older.file_name().expect("n").to_str().expect("u"),
                )
                .expect("name")
                .segment_no
                .0;
                let end = no * common::SEG + marker as u64;
                acked.retain(|(_, e)| e.0 <= end);
                let newer = common::seg_path(&dir, no + 1, SegmentFileKind::Open);
                std::fs::write(&newer, segment_image(&dir, no + 1, None, 7, 0)).expect("w");
                if matches!(shape, Shape::RecoveryInterrupted) {
                    walship::setaside::move_aside(&DataDir::new(&dir), &newer).expect("aside");
                }
            }
            Shape::PreparedWithData => {
                let no = open.map_or(30, |n| n.segment_no.0 + 1);
                std::fs::write(
                    common::seg_path(&dir, no, SegmentFileKind::Prepared),
                    segment_image(&dir, no, None, 3, 0),
                )
                .expect("w");
            }
            Shape::TornTail => {
                if let Some(n) = open {
                    let p = wal.join(n.to_string());
                    let mut b = std::fs::read(&p).expect("r");
                    let end = walship::decoder::SegmentScanner::new(&b)
                        .map(|mut s| s.finish().offset())
                        .expect("scan");
                    b[end..end + 100].fill(0xC3);
                    std::fs::write(&p, b).expect("w");
                }
            }
            Shape::HeaderLost => {
                let no = open.map_or(30, |n| n.segment_no.0 + 1);
                if let Some(n) = open {
                    // Seal by hand is not possible here; put the new segment after the open
                    // one only when the open one ends sealed. Otherwise lose the open
                    // segment's header, which loses no acknowledged record only if it holds
                    // none: drop its records from the acknowledged set.
                    let p = wal.join(n.to_string());
                    let mut b = std::fs::read(&p).expect("r");
                    b[..SEGMENT_HEADER_LEN].fill(0);
                    std::fs::write(&p, b).expect("w");
                    let start = n.segment_no.0 * common::SEG;
                    acked.retain(|(l, _)| l.0 < start);
                    let _ = no;
                }
            }
        }
        (t, dir, acked)
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
            .expect("read_dir")
            .map(|e| e.expect("e").path())
            .collect();
        v.sort();
        v
    }

    fn corrupt(dir: &Path, c: Corruption) -> Vec<(PathBuf, std::ops::Range<usize>)> {
        let fs = files(dir);
        let pick = |i: usize| fs[i % fs.len()].clone();
        match c {
            Corruption::None => vec![],
            Corruption::Flip { file, at, bit } => {
                let p = pick(file);
                let mut b = std::fs::read(&p).expect("r");
                let at = at % b.len().max(1);
                if b.is_empty() {
                    return vec![];
                }
                b[at] ^= 1 << bit;
                std::fs::write(&p, b).expect("w");
                vec![(p, at..at + 1)]
            }
            Corruption::Zero { file, at, len } => {
                let p = pick(file);
                let mut b = std::fs::read(&p).expect("r");
                let at = at % b.len().max(1);
                let end = (at + len).min(b.len());
                b[at..end].fill(0);
                std::fs::write(&p, b).expect("w");
                vec![(p, at..end)]
            }
            Corruption::Truncate { file, at } => {
                let p = pick(file);
                let b = std::fs::read(&p).expect("r");
                let at = at % b.len().max(1);
                std::fs::write(&p, &b[..at]).expect("w");
                vec![(p, at..usize::MAX)]
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
        #[test]
        fn recovery_keeps_every_acknowledged_record_or_refuses(s in shape(), c in corruption()) {
            let (_t, dir, acked) = build(s);
            let originals = snapshot(&dir);
            let damaged = corrupt(&dir, c);
            let before = snapshot(&dir);
            match Wal::open(&dir, WalOptions { prepare_ahead: false, ..WalOptions::default() }) {
                Err(_) => {
                    prop_assert!(snapshot(&dir) == before, "{s:?} {c:?}: a refused open changed files");
                }
                Ok(wal) => {
                    drop(wal);
                    let after = snapshot(&dir);
                    // 1. Nothing that was there is gone: each file is still in wal/ (perhaps
                    // renamed from open to sealed and cut where it held zeros), or a copy of
                    // it as found is in setaside/.
                    for (rel, bytes) in &before {
                        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else { continue };
                        let Some(seg) = walship::format::SegmentName::parse(name) else { continue };
                        let in_wal = [SegmentFileKind::Sealed, SegmentFileKind::Open]
                            .iter()
                            .filter_map(|k| after.get(&PathBuf::from("wal").join(seg.with_kind(*k).to_string())))
                            .any(|now| {
                                now == bytes
                                    || (now.len() <= bytes.len()
                                        && now[..] == bytes[..now.len()]
                                        && bytes[now.len()..].iter().all(|&b| b == 0))
                            });
                        let aside = after.iter().any(|(p, b)| p.starts_with("setaside") && b == bytes);
                        let all_zero = bytes.iter().all(|&b| b == 0);
                        prop_assert!(in_wal || aside || all_zero, "{s:?} {c:?}: {} lost", rel.display());
                    }
                    // 2. Every acknowledged record's bytes are where they were, unless the
                    // corruption itself changed them.
                    for (lsn, end) in &acked {
                        let no = lsn.0 / common::SEG;
                        let off = (lsn.0 % common::SEG) as usize;
                        let len = (end.0 - lsn.0) as usize;
                        let hit = damaged.iter().any(|(p, r)| {
                            walship::format::SegmentName::parse(p.file_name().and_then(|n| n.to_str()).unwrap_or(""))
                                .is_some_and(|n| n.segment_no.0 == no)
                                && r.start < off + len && off < r.end
                        });
                        if hit { continue; }
                        let orig = [SegmentFileKind::Sealed, SegmentFileKind::Open]
                            .iter()
                            .find_map(|k| originals.get(&PathBuf::from("wal").join(walship::format::SegmentName::new(1, no, *k).to_string())))
                            .expect("original");
                        let now = [SegmentFileKind::Sealed, SegmentFileKind::Open]
                            .iter()
                            .find_map(|k| after.get(&PathBuf::from("wal").join(walship::format::SegmentName::new(1, no, *k).to_string())));
                        prop_assert!(
                            now.is_some_and(|b| b.get(off..off + len) == orig.get(off..off + len)),
                            "{s:?} {c:?}: acknowledged record at {lsn} lost"
                        );
                    }
                }
            }
        }
    }
}

/// A data directory whose segment 1 lost its seal marker (renamed open, zero-filled to the
/// segment size, no published position), followed by an open segment 2 holding two records,
/// the second appended when the first was durable.
fn lost_seal_marker(dir: &Path) {
    let d = dir.to_str().expect("utf8");
    let out = common::run(&["init", d, "--segment-size", "64KiB"], b"");
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    for rec in ["s0", "s1"] {
        let out = common::run(&["write", d, "--durable"], rec.as_bytes());
        assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
        assert_eq!(common::code(&common::run(&["seal", d], b"")), 0);
    }
    // Two writes: the second record says the log was durable up to the first.
    for rec in ["a2", "b2"] {
        let out = common::run(&["write", d, "--durable"], rec.as_bytes());
        assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    }
    let wal = dir.join("wal");
    let sealed = wal.join("000000010000000000000001.wal");
    let mut b = std::fs::read(&sealed).expect("read");
    let n = b.len();
    b[n - SEAL_LEN..].fill(0);
    b.resize(64 * 1024, 0);
    std::fs::write(wal.join("000000010000000000000001.wal.open"), b).expect("write");
    std::fs::remove_file(&sealed).expect("rm");
    std::fs::remove_file(dir.join("state/flush_position")).expect("rm");
}

/// Damage only recovery's plan finds at the end of the log: a segment that lost its seal
/// marker, followed by a newer open segment (or one renamed to a prepared name) holding a
/// record appended after the older one's marker was durable. `dump` names it as `verify` and
/// `write` do, instead of ending the log early and exiting 0.
#[test]
fn a_lost_seal_marker_proven_by_a_newer_segment_is_damage_for_every_command() {
    for shape in [
        "newer open segment",
        "newer segment renamed to a prepared name",
    ] {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("d");
        lost_seal_marker(&dir);
        if shape.contains("prepared") {
            let wal = dir.join("wal");
            std::fs::rename(
                wal.join("000000010000000000000002.wal.open"),
                wal.join("000000010000000000000002.wal.prep"),
            )
            .expect("rename");
        }
        let before = common::files_under(&dir);
        damage_named_alike(shape, &dir);
        // Read from past the damage, or only the first records of it: refused all the same,
        // with nothing of the newer segment printed.
        let d = dir.to_str().expect("utf8");
        for args in [
            vec!["dump", d, "--start", "0/00020000"],
            vec!["dump", d, "--start", "0/00010000", "--limit", "1"],
        ] {
            let out = common::run(&args, b"");
            assert_eq!(
                common::code(&out),
                1,
                "{shape}: {args:?}: {}",
                common::stderr(&out)
            );
            assert!(
                !common::stdout(&out).contains("0/0002"),
                "{shape}: {args:?} printed past the log's end: {}",
                common::stdout(&out)
            );
        }
        assert!(common::files_under(&dir) == before, "{shape}: changed");
    }
}

/// The same, with the newer segment's only record appended before anything was durable: no
/// damage, recovery cuts the log at the older segment and sets the newer aside. `verify`
/// counts the log recovery keeps, not the records set aside.
#[test]
fn verify_counts_the_log_recovery_keeps_when_it_ends_before_newer_open_segments() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("d");
    lost_seal_marker(&dir);
    let newer = dir.join("wal/000000010000000000000002.wal.open");
    let mut b = std::fs::read(&newer).expect("read");
    // The second record goes: the first was appended with nothing durable in its segment.
    let second = SEGMENT_HEADER_LEN + encoded_len(2);
    b[second..second + encoded_len(2)].fill(0);
    std::fs::write(&newer, b).expect("write");
    let v = verify(&dir);
    assert_eq!(common::code(&v), 0, "{}", common::stdout(&v));
    let d = dir.to_str().expect("utf8");
    let j: serde_json::Value =
        serde_json::from_str(&common::stdout(&common::run(&["verify", d, "--json"], b"")))
            .expect("json");
    let dumped = common::stdout(&common::run(&["dump", d, "--json"], b""));
    let records: Vec<serde_json::Value> = dumped
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .filter(|r: &serde_json::Value| r.get("lsn").is_some())
        .collect();
    assert_eq!(j["records"].as_u64(), Some(records.len() as u64), "{j}");
    let end = records.last().expect("records")["end_lsn"].clone();
    assert_eq!(j["end_lsn"], end, "{j}");
    // And the writer, recovering, ends the log there too.
    let out = write_one(&dir);
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
}
