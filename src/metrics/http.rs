//! A minimal HTTP/1.1 server for `GET /metrics`: one request per connection, answered and
//! closed. `HEAD /metrics` gets a GET's headers; other paths get 404, other methods 405; a request head over 8 KiB or not read
//! within 10 s is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::DirMetrics;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the metrics address `addr` (HOST:PORT, port 0 picks a free one). Like the
/// replication port, a non-loopback address is refused unless `insecure`: the endpoint has
/// neither TLS nor authentication.
pub async fn bind(addr: &str, insecure: bool) -> Result<TcpListener, MetricsBindError> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| MetricsBindError::Resolve(addr.to_string(), e))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        return Err(MetricsBindError::Resolve(
            addr.to_string(),
            std::io::Error::other("no address"),
        ));
    };
    if !insecure {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(MetricsBindError::NotLoopback(*a));
        }
    }
    TcpListener::bind(first)
        .await
        .map_err(|e| MetricsBindError::Bind(first, e))
}

/// Failures of binding the metrics address.
#[derive(Debug, thiserror::Error)]
pub enum MetricsBindError {
    #[error("metrics address {0:?} does not resolve: {1}")]
    Resolve(String, #[source] std::io::Error),
    #[error("refusing to serve metrics on {0}, which is not a loopback address, without TLS or authentication; give --insecure (serve) or --metrics-insecure (standby, archive) to allow it anyway")]
    NotLoopback(std::net::SocketAddr),
    #[error("listen for metrics on {0}: {1}")]
    Bind(std::net::SocketAddr, #[source] std::io::Error),
}

/// Serves `metrics` on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<DirMetrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, m).await {
                tracing::debug!(error = %e, "metrics: connection dropped");
            }
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    /// `HEAD /metrics`: the headers a GET would get, no body.
    MetricsHead,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request by its request line (`METHOD TARGET HTTP/1.x`).
pub fn route(head: &str) -> Route {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics,
        "HEAD" => Route::MetricsHead,
        _ => Route::MethodNotAllowed,
    }
}

async fn answer(mut stream: TcpStream, metrics: Arc<DirMetrics>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await
    .unwrap_or(Ok(false))?;
    if !complete {
        return reply(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
        )
        .await;
    }
    let head = String::from_utf8_lossy(&head);
    let route = route(&head);
    let head_only = route == Route::MetricsHead;
    match route {
        Route::Metrics | Route::MetricsHead => {
            let m = metrics.clone();
            let body = tokio::task::spawn_blocking(move || m.scrape())
                .await
                .map_err(std::io::Error::other)?;
            match body {
                Ok(text) if head_only => {
                    let head = response_head("200 OK", CONTENT_TYPE, text.len());
                    stream.write_all(head.as_bytes()).await?;
                    stream.shutdown().await
                }
                Ok(text) => reply(&mut stream, "200 OK", CONTENT_TYPE, &text).await,
                Err(e) => {
                    tracing::error!(error = %e, "metrics: scrape failed");
                    let msg = format!("{e}\n");
                    reply(&mut stream, "500 Internal Server Error", "text/plain", &msg).await
                }
            }
        }
        Route::NotFound => reply(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
        Route::MethodNotAllowed => {
            reply(
                &mut stream,
                "405 Method Not Allowed\r\nAllow: GET, HEAD",
                "text/plain",
                "method not allowed\n",
            )
            .await
        }
        Route::BadRequest => {
            reply(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                "bad request\n",
            )
            .await
        }
    }
}

fn response_head(status: &str, content_type: &str, len: usize) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

async fn reply(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = response_head(status, content_type, body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route("HEAD /metrics HTTP/1.1\r\n\r\n"), Route::MetricsHead);
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route("GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(""), Route::BadRequest);
    }
}
