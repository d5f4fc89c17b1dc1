//! Per-command statistics: calls, time, failures and latency, as Redis keeps them for INFO
//! `commandstats`, `latencystats` and `errorstats`-style totals, and for the Prometheus
//! endpoint.
//!
//! Each shard owns one [`CommandStats`] (in its `ShardStats`), indexed by the command's
//! position in [`COMMANDS`]. A command is counted on the shard that ran it: a key command sent
//! to another shard counts there, a connection or multi-shard command on the connection's
//! shard. Like Redis:
//! - `calls` and `usec` count commands that ran; `usec` is the time spent executing the command
//!   (for a multi-shard command, the whole fan-out including waiting for the other shards);
//! - `failed_calls` count commands that ran and replied an error;
//! - `rejected_calls` count commands refused before running (wrong arity, `NOAUTH`), which are
//!   not in `calls`.
//!
//! Unknown commands are not attributed to any command (Redis neither), but they count in
//! `total_error_replies` like every error reply.

use super::table::{CommandSpec, COMMANDS};
use crate::metrics::{Counter, Desc, Exposition, Histogram, HistogramSnapshot, Kind};
use std::time::Instant;

/// Calls per command (summed over shards).
pub const CALLS: Desc = Desc {
    name: "ringcache_commands_total",
    help: "Commands executed, by command (rejected ones excluded), as INFO commandstats calls.",
    kind: Kind::Counter,
};
/// Failed calls per command.
pub const FAILED: Desc = Desc {
    name: "ringcache_commands_failed_total",
    help: "Commands that ran and replied an error, by command.",
    kind: Kind::Counter,
};
/// Rejected calls per command.
pub const REJECTED: Desc = Desc {
    name: "ringcache_commands_rejected_total",
    help: "Commands refused before running (wrong number of arguments, NOAUTH), by command.",
    kind: Kind::Counter,
};
/// Execution time per command.
pub const DURATION: Desc = Desc {
    name: "ringcache_command_duration_seconds",
    help: "Time to execute a command on its shard (multi-shard commands: the whole fan-out), by command.",
    kind: Kind::Histogram,
};
/// Error replies, all kinds (Redis `total_error_replies`).
pub const ERROR_REPLIES: Desc = Desc {
    name: "ringcache_error_replies_total",
    help: "Error replies sent, including unknown commands and protocol errors, by shard.",
    kind: Kind::Counter,
};

/// One command's figures on one shard.
#[derive(Default)]
pub struct PerCommand {
    pub calls: Counter,
    pub failed: Counter,
    pub rejected: Counter,
    pub latency: Histogram,
}

/// A shard's per-command statistics.
pub struct CommandStats {
    per: Box<[PerCommand]>,
    /// Every error reply (Redis's `total_error_replies`).
    pub error_replies: Counter,
}

impl Default for CommandStats {
    fn default() -> Self {
        CommandStats {
            per: COMMANDS.iter().map(|_| PerCommand::default()).collect(),
            error_replies: Counter::default(),
        }
    }
}

fn index(spec: &CommandSpec) -> Option<usize> {
    let base = COMMANDS.as_ptr() as usize;
    let at = spec as *const CommandSpec as usize;
    let i = at.checked_sub(base)? / std::mem::size_of::<CommandSpec>();
    (i < COMMANDS.len()).then_some(i)
}

/// Whether the reply written from `from` on in `buf` is an error (RESP2/3 `-`, RESP3 `!`).
pub fn is_error_reply(buf: &[u8], from: usize) -> bool {
    matches!(buf.get(from), Some(b'-' | b'!'))
}

impl CommandStats {
    /// Counts one executed command that started at `start`; `failed` when it replied an error.
    pub fn record(&self, spec: &CommandSpec, start: Instant, failed: bool) {
        let Some(p) = index(spec).and_then(|i| self.per.get(i)) else { return };
        p.calls.inc();
        p.latency.record_since(start);
        if failed {
            p.failed.inc();
            self.error_replies.inc();
        }
    }

    /// Counts a command refused before it ran (its error reply included).
    pub fn reject(&self, spec: &CommandSpec) {
        if let Some(p) = index(spec).and_then(|i| self.per.get(i)) {
            p.rejected.inc();
        }
        self.error_replies.inc();
    }

    pub fn reset(&self) {
        for p in self.per.iter() {
            p.calls.reset();
            p.failed.reset();
            p.rejected.reset();
            p.latency.reset();
        }
        self.error_replies.reset();
    }

    /// A copy that can cross threads: the commands that were called or rejected.
    pub fn snapshot(&self) -> CommandStatsSnapshot {
        let per = COMMANDS
            .iter()
            .zip(self.per.iter())
            .filter(|(_, p)| p.calls.get() > 0 || p.rejected.get() > 0)
            .map(|(c, p)| {
                (
                    c.name,
                    CommandFigures {
                        calls: p.calls.get(),
                        failed: p.failed.get(),
                        rejected: p.rejected.get(),
                        latency: p.latency.snapshot(),
                    },
                )
            })
            .collect();
        CommandStatsSnapshot { per, error_replies: self.error_replies.get() }
    }
}

/// One command's figures, summable over shards.
#[derive(Debug, Clone, Default)]
pub struct CommandFigures {
    pub calls: u64,
    pub failed: u64,
    pub rejected: u64,
    pub latency: HistogramSnapshot,
}

/// [`CommandStats`] copied out of a shard: the used commands in table order.
#[derive(Debug, Clone, Default)]
pub struct CommandStatsSnapshot {
    pub per: Vec<(&'static str, CommandFigures)>,
    pub error_replies: u64,
}

impl CommandStatsSnapshot {
    /// Adds another shard's figures.
    pub fn merge(&mut self, other: &CommandStatsSnapshot) {
        for (name, f) in &other.per {
            match self.per.iter_mut().find(|(n, _)| n == name) {
                Some((_, mine)) => {
                    mine.calls += f.calls;
                    mine.failed += f.failed;
                    mine.rejected += f.rejected;
                    mine.latency.merge(&f.latency);
                }
                None => self.per.push((name, f.clone())),
            }
        }
        self.error_replies += other.error_replies;
    }

    /// INFO `commandstats` body, Redis 7's format.
    pub fn info_commandstats(&self) -> String {
        let mut s = String::new();
        for (name, f) in &self.per {
            let usec = f.latency.sum_ns / 1000;
            let per_call = if f.calls == 0 { 0.0 } else { f.latency.sum_ns as f64 / 1000.0 / f.calls as f64 };
            s.push_str(&format!(
                "cmdstat_{name}:calls={},usec={usec},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}\r\n",
                f.calls, f.rejected, f.failed
            ));
        }
        s
    }

    /// INFO `latencystats` body: p50, p99 and p99.9 in microseconds, Redis 7's format
    /// (`latency-tracking-info-percentiles` at its default).
    pub fn info_latencystats(&self) -> String {
        let mut s = String::new();
        for (name, f) in self.per.iter().filter(|(_, f)| f.calls > 0) {
            let q = |q: f64| f.latency.quantile_ns(q) as f64 / 1000.0;
            s.push_str(&format!(
                "latency_percentiles_usec_{name}:p50={:.3},p99={:.3},p99.9={:.3}\r\n",
                q(0.5),
                q(0.99),
                q(0.999)
            ));
        }
        s
    }

    /// Prometheus samples, summed over shards (`self` is already the sum).
    pub fn expose(&self, e: &mut Exposition) {
        for (name, f) in &self.per {
            let labels = [("cmd", *name)];
            e.value(&CALLS, &labels, f.calls as f64);
            e.value(&FAILED, &labels, f.failed as f64);
            e.value(&REJECTED, &labels, f.rejected as f64);
            e.histogram(&DURATION, &labels, &f.latency);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_formats_like_redis() {
        let s = CommandStats::default();
        let get = super::super::lookup(b"get").expect("get");
        let set = super::super::lookup(b"set").expect("set");
        s.record(get, Instant::now(), false);
        s.record(get, Instant::now(), true);
        s.reject(set);
        let snap = s.snapshot();
        let mut total = CommandStatsSnapshot::default();
        total.merge(&snap);
        total.merge(&snap);
        let text = total.info_commandstats();
        assert!(text.contains("cmdstat_get:calls=4,usec="), "{text}");
        assert!(text.contains(",rejected_calls=0,failed_calls=2\r\n"), "{text}");
        assert!(text.contains("cmdstat_set:calls=0,usec=0,usec_per_call=0.00,rejected_calls=2,failed_calls=0\r\n"));
        assert_eq!(total.error_replies, 4);
        let lat = total.info_latencystats();
        assert!(lat.starts_with("latency_percentiles_usec_get:p50="), "{lat}");
        assert!(!lat.contains("_set:"), "no latency line for a command that never ran");
        s.reset();
        assert!(s.snapshot().per.is_empty());
    }
}
