//! `checkpoint`: declare WAL below an LSN no longer needed and remove what every consumer is
//! past; drop consumers by name.

use std::path::PathBuf;

use clap::Args;
use walship::log_ends::wal_ends;
use walship::retention::{checkpoint, drop_consumer, RetentionOptions};
use walship::{DataDir, Lsn};

use super::{parse_size, CmdResult, Failure};

/// Remove sealed segments below the checkpoint that every consumer (archiver, standbys) is past.
#[derive(Args, Debug)]
#[command(
    after_help = "A sealed segment is released once it ends at or below the checkpoint and \
every registered consumer not marked lost has taken it. Released files are kept under their \
prepared names (.wal.prep) for the writer to reuse as new segments: as many as this checkpoint \
released, at least 4, at most --max-recycled (default 64); the others are removed. Kept files \
beyond that number are removed too, a tenth of them (rounded down) per checkpoint. The newest \
sealed segment and the open segment are always kept. The checkpoint is remembered in DATA_DIR/state/retention.json and never \
moves back; without --lsn the remembered one is used. An --lsn past the end of the WAL (the end \
of its last record on disk) is refused with exit status 2.\n\n\
--max-retained caps what one lagging consumer may hold back: a consumer that alone keeps more \
than SIZE of sealed segments below the checkpoint is marked lost (logged as an error), no longer \
holds WAL, and must be rebuilt. A segment the archiver recorded as archived is removed only while its archive (a directory) still holds it; otherwise it and every later segment are kept and the command exits 1. --drop-consumer removes a consumer from the registry (repeatable); \
`walship status` lists them.\n\n\
Example:\n  walship checkpoint ./data --lsn 0/2A000000 --max-retained 1GiB\n  \
walship checkpoint ./data --drop-consumer 6f1c2e1a-3b0d-4e8e-9a57-2d2b4c1e0f11"
)]
pub struct CheckpointArgs {
    pub data_dir: PathBuf,
    /// WAL below this LSN is no longer needed by the application (HI/LO hex or decimal).
    #[arg(long)]
    pub lsn: Option<Lsn>,
    /// The most removable WAL one consumer may hold back before it is marked lost (bytes or
    /// KiB/MiB/GiB).
    #[arg(long, value_parser = parse_size)]
    pub max_retained: Option<u64>,
    /// The most released segment files kept for the writer to reuse as new segments (their
    /// blocks already written, so later syncs write less); the rest are removed. 0: remove all.
    #[arg(long, value_name = "N", default_value_t = walship::recycling::DEFAULT_MAX_RECYCLED)]
    pub max_recycled: usize,
    /// Drop this consumer first (its id as `walship status` shows it); repeatable.
    #[arg(long = "drop-consumer", value_name = "ID")]
    pub drop: Vec<String>,
    /// Print one JSON summary object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CheckpointArgs) -> CmdResult {
    let dir = DataDir::new(&a.data_dir);
    let control = dir.read_control()?;
    // Refused before anything changes, consumers dropped included.
    if let Some(lsn) = a.lsn.filter(|l| l.0 > 0) {
        let (end, _) = wal_ends(&dir, &control)?;
        if lsn > end {
            return Err(Failure::Error(format!(
                "checkpoint {lsn} is past the end of the WAL, {end}: a checkpoint must name a position the log has reached (it never moves back); nothing changed"
            )));
        }
    }
    let mut dropped = Vec::new();
    for id in &a.drop {
        if !drop_consumer(&dir, id)? {
            return Err(Failure::Error(format!(
                "no consumer {id:?} is registered in {}",
                a.data_dir.display()
            )));
        }
        dropped.push(id.clone());
    }
    let opts = RetentionOptions {
        max_retained: a.max_retained,
        max_recycled: a.max_recycled,
    };
    let r = checkpoint(&dir, a.lsn.unwrap_or(Lsn(0)), &opts)?;
    if a.json {
        let mut v = serde_json::to_value(&r).map_err(|e| Failure::Error(e.to_string()))?;
        v["dropped"] = serde_json::json!(dropped);
        println!("{v}");
    } else {
        for id in &dropped {
            println!("dropped consumer {id}");
        }
        for id in &r.marked_lost {
            println!("LOST: consumer {id} held more than the cap and no longer holds WAL");
        }
        let trimmed = match r.pool_removed.len() {
            0 => String::new(),
            n => format!(", {n} files kept for reuse earlier removed"),
        };
        println!(
            "checkpoint {}: removed {} segments ({} bytes, {} of them kept for reuse{trimmed}); {} sealed segments ({} bytes) kept, held by {}",
            r.checkpoint_lsn,
            r.removed.len(),
            r.removed_bytes,
            r.recycled.len(),
            r.retained_segments,
            r.retained_bytes,
            if r.held_by.is_empty() {
                "nothing".to_string()
            } else {
                r.held_by.join(", ")
            }
        );
    }
    if !r.missing_from_archive.is_empty() {
        return Err(Failure::Damage(format!(
            "an archive lacks what the archiver recorded as archived, so that segment and every later one were kept: {}; run `walship archive` to push it again",
            r.missing_from_archive.join("; ")
        )));
    }
    Ok(())
}
