//! The demo, as a newcomer runs it: every component a real child process, every check passing.

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
    let passed = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("[ok]"))
        .count();
    assert_eq!(passed, 10, "{stdout}");
    assert!(stdout.contains("all 10 checks passed"), "{stdout}");
    // The scratch directory is kept, with what the summary tells the user to explore.
    for d in ["primary", "standby", "archive", "restored", "logs"] {
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
