//! The seal finisher and the tickets that say what makes a record durable.
//!
//! Sealing runs off the append path. The writer writes the seal marker into the mapping and
//! moves on to the next segment; the finisher thread (`walship-seal`) makes the sealed segment
//! durable (msync), cuts it to its used length, syncs it, renames it to its sealed name and
//! syncs the directory. It also makes each activated segment's open name durable (directory
//! fsync) and starts the early writeback of the open segment. A rotation's activation and seal
//! share one directory fsync: the sealed segment is renamed first, then one fsync of `wal/`
//! makes both names durable (1 msync + 1 file fsync + 1 directory fsync per rotation).
//!
//! Tickets: every seal and every activation that durability depends on takes the next number
//! of the tail's count (`Tail::tickets`), in the order they happen, and is handed to the
//! finisher in that order. The finisher records how far it has got: `durable` (every seal
//! marker and activated name up to that ticket is durable) and `named` (every sealed segment up
//! to that ticket also has its sealed name).
//!
//! No record of the next segment counts as durable before the previous segment's seal marker
//! and the next segment's name are: a group-commit leader notes the ticket count with the write
//! position and waits for `durable` to reach it before it moves `flush_lsn` (see
//! `durability.rs`). So after a crash, an older open segment either ends with a durable seal
//! marker (recovery finishes its seal) or holds the last durable records (recovery cuts the log
//! there and sets the newer open segments aside: they hold no acknowledged record).
//!
//! Work that failed poisons the writer and still counts as reached, so that nobody waits for it
//! forever. When the thread is gone (the writer is closing), the work is done inline.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::durability::SegmentSync;
use super::tail::Writeback;
use super::{lock, Inner};
use crate::error::{Error, IoContext, Result};
use crate::format::SegmentFileKind;
use crate::fsutil::fsync_dir;
use crate::segment_file::ActiveSegment;
use crate::Lsn;

/// The finisher's queue and how far it has got.
#[derive(Default)]
pub(super) struct Finisher {
    /// Work for the finisher thread; `None` once it stopped (then the work is done inline).
    pub tx: Mutex<Option<mpsc::Sender<FinisherMsg>>>,
    /// How far the finisher has got with the tickets handed to it.
    finishing: Mutex<Finishing>,
    /// Signalled when `finishing` moves.
    finishing_cv: Condvar,
}

/// The tickets the finisher has reached. Work that failed poisons the writer and still counts
/// as reached, so that nobody waits for it forever.
#[derive(Default)]
pub(super) struct Finishing {
    /// Every sealed segment and activated name handed over up to this ticket is durable.
    pub durable: u64,
    /// Every sealed segment up to this ticket also has its sealed name.
    pub named: u64,
}

/// A sealed segment, marker written, still under its open name.
pub(super) struct SealedOpen {
    pub seg: Arc<ActiveSegment>,
    /// Bytes up to the end of the seal marker.
    pub used: usize,
    pub end_lsn: Lsn,
    /// The ticket of its `Durable` step.
    pub ticket: u64,
}

/// Work for the finisher thread, done in the order sent.
pub(super) enum FinisherMsg {
    /// Make a sealed segment durable (msync up to the end of its marker).
    Durable(Arc<SealedOpen>),
    /// Make an activated segment's name durable (directory fsync), with this ticket.
    Activated(u64),
    /// Cut a durable sealed segment to its used length and give it its sealed name.
    Name(Arc<SealedOpen>),
    Writeback(Writeback),
    Stop,
}

/// Starts the finisher thread; it runs until it receives `FinisherMsg::Stop`.
pub(super) fn start(inner: &Arc<Inner>) -> Result<JoinHandle<()>> {
    let (ftx, frx) = mpsc::channel();
    let handle = {
        let inner = inner.clone();
        std::thread::Builder::new()
            .name("walship-seal".into())
            .spawn(move || finisher(inner, frx))
            .ctx(|| "start the seal finishing thread".to_string())?
    };
    *lock(&inner.finisher.tx) = Some(ftx);
    Ok(handle)
}

fn finisher(inner: Arc<Inner>, rx: mpsc::Receiver<FinisherMsg>) {
    // A message taken from the queue while looking for the one after an activation.
    let mut taken: Option<FinisherMsg> = None;
    loop {
        let msg = match taken.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(mpsc::RecvError) => return,
            },
        };
        match msg {
            FinisherMsg::Stop => return,
            // A rotation queues the sealed segment's `Name` right after the activation: one
            // directory fsync then makes both the new open name and the sealed name durable.
            FinisherMsg::Activated(ticket) => match rx.try_recv() {
                Ok(FinisherMsg::Name(s)) => inner.activated_and_named(ticket, &s),
                Ok(other) => {
                    inner.run_finisher_msg(FinisherMsg::Activated(ticket));
                    taken = Some(other);
                }
                Err(_) => inner.run_finisher_msg(FinisherMsg::Activated(ticket)),
            },
            other => inner.run_finisher_msg(other),
        }
    }
}

impl Inner {
    /// Queues work for the finisher thread, or does it here when the thread is gone.
    pub(super) fn to_finisher(&self, msg: FinisherMsg) {
        let msg = match &*lock(&self.finisher.tx) {
            Some(tx) => match tx.send(msg) {
                Ok(()) => return,
                Err(mpsc::SendError(m)) => m,
            },
            None => msg,
        };
        self.run_finisher_msg(msg);
    }

    fn run_finisher_msg(&self, msg: FinisherMsg) {
        // After a failure the writer is poisoned: leave the rest to recovery, but still count
        // every ticket as reached so that nobody waits forever.
        let healthy = !self.poisoned.load(Ordering::Acquire);
        match msg {
            FinisherMsg::Durable(s) => {
                if healthy {
                    crate::sync_point!("wal::finisher::sync");
                    // Nothing stores to it again: its pages are written back unmapped, with no
                    // write-protecting (and TLB flush) page by page.
                    s.seg.retire();
                    // A failure has poisoned the writer and been logged.
                    let _ = self
                        .sync_segment(&s.seg, SegmentSync::Range(0, s.used))
                        .and_then(|()| self.advance_flushed(s.end_lsn.0));
                    self.published.write_file();
                }
                self.reached(s.ticket, |f| &mut f.durable);
            }
            FinisherMsg::Activated(ticket) => {
                if healthy {
                    if let Err(e) = self.sync_wal_dir() {
                        tracing::error!(error = %e, "making an activated segment's name durable failed");
                    }
                }
                self.reached(ticket, |f| &mut f.durable);
            }
            FinisherMsg::Name(s) => {
                if healthy {
                    if let Err(e) = self.name_sealed(&s) {
                        tracing::error!(error = %e, "naming a sealed segment failed");
                    }
                }
                self.reached(s.ticket, |f| &mut f.named);
            }
            FinisherMsg::Writeback((seg, from, to)) => {
                // Only a hint to start writing early: durability still comes from msync. An
                // I/O error it meets poisons like a failed sync (and has been logged).
                if healthy {
                    // Whole pages behind the writer: written back unmapped (see `unmap_pages`).
                    seg.unmap_pages(from, to);
                    let _ = self.sync_segment(&seg, SegmentSync::StartWriteback(from, to));
                }
            }
            FinisherMsg::Stop => {}
        }
    }

    /// An activation and the seal queued right after it, with one directory fsync: the sealed
    /// segment is cut, synced and renamed first, then the fsync of `wal/` makes its sealed name
    /// and the activated segment's open name durable together. The activation's ticket is
    /// reached only after that fsync, so no record of the new segment counts as durable before
    /// its name is, as with a fsync of its own.
    fn activated_and_named(&self, activated: u64, s: &SealedOpen) {
        if !self.poisoned.load(Ordering::Acquire) {
            // Every failure on the way poisons the writer (and is logged): nothing of the new
            // segment counts as durable then.
            if let Err(e) = self.name_sealed(s) {
                tracing::error!(error = %e, "naming a sealed segment failed");
            }
        }
        self.reached(s.ticket, |f| &mut f.named);
        self.reached(activated, |f| &mut f.durable);
    }

    /// Syncs the `wal/` directory; a failure poisons the writer.
    fn sync_wal_dir(&self) -> Result<()> {
        fsync_dir(&self.dir.wal_dir()).map_err(|e| match e {
            Error::Io { context, source } => self.poison(context, source),
            other => other,
        })
    }

    /// Cuts a durable sealed segment to its used length and gives it its sealed name.
    fn name_sealed(&self, s: &SealedOpen) -> Result<()> {
        let seg = &s.seg;
        let p = |what: &str| format!("{what} {}", seg.path.display());
        // Nothing maps past `used` any more: the tail is only zeros we never wrote.
        crate::fault!("wal::seal::truncate", e => self.poison(p("truncate"), e));
        seg.truncate(s.used as u64)
            .map_err(|e| self.poison(p("truncate"), e))?;
        self.sync_segment(seg, SegmentSync::File)?;
        let sealed_name = seg.name.with_kind(SegmentFileKind::Sealed);
        let sealed_path = self.dir.segment_path(&sealed_name);
        crate::fault!("wal::seal::rename", e => self.poison(p("rename"), e));
        std::fs::rename(&seg.path, &sealed_path).map_err(|e| self.poison(p("rename"), e))?;
        crate::fault!("wal::seal::dir_fsync", e => self.poison(format!("fsync directory {}", self.dir.wal_dir().display()), e));
        self.sync_wal_dir()?;
        self.sealed.fetch_max(s.end_lsn.0, Ordering::AcqRel);
        tracing::debug!(segment = %sealed_name, "sealed segment");
        Ok(())
    }

    fn reached(&self, ticket: u64, stage: impl Fn(&mut Finishing) -> &mut u64) {
        let mut f = lock(&self.finisher.finishing);
        let t = stage(&mut f);
        *t = (*t).max(ticket);
        drop(f);
        self.finisher.finishing_cv.notify_all();
    }

    /// Whether the finisher's `durable` stage has reached `ticket` already.
    pub(super) fn finishing_reached(&self, ticket: u64) -> bool {
        lock(&self.finisher.finishing).durable >= ticket
    }

    /// Blocks until the finisher's `stage` reaches `ticket`; fails when the writer was poisoned
    /// on the way.
    pub(super) fn wait_finishing(
        &self,
        ticket: u64,
        stage: impl Fn(&Finishing) -> u64,
    ) -> Result<()> {
        let mut f = lock(&self.finisher.finishing);
        while stage(&f) < ticket {
            f = self
                .finisher
                .finishing_cv
                .wait(f)
                .unwrap_or_else(|p| p.into_inner());
        }
        drop(f);
        self.check_poison()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::{ScanEnd, SegmentScanner};
    use crate::format::record::SEAL_LEN;
    use crate::wal::test_support::{entry, init, name, open, wal_files, SEG};
    use crate::wal::WalOptions;

    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Arc<Inner>) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("d");
        init(&root, SEG);
        let inner = Arc::new(open(&root, WalOptions::default()));
        (tmp, root, inner)
    }

    /// Appends `payloads` to the open segment and seals it; returns the seal's ticket and the
    /// end of the last record.
    fn append_and_seal(inner: &Inner, payloads: &[&[u8]]) -> (u64, u64) {
        let mut st = lock(&inner.tail);
        for p in payloads {
            inner.append_locked(&mut st, &entry(p), 0).expect("append");
        }
        inner.seal_locked(&mut st, false).expect("seal");
        (st.last_seal, st.end_lsn.0)
    }

    fn reached(inner: &Inner) -> (u64, u64) {
        let f = lock(&inner.finisher.finishing);
        (f.durable, f.named)
    }

    fn stop(inner: &Inner, h: JoinHandle<()>) {
        if let Some(tx) = lock(&inner.finisher.tx).take() {
            tx.send(FinisherMsg::Stop).expect("the finisher is running");
        }
        h.join().expect("the finisher thread ends");
    }

    #[test]
    fn an_activation_takes_a_ticket_that_counts_as_durable_once_its_name_is() {
        let (_tmp, _root, inner) = fresh();
        assert_eq!(reached(&inner), (0, 0));
        let mut st = lock(&inner.tail);
        inner
            .append_locked(&mut st, &entry(b"r"), 0)
            .expect("append");
        assert_eq!(st.tickets, 1);
        drop(st);
        // No thread: the directory sync was done inline, before the append returned.
        assert_eq!(reached(&inner), (1, 0), "durable, and nothing to name");
    }

    #[test]
    fn a_seal_done_inline_makes_the_marker_durable_then_gives_the_sealed_name() {
        let (_tmp, root, inner) = fresh();
        let (ticket, end) = append_and_seal(&inner, &[b"one", b"two"]);
        assert_eq!(ticket, 2);
        assert_eq!(reached(&inner), (2, 2));
        inner
            .wait_finishing(ticket, |f| f.named)
            .expect("already reached");
        assert_eq!(inner.flushed.load(Ordering::Acquire), end);
        assert_eq!(inner.sealed.load(Ordering::Acquire), end);
        assert_eq!(inner.seals.load(Ordering::Relaxed), 1);
        let sealed = name(0, SegmentFileKind::Sealed);
        assert_eq!(wal_files(&root), vec![sealed.clone()]);
        let bytes = std::fs::read(root.join("wal").join(&sealed)).expect("read");
        // Cut to its used length: the records and the marker, nothing after.
        assert_eq!(bytes.len() as u64, end + SEAL_LEN as u64);
        let mut scan = SegmentScanner::new(&bytes).expect("header");
        assert_eq!(scan.by_ref().count(), 2);
        assert!(matches!(scan.finish(), ScanEnd::Sealed { trailing: 0, .. }));
    }

    #[test]
    fn the_thread_finishes_seals_in_ticket_order() {
        let (_tmp, root, inner) = fresh();
        let h = start(&inner).expect("start the finisher");
        let mut last = (0, 0);
        for i in 0..3u8 {
            last = append_and_seal(&inner, &[&[i; 100], &[i; 200]]);
        }
        let (ticket, end) = last;
        assert_eq!(ticket, 6, "three activations and three seals");
        inner
            .wait_finishing(ticket, |f| f.named)
            .expect("the finisher names every seal");
        assert_eq!(
            wal_files(&root),
            (0..3)
                .map(|n| name(n, SegmentFileKind::Sealed))
                .collect::<Vec<_>>()
        );
        assert_eq!(inner.flushed.load(Ordering::Acquire), end);
        assert_eq!(inner.sealed.load(Ordering::Acquire), end);
        stop(&inner, h);
        assert_eq!(reached(&inner), (6, 6));
    }

    #[test]
    fn a_rotation_makes_the_new_name_durable_with_the_sealed_name() {
        let (_tmp, root, inner) = fresh();
        // The rotation's work queued before the thread runs, as when it is busy syncing.
        let (tx, rx) = mpsc::channel();
        *lock(&inner.finisher.tx) = Some(tx);
        let (seal, activation) = {
            let mut st = lock(&inner.tail);
            inner
                .append_locked(&mut st, &entry(b"old"), 0)
                .expect("append");
            inner.seal_locked(&mut st, true).expect("rotate");
            (st.last_seal, st.tickets)
        };
        assert_eq!((seal, activation), (2, 3), "activation, seal, activation");
        let h = {
            let inner = inner.clone();
            std::thread::spawn(move || finisher(inner, rx))
        };
        inner
            .wait_finishing(activation, |f| f.durable)
            .expect("the new name");
        // Reached together: the one directory fsync came after the sealed segment's rename.
        assert_eq!(reached(&inner), (activation, seal));
        assert_eq!(
            wal_files(&root),
            vec![
                name(0, SegmentFileKind::Sealed),
                name(1, SegmentFileKind::Open)
            ]
        );
        stop(&inner, h);
    }

    #[test]
    fn after_a_failure_the_work_counts_as_reached_but_is_left_to_recovery() {
        let (_tmp, root, inner) = fresh();
        let h = start(&inner).expect("start the finisher");
        {
            let mut st = lock(&inner.tail);
            inner
                .append_locked(&mut st, &entry(b"r"), 0)
                .expect("append");
        }
        inner
            .wait_finishing(1, |f| f.durable)
            .expect("the activation");
        let _ = inner.poison(
            "msync test".into(),
            std::io::Error::other("injected failure"),
        );
        let (ticket, _) = append_and_seal(&inner, &[b"more"]);
        // Nobody waits forever, and every wait says why.
        match inner.wait_finishing(ticket, |f| f.named) {
            Err(Error::Poisoned(reason)) => {
                assert!(reason.contains("injected failure"), "{reason}")
            }
            other => panic!("expected the poison, got {other:?}"),
        }
        assert_eq!(reached(&inner), (ticket, ticket));
        assert_eq!(
            wal_files(&root),
            vec![name(0, SegmentFileKind::Open)],
            "not renamed"
        );
        assert_eq!(inner.flushed.load(Ordering::Acquire), 0);
        assert_eq!(inner.sealed.load(Ordering::Acquire), 0);
        stop(&inner, h);
    }

    #[test]
    fn when_the_thread_is_gone_the_work_is_done_inline() {
        let (_tmp, root, inner) = fresh();
        let h = start(&inner).expect("start the finisher");
        // The thread stops while the writer still holds its sender.
        let tx = lock(&inner.finisher.tx).clone().expect("a sender");
        tx.send(FinisherMsg::Stop).expect("the finisher is running");
        h.join().expect("the finisher thread ends");
        let (ticket, end) = append_and_seal(&inner, &[b"late"]);
        assert_eq!(reached(&inner), (ticket, ticket));
        assert_eq!(wal_files(&root), vec![name(0, SegmentFileKind::Sealed)]);
        assert_eq!(inner.sealed.load(Ordering::Acquire), end);
    }
}
