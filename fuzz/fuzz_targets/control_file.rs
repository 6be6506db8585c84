//! Any bytes as a control file: decoding never panics, and what decodes re-encodes identically.
#![no_main]
use libfuzzer_sys::fuzz_target;
use walship::format::ControlFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = ControlFile::decode(data) {
        assert_eq!(&c.encode()[..], data);
    }
});
