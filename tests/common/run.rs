//! Running the real `walship` binary from a test: one command to completion (with stdin fed
//! in, or none), a command that must succeed, long-running children killed when the test ends,
//! `serve` with the address it listens on, and reading what a command printed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Only a guard against hanging forever; nothing is asserted about speed.
pub const WAIT: Duration = Duration::from_secs(90);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_walship")
}

/// Runs `walship ARGS` with `stdin` fed in and waits for it to exit; a run that hangs for a
/// minute is killed and fails the test.
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    run_with(args, stdin, |_| {})
}

/// [`run`], after `setup` adjusted the command (its environment, its working directory).
pub fn run_with(args: &[&str], stdin: &[u8], setup: impl FnOnce(&mut Command)) -> Output {
    use std::io::{Read, Write};
    let mut cmd = Command::new(bin());
    setup(&mut cmd);
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walship");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("walship {args:?} did not exit within a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let _ = feeder.join();
    Output {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The exit code; panics with the output when the process died from a signal.
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}\nstderr: {}", o.status, stderr(o)))
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Runs `walship ARGS` with nothing on stdin and waits for it to exit.
pub fn walship(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run walship")
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = walship(args);
    assert!(
        out.status.success(),
        "walship {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout and stderr together, for assertion messages and searching error text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fast heartbeats and a short peer timeout, so that replication tests converge quickly.
pub const NET: [&str; 4] = ["--heartbeat-interval", "200ms", "--peer-timeout", "3s"];

/// `walship standby DIR --primary ADDR` with a short reconnect backoff and the test heartbeat
/// and timeout ([`NET`]), then `extra`.
pub fn standby(dir: &Path, primary: &str, extra: &[&str], log: &Path) -> Proc {
    standby_with_env(dir, primary, extra, &[], log)
}

/// [`standby`] with `env` set (a `FAILPOINTS` list, say).
pub fn standby_with_env(
    dir: &Path,
    primary: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    log: &Path,
) -> Proc {
    let mut args = vec![
        "standby",
        p(dir),
        "--primary",
        primary,
        "--max-backoff",
        "300ms",
    ];
    args.extend_from_slice(&NET);
    args.extend_from_slice(extra);
    start(&args, env, Stdio::null(), log)
}

/// `walship init DIR` with 64 KiB segments (`SEG`).
pub fn init(dir: &Path) {
    ok(&["init", p(dir), "--segment-size", "64KiB"]);
}

/// `walship seal DIR`, which must succeed.
pub fn seal(dir: &Path) {
    ok(&["seal", p(dir)]);
}

/// `walship status DIR --json`, which must succeed, parsed.
pub fn status(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&["status", p(dir), "--json"])).unwrap()
}

/// Appends `n` durable records (about 64 bytes each on disk) through `walship write`.
pub fn write_records(dir: &Path, n: usize, tag: &str) {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(["write", p(dir), "--durable"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        let mut buf = String::new();
        for i in 0..n {
            buf.push_str(&format!("{tag}-{i:08}-payload\n"));
        }
        stdin.write_all(buf.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "write failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `walship archive DATA --to ARCHIVE --once EXTRA`.
pub fn archive_once(data: &Path, arc: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["archive", p(data), "--to", p(arc), "--once"];
    args.extend_from_slice(extra);
    walship(&args)
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `walship ARGS` with its stderr in `log` and its stdout piped.
pub fn spawn(args: &[&str], log: &Path) -> Proc {
    start(args, &[], Stdio::null(), log)
}

/// Starts `walship ARGS` with `env` set, its stdin and stdout piped and its stderr in `log`.
pub fn spawn_piped(args: &[&str], env: &[(&str, &str)], log: &Path) -> Proc {
    start(args, env, Stdio::piped(), log)
}

fn start(args: &[&str], env: &[(&str, &str)], stdin: Stdio, log: &Path) -> Proc {
    let child = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

/// Starts `walship serve DIR --listen LISTEN ARGS` and returns it with the address it listens on.
pub fn serve(dir: &Path, listen: &str, args: &[&str], log: &Path) -> (Proc, String) {
    let mut all = vec!["serve", p(dir), "--listen", listen];
    all.extend_from_slice(args);
    let mut proc = spawn(&all, log);
    let stdout = proc.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).unwrap_or_default();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve did not start: {line:?}; log:\n{}", proc.log()))
        .to_string();
    (proc, addr)
}

/// The metrics address a process started with `--metrics-listen HOST:0` logged
/// (`metrics listening on ADDR`), read from its log once it appears.
pub fn metrics_address(proc: &Proc) -> String {
    let mut found = None;
    wait_until("the metrics address in the log", || {
        found = proc
            .log()
            .lines()
            .find_map(|l| l.split("metrics listening on ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string);
        found.is_some()
    });
    found.unwrap_or_default()
}

/// Polls `f` until it holds; fails the test after [`WAIT`].
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sealed segment files (`*.wal`) of a data directory, sorted; none when `wal/` is absent.
pub fn sealed_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("wal"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".wal"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits until the standby holds and applied everything the primary has sealed, then checks
/// every sealed segment is the same, byte for byte.
pub fn wait_caught_up(primary: &Path, standby: &Path) {
    let sealed = status(primary)["sealed_lsn"].as_u64().unwrap();
    assert!(sealed > 0);
    let names = sealed_files(primary);
    wait_until(&format!("{} to reach {sealed}", standby.display()), || {
        let out = walship(&["status", p(standby), "--json"]);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|s| {
                s["sealed_lsn"].as_u64() == Some(sealed)
                    && s["applied_lsn"].as_u64() == Some(sealed)
            })
            // Every one by name too: the positions say only that the newest is there.
            && {
                let theirs = sealed_files(standby);
                names.iter().all(|n| theirs.contains(n))
            }
    });
    for f in sealed_files(primary) {
        // A running primary may release a segment every standby holds (retention recycles or
        // removes it) between the listing and this read: it is no longer the primary's.
        let theirs = match std::fs::read(primary.join("wal").join(&f)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            r => r.unwrap(),
        };
        assert_eq!(
            theirs,
            std::fs::read(standby.join("wal").join(&f)).unwrap(),
            "{f} differs"
        );
    }
}

/// Initialises `primary`, writes 1,520 durable records into it (sealed 64 KiB segments and
/// part of the open one) and streams them to a standby at `standby` until it has
/// acknowledged every one; then stops both, so that the standby's copy of the primary's open
/// segment holds records. Logs go into `logs`, prefixed `tag`.
pub fn streamed_then_stopped(primary: &Path, standby_dir: &Path, logs: &Path, tag: &str) {
    init(primary);
    write_records(primary, 1500, "a");
    let (mut srv, addr) = serve(
        primary,
        "127.0.0.1:0",
        &NET,
        &logs.join(format!("{tag}-serve.log")),
    );
    let mut s = standby(
        standby_dir,
        &addr,
        &[],
        &logs.join(format!("{tag}-standby.log")),
    );
    write_records(primary, 20, "b");
    wait_acknowledged(primary);
    s.kill();
    srv.kill();
}

/// Waits until the first standby of `primary` has flushed everything the primary made durable.
pub fn wait_acknowledged(primary: &Path) {
    wait_until("the standby to acknowledge everything", || {
        let st = status(primary);
        let flush = st["flush_lsn"].as_u64();
        st["standbys"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|x| x["flushed_lsn"].as_u64())
            == flush
    });
}
