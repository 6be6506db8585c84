//! The timelines part of the handshake, both halves against each other and against a
//! hand-made primary: a standby at or before the switch point follows and learns the files it
//! lacks; one past it is refused by the primary with the switch point and the range; a second
//! promotion of the same timeline is refused before Welcome; and the standby refuses history
//! files that are garbage, cut short, of another system, out of order, or not its own.

use super::tests::{both_with_histories, control, intro, refused_with, rt, told, T};
use super::*;
use crate::format::history::HistoryFile;
use crate::replication::frame::read_frame;

const SWITCH: Lsn = Lsn(0x0003_0000);

fn history(parent: Option<&HistoryFile>, from: u32, at: Lsn, time_us: i64) -> HistoryFile {
    HistoryFile::child_of(parent, Uuid::from_u128(1), from, at, time_us, "promote")
        .expect("history")
}

fn bytes(h: &HistoryFile) -> HistoryBytes {
    (h.timeline, h.encode().expect("encode"))
}

/// A primary on timeline 2, made from timeline 1 at [`SWITCH`].
fn primary_on_2() -> (ControlFile, Histories) {
    let mut c = control(1);
    c.identity.timeline = 2;
    let h = Histories::from_files(
        vec![bytes(&history(None, 1, SWITCH, 10))],
        Uuid::from_u128(1),
    )
    .expect("histories");
    (c, h)
}

fn standby_at(timeline: u32, flushed: Lsn, own: Vec<HistoryBytes>) -> Introduction {
    let mut c = control(1);
    c.identity.timeline = timeline;
    let mut i = intro(Some(c));
    i.flushed_lsn = flushed;
    i.held_lsn = flushed;
    i.next_segment = Some(flushed.0 >> 20);
    i.histories = own;
    i
}

#[test]
fn a_standby_at_or_before_the_switch_follows_and_learns_the_history() {
    let (pc, ph) = primary_on_2();
    for flushed in [Lsn(0x100), SWITCH] {
        let (p, s) = both_with_histories(pc, ph.clone(), standby_at(1, flushed, Vec::new()));
        assert_eq!(p.expect("accepted").timeline, 1);
        let s = s.expect("welcomed");
        assert_eq!(s.timeline, 2);
        assert_eq!(s.new_histories, ph.files);
        assert_eq!(s.path.switch_point_after(1), Some(SWITCH));
    }
    // A fresh standby takes every history file; one on timeline 2 already holds them all.
    let (_, s) = both_with_histories(pc, ph.clone(), intro(None));
    assert_eq!(s.expect("welcomed").new_histories, ph.files);
    let (p, s) = both_with_histories(
        pc,
        ph.clone(),
        standby_at(2, Lsn(9 << 20), ph.files.clone()),
    );
    assert!(p.is_ok());
    assert!(s.expect("welcomed").new_histories.is_empty());
}

#[test]
fn a_standby_past_the_switch_is_refused_naming_the_switch_point_and_the_range() {
    let (pc, ph) = primary_on_2();
    let past = SWITCH + 0x40;
    let (p, s) = both_with_histories(pc, ph, standby_at(1, past, Vec::new()));
    let m = refused_with(&p, ErrorCode::Identity);
    for want in [
        format!("switch point {SWITCH}"),
        format!("[{SWITCH}, {past})"),
        "run walship rewind".to_string(),
    ] {
        assert!(m.contains(&want), "{m} lacks {want}");
    }
    assert_eq!(told(&s, ErrorCode::Identity), m);
}

#[test]
fn a_second_promotion_of_the_same_timeline_is_refused_before_welcome() {
    let (pc, ph) = primary_on_2();
    // The standby's timeline 2 was made by another promotion (another time, another point).
    let other = bytes(&history(None, 1, SWITCH, 11));
    let (p, s) = both_with_histories(pc, ph.clone(), standby_at(2, Lsn(0x100), vec![other]));
    let m = refused_with(&p, ErrorCode::Identity);
    assert!(m.contains("split brain"), "{m}");
    assert!(told(&s, ErrorCode::Identity).contains("split brain"));
    // A standby on timeline 2 without its history file is refused the same way.
    let (p, _) = both_with_histories(pc, ph.clone(), standby_at(2, Lsn(0x100), Vec::new()));
    refused_with(&p, ErrorCode::Identity);
    // A standby on a newer timeline than the primary's.
    let (p, _) = both_with_histories(pc, ph, standby_at(3, Lsn(0x100), Vec::new()));
    assert!(refused_with(&p, ErrorCode::Identity).contains("newer"));
}

/// A hand-made primary: accepts anything, then sends `files` and a Welcome naming
/// `timeline`, and reports what the standby said last.
fn against_primary(
    files: Vec<HistoryBytes>,
    timeline: u32,
    standby: Introduction,
) -> (Result<Welcomed, ReplError>, Option<String>) {
    rt().block_on(async {
        let (mut p, mut s) = tokio::io::duplex(1 << 20);
        let primary_side = async {
            let mut c = control(1);
            c.identity.timeline = timeline;
            // Hello, Challenge, Auth, AuthOk, Identify, with no check of what it says.
            read_frame(&mut p, HANDSHAKE_MAX_FRAME).await.ok()?;
            let challenge = Message::Challenge {
                protocol_version: PROTOCOL_VERSION,
                nonce: [2; 32],
                auth_required: false,
            };
            write_message(&mut p, &challenge).await.ok()?;
            read_frame(&mut p, HANDSHAKE_MAX_FRAME).await.ok()?;
            write_message(&mut p, &Message::AuthOk { proof: None })
                .await
                .ok()?;
            read_frame(&mut p, HANDSHAKE_MAX_FRAME).await.ok()?;
            let h = Histories {
                path: crate::timeline::History {
                    timeline,
                    ancestors: Vec::new(),
                },
                files,
            };
            welcome(&mut p, &c, &h, Lsn(0)).await.ok()?;
            let body = read_frame(&mut p, HANDSHAKE_MAX_FRAME).await.ok()?;
            match codec::decode(&body) {
                Ok(Message::Error { message, .. }) => Some(message.to_string()),
                _ => None,
            }
        };
        let standby_side = async move {
            let r = connect(&mut s, None, T, || standby).await;
            // The primary, waiting for a last word, sees the end instead.
            drop(s);
            r
        };
        let (said, r) = tokio::join!(primary_side, standby_side);
        (r, said)
    })
}

#[test]
fn the_standby_refuses_history_files_that_are_not_a_history() {
    let h2 = history(None, 1, SWITCH, 10);
    let good = bytes(&h2);
    let fresh = || intro(None);
    // Garbage, every truncation, a flipped byte: refused as a protocol error, nothing kept.
    let mut cases: Vec<Vec<u8>> = vec![b"garbage".to_vec(), Vec::new()];
    cases.extend((1..good.1.len()).step_by(7).map(|n| good.1[..n].to_vec()));
    let mut flipped = good.1.clone();
    flipped[20] ^= 1;
    cases.push(flipped);
    for c in cases {
        let (r, said) = against_primary(vec![(2, c)], 2, fresh());
        let m = refused_with(&r, ErrorCode::Protocol);
        assert!(m.starts_with("the primary's history files: "), "{m}");
        assert_eq!(said.as_deref(), Some(m.as_str()));
    }
    // Another system's history.
    let foreign = HistoryFile::child_of(None, Uuid::from_u128(9), 1, SWITCH, 10, "x").unwrap();
    let (r, _) = against_primary(vec![bytes(&foreign)], 2, fresh());
    assert!(refused_with(&r, ErrorCode::Protocol).contains("belongs to system"));
    // Filed under another timeline than its own; out of order; not ending at the Welcome's.
    let h3 = history(Some(&h2), 2, SWITCH + 0x100, 20);
    let (r, _) = against_primary(vec![(3, good.1.clone())], 3, fresh());
    refused_with(&r, ErrorCode::Protocol);
    let (r, _) = against_primary(vec![bytes(&h3), good.clone()], 2, fresh());
    refused_with(&r, ErrorCode::Protocol);
    let (r, _) = against_primary(vec![good.clone()], 3, fresh());
    assert!(refused_with(&r, ErrorCode::Protocol).contains("end at timeline 2"));
    // A timeline 2 that is not the one timeline 3 came from.
    let other2 = bytes(&history(None, 1, SWITCH, 99));
    let (r, _) = against_primary(vec![other2, bytes(&h3)], 3, fresh());
    assert!(refused_with(&r, ErrorCode::Protocol).contains("not the beginning"));
    // Both files good: accepted, both to be stored.
    let (r, _) = against_primary(vec![good.clone(), bytes(&h3)], 3, fresh());
    assert_eq!(r.expect("welcomed").new_histories.len(), 2);
}

#[test]
fn the_standby_refuses_a_history_that_does_not_match_its_own() {
    let h2 = history(None, 1, SWITCH, 10);
    let mine = bytes(&history(None, 1, SWITCH, 11));
    // Same timeline, other history: split brain, even when the primary did not notice.
    let (r, said) = against_primary(vec![bytes(&h2)], 2, standby_at(2, Lsn(0x100), vec![mine]));
    let m = refused_with(&r, ErrorCode::Identity);
    assert!(m.contains("split brain"), "{m}");
    assert_eq!(said.as_deref(), Some(m.as_str()));
    // Past the switch point, even when the primary did not notice.
    let (r, _) = against_primary(vec![bytes(&h2)], 2, standby_at(1, SWITCH + 1, Vec::new()));
    assert!(refused_with(&r, ErrorCode::Identity).contains("run walship rewind"));
    // A primary on timeline 1 that sends no history, to a standby on timeline 2.
    let (r, _) = against_primary(Vec::new(), 1, standby_at(2, Lsn(0x100), vec![bytes(&h2)]));
    assert!(refused_with(&r, ErrorCode::Identity).contains("newer"));
}
