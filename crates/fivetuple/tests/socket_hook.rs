//! `Connector::set_socket_hook`: what the hook sets shows on the connected
//! socket (read back with `getsockopt`), it runs before `bind()` and
//! `connect()`, and its error ends the connect at once, unretried.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use common::{Mode, Sink};
use fivetuple::{Choice, Connector, Stage};
use socket2::SockRef;

/// What the hook saw on the socket it was handed.
#[derive(Debug, Default, Clone)]
struct Seen {
    remotes: Vec<SocketAddr>,
    /// `getsockname()` at hook time: unbound means port 0.
    local_ports: Vec<u16>,
    /// Whether `getpeername()` failed at hook time (not yet connected).
    unconnected: Vec<bool>,
}

const RCVBUF: usize = 64 * 1024;

/// A connector rotating explicit endpoints (so a `bind()` follows the hook)
/// whose hook turns keepalive on, sets `SO_RCVBUF` and records what it saw.
fn hooked(seen: &Arc<Mutex<Seen>>) -> Connector {
    let next = Arc::new(AtomicU32::new(0));
    let mut connector = Connector::new(move |_remote: SocketAddr, _attempt: u32| {
        let port = 43000 + (next.fetch_add(1, Ordering::Relaxed) % 1000) as u16;
        Choice::Endpoint(SocketAddr::from(([127, 0, 0, 1], port)))
    });
    let seen = Arc::clone(seen);
    connector.set_socket_hook(move |socket, remote| {
        let mut s = seen.lock().unwrap();
        s.remotes.push(remote);
        let local = socket.local_addr()?.as_socket().map_or(0, |a| a.port());
        s.local_ports.push(local);
        s.unconnected.push(socket.peer_addr().is_err());
        socket.set_keepalive(true)?;
        socket.set_recv_buffer_size(RCVBUF)
    });
    connector
}

fn check_options(stream: SockRef<'_>) {
    assert!(stream.keepalive().unwrap(), "SO_KEEPALIVE not on");
    let rcvbuf = stream.recv_buffer_size().unwrap();
    // Linux doubles the value given to SO_RCVBUF (socket(7)); elsewhere it is
    // at least what was asked.
    if cfg!(target_os = "linux") {
        assert_eq!(rcvbuf, 2 * RCVBUF, "SO_RCVBUF as getsockopt reads it");
    } else {
        assert!(rcvbuf >= RCVBUF, "SO_RCVBUF {rcvbuf} < {RCVBUF}");
    }
}

fn check_seen(seen: &Mutex<Seen>, sink: &Sink, n: usize) {
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.remotes, vec![sink.addr; n]);
    assert_eq!(seen.local_ports, vec![0; n], "the hook ran after bind()");
    assert_eq!(
        seen.unconnected,
        vec![true; n],
        "the hook ran after connect()"
    );
}

#[test]
fn hook_options_show_on_the_connected_socket() {
    let sink = Sink::start("127.0.0.1:0", Mode::Hold);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let connector = hooked(&seen);
    let stream = connector.connect_std(sink.addr).unwrap();
    check_options(SockRef::from(&stream));
    let local = stream.local_addr().unwrap();
    assert_eq!(local.port(), 43000, "the policy's endpoint was bound");
    assert_eq!(
        sink.wait_for(1),
        vec![local],
        "the server saw the connection"
    );
    check_seen(&seen, &sink, 1);
}

#[test]
fn hook_options_show_on_the_connected_socket_async() {
    let sink = Sink::start("127.0.0.1:0", Mode::Hold);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let connector = hooked(&seen);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(connector.connect(sink.addr)).unwrap();
    check_options(SockRef::from(&stream));
    let local = stream.local_addr().unwrap();
    assert_eq!(
        sink.wait_for(1),
        vec![local],
        "the server saw the connection"
    );
    check_seen(&seen, &sink, 1);
}

/// `SO_MARK` needs CAP_NET_ADMIN.
#[cfg(target_os = "linux")]
#[test]
fn hook_sets_so_mark_needs_root() {
    if !common::root_or_skip("hook_sets_so_mark_needs_root") {
        return;
    }
    let sink = Sink::start("127.0.0.1:0", Mode::Hold);
    let mut connector = Connector::default();
    connector.set_socket_hook(|socket, _| socket.set_mark(0x5eed));
    let stream = connector.connect_std(sink.addr).unwrap();
    assert_eq!(SockRef::from(&stream).mark().unwrap(), 0x5eed);
    assert_eq!(sink.wait_for(1), vec![stream.local_addr().unwrap()]);
}

/// A hook error is the caller's, not a port problem: even `EADDRINUSE`,
/// which `bind()` would have retried, ends the connect on the first attempt.
#[test]
fn hook_error_ends_the_connect_without_retry() {
    let sink = Sink::start("127.0.0.1:0", Mode::Hold);
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let mut connector = Connector::new(move |_r: SocketAddr, _a: u32| {
        c.fetch_add(1, Ordering::Relaxed);
        Choice::Kernel
    });
    connector.set_socket_hook(|_, remote| {
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("no mark for {remote}"),
        ))
    });
    let err = connector.connect_std(sink.addr).unwrap_err();
    assert_eq!(err.stage(), Stage::Hook, "{err:?}");
    assert_eq!((err.attempts(), calls.load(Ordering::Relaxed)), (1, 1));
    assert_eq!(err.remote_addr(), sink.addr);
    assert_eq!(
        err.to_string(),
        format!("socket hook failed for {} after 1 attempt", sink.addr)
    );
    assert_eq!(
        err.io_error().to_string(),
        format!("no mark for {}", sink.addr)
    );
    let s = connector.stats().snapshot();
    assert_eq!((s.attempts, s.exhaustion_retries, s.opened()), (1, 0, 0));
    // Nothing reached the server.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(sink.peers().is_empty(), "{:?}", sink.peers());
}
