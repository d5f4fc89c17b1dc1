//! One cache entry in one heap allocation.
//!
//! ```text
//! offset  size  field
//! 0       8     next        pointer to the next entry in the bucket chain (or null)
//! 8       4     key_len     bit 31: entry has an expiry time; bits 0..31: key length
//! 12      4     value_len   bit 31: snapshot mark (see `crate::snapshot`); bits 0..31: length
//! 16      8     expire_at   absolute Unix time in ms; present only when bit 31 is set
//! 16|24   k     key bytes
//! ..      v     value bytes
//! ```
//!
//! A 15-byte key with a 32-byte value takes 63 bytes, one 64-byte allocator size class, plus
//! an 8-byte bucket slot: this is where the small bytes/key figure comes from (see
//! `docs/PERFORMANCE.md`). Entries without a TTL pay nothing for expiry.
//!
//! Safety: an `Entry` uniquely owns its allocation and, through the `next` slot, the rest of
//! its chain. All unsafe code is in this file: pointer arithmetic over a layout computed in one
//! place (`layout`) and the reinterpretation of the `next` slot as `Option<Entry>`.

use std::alloc::{alloc, dealloc, Layout};
use std::ptr::NonNull;

const HEADER: usize = 16;
const TTL_FLAG: u32 = 1 << 31;
/// Bit 31 of `value_len`: the snapshot mark. Lengths are below 2^31, so the bit was free; using
/// it keeps the entry at 16 bytes of header (bytes/key is the figure a cache lives by).
const MARK_FLAG: u32 = 1 << 31;
/// Largest key or value an entry can hold (31-bit length; RESP limits are far below).
pub const MAX_LEN: usize = (1 << 31) - 1;

/// An owned entry. `repr(transparent)` over a non-null pointer, so `Option<Entry>` is one
/// pointer wide and the `next` slot inside the allocation *is* an `Option<Entry>`: a bucket
/// chain is an ordinary owned singly linked list.
#[repr(transparent)]
pub struct Entry {
    ptr: NonNull<u8>,
}

// Entries are plain bytes owned uniquely; moving one to another thread is sound.
unsafe impl Send for Entry {}

fn layout(key_len: usize, value_len: usize, has_ttl: bool) -> Layout {
    let size = HEADER + if has_ttl { 8 } else { 0 } + key_len + value_len;
    // Alignment 8 keeps `next` and `expire_at` aligned. Sizes are bounded by MAX_LEN * 2.
    Layout::from_size_align(size, 8).expect("entry layout")
}

impl Entry {
    /// Builds an entry. Panics only if lengths exceed [`MAX_LEN`], which the protocol limits
    /// rule out.
    pub fn new(key: &[u8], value: &[u8], expire_at_ms: Option<u64>) -> Entry {
        Self::with_value_len(key, value.len(), expire_at_ms, |dst| dst.copy_from_slice(value))
    }

    /// Builds an entry whose value is written in place by `fill` (avoids an intermediate
    /// buffer for APPEND/SETRANGE/INCR results).
    pub fn with_value_len(
        key: &[u8],
        value_len: usize,
        expire_at_ms: Option<u64>,
        fill: impl FnOnce(&mut [u8]),
    ) -> Entry {
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
            let kl = key.len() as u32 | if has_ttl { TTL_FLAG } else { 0 };
            (raw.add(8) as *mut u32).write(kl);
            (raw.add(12) as *mut u32).write(value_len as u32);
            let mut off = HEADER;
            if let Some(t) = expire_at_ms {
                (raw.add(16) as *mut u64).write(t);
                off += 8;
            }
            std::ptr::copy_nonoverlapping(key.as_ptr(), raw.add(off), key.len());
            let v = std::slice::from_raw_parts_mut(raw.add(off + key.len()), value_len);
            fill(v);
        }
        Entry { ptr }
    }

    fn key_len_raw(&self) -> u32 {
        // SAFETY: header is initialized for every live entry.
        unsafe { (self.ptr.as_ptr().add(8) as *const u32).read() }
    }

    pub fn has_ttl(&self) -> bool {
        self.key_len_raw() & TTL_FLAG != 0
    }

    fn key_offset(&self) -> usize {
        HEADER + if self.has_ttl() { 8 } else { 0 }
    }

    pub fn key_len(&self) -> usize {
        (self.key_len_raw() & !TTL_FLAG) as usize
    }

    fn value_len_raw(&self) -> u32 {
        // SAFETY: header is initialized.
        unsafe { (self.ptr.as_ptr().add(12) as *const u32).read() }
    }

    pub fn value_len(&self) -> usize {
        (self.value_len_raw() & !MARK_FLAG) as usize
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
        let off = self.key_offset() + self.key_len();
        // SAFETY: as for `key`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), self.value_len()) }
    }

    /// Absolute expiry time in Unix ms, if any.
    pub fn expire_at_ms(&self) -> Option<u64> {
        if self.has_ttl() {
            // SAFETY: present when the flag is set.
            Some(unsafe { (self.ptr.as_ptr().add(16) as *const u64).read() })
        } else {
            None
        }
    }

    /// Overwrites the expiry time in place. Only valid when the entry has a TTL slot.
    pub fn set_expire_in_place(&mut self, t: u64) {
        assert!(self.has_ttl());
        // SAFETY: slot present when the flag is set.
        unsafe { (self.ptr.as_ptr().add(16) as *mut u64).write(t) }
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        matches!(self.expire_at_ms(), Some(t) if t <= now_ms)
    }

    /// Bytes of the allocation (what the entry costs before allocator rounding).
    pub fn alloc_bytes(&self) -> usize {
        layout(self.key_len(), self.value_len(), self.has_ttl()).size()
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

impl Drop for Entry {
    fn drop(&mut self) {
        // Free the chain iteratively: a recursive drop could overflow the stack on a long chain.
        let mut next = self.next_slot_mut().take();
        while let Some(mut e) = next {
            next = e.next_slot_mut().take();
            drop(e);
        }
        let lay = layout(self.key_len(), self.value_len(), self.has_ttl());
        // SAFETY: allocated with the same layout in `with_value_len`.
        unsafe { dealloc(self.ptr.as_ptr(), lay) }
    }
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
