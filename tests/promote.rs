//! Promotion through the real binary: a standby killed mid-segment (its copy of the primary's
//! open segment holding records) becomes a primary on timeline 2 that accepts writes, with
//! every record it had; run again, it says it is done. With failpoints, promotion stopped at
//! each of its steps and run again reaches the one outcome of an uninterrupted promotion.

use std::path::{Path, PathBuf};

mod common;
use common::{init, p, read_all, serve, status, wait_until, walship, write_records, NET};
use walship::format::history::HistoryFile;

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

/// A standby directory, killed while its copy of the primary's open segment held records,
/// and the payloads the primary made durable.
fn killed_standby(root: &Path) -> (PathBuf, Vec<Vec<u8>>) {
    let primary = root.join("primary");
    let sb = root.join("standby");
    common::streamed_then_stopped(&primary, &sb, root, "primary");
    let want = payloads(&primary);
    assert!(
        files(&sb, "wal")
            .iter()
            .any(|n| n.ends_with(".wal.partial")),
        "the standby holds a copy of the open segment: {:?}",
        files(&sb, "wal")
    );
    (sb, want)
}

/// A standby directory holding nothing past its newest sealed segment (its primary sealed, then
/// stopped, as in a planned switchover): promotion begins the new timeline with the next
/// segment. Returns it and the payloads the primary made durable.
#[cfg(feature = "failpoints")]
fn sealed_end_standby(root: &Path) -> (PathBuf, Vec<Vec<u8>>) {
    let primary = root.join("primary-sealed");
    let sb = root.join("standby-sealed");
    common::init(&primary);
    write_records(&primary, 1500, "a");
    common::seal(&primary);
    let (mut srv, addr) = common::serve(
        &primary,
        "127.0.0.1:0",
        &common::NET,
        &root.join("sealed-serve.log"),
    );
    let mut s = common::standby(&sb, &addr, &[], &root.join("sealed-standby.log"));
    common::wait_caught_up(&primary, &sb);
    s.kill();
    srv.kill();
    (sb, payloads(&primary))
}

/// Every record's payload in the directory, in order.
fn payloads(dir: &Path) -> Vec<Vec<u8>> {
    read_all(dir)
        .expect("read the directory's records")
        .into_iter()
        .map(|r| r.payload)
        .collect()
}

fn history_switch(dir: &Path) -> walship::Lsn {
    let b = std::fs::read(dir.join("wal/00000002.history")).expect("history file");
    HistoryFile::decode(&b, "00000002.history")
        .expect("a valid history")
        .last_switch()
        .expect("a switch")
        .lsn
}

/// A primary and two standbys of it, `a` and `b` (named so), all running, both standbys
/// having acknowledged everything the primary made durable.
struct TwoStandbys {
    primary: PathBuf,
    a: PathBuf,
    b: PathBuf,
    srv: common::Proc,
    sa: common::Proc,
    sb: common::Proc,
}

fn two_standbys_caught_up(root: &Path) -> TwoStandbys {
    let (primary, a, b) = (root.join("primary"), root.join("a"), root.join("b"));
    init(&primary);
    write_records(&primary, 1500, "a");
    let (srv, addr) = serve(&primary, "127.0.0.1:0", &NET, &root.join("serve.log"));
    let sa = common::standby(&a, &addr, &["--name", "a"], &root.join("a.log"));
    let sb = common::standby(&b, &addr, &["--name", "b"], &root.join("b.log"));
    write_records(&primary, 20, "b");
    wait_until("both standbys to acknowledge everything", || {
        acknowledged(&primary, "a") && acknowledged(&primary, "b")
    });
    TwoStandbys {
        primary,
        a,
        b,
        srv,
        sa,
        sb,
    }
}

/// Whether the standby `name` of `dir` acknowledged everything `dir` made durable.
fn acknowledged(dir: &Path, name: &str) -> bool {
    let st = status(dir);
    let flushed = st["standbys"].as_array().and_then(|a| {
        a.iter()
            .find(|x| x["name"].as_str() == Some(name))
            .and_then(|x| x["flushed_lsn"].as_u64())
    });
    flushed.is_some() && flushed == st["flush_lsn"].as_u64()
}

#[test]
fn a_promoted_standby_is_a_primary_on_timeline_2_with_every_record() {
    let t = tempfile::tempdir().expect("tempdir");
    let (sb, want) = killed_standby(t.path());
    let out = walship(&["promote", p(&sb)]);
    assert!(out.status.success(), "{}", common::text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("timeline 2 begins at"), "{said}");

    let wal = files(&sb, "wal");
    assert!(wal.contains(&"00000002.history".to_string()), "{wal:?}");
    assert!(!wal.iter().any(|n| n.ends_with(".partial")), "{wal:?}");
    assert!(
        wal.iter()
            .any(|n| n.starts_with("00000002") && n.ends_with(".wal.open")),
        "the switch segment is named with timeline 2: {wal:?}"
    );
    assert_eq!(files(&sb, "setaside").len(), 1, "the copy is set aside");
    assert_eq!(status(&sb)["timeline"].as_u64(), Some(2));
    let got = payloads(&sb);
    assert!(
        got == want,
        "every record the standby had: {} of {}",
        got.len(),
        want.len()
    );
    let end = status(&sb)["flush_lsn"].as_u64().expect("flush_lsn");
    assert_eq!(
        history_switch(&sb).0,
        end,
        "timeline 2 begins at the durable end"
    );

    // A primary now: writes go on timeline 2, and its sealed segments say so.
    write_records(&sb, 1200, "c");
    common::seal(&sb);
    let sealed2: Vec<String> = files(&sb, "wal")
        .into_iter()
        .filter(|n| n.starts_with("00000002") && n.ends_with(".wal"))
        .collect();
    assert!(!sealed2.is_empty());
    assert_eq!(read_all(&sb).expect("read").len(), want.len() + 1200);
    // dump marks the switch, in text and in JSON, once, at the switch point.
    let switch = history_switch(&sb);
    let text = common::text(&walship(&["dump", p(&sb)]));
    let marks: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("timeline switch"))
        .collect();
    assert_eq!(
        marks,
        [format!(
            "-- timeline switch at {switch}: timeline 1 -> 2 --"
        )],
        "{}",
        &text[..text.len().min(2000)]
    );
    let json = common::text(&walship(&["dump", p(&sb), "--json"]));
    let events: Vec<serde_json::Value> = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "timeline_switch")
        .collect();
    assert_eq!(events.len(), 1, "one switch event");
    assert_eq!(events[0]["lsn"].as_u64(), Some(switch.0));
    assert_eq!(events[0]["from_timeline"].as_u64(), Some(1));
    assert_eq!(events[0]["to_timeline"].as_u64(), Some(2));
    let v = walship(&["verify", p(&sb)]);
    assert!(v.status.success(), "{}", common::text(&v));

    // Again: already done, nothing changes.
    let again = walship(&["promote", p(&sb)]);
    assert!(again.status.success(), "{}", common::text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already a primary on timeline 2"));
    assert_eq!(status(&sb)["timeline"].as_u64(), Some(2));

    // A damaged history file is found by verify, named.
    let hist = sb.join("wal/00000002.history");
    let mut b = std::fs::read(&hist).expect("history");
    b[50] ^= 0x10;
    std::fs::write(&hist, &b).expect("damage");
    let v = walship(&["verify", p(&sb)]);
    assert_eq!(v.status.code(), Some(1), "{}", common::text(&v));
    assert!(
        common::text(&v).contains("00000002.history"),
        "{}",
        common::text(&v)
    );
    // And a missing one: the control file says timeline 2.
    std::fs::remove_file(&hist).expect("remove");
    let v = walship(&["verify", p(&sb)]);
    assert_eq!(v.status.code(), Some(1), "{}", common::text(&v));
    assert!(
        common::text(&v).contains("history file is missing"),
        "{}",
        common::text(&v)
    );
}

#[test]
fn promotion_is_refused_while_the_directory_is_locked_and_on_a_primary() {
    let t = tempfile::tempdir().expect("tempdir");
    let primary = t.path().join("primary");
    init(&primary);
    write_records(&primary, 10, "a");
    let out = walship(&["promote", p(&primary)]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    // A refusal, not damage: one line that says so.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("walship: refused: ") && err.contains("not a standby's directory"),
        "{err}"
    );

    let (sb, _) = killed_standby(&t.path().join("x"));
    let held = walship::DataDir::new(&sb).lock().expect("lock");
    let out = walship(&["promote", p(&sb)]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(common::text(&out).contains("locked by a running process"));
    drop(held);
    assert_eq!(status(&sb)["timeline"].as_u64(), Some(1), "nothing changed");
    assert!(!sb.join("wal/00000002.history").exists());
}

#[test]
fn a_running_standby_is_asked_to_finish_then_promoted() {
    let t = tempfile::tempdir().expect("tempdir");
    let primary = t.path().join("primary");
    init(&primary);
    write_records(&primary, 1500, "a");
    let (mut srv, addr) = serve(&primary, "127.0.0.1:0", &NET, &t.path().join("serve.log"));
    let sb = t.path().join("standby");
    let mut s = common::standby(&sb, &addr, &[], &t.path().join("standby.log"));
    write_records(&primary, 20, "b");
    common::wait_acknowledged(&primary);
    srv.kill();
    let want = payloads(&primary);
    assert!(s.running(), "the standby still runs: {}", s.log());

    let out = walship(&["promote", p(&sb), "--timeout", "30"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("asked walship standby (pid"), "{said}");
    assert!(said.contains("timeline 2 begins at"), "{said}");
    assert_eq!(
        s.wait_exit(),
        0,
        "the standby finished cleanly: {}",
        s.log()
    );
    assert_eq!(status(&sb)["timeline"].as_u64(), Some(2));
    assert!(payloads(&sb) == want, "every record the standby had");
    write_records(&sb, 10, "c");
    assert_eq!(payloads(&sb).len(), want.len() + 10);
}

/// A `serve` running on a standby's directory (cascading) goes on serving it once it is
/// promoted, from the new timeline: on the same address, its standby follows the promoted
/// directory onto timeline 2 and holds every record written there.
#[test]
fn a_serve_on_a_standby_serves_its_new_timeline_once_it_is_promoted() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    let (primary, a, c) = (root.join("primary"), root.join("a"), root.join("c"));
    init(&primary);
    write_records(&primary, 1500, "a");
    common::seal(&primary);
    let (mut srv, addr) = serve(&primary, "127.0.0.1:0", &NET, &root.join("serve.log"));
    let mut sa = common::standby(&a, &addr, &["--name", "a"], &root.join("a.log"));
    common::wait_caught_up(&primary, &a);
    let (_srv_a, addr_a) = serve(&a, "127.0.0.1:0", &NET, &root.join("serve-a.log"));
    let mut sc = common::standby(&c, &addr_a, &["--name", "c"], &root.join("c.log"));
    common::wait_caught_up(&a, &c);
    srv.kill();

    let out = walship(&["promote", p(&a), "--timeout", "30"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(sa.wait_exit(), 0, "{}", sa.log());
    write_records(&a, 30, "d");
    common::seal(&a);
    let sealed = status(&a)["sealed_lsn"].as_u64().expect("sealed_lsn");
    wait_until("c to follow a onto timeline 2", || {
        let o = walship(&["status", p(&c), "--json"]);
        o.status.success()
            && serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok_and(|s| {
                s["timeline"].as_u64() == Some(2) && s["applied_lsn"].as_u64() == Some(sealed)
            })
    });
    assert!(sc.running(), "{}", sc.log());
    sc.kill();
    assert!(payloads(&c) == payloads(&a), "c holds every record of a's");
}

/// Two standbys of one primary: one is promoted to timeline 2, the other connects to it (and
/// stores timeline 2's history file) before anything is written there, then is promoted too.
/// That second timeline 2 is refused with exit 1 and nothing changed; the standby then follows
/// the promoted one.
#[test]
fn a_second_promotion_to_a_timeline_the_standby_heard_of_is_refused() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    let TwoStandbys {
        a,
        b,
        mut srv,
        mut sa,
        mut sb,
        ..
    } = two_standbys_caught_up(root);
    sa.kill();
    sb.kill();
    srv.kill();
    let out = walship(&["promote", p(&a)]);
    assert!(out.status.success(), "{}", common::text(&out));
    let (_srv_a, addr_a) = serve(&a, "127.0.0.1:0", &NET, &root.join("serve-a.log"));
    let mut sb = common::standby(&b, &addr_a, &[], &root.join("b2.log"));
    wait_until("b to store timeline 2's history", || {
        b.join("wal/00000002.history").exists()
    });
    sb.kill();
    let as_it_was = |d: &Path| (files(d, "wal"), files(d, "state"), payloads(d));
    let before = as_it_was(&b);
    let out = walship(&["promote", p(&b)]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("timeline 2 already exists"),
        "{}",
        common::text(&out)
    );
    assert_eq!(as_it_was(&b), before, "nothing changed");

    write_records(&a, 30, "c");
    common::seal(&a);
    let mut sb = common::standby(&b, &addr_a, &[], &root.join("b3.log"));
    common::wait_caught_up(&a, &b);
    sb.kill();
    assert!(payloads(&b) == payloads(&a), "b follows a");
}

#[test]
fn another_process_holding_the_standby_is_not_signalled() {
    let t = tempfile::tempdir().expect("tempdir");
    let (sb, _) = killed_standby(t.path());
    // This test process holds the lock: it is no `walship standby`, so it is not asked.
    let held = walship::DataDir::new(&sb).lock().expect("lock");
    let out = walship(&["promote", p(&sb), "--timeout", "30"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("asked"));
    drop(held);
}

#[cfg(feature = "failpoints")]
#[test]
fn promotion_stopped_at_every_step_then_run_again_has_one_outcome() {
    let t = tempfile::tempdir().expect("tempdir");
    // Both shapes of a standby: its copy of the open segment holds records (the switch
    // segment is written from it), or it holds nothing past a sealed segment (the new
    // timeline begins with the next segment).
    let killed = killed_standby(t.path());
    let sealed = sealed_end_standby(t.path());
    for (shape, (sb, want)) in [("copy", killed), ("sealed", sealed)] {
        stopped_at_every_step(t.path(), shape, &sb, &want);
    }
}

#[cfg(feature = "failpoints")]
fn stopped_at_every_step(root: &Path, shape: &str, sb: &Path, want: &[Vec<u8>]) {
    let reference = root.join(format!("reference-{shape}"));
    common::copy_tree(sb, &reference);
    let out = walship(&["promote", p(&reference)]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        history_switch(&reference).0 % (64 * 1024) == 0,
        shape == "sealed",
        "{shape}: the switch point begins a segment only when nothing follows a sealed one"
    );
    for step in [
        "intent",
        "history",
        "switch_segment",
        "setaside",
        "control",
        "finish",
    ] {
        let name = step;
        let step = format!("{shape}: {name}");
        let d = root.join(format!("at-{shape}-{name}"));
        common::copy_tree(sb, &d);
        let fp = format!("promote::{name}=return(EIO)");
        let stopped = common::run_with(&["promote", p(&d)], b"", |c| {
            c.env("FAILPOINTS", &fp);
        });
        // With nothing past a sealed segment there is no switch segment to write, and a
        // partial copy to set aside only when the standby had begun receiving one.
        let may_not_apply = shape == "sealed" && ["switch_segment", "setaside"].contains(&name);
        assert!(
            stopped.status.code() == Some(2) || (may_not_apply && stopped.status.success()),
            "{step}: {}",
            common::text(&stopped)
        );
        // Never half one thing and half the other: the control file says 2 only once the
        // history and the switch segment are there, and the directory reads whole either way.
        let tl = status(&d)["timeline"].as_u64();
        if tl == Some(2) {
            assert!(d.join("wal/00000002.history").exists(), "{step}");
        }
        // A standby's copy of the open segment is not read as the log; after the switch
        // segment exists it is: either way what is read is a prefix of what was written.
        let got = payloads(&d);
        assert!(
            got.len() <= want.len() && got[..] == want[..got.len()],
            "{step}: records after the stop"
        );
        let again = walship(&["promote", p(&d)]);
        assert!(again.status.success(), "{step}: {}", common::text(&again));
        assert_eq!(files(&d, "wal"), files(&reference, "wal"), "{step}");
        assert_eq!(files(&d, "state"), files(&reference, "state"), "{step}");
        // (Set-aside names carry the time they were set aside.)
        assert_eq!(
            files(&d, "setaside").len(),
            files(&reference, "setaside").len(),
            "{step}"
        );
        assert_eq!(history_switch(&d), history_switch(&reference), "{step}");
        assert_eq!(status(&d)["timeline"].as_u64(), Some(2), "{step}");
        let got = payloads(&d);
        assert!(
            got == want,
            "{step}: records after the rerun: {} of {}",
            got.len(),
            want.len()
        );
        write_records(&d, 5, "after");
    }
}

/// A standby whose copy of the old primary's open segment is where the new timeline begins
/// (holding records up to the switch point, or fewer) follows the promoted standby onto
/// timeline 2: its copy continues under the new timeline's name, none is left under the old
/// one, and it holds every record of the new primary. With the move of its copy failing once
/// (`standby::retitle`), it reconnects and moves it all the same.
#[test]
fn a_standby_holding_the_switch_segment_follows_the_promoted_one_onto_it() {
    for (behind, fault) in [
        (false, None),
        (true, None),
        (false, Some("standby::retitle=1*return(EIO)")),
        (true, Some("standby::retitle=1*return(EIO)")),
    ] {
        eprintln!("case: behind {behind}, fault {fault:?}");
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        let TwoStandbys {
            primary,
            a,
            b,
            mut srv,
            mut sa,
            mut sb,
        } = two_standbys_caught_up(root);
        if behind {
            sb.kill();
            write_records(&primary, 20, "c");
            wait_until("a to acknowledge the rest", || acknowledged(&primary, "a"));
        }
        sa.kill();
        sb.kill();
        srv.kill();
        let old_partial = files(&b, "wal")
            .into_iter()
            .find(|n| n.ends_with(".wal.partial"))
            .expect("b holds a copy of the open segment");
        let ok = walship(&["promote", p(&a)]);
        assert!(ok.status.success(), "{}", common::text(&ok));
        let switch_segment = files(&a, "wal")
            .into_iter()
            .find(|n| n.starts_with("00000002") && n.ends_with(".wal.open"))
            .expect("a's switch segment");
        assert_eq!(
            old_partial[8..24],
            switch_segment[8..24],
            "b's copy is of the segment where timeline 2 begins"
        );

        let (mut srv_a, addr_a) = serve(&a, "127.0.0.1:0", &NET, &root.join("serve-a.log"));
        let env: Vec<(&str, &str)> = fault.iter().map(|f| ("FAILPOINTS", *f)).collect();
        let mut sb =
            common::standby_with_env(&b, &addr_a, &["--name", "b"], &env, &root.join("b2.log"));
        write_records(&a, 30, "d");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !acknowledged(&a, "b") {
            if std::time::Instant::now() > deadline {
                panic!(
                    "b did not acknowledge a's records; its log:\n{}",
                    std::fs::read_to_string(root.join("b2.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        sb.kill();
        srv_a.kill();

        let wal = files(&b, "wal");
        assert!(
            !wal.contains(&old_partial),
            "no copy left under timeline 1's name: {wal:?}"
        );
        assert!(
            wal.iter()
                .any(|n| n.get(8..24) == switch_segment.get(8..24) && n.starts_with("00000002")),
            "b's copy of the switch segment is named with timeline 2: {wal:?}"
        );
        assert_eq!(status(&b)["timeline"].as_u64(), Some(2));
        // The copy holds the switch segment byte for byte up to a's durable end: the header
        // with timeline 2, the old timeline's records, then a's.
        let end = status(&a)["flush_lsn"].as_u64().expect("flush_lsn");
        let seg_no = u64::from_str_radix(&switch_segment[8..24], 16).expect("segment number");
        let len = usize::try_from(end - seg_no * 64 * 1024).expect("length");
        let copy = wal
            .iter()
            .find(|n| n.starts_with("00000002") && n.get(8..24) == switch_segment.get(8..24))
            .expect("b's copy");
        let ours = std::fs::read(b.join("wal").join(copy)).expect("b's copy");
        let theirs = std::fs::read(a.join("wal").join(&switch_segment)).expect("a's segment");
        assert!(
            ours.len() >= len && ours[..len] == theirs[..len],
            "b's copy of the switch segment equals a's up to {end}"
        );
        if fault.is_some() {
            let log = std::fs::read_to_string(root.join("b2.log")).expect("log");
            assert!(
                log.contains(&format!(
                    "{}.wal.partial: Input/output error",
                    &switch_segment[..24]
                )),
                "the injected fault is reported: {log}"
            );
        }
    }
}

/// A promotion refused for its input writes nothing: no intent is left that a later promotion
/// would take up.
#[test]
fn a_promotion_refused_for_its_reason_leaves_nothing_behind() {
    let t = tempfile::tempdir().expect("tempdir");
    let (sb, _) = killed_standby(t.path());
    let before = common::files_under(&sb);
    let long = "x".repeat(1100);
    let out = walship(&["promote", p(&sb), "--reason", &long]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    assert!(
        common::text(&out)
            .contains("the reason is 1100 bytes, at most 1024: give a shorter --reason"),
        "{}",
        common::text(&out)
    );
    assert!(common::files_under(&sb) == before, "the directory changed");
}

/// The intent of a promotion killed before its history file was written: a standby started on
/// the directory again clears it and follows its primary (a promotion taken up later would
/// otherwise trust a timeline the standby received from elsewhere); one whose history file
/// exists is a promotion under way, and the standby refuses to start, saying how to finish it.
#[test]
fn a_standby_clears_an_abandoned_promotion_and_refuses_one_under_way() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    let (primary, sb) = (root.join("primary"), root.join("standby"));
    common::streamed_then_stopped(&primary, &sb, root, "p");
    let intent = sb.join("state/promotion");
    std::fs::write(&intent, "2\n").expect("write the intent");
    let (_srv, addr) = serve(&primary, "127.0.0.1:0", &NET, &root.join("serve2.log"));
    write_records(&primary, 10, "later");
    common::seal(&primary);
    let mut s = common::standby(&sb, &addr, &[], &root.join("s2.log"));
    common::wait_caught_up(&primary, &sb);
    s.kill();
    assert!(!intent.exists(), "the abandoned intent is cleared");

    // Under way: its history file written.
    let copy = root.join("copy");
    common::copy_tree(&sb, &copy);
    let reference = root.join("reference");
    common::copy_tree(&sb, &reference);
    // A wait longer than the clock can count is no limit, not a crash.
    let out = walship(&["promote", p(&reference), "--timeout", &u64::MAX.to_string()]);
    assert!(out.status.success(), "{}", common::text(&out));
    std::fs::copy(
        reference.join("wal/00000002.history"),
        copy.join("wal/00000002.history"),
    )
    .expect("copy the history");
    std::fs::write(copy.join("state/promotion"), "2\n").expect("write the intent");
    let mut s = common::standby(&copy, &addr, &[], &root.join("s3.log"));
    assert_eq!(s.wait_exit(), 1, "{}", s.log());
    assert!(
        s.log().contains("a promotion of")
            && s.log().contains("to timeline 2 is under way")
            && s.log().contains("walship promote"),
        "{}",
        s.log()
    );
    let out = walship(&["promote", p(&copy)]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(status(&copy)["timeline"].as_u64(), Some(2));
}
