//! Server-wide and per-shard metrics (connections, traffic, commands), and the assembly of
//! the whole exposition from what every shard last published (see [`crate::metrics`]).

use super::Global;
use crate::metrics::{Desc, Exposition, Kind};
use std::sync::atomic::Ordering;

pub const BUILD_INFO: Desc =
    Desc { name: "ringcache_build_info", help: "Always 1; the labels say which build runs.", kind: Kind::Gauge };
pub const UPTIME: Desc =
    Desc { name: "ringcache_uptime_seconds", help: "Seconds since the server started.", kind: Kind::Gauge };
pub const READY: Desc = Desc {
    name: "ringcache_ready",
    help: "1 once every shard recovered and accepts connections, 0 during recovery and shutdown.",
    kind: Kind::Gauge,
};
pub const SHARD_UP: Desc = Desc {
    name: "ringcache_shard_up",
    help: "1 when the shard's housekeeping ran within the stall limit (5 s), 0 when it is stalled.",
    kind: Kind::Gauge,
};
pub const CONNECTED: Desc =
    Desc { name: "ringcache_connected_clients", help: "Open client connections, by shard.", kind: Kind::Gauge };
pub const MAXCLIENTS: Desc =
    Desc { name: "ringcache_maxclients", help: "Most client connections accepted at once.", kind: Kind::Gauge };
pub const RECEIVED: Desc =
    Desc { name: "ringcache_connections_received_total", help: "Client connections accepted.", kind: Kind::Counter };
pub const REJECTED: Desc = Desc {
    name: "ringcache_connections_rejected_total",
    help: "Client connections refused because maxclients was reached.",
    kind: Kind::Counter,
};
pub const PROCESSED: Desc = Desc {
    name: "ringcache_commands_processed_total",
    help: "Commands processed, by the shard whose connection received them.",
    kind: Kind::Counter,
};
pub const NET_IN: Desc =
    Desc { name: "ringcache_net_input_bytes_total", help: "Bytes read from clients, by shard.", kind: Kind::Counter };
pub const NET_OUT: Desc =
    Desc { name: "ringcache_net_output_bytes_total", help: "Bytes written to clients, by shard.", kind: Kind::Counter };
pub const RSS: Desc =
    Desc { name: "ringcache_resident_memory_bytes", help: "Resident set size of the process.", kind: Kind::Gauge };

/// Resident set size from /proc (0 when unreadable).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * if page > 0 { page as u64 } else { 4096 }
}

/// The whole `/metrics` document.
pub fn render(g: &Global) -> String {
    let mut e = Exposition::default();
    let b = crate::build_info::GIT_HASH;
    e.value(&BUILD_INFO, &[("version", crate::build_info::VERSION), ("git", b)], 1.0);
    e.value(&UPTIME, &[], g.started.elapsed().as_secs_f64().floor());
    e.value(&READY, &[], (g.published.ready.load(Ordering::SeqCst) && !g.shutting_down()) as u8 as f64);
    e.value(&MAXCLIENTS, &[], g.maxclients.load(Ordering::Relaxed) as f64);
    e.value(&RECEIVED, &[], g.total_connections_received.load(Ordering::Relaxed) as f64);
    e.value(&REJECTED, &[], g.rejected_connections.load(Ordering::Relaxed) as f64);
    e.value(&RSS, &[], rss_bytes() as f64);
    let mut commands = crate::cmd::stats::CommandStatsSnapshot::default();
    for (i, r) in g.published.reports().into_iter().enumerate() {
        let id = i.to_string();
        let l = [("shard", id.as_str())];
        let Some((age_ms, r)) = r else {
            e.value(&SHARD_UP, &l, 0.0);
            continue;
        };
        e.value(&SHARD_UP, &l, (age_ms < crate::metrics::STALL_AFTER_MS) as u8 as f64);
        e.value(&CONNECTED, &l, r.connected_clients as f64);
        e.value(&PROCESSED, &l, r.commands_processed as f64);
        e.value(&NET_IN, &l, r.net_input_bytes as f64);
        e.value(&NET_OUT, &l, r.net_output_bytes as f64);
        e.value(&crate::cmd::stats::ERROR_REPLIES, &l, r.commands.error_replies as f64);
        crate::store::metrics::expose(&r.store, &id, &mut e);
        if let Some(w) = &r.wal {
            crate::wal::metrics::expose(w, &id, &mut e);
        } else if let Some(s) = &r.snapshot {
            crate::wal::metrics::expose_recovery(&s.recovery, &id, &mut e);
        }
        if let Some(s) = &r.snapshot {
            crate::snapshot::metrics::expose(s, &id, &mut e);
        }
        commands.merge(&r.commands);
    }
    commands.expose(&mut e);
    e.finish()
}
