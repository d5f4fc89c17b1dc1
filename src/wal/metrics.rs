//! The write-ahead log's metrics, per shard (figures from [`super::writer::LogStats`], the
//! log's state and what recovery found).

use crate::metrics::{Desc, Exposition, Kind};
use crate::shard::ops::WalReport;

pub const BYTES: Desc =
    Desc { name: "ringcache_wal_bytes_written_total", help: "Log bytes written, by shard.", kind: Kind::Counter };
pub const RECORDS: Desc =
    Desc { name: "ringcache_wal_records_total", help: "Log records made durable, by shard.", kind: Kind::Counter };
pub const FLUSHES: Desc = Desc {
    name: "ringcache_wal_flushes_total",
    help: "Group commits (write + fsync) of the log, by shard.",
    kind: Kind::Counter,
};
pub const FLUSH_DURATION: Desc = Desc {
    name: "ringcache_wal_flush_duration_seconds",
    help: "Time of one group commit (write + fsync), by shard.",
    kind: Kind::Histogram,
};
pub const SEGMENTS: Desc =
    Desc { name: "ringcache_wal_segments_created_total", help: "Log segments created, by shard.", kind: Kind::Counter };
pub const DELAYED: Desc = Desc {
    name: "ringcache_wal_delayed_writes_total",
    help: "Replies held back because the log was more than twice its buffer behind (async mode), by shard.",
    kind: Kind::Counter,
};
pub const PENDING: Desc = Desc {
    name: "ringcache_wal_pending_records",
    help: "Records logged but not yet durable, by shard.",
    kind: Kind::Gauge,
};
pub const FAIL_STOPPED: Desc = Desc {
    name: "ringcache_wal_fail_stopped",
    help: "1 when the shard's log failed (write or fsync error) and refuses writes until a restart.",
    kind: Kind::Gauge,
};
pub const NO_SPACE: Desc = Desc {
    name: "ringcache_wal_no_space",
    help: "1 while the shard's log cannot write because the disk is full (writes refused, retried).",
    kind: Kind::Gauge,
};
pub const RECOVERY_SECONDS: Desc = Desc {
    name: "ringcache_recovery_duration_seconds",
    help: "Time the shard's recovery at startup took (snapshot and log).",
    kind: Kind::Gauge,
};
pub const RECOVERY_RECORDS: Desc =
    Desc { name: "ringcache_recovery_records", help: "Log records replayed at startup, by shard.", kind: Kind::Gauge };
pub const RECOVERY_KEYS: Desc = Desc {
    name: "ringcache_recovery_keys_loaded",
    help: "Keys loaded at startup (snapshot and log), by shard.",
    kind: Kind::Gauge,
};
pub const RECOVERY_TORN: Desc = Desc {
    name: "ringcache_recovery_torn_tails",
    help: "Torn log tails (an interrupted last write) cut at startup, by shard.",
    kind: Kind::Gauge,
};
pub const RECOVERY_CORRUPT: Desc = Desc {
    name: "ringcache_recovery_corrupt_segments",
    help: "Corrupt log segments met at startup (set aside with --recovery tolerate-corruption), by shard.",
    kind: Kind::Gauge,
};

pub fn expose(w: &WalReport, shard: &str, e: &mut Exposition) {
    let l = [("shard", shard)];
    e.value(&BYTES, &l, w.stats.bytes_written as f64);
    e.value(&RECORDS, &l, w.stats.records as f64);
    e.value(&FLUSHES, &l, w.stats.flushes as f64);
    e.histogram(&FLUSH_DURATION, &l, &w.stats.flush_latency);
    e.value(&SEGMENTS, &l, w.stats.segments_created as f64);
    e.value(&DELAYED, &l, w.stats.delayed_writes as f64);
    e.value(&PENDING, &l, w.last_lsn.saturating_sub(w.durable_lsn) as f64);
    e.value(&FAIL_STOPPED, &l, matches!(w.fault, Some(super::LogFault::Failed(_))) as u8 as f64);
    e.value(&NO_SPACE, &l, matches!(w.fault, Some(super::LogFault::NoSpace(_))) as u8 as f64);
    expose_recovery(&w.recovery, shard, e);
}

/// Recovery figures (also exported without a log, for snapshot-only persistence).
pub fn expose_recovery(r: &super::replay::RecoveryStats, shard: &str, e: &mut Exposition) {
    let l = [("shard", shard)];
    e.value(&RECOVERY_SECONDS, &l, r.duration_ms as f64 / 1000.0);
    e.value(&RECOVERY_RECORDS, &l, r.records as f64);
    e.value(&RECOVERY_KEYS, &l, r.keys_loaded as f64);
    e.value(&RECOVERY_TORN, &l, r.torn_tails as f64);
    e.value(&RECOVERY_CORRUPT, &l, r.corrupt_segments as f64);
}
