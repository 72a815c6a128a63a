//! doctor `--json` on the fixed table of tests/fixtures/golden (see
//! `crate::golden`): one scan, and two scans one second apart.

use std::time::Duration;

use super::*;
use crate::golden;

fn config(interval: Duration, top: usize) -> Config {
    Config {
        json: true,
        all_netns: false,
        bound_inactive: false,
        target: Target::Current,
        top,
        thresholds: Thresholds::default(),
        interval,
        reader: Reader::Proc,
        processes: true,
    }
}

fn doc(before: Option<&Snapshot>, cfg: &Config) -> String {
    let now = golden::snapshot("now");
    let owners = golden::owners();
    let analysis = model::analyze(
        before.map(|b| (b, cfg.interval)),
        &now,
        Some(&owners),
        cfg.thresholds,
    );
    let mut out = Vec::new();
    write_json(&mut out, cfg, &now, &analysis, None, None).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn doctor_json_matches_the_golden_file_for_one_scan() {
    golden::check(
        "doctor-one-scan.json",
        &doc(None, &config(Duration::ZERO, 10)),
    );
}

#[test]
fn doctor_json_matches_the_golden_file_for_two_scans() {
    let before = golden::snapshot("before");
    golden::check(
        "doctor-two-scans.json",
        &doc(Some(&before), &config(Duration::from_secs(1), 2)),
    );
}
