//! The `counters` collector: kernel TCP counters from
//! `/proc/thread-self/net/{snmp,netstat,sockstat}`, read on every scrape.
//! No counter records a connect() that failed for lack of ports (DESIGN §2);
//! these are the ones that move alongside it.

use std::sync::Arc;
use std::time::Instant;

use fivetuple_scan::Counters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::{counter, gauge, RunLog};

/// Reads the counters of the calling thread's namespace.
pub type ReadCounters = fn() -> Counters;

/// Exports ActiveOpens, TW, TWRecycled, TCPTimeWaitOverflow and sockstat's `tw`.
pub struct CountersCollector {
    read: ReadCounters,
    log: Arc<RunLog>,
}

impl CountersCollector {
    /// A collector that calls `read` on each scrape.
    pub fn new(read: ReadCounters, log: Arc<RunLog>) -> Self {
        CountersCollector { read, log }
    }
}

impl std::fmt::Debug for CountersCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CountersCollector")
    }
}

impl Collector for CountersCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let started = Instant::now();
        let c = (self.read)();
        let counters = [
            (
                "fivetuple_tcp_active_opens",
                "Tcp ActiveOpens (/proc/net/snmp): connect() calls that sent a SYN.",
                c.active_opens,
            ),
            (
                "fivetuple_tcp_time_wait_finished",
                "TcpExt TW (/proc/net/netstat): TIME_WAIT sockets that ran their full time.",
                c.tw,
            ),
            (
                "fivetuple_tcp_time_wait_recycled",
                "TcpExt TWRecycled (/proc/net/netstat): TIME_WAIT 4-tuples reused by connect().",
                c.tw_recycled,
            ),
            (
                "fivetuple_tcp_time_wait_overflow",
                "TcpExt TCPTimeWaitOverflow (/proc/net/netstat): TIME_WAIT sockets not created because tcp_max_tw_buckets was reached.",
                c.tcp_time_wait_overflow,
            ),
        ];
        for (name, help, value) in counters {
            if let Some(v) = value {
                counter(&mut enc, name, help, v)?;
            }
        }
        if let Some(tw) = c.sockstat_tw {
            gauge(
                &mut enc,
                "fivetuple_sockstat_time_wait_sockets",
                "TIME_WAIT sockets as the kernel counts them (tw in /proc/net/sockstat).",
                tw as f64,
            )?;
        }
        // snmp and netstat are there on every Linux; missing both means /proc is not.
        if c.active_opens.is_some() && c.tw.is_some() {
            self.log.ok("counters", started);
        } else {
            self.log.failed(
                "counters",
                started,
                &"cannot read Tcp ActiveOpens or TcpExt TW from /proc/thread-self/net/{snmp,netstat}",
            );
        }
        Ok(())
    }
}
