//! What the calling thread has used: its CPU time and its minor page faults. The bench
//! compares writers by them, and tests count faults to show a page was (or was not) mapped.

use std::time::Duration;

/// CPU time the calling thread has used: on a shared machine, wall time includes time spent
/// waiting for a core, CPU time does not.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall writing into a local timespec.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Minor page faults the calling thread has taken (`getrusage(RUSAGE_THREAD)`).
pub fn thread_faults() -> u64 {
    // SAFETY: plain syscall writing into a zeroed local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return 0;
    }
    ru.ru_minflt as u64
}
