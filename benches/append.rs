//! Appending through the writer without waiting for durability: encode, both CRCs, the copy into
//! the mapping, and rotation when a segment fills.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use walship::{DataDir, Entry, EntryType, Wal, WalOptions};

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_no_sync");
    for size in [128usize, 4096] {
        let dir = tempfile::tempdir().expect("tempdir");
        DataDir::init(dir.path(), 64 << 20).expect("init");
        let wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
        let payload = vec![1u8; size];
        let entry = Entry::new(EntryType::Insert, None, &payload);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| wal.append(black_box(&entry)).expect("append"))
        });
    }
    g.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
