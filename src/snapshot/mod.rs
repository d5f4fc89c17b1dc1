//! Forkless per-shard snapshots: point in time, written while the shard keeps serving; loading
//! at recovery; retention and log compaction.
//!
//! # Why not fork
//! Redis forks and lets the kernel's copy-on-write keep the old pages: a write-heavy instance can
//! come close to doubling its memory during a save, and the fork itself stalls a large process.
//! Here each shard snapshots its own store on its own thread, copying only what changes while
//! the snapshot runs (see `store`'s module docs for the scheme).
//!
//! # Point in time
//! A snapshot of shard S at LSN L holds exactly S's store after every log record with an LSN
//! `<= L` and none after. [`task::take_snapshot`] reads `L = last LSN appended` and flips the
//! store's snapshot epoch in the same synchronous step (no await between, so no command runs in
//! between); from then on the store keeps the old version of every entry the walk has not
//! written yet before it changes. The walk goes in bounded steps (at most
//! [`STEP_BUCKETS`] buckets and about [`CHUNK_BYTES`] of entries), pausing between steps
//! (a timer, not a bare yield: see `task::STEP_PAUSE`) so that the executor reaps I/O and
//! commands keep being served with a bounded delay.
//!
//! **Memory.** Old versions are preserved only for entries present at the start and not yet
//! written, each at most once, so preserved bytes are bounded by the part of the dataset the
//! walk has not reached. When they exceed [`PRESERVED_LIMIT_BYTES`], every step writes all of
//! them out before yielding (at disk speed), so a write burst cannot make the list grow faster
//! than the disk drains it for long. INFO persistence shows the current and peak amounts.
//!
//! # Writing (every durable step, in order)
//! 1. Create `snap-<L>.tmp` (an older one with the same name, left by a crash, is replaced),
//!    opened with O_DIRECT; the encoder's output is written in whole, aligned 1 MiB blocks
//!    ([`file::SnapshotFile`]). Filesystems without O_DIRECT (tmpfs) get a buffered file, as the
//!    log does. A large value (one the store keeps out of line, 1 MiB or more) is not put in a
//!    chunk: the step hands it over as a reference to the entry's buffer, and it is streamed
//!    after the step as a large-value frame, [`LARGE_PIECE_BYTES`] at a time through the write
//!    buffer (`task::write_large`). So a snapshot holds the entries plus bounded buffers,
//!    whatever the size of a value (docs/SNAPSHOT.md, "Memory bound").
//! 2. After the footer: **fdatasync** the file.
//! 3. With a log: wait until the log is durable up to L, so that the log always reaches at least
//!    the newest snapshot's LSN (a snapshot must never hold writes the log lost).
//! 4. **rename** to `snap-<L>.snap`, **fsync the directory**. The snapshot now exists.
//!    (Renames, unlinks and directory syncs go through io_uring: the shard's thread never
//!    blocks on them.)
//! 5. Retention: delete the oldest `.snap` files beyond `--snapshot-retain`; **fsync the
//!    directory**.
//! 6. Compaction: delete log segments all of whose records are `<=` the LSN of the *oldest*
//!    retained snapshot (a segment qualifies when the next segment starts at or before that
//!    LSN + 1; the last segment never does), oldest first; **fsync the directory**.
//!
//! A failure in steps 1–4 (ENOSPC, EIO) removes the temporary file, deletes nothing, leaves the
//! previous snapshots and the whole log as they were, and is reported (log line, INFO
//! `rdb_last_bgsave_status:err`, SAVE's error reply). The crash cases are in
//! `docs/SNAPSHOT.md`.
//!
//! # Loading
//! [`load::load_newest`] at recovery: stray `.tmp` files are removed; the `.snap` files are
//! tried newest first. A file is mapped, verified (every checksum, the footer's counts) before
//! anything is inserted, then each chunk is accessed with rkyv's checked access and its entries
//! inserted straight into the store (expired ones dropped); a large value is copied once into
//! its own buffer, which the entry adopts. Both passes give the mapped pages behind them back,
//! so the peak memory is the entries plus bounded overhead (`load`'s module docs). A
//! corrupt file is renamed `*.snap.corrupt` (never deleted) with a warning and the previous one
//! is tried; the log then replays from the loaded snapshot's LSN + 1 (`wal::replay`).
//!
//! # Parts
//! - [`format`]: the byte layout, encoder and verifying decoder (pure, no I/O).
//! - [`file`]: the snapshot file written with DMA.
//! - [`task`]: taking a snapshot on a running shard, retention, compaction, triggers' state.
//! - [`load`]: choosing and loading a snapshot at recovery.

#[deny(missing_docs)]
#[cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]
pub mod format;

pub mod file;
pub mod load;
pub mod metrics;
pub mod task;

pub use format::Compression;

/// Buckets of the table one walk step visits at most.
pub const STEP_BUCKETS: usize = 1024;
/// Key and value bytes one chunk holds (about; one large entry makes a larger chunk).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Encoded bytes collected before a write to the file (a multiple of the 4096-byte block).
pub const WRITE_BYTES: usize = 1 << 20;
/// Bytes of a large value copied into the write buffer at a time: a large value is streamed
/// from the entry's shared buffer, never encoded or compressed whole.
pub const LARGE_PIECE_BYTES: usize = 256 * 1024;
/// Capacity the write buffer keeps between steps: [`WRITE_BYTES`] plus the most one step or one
/// piece adds before the next write (two chunks: a preserved batch and the walk's). A chunk with
/// a long key can grow it beyond; it is shrunk back after the write.
pub const WRITE_BUFFER_KEEP_BYTES: usize = WRITE_BYTES + 2 * CHUNK_BYTES;
/// Preserved old versions above which every step writes all of them out before yielding.
pub const PRESERVED_LIMIT_BYTES: usize = 64 << 20;

/// `--snapshot-compression` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// Chunks compressed with lz4 (default).
    Lz4,
    /// Chunks stored as they are.
    None,
}

impl CompressionArg {
    pub fn compression(self) -> Compression {
        match self {
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::None => Compression::None,
        }
    }
}

/// Which snapshots to keep after a new one is durable: the newest `retain` of `lsns` (the LSNs
/// of the valid `.snap` files, any order). Returns `(kept, deleted)`, each ascending. Pure.
pub fn plan_retention(lsns: &[u64], retain: usize) -> (Vec<u64>, Vec<u64>) {
    let mut all = lsns.to_vec();
    all.sort_unstable();
    all.dedup();
    let split = all.len().saturating_sub(retain.max(1));
    let kept = all.split_off(split);
    (kept, all)
}

/// Which log segments compaction deletes, given their file-name LSNs (any order) and the LSN of
/// the oldest retained snapshot. A segment is deleted only when the *next* segment starts at or
/// before `oldest_snapshot_lsn + 1`: then every record of it is `<= oldest_snapshot_lsn`. The
/// last segment is never deleted. Returns ascending LSNs (delete in that order, so a crash
/// leaves a contiguous suffix of the log). Pure.
pub fn plan_compaction(segments: &[u64], oldest_snapshot_lsn: u64) -> Vec<u64> {
    let mut all = segments.to_vec();
    all.sort_unstable();
    all.dedup();
    all.windows(2)
        .take_while(|w| w.get(1).is_some_and(|&next| next <= oldest_snapshot_lsn.saturating_add(1)))
        .filter_map(|w| w.first().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_newest() {
        assert_eq!(plan_retention(&[30, 10, 20], 2), (vec![20, 30], vec![10]));
        assert_eq!(plan_retention(&[10], 2), (vec![10], vec![]));
        assert_eq!(plan_retention(&[10, 20], 0), (vec![20], vec![10]), "retain is at least 1");
    }

    #[test]
    fn compaction_deletes_only_wholly_covered_segments() {
        // Segments start at 1, 100, 200; the last one is never deleted.
        assert_eq!(plan_compaction(&[1, 100, 200], 0), Vec::<u64>::new());
        assert_eq!(plan_compaction(&[1, 100, 200], 98), Vec::<u64>::new(), "record 99 is not covered");
        assert_eq!(plan_compaction(&[1, 100, 200], 99), vec![1]);
        assert_eq!(plan_compaction(&[200, 1, 100], 150), vec![1]);
        assert_eq!(plan_compaction(&[1, 100, 200], 199), vec![1, 100]);
        assert_eq!(plan_compaction(&[1, 100, 200], 10_000), vec![1, 100]);
        assert_eq!(plan_compaction(&[5], 10_000), Vec::<u64>::new());
    }
}
