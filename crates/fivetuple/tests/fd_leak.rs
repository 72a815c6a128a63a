//! No file descriptor leaks on failure paths. Its own test binary, so no
//! other test's sockets change the process' fd count. Needs root for the
//! network namespace (CI runs as root).

mod common;

use common::{fd_count, in_netns, Mode, Sink};
use fivetuple::{Connector, PortRange, Rotation};

#[test]
fn netns_root_ten_thousand_exhaustion_failures_leak_no_fd() {
    in_netns(
        "netns_root_ten_thousand_exhaustion_failures_leak_no_fd",
        &[
            ("ip_local_port_range", "40000 40019"),
            ("tcp_tw_reuse", "0"),
        ],
        || {
            let sink = Sink::start("127.0.0.1:8080", Mode::Hold);
            let range = PortRange::new(40000, 40019).unwrap();
            let holder = Connector::new(Rotation::new(range).unwrap());
            let held: Vec<_> = (0..20)
                .map(|_| holder.connect_std(sink.addr).unwrap())
                .collect();
            sink.wait_for(20);
            let mut connector = Connector::new(Rotation::new(range).unwrap());
            connector.set_max_attempts(3).unwrap();
            // The runtime first: tokio keeps a process-global signal pipe open
            // after a runtime with the signal driver is dropped.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let before = fd_count();
            for i in 0..10_000 {
                let e = connector.connect_std(sink.addr).unwrap_err();
                assert!(
                    e.is_exhaustion() && e.attempts() == 3,
                    "failure {i}: {e:#?}"
                );
            }
            assert_eq!(
                fd_count(),
                before,
                "fd count after 10,000 failures (30,000 sockets)"
            );
            rt.block_on(async {
                for i in 0..2_000 {
                    let e = connector.connect(sink.addr).await.unwrap_err();
                    assert!(
                        e.is_exhaustion() && e.attempts() == 3,
                        "async failure {i}: {e:#?}"
                    );
                }
            });
            assert_eq!(
                fd_count(),
                before,
                "fd count after 2,000 async failures (6,000 sockets)"
            );
            let s = connector.stats().snapshot();
            assert_eq!(
                (s.exhaustion_failures, s.exhaustion_retries),
                (12_000, 24_000)
            );
            drop(held);
        },
    );
}
