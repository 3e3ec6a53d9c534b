//! The load generator: HTTP/1.1 keep-alive on hyper, one task per
//! connection, latencies recorded in an HDR histogram (microseconds).
//!
//! Two shapes: closed loop (each connection sends its next request as soon
//! as the previous answer is read: maximum throughput) and fixed rate (each
//! connection sends on a schedule; latency is measured from the scheduled
//! send time, so a stalled server is not hidden by the client waiting —
//! "coordinated omission").

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// What one request looks like.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Sent as the `Host` header (Canopy routes by it).
    pub host: String,
    pub path: String,
}

/// The outcome of one load run.
#[derive(Clone, Debug)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    /// Latency at quantile `q` in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One keep-alive connection.
struct Conn {
    sender: http1::SendRequest<Empty<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender })
    }

    /// Send one GET and read the whole body; Ok(status is 2xx).
    async fn get(&mut self, target: &Target) -> Result<bool> {
        self.sender.ready().await?;
        let request = http::Request::get(&target.path)
            .header(http::header::HOST, &target.host)
            .body(Empty::new())?;
        let response = self.sender.send_request(request).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        Ok(ok)
    }
}

/// One request on a fresh connection: the time to the response head (first
/// byte) and to the end of the body, and the body.
pub async fn single(target: &Target) -> Result<(Duration, Duration, u16, Bytes)> {
    let start = Instant::now();
    let mut conn = Conn::open(target.addr).await?;
    conn.sender.ready().await?;
    let request = http::Request::get(&target.path)
        .header(http::header::HOST, &target.host)
        .body(Empty::new())?;
    let response = conn.sender.send_request(request).await?;
    let first_byte = start.elapsed();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((first_byte, start.elapsed(), status, body))
}

/// Closed loop: `connections` connections, each sending back to back, for
/// `duration` (after a warm-up of `warmup`).
pub async fn closed_loop(
    target: &Target,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<LoadResult> {
    run(target, connections, warmup, duration, None).await
}

/// Fixed rate: `rate_rps` requests per second spread over `connections`.
pub async fn fixed_rate(
    target: &Target,
    connections: usize,
    rate_rps: u64,
    warmup: Duration,
    duration: Duration,
) -> Result<LoadResult> {
    debug_assert!(rate_rps > 0);
    let interval = Duration::from_secs_f64(connections as f64 / rate_rps as f64);
    run(target, connections, warmup, duration, Some(interval)).await
}

async fn run(
    target: &Target,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    interval: Option<Duration>,
) -> Result<LoadResult> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::open(target.addr).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let target = target.clone();
        tasks.spawn(async move {
            let mut hist = histogram();
            let (mut requests, mut errors) = (0u64, 0u64);
            // Spread the connections' schedules over one interval.
            let offset = interval.map(|iv| iv.mul_f64(i as f64 / connections as f64));
            let mut next = start + offset.unwrap_or_default();
            tokio::time::sleep_until(start.into()).await;
            loop {
                // When the latency clock starts for this request.
                let mut from = Instant::now();
                if interval.is_some() {
                    if from > next {
                        // The previous answer came after this request was
                        // due: the server's delay counts (no coordinated
                        // omission).
                        from = next;
                    } else {
                        // On time: start the clock when the timer fires, so
                        // the timer's ~1 ms granularity is not counted.
                        tokio::time::sleep_until(next.into()).await;
                        from = Instant::now();
                    }
                } else {
                    next = from;
                }
                if next >= end {
                    break;
                }
                let outcome = conn.get(&target).await;
                let done = Instant::now();
                if next >= measure_from {
                    match outcome {
                        Ok(true) => {
                            requests += 1;
                            let us = done.duration_since(from).as_micros() as u64;
                            hist.saturating_record(us.max(1));
                        }
                        Ok(false) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            // A broken connection: open a new one.
                            match Conn::open(target.addr).await {
                                Ok(c) => conn = c,
                                Err(_) => break,
                            }
                        }
                    }
                }
                if let Some(iv) = interval {
                    next += iv;
                }
            }
            (hist, requests, errors)
        });
    }
    let mut total = LoadResult {
        requests: 0,
        errors: 0,
        elapsed: duration,
        hist: histogram(),
    };
    while let Some(joined) = tasks.join_next().await {
        let (hist, requests, errors) = joined.context("a load task panicked")?;
        total
            .hist
            .add(&hist)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        total.requests += requests;
        total.errors += errors;
    }
    if total.requests == 0 {
        bail!(
            "no successful request to http://{}{} (Host {}); {} errors",
            target.addr,
            target.path,
            target.host,
            total.errors
        );
    }
    Ok(total)
}
