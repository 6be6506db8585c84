//! `dump`: print records like pg_waldump.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use walship::reader::LogEnd;
use walship::{EntryType, Lsn, WalReader, WalRecord};

use super::{format_time, CmdResult, Failure};

/// Print the records of a data directory, its wal/ folder, an archive or one segment file.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  walship dump ./data --start 0/01000000 --limit 20\n  walship dump ./data --type tx_commit --json\n  walship dump ./data/wal/000000010000000000000003.wal --stats\n  walship dump ./data --follow"
)]
pub struct DumpArgs {
    /// A data directory, its wal/ folder, an archive (a directory), or one segment file.
    pub path: PathBuf,
    /// First LSN to print (records starting at or after it).
    #[arg(long)]
    pub start: Option<Lsn>,
    /// Stop before the first record starting at or after this LSN.
    #[arg(long)]
    pub end: Option<Lsn>,
    /// Only records of this type.
    #[arg(long = "type")]
    pub entry_type: Option<EntryType>,
    /// Only records of this transaction id.
    #[arg(long)]
    pub tx: Option<u64>,
    /// Print at most this many records.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Keep printing records as they are appended (the open segment included) until interrupted.
    #[arg(long, conflicts_with = "stats")]
    pub follow: bool,
    /// Print per-type counts, shares and sizes instead of records.
    #[arg(long)]
    pub stats: bool,
    /// One JSON object per record (or one summary object with --stats).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    lsn: u64,
    end_lsn: u64,
    segment: String,
    offset: u64,
    #[serde(rename = "type")]
    entry_type: &'a str,
    tx_id: Option<u64>,
    len: usize,
    timestamp: String,
    crc: String,
    data_hex: String,
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// A short, safe preview: printable ASCII as text, anything else as hex.
fn preview(b: &[u8]) -> String {
    const MAX: usize = 40;
    let cut = &b[..b.len().min(MAX)];
    let more = if b.len() > MAX { "..." } else { "" };
    if cut.iter().all(|c| (0x20..0x7f).contains(c)) {
        format!("{:?}{more}", String::from_utf8_lossy(cut))
    } else {
        format!("0x{}{more}", hex(cut))
    }
}

fn print_record(out: &mut impl Write, r: &WalRecord, json: bool) -> std::io::Result<()> {
    if json {
        let j = JsonRecord {
            lsn: r.lsn.0,
            end_lsn: r.end_lsn.0,
            segment: r.segment.to_string(),
            offset: r.offset,
            entry_type: r.entry_type.name(),
            tx_id: r.tx_id,
            len: r.payload.len(),
            timestamp: format_time(r.timestamp_us),
            crc: format!("{:08x}", r.crc),
            data_hex: hex(&r.payload),
        };
        let line = serde_json::to_string(&j).map_err(std::io::Error::other)?;
        writeln!(out, "{line}")
    } else {
        let tx = r.tx_id.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "lsn: {}, end: {}, len: {:>6}, tx: {:>8}, type: {:<13} time: {}, crc: {:08x}, data: {}",
            r.lsn,
            r.end_lsn,
            r.payload.len(),
            tx,
            format!("{},", r.entry_type),
            format_time(r.timestamp_us),
            r.crc,
            preview(&r.payload)
        )
    }
}

/// The history of the data directory at `path` (or whose `wal/` it is), when it is one and
/// its history can be read; dump reads the records all the same when it cannot.
fn directory_history(path: &std::path::Path) -> Option<walship::timeline::History> {
    let root = if path.file_name().is_some_and(|n| n == "wal") {
        path.parent()?
    } else {
        path
    };
    let dd = walship::datadir::DataDir::new(root);
    let control = dd.read_control().ok()?;
    dd.history(&control).ok()
}

/// The line that marks where the log moves onto another timeline (a promotion's switch point):
/// text, or a JSON object with `"event": "timeline_switch"` among the records.
fn print_switch(
    out: &mut impl Write,
    from: u32,
    to: u32,
    lsn: Lsn,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let line = serde_json::json!({
            "event": "timeline_switch",
            "from_timeline": from,
            "to_timeline": to,
            "lsn": lsn.0,
        });
        writeln!(out, "{line}")
    } else {
        writeln!(
            out,
            "-- timeline switch at {lsn}: timeline {from} -> {to} --"
        )
    }
}

#[derive(Default)]
struct TypeStats {
    count: u64,
    bytes: u64,
    sizes: Vec<u32>,
}

#[derive(Serialize)]
struct JsonTypeStats {
    #[serde(rename = "type")]
    entry_type: String,
    count: u64,
    share: f64,
    bytes: u64,
    min_len: u32,
    median_len: u32,
    p99_len: u32,
    max_len: u32,
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub fn run(a: DumpArgs) -> CmdResult {
    let mut reader = WalReader::open(&a.path, a.start.unwrap_or(Lsn(0)))?;
    if a.start.is_some() {
        reader.refuse_start_before_oldest()?;
        reader.refuse_damage_before_start()?;
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut stats: BTreeMap<&'static str, TypeStats> = BTreeMap::new();
    // The timeline of the last record printed: a record on another one marks a switch. Along
    // the directory's (or the archive's) history when PATH is one (a switch segment begins
    // with the old timeline's records), else by the segments' names.
    let history = directory_history(&a.path).or_else(|| reader.archive_history().cloned());
    let mut last_timeline: Option<u32> = None;
    let result: Result<(), Failure> = (|| loop {
        if a.limit.is_some_and(|l| printed >= l) {
            return Ok(());
        }
        let r = match reader.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => {
                if a.follow {
                    out.flush()?;
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                return Ok(());
            }
            Err(e) => {
                out.flush()?;
                return Err(e.into());
            }
        };
        if a.end.is_some_and(|e| r.lsn >= e) {
            return Ok(());
        }
        if a.entry_type.is_some_and(|t| t != r.entry_type)
            || a.tx.is_some_and(|t| Some(t) != r.tx_id)
        {
            continue;
        }
        let timeline = history
            .as_ref()
            .map_or(r.segment.timeline, |h| h.timeline_of(r.lsn));
        if let Some(from) = last_timeline.filter(|t| *t != timeline) {
            if !a.stats {
                print_switch(&mut out, from, timeline, r.lsn, a.json)?;
            }
        }
        last_timeline = Some(timeline);
        printed += 1;
        if a.stats {
            let s = stats.entry(r.entry_type.name()).or_default();
            s.count += 1;
            s.bytes += r.end_lsn.0 - r.lsn.0;
            s.sizes.push(r.payload.len() as u32);
        } else {
            print_record(&mut out, &r, a.json)?;
        }
    })();
    if a.stats {
        print_stats(&mut out, &mut stats, printed, a.json)?;
    }
    out.flush()?;
    result?;
    if let LogEnd::TornTail {
        segment,
        offset,
        reason,
    } = reader.log_end()
    {
        eprintln!("walship: note: the log ends in a torn tail in {segment} at offset {offset} ({reason}); this is where the last write was interrupted, not damage");
    }
    Ok(())
}

fn print_stats(
    out: &mut impl Write,
    stats: &mut BTreeMap<&'static str, TypeStats>,
    total: u64,
    json: bool,
) -> std::io::Result<()> {
    let total_bytes: u64 = stats.values().map(|s| s.bytes).sum();
    let mut rows = Vec::new();
    for (name, s) in stats.iter_mut() {
        s.sizes.sort_unstable();
        rows.push(JsonTypeStats {
            entry_type: name.to_string(),
            count: s.count,
            share: if total == 0 {
                0.0
            } else {
                s.count as f64 / total as f64
            },
            bytes: s.bytes,
            min_len: pct(&s.sizes, 0.0),
            median_len: pct(&s.sizes, 0.5),
            p99_len: pct(&s.sizes, 0.99),
            max_len: pct(&s.sizes, 1.0),
        });
    }
    if json {
        let v = serde_json::json!({ "records": total, "bytes": total_bytes, "types": rows });
        writeln!(out, "{v}")
    } else {
        writeln!(
            out,
            "{:<14} {:>10} {:>7} {:>14} {:>8} {:>8} {:>8} {:>8}",
            "type", "count", "share", "bytes", "min", "median", "p99", "max"
        )?;
        for r in &rows {
            writeln!(
                out,
                "{:<14} {:>10} {:>6.2}% {:>14} {:>8} {:>8} {:>8} {:>8}",
                r.entry_type,
                r.count,
                r.share * 100.0,
                r.bytes,
                r.min_len,
                r.median_len,
                r.p99_len,
                r.max_len
            )?;
        }
        writeln!(
            out,
            "{:<14} {:>10} {:>6.2}% {:>14}",
            "total",
            total,
            if total == 0 { 0.0 } else { 100.0 },
            total_bytes
        )
    }
}
