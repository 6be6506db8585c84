//! The receiver's unit tests: every message sequence it accepts and each one it refuses.

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
    let mut rx = Receiver::new(Some(control()), Some(5), 0, History::root());
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
    let mut rx2 = Receiver::new(Some(control()), Some(5), 0, History::root());
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
    let mut rx = Receiver::new(Some(control()), None, 0, History::root());
    assert!(matches!(
        rx.receive(start(0x42, MIN_LEN)),
        Ok(Received::Start { name, .. }) if name == partial(0x42)
    ));
}

#[test]
fn a_keepalive_reports_the_primarys_end_and_changes_nothing() {
    let mut rx = Receiver::new(Some(control()), Some(1), 0, History::root());
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
        let mut rx = Receiver::new(Some(control()), Some(2), 0, History::root());
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
    let mut rx = Receiver::new(Some(control()), Some(4), 0, History::root());
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
    let mut rx = Receiver::new(Some(control()), Some(4), 500, History::root());
    assert!(rx.receive(open(4, 500, &b)).is_ok());
    let mut rx = Receiver::new(Some(control()), Some(4), 500, History::root());
    assert!(rx.receive(resume(4, 500, 600)).is_ok());
    // The primary may also send the whole sealed segment again.
    let mut rx = Receiver::new(Some(control()), Some(4), 500, History::root());
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
        let mut rx = Receiver::new(Some(control()), Some(4), held, History::root());
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
    let mut rx = Receiver::new(Some(control()), Some(4), 0, History::root());
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
    let mut rx = Receiver::new(Some(control()), None, 0, History::root());
    rx.receive(start(2, MIN_LEN)).unwrap();
    let too_many = vec![0u8; MIN_LEN as usize + 1];
    let (code, m) = refusal(rx.receive(data(2, 0, &too_many)));
    assert_eq!(code, ErrorCode::Protocol);
    assert!(m.contains(&format!("at 0 of {MIN_LEN} bytes")), "{m}");
}

#[test]
fn another_timeline_is_an_identity_error() {
    let mut rx = Receiver::new(Some(control()), None, 0, History::root());
    let m = Message::SegmentStart {
        timeline: 2,
        segment_no: 1,
        len: MIN_LEN,
    };
    let (code, message) = refusal(rx.receive(m));
    assert_eq!(code, ErrorCode::Identity);
    assert_eq!(
        message,
        "the primary sent segment 1 of timeline 2, but its history puts that segment on timeline 1"
    );
}

/// Timeline 2 begins inside segment 3: segments up to 3 of timeline 1 come first, then
/// timeline 2's (segment 3 may carry either name); never an older timeline after a newer one.
#[test]
fn segments_follow_the_primary_s_path_across_a_switch() {
    let path = History::root()
        .child(Lsn(3 * SIZE + 0x100))
        .expect("timeline 2");
    let seg = |timeline, segment_no| Message::SegmentStart {
        timeline,
        segment_no,
        len: MIN_LEN,
    };
    let full = vec![0u8; MIN_LEN as usize];
    let mut rx = Receiver::new(Some(control()), Some(2), 0, path.clone());
    // Timeline 2 before its switch point is no segment of the path.
    assert_eq!(refusal(rx.receive(seg(2, 2))).0, ErrorCode::Identity);
    let mut rx = Receiver::new(Some(control()), Some(3), 0, path.clone());
    rx.receive(seg(1, 3)).expect("timeline 1's switch segment");
    rx.receive(data(3, 0, &full)).expect("its bytes");
    // Past the switch segment, timeline 1 is off the path.
    let (code, m) = refusal(rx.receive(seg(1, 4)));
    assert_eq!(code, ErrorCode::Identity);
    assert!(m.contains("puts that segment on timeline 2"), "{m}");
    let mut rx = Receiver::new(Some(control()), Some(3), 0, path.clone());
    rx.receive(seg(1, 3)).expect("segment 3");
    rx.receive(data(3, 0, &full)).expect("its bytes");
    assert!(matches!(
        rx.receive(seg(2, 4)),
        Ok(Received::Start { name, .. }) if name.timeline == 2
    ));
    rx.receive(data(4, 0, &full)).expect("its bytes");
    // Once on timeline 2, never back.
    let (code, m) = refusal(rx.receive(seg(1, 5)));
    assert_eq!(code, ErrorCode::Identity);
    assert!(m.contains("already follows timeline 2"), "{m}");
    // The switch segment under the new timeline's name.
    let mut rx = Receiver::new(Some(control()), Some(3), 0, path.clone());
    rx.receive(seg(2, 3)).expect("timeline 2's switch segment");
    // A timeline the path never had.
    let mut rx = Receiver::new(Some(control()), Some(4), 0, path);
    assert_eq!(refusal(rx.receive(seg(3, 4))).0, ErrorCode::Identity);
}

#[test]
fn segment_numbers_past_the_lsn_space_and_segments_without_identity_are_refused() {
    let mut rx = Receiver::new(Some(control()), None, 0, History::root());
    let last = u64::MAX / SIZE;
    let (_, m) = refusal(rx.receive(start(last, MIN_LEN)));
    assert!(m.ends_with("lies beyond the end of the LSN space"), "{m}");
    // The last whole segment is fine.
    assert!(rx.receive(start(last - 1, MIN_LEN)).is_ok());
    let mut rx = Receiver::new(None, None, 0, History::root());
    let (_, m) = refusal(rx.receive(start(1, MIN_LEN)));
    assert_eq!(m, "a segment arrived before the identity");
}

#[test]
fn other_messages_end_the_connection() {
    let mut rx = Receiver::new(Some(control()), None, 0, History::root());
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
