//! Fault injection at the I/O boundary, for tests only.
//!
//! With the `failpoints` cargo feature, [`fault!`](crate::fault) is a named failpoint of the
//! `fail` crate: a test configures it (`fail::cfg("segment::msync", "return(EIO)")`) and the
//! next pass through that point fails as if the system call had returned that error. Without
//! the feature (every normal and release build) the macro expands to nothing, so the I/O path
//! costs nothing.
//!
//! The argument of `return(...)` names the error: an errno name (`EIO`, `ENOSPC`, `EROFS`,
//! `EDQUOT`, `ENOENT`, `EPIPE`, `ECONNRESET`, `EOPNOTSUPP`, `ENOSYS`, `EINVAL`) or a raw number;
//! plain `return` means `EIO`.
//!
//! Points, by name:
//!
//! | name | where |
//! | --- | --- |
//! | `segment::msync` | every msync of the open segment: group commit, seal, a new header |
//! | `segment::writeback` | starting early write-back of the open segment's filled part (a hint) |
//! | `segment::prepare` | creating and allocating a segment file (ENOSPC at creation) |
//! | `segment::fallocate` | the `fallocate` call that reserves a segment's blocks (EOPNOTSUPP: a file system without it) |
//! | `wal::seal::truncate`, `wal::seal::fsync`, `wal::seal::rename`, `wal::seal::dir_fsync` | the steps of a seal after its msync |
//! | `wal::group_commit::sync` | (order only) a group-commit leader about to sync the segment it noted |
//! | `wal::finisher::sync` | (order only) the finisher about to make a sealed segment durable |
//! | `wal::activate::rename` | giving a prepared file its open-segment name |
//! | `recycle::release` | retention renaming a released segment into the pool of recycled files |
//! | `recycle::header`, `recycle::rename` | the preparer clearing a recycled file's header, then giving it the next prepared name |
//! | `recovery::dir_fsync` | recovery's sync of `wal/` before the writer acknowledges anything |
//! | `standby::write` | a standby writing an incoming segment (a short write: half, then the error) |
//! | `standby::fsync` | every fsync of a standby's incoming segment: a complete one, a batch of the open segment's copy, its zero-fill ahead, a copy taken up again |
//! | `standby::rename` | a standby giving a checked segment its sealed name |
//! | `standby::retitle` | a standby moving its copy of the open segment onto the timeline that continues it (the switch segment) |
//! | `promote::intent`, `promote::history`, `promote::switch_segment`, `promote::setaside`, `promote::control`, `promote::finish` | the steps of a promotion (`src/promote.rs`), each before it is taken |
//! | `archive::put::write` | writing a segment into the archive (a short write) |
//! | `archive::put::link` | giving a pushed segment its final name in the archive |
//! | `archive::dir_fsync` | every fsync of the archive directory (after a push, or for an object found there) |
//! | `restore::staged` | (order only) restore after a segment was checked, staged and fsynced (pass one) |
//! | `restore::placed` | (order only) restore after a staged segment was renamed into the destination's `wal/` (pass two) |

/// The error a configured failpoint injects now, if any.
#[cfg(feature = "failpoints")]
pub fn injected(name: &str) -> Option<std::io::Error> {
    fail::eval(name, |arg| error_from(arg.as_deref()))
}

/// A short write: writes the first half of `data`, then fails with `e` (what a disk that
/// fills up mid-write does). Returns `e` for the caller to report.
#[cfg(feature = "failpoints")]
pub fn short_write(f: &mut impl std::io::Write, data: &[u8], e: std::io::Error) -> std::io::Error {
    let _ = f.write_all(&data[..data.len() / 2]).and_then(|_| f.flush());
    e
}

/// Passes a point where a test may hold this thread (a callback or `pause`), to force one
/// order of two threads; a `return` configured here does nothing.
#[cfg(feature = "failpoints")]
pub fn pass(name: &str) {
    let _ = fail::eval(name, |_| ());
}

/// Parses the argument of a `return(...)` action into an OS error.
#[cfg(feature = "failpoints")]
fn error_from(arg: Option<&str>) -> std::io::Error {
    let code = match arg.map(str::trim).unwrap_or("") {
        "" | "EIO" => libc::EIO,
        "ENOSPC" => libc::ENOSPC,
        "EROFS" => libc::EROFS,
        "EDQUOT" => libc::EDQUOT,
        "ENOENT" => libc::ENOENT,
        "EPIPE" => libc::EPIPE,
        "ECONNRESET" => libc::ECONNRESET,
        "EOPNOTSUPP" | "ENOTSUP" => libc::EOPNOTSUPP,
        "ENOSYS" => libc::ENOSYS,
        "EINVAL" => libc::EINVAL,
        other => other.parse().unwrap_or(libc::EIO),
    };
    std::io::Error::from_raw_os_error(code)
}

/// A failpoint: `fault!("name", e => error_expr)` returns `Err(error_expr)` from the enclosing
/// function (with `e`, the injected `std::io::Error`, in scope) when the test configured the
/// point; `fault!("name")` returns `Err(e)` itself, for functions returning `io::Result`.
/// Compiles to nothing without the `failpoints` feature.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! fault {
    ($name:expr) => {
        if let Some(e) = $crate::faults::injected($name) {
            return Err(e);
        }
    };
    ($name:expr, $e:ident => $err:expr) => {
        if let Some($e) = $crate::faults::injected($name) {
            return Err($err);
        }
    };
}

/// A point where a test may hold the thread to force an order between threads (see
/// [`pass`]). Compiles to nothing without the `failpoints` feature.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! sync_point {
    ($name:expr) => {
        $crate::faults::pass($name)
    };
}

/// Without the `failpoints` feature a sync point is nothing at all.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! sync_point {
    ($($t:tt)*) => {};
}

/// Without the `failpoints` feature a failpoint is nothing at all.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! fault {
    ($($t:tt)*) => {};
}
