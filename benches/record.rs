//! Record encode, CRC, the segment's running checksum, the record's timestamp, and decode/scan of a segment, in memory (no I/O).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use walship::decoder::{ScanEnd, SegmentScanner};
use walship::format::record::{encode_record, encode_seal, encoded_len, SEAL_LEN};
use walship::format::SealInfo;
use walship::format::{SegmentHeader, SEGMENT_FORMAT_VERSION};
use walship::EntryType;

const SEGMENT: usize = 16 << 20;

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_record");
    for size in [128usize, 4096] {
        let payload = vec![7u8; size];
        let mut dst = vec![0u8; encoded_len(size)];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                encode_record(
                    black_box(&mut dst),
                    walship::Lsn(4096),
                    0,
                    EntryType::Insert.code(),
                    Some(9),
                    1,
                    black_box(&payload),
                )
            })
        });
    }
    g.finish();
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32");
    for size in [128usize, 4096, 1 << 20] {
        let buf = vec![0x5Au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| crc32fast::hash(black_box(&buf)))
        });
    }
    g.finish();
}

/// Bringing the segment's running checksum past a record already CRC-checked: a second pass
/// over its bytes, or folding its CRC in (`walship::format::crc_fold`), for a length seen
/// before (the factor kept) and for a new one.
fn running_checksum(c: &mut Criterion) {
    use walship::format::crc_fold::{combine, shift_past};
    let mut g = c.benchmark_group("running_checksum");
    for size in [1024usize, 2048, 4096] {
        let buf = vec![0x5Au8; size];
        let record_crc = crc32fast::hash(&buf);
        let shift = shift_past(size as u32);
        g.bench_function(format!("hash/{size}B"), |b| {
            b.iter(|| {
                let mut h = crc32fast::Hasher::new_with_initial(black_box(0x1234_5678));
                h.update(black_box(&buf));
                h.finalize()
            })
        });
        g.bench_function(format!("fold/{size}B"), |b| {
            b.iter(|| combine(black_box(0x1234_5678), record_crc, black_box(shift)))
        });
        g.bench_function(format!("fold_new_length/{size}B"), |b| {
            b.iter(|| {
                combine(
                    black_box(0x1234_5678),
                    record_crc,
                    shift_past(black_box(size as u32 - 4)),
                )
            })
        });
    }
    g.finish();
}

/// The record's timestamp (`walship::now_us`, read once per append) beside the same reading
/// through `SystemTime`.
fn timestamp(c: &mut Criterion) {
    let mut g = c.benchmark_group("timestamp");
    g.bench_function("now_us", |b| b.iter(walship::now_us));
    g.bench_function("system_time", |b| {
        b.iter(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64)
        })
    });
    g.finish();
}

/// A segment image full of `size`-byte records, as the writer lays it out: open (records, then
/// zeros to the end of the image), or sealed (records, then the seal marker and nothing after).
fn segment_image(size: usize, sealed: bool) -> (Vec<u8>, u64) {
    let header = SegmentHeader {
        format_version: SEGMENT_FORMAT_VERSION,
        timeline: 1,
        segment_size: SEGMENT as u64,
        segment_no: 0,
        system_id: uuid::Uuid::nil(),
        prev_checksum: None,
        created_us: 0,
    };
    let mut buf = vec![0u8; SEGMENT];
    let hb = header.encode();
    buf[..hb.len()].copy_from_slice(&hb);
    let payload = vec![3u8; size];
    let mut off = hb.len();
    let mut n = 0;
    while off + encoded_len(size) + 64 <= SEGMENT {
        let len = encoded_len(size);
        encode_record(
            &mut buf[off..off + len],
            walship::Lsn(off as u64),
            0,
            1,
            None,
            0,
            &payload,
        );
        off += len;
        n += 1;
    }
    buf.truncate(off + SEAL_LEN);
    if sealed {
        let seal = SealInfo {
            record_count: n,
            last_lsn: Some(walship::Lsn((off - encoded_len(size)) as u64)),
            segment_checksum: crc32fast::hash(&buf[..off]),
        };
        encode_seal(&mut buf[off..], walship::Lsn(off as u64), 0, 0, &seal);
    }
    (buf, n)
}

fn scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan_segment");
    g.sample_size(20);
    for (sealed, kind) in [(false, "open"), (true, "sealed")] {
        for size in [128usize, 4096] {
            let (buf, n) = segment_image(size, sealed);
            g.throughput(Throughput::Bytes(buf.len() as u64));
            g.bench_function(format!("{kind}_{size}B"), |b| {
                b.iter(|| {
                    let mut s = SegmentScanner::new(black_box(&buf)).expect("valid header");
                    let count = s.by_ref().count() as u64;
                    assert_eq!(count, n);
                    assert_eq!(
                        s.end().is_some_and(|e| matches!(e, ScanEnd::Sealed { .. })),
                        sealed
                    );
                    count
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, encode, crc, running_checksum, timestamp, scan);
criterion_main!(benches);
