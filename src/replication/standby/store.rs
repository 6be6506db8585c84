//! Storing received segments: the store task writes each segment as `.wal.partial`, fsyncs
//! it, checks it whole (every record, the seal marker, the segment checksum, the chain to its
//! predecessor), renames it to its sealed name and fsyncs the directory; only then does the
//! standby count it as flushed (and so acknowledge it) and hand it to the applier.
//!
//! For a directory being adopted, the first stored segment also decides the adoption: it must
//! chain to what the directory holds, and its own open segment must be a prefix of it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::adoption::{adopt, prefix_mismatch};
use super::apply::{hand_to_applier, ApplyJob, Job, Jobs};
use super::directory::enter_timeline;
use super::partial::{valid_prefix, PartialCopy, Tail};
use super::{lock, Shared};
use crate::error::Error;
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{SegmentFileKind, SegmentName};
use crate::fsutil::fsync_dir;
use crate::replication::messages::ErrorCode;
use crate::replication::segments::verify_incoming;
use crate::replication::ReplError;
use crate::segment_check::SealedSegment;

/// Chunks queued between the network and the store task.
const STORE_QUEUE: usize = 8;

/// Bytes queued between the network and the store task, whatever the chunk size (raised to
/// the maximum frame when that is larger, so that one chunk always fits).
const STORE_BUDGET: usize = 16 << 20;

pub(super) fn store_ended(r: Result<Result<(), ReplError>, tokio::task::JoinError>) -> ReplError {
    match r {
        Ok(Err(e)) => e,
        Ok(Ok(())) => ReplError::Internal("the segment store stopped".into()),
        Err(e) => ReplError::Internal(format!("the segment store failed: {e}")),
    }
}

/// What the network side hands the store task.
enum Store {
    Start {
        name: SegmentName,
        len: u64,
    },
    /// The copy `name` (streamed while open, holding `offset` bytes) is completed to `len`.
    Resume {
        name: SegmentName,
        offset: u64,
        len: u64,
    },
    /// Bytes, and their share of the queue's byte budget, given back once written.
    Data(Vec<u8>, OwnedSemaphorePermit),
    /// Durable bytes of the primary's open segment, to append to the copy `name` at `offset`.
    Open {
        name: SegmentName,
        offset: u64,
        data: Vec<u8>,
        _permit: OwnedSemaphorePermit,
    },
}

/// The network side's end of the queue to the store task: at most [`STORE_QUEUE`] messages and
/// [`STORE_BUDGET`] bytes wait in it.
pub(super) struct StoreQueue {
    tx: tokio::sync::mpsc::Sender<Store>,
    /// Bytes that may be queued for the store task.
    budget: Arc<Semaphore>,
}

/// The store task, as started by [`StoreQueue::spawn`].
pub(super) type StoreTask = tokio::task::JoinHandle<Result<(), ReplError>>;

impl StoreQueue {
    /// Starts the store task. Segments are stored by a blocking task of their own, so that
    /// receiving the next segment overlaps with syncing and checking the last one. The task
    /// ends once the queue is dropped and it has stored what it was given.
    pub(super) fn spawn(
        shared: &Arc<Shared>,
        jobs: &Jobs,
        max_frame: usize,
    ) -> (StoreQueue, StoreTask) {
        let (store_tx, store_rx) = tokio::sync::mpsc::channel(STORE_QUEUE);
        let budget = Arc::new(Semaphore::new(STORE_BUDGET.max(max_frame)));
        let (s2, j2) = (shared.clone(), jobs.clone());
        let store = tokio::task::spawn_blocking(move || store_segments(&s2, store_rx, &j2));
        (
            StoreQueue {
                tx: store_tx,
                budget,
            },
            store,
        )
    }

    /// Whether the store task has ended (its end says why; the queue's refusal does not).
    pub(super) fn store_ended(&self) -> bool {
        self.tx.is_closed()
    }

    async fn pass(&self, m: Store) -> Result<(), ReplError> {
        self.tx
            .send(m)
            .await
            .map_err(|_| ReplError::Internal("the segment store stopped".into()))
    }

    /// A segment of `len` bytes starts, to be written as `name` (a partial name).
    pub(super) async fn start(&self, name: SegmentName, len: u64) -> Result<(), ReplError> {
        self.pass(Store::Start { name, len }).await
    }

    /// The copy `name`, holding `offset` bytes, is completed to `len` bytes.
    pub(super) async fn resume(
        &self,
        name: SegmentName,
        offset: u64,
        len: u64,
    ) -> Result<(), ReplError> {
        self.pass(Store::Resume { name, offset, len }).await
    }

    async fn permit(&self, n: usize) -> Result<OwnedSemaphorePermit, ReplError> {
        self.budget
            .clone()
            .acquire_many_owned(n as u32)
            .await
            .map_err(|_| ReplError::Internal("the segment store stopped".into()))
    }

    /// The next bytes of the segment; waits while the queue holds its budget of bytes.
    pub(super) async fn data(&self, data: &[u8]) -> Result<(), ReplError> {
        let permit = self.permit(data.len()).await?;
        self.pass(Store::Data(data.to_vec(), permit)).await
    }

    /// Durable bytes of the primary's open segment, at `offset` of the copy `name`.
    pub(super) async fn open(
        &self,
        name: SegmentName,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ReplError> {
        let _permit = self.permit(data.len()).await?;
        self.pass(Store::Open {
            name,
            offset,
            data: data.to_vec(),
            _permit,
        })
        .await
    }
}

/// The store task: writes each segment as `.wal.partial`, then makes it durable, checks it,
/// gives it its sealed name and hands it to the applier; appends the open segment's records to
/// its copy, checks each, and syncs the copy once per batch of messages before it counts them
/// as flushed. Messages arrive already checked for order and length by the
/// [`Receiver`](super::receiver::Receiver).
fn store_segments(
    shared: &Shared,
    mut rx: tokio::sync::mpsc::Receiver<Store>,
    jobs: &Jobs,
) -> Result<(), ReplError> {
    let mut cur = resume_copy(shared)?;
    if let Some(c) = cur.as_mut() {
        // Its valid prefix was synced when it was taken up: the records past the durable
        // applied position are applied now, before anything new arrives.
        hand_to_applier(shared, c, jobs);
    }
    // (copy, length once sealed) of the segment being received.
    let mut len: Option<u64> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut dirty = false;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            store_one(shared, m, &mut cur, &mut len, &mut dirty, jobs)?;
            next = rx.try_recv().ok();
        }
        if dirty {
            if let Some(c) = cur.as_mut() {
                counted_flushed(shared, c)?;
                hand_to_applier(shared, c, jobs);
                // Acknowledged: zero-fill ahead now, while the stream waits for records.
                let size = shared.held().control.map_or(0, |c| c.segment_size);
                c.zero_ahead(size)?;
            }
        }
    }
    Ok(())
}

/// The copy this standby holds of the segment it needs next, if any: checked, cut after its
/// last valid record.
fn resume_copy(shared: &Shared) -> Result<Option<PartialCopy>, ReplError> {
    let held = shared.held();
    let (Some(control), Some(n)) = (held.control, held.next_segment) else {
        return Ok(None);
    };
    Ok(PartialCopy::resume(
        &shared.dd,
        &control,
        n,
        held.prev_checksum,
    )?)
}

fn store_one(
    shared: &Shared,
    m: Store,
    cur: &mut Option<PartialCopy>,
    len: &mut Option<u64>,
    dirty: &mut bool,
    jobs: &Jobs,
) -> Result<(), ReplError> {
    use std::os::fd::AsRawFd;
    match m {
        Store::Start { name, len: l } => {
            enter_timeline(shared, name.timeline)?;
            *cur = Some(PartialCopy::create(&shared.dd, name)?);
            *len = Some(l);
        }
        Store::Resume {
            name,
            offset,
            len: l,
        } => {
            let c = copy_at(cur, name, offset)?;
            c.cut_to(offset as usize)?;
            *len = Some(l);
        }
        Store::Open {
            name, offset, data, ..
        } => {
            if offset == 0 {
                enter_timeline(shared, name.timeline)?;
                *cur = Some(PartialCopy::create(&shared.dd, name)?);
            }
            let c = copy_at(cur, name, offset)?;
            c.cut_to(offset as usize)?;
            crate::fault!("standby::write", e => ReplError::io(format!("write {}", c.path.display()), e));
            c.append(&data)?;
            let Some(control) = shared.held().control else {
                return Err(ReplError::refused(ErrorCode::Protocol, "no identity"));
            };
            let prev = {
                let h = shared.held();
                h.prev_checksum
                    .filter(|_| h.next_segment == Some(name.segment_no.0))
            };
            let sealed = name.with_kind(SegmentFileKind::Sealed);
            match valid_prefix(
                &c.buf,
                &c.path,
                &name,
                &control,
                prev,
                c.valid_end,
                Tail::Streamed,
            ) {
                Ok(end) => c.valid_end = end,
                Err((offset, reason)) => {
                    let start = name.segment_no.start_lsn_saturating(control.segment_size);
                    return Err(ReplError::InvalidSegment {
                        segment: sealed,
                        offset: offset as u64,
                        lsn: start + offset as u64,
                        reason,
                    });
                }
            }
            let start = name.segment_no.start_lsn_saturating(control.segment_size);
            if c.valid_end > SEGMENT_HEADER_LEN {
                shared
                    .written
                    .fetch_max((start + c.valid_end as u64).0, Ordering::AcqRel);
                // Told at once, before the sync: what `remote_write` waits for.
                shared.notify();
            }
            {
                let mut h = lock(&shared.held);
                h.next_segment.get_or_insert(name.segment_no.0);
            }
            *dirty = true;
        }
        Store::Data(bytes, _permit) => {
            let (Some(c), Some(l)) = (cur.as_mut(), *len) else {
                return Err(ReplError::refused(
                    ErrorCode::Protocol,
                    "segment data without a segment",
                ));
            };
            let got = c.buf.len() as u64;
            crate::fault!("standby::write", e => ReplError::io(format!("write {}", c.path.display()), {
                use std::io::Seek;
                let _ = c.file.seek(std::io::SeekFrom::Start(got));
                crate::faults::short_write(&mut c.file, &bytes, e)
            }));
            c.append(&bytes)?;
            // Start writeback now, so that the sync at the end has little left to do.
            // SAFETY: a plain syscall on a descriptor we own; failure only loses the hint.
            unsafe {
                libc::sync_file_range(
                    c.file.as_raw_fd(),
                    got as i64,
                    bytes.len() as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            if c.buf.len() as u64 == l {
                // A copy zero-filled ahead while it was streamed ends at its sealed length.
                c.fit_to(l)?;
                if let Some(c) = cur.take() {
                    *len = None;
                    finish_segment(shared, c.name, &c.path, c.file, c.valid_end, jobs)?;
                }
            }
        }
    }
    Ok(())
}

/// The copy of `name` that holds at least `offset` bytes.
fn copy_at(
    cur: &mut Option<PartialCopy>,
    name: SegmentName,
    offset: u64,
) -> Result<&mut PartialCopy, ReplError> {
    match cur.as_mut() {
        Some(c) if c.name == name && c.buf.len() as u64 >= offset => Ok(c),
        _ => Err(ReplError::refused(
            ErrorCode::Protocol,
            format!(
                "the primary continues {name} at offset {offset}, which this standby does not hold"
            ),
        )),
    }
}

/// Syncs the copy of the open segment and counts its valid records as flushed.
fn counted_flushed(shared: &Shared, c: &PartialCopy) -> Result<(), ReplError> {
    crate::fault!("standby::fsync", e => ReplError::io(format!("fsync {}", c.path.display()), e));
    c.file
        .sync_data()
        .map_err(|e| ReplError::io(format!("fsync {}", c.path.display()), e))?;
    if c.valid_end > SEGMENT_HEADER_LEN {
        let size = shared.held().control.map_or(0, |c| c.segment_size);
        let end = c.name.segment_no.start_lsn_saturating(size) + c.valid_end as u64;
        shared.flushed.fetch_max(end.0, Ordering::AcqRel);
        tracing::trace!(copy = %c.name, flushed = %end, "stored streamed records");
        shared.notify();
    }
    Ok(())
}

/// Why a received segment was not stored.
enum NotStored {
    /// A local failure: ours, retried.
    Local(Error),
    /// Its bytes fail the checks.
    Invalid(Error),
    /// It shows that this directory's own open segment is not a prefix of the primary's
    /// history: refused for good, the directory left as it was.
    Diverged(String),
}

/// Makes a complete segment durable, checks it, renames it to its sealed name, fsyncs the
/// directory, and only then counts it as flushed.
fn finish_segment(
    shared: &Shared,
    name: SegmentName,
    path: &std::path::Path,
    file: std::fs::File,
    streamed: usize,
    jobs: &Jobs,
) -> Result<(), ReplError> {
    let held = shared.held();
    let Some(control) = held.control else {
        return Err(ReplError::refused(ErrorCode::Protocol, "no identity"));
    };
    let adopting = lock(&shared.adopting).clone();
    let expected_prev = if held.next_segment == Some(name.segment_no.0) {
        held.prev_checksum
    } else {
        None
    };
    // For a directory becoming a standby, a first segment that does not chain to what it holds
    // shows another history, not damage: checked apart below.
    let chain = if adopting.is_some() {
        None
    } else {
        expected_prev
    };
    let own_open = adopting
        .as_ref()
        .and_then(|a| a.open.clone())
        .filter(|o| o.name.segment_no == name.segment_no);
    let stored = (|| -> Result<(SealedSegment, memmap2::Mmap), NotStored> {
        crate::fault!("standby::fsync", e => NotStored::Local(Error::io(format!("fsync {}", path.display()), e)));
        file.sync_all()
            .map_err(|e| NotStored::Local(Error::io(format!("fsync {}", path.display()), e)))?;
        // SAFETY: the file is ours (the directory's lock is held) and nothing changes it.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| NotStored::Local(Error::io(format!("mmap {}", path.display()), e)))?;
        let sealed_name = name.with_kind(SegmentFileKind::Sealed);
        let seg =
            verify_incoming(&map, path, &sealed_name, &control, chain).map_err(|e| match e {
                Error::Io { .. } => NotStored::Local(e),
                other => NotStored::Invalid(other),
            })?;
        if adopting.is_some() {
            if let Some(want) = expected_prev {
                if seg.header.prev_checksum != Some(want) {
                    return Err(NotStored::Diverged(format!(
                        "the primary's segment {sealed_name} follows a segment with checksum {}, this directory's previous segment has {want:08x}: the histories diverged",
                        seg.header.prev_checksum.map_or("none".into(), |c| format!("{c:08x}"))
                    )));
                }
            }
        }
        if let Some(open) = &own_open {
            let open_path = shared.dd.segment_path(&open.name);
            let ours = crate::reader::read_segment(&open_path).map_err(NotStored::Local)?;
            let sealed_end =
                seg.end_lsn - name.segment_no.start_lsn_saturating(control.segment_size);
            if let Some(at) = prefix_mismatch(&ours, open.valid_end, &map, sealed_end) {
                return Err(NotStored::Diverged(if at as u64 >= sealed_end {
                    format!("this directory's open segment {} holds records up to offset {}, past the end of the primary's sealed copy (offset {sealed_end}): it is ahead of the primary", open.name, open.valid_end)
                } else {
                    format!("this directory's open segment {} differs from the primary's sealed copy at offset {at} (LSN {}): the histories diverged", open.name, name.segment_no.start_lsn_saturating(control.segment_size) + at as u64)
                }));
            }
        }
        let target = shared.dd.segment_path(&sealed_name);
        crate::fault!("standby::rename", e => NotStored::Local(Error::io(format!("rename {} to {}", path.display(), target.display()), e)));
        std::fs::rename(path, &target).map_err(|e| {
            NotStored::Local(Error::io(
                format!("rename {} to {}", path.display(), target.display()),
                e,
            ))
        })?;
        fsync_dir(&shared.dd.wal_dir()).map_err(NotStored::Local)?;
        Ok((seg, map))
    })();
    let (seg, map) = match stored {
        Ok(s) => s,
        Err(e) => {
            // Records streamed while the segment was open were checked one by one, synced and
            // acknowledged: they stay (the copy is cut back to them and continued on the next
            // connection). A segment received whole is removed.
            let kept = streamed > SEGMENT_HEADER_LEN
                && file
                    .set_len(streamed as u64)
                    .and_then(|()| file.sync_all())
                    .is_ok();
            if !kept {
                let _ = std::fs::remove_file(path);
            }
            return Err(match e {
                // A local I/O failure is ours, not the primary's: report it as it is and retry.
                NotStored::Local(e) => ReplError::Store(e),
                NotStored::Invalid(Error::Corrupt {
                    offset,
                    lsn,
                    reason,
                    ..
                }) => ReplError::InvalidSegment {
                    segment: name.with_kind(SegmentFileKind::Sealed),
                    offset,
                    lsn,
                    reason,
                },
                NotStored::Invalid(e) => ReplError::InvalidSegment {
                    segment: name.with_kind(SegmentFileKind::Sealed),
                    offset: 0,
                    lsn: name.segment_no.start_lsn_saturating(control.segment_size),
                    reason: e.to_string(),
                },
                NotStored::Diverged(msg) => ReplError::refused(ErrorCode::Identity, msg),
            });
        }
    };
    if let Some(open) = own_open {
        // The primary's sealed copy holds every record of our open segment: it replaces it,
        // and only then does the directory become a standby's.
        // Whatever followed its last valid record is kept aside, never deleted.
        let open_path = shared.dd.segment_path(&open.name);
        let aside = crate::setaside::move_aside(&shared.dd, &open_path)?;
        tracing::info!(file = %open_path.display(), set_aside_as = %aside.display(), "replaced by the primary's sealed copy, which holds every record of it");
        adopt(shared, jobs)?;
    }
    {
        let mut h = lock(&shared.held);
        h.next_segment = Some(seg.name.segment_no.next().0);
        h.prev_checksum = Some(seg.seal.segment_checksum);
    }
    shared.written.fetch_max(seg.end_lsn.0, Ordering::AcqRel);
    shared.flushed.fetch_max(seg.end_lsn.0, Ordering::AcqRel);
    tracing::debug!(segment = %seg.name, flushed = %seg.end_lsn, "stored segment");
    shared.notify();
    // The applier reads the records from the bytes just checked.
    let _ = jobs.send(Job::Sealed(ApplyJob {
        segment: seg,
        checked: Some(map),
    }));
    Ok(())
}
