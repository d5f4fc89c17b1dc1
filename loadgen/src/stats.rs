//! What was measured: per-operation latency histograms, request accounting, errors by kind and
//! a per-second series. One [`Stats`] per client thread, merged at the end.
//!
//! Accounting invariant, per operation: `sent = ok + errors + inflight_at_cutoff`. A request is
//! "sent" once the client has committed it to a connection; it ends as exactly one of a
//! non-error reply (`ok`), an error (an error reply, or the connection failing or timing out
//! under it), or still outstanding when the drain after the measurement gave up.
//!
//! Latencies are recorded in nanoseconds, for `ok` replies only (a fast `-OOM` must not make the
//! latency look better), with 3 significant digits.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;

use crate::workload::Op;

/// 3 significant digits: values are exact to 0.1% (HdrHistogram reports the top of a bucket).
const SIGFIG: u8 = 3;
/// Per-second histograms only feed p50/p99 of each second: 2 digits are plenty.
const SIGFIG_INTERVAL: u8 = 2;

pub fn new_hist() -> Histogram<u64> {
    // Auto-resizing from 1 ns: a latency of an hour still records. The bounds are constants
    // that satisfy the crate's rules (low >= 1, high >= 2 * low), so this cannot fail.
    let mut h = Histogram::new_with_bounds(1, 60_000_000_000, SIGFIG).expect("valid bounds");
    h.auto(true);
    h
}

fn new_interval_hist() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 60_000_000_000, SIGFIG_INTERVAL).expect("valid bounds");
    h.auto(true);
    h
}

/// One second of the measurement, by completion time.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Length of this bucket in seconds: 1, except a partial last second of a run (set by
    /// [`Stats::set_window`]).
    pub dur_s: f64,
    /// Every reply received in this second, whatever its stamp (server throughput).
    pub replies: u64,
    /// Measured ok replies per op.
    pub ok: [u64; 2],
    pub errors: u64,
    pub hist: Histogram<u64>,
}

impl Interval {
    fn new() -> Interval {
        Interval { dur_s: 1.0, replies: 0, ok: [0; 2], errors: 0, hist: new_interval_hist() }
    }
}

#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency of ok replies, ns, per [`Op`].
    pub hist: [Histogram<u64>; 2],
    pub sent: [u64; 2],
    pub ok: [u64; 2],
    pub errors: [u64; 2],
    pub inflight_at_cutoff: [u64; 2],
    /// GETs answered with nil.
    pub get_misses: u64,
    /// Per-request errors by kind (`MISCONF`, `OOM`, `io:reset`, `timeout` ...); sums to
    /// `errors`.
    pub error_kinds: BTreeMap<String, u64>,
    /// Connection-level events (failures, reconnects), whether or not requests were lost.
    pub conn_events: BTreeMap<String, u64>,
    /// Open loop: intended requests of the measurement window never sent (client behind at the
    /// cutoff). Not part of `sent`.
    pub unsent_at_cutoff: u64,
    /// Replies (ok or error, measured or not) received inside the measured window: the
    /// server's throughput during the window, including work on requests stamped before it.
    pub window_replies: u64,
    /// Open loop: how late the client put requests on the wire (send time - intended time).
    pub send_lag: Histogram<u64>,
    /// Per-second series, index = whole seconds since the measurement started.
    pub seconds: Vec<Interval>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            hist: [new_hist(), new_hist()],
            sent: [0; 2],
            ok: [0; 2],
            errors: [0; 2],
            inflight_at_cutoff: [0; 2],
            get_misses: 0,
            error_kinds: BTreeMap::new(),
            conn_events: BTreeMap::new(),
            unsent_at_cutoff: 0,
            window_replies: 0,
            send_lag: new_hist(),
            seconds: Vec::new(),
        }
    }

    fn second(&mut self, sec: usize) -> &mut Interval {
        // Bounded by the run length: one entry per second of measurement (+ drain).
        while self.seconds.len() <= sec {
            self.seconds.push(Interval::new());
        }
        &mut self.seconds[sec]
    }

    /// Record the measured window's length: the last second may be partial.
    pub fn set_window(&mut self, window_s: f64) {
        for (i, iv) in self.seconds.iter_mut().enumerate() {
            iv.dur_s = (window_s - i as f64).clamp(1e-3, 1.0);
        }
    }

    pub fn record_sent(&mut self, op: Op) {
        self.sent[op as usize] += 1;
    }

    /// An ok reply for `op`, `latency_ns` after its stamp, completing in second `sec`.
    pub fn record_ok(&mut self, op: Op, latency_ns: u64, sec: usize) {
        let v = latency_ns.max(1);
        self.ok[op as usize] += 1;
        self.hist[op as usize].saturating_record(v);
        let iv = self.second(sec);
        iv.ok[op as usize] += 1;
        iv.hist.saturating_record(v);
    }

    pub fn record_error(&mut self, op: Op, kind: &str, sec: usize) {
        self.errors[op as usize] += 1;
        *self.error_kinds.entry(kind.to_string()).or_insert(0) += 1;
        self.second(sec).errors += 1;
    }

    /// A reply (of any kind, measured or not) received inside the window, in second `sec`.
    pub fn record_window_reply(&mut self, sec: usize) {
        self.window_replies += 1;
        self.second(sec).replies += 1;
    }

    pub fn record_conn_event(&mut self, kind: &str) {
        *self.conn_events.entry(kind.to_string()).or_insert(0) += 1;
    }

    /// Fold another thread's (or round's) stats into this one.
    pub fn merge(&mut self, other: &Stats) {
        for i in 0..2 {
            add_hist(&mut self.hist[i], &other.hist[i]);
            self.sent[i] += other.sent[i];
            self.ok[i] += other.ok[i];
            self.errors[i] += other.errors[i];
            self.inflight_at_cutoff[i] += other.inflight_at_cutoff[i];
        }
        self.get_misses += other.get_misses;
        for (k, v) in &other.error_kinds {
            *self.error_kinds.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &other.conn_events {
            *self.conn_events.entry(k.clone()).or_insert(0) += v;
        }
        self.unsent_at_cutoff += other.unsent_at_cutoff;
        self.window_replies += other.window_replies;
        add_hist(&mut self.send_lag, &other.send_lag);
        for (i, iv) in other.seconds.iter().enumerate() {
            let mine = self.second(i);
            mine.dur_s = iv.dur_s;
            mine.replies += iv.replies;
            mine.ok[0] += iv.ok[0];
            mine.ok[1] += iv.ok[1];
            mine.errors += iv.errors;
            add_hist(&mut mine.hist, &iv.hist);
        }
    }

    /// Merge as a later round: per-second series are appended rather than overlaid.
    pub fn append_round(&mut self, other: &Stats) {
        let offset = self.seconds.len();
        let mut shifted = other.clone();
        let mut secs = Vec::with_capacity(offset + other.seconds.len());
        secs.extend((0..offset).map(|_| Interval::new()));
        secs.append(&mut shifted.seconds);
        shifted.seconds = secs;
        self.merge(&shifted);
    }

    pub fn total_sent(&self) -> u64 {
        self.sent.iter().sum()
    }
    pub fn total_ok(&self) -> u64 {
        self.ok.iter().sum()
    }
    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }
    pub fn total_inflight(&self) -> u64 {
        self.inflight_at_cutoff.iter().sum()
    }

    /// Latency of all ok replies, both operations.
    pub fn all_hist(&self) -> Histogram<u64> {
        let mut h = self.hist[0].clone();
        add_hist(&mut h, &self.hist[1]);
        h
    }

    /// Does every operation's accounting add up?
    pub fn balanced(&self) -> bool {
        (0..2).all(|i| self.sent[i] == self.ok[i] + self.errors[i] + self.inflight_at_cutoff[i])
            && self.error_kinds.values().sum::<u64>() == self.total_errors()
    }
}

/// Add `src` into `dst`. Both auto-resize, so adding cannot fail on range; should it fail
/// anyway, fall back to re-recording every value rather than losing counts.
pub fn add_hist(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    if dst.add(src).is_err() {
        for v in src.iter_recorded() {
            dst.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_threads_equals_recording_in_one() {
        let mut whole = Stats::new();
        let mut parts = vec![Stats::new(), Stats::new(), Stats::new()];
        for i in 0..30_000u64 {
            let op = if i % 7 == 0 { Op::Set } else { Op::Get };
            // A heavy-ish tail: every 100th value is 1000x larger.
            let lat = 20_000 + (i * 37) % 50_000 + if i % 100 == 0 { 50_000_000 } else { 0 };
            let sec = (i / 10_000) as usize;
            for s in [&mut whole, &mut parts[(i % 3) as usize]] {
                s.record_sent(op);
                if i % 1000 == 999 {
                    s.record_error(op, "MISCONF", sec);
                } else {
                    s.record_ok(op, lat, sec);
                }
            }
        }
        let mut merged = Stats::new();
        for p in &parts {
            merged.merge(p);
        }
        assert_eq!(merged.sent, whole.sent);
        assert_eq!(merged.ok, whole.ok);
        assert_eq!(merged.errors, whole.errors);
        assert_eq!(merged.error_kinds, whole.error_kinds);
        for op in 0..2 {
            assert_eq!(merged.hist[op].len(), whole.hist[op].len());
            for q in [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
                assert_eq!(merged.hist[op].value_at_quantile(q), whole.hist[op].value_at_quantile(q));
            }
            assert_eq!(merged.hist[op].max(), whole.hist[op].max());
        }
        assert_eq!(merged.seconds.len(), 3);
        for (a, b) in merged.seconds.iter().zip(&whole.seconds) {
            assert_eq!(a.ok, b.ok);
            assert_eq!(a.errors, b.errors);
            assert_eq!(a.hist.len(), b.hist.len());
        }
        assert!(merged.balanced());
        // The tail survives the merge: p99.9 is in the 50 ms outliers, p50 is not.
        let all = merged.all_hist();
        assert!(all.value_at_quantile(0.999) > 40_000_000);
        assert!(all.value_at_quantile(0.5) < 100_000);
    }

    #[test]
    fn balance_detects_a_lost_request() {
        let mut s = Stats::new();
        s.record_sent(Op::Get);
        s.record_sent(Op::Get);
        s.record_ok(Op::Get, 10, 0);
        assert!(!s.balanced());
        s.inflight_at_cutoff[Op::Get as usize] += 1;
        assert!(s.balanced());
    }

    #[test]
    fn rounds_append_their_series() {
        let mut a = Stats::new();
        a.record_sent(Op::Set);
        a.record_ok(Op::Set, 5, 1);
        let mut total = Stats::new();
        total.append_round(&a);
        total.append_round(&a);
        assert_eq!(total.seconds.len(), 4);
        assert_eq!(total.seconds[1].ok[0], 1);
        assert_eq!(total.seconds[3].ok[0], 1);
        assert_eq!(total.ok[0], 2);
    }
}
