//! The replication port and the files under attack: token file permissions, the handshake
//! deadline against silent and trickling clients, the pre-authentication frame limit, the
//! connection bound under a flood, a hostile primary, and the modes of created directories.
//! Real `walship` processes on loopback TCP; every loop is bounded and every test stops by itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use walship::replication::messages::{ErrorCode, Message, MAGIC, PROTOCOL_VERSION};
use walship::replication::{codec, frame};

mod common;
use common::{bin, ok, p, spawn, wait_until, walship, Proc, WAIT};

/// Starts `walship serve` on a free loopback port and returns it with its address.
fn serve(dir: &Path, extra: &[&str], log: &Path) -> (Proc, String) {
    common::serve(dir, "127.0.0.1:0", extra, log)
}

fn standby(dir: &Path, primary: &str, extra: &[&str], log: &Path) -> Proc {
    let mut args = vec![
        "standby",
        p(dir),
        "--primary",
        primary,
        "--max-backoff",
        "200ms",
        "--heartbeat-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    spawn(&args, log)
}

fn token_file(dir: &Path, name: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, "correct horse\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A primary with two sealed segments of records.
fn primary(dir: &Path) {
    ok(&["init", p(dir), "--segment-size", "64KiB"]);
    for round in 0..2 {
        let mut child = Command::new(bin())
            .args(["write", p(dir), "--durable"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let lines: String = (0..200).map(|i| format!("r{round}-{i:06}\n")).collect();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        ok(&["seal", p(dir)]);
    }
}

fn sealed_segments(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("wal")).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        })
        .count()
    })
}

fn send(s: &mut TcpStream, m: &Message<'_>) {
    s.write_all(&frame::encode_frame(m).unwrap()).unwrap();
}

/// Reads one frame body; None at the end of the stream (or a reset).
fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

/// Reads frames until the peer closes; returns the Error it sent, if any.
fn error_then_close(s: &mut TcpStream) -> Option<(ErrorCode, String)> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut err = None;
    while let Some(body) = read_frame(s) {
        if let Ok(Message::Error { code, message }) = codec::decode(&body) {
            err = Some((code, message.to_string()));
        }
    }
    err
}

fn hello() -> Message<'static> {
    Message::Hello {
        magic: MAGIC,
        protocol_version: PROTOCOL_VERSION,
        nonce: [7; 32],
    }
}

#[test]
fn token_file_open_to_group_or_others_stops_serve_and_standby_with_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("primary");
    ok(&["init", p(&dir), "--segment-size", "64KiB"]);
    for mode in [0o640, 0o604, 0o660, 0o644] {
        let tok = token_file(t.path(), &format!("token{mode:o}"), mode);
        let out = walship(&[
            "serve",
            p(&dir),
            "--listen",
            "127.0.0.1:0",
            "--auth-token-file",
            p(&tok),
        ]);
        assert_eq!(out.status.code(), Some(2), "serve with a {mode:o} token");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("readable by group or others") && err.contains(&format!("{mode:o}")),
            "{err}"
        );
        let out = walship(&[
            "standby",
            p(&t.path().join("sb")),
            "--primary",
            "127.0.0.1:1",
            "--auth-token-file",
            p(&tok),
        ]);
        assert_eq!(out.status.code(), Some(2), "standby with a {mode:o} token");
        assert!(String::from_utf8_lossy(&out.stderr).contains("readable by group or others"));
        assert!(
            !t.path().join("sb").exists(),
            "a refused standby creates nothing"
        );
    }
    // Owner-only files are accepted.
    for mode in [0o600, 0o400] {
        let tok = token_file(t.path(), &format!("token{mode:o}"), mode);
        let (_srv, _addr) = serve(
            &dir,
            &["--auth-token-file", p(&tok)],
            &t.path().join(format!("serve{mode:o}.log")),
        );
    }
}

#[test]
fn silent_trickling_and_oversized_clients_are_dropped_before_authenticating() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("primary");
    primary(&dir);
    let tok = token_file(t.path(), "token", 0o600);
    // The peer timeout is far longer than the handshake deadline: only the deadline can end
    // these connections with the message checked below.
    let (srv, addr) = serve(
        &dir,
        &[
            "--auth-token-file",
            p(&tok),
            "--handshake-timeout",
            "2s",
            "--peer-timeout",
            "80s",
        ],
        &t.path().join("serve.log"),
    );

    // Connects and sends nothing.
    let mut silent = TcpStream::connect(&addr).unwrap();
    let (code, msg) = error_then_close(&mut silent).expect("an Error before the close");
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("handshake not completed within 2s"), "{msg}");

    // Sends a valid Hello one byte every 300 ms: 52 bytes would take over 15 s.
    let bytes = frame::encode_frame(&hello()).unwrap();
    let mut trickle = TcpStream::connect(&addr).unwrap();
    let mut reader = trickle.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(error_then_close(&mut reader));
    });
    let mut sent = 0;
    let ended = loop {
        if let Ok(r) = rx.try_recv() {
            break r;
        }
        if sent == bytes.len() {
            break rx.recv_timeout(WAIT).unwrap();
        }
        if trickle.write_all(&bytes[sent..sent + 1]).is_err() {
            break rx.recv_timeout(WAIT).unwrap();
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        sent < bytes.len(),
        "the trickling client was still connected after its whole Hello"
    );
    let (code, msg) = ended.expect("an Error before the close");
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("handshake not completed"), "{msg}");

    // A 1 MiB frame is under the configured maximum but over the handshake's: refused from
    // its length prefix, before authentication, with nothing allocated for it.
    let mut big = TcpStream::connect(&addr).unwrap();
    big.write_all(&(1u32 << 20).to_le_bytes()).unwrap();
    assert_eq!(error_then_close(&mut big), None);
    wait_until("the oversized frame to be logged", || {
        srv.log()
            .contains("frame of 1048576 bytes exceeds the maximum of 4096 bytes")
    });
    // A wrong proof is refused too, and none of this stopped the shipper.
    let mut wrong = TcpStream::connect(&addr).unwrap();
    send(&mut wrong, &hello());
    assert!(matches!(
        codec::decode(&read_frame(&mut wrong).unwrap()).unwrap(),
        Message::Challenge {
            auth_required: true,
            ..
        }
    ));
    send(
        &mut wrong,
        &Message::Auth {
            proof: Some([1; 32]),
        },
    );
    let (code, _) = error_then_close(&mut wrong).unwrap();
    assert_eq!(code, ErrorCode::Auth);
    let sb_dir = t.path().join("standby");
    let _sb = standby(
        &sb_dir,
        &addr,
        &["--auth-token-file", p(&tok)],
        &t.path().join("sb.log"),
    );
    wait_until("the standby to receive both segments", || {
        sealed_segments(&sb_dir) == 2
    });
}

#[test]
fn connection_flood_is_refused_beyond_the_limit_while_a_standby_streams_on() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("primary");
    primary(&dir);
    let (mut srv, addr) = serve(
        &dir,
        &["--max-connections", "4", "--handshake-timeout", "5s"],
        &t.path().join("serve.log"),
    );
    let sb_dir = t.path().join("s1");
    let mut sb = standby(&sb_dir, &addr, &[], &t.path().join("s1.log"));
    wait_until("the standby to receive both segments", || {
        sealed_segments(&sb_dir) == 2
    });

    // 40 connections that never speak: three take the free slots, the rest are refused at once.
    let mut flood: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut busy = 0;
    let mut timed_out = 0;
    for s in &mut flood {
        match error_then_close(s) {
            Some((ErrorCode::Busy, _)) => busy += 1,
            Some((ErrorCode::Protocol, m)) if m.contains("handshake not completed") => {
                timed_out += 1
            }
            other => panic!("unexpected end of a flood connection: {other:?}"),
        }
    }
    assert_eq!((busy, timed_out), (37, 3), "log:\n{}", srv.log());
    assert!(
        srv.log()
            .contains("refused connections: too many connections"),
        "{}",
        srv.log()
    );

    // The established standby was served throughout: it gets the next segment.
    let mut child = Command::new(bin())
        .args(["write", p(&dir), "--durable"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"after the flood\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    ok(&["seal", p(&dir)]);
    wait_until("the standby to receive the third segment", || {
        sealed_segments(&sb_dir) == 3
    });
    assert!(sb.running() && srv.running());
    // The slots are free again: a new standby gets in.
    let s2 = t.path().join("s2");
    let _sb2 = standby(&s2, &addr, &[], &t.path().join("s2.log"));
    wait_until("a second standby to catch up", || sealed_segments(&s2) == 3);
}

/// A fake primary's side of the handshake, up to and including Welcome.
fn fake_handshake(s: &mut TcpStream) {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = read_frame(s).expect("Hello");
    assert!(matches!(codec::decode(&body), Ok(Message::Hello { .. })));
    send(
        s,
        &Message::Challenge {
            protocol_version: PROTOCOL_VERSION,
            nonce: [1; 32],
            auth_required: false,
        },
    );
    let body = read_frame(s).expect("Auth");
    assert!(matches!(
        codec::decode(&body),
        Ok(Message::Auth { proof: None })
    ));
    send(s, &Message::AuthOk { proof: None });
    let body = read_frame(s).expect("Identify");
    assert!(matches!(codec::decode(&body), Ok(Message::Identify { .. })));
    send(
        s,
        &Message::Welcome {
            system_id: [9; 16],
            timeline: 1,
            segment_size: 64 << 10,
            sealed_lsn: walship::Lsn(0),
        },
    );
}

#[test]
fn standby_refuses_impossible_segment_numbers_and_oversized_frames_from_a_primary() {
    let t = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dir = t.path().join("sub").join("standby");
    let mut sb = standby(&dir, &addr, &[], &t.path().join("sb.log"));

    // 1: a segment whose number leaves no room for its end in the LSN space.
    let (mut s, _) = listener.accept().unwrap();
    fake_handshake(&mut s);
    send(
        &mut s,
        &Message::SegmentStart {
            timeline: 1,
            segment_no: u64::MAX,
            len: 1000,
        },
    );
    assert_eq!(error_then_close(&mut s), None);
    wait_until("the refusal to be logged", || {
        sb.log()
            .contains("segment number FFFFFFFFFFFFFFFF lies beyond the end of the LSN space")
    });
    // 2: a 1 GiB frame in place of the Challenge.
    let (mut s, _) = listener.accept().unwrap();
    let _ = read_frame(&mut s);
    s.write_all(&(1u32 << 30).to_le_bytes()).unwrap();
    assert_eq!(error_then_close(&mut s), None);
    wait_until("the refusal to be logged", || {
        sb.log()
            .contains("frame of 1073741824 bytes exceeds the maximum of 4096 bytes")
    });
    // 3: after the handshake, a frame over the standby's maximum (8 MiB by default).
    let (mut s, _) = listener.accept().unwrap();
    fake_handshake(&mut s);
    s.write_all(&(9u32 << 20).to_le_bytes()).unwrap();
    assert_eq!(error_then_close(&mut s), None);
    wait_until("the refusal to be logged", || {
        sb.log()
            .contains("frame of 9437184 bytes exceeds the maximum of 8388608 bytes")
    });
    // It keeps retrying, stored nothing, and made its new directory private.
    let (_s, _) = listener.accept().unwrap();
    assert!(sb.running(), "log:\n{}", sb.log());
    let names: Vec<String> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.is_empty(), "{names:?}");
    let mode = |d: &Path| std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);

    let init_dir = t.path().join("fresh").join("data");
    ok(&["init", p(&init_dir)]);
    assert_eq!(mode(&init_dir), 0o700);
    // An existing directory keeps the mode its owner chose.
    let existing = t.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o750)).unwrap();
    ok(&["init", p(&existing)]);
    assert_eq!(mode(&existing), 0o750);
}

/// A symbolic link planted where walship overwrites a file in place (the lock file, the
/// published durable position) is refused or left alone: never written through, so the file it
/// points at (here a sealed segment) keeps every byte.
#[test]
fn links_at_files_written_in_place_are_never_written_through() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("data");
    common::init(&dir);
    common::write_records(&dir, 1400, "a");
    let sealed = dir.join("wal").join(&common::sealed_files(&dir)[0]);
    let bytes = std::fs::read(&sealed).unwrap();
    let link = |at: &Path| {
        let _ = std::fs::remove_file(at);
        std::os::unix::fs::symlink(&sealed, at).unwrap();
    };

    link(&dir.join("LOCK"));
    let out = common::run(&["write", p(&dir), "--durable"], b"x\n");
    assert_eq!(common::code(&out), 1, "{}", common::text(&out));
    assert!(
        common::text(&out).contains("LOCK is a symbolic link"),
        "{}",
        common::text(&out)
    );
    assert!(
        std::fs::read(&sealed).unwrap() == bytes,
        "the lock's link target"
    );
    std::fs::remove_file(dir.join("LOCK")).unwrap();

    link(&dir.join("state/flush_position"));
    let out = common::run(&["write", p(&dir), "--durable"], b"y\n");
    assert_eq!(common::code(&out), 0, "{}", common::text(&out));
    assert!(
        std::fs::read(&sealed).unwrap() == bytes,
        "the position's link target"
    );
    ok(&["verify", p(&dir)]);
}

/// A token file, a file of the token directory or a TLS key that is a FIFO is refused at once,
/// naming it, never a read that waits for a writer for ever.
#[test]
fn a_fifo_given_as_a_secret_is_refused_at_once() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    ok(&["init", p(&dir)]);
    let fifo = t.path().join("fifo");
    let tokens = t.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    for f in [&fifo, &tokens.join("s1")] {
        let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
    let ca = common::certs::Ca::new(t.path(), "ca");
    let cert = ca.issue(t.path(), "primary", &["localhost"]).cert;
    let cases: [(Vec<&str>, &Path); 3] = [
        (vec!["--auth-token-file", p(&fifo)], &fifo),
        (vec!["--token-dir", p(&tokens)], &tokens),
        (vec!["--tls-cert", p(&cert), "--tls-key", p(&fifo)], &fifo),
    ];
    for (extra, named) in cases {
        let mut args = vec!["serve", p(&dir), "--listen", "127.0.0.1:0"];
        args.extend_from_slice(&extra);
        let log = t.path().join("serve.log");
        let mut proc = spawn(&args, &log);
        assert_eq!(proc.wait_exit(), 2, "{extra:?}: {}", proc.log());
        let said = proc.log();
        assert!(
            said.contains(p(named)) && said.contains("FIFO, not a regular file"),
            "{extra:?}: {said}"
        );
    }
}
