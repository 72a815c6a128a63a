//! Shared by the CLI's integration tests: the binary's path, and the
//! namespace, root and tool helpers of `fivetuple-testkit`.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub use fivetuple_testkit::{connect_from, have_tool, make_time_wait, root_or_skip as have_root};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `fivetuple` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fivetuple");

/// Runs `f` on a thread in a fresh network namespace with `lo` up. Children
/// spawned from that thread (the binary, `ss`) inherit the namespace, which
/// disappears when the thread ends. Callers check [`have_root`] first.
pub fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    fivetuple_testkit::in_fresh_netns(&[], f)
}

/// Writes `net.ipv4.NAME` in the calling thread's namespace.
pub fn sysctl(name: &str, value: &str) {
    fivetuple_testkit::set_sysctl(name, value)
}

/// Runs `fivetuple doctor ARGS` in the calling thread's namespace.
pub fn doctor(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("doctor")
        .args(args)
        .output()
        .expect("run fivetuple doctor")
}

/// stdout of a `--json` run, parsed; panics with stdout and stderr otherwise.
pub fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A child process killed (by its own pid) when the guard goes away.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed when the guard goes away.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("fivetuple-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the exporter with `args` (plus `--listen 127.0.0.1:0` unless given)
/// and returns it with the address it printed.
pub fn start_exporter(args: &[&str], tweak: impl FnOnce(&mut Command)) -> (Reaper, SocketAddr) {
    let mut cmd = Command::new(BIN);
    cmd.arg("exporter");
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    tweak(&mut cmd);
    let mut child = cmd.spawn().expect("run fivetuple exporter");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.is_empty() {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        let _ = child.wait();
        panic!("the exporter printed no address; stderr:\n{err}");
    }
    let addr = line
        .split("://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (Reaper(child), addr)
}

pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

pub fn request(addr: SocketAddr, method: &str, path: &str, accept: Option<&str>) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {raw:?}"));
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, None)
}

/// The value of the sample whose line starts with `prefix` (name and labels).
pub fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn promtool_check(text: &str, dir: &Path) {
    let f = dir.join("scrape.txt");
    std::fs::write(&f, text).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", f.display()))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Instant query against Prometheus' HTTP API: the result vector.
pub fn query(prom: SocketAddr, q: &str) -> Vec<Value> {
    let r = get(prom, &format!("/api/v1/query?query={}", urlencode(q)));
    // Chunked transfer encoding is possible: take the JSON object between the outer braces.
    let (Some(a), Some(b)) = (r.body.find('{'), r.body.rfind('}')) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&r.body[a..=b]).unwrap_or(Value::Null);
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

pub fn value_of(series: &Value) -> f64 {
    series["value"][1].as_str().unwrap().parse().unwrap()
}

/// A Prometheus server scraping every second with `scrape_configs` (YAML,
/// indented as a list under that key), its data and log in `dir`.
pub struct Prometheus {
    _child: Reaper,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// On 127.0.0.1:9090: for callers in a fresh netns.
    pub fn start(dir: &Path, scrape_configs: &str) -> Prometheus {
        Prometheus::start_at(dir, "127.0.0.1:9090".parse().unwrap(), scrape_configs)
    }

    /// On `addr` (loopback; a free port when the caller shares the host's namespace).
    pub fn start_at(dir: &Path, addr: SocketAddr, scrape_configs: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{scrape_configs}"),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let child = Reaper(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("run prometheus"),
        );
        Prometheus {
            _child: child,
            addr,
            log,
        }
    }

    /// Polls every query (bounded: 40 s) until each has a result; returns
    /// the last results, and the server's log for failure messages.
    pub fn wait_for(&self, queries: &[&str]) -> (Vec<Vec<Value>>, String) {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut results = vec![Vec::new(); queries.len()];
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            if TcpStream::connect(self.addr).is_err() {
                continue;
            }
            results = queries.iter().map(|q| query(self.addr, q)).collect();
            if results.iter().all(|r| !r.is_empty()) {
                break;
            }
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        (results, log)
    }
}
