//! File-shipping replication: a shipper serves sealed segments of a data directory over TCP,
//! standbys receive, verify, store and apply them. docs/PROTOCOL.md describes the wire format.
//!
//! - [`messages`], [`codec`], [`frame`]: the protocol's bytes (pure, no I/O but the socket).
//! - [`auth`]: the token challenge-response; [`identities`]: which tokens a primary accepts and
//!   the standby names they give; `handshake`: both halves of the handshake over any byte
//!   stream.
//! - [`tls`]: TLS configurations from files; [`transport`]: the stream a connection runs over
//!   (plain TCP or TLS).
//! - [`shipper`]: the primary side; [`standby`]: the receiving side; [`applicator`]: what a
//!   standby does with each record; [`standby_state`]: a standby's own durable state (its
//!   directory's module, under the name it has always had).

pub mod applicator;
pub mod auth;
pub mod codec;
pub mod frame;
mod handshake;
pub mod history_fetch;
mod history_files;
pub mod identities;
pub mod messages;
mod segments;
pub mod shipper;
pub mod standby;
pub mod synchronous;
pub mod timeline_path;
pub mod tls;
pub mod transport;

use std::time::Duration;

pub use applicator::{Applicator, CheckingApplicator};
pub use auth::AuthToken;
pub use messages::ErrorCode;
pub use shipper::{Shipper, ShipperConfig, ShipperEvent, StandbyInfo};
pub use standby::directory as standby_state;
pub use standby::{Standby, StandbyConfig, StandbyPhase, StandbyState};

/// Default interval between heartbeats, each way.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Default time after which a silent peer is dropped.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time a new connection has to complete the handshake (Hello to Identify).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A replication failure.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("{0}")]
    Store(#[from] crate::Error),
    #[error("{0}")]
    Frame(#[from] frame::FrameError),
    #[error("{0}")]
    Token(#[from] auth::TokenError),
    #[error("{0}")]
    TlsFiles(#[from] tls::TlsError),
    /// A TLS handshake or record failed: which check, from this side. `certificate` when it is
    /// about a certificate (retrying with the same files cannot help), not the stream.
    #[error("{message}")]
    Tls { message: String, certificate: bool },
    /// The peer refused us or ended the connection, saying why.
    #[error("the {peer} ended the connection: {message}")]
    PeerRefused {
        peer: &'static str,
        code: ErrorCode,
        message: String,
    },
    /// We refused the peer (and told it so).
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("{0}")]
    Timeout(String),
    /// A task of this process ended when it should not have (it panicked, or stopped without
    /// saying why): a fault here, not a slow or silent peer; reconnecting cannot help.
    #[error("{0}")]
    Internal(String),
    /// Damage in a segment, found by the shipper or reported by a standby: recorded in the
    /// primary's damage register and logged as damage, not as a network event.
    #[error("{0}")]
    Damaged(Box<crate::damage::DamageEntry>),
    /// A segment received by a standby failed its checks; it was discarded and the primary
    /// told where and why. The standby asks for it again.
    #[error(
        "received segment {segment} is invalid at offset {offset} (LSN {lsn}), discarded: {reason}"
    )]
    InvalidSegment {
        segment: crate::format::SegmentName,
        offset: u64,
        lsn: crate::Lsn,
        reason: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ReplError {
    /// True when reconnecting cannot help (wrong token, foreign system, missing WAL, local
    /// damage): a standby stops instead of retrying.
    pub fn is_fatal(&self) -> bool {
        match self {
            ReplError::PeerRefused { code, .. } | ReplError::Refused { code, .. } => {
                code.is_fatal()
            }
            ReplError::Store(e) => {
                e.is_corruption()
                    || matches!(
                        e,
                        crate::Error::Locked { .. } | crate::Error::NotADataDir { .. }
                    )
            }
            ReplError::Token(_) | ReplError::TlsFiles(_) | ReplError::Internal(_) => true,
            ReplError::Tls { certificate, .. } => *certificate,
            _ => false,
        }
    }

    /// True when a standby was refused (by either side) because it holds records past the
    /// point where the primary's path left its timeline: `walship rewind` is the way on.
    pub fn is_diverged(&self) -> bool {
        match self {
            ReplError::PeerRefused { code, message, .. } | ReplError::Refused { code, message } => {
                *code == ErrorCode::Identity && message.contains(timeline_path::REWIND_ADVICE)
            }
            _ => false,
        }
    }

    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> ReplError {
        ReplError::Refused {
            code,
            message: message.into(),
        }
    }

    /// The same error, told as a TLS failure when a TLS check is its cause, from `side`.
    pub(crate) fn tls_told(self, side: tls::Side) -> ReplError {
        let cause = match &self {
            ReplError::Frame(frame::FrameError::Io(e)) | ReplError::Io { source: e, .. } => {
                tls::describe::tls_cause(e)
            }
            _ => None,
        };
        match cause {
            Some(c) => ReplError::Tls {
                message: tls::describe::describe(c, side),
                certificate: tls::describe::is_certificate_failure(c),
            },
            None => self,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> ReplError {
        ReplError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Checks a `HOST:PORT` address before anything is tried with it: a non-empty host (a name,
/// an IPv4 address, or an IPv6 address in brackets) and a port from 1 (0 too when
/// `allow_port_zero`, for listening) to 65535. An address that cannot be right is a usage
/// error at once, never a connection retried forever.
pub fn check_address(addr: &str, allow_port_zero: bool) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!(
            "address {addr:?} has no port: give HOST:PORT, like 10.0.0.5:5433 or [::1]:5433"
        ));
    };
    let min = u16::from(!allow_port_zero);
    match port.parse::<u16>() {
        Ok(p) if p >= min => {}
        _ => {
            return Err(format!(
                "address {addr:?}: the port must be a number from {min} to 65535, not {port:?}"
            ))
        }
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.is_empty() {
        return Err(format!(
            "address {addr:?} has no host: give HOST:PORT, like 10.0.0.5:5433"
        ));
    }
    if bare.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "address {addr:?}: write an IPv6 host in brackets, like [::1]:5433"
        ));
    }
    if bare
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '[' | ']' | '/'))
    {
        return Err(format!(
            "address {addr:?}: the host {host:?} is not a host name or address"
        ));
    }
    Ok(())
}

/// Checks the timing settings shared by both sides: none may be zero (a zero interval would
/// spin or panic a timer), and heartbeats must come more often than a peer is timed out.
pub(crate) fn check_timing(heartbeat: Duration, peer_timeout: Duration) -> Result<(), ReplError> {
    if heartbeat.is_zero() || peer_timeout.is_zero() || heartbeat >= peer_timeout {
        return Err(ReplError::Store(crate::Error::InvalidArgument(format!(
            "the heartbeat interval ({heartbeat:?}) and the peer timeout ({peer_timeout:?}) must be above zero, the interval shorter than the timeout"
        ))));
    }
    Ok(())
}

/// Longest peer error text kept for logs and errors, in characters.
pub const PEER_MESSAGE_MAX: usize = 512;

/// A peer's error text made safe to log: control characters (a forged log line needs a
/// newline) become spaces, and the text is cut at [`PEER_MESSAGE_MAX`] characters.
pub fn printable(message: &str) -> String {
    let mut out: String = message
        .chars()
        .take(PEER_MESSAGE_MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if message.chars().nth(PEER_MESSAGE_MAX).is_some() {
        out.push('…');
    }
    out
}

/// Reads one frame, giving up when the peer stays silent for `timeout`.
pub(crate) async fn read_msg(
    peer: &str,
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    max: usize,
    timeout: Duration,
    what: &str,
) -> Result<Vec<u8>, ReplError> {
    match tokio::time::timeout(timeout, frame::read_frame(r, max)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ReplError::Timeout(format!(
            "no message from the {peer} for {timeout:?} while waiting for {what}"
        ))),
    }
}

/// Sends an Error to the peer (best effort, briefly) and returns the matching local error.
pub(crate) async fn refuse(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    code: ErrorCode,
    message: String,
) -> ReplError {
    let msg = messages::Message::Error {
        code,
        message: &message,
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), frame::write_message(w, &msg)).await;
    ReplError::refused(code, message)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_internal_failure_is_not_retried_and_a_timeout_is() {
        use super::ReplError;
        assert!(ReplError::Internal("the segment store stopped".into()).is_fatal());
        assert!(!ReplError::Timeout("the primary took no data for 10s".into()).is_fatal());
        let state = crate::Error::corrupt_state(
            std::path::Path::new("applied.json"),
            "standby state file",
            "eof",
        );
        assert!(
            ReplError::Store(state).is_fatal(),
            "a corrupt state file is not retried either"
        );
    }

    #[test]
    fn addresses() {
        use super::check_address as c;
        for ok in [
            "127.0.0.1:5433",
            "db1.example:1",
            "[::1]:65535",
            "localhost:5433",
        ] {
            assert_eq!(c(ok, false), Ok(()), "{ok}");
        }
        assert!(c("127.0.0.1:0", true).is_ok());
        for bad in [
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            ":5433",
            "[]:5433",
            "::1:5433",
            "a b:5433",
            "host:-1",
            "",
        ] {
            assert!(c(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn peer_text_cannot_forge_log_lines_or_flood_them() {
        assert_eq!(
            super::printable("bad\n2026-01-01 INFO forged\r\x1b[31m"),
            "bad 2026-01-01 INFO forged  [31m"
        );
        let long = "x".repeat(10_000);
        let p = super::printable(&long);
        assert_eq!(p.chars().count(), super::PEER_MESSAGE_MAX + 1);
        assert!(p.ends_with('…'));
        assert_eq!(super::printable("wrong token"), "wrong token");
    }
}
