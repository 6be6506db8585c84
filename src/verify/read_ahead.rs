//! Reading the segments to check one file ahead of the check, on a second thread.
//!
//! Reading and hashing a segment and decoding its records take about the same time for small
//! records; done one after the other they add up. Here a reader thread reads (and hashes) the
//! next file while the caller checks the current one, into one of two buffers passed back and
//! forth, so a check costs about the longer of the two. Files larger than
//! [`READ_AHEAD_MAX_BYTES`] are read one at a time, so that a store of very large segments
//! holds one of them in memory, not two.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::Scope;

use crate::decoder::ReadChecksum;
use crate::error::{Error, Result};

/// The largest file read while the previous one is still being checked.
pub const READ_AHEAD_MAX_BYTES: usize = 64 << 20;

/// What a read gave: the checksum it computed (if any) or its error.
pub type ReadResult = Result<Option<ReadChecksum>>;

/// A file's bytes, lent to the caller; they go back to the reader when dropped.
pub struct ReadBuf {
    bytes: Vec<u8>,
    back: SyncSender<Vec<u8>>,
}

impl std::ops::Deref for ReadBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.bytes
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        // The reader may be gone (every file read): the buffer is then simply freed.
        let _ = self.back.send(std::mem::take(&mut self.bytes));
    }
}

/// The files' reads, in order, each at most one file ahead of the caller.
pub struct ReadAhead {
    filled: Receiver<(ReadResult, Vec<u8>)>,
    back: SyncSender<Vec<u8>>,
}

impl ReadAhead {
    /// Starts reading `paths` in order with `read` on a thread of `scope`, named
    /// `walship-verify`.
    pub fn start<'scope, 'env, F>(
        scope: &'scope Scope<'scope, 'env>,
        paths: Vec<PathBuf>,
        read: F,
    ) -> Result<Self>
    where
        F: FnMut(&std::path::Path, &mut Vec<u8>) -> ReadResult + Send + 'scope,
    {
        let (filled_tx, filled) = sync_channel(1);
        let (back, back_rx) = sync_channel(2);
        std::thread::Builder::new()
            .name("walship-verify".into())
            .spawn_scoped(scope, move || {
                read_in_order(paths, read, filled_tx, back_rx)
            })
            .map_err(|e| Error::io("start the thread that reads segments", e))?;
        Ok(ReadAhead { filled, back })
    }

    /// The next file's read and bytes; None once every file has been handed out (or the
    /// reader stopped, which it does only then).
    pub fn next_file(&mut self) -> Option<(ReadResult, ReadBuf)> {
        let (result, bytes) = self.filled.recv().ok()?;
        Some((
            result,
            ReadBuf {
                bytes,
                back: self.back.clone(),
            },
        ))
    }
}

/// The reader thread: reads each file into a free buffer and hands it over. At most two
/// buffers exist; after a file larger than [`READ_AHEAD_MAX_BYTES`], only one.
fn read_in_order(
    paths: Vec<PathBuf>,
    mut read: impl FnMut(&std::path::Path, &mut Vec<u8>) -> ReadResult,
    filled: SyncSender<(ReadResult, Vec<u8>)>,
    back: Receiver<Vec<u8>>,
) {
    let mut buffers = 0;
    let mut one_at_a_time = false;
    for path in paths {
        let mut buf = if buffers < 2 && !one_at_a_time {
            buffers += 1;
            Vec::new()
        } else {
            // A closed channel means the caller stopped early: nothing more to read.
            let Ok(mut buf) = back.recv() else { return };
            while one_at_a_time && buffers > 1 {
                // Wait for the other buffer too and free one of them.
                let Ok(other) = back.recv() else { return };
                buffers -= 1;
                buf = other;
            }
            buf
        };
        let result = read(&path, &mut buf);
        if buf.len() > READ_AHEAD_MAX_BYTES {
            one_at_a_time = true;
        }
        if filled.send((result, buf)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Hands out files of `lens` bytes (file `i` holds `i` in every byte; file 2's read fails)
    /// to a caller that holds each for a while, and returns, per file, whether it was read
    /// while the one before it was still out (handed over or waiting to be).
    fn read_all(lens: &[usize]) -> Vec<bool> {
        let paths: Vec<PathBuf> = (0..lens.len())
            .map(|i| PathBuf::from(i.to_string()))
            .collect();
        let released = AtomicUsize::new(0);
        let ahead: Vec<AtomicBool> = lens.iter().map(|_| AtomicBool::new(false)).collect();
        std::thread::scope(|s| {
            let (released, ahead) = (&released, &ahead);
            let mut files = ReadAhead::start(s, paths, move |p, buf| {
                let i: usize = p.to_string_lossy().parse().unwrap_or(usize::MAX);
                ahead[i].store(released.load(Ordering::SeqCst) < i, Ordering::SeqCst);
                buf.clear();
                buf.resize(lens[i], i as u8);
                if i == 2 {
                    return Err(crate::Error::InvalidArgument(format!(
                        "file {i} unreadable"
                    )));
                }
                Ok(None)
            })
            .expect("the reader starts");
            for (i, len) in lens.iter().enumerate() {
                let (result, bytes) = files.next_file().expect("a file per path");
                // Give the reader time to run ahead as far as it may.
                std::thread::sleep(std::time::Duration::from_millis(20));
                assert_eq!(bytes.len(), *len, "file {i}");
                assert!(
                    bytes.iter().all(|b| *b == i as u8),
                    "file {i} holds its own bytes"
                );
                assert_eq!(result.is_err(), i == 2, "file {i}");
                released.store(i + 1, Ordering::SeqCst);
                drop(bytes);
            }
            assert!(files.next_file().is_none());
        });
        ahead.iter().map(|a| a.load(Ordering::SeqCst)).collect()
    }

    #[test]
    fn files_come_in_order_each_read_while_the_previous_is_checked() {
        let ahead = read_all(&[100, 3, 0, 4096, 7]);
        assert!(ahead[1..].iter().any(|a| *a), "{ahead:?}");
    }

    #[test]
    fn after_a_large_file_the_files_are_read_one_at_a_time() {
        let ahead = read_all(&[READ_AHEAD_MAX_BYTES + 1, 5, 6, 7]);
        assert_eq!(ahead, [false; 4]);
        let ahead = read_all(&[5, READ_AHEAD_MAX_BYTES + 1, 6, 7, 8]);
        assert_eq!(ahead[2..], [false; 3], "{ahead:?}");
    }

    #[test]
    fn a_caller_that_stops_early_stops_the_reader() {
        let reads = AtomicUsize::new(0);
        let paths: Vec<PathBuf> = (0..100).map(|i| PathBuf::from(i.to_string())).collect();
        std::thread::scope(|s| {
            let reads = &reads;
            let mut files = ReadAhead::start(s, paths, move |_, buf| {
                reads.fetch_add(1, Ordering::SeqCst);
                buf.resize(10, 1);
                Ok(None)
            })
            .expect("the reader starts");
            assert!(files.next_file().is_some());
        });
        // The one handed out, the one read ahead, and one more read as the caller went.
        assert!(reads.load(Ordering::SeqCst) <= 3, "{reads:?}");
    }
}
