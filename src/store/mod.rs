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
//! `used_bytes` counts entry allocations (header, key, value, expiry slot) plus bucket arrays:
//! what the store itself holds, before allocator rounding. Old versions kept for a running
//! snapshot are counted apart (`snapshot_preserved_bytes`).
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
pub mod metrics;
pub mod table;

pub use entry::Entry;
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
}

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
            used_bytes: (self.entry_bytes + self.table.bucket_bytes()) as u64,
            expired_keys: self.expired_keys,
            keyspace_hits: self.hits.get(),
            keyspace_misses: self.misses.get(),
        }
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
        self.entry_bytes += e.alloc_bytes();
        self.ttl_keys += e.has_ttl() as usize;
    }

    fn account_out(&mut self, e: &Entry) {
        self.entry_bytes -= e.alloc_bytes();
        self.ttl_keys -= e.has_ttl() as usize;
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
        self.account_in(&entry);
        let Some(old) = self.table.insert(entry) else {
            return false;
        };
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
            self.preserve(Entry::new(e.key(), e.value(), e.expire_at_ms()), now_ms);
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
                    let copy = Entry::new(e.key(), e.value(), e.expire_at_ms());
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
        let mut new = Entry::new(old.key(), old.value(), expire_at_ms);
        new.set_mark(self.epoch);
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
            for e in kept {
                self.retire(e, now);
            }
            return;
        }
        let old = self.table.take_all();
        self.entry_bytes = 0;
        self.ttl_keys = 0;
        drop(old);
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
            let refs: Vec<EntryRef<'_>> = batch
                .iter()
                .filter(|e| !e.is_expired(now_ms))
                .map(|e| EntryRef { key: e.key(), value: e.value(), expire_at_ms: e.expire_at_ms() })
                .collect();
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
            let refs: Vec<EntryRef<'_>> = found
                .iter()
                .map(|&p| unsafe { &*p })
                .map(|e| EntryRef { key: e.key(), value: e.value(), expire_at_ms: e.expire_at_ms() })
                .collect();
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
