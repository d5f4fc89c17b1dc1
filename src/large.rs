//! Large values: page-mapped buffers that grow without copying and are shared without copying.
//!
//! A value of [`LARGE_VALUE_MIN_BYTES`] or more (up to the protocol's 512 MiB) never exists
//! twice in memory on its way through the server:
//!
//! | step | what holds the bytes | copies |
//! |---|---|---|
//! | read from the socket | a [`LargeBuf`] the parser fills as bytes arrive (`crate::resp::parse`) | the socket's 16 KiB chunks only |
//! | SET | the entry adopts the buffer as a [`Bytes`] (`crate::store::entry`) | none |
//! | the log | the pending flush keeps a reference until it is on disk (`crate::wal::format`) | bounded staging chunks |
//! | GET | the reply refers to the value (`crate::resp::encode`) | none |
//!
//! # Why a mapping and not the heap
//! The parser does not reserve a declared length up front (a client that declares 512 MiB and
//! sends 3 bytes costs nothing; see `tests/protocol.rs`), so the buffer must grow as bytes
//! arrive. A heap buffer grows by allocating a larger block and copying: for a moment it holds
//! the old and new block (up to 3x the data with doubling). An anonymous mapping grows with
//! `mremap(MREMAP_MAYMOVE)`, which moves page-table entries, not bytes: the resident memory is
//! the data received, rounded up to a page, at every moment. When the bulk is complete the
//! mapping is trimmed to the data ([`LargeBuf::freeze`]).
//!
//! The threshold keeps mappings rare: one per value of 1 MiB or more, far below the kernel's
//! `vm.max_map_count` (65,530 by default) for any cache of realistic size (65,530 such values
//! are at least 64 GiB). Smaller values are buffered and copied as before: their transient
//! second copy is below 1 MiB per connection.
//!
//! # Accounting
//! A large value holds [`held_bytes`]: its length rounded up to whole pages, plus the small
//! owner record `Bytes` allocates. That is what `used_memory` counts (see `crate::store`).

use bytes::Bytes;
use std::ptr::NonNull;

/// Values of this many bytes or more are read into their own mapping and kept out of line.
pub const LARGE_VALUE_MIN_BYTES: usize = 1 << 20;

/// Page size the accounting rounds to (the kernel's base page on every Linux target we run on).
pub const PAGE_BYTES: usize = 4096;

/// The smallest step a buffer's mapping grows by (fewer `mremap` calls for a large value).
const GROW_MIN_BYTES: usize = 256 * 1024;

/// Bytes `Bytes::from_owner` allocates beside a large value (its owner record).
const OWNER_RECORD_BYTES: usize = 64;

/// What a large value of `len` bytes holds in memory.
pub fn held_bytes(len: usize) -> usize {
    len.next_multiple_of(PAGE_BYTES) + OWNER_RECORD_BYTES
}

/// The buffer could not grow: the kernel refused the mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot map {bytes} bytes for a large value: {reason}")]
pub struct MapError {
    pub bytes: usize,
    pub reason: String,
}

/// A growable byte buffer in its own anonymous mapping. Filled once, then frozen into a
/// [`Bytes`]. Never maps more than the target, nor more than the bytes received plus the larger
/// of a quarter of them (at least 256 KiB) and the room last asked for by [`LargeBuf::spare`],
/// rounded up to a page. Untouched pages of the mapping cost address space, not memory.
pub struct LargeBuf {
    ptr: Option<NonNull<u8>>,
    len: usize,
    mapped: usize,
    /// The length the buffer is being filled to (the declared bulk length).
    target: usize,
}

// The buffer exclusively owns its mapping; moving it to another thread is sound.
unsafe impl Send for LargeBuf {}

impl LargeBuf {
    /// An empty buffer that will be filled to `target` bytes. Maps nothing yet.
    pub fn new(target: usize) -> LargeBuf {
        LargeBuf { ptr: None, len: 0, mapped: 0, target }
    }

    /// A frozen copy of `data` (a large value built elsewhere: recovery, APPEND, ...).
    pub fn copy_of(data: &[u8]) -> Result<Bytes, MapError> {
        let mut b = LargeBuf::new(data.len());
        b.extend_from_slice(data)?;
        Ok(b.freeze())
    }

    /// A buffer of `len` zero bytes to be written in place by `fill`, then frozen.
    pub fn filled_with(len: usize, fill: impl FnOnce(&mut [u8])) -> Result<Bytes, MapError> {
        let mut b = LargeBuf::new(len);
        b.reserve_to(len)?;
        b.len = len;
        // A fresh anonymous mapping reads as zeros.
        fill(b.as_mut_slice());
        Ok(b.freeze())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes still to come before the buffer holds its target length.
    pub fn missing(&self) -> usize {
        self.target - self.len
    }

    /// Appends `data` (at most [`missing`](Self::missing) bytes), growing the mapping in place
    /// or by moving page tables: the bytes already held are never copied.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> Result<(), MapError> {
        assert!(data.len() <= self.missing(), "large buffer overfilled");
        let need = self.len + data.len();
        if need > self.mapped {
            let step = (self.mapped / 4).max(GROW_MIN_BYTES);
            self.reserve_to(need.max(self.mapped + step).min(self.target))?;
        }
        if let Some(p) = self.ptr {
            // SAFETY: `need <= mapped`; the destination is inside our mapping and does not
            // overlap `data` (a caller's buffer).
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr().add(self.len), data.len()) };
        }
        self.len = need;
        Ok(())
    }

    /// Up to `max` bytes of room after the bytes held (never past the target), mapped now, for
    /// a read straight into the buffer; then [`filled`](Self::filled) says how many arrived.
    pub fn spare(&mut self, max: usize) -> Result<&mut [u8], MapError> {
        let n = max.min(self.missing());
        self.reserve_to(self.len + n)?;
        match self.ptr {
            // SAFETY: `len + n <= mapped` bytes of our mapping (anonymous memory reads as
            // zeros, so the bytes are initialized), uniquely borrowed.
            Some(p) => Ok(unsafe { std::slice::from_raw_parts_mut(p.as_ptr().add(self.len), n) }),
            None => Ok(&mut []),
        }
    }

    /// `n` bytes were written into [`spare`](Self::spare) room.
    pub fn filled(&mut self, n: usize) {
        assert!(n <= self.missing() && self.len + n <= self.mapped, "large buffer overfilled");
        self.len += n;
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self.ptr {
            // SAFETY: `len <= mapped` bytes of our mapping, uniquely borrowed.
            Some(p) => unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), self.len) },
            None => &mut [],
        }
    }

    /// Grows the mapping to hold at least `bytes` (rounded up to a page).
    fn reserve_to(&mut self, bytes: usize) -> Result<(), MapError> {
        let want = bytes.next_multiple_of(PAGE_BYTES);
        if want <= self.mapped {
            return Ok(());
        }
        let fail = |bytes| MapError { bytes, reason: std::io::Error::last_os_error().to_string() };
        let raw = match self.ptr {
            // SAFETY: a fresh private anonymous mapping; no file, no fixed address.
            None => unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    want,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            },
            // SAFETY: `p` and `mapped` describe our own mapping; MAYMOVE lets the kernel move
            // it (page tables only), after which only the returned address is used.
            Some(p) => unsafe { libc::mremap(p.as_ptr().cast(), self.mapped, want, libc::MREMAP_MAYMOVE) },
        };
        if raw == libc::MAP_FAILED {
            return Err(fail(want));
        }
        self.ptr = NonNull::new(raw.cast());
        self.mapped = want;
        Ok(())
    }

    /// Trims the mapping to the bytes held and hands them out as a `Bytes` that owns the
    /// mapping (unmapped when the last clone drops).
    pub fn freeze(mut self) -> Bytes {
        let keep = self.len.next_multiple_of(PAGE_BYTES);
        if let Some(p) = self.ptr {
            if keep < self.mapped {
                // Shrinking never moves a mapping. A failure only leaves the tail mapped (and
                // unmapped on drop with the whole length we remember).
                // SAFETY: our mapping, shrunk in place.
                let r = unsafe { libc::mremap(p.as_ptr().cast(), self.mapped, keep.max(PAGE_BYTES), 0) };
                if r != libc::MAP_FAILED {
                    self.mapped = keep.max(PAGE_BYTES);
                }
            }
        }
        Bytes::from_owner(Frozen(self))
    }
}

impl std::fmt::Debug for LargeBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargeBuf")
            .field("len", &self.len)
            .field("mapped", &self.mapped)
            .field("target", &self.target)
            .finish()
    }
}

impl Drop for LargeBuf {
    fn drop(&mut self) {
        if let Some(p) = self.ptr.take() {
            // SAFETY: our own mapping of `mapped` bytes, unmapped once.
            unsafe { libc::munmap(p.as_ptr().cast(), self.mapped) };
        }
    }
}

/// A filled buffer, as the owner behind a `Bytes`.
struct Frozen(LargeBuf);

impl AsRef<[u8]> for Frozen {
    fn as_ref(&self) -> &[u8] {
        match self.0.ptr {
            // SAFETY: `len` initialized bytes of the mapping, never written again once frozen.
            Some(p) => unsafe { std::slice::from_raw_parts(p.as_ptr(), self.0.len) },
            None => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_pages(b: &Bytes) -> usize {
        let len = b.len().next_multiple_of(PAGE_BYTES);
        let mut vec = vec![0u8; len / PAGE_BYTES];
        // SAFETY: mincore on a range of our own mapping (page aligned: mappings start on a page).
        let r = unsafe { libc::mincore(b.as_ptr() as *mut _, len, vec.as_mut_ptr()) };
        assert_eq!(r, 0);
        vec.iter().filter(|&&v| v & 1 != 0).count()
    }

    #[test]
    fn fills_in_pieces_and_keeps_every_byte() {
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i * 7 % 251) as u8).collect();
        let mut b = LargeBuf::new(data.len());
        for piece in data.chunks(16 * 1024 + 3) {
            b.extend_from_slice(piece).unwrap();
        }
        assert_eq!(b.missing(), 0);
        let frozen = b.freeze();
        assert_eq!(&frozen[..], &data[..]);
        assert_eq!(frozen.as_ptr() as usize % PAGE_BYTES, 0);
        let clone = frozen.clone();
        drop(frozen);
        assert_eq!(&clone[..], &data[..]);
    }

    #[test]
    fn maps_only_what_arrived() {
        let mut b = LargeBuf::new(400 << 20);
        b.extend_from_slice(b"abc").unwrap();
        assert_eq!(b.mapped, GROW_MIN_BYTES);
        b.extend_from_slice(&vec![1u8; 1 << 20]).unwrap();
        assert!(b.mapped <= (1 << 20) + (1 << 20) / 4 + PAGE_BYTES, "mapped {}", b.mapped);
    }

    #[test]
    fn frozen_buffer_is_trimmed_to_its_pages() {
        let mut b = LargeBuf::new(5 * PAGE_BYTES + 1);
        b.extend_from_slice(&vec![9u8; 5 * PAGE_BYTES + 1]).unwrap();
        let f = b.freeze();
        assert_eq!(resident_pages(&f), 6);
        assert_eq!(held_bytes(f.len()), 6 * PAGE_BYTES + OWNER_RECORD_BYTES);
    }

    #[test]
    fn filled_with_writes_in_place() {
        let f = LargeBuf::filled_with(2 << 20, |d| d[(1 << 20)..].fill(5)).unwrap();
        assert_eq!(f.len(), 2 << 20);
        assert!(f[..1 << 20].iter().all(|&x| x == 0));
        assert!(f[1 << 20..].iter().all(|&x| x == 5));
    }

    #[test]
    #[should_panic(expected = "overfilled")]
    fn overfilling_is_a_bug() {
        let mut b = LargeBuf::new(2);
        let _ = b.extend_from_slice(b"abc");
    }
}
