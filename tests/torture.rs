//! The torture run: the whole system as separate `walship` processes under chaos.
//!
//! A writer (`walship write --durable`) appends records fed on its stdin and acknowledges each
//! one by printing its LSN; `walship serve` ships the primary's sealed segments through a TCP
//! proxy in this test to `walship standby`; `walship archive` pushes them to an archive
//! directory. For `WALSHIP_TORTURE_SECS` seconds (default 120) a chaos loop SIGKILLs and
//! restarts any of them at random, seals the primary between writer runs (`walship seal`, itself
//! killed now and then), and cuts or refuses the standby's connections at the proxy. A poller
//! reads `walship status STANDBY --json` all along.
//!
//! At the end the chaos stops, the primary is sealed, everything converges, and the run checks:
//! every acknowledged record is on the primary, on the standby and in a restore from the
//! archive, at its LSN and with its payload; all three hold the same records and verify clean;
//! the standby's applied_lsn never went backwards; no process exited unless killed.
//!
//! Longer locally: `WALSHIP_TORTURE_SECS=600 cargo test --release --test torture -- --nocapture`.
//! `WALSHIP_TORTURE_SEED` fixes the chaos's random choices (timing still varies).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use walship::Lsn;

use common::proxy::{Proxy, ProxyMode};
use common::{bin, read_all};

const DEFAULT_SECS: u64 = 120;
/// How long convergence after the chaos may take before the run fails.
const CONVERGE_BOUND: Duration = Duration::from_secs(180);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log file")
}

/// Problems seen during the run; reported together at the end.
#[derive(Default)]
struct Problems(Mutex<Vec<String>>);

impl Problems {
    fn add(&self, p: String) {
        eprintln!("torture: PROBLEM: {p}");
        lock(&self.0).push(p);
    }
}

// ---------------------------------------------------------------------------------------------
// The writer, driven by its own thread.

#[derive(Default)]
struct WriterShared {
    /// The running writer's pid; cleared before the process is reaped, so a kill through it can
    /// never reach a reused pid.
    pid: Mutex<Option<u32>>,
    /// The chaos wants the writer down (to seal between runs).
    hold: AtomicBool,
    running: AtomicBool,
    stop: AtomicBool,
    /// (LSN, payload) of every record the writer acknowledged as durable.
    acked: Mutex<Vec<(u64, String)>>,
    runs: AtomicU64,
    sent: AtomicU64,
}

fn drive_writer(
    w: Arc<WriterShared>,
    primary: PathBuf,
    log: PathBuf,
    problems: Arc<Problems>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seq = 0u64;
    while !w.stop.load(Ordering::Acquire) {
        // Announce a start before looking at `hold` (the chaos sets `hold` before looking at
        // `running`, both SeqCst): a writer can never start while `walship seal` runs.
        w.running.store(true, Ordering::SeqCst);
        if w.hold.load(Ordering::SeqCst) {
            w.running.store(false, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let mut child = Command::new(bin())
            .arg("write")
            .arg(&primary)
            .arg("--durable")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file(&log))
            .spawn()
            .expect("spawn walship write");
        *lock(&w.pid) = Some(child.id());
        w.runs.fetch_add(1, Ordering::Relaxed);
        let mut stdin = child.stdin.take().expect("stdin");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        'run: while !w.stop.load(Ordering::Acquire) && !w.hold.load(Ordering::Acquire) {
            let n = rng.gen_range(1..=32);
            let batch: Vec<String> = (0..n)
                .map(|_| {
                    seq += 1;
                    let pad = rng.gen_range(0..160);
                    format!("r{seq:010}-{}", "p".repeat(pad))
                })
                .collect();
            let mut text = batch.join("\n");
            text.push('\n');
            w.sent.fetch_add(n as u64, Ordering::Relaxed);
            let _ = stdin.write_all(text.as_bytes()).and_then(|_| stdin.flush());
            // The LSNs come back in the order the lines went in, each once it is durable.
            for payload in batch {
                line.clear();
                match out.read_line(&mut line) {
                    Ok(0) | Err(_) => break 'run,
                    Ok(_) => match line.trim().parse::<Lsn>() {
                        Ok(lsn) => lock(&w.acked).push((lsn.0, payload)),
                        Err(e) => {
                            problems.add(format!("writer printed {line:?}: {e}"));
                            break 'run;
                        }
                    },
                }
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..4)));
        }
        // Asked to stop (rather than killed): the chaos waits for `running` to drop, so `hold`
        // is still set here.
        let asked_to_stop = w.hold.load(Ordering::SeqCst) || w.stop.load(Ordering::Acquire);
        drop(stdin); // a live writer finishes and exits 0
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        if !rest.trim().is_empty() {
            problems.add(format!(
                "writer printed LSNs for lines never sent: {rest:?}"
            ));
        }
        *lock(&w.pid) = None;
        let status = child.wait().expect("wait for writer");
        w.running.store(false, Ordering::SeqCst);
        let killed = status.signal() == Some(libc::SIGKILL);
        let expected = killed || (status.success() && asked_to_stop);
        if !expected {
            problems.add(format!(
                "the writer exited on its own ({status}):\n{}",
                tail(&log)
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn kill_pid(pid: u32) {
    // SAFETY: plain syscall; the pid belongs to a child not yet reaped (see WriterShared::pid).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

// ---------------------------------------------------------------------------------------------
// serve, standby and archive: restartable child processes.

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Part {
    Writer,
    Serve,
    Standby,
    Archive,
    Seal,
}

struct Daemons {
    primary: PathBuf,
    standby: PathBuf,
    archive: PathBuf,
    logs: PathBuf,
    proxy: Proxy,
    serve: Option<Child>,
    standby_proc: Option<Child>,
    archive_proc: Option<Child>,
}

impl Daemons {
    fn log(&self, part: Part) -> PathBuf {
        self.logs.join(format!("{part:?}.log").to_lowercase())
    }

    fn start(&mut self, part: Part) {
        let log = log_file(&self.log(part));
        match part {
            Part::Serve => {
                let mut child = Command::new(bin())
                    .arg("serve")
                    .arg(&self.primary)
                    .args(["--listen", "127.0.0.1:0"])
                    .args(["--heartbeat-interval", "200ms", "--peer-timeout", "3s"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(log)
                    .spawn()
                    .expect("spawn serve");
                let mut first = String::new();
                let mut out = BufReader::new(child.stdout.take().expect("stdout"));
                let _ = out.read_line(&mut first);
                let addr = first
                    .trim()
                    .strip_prefix("listening on ")
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                // Keep reading (and discarding) so that serve never writes into a closed pipe.
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut out, &mut std::io::sink());
                });
                self.proxy.set_upstream(addr);
                self.serve = Some(child);
            }
            Part::Standby => {
                self.standby_proc = Some(
                    Command::new(bin())
                        .arg("standby")
                        .arg(&self.standby)
                        .args(["--primary", &self.proxy.addr.to_string()])
                        .args(["--max-backoff", "500ms"])
                        .args(["--heartbeat-interval", "200ms", "--peer-timeout", "3s"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(log)
                        .spawn()
                        .expect("spawn standby"),
                );
            }
            Part::Archive => {
                self.archive_proc = Some(
                    Command::new(bin())
                        .arg("archive")
                        .arg(&self.primary)
                        .arg("--to")
                        .arg(&self.archive)
                        .args(["--rescan-secs", "1"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(log)
                        .spawn()
                        .expect("spawn archive"),
                );
            }
            Part::Writer | Part::Seal => unreachable!("not a daemon"),
        }
    }

    fn slot(&mut self, part: Part) -> &mut Option<Child> {
        match part {
            Part::Serve => &mut self.serve,
            Part::Standby => &mut self.standby_proc,
            Part::Archive => &mut self.archive_proc,
            Part::Writer | Part::Seal => unreachable!("not a daemon"),
        }
    }

    fn kill(&mut self, part: Part) {
        if let Some(mut c) = self.slot(part).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if part == Part::Serve {
            self.proxy.set_upstream(None);
        }
    }

    /// Restarts any daemon that exited without being killed, and reports it.
    fn check(&mut self, problems: &Problems) {
        for part in [Part::Serve, Part::Standby, Part::Archive] {
            let exited = match self.slot(part).as_mut() {
                Some(c) => c.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                problems.add(format!(
                    "{part:?} exited on its own ({status}):\n{}",
                    tail(&self.log(part))
                ));
                self.slot(part).take();
                self.start(part);
            }
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for part in [Part::Serve, Part::Standby, Part::Archive] {
            self.kill(part);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading positions.

fn status_json(dir: &Path) -> Option<serde_json::Value> {
    let out = Command::new(bin())
        .arg("status")
        .arg(dir)
        .arg("--json")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn field(v: &serde_json::Value, key: &str) -> Option<u64> {
    v.get(key).and_then(|x| x.as_u64())
}

/// Polls the standby's applied_lsn until stopped; counts samples and every step backwards.
struct AppliedWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, u64, Vec<String>)>>,
}

impl AppliedWatch {
    fn start(standby: PathBuf) -> AppliedWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut samples, mut max, mut backwards) = (0u64, 0u64, Vec::new());
            let mut sample = || {
                if let Some(a) = status_json(&standby).and_then(|v| field(&v, "applied_lsn")) {
                    samples += 1;
                    if a < max {
                        backwards.push(format!("applied_lsn went from {} to {}", Lsn(max), Lsn(a)));
                    }
                    max = max.max(a);
                }
            };
            while !s.load(Ordering::Acquire) {
                sample();
                std::thread::sleep(Duration::from_millis(100));
            }
            // One more once everything has stopped: the position that stays.
            sample();
            (samples, max, backwards)
        });
        AppliedWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .expect("thread")
            .join()
            .expect("status poller")
    }
}

/// Runs a short walship command; returns its exit code (None when killed) and its output.
fn walship(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run walship");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `walship seal PRIMARY`, killed after `kill_after` when given. Returns whether it was killed.
fn seal(primary: &Path, kill_after: Option<Duration>, problems: &Problems) -> bool {
    let mut child = Command::new(bin())
        .arg("seal")
        .arg(primary)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn seal");
    if let Some(d) = kill_after {
        std::thread::sleep(d);
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait for seal");
    if out.status.signal() == Some(libc::SIGKILL) {
        return true;
    }
    if !out.status.success() {
        problems.add(format!(
            "walship seal failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    false
}

fn wait_for(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Records acknowledged but not found at their LSN with their payload.
fn lost(acked: &[(u64, String)], records: &[walship::WalRecord]) -> usize {
    let by_lsn: HashMap<u64, &[u8]> = records
        .iter()
        .map(|r| (r.lsn.0, r.payload.as_slice()))
        .collect();
    acked
        .iter()
        .filter(|(lsn, p)| by_lsn.get(lsn).copied() != Some(p.as_bytes()))
        .count()
}

fn same_records(a: &[walship::WalRecord], b: &[walship::WalRecord]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.lsn == y.lsn && x.payload == y.payload)
}

#[test]
fn torture() {
    let secs: u64 = std::env::var("WALSHIP_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    let seed: u64 = std::env::var("WALSHIP_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("torture: {secs} s of chaos, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let primary = root.join("primary");
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir logs");
    walship::DataDir::init(&primary, common::SEG).expect("init primary");

    let problems = Arc::new(Problems::default());
    let mut d = Daemons {
        primary: primary.clone(),
        standby: root.join("standby"),
        archive: root.join("archive"),
        logs: logs.clone(),
        proxy: Proxy::start(None, ProxyMode::default()),
        serve: None,
        standby_proc: None,
        archive_proc: None,
    };
    let w = Arc::new(WriterShared::default());
    let writer = {
        let (w, p, l, pr) = (
            w.clone(),
            primary.clone(),
            logs.join("writer.log"),
            problems.clone(),
        );
        std::thread::spawn(move || drive_writer(w, p, l, pr, seed ^ 0x5eed))
    };
    for part in [Part::Serve, Part::Standby, Part::Archive] {
        d.start(part);
    }
    let watch = AppliedWatch::start(d.standby.clone());

    // The chaos.
    let mut kills: HashMap<Part, u64> = HashMap::new();
    let (mut cuts, mut refusals, mut seals) = (0u64, 0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..1000)));
        d.check(&problems);
        match rng.gen_range(0..100) {
            0..=24 => {
                if let Some(pid) = *lock(&w.pid) {
                    kill_pid(pid);
                    *kills.entry(Part::Writer).or_default() += 1;
                }
            }
            25..=34 => {
                // Seal between writer runs: stop the writer (killed), seal, let it restart.
                w.hold.store(true, Ordering::SeqCst);
                if let Some(pid) = *lock(&w.pid) {
                    kill_pid(pid);
                    *kills.entry(Part::Writer).or_default() += 1;
                }
                wait_for("the writer to stop", Duration::from_secs(60), || {
                    !w.running.load(Ordering::SeqCst)
                });
                let kill_after = rng
                    .gen_bool(0.3)
                    .then(|| Duration::from_millis(rng.gen_range(0..40)));
                if seal(&primary, kill_after, &problems) {
                    *kills.entry(Part::Seal).or_default() += 1;
                } else {
                    seals += 1;
                }
                w.hold.store(false, Ordering::Release);
            }
            35..=79 => {
                let part = match rng.gen_range(0..3) {
                    0 => Part::Serve,
                    1 => Part::Standby,
                    _ => Part::Archive,
                };
                d.kill(part);
                *kills.entry(part).or_default() += 1;
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
                d.start(part);
            }
            80..=94 => cuts += d.proxy.cut() as u64,
            _ => {
                d.proxy
                    .refuse_for(Duration::from_millis(rng.gen_range(200..2000)));
                refusals += 1;
            }
        }
    }

    // Stop the chaos: the writer finishes its batch and exits; then seal what it left open.
    w.stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !writer.is_finished() {
        if Instant::now() > deadline {
            if let Some(pid) = *lock(&w.pid) {
                kill_pid(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().expect("writer thread");
    d.check(&problems);
    assert!(!seal(&primary, None, &problems), "final seal");
    let p = status_json(&primary).expect("status of the primary");
    let (flush, sealed) = (
        field(&p, "flush_lsn").expect("flush_lsn"),
        field(&p, "sealed_lsn").expect("sealed_lsn"),
    );
    assert_eq!(flush, sealed, "after the final seal everything is sealed");

    // Converge: the standby applies everything; the archiver (killed, then rerun once)
    // archives everything.
    let converge = Instant::now();
    let deadline = Instant::now() + CONVERGE_BOUND;
    loop {
        d.check(&problems);
        let s = status_json(&d.standby);
        let pos = s
            .as_ref()
            .map(|s| (field(s, "flush_lsn"), field(s, "applied_lsn")));
        if pos == Some((Some(flush), Some(flush))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby did not catch up to {} within {CONVERGE_BOUND:?}: (flushed, applied) = {pos:?}\nstandby log:\n{}\nserve log:\n{}",
            Lsn(flush),
            tail(&d.log(Part::Standby)),
            tail(&d.log(Part::Serve))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let standby_caught_up = converge.elapsed();
    d.kill(Part::Archive);
    let (code, text) = walship(&[
        "archive".as_ref(),
        primary.as_os_str(),
        "--to".as_ref(),
        d.archive.as_os_str(),
        "--once".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(code, Some(0), "archive --once: {text}");
    let summary: serde_json::Value = text
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("archive --once printed no JSON summary: {text}"));
    assert_eq!(
        field(&summary, "position"),
        Some(flush),
        "the archive reaches the primary's end: {text}"
    );
    d.kill(Part::Serve);
    d.kill(Part::Standby);
    let (samples, applied_max, backwards) = watch.finish();

    // Restore from the archive, then check all three copies.
    let restored = root.join("restored");
    let (code, text) = walship(&[
        "restore".as_ref(),
        d.archive.as_os_str(),
        restored.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "restore: {text}");
    let acked = std::mem::take(&mut *lock(&w.acked));
    let mut copies = Vec::new();
    for (name, dir) in [
        ("primary", &primary),
        ("standby", &d.standby),
        ("restore", &restored),
    ] {
        let (code, text) = walship(&["verify".as_ref(), dir.as_os_str()]);
        assert_eq!(code, Some(0), "verify {name}: {text}");
        let records = read_all(dir).unwrap_or_else(|e| panic!("read the {name}: {e}"));
        copies.push((name, lost(&acked, &records), records));
    }

    let k = |p: Part| kills.get(&p).copied().unwrap_or(0);
    eprintln!(
        "torture: {secs} s, seed {seed}\n\
         torture: kills: writer {}, serve {}, standby {}, archive {}, seal {} ({} writer runs, {} seals between runs)\n\
         torture: connections cut {cuts}, refusal windows {refusals}\n\
         torture: records sent {}, acknowledged {}, in the primary {}; end LSN {}\n\
         torture: standby caught up {:.1} s after the chaos; applied_lsn sampled {samples} times, max {}, went backwards {} times\n\
         torture: records lost: primary {}, standby {}, restore {}",
        k(Part::Writer),
        k(Part::Serve),
        k(Part::Standby),
        k(Part::Archive),
        k(Part::Seal),
        w.runs.load(Ordering::Relaxed),
        seals,
        w.sent.load(Ordering::Relaxed),
        acked.len(),
        copies[0].2.len(),
        Lsn(flush),
        standby_caught_up.as_secs_f64(),
        Lsn(applied_max),
        backwards.len(),
        copies[0].1,
        copies[1].1,
        copies[2].1,
    );

    let problems = lock(&problems.0).clone();
    let failed = !problems.is_empty()
        || !backwards.is_empty()
        || copies.iter().any(|c| c.1 > 0)
        || copies[1..]
            .iter()
            .any(|c| !same_records(&copies[0].2, &c.2));
    if failed {
        let kept = tmp.keep();
        eprintln!(
            "torture: FAILED; data directories and logs kept under {}",
            kept.display()
        );
    }
    let keep = |why: String| {
        format!(
            "{why}\n(data directories and logs under {})",
            root.display()
        )
    };
    assert!(problems.is_empty(), "{}", keep(problems.join("\n")));
    assert!(backwards.is_empty(), "{}", keep(backwards.join("\n")));
    for (name, lost, _) in &copies {
        assert_eq!(
            *lost,
            0,
            "{}",
            keep(format!("acknowledged records lost on the {name}"))
        );
    }
    // Same records, same order, everywhere.
    for (name, _, records) in &copies[1..] {
        assert!(
            same_records(&copies[0].2, records),
            "{}",
            keep(format!("the {name} holds other records than the primary"))
        );
    }
    assert!(!acked.is_empty(), "no record was acknowledged");
    assert!(samples > 0, "applied_lsn was never read");
    assert_eq!(applied_max, flush);
    if secs >= 30 {
        for part in [Part::Writer, Part::Serve, Part::Standby, Part::Archive] {
            assert!(k(part) > 0, "the chaos never killed {part:?}");
        }
        assert!(cuts > 0, "the chaos never cut a connection");
    }
}
