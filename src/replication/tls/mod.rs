//! TLS on the replication port, through rustls with the ring crypto provider (the provider the
//! S3 client already builds, so TLS adds no second crypto library to compile): the primary's
//! and the standby's configurations from PEM files, the checks made on those files at start
//! (key files private, certificates within their validity), the name a standby's certificate
//! gives it, and reloading the primary's files while it runs.
//!
//! - `describe.rs`: what a failed TLS handshake or record means, from either side.
//! - `x509.rs`: a certificate's validity and common name from its DER bytes.
//! - `skip_verify.rs`: the standby's explicit "do not verify the primary" mode.
//! - `reload.rs`: the primary's configuration, reloaded when its files change.

pub mod describe;
mod reload;
mod skip_verify;
mod x509;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use describe::Side;
pub use reload::ServerTls;

/// Why TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is readable by group or others (mode {mode:o}): restrict it with `chmod 600 {path}`")]
    KeyPermissions { path: String, mode: u32 },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
    #[error(
        "certificate {path} ({subject}) expired at {not_after}; it is now {now}: make a new one"
    )]
    Expired {
        path: String,
        subject: String,
        not_after: String,
        now: String,
    },
    #[error("certificate {path} ({subject}) is not valid before {not_before}; it is now {now}: check this machine's clock, or wait")]
    NotYetValid {
        path: String,
        subject: String,
        not_before: String,
        now: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The primary's TLS files.
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    /// The primary's certificate chain (PEM), its own certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM; mode 600 or stricter).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign standbys' certificates: with it, every standby must
    /// present a certificate signed by one of them, and its name is taken from it.
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.cert.clone(), self.key.clone()];
        v.extend(self.client_ca.clone());
        v
    }
}

/// The standby's TLS settings.
#[derive(Clone, Debug, Default)]
pub struct ClientTlsFiles {
    /// CA certificates (PEM) the primary's certificate must be signed by.
    pub ca: Option<PathBuf>,
    /// The standby's certificate chain and key, for a primary that requires them.
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// The name the primary's certificate must carry; the host of the primary's address when
    /// absent.
    pub server_name: Option<String>,
    /// Accept any certificate from the primary (a warning is logged at each connection).
    pub insecure_skip_verify: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::fsutil::read_regular(path).map_err(|source| TlsError::Io {
        path: shown(path),
        source,
    })
}

/// The certificates of a PEM file, each checked to be within its validity period now.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let invalid = |what: String| TlsError::Invalid {
        path: shown(path),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            "holds no certificate (expected `-----BEGIN CERTIFICATE-----`)".into(),
        ));
    }
    let now = chrono::Utc::now();
    for c in &certs {
        let v = x509::validity(c).map_err(|e| invalid(format!("unreadable certificate: {e}")))?;
        let subject = x509::common_name(c)
            .ok()
            .flatten()
            .map_or_else(|| "no common name".to_string(), |n| format!("CN={n}"));
        if now > v.not_after {
            return Err(TlsError::Expired {
                path: shown(path),
                subject,
                not_after: v.not_after.to_rfc3339(),
                now: now.to_rfc3339(),
            });
        }
        if now < v.not_before {
            return Err(TlsError::NotYetValid {
                path: shown(path),
                subject,
                not_before: v.not_before.to_rfc3339(),
                now: now.to_rfc3339(),
            });
        }
    }
    Ok(certs)
}

/// A private key file: refused when group or others may read it, like token files.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Io {
        path: shown(path),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: shown(path),
            mode,
        });
    }
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::Invalid {
        path: shown(path),
        what: format!("not a PEM private key: {e}"),
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in read_certs(path)? {
        store.add(c).map_err(|e| TlsError::Invalid {
            path: shown(path),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(store))
}

/// The primary's configuration from its files, each checked.
pub fn server_config(f: &ServerTlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(&f.cert)?;
    let key = read_key(&f.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &f.client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                .build()
                .map_err(|e| TlsError::Invalid {
                    path: shown(ca),
                    what: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid {
            path: format!("{} and {}", shown(&f.cert), shown(&f.key)),
            what: format!("the key does not go with the certificate, or is unusable: {e}"),
        })?;
    Ok(Arc::new(config))
}

/// The standby's configuration from its files, each checked.
pub fn client_config(f: &ClientTlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&f.ca, f.insecure_skip_verify) {
        (_, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(skip_verify::SkipVerify(provider()))),
        (Some(ca), false) => builder.with_root_certificates(roots(ca)?),
        (None, false) => {
            return Err(TlsError::Config(
                "a TLS standby needs --tls-ca (the CA that signs the primary's certificate), or --tls-insecure-skip-verify".into(),
            ))
        }
    };
    let config = match &f.cert_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| TlsError::Invalid {
                path: format!("{} and {}", shown(cert), shown(key)),
                what: format!("the key does not go with the certificate, or is unusable: {e}"),
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name the primary's certificate must carry: `--tls-server-name`, or the host of the
/// primary's `HOST:PORT` address (a DNS name or an IP address).
pub fn server_name(f: &ClientTlsFiles, primary: &str) -> Result<ServerName<'static>, TlsError> {
    let name = match &f.server_name {
        Some(n) => n.clone(),
        None => {
            let host = primary.rsplit_once(':').map_or(primary, |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        }
    };
    ServerName::try_from(name.clone())
        .map_err(|e| TlsError::Config(format!("{name:?} is not a DNS name or an IP address: {e}")))
}

/// A standby's name, from the certificate it presented: its subject's common name or, failing
/// that, the first DNS name among its subject alternative names that is a valid standby name
/// (1 to 63 letters, digits, `_`, `-` or `.`, starting with a letter or a digit).
pub fn peer_name(end_entity: &CertificateDer<'_>) -> Result<String, String> {
    let mut candidates = Vec::new();
    if let Ok(Some(cn)) = x509::common_name(end_entity) {
        candidates.push(cn);
    }
    if let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) {
        candidates.extend(cert.valid_dns_names().map(str::to_string));
    }
    if let Some(n) = candidates
        .iter()
        .find(|n| crate::replication::synchronous::check_name(n).is_ok())
    {
        return Ok(n.clone());
    }
    Err(if candidates.is_empty() {
        "the standby's certificate has neither a common name nor a DNS name: it names no standby"
            .into()
    } else {
        format!(
            "the standby's certificate names {}, none of which is a valid standby name (1 to 63 letters, digits, '_', '-' or '.', starting with a letter or a digit)",
            candidates.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ")
        )
    })
}

#[cfg(test)]
mod tests;
