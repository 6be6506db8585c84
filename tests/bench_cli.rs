//! `walship bench` as a child process with tiny sizes: every scenario runs, prints one JSON
//! object with the stable keys, and reports positive figures. No speed is asserted here.

mod common;

use std::path::Path;

use serde_json::Value;

use common::{p, walship};

const KEYS: [&str; 15] = [
    "scenario",
    "writers",
    "record_size",
    "durability",
    "records_per_s",
    "mb_per_s",
    "p50_us",
    "p99_us",
    "p999_us",
    "syncs",
    "records_per_sync",
    "baseline_records_per_s",
    "baseline_mb_per_s",
    "ratio",
    "records",
];

fn bench(dir: &Path, args: &[&str]) -> Value {
    bench_lines(dir, args, 1).remove(0)
}

/// Runs a bench that prints `n` results; returns them in order.
fn bench_lines(dir: &Path, args: &[&str], n: usize) -> Vec<Value> {
    let mut all = vec!["bench", "--dir", p(dir)];
    all.extend_from_slice(args);
    all.push("--json");
    let out = walship(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walship bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), n, "one JSON object per result: {stdout}");
    let values: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("valid JSON"))
        .collect();
    for v in &values {
        for k in KEYS {
            assert!(v.get(k).is_some(), "key {k} missing in {v}");
        }
    }
    // The scratch directory is removed afterwards.
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        0,
        "bench left files behind"
    );
    values
}

fn positive(v: &Value, keys: &[&str]) {
    for k in keys {
        let x = v[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number in {v}"));
        assert!(x > 0.0, "{k} = {x} in {v}");
    }
}

#[test]
fn append_each_group_none() {
    let dir = tempfile::tempdir().unwrap();
    for (d, w) in [("each", "1"), ("group", "4"), ("none", "2")] {
        let v = bench(
            dir.path(),
            &[
                "--durability",
                d,
                "--writers",
                w,
                "--records",
                "500",
                "--segment-size",
                "64KiB",
            ],
        );
        assert_eq!(v["scenario"], "append");
        assert_eq!(v["durability"], d);
        assert_eq!(v["writers"].as_u64(), Some(w.parse().unwrap()));
        assert_eq!(v["record_size"].as_u64(), Some(128));
        assert_eq!(v["records"].as_u64(), Some(500));
        positive(
            &v,
            &[
                "records_per_s",
                "mb_per_s",
                "p50_us",
                "p99_us",
                "baseline_records_per_s",
                "ratio",
            ],
        );
        // 500 records of 168 bytes fill more than one 64 KiB segment.
        assert!(v["segments_sealed"].as_u64().unwrap() >= 1, "{v}");
        match d {
            "each" => assert_eq!(v["syncs"].as_u64(), Some(500), "one sync per record: {v}"),
            "group" => assert!(v["syncs"].as_u64().unwrap() >= 1, "{v}"),
            // Nobody waits: only seals and the untimed final sync write to disk.
            _ => assert_eq!(v["syncs"].as_u64(), Some(0), "{v}"),
        }
        if d == "none" {
            assert!(v.get("mean_sync_us").is_none(), "no syncs, no mean: {v}");
        } else {
            // The timed run is the leaders' syncs and the time between them.
            positive(&v, &["mean_sync_us", "mean_sync_gap_us"]);
            let syncs = v["syncs"].as_f64().unwrap();
            let parts = syncs
                * (v["mean_sync_us"].as_f64().unwrap() + v["mean_sync_gap_us"].as_f64().unwrap());
            let run = v["seconds"].as_f64().unwrap() * 1e6;
            assert!(
                (parts - run).abs() <= run * 0.01 + 1.0,
                "syncs and gaps {parts} us, run {run} us: {v}"
            );
        }
        if d == "group" {
            positive(
                &v,
                &[
                    "each_baseline_records_per_s",
                    "baseline_sync_p99_us",
                    "baseline_sync_p999_us",
                    "group_baseline_records_per_s",
                    "group_baseline_p50_us",
                    "group_baseline_p99_us",
                    "group_baseline_p999_us",
                    "mapped_group_baseline_records_per_s",
                    "mapped_group_baseline_p99_us",
                    "ratio_to_mapped_group_baseline",
                    "group_baseline_syncs",
                    "group_baseline_mean_sync_us",
                    "group_baseline_mean_sync_gap_us",
                    "mapped_group_baseline_syncs",
                    "mapped_group_baseline_mean_sync_us",
                    "mapped_group_baseline_mean_sync_gap_us",
                    "group_baseline_cpu_s",
                    "ratio_to_group_baseline",
                ],
            );
        } else {
            // Only a group run with more than one writer has the group-commit baseline.
            assert!(v.get("group_baseline_records_per_s").is_none(), "{v}");
        }
    }
}

#[test]
fn append_recycles_segment_files_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    for recycle in ["on", "off"] {
        let v = bench(
            dir.path(),
            &[
                "--durability",
                "none",
                "--records",
                "2000",
                "--segment-size",
                "64KiB",
                "--recycle",
                recycle,
            ],
        );
        assert_eq!(v["recycle"].as_bool(), Some(recycle == "on"), "{v}");
        // 2000 records of 168 bytes: five 64 KiB segments, each prepared after timing started
        // from the pool (refilled by the checkpoints) when recycling is on.
        let reused = v["segments_recycled"].as_u64().expect("segments_recycled");
        if recycle == "on" {
            assert!(reused >= 1, "no recycled file used: {v}");
        } else {
            assert_eq!(reused, 0, "{v}");
        }
        for k in ["writer_faults_per_mib", "baseline_faults_per_mib"] {
            assert!(v[k].as_f64().is_some_and(|x| x >= 0.0), "{k} in {v}");
        }
    }
}

#[test]
fn recover_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let v = bench(
        dir.path(),
        &[
            "--scenario",
            "recover",
            "--size",
            "2MiB",
            "--segment-size",
            "256KiB",
            "--record-size",
            "100",
        ],
    );
    assert_eq!(v["scenario"], "recover");
    // As many 144-byte records as 2 MiB holds, the last one cut short counted whole.
    let n = v["records"].as_u64().unwrap();
    assert_eq!(n, (2u64 << 20).div_ceil(144), "{v}");
    positive(
        &v,
        &[
            "records_per_s",
            "mb_per_s",
            "baseline_mb_per_s",
            "ratio",
            "scan_gb_per_s",
        ],
    );
    assert!(v["recovery_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn sync_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let v = bench_lines(
        dir.path(),
        &[
            "--scenario",
            "sync",
            "--seconds",
            "0.3",
            "--segment-size",
            "256KiB",
        ],
        8,
    );
    let levels = ["local", "remote_write", "remote_flush", "remote_apply"];
    for (i, r) in v.iter().enumerate() {
        assert_eq!(r["scenario"], "sync", "{r}");
        assert_eq!(r["durability"], levels[i / 2], "{r}");
        assert_eq!(r["writers"].as_u64(), Some([1, 16][i % 2]), "{r}");
        // Every commit waited for the standby (local: for nobody), and the ratio is to local
        // with the same writers in the same run.
        positive(
            r,
            &["records", "records_per_s", "p50_us", "p99_us", "ratio"],
        );
        assert_eq!(
            r["baseline_records_per_s"],
            v[i % 2]["records_per_s"],
            "{r}"
        );
    }
    assert_eq!(v[0]["ratio"].as_f64(), Some(1.0));
}

#[test]
fn ship_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let v = bench_lines(
        dir.path(),
        &[
            "--scenario",
            "ship",
            "--segments",
            "3",
            "--segment-size",
            "256KiB",
            "--record-size",
            "1000",
        ],
        4,
    );
    assert_eq!(v[0]["scenario"], "ship_catchup");
    assert_eq!(v[1]["scenario"], "ship_latency");
    // Durable acknowledgement to the standby's flushed position, the segment left open.
    assert_eq!(v[2]["scenario"], "stream_latency");
    assert!(v[2]["records"].as_u64().unwrap() > 0, "{}", v[2]);
    assert!(v[2]["p50_us"].as_f64().unwrap() > 0.0, "{}", v[2]);
    // The same among a writer's stream of durable records.
    assert_eq!(v[3]["scenario"], "stream_latency_loaded");
    assert!(v[3]["records"].as_u64().unwrap() > 500, "{}", v[3]);
    positive(&v[3], &["p50_us", "p99_us", "records_per_s"]);
    for r in &v[..2] {
        assert_eq!(r["segments"].as_u64(), Some(3), "{r}");
        assert_eq!(r["record_size"].as_u64(), Some(1000), "{r}");
        // Each 256 KiB segment is filled to within one batch of its end: over 100 records.
        assert!(r["records"].as_u64().unwrap() >= 300, "{r}");
        positive(
            r,
            &[
                "records_per_s",
                "mb_per_s",
                "baseline_records_per_s",
                "baseline_mb_per_s",
                "ratio",
            ],
        );
    }
    positive(
        &v[1],
        &["p50_us", "p99_us", "baseline_p50_us", "baseline_p99_us"],
    );
}

#[test]
fn workload_replay_of_a_pgbench_sample() {
    let dir = tempfile::tempdir().unwrap();
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pgbench-wal-sample.tsv.gz");
    let v = bench(
        dir.path(),
        &[
            "--workload",
            trace.to_str().unwrap(),
            "--writers",
            "4",
            "--records",
            "1500",
        ],
    );
    assert_eq!(v["scenario"], "workload");
    assert_eq!(v["records"].as_u64(), Some(1500));
    positive(
        &v,
        &[
            "transactions_per_s",
            "records_per_s",
            "p50_us",
            "p99_us",
            "ratio",
            "syncs",
        ],
    );
}

#[test]
fn bad_trace_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("bad.tsv");
    std::fs::write(&trace, "type\ttx_id\tlen\ninsert\t1\tlots\n").unwrap();
    let out = walship(&["bench", "--workload", p(&trace), "--dir", p(dir.path())]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.tsv: line 2: len \"lots\" is not a number"),
        "{err}"
    );
}

/// An interrupted bench (SIGINT, SIGTERM) removes its scratch directories and exits as the
/// signal would have: a large run must not leave gigabytes behind.
#[test]
fn a_missing_or_non_directory_dir_is_refused_and_nothing_is_created() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("typo/deeper");
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for (dir, says) in [(&missing, "No such file"), (&file, "not a directory")] {
        let out = walship(&[
            "bench",
            "--dir",
            p(dir),
            "--durability",
            "none",
            "--records",
            "10",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", dir.display());
        assert!(err.contains("--dir") && err.contains(says), "{err}");
    }
    assert!(
        !t.path().join("typo").exists(),
        "the bench created the missing --dir"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn an_interrupted_bench_removes_its_scratch_directories() {
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let t = tempfile::tempdir().unwrap();
        let mut b = common::spawn(
            &["bench", "--dir", p(t.path()), "--seconds", "600"],
            &t.path().join("bench.log"),
        );
        let scratch = || {
            std::fs::read_dir(t.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref().is_ok_and(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with("walship-bench-")
                    })
                })
                .count()
        };
        common::wait_until("the bench to make its scratch directory", || scratch() > 0);
        assert_eq!(unsafe { libc::kill(b.child.id() as i32, signal) }, 0);
        assert_eq!(b.wait_exit(), code, "{}", b.log());
        assert_eq!(scratch(), 0, "scratch directories left: {}", b.log());
    }
}
