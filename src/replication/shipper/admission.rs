//! Admission: after the handshake, whether this shipper can serve the standby. It may not be
//! ahead of this primary, marked lost by retention, or need WAL that is gone, and the segment
//! before the one it asks for must be the same as ours. Decided before Welcome, so that a
//! directory offered to become a standby is refused before it changes anything.

use std::sync::Arc;

use super::Shared;
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{SegmentFileKind, SegmentName};
use crate::replication::handshake::{self, Identified};
use crate::replication::messages::ErrorCode;
use crate::replication::segments::{copy_checksum, copy_extent};
use crate::replication::transport::Stream;
use crate::replication::{refuse, ReplError};
use crate::segment_check::check_sealed;
use crate::Lsn;

/// The handshake up to Identify, then whether this shipper can serve the standby: it may not be
/// ahead of this primary, marked lost, or need WAL that is gone, and its newest segment must be
/// ours. A refusal is told to the standby.
pub(super) async fn admit(
    shared: &Arc<Shared>,
    stream: &mut Stream,
) -> Result<Identified, ReplError> {
    let cfg = &shared.config;
    let tokens = super::identity::tokens(shared).await;
    let identified = handshake::accept(
        stream,
        &tokens,
        &shared.control,
        &shared.histories,
        cfg.peer_timeout,
    )
    .await
    .map_err(|e| e.tls_told(crate::replication::tls::Side::Primary))?;
    let Identified {
        ref id,
        next_segment,
        prev_checksum,
        flushed_lsn,
        ..
    } = identified;
    let set = shared.segments.borrow().clone();
    // A standby may not hold what this primary has not sealed: it is ahead of this primary
    // (a former primary that took writes this one never had), or this primary lost WAL.
    // Version 3: it may also hold a prefix of the segment open here, up to our durable position.
    let durable = Lsn(*shared.durable.borrow()).max(set.sealed_lsn);
    let open_no = durable.0 / shared.control.segment_size;
    let ahead = next_segment.is_some_and(|n| {
        set.newest().is_none_or(|newest| n > newest + 1) && (durable == Lsn::ZERO || n > open_no)
    }) || flushed_lsn > durable;
    if ahead {
        // A standby's directory serves its sealed segments only: a standby of the same primary
        // holding more of the open segment is ahead of it until that segment is sealed.
        let served_standby = crate::replication::standby_state::meta_path(&shared.dd).exists();
        let why = if served_standby {
            "this directory is itself a standby's, which serves its sealed segments only: a standby that received more of their primary's open segment cannot follow it until that segment is sealed here (or follow the primary itself)"
        } else {
            "it is ahead of this primary or diverged from it; it cannot follow this primary"
        };
        return Err(refuse(
            stream,
            ErrorCode::Identity,
            format!(
                "the standby holds WAL up to {} (segments before {}), past this primary's newest sealed segment{} (ending at {}) and its durable position {}: {why}",
                flushed_lsn,
                next_segment.map_or("-".to_string(), |n| format!("{n:X}")),
                set.newest().map_or(" (none)".to_string(), |n| format!(" {n:X}")),
                set.sealed_lsn,
                durable
            ),
        )
        .await);
    }
    // A standby marked lost by retention: the WAL it needs may be gone, and what it would
    // take again no longer holds anything back. It must be rebuilt or its slot dropped.
    let reg = shared.registry.clone();
    let id2 = id.clone();
    let lost = tokio::task::spawn_blocking(move || reg.get(&id2))
        .await
        .map_err(|e| ReplError::io("read the standby's slot", std::io::Error::other(e)))??
        .is_some_and(|r| r.lost);
    if lost {
        return Err(refuse(
            stream,
            ErrorCode::Unavailable,
            format!(
                "standby {id} was marked lost by retention: this primary no longer keeps WAL for it; rebuild it (walship restore from the archive), or drop its slot on the primary with `walship checkpoint DATA_DIR --drop-consumer {id}` to let it try again"
            ),
        )
        .await);
    }
    // WAL it needs that is gone: said before Welcome, so that a directory offered to become a
    // standby is refused before it changes anything.
    if let (Some(n), Some(oldest), Some(newest)) = (next_segment, set.oldest(), set.newest()) {
        if n < oldest {
            return Err(refuse(stream, ErrorCode::Unavailable, format!("segment {n:X} is no longer on the primary (its oldest is {oldest:X}): the standby needs a fresh copy")).await);
        }
        if n <= newest && !set.by_no.contains_key(&n) {
            return Err(refuse(stream, ErrorCode::Unavailable, format!("segment {n:X} is missing on the primary, which holds segments up to {newest:X}")).await);
        }
    }
    // A standby holding the segment before the one it asks for must share our history.
    if let (Some(n), Some(sum)) = (next_segment, prev_checksum) {
        if let Some(prev) = n.checked_sub(1).and_then(|p| set.by_no.get(&p)).copied() {
            let (path, control) = (shared.dd.segment_path(&prev), shared.control);
            let ours = tokio::task::spawn_blocking(move || check_sealed(&path, &prev, &control))
                .await
                .map_err(|e| ReplError::io("check segment", std::io::Error::other(e)))?;
            match ours {
                Ok(s) if s.seal.segment_checksum != sum => {
                    return Err(refuse(stream, ErrorCode::Identity, format!("histories diverged: the standby's {prev} has checksum {sum:08x}, the primary's {:08x}", s.seal.segment_checksum)).await)
                }
                Ok(_) => {}
                Err(e) => return Err(refuse(stream, ErrorCode::Internal, format!("primary cannot read {prev}: {e}")).await),
            }
        }
    }
    // A standby holding a copy of a segment that was open here must hold this primary's
    // records in it: a primary brought back to an earlier copy of its directory writes others
    // at the same positions, which a comparison of positions alone takes for a prefix.
    if let (Some(sum), Some((no, off))) = (
        identified.copy_checksum,
        copy_extent(flushed_lsn, shared.control.segment_size),
    ) {
        let name = set.by_no.get(&no).copied().unwrap_or_else(|| {
            SegmentName::new(shared.control.timeline, no, SegmentFileKind::Open)
        });
        let path = shared.dd.segment_path(&name);
        let ours = tokio::task::spawn_blocking(move || records_checksum(&path, off))
            .await
            .map_err(|e| ReplError::io("check segment", std::io::Error::other(e)))?;
        match ours {
            Ok(Some(ours)) if ours != sum => {
                return Err(refuse(stream, ErrorCode::Identity, format!("histories diverged: the standby's copy of segment {no:X} holds other records than this primary's {name} before {flushed_lsn} (checksum {sum:08x}, the primary's {ours:08x}): it cannot follow this primary; make it a new standby (a new directory), its own is kept as it is")).await)
            }
            Ok(_) => {}
            Err(e) => return Err(refuse(stream, ErrorCode::Internal, format!("primary cannot read {name}: {e}")).await),
        }
    }
    Ok(identified)
}

/// `copy_checksum` of this primary's segment file at `path` up to offset `off`; None when the
/// file is gone or shorter (nothing to compare with).
fn records_checksum(path: &std::path::Path, off: usize) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::FileExt;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut records = vec![0u8; off - SEGMENT_HEADER_LEN];
    match file.read_exact_at(&mut records, SEGMENT_HEADER_LEN as u64) {
        Ok(()) => Ok(Some(copy_checksum(&records))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}
