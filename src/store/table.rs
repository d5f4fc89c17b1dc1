//! The shard's hash table: separate chaining over power-of-two bucket arrays, rehashed
//! incrementally, scanned with Redis's reverse-binary cursor.
//!
//! # Why chaining
//! A chained table moves *entries*, never rewrites them, and its bucket index is `hash & mask`.
//! That is what makes the SCAN cursor work: a cursor that counts in bit-reversed order visits
//! every bucket of every table size it may meet, so an entry present for the whole scan is
//! returned at least once even across inserts, deletes, growth and shrinking (Redis's
//! `dictScan` argument). Snapshots use the same cursor to walk the table in bounded steps.
//!
//! # Incremental rehash
//! Growing or shrinking allocates the new bucket array and then moves one bucket per write
//! (plus a time-bounded batch from the shard's cron), so no single command pays for moving
//! millions of entries. While rehashing, lookups check both tables and inserts go to the new
//! one.
//!
//! # Sizes
//! Grows to double when entries reach the bucket count (load factor 1); shrinks when fewer
//! than 1/8 of buckets would be used. A bucket is 8 bytes, so buckets cost 8 to 16 bytes per
//! key.
//!
//! # Hashing
//! xxh3 with a per-process random seed: an attacker who picks keys cannot aim them at one
//! bucket. (Shard routing uses a fixed, unseeded hash, so keys keep their shard across
//! restarts; see `shard::shard_of`.)

use super::entry::Entry;
use xxhash_rust::xxh3::xxh3_64_with_seed;

const INITIAL_BUCKETS: usize = 4;
/// Empty buckets a single rehash step may skip before giving up (as Redis: 10 per step).
const EMPTY_VISITS_PER_STEP: usize = 10;

#[derive(Default)]
struct Buckets {
    slots: Vec<Option<Entry>>,
}

impl Buckets {
    fn with_len(n: usize) -> Self {
        let mut slots = Vec::with_capacity(n);
        slots.resize_with(n, || None);
        Buckets { slots }
    }
    fn mask(&self) -> u64 {
        (self.slots.len() as u64).wrapping_sub(1)
    }
    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Hash table from key bytes to [`Entry`].
pub struct Table {
    t0: Buckets,
    t1: Buckets,
    /// Next bucket of `t0` to move to `t1`; `None` when not rehashing.
    rehash_idx: Option<usize>,
    len: usize,
    seed: u64,
}

impl Table {
    pub fn new(seed: u64) -> Self {
        Table { t0: Buckets::default(), t1: Buckets::default(), rehash_idx: None, len: 0, seed }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the bucket arrays.
    pub fn bucket_bytes(&self) -> usize {
        (self.t0.slots.capacity() + self.t1.slots.capacity()) * std::mem::size_of::<Option<Entry>>()
    }

    /// Bytes a new bucket array would add if the next insert of a new key starts a growth.
    pub fn growth_bytes_on_insert(&self) -> usize {
        if self.is_rehashing() || self.t0.is_empty() || self.len < self.t0.slots.len() {
            return 0;
        }
        (self.len + 1).next_power_of_two() * std::mem::size_of::<Option<Entry>>()
    }

    pub fn is_rehashing(&self) -> bool {
        self.rehash_idx.is_some()
    }

    fn hash(&self, key: &[u8]) -> u64 {
        xxh3_64_with_seed(key, self.seed)
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        let h = self.hash(key);
        for t in [&self.t0, &self.t1] {
            if t.is_empty() {
                continue;
            }
            let mut cur = &t.slots[(h & t.mask()) as usize];
            while let Some(e) = cur {
                if e.key() == key {
                    return Some(e);
                }
                cur = e.next_slot();
            }
            if !self.is_rehashing() {
                break;
            }
        }
        None
    }

    /// The chain slot holding `key`, if present. One traversal per table.
    fn slot_mut(&mut self, key: &[u8]) -> Option<&mut Option<Entry>> {
        let h = self.hash(key);
        let rehashing = self.is_rehashing();
        if !self.t0.is_empty() {
            let idx = (h & self.t0.mask()) as usize;
            if let Some(slot) = find_in_chain(&mut self.t0.slots[idx], key) {
                return Some(slot);
            }
        }
        if rehashing && !self.t1.is_empty() {
            let idx = (h & self.t1.mask()) as usize;
            return find_in_chain(&mut self.t1.slots[idx], key);
        }
        None
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        self.slot_mut(key).and_then(|s| s.as_mut())
    }

    /// Inserts `entry`, replacing (and returning) an entry with the same key.
    pub fn insert(&mut self, mut entry: Entry) -> Option<Entry> {
        self.rehash_step();
        if let Some(slot) = self.slot_mut(entry.key()) {
            // Keep the chain: the new entry takes over the old one's successor.
            let mut old = slot.take().expect("slot holds the key");
            *entry.next_slot_mut() = old.next_slot_mut().take();
            *slot = Some(entry);
            return Some(old);
        }
        self.grow_if_needed();
        let h = self.hash(entry.key());
        let t = if self.is_rehashing() { &mut self.t1 } else { &mut self.t0 };
        let idx = (h & t.mask()) as usize;
        *entry.next_slot_mut() = t.slots[idx].take();
        t.slots[idx] = Some(entry);
        self.len += 1;
        None
    }

    /// Removes and returns the entry for `key`.
    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        self.rehash_step();
        let slot = self.slot_mut(key)?;
        let mut e = slot.take().expect("slot holds the key");
        *slot = e.next_slot_mut().take();
        self.len -= 1;
        self.shrink_if_needed();
        Some(e)
    }

    /// Makes room for `additional` more entries at once (loading a snapshot whose entry count
    /// is known): an empty table gets its final bucket array now, a non-empty one starts one
    /// rehash to the final size. Without it a load grows through every power of two, and
    /// loading 10M keys spent 60% of its time in rehash steps and in lookups that search both
    /// arrays while one runs.
    pub fn reserve(&mut self, additional: usize) {
        let want = self.len.saturating_add(additional).saturating_add(1).next_power_of_two().max(INITIAL_BUCKETS);
        if self.is_rehashing() || want <= self.t0.slots.len() {
            return;
        }
        if self.len == 0 {
            self.t0 = Buckets::with_len(want);
        } else {
            self.start_rehash(want);
        }
    }

    /// Hints the CPU to fetch the bucket slot `key` hashes to, ahead of an insert or lookup of
    /// it a few keys later. A load inserts millions of keys whose slots are random places in a
    /// bucket array far larger than the caches: without the hint every insert waits for one
    /// memory access in turn, with it several are in flight. No effect on what anything returns.
    pub fn prefetch(&self, key: &[u8]) {
        let b = if self.is_rehashing() { &self.t1 } else { &self.t0 };
        if b.is_empty() {
            return;
        }
        let idx = (self.hash(key) & b.mask()) as usize;
        if let Some(slot) = b.slots.get(idx) {
            prefetch_read(slot as *const Option<Entry> as *const u8);
        }
    }

    /// Drops every entry. Returns the old table so a caller may free it elsewhere (FLUSHALL
    /// ASYNC); dropping it frees everything.
    pub fn take_all(&mut self) -> Table {
        let seed = self.seed;
        std::mem::replace(self, Table::new(seed))
    }

    fn grow_if_needed(&mut self) {
        if self.is_rehashing() {
            return;
        }
        if self.t0.is_empty() {
            self.t0 = Buckets::with_len(INITIAL_BUCKETS);
        } else if self.len >= self.t0.slots.len() {
            self.start_rehash((self.len + 1).next_power_of_two());
        }
    }

    fn shrink_if_needed(&mut self) {
        if self.is_rehashing() || self.t0.slots.len() <= INITIAL_BUCKETS {
            return;
        }
        if self.len * 8 < self.t0.slots.len() {
            self.start_rehash(self.len.next_power_of_two().max(INITIAL_BUCKETS));
        }
    }

    fn start_rehash(&mut self, size: usize) {
        if size == self.t0.slots.len() {
            return;
        }
        self.t1 = Buckets::with_len(size);
        self.rehash_idx = Some(0);
    }

    /// Moves at most one non-empty bucket from the old table to the new one. Returns whether
    /// rehashing is still in progress.
    pub fn rehash_step(&mut self) -> bool {
        let Some(mut idx) = self.rehash_idx else {
            return false;
        };
        let mut empty_visits = 0;
        while idx < self.t0.slots.len() && self.t0.slots[idx].is_none() {
            idx += 1;
            empty_visits += 1;
            if empty_visits >= EMPTY_VISITS_PER_STEP {
                self.rehash_idx = Some(idx);
                return true;
            }
        }
        if idx < self.t0.slots.len() {
            let mut chain = self.t0.slots[idx].take();
            let m1 = self.t1.mask();
            while let Some(mut e) = chain {
                chain = e.next_slot_mut().take();
                let i = (xxh3_64_with_seed(e.key(), self.seed) & m1) as usize;
                *e.next_slot_mut() = self.t1.slots[i].take();
                self.t1.slots[i] = Some(e);
            }
            idx += 1;
        }
        if idx >= self.t0.slots.len() {
            self.t0 = std::mem::take(&mut self.t1);
            self.rehash_idx = None;
            return false;
        }
        self.rehash_idx = Some(idx);
        true
    }

    /// Calls `f` for the entries of the bucket(s) at `cursor` and returns the next cursor
    /// (0 when the scan is complete). See the module docs for the guarantee.
    pub fn scan(&self, cursor: u64, mut f: impl FnMut(&Entry)) -> u64 {
        if self.len == 0 || self.t0.is_empty() && self.t1.is_empty() {
            return 0;
        }
        let mut v = cursor;
        let emit = |slot: &Option<Entry>, f: &mut dyn FnMut(&Entry)| {
            let mut cur = slot;
            while let Some(e) = cur {
                f(e);
                cur = e.next_slot();
            }
        };
        if !self.is_rehashing() {
            let m0 = self.t0.mask();
            emit(&self.t0.slots[(v & m0) as usize], &mut f);
            v |= !m0;
            v = v.reverse_bits().wrapping_add(1).reverse_bits();
        } else {
            let (small, large) =
                if self.t0.slots.len() <= self.t1.slots.len() { (&self.t0, &self.t1) } else { (&self.t1, &self.t0) };
            let (m0, m1) = (small.mask(), large.mask());
            emit(&small.slots[(v & m0) as usize], &mut f);
            loop {
                emit(&large.slots[(v & m1) as usize], &mut f);
                v |= !m1;
                v = v.reverse_bits().wrapping_add(1).reverse_bits();
                if v & (m0 ^ m1) == 0 {
                    break;
                }
            }
        }
        v
    }

    /// Like [`Table::scan`], with mutable access to the entries (the snapshot walker marks
    /// them). The same cursor sequence and guarantee.
    pub fn scan_mut(&mut self, cursor: u64, mut f: impl FnMut(&mut Entry)) -> u64 {
        if self.len == 0 || self.t0.is_empty() && self.t1.is_empty() {
            return 0;
        }
        let mut v = cursor;
        fn emit(slot: &mut Option<Entry>, f: &mut dyn FnMut(&mut Entry)) {
            let mut cur = slot;
            while let Some(e) = cur {
                f(e);
                cur = e.next_slot_mut();
            }
        }
        if !self.is_rehashing() {
            let m0 = self.t0.mask();
            emit(&mut self.t0.slots[(v & m0) as usize], &mut f);
            v |= !m0;
            v = v.reverse_bits().wrapping_add(1).reverse_bits();
        } else {
            let (small, large) = if self.t0.slots.len() <= self.t1.slots.len() {
                (&mut self.t0, &mut self.t1)
            } else {
                (&mut self.t1, &mut self.t0)
            };
            let (m0, m1) = (small.mask(), large.mask());
            emit(&mut small.slots[(v & m0) as usize], &mut f);
            loop {
                emit(&mut large.slots[(v & m1) as usize], &mut f);
                v |= !m1;
                v = v.reverse_bits().wrapping_add(1).reverse_bits();
                if v & (m0 ^ m1) == 0 {
                    break;
                }
            }
        }
        v
    }

    /// Removes every entry, handing each to `f` (FLUSHALL during a snapshot keeps the ones not
    /// yet written out). Leaves an empty table.
    pub fn drain(&mut self, mut f: impl FnMut(Entry)) {
        let old = self.take_all();
        for mut b in [old.t0, old.t1] {
            for slot in b.slots.iter_mut() {
                let mut chain = slot.take();
                while let Some(mut e) = chain {
                    chain = e.next_slot_mut().take();
                    f(e);
                }
            }
        }
    }

    /// A uniformly chosen bucket's random entry (Redis's `dictGetRandomKey` approach). `rng`
    /// yields random u64s. Returns `None` only when empty.
    pub fn random_entry(&self, mut rng: impl FnMut() -> u64) -> Option<&Entry> {
        if self.len == 0 {
            return None;
        }
        let lo = self.rehash_idx.unwrap_or(0);
        let n0 = self.t0.slots.len();
        let n1 = self.t1.slots.len();
        let span = (n0 - lo) + n1;
        // Expected tries are at most 8 (the minimum fill); bound them and fall back to a scan.
        for _ in 0..4096 {
            let i = lo + (rng() % span as u64) as usize;
            let slot = if i < n0 { &self.t0.slots[i] } else { &self.t1.slots[i - n0] };
            if let Some(first) = slot {
                let mut chain_len = 0;
                let mut cur = slot;
                while let Some(e) = cur {
                    chain_len += 1;
                    cur = e.next_slot();
                }
                let mut pick = (rng() % chain_len as u64) as usize;
                let mut e = first;
                while pick > 0 {
                    e = e.next_slot().as_ref().expect("within chain length");
                    pick -= 1;
                }
                return Some(e);
            }
        }
        self.t0.slots.iter().chain(self.t1.slots.iter()).find_map(|s| s.as_ref())
    }
}

fn find_in_chain<'a>(mut cur: &'a mut Option<Entry>, key: &[u8]) -> Option<&'a mut Option<Entry>> {
    loop {
        let here = match cur {
            None => return None,
            Some(e) => e.key() == key,
        };
        if here {
            return Some(cur);
        }
        let Some(e) = cur else { return None };
        cur = e.next_slot_mut();
    }
}

/// A prefetch hint for the cache line at `p`. Only a hint: it never faults and reads nothing
/// the program sees, whatever `p` is.
#[inline(always)]
fn prefetch_read(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetch` has no architectural effect (it cannot fault and changes no state the
    // program can observe); `p` is the address of a live slot anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn key(i: u64) -> Vec<u8> {
        format!("key:{i}").into_bytes()
    }

    #[test]
    fn reserve_sizes_the_table_once() {
        let mut t = Table::new(7);
        t.reserve(100_000);
        let buckets = t.t0.slots.len();
        assert_eq!(buckets, 131_072);
        for i in 0..100_000 {
            t.insert(Entry::new(&key(i), b"v", None));
            assert!(!t.is_rehashing(), "insert {i} started a rehash");
        }
        assert_eq!(t.t0.slots.len(), buckets);
        // On a non-empty table it starts one rehash to the final size, and keeps every key.
        t.reserve(400_000);
        assert!(t.is_rehashing());
        for i in 100_000..500_000 {
            t.insert(Entry::new(&key(i), b"v", None));
        }
        while t.rehash_step() {}
        assert_eq!(t.t0.slots.len(), 524_288);
        assert_eq!(t.len(), 500_000);
        assert!((0..500_000).all(|i| t.get(&key(i)).is_some()));
    }

    #[test]
    fn matches_a_model_under_inserts_and_removes() {
        let mut t = Table::new(7);
        let mut model = HashMap::new();
        let mut x: u64 = 1;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = key(x % 5000);
            if x % 3 == 0 {
                assert_eq!(t.remove(&k).is_some(), model.remove(&k).is_some());
            } else {
                let v = x.to_le_bytes();
                t.insert(Entry::new(&k, &v, None));
                model.insert(k, v.to_vec());
            }
            assert_eq!(t.len(), model.len());
        }
        for (k, v) in &model {
            assert_eq!(t.get(k).map(|e| e.value().to_vec()).as_ref(), Some(v));
        }
    }

    #[test]
    fn scan_returns_every_stable_key_across_growth_and_shrink() {
        let mut t = Table::new(1);
        for i in 0..1000 {
            t.insert(Entry::new(&key(i), b"v", None));
        }
        let mut seen = HashSet::new();
        let mut cursor = 0;
        let mut step = 0u64;
        loop {
            cursor = t.scan(cursor, |e| {
                seen.insert(e.key().to_vec());
            });
            // Churn between calls: grow to force rehashes, then delete to force shrinking.
            step += 1;
            if step < 300 {
                for j in 0..40 {
                    t.insert(Entry::new(&key(100_000 + step * 40 + j), b"x", None));
                }
            } else {
                for j in 0..40 {
                    t.remove(&key(100_000 + (step - 300) * 40 + j));
                }
            }
            if cursor == 0 {
                break;
            }
        }
        for i in 0..1000 {
            assert!(seen.contains(&key(i)), "key {i} missed by scan");
        }
    }

    #[test]
    fn random_entry_finds_entries() {
        let mut t = Table::new(3);
        assert!(t.random_entry(|| 4).is_none());
        t.insert(Entry::new(b"only", b"v", None));
        let mut x = 9u64;
        let e = t.random_entry(|| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            x
        });
        assert_eq!(e.map(|e| e.key()), Some(&b"only"[..]));
    }
}
