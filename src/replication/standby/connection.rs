//! One connection to the primary: connect, handshake, first contact, then receive segments
//! until the connection ends. Three tasks share the connection: this one reads and checks the
//! primary's messages (through the [`Receiver`]) and queues segment bytes for the store task,
//! and the status sender reports the standby's positions whenever they move and every
//! heartbeat interval.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::apply::Jobs;
use super::directory::first_contact;
use super::receiver::{LastWord, Received, Receiver};
use super::store::{store_ended, StoreQueue};
use super::{lock, Shared, StandbyPhase};
use crate::replication::frame::write_message;
use crate::replication::handshake::{self, Introduction, Welcomed};
use crate::replication::messages::{ErrorCode, Message};
use crate::replication::tls::{self, Side};
use crate::replication::transport::{Stream, WriteHalf};
use crate::replication::{codec, read_msg, ReplError};
use crate::Lsn;

/// One connection: handshake, then receive segments until the connection ends. A failure
/// caused by TLS says which TLS check failed.
pub(super) async fn connect_and_stream(
    shared: &Arc<Shared>,
    jobs: &Jobs,
    shutdown: &mut watch::Receiver<bool>,
    streamed: &mut bool,
) -> Result<(), ReplError> {
    stream_from_primary(shared, jobs, shutdown, streamed)
        .await
        .map_err(|e| e.tls_told(Side::Standby))
}

/// TCP, then TLS when configured (its files read again for each connection).
async fn open(shared: &Shared) -> Result<Stream, ReplError> {
    let cfg = &shared.config;
    refuse_own_address(&shared.dd, &cfg.primary).await?;
    dial(&cfg.primary, cfg.tls.as_ref(), cfg.peer_timeout).await
}

/// The address a connection to `ip` reaches: an IPv4-mapped IPv6 address is its IPv4 one,
/// and an unspecified address is this machine's loopback of its family.
fn reached(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => reached(IpAddr::V4(v4)),
            None if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            None => ip,
        },
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(_) => ip,
    }
}

/// True when a connection to `to` reaches a listener bound to `listener` on this machine.
fn listener_takes(listener: std::net::SocketAddr, to: std::net::SocketAddr) -> bool {
    let (at, ip) = (reached(listener.ip()), reached(to.ip()));
    // A wildcard listener takes connections to every local address of its family (`[::]`
    // IPv4 ones too, as Linux binds it by default).
    let wildcard =
        listener.ip().is_unspecified() && local(ip) && (listener.is_ipv6() || ip.is_ipv4());
    listener.port() == to.port() && (at == ip || wildcard)
}

/// True for an address of this machine (only those can be bound).
fn local(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Refuses for good a primary address at which this very directory is served (by a `serve`
/// on it, started before or after this standby): the standby would be following itself.
/// Checked at each connection, as such a `serve` may start at any time.
async fn refuse_own_address(dd: &crate::datadir::DataDir, primary: &str) -> Result<(), ReplError> {
    let served = dd.served_addresses();
    if served.is_empty() {
        return Ok(());
    }
    // An address that does not resolve is for the connection to report.
    let Ok(addrs) = tokio::net::lookup_host(primary).await else {
        return Ok(());
    };
    for a in addrs {
        if let Some(s) = served.iter().find(|s| listener_takes(**s, a)) {
            return Err(ReplError::refused(
                ErrorCode::Identity,
                format!(
                    "--primary {primary} is where {} itself is served (a `walship serve` on it listens at {s}): a standby may not follow its own directory; point it at its primary",
                    dd.root().display()
                ),
            ));
        }
    }
    Ok(())
}

/// TCP to `primary`, then TLS with `tls` when given; `t` bounds each.
pub(crate) async fn dial(
    primary: &str,
    tls: Option<&tls::ClientTlsFiles>,
    t: Duration,
) -> Result<Stream, ReplError> {
    let tcp = match tokio::time::timeout(t, TcpStream::connect(primary)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ReplError::io(format!("connect to {primary}"), e)),
        Err(_) => {
            return Err(ReplError::Timeout(format!(
                "connecting to {primary} took longer than {t:?}"
            )))
        }
    };
    let _ = tcp.set_nodelay(true);
    let Some(files) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    if files.insecure_skip_verify {
        tracing::warn!(primary = %primary, "TLS without verifying the primary's certificate (--tls-insecure-skip-verify): anyone on the path can pose as the primary");
    }
    let connector = tokio_rustls::TlsConnector::from(tls::client_config(files)?);
    let name = tls::server_name(files, primary)?;
    match tokio::time::timeout(t, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Stream::TlsClient(Box::new(s))),
        // Closed in the middle of the handshake: most likely a port without TLS, whose
        // primary read the handshake as a frame it does not know.
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Err(ReplError::io(
                format!("TLS handshake with the primary (the primary closed the connection: is TLS on at {primary}? a primary without --tls-cert speaks plain TCP)"),
                e,
            ))
        }
        Ok(Err(e)) => Err(ReplError::io("TLS handshake with the primary", e)),
        Err(_) => Err(ReplError::Timeout(format!(
            "the TLS handshake with {primary} took longer than {t:?}"
        ))),
    }
}

async fn stream_from_primary(
    shared: &Arc<Shared>,
    jobs: &Jobs,
    shutdown: &mut watch::Receiver<bool>,
    streamed: &mut bool,
) -> Result<(), ReplError> {
    let cfg = &shared.config;
    let (max, t) = (cfg.max_frame, cfg.peer_timeout);
    // The checksum of the copy of the primary's open segment, by which the primary tells a
    // copy of records it never wrote (nothing writes the copy between connections).
    let flushed_at_start = Lsn(shared.flushed.load(Ordering::Acquire));
    let copy_checksum = match shared.held().control {
        Some(control) => {
            let dd = shared.dd.clone();
            tokio::task::spawn_blocking(move || {
                super::partial::copy_checksum_at(&dd, &control, flushed_at_start)
            })
            .await
            .map_err(|e| {
                ReplError::io(
                    "read the copy of the open segment",
                    std::io::Error::other(e),
                )
            })??
        }
        None => None,
    };
    // A stop asked for while connecting or in the handshake (a primary that does not answer)
    // ends it at once, as it does while streaming.
    let mut stream = tokio::select! {
        s = open(shared) => s?,
        _ = shutdown.wait_for(|s| *s) => return Ok(()),
    };
    // A directory being adopted holds the records of its open segment too: judged against
    // the primary's path with them, so that records past a switch point are refused.
    let adopted_end = || {
        let size = shared.held().control.map_or(0, |c| c.segment_size);
        lock(&shared.adopting)
            .as_ref()
            .and_then(|a| a.open.as_ref())
            .map(|o| o.name.segment_no.start_lsn_saturating(size) + o.valid_end as u64)
    };
    let handshake = handshake::connect(&mut stream, cfg.auth_token.as_ref(), t, || {
        let held = shared.held();
        let flushed = Lsn(shared.flushed.load(Ordering::Acquire));
        let held_lsn = adopted_end().map_or(flushed, |e| e.max(flushed));
        Introduction {
            standby_id: shared.id,
            control: held.control,
            next_segment: held.next_segment,
            prev_checksum: held.prev_checksum,
            copy_checksum: copy_checksum.filter(|_| flushed == flushed_at_start),
            flushed_lsn: flushed,
            held_lsn,
            applied_lsn: Lsn(shared.applied.load(Ordering::Acquire)),
            max_frame: max,
            name: shared.name.clone(),
            histories: lock(&shared.histories).clone(),
        }
    });
    let handshake = tokio::select! {
        r = handshake => r,
        _ = shutdown.wait_for(|s| *s) => return Ok(()),
    };
    let welcomed = handshake
    .map_err(|e| match e {
        // The primary judged by the sealed segments it was told of: the records of the open
        // segment go on past them.
        ReplError::PeerRefused {
            peer,
            code,
            message,
        } if ReplError::refused(code, message.clone()).is_diverged() => {
            let flushed = Lsn(shared.flushed.load(Ordering::Acquire));
            let message = match adopted_end().filter(|e| *e > flushed) {
                Some(end) => format!(
                    "{message} (counting its open segment, this directory's records end at {end}: the diverged range ends there)"
                ),
                None => message,
            };
            ReplError::PeerRefused {
                peer,
                code,
                message,
            }
        }
        other => other,
    })?;
    let Welcomed {
        version,
        ref sent,
        sealed_lsn,
        ..
    } = welcomed;
    first_contact(shared, jobs, &welcomed).await?;
    shared.primary_sealed.store(sealed_lsn.0, Ordering::Release);
    *streamed = true;
    shared.set_phase(StandbyPhase::Streaming, None);
    tracing::info!(primary = %cfg.primary, "streaming from the primary");

    let (mut rd, wr) = stream.split();
    let (last_word, last_rx) = tokio::sync::oneshot::channel();
    let mut writer = tokio::spawn(send_status(shared.clone(), wr, last_rx));
    let _sender_guard = AbortOnDrop(writer.abort_handle());
    let (queue, mut store) = StoreQueue::spawn(shared, jobs, max);
    // What the primary continues from: the copy of the open segment it was told of.
    let size = shared.held().control.map_or(0, |c| c.segment_size);
    let held = sent
        .next_segment
        .map(|n| Lsn(n.saturating_mul(size)))
        .filter(|start| sent.flushed_lsn > *start)
        .map_or(0, |start| sent.flushed_lsn - start);
    let mut rx = Receiver::new(
        shared.held().control,
        sent.next_segment,
        held,
        welcomed.path.clone(),
    );
    let result = loop {
        let body = tokio::select! {
            r = read_msg("primary", &mut rd, max, t, "segments or a keepalive") => r,
            _ = shutdown.changed() => break Ok(()),
            r = &mut writer => break Err(match r {
                Ok(Err(e)) => e,
                _ => ReplError::Internal("the status sender stopped".into()),
            }),
            r = &mut store => break Err(store_ended(r)),
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => break Err(e),
        };
        let r = match codec::decode(&body).map(|m| rx.receive(m)) {
            Ok(Ok(Received::PrimarySealed(lsn))) => {
                shared.primary_sealed.store(lsn.0, Ordering::Release);
                Ok(())
            }
            Ok(Ok(Received::Start { name, len })) => queue.start(name, len).await,
            Ok(Ok(Received::Data(data))) => queue.data(data).await,
            Ok(Ok(Received::Open { name, offset, data })) => queue.open(name, offset, data).await,
            Ok(Ok(Received::Resume { name, offset, len })) => queue.resume(name, offset, len).await,
            Ok(Err(e)) => Err(e),
            Err(e) => Err(ReplError::refused(ErrorCode::Protocol, e.to_string())),
        };
        if let Err(e) = r {
            // A queue refused because the store task ended: the task's own error is the cause
            // (a failed write or sync, to be retried after a reconnect), not the refusal.
            if queue.store_ended() {
                break Err(store_ended((&mut store).await));
            }
            break Err(e);
        }
    };
    // A segment refused for its bytes: tell the primary where and why before closing, so that
    // it reports damage rather than a dropped connection.
    if let Some(word) = LastWord::for_end(version, &result) {
        if last_word.send(word).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        }
    }
    writer.abort();
    // Wait until the sender is gone: it holds the directory (through `shared`), and a standby
    // that has stopped must have let go of it, or a new one on the same directory is refused.
    if !writer.is_finished() {
        let _ = (&mut writer).await;
    }
    // Let the store task finish what it holds before a new connection reads the positions.
    drop(queue);
    if !store.is_finished() {
        store.await.map_err(|e| store_ended(Err(e)))??;
    }
    result
}

/// Sends a Status at start, whenever a position moves, and every heartbeat interval; and the
/// last word when the connection ends on a refused segment.
async fn send_status(
    shared: Arc<Shared>,
    mut wr: WriteHalf,
    mut last: tokio::sync::oneshot::Receiver<LastWord>,
) -> Result<(), ReplError> {
    let mut bump = shared.bump.subscribe();
    let mut beat = tokio::time::interval(shared.config.heartbeat_interval);
    let t = shared.config.peer_timeout;
    loop {
        // Applied, then flushed, then written: each is at most the next at any moment and
        // none moves backwards, so read in this order they keep that order in the report.
        let applied = shared.applied.load(Ordering::Acquire);
        let flushed = shared.flushed.load(Ordering::Acquire);
        let m = Message::Status {
            written_lsn: Lsn(shared.written.load(Ordering::Acquire).max(flushed)),
            flushed_lsn: Lsn(flushed),
            applied_lsn: Lsn(applied),
            now_us: crate::now_us(),
        };
        match tokio::time::timeout(t, write_message(&mut wr, &m)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ReplError::Timeout(format!(
                    "the primary took no data for {t:?}"
                )))
            }
        }
        tokio::select! {
            _ = beat.tick() => {}
            r = bump.changed() => if r.is_err() { return Ok(()) },
            w = &mut last => {
                let Ok(w) = w else { return Ok(()) };
                let _ = tokio::time::timeout(t, write_message(&mut wr, &w.message())).await;
                return Ok(());
            }
        }
    }
}

/// Aborts a task when dropped: the status sender must not outlive its connection, also when the
/// connection's future is dropped before its end (the standby stopping on a failure elsewhere).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::listener_takes;

    #[test]
    fn which_listeners_a_connection_reaches() {
        let t = |l: &str, to: &str| listener_takes(l.parse().unwrap(), to.parse().unwrap());
        assert!(t("127.0.0.1:5433", "127.0.0.1:5433"));
        assert!(!t("127.0.0.1:5433", "127.0.0.1:5434"));
        // An unspecified or IPv4-mapped address reaches what its plain form does.
        assert!(t("127.0.0.1:5433", "0.0.0.0:5433"));
        assert!(t("127.0.0.1:5433", "[::ffff:127.0.0.1]:5433"));
        assert!(t("[::1]:5433", "[::]:5433"));
        // A wildcard takes every local address of its family; `[::]` IPv4 ones too.
        assert!(t("0.0.0.0:5433", "127.0.0.1:5433"));
        assert!(!t("0.0.0.0:5433", "[::1]:5433"));
        assert!(t("[::]:5433", "[::1]:5433"));
        assert!(t("[::]:5433", "127.0.0.1:5433"));
        // Another address of the loopback net is another listener.
        assert!(!t("127.0.0.1:5433", "127.0.0.2:5433"));
        // An address of no interface here is no listener here.
        assert!(!t("0.0.0.0:5433", "192.0.2.1:5433"));
    }
}
