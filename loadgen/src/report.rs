//! Turning measurements into figures: summaries, ratios, the human tables and the JSON shape.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::info::{PersistenceDelta, TargetInfo};
use crate::stats::Stats;
use crate::workload::Op;

/// The percentiles every summary reports, as (label, quantile).
pub const PERCENTILES: &[(&str, f64)] =
    &[("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999)];

/// Latency figures of one histogram, in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    /// `p50`, `p90`, `p99`, `p99.9`, `p99.99` -> µs.
    pub percentiles_us: BTreeMap<String, f64>,
    pub max_us: f64,
}

pub fn ns_to_us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let empty = h.is_empty();
        Latency {
            count: h.len(),
            min_us: if empty { 0.0 } else { ns_to_us(h.min()) },
            mean_us: if empty { 0.0 } else { h.mean() / 1000.0 },
            percentiles_us: PERCENTILES
                .iter()
                .map(|(l, q)| {
                    let v = if empty { 0.0 } else { ns_to_us(h.value_at_quantile(*q)) };
                    (l.to_string(), v)
                })
                .collect(),
            max_us: if empty { 0.0 } else { ns_to_us(h.max()) },
        }
    }

    pub fn get(&self, label: &str) -> f64 {
        match label {
            "max" => self.max_us,
            "mean" => self.mean_us,
            "min" => self.min_us,
            l => self.percentiles_us.get(l).copied().unwrap_or(0.0),
        }
    }
}

/// A percentile spectrum for plots: `(percentile in %, latency µs)` points, sampled evenly on
/// the `1/(1-p)` log axis up to where the sample count still resolves it.
pub fn spectrum(h: &Histogram<u64>, points: usize) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // With n samples, percentiles past 1 - 1/n are all the max.
    let x_max = (h.len() as f64).log10().clamp(1.0, 6.0);
    let mut out = Vec::with_capacity(points + 1);
    for i in 0..=points {
        let x = x_max * i as f64 / points as f64;
        let q = 1.0 - 10f64.powf(-x);
        out.push((q * 100.0, ns_to_us(h.value_at_quantile(q))));
    }
    out.push((100.0, ns_to_us(h.max())));
    out
}

/// One operation's row.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub op: String,
    /// ok replies per second of measured window (errors are counted, not included).
    pub ops_per_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub inflight_at_cutoff: u64,
    /// Open loop: intended in the window but never sent (client behind at the cutoff).
    pub unsent_at_cutoff: u64,
    pub get_misses: u64,
    /// `sent == ok + errors + inflight_at_cutoff` for every op.
    pub balanced: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecondRow {
    /// Second of the measured window (by completion time), starting at 0.
    pub t: usize,
    /// Length of this bucket: 1 s, or less for a partial last second.
    pub duration_s: f64,
    /// Every reply received in this second (server throughput, whatever the request's stamp).
    pub replies: u64,
    /// `replies / duration_s`.
    pub replies_per_s: f64,
    /// Measured ok replies completing in this second (`set` + `get`).
    pub ops: u64,
    pub set: u64,
    pub get: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    pub round: usize,
    pub window_s: f64,
    pub ops_per_s: f64,
    pub p99_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefillSummary {
    pub keys: u64,
    pub seconds: f64,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub interrupted: bool,
}

/// Everything reported for one target (all rounds merged).
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub addr: String,
    pub info: TargetInfo,
    pub prefill: Option<PrefillSummary>,
    pub window_s: f64,
    pub interrupted: bool,
    pub offered_rate: Option<f64>,
    /// Replies received inside the measured window per second of it: the throughput the
    /// server actually delivered (in open loop, compare with `offered_rate`).
    pub achieved_rate: f64,
    pub ops: Vec<OpSummary>,
    pub counts: Counts,
    pub error_kinds: BTreeMap<String, u64>,
    pub conn_events: BTreeMap<String, u64>,
    /// Open loop: send time minus intended time.
    pub send_lag: Option<Latency>,
    pub fsyncs_per_s: Option<f64>,
    pub records_per_fsync: Option<f64>,
    pub persistence: PersistenceDelta,
    pub per_second: Vec<SecondRow>,
    pub rounds: Vec<RoundRow>,
    /// Per op (`SET`, `GET`, `ALL`): `(percentile %, µs)` points.
    pub spectrum: BTreeMap<String, Vec<(f64, f64)>>,
}

/// Build a target's report from merged stats.
#[allow(clippy::too_many_arguments)]
pub fn target_report(
    name: &str,
    addr: &str,
    info: TargetInfo,
    prefill: Option<PrefillSummary>,
    stats: &Stats,
    window_s: f64,
    interrupted: bool,
    offered_rate: Option<f64>,
    persistence: PersistenceDelta,
    rounds: Vec<RoundRow>,
) -> TargetReport {
    let per = |x: u64| {
        if window_s > 0.0 {
            x as f64 / window_s
        } else {
            0.0
        }
    };
    let mut ops = Vec::new();
    let mut spectra = BTreeMap::new();
    for op in Op::ALL {
        let i = op as usize;
        ops.push(OpSummary {
            op: op.name().to_string(),
            ops_per_s: per(stats.ok[i]),
            ok: stats.ok[i],
            errors: stats.errors[i],
            latency: Latency::of(&stats.hist[i]),
        });
        spectra.insert(op.name().to_string(), spectrum(&stats.hist[i], 120));
    }
    let all = stats.all_hist();
    ops.push(OpSummary {
        op: "ALL".to_string(),
        ops_per_s: per(stats.total_ok()),
        ok: stats.total_ok(),
        errors: stats.total_errors(),
        latency: Latency::of(&all),
    });
    spectra.insert("ALL".to_string(), spectrum(&all, 120));
    let per_second = stats
        .seconds
        .iter()
        .enumerate()
        .map(|(t, iv)| SecondRow {
            t,
            duration_s: iv.dur_s,
            replies: iv.replies,
            replies_per_s: iv.replies as f64 / iv.dur_s,
            ops: iv.ok[0] + iv.ok[1],
            set: iv.ok[0],
            get: iv.ok[1],
            errors: iv.errors,
            p50_us: if iv.hist.is_empty() { 0.0 } else { ns_to_us(iv.hist.value_at_quantile(0.5)) },
            p99_us: if iv.hist.is_empty() { 0.0 } else { ns_to_us(iv.hist.value_at_quantile(0.99)) },
            max_us: if iv.hist.is_empty() { 0.0 } else { ns_to_us(iv.hist.max()) },
        })
        .collect();
    TargetReport {
        name: name.to_string(),
        addr: addr.to_string(),
        info,
        prefill,
        window_s,
        interrupted,
        offered_rate,
        achieved_rate: per(stats.window_replies),
        ops,
        counts: Counts {
            sent: stats.total_sent(),
            ok: stats.total_ok(),
            errors: stats.total_errors(),
            inflight_at_cutoff: stats.total_inflight(),
            unsent_at_cutoff: stats.unsent_at_cutoff,
            get_misses: stats.get_misses,
            balanced: stats.balanced(),
        },
        error_kinds: stats.error_kinds.clone(),
        conn_events: stats.conn_events.clone(),
        send_lag: offered_rate.map(|_| Latency::of(&stats.send_lag)),
        fsyncs_per_s: persistence.fsyncs_per_s(),
        records_per_fsync: persistence.records_per_fsync(),
        persistence,
        per_second,
        rounds,
        spectrum: spectra,
    }
}

/// Metrics compared between targets, in table order.
pub const METRICS: &[&str] = &["ops/s", "p50", "p90", "p99", "p99.9", "p99.99", "max"];

pub fn metric(o: &OpSummary, m: &str) -> f64 {
    if m == "ops/s" {
        o.ops_per_s
    } else {
        o.latency.get(m)
    }
}

/// `other / base`, or `None` when the base is zero (no meaningful ratio).
pub fn ratio(other: f64, base: f64) -> Option<f64> {
    if base > 0.0 && other.is_finite() {
        Some(other / base)
    } else {
        None
    }
}

/// Ratios of every target against the first: `op -> metric -> [ratio per target]` (the first
/// target's own ratio, 1.0, included for uniformity).
pub type Ratios = BTreeMap<String, BTreeMap<String, Vec<Option<f64>>>>;

pub fn ratios(targets: &[TargetReport]) -> Ratios {
    let mut out = Ratios::new();
    let Some(base) = targets.first() else {
        return out;
    };
    for (oi, bo) in base.ops.iter().enumerate() {
        let mut per_metric = BTreeMap::new();
        for m in METRICS {
            let b = metric(bo, m);
            let v = targets.iter().map(|t| t.ops.get(oi).and_then(|o| ratio(metric(o, m), b))).collect();
            per_metric.insert(m.to_string(), v);
        }
        out.insert(bo.op.clone(), per_metric);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Formatting

/// `123456.0` -> `123.5k`.
pub fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else if x >= 1e3 {
        format!("{:.2}k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}

/// Microseconds with a unit, 3 significant digits: `45.1µs`, `1.23ms`, `2.50s`.
pub fn fmt_us(us: f64) -> String {
    let sig3 = |v: f64, unit: &str| {
        if v >= 100.0 {
            format!("{v:.0}{unit}")
        } else if v >= 10.0 {
            format!("{v:.1}{unit}")
        } else {
            format!("{v:.2}{unit}")
        }
    };
    if us >= 1e6 {
        sig3(us / 1e6, "s")
    } else if us >= 1e3 {
        sig3(us / 1e3, "ms")
    } else {
        sig3(us, "µs")
    }
}

pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 100.0 => format!("{r:.0}x"),
        Some(r) if r >= 10.0 => format!("{r:.1}x"),
        Some(r) => format!("{r:.2}x"),
        None => "n/a".to_string(),
    }
}

/// Thousands separators: `1234567` -> `1,234,567`.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Render rows as an aligned text table: first column left-aligned, the rest right-aligned.
pub fn render_table(rows: &[Vec<String>]) -> String {
    render_table_aligned(rows, &[0])
}

/// Render rows as an aligned text table; the columns in `left` are left-aligned, the others
/// right-aligned (numbers).
pub fn render_table_aligned(rows: &[Vec<String>], left: &[usize]) -> String {
    let ncol = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncol).map(width).collect();
    let mut out = String::new();
    for (ri, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c > 0 {
                line.push_str("  ");
            }
            if left.contains(&c) {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if ri == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

/// The per-op table of one target.
pub fn op_table(t: &TargetReport) -> String {
    let mut rows = vec![vec![
        "op".to_string(),
        "ops/s".to_string(),
        "p50".to_string(),
        "p90".to_string(),
        "p99".to_string(),
        "p99.9".to_string(),
        "p99.99".to_string(),
        "max".to_string(),
        "mean".to_string(),
        "ok".to_string(),
        "errors".to_string(),
    ]];
    for o in &t.ops {
        if o.op != "ALL" && o.ok + o.errors == 0 {
            continue;
        }
        let l = &o.latency;
        rows.push(vec![
            o.op.clone(),
            fmt_rate(o.ops_per_s),
            fmt_us(l.get("p50")),
            fmt_us(l.get("p90")),
            fmt_us(l.get("p99")),
            fmt_us(l.get("p99.9")),
            fmt_us(l.get("p99.99")),
            fmt_us(l.max_us),
            fmt_us(l.mean_us),
            fmt_count(o.ok),
            fmt_count(o.errors),
        ]);
    }
    render_table(&rows)
}

/// The compare table: one row per (op, metric), one column per target, then one ratio column
/// per non-first target.
pub fn compare_table(targets: &[TargetReport], ratios: &Ratios) -> String {
    let mut header = vec!["op".to_string(), "metric".to_string()];
    for t in targets {
        header.push(t.name.clone());
    }
    let base = targets.first().map(|t| t.name.clone()).unwrap_or_default();
    for t in targets.iter().skip(1) {
        header.push(format!("{}/{}", t.name, base));
    }
    let mut rows = vec![header];
    let Some(first) = targets.first() else {
        return String::new();
    };
    for (oi, bo) in first.ops.iter().enumerate() {
        let any = targets.iter().any(|t| t.ops.get(oi).is_some_and(|o| o.ok + o.errors > 0));
        if !any {
            continue;
        }
        for m in METRICS {
            let mut row = vec![bo.op.clone(), m.to_string()];
            for t in targets {
                let v = t.ops.get(oi).map_or(0.0, |o| metric(o, m));
                row.push(if *m == "ops/s" { fmt_rate(v) } else { fmt_us(v) });
            }
            if let Some(rs) = ratios.get(&bo.op).and_then(|x| x.get(*m)) {
                for r in rs.iter().skip(1) {
                    row.push(fmt_ratio(*r));
                }
            }
            rows.push(row);
        }
    }
    render_table_aligned(&rows, &[0, 1])
}

/// Accounting, errors, persistence and the per-second series of one target, as text lines.
pub fn details(t: &TargetReport) -> String {
    let mut s = String::new();
    let c = &t.counts;
    let _ = writeln!(
        s,
        "requests: sent {} = ok {} + errors {} + in flight at cutoff {}  [{}]",
        fmt_count(c.sent),
        fmt_count(c.ok),
        fmt_count(c.errors),
        fmt_count(c.inflight_at_cutoff),
        if c.balanced { "adds up" } else { "DOES NOT ADD UP" }
    );
    if let Some(rate) = t.offered_rate {
        let _ = writeln!(
            s,
            "rate:     offered {}/s, achieved {}/s ({:.1}%){}",
            fmt_rate(rate),
            fmt_rate(t.achieved_rate),
            if rate > 0.0 { 100.0 * t.achieved_rate / rate } else { 0.0 },
            if c.unsent_at_cutoff > 0 {
                format!(
                    "; {} requests intended in the window were never sent (client behind schedule)",
                    fmt_count(c.unsent_at_cutoff)
                )
            } else {
                String::new()
            }
        );
        if let Some(lag) = &t.send_lag {
            let _ = writeln!(
                s,
                "send lag: p50 {} p99 {} max {} (time from intended to actual send; included in latency)",
                fmt_us(lag.get("p50")),
                fmt_us(lag.get("p99")),
                fmt_us(lag.max_us)
            );
        }
    }
    let get = t.ops.iter().find(|o| o.op == "GET");
    if let Some(g) = get.filter(|g| g.ok > 0) {
        let _ = writeln!(
            s,
            "GET:      {} misses of {} ({:.1}% hit)",
            fmt_count(c.get_misses),
            fmt_count(g.ok),
            100.0 * (g.ok - c.get_misses.min(g.ok)) as f64 / g.ok as f64
        );
    }
    let kinds = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter().map(|(k, v)| format!("{k} {}", fmt_count(*v))).collect::<Vec<_>>().join(", ")
        }
    };
    let _ = writeln!(s, "errors:   {}", kinds(&t.error_kinds));
    if !t.conn_events.is_empty() {
        let _ = writeln!(s, "connection events: {}", kinds(&t.conn_events));
    }
    let fmt_opt = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.1}"));
    let _ = writeln!(
        s,
        "persistence: fsyncs/s {}, records/fsync {}{}",
        fmt_opt(t.fsyncs_per_s),
        fmt_opt(t.records_per_fsync),
        if t.persistence.fsync_field.is_none() { " (no wal_fsyncs/wal_records in INFO persistence)" } else { "" }
    );
    if !t.per_second.is_empty() {
        let rates: Vec<f64> = t.per_second.iter().map(|r| r.replies_per_s).collect();
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        let series = t.per_second.iter().map(|r| fmt_rate(r.replies_per_s)).collect::<Vec<_>>().join(" ");
        let _ = writeln!(s, "replies/s by second: min {} max {} | {}", fmt_rate(min), fmt_rate(max), series);
    }
    if t.rounds.len() > 1 {
        let r = t
            .rounds
            .iter()
            .map(|r| format!("#{} {}/s p99 {}", r.round, fmt_rate(r.ops_per_s), fmt_us(r.p99_us)))
            .collect::<Vec<_>>()
            .join(" | ");
        let _ = writeln!(s, "rounds:   {r}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    fn report_with(name: &str, lat_ns: u64, n: u64, window_s: f64) -> TargetReport {
        let mut s = Stats::new();
        for _ in 0..n {
            s.record_sent(Op::Get);
            s.record_ok(Op::Get, lat_ns, 0);
            s.record_window_reply(0);
        }
        target_report(
            name,
            "127.0.0.1:1",
            TargetInfo::default(),
            None,
            &s,
            window_s,
            false,
            None,
            PersistenceDelta::default(),
            Vec::new(),
        )
    }

    #[test]
    fn ratios_against_the_first_target() {
        let a = report_with("a", 100_000, 1000, 1.0);
        let b = report_with("b", 250_000, 500, 1.0);
        let r = ratios(&[a.clone(), b.clone()]);
        let get = &r["GET"];
        assert_eq!(get["ops/s"], vec![Some(1.0), Some(0.5)]);
        let p99 = get["p99"][1].unwrap();
        assert!((p99 - 2.5).abs() < 0.01, "{p99}");
        // SET had no samples: ratios are n/a, not 0 or NaN.
        assert_eq!(r["SET"]["p50"], vec![None, None]);
        let table = compare_table(&[a, b], &r);
        assert!(table.contains("b/a"), "{table}");
        assert!(table.contains("2.50x"), "{table}");
        assert!(table.contains("0.50x"), "{table}");
        assert!(!table.contains("SET"), "ops with no traffic are left out:\n{table}");
    }

    #[test]
    fn summary_figures() {
        let r = report_with("a", 50_000, 2000, 2.0);
        let get = &r.ops[1];
        assert_eq!(get.op, "GET");
        assert_eq!(get.ops_per_s, 1000.0);
        assert!((get.latency.get("p99") - 50.0).abs() < 0.1);
        assert!(r.counts.balanced);
        assert_eq!(r.achieved_rate, 1000.0);
        let all = r.ops.iter().find(|o| o.op == "ALL").unwrap();
        assert_eq!(all.ok, 2000);
        // Spectrum: monotone, starts at 0 %, ends at 100 % = max.
        let sp = &r.spectrum["GET"];
        assert_eq!(sp.first().unwrap().0, 0.0);
        assert_eq!(sp.last().unwrap().0, 100.0);
        assert!(sp.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_us(45.123), "45.1µs");
        assert_eq!(fmt_us(1234.0), "1.23ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50s");
        assert_eq!(fmt_us(999.0), "999µs");
        assert_eq!(fmt_rate(123_456.0), "123.5k");
        assert_eq!(fmt_rate(1_500_000.0), "1.50M");
        assert_eq!(fmt_rate(999.0), "999.0");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_count(12), "12");
        assert_eq!(fmt_ratio(Some(0.5)), "0.50x");
        assert_eq!(fmt_ratio(None), "n/a");
        let t = render_table(&[vec!["a".into(), "bb".into()], vec!["ccc".into(), "µs".into()]]);
        assert_eq!(t, "a    bb\n-------\nccc  µs\n");
    }
}
