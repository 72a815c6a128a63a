//! The observer's counts against what the clients counted themselves, in a
//! fresh network namespace with a 100-port range and `tcp_tw_reuse=0`: a
//! Python client (IPv4 and IPv6), a curl loop and a static Go binary each
//! call their own upstream until the kernel has no port left. Needs root
//! (a namespace, CAP_BPF and CAP_PERFMON), python3, curl, go and ss.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fivetuple_bpf::observe::{self, Counts, Options, Stage};
use fivetuple_testkit::{have_tool, in_fresh_netns, root_or_skip};

const EADDRINUSE: i32 = 98;
const EADDRNOTAVAIL: i32 = 99;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// What a client said it did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counted {
    comm: String,
    attempts: u64,
    successes: u64,
    eaddrnotavail: u64,
    eaddrinuse: u64,
    other: u64,
}

fn parse_counted(line: &str) -> Counted {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("client output {line:?}: {e}"));
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
    Counted {
        comm: v["comm"].as_str().expect("comm").to_string(),
        attempts: n("attempts"),
        successes: n("successes"),
        eaddrnotavail: n("eaddrnotavail"),
        eaddrinuse: n("eaddrinuse"),
        other: n("other"),
    }
}

fn run_json(cmd: &mut Command) -> Counted {
    let out = cmd.output().expect("run client");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_counted(String::from_utf8_lossy(&out.stdout).trim())
}

/// Calls curl until one call fails (at most `limit`), counting by its exit
/// code and verbose output.
fn curl_loop(url: &str, limit: u64) -> Counted {
    let mut c = Counted {
        comm: "curl".into(),
        ..Counted::default()
    };
    for _ in 0..limit {
        c.attempts += 1;
        let out = Command::new("curl")
            .args(["-sv", "-o", "/dev/null", "--max-time", "5", url])
            .output()
            .expect("run curl");
        if out.status.success() {
            c.successes += 1;
            continue;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Cannot assign requested address") {
            c.eaddrnotavail += 1;
        } else {
            c.other += 1;
        }
        break;
    }
    c
}

/// Builds tests/fixtures/goclient.go as a static binary (no cgo, no libc).
fn build_go_client(dir: &Path) -> PathBuf {
    let bin = dir.join("ftgoclient");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(fixture("goclient.go"))
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off")
        .status()
        .expect("run go build (package golang-go)");
    assert!(status.success(), "go build: {status}");
    let file = Command::new("file").arg(&bin).output();
    if let Ok(out) = file {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("statically linked"), "{text}");
    }
    bin
}

struct Server(Child);

impl Server {
    fn start(listen: &[&str]) -> Server {
        let mut child = Command::new("python3")
            .arg(fixture("server.py"))
            .args(listen)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 server");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("server says ready");
        assert_eq!(line.trim(), "ready");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Local addresses of the TIME-WAIT sockets `ss` shows towards `dst`.
/// The TIME_WAIT sockets `ss` shows towards `dst`: local address and the
/// socket cookie (`sk:` in hex, with `-e`).
fn ss_time_wait_to(dst: SocketAddr) -> Vec<(SocketAddr, u64)> {
    let out = Command::new("ss")
        .args(["-Htane", "state", "time-wait", "dst"])
        .arg(dst.to_string())
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let local = fields
                .get(2)
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("ss local address in {l:?}"));
            let cookie = fields
                .iter()
                .find_map(|f| f.strip_prefix("sk:"))
                .and_then(|c| u64::from_str_radix(c, 16).ok())
                .unwrap_or_else(|| panic!("ss cookie (sk:) in {l:?}"));
            (local, cookie)
        })
        .collect()
}

#[test]
fn counts_equal_what_python_curl_and_go_clients_counted_root() {
    let test = "counts_equal_what_python_curl_and_go_clients_counted_root";
    if !root_or_skip(test)
        || !have_tool(test, "python3", "python3")
        || !have_tool(test, "curl", "curl")
        || !have_tool(test, "go", "golang-go")
        || !have_tool(test, "ss", "iproute2")
    {
        return;
    }
    let tmp = std::env::temp_dir().join(format!("fivetuple-observe-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let go = build_go_client(&tmp);
    let py_v4: SocketAddr = "127.0.0.1:18001".parse().unwrap();
    let curl_dst: SocketAddr = "127.0.0.1:18002".parse().unwrap();
    let go_dst: SocketAddr = "127.0.0.1:18003".parse().unwrap();
    let py_v6: SocketAddr = "[::1]:18004".parse().unwrap();
    let sysctls = [
        ("ip_local_port_range", "40000 40099"),
        ("tcp_tw_reuse", "0"),
    ];
    in_fresh_netns(&sysctls, || {
        let netns = observe::netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap();
        let mut observer = observe::load(Options::default().netns(Some(netns)))
            .unwrap_or_else(|e| panic!("{e:#?}"));
        let _server = Server::start(&[
            &py_v4.to_string(),
            &curl_dst.to_string(),
            &go_dst.to_string(),
            &py_v6.to_string(),
        ]);
        let limit = 300;
        let client = fixture("client.py");
        let mut counted: Vec<(SocketAddr, Counted)> = Vec::new();
        let py = |dst: SocketAddr| {
            run_json(
                Command::new("python3")
                    .arg(&client)
                    .args(["connect", &dst.ip().to_string(), &dst.port().to_string()])
                    .arg(limit.to_string()),
            )
        };
        counted.push((py_v4, py(py_v4)));
        counted.push((curl_dst, curl_loop(&format!("http://{curl_dst}/"), limit)));
        counted.push((
            go_dst,
            run_json(
                Command::new(&go)
                    .arg(go_dst.to_string())
                    .arg(limit.to_string()),
            ),
        ));
        counted.push((py_v6, py(py_v6)));
        // Every port of the range is now in TIME_WAIT (towards each
        // destination), so a port-0 bind finds none: EADDRINUSE at bind.
        let bind = run_json(
            Command::new("python3")
                .arg(&client)
                .args(["bind", "127.0.0.1"]),
        );
        assert_eq!(bind.eaddrinuse, 1, "{bind:?}");
        // The client closes first; the upstream's FIN turns each timewait
        // socket TIME_WAIT. Give the last ones a moment.
        std::thread::sleep(Duration::from_millis(300));

        let counts: BTreeMap<(String, SocketAddr), Counts> = observer
            .counts()
            .unwrap()
            .into_iter()
            .map(|(f, c)| ((f.comm, f.destination), c))
            .collect();
        let failures = observer.failures().unwrap();
        let failed = |comm: &str, dst: Option<SocketAddr>, stage: Stage, errno: i32| -> u64 {
            failures
                .iter()
                .filter(|f| {
                    f.flow.comm == comm
                        && dst.is_none_or(|d| f.flow.destination == d)
                        && f.stage == stage
                        && f.errno == errno
                })
                .map(|f| f.count)
                .sum()
        };
        for (dst, c) in &counted {
            eprintln!("{dst}: client counted {c:?}");
            assert!(
                c.successes >= 50
                    && c.eaddrnotavail >= 1
                    && c.other == 0
                    && c.attempts == c.successes + c.eaddrnotavail,
                "{dst}: the client should have run out of ports: {c:?}"
            );
            let seen = counts
                .get(&(c.comm.clone(), *dst))
                .unwrap_or_else(|| panic!("no BPF counts for {} -> {dst}: {counts:?}", c.comm));
            eprintln!("{dst}: BPF counted {seen:?}");
            assert_eq!(seen.attempts, c.attempts, "{} -> {dst} attempts", c.comm);
            assert_eq!(seen.successes, c.successes, "{} -> {dst} successes", c.comm);
            assert_eq!(
                failed(&c.comm, Some(*dst), Stage::Connect, EADDRNOTAVAIL),
                c.eaddrnotavail,
                "{} -> {dst} EADDRNOTAVAIL",
                c.comm
            );
            let ss = ss_time_wait_to(*dst);
            assert_eq!(
                seen.time_wait,
                ss.len() as u64,
                "{} -> {dst}: TIME_WAIT entries vs ss",
                c.comm
            );
            // Each TIME_WAIT ss shows has its owner under its cookie.
            for (local, cookie) in &ss {
                let owner = observer
                    .owner(*cookie)
                    .unwrap()
                    .unwrap_or_else(|| panic!("no owner for TIME_WAIT {local} -> {dst}"));
                assert_eq!(owner.comm, c.comm, "{local} -> {dst}");
                assert_ne!(owner.pid, 0, "{local} -> {dst}");
            }
        }
        assert_eq!(
            failed(&bind.comm, None, Stage::Bind, EADDRINUSE),
            1,
            "bind EADDRINUSE: {failures:?}"
        );
        let go_comm = &counted[2].1.comm;
        assert_eq!(go_comm, "ftgoclient");
        // The live stream carried each failure once (Go's three per Dial too).
        let expected = counted.iter().map(|(_, c)| c.eaddrnotavail).sum::<u64>() as usize + 1;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Vec::new();
        while events.len() < expected && Instant::now() < deadline {
            observer.wait_events(Duration::from_millis(100));
            events.extend(observer.drain_events());
        }
        assert_eq!(events.len(), expected, "{events:?}");
        for (dst, c) in &counted {
            let e = events
                .iter()
                .find(|e| e.destination == Some(*dst))
                .unwrap_or_else(|| panic!("no event for {dst}: {events:?}"));
            assert_eq!(
                (e.comm.as_str(), e.errno, e.stage),
                (c.comm.as_str(), EADDRNOTAVAIL, Stage::Connect)
            );
            assert_eq!(e.netns, netns);
        }
        let b = events.iter().find(|e| e.stage == Stage::Bind).unwrap();
        assert_eq!(
            (b.errno, b.source.map(|s| s.ip())),
            (EADDRINUSE, Some("127.0.0.1".parse().unwrap()))
        );
        let drops = observer.drops().unwrap();
        assert!(!drops.any_lost(), "{drops:?}");
    });
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The observer with `options`, loaded for the calling thread's network
/// namespace only.
fn observer_here(options: Options) -> observe::Observer {
    let netns = observe::netns_inode(Path::new("/proc/thread-self/ns/net")).unwrap();
    observe::load(options.netns(Some(netns))).unwrap_or_else(|e| panic!("{e:#?}"))
}

/// One connection to `listener` that the client closes first: connect,
/// close, accept, read to EOF, close. Its TIME_WAIT stays with the client.
fn connect_and_close(listener: &std::net::TcpListener) {
    use std::io::Read;
    drop(std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap());
    let (mut served, _) = listener.accept().unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(served.read(&mut buf).unwrap(), 0, "the client closed first");
}

/// The client sockets `ss` shows in SYN-SENT towards `dst`.
fn ss_syn_sent_to(dst: SocketAddr) -> usize {
    let out = Command::new("ss")
        .args(["-Htn", "state", "syn-sent", "dst"])
        .arg(dst.to_string())
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// An attempt is counted when it resolves (established, failed, closed),
/// in one map update with its success: an established connection that is
/// still open is counted at once; a connect whose SYN nobody answers is
/// counted only when it leaves SYN-SENT.
#[test]
fn attempts_count_when_they_resolve_root() {
    let test = "attempts_count_when_they_resolve_root";
    if !root_or_skip(test) || !have_tool(test, "ss", "iproute2") {
        return;
    }
    in_fresh_netns(&[], || {
        use socket2::{Domain, Socket, Type};
        let observer = observer_here(Options::default());
        let dst: SocketAddr = "127.0.0.1:18011".parse().unwrap();
        // Backlog 0: the first connection fills the accept queue (never
        // accepted), so the kernel drops the next one's SYN.
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener.bind(&dst.into()).unwrap();
        listener.listen(0).unwrap();
        let counts = || -> Counts {
            observer
                .counts()
                .unwrap()
                .into_iter()
                .filter(|(f, _)| f.destination == dst)
                .map(|(_, c)| c)
                .fold(Counts::default(), |a, c| Counts {
                    attempts: a.attempts + c.attempts,
                    successes: a.successes + c.successes,
                    time_wait: a.time_wait + c.time_wait,
                })
        };
        let open = std::net::TcpStream::connect(dst).expect("the first connect is queued");
        let one = Counts {
            attempts: 1,
            successes: 1,
            time_wait: 0,
        };
        assert_eq!(counts(), one, "established and still open: counted");
        let pending = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        pending.set_nonblocking(true).unwrap();
        let err = pending.connect(&dst.into()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINPROGRESS), "{err}");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(ss_syn_sent_to(dst), 1, "the second SYN is unanswered");
        assert_eq!(
            counts(),
            one,
            "a connect still in SYN-SENT is not counted yet"
        );
        drop(pending); // SYN_SENT -> CLOSE: the attempt resolves, failed
        assert_eq!(ss_syn_sent_to(dst), 0);
        assert_eq!(
            counts(),
            Counts {
                attempts: 2,
                successes: 1,
                time_wait: 0,
            },
            "counted when it left SYN-SENT"
        );
        let failures = observer.failures().unwrap();
        assert!(
            failures.is_empty(),
            "not an exhaustion failure: {failures:?}"
        );
        drop(open);
    });
}

/// A connection that shut its side first and then got a reset in FIN_WAIT2
/// leaves no TIME_WAIT, and the observer counts none: the state tracepoint
/// fires after the socket is unhashed on every path, so only the socket's
/// error (ECONNRESET) tells a reset from a timewait. (This test failed on
/// the observer of 808a554, which took "unhashed" for "timewait".)
#[test]
fn a_reset_after_our_close_is_no_time_wait_root() {
    let test = "a_reset_after_our_close_is_no_time_wait_root";
    if !root_or_skip(test) || !have_tool(test, "ss", "iproute2") {
        return;
    }
    in_fresh_netns(&[], || {
        let observer = observer_here(Options::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:18021").unwrap();
        let dst = listener.local_addr().unwrap();
        // One clean close first: it must be counted.
        connect_and_close(&listener);
        // Then: the client shuts its side first, keeping the socket (a full
        // socket in FIN_WAIT2 once the server's kernel ACKs; an orphan would
        // become a timewait socket at once), and the server aborts with
        // SO_LINGER 0: a reset.
        let client = std::net::TcpStream::connect(dst).unwrap();
        let (served, _) = listener.accept().unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let served = socket2::Socket::from(served);
        served.set_linger(Some(Duration::ZERO)).unwrap();
        drop(served);
        std::thread::sleep(Duration::from_millis(100));
        drop(client);
        let ss = ss_time_wait_to(dst);
        assert_eq!(ss.len(), 1, "only the clean close left a TIME_WAIT: {ss:?}");
        let counted: u64 = observer
            .counts()
            .unwrap()
            .iter()
            .filter(|(f, _)| f.destination == dst)
            .map(|(_, c)| c.time_wait)
            .sum();
        assert_eq!(
            counted, 1,
            "the observer counts the TIME_WAIT ss shows, not the reset"
        );
        let attempts: u64 = observer
            .counts()
            .unwrap()
            .iter()
            .filter(|(f, _)| f.destination == dst)
            .map(|(_, c)| c.attempts)
            .sum();
        assert_eq!(attempts, 2);
    });
}

/// With room for 2 flows, connects to further destinations are counted as
/// dropped (`counts_full`), one per connect, and the 2 flows it holds keep
/// counting right after 52 such connects.
#[test]
fn a_full_flow_map_drops_new_flows_and_keeps_the_old_ones_root() {
    let test = "a_full_flow_map_drops_new_flows_and_keeps_the_old_ones_root";
    if !root_or_skip(test) {
        return;
    }
    in_fresh_netns(&[], || {
        let observer = observer_here(Options::default().max_flows(2));
        let listeners: Vec<std::net::TcpListener> = (0..5)
            .map(|i| std::net::TcpListener::bind(("127.0.0.1", 18031 + i)).unwrap())
            .collect();
        let call = |k: usize| connect_and_close(&listeners[k]);
        for k in 0..4 {
            call(k);
        }
        for _ in 0..50 {
            call(4);
        }
        call(0);
        let counts = observer.counts().unwrap();
        let seen: Vec<(SocketAddr, u64)> = counts
            .iter()
            .map(|(f, c)| (f.destination, c.attempts))
            .collect();
        assert_eq!(
            seen,
            vec![
                (listeners[0].local_addr().unwrap(), 2),
                (listeners[1].local_addr().unwrap(), 1)
            ],
            "{counts:?}"
        );
        assert_eq!(observer.drops().unwrap().counts_full, 2 + 50);
    });
}
