//! Fills a data directory with a mixed workload for measuring archive push throughput and the
//! zstd ratio: replays the record types and sizes of a TSV trace (columns `type`, `tx_id`,
//! `len`, as in a pg_waldump-derived trace) read from stdin, with payloads synthesized to look
//! like database WAL: 8 KiB page images of fixed-width rows (an integer key, a balance, a
//! blank-padded filler) and small row and commit records with varying ids.
//!
//! ```text
//! walship init /tmp/wl --segment-size 16MiB
//! zcat pgbench-wal.tsv.gz | cargo run --release --example archive_workload -- /tmp/wl
//! ```

use std::io::BufRead;

use rand::{Rng, SeedableRng};
use walship::{Entry, EntryType, Wal, WalOptions};

fn page_image(rng: &mut impl Rng, len: usize, key: &mut u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    // Page header with an LSN and checksum-like bytes.
    p.extend_from_slice(&rng.gen::<u64>().to_le_bytes());
    p.extend_from_slice(&[0x1c, 0x02, 0x00, 0x00]);
    p.extend_from_slice(&rng.gen::<u32>().to_le_bytes());
    // Line pointers.
    for i in 0..60u16 {
        p.extend_from_slice(&(8192 - 121 * (i + 1)).to_le_bytes());
        p.extend_from_slice(&[0x79, 0x80]);
    }
    // Rows: tuple header (transaction ids), key, branch, balance, 84 blanks.
    while p.len() < len {
        p.extend_from_slice(&rng.gen_range(70_000u32..80_000).to_le_bytes());
        p.extend_from_slice(&[0u8; 4]);
        p.extend_from_slice(&[0u8; 15]);
        *key += 1;
        p.extend_from_slice(&key.to_le_bytes());
        p.extend_from_slice(&(*key / 100_000 + 1).to_le_bytes());
        p.extend_from_slice(&rng.gen_range(-5000i32..5000).to_le_bytes());
        p.extend_from_slice(&[b' '; 84]);
    }
    p.truncate(len);
    p
}

fn small_record(rng: &mut impl Rng, len: usize, tx: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    while p.len() < len {
        p.extend_from_slice(&tx.to_le_bytes());
        p.extend_from_slice(&rng.gen_range(0u32..2000).to_le_bytes());
        p.extend_from_slice(&rng.gen::<u32>().to_le_bytes());
        p.extend_from_slice(&[0u8, 1, 0, 0]);
    }
    p.truncate(len);
    p
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: archive_workload DATA_DIR < trace.tsv")?;
    let wal = Wal::open(&dir, WalOptions::default())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut key = 0u32;
    let (mut n, mut bytes) = (0u64, 0u64);
    for line in std::io::stdin().lock().lines().skip(1) {
        let line = line?;
        let mut f = line.split('\t');
        let (Some(t), Some(tx), Some(len)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let t: EntryType = t.parse()?;
        let tx: u64 = tx.parse()?;
        let len: usize = len.parse()?;
        let payload = if len >= 1024 {
            page_image(&mut rng, len, &mut key)
        } else {
            small_record(&mut rng, len, tx)
        };
        wal.append(&Entry::new(t, (tx != 0).then_some(tx), &payload))?;
        n += 1;
        bytes += len as u64;
    }
    wal.seal()?;
    wal.sync()?;
    println!(
        "{n} records, {bytes} payload bytes, log ends at {}",
        wal.flush_lsn()
    );
    Ok(())
}
