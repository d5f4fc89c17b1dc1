//! Read-only memory maps of whole files, for recovery: WAL segments (`replay`) and snapshots
//! (`snapshot::load`).
//!
//! A mapped file's pages are page cache, not heap: the kernel reads them in as they are
//! touched and can drop them again. They still count in the process's resident set while
//! mapped, so a pass over a huge file releases what it has finished with
//! ([`Mapped::release`], `MADV_DONTNEED`): the pages leave this process (they stay in the page
//! cache) and a later touch maps them in again with the same contents. Nothing is ever written
//! through a map.

use std::path::Path;

/// A read-only memory map of a whole file.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    /// Maps all of `path`, read-only, with sequential read-ahead.
    pub fn open(path: &Path) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path)?;
        let len = usize::try_from(f.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Ok(Mapped { ptr: std::ptr::null_mut(), len: 0 });
        }
        // SAFETY: mapping a file we opened read-only; the mapping is private and outlives the fd
        // legitimately (mmap keeps its own reference). The data directory is locked, so no other
        // ringcache truncates the file while it is mapped.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, f.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: advice on the mapping just created.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        Ok(Mapped { ptr, len })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    /// Drops the pages of `start..end` (file offsets; widened to whole pages, clipped to the
    /// file) from this process's memory. Their contents are unchanged: a later read maps them
    /// in again from the page cache or the file, so slices of [`bytes`](Self::bytes) stay valid.
    pub fn release(&self, start: usize, end: usize) {
        let page = page_size();
        let start = start - start % page;
        let end = end.min(self.len).next_multiple_of(page);
        if self.len == 0 || start >= end {
            return;
        }
        // SAFETY: `start..end` lies within the mapping (a page-aligned range starting at a page
        // boundary of it; the end is rounded up within the last page of the mapping). On a
        // read-only private file mapping MADV_DONTNEED only unmaps pages: a later access faults
        // the same file contents back in, so no live slice observes a change.
        unsafe { libc::madvise(self.ptr.cast::<u8>().add(start).cast(), end - start, libc::MADV_DONTNEED) };
    }

    /// The offset in the file just after `slice`, if `slice` lies within [`bytes`](Self::bytes).
    pub fn end_offset(&self, slice: &[u8]) -> Option<usize> {
        let base = self.ptr as usize;
        let end = (slice.as_ptr() as usize).checked_add(slice.len())?;
        (end >= base && end <= base + self.len && slice.as_ptr() as usize >= base).then(|| end - base)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping what `open` mapped.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}
