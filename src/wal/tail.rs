//! The tail of the log: the open segment, its write position and its running checksum.
//!
//! Everything here runs under the tail lock: appending a record through the mapping, sealing
//! the open segment (writing its seal marker and handing it to the finisher), and activating
//! the next one (giving its prepared file the open name and writing its header). Sealing and
//! activating each take a ticket from the finisher's count; `finisher.rs` tells how those
//! tickets order durability.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::finisher::{FinisherMsg, SealedOpen};
use super::{Appended, Inner};
use crate::datadir::DataDir;
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::format::crc_fold;
use crate::format::record::{encode_record, encode_seal, encoded_len, SEAL_LEN};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{
    ControlFile, SealInfo, SegmentFileKind, SegmentHeader, SegmentName, SEGMENT_FORMAT_VERSION,
};
use crate::recovery::Recovered;
use crate::segment_file::ActiveSegment;
use crate::Lsn;

/// The open segment and the write position; guarded by `Inner::tail`.
pub(super) struct Tail {
    pub seg: Option<Arc<ActiveSegment>>,
    pub off: usize,
    /// The running checksum of the open segment's bytes `[0, hashed_to)`; see `hash_written`.
    pub hasher: crc32fast::Hasher,
    pub hashed_to: usize,
    /// Shift factors of the record lengths folded into the checksum (see `fold`).
    pub shifts: crc_fold::ShiftCache,
    pub seg_records: u64,
    pub seg_last_lsn: Option<Lsn>,
    /// The open segment's records carry the durable offset (format version 2 on); a version 1
    /// segment adopted by recovery keeps those bytes zero.
    pub seg_durable_offsets: bool,
    pub end_lsn: Lsn,
    pub prev_checksum: Option<u32>,
    pub next_segment_no: u64,
    pub opened_at: Instant,
    /// Set by an activation: the segment number the preparer should get ready next.
    pub prepare_next: Option<u64>,
    /// Writeback of the open segment has been started up to here (see `writeback_due`).
    pub writeback_to: usize,
    /// Work handed to the finisher that durability depends on (seals and activations), counted;
    /// each piece's ticket is its number in this count.
    pub tickets: u64,
    /// The ticket of the newest seal.
    pub last_seal: u64,
}

/// The running checksum is brought up to the write position in steps of at least this many
/// bytes, read back from the mapping while they are still in the CPU's cache: one pass over
/// many records costs less than a short pass per record, and the record's own CRC is already
/// one pass over its bytes.
const HASH_CHUNK: usize = 32 << 10;

/// Records at least this long enter the running checksum by their own CRC, one multiplication
/// (`crc_fold`), rather than by a second pass over their bytes, once their length has come
/// before: in memory the multiplication costs half of a pass over 2 KiB (`cargo bench --bench
/// record -- running_checksum`), and in the writer the pass reads the bytes back from the
/// mapping as well.
const FOLD_MIN: usize = 2 << 10;

/// A range of the open segment to start writing back: `(segment, from, to)`.
pub(super) type Writeback = (Arc<ActiveSegment>, usize, usize);

/// Writeback of the open segment is started in steps of this many bytes, behind the write
/// position, so that the disk works while appends go on and a seal's msync finds little left
/// to write (a 16 MiB segment written without syncs would otherwise stall the writer for a whole
/// segment's worth of disk time at rotation).
const WRITEBACK_CHUNK: usize = 1 << 20;

impl Tail {
    /// The tail recovery left: the open segment it adopted, if any, mapped for writing.
    pub fn from_recovered(dir: &DataDir, control: &ControlFile, rec: &Recovered) -> Result<Tail> {
        let mut st = Tail {
            seg: None,
            off: 0,
            hasher: crc32fast::Hasher::new(),
            hashed_to: 0,
            shifts: crc_fold::ShiftCache::default(),
            seg_records: 0,
            seg_last_lsn: None,
            seg_durable_offsets: true,
            end_lsn: rec.end_lsn,
            prev_checksum: rec.prev_checksum,
            next_segment_no: rec.next_segment_no,
            opened_at: Instant::now(),
            prepare_next: None,
            writeback_to: 0,
            tickets: 0,
            last_seal: 0,
        };
        if let Some(open) = &rec.open {
            let path = dir.segment_path(&open.name);
            let seg = ActiveSegment::map(path, open.name, control.segment_size, open.offset)?;
            st.seg = Some(Arc::new(seg));
            st.off = open.offset;
            st.writeback_to = open.offset & !(WRITEBACK_CHUNK - 1);
            st.hasher = crc32fast::Hasher::new_with_initial_len(open.crc, open.offset as u64);
            st.hashed_to = open.offset;
            st.seg_records = open.record_count;
            st.seg_last_lsn = open.last_lsn;
            st.seg_durable_offsets = open.header.has_durable_offsets();
            st.prev_checksum = open.header.prev_checksum;
            st.next_segment_no = open.name.segment_no.next().0;
        }
        Ok(st)
    }

    /// Brings the running checksum up to the write position.
    fn hash_written(&mut self) {
        let Some(seg) = self.seg.as_ref() else {
            return;
        };
        if self.off > self.hashed_to {
            // SAFETY: tail lock held (we are its `&mut`); the bytes were written under it.
            let written = unsafe { seg.written(self.hashed_to, self.off - self.hashed_to) };
            self.hasher.update(written);
            self.hashed_to = self.off;
        }
    }

    /// Brings the running checksum past the record of `len` bytes just written at the write
    /// position, whose CRC (of every byte after its own CRC field) is `crc`, when its length
    /// has a shift factor; otherwise the record is hashed with the next chunk. The write
    /// position is not moved.
    fn fold(&mut self, len: usize, crc: u32) {
        let Some(shift) = self.shifts.get((len - 4) as u32) else {
            return;
        };
        self.hash_written();
        let Some(seg) = self.seg.as_ref() else {
            return;
        };
        // SAFETY: tail lock held (we are its `&mut`); the record was written under it.
        let crc_field = unsafe { seg.written(self.off, 4) };
        let mut h = self.hasher.clone();
        h.update(crc_field);
        let folded = crc_fold::combine(h.finalize(), crc, shift);
        self.hashed_to = self.off + len;
        self.hasher = crc32fast::Hasher::new_with_initial_len(folded, self.hashed_to as u64);
    }

    /// The open segment's checksum so far: every byte before the write position.
    pub fn checksum(&mut self) -> u32 {
        self.hash_written();
        self.hasher.clone().finalize()
    }

    /// The whole chunks filled since writeback was last started, if any.
    pub fn writeback_due(&mut self) -> Option<Writeback> {
        let upto = self.off & !(WRITEBACK_CHUNK - 1);
        if upto <= self.writeback_to {
            return None;
        }
        // Written back pages are unmapped (`ActiveSegment::unmap_pages`): hash them first.
        self.hash_written();
        let seg = self.seg.clone()?;
        let from = std::mem::replace(&mut self.writeback_to, upto);
        Some((seg, from, upto))
    }
}

impl Inner {
    pub(super) fn max_payload(&self) -> usize {
        let room = self.control.segment_size as usize
            - SEGMENT_HEADER_LEN
            - SEAL_LEN
            - crate::format::record::RECORD_HEADER_LEN;
        room & !(crate::format::ALIGN - 1)
    }

    pub(super) fn append_locked(&self, st: &mut Tail, e: &Entry<'_>, ts: i64) -> Result<Appended> {
        let len = encoded_len(e.payload.len());
        if e.payload.len() > self.max_payload() {
            return Err(Error::RecordTooLarge {
                len: e.payload.len(),
                max: self.max_payload(),
                segment_size: self.control.segment_size,
            });
        }
        if st.seg.is_some() && st.off + len + SEAL_LEN > self.control.segment_size as usize {
            self.seal_locked(st, true)?;
        }
        if st.seg.is_none() {
            self.activate_locked(st)?;
        }
        let Some(seg) = st.seg.as_ref() else {
            return Err(Error::Other("no open segment after activation".into()));
        };
        let lsn = seg.start_lsn + st.off as u64;
        // SAFETY: we hold the tail lock and write past everything published.
        let dst = unsafe { seg.slice_mut(st.off, len) };
        let durable = self.durable_offset(st, seg.start_lsn);
        let crc = encode_record(
            dst,
            lsn,
            durable,
            e.entry_type.code(),
            e.tx_id,
            ts,
            e.payload,
        );
        if len >= FOLD_MIN {
            st.fold(len, crc);
        }
        st.off += len;
        if st.off - st.hashed_to >= HASH_CHUNK {
            st.hash_written();
        }
        st.seg_records += 1;
        st.seg_last_lsn = Some(lsn);
        st.end_lsn = lsn + len as u64;
        self.appended.fetch_add(1, Ordering::Relaxed);
        self.lib.records.inc();
        self.lib.bytes.inc_by(len as u64);
        Ok(Appended {
            lsn,
            end_lsn: st.end_lsn,
        })
    }

    /// How far into the open segment (starting at `start`) the log is durable now: written into
    /// each record, so that recovery can tell bytes that were never synced (a torn tail, even
    /// one persisted out of order) from bytes that were (damage).
    fn durable_offset(&self, st: &Tail, start: Lsn) -> u32 {
        if !st.seg_durable_offsets {
            return 0;
        }
        let flushed = self.flushed.load(Ordering::Acquire);
        // At most the write position, which is below the segment size (at most 1 GiB).
        flushed.saturating_sub(start.0).min(st.off as u64) as u32
    }

    /// Writes the seal marker and hands the segment to the finisher (see `finisher.rs`); with
    /// `then_activate`, activates the next segment before the sealed one is renamed, so that the
    /// new segment's name becomes durable first. The seal's ticket is `st.last_seal`.
    pub(super) fn seal_locked(
        &self,
        st: &mut Tail,
        then_activate: bool,
    ) -> Result<Option<SegmentName>> {
        let Some(seg) = st.seg.clone() else {
            return Ok(None);
        };
        if st.seg_records == 0 {
            return Ok(None);
        }
        let seal = SealInfo {
            record_count: st.seg_records,
            last_lsn: st.seg_last_lsn,
            segment_checksum: st.checksum(),
        };
        let lsn = seg.start_lsn + st.off as u64;
        // SAFETY: tail lock held; the marker goes right after the last record.
        let dst = unsafe { seg.slice_mut(st.off, SEAL_LEN) };
        let durable = self.durable_offset(st, seg.start_lsn);
        encode_seal(dst, lsn, durable, crate::now_us(), &seal);
        // Bound the sealed segments not yet durable, so that a writer outrunning the disk waits
        // for it (`seal_bound.rs`): with this seal's ticket (`tickets + 1`) and two tickets per
        // rotation, the seal `seals_in_flight` rotations back must be durable.
        if let Some(oldest) = (st.tickets + 1).checked_sub(2 * self.seals_in_flight) {
            if self.finishing_reached(oldest) {
                self.check_poison()?;
            } else {
                let t0 = Instant::now();
                let waited = self.wait_finishing(oldest, |f| f.durable);
                self.seal_bound_waits.fetch_add(1, Ordering::Relaxed);
                self.seal_bound_wait_us
                    .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                waited?;
            }
        }
        self.seals.fetch_add(1, Ordering::Relaxed);
        self.lib.sealed.inc();
        st.tickets += 1;
        st.last_seal = st.tickets;
        let sealed = Arc::new(SealedOpen {
            seg: seg.clone(),
            used: st.off + SEAL_LEN,
            end_lsn: st.end_lsn,
            ticket: st.tickets,
        });
        self.to_finisher(FinisherMsg::Durable(sealed.clone()));
        st.prev_checksum = Some(seal.segment_checksum);
        st.next_segment_no = seg.name.segment_no.next().0;
        st.seg = None;
        let activated = if then_activate {
            self.activate_locked(st)
        } else {
            Ok(())
        };
        self.to_finisher(FinisherMsg::Name(sealed));
        activated?;
        Ok(Some(seg.name.with_kind(SegmentFileKind::Sealed)))
    }

    fn activate_locked(&self, st: &mut Tail) -> Result<()> {
        let no = st.next_segment_no;
        let name = SegmentName::new(self.control.timeline, no, SegmentFileKind::Open);
        let path = self.dir.segment_path(&name);
        let prepared = self.take_prepared(no, &path)?;
        // The new name becomes durable in the background; no record of this segment counts as
        // durable before it has.
        st.tickets += 1;
        self.to_finisher(FinisherMsg::Activated(st.tickets));
        let seg = ActiveSegment::from_prepared(prepared, path, name);
        let header = SegmentHeader {
            format_version: SEGMENT_FORMAT_VERSION,
            timeline: self.control.timeline,
            segment_size: self.control.segment_size,
            segment_no: no,
            system_id: self.control.system_id,
            prev_checksum: st.prev_checksum,
            created_us: crate::now_us(),
        };
        let hb = header.encode();
        // SAFETY: tail lock held; nothing of this segment is published yet. The header
        // becomes durable with the segment's first sync, which starts at offset 0; recovery
        // discards a segment whose header never did (none of its records were acknowledged).
        unsafe { seg.slice_mut(0, SEGMENT_HEADER_LEN) }.copy_from_slice(&hb);
        st.hasher = crc32fast::Hasher::new();
        st.hasher.update(&hb);
        st.hashed_to = SEGMENT_HEADER_LEN;
        st.off = SEGMENT_HEADER_LEN;
        st.seg_durable_offsets = true;
        st.writeback_to = 0;
        st.seg_records = 0;
        st.seg_last_lsn = None;
        st.opened_at = Instant::now();
        st.seg = Some(Arc::new(seg));
        st.next_segment_no = no + 1;
        st.prepare_next = Some(no + 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
