//! Arbitrary bytes sent by a client to a real shipper over loopback TCP. The first input byte
//! picks a shipper that requires a token or one that does not; the rest is sent, then the
//! client closes its sending side and reads until the shipper closes. Properties: the shipper
//! always answers with well-formed frames and closes the connection within a bound, never
//! panics, keeps running, and without the token's proof never sends AuthOk, Welcome or segments.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walship::replication::frame::read_frame;
use walship::replication::messages::Message;
use walship::replication::{codec, AuthToken, Shipper, ShipperConfig};
use walship::{DataDir, Entry, EntryType, Wal, WalOptions};

struct Env {
    rt: tokio::runtime::Runtime,
    /// [with a token, without]
    shippers: [Shipper; 2],
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("d");
        DataDir::init(&root, 64 * 1024).expect("init");
        let wal = Wal::open(&root, WalOptions::default()).expect("open");
        for seg in 0..2u8 {
            for i in 0..8u8 {
                wal.append(&Entry::new(EntryType::Insert, Some(i as u64), &[seg ^ i; 100]))
                    .expect("append");
            }
            wal.sync().expect("sync");
            wal.seal().expect("seal");
        }
        drop(wal);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let start = |token: Option<AuthToken>| {
            let mut c = ShipperConfig::new(&root, "127.0.0.1:0");
            c.auth_token = token;
            c.peer_timeout = Duration::from_secs(2);
            rt.block_on(Shipper::start(c)).expect("shipper starts")
        };
        let shippers = [start(Some(AuthToken::new("fuzz-secret"))), start(None)];
        Env { rt, shippers, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else { return };
    let env = env();
    let with_token = pick & 1 == 0;
    let shipper = &env.shippers[if with_token { 0 } else { 1 }];
    let addr = shipper.local_addr();
    let reply = env.rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the shipper");
        // The shipper may close early (a refused Hello): a failed send is fine.
        let _ = s.write_all(input).await;
        let _ = s.shutdown().await;
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut reply)).await;
        match read {
            Ok(_) => reply,
            Err(_) => panic!("the shipper neither answered nor closed within 20 s"),
        }
    });
    assert!(shipper.is_running(), "the shipper stopped");
    let mut r = &reply[..];
    let mut first = true;
    while !r.is_empty() {
        let body = env
            .rt
            .block_on(read_frame(&mut r, 64 << 20))
            .expect("the shipper sends whole frames");
        let m = codec::decode(&body).expect("the shipper sends well-formed messages");
        if first {
            assert!(
                matches!(m, Message::Challenge { .. } | Message::Error { .. }),
                "first reply {}",
                m.name()
            );
            first = false;
        }
        if with_token {
            assert!(
                matches!(m, Message::Challenge { .. } | Message::Error { .. }),
                "{} sent without a valid proof",
                m.name()
            );
        }
    }
});
