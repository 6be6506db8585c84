//! The handshake's two halves run against each other, and against hand-made messages, over an
//! in-memory pipe: no server, no socket.

use super::*;
use crate::format::FORMAT_VERSION;
use crate::replication::frame::{read_frame, FrameError};
use tokio::io::{AsyncWriteExt, DuplexStream};

pub(super) const T: Duration = Duration::from_secs(5);

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

pub(super) fn control(system: u128) -> ControlFile {
    ControlFile {
        identity: crate::format::SystemIdentity {
            format_version: FORMAT_VERSION,
            timeline: 1,
            system_id: Uuid::from_u128(system),
            segment_size: 1 << 20,
        },
        created_us: 7,
    }
}

pub(super) fn intro(control: Option<ControlFile>) -> Introduction {
    Introduction {
        standby_id: Uuid::from_u128(0x5744),
        control,
        next_segment: Some(3),
        prev_checksum: Some(0xdead_beef),
        copy_checksum: Some(0x0c0f_fee5),
        flushed_lsn: Lsn(3 << 20),
        held_lsn: Lsn(3 << 20),
        applied_lsn: Lsn(2 << 20),
        max_frame: 1 << 20,
        name: "s1".into(),
        histories: Vec::new(),
    }
}

/// Runs both halves against each other over an in-memory pipe; the primary welcomes the
/// standby when it accepted it.
fn both(
    primary_token: Option<AuthToken>,
    standby_token: Option<AuthToken>,
    primary: ControlFile,
    standby: Introduction,
) -> (Result<Identified, ReplError>, Result<Welcomed, ReplError>) {
    both_with(primary_token.into(), standby_token, primary, standby)
}

fn both_with(
    tokens: Tokens,
    standby_token: Option<AuthToken>,
    primary: ControlFile,
    standby: Introduction,
) -> (Result<Identified, ReplError>, Result<Welcomed, ReplError>) {
    both_full(tokens, standby_token, primary, Histories::first(), standby)
}

/// Both halves, the primary on the timeline path `histories` tells.
pub(super) fn both_with_histories(
    primary: ControlFile,
    histories: Histories,
    standby: Introduction,
) -> (Result<Identified, ReplError>, Result<Welcomed, ReplError>) {
    both_full(Tokens::None, None, primary, histories, standby)
}

fn both_full(
    tokens: Tokens,
    standby_token: Option<AuthToken>,
    primary: ControlFile,
    histories: Histories,
    standby: Introduction,
) -> (Result<Identified, ReplError>, Result<Welcomed, ReplError>) {
    rt().block_on(async {
        let (mut p, mut s) = tokio::io::duplex(64 << 10);
        let primary_side = async {
            let r = accept(&mut p, &tokens, &primary, &histories, T).await;
            if r.is_ok() {
                welcome(&mut p, &primary, &histories, Lsn(9 << 20))
                    .await
                    .unwrap();
            }
            // Closing our end lets a standby waiting for more see the end.
            drop(p);
            r
        };
        let standby_side = connect(&mut s, standby_token.as_ref(), T, || standby);
        tokio::join!(primary_side, standby_side)
    })
}

#[test]
fn a_standby_s_own_token_names_it_and_a_revoked_one_is_refused() {
    let named = |names: &[&str]| {
        Tokens::Named(
            names
                .iter()
                .map(|n| (n.to_string(), AuthToken::new(format!("secret {n}"))))
                .collect(),
        )
    };
    let (p, s) = both_with(
        named(&["a", "b"]),
        Some(AuthToken::new("secret b")),
        control(1),
        intro(Some(control(1))),
    );
    assert_eq!(p.unwrap().token_name.as_deref(), Some("b"));
    s.unwrap();
    // b's token removed from the directory: refused on both sides, saying why.
    let (p, s) = both_with(
        named(&["a"]),
        Some(AuthToken::new("secret b")),
        control(1),
        intro(Some(control(1))),
    );
    let m = refused_with(&p, ErrorCode::Auth);
    assert!(m.contains("revoked"), "{m}");
    assert!(told(&s, ErrorCode::Auth).contains("revoked"));
}

pub(super) fn refused_with(r: &Result<impl std::fmt::Debug, ReplError>, want: ErrorCode) -> String {
    match r {
        Err(ReplError::Refused { code, message }) if *code == want => message.clone(),
        other => panic!("expected a refusal with {want:?}, got {other:?}"),
    }
}

pub(super) fn told(r: &Result<impl std::fmt::Debug, ReplError>, want: ErrorCode) -> String {
    match r {
        Err(ReplError::PeerRefused { code, message, .. }) if *code == want => message.clone(),
        other => panic!("expected the peer's refusal with {want:?}, got {other:?}"),
    }
}

#[test]
fn a_good_handshake_with_a_token_tells_each_side_what_the_other_said() {
    let tok = AuthToken::new("s3cret");
    let (p, s) = both(
        Some(tok.clone()),
        Some(tok),
        control(1),
        intro(Some(control(1))),
    );
    let p = p.unwrap();
    assert_eq!(
        p,
        Identified {
            version: PROTOCOL_VERSION,
            timeline: 1,
            id: Uuid::from_u128(0x5744).to_string(),
            token_name: None,
            next_segment: Some(3),
            prev_checksum: Some(0xdead_beef),
            copy_checksum: Some(0x0c0f_fee5),
            max_frame: 1 << 20,
            flushed_lsn: Lsn(3 << 20),
            applied_lsn: Lsn(2 << 20),
            name: "s1".into(),
        }
    );
    let s = s.unwrap();
    assert_eq!(s.version, PROTOCOL_VERSION);
    assert_eq!(s.sent, intro(Some(control(1))));
    assert_eq!(
        (s.system_id, s.timeline, s.segment_size, s.sealed_lsn),
        (Uuid::from_u128(1), 1, 1 << 20, crate::Lsn(9 << 20))
    );
}

#[test]
fn a_standby_with_an_invalid_name_is_refused_with_the_reason() {
    let mut bad = intro(Some(control(1)));
    bad.name = "two words".into();
    let (p, s) = both(None, None, control(1), bad);
    match p {
        Err(ReplError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::Protocol);
            assert!(
                message.contains("invalid standby name") && message.contains("at byte 3"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    match s {
        Err(ReplError::PeerRefused { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Protocol);
            assert!(message.contains("invalid standby name"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fresh_standby_without_a_token_learns_the_primarys_identity() {
    let (p, s) = both(None, None, control(1), intro(None));
    assert_eq!(p.unwrap().next_segment, Some(3));
    let s = s.unwrap();
    assert_eq!(s.sent.control, None);
    assert_eq!(s.system_id, Uuid::from_u128(1));
}

#[test]
fn a_wrong_token_is_refused_and_the_standby_is_told() {
    let (p, s) = both(
        Some(AuthToken::new("right")),
        Some(AuthToken::new("wrong")),
        control(1),
        intro(Some(control(1))),
    );
    assert_eq!(
        refused_with(&p, ErrorCode::Auth),
        "authentication failed: wrong token"
    );
    assert_eq!(
        told(&s, ErrorCode::Auth),
        "authentication failed: wrong token"
    );
    assert!(s.unwrap_err().is_fatal());
}

#[test]
fn a_missing_token_on_either_side_is_refused() {
    let (p, s) = both(
        Some(AuthToken::new("t")),
        None,
        control(1),
        intro(Some(control(1))),
    );
    assert!(refused_with(&p, ErrorCode::Auth).starts_with("authentication required"));
    told(&s, ErrorCode::Auth);
    // A standby with a token refuses a primary that cannot prove it knows it.
    let (p, s) = both(
        None,
        Some(AuthToken::new("t")),
        control(1),
        intro(Some(control(1))),
    );
    assert!(refused_with(&s, ErrorCode::Auth).starts_with("the primary does not authenticate"));
    // The primary, waiting for Auth, hears the standby's refusal in its place.
    assert!(refused_with(&p, ErrorCode::Auth)
        .starts_with("the standby ended the connection: the primary does not authenticate"));
}

#[test]
fn another_system_is_refused_by_both_halves() {
    let (p, s) = both(None, None, control(1), intro(Some(control(2))));
    let m = refused_with(&p, ErrorCode::Identity);
    assert!(m.starts_with("the standby belongs to system"), "{m}");
    told(&s, ErrorCode::Identity);
    // Another timeline.
    let mut other = control(1);
    other.identity.timeline = 2;
    let (p, _) = both(None, None, control(1), intro(Some(other)));
    assert!(refused_with(&p, ErrorCode::Identity).contains("timeline 2"));
}

/// A primary that names another system in its Welcome (the standby checks it too).
#[test]
fn a_welcome_of_another_system_is_refused_by_the_standby() {
    rt().block_on(async {
        let (mut p, mut s) = tokio::io::duplex(64 << 10);
        let primary_side = async {
            // Accepts a standby that says nothing of its system, then names system 2.
            let r = accept(&mut p, &Tokens::None, &control(1), &Histories::first(), T).await;
            welcome(&mut p, &control(2), &Histories::first(), Lsn(0))
                .await
                .unwrap();
            let body = read_frame(&mut p, HANDSHAKE_MAX_FRAME).await.unwrap();
            (r, codec::decode(&body).unwrap().name())
        };
        let standby_side = async {
            let r = connect(&mut s, None, T, || intro(Some(control(1)))).await;
            r.map(|_| ())
        };
        let ((p, said), s) = tokio::join!(primary_side, standby_side);
        assert!(p.is_ok());
        assert_eq!(said, "Error");
        assert!(refused_with(&s, ErrorCode::Identity).starts_with("the primary is system"));
    });
}

#[test]
fn an_unknown_protocol_version_or_magic_is_refused() {
    rt().block_on(async {
        for (magic, version, code) in [
            (MAGIC, PROTOCOL_VERSION + 1, ErrorCode::Version),
            (MAGIC, 0, ErrorCode::Version),
            (*b"NOTWALSH", PROTOCOL_VERSION, ErrorCode::Protocol),
        ] {
            let (mut p, mut s) = tokio::io::duplex(64 << 10);
            let hello = Message::Hello {
                magic,
                protocol_version: version,
                nonce: [1; 32],
            };
            write_message(&mut s, &hello).await.unwrap();
            let r = accept(&mut p, &Tokens::None, &control(1), &Histories::first(), T).await;
            refused_with(&r, code);
            // The refusal is sent before the primary gives up.
            let body = read_frame(&mut s, HANDSHAKE_MAX_FRAME).await.unwrap();
            assert!(
                matches!(codec::decode(&body).unwrap(), Message::Error { code: c, .. } if c == code)
            );
        }
    });
}

#[test]
fn a_standby_refuses_a_primary_of_another_version() {
    rt().block_on(async {
        let (mut p, mut s) = tokio::io::duplex(64 << 10);
        let primary_side = async {
            read_frame(&mut p, HANDSHAKE_MAX_FRAME).await.unwrap();
            let challenge = Message::Challenge {
                protocol_version: PROTOCOL_VERSION + 1,
                nonce: [2; 32],
                auth_required: false,
            };
            write_message(&mut p, &challenge).await.unwrap();
            let body = read_frame(&mut p, HANDSHAKE_MAX_FRAME).await.unwrap();
            codec::decode(&body).unwrap().name()
        };
        let standby_side = connect(&mut s, None, T, || intro(None));
        let (said, r) = tokio::join!(primary_side, standby_side);
        assert_eq!(said, "Error");
        let m = refused_with(&r, ErrorCode::Version);
        assert!(m.contains(&format!("protocol version {}", PROTOCOL_VERSION + 1)));
    });
}

/// A standby of an older version (5, without the copy checksum) is refused with a clear message.
#[test]
fn an_older_standby_is_refused_with_a_clear_message() {
    rt().block_on(async {
        let (mut p, mut s) = tokio::io::duplex(64 << 10);
        let hello = Message::Hello {
            magic: MAGIC,
            protocol_version: MIN_PROTOCOL_VERSION - 1,
            nonce: [1; 32],
        };
        write_message(&mut s, &hello).await.unwrap();
        let r = accept(&mut p, &Tokens::None, &control(1), &Histories::first(), T).await;
        let m = refused_with(&r, ErrorCode::Version);
        assert!(
            m.contains("protocol version 5 is not supported") && m.contains("upgrade the standby"),
            "{m}"
        );
        let body = read_frame(&mut s, HANDSHAKE_MAX_FRAME).await.unwrap();
        assert!(matches!(
            codec::decode(&body).unwrap(),
            Message::Error {
                code: ErrorCode::Version,
                ..
            }
        ));
    });
}

/// Writes a frame header announcing `len` bytes, and as many bytes.
async fn raw_frame(s: &mut DuplexStream, len: usize) {
    s.write_all(&(len as u32).to_le_bytes()).await.unwrap();
    s.write_all(&vec![0u8; len.min(8192)]).await.unwrap();
}

#[test]
fn frames_larger_than_a_handshake_message_are_refused_on_both_sides() {
    rt().block_on(async {
        // The primary, before anything is authenticated.
        let (mut p, mut s) = tokio::io::duplex(64 << 10);
        raw_frame(&mut s, HANDSHAKE_MAX_FRAME + 1).await;
        let r = accept(&mut p, &Tokens::None, &control(1), &Histories::first(), T).await;
        assert!(matches!(
            r,
            Err(ReplError::Frame(FrameError::TooLarge { len, max, .. }))
                if len == HANDSHAKE_MAX_FRAME + 1 && max == HANDSHAKE_MAX_FRAME
        ));
        // The standby, whatever its configured maximum.
        let (mut p, mut s) = tokio::io::duplex(64 << 10);
        let primary_side = async {
            read_frame(&mut p, HANDSHAKE_MAX_FRAME).await.unwrap();
            raw_frame(&mut p, HANDSHAKE_MAX_FRAME + 1).await;
            p
        };
        let standby_side = connect(&mut s, None, T, || intro(None));
        let (_p, r) = tokio::join!(primary_side, standby_side);
        assert!(matches!(
            r,
            Err(ReplError::Frame(FrameError::TooLarge {
                max: HANDSHAKE_MAX_FRAME,
                ..
            }))
        ));
    });
}

#[test]
fn a_standby_frame_limit_below_the_minimum_is_refused() {
    let mut i = intro(None);
    i.max_frame = MIN_FRAME_LIMIT - 1;
    let (p, s) = both(None, None, control(1), i);
    assert!(refused_with(&p, ErrorCode::Protocol).contains("below the minimum"));
    told(&s, ErrorCode::Protocol);
}

#[test]
fn an_unexpected_message_or_garbage_is_a_protocol_error() {
    rt().block_on(async {
        let (mut p, mut s) = tokio::io::duplex(64 << 10);
        write_message(&mut s, &Message::Auth { proof: None })
            .await
            .unwrap();
        let r = accept(&mut p, &Tokens::None, &control(1), &Histories::first(), T).await;
        assert_eq!(
            refused_with(&r, ErrorCode::Protocol),
            "expected Hello, got Auth"
        );
        let (mut p, mut s) = tokio::io::duplex(64 << 10);
        s.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).await.unwrap();
        let r = accept(&mut p, &Tokens::None, &control(1), &Histories::first(), T).await;
        assert!(refused_with(&r, ErrorCode::Protocol).starts_with("malformed message"));
        // A standby that ends the connection is reported with its own code and words.
        let (mut p, mut s) = tokio::io::duplex(64 << 10);
        let bye = Message::Error {
            code: ErrorCode::ShuttingDown,
            message: "bye\nforged",
        };
        write_message(&mut s, &bye).await.unwrap();
        let r = accept(&mut p, &Tokens::None, &control(1), &Histories::first(), T).await;
        assert_eq!(
            refused_with(&r, ErrorCode::ShuttingDown),
            "the standby ended the connection: bye forged"
        );
    });
}

#[test]
fn a_silent_peer_times_out() {
    rt().block_on(async {
        let (mut p, _s) = tokio::io::duplex(64 << 10);
        let r = accept(
            &mut p,
            &Tokens::None,
            &control(1),
            &Histories::first(),
            Duration::from_millis(20),
        )
        .await;
        assert!(matches!(r, Err(ReplError::Timeout(m)) if m.contains("waiting for Hello")));
    });
}
