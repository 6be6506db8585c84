//! A TCP proxy that a test puts between two `walship` processes (a standby and `serve`) to
//! misbehave on purpose: slow the primary-to-standby direction down, pause it, cut each
//! connection after a random number of bytes, flip one byte of the first connection, cut every
//! open connection at once, refuse new ones for a while, or point at another upstream. The
//! standby-to-primary direction is always forwarded untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the upstream-to-client direction is disturbed; the default forwards it untouched.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyMode {
    /// Cut each connection after a random count of bytes in [1, max) sent downstream.
    pub cut_after_max: Option<u64>,
    /// Forward at most this many bytes per 10 ms downstream.
    pub throttle: Option<usize>,
    /// Flip one bit of the byte at this offset of the first connection's downstream bytes.
    pub flip_first_at: Option<usize>,
}

/// The proxy, listening on `addr`; stopped, with every connection cut, when dropped.
pub struct Proxy {
    /// The address clients connect to.
    pub addr: String,
    /// While set, nothing more goes downstream.
    pub paused: Arc<AtomicBool>,
    /// How many connections were cut by `cut_after_max`.
    pub cuts: Arc<AtomicU64>,
    /// Bytes forwarded downstream (primary to standby), over every connection.
    pub down_bytes: Arc<AtomicU64>,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    /// A proxy forwarding to `upstream` (an address such as `serve` prints).
    pub fn to(upstream: &str, mode: ProxyMode) -> Proxy {
        let up: SocketAddr = upstream.parse().expect("upstream address");
        Proxy::start(Some(up), mode)
    }

    /// A proxy forwarding to `upstream`; without one it drops every connection until
    /// [`Proxy::set_upstream`] gives one.
    pub fn start(upstream: Option<SocketAddr>, mode: ProxyMode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let upstream = Arc::new(Mutex::new(upstream));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let refuse_until = Arc::new(Mutex::new(None::<Instant>));
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let down_bytes = Arc::new(AtomicU64::new(0));
        let (u, c, r, s) = (
            upstream.clone(),
            conns.clone(),
            refuse_until.clone(),
            stop.clone(),
        );
        let (paused2, cuts2, bytes2) = (paused.clone(), cuts.clone(), down_bytes.clone());
        let thread = std::thread::spawn(move || {
            let mut first = true;
            while !s.load(Ordering::Acquire) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                if lock(&r).is_some_and(|t| Instant::now() < t) {
                    continue; // refused: dropped at once
                }
                let Some(up) = *lock(&u) else { continue };
                let Ok(server) = TcpStream::connect_timeout(&up, Duration::from_secs(1)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                {
                    let mut all = lock(&c);
                    all.retain(|t: &TcpStream| t.peer_addr().is_ok());
                    if let (Ok(a), Ok(b)) = (client.try_clone(), server.try_clone()) {
                        all.push(a);
                        all.push(b);
                    }
                }
                let down = Downstream {
                    budget: mode
                        .cut_after_max
                        .map(|m| rand::random::<u64>() % m.max(2) + 1),
                    throttle: mode.throttle,
                    flip_at: if first { mode.flip_first_at } else { None },
                    paused: paused2.clone(),
                    cuts: cuts2.clone(),
                    bytes: bytes2.clone(),
                    stop: s.clone(),
                };
                first = false;
                std::thread::spawn(move || pump(client, s2));
                std::thread::spawn(move || down.pump(server, c2));
            }
        });
        Proxy {
            addr,
            paused,
            cuts,
            down_bytes,
            upstream,
            conns,
            refuse_until,
            stop,
            thread: Some(thread),
        }
    }

    /// Where new connections go from now on; `None` drops them.
    pub fn set_upstream(&self, a: Option<SocketAddr>) {
        *lock(&self.upstream) = a;
    }

    /// Cuts every open connection; returns how many there were.
    pub fn cut(&self) -> usize {
        let all = std::mem::take(&mut *lock(&self.conns));
        for s in &all {
            let _ = s.shutdown(Shutdown::Both);
        }
        all.len() / 2
    }

    /// Drops every new connection at once for `d`.
    pub fn refuse_for(&self, d: Duration) {
        *lock(&self.refuse_until) = Some(Instant::now() + d);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Copies one direction until either side closes, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// The upstream-to-client direction of one connection and how it is disturbed.
struct Downstream {
    /// Bytes to send before the connection is cut.
    budget: Option<u64>,
    throttle: Option<usize>,
    flip_at: Option<usize>,
    paused: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Downstream {
    /// Copies upstream to client (throttled, paused, flipped and cut as told) until either side
    /// closes, then closes both.
    fn pump(self, mut from: TcpStream, mut to: TcpStream) {
        let mut sent = 0u64;
        let mut buf = vec![0u8; self.throttle.unwrap_or(64 << 10)];
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            while self.paused.load(Ordering::Relaxed) && !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some(at) = self.flip_at {
                let seen = sent as usize;
                if seen <= at && at < seen + n {
                    buf[at - seen] ^= 0x01;
                }
            }
            let n = match self.budget {
                Some(b) if sent + n as u64 >= b => {
                    let _ = to.write_all(&buf[..(b - sent) as usize]);
                    self.bytes.fetch_add(b - sent, Ordering::Relaxed);
                    self.cuts.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                _ => n,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
            if self.throttle.is_some() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
}
