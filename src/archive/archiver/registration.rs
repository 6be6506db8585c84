//! The archiver's registration in the data directory's consumer registry: one per archive, so
//! that retention keeps what each archive has not taken.

use super::ARCHIVER_ID;
use crate::consumers::{ConsumerKind, ConsumerRecord, ConsumerRegistry};
use crate::error::{Error, Result};
use crate::Lsn;

/// The registration of the archiver pushing to `location`, if there is one: the archiver
/// registered with that address, or an archiver registered as [`ARCHIVER_ID`] by a version
/// that recorded no address.
pub(super) fn registration_of(
    registry: &ConsumerRegistry,
    location: &str,
) -> Result<Option<ConsumerRecord>> {
    let archivers: Vec<ConsumerRecord> = registry
        .list()?
        .into_iter()
        .filter(|c| c.kind == ConsumerKind::Archiver)
        .collect();
    Ok(archivers
        .iter()
        .find(|r| r.address.as_deref() == Some(location))
        .or_else(|| {
            archivers
                .iter()
                .find(|r| r.id == ARCHIVER_ID && r.address.is_none())
        })
        .cloned())
}

/// Registers the archiver of `location`, which has no registration yet, at position 0, under
/// [`ARCHIVER_ID`] when no other archive holds it, else under `archiver-` and a hash of the
/// location; returns the id. Each archive then holds back the segments it has not taken: with
/// one registration for two archives, retention followed whichever saved last and released
/// segments the other had not archived yet. Each claim creates the record only if it is absent,
/// so two archivers starting at once never share one.
pub(super) fn register(registry: &ConsumerRegistry, location: &str) -> Result<String> {
    let ids = [
        ARCHIVER_ID.to_string(),
        format!("{ARCHIVER_ID}-{:08x}", fnv1a(location)),
    ];
    for id in &ids {
        let mut rec = ConsumerRecord::new(id, ConsumerKind::Archiver, Lsn(0));
        rec.address = Some(location.to_string());
        rec.last_contact_us = Some(crate::now_us());
        if registry.register_new(&rec)? {
            if id != ARCHIVER_ID {
                tracing::warn!(archive = %location, consumer = %id, "another archive of this data directory is registered too: each archiver holds back the segments its archive has not taken, so an archive no longer used must be dropped (`walship checkpoint DATA_DIR --drop-consumer ID`, ids in `walship status`) or wal/ keeps growing");
            }
            return Ok(id.clone());
        }
        // Taken meanwhile by an archiver of the same archive: share it.
        if registry
            .get(id)?
            .is_some_and(|r| r.address.as_deref() == Some(location))
        {
            return Ok(id.clone());
        }
    }
    Err(Error::Refused(format!(
        "consumers {} and {} are both registered for other archives; drop the one no longer used (`walship checkpoint DATA_DIR --drop-consumer ID`)",
        ids[0], ids[1]
    )))
}

/// FNV-1a, 32 bits: a stable name for a location (not a defence against anything).
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
