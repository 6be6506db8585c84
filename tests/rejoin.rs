//! The old primary's return, through the real binary: a primary killed after its standby
//! acknowledged everything, the standby promoted, and the old primary pointed at the new one.
//! With nothing past the switch point it follows onto the new timeline; with records past it
//! it is refused, naming the switch point and the diverged range.

use std::path::{Path, PathBuf};

mod common;
use common::{init, p, read_all, serve, status, wait_until, walship, write_records, NET};
use walship::format::history::HistoryFile;

/// Payloads of every record in a directory, in order.
fn payloads(dir: &Path) -> Vec<Vec<u8>> {
    read_all(dir)
        .expect("read the directory's records")
        .into_iter()
        .map(|r| r.payload)
        .collect()
}

/// An old primary (killed after its standby acknowledged everything, then given `extra` more
/// records of its own) and its standby, promoted to timeline 2.
fn failed_over(root: &Path, extra: usize) -> (PathBuf, PathBuf) {
    let old = root.join("old");
    init(&old);
    write_records(&old, 1500, "a");
    let (mut srv, addr) = serve(&old, "127.0.0.1:0", &NET, &root.join("serve-old.log"));
    let new = root.join("new");
    let mut s = common::standby(&new, &addr, &[], &root.join("standby-new.log"));
    write_records(&old, 20, "b");
    wait_until("the standby to acknowledge everything", || {
        let st = status(&old);
        let flush = st["flush_lsn"].as_u64();
        st["standbys"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|x| x["flushed_lsn"].as_u64())
            == flush
    });
    s.kill();
    srv.kill();
    if extra > 0 {
        // The old primary goes on alone: these records are on no timeline of the new one.
        write_records(&old, extra, "x");
    }
    let out = walship(&["promote", p(&new)]);
    assert!(out.status.success(), "{}", common::text(&out));
    (old, new)
}

/// Where timeline 2 left timeline 1, from the new primary's history file.
fn switch_point(new: &Path) -> walship::Lsn {
    let b = std::fs::read(new.join("wal/00000002.history")).expect("history file");
    HistoryFile::decode(&b, "00000002.history")
        .expect("a valid history")
        .last_switch()
        .expect("a switch")
        .lsn
}

#[test]
fn an_old_primary_with_nothing_past_the_switch_follows_the_new_one() {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = failed_over(t.path(), 0);
    write_records(&new, 1200, "c");
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    let mut sb = common::standby(&old, &addr, &[], &t.path().join("standby-old.log"));
    write_records(&new, 10, "d");
    common::seal(&new);
    let sealed = status(&new)["sealed_lsn"].as_u64().expect("sealed_lsn");
    wait_until("the old primary to follow the new one", || {
        !sb.running()
            || walship(&["status", p(&old), "--json"]).status.success()
                && serde_json::from_slice::<serde_json::Value>(
                    &walship(&["status", p(&old), "--json"]).stdout,
                )
                .is_ok_and(|s| s["applied_lsn"].as_u64() == Some(sealed))
    });
    assert!(sb.running(), "log:\n{}", sb.log());
    sb.kill();
    assert_eq!(payloads(&old), payloads(&new));
    assert_eq!(status(&old)["timeline"].as_u64(), Some(2));
}

#[test]
fn an_old_primary_that_diverged_is_refused_naming_the_range() {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = failed_over(t.path(), 7);
    let before = common::names(&old.join("wal"));
    let end = walship::Lsn(status(&old)["flush_lsn"].as_u64().expect("flush_lsn"));
    let switch = switch_point(&new);
    assert!(end > switch);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    let mut sb = common::standby(&old, &addr, &[], &t.path().join("standby-old.log"));
    let code = sb.wait_exit();
    let log = sb.log();
    assert_eq!(code, 1, "log:\n{log}");
    assert!(log.contains("run walship rewind"), "{log}");
    assert!(log.contains(&format!("switch point {switch}")), "{log}");
    assert!(log.contains(&format!("[{switch}, {end})")), "{log}");
    assert!(log.contains("walship: refused:"), "{log}");
    assert_eq!(common::names(&old.join("wal")), before, "nothing changed");
}
