//! A real nginx as the peer: started in the calling thread's network
//! namespace, every file (config, logs, pid, temp paths) in its own
//! temporary directory, and an access log of `$remote_addr $remote_port
//! $status`, so a test can check which source ports the server accepted.
//! Dropping it stops master and worker and removes the directory.
//!
//! Needs nginx (`apt-get install nginx`, installed by `scripts/setup`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running nginx answering `200 ok\n` on every path. See the module docs.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx listening on each of `listen` (nginx `listen` syntax,
    /// such as `127.0.0.1:8080` or `[::1]:8080`), with keep-alive allowed
    /// for 100,000 requests, so the client decides when to close. `tag`
    /// names the temporary directory. Returns once nginx has written its pid
    /// file, which it does after opening its listening sockets; panics if it
    /// exits or is not ready within 10 s, with its error log.
    pub fn start(tag: &str, listen: &[&str]) -> Nginx {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "fivetuple-nginx-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let servers: String = listen.iter().map(|l| format!("listen {l}; ")).collect();
        // Every path nginx writes is in `dir`, temp paths too, so nothing
        // under /var/lib/nginx is needed.
        let conf = format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
  log_format ports '$remote_addr $remote_port $status';
  access_log {d}/access.log ports;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ {servers}keepalive_requests 100000;
    location / {{ return 200 \"ok\\n\"; }} }}
}}
"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut command = Command::new(binary());
        command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"));
        // SAFETY: the closure only calls setpgid(2), which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                // Its own process group, so Drop stops master and worker at once.
                if libc::setpgid(0, 0) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting nginx (apt-get install nginx): {e}"));
        let mut nginx = Nginx { child, dir };
        nginx.wait_ready();
        nginx
    }

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

    /// nginx's error log, empty if it has none yet.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The access log's lines (`addr port status`) once it has at least `n`
    /// of them, or whatever it has after 10 s (nginx writes a line just
    /// after sending the response).
    pub fn access_log(&self, n: usize) -> Vec<String> {
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

    /// The (address, source port) of each logged request, waiting as
    /// [`Nginx::access_log`] does. Panics on a line it cannot read.
    pub fn seen(&self, n: usize) -> Vec<(String, u16)> {
        self.access_log(n)
            .iter()
            .map(|line| {
                let mut fields = line.split(' ');
                match (fields.next(), fields.next().map(str::parse::<u16>)) {
                    (Some(addr), Some(Ok(port))) => (addr.to_string(), port),
                    _ => panic!("nginx access log line {line:?}: expected `addr port status`"),
                }
            })
            .collect()
    }
}

/// `/usr/sbin/nginx` when present (root's PATH may lack /usr/sbin under
/// some runners), else `nginx` from PATH.
fn binary() -> PathBuf {
    let sbin = Path::new("/usr/sbin/nginx");
    if sbin.exists() {
        sbin.to_path_buf()
    } else {
        PathBuf::from("nginx")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signals the process group of our own child (set in
        // pre_exec), which we have not reaped yet.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
