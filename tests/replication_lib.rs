//! The replication library in one process: a writer, a shipper and a standby with its own
//! applicator, on loopback TCP.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walship::format::record::RecordRef;
use walship::replication::{
    Applicator, Shipper, ShipperConfig, ShipperEvent, Standby, StandbyConfig, StandbyPhase,
};
use walship::{DataDir, Entry, EntryType, Wal, WalOptions};

/// (LSN, end LSN, payload) of one applied record.
type Seen = (u64, u64, Vec<u8>);

/// Remembers every record it is given.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<Seen>>>);

impl Applicator for Recording {
    fn apply(&mut self, r: &RecordRef<'_>) -> walship::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push((r.lsn().0, r.end_lsn().0, r.payload.to_vec()));
        Ok(())
    }
}

fn append(wal: &Wal, from: usize, n: usize) {
    for i in from..from + n {
        let p = format!("entry-{i:06}");
        wal.append(&Entry::new(EntryType::Insert, Some(i as u64), p.as_bytes()))
            .unwrap();
    }
    wal.sync().unwrap();
    wal.seal().unwrap();
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipper_and_standby_library_api() {
    let t = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (t.path().join("primary"), t.path().join("standby"));
    DataDir::init(&pdir, 64 * 1024).unwrap();
    let wal = Wal::open(&pdir, WalOptions::default()).unwrap();
    append(&wal, 0, 2000);

    let mut cfg = ShipperConfig::new(&pdir, "127.0.0.1:0");
    cfg.heartbeat_interval = Duration::from_millis(100);
    let mut shipper = Shipper::start(cfg).await.unwrap();
    assert!(shipper.is_running());
    let mut events = shipper.subscribe();

    let rec = Recording::default();
    let mut scfg = StandbyConfig::new(&sdir, shipper.local_addr().to_string());
    scfg.heartbeat_interval = Duration::from_millis(100);
    let mut standby = Standby::start(scfg, rec.clone()).await.unwrap();
    assert!(standby.is_running());
    let flush = wal.flush_lsn().0;
    wait_for("the standby to apply everything", || {
        standby.state().applied_lsn == walship::Lsn(flush)
    })
    .await;
    let st = standby.state();
    assert_eq!(st.flushed_lsn, walship::Lsn(flush));
    assert_eq!(st.phase, StandbyPhase::Streaming);
    assert_eq!(st.standby_id, standby.standby_id().to_string());

    // The shipper's view: one standby, caught up, no lag.
    let id = standby.standby_id().to_string();
    wait_for("the shipper to hear the applied position", || {
        shipper
            .standbys()
            .iter()
            .any(|s| s.id == id && s.applied_lsn == walship::Lsn(flush) && s.connected)
    })
    .await;
    let lag = shipper.lag().unwrap();
    assert_eq!(lag.len(), 1);
    assert_eq!((lag[0].1, lag[0].2), (0, Some(0.0)));

    // The applicator saw every record once, in order, with its payload.
    {
        let seen = rec.0.lock().unwrap();
        assert_eq!(seen.len(), 2000);
        assert!(seen.windows(2).all(|w| w[0].1 <= w[1].0));
        assert_eq!(seen[1999].2, b"entry-001999");
        assert_eq!(seen.last().unwrap().1, flush);
    }

    // More WAL while everything runs.
    append(&wal, 2000, 700);
    let flush2 = wal.flush_lsn().0;
    wait_for("the standby to apply the new segments", || {
        standby.state().applied_lsn == walship::Lsn(flush2)
    })
    .await;
    assert_eq!(rec.0.lock().unwrap().len(), 2700);

    // Events: connection, shipped segments, acknowledgements up to the new end.
    let mut saw = (false, false, false);
    // The standby's own state can reach the end before the shipper has read its last Status:
    // wait for the events rather than take what is there.
    let deadline = Instant::now() + Duration::from_secs(90);
    while saw != (true, true, true) && Instant::now() < deadline {
        let Ok(Ok(e)) = tokio::time::timeout(Duration::from_secs(1), events.recv()).await else {
            continue;
        };
        match e {
            ShipperEvent::Connected { id: i, .. } => saw.0 |= i == id,
            ShipperEvent::Shipped { end_lsn, .. } => saw.1 |= end_lsn == walship::Lsn(flush2),
            ShipperEvent::Acknowledged { applied_lsn, .. } => {
                saw.2 |= applied_lsn == walship::Lsn(flush2)
            }
            ShipperEvent::Disconnected { .. } => {}
            ShipperEvent::Damaged { entry, .. } => panic!("no damage here, yet: {entry}"),
            ShipperEvent::SyncDegraded { .. } | ShipperEvent::SyncRestored { .. } => {
                panic!("no synchronous policy here: {e:?}")
            }
        }
    }
    assert_eq!(saw, (true, true, true), "connected, shipped, acknowledged");

    // Bounded, clean shutdown on both sides.
    standby.stop(Duration::from_secs(5)).await.unwrap();
    assert!(!standby.is_running());
    assert_eq!(standby.state().phase, StandbyPhase::Stopped);
    let disconnected = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(ShipperEvent::Disconnected { id: Some(i), .. }) if i == id => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(disconnected, Ok(true));
    shipper.stop(Duration::from_secs(5)).await;
    assert!(!shipper.is_running());
    drop(standby);
    // The standby released its directory, and its positions are on disk.
    let dd = DataDir::new(&sdir);
    let _lock = dd.lock().unwrap();
    let s = walship::status::status(&sdir).unwrap();
    assert_eq!(
        (s.flush_lsn.0, s.applied_lsn.map(|l| l.0)),
        (flush2, Some(flush2))
    );
    let p = walship::status::status(&pdir).unwrap();
    assert_eq!(p.flush_lsn, walship::Lsn(flush2));
    assert_eq!(p.standbys.len(), 1);
    assert_eq!(p.standbys[0].applied_lsn, walship::Lsn(flush2));
    assert_eq!(p.standbys[0].id, id);
}

/// `stop` returns only once the standby has let go of its directory: the directory can be locked
/// at once, and a new standby on it starts, again and again (a task of the old one still
/// holding the directory would make both fail with "locked").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_standby_has_let_go_of_its_directory() {
    let t = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (t.path().join("primary"), t.path().join("standby"));
    DataDir::init(&pdir, 64 * 1024).unwrap();
    let wal = Wal::open(&pdir, WalOptions::default()).unwrap();
    append(&wal, 0, 200);
    let mut cfg = ShipperConfig::new(&pdir, "127.0.0.1:0");
    cfg.heartbeat_interval = Duration::from_millis(20);
    let mut shipper = Shipper::start(cfg).await.unwrap();
    let rec = Recording::default();
    for round in 0..20 {
        let mut scfg = StandbyConfig::new(&sdir, shipper.local_addr().to_string());
        scfg.heartbeat_interval = Duration::from_millis(20);
        let mut standby = Standby::start(scfg, rec.clone())
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let flush = walship::Lsn(wal.flush_lsn().0);
        wait_for("the standby to stream", || {
            let st = standby.state();
            st.phase == StandbyPhase::Streaming && st.flushed_lsn == flush
        })
        .await;
        standby.stop(Duration::from_secs(10)).await.unwrap();
        drop(standby);
        // At once, with no time for the runtime to finish anything left behind.
        let held = DataDir::new(&sdir).lock();
        assert!(held.is_ok(), "round {round}: {:?}", held.err());
    }
    shipper.stop(Duration::from_secs(10)).await;
}

/// Remembers every record, and takes `flush_delay` to make them durable: an applier that lags
/// far behind the stored positions.
#[derive(Clone)]
struct Slow(Recording, Duration);

impl Applicator for Slow {
    fn apply(&mut self, r: &RecordRef<'_>) -> walship::Result<()> {
        self.0.apply(r)
    }

    fn flush(&mut self) -> walship::Result<()> {
        std::thread::sleep(self.1);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_standby_leaves_its_apply_backlog_to_the_next_start() {
    let t = tempfile::tempdir().unwrap();
    let (pdir, sdir) = (t.path().join("primary"), t.path().join("standby"));
    DataDir::init(&pdir, 64 * 1024).unwrap();
    let wal = Wal::open(&pdir, WalOptions::default()).unwrap();
    // 30 sealed segments: 30 apply jobs of a second each.
    for i in 0..30 {
        append(&wal, i * 50, 50);
    }
    let flush = walship::Lsn(wal.flush_lsn().0);
    let mut shipper = Shipper::start(ShipperConfig::new(&pdir, "127.0.0.1:0"))
        .await
        .unwrap();
    let rec = Recording::default();
    let mut standby = Standby::start(
        StandbyConfig::new(&sdir, shipper.local_addr().to_string()),
        Slow(rec.clone(), Duration::from_secs(1)),
    )
    .await
    .unwrap();
    wait_for("the standby to store everything", || {
        standby.state().flushed_lsn == flush
    })
    .await;
    standby.stop(Duration::from_secs(60)).await.unwrap();
    let st = standby.state();
    assert_eq!(st.phase, StandbyPhase::Stopped);
    // It stopped after the job it was on, not after the whole queue.
    assert!(
        st.applied_lsn < flush,
        "applied {} of {flush}",
        st.applied_lsn
    );
    drop(standby);

    // The next start applies the rest, each record once, in order.
    let mut standby = Standby::start(
        StandbyConfig::new(&sdir, shipper.local_addr().to_string()),
        rec.clone(),
    )
    .await
    .unwrap();
    wait_for("the restarted standby to apply everything", || {
        standby.state().applied_lsn == flush
    })
    .await;
    standby.stop(Duration::from_secs(10)).await.unwrap();
    shipper.stop(Duration::from_secs(10)).await;
    let seen = rec.0.lock().unwrap();
    assert_eq!(seen.len(), 1500);
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].0));
    assert_eq!(seen.last().unwrap().1, flush.0);
}
