//! Replication end to end: real `walship` processes on loopback TCP, killed with SIGKILL where
//! a test says so. Segments are 64 KiB to keep every test fast.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::proxy::{Proxy, ProxyMode};
use common::{
    init, ok, p, seal, sealed_files, status, wait_until, walship, write_records, Proc, NET, WAIT,
};

/// Starts `walship serve` (with the fast network settings) and returns it with its address.
fn serve(dir: &Path, listen: &str, extra: &[&str], log: &Path) -> (Proc, String) {
    let mut args = NET.to_vec();
    args.extend_from_slice(extra);
    common::serve(dir, listen, &args, log)
}

fn read_status(dir: &Path) -> Option<Value> {
    let out = walship(&["status", p(dir), "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Waits until the standby has flushed and applied everything the primary holds, and holds
/// every segment the primary sealed as sealed (checked by name: the positions alone say only
/// that the newest one is there).
fn wait_caught_up(primary: &Path, standby: &Path) -> u64 {
    let theirs = status(primary);
    let flush = theirs["flush_lsn"].as_u64().unwrap();
    let sealed = theirs["sealed_lsn"].as_u64();
    assert!(flush > 0);
    wait_until(
        &format!("{} to catch up to {flush}", standby.display()),
        || {
            read_status(standby).is_some_and(|s| {
                s["flush_lsn"].as_u64() == Some(flush)
                    && s["applied_lsn"].as_u64() == Some(flush)
                    && s["sealed_lsn"].as_u64() == sealed
            }) && sealed_files(standby) == sealed_files(primary)
        },
    );
    flush
}

/// Every sealed segment of the primary is on the standby, byte for byte, and nothing else.
fn assert_identical(primary: &Path, standby: &Path) {
    let a = sealed_files(primary);
    assert!(!a.is_empty());
    assert_eq!(a, sealed_files(standby), "sealed segment lists differ");
    for f in &a {
        let x = std::fs::read(primary.join("wal").join(f)).unwrap();
        let y = std::fs::read(standby.join("wal").join(f)).unwrap();
        assert!(
            x == y,
            "{f} differs between {} and {}",
            primary.display(),
            standby.display()
        );
    }
}

fn verify_ok(dir: &Path) {
    let out = walship(&["verify", p(dir)]);
    assert!(
        out.status.success(),
        "verify {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn partials(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("wal"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal.partial"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn several_standbys_receive_identical_segments_and_catch_up() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    init(&primary);
    let (srv, addr) = serve(&primary, "127.0.0.1:0", &[], &t.path().join("serve.log"));
    // One standby starts before there is any WAL at all: it must wait, then follow.
    let early = t.path().join("early");
    let _e = common::standby(&early, &addr, &[], &t.path().join("early.log"));
    write_records(&primary, 3000, "a");
    seal(&primary);
    let names = ["s1", "s2"];
    let _late: Vec<Proc> = names
        .iter()
        .map(|n| {
            common::standby(
                &t.path().join(n),
                &addr,
                &[],
                &t.path().join(format!("{n}.log")),
            )
        })
        .collect();
    for round in 0..3 {
        write_records(&primary, 1500, &format!("r{round}"));
        seal(&primary);
    }
    let flush = status(&primary)["flush_lsn"].as_u64().unwrap();
    for n in ["early", "s1", "s2"] {
        let dir = t.path().join(n);
        assert_eq!(wait_caught_up(&primary, &dir), flush);
        assert_identical(&primary, &dir);
        verify_ok(&dir);
        let s = status(&dir);
        assert_eq!(s["role"], "standby");
        assert_eq!(s["system_id"], status(&primary)["system_id"]);
        assert_eq!(s["applied_lsn"].as_u64(), Some(flush));
    }
    // The primary knows all three standbys, each caught up, in its slots.
    wait_until(
        "the primary's slots to show every standby caught up",
        || {
            let s = status(&primary);
            let sb = s["standbys"].as_array().unwrap();
            sb.len() == 3
                && sb.iter().all(|x| {
                    x["applied_lsn"].as_u64() == Some(flush)
                        && x["flushed_lsn"].as_u64() == Some(flush)
                        && x["lag_bytes"].as_u64() == Some(0)
                        && x["connected"] == true
                })
        },
    );
    let s = status(&primary);
    assert_eq!(s["role"], "primary");
    for x in s["standbys"].as_array().unwrap() {
        let id = x["id"].as_str().unwrap();
        let owner = ["early", "s1", "s2"]
            .iter()
            .find(|n| status(&t.path().join(n))["standby_id"] == id);
        assert!(owner.is_some(), "slot {id} belongs to no standby");
    }
    // Text form shows positions as X/Y.
    let text = ok(&["status", p(&primary)]);
    assert!(text.contains(&format!(
        "flush_lsn: {:X}/{:08X}",
        flush >> 32,
        flush & 0xffff_ffff
    )));
    drop(srv);
}

#[test]
fn standby_killed_mid_segment_converges_without_trusting_its_partial() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    init(&primary);
    write_records(&primary, 12000, "k");
    seal(&primary);
    let (_srv, addr) = serve(&primary, "127.0.0.1:0", &[], &t.path().join("serve.log"));
    // A slow link: each segment takes a while to arrive, so a kill lands mid-segment.
    let slow = Proxy::to(
        &addr,
        ProxyMode {
            throttle: Some(4 << 10),
            ..ProxyMode::default()
        },
    );
    let sdir = t.path().join("standby");
    let mut applied_seen = 0u64;
    for round in 0..3 {
        let log = t.path().join(format!("standby{round}.log"));
        let mut sb = common::standby(&sdir, &slow.addr, &[], &log);
        if round > 0 {
            // The partial left by the kill is never trusted unchecked: it is checked and
            // continued from its valid prefix, or discarded when it holds no whole record.
            wait_until("the leftover partial to be checked", || {
                let log = sb.log();
                log.contains("discarding a partial") || log.contains("taking up the partial copy")
            });
        }
        let a = read_status(&sdir)
            .and_then(|s| s["applied_lsn"].as_u64())
            .unwrap_or(0);
        assert!(
            a >= applied_seen,
            "applied_lsn went backwards: {a} < {applied_seen}"
        );
        applied_seen = a;
        // Hold the link while a segment is in flight, so that the kill lands mid-segment.
        wait_until("a segment to be held in flight", || {
            slow.paused.store(false, Ordering::Relaxed);
            if !(sb.log().contains("streaming from the primary") && partials(&sdir) > 0) {
                return false;
            }
            slow.paused.store(true, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(200));
            partials(&sdir) > 0
        });
        sb.kill();
        slow.paused.store(false, Ordering::Relaxed);
        assert!(
            partials(&sdir) > 0,
            "the kill should leave a partial segment"
        );
        // What carries a sealed name is whole and checked.
        verify_ok(&sdir);
    }
    // Restart on a direct link and let it converge.
    let log = t.path().join("final.log");
    let _sb = common::standby(&sdir, &addr, &[], &log);
    let flush = wait_caught_up(&primary, &sdir);
    assert!(flush >= applied_seen);
    assert_eq!(partials(&sdir), 0);
    assert_identical(&primary, &sdir);
    verify_ok(&sdir);
}

#[test]
fn serve_killed_and_restarted_standbys_reconnect_and_converge() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    init(&primary);
    write_records(&primary, 3000, "a");
    seal(&primary);
    let (mut srv, addr) = serve(&primary, "127.0.0.1:0", &[], &t.path().join("serve1.log"));
    let dirs: Vec<PathBuf> = ["s1", "s2"].iter().map(|n| t.path().join(n)).collect();
    let _sbs: Vec<Proc> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| common::standby(d, &addr, &[], &t.path().join(format!("s{i}.log"))))
        .collect();
    for d in &dirs {
        wait_caught_up(&primary, d);
    }
    srv.kill();
    // The primary goes on writing while no one serves it.
    write_records(&primary, 4000, "b");
    seal(&primary);
    let (_srv2, addr2) = serve(&primary, &addr, &[], &t.path().join("serve2.log"));
    assert_eq!(addr, addr2);
    for d in &dirs {
        wait_caught_up(&primary, d);
        assert_identical(&primary, d);
    }
}

#[test]
fn connections_cut_at_random_still_converge() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    init(&primary);
    write_records(&primary, 8000, "c");
    seal(&primary);
    let (_srv, addr) = serve(&primary, "127.0.0.1:0", &[], &t.path().join("serve.log"));
    let flaky = Proxy::to(
        &addr,
        ProxyMode {
            cut_after_max: Some(200_000),
            ..ProxyMode::default()
        },
    );
    let sdir = t.path().join("standby");
    let sb = common::standby(&sdir, &flaky.addr, &[], &t.path().join("standby.log"));
    write_records(&primary, 4000, "d");
    seal(&primary);
    wait_caught_up(&primary, &sdir);
    assert!(
        flaky.cuts.load(Ordering::Relaxed) > 0,
        "the proxy never cut a connection"
    );
    assert!(sb.log().contains("replication connection ended"));
    assert_identical(&primary, &sdir);
    verify_ok(&sdir);
}

#[test]
fn a_primary_of_another_system_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    init(&a);
    init(&b);
    write_records(&b, 500, "b");
    seal(&b);
    write_records(&a, 500, "a");
    seal(&a);
    let sdir = t.path().join("standby");
    {
        let (_srv, addr) = serve(&b, "127.0.0.1:0", &[], &t.path().join("serve-b.log"));
        let _sb = common::standby(&sdir, &addr, &[], &t.path().join("sb1.log"));
        wait_caught_up(&b, &sdir);
    }
    let before = sealed_files(&sdir);
    let (srv, addr) = serve(&a, "127.0.0.1:0", &[], &t.path().join("serve-a.log"));
    let mut sb = common::standby(&sdir, &addr, &[], &t.path().join("sb2.log"));
    assert_eq!(sb.wait_exit(), 2, "log:\n{}", sb.log());
    assert!(sb.log().contains("belongs to system"), "{}", sb.log());
    wait_until("the primary to log the refusal", || {
        srv.log().contains("belongs to system")
    });
    assert_eq!(
        sealed_files(&sdir),
        before,
        "nothing may be stored from a foreign primary"
    );
    assert_eq!(partials(&sdir), 0);
    assert!(status(&a)["standbys"].as_array().unwrap().is_empty());
}

fn token_file(dir: &Path, name: &str, secret: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let f = dir.join(name);
    std::fs::write(&f, secret).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

#[test]
fn tokens_are_checked_on_both_sides() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    init(&primary);
    write_records(&primary, 500, "t");
    seal(&primary);
    let good = token_file(t.path(), "good", "correct horse\n", 0o600);
    let bad = token_file(t.path(), "bad", "battery staple\n", 0o600);
    let open = token_file(t.path(), "open", "correct horse\n", 0o644);

    // A token file others may read is refused at start.
    let out = walship(&[
        "serve",
        p(&primary),
        "--listen",
        "127.0.0.1:0",
        "--auth-token-file",
        p(&open),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by group or others"));
    // Without a token, only loopback.
    let out = walship(&["serve", p(&primary), "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));

    let (srv, addr) = serve(
        &primary,
        "127.0.0.1:0",
        &["--auth-token-file", p(&good)],
        &t.path().join("serve.log"),
    );
    let wrong = t.path().join("wrong");
    let mut sb = common::standby(
        &wrong,
        &addr,
        &["--auth-token-file", p(&bad)],
        &t.path().join("wrong.log"),
    );
    assert_eq!(sb.wait_exit(), 2);
    assert!(
        sb.log().contains("authentication failed: wrong token"),
        "{}",
        sb.log()
    );
    wait_until("the primary to log the wrong token", || {
        srv.log().contains("authentication failed: wrong token")
    });
    assert!(
        !wrong.join("control").exists(),
        "nothing may be stored after a refusal"
    );

    let missing = t.path().join("missing");
    let mut sb = common::standby(&missing, &addr, &[], &t.path().join("missing.log"));
    assert_eq!(sb.wait_exit(), 2);
    assert!(sb.log().contains("authentication required"), "{}", sb.log());
    assert!(!missing.join("control").exists());

    // A standby with a token refuses a primary that has none.
    let (_plain, plain_addr) = serve(&primary, "127.0.0.1:0", &[], &t.path().join("plain.log"));
    let picky = t.path().join("picky");
    let mut sb = common::standby(
        &picky,
        &plain_addr,
        &["--auth-token-file", p(&good)],
        &t.path().join("picky.log"),
    );
    assert_eq!(sb.wait_exit(), 2);
    assert!(sb.log().contains("does not authenticate"), "{}", sb.log());
    assert!(!picky.join("control").exists());

    let right = t.path().join("right");
    let _sb = common::standby(
        &right,
        &addr,
        &["--auth-token-file", p(&good)],
        &t.path().join("right.log"),
    );
    wait_caught_up(&primary, &right);
    assert_identical(&primary, &right);
    assert!(!std::fs::read_to_string(t.path().join("serve.log"))
        .unwrap()
        .contains("correct horse"));
}

/// Sends raw bytes to the server and waits for it to close the connection.
fn expect_closed(addr: &str, bytes: &[u8], half_close: bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(Shutdown::Write).unwrap();
    }
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    // Whatever the server says (an Error frame at most), it must then close.
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(buf.len() < 1024);
}

#[test]
fn bad_frames_close_only_their_connection() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    init(&primary);
    write_records(&primary, 2000, "g");
    seal(&primary);
    let (srv, addr) = serve(&primary, "127.0.0.1:0", &[], &t.path().join("serve.log"));
    let sdir = t.path().join("standby");
    let _sb = common::standby(&sdir, &addr, &[], &t.path().join("standby.log"));
    wait_caught_up(&primary, &sdir);

    // Garbage: an HTTP request read as a length prefix is far over the maximum (4 KiB before
    // authentication).
    expect_closed(&addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    // A frame claiming 4 GiB: refused on its prefix alone.
    expect_closed(&addr, &0xFFFF_FFF0u32.to_le_bytes(), false);
    // A truncated frame: 100 bytes announced, 10 sent, then the writer closes.
    let mut trunc = 100u32.to_le_bytes().to_vec();
    trunc.extend_from_slice(&[1; 10]);
    expect_closed(&addr, &trunc, true);
    // A well-sized frame holding no valid message.
    let mut junk = 8u32.to_le_bytes().to_vec();
    junk.extend_from_slice(&[0xFF; 8]);
    expect_closed(&addr, &junk, false);
    // A Hello with the wrong magic.
    let mut hello = 48u32.to_le_bytes().to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0]);
    hello.extend_from_slice(b"NOTWALSH");
    hello.extend_from_slice(&[1, 0, 0, 0]);
    hello.extend_from_slice(&[0; 32]);
    expect_closed(&addr, &hello, false);

    // A peer that says nothing is dropped after the peer timeout (3 s here).
    expect_closed(&addr, &[], false);

    wait_until("every reason to be logged", || {
        let log = srv.log();
        log.contains("frame of 542393671 bytes exceeds the maximum of 4096 bytes")
            && log.contains("frame of 4294967280 bytes exceeds the maximum")
            && log.contains("truncated frame: the connection closed after 10 of 100 body bytes")
            && log.contains("malformed message")
            && log.contains("bad magic")
            && log.contains("no message from the peer for 3s while waiting for Hello")
    });
    // The standby connected all along keeps being served.
    write_records(&primary, 2000, "h");
    seal(&primary);
    wait_caught_up(&primary, &sdir);
    assert_identical(&primary, &sdir);
}

#[test]
fn a_standby_directory_is_served_onward() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    init(&primary);
    write_records(&primary, 3000, "x");
    seal(&primary);
    let (_srv, addr) = serve(&primary, "127.0.0.1:0", &[], &t.path().join("serve.log"));
    let mid = t.path().join("mid");
    let _a = common::standby(&mid, &addr, &[], &t.path().join("mid.log"));
    wait_caught_up(&primary, &mid);
    let (_srv2, addr2) = serve(&mid, "127.0.0.1:0", &[], &t.path().join("serve-mid.log"));
    let leaf = t.path().join("leaf");
    let _b = common::standby(&leaf, &addr2, &[], &t.path().join("leaf.log"));
    write_records(&primary, 3000, "y");
    seal(&primary);
    let flush = wait_caught_up(&primary, &leaf);
    assert_identical(&primary, &leaf);
    let s = status(&leaf);
    assert_eq!(s["applied_lsn"].as_u64(), Some(flush));
    assert_eq!(s["system_id"], status(&primary)["system_id"]);
    // The middle standby lists the leaf as its own standby.
    wait_until("the middle standby's slot for the leaf", || {
        status(&mid)["standbys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == s["standby_id"] && x["applied_lsn"].as_u64() == Some(flush))
    });
}

#[test]
fn a_silent_primary_is_dropped_and_retried() {
    let t = tempfile::tempdir().unwrap();
    // Accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            match c {
                Ok(c) => held.push(c),
                Err(_) => return,
            }
        }
    });
    let sdir = t.path().join("standby");
    let sb = common::standby(&sdir, &addr, &[], &t.path().join("standby.log"));
    wait_until(
        "the standby to drop the silent primary and try again",
        || {
            let log = sb.log();
            log.contains("no message from the primary for 3s while waiting for Challenge")
                && log.contains("attempt=2")
        },
    );
    assert!(!sdir.join("control").exists());
}

#[test]
fn a_writer_is_refused_on_a_standbys_directory_and_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    let sby = t.path().join("standby");
    // The standby holds sealed segments and its copy of the primary's open segment.
    common::streamed_then_stopped(&primary, &sby, t.path(), "p");
    let before = common::files_under(&sby);
    let applied = status(&sby)["applied_lsn"].as_u64().unwrap();
    assert!(applied > 0);
    let out = common::run(&["write", p(&sby), "--durable"], b"rogue\n");
    assert_eq!(common::code(&out), 1, "{}", common::text(&out));
    assert!(
        common::text(&out).contains("is a standby's data directory"),
        "{}",
        common::text(&out)
    );
    assert!(
        common::files_under(&sby) == before,
        "the standby's files are as they were"
    );
    assert_eq!(status(&sby)["applied_lsn"].as_u64(), Some(applied));
}

#[test]
fn a_standbys_status_counts_the_records_of_its_copy_of_the_open_segment() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    let sby = t.path().join("standby");
    // Everything acknowledged, part of it in the primary's open segment.
    common::streamed_then_stopped(&primary, &sby, t.path(), "p");
    let theirs = status(&primary);
    let ours = status(&sby);
    let flush = ours["flush_lsn"].as_u64().unwrap();
    assert!(flush > ours["sealed_lsn"].as_u64().unwrap(), "{ours}");
    assert_eq!(Some(flush), theirs["flush_lsn"].as_u64(), "{ours}");
    assert!(ours["applied_lsn"].as_u64().unwrap() <= flush, "{ours}");
    // `dump` shows those records, as the primary's, and `verify` counts them.
    let dump = |d: &std::path::Path| walship(&["dump", p(d)]);
    let (a, b) = (dump(&primary), dump(&sby));
    assert!(
        a.status.success() && b.status.success(),
        "{}",
        common::text(&b)
    );
    assert!(
        a.stdout == b.stdout,
        "the standby's records are the primary's"
    );
    let v = walship(&["verify", p(&sby), "--json"]);
    assert!(v.status.success(), "{}", common::text(&v));
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let records = common::read_all(&primary).unwrap().len() as u64;
    assert_eq!(v["records"].as_u64(), Some(records), "{v}");
    assert_eq!(v["end_lsn"].as_u64(), Some(flush), "{v}");
}

/// A standby pointed at the `serve` of its own directory (a primary's) is refused at once and
/// changes nothing: it would otherwise take the directory for a standby's and stop its writer.
#[test]
fn a_standby_pointed_at_its_own_directorys_serve_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    common::init(&dir);
    common::write_records(&dir, 30, "a");
    common::seal(&dir);
    common::write_records(&dir, 5, "open");
    let (mut srv, addr) = common::serve(&dir, "127.0.0.1:0", &common::NET, &t.path().join("s.log"));
    // Refused with `code`, saying `says`, and nothing in wal/ changed.
    let refused = |sb: &mut common::Proc, code: i32, says: &str, before| {
        assert_eq!(sb.wait_exit(), code, "{}", sb.log());
        assert!(sb.log().contains(says), "{}", sb.log());
        assert!(
            common::files_under(&dir.join("wal")) == before,
            "wal/ changed"
        );
    };
    let before = common::files_under(&dir.join("wal"));
    let mut sb = common::standby(&dir, &addr, &[], &t.path().join("sb.log"));
    refused(
        &mut sb,
        1,
        "is being served by a running `walship serve`",
        before,
    );
    assert!(!dir.join("state/standby.json").exists());
    common::write_records(&dir, 1, "still a primary");
    srv.kill();
    // The mark goes with the serve that held it.
    assert!(!walship::DataDir::new(&dir).is_served().unwrap());

    // The serve started after the standby: refused at its next connection.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let before = common::files_under(&dir.join("wal"));
    let mut sb = common::standby(&dir, &addr, &[], &t.path().join("sb2.log"));
    common::wait_until("the standby to try the address", || {
        sb.log().contains("connecting to the primary")
    });
    let (mut srv, _) = common::serve(&dir, &addr, &common::NET, &t.path().join("s2.log"));
    refused(
        &mut sb,
        2,
        "a standby may not follow its own directory",
        before,
    );
    srv.kill();
}

/// A standby's directory served to cascaded standbys, its standby pointed at that very serve
/// (at any address it listens on): refused, and it keeps its primary.
#[test]
fn a_cascading_standby_pointed_at_its_own_serve_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (dir, sdir) = (t.path().join("p"), t.path().join("s"));
    common::init(&dir);
    common::write_records(&dir, 30, "a");
    common::seal(&dir);
    let (mut srv, addr) = common::serve(&dir, "127.0.0.1:0", &common::NET, &t.path().join("p.log"));
    let mut sb = common::standby(&sdir, &addr, &[], &t.path().join("s.log"));
    common::wait_caught_up(&dir, &sdir);
    sb.kill();
    let meta = std::fs::read(sdir.join("state/standby.json")).unwrap();
    let (mut cascade, listening) = common::serve(
        &sdir,
        "0.0.0.0:0",
        &[
            "--insecure",
            "--heartbeat-interval",
            "200ms",
            "--peer-timeout",
            "3s",
        ],
        &t.path().join("c.log"),
    );
    // It listens on every address; the standby is given the loopback one.
    let port = listening.rsplit(':').next().unwrap();
    let mut sb = common::standby(
        &sdir,
        &format!("127.0.0.1:{port}"),
        &[],
        &t.path().join("s2.log"),
    );
    assert_eq!(sb.wait_exit(), 2, "{}", sb.log());
    assert!(
        sb.log()
            .contains("a standby may not follow its own directory"),
        "{}",
        sb.log()
    );
    assert_eq!(
        std::fs::read(sdir.join("state/standby.json")).unwrap(),
        meta
    );
    cascade.kill();
    srv.kill();
}

/// Asked to stop while its primary does not answer the handshake, a standby stops at once
/// (exit 0), not after its stop bound runs out.
#[test]
fn a_standby_stops_at_once_while_its_primary_does_not_answer() {
    let t = tempfile::tempdir().unwrap();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    // Accepts and holds every connection, saying nothing.
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(1).flatten() {
            conns.push(c);
            std::thread::sleep(Duration::from_secs(20));
        }
    });
    // A peer timeout longer than the standby's stop bound: only a stop that does not wait
    // for the handshake ends it in time.
    let dir = t.path().join("s");
    let mut sb = common::spawn(
        &[
            "standby",
            p(&dir),
            "--primary",
            &addr,
            "--peer-timeout",
            "60s",
        ],
        &t.path().join("s.log"),
    );
    common::wait_until("the standby to connect", || {
        sb.log().contains("connecting to the primary")
    });
    std::thread::sleep(Duration::from_millis(300));
    let pid = i32::try_from(sb.child.id()).unwrap();
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(sb.wait_exit(), 0, "{}", sb.log());
    assert!(!sb.log().contains("did not stop within"), "{}", sb.log());
    drop(held);
}
