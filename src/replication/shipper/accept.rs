//! The accept loop: one task per connection, up to the configured number at once. A connection
//! beyond that is refused with `Busy` on the spot, without a task or a buffer of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::session::connection;
use super::Shared;
use crate::replication::messages::{ErrorCode, Message};

pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut refused = Refusals::default();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        refused.refuse(stream, addr, shared.config.max_connections, shared.tls.is_none());
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (s2, sd) = (shared.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        connection(s2, stream, addr, sd).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
            // Reap finished connections so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Connections refused for want of a slot: each gets a `Busy` error and is closed at once, with
/// no task and no buffer of its own. Logged at most once a second, so that a flood of
/// connections cannot flood the log.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    /// On a TLS port the connection is only closed: a plain `Busy` would be garbage to a TLS
    /// client, and a TLS handshake is what the limit spares.
    fn refuse(&mut self, stream: TcpStream, addr: SocketAddr, max: usize, plain: bool) {
        let msg = Message::Error {
            code: ErrorCode::Busy,
            message: "the primary serves its maximum number of connections; retry later",
        };
        // A fresh socket's send buffer takes these few bytes at once; if not, the peer gets
        // the bare close.
        if let (true, Ok(frame)) = (plain, crate::replication::frame::encode_frame(&msg)) {
            let _ = stream.try_write(&frame);
        }
        drop(stream);
        self.since_log += 1;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(peer = %addr, refused = self.since_log, max_connections = max, "refused connections: too many connections");
            self.since_log = 0;
            self.last_log = Some(Instant::now());
        }
    }
}
