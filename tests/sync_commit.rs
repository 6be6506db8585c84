//! Synchronous commit: real `walship serve --sync`, `walship standby --name` and
//! `walship write --durable --wait-sync` processes on loopback TCP, and the library's wait in
//! one process. What is checked is what each level promises: an acknowledged record is on the
//! standby (remote_flush) or applied by it (remote_apply), commits wait while the policy
//! cannot be met, and with a timeout continue degraded and return to synchronous.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{bin, code, init, p, serve, standby, status, text, wait_until, walship, Proc};

/// `walship write DIR --durable --wait-sync`, stdin and stdout piped, stderr in `log`.
fn writer(dir: &Path, log: &Path) -> Child {
    Command::new(bin())
        .args(["write", p(dir), "--durable", "--wait-sync"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Commits one record through `write --wait-sync`; returns its exit code and output once it
/// ends, or None when it is still waiting after `within` (it is then killed).
fn commit(dir: &Path, payload: &str, within: Duration, log: &Path) -> Option<(i32, String)> {
    let mut c = writer(dir, log);
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("{payload}\n").as_bytes())
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut c.stdout.take().unwrap(), &mut out).unwrap();
            return Some((st.code().unwrap_or(-1), out));
        }
        if Instant::now() >= deadline {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The records a standby holds, its partial copy of the open segment included (read as an open
/// segment from a copy of its directory).
fn standby_records(sb: &Path, scratch: &Path) -> Vec<common::Rec> {
    common::copy_tree(sb, scratch);
    for e in std::fs::read_dir(scratch.join("wal")).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(stem) = name.strip_suffix(".wal.partial") {
            std::fs::rename(&path, scratch.join("wal").join(format!("{stem}.wal.open"))).unwrap();
        }
    }
    let _ = std::fs::remove_file(scratch.join("state").join("standby.json"));
    common::read_recs(scratch).unwrap()
}

/// Commits one record through the library: appends it, waits until it is durable here, then
/// until the synchronous policy releases it (at most 30 s); returns its end and the release.
async fn commit_lib(
    wal: &Arc<walship::Wal>,
    waiter: &walship::replication::synchronous::SyncWaiter,
    id: u64,
    payload: &[u8],
) -> (
    walship::Lsn,
    Result<
        walship::replication::synchronous::Released,
        walship::replication::synchronous::WaitError,
    >,
) {
    use walship::{Entry, EntryType};
    let a = wal
        .append(&Entry::new(EntryType::TxCommit, Some(id), payload))
        .unwrap();
    let w2 = wal.clone();
    tokio::task::spawn_blocking(move || w2.wait_durable(a.end_lsn))
        .await
        .unwrap()
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), waiter.wait(a.end_lsn))
        .await
        .unwrap_or_else(|_| panic!("commit {id} still waits for the policy after 30 s"));
    (a.end_lsn, r)
}

fn standby_named(dir: &Path, addr: &str, name: &str, log: &Path) -> Proc {
    standby(dir, addr, &["--name", name], log)
}

#[test]
fn wait_sync_without_a_serving_policy_exits_2() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    init(&dir);
    let log = t.path().join("w.log");
    let (c, out) = commit(&dir, "x", Duration::from_secs(30), &log).unwrap();
    assert_eq!(c, 2);
    assert_eq!(out, "", "nothing was confirmed, nothing printed");
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(
        err.contains("--wait-sync: no synchronous policy is published"),
        "{err}"
    );
    // A serve with a policy that is killed leaves its files, but not its lock.
    let (mut srv, _) = serve(
        &dir,
        "127.0.0.1:0",
        &["--sync", "FIRST 1 (s1)"],
        &t.path().join("s.log"),
    );
    srv.kill();
    let (c, _) = commit(&dir, "y", Duration::from_secs(30), &log).unwrap();
    assert_eq!(c, 2);
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(err.contains("is no longer running"), "{err}");
    // Bad policies and names are refused with the column or the byte.
    let o = walship(&[
        "serve",
        p(&dir),
        "--listen",
        "127.0.0.1:0",
        "--sync",
        "FIRST 2 (a)",
    ]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("column 7"), "{}", text(&o));
    let o = walship(&[
        "standby",
        p(&t.path().join("s")),
        "--primary",
        "127.0.0.1:1",
        "--name",
        "a b",
    ]);
    assert_eq!(code(&o), 2);
    assert!(text(&o).contains("at byte 1"), "{}", text(&o));
}

/// Every record `write --wait-sync` acknowledged under `FIRST 1 (s1)` at remote_flush is on
/// s1 with its payload, after the writer and serve are SIGKILLed together at a random moment
/// and the primary's directory is deleted.
#[test]
fn rpo_0_every_acknowledged_record_is_on_the_synchronous_standby() {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for round in 0..3 {
        let t = tempfile::tempdir().unwrap();
        let (dir, sb) = (t.path().join("p"), t.path().join("s1"));
        init(&dir);
        let (mut srv, addr) = serve(
            &dir,
            "127.0.0.1:0",
            &["--sync", "FIRST 1 (s1)", "--sync-level", "remote_flush"],
            &t.path().join("serve.log"),
        );
        let mut s1 = standby_named(&sb, &addr, "s1", &t.path().join("s1.log"));
        let mut w = writer(&dir, &t.path().join("w.log"));
        let mut stdin = w.stdin.take().unwrap();
        let stdout = w.stdout.take().unwrap();
        // Lines go out one by one; LSNs come back in the same order.
        let feeder = std::thread::spawn(move || {
            for i in 0.. {
                if stdin
                    .write_all(format!("round-{round}-rec-{i:06}\n").as_bytes())
                    .is_err()
                {
                    return;
                }
                std::thread::sleep(Duration::from_micros(300));
            }
        });
        let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
        let a2 = acked.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let lsn: walship::Lsn = line.trim().parse().unwrap();
                a2.lock().unwrap().push(lsn.0);
            }
        });
        wait_until("some records acknowledged", || {
            acked.lock().unwrap().len() >= 20
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
        // Both at once, then the primary is gone for good.
        let _ = w.kill();
        srv.kill();
        let _ = w.wait();
        let _ = feeder.join();
        let _ = reader.join();
        std::fs::remove_dir_all(&dir).unwrap();
        s1.kill();
        let acked = acked.lock().unwrap().clone();
        assert!(acked.len() >= 20);
        let recs = standby_records(&sb, &t.path().join("copy"));
        let by_lsn: std::collections::HashMap<u64, &common::Rec> =
            recs.iter().map(|r| (r.lsn, r)).collect();
        // The k-th acknowledged LSN is the k-th line written.
        for (k, lsn) in acked.iter().enumerate() {
            let r = by_lsn
                .get(lsn)
                .unwrap_or_else(|| panic!("round {round}: acknowledged record {k} at {lsn} is not on s1 ({} records there)", recs.len()));
            assert_eq!(
                r.payload,
                format!("round-{round}-rec-{k:06}"),
                "round {round}"
            );
        }
    }
}

/// ANY 2 of 3: one standby down, commits continue; two down, they wait, and go on when one
/// returns. With a timeout: they continue after it, degraded (status, log), and synchronous
/// again once a standby is back and caught up.
#[test]
fn any_2_of_3_waits_for_a_quorum_and_degrades_only_with_a_timeout() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let sdir = |n: &str| t.path().join(n);
    let log = |n: &str| t.path().join(format!("{n}.log"));
    init(&dir);
    let (mut srv, addr) = serve(
        &dir,
        "127.0.0.1:0",
        &["--sync", "ANY 2 (a, b, c)"],
        &log("serve"),
    );
    let mut a = standby_named(&sdir("a"), &addr, "a", &log("a"));
    let mut b = standby_named(&sdir("b"), &addr, "b", &log("b"));
    let mut c = standby_named(&sdir("c"), &addr, "c", &log("c"));
    let ok = |what: &str| {
        let r = commit(&dir, what, Duration::from_secs(30), &log("w"));
        assert_eq!(r.as_ref().map(|r| r.0), Some(0), "{what}: {r:?}");
    };
    // A fourth standby without a name: named after its id, and asynchronous.
    let mut d = standby(&sdir("d"), &addr, &[], &log("d"));
    wait_until("four standbys connected", || {
        status(&dir)["standbys"]
            .as_array()
            .is_some_and(|v| v.len() == 4 && v.iter().all(|s| s["connected"] == true))
    });
    ok("all three");
    // ANY 2 may confirm before the third standby's first acknowledgement: wait for all three.
    wait_until("all three standbys acknowledging", || {
        status(&dir)["standbys"].as_array().is_some_and(|a| {
            a.len() == 4 && a.iter().filter(|s| s["sync_state"] == "quorum").count() == 3
        })
    });
    let st = status(&dir);
    assert_eq!(st["sync"]["policy"], "ANY 2 (a, b, c)");
    assert_eq!(st["sync"]["degraded"], false);
    let mut states: Vec<(String, String)> = st["standbys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap();
            let name = if name.starts_with("standby-") && name.len() == 16 {
                "default"
            } else {
                name
            };
            (
                name.to_string(),
                s["sync_state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    states.sort();
    let want: Vec<(String, String)> = [
        ("a", "quorum"),
        ("b", "quorum"),
        ("c", "quorum"),
        ("default", "async"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(states, want);
    // Each standby shows (and keeps) its name.
    assert_eq!(status(&sdir("a"))["standby_name"], "a");
    let d_name = status(&sdir("d"))["standby_name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(d_name.starts_with("standby-"), "{d_name}");
    d.kill();
    c.kill();
    ok("c stopped");
    b.kill();
    assert_eq!(
        commit(
            &dir,
            "b and c stopped",
            Duration::from_millis(1500),
            &log("w")
        ),
        None,
        "with one standby of ANY 2 the commit waits"
    );
    // It goes on as soon as a second standby is back.
    let mut waiting = writer(&dir, &log("w2"));
    waiting
        .stdin
        .take()
        .unwrap()
        .write_all(b"waits for b\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiting.try_wait().unwrap().is_none());
    b = standby_named(&sdir("b"), &addr, "b", &log("b"));
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    // The same with a timeout: commits continue after it, degraded.
    srv.kill();
    b.kill();
    a.kill();
    let (srv, addr) = serve(
        &dir,
        "127.0.0.1:0",
        &["--sync", "ANY 2 (a, b, c)", "--sync-timeout", "500ms"],
        &log("serve2"),
    );
    a = standby_named(&sdir("a"), &addr, "a", &log("a2"));
    let started = Instant::now();
    let r = commit(&dir, "degraded", Duration::from_secs(30), &log("w"));
    assert_eq!(r.map(|r| r.0), Some(0));
    assert!(started.elapsed() >= Duration::from_millis(500));
    let st = status(&dir);
    assert_eq!(st["sync"]["degraded"], true, "{st}");
    wait_until("the degradation logged", || {
        srv.log().contains("SYNCHRONOUS COMMIT DEGRADED")
    });
    ok("still degraded");
    // A second standby returns and catches up: synchronous again.
    b = standby_named(&sdir("b"), &addr, "b", &log("b2"));
    wait_until("synchronous again", || {
        status(&dir)["sync"]["degraded"] == false
    });
    assert!(
        srv.log().contains("synchronous commit restored"),
        "{}",
        srv.log()
    );
    ok("synchronous again");
    // Slots are saved at most once a second: status catches up with the standbys within that.
    wait_until("status to show a and b caught up", || {
        status(&dir)["standbys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|sb| sb["name"] == "a" || sb["name"] == "b")
            .all(|sb| sb["connected"] == true && sb["flush_lag_bytes"] == 0)
    });
    drop((a, b, c, srv));
}

/// (LSN, end LSN, payload) of one applied record.
type Seen = (u64, u64, Vec<u8>);

/// Remembers each record an applicator saw.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<Seen>>>);

impl walship::replication::Applicator for Recording {
    fn apply(&mut self, r: &walship::format::record::RecordRef<'_>) -> walship::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push((r.lsn().0, r.end_lsn().0, r.payload.to_vec()));
        Ok(())
    }
}

/// Each released record was applied, and no record was applied twice.
fn assert_applied_once(rec: &Recording, released: &[(u64, String)]) {
    let seen = rec.0.lock().unwrap().clone();
    for (end, payload) in released {
        assert!(
            seen.iter()
                .any(|(_, e, p)| e == end && p == payload.as_bytes()),
            "{payload} acknowledged but not applied"
        );
    }
    let mut lsns: Vec<u64> = seen.iter().map(|s| s.0).collect();
    lsns.sort_unstable();
    let n = lsns.len();
    lsns.dedup();
    assert_eq!(lsns.len(), n, "a record was applied twice: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].0),
        "records applied out of order: {seen:?}"
    );
}

/// The library: concurrent committers share the confirmations; at remote_apply an
/// acknowledged record has been seen by the standby's applicator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_waiters_share_confirmations_and_remote_apply_means_applied() {
    use walship::replication::synchronous::{Released, SyncConfig, SyncLevel, SyncPolicy};
    use walship::replication::{Shipper, ShipperConfig, Standby, StandbyConfig};
    use walship::{DataDir, Wal, WalOptions};
    let t = tempfile::tempdir().unwrap();
    let (pdir, sdir): (PathBuf, PathBuf) = (t.path().join("p"), t.path().join("s"));
    DataDir::init(&pdir, 64 * 1024).unwrap();
    let wal = Arc::new(Wal::open(&pdir, WalOptions::default()).unwrap());
    let mut cfg = ShipperConfig::new(&pdir, "127.0.0.1:0");
    cfg.heartbeat_interval = Duration::from_millis(100);
    cfg.flush_watch = Some(wal.flush_watch());
    cfg.sync = Some(SyncConfig {
        policy: SyncPolicy::parse("FIRST 1 (s)").unwrap(),
        level: SyncLevel::RemoteApply,
        timeout: None,
    });
    let mut shipper = Shipper::start(cfg).await.unwrap();
    let waiter = shipper.sync_waiter().unwrap();
    let rec = Recording::default();
    let mut scfg = StandbyConfig::new(&sdir, shipper.local_addr().to_string());
    scfg.heartbeat_interval = Duration::from_millis(100);
    scfg.name = Some("s".into());
    let mut standby = Standby::start(scfg, rec.clone()).await.unwrap();
    assert_eq!(standby.name(), "s");

    // Eight committers, each its own record; none is released before it is applied.
    let (tx, rx) = mpsc::channel();
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let (wal, waiter, tx) = (wal.clone(), waiter.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let payload = format!("commit-{i}");
            let (end, r) = commit_lib(&wal, &waiter, i, payload.as_bytes()).await;
            tx.send((end.0, payload)).unwrap();
            r.unwrap()
        }));
    }
    drop(tx);
    // The segment stays open (no age limit, far from full): each commit is released once the
    // standby applied its record from its copy of the open segment.
    let within = Duration::from_secs(30);
    for t in tasks {
        let r = tokio::time::timeout(within, t).await;
        assert_eq!(
            r.expect("a remote_apply commit waits for a seal").unwrap(),
            Released::Confirmed
        );
    }
    let mut released: Vec<(u64, String)> = rx.iter().collect();
    assert_eq!(released.len(), 8);
    assert_eq!(
        walship::status::status(&pdir).unwrap().sealed_lsn,
        walship::Lsn::ZERO,
        "the segment is still open"
    );
    assert_applied_once(&rec, &released);

    // A restart in the middle of the segment: the applier resumes after the durable applied
    // position, within the copy, and never applies a record twice.
    standby.stop(Duration::from_secs(5)).await.unwrap();
    drop(standby);
    let mut scfg = StandbyConfig::new(&sdir, shipper.local_addr().to_string());
    scfg.heartbeat_interval = Duration::from_millis(100);
    scfg.name = Some("s".into());
    let mut standby = Standby::start(scfg, rec.clone()).await.unwrap();
    for i in 8..12u64 {
        let payload = format!("commit-{i}");
        let (end, r) = commit_lib(&wal, &waiter, i, payload.as_bytes()).await;
        assert_eq!(r, Ok(Released::Confirmed), "released without a seal");
        released.push((end.0, payload));
    }
    assert_applied_once(&rec, &released);

    // At the seal, the records applied while the segment was open are not applied again: a
    // record of the next segment, applied after the sealed one, shows the seal was handled.
    let w2 = wal.clone();
    tokio::task::spawn_blocking(move || w2.seal())
        .await
        .unwrap()
        .unwrap();
    let (end, r) = commit_lib(&wal, &waiter, 12, b"commit-12").await;
    assert_eq!(r, Ok(Released::Confirmed));
    released.push((end.0, "commit-12".into()));
    assert_applied_once(&rec, &released);
    let st = shipper.sync_status().unwrap();
    assert_eq!(st.policy, "FIRST 1 (s)");
    assert!(!st.degraded);
    assert!(st.confirmed_lsn.0 >= released.iter().map(|r| r.0).max().unwrap());
    let sb = &shipper.standbys()[0];
    assert_eq!((sb.name.as_str(), sb.sync_state.as_str()), ("s", "sync"));
    standby.stop(Duration::from_secs(5)).await.unwrap();
    shipper.stop(Duration::from_secs(5)).await;
    // Stopped: a wait for more ends at once.
    assert!(waiter.wait(walship::Lsn(u64::MAX)).await.is_err());
}

/// The library: without its standby a commit waits; after the timeout it is released degraded
/// and the shipper says so with an event; the standby's return restores synchronous commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_degrades_after_the_timeout_with_an_event_and_returns() {
    use walship::replication::synchronous::{Released, SyncConfig, SyncLevel, SyncPolicy};
    use walship::replication::{Shipper, ShipperConfig, ShipperEvent, Standby, StandbyConfig};
    use walship::{DataDir, Wal, WalOptions};
    let t = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (t.path().join("p"), t.path().join("s"));
    DataDir::init(&pdir, 64 * 1024).unwrap();
    let wal = Arc::new(Wal::open(&pdir, WalOptions::default()).unwrap());
    let mut cfg = ShipperConfig::new(&pdir, "127.0.0.1:0");
    cfg.heartbeat_interval = Duration::from_millis(100);
    cfg.flush_watch = Some(wal.flush_watch());
    cfg.sync = Some(SyncConfig {
        policy: SyncPolicy::parse("FIRST 1 (s)").unwrap(),
        level: SyncLevel::RemoteFlush,
        timeout: Some(Duration::from_millis(300)),
    });
    // The timeout runs from when confirmations are first missing, which may be as early as the
    // shipper's start: the degraded release can come no sooner than that plus the timeout.
    let started = Instant::now();
    let mut shipper = Shipper::start(cfg).await.unwrap();
    let mut events = shipper.subscribe();
    let waiter = shipper.sync_waiter().unwrap();
    let (a_end, r) = commit_lib(&wal, &waiter, 1, b"alone").await;
    assert_eq!(r, Ok(Released::Degraded));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(shipper.sync_status().unwrap().degraded);
    let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(e, ShipperEvent::SyncDegraded { durable, .. } if durable >= a_end),
        "{e:?}"
    );
    let mut scfg = StandbyConfig::new(&sdir, shipper.local_addr().to_string());
    scfg.heartbeat_interval = Duration::from_millis(100);
    scfg.name = Some("s".into());
    let mut standby = Standby::start(scfg, walship::replication::CheckingApplicator::default())
        .await
        .unwrap();
    let restored = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(ShipperEvent::SyncRestored { confirmed }) = events.recv().await {
                return confirmed;
            }
        }
    })
    .await
    .unwrap();
    assert!(restored >= a_end);
    assert!(!shipper.sync_status().unwrap().degraded);
    let (_, r) = commit_lib(&wal, &waiter, 2, b"confirmed").await;
    assert_eq!(r, Ok(Released::Confirmed));
    standby.stop(Duration::from_secs(5)).await.unwrap();
    shipper.stop(Duration::from_secs(5)).await;
}

/// A primary `root/p` served with the synchronous `policy` at `remote_flush`: its directory,
/// the serve, and its address.
fn primary_with_policy(root: &Path, policy: &str) -> (PathBuf, Proc, String) {
    let dir = root.join("p");
    init(&dir);
    let (srv, addr) = serve(
        &dir,
        "127.0.0.1:0",
        &["--sync", policy, "--sync-level", "remote_flush"],
        &root.join("serve.log"),
    );
    (dir, srv, addr)
}

/// A connection that ends before its first Status (a `rewind` asking for history files under
/// a standby's name, a first contact cut short) leaves no standby behind that the policy takes
/// for connected: with the named standby killed, commits go to the next one in priority.
#[test]
fn a_connection_that_ends_before_reporting_leaves_no_connected_ghost() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let (dir, _srv, addr) = primary_with_policy(root, "FIRST 1 (a, b)");
    let mut a = standby_named(&root.join("a"), &addr, "a", &root.join("a.log"));
    let mut b = standby_named(&root.join("b"), &addr, "b", &root.join("b.log"));
    let one = commit(&dir, "one", Duration::from_secs(60), &root.join("w1.log"));
    assert_eq!(one.map(|(c, _)| c), Some(0), "the first commit");
    // A rewind of some copy of the primary, under the name `a`: it connects, takes the history
    // files and closes before any Status (it is then refused: the copy is on the same timeline).
    let copy = root.join("copy");
    common::copy_tree(&dir, &copy);
    let _ = walship(&[
        "rewind",
        p(&copy),
        "--source",
        &addr,
        "--name",
        "a",
        "--dry-run",
    ]);
    a.kill();
    let two = commit(&dir, "two", Duration::from_secs(30), &root.join("w2.log"));
    assert_eq!(
        two.map(|(c, _)| c),
        Some(0),
        "the next commit goes to b, caught up and connected"
    );
    assert!(b.running(), "{}", b.log());
    b.kill();
}

/// Two connections under one standby id (two standbys started from copies of one directory):
/// the later takes the earlier's place, and the end of the earlier never marks the live one
/// disconnected. Killing one copy leaves commits going to the other.
#[test]
fn a_second_connection_of_one_standby_takes_the_firsts_place() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let (dir, srv, addr) = primary_with_policy(root, "FIRST 1 (a)");
    let (sa, sc) = (root.join("sa"), root.join("sc"));
    let mut a = standby_named(&sa, &addr, "a", &root.join("a.log"));
    let one = commit(&dir, "one", Duration::from_secs(60), &root.join("w1.log"));
    assert_eq!(one.map(|(c, _)| c), Some(0), "the first commit");
    a.kill();
    common::copy_tree(&sa, &sc);
    let mut a = standby_named(&sa, &addr, "a", &root.join("a2.log"));
    let mut c = standby_named(&sc, &addr, "a", &root.join("c.log"));
    wait_until("the second connection to take the first's place", || {
        srv.log()
            .contains("connected again while its older connection was open")
    });
    c.kill();
    let two = commit(&dir, "two", Duration::from_secs(60), &root.join("w2.log"));
    assert_eq!(
        two.map(|(c, _)| c),
        Some(0),
        "the copy left takes the commits"
    );
    assert!(a.running(), "{}", a.log());
    a.kill();
}
