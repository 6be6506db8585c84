//! `init`, `write` and `seal`.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use clap::Args;
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
    after_help = "Each line (without its newline) becomes one record's payload.\n\nExample:\n  seq 1 1000 | walship write ./data --type insert --tx 7 --durable"
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
}

/// Lines per batch at most: bounds memory and keeps acknowledgements flowing on a fast stdin.
const MAX_BATCH_LINES: usize = 8192;

pub fn write(a: WriteArgs) -> CmdResult {
    let wal = Wal::open(&a.data_dir, WalOptions::default())?;
    let stdin = std::io::stdin();
    let mut input = std::io::BufReader::with_capacity(1 << 20, stdin.lock());
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut lines: Vec<Vec<u8>> = Vec::new();
    loop {
        lines.clear();
        // Take every line already buffered: they were written together and commit together.
        loop {
            let mut line = Vec::new();
            let n = input.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            lines.push(line);
            if input.buffer().is_empty() || lines.len() >= MAX_BATCH_LINES {
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
        let appended = wal.append_batch(&entries)?;
        if a.durable {
            if let Some(last) = appended.last() {
                wal.wait_durable(last.end_lsn)?;
            }
        }
        for p in &appended {
            writeln!(out, "{}", p.lsn)?;
        }
        out.flush()?;
    }
    wal.sync()?;
    Ok(())
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
