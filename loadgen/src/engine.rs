//! The load engine: one OS thread per `--client-threads`, each driving its share of the
//! connections with a `ppoll(2)` event loop over non-blocking sockets.
//!
//! A run has a fixed timeline, in nanoseconds since a start instant `t0` shared by all threads:
//!
//! ```text
//!   t0 ──── warm-up ────▶ warmup_end ──── measured window ────▶ end ── drain ──▶ done
//! ```
//!
//! A request belongs to the measurement when its stamp (closed loop: its actual send time;
//! open loop: its intended send time) lies in `[warmup_end, end)`. No request is stamped at or
//! after `end`; the ones outstanding then are waited for up to `--drain-timeout-ms` and
//! their latencies are recorded (dropping the slowest requests would flatter the tail), and
//! whatever is still outstanding after that is reported as in flight at the cutoff.
//!
//! `end` lives in an atomic so that Ctrl-C (or a `--requests` run finishing) can pull it in.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::resp::{self, Limits, Reply};
use crate::schedule::{Arrival, OpenLoop, Pacer};
use crate::stats::Stats;
use crate::workload::{derive_seed, make_value, Generator, KeyDist, Op, Ratio};

/// Pipeline depth used at least during prefill.
pub const PREFILL_MIN_PIPELINE: usize = 32;

/// Closed loop (as fast as replies come back) or open loop at a fixed total rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    Closed,
    Open { rate: f64, arrival: Arrival },
}

/// When the measured window ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopAt {
    Duration(Duration),
    /// Total measured requests across all connections.
    Requests(u64),
}

/// Everything one run (one target, one round) needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub addr: SocketAddr,
    pub threads: usize,
    pub connections: usize,
    pub pipeline: usize,
    pub ratio: Ratio,
    pub keys: u64,
    pub key_dist: KeyDist,
    pub key_prefix: String,
    pub value_bytes: usize,
    pub ttl_s: Option<u64>,
    pub load: Load,
    pub warmup: Duration,
    pub stop: StopAt,
    pub seed: u64,
    pub round: u64,
    pub timeout: Duration,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    pub cpus: Vec<usize>,
}

/// Live counters a worker publishes for the once-a-second progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub inflight: AtomicU64,
}

/// Shared control of a running phase.
#[derive(Debug)]
pub struct Control {
    pub t0: Instant,
    pub warmup_end_ns: u64,
    /// Stamp cutoff; `u64::MAX` until known (request-count runs).
    pub end_ns: AtomicU64,
    pub progress: Vec<Progress>,
    /// Workers that finished issuing (request-count runs end when all have).
    pub finished_issuing: AtomicU64,
}

impl Control {
    pub fn now_ns(&self) -> u64 {
        Instant::now().saturating_duration_since(self.t0).as_nanos() as u64
    }
    /// Pull the end of the measured window in to `at_ns` (if earlier).
    pub fn end_at(&self, at_ns: u64) {
        self.end_ns.fetch_min(at_ns, Ordering::SeqCst);
    }
}

/// What one worker thread hands back.
#[derive(Debug)]
pub struct WorkerResult {
    pub stats: Stats,
    /// Latest completion of a measured request, ns since t0.
    pub last_completion_ns: u64,
}

/// Where a connection's commands come from.
enum Source {
    Workload(Generator),
    /// SET every key in `next, next+step, ... < end` once.
    Prefill {
        next: u64,
        step: u64,
        end: u64,
    },
}

impl Source {
    fn next(&mut self) -> Option<(Op, u64)> {
        match self {
            Source::Workload(g) => Some(g.next_op()),
            Source::Prefill { next, step, end } => {
                if *next >= *end {
                    return None;
                }
                let k = *next;
                *next += *step;
                Some((Op::Set, k))
            }
        }
    }
}

struct InFlight {
    op: Op,
    stamp_ns: u64,
    sent_ns: u64,
    measured: bool,
}

enum State {
    Connected(TcpStream),
    Connecting { sock: Socket, since_ns: u64 },
    Down { retry_ns: u64 },
}

struct Conn {
    state: State,
    pacer: Pacer,
    source: Source,
    /// Measured requests this connection may still send (request-count runs).
    quota: Option<u64>,
    exhausted: bool,
    inflight: VecDeque<InFlight>,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    rpos: usize,
    backoff_ms: u64,
    /// Consecutive connection failures without a successful (re)connect.
    failures: u32,
    /// Stopped trying to reconnect (see [`MAX_CONSECUTIVE_FAILURES`]).
    gave_up: bool,
}

/// A connection that failed this many times in a row (about 16 s of back-off) is given up for
/// the rest of the phase, so a dead target cannot make a `--requests` run hang.
const MAX_CONSECUTIVE_FAILURES: u32 = 20;

impl Conn {
    /// Mark the connection down and schedule a reconnect with exponential back-off (50 ms to
    /// 1 s). Returns true if this failure made it give up.
    fn go_down(&mut self, now: u64) -> bool {
        self.state = State::Down { retry_ns: now + self.backoff_ms * 1_000_000 };
        self.backoff_ms = (self.backoff_ms * 2).min(1000);
        self.failures += 1;
        if self.failures >= MAX_CONSECUTIVE_FAILURES && !self.gave_up {
            self.gave_up = true;
            self.exhausted = true;
            return true;
        }
        false
    }
}

/// Connect once, blocking with a timeout, with `TCP_NODELAY` set.
pub fn connect_blocking(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {addr}: {e}")))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn connect_nonblocking(addr: SocketAddr) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_nodelay(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) => Err(e),
    }
}

/// A short, stable name for an I/O error kind (used as an error-count key).
pub fn io_kind(e: &io::Error) -> String {
    let k = match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::ConnectionAborted => "aborted",
        io::ErrorKind::BrokenPipe => "broken-pipe",
        io::ErrorKind::TimedOut => "timed-out",
        io::ErrorKind::UnexpectedEof => "eof",
        _ => "other",
    };
    format!("io:{k}")
}

/// Pin the calling thread to `cpu`. Best effort: a failure is reported once and ignored.
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against the set size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("warning: cannot pin client thread to cpu {cpu}: {}", io::Error::last_os_error());
        }
    }
}

/// Measured requests for connection `i` in a request-count run: `n` split as evenly as possible.
pub fn quota_for(n: u64, connections: usize, i: usize) -> u64 {
    let c = connections as u64;
    n / c + u64::from((i as u64) < n % c)
}

/// Start one phase on already-open connections (one `TcpStream` per connection, in index
/// order): one thread per `spec.threads`, returned for the caller to monitor and join.
///
/// `prefill`: SET every key once, closed loop; everything counts and there is no window.
/// Otherwise: the workload of `spec`, on the timeline of `ctl`.
pub fn start_phase(
    spec: &RunSpec,
    streams: Vec<TcpStream>,
    prefill: bool,
    ctl: Arc<Control>,
    stop_flag: Arc<AtomicBool>,
) -> io::Result<Vec<JoinHandle<WorkerResult>>> {
    let value = Arc::new(make_value(derive_seed(spec.seed, u64::MAX, 0), spec.value_bytes));
    let mut per_thread: Vec<Vec<(usize, TcpStream)>> = (0..spec.threads).map(|_| Vec::new()).collect();
    for (i, s) in streams.into_iter().enumerate() {
        s.set_nonblocking(true)?;
        per_thread[i % spec.threads].push((i, s));
    }
    let mut handles = Vec::new();
    for (t, mine) in per_thread.into_iter().enumerate() {
        let spec = spec.clone();
        let ctl = ctl.clone();
        let value = value.clone();
        let stop_flag = stop_flag.clone();
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                if !spec.cpus.is_empty() {
                    pin_to(spec.cpus[t % spec.cpus.len()]);
                }
                // The default 50 µs timer slack would make every open-loop wake-up up to 50 µs
                // late (and that lateness would be charged to the server). Ask for 1 ns.
                // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects only this
                // thread.
                unsafe {
                    libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
                }
                Worker::new(&spec, t, mine, prefill, ctl, value, stop_flag).run()
            })
            .map_err(|e| io::Error::other(format!("cannot start client thread: {e}")))?;
        handles.push(h);
    }
    Ok(handles)
}

struct Worker {
    conns: Vec<Conn>,
    addr: SocketAddr,
    depth: usize,
    prefix: Vec<u8>,
    value: Arc<Vec<u8>>,
    ttl_s: Option<u64>,
    limits: Limits,
    timeout_ns: u64,
    drain_timeout_ns: u64,
    ctl: Arc<Control>,
    stop_flag: Arc<AtomicBool>,
    thread: usize,
    prefill: bool,
    stats: Stats,
    last_completion_ns: u64,
    completed: u64,
    errors: u64,
}

impl Worker {
    fn new(
        spec: &RunSpec,
        thread: usize,
        streams: Vec<(usize, TcpStream)>,
        prefill: bool,
        ctl: Arc<Control>,
        value: Arc<Vec<u8>>,
        stop_flag: Arc<AtomicBool>,
    ) -> Worker {
        let conns = streams
            .into_iter()
            .map(|(i, s)| {
                let pacer = match (spec.load, prefill) {
                    (Load::Open { rate, arrival }, false) => Pacer::Open(OpenLoop::new(
                        rate / spec.connections as f64,
                        arrival,
                        derive_seed(spec.seed ^ 0x0be1_0000, spec.round, i as u64),
                        i as f64 / spec.connections as f64,
                    )),
                    _ => Pacer::Closed,
                };
                let source = if prefill {
                    Source::Prefill { next: i as u64, step: spec.connections as u64, end: spec.keys }
                } else {
                    Source::Workload(Generator::new(
                        derive_seed(spec.seed, spec.round, i as u64),
                        spec.keys,
                        spec.key_dist,
                        spec.ratio,
                    ))
                };
                let quota = match (spec.stop, prefill) {
                    (StopAt::Requests(n), false) => Some(quota_for(n, spec.connections, i)),
                    _ => None,
                };
                Conn {
                    state: State::Connected(s),
                    pacer,
                    source,
                    quota,
                    exhausted: false,
                    inflight: VecDeque::new(),
                    wbuf: Vec::with_capacity(64 * 1024),
                    wpos: 0,
                    rbuf: Vec::with_capacity(64 * 1024),
                    rpos: 0,
                    backoff_ms: 50,
                    failures: 0,
                    gave_up: false,
                }
            })
            .collect();
        Worker {
            conns,
            addr: spec.addr,
            // Prefill is not measured: pipeline it at least 32 deep so it is quick.
            depth: if prefill { spec.pipeline.max(PREFILL_MIN_PIPELINE) } else { spec.pipeline },
            prefix: spec.key_prefix.as_bytes().to_vec(),
            value,
            ttl_s: spec.ttl_s,
            limits: Limits { max_bulk_bytes: (spec.value_bytes * 2).max(64 * 1024 * 1024), ..Limits::default() },
            timeout_ns: spec.timeout.as_nanos() as u64,
            drain_timeout_ns: spec.drain_timeout.as_nanos() as u64,
            ctl,
            stop_flag,
            thread,
            prefill,
            stats: Stats::new(),
            last_completion_ns: 0,
            completed: 0,
            errors: 0,
        }
    }

    /// Second of the per-second series for a completion at `t_ns`. Completions during the
    /// drain (after the window's end) are folded into the window's last second.
    fn sec_of(&self, t_ns: u64) -> usize {
        let end = self.ctl.end_ns.load(Ordering::Relaxed);
        let t = if end != u64::MAX && end > self.ctl.warmup_end_ns { t_ns.min(end - 1) } else { t_ns };
        (t.saturating_sub(self.ctl.warmup_end_ns) / 1_000_000_000) as usize
    }

    fn run(mut self) -> WorkerResult {
        // Start together at t0.
        let wait = self.ctl.t0.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let mut drain_deadline: Option<u64> = None;
        let mut reported_finished = false;
        let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(self.conns.len());
        let mut poll_idx: Vec<usize> = Vec::with_capacity(self.conns.len());
        loop {
            let now = self.ctl.now_ns();
            if self.prefill && self.stop_flag.load(Ordering::Relaxed) {
                self.ctl.end_at(now);
            }
            let end = self.ctl.end_ns.load(Ordering::Relaxed);
            let issuing = now < end;

            if issuing {
                for i in 0..self.conns.len() {
                    self.maintain_connection(i, now);
                    self.issue(i, now, end);
                    // Write at once, so the stamp of a closed-loop request is its send time.
                    if let Err(e) = self.flush(i) {
                        self.fail(i, &io_kind(&e), now);
                    }
                }
            }
            let all_exhausted = self.conns.iter().all(|c| c.exhausted);
            if all_exhausted && !reported_finished {
                reported_finished = true;
                self.ctl.finished_issuing.fetch_add(1, Ordering::SeqCst);
            }
            for i in 0..self.conns.len() {
                if let Err(e) = self.flush(i) {
                    self.fail(i, &io_kind(&e), now);
                }
                self.check_timeout(i, now);
            }
            let inflight: usize = self.conns.iter().map(|c| c.inflight.len()).sum();
            self.publish(inflight);

            if !issuing || all_exhausted {
                if inflight == 0 {
                    break;
                }
                let dl = *drain_deadline.get_or_insert(now + self.drain_timeout_ns);
                if now >= dl {
                    self.give_up_inflight();
                    break;
                }
            }

            // Sleep until I/O, the next intended send, a reconnect, or 10 ms (to notice a
            // moved end or Ctrl-C).
            let mut wake = now + 10_000_000;
            if issuing {
                wake = wake.min(end);
            }
            if let Some(dl) = drain_deadline {
                wake = wake.min(dl);
            }
            pollfds.clear();
            poll_idx.clear();
            for (i, c) in self.conns.iter().enumerate() {
                let (fd, events) = match &c.state {
                    State::Connected(s) => {
                        let mut ev = libc::POLLIN;
                        if c.wpos < c.wbuf.len() {
                            ev |= libc::POLLOUT;
                        }
                        (s.as_raw_fd(), ev)
                    }
                    State::Connecting { sock, .. } => (sock.as_raw_fd(), libc::POLLOUT),
                    State::Down { retry_ns } => {
                        if issuing {
                            wake = wake.min(*retry_ns);
                        }
                        continue;
                    }
                };
                if issuing && !c.exhausted && matches!(c.state, State::Connected(_)) {
                    if let Some(t) = c.pacer.wake_at_ns(c.inflight.len(), self.depth) {
                        wake = wake.min(t);
                    }
                }
                if let Some(f) = c.inflight.front() {
                    if self.timeout_ns > 0 {
                        wake = wake.min(f.sent_ns + self.timeout_ns);
                    }
                }
                pollfds.push(libc::pollfd { fd, events, revents: 0 });
                poll_idx.push(i);
            }
            let now2 = self.ctl.now_ns();
            let timeout_ns = wake.saturating_sub(now2);
            let ts = libc::timespec {
                tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: pollfds is a valid, exclusively borrowed array of pollfd of that length.
            let n = unsafe { libc::ppoll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, &ts, std::ptr::null()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("warning: ppoll failed in client thread {}: {e}", self.thread);
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            if n == 0 {
                continue;
            }
            for k in 0..pollfds.len() {
                let re = pollfds[k].revents;
                if re == 0 {
                    continue;
                }
                let i = poll_idx[k];
                if matches!(self.conns[i].state, State::Connecting { .. }) {
                    self.finish_connect(i);
                    continue;
                }
                if re & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read(i);
                }
                if re & libc::POLLOUT != 0 {
                    if let Err(e) = self.flush(i) {
                        let now = self.ctl.now_ns();
                        self.fail(i, &io_kind(&e), now);
                    }
                }
            }
        }
        self.count_unsent();
        self.publish(0);
        WorkerResult { stats: self.stats, last_completion_ns: self.last_completion_ns }
    }

    fn publish(&self, inflight: usize) {
        let p = &self.ctl.progress[self.thread];
        p.completed.store(self.completed, Ordering::Relaxed);
        p.errors.store(self.errors, Ordering::Relaxed);
        p.inflight.store(inflight as u64, Ordering::Relaxed);
    }

    /// Put as many requests on connection `i` as its pacer allows at `now`.
    fn issue(&mut self, i: usize, now: u64, end: u64) {
        let warmup_end = self.ctl.warmup_end_ns;
        let c = &mut self.conns[i];
        if c.exhausted || !matches!(c.state, State::Connected(_)) {
            return;
        }
        loop {
            if c.pacer.peek_ns(now) >= end {
                break;
            }
            if c.quota == Some(0) {
                c.exhausted = true;
                break;
            }
            let Some(stamp) = c.pacer.next_request(now, c.inflight.len(), self.depth) else {
                break;
            };
            let Some((op, key)) = c.source.next() else {
                c.exhausted = true;
                break;
            };
            let measured = self.prefill || (stamp >= warmup_end && stamp < end);
            if measured {
                if let Some(q) = c.quota.as_mut() {
                    *q -= 1;
                }
                self.stats.record_sent(op);
                if let Pacer::Open(_) = c.pacer {
                    self.stats.send_lag.saturating_record(now.saturating_sub(stamp));
                }
            }
            match op {
                Op::Get => resp::encode_get(&mut c.wbuf, &self.prefix, key),
                Op::Set => resp::encode_set(&mut c.wbuf, &self.prefix, key, &self.value, self.ttl_s),
            }
            c.inflight.push_back(InFlight { op, stamp_ns: stamp, sent_ns: now, measured });
        }
    }

    fn flush(&mut self, i: usize) -> io::Result<()> {
        let c = &mut self.conns[i];
        let State::Connected(s) = &mut c.state else {
            return Ok(());
        };
        while c.wpos < c.wbuf.len() {
            match s.write(&c.wbuf[c.wpos..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")),
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        c.wbuf.clear();
        c.wpos = 0;
        Ok(())
    }

    fn read(&mut self, i: usize) {
        let mut chunk = [0u8; 64 * 1024];
        // Bounded: at most 16 reads per wake-up so one busy connection cannot starve others.
        for _ in 0..16 {
            let c = &mut self.conns[i];
            let State::Connected(s) = &mut c.state else {
                return;
            };
            match s.read(&mut chunk) {
                Ok(0) => {
                    let now = self.ctl.now_ns();
                    // Parse what arrived before the close, then fail the rest.
                    self.parse_replies(i, now);
                    self.fail(i, "io:eof", now);
                    return;
                }
                Ok(n) => {
                    let now = self.ctl.now_ns();
                    self.conns[i].rbuf.extend_from_slice(&chunk[..n]);
                    if !self.parse_replies(i, now) {
                        return;
                    }
                    if n < chunk.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let now = self.ctl.now_ns();
                    self.fail(i, &io_kind(&e), now);
                    return;
                }
            }
        }
    }

    /// Consume complete replies from connection `i`'s buffer, all stamped `now`. Returns false
    /// if the connection had to be failed.
    fn parse_replies(&mut self, i: usize, now: u64) -> bool {
        loop {
            let c = &mut self.conns[i];
            let parsed = resp::parse_reply(&c.rbuf[c.rpos..], &self.limits);
            let (err_kind, used, is_nil) = match parsed {
                Ok(None) => break,
                Ok(Some((reply, used))) => {
                    let kind = reply.error_kind();
                    (kind, used, matches!(reply, Reply::Nil))
                }
                Err(e) => {
                    eprintln!("warning: protocol error from {} (connection dropped): {e}", self.addr);
                    self.fail(i, "protocol", now);
                    return false;
                }
            };
            c.rpos += used;
            let Some(req) = c.inflight.pop_front() else {
                eprintln!("warning: reply with no request outstanding from {} (connection dropped)", self.addr);
                self.fail(i, "protocol:unsolicited", now);
                return false;
            };
            self.completed += 1;
            if !self.prefill && now >= self.ctl.warmup_end_ns && now < self.ctl.end_ns.load(Ordering::Relaxed) {
                let sec = self.sec_of(now);
                self.stats.record_window_reply(sec);
            }
            if req.measured {
                let sec = self.sec_of(now);
                match err_kind {
                    Some(k) => {
                        self.errors += 1;
                        self.stats.record_error(req.op, &k, sec);
                    }
                    None => {
                        if is_nil && req.op == Op::Get {
                            self.stats.get_misses += 1;
                        }
                        self.stats.record_ok(req.op, now.saturating_sub(req.stamp_ns), sec);
                    }
                }
                self.last_completion_ns = self.last_completion_ns.max(now);
            } else if err_kind.is_some() {
                self.errors += 1;
            }
        }
        let c = &mut self.conns[i];
        if c.rpos == c.rbuf.len() {
            c.rbuf.clear();
            c.rpos = 0;
        } else if c.rpos > 64 * 1024 && c.rpos * 2 > c.rbuf.len() {
            c.rbuf.drain(..c.rpos);
            c.rpos = 0;
        }
        true
    }

    fn check_timeout(&mut self, i: usize, now: u64) {
        if self.timeout_ns == 0 {
            return;
        }
        let late = self.conns[i].inflight.front().is_some_and(|f| now >= f.sent_ns + self.timeout_ns);
        if late {
            self.fail(i, "timeout", now);
        }
    }

    /// Drop connection `i`: every request outstanding on it ends as an error of `kind`.
    fn fail(&mut self, i: usize, kind: &str, now: u64) {
        let sec = self.sec_of(now);
        let c = &mut self.conns[i];
        let reqs: Vec<InFlight> = c.inflight.drain(..).collect();
        c.wbuf.clear();
        c.wpos = 0;
        c.rbuf.clear();
        c.rpos = 0;
        let gave_up = c.go_down(now);
        self.stats.record_conn_event(kind);
        if gave_up {
            self.stats.record_conn_event("gave-up");
        }
        for r in reqs {
            self.completed += 1;
            self.errors += 1;
            if r.measured {
                self.stats.record_error(r.op, kind, sec);
            }
        }
    }

    /// Start reconnecting a dropped connection once its back-off has passed.
    fn maintain_connection(&mut self, i: usize, now: u64) {
        let c = &mut self.conns[i];
        if c.gave_up {
            return;
        }
        let event = match &c.state {
            State::Down { retry_ns } if now >= *retry_ns => match connect_nonblocking(self.addr) {
                Ok(sock) => {
                    c.state = State::Connecting { sock, since_ns: now };
                    return;
                }
                Err(e) => format!("connect:{}", io_kind(&e)),
            },
            State::Connecting { since_ns, .. } if now > since_ns + 2_000_000_000 => "connect:timed-out".to_string(),
            _ => return,
        };
        let gave_up = c.go_down(now);
        self.stats.record_conn_event(&event);
        if gave_up {
            self.stats.record_conn_event("gave-up");
        }
    }

    fn finish_connect(&mut self, i: usize) {
        let now = self.ctl.now_ns();
        let c = &mut self.conns[i];
        let State::Connecting { sock, .. } = &c.state else {
            return;
        };
        let err = match sock.take_error() {
            Ok(None) => sock.peer_addr().err(),
            Ok(Some(e)) | Err(e) => Some(e),
        };
        match err {
            None => {
                let State::Connecting { sock, .. } = std::mem::replace(&mut c.state, State::Down { retry_ns: 0 })
                else {
                    return;
                };
                c.state = State::Connected(sock.into());
                c.backoff_ms = 50;
                c.failures = 0;
                self.stats.record_conn_event("reconnected");
            }
            Some(e) => {
                let gave_up = c.go_down(now);
                self.stats.record_conn_event(&format!("connect:{}", io_kind(&e)));
                if gave_up {
                    self.stats.record_conn_event("gave-up");
                }
            }
        }
    }

    /// The drain timed out: what is still outstanding is reported as in flight at the cutoff.
    fn give_up_inflight(&mut self) {
        for c in &mut self.conns {
            for r in c.inflight.drain(..) {
                if r.measured {
                    self.stats.inflight_at_cutoff[r.op as usize] += 1;
                }
            }
        }
    }

    /// Open loop: count the requests intended inside the measured window that were never sent
    /// because the client was behind schedule when the window closed.
    fn count_unsent(&mut self) {
        if self.prefill {
            return;
        }
        let end = self.ctl.end_ns.load(Ordering::Relaxed);
        if end == u64::MAX {
            return;
        }
        let from = self.ctl.warmup_end_ns;
        let mut n = 0;
        for c in &mut self.conns {
            if c.exhausted && !c.gave_up {
                continue;
            }
            let backlog = c.pacer.drain_unsent(from, end);
            n += c.quota.map_or(backlog, |q| backlog.min(q));
        }
        self.stats.unsent_at_cutoff += n;
    }
}
