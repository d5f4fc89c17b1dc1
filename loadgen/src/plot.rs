//! A latency percentile spectrum as a hand-written SVG, in the style of HdrHistogram's plots:
//! x is the percentile on a log scale of `1/(1-p)` (so 90%, 99%, 99.9% ... are evenly spaced),
//! y is the latency. One line per target and operation.

use std::fmt::Write as _;

/// One line of the plot.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    /// Index into the palette.
    pub color: usize,
    /// 0 solid, 1 dashed, 2 dotted.
    pub dash: usize,
    /// `(percentile %, latency µs)`, percentile ascending.
    pub points: Vec<(f64, f64)>,
}

/// Y axis scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YScale {
    Linear,
    Log,
}

const PALETTE: &[&str] =
    &["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
const DASHES: &[&str] = &["", "8 5", "2 4"];

const W: f64 = 960.0;
const H: f64 = 600.0;
const LEFT: f64 = 86.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 78.0;
const BOTTOM: f64 = 66.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `p` in percent -> position on the `log10(1/(1-p))` axis; `None` for 100%.
pub fn x_of_percentile(p: f64) -> Option<f64> {
    let rest = 1.0 - p / 100.0;
    if rest <= 0.0 {
        None
    } else {
        Some(-rest.log10())
    }
}

/// Label of the tick at `1/(1-p) = 10^decade`: 0%, 90%, 99%, 99.9% ...
fn pct_label(decade: usize) -> String {
    match decade {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        d => format!("99.{}%", "9".repeat(d - 2)).replace(".%", "%"),
    }
}

/// A "nice" step (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v >= 100.0 || (v.fract() == 0.0 && v >= 1.0) {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Choose log scale when the lines span more than ~50x at their medians (e.g. an fsync-bound
/// target next to an in-memory one), otherwise linear.
pub fn auto_scale(series: &[Series]) -> YScale {
    let medians: Vec<f64> = series
        .iter()
        .filter_map(|s| s.points.iter().find(|(p, _)| *p >= 50.0).map(|(_, v)| *v))
        .filter(|v| *v > 0.0)
        .collect();
    let max_all = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    let min_med = medians.iter().copied().fold(f64::INFINITY, f64::min);
    if min_med.is_finite() && max_all / min_med > 50.0 {
        YScale::Log
    } else {
        YScale::Linear
    }
}

/// Render the plot.
pub fn render(title: &str, subtitle: &str, series: &[Series], scale: YScale) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let mut max_x: f64 = 2.0;
    let mut max_us: f64 = 0.0;
    let mut min_us: f64 = f64::INFINITY;
    for s in series {
        for &(p, v) in &s.points {
            if let Some(x) = x_of_percentile(p) {
                max_x = max_x.max(x);
                max_us = max_us.max(v);
                if v > 0.0 {
                    min_us = min_us.min(v);
                }
            }
        }
    }
    let decades = (max_x - 1e-9).ceil().clamp(2.0, 6.0) as usize;
    let x_span = decades as f64;
    // Unit: ms once values reach 2 ms.
    let (unit, div) = if max_us >= 2000.0 { ("ms", 1000.0) } else { ("µs", 1.0) };
    let max_v = (max_us / div).max(1e-3);
    let min_v = if min_us.is_finite() { min_us / div } else { max_v / 10.0 };

    // Y mapping and ticks.
    let (y_lo, y_hi, ticks): (f64, f64, Vec<f64>) = match scale {
        YScale::Linear => {
            let step = nice_step(max_v, 6.0);
            let top = (max_v / step).ceil() * step;
            let n = (top / step).round() as usize;
            (0.0, top, (0..=n).map(|i| i as f64 * step).collect())
        }
        YScale::Log => {
            let lo = 10f64.powf(min_v.max(1e-3).log10().floor());
            let hi = 10f64.powf(max_v.log10().ceil()).max(lo * 10.0);
            let mut t = Vec::new();
            let mut d = lo;
            while d <= hi * 1.0001 {
                for m in [1.0, 2.0, 5.0] {
                    let v = d * m;
                    if v >= lo && v <= hi * 1.0001 {
                        t.push(v);
                    }
                }
                d *= 10.0;
            }
            (lo, hi, t)
        }
    };
    let ymap = |v: f64| -> f64 {
        let f = match scale {
            YScale::Linear => (v - y_lo) / (y_hi - y_lo),
            YScale::Log => (v.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10()),
        };
        TOP + ph * (1.0 - f.clamp(0.0, 1.0))
    };
    let xmap = |x: f64| LEFT + pw * (x / x_span).clamp(0.0, 1.0);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="30" font-size="19" font-weight="bold" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="53" font-size="13" fill="#444" text-anchor="middle">{}</text>"##,
        W / 2.0,
        esc(subtitle)
    );
    // Grid and y ticks.
    for &t in &ticks {
        let y = ymap(t);
        let major = match scale {
            YScale::Linear => true,
            YScale::Log => (t.log10().fract().abs() < 1e-9) || (1.0 - t.log10().fract()).abs() < 1e-9,
        };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="1"/>"##,
            LEFT + pw,
            if major { "#d9d9d9" } else { "#eeeeee" }
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end" fill="#333">{}</text>"##,
            LEFT - 8.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    // X ticks.
    for d in 0..=decades {
        let x = xmap(d as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#d9d9d9" stroke-width="1"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#333">{}</text>"##,
            TOP + ph + 18.0,
            pct_label(d)
        );
    }
    // Axes box.
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#555" stroke-width="1"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle">Percentile (log scale of 1/(1-p))</text>"#,
        LEFT + pw / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="22" y="{:.1}" font-size="14" text-anchor="middle" transform="rotate(-90 22 {:.1})">Latency ({unit}{})</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        if scale == YScale::Log { ", log scale" } else { "" }
    );
    // Lines, remembering their screen points for legend placement.
    let mut screen: Vec<(f64, f64)> = Vec::new();
    for se in series {
        let color = PALETTE[se.color % PALETTE.len()];
        let dash = DASHES[se.dash % DASHES.len()];
        let mut d = String::new();
        let mut prev: Option<(f64, f64)> = None;
        for &(p, v) in &se.points {
            let Some(x) = x_of_percentile(p) else {
                continue;
            };
            let pt = (xmap(x), ymap(v / div));
            if let Some(a) = prev {
                for k in 1..8 {
                    let f = k as f64 / 8.0;
                    screen.push((a.0 + (pt.0 - a.0) * f, a.1 + (pt.1 - a.1) * f));
                }
            }
            screen.push(pt);
            prev = Some(pt);
            let cmd = if d.is_empty() { 'M' } else { 'L' };
            let _ = write!(d, "{cmd}{:.1},{:.1} ", pt.0, pt.1);
        }
        if d.is_empty() {
            continue;
        }
        let dash_attr = if dash.is_empty() { String::new() } else { format!(r#" stroke-dasharray="{dash}""#) };
        let _ = writeln!(
            s,
            r#"<path d="{}" fill="none" stroke="{color}" stroke-width="2.2" stroke-linejoin="round"{dash_attr}/>"#,
            d.trim_end()
        );
    }
    // Legend: in whichever inside corner the lines cross least (top left first: spectra
    // usually start low and rise to the right).
    let longest = series.iter().map(|s| s.label.chars().count()).max().unwrap_or(0) as f64;
    let lw = 52.0 + longest * 7.4;
    let lh = 10.0 + 20.0 * series.len() as f64;
    let corners = [
        (LEFT + 14.0, TOP + 12.0),
        (LEFT + pw - 14.0 - lw, TOP + ph - 12.0 - lh),
        (LEFT + pw - 14.0 - lw, TOP + 12.0),
        (LEFT + 14.0, TOP + ph - 12.0 - lh),
    ];
    let crossings = |(x, y): (f64, f64)| {
        screen.iter().filter(|p| p.0 >= x - 4.0 && p.0 <= x + lw + 4.0 && p.1 >= y - 4.0 && p.1 <= y + lh + 4.0).count()
    };
    let (lx, ly) = corners.iter().copied().min_by_key(|c| crossings(*c)).unwrap_or(corners[0]);
    if !series.is_empty() {
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="{ly}" width="{lw:.1}" height="{lh:.1}" fill="white" fill-opacity="0.9" stroke="#999"/>"##
        );
    }
    for (i, se) in series.iter().enumerate() {
        let color = PALETTE[se.color % PALETTE.len()];
        let dash = DASHES[se.dash % DASHES.len()];
        let y = ly + 15.0 + 20.0 * i as f64;
        let dash_attr = if dash.is_empty() { String::new() } else { format!(r#" stroke-dasharray="{dash}""#) };
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="2.2"{dash_attr}/>"#,
            lx + 8.0,
            lx + 40.0
        );
        let _ =
            writeln!(s, r#"<text x="{:.1}" y="{:.1}" font-size="13">{}</text>"#, lx + 48.0, y + 4.5, esc(&se.label));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis() {
        assert_eq!(x_of_percentile(0.0), Some(0.0));
        assert!((x_of_percentile(99.0).unwrap() - 2.0).abs() < 1e-9);
        assert!((x_of_percentile(99.99).unwrap() - 4.0).abs() < 1e-6);
        assert_eq!(x_of_percentile(100.0), None);
        assert_eq!(pct_label(0), "0%");
        assert_eq!(pct_label(1), "90%");
        assert_eq!(pct_label(2), "99%");
        assert_eq!(pct_label(4), "99.99%");
    }

    #[test]
    fn renders_a_plot_with_lines_legend_and_escaping() {
        let pts: Vec<(f64, f64)> = (0..=40)
            .map(|i| {
                let x = i as f64 / 10.0;
                (100.0 * (1.0 - 10f64.powf(-x)), 20.0 + 10.0 * x * x)
            })
            .collect();
        let series = vec![
            Series { label: "a <GET>".into(), color: 0, dash: 0, points: pts.clone() },
            Series { label: "b SET".into(), color: 1, dash: 1, points: pts },
        ];
        let svg = render("t & t", "sub", &series, auto_scale(&series));
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<path").count(), 2);
        assert!(svg.contains("a &lt;GET&gt;"));
        assert!(svg.contains("t &amp; t"));
        assert!(svg.contains("99.99%"));
        assert!(svg.contains("Latency (µs)"));
        let log = render("t", "s", &series, YScale::Log);
        assert!(log.contains("log scale"));
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 6.0), 2.0);
        assert_eq!(nice_step(1.0, 5.0), 0.2);
    }
}
