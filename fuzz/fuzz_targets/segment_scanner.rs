//! A segment of arbitrary bytes behind a valid header: the scanner never panics, every record
//! it yields sits at its own position in increasing order inside the segment, and the damage
//! probe never panics either. (Inputs starting with a header of their own are scanned as given.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use walship::decoder::{later_records, SegmentScanner};
use walship::format::{SegmentHeader, SEGMENT_FORMAT_VERSION};

fuzz_target!(|data: &[u8]| {
    let owned;
    let bytes = if data.starts_with(b"WALSHIPS") {
        data
    } else {
        let h = SegmentHeader {
            format_version: SEGMENT_FORMAT_VERSION,
            timeline: 1,
            segment_size: 64 * 1024,
            segment_no: 3,
            system_id: Default::default(),
            prev_checksum: None,
            created_us: 0,
        };
        owned = [&h.encode()[..], data].concat();
        &owned[..]
    };
    let Ok(mut scan) = SegmentScanner::new(bytes) else {
        return;
    };
    let start = scan.header().start_lsn();
    let size = scan.header().segment_size;
    let mut last = 0;
    for r in scan.by_ref() {
        assert!(r.lsn() > last);
        assert!(r.lsn() >= start && r.end_lsn() <= start + size);
        last = r.lsn();
    }
    let end = scan.finish();
    let header = *scan.header();
    let _ = walship::decoder::judge_open_tail(bytes, &header, end.offset());
    for later in later_records(bytes, &header, end.offset() + 8) {
        assert!(later.durable_offset as usize <= later.offset);
    }
});
