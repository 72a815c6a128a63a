//! Behaviour on the host's loopback, without root: errors that are not a port
//! problem return at once, bad choices are clear errors, explicit endpoints
//! reach the server as chosen.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::{Mode, Sink};
use fivetuple::{Choice, Connector, Stage};

/// A port nothing listens on: bind a listener, note its port, close it.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn counting() -> (
    Arc<AtomicU32>,
    impl Fn(SocketAddr, u32) -> Choice + Send + Sync,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    (calls, move |_r: SocketAddr, _a: u32| {
        c.fetch_add(1, Ordering::Relaxed);
        Choice::Kernel
    })
}

#[test]
fn refused_connection_is_attempted_once() {
    let (calls, policy) = counting();
    let connector = Connector::new(policy);
    let dest = closed_port();
    let err = connector.connect_std(dest).unwrap_err();
    assert_eq!(
        err.io_error().kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{err:#?}"
    );
    assert_eq!(err.os_error_name(), Some("ECONNREFUSED"));
    assert!(!err.is_exhaustion());
    assert_eq!((err.attempts(), calls.load(Ordering::Relaxed)), (1, 1));
    assert_eq!(err.remote_addr(), dest);
    let s = connector.stats().snapshot();
    assert_eq!(
        (s.attempts, s.exhaustion_retries, s.other_failures),
        (1, 0, 1)
    );
}

#[test]
fn refused_connection_is_attempted_once_async() {
    let (calls, policy) = counting();
    let connector = Connector::new(policy);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(connector.connect(closed_port())).unwrap_err();
    assert_eq!(
        err.io_error().kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{err:#?}"
    );
    assert_eq!((err.attempts(), calls.load(Ordering::Relaxed)), (1, 1));
}

#[test]
fn explicit_endpoint_is_the_source_the_server_sees() {
    let sink = Sink::start("127.0.0.1:0", Mode::ReadToEof);
    // Take a free port by binding it and letting go.
    let port = TcpListener::bind("127.0.0.3:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let local: SocketAddr = SocketAddr::new("127.0.0.3".parse().unwrap(), port);
    let connector = Connector::new(move |_r: SocketAddr, _a: u32| Choice::Endpoint(local));
    let stream = connector.connect_std(sink.addr).unwrap();
    assert_eq!(stream.local_addr().unwrap(), local);
    drop(stream);
    assert_eq!(sink.wait_for(1), vec![local]);
    assert_eq!(connector.stats().snapshot().opened_endpoint, 1);
}

#[test]
fn address_of_the_wrong_family_is_a_clear_error_not_retried() {
    let sink = Sink::start("127.0.0.1:0", Mode::ReadToEof);
    let connector =
        Connector::new(|_r: SocketAddr, _a: u32| Choice::Address("::1".parse().unwrap()));
    let err = connector.connect_std(sink.addr).unwrap_err();
    // The policy chose an address the destination cannot be reached from.
    assert_eq!(err.stage(), Stage::Policy);
    assert_eq!(err.attempts(), 1);
    let msg = err.io_error().to_string();
    assert!(
        msg.contains("::1") && msg.contains("IPv6") && msg.contains(&sink.addr.to_string()),
        "{msg}"
    );
}

#[test]
fn timeout_is_not_retried() {
    // A listener that never accepts, with its accept queue full: Linux drops
    // further SYNs (`tcp_conn_request`), so the next connect times out.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let dest = listener.local_addr().unwrap().as_socket().unwrap();
    let mut filler = Connector::default();
    filler.set_connect_timeout(Some(std::time::Duration::from_millis(100)));
    let _queued: Vec<_> = (0..4)
        .filter_map(|_| filler.connect_std(dest).ok())
        .collect();

    let (calls, policy) = counting();
    let mut connector = Connector::new(policy);
    connector.set_connect_timeout(Some(std::time::Duration::from_millis(200)));
    let err = connector.connect_std(dest).unwrap_err();
    assert_eq!(
        err.io_error().kind(),
        std::io::ErrorKind::TimedOut,
        "{err:#?}"
    );
    assert!(!err.is_exhaustion());
    assert_eq!((err.attempts(), calls.load(Ordering::Relaxed)), (1, 1));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(connector.connect(dest)).unwrap_err();
    assert_eq!(
        err.io_error().kind(),
        std::io::ErrorKind::TimedOut,
        "{err:#?}"
    );
    assert_eq!((err.attempts(), calls.load(Ordering::Relaxed)), (1, 2));
}

#[test]
fn zero_attempts_is_rejected_naming_the_value() {
    let mut c = Connector::default();
    let e = c.set_max_attempts(0).unwrap_err();
    assert!(e.to_string().contains("max_attempts = 0"), "{e}");
    assert_eq!(c.max_attempts(), fivetuple::DEFAULT_MAX_ATTEMPTS);
}

#[test]
fn connect_error_converts_to_io_error_keeping_it() {
    let err = Connector::default().connect_std(closed_port()).unwrap_err();
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    let inner = io
        .get_ref()
        .and_then(|e| e.downcast_ref::<fivetuple::ConnectError>());
    assert!(
        inner.is_some(),
        "the ConnectError is reachable from the io::Error"
    );
}
