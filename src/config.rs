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
}
