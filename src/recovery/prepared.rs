//! Prepared files (`.wal.prep`) at recovery: removed when all zeros, kept when recycled,
//! set aside when they hold data, refused when they prove a lost open name.

use super::*;

/// What recovery does with each prepared file in `prepared`; `oldest_live` is the lowest
/// number of a sealed or open segment. Sets `rec.prepared` to a recycled file ready for the
/// next segment.
pub(super) fn plan_prepared(
    dir: &DataDir,
    control: &ControlFile,
    mode: RecoveryMode,
    prepared: Vec<SegmentName>,
    rec: &mut Recovered,
    oldest_live: Option<u64>,
) -> Result<Vec<Action>> {
    // A prepared file holds no acknowledged record: the writer makes a segment's new name
    // durable before it counts anything in it durable, and recovery syncs the directory before
    // the writer starts. It may still hold unacknowledged ones (activated just before a crash,
    // its new name lost); never reuse such a file, and keep its bytes aside rather than trust
    // that reasoning with data. A recycled file holds only the records of its earlier use,
    // below the segment the log writes next: it is kept for reuse. Decided after the open
    // segments, which say which segment that is.
    let mut prep_actions = Vec::new();
    for name in prepared {
        let path = dir.segment_path(&name);
        let buf = crate::reader::read_segment(&path)?;
        if is_zero_from(&buf, 0) {
            prep_actions.push(Action::Remove { path });
        } else if let Some(stale) =
            recycled::recycled_prep(&buf, control, &name, rec.next_segment_no)
        {
            // A recycled file, kept for reuse: ready for the next segment when it is named for
            // it and its header is cleared, otherwise waiting in the pool.
            let ready = name.segment_no.0 == rec.next_segment_no
                && buf.len() as u64 == control.segment_size
                && is_zero_from(&buf[..SEGMENT_HEADER_LEN], 0);
            if ready && rec.prepared.is_none() {
                rec.prepared = Some(path);
            }
            tracing::debug!(file = %name, %stale, "a recycled file, kept for reuse");
        } else if released_by_retention(dir, control, &name, oldest_live)? {
            // Retention put it in the pool; it changed since (a flipped bit, a write).
            prep_actions.push(Action::MoveAside {
                path,
                why: "a released segment kept for reuse that is no longer the segment it was: it lies below the checkpoint and every live segment, so none of its records is needed; not reused".into(),
            });
        } else if let Some(reason) = prepared_damage(control, &name, &buf) {
            let start = name.segment_no.start_lsn_saturating(control.segment_size);
            return Err(corrupt(&path, 0, start, reason));
        } else {
            let start = name.segment_no.start_lsn_saturating(control.segment_size);
            refuse_in_strict(
                mode,
                &path,
                start,
                "a prepared segment holds data (a segment activated just before a crash)",
            )?;
            prep_actions.push(Action::MoveAside {
                path,
                why: "a prepared segment holds data (a segment activated just before a crash whose new name never became durable)".into(),
            });
        }
    }
    Ok(prep_actions)
}

/// True when prepared file `name` is a segment retention released into the pool of recycled
/// files: numbered below every live segment (`oldest_live`), and ending at or below the
/// checkpoint, below which the application needs no record. Such a file never held the log's
/// end, whatever bytes it holds now.
fn released_by_retention(
    dir: &DataDir,
    control: &ControlFile,
    name: &SegmentName,
    oldest_live: Option<u64>,
) -> Result<bool> {
    let Some(oldest) = oldest_live else {
        return Ok(false);
    };
    let end = name
        .segment_no
        .next()
        .start_lsn_saturating(control.segment_size);
    Ok(name.segment_no.0 < oldest && end <= crate::retention::checkpoint_lsn(dir)?)
}

/// Why prepared file `name`, holding data, is damage: its header is the one the writer gives
/// this segment, and one of its records says the log was durable inside it. The writer makes a
/// segment's open name durable before it counts anything in it durable, so the file had been
/// the open segment, with acknowledged records, and lost that name. None otherwise (a file
/// activated just before a crash, its new name never durable). Recovery, `verify` and `dump`
/// judge it alike.
pub(crate) fn prepared_damage(
    control: &ControlFile,
    name: &SegmentName,
    buf: &[u8],
) -> Option<String> {
    let header = SegmentHeader::decode(buf).ok().filter(|h| {
        h.segment_no == name.segment_no.0
            && h.segment_size == control.segment_size
            && h.system_id == control.system_id
    })?;
    let later = later_records(buf, &header, SEGMENT_HEADER_LEN).find(|r| r.durable_offset > 0)?;
    Some(format!(
        "a prepared segment holds records of its own, yet {later}: it had been the open segment and lost its name; records in it were acknowledged, so it is damage"
    ))
}
