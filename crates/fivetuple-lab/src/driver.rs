//! The load driver: calls frontend A at a fixed rate (open loop: a call is
//! sent when it is due, whether or not earlier calls have answered) over
//! connections to A that are opened before the clock starts and kept alive,
//! so the driver never needs a new port and is not itself the victim.
//!
//! The work is bounded whatever the rate: at most [`Load::max_in_flight`]
//! calls are outstanding at once, and a call that falls due while that many
//! are waiting is not sent but counted as failed ("shed"). Memory is
//! O(in flight + seconds of the run): per-second counters and a latency
//! histogram, never a record per call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::error::LabError;
use crate::services::CALL_TIMEOUT;

/// Counters the progress display reads while a remedy runs.
#[derive(Debug, Default)]
pub struct Live {
    /// Calls answered 200.
    pub ok: AtomicU64,
    /// Calls that failed (shed calls included).
    pub failed: AtomicU64,
    /// TIME_WAIT sockets in the box at the last sample.
    pub time_wait: AtomicU64,
}

/// One second of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    /// Calls scheduled in this second that answered 200.
    pub ok: u64,
    /// Calls scheduled in this second that failed (shed calls included).
    pub failed: u64,
    /// Highest TIME_WAIT count sampled in this second.
    pub time_wait: u64,
}

/// What the driver sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Calls per second (open loop).
    pub rate: u32,
    /// How long calls are scheduled for.
    pub duration: Duration,
    /// Kept-alive connections to A.
    pub connections: usize,
    /// Calls outstanding at once (waiting for a connection to A or for
    /// A's answer); a call due beyond this is shed.
    pub max_in_flight: usize,
}

impl Load {
    /// Calls scheduled in the whole run: `rate × duration`.
    pub fn total(&self) -> u64 {
        (f64::from(self.rate) * self.duration.as_secs_f64()).floor() as u64
    }
}

/// What the driver saw.
#[derive(Debug, Clone)]
pub struct DriveOutcome {
    /// Calls scheduled (sent or shed).
    pub calls: u64,
    /// Calls answered 200.
    pub ok: u64,
    /// Calls that failed (502, other status, no answer, or shed).
    pub failed: u64,
    /// Calls not sent because [`Load::max_in_flight`] calls were outstanding.
    pub shed: u64,
    /// When the first failing call was scheduled, seconds from the start.
    pub first_failure_s: Option<f64>,
    /// The first failure's text (A's 502 body: the OS error).
    pub error: Option<String>,
    /// Seconds from the start until the first failure arrived, or until the
    /// run ended (`max(duration, completed_s)`) when nothing failed.
    pub error_free_s: f64,
    /// Calls answered 200 before the first failure arrived (all of them
    /// when nothing failed): completed calls, counted when they completed.
    pub ok_error_free: u64,
    /// Highest TIME_WAIT count sampled.
    pub peak_time_wait: u64,
    /// Seconds from the start until the last answer arrived.
    pub completed_s: f64,
    /// Median time from a call's scheduled send to its answer, in ms (calls
    /// that were sent).
    pub latency_ms_p50: f64,
    /// 99th percentile of that time, in ms.
    pub latency_ms_p99: f64,
    /// One entry per second of the run.
    pub timeline: Vec<Second>,
}

/// A call not answered this long after it was due counts as failed.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(6);

/// Highest latency the histogram tells apart (longer ones are clamped):
/// every call is answered or given up within [`ANSWER_WITHIN`].
const LATENCY_MAX_US: u64 = 60_000_000;

struct Record {
    timeline: Vec<Second>,
    /// Schedule index and text of the earliest-scheduled failure.
    first_failure: Option<(u64, String)>,
    /// When the first failure (in completion order) arrived.
    first_failure_seen: Option<Instant>,
    ok_error_free: u64,
    shed: u64,
    /// Microseconds from scheduled send to answer.
    latency: Histogram<u64>,
    last_answer: Option<Instant>,
}

impl Record {
    fn new(seconds: usize) -> Record {
        Record {
            timeline: vec![Second::default(); seconds],
            first_failure: None,
            first_failure_seen: None,
            ok_error_free: 0,
            shed: 0,
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("static histogram bounds are valid"),
            last_answer: None,
        }
    }

    fn slot(&self, second: usize) -> usize {
        second.min(self.timeline.len() - 1)
    }

    /// Notes a failure of the call scheduled `i`-th, seen at `now`.
    fn failure(&mut self, i: u64, text: impl FnOnce() -> String, now: Instant) {
        if self.first_failure.as_ref().is_none_or(|(j, _)| i < *j) {
            self.first_failure = Some((i, text()));
        }
        self.first_failure_seen.get_or_insert(now);
    }
}

/// One frontend the driver calls, with its kept-alive connections.
struct Target {
    addr: SocketAddr,
    pool: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
    permits: Semaphore,
}

/// Drives `targets` with `load`, call `i` going to `targets[i % n]` (the
/// pods of `--topology nat` each run a frontend), and the kept-alive
/// connections shared out among them. Samples TIME_WAIT (or, behind a NAT,
/// the node's conntrack entries) with `time_wait`, called on a runtime
/// thread, so inside the namespace the runtime was built in. Bounded: `rate × duration`
/// calls of which at most `max_in_flight` are outstanding, then at most
/// [`ANSWER_WITHIN`] plus a second for the last answers. Returns
/// [`LabError::Interrupted`] soon after `stop` turns true.
pub async fn drive(
    targets: &[SocketAddr],
    load: Load,
    live: Arc<Live>,
    time_wait: fn() -> std::io::Result<u64>,
    stop: Arc<AtomicBool>,
) -> Result<DriveOutcome, LabError> {
    if targets.is_empty() {
        return Err(LabError::run_msg(
            "the driver was given no frontend to call",
        ));
    }
    // At least one connection per frontend.
    let per_target = load.connections.max(1).div_ceil(targets.len());
    let max_in_flight = load.max_in_flight.max(1);
    let rate = f64::from(load.rate.max(1));
    let mut frontends = Vec::with_capacity(targets.len());
    for &addr in targets {
        let mut senders = Vec::with_capacity(per_target);
        for _ in 0..per_target {
            senders.push(
                open(addr).await.map_err(|e| {
                    LabError::run(format!("driver connecting to frontend {addr}"), e)
                })?,
            );
        }
        frontends.push(Arc::new(Target {
            addr,
            pool: Mutex::new(senders),
            permits: Semaphore::new(per_target),
        }));
    }
    let in_flight = Arc::new(Semaphore::new(max_in_flight));

    let seconds = (load.duration.as_secs_f64().ceil() as usize).max(1);
    let record = Arc::new(Mutex::new(Record::new(seconds)));
    let total = load.total();

    let start = Instant::now();
    let sampler = {
        let record = record.clone();
        let live = live.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Ok(tw) = time_wait() {
                    live.time_wait.store(tw, Ordering::Relaxed);
                    let mut r = record.lock().expect("record lock");
                    let s = r.slot(start.elapsed().as_secs() as usize);
                    r.timeline[s].time_wait = r.timeline[s].time_wait.max(tw);
                }
            }
        })
    };
    let interrupted = || {
        sampler.abort();
        Err(LabError::Interrupted)
    };

    let shed_text =
        || format!("not sent: {max_in_flight} calls already in flight (the system fell behind)");
    let mut sent = 0u64;
    // (second, calls shed) of the current batch, flushed under one lock.
    let mut shed_batch: Vec<(usize, u64)> = Vec::new();
    while sent < total {
        if stop.load(Ordering::Relaxed) {
            return interrupted();
        }
        let due = ((start.elapsed().as_secs_f64() * rate).floor() as u64 + 1).min(total);
        let mut first_shed = None;
        while sent < due {
            let i = sent;
            sent += 1;
            let second = (i as f64 / rate) as usize;
            let Ok(slot) = in_flight.clone().try_acquire_owned() else {
                first_shed.get_or_insert(i);
                match shed_batch.last_mut() {
                    Some((s, n)) if *s == second => *n += 1,
                    _ => shed_batch.push((second, 1)),
                }
                continue;
            };
            let target = frontends[(i % frontends.len() as u64) as usize].clone();
            let (record, live) = (record.clone(), live.clone());
            tokio::spawn(async move {
                let _slot = slot;
                // Every wait counts from when the call was due, including
                // the wait for a free connection to A, so a system that
                // falls behind shows it (no coordinated omission).
                let due_at = start + Duration::from_secs_f64(i as f64 / rate);
                let result =
                    tokio::time::timeout_at((due_at + ANSWER_WITHIN).into(), one_call(&target))
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!(
                        "no answer within {ANSWER_WITHIN:?} of being due (the system fell behind)"
                    ))
                        });
                let now = Instant::now();
                let latency = now.saturating_duration_since(due_at).as_micros();
                let mut r = record.lock().expect("record lock");
                let slot = r.slot(second);
                r.latency
                    .saturating_record(u64::try_from(latency).unwrap_or(u64::MAX));
                r.last_answer = Some(r.last_answer.map_or(now, |t| t.max(now)));
                match result {
                    Ok(()) => {
                        r.timeline[slot].ok += 1;
                        if r.first_failure_seen.is_none() {
                            r.ok_error_free += 1;
                        }
                        live.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(text) => {
                        r.timeline[slot].failed += 1;
                        r.failure(i, || text, now);
                        live.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        if let Some(i) = first_shed {
            let mut n_shed = 0;
            let mut r = record.lock().expect("record lock");
            for (second, n) in shed_batch.drain(..) {
                let slot = r.slot(second);
                r.timeline[slot].failed += n;
                n_shed += n;
            }
            r.shed += n_shed;
            r.failure(i, shed_text, Instant::now());
            live.failed.fetch_add(n_shed, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // Every call times out ANSWER_WITHIN after it was due; this is a backstop.
    let deadline = Instant::now() + ANSWER_WITHIN + Duration::from_secs(1);
    while in_flight.available_permits() < max_in_flight && Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            return interrupted();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let unanswered = (max_in_flight - in_flight.available_permits()) as u64;
    // One last sample so the peak includes the end of the run.
    if let Ok(tw) = time_wait() {
        live.time_wait.store(tw, Ordering::Relaxed);
    }
    sampler.abort();

    let mut r = record.lock().expect("record lock");
    let quantile = |q: f64| {
        if r.latency.is_empty() {
            0.0
        } else {
            r.latency.value_at_quantile(q) as f64 / 1000.0
        }
    };
    let (latency_ms_p50, latency_ms_p99) = (quantile(0.5), quantile(0.99));
    let completed_s = r
        .last_answer
        .map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    if unanswered > 0 {
        let now = Instant::now();
        r.failure(
            total,
            || format!("{unanswered} calls not answered within {ANSWER_WITHIN:?} after the run"),
            now,
        );
    }
    let ok: u64 = r.timeline.iter().map(|s| s.ok).sum();
    let failed = total - ok;
    let error_free_s = match r.first_failure_seen {
        // At least a millisecond: a rate over a shorter window says nothing.
        Some(t) => t.duration_since(start).as_secs_f64().max(0.001),
        None => load.duration.as_secs_f64().max(completed_s),
    };
    let (first_failure_s, error) = match &r.first_failure {
        Some((i, text)) => (
            Some((*i as f64 / rate).min(load.duration.as_secs_f64())),
            Some(text.clone()),
        ),
        None => (None, None),
    };
    Ok(DriveOutcome {
        calls: total,
        ok,
        failed,
        shed: r.shed,
        first_failure_s,
        error,
        error_free_s,
        ok_error_free: r.ok_error_free,
        peak_time_wait: r
            .timeline
            .iter()
            .map(|s| s.time_wait)
            .max()
            .unwrap_or(0)
            .max(live.time_wait.load(Ordering::Relaxed)),
        completed_s,
        latency_ms_p50,
        latency_ms_p99,
        timeline: r.timeline.clone(),
    })
}

async fn open(target: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn one_call(frontend: &Target) -> Result<(), String> {
    let (target, pool) = (frontend.addr, &frontend.pool);
    let _permit = frontend
        .permits
        .acquire()
        .await
        .map_err(|e| e.to_string())?;
    let taken = pool.lock().expect("pool lock").pop();
    let mut sender = match taken {
        Some(s) if !s.is_closed() => s,
        // A connection to A broke (it should not): replace it.
        _ => open(target)
            .await
            .map_err(|e| format!("driver: reconnecting to frontend: {e}"))?,
    };
    let result = async {
        sender.ready().await.map_err(|e| format!("driver: {e}"))?;
        let req = Request::get(format!("http://{target}/"))
            .header(header::HOST, target.to_string())
            .body(Empty::new())
            .expect("static request parts are valid");
        let resp = tokio::time::timeout(
            CALL_TIMEOUT + Duration::from_secs(1),
            sender.send_request(req),
        )
        .await
        .map_err(|_| "driver: frontend did not answer in time".to_string())?
        .map_err(|e| format!("driver: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("driver: {e}"))?
            .to_bytes();
        match status {
            StatusCode::OK => Ok(()),
            StatusCode::BAD_GATEWAY => Err(String::from_utf8_lossy(&body).trim().to_string()),
            other => Err(format!("frontend answered {other}")),
        }
    }
    .await;
    pool.lock().expect("pool lock").push(sender);
    result
}
