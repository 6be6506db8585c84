//! Messages to bytes and back. The only place bincode is used: bincode 2 with its legacy
//! configuration (little-endian, fixed-width integers, u64 lengths, u32 variant indexes), so the
//! bytes are the simple ones docs/PROTOCOL.md spells out.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};

use super::messages::Message;

/// The largest message body there is: the highest maximum frame size a side may be configured
/// to (framing, which sits on top of this codec, re-exports it).
pub const MAX_FRAME_LIMIT: usize = 64 << 20;

/// Decoding never claims more than this many bytes, whatever a length field says.
const CONFIG: Configuration<LittleEndian, Fixint, Limit<MAX_FRAME_LIMIT>> =
    bincode::config::legacy().with_limit::<MAX_FRAME_LIMIT>();

/// Why bytes are not a message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("malformed message: {0} unread bytes after the message")]
    Trailing(usize),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Appends the encoding of `msg` to `out`.
pub fn encode_into(msg: &Message<'_>, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(msg, out, CONFIG)
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes one message that must fill `body` exactly. Variable-length parts borrow from `body`.
pub fn decode(body: &[u8]) -> Result<Message<'_>, CodecError> {
    let (msg, used) = bincode::serde::borrow_decode_from_slice::<Message<'_>, _>(body, CONFIG)
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::messages::{Bytes, ErrorCode, MAGIC, PROTOCOL_VERSION};

    fn enc(m: &Message<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        encode_into(m, &mut v).unwrap();
        v
    }

    /// Pins the bytes docs/PROTOCOL.md describes.
    #[test]
    fn golden_bytes() {
        let hello = enc(&Message::Hello {
            magic: MAGIC,
            protocol_version: PROTOCOL_VERSION,
            nonce: [7; 32],
        });
        let mut want = vec![0, 0, 0, 0];
        want.extend_from_slice(b"WALSHIPR");
        want.extend_from_slice(&[6, 0, 0, 0]);
        want.extend_from_slice(&[7; 32]);
        assert_eq!(hello, want);

        // Version 6: Identify ends with the standby's name (version 4), the checksum of its
        // timeline's history file (SHA-256, version 5) and the checksum of its copy of the
        // open segment (version 6; docs/PROTOCOL.md).
        let id = enc(&Message::Identify {
            standby_id: [0x11; 16],
            system_id: None,
            timeline: 0,
            segment_size: 0,
            next_segment: None,
            prev_checksum: None,
            flushed_lsn: crate::Lsn(0x40),
            applied_lsn: crate::Lsn(0),
            max_frame: 0x0080_0000,
            name: "s1",
            history_digest: Some([0xAB; 32]),
            copy_checksum: Some(0x0403_0201),
        });
        let want: Vec<u8> = [
            &[4, 0, 0, 0][..],
            &[0x11; 16],
            &[0],
            &[0, 0, 0, 0],
            &[0; 8],
            &[0],
            &[0],
            &[0x40, 0, 0, 0, 0, 0, 0, 0],
            &[0; 8],
            &[0, 0, 0x80, 0],
            &[2, 0, 0, 0, 0, 0, 0, 0],
            b"s1",
            &[1],
            &[0xAB; 32],
            &[1],
            &[1, 2, 3, 4],
        ]
        .concat();
        assert_eq!(id, want);
        assert_eq!(id.len(), 103);
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/fixtures/protocol/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        assert_eq!(
            fixture("v6/identify.bin"),
            id,
            "fixtures/protocol/v6/identify.bin"
        );
        // An older Identify lacks the later checksums: as a version-6 message it is cut short.
        assert!(decode(&fixture("v5/identify.bin")).is_err());
        assert!(decode(&fixture("v4/identify.bin")).is_err());

        // Version 5: TimelineHistory, index 14.
        let hist = enc(&Message::TimelineHistory {
            timeline: 2,
            data: Bytes(b"abc"),
        });
        let want: Vec<u8> = [
            &[0x0E, 0, 0, 0][..],
            &[2, 0, 0, 0],
            &[3, 0, 0, 0, 0, 0, 0, 0],
            b"abc",
        ]
        .concat();
        assert_eq!(hist, want);
        assert_eq!(hist.len(), 16 + 3);
        assert_eq!(
            fixture("v5/timeline_history.bin"),
            hist,
            "fixtures/protocol/v5/timeline_history.bin"
        );

        let data = enc(&Message::SegmentData {
            segment_no: 2,
            offset: 0x10,
            data: Bytes(b"abc"),
        });
        let mut want = vec![7, 0, 0, 0];
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(&0x10u64.to_le_bytes());
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"abc");
        assert_eq!(data, want);

        let auth = enc(&Message::Auth { proof: None });
        assert_eq!(auth, vec![2, 0, 0, 0, 0]);
        let auth = enc(&Message::Auth {
            proof: Some([9; 32]),
        });
        assert_eq!(auth[..5], [2, 0, 0, 0, 1]);
        assert_eq!(auth.len(), 5 + 32);

        let err = enc(&Message::Error {
            code: ErrorCode::Auth,
            message: "no",
        });
        let mut want = vec![10, 0, 0, 0, 2, 0, 0, 0];
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(b"no");
        assert_eq!(err, want);

        // Version 3: Status carries the written position first.
        let st = enc(&Message::Status {
            written_lsn: crate::Lsn(3),
            flushed_lsn: crate::Lsn(2),
            applied_lsn: crate::Lsn(1),
            now_us: -1,
        });
        let mut want = vec![9, 0, 0, 0];
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&[0xff; 8]);
        assert_eq!(st, want);
        assert_eq!(st.len(), 36);

        // Version 3: OpenData, index 12, and SegmentResume, index 13 (docs/PROTOCOL.md).
        let open = enc(&Message::OpenData {
            timeline: 1,
            segment_no: 5,
            offset: 0x40,
            data: Bytes(b"rec"),
        });
        let want: Vec<u8> = [
            &[0x0C, 0, 0, 0][..],
            &[1, 0, 0, 0],
            &[5, 0, 0, 0, 0, 0, 0, 0],
            &[0x40, 0, 0, 0, 0, 0, 0, 0],
            &[3, 0, 0, 0, 0, 0, 0, 0],
            b"rec",
        ]
        .concat();
        assert_eq!(open, want);
        assert_eq!(open.len(), 32 + 3);
        let resume = enc(&Message::SegmentResume {
            timeline: 1,
            segment_no: 5,
            offset: 0x40,
            len: 0x1000,
        });
        let want: Vec<u8> = [
            &[0x0D, 0, 0, 0][..],
            &[1, 0, 0, 0],
            &[5, 0, 0, 0, 0, 0, 0, 0],
            &[0x40, 0, 0, 0, 0, 0, 0, 0],
            &[0, 0x10, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(resume, want);
        assert_eq!(decode(&open).unwrap().name(), "OpenData");
        assert_eq!(decode(&resume).unwrap().name(), "SegmentResume");

        // Version 2: SegmentRejected, index 11.
        let rej = enc(&Message::SegmentRejected {
            segment_no: 3,
            offset: 0x1234,
            reason: "bad",
        });
        let mut want = vec![11, 0, 0, 0];
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&0x1234u64.to_le_bytes());
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"bad");
        assert_eq!(rej, want);
        assert_eq!(rej.len(), 28 + 3);
        assert_eq!(
            decode(&rej).unwrap(),
            Message::SegmentRejected {
                segment_no: 3,
                offset: 0x1234,
                reason: "bad"
            }
        );
    }

    /// The body sizes docs/PROTOCOL.md gives.
    #[test]
    fn documented_sizes() {
        let sizes = [
            (
                enc(&Message::Challenge {
                    protocol_version: 1,
                    nonce: [0; 32],
                    auth_required: false,
                }),
                41,
            ),
            (
                enc(&Message::Welcome {
                    system_id: [0; 16],
                    timeline: 1,
                    segment_size: 1,
                    sealed_lsn: crate::Lsn(0),
                }),
                40,
            ),
            (
                enc(&Message::SegmentStart {
                    timeline: 1,
                    segment_no: 0,
                    len: 0,
                }),
                24,
            ),
            (
                enc(&Message::Keepalive {
                    sealed_lsn: crate::Lsn(0),
                    now_us: 0,
                }),
                20,
            ),
            (
                enc(&Message::SegmentData {
                    segment_no: 0,
                    offset: 0,
                    data: Bytes(&[0; 5]),
                }),
                28 + 5,
            ),
            (
                enc(&Message::Identify {
                    standby_id: [0; 16],
                    system_id: Some([0; 16]),
                    timeline: 1,
                    segment_size: 1,
                    next_segment: Some(1),
                    prev_checksum: Some(1),
                    flushed_lsn: crate::Lsn(0),
                    applied_lsn: crate::Lsn(0),
                    max_frame: 0,
                    name: "s1",
                    history_digest: Some([1; 32]),
                    copy_checksum: Some(1),
                }),
                83 + 8 + 2 + 33 + 5,
            ),
            (
                enc(&Message::TimelineHistory {
                    timeline: 2,
                    data: Bytes(&[0; 5]),
                }),
                16 + 5,
            ),
        ];
        for (bytes, want) in sizes {
            assert_eq!(bytes.len(), want);
        }
        let frame = crate::replication::frame::encode_frame(&Message::Error {
            code: ErrorCode::Auth,
            message: "no",
        })
        .unwrap();
        assert_eq!(
            frame,
            [0x12, 0, 0, 0, 0x0A, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'n', b'o']
        );
    }

    fn fixture_identify() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/protocol/v6/identify.bin"
        ))
        .unwrap()
    }

    #[test]
    fn round_trip_and_garbage() {
        let msgs = [
            Message::Challenge {
                protocol_version: 1,
                nonce: [1; 32],
                auth_required: true,
            },
            Message::Identify {
                standby_id: [3; 16],
                system_id: Some([4; 16]),
                timeline: 1,
                segment_size: 65536,
                next_segment: Some(5),
                prev_checksum: Some(0xdead_beef),
                flushed_lsn: crate::Lsn(100),
                applied_lsn: crate::Lsn(90),
                max_frame: 1 << 23,
                name: "db-2",
                history_digest: None,
                copy_checksum: Some(0x1234_5678),
            },
            Message::Welcome {
                system_id: [4; 16],
                timeline: 1,
                segment_size: 65536,
                sealed_lsn: crate::Lsn(7),
            },
            Message::SegmentStart {
                timeline: 1,
                segment_no: 9,
                len: 1000,
            },
            Message::Keepalive {
                sealed_lsn: crate::Lsn(3),
                now_us: 4,
            },
            Message::Status {
                written_lsn: crate::Lsn(9),
                flushed_lsn: crate::Lsn(8),
                applied_lsn: crate::Lsn(7),
                now_us: 6,
            },
            Message::OpenData {
                timeline: 1,
                segment_no: 2,
                offset: 3,
                data: Bytes(b"four"),
            },
            Message::SegmentResume {
                timeline: 1,
                segment_no: 2,
                offset: 3,
                len: 4,
            },
            Message::TimelineHistory {
                timeline: 3,
                data: Bytes(b"history"),
            },
        ];
        for m in &msgs {
            let b = enc(m);
            assert_eq!(&decode(&b).unwrap(), m);
            // Any truncation is refused, never read past.
            for cut in 0..b.len() {
                assert!(decode(&b[..cut]).is_err(), "{} cut at {cut}", m.name());
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(matches!(decode(&longer), Err(CodecError::Trailing(1))));
        }
        // An unknown variant, and a byte run claiming far more than the frame holds.
        assert!(decode(&[99, 0, 0, 0]).is_err());
        let mut huge = vec![7, 0, 0, 0];
        huge.extend_from_slice(&[0; 16]);
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        // The same for OpenData's bytes, and an index past the newest message.
        let mut huge = vec![12, 0, 0, 0];
        huge.extend_from_slice(&[0; 20]);
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        assert!(decode(&[14, 0, 0, 0]).is_err());
        assert!(decode(&[15, 0, 0, 0]).is_err());
        // TimelineHistory's bytes claiming more than the frame holds.
        let mut huge = vec![14, 0, 0, 0, 2, 0, 0, 0];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        // An Identify whose digest option tag is neither 0 nor 1.
        let mut bad = fixture_identify();
        bad[65] = 2;
        assert!(decode(&bad).is_err());
        // ... or whose copy checksum's tag is.
        let mut bad = fixture_identify();
        bad[98] = 2;
        assert!(decode(&bad).is_err());
        // Invalid UTF-8 in an error message.
        let mut bad = vec![10, 0, 0, 0, 0, 0, 0, 0];
        bad.extend_from_slice(&1u64.to_le_bytes());
        bad.push(0xff);
        assert!(decode(&bad).is_err());
    }
}
