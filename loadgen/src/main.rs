//! `ringcache-loadgen`: an honest load generator for RESP servers.
//!
//! Layout:
//! - [`cli`]: options and their defaults.
//! - [`resp`]: request encoding and the incremental, bounded reply parser.
//! - [`workload`]: op mix, key distributions (uniform, zipf), seeds, values.
//! - [`schedule`]: closed- and open-loop pacing, intended send times.
//! - [`engine`]: the client threads and their `ppoll` event loops.
//! - [`stats`]: histograms, accounting, errors, per-second series; merging.
//! - [`runner`]: one prefill or measured run with progress and persistence sampling.
//! - [`info`]: provenance (INFO, client machine, command line).
//! - [`report`]: summaries, ratios, tables; [`plot`]: the SVG percentile spectrum.

mod cli;
mod engine;
mod info;
mod plot;
mod report;
mod resp;
mod runner;
mod schedule;
mod stats;
mod workload;

use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use serde::Serialize;

use cli::{Cli, Command, CommonArgs, LoadArgs, PlotScale, SweepArgs, SweepOp};
use engine::Load;
use info::{ClientInfo, PersistenceDelta, TargetInfo};
use report::{fmt_rate, fmt_us, PrefillSummary, RoundRow, TargetReport};
use runner::Target;
use stats::Stats;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    // First Ctrl-C: stop early and report. Second: exit at once.
    let sig = signal_hook::flag::register_conditional_shutdown(signal_hook::consts::SIGINT, 130, stop.clone())
        .and_then(|_| signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone()));
    if let Err(e) = sig {
        eprintln!("warning: cannot install the Ctrl-C handler: {e}");
    }
    let result = match cli.command {
        Command::Run(a) => cmd_run(a.target, a.load, a.common, &stop),
        Command::Compare(a) => cmd_compare(a.targets, a.rounds, a.load, a.common, &stop),
        Command::Sweep(a) => cmd_sweep(a, &stop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration as recorded in the JSON.
#[derive(Debug, Serialize)]
struct ConfigJson {
    client_threads: usize,
    connections: usize,
    pipeline: usize,
    ratio: String,
    keys: u64,
    key_dist: String,
    key_prefix: String,
    value_bytes: usize,
    ttl_s: Option<u64>,
    prefill: bool,
    duration_s: Option<f64>,
    requests: Option<u64>,
    warmup_s: f64,
    seed: u64,
    load: String,
    rate: Option<f64>,
    arrival: Option<String>,
    rounds: Option<usize>,
    timeout_ms: u64,
    drain_timeout_ms: u64,
    cpus: Vec<usize>,
}

fn config_json(c: &CommonArgs, load: Load, seed: u64, rounds: Option<usize>) -> ConfigJson {
    ConfigJson {
        client_threads: c.client_threads,
        connections: c.connections,
        pipeline: c.pipeline,
        ratio: c.ratio.to_string(),
        keys: c.keys,
        key_dist: c.key_dist.to_string(),
        key_prefix: c.key_prefix.clone(),
        value_bytes: c.value_bytes,
        ttl_s: c.ttl_s,
        prefill: c.prefill,
        duration_s: if c.requests.is_none() { Some(c.duration_s) } else { None },
        requests: c.requests,
        warmup_s: c.warmup_s,
        seed,
        load: match load {
            Load::Closed => "closed".into(),
            Load::Open { .. } => "open".into(),
        },
        rate: match load {
            Load::Open { rate, .. } => Some(rate),
            Load::Closed => None,
        },
        arrival: match load {
            Load::Open { arrival, .. } => Some(arrival.to_string()),
            Load::Closed => None,
        },
        rounds,
        timeout_ms: c.timeout_ms,
        drain_timeout_ms: c.drain_timeout_ms,
        cpus: c.cpus.clone(),
    }
}

#[derive(Debug, Serialize)]
struct SweepStepJson {
    offered_rate: f64,
    achieved_rate: f64,
    percentile: f64,
    op: String,
    latency_us: f64,
    errors: u64,
    pass: bool,
    reason: String,
    result: TargetReport,
}

#[derive(Debug, Serialize)]
struct SweepJson {
    target: String,
    target_info: TargetInfo,
    prefill: Option<PrefillSummary>,
    percentile: f64,
    max_latency_ms: f64,
    op: String,
    best_rate: Option<f64>,
    steps: Vec<SweepStepJson>,
}

#[derive(Debug, Serialize)]
struct Output {
    tool: &'static str,
    version: &'static str,
    command: &'static str,
    command_line: String,
    started_unix_s: u64,
    client: ClientInfo,
    config: ConfigJson,
    interrupted: bool,
    targets: Vec<TargetReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratios: Option<report::Ratios>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sweep: Option<SweepJson>,
    notes: Vec<String>,
}

fn load_of(l: &LoadArgs) -> Result<Load, String> {
    match l.rate {
        None => Ok(Load::Closed),
        Some(r) if r > 0.0 && r.is_finite() => Ok(Load::Open { rate: r, arrival: l.arrival }),
        Some(r) => Err(format!("--rate {r}: must be > 0")),
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn pick_seed(c: &CommonArgs) -> u64 {
    c.seed.unwrap_or_else(rand::random)
}

fn load_text(c: &CommonArgs, load: Load) -> String {
    let threads = format!(
        "{} conn{} on {} thread{}, pipeline {}",
        c.connections,
        if c.connections == 1 { "" } else { "s" },
        c.client_threads,
        if c.client_threads == 1 { "" } else { "s" },
        c.pipeline
    );
    match load {
        Load::Closed => format!("closed loop, {threads}"),
        Load::Open { rate, arrival } => {
            format!("open loop {}/s {arrival}, {threads}", fmt_rate(rate))
        }
    }
}

fn workload_text(c: &CommonArgs) -> String {
    format!(
        "SET:GET {}, {} keys {}, {} B values, {}",
        c.ratio,
        c.keys,
        c.key_dist,
        c.value_bytes,
        match c.ttl_s {
            Some(t) => format!("TTL {t} s"),
            None => "no TTL".to_string(),
        }
    )
}

fn print_header(
    command: &str,
    c: &CommonArgs,
    load: Option<Load>,
    seed: u64,
    client: &ClientInfo,
    targets: &[(Target, TargetInfo)],
) {
    println!("ringcache-loadgen {} {command}", env!("CARGO_PKG_VERSION"));
    println!("command:  {}", info::command_line());
    println!("client:   {} ({} CPUs), {}, cpu {}", client.hostname, client.nproc, client.kernel, client.cpu_model);
    for (t, i) in targets {
        let fields = if i.fields.is_empty() {
            "no identifying INFO fields".to_string()
        } else {
            i.fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        };
        let err = i.error.as_ref().map(|e| format!(" (INFO unavailable: {e})")).unwrap_or_default();
        let name = if t.name == t.addr_text { t.name.clone() } else { format!("{} {}", t.name, t.addr_text) };
        println!("target:   {name}  {fields}{err}");
    }
    println!("workload: {}", workload_text(c));
    if let Some(load) = load {
        println!("load:     {}", load_text(c, load));
    }
    let window = match c.requests {
        Some(n) => format!("{n} requests"),
        None => format!("{} s", c.duration_s),
    };
    println!(
        "phases:   {}warm-up {} s, measure {window}; seed {seed}",
        if c.prefill { "prefill, " } else { "" },
        c.warmup_s
    );
    println!();
}

fn note_for(load: Load) -> String {
    match load {
        Load::Closed => "closed loop: latency is measured from each request's actual send; \
             when the server stalls the client stops sending, so tails are optimistic \
             (coordinated omission). Use --rate for latency claims."
            .to_string(),
        Load::Open { .. } => "open loop: latency is measured from each request's intended \
             send time (coordinated omission corrected); waits inside the client count."
            .to_string(),
    }
}

fn ensure_connectable(t: &Target, c: &CommonArgs) -> io::Result<()> {
    engine::connect_blocking(t.addr, std::time::Duration::from_millis(c.connect_timeout_ms))
        .map(|_| ())
        .map_err(|e| io::Error::new(e.kind(), format!("target {}: {e}", t.name)))
}

fn do_prefill(c: &CommonArgs, t: &Target, seed: u64, stop: &Arc<AtomicBool>) -> io::Result<Option<PrefillSummary>> {
    if !c.prefill {
        return Ok(None);
    }
    let spec = runner::spec_for(c, t, Load::Closed, seed, 0);
    let p = runner::prefill(&spec, &t.name, c.quiet, stop)?;
    eprintln!(
        "[{}] prefill: {} keys in {:.2} s, {} errors{}",
        t.name,
        p.keys,
        p.seconds,
        p.errors,
        if p.interrupted { " (interrupted)" } else { "" }
    );
    Ok(Some(p))
}

/// Accumulates one target's rounds.
struct Acc {
    stats: Stats,
    window_s: f64,
    interrupted: bool,
    persistence: PersistenceDelta,
    rounds: Vec<RoundRow>,
}

impl Acc {
    fn new() -> Acc {
        Acc {
            stats: Stats::new(),
            window_s: 0.0,
            interrupted: false,
            persistence: PersistenceDelta::default(),
            rounds: Vec::new(),
        }
    }
    fn add(&mut self, round: usize, m: &runner::Measured) {
        self.stats.append_round(&m.stats);
        self.window_s += m.window_s;
        self.interrupted |= m.interrupted;
        self.persistence.add(&m.persistence);
        let all = m.stats.all_hist();
        self.rounds.push(RoundRow {
            round,
            window_s: m.window_s,
            ops_per_s: if m.window_s > 0.0 { m.stats.total_ok() as f64 / m.window_s } else { 0.0 },
            p99_us: if all.is_empty() { 0.0 } else { report::ns_to_us(all.value_at_quantile(0.99)) },
        });
    }
    fn report(self, t: &Target, info: TargetInfo, prefill: Option<PrefillSummary>, load: Load) -> TargetReport {
        report::target_report(
            &t.name,
            &t.addr_text,
            info,
            prefill,
            &self.stats,
            self.window_s,
            self.interrupted,
            match load {
                Load::Open { rate, .. } => Some(rate),
                Load::Closed => None,
            },
            self.persistence,
            self.rounds,
        )
    }
}

fn cmd_run(target: String, l: LoadArgs, c: CommonArgs, stop: &Arc<AtomicBool>) -> io::Result<()> {
    runner::validate(&c).map_err(invalid)?;
    let load = load_of(&l).map_err(invalid)?;
    let t = runner::resolve("target", &target)?;
    let t = Target { name: t.addr_text.clone(), ..t };
    cmd_compare_targets(vec![t], 1, load, c, stop, "run")
}

fn cmd_compare(
    targets: Vec<String>,
    rounds: usize,
    l: LoadArgs,
    c: CommonArgs,
    stop: &Arc<AtomicBool>,
) -> io::Result<()> {
    runner::validate(&c).map_err(invalid)?;
    let load = load_of(&l).map_err(invalid)?;
    if targets.len() < 2 {
        return Err(invalid("compare needs at least two --target NAME=HOST:PORT".into()));
    }
    if rounds == 0 {
        return Err(invalid("--rounds must be at least 1".into()));
    }
    let ts = targets.iter().map(|s| runner::parse_named(s)).collect::<io::Result<Vec<_>>>()?;
    let mut names = std::collections::BTreeSet::new();
    for t in &ts {
        if !names.insert(t.name.clone()) {
            return Err(invalid(format!("target name {:?} given twice", t.name)));
        }
    }
    cmd_compare_targets(ts, rounds, load, c, stop, "compare")
}

/// `run` is `compare` with one target and one round.
fn cmd_compare_targets(
    ts: Vec<Target>,
    rounds: usize,
    load: Load,
    c: CommonArgs,
    stop: &Arc<AtomicBool>,
    command: &'static str,
) -> io::Result<()> {
    let seed = pick_seed(&c);
    let client = info::client_info();
    for t in &ts {
        ensure_connectable(t, &c)?;
    }
    let timeout = std::time::Duration::from_millis(c.connect_timeout_ms);
    let infos: Vec<TargetInfo> = ts.iter().map(|t| info::target_info(t.addr, timeout)).collect();
    let pairs: Vec<(Target, TargetInfo)> = ts.iter().cloned().zip(infos.iter().cloned()).collect();
    print_header(command, &c, Some(load), seed, &client, &pairs);
    let started_unix_s = unix_now();

    let mut prefills = Vec::new();
    for t in &ts {
        prefills.push(do_prefill(&c, t, seed, stop)?);
    }
    let mut accs: Vec<Acc> = ts.iter().map(|_| Acc::new()).collect();
    'rounds: for r in 0..rounds {
        let order: Vec<usize> = if r % 2 == 0 { (0..ts.len()).collect() } else { (0..ts.len()).rev().collect() };
        for ti in order {
            if stop.load(Ordering::Relaxed) {
                break 'rounds;
            }
            let t = &ts[ti];
            let spec = runner::spec_for(&c, t, load, seed, r as u64);
            let label = if rounds > 1 { format!("{} round {}/{}", t.name, r + 1, rounds) } else { t.name.clone() };
            let m = runner::measure(&spec, &label, c.quiet, stop)?;
            accs[ti].add(r + 1, &m);
        }
    }
    let interrupted = stop.load(Ordering::Relaxed);
    let reports: Vec<TargetReport> = accs
        .into_iter()
        .zip(ts.iter())
        .zip(infos)
        .zip(prefills)
        .map(|(((a, t), i), p)| a.report(t, i, p, load))
        .collect();

    let ratios = (reports.len() > 1).then(|| report::ratios(&reports));
    if interrupted {
        println!("INTERRUPTED: partial result below.\n");
    }
    for t in &reports {
        if reports.len() > 1 {
            println!("== {} ({})", t.name, t.addr);
        }
        println!(
            "measured {:.2} s{}",
            t.window_s,
            if rounds > 1 { format!(" over {} rounds", t.rounds.len()) } else { String::new() }
        );
        print!("{}", report::op_table(t));
        print!("{}", report::details(t));
        println!();
    }
    if let Some(r) = &ratios {
        println!("== comparison (ratios: target / {})", reports[0].name);
        print!("{}", report::compare_table(&reports, r));
        println!();
    }
    let notes = vec![note_for(load)];
    for n in &notes {
        println!("note: {n}");
    }

    if let Some(path) = &c.plot {
        let mut series = Vec::new();
        let single = reports.len() == 1;
        for (ti, t) in reports.iter().enumerate() {
            for (oi, op) in ["GET", "SET"].iter().enumerate() {
                let Some(points) = t.spectrum.get(*op).filter(|p| !p.is_empty()) else {
                    continue;
                };
                let lat = t.ops.iter().find(|o| o.op == *op).map(|o| &o.latency);
                let figures = lat
                    .map_or(String::new(), |l| format!("  (p99 {}, max {})", fmt_us(l.get("p99")), fmt_us(l.max_us)));
                series.push(plot::Series {
                    label: if single { format!("{op}{figures}") } else { format!("{} {op}{figures}", t.name) },
                    color: if single { oi } else { ti },
                    dash: oi,
                    points: points.clone(),
                });
            }
        }
        let title = match command {
            "compare" => format!(
                "Latency by percentile: {}",
                reports.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(" vs ")
            ),
            _ => format!("Latency by percentile: {}", reports[0].addr),
        };
        let subtitle = format!("{} | {}", workload_text(&c), load_text(&c, load));
        write_plot(path, &title, &subtitle, &series, c.plot_scale)?;
    }
    if let Some(path) = &c.json {
        let out = Output {
            tool: "ringcache-loadgen",
            version: env!("CARGO_PKG_VERSION"),
            command,
            command_line: info::command_line(),
            started_unix_s,
            client,
            config: config_json(&c, load, seed, (command == "compare").then_some(rounds)),
            interrupted,
            targets: reports,
            ratios,
            sweep: None,
            notes,
        };
        write_json(path, &out)?;
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> io::Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| io::Error::other(format!("cannot encode JSON: {e}")))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn write_plot(path: &Path, title: &str, subtitle: &str, series: &[plot::Series], scale: PlotScale) -> io::Result<()> {
    let scale = match scale {
        PlotScale::Linear => plot::YScale::Linear,
        PlotScale::Log => plot::YScale::Log,
        PlotScale::Auto => plot::auto_scale(series),
    };
    let svg = plot::render(title, subtitle, series, scale);
    std::fs::write(path, svg).map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// One sweep step's verdict: the chosen percentile (µs, exact from the histogram), pass, why.
fn judge(r: &TargetReport, stats: &Stats, a: &SweepArgs, offered: f64) -> (f64, bool, String) {
    let (opname, hist) = match a.op {
        SweepOp::All => ("ALL", stats.all_hist()),
        SweepOp::Get => ("GET", stats.hist[workload::Op::Get as usize].clone()),
        SweepOp::Set => ("SET", stats.hist[workload::Op::Set as usize].clone()),
    };
    let mut reasons = Vec::new();
    let value = if hist.is_empty() {
        reasons.push(format!("no successful {opname} requests"));
        f64::NAN
    } else {
        report::ns_to_us(hist.value_at_quantile(a.percentile / 100.0))
    };
    let limit_us = a.max_latency_ms * 1000.0;
    if value > limit_us {
        reasons.push(format!("p{} {} > {}", a.percentile, fmt_us(value), fmt_us(limit_us)));
    }
    if r.achieved_rate < a.min_achieved * offered {
        reasons.push(format!("achieved {}/s < {:.0}% of offered", fmt_rate(r.achieved_rate), a.min_achieved * 100.0));
    }
    if r.counts.errors > 0 {
        reasons.push(format!("{} errors", r.counts.errors));
    }
    if r.interrupted {
        reasons.push("interrupted".to_string());
    }
    let pass = reasons.is_empty();
    let why = if pass { "ok".to_string() } else { reasons.join("; ") };
    (value, pass, why)
}

fn sweep_op_name(op: SweepOp) -> &'static str {
    match op {
        SweepOp::All => "ALL",
        SweepOp::Get => "GET",
        SweepOp::Set => "SET",
    }
}

fn cmd_sweep(a: SweepArgs, stop: &Arc<AtomicBool>) -> io::Result<()> {
    let c = a.common.clone();
    runner::validate(&c).map_err(invalid)?;
    if !(a.percentile > 0.0 && a.percentile < 100.0) {
        return Err(invalid("--percentile must be in (0, 100)".into()));
    }
    if a.max_latency_ms.is_nan() || a.max_latency_ms <= 0.0 {
        return Err(invalid("--max-latency-ms must be > 0".into()));
    }
    if a.rates.iter().any(|r| !(*r > 0.0 && r.is_finite())) {
        return Err(invalid("--rates must all be > 0".into()));
    }
    if !(a.start_rate > 0.0 && a.max_rate >= a.start_rate) {
        return Err(invalid("need 0 < --start-rate <= --max-rate".into()));
    }
    let t = runner::resolve("target", &a.target)?;
    let t = Target { name: t.addr_text.clone(), ..t };
    ensure_connectable(&t, &c)?;
    let seed = pick_seed(&c);
    let client = info::client_info();
    let timeout = std::time::Duration::from_millis(c.connect_timeout_ms);
    let tinfo = info::target_info(t.addr, timeout);
    print_header("sweep", &c, None, seed, &client, &[(t.clone(), tinfo.clone())]);
    println!(
        "sweep:    highest open-loop rate ({}, {} conns, pipeline {}) with p{} of {} <= {} ms, achieved >= {:.0}% of offered, no errors",
        a.arrival,
        c.connections,
        c.pipeline,
        a.percentile,
        match a.op {
            SweepOp::All => "all ops",
            SweepOp::Get => "GET",
            SweepOp::Set => "SET",
        },
        a.max_latency_ms,
        a.min_achieved * 100.0
    );
    let started_unix_s = unix_now();
    let prefill = do_prefill(&c, &t, seed, stop)?;

    let mut steps: Vec<SweepStepJson> = Vec::new();
    let run_step = |rate: f64, steps: &mut Vec<SweepStepJson>| -> io::Result<bool> {
        let load = Load::Open { rate, arrival: a.arrival };
        let spec = runner::spec_for(&c, &t, load, seed, steps.len() as u64);
        let label = format!("{} @ {}/s", t.name, fmt_rate(rate));
        let m = runner::measure(&spec, &label, c.quiet, stop)?;
        let mut acc = Acc::new();
        acc.add(1, &m);
        let r = acc.report(&t, tinfo.clone(), None, load);
        let (value, pass, reason) = judge(&r, &m.stats, &a, rate);
        eprintln!(
            "[{}] step {}: offered {}/s achieved {}/s p{} {} -> {}",
            t.name,
            steps.len() + 1,
            fmt_rate(rate),
            fmt_rate(r.achieved_rate),
            a.percentile,
            fmt_us(value),
            if pass { "pass".to_string() } else { format!("FAIL ({reason})") }
        );
        steps.push(SweepStepJson {
            offered_rate: rate,
            achieved_rate: r.achieved_rate,
            percentile: a.percentile,
            op: sweep_op_name(a.op).to_string(),
            latency_us: value,
            errors: r.counts.errors,
            pass,
            reason,
            result: r,
        });
        Ok(pass)
    };

    if !a.rates.is_empty() {
        let mut rates = a.rates.clone();
        rates.sort_by(f64::total_cmp);
        for r in rates {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            run_step(r, &mut steps)?;
        }
    } else {
        // Bracket: lo passes (or 0), hi fails (or max).
        let mut lo = 0.0f64;
        let mut hi: Option<f64> = None;
        let mut rate = a.start_rate;
        while steps.len() < a.max_steps && !stop.load(Ordering::Relaxed) {
            if run_step(rate, &mut steps)? {
                lo = rate;
                if rate >= a.max_rate {
                    break;
                }
                rate = (rate * 2.0).min(a.max_rate);
            } else {
                hi = Some(rate);
                break;
            }
        }
        // If even the start rate failed, halve downwards until something passes.
        while lo == 0.0 && steps.len() < a.max_steps && !stop.load(Ordering::Relaxed) {
            let Some(h) = hi else { break };
            let r = h / 2.0;
            if r < 1.0 {
                break;
            }
            if run_step(r, &mut steps)? {
                lo = r;
            } else {
                hi = Some(r);
            }
        }
        while let Some(h) = hi {
            if lo <= 0.0 || (h - lo) / lo <= a.precision || steps.len() >= a.max_steps || stop.load(Ordering::Relaxed) {
                break;
            }
            let mid = (lo + h) / 2.0;
            if run_step(mid, &mut steps)? {
                lo = mid;
            } else {
                hi = Some(mid);
            }
        }
    }
    let interrupted = stop.load(Ordering::Relaxed);
    let best = steps
        .iter()
        .filter(|s| s.pass)
        .map(|s| s.offered_rate)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));

    if interrupted {
        println!("INTERRUPTED: partial result below.\n");
    }
    let mut rows = vec![vec![
        "offered/s".to_string(),
        "achieved/s".to_string(),
        format!("p{}", a.percentile),
        "p50".to_string(),
        "max".to_string(),
        "errors".to_string(),
        "verdict".to_string(),
    ]];
    let mut ordered: Vec<&SweepStepJson> = steps.iter().collect();
    ordered.sort_by(|x, y| x.offered_rate.total_cmp(&y.offered_rate));
    let opname = sweep_op_name(a.op);
    for s in &ordered {
        let o = s.result.ops.iter().find(|o| o.op == opname);
        rows.push(vec![
            fmt_rate(s.offered_rate),
            fmt_rate(s.achieved_rate),
            fmt_us(s.latency_us),
            o.map_or("n/a".into(), |o| fmt_us(o.latency.get("p50"))),
            o.map_or("n/a".into(), |o| fmt_us(o.latency.max_us)),
            s.errors.to_string(),
            if s.pass { "pass".into() } else { format!("FAIL: {}", s.reason) },
        ]);
    }
    print!("{}", report::render_table_aligned(&rows, &[6]));
    match best {
        Some(b) => println!(
            "\nresult: highest passing rate {}/s (p{} of {} <= {} ms)",
            fmt_rate(b),
            a.percentile,
            opname,
            a.max_latency_ms
        ),
        None => println!("\nresult: no tested rate passed"),
    }
    let note = note_for(Load::Open { rate: 1.0, arrival: a.arrival });
    println!("note: {note}");

    if let Some(path) = &c.plot {
        let series: Vec<plot::Series> = ordered
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let pts = s.result.spectrum.get(opname)?;
                (!pts.is_empty()).then(|| plot::Series {
                    label: format!("{}/s offered{}", fmt_rate(s.offered_rate), if s.pass { "" } else { " (fail)" }),
                    color: i,
                    dash: usize::from(!s.pass),
                    points: pts.clone(),
                })
            })
            .collect();
        let title = format!("Latency by percentile vs offered rate: {}", t.addr_text);
        let subtitle = format!(
            "{} | open loop {}, {} conns, pipeline {} | op {opname}",
            workload_text(&c),
            a.arrival,
            c.connections,
            c.pipeline
        );
        write_plot(path, &title, &subtitle, &series, c.plot_scale)?;
    }
    if let Some(path) = &c.json {
        let out = Output {
            tool: "ringcache-loadgen",
            version: env!("CARGO_PKG_VERSION"),
            command: "sweep",
            command_line: info::command_line(),
            started_unix_s,
            client,
            config: config_json(&c, Load::Open { rate: a.start_rate, arrival: a.arrival }, seed, None),
            interrupted,
            targets: Vec::new(),
            ratios: None,
            sweep: Some(SweepJson {
                target: t.addr_text.clone(),
                target_info: tinfo,
                prefill,
                percentile: a.percentile,
                max_latency_ms: a.max_latency_ms,
                op: opname.to_string(),
                best_rate: best,
                steps,
            }),
            notes: vec![note],
        };
        write_json(path, &out)?;
    }
    Ok(())
}
