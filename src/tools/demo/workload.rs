//! A small, realistic mixed workload: transactions of inserts, updates and deletes with varied
//! payload sizes, each closed by a commit (or now and then a rollback).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use walship::EntryType;

/// One generated entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenEntry {
    pub entry_type: EntryType,
    pub tx_id: u64,
    pub payload: Vec<u8>,
}

/// Generates transactions deterministically from a seed.
pub struct MixedWorkload {
    rng: StdRng,
    next_tx: u64,
}

impl MixedWorkload {
    pub fn new(seed: u64, first_tx: u64) -> Self {
        MixedWorkload {
            rng: StdRng::seed_from_u64(seed),
            next_tx: first_tx,
        }
    }

    /// Payload sizes skewed like a database's log: mostly small rows, some page-sized images.
    fn payload_len(&mut self) -> usize {
        match self.rng.gen_range(0..100) {
            0..=69 => self.rng.gen_range(30..200),
            70..=94 => self.rng.gen_range(200..1500),
            _ => self.rng.gen_range(4000..8200),
        }
    }

    fn payload(&mut self, kind: &str, tx: u64) -> Vec<u8> {
        let len = self.payload_len();
        let key = self.rng.gen_range(0..100_000u32);
        let mut p = format!("{kind} key={key} tx={tx} ").into_bytes();
        while p.len() < len {
            p.push(b'a' + self.rng.gen_range(0..26u8));
        }
        p.truncate(len);
        p
    }

    /// The next transaction: tx_begin, 1 to 6 changes, then tx_commit (5% tx_rollback).
    pub fn next_transaction(&mut self) -> Vec<GenEntry> {
        let tx = self.next_tx;
        self.next_tx += 1;
        let mut out = vec![GenEntry {
            entry_type: EntryType::TxBegin,
            tx_id: tx,
            payload: Vec::new(),
        }];
        for _ in 0..self.rng.gen_range(1..=6) {
            let (t, name) = match self.rng.gen_range(0..10) {
                0..=4 => (EntryType::Insert, "insert"),
                5..=8 => (EntryType::Update, "update"),
                _ => (EntryType::Delete, "delete"),
            };
            let payload = self.payload(name, tx);
            out.push(GenEntry {
                entry_type: t,
                tx_id: tx,
                payload,
            });
        }
        let end = if self.rng.gen_range(0..20) == 0 {
            EntryType::TxRollback
        } else {
            EntryType::TxCommit
        };
        out.push(GenEntry {
            entry_type: end,
            tx_id: tx,
            payload: Vec::new(),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_are_well_formed_and_deterministic() {
        let mut a = MixedWorkload::new(7, 100);
        let mut b = MixedWorkload::new(7, 100);
        for i in 0..50 {
            let t = a.next_transaction();
            assert_eq!(t, b.next_transaction());
            assert_eq!(t[0].entry_type, EntryType::TxBegin);
            assert!(matches!(
                t.last().map(|e| e.entry_type),
                Some(EntryType::TxCommit | EntryType::TxRollback)
            ));
            assert!(t.iter().all(|e| e.tx_id == 100 + i));
            assert!(t.len() >= 3);
        }
    }
}
