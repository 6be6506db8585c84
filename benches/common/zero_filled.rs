//! A scratch file of zero bytes, for the benches that compare with writes over written blocks.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A file of `size` zero bytes (rounded up to 4 KiB) written with 4 KiB writes and synced, so
/// that later syncs overwrite written blocks; the write position is left at 0.
pub fn zero_filled(path: &Path, size: u64) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = [0u8; 4096];
    let mut off = 0;
    while off < size {
        f.write_all_at(&zeros, off)?;
        off += 4096;
    }
    f.sync_all()?;
    Ok(f)
}
