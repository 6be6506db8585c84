//! Any bytes at any record position: decoding never panics, and whatever decodes re-encodes to
//! the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use walship::format::record::{decode_at, encode_record, encoded_len, Decoded};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let lsn = u64::from_le_bytes(data[8.min(data.len() - 8)..][..8].try_into().unwrap_or([0; 8]));
    if let Ok(Decoded::Record(r)) = decode_at(data, 0, lsn, 1 << 30) {
        let mut again = vec![0u8; encoded_len(r.payload.len())];
        encode_record(
            &mut again,
            r.lsn(),
            r.header.durable_offset,
            r.header.type_code,
            r.header.tx_id,
            r.header.timestamp_us,
            r.payload,
        );
        assert_eq!(&again[..], &data[..again.len()]);
    }
});
