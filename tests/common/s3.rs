//! A local S3-protocol server for one test file: moto's server (Python, `pip install
//! 'moto[server]'`) on a free loopback port, checking request signatures against one IAM user
//! it creates (`s3_server.py` beside this file). Each test makes its own bucket.
//!
//! When moto is not installed the tests that need it skip, saying so loudly on stderr; under CI
//! (`CI` set) a missing server fails instead, so nothing skips there.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::Mutex;

/// The running server; stopped when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    child: Child,
    io: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
}

fn script() -> String {
    format!("{}/tests/common/s3_server.py", env!("CARGO_MANIFEST_DIR"))
}

fn moto_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl S3Server {
    /// Starts a server, or returns `None` (after a loud message) when moto is not installed
    /// and this is not CI.
    pub fn start(test: &str) -> Option<S3Server> {
        S3Server::start_with(test, false)
    }

    /// A server that checks no signature (see `s3_server.py`: for archives under a prefix).
    pub fn start_open(test: &str) -> Option<S3Server> {
        S3Server::start_with(test, true)
    }

    fn start_with(test: &str, open: bool) -> Option<S3Server> {
        if !moto_installed() {
            assert!(
                std::env::var_os("CI").is_none(),
                "the S3 test server (python3 with moto[server]) is not installed; .ci/run installs it"
            );
            eprintln!(
                "\n*** SKIPPED {test}: no S3 test server. Install it with: pip install 'moto[server]' ***\n"
            );
            return None;
        }
        for _ in 0..5 {
            let port = free_port();
            let mut args = vec![script(), port.to_string()];
            if open {
                args.push("open".into());
            }
            let mut child = Command::new("python3")
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start python3");
            let stdin = child.stdin.take().expect("stdin");
            let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() == 3 && words[0] == "READY" {
                return Some(S3Server {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    access_key_id: words[1].to_string(),
                    secret_access_key: words[2].to_string(),
                    child,
                    io: Mutex::new((stdin, stdout)),
                });
            }
            // The port was taken meanwhile, most likely: try another.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the S3 test server did not start");
    }

    /// Creates bucket `name`.
    pub fn bucket(&self, name: &str) {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(io.0, "bucket {name}").expect("ask for a bucket");
        io.0.flush().expect("flush");
        let mut line = String::new();
        io.1.read_line(&mut line).expect("bucket answer");
        assert_eq!(line.trim(), format!("ok {name}"), "create bucket {name}");
    }

    /// Sets the AWS environment of `cmd` for this server (the right credentials).
    pub fn env(&self, cmd: &mut Command) {
        self.env_to(cmd, &self.endpoint);
    }

    /// The same through another address (a proxy in front of the server).
    pub fn env_to(&self, cmd: &mut Command, endpoint: &str) {
        cmd.env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_access_key)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env_remove("AWS_SESSION_TOKEN");
    }

    /// `walship ARGS` against this server, waited for.
    pub fn walship(&self, args: &[&str]) -> Output {
        self.walship_via(args, &self.endpoint)
    }

    /// `walship ARGS` against this server through `endpoint` (a proxy), waited for.
    pub fn walship_via(&self, args: &[&str], endpoint: &str) -> Output {
        let mut cmd = Command::new(super::bin());
        self.env_to(&mut cmd, endpoint);
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run walship")
    }

    /// `walship ARGS` against this server, started with its stderr in `log`.
    pub fn spawn(&self, args: &[&str], log: &Path, endpoint: Option<&str>) -> super::Proc {
        let mut cmd = Command::new(super::bin());
        self.env_to(&mut cmd, endpoint.unwrap_or(&self.endpoint));
        let child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("spawn walship");
        super::Proc {
            child,
            log: log.to_path_buf(),
        }
    }

    /// A client of the store for checking and tampering with objects directly.
    pub fn store(&self, url: &str) -> walship::archive::S3Store {
        let mut cfg = walship::archive::S3Config::from_url(url).expect("url");
        cfg.endpoint = Some(self.endpoint.clone());
        cfg.region = Some("us-east-1".into());
        cfg.access_key_id = Some(self.access_key_id.clone());
        cfg.secret_access_key = Some(self.secret_access_key.clone());
        cfg.allow_http = Some(true);
        walship::archive::S3Store::new(&cfg).expect("S3 client")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
