//! Shared scrapes (single flight): concurrent requests for the same format
//! wait for one scan instead of each starting their own or getting 503.
//!
//! A request joins the flight that has not started yet for its format, or
//! opens one. The scrape thread takes flights in order; when it starts one,
//! the flight leaves the pending table, so a request that arrives during a
//! scan waits for the next one and never gets data older than itself. So at
//! most one scan runs and one waits per format, however many scrapers flood
//! the exporter, and every waiter gets an answer.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use hyper::body::Bytes;
use tokio::sync::watch;

use super::Format;

/// The encoded metrics, or why encoding failed.
pub type Outcome = Arc<Result<Bytes, String>>;

type Slot = watch::Receiver<Option<Outcome>>;

/// One scan to run: its format, and where to publish the result.
pub struct Job {
    format: Format,
    done: watch::Sender<Option<Outcome>>,
}

impl Job {
    /// The format the waiters asked for.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Hands the result to every waiter.
    pub fn finish(self, outcome: Result<Bytes, String>) {
        // No receiver left means every waiter went away; nothing to do.
        let _ = self.done.send(Some(Arc::new(outcome)));
    }
}

/// The HTTP side of the flights.
#[derive(Clone)]
pub struct Flights {
    pending: Arc<Mutex<HashMap<Format, Slot>>>,
    jobs: mpsc::Sender<Job>,
}

/// The scrape thread's side: takes flights in order.
pub struct Runway {
    pending: Arc<Mutex<HashMap<Format, Slot>>>,
    jobs: mpsc::Receiver<Job>,
}

/// The scrape thread has stopped; no scrape can be answered.
#[derive(Debug)]
pub struct Stopped;

/// A pair of ends: [`Flights`] for the server, [`Runway`] for the scrape thread.
pub fn flights() -> (Flights, Runway) {
    let pending = Arc::new(Mutex::new(HashMap::new()));
    // Unbounded in type, bounded by design: a job is sent only when a flight
    // is opened, and at most one flight per format is pending.
    let (tx, rx) = mpsc::channel();
    (
        Flights {
            pending: pending.clone(),
            jobs: tx,
        },
        Runway { pending, jobs: rx },
    )
}

impl Flights {
    /// Waits for a scan in `format` that starts after this call; `true` in
    /// the second field when the scan was shared with another request.
    pub async fn scrape(&self, format: Format) -> Result<(Outcome, bool), Stopped> {
        let (mut slot, shared) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.get(&format) {
                Some(slot) => (slot.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    self.jobs
                        .send(Job { format, done: tx })
                        .map_err(|_| Stopped)?;
                    pending.insert(format, rx.clone());
                    (rx, false)
                }
            }
        };
        let outcome = slot
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Stopped)?
            .clone()
            .ok_or(Stopped)?;
        Ok((outcome, shared))
    }
}

impl Runway {
    /// Blocks for the next flight. Returns `None` when the server has gone.
    /// A flight whose waiters have all gone away is skipped.
    pub fn next(&self) -> Option<Job> {
        loop {
            let job = self.jobs.recv().ok()?;
            // From here on, new requests open the next flight.
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&job.format);
            if job.done.receiver_count() > 0 {
                return Some(job);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn concurrent_requests_share_one_scan_and_later_ones_get_a_fresh_one() {
        let (flights, runway) = flights();
        let scans = Arc::new(AtomicUsize::new(0));
        let counted = scans.clone();
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            // The first go lets the worker take its first flight.
            go_rx.recv().unwrap();
            while let Some(job) = runway.next() {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = started_tx.send(n);
                go_rx.recv().unwrap();
                job.finish(Ok(Bytes::from(format!("scan {n}"))));
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(100));
        rt.block_on(async {
            // Eight at once: one scan, seven of them shared.
            let first: Vec<_> = (0..8)
                .map(|_| {
                    let f = flights.clone();
                    tokio::spawn(async move { f.scrape(Format::Text).await.unwrap() })
                })
                .collect();
            settle().await;
            go_tx.send(()).unwrap();
            assert_eq!(started_rx.recv().await, Some(1));
            // A ninth arrives while scan 1 runs: it must not get scan 1.
            let late = {
                let f = flights.clone();
                tokio::spawn(async move { f.scrape(Format::Text).await.unwrap() })
            };
            settle().await;
            go_tx.send(()).unwrap();
            let mut shared = 0;
            for h in first {
                let (body, was_shared) = h.await.unwrap();
                assert_eq!(body.as_ref().as_ref().unwrap(), "scan 1");
                shared += usize::from(was_shared);
            }
            assert_eq!(shared, 7);
            assert_eq!(started_rx.recv().await, Some(2));
            go_tx.send(()).unwrap();
            let (body, was_shared) = late.await.unwrap();
            assert_eq!(body.as_ref().as_ref().unwrap(), "scan 2");
            assert!(!was_shared);
        });
        assert_eq!(scans.load(Ordering::SeqCst), 2);
        drop(flights);
        worker.join().unwrap();
    }
}
