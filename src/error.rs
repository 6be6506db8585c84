//! The library's typed errors. Each says what went wrong, where, and what to do when that is
//! not obvious.

use std::io;
use std::path::PathBuf;

use crate::Lsn;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed; `context` says what was being done to which path.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("data directory {path} is locked by another process{}; only one writer may use it at a time", match .pid { Some(p) => format!(" (pid {p})"), None => String::new() })]
    Locked { path: PathBuf, pid: Option<u32> },

    #[error("{path}: not a walship data directory: {reason}")]
    NotADataDir { path: PathBuf, reason: String },

    #[error("{path}: already a walship data directory (it has a control file)")]
    AlreadyInitialized { path: PathBuf },

    /// `init` was given a directory that holds something it would not make; nothing changed.
    #[error("{path}: cannot initialise a data directory here: {reason}; give an absent or empty directory")]
    NotEmpty { path: PathBuf, reason: String },

    /// Damage in stored bytes, located precisely.
    #[error("{file}: offset {offset} (LSN {lsn}): {reason}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        lsn: Lsn,
        reason: String,
    },

    #[error("record payload of {len} bytes is too large: with {segment_size}-byte segments the largest payload is {max} bytes")]
    RecordTooLarge {
        len: usize,
        max: usize,
        segment_size: u64,
    },

    /// A sync failed earlier; nothing written since can be trusted to be durable.
    #[error("the WAL writer stopped after a failed sync ({0}); no later append can be made durable: fix the cause and reopen the data directory")]
    Poisoned(String),

    /// A name walship reads (a segment, an archive object, the control file) holds something
    /// other than a regular file: never opened blocking, never read, never skipped silently.
    #[error("{path}: is a {kind}, not a regular file; walship reads only regular files under this name (move it out of the folder)")]
    NotRegularFile { path: PathBuf, kind: &'static str },

    #[error("{0}")]
    InvalidArgument(String),

    /// An operation was refused because it would conflict with what is already stored (another
    /// system's archive, different content under an existing name); nothing was changed.
    #[error("refused: {0}")]
    Refused(String),

    /// Backup storage refused the request for good (access denied, wrong credentials, no
    /// such bucket); retrying would not help. The message is the store's.
    #[error("{0}")]
    Storage(String),

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the error reports damaged data, or stored data that conflicts with the
    /// operation (exit code 1 in the CLI), rather than a failure to run (exit code 2).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::Refused(_) | Error::NotRegularFile { .. }
        )
    }

    /// True for "no space left on device".
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// Attaches a context line to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
