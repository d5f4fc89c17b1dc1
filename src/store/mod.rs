//! A shard's keyspace: byte-string keys to byte-string values with optional absolute expiry.
//!
//! The store is owned by one executor and never shared, so it takes `&mut self` and holds no
//! locks. It knows nothing about the protocol or the WAL; commands (in `cmd`) build on the
//! small API here and decide what to log.
//!
//! # Expiry
//! Every access checks the entry's expiry against the caller's `now_ms` and treats an expired
//! entry as absent (and removes it: lazy expiry). [`Store::active_expire`] is the active half:
//! the shard's cron walks the table with the SCAN cursor, visiting a bounded number of buckets
//! per call and removing expired entries it meets, so keys nobody reads still go away. The
//! caller repeats while a large share of what it sampled was expired, within a time budget.
//!
//! # Accounting
//! `used_bytes` counts entry allocations (header, key, value, expiry slot) at the size class
//! the allocator really gives them (`entry::allocated_bytes`), plus bucket arrays and the
//! eviction ghost: what the store itself holds. Old versions kept for a running snapshot are
//! counted apart (`snapshot_preserved_bytes`): evicting live keys cannot shrink them, the walker
//! does.
//!
//! # Eviction
//! With a limit set ([`Store::set_eviction`]), [`Store::evict`] removes keys chosen by the
//! policy (see [`evict`]) until the live bytes plus what the caller is about to add fit. Removal
//! takes the same path as DEL, so a running snapshot keeps the old version; the evicted keys
//! are handed back for the caller to log as deletions.
//!
//! # Snapshots (point in time without a copy)
//! A snapshot must hold the store exactly as it was when it began, while commands keep changing
//! it. The store keeps an *epoch* bit, and every entry a *mark* bit (bit 31 of its value
//! length, which was free: entries do not grow). An entry is *marked* when its bit equals the
//! epoch. Outside a snapshot every entry is marked; every insert sets the mark.
//!
//! - [`Store::begin_snapshot`] flips the epoch: every entry present is now unmarked, meaning
//!   "belongs to the snapshot and is not written out yet". O(1).
//! - [`Store::snapshot_step`] walks the table with the SCAN cursor (which returns every entry
//!   present for the whole walk at least once, across rehashes), hands each unmarked entry to
//!   the encoder and marks it; marked entries (already written, or inserted after the start)
//!   are skipped, so nothing is written twice.
//! - Before an unmarked entry is replaced, removed (DEL, expiry, FLUSHALL) or changed in place
//!   (EXPIRE), its old version is moved (or, for in-place changes and entries handed back to
//!   the caller, copied) into the *preserved* list, which the walker writes out first.
//!   The new version is inserted marked.
//!
//! So the snapshot holds every entry present at the start, in its version at the start, and
//! nothing else. Expired entries are neither written nor preserved (loading drops them anyway).
//!
//! **Memory bound.** Only versions that were in the store at the start and are not yet written
//! out can be preserved, each at most once: preserved bytes never exceed the bytes of entries
//! present at the start that the walk has not reached yet, so the store's footprint during a
//! snapshot stays below the larger of its size at the start and its size now, plus the walker's
//! buffers: never a copy of the dataset. The snapshot task drains the preserved list first in
//! every step, and all of it (without yielding) when it exceeds its limit.

pub mod entry;
pub mod evict;
pub mod metrics;
pub mod table;

pub use entry::Entry;
pub use evict::Policy;
use table::Table;

/// Counters a shard reports through INFO.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreStats {
    pub keys: u64,
    pub keys_with_ttl: u64,
    pub used_bytes: u64,
    pub expired_keys: u64,
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    /// Keys removed by eviction since the start (or CONFIG RESETSTAT).
    pub evicted_keys: u64,
    /// The share of `maxmemory` this store keeps to (0: no limit).
    pub limit_bytes: u64,
}

/// The keyspace of one shard.
pub struct Store {
    table: Table,
    entry_bytes: usize,
    ttl_keys: usize,
    expired_keys: u64,
    hits: std::cell::Cell<u64>,
    misses: std::cell::Cell<u64>,
    /// Cursor of the active expiry walk.
    expire_cursor: u64,
    rng: u64,
    /// The snapshot epoch: an entry whose mark bit equals it is marked (see the module docs).
    epoch: bool,
    /// The running snapshot's walk, if one runs.
    snap: Option<SnapWalk>,
    /// Most bytes ever preserved at once (INFO).
    preserved_peak_bytes: usize,
    /// Eviction: limit, policy, clock, candidates.
    ev: Evictor,
}

/// Eviction state (see [`evict`]).
struct Evictor {
    /// 0: no limit.
    limit_bytes: usize,
    policy: Policy,
    /// Entries sampled per eviction (`maxmemory-samples`).
    samples: usize,
    /// The logical clock, and accesses since its last tick.
    clock: u64,
    ops: u64,
    /// Best candidates seen so far by the sampled LRU/LFU/TTL policies, ascending score.
    pool: Vec<(u64, Vec<u8>)>,
    /// Where sampling continues (a SCAN cursor).
    cursor: u64,
    /// Bytes of entries in the S3-FIFO small queue.
    small_bytes: usize,
    /// S3-FIFO ghost: 16-bit fingerprints of keys recently evicted from the small queue,
    /// direct-mapped by hash. Empty unless S3-FIFO runs with a limit.
    ghost: Vec<u16>,
    evicted_keys: u64,
    /// Keys evicted while loading (recovery), to be logged as deletions once the log is open.
    recovery_evicted: Vec<Vec<u8>>,
}

/// Bucket visits one sampling round may make before it gives up (sparse volatile keys).
const SAMPLE_VISITS_MAX: usize = 8192;
/// S3-FIFO promotions and second chances one eviction may grant before it takes the last
/// candidate anyway.
const S3FIFO_ROUNDS_MAX: usize = 64;

/// State of a running snapshot's walk.
struct SnapWalk {
    cursor: u64,
    /// Whether the walk has taken its first step (cursor 0 then means "done").
    started: bool,
    /// Old versions of entries changed or removed before the walk wrote them.
    preserved: Vec<Entry>,
    preserved_bytes: usize,
}

/// What one [`Store::snapshot_step`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepReport {
    /// Entries handed to the encoder.
    pub entries: usize,
    /// Key and value bytes handed to the encoder.
    pub bytes: usize,
    /// The walk is complete: every entry of the snapshot was handed over.
    pub done: bool,
}

/// Current wall-clock time in Unix milliseconds (the clock absolute expiry times use).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Store {
    pub fn new(seed: u64) -> Self {
        Store {
            table: Table::new(seed),
            entry_bytes: 0,
            ttl_keys: 0,
            expired_keys: 0,
            hits: Default::default(),
            misses: Default::default(),
            expire_cursor: 0,
            rng: seed | 1,
            epoch: false,
            snap: None,
            preserved_peak_bytes: 0,
            ev: Evictor {
                limit_bytes: 0,
                policy: Policy::AllkeysS3fifo,
                samples: 5,
                clock: 0,
                ops: 0,
                pool: Vec::new(),
                cursor: 0,
                small_bytes: 0,
                ghost: Vec::new(),
                evicted_keys: 0,
                recovery_evicted: Vec::new(),
            },
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.table.len() as u64,
            keys_with_ttl: self.ttl_keys as u64,
            used_bytes: self.live_bytes() as u64,
            expired_keys: self.expired_keys,
            keyspace_hits: self.hits.get(),
            keyspace_misses: self.misses.get(),
            evicted_keys: self.ev.evicted_keys,
            limit_bytes: self.ev.limit_bytes as u64,
        }
    }

    /// Keys with an expiry time.
    pub fn keys_with_ttl(&self) -> usize {
        self.ttl_keys
    }

    /// Bytes the live dataset holds: entries at their size class, buckets, the ghost.
    pub fn live_bytes(&self) -> usize {
        self.entry_bytes + self.table.bucket_bytes() + self.ev.ghost.capacity() * 2
    }

    /// Records a read hit or miss for INFO stats (only commands that read a value count, as in
    /// Redis).
    pub fn count_lookup(&self, hit: bool) {
        let c = if hit { &self.hits } else { &self.misses };
        c.set(c.get() + 1);
    }

    pub fn reset_stats(&mut self) {
        self.hits.set(0);
        self.misses.set(0);
        self.expired_keys = 0;
        self.ev.evicted_keys = 0;
    }

    /// Disposes of an entry taken out of the table: kept for the running snapshot if it belongs
    /// to it and is not written out yet, dropped otherwise.
    fn retire(&mut self, e: Entry, now_ms: u64) {
        if self.unwritten(&e) {
            self.preserve(e, now_ms);
        }
    }

    /// Keeps `e` (an old version the running snapshot needs: the caller checked the mark of
    /// the entry it came from) for the walker.
    fn preserve(&mut self, e: Entry, now_ms: u64) {
        if let Some(w) = self.snap.as_mut() {
            if !e.is_expired(now_ms) {
                w.preserved_bytes += e.alloc_bytes();
                self.preserved_peak_bytes = self.preserved_peak_bytes.max(w.preserved_bytes);
                w.preserved.push(e);
            }
        }
    }

    /// Whether `e` belongs to the running snapshot and is not written out yet.
    fn unwritten(&self, e: &Entry) -> bool {
        self.snap.is_some() && e.mark() != self.epoch
    }

    fn account_in(&mut self, e: &Entry) {
        self.account_in_parts(e.held_bytes(), e.has_ttl(), e.meta());
    }

    fn account_in_parts(&mut self, held: usize, ttl: bool, meta: u16) {
        self.entry_bytes += held;
        self.ttl_keys += ttl as usize;
        if self.ev.policy == Policy::AllkeysS3fifo && !evict::s3_main(meta) {
            self.ev.small_bytes += held;
        }
    }

    fn account_out(&mut self, e: &Entry) {
        let held = e.held_bytes();
        self.entry_bytes -= held;
        self.ttl_keys -= e.has_ttl() as usize;
        if self.ev.policy == Policy::AllkeysS3fifo && !evict::s3_main(e.meta()) {
            // Saturating: entries present when the policy changed were never counted in.
            self.ev.small_bytes = self.ev.small_bytes.saturating_sub(held);
        }
    }

    /// Advances the eviction clock by one access (see `evict`, "The clock").
    fn tick(&mut self) {
        self.ev.ops += 1;
        if self.ev.ops >= (self.table.len() as u64 / evict::TICKS_PER_PASS).max(1) {
            self.ev.ops = 0;
            self.ev.clock += 1;
        }
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Records an access to `e` in its eviction metadata.
    fn touch(&mut self, e: *const Entry) {
        self.tick();
        let kind = self.ev.policy.meta_kind();
        let r =
            if kind == evict::MetaKind::Lfu { (self.next_random() >> 11) as f64 / (1u64 << 53) as f64 } else { 0.0 };
        // SAFETY: `e` points to a live entry of the table, not modified since it was found.
        let e = unsafe { &*e };
        e.set_meta_shared(evict::touched(kind, e.meta(), self.ev.clock, r));
    }

    /// Removes `key` if it has expired. Returns whether it was removed.
    fn expire_if_needed(&mut self, key: &[u8], now_ms: u64) -> bool {
        let expired = self.table.get(key).is_some_and(|e| e.is_expired(now_ms));
        if expired {
            if let Some(e) = self.table.remove(key) {
                self.account_out(&e);
                self.expired_keys += 1;
                self.retire(e, now_ms);
            }
        }
        expired
    }

    /// The live entry for `key`, as a pointer valid until the table is next modified. One
    /// hash lookup; an expired entry is removed (lazy expiry).
    fn get_ptr(&mut self, key: &[u8], now_ms: u64) -> Option<*const Entry> {
        let e: *const Entry = self.table.get(key)?;
        // SAFETY: `e` was just returned by the table and nothing has modified it since.
        if !unsafe { &*e }.is_expired(now_ms) {
            self.touch(e);
            return Some(e);
        }
        self.expire_if_needed(key, now_ms);
        None
    }

    /// The live entry for `key`.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        // SAFETY: the returned reference borrows `self` mutably, so the table cannot change
        // while it lives. (Returning the table's borrow directly on one path and mutating on
        // the other is rejected by the current borrow checker, hence the pointer.)
        self.get_ptr(key, now_ms).map(|e| unsafe { &*e })
    }

    /// Like [`Store::get`], counting the keyspace hit or miss.
    pub fn get_counted(&mut self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        let e = self.get_ptr(key, now_ms);
        self.count_lookup(e.is_some());
        // SAFETY: as in `get`; counting touches only the `Cell` counters, not the table.
        e.map(|e| unsafe { &*e })
    }

    fn get_mut(&mut self, key: &[u8], now_ms: u64) -> Option<&mut Entry> {
        self.get(key, now_ms)?;
        self.table.get_mut(key)
    }

    pub fn contains(&mut self, key: &[u8], now_ms: u64) -> bool {
        self.get(key, now_ms).is_some()
    }

    /// Inserts or replaces `entry`. Returns whether it replaced a live entry (an expired one
    /// is counted as expired).
    pub fn put(&mut self, mut entry: Entry, now_ms: u64) -> bool {
        entry.set_mark(self.epoch);
        self.tick();
        let kind = self.ev.policy.meta_kind();
        let (held, ttl) = (entry.held_bytes(), entry.has_ttl());
        entry.set_meta(evict::initial(kind, self.ev.clock, false));
        // Valid while the entry lives: entries never move.
        let meta = entry.meta_ptr();
        let ghost_hit = kind == evict::MetaKind::S3fifo && !self.ev.ghost.is_empty() && self.ghost_take(entry.key());
        let Some(old) = self.table.insert(entry) else {
            let m = evict::initial(kind, self.ev.clock, ghost_hit);
            // SAFETY: `meta` points into the entry just inserted, which lives in the table.
            unsafe { meta.write(m) };
            self.account_in_parts(held, ttl, m);
            return false;
        };
        // An overwrite is an access: the new version inherits the old one's history (as Redis
        // keeps the LRU/LFU field on overwrite).
        let r = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        let m = evict::touched(kind, old.meta(), self.ev.clock, r);
        // SAFETY: as above.
        unsafe { meta.write(m) };
        self.account_in_parts(held, ttl, m);
        self.account_out(&old);
        let live = !old.is_expired(now_ms);
        if !live {
            self.expired_keys += 1;
        }
        self.retire(old, now_ms);
        live
    }

    pub fn set(&mut self, key: &[u8], value: &[u8], expire_at_ms: Option<u64>, now_ms: u64) -> bool {
        self.put(Entry::new(key, value, expire_at_ms), now_ms)
    }

    /// Removes `key`; returns the live entry removed. During a snapshot, a copy of an entry not
    /// yet written out is kept for it (the original goes to the caller).
    pub fn remove(&mut self, key: &[u8], now_ms: u64) -> Option<Entry> {
        if self.expire_if_needed(key, now_ms) {
            return None;
        }
        let e = self.table.remove(key)?;
        self.account_out(&e);
        if self.unwritten(&e) {
            self.preserve(e.share(), now_ms);
        }
        Some(e)
    }

    /// Removes `key`; returns whether a live key was removed. (No copy during a snapshot: the
    /// entry itself is kept if the snapshot needs it.)
    pub fn delete(&mut self, key: &[u8], now_ms: u64) -> bool {
        if self.expire_if_needed(key, now_ms) {
            return false;
        }
        let Some(e) = self.table.remove(key) else {
            return false;
        };
        self.account_out(&e);
        self.retire(e, now_ms);
        true
    }

    /// Sets or clears the expiry of a live key. Returns false if the key does not exist.
    pub fn set_expiry(&mut self, key: &[u8], expire_at_ms: Option<u64>, now_ms: u64) -> bool {
        let (epoch, snapshot) = (self.epoch, self.snap.is_some());
        let Some(e) = self.get_mut(key, now_ms) else {
            return false;
        };
        match (e.has_ttl(), expire_at_ms) {
            (true, Some(t)) => {
                if snapshot && e.mark() != epoch {
                    // Changed in place: keep the old version for the snapshot first.
                    let copy = e.share();
                    e.set_mark(epoch);
                    e.set_expire_in_place(t);
                    self.preserve(copy, now_ms);
                } else {
                    e.set_expire_in_place(t);
                }
                return true;
            }
            (false, None) => return true,
            _ => {}
        }
        // The expiry slot is added or removed: rebuild the entry.
        let Some(old) = self.table.remove(key) else {
            return false;
        };
        self.account_out(&old);
        let mut new = old.with_expiry(expire_at_ms);
        new.set_mark(self.epoch);
        new.set_meta(old.meta());
        self.account_in(&new);
        self.table.insert(new);
        self.retire(old, now_ms);
        true
    }

    /// Keeps only the keys for which `keep` is true (recovery re-routing a FLUSHALL).
    pub fn retain(&mut self, keep: impl Fn(&[u8]) -> bool, now_ms: u64) {
        let mut doomed = Vec::new();
        let mut cursor = 0;
        loop {
            cursor = self.table.scan(cursor, |e| {
                if !keep(e.key()) {
                    doomed.push(e.key().to_vec());
                }
            });
            if cursor == 0 {
                break;
            }
        }
        for k in doomed {
            self.delete(&k, now_ms);
        }
    }

    /// Removes every key. During a snapshot, entries not written out yet are kept for it.
    pub fn clear(&mut self) {
        if self.snap.is_some() {
            let now = now_ms();
            let mut kept = Vec::new();
            self.table.drain(|e| kept.push(e));
            self.entry_bytes = 0;
            self.ttl_keys = 0;
            self.ev.small_bytes = 0;
            for e in kept {
                self.retire(e, now);
            }
            return;
        }
        let old = self.table.take_all();
        self.entry_bytes = 0;
        self.ttl_keys = 0;
        self.ev.small_bytes = 0;
        drop(old);
    }

    /// Makes room for `additional` more keys at once (see [`Table::reserve`]); a hint: the
    /// bucket array it allocates is counted in `used_bytes` like any other. Under a memory
    /// limit it reserves no more keys than the limit could hold at 64 bytes each (the smallest
    /// entry's size class), so a snapshot larger than a lowered limit does not make the
    /// bucket array alone exceed it.
    pub fn reserve(&mut self, additional: usize) {
        let additional = match self.ev.limit_bytes {
            0 => additional,
            limit => additional.min(limit / 64),
        };
        self.table.reserve(additional);
    }

    /// Hints the CPU to fetch `key`'s bucket ahead of a `put` of it (see [`Table::prefetch`]).
    pub fn prefetch(&self, key: &[u8]) {
        self.table.prefetch(key);
    }

    /// Starts a point-in-time snapshot of the store as it is now (O(1): flips the epoch; see
    /// the module docs). Returns false if one is already running.
    pub fn begin_snapshot(&mut self) -> bool {
        if self.snap.is_some() {
            return false;
        }
        self.epoch = !self.epoch;
        self.snap = Some(SnapWalk { cursor: 0, started: false, preserved: Vec::new(), preserved_bytes: 0 });
        true
    }

    /// Whether a snapshot walk is running.
    pub fn snapshot_running(&self) -> bool {
        self.snap.is_some()
    }

    /// Bytes of old versions currently preserved for the running snapshot.
    pub fn snapshot_preserved_bytes(&self) -> usize {
        self.snap.as_ref().map_or(0, |w| w.preserved_bytes)
    }

    /// Most bytes ever preserved at once.
    pub fn snapshot_preserved_peak_bytes(&self) -> usize {
        self.preserved_peak_bytes
    }

    /// One bounded step of the running snapshot's walk. Hands `encode` batches of entries
    /// (each call one chunk's worth, about `chunk_bytes` of keys and values or less): first the
    /// preserved old versions (all of them when they exceed `preserved_limit_bytes`, otherwise
    /// up to one batch), then the unmarked entries of up to `max_buckets` buckets of the walk.
    /// When the walk is complete and nothing is preserved, the snapshot ends (`done`).
    pub fn snapshot_step<E>(
        &mut self,
        max_buckets: usize,
        chunk_bytes: usize,
        preserved_limit_bytes: usize,
        now_ms: u64,
        mut encode: impl FnMut(&[crate::snapshot::format::EntryRef<'_>]) -> Result<(), E>,
    ) -> Result<StepReport, E> {
        use crate::snapshot::format::EntryRef;
        let mut report = StepReport::default();
        let Some(w) = self.snap.as_mut() else {
            report.done = true;
            return Ok(report);
        };
        // 1. Preserved versions, newest last (order does not matter: keys are distinct).
        let drain_all = w.preserved_bytes > preserved_limit_bytes;
        loop {
            let mut taken = 0;
            let mut bytes = 0;
            for e in w.preserved.iter().rev() {
                if bytes >= chunk_bytes {
                    break;
                }
                bytes += e.key_len() + e.value_len();
                taken += 1;
            }
            if taken == 0 {
                break;
            }
            let batch: Vec<Entry> = w.preserved.split_off(w.preserved.len() - taken);
            w.preserved_bytes -= batch.iter().map(Entry::alloc_bytes).sum::<usize>();
            let refs: Vec<EntryRef<'_>> = batch.iter().filter(|e| !e.is_expired(now_ms)).map(EntryRef::of).collect();
            encode(&refs)?;
            report.entries += refs.len();
            report.bytes += bytes;
            if !drain_all {
                break;
            }
        }
        // 2. The walk: collect the unmarked entries of up to `max_buckets` buckets.
        let epoch = self.epoch;
        let mut found: Vec<*const Entry> = Vec::new();
        let mut bytes = 0;
        let mut cursor = w.cursor;
        let complete;
        if !(w.started && cursor == 0) {
            for _ in 0..max_buckets {
                cursor = self.table.scan_mut(cursor, |e| {
                    if e.mark() != epoch {
                        e.set_mark(epoch);
                        if !e.is_expired(now_ms) {
                            bytes += e.key_len() + e.value_len();
                            found.push(e as *const Entry);
                        }
                    }
                });
                if cursor == 0 || bytes >= chunk_bytes {
                    break;
                }
            }
            complete = cursor == 0;
            w.started = true;
            w.cursor = cursor;
        } else {
            complete = true;
        }
        if !found.is_empty() {
            // SAFETY: each pointer was taken from a live entry of the table in this call, and
            // the table has not been touched since (`&mut self` is held, and only `scan_mut`
            // ran, which does not move or free entries). Entries never move while they live.
            let refs: Vec<EntryRef<'_>> = found.iter().map(|&p| unsafe { &*p }).map(EntryRef::of).collect();
            encode(&refs)?;
            report.entries += refs.len();
            report.bytes += bytes;
        }
        if complete && w.preserved.is_empty() {
            self.snap = None;
            report.done = true;
        }
        Ok(report)
    }

    /// Abandons the running snapshot (its file could not be written): marks every entry the
    /// walk has not reached, so the invariant "outside a snapshot every entry is marked" holds
    /// for the next one, and drops the preserved versions. O(entries), no I/O.
    pub fn abort_snapshot(&mut self) {
        if self.snap.take().is_none() {
            return;
        }
        let epoch = self.epoch;
        let mut cursor = 0;
        loop {
            cursor = self.table.scan_mut(cursor, |e| e.set_mark(epoch));
            if cursor == 0 {
                break;
            }
        }
    }

    /// One step of a SCAN over live entries. See [`Table::scan`].
    pub fn scan(&self, cursor: u64, now_ms: u64, mut f: impl FnMut(&Entry)) -> u64 {
        self.table.scan(cursor, |e| {
            if !e.is_expired(now_ms) {
                f(e)
            }
        })
    }

    /// A random live key.
    pub fn random_key(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        // Skip expired entries a bounded number of times, removing them as we go.
        for _ in 0..100 {
            let mut rng = self.rng;
            let key = self
                .table
                .random_entry(|| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                })
                .map(|e| (e.key().to_vec(), e.is_expired(now_ms)));
            self.rng = rng;
            match key {
                None => return None,
                Some((k, false)) => return Some(k),
                Some((k, true)) => {
                    self.expire_if_needed(&k, now_ms);
                }
            }
        }
        None
    }

    /// Visits up to `max_buckets` buckets of the active-expiry walk, removing expired entries.
    /// Returns `(entries with a TTL seen, entries removed)`; `removed` keys are appended to
    /// `out` so the caller can log them.
    pub fn active_expire(&mut self, now_ms: u64, max_buckets: usize, out: &mut Vec<Vec<u8>>) -> (usize, usize) {
        if self.ttl_keys == 0 {
            return (0, 0);
        }
        let mut seen = 0;
        let start = out.len();
        let mut cursor = self.expire_cursor;
        for _ in 0..max_buckets {
            cursor = self.table.scan(cursor, |e| {
                if let Some(t) = e.expire_at_ms() {
                    seen += 1;
                    if t <= now_ms {
                        out.push(e.key().to_vec());
                    }
                }
            });
            if cursor == 0 {
                break;
            }
        }
        self.expire_cursor = cursor;
        for k in &out[start..] {
            if let Some(e) = self.table.remove(k) {
                self.account_out(&e);
                self.expired_keys += 1;
            }
        }
        (seen, out.len() - start)
    }

    /// Sets the eviction limit (bytes of live data; 0: none), the policy and the sample size.
    /// Cheap when nothing changes (called before each command with the current settings).
    pub fn set_eviction(&mut self, limit_bytes: usize, policy: Policy, samples: usize) {
        let ev = &mut self.ev;
        ev.limit_bytes = limit_bytes;
        ev.samples = samples.clamp(1, evict::MAX_SAMPLES);
        if ev.policy != policy {
            ev.policy = policy;
            ev.pool.clear();
            ev.small_bytes = 0;
        }
        if (policy != Policy::AllkeysS3fifo || limit_bytes == 0) && !ev.ghost.is_empty() {
            ev.ghost = Vec::new();
        }
    }

    /// The current eviction settings: (limit bytes, policy).
    pub fn eviction(&self) -> (usize, Policy) {
        (self.ev.limit_bytes, self.ev.policy)
    }

    /// What storing an entry of `entry_bytes` for `key` adds: its bytes, less the version it
    /// replaces, or plus the bucket array a new key's insert would allocate to grow the table.
    /// Looked up without counting as an access.
    pub fn incoming_bytes(&self, key: &[u8], entry_bytes: usize) -> usize {
        match self.table.get(key) {
            Some(old) => entry_bytes.saturating_sub(old.held_bytes()),
            None => entry_bytes + self.table.growth_bytes_on_insert(),
        }
    }

    /// Whether the live bytes plus `incoming_bytes` exceed the limit.
    pub fn over_limit(&self, incoming_bytes: usize) -> bool {
        self.ev.limit_bytes > 0 && self.live_bytes() + incoming_bytes > self.ev.limit_bytes
    }

    /// Evicts keys until the live bytes plus `incoming_bytes` fit the limit, at most
    /// `max_keys` of them; never `protect` (the key being written). Evicted keys are appended
    /// to `out` for the caller to log as deletions. Returns whether the store now fits: false
    /// under `noeviction`, with no candidate (a volatile policy and no key with an expiry), or
    /// when `max_keys` ran out.
    pub fn evict(
        &mut self,
        incoming_bytes: usize,
        now_ms: u64,
        protect: Option<&[u8]>,
        max_keys: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> bool {
        if self.ev.limit_bytes == 0 {
            return true;
        }
        if self.ev.policy == Policy::AllkeysS3fifo {
            self.size_ghost();
        }
        let mut n = 0;
        while self.over_limit(incoming_bytes) {
            if self.ev.policy == Policy::NoEviction || n >= max_keys || self.table.is_empty() {
                return false;
            }
            let victim = match self.ev.policy {
                Policy::AllkeysS3fifo => self.s3fifo_victim(protect),
                Policy::AllkeysRandom | Policy::VolatileRandom => self.random_victim(protect),
                _ => self.pool_victim(protect),
            };
            let Some(key) = victim else {
                return false;
            };
            let Some(e) = self.table.remove(&key) else {
                continue;
            };
            self.account_out(&e);
            if self.ev.policy == Policy::AllkeysS3fifo && !evict::s3_main(e.meta()) {
                self.ghost_put(&key);
            }
            self.retire(e, now_ms);
            self.ev.evicted_keys += 1;
            out.push(key);
            n += 1;
        }
        true
    }

    /// Recovery: evicts down to the limit after an entry was loaded, remembering the keys (see
    /// [`Store::take_recovery_evictions`]). Loading a data directory larger than the limit thus
    /// never holds much more than the limit.
    pub fn fit_after_load(&mut self, now_ms: u64) {
        if self.over_limit(0) {
            let mut out = std::mem::take(&mut self.ev.recovery_evicted);
            self.evict(0, now_ms, None, usize::MAX, &mut out);
            self.ev.recovery_evicted = out;
        }
    }

    /// The keys evicted during recovery that are still absent: the caller logs them as
    /// deletions, so the next recovery does not bring them back.
    pub fn take_recovery_evictions(&mut self) -> Vec<Vec<u8>> {
        let keys = std::mem::take(&mut self.ev.recovery_evicted);
        keys.into_iter().filter(|k| self.table.get(k).is_none()).collect()
    }

    /// Walks the table from the sampling cursor, calling `f` for each entry, until `f` has
    /// accepted `want` of them or the visit bound is reached.
    fn sample(&mut self, want: usize, visits_max: usize, mut f: impl FnMut(&Entry) -> bool) {
        let mut taken = 0;
        let mut cursor = self.ev.cursor;
        for _ in 0..visits_max {
            cursor = self.table.scan(cursor, |e| {
                if taken < want && f(e) {
                    taken += 1;
                }
            });
            if taken >= want {
                break;
            }
        }
        self.ev.cursor = cursor;
    }

    /// Sampled LRU, LFU and TTL: Redis's eviction pool. Each call samples `samples` entries,
    /// merges them into the pool of the best candidates seen so far, and takes the best one
    /// that still exists and has not been touched since it was scored.
    fn pool_victim(&mut self, protect: Option<&[u8]>) -> Option<Vec<u8>> {
        let (policy, clock) = (self.ev.policy, self.ev.clock);
        let volatile = policy.volatile();
        if volatile && self.ttl_keys == 0 {
            return None;
        }
        let mut cands: Vec<(u64, Vec<u8>)> = Vec::with_capacity(self.ev.samples);
        let visits = if volatile { SAMPLE_VISITS_MAX } else { self.ev.samples * 10 };
        self.sample(self.ev.samples, visits, |e| {
            if (volatile && !e.has_ttl()) || protect == Some(e.key()) {
                return false;
            }
            cands.push((evict::score(policy, e.meta(), clock, e.expire_at_ms()), e.key().to_vec()));
            true
        });
        let pool = &mut self.ev.pool;
        for (score, key) in cands {
            match pool.iter_mut().find(|(_, k)| *k == key) {
                Some(c) => c.0 = score,
                None => pool.push((score, key)),
            }
        }
        pool.sort_by_key(|c| c.0);
        if pool.len() > evict::POOL_SIZE {
            pool.drain(..pool.len() - evict::POOL_SIZE);
        }
        while let Some((score, key)) = self.ev.pool.pop() {
            let Some(e) = self.table.get(&key) else { continue };
            if (volatile && !e.has_ttl()) || protect == Some(&key[..]) {
                continue;
            }
            if evict::score(policy, e.meta(), clock, e.expire_at_ms()) < score {
                // Touched since it was scored: no longer a good candidate.
                continue;
            }
            return Some(key);
        }
        None
    }

    /// `allkeys-random`, `volatile-random`: the first eligible entry from a random position.
    fn random_victim(&mut self, protect: Option<&[u8]>) -> Option<Vec<u8>> {
        let volatile = self.ev.policy.volatile();
        if volatile && self.ttl_keys == 0 {
            return None;
        }
        self.ev.cursor = self.next_random();
        let mut found = None;
        let visits = if volatile { SAMPLE_VISITS_MAX } else { 64 };
        self.sample(1, visits, |e| {
            let ok = (e.has_ttl() || !volatile) && protect != Some(e.key());
            if ok {
                found = Some(e.key().to_vec());
            }
            ok
        });
        found
    }

    /// Sampled S3-FIFO (see `evict` and docs/EVICTION.md): while the small queue holds more
    /// than its share, its oldest sampled entry leaves it: to the main queue if it was read
    /// since insertion, out (and into the ghost) if not. Otherwise the main queue's oldest
    /// sampled entry is evicted, unless it was read since its last chance: then it gets
    /// another one (reinserted, frequency minus one).
    fn s3fifo_victim(&mut self, protect: Option<&[u8]>) -> Option<Vec<u8>> {
        let clock = self.ev.clock;
        let mut last = None;
        for _ in 0..S3FIFO_ROUNDS_MAX {
            let small_share = self.ev.limit_bytes / 100 * evict::S3FIFO_SMALL_PERCENT;
            let from_small = self.ev.small_bytes > small_share;
            let mut best: Option<(u64, Vec<u8>, u16)> = None;
            let mut fallback: Option<(u64, Vec<u8>, u16)> = None;
            let want = self.ev.samples;
            self.sample(want, want * 64, |e| {
                if protect == Some(e.key()) {
                    return false;
                }
                let m = e.meta();
                let age = evict::s3_age(m, clock);
                if evict::s3_main(m) == from_small {
                    // The other queue: remembered in case the wanted one has no entry here.
                    if fallback.as_ref().is_none_or(|b| age > b.0) {
                        fallback = Some((age, e.key().to_vec(), m));
                    }
                    return false;
                }
                if best.as_ref().is_none_or(|b| age > b.0) {
                    best = Some((age, e.key().to_vec(), m));
                }
                true
            });
            let Some((_, key, m)) = best.or(fallback) else {
                return last;
            };
            let freq = evict::s3_freq(m);
            if freq == 0 {
                return Some(key);
            }
            let held = match self.table.get_mut(&key) {
                Some(e) => {
                    let new = if evict::s3_main(m) {
                        evict::s3_pack(clock, true, freq - 1)
                    } else {
                        evict::s3_pack(clock, true, 0)
                    };
                    e.set_meta(new);
                    e.held_bytes()
                }
                None => continue,
            };
            if !evict::s3_main(m) {
                self.ev.small_bytes = self.ev.small_bytes.saturating_sub(held);
            }
            last = Some(key);
        }
        last
    }

    /// Keeps the ghost at about one slot per key (cleared when it grows).
    fn size_ghost(&mut self) {
        let want = self.table.len().next_power_of_two().max(1024);
        if self.ev.ghost.len() < want {
            self.ev.ghost = vec![0; want];
        }
    }

    fn ghost_slot(&self, key: &[u8]) -> (usize, u16) {
        let h = xxhash_rust::xxh3::xxh3_64(key);
        ((h as usize) & (self.ev.ghost.len() - 1), ((h >> 48) as u16) | 1)
    }

    fn ghost_put(&mut self, key: &[u8]) {
        if self.ev.ghost.is_empty() {
            return;
        }
        let (i, fp) = self.ghost_slot(key);
        self.ev.ghost[i] = fp;
    }

    /// Whether `key` was recently evicted from the small queue (and forgets it).
    fn ghost_take(&mut self, key: &[u8]) -> bool {
        let (i, fp) = self.ghost_slot(key);
        let hit = self.ev.ghost[i] == fp;
        if hit {
            self.ev.ghost[i] = 0;
        }
        hit
    }

    /// Advances incremental rehashing by up to `steps` buckets. Returns whether more remains.
    pub fn rehash(&mut self, steps: usize) -> bool {
        for _ in 0..steps {
            if !self.table.rehash_step() {
                return false;
            }
        }
        self.table.is_rehashing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_keys_are_absent_and_counted() {
        let mut s = Store::new(1);
        s.set(b"a", b"1", Some(100), 0);
        s.set(b"b", b"2", None, 0);
        assert!(s.get(b"a", 99).is_some());
        assert!(s.get(b"a", 100).is_none());
        assert_eq!(s.stats().expired_keys, 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn active_expire_removes_unread_expired_keys() {
        let mut s = Store::new(2);
        for i in 0..1000 {
            s.set(format!("k{i}").as_bytes(), b"v", Some(if i % 2 == 0 { 10 } else { 1_000_000 }), 0);
        }
        let mut out = Vec::new();
        let mut removed = 0;
        for _ in 0..100 {
            removed += s.active_expire(50, 64, &mut out).1;
        }
        assert_eq!(removed, 500);
        assert_eq!(s.len(), 500);
        assert_eq!(s.stats().keys_with_ttl, 500);
    }

    type Model = std::collections::HashMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

    fn model_of(s: &Store) -> Model {
        let mut m = Model::new();
        let mut c = 0;
        loop {
            c = s.scan(c, 0, |e| {
                m.insert(e.key().to_vec(), (e.value().to_vec(), e.expire_at_ms()));
            });
            if c == 0 {
                return m;
            }
        }
    }

    /// Runs the walk to its end, calling `churn` between steps; returns what it emitted and
    /// checks that no key was emitted twice.
    fn walk(s: &mut Store, buckets: usize, limit: usize, mut churn: impl FnMut(&mut Store, u64)) -> Model {
        let mut got = Model::new();
        for step in 0.. {
            let r = s
                .snapshot_step(buckets, 300, limit, 0, |refs| {
                    for e in refs {
                        let old = got.insert(e.key.to_vec(), (e.value.to_vec(), e.expire_at_ms));
                        assert!(old.is_none(), "{:?} emitted twice", String::from_utf8_lossy(e.key));
                    }
                    Ok::<(), ()>(())
                })
                .unwrap();
            if r.done {
                assert!(!s.snapshot_running());
                return got;
            }
            churn(s, step);
        }
        unreachable!()
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// The walk emits exactly the state at `begin_snapshot`, whatever happens meanwhile: writes,
    /// deletes, expiry changes in place and with a rebuilt entry, removals handing the entry to
    /// the caller, growth, shrinking and a FLUSHALL.
    #[test]
    fn snapshot_walk_is_point_in_time_under_churn() {
        for (seed, limit) in [(1u64, usize::MAX), (2, 2000), (3, 0), (4, usize::MAX)] {
            let mut s = Store::new(seed);
            for i in 0..3000 {
                let exp = (i % 5 == 0).then_some(1 << 50);
                s.set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes(), exp, 0);
            }
            if seed == 4 {
                // Start from the other epoch parity: a copy must be kept whatever its own bit.
                s.begin_snapshot();
                walk(&mut s, 64, usize::MAX, |_, _| {});
            }
            let at_start = model_of(&s);
            assert!(s.begin_snapshot());
            assert!(!s.begin_snapshot(), "one walk at a time");
            let mut x = seed * 7919;
            let got = walk(&mut s, 3, limit, |s, step| {
                for _ in 0..20 {
                    let k = format!("k{}", xorshift(&mut x) % 6000).into_bytes();
                    match xorshift(&mut x) % 7 {
                        0 | 1 => {
                            s.set(&k, b"new", None, 0);
                        }
                        2 => {
                            s.delete(&k, 0);
                        }
                        3 => {
                            s.set_expiry(&k, Some(1 << 51), 0);
                        }
                        4 => {
                            s.set_expiry(&k, None, 0);
                        }
                        5 => {
                            s.remove(&k, 0);
                        }
                        _ => {
                            s.set(&k, b"with-ttl", Some(1 << 52), 0);
                        }
                    }
                }
                if step == 40 && seed == 2 {
                    s.clear();
                }
            });
            assert_eq!(got.len(), at_start.len(), "seed {seed}");
            assert!(got == at_start, "seed {seed}: the walk differs from the state at its start");
            assert_eq!(s.snapshot_preserved_bytes(), 0);
            // Every entry is marked again: the next snapshot sees the current state exactly.
            let now = model_of(&s);
            assert!(s.begin_snapshot());
            assert!(walk(&mut s, 64, usize::MAX, |_, _| {}) == now);
        }
    }

    #[test]
    fn aborted_snapshot_leaves_the_next_one_whole() {
        let mut s = Store::new(9);
        for i in 0..500 {
            s.set(format!("k{i}").as_bytes(), b"v", None, 0);
        }
        s.begin_snapshot();
        s.snapshot_step(2, 100, usize::MAX, 0, |_| Ok::<(), ()>(())).unwrap();
        s.set(b"k1", b"changed", None, 0);
        s.abort_snapshot();
        assert!(!s.snapshot_running());
        assert_eq!(s.snapshot_preserved_bytes(), 0);
        let now = model_of(&s);
        s.begin_snapshot();
        assert!(walk(&mut s, 16, usize::MAX, |_, _| {}) == now);
    }

    #[test]
    fn expired_entries_are_not_written_or_preserved() {
        let mut s = Store::new(4);
        s.set(b"gone", b"v", Some(10), 0);
        s.set(b"kept", b"v", None, 0);
        s.begin_snapshot();
        let mut keys = Vec::new();
        loop {
            let r = s
                .snapshot_step(8, 100, usize::MAX, 20, |refs| {
                    keys.extend(refs.iter().map(|e| e.key.to_vec()));
                    Ok::<(), ()>(())
                })
                .unwrap();
            if r.done {
                break;
            }
        }
        assert_eq!(keys, vec![b"kept".to_vec()]);
    }

    fn filled(policy: Policy, limit: usize, keys: usize, ttl_every: usize) -> Store {
        let mut s = Store::new(5);
        s.set_eviction(limit, policy, 5);
        for i in 0..keys {
            let exp = (ttl_every > 0 && i % ttl_every == 0).then_some(1_000_000 + i as u64);
            let k = format!("key:{i:06}");
            let mut out = Vec::new();
            s.evict(Entry::held_bytes_for(k.len(), 32, exp.is_some()), 0, None, usize::MAX, &mut out);
            s.set(k.as_bytes(), &[b'v'; 32], exp, 0);
        }
        s
    }

    #[test]
    fn every_evicting_policy_keeps_the_store_within_its_limit() {
        for p in evict::POLICIES.iter().copied().filter(|p| *p != Policy::NoEviction) {
            let s = filled(p, 64 * 1024, 20_000, 1);
            assert!(s.live_bytes() <= 64 * 1024, "{p:?}: {} bytes", s.live_bytes());
            assert!(s.len() > 500, "{p:?} kept only {} keys", s.len());
            assert_eq!(s.stats().evicted_keys as usize + s.len(), 20_000, "{p:?}");
        }
    }

    #[test]
    fn noeviction_and_volatile_without_ttl_keys_refuse() {
        for p in
            [Policy::NoEviction, Policy::VolatileLru, Policy::VolatileLfu, Policy::VolatileRandom, Policy::VolatileTtl]
        {
            let mut s = filled(p, 16 * 1024, 2000, 0);
            let mut out = Vec::new();
            assert!(!s.evict(0, 0, None, usize::MAX, &mut out), "{p:?}");
            assert!(out.is_empty());
            assert_eq!(s.len(), 2000);
        }
    }

    #[test]
    fn volatile_policies_evict_only_keys_with_a_ttl() {
        for p in [Policy::VolatileLru, Policy::VolatileLfu, Policy::VolatileRandom, Policy::VolatileTtl] {
            let s = filled(p, 64 * 1024, 4000, 2);
            for i in (1..4000).step_by(2) {
                let k = format!("key:{i:06}");
                assert!(s.table.get(k.as_bytes()).is_some(), "{p:?} evicted {k}, which has no TTL");
            }
        }
    }

    #[test]
    fn volatile_ttl_evicts_the_nearest_expiry_first() {
        let s = filled(Policy::VolatileTtl, 96 * 1024, 3000, 1);
        // Expiry grows with the key number: what is left is mostly the latest expiries.
        let kept: Vec<usize> = (0..3000).filter(|i| s.table.get(format!("key:{i:06}").as_bytes()).is_some()).collect();
        let median = kept[kept.len() / 2];
        assert!(median > 2000, "median kept key {median}: the nearest expiries were not evicted first");
    }

    /// Hot keys read between writes survive; cold ones go. For LRU, LFU and S3-FIFO.
    #[test]
    fn recency_and_frequency_policies_keep_hot_keys() {
        for p in [Policy::AllkeysLru, Policy::AllkeysLfu, Policy::AllkeysS3fifo] {
            let mut s = Store::new(11);
            s.set_eviction(128 * 1024, p, 5);
            let hot: Vec<String> = (0..100).map(|i| format!("hot:{i}")).collect();
            for k in &hot {
                s.set(k.as_bytes(), &[b'h'; 32], None, 0);
            }
            for i in 0..30_000 {
                let k = format!("cold:{i}");
                let mut out = Vec::new();
                s.evict(Entry::held_bytes_for(k.len(), 32, false), 0, Some(k.as_bytes()), usize::MAX, &mut out);
                s.set(k.as_bytes(), &[b'c'; 32], None, 0);
                if i % 10 == 0 {
                    for h in &hot {
                        s.get(h.as_bytes(), 0);
                    }
                }
            }
            let kept = hot.iter().filter(|k| s.table.get(k.as_bytes()).is_some()).count();
            assert!(kept >= 95, "{p:?} kept {kept} of 100 hot keys");
            assert!(s.live_bytes() <= 128 * 1024);
        }
    }

    #[test]
    fn eviction_during_a_snapshot_preserves_the_old_version() {
        let mut s = Store::new(12);
        for i in 0..2000 {
            s.set(format!("k{i}").as_bytes(), b"v", None, 0);
        }
        let at_start = model_of(&s);
        assert!(s.begin_snapshot());
        s.set_eviction(s.live_bytes() / 2, Policy::AllkeysLru, 5);
        let mut out = Vec::new();
        assert!(s.evict(0, 0, None, usize::MAX, &mut out));
        assert!(!out.is_empty());
        assert!(walk(&mut s, 16, usize::MAX, |_, _| {}) == at_start);
    }

    #[test]
    fn recovery_evictions_are_reported_only_for_keys_still_absent() {
        let mut s = Store::new(13);
        s.set_eviction(8 * 1024, Policy::AllkeysRandom, 5);
        for i in 0..1000 {
            s.set(format!("k{i}").as_bytes(), b"v", None, 0);
            s.fit_after_load(0);
        }
        assert!(s.live_bytes() <= 8 * 1024);
        let evicted = s.take_recovery_evictions();
        assert_eq!(evicted.len() + s.len(), 1000);
        assert!(evicted.iter().all(|k| s.table.get(k).is_none()));
    }

    #[test]
    fn set_expiry_adds_and_removes_the_slot() {
        let mut s = Store::new(3);
        s.set(b"k", b"value", None, 0);
        let before = s.stats().used_bytes;
        assert!(s.set_expiry(b"k", Some(500), 0));
        assert_eq!(s.get(b"k", 0).and_then(|e| e.expire_at_ms()), Some(500));
        assert_eq!(s.stats().used_bytes, before + 8);
        assert!(s.set_expiry(b"k", None, 0));
        assert_eq!(s.get(b"k", 0).map(|e| e.value().to_vec()), Some(b"value".to_vec()));
        assert_eq!(s.stats().keys_with_ttl, 0);
        assert!(!s.set_expiry(b"missing", Some(1), 0));
    }
}
