//! Asking a running primary for its timeline history, for `walship rewind`: a handshake as a
//! standby without a directory (Identify with no system id and no position), which the primary
//! answers with every history file of its path (`TimelineHistory`, oldest first) and
//! `Welcome`; the connection is closed right after, before any `Status`, so the primary keeps
//! no slot for it. The files are checked as a standby checks them. TCP, then TLS when given,
//! as a standby connects.

use std::time::Duration;

use uuid::Uuid;

use crate::replication::auth::AuthToken;
use crate::replication::handshake::{self, HistoryBytes, Introduction};
use crate::replication::tls::{ClientTlsFiles, Side};
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

/// How to reach the primary.
#[derive(Clone, Debug, Default)]
pub struct Reach<'a> {
    /// TLS files, for TLS.
    pub tls: Option<&'a ClientTlsFiles>,
    pub token: Option<&'a AuthToken>,
    /// The name given in Identify (one a certificate or token proves, when the primary checks
    /// names); `rewind-` and 8 hex digits of a fresh id when None.
    pub name: Option<&'a str>,
}

/// Connects to the primary at `addr` as `reach` says and takes its history files; `t` bounds
/// the connection and each wait for a message.
pub async fn fetch_history(
    addr: &str,
    reach: &Reach<'_>,
    t: Duration,
) -> Result<PrimaryHistory, ReplError> {
    fetch(addr, reach.tls, reach.token, reach.name, t)
        .await
        .map_err(|e| e.tls_told(Side::Standby))
}

async fn fetch(
    addr: &str,
    tls: Option<&ClientTlsFiles>,
    token: Option<&AuthToken>,
    name: Option<&str>,
    t: Duration,
) -> Result<PrimaryHistory, ReplError> {
    let mut stream = crate::replication::standby::connection::dial(addr, tls, t).await?;
    let id = Uuid::new_v4();
    let welcomed = handshake::connect(&mut stream, token, t, || Introduction {
        standby_id: id,
        control: None,
        next_segment: None,
        prev_checksum: None,
        copy_checksum: None,
        flushed_lsn: crate::Lsn::ZERO,
        held_lsn: crate::Lsn::ZERO,
        applied_lsn: crate::Lsn::ZERO,
        max_frame: 1 << 20,
        name: name.map_or_else(
            || format!("rewind-{}", &id.simple().to_string()[..8]),
            str::to_string,
        ),
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
