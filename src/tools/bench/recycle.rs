//! The bench's writer in its steady state: segment files recycled as a deployment's would be.
//!
//! A deployment checkpoints: its sealed segments are released and come back as the next
//! segments' files (`walship::recycling`), their blocks already written. Before timing, the
//! pool is filled (untimed: 16 segments are written without syncs, sealed and released by a
//! checkpoint) and timing starts in a recycled file; while walship is
//! timed, a thread checkpoints at the durable position every 100 ms, as an application's
//! checkpoints would, so that sealed segments keep returning to the pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use walship::format::record::encoded_len;
use walship::retention::RetentionOptions;
use walship::{Entry, EntryType, Result, Wal};

/// How often the checkpointing thread releases what is durable.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Fills the pool of recycled files and leaves `wal` appending into a recycled file: the
/// segment open after this returns was prepared from the pool. Nothing here is timed.
pub fn fill_pool(wal: &Wal, segment_size: u64) -> Result<()> {
    let payload = vec![0xC3u8; 4096.min(wal.max_payload())];
    let per_segment = segment_size / encoded_len(payload.len()) as u64;
    // The pool keeps as many files as a checkpoint releases: 16 segments, more than a default
    // run fills between two of its checkpoints.
    let segments = 16;
    let entry = Entry::new(EntryType::Insert, None, &payload);
    for _ in 0..segments * per_segment + 1 {
        wal.append(&entry)?;
    }
    wal.seal()?;
    wal.sync()?;
    wal.checkpoint(wal.flush_lsn(), &RetentionOptions::default())?;
    // The next segment was prepared before the pool was filled: use it up, so that the one
    // after it, prepared from the pool, is where timing starts.
    wal.append_durable(&entry)?;
    wal.seal()?;
    Ok(())
}

/// Checkpoints at `flush_lsn` every 100 ms while walship is timed.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<()>>,
}

impl Checkpointer {
    pub fn start(wal: Arc<Wal>) -> Checkpointer {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    wal.checkpoint(wal.flush_lsn(), &RetentionOptions::default())?;
                }
                Ok(())
            })
        };
        Checkpointer { stop, handle }
    }

    /// Stops the thread; its first error, if any.
    pub fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| walship::Error::Other("the checkpoint thread panicked".into()))?
    }
}

/// Starts checkpointing when the run recycles.
pub fn checkpointing(wal: &Arc<Wal>, recycle: bool) -> Option<Checkpointer> {
    recycle.then(|| Checkpointer::start(wal.clone()))
}

/// Stops checkpointing, if it ran.
pub fn stop(c: Option<Checkpointer>) -> Result<()> {
    c.map_or(Ok(()), Checkpointer::stop)
}
