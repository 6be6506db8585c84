//! Arbitrary bytes written over the open segment of a real data directory: opening it either
//! fails with an error or recovers, and a recovered directory reads back cleanly and takes a new
//! record. Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use walship::{DataDir, Entry, EntryType, Lsn, Wal, WalOptions, WalReader};

fuzz_target!(|data: &[u8]| {
    let Ok(t) = tempfile::tempdir() else { return };
    let root = t.path().join("d");
    if DataDir::init(&root, 64 * 1024).is_err() {
        return;
    }
    let opts = WalOptions { prepare_ahead: false, ..WalOptions::default() };
    {
        let Ok(wal) = Wal::open(&root, opts.clone()) else { return };
        for i in 0..4u8 {
            let _ = wal.append(&Entry::new(EntryType::Insert, Some(i as u64), &[i; 20]));
        }
        let _ = wal.sync();
    }
    let open = root.join("wal/000000010000000000000000.wal.open");
    let Ok(mut bytes) = std::fs::read(&open) else { return };
    // The input overwrites bytes from offset 80 (just after the header) onwards.
    let n = data.len().min(bytes.len() - 80);
    bytes[80..80 + n].copy_from_slice(&data[..n]);
    if std::fs::write(&open, &bytes).is_err() {
        return;
    }
    if let Ok(wal) = Wal::open(&root, opts) {
        let end = wal.write_lsn();
        drop(wal);
        let mut r = WalReader::open(&root, Lsn(0)).expect("reader opens");
        let mut last = Lsn(0);
        while let Some(rec) = r.next_record().expect("recovered log reads cleanly") {
            last = rec.end_lsn;
        }
        assert_eq!(last, end);
    }
});
