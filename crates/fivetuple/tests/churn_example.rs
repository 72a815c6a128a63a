//! The churn example (`examples/churn.rs`) run as a program under
//! `ulimit -n 12`: running out of file descriptors must end the run with a
//! report naming EMFILE, not hang with the sink spinning on `accept`.
//!
//! `cargo test` builds the examples next to the test binaries; with a target
//! filter (`--test churn_example`) add `--example churn`.
#![cfg(target_os = "linux")]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn churn() -> PathBuf {
    // target/<profile>/deps/churn_example-HASH -> target/<profile>/examples/churn
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("examples")
        .join("churn");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test -p fivetuple --example churn --test churn_example`",
        bin.display()
    );
    bin
}

/// Waits for `child` with `wait4`, returning its status and CPU time (user
/// plus system), or `None` if it has not ended by `deadline` (it is then
/// killed and reaped).
fn wait_cpu(child: &mut Child, deadline: Instant) -> Option<(ExitStatus, Duration)> {
    let pid = child.id();
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain old data; all-zero is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our unwaited child; the pointers are valid.
        let got = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
        assert!(got >= 0, "wait4: {}", std::io::Error::last_os_error());
        if got == pid as i32 {
            let tv = |t: libc::timeval| {
                Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
            };
            return Some((
                ExitStatus::from_raw(status),
                tv(usage.ru_utime) + tv(usage.ru_stime),
            ));
        }
        if Instant::now() > deadline {
            // SAFETY: kill has no memory-safety preconditions; pid is our child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let mut status = 0;
            // SAFETY: reaps the child just killed.
            unsafe { libc::waitpid(pid as i32, &mut status, 0) };
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn out_of_file_descriptors_ends_with_an_emfile_report_without_spinning() {
    let script = format!(
        "ulimit -n 12 && exec {} --calls 200 --concurrency 4 --timeout-ms 1000",
        churn().display()
    );
    let started = Instant::now();
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sh");
    let mut stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let readers = std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = stderr.read_to_string(&mut err);
        let _ = stdout.read_to_string(&mut out);
        (out, err)
    });
    let ended = wait_cpu(&mut child, started + Duration::from_secs(20));
    let wall = started.elapsed();
    let (stdout, stderr) = readers.join().unwrap();
    let (status, cpu) = ended.unwrap_or_else(|| {
        panic!("churn did not end within 20 s under ulimit -n 12: {stdout} {stderr}")
    });
    assert_eq!(status.code(), Some(1), "{status:?}: {stdout} {stderr}");
    assert!(
        stderr.contains("EMFILE")
            && stderr.contains("Too many open files")
            && stderr.contains("limit 12")
            && stderr.contains("not port exhaustion"),
        "{stderr}"
    );
    // The counts so far are still printed.
    assert!(stdout.contains("policy kernel:"), "{stdout}");
    // A spinning accept loop burns CPU for the whole wait; backing off
    // leaves the process idle while the client waits for its timeout.
    assert!(
        cpu < wall / 4,
        "CPU {cpu:?} over {wall:?} of wall time: something spins"
    );
}
