//! The metrics endpoint: a real `walship serve --metrics-listen` with a real standby on
//! loopback, scraped over TCP, its text parsed strictly (the Prometheus text exposition
//! format), every metric of the reference present and documented, and its positions equal
//! to what `walship status --json` reports.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod common;
use common::{init, p, seal, serve, standby, status, text, wait_until, walship, write_records};

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

/// A strict parser of the text exposition format (version 0.0.4) for what gauges and
/// counters use: every line a comment, a HELP, a TYPE or a sample; every sample after its
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
        if !e.kind.contains_key(name) {
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
    assert_eq!(len, body.len(), "Content-Length matches the body");
    (code, head.to_string(), body.to_string())
}

/// A loopback port free just now.
fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
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

#[test]
fn metrics_match_status_and_the_reference() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let sdir = t.path().join("s");
    init(&dir);
    write_records(&dir, 200, "m");
    seal(&dir);
    let maddr = free_port();
    let (_srv, addr) = serve(
        &dir,
        "127.0.0.1:0",
        &["--sync", "ANY 1 (s1)", "--metrics-listen", &maddr],
        &t.path().join("serve.log"),
    );
    let _sb = standby(&sdir, &addr, &["--name", "s1"], &t.path().join("s.log"));
    let flush = status(&dir)["flush_lsn"].as_u64().unwrap();
    wait_until("the standby caught up and confirmed", || {
        let st = status(&dir);
        st["standbys"].as_array().is_some_and(|v| {
            v.len() == 1
                && v[0]["connected"] == true
                && v[0]["applied_lsn"].as_u64() == Some(flush)
                && v[0]["flushed_lsn"].as_u64() == Some(flush)
        }) && st["sync"]["confirmed_lsn"].as_u64() == Some(flush)
    });

    // Positions are stable now (nothing is written): the scrape must equal status.
    let (code, head, body) = http(&maddr, "GET", "/metrics");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let st = status(&dir);
    let e = parse(&body);

    // Every documented metric is served, every served metric is documented, each with
    // HELP and TYPE, names with units.
    let served: BTreeSet<String> = e.kind.keys().cloned().collect();
    let reference: BTreeSet<String> = walship::metrics::METRICS
        .iter()
        .map(|m| m.0.to_string())
        .collect();
    assert_eq!(served, reference, "served vs the library's list");
    assert_eq!(documented(), reference, "docs/OPERATIONS.md vs served");
    for (name, kind, _) in walship::metrics::METRICS {
        assert_eq!(e.kind[*name], *kind, "{name}");
        assert!(!e.help[*name].is_empty(), "{name} has help text");
        assert!(
            e.samples.iter().any(|s| s.name == *name),
            "{name} has a sample"
        );
    }

    let u = |v: &serde_json::Value| v.as_u64().unwrap() as f64;
    assert_eq!(
        one(&e, "walship_flush_position_bytes", &[]),
        u(&st["flush_lsn"])
    );
    assert_eq!(
        one(&e, "walship_sealed_position_bytes", &[]),
        u(&st["sealed_lsn"])
    );
    let sb = &st["standbys"][0];
    assert_eq!(sb["name"], "s1");
    let l = [("name", "s1")];
    assert_eq!(
        one(&e, "walship_standby_flushed_position_bytes", &l),
        u(&sb["flushed_lsn"])
    );
    assert_eq!(
        one(&e, "walship_standby_written_position_bytes", &l),
        u(&sb["written_lsn"])
    );
    assert_eq!(
        one(&e, "walship_standby_applied_position_bytes", &l),
        u(&sb["applied_lsn"])
    );
    assert_eq!(
        one(&e, "walship_standby_lag_bytes", &l),
        u(&sb["lag_bytes"])
    );
    assert_eq!(one(&e, "walship_standby_lag_bytes", &l), 0.0);
    assert_eq!(one(&e, "walship_standby_connected", &l), 1.0);
    assert_eq!(sb["sync_state"], "quorum");
    for state in ["sync", "potential", "quorum", "async"] {
        let want = if state == "quorum" { 1.0 } else { 0.0 };
        let v = one(
            &e,
            "walship_standby_sync_state",
            &[("name", "s1"), ("state", state)],
        );
        assert_eq!(v, want, "{state}");
    }
    assert_eq!(
        one(&e, "walship_sync_confirmed_position_bytes", &[]),
        u(&st["sync"]["confirmed_lsn"])
    );
    assert_eq!(one(&e, "walship_sync_degraded", &[]), 0.0);
    assert!(flush > 0);

    // Other paths and methods.
    assert_eq!(http(&maddr, "GET", "/").0, 404);
    assert_eq!(http(&maddr, "GET", "/metrics/x").0, 404);
    let (code, head, _) = http(&maddr, "POST", "/metrics");
    assert_eq!(code, 405);
    assert!(head.contains("Allow: GET"), "{head}");
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
