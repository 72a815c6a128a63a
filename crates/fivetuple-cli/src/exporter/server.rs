//! The exporter's HTTP side, built so that idle, slow or flooding clients
//! cannot starve a legitimate scrape.
//!
//! - **A deadline for the request.** A connection must finish its TLS
//!   handshake, and then send a complete request head, each within
//!   [`Limits::request_deadline`] (hyper's `header_read_timeout`), or it is
//!   closed.
//! - **Waiting connections give way.** There are [`Limits::max_connections`]
//!   slots. When they are all taken, a new connection closes the connection
//!   that has waited longest without a request in progress (idle, slowloris,
//!   or an idle keep-alive), and takes its place. Only when every slot is
//!   serving a request is the newcomer refused. A scraper that sends its
//!   request right after connecting is therefore always served, however many
//!   idle connections are held against it.
//! - **A bound per peer.** One peer address (an IPv6 /64) holds at most
//!   [`Limits::per_peer`] slots: at its bound, its own longest-waiting
//!   connection gives way first, so one host cannot push out the others.
//! - **Shared scans.** Concurrent scrapes wait for one scan
//!   ([`super::flight`]); none gets 503 because another is running.
//!
//! Every connection refused or closed early is counted in
//! `fivetuple_exporter_connections_refused_total{reason}` and logged on
//! stderr, at most once per reason every [`LOG_EVERY`].

use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::flight::Flights;
use super::negotiate;
use super::web_config::{BasicAuth, WebConfig};

/// How many connections, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once. Default 64.
    pub max_connections: usize,
    /// Connections open at once from one peer (IPv4 address or IPv6 /64). Default 16.
    pub per_peer: usize,
    /// Time for the TLS handshake, and then for a complete request head
    /// (also between requests on a kept-alive connection). Default 5 s.
    pub request_deadline: Duration,
    /// Longest wait for a scan before answering 503. Default 60 s.
    pub scrape_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            per_peer: 16,
            request_deadline: Duration::from_secs(5),
            scrape_wait: Duration::from_secs(60),
        }
    }
}

/// Why a connection was refused or closed before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Every slot was serving a request.
    SlotsFull,
    /// The peer's slots were all serving requests.
    PeerLimit,
    /// Closed to make room: it had no request in progress, and had waited longest.
    EvictedIdle,
    /// No TLS handshake or no complete request head within the deadline.
    RequestTimeout,
    /// The TLS handshake failed (no or a wrong client certificate, not TLS at all).
    TlsFailed,
}

impl Reason {
    /// Every reason, in the order of [`Reason::label`]'s series.
    pub const ALL: [Reason; 5] = [
        Reason::SlotsFull,
        Reason::PeerLimit,
        Reason::EvictedIdle,
        Reason::RequestTimeout,
        Reason::TlsFailed,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::SlotsFull => "slots_full",
            Reason::PeerLimit => "peer_limit",
            Reason::EvictedIdle => "evicted_idle",
            Reason::RequestTimeout => "request_timeout",
            Reason::TlsFailed => "tls_failed",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Reason::SlotsFull => "refused: every connection slot is serving a request",
            Reason::PeerLimit => "refused: this peer's connection slots are all serving requests",
            Reason::EvictedIdle => {
                "closed to make room: it had sent no request and had waited longest"
            }
            Reason::RequestTimeout => "closed: no complete request within the deadline",
            Reason::TlsFailed => "closed: the TLS handshake failed",
        }
    }
}

/// How often one reason may be logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counters of the HTTP side, read by the `self` collector.
#[derive(Debug, Default)]
pub struct Stats {
    refused: [AtomicU64; Reason::ALL.len()],
    logged: [Mutex<(Option<Instant>, u64)>; Reason::ALL.len()],
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Scrapes answered from a scan another request had started.
    pub shared_scrapes: AtomicU64,
    /// Requests answered 401.
    pub unauthorized: AtomicU64,
}

impl Stats {
    /// Connections refused or closed early for `reason`.
    pub fn refused(&self, reason: Reason) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts one, and logs it unless this reason was logged less than
    /// [`LOG_EVERY`] ago (the next line says how many were not logged).
    fn refuse(&self, reason: Reason, peer: SocketAddr, detail: Option<&str>) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
        let mut g = self.logged[reason as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if g.0.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            g.1 += 1;
            return;
        }
        let more = std::mem::take(&mut g.1);
        g.0 = Some(now);
        drop(g);
        let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
        let more = if more > 0 {
            format!("; {more} more for this reason since the last such line")
        } else {
            String::new()
        };
        eprintln!(
            "fivetuple exporter: connection from {peer} {}{detail}{more}",
            reason.explain()
        );
    }
}

/// One open connection, as the slot table sees it.
struct Entry {
    id: u64,
    peer: SocketAddr,
    key: IpAddr,
    serving: AtomicBool,
    /// Milliseconds since the server started when it last became idle (or was accepted).
    idle_since: AtomicU64,
    served: AtomicU64,
    close: Notify,
}

/// The peer key: an IPv4 address (IPv4-mapped ones too), or an IPv6 /64,
/// the block one host usually holds.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Connection slots. At most [`Limits::max_connections`] entries, so the
/// linear scans below touch at most that many.
#[derive(Default)]
struct Slots {
    open: Vec<Arc<Entry>>,
    next_id: u64,
}

/// What [`Slots::admit`] decided.
enum Admission {
    In {
        entry: Arc<Entry>,
        evicted: Option<Arc<Entry>>,
    },
    Refused(Reason),
}

impl Slots {
    fn admit(&mut self, peer: SocketAddr, now_ms: u64, limits: &Limits) -> Admission {
        let key = peer_key(peer.ip());
        let same_peer = self.open.iter().filter(|e| e.key == key).count();
        let victim = if same_peer >= limits.per_peer {
            match self.longest_waiting(|e| e.key == key) {
                Some(i) => Some(i),
                None => return Admission::Refused(Reason::PeerLimit),
            }
        } else if self.open.len() >= limits.max_connections {
            match self.longest_waiting(|_| true) {
                Some(i) => Some(i),
                None => return Admission::Refused(Reason::SlotsFull),
            }
        } else {
            None
        };
        let evicted = victim.map(|i| {
            let e = self.open.swap_remove(i);
            e.close.notify_one();
            e
        });
        self.next_id += 1;
        let entry = Arc::new(Entry {
            id: self.next_id,
            peer,
            key,
            serving: AtomicBool::new(false),
            idle_since: AtomicU64::new(now_ms),
            served: AtomicU64::new(0),
            close: Notify::new(),
        });
        self.open.push(entry.clone());
        Admission::In { entry, evicted }
    }

    /// The entry without a request in progress that has waited longest.
    fn longest_waiting(&self, which: impl Fn(&Entry) -> bool) -> Option<usize> {
        self.open
            .iter()
            .enumerate()
            .filter(|(_, e)| which(e) && !e.serving.load(Ordering::Relaxed))
            .min_by_key(|(_, e)| e.idle_since.load(Ordering::Relaxed))
            .map(|(i, _)| i)
    }

    fn remove(&mut self, id: u64) {
        if let Some(i) = self.open.iter().position(|e| e.id == id) {
            self.open.swap_remove(i);
        }
    }
}

/// Everything a connection needs.
pub struct Server {
    flights: Flights,
    stats: Arc<Stats>,
    auth: Option<Arc<BasicAuth>>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    /// bcrypt checks run one at a time, off the runtime thread.
    bcrypt: Semaphore,
    epoch: Instant,
    slots: Mutex<Slots>,
}

impl Server {
    /// A server answering from `flights`, configured by `web`.
    pub fn new(flights: Flights, stats: Arc<Stats>, web: WebConfig, limits: Limits) -> Server {
        Server {
            flights,
            stats,
            auth: web.auth.map(Arc::new),
            tls: web.tls.map(TlsAcceptor::from),
            limits,
            bcrypt: Semaphore::new(1),
            epoch: Instant::now(),
            slots: Mutex::new(Slots::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts connections until `stop` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        eprintln!("fivetuple exporter: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut stop => break,
            };
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            let now = self.now_ms();
            let admission = self.slots().admit(peer, now, &self.limits);
            match admission {
                Admission::Refused(reason) => {
                    self.stats.refuse(reason, peer, None);
                    drop(stream);
                }
                Admission::In { entry, evicted } => {
                    if let Some(e) = evicted {
                        self.stats.refuse(Reason::EvictedIdle, e.peer, None);
                    }
                    self.stats.open.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(self.clone().connection(stream, entry));
                }
            }
            // Let the new connection read its request before the next accept,
            // so a burst of connects cannot evict it before it is looked at.
            tokio::task::yield_now().await;
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, entry: Arc<Entry>) {
        struct Leave<'a>(&'a Server, u64);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.slots().remove(self.1);
                self.0.stats.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _leave = Leave(&self, entry.id);
        let work = async {
            match &self.tls {
                None => self.http(TokioIo::new(stream), &entry).await,
                Some(acceptor) => {
                    match tokio::time::timeout(
                        self.limits.request_deadline,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Err(_) => self.stats.refuse(
                            Reason::RequestTimeout,
                            entry.peer,
                            Some("no TLS handshake"),
                        ),
                        Ok(Err(e)) => {
                            self.stats
                                .refuse(Reason::TlsFailed, entry.peer, Some(&e.to_string()))
                        }
                        Ok(Ok(tls)) => self.http(TokioIo::new(tls), &entry).await,
                    }
                }
            }
        };
        tokio::select! {
            _ = work => {}
            // Already counted by whoever evicted it.
            _ = entry.close.notified() => {}
        }
    }

    async fn http<I>(&self, io: TokioIo<I>, entry: &Arc<Entry>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(|req| {
            // One request at a time per HTTP/1 connection: mark it busy until answered.
            struct Busy<'a>(&'a Entry, &'a Server);
            impl Drop for Busy<'_> {
                fn drop(&mut self) {
                    self.0.served.fetch_add(1, Ordering::Relaxed);
                    self.0.idle_since.store(self.1.now_ms(), Ordering::Relaxed);
                    self.0.serving.store(false, Ordering::Relaxed);
                }
            }
            entry.serving.store(true, Ordering::Relaxed);
            async move {
                let _busy = Busy(entry, self);
                Ok::<_, Infallible>(self.handle(req).await)
            }
        });
        let r = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.request_deadline)
            .serve_connection(io, svc)
            .await;
        if let Err(e) = r {
            // A kept-alive connection that goes quiet after its requests is
            // closed the same way, but that is no refusal.
            if e.is_timeout() && entry.served.load(Ordering::Relaxed) == 0 {
                self.stats
                    .refuse(Reason::RequestTimeout, entry.peer, Some("no request head"));
            }
        }
    }

    async fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(auth) = &self.auth else {
            return true;
        };
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(creds) = BasicAuth::credentials(header) else {
            return false;
        };
        if auth.cached(&creds) {
            return true;
        }
        // bcrypt takes tens of milliseconds: off the runtime thread, and one
        // at a time, so wrong passwords cannot take more than one core.
        let Ok(_permit) = self.bcrypt.acquire().await else {
            return false;
        };
        let auth = auth.clone();
        tokio::task::spawn_blocking(move || auth.verify(&creds))
            .await
            .unwrap_or(false)
    }

    async fn handle(&self, req: Request<Incoming>) -> Resp {
        if !self.authorized(&req).await {
            self.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
            let mut r = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fivetuple exporter\", charset=\"UTF-8\""),
            );
            return r;
        }
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        match req.uri().path() {
            "/metrics" if !get => not_allowed(),
            "/metrics" => {
                let format = negotiate(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
                match tokio::time::timeout(self.limits.scrape_wait, self.flights.scrape(format))
                    .await
                {
                    Err(_) => plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "the scan took longer than {} s\n",
                            self.limits.scrape_wait.as_secs()
                        ),
                    ),
                    Ok(Err(_)) => plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the scrape thread has stopped\n",
                    ),
                    Ok(Ok((outcome, shared))) => {
                        if shared {
                            self.stats.shared_scrapes.fetch_add(1, Ordering::Relaxed);
                        }
                        match outcome.as_ref() {
                            Ok(body) => {
                                let mut r = Response::new(Full::new(body.clone()));
                                r.headers_mut().insert(
                                    CONTENT_TYPE,
                                    HeaderValue::from_static(format.content_type()),
                                );
                                r
                            }
                            Err(e) => plain(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                &format!("encoding the metrics failed: {e}\n"),
                            ),
                        }
                    }
                }
            }
            "/" if !get => not_allowed(),
            "/" => {
                let mut r = plain(StatusCode::OK, INDEX);
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found: metrics are at /metrics\n",
            ),
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn plain(status: StatusCode, body: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_allowed() -> Resp {
    let mut r = plain(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: use GET\n",
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

const INDEX: &str = "<html><head><title>fivetuple exporter</title></head><body><h1>fivetuple exporter</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn limits(max: usize, per_peer: usize) -> Limits {
        Limits {
            max_connections: max,
            per_peer,
            ..Limits::default()
        }
    }

    fn admitted(a: Admission) -> (Arc<Entry>, Option<Arc<Entry>>) {
        match a {
            Admission::In { entry, evicted } => (entry, evicted),
            Admission::Refused(r) => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn a_full_table_evicts_the_longest_waiting_idle_connection() {
        let mut s = Slots::default();
        let l = limits(3, 3);
        let (a, _) = admitted(s.admit(addr("10.0.0.1:1"), 0, &l));
        let (b, _) = admitted(s.admit(addr("10.0.0.2:1"), 5, &l));
        let (c, _) = admitted(s.admit(addr("10.0.0.3:1"), 9, &l));
        // a is serving a request: it is not a candidate; b has waited longest.
        a.serving.store(true, Ordering::Relaxed);
        let (_d, ev) = admitted(s.admit(addr("10.0.0.4:1"), 10, &l));
        assert_eq!(ev.unwrap().id, b.id);
        assert_eq!(s.open.len(), 3);
        // All serving: refused.
        for e in &s.open {
            e.serving.store(true, Ordering::Relaxed);
        }
        assert!(matches!(
            s.admit(addr("10.0.0.5:1"), 11, &l),
            Admission::Refused(Reason::SlotsFull)
        ));
        let _ = c;
    }

    #[test]
    fn a_peer_at_its_bound_gives_way_to_itself_first() {
        let mut s = Slots::default();
        let l = limits(10, 2);
        let (other, _) = admitted(s.admit(addr("10.0.0.9:1"), 0, &l));
        let (p1, _) = admitted(s.admit(addr("10.0.0.1:1"), 1, &l));
        let (_p2, _) = admitted(s.admit(addr("10.0.0.1:2"), 2, &l));
        // The older connection of another peer stays; the peer's own oldest goes.
        let (_p3, ev) = admitted(s.admit(addr("10.0.0.1:3"), 3, &l));
        assert_eq!(ev.unwrap().id, p1.id);
        assert!(s.open.iter().any(|e| e.id == other.id));
        for e in s
            .open
            .iter()
            .filter(|e| e.key == peer_key(addr("10.0.0.1:1").ip()))
        {
            e.serving.store(true, Ordering::Relaxed);
        }
        assert!(matches!(
            s.admit(addr("10.0.0.1:4"), 4, &l),
            Admission::Refused(Reason::PeerLimit)
        ));
        // IPv6: one /64 is one peer; an IPv4-mapped address is the IPv4 one.
        assert_eq!(
            peer_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            peer_key("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_eq!(
            peer_key("::ffff:10.0.0.1".parse().unwrap()),
            peer_key("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn refusals_are_counted_every_time_and_logged_at_most_once_per_period() {
        let st = Stats::default();
        for _ in 0..5 {
            st.refuse(Reason::SlotsFull, addr("127.0.0.1:9"), None);
        }
        assert_eq!(st.refused(Reason::SlotsFull), 5);
        assert_eq!(st.refused(Reason::PeerLimit), 0);
        let g = st.logged[Reason::SlotsFull as usize].lock().unwrap();
        assert_eq!(g.1, 4, "4 not logged since the first line");
    }
}
