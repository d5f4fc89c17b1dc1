//! Recovery: the data directory's layout, and replaying a shard's log into its store.
//!
//! # Data directory
//! ```text
//! <data-dir>/LOCK                 flock'ed by the running server (one server per directory)
//! <data-dir>/LAYOUT               "shards=N generation=G": which logs are authoritative
//! <data-dir>/gen-G/shard-NNN/     one directory of segments and snapshots per shard
//! ```
//! `LAYOUT` is only ever replaced atomically (write temp, fsync, rename, fsync directory). It
//! is the commit point of a change of `--threads`: until it names the new generation, the old
//! one is the truth, and a half-written new generation is removed at the next start.
//!
//! # Replay
//! Each shard first loads its newest valid snapshot (`snapshot::load`), at LSN `S` (0 when there
//! is none), then replays the log from `S + 1`: segments wholly before it (the next segment
//! starts at or before `S + 1`) are not read at all, records `<= S` in the first segment read
//! are skipped, and the first segment read must start at or before `S + 1` (otherwise records
//! are missing: refused in every mode). Each shard reads its segments in LSN order (all of a
//! segment, including its preallocated tail, which reads as zeros), checks them with
//! [`LogScanner`], and applies the valid records to its store.
//!
//! # Memory while replaying
//! A segment is mapped read-only ([`Mapped`]), not read into the heap: a flush larger than a
//! segment gets a segment of its own, so one can be ~512 MiB. Both passes over it (the scan,
//! then the records) drop the mapped pages they have finished with, a window of
//! [`RELEASE_WINDOW_BYTES`] at a time, and a value of at least that size is copied into its
//! entry chunk by chunk, each chunk's source pages dropped behind the copy. So beside the
//! entries it builds, replay keeps a bounded part of a segment resident, whatever the
//! segment's size: the window, plus what lies between two progress reports (1 MiB,
//! [`SCAN_PROGRESS_BYTES`](super::format::SCAN_PROGRESS_BYTES), inside a large record; a
//! flush of small records; 8 MiB of a large value's copy): about 16 MiB (`docs/WAL.md`). (The pages stay in the page
//! cache, which the kernel reclaims as it needs.) [`RecoveryMode::decide`] then says what to do about a torn tail or corruption,
//! and the action is carried out on disk before the shard writes anything.
//!
//! # Changing the number of shards
//! With `--threads M` over a log written by N shards, every new shard reads all N old logs and
//! keeps the records of keys it owns under M (`FLUSHALL` applies to all), each old log after the
//! entries of that old shard's newest snapshot that the new shard owns. It then writes its
//! whole state as SET records into a fresh log in generation G+1, durably. When every shard has
//! done so, `LAYOUT` is switched to G+1 and generation G is deleted.

use super::file::{sync_dir, write_atomic};
use super::format::{parse_segment_file_name, Record};
use super::mapped::Mapped;
use super::recovery::{LogScanner, RecoveryAction, RecoveryMode};
use crate::store::{Entry, Store};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What recovery found and did, for the log and INFO persistence.
#[derive(Debug, Default, Clone)]
pub struct RecoveryStats {
    pub segments: u64,
    pub records: u64,
    pub bytes_read: u64,
    pub torn_tails: u64,
    pub corrupt_segments: u64,
    pub duration_ms: u64,
    pub keys_loaded: u64,
    pub next_lsn: u64,
    /// Snapshots loaded (one per old shard on a shard-count change).
    pub snapshots_loaded: u64,
    /// LSN of the snapshot loaded (same shard count), 0 if none.
    pub snapshot_lsn: u64,
    /// Entries inserted from snapshots.
    pub snapshot_keys: u64,
    /// Bytes of the snapshot files read.
    pub snapshot_bytes: u64,
    /// Time spent loading snapshots, in ms.
    pub snapshot_ms: u64,
    /// Corrupt or unreadable newer snapshots skipped.
    pub snapshot_fallbacks: u64,
}

/// Errors that stop a shard from starting. Corruption is kept apart from I/O.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "WAL corruption in {path} at offset {offset} (LSN {lsn}): {detail}. Acknowledged writes after this point cannot be \
         trusted. To start anyway with the log cut at the last valid flush (the rest is moved to a .corrupt file, never \
         deleted), restart with --recovery tolerate-corruption"
    )]
    Corruption { path: PathBuf, offset: u64, lsn: u64, detail: String },
    #[error("WAL in {dir}: {detail}")]
    Invalid { dir: PathBuf, detail: String },
    #[error("bad LAYOUT file in {dir}: {detail} (fix or remove it; it must read 'shards=N generation=G')")]
    Layout { dir: PathBuf, detail: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RecoverError + 'a {
    move |source| RecoverError::Io { op, path: path.to_path_buf(), source }
}

/// Contents of the `LAYOUT` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub shards: u32,
    pub generation: u64,
}

impl Layout {
    pub fn read(data_dir: &Path) -> Result<Option<Layout>, RecoverError> {
        let path = data_dir.join("LAYOUT");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RecoverError::Io { op: "read", path, source: e }),
        };
        let bad = |detail: &str| RecoverError::Layout { dir: data_dir.to_path_buf(), detail: detail.to_string() };
        let mut shards = None;
        let mut generation = None;
        for field in text.split_whitespace() {
            match field.split_once('=') {
                Some(("shards", v)) => shards = v.parse().ok(),
                Some(("generation", v)) => generation = v.parse().ok(),
                _ => return Err(bad(&format!("unknown field '{field}'"))),
            }
        }
        match (shards, generation) {
            (Some(s), Some(g)) if s > 0 => Ok(Some(Layout { shards: s, generation: g })),
            _ => Err(bad("missing or invalid shards/generation")),
        }
    }

    pub fn write(&self, data_dir: &Path) -> Result<(), RecoverError> {
        let text = format!("shards={} generation={}\n", self.shards, self.generation);
        write_atomic(data_dir, "LAYOUT", text.as_bytes()).map_err(io("write", data_dir))
    }

    pub fn generation_dir(data_dir: &Path, generation: u64) -> PathBuf {
        data_dir.join(format!("gen-{generation}"))
    }

    pub fn shard_dir(data_dir: &Path, generation: u64, shard: u32) -> PathBuf {
        Self::generation_dir(data_dir, generation).join(format!("shard-{shard:03}"))
    }
}

/// Removes generation directories other than `keep` (left by an interrupted layout change or
/// a completed one whose cleanup did not finish).
pub fn remove_other_generations(data_dir: &Path, keep: u64) -> Result<(), RecoverError> {
    let entries = std::fs::read_dir(data_dir).map_err(io("list", data_dir))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(g) = name.strip_prefix("gen-").and_then(|g| g.parse::<u64>().ok()) {
            if g != keep {
                keep_set_aside_files(data_dir, &e.path(), g)?;
                tracing::info!("removing stale log generation {}", e.path().display());
                std::fs::remove_dir_all(e.path()).map_err(io("remove", data_dir))?;
            }
        }
    }
    sync_dir(data_dir).map_err(io("fsync", data_dir))
}

/// Moves `*.corrupt` files (bytes set aside by `--recovery tolerate-corruption`) out of a
/// generation about to be removed, into `<data-dir>/corrupt/`: set-aside data is never deleted.
fn keep_set_aside_files(data_dir: &Path, gen_dir: &Path, generation: u64) -> Result<(), RecoverError> {
    let Ok(shards) = std::fs::read_dir(gen_dir) else {
        return Ok(());
    };
    let target = data_dir.join("corrupt");
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.contains(".corrupt") {
                std::fs::create_dir_all(&target).map_err(io("create", &target))?;
                let dest = unused_name(
                    &target.join(format!("gen-{generation}-{}-{name}", shard.file_name().to_string_lossy())),
                );
                std::fs::rename(f.path(), &dest).map_err(io("rename", &dest))?;
                sync_dir(&target).map_err(io("fsync", &target))?;
                tracing::warn!("kept set-aside WAL bytes as {}", dest.display());
            }
        }
    }
    Ok(())
}

/// Replay drops the mapped pages of a segment it has finished with once this many have
/// gathered, and copies values of this size or more into their entries in chunks of this size
/// (module docs, "Memory while replaying").
pub const RELEASE_WINDOW_BYTES: usize = 8 << 20;

/// Told by replay which bytes of the record it may forget: everything up to the end of the
/// given slice (part of the record's value) has been copied.
pub type Release<'r> = &'r dyn Fn(&[u8]);

/// Drops the pages of a mapped segment that one pass has finished with, a window at a time.
struct Behind<'m> {
    map: &'m Mapped,
    /// Pages before this offset were released.
    done: std::cell::Cell<usize>,
}

impl<'m> Behind<'m> {
    fn new(map: &'m Mapped) -> Behind<'m> {
        Behind { map, done: std::cell::Cell::new(0) }
    }

    /// The pass has read everything before `offset`.
    fn consumed(&self, offset: usize) {
        let done = self.done.get();
        if offset >= done.saturating_add(RELEASE_WINDOW_BYTES) {
            self.map.release(done, offset);
            self.done.set(offset);
        }
    }

    /// The pass has read everything up to the end of `slice` (ignored if not in the map).
    fn consumed_through(&self, slice: &[u8]) {
        if let Some(end) = self.map.end_offset(slice) {
            self.consumed(end);
        }
    }

    /// Releases everything the pass touched.
    fn finish(&self) {
        self.map.release(0, self.map.bytes().len());
        self.done.set(0);
    }
}

/// Applies one record to a store (replay). Expired values are dropped as they load; a store
/// over its memory limit evicts as it loads (see `Store::fit_after_load`).
pub fn apply(store: &mut Store, rec: &Record<'_>, now_ms: u64) {
    apply_with(store, rec, now_ms, &|_| {});
}

/// [`apply`], telling `release` as a large value is copied which of its bytes are done.
pub fn apply_with(store: &mut Store, rec: &Record<'_>, now_ms: u64, release: Release<'_>) {
    apply_record(store, rec, now_ms, release);
    if matches!(rec, Record::Set { .. }) {
        store.fit_after_load(now_ms);
    }
}

fn apply_record(store: &mut Store, rec: &Record<'_>, now_ms: u64, release: Release<'_>) {
    match *rec {
        Record::Set { key, value, expire_at_ms } => {
            if expire_at_ms.is_some_and(|t| t <= now_ms) {
                store.remove(key, now_ms);
            } else if value.len() >= RELEASE_WINDOW_BYTES {
                // Copy in chunks, releasing each chunk's source behind the copy: the value is
                // never resident twice (mapped and in its entry).
                let entry = Entry::with_value_len(key, value.len(), expire_at_ms, |dst| {
                    for (d, s) in dst.chunks_mut(RELEASE_WINDOW_BYTES).zip(value.chunks(RELEASE_WINDOW_BYTES)) {
                        d.copy_from_slice(s);
                        release(s);
                    }
                });
                store.put(entry, now_ms);
            } else {
                store.put(Entry::new(key, value, expire_at_ms), now_ms);
            }
        }
        Record::Del { key } => {
            store.remove(key, now_ms);
        }
        Record::Expire { key, expire_at_ms } => {
            if expire_at_ms.is_some_and(|t| t <= now_ms) {
                store.remove(key, now_ms);
            } else {
                store.set_expiry(key, expire_at_ms, now_ms);
            }
        }
        Record::FlushAll => store.clear(),
    }
}

/// Replays the log in `dir` (segments of shard `shard_id` of `shard_count`) after LSN
/// `from_lsn` (the loaded snapshot's; 0: all), calling `f` for every valid record in order, and
/// carries out the recovery action on disk when `repair`. Returns the LSN the shard continues
/// from (at least `from_lsn + 1`).
#[allow(clippy::too_many_arguments)]
pub fn replay_dir(
    dir: &Path,
    shard_id: u32,
    shard_count: u32,
    mode: RecoveryMode,
    repair: bool,
    from_lsn: u64,
    stats: &mut RecoveryStats,
    mut f: impl FnMut(&Record<'_>),
) -> Result<u64, RecoverError> {
    replay_dir_with(dir, shard_id, shard_count, mode, repair, from_lsn, stats, |r, _| f(r))
}

/// [`replay_dir`], whose `f` also gets a [`Release`] to report its progress through a large
/// value (see [`apply_with`]).
#[allow(clippy::too_many_arguments)]
pub fn replay_dir_with(
    dir: &Path,
    shard_id: u32,
    shard_count: u32,
    mode: RecoveryMode,
    repair: bool,
    from_lsn: u64,
    stats: &mut RecoveryStats,
    mut f: impl FnMut(&Record<'_>, Release<'_>),
) -> Result<u64, RecoverError> {
    let mut segments: Vec<(u64, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                parse_segment_file_name(&name).map(|lsn| (lsn, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(RecoverError::Io { op: "list", path: dir.to_path_buf(), source: e }),
    };
    segments.sort();
    // Segments whose every record the snapshot holds are not read: those followed by a segment
    // that starts at or before `from_lsn + 1` (compaction deletes them eventually).
    let skip = segments.windows(2).take_while(|w| w[1].0 <= from_lsn.saturating_add(1)).count();
    let segments = segments.split_off(skip);
    if let Some((first, path)) = segments.first() {
        if *first > from_lsn.saturating_add(1) {
            return Err(RecoverError::Invalid {
                dir: dir.to_path_buf(),
                detail: format!(
                    "the log starts at LSN {first} ({}) but {}: records {}..{first} are missing. Restore the                      missing snapshot or segments from a backup",
                    path.display(),
                    if from_lsn == 0 {
                        "no valid snapshot was found".to_string()
                    } else {
                        format!("the snapshot loaded ends at LSN {from_lsn}")
                    },
                    from_lsn + 1
                ),
            });
        }
    }
    let mut scanner = LogScanner::new(shard_id, shard_count);
    for (lsn, path) in &segments {
        let map = Mapped::open(path).map_err(io("map", path))?;
        let bytes = map.bytes();
        stats.segments += 1;
        stats.bytes_read += bytes.len() as u64;
        let behind = Behind::new(&map);
        let scan = scanner
            .push_with(*lsn, bytes, &mut |at| behind.consumed(at))
            .map_err(|e| RecoverError::Invalid { dir: dir.to_path_buf(), detail: e.to_string() })?;
        behind.finish();
        if let Some(scan) = scan {
            let release = |s: &[u8]| behind.consumed_through(s);
            for r in scan.records() {
                behind.consumed(r.offset as usize);
                if r.lsn > from_lsn {
                    stats.records += 1;
                    f(&r.record, &release);
                }
            }
        }
        behind.finish();
    }
    let outcome = scanner.finish();
    let action = match mode.decide(&outcome) {
        Ok(a) => a,
        Err(super::recovery::WalError::Corruption(c)) => {
            let path = segments
                .iter()
                .find(|(l, _)| *l == c.segment_lsn)
                .map_or_else(|| dir.to_path_buf(), |(_, p)| p.clone());
            return Err(RecoverError::Corruption {
                path,
                offset: c.damage.offset,
                lsn: c.damage.lsn,
                detail: format!("{:?}; evidence: {}", c.damage.reason, c.evidence),
            });
        }
        Err(e) => return Err(RecoverError::Invalid { dir: dir.to_path_buf(), detail: e.to_string() }),
    };
    let seg_path = |lsn: u64| segments.iter().find(|(l, _)| *l == lsn).map(|(_, p)| p.clone());
    let next = match action {
        RecoveryAction::Continue { next_lsn } => next_lsn.unwrap_or(1),
        RecoveryAction::TruncateTail { segment_lsn, offset, next_lsn } => {
            stats.torn_tails += 1;
            tracing::warn!(
                shard = shard_id,
                segment_lsn,
                offset,
                next_lsn,
                "WAL ends in a torn flush (never acknowledged): truncating it"
            );
            if repair {
                if let Some(p) = seg_path(segment_lsn) {
                    truncate_or_remove(&p, offset)?;
                }
                sync_dir(dir).map_err(io("fsync", dir))?;
            }
            next_lsn
        }
        RecoveryAction::SetAsideFrom { segment_lsn, offset, next_lsn } => {
            stats.corrupt_segments += 1;
            tracing::error!(shard = shard_id, segment_lsn, offset, next_lsn, "WAL corruption: keeping the log up to the last valid flush, moving the rest aside (--recovery tolerate-corruption)");
            if repair {
                for (lsn, p) in &segments {
                    if *lsn == segment_lsn {
                        let aside = unused_name(&p.with_extension("log.corrupt"));
                        copy_tail(p, offset, &aside)?;
                        truncate_or_remove(p, offset)?;
                    } else if *lsn > segment_lsn {
                        let aside = unused_name(&p.with_extension("log.corrupt"));
                        std::fs::rename(p, &aside).map_err(io("rename", p))?;
                    }
                }
                sync_dir(dir).map_err(io("fsync", dir))?;
            }
            next_lsn
        }
    };
    let next = next.max(from_lsn.saturating_add(1));
    stats.next_lsn = next;
    Ok(next)
}

/// Copies the bytes of `from` after `offset` to a new file `to`, durably, without holding
/// them in memory (the kernel copies, `copy_file_range`).
fn copy_tail(from: &Path, offset: u64, to: &Path) -> Result<(), RecoverError> {
    use std::io::{Seek, SeekFrom};
    let mut src = std::fs::File::open(from).map_err(io("open", from))?;
    src.seek(SeekFrom::Start(offset)).map_err(io("seek", from))?;
    let mut dst = std::fs::File::create_new(to).map_err(io("create", to))?;
    std::io::copy(&mut src, &mut dst).map_err(io("copy to", to))?;
    dst.sync_all().map_err(io("fsync", to))
}

/// `path`, or `path.1`, `path.2`, ... whichever does not exist yet: set-aside bytes are never
/// overwritten.
fn unused_name(path: &Path) -> PathBuf {
    let mut candidate = path.to_path_buf();
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{}.{n}", path.display()));
        n += 1;
    }
    candidate
}

fn truncate_or_remove(path: &Path, offset: u64) -> Result<(), RecoverError> {
    // A segment left with no flush (only its header, or less) holds nothing: remove it, so the
    // writer can start a segment of the same first LSN.
    if offset <= super::format::BLOCK_SIZE as u64 {
        std::fs::remove_file(path).map_err(io("remove", path))
    } else {
        let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io("open", path))?;
        f.set_len(offset).map_err(io("truncate", path))?;
        f.sync_all().map_err(io("fsync", path))
    }
}

/// Recovers one shard's store from the current layout, re-routing records when the shard
/// count changed. Returns the LSN to continue from in `own_dir` (1 when starting a new
/// generation).
#[allow(clippy::too_many_arguments)]
pub fn recover_shard(
    data_dir: &Path,
    layout: Option<Layout>,
    shard_id: u32,
    shard_count: u32,
    mode: RecoveryMode,
    store: &mut Store,
) -> Result<RecoveryStats, RecoverError> {
    let start = Instant::now();
    let mut stats = RecoveryStats::default();
    let now = crate::store::now_ms();
    match layout {
        None => stats.next_lsn = 1,
        Some(l) if l.shards == shard_count => {
            let dir = Layout::shard_dir(data_dir, l.generation, shard_id);
            crate::snapshot::load::remove_temp_files(&dir)?;
            let snap = crate::snapshot::load::load_newest(
                &dir,
                shard_id,
                shard_count,
                true,
                store,
                now,
                &|_| true,
                &mut |s| s.clear(),
            )?;
            let from = note_snapshot(&mut stats, snap.as_ref());
            if let Some(s) = &snap {
                stats.snapshot_lsn = s.lsn;
            }
            replay_dir_with(&dir, shard_id, shard_count, mode, true, from, &mut stats, |r, release| {
                apply_with(store, r, now, release)
            })?;
        }
        Some(l) => {
            for old in 0..l.shards {
                let dir = Layout::shard_dir(data_dir, l.generation, old);
                let owned = |k: &[u8]| crate::shard::shard_of(k, shard_count as usize) == shard_id as usize;
                let snap = crate::snapshot::load::load_newest(
                    &dir,
                    old,
                    l.shards,
                    false,
                    store,
                    now,
                    &owned,
                    // Undo a partly loaded snapshot: remove the keys that came from old shard `old`.
                    &mut |s| s.retain(|k| crate::shard::shard_of(k, l.shards as usize) != old as usize, now),
                )?;
                let from = note_snapshot(&mut stats, snap.as_ref());
                // Read-only: the old generation is replaced as a whole once the new one is
                // durable.
                // Strict even under tolerate-corruption: setting damaged data aside is done by a
                // start with the old shard count (several new shards read each old log, and the
                // old generation is removed once the new one is committed).
                replay_dir_with(&dir, old, l.shards, RecoveryMode::Strict, false, from, &mut stats, |r, release| match r {
                    Record::Set { key, .. } | Record::Del { key } | Record::Expire { key, .. } => {
                        if crate::shard::shard_of(key, shard_count as usize) == shard_id as usize {
                            apply_with(store, r, now, release);
                        }
                    }
                    // Old shard `old`'s FLUSHALL removed only the keys that shard held.
                    Record::FlushAll => {
                        store.retain(|k| crate::shard::shard_of(k, l.shards as usize) != old as usize, now)
                    }
                })
                .map_err(|e| match e {
                    RecoverError::Corruption { path, offset, lsn, detail } => RecoverError::Invalid {
                        dir: path.clone(),
                        detail: format!(
                            "corruption at offset {offset} (LSN {lsn}): {detail}; the shard count cannot change over a damaged \
                             log. Start once with the previous --threads {} (and --recovery tolerate-corruption to set the \
                             damage aside), then change --threads",
                            l.shards
                        ),
                    },
                    other => other,
                })?;
            }
            stats.next_lsn = 1;
        }
    }
    stats.keys_loaded = store.len() as u64;
    stats.duration_ms = start.elapsed().as_millis() as u64;
    Ok(stats)
}

/// Adds a loaded snapshot to the stats; returns the LSN the log replays after.
fn note_snapshot(stats: &mut RecoveryStats, snap: Option<&crate::snapshot::load::Loaded>) -> u64 {
    let Some(s) = snap else {
        return 0;
    };
    stats.snapshots_loaded += 1;
    stats.snapshot_keys += s.keys;
    stats.snapshot_bytes += s.bytes;
    stats.snapshot_ms += s.ms;
    stats.snapshot_fallbacks += s.fallbacks;
    tracing::info!(
        file = %s.path.display(),
        lsn = s.lsn,
        keys = s.keys,
        bytes = s.bytes,
        ms = s.ms,
        mb_per_s = format!("{:.0}", mb_per_s(s.bytes, s.ms)),
        "snapshot loaded"
    );
    s.lsn
}

/// Throughput in MB/s (10^6 bytes), for the log and INFO.
pub fn mb_per_s(bytes: u64, ms: u64) -> f64 {
    bytes as f64 / 1e6 / (ms.max(1) as f64 / 1000.0)
}
