//! The primary's TLS configuration while it runs: built from its files at start (any error
//! stops the start), then rebuilt when one of the files changes (looked at before each new
//! connection, at most once a second) or when asked (`reload`, on SIGHUP in `walship serve`).
//! A rebuild that fails keeps the configuration in use and is logged; connections already
//! established keep the keys they negotiated, so rotating a certificate never cuts a stream.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use rustls::ServerConfig;

use super::{server_config, ServerTlsFiles, TlsError};

/// What identifies a version of a file: its modification time, size and inode.
type Stamp = Vec<(PathBuf, Option<(SystemTime, u64, u64)>)>;

fn stamp(paths: &[PathBuf]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())));
            (p.clone(), m)
        })
        .collect()
}

struct Current {
    config: Arc<ServerConfig>,
    stamp: Stamp,
    looked: Instant,
}

/// The primary's TLS configuration, reloaded when its files change.
pub struct ServerTls {
    files: ServerTlsFiles,
    current: Mutex<Current>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ServerTls {
    /// Loads and checks the files; an error here is an error at start.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let s = stamp(&files.paths());
        let config = server_config(&files)?;
        Ok(ServerTls {
            files,
            current: Mutex::new(Current {
                config,
                stamp: s,
                looked: Instant::now(),
            }),
        })
    }

    /// True when the primary requires client certificates.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The configuration for a new connection, rebuilt first if a file changed since it was
    /// last looked at (at most once a second).
    pub fn config(&self) -> Arc<ServerConfig> {
        let mut cur = match self.current.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if cur.looked.elapsed().as_millis() >= 1000 {
            cur.looked = Instant::now();
            let s = stamp(&self.files.paths());
            if s != cur.stamp {
                cur.stamp = s;
                self.rebuild(&mut cur, "a TLS file changed");
            }
        }
        cur.config.clone()
    }

    /// Rebuilds the configuration from the files now. On failure the configuration in use
    /// stays, and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let mut cur = match self.current.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        cur.stamp = stamp(&self.files.paths());
        cur.looked = Instant::now();
        let config = server_config(&self.files)?;
        cur.config = config;
        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    fn rebuild(&self, cur: &mut Current, why: &str) {
        match server_config(&self.files) {
            Ok(c) => {
                cur.config = c;
                tracing::info!(cert = %self.files.cert.display(), "{why}: TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "{why}, but it cannot be used: the previous TLS configuration stays in use")
            }
        }
    }
}
