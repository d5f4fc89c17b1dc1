//! Command-line interface. Every option documents its default (clap prints `[default: ...]`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::schedule::Arrival;
use crate::workload::{KeyDist, Ratio};

#[derive(Debug, Parser)]
#[command(
    name = "ringcache-loadgen",
    version,
    about = "Load generator for ringcache and any RESP (Redis-protocol) server",
    long_about = "Load generator for ringcache and any RESP (Redis-protocol) server.\n\n\
        Closed loop (default) finds maximum throughput. Open loop (--rate) sends on a fixed \
        schedule and measures latency from each request's intended send time, so stalls are \
        not hidden (coordinated omission corrected).\n\n\
        Progress goes to stderr once a second; the result table to stdout. Ctrl-C stops early \
        and prints the partial result (a second Ctrl-C exits at once)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure one target.
    Run(RunArgs),
    /// Run the same seeded workload against several targets in alternating rounds and print
    /// one table with each target's figures and ratios against the first.
    Compare(CompareArgs),
    /// Find the highest open-loop rate whose chosen percentile stays under a latency limit.
    Sweep(SweepArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Target address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// A target as NAME=HOST:PORT; give two or more. Ratios are against the first.
    #[arg(long = "target", value_name = "NAME=HOST:PORT", required = true, num_args = 1)]
    pub targets: Vec<String>,
    /// Rounds; each round runs every target once, in alternating order (A B, then B A, ...)
    /// so that drift on the machine does not favour one target.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Target address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,
    /// The percentile that must stay under --max-latency-ms, e.g. 99 or 99.9.
    #[arg(long, default_value_t = 99.0)]
    pub percentile: f64,
    /// Latency limit for the chosen percentile, in milliseconds.
    #[arg(long)]
    pub max_latency_ms: f64,
    /// Which operation's latency is judged.
    #[arg(long, value_enum, default_value_t = SweepOp::All)]
    pub op: SweepOp,
    /// Explicit rates to test (ops/s total, comma separated). Default: none, i.e. a step
    /// search: doubling from --start-rate until a step fails, then bisecting.
    #[arg(long, value_delimiter = ',', value_name = "R1,R2,...")]
    pub rates: Vec<f64>,
    /// Step search: first rate tried (ops/s).
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Step search: never try above this rate (ops/s).
    #[arg(long, default_value_t = 5_000_000.0)]
    pub max_rate: f64,
    /// Step search: stop bisecting when the bracket is narrower than this fraction.
    #[arg(long, default_value_t = 0.05)]
    pub precision: f64,
    /// Step search: at most this many steps in all.
    #[arg(long, default_value_t = 14)]
    pub max_steps: usize,
    /// A step also fails if the achieved rate is below this fraction of the offered rate.
    #[arg(long, default_value_t = 0.95)]
    pub min_achieved: f64,
    /// Arrival process of the open-loop steps.
    #[arg(long, default_value = "poisson", value_parser = parse_arrival)]
    pub arrival: Arrival,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SweepOp {
    All,
    Get,
    Set,
}

/// Closed or open loop (run and compare).
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Open loop at this total rate (ops/s across all connections). Default: none, i.e.
    /// closed loop: each connection keeps --pipeline requests outstanding (max throughput).
    #[arg(long, value_name = "OPS_PER_S")]
    pub rate: Option<f64>,
    /// Open loop arrival process: poisson (exponential gaps) or uniform (even spacing).
    #[arg(long, default_value = "poisson", value_parser = parse_arrival)]
    pub arrival: Arrival,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlotScale {
    /// Log y axis if the lines span more than 50x, else linear.
    Auto,
    Linear,
    Log,
}

/// Options shared by every subcommand.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Client threads (one event loop each; thread-per-core client).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Total connections, spread round-robin over the client threads.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Pipeline depth: most requests outstanding per connection (closed loop: always this many;
    /// open loop: a cap, requests due beyond it wait in the client and that wait counts).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Operation mix SET:GET, e.g. 1:10 or 0:1.
    #[arg(long, default_value = "1:10", value_parser = parse_ratio)]
    pub ratio: Ratio,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Key popularity: uniform, or zipf:<s> (e.g. zipf:0.99; key 0 is the hottest).
    #[arg(long, default_value = "uniform", value_parser = parse_key_dist)]
    pub key_dist: KeyDist,
    /// Key name prefix; keys are <prefix><number>.
    #[arg(long, default_value = "key:")]
    pub key_prefix: String,
    /// Value size of SETs, in bytes.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Expire SET keys after this many seconds (SET ... EX). Default: no expiry.
    #[arg(long)]
    pub ttl_s: Option<u64>,
    /// Write every key once before measuring (pipelined at least 32 deep, not measured).
    /// Default: off.
    #[arg(long)]
    pub prefill: bool,
    /// Measured duration in seconds (per run, per round, per sweep step).
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
    /// Measure this many requests in total instead of a duration; the window then ends at the
    /// last measured reply. Default: none (use --duration-s).
    #[arg(long, conflicts_with = "duration_s")]
    pub requests: Option<u64>,
    /// Warm-up before each measurement, in seconds (load runs, nothing is recorded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_s: f64,
    /// Seed of every random choice (keys, mix, arrivals). Default: random, printed so the run
    /// can be repeated.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A request outstanding this long fails its connection (counted as `timeout`, then the
    /// connection reconnects). 0 disables.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// After the measured window, wait this long for outstanding replies; what is still
    /// outstanding then is reported as in flight at the cutoff.
    #[arg(long, default_value_t = 5_000)]
    pub drain_timeout_ms: u64,
    /// Timeout for establishing each connection.
    #[arg(long, default_value_t = 3_000)]
    pub connect_timeout_ms: u64,
    /// Pin client threads to these CPUs (comma separated, thread i -> cpus[i % len]).
    /// Default: no pinning.
    #[arg(long, value_delimiter = ',', value_name = "CPU,...")]
    pub cpus: Vec<usize>,
    /// Write everything (config, provenance, percentiles, spectra, per-second series, errors)
    /// as JSON to this file. Default: none.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a latency percentile spectrum plot (SVG) to this file. Default: none.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Y axis of the plot.
    #[arg(long, value_enum, default_value_t = PlotScale::Auto)]
    pub plot_scale: PlotScale,
    /// No progress line on stderr. Default: off.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_ratio(s: &str) -> Result<Ratio, String> {
    s.parse()
}
fn parse_key_dist(s: &str) -> Result<KeyDist, String> {
    s.parse()
}
fn parse_arrival(s: &str) -> Result<Arrival, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_compare() {
        let cli = Cli::try_parse_from([
            "x",
            "compare",
            "--target",
            "a=127.0.0.1:1",
            "--target",
            "b=127.0.0.1:2",
            "--ratio",
            "1:1",
            "--key-dist",
            "zipf:0.99",
            "--rate",
            "1000",
        ])
        .unwrap();
        let Command::Compare(c) = cli.command else {
            panic!("not compare");
        };
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.load.rate, Some(1000.0));
        assert_eq!(c.common.key_dist, KeyDist::Zipf(0.99));
    }

    #[test]
    fn help_mentions_defaults() {
        let help = Cli::command().find_subcommand_mut("run").unwrap().render_long_help().to_string();
        for opt in ["--pipeline", "--ratio", "--warmup-s", "--arrival", "--drain-timeout-ms"] {
            assert!(help.contains(opt), "{opt} missing from help");
        }
        assert!(help.contains("[default: 1:10]"));
    }
}
