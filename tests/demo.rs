//! The demo, as a newcomer runs it: every component a real child process, every check passing,
//! the closing failover included.

mod common;

use common::{p, walship};

#[test]
fn the_demo_runs_the_whole_system_and_every_check_passes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let out = walship(&["demo", "--seconds", "5", "--dir", p(&dir)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("killed the writer with SIGKILL"),
        "{stdout}"
    );
    assert!(!stdout.contains("[FAILED]"), "{stdout}");
    // One synchronous standby, one asynchronous: the live view names each with its part.
    assert!(
        stdout.contains("standby sync   sync ") && stdout.contains("standby async  async "),
        "{stdout}"
    );
    // Every commit acknowledged before the SIGKILL was on the synchronous standby, payload for
    // payload; the asynchronous one's lag at that moment is reported (it may be zero).
    assert!(
        stdout.contains(
            "[ok] every commit acknowledged before the SIGKILL is on the synchronous standby"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("at the writer's SIGKILL the asynchronous standby was "),
        "{stdout}"
    );
    // It ends with a failover: the synchronous standby promoted to timeline 2, the asynchronous
    // one following it, the old primary refused until rewound, then following too, every
    // acknowledged commit on the new timeline.
    for line in [
        "failover: the primary writes 50 records no standby receives, then is lost; promoting standby `sync`",
        "standby-sync: timeline 2 begins at",
        "follows it onto timeline 2",
        "[ok] failover: every acknowledged commit is on the new timeline",
        "[ok] failover: standby async follows the new primary: timeline 2",
        "[ok] failover: verify the new primary: clean",
        "[ok] failover: the archive follows the new primary, and restores to it: restored with --timeline latest: timeline 2",
        "the old primary, pointed at the new one, was refused (exit 1",
        "[ok] failover: the old primary, refused until rewound, follows the new primary",
        "failover: promote took ",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    let passed = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("[ok]"))
        .count();
    assert_eq!(passed, 19, "{stdout}");
    assert!(stdout.contains("all 19 checks passed"), "{stdout}");
    // The scratch directory is kept, with what the summary tells the user to explore.
    for d in [
        "primary",
        "standby-sync",
        "standby-async",
        "archive",
        "restored",
        "restored-latest",
        "logs",
    ] {
        assert!(dir.join(d).is_dir(), "{d} missing");
    }
}

#[test]
fn the_demo_refuses_a_directory_that_already_holds_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(tmp.path().join("primary")).expect("mkdir");
    let out = walship(&["demo", "--seconds", "2", "--dir", p(tmp.path())]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
}
