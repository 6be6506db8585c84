//! The handshake, both halves, over any byte stream (`AsyncRead + AsyncWrite`): Hello,
//! Challenge, Auth, AuthOk, Identify, the primary's history files and Welcome, as
//! docs/PROTOCOL.md describes them (`timelines.rs`: what each side checks of the other's
//! timeline and history).
//!
//! The primary's half is [`accept`] (up to and including Identify) and [`welcome`]; between
//! the two the shipper decides, from its own segments and slots, whether it can serve the
//! standby (and refuses it on the same stream if not). The standby's half is [`connect`], which
//! ends with the Welcome checked against what the standby holds. Neither half knows about
//! sockets, directories or tasks, so both are tested against each other over an in-memory
//! pipe, and either can be fed arbitrary bytes.
//!
//! Every message read here is small, so frames are limited to [`HANDSHAKE_MAX_FRAME`] bytes
//! whatever the configured maximum (the standby reads the primary's history files with its
//! own maximum): an unauthenticated peer gets no large buffer.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use uuid::Uuid;

use super::auth::{nonce, AuthToken};
use super::codec;
use super::frame::{write_message, HANDSHAKE_MAX_FRAME, MIN_FRAME_LIMIT};
use super::identities::Tokens;
use super::messages::{ErrorCode, Message, MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use super::{read_msg, refuse, ReplError};
use crate::format::ControlFile;
use crate::Lsn;

mod timelines;
pub(crate) use timelines::{digest_of, Histories, HistoryBytes};

/// What a standby said in a handshake that succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identified {
    /// The protocol version the connection goes on in.
    pub version: u32,
    pub id: String,
    /// The standby's timeline (0 for a standby without a directory).
    pub timeline: u32,
    /// The name of the standby's own token, when the primary holds one token per standby.
    pub token_name: Option<String>,
    pub next_segment: Option<u64>,
    pub prev_checksum: Option<u32>,
    /// The checksum of its copy of the open segment up to `flushed_lsn` (see `Identify`).
    pub copy_checksum: Option<u32>,
    pub max_frame: usize,
    pub flushed_lsn: Lsn,
    pub applied_lsn: Lsn,
    /// The standby's name (checked).
    pub name: String,
}

/// What the primary refuses a message from the standby with when it is not the one expected.
fn unexpected(got: &Message<'_>, want: &str) -> (ErrorCode, String) {
    match got {
        Message::Error { code, message } => (
            *code,
            format!(
                "the standby ended the connection: {}",
                super::printable(message)
            ),
        ),
        other => (
            ErrorCode::Protocol,
            format!("expected {want}, got {}", other.name()),
        ),
    }
}

/// The primary's half up to Identify: checks the Hello, authenticates the standby (when
/// `tokens` has any: the standby's proof must verify with one of them) and proves the primary
/// knows that token, then reads the standby's
/// identity and checks it belongs to the system of `control` and can follow the primary's
/// timeline path (`histories`). A refusal is told to the standby before the error is returned.
/// `t` bounds each wait for a message.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    tokens: &Tokens,
    control: &ControlFile,
    histories: &Histories,
    t: Duration,
) -> Result<Identified, ReplError> {
    let max = HANDSHAKE_MAX_FRAME;
    // Hello.
    let body = read_msg("peer", stream, max, t, "Hello").await?;
    let (standby_nonce, version) = match codec::decode(&body) {
        Ok(Message::Hello {
            magic,
            protocol_version,
            nonce,
        }) => {
            if magic != MAGIC {
                return Err(refuse(
                    stream,
                    ErrorCode::Protocol,
                    "not a walship standby (bad magic)".into(),
                )
                .await);
            }
            if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol_version) {
                let upgrade = if protocol_version < MIN_PROTOCOL_VERSION {
                    "upgrade the standby"
                } else {
                    "upgrade the primary"
                };
                return Err(refuse(stream, ErrorCode::Version, format!("protocol version {protocol_version} is not supported; this primary speaks version {PROTOCOL_VERSION} only (since version 6 the primary checks a standby's copy of its open segment): {upgrade}")).await);
            }
            (nonce, protocol_version)
        }
        Ok(other) => {
            let (c, m) = unexpected(&other, "Hello");
            return Err(refuse(stream, c, m).await);
        }
        Err(e) => return Err(refuse(stream, ErrorCode::Protocol, e.to_string()).await),
    };
    // Challenge and Auth.
    let primary_nonce = nonce();
    write_message(
        stream,
        &Message::Challenge {
            // The standby's version when it is older: the connection goes on in it.
            protocol_version: version,
            nonce: primary_nonce,
            auth_required: tokens.required(),
        },
    )
    .await?;
    let body = read_msg("peer", stream, max, t, "Auth").await?;
    let proof = match codec::decode(&body) {
        Ok(Message::Auth { proof }) => proof,
        Ok(other) => {
            let (c, m) = unexpected(&other, "Auth");
            return Err(refuse(stream, c, m).await);
        }
        Err(e) => return Err(refuse(stream, ErrorCode::Protocol, e.to_string()).await),
    };
    let (reply, token_name) = match (tokens.required(), proof) {
        (false, _) => (None, None),
        (true, None) => {
            return Err(refuse(stream, ErrorCode::Auth, "authentication required: the primary has a token; give the standby the same --auth-token-file".into()).await)
        }
        (true, Some(p)) => match tokens.verify(&standby_nonce, &primary_nonce, &p) {
            Some((name, tok)) => (
                Some(tok.primary_proof(&primary_nonce, &standby_nonce)),
                name.map(str::to_string),
            ),
            None => {
                let why = match tokens {
                    Tokens::Named(_) => "authentication failed: wrong token (no token in the primary's token directory matches: a wrong token, or a standby revoked)",
                    _ => "authentication failed: wrong token",
                };
                return Err(refuse(stream, ErrorCode::Auth, why.into()).await);
            }
        },
    };
    write_message(stream, &Message::AuthOk { proof: reply }).await?;
    // Identify.
    let body = read_msg("peer", stream, max, t, "Identify").await?;
    let identified = match codec::decode(&body) {
        Ok(Message::Identify {
            standby_id,
            system_id,
            timeline,
            segment_size,
            next_segment,
            prev_checksum,
            flushed_lsn,
            applied_lsn,
            max_frame,
            name,
            history_digest,
            copy_checksum,
        }) => {
            if let Err(e) = crate::replication::synchronous::check_name(name) {
                return Err(refuse(
                    stream,
                    ErrorCode::Protocol,
                    format!("invalid standby name: {e}"),
                )
                .await);
            }
            let c = control;
            if let Some(sys) = system_id {
                let sys = Uuid::from_bytes(sys);
                if sys != c.system_id {
                    return Err(refuse(
                        stream,
                        ErrorCode::Identity,
                        format!(
                            "the standby belongs to system {sys}, this primary is system {}",
                            c.system_id
                        ),
                    )
                    .await);
                }
                if segment_size != c.segment_size {
                    return Err(refuse(
                        stream,
                        ErrorCode::Identity,
                        format!(
                            "the standby has segment size {segment_size}, this primary {}",
                            c.segment_size
                        ),
                    )
                    .await);
                }
                if let Err((code, m)) = histories.admit(timeline, history_digest, flushed_lsn) {
                    return Err(refuse(stream, code, m).await);
                }
            }
            Identified {
                version,
                timeline: if system_id.is_some() { timeline } else { 0 },
                id: Uuid::from_bytes(standby_id).to_string(),
                token_name,
                next_segment,
                prev_checksum,
                copy_checksum,
                max_frame: max_frame as usize,
                flushed_lsn,
                applied_lsn,
                name: name.to_string(),
            }
        }
        Ok(other) => {
            let (c, m) = unexpected(&other, "Identify");
            return Err(refuse(stream, c, m).await);
        }
        Err(e) => return Err(refuse(stream, ErrorCode::Protocol, e.to_string()).await),
    };
    let max_frame = identified.max_frame;
    if max_frame < MIN_FRAME_LIMIT {
        return Err(refuse(
            stream,
            ErrorCode::Protocol,
            format!(
                "the standby's maximum frame {max_frame} is below the minimum {MIN_FRAME_LIMIT}"
            ),
        )
        .await);
    }
    Ok(identified)
}

/// The primary's last handshake messages: its history files, oldest first, then its identity
/// and the end of its newest sealed segment. Segments follow.
pub(crate) async fn welcome<S: AsyncWrite + Unpin>(
    stream: &mut S,
    control: &ControlFile,
    histories: &Histories,
    sealed_lsn: Lsn,
) -> Result<(), ReplError> {
    for (timeline, bytes) in &histories.files {
        write_message(
            stream,
            &Message::TimelineHistory {
                timeline: *timeline,
                data: super::messages::Bytes(bytes),
            },
        )
        .await?;
    }
    write_message(
        stream,
        &Message::Welcome {
            system_id: *control.system_id.as_bytes(),
            timeline: control.timeline,
            segment_size: control.segment_size,
            sealed_lsn,
        },
    )
    .await?;
    Ok(())
}

/// What a standby tells the primary about itself in Identify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Introduction {
    pub standby_id: Uuid,
    /// The identity of what it holds; None for a directory that does not exist yet.
    pub control: Option<ControlFile>,
    pub next_segment: Option<u64>,
    pub prev_checksum: Option<u32>,
    pub flushed_lsn: Lsn,
    /// The checksum of its copy of the open segment up to `flushed_lsn` (see `Identify`).
    pub copy_checksum: Option<u32>,
    /// The end of every record the directory holds, as the standby judges its own position
    /// against the primary's path: `flushed_lsn`, or, for a directory being adopted that ends
    /// in an open segment, the end of that segment's last valid record. Not sent.
    pub held_lsn: Lsn,
    pub applied_lsn: Lsn,
    pub max_frame: usize,
    /// The standby's name.
    pub name: String,
    /// The history files it holds, oldest first (none on timeline 1).
    pub histories: Vec<HistoryBytes>,
}

impl Introduction {
    /// The digest of the history file of its own timeline, when it has one.
    pub(super) fn history_digest(&self) -> Option<[u8; 32]> {
        let t = self.control.map(|c| c.timeline)?;
        self.histories
            .iter()
            .find(|(tl, _)| *tl == t)
            .map(|(_, b)| digest_of(b))
    }
}

/// What the primary said in a handshake that succeeded, with what the standby told it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Welcomed {
    /// The protocol version the connection goes on in.
    pub version: u32,
    /// The introduction as sent.
    pub sent: Introduction,
    pub system_id: Uuid,
    pub timeline: u32,
    pub segment_size: u64,
    pub sealed_lsn: Lsn,
    /// The primary's history files the standby did not hold, oldest first: stored before
    /// anything else.
    pub new_histories: Vec<HistoryBytes>,
    /// The primary's timeline path, as its history files tell it.
    pub path: crate::timeline::History,
}

/// The standby's error for a message from the primary that is not the one expected: the
/// primary's own refusal, or a protocol error.
pub(crate) fn from_primary(m: &Message<'_>, want: &str) -> ReplError {
    match m {
        Message::Error { code, message } => ReplError::PeerRefused {
            peer: "primary",
            code: *code,
            message: super::printable(message),
        },
        other => ReplError::refused(
            ErrorCode::Protocol,
            format!("expected {want} from the primary, got {}", other.name()),
        ),
    }
}

/// The standby's half: Hello, the primary's Challenge, Auth (with a proof when `token` is
/// given, and then the primary must prove it too), Identify, and the primary's Welcome, which
/// must name the system the standby holds (or, for a standby that holds nothing yet, a valid
/// segment size). `introduce` is asked what to say in Identify when it is sent, so that the
/// positions are current. A refusal is told to the primary before the error is returned; `t`
/// bounds each wait for a message.
pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    token: Option<&AuthToken>,
    t: Duration,
    introduce: impl FnOnce() -> Introduction,
) -> Result<Welcomed, ReplError> {
    let my_nonce = nonce();
    write_message(
        stream,
        &Message::Hello {
            magic: MAGIC,
            protocol_version: PROTOCOL_VERSION,
            nonce: my_nonce,
        },
    )
    .await?;
    let body = read_msg("primary", stream, HANDSHAKE_MAX_FRAME, t, "Challenge").await?;
    let (primary_nonce, auth_required, version) = match codec::decode(&body) {
        Ok(Message::Challenge {
            protocol_version,
            nonce,
            auth_required,
        }) => {
            if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol_version) {
                let upgrade = if protocol_version < MIN_PROTOCOL_VERSION {
                    "upgrade the primary"
                } else {
                    "upgrade the standby"
                };
                return Err(refuse(stream, ErrorCode::Version, format!("the primary speaks protocol version {protocol_version}, this standby version {PROTOCOL_VERSION} only (since version 6 the primary checks a standby's copy of its open segment): {upgrade}")).await);
            }
            (nonce, auth_required, protocol_version)
        }
        Ok(other) => return Err(from_primary(&other, "Challenge")),
        Err(e) => return Err(refuse(stream, ErrorCode::Protocol, e.to_string()).await),
    };
    let proof = match (token, auth_required) {
        (Some(_), false) => {
            return Err(refuse(stream, ErrorCode::Auth, "the primary does not authenticate, but this standby has a token: refusing a primary that cannot prove it knows it".into()).await)
        }
        (Some(tok), true) => Some(tok.standby_proof(&my_nonce, &primary_nonce)),
        (None, _) => None,
    };
    write_message(stream, &Message::Auth { proof }).await?;
    let body = read_msg("primary", stream, HANDSHAKE_MAX_FRAME, t, "AuthOk").await?;
    match codec::decode(&body) {
        Ok(Message::AuthOk { proof }) => {
            if let Some(tok) = token {
                if !proof.is_some_and(|p| tok.verify_primary(&primary_nonce, &my_nonce, &p)) {
                    return Err(refuse(
                        stream,
                        ErrorCode::Auth,
                        "authentication failed: the primary did not prove it knows the token"
                            .into(),
                    )
                    .await);
                }
            }
        }
        Ok(other) => return Err(from_primary(&other, "AuthOk")),
        Err(e) => return Err(refuse(stream, ErrorCode::Protocol, e.to_string()).await),
    }
    let intro = introduce();
    write_message(
        stream,
        &Message::Identify {
            standby_id: *intro.standby_id.as_bytes(),
            system_id: intro.control.map(|c| *c.system_id.as_bytes()),
            timeline: intro.control.map_or(0, |c| c.timeline),
            segment_size: intro.control.map_or(0, |c| c.segment_size),
            next_segment: intro.next_segment,
            prev_checksum: intro.prev_checksum,
            flushed_lsn: intro.flushed_lsn,
            applied_lsn: intro.applied_lsn,
            max_frame: intro.max_frame as u32,
            name: &intro.name,
            history_digest: intro.history_digest(),
            copy_checksum: intro.copy_checksum,
        },
    )
    .await?;
    // The primary's history files, then Welcome. Their bytes together may fill one frame of
    // the standby's maximum, no more.
    let mut received: Vec<HistoryBytes> = Vec::new();
    let limit = intro.max_frame.max(HANDSHAKE_MAX_FRAME);
    let mut total = 0usize;
    let (system_id, timeline, segment_size, sealed_lsn) = loop {
        let body = read_msg("primary", stream, limit, t, "Welcome").await?;
        match codec::decode(&body) {
            Ok(Message::TimelineHistory { timeline, data }) => {
                total += body.len();
                if total > limit {
                    return Err(refuse(
                        stream,
                        ErrorCode::Protocol,
                        format!("the primary's history files fill more than {limit} bytes"),
                    )
                    .await);
                }
                received.push((timeline, data.0.to_vec()));
            }
            Ok(Message::Welcome {
                system_id,
                timeline,
                segment_size,
                sealed_lsn,
            }) => {
                break (
                    Uuid::from_bytes(system_id),
                    timeline,
                    segment_size,
                    sealed_lsn,
                )
            }
            Ok(other) => return Err(from_primary(&other, "Welcome")),
            Err(e) => return Err(refuse(stream, ErrorCode::Protocol, e.to_string()).await),
        }
    };
    match intro.control {
        Some(c) => {
            if c.system_id != system_id || c.segment_size != segment_size {
                return Err(refuse(stream, ErrorCode::Identity, format!(
                    "the primary is system {system_id} (timeline {timeline}, segment size {segment_size}), this standby holds system {} (timeline {}, segment size {})",
                    c.system_id, c.timeline, c.segment_size
                )).await);
            }
        }
        None => {
            if let Err(e) = crate::format::check_segment_size(segment_size) {
                return Err(refuse(
                    stream,
                    ErrorCode::Identity,
                    format!("the primary's segment size is invalid: {e}"),
                )
                .await);
            }
        }
    }
    let (new_histories, path) = match timelines::check_at_standby(
        received,
        timeline,
        system_id,
        &intro.histories,
        intro.control.map(|c| c.timeline),
        intro.held_lsn.max(intro.flushed_lsn),
    ) {
        Ok(h) => h,
        Err((code, m)) => return Err(refuse(stream, code, m).await),
    };
    Ok(Welcomed {
        version,
        sent: intro,
        system_id,
        timeline,
        segment_size,
        sealed_lsn,
        new_histories,
        path,
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod timeline_tests;
