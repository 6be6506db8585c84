//! The demo's writer process (`walship demo-writer`).

use super::*;

/// The demo's writer: appends generated transactions, each durable at its commit, and prints
/// each commit's end LSN once durable. Runs until killed.
/// With `wait_sync`, each commit is acknowledged only once the policy of the `serve` running
/// for `dir` confirmed it.
pub fn run_writer(dir: &Path, seed: u64, first_tx: u64, wait_sync: bool) -> Result<()> {
    let wal = Wal::open(
        dir,
        WalOptions {
            max_segment_age: Some(Duration::from_secs(1)),
            ..WalOptions::default()
        },
    )?;
    let follower = if wait_sync {
        Some(sync_check::follow_policy(dir)?)
    } else {
        None
    };
    let mut gen = MixedWorkload::new(seed, first_tx);
    let stdout = std::io::stdout();
    let start = Instant::now();
    let mut done = 0u64;
    loop {
        let tx = gen.next_transaction();
        let entries: Vec<Entry<'_>> = tx
            .iter()
            .map(|e| Entry::new(e.entry_type, Some(e.tx_id), &e.payload))
            .collect();
        let appended = wal.append_batch(&entries)?;
        if let Some(last) = appended.last() {
            wal.wait_durable(last.end_lsn)?;
            if let Some(f) = &follower {
                sync_check::wait_confirmed(f, last.end_lsn)?;
            }
            let mut o = stdout.lock();
            writeln!(o, "{}", last.end_lsn.0)
                .and_then(|_| o.flush())
                .ctx(|| "write to stdout".to_string())?;
        }
        done += 1;
        let due = Duration::from_micros(done * 1_000_000 / WRITER_TX_PER_SEC);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}
