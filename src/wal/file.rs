//! The file layer under the log: direct I/O when the filesystem allows it, buffered I/O
//! otherwise. Tests add two more: a real file with injected failures ([`FaultPlan`]) and a
//! file on the simulated disk of the power-loss tests ([`super::sim`]).
//!
//! # Direct I/O
//! Segments are opened with `O_DIRECT | O_DSYNC`: every write goes from an aligned buffer
//! straight to the device and returns only once the data (and the metadata needed to read it
//! back) is durable. One write per chunk is therefore also that chunk's sync: there is no
//! separate `fdatasync`.
//!
//! # Chunks and the staging buffer
//! A flush is written through one aligned staging buffer of at most [`WRITE_CHUNK_BYTES`]
//! (8 MiB), in chunks of that size, in order ([`LogFile::write_flush_durable`]). The log thus
//! never holds a second copy of a whole flush: a 512 MiB value costs 8 MiB of staging, not
//! 512 MiB. Almost every flush fits in one chunk and is one write, as before. A flush of
//! several chunks is durable only when its last chunk is; a crash between chunks leaves a
//! flush whose first chunks are on disk and the rest is not, which the scan cannot tell from a
//! torn single write and drops the same way (it was never acknowledged).
//!
//! # Why the write blocks a helper thread instead of going through io_uring
//! The write is a plain `pwrite` on glommio's blocking thread of this shard
//! (`spawn_blocking`); the shard's executor sleeps until it is done. The first version wrote
//! through glommio's `DmaFile`. glommio put those writes on its polled ring, because the
//! device (virtio-blk) accepted its polled-I/O probe, and an executor with polled I/O in flight
//! never sleeps: it spun on its CPU for the whole write. On that same CPU the kernel finishes
//! an `O_DSYNC` write in a work item that then waited behind the spinning executor, often for a
//! whole 4 ms scheduler tick. In `sync` mode at 1 connection a SET took 1.8 ms at the median
//! against 0.35 ms for Redis with `appendfsync always`, and the shard used 80% of a CPU
//! (docs/perf/durability-analysis.txt). A blocking write costs two thread hand-offs (some
//! microseconds) and leaves the CPU idle while the device works.
//!
//! # Fallback
//! tmpfs and some FUSE filesystems reject `O_DIRECT` (EINVAL). The log then uses a buffered
//! file and `fdatasync` after each write, and says so once in the log.
//!
//! # Directories
//! Creating, renaming or removing a file changes its directory; [`sync_dir`] makes that change
//! durable. On a running shard it goes through [`sync_dir_async`], on the blocking thread;
//! startup and recovery call it directly.

use super::format::Sealed;
use glommio::io::{BufferedFile, OpenOptions};
use std::alloc::Layout;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

/// Alignment of direct-I/O buffers, offsets and lengths.
const DIRECT_ALIGN: usize = 4096;

/// Largest single write of the log, and the size of the staging buffer a flush is copied
/// through (see the module docs). A multiple of the block size.
pub const WRITE_CHUNK_BYTES: usize = 8 << 20;
const _: () = assert!(WRITE_CHUNK_BYTES % DIRECT_ALIGN == 0 && WRITE_CHUNK_BYTES > 0);

/// How a segment file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// `O_DIRECT | O_DSYNC`: each write is durable when it returns.
    Direct,
    /// Page cache plus `fdatasync` after each write (filesystems without O_DIRECT).
    Buffered,
}

/// An open segment file.
pub enum LogFile {
    /// Opened with `O_DIRECT | O_DSYNC`; written on the shard's blocking thread.
    Direct(Arc<std::fs::File>),
    Buffered(BufferedFile),
    /// A real file whose durable writes fail on command (tests only; see [`FaultPlan`]).
    Faulty(Box<LogFile>, std::rc::Rc<FaultPlan>),
    /// A file on the simulated disk of the power-loss tests ([`super::sim`]).
    Sim(std::rc::Rc<super::sim::SimDisk>, super::sim::SimFile),
}

/// Injected failures, for tests of the failure paths through the real binary. Read once from
/// the environment variable `RINGCACHE_TEST_FAULTS` (never set it in production):
/// - `eio_at=N`: the N-th durable write (a write chunk: a flush larger than
///   [`WRITE_CHUNK_BYTES`] makes several; counting from 1, per shard) and every later one fail
///   with EIO, as a failed fsync would (the log must then never acknowledge again);
/// - `enospc_while=PATH`: durable writes fail with ENOSPC while the file PATH exists;
/// - `snap_enospc_while=PATH`: snapshot file writes fail with ENOSPC while PATH exists;
/// - `op_eio_once=K` / `op_eio_from=K`: the K-th I/O operation on log segments (preallocation
///   or durable write, counting from 1, per shard) fails with EIO, once / and every later one.
#[derive(Debug, Default)]
pub struct FaultPlan {
    eio_at: Option<u64>,
    enospc_while: Option<PathBuf>,
    snap_enospc_while: Option<PathBuf>,
    writes: std::cell::Cell<u64>,
    /// `(K, every later one too)`.
    op_eio: Option<(u64, bool)>,
    ops: std::cell::Cell<u64>,
}

impl FaultPlan {
    /// The plan from `RINGCACHE_TEST_FAULTS`, if set and valid.
    pub fn from_env() -> Option<FaultPlan> {
        let spec = std::env::var("RINGCACHE_TEST_FAULTS").ok()?;
        let mut plan = FaultPlan::default();
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("eio_at", n)) => plan.eio_at = n.parse().ok(),
                Some(("enospc_while", p)) => plan.enospc_while = Some(PathBuf::from(p)),
                Some(("snap_enospc_while", p)) => plan.snap_enospc_while = Some(PathBuf::from(p)),
                Some(("op_eio_once", n)) => plan.op_eio = n.parse().ok().map(|k| (k, false)),
                Some(("op_eio_from", n)) => plan.op_eio = n.parse().ok().map(|k| (k, true)),
                _ => tracing::warn!("ignoring unknown RINGCACHE_TEST_FAULTS entry '{part}'"),
            }
        }
        tracing::warn!("RINGCACHE_TEST_FAULTS is set: injecting log write failures ({spec})");
        Some(plan)
    }

    /// The injected failure for a snapshot write, if any.
    pub fn check_snapshot(&self) -> io::Result<()> {
        if self.snap_enospc_while.as_ref().is_some_and(|p| p.exists()) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// Counts one I/O operation on a segment; fails it if the plan says so.
    fn check_op(&self) -> io::Result<()> {
        let n = self.ops.get() + 1;
        self.ops.set(n);
        match self.op_eio {
            Some((k, from)) if n == k || (from && n > k) => Err(io::Error::from_raw_os_error(libc::EIO)),
            _ => Ok(()),
        }
    }

    fn check(&self) -> io::Result<()> {
        self.check_op()?;
        let n = self.writes.get() + 1;
        self.writes.set(n);
        if self.eio_at.is_some_and(|at| n >= at) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if self.enospc_while.as_ref().is_some_and(|p| p.exists()) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

pub(crate) fn io_err(e: glommio::GlommioError<()>) -> io::Error {
    match e {
        glommio::GlommioError::IoError(e) => e,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

impl LogFile {
    /// Creates `path` (which must not exist) in `mode`.
    pub async fn create(path: &Path, mode: IoMode) -> io::Result<LogFile> {
        Self::open_with(path, mode, true).await
    }

    /// Opens an existing `path` for writing.
    pub async fn open(path: &Path, mode: IoMode) -> io::Result<LogFile> {
        Self::open_with(path, mode, false).await
    }

    async fn open_with(path: &Path, mode: IoMode, create: bool) -> io::Result<LogFile> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if create {
            o.create_new(true);
        }
        match mode {
            IoMode::Direct => {
                use std::os::unix::fs::OpenOptionsExt;
                let mut o = std::fs::OpenOptions::new();
                o.read(true).write(true).custom_flags(libc::O_DIRECT | libc::O_DSYNC);
                if create {
                    o.create_new(true);
                }
                let path = path.to_path_buf();
                let f = glommio::executor().spawn_blocking(move || o.open(path)).await?;
                Ok(LogFile::Direct(Arc::new(f)))
            }
            IoMode::Buffered => o.buffered_open(path).await.map(LogFile::Buffered).map_err(io_err),
        }
    }

    /// Wraps this file so its durable writes follow `plan`.
    pub fn with_faults(self, plan: std::rc::Rc<FaultPlan>) -> LogFile {
        LogFile::Faulty(Box::new(self), plan)
    }

    /// Writes `data` (a multiple of the block size, for direct I/O; at most
    /// [`WRITE_CHUNK_BYTES`]) at `pos` and makes it durable before returning. Used for the
    /// segment header block and for flushes that are one contiguous chunk.
    pub async fn write_durable(&self, data: &[u8], pos: u64) -> io::Result<()> {
        let buf = AlignedBuf::copy_of(data)?;
        self.write_chunk(buf, data.len(), pos, true).await.map(drop)
    }

    /// Writes a sealed flush at `pos` and makes it durable before returning, in chunks of at
    /// most [`WRITE_CHUNK_BYTES`] through one aligned staging buffer (module docs). Direct:
    /// each chunk is an `O_DSYNC` write. Buffered: the chunks are written, then one
    /// `fdatasync`. On error, any prefix of the chunks may be on disk (a torn flush).
    pub async fn write_flush_durable(&self, flush: &Sealed<'_>, pos: u64) -> io::Result<()> {
        let total = flush.len_bytes();
        if total == 0 {
            return Ok(());
        }
        // The common case, small records and no shared value: one aligned copy and one write,
        // as before large values (no zeroed staging buffer).
        if let Some(bytes) = flush.as_contiguous().filter(|b| b.len() <= WRITE_CHUNK_BYTES) {
            return self.write_durable(bytes, pos).await;
        }
        let mut staging = AlignedBuf::zeroed(total.min(WRITE_CHUNK_BYTES))?;
        let mut done = 0;
        while done < total {
            let n = (total - done).min(WRITE_CHUNK_BYTES);
            let dst =
                staging.as_mut_slice().get_mut(..n).ok_or_else(|| io::Error::other("staging buffer too small"))?;
            if flush.copy_to(done, dst) != n {
                return Err(io::Error::other("sealed flush shorter than its length"));
            }
            staging = self.write_chunk(staging, n, pos + done as u64, done + n == total).await?;
            done += n;
        }
        Ok(())
    }

    /// Writes the first `len` bytes of `buf` at `pos`; makes them durable now (Direct, Sim:
    /// every chunk) or when `sync` (Buffered: only after the last chunk). Hands the buffer
    /// back for the next chunk.
    async fn write_chunk(&self, buf: AlignedBuf, len: usize, pos: u64, sync: bool) -> io::Result<AlignedBuf> {
        let data = buf.as_slice().get(..len).ok_or_else(|| io::Error::other("chunk longer than its buffer"))?;
        match self {
            LogFile::Faulty(inner, plan) => {
                plan.check()?;
                Box::pin(inner.write_chunk(buf, len, pos, sync)).await
            }
            // The simulated O_DIRECT | O_DSYNC write: write, then fdatasync, per chunk.
            LogFile::Sim(disk, f) => disk.write_durable(f, data, pos).map(|()| buf),
            LogFile::Direct(f) => {
                let f = f.clone();
                let (buf, r) = glommio::executor()
                    .spawn_blocking(move || {
                        // O_DSYNC: durable when write_all_at returns (a short write continues).
                        let r = buf
                            .as_slice()
                            .get(..len)
                            .ok_or_else(|| io::Error::other("chunk longer than its buffer"))
                            .and_then(|d| f.write_all_at(d, pos));
                        (buf, r)
                    })
                    .await;
                r.map(|()| buf)
            }
            LogFile::Buffered(f) => {
                let n = f.write_at(data.to_vec(), pos).await.map_err(io_err)?;
                if n != len {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, format!("short write: {n} of {len}")));
                }
                if sync {
                    f.fdatasync().await.map_err(io_err)?;
                }
                Ok(buf)
            }
        }
    }

    /// Reserves `size` bytes on disk so later writes cannot fail for lack of space mid-segment,
    /// and makes the file's size durable.
    pub async fn preallocate(&self, size: u64) -> io::Result<()> {
        match self {
            LogFile::Faulty(inner, plan) => {
                plan.check_op()?;
                Box::pin(inner.preallocate(size)).await
            }
            LogFile::Sim(disk, f) => disk.preallocate(f, size),
            LogFile::Direct(f) => {
                let f = f.clone();
                glommio::executor()
                    .spawn_blocking(move || {
                        use std::os::fd::AsRawFd;
                        let len = libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
                        // SAFETY: fallocate on a descriptor we own.
                        if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) } != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        f.sync_data()
                    })
                    .await
            }
            LogFile::Buffered(f) => {
                f.pre_allocate(size, false).await.map_err(io_err)?;
                f.fdatasync().await.map_err(io_err)
            }
        }
    }

    pub async fn close(self) -> io::Result<()> {
        match self {
            LogFile::Faulty(inner, _) => Box::pin(inner.close()).await,
            LogFile::Sim(..) => Ok(()),
            // Every write was durable when it returned; dropping the last reference closes it.
            LogFile::Direct(_) => Ok(()),
            LogFile::Buffered(f) => f.close().await.map_err(io_err),
        }
    }
}

/// A heap buffer aligned for direct I/O, owned so it can go to the blocking thread.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: the buffer is plain bytes owned by this value alone.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn alloc(len: usize, zeroed: bool) -> io::Result<AlignedBuf> {
        let layout = Layout::from_size_align(len.max(DIRECT_ALIGN), DIRECT_ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe {
            if zeroed {
                std::alloc::alloc_zeroed(layout)
            } else {
                std::alloc::alloc(layout)
            }
        };
        let ptr = NonNull::new(raw)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "cannot allocate a direct-I/O buffer"))?;
        Ok(AlignedBuf { ptr, len, layout })
    }

    /// `len` zero bytes, aligned.
    pub(crate) fn zeroed(len: usize) -> io::Result<AlignedBuf> {
        AlignedBuf::alloc(len, true)
    }

    /// An aligned copy of `data` (whose length the caller made a multiple of the block size).
    pub(crate) fn copy_of(data: &[u8]) -> io::Result<AlignedBuf> {
        let buf = AlignedBuf::alloc(data.len(), false)?;
        // SAFETY: `ptr` holds at least `data.len()` bytes and does not overlap `data`; after
        // the copy all `len` bytes are initialised.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.ptr.as_ptr(), data.len()) };
        Ok(buf)
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes were initialised by `zeroed` or `copy_of`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`; `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `alloc` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Whether `dir` supports O_DIRECT: creates and removes a probe file.
pub fn probe_direct_io(dir: &Path) -> io::Result<IoMode> {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-io-probe");
    let _ = std::fs::remove_file(&probe);
    let r = std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(&probe);
    let mode = match r {
        Ok(_) => IoMode::Direct,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoMode::Buffered,
        Err(e) => return Err(e),
    };
    let _ = std::fs::remove_file(&probe);
    Ok(mode)
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// [`sync_dir`] on the shard's blocking thread, so the executor keeps serving while the disk
/// works. (glommio's `Directory::sync` through io_uring failed with EBADF for a relative path.)
pub async fn sync_dir_async(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    glommio::executor().spawn_blocking(move || sync_dir(&dir)).await
}

/// Writes `contents` to `dir/name` atomically: a temporary file, fsync, rename, directory
/// fsync. Used for the `LAYOUT` file.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp: PathBuf = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}
