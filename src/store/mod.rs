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
//! what the store itself holds, before allocator rounding.

pub mod entry;
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

    pub fn get_mut(&mut self, key: &[u8], now_ms: u64) -> Option<&mut Entry> {
        self.get(key, now_ms)?;
        self.table.get_mut(key)
    }

    pub fn contains(&mut self, key: &[u8], now_ms: u64) -> bool {
        self.get(key, now_ms).is_some()
    }

    /// Inserts or replaces `entry`. Returns the replaced live entry, if any (an expired one is
    /// dropped and not returned).
    pub fn put(&mut self, entry: Entry, now_ms: u64) -> Option<Entry> {
        self.account_in(&entry);
        let old = self.table.insert(entry)?;
        self.account_out(&old);
        if old.is_expired(now_ms) {
            self.expired_keys += 1;
            None
        } else {
            Some(old)
        }
    }

    pub fn set(&mut self, key: &[u8], value: &[u8], expire_at_ms: Option<u64>, now_ms: u64) -> Option<Entry> {
        self.put(Entry::new(key, value, expire_at_ms), now_ms)
    }

    /// Removes `key`; returns the live entry removed.
    pub fn remove(&mut self, key: &[u8], now_ms: u64) -> Option<Entry> {
        if self.expire_if_needed(key, now_ms) {
            return None;
        }
        let e = self.table.remove(key)?;
        self.account_out(&e);
        Some(e)
    }

    /// Sets or clears the expiry of a live key. Returns false if the key does not exist.
    pub fn set_expiry(&mut self, key: &[u8], expire_at_ms: Option<u64>, now_ms: u64) -> bool {
        let Some(e) = self.get_mut(key, now_ms) else {
            return false;
        };
        match (e.has_ttl(), expire_at_ms) {
            (true, Some(t)) => {
                e.set_expire_in_place(t);
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
        let new = Entry::new(old.key(), old.value(), expire_at_ms);
        self.account_in(&new);
        self.table.insert(new);
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
            self.remove(&k, now_ms);
        }
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        let old = self.table.take_all();
        self.entry_bytes = 0;
        self.ttl_keys = 0;
        drop(old);
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
