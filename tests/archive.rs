//! Archive and restore through the real `walship` binary: byte-identical round trips, exact
//! point-in-time cuts, refusals that leave the archive untouched, and SIGKILL mid-push.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::data::{record_fields as records, RecordFields as Rec};
use common::{archive_once, bin, names, p, run_with, text, wait_until, walship, SEG};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use walship::{Entry, EntryType, Lsn, Wal, WalOptions};

/// A data directory with about `segments` sealed 64 KiB segments of mixed records: small
/// text, larger page-like payloads, random bytes. One record per append, so timestamps rise.
fn make_store(root: &Path, segments: u64, seed: u64) -> Vec<Rec> {
    let out = walship(&["init", p(root), "--segment-size", "64KiB"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    common::append_timed(root, segments, |i| {
        let kind = rng.gen_range(0..10);
        let payload: Vec<u8> = match kind {
            0..=5 => {
                format!("row {i} balance {} name user{}", rng.gen::<u32>(), i % 97).into_bytes()
            }
            6..=8 => {
                let mut p = vec![0u8; rng.gen_range(500..3000)];
                for (j, b) in p.iter_mut().enumerate().take(400) {
                    *b = (j as u8).wrapping_mul(7) ^ (i as u8);
                }
                p
            }
            _ => (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect(),
        };
        let t = EntryType::ALL[(i % 9) as usize];
        (t, (i % 3 == 0).then_some(i), payload)
    });
    records(root)
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect()
}

fn sealed_names(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("wal"))
        .expect("list wal")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    v.sort();
    v
}

#[test]
fn archive_then_restore_gives_the_records_back_byte_for_byte() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let want = make_store(&data, 12, 1);
    for (compress, suffix) in [("none", ""), ("zstd", ".zst")] {
        let arc = t.path().join(format!("arc-{compress}"));
        let out = archive_once(
            &data,
            &arc,
            &["--compress", compress, "--warn-lag", "256KiB"],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("archiver behind: "), "{}", text(&out));
        for name in sealed_names(&data) {
            let local = std::fs::read(data.join("wal").join(&name)).unwrap();
            let stored = std::fs::read(arc.join(format!("{name}{suffix}")))
                .unwrap_or_else(|e| panic!("{name}{suffix} not archived: {e}"));
            let stored = if suffix.is_empty() {
                stored
            } else {
                zstd::decode_all(&stored[..]).unwrap()
            };
            assert!(local == stored, "{name}: archived bytes differ");
        }
        let id = std::fs::read_to_string(arc.join("IDENTITY")).unwrap();
        assert!(id.starts_with("walship-archive 2\nsystem_id "), "{id}");
        let v = walship(&["verify", p(&arc)]);
        assert!(v.status.success(), "{}", text(&v));

        let restored = t.path().join(format!("restored-{compress}"));
        let out = walship(&["restore", p(&arc), p(&restored)]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(records(&restored), want);
        for name in sealed_names(&data) {
            assert!(
                std::fs::read(data.join("wal").join(&name)).unwrap()
                    == std::fs::read(restored.join("wal").join(&name)).unwrap(),
                "{name} differs after restore"
            );
        }
        let v = walship(&["verify", p(&restored)]);
        assert!(v.status.success(), "{}", text(&v));
    }
}

fn restore_until(arc: &Path, dest: &Path, flag: &str, value: &str) -> Output {
    walship(&["restore", p(arc), p(dest), flag, value])
}

#[test]
fn until_lsn_is_exact_at_its_boundaries() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 6, 2);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &["--compress", "zstd"])
        .status
        .success());
    // Record indexes: the first record, one mid-segment, the last of a segment, the first of
    // the next, the last overall.
    let seg_of = |r: &Rec| r.0 / SEG;
    let last_of_seg = (0..all.len() - 1)
        .find(|&i| seg_of(&all[i]) == 2 && seg_of(&all[i + 1]) == 3)
        .unwrap();
    let mid = all.iter().position(|r| seg_of(r) == 1).unwrap() + 5;
    let picks = [0, mid, last_of_seg, last_of_seg + 1, all.len() - 1];
    let mut n = 0;
    for &k in &picks {
        for lsn in [all[k].1, all[k].1 - 1] {
            n += 1;
            let dest = t.path().join(format!("r{n}"));
            let out = restore_until(&arc, &dest, "--until-lsn", &lsn.to_string());
            let want: Vec<Rec> = all.iter().filter(|r| r.1 <= lsn).cloned().collect();
            assert!(out.status.success(), "LSN {lsn}: {}", text(&out));
            assert_eq!(records(&dest), want, "until LSN {lsn} (record {k})");
            // The segment the cut falls in is the open segment, full size.
            let first_dropped = all.iter().find(|r| r.1 > lsn);
            let cut_mid_segment = match (want.last(), first_dropped) {
                (Some(k), Some(d)) => k.0 / SEG == d.0 / SEG,
                _ => false,
            };
            let open: Vec<_> = std::fs::read_dir(dest.join("wal"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| common::p(p).ends_with(".wal.open"))
                .collect();
            if cut_mid_segment {
                assert_eq!(open.len(), 1, "LSN {lsn}: expected an open segment");
                assert_eq!(std::fs::metadata(&open[0]).unwrap().len(), SEG);
            }
            let v = walship(&["verify", p(&dest)]);
            assert!(v.status.success(), "{}", text(&v));
        }
    }
    // Past the end of the archive: refused, nothing written.
    let dest = t.path().join("past");
    let out = restore_until(
        &arc,
        &dest,
        "--until-lsn",
        &(all.last().unwrap().1 + 8).to_string(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("before the requested target"),
        "{}",
        text(&out)
    );
    assert!(!dest.exists());
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[test]
fn until_time_is_exact_at_its_boundaries() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 5, 3);
    assert!(
        all.windows(2).all(|w| w[0].4 <= w[1].4),
        "timestamps must not go back"
    );
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &[]).status.success());
    // A record whose timestamp differs from the next one's, in the middle of the log, and the
    // last of segment 1.
    let mid = (all.len() / 2..all.len() - 1)
        .find(|&i| all[i].4 < all[i + 1].4)
        .unwrap();
    let seg_end = (0..all.len() - 1)
        .find(|&i| all[i].0 / SEG == 1 && all[i + 1].0 / SEG == 2 && all[i].4 < all[i + 1].4)
        .unwrap();
    let mut n = 0;
    for k in [mid, seg_end] {
        for ts in [all[k].4, all[k].4 - 1] {
            n += 1;
            let dest = t.path().join(format!("r{n}"));
            let out = restore_until(&arc, &dest, "--until-time", &rfc3339(ts));
            assert!(out.status.success(), "{}", text(&out));
            let want: Vec<Rec> = all.iter().filter(|r| r.4 <= ts).cloned().collect();
            assert!(!want.is_empty());
            assert_eq!(records(&dest), want, "until {} (record {k})", rfc3339(ts));
        }
    }
    let out = restore_until(&arc, &t.path().join("bad"), "--until-time", "yesterday");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_restored_directory_takes_new_writes() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 4, 4);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &[]).status.success());
    let cut = all[all.len() * 2 / 3].1;
    let dest = t.path().join("restored");
    let out = restore_until(&arc, &dest, "--until-lsn", &Lsn(cut).to_string());
    assert!(out.status.success(), "{}", text(&out));
    let kept: Vec<Rec> = all.iter().filter(|r| r.1 <= cut).cloned().collect();
    {
        let wal = Wal::open(&dest, WalOptions::default()).expect("open restored");
        assert_eq!(wal.flush_lsn().0, kept.last().unwrap().1);
        let payload = vec![7u8; 900];
        let first = wal
            .append_durable(&Entry::new(EntryType::Insert, Some(1), &payload))
            .unwrap();
        assert_eq!(
            first.lsn.0,
            kept.last().unwrap().1,
            "appends continue after the cut"
        );
        for _ in 0..200 {
            wal.append(&Entry::new(EntryType::Update, None, &payload))
                .unwrap();
        }
        wal.seal().unwrap();
        wal.sync().unwrap();
    }
    let after = records(&dest);
    assert_eq!(after.len(), kept.len() + 201);
    assert_eq!(&after[..kept.len()], &kept[..]);
    let v = walship(&["verify", p(&dest)]);
    assert!(v.status.success(), "{}", text(&v));
    // It serves as a normal store: it can be archived to an archive of its own.
    let arc2 = t.path().join("arc2");
    let out = archive_once(&dest, &arc2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(walship(&["verify", p(&arc2)]).status.success());
}

#[test]
fn a_segment_missing_from_the_middle_fails_restore_and_verify_naming_it() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 6, 5);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &["--compress", "zstd"])
        .status
        .success());
    let missing = "000000010000000000000003.wal";
    std::fs::remove_file(arc.join(format!("{missing}.zst"))).unwrap();
    let dest = t.path().join("restored");
    let out = walship(&["restore", p(&arc), p(&dest)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(missing), "{}", text(&out));
    assert!(!dest.exists(), "restore wrote something before failing");
    let v = walship(&["verify", p(&arc)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains(&format!("segment {missing} is missing")),
        "{}",
        text(&v)
    );

    // A damaged segment is named too, and an empty destination stays empty.
    let victim = arc.join("000000010000000000000001.wal.zst");
    let raw = zstd::decode_all(&std::fs::read(&victim).unwrap()[..]).unwrap();
    let mut bad = raw.clone();
    bad[4000] ^= 0x40;
    std::fs::write(&victim, zstd::encode_all(&bad[..], 3).unwrap()).unwrap();
    std::fs::create_dir(&dest).unwrap();
    let out = walship(&["restore", p(&arc), p(&dest), "--until-lsn", "0/00030000"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("000000010000000000000001.wal.zst"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
}

#[test]
fn a_foreign_system_push_is_refused_and_the_archive_untouched() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    let b = t.path().join("b");
    make_store(&a, 3, 6);
    make_store(&b, 3, 6);
    let arc = t.path().join("arc");
    assert!(archive_once(&a, &arc, &[]).status.success());
    let before = snapshot(&arc);
    let out = archive_once(&b, &arc, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is the archive of system"),
        "{}",
        text(&out)
    );
    assert_eq!(snapshot(&arc), before);
    // Nor into a directory that holds segments without an identity.
    let stray = t.path().join("stray");
    std::fs::create_dir(&stray).unwrap();
    let name = "000000010000000000000000.wal";
    std::fs::copy(b.join("wal").join(name), stray.join(name)).unwrap();
    let before = snapshot(&stray);
    let out = archive_once(&a, &stray, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(snapshot(&stray), before);
}

#[test]
fn a_different_file_under_an_existing_name_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 4, 7);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &[]).status.success());
    // A restored copy that diverges mid-segment 2 seals a different segment 2.
    let cut = all.iter().find(|r| r.0 / SEG == 2).unwrap().1;
    let dest = t.path().join("diverged");
    assert!(restore_until(&arc, &dest, "--until-lsn", &cut.to_string())
        .status
        .success());
    {
        // Its segment 2 differs, and the segments after it are names the archive lacks.
        let wal = Wal::open(&dest, WalOptions::default()).unwrap();
        wal.append(&Entry::new(EntryType::Delete, None, b"another history"))
            .unwrap();
        wal.seal().unwrap();
        for i in 0..70u32 {
            let page = vec![i as u8; 2000];
            wal.append(&Entry::new(EntryType::Insert, None, &page))
                .unwrap();
        }
        wal.seal().unwrap();
    }
    assert!(sealed_names(&dest).len() > 4, "{:?}", sealed_names(&dest));
    let before = snapshot(&arc);
    for (compress, parallel) in [("none", "1"), ("zstd", "1"), ("none", "4"), ("zstd", "8")] {
        let out = archive_once(
            &dest,
            &arc,
            &["--compress", compress, "--parallel", parallel],
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("000000010000000000000002.wal with different content"),
            "{}",
            text(&out)
        );
        assert_eq!(snapshot(&arc), before);
    }
    // The archive is still the primary's: it goes on archiving there.
    {
        let wal = Wal::open(&data, WalOptions::default()).unwrap();
        for i in 0..70u32 {
            wal.append(&Entry::new(EntryType::Insert, None, &vec![i as u8; 2000]))
                .unwrap();
        }
        wal.seal().unwrap();
    }
    let out = archive_once(&data, &arc, &["--parallel", "4"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = walship(&["verify", p(&arc)]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A damaged compressed object is named at its segment's LSN, and a segment stored under both
/// names is named by both files, by `verify` as by `restore`.
#[test]
fn damage_to_compressed_and_doubled_objects_names_the_object_and_its_segment() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 4, 11);
    let (zst, raw) = (t.path().join("zst"), t.path().join("raw"));
    assert!(archive_once(&data, &zst, &["--compress", "zstd"])
        .status
        .success());
    assert!(archive_once(&data, &raw, &[]).status.success());
    let name = "000000010000000000000002.wal";
    let cut = t.path().join("cut");
    common::copy_tree(&zst, &cut);
    let obj = cut.join(format!("{name}.zst"));
    let f = std::fs::OpenOptions::new().write(true).open(&obj).unwrap();
    f.set_len(100).unwrap();
    let v = walship(&["verify", p(&cut)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains(&format!("{name}.zst: offset 0 (LSN 0/00020000)")),
        "{}",
        text(&v)
    );
    let doubled = t.path().join("doubled");
    common::copy_tree(&zst, &doubled);
    std::fs::copy(raw.join(name), doubled.join(name)).unwrap();
    let v = walship(&["verify", p(&doubled)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains(&format!("appears twice ({name} and {name}.zst)")),
        "{}",
        text(&v)
    );
}

/// Every segment file under a final name in `arc` equals the local segment of that name.
fn check_final_names(arc: &Path, data: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(arc).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "IDENTITY" {
            continue;
        }
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        let (local_name, bytes) = match name.strip_suffix(".zst") {
            Some(base) => (
                base.to_string(),
                zstd::decode_all(&bytes[..])
                    .unwrap_or_else(|e| panic!("{name}: partial zstd file visible: {e}")),
            ),
            None => (name.clone(), bytes),
        };
        let local = std::fs::read(data.join("wal").join(&local_name)).unwrap();
        assert!(
            local == bytes,
            "{name}: partial or different content under a final name"
        );
        n += 1;
    }
    n
}

#[test]
fn sigkill_mid_push_then_a_rerun_completes_and_nothing_partial_is_visible() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 120, 8);
    let total = sealed_names(&data).len();
    let arc = t.path().join("arc");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A reader that keeps looking at the archive while pushes run and get killed.
    let watcher = {
        let (arc, data, stop) = (arc.clone(), data.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut looks = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if arc.exists() {
                    check_final_names(&arc, &data);
                    looks += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            looks
        })
    };
    let mut killed_mid = 0;
    for round in 0..4 {
        let mut child = Command::new(bin())
            .args([
                "archive",
                p(&data),
                "--to",
                p(&arc),
                "--once",
                "--compress",
                "zstd",
                "--zstd-level",
                "9",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let before = if arc.exists() {
            check_final_names(&arc, &data)
        } else {
            0
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // Kill once it has pushed a few more segments (or a temporary file shows up).
        loop {
            let now = if arc.exists() { count_objects(&arc) } else { 0 };
            if now >= before + 3 + round || has_temporary(&arc) || Instant::now() > deadline {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if !status.success() {
            killed_mid += 1;
        }
        check_final_names(&arc, &data);
    }
    assert!(killed_mid > 0, "no run was killed before it finished");
    let out = archive_once(&data, &arc, &["--compress", "zstd"]);
    assert!(out.status.success(), "{}", text(&out));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(watcher.join().unwrap() > 0);
    assert_eq!(check_final_names(&arc, &data), total);
    assert!(
        !has_temporary(&arc),
        "a temporary file was left after a clean run"
    );
    let v = walship(&["verify", p(&arc)]);
    assert!(v.status.success(), "{}", text(&v));
    // The recorded position is the end of the last sealed segment.
    let reg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("state/consumers/archiver.json")).unwrap())
            .unwrap();
    let last = all_end(&data);
    assert_eq!(reg["position"].as_u64(), Some(last));
}

fn all_end(data: &Path) -> u64 {
    records(data).last().unwrap().1
}

fn count_objects(arc: &Path) -> usize {
    std::fs::read_dir(arc)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

fn has_temporary(arc: &Path) -> bool {
    std::fs::read_dir(arc)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        })
        .unwrap_or(false)
}

#[test]
fn watching_archives_new_segments_as_they_are_sealed() {
    let t = tempfile::tempdir().unwrap();
    let data: PathBuf = t.path().join("data");
    make_store(&data, 2, 9);
    let arc = t.path().join("arc");
    let child = Command::new(bin())
        .args([
            "archive",
            p(&data),
            "--to",
            p(&arc),
            "--rescan-secs",
            "3600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let wait_for = |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !arc.join(name).exists() {
            assert!(Instant::now() < deadline, "{name} was not archived");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("000000010000000000000001.wal");
    // The writer keeps running while the archiver watches.
    let wal = Wal::open(&data, WalOptions::default()).unwrap();
    for i in 0..3 {
        wal.append(&Entry::new(
            EntryType::Insert,
            None,
            format!("late {i}").as_bytes(),
        ))
        .unwrap();
        let name = wal.seal().unwrap().unwrap();
        wait_for(&name.to_string());
    }
    // SIGTERM stops it cleanly.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(check_final_names(&arc, &data), sealed_names(&data).len());
}

#[test]
fn restore_replaces_a_data_directory_only_with_force() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 3, 10);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &[]).status.success());
    let dest = t.path().join("dest");
    let half = all[all.len() / 2].1;
    assert!(restore_until(&arc, &dest, "--until-lsn", &half.to_string())
        .status
        .success());
    assert_eq!(records(&dest).len(), all.len() / 2 + 1);
    // Not empty: refused without --force, untouched.
    let out = walship(&["restore", p(&arc), p(&dest)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(records(&dest).len(), all.len() / 2 + 1);
    // With --force the data directory is replaced.
    let out = walship(&["restore", p(&arc), p(&dest), "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(records(&dest), all);
    // A file that is not part of a data directory makes even --force refuse.
    std::fs::write(dest.join("notes.txt"), b"mine").unwrap();
    let out = walship(&["restore", p(&arc), p(&dest), "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("notes.txt"), "{}", text(&out));
    assert_eq!(records(&dest), all);
    // A running writer keeps its directory.
    std::fs::remove_file(dest.join("notes.txt")).unwrap();
    let wal = Wal::open(&dest, WalOptions::default()).unwrap();
    let out = walship(&["restore", p(&arc), p(&dest), "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("locked"), "{}", text(&out));
    drop(wal);
    assert_eq!(records(&dest), all);
}

/// Runs `walship ARGS` from working directory `cwd`.
fn walship_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_with(args, b"", |c| {
        c.current_dir(cwd);
        for (k, v) in env {
            c.env(k, v);
        }
    })
}

/// Appends one record and seals its segment; returns the sealed segment's name.
fn seal_one_more(data: &Path, what: &str) -> String {
    let wal = Wal::open(data, WalOptions::default()).expect("open wal");
    wal.append(&Entry::new(EntryType::Insert, None, what.as_bytes()))
        .expect("append");
    let name = wal.seal().expect("seal").expect("a segment to seal");
    wal.sync().expect("sync");
    name.to_string()
}

/// The archiver's registry entry.
fn registry(data: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data.join("state/consumers/archiver.json")).unwrap())
        .unwrap()
}

/// The object of sealed segment `no` in `arc`, whichever form it is stored in.
fn object_of(arc: &Path, no: u64) -> PathBuf {
    let base = format!("{:08X}{:016X}.wal", 1, no);
    let raw = arc.join(&base);
    if raw.exists() {
        raw
    } else {
        arc.join(format!("{base}.zst"))
    }
}

/// The archive holds exactly the data directory's sealed segments, verifies, and restores
/// every record of the data directory.
fn assert_archive_complete(t: &Path, data: &Path, arc: &Path, tag: &str) {
    assert_eq!(
        check_final_names(arc, data),
        sealed_names(data).len(),
        "{tag}: the archive does not hold every sealed segment"
    );
    let v = walship(&["verify", p(arc)]);
    assert!(v.status.success(), "{tag}: {}", text(&v));
    let dest = t.join(format!("restored-{tag}"));
    let out = walship(&["restore", p(arc), p(&dest)]);
    assert!(out.status.success(), "{tag}: {}", text(&out));
    assert_eq!(records(&dest), records(data), "{tag}: restore lost records");
}

#[test]
fn an_archive_that_lost_segments_is_filled_again_from_wal() {
    // What was lost: every segment and the identity, the first segments, one in the middle,
    // the newest one the position covers.
    type Lose = fn(&Path);
    let cases: [(&str, &str, Lose); 5] = [
        ("whole", "none", |arc| std::fs::remove_dir_all(arc).unwrap()),
        ("whole-zstd", "zstd", |arc| {
            std::fs::remove_dir_all(arc).unwrap()
        }),
        ("start", "zstd", |arc| {
            std::fs::remove_file(object_of(arc, 0)).unwrap();
            std::fs::remove_file(object_of(arc, 1)).unwrap();
        }),
        ("middle", "none", |arc| {
            std::fs::remove_file(object_of(arc, 2)).unwrap()
        }),
        ("newest", "none", |arc| {
            std::fs::remove_file(object_of(arc, 3)).unwrap()
        }),
    ];
    for (seed, (tag, compress, lose)) in cases.into_iter().enumerate() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        make_store(&data, 4, 20 + seed as u64);
        assert_eq!(sealed_names(&data).len(), 4, "{tag}");
        let arc = t.path().join("arc");
        let out = archive_once(&data, &arc, &["--compress", compress]);
        assert!(out.status.success(), "{tag}: {}", text(&out));
        lose(&arc);
        seal_one_more(&data, tag);
        let out = archive_once(&data, &arc, &["--compress", compress]);
        assert!(out.status.success(), "{tag}: {}", text(&out));
        assert_archive_complete(t.path(), &data, &arc, tag);
        assert_eq!(
            registry(&data)["position"].as_u64(),
            Some(all_end(&data)),
            "{tag}"
        );
        // Retention may now let everything but the newest go: the archive has it.
        let end = all_end(&data).to_string();
        let out = walship(&["checkpoint", p(&data), "--lsn", &end]);
        assert!(out.status.success(), "{tag}: {}", text(&out));
        assert_eq!(sealed_names(&data).len(), 1, "{tag}");
        let dest = t.path().join("after-checkpoint");
        let out = walship(&["restore", p(&arc), p(&dest)]);
        assert!(out.status.success(), "{tag}: {}", text(&out));
        assert_eq!(
            records(&dest),
            records(&t.path().join(format!("restored-{tag}"))),
            "{tag}"
        );
    }
}

#[test]
fn two_archives_of_one_data_directory_each_hold_back_what_they_have_not_taken() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 3, 31);
    let (a, b) = (t.path().join("arc-a"), t.path().join("arc-b"));
    // Both archivers start at once: each must still register on its own.
    let (out_a, out_b) = std::thread::scope(|sc| {
        let ja = sc.spawn(|| archive_once(&data, &a, &[]));
        let jb = sc.spawn(|| archive_once(&data, &b, &["--compress", "zstd"]));
        (ja.join().unwrap(), jb.join().unwrap())
    });
    assert!(out_a.status.success(), "{}", text(&out_a));
    assert!(out_b.status.success(), "{}", text(&out_b));
    assert!(
        [&out_a, &out_b]
            .iter()
            .any(|o| text(o).contains("another archive of this data directory is registered too")),
        "{}\n{}",
        text(&out_a),
        text(&out_b)
    );
    let b_end = all_end(&data);
    // The first archive goes ahead alone.
    seal_one_more(&data, "x");
    seal_one_more(&data, "y");
    let out = archive_once(&data, &a, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let consumers: Vec<(String, String, u64)> = std::fs::read_dir(data.join("state/consumers"))
        .unwrap()
        .map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["address"].as_str().unwrap().to_string(),
                v["position"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(consumers.len(), 2, "{consumers:?}");
    let of = |arc: &Path| {
        consumers
            .iter()
            .find(|c| Path::new(&c.1) == arc)
            .unwrap_or_else(|| panic!("no consumer for {}: {consumers:?}", arc.display()))
            .clone()
    };
    let mut ids = [of(&a).0, of(&b).0];
    ids.sort();
    assert!(
        ids[0] == "archiver" && ids[1].starts_with("archiver-"),
        "{consumers:?}"
    );
    assert_eq!((of(&a).2, of(&b).2), (all_end(&data), b_end));
    let all = records(&data);
    // Retention keeps what the second archive has not taken, and says who holds it.
    let end = all_end(&data).to_string();
    let out = walship(&["checkpoint", p(&data), "--lsn", &end]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&of(&b).0), "{}", text(&out));
    assert_eq!(sealed_names(&data).len(), 2, "{:?}", sealed_names(&data));
    let out = archive_once(&data, &b, &["--compress", "zstd"]);
    assert!(out.status.success(), "{}", text(&out));
    // Each archive verifies and restores every record.
    for (tag, arc) in [("a", &a), ("b", &b)] {
        let v = walship(&["verify", p(arc)]);
        assert!(v.status.success(), "{tag}: {}", text(&v));
        let dest = t.path().join(format!("restored-{tag}"));
        let out = walship(&["restore", p(arc), p(&dest)]);
        assert!(out.status.success(), "{tag}: {}", text(&out));
        assert_eq!(records(&dest), all, "{tag}");
    }
    // Both past everything: only the newest segment stays.
    let out = walship(&["checkpoint", p(&data), "--lsn", &end]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sealed_names(&data).len(), 1);
}

#[test]
fn a_zstd_level_without_compression_is_refused_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 1, 32);
    let arc = t.path().join("arc");
    for extra in [
        &["--zstd-level", "9"][..],
        &["--compress", "none", "--zstd-level", "1"],
    ] {
        let out = archive_once(&data, &arc, extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", text(&out));
        assert!(text(&out).contains("--zstd-level"), "{}", text(&out));
        assert!(!arc.exists(), "{extra:?}: the archive was created");
        assert!(!data.join("state/consumers/archiver.json").exists());
    }
    let out = archive_once(&data, &arc, &["--compress", "zstd", "--zstd-level", "9"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_relative_target_is_recorded_absolute_and_found_from_any_directory() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 3, 30);
    let work = t.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = walship_in(
        &work,
        &["archive", p(&data), "--to", "../arc", "--once"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let arc = t.path().join("arc");
    assert_eq!(
        registry(&data)["address"].as_str(),
        Some(p(&arc)),
        "the archive location must be stored absolute"
    );
    // Lost, then found missing from another working directory: retention keeps everything.
    std::fs::remove_dir_all(&arc).unwrap();
    seal_one_more(&data, "one more");
    let before = sealed_names(&data);
    let end = all_end(&data).to_string();
    let out = walship_in(&data, &["checkpoint", ".", "--lsn", &end], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("000000010000000000000000.wal is not in the archive")
            && text(&out).contains(p(&arc)),
        "{}",
        text(&out)
    );
    assert_eq!(
        sealed_names(&data),
        before,
        "checkpoint removed the only copies"
    );
    // Another spelling of the same directory, from elsewhere: the same archive, filled again.
    let out = walship_in(
        t.path(),
        &["archive", "data", "--to", "./work/../arc", "--once"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_archive_complete(t.path(), &data, &arc, "relative");
}

/// An archive at the archiver's recorded location that belongs to another system (this
/// directory's archive lost, another system's made there since) holds none of this directory's
/// segments, even under the same names with the same sizes: retention keeps them and says why.
#[test]
fn retention_trusts_no_other_systems_archive_at_the_archivers_location() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    for d in [&a, &b] {
        let out = walship(&["init", p(d), "--segment-size", "64KiB"]);
        assert!(out.status.success(), "{}", text(&out));
        // The same records in both: segments of the same names and sizes.
        let wal = Wal::open(d, WalOptions::default()).unwrap();
        for i in 0..100u32 {
            wal.append(&Entry::new(EntryType::Insert, None, &vec![i as u8; 2000]))
                .unwrap();
        }
        wal.seal().unwrap();
    }
    let arc = t.path().join("arc");
    assert!(archive_once(&a, &arc, &[]).status.success());
    std::fs::remove_dir_all(&arc).unwrap();
    assert!(archive_once(&b, &arc, &[]).status.success());
    let kept = sealed_names(&a);
    assert!(kept.len() > 2, "{kept:?}");
    let out = walship(&["checkpoint", p(&a), "--lsn", &all_end(&a).to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("it is the archive of system")
            && text(&out).contains("held by")
            && text(&out).contains("missing_from_archive"),
        "{}",
        text(&out)
    );
    assert_eq!(sealed_names(&a), kept, "retention removed a segment");
}

#[test]
fn a_lost_segment_wal_no_longer_holds_fails_loudly_and_retention_keeps_the_rest() {
    type Lose = fn(&Path);
    let cases: [(&str, Lose, &str); 4] = [
        (
            "start",
            |arc| std::fs::remove_file(object_of(arc, 0)).unwrap(),
            "000000010000000000000000.wal",
        ),
        (
            "middle",
            |arc| std::fs::remove_file(object_of(arc, 1)).unwrap(),
            "000000010000000000000001.wal",
        ),
        (
            "whole",
            |arc| std::fs::remove_dir_all(arc).unwrap(),
            "no longer an archive",
        ),
        (
            "all-segments",
            |arc| {
                for no in 0..5 {
                    std::fs::remove_file(object_of(arc, no)).unwrap();
                }
            },
            "000000010000000000000000.wal",
        ),
    ];
    for (seed, (tag, lose, says)) in cases.into_iter().enumerate() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        make_store(&data, 5, 40 + seed as u64);
        let arc = t.path().join("arc");
        assert!(archive_once(&data, &arc, &[]).status.success(), "{tag}");
        // The application's checkpoint lets the archived segments go from wal/.
        let end = all_end(&data).to_string();
        let out = walship(&["checkpoint", p(&data), "--lsn", &end]);
        assert!(out.status.success(), "{tag}: {}", text(&out));
        assert_eq!(sealed_names(&data).len(), 1, "{tag}");
        lose(&arc);
        seal_one_more(&data, tag);
        let kept = sealed_names(&data);
        for mode in ["--once", "watch"] {
            let out = if mode == "--once" {
                archive_once(&data, &arc, &[])
            } else {
                walship(&["archive", p(&data), "--to", p(&arc), "--rescan-secs", "1"])
            };
            assert_eq!(out.status.code(), Some(1), "{tag} {mode}: {}", text(&out));
            assert!(text(&out).contains(says), "{tag} {mode}: {}", text(&out));
            assert!(
                text(&out).contains("cannot be completed")
                    || text(&out).contains("cannot be rebuilt"),
                "{tag} {mode}: {}",
                text(&out)
            );
        }
        // Nothing it could still push is let go by retention.
        let pos = registry(&data)["position"].as_u64().unwrap();
        assert!(
            pos <= 4 * SEG,
            "{tag}: position {pos} still covers the lost segments"
        );
        let out = walship(&["checkpoint", p(&data), "--lsn", &all_end(&data).to_string()]);
        assert!(
            out.status.success() || out.status.code() == Some(1),
            "{tag}: {}",
            text(&out)
        );
        assert_eq!(
            sealed_names(&data),
            kept,
            "{tag}: retention removed a segment"
        );
        if matches!(tag, "start" | "middle") {
            let v = walship(&["verify", p(&arc)]);
            assert_eq!(v.status.code(), Some(1), "{tag}: {}", text(&v));
            assert!(text(&v).contains(says), "{tag}: {}", text(&v));
        }
    }
}

#[test]
fn verify_and_restore_report_a_missing_first_segment() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 4, 50);
    for (tag, lose) in [
        ("first", vec![0u64]),
        ("first-two", vec![0, 1]),
        ("gap", vec![2]),
    ] {
        let arc = t.path().join(format!("arc-{tag}"));
        assert!(archive_once(&data, &arc, &["--compress", "zstd"])
            .status
            .success());
        for no in &lose {
            std::fs::remove_file(object_of(&arc, *no)).unwrap();
        }
        let missing = format!("{:08X}{:016X}.wal", 1, lose[0]);
        let v = walship(&["verify", p(&arc)]);
        assert_eq!(v.status.code(), Some(1), "{tag}: {}", text(&v));
        assert!(
            text(&v).contains(&format!("segment {missing} is missing")),
            "{tag}: {}",
            text(&v)
        );
        assert!(text(&v).contains("DAMAGED"), "{tag}: {}", text(&v));
        let dest = t.path().join(format!("dest-{tag}"));
        let out = walship(&["restore", p(&arc), p(&dest)]);
        assert_eq!(out.status.code(), Some(1), "{tag}: {}", text(&out));
        assert!(text(&out).contains(&missing), "{tag}: {}", text(&out));
        assert!(!dest.exists(), "{tag}: restore wrote something");
    }
    // Its identity file lost, a compressed archive is still checked as an archive: damage.
    let arc = t.path().join("arc-no-identity");
    assert!(archive_once(&data, &arc, &["--compress", "zstd"])
        .status
        .success());
    std::fs::remove_file(arc.join("IDENTITY")).unwrap();
    let v = walship(&["verify", p(&arc)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains("error: IDENTITY: missing"),
        "{}",
        text(&v)
    );
}

#[test]
fn a_version_1_archive_is_still_read_and_filled() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 3, 60);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &[]).status.success());
    // Rewrite the identity as a version-1 archive has it (no first segment).
    let v2 =
        walship::archive::ArchiveIdentity::decode(&std::fs::read(arc.join("IDENTITY")).unwrap())
            .unwrap();
    let v1 = walship::archive::ArchiveIdentity {
        first_segment: None,
        ..v2
    }
    .encode();
    assert!(String::from_utf8_lossy(&v1).starts_with("walship-archive 1\n"));
    std::fs::write(arc.join("IDENTITY"), &v1).unwrap();
    seal_one_more(&data, "v1");
    let out = archive_once(&data, &arc, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(arc.join("IDENTITY")).unwrap(), v1);
    assert_archive_complete(t.path(), &data, &arc, "v1");
}

/// An object the archiver finds already in place (identical bytes, or the other compression)
/// counts as archived only after the archive directory is synced: with that sync failing, the
/// run fails and records nothing.
#[cfg(feature = "failpoints")]
#[test]
fn an_object_found_in_the_archive_counts_only_once_it_is_synced() {
    let fail_sync = [("FAILPOINTS", "archive::dir_fsync=return(EIO)")];
    for (first, again) in [("none", "none"), ("zstd", "none"), ("none", "zstd")] {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        make_store(&data, 3, 70);
        let arc = t.path().join("arc");
        assert!(archive_once(&data, &arc, &["--compress", first])
            .status
            .success());
        // The progress is forgotten: every segment is found in the archive, not written.
        std::fs::remove_file(data.join("state/consumers/archiver.json")).unwrap();
        let out = walship_in(
            t.path(),
            &[
                "archive",
                p(&data),
                "--to",
                p(&arc),
                "--once",
                "--compress",
                again,
            ],
            &fail_sync,
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{first}/{again}: {}",
            text(&out)
        );
        assert!(text(&out).contains("fsync directory"), "{}", text(&out));
        assert_eq!(
            registry(&data)["position"].as_u64(),
            Some(0),
            "{first}/{again}"
        );
        let out = archive_once(&data, &arc, &["--compress", again]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(registry(&data)["position"].as_u64(), Some(all_end(&data)));
    }

    // A push killed between naming the object and syncing the directory, then rerun.
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 3, 71);
    let arc = t.path().join("arc");
    // The identity's sync passes; the first segment's fails after its name exists.
    let out = walship_in(
        t.path(),
        &["archive", p(&data), "--to", p(&arc), "--once"],
        &[("FAILPOINTS", "archive::dir_fsync=1*off->return(EIO)")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(arc.join("000000010000000000000000.wal").exists());
    assert_eq!(registry(&data)["position"].as_u64(), Some(0));
    let out = walship_in(
        t.path(),
        &["archive", p(&data), "--to", p(&arc), "--once"],
        &fail_sync,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(registry(&data)["position"].as_u64(), Some(0));
    let out = archive_once(&data, &arc, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_archive_complete(t.path(), &data, &arc, "rerun");
}

/// A zstd frame of `n` zero bytes; `declare` writes the size into the frame header.
fn zeros_frame(n: u64, declare: bool) -> Vec<u8> {
    use std::io::Write;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    if declare {
        enc.set_pledged_src_size(Some(n)).unwrap();
    }
    let chunk = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        enc.write_all(&chunk[..k]).unwrap();
        left -= k as u64;
    }
    enc.finish().unwrap()
}

/// Peak resident memory of the largest child process waited for so far, in bytes.
fn children_max_rss() -> u64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    u.ru_maxrss as u64 * 1024
}

#[test]
fn an_object_that_inflates_past_a_segment_is_damage_and_never_allocated() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 3, 80);
    let bomb_declared = zeros_frame(1 << 30, true);
    let bomb_streamed = zeros_frame(1 << 30, false);
    let just_over = zeros_frame(SEG + 1, false);
    assert!(bomb_streamed.len() < 200 << 10, "{}", bomb_streamed.len());
    for (tag, bomb) in [
        ("declared", &bomb_declared),
        ("streamed", &bomb_streamed),
        ("one-byte-over", &just_over),
    ] {
        let arc = t.path().join(format!("arc-{tag}"));
        assert!(archive_once(&data, &arc, &["--compress", "zstd"])
            .status
            .success());
        let victim = "000000010000000000000001.wal.zst";
        std::fs::write(arc.join(victim), bomb).unwrap();
        let v = walship(&["verify", p(&arc)]);
        assert_eq!(v.status.code(), Some(1), "{tag}: {}", text(&v));
        assert!(
            text(&v).contains(victim) && text(&v).contains("decompresses to more than a segment"),
            "{tag}: {}",
            text(&v)
        );
        let dest = t.path().join(format!("dest-{tag}"));
        let out = walship(&["restore", p(&arc), p(&dest)]);
        assert_eq!(out.status.code(), Some(1), "{tag}: {}", text(&out));
        assert!(text(&out).contains(victim), "{tag}: {}", text(&out));
        // The archiver reads it back to compare: different content, refused, nothing changed.
        // (Its registration gone, it pushes everything again; each archive has its own.)
        for e in std::fs::read_dir(data.join("state/consumers")).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let out = archive_once(&data, &arc, &["--compress", "zstd"]);
        assert_eq!(out.status.code(), Some(1), "{tag}: {}", text(&out));
        assert_eq!(std::fs::read(arc.join(victim)).unwrap(), *bomb);
    }
    let rss = children_max_rss();
    assert!(rss < 512 << 20, "a child process used {rss} bytes");
    // An object larger than any segment's object is refused before it is read.
    let arc = t.path().join("arc-declared");
    let big = "000000010000000000000000.wal.zst";
    std::fs::write(arc.join(big), vec![7u8; 3 * SEG as usize]).unwrap();
    let v = walship(&["verify", p(&arc)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(
        text(&v).contains(big) && text(&v).contains("at most"),
        "{}",
        text(&v)
    );
}

/// Lines of a child's stderr, collected as they come.
fn collect_lines(
    r: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            l.lock().unwrap().push(line);
        }
    });
    lines
}

#[test]
fn a_failing_archive_in_watch_mode_backs_off_logs_a_count_and_recovers() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 2, 90);
    let arc = t.path().join("arc");
    let mut child = Command::new(bin())
        .args(["archive", p(&data), "--to", p(&arc), "--rescan-secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = collect_lines(child.stderr.take().unwrap());
    let newest = sealed_names(&data).pop().unwrap();
    wait_until("the first pass", || arc.join(&newest).exists());
    // The backup volume goes away: its path is now a plain file. A writer keeps sealing, and
    // reading wal/ keeps notifying the archiver, for three seconds.
    std::fs::remove_dir_all(&arc).unwrap();
    std::fs::write(&arc, b"not a directory").unwrap();
    let started = Instant::now();
    let mut sealed = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        sealed.push(seal_one_more(&data, "during the outage"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let failures: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("archive pass failed"))
        .cloned()
        .collect();
    assert!(!failures.is_empty(), "the failure was not logged");
    assert!(
        failures.len() <= 8,
        "{} failure lines in 3 seconds:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
    assert!(
        failures.iter().any(|l| l.contains("failed 2 times since")),
        "no count of repeated failures:\n{}",
        failures.join("\n")
    );
    // The volume is back (empty): the archiver writes the archive again, whole.
    std::fs::remove_file(&arc).unwrap();
    std::fs::create_dir(&arc).unwrap();
    let last = sealed.last().unwrap().clone();
    wait_until("the archive to be filled again", || {
        arc.join(&last).exists()
    });
    wait_until("the recovery log line", || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("succeeded again after"))
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{:?}", status);
    assert_archive_complete(t.path(), &data, &arc, "backoff");
}

/// Flips one bit of a file at `offset` (from the end when negative).
fn flip(path: &Path, offset: i64) {
    let mut b = std::fs::read(path).unwrap();
    let i = if offset < 0 {
        (b.len() as i64 + offset) as usize
    } else {
        offset as usize
    };
    b[i] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_damaged_local_segment_is_reported_where_and_never_archived() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 4] = [
        ("record", |p| flip(p, 100), "offset 80"),
        ("seal", |p| flip(p, -20), "offset"),
        ("header", |p| flip(p, 20), "offset 0"),
        (
            "truncated",
            |p| {
                let len = std::fs::metadata(p).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(len - 10)
                    .unwrap();
            },
            "offset",
        ),
    ];
    for (seed, (tag, damage, at)) in cases.into_iter().enumerate() {
        for compress in ["none", "zstd"] {
            let t = tempfile::tempdir().unwrap();
            let data = t.path().join("data");
            make_store(&data, 4, 100 + seed as u64);
            let victim = "000000010000000000000001.wal";
            damage(&data.join("wal").join(victim));
            let arc = t.path().join("arc");
            let out = archive_once(&data, &arc, &["--compress", compress]);
            assert_eq!(out.status.code(), Some(1), "{tag}: {}", text(&out));
            let msg = text(&out);
            assert!(
                msg.contains(victim)
                    && msg.contains(at)
                    && msg.contains("(LSN ")
                    && msg.contains("were not archived"),
                "{tag}: {msg}"
            );
            // Only what precedes it is in the archive, and the position says so.
            let held: Vec<String> = names(&arc)
                .into_iter()
                .filter(|n| n.contains(".wal"))
                .collect();
            assert_eq!(held.len(), 1, "{tag}: {held:?}");
            assert!(
                held[0].starts_with("000000010000000000000000.wal"),
                "{tag}: {held:?}"
            );
            let seg0_end = std::fs::metadata(data.join("wal/000000010000000000000000.wal"))
                .unwrap()
                .len()
                - 64;
            assert_eq!(
                registry(&data)["position"].as_u64(),
                Some(seg0_end),
                "{tag}"
            );
            // The primary shows it where operators look, as damage found by the archiver.
            let st = walship(&["status", p(&data), "--json"]);
            let st: serde_json::Value =
                serde_json::from_str(text(&st).lines().next().unwrap_or("")).unwrap();
            let entries = st["damage"].as_array().cloned().unwrap_or_default();
            assert!(
                entries
                    .iter()
                    .any(|e| e["component"] == "archiver" && e["file"] == victim),
                "{tag}: {st}"
            );
        }
    }
}

#[test]
fn a_watching_archiver_refills_an_archive_removed_under_it_or_stops_when_it_cannot() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 3, 120);
    let arc = t.path().join("arc");
    let mut child = Command::new(bin())
        .args(["archive", p(&data), "--to", p(&arc), "--rescan-secs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = collect_lines(child.stderr.take().unwrap());
    let newest = sealed_names(&data).pop().unwrap();
    wait_until("the first pass", || arc.join(&newest).exists());
    // Removed while it runs, wal/ intact: the archive comes back whole.
    std::fs::remove_dir_all(&arc).unwrap();
    let name = seal_one_more(&data, "after the removal");
    wait_until("the archive to be filled again", || {
        arc.join(&name).exists() && check_final_names(&arc, &data) == sealed_names(&data).len()
    });
    assert!(walship(&["verify", p(&arc)]).status.success());
    // wal/ trimmed by the checkpoint, then the archive removed again: it cannot be completed,
    // so the archiver stops with exit 1 and retention keeps what is left.
    let end = all_end(&data).to_string();
    let out = walship(&["checkpoint", p(&data), "--lsn", &end]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_dir_all(&arc).unwrap();
    let name = seal_one_more(&data, "after the second removal");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the archiver kept running");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    let log = lines.lock().unwrap().join("\n");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("cannot be completed"), "{log}");
    assert!(!arc.join(&name).exists());
    let kept = sealed_names(&data);
    let out = walship(&["checkpoint", p(&data), "--lsn", &all_end(&data).to_string()]);
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}",
        text(&out)
    );
    assert_eq!(sealed_names(&data), kept);
}

/// Counts the reads of each object of a directory archive.
#[derive(Clone)]
struct CountingStore {
    inner: walship::archive::LocalDirStore,
    gets: std::sync::Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
}

impl walship::archive::ArchiveStore for CountingStore {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(
        &self,
        name: &str,
        data: std::sync::Arc<Vec<u8>>,
    ) -> impl std::future::Future<Output = walship::Result<walship::archive::PutOutcome>> + Send
    {
        self.inner.put(name, data)
    }
    fn get(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = walship::Result<Option<Vec<u8>>>> + Send {
        *self
            .gets
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default() += 1;
        self.inner.get(name)
    }
    fn list(
        &self,
    ) -> impl std::future::Future<Output = walship::Result<Vec<walship::archive::ObjectInfo>>> + Send
    {
        self.inner.list()
    }
    fn exists(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = walship::Result<bool>> + Send {
        self.inner.exists(name)
    }
    fn sync(&self, name: &str) -> impl std::future::Future<Output = walship::Result<()>> + Send {
        self.inner.sync(name)
    }
    fn delete(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = walship::Result<bool>> + Send {
        self.inner.delete(name)
    }
    fn replace(
        &self,
        name: &str,
        data: std::sync::Arc<Vec<u8>>,
    ) -> impl std::future::Future<Output = walship::Result<()>> + Send {
        self.inner.replace(name, data)
    }
}

#[test]
fn restore_fetches_each_object_once_and_leaves_no_staging_behind() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 6, 12);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &["--compress", "zstd"])
        .status
        .success());
    let store = CountingStore {
        inner: walship::archive::LocalDirStore::open(&arc).unwrap(),
        gets: Default::default(),
    };
    let dest = t.path().join("restored");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let report = rt
        .block_on(walship::archive::restore(
            std::sync::Arc::new(store.clone()),
            &dest,
            walship::archive::RestoreOptions::default(),
        ))
        .unwrap();
    assert_eq!(records(&dest), all);
    assert_eq!(report.sealed_segments as usize, sealed_names(&data).len());
    let gets = store.gets.lock().unwrap().clone();
    assert_eq!(gets.len(), sealed_names(&data).len() + 1, "{gets:?}");
    assert!(
        gets.values().all(|&n| n == 1),
        "an object was fetched twice: {gets:?}"
    );
    // A restore that stops at a cut in its first segment, with later segments being fetched
    // and staged, leaves no staging behind either.
    let early = t.path().join("early");
    let report = rt
        .block_on(walship::archive::restore(
            std::sync::Arc::new(store.clone()),
            &early,
            walship::archive::RestoreOptions {
                target: walship::archive::RestoreTarget::Lsn(Lsn(1)),
                fetch_ahead: 4,
                ..Default::default()
            },
        ))
        .unwrap();
    assert_eq!((report.sealed_segments, report.records), (0, 0));
    assert!(report.open_segment.is_some());
    // The staging directory inside the destination is gone.
    let left: Vec<_> = std::fs::read_dir(&early)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".walship-restore-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A restore killed (SIGKILL) after some segments were staged (pass one) or after some were
/// moved into the destination (pass two) leaves nothing that opens as a data directory, and a
/// rerun (with `--force` once the destination holds something) restores everything.
#[cfg(feature = "failpoints")]
#[test]
fn a_restore_killed_midway_leaves_no_data_directory_and_a_rerun_completes() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 6, 81);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &[]).status.success());
    let wal_files = |d: &Path| -> usize {
        std::fs::read_dir(d).map_or(0, |r| {
            r.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            })
            .count()
        })
    };
    for (i, point) in ["restore::staged", "restore::placed"]
        .into_iter()
        .enumerate()
    {
        let parent = t.path().join(format!("run-{i}"));
        let dest = parent.join("dest");
        let staging = |parent: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(parent).map_or(Vec::new(), |r| {
                r.map(|e| e.unwrap().path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with(".walship-restore-"))
                    })
                    .collect()
            })
        };
        // Two segments pass the point; the third holds there until the kill.
        let fp = format!("{point}=2*off->pause");
        let mut child = common::spawn_piped(
            &["restore", p(&arc), p(&dest), "--fetch-ahead", "1"],
            &[("FAILPOINTS", fp.as_str())],
            &t.path().join(format!("restore-{i}.log")),
        );
        wait_until(&format!("{point} reached three times"), || {
            let n = if i == 0 {
                staging(&dest).iter().map(|s| wal_files(s)).sum()
            } else {
                wal_files(&dest.join("wal"))
            };
            n >= 3
        });
        assert!(child.running(), "restore ended at {point}: {}", child.log());
        child.kill();
        if i == 0 {
            let held: Vec<_> = std::fs::read_dir(&dest)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| !n.to_string_lossy().starts_with(".walship-restore-"))
                .collect();
            assert!(
                held.is_empty(),
                "pass one wrote into the destination: {held:?}"
            );
            // A killed restore's staging is no data: a rerun needs no --force.
            let out = walship(&["restore", p(&arc), p(&dest)]);
            assert!(out.status.success(), "{point}: {}", text(&out));
            assert!(staging(&dest).is_empty(), "{:?}", staging(&dest));
        } else {
            assert!(!dest.join("control").exists());
            assert!(
                Wal::open(&dest, WalOptions::default()).is_err(),
                "a killed restore left a directory that opens"
            );
            // It is not empty now: the rerun needs --force, which replaces it.
            let out = walship(&["restore", p(&arc), p(&dest)]);
            assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        }
        for s in staging(&dest) {
            assert!(!s.join("control").exists());
        }
        let out = walship(&["restore", p(&arc), p(&dest), "--force"]);
        assert!(out.status.success(), "{point}: {}", text(&out));
        assert_eq!(records(&dest), all, "{point}");
        for name in sealed_names(&data) {
            assert_eq!(
                std::fs::read(data.join("wal").join(&name)).unwrap(),
                std::fs::read(dest.join("wal").join(&name)).unwrap(),
                "{point}: {name} differs after the rerun"
            );
        }
    }
}

#[test]
fn an_archive_started_after_checkpoints_begins_at_the_oldest_segment_holding_records() {
    // Checkpoints keep released segments as recycled files under their old numbers: those
    // hold no records of the log, and an archive that began at them could never be complete.
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 6, 7);
    let sealed = sealed_names(&data);
    let keep_from = &sealed[3];
    let keep_lsn = walship::format::SegmentName::parse(keep_from)
        .unwrap()
        .segment_no
        .start_lsn_saturating(SEG)
        .0
        .to_string();
    let out = walship(&["checkpoint", p(&data), "--lsn", &keep_lsn]);
    assert!(out.status.success(), "{}", text(&out));
    let recycled: Vec<String> = names(&data.join("wal"))
        .into_iter()
        .filter(|n| n.ends_with(".wal.prep") && n.as_str() < keep_from.as_str())
        .collect();
    assert!(!recycled.is_empty(), "the checkpoint recycled segments");
    let want = records(&data);

    let arc = t.path().join("arc");
    let out = archive_once(&data, &arc, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let begin = sealed_names(&data)[0].clone();
    let begin_no = walship::format::SegmentName::parse(&begin)
        .unwrap()
        .segment_no
        .0;
    let id = std::fs::read_to_string(arc.join("IDENTITY")).unwrap();
    assert!(
        id.contains(&format!("\nfirst_segment {begin_no}\n")),
        "begins at {begin}: {id}"
    );
    let v = walship(&["verify", p(&arc)]);
    assert!(v.status.success(), "{}", text(&v));
    let restored = t.path().join("restored");
    let out = walship(&["restore", p(&arc), p(&restored)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(records(&restored), want);
    // And a later pass still finds it complete.
    let out = archive_once(&data, &arc, &[]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_data_directory_given_as_the_archive_is_refused_and_left_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 2, 3);
    let other = t.path().join("other");
    make_store(&other, 1, 4);
    for target in [&other, &data] {
        let before = common::files_under(target);
        let out = archive_once(&data, target, &[]);
        assert_eq!(common::code(&out), 1, "{}", text(&out));
        assert!(
            text(&out)
                .contains("holds a `control` file: it is a walship data directory, not an archive"),
            "{}",
            text(&out)
        );
        assert!(
            common::files_under(target) == before,
            "nothing written to {}",
            target.display()
        );
        let v = walship(&["verify", p(target)]);
        assert!(v.status.success(), "{}", text(&v));
    }
}

/// An archive inside a data directory goes with it when the directory is replaced or removed:
/// the archiver refuses such a target, and restore refuses a destination holding its archive
/// (or inside it), naming both paths, with nothing changed.
#[test]
fn an_archive_inside_a_data_directory_is_refused_and_restore_never_writes_over_its_archive() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("dw");
    let all = make_store(&data, 2, 5);
    let other = t.path().join("other");
    make_store(&other, 1, 6);
    let targets = [
        (&data, data.join("state")),
        (&data, data.join("state/arc")),
        (&data, data.join("wal/x/y")),
        (&other, other.join("state")),
    ];
    for (dir, target) in &targets {
        let (was, other_was) = (common::files_under(&data), common::files_under(&other));
        let out = archive_once(&data, target, &[]);
        let said = text(&out);
        assert_eq!(common::code(&out), 1, "{said}");
        assert!(
            said.contains(&format!(
                "{} is inside the walship data directory {}",
                target.display(),
                dir.display()
            )),
            "{said}"
        );
        assert!(common::files_under(&data) == was, "{said}: dw changed");
        assert!(
            common::files_under(&other) == other_was,
            "{said}: other changed"
        );
    }
    assert!(!data.join("state/arc").exists() && !data.join("wal/x").exists());

    // An archive that ended up inside a data directory anyway (moved there by hand).
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &[]).status.success());
    let inside = data.join("state/arc");
    common::copy_tree(&arc, &inside);
    let was = common::files_under(&data);
    let out = walship(&["restore", p(&inside), p(&data), "--force"]);
    let said = text(&out);
    assert_eq!(common::code(&out), 2, "{said}");
    assert!(
        said.contains(&format!(
            "cannot restore the archive {} into {}: the archive is inside the destination",
            inside.display(),
            data.display()
        )),
        "{said}"
    );
    assert!(
        common::files_under(&data) == was,
        "restore changed {}",
        data.display()
    );
    let v = walship(&["verify", p(&inside)]);
    assert!(v.status.success(), "{}", text(&v));
    // The archive itself, or a directory inside it, is no destination either.
    let was = common::files_under(&arc);
    for dest in [arc.clone(), arc.join("restored")] {
        let out = walship(&["restore", p(&arc), p(&dest), "--force"]);
        let said = text(&out);
        assert_eq!(common::code(&out), 2, "{said}");
        assert!(
            said.contains(&format!("cannot restore the archive {}", arc.display())),
            "{said}"
        );
        assert!(
            common::files_under(&arc) == was,
            "{said}: the archive changed"
        );
    }
    // Apart from the archive, restore works as ever.
    let dest = t.path().join("restored");
    let out = walship(&["restore", p(&inside), p(&dest)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(records(&dest), all);
}

/// Archivers with different `--compress` racing on one archive (two of them compressing):
/// each segment ends up under one name only, every racer succeeds, and the archive restores
/// every record.
#[test]
fn archivers_racing_with_different_compression_store_each_segment_once() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 40, 12);
    let total = sealed_names(&data).len();
    for round in 0..3 {
        let arc = t.path().join(format!("arc{round}"));
        let spawn = |extra: &[&str]| {
            let mut args = vec!["archive", p(&data), "--to", p(&arc), "--once"];
            args.extend_from_slice(extra);
            Command::new(bin())
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let racers = [
            spawn(&["--compress", "zstd"]),
            spawn(&["--parallel", "4"]),
            spawn(&["--compress", "zstd", "--parallel", "3"]),
        ];
        for child in racers {
            let out = child.wait_with_output().unwrap();
            // Each racer resolves the other's copy under the second name, whoever wins.
            assert_eq!(common::code(&out), 0, "round {round}: {}", text(&out));
        }
        // The next run accepts the archive.
        let out = archive_once(&data, &arc, &[]);
        assert!(out.status.success(), "round {round}: {}", text(&out));
        let objects = names(&arc);
        for name in sealed_names(&data) {
            let zst = format!("{name}.zst");
            assert!(
                objects.contains(&name) != objects.contains(&zst),
                "round {round}: {name} must be stored under exactly one name: {objects:?}"
            );
        }
        assert_eq!(check_final_names(&arc, &data), total, "round {round}");
        assert_archive_complete(t.path(), &data, &arc, &format!("race{round}"));
    }
}

/// An archive holding one segment under both names (an archiver stopped before it settled
/// them): the next archiver run keeps the `.wal` object and removes the `.wal.zst` one when
/// they hold the same bytes; when they differ it is damage a restore refuses, the archiver
/// reports it naming both objects and changes nothing, and retention does not count the
/// segment as archived.
#[test]
fn a_segment_stored_under_both_names_is_settled_when_the_same_and_damage_when_not() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 4, 13);
    let name = "000000010000000000000001.wal";
    for compress in ["zstd", "none"] {
        let arc = t.path().join(format!("same-{compress}"));
        assert!(archive_once(&data, &arc, &["--compress", "zstd"])
            .status
            .success());
        std::fs::copy(data.join("wal").join(name), arc.join(name)).unwrap();
        let out = archive_once(&data, &arc, &["--compress", compress]);
        assert_eq!(common::code(&out), 0, "{}", text(&out));
        assert!(
            text(&out).contains("under both names with the same content"),
            "{}",
            text(&out)
        );
        assert!(arc.join(name).exists() && !arc.join(format!("{name}.zst")).exists());
        assert_archive_complete(t.path(), &data, &arc, compress);
    }

    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &["--compress", "zstd"])
        .status
        .success());
    // Another segment's bytes under this segment's name: they differ.
    let other = "000000010000000000000002.wal";
    std::fs::copy(data.join("wal").join(other), arc.join(name)).unwrap();
    let before = common::files_under(&arc);
    let out = archive_once(&data, &arc, &[]);
    let said = text(&out);
    assert_eq!(common::code(&out), 1, "{said}");
    assert!(
        said.contains(&format!(
            "stored twice, as {name} and {name}.zst, and they do not hold the same bytes"
        )),
        "{said}"
    );
    assert!(common::files_under(&arc) == before, "the archive changed");
    let kept = sealed_names(&data);
    let out = walship(&["checkpoint", p(&data), "--lsn", &all_end(&data).to_string()]);
    let said = text(&out);
    assert_eq!(common::code(&out), 1, "{said}");
    assert!(
        said.contains(&format!("{name} is not in the archive")) && said.contains("stored twice"),
        "{said}"
    );
    let left = sealed_names(&data);
    assert!(left.contains(&name.to_string()), "{left:?}");
    assert_eq!(left, kept[1..], "only what comes before the duplicate goes");
}

/// Starting, an archiver removes what a killed upload left (a temporary file of a process that
/// is gone) and leaves alone another archiver's upload under way (of a process still running).
#[test]
fn an_archiver_removes_dead_uploads_temporaries_and_leaves_live_ones() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 2, 91);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &[]).status.success());
    let gone = {
        let mut c = Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    };
    let live = std::process::id();
    let dead_tmp = arc.join(format!(".000000010000000000000009.wal.{gone}.0badf00d.tmp"));
    let live_tmp = arc.join(format!(".00000001000000000000000A.wal.{live}.0badf00d.tmp"));
    std::fs::write(&dead_tmp, b"partial upload").unwrap();
    std::fs::write(&live_tmp, b"upload under way").unwrap();
    assert!(archive_once(&data, &arc, &[]).status.success());
    assert!(!dead_tmp.exists(), "a killed upload's temporary is removed");
    assert!(
        live_tmp.exists(),
        "a running upload's temporary is left alone"
    );
}

/// `dump` reads an archive as it reads the data directory it came from, whatever form its
/// objects are in (plain and compressed here), and names a damaged compressed object.
#[test]
fn dump_reads_an_archive_of_plain_and_compressed_objects_and_names_a_damaged_one() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 4, 29);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &[]).status.success());
    // Two objects gone: the next run pushes them again, compressed.
    for no in [2, 3] {
        std::fs::remove_file(arc.join(format!("00000001000000000000000{no}.wal"))).unwrap();
    }
    let out = archive_once(&data, &arc, &["--compress", "zstd"]);
    assert!(out.status.success(), "{}", text(&out));
    let zst = arc.join("000000010000000000000002.wal.zst");
    assert!(zst.is_file() && arc.join("000000010000000000000001.wal").is_file());
    let of_data = common::ok(&["dump", p(&data), "--json"]);
    assert!(of_data.lines().count() > 100);
    assert!(
        common::ok(&["dump", p(&arc), "--json"]) == of_data,
        "dump of the archive differs from dump of its data directory"
    );
    assert_eq!(
        common::ok(&["dump", p(&arc), "--start", "0/00020000", "--limit", "3"]),
        common::ok(&["dump", p(&data), "--start", "0/00020000", "--limit", "3"])
    );

    let mut bytes = std::fs::read(&zst).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&zst, bytes).unwrap();
    let out = walship(&["dump", p(&arc)]);
    assert_eq!(common::code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{}", zst.display())),
        "{}",
        text(&out)
    );
}

/// What a restore replaces, or writes into, is checked again once it holds the destination's
/// lock: a data directory made there while it read the archive (a second restore, an `init`)
/// is left as it is, with or without `--force` given for what was there before. `--force`
/// replaces only a walship data directory: other files named `wal/` and `state/` are kept.
#[test]
fn a_restore_writes_nothing_into_a_destination_changed_while_it_read_the_archive() {
    use walship::archive::{restore, LocalDirStore, RestoreOptions, RestorePhase};
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 3, 17);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &[]).status.success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (force, before) in [(false, false), (true, true)] {
        let dest = t.path().join(format!("dest-{force}"));
        if before {
            walship::DataDir::init(&dest, 65536).unwrap();
        }
        let d = dest.clone();
        let made = std::sync::Arc::new(std::sync::Mutex::new(None));
        let m = made.clone();
        let opts = RestoreOptions {
            force,
            progress: Some(std::sync::Arc::new(move |p| {
                let mut m = m.lock().unwrap();
                if p.phase == RestorePhase::Verify && m.is_none() {
                    // Another process (a second restore) makes its own data directory there
                    // meanwhile.
                    let other = d.with_extension("other");
                    let made = walship::DataDir::init(&other, 65536).unwrap();
                    for n in ["control", "wal", "state"] {
                        let _ = std::fs::remove_dir_all(d.join(n));
                        let _ = std::fs::remove_file(d.join(n));
                        std::fs::rename(other.join(n), d.join(n)).unwrap();
                    }
                    *m = Some(made.identity.system_id);
                }
            })),
            ..Default::default()
        };
        let store = std::sync::Arc::new(LocalDirStore::open(&arc).unwrap());
        let err = rt.block_on(restore(store, &dest, opts)).unwrap_err();
        assert!(
            err.to_string()
                .contains("changed while restore read the archive"),
            "{err}"
        );
        let theirs = walship::DataDir::new(&dest).read_control().unwrap();
        assert_eq!(Some(theirs.identity.system_id), *made.lock().unwrap());
        let files: Vec<_> = std::fs::read_dir(dest.join("wal")).unwrap().collect();
        assert!(files.is_empty(), "force {force}: {files:?}");
    }

    let other = t.path().join("other");
    std::fs::create_dir_all(other.join("wal")).unwrap();
    std::fs::create_dir_all(other.join("state")).unwrap();
    std::fs::write(other.join("wal/notes.txt"), "important").unwrap();
    std::fs::write(other.join("state/app.conf"), "cfg").unwrap();
    let out = walship(&["restore", p(&arc), p(&other), "--force"]);
    assert_eq!(common::code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("is not a walship data directory"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(other.join("wal/notes.txt")).unwrap(),
        "important"
    );
    assert_eq!(
        std::fs::read_to_string(other.join("state/app.conf")).unwrap(),
        "cfg"
    );
}

/// A restore into a file system's mount point (a new empty volume, the usual way a machine is
/// rebuilt) stages on that file system and completes. Needs root to mount; skipped otherwise.
#[test]
fn a_restore_into_a_mount_point_completes() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 3, 43);
    let arc = t.path().join("arc");
    assert!(archive_once(&data, &arc, &["--compress", "zstd"])
        .status
        .success());
    let Some(fs) = common::mount::or_skip(common::mount::Mount::tmpfs("8m")) else {
        return;
    };
    let out = walship(&["restore", p(&arc), p(fs.path())]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(records(fs.path()), all);
    let left: Vec<_> = std::fs::read_dir(fs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".walship-restore-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
