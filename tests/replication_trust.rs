//! Replication that can be trusted: damage is reported as damage where operators look, a slot
//! means what the protocol says, a lost mark sticks, a directory of the same system can follow
//! its primary, and settings that cannot work are refused at once. Real `walship` processes on
//! loopback TCP, 64 KiB segments.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use walship::replication::codec;
use walship::replication::frame::encode_frame;
use walship::replication::messages::{ErrorCode, Message, MAGIC, PROTOCOL_VERSION};

mod common;
use common::proxy::{Proxy, ProxyMode};
use common::{
    init, ok, p, seal, status, wait_caught_up, wait_until, walship, write_records, Proc, NET, SEG,
    WAIT,
};

fn serve(dir: &Path, extra: &[&str], log: &Path) -> (Proc, String) {
    let mut args = NET.to_vec();
    args.extend_from_slice(extra);
    common::serve(dir, "127.0.0.1:0", &args, log)
}

fn seg_name(no: u64) -> String {
    format!("00000001{no:016X}.wal")
}

/// A primary with `segments` sealed segments of records.
fn primary_with(t: &Path, segments: usize) -> PathBuf {
    let dir = t.join("primary");
    init(&dir);
    for i in 0..segments {
        write_records(&dir, 300, &format!("s{i}"));
        seal(&dir);
    }
    dir
}

/// Offset of the first record's payload area in a sealed segment: inside a record, past the
/// 80-byte header and the record's own header.
fn record_offsets(path: &Path) -> Vec<u64> {
    let out = ok(&["dump", p(path), "--json"]);
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| v["offset"].as_u64())
        .collect()
}

fn flip(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

fn damage(dir: &Path) -> Vec<Value> {
    status(dir)["damage"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Damage found by the shipper

#[test]
fn a_damaged_sealed_segment_is_reported_by_the_primary_as_damage_and_cleared_once_replaced() {
    // Damage at different places: a record's header, a record's payload in the middle, the
    // last record, and the seal marker's checksum.
    for (case, pick) in [(0, "first"), (1, "middle"), (2, "last"), (3, "seal")] {
        let t = tempfile::tempdir().unwrap();
        let dir = primary_with(t.path(), 3);
        let victim = dir.join("wal").join(seg_name(1));
        let good = std::fs::read(&victim).unwrap();
        let offs = record_offsets(&victim);
        let off = match pick {
            "first" => offs[0] + 2,
            "middle" => offs[offs.len() / 2] + 30,
            "last" => offs[offs.len() - 1] + 28,
            _ => good.len() as u64 - 10,
        };
        flip(&victim, off);

        let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
        let sb = t.path().join("standby");
        let mut stb = common::standby(&sb, &addr, &[], &t.path().join("standby.log"));
        wait_until("the damage to be registered", || !damage(&dir).is_empty());
        let d = damage(&dir);
        let e = &d[0];
        assert_eq!(e["component"], "shipper", "case {case}: {e}");
        assert_eq!(e["file"], seg_name(1).as_str());
        let eo = e["offset"].as_u64().unwrap();
        assert!(
            eo <= off && eo >= 80,
            "case {case}: damage at {eo}, flipped {off}"
        );
        assert_eq!(e["lsn"].as_u64().unwrap(), SEG + eo);
        assert!(e["action"].as_str().unwrap().contains("walship verify"));
        // Shown in the text output too, with file, offset and LSN.
        let text = ok(&["status", p(&dir)]);
        assert!(
            text.contains("DAMAGED")
                && text.contains(&seg_name(1))
                && text.contains(&format!("offset {eo}")),
            "{text}"
        );
        // The standby got what came before and never the damaged segment.
        wait_until("segment 0 on the standby", || {
            sb.join("wal").join(seg_name(0)).exists()
        });
        assert!(!sb.join("wal").join(seg_name(1)).exists());
        // The standby keeps its slot, at what it stored, while it waits for the segment.
        wait_until("the standby's slot", || {
            status(&dir)["standbys"]
                .as_array()
                .is_some_and(|a| a.len() == 1 && a[0]["flushed_lsn"].as_u64().unwrap_or(0) > 0)
        });
        // The primary's log calls it damage, not a network event.
        let log = srv.log();
        assert!(
            log.contains("DAMAGE") && log.contains(&seg_name(1)),
            "case {case}: {log}"
        );
        assert!(
            !log.contains("standby connection closed"),
            "damage logged as a network event: {log}"
        );
        // An operator replaces the file with a good copy: the entry is cleared and the standby
        // catches up.
        let tmp = dir.join("wal").join("replacement");
        std::fs::write(&tmp, &good).unwrap();
        std::fs::rename(&tmp, &victim).unwrap();
        wait_caught_up(&dir, &sb);
        wait_until("the damage entry to clear", || damage(&dir).is_empty());
        assert!(stb.running() && srv.running());
        stb.kill();
        srv.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Damage found by a standby

#[test]
fn a_segment_a_standby_refuses_is_reported_by_the_primary_with_its_offset_and_cleared_once_stored()
{
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 2);
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    // Challenge, AuthOk and Welcome come first (under 200 bytes); byte 30000 of the stream is
    // inside segment 0's data.
    let proxy = Proxy::to(
        &addr,
        ProxyMode {
            flip_first_at: Some(30_000),
            ..ProxyMode::default()
        },
    );
    let sb = t.path().join("standby");
    let mut stb = common::standby(&sb, &proxy.addr, &[], &t.path().join("standby.log"));
    wait_until("the standby's report", || {
        let log = srv.log();
        log.contains("DAMAGE") && log.contains("standby")
    });
    let log = srv.log();
    // Byte 30000 of the stream falls in segment 1 (segments of 300 records hold about 19 KB).
    assert!(
        log.contains(&format!("standby found {} damaged at offset", seg_name(1))),
        "{log}"
    );
    assert!(
        log.contains("the standby refused the segment it received"),
        "{log}"
    );
    // The standby retries through the proxy, which corrupts only its first connection: the
    // segment is stored, and the entry cleared.
    wait_caught_up(&dir, &sb);
    wait_until("the standby's entry to clear", || damage(&dir).is_empty());
    let slog = stb.log();
    assert!(slog.contains("invalid at offset"), "{slog}");
    stb.kill();
    srv.kill();
}

#[test]
fn a_standby_report_is_kept_in_the_register_while_the_segment_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 1);
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    // A refusal of a segment that was not sent is a protocol error and records nothing.
    let mut s = handshake(&addr, [8; 16], None, None, 0);
    let _ = read_until_segment_end(&mut s);
    send(
        &mut s,
        &Message::SegmentRejected {
            segment_no: 77,
            offset: 1,
            reason: "made up",
        },
    );
    let mut err = None;
    while let Some(b) = read_frame(&mut s) {
        if let Ok(Message::Error { code, message }) = codec::decode(&b) {
            err = Some((code, message.to_string()));
        }
    }
    let (code, msg) = err.expect("an Error");
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("not sent"), "{msg}");
    assert!(damage(&dir).is_empty());
    let mut s = handshake(&addr, [9; 16], None, None, 0);
    // The primary ships segment 0; this client refuses it at offset 4242.
    let _ = read_until_segment_end(&mut s);
    let body = encode_frame(&Message::SegmentRejected {
        segment_no: 0,
        offset: 4242,
        reason: "record CRC mismatch\nforged line",
    })
    .unwrap();
    s.write_all(&body).unwrap();
    wait_until("the report to be registered", || !damage(&dir).is_empty());
    let d = damage(&dir);
    assert_eq!(d[0]["component"], "standby");
    assert_eq!(d[0]["file"], seg_name(0).as_str());
    assert_eq!(d[0]["offset"], 4242);
    assert_eq!(d[0]["lsn"], 4242);
    let reason = d[0]["reason"].as_str().unwrap();
    assert!(reason.contains("record CRC mismatch") && !reason.contains('\n'));
    assert!(d[0]["reporter"].as_str().unwrap().contains("09090909"));
    srv.kill();
}

// ---------------------------------------------------------------------------------------------
// Slots: created at the first Status, never past what was shipped

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

fn send(s: &mut TcpStream, m: &Message<'_>) {
    s.write_all(&encode_frame(m).unwrap()).unwrap();
}

/// Hello, Auth and Identify as a standby without a token would send them; returns the stream
/// after the primary's Welcome.
fn handshake(
    addr: &str,
    id: [u8; 16],
    next_segment: Option<u64>,
    prev_checksum: Option<u32>,
    flushed_lsn: u64,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    send(
        &mut s,
        &Message::Hello {
            magic: MAGIC,
            protocol_version: PROTOCOL_VERSION,
            nonce: [1; 32],
        },
    );
    let b = read_frame(&mut s).unwrap();
    assert!(matches!(codec::decode(&b), Ok(Message::Challenge { .. })));
    send(&mut s, &Message::Auth { proof: None });
    let b = read_frame(&mut s).unwrap();
    assert!(matches!(codec::decode(&b), Ok(Message::AuthOk { .. })));
    send(
        &mut s,
        &Message::Identify {
            standby_id: id,
            system_id: None,
            timeline: 0,
            segment_size: 0,
            next_segment,
            prev_checksum,
            flushed_lsn: walship::Lsn(flushed_lsn),
            applied_lsn: walship::Lsn(0),
            max_frame: 8 << 20,
            name: "raw",
            history_digest: None,
            copy_checksum: None,
        },
    );
    let b = read_frame(&mut s).unwrap();
    match codec::decode(&b) {
        Ok(Message::Welcome { .. }) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    s
}

/// Reads until one whole segment has arrived; returns its end (file length).
fn read_until_segment_end(s: &mut TcpStream) -> u64 {
    let mut len = None;
    let mut got = 0u64;
    loop {
        let b = read_frame(s).expect("a frame");
        match codec::decode(&b).unwrap() {
            Message::SegmentStart { len: l, .. } => len = Some(l),
            Message::SegmentData { data, .. } => {
                got += data.0.len() as u64;
                if Some(got) == len {
                    return got;
                }
            }
            _ => {}
        }
    }
}

fn slot_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("state").join("consumers"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_handshake_without_a_status_makes_no_slot_and_a_status_past_what_was_shipped_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 2);
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));

    // Identifies, takes a segment, and leaves without a Status: no slot holds WAL for it.
    {
        let mut s = handshake(&addr, [1; 16], None, None, 0);
        let _ = read_until_segment_end(&mut s);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(slot_files(&dir).is_empty(), "{:?}", slot_files(&dir));
    let st = status(&dir);
    assert!(st["retention"]["consumers"].as_array().unwrap().is_empty());

    // A Status at the first segment's end is fine and makes the slot; one claiming more than
    // was shipped (the whole log, then just one byte more) is refused with both positions.
    let seg0_end = {
        let mut s = handshake(&addr, [2; 16], None, None, 0);
        let len = read_until_segment_end(&mut s);
        // The segment's records end where its seal marker starts: the file's end minus it.
        let end = len - 64;
        send(
            &mut s,
            &Message::Status {
                written_lsn: walship::Lsn(end),
                flushed_lsn: walship::Lsn(end),
                applied_lsn: walship::Lsn(0),
                now_us: 0,
            },
        );
        wait_until("the slot", || !slot_files(&dir).is_empty());
        end
    };
    let id2 = "02020202-0202-0202-0202-020202020202";
    let slot = dir.join("state/consumers").join(format!("{id2}.json"));
    wait_until("the slot to settle", || {
        std::fs::read_to_string(&slot)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .is_some_and(|v| v["position"].as_u64() == Some(seg0_end))
    });
    let all = status(&dir)["sealed_lsn"].as_u64().unwrap();
    // (what the client says it holds, whether it takes the next segment first, its claim)
    let cases = [
        (Some(2), all, false, u64::MAX / 2),
        (Some(2), all, false, all + 1),
        (Some(1), seg0_end, false, all + 8),
        (Some(1), seg0_end, true, all + 1),
        (Some(1), seg0_end, true, SEG * 5),
    ];
    for (next, held, take, claim) in cases {
        let before = std::fs::read(&slot).unwrap();
        let mut s = handshake(&addr, [2; 16], next, None, held);
        if take {
            let _ = read_until_segment_end(&mut s);
        }
        send(
            &mut s,
            &Message::Status {
                written_lsn: walship::Lsn(claim),
                flushed_lsn: walship::Lsn(claim),
                applied_lsn: walship::Lsn(0),
                now_us: 0,
            },
        );
        let mut err = None;
        while let Some(b) = read_frame(&mut s) {
            if let Ok(Message::Error { code, message }) = codec::decode(&b) {
                err = Some((code, message.to_string()));
            }
        }
        let (code, msg) = err.unwrap_or_else(|| {
            panic!("no Error before the close for {claim}; log:\n{}", srv.log())
        });
        assert_eq!(code, ErrorCode::Protocol);
        assert!(
            msg.contains(&walship::Lsn(claim).to_string()) && msg.contains("shipped"),
            "{msg}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        let after: Value = serde_json::from_slice(&std::fs::read(&slot).unwrap()).unwrap();
        let before: Value = serde_json::from_slice(&before).unwrap();
        assert_eq!(after["position"], before["position"], "claim {claim}");
    }
    srv.kill();
}

// ---------------------------------------------------------------------------------------------
// Lost marks and unique temporaries

#[test]
fn slot_saves_racing_with_a_lost_mark_never_tear_the_file_nor_clear_the_mark() {
    use walship::consumers::{ConsumerKind, ConsumerRecord, ConsumerRegistry};
    let t = tempfile::tempdir().unwrap();
    let dd = walship::DataDir::new(t.path());
    let reg = ConsumerRegistry::new(&dd);
    let rec = |pos: u64| ConsumerRecord {
        applied_lsn: Some(walship::Lsn(pos)),
        address: Some("127.0.0.1:1".repeat(pos as usize % 50 + 1)),
        last_contact_us: Some(1),
        ..ConsumerRecord::new("s1", ConsumerKind::Standby, walship::Lsn(pos))
    };
    reg.save(&rec(0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut savers = Vec::new();
    for k in 0..3u64 {
        let (reg, stop) = (reg.clone(), stop.clone());
        savers.push(std::thread::spawn(move || {
            let mut i = k;
            while !stop.load(Ordering::Relaxed) {
                reg.save(&rec(i)).unwrap();
                i += 3;
            }
        }));
    }
    let path = t.path().join("state/consumers/s1.json");
    for round in 0..300 {
        // Every read of the file is a whole record.
        let bytes = std::fs::read(&path).unwrap();
        let v: ConsumerRecord = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("torn record in round {round}: {e}"));
        if round == 100 {
            // `walship checkpoint` marks it lost in another process.
            assert!(reg.mark_lost("s1").unwrap().unwrap().lost);
        }
        if round > 100 {
            assert!(reg.get("s1").unwrap().unwrap().lost, "round {round}");
            let _ = v;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in savers {
        s.join().unwrap();
    }
    assert!(reg.get("s1").unwrap().unwrap().lost);
    // No temporary is left behind.
    let left: Vec<_> = std::fs::read_dir(t.path().join("state/consumers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(reg.remove("s1").unwrap());
    reg.save(&rec(7)).unwrap();
    assert!(!reg.get("s1").unwrap().unwrap().lost);
}

#[test]
fn a_lost_standby_is_refused_by_the_shipper_until_dropped() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 2);
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    let sb = t.path().join("standby");
    let mut stb = common::standby(&sb, &addr, &[], &t.path().join("standby.log"));
    wait_caught_up(&dir, &sb);
    stb.kill();
    let id = status(&sb)["standby_id"].as_str().unwrap().to_string();
    // The standby falls behind and the cap marks it lost.
    for i in 0..5 {
        write_records(&dir, 300, &format!("late{i}"));
        seal(&dir);
    }
    let sealed = status(&dir)["sealed_lsn"].as_u64().unwrap();
    let out = walship(&[
        "checkpoint",
        p(&dir),
        "--lsn",
        &sealed.to_string(),
        "--max-retained",
        "64KiB",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slot = dir.join("state/consumers").join(format!("{id}.json"));
    assert!(status(&dir)["standbys"][0]["lost"].as_bool().unwrap());
    // It comes back: refused with a clear message, exit 2; the slot stays lost.
    let mut stb = common::standby(&sb, &addr, &[], &t.path().join("standby2.log"));
    assert_eq!(stb.wait_exit(), 2);
    let log = stb.log();
    assert!(
        log.contains("marked lost") && log.contains("--drop-consumer"),
        "{log}"
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&slot).unwrap()).unwrap();
    assert_eq!(v["lost"], true);
    assert!(status(&dir)["standbys"][0]["lost"].as_bool().unwrap());
    // Dropped: it may try again (the WAL it needs is gone, so it is told so).
    ok(&["checkpoint", p(&dir), "--drop-consumer", &id]);
    let mut stb = common::standby(&sb, &addr, &[], &t.path().join("standby3.log"));
    assert_eq!(stb.wait_exit(), 2);
    assert!(
        stb.log().contains("no longer on the primary"),
        "{}",
        stb.log()
    );
    srv.kill();
}

// ---------------------------------------------------------------------------------------------
// A directory of the same system follows the primary

fn archive_restore(primary: &Path, t: &Path, name: &str, until: Option<u64>) -> PathBuf {
    let arch = t.join("archive");
    ok(&["archive", p(primary), "--to", p(&arch), "--once"]);
    let out = t.join(name);
    let mut args = vec!["restore".to_string(), p(&arch).into(), p(&out).into()];
    if let Some(l) = until {
        args.push("--until-lsn".into());
        args.push(l.to_string());
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    ok(&a);
    out
}

/// Every entry under `dir` with its length and a hash of its bytes (only the presence of LOCK:
/// the lock holder writes its pid there).
fn snapshot(dir: &Path) -> Vec<(String, u64, u64)> {
    use std::hash::{Hash, Hasher};
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, u64, u64)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(base).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.push((rel + "/", 0, 0));
                walk(base, &e.path(), out);
            } else if rel == "LOCK" {
                out.push((rel, 0, 0));
            } else {
                let b = std::fs::read(e.path()).unwrap();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                b.hash(&mut h);
                out.push((rel, b.len() as u64, h.finish()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_restored_directory_becomes_a_standby_and_catches_up() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 3);
    // Restored whole, and restored to the middle of the second segment (its open segment then
    // holds a prefix of the primary's segment 1).
    let whole = archive_restore(&dir, t.path(), "restored", None);
    let offs = record_offsets(&dir.join("wal").join(seg_name(1)));
    let mid = SEG + offs[offs.len() / 2];
    let partial = archive_restore(&dir, t.path(), "restored-mid", Some(mid));
    // And to the middle of the very first segment: no sealed segment at all.
    let offs0 = record_offsets(&dir.join("wal").join(seg_name(0)));
    let first = archive_restore(&dir, t.path(), "restored-first", Some(offs0[10]));
    for i in 0..2 {
        write_records(&dir, 300, &format!("more{i}"));
        seal(&dir);
    }
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    for (k, r) in [whole, partial, first].iter().enumerate() {
        let mut stb = common::standby(r, &addr, &[], &t.path().join(format!("standby{k}.log")));
        wait_caught_up(&dir, r);
        let st = status(r);
        assert_eq!(st["role"], "standby", "{st}");
        assert_eq!(st["primary"], addr.as_str());
        assert!(stb.running());
        stb.kill();
        let out = walship(&["verify", p(r)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // No open segment is left: a standby holds sealed segments only.
        assert!(std::fs::read_dir(r.join("wal")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".open")));
        // And it starts again as a standby.
        let mut stb = common::standby(r, &addr, &[], &t.path().join(format!("standby{k}b.log")));
        wait_until("the restarted standby to stream", || {
            stb.log().contains("streaming from the primary")
        });
        stb.kill();
    }
    srv.kill();
}

#[test]
fn a_former_primary_behind_the_primary_follows_it() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 2);
    // A copy taken while segment 2 was open with some records in it.
    write_records(&dir, 100, "open");
    let former = t.path().join("former");
    replication_support_copy(&dir, &former);
    write_records(&dir, 200, "after");
    seal(&dir);
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    let mut stb = common::standby(&former, &addr, &[], &t.path().join("standby.log"));
    wait_caught_up(&dir, &former);
    assert_eq!(status(&former)["role"], "standby");
    stb.kill();
    // Only sealed segments are left (the former writer's prepared file went too), and it
    // starts again as a standby and follows new WAL.
    assert!(std::fs::read_dir(former.join("wal")).unwrap().all(|e| {
        let n = e.unwrap().file_name().into_string().unwrap();
        n.ends_with(".wal")
    }));
    let mut stb = common::standby(&former, &addr, &[], &t.path().join("standby2.log"));
    write_records(&dir, 200, "later");
    seal(&dir);
    wait_caught_up(&dir, &former);
    stb.kill();
    srv.kill();
}

fn replication_support_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            replication_support_copy(&e.path(), &dst);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

#[test]
fn a_diverged_or_ahead_directory_is_refused_and_left_untouched() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 2);
    let offs = record_offsets(&dir.join("wal").join(seg_name(1)));
    let mid = SEG + offs[offs.len() / 2];
    // Diverged in its open segment: restored to the middle of segment 1, then written to.
    let diverged = archive_restore(&dir, t.path(), "diverged", Some(mid));
    write_records(&diverged, 50, "other-history");
    // Diverged in a sealed segment: its own segment 2, sealed, while the primary's differs.
    let forked = t.path().join("forked");
    replication_support_copy(&dir, &forked);
    write_records(&forked, 300, "fork");
    seal(&forked);
    // Ahead: holds sealed segments the primary has not sealed.
    let ahead = t.path().join("ahead");
    replication_support_copy(&dir, &ahead);
    for i in 0..2 {
        write_records(&ahead, 300, &format!("ahead{i}"));
        seal(&ahead);
    }
    write_records(&dir, 300, "primary-2");
    seal(&dir);
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    for (name, d, want) in [
        ("diverged", &diverged, "diverged"),
        ("forked", &forked, "diverged"),
        ("ahead", &ahead, "ahead"),
    ] {
        let before = snapshot(d);
        let mut stb = common::standby(d, &addr, &[], &t.path().join(format!("{name}.log")));
        assert_eq!(stb.wait_exit(), 2, "{name}: {}", stb.log());
        let log = stb.log();
        assert!(log.contains(want), "{name}: {log}");
        assert_eq!(snapshot(d), before, "{name} was changed");
    }
    srv.kill();
}

/// A standby whose copy of the primary's open segment holds records the primary no longer has
/// (the primary was brought back to an earlier copy of its directory, then written past the
/// copy's end, with the segment still open or sealed since) is refused as diverged by the
/// records, not accepted by the positions, and its directory is left as it was.
#[test]
fn a_standbys_copy_of_records_the_primary_no_longer_has_is_refused_and_left_untouched() {
    for seal_after in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("primary");
        init(&dir);
        write_records(&dir, 20, "kept");
        let earlier = t.path().join("earlier");
        replication_support_copy(&dir, &earlier);
        let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
        let sb = t.path().join("standby");
        let mut stb = common::standby(&sb, &addr, &[], &t.path().join("standby.log"));
        write_records(&dir, 20, "lost");
        common::wait_acknowledged(&dir);
        stb.kill();
        srv.kill();

        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::rename(&earlier, &dir).unwrap();
        write_records(&dir, 60, "other");
        if seal_after {
            seal(&dir);
        }
        let before = snapshot(&sb);
        let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve-again.log"));
        let mut stb = common::standby(&sb, &addr, &[], &t.path().join("standby-again.log"));
        assert_eq!(stb.wait_exit(), 2, "sealed {seal_after}: {}", stb.log());
        let log = stb.log();
        assert!(
            log.contains("histories diverged")
                && log.contains("copy of segment 0 holds other records"),
            "sealed {seal_after}: {log}"
        );
        assert_eq!(
            snapshot(&sb),
            before,
            "sealed {seal_after}: the standby was changed"
        );
        srv.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Settings that cannot work are usage errors

#[test]
fn zero_and_absurd_durations_and_bad_addresses_are_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    let d = p(&dir);
    let sb = t.path().join("sb");
    let s = p(&sb);
    let (arch, demo, bench) = (
        t.path().join("a"),
        t.path().join("demo"),
        t.path().join("bench"),
    );
    let (a, dm, b) = (p(&arch), p(&demo), p(&bench));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "serve",
                d,
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "0s",
            ],
            "--heartbeat-interval",
        ),
        (
            vec![
                "serve",
                d,
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "0ms",
            ],
            "--heartbeat-interval",
        ),
        (
            vec![
                "serve",
                d,
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "99999m",
            ],
            "--heartbeat-interval",
        ),
        (
            vec![
                "serve",
                d,
                "--listen",
                "127.0.0.1:0",
                "--peer-timeout",
                "0s",
            ],
            "--peer-timeout",
        ),
        (
            vec![
                "serve",
                d,
                "--listen",
                "127.0.0.1:0",
                "--peer-timeout",
                "18446744073709551615m",
            ],
            "--peer-timeout",
        ),
        (
            vec![
                "serve",
                d,
                "--listen",
                "127.0.0.1:0",
                "--handshake-timeout",
                "0s",
            ],
            "--handshake-timeout",
        ),
        (
            vec![
                "serve",
                d,
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "5s",
                "--peer-timeout",
                "5s",
            ],
            "--heartbeat-interval",
        ),
        (vec!["serve", d, "--listen", "127.0.0.1"], "port"),
        (vec!["serve", d, "--listen", "127.0.0.1:99999"], "port"),
        (vec!["serve", d, "--listen", ":5433"], "host"),
        (
            vec![
                "standby",
                s,
                "--primary",
                "127.0.0.1:1",
                "--max-backoff",
                "0s",
            ],
            "--max-backoff",
        ),
        (
            vec![
                "standby",
                s,
                "--primary",
                "127.0.0.1:1",
                "--heartbeat-interval",
                "0s",
            ],
            "--heartbeat-interval",
        ),
        (
            vec![
                "standby",
                s,
                "--primary",
                "127.0.0.1:1",
                "--peer-timeout",
                "0ms",
            ],
            "--peer-timeout",
        ),
        (
            vec![
                "standby",
                s,
                "--primary",
                "127.0.0.1:1",
                "--heartbeat-interval",
                "20s",
                "--peer-timeout",
                "10s",
            ],
            "--heartbeat-interval",
        ),
        (vec!["standby", s, "--primary", "127.0.0.1"], "port"),
        (vec!["standby", s, "--primary", "127.0.0.1:99999"], "port"),
        (vec!["standby", s, "--primary", "127.0.0.1:0"], "port"),
        (vec!["standby", s, "--primary", ":5433"], "host"),
        (vec!["standby", s, "--primary", ""], "port"),
        (
            vec!["archive", d, "--to", a, "--rescan-secs", "0"],
            "--rescan-secs",
        ),
        (
            vec!["archive", d, "--to", a, "--rescan-secs", "99999999999"],
            "--rescan-secs",
        ),
        (vec!["demo", "--dir", dm, "--seconds", "0"], "--seconds"),
        (vec!["bench", "--dir", b, "--seconds", "0"], "--seconds"),
        (vec!["bench", "--dir", b, "--seconds", "1e30"], "--seconds"),
    ];
    for (args, flag) in cases {
        let out = walship(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(err.lines().count() <= 4, "{args:?}: {err}");
    }
    assert!(!sb.exists(), "a refused standby created its directory");
    assert!(!t.path().join("a").exists());
}

// ---------------------------------------------------------------------------------------------
// A refused standby changes nothing

#[test]
fn a_standby_refused_by_another_systems_primary_keeps_its_primary_file() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 1);
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    let sb = t.path().join("standby");
    let mut stb = common::standby(&sb, &addr, &[], &t.path().join("standby.log"));
    wait_caught_up(&dir, &sb);
    stb.kill();
    let meta_before = std::fs::read(sb.join("state/standby.json")).unwrap();
    // Another system's primary at another address.
    let other = t.path().join("other");
    init(&other);
    write_records(&other, 10, "x");
    seal(&other);
    let (mut srv2, addr2) = serve(&other, &[], &t.path().join("serve2.log"));
    let mut stb = common::standby(&sb, &addr2, &[], &t.path().join("standby2.log"));
    assert_eq!(stb.wait_exit(), 2);
    assert!(stb.log().contains("system"), "{}", stb.log());
    assert_eq!(
        std::fs::read(sb.join("state/standby.json")).unwrap(),
        meta_before
    );
    assert_eq!(status(&sb)["primary"], addr.as_str());
    srv2.kill();
    srv.kill();
}

#[test]
fn a_standby_that_fails_to_authenticate_leaves_nothing_behind() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 1);
    let tok = |name: &str, secret: &str| {
        let path = t.path().join(name);
        std::fs::write(&path, secret).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let good = tok("good", "the right token");
    let bad = tok("bad", "a wrong token");
    let (mut srv, addr) = serve(
        &dir,
        &["--auth-token-file", p(&good)],
        &t.path().join("serve.log"),
    );
    // An absent directory, an empty one, and one nested in absent parents.
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (d, existed) in [
        (t.path().join("absent"), false),
        (empty.clone(), true),
        (t.path().join("x/y/z"), false),
    ] {
        for token in [Some(&bad), None] {
            let mut args = vec!["standby", p(&d), "--primary", &addr];
            if let Some(tk) = token {
                args.extend_from_slice(&["--auth-token-file", p(tk)]);
            }
            let out = walship(&args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stderr).contains("authentication"));
            if existed {
                assert_eq!(
                    std::fs::read_dir(&d).unwrap().count(),
                    0,
                    "{} not left empty",
                    d.display()
                );
            } else {
                assert!(!d.exists(), "{} was left behind", d.display());
                assert!(
                    !t.path().join("x").exists(),
                    "created parents were left behind"
                );
            }
        }
    }
    srv.kill();
}

#[test]
fn a_directory_older_than_the_primarys_oldest_segment_is_refused_and_left_untouched() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 2);
    let old = archive_restore(&dir, t.path(), "old", None);
    for i in 0..3 {
        write_records(&dir, 300, &format!("later{i}"));
        seal(&dir);
    }
    // Nothing holds the old segments any more: retention removes them.
    ok(&["checkpoint", p(&dir), "--drop-consumer", "archiver"]);
    let sealed = status(&dir)["sealed_lsn"].as_u64().unwrap();
    ok(&["checkpoint", p(&dir), "--lsn", &sealed.to_string()]);
    assert!(!dir.join("wal").join(seg_name(1)).exists());
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    let before = snapshot(&old);
    let mut stb = common::standby(&old, &addr, &[], &t.path().join("standby.log"));
    assert_eq!(stb.wait_exit(), 2);
    assert!(
        stb.log().contains("no longer on the primary"),
        "{}",
        stb.log()
    );
    assert_eq!(snapshot(&old), before);
    srv.kill();
}

#[test]
fn an_adoption_cut_short_after_storing_the_primarys_copy_is_finished_on_the_next_start() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 2);
    write_records(&dir, 100, "open");
    let former = t.path().join("former");
    replication_support_copy(&dir, &former);
    let other = t.path().join("other");
    replication_support_copy(&dir, &other);
    write_records(&dir, 200, "after");
    seal(&dir);
    // As a cut-short adoption leaves it: the primary's sealed copy stored beside the open
    // segment it supersedes, no state/standby.json yet.
    let sealed2 = dir.join("wal").join(seg_name(2));
    std::fs::copy(&sealed2, former.join("wal").join(seg_name(2))).unwrap();
    // And one whose open segment is not a prefix of the sealed copy beside it.
    write_records(&other, 5, "mine");
    std::fs::copy(&sealed2, other.join("wal").join(seg_name(2))).unwrap();
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    let before = snapshot(&other);
    let mut stb = common::standby(&other, &addr, &[], &t.path().join("other.log"));
    assert_eq!(stb.wait_exit(), 2);
    assert!(stb.log().contains("differ at offset"), "{}", stb.log());
    assert_eq!(snapshot(&other), before);
    let mut stb = common::standby(&former, &addr, &[], &t.path().join("former.log"));
    wait_caught_up(&dir, &former);
    assert_eq!(status(&former)["role"], "standby");
    assert!(!former
        .join("wal")
        .join(format!("00000001{:016X}.wal.open", 2))
        .exists());
    stb.kill();
    srv.kill();
}

#[test]
fn a_damage_entry_is_cleared_when_its_file_leaves_wal() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 3);
    let victim = dir.join("wal").join(seg_name(2));
    let offs = record_offsets(&victim);
    flip(&victim, offs[3] + 30);
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    let sb = t.path().join("standby");
    let mut stb = common::standby(&sb, &addr, &[], &t.path().join("standby.log"));
    wait_until("the damage to be registered", || !damage(&dir).is_empty());
    assert_eq!(damage(&dir)[0]["file"], seg_name(2).as_str());
    // The operator moves the damaged file out of wal/ (to keep it for analysis).
    std::fs::rename(&victim, t.path().join("kept.wal")).unwrap();
    wait_until("the entry to clear", || damage(&dir).is_empty());
    // The shipper logs the clearing right after it removed the entry.
    wait_until("the clearing to be logged", || {
        srv.log().contains("no longer in wal/")
    });
    stb.kill();
    srv.kill();
}

#[test]
fn an_older_or_unknown_version_is_refused_with_a_clear_message() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 1);
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    for (version, want) in [
        (1u32, None),
        (2, None),
        (3, None),
        (4, None),
        (5, None),
        (6, Some(6u32)),
        (7, None),
        (0, None),
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        send(
            &mut s,
            &Message::Hello {
                magic: MAGIC,
                protocol_version: version,
                nonce: [1; 32],
            },
        );
        let b = read_frame(&mut s).unwrap();
        match (codec::decode(&b).unwrap(), want) {
            (
                Message::Challenge {
                    protocol_version, ..
                },
                Some(w),
            ) => {
                assert_eq!(protocol_version, w)
            }
            (Message::Error { code, message }, None) => {
                assert_eq!(code, ErrorCode::Version);
                assert!(
                    message.contains("speaks version 6 only") && message.contains("upgrade"),
                    "{message}"
                );
            }
            (other, w) => panic!("version {version}: got {other:?}, wanted {w:?}"),
        }
    }
    srv.kill();
}

/// A primary that speaks `version` and sends segment 0 of `dir` with one byte flipped at
/// `flip_at`; returns what the standby said last before it closed the connection.
fn fake_primary_sending_a_damaged_segment(
    dir: &Path,
    version: u32,
    flip_at: usize,
) -> (String, std::thread::JoinHandle<Option<Vec<u8>>>) {
    let control = walship::DataDir::new(dir).read_control().unwrap();
    let mut seg = std::fs::read(dir.join("wal").join(seg_name(0))).unwrap();
    seg[flip_at] ^= 0x04;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().ok()?;
        s.set_read_timeout(Some(WAIT)).unwrap();
        read_frame(&mut s)?; // Hello
        send(
            &mut s,
            &Message::Challenge {
                protocol_version: version,
                nonce: [5; 32],
                auth_required: false,
            },
        );
        read_frame(&mut s)?; // Auth
        send(&mut s, &Message::AuthOk { proof: None });
        read_frame(&mut s)?; // Identify
        send(
            &mut s,
            &Message::Welcome {
                system_id: *control.system_id.as_bytes(),
                timeline: control.timeline,
                segment_size: control.segment_size,
                sealed_lsn: walship::Lsn(0),
            },
        );
        send(
            &mut s,
            &Message::SegmentStart {
                timeline: 1,
                segment_no: 0,
                len: seg.len() as u64,
            },
        );
        send(
            &mut s,
            &Message::SegmentData {
                segment_no: 0,
                offset: 0,
                data: walship::replication::messages::Bytes(&seg),
            },
        );
        // Everything the standby sends until it closes; the last frame is kept.
        let mut last = None;
        while let Some(b) = read_frame(&mut s) {
            last = Some(b);
        }
        last
    });
    (addr, h)
}

#[test]
fn a_standby_tells_the_primary_which_segment_it_refuses_where_and_why() {
    let t = tempfile::tempdir().unwrap();
    let dir = primary_with(t.path(), 1);
    let offs = record_offsets(&dir.join("wal").join(seg_name(0)));
    for (version, rec) in [(PROTOCOL_VERSION, 7usize), (PROTOCOL_VERSION, 42)] {
        let at = offs[rec] as usize + 30;
        let (addr, fake) = fake_primary_sending_a_damaged_segment(&dir, version, at);
        let sb = t.path().join(format!("standby-{rec}"));
        let mut stb = common::standby(&sb, &addr, &[], &t.path().join(format!("r{rec}.log")));
        let last = fake
            .join()
            .unwrap()
            .expect("the standby said something last");
        stb.kill();
        match codec::decode(&last).unwrap() {
            Message::SegmentRejected {
                segment_no,
                offset,
                reason,
            } => {
                assert_eq!(segment_no, 0);
                assert_eq!(offset, offs[rec]);
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("version {version}: the standby's last word was {other:?}"),
        }
        // Nothing of the refused segment is kept.
        assert!(!sb.join("wal").join(seg_name(0)).exists());
        assert_eq!(
            std::fs::read_dir(sb.join("wal")).map_or(0, |d| d.count()),
            0
        );
    }
}

/// The primary's open segment goes to a standby up to the writer's durable position and never
/// past it; a standby claiming more than it was sent, or a copy past the durable position, is
/// refused.
#[test]
fn the_open_segment_is_sent_up_to_the_durable_position_and_claims_past_it_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("primary");
    init(&dir);
    write_records(&dir, 100, "o");
    let flush = status(&dir)["flush_lsn"].as_u64().unwrap();
    assert!(flush > 0 && flush < SEG, "one open segment");
    let (mut srv, addr) = serve(&dir, &[], &t.path().join("serve.log"));
    let mut s = handshake(&addr, [7; 16], None, None, 0);
    let mut got = 0u64;
    while got < flush {
        let b = read_frame(&mut s).expect("open segment data");
        match codec::decode(&b).unwrap() {
            Message::OpenData {
                segment_no,
                offset,
                data,
                ..
            } => {
                assert_eq!((segment_no, offset), (0, got));
                got += data.0.len() as u64;
            }
            Message::Keepalive { .. } => {}
            other => panic!("expected the open segment, got {other:?}"),
        }
    }
    assert_eq!(got, flush, "never a byte past the durable position");
    // Written past what was sent, though flushed is within it.
    send(
        &mut s,
        &Message::Status {
            written_lsn: walship::Lsn(flush + 8),
            flushed_lsn: walship::Lsn(flush),
            applied_lsn: walship::Lsn(0),
            now_us: 0,
        },
    );
    let mut err = None;
    while let Some(b) = read_frame(&mut s) {
        match codec::decode(&b) {
            Ok(Message::Error { code, message }) => err = Some((code, message.to_string())),
            Ok(Message::Keepalive { .. }) => {}
            other => panic!("expected an error, got {other:?}"),
        }
    }
    let (code, message) = err.expect("an error before the close");
    assert_eq!(code, ErrorCode::Protocol);
    assert!(message.contains("only WAL up to"), "{message}");
    // A copy of the open segment longer than the primary's durable position: ahead of it.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let hello = Message::Hello {
        magic: MAGIC,
        protocol_version: PROTOCOL_VERSION,
        nonce: [1; 32],
    };
    send(&mut s, &hello);
    read_frame(&mut s).unwrap();
    send(&mut s, &Message::Auth { proof: None });
    read_frame(&mut s).unwrap();
    send(
        &mut s,
        &Message::Identify {
            standby_id: [8; 16],
            system_id: None,
            timeline: 0,
            segment_size: 0,
            next_segment: Some(0),
            prev_checksum: None,
            flushed_lsn: walship::Lsn(flush + 64),
            applied_lsn: walship::Lsn(0),
            max_frame: 8 << 20,
            name: "raw",
            history_digest: None,
            copy_checksum: None,
        },
    );
    match codec::decode(&read_frame(&mut s).unwrap()).unwrap() {
        Message::Error { code, message } => {
            assert_eq!(code, ErrorCode::Identity);
            assert!(message.contains("ahead of this primary"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    srv.kill();
}
