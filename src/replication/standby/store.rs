//! Storing received segments: the store task writes each segment as `.wal.partial` and, once
//! it is complete, hands it to `finish` (durable, checked whole, given its sealed name, only then
//! counted as flushed); it appends the open segment's records to their copy as they arrive,
//! checks each, and syncs the copy once per batch before it counts them as flushed. Only what a
//! successful sync covered ever counts: after a failed write or sync the copy is cut back to it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::apply::{hand_to_applier, Jobs};
use super::finish::finish_segment;
use super::new_timeline::enter_timeline;
use super::partial::{valid_prefix, PartialCopy, Tail};
use super::{lock, Shared};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{SegmentFileKind, SegmentName, SegmentNo};
use crate::replication::messages::ErrorCode;
use crate::replication::ReplError;
use crate::Lsn;

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
    let r = store_messages(shared, &mut rx, &mut cur, jobs);
    if r.is_err() {
        // Whatever was written since the last sync that succeeded is not kept: a failed sync
        // may have lost it under a page cache that still shows it.
        if let Some(c) = cur.as_mut() {
            c.discard_unsynced();
        }
    }
    r
}

/// The loop of [`store_segments`]: each batch of messages is stored, then synced at once.
fn store_messages(
    shared: &Shared,
    rx: &mut tokio::sync::mpsc::Receiver<Store>,
    cur: &mut Option<PartialCopy>,
    jobs: &Jobs,
) -> Result<(), ReplError> {
    // Length of the segment being received, once it is known to be sealed.
    let mut len: Option<u64> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut dirty = false;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            store_one(shared, m, cur, &mut len, &mut dirty, jobs)?;
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
/// last valid record, and never past what this standby counts as flushed (a copy it stored
/// itself before a reconnect may hold bytes whose sync failed: those are cut off).
fn resume_copy(shared: &Shared) -> Result<Option<PartialCopy>, ReplError> {
    let held = shared.held();
    let (Some(control), Some(n)) = (held.control, held.next_segment) else {
        return Ok(None);
    };
    let start = SegmentNo(n).start_lsn_saturating(control.segment_size);
    let flushed = Lsn(shared.flushed.load(Ordering::Acquire));
    let durable = if flushed > start {
        usize::try_from(flushed - start).unwrap_or(usize::MAX)
    } else {
        0
    };
    Ok(PartialCopy::resume(
        &shared.dd,
        &control,
        n,
        held.prev_checksum,
        Some(durable),
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
            let c = copy_at(shared, cur, name, offset)?;
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
            let c = copy_at(shared, cur, name, offset)?;
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
                    finish_segment(shared, c.name, &c.path, c.file, c.synced_end, jobs)?;
                }
            }
        }
    }
    Ok(())
}

/// The copy of `name` that holds at least `offset` bytes. A copy of the same segment on an
/// earlier timeline is the new timeline's switch segment up to the switch point: the
/// directory moves onto the new timeline and the copy with it (the handshake refused a
/// standby holding anything past the switch point).
fn copy_at<'c>(
    shared: &Shared,
    cur: &'c mut Option<PartialCopy>,
    name: SegmentName,
    offset: u64,
) -> Result<&'c mut PartialCopy, ReplError> {
    if let Some(c) = cur.as_mut().filter(|c| {
        c.name.segment_no == name.segment_no
            && c.name.timeline < name.timeline
            && c.buf.len() as u64 >= offset
    }) {
        enter_timeline(shared, name.timeline)?;
        c.cut_to(offset as usize)?;
        c.retitle(&shared.dd, name.timeline)?;
    }
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
fn counted_flushed(shared: &Shared, c: &mut PartialCopy) -> Result<(), ReplError> {
    crate::fault!("standby::fsync", e => ReplError::io(format!("fsync {}", c.path.display()), e));
    c.file
        .sync_data()
        .map_err(|e| ReplError::io(format!("fsync {}", c.path.display()), e))?;
    c.synced_end = c.valid_end;
    if c.valid_end > SEGMENT_HEADER_LEN {
        let size = shared.held().control.map_or(0, |c| c.segment_size);
        let end = c.name.segment_no.start_lsn_saturating(size) + c.valid_end as u64;
        shared.flushed.fetch_max(end.0, Ordering::AcqRel);
        tracing::trace!(copy = %c.name, flushed = %end, "stored streamed records");
        shared.notify();
    }
    Ok(())
}
