//! Metrics: typed counters and latency histograms, and the Prometheus text exposition.
//!
//! # Where figures live
//! Each shard keeps its figures in plain `Cell`s inside the module that moves them
//! ([`crate::cmd::stats`] for commands, the WAL writer's `LogStats`, the snapshot task's
//! `SnapshotStats`, the store's `StoreStats`): one writer, no atomics or locks on the hot
//! path. Each shard's housekeeping tick (every [`crate::server::CRON_INTERVAL_MS`]) publishes a
//! copy of its figures, a [`ShardReport`], into [`Published`]; the HTTP endpoint
//! ([`http`]) renders from those copies, so a scrape never touches a shard and works even while
//! a shard is busy. A published copy is at most one tick old; its age is also the shard's
//! heartbeat (liveness, the systemd watchdog). INFO asks the shards for fresh figures instead.
//!
//! # Declaring a metric
//! A metric is a [`Desc`] (name, help, type) declared next to the code that moves it, and an
//! `expose` function in that module that writes its samples into an [`Exposition`] for one
//! shard. The exposition groups samples by family, so the `# HELP` and `# TYPE` lines come once
//! per family, before all of its samples, whatever order the shards are visited in.
//!
//! # Histograms
//! [`Histogram`] counts durations in nanoseconds in log-linear buckets: 4 per power of two
//! (a bucket's width is at most 25% of its lower bound), from 0 to 2^36 ns (about 69 s; longer
//! ones count in the last bucket). That is fine enough for INFO latencystats' percentiles.
//! Prometheus gets the power-of-two edges from 128 ns to 2^34 ns (about 17 s) as `le` buckets,
//! cumulative, plus `+Inf`, `_sum` (seconds) and `_count`.

pub mod http;

use crate::shard::ops::ShardReport;
use std::cell::Cell;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Sub-buckets per power of two, as a power of two (2 bits: 4 sub-buckets).
const SUB_BITS: u32 = 2;
const SUB: usize = 1 << SUB_BITS;
/// Largest power of two a histogram tells apart; longer durations count in the last bucket.
const MAX_POW: u32 = 36;
/// Buckets of a [`Histogram`].
pub const HISTOGRAM_BUCKETS: usize = SUB + (MAX_POW as usize - SUB_BITS as usize) * SUB;
/// Exported `le` edges: 2^k ns for k in this range.
const EXPORT_POW: std::ops::RangeInclusive<u32> = 7..=34;

/// What kind of Prometheus metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric family: its name (with the `ringcache_` prefix and unit suffix), help text and
/// type. Declared as a `const` next to the code that moves the metric.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

/// A monotonically increasing count owned by one shard.
#[derive(Debug, Default)]
pub struct Counter(Cell<u64>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.set(self.0.get().wrapping_add(n));
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.get()
    }
    pub fn reset(&self) {
        self.0.set(0);
    }
}

/// Bucket of a duration in ns: `(lower, upper]` edges so that a count up to a power of two is
/// exact for Prometheus's `le` ("less or equal").
fn bucket_of(ns: u64) -> usize {
    let v = ns.saturating_sub(1);
    if v < SUB as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    if msb >= MAX_POW {
        return HISTOGRAM_BUCKETS - 1;
    }
    let sub = ((v >> (msb - SUB_BITS)) as usize) & (SUB - 1);
    SUB + (msb - SUB_BITS) as usize * SUB + sub
}

/// Upper edge (inclusive, ns) of bucket `i`.
pub fn bucket_upper_ns(i: usize) -> u64 {
    if i < SUB {
        return i as u64 + 1;
    }
    let octave = (i - SUB) / SUB + SUB_BITS as usize;
    let sub = ((i - SUB) % SUB) as u64;
    ((SUB as u64) + sub + 1) << (octave - SUB_BITS as usize)
}

/// A latency histogram owned by one shard (see the module docs for its buckets).
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[Cell<u64>; HISTOGRAM_BUCKETS]>,
    sum_ns: Cell<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: Box::new(std::array::from_fn(|_| Cell::new(0))), sum_ns: Cell::new(0) }
    }
}

impl Histogram {
    pub fn record_ns(&self, ns: u64) {
        let b = &self.buckets[bucket_of(ns)];
        b.set(b.get() + 1);
        self.sum_ns.set(self.sum_ns.get().wrapping_add(ns));
    }

    pub fn record_since(&self, start: Instant) {
        self.record_ns(start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot { buckets: self.buckets.iter().map(Cell::get).collect(), sum_ns: self.sum_ns.get() }
    }

    pub fn reset(&self) {
        self.buckets.iter().for_each(|b| b.set(0));
        self.sum_ns.set(0);
    }
}

/// A copy of a [`Histogram`] that can cross threads and be summed over shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per-bucket counts (not cumulative); empty means all zero.
    pub buckets: Vec<u64>,
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Counts one duration (for figures kept in an owned struct rather than in `Cell`s).
    pub fn record_ns(&mut self, ns: u64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; HISTOGRAM_BUCKETS];
        }
        self.buckets[bucket_of(ns)] += 1;
        self.sum_ns = self.sum_ns.wrapping_add(ns);
    }

    /// Adds another histogram's counts (summing shards).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }

    /// The upper edge (ns) of the bucket holding the `q`-quantile (0 < q <= 1): the value at
    /// or below which a fraction `q` of the observations fall, to within a bucket's width
    /// (25%). 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper_ns(i);
            }
        }
        bucket_upper_ns(HISTOGRAM_BUCKETS - 1)
    }
}

/// One label set, as `name="value"` pairs (values escaped on output).
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// A Prometheus text-format (0.0.4) document being built: families in first-seen order, each
/// with its samples.
#[derive(Default)]
pub struct Exposition {
    families: Vec<(Desc, String)>,
}

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    fn family(&mut self, desc: &Desc) -> &mut String {
        let i = match self.families.iter().position(|(d, _)| d.name == desc.name) {
            Some(i) => i,
            None => {
                self.families.push((*desc, String::new()));
                self.families.len() - 1
            }
        };
        debug_assert_eq!(self.families[i].0.kind, desc.kind, "{} declared twice with different types", desc.name);
        &mut self.families[i].1
    }

    /// A counter or gauge sample.
    pub fn value(&mut self, desc: &Desc, labels: Labels, v: f64) {
        debug_assert_ne!(desc.kind, Kind::Histogram);
        let name = desc.name;
        let out = self.family(desc);
        sample(out, name, "", labels, None, v);
    }

    /// A histogram: cumulative `_bucket` lines, `_sum` (seconds) and `_count`.
    pub fn histogram(&mut self, desc: &Desc, labels: Labels, h: &HistogramSnapshot) {
        debug_assert_eq!(desc.kind, Kind::Histogram);
        let name = desc.name;
        let out = self.family(desc);
        let mut cumulative = 0u64;
        let mut next = 0usize;
        for pow in EXPORT_POW {
            let edge_ns = 1u64 << pow;
            while next < h.buckets.len() && bucket_upper_ns(next) <= edge_ns {
                cumulative += h.buckets[next];
                next += 1;
            }
            let le = format!("{}", edge_ns as f64 / 1e9);
            sample(out, name, "_bucket", labels, Some(&le), cumulative as f64);
        }
        let count = h.count();
        sample(out, name, "_bucket", labels, Some("+Inf"), count as f64);
        sample(out, name, "_sum", labels, None, h.sum_ns as f64 / 1e9);
        sample(out, name, "_count", labels, None, count as f64);
    }

    /// The document: `# HELP` and `# TYPE` then the samples of each family.
    pub fn finish(self) -> String {
        let mut s = String::new();
        for (d, samples) in self.families {
            let _ = writeln!(s, "# HELP {} {}", d.name, escape_help(d.help));
            let _ = writeln!(s, "# TYPE {} {}", d.name, d.kind.as_str());
            s.push_str(&samples);
        }
        s
    }
}

fn sample(out: &mut String, name: &str, suffix: &str, labels: Labels, le: Option<&str>, v: f64) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        for (k, val) in labels.iter().copied().chain(le.map(|l| ("le", l))) {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{k}=\"{}\"", escape_label(val));
        }
        out.push('}');
    }
    out.push(' ');
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
    out.push('\n');
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A shard's last publication: when, and what.
type Slot = Mutex<Option<(Instant, std::sync::Arc<ShardReport>)>>;

/// What the shards last published, read by the HTTP endpoint and the watchdog.
pub struct Published {
    slots: Vec<Slot>,
    /// Shards that finished recovery (the server is ready once all did and the port is open).
    pub recovered: std::sync::atomic::AtomicUsize,
    /// Every shard accepts connections.
    pub ready: std::sync::atomic::AtomicBool,
}

/// A shard whose last publication is older than this is reported as stalled (its executor
/// made no progress for that long: a stuck task or a blocked thread).
pub const STALL_AFTER_MS: u64 = 5_000;

impl Published {
    pub fn new(shards: usize) -> Self {
        Published {
            slots: (0..shards).map(|_| Mutex::new(None)).collect(),
            recovered: Default::default(),
            ready: Default::default(),
        }
    }

    pub fn publish(&self, shard: usize, report: ShardReport) {
        if let Some(slot) = self.slots.get(shard) {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            *s = Some((Instant::now(), std::sync::Arc::new(report)));
        }
    }

    /// Each shard's last report and its age in ms (None before the first publication).
    pub fn reports(&self) -> Vec<Option<(u64, std::sync::Arc<ShardReport>)>> {
        self.slots
            .iter()
            .map(|slot| {
                let s = slot.lock().unwrap_or_else(|p| p.into_inner());
                s.as_ref().map(|(t, r)| (t.elapsed().as_millis() as u64, r.clone()))
            })
            .collect()
    }

    /// Every shard published within [`STALL_AFTER_MS`] (the systemd watchdog's test).
    pub fn all_alive(&self) -> bool {
        self.reports().iter().all(|r| r.as_ref().is_some_and(|(age, _)| *age < STALL_AFTER_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_edges_inclusive() {
        for i in 0..HISTOGRAM_BUCKETS - 1 {
            let hi = bucket_upper_ns(i);
            assert_eq!(bucket_of(hi), i, "upper edge {hi} of bucket {i}");
            assert_eq!(bucket_of(hi + 1), i + 1, "{} starts bucket {}", hi + 1, i + 1);
            // Width at most 25% of the lower edge once past the first buckets.
            if i >= SUB {
                let lo = bucket_upper_ns(i - 1);
                assert!((hi - lo) * 4 <= lo, "bucket {i}: ({lo}, {hi}]");
            }
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), HISTOGRAM_BUCKETS - 1);
        for pow in EXPORT_POW {
            assert_eq!(bucket_upper_ns(bucket_of(1 << pow)), 1 << pow, "2^{pow} is an edge");
        }
    }

    #[test]
    fn quantiles_within_a_bucket() {
        let h = Histogram::default();
        for ns in 1..=1000u64 {
            h.record_ns(ns * 1000);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        for (q, exact) in [(0.5, 500_000.0), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = s.quantile_ns(q) as f64;
            assert!(got >= exact && got <= exact * 1.25, "q{q}: {got} vs {exact}");
        }
        assert_eq!(HistogramSnapshot::default().quantile_ns(0.5), 0);
    }

    #[test]
    fn exposition_groups_families_and_cumulates() {
        const C: Desc = Desc { name: "x_total", help: "a \\ help\nline", kind: Kind::Counter };
        const H: Desc = Desc { name: "lat_seconds", help: "h", kind: Kind::Histogram };
        let h = Histogram::default();
        h.record_ns(100);
        h.record_ns(128);
        h.record_ns(129);
        h.record_ns(u64::MAX / 2);
        let mut e = Exposition::default();
        e.value(&C, &[("shard", "0")], 1.0);
        e.histogram(&H, &[], &h.snapshot());
        e.value(&C, &[("shard", "1"), ("q", "a\"b")], 2.5);
        let text = e.finish();
        assert!(text.starts_with("# HELP x_total a \\\\ help\\nline\n# TYPE x_total counter\n"), "{text}");
        assert!(text.contains("x_total{shard=\"0\"} 1\nx_total{shard=\"1\",q=\"a\\\"b\"} 2.5\n# HELP lat_seconds"));
        assert!(text.contains("lat_seconds_bucket{le=\"0.000000128\"} 2\n"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"0.000000256\"} 3\n"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"+Inf\"} 4\nlat_seconds_sum "), "{text}");
        assert!(text.ends_with("lat_seconds_count 4\n"));
    }
}
