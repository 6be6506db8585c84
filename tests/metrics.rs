//! The metrics endpoints: a real `walship serve`, `standby` and `archive`, each with
//! `--metrics-listen`, on loopback, scraped over TCP, their text parsed strictly (the
//! Prometheus text exposition format), every metric of the reference served and documented,
//! positions equal to what `walship status --json` reports; and the library's registry.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod common;
use common::{
    init, metrics_address, p, seal, serve, spawn, standby, status, text, wait_until, walship,
    write_records,
};
use walship::metrics::{reference, METRICS};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: HELP and TYPE by family name, and the samples.
#[derive(Debug, Default)]
struct Exposition {
    help: BTreeMap<String, String>,
    kind: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// A strict parser of the text exposition format (version 0.0.4) for what gauges, counters
/// and histograms use: every line a comment, a HELP, a TYPE or a sample; every sample after its
/// family's TYPE; label values quoted with escapes; the value a float. Panics naming the line.
fn parse(text: &str) -> Exposition {
    let mut e = Exposition::default();
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for (no, line) in text.lines().enumerate() {
        let bad = |why: &str| -> ! { panic!("line {}: {why}: {line:?}", no + 1) };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let (kw, name, arg) = (it.next(), it.next(), it.next());
            let known = ["counter", "gauge", "histogram", "summary", "untyped"];
            let ok = match (kw, name, arg) {
                (Some("HELP"), Some(name), Some(h)) => {
                    valid_name(name) && e.help.insert(name.into(), h.into()).is_none()
                }
                (Some("TYPE"), Some(name), Some(t)) => {
                    valid_name(name)
                        && known.contains(&t)
                        && e.kind.insert(name.into(), t.into()).is_none()
                }
                _ => true,
            };
            if !ok {
                bad("bad or repeated HELP or TYPE")
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad("no value"));
        let name = &line[..name_end];
        if !valid_name(name) {
            bad("bad metric name")
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|f| e.kind.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        if !e.kind.contains_key(family) {
            bad("sample before its TYPE")
        }
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').unwrap_or_else(|| bad("label without ="));
                let lname = &r[..eq];
                if !valid_name(lname) {
                    bad("bad label name")
                }
                let mut chars = r[eq + 1..].char_indices();
                if chars.next().map(|c| c.1) != Some('"') {
                    bad("label value not quoted")
                }
                let mut value = String::new();
                let mut end = None;
                let mut esc = false;
                for (i, ch) in chars {
                    match (esc, ch) {
                        (true, 'n') => (value.push('\n'), esc = false).1,
                        (true, '\\' | '"') => (value.push(ch), esc = false).1,
                        (true, _) => bad("bad escape in label value"),
                        (false, '\\') => esc = true,
                        (false, '"') => {
                            end = Some(eq + 1 + i + 1);
                            break;
                        }
                        (false, c) => value.push(c),
                    }
                }
                let end = end.unwrap_or_else(|| bad("unterminated label value"));
                if labels.insert(lname.to_string(), value).is_some() {
                    bad("repeated label")
                }
                r = &r[end..];
                r = r.strip_prefix(',').unwrap_or(r);
            }
            rest = r;
        }
        let mut fields = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| bad("no space before the value"))
            .split(' ');
        let value: f64 = match fields.next() {
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some(v) => v.parse().unwrap_or_else(|_| bad("value is not a number")),
            None => bad("no value"),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().unwrap_or_else(|_| bad("bad timestamp"));
        }
        if fields.next().is_some() {
            bad("trailing fields")
        }
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    e
}

/// One HTTP/1.1 request on a fresh connection; returns the status code, the head and the body.
fn http(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").expect("response head");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    // A HEAD response carries the length a GET's body would have, and no body.
    if method != "HEAD" {
        assert_eq!(len, body.len(), "Content-Length matches the body");
    }
    (code, head.to_string(), body.to_string())
}

fn one(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<&Sample> = e
        .samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

/// The metric names of the reference table in docs/OPERATIONS.md.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/OPERATIONS.md"))
        .unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `walship_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("walship_{n}"))
        .collect()
}

/// Scrapes `addr` (`GET /metrics`), checks the answer's head, and parses it.
fn scrape(addr: &str) -> Exposition {
    let (code, head, body) = http(addr, "GET", "/metrics");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse(&body)
}

/// Checks that every family of `e` is in the reference for `endpoint`, with its type and
/// help text; returns the names served.
fn check_served(e: &Exposition, endpoint: u8, what: &str) -> BTreeSet<String> {
    for (name, kind) in &e.kind {
        let m = METRICS
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{what} serves {name}, which is not in the reference"));
        assert!(
            m.served_by & endpoint != 0,
            "{what} serves {name}, listed as not served there"
        );
        assert_eq!(kind, m.kind, "{name}");
        assert!(!e.help[name].is_empty(), "{name} has help text");
        assert!(
            e.samples.iter().any(|s| s.name.starts_with(name.as_str())),
            "{name} has a sample"
        );
    }
    e.kind.keys().cloned().collect()
}

#[test]
fn metrics_match_status_and_the_reference() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let sdir = t.path().join("s");
    let arc = t.path().join("arc");
    init(&dir);
    write_records(&dir, 200, "m");
    seal(&dir);
    let local = ["--metrics-listen", "127.0.0.1:0"];
    let (srv, addr) = serve(
        &dir,
        "127.0.0.1:0",
        &["--sync", "ANY 1 (s1)", local[0], local[1]],
        &t.path().join("serve.log"),
    );
    let maddr = metrics_address(&srv);
    assert!(!maddr.ends_with(":0"), "{maddr}");
    let sb = standby(
        &sdir,
        &addr,
        &["--name", "s1", local[0], local[1]],
        &t.path().join("s.log"),
    );
    let saddr = metrics_address(&sb);
    let archiver = spawn(
        &[
            "archive",
            p(&dir),
            "--to",
            p(&arc),
            "--rescan-secs",
            "1",
            local[0],
            local[1],
        ],
        &t.path().join("a.log"),
    );
    let aaddr = metrics_address(&archiver);
    let flush = status(&dir)["flush_lsn"].as_u64().unwrap();
    let sealed = status(&dir)["sealed_lsn"].as_u64().unwrap();
    wait_until("the standby and the archiver caught up", || {
        let st = status(&dir);
        let archived = st["retention"]["consumers"]
            .as_array()
            .and_then(|v| v.iter().find(|c| c["id"] == "archiver"))
            .and_then(|c| c["position"].as_u64());
        st["standbys"].as_array().is_some_and(|v| {
            v.len() == 1
                && v[0]["connected"] == true
                && v[0]["applied_lsn"].as_u64() == Some(flush)
                && v[0]["flushed_lsn"].as_u64() == Some(flush)
        }) && st["sync"]["confirmed_lsn"].as_u64() == Some(flush)
            && archived == Some(sealed)
    });
    // The archiver's pass that reached the position is over once it logged it.
    wait_until("the archive pass logged", || {
        archiver.log().contains("archive pass done")
    });

    // Positions are stable now (nothing is written): each scrape must equal status.
    let e = scrape(&maddr);
    let st = status(&dir);
    let u = |v: &serde_json::Value| v.as_u64().unwrap() as f64;
    assert_eq!(
        one(&e, "walship_flush_position_bytes", &[]),
        u(&st["flush_lsn"])
    );
    assert_eq!(
        one(&e, "walship_sealed_position_bytes", &[]),
        u(&st["sealed_lsn"])
    );
    let sb0 = &st["standbys"][0];
    assert_eq!(sb0["name"], "s1");
    let id = sb0["id"].as_str().unwrap();
    let l = [("name", "s1"), ("id", id)];
    assert_eq!(
        one(&e, "walship_standby_flushed_position_bytes", &l),
        u(&sb0["flushed_lsn"])
    );
    assert_eq!(
        one(&e, "walship_standby_written_position_bytes", &l),
        u(&sb0["written_lsn"])
    );
    assert_eq!(
        one(&e, "walship_standby_applied_position_bytes", &l),
        u(&sb0["applied_lsn"])
    );
    assert_eq!(
        one(&e, "walship_standby_lag_bytes", &l),
        u(&sb0["lag_bytes"])
    );
    assert_eq!(one(&e, "walship_standby_lag_bytes", &l), 0.0);
    assert_eq!(one(&e, "walship_standby_lag_seconds", &l), 0.0);
    assert_eq!(
        one(&e, "walship_standby_flush_lag_seconds", &l),
        sb0["flush_lag_seconds"].as_f64().unwrap()
    );
    assert_eq!(one(&e, "walship_standby_connected", &l), 1.0);
    assert_eq!(sb0["sync_state"], "quorum");
    for state in ["sync", "potential", "quorum", "async"] {
        let want = if state == "quorum" { 1.0 } else { 0.0 };
        let v = one(
            &e,
            "walship_standby_sync_state",
            &[("name", "s1"), ("id", id), ("state", state)],
        );
        assert_eq!(v, want, "{state}");
    }
    assert_eq!(
        one(&e, "walship_sync_confirmed_position_bytes", &[]),
        u(&st["sync"]["confirmed_lsn"])
    );
    assert_eq!(one(&e, "walship_sync_degraded", &[]), 0.0);
    let r = &st["retention"];
    assert_eq!(
        one(&e, "walship_retained_bytes", &[]),
        u(&r["sealed_bytes"])
    );
    assert_eq!(
        one(&e, "walship_retained_segments", &[]),
        u(&r["sealed_segments"])
    );
    assert_eq!(
        one(&e, "walship_checkpoint_position_bytes", &[]),
        u(&r["checkpoint_lsn"])
    );
    for h in r["held_by"].as_array().unwrap() {
        let h = h.as_str().unwrap();
        assert_eq!(one(&e, "walship_retention_held_by", &[("holder", h)]), 1.0);
    }
    // Every consumer caught up and no checkpoint: none holds anything back.
    for c in r["consumers"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        assert_eq!(
            one(&e, "walship_consumer_held_back_bytes", &[("consumer", id)]),
            0.0
        );
    }
    assert_eq!(
        one(&e, "walship_archiver_position_bytes", &[]),
        sealed as f64
    );
    assert_eq!(one(&e, "walship_archiver_lag_bytes", &[]), 0.0);
    assert_eq!(one(&e, "walship_archiver_lag_seconds", &[]), 0.0);
    for c in ["verify", "shipper", "standby", "archiver"] {
        assert_eq!(
            one(&e, "walship_damage_found_total", &[("component", c)]),
            0.0
        );
    }
    assert!(flush > 0);

    // The standby's endpoint: its own directory.
    let es = scrape(&saddr);
    let sst = status(&sdir);
    assert_eq!(
        one(&es, "walship_applied_position_bytes", &[]),
        u(&sst["applied_lsn"])
    );
    assert_eq!(
        one(&es, "walship_applied_position_bytes", &[]),
        flush as f64
    );
    assert_eq!(
        one(&es, "walship_flush_position_bytes", &[]),
        u(&sst["flush_lsn"])
    );

    // The archiver's endpoint: the primary's directory and the archiver's own counters.
    let ea = scrape(&aaddr);
    assert_eq!(
        one(&ea, "walship_archiver_position_bytes", &[]),
        sealed as f64
    );
    assert_eq!(one(&ea, "walship_archiver_failures_total", &[]), 0.0);
    assert_eq!(
        one(&ea, "walship_archiver_last_failure_timestamp_seconds", &[]),
        0.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let ok = one(&ea, "walship_archiver_last_success_timestamp_seconds", &[]);
    assert!(ok > now - 600.0 && ok <= now + 1.0, "{ok} vs {now}");

    // Every served metric is in the reference for its endpoint; everything the reference
    // lists for the commands is served by one of them; the documentation lists exactly the
    // reference.
    let mut served = check_served(&e, reference::SERVE, "serve");
    served.extend(check_served(&es, reference::STANDBY, "standby"));
    served.extend(check_served(&ea, reference::ARCHIVE, "archive"));
    let commands: BTreeSet<String> = METRICS
        .iter()
        .filter(|m| m.served_by & reference::DIR != 0)
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(served, commands, "served by the commands vs the reference");
    let all: BTreeSet<String> = METRICS.iter().map(|m| m.name.to_string()).collect();
    assert_eq!(documented(), all, "docs/OPERATIONS.md vs the reference");

    // Other paths and methods.
    assert_eq!(http(&maddr, "GET", "/").0, 404);
    assert_eq!(http(&maddr, "GET", "/metrics/x").0, 404);
    let (code, head, _) = http(&maddr, "POST", "/metrics");
    assert_eq!(code, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    // HEAD: a GET's headers, no body.
    let (code, head, body) = http(&maddr, "HEAD", "/metrics");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("Content-Length: ") && !head.contains("Content-Length: 0\r"),
        "{head}"
    );
    assert!(body.is_empty(), "{body}");
}

/// The library's registry, as an embedding application serves it: exactly the metrics the
/// reference lists for it, counting what a real writer did.
#[test]
fn the_library_registry_counts_the_writer() {
    use prometheus::Encoder;
    use walship::{DataDir, Entry, EntryType, Wal, WalOptions};
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    DataDir::init(&dir, 64 << 10).unwrap();
    let e0 = library_exposition();
    let records0 = one(&e0, "walship_appended_records_total", &[]);
    let bytes0 = one(&e0, "walship_appended_bytes_total", &[]);
    let syncs0 = one(&e0, "walship_sync_duration_seconds_count", &[]);
    {
        let wal = Wal::open(&dir, WalOptions::default()).unwrap();
        for i in 0..100u32 {
            let payload = format!("record {i:04}");
            wal.append_durable(&Entry::new(EntryType::Insert, None, payload.as_bytes()))
                .unwrap();
        }
        wal.seal().unwrap();
        wal.wait_sealed_names().unwrap();
    }
    let e = library_exposition();
    // Other tests of this binary may write meanwhile: at least what this one did.
    assert!(one(&e, "walship_appended_records_total", &[]) >= records0 + 100.0);
    assert!(one(&e, "walship_appended_bytes_total", &[]) >= bytes0 + 100.0 * 11.0);
    assert!(one(&e, "walship_sync_duration_seconds_count", &[]) >= syncs0 + 1.0);
    assert!(one(&e, "walship_segments_sealed_total", &[]) >= 1.0);
    assert!(one(&e, "walship_group_commit_records_count", &[]) >= 1.0);
    assert_eq!(one(&e, "walship_recovery_repairs", &[]), 0.0);
    let lib: BTreeSet<String> = METRICS
        .iter()
        .filter(|m| m.served_by & reference::LIBRARY != 0)
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(
        check_served(&e, reference::LIBRARY, "the library"),
        lib,
        "the library's registry vs the reference"
    );

    fn library_exposition() -> Exposition {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&walship::metrics::registry().gather(), &mut out)
            .unwrap();
        parse(&String::from_utf8(out).unwrap())
    }
}

#[test]
fn a_non_loopback_metrics_address_needs_insecure() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    init(&dir);
    let o = walship(&[
        "serve",
        p(&dir),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "0.0.0.0:0",
    ]);
    assert_eq!(common::code(&o), 2, "{}", text(&o));
    assert!(
        text(&o).contains("refusing to serve metrics on 0.0.0.0:0"),
        "{}",
        text(&o)
    );
    // `standby` and `archive` say their own flag, and refuse before they change anything.
    let (sb, arc) = (t.path().join("sb"), t.path().join("arc"));
    for args in [
        vec!["standby", p(&sb), "--primary", "127.0.0.1:9"],
        vec!["archive", p(&dir), "--to", p(&arc)],
    ] {
        let mut args = args;
        args.extend_from_slice(&["--metrics-listen", "0.0.0.0:0"]);
        let o = walship(&args);
        assert_eq!(common::code(&o), 2, "{args:?}: {}", text(&o));
        assert!(text(&o).contains("--metrics-insecure"), "{}", text(&o));
    }
    assert!(!sb.exists() && !arc.exists(), "nothing was created");
    assert!(
        !dir.join("state/consumers").exists()
            || std::fs::read_dir(dir.join("state/consumers"))
                .unwrap()
                .count()
                == 0,
        "no archiver was registered"
    );
    let o = walship(&[
        "serve",
        p(&dir),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "nope",
    ]);
    assert_eq!(common::code(&o), 2, "{}", text(&o));
}

/// Scrapes at the same time (two Prometheus servers on one target) each get every series: a
/// scrape resets and refills the gauges, never under another's encoding.
#[test]
fn scrapes_at_the_same_time_each_get_every_series() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    init(&dir);
    for i in 0..3 {
        write_records(&dir, 400, &format!("r{i}"));
        seal(&dir);
    }
    let m = std::sync::Arc::new(walship::metrics::DirMetrics::new(&dir).unwrap());
    let want = parse(&m.scrape().unwrap()).samples.len();
    assert!(want >= 5, "{want} samples");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                (0..40)
                    .map(|_| parse(&m.scrape().unwrap()).samples.len())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in threads {
        for got in h.join().unwrap() {
            assert_eq!(got, want, "a scrape missed series");
        }
    }
}

/// Two standby slots given the same name (a standby rebuilt in a new directory under its old
/// name) are two series, told apart by their `id`, not one that shows either.
#[test]
fn two_slots_of_one_name_are_two_series() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    init(&dir);
    write_records(&dir, 20, "a");
    let (mut srv, addr) = serve(&dir, "127.0.0.1:0", &[], &t.path().join("serve.log"));
    for (i, sb) in ["x", "y"].iter().enumerate() {
        let mut s = standby(
            &t.path().join(sb),
            &addr,
            &["--name", "dup"],
            &t.path().join(format!("{sb}.log")),
        );
        wait_until("the standby's slot", || {
            status(&dir)["standbys"]
                .as_array()
                .is_some_and(|a| a.len() == i + 1)
        });
        s.kill();
    }
    srv.kill();
    let m = walship::metrics::DirMetrics::new(&dir).unwrap();
    let e = parse(&m.scrape().unwrap());
    let ids: BTreeSet<String> = e
        .samples
        .iter()
        .filter(|s| {
            s.name == "walship_standby_connected"
                && s.labels.get("name").map(String::as_str) == Some("dup")
        })
        .filter_map(|s| s.labels.get("id").cloned())
        .collect();
    let want: BTreeSet<String> = status(&dir)["standbys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, want, "one series per slot");
}
