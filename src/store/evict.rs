//! Eviction: which key goes when a shard's store is over its share of `maxmemory`.
//!
//! Pure policy code: the [`Policy`] enum, the meaning of an entry's 16 metadata bits under each
//! policy, and the scores that rank candidates. The store (`super::Store::evict`) owns the
//! loop: it samples candidates with a cursor over the table, removes the victim through the
//! same path as DEL (so a running snapshot keeps the old version) and hands the key back to be
//! logged as a deletion. `docs/EVICTION.md` explains the design and the measurements.
//!
//! # The clock
//! Recency is measured on a logical clock, one per store, that ticks once every `len / 256`
//! key accesses or inserts (at least every one): a keyspace's worth of accesses is about 256
//! ticks, whatever the request rate. (Redis's LRU clock ticks once a second, which cannot order
//! keys touched within the same second; a logical clock orders them however fast they come.)
//! Stamps are truncated to the bits a policy has, and ages are computed modulo that width; an
//! entry idle for more than a full wrap (256 keyspace passes for LRU, 32 for S3-FIFO) looks
//! young again: by then, under memory pressure, sampling has long had its chance at it.
//!
//! # Metadata bits, per policy
//! | policy | `meta` |
//! |---|---|
//! | `*-lru`, `*-random`, `volatile-ttl`, `noeviction` | 16-bit stamp of the last access |
//! | `*-lfu` | bits 8..16: Redis's logarithmic counter; bits 0..8: clock / 256 at the last decay |
//! | `allkeys-s3fifo` | bits 3..16: 13-bit stamp of insertion into its queue; bit 2: in the main queue; bits 0..2: frequency, 0..3 |
//!
//! Changing the policy at runtime reinterprets the bits of the entries already present (as Redis
//! does between LRU and LFU): ranking is rough until they are next touched.

/// `maxmemory-policy`: what to evict when the limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Evict nothing: commands that may add memory get the OOM error; reads and deletes work.
    #[value(name = "noeviction")]
    NoEviction,
    /// Approximated LRU over all keys (sampling with a pool of candidates, as Redis).
    #[value(name = "allkeys-lru")]
    AllkeysLru,
    /// Approximated LFU over all keys (Redis's logarithmic counter with decay).
    #[value(name = "allkeys-lfu")]
    AllkeysLfu,
    /// A random key.
    #[value(name = "allkeys-random")]
    AllkeysRandom,
    /// Approximated LRU among keys with an expiry; OOM when there are none.
    #[value(name = "volatile-lru")]
    VolatileLru,
    /// Approximated LFU among keys with an expiry; OOM when there are none.
    #[value(name = "volatile-lfu")]
    VolatileLfu,
    /// A random key with an expiry; OOM when there are none.
    #[value(name = "volatile-random")]
    VolatileRandom,
    /// The sampled key with an expiry whose expiry is nearest; OOM when there are none.
    #[value(name = "volatile-ttl")]
    VolatileTtl,
    /// Ours: a sampled S3-FIFO (a small probationary FIFO, a main FIFO with second chances, a
    /// ghost of keys evicted from the small one). The default when maxmemory is set.
    #[value(name = "allkeys-s3fifo")]
    AllkeysS3fifo,
}

/// Every policy, in the order of their `u8` code (for the atomics CONFIG SET updates).
pub const POLICIES: [Policy; 9] = [
    Policy::NoEviction,
    Policy::AllkeysLru,
    Policy::AllkeysLfu,
    Policy::AllkeysRandom,
    Policy::VolatileLru,
    Policy::VolatileLfu,
    Policy::VolatileRandom,
    Policy::VolatileTtl,
    Policy::AllkeysS3fifo,
];

/// Largest `maxmemory-samples` (Redis's bound).
pub const MAX_SAMPLES: usize = 64;
/// Candidates kept between evictions by the sampled LRU/LFU/TTL policies (Redis's
/// `EVPOOL_SIZE`).
pub const POOL_SIZE: usize = 16;
/// Share of the limit the S3-FIFO small queue may hold before eviction takes from it (the
/// paper's 10%).
pub const S3FIFO_SMALL_PERCENT: usize = 10;
/// Redis's `lfu-log-factor` and `LFU_INIT_VAL`.
pub const LFU_LOG_FACTOR: u32 = 10;
pub const LFU_INIT_VAL: u8 = 5;
/// Clock ticks per keyspace pass of accesses (see the module docs).
pub const TICKS_PER_PASS: u64 = 256;

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::NoEviction => "noeviction",
            Policy::AllkeysLru => "allkeys-lru",
            Policy::AllkeysLfu => "allkeys-lfu",
            Policy::AllkeysRandom => "allkeys-random",
            Policy::VolatileLru => "volatile-lru",
            Policy::VolatileLfu => "volatile-lfu",
            Policy::VolatileRandom => "volatile-random",
            Policy::VolatileTtl => "volatile-ttl",
            Policy::AllkeysS3fifo => "allkeys-s3fifo",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        POLICIES.iter().copied().find(|p| p.name().eq_ignore_ascii_case(s))
    }

    pub fn code(self) -> u8 {
        POLICIES.iter().position(|&p| p == self).unwrap_or(0) as u8
    }

    pub fn from_code(c: u8) -> Policy {
        POLICIES.get(c as usize).copied().unwrap_or(Policy::NoEviction)
    }

    /// Only keys with an expiry may be evicted.
    pub fn volatile(self) -> bool {
        matches!(self, Policy::VolatileLru | Policy::VolatileLfu | Policy::VolatileRandom | Policy::VolatileTtl)
    }

    pub fn meta_kind(self) -> MetaKind {
        match self {
            Policy::AllkeysLfu | Policy::VolatileLfu => MetaKind::Lfu,
            Policy::AllkeysS3fifo => MetaKind::S3fifo,
            _ => MetaKind::Lru,
        }
    }
}

/// How an entry's metadata bits are read (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    Lru,
    Lfu,
    S3fifo,
}

/// CONFIG SET's error for an unknown policy (Redis's text, with our policy added).
pub fn config_set_policy_error() -> String {
    let names: Vec<&str> = [
        Policy::VolatileLru,
        Policy::VolatileLfu,
        Policy::VolatileRandom,
        Policy::VolatileTtl,
        Policy::AllkeysLru,
        Policy::AllkeysLfu,
        Policy::AllkeysRandom,
        Policy::NoEviction,
        Policy::AllkeysS3fifo,
    ]
    .iter()
    .map(|p| p.name())
    .collect();
    format!(
        "ERR CONFIG SET failed (possibly related to argument 'maxmemory-policy') - argument(s) must be one of the following: {}",
        names.join(", ")
    )
}

/// Metadata of a new key.
pub fn initial(kind: MetaKind, clock: u64, in_ghost: bool) -> u16 {
    match kind {
        MetaKind::Lru => clock as u16,
        MetaKind::Lfu => (u16::from(LFU_INIT_VAL) << 8) | lfu_period(clock),
        MetaKind::S3fifo => s3_pack(clock, in_ghost, 0),
    }
}

/// Metadata after an access. `r` is a uniform random number in 0..1 (LFU's probabilistic
/// increment).
pub fn touched(kind: MetaKind, meta: u16, clock: u64, r: f64) -> u16 {
    match kind {
        MetaKind::Lru => clock as u16,
        MetaKind::Lfu => {
            let c = lfu_log_incr(lfu_decayed(meta, clock), r);
            (u16::from(c) << 8) | lfu_period(clock)
        }
        MetaKind::S3fifo => (meta & !3) | (s3_freq(meta) + 1).min(3),
    }
}

/// Eviction score for the sampled policies: higher is a better victim. `expire_at_ms` is the
/// entry's expiry (volatile-ttl).
pub fn score(policy: Policy, meta: u16, clock: u64, expire_at_ms: Option<u64>) -> u64 {
    match policy {
        Policy::VolatileTtl => u64::MAX - expire_at_ms.unwrap_or(u64::MAX),
        Policy::AllkeysLfu | Policy::VolatileLfu => 255 - u64::from(lfu_decayed(meta, clock)),
        _ => u64::from((clock as u16).wrapping_sub(meta)),
    }
}

fn lfu_period(clock: u64) -> u16 {
    ((clock / TICKS_PER_PASS) as u8).into()
}

/// Redis's `LFUDecrAndReturn`: one decrement per period elapsed since the last decay.
pub fn lfu_decayed(meta: u16, clock: u64) -> u8 {
    let counter = (meta >> 8) as u8;
    let elapsed = (lfu_period(clock) as u8).wrapping_sub(meta as u8);
    counter.saturating_sub(elapsed)
}

/// Redis's `LFULogIncr`: the higher the counter, the less likely an access increments it.
fn lfu_log_incr(counter: u8, r: f64) -> u8 {
    if counter == u8::MAX {
        return counter;
    }
    let base = f64::from(counter.saturating_sub(LFU_INIT_VAL));
    let p = 1.0 / (base * f64::from(LFU_LOG_FACTOR) + 1.0);
    if r < p {
        counter + 1
    } else {
        counter
    }
}

const S3_STAMP_BITS: u32 = 13;

pub fn s3_pack(clock: u64, main: bool, freq: u16) -> u16 {
    ((clock as u16) << 3) | (u16::from(main) << 2) | freq.min(3)
}

pub fn s3_freq(meta: u16) -> u16 {
    meta & 3
}

pub fn s3_main(meta: u16) -> bool {
    meta & 4 != 0
}

/// Age in its queue, in ticks (modulo 2^13).
pub fn s3_age(meta: u16, clock: u64) -> u64 {
    let mask = (1u16 << S3_STAMP_BITS) - 1;
    u64::from((clock as u16).wrapping_sub(meta >> 3) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for p in POLICIES {
            assert_eq!(Policy::parse(p.name()), Some(p));
            assert_eq!(Policy::from_code(p.code()), p);
        }
        assert_eq!(Policy::parse("ALLKEYS-LRU"), Some(Policy::AllkeysLru));
        assert_eq!(Policy::parse("lru"), None);
    }

    #[test]
    fn lru_score_is_idle_time_across_wrap() {
        let m = initial(MetaKind::Lru, 65_530, false);
        assert_eq!(score(Policy::AllkeysLru, m, 65_540, None), 10);
    }

    #[test]
    fn lfu_counts_logarithmically_and_decays() {
        let mut m = initial(MetaKind::Lfu, 0, false);
        for _ in 0..100 {
            m = touched(MetaKind::Lfu, m, 0, 0.0);
        }
        assert_eq!(lfu_decayed(m, 0), 105);
        // Three periods later, three decrements.
        assert_eq!(lfu_decayed(m, 3 * TICKS_PER_PASS), 102);
        // A high counter rarely moves.
        assert_eq!(touched(MetaKind::Lfu, m, 0, 0.5) >> 8, 105);
        assert!(
            score(Policy::AllkeysLfu, m, 0, None)
                < score(Policy::AllkeysLfu, initial(MetaKind::Lfu, 0, false), 0, None)
        );
    }

    #[test]
    fn s3fifo_bits() {
        let m = initial(MetaKind::S3fifo, 100, true);
        assert!(s3_main(m));
        assert_eq!(s3_freq(m), 0);
        let m = touched(MetaKind::S3fifo, touched(MetaKind::S3fifo, m, 0, 0.0), 0, 0.0);
        let m = touched(MetaKind::S3fifo, touched(MetaKind::S3fifo, m, 0, 0.0), 0, 0.0);
        assert_eq!(s3_freq(m), 3);
        assert_eq!(s3_age(m, 108), 8);
        assert_eq!(s3_age(s3_pack(8190, false, 0), 8192 + 2), 4);
    }
}
