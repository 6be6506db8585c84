//! The archive in an S3-compatible store, through the real `walship` binary against a real
//! S3-protocol server on loopback that checks request signatures (tests/common/s3.rs): round
//! trips byte for byte, exact point-in-time cuts, wrong credentials and a missing bucket,
//! refusals that leave the archive untouched, SIGKILL mid-upload, the server going away
//! mid-run, and two archivers racing on one target.
//!
//! Over 500 lines on purpose: the tests share one server per test file, so splitting them
//! would start one more server per file.

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

mod common;
use common::data::{record_fields as records, RecordFields as Rec};
use common::proxy::{Proxy, ProxyMode};
use common::s3::S3Server;
use common::{copy_tree, p, text, wait_until, SEG};
use rand::{Rng, SeedableRng};
use walship::archive::ArchiveStore;
use walship::EntryType;

/// One server for the whole file; each test uses its own bucket. `None`: not installed (and
/// not CI), the test skips with a loud message.
fn server(test: &str) -> Option<&'static S3Server> {
    static S: OnceLock<Option<S3Server>> = OnceLock::new();
    let s = S.get_or_init(|| S3Server::start("archive_s3")).as_ref();
    if s.is_none() {
        eprintln!("*** SKIPPED {test}: no S3 test server ***");
    }
    s
}

/// A data directory with about `segments` sealed 64 KiB segments of mixed records, with
/// distinct, rising timestamps.
fn make_store(root: &Path, segments: u64, seed: u64) -> Vec<Rec> {
    common::init(root);
    append(root, segments, seed);
    records(root)
}

/// Appends about `segments` more segments of records and seals.
fn append(root: &Path, segments: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    common::append_timed(root, segments, |i| {
        let payload: Vec<u8> = if rng.gen_range(0..3) == 0 {
            (0..rng.gen_range(100..2500)).map(|_| rng.gen()).collect()
        } else {
            format!("row {i} seed {seed} value {}", rng.gen::<u32>()).into_bytes()
        };
        let t = EntryType::ALL[(i % 9) as usize];
        (t, (i % 3 == 0).then_some(i), payload)
    });
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

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Every object of an archive: name and bytes.
fn objects(s: &S3Server, url: &str) -> Vec<(String, Vec<u8>)> {
    let store = s.store(url);
    rt().block_on(async {
        let mut out = Vec::new();
        for o in store.list().await.expect("list") {
            let b = store
                .get(&o.name)
                .await
                .expect("get")
                .expect("listed object");
            out.push((o.name, b));
        }
        out
    })
}

/// The archiver registrations of `data`, one per archive.
fn archivers(data: &Path) -> Vec<serde_json::Value> {
    let Ok(dir) = std::fs::read_dir(data.join("state/consumers")) else {
        return Vec::new();
    };
    dir.map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).expect("read")).expect("registry json"))
        .filter(|v: &serde_json::Value| v["kind"] == "archiver")
        .collect()
}

/// The registration of the archiver of the archive at `url`.
fn registry(data: &Path, url: &str) -> Option<serde_json::Value> {
    archivers(data)
        .into_iter()
        .find(|v| v["address"].as_str() == Some(url))
}

fn archive_once(s: &S3Server, data: &Path, url: &str, extra: &[&str]) -> Output {
    let mut args = vec!["archive", p(data), "--to", url, "--once"];
    args.extend_from_slice(extra);
    s.walship(&args)
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}", text(o));
}

/// Each archived segment object decodes to the local sealed file exactly.
fn assert_objects_match(s: &S3Server, url: &str, data: &Path, zstd: bool) -> usize {
    let objs = objects(s, url);
    let mut n = 0;
    for (name, bytes) in &objs {
        if name == "IDENTITY" {
            continue;
        }
        let base = name.strip_suffix(".zst").unwrap_or(name);
        assert_eq!(name.ends_with(".zst"), zstd, "{name}");
        let local = std::fs::read(data.join("wal").join(base)).expect("local segment");
        let stored = if zstd {
            zstd::decode_all(&bytes[..]).expect("zstd frame")
        } else {
            bytes.clone()
        };
        assert!(
            stored == local,
            "{name}: archived bytes differ from the local file"
        );
        n += 1;
    }
    n
}

#[test]
fn round_trip_byte_for_byte_with_and_without_compression() {
    let Some(s) = server("round_trip") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let want = make_store(&data, 10, 1);
    for (i, compress) in ["none", "zstd"].into_iter().enumerate() {
        let bucket = format!("round-trip-{i}");
        s.bucket(&bucket);
        let url = format!("s3://{bucket}");
        // Several uploads in flight the second time.
        let parallel = if compress == "zstd" { "4" } else { "1" };
        // The store's ETag (the MD5 of what it received) proves each upload the first time;
        // the second reads every object back as asked.
        let read_back = if compress == "zstd" {
            "always"
        } else {
            "unproven"
        };
        let out = archive_once(
            s,
            &data,
            &url,
            &[
                "--compress",
                compress,
                "--json",
                "--parallel",
                parallel,
                "--read-back",
                read_back,
            ],
        );
        assert_ok(&out, "archive");
        let sum: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON summary");
        let n = sealed_names(&data).len() as u64;
        assert_eq!(sum["archived"].as_u64(), Some(n));
        let expect_read_back = if read_back == "always" { n } else { 0 };
        assert_eq!(sum["read_back"].as_u64(), Some(expect_read_back), "{sum}");
        assert_eq!(
            assert_objects_match(s, &url, &data, compress == "zstd"),
            sealed_names(&data).len()
        );
        // Recorded under the URL, at the end of the last segment.
        let reg = registry(&data, &url).expect("registered");
        assert_eq!(reg["address"].as_str(), Some(url.as_str()));
        assert_eq!(reg["position"].as_u64(), Some(want.last().unwrap().1));
        // A second run finds everything archived.
        let again = archive_once(s, &data, &url, &["--compress", compress, "--json"]);
        assert_ok(&again, "archive again");
        let sum: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
        assert_eq!(sum["archived"].as_u64(), Some(0));

        let v = s.walship(&["verify", &url]);
        assert_ok(&v, "verify");
        let st = s.walship(&["status", &url, "--json"]);
        assert_ok(&st, "status");
        let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        assert_eq!(st["archived_lsn"].as_u64(), Some(want.last().unwrap().1));
        assert_eq!(
            st["segments"].as_u64(),
            Some(sealed_names(&data).len() as u64)
        );
        assert_eq!(
            st["objects"].as_u64(),
            Some(sealed_names(&data).len() as u64 + 1)
        );
        let dest = t.path().join(format!("restored-{compress}"));
        let out = s.walship(&["restore", &url, p(&dest), "--json"]);
        assert_ok(&out, "restore");
        assert_eq!(records(&dest), want);
        for name in sealed_names(&data) {
            assert!(
                std::fs::read(data.join("wal").join(&name)).unwrap()
                    == std::fs::read(dest.join("wal").join(&name)).unwrap(),
                "{name} differs after restore"
            );
        }
    }
}

#[test]
fn archives_under_prefixes_of_one_bucket_stay_apart() {
    static OPEN: OnceLock<Option<S3Server>> = OnceLock::new();
    let Some(s) = OPEN
        .get_or_init(|| S3Server::start_open("archive_s3 prefixes"))
        .as_ref()
    else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    let b = t.path().join("b");
    let want_a = make_store(&a, 3, 13);
    let want_b = make_store(&b, 2, 14);
    s.bucket("shared");
    let (ua, ub) = ("s3://shared/team/app-a", "s3://shared/team/app-b");
    assert_ok(
        &archive_once(s, &a, ua, &["--compress", "zstd"]),
        "archive a",
    );
    assert_ok(&archive_once(s, &b, ub, &[]), "archive b");
    // Each prefix holds its own archive only.
    assert_eq!(
        assert_objects_match(s, ua, &a, true),
        sealed_names(&a).len()
    );
    assert_eq!(
        assert_objects_match(s, ub, &b, false),
        sealed_names(&b).len()
    );
    // The bucket's root is no archive: its listing sees neither (they are further down).
    assert!(objects(s, "s3://shared").is_empty());
    assert_ok(&s.walship(&["verify", ua]), "verify a");
    // A prefix holding nothing (a typo) is no archive, not a damaged one.
    for url in [
        "s3://shared",
        "s3://shared/team/app-c",
        "s3://shared/team/app",
    ] {
        let v = s.walship(&["verify", url]);
        assert_eq!(v.status.code(), Some(2), "{url}: {}", text(&v));
        assert!(
            text(&v).contains(&format!("no archive at {url}")) && !text(&v).contains("DAMAGED"),
            "{url}: {}",
            text(&v)
        );
    }
    for (url, want, name) in [(ua, &want_a, "ra"), (ub, &want_b, "rb")] {
        let dest = t.path().join(name);
        assert_ok(
            &s.walship(&["restore", url, p(&dest)]),
            &format!("restore {url}"),
        );
        assert_eq!(&records(&dest), want, "{url}");
    }
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[test]
fn restore_to_an_lsn_or_a_time_is_exact_at_boundaries() {
    let Some(s) = server("restore_to_lsn_and_time") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 5, 2);
    s.bucket("pitr");
    let url = "s3://pitr";
    assert_ok(
        &archive_once(s, &data, url, &["--compress", "zstd"]),
        "archive",
    );
    let seg_of = |r: &Rec| r.0 / SEG;
    let last_of_seg = (0..all.len() - 1)
        .find(|&i| seg_of(&all[i]) == 2 && seg_of(&all[i + 1]) == 3)
        .unwrap();
    let mut n = 0;
    for &k in &[0, last_of_seg, last_of_seg + 1, all.len() - 1] {
        for lsn in [all[k].1, all[k].1 - 1] {
            n += 1;
            let dest = t.path().join(format!("l{n}"));
            let out = s.walship(&["restore", url, p(&dest), "--until-lsn", &lsn.to_string()]);
            assert_ok(&out, &format!("restore to LSN {lsn}"));
            let want: Vec<Rec> = all.iter().filter(|r| r.1 <= lsn).cloned().collect();
            assert_eq!(records(&dest), want, "until LSN {lsn}");
        }
    }
    let seg_end = (0..all.len() - 1)
        .find(|&i| seg_of(&all[i]) == 1 && seg_of(&all[i + 1]) == 2 && all[i].4 < all[i + 1].4)
        .unwrap();
    for ts in [all[seg_end].4, all[seg_end].4 - 1] {
        n += 1;
        let dest = t.path().join(format!("t{n}"));
        let out = s.walship(&["restore", url, p(&dest), "--until-time", &rfc3339(ts)]);
        assert_ok(&out, "restore to a time");
        let want: Vec<Rec> = all.iter().filter(|r| r.4 <= ts).cloned().collect();
        assert_eq!(records(&dest), want, "until {}", rfc3339(ts));
    }
}

#[test]
fn wrong_credentials_and_a_missing_bucket_exit_2_and_record_nothing() {
    let Some(s) = server("wrong_credentials") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 2, 3);
    s.bucket("creds");
    let secret_file = t.path().join("secret");
    std::fs::write(&secret_file, "not-the-secret\n").unwrap();
    let out = s.walship(&[
        "archive",
        p(&data),
        "--to",
        "s3://creds",
        "--once",
        "--s3-secret-access-key-file",
        p(&secret_file),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("SignatureDoesNotMatch"),
        "{}",
        text(&out)
    );
    assert!(
        !text(&out).contains("not-the-secret") && !text(&out).contains(&s.secret_access_key),
        "a secret was printed: {}",
        text(&out)
    );
    // An unknown key id, through the flag.
    let out = s.walship(&[
        "archive",
        p(&data),
        "--to",
        "s3://creds",
        "--once",
        "--s3-access-key-id",
        "AKIANOSUCHKEY0000000",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(archivers(&data).is_empty(), "the archiver was registered");
    assert!(objects(s, "s3://creds").is_empty());

    let started = Instant::now();
    let out = archive_once(s, &data, "s3://no-such-bucket", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // One line: the store's error code and message, not its XML.
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("walship: "))
        .unwrap_or_default();
    assert!(
        line.contains("NoSuchBucket: The specified bucket does not exist")
            && !err.contains("<?xml"),
        "{err}"
    );
    // Permanent: not retried for a minute.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(archivers(&data).is_empty(), "the archiver was registered");
    // Restore and verify say the same.
    let out = s.walship(&["verify", "s3://no-such-bucket"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = s.walship(&["restore", "s3://no-such-bucket", p(&t.path().join("r"))]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!t.path().join("r").join("control").exists());
}

#[test]
fn a_foreign_archive_and_different_bytes_are_refused_and_left_untouched() {
    let Some(s) = server("foreign_archive") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    let b = t.path().join("b");
    make_store(&a, 3, 4);
    make_store(&b, 3, 5);
    s.bucket("foreign");
    let url = "s3://foreign";
    assert_ok(&archive_once(s, &a, url, &[]), "archive a");
    let before = objects(s, url);
    let out = archive_once(s, &b, url, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is the archive of system"),
        "{}",
        text(&out)
    );
    assert_eq!(objects(s, url), before, "the archive changed");

    // Different bytes under an existing name: a copy of `a` that went on differently.
    let fork = t.path().join("fork");
    copy_tree(&a, &fork);
    s.bucket("different");
    let url = "s3://different";
    let store = s.store(url);
    // The fork's first segment holds other bytes under the same name.
    assert_ok(&archive_once(s, &a, url, &[]), "archive a");
    let first = sealed_names(&a)[0].clone();
    let mut other = std::fs::read(a.join("wal").join(&first)).unwrap();
    let last = other.len() - 1;
    other[last] ^= 1;
    rt().block_on(async {
        assert!(store.delete(&first).await.unwrap());
        store.put(&first, Arc::new(other.clone())).await.unwrap();
    });
    let before = objects(s, url);
    let out = archive_once(s, &fork, url, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("with different content"),
        "{}",
        text(&out)
    );
    assert_eq!(objects(s, url), before, "the archive changed");
}

/// Another system's archive made under the archiver's recorded location (this one's was lost
/// and the bucket reused) holds segments of the same names: retention must not take them for
/// this system's and remove segments held nowhere else.
#[test]
fn retention_trusts_no_other_systems_archive_in_the_archivers_bucket() {
    let Some(s) = server("foreign_retention") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    make_store(&a, 3, 9);
    make_store(&b, 3, 9);
    s.bucket("reused");
    let url = "s3://reused";
    assert_ok(&archive_once(s, &a, url, &[]), "archive a");
    // This system's archive is lost; another system's takes its place in the same bucket.
    let store = s.store(url);
    rt().block_on(async {
        for o in store.list().await.expect("list") {
            assert!(store.delete(&o.name).await.expect("delete"), "{}", o.name);
        }
    });
    assert_ok(&archive_once(s, &b, url, &[]), "archive b");
    let kept = sealed_names(&a);
    assert!(kept.len() > 2, "{kept:?}");
    let end = records(&a).last().unwrap().1.to_string();
    let out = s.walship(&["checkpoint", p(&a), "--lsn", &end]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("it is the archive of system")
            && text(&out).contains("missing_from_archive"),
        "{}",
        text(&out)
    );
    assert_eq!(sealed_names(&a), kept, "retention removed a segment");
}

#[test]
fn sigkill_mid_upload_then_a_rerun_completes_and_nothing_partial_is_visible() {
    let Some(s) = server("sigkill_mid_upload") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 60, 6);
    let total = sealed_names(&data).len();
    s.bucket("killed");
    let url = "s3://killed";
    let mut killed_mid = 0;
    for round in 0..3 {
        let log = t.path().join(format!("a{round}.log"));
        let mut proc = s.spawn(
            &[
                "archive",
                p(&data),
                "--to",
                url,
                "--once",
                "--compress",
                "zstd",
                "--zstd-level",
                "9",
                "--parallel",
                "8",
            ],
            &log,
            None,
        );
        // Counted by listing only (fetching every object would be slower than the uploads
        // it watches, which no longer wait for a read-back).
        let count = || rt().block_on(s.store(url).list()).expect("list").len();
        let before = count();
        let deadline = Instant::now() + Duration::from_secs(60);
        while count() < before + 3 + round && Instant::now() < deadline {
            if !proc.running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if proc.running() {
            killed_mid += 1;
        }
        proc.kill(); // SIGKILL
                     // Every object under a final name is whole.
        assert_objects_match(s, url, &data, true);
    }
    assert!(killed_mid > 0, "no run was killed before it finished");
    let out = archive_once(s, &data, url, &["--compress", "zstd"]);
    assert_ok(&out, "rerun");
    assert_eq!(assert_objects_match(s, url, &data, true), total);
    assert_ok(&s.walship(&["verify", url]), "verify");
    let end = records(&data).last().unwrap().1;
    assert_eq!(
        registry(&data, url).unwrap()["position"].as_u64(),
        Some(end)
    );
}

/// The position of the one archiver of `data`.
fn position(data: &Path) -> u64 {
    archivers(data)
        .first()
        .and_then(|r| r["position"].as_u64())
        .unwrap_or(0)
}

#[test]
fn the_server_going_away_is_retried_and_retention_keeps_what_is_not_in_the_store() {
    let Some(s) = server("server_stopped") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    make_store(&data, 3, 7);
    s.bucket("outage");
    let url = "s3://outage";
    let upstream: std::net::SocketAddr = s.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(Some(upstream), ProxyMode::default());
    let via = format!("http://{}", proxy.addr);
    let log = t.path().join("archiver.log");
    let mut proc = s.spawn(
        &["archive", p(&data), "--to", url, "--rescan-secs", "1"],
        &log,
        Some(&via),
    );
    let end = records(&data).last().unwrap().1;
    wait_until("the first segments archived", || position(&data) == end);

    // The store goes away: connections are cut and refused.
    proxy.refuse_for(Duration::from_secs(3600));
    proxy.cut();
    append(&data, 3, 8);
    let new_end = records(&data).last().unwrap().1;
    wait_until("a failed pass logged", || {
        proc.log().contains("archive pass failed")
    });
    assert!(proc.running(), "the archiver stopped: {}", proc.log());
    assert_eq!(position(&data), end, "recorded progress without the store");
    // Retention keeps every segment the store has not confirmed.
    let before = sealed_names(&data);
    let out = s.walship_via(
        &["checkpoint", p(&data), "--lsn", &new_end.to_string()],
        &via,
    );
    assert!(out.status.code().is_some(), "{}", text(&out));
    let after = sealed_names(&data);
    for name in &before {
        let no = u64::from_str_radix(&name[8..24], 16).unwrap();
        if (no + 1) * SEG > end {
            assert!(
                after.contains(name),
                "{name} removed before it was archived"
            );
        }
    }

    // The store comes back: the archiver catches up by itself.
    proxy.refuse_for(Duration::ZERO);
    wait_until("the archiver caught up", || position(&data) == new_end);
    // Its pass ends with the line saying it recovered.
    wait_until("the recovery logged", || {
        proc.log().contains("archive pass succeeded again")
    });
    assert!(proc.running());
    proc.kill();
    assert_ok(&s.walship(&["verify", url]), "verify");
    // Every segment wal/ still holds is in the store, byte for byte.
    assert_objects_match(s, url, &data, false);
    // Now that the store confirms them, retention removes what the checkpoint allows.
    let out = s.walship(&["checkpoint", p(&data), "--json"]);
    assert_ok(&out, "checkpoint");
    let after = sealed_names(&data);
    assert_eq!(
        after.len(),
        1,
        "only the newest sealed segment is kept: {after:?}"
    );
}

#[test]
fn two_archivers_racing_leave_one_object_per_name_and_the_loser_says_why() {
    let Some(s) = server("racing_archivers") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    // Two copies of one system that went on differently: each segment name after the fork has
    // two different contents, and both archivers push to one target (a misconfiguration).
    let a = t.path().join("a");
    make_store(&a, 2, 9);
    let b = t.path().join("b");
    copy_tree(&a, &b);
    append(&a, 8, 10);
    append(&b, 8, 11);
    s.bucket("race");
    let url = "s3://race";
    let procs: Vec<_> = [&a, &b]
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            s.spawn(
                &["archive", p(d), "--to", url, "--once"],
                &t.path().join(format!("race{i}.log")),
                None,
            )
        })
        .collect();
    let codes: Vec<i32> = procs.into_iter().map(|mut p| p.wait_exit()).collect();
    let logs: Vec<String> = (0..2)
        .map(|i| std::fs::read_to_string(t.path().join(format!("race{i}.log"))).unwrap())
        .collect();
    // At most one wins outright; a loser exits 1 with a clear refusal.
    assert!(codes.contains(&1), "no archiver lost: {codes:?} {logs:?}");
    for (c, l) in codes.iter().zip(&logs) {
        assert!(*c == 0 || *c == 1, "exit {c}: {l}");
        if *c == 1 {
            assert!(
                l.contains("with different content") || l.contains("does not follow"),
                "{l}"
            );
        }
    }
    // The archive is one consistent history: it verifies, and each object is one of the two
    // systems' bytes for that name, whole.
    assert_ok(&s.walship(&["verify", url]), "verify after the race");
    for (name, bytes) in objects(s, url) {
        if name == "IDENTITY" {
            continue;
        }
        let from_a = std::fs::read(a.join("wal").join(&name)).ok();
        let from_b = std::fs::read(b.join("wal").join(&name)).ok();
        assert!(
            from_a.as_ref() == Some(&bytes) || from_b.as_ref() == Some(&bytes),
            "{name} is neither archiver's bytes"
        );
    }
}

fn prune(s: &S3Server, url: &str, keep: &str, extra: &[&str]) -> Output {
    let mut args = vec!["archive-prune", url, "--keep-since", keep];
    args.extend_from_slice(extra);
    s.walship(&args)
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).expect("one JSON summary")
}

fn seg_object(no: u64) -> String {
    format!("{:08X}{:016X}.wal", 1, no)
}

#[test]
fn pruning_keeps_every_restore_point_from_the_kept_one_on() {
    let Some(s) = server("prune") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    let all = make_store(&data, 6, 7);
    s.bucket("prune");
    let url = "s3://prune";
    assert_ok(&archive_once(s, &data, url, &[]), "archive");
    let before = objects(s, url);
    let seg_of = |r: &Rec| r.0 / SEG;
    // A point just after the first record of segment 3: restoring to it needs segment 3 on.
    let first3 = all.iter().position(|r| seg_of(r) == 3).unwrap();
    let keep = all[first3 + 1].1.to_string();

    let out = prune(s, url, &keep, &["--dry-run", "--json"]);
    assert_ok(&out, "dry run");
    let v = json(&out);
    let three: Vec<String> = (0..3).map(seg_object).collect();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["first_segment"].as_u64(), Some(3), "{v}");
    assert_eq!(v["removed"], serde_json::json!(three), "{v}");
    let out = prune(s, url, &keep, &["--dry-run"]);
    assert_ok(&out, "dry run, text");
    for name in &three {
        assert!(
            text(&out).contains(&format!("would remove {name}")),
            "{}",
            text(&out)
        );
    }
    assert_eq!(objects(s, url), before, "a dry run removes nothing");

    // Points outside the archive are refused, and nothing changes.
    let past = (all.last().unwrap().1 + 1).to_string();
    for (bad, says) in [
        ("0", "before the archive's first record"),
        ("1970-01-01T00:00:00Z", "before the archive's first record"),
        (past.as_str(), "after the archive's last record"),
        ("2100-01-01T00:00:00Z", "after the archive's last record"),
    ] {
        let out = prune(s, url, bad, &[]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(text(&out).contains(says), "{bad}: {}", text(&out));
        assert_eq!(objects(s, url), before, "{bad}: nothing removed");
    }

    let out = prune(s, url, &keep, &["--json"]);
    assert_ok(&out, "prune");
    let v = json(&out);
    assert_eq!(v["dry_run"], false);
    assert_eq!(v["removed"], serde_json::json!(three), "{v}");
    let after = objects(s, url);
    let kept: Vec<_> = before
        .iter()
        .filter(|(n, _)| n != "IDENTITY" && !three.contains(n))
        .collect();
    assert_eq!(
        after
            .iter()
            .filter(|(n, _)| n != "IDENTITY")
            .collect::<Vec<_>>(),
        kept,
        "exactly the segments before the kept one are gone, the others untouched"
    );
    assert!(after.iter().any(|(n, _)| n == "IDENTITY"));
    let st = json(&s.walship(&["status", url, "--json"]));
    assert_eq!(st["first_segment"].as_u64(), Some(3), "{st}");
    assert_ok(&s.walship(&["verify", url]), "verify after pruning");

    // The kept point restores exactly, segment for segment byte for byte.
    let dest = t.path().join("kept");
    assert_ok(
        &s.walship(&["restore", url, p(&dest), "--until-lsn", &keep]),
        "restore to the kept point",
    );
    let k: u64 = keep.parse().unwrap();
    let want: Vec<Rec> = all
        .iter()
        .filter(|r| seg_of(r) >= 3 && r.1 <= k)
        .cloned()
        .collect();
    assert_eq!(records(&dest), want);
    let dest = t.path().join("end");
    assert_ok(
        &s.walship(&["restore", url, p(&dest)]),
        "restore to the end",
    );
    for name in sealed_names(&data).iter().filter(|n| !three.contains(n)) {
        assert!(
            std::fs::read(data.join("wal").join(name)).unwrap()
                == std::fs::read(dest.join("wal").join(name)).unwrap(),
            "{name} differs after restore"
        );
    }
    assert!(!dest.join("wal").join(&three[2]).exists());

    // The new beginning is exact: a point before segment 3's first record is now outside.
    let out = prune(s, url, &(3 * SEG).to_string(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = prune(s, url, &all[first3].1.to_string(), &["--json"]);
    assert_ok(&out, "prune to the kept segment again");
    assert_eq!(json(&out)["removed"], serde_json::json!([]));

    // By time: the first record of segment 4 is stamped at the point.
    let first4 = all.iter().position(|r| seg_of(r) == 4).unwrap();
    let out = prune(s, url, &rfc3339(all[first4].4), &["--json"]);
    assert_ok(&out, "prune by time");
    let v = json(&out);
    assert_eq!(v["first_segment"].as_u64(), Some(4), "{v}");
    assert_eq!(v["removed"], serde_json::json!([seg_object(3)]), "{v}");

    // The archiver carries on from the new beginning, and retention removes local segments
    // the archive no longer holds because it was pruned.
    append(&data, 2, 8);
    assert_ok(&archive_once(s, &data, url, &[]), "archive after pruning");
    assert_ok(&s.walship(&["verify", url]), "verify after more archiving");
    let end3 = all[first4 - 1].1.to_string();
    let out = s.walship(&["checkpoint", p(&data), "--lsn", &end3, "--json"]);
    assert_ok(&out, "checkpoint");
    for no in 0..4 {
        assert!(
            !data.join("wal").join(seg_object(no)).exists(),
            "segment {no} kept locally: {}",
            text(&out)
        );
    }
}

#[test]
fn the_demo_archives_and_restores_through_an_s3_store() {
    let Some(s) = server("demo_s3") else {
        return;
    };
    // The bucket's root: this server refuses listings under a prefix (see s3_server.py).
    s.bucket("demo");
    let url = "s3://demo";
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("demo");
    let out = s.walship(&[
        "demo",
        "--seconds",
        "4",
        "--dir",
        p(&dir),
        "--archive-to",
        url,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {}", text(&out));
    assert!(stdout.contains("all 19 checks passed"), "{stdout}");
    assert!(
        stdout.contains(&format!("an archiver pushes them to {url}")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("verify {url}")), "{stdout}");
    assert!(!dir.join("archive").exists(), "no local archive");
    // The store holds the archive: every sealed segment of the primary, checked byte for byte.
    let objs = objects(s, url);
    assert!(objs.iter().any(|(n, _)| n == "IDENTITY"));
    // (The demo ends with a failover: the archiver, pointed at the new primary, continues the
    // archive with timeline 2's history file and segments; the old primary, rewound, follows
    // the new one to its end, so it holds the same files: every sealed segment of both
    // timelines and the history file.)
    let n = assert_objects_match(s, url, &dir.join("primary"), false);
    let sealed = sealed_names(&dir.join("primary"));
    assert!(sealed.iter().any(|n| n.starts_with("00000001")));
    assert!(sealed.iter().any(|n| n.starts_with("00000002")));
    assert!(objs.iter().any(|(n, _)| n == "00000002.history"));
    assert_eq!(
        n,
        sealed.len() + 1,
        "every sealed segment and the history file"
    );
    // A second run into the same prefix is refused before anything starts.
    let again = t.path().join("again");
    let out = s.walship(&[
        "demo",
        "--seconds",
        "1",
        "--dir",
        p(&again),
        "--archive-to",
        url,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("already holds"), "{}", text(&out));
}

#[test]
fn history_files_are_stored_byte_for_byte_and_create_only() {
    let Some(s) = server("history_files") else {
        return;
    };
    use walship::archive::{list_histories, newest_history, put_history, read_history, HistoryPut};
    use walship::format::history::HistoryFile;
    let golden = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/history/v1");
    let bytes2 = std::fs::read(golden.join("00000002.history")).expect("golden 2");
    let bytes3 = std::fs::read(golden.join("00000003.history")).expect("golden 3");
    let h2 = HistoryFile::decode(&bytes2, "00000002.history").expect("decode 2");
    let h3 = HistoryFile::decode(&bytes3, "00000003.history").expect("decode 3");
    s.bucket("histories");
    let url = "s3://histories";
    let store = s.store(url);
    rt().block_on(async {
        assert_eq!(list_histories(&store).await.unwrap(), Vec::<u32>::new());
        assert_eq!(put_history(&store, &h2).await.unwrap(), HistoryPut::Created);
        assert_eq!(put_history(&store, &h3).await.unwrap(), HistoryPut::Created);
        assert_eq!(
            put_history(&store, &h2).await.unwrap(),
            HistoryPut::AlreadyHeld
        );
        assert_eq!(list_histories(&store).await.unwrap(), vec![2, 3]);
        assert_eq!(
            read_history(&store, 2, h2.system_id).await.unwrap(),
            Some(h2.clone())
        );
        assert_eq!(
            newest_history(&store, h2.system_id).await.unwrap(),
            walship::timeline::History::of(&h3)
        );
    });
    // Byte for byte the data directory's file, under the same name at the archive's root.
    let held = objects(s, url);
    let names: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["00000002.history", "00000003.history"]);
    assert_eq!(held[0].1, bytes2);
    assert_eq!(held[1].1, bytes3);
    // Another history for timeline 2 (a second promotion): refused, naming both, nothing changed.
    let mut other = h2.clone();
    other.switches[0].lsn = walship::Lsn(other.switches[0].lsn.0 + 8);
    let e = rt()
        .block_on(put_history(&store, &other))
        .expect_err("split brain")
        .to_string();
    assert!(
        e.contains("split brain") && e.contains("00000002.history"),
        "{e}"
    );
    assert!(
        e.contains(&walship::timeline::History::of(&h2).to_string())
            && e.contains(&walship::timeline::History::of(&other).to_string()),
        "{e}"
    );
    assert_eq!(objects(s, url), held, "the archive changed");
}
