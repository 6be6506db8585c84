//! What an application appends: an entry type, an optional transaction id and a payload.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The kind of an entry. Stored as one byte; 0 is reserved for "nothing written here" and 255
/// for the seal marker, so neither is an entry type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    Insert = 1,
    Update = 2,
    Delete = 3,
    TxBegin = 4,
    TxCommit = 5,
    TxRollback = 6,
    Checkpoint = 7,
    SchemaChange = 8,
    BranchOp = 9,
}

impl EntryType {
    pub const ALL: [EntryType; 9] = [
        EntryType::Insert,
        EntryType::Update,
        EntryType::Delete,
        EntryType::TxBegin,
        EntryType::TxCommit,
        EntryType::TxRollback,
        EntryType::Checkpoint,
        EntryType::SchemaChange,
        EntryType::BranchOp,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<EntryType> {
        EntryType::ALL.get((code as usize).wrapping_sub(1)).copied()
    }

    /// The snake_case name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            EntryType::Insert => "insert",
            EntryType::Update => "update",
            EntryType::Delete => "delete",
            EntryType::TxBegin => "tx_begin",
            EntryType::TxCommit => "tx_commit",
            EntryType::TxRollback => "tx_rollback",
            EntryType::Checkpoint => "checkpoint",
            EntryType::SchemaChange => "schema_change",
            EntryType::BranchOp => "branch_op",
        }
    }
}

impl fmt::Display for EntryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown entry type {0:?}: expected one of insert, update, delete, tx_begin, tx_commit, tx_rollback, checkpoint, schema_change, branch_op")]
pub struct ParseEntryTypeError(pub String);

impl FromStr for EntryType {
    type Err = ParseEntryTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        EntryType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == norm)
            .ok_or_else(|| ParseEntryTypeError(s.to_string()))
    }
}

/// One entry to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub entry_type: EntryType,
    pub tx_id: Option<u64>,
    pub payload: &'a [u8],
}

impl<'a> Entry<'a> {
    pub fn new(entry_type: EntryType, tx_id: Option<u64>, payload: &'a [u8]) -> Self {
        Entry {
            entry_type,
            tx_id,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for t in EntryType::ALL {
            assert_eq!(EntryType::from_code(t.code()), Some(t));
            assert_eq!(t.name().parse::<EntryType>().unwrap(), t);
        }
        assert_eq!(EntryType::from_code(0), None);
        assert_eq!(EntryType::from_code(10), None);
        assert_eq!(EntryType::from_code(255), None);
        assert!("nope".parse::<EntryType>().is_err());
    }
}
