//! Framing: each message travels as a 4-byte little-endian body length, then the body. The
//! length is checked against the maximum before any buffer is allocated, and the body buffer
//! grows only as bytes actually arrive.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, CodecError};
use super::messages::Message;

/// Default largest frame body a side accepts.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;
/// The largest value the maximum may be configured to: the largest body the codec decodes.
pub use super::codec::MAX_FRAME_LIMIT;
/// The smallest value the maximum may be configured to (a segment chunk must fit).
pub const MIN_FRAME_LIMIT: usize = 64 << 10;
/// The largest frame either side accepts before the handshake is done: every handshake
/// message is far smaller, and an unauthenticated peer gets no large buffer.
pub const HANDSHAKE_MAX_FRAME: usize = 4096;
/// Bytes of a SegmentData frame body besides the data.
pub const DATA_OVERHEAD: usize = 4 + 8 + 8 + 8;

/// Checks a configured maximum frame size against the range both sides accept.
pub fn check_max_frame(max: usize) -> Result<(), String> {
    if (MIN_FRAME_LIMIT..=MAX_FRAME_LIMIT).contains(&max) {
        Ok(())
    } else {
        Err(format!(
            "maximum frame size {max} must be from {MIN_FRAME_LIMIT} to {MAX_FRAME_LIMIT}"
        ))
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed by the peer")]
    Closed,
    #[error("truncated frame: the connection closed after {got} of {expected} {what} bytes")]
    Truncated {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes{}", foreign_peer(*.len, .prefix))]
    TooLarge {
        len: usize,
        max: usize,
        /// The length prefix as it came.
        prefix: [u8; 4],
    },
    #[error("empty frame (length 0)")]
    Empty,
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// For a length prefix over the maximum, what the peer most likely speaks instead: TLS (a TLS
/// record begins with its content type, 20 to 23, and version 3.0 to 3.4), or, for a length no
/// walship peer ever sends (above [`MAX_FRAME_LIMIT`]), the bytes themselves (`HTTP`, `SSH-`).
fn foreign_peer(len: usize, prefix: &[u8; 4]) -> String {
    if (20..=23).contains(&prefix[0]) && prefix[1] == 3 && prefix[2] <= 4 {
        return ": the peer speaks TLS (a TLS record), and this side does not: give both sides TLS, or neither".into();
    }
    if len <= MAX_FRAME_LIMIT {
        return String::new();
    }
    format!(
        ": no walship peer sends one (the bytes were \"{}\"): is the address a walship port?",
        prefix.escape_ascii()
    )
}

/// Reads one frame body of at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Closed
            } else {
                FrameError::Truncated {
                    what: "length prefix",
                    got,
                    expected: 4,
                }
            });
        }
        got += n;
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max, prefix });
    }
    let mut body = Vec::with_capacity(len.min(64 << 10));
    let n = r.take(len as u64).read_to_end(&mut body).await?;
    if n < len {
        return Err(FrameError::Truncated {
            what: "body",
            got: n,
            expected: len,
        });
    }
    Ok(body)
}

/// Encodes `msg` as a whole frame: length prefix and body.
pub fn encode_frame(msg: &Message<'_>) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; 4];
    codec::encode_into(msg, &mut out)?;
    let len = u32::try_from(out.len() - 4)
        .map_err(|_| CodecError::Encode(format!("{} message too large", msg.name())))?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// Writes one message as a frame.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message<'_>,
) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    // A TLS stream may hold the last record back until flushed; TCP's flush is a no-op.
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that counts the bytes taken from it.
    struct Counting<'a> {
        data: &'a [u8],
        pos: usize,
    }

    impl AsyncRead for Counting<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let n = buf.remaining().min(self.data.len() - self.pos);
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn the_configured_maximum_frame_has_one_range() {
        for ok in [MIN_FRAME_LIMIT, DEFAULT_MAX_FRAME, MAX_FRAME_LIMIT] {
            assert_eq!(check_max_frame(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check_max_frame(MIN_FRAME_LIMIT - 1),
            Err(format!(
                "maximum frame size {} must be from 65536 to 67108864",
                MIN_FRAME_LIMIT - 1
            ))
        );
        assert!(check_max_frame(MAX_FRAME_LIMIT + 1).is_err());
    }

    #[test]
    fn another_protocols_first_bytes_are_named_as_such() {
        let said = |bytes: &[u8]| {
            rt().block_on(read_frame(&mut &bytes[..], HANDSHAKE_MAX_FRAME))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            said(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
            "frame of 1347703880 bytes exceeds the maximum of 4096 bytes: no walship peer sends one (the bytes were \"HTTP\"): is the address a walship port?"
        );
        // A length a walship peer could send, over this side's maximum: no such guess.
        assert_eq!(
            said(&((HANDSHAKE_MAX_FRAME + 1) as u32).to_le_bytes()),
            "frame of 4097 bytes exceeds the maximum of 4096 bytes"
        );
        // A TLS alert where a frame was expected.
        let e = said(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);
        assert!(e.ends_with(": the peer speaks TLS (a TLS record), and this side does not: give both sides TLS, or neither"), "{e}");
    }

    #[test]
    fn oversized_frame_is_refused_after_reading_only_its_prefix() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xAB; 100]);
        let mut r = Counting {
            data: &bytes,
            pos: 0,
        };
        let e = rt()
            .block_on(read_frame(&mut r, DEFAULT_MAX_FRAME))
            .unwrap_err();
        assert!(
            matches!(e, FrameError::TooLarge { len, max, .. } if len == u32::MAX as usize && max == DEFAULT_MAX_FRAME)
        );
        assert_eq!(r.pos, 4, "nothing past the length prefix may be read");
    }

    #[test]
    fn truncated_and_empty_frames() {
        let rt = rt();
        let mut r = Counting {
            data: &[5, 0],
            pos: 0,
        };
        assert!(matches!(
            rt.block_on(read_frame(&mut r, 1024)),
            Err(FrameError::Truncated {
                got: 2,
                expected: 4,
                ..
            })
        ));
        let mut r = Counting {
            data: &[5, 0, 0, 0, 1, 2],
            pos: 0,
        };
        assert!(matches!(
            rt.block_on(read_frame(&mut r, 1024)),
            Err(FrameError::Truncated {
                got: 2,
                expected: 5,
                ..
            })
        ));
        let mut r = Counting {
            data: &[0, 0, 0, 0],
            pos: 0,
        };
        assert!(matches!(
            rt.block_on(read_frame(&mut r, 1024)),
            Err(FrameError::Empty)
        ));
        let mut r = Counting { data: &[], pos: 0 };
        assert!(matches!(
            rt.block_on(read_frame(&mut r, 1024)),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn frame_round_trip() {
        let m = Message::Keepalive {
            sealed_lsn: crate::Lsn(5),
            now_us: 6,
        };
        let f = encode_frame(&m).unwrap();
        assert_eq!(
            u32::from_le_bytes([f[0], f[1], f[2], f[3]]) as usize,
            f.len() - 4
        );
        let mut r = Counting { data: &f, pos: 0 };
        let body = rt().block_on(read_frame(&mut r, 1024)).unwrap();
        assert_eq!(codec::decode(&body).unwrap(), m);
    }
}
