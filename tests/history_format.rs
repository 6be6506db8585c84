//! Timeline history files: golden files (fixtures/history/v1/) that the encoder must reproduce
//! byte for byte and the decoder must read back exactly, and property tests: every history
//! round-trips, and every truncation or bit flip of one is an error naming the file.
//!
//! Regenerate (only for a deliberate change, which is a new history format version):
//! `cargo test --test history_format -- --ignored regenerate_history_fixtures`

use std::path::PathBuf;

use proptest::prelude::*;
use uuid::Uuid;
use walship::format::history::{history_file_name, HistoryFile, Switch, MAX_REASON_LEN};
use walship::timeline::History;
use walship::Lsn;

const SYSTEM: u128 = 0x5741_4c53_4849_5000_0000_0000_0000_0001;
/// 2025-11-26T00:00:00Z in microseconds.
const T0: i64 = 1_764_115_200_000_000;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/history/v1")
}

fn golden() -> Vec<HistoryFile> {
    let two = HistoryFile::child_of(
        None,
        Uuid::from_u128(SYSTEM),
        1,
        Lsn(0x0001_0110),
        T0 + 1,
        "promoted",
    )
    .expect("timeline 2");
    let three = HistoryFile::child_of(
        Some(&two),
        Uuid::from_u128(SYSTEM),
        2,
        Lsn(0x0003_0000),
        T0 + 2,
        "",
    )
    .expect("timeline 3");
    vec![two, three]
}

#[test]
#[ignore]
fn regenerate_history_fixtures() {
    std::fs::create_dir_all(dir()).expect("mkdir");
    for h in golden() {
        let bytes = h.encode().expect("encode");
        std::fs::write(dir().join(history_file_name(h.timeline)), bytes).expect("write");
    }
}

#[test]
fn the_golden_history_files_are_reproduced_and_read_back() {
    for h in golden() {
        let name = history_file_name(h.timeline);
        let stored = std::fs::read(dir().join(&name)).expect("fixture");
        assert_eq!(h.encode().expect("encode"), stored, "{name} differs");
        assert_eq!(HistoryFile::decode(&stored, &name).expect("decode"), h);
    }
    // What the files say, written down: timeline 3 left 1 at 0/00010110 and 2 at 0/00030000.
    let name = history_file_name(3);
    let three = HistoryFile::decode(&std::fs::read(dir().join(&name)).expect("fixture"), &name)
        .expect("decode");
    let h = History::of(&three);
    assert_eq!(h.timeline_of(Lsn(0x0001_010F)), 1);
    assert_eq!(h.timeline_of(Lsn(0x0001_0110)), 2);
    assert_eq!(h.timeline_of(Lsn(0x0003_0000)), 3);
    assert_eq!(h.switch_point_after(1), Some(Lsn(0x0001_0110)));
    let stored = std::fs::read(dir().join(history_file_name(2))).expect("fixture");
    assert_eq!(stored.len(), 40 + 32 + 8 + 4);
    assert_eq!(&stored[..8], b"WALSHIPH");
}

fn history() -> impl Strategy<Value = HistoryFile> {
    (
        any::<u128>(),
        prop::collection::vec(
            (1u32..5, 0u64..(1 << 20), any::<i64>(), "[a-z é]{0,40}"),
            1..5,
        ),
        1u32..10,
    )
        .prop_map(|(id, steps, first)| {
            let mut parent = first;
            let mut lsn = 0u64;
            let mut switches = Vec::new();
            for (gap, adv, time_us, reason) in steps {
                lsn += adv;
                switches.push(Switch {
                    parent,
                    child: parent + gap,
                    lsn: Lsn(lsn),
                    time_us,
                    reason: reason.chars().take(MAX_REASON_LEN).collect(),
                });
                parent += gap;
            }
            HistoryFile {
                timeline: parent,
                system_id: Uuid::from_u128(id),
                switches,
            }
        })
}

proptest! {
    #[test]
    fn every_history_round_trips(h in history()) {
        let b = h.encode().expect("encode");
        prop_assert_eq!(HistoryFile::decode(&b, "x.history").expect("decode"), h);
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_file(h in history(), cut in any::<prop::sample::Index>()) {
        let b = h.encode().expect("encode");
        let n = cut.index(b.len());
        let e = HistoryFile::decode(&b[..n], "0000000X.history").expect_err("truncated");
        prop_assert!(e.to_string().starts_with("0000000X.history: "), "{}", e);
        let mut longer = b.clone();
        longer.push(0);
        prop_assert!(HistoryFile::decode(&longer, "f").is_err());
    }

    #[test]
    fn every_bit_flip_is_an_error_naming_the_file(h in history(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut b = h.encode().expect("encode");
        let i = at.index(b.len());
        b[i] ^= 1 << bit;
        let e = HistoryFile::decode(&b, "0000000X.history").expect_err("flipped");
        prop_assert!(e.to_string().starts_with("0000000X.history: "), "{}", e);
    }
}
