//! Command-line configuration. Every option has a default that runs an in-memory server on
//! loopback, so `ringcache` with no arguments works.

use clap::Parser;
use std::net::SocketAddr;

/// A thread-per-core, io_uring Redis-protocol cache.
#[derive(Parser, Debug, Clone)]
#[command(name = "ringcache", version = crate::build_info::VERSION_LINE, long_version = crate::build_info::LONG_VERSION, about, long_about = None)]
pub struct Config {
    /// Address to listen on. Loopback by default: exposing the cache is the operator's choice.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub bind: SocketAddr,

    /// Shards (executors), one per core, 1 to 1024 [default: one per online CPU]. More threads
    /// than CPUs share CPUs round-robin.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    /// Maximum simultaneous client connections; more are refused with
    /// `-ERR max number of clients reached`.
    #[arg(long, default_value_t = 10_000)]
    pub maxclients: usize,

    /// Largest bulk string a client may send, in bytes (Redis's proto-max-bulk-len); at most
    /// 512mb, the largest value the write-ahead log can hold.
    #[arg(long = "proto-max-bulk-len", default_value_t = PROTO_MAX_BULK_LEN_MAX, value_parser = parse_proto_max_bulk_len)]
    pub proto_max_bulk_len: usize,

    /// Largest amount of unparsed input buffered for one client, in bytes; a client over it is
    /// disconnected (Redis's client-query-buffer-limit).
    #[arg(long = "client-query-buffer-limit", default_value_t = 1024 * 1024 * 1024, value_parser = parse_bytes)]
    pub client_query_buffer_limit: usize,

    /// Log level: error, warn, info, debug or trace (or a tracing filter such as
    /// `ringcache=debug`).
    #[arg(long = "log-level", default_value = "info")]
    pub log_level: String,

    /// How long an idle shard polls for new work before it sleeps, in microseconds. Spinning
    /// saves the sleep/wake-up cost per request under load and costs CPU only while idle
    /// after activity; 0 sleeps at once.
    #[arg(long = "spin-before-park-us", default_value_t = 0)]
    pub spin_before_park_us: u64,

    /// Durability mode: `off` (memory only), `async` (log written at least every
    /// --wal-flush-interval-ms; a crash loses at most that window) or `sync` (no reply reveals a
    /// write before it is durable). See docs/DURABILITY.md.
    #[arg(long, value_enum, default_value = "async")]
    pub durability: crate::wal::Durability,

    /// Directory for the write-ahead log (created if missing; one server per directory).
    #[arg(long = "data-dir", default_value = "./data")]
    pub data_dir: std::path::PathBuf,

    /// In `async` mode, the longest a write waits in memory before it is written and synced.
    #[arg(long = "wal-flush-interval-ms", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub wal_flush_interval_ms: u64,

    /// In `async` mode, pending log bytes that trigger a flush before the interval ends; writers
    /// wait (backpressure) once twice this much is pending.
    #[arg(long = "wal-buffer-bytes", default_value_t = 1024 * 1024, value_parser = parse_bytes)]
    pub wal_buffer_bytes: usize,

    /// Size of each log segment file, preallocated when created (at least 64kb).
    #[arg(long = "wal-segment-bytes", default_value_t = 64 * 1024 * 1024, value_parser = parse_segment_bytes)]
    pub wal_segment_bytes: u64,

    /// What to do when the log is damaged in the middle (acknowledged data unreadable):
    /// `strict` refuses to start and names the file, offset and LSN; `tolerate-corruption`
    /// keeps the log up to the damage and moves the rest to a `.corrupt` file.
    #[arg(long, value_enum, default_value = "strict")]
    pub recovery: RecoveryArg,

    /// Take a snapshot of every shard this often, in seconds (0: never on a timer). With
    /// `--durability off`, a value above 0 is also what turns persistence on: the data
    /// directory is then used for snapshots only (like Redis with RDB and no AOF).
    #[arg(long = "snapshot-interval-s", default_value_t = 0)]
    pub snapshot_interval_s: u64,

    /// Take a snapshot of a shard once this many log bytes were written since its last one
    /// (0: never), bounding how much log a recovery replays. Units as for sizes (`256mb`).
    #[arg(long = "snapshot-wal-bytes", default_value_t = 256 * 1024 * 1024, value_parser = parse_bytes)]
    pub snapshot_wal_bytes: usize,

    /// Snapshot every shard on a graceful shutdown (SIGTERM, SIGINT, SHUTDOWN), so the next
    /// start replays no log: `yes` or `no`. SHUTDOWN NOSAVE skips it, SHUTDOWN SAVE forces it.
    #[arg(long = "snapshot-on-shutdown", default_value = "yes", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub snapshot_on_shutdown: bool,

    /// Valid snapshots kept per shard (at least 1). The log is compacted up to the oldest one
    /// kept, so a corrupt newest snapshot can fall back to the previous one.
    #[arg(long = "snapshot-retain", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub snapshot_retain: u32,

    /// Compression of snapshot chunks: `lz4` or `none`.
    #[arg(long = "snapshot-compression", value_enum, default_value = "lz4")]
    pub snapshot_compression: crate::snapshot::CompressionArg,

    /// io_uring buffer memory per shard, in bytes. Small by default so that the common 8 MiB
    /// RLIMIT_MEMLOCK suffices for every shard.
    #[arg(long = "io-memory-bytes", default_value_t = 512 * 1024, value_parser = parse_bytes)]
    pub io_memory_bytes: usize,

    /// Output buffer limits, as Redis's `client-output-buffer-limit`: `<class> <hard> <soft>
    /// <soft seconds>` groups. A client whose unwritten replies reach the hard limit, or stay at
    /// or over the soft limit for longer than the soft seconds, is disconnected without its
    /// pending replies. Only the `normal` class applies (no replicas or pub/sub here); 0 turns
    /// a limit off. Unlike Redis (normal 0 0 0), the default bounds every client; see
    /// docs/OPERATIONS.md.
    #[arg(long = "client-output-buffer-limit", default_value = OutputBufferLimits::DEFAULT_STR, value_parser = parse_output_buffer_limits)]
    pub client_output_buffer_limit: OutputBufferLimits,

    /// Memory limit for the data (keys, values, table, eviction metadata), split evenly across
    /// shards; 0: no limit. Units as for sizes (`64mb`, `2gb`). See docs/EVICTION.md.
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    pub maxmemory: usize,

    /// What to do at the limit: `noeviction` (writes get an OOM error), `allkeys-lru`,
    /// `allkeys-lfu`, `allkeys-random`, `volatile-lru`, `volatile-lfu`, `volatile-random`,
    /// `volatile-ttl` (Redis's, sampled as Redis does), or `allkeys-s3fifo` (ours: better hit
    /// ratios on skewed workloads, scan-resistant; see docs/EVICTION.md).
    #[arg(long = "maxmemory-policy", value_enum, default_value = "allkeys-s3fifo")]
    pub maxmemory_policy: crate::store::Policy,

    /// Keys sampled per eviction, 1 to 64 (Redis's maxmemory-samples): more is closer to the
    /// exact policy and costs more per eviction.
    #[arg(long = "maxmemory-samples", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub maxmemory_samples: u16,

    /// Password of the default user: clients must AUTH before any other command (as Redis's
    /// requirepass). Prefer the RINGCACHE_REQUIREPASS environment variable (an EnvironmentFile
    /// under systemd): a command-line argument is visible to every local user in `ps`.
    #[arg(long, env = "RINGCACHE_REQUIREPASS", hide_env_values = true)]
    pub requirepass: Option<crate::auth::Secret>,

    /// Without a password, refuse clients that do not connect from loopback, with Redis's
    /// DENIED error: `yes` or `no`.
    #[arg(long = "protected-mode", default_value = "yes", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub protected_mode: bool,

    /// Address of the HTTP endpoint serving Prometheus metrics (/metrics) and health (/health,
    /// /ready, /live) [default: none, no endpoint]. Keep it on loopback or a private network:
    /// it has no authentication.
    #[arg(long = "metrics-bind")]
    pub metrics_bind: Option<SocketAddr>,
}

/// `--recovery` values (see [`crate::wal::RecoveryMode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecoveryArg {
    /// Refuse to start on mid-log corruption.
    Strict,
    /// Cut the log at the damage, set the rest aside, start.
    TolerateCorruption,
}

impl RecoveryArg {
    pub fn mode(self) -> crate::wal::RecoveryMode {
        match self {
            RecoveryArg::Strict => crate::wal::RecoveryMode::Strict,
            RecoveryArg::TolerateCorruption => crate::wal::RecoveryMode::TolerateCorruption,
        }
    }
}

fn parse_segment_bytes(s: &str) -> Result<u64, String> {
    let n = parse_bytes(s)? as u64;
    if n < 64 * 1024 || n % 4096 != 0 {
        return Err(format!("'{s}': a segment must be at least 64kb and a multiple of 4096 bytes"));
    }
    Ok(n)
}

impl Config {
    /// Whether the data directory is used at all: for the log (durability not `off`) or for
    /// snapshots alone (`--durability off` with `--snapshot-interval-s` above 0).
    pub fn persistence(&self) -> bool {
        self.durability != crate::wal::Durability::Off || self.snapshot_interval_s > 0
    }

    /// Number of shards after resolving the default.
    pub fn shard_count(&self) -> usize {
        match self.threads {
            Some(n) => usize::from(n),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Parses a byte size: a plain number or one with a unit (`64kb`, `512mb`, `1gb`, `4k`), units
/// as Redis reads them (`k`=1000, `kb`=1024, ...).
/// Upper bound of `proto-max-bulk-len` (command line and CONFIG SET): the largest value a WAL
/// record holds, so that every value a client can create can also be logged.
pub const PROTO_MAX_BULK_LEN_MAX: usize = crate::wal::format::MAX_VALUE_BYTES;

fn parse_proto_max_bulk_len(s: &str) -> Result<usize, String> {
    let v = parse_bytes(s)?;
    if v > PROTO_MAX_BULK_LEN_MAX {
        return Err(format!("'{s}' is over the limit of {PROTO_MAX_BULK_LEN_MAX} bytes (512mb)"));
    }
    Ok(v)
}

pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("'{s}' is not a byte size (e.g. 1048576, 64mb, 1gb)"))?;
    let mult: usize = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use b, kb, mb, gb)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("'{s}' is too large"))
}

/// One class of `client-output-buffer-limit` (all sizes in bytes; 0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputBufferLimit {
    /// Unwritten reply bytes at which the client is disconnected at once.
    pub hard_bytes: u64,
    /// Unwritten reply bytes the client may stay at or over for only `soft_seconds`.
    pub soft_bytes: u64,
    /// How long the soft limit may be exceeded; 0 with a soft limit: disconnect on reaching it.
    pub soft_seconds: u64,
}

/// `client-output-buffer-limit` for Redis's three classes. Only `normal` is enforced (this
/// server has no replicas and no pub/sub); the others are kept so that a Redis configuration
/// line is accepted and CONFIG GET reports what was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputBufferLimits {
    pub normal: OutputBufferLimit,
    pub replica: OutputBufferLimit,
    pub pubsub: OutputBufferLimit,
}

impl OutputBufferLimits {
    /// The default, as an option value. `normal 1gb 256mb 60`: the hard limit is twice the
    /// largest value a GET can return (`proto-max-bulk-len` is at most 512mb), so any single
    /// value can be read, and a client that leaves a quarter of that unread for a minute is
    /// cut off. Redis's default for normal clients is `0 0 0` (unlimited): one client that
    /// pipelines GETs of big values without reading can then take all memory. The replica and
    /// pubsub classes are Redis's defaults.
    pub const DEFAULT_STR: &'static str = "normal 1gb 256mb 60 replica 256mb 64mb 60 pubsub 32mb 8mb 60";

    /// Applies `<class> <hard> <soft> <seconds>` groups on top of `self`, as Redis's CONFIG SET
    /// does (classes not named keep their limits). Errors are Redis's texts.
    pub fn apply(&self, s: &str) -> Result<OutputBufferLimits, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        if words.is_empty() || words.len() % 4 != 0 {
            return Err("Wrong number of arguments in buffer limit configuration.".into());
        }
        let mut out = *self;
        for g in words.chunks_exact(4) {
            let class = match g[0].to_ascii_lowercase().as_str() {
                "normal" => &mut out.normal,
                "replica" | "slave" => &mut out.replica,
                "pubsub" => &mut out.pubsub,
                _ => return Err("Invalid client class specified in buffer limit configuration.".into()),
            };
            let bad = || "Error in hard, soft or soft_seconds setting in buffer limit configuration.".to_string();
            let hard_bytes = parse_bytes(g[1]).map_err(|_| bad())? as u64;
            let soft_bytes = parse_bytes(g[2]).map_err(|_| bad())? as u64;
            let soft_seconds = g[3].parse::<u64>().map_err(|_| bad())?;
            *class = OutputBufferLimit { hard_bytes, soft_bytes, soft_seconds };
        }
        Ok(out)
    }

    /// The CONFIG GET form, in bytes (`normal 1073741824 268435456 60 slave ... pubsub ...`).
    pub fn to_config_string(&self) -> String {
        let f = |l: &OutputBufferLimit| format!("{} {} {}", l.hard_bytes, l.soft_bytes, l.soft_seconds);
        format!("normal {} slave {} pubsub {}", f(&self.normal), f(&self.replica), f(&self.pubsub))
    }
}

fn parse_output_buffer_limits(s: &str) -> Result<OutputBufferLimits, String> {
    let zero = OutputBufferLimit { hard_bytes: 0, soft_bytes: 0, soft_seconds: 0 };
    let base = OutputBufferLimits { normal: zero, replica: zero, pubsub: zero };
    // Classes not named get the defaults.
    let defaults = base.apply(OutputBufferLimits::DEFAULT_STR)?;
    defaults.apply(s)
}

/// The normal-class output limit, shared by every connection and changed by CONFIG SET.
#[derive(Debug)]
pub struct OutputLimitCell {
    hard_bytes: std::sync::atomic::AtomicU64,
    soft_bytes: std::sync::atomic::AtomicU64,
    soft_seconds: std::sync::atomic::AtomicU64,
    /// The whole setting, for CONFIG GET (changed only by CONFIG SET).
    all: std::sync::Mutex<OutputBufferLimits>,
}

impl OutputLimitCell {
    pub fn new(limits: OutputBufferLimits) -> OutputLimitCell {
        use std::sync::atomic::AtomicU64;
        let n = limits.normal;
        OutputLimitCell {
            hard_bytes: AtomicU64::new(n.hard_bytes),
            soft_bytes: AtomicU64::new(n.soft_bytes),
            soft_seconds: AtomicU64::new(n.soft_seconds),
            all: std::sync::Mutex::new(limits),
        }
    }

    /// The normal class's limits (read per round by every connection: atomics, no lock).
    pub fn normal(&self) -> OutputBufferLimit {
        use std::sync::atomic::Ordering::Relaxed;
        OutputBufferLimit {
            hard_bytes: self.hard_bytes.load(Relaxed),
            soft_bytes: self.soft_bytes.load(Relaxed),
            soft_seconds: self.soft_seconds.load(Relaxed),
        }
    }

    pub fn get(&self) -> OutputBufferLimits {
        *self.all.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, limits: OutputBufferLimits) {
        use std::sync::atomic::Ordering::Relaxed;
        *self.all.lock().unwrap_or_else(|e| e.into_inner()) = limits;
        self.hard_bytes.store(limits.normal.hard_bytes, Relaxed);
        self.soft_bytes.store(limits.normal.soft_bytes, Relaxed);
        self.soft_seconds.store(limits.normal.soft_seconds, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64mb"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GB"), Ok(1 << 30));
        assert_eq!(parse_bytes("2k"), Ok(2000));
        assert!(parse_bytes("12xb").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn output_buffer_limits_parse_as_redis() {
        let d = parse_output_buffer_limits("normal 0 0 0").unwrap();
        assert_eq!(d.to_config_string(), "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60");
        let d = parse_output_buffer_limits(OutputBufferLimits::DEFAULT_STR).unwrap();
        assert_eq!(d.normal, OutputBufferLimit { hard_bytes: 1 << 30, soft_bytes: 256 << 20, soft_seconds: 60 });
        let e = d.apply("NORMAL 2 1 1 slave 3 2 1").unwrap();
        assert_eq!((e.normal.hard_bytes, e.replica.hard_bytes, e.pubsub), (2, 3, d.pubsub));
        assert!(d.apply("normal 1mb").unwrap_err().starts_with("Wrong number"));
        assert!(d.apply("").unwrap_err().starts_with("Wrong number"));
        assert!(d.apply("master 1 1 1").unwrap_err().starts_with("Invalid client class"));
        for bad in ["normal 1mbs 1 1", "normal 1 1x 1", "normal 1 1 x", "normal 1 1 -1", "normal -1 0 0"] {
            assert!(d.apply(bad).unwrap_err().starts_with("Error in hard"), "{bad}");
        }
    }
}
