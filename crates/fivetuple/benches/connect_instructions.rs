//! User-space instructions per connect (a benchmark, not a timed test):
//! plain `std::net::TcpStream::connect` against fivetuple's kernel default
//! and rotation, counted by valgrind's callgrind, so the figure does not move
//! with the machine's load the way connects/s and CPU time do.
//!
//! ```text
//! cargo bench -p fivetuple --bench connect_instructions
//! ```
//!
//! Needs root (each contender runs in a fresh network namespace) and
//! valgrind (`apt-get install valgrind`; this machine's hardware counters are
//! not exposed, so `perf stat -e instructions:u` reports "not supported").
//!
//! The bench re-runs itself under `valgrind --tool=callgrind
//! --collect-atstart=no --toggle-collect=<measured loop>` once per
//! contender. The child warms up (first-use costs: lazy statics, the first
//! page faults) outside the loop, then runs `INSN_CONNECTS` (default 2000)
//! connect+close pairs inside it. Only the client thread's instructions in
//! the loop are counted: callgrind counts user space only, so system calls
//! cost nothing here, and the sink's accept thread never enters the loop.
//! Each callgrind output file is kept (path printed) for
//! `callgrind_annotate --inclusive=yes FILE`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{in_netns, Mode, Sink};
use fivetuple::{Connector, KernelDefault, PortRange, Rotation};

const CONTENDERS: [&str; 3] = ["std", "kernel", "rotation"];
const WARMUP: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--child", contender, n] => {
            let n: usize = n
                .parse()
                .unwrap_or_else(|_| panic!("connect count {n:?}: expected a number"));
            child(contender, n);
        }
        [] | ["--bench"] => parent(),
        _ => {
            eprintln!("usage: cargo bench -p fivetuple --bench connect_instructions (settings via INSN_CONNECTS, CALLGRIND_DIR)");
            std::process::exit(2);
        }
    }
}

fn parent() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("connect_instructions: needs root (a network namespace per contender)");
        std::process::exit(2);
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("connect_instructions: needs valgrind (apt-get install valgrind)");
        std::process::exit(2);
    }
    let n: usize = match std::env::var("INSN_CONNECTS") {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("INSN_CONNECTS={v:?}: expected a number of connects");
            std::process::exit(2)
        }),
        Err(_) => 2000,
    };
    let dir = std::env::var_os("CALLGRIND_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("fivetuple-callgrind"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let exe = std::env::current_exe().expect("own executable");
    let mut per_connect = Vec::new();
    for contender in CONTENDERS {
        let out = dir.join(format!("callgrind.{contender}.out"));
        let status = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg("--collect-atstart=no")
            // The measured loop, by its demangled path.
            .arg("--toggle-collect=connect_instructions::measured_loop")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg("--quiet")
            .arg(&exe)
            .args(["--child", contender, &n.to_string()])
            .status()
            .expect("run valgrind");
        assert!(status.success(), "valgrind run for {contender}: {status}");
        let total = totals(&out);
        assert!(
            total > 0,
            "{}: no instructions collected (was the loop renamed?)",
            out.display()
        );
        per_connect.push((contender, total as f64 / n as f64, out));
    }
    println!("\n## user-space instructions per connect+close (callgrind, {n} connects, warm)\n");
    println!("| contender | instructions per connect | ratio to std | callgrind output |");
    println!("|---|---:|---:|---|");
    let std = per_connect[0].1;
    for (c, ir, out) in &per_connect {
        println!("| {c} | {ir:.0} | {:.3} | {} |", ir / std, out.display());
    }
}

/// The `totals:` (or `summary:`) line of a callgrind output file: the
/// instructions collected while collection was on.
fn totals(path: &Path) -> u64 {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}: no totals line", path.display()))
}

fn child(contender: &str, n: usize) {
    common::raise_fd_limit();
    let contender = match contender {
        "std" => Contender::Std,
        "kernel" => Contender::Fivetuple(Connector::new(KernelDefault)),
        "rotation" => Contender::Fivetuple(Connector::new(
            Rotation::new(PortRange::new(20000, 29999).unwrap()).unwrap(),
        )),
        other => panic!("contender {other:?}: expected one of {CONTENDERS:?}"),
    };
    in_netns("bench connect_instructions", &[], move || {
        let sink = Sink::start("127.0.0.1:8080", Mode::Hold);
        let dest = sink.addr;
        for _ in 0..WARMUP {
            drop(contender.connect(dest));
        }
        measured_loop(&contender, dest, n);
        assert_eq!(
            sink.wait_for(WARMUP + n).len(),
            WARMUP + n,
            "sink saw every connect"
        );
    })
    .expect("root");
}

enum Contender {
    Std,
    Fivetuple(Connector),
}

impl Contender {
    #[inline(always)]
    fn connect(&self, dest: SocketAddr) -> TcpStream {
        match self {
            Contender::Std => TcpStream::connect(dest).expect("std connect"),
            Contender::Fivetuple(c) => c.connect_std(dest).expect("fivetuple connect"),
        }
    }
}

/// The loop callgrind counts (`--toggle-collect`): `n` connect+close pairs.
#[inline(never)]
fn measured_loop(contender: &Contender, dest: SocketAddr, n: usize) {
    for _ in 0..n {
        drop(black_box(contender.connect(black_box(dest))));
    }
}
