//! Arbitrary bytes as replication frames and message bodies: reading and decoding never panic,
//! a frame over the maximum is refused before its body is read, a body's buffer stays within
//! twice the maximum, and every message that decodes re-encodes to exactly the same bytes.
#![no_main]
use std::future::Future;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use walship::replication::codec;
use walship::replication::frame::{encode_frame, read_frame, FrameError, MIN_FRAME_LIMIT};

/// Reading from a byte slice never waits, so polling until ready is enough.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn check_body(body: &[u8]) {
    if let Ok(m) = codec::decode(body) {
        let mut again = Vec::new();
        codec::encode_into(&m, &mut again).expect("a decoded message encodes");
        assert_eq!(again, body, "{} re-encodes differently", m.name());
        let frame = encode_frame(&m).expect("a decoded message frames");
        assert_eq!(&frame[4..], body);
        assert_eq!(u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize, body.len());
    }
}

fuzz_target!(|data: &[u8]| {
    check_body(data);
    // The same bytes as a stream of frames, under a small maximum so that over-long length
    // prefixes are common.
    let max = MIN_FRAME_LIMIT;
    let mut r = data;
    loop {
        let before = r.len();
        match block_on(read_frame(&mut r, max)) {
            Ok(body) => {
                assert!(!body.is_empty() && body.len() <= max);
                assert!(body.capacity() <= 2 * max, "buffer of {} bytes", body.capacity());
                assert_eq!(before - r.len(), 4 + body.len(), "a frame reads exactly its bytes");
                check_body(&body);
            }
            Err(FrameError::TooLarge { len, .. }) => {
                assert!(len > max);
                assert_eq!(before - r.len(), 4, "nothing past an oversized prefix is read");
                break;
            }
            Err(_) => break,
        }
    }
});
