//! Choosing and loading a shard's snapshot at recovery.
//!
//! The files are mapped read-only (`mmap`): the mapping is page-aligned, so uncompressed chunk
//! payloads (16-byte aligned in the file) are accessed in place, and the file's pages stay
//! reclaimable page cache instead of a second copy of the dataset on the heap. Every checksum is
//! verified before the first entry is inserted; entries then go straight from the archive into
//! the store.

use super::format::{self, parse_snapshot_file_name, Header};
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
/// The bytes are untrusted: every chunk frame is re-checked and every archive goes through
/// rkyv's checked access, so an archive that fails bytecheck despite its checksum is an error,
/// not undefined behaviour. On error, returns the corruption and how many entries were already
/// inserted (the caller removes them). Uncompressed payloads are read in place when `b` is
/// 16-byte aligned (a mapping is), else copied. This is also the body of the `snapshot_load`
/// fuzz target ([`crate::fuzzing`]).
pub fn insert_entries(
    b: &[u8],
    store: &mut Store,
    now_ms: u64,
    keep: &dyn Fn(&[u8]) -> bool,
) -> Result<u64, (format::Corrupt, u64)> {
    let mut scratch = AlignedVec::new();
    let mut keys = 0u64;
    for chunk in format::chunks(b) {
        let loaded = chunk.and_then(|c| {
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
            Ok(())
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
            let (header, summary) = format::verify(b).map_err(Unusable::Corrupt)?;
            check_header(&header, lsn, shard_id, shard_count, &path)?;
            // Size the table once. The count is covered by the whole-file checksum; the cap (an
            // archived entry takes more than 16 bytes) keeps a crafted file from making us
            // allocate more buckets than it could hold entries.
            let expected = summary.entries.min(b.len() as u64 / 16);
            store.reserve(usize::try_from(expected).unwrap_or(usize::MAX));
            let keys = insert_entries(b, store, now_ms, keep).map_err(|(c, inserted)| {
                if inserted > 0 {
                    undo(store);
                }
                Unusable::Corrupt(c)
            })?;
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
