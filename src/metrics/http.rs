//! The `--metrics-bind` HTTP endpoint: `GET /metrics` (Prometheus text format 0.0.4),
//! `/health`, `/ready` and `/live`.
//!
//! # Why its own thread
//! It runs on one plain OS thread with blocking std sockets, not on a shard's executor:
//! - it must answer *during recovery* (to say "not ready"), while every executor is busy
//!   replaying its log and runs nothing else;
//! - it must answer when a shard is stuck (to say "not live"): on that shard's executor it
//!   would be stuck too;
//! - a scrape then costs the shards nothing: it renders from the copies they publish every
//!   housekeeping tick (see [`crate::metrics`]), so it adds no latency to client commands.
//!
//! The thread sleeps in `accept` between scrapes, and scrapes are rare (seconds apart), so a
//! thread of its own costs nothing measurable next to the shards.
//!
//! # Limits
//! One request per connection (`Connection: close`), served one connection at a time; a
//! request head is at most [`REQUEST_MAX_BYTES`]; reads and writes time out after
//! [`IO_TIMEOUT`], so a slow or silent client delays the next scrape by at most that. Only
//! `GET` and `HEAD` are served. There is no authentication: bind it to loopback or a private
//! network (the default is no endpoint at all).
//!
//! # Health
//! | path | 200 when | 503 when |
//! |---|---|---|
//! | `/live` | the process answers and no shard is stalled or fail-stopped | a shard's housekeeping is stalled (no tick for 5 s), or a shard's log failed (fail-stop: only a restart clears it) |
//! | `/ready` | every shard recovered, the port is open, and none of the problems below | recovering, shutting down, stalled, log failed, disk full, last snapshot failed |
//! | `/health` | same as `/ready` | same as `/ready` |
//!
//! The body lists the problems found, one per line (`ok` when none).

use super::STALL_AFTER_MS;
use crate::shard::Global;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Largest request head read (request line and headers).
pub const REQUEST_MAX_BYTES: usize = 8 * 1024;
/// Read and write timeout of one HTTP connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the endpoint (failing fast, before recovery starts) and serves it on its own thread.
pub fn spawn(addr: SocketAddr, g: Arc<Global>) -> Result<SocketAddr, crate::error::StartError> {
    let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => crate::error::StartError::MetricsBind {
            addr,
            source: e,
            hint: "address already in use; choose another with --metrics-bind",
        },
        _ => crate::error::StartError::MetricsBind { addr, source: e, hint: "choose another with --metrics-bind" },
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve(s, &g) {
                            tracing::debug!("metrics endpoint: {e}");
                        }
                    }
                    Err(e) => {
                        tracing::warn!("metrics endpoint: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map_err(|e| crate::error::StartError::MetricsBind {
            addr,
            source: e,
            hint: "cannot start the endpoint's thread",
        })?;
    tracing::info!("metrics and health endpoint on http://{bound}/metrics");
    Ok(bound)
}

/// What health checks found.
#[derive(Debug, Default)]
pub struct Health {
    /// `/ready` and `/health`: serve traffic.
    pub ready: bool,
    /// `/live`: no restart needed.
    pub live: bool,
    pub problems: Vec<String>,
}

/// Checks readiness and liveness from the shards' published state.
pub fn health(g: &Global) -> Health {
    let mut h = Health { ready: true, live: true, problems: Vec::new() };
    let not_ready = |h: &mut Health, p: String| {
        h.ready = false;
        h.problems.push(p);
    };
    let recovered = g.published.recovered.load(Ordering::SeqCst);
    if !g.published.ready.load(Ordering::SeqCst) {
        not_ready(&mut h, format!("recovering: {recovered} of {} shards recovered", g.shards));
    }
    if g.shutting_down() {
        not_ready(&mut h, "shutting down".into());
    }
    let started = g.published.ready.load(Ordering::SeqCst);
    for (i, r) in g.published.reports().into_iter().enumerate() {
        let Some((age_ms, r)) = r else { continue };
        if started && age_ms >= STALL_AFTER_MS {
            h.live = false;
            not_ready(&mut h, format!("shard {i} stalled: no housekeeping tick for {age_ms} ms"));
        }
        match r.wal.as_ref().and_then(|w| w.fault.as_ref()) {
            Some(crate::wal::LogFault::Failed(e)) => {
                h.live = false;
                not_ready(
                    &mut h,
                    format!("shard {i} fail-stopped: its log failed ({e}); writes are refused until a restart"),
                );
            }
            Some(crate::wal::LogFault::NoSpace(e)) => {
                not_ready(&mut h, format!("shard {i} disk full: writes refused until space is freed ({e})"));
            }
            None => {}
        }
        if let Some(s) = &r.snapshot {
            if !s.stats.last_ok {
                let why = s.stats.last_error.as_deref().unwrap_or("unknown error");
                not_ready(&mut h, format!("shard {i} last snapshot failed: {why}"));
            }
        }
    }
    h
}

fn serve(mut s: TcpStream, g: &Global) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() >= REQUEST_MAX_BYTES {
            return respond(&mut s, false, 431, "text/plain", "request header too large\n");
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let is_head = method == "HEAD";
    if method != "GET" && !is_head {
        return respond(&mut s, false, 405, "text/plain", "only GET and HEAD\n");
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let body = crate::shard::metrics::render(g);
            respond(&mut s, is_head, 200, super::CONTENT_TYPE, &body)
        }
        "/health" | "/ready" | "/live" => {
            let h = health(g);
            let ok = if path == "/live" { h.live } else { h.ready };
            let mut body = if ok { "ok\n".to_string() } else { String::new() };
            for p in &h.problems {
                body.push_str(p);
                body.push('\n');
            }
            respond(&mut s, is_head, if ok { 200 } else { 503 }, "text/plain; charset=utf-8", &body)
        }
        "/" => respond(&mut s, is_head, 200, "text/plain", "ringcache: /metrics /health /ready /live\n"),
        _ => respond(&mut s, is_head, 404, "text/plain", "not found\n"),
    }
}

fn respond(s: &mut TcpStream, head_only: bool, code: u16, content_type: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    s.write_all(out.as_bytes())?;
    s.flush()
}
