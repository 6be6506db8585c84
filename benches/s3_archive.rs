//! Archive and restore throughput against a local S3-protocol server, each next to a plain
//! upload (and download) of the same files with the same client in the same run, with 1, 4 and
//! 16 transfers in flight. The archiver runs twice: reading every object back after its PUT
//! (`--read-back always`, as it used to) and as it does by default. Starts the test server (python3 with moto[server], as the tests do),
//! builds a data directory of sealed 16 MiB segments, and prints one line per setting.
//!
//! Restore is measured against two baselines: a plain download into memory, and the same
//! download with each object written to a file and fdatasynced (same parallelism), as MB/s
//! over restore's own time (`timings.total_us` of its JSON: from reading the identity to the
//! control file written) and over the process's wall time (start-up included); its JSON's
//! timings are printed below each line.
//!
//! Run: `cargo bench --bench s3_archive` (optionally SEGMENTS=N, default 8; DIR=PATH for the
//! scratch data, default /var/tmp; RESTORE_BIN=PATH to restore with another build).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use walship::archive::{ArchiveStore, S3Config, S3Store};
use walship::{DataDir, Entry, EntryType, Wal, WalOptions};

const SEG: u64 = 16 << 20;

struct Server {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    out: std::io::BufReader<std::process::ChildStdout>,
    endpoint: String,
    key: String,
    secret: String,
}

impl Server {
    fn start() -> Server {
        use std::io::BufRead;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let script = format!("{}/tests/common/s3_server.py", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("python3")
            .args([&script, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto[server] (pip install 'moto[server]')");
        let stdin = child.stdin.take().expect("stdin");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("server line");
        let w: Vec<&str> = line.split_whitespace().collect();
        assert!(
            w.len() == 3 && w[0] == "READY",
            "the S3 server did not start: {line:?}"
        );
        Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            key: w[1].into(),
            secret: w[2].into(),
            child,
            stdin,
            out,
        }
    }

    fn bucket(&mut self, name: &str) {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "bucket {name}").expect("ask");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("answer");
        assert_eq!(line.trim(), format!("ok {name}"));
    }

    fn store(&self, url: &str) -> S3Store {
        let mut c = S3Config::from_url(url).expect("url");
        c.endpoint = Some(self.endpoint.clone());
        c.region = Some("us-east-1".into());
        c.access_key_id = Some(self.key.clone());
        c.secret_access_key = Some(self.secret.clone());
        c.allow_http = Some(true);
        S3Store::new(&c).expect("client")
    }

    fn walship(&self, args: &[&str]) -> (serde_json::Value, f64) {
        self.walship_bin(env!("CARGO_BIN_EXE_walship"), args)
    }

    fn walship_bin(&self, bin: &str, args: &[&str]) -> (serde_json::Value, f64) {
        let started = Instant::now();
        let out = Command::new(bin)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .output()
            .expect("run walship");
        let secs = started.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "walship {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (serde_json::from_slice(&out.stdout).expect("json"), secs)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A data directory of `n` sealed segments of mixed, poorly compressible records.
fn make_data(root: &Path, n: u64) {
    DataDir::init(root, SEG).expect("init");
    let wal = Wal::open(root, WalOptions::default()).expect("open");
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut payload = vec![0u8; 4000];
    while wal.write_lsn().0 < n * SEG {
        for b in payload.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        wal.append(&Entry::new(EntryType::Insert, None, &payload))
            .expect("append");
    }
    wal.seal().expect("seal");
    wal.sync().expect("sync");
}

fn sealed(root: &Path) -> Vec<(String, Arc<Vec<u8>>)> {
    let mut v: Vec<_> = std::fs::read_dir(root.join("wal"))
        .expect("wal")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, Arc::new(std::fs::read(&p).expect("read")))
        })
        .collect();
    v.sort();
    v
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: u64 = std::env::var("SEGMENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    // On the disk the restore writes to (not a memory file system): DIR, default /var/tmp.
    let dir = std::env::var("DIR").unwrap_or_else(|_| "/var/tmp".into());
    let tmp = tempfile::tempdir_in(&dir).expect("tempdir");
    // RESTORE_BIN=PATH restores with another build of walship (to compare two builds).
    let restore_bin =
        std::env::var("RESTORE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_walship").into());
    let data = tmp.path().join("data");
    make_data(&data, n);
    let files = sealed(&data);
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let mut server = Server::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "{} sealed segments of {} MiB ({} MiB) to {}",
        files.len(),
        SEG >> 20,
        total >> 20,
        server.endpoint
    );
    println!(
        "in_flight plain_put_MBps read_back_all_MBps ratio archive_MBps ratio plain_get_MBps get_sync_MBps restore_MBps ratio_get ratio_get_sync restore_wall_MBps"
    );
    for k in [1usize, 4, 16] {
        // A plain upload of the same files with the same client.
        let plain = format!("plain-{k}");
        server.bucket(&plain);
        let store = server.store(&format!("s3://{plain}"));
        let started = Instant::now();
        rt.block_on(async {
            futures::stream::iter(files.iter().cloned())
                .map(|(name, b)| {
                    let s = store.clone();
                    async move { s.put(&name, b).await.expect("put") }
                })
                .buffer_unordered(k)
                .collect::<Vec<_>>()
                .await
        });
        let put = mbps(total, started.elapsed().as_secs_f64());
        let started = Instant::now();
        rt.block_on(async {
            futures::stream::iter(files.iter().cloned())
                .map(|(name, _)| {
                    let s = store.clone();
                    async move { s.get(&name).await.expect("get").expect("object") }
                })
                .buffer_unordered(k)
                .collect::<Vec<_>>()
                .await
        });
        let get = mbps(total, started.elapsed().as_secs_f64());
        // The same download, each object then written to a file of its own and fdatasynced
        // (what any download to disk must do), the directory fsynced once at the end.
        let sink = tmp.path().join(format!("sink-{k}"));
        std::fs::create_dir(&sink).expect("sink");
        let started = Instant::now();
        rt.block_on(async {
            futures::stream::iter(files.iter().cloned())
                .map(|(name, _)| {
                    let s = store.clone();
                    let path = sink.join(&name);
                    async move {
                        let b = s.get(&name).await.expect("get").expect("object");
                        tokio::task::spawn_blocking(move || {
                            use std::io::Write;
                            let mut f = std::fs::File::create(&path).expect("create");
                            f.write_all(&b).expect("write");
                            f.sync_data().expect("fdatasync");
                        })
                        .await
                        .expect("join")
                    }
                })
                .buffer_unordered(k)
                .collect::<Vec<_>>()
                .await
        });
        std::fs::File::open(&sink)
            .and_then(|d| d.sync_all())
            .expect("fsync sink");
        let get_sync = mbps(total, started.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&sink).expect("remove sink");
        rt.block_on(async {
            for (name, _) in &files {
                store.delete(name).await.expect("delete");
            }
        });

        // The archiver as it was (every object read back after its PUT), then as it is (read
        // back only when the PUT's ETag does not prove the bytes), each into a fresh bucket.
        let mut arch = [0.0f64; 2];
        let mut url = String::new();
        for (i, read_back) in ["always", "unproven"].into_iter().enumerate() {
            let bucket = format!("archive-{k}-{read_back}");
            server.bucket(&bucket);
            url = format!("s3://{bucket}");
            let kk = k.to_string();
            let (sum, _) = server.walship(&[
                "archive",
                data.to_str().unwrap(),
                "--to",
                &url,
                "--once",
                "--json",
                "--parallel",
                &kk,
                "--read-back",
                read_back,
            ]);
            let secs = sum["seconds"].as_f64().expect("seconds");
            let bytes = sum["bytes"].as_u64().expect("bytes");
            arch[i] = mbps(bytes, secs);
            if i == 0 {
                // The archive of the first run is not restored: empty it (the next run goes
                // to a new bucket, which the archiver fills from the start).
                let store = server.store(&url);
                rt.block_on(async {
                    for o in store.list().await.expect("list") {
                        store.delete(&o.name).await.expect("delete");
                    }
                });
            }
        }
        let kk = k.to_string();
        let dest = tmp.path().join(format!("restored-{k}"));
        let (sum, wall) = server.walship_bin(
            &restore_bin,
            &[
                "restore",
                &url,
                dest.to_str().unwrap(),
                "--json",
                "--fetch-ahead",
                &kk,
            ],
        );
        // A build without the timings (RESTORE_BIN): the process's wall time.
        let timings = &sum["timings"];
        let secs = timings["total_us"].as_f64().map_or(wall, |us| us / 1e6);
        let rest = mbps(total, secs);
        println!(
            "{k:>9} {put:>14.1} {:>18.1} {:>5.2} {:>12.1} {:>5.2} {get:>14.1} {get_sync:>13.1} {rest:>12.1} {:>9.2} {:>14.2} {:>17.1}",
            arch[0],
            arch[0] / put,
            arch[1],
            arch[1] / put,
            rest / get,
            rest / get_sync,
            mbps(total, wall),
        );
        println!("          restore timings (us): {timings}");
        std::fs::remove_dir_all(&dest).expect("remove restored");
        let store = server.store(&url);
        rt.block_on(async {
            for o in store.list().await.expect("list") {
                store.delete(&o.name).await.expect("delete");
            }
        });
    }
}
