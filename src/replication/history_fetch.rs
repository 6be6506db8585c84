//! Asking a running primary for its timeline history, for `walship rewind`: a handshake as a
//! standby without a directory (Identify with no system id and no position), which the primary
//! answers with every history file of its path (`TimelineHistory`, oldest first) and
//! `Welcome`; the connection is closed right after, before any `Status`, so the primary keeps
//! no slot for it. The files are checked as a standby checks them.

use std::time::Duration;

use tokio::net::TcpStream;
use uuid::Uuid;

use crate::replication::auth::AuthToken;
use crate::replication::handshake::{self, HistoryBytes, Introduction};
use crate::replication::transport::Stream;
use crate::replication::ReplError;
use crate::timeline::History;

/// What a primary said of its timelines.
#[derive(Clone, Debug)]
pub struct PrimaryHistory {
    pub system_id: Uuid,
    pub segment_size: u64,
    /// Its timeline, with the path to it.
    pub path: History,
    /// The history file of every timeline after the first on its path, oldest first: the
    /// timeline and the file's bytes (checked).
    pub files: Vec<(u32, Vec<u8>)>,
}

/// Connects to the primary at `addr` (plain TCP), authenticates with `token` when given, and
/// takes its history files; `t` bounds the connection and each wait for a message.
pub async fn fetch_history(
    addr: &str,
    token: Option<&AuthToken>,
    t: Duration,
) -> Result<PrimaryHistory, ReplError> {
    let tcp = match tokio::time::timeout(t, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ReplError::io(format!("connect to {addr}"), e)),
        Err(_) => {
            return Err(ReplError::Timeout(format!(
                "connecting to {addr} took longer than {t:?}"
            )))
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::Plain(tcp);
    let id = Uuid::new_v4();
    let welcomed = handshake::connect(&mut stream, token, t, || Introduction {
        standby_id: id,
        control: None,
        next_segment: None,
        prev_checksum: None,
        flushed_lsn: crate::Lsn::ZERO,
        held_lsn: crate::Lsn::ZERO,
        applied_lsn: crate::Lsn::ZERO,
        max_frame: 1 << 20,
        name: format!("rewind-{}", &id.simple().to_string()[..8]),
        histories: Vec::<HistoryBytes>::new(),
    })
    .await?;
    drop(stream);
    Ok(PrimaryHistory {
        system_id: welcomed.system_id,
        segment_size: welcomed.segment_size,
        path: welcomed.path,
        files: welcomed.new_histories,
    })
}
