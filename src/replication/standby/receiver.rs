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
}

impl Receiver {
    /// A receiver for a standby of identity `control` that needs segment `expected` next
    /// (None: whichever the primary sends first), holding its first `held` bytes.
    pub(super) fn new(control: Option<ControlFile>, expected: Option<u64>, held: u64) -> Receiver {
        Receiver {
            control,
            expected,
            cur: None,
            open: expected.filter(|_| held > 0).map(|n| (n, held)),
        }
    }

    /// The checks every segment message passes: nothing else in transfer, our identity and
    /// timeline, the segment we need, a number whose end is an LSN.
    fn segment_ok(&self, timeline: u32, segment_no: u64) -> Result<ControlFile, ReplError> {
        let protocol = |msg: String| Err(ReplError::refused(ErrorCode::Protocol, msg));
        if let Some((name, _, _)) = &self.cur {
            return protocol(format!(
                "segment {segment_no:X} sent before {name} was complete"
            ));
        }
        let Some(control) = self.control else {
            return protocol("a segment arrived before the identity".into());
        };
        if timeline != control.timeline {
            return Err(ReplError::refused(ErrorCode::Identity, format!("the primary sent a segment of timeline {timeline}; this standby follows timeline {}", control.timeline)));
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
                if let Some((name, _, _)) = &self.cur {
                    return protocol(format!(
                        "segment {segment_no:X} started before {name} was complete"
                    ));
                }
                let Some(control) = self.control else {
                    return protocol("a segment arrived before the identity".into());
                };
                if timeline != control.timeline {
                    return Err(ReplError::refused(ErrorCode::Identity, format!("the primary sent a segment of timeline {timeline}; this standby follows timeline {}", control.timeline)));
                }
                if let Some(want) = self.expected {
                    if segment_no != want {
                        return protocol(format!(
                            "the primary sent segment {segment_no:X}, the standby needs {want:X}"
                        ));
                    }
                }
                // Its end must be an LSN: numbers past that would overflow every computation.
                if segment_no
                    .checked_add(1)
                    .and_then(|n| n.checked_mul(control.segment_size))
                    .is_none()
                {
                    return protocol(format!(
                        "segment number {segment_no:X} lies beyond the end of the LSN space"
                    ));
                }
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
                let control = self.segment_ok(timeline, segment_no)?;
                let held = self
                    .open
                    .filter(|(n, _)| *n == segment_no)
                    .map_or(0, |(_, h)| h);
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
                let control = self.segment_ok(timeline, segment_no)?;
                let held = self
                    .open
                    .filter(|(n, _)| *n == segment_no)
                    .map_or(0, |(_, h)| h);
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
mod tests {
    use super::*;
    use crate::format::{SegmentNo, FORMAT_VERSION};
    use crate::replication::messages::Bytes;
    use crate::Lsn;

    const SIZE: u64 = 1 << 16;

    fn control() -> ControlFile {
        ControlFile {
            identity: crate::format::SystemIdentity {
                format_version: FORMAT_VERSION,
                timeline: 1,
                system_id: uuid::Uuid::from_u128(1),
                segment_size: SIZE,
            },
            created_us: 0,
        }
    }

    fn start(segment_no: u64, len: u64) -> Message<'static> {
        Message::SegmentStart {
            timeline: 1,
            segment_no,
            len,
        }
    }

    fn data(segment_no: u64, offset: u64, data: &[u8]) -> Message<'_> {
        Message::SegmentData {
            segment_no,
            offset,
            data: Bytes(data),
        }
    }

    fn partial(segment_no: u64) -> SegmentName {
        SegmentName::new(1, segment_no, SegmentFileKind::Partial)
    }

    /// The refusal code and text of an error that ends the connection.
    fn refusal(r: Result<Received<'_>, ReplError>) -> (ErrorCode, String) {
        match r {
            Err(ReplError::Refused { code, message }) => (code, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const MIN_LEN: u64 = (SEGMENT_HEADER_LEN + SEAL_LEN) as u64;

    #[test]
    fn segments_in_order_are_stored_chunk_by_chunk() {
        let mut rx = Receiver::new(Some(control()), Some(5), 0);
        let len = MIN_LEN + 10;
        assert_eq!(
            rx.receive(start(5, len)).unwrap(),
            Received::Start {
                name: partial(5),
                len
            }
        );
        let bytes = vec![9u8; len as usize];
        let (a, b) = bytes.split_at(20);
        assert_eq!(rx.receive(data(5, 0, a)).unwrap(), Received::Data(a));
        assert_eq!(rx.receive(data(5, 20, b)).unwrap(), Received::Data(b));
        // Complete: the next one is 6, and only 6.
        assert!(rx.receive(start(7, len)).is_err());
        let mut rx2 = Receiver::new(Some(control()), Some(5), 0);
        rx2.receive(start(5, len)).unwrap();
        rx2.receive(data(5, 0, &bytes)).unwrap();
        assert_eq!(
            rx2.receive(start(6, len)).unwrap(),
            Received::Start {
                name: partial(6),
                len
            }
        );
    }

    #[test]
    fn a_first_segment_may_be_any_when_none_is_expected() {
        let mut rx = Receiver::new(Some(control()), None, 0);
        assert!(matches!(
            rx.receive(start(0x42, MIN_LEN)),
            Ok(Received::Start { name, .. }) if name == partial(0x42)
        ));
    }

    #[test]
    fn a_keepalive_reports_the_primarys_end_and_changes_nothing() {
        let mut rx = Receiver::new(Some(control()), Some(1), 0);
        rx.receive(start(1, MIN_LEN)).unwrap();
        let k = Message::Keepalive {
            sealed_lsn: Lsn(77),
            now_us: 1,
        };
        assert_eq!(rx.receive(k).unwrap(), Received::PrimarySealed(Lsn(77)));
        // Still inside segment 1.
        let z = vec![0u8; MIN_LEN as usize];
        assert_eq!(rx.receive(data(1, 0, &z)).unwrap(), Received::Data(&z));
    }

    #[test]
    fn out_of_order_messages_are_protocol_errors() {
        let len = MIN_LEN + 10;
        let z = vec![0u8; 8];
        let cases: Vec<(Vec<Message<'_>>, &str)> = vec![
            (
                vec![start(3, len)],
                "the primary sent segment 3, the standby needs 2",
            ),
            (
                vec![data(2, 0, &z)],
                "segment data arrived without a SegmentStart",
            ),
            (
                vec![start(2, len), start(2, len)],
                "segment 2 started before 000000010000000000000002.wal.partial was complete",
            ),
            (
                vec![start(2, len), data(2, 4, &z)],
                "segment data for 2 at offset 4 (+8 bytes) does not continue",
            ),
            (
                vec![start(2, len), data(3, 0, &z)],
                "segment data for 3 at offset 0 (+8 bytes)",
            ),
            (
                vec![start(2, 4)],
                "segment 2 announced with an impossible length of 4 bytes",
            ),
            (
                vec![start(2, SIZE + 1)],
                "segment 2 announced with an impossible length of 65537 bytes",
            ),
        ];
        for (msgs, want) in cases {
            let mut rx = Receiver::new(Some(control()), Some(2), 0);
            let n = msgs.len();
            let mut last = None;
            for (i, m) in msgs.into_iter().enumerate() {
                let r = rx.receive(m);
                if i + 1 < n {
                    r.unwrap();
                } else {
                    last = Some(refusal(r));
                }
            }
            let (code, message) = last.unwrap();
            assert_eq!(code, ErrorCode::Protocol, "{message}");
            assert!(message.starts_with(want), "{message:?} vs {want:?}");
        }
    }

    fn open(segment_no: u64, offset: u64, data: &[u8]) -> Message<'_> {
        Message::OpenData {
            timeline: 1,
            segment_no,
            offset,
            data: Bytes(data),
        }
    }

    fn resume(segment_no: u64, offset: u64, len: u64) -> Message<'static> {
        Message::SegmentResume {
            timeline: 1,
            segment_no,
            offset,
            len,
        }
    }

    #[test]
    fn an_open_segment_is_appended_then_completed_by_its_seal() {
        let mut rx = Receiver::new(Some(control()), Some(4), 0);
        let b = vec![1u8; 100];
        assert_eq!(
            rx.receive(open(4, 0, &b)).unwrap(),
            Received::Open {
                name: partial(4),
                offset: 0,
                data: &b
            }
        );
        assert!(rx.receive(open(4, 100, &b)).is_ok());
        assert_eq!(
            rx.receive(resume(4, 200, 300)).unwrap(),
            Received::Resume {
                name: partial(4),
                offset: 200,
                len: 300
            }
        );
        assert_eq!(rx.receive(data(4, 200, &b)).unwrap(), Received::Data(&b));
        // Complete: segment 5 next, open or sealed.
        assert!(rx.receive(open(5, 0, &b)).is_ok());
    }

    #[test]
    fn a_standby_holding_a_copy_continues_exactly_where_it_ends() {
        let b = vec![1u8; 10];
        let mut rx = Receiver::new(Some(control()), Some(4), 500);
        assert!(rx.receive(open(4, 500, &b)).is_ok());
        let mut rx = Receiver::new(Some(control()), Some(4), 500);
        assert!(rx.receive(resume(4, 500, 600)).is_ok());
        // The primary may also send the whole sealed segment again.
        let mut rx = Receiver::new(Some(control()), Some(4), 500);
        assert!(rx.receive(start(4, MIN_LEN)).is_ok());
    }

    #[test]
    fn open_segment_messages_that_do_not_continue_the_copy_are_refused() {
        let b = vec![1u8; 10];
        let cases: Vec<(u64, Vec<Message<'_>>, &str)> = vec![
            (
                0,
                vec![open(4, 5, &b)],
                "does not continue the standby's copy, which holds 0 bytes",
            ),
            (500, vec![open(4, 499, &b)], "which holds 500 bytes"),
            (0, vec![open(4, 0, &[])], "(+0 bytes)"),
            (0, vec![open(4, SIZE - 5, &b)], "does not continue"),
            (
                0,
                vec![open(5, 0, &b)],
                "the primary sent segment 5, the standby needs 4",
            ),
            (0, vec![resume(4, 0, 100)], "resumed at offset 0"),
            (
                500,
                vec![resume(4, 400, 600)],
                "the standby's copy holds 500 bytes",
            ),
            (
                500,
                vec![resume(4, 500, 500)],
                "impossible length of 500 bytes",
            ),
            (500, vec![resume(4, 500, SIZE + 1)], "impossible length"),
            (0, vec![start(4, MIN_LEN), open(4, 0, &b)], "sent before"),
            (
                0,
                vec![open(4, 0, &b), data(4, 10, &b)],
                "without a SegmentStart",
            ),
        ];
        for (held, msgs, want) in cases {
            let mut rx = Receiver::new(Some(control()), Some(4), held);
            let n = msgs.len();
            for (i, m) in msgs.into_iter().enumerate() {
                let r = rx.receive(m);
                if i + 1 < n {
                    r.unwrap();
                } else {
                    let (code, m) = refusal(r);
                    assert_eq!(code, ErrorCode::Protocol);
                    assert!(m.contains(want), "{m} (wanted {want})");
                }
            }
        }
        let mut rx = Receiver::new(Some(control()), Some(4), 0);
        let other = Message::OpenData {
            timeline: 2,
            segment_no: 4,
            offset: 0,
            data: Bytes(&b),
        };
        assert_eq!(refusal(rx.receive(other)).0, ErrorCode::Identity);
    }

    #[test]
    fn more_data_than_announced_is_refused() {
        let mut rx = Receiver::new(Some(control()), None, 0);
        rx.receive(start(2, MIN_LEN)).unwrap();
        let too_many = vec![0u8; MIN_LEN as usize + 1];
        let (code, m) = refusal(rx.receive(data(2, 0, &too_many)));
        assert_eq!(code, ErrorCode::Protocol);
        assert!(m.contains(&format!("at 0 of {MIN_LEN} bytes")), "{m}");
    }

    #[test]
    fn another_timeline_is_an_identity_error() {
        let mut rx = Receiver::new(Some(control()), None, 0);
        let m = Message::SegmentStart {
            timeline: 2,
            segment_no: 1,
            len: MIN_LEN,
        };
        let (code, message) = refusal(rx.receive(m));
        assert_eq!(code, ErrorCode::Identity);
        assert_eq!(
            message,
            "the primary sent a segment of timeline 2; this standby follows timeline 1"
        );
    }

    #[test]
    fn segment_numbers_past_the_lsn_space_and_segments_without_identity_are_refused() {
        let mut rx = Receiver::new(Some(control()), None, 0);
        let last = u64::MAX / SIZE;
        let (_, m) = refusal(rx.receive(start(last, MIN_LEN)));
        assert!(m.ends_with("lies beyond the end of the LSN space"), "{m}");
        // The last whole segment is fine.
        assert!(rx.receive(start(last - 1, MIN_LEN)).is_ok());
        let mut rx = Receiver::new(None, None, 0);
        let (_, m) = refusal(rx.receive(start(1, MIN_LEN)));
        assert_eq!(m, "a segment arrived before the identity");
    }

    #[test]
    fn other_messages_end_the_connection() {
        let mut rx = Receiver::new(Some(control()), None, 0);
        let (code, m) = refusal(rx.receive(Message::AuthOk { proof: None }));
        assert_eq!(code, ErrorCode::Protocol);
        assert_eq!(
            m,
            "expected segments or a keepalive from the primary, got AuthOk"
        );
        let bye = Message::Error {
            code: ErrorCode::ShuttingDown,
            message: "bye",
        };
        assert!(matches!(
            rx.receive(bye),
            Err(ReplError::PeerRefused { code: ErrorCode::ShuttingDown, peer: "primary", ref message }) if message == "bye"
        ));
    }

    #[test]
    fn a_refused_segment_is_told_in_the_connections_version() {
        let segment = SegmentName::new(1, 3, SegmentFileKind::Sealed);
        let invalid = Err(ReplError::InvalidSegment {
            segment,
            offset: 100,
            lsn: SegmentNo(3).start_lsn_saturating(SIZE) + 100,
            reason: "bad crc".into(),
        });
        let v2 = LastWord::for_end(SEGMENT_REJECTED_VERSION, &invalid).unwrap();
        assert_eq!(
            v2,
            LastWord::Rejected {
                segment_no: 3,
                offset: 100,
                reason: "bad crc".into()
            }
        );
        assert!(matches!(
            v2.message(),
            Message::SegmentRejected {
                segment_no: 3,
                offset: 100,
                reason: "bad crc"
            }
        ));
        let v1 = LastWord::for_end(SEGMENT_REJECTED_VERSION - 1, &invalid).unwrap();
        match v1.message() {
            Message::Error { code, message } => {
                assert_eq!(code, ErrorCode::Protocol);
                assert!(message.starts_with(&format!(
                    "received segment {segment} is invalid at offset 100"
                )));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(LastWord::for_end(2, &Ok(())), None);
        let other = Err(ReplError::Timeout("x".into()));
        assert_eq!(LastWord::for_end(2, &other), None);
    }
}
