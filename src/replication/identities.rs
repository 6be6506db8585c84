//! Who the primary admits as a standby, and under which name: by a shared token (every holder
//! is the same unnamed standby), by a token of its own (a directory holding one token file per
//! standby name), or by the name in the client certificate it presented over TLS. A standby's
//! own token is found by its proof: the primary tries each token of the directory, so the
//! standby needs to send nothing more than with a shared token. The directory is read again at
//! every connection and at every revocation check, so removing a standby's file refuses it
//! from then on and cuts its stream, without touching the others.

use std::path::{Path, PathBuf};

use super::auth::{AuthToken, TokenError};

/// The tokens a primary accepts.
#[derive(Clone, Debug, Default)]
pub enum Tokens {
    /// No authentication by token.
    #[default]
    None,
    /// One token shared by every standby.
    Shared(AuthToken),
    /// One token per standby name, read from a directory.
    Named(Vec<(String, AuthToken)>),
}

impl From<Option<AuthToken>> for Tokens {
    fn from(t: Option<AuthToken>) -> Tokens {
        t.map_or(Tokens::None, Tokens::Shared)
    }
}

impl Tokens {
    /// True when a standby must prove it knows a token.
    pub fn required(&self) -> bool {
        !matches!(self, Tokens::None)
    }

    /// The token whose proof this is, with the standby name it belongs to (None for the shared
    /// token). Every token of a directory is tried, each in constant time.
    pub fn verify(
        &self,
        standby_nonce: &[u8; 32],
        primary_nonce: &[u8; 32],
        proof: &[u8; 32],
    ) -> Option<(Option<&str>, &AuthToken)> {
        match self {
            Tokens::None => None,
            Tokens::Shared(t) => t
                .verify_standby(standby_nonce, primary_nonce, proof)
                .then_some((None, t)),
            Tokens::Named(v) => v
                .iter()
                .find(|(_, t)| t.verify_standby(standby_nonce, primary_nonce, proof))
                .map(|(n, t)| (Some(n.as_str()), t)),
        }
    }
}

/// A directory of standby tokens: the file `DIR/NAME` holds the token of the standby named
/// NAME (1 to 63 letters, digits, `_`, `-` or `.`, starting with a letter or a digit), with the same rules as a shared token file
/// (mode 600 or stricter, not empty). Other entries (hidden files, editors' backups, names
/// that are not standby names) are ignored.
#[derive(Clone, Debug)]
pub struct TokenDir {
    pub path: PathBuf,
}

impl TokenDir {
    pub fn new(path: impl Into<PathBuf>) -> TokenDir {
        TokenDir { path: path.into() }
    }

    /// Reads every token of the directory. A file that cannot be used is an error, so that a
    /// mistake shows at once rather than as one standby refused later.
    pub fn load(&self) -> Result<Tokens, TokenError> {
        self.read(true)
    }

    /// Reads every usable token of the directory; a file that cannot be used is logged and
    /// skipped (its standby is refused), so that one mistake does not lock out the others.
    pub fn load_lenient(&self) -> Tokens {
        match self.read(false) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "the token directory cannot be read: every standby is refused");
                Tokens::Named(Vec::new())
            }
        }
    }

    fn read(&self, strict: bool) -> Result<Tokens, TokenError> {
        let io = |source| TokenError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut tokens = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(io)? {
            let entry = entry.map_err(io)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if crate::replication::synchronous::check_name(&name).is_err()
                || entry.file_type().map_err(io)?.is_dir()
            {
                continue;
            }
            match AuthToken::from_file(&entry.path()) {
                Ok(t) => tokens.push((name, t)),
                Err(e) if strict => return Err(e),
                Err(e) => tracing::warn!(error = %e, "a standby's token file is skipped"),
            }
        }
        tokens.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Tokens::Named(tokens))
    }

    /// True while the standby `name` still has its token file.
    pub fn holds(&self, name: &str) -> bool {
        crate::replication::synchronous::check_name(name).is_ok()
            && Path::new(&self.path).join(name).is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::auth::nonce;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_names_each_standby_by_its_own_token() {
        let d = tempfile::tempdir().unwrap();
        let put = |name: &str, secret: &str, mode: u32| {
            let p = d.path().join(name);
            std::fs::write(&p, secret).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        put("standby-a", "secret a\n", 0o600);
        put("standby-b", "secret b\n", 0o400);
        put(".hidden", "x", 0o644);
        put("backup~", "x", 0o644);
        let dir = TokenDir::new(d.path());
        let tokens = dir.load().unwrap();
        let (sn, pn) = (nonce(), nonce());
        let proof = AuthToken::new("secret b").standby_proof(&sn, &pn);
        let (name, _) = tokens.verify(&sn, &pn, &proof).unwrap();
        assert_eq!(name, Some("standby-b"));
        assert!(tokens
            .verify(
                &sn,
                &pn,
                &AuthToken::new("secret c").standby_proof(&sn, &pn)
            )
            .is_none());
        assert!(dir.holds("standby-a") && !dir.holds("standby-c") && !dir.holds("../x"));
        // Revoked: the file is gone, the proof no longer verifies.
        std::fs::remove_file(d.path().join("standby-b")).unwrap();
        assert!(dir.load().unwrap().verify(&sn, &pn, &proof).is_none());
        assert!(!dir.holds("standby-b"));
        // A token file others may read is an error, naming it.
        put("standby-c", "secret c", 0o644);
        let e = dir.load().unwrap_err().to_string();
        assert!(e.contains("standby-c") && e.contains("chmod 600"), "{e}");
    }
}
