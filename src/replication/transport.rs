//! The byte stream a replication connection runs over: plain TCP, or TLS over TCP on either
//! side. The handshake and both sessions are written against `AsyncRead + AsyncWrite` and do
//! not know which one they have; a connection is split into a reading and a writing half the
//! same way for all three.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One connection's stream.
pub enum Stream {
    Plain(TcpStream),
    /// The primary's side of a TLS connection.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The standby's side of a TLS connection.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The reading half of a split [`Stream`].
pub type ReadHalf = tokio::io::ReadHalf<Stream>;
/// The writing half of a split [`Stream`].
pub type WriteHalf = tokio::io::WriteHalf<Stream>;

impl Stream {
    /// Splits the stream into halves that can be used from two tasks.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        tokio::io::split(self)
    }

    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
