//! Arbitrary bytes sent by a client to a real shipper over loopback TCP. The first input byte
//! picks a shipper that requires a token or one that does not (bit 0), on a plain port or a TLS
//! one (bit 1: the client completes a TLS handshake with a certificate made at start and sends
//! the bytes inside it); the rest is sent, then the client closes its sending side and reads
//! until the shipper closes. Properties: the shipper
//! always answers with well-formed frames and closes the connection within a bound, never
//! panics, keeps running, and without the token's proof never sends AuthOk, Welcome or segments.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walship::replication::frame::read_frame;
use walship::replication::messages::Message;
use walship::replication::tls::{client_config, server_name, ClientTlsFiles, ServerTlsFiles};
use walship::replication::{codec, AuthToken, Shipper, ShipperConfig};
use walship::{DataDir, Entry, EntryType, Wal, WalOptions};

struct Env {
    rt: tokio::runtime::Runtime,
    /// [with a token, without] on a plain port, then the same on a TLS port.
    shippers: [Shipper; 4],
    tls: tokio_rustls::TlsConnector,
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
                wal.append(&Entry::new(
                    EntryType::Insert,
                    Some(i as u64),
                    &[seg ^ i; 100],
                ))
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
        // A CA and a certificate for localhost, as files.
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("certificate");
        let write = |name: &str, text: String| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            p
        };
        let files = ServerTlsFiles {
            cert: write("primary.crt", cert.pem()),
            key: write("primary.key", key.serialize_pem()),
            client_ca: None,
        };
        let client = ClientTlsFiles {
            ca: Some(write("ca.crt", ca.pem())),
            server_name: Some("localhost".into()),
            ..ClientTlsFiles::default()
        };
        let tls = tokio_rustls::TlsConnector::from(client_config(&client).expect("client TLS"));
        let start = |token: Option<AuthToken>, tls: bool| {
            let mut c = ShipperConfig::new(&root, "127.0.0.1:0");
            c.auth_token = token;
            c.tls = tls.then(|| files.clone());
            c.peer_timeout = Duration::from_secs(2);
            rt.block_on(Shipper::start(c)).expect("shipper starts")
        };
        let secret = || Some(AuthToken::new("fuzz-secret"));
        let shippers = [
            start(secret(), false),
            start(None, false),
            start(secret(), true),
            start(None, true),
        ];
        Env {
            rt,
            shippers,
            tls,
            _dir: dir,
        }
    })
}

/// Sends `input`, closes the sending side, and reads until the shipper closes (a close without
/// TLS's close_notify ends the read with an error, after what arrived).
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    input: &[u8],
) -> Vec<u8> {
    // The shipper may close early (a refused Hello): a failed send is fine.
    let _ = s.write_all(input).await;
    let _ = s.shutdown().await;
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut reply)).await;
    match read {
        Ok(_) => reply,
        Err(_) => panic!("the shipper neither answered nor closed within 20 s"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let env = env();
    let with_token = pick & 1 == 0;
    let over_tls = pick & 2 != 0;
    let shipper = &env.shippers[usize::from(!with_token) + 2 * usize::from(over_tls)];
    let addr = shipper.local_addr();
    let reply = env.rt.block_on(async {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the shipper");
        if over_tls {
            let name = server_name(
                &ClientTlsFiles {
                    server_name: Some("localhost".into()),
                    ..Default::default()
                },
                "localhost:1",
            )
            .expect("name");
            let s = env
                .tls
                .connect(name, s)
                .await
                .expect("the TLS handshake with the shipper");
            exchange(s, input).await
        } else {
            exchange(s, input).await
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
