//! File-shipping replication: a shipper serves sealed segments of a data directory over TCP,
//! standbys receive, verify, store and apply them. docs/PROTOCOL.md describes the wire format.
//!
//! - [`messages`], [`codec`], [`frame`]: the protocol's bytes (pure, no I/O but the socket).
//! - [`auth`]: the token challenge-response.
//! - [`shipper`]: the primary side; [`standby`]: the receiving side; [`applicator`]: what a
//!   standby does with each record; [`standby_state`]: a standby's own durable state.

pub mod applicator;
pub mod auth;
pub mod codec;
pub mod frame;
pub mod messages;
mod segments;
pub mod shipper;
pub mod standby;
pub mod standby_state;

use std::time::Duration;

pub use applicator::{Applicator, CheckingApplicator};
pub use auth::AuthToken;
pub use messages::ErrorCode;
pub use shipper::{Shipper, ShipperConfig, ShipperEvent, StandbyInfo};
pub use standby::{Standby, StandbyConfig, StandbyPhase, StandbyState};

/// Default interval between heartbeats, each way.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Default time after which a silent peer is dropped.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// A replication failure.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("{0}")]
    Store(#[from] crate::Error),
    #[error("{0}")]
    Frame(#[from] frame::FrameError),
    #[error("{0}")]
    Token(#[from] auth::TokenError),
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
            ReplError::Token(_) => true,
            _ => false,
        }
    }

    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> ReplError {
        ReplError::Refused {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> ReplError {
        ReplError::Io {
            context: context.into(),
            source,
        }
    }
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
