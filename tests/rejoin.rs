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
    let new = root.join("new");
    common::streamed_then_stopped(&old, &new, root, "old");
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
    // The old primary's slot of the standby that is the new primary now.
    let slots = standby_slots(&old);
    assert_eq!(slots.len(), 1, "{slots:?}");
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
    assert_slots_set_aside(&old, &slots);
}

/// A former primary following the new one: its former standbys' slots hold nothing back
/// there any more, and are kept aside.
fn assert_slots_set_aside(old: &Path, slots: &[String]) {
    assert_eq!(standby_slots(old), Vec::<String>::new());
    let aside = files(old, "setaside");
    for id in slots {
        assert!(
            aside.iter().any(|n| n.starts_with(&format!("{id}.json."))),
            "{id}: {aside:?}"
        );
    }
}

/// The ids of the standby slots `status` shows for a directory.
fn standby_slots(dir: &Path) -> Vec<String> {
    status(dir)["standbys"]
        .as_array()
        .expect("standbys")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn an_old_primary_that_diverged_is_refused_naming_the_range() {
    // Past the switch point in its open segment (which only it can judge), and in sealed
    // segments (which the primary judges first).
    refused_as_diverged(7);
    refused_as_diverged(2500);
}

fn refused_as_diverged(extra: usize) {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = failed_over(t.path(), extra);
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
    let named = log.contains(&format!("[{switch}, {end})"))
        || log.contains(&format!(
            "records end at {end}: the diverged range ends there"
        ));
    assert!(named, "{log}");
    assert!(log.contains("walship: refused:"), "{log}");
    assert_eq!(common::names(&old.join("wal")), before, "nothing changed");
}

/// The files of `sub` in a directory, sorted (none when it is absent).
fn files(dir: &Path, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn rewind(old: &Path, addr: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["rewind", p(old), "--source", addr];
    args.extend_from_slice(extra);
    walship(&args)
}

/// Where rewind takes the new primary's history from.
#[derive(Clone, Copy, PartialEq)]
enum From {
    Primary,
    Archive,
}

/// Rewinds an old primary that went on alone for `extra` records (then sealed its open segment
/// when `seal`; the new primary's history taken from `from`), checks what was set aside and
/// kept, then has it follow the new primary to its end.
fn rewound_then_follows(extra: usize, from: From, seal: bool) {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = failed_over(t.path(), extra);
    if seal {
        common::seal(&old);
    }
    let switch = switch_point(&new);
    let end = walship::Lsn(status(&old)["flush_lsn"].as_u64().expect("flush_lsn"));
    let shared = payloads(&new);
    let all = payloads(&old);
    assert_eq!(all.len(), shared.len() + extra);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    let archive = t.path().join("archive");
    let source = match from {
        From::Primary => addr.clone(),
        From::Archive => {
            // The new primary's archive: its history file is pushed before any segment.
            let out = walship(&["archive", p(&new), "--to", p(&archive), "--once"]);
            assert!(out.status.success(), "{}", common::text(&out));
            assert!(archive.join("00000002.history").is_file());
            p(&archive).to_string()
        }
    };
    let before = (files(&old, "wal"), files(&old, "setaside"));

    // A dry run says what it would do and changes nothing.
    let dry = rewind(&old, &source, &["--dry-run"]);
    assert!(dry.status.success(), "{}", common::text(&dry));
    if from == From::Archive {
        // The archive named bare, relative to the working directory, is a directory too.
        let bare = common::run_with(
            &["rewind", p(&old), "--source", "archive", "--dry-run"],
            b"",
            |c| {
                c.current_dir(t.path());
            },
        );
        assert!(bare.status.success(), "{}", common::text(&bare));
        assert_eq!(bare.stdout, dry.stdout);
    }
    let said = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(said.contains(&format!("[{switch}, {end})")), "{said}");
    assert!(said.contains("would set aside"), "{said}");
    assert_eq!((files(&old, "wal"), files(&old, "setaside")), before);

    let out = rewind(&old, &source, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains(&format!("[{switch}, {end})")), "{said}");
    // What is left is what the new primary has from the old timeline; what went is kept.
    assert_eq!(payloads(&old), shared);
    let aside = files(&old, "setaside");
    assert!(!aside.is_empty());
    let suffix = format!(".diverged-{:016X}", switch.0);
    assert!(aside.iter().all(|n| n.ends_with(&suffix)), "{aside:?}");
    let listed: Vec<String> = status(&old)["set_aside"]
        .as_array()
        .expect("set_aside")
        .iter()
        .map(|v| v.as_str().expect("name").to_string())
        .collect();
    assert_eq!(listed, aside, "status lists them");
    // Every diverged record is in a set-aside file, readable by dump.
    let mut kept = Vec::new();
    for n in &aside {
        let d = walship(&["dump", p(&old.join("setaside").join(n))]);
        assert!(d.status.success(), "{n}: {}", common::text(&d));
        kept.push(String::from_utf8_lossy(&d.stdout).to_string());
    }
    let kept = kept.join("\n");
    for i in [0, extra - 1] {
        let want = format!("x-{i:08}-payload");
        assert!(kept.contains(&want), "{want} kept");
    }

    // Again: nothing diverged, nothing changes.
    let state = (files(&old, "wal"), files(&old, "setaside"));
    let again = rewind(&old, &source, &[]);
    assert!(again.status.success(), "{}", common::text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing diverged"));
    assert_eq!((files(&old, "wal"), files(&old, "setaside")), state);

    // And it follows the new primary.
    write_records(&new, 300, "c");
    common::seal(&new);
    let sealed = status(&new)["sealed_lsn"].as_u64().expect("sealed_lsn");
    let mut sb = common::standby(&old, &addr, &[], &t.path().join("standby-old.log"));
    wait_until("the rewound old primary to follow the new one", || {
        !sb.running() || {
            let o = walship(&["status", p(&old), "--json"]);
            o.status.success()
                && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                    .is_ok_and(|s| s["applied_lsn"].as_u64() == Some(sealed))
        }
    });
    assert!(sb.running(), "log:\n{}", sb.log());
    sb.kill();
    assert_eq!(payloads(&old), payloads(&new));
    assert_eq!(standby_slots(&old), Vec::<String>::new());
}

#[test]
fn a_diverged_old_primary_is_rewound_in_its_open_segment_then_follows() {
    rewound_then_follows(7, From::Primary, false);
}

#[test]
fn a_diverged_old_primary_is_rewound_from_the_new_primarys_archive_then_follows() {
    rewound_then_follows(7, From::Archive, false);
    rewound_then_follows(2500, From::Archive, false);
}

#[test]
fn a_diverged_old_primary_is_rewound_across_segments_then_follows() {
    // Enough to seal the segment holding the switch point and fill more after it.
    rewound_then_follows(2500, From::Primary, false);
}

#[test]
fn a_diverged_old_primary_whose_switch_segment_was_sealed_short_is_rewound_then_follows() {
    // Sealed by `walship seal` half-full: the sealed file ends well before the segment does,
    // and its records' offsets must still be read against the segment, not the file.
    rewound_then_follows(7, From::Primary, true);
    rewound_then_follows(7, From::Archive, true);
}

#[test]
fn rewind_is_refused_while_the_directory_is_locked_and_leaves_a_follower_as_it_is() {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = failed_over(t.path(), 7);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    let before = (files(&old, "wal"), files(&old, "setaside"));
    let held = walship::DataDir::new(&old).lock().expect("lock");
    let out = rewind(&old, &addr, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(common::text(&out).contains("locked by a running process"));
    drop(held);
    assert_eq!((files(&old, "wal"), files(&old, "setaside")), before);

    // The new primary itself holds nothing diverged from its own path: refused, unchanged.
    let out = rewind(&new, &addr, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("on timeline 2"),
        "{}",
        common::text(&out)
    );
}

#[test]
fn rewinding_an_old_primary_with_nothing_diverged_changes_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = failed_over(t.path(), 0);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    let before = (files(&old, "wal"), files(&old, "setaside"), payloads(&old));
    let out = rewind(&old, &addr, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing diverged"));
    assert_eq!(
        (files(&old, "wal"), files(&old, "setaside"), payloads(&old)),
        before
    );
}

#[cfg(feature = "failpoints")]
#[test]
fn rewind_stopped_at_every_step_then_run_again_has_one_outcome() {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = failed_over(t.path(), 2500);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    let reference = t.path().join("reference");
    common::copy_tree(&old, &reference);
    let out = rewind(&reference, &addr, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let outcome = |d: &Path| {
        let bytes = |sub: &str| -> Vec<(String, Vec<u8>)> {
            files(d, sub)
                .into_iter()
                .map(|n| {
                    let b = std::fs::read(d.join(sub).join(&n)).expect("read");
                    (n, b)
                })
                .collect()
        };
        (bytes("wal"), bytes("setaside"))
    };
    let want = outcome(&reference);
    for step in ["history", "aside", "copy", "cut", "unseal"] {
        let d = t.path().join(format!("at-{step}"));
        common::copy_tree(&old, &d);
        let fp = format!("rewind::{step}=return(EIO)");
        let stopped = common::run_with(&["rewind", p(&d), "--source", &addr], b"", |c| {
            c.env("FAILPOINTS", &fp);
        });
        assert_eq!(
            stopped.status.code(),
            Some(2),
            "{step}: {}",
            common::text(&stopped)
        );
        // Whatever it did so far, every record is still in the directory or set aside.
        let out = rewind(&d, &addr, &[]);
        assert!(out.status.success(), "{step}: {}", common::text(&out));
        assert!(outcome(&d) == want, "{step}: the same outcome");
        assert_eq!(payloads(&d), payloads(&new), "{step}");
    }
}

/// Sends SIGTERM to a child and waits for it to exit by itself.
fn stop(proc: &mut common::Proc) -> i32 {
    let pid = i32::try_from(proc.child.id()).expect("pid");
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    proc.wait_exit()
}

#[test]
fn a_planned_switchover_loses_nothing_and_the_old_primary_follows_without_rewind() {
    let t = tempfile::tempdir().expect("tempdir");
    let old = t.path().join("old");
    init(&old);
    write_records(&old, 1500, "a");
    let (mut srv, addr) = serve(&old, "127.0.0.1:0", &NET, &t.path().join("serve-old.log"));
    let new = t.path().join("new");
    let mut s = common::standby(&new, &addr, &[], &t.path().join("standby-new.log"));
    write_records(&old, 20, "b");
    // Writes stopped: wait until the standby has flushed the primary's end, as status shows.
    let end = status(&old)["flush_lsn"].as_u64().expect("flush_lsn");
    wait_until("the standby to flush the primary's end", || {
        status(&old)["standbys"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|x| x["flushed_lsn"].as_u64())
            == Some(end)
    });
    assert_eq!(stop(&mut srv), 0, "serve stops cleanly: {}", srv.log());
    // Promote with the standby still running: it is asked to finish.
    let out = walship(&["promote", p(&new)]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(s.wait_exit(), 0, "{}", s.log());
    assert_eq!(
        switch_point(&new).0,
        end,
        "the new timeline begins at the old end"
    );
    assert_eq!(payloads(&new), payloads(&old), "nothing lost");

    let slots = standby_slots(&old);
    assert_eq!(slots.len(), 1, "{slots:?}");
    // The old primary follows the new one without a rewind.
    let (_srv2, addr2) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    let dry = rewind(&old, &addr2, &["--dry-run"]);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("nothing diverged"));
    // Stopped before the new primary sealed the segment holding the switch point, the old
    // primary is not yet accepted: it is left as it was, timeline 1's primary, though it
    // received part of timeline 2's copy of that segment.
    write_records(&new, 5, "s");
    let mut early = common::standby(&old, &addr2, &[], &t.path().join("standby-old-early.log"));
    wait_until("part of timeline 2's copy to arrive", || {
        files(&old, "wal")
            .iter()
            .any(|n| n.starts_with("00000002") && n.ends_with(".wal.partial"))
    });
    early.kill();
    let st = status(&old);
    assert_eq!(st["timeline"].as_u64(), Some(1), "{st}");
    assert_eq!(st["role"].as_str(), Some("primary"), "{st}");
    let mut sb = common::standby(&old, &addr2, &[], &t.path().join("standby-old.log"));
    write_records(&new, 1200, "c");
    common::seal(&new);
    let sealed = status(&new)["sealed_lsn"].as_u64().expect("sealed_lsn");
    wait_until("the old primary to follow the new one", || {
        !sb.running() || {
            let o = walship(&["status", p(&old), "--json"]);
            o.status.success()
                && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                    .is_ok_and(|s| s["applied_lsn"].as_u64() == Some(sealed))
        }
    });
    assert!(sb.running(), "log:\n{}", sb.log());
    sb.kill();
    assert_eq!(payloads(&old), payloads(&new));
    assert_eq!(status(&old)["timeline"].as_u64(), Some(2));
    assert_slots_set_aside(&old, &slots);
}

#[test]
fn rewind_asks_a_primary_that_requires_tls() {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = failed_over(t.path(), 7);
    let ca = common::certs::Ca::new(t.path(), "ca");
    let cert = ca.issue(t.path(), "primary", &["primary.test"]);
    let mut args = vec!["--tls-cert", p(&cert.cert), "--tls-key", p(&cert.key)];
    args.extend_from_slice(&NET);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &args, &t.path().join("serve-new.log"));
    let before = files(&old, "wal");
    // Plain TCP to a TLS primary fails, changing nothing.
    let plain = rewind(&old, &addr, &[]);
    assert_eq!(plain.status.code(), Some(2), "{}", common::text(&plain));
    assert_eq!(files(&old, "wal"), before);
    let tls = ["--tls-ca", p(&ca.cert), "--tls-server-name", "primary.test"];
    let out = rewind(&old, &addr, &tls);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rewound"));
    assert_eq!(payloads(&old), payloads(&new));
}

/// A standby made from nothing after a failover follows the promoted primary from its first
/// segment, across the switch: the path starts on the old timeline, although the control file
/// its first contact writes names the new one.
/// The old primary sealed the segment holding the switch point after its standby had every
/// record of it but not the sealed file: its sealed copy ends right at the switch point, and
/// the new primary holds that segment under timeline 2's name. Rewound, then following the
/// new primary, it holds the new primary's copy under that name, and every record.
#[test]
fn an_old_primary_sealed_at_the_switch_point_takes_the_new_timelines_copy_of_that_segment() {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    init(&old);
    write_records(&old, 1500, "a");
    let (mut srv, addr) = serve(&old, "127.0.0.1:0", &NET, &t.path().join("serve-old.log"));
    let mut sb = common::standby(&new, &addr, &[], &t.path().join("standby-new.log"));
    write_records(&old, 20, "b");
    common::wait_acknowledged(&old);
    sb.kill();
    srv.kill();
    common::seal(&old);
    write_records(&old, 50, "x");
    let out = walship(&["promote", p(&new)]);
    assert!(out.status.success(), "{}", common::text(&out));
    let switch = switch_point(&new);
    let at = format!("{:016X}", switch.0 / common::SEG);
    let sealed_here = format!("00000001{at}.wal");
    assert!(
        files(&old, "wal").contains(&sealed_here),
        "{:?}",
        files(&old, "wal")
    );

    let (_srv, addr_new) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    write_records(&new, 30, "n");
    common::seal(&new);
    let out = rewind(&old, &addr_new, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let mut sb = common::standby(&old, &addr_new, &[], &t.path().join("standby-old.log"));
    common::wait_caught_up(&new, &old);
    sb.kill();
    let wal = files(&old, "wal");
    assert!(
        wal.contains(&format!("00000002{at}.wal")) && !wal.contains(&sealed_here),
        "{wal:?}"
    );
    assert!(
        payloads(&old) == payloads(&new),
        "every record of the new primary's"
    );
}

/// A new standby of a promoted primary that holds the primary's timeline (its history file, its
/// control file) but none of its log yet, because every write of a segment failed: promotion
/// is refused, with exit 1 and nothing written, also when an earlier refused run left its
/// intent behind. The standby then follows its primary and is promoted once it caught up.
#[cfg(feature = "failpoints")]
#[test]
fn a_standby_that_has_not_received_its_timeline_yet_is_refused_promotion_and_left_to_follow() {
    let t = tempfile::tempdir().expect("tempdir");
    let (_old, new) = failed_over(t.path(), 0);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    write_records(&new, 30, "n");
    common::seal(&new);
    let fresh = t.path().join("fresh");
    let log = t.path().join("standby-failing.log");
    let env = [("FAILPOINTS", "standby::write=return(EIO)")];
    let mut sb = common::standby_with_env(&fresh, &addr, &[], &env, &log);
    wait_until("the standby's writes of a segment to fail", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("write") && l.contains("error"))
    });
    sb.kill();
    assert_eq!(status(&fresh)["timeline"].as_u64(), Some(2));
    let as_it_was = |d: &Path| (files(d, "wal"), files(d, "state"), payloads(d));
    let before = as_it_was(&fresh);
    for left_intent in [false, true] {
        if left_intent {
            std::fs::write(fresh.join("state/promotion"), "3\n").expect("write the intent");
        }
        let out = walship(&["promote", p(&fresh)]);
        assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("before timeline 2 began") && err.contains("not received that timeline"),
            "{err}"
        );
        assert_eq!(as_it_was(&fresh), before, "left as it was");
    }

    let mut sb = common::standby(&fresh, &addr, &[], &t.path().join("standby.log"));
    common::wait_caught_up(&new, &fresh);
    sb.kill();
    let out = walship(&["promote", p(&fresh)]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(status(&fresh)["timeline"].as_u64(), Some(3));
    assert!(
        payloads(&fresh) == payloads(&new),
        "every record of the primary's"
    );
}

/// A new standby of a promoted primary, stopped while it still copies the old timeline's
/// segments (it holds the first one; storing the next fails), takes up the copy where it
/// stopped when started again: it follows onto the new timeline, holds every record, and can
/// be promoted.
#[cfg(feature = "failpoints")]
#[test]
fn a_new_standby_stopped_while_copying_the_old_timeline_resumes_where_it_stopped() {
    let t = tempfile::tempdir().expect("tempdir");
    // Several sealed segments of timeline 1 before the one where timeline 2 begins.
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    init(&old);
    write_records(&old, 4000, "a");
    let (mut srv, addr) = serve(&old, "127.0.0.1:0", &NET, &t.path().join("serve-old.log"));
    let mut sb = common::standby(&new, &addr, &[], &t.path().join("standby-new.log"));
    write_records(&old, 20, "b");
    common::wait_acknowledged(&old);
    sb.kill();
    srv.kill();
    let out = walship(&["promote", p(&new)]);
    assert!(out.status.success(), "{}", common::text(&out));
    let old_segments = files(&new, "wal")
        .iter()
        .filter(|n| n.starts_with("00000001") && n.ends_with(".wal"))
        .count();
    assert!(old_segments >= 3, "{:?}", files(&new, "wal"));
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    write_records(&new, 30, "n");
    common::seal(&new);
    let fresh = t.path().join("fresh");
    let log = t.path().join("standby-stopped.log");
    let env = [("FAILPOINTS", "standby::rename=1*off->return(EIO)")];
    let mut sb = common::standby_with_env(&fresh, &addr, &[], &env, &log);
    wait_until("the standby to store one segment and fail the next", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("rename") && l.contains("error"))
    });
    sb.kill();
    let held = files(&fresh, "wal");
    assert!(
        held.iter()
            .any(|n| n.starts_with("00000001") && n.ends_with(".wal")),
        "it holds an old timeline's segment: {held:?}"
    );
    assert_eq!(status(&fresh)["timeline"].as_u64(), Some(2));

    let mut sb = common::standby(&fresh, &addr, &[], &t.path().join("standby.log"));
    common::wait_caught_up(&new, &fresh);
    assert!(sb.running(), "{}", sb.log());
    sb.kill();
    assert!(
        payloads(&fresh) == payloads(&new),
        "every record of the primary's"
    );
    let out = walship(&["promote", p(&fresh)]);
    assert!(out.status.success(), "{}", common::text(&out));
}

#[test]
fn a_new_standby_follows_a_promoted_primary_from_the_old_timeline_on() {
    let t = tempfile::tempdir().expect("tempdir");
    let (_old, new) = failed_over(t.path(), 0);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    write_records(&new, 30, "n");
    common::seal(&new);
    let sealed = status(&new)["sealed_lsn"].as_u64().expect("sealed_lsn");
    let fresh = t.path().join("fresh");
    let mut sb = common::standby(&fresh, &addr, &[], &t.path().join("standby-fresh.log"));
    wait_until("the new standby to apply everything sealed", || {
        !sb.running() || {
            let o = walship(&["status", p(&fresh), "--json"]);
            o.status.success()
                && serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok_and(|s| {
                    s["applied_lsn"].as_u64() == Some(sealed)
                        && s["sealed_lsn"].as_u64() == Some(sealed)
                })
        }
    });
    assert!(sb.running(), "log:\n{}", sb.log());
    sb.kill();
    assert_eq!(status(&fresh)["timeline"].as_u64(), Some(2));
    let (ours, theirs) = (payloads(&fresh), payloads(&new));
    assert_eq!(ours.len(), theirs.len());
    assert!(ours == theirs, "the standby's records are the primary's");
}

/// A standby that received records its fellow standby never had, and the fellow promoted: the
/// standby is refused as diverged, rewound, and then follows the new primary and applies its
/// records. Its applied position comes down to the switch point with the rest (the new
/// timeline's records past it are not yet applied), and what it cut back is its own kind of
/// file (a copy of an open segment), not an open segment no standby may hold. Both shapes: the
/// diverged records in the primary's open segment (the standby's copy of it), and sealed.
#[test]
fn a_standby_past_the_switch_point_is_rewound_then_follows_and_applies_the_new_timeline() {
    for seal in [false, true] {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        let (primary, a, b) = (root.join("primary"), root.join("a"), root.join("b"));
        init(&primary);
        write_records(&primary, 1500, "p");
        let (mut srv, addr) = serve(&primary, "127.0.0.1:0", &NET, &root.join("serve.log"));
        let flushed = |name: &str| {
            let st = status(&primary);
            let of = st["standbys"].as_array().and_then(|v| {
                v.iter()
                    .find(|x| x["name"].as_str() == Some(name))
                    .and_then(|x| x["flushed_lsn"].as_u64())
            });
            of.is_some() && of == st["flush_lsn"].as_u64()
        };
        let mut sa = common::standby(&a, &addr, &["--name", "a"], &root.join("a.log"));
        let mut sb = common::standby(&b, &addr, &["--name", "b"], &root.join("b.log"));
        write_records(&primary, 20, "q");
        wait_until("both standbys to flush everything", || {
            flushed("a") && flushed("b")
        });
        sb.kill();
        // Records only `a` receives: past where `b` will begin timeline 2.
        write_records(&primary, 30, "x");
        if seal {
            common::seal(&primary);
        }
        wait_until("a to flush the records b never had", || flushed("a"));
        sa.kill();
        srv.kill();

        let out = walship(&["promote", p(&b)]);
        assert!(out.status.success(), "{}", common::text(&out));
        let switch = switch_point(&b);
        let (_srv_b, addr_b) = serve(&b, "127.0.0.1:0", &NET, &root.join("serve-b.log"));
        let mut refused = common::standby(&a, &addr_b, &["--name", "a"], &root.join("a2.log"));
        assert_eq!(refused.wait_exit(), 1, "{}", refused.log());

        let out = rewind(&a, &addr_b, &[]);
        assert!(out.status.success(), "seal {seal}: {}", common::text(&out));
        let applied = status(&a)["applied_lsn"].as_u64().expect("applied_lsn");
        assert!(
            applied <= switch.0,
            "seal {seal}: applied {applied} past {switch}"
        );
        assert!(
            !files(&a, "wal").iter().any(|n| n.ends_with(".wal.open")),
            "seal {seal}: a standby holds no open segment: {:?}",
            files(&a, "wal")
        );

        write_records(&b, 300, "c");
        common::seal(&b);
        let mut sa = common::standby(&a, &addr_b, &["--name", "a"], &root.join("a3.log"));
        common::wait_caught_up(&b, &a);
        assert!(sa.running(), "seal {seal}: {}", sa.log());
        sa.kill();
        assert!(
            payloads(&a) == payloads(&b),
            "seal {seal}: a holds b's records"
        );
    }
}

/// A directory rewound, written again past the same switch point, and rewound again: the
/// second rewind's diverged records are set aside beside the first's, under a name of their
/// own, and the first copy is left as it was. No set-aside file is ever replaced.
#[test]
fn a_second_rewind_to_the_same_switch_point_keeps_both_diverged_copies() {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = failed_over(t.path(), 5);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    let out = rewind(&old, &addr, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let first = files(&old, "setaside");
    let first_bytes: Vec<Vec<u8>> = first
        .iter()
        .map(|n| std::fs::read(old.join("setaside").join(n)).expect("read"))
        .collect();
    // Written again as a primary of timeline 1 (a mistake, but the records are acknowledged).
    write_records(&old, 3, "again");
    let dry = rewind(&old, &addr, &["--dry-run"]);
    assert!(dry.status.success(), "{}", common::text(&dry));
    let out = rewind(&old, &addr, &[]);
    assert!(out.status.success(), "{}", common::text(&out));
    let now = files(&old, "setaside");
    assert_eq!(now.len(), first.len() + 1, "{now:?}");
    for (n, bytes) in first.iter().zip(&first_bytes) {
        assert_eq!(
            &std::fs::read(old.join("setaside").join(n)).expect("read"),
            bytes,
            "{n} was replaced"
        );
    }
    let second = now.iter().find(|n| !first.contains(n)).expect("a new file");
    assert!(second.ends_with(".2"), "{second}");
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains(second.as_str()),
        "the dry run names it: {}",
        String::from_utf8_lossy(&dry.stdout)
    );
    let d = walship(&["dump", p(&old.join("setaside").join(second))]);
    assert!(d.status.success(), "{}", common::text(&d));
    for i in 0..3 {
        let want = format!("again-{i:08}-payload");
        assert!(
            String::from_utf8_lossy(&d.stdout).contains(&want),
            "{want} kept"
        );
    }
}

/// A rewind refused because this directory holds a different history of one of the source's
/// timelines changes nothing: not the published durable position either.
#[test]
fn a_rewind_refused_for_a_different_history_changes_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    common::streamed_then_stopped(&old, &new, t.path(), "old");
    write_records(&old, 5, "x");
    // Another promotion of a copy of the same standby: a timeline 2 of its own.
    let other = t.path().join("other");
    common::copy_tree(&new, &other);
    for (dir, reason) in [(&new, "failover"), (&other, "another failover")] {
        let out = walship(&["promote", p(dir), "--reason", reason]);
        assert!(out.status.success(), "{}", common::text(&out));
    }
    std::fs::copy(
        other.join("wal/00000002.history"),
        old.join("wal/00000002.history"),
    )
    .expect("copy the history");
    let before = common::files_under(&old);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    let out = rewind(&old, &addr, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("different history for timeline 2"),
        "{}",
        common::text(&out)
    );
    assert!(common::files_under(&old) == before, "the directory changed");
}

/// A former primary whose adoption was stopped after its control file took the new timeline
/// and before it was recorded as a standby's: no writer may open it (it would be a second
/// primary of that timeline), and `walship standby` run again finishes the adoption.
#[cfg(feature = "failpoints")]
#[test]
fn a_former_primary_stopped_between_the_new_timeline_and_its_adoption_takes_no_writes() {
    let t = tempfile::tempdir().expect("tempdir");
    let (old, new) = failed_over(t.path(), 0);
    write_records(&new, 1200, "c");
    common::seal(&new);
    let (_srv, addr) = serve(&new, "127.0.0.1:0", &NET, &t.path().join("serve-new.log"));
    let mut sb = common::standby_with_env(
        &old,
        &addr,
        &[],
        &[("FAILPOINTS", "standby::adopt=return(EIO)")],
        &t.path().join("standby-old.log"),
    );
    wait_until("the adoption to fail at its last step", || {
        sb.log().contains("record the directory as a standby's")
    });
    sb.kill();
    assert_eq!(status(&old)["timeline"].as_u64(), Some(2));
    assert!(old.join("state/adopting").exists());
    let out = walship(&["write", p(&old), "--durable"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("is being made a standby's"),
        "{}",
        common::text(&out)
    );
    let mut sb = common::standby(&old, &addr, &[], &t.path().join("standby-old2.log"));
    common::wait_caught_up(&new, &old);
    sb.kill();
    assert!(!old.join("state/adopting").exists());
    assert!(old.join("state/standby.json").exists());
    assert_eq!(payloads(&old), payloads(&new));
}
