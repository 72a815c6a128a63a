//! Registers a connector's [`ConnectStats`] into a `prometheus-client`
//! [`Registry`], so a service can see from its own metrics how close it came
//! to running out of source ports.
//!
//! The counters are read on every scrape (a [`Collector`]), so nothing has to
//! be updated by hand. Names follow Prometheus conventions:
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `fivetuple_client_connect_attempts_total` | | policy consultations, first tries and retries |
//! | `fivetuple_client_exhaustion_retries_total` | | attempts that failed for lack of a port and were retried |
//! | `fivetuple_client_connect_failures_total` | `reason="exhaustion"` or `"other"` | connects that failed |
//! | `fivetuple_client_connections_opened_total` | `choice="kernel"`, `"address"`, `"endpoint"`, `"window"` | connections opened, per policy choice |
//!
//! Alert on `rate(fivetuple_client_exhaustion_retries_total[5m]) > 0`: the
//! policy is already working around exhaustion, and
//! `fivetuple_client_connect_failures_total{reason="exhaustion"}` is the
//! point where it no longer could.
//!
//! ```
//! use fivetuple::{Connector, KernelDefault};
//! use prometheus_client::registry::Registry;
//!
//! let connector = Connector::new(KernelDefault);
//! let mut registry = Registry::default();
//! fivetuple::metrics::register(&mut registry, connector.stats().clone());
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains("fivetuple_client_connect_attempts_total 0"));
//! ```
//!
//! Several connectors in one process: register each into
//! `registry.sub_registry_with_label(("client", "name".into()))`, so their
//! series differ by label.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;

use crate::connect::{ConnectStats, StatsSnapshot};

/// Registers `stats` (from [`Connector::stats`](crate::Connector::stats))
/// into `registry` as the `fivetuple_client_…_total` counters.
pub fn register(registry: &mut Registry, stats: Arc<ConnectStats>) {
    registry.register_collector(Box::new(StatsCollector::new(stats)));
}

/// A [`Collector`] that reads a [`ConnectStats`] on each scrape. Use it
/// directly to register with options [`register`] does not offer.
#[derive(Debug, Clone)]
pub struct StatsCollector {
    stats: Arc<ConnectStats>,
}

impl StatsCollector {
    /// A collector of `stats`.
    pub fn new(stats: Arc<ConnectStats>) -> StatsCollector {
        StatsCollector { stats }
    }
}

/// Encodes one unlabelled counter.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Encodes one counter with a series per value of `label`.
fn labelled(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    series: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let kind = ConstCounter::new(0u64).metric_type();
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for &(value, n) in series {
        ConstCounter::new(n).encode(metric.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s: StatsSnapshot = self.stats.snapshot();
        counter(
            &mut encoder,
            "fivetuple_client_connect_attempts",
            "Connect attempts: each time the local-endpoint policy was consulted, first tries and retries.",
            s.attempts,
        )?;
        counter(
            &mut encoder,
            "fivetuple_client_exhaustion_retries",
            "Attempts that failed for lack of a local port (EADDRINUSE/EADDRNOTAVAIL) and were retried.",
            s.exhaustion_retries,
        )?;
        labelled(
            &mut encoder,
            "fivetuple_client_connect_failures",
            "Connects that failed, by reason: exhaustion (no local port after every attempt) or other.",
            "reason",
            &[("exhaustion", s.exhaustion_failures), ("other", s.other_failures)],
        )?;
        labelled(
            &mut encoder,
            "fivetuple_client_connections_opened",
            "Connections opened, by the policy's choice of local endpoint.",
            "choice",
            &[
                ("kernel", s.opened_kernel),
                ("address", s.opened_address),
                ("endpoint", s.opened_endpoint),
                ("window", s.opened_window),
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Connector, KernelDefault};

    #[test]
    fn names_labels_and_values() {
        let connector = Connector::new(KernelDefault);
        // A refused connect counts one attempt and one other failure.
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        let closed = sock.local_addr().unwrap().as_socket().unwrap();
        assert!(connector.connect_std(closed).is_err());

        let mut registry = Registry::default();
        register(&mut registry, connector.stats().clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE fivetuple_client_connect_attempts counter",
            "fivetuple_client_connect_attempts_total 1",
            "fivetuple_client_exhaustion_retries_total 0",
            "fivetuple_client_connect_failures_total{reason=\"exhaustion\"} 0",
            "fivetuple_client_connect_failures_total{reason=\"other\"} 1",
            "fivetuple_client_connections_opened_total{choice=\"kernel\"} 0",
            "fivetuple_client_connections_opened_total{choice=\"window\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
    }
}
