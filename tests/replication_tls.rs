//! Replication over TLS and per-standby identities: real `walship serve` and `walship standby`
//! processes on loopback TCP, with certificates made in the test. Each refusal is checked on
//! both sides, by the check it names, with nothing stored.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
use common::certs::{Ca, Issued};
use common::proxy::{Proxy, ProxyMode};
use common::{
    init, p, seal, status, wait_caught_up, wait_until, walship, write_records, Proc, NET,
};

const NAME: &str = "primary.test";

fn serve(dir: &Path, extra: &[&str], log: &Path) -> (Proc, String) {
    let mut args = NET.to_vec();
    args.extend_from_slice(extra);
    common::serve(dir, "127.0.0.1:0", &args, log)
}

fn tls_serve(dir: &Path, cert: &Issued, extra: &[&str], log: &Path) -> (Proc, String) {
    let mut args = vec!["--tls-cert", p(&cert.cert), "--tls-key", p(&cert.key)];
    args.extend_from_slice(extra);
    serve(dir, &args, log)
}

/// Waits until every standby the primary knows acknowledged its durable position: the open
/// segment was streamed.
fn wait_streamed(primary: &Path, standbys: usize) {
    wait_until(
        "the standbys to acknowledge the primary's durable position",
        || {
            let s = status(primary);
            let flush = s["flush_lsn"].as_u64();
            s["standbys"].as_array().is_some_and(|a| {
                a.len() == standbys && a.iter().all(|sb| sb["flushed_lsn"].as_u64() == flush)
            })
        },
    );
}

fn primary_with(t: &Path, segments: usize) -> PathBuf {
    let dir = t.join("primary");
    init(&dir);
    for i in 0..segments {
        write_records(&dir, 300, &format!("s{i}"));
        seal(&dir);
    }
    dir
}

/// A standby that must be refused: it exits 2 and its log says `why`; nothing was stored.
fn refused(dir: &Path, addr: &str, extra: &[&str], log: &Path, why: &str) {
    let mut sb = common::standby(dir, addr, extra, log);
    assert_eq!(sb.wait_exit(), 2, "{}", sb.log());
    assert!(sb.log().contains(why), "want {why:?} in:\n{}", sb.log());
    assert!(
        !dir.join("control").exists(),
        "nothing may be stored after a refusal"
    );
}

#[test]
fn tls_replicates_identically_and_each_failed_check_is_named_on_both_sides() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let primary = primary_with(d, 2);
    let ca = Ca::new(d, "ca");
    let other_ca = Ca::new(d, "other-ca");
    let server = ca.issue(d, "primary", &[NAME]);
    let a = ca.issue(d, "standby-a", &["standby-a"]);
    let rogue = other_ca.issue(d, "rogue", &["standby-r"]);
    let (srv, addr) = tls_serve(
        &primary,
        &server,
        &["--tls-client-ca", p(&ca.cert)],
        &d.join("serve.log"),
    );
    let tls = |c: &Issued, name: &str| -> Vec<String> {
        [
            "--tls-ca",
            p(&ca.cert),
            "--tls-cert",
            p(&c.cert),
            "--tls-key",
            p(&c.key),
            "--tls-server-name",
            name,
            "--name",
            "standby-a",
        ]
        .map(str::to_string)
        .to_vec()
    };

    // The right CA and name: sealed segments byte for byte, then the open segment streamed.
    let good = d.join("good");
    let g = tls(&a, NAME);
    let g: Vec<&str> = g.iter().map(String::as_str).collect();
    let mut sb = common::standby(&good, &addr, &g, &d.join("good.log"));
    wait_caught_up(&primary, &good);
    write_records(&primary, 50, "open");
    wait_streamed(&primary, 1);
    write_records(&primary, 300, "more");
    seal(&primary);
    wait_caught_up(&primary, &good);
    wait_until("the primary to log the standby's name", || {
        srv.log().contains("name=standby-a") && srv.log().contains("tls=true")
    });
    sb.kill();

    // A standby authenticated as another name may not take over standby-a's slot: here a
    // copy of standby-a's directory (its id) started with standby-b's certificate.
    let b = ca.issue(d, "standby-b", &["standby-b"]);
    let impostor = d.join("impostor");
    common::copy_tree(&good, &impostor);
    let held_before = common::names(&impostor.join("wal"));
    let mut as_b = tls(&b, NAME);
    let n = as_b.len();
    as_b[n - 1] = "standby-b".into();
    let as_b: Vec<&str> = as_b.iter().map(String::as_str).collect();
    let mut sb = common::standby(&impostor, &addr, &as_b, &d.join("impostor.log"));
    assert_eq!(sb.wait_exit(), 2, "{}", sb.log());
    let both = "the standby authenticated as \"standby-b\" presents the id";
    let owner = "whose slot belongs to the standby \"standby-a\"";
    assert!(
        sb.log().contains(both) && sb.log().contains(owner),
        "{}",
        sb.log()
    );
    wait_until("the primary to log the refused take-over", || {
        srv.log().contains(both) && srv.log().contains(owner)
    });
    assert_eq!(common::names(&impostor.join("wal")), held_before);
    let slots = status(&primary)["standbys"].clone();
    assert!(
        slots
            .as_array()
            .is_some_and(|v| v.iter().all(|s| s["name"] == "standby-a")),
        "{slots}"
    );

    // Each refusal: (what is wrong, the standby's arguments, what the standby says, what the
    // primary logs, if it learns of it).
    let owned = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    let mut liar = tls(&a, NAME);
    let n = liar.len();
    liar[n - 1] = "standby-z".into();
    let cases: Vec<(&str, Vec<String>, &str, Option<&str>)> = vec![
        (
            // The primary's certificate is not signed by the CA the standby trusts.
            "wrong-ca",
            owned(&["--tls-ca", p(&other_ca.cert), "--tls-cert", p(&a.cert), "--tls-key", p(&a.key), "--tls-server-name", NAME]),
            "the primary's certificate was refused: it is not signed by a CA in --tls-ca (unknown issuer)",
            Some("the standby refused the connection: it does not trust the CA that signed this primary's certificate"),
        ),
        (
            // The name the standby expects is not in the primary's certificate.
            "wrong-name",
            tls(&a, "elsewhere.test"),
            "it is not valid for the expected name",
            Some("not valid for the name the standby connects to"),
        ),
        (
            // No client certificate where one is required.
            "anonymous",
            owned(&["--tls-ca", p(&ca.cert), "--tls-server-name", NAME]),
            "it requires a client certificate",
            Some("the standby presented no client certificate"),
        ),
        (
            // A client certificate from another CA.
            "rogue",
            owned(&["--tls-ca", p(&ca.cert), "--tls-cert", p(&rogue.cert), "--tls-key", p(&rogue.key), "--tls-server-name", NAME]),
            "it does not trust the CA that signed this standby's certificate",
            Some("the standby's client certificate was refused: it is not signed by a CA in --tls-client-ca"),
        ),
        (
            // A standby may not call itself other than its certificate names it.
            "liar",
            liar,
            "calls itself \"standby-z\", but its credentials name it \"standby-a\"",
            None,
        ),
    ];
    for (what, args, standby_says, primary_logs) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = d.join(format!("{what}.log"));
        refused(&d.join(what), &addr, &args, &log, standby_says);
        if let Some(text) = primary_logs {
            wait_until(&format!("the primary to log the refusal ({what})"), || {
                srv.log().contains(text)
            });
        }
    }

    // A plain standby gets nowhere and stores nothing either, and says why.
    let mut plain = common::standby(&d.join("plain"), &addr, &[], &d.join("plain.log"));
    wait_until("the plain standby to name the mismatch", || {
        plain.log().contains("the peer speaks TLS")
    });
    plain.kill();
    assert!(!d.join("plain").join("control").exists());

    // The other way round: a standby with TLS at a plain port is told the primary may lack it.
    let (mut plain_srv, plain_addr) = serve(&primary, &[], &d.join("serve-plain.log"));
    let mut tls_sb = common::standby(
        &d.join("tls-at-plain"),
        &plain_addr,
        &["--tls-ca", p(&ca.cert), "--tls-server-name", NAME],
        &d.join("tls-at-plain.log"),
    );
    wait_until("the TLS standby to name the mismatch", || {
        tls_sb
            .log()
            .contains("a primary without --tls-cert speaks plain TCP")
    });
    wait_until("the plain primary to name the mismatch", || {
        plain_srv.log().contains("the peer speaks TLS")
    });
    tls_sb.kill();
    plain_srv.kill();
}

#[test]
fn certificates_out_of_their_validity_are_refused_at_start_and_when_they_expire() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let primary = primary_with(d, 1);
    let ca = Ca::new(d, "ca");
    let old = ca.issue_for(
        d,
        "old",
        &[NAME],
        (
            rcgen::date_time_ymd(2001, 1, 1),
            rcgen::date_time_ymd(2002, 1, 1),
        ),
    );
    let out = walship(&[
        "serve",
        p(&primary),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        p(&old.cert),
        "--tls-key",
        p(&old.key),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expired at 2002-01-01"), "{err}");
    let out = walship(&[
        "standby",
        p(&d.join("sb")),
        "--primary",
        "127.0.0.1:9",
        "--tls-ca",
        p(&ca.cert),
        "--tls-cert",
        p(&old.cert),
        "--tls-key",
        p(&old.key),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired at 2002-01-01"));
    assert!(!d.join("sb").exists());

    // A certificate that expires while the primary runs: a standby connecting afterwards
    // refuses it, and the primary is told why.
    let now = time::OffsetDateTime::now_utc();
    let brief = ca.issue_for(
        d,
        "brief",
        &[NAME],
        (
            now - time::Duration::days(1),
            now + time::Duration::seconds(3),
        ),
    );
    let (srv, addr) = tls_serve(
        &primary,
        &brief,
        &["--auth-token-file", p(&token(d, "t", "secret"))],
        &d.join("serve.log"),
    );
    std::thread::sleep(Duration::from_secs(4));
    refused(
        &d.join("late"),
        &addr,
        &[
            "--tls-ca",
            p(&ca.cert),
            "--tls-server-name",
            NAME,
            "--auth-token-file",
            p(&token(d, "t2", "secret")),
        ],
        &d.join("late.log"),
        "the primary's certificate was refused: it has expired",
    );
    wait_until(
        "the primary to log the refusal of its expired certificate",
        || {
            srv.log()
                .contains("the standby refused the connection: our certificate has expired")
        },
    );
}

fn token(dir: &Path, name: &str, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let f = dir.join(name);
    std::fs::write(&f, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

#[test]
fn a_flipped_byte_in_the_tls_stream_fails_the_connection_and_nothing_forged_is_stored() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let primary = primary_with(d, 3);
    let ca = Ca::new(d, "ca");
    let server = ca.issue(d, "primary", &[NAME]);
    let (srv, addr) = tls_serve(&primary, &server, &[], &d.join("serve.log"));
    // The TLS handshake is a few kilobytes; byte 30000 of the stream is inside segment data.
    let proxy = Proxy::to(
        &addr,
        ProxyMode {
            flip_first_at: Some(30_000),
            ..ProxyMode::default()
        },
    );
    let sb = d.join("standby");
    let stb = common::standby(
        &sb,
        &proxy.addr,
        &["--tls-ca", p(&ca.cert), "--tls-server-name", NAME],
        &d.join("standby.log"),
    );
    wait_until("the standby to see the altered record", || {
        stb.log().contains("failed its integrity check")
    });
    // The standby retries through the proxy, which alters only its first connection: every
    // segment is stored as the primary has it, and no damage was reported by anyone, because
    // the altered bytes never reached the segment checks.
    wait_caught_up(&primary, &sb);
    let slog = stb.log();
    assert!(!slog.contains("DAMAGE"), "{slog}");
    assert!(!srv.log().contains("DAMAGE"), "{}", srv.log());
    assert!(walship(&["verify", p(&sb)]).status.success());
}

#[test]
fn revoking_one_standby_cuts_only_that_standby() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let primary = primary_with(d, 1);
    let ca = Ca::new(d, "ca");
    let server = ca.issue(d, "primary", &[NAME]);
    let tokens = d.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    token(&tokens, "standby-a", "secret of a");
    token(&tokens, "standby-b", "secret of b");
    token(&tokens, "standby-c", "secret of c");
    let (srv, addr) = tls_serve(
        &primary,
        &server,
        &["--token-dir", p(&tokens)],
        &d.join("serve.log"),
    );
    let ta = token(d, "a.token", "secret of a");
    let tb = token(d, "b.token", "secret of b");
    let tls = ["--tls-ca", p(&ca.cert), "--tls-server-name", NAME];
    let (sa, sb) = (d.join("a"), d.join("b"));
    let mut a = common::standby(
        &sa,
        &addr,
        &[
            &tls[..],
            &["--auth-token-file", p(&ta), "--name", "standby-a"],
        ]
        .concat(),
        &d.join("a.log"),
    );
    let mut b = common::standby(
        &sb,
        &addr,
        &[
            &tls[..],
            &["--auth-token-file", p(&tb), "--name", "standby-b"],
        ]
        .concat(),
        &d.join("b.log"),
    );
    wait_caught_up(&primary, &sa);
    wait_caught_up(&primary, &sb);
    wait_until("both names in the primary's log", || {
        let l = srv.log();
        l.contains("name=standby-a") && l.contains("name=standby-b")
    });

    // b's token file removed: its stream is cut within the revocation check's period, and it
    // stops; a goes on.
    std::fs::remove_file(tokens.join("standby-b")).unwrap();
    assert_eq!(b.wait_exit(), 2, "{}", b.log());
    assert!(b.log().contains("standby-b was revoked"), "{}", b.log());
    write_records(&primary, 300, "after");
    seal(&primary);
    wait_caught_up(&primary, &sa);
    assert!(a.running());
    // A standby with its own token (standby-c) may not take over standby-a's slot with a copy
    // of a's directory (its id).
    let tc = token(d, "c.token", "secret of c");
    let sc = d.join("c");
    common::copy_tree(&sa, &sc);
    let mut c = common::standby(
        &sc,
        &addr,
        &[
            &tls[..],
            &["--auth-token-file", p(&tc), "--name", "standby-c"],
        ]
        .concat(),
        &d.join("c.log"),
    );
    assert_eq!(c.wait_exit(), 2, "{}", c.log());
    assert!(
        c.log()
            .contains("the standby authenticated as \"standby-c\" presents the id")
            && c.log()
                .contains("whose slot belongs to the standby \"standby-a\""),
        "{}",
        c.log()
    );
    assert!(a.running());
    // And b cannot come back.
    let mut again = common::standby(
        &sb,
        &addr,
        &[
            &tls[..],
            &["--auth-token-file", p(&tb), "--name", "standby-b"],
        ]
        .concat(),
        &d.join("b2.log"),
    );
    assert_eq!(again.wait_exit(), 2);
    assert!(again.log().contains("a standby revoked"), "{}", again.log());
    a.kill();
}

#[test]
fn a_reloaded_certificate_serves_new_connections_and_keeps_established_streams() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let primary = primary_with(d, 1);
    let ca = Ca::new(d, "ca");
    let server = ca.issue(d, "primary", &[NAME]);
    let (srv, addr) = tls_serve(
        &primary,
        &server,
        &["--auth-token-file", p(&token(d, "t", "secret"))],
        &d.join("serve.log"),
    );
    let tok = token(d, "t2", "secret");
    let sa = d.join("a");
    let mut a = common::standby(
        &sa,
        &addr,
        &[
            "--tls-ca",
            p(&ca.cert),
            "--tls-server-name",
            NAME,
            "--auth-token-file",
            p(&tok),
        ],
        &d.join("a.log"),
    );
    wait_caught_up(&primary, &sa);

    // The certificate rotated to one for another name, in place, and SIGHUP.
    let rotated = ca.issue(d, "rotated", &["primary2.test"]);
    std::fs::copy(&rotated.cert, &server.cert).unwrap();
    std::fs::copy(&rotated.key, &server.key).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(srv.child.id() as i32, libc::SIGHUP) },
        0
    );
    wait_until("the reload", || srv.log().contains("reloaded on SIGHUP"));

    // The established stream goes on, on the same connection.
    write_records(&primary, 300, "after");
    seal(&primary);
    wait_caught_up(&primary, &sa);
    assert!(a.running());
    assert_eq!(
        a.log().matches("streaming from the primary").count(),
        1,
        "{}",
        a.log()
    );
    // A new standby gets the new certificate; one expecting the old name is refused.
    let sb = d.join("b");
    let _b = common::standby(
        &sb,
        &addr,
        &[
            "--tls-ca",
            p(&ca.cert),
            "--tls-server-name",
            "primary2.test",
            "--auth-token-file",
            p(&tok),
        ],
        &d.join("b.log"),
    );
    wait_caught_up(&primary, &sb);
    refused(
        &d.join("c"),
        &addr,
        &[
            "--tls-ca",
            p(&ca.cert),
            "--tls-server-name",
            NAME,
            "--auth-token-file",
            p(&tok),
        ],
        &d.join("c.log"),
        "not valid for the expected name",
    );
    a.kill();
}

#[test]
fn key_files_others_may_read_and_unauthenticated_public_ports_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let primary = primary_with(d, 1);
    let ca = Ca::new(d, "ca");
    let server = ca.issue(d, "primary", &[NAME]);
    let (cert, key) = (p(&server.cert), p(&server.key));
    std::fs::set_permissions(&server.key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = walship(&[
        "serve",
        p(&primary),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    let out = walship(&[
        "standby",
        p(&d.join("sb")),
        "--primary",
        "127.0.0.1:9",
        "--tls-ca",
        p(&ca.cert),
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    std::fs::set_permissions(&server.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A public address needs TLS and a way to authenticate standbys.
    let tok = token(d, "t", "secret");
    for (args, why) in [
        (vec!["--auth-token-file", p(&tok)], "without TLS"),
        (
            vec!["--tls-cert", cert, "--tls-key", key],
            "without authenticating standbys",
        ),
    ] {
        let mut all = vec!["serve", p(&primary), "--listen", "0.0.0.0:0"];
        all.extend(args);
        let out = walship(&all);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(why) && err.contains("not a loopback address"),
            "{err}"
        );
    }
}
