//! The keyspace's metrics, per shard (figures from [`super::StoreStats`]).

use crate::metrics::{Desc, Exposition, Kind};

pub const KEYS: Desc = Desc { name: "ringcache_keys", help: "Live keys, by shard.", kind: Kind::Gauge };
pub const KEYS_WITH_TTL: Desc =
    Desc { name: "ringcache_keys_with_ttl", help: "Keys with an expiry, by shard.", kind: Kind::Gauge };
pub const USED_MEMORY: Desc = Desc {
    name: "ringcache_used_memory_bytes",
    help: "Bytes of keys, values and table slots (INFO used_memory), by shard.",
    kind: Kind::Gauge,
};
pub const EXPIRED: Desc = Desc {
    name: "ringcache_expired_keys_total",
    help: "Keys removed because their TTL passed (lazily or by the active cycle), by shard.",
    kind: Kind::Counter,
};
pub const EVICTED: Desc = Desc {
    name: "ringcache_evicted_keys_total",
    help: "Keys evicted to stay under maxmemory, by shard.",
    kind: Kind::Counter,
};
pub const HITS: Desc =
    Desc { name: "ringcache_keyspace_hits_total", help: "Reads that found their key, by shard.", kind: Kind::Counter };
pub const MISSES: Desc = Desc {
    name: "ringcache_keyspace_misses_total",
    help: "Reads that did not find their key, by shard.",
    kind: Kind::Counter,
};

/// Keys evicted so far to stay within `--maxmemory` (see `store::evict`).
pub fn evicted_keys(stats: &super::StoreStats) -> u64 {
    stats.evicted_keys
}

pub fn expose(stats: &super::StoreStats, shard: &str, e: &mut Exposition) {
    let l = [("shard", shard)];
    e.value(&KEYS, &l, stats.keys as f64);
    e.value(&KEYS_WITH_TTL, &l, stats.keys_with_ttl as f64);
    e.value(&USED_MEMORY, &l, stats.used_bytes as f64);
    e.value(&EXPIRED, &l, stats.expired_keys as f64);
    e.value(&EVICTED, &l, evicted_keys(stats) as f64);
    e.value(&HITS, &l, stats.keyspace_hits as f64);
    e.value(&MISSES, &l, stats.keyspace_misses as f64);
}
