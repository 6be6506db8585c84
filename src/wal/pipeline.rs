//! The segment pipeline: the next segment's file is created and its blocks reserved by the
//! `walship-prepare` thread while the writer still fills the current one, so that a rotation
//! only renames a file; the thread then hands the file's pages to the prefault thread
//! (`prefault.rs`) to be faulted in. The same thread seals the open segment once it grows older
//! than `WalOptions::max_segment_age`.
//!
//! The prepared file waits in one slot, for one segment number. A rotation takes it under the
//! slot's lock and renames it to its open name before releasing the lock, so the preparer never
//! sees the file taken but not yet renamed; when nothing is ready, the rotation prepares the file
//! in the append path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::prefault::Prefaulter;
use super::{lock, Inner};
use crate::error::{IoContext, Result};
use crate::format::{SegmentFileKind, SegmentName};
use crate::recovery::Recovered;
use crate::segment_file::{Prefault, PreparedSegment};

/// Work for the preparer thread.
pub(super) enum PrepareMsg {
    Prepare(u64),
    Stop,
}

/// The prepared slot and what it may still hold.
pub(super) struct Pipeline {
    /// A prepared file ready for the given segment number. The preparer holds this lock while
    /// it works, so a rotation that needs the file waits for it instead of racing it.
    prepared: Mutex<Option<(u64, PreparedSegment)>>,
    /// Segment numbers below this have been activated; a request to prepare one is stale.
    /// Written and read under the `prepared` lock.
    activated: AtomicU64,
}

impl Pipeline {
    /// The slot as recovery left it: holding the prepared file it kept for `next_segment_no`.
    pub fn from_recovered(
        rec: &Recovered,
        next_segment_no: u64,
        segment_size: u64,
    ) -> Result<Pipeline> {
        let prepared = match &rec.prepared {
            Some(p) => {
                let p = PreparedSegment::open(p.clone(), segment_size)?;
                p.prefault().run();
                Some((rec.next_segment_no, p))
            }
            None => None,
        };
        Ok(Pipeline {
            prepared: Mutex::new(prepared),
            activated: AtomicU64::new(next_segment_no),
        })
    }
}

/// Starts the preparer thread; send it `PrepareMsg::Prepare` after each activation.
pub(super) fn start(inner: &Arc<Inner>) -> Result<(mpsc::Sender<PrepareMsg>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let inner = inner.clone();
    let handle = std::thread::Builder::new()
        .name("walship-prepare".into())
        .spawn(move || preparer(inner, rx))
        .ctx(|| "start the segment preparation thread".to_string())?;
    Ok((tx, handle))
}

fn preparer(inner: Arc<Inner>, rx: mpsc::Receiver<PrepareMsg>) {
    let tick = inner
        .options
        .max_segment_age
        .map(|a| (a / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)))
        .unwrap_or(Duration::from_secs(3600));
    // Without `prepare_ahead` this thread only seals aged segments: nothing to prefault.
    let prefaulter = inner
        .options
        .prepare_ahead
        .then(|| Prefaulter::start(inner.prefault_pause.clone()))
        .and_then(|started| {
            started
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "no prefault thread: the writer faults its own pages")
                })
                .ok()
        });
    loop {
        let msg = match rx.recv_timeout(tick) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => None,
        };
        if let Some(pf) = &prefaulter {
            pf.release_finished();
        }
        match msg {
            Some(PrepareMsg::Stop) => return,
            Some(PrepareMsg::Prepare(no)) => {
                if let (Some(p), Some(pf)) = (inner.prepare_into_slot(no), &prefaulter) {
                    pf.queue(p);
                }
            }
            None => {}
        }
        if let Some(max) = inner.options.max_segment_age {
            if inner.poisoned.load(Ordering::Acquire) {
                continue;
            }
            let mut st = lock(&inner.tail);
            if st.seg.is_some() && st.seg_records > 0 && st.opened_at.elapsed() >= max {
                if let Err(e) = inner.seal_locked(&mut st, false) {
                    tracing::error!(error = %e, "sealing an aged segment failed");
                }
            }
        }
    }
}

impl Inner {
    /// Serves a request to prepare segment `no`: readies its file into the slot unless the
    /// request is stale or already served. Returns what prefaults the file (the caller runs it
    /// off the append path).
    fn prepare_into_slot(&self, no: u64) -> Option<Prefault> {
        let mut slot = lock(&self.pipeline.prepared);
        let stale = no < self.pipeline.activated.load(Ordering::Acquire);
        if stale || matches!(&*slot, Some((n, _)) if *n == no) {
            return None;
        }
        // A request queued before the rotation that already used this number: preparing it
        // again would truncate the file the writer is using.
        let open = SegmentName::new(self.control.timeline, no, SegmentFileKind::Open);
        if self.dir.segment_path(&open).exists()
            || self
                .dir
                .segment_path(&open.with_kind(SegmentFileKind::Sealed))
                .exists()
        {
            return None;
        }
        if let Some((_, old)) = slot.take() {
            let _ = std::fs::remove_file(&old.path);
        }
        match self.prepare(no) {
            Ok(p) => {
                // Prefaulting takes tens of milliseconds: the writer may take the segment
                // meanwhile rather than wait for it.
                let prefault = p.prefault();
                *slot = Some((no, p));
                Some(prefault)
            }
            Err(e) => {
                tracing::warn!(error = %e, "preparing the next segment failed; the next rotation will try again");
                None
            }
        }
    }

    /// Readies the file for segment `no` under its prepared name and maps it: a recycled file
    /// from the pool when there is one (the one already named for `no` first, else the lowest
    /// numbered), a new file otherwise.
    fn prepare(&self, no: u64) -> Result<PreparedSegment> {
        let to = self.prepared_path(no);
        let size = self.control.segment_size;
        let pool = crate::recycling::pool(&self.dir, None)?;
        if let Some(n) = pool.iter().find(|n| n.segment_no.0 == no).or(pool.first()) {
            let from = self.dir.segment_path(n);
            match crate::recycling::reuse(&from, to.clone(), size) {
                Ok(p) => {
                    self.recycled.fetch_add(1, Ordering::Relaxed);
                    self.lib.recycled.inc();
                    return Ok(p);
                }
                Err(e) => {
                    tracing::warn!(file = %from.display(), error = %e, "reusing a recycled segment file failed; creating a new one")
                }
            }
        }
        PreparedSegment::create(to, size, self.options.segment_fill)
    }

    fn prepared_path(&self, no: u64) -> PathBuf {
        self.dir.segment_path(&SegmentName::new(
            self.control.timeline,
            no,
            SegmentFileKind::Prepared,
        ))
    }

    /// Gives the file prepared for segment `no` (prepared now when none is ready) its open
    /// name `path`, and marks every request to prepare a segment below `no + 1` stale.
    pub(super) fn take_prepared(&self, no: u64, path: &Path) -> Result<PreparedSegment> {
        // The slot stays locked until the rename is done, so the preparer never sees the file
        // taken but not yet renamed (and recreates it under the writer's feet).
        let mut slot = lock(&self.pipeline.prepared);
        let prepared = match slot.take() {
            Some((n, p)) if n == no => p,
            other => {
                if let Some((_, p)) = other {
                    let _ = std::fs::remove_file(&p.path);
                }
                tracing::debug!(
                    segment = no,
                    "no prepared segment ready; preparing in the append path"
                );
                self.prepare(no)?
            }
        };
        let from = &prepared.path;
        crate::fault!("wal::activate::rename", e => crate::error::Error::io(format!("rename {} to {}", from.display(), path.display()), e));
        std::fs::rename(from, path)
            .ctx(|| format!("rename {} to {}", from.display(), path.display()))?;
        self.pipeline.activated.store(no + 1, Ordering::Release);
        drop(slot);
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::time::Instant;

    use super::*;
    use crate::wal::test_support::{entry, init, name, open, wal_files, SEG};
    use crate::wal::WalOptions;

    fn fresh(options: WalOptions) -> (tempfile::TempDir, PathBuf, Arc<Inner>) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("d");
        init(&root, SEG);
        let inner = Arc::new(open(&root, options));
        (tmp, root, inner)
    }

    /// Starts the preparer, hands it `requests` and stops it: every request is handled when
    /// this returns (the thread works through its queue in order).
    fn prepare_all(inner: &Arc<Inner>, requests: &[u64]) {
        let (tx, h) = start(inner).expect("start the preparer");
        for &no in requests {
            tx.send(PrepareMsg::Prepare(no)).expect("the preparer runs");
        }
        tx.send(PrepareMsg::Stop).expect("the preparer runs");
        h.join().expect("the preparer thread ends");
    }

    fn slot(inner: &Inner) -> Option<u64> {
        lock(&inner.pipeline.prepared).as_ref().map(|(n, _)| *n)
    }

    fn inode(root: &Path, file: &str) -> u64 {
        std::fs::metadata(root.join("wal").join(file))
            .expect("stat")
            .ino()
    }

    #[test]
    fn without_a_prepared_file_the_rotation_prepares_one_in_the_append_path() {
        let (_tmp, root, inner) = fresh(WalOptions::default());
        let open0 = name(0, SegmentFileKind::Open);
        let p = inner
            .take_prepared(0, &root.join("wal").join(&open0))
            .expect("take");
        assert_eq!(p.path, inner.prepared_path(0));
        assert_eq!(wal_files(&root), vec![open0.clone()]);
        let len = std::fs::metadata(root.join("wal").join(&open0))
            .expect("stat")
            .len();
        assert_eq!(len, SEG, "a segment file has its full size");
        assert_eq!(inner.pipeline.activated.load(Ordering::Acquire), 1);
    }

    #[test]
    fn the_preparer_readies_the_next_file_and_the_rotation_takes_that_file() {
        let (_tmp, root, inner) = fresh(WalOptions::default());
        prepare_all(&inner, &[0]);
        let prep0 = name(0, SegmentFileKind::Prepared);
        assert_eq!(wal_files(&root), vec![prep0.clone()]);
        assert_eq!(slot(&inner), Some(0));
        let ino = inode(&root, &prep0);
        {
            let mut st = lock(&inner.tail);
            inner
                .append_locked(&mut st, &entry(b"r"), 0)
                .expect("append");
        }
        let open0 = name(0, SegmentFileKind::Open);
        assert_eq!(wal_files(&root), vec![open0.clone()]);
        assert_eq!(inode(&root, &open0), ino, "the prepared file, renamed");
        assert_eq!(slot(&inner), None);
    }

    #[test]
    fn requests_already_served_or_below_the_activated_number_are_skipped() {
        let (_tmp, root, inner) = fresh(WalOptions::default());
        {
            let mut st = lock(&inner.tail);
            inner
                .append_locked(&mut st, &entry(b"r"), 0)
                .expect("append");
        }
        let open0 = name(0, SegmentFileKind::Open);
        let before = std::fs::read(root.join("wal").join(&open0)).expect("read");
        // 0 is in use (a stale request would truncate it); 1 is prepared once.
        prepare_all(&inner, &[0, 1]);
        let prep1 = name(1, SegmentFileKind::Prepared);
        let ino = inode(&root, &prep1);
        prepare_all(&inner, &[1, 0]);
        assert_eq!(wal_files(&root), vec![open0.clone(), prep1.clone()]);
        assert_eq!(inode(&root, &prep1), ino, "not prepared a second time");
        assert_eq!(slot(&inner), Some(1));
        let after = std::fs::read(root.join("wal").join(&open0)).expect("read");
        assert!(before == after, "the open segment is untouched");
    }

    #[test]
    fn a_file_prepared_for_another_number_is_replaced() {
        let (_tmp, root, inner) = fresh(WalOptions::default());
        prepare_all(&inner, &[5]);
        assert_eq!(wal_files(&root), vec![name(5, SegmentFileKind::Prepared)]);
        let open0 = name(0, SegmentFileKind::Open);
        inner
            .take_prepared(0, &root.join("wal").join(&open0))
            .expect("take");
        assert_eq!(wal_files(&root), vec![open0]);
        assert_eq!(slot(&inner), None);
    }

    #[test]
    fn the_file_recovery_restarts_is_kept_for_the_next_activation() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("d");
        init(&root, SEG);
        let open0 = name(0, SegmentFileKind::Open);
        {
            // Activated, but the writer stopped before the header was written.
            let inner = open(&root, WalOptions::default());
            inner
                .take_prepared(0, &root.join("wal").join(&open0))
                .expect("take");
        }
        let ino = inode(&root, &open0);
        let inner = open(&root, WalOptions::default());
        assert_eq!(wal_files(&root), vec![name(0, SegmentFileKind::Prepared)]);
        assert_eq!(slot(&inner), Some(0));
        inner
            .take_prepared(0, &root.join("wal").join(&open0))
            .expect("take");
        assert_eq!(inode(&root, &open0), ino, "the same file, not a new one");
    }

    #[test]
    fn requests_queued_behind_a_prefault_are_all_served() {
        let (_tmp, root, inner) = fresh(WalOptions::default());
        // Each request arrives while the previous file's prefault is unfinished: the last
        // one is prepared, the earlier ones replaced, none left half-made.
        prepare_all(&inner, &[0, 1, 2]);
        assert_eq!(slot(&inner), Some(2));
        assert_eq!(wal_files(&root), vec![name(2, SegmentFileKind::Prepared)]);
    }

    #[test]
    fn a_segment_older_than_the_maximum_age_is_sealed_by_the_preparer() {
        let (_tmp, root, inner) = fresh(WalOptions {
            max_segment_age: Some(Duration::from_millis(20)),
            ..WalOptions::default()
        });
        let (tx, h) = start(&inner).expect("start the preparer");
        {
            let mut st = lock(&inner.tail);
            inner
                .append_locked(&mut st, &entry(b"quiet"), 0)
                .expect("append");
        }
        let sealed = name(0, SegmentFileKind::Sealed);
        // A failure guard only: the preparer looks every 10 ms.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !wal_files(&root).contains(&sealed) {
            assert!(
                Instant::now() < deadline,
                "not sealed: {:?}",
                wal_files(&root)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        tx.send(PrepareMsg::Stop).expect("the preparer runs");
        h.join().expect("the preparer thread ends");
        let st = lock(&inner.tail);
        assert!(st.seg.is_none(), "nothing open after the seal");
        assert_eq!(st.next_segment_no, 1);
        drop(st);
        assert_eq!(wal_files(&root), vec![sealed], "sealed once");
    }
}
