//! The replication messages, protocol version 6: version 2 (sealed segments, `SegmentRejected`)
//! with the open segment streamed as it becomes durable (`OpenData`, `SegmentResume`) and a
//! `Status` that reports the written position too (version 3), a standby that names itself in
//! `Identify` (version 4, for synchronous commit), timelines (version 5: the standby states
//! the digest of its timeline's history, the primary sends its history files before
//! `Welcome`), and the checksum of the standby's copy of the open segment in `Identify`
//! (version 6). docs/PROTOCOL.md gives their bytes; the
//! variant order and field order here ARE the wire format, so never reorder them.
//!
//! Messages borrow their variable-length parts (segment bytes, error text) from the frame they
//! were decoded from: decoding never allocates on a peer's say-so.

use crate::Lsn;
use serde::{Deserialize, Serialize};

/// The first bytes of every standby's Hello: refuses a peer that does not speak walship.
pub const MAGIC: [u8; 8] = *b"WALSHIPR";
/// The newest protocol version this code speaks; it sends it in `Hello` and `Challenge`.
pub const PROTOCOL_VERSION: u32 = 6;
/// The oldest protocol version this code still speaks. Version 6 added the checksum of the
/// standby's copy of the open segment (a field of `Identify`): without it a primary cannot tell
/// a copy of records it never wrote, so an older peer is refused with `Error Version`.
pub const MIN_PROTOCOL_VERSION: u32 = 6;
/// The first version with `SegmentRejected`.
pub const SEGMENT_REJECTED_VERSION: u32 = 2;

/// Why a side refuses or ends a connection (the `code` of [`Message::Error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// A malformed or unexpected message.
    Protocol,
    /// The peer speaks another protocol version.
    Version,
    /// Authentication failed or is missing.
    Auth,
    /// The peer belongs to another system or segment size, its timeline history is not the
    /// other's, or it went past the point where the other's timeline left its own.
    Identity,
    /// The segment the standby needs is no longer (or not) on the primary.
    Unavailable,
    /// The sender is shutting down; reconnect later.
    ShuttingDown,
    /// A local failure (I/O, damaged data) on the sender's side.
    Internal,
    /// The primary serves as many connections as it allows; reconnect later.
    Busy,
}

impl ErrorCode {
    /// True when retrying cannot help: the standby stops instead of reconnecting.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::Version | ErrorCode::Auth | ErrorCode::Identity | ErrorCode::Unavailable
        )
    }
}

/// Bytes carried as one length-prefixed run, borrowed from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes<'a>(pub &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = &'de [u8];
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("borrowed bytes")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V).map(Bytes)
    }
}

/// One replication message. S = standby, P = primary (the side running the shipper).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// S→P, first frame: who speaks, and the standby's fresh nonce.
    Hello {
        magic: [u8; 8],
        protocol_version: u32,
        nonce: [u8; 32],
    },
    /// P→S: the primary's fresh nonce and whether it requires a token.
    Challenge {
        protocol_version: u32,
        nonce: [u8; 32],
        auth_required: bool,
    },
    /// S→P: HMAC-SHA256 proof of the token, or none when the standby has no token.
    Auth { proof: Option<[u8; 32]> },
    /// P→S: authentication accepted; the primary's own proof when a token is in use.
    AuthOk { proof: Option<[u8; 32]> },
    /// S→P: the standby's identity and position.
    Identify {
        standby_id: [u8; 16],
        /// None for a standby whose data directory does not exist yet.
        system_id: Option<[u8; 16]>,
        timeline: u32,
        segment_size: u64,
        /// The segment it needs next; None: the primary's oldest.
        next_segment: Option<u64>,
        /// The seal checksum of the segment before `next_segment`, when the standby holds it.
        prev_checksum: Option<u32>,
        flushed_lsn: Lsn,
        applied_lsn: Lsn,
        /// The largest frame the standby accepts.
        max_frame: u32,
        /// Version 4 on: the standby's name, which a synchronous-commit policy names it by
        /// (checked by the primary: 1 to 63 letters, digits, '_', '-' or '.').
        name: &'a str,
        /// Version 5 on: the SHA-256 of the bytes of the history file of the standby's
        /// timeline, None on timeline 1 (which has none) or without a directory.
        history_digest: Option<[u8; 32]>,
        /// Version 6 on: the CRC-32 of the standby's copy of segment `next_segment` (a prefix
        /// of the primary's open segment, streamed earlier) from the end of its header up to
        /// `flushed_lsn`; None when it holds no record of such a copy.
        copy_checksum: Option<u32>,
    },
    /// P→S: accepted; the primary's identity. Segments follow.
    Welcome {
        system_id: [u8; 16],
        timeline: u32,
        segment_size: u64,
        sealed_lsn: Lsn,
    },
    /// P→S: a sealed segment of `len` bytes follows in SegmentData frames.
    SegmentStart {
        timeline: u32,
        segment_no: u64,
        len: u64,
    },
    /// P→S: bytes `[offset, offset + data.len())` of the segment being sent.
    SegmentData {
        segment_no: u64,
        offset: u64,
        data: Bytes<'a>,
    },
    /// P→S heartbeat: the end of the primary's newest sealed segment, and its clock.
    Keepalive { sealed_lsn: Lsn, now_us: i64 },
    /// S→P acknowledgement and heartbeat: everything below `written_lsn` was received and
    /// handed to the standby's OS, everything below `flushed_lsn` is durable on the standby,
    /// everything below `applied_lsn` applied.
    Status {
        written_lsn: Lsn,
        flushed_lsn: Lsn,
        applied_lsn: Lsn,
        now_us: i64,
    },
    /// Either way: the sender closes the connection, and says why.
    Error { code: ErrorCode, message: &'a str },
    /// S→P, version 2 on: the standby refuses a segment it received because its bytes fail the
    /// checks (damage, or a broken chain), says where (`offset` in the segment file) and why,
    /// and closes the connection.
    SegmentRejected {
        segment_no: u64,
        offset: u64,
        reason: &'a str,
    },
    /// P→S, version 3 on: bytes `[offset, offset + data.len())` of the open (not yet sealed)
    /// segment `segment_no`, all of them durable on the primary and ending on a record
    /// boundary. `offset` continues what the standby holds of that segment (0 for a segment it
    /// holds nothing of: the header comes first).
    OpenData {
        timeline: u32,
        segment_no: u64,
        offset: u64,
        data: Bytes<'a>,
    },
    /// P→S, version 3 on: the segment whose first `offset` bytes the standby holds (streamed
    /// while it was open) is sealed, `len` bytes long; bytes `[offset, len)` follow in
    /// SegmentData frames.
    SegmentResume {
        timeline: u32,
        segment_no: u64,
        offset: u64,
        len: u64,
    },
    /// P→S, version 5 on, between `Identify` and `Welcome`: the bytes of the primary's history
    /// file of `timeline`, one message for each timeline after the first on the primary's
    /// path, oldest first.
    TimelineHistory { timeline: u32, data: Bytes<'a> },
}

impl Message<'_> {
    /// The message's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Challenge { .. } => "Challenge",
            Message::Auth { .. } => "Auth",
            Message::AuthOk { .. } => "AuthOk",
            Message::Identify { .. } => "Identify",
            Message::Welcome { .. } => "Welcome",
            Message::SegmentStart { .. } => "SegmentStart",
            Message::SegmentData { .. } => "SegmentData",
            Message::Keepalive { .. } => "Keepalive",
            Message::Status { .. } => "Status",
            Message::Error { .. } => "Error",
            Message::SegmentRejected { .. } => "SegmentRejected",
            Message::OpenData { .. } => "OpenData",
            Message::SegmentResume { .. } => "SegmentResume",
            Message::TimelineHistory { .. } => "TimelineHistory",
        }
    }
}
