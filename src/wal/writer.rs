//! The per-shard log writer: group commit over aligned, preallocated segments.
//!
//! # Write path (every durable step, in order)
//! 1. A write command runs on its shard and appends its after-image records to the shard's
//!    pending [`FlushBuf`] ([`ShardLog::append`]); each record gets the next LSN. A large
//!    value the store holds as a refcounted `Bytes` is not copied: the buffer keeps a
//!    reference to it ([`ShardLog::append_with`]).
//! 2. The flusher task takes the whole pending buffer (everything appended while the previous
//!    flush was in flight rides this one: group commit) and seals it into whole 4096-byte
//!    blocks starting at the segment's next block boundary.
//! 3. If the flush does not fit in the current segment, a new segment is made first: create
//!    `wal-<next lsn>.log`, preallocate it (fallocate + fdatasync), write its header block
//!    durably, fsync the directory. Only then is the flush written there.
//! 4. The flush goes to disk through one aligned staging buffer of at most
//!    [`WRITE_CHUNK_BYTES`](super::file::WRITE_CHUNK_BYTES) (8 MiB), chunk by chunk, in order: each chunk one
//!    `O_DIRECT | O_DSYNC` write (buffered fallback: the chunk writes, then one fdatasync).
//!    Nearly every flush is a single chunk. When the last chunk is durable, `durable_lsn`
//!    moves past the flush and waiters wake; never earlier. A crash between chunks leaves a
//!    torn flush, which recovery drops like any torn write (nothing in it was acknowledged).
//!
//! Every fsync of the write path, then: fallocate + fdatasync of a new segment, its header
//! block (`O_DSYNC`, or write + fdatasync), the directory fsync after creating it, and per
//! flush either one `O_DSYNC` write per chunk or one fdatasync after the chunks.
//!
//! # Memory
//! The log holds two flush buffers (pending and the one being written) and, while writing,
//! one staging buffer of at most `WRITE_CHUNK_BYTES`. A buffer that grew for a big flush is
//! shrunk back to [`BUFFER_KEEP_BYTES_MAX`] (or `wal_buffer_bytes` if smaller) once that flush
//! is durable, and it drops its references to shared values then, so a value the store
//! replaced or deleted is freed.
//!
//! At most one flush is in flight, and a block holding acknowledged records is never written
//! again (the next flush starts at the next block): rules 1 and 2 of `docs/WAL.md`.
//!
//! # When a flush is written
//! - `sync`: as soon as anything is pending (no timer when idle, one write per batch).
//! - `async`: every `wal_flush_interval_ms`, or at once when the pending buffer reaches
//!   `wal_buffer_bytes`. Writers are never blocked unless the log falls more than twice the
//!   buffer behind (backpressure: then new writes wait for the flush).
//!
//! # Failures
//! - **ENOSPC** on a write: nothing of that flush is durable; the records stay pending and the
//!   write is retried every [`NO_SPACE_RETRY_MS`]. Meanwhile new write commands are refused
//!   with `-MISCONF`; reads are served. Writes resume by themselves once space returns.
//! - **Any other write or sync error**: the shard stops acknowledging for good (fail-stop).
//!   After a failed fsync the page cache may have dropped the dirty data while reporting it
//!   clean ("fsyncgate"), so retrying could claim durability for data that is gone. Waiting
//!   connections are closed without their replies; new writes get `-IOERR`; INFO shows it; a
//!   restart recovers from what is really on disk.

use super::file::{sync_dir_async, IoMode, LogFile};
use super::format::{segment_file_name, FlushBuf, Record, SegmentHeader, BLOCK_SIZE};
use crate::shard::LocalEvent;
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Retry period of a flush that failed with ENOSPC.
pub const NO_SPACE_RETRY_MS: u64 = 1000;

/// Capacity a flush buffer keeps between flushes (at most; `wal_buffer_bytes` if smaller).
/// A buffer that grew past it for one big flush gives the rest back once that flush is
/// durable (module docs, "Memory").
pub const BUFFER_KEEP_BYTES_MAX: usize = 8 << 20;

/// What each durability mode promises. See `docs/DURABILITY.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// No log: the cache is in memory only and loses everything on restart.
    Off,
    /// Replies go out at once; the log is written at least every `--wal-flush-interval-ms`.
    /// A crash loses at most that window, and what survives is a prefix of each shard's history.
    Async,
    /// No reply reveals a write before it is durable (the write's own reply, and any reply that
    /// observed it).
    Sync,
}

/// Why the log does not accept writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFault {
    /// The disk is full; writes resume when a retry succeeds.
    NoSpace(String),
    /// A write or sync failed: fail-stop until restart.
    Failed(String),
}

/// Counters for INFO persistence.
#[derive(Debug, Default, Clone)]
pub struct LogStats {
    pub flushes: u64,
    pub records: u64,
    pub bytes_written: u64,
    pub segments_created: u64,
    pub flush_us_total: u64,
    pub flush_us_max: u64,
    /// Replies held back by backpressure (see `count_delayed_write`).
    pub delayed_writes: u64,
    /// Time of each flush (write + sync) in ns: INFO's fsync percentiles, the
    /// `ringcache_wal_flush_duration_seconds` histogram.
    pub flush_latency: crate::metrics::HistogramSnapshot,
}

struct Segment {
    file: Rc<LogFile>,
    id: u64,
    /// Next write offset (block aligned).
    offset: u64,
}

/// Settings of a shard's log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub shard_id: u32,
    pub shard_count: u32,
    pub durability: Durability,
    pub io_mode: IoMode,
    pub segment_bytes: u64,
    pub buffer_bytes: usize,
    pub flush_interval_ms: u64,
}

/// One shard's log writer.
pub struct ShardLog {
    cfg: LogConfig,
    pending: RefCell<FlushBuf>,
    /// Spare buffer swapped in while a flush is written (no allocation per flush).
    spare: RefCell<Option<FlushBuf>>,
    segment: RefCell<Option<Segment>>,
    /// Every LSN below this is durable.
    durable_lsn: Cell<u64>,
    fault: RefCell<Option<LogFault>>,
    waiters: RefCell<Vec<(u64, Waker)>>,
    /// Set when the log must be flushed now (sync mode, buffer full, a waiter).
    kick: RefCell<Rc<LocalEvent>>,
    /// Set when the pending buffer goes from empty to non-empty (starts the async timer).
    wake: RefCell<Rc<LocalEvent>>,
    stats: RefCell<LogStats>,
    /// Injected failures (tests only).
    faults: Option<Rc<super::file::FaultPlan>>,
    /// `sync` mode: each key with a write not yet durable, and that write's LSN. Holds only the
    /// writes in flight (emptied as flushes complete). A reply waits for exactly the LSNs it
    /// observed, so a read of an untouched key never waits behind other keys' writes.
    undurable: RefCell<std::collections::HashMap<Box<[u8]>, u64>>,
    /// LSN of a FLUSHALL not yet durable (0: none): it is observed by every read.
    undurable_flushall: Cell<u64>,
    /// The simulated disk the power-loss tests run the writer on (`None`: the real files).
    sim: Option<Rc<super::sim::SimDisk>>,
}

impl ShardLog {
    /// A writer that will append from `next_lsn`. The first flush creates a new segment.
    pub fn new(cfg: LogConfig, next_lsn: u64) -> Rc<ShardLog> {
        Rc::new(Self::build(cfg, next_lsn, super::file::FaultPlan::from_env().map(Rc::new), None))
    }

    /// A writer whose segments live on the simulated disk `disk` instead of real files (the
    /// power-loss and I/O-fault tests, `src/wal/sim.rs`). Everything else is the real writer.
    pub fn on_sim_disk(cfg: LogConfig, next_lsn: u64, disk: Rc<super::sim::SimDisk>) -> Rc<ShardLog> {
        Rc::new(Self::build(cfg, next_lsn, None, Some(disk)))
    }

    fn build(
        cfg: LogConfig,
        next_lsn: u64,
        faults: Option<Rc<super::file::FaultPlan>>,
        sim: Option<Rc<super::sim::SimDisk>>,
    ) -> ShardLog {
        let cap = cfg.buffer_bytes.min(BUFFER_KEEP_BYTES_MAX);
        ShardLog {
            pending: RefCell::new(FlushBuf::with_capacity(next_lsn, cap)),
            spare: RefCell::new(Some(FlushBuf::with_capacity(next_lsn, cap))),
            segment: RefCell::new(None),
            durable_lsn: Cell::new(next_lsn),
            fault: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            kick: RefCell::new(Rc::new(LocalEvent::default())),
            wake: RefCell::new(Rc::new(LocalEvent::default())),
            stats: RefCell::new(LogStats::default()),
            faults,
            undurable: RefCell::default(),
            undurable_flushall: Cell::new(0),
            sim,
            cfg,
        }
    }

    pub fn durability(&self) -> Durability {
        self.cfg.durability
    }

    pub fn io_mode(&self) -> IoMode {
        self.cfg.io_mode
    }

    pub fn stats(&self) -> LogStats {
        self.stats.borrow().clone()
    }

    /// Counts a reply held back because the log is too far behind (backpressure in `async`
    /// mode): INFO `wal_delayed_writes`, Redis's `aof_delayed_fsync`.
    pub fn count_delayed_write(&self) {
        self.stats.borrow_mut().delayed_writes += 1;
    }

    /// The error reply for a write command, if the log cannot take writes now.
    pub fn write_refusal(&self) -> Option<String> {
        match &*self.fault.borrow() {
            None => None,
            Some(LogFault::NoSpace(e)) => Some(format!(
                "MISCONF Errors writing to the write-ahead log (shard {}): {e}. Write commands are disabled until disk space is available.",
                self.cfg.shard_id
            )),
            Some(LogFault::Failed(e)) => Some(format!(
                "IOERR the write-ahead log of shard {} failed ({e}); the shard no longer accepts writes. Restart the server to recover from the log.",
                self.cfg.shard_id
            )),
        }
    }

    pub fn fault(&self) -> Option<LogFault> {
        self.fault.borrow().clone()
    }

    /// Appends a record; returns its LSN. Records too large for the log cannot happen: the
    /// protocol limits keys and values below the log's limits.
    pub fn append(&self, rec: &Record<'_>) -> u64 {
        self.append_with(rec, None)
    }

    /// As [`append`](Self::append); `shared_value`, if given, holds exactly the bytes of the
    /// record's value (an out-of-line value of the store): the log keeps a reference to it
    /// until the flush is durable instead of copying it ([`FlushBuf::append_with`]).
    pub fn append_with(&self, rec: &Record<'_>, shared_value: Option<&bytes::Bytes>) -> u64 {
        let mut p = self.pending.borrow_mut();
        let lsn = match p.append_with(rec, shared_value) {
            Ok(lsn) => lsn,
            Err(e) => {
                tracing::error!(shard = self.cfg.shard_id, "cannot encode WAL record: {e}");
                p.next_lsn()
            }
        };
        let full = p.records_bytes() >= self.cfg.buffer_bytes;
        let first = p.record_count() == 1;
        drop(p);
        if first {
            self.wake.borrow().set();
        }
        if self.cfg.durability == Durability::Sync {
            match rec {
                Record::Set { key, .. } | Record::Del { key } | Record::Expire { key, .. } => {
                    self.undurable.borrow_mut().insert(Box::from(*key), lsn);
                }
                Record::FlushAll => self.undurable_flushall.set(lsn),
            }
        }
        if self.cfg.durability == Durability::Sync || full {
            self.kick.borrow().set();
        }
        lsn
    }

    /// The LSN a reply that read `key` must wait for (0: nothing undurable was observed).
    pub fn observed_lsn(&self, key: &[u8]) -> u64 {
        let flushall = self.undurable_flushall.get();
        let map = self.undurable.borrow();
        if map.is_empty() {
            return flushall;
        }
        map.get(key).copied().unwrap_or(0).max(flushall)
    }

    /// LSN of the last record appended (durable or not); 0 before any.
    pub fn last_lsn(&self) -> u64 {
        self.pending.borrow().next_lsn().saturating_sub(1)
    }

    /// The first LSN not yet durable: every record below it is on disk.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn.get()
    }

    /// Bytes appended but not yet handed to a flush.
    pub fn pending_bytes(&self) -> usize {
        self.pending.borrow().records_bytes()
    }

    /// Waits until every record up to and including `lsn` is durable. `Err` if the log failed
    /// (the caller must not acknowledge).
    pub async fn wait_durable(&self, lsn: u64) -> Result<(), String> {
        if lsn < self.durable_lsn.get() {
            return Ok(());
        }
        self.kick.borrow().set();
        std::future::poll_fn(|cx| {
            if lsn < self.durable_lsn.get() {
                return Poll::Ready(Ok(()));
            }
            if let Some(LogFault::Failed(e)) = &*self.fault.borrow() {
                return Poll::Ready(Err(e.clone()));
            }
            self.waiters.borrow_mut().push((lsn, cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Waits until everything appended so far is durable.
    pub async fn wait_all_durable(&self) -> Result<(), String> {
        let last = self.last_lsn();
        if last == 0 {
            return Ok(());
        }
        self.wait_durable(last).await
    }

    fn wake_waiters(&self) {
        let durable = self.durable_lsn.get();
        let failed = matches!(&*self.fault.borrow(), Some(LogFault::Failed(_)));
        self.waiters.borrow_mut().retain(|(lsn, w)| {
            if *lsn < durable || failed {
                w.wake_by_ref();
                false
            } else {
                true
            }
        });
    }

    /// The flusher task: runs until `stop` is set and everything pending is durable.
    pub async fn run_flusher(self: Rc<Self>, stop: Rc<LocalEvent>) {
        let interval = Duration::from_millis(self.cfg.flush_interval_ms.max(1));
        loop {
            let kick = self.kick.borrow().clone();
            let wake = self.wake.borrow().clone();
            if self.pending.borrow().is_empty() {
                if stop.is_set() {
                    return;
                }
                // Idle: sleep until something is appended (or shutdown).
                futures_lite::future::or(futures_lite::future::or(kick.wait(), wake.wait()), stop.wait()).await;
                // Reset both events before re-checking the state (single-threaded: nothing can
                // be appended between the reset and the check, so no wake-up is lost). A kick
                // left set with nothing pending would otherwise spin this loop forever.
                *self.wake.borrow_mut() = Rc::new(LocalEvent::default());
                *self.kick.borrow_mut() = Rc::new(LocalEvent::default());
                continue;
            }
            if self.cfg.durability == Durability::Async && !kick.is_set() && !stop.is_set() {
                // Group the interval's writes: flush when the timer fires, or earlier when the
                // buffer fills (kick) or the server stops.
                let timer = glommio::timer::sleep(interval);
                futures_lite::future::or(futures_lite::future::or(kick.wait(), stop.wait()), async {
                    timer.await;
                })
                .await;
            }
            *self.kick.borrow_mut() = Rc::new(LocalEvent::default());
            if matches!(&*self.fault.borrow(), Some(LogFault::Failed(_))) {
                // Fail-stop: nothing is written again on this log. Release waiters (they get
                // the error) and idle until shutdown.
                self.wake_waiters();
                stop.wait().await;
                return;
            }
            match self.flush_once().await {
                Ok(()) => {
                    if matches!(&*self.fault.borrow(), Some(LogFault::NoSpace(_))) {
                        tracing::info!(shard = self.cfg.shard_id, "WAL writes succeed again; accepting writes");
                        *self.fault.borrow_mut() = None;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    if self.fault.borrow().is_none() {
                        tracing::error!(
                            shard = self.cfg.shard_id,
                            "WAL write failed: disk full; refusing writes until space returns"
                        );
                    }
                    *self.fault.borrow_mut() = Some(LogFault::NoSpace(e.to_string()));
                    if stop.is_set() {
                        return;
                    }
                    glommio::timer::sleep(Duration::from_millis(NO_SPACE_RETRY_MS)).await;
                }
                Err(e) => {
                    tracing::error!(
                        shard = self.cfg.shard_id,
                        "WAL write failed: {e}; shard is fail-stopped (restart to recover)"
                    );
                    *self.fault.borrow_mut() = Some(LogFault::Failed(e.to_string()));
                    self.wake_waiters();
                    stop.wait().await;
                    return;
                }
            }
        }
    }

    /// Writes everything pending now (used by recovery to persist a rewritten log).
    pub async fn flush_now(&self) -> std::io::Result<()> {
        self.flush_once().await
    }

    /// Writes everything pending as one flush.
    async fn flush_once(&self) -> std::io::Result<()> {
        let start = Instant::now();
        // Swap the pending buffer out (unless a previous attempt left one staged).
        let mut buf = {
            let mut pending = self.pending.borrow_mut();
            if pending.is_empty() {
                return Ok(());
            }
            let next = pending.next_lsn();
            let mut fresh = self.spare.borrow_mut().take().unwrap_or_else(|| FlushBuf::new(next));
            fresh.reset(next);
            std::mem::replace(&mut *pending, fresh)
        };
        let result = self.write_flush(&mut buf).await;
        match result {
            Ok(()) => {
                let records = u64::from(buf.record_count());
                let durable = buf.next_lsn();
                self.durable_lsn.set(durable);
                self.undurable.borrow_mut().retain(|_, lsn| *lsn >= durable);
                if self.undurable_flushall.get() < durable {
                    self.undurable_flushall.set(0);
                }
                {
                    let mut st = self.stats.borrow_mut();
                    st.flushes += 1;
                    st.records += records;
                    let ns = start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
                    st.flush_latency.record_ns(ns);
                    let us = ns / 1000;
                    st.flush_us_total += us;
                    st.flush_us_max = st.flush_us_max.max(us);
                }
                // Drop the shared values (the store may free them now) and any capacity a big
                // flush made the buffer grow to.
                buf.reset(durable);
                buf.shrink_to(self.keep_bytes());
                *self.spare.borrow_mut() = Some(buf);
                self.wake_waiters();
                Ok(())
            }
            Err(e) => {
                // Put the records back in front of anything appended meanwhile, so a retry
                // writes them in LSN order. (Only ENOSPC retries; other errors fail-stop.)
                let mut pending = self.pending.borrow_mut();
                let newer = std::mem::replace(&mut *pending, buf);
                drop(pending);
                self.merge_back(newer);
                Err(e)
            }
        }
    }

    /// Capacity a flush buffer keeps between flushes.
    fn keep_bytes(&self) -> usize {
        self.cfg.buffer_bytes.min(BUFFER_KEEP_BYTES_MAX)
    }

    /// Capacity of the spare flush buffer (tests: the bound of [`BUFFER_KEEP_BYTES_MAX`]).
    pub fn spare_capacity_bytes(&self) -> usize {
        self.spare.borrow().as_ref().map_or(0, FlushBuf::capacity_bytes)
    }

    /// Re-appends records of `newer` (appended during a failed flush) after the restored ones.
    fn merge_back(&self, newer: FlushBuf) {
        if newer.is_empty() {
            return;
        }
        let mut pending = self.pending.borrow_mut();
        pending.absorb(&newer);
    }

    async fn write_flush(&self, buf: &mut FlushBuf) -> std::io::Result<()> {
        let padded = buf.padded_len_bytes() as u64;
        let needs_new = match &*self.segment.borrow() {
            None => true,
            Some(s) => s.offset + padded > self.cfg.segment_bytes.max(padded + BLOCK_SIZE as u64),
        };
        if needs_new {
            self.rotate(buf.first_lsn()).await?;
        }
        let (id, offset) = {
            let seg = self.segment.borrow();
            let s = seg.as_ref().ok_or_else(|| std::io::Error::other("no segment"))?;
            (s.id, s.offset)
        };
        let sealed = buf.finish(id, offset).map_err(|e| std::io::Error::other(e.to_string()))?;
        let len = sealed.len_bytes() as u64;
        let file = self.segment.borrow().as_ref().map(|s| s.file.clone());
        let file = file.ok_or_else(|| std::io::Error::other("no segment"))?;
        file.write_flush_durable(&sealed, offset).await?;
        if let Some(s) = self.segment.borrow_mut().as_mut() {
            s.offset = offset + len;
        }
        self.stats.borrow_mut().bytes_written += len;
        Ok(())
    }

    async fn create_file(&self, path: &std::path::Path) -> std::io::Result<LogFile> {
        match &self.sim {
            Some(disk) => Ok(LogFile::Sim(disk.clone(), disk.create(path)?)),
            None => LogFile::create(path, self.cfg.io_mode).await,
        }
    }

    /// Closes the current segment and starts `wal-<first_lsn>.log`.
    async fn rotate(&self, first_lsn: u64) -> std::io::Result<()> {
        let old = self.segment.borrow_mut().take();
        if let Some(old) = old {
            if let Ok(f) = Rc::try_unwrap(old.file) {
                f.close().await?;
            }
        }
        let path = self.cfg.dir.join(segment_file_name(first_lsn));
        let file = match self.create_file(&path).await {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // A segment named after the next LSN can only be one whose creation was
                // interrupted before its first flush (recovery found no record in it): replace it.
                match &self.sim {
                    Some(disk) => disk.remove(&path)?,
                    None => std::fs::remove_file(&path)?,
                }
                self.create_file(&path).await?
            }
            r => r?,
        };
        let file = match &self.faults {
            Some(plan) => file.with_faults(plan.clone()),
            None => file,
        };
        file.preallocate(self.cfg.segment_bytes).await?;
        let mut id = 0;
        while id == 0 {
            id = rand::random::<u64>();
        }
        let header =
            SegmentHeader { shard_id: self.cfg.shard_id, shard_count: self.cfg.shard_count, first_lsn, segment_id: id };
        let block = header.to_block().map_err(|e| std::io::Error::other(e.to_string()))?;
        file.write_durable(&block, 0).await?;
        match &self.sim {
            Some(disk) => disk.sync_dir(&self.cfg.dir)?,
            None => sync_dir_async(&self.cfg.dir).await?,
        }
        self.stats.borrow_mut().segments_created += 1;
        *self.segment.borrow_mut() = Some(Segment { file: Rc::new(file), id, offset: BLOCK_SIZE as u64 });
        Ok(())
    }
}
