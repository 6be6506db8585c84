//! The prefault thread (`walship-prefault`): faults the prepared segments' pages in writable
//! ahead of the writer, on CPU time nothing else wants.
//!
//! Faulting in a 16 MiB segment takes tens of milliseconds of CPU. Run at normal priority, that
//! CPU was taken from the threads a durable append waits for: on two cores with 16 writers, a
//! group-commit leader that yielded to let appenders catch up lost the core to the prefault for
//! up to a scheduler tick (4 ms), and the finisher's fsyncs of a rotation took up to 10 ms
//! instead of 0.2; every writer waited that long. So this thread runs in Linux's idle
//! scheduling class (`SCHED_IDLE`): any other thread that becomes runnable takes the core from it
//! at once. Where the machine is busy it falls behind, and the writer faults its own pages, as it
//! would without a prefault.
//!
//! The idle class alone does not keep it out of a leader's way: a leader that gathers appenders
//! yields the CPU, and a yield hands the core to any runnable thread, this one too, which then
//! keeps it until the next tick (1-4 ms measured, every writer waiting). So the thread also
//! pauses between steps while a leader gathers (`Inner::prefault_pause`).
//!
//! It works in small steps (`PREFAULT_STEP`), each holding the process's mmap lock for reading
//! only briefly: another thread's `mmap` or `munmap` waits for the step under way, and with it
//! every later reader of that lock (a leader's `msync`). An idle-class thread preempted inside a
//! step on a saturated machine can stretch that wait; short steps make it rare. It never unmaps
//! anything itself: a finished prefault may hold the last reference to a sealed segment's
//! mapping, and an unmap takes that lock for writing, which a thread that can be kept off the
//! CPU must not hold. Finished prefaults go back to the preparer, which drops them
//! ([`Prefaulter::release_finished`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{IoContext, Result};
use crate::segment_file::Prefault;

/// Bytes faulted in per step. Measured (docs/PERFORMANCE.md, "The prefault's priority"): 64 KiB
/// steps, idle class, against 1 MiB steps at normal priority.
pub(super) const PREFAULT_STEP: usize = 64 << 10;

/// How often a paused prefault looks whether it may go on.
const PAUSE_POLL: Duration = Duration::from_micros(50);

/// The prefault thread, as its owner (the preparer) holds it. Dropping it stops the thread
/// (an unfinished prefault is abandoned: the writer faults those pages itself) and joins it.
pub(super) struct Prefaulter {
    work: Option<mpsc::Sender<Prefault>>,
    finished: mpsc::Receiver<Prefault>,
    thread: Option<JoinHandle<()>>,
}

impl Prefaulter {
    /// Starts the thread; it pauses between steps while `pause` is set.
    pub fn start(pause: Arc<AtomicBool>) -> Result<Prefaulter> {
        let (work, work_rx) = mpsc::channel();
        let (finished_tx, finished) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("walship-prefault".into())
            .spawn(move || prefaulter(work_rx, finished_tx, &pause))
            .ctx(|| "start the prefault thread".to_string())?;
        Ok(Prefaulter {
            work: Some(work),
            finished,
            thread: Some(thread),
        })
    }

    /// Queues a prefault behind the unfinished ones (oldest first: the writer reaches its
    /// segment first).
    pub fn queue(&self, prefault: Prefault) {
        if let Some(work) = &self.work {
            // Fails only once the thread is gone; then nobody prefaults and the writer faults
            // its own pages.
            let _ = work.send(prefault);
        }
    }

    /// Drops the prefaults the thread has finished, here rather than in the idle thread (see the
    /// module comment).
    pub fn release_finished(&self) {
        while self.finished.try_recv().is_ok() {}
    }
}

impl Drop for Prefaulter {
    fn drop(&mut self) {
        self.work.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.release_finished();
    }
}

fn prefaulter(
    work: mpsc::Receiver<Prefault>,
    finished: mpsc::Sender<Prefault>,
    pause: &AtomicBool,
) {
    run_in_idle_class();
    let mut queue: VecDeque<Prefault> = VecDeque::new();
    loop {
        // New work is queued before the next step; with nothing to do, wait for it.
        let next = if queue.is_empty() {
            work.recv().ok()
        } else {
            match work.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        };
        match next {
            Some(p) => queue.push_back(p),
            None if queue.is_empty() => return,
            None => {
                while pause.load(Ordering::Relaxed) {
                    std::thread::sleep(PAUSE_POLL);
                }
                if let Some(p) = queue.front_mut() {
                    if !p.step(PREFAULT_STEP) {
                        if let Some(done) = queue.pop_front() {
                            // The preparer gone means the writer is closing: then it does not
                            // matter which thread unmaps.
                            let _ = finished.send(done);
                        }
                    }
                }
            }
        }
    }
}

/// Puts the calling thread in the idle scheduling class, where it runs only when no other
/// thread wants the core. Best effort: without it the thread runs at normal priority.
fn run_in_idle_class() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain system call on the calling thread (pid 0), with a valid parameter.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "the prefault thread keeps normal priority"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment_file::{PreparedSegment, SegmentFill};
    use std::time::{Duration, Instant};

    fn prepared(dir: &std::path::Path, name: &str, size: u64) -> PreparedSegment {
        PreparedSegment::create(dir.join(name), size, SegmentFill::Reserve).expect("create")
    }

    #[test]
    fn a_prefault_run_in_steps_stops_after_the_last_page() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let steps_needed = 5;
        let size = ((steps_needed - 1) * PREFAULT_STEP + 8192) as u64;
        let mut prefault = prepared(tmp.path(), "s.wal.prep", size).prefault();
        let steps: Vec<bool> = (0..steps_needed + 2)
            .map(|_| prefault.step(PREFAULT_STEP))
            .collect();
        let mut expected = vec![true; steps_needed - 1];
        expected.extend([false, false, false]);
        assert_eq!(steps, expected);
    }

    /// The scheduling policy of the prefault thread.
    fn policy(pf: &Prefaulter) -> libc::c_int {
        use std::os::unix::thread::JoinHandleExt;
        let t = pf.thread.as_ref().expect("running").as_pthread_t();
        let mut policy = -1;
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: the thread is running (not joined), and both out-pointers are valid.
        let r = unsafe { libc::pthread_getschedparam(t, &mut policy, &mut param) };
        assert_eq!(r, 0, "pthread_getschedparam");
        policy
    }

    #[test]
    fn a_prefault_of_a_file_cut_short_under_it_stops_without_a_fault() {
        // A sealed segment is cut to its used length while a lagging prefault may still hold
        // its mapping: the pages past the cut are gone, and faulting them in must fail quietly
        // (no SIGBUS) and end the prefault.
        let tmp = tempfile::tempdir().expect("tempdir");
        let size = 8 * PREFAULT_STEP as u64;
        let seg = prepared(tmp.path(), "0.wal.prep", size);
        let mut prefault = seg.prefault();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(tmp.path().join("0.wal.prep"))
            .expect("open");
        file.set_len(4096).expect("cut");
        let mut steps = 0;
        while prefault.step(PREFAULT_STEP) {
            steps += 1;
            assert!(steps < 8, "the prefault did not end");
        }
        assert_eq!(steps, 0, "the first step, past the cut, ended it");
    }

    #[test]
    fn no_step_is_taken_while_paused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pause = Arc::new(AtomicBool::new(true));
        let pf = Prefaulter::start(pause.clone()).expect("start");
        let seg = prepared(tmp.path(), "0.wal.prep", 1 << 20);
        pf.queue(seg.prefault());
        // Unpaused, a 1 MiB prefault is done in about a millisecond.
        let waited = pf.finished.recv_timeout(Duration::from_millis(300));
        assert!(waited.is_err(), "a prefault finished while paused");
        pause.store(false, Ordering::Relaxed);
        let back = pf.finished.recv_timeout(Duration::from_secs(60));
        assert!(back.is_ok(), "not finished once the pause ended");
    }

    #[test]
    fn prefaults_run_in_the_idle_class_and_come_back_to_the_owner_to_be_unmapped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pf = Prefaulter::start(Arc::default()).expect("start");
        let segs: Vec<PreparedSegment> = (0..3)
            .map(|i| prepared(tmp.path(), &format!("{i}.wal.prep"), 1 << 20))
            .collect();
        for s in &segs {
            pf.queue(s.prefault());
        }
        // A failure guard only: three 1 MiB prefaults take milliseconds.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut back = Vec::new();
        while back.len() < segs.len() {
            assert!(Instant::now() < deadline, "{} of 3 came back", back.len());
            if let Ok(p) = pf.finished.recv_timeout(Duration::from_millis(50)) {
                back.push(p);
            }
        }
        assert_eq!(policy(&pf), libc::SCHED_IDLE);
        drop(pf);
        // Finished means every page below the writer (here: all) is faulted in.
        for mut p in back {
            assert!(!p.step(PREFAULT_STEP));
        }
    }
}
