//! `walship status --watch`: a block of plain lines per refresh when not on a terminal, the
//! view redrawn in place under a pseudo-terminal, rates from one refresh to the next.

use std::process::Command;

mod common;
use common::{code, init, ok, p, run, stdout, text, walship, write_records};

const REDRAW: &str = "\x1b[H\x1b[2J";

/// The lines of each refresh's block (blocks are separated by an empty line).
fn blocks(out: &str) -> Vec<Vec<&str>> {
    out.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| b.lines().collect())
        .collect()
}

#[test]
fn without_a_terminal_each_refresh_is_a_block_of_plain_lines() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    write_records(&dir, 20, "w");
    let flush = common::status(&dir)["flush_lsn"].as_u64().unwrap();
    let out = ok(&[
        "status",
        p(&dir),
        "--watch",
        "--interval",
        "50ms",
        "--count",
        "3",
    ]);
    assert!(!out.contains('\x1b'), "no escape codes in a pipe: {out:?}");
    let b = blocks(&out);
    assert_eq!(b.len(), 3, "one block per refresh: {out}");
    for block in &b {
        assert!(block[0].contains("primary, timeline 1"), "{block:?}");
        let want = format!("flush {}", walship::Lsn(flush));
        assert!(block[1].starts_with(&want), "{block:?} (want {want})");
        assert!(block.iter().any(|l| l.starts_with("standby ")), "{block:?}");
        assert!(
            block.iter().any(|l| l.starts_with("retained ")),
            "{block:?}"
        );
    }
    // No rate before a second refresh; nothing written between refreshes after it.
    assert!(b[0][1].ends_with("writing -"), "{:?}", b[0][1]);
    assert!(b[2][1].ends_with("writing 0 B/s"), "{:?}", b[2][1]);
}

#[test]
fn the_writing_rate_follows_what_is_written_between_refreshes() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    let mut watch = Command::new(common::bin())
        .args([
            "status",
            p(&dir),
            "--watch",
            "--interval",
            "200ms",
            "--count",
            "4",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Write until the view has ended, so that every interval sees records arrive.
    let mut i = 0;
    while watch.try_wait().unwrap().is_none() {
        write_records(&dir, 50, &format!("r{i}"));
        i += 1;
    }
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();
    let rates: Vec<&str> = blocks(&out)
        .iter()
        .skip(1)
        .map(|b| b[1].rsplit("writing ").next().unwrap_or(""))
        .collect();
    assert!(
        rates.iter().any(|r| r.ends_with("/s") && *r != "0 B/s"),
        "some refresh saw bytes written: {rates:?}"
    );
}

#[test]
fn under_a_pseudo_terminal_the_view_is_redrawn_in_place() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    write_records(&dir, 5, "w");
    // util-linux `script` runs the command on a new pseudo-terminal and copies what it shows.
    let cmd = format!(
        "{} status {} --watch --interval 50ms --count 2",
        common::bin(),
        p(&dir)
    );
    let o = run_script(&cmd);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        out.matches(REDRAW).count(),
        2,
        "redrawn at each refresh: {out:?}"
    );
    assert!(out.contains("primary, timeline 1"), "{out:?}");
}

fn run_script(cmd: &str) -> std::process::Output {
    Command::new("script")
        .args(["-q", "-e", "-c", cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux `script` runs")
}

#[test]
fn watch_refuses_an_archive_and_json() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    write_records(&dir, 5, "w");
    common::seal(&dir);
    let arc = t.path().join("arc");
    let a = common::archive_once(&dir, &arc, &[]);
    assert!(a.status.success(), "{}", text(&a));
    let o = walship(&["status", p(&arc), "--watch"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("is an archive"), "{}", text(&o));
    let o = run(&["status", p(&dir), "--watch", "--json"], b"");
    assert_eq!(code(&o), 2, "{}", text(&o));
    let o = run(&["status", p(&dir), "--count", "2"], b"");
    assert_eq!(code(&o), 2, "--count needs --watch: {}", text(&o));
}

/// The archiver's line says how far it is behind what is sealed (archives take sealed segments
/// only), not behind the open segment's records: an archiver with every sealed segment is
/// behind by nothing.
#[test]
fn an_archiver_with_every_sealed_segment_is_behind_by_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    write_records(&dir, 600, "s");
    common::seal(&dir);
    let arc = t.path().join("arc");
    assert!(common::archive_once(&dir, &arc, &[]).status.success());
    write_records(&dir, 50, "open");
    let out = ok(&["status", p(&dir), "--watch", "--count", "1"]);
    let line = out
        .lines()
        .find(|l| l.contains("archiver"))
        .unwrap_or_else(|| panic!("an archiver line: {out}"));
    assert!(line.contains("behind by 0 B"), "{line}");
}
