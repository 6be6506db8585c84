//! Authentication by a pre-shared token: each side proves it knows the token with an
//! HMAC-SHA256 over both sides' fresh nonces, so the token never crosses the wire and a proof
//! recorded once is useless later.

use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const STANDBY_LABEL: &[u8] = b"walship-replication-v1 standby";
const PRIMARY_LABEL: &[u8] = b"walship-replication-v1 primary";

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} is readable by group or others (mode {mode:o}): restrict it with `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("token file {path} is empty")]
    Empty { path: String },
}

/// A shared secret. Its Debug form never shows it.
#[derive(Clone)]
pub struct AuthToken(Vec<u8>);

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl AuthToken {
    pub fn new(secret: impl Into<Vec<u8>>) -> AuthToken {
        AuthToken(secret.into())
    }

    /// Reads a token file: its content without a trailing newline. Like ssh with private keys,
    /// a file that group or others may read is refused.
    pub fn from_file(path: &Path) -> Result<AuthToken, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let io = |source| TokenError::Io {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Permissions { path: shown, mode });
        }
        let mut bytes = crate::fsutil::read_regular(path).map_err(io)?;
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(TokenError::Empty { path: shown });
        }
        Ok(AuthToken(bytes))
    }

    fn mac(&self, label: &[u8], first: &[u8; 32], second: &[u8; 32]) -> HmacSha256 {
        // HMAC takes keys of any length.
        let mut m = match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        m.update(label);
        m.update(first);
        m.update(second);
        m
    }

    /// The standby's proof: HMAC(token, standby label || standby nonce || primary nonce).
    pub fn standby_proof(&self, standby_nonce: &[u8; 32], primary_nonce: &[u8; 32]) -> [u8; 32] {
        self.mac(STANDBY_LABEL, standby_nonce, primary_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// The primary's proof: HMAC(token, primary label || primary nonce || standby nonce).
    pub fn primary_proof(&self, primary_nonce: &[u8; 32], standby_nonce: &[u8; 32]) -> [u8; 32] {
        self.mac(PRIMARY_LABEL, primary_nonce, standby_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a standby's proof in constant time.
    pub fn verify_standby(
        &self,
        standby_nonce: &[u8; 32],
        primary_nonce: &[u8; 32],
        proof: &[u8; 32],
    ) -> bool {
        self.mac(STANDBY_LABEL, standby_nonce, primary_nonce)
            .verify_slice(proof)
            .is_ok()
    }

    /// Checks a primary's proof in constant time.
    pub fn verify_primary(
        &self,
        primary_nonce: &[u8; 32],
        standby_nonce: &[u8; 32],
        proof: &[u8; 32],
    ) -> bool {
        self.mac(PRIMARY_LABEL, primary_nonce, standby_nonce)
            .verify_slice(proof)
            .is_ok()
    }
}

/// A fresh random nonce from the operating system's generator.
pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_token_nonces_and_direction() {
        let t = AuthToken::new("secret");
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        let p = t.standby_proof(&a, &b);
        assert!(t.verify_standby(&a, &b, &p));
        assert!(!t.verify_standby(&b, &a, &p));
        assert!(
            !t.verify_primary(&a, &b, &p),
            "a standby proof is not a primary proof"
        );
        assert!(!AuthToken::new("other").verify_standby(&a, &b, &p));
        let q = t.primary_proof(&b, &a);
        assert!(t.verify_primary(&b, &a, &q));
        assert_eq!(format!("{t:?}"), "AuthToken(<redacted>)");
    }

    #[test]
    fn token_file_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            AuthToken::from_file(&p),
            Err(TokenError::Permissions { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = AuthToken::from_file(&p).unwrap();
        assert!(t.verify_standby(
            &[1; 32],
            &[2; 32],
            &AuthToken::new("s3cret").standby_proof(&[1; 32], &[2; 32])
        ));
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            AuthToken::from_file(&p),
            Err(TokenError::Empty { .. })
        ));
    }
}
