//! Orchestration: connect, prefill, run a measured phase while printing progress and sampling
//! `INFO persistence` at the window's edges, and collect the result.

use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cli::CommonArgs;
use crate::engine::{self, Control, Load, Progress, RunSpec, StopAt, WorkerResult};
use crate::info::{self, PersistenceDelta};
use crate::report::{fmt_count, fmt_rate, PrefillSummary};
use crate::stats::Stats;

/// A resolved target.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr_text: String,
    pub addr: SocketAddr,
}

pub fn resolve(name: &str, addr_text: &str) -> io::Result<Target> {
    let addr = addr_text
        .to_socket_addrs()
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot resolve target {addr_text:?} (expected HOST:PORT): {e}"),
            )
        })?
        .next()
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("target {addr_text:?} resolves to no address"))
        })?;
    Ok(Target { name: name.to_string(), addr_text: addr_text.to_string(), addr })
}

/// Parse `NAME=HOST:PORT`.
pub fn parse_named(s: &str) -> io::Result<Target> {
    let (name, addr) = s.split_once('=').ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("--target {s:?}: expected NAME=HOST:PORT"))
    })?;
    if name.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("--target {s:?}: empty name")));
    }
    resolve(name, addr)
}

/// Check the common options for values that would make a run meaningless.
pub fn validate(c: &CommonArgs) -> Result<(), String> {
    if c.client_threads == 0 {
        return Err("--client-threads must be at least 1".into());
    }
    if c.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if c.client_threads > c.connections {
        return Err(format!(
            "--client-threads {} exceeds --connections {}: some threads would have nothing to do",
            c.client_threads, c.connections
        ));
    }
    if c.pipeline == 0 {
        return Err("--pipeline must be at least 1".into());
    }
    if c.keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    if !(c.duration_s > 0.0 && c.duration_s.is_finite()) {
        return Err("--duration-s must be > 0".into());
    }
    if !(c.warmup_s >= 0.0 && c.warmup_s.is_finite()) {
        return Err("--warmup-s must be >= 0".into());
    }
    if c.requests == Some(0) {
        return Err("--requests must be at least 1".into());
    }
    if c.value_bytes > 256 * 1024 * 1024 {
        return Err("--value-bytes is limited to 256 MiB".into());
    }
    Ok(())
}

pub fn spec_for(c: &CommonArgs, t: &Target, load: Load, seed: u64, round: u64) -> RunSpec {
    RunSpec {
        addr: t.addr,
        threads: c.client_threads,
        connections: c.connections,
        pipeline: c.pipeline,
        ratio: c.ratio,
        keys: c.keys,
        key_dist: c.key_dist,
        key_prefix: c.key_prefix.clone(),
        value_bytes: c.value_bytes,
        ttl_s: c.ttl_s,
        load,
        warmup: Duration::from_secs_f64(c.warmup_s),
        stop: match c.requests {
            Some(n) => StopAt::Requests(n),
            None => StopAt::Duration(Duration::from_secs_f64(c.duration_s)),
        },
        seed,
        round,
        timeout: Duration::from_millis(c.timeout_ms),
        drain_timeout: Duration::from_millis(c.drain_timeout_ms),
        connect_timeout: Duration::from_millis(c.connect_timeout_ms),
        cpus: c.cpus.clone(),
    }
}

fn connect_all(spec: &RunSpec) -> io::Result<Vec<TcpStream>> {
    (0..spec.connections).map(|_| engine::connect_blocking(spec.addr, spec.connect_timeout)).collect()
}

/// What one measured run produced.
#[derive(Debug)]
pub struct Measured {
    pub stats: Stats,
    pub window_s: f64,
    pub interrupted: bool,
    pub persistence: PersistenceDelta,
}

struct Ticker {
    tty: bool,
    quiet: bool,
    printed: bool,
}

impl Ticker {
    fn new(quiet: bool) -> Ticker {
        Ticker { tty: io::stderr().is_terminal(), quiet, printed: false }
    }
    fn line(&mut self, s: &str) {
        if self.quiet {
            return;
        }
        let mut e = io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[K{s}");
        } else {
            let _ = writeln!(e, "{s}");
        }
        let _ = e.flush();
        self.printed = true;
    }
    fn done(&mut self) {
        if self.tty && self.printed && !self.quiet {
            let _ = writeln!(io::stderr());
        }
        self.printed = false;
    }
}

fn sum_progress(p: &[Progress]) -> (u64, u64, u64) {
    p.iter().fold((0, 0, 0), |a, x| {
        (
            a.0 + x.completed.load(Ordering::Relaxed),
            a.1 + x.errors.load(Ordering::Relaxed),
            a.2 + x.inflight.load(Ordering::Relaxed),
        )
    })
}

fn join_all(handles: Vec<JoinHandle<WorkerResult>>) -> io::Result<Vec<WorkerResult>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.join().map_err(|_| io::Error::other("a client thread panicked"))?);
    }
    Ok(out)
}

fn new_control(spec: &RunSpec, warmup_end_ns: u64, end_ns: u64) -> Arc<Control> {
    Arc::new(Control {
        // A short head start so every thread is spawned and waiting when the clock starts.
        t0: Instant::now() + Duration::from_millis(20),
        warmup_end_ns,
        end_ns: AtomicU64::new(end_ns),
        progress: (0..spec.threads).map(|_| Progress::default()).collect(),
        finished_issuing: AtomicU64::new(0),
    })
}

/// Write every key once. Not measured; errors are counted and reported.
pub fn prefill(spec: &RunSpec, label: &str, quiet: bool, stop: &Arc<AtomicBool>) -> io::Result<PrefillSummary> {
    let streams = connect_all(spec)?;
    let ctl = new_control(spec, 0, u64::MAX);
    let handles = engine::start_phase(spec, streams, true, ctl.clone(), stop.clone())?;
    let mut ticker = Ticker::new(quiet);
    let started = Instant::now();
    let mut next_tick = Duration::from_secs(1);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if stop.load(Ordering::Relaxed) {
            ctl.end_at(ctl.now_ns());
        }
        if started.elapsed() >= next_tick {
            next_tick += Duration::from_secs(1);
            let (done, errors, _) = sum_progress(&ctl.progress);
            ticker.line(&format!(
                "[{label}] prefill {:>3.0}%  {} / {} keys  errors {}",
                100.0 * done as f64 / spec.keys as f64,
                fmt_count(done),
                fmt_count(spec.keys),
                fmt_count(errors)
            ));
        }
    }
    ticker.done();
    let results = join_all(handles)?;
    let mut stats = Stats::new();
    for r in &results {
        stats.merge(&r.stats);
    }
    Ok(PrefillSummary {
        keys: spec.keys,
        seconds: started.elapsed().as_secs_f64(),
        ok: stats.total_ok(),
        errors: stats.total_errors() + stats.total_inflight(),
        error_kinds: stats.error_kinds.clone(),
        interrupted: stop.load(Ordering::Relaxed),
    })
}

/// One measured run: warm-up, window, drain.
pub fn measure(spec: &RunSpec, label: &str, quiet: bool, stop: &Arc<AtomicBool>) -> io::Result<Measured> {
    let streams = connect_all(spec)?;
    let warmup_ns = spec.warmup.as_nanos() as u64;
    let end_ns = match spec.stop {
        StopAt::Duration(d) => warmup_ns + d.as_nanos() as u64,
        StopAt::Requests(_) => u64::MAX,
    };
    let ctl = new_control(spec, warmup_ns, end_ns);
    let handles = engine::start_phase(spec, streams, false, ctl.clone(), stop.clone())?;

    let mut ticker = Ticker::new(quiet);
    let mut before: Option<info::PersistenceSample> = None;
    let mut after: Option<info::PersistenceSample> = None;
    let mut interrupted = false;
    let mut next_tick_ns = 1_000_000_000u64;
    let mut last_done = 0u64;
    let mut last_tick_ns = 0u64;
    let offered = match spec.load {
        Load::Open { rate, .. } => format!("  offered {}/s", fmt_rate(rate)),
        Load::Closed => String::new(),
    };
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(10));
        let now = ctl.now_ns();
        if stop.load(Ordering::Relaxed) && !interrupted {
            interrupted = true;
            ctl.end_at(now);
        }
        let end = ctl.end_ns.load(Ordering::SeqCst);
        if before.is_none() && now >= warmup_ns && now < end {
            before = info::persistence_sample(spec.addr, spec.connect_timeout);
        }
        let all_issued = ctl.finished_issuing.load(Ordering::SeqCst) as usize == spec.threads;
        if after.is_none() && before.is_some() && (now >= end || all_issued) {
            after = info::persistence_sample(spec.addr, spec.connect_timeout);
        }
        if now >= next_tick_ns {
            let (done, errors, inflight) = sum_progress(&ctl.progress);
            let dt = (now - last_tick_ns) as f64 / 1e9;
            let rate = (done - last_done) as f64 / dt.max(1e-9);
            last_done = done;
            last_tick_ns = now;
            next_tick_ns = now + 1_000_000_000;
            let phase = if now < warmup_ns {
                "warm-up  "
            } else if now < end && !all_issued {
                "measuring"
            } else {
                "draining "
            };
            ticker.line(&format!(
                "[{label}] {:>4.0}s {phase}  replies/s {:>8}{offered}  errors {}  in flight {}",
                now as f64 / 1e9,
                fmt_rate(rate),
                fmt_count(errors),
                fmt_count(inflight)
            ));
        }
    }
    ticker.done();
    let results = join_all(handles)?;
    if before.is_some() && after.is_none() {
        after = info::persistence_sample(spec.addr, spec.connect_timeout);
    }
    let mut stats = Stats::new();
    let mut last_completion = 0;
    for r in &results {
        stats.merge(&r.stats);
        last_completion = last_completion.max(r.last_completion_ns);
    }
    let end = ctl.end_ns.load(Ordering::SeqCst);
    let window_end = if end == u64::MAX { last_completion } else { end };
    let window_s = window_end.saturating_sub(warmup_ns) as f64 / 1e9;
    stats.set_window(window_s);
    let persistence = match (&before, &after) {
        (Some(a), Some(b)) => PersistenceDelta::between(a, b),
        _ => PersistenceDelta::default(),
    };
    Ok(Measured { stats, window_s, interrupted, persistence })
}
