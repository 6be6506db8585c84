//! `walship archive-prune` on a directory archive: what a dry run shows and leaves, what is
//! removed and what is kept (the identity file always, with the archive's new beginning), a
//! pruning interrupted half-way, and an archive too old to say where it begins. The same rules
//! on an S3-compatible store are in archive_s3.rs.

use std::path::Path;

mod common;
use common::data::{record_fields as records, RecordFields as Rec};
use common::{archive_once, copy_tree, p, text, walship, SEG};
use walship::EntryType;

/// A data directory with about `segments` sealed 64 KiB segments of distinct-timestamped
/// records.
fn make_store(root: &Path, segments: u64) -> Vec<Rec> {
    common::init(root);
    common::append_timed(root, segments, |i| {
        let payload = format!("row {i} {}", "x".repeat((i % 700) as usize));
        (EntryType::Insert, Some(i), payload.into_bytes())
    });
    records(root)
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn seg_object(no: u64) -> String {
    format!("{:08X}{:016X}.wal", 1, no)
}

#[test]
fn a_directory_archive_is_pruned_to_the_kept_point_and_an_interrupted_pruning_finishes() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let arc = t.path().join("arc");
    let all = make_store(&data, 5);
    let out = archive_once(&data, &arc, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let before = files(&arc);
    let identity_before = std::fs::read(arc.join("IDENTITY")).unwrap();
    let seg_of = |r: &Rec| r.0 / SEG;
    let first2 = all.iter().position(|r| seg_of(r) == 2).unwrap();
    let keep = all[first2].1.to_string();

    let out = walship(&["archive-prune", p(&arc), "--keep-since", &keep, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("would remove {}", seg_object(0))));
    assert!(text(&out).contains(&format!("would remove {}", seg_object(1))));
    assert_eq!(files(&arc), before, "a dry run removes nothing");
    assert_eq!(
        std::fs::read(arc.join("IDENTITY")).unwrap(),
        identity_before
    );

    // A copy of the segments to put back, as a pruning stopped after its first step leaves
    // them.
    let old = t.path().join("old");
    copy_tree(&arc, &old);
    let out = walship(&["archive-prune", p(&arc), "--keep-since", &keep, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["first_segment_before"].as_u64(), Some(0), "{v}");
    assert_eq!(v["first_segment"].as_u64(), Some(2), "{v}");
    let mut want: Vec<String> = before
        .iter()
        .filter(|n| *n != &seg_object(0) && *n != &seg_object(1))
        .cloned()
        .collect();
    want.sort();
    assert_eq!(files(&arc), want);
    let id = String::from_utf8(std::fs::read(arc.join("IDENTITY")).unwrap()).unwrap();
    assert!(id.contains("\nfirst_segment 2\n"), "{id}");

    // Segments before the beginning, as an interrupted pruning leaves them: readers skip them,
    // verify notes them, and pruning again removes them.
    std::fs::copy(old.join(seg_object(1)), arc.join(seg_object(1))).unwrap();
    let out = walship(&["verify", p(&arc), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("left over from pruning"),
        "{}",
        text(&out)
    );
    let dest = t.path().join("restored");
    let out = walship(&["restore", p(&arc), p(&dest), "--until-lsn", &keep]);
    assert!(out.status.success(), "{}", text(&out));
    let k: u64 = keep.parse().unwrap();
    let kept: Vec<Rec> = all
        .iter()
        .filter(|r| seg_of(r) >= 2 && r.1 <= k)
        .cloned()
        .collect();
    assert_eq!(records(&dest), kept);
    let out = walship(&["archive-prune", p(&arc), "--keep-since", &keep, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["removed"], serde_json::json!([seg_object(1)]), "{v}");
    assert_eq!(files(&arc), want);

    // A point before the new beginning is outside the archive now.
    let out = walship(&[
        "archive-prune",
        p(&arc),
        "--keep-since",
        &all[0].1.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("before the archive's first record"),
        "{}",
        text(&out)
    );
    assert_eq!(files(&arc), want);
}

#[test]
fn an_archive_that_does_not_record_its_beginning_is_not_pruned() {
    let t = tempfile::tempdir().unwrap();
    let arc = t.path().join("v1");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/archive/v1"),
        &arc,
    );
    let out = walship(&["archive-prune", p(&arc), "--keep-since", "0/10000"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("layout version 1"), "{}", text(&out));
    let out = walship(&["archive-prune", p(t.path()), "--keep-since", "0/10000"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not an archive"), "{}", text(&out));
}

#[test]
fn a_restore_to_a_point_before_a_pruned_archive_begins_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let arc = t.path().join("arc");
    let all = make_store(&data, 4);
    let out = archive_once(&data, &arc, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let first2 = all.iter().position(|r| r.0 / SEG == 2).unwrap();
    let out = walship(&[
        "archive-prune",
        p(&arc),
        "--keep-since",
        &all[first2].1.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let rfc3339 = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    // Targets before the archive's first record: in a pruned segment, and before any record.
    for (flag, value) in [
        ("--until-lsn", all[3].1.to_string()),
        ("--until-lsn", all[first2 - 1].1.to_string()),
        ("--until-lsn", "0".to_string()),
        ("--until-time", rfc3339(all[first2 - 1].4)),
    ] {
        let dest = t.path().join("restored");
        let out = walship(&["restore", p(&arc), p(&dest), flag, &value]);
        assert_eq!(common::code(&out), 2, "{flag} {value}: {}", text(&out));
        assert!(
            text(&out).contains("is before the archive's first record"),
            "{flag} {value}: {}",
            text(&out)
        );
        assert!(!dest.exists(), "{flag} {value}: nothing written");
    }
    // From the archive's first record on, a restore gives exactly the records up to the target.
    for (flag, value) in [
        ("--until-lsn", all[first2].1.to_string()),
        ("--until-time", rfc3339(all[first2].4)),
    ] {
        let dest = t.path().join(format!("restored-{}", &flag[2..]));
        let out = walship(&["restore", p(&arc), p(&dest), flag, &value]);
        assert!(out.status.success(), "{flag} {value}: {}", text(&out));
        assert_eq!(
            records(&dest),
            all[first2..=first2].to_vec(),
            "{flag} {value}"
        );
    }
}

/// Prunings of one archive run at once, one keeping more than the other: the archive ends up
/// beginning where the one keeping less left it (never moved back over removed segments), and
/// it verifies and restores.
#[test]
fn prunings_racing_never_move_the_beginning_back() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 12);
    let seg_of = |r: &Rec| r.0 / SEG;
    let at = |s: u64| {
        all[all.iter().position(|r| seg_of(r) == s).unwrap()]
            .1
            .to_string()
    };
    let (late, early) = (at(9), at(2));
    for round in 0..4 {
        let arc = t.path().join(format!("arc-{round}"));
        assert!(archive_once(&data, &arc, &[]).status.success());
        let spawn = |keep: &str| {
            std::process::Command::new(common::bin())
                .args(["archive-prune", p(&arc), "--keep-since", keep])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = if round % 2 == 0 {
            (spawn(&late), spawn(&early))
        } else {
            (spawn(&early), spawn(&late))
        };
        for c in [a, b] {
            // The one keeping more, run after the other, finds its point gone: refused.
            let out = c.wait_with_output().unwrap();
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success()
                    || (out.status.code() == Some(2)
                        && said.contains("before the archive's first record")),
                "{said}"
            );
        }
        let identity = std::fs::read_to_string(arc.join("IDENTITY")).unwrap();
        assert!(
            identity.contains("first_segment 9\n"),
            "round {round}: {identity}"
        );
        let v = walship(&["verify", p(&arc)]);
        assert!(v.status.success(), "round {round}: {}", text(&v));
        let dest = t.path().join(format!("restored-{round}"));
        let out = walship(&["restore", p(&arc), p(&dest)]);
        assert!(out.status.success(), "round {round}: {}", text(&out));
    }
}
