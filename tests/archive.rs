//! Archive and restore through the real `walship` binary: byte-identical round trips, exact
//! point-in-time cuts, refusals that leave the archive untouched, and SIGKILL mid-push.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod archive_support;
use archive_support::{archive_once, s, text, walship};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use walship::{Entry, EntryType, Lsn, Wal, WalOptions, WalReader};

const SEG: u64 = 64 * 1024;

/// Record fields a restore must give back exactly.
type Rec = (u64, u64, EntryType, Option<u64>, i64, u32, Vec<u8>);

fn records(path: &Path) -> Vec<Rec> {
    let mut r = WalReader::open(path, Lsn(0)).expect("open reader");
    let mut out = Vec::new();
    while let Some(x) = r.next_record().expect("read record") {
        out.push((
            x.lsn.0,
            x.end_lsn.0,
            x.entry_type,
            x.tx_id,
            x.timestamp_us,
            x.crc,
            x.payload,
        ));
    }
    out
}

/// A data directory with about `segments` sealed 64 KiB segments of mixed records: small
/// text, larger page-like payloads, random bytes. One record per append, so timestamps rise.
fn make_store(root: &Path, segments: u64, seed: u64) -> Vec<Rec> {
    let out = walship(&["init", s(root), "--segment-size", "64KiB"]);
    assert!(out.status.success(), "{}", text(&out));
    let wal = Wal::open(root, WalOptions::default()).expect("open wal");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut i = 0u64;
    while wal.write_lsn().0 < segments * SEG - SEG / 2 {
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
        wal.append(&Entry::new(t, (i % 3 == 0).then_some(i), &payload))
            .expect("append");
        // Appends take well under a microsecond: keep timestamps distinct, so that every
        // record boundary is a point in time a restore can stop at.
        std::thread::sleep(std::time::Duration::from_micros(2));
        i += 1;
    }
    wal.seal().expect("seal");
    wal.sync().expect("sync");
    drop(wal);
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
        assert!(
            text(&out).contains("the archiver is behind by more than the bound"),
            "{}",
            text(&out)
        );
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
        assert!(id.starts_with("walship-archive 1\nsystem_id "), "{id}");
        let v = walship(&["verify", s(&arc)]);
        assert!(v.status.success(), "{}", text(&v));

        let restored = t.path().join(format!("restored-{compress}"));
        let out = walship(&["restore", s(&arc), s(&restored)]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(records(&restored), want);
        for name in sealed_names(&data) {
            assert!(
                std::fs::read(data.join("wal").join(&name)).unwrap()
                    == std::fs::read(restored.join("wal").join(&name)).unwrap(),
                "{name} differs after restore"
            );
        }
        let v = walship(&["verify", s(&restored)]);
        assert!(v.status.success(), "{}", text(&v));
    }
}

fn restore_until(arc: &Path, dest: &Path, flag: &str, value: &str) -> Output {
    walship(&["restore", s(arc), s(dest), flag, value])
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
                .filter(|p| s(p).ends_with(".wal.open"))
                .collect();
            if cut_mid_segment {
                assert_eq!(open.len(), 1, "LSN {lsn}: expected an open segment");
                assert_eq!(std::fs::metadata(&open[0]).unwrap().len(), SEG);
            }
            let v = walship(&["verify", s(&dest)]);
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
    let v = walship(&["verify", s(&dest)]);
    assert!(v.status.success(), "{}", text(&v));
    // It serves as a normal store: it can be archived to an archive of its own.
    let arc2 = t.path().join("arc2");
    let out = archive_once(&dest, &arc2, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(walship(&["verify", s(&arc2)]).status.success());
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
    let out = walship(&["restore", s(&arc), s(&dest)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(missing), "{}", text(&out));
    assert!(!dest.exists(), "restore wrote something before failing");
    let v = walship(&["verify", s(&arc)]);
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
    let out = walship(&["restore", s(&arc), s(&dest), "--until-lsn", "0/00030000"]);
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
        let wal = Wal::open(&dest, WalOptions::default()).unwrap();
        wal.append(&Entry::new(EntryType::Delete, None, b"another history"))
            .unwrap();
        wal.seal().unwrap();
    }
    let before = snapshot(&arc);
    for compress in ["none", "zstd"] {
        let out = archive_once(&dest, &arc, &["--compress", compress]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("000000010000000000000002.wal with different content"),
            "{}",
            text(&out)
        );
        assert_eq!(snapshot(&arc), before);
    }
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_walship"))
            .args([
                "archive",
                s(&data),
                "--to",
                s(&arc),
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
    let v = walship(&["verify", s(&arc)]);
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
    let child = Command::new(env!("CARGO_BIN_EXE_walship"))
        .args([
            "archive",
            s(&data),
            "--to",
            s(&arc),
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
    let out = walship(&["restore", s(&arc), s(&dest)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(records(&dest).len(), all.len() / 2 + 1);
    // With --force the data directory is replaced.
    let out = walship(&["restore", s(&arc), s(&dest), "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(records(&dest), all);
    // A file that is not part of a data directory makes even --force refuse.
    std::fs::write(dest.join("notes.txt"), b"mine").unwrap();
    let out = walship(&["restore", s(&arc), s(&dest), "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("notes.txt"), "{}", text(&out));
    assert_eq!(records(&dest), all);
    // A running writer keeps its directory.
    std::fs::remove_file(dest.join("notes.txt")).unwrap();
    let wal = Wal::open(&dest, WalOptions::default()).unwrap();
    let out = walship(&["restore", s(&arc), s(&dest), "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("locked"), "{}", text(&out));
    drop(wal);
    assert_eq!(records(&dest), all);
}
