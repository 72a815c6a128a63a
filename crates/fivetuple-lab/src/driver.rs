//! The load driver: calls frontend A at a fixed rate (open loop: a call is
//! sent when it is due, whether or not earlier calls have answered) over
//! connections to A that are opened before the clock starts and kept alive,
//! so the driver never needs a new port and is not itself the victim.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
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
    /// Calls that failed.
    pub failed: AtomicU64,
    /// TIME_WAIT sockets in the box at the last sample.
    pub time_wait: AtomicU64,
}

/// One second of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    /// Calls scheduled in this second that answered 200.
    pub ok: u64,
    /// Calls scheduled in this second that failed.
    pub failed: u64,
    /// Highest TIME_WAIT count sampled in this second.
    pub time_wait: u64,
}

/// What the driver saw.
#[derive(Debug, Clone)]
pub struct DriveOutcome {
    /// Calls sent.
    pub calls: u64,
    /// Calls answered 200.
    pub ok: u64,
    /// Calls that failed (502, other status, or no answer).
    pub failed: u64,
    /// When the first failing call was scheduled, seconds from the start.
    pub first_failure_s: Option<f64>,
    /// The first failure's text (A's 502 body: the OS error).
    pub error: Option<String>,
    /// Calls answered 200 among those scheduled before the first failure.
    pub ok_before_first_failure: u64,
    /// Highest TIME_WAIT count sampled.
    pub peak_time_wait: u64,
    /// Seconds from the start until the last answer arrived.
    pub completed_s: f64,
    /// Median time from a call's scheduled send to its answer, in ms.
    pub latency_ms_p50: f64,
    /// 99th percentile of that time, in ms.
    pub latency_ms_p99: f64,
    /// One entry per second of the run.
    pub timeline: Vec<Second>,
}

/// A call not answered this long after it was due counts as failed.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(6);

#[derive(Default)]
struct Record {
    timeline: Vec<Second>,
    first_failure: Option<(u64, String)>,
    ok_scheduled: Vec<u64>,
    /// Microseconds from scheduled send to answer, per call.
    latencies_us: Vec<u32>,
    last_answer: Option<Instant>,
}

/// Drives `target` at `rate` calls/s for `duration` over `connections`
/// kept-alive connections, sampling TIME_WAIT with `time_wait` (called on a
/// runtime thread, so inside the box). Bounded: `rate × duration` calls,
/// then at most [`ANSWER_WITHIN`] plus a second for the last answers.
pub async fn drive(
    target: SocketAddr,
    rate: u32,
    duration: Duration,
    connections: usize,
    live: Arc<Live>,
    time_wait: fn() -> std::io::Result<u64>,
) -> Result<DriveOutcome, LabError> {
    let connections = connections.max(1);
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(
            open(target).await.map_err(|e| {
                LabError::Run(format!("driver connecting to frontend {target}: {e}"))
            })?,
        );
    }
    let pool = Arc::new(Mutex::new(senders));
    let permits = Arc::new(Semaphore::new(connections));

    let seconds = (duration.as_secs_f64().ceil() as usize).max(1);
    let record = Arc::new(Mutex::new(Record {
        timeline: vec![Second::default(); seconds],
        ..Record::default()
    }));
    let total = (f64::from(rate) * duration.as_secs_f64()).floor() as u64;
    let done = Arc::new(AtomicU64::new(0));

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
                    let s = (start.elapsed().as_secs() as usize).min(seconds - 1);
                    let mut r = record.lock().expect("record lock");
                    r.timeline[s].time_wait = r.timeline[s].time_wait.max(tw);
                }
            }
        })
    };

    let mut sent = 0u64;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * f64::from(rate)).floor() as u64 + 1).min(total);
        while sent < due {
            let i = sent;
            sent += 1;
            let (pool, permits, record, live, done) = (
                pool.clone(),
                permits.clone(),
                record.clone(),
                live.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                // Every wait counts from when the call was due, including
                // the wait for a free connection to A, so a system that
                // falls behind shows it (no coordinated omission).
                let due_at = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
                let result = tokio::time::timeout_at(
                    (due_at + ANSWER_WITHIN).into(),
                    one_call(target, &pool, &permits),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {ANSWER_WITHIN:?} of being due (the system fell behind)"
                    ))
                });
                let now = Instant::now();
                let latency = now
                    .saturating_duration_since(due_at)
                    .as_micros()
                    .min(u128::from(u32::MAX)) as u32;
                let second = (i as f64 / f64::from(rate)) as usize;
                let mut r = record.lock().expect("record lock");
                let slot = second.min(r.timeline.len() - 1);
                r.latencies_us.push(latency);
                r.last_answer = Some(r.last_answer.map_or(now, |t| t.max(now)));
                match result {
                    Ok(()) => {
                        r.timeline[slot].ok += 1;
                        r.ok_scheduled.push(i);
                        live.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(text) => {
                        r.timeline[slot].failed += 1;
                        live.failed.fetch_add(1, Ordering::Relaxed);
                        if r.first_failure.as_ref().is_none_or(|(j, _)| i < *j) {
                            r.first_failure = Some((i, text));
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // Every call times out ANSWER_WITHIN after it was due; this is a backstop.
    let deadline = Instant::now() + ANSWER_WITHIN + Duration::from_secs(1);
    while done.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // One last sample so the peak includes the end of the run.
    if let Ok(tw) = time_wait() {
        live.time_wait.store(tw, Ordering::Relaxed);
    }
    sampler.abort();

    let mut r = record.lock().expect("record lock");
    r.latencies_us.sort_unstable();
    let pct = |q: f64| {
        let l = &r.latencies_us;
        if l.is_empty() {
            0.0
        } else {
            f64::from(l[((l.len() - 1) as f64 * q).round() as usize]) / 1000.0
        }
    };
    let (latency_ms_p50, latency_ms_p99) = (pct(0.5), pct(0.99));
    let completed_s = r
        .last_answer
        .map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    let ok: u64 = r.timeline.iter().map(|s| s.ok).sum();
    let answered_failed: u64 = r.timeline.iter().map(|s| s.failed).sum();
    let unanswered = sent - ok - answered_failed;
    let (first_failure_s, error, ok_before) = match (&r.first_failure, unanswered) {
        (Some((i, text)), _) => (
            Some(*i as f64 / f64::from(rate)),
            Some(text.clone()),
            r.ok_scheduled.iter().filter(|&&j| j < *i).count() as u64,
        ),
        (None, 0) => (None, None, ok),
        (None, _) => (
            Some(duration.as_secs_f64()),
            Some(format!(
                "{unanswered} calls not answered within {ANSWER_WITHIN:?} after the run"
            )),
            ok,
        ),
    };
    Ok(DriveOutcome {
        calls: sent,
        ok,
        failed: answered_failed + unanswered,
        first_failure_s,
        error,
        ok_before_first_failure: ok_before,
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

async fn one_call(
    target: SocketAddr,
    pool: &Mutex<Vec<SendRequest<Empty<Bytes>>>>,
    permits: &Semaphore,
) -> Result<(), String> {
    let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
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
