//! `init`, `write` and `seal`.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use clap::Args;
use walship::replication::synchronous::{FollowError, Released, SyncFollower};
use walship::{DataDir, Entry, EntryType, Wal, WalOptions};

use super::{parse_size, CmdResult, Failure};

/// Make a new data directory.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  walship init ./data --segment-size 64MiB")]
pub struct InitArgs {
    /// The directory to create (it may exist if empty of walship files).
    pub data_dir: PathBuf,
    /// Segment size: a power of two from 64KiB to 1GiB, in bytes or with KiB/MiB/GiB.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub segment_size: u64,
}

pub fn init(a: InitArgs) -> CmdResult {
    let c = DataDir::init(&a.data_dir, a.segment_size)?;
    println!(
        "initialized {}: system_id {}, timeline {}, segment size {} bytes",
        a.data_dir.display(),
        c.system_id,
        c.timeline,
        c.segment_size
    );
    Ok(())
}

/// Append one record per line of standard input; print each record's LSN.
#[derive(Args, Debug)]
#[command(
    after_help = "Each line becomes one record's payload: its bytes exactly as given, without the \
newline (\\n) that ends it. Nothing else is changed: a carriage return before the newline (\\r\\n \
line ends) stays in the payload. A last line without a newline is a record too. A line longer \
than the largest payload (the segment size minus 184 bytes) stops the command with exit status \
2 before any byte of it is stored; the lines before it are stored and their LSNs printed. So \
is an append that fails (a full disk): the line it failed on is named, exit status 2.\n\n\
Example:\n  seq 1 1000 | walship write ./data --type insert --tx 7 --durable"
)]
pub struct WriteArgs {
    pub data_dir: PathBuf,
    /// Entry type of every record: insert, update, delete, tx_begin, tx_commit, tx_rollback,
    /// checkpoint, schema_change, branch_op.
    #[arg(long = "type", default_value = "insert")]
    pub entry_type: EntryType,
    /// Transaction id stored in every record.
    #[arg(long)]
    pub tx: Option<u64>,
    /// Print a record's LSN only once it is durable. Lines read together share one sync.
    #[arg(long)]
    pub durable: bool,
    /// With --durable: print a record's LSN only once the synchronous policy that a running
    /// `walship serve --sync` publishes has confirmed it too. Without such a serve running
    /// (or once it ends) it says so and exits with status 2.
    #[arg(long, requires = "durable")]
    pub wait_sync: bool,
    /// Log a warning when a sync takes longer than this (10ms to 60m), once per episode: not
    /// again until a sync is within it.
    #[arg(long, default_value = "1s", value_parser = super::serve::duration_between(std::time::Duration::from_millis(10), std::time::Duration::from_secs(3600)))]
    pub warn_slow_sync: std::time::Duration,
    /// Sealed segments not yet durable that may pile up before appends wait for the disk
    /// (whole segments, at least two).
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = super::parse_size)]
    pub max_unsynced_seal: u64,
}

/// Lines per batch at most: bounds memory and keeps acknowledgements flowing on a fast stdin.
const MAX_BATCH_LINES: usize = 8192;

/// Bytes of lines per batch at most, so that a batch of long lines stays bounded too.
const MAX_BATCH_BYTES: usize = 64 << 20;

/// What reading one line gave.
enum Line {
    /// A whole line, without its newline.
    Done,
    /// End of input, nothing read.
    Eof,
    /// The line is longer than `max` bytes: reading stopped there.
    TooLong,
}

/// Reads one line into `line` (cleared first), without its `\n`, stopping once it would hold
/// more than `max` bytes: memory stays bounded by the largest payload whatever the input.
fn read_line_bounded(
    input: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    line.clear();
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::Done
            });
        }
        let (take, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        input.consume(take + usize::from(found));
        if found {
            return Ok(Line::Done);
        }
    }
}

pub fn write(a: WriteArgs) -> CmdResult {
    let options = WalOptions {
        slow_sync_warning: a.warn_slow_sync,
        max_unsynced_seal_bytes: a.max_unsynced_seal,
        ..WalOptions::default()
    };
    let wal = Wal::open(&a.data_dir, options)?;
    let follower = if a.wait_sync {
        let dd = DataDir::new(&a.data_dir);
        Some(SyncFollower::open(&dd).map_err(sync_failure)?)
    } else {
        None
    };
    let max = wal.max_payload();
    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::with_capacity(1 << 20, stdin.lock());
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut line_no = 0u64;
    let mut too_long = None;
    loop {
        lines.clear();
        let mut batch_bytes = 0;
        // Take every line already buffered: they were written together and commit together.
        loop {
            let mut line = Vec::new();
            match read_line_bounded(&mut input, &mut line, max)? {
                Line::Eof => break,
                Line::TooLong => {
                    too_long = Some(line_no + 1);
                    break;
                }
                Line::Done => {}
            }
            line_no += 1;
            batch_bytes += line.len();
            lines.push(line);
            if input.buffer().is_empty()
                || lines.len() >= MAX_BATCH_LINES
                || batch_bytes >= MAX_BATCH_BYTES
            {
                break;
            }
        }
        if lines.is_empty() {
            break;
        }
        let entries: Vec<Entry<'_>> = lines
            .iter()
            .map(|l| Entry::new(a.entry_type, a.tx, l))
            .collect();
        // Entries appended before a failure are in the log: their positions are printed
        // (once durable, with --durable) before the command fails.
        let (appended, failed) = wal.append_batch_partial(&entries);
        if a.durable {
            if let Some(last) = appended.last() {
                wal.wait_durable(last.end_lsn)?;
                if let Some(f) = &follower {
                    if f.wait_blocking(last.end_lsn).map_err(sync_failure)? == Released::Degraded {
                        tracing::warn!(lsn = %last.end_lsn, "acknowledged while the primary runs degraded: durable here only, not confirmed by the standbys");
                    }
                }
            }
        }
        // The records are stored: a caller that cannot learn their LSNs is told which stream
        // failed, not left to think the log's disk did.
        let told = appended
            .iter()
            .try_for_each(|p| writeln!(out, "{}", p.lsn))
            .and_then(|()| out.flush());
        if let Err(e) = told {
            return Err(Failure::Error(format!(
                "write LSNs to standard output: {e} (every line up to line {} of standard input is stored)",
                line_no - lines.len() as u64 + appended.len() as u64
            )));
        }
        if let Err(e) = failed {
            let n = line_no - lines.len() as u64 + appended.len() as u64 + 1;
            return Err(Failure::Error(format!(
                "line {n} of standard input was not stored: {e}; the lines before it were stored and their LSNs printed"
            )));
        }
        if too_long.is_some() {
            break;
        }
    }
    wal.sync()?;
    if let Some(n) = too_long {
        let before = match n - 1 {
            0 => "no line came before it".to_string(),
            1 => "line 1 before it was".to_string(),
            k => format!("lines 1 to {k} before it were"),
        };
        return Err(Failure::Error(format!(
            "line {n} of standard input is longer than the largest payload, {max} bytes with {}-byte segments; nothing of it was stored ({before})",
            wal.control().segment_size
        )));
    }
    Ok(())
}

/// A wait for synchronous confirmation that cannot go on: exit status 2. The records are
/// durable locally; what was printed before was confirmed.
fn sync_failure(e: FollowError) -> Failure {
    match e {
        FollowError::NotServed(m) => Failure::Error(format!("--wait-sync: {m}")),
        FollowError::Store(e) => Failure::from(e),
    }
}

/// Seal the open segment now (like PostgreSQL's pg_switch_wal).
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  walship seal ./data")]
pub struct SealArgs {
    pub data_dir: PathBuf,
}

pub fn seal(a: SealArgs) -> CmdResult {
    let wal = Wal::open(&a.data_dir, WalOptions::default())?;
    match wal.seal()? {
        Some(name) => println!("sealed {name} at {}", wal.flush_lsn()),
        None => println!("nothing to seal: the open segment holds no records"),
    }
    Ok(())
}

impl From<clap::Error> for Failure {
    fn from(e: clap::Error) -> Self {
        Failure::Error(e.to_string())
    }
}
