//! Choosing and loading a shard's snapshot at recovery.
//!
//! The files are mapped read-only (`mmap`): the mapping is page-aligned, so uncompressed chunk
//! payloads (16-byte aligned in the file) are accessed in place, and the file's pages stay
//! reclaimable page cache instead of a second copy of the dataset on the heap. Every checksum is
//! verified before the first entry is inserted; entries then go straight from the archive into
//! the store.
//!
//! # Memory while loading
//! A mapped page the process has read counts in its resident memory (`RssFile`) until it is
//! unmapped, so reading a whole file through its mapping would add the file's size to the peak
//! (VmHWM) on top of the entries built from it. Both passes (verification, then inserting) give
//! the pages behind them back (`madvise(MADV_DONTNEED)`, [`Releaser`]) every
//! [`LOAD_RELEASE_BYTES`]; the pages stay in the page cache, so the second pass reads them from
//! memory when the machine has room. A large value (a large-value frame) is copied once, from
//! the mapping into its own page-mapped buffer ([`crate::large`]), which the entry adopts
//! (`Entry::with_value_len`): no decompression buffer of its size. So the peak is the entries
//! themselves plus at most `LOAD_RELEASE_BYTES` + [`format::READ_PIECE_BYTES`] of file pages and
//! one chunk's decompression buffer (which keeps at most [`SCRATCH_KEEP_BYTES`] between chunks).
//! Version 1 files keep large values inside chunks: they load as before (a value passes through
//! the decompression buffer), and the next snapshot rewrites them as version 2.

use super::format::{self, parse_snapshot_file_name, Frame, Header};
use crate::store::{Entry, Store};
use crate::wal::file::sync_dir;
use crate::wal::mapped::Mapped;
use crate::wal::replay::RecoverError;
use rkyv::util::AlignedVec;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What loading found and did.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// LSN of the snapshot loaded (the log replays from `lsn + 1`).
    pub lsn: u64,
    /// The file loaded.
    pub path: PathBuf,
    /// Entries read from the file.
    pub entries: u64,
    /// Entries inserted (not expired, and owned by this shard).
    pub keys: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// Newer snapshots that were corrupt and skipped.
    pub fallbacks: u64,
    /// Time spent, in ms.
    pub ms: u64,
}

/// File bytes a load reads through a mapping before it gives the pages behind it back.
pub const LOAD_RELEASE_BYTES: usize = 8 << 20;

/// Capacity the decompression buffer keeps between chunks (a version-1 chunk holding a large
/// value grows it to that value's size; it is given back after that chunk).
pub const SCRATCH_KEEP_BYTES: usize = 4 << 20;

/// Gives back the pages of a mapped snapshot that a pass has read, so that they stop counting
/// in the process's resident memory ([`Mapped::release`]: dropping pages of a private,
/// read-only file mapping loses nothing, a later read faults them back in from the file, which
/// the locked data directory keeps unchanged).
struct Releaser<'m> {
    map: &'m Mapped,
    len: usize,
    /// Everything before this offset (a page boundary) was given back.
    done: usize,
}

impl<'m> Releaser<'m> {
    fn over(map: &'m Mapped) -> Releaser<'m> {
        Releaser { map, len: map.bytes().len(), done: 0 }
    }

    /// The pass will not read before `offset` again.
    fn consumed(&mut self, offset: usize) {
        let end = offset.min(self.len) / crate::large::PAGE_BYTES * crate::large::PAGE_BYTES;
        if end < self.done + LOAD_RELEASE_BYTES && !(offset >= self.len && end > self.done) {
            return;
        }
        self.map.release(self.done, end);
        self.done = end;
    }

    /// A new pass starts from the beginning.
    fn restart(&mut self) {
        self.done = 0;
    }
}

/// The snapshot files in `dir` as `(lsn, path)`, ascending. Missing directory: none.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, RecoverError> {
    let mut out: Vec<(u64, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| parse_snapshot_file_name(&e.file_name().to_string_lossy()).map(|l| (l, e.path())))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(RecoverError::Io { op: "list", path: dir.to_path_buf(), source: e }),
    };
    out.sort();
    Ok(out)
}

/// Removes `snap-*.tmp` files (snapshots a crash interrupted before their rename; never
/// referenced) and syncs the directory.
pub fn remove_temp_files(dir: &Path) -> Result<u64, RecoverError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap-") && name.ends_with(".tmp") {
            tracing::info!(file = %e.path().display(), "removing an interrupted snapshot");
            std::fs::remove_file(e.path()).map_err(|source| RecoverError::Io {
                op: "remove",
                path: e.path(),
                source,
            })?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir).map_err(|source| RecoverError::Io { op: "fsync", path: dir.to_path_buf(), source })?;
    }
    Ok(removed)
}

/// Inserts the entries of snapshot bytes `b` (already checked with [`format::verify`]) into
/// `store`: those for which `keep` is true and that have not expired at `now_ms`. Returns how
/// many were inserted.
///
/// The bytes are untrusted: every frame is re-checked, every archive goes through rkyv's
/// checked access and every large value's checksum is checked while it is copied, so a file
/// that fails a check despite [`format::verify`] is an error, not undefined behaviour. On
/// error, returns the corruption and how many entries were already inserted (the caller
/// removes them). Uncompressed payloads are read in place when `b` is 16-byte aligned (a
/// mapping is), else copied. This is also the body of the `snapshot_load` fuzz target
/// ([`crate::fuzzing`]).
pub fn insert_entries(
    b: &[u8],
    store: &mut Store,
    now_ms: u64,
    keep: &dyn Fn(&[u8]) -> bool,
) -> Result<u64, (format::Corrupt, u64)> {
    insert_entries_with(b, store, now_ms, keep, &mut |_| {})
}

/// [`insert_entries`], calling `consumed` with the file offset reached after each frame and
/// each piece of a large value (nothing before it is read again).
fn insert_entries_with(
    b: &[u8],
    store: &mut Store,
    now_ms: u64,
    keep: &dyn Fn(&[u8]) -> bool,
    consumed: &mut dyn FnMut(usize),
) -> Result<u64, (format::Corrupt, u64)> {
    let mut scratch = AlignedVec::new();
    let mut keys = 0u64;
    for frame in format::frames(b) {
        let loaded = frame.and_then(|f| match f {
            Frame::Chunk(c) => {
                let entries = format::entries(&c, &mut scratch)?;
                for (i, e) in entries.iter().enumerate() {
                    // The bucket of the key PREFETCH_AHEAD entries on is fetched while this one is
                    // inserted (most of a load is waiting for those slots).
                    if let Some(ahead) = entries.get(i + PREFETCH_AHEAD) {
                        store.prefetch(ahead.key_bytes());
                    }
                    let (k, v, t) = (e.key_bytes(), e.value_bytes(), e.expire_at());
                    if t.is_some_and(|t| t <= now_ms) || !keep(k) {
                        continue;
                    }
                    store.put(Entry::new(k, v, t), now_ms);
                    // Above --maxmemory (lowered since the snapshot), evict while loading.
                    store.fit_after_load(now_ms);
                    keys += 1;
                }
                if scratch.capacity() > SCRATCH_KEEP_BYTES {
                    scratch = AlignedVec::new();
                }
                consumed(c.end as usize);
                Ok(())
            }
            Frame::Large(l) => {
                if l.expire_at_ms.is_some_and(|t| t <= now_ms) || !keep(l.key) {
                    consumed(l.end as usize);
                    return Ok(());
                }
                // Copied once, piece by piece, into the value's own mapping, which the entry
                // adopts; the file pages behind the copy are given back as it goes.
                let mut copied = Ok(());
                let e = Entry::with_value_len(l.key, l.value.len(), l.expire_at_ms, |dst| {
                    copied = l.copy_value(dst, consumed);
                });
                copied?;
                store.put(e, now_ms);
                store.fit_after_load(now_ms);
                keys += 1;
                consumed(l.end as usize);
                Ok(())
            }
        });
        if let Err(c) = loaded {
            return Err((c, keys));
        }
    }
    Ok(keys)
}

/// Why one file could not be loaded (the next older one is tried).
enum Unusable {
    Corrupt(format::Corrupt),
    Io(std::io::Error),
}

/// How many entries ahead of the insert a load prefetches the bucket of: enough to cover a
/// memory access at a few ns per insert, few enough that the lines are still cached.
const PREFETCH_AHEAD: usize = 8;

/// Loads the newest valid snapshot of shard `shard_id` (of `shard_count`) in `dir` into
/// `store`, inserting the entries for which `keep` is true and that have not expired.
///
/// A corrupt or unreadable file is skipped with a warning (renamed `*.snap.corrupt` when
/// `repair`, so that retention never counts it) and the next older one is tried. If a file
/// turns out bad after some of its entries were inserted (an archive that fails bytecheck
/// despite its checksum), `undo` must remove what it inserted. `Ok(None)`: no usable snapshot.
/// A snapshot of another shard or shard count is a configuration error, not corruption.
#[allow(clippy::too_many_arguments)]
pub fn load_newest(
    dir: &Path,
    shard_id: u32,
    shard_count: u32,
    repair: bool,
    store: &mut Store,
    now_ms: u64,
    keep: &dyn Fn(&[u8]) -> bool,
    undo: &mut dyn FnMut(&mut Store),
) -> Result<Option<Loaded>, RecoverError> {
    let mut fallbacks = 0;
    for (lsn, path) in list(dir)?.into_iter().rev() {
        let start = Instant::now();
        let result = Mapped::open(&path).map_err(Unusable::Io).and_then(|m| {
            let b = m.bytes();
            let mut pages = Releaser::over(&m);
            let (header, summary) = format::verify_with(b, &mut |at| pages.consumed(at)).map_err(Unusable::Corrupt)?;
            pages.restart();
            check_header(&header, lsn, shard_id, shard_count, &path)?;
            // Size the table once. The count is covered by the whole-file checksum; the cap (an
            // archived entry takes more than 16 bytes) keeps a crafted file from making us
            // allocate more buckets than it could hold entries.
            let expected = summary.entries.min(b.len() as u64 / 16);
            store.reserve(usize::try_from(expected).unwrap_or(usize::MAX));
            let keys = insert_entries_with(b, store, now_ms, keep, &mut |at| pages.consumed(at)).map_err(
                |(c, inserted)| {
                    if inserted > 0 {
                        undo(store);
                    }
                    Unusable::Corrupt(c)
                },
            )?;
            Ok(Loaded {
                lsn,
                path: path.clone(),
                entries: summary.entries,
                keys,
                bytes: b.len() as u64,
                fallbacks,
                ms: start.elapsed().as_millis() as u64,
            })
        });
        match result {
            Ok(l) => return Ok(Some(l)),
            Err(Unusable::Corrupt(c)) if matches!(c.reason, format::Invalid::UnsupportedVersion(_)) => {
                return Err(RecoverError::Invalid {
                    dir: path,
                    detail: format!("snapshot of an unsupported format ({c}); this build cannot read it"),
                });
            }
            Err(Unusable::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                // A configuration mismatch (see `check_header`).
                return Err(RecoverError::Invalid { dir: path, detail: e.to_string() });
            }
            Err(why) => {
                let why = match why {
                    Unusable::Corrupt(c) => format!("corrupt: {c}"),
                    Unusable::Io(e) => format!("unreadable: {e}"),
                };
                tracing::warn!(
                    shard = shard_id,
                    file = %path.display(),
                    "snapshot {why}; falling back to the previous snapshot (the log still covers it)"
                );
                fallbacks += 1;
                if repair {
                    let aside = path.with_extension("snap.corrupt");
                    std::fs::rename(&path, &aside).map_err(|source| RecoverError::Io {
                        op: "rename",
                        path: path.clone(),
                        source,
                    })?;
                    sync_dir(dir).map_err(|source| RecoverError::Io {
                        op: "fsync",
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
            }
        }
    }
    if fallbacks > 0 {
        tracing::warn!(shard = shard_id, "no valid snapshot left: recovering from the log alone");
    }
    Ok(None)
}

fn check_header(h: &Header, lsn: u64, shard_id: u32, shard_count: u32, path: &Path) -> Result<(), Unusable> {
    if h.lsn != lsn {
        return Err(Unusable::Corrupt(format::Corrupt { offset: 24, reason: format::Invalid::HeaderFields }));
    }
    if h.shard_id != shard_id || h.shard_count != shard_count {
        return Err(Unusable::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} was written by shard {} of {}, but is in the directory of shard {shard_id} of {shard_count}",
                path.display(),
                h.shard_id,
                h.shard_count
            ),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::format::{Compression, Encoder, EntryRef};

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ringcache-load-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A snapshot at `lsn` of shard 0 of 1 holding `small` in a chunk and `large` in
    /// large-value frames.
    fn write_snapshot(dir: &Path, lsn: u64, small: &[EntryRef<'_>], large: &[EntryRef<'_>]) -> PathBuf {
        let header = Header { shard_id: 0, shard_count: 1, lsn, created_ms: 1, compression: Compression::Lz4 };
        let mut out = Vec::new();
        let mut enc = Encoder::new(&header, &mut out);
        enc.chunk(small, &mut out).unwrap();
        for e in large {
            enc.large(e, &mut out).unwrap();
        }
        enc.finish(lsn, &mut out).unwrap();
        let path = dir.join(format::snapshot_file_name(lsn));
        std::fs::write(&path, out).unwrap();
        path
    }

    fn load(dir: &Path, store: &mut Store) -> Result<Option<Loaded>, RecoverError> {
        load_newest(dir, 0, 1, true, store, 1_000, &|_| true, &mut |s: &mut Store| s.clear())
    }

    #[test]
    fn large_values_load_out_of_line_and_byte_identical() {
        let dir = temp_dir("large");
        let big: Vec<u8> = (0..(9 << 20) + 5).map(|i| (i * 13 % 251) as u8).collect();
        let mid: Vec<u8> = vec![7; 1 << 20];
        write_snapshot(
            &dir,
            5,
            &[EntryRef::new(b"small", b"v", None)],
            &[
                EntryRef::new(b"big", &big, Some(5_000)),
                EntryRef::new(b"mid", &mid, None),
                EntryRef::new(b"gone", &mid, Some(999)),
            ],
        );
        let mut store = Store::new(1);
        let l = load(&dir, &mut store).unwrap().expect("loaded");
        assert_eq!((l.lsn, l.entries, l.keys), (5, 4, 3), "the expired large value is not inserted");
        let e = store.get(b"big", 1_000).unwrap();
        assert!(e.shared_value().is_some(), "a large value is kept out of line");
        assert_eq!(e.value(), &big[..]);
        assert_eq!(e.expire_at_ms(), Some(5_000));
        assert_eq!(store.get(b"mid", 1_000).unwrap().value(), &mid[..]);
        assert_eq!(store.get(b"small", 1_000).unwrap().value(), b"v");
        assert!(store.get(b"gone", 1_000).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A damaged large value in the newest file: set aside, the older one loaded.
    #[test]
    fn a_damaged_large_value_falls_back_to_the_previous_snapshot() {
        let dir = temp_dir("large-damaged");
        let old: Vec<u8> = vec![1; 2 << 20];
        let new: Vec<u8> = vec![2; 2 << 20];
        write_snapshot(&dir, 3, &[], &[EntryRef::new(b"big", &old, None)]);
        let newest = write_snapshot(&dir, 4, &[], &[EntryRef::new(b"big", &new, None)]);
        let mut bytes = std::fs::read(&newest).unwrap();
        bytes[format::HEADER_BYTES + format::LARGE_HEADER_BYTES + 3 + (1 << 20)] ^= 1;
        std::fs::write(&newest, &bytes).unwrap();
        let mut store = Store::new(1);
        let l = load(&dir, &mut store).unwrap().expect("loaded");
        assert_eq!((l.lsn, l.fallbacks), (3, 1));
        assert_eq!(store.get(b"big", 1_000).unwrap().value(), &old[..]);
        assert!(newest.with_extension("snap.corrupt").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `insert_entries` alone (the fuzz target's body, no `verify`) checks a large value's
    /// checksum while copying it, and reports how many entries it had inserted.
    #[test]
    fn insert_checks_large_values_without_verify() {
        let header = Header { shard_id: 0, shard_count: 1, lsn: 1, created_ms: 1, compression: Compression::None };
        let mut out = Vec::new();
        let mut enc = Encoder::new(&header, &mut out);
        enc.chunk(&[EntryRef::new(b"a", b"1", None)], &mut out).unwrap();
        enc.large(&EntryRef::new(b"b", &[5u8; 3000], None), &mut out).unwrap();
        enc.finish(1, &mut out).unwrap();
        let mut b = AlignedVec::<16>::new();
        b.extend_from_slice(&out);
        let at = format::frames(&b)
            .find_map(|f| match f {
                Ok(Frame::Large(l)) => Some(l.offset as usize),
                _ => None,
            })
            .unwrap();
        b[at + format::LARGE_HEADER_BYTES + 2000] ^= 0x40;
        let mut store = Store::new(1);
        let err = insert_entries(&b, &mut store, 0, &|_| true).err().map(|(c, n)| (c.reason, n));
        assert_eq!(err, Some((format::Invalid::LargeChecksum, 1)));
        assert!(store.get(b"b", 0).is_none(), "the damaged value was not inserted");
    }
}
