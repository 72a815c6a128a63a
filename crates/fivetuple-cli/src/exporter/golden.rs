//! The exporter's metrics on the fixed table of tests/fixtures/golden (see
//! `crate::golden`), in both formats. The scrape durations and the
//! exporter's resident memory vary by run and are left out.

use super::*;
use crate::golden;

fn registry() -> Registry {
    let log = Arc::new(RunLog::default());
    let mut r = Registry::default();
    r.register_collector(Box::new(settings::SettingsCollector::new(
        || fivetuple_scan::settings::read_settings_from(&golden::dir().join("sys")),
        log.clone(),
    )));
    r.register_collector(Box::new(destinations::DestinationsCollector::new(
        Box::new(|| Ok(golden::snapshot("now"))),
        3,
        log.clone(),
    )));
    r.register_collector(Box::new(counters::CountersCollector::new(
        || fivetuple_scan::settings::read_counters_from(&golden::dir().join("now")),
        log.clone(),
    )));
    r.register_collector(Box::new(scrape::SelfCollector::new(
        log,
        Arc::new(AtomicU64::new(0)),
    )));
    r
}

/// Drops the lines whose value depends on the run.
fn stable(text: &str) -> String {
    text.lines()
        .filter(|l| {
            !l.contains("fivetuple_scrape_collector_duration_seconds")
                && !l.contains("fivetuple_exporter_resident_memory_bytes")
                && !l.contains("fivetuple_exporter_build_info")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn exporter_text_matches_the_golden_file() {
    let text = encode(&registry(), Format::Text).unwrap();
    golden::check("exporter.txt", &stable(&text));
}

#[test]
fn exporter_openmetrics_matches_the_golden_file() {
    let text = encode(&registry(), Format::OpenMetrics).unwrap();
    golden::check("exporter.openmetrics", &stable(&text));
}
