//! Hostile and well-behaved HTTP clients for the exporter's test and
//! benchmark: idle and slowloris connections held open against a server
//! (reconnected whenever it closes them, as an attacker would), flooding
//! scrapers, and a scraper that times each request. Every loop is bounded
//! in time; traffic goes to the address given (loopback in our callers).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn socket_from(src: [u8; 4]) -> socket2::Socket {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(src), 0));
    s.bind(&local.into())
        .unwrap_or_else(|e| panic!("bind {local}: {e}"));
    s
}

/// A blocking connection from `src` to `dst`, with `timeout` for the connect and each read and write.
pub fn connect_timeout(
    src: [u8; 4],
    dst: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let s = socket_from(src);
    s.connect_timeout(&dst.into(), timeout)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// One HTTP/1.1 answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body (after the head).
    pub body: String,
    /// From before connect() to the last byte.
    pub took: Duration,
}

/// `GET path` from `src` with `Connection: close` and extra header lines
/// (each ending in `\r\n`); every step bounded by `timeout`.
pub fn get(
    src: [u8; 4],
    dst: SocketAddr,
    path: &str,
    headers: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    let t = Instant::now();
    let mut s = connect_timeout(src, dst, timeout).map_err(|e| format!("connect: {e}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {dst}\r\n{headers}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read after {:?}: {e}", t.elapsed()))?;
    let took = t.elapsed();
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(Answer {
        status,
        body: body.to_string(),
        took,
    })
}

/// How an attack went.
#[derive(Debug, Default, Clone, Copy)]
pub struct AttackReport {
    /// Connections opened (first ones and reconnects).
    pub connects: u64,
    /// Connections the server closed (each was reopened).
    pub closed_by_server: u64,
}

/// Idle and slowloris connections held open until dropped (or `limit`).
pub struct Attack {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<AttackReport>>,
    open: Arc<AtomicU64>,
}

impl Attack {
    /// Connections open at this moment (connected or connecting).
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Stops the attack, closes every connection and reports.
    pub fn finish(mut self) -> AttackReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("attack thread"))
            .unwrap_or_default()
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Held {
    s: TcpStream,
    slow: bool,
}

fn open_one(src: [u8; 4], dst: SocketAddr, slow: bool) -> Option<Held> {
    let s = socket_from(src);
    s.set_nonblocking(true).ok()?;
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(_) => return None,
    }
    Some(Held { s: s.into(), slow })
}

/// Holds `idle` connections from `idle_src` that send nothing, and
/// `slowloris` connections from `slow_src` that send a request line and
/// then one header line every second, never finishing the head. Every
/// `tick`, connections the server closed are reopened. Runs until the
/// returned [`Attack`] is finished or dropped, or for `limit` at most.
pub fn hold_open(
    dst: SocketAddr,
    idle_src: [u8; 4],
    idle: usize,
    slow_src: [u8; 4],
    slowloris: usize,
    tick: Duration,
    limit: Duration,
) -> Attack {
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicU64::new(0));
    let (stop2, open2) = (stop.clone(), open.clone());
    let handle = std::thread::spawn(move || {
        let mut report = AttackReport::default();
        let want: Vec<bool> = (0..idle)
            .map(|_| false)
            .chain((0..slowloris).map(|_| true))
            .collect();
        let mut held: Vec<Option<Held>> = (0..want.len()).map(|_| None).collect();
        let started = Instant::now();
        let mut last_drip = Instant::now();
        while !stop2.load(Ordering::Relaxed) && started.elapsed() < limit {
            let drip = last_drip.elapsed() >= Duration::from_secs(1);
            if drip {
                last_drip = Instant::now();
            }
            for (slot, &slow) in held.iter_mut().zip(&want) {
                // Is it still open?
                if let Some(h) = slot {
                    let mut b = [0u8; 256];
                    let alive = match h.s.read(&mut b) {
                        Ok(0) => false,
                        Ok(_) => true,
                        Err(e) => e.kind() == ErrorKind::WouldBlock,
                    };
                    let alive = alive
                        && (!h.slow
                            || !drip
                            || match h.s.write(b"X-Slow: 1\r\n") {
                                Ok(_) => true,
                                Err(e) => e.kind() == ErrorKind::WouldBlock,
                            });
                    if !alive {
                        report.closed_by_server += 1;
                        *slot = None;
                    }
                }
                if slot.is_none() {
                    let src = if slow { slow_src } else { idle_src };
                    *slot = open_one(src, dst, slow);
                    if let Some(h) = slot {
                        report.connects += 1;
                        if slow {
                            // Ignored until connected; the drip goes on regardless.
                            let _ = h.s.write(b"GET /metrics HTTP/1.1\r\n");
                        }
                    }
                }
            }
            open2.store(
                held.iter().filter(|h| h.is_some()).count() as u64,
                Ordering::Relaxed,
            );
            std::thread::sleep(tick);
        }
        report
    });
    Attack {
        stop,
        handle: Some(handle),
        open,
    }
}

/// `threads` scrapers that GET `path` back to back from `src` until `until`;
/// returns each thread's (answers with status 200, other outcomes).
pub fn flood(
    dst: SocketAddr,
    src: [u8; 4],
    threads: usize,
    path: &str,
    until: Instant,
) -> Vec<JoinHandle<(u64, u64)>> {
    (0..threads)
        .map(|_| {
            let path = path.to_string();
            std::thread::spawn(move || {
                let (mut ok, mut other) = (0, 0);
                while Instant::now() < until {
                    match get(src, dst, &path, "", Duration::from_secs(10)) {
                        Ok(a) if a.status == 200 => ok += 1,
                        _ => other += 1,
                    }
                }
                (ok, other)
            })
        })
        .collect()
}

/// A well-behaved scraper: `count` GETs of `path`, one every `every`;
/// each result is the time to the full answer, or why it failed (not 200,
/// or no answer within `timeout`).
pub fn scrape_every(
    dst: SocketAddr,
    src: [u8; 4],
    path: &str,
    headers: &str,
    every: Duration,
    count: usize,
    timeout: Duration,
) -> Vec<Result<Duration, String>> {
    let start = Instant::now();
    (0..count)
        .map(|i| {
            let at = start + every * i as u32;
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            match get(src, dst, path, headers, timeout) {
                Ok(a) if a.status == 200 => Ok(a.took),
                Ok(a) => Err(format!("status {}", a.status)),
                Err(e) => Err(e),
            }
        })
        .collect()
}

/// The `q` quantile (0..=1) of `v`, nearest rank.
pub fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}
