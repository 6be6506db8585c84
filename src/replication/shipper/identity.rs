//! A connection's transport and its standby's identity on the primary: the TLS handshake (when
//! the port is TLS), the name a client certificate or a standby's own token gives it, the
//! tokens accepted at this connection (a token directory is read again each time), and the
//! streaming sessions by name, so that a revoked standby's stream is cut while the others go
//! on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Shared;
use crate::replication::identities::Tokens;
use crate::replication::tls::{self, Side};
use crate::replication::transport::Stream;
use crate::replication::ReplError;

/// The TLS handshake on a new connection (none on a plain port). A failure is logged by the
/// caller as the check that failed; the standby learns it from the TLS alert.
pub(super) async fn open(
    shared: &Shared,
    tcp: TcpStream,
) -> Result<(Stream, Option<String>), ReplError> {
    let Some(server) = &shared.tls else {
        return Ok((Stream::Plain(tcp), None));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server.config());
    let tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| ReplError::io("TLS handshake", e).tls_told(Side::Primary))?;
    let name = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(cert) if server.requires_client_certificates() => {
            Some(tls::peer_name(cert).map_err(|m| ReplError::Tls {
                message: format!("TLS: {m}"),
                certificate: true,
            })?)
        }
        _ => None,
    };
    Ok((Stream::TlsServer(Box::new(tls)), name))
}

/// The tokens a connection is authenticated with: the shared token, or the token directory
/// as it is now. A file of the directory that cannot be used is logged and skipped, so that
/// one mistake does not lock every standby out.
pub(super) async fn tokens(shared: &Arc<Shared>) -> Tokens {
    match &shared.token_dir {
        Some(dir) => {
            let dir = dir.clone();
            match tokio::task::spawn_blocking(move || dir.load_lenient()).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "reading the token directory failed");
                    Tokens::Named(Vec::new())
                }
            }
        }
        None => Tokens::from(shared.config.auth_token.clone()),
    }
}

/// The standby's name: from its certificate, from its own token, or none (a shared token or
/// no authentication). Both must agree when both give one.
pub(super) fn name(cert: Option<String>, token: Option<String>) -> Result<Option<String>, String> {
    match (cert, token) {
        (Some(c), Some(t)) if c != t => Err(format!(
            "the standby's certificate names {c:?}, but it proved it holds the token of {t:?}"
        )),
        (c, t) => Ok(c.or(t)),
    }
}

/// One streaming session, as the revocation checks see it.
struct Live {
    name: String,
    /// Named by a token of the directory (else by its certificate only).
    by_token: bool,
    cut: Arc<Cut>,
}

/// Ends one session: `revoked` and `superseded` say why it was cut.
#[derive(Debug)]
pub(super) struct Cut {
    pub(super) tx: watch::Sender<bool>,
    pub(super) revoked: AtomicBool,
    /// A later connection of the same standby id took this one's place.
    pub(super) superseded: AtomicBool,
}

/// The named sessions of a shipper.
#[derive(Default)]
pub(super) struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
    /// The one connection that speaks for each standby id: its key and its cut.
    by_id: Mutex<HashMap<String, (u64, Arc<Cut>)>>,
}

/// A session's registration, removed when dropped.
pub(super) struct Registered<'a> {
    sessions: &'a Sessions,
    key: u64,
    pub(super) cut: Arc<Cut>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        crate::sync::lock(&self.sessions.live).remove(&self.key);
        let mut ids = crate::sync::lock(&self.sessions.by_id);
        ids.retain(|_, (key, _)| *key != self.key);
    }
}

impl Registered<'_> {
    /// Makes this connection the one that speaks for standby `id`, and cuts the one that did
    /// (returns true when there was one): a standby that reconnects before the primary noticed
    /// its old connection was gone (a network that dropped it silently) must not have that
    /// stale connection's end mark it disconnected, nor stay a candidate in the synchronous
    /// policy through it.
    pub(super) fn take_over(&self, id: &str) -> bool {
        let mut ids = crate::sync::lock(&self.sessions.by_id);
        let old = ids.insert(id.to_string(), (self.key, self.cut.clone()));
        match old {
            Some((key, cut)) if key != self.key => {
                cut.superseded.store(true, Ordering::Release);
                let _ = cut.tx.send(true);
                true
            }
            _ => false,
        }
    }

    /// Runs `f` if this connection still speaks for standby `id`, under the lock a later
    /// connection takes to replace it (so that `f`, marking the standby disconnected, cannot
    /// undo what the later one marked); false, `f` not run, when it was replaced.
    pub(super) fn while_current(&self, id: &str, f: impl FnOnce()) -> bool {
        let ids = crate::sync::lock(&self.sessions.by_id);
        let current = ids.get(id).is_some_and(|(key, _)| *key == self.key);
        if current {
            f();
        }
        current
    }
}

impl Sessions {
    /// Registers a session of the standby `name`; its receiver turns true when the shipper
    /// stops or the standby is revoked.
    pub(super) fn register(
        &self,
        name: Option<&str>,
        by_token: bool,
        mut shutdown: watch::Receiver<bool>,
    ) -> (Registered<'_>, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(*shutdown.borrow());
        let cut = Arc::new(Cut {
            tx,
            revoked: AtomicBool::new(false),
            superseded: AtomicBool::new(false),
        });
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = name {
            crate::sync::lock(&self.live).insert(
                key,
                Live {
                    name: n.to_string(),
                    by_token,
                    cut: cut.clone(),
                },
            );
        }
        let c2 = cut.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => { let _ = c2.tx.send(true); }
                _ = c2.tx.closed() => {}
            }
        });
        (
            Registered {
                sessions: self,
                key,
                cut,
            },
            rx,
        )
    }

    /// Cuts every session named by a token whose file is gone from the directory.
    pub(super) fn revoke_missing(&self, holds: impl Fn(&str) -> bool) {
        for l in crate::sync::lock(&self.live).values() {
            if l.by_token && !l.cut.revoked.load(Ordering::Acquire) && !holds(&l.name) {
                tracing::warn!(standby = %l.name, "the standby's token was removed from the token directory: its stream is cut");
                l.cut.revoked.store(true, Ordering::Release);
                let _ = l.cut.tx.send(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_connection_of_a_standby_takes_its_place_and_the_earlier_one_marks_nothing() {
        let sessions = Sessions::default();
        let (_tx, rx) = watch::channel(false);
        let (a, mut a_stop) = sessions.register(None, false, rx.clone());
        assert!(!a.take_over("s1"));
        // Still current: its end marks the standby.
        let mut marked = 0;
        assert!(a.while_current("s1", || marked += 1));
        let (b, _) = sessions.register(None, false, rx.clone());
        assert!(b.take_over("s1"), "b takes a's place");
        assert!(*a_stop.borrow_and_update(), "a is asked to stop");
        // a's end marks nothing now: b speaks for the standby.
        assert!(!a.while_current("s1", || marked += 1));
        assert_eq!(marked, 1);
        drop(a);
        // a's registration gone, b still speaks for it.
        assert!(b.while_current("s1", || marked += 1));
        drop(b);
        let (c, _) = sessions.register(None, false, rx);
        assert!(!c.take_over("s1"), "nothing left to take the place of");
    }

    #[test]
    fn certificate_and_token_names_must_agree() {
        assert_eq!(name(None, None), Ok(None));
        assert_eq!(name(Some("a".into()), None), Ok(Some("a".into())));
        assert_eq!(name(None, Some("b".into())), Ok(Some("b".into())));
        assert_eq!(
            name(Some("a".into()), Some("a".into())),
            Ok(Some("a".into()))
        );
        assert!(name(Some("a".into()), Some("b".into()))
            .unwrap_err()
            .contains("\"a\""));
    }

    #[tokio::test]
    async fn revoking_cuts_only_the_missing_name() {
        let s = Sessions::default();
        let (_sd_tx, sd) = watch::channel(false);
        let (ra, mut a) = s.register(Some("a"), true, sd.clone());
        let (_rb, b) = s.register(Some("b"), true, sd.clone());
        let (_rc, c) = s.register(Some("c"), false, sd.clone());
        s.revoke_missing(|n| n != "a" && n != "c");
        a.wait_for(|v| *v).await.unwrap();
        assert!(ra.cut.revoked.load(Ordering::Acquire));
        assert!(!*b.borrow(), "b keeps its stream");
        assert!(
            !*c.borrow(),
            "a certificate-named session is not cut by the token directory"
        );
        drop(ra);
        assert_eq!(crate::sync::lock(&s.live).len(), 2);
    }
}
