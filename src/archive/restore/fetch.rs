//! Restore's first-pass pipeline: fetches, decodes, checks and stages segments, handing them
//! back in archive order.
//!
//! Three things overlap. Up to `ahead` GETs run at once; a segment whose bytes have arrived
//! gives its slot to the next GET at once and is decoded, checked (every record and checksum)
//! and written to its staging file, then `fdatasync`ed, on a blocking thread while later
//! segments download. At most `ahead + STAGING_BEHIND` segments are under way, so memory holds
//! at most that many segments' bytes. Write-back of a staged file starts as it is written
//! (`sync_file_range`, a megabyte at a time). A staged file is durable when it is handed back: the
//! second pass only renames it into place (no copy, no second write, no fsync per file).

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::timings::Sums;
use super::{
    blocking, check_segment_bytes, decode_object, joined, ArchiveIdentity, ArchiveStore,
    CheckedSegment, Compression, RestoreTarget,
};
use crate::error::{Error, IoContext, Result};
use crate::format::SegmentName;

/// Segments that may be checked, written or synced beyond the GETs in flight.
const STAGING_BEHIND: usize = 2;

/// A segment fetched, checked and staged: its index in the plan's list, its size, its check.
pub(super) type Fetched = (usize, u64, CheckedSegment);

/// Fetches, decodes, checks and stages segments in order (see the module's note).
pub(super) struct Fetcher<S: ArchiveStore> {
    store: Arc<S>,
    items: Vec<(SegmentName, String, Compression)>,
    identity: ArchiveIdentity,
    target: RestoreTarget,
    next: usize,
    /// GETs in flight at most.
    ahead: usize,
    gets: Arc<tokio::sync::Semaphore>,
    running: VecDeque<tokio::task::JoinHandle<Result<Fetched>>>,
    /// Where each checked segment is kept, under its sealed name.
    stage: PathBuf,
    sums: Arc<Sums>,
    /// True once the fetcher is dropped: no staging file is started after that, and the drop
    /// waits for those being written, so that the staging directory can be removed whole.
    stopped: Arc<std::sync::RwLock<bool>>,
}

impl<S: ArchiveStore> Fetcher<S> {
    pub(super) fn new(
        store: Arc<S>,
        items: Vec<(SegmentName, String, Compression)>,
        identity: ArchiveIdentity,
        target: RestoreTarget,
        ahead: usize,
        stage: PathBuf,
        sums: Arc<Sums>,
    ) -> Self {
        let ahead = ahead.max(1);
        Fetcher {
            store,
            items,
            identity,
            target,
            next: 0,
            ahead,
            gets: Arc::new(tokio::sync::Semaphore::new(ahead)),
            running: VecDeque::new(),
            stage,
            sums,
            stopped: Default::default(),
        }
    }

    fn fill(&mut self) {
        while self.running.len() < self.ahead + STAGING_BEHIND && self.next < self.items.len() {
            let i = self.next;
            self.next += 1;
            let (name, object, c) = self.items[i].clone();
            let (store, identity, target) = (self.store.clone(), self.identity, self.target);
            let (gets, sums, stopped) =
                (self.gets.clone(), self.sums.clone(), self.stopped.clone());
            let file = PathBuf::from(store.location()).join(&object);
            let staged = self.stage.join(name.to_string());
            self.running.push_back(tokio::spawn(async move {
                // Tasks are spawned in order and the semaphore is fair: GETs start in order.
                let slot = gets
                    .acquire_owned()
                    .await
                    .map_err(|e| Error::Other(format!("restore's fetch slots: {e}")))?;
                let started = Instant::now();
                let data = store.get(&object).await?.ok_or_else(|| Error::Corrupt {
                    file: file.clone(),
                    offset: 0,
                    // Where the missing segment starts.
                    lsn: name.segment_no.start_lsn_saturating(identity.segment_size),
                    reason: "vanished from the archive during restore".into(),
                })?;
                drop(slot);
                sums.add_fetch(started.elapsed());
                blocking(move || {
                    let started = Instant::now();
                    let bytes = decode_object(&file, c, data, identity.segment_size)?;
                    let cut = move |r: &crate::format::record::RecordRef<'_>| target.cuts(r);
                    let checked = check_segment_bytes(&file, &name, &bytes, &identity, Some(&cut))?;
                    sums.add_check(started.elapsed());
                    let stopped = stopped.read().map_err(|_| {
                        Error::Other("restore's staging was stopped by a failure".into())
                    })?;
                    if *stopped {
                        return Err(Error::Other("restore stopped".into()));
                    }
                    stage(&staged, &bytes, &sums)?;
                    drop(stopped);
                    Ok((i, bytes.len() as u64, checked))
                })
                .await
            }));
        }
    }

    pub(super) async fn next(&mut self) -> Option<Result<Fetched>> {
        self.fill();
        let r = joined(self.running.pop_front()?).await;
        self.fill();
        Some(r)
    }
}

impl<S: ArchiveStore> Drop for Fetcher<S> {
    fn drop(&mut self) {
        for h in &self.running {
            h.abort();
        }
        // Waits for staging files being written (at most a few segments' write and sync).
        if let Ok(mut stopped) = self.stopped.write() {
            *stopped = true;
        }
    }
}

/// Each staged file is written in pieces of this size, write-back of each started at once.
const WRITEBACK_CHUNK: usize = 1 << 20;

/// Starts writing `len` bytes at `at` back to disk without waiting (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`): the disk works while the rest is written, and the `fdatasync`
/// that follows has little left to do. Only a hint: a failure loses it, and any I/O error is
/// the `fdatasync`'s to report.
fn start_writeback(f: &std::fs::File, at: usize, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor we own.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Writes a checked segment's bytes to a new staging file, each byte once (write-back started
/// piece by piece as they are written), and makes them durable (`fdatasync`) before the
/// segment is handed back.
fn stage(path: &std::path::Path, bytes: &[u8], sums: &Sums) -> Result<()> {
    let started = Instant::now();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .ctx(|| format!("create {}", path.display()))?;
    let mut at = 0usize;
    for chunk in bytes.chunks(WRITEBACK_CHUNK) {
        f.write_all(chunk)
            .ctx(|| format!("write {}", path.display()))?;
        start_writeback(&f, at, chunk.len());
        at += chunk.len();
    }
    sums.add_stage_write(started.elapsed(), bytes.len() as u64);
    let started = Instant::now();
    f.sync_data().ctx(|| format!("fsync {}", path.display()))?;
    sums.add_stage_sync(started.elapsed());
    crate::sync_point!("restore::staged");
    Ok(())
}
