//! The receiving side of a connection as a pure state machine over the primary's messages:
//! which segment must come next, whether each message continues what came before, and what to
//! hand the store. It does no I/O: the connection feeds it decoded messages and carries out
//! what it returns, so every rule here is tested without sockets or files.
//!
//! A segment is acknowledged only once the store has made it durable under its sealed name
//! (the store moves the flushed position, and the status sender reports it), never on receipt.
//! What the standby says last when it refuses a segment is decided here too ([`LastWord`]).
//!
//! Longer than 500 lines because of its unit tests, which try every message order; the state
//! machine itself is about 300.

use crate::format::record::SEAL_LEN;
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{ControlFile, SegmentFileKind, SegmentName};
use crate::replication::handshake::from_primary;
use crate::replication::messages::{ErrorCode, Message, SEGMENT_REJECTED_VERSION};
use crate::replication::ReplError;
use crate::timeline::History;
use crate::Lsn;

/// What to do with a message that continues what came before.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Received<'m> {
    /// The end of the primary's newest sealed segment, as it reports it.
    PrimarySealed(Lsn),
    /// Store a new segment of `len` bytes, under `name` (a partial name) until it is checked.
    Start { name: SegmentName, len: u64 },
    /// Store these next bytes of the segment being received.
    Data(&'m [u8]),
    /// Append these durable bytes of the primary's open segment to the copy `name` (a partial
    /// name), which holds `offset` bytes of it.
    Open {
        name: SegmentName,
        offset: u64,
        data: &'m [u8],
    },
    /// The copy `name` (holding `offset` bytes) is completed by the sealed segment's remaining
    /// bytes, up to `len`.
    Resume {
        name: SegmentName,
        offset: u64,
        len: u64,
    },
}

/// Checks each message against what came before.
#[derive(Debug)]
pub(super) struct Receiver {
    /// The identity segments must match (None before the standby has one: then any segment
    /// is refused).
    control: Option<ControlFile>,
    /// The segment number that must come next (None before the first one).
    expected: Option<u64>,
    /// The segment being received: (number, length, bytes so far).
    cur: Option<(SegmentName, u64, u64)>,
    /// The copy of an open segment: (number, bytes held).
    open: Option<(u64, u64)>,
    /// The primary's timeline path: a segment must be of the timeline the path is on over
    /// it, never older than one already received.
    path: History,
    /// The newest timeline a segment was received of: at first, the one the path is on where
    /// the standby's log stands (none for a standby that holds no segment yet). Not its control
    /// file's: a standby made from nothing takes the primary's newest timeline at once, yet
    /// copies the older ones first, and may be stopped and started again while it does.
    timeline: u32,
}

impl Receiver {
    /// A receiver for a standby of identity `control` that needs segment `expected` next
    /// (None: whichever the primary sends first), holding its first `held` bytes, following a
    /// primary whose timeline path is `path`.
    pub(super) fn new(
        control: Option<ControlFile>,
        expected: Option<u64>,
        held: u64,
        path: History,
    ) -> Receiver {
        let timeline = match (control, expected) {
            (Some(c), Some(n)) => {
                path.timeline_of(crate::format::SegmentNo(n).start_lsn_saturating(c.segment_size))
            }
            _ => 0,
        };
        Receiver {
            timeline,
            control,
            expected,
            cur: None,
            open: expected.filter(|_| held > 0).map(|n| (n, held)),
            path,
        }
    }

    /// Whether segment `segment_no` of `timeline` is one the path holds: the timeline the
    /// path is on at the segment's first byte, or a later one on the path that begins inside
    /// it (the segment holding a switch point may carry the new timeline's name), and never
    /// older than a timeline already received.
    fn timeline_ok(&self, timeline: u32, segment_no: u64, size: u64) -> Result<(), String> {
        let start = crate::format::SegmentNo(segment_no).start_lsn_saturating(size);
        let last = crate::format::SegmentNo(segment_no)
            .end_lsn(size)
            .map_or(Lsn(u64::MAX), |e| Lsn(e.0 - 1));
        let (lo, hi) = (self.path.timeline_of(start), self.path.timeline_of(last));
        if timeline < self.timeline {
            return Err(format!("the primary sent segment {segment_no:X} of timeline {timeline}; this standby already follows timeline {}", self.timeline));
        }
        if !self.path.has_timeline(timeline) || timeline < lo || timeline > hi {
            return Err(format!("the primary sent segment {segment_no:X} of timeline {timeline}, but its history puts that segment on timeline {lo}{}", if hi != lo { format!(" to {hi}") } else { String::new() }));
        }
        Ok(())
    }

    /// Bytes of segment `segment_no` the standby's copy holds (0 unless it is the open one).
    fn held_of(&self, segment_no: u64) -> u64 {
        self.open
            .filter(|(n, _)| *n == segment_no)
            .map_or(0, |(_, h)| h)
    }

    /// The checks every segment message passes: nothing else in transfer, our identity and
    /// timeline, the segment we need, a number whose end is an LSN.
    /// `verb` says what the message did ("started", "sent") in the refusal's words.
    fn segment_ok(
        &mut self,
        timeline: u32,
        segment_no: u64,
        verb: &str,
    ) -> Result<ControlFile, ReplError> {
        let protocol = |msg: String| Err(ReplError::refused(ErrorCode::Protocol, msg));
        if let Some((name, _, _)) = &self.cur {
            return protocol(format!(
                "segment {segment_no:X} {verb} before {name} was complete"
            ));
        }
        let Some(control) = self.control else {
            return protocol("a segment arrived before the identity".into());
        };
        if let Err(m) = self.timeline_ok(timeline, segment_no, control.segment_size) {
            return Err(ReplError::refused(ErrorCode::Identity, m));
        }
        if let Some(want) = self.expected {
            if segment_no != want {
                return protocol(format!(
                    "the primary sent segment {segment_no:X}, the standby needs {want:X}"
                ));
            }
        }
        if segment_no
            .checked_add(1)
            .and_then(|n| n.checked_mul(control.segment_size))
            .is_none()
        {
            return protocol(format!(
                "segment number {segment_no:X} lies beyond the end of the LSN space"
            ));
        }
        self.timeline = timeline;
        Ok(control)
    }

    /// Takes the next message from the primary: what to do with it, or the error that ends the
    /// connection (a refusal, to be told to the primary, or the primary's own refusal).
    pub(super) fn receive<'m>(&mut self, m: Message<'m>) -> Result<Received<'m>, ReplError> {
        let protocol = |msg: String| Err(ReplError::refused(ErrorCode::Protocol, msg));
        match m {
            Message::Keepalive { sealed_lsn, .. } => Ok(Received::PrimarySealed(sealed_lsn)),
            Message::SegmentStart {
                timeline,
                segment_no,
                len,
            } => {
                let control = self.segment_ok(timeline, segment_no, "started")?;
                if len < (SEGMENT_HEADER_LEN + SEAL_LEN) as u64 || len > control.segment_size {
                    return protocol(format!(
                        "segment {segment_no:X} announced with an impossible length of {len} bytes"
                    ));
                }
                let name = SegmentName::new(timeline, segment_no, SegmentFileKind::Partial);
                self.cur = Some((name, len, 0));
                self.open = None;
                Ok(Received::Start { name, len })
            }
            Message::OpenData {
                timeline,
                segment_no,
                offset,
                data,
            } => {
                let control = self.segment_ok(timeline, segment_no, "sent")?;
                let held = self.held_of(segment_no);
                let n = data.0.len() as u64;
                if offset != held || n == 0 || offset + n > control.segment_size {
                    return protocol(format!(
                        "open segment data for {segment_no:X} at offset {offset} (+{n} bytes) does not continue the standby's copy, which holds {held} bytes"
                    ));
                }
                self.expected = Some(segment_no);
                self.open = Some((segment_no, held + n));
                let name = SegmentName::new(timeline, segment_no, SegmentFileKind::Partial);
                Ok(Received::Open {
                    name,
                    offset,
                    data: data.0,
                })
            }
            Message::SegmentResume {
                timeline,
                segment_no,
                offset,
                len,
            } => {
                let control = self.segment_ok(timeline, segment_no, "sent")?;
                let held = self.held_of(segment_no);
                if offset == 0 || offset != held {
                    return protocol(format!(
                        "segment {segment_no:X} resumed at offset {offset}, the standby's copy holds {held} bytes"
                    ));
                }
                if len <= offset || len > control.segment_size {
                    return protocol(format!(
                        "segment {segment_no:X} resumed with an impossible length of {len} bytes (the standby holds {offset})"
                    ));
                }
                let name = SegmentName::new(timeline, segment_no, SegmentFileKind::Partial);
                self.cur = Some((name, len, offset));
                self.open = None;
                Ok(Received::Resume { name, offset, len })
            }
            Message::SegmentData {
                segment_no,
                offset,
                data,
            } => {
                let Some((name, len, got)) = self.cur.as_mut() else {
                    return protocol("segment data arrived without a SegmentStart".into());
                };
                let n = data.0.len() as u64;
                if segment_no != name.segment_no.0 || offset != *got || *got + n > *len {
                    return protocol(format!(
                        "segment data for {segment_no:X} at offset {offset} (+{n} bytes) does not continue {name} at {got} of {len} bytes"
                    ));
                }
                *got += n;
                if *got == *len {
                    self.expected = Some(segment_no + 1);
                    self.cur = None;
                }
                Ok(Received::Data(data.0))
            }
            other => Err(from_primary(&other, "segments or a keepalive")),
        }
    }
}

/// What the standby says last on a connection it ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LastWord {
    Rejected {
        segment_no: u64,
        offset: u64,
        reason: String,
    },
    /// For a version-1 primary, which has no `SegmentRejected`.
    Error(String),
}

impl LastWord {
    /// A segment refused for its bytes is told to the primary, where and why, before the
    /// connection closes, so that it reports damage rather than a dropped connection; in the
    /// words the connection's protocol `version` has. Any other end needs no last word.
    pub(super) fn for_end(version: u32, result: &Result<(), ReplError>) -> Option<LastWord> {
        let Err(ReplError::InvalidSegment {
            segment,
            offset,
            lsn,
            reason,
        }) = result
        else {
            return None;
        };
        Some(if version >= SEGMENT_REJECTED_VERSION {
            LastWord::Rejected {
                segment_no: segment.segment_no.0,
                offset: *offset,
                reason: reason.clone(),
            }
        } else {
            LastWord::Error(format!(
                "received segment {segment} is invalid at offset {offset} (LSN {lsn}): {reason}"
            ))
        })
    }

    /// The message that says it.
    pub(super) fn message(&self) -> Message<'_> {
        match self {
            LastWord::Rejected {
                segment_no,
                offset,
                reason,
            } => Message::SegmentRejected {
                segment_no: *segment_no,
                offset: *offset,
                reason,
            },
            LastWord::Error(message) => Message::Error {
                code: ErrorCode::Protocol,
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests;
