//! Before/after comparison of the output formats: doctor `--json` and the
//! exporter's metrics, computed from a fixed socket table and fixed
//! settings (tests/fixtures/golden), must match the checked-in golden
//! files byte for byte. The golden files were generated from the code as it
//! was before the kernel-facts refactor (issue 14); a refactor that changes
//! a JSON field, a metric name or a number fails here.
//!
//! To regenerate after an intended change of output, run the tests with
//! `FIVETUPLE_UPDATE_GOLDEN=1` and review the diff.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use fivetuple_scan::model::Snapshot;
use fivetuple_scan::procfs::parse_reader;
use fivetuple_scan::procs::Owners;
use fivetuple_scan::settings::{read_counters_from, read_settings_from};
use fivetuple_scan::Source;

/// The fixture directory.
pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

/// The scan `name` ("before" or "now"): its tcp/tcp6 tables (timers in
/// USER_HZ=100 ticks), the shared sysctls under `sys/`, and its counters.
pub(crate) fn snapshot(name: &str) -> Snapshot {
    let d = dir().join(name);
    let mut sockets = Vec::new();
    for f in ["tcp", "tcp6"] {
        let path = d.join(f);
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        parse_reader(
            BufReader::new(file),
            &path.display().to_string(),
            100,
            &mut sockets,
        )
        .unwrap();
    }
    Snapshot {
        sockets,
        source: Source::Proc,
        settings: read_settings_from(&dir().join("sys")).unwrap(),
        counters: read_counters_from(&d),
        fallback_reason: None,
    }
}

/// Owners of the fixture's established loopback sockets (inodes 2000..).
pub(crate) fn owners() -> Owners {
    let mut o = Owners::default();
    for i in 0..5u64 {
        o.by_inode
            .insert(2000 + i, vec![if i < 3 { 4242 } else { 4343 }]);
    }
    o.by_inode.insert(4000, vec![77]);
    o.comm.insert(4242, "frontend".into());
    o.comm.insert(4343, "worker".into());
    o.comm.insert(77, "pinger".into());
    o.denied = 2;
    o
}

/// Compares `actual` with the golden file `name`, or writes it when
/// `FIVETUPLE_UPDATE_GOLDEN` is set.
pub(crate) fn check(name: &str, actual: &str) {
    let path = dir().join(name);
    if std::env::var_os("FIVETUPLE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (FIVETUPLE_UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the output at line {}:\n expected: {:?}\n actual:   {:?}\nwhole output:\n{actual}",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}
