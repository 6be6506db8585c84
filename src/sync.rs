//! Locks that survive a panic in another thread: the one helper for the library and for the
//! tools built on it (the benchmark in the binary).

use std::sync::{Mutex, MutexGuard};

/// Takes `m` even when a thread panicked while holding it. Every lock in walship guards plain
/// counters, positions and handles, never half-written bytes that are published, so the state
/// stays usable; refusing it would turn one thread's panic into every thread's.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
