//! The per-shard write-ahead log: on-disk format, encoding and scanning.
//!
//! `format`, `scan` and `recovery` are the pure half of the WAL: they turn records into blocks
//! and blocks back into records, over byte slices, with no I/O. `file`, `writer` and `replay`
//! are the I/O half (glommio DMA files, group commit, recovery at startup) built on them. The format is specified byte by byte in
//! `docs/WAL.md`, with the argument for each crash case and the recovery decision table.
//!
//! # Shape of the log
//! Each shard owns a directory of segment files `wal-<first lsn, 20 digits>.log`, preallocated
//! (64 MiB by default) and written with O_DIRECT in 4096-byte blocks. Block 0 is the segment
//! header; it carries a random 64-bit segment id that seeds every checksum in the segment, so
//! bytes left in a recycled file by an older segment can never pass for records of this one.
//!
//! Records are after-images ([`Record`]): SET with its value and absolute expiry, DEL, EXPIRE
//! (set or clear), FLUSHALL. Each has an LSN, +1 per record per shard, with no gaps.
//!
//! # Flushes, alignment and what is never rewritten
//! Group commit writes a *flush*: a flush header, the records appended since the last flush,
//! and zero padding up to the next block boundary. The next flush starts at that boundary, so a
//! block holding acknowledged records is never written again — a torn write can only hurt the
//! flush in progress, which nobody has been told is durable. The flush header states the
//! record bytes and count, so a flush cut short exactly at a block (and record) boundary is
//! still seen as incomplete.
//!
//! A flush is the unit of atomicity: recovery applies a flush entirely or not at all, so a
//! command that logs several records is replayed whole or not at all.
//!
//! # Rules the writer must keep (the scan's arguments depend on them)
//! 1. At most one flush in flight: flush N+1 is submitted only after the fdatasync covering
//!    flush N completed. So valid data after a damaged flush proves the damage is not a torn
//!    write but damage to acknowledged data.
//! 2. A flush never spans segments; a new segment's header is durable (file and directory
//!    synced) before its first flush is written, and a segment is created only after the last
//!    flush of the previous one is durable.
//! 3. Every new segment, including one made from a recycled file, gets a fresh random non-zero
//!    segment id.
//! 4. After recovery, the [`RecoveryAction`] is carried out before anything new is written;
//!    then the writer starts a new segment at the next LSN, or appends at the cut (see the doc
//!    for when that is safe).
//!
//! # Parts
//! - [`format`]: byte layout, limits, segment header, record codec, the flush encoder
//!   [`FlushBuf`].
//! - [`scan`]: [`scan_segment`] validates one segment and classifies its end (clean, torn,
//!   corrupt); [`Records`] iterates its valid records zero-copy.
//! - [`recovery`]: [`LogScanner`] checks the joins between segments; [`RecoveryMode`] decides
//!   what to do about what was found.
//! - [`file`]: the segment file (O_DIRECT + O_DSYNC, buffered fallback), directory fsync.
//! - [`writer`]: the per-shard writer: group commit, rotation, durability modes, failures.
//! - [`replay`]: the data directory layout and recovery at startup.
//! - [`mapped`]: read-only maps of segment and snapshot files that recovery reads, releasing
//!   pages behind it.
//! - [`sim`]: a simulated disk that keeps written apart from synced, for the power-loss and
//!   I/O-fault tests (`tests/power_loss.rs`); the real writer runs on it.

// The pure format code reads untrusted bytes: every item documented, and no construct that can
// panic on input.
#[deny(missing_docs)]
#[cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]
pub mod format;
#[deny(missing_docs)]
#[cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]
pub mod recovery;
#[deny(missing_docs)]
#[cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]
pub mod scan;

#[cfg(test)]
mod tests;

pub use format::{
    parse_segment_file_name, segment_file_name, EncodeError, FlushBuf, HeaderError, Invalid, LogRecord, Parts, Record,
    RecordKind, Sealed, SegmentHeader, BLOCK_SIZE, MAX_KEY_BYTES, MAX_RECORD_BYTES, MAX_VALUE_BYTES,
    SEGMENT_SIZE_BYTES_DEFAULT,
};
pub use recovery::{Corruption, Evidence, LogOutcome, LogScanner, RecoveryAction, RecoveryMode, WalError};
pub use scan::{scan_segment, scan_segment_with, Damage, LaterFlush, Records, SegmentEnd, SegmentScan};

pub mod file;
pub mod mapped;
pub mod metrics;
pub mod replay;
pub mod sim;
pub mod writer;

pub use writer::{Durability, LogConfig, LogFault, ShardLog};
