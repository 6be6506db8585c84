//! Reading records from any LSN, across sealed segments and the open one, and following new
//! records as they are appended. The reader works from files only, so it runs in any process
//! while a writer appends (it never maps a file a writer may truncate).
//!
//! Here: the reader itself; `files.rs`: reading a segment file whole (or its tail, or as the
//! disk holds it, or the seal of the one before); `identity.rs`: what the segments of one set
//! must share, and the checks of a header against it; `source.rs`: where a path given by a
//! user points; `archive.rs`: an archive read as a folder of segments; `released.rs`: a segment
//! retention released while it was read, told from damage.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::datadir::{list_segments_in, DataDir};
use crate::decoder::{
    check_version, decode_record, is_zero_from, judge_open_tail, FinalSeal, OpenTail, ReadChecksum,
};
use crate::error::{Error, IoContext, Result};
use crate::format::record::{Decoded, RecordError, SEAL_LEN};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{SegmentFileKind, SegmentHeader, SegmentName, SegmentNo};
use crate::{EntryType, Lsn};

mod archive;
mod files;
mod identity;
mod published;
mod released;
mod source;

use files::{predecessor_seal, read_tail, segment_size_of};
pub use files::{read_segment, read_segment_from_disk, read_segment_hashed, read_segment_into};
pub use identity::{claimed_segment_size, header_mismatch, segment_start, Identity};
pub use source::WalSource;

/// One record, copied out of its segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    pub lsn: Lsn,
    pub end_lsn: Lsn,
    pub entry_type: EntryType,
    pub tx_id: Option<u64>,
    pub timestamp_us: i64,
    pub crc: u32,
    pub payload: Vec<u8>,
    pub segment: SegmentName,
    pub offset: u64,
}

/// How the log ended when a reader ran out of records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEnd {
    /// No records past this point (yet).
    Clean,
    /// The open segment ends in bytes that are not a record and nothing valid follows: an
    /// interrupted write, which recovery zeroes.
    TornTail {
        segment: SegmentName,
        offset: u64,
        reason: String,
    },
}

struct Loaded {
    name: SegmentName,
    path: PathBuf,
    bytes: Vec<u8>,
    header: SegmentHeader,
    off: usize,
    /// Records ending before this offset are covered by a matching seal checksum.
    trusted_end: usize,
    /// Records decoded in this segment so far, and the last one's LSN: what its seal marker
    /// must say.
    records: u64,
    last_lsn: Option<Lsn>,
}

impl Loaded {
    /// Checks the seal checksum once when the bytes end with a seal marker (see [`FinalSeal`]),
    /// with the checksum computed as they were read when there is one.
    fn trust_seal(&mut self, read: Option<ReadChecksum>) {
        self.trusted_end =
            FinalSeal::find_with(&self.bytes, &self.header, read).map_or(0, |s| s.trusted_end());
    }
}

/// Reads records in LSN order from a folder of segments or a single segment file.
pub struct WalReader {
    source: WalSource,
    /// Records before this LSN are skipped.
    from: Lsn,
    /// The segment number to look for next when none is loaded.
    next_segment: Option<u64>,
    cur: Option<Loaded>,
    /// The buffer of the last segment read, reused for the next one.
    spare: Vec<u8>,
    end: LogEnd,
    done_single: bool,
    /// What every segment must belong to: the data directory's control file, or the first
    /// segment read when there is none.
    identity: Option<Identity>,
    /// The last segment read to its seal marker, and that marker's segment checksum: the next
    /// segment's header must name it.
    prev_seal: Option<(u64, u32)>,
    /// End of the last record decoded (those before `from` included).
    last_end: Lsn,
    /// A standby's directory: its copy of the primary's open segment is read as its open one.
    standby: bool,
    /// Recovery's plan was consulted at the end of the log (see `published.rs`).
    planned: bool,
}

impl WalReader {
    /// Opens a reader at the first record whose LSN is at least `from`.
    /// Segments of another system or segment size, and a broken chain between two segments
    /// read one after the other, are damage.
    pub fn open(path: &Path, from: Lsn) -> Result<WalReader> {
        let source = WalSource::resolve(path)?;
        let identity = source.identity()?;
        let standby = source
            .data_dir()
            .is_some_and(|dd| crate::replication::standby::directory::meta_path(&dd).exists());
        Ok(WalReader {
            standby,
            planned: false,
            source,
            identity,
            prev_seal: None,
            last_end: Lsn(0),
            from,
            next_segment: None,
            cur: None,
            spare: Vec::new(),
            end: LogEnd::Clean,
            done_single: false,
        })
    }

    /// How the log ended at the last `Ok(None)`.
    pub fn log_end(&self) -> &LogEnd {
        &self.end
    }

    /// The next record, or `Ok(None)` at the current end of the log; call again later to
    /// follow new records. Damage is an error naming file, offset and LSN; a segment that
    /// retention released while it was read is [`Error::Released`].
    pub fn next_record(&mut self) -> Result<Option<WalRecord>> {
        self.next_record_here()
            .map_err(|e| self.released_instead(e))
    }

    fn next_record_here(&mut self) -> Result<Option<WalRecord>> {
        loop {
            if self.cur.is_none() && !self.load_next()? {
                if self.more_past_the_end()? {
                    continue;
                }
                return Ok(None);
            }
            let Some(cur) = self.cur.as_mut() else {
                return Ok(None);
            };
            let start = cur.header.start_lsn();
            let lsn = start + cur.off as u64;
            let limit = cur.header.segment_size as usize;
            let decoded = decode_record(&cur.bytes, cur.off, lsn, limit, cur.trusted_end)
                .and_then(|d| check_version(&cur.header, &d, &cur.bytes, cur.off).map(|()| d));
            match decoded {
                Ok(Decoded::Record(r)) => {
                    let off = cur.off;
                    cur.off += crate::format::record::encoded_len(r.payload.len());
                    cur.records += 1;
                    cur.last_lsn = Some(r.lsn());
                    self.last_end = r.end_lsn();
                    if r.lsn() < self.from {
                        continue;
                    }
                    self.end = LogEnd::Clean;
                    return Ok(Some(WalRecord {
                        lsn: r.lsn(),
                        end_lsn: r.end_lsn(),
                        entry_type: r.entry_type,
                        tx_id: r.header.tx_id,
                        timestamp_us: r.header.timestamp_us,
                        crc: r.header.crc,
                        payload: r.payload.to_vec(),
                        segment: cur.name,
                        offset: off as u64,
                    }));
                }
                Ok(Decoded::Seal(seal)) => {
                    // Every record of the segment was decoded (those before `from` too). A
                    // final marker whose checksum matched when the file was read is not hashed
                    // again.
                    let checked = crate::decoder::check_seal_against(
                        seal,
                        Some((cur.records, cur.last_lsn)),
                        || {
                            if cur.trusted_end == cur.off {
                                seal.segment_checksum
                            } else {
                                crc32fast::hash(&cur.bytes[..cur.off])
                            }
                        },
                    );
                    if let Err(e) = checked {
                        return Err(corrupt(cur, &format!("seal marker: {e}")));
                    }
                    self.prev_seal = Some((cur.name.segment_no.0, seal.segment_checksum));
                    self.next_segment = Some(cur.name.segment_no.next().0);
                    if let Some(done) = self.cur.take() {
                        self.spare = done.bytes;
                    }
                    if matches!(self.source, WalSource::File(_)) {
                        self.done_single = true;
                    }
                }
                Err(e) => {
                    if cur.name.kind == SegmentFileKind::Sealed {
                        // Nothing where the marker should be: said as `verify` says it.
                        let reason = match e {
                            RecordError::Unwritten => crate::segment_check::NO_SEAL_MARKER.into(),
                            e => e.to_string(),
                        };
                        return Err(corrupt(cur, &reason));
                    }
                    // The open segment's current end: read what was appended since, or notice
                    // that the segment was sealed meanwhile.
                    let want = match e {
                        RecordError::Truncated { need, .. } => need,
                        _ => 0,
                    };
                    if self.refresh_open(want)? {
                        continue;
                    }
                    if self.end_of_open(e)? || self.more_past_the_end()? {
                        continue;
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Where the records of the open segment stop: damage, or the end of the log; true when the
    /// file changed meanwhile and is to be read again.
    fn end_of_open(&mut self, e: RecordError) -> Result<bool> {
        let Some(cur) = self.cur.as_ref() else {
            return Ok(false);
        };
        if cur.name.kind == SegmentFileKind::Partial {
            // A copy still arriving ends wherever its valid records do: the standby takes it
            // up from there, as it judges the copy at its start.
            self.end = LogEnd::Clean;
            return Ok(false);
        }
        // The records end without a seal marker: in a data directory, an open segment of any
        // other length than a segment's is damage, as recovery and `verify` say (a seal cuts
        // the file only after its marker, which the reader would have found). A file read
        // alone may be a copy set aside, cut where the log was.
        let in_dir = matches!(self.source, WalSource::Dir(_));
        if let Some(meta) = in_dir.then(|| std::fs::metadata(&cur.path).ok()).flatten() {
            let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
            let size = cur.header.segment_size as usize;
            if let Some(reason) =
                crate::segment_check::open_length_damage(len, size, &e.to_string())
            {
                // A file longer than a segment is named where the segment ends, as recovery
                // and `verify` name it.
                let offset = if len > size { size } else { cur.off };
                let (file, lsn) = (cur.path.clone(), cur.header.start_lsn() + offset as u64);
                // A running writer may have written, sealed and cut it since the bytes were
                // read: what it holds now is read before anything is called damage.
                if self.refresh_open(0)? {
                    return Ok(true);
                }
                return Err(Error::Corrupt {
                    file,
                    offset: offset as u64,
                    lsn,
                    reason,
                });
            }
        }
        let Some(cur) = self.cur.as_ref() else {
            return Ok(false);
        };
        self.end = match judge_open_tail(&cur.bytes, &cur.header, cur.off) {
            OpenTail::Damage(later) => {
                return Err(corrupt(
                    cur,
                    &format!("{e}, yet {later}: damage in the middle of the log"),
                ))
            }
            // The records of a recycled file's earlier use: the log ends here.
            OpenTail::Clean | OpenTail::Stale(_) => LogEnd::Clean,
            OpenTail::Torn { .. } => LogEnd::TornTail {
                segment: cur.name,
                offset: cur.off as u64,
                reason: e.to_string(),
            },
        };
        Ok(false)
    }

    /// Re-reads the open segment past the current offset. Returns true when there is something
    /// new to decode (more bytes, or the segment is now sealed).
    fn refresh_open(&mut self, want: usize) -> Result<bool> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(false);
        };
        let sealed_name = cur.name.with_kind(SegmentFileKind::Sealed);
        let dir = cur.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let sealed_path = dir.join(sealed_name.to_string());
        cur.trusted_end = 0;
        match read_tail(&cur.path, cur.off, want, &mut cur.bytes) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            // Sealed meanwhile: renamed away, or cut to its used length while we read.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
                ) => {}
            Err(e) => return Err(Error::io(format!("read {}", cur.path.display()), e)),
        }
        if !cur.path.exists() && sealed_path.exists() {
            let read = read_segment_hashed(&sealed_path, &mut cur.bytes)?;
            cur.name = sealed_name;
            cur.path = sealed_path;
            cur.trust_seal(Some(read));
            return Ok(true);
        }
        Ok(false)
    }

    /// Loads the next segment to read. Returns false when there is none (yet).
    fn load_next(&mut self) -> Result<bool> {
        // The writer may seal (cut and rename) the open segment between our listing and our
        // read, and retention may remove an old one: list again and the right file is there.
        let mut tries = 0;
        loop {
            match self.load_next_once() {
                Err(Error::Io { source, .. })
                    if tries < 5
                        && matches!(
                            source.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
                        ) =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    fn load_next_once(&mut self) -> Result<bool> {
        let (name, path, archived) = match &self.source {
            WalSource::File(p) => {
                if self.done_single {
                    return Ok(false);
                }
                let name = crate::setaside::single_segment_name(p)?;
                (name, p.clone(), None)
            }
            WalSource::Dir(d) => {
                let d = d.clone();
                let names = list_segments_in(&d)?;
                let Some(name) = self.pick(&d, &names)? else {
                    return Ok(false);
                };
                (name, d.join(name.to_string()), None)
            }
            WalSource::Archive(a) => {
                let a = a.clone();
                let segs = a.segments()?;
                let names: Vec<SegmentName> = segs.iter().map(|(n, _)| *n).collect();
                let Some((name, c)) = self
                    .pick(&a.root, &names)?
                    .and_then(|name| segs.iter().find(|(n, _)| *n == name).copied())
                else {
                    return Ok(false);
                };
                (name, a.object_path(name, c), Some((a, c)))
            }
        };
        let mut bytes = std::mem::take(&mut self.spare);
        // Only a sealed file ends with its marker: the open one is not worth hashing. An
        // archived object is inflated whole first; its records are then checked one by one.
        let read = if let Some((a, c)) = archived {
            a.read(&path, c, &mut bytes)?;
            None
        } else if name.kind == SegmentFileKind::Sealed {
            Some(read_segment_hashed(&path, &mut bytes)?)
        } else {
            read_segment_into(&path, &mut bytes)?;
            None
        };
        if matches!(name.kind, SegmentFileKind::Open | SegmentFileKind::Partial)
            && is_zero_from(&bytes[..bytes.len().min(SEGMENT_HEADER_LEN)], 0)
        {
            // Unless the published durable position proves records of it were acknowledged
            // (damage, as recovery and `verify` say): activated, header not written yet (or
            // never, if the writer stopped there), no records so far. Look again next call.
            if let Some(dd) = self.source.data_dir() {
                let control = dd.read_control()?;
                if let Some(reason) =
                    crate::recovery::headerless_damage(&dd, &control, &name, &bytes)
                {
                    return Err(Error::Corrupt {
                        file: path,
                        offset: 0,
                        lsn: name.segment_no.start_lsn_saturating(control.segment_size),
                        reason,
                    });
                }
            }
            self.spare = bytes;
            return Ok(false);
        }
        // Where the segment starts by its name: a header too damaged to say is still located.
        let named_start = self
            .identity
            .map(|i| i.segment_size)
            .or_else(|| claimed_segment_size(&bytes))
            .and_then(|size| segment_start(name.segment_no.0, size))
            .unwrap_or_default();
        let bad = |reason: String| Error::Corrupt {
            file: path.clone(),
            offset: 0,
            lsn: named_start,
            reason,
        };
        let header = SegmentHeader::decode(&bytes).map_err(bad)?;
        let id = *self.identity.get_or_insert(Identity::from(&header));
        if let Some(reason) = header_mismatch(&header, &name, &id) {
            return Err(Error::Corrupt {
                file: path,
                offset: 0,
                lsn: segment_start(name.segment_no.0, id.segment_size).unwrap_or_default(),
                reason,
            });
        }
        if let Some((prev_no, prev_sum)) = self.prev_seal {
            if prev_no + 1 == name.segment_no.0 && header.prev_checksum != Some(prev_sum) {
                return Err(Error::Corrupt {
                    file: path,
                    offset: 0,
                    lsn: header.start_lsn(),
                    reason: format!(
                    "chain broken: header expects previous checksum {}, segment {prev_no:X} has {prev_sum:08x}",
                    header
                        .prev_checksum
                        .map(|c| format!("{c:08x}"))
                        .unwrap_or_else(|| "none".into())
                ),
                });
            }
        }
        self.next_segment = Some(name.segment_no.0);
        let mut cur = Loaded {
            name,
            path,
            bytes,
            header,
            off: SEGMENT_HEADER_LEN,
            trusted_end: 0,
            records: 0,
            last_lsn: None,
        };
        cur.trust_seal(read);
        self.cur = Some(cur);
        Ok(true)
    }

    /// The segment of `names` (the files of folder `d`) to read next: the next number when
    /// continuing, else the one holding the start; `None` when there is none (yet). A gap
    /// before a later segment, and a sealed segment after the open one, are damage.
    fn pick(&mut self, d: &Path, names: &[SegmentName]) -> Result<Option<SegmentName>> {
        let want = self.next_segment;
        // A standby's copy of its primary's open segment is read too, up to its last
        // valid record, where no segment of that number is sealed yet.
        let standby = self.standby;
        let whole = |no: SegmentNo| {
            names.iter().any(|n| {
                n.segment_no == no
                    && matches!(n.kind, SegmentFileKind::Sealed | SegmentFileKind::Open)
            })
        };
        let candidates = names.iter().filter(|n| match n.kind {
            SegmentFileKind::Sealed | SegmentFileKind::Open => true,
            SegmentFileKind::Partial => standby && !whole(n.segment_no),
            SegmentFileKind::Prepared => false,
        });
        let found = match want {
            // Continuing: the very next number must be there, or the log ends here.
            Some(w) => {
                let next = candidates.clone().find(|n| n.segment_no.0 == w);
                if next.is_none() {
                    if let Some(later) = candidates.clone().find(|n| n.segment_no.0 > w) {
                        let size = self.identity.map_or(0, |i| i.segment_size);
                        return Err(Error::Corrupt {
                            file: d.join(later.to_string()),
                            offset: 0,
                            lsn: segment_start(w, size).unwrap_or_default(),
                            reason: format!("segment number {w:X} is missing before {later}"),
                        });
                    }
                }
                next
            }
            None => {
                // Starting: the segment holding `from`, or the first one after it.
                let mut best = None;
                for n in candidates {
                    if best.is_none() {
                        best = Some(n);
                    }
                    let size = match self.identity {
                        Some(i) => Some(i.segment_size),
                        None => segment_size_of(d, n),
                    };
                    if let Some(size) = size {
                        if n.segment_no <= SegmentNo::of_lsn(self.from, size) {
                            best = Some(n);
                        }
                    }
                }
                best
            }
        };
        let Some(name) = found.copied() else {
            return Ok(None);
        };
        // The open segment is the newest: a sealed one after it is not of this log (as
        // recovery and `verify` refuse it).
        if name.kind == SegmentFileKind::Open {
            if let Some(later) = names
                .iter()
                .find(|n| n.kind == SegmentFileKind::Sealed && n.segment_no > name.segment_no)
            {
                let size = self.identity.map_or(0, |i| i.segment_size);
                return Err(Error::Corrupt {
                    file: d.join(later.to_string()),
                    offset: 0,
                    lsn: segment_start(later.segment_no.0, size).unwrap_or_default(),
                    reason: format!(
                        "sealed segment {later} follows the open segment {name}: the open segment is always the newest"
                    ),
                });
            }
        }
        if want.is_none() && self.prev_seal.is_none() {
            // Starting past the first segment: the chain to the one before it is
            // checked all the same.
            self.prev_seal = predecessor_seal(d, names, &name, self.identity);
        }
        Ok(Some(name))
    }
}

fn corrupt(cur: &Loaded, reason: &str) -> Error {
    Error::Corrupt {
        file: cur.path.clone(),
        offset: cur.off as u64,
        lsn: cur.header.start_lsn() + cur.off as u64,
        reason: reason.to_string(),
    }
}
