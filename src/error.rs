//! The library's typed errors. Each says what went wrong, where, and what to do when that is
//! not obvious.

use std::fmt;
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

    /// A state file (a consumer record, the checkpoint, a standby's positions, a damage entry)
    /// that exists but cannot be read as what it should hold: the same error wherever one is
    /// read, counted as damage (exit code 1); nothing is changed.
    #[error("{path}: not a valid {what}: {reason}")]
    CorruptState {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },

    /// Applying a segment's records failed; the error keeps the kind of its cause (damage
    /// found while applying stays damage).
    #[error("applying {segment} failed: {source}")]
    Applying {
        segment: String,
        #[source]
        source: Box<Error>,
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

    /// A reader went on to a segment that retention released (removed, or kept for reuse)
    /// while it read: not damage, the records are gone from this directory by design.
    #[error("{file}: released by retention while it was being read (the checkpoint, {checkpoint}, is past its end, and no older segment is kept): its records are no longer in this data directory; {}", match .oldest { Some(o) => format!("the oldest segment it holds now is {o}"), None => "it holds no sealed or open segment now".to_string() })]
    Released {
        file: PathBuf,
        checkpoint: Lsn,
        oldest: Option<String>,
    },

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
        match self {
            Error::Applying { source, .. } => source.is_corruption(),
            _ => matches!(
                self,
                Error::Corrupt { .. }
                    | Error::CorruptState { .. }
                    | Error::Refused(_)
                    | Error::NotRegularFile { .. }
            ),
        }
    }

    /// The error for a state file at `path` that is not a valid `what`.
    pub fn corrupt_state(
        path: &std::path::Path,
        what: &'static str,
        e: impl fmt::Display,
    ) -> Error {
        Error::CorruptState {
            path: path.to_path_buf(),
            what,
            reason: e.to_string(),
        }
    }

    /// True for "no space left on device".
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }

    /// True for an I/O error saying a file is not there (a file listed, then removed).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_found_while_applying_stays_damage() {
        let damage = Error::Corrupt {
            file: "wal/000000010000000000000002.wal".into(),
            offset: 96,
            lsn: Lsn(0x2_0060),
            reason: "record checksum mismatch".into(),
        };
        let e = Error::Applying {
            segment: "000000010000000000000002.wal".into(),
            source: Box::new(damage),
        };
        assert!(e.is_corruption(), "exit code 1, as the damage itself");
        assert_eq!(
            e.to_string(),
            "applying 000000010000000000000002.wal failed: wal/000000010000000000000002.wal: offset 96 (LSN 0/00020060): record checksum mismatch"
        );
        let failed_to_run = Error::Applying {
            segment: "000000010000000000000002.wal".into(),
            source: Box::new(Error::io(
                "write applied.json",
                io::Error::other("disk gone"),
            )),
        };
        assert!(!failed_to_run.is_corruption(), "exit code 2, as its cause");
    }

    #[test]
    fn a_corrupt_state_file_is_damage() {
        let e = Error::corrupt_state(std::path::Path::new("state/x.json"), "thing", "eof");
        assert!(e.is_corruption());
        assert_eq!(e.to_string(), "state/x.json: not a valid thing: eof");
    }
}
