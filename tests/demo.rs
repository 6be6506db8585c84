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

/// The demo makes its data directories in a directory of its own: one holding anything (a
/// demo's, a live data directory) is refused before anything is written there (exit 2).
#[test]
fn the_demo_refuses_a_directory_that_is_not_empty() {
    for held in ["primary", "control"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join(held)).expect("mkdir");
        let out = walship(&["demo", "--seconds", "2", "--dir", p(tmp.path())]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is not empty"), "{stderr}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}

/// A demo stopped by a signal (which runs none of its clean-up) leaves none of its processes
/// running: each one gets SIGTERM when the demo dies.
#[test]
fn a_demo_killed_by_a_signal_leaves_no_process_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let log = tmp.path().join("demo.log");
    let mut demo = common::spawn(&["demo", "--seconds", "30", "--dir", p(&dir)], &log);
    let ours = |needle: &str| -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(needle) && !c.contains(" demo "))
            .collect()
    };
    let needle = p(&dir).to_string();
    common::wait_until("the demo's standby running", || {
        ours(&needle).iter().any(|c| c.contains(" standby "))
    });
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(demo.child.id() as i32, libc::SIGKILL) };
    demo.wait_exit();
    common::wait_until("no process of the demo left", || ours(&needle).is_empty());
}
