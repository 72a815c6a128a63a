//! A real web server: nginx on loopback inside a throwaway network namespace
//! whose ephemeral range is 100 ports with `tcp_tw_reuse=0`, called 5,000
//! times with keep-alive off through fivetuple's connector. nginx's access
//! log (`$remote_port`) shows which source ports it accepted.
//!
//! Needs root and nginx (`apt-get install nginx`; found at /usr/sbin/nginx or
//! on PATH). Skipped without root unless CI is set.
#![cfg(feature = "hyper")]

mod hyper_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use fivetuple::http::HttpConnector;
use fivetuple::{Connector, PortRange, Rotation};
use hyper_support::{close_per_call, get, in_netns, root_or_skip};

const LO: u16 = 40000;
const HI: u16 = 40099;
const CALLS: usize = 5000;
const LISTEN: &str = "127.0.0.1:8080";

/// nginx started from the calling thread (so in its namespace), with a
/// config, logs and pid file in its own temporary directory. Dropping it
/// stops nginx (master and worker) and removes the directory.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn binary() -> PathBuf {
        let sbin = Path::new("/usr/sbin/nginx");
        if sbin.exists() {
            return sbin.to_path_buf();
        }
        PathBuf::from("nginx")
    }

    fn start() -> Nginx {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("fivetuple-nginx-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        // Every path nginx writes is in `dir`; temp paths too, so that nothing
        // under /var/lib/nginx is needed.
        let conf = format!(
            "worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    log_format ports '$remote_addr $remote_port $status';
    access_log {d}/access.log ports;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {LISTEN};
        location / {{ return 200 \"ok\\n\"; }}
    }}
}}
"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(Self::binary())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .spawn()
            .unwrap_or_else(|e| panic!("starting nginx (apt-get install nginx): {e}"));
        let mut nginx = Nginx { child, dir };
        nginx.wait_ready();
        nginx
    }

    /// nginx writes its pid file after it has opened its listening sockets.
    fn wait_ready(&mut self) {
        let pid = self.dir.join("nginx.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pid.exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nginx exited ({status}): {}", self.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx not ready in 10 s: {}",
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Lines of the access log once it has `n` of them (nginx writes a line
    /// just after sending the response), waiting at most 10 s.
    fn access_log(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= n || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Children of the master (the worker), by scanning /proc for our pid
    /// as parent.
    fn workers(&self) -> Vec<i32> {
        let master = self.child.id().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...; comm may contain spaces, so split after ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            if rest.split_whitespace().nth(1) == Some(master.as_str()) {
                if let Ok(pid) = entry.file_name().to_string_lossy().parse() {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let master = self.child.id() as i32;
        let workers = self.workers();
        // SIGTERM: fast shutdown, the master stops its workers.
        // SAFETY: kill() on the pid of our own child, which we have not reaped.
        unsafe { libc::kill(master, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            for pid in workers {
                // SAFETY: kill() on a pid whose parent is our nginx master, which is still alive.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Rotation over the namespace's whole 100-port range, as in the hyper
/// server test: only rotation opens connections here, so the range is the
/// kernel's own and the budget is the same as the kernel default's, which
/// runs out after at most 100 calls (see `hyper_netns.rs`).
#[test]
fn netns_root_nginx_5000_close_per_call_gets_from_rotation_range() {
    if !root_or_skip("netns_root_nginx_5000_close_per_call_gets_from_rotation_range") {
        return;
    }
    let sysctls = [
        ("ip_local_port_range", "40000 40099"),
        ("tcp_tw_reuse", "0"),
        ("tcp_timestamps", "1"),
    ];
    in_netns("nginx-100", &sysctls, || async {
        let nginx = Nginx::start();
        let rotation = Rotation::new(PortRange::new(LO, HI).unwrap()).unwrap();
        let connector = HttpConnector::new(Connector::new(rotation));
        let stats = connector.stats().clone();
        let client = close_per_call(connector);
        let uri: hyper::Uri = format!("http://{LISTEN}/").parse().unwrap();

        let mut client_ports = Vec::with_capacity(CALLS);
        for i in 0..CALLS {
            let (status, body, info) = get(&client, uri.clone())
                .await
                .unwrap_or_else(|e| panic!("call {i} failed: {e:?}\n{}", nginx.error_log()));
            assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"), "call {i}");
            client_ports.push(info.local_addr().port());
        }
        drop(client);

        let lines = nginx.access_log(CALLS);
        assert_eq!(lines.len(), CALLS, "access log lines");
        let mut server_ports: Vec<u16> = lines
            .iter()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                assert_eq!(f.len(), 3, "log line {line:?}");
                assert_eq!((f[0], f[2]), ("127.0.0.1", "200"), "log line {line:?}");
                let port: u16 = f[1].parse().unwrap();
                assert!((LO..=HI).contains(&port), "nginx saw source port {port}");
                port
            })
            .collect();
        // What nginx saw is what the client used, call for call.
        server_ports.sort_unstable();
        client_ports.sort_unstable();
        assert_eq!(server_ports, client_ports);
        let distinct: std::collections::HashSet<u16> = server_ports.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            usize::from(HI - LO + 1),
            "every port of the range used"
        );

        let s = stats.snapshot();
        assert_eq!(s.opened_endpoint, CALLS as u64, "{s:?}");
        assert_eq!(s.attempts, CALLS as u64 + s.exhaustion_retries, "{s:?}");
        assert_eq!((s.exhaustion_failures, s.other_failures), (0, 0), "{s:?}");
    });
}
