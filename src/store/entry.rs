//! One cache entry in one heap allocation (two for a large value).
//!
//! ```text
//! offset  size  field
//! 0       8     next        pointer to the next entry in the bucket chain (or null)
//! 8       2     key_len     key length; 0xFFFF: a long key, whose length is in `long_len`
//! 10      2     meta        eviction metadata (`crate::store::evict`): recency, frequency
//! 12      4     value_len   bit 31: snapshot mark (see `crate::snapshot`); bit 30: entry has an
//!                           expiry time; bits 0..30: length, or 0x3FFF_FFFF: out-of-line value
//! 16      8     long_len    key length; present only for keys of 0xFFFF bytes or more
//! ..      8     expire_at   absolute Unix time in ms; present only when bit 30 is set
//! ..      32    value       a `Bytes` holding the value; present only for out-of-line values
//! ..      k     key bytes
//! ..      v     value bytes (inline values only)
//! ```
//!
//! A 15-byte key with a 32-byte value takes 63 bytes, one 64-byte allocator size class, plus
//! an 8-byte bucket slot: this is where the small bytes/key figure comes from (see
//! `docs/PERFORMANCE.md`). Entries without a TTL pay nothing for expiry.
//!
//! The 16 bits of `meta` come from the key length: keys are almost always short, so 16 bits
//! hold their length and the rare key of 64 KiB or more pays 8 bytes for a `long_len` slot.
//! Eviction metadata thus costs no byte per entry (see `docs/EVICTION.md`).
//!
//! # Large values live out of line
//! A value of [`crate::large::LARGE_VALUE_MIN_BYTES`] (1 MiB) or more is not copied into the
//! entry: the entry holds a [`Bytes`] over the value's own page-mapped buffer
//! ([`crate::large`]). SET adopts the buffer the parser read the value into
//! ([`Entry::from_bytes`]), the log and replies share it, and a snapshot's preserved old
//! version shares it ([`Entry::share`]). The price, a 32-byte slot per large value, is nothing
//! beside it.
//!
//! Safety: an `Entry` uniquely owns its allocation and, through the `next` slot, the rest of
//! its chain. All unsafe code *on an entry's bytes* is in this file: pointer arithmetic over a
//! layout computed in one place (`layout`) and the reinterpretation of the `next` slot as
//! `Option<Entry>`. (The store dereferences entry pointers it just got from the table and
//! writes eviction metadata through `meta_ptr`; the table issues prefetch hints. Each such
//! block says why it is sound.)

use crate::large::{LargeBuf, LARGE_VALUE_MIN_BYTES};
use bytes::Bytes;
use std::alloc::{alloc, dealloc, Layout};
use std::ptr::NonNull;

const HEADER: usize = 16;
/// Bit 30 of `value_len`: the entry has an expiry slot.
const TTL_FLAG: u32 = 1 << 30;
/// Bit 31 of `value_len`: the snapshot mark. Lengths are below 2^30, so the bit was free; using
/// it keeps the entry at 16 bytes of header (bytes/key is the figure a cache lives by).
const MARK_FLAG: u32 = 1 << 31;
const LEN_MASK: u32 = TTL_FLAG - 1;
/// `key_len` of a long key: the length is in the `long_len` slot.
const LONG_KEY: u16 = u16::MAX;
/// Largest key or value an entry can hold (30-bit length; the protocol's 512 MiB is below).
pub const MAX_LEN: usize = (1 << 30) - 1;
/// `value_len` bits of an entry whose value is out of line (in the `value` slot).
const OUT_OF_LINE: u32 = LEN_MASK;
/// Bytes of the `value` slot of an out-of-line value.
const VALUE_SLOT: usize = std::mem::size_of::<Bytes>();
const _: () = assert!(VALUE_SLOT % 8 == 0 && std::mem::align_of::<Bytes>() <= 8);

/// An owned entry. `repr(transparent)` over a non-null pointer, so `Option<Entry>` is one
/// pointer wide and the `next` slot inside the allocation *is* an `Option<Entry>`: a bucket
/// chain is an ordinary owned singly linked list.
#[repr(transparent)]
pub struct Entry {
    ptr: NonNull<u8>,
}

// Entries are plain bytes owned uniquely; moving one to another thread is sound.
unsafe impl Send for Entry {}

/// Whether a value of `value_len` bytes is kept out of line.
fn out_of_line(value_len: usize) -> bool {
    value_len >= LARGE_VALUE_MIN_BYTES
}

/// Offset of the `value` slot (out-of-line values): after the header, `long_len` and expiry.
fn value_slot_offset(key_len: usize, has_ttl: bool) -> usize {
    HEADER + if key_len >= LONG_KEY as usize { 8 } else { 0 } + if has_ttl { 8 } else { 0 }
}

/// Bytes before the key: header, `long_len` slot, expiry slot, `value` slot.
fn key_offset(key_len: usize, value_len: usize, has_ttl: bool) -> usize {
    value_slot_offset(key_len, has_ttl) + if out_of_line(value_len) { VALUE_SLOT } else { 0 }
}

/// The entry's own allocation (an out-of-line value's bytes are not in it).
fn layout(key_len: usize, value_len: usize, has_ttl: bool) -> Layout {
    let inline_value = if out_of_line(value_len) { 0 } else { value_len };
    let size = key_offset(key_len, value_len, has_ttl) + key_len + inline_value;
    // Alignment 8 keeps `next`, `expire_at` and `value` aligned. Sizes are bounded by MAX_LEN * 2.
    Layout::from_size_align(size, 8).expect("entry layout")
}

impl Entry {
    /// Builds an entry. Panics only if lengths exceed [`MAX_LEN`], which the protocol limits
    /// rule out.
    pub fn new(key: &[u8], value: &[u8], expire_at_ms: Option<u64>) -> Entry {
        if out_of_line(value.len()) {
            // A heap copy only if the kernel refuses a mapping (then the heap would fail too).
            let v = LargeBuf::copy_of(value).unwrap_or_else(|_| Bytes::copy_from_slice(value));
            return Self::adopt(key, v, expire_at_ms);
        }
        Self::with_value_len(key, value.len(), expire_at_ms, |dst| dst.copy_from_slice(value))
    }

    /// An entry over an out-of-line value (`value.len() >= OUT_OF_LINE_MIN_BYTES`).
    fn adopt(key: &[u8], value: Bytes, expire_at_ms: Option<u64>) -> Entry {
        Self::build::<fn(&mut [u8])>(key, value.len(), expire_at_ms, Fill::Adopt(value))
    }

    /// Builds an entry that takes `value` over. A large value is adopted as it is, without a
    /// copy: the caller guarantees that it covers its own buffer and nothing more (the request
    /// parser's large bulks do, see [`crate::large`]), as the accounting counts only its
    /// length. A smaller value is copied into the entry.
    pub fn from_bytes(key: &[u8], value: Bytes, expire_at_ms: Option<u64>) -> Entry {
        if !out_of_line(value.len()) {
            return Self::new(key, &value, expire_at_ms);
        }
        Self::adopt(key, value, expire_at_ms)
    }

    /// A copy of this entry (key, value, expiry) that shares an out-of-line value instead of
    /// copying it: the old version a snapshot keeps costs no second copy of a large value.
    pub fn share(&self) -> Entry {
        match self.shared_value() {
            Some(v) => Self::adopt(self.key(), v.clone(), self.expire_at_ms()),
            None => Self::new(self.key(), self.value(), self.expire_at_ms()),
        }
    }

    /// This entry with another expiry: the value is shared when out of line.
    pub fn with_expiry(&self, expire_at_ms: Option<u64>) -> Entry {
        match self.shared_value() {
            Some(v) => Self::adopt(self.key(), v.clone(), expire_at_ms),
            None => Self::new(self.key(), self.value(), expire_at_ms),
        }
    }

    /// Builds an entry whose value is written in place by `fill` (avoids an intermediate
    /// buffer for APPEND/SETRANGE/INCR results).
    pub fn with_value_len(
        key: &[u8],
        value_len: usize,
        expire_at_ms: Option<u64>,
        fill: impl FnOnce(&mut [u8]),
    ) -> Entry {
        if out_of_line(value_len) {
            assert!(value_len <= MAX_LEN, "entry too large");
            let mut fill = Some(fill);
            let mut run = |d: &mut [u8]| {
                if let Some(f) = fill.take() {
                    f(d);
                }
            };
            // `filled_with` fails before it fills, so `fill` is still there for the heap copy.
            let v = LargeBuf::filled_with(value_len, &mut run).unwrap_or_else(|_| {
                let mut v = vec![0u8; value_len];
                run(&mut v);
                Bytes::from(v)
            });
            return Self::adopt(key, v, expire_at_ms);
        }
        Self::build(key, value_len, expire_at_ms, Fill::Inline(fill))
    }

    fn build<F: FnOnce(&mut [u8])>(key: &[u8], value_len: usize, expire_at_ms: Option<u64>, fill: Fill<F>) -> Entry {
        assert!(key.len() <= MAX_LEN && value_len <= MAX_LEN, "entry too large");
        let has_ttl = expire_at_ms.is_some();
        let lay = layout(key.len(), value_len, has_ttl);
        // SAFETY: the layout has non-zero size (HEADER > 0).
        let raw = unsafe { alloc(lay) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(lay);
        };
        // SAFETY: `raw` points to `lay.size()` writable bytes, 8-aligned.
        unsafe {
            (raw as *mut Option<Entry>).write(None);
            let long = key.len() >= LONG_KEY as usize;
            (raw.add(8) as *mut u16).write(if long { LONG_KEY } else { key.len() as u16 });
            (raw.add(10) as *mut u16).write(0);
            let len_bits = if out_of_line(value_len) { OUT_OF_LINE } else { value_len as u32 };
            (raw.add(12) as *mut u32).write(len_bits | if has_ttl { TTL_FLAG } else { 0 });
            let mut off = HEADER;
            if long {
                (raw.add(off) as *mut u64).write(key.len() as u64);
                off += 8;
            }
            if let Some(t) = expire_at_ms {
                (raw.add(off) as *mut u64).write(t);
                off += 8;
            }
            match fill {
                Fill::Adopt(bytes) => {
                    debug_assert!(out_of_line(value_len) && bytes.len() == value_len);
                    (raw.add(off) as *mut Bytes).write(bytes);
                    off += VALUE_SLOT;
                    std::ptr::copy_nonoverlapping(key.as_ptr(), raw.add(off), key.len());
                }
                Fill::Inline(fill) => {
                    std::ptr::copy_nonoverlapping(key.as_ptr(), raw.add(off), key.len());
                    let v = std::slice::from_raw_parts_mut(raw.add(off + key.len()), value_len);
                    fill(v);
                }
            }
        }
        Entry { ptr }
    }

    /// The value as `Bytes`: a large value shared (no copy), a small one copied.
    pub fn value_bytes(&self) -> Bytes {
        match self.shared_value() {
            Some(v) => v.clone(),
            None => Bytes::copy_from_slice(self.value()),
        }
    }

    /// The out-of-line value (a value of [`LARGE_VALUE_MIN_BYTES`] or more), to share rather
    /// than copy; `None` for a value stored inline.
    pub fn shared_value(&self) -> Option<&Bytes> {
        if self.value_len_raw() & LEN_MASK != OUT_OF_LINE {
            return None;
        }
        let off = value_slot_offset(self.key_len(), self.has_ttl());
        // SAFETY: the slot holds an initialized `Bytes` for out-of-line values, 8-aligned, and
        // lives as long as `self`.
        Some(unsafe { &*(self.ptr.as_ptr().add(off) as *const Bytes) })
    }

    fn key_len_raw(&self) -> u16 {
        // SAFETY: header is initialized for every live entry.
        unsafe { (self.ptr.as_ptr().add(8) as *const u16).read() }
    }

    pub fn has_ttl(&self) -> bool {
        self.value_len_raw() & TTL_FLAG != 0
    }

    fn key_offset(&self) -> usize {
        key_offset(self.key_len(), self.value_len(), self.has_ttl())
    }

    /// Offset of the expiry slot (when present).
    fn expire_offset(&self) -> usize {
        HEADER + if self.key_len_raw() == LONG_KEY { 8 } else { 0 }
    }

    pub fn key_len(&self) -> usize {
        match self.key_len_raw() {
            // SAFETY: the `long_len` slot is present for long keys.
            LONG_KEY => unsafe { (self.ptr.as_ptr().add(HEADER) as *const u64).read() as usize },
            n => n as usize,
        }
    }

    /// The eviction metadata (meaning owned by `crate::store::evict`).
    pub fn meta(&self) -> u16 {
        // SAFETY: header is initialized.
        unsafe { (self.ptr.as_ptr().add(10) as *const u16).read() }
    }

    pub fn set_meta(&mut self, meta: u16) {
        // SAFETY: header is initialized; `&mut self` gives unique access.
        unsafe { (self.ptr.as_ptr().add(10) as *mut u16).write(meta) }
    }

    /// Sets the metadata through a shared reference: the store updates recency on reads, which
    /// hand out `&Entry`. Sound because an entry lives in one shard's single-threaded store and
    /// no reference into the metadata bytes is ever handed out (they are only read by value).
    pub(crate) fn set_meta_shared(&self, meta: u16) {
        // SAFETY: see above; the write is to two bytes no `&` reference points into.
        unsafe { (self.ptr.as_ptr().add(10) as *mut u16).write(meta) }
    }

    fn value_len_raw(&self) -> u32 {
        // SAFETY: header is initialized.
        unsafe { (self.ptr.as_ptr().add(12) as *const u32).read() }
    }

    pub fn value_len(&self) -> usize {
        match self.shared_value() {
            Some(v) => v.len(),
            None => (self.value_len_raw() & LEN_MASK) as usize,
        }
    }

    /// Where the metadata lives, for the store to set it after the entry moved into the table
    /// (entries never move while they live; the pointer is valid until the entry is dropped).
    pub(crate) fn meta_ptr(&self) -> *mut u16 {
        // SAFETY: offset 10 is inside the header.
        unsafe { self.ptr.as_ptr().add(10) as *mut u16 }
    }

    /// The snapshot mark bit. Its meaning (written out or not by the running snapshot) is
    /// relative to the store's current epoch; see `Store::begin_snapshot`.
    pub fn mark(&self) -> bool {
        self.value_len_raw() & MARK_FLAG != 0
    }

    /// Sets the snapshot mark bit.
    pub fn set_mark(&mut self, mark: bool) {
        let v = (self.value_len_raw() & !MARK_FLAG) | if mark { MARK_FLAG } else { 0 };
        // SAFETY: header is initialized; `&mut self` gives unique access.
        unsafe { (self.ptr.as_ptr().add(12) as *mut u32).write(v) }
    }

    pub fn key(&self) -> &[u8] {
        // SAFETY: the key bytes were written at construction and live as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(self.key_offset()), self.key_len()) }
    }

    pub fn value(&self) -> &[u8] {
        if let Some(v) = self.shared_value() {
            return v;
        }
        let off = self.key_offset() + self.key_len();
        // SAFETY: as for `key`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), self.value_len()) }
    }

    /// Absolute expiry time in Unix ms, if any.
    pub fn expire_at_ms(&self) -> Option<u64> {
        if self.has_ttl() {
            // SAFETY: present when the flag is set.
            Some(unsafe { (self.ptr.as_ptr().add(self.expire_offset()) as *const u64).read() })
        } else {
            None
        }
    }

    /// Overwrites the expiry time in place. Only valid when the entry has a TTL slot.
    pub fn set_expire_in_place(&mut self, t: u64) {
        assert!(self.has_ttl());
        // SAFETY: slot present when the flag is set.
        unsafe { (self.ptr.as_ptr().add(self.expire_offset()) as *mut u64).write(t) }
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        matches!(self.expire_at_ms(), Some(t) if t <= now_ms)
    }

    /// Bytes of the allocations (what the entry asks the allocator for), an out-of-line
    /// value's included.
    pub fn alloc_bytes(&self) -> usize {
        let own = layout(self.key_len(), self.value_len(), self.has_ttl()).size();
        own + self.shared_value().map_or(0, Bytes::len)
    }

    /// Bytes the allocator really sets aside for the entry (its size classes; see
    /// [`allocated_bytes`]).
    pub fn held_bytes(&self) -> usize {
        Self::held_bytes_for(self.key_len(), self.value_len(), self.has_ttl())
    }

    /// What an entry of these lengths will hold, before building it (eviction makes room first).
    pub fn held_bytes_for(key_len: usize, value_len: usize, has_ttl: bool) -> usize {
        let own = allocated_bytes(layout(key_len, value_len, has_ttl).size());
        own + if out_of_line(value_len) { crate::large::held_bytes(value_len) } else { 0 }
    }

    /// The chain link (owned).
    pub(crate) fn next_slot(&self) -> &Option<Entry> {
        // SAFETY: offset 0 holds a pointer that is null or owned by this entry; `Option<Entry>`
        // has the layout of a nullable pointer (repr(transparent) over NonNull).
        unsafe { &*(self.ptr.as_ptr() as *const Option<Entry>) }
    }

    pub(crate) fn next_slot_mut(&mut self) -> &mut Option<Entry> {
        // SAFETY: as for `next_slot`; `&mut self` gives unique access.
        unsafe { &mut *(self.ptr.as_ptr() as *mut Option<Entry>) }
    }
}

/// The bytes mimalloc (the server's allocator) really reserves for a request of `size` bytes:
/// its size classes are 8-byte steps up to 64 bytes, then four classes per power of two (80,
/// 96, 112, 128, 160, ...) up to 16 MiB (`_mi_bin`); larger blocks are whole 64 KiB chunks of
/// their own segment. Counting the class instead of the request is what keeps `used_memory`
/// from drifting below what the process holds (a 65-byte entry holds 80).
pub fn allocated_bytes(size: usize) -> usize {
    const LARGE_MAX: usize = 16 << 20;
    if size <= 64 {
        return (size.max(8) + 7) & !7;
    }
    if size > LARGE_MAX {
        return (size + 0xFFFF) & !0xFFFF;
    }
    let words = size.div_ceil(8);
    let w = words - 1;
    let b = usize::BITS - 1 - w.leading_zeros();
    let step = 1usize << (b - 2);
    (((w >> (b - 2)) + 1) * step) * 8
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Free the chain iteratively: a recursive drop could overflow the stack on a long chain.
        let mut next = self.next_slot_mut().take();
        while let Some(mut e) = next {
            next = e.next_slot_mut().take();
            drop(e);
        }
        let lay = layout(self.key_len(), self.value_len(), self.has_ttl());
        if self.shared_value().is_some() {
            let off = value_slot_offset(self.key_len(), self.has_ttl());
            // SAFETY: the slot holds an initialized `Bytes`, dropped exactly once, here.
            unsafe { std::ptr::drop_in_place(self.ptr.as_ptr().add(off) as *mut Bytes) }
        }
        // SAFETY: allocated with the same layout in `build`.
        unsafe { dealloc(self.ptr.as_ptr(), lay) }
    }
}

/// How `build` fills in the value.
enum Fill<F> {
    /// Write the inline value bytes in place.
    Inline(F),
    /// Keep these bytes out of line.
    Adopt(Bytes),
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("value_len", &self.value_len())
            .field("expire_at_ms", &self.expire_at_ms())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_keys_with_and_without_ttl_round_trip() {
        for key_len in [0usize, 1, 15, 0xFFFE, 0xFFFF, 70_000] {
            for ttl in [None, Some(123_456_789u64)] {
                let key: Vec<u8> = (0..key_len).map(|i| i as u8).collect();
                let mut e = Entry::new(&key, b"value", ttl);
                e.set_meta(0xBEEF);
                e.set_mark(true);
                assert_eq!(e.key(), &key[..]);
                assert_eq!(e.value(), b"value");
                assert_eq!(e.expire_at_ms(), ttl);
                assert_eq!(e.meta(), 0xBEEF);
                assert!(e.mark());
                let long = if key_len >= 0xFFFF { 8 } else { 0 };
                assert_eq!(e.alloc_bytes(), 16 + long + if ttl.is_some() { 8 } else { 0 } + key_len + 5);
                if ttl.is_some() {
                    e.set_expire_in_place(7);
                    assert_eq!(e.expire_at_ms(), Some(7));
                    assert_eq!(e.key(), &key[..]);
                }
            }
        }
    }

    #[test]
    fn the_headline_entry_stays_in_the_64_byte_class() {
        let e = Entry::new(&[b'k'; 15], &[b'v'; 32], None);
        assert_eq!(e.alloc_bytes(), 63);
        assert_eq!(e.held_bytes(), 64);
    }

    #[test]
    fn allocated_bytes_follow_mimalloc_size_classes() {
        let cases =
            [(1, 8), (63, 64), (64, 64), (65, 80), (81, 96), (128, 128), (129, 160), (1000, 1024), (1025, 1280)];
        for (size, class) in cases {
            assert_eq!(allocated_bytes(size), class, "size {size}");
        }
        assert_eq!(allocated_bytes((16 << 20) + 1), (16 << 20) + 65536);
    }

    #[test]
    fn large_values_live_out_of_line_and_are_shared_not_copied() {
        let big: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 253) as u8).collect();
        for (key_len, ttl) in [(3usize, None), (70_000, Some(99u64))] {
            let key = vec![b'k'; key_len];
            let mut e = Entry::new(&key, &big, ttl);
            e.set_mark(true);
            e.set_meta(0x1234);
            assert_eq!(
                (e.key(), e.value(), e.expire_at_ms(), e.mark(), e.meta()),
                (&key[..], &big[..], ttl, true, 0x1234)
            );
            let shared = e.shared_value().expect("out of line").clone();
            assert_eq!(shared.as_ptr(), e.value().as_ptr());
            let copy = e.share();
            assert_eq!(copy.value().as_ptr(), e.value().as_ptr(), "share() must not copy the value");
            let moved = e.with_expiry(Some(7));
            assert_eq!((moved.value().as_ptr(), moved.expire_at_ms()), (e.value().as_ptr(), Some(7)));
            assert_eq!(e.held_bytes(), Entry::held_bytes_for(key_len, big.len(), ttl.is_some()));
            let own = allocated_bytes(16 + 8 + 8 + 32 + key_len);
            assert!(e.held_bytes() >= big.len() + key_len && e.held_bytes() <= big.len() + 4096 + 64 + own);
            let adopted = Entry::from_bytes(&key, shared.clone(), None);
            assert_eq!(adopted.value().as_ptr(), shared.as_ptr(), "from_bytes must adopt a large value");
        }
        let small = Entry::from_bytes(b"k", bytes::Bytes::from_static(b"small"), None);
        assert!(small.shared_value().is_none());
        let built = Entry::with_value_len(b"k", 2 << 20, None, |d| d.fill(3));
        assert!(built.shared_value().is_some() && built.value().iter().all(|&b| b == 3));
    }
}
