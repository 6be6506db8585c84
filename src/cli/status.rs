//! `status`: positions, role, standbys and lag of a data directory.

use clap::Args;
use walship::archive::status::archive_status;
use walship::archive::ArchiveTarget;
use walship::status::status;

use super::{CmdResult, Failure};

/// Show a data directory's role, positions, and its standbys with their lag.
#[derive(Args, Debug)]
#[command(
    after_help = "It only reads files and takes no lock, so it works while a writer, `serve` or `standby` runs. A standby counts as connected when its slot was refreshed in the last 5 seconds.\n\nExample:\n  walship status ./data --json\n  walship status ./data --watch --interval 500ms"
)]
pub struct StatusArgs {
    /// A data directory, or an archive (a directory holding IDENTITY, file:///PATH or
    /// s3://BUCKET/PREFIX).
    pub data_dir: std::path::PathBuf,
    /// Print one JSON object (positions as numbers).
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Keep showing positions, rates and lags, refreshed every --interval: redrawn in place on
    /// a terminal, a block of lines per refresh otherwise. Stop it with Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch refreshes (ms, s, m or h).
    #[arg(long, default_value = "1s", requires = "watch", value_parser = super::serve::duration_between(std::time::Duration::from_millis(50), std::time::Duration::from_secs(3600)))]
    pub interval: std::time::Duration,
    /// With --watch: stop after this many refreshes.
    #[arg(long, requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    #[command(flatten)]
    pub s3: super::target::S3Args,
}

pub fn run(a: StatusArgs) -> CmdResult {
    let target = super::target::parse(&a.data_dir, &a.s3)?;
    let is_archive = match &target {
        ArchiveTarget::S3(_) => true,
        ArchiveTarget::Dir(p) => walship::archive::is_archive(p),
    };
    if is_archive {
        if a.watch {
            return Err(Failure::Error(format!(
                "--watch shows a data directory; {} is an archive",
                a.data_dir.display()
            )));
        }
        return archive(&a, &target);
    }
    if a.watch {
        return super::status_watch::watch(&a.data_dir, a.interval, a.count);
    }
    let s = status(&a.data_dir)?;
    if a.json {
        let line = serde_json::to_string(&s).map_err(|e| Failure::Error(e.to_string()))?;
        println!("{line}");
        return Ok(());
    }
    let role = match s.role {
        walship::status::Role::Primary => "primary",
        walship::status::Role::Standby => "standby",
    };
    println!("role: {role}");
    println!("system_id: {}", s.system_id);
    println!("timeline: {}", s.timeline);
    for t in &s.timeline_parents {
        println!("timeline_parent: {} left at {}", t.timeline, t.switch_lsn);
    }
    println!("segment_size: {}", s.segment_size);
    println!("flush_lsn: {}", s.flush_lsn);
    println!("sealed_lsn: {}", s.sealed_lsn);
    if let Some(id) = &s.standby_id {
        println!("standby_id: {id}");
    }
    if let Some(n) = &s.standby_name {
        println!("standby_name: {n}");
    }
    if let Some(p) = &s.primary {
        println!("primary: {p}");
    }
    if let Some(a) = s.applied_lsn {
        println!("applied_lsn: {}", a);
    }
    match &s.sync {
        Some(y) => println!(
            "synchronous: {} {} (timeout {}), confirmed {}{}",
            y.policy,
            y.level,
            y.timeout_ms
                .map_or("none: commits wait".to_string(), |t| format!("{t} ms")),
            y.confirmed_lsn,
            if y.degraded {
                format!(
                    ", DEGRADED: commits continue without the standbys (released up to {})",
                    y.released_lsn
                )
            } else {
                String::new()
            }
        ),
        None if s.role == walship::status::Role::Primary => {
            println!("synchronous: off (no `serve --sync` running)")
        }
        None => {}
    }
    println!("standbys: {}", s.standbys.len());
    for sb in &s.standbys {
        println!(
            "  {} ({}) address {} {} {} written {} flushed {} applied {} (as of {}); behind by {} bytes, {} flushed; {} bytes, {} applied; last contact {}{}",
            sb.name.as_deref().unwrap_or("-"),
            sb.id,
            sb.address.as_deref().unwrap_or("-"),
            if sb.connected {
                "connected"
            } else {
                "disconnected"
            },
            sb.sync_state.as_str(),
            sb.written_lsn
                .map_or("-".to_string(), |l| l.to_string()),
            sb.flushed_lsn,
            sb.applied_lsn,
            sb.positions_age_seconds
                .map_or("never".to_string(), |x| format!("{x:.1} s ago")),
            sb.flush_lag_bytes,
            sb.flush_lag_seconds
                .map_or("unknown s".to_string(), |x| format!("{x:.3} s")),
            sb.lag_bytes,
            sb.lag_seconds
                .map_or("unknown s".to_string(), |x| format!("{x:.3} s")),
            sb.last_contact.as_deref().unwrap_or("never"),
            if sb.lost { " (lost)" } else { "" }
        );
    }
    if s.damage.is_empty() {
        println!("damage: none known");
    } else {
        println!("damage: {} DAMAGED FILE(S)", s.damage.len());
        for d in &s.damage {
            println!(
                "  {} (first seen {}, last seen {}, {} time(s))",
                d,
                walship::status::format_time(d.first_seen_us),
                walship::status::format_time(d.last_seen_us),
                d.count
            );
        }
    }
    if !s.set_aside.is_empty() {
        println!(
            "set aside (by recovery, promotion or rewind): {} file(s) in setaside/ (see `walship dump` on each; remove once checked)",
            s.set_aside.len()
        );
        for f in &s.set_aside {
            println!("  {f}");
        }
    }
    let r = &s.retention;
    println!(
        "retention: checkpoint {}, {} sealed segments ({} bytes) kept, oldest held by {}",
        r.checkpoint_lsn,
        r.sealed_segments,
        r.sealed_bytes,
        if r.held_by.is_empty() {
            "nothing".to_string()
        } else {
            r.held_by.join(", ")
        }
    );
    for c in &r.consumers {
        println!(
            "  consumer {} ({}) at {}, needs {} bytes{}{}",
            c.id,
            serde_json::to_value(c.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            c.position,
            c.needs_bytes,
            if c.holds_retention {
                ", holds retention"
            } else {
                ""
            },
            if c.lost { " (LOST: holds no WAL)" } else { "" }
        );
    }
    Ok(())
}

/// The status of an archive: whose it is, where it begins and ends, what it holds.
fn archive(a: &StatusArgs, target: &ArchiveTarget) -> CmdResult {
    let store = target.open()?;
    let s = super::runtime()?.block_on(archive_status(&store))?;
    if a.json {
        let line = serde_json::to_string(&s).map_err(|e| Failure::Error(e.to_string()))?;
        println!("{line}");
        return Ok(());
    }
    println!("archive: {}", s.location);
    println!("system_id: {}", s.system_id);
    println!("timeline: {}", s.timeline);
    for t in &s.timeline_parents {
        println!("timeline_parent: {} left at {}", t.timeline, t.switch_lsn);
    }
    println!("segment_size: {}", s.segment_size);
    match s.first_segment {
        Some(f) => println!("first_segment: {f}"),
        None => println!("first_segment: not recorded (layout version 1)"),
    }
    println!("newest: {}", s.newest.as_deref().unwrap_or("none"));
    println!("archived_lsn: {}", s.archived_lsn);
    println!(
        "segments: {} ({} bytes stored), objects: {}",
        s.segments, s.stored_bytes, s.objects
    );
    if s.off_path_segments > 0 {
        println!(
            "off the newest timeline: {} segment(s) of earlier timelines past their switch points",
            s.off_path_segments
        );
    }
    Ok(())
}
