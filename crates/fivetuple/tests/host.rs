//! `Connector::connect_host` and its blocking twin: a name is resolved and
//! its addresses tried in order, the connect timeout being one budget shared
//! by them; a blackholed address (a dummy interface in a namespace of our
//! own, where nothing answers a SYN) spends only its share.

mod common;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Mode, Sink};
use fivetuple::Connector;

#[test]
fn connect_host_resolves_a_name() {
    let sink = Sink::start("127.0.0.1:0", Mode::Hold);
    let host = format!("localhost:{}", sink.addr.port());
    let connector = Connector::default();
    let blocking = connector.connect_host_std(&host).unwrap();
    assert_eq!(blocking.peer_addr().unwrap(), sink.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tokio = rt.block_on(connector.connect_host(&host)).unwrap();
    let seen = sink.wait_for(2);
    assert_eq!(
        seen,
        vec![blocking.local_addr().unwrap(), tokio.local_addr().unwrap()],
        "the server saw both connections"
    );
    assert_eq!(connector.stats().snapshot().opened_kernel, 2);
}

#[test]
fn connect_host_rejects_a_host_without_port() {
    let connector = Connector::default();
    for bad in ["svc.internal", "svc.internal:http", "::1:80"] {
        let err = connector.connect_host_std(bad).unwrap_err();
        assert!(err.is_invalid_host(), "{bad}: {err}");
        assert_eq!(err.addresses_tried(), 0);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{bad:?}")) && msg.contains("expected host:port"),
            "{msg}"
        );
    }
    assert_eq!(connector.stats().snapshot().attempts, 0);
}

#[test]
fn refused_host_reports_the_last_connect_error() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = Connector::default()
        .connect_host_std(&closed.to_string())
        .unwrap_err();
    let inner = err.connect_error().expect("a connect error");
    assert_eq!(inner.io_error().kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(inner.remote_addr(), closed);
    assert_eq!(err.to_string(), format!("connecting to {closed} failed"));
}

/// Where SYNs vanish: 198.18.0.2, a static neighbour on one end of a veth
/// pair whose other end has no address, so nothing answers (needs root for
/// the namespace).
const BLACKHOLE: [u8; 4] = [198, 18, 0, 2];

fn add_blackhole() {
    ip(&[
        &["link", "add", "bh0", "type", "veth", "peer", "name", "bh1"],
        &["link", "set", "bh0", "up"],
        &["link", "set", "bh1", "up"],
        &["addr", "add", "198.18.0.1/24", "dev", "bh0"],
        &[
            "neigh",
            "add",
            "198.18.0.2",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "bh0",
        ],
    ]);
}

/// Runs `ip` once per argument list, failing the test on an error.
fn ip(commands: &[&[&str]]) {
    for args in commands {
        let status = std::process::Command::new("ip")
            .args(*args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}: {status}");
    }
}

#[test]
fn blackholed_host_times_out_within_the_budget_needs_root() {
    common::in_netns(
        "blackholed_host_times_out_within_the_budget_needs_root",
        &[],
        || {
            add_blackhole();
            let mut connector = Connector::default();
            connector.set_connect_timeout(Some(Duration::from_millis(500)));
            let host = SocketAddr::from((BLACKHOLE, 80)).to_string();
            let start = Instant::now();
            let err = connector.connect_host_std(&host).unwrap_err();
            let elapsed = start.elapsed();
            let inner = err.connect_error().expect("a connect error");
            assert_eq!(inner.io_error().kind(), io::ErrorKind::TimedOut, "{err:?}");
            assert!(
                elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
                "{elapsed:?}"
            );
        },
    );
}

/// The generic resolver: a hyper-util style `Service<Name>` that answers a
/// blackholed address first and loopback second. With a 1 s budget, the
/// blackhole spends its half and the loopback address still connects.
#[cfg(feature = "hyper")]
#[test]
fn http_connector_resolver_and_shared_budget_needs_root() {
    use fivetuple::http::{HttpConnector, Name};
    use std::future::{ready, Ready};
    use std::task::{Context, Poll};

    #[derive(Clone)]
    struct Fixed(
        Vec<SocketAddr>,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    );
    impl tower_service::Service<Name> for Fixed {
        type Response = std::vec::IntoIter<SocketAddr>;
        type Error = io::Error;
        type Future = Ready<io::Result<Self::Response>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, name: Name) -> Self::Future {
            self.1.lock().unwrap().push(name.as_str().to_owned());
            ready(Ok(self.0.clone().into_iter()))
        }
    }

    common::in_netns(
        "http_connector_resolver_and_shared_budget_needs_root",
        &[],
        || {
            add_blackhole();
            let sink = Sink::start("127.0.0.1:0", Mode::ReadToEof);
            let asked = std::sync::Arc::default();
            let resolver = Fixed(
                vec![
                    SocketAddr::from((BLACKHOLE, 0)),
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                ],
                std::sync::Arc::clone(&asked),
            );
            let mut http = HttpConnector::new_with_resolver(Connector::default(), resolver);
            http.set_connect_timeout(Some(Duration::from_secs(1)));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let uri = format!("http://svc.test:{}/", sink.addr.port())
                .parse()
                .unwrap();
            let start = Instant::now();
            let stream = rt.block_on(http.connect_uri(&uri)).unwrap();
            let elapsed = start.elapsed();
            assert_eq!(*asked.lock().unwrap(), vec!["svc.test".to_owned()]);
            assert_eq!(stream.info().remote_addr(), sink.addr);
            assert_eq!(sink.wait_for(1), vec![stream.info().local_addr()]);
            assert!(
                elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
                "the blackhole should spend about half of the 1 s budget: {elapsed:?}"
            );
            let s = http.stats().snapshot();
            assert_eq!((s.other_failures, s.opened_kernel), (1, 1), "{s:?}");
        },
    );
}

/// A resolver answering fixed addresses, as a dual-stack name would.
#[cfg(feature = "hyper")]
#[derive(Clone)]
struct Answers(Vec<SocketAddr>);

#[cfg(feature = "hyper")]
impl tower_service::Service<fivetuple::http::Name> for Answers {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<Self::Response>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: fivetuple::http::Name) -> Self::Future {
        std::future::ready(Ok(self.0.clone().into_iter()))
    }
}

/// The IPv6 twin of [`BLACKHOLE`] on the same veth (call after
/// [`add_blackhole`]).
#[cfg(feature = "hyper")]
const BLACKHOLE6: &str = "fd00:ff::2";

#[cfg(feature = "hyper")]
fn add_blackhole6() {
    ip(&[
        &["-6", "addr", "add", "fd00:ff::1/64", "dev", "bh0", "nodad"],
        &[
            "-6",
            "neigh",
            "add",
            BLACKHOLE6,
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            "bh0",
        ],
    ]);
}

/// Connects through the hyper connector to a name answering `addrs` (port
/// taken from the URI), with a 2 s connect timeout and the given Happy
/// Eyeballs delay: the result, the time it took and the connector's stats.
#[cfg(feature = "hyper")]
fn dual_stack_connect(
    addrs: Vec<SocketAddr>,
    port: u16,
    delay: Option<Duration>,
) -> (
    Result<fivetuple::http::HttpStream, fivetuple::http::HttpConnectError>,
    Duration,
    fivetuple::StatsSnapshot,
) {
    let mut connector = Connector::default();
    connector
        .set_connect_timeout(Some(Duration::from_secs(2)))
        .set_happy_eyeballs_delay(delay);
    let http = fivetuple::http::HttpConnector::new_with_resolver(connector, Answers(addrs));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let uri = format!("http://dual.test:{port}/").parse().unwrap();
    let start = Instant::now();
    let result = rt.block_on(http.connect_uri(&uri));
    (result, start.elapsed(), http.stats().snapshot())
}

/// Happy Eyeballs: the name answers a blackholed IPv4 address first and
/// `::1` second. With the default 250 ms delay the IPv6 attempt starts while
/// the IPv4 SYN hangs, the server on `[::1]` accepts it, and the hanging
/// attempt is dropped (no SYN-SENT left); in order, the blackhole would
/// spend half of the 2 s budget first, as the second half shows.
#[cfg(feature = "hyper")]
#[test]
fn happy_eyeballs_starts_the_other_family_after_the_delay_needs_root() {
    common::in_netns(
        "happy_eyeballs_starts_the_other_family_after_the_delay_needs_root",
        &[],
        || {
            add_blackhole();
            let sink = Sink::start("[::1]:0", Mode::ReadToEof);
            let port = sink.addr.port();
            let addrs = vec![
                SocketAddr::from((BLACKHOLE, port)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
            ];

            let (stream, elapsed, stats) = dual_stack_connect(
                addrs.clone(),
                port,
                Some(fivetuple::DEFAULT_HAPPY_EYEBALLS_DELAY),
            );
            let stream = stream.expect("the IPv6 address connects");
            assert_eq!(stream.info().remote_addr(), sink.addr);
            let peers = sink.wait_for(1);
            assert_eq!(peers, vec![stream.info().local_addr()]);
            assert!(peers[0].is_ipv6(), "{peers:?}");
            assert!(
                elapsed >= Duration::from_millis(240) && elapsed < Duration::from_millis(900),
                "the IPv6 attempt should start after the 250 ms delay, well before the 1 s share: {elapsed:?}"
            );
            assert_eq!((stats.attempts, stats.opened()), (2, 1), "{stats:?}");
            assert_eq!(
                common::ss_count("syn-sent"),
                0,
                "the losing IPv4 attempt is dropped and its socket closed"
            );
            drop(stream);

            let (stream, elapsed, _) = dual_stack_connect(addrs, port, None);
            stream.expect("in order, the IPv6 address connects after the blackhole's share");
            assert_eq!(sink.wait_for(2).len(), 2);
            assert!(
                elapsed >= Duration::from_millis(950),
                "without Happy Eyeballs the blackhole spends its 1 s share first: {elapsed:?}"
            );
        },
    );
}

/// Both families blackholed: the connect timeout bounds the whole race.
#[cfg(feature = "hyper")]
#[test]
fn happy_eyeballs_is_bounded_by_the_connect_timeout_needs_root() {
    common::in_netns(
        "happy_eyeballs_is_bounded_by_the_connect_timeout_needs_root",
        &[],
        || {
            add_blackhole();
            add_blackhole6();
            let six: std::net::Ipv6Addr = BLACKHOLE6.parse().unwrap();
            let addrs = vec![
                SocketAddr::from((BLACKHOLE, 80)),
                SocketAddr::from((six, 80)),
            ];
            let (result, elapsed, stats) =
                dual_stack_connect(addrs, 80, Some(fivetuple::DEFAULT_HAPPY_EYEBALLS_DELAY));
            let err = result.expect_err("nothing answers");
            let inner = err.connect_error().expect("a connect error");
            assert_eq!(inner.io_error().kind(), io::ErrorKind::TimedOut, "{err:?}");
            assert!(
                elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(3000),
                "the 2 s timeout bounds both attempts together: {elapsed:?}"
            );
            assert_eq!(stats.attempts, 2, "one attempt per family: {stats:?}");
        },
    );
}
