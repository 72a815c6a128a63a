//! The exporter's metrics on the fixed table of tests/fixtures/golden (see
//! `crate::golden`), in both formats: the settings, destinations and
//! counters collectors. The `self` collector (scrape durations, the
//! server's own counters) reports on the exporter, not on the table, and
//! is left out.

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
        log,
    )));
    r
}

#[test]
fn exporter_text_matches_the_golden_file() {
    let text = encode(&registry(), Format::Text).unwrap();
    golden::check("exporter.txt", &text);
}

#[test]
fn exporter_openmetrics_matches_the_golden_file() {
    let text = encode(&registry(), Format::OpenMetrics).unwrap();
    golden::check("exporter.openmetrics", &text);
}
