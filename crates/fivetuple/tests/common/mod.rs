//! Test support: a fresh network namespace per test (from
//! `fivetuple-testkit`) and a loopback sink server that records the source
//! address of every connection it accepts.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use fivetuple_testkit::{raise_fd_limit, root_or_skip, set_sysctl, ss_count};

/// Runs `f` inside a fresh network namespace with loopback up and the given
/// `net.ipv4.*` sysctls written ([`fivetuple_testkit::in_fresh_netns`]).
/// Returns `None` (test skipped) when not root outside CI.
pub fn in_netns<T: Send>(
    test: &str,
    sysctls: &[(&str, &str)],
    f: impl FnOnce() -> T + Send,
) -> Option<T> {
    if !root_or_skip(test) {
        return None;
    }
    Some(fivetuple_testkit::in_fresh_netns(sysctls, f))
}

/// What the sink does with an accepted connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read until the client closes, then close: the client closes first and
    /// its side holds the TIME_WAIT.
    ReadToEof,
    /// Keep the connection open until the sink stops.
    Hold,
}

/// A loopback server that records the peer address of each accepted
/// connection, as the server saw it.
pub struct Sink {
    pub addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    listener: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Listens on `addr` (use port 8080-ish, outside the test's port ranges).
    pub fn start(addr: &str, mode: Mode) -> Sink {
        let listener = listen(addr).unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (l, p) = (listener.try_clone().unwrap(), Arc::clone(&peers));
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            // accept() fails once stop() shuts the listener down.
            while let Ok((mut s, peer)) = l.accept() {
                p.lock().unwrap().push(peer);
                match mode {
                    Mode::ReadToEof => {
                        let mut buf = [0u8; 256];
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    }
                    Mode::Hold => held.push(s),
                }
            }
        });
        Sink {
            addr,
            peers,
            listener,
            thread: Some(thread),
        }
    }

    /// Source addresses of the connections accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// Waits until `n` connections were accepted (bounded: 10 s).
    pub fn wait_for(&self, n: usize) -> Vec<SocketAddr> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let peers = self.peers();
            if peers.len() >= n || std::time::Instant::now() > deadline {
                return peers;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Stops accepting and closes held connections.
    pub fn stop(mut self) -> Vec<SocketAddr> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Vec<SocketAddr> {
        // shutdown() on a listening socket wakes a blocked accept() on Linux.
        let _ = socket2::SockRef::from(&self.listener).shutdown(Shutdown::Read);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peers()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A listener with a deep accept queue (4096, the namespace's default
/// `somaxconn`): when the accept thread is briefly descheduled on a busy
/// machine, a short queue overflows, the SYN is dropped and the client waits
/// a whole second for the retransmission.
fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// One close-per-call exchange, client closing first: send a byte, send FIN
/// (`shutdown(Write)`), wait for the server's FIN, close. The client's side
/// ends in TIME_WAIT. Waiting for the server's FIN keeps a fast client from
/// coming back to a port whose previous connection the server has not yet
/// closed (that 4-tuple is still in use: FIN_WAIT2, not TIME_WAIT).
pub fn call(stream: TcpStream) {
    use std::io::Write;
    let mut s = stream;
    let _ = s.write_all(b"x");
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = [0u8; 64];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// Number of open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}
