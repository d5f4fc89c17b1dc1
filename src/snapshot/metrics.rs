//! Snapshot metrics, per shard (figures from [`super::task::SnapshotStats`]).

use crate::metrics::{Desc, Exposition, Kind};
use crate::shard::ops::SnapshotReport;

pub const TAKEN: Desc =
    Desc { name: "ringcache_snapshots_taken_total", help: "Snapshots written, by shard.", kind: Kind::Counter };
pub const FAILED: Desc =
    Desc { name: "ringcache_snapshots_failed_total", help: "Snapshots that failed, by shard.", kind: Kind::Counter };
pub const RUNNING: Desc =
    Desc { name: "ringcache_snapshot_running", help: "1 while a snapshot of the shard runs.", kind: Kind::Gauge };
pub const LAST_OK: Desc = Desc {
    name: "ringcache_snapshot_last_ok",
    help: "1 when the shard's last snapshot succeeded (or none was tried), 0 when it failed.",
    kind: Kind::Gauge,
};
pub const LAST_SUCCESS: Desc = Desc {
    name: "ringcache_snapshot_last_success_timestamp_seconds",
    help: "Unix time when the shard's last successful snapshot ended (0: none since start).",
    kind: Kind::Gauge,
};
pub const LAST_SECONDS: Desc = Desc {
    name: "ringcache_snapshot_last_duration_seconds",
    help: "Time the shard's last snapshot took.",
    kind: Kind::Gauge,
};
pub const LAST_BYTES: Desc =
    Desc { name: "ringcache_snapshot_last_bytes", help: "Size of the shard's last snapshot file.", kind: Kind::Gauge };
pub const LAST_ENTRIES: Desc =
    Desc { name: "ringcache_snapshot_last_entries", help: "Keys in the shard's last snapshot.", kind: Kind::Gauge };
pub const PRESERVED: Desc = Desc {
    name: "ringcache_snapshot_preserved_bytes",
    help: "Bytes of old values kept for a running snapshot (copy-on-write), by shard.",
    kind: Kind::Gauge,
};

pub fn expose(r: &SnapshotReport, shard: &str, e: &mut Exposition) {
    let l = [("shard", shard)];
    e.value(&TAKEN, &l, r.stats.taken as f64);
    e.value(&FAILED, &l, r.stats.failed as f64);
    e.value(&RUNNING, &l, r.running as u8 as f64);
    e.value(&LAST_OK, &l, (r.stats.last_ok || r.stats.taken + r.stats.failed == 0) as u8 as f64);
    e.value(&LAST_SUCCESS, &l, r.stats.last_success_s as f64);
    e.value(&LAST_SECONDS, &l, r.stats.last_ms as f64 / 1000.0);
    e.value(&LAST_BYTES, &l, r.stats.last_bytes as f64);
    e.value(&LAST_ENTRIES, &l, r.stats.last_entries as f64);
    e.value(&PRESERVED, &l, r.preserved_bytes as f64);
}
