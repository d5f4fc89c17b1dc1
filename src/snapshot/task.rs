//! Taking a snapshot of a running shard, then retention and compaction.
//!
//! One snapshot runs per shard at a time. [`take_snapshot`] is called by every trigger (the
//! cron's interval and log-bytes checks, SAVE/BGSAVE through `Request::Snapshot`, shutdown);
//! a call that finds one running waits for it to end and then takes its own, so SAVE always
//! reflects the state at the time it was issued.

use super::file::SnapshotFile;
use super::format::{snapshot_file_name, temp_file_name, Compression, EncodeError, Encoder, EntryRef, Header};
use super::{
    load, plan_compaction, plan_retention, CHUNK_BYTES, LARGE_PIECE_BYTES, PRESERVED_LIMIT_BYTES, STEP_BUCKETS,
    WRITE_BUFFER_KEEP_BYTES, WRITE_BYTES,
};
use crate::shard::LocalEvent;
use crate::store::Store;
use crate::wal::file::{io_err, sync_dir_async, FaultPlan, IoMode};
use crate::wal::format::parse_segment_file_name;
use crate::wal::ShardLog;
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Pause between two steps of the walk on an idle shard: long enough to take the task off the
/// run queue (so the executor reaps I/O completions and serves connections), short against a
/// step's work.
pub const STEP_PAUSE: Duration = Duration::from_micros(20);

/// Most of a busy shard's time the walk takes: when the shard served a command during the pause
/// before a step, the walk pauses after it for three times the step's duration. On an idle
/// shard it runs flat out (pausing [`STEP_PAUSE`]).
///
/// Why: commands run only between steps, and a connection with one request outstanding gets
/// one turn per pause. With 20 µs pauses the walk took ~95% of the shard, so back-to-back
/// snapshots left too little for 20k GET/s: open-loop GET p50 went from 0.09 ms to 1.8 ms (p99
/// 10 ms) on one shard with 1M keys (`scripts/bench-snapshot.sh`, docs/PERFORMANCE.md). At a
/// quarter, a busy shard keeps three quarters for commands, a GET waits at most one step, and
/// a snapshot takes at most four times as long as on an idle shard.
pub const BUSY_SHARE_PERCENT: u32 = 25;

/// Where and how a shard writes its snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// The shard's directory (`gen-G/shard-NNN`), shared with its log.
    pub dir: PathBuf,
    pub shard_id: u32,
    pub shard_count: u32,
    pub compression: Compression,
    /// Valid snapshots kept (at least 1).
    pub retain: usize,
    pub io_mode: IoMode,
}

/// Why a snapshot failed. The previous snapshots and the whole log are untouched.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {path}: {detail}")]
    Io { op: &'static str, path: PathBuf, detail: String },
    #[error("shard {shard}: cannot encode the snapshot: {detail}")]
    Encode { shard: u32, detail: String },
    #[error("shard {shard}: the write-ahead log failed before it covered the snapshot's LSN: {detail}")]
    Log { shard: u32, detail: String },
}

/// Figures of the last snapshot and totals, for INFO persistence.
#[derive(Debug, Default, Clone)]
pub struct SnapshotStats {
    pub taken: u64,
    pub failed: u64,
    pub last_ok: bool,
    pub last_error: Option<String>,
    pub last_lsn: u64,
    pub last_entries: u64,
    pub last_bytes: u64,
    pub last_ms: u64,
    /// Unix seconds when the last successful snapshot ended.
    pub last_success_s: u64,
    pub segments_deleted: u64,
    pub snapshots_deleted: u64,
    /// Longest single step of any walk, in µs: the longest a command waited behind one.
    pub step_max_us: u64,
}

/// A shard's snapshot state.
pub struct SnapshotCtl {
    pub cfg: SnapshotConfig,
    running: Cell<bool>,
    done: RefCell<Rc<LocalEvent>>,
    stats: RefCell<SnapshotStats>,
    /// LSN of the newest snapshot on disk: with a log, a snapshot at the same LSN is the same
    /// state and is not written again.
    newest: Cell<Option<u64>>,
    /// Without a log (`--durability off`) nothing advances the LSN, so each snapshot takes the
    /// next number after the larger of `newest` and this (what recovery reached).
    base_lsn: Cell<u64>,
    /// When the last snapshot started, and the log's bytes written then (triggers).
    last_start: Cell<Instant>,
    wal_bytes_at_last: Cell<u64>,
    faults: Option<Rc<FaultPlan>>,
}

impl SnapshotCtl {
    /// State for the shard whose directory is `cfg.dir`; `base_lsn` is the last LSN recovery
    /// reached.
    pub fn new(cfg: SnapshotConfig, base_lsn: u64) -> Rc<SnapshotCtl> {
        let newest = load::list(&cfg.dir).ok().and_then(|l| l.last().map(|(lsn, _)| *lsn));
        Rc::new(SnapshotCtl {
            cfg,
            running: Cell::new(false),
            done: RefCell::new(Rc::new(LocalEvent::default())),
            stats: RefCell::new(SnapshotStats {
                last_ok: true,
                last_success_s: unix_s(),
                last_lsn: newest.unwrap_or(0),
                ..Default::default()
            }),
            newest: Cell::new(newest),
            base_lsn: Cell::new(base_lsn),
            last_start: Cell::new(Instant::now()),
            wal_bytes_at_last: Cell::new(0),
            faults: FaultPlan::from_env().map(Rc::new),
        })
    }

    pub fn stats(&self) -> SnapshotStats {
        self.stats.borrow().clone()
    }

    pub fn is_running(&self) -> bool {
        self.running.get()
    }

    /// Whether a trigger asks for a snapshot now: `interval_s` since the last one started, or
    /// `wal_bytes` of log written since then (0 disables either).
    pub fn due(&self, interval_s: u64, wal_bytes: u64, wal_written: u64) -> bool {
        if self.running.get() {
            return false;
        }
        (interval_s > 0 && self.last_start.get().elapsed().as_secs() >= interval_s)
            || (wal_bytes > 0 && wal_written.saturating_sub(self.wal_bytes_at_last.get()) >= wal_bytes)
    }
}

fn unix_s() -> u64 {
    crate::store::now_ms() / 1000
}

/// What a successful snapshot did.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    pub lsn: u64,
    pub entries: u64,
    pub bytes: u64,
    /// False when the newest snapshot already held this LSN and nothing was written.
    pub written: bool,
}

/// Takes a snapshot of `store` (the shard's) at the log's current LSN and makes it durable, then
/// applies retention and compaction. Waits for a running snapshot to end first.
///
/// `commands_served` is the shard's count of commands run (any counter that moves when the
/// shard serves traffic): the walk paces itself by it (see [`BUSY_SHARE_PERCENT`]).
pub async fn take_snapshot(
    ctl: &Rc<SnapshotCtl>,
    store: &RefCell<Store>,
    wal: Option<&Rc<ShardLog>>,
    commands_served: &Cell<u64>,
) -> Result<Done, SnapshotError> {
    while ctl.running.get() {
        let ev = ctl.done.borrow().clone();
        ev.wait().await;
    }
    ctl.running.set(true);
    ctl.last_start.set(Instant::now());
    ctl.wal_bytes_at_last.set(wal.map_or(0, |w| w.stats().bytes_written));
    let start = Instant::now();
    let result = run(ctl, store, wal, commands_served).await;
    {
        let mut st = ctl.stats.borrow_mut();
        match &result {
            Ok(d) => {
                st.last_ok = true;
                st.last_error = None;
                st.last_success_s = unix_s();
                if d.written {
                    st.taken += 1;
                    st.last_lsn = d.lsn;
                    st.last_entries = d.entries;
                    st.last_bytes = d.bytes;
                    st.last_ms = start.elapsed().as_millis() as u64;
                }
            }
            Err(e) => {
                st.failed += 1;
                st.last_ok = false;
                st.last_error = Some(e.to_string());
            }
        }
    }
    match &result {
        Ok(d) if d.written => tracing::info!(
            shard = ctl.cfg.shard_id,
            lsn = d.lsn,
            entries = d.entries,
            bytes = d.bytes,
            ms = start.elapsed().as_millis() as u64,
            "snapshot written"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!(
            shard = ctl.cfg.shard_id,
            "snapshot failed: {e}; the previous snapshot and the whole log are kept"
        ),
    }
    ctl.running.set(false);
    let ev = std::mem::replace(&mut *ctl.done.borrow_mut(), Rc::new(LocalEvent::default()));
    ev.set();
    result
}

async fn run(
    ctl: &Rc<SnapshotCtl>,
    store: &RefCell<Store>,
    wal: Option<&Rc<ShardLog>>,
    commands_served: &Cell<u64>,
) -> Result<Done, SnapshotError> {
    let cfg = &ctl.cfg;
    // The point in time: the LSN and the epoch flip in one synchronous step.
    let lsn = match wal {
        Some(w) => w.last_lsn(),
        None => ctl.newest.get().unwrap_or(0).max(ctl.base_lsn.get()) + 1,
    };
    if wal.is_some() && ctl.newest.get() == Some(lsn) {
        // Nothing was logged since the newest snapshot: it already holds this state.
        return Ok(Done { lsn, entries: 0, bytes: 0, written: false });
    }
    if !store.borrow_mut().begin_snapshot() {
        return Err(SnapshotError::Encode { shard: cfg.shard_id, detail: "a snapshot walk is already running".into() });
    }
    let tmp = cfg.dir.join(temp_file_name(lsn));
    let written = write_file(ctl, store, &tmp, lsn, commands_served).await;
    let (entries, bytes) = match written {
        Ok(x) => x,
        Err(e) => {
            store.borrow_mut().abort_snapshot();
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let fail = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| SnapshotError::Io { op, path, detail: e.to_string() }
    };
    if let Some(w) = wal {
        // The log must reach the snapshot's LSN before the snapshot exists. A log that cannot
        // write now (disk full, failed) fails the snapshot rather than waiting for it.
        let waited = match w.fault() {
            Some(f) => Err(format!("{f:?}")),
            None => w.wait_durable(lsn).await,
        };
        if let Err(detail) = waited {
            let _ = std::fs::remove_file(&tmp);
            return Err(SnapshotError::Log { shard: cfg.shard_id, detail });
        }
    }
    let path = cfg.dir.join(snapshot_file_name(lsn));
    if let Err(e) = glommio::io::rename(&tmp, &path).await.map_err(io_err) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("rename", &tmp)(e));
    }
    sync_dir_async(&cfg.dir).await.map_err(fail("fsync", &cfg.dir))?;
    ctl.newest.set(Some(lsn));
    ctl.base_lsn.set(lsn);
    // Retention, then compaction: only now that the new snapshot is durable.
    let (deleted_snaps, deleted_segs) = retain_and_compact(&cfg.dir, cfg.retain).await?;
    {
        let mut st = ctl.stats.borrow_mut();
        st.snapshots_deleted += deleted_snaps;
        st.segments_deleted += deleted_segs;
    }
    Ok(Done { lsn, entries, bytes, written: true })
}

/// Walks the store and writes `tmp`, synced. Returns (entries, file bytes).
async fn write_file(
    ctl: &Rc<SnapshotCtl>,
    store: &RefCell<Store>,
    tmp: &Path,
    lsn: u64,
    commands_served: &Cell<u64>,
) -> Result<(u64, u64), SnapshotError> {
    let cfg = &ctl.cfg;
    let io = |op: &'static str| {
        let path = tmp.to_path_buf();
        move |e: std::io::Error| SnapshotError::Io { op, path, detail: e.to_string() }
    };
    let mut file = SnapshotFile::create(tmp, cfg.io_mode, ctl.faults.clone()).await.map_err(io("create"))?;
    let header = Header {
        shard_id: cfg.shard_id,
        shard_count: cfg.shard_count,
        lsn,
        created_ms: crate::store::now_ms(),
        compression: cfg.compression,
    };
    let mut buf = Vec::with_capacity(WRITE_BUFFER_KEEP_BYTES);
    let mut enc = Encoder::new(&header, &mut buf);
    // Large values a step handed over, held by reference (a clone of the entry's `Bytes`, not
    // a copy) until they are streamed after the step: whatever commands do to the entry
    // meanwhile, this is the version the snapshot needs.
    let mut large: Vec<LargeValue> = Vec::new();
    let encode_err = |e: EncodeError| SnapshotError::Encode { shard: cfg.shard_id, detail: e.to_string() };
    let result: Result<(), SnapshotError> = async {
        let mut served = commands_served.get();
        loop {
            // Commands run only while the walk pauses: did any run during the last pause?
            let busy = commands_served.get() != served;
            served = commands_served.get();
            let began = Instant::now();
            let step = {
                let mut s = store.borrow_mut();
                let now = crate::store::now_ms();
                s.snapshot_step(STEP_BUCKETS, CHUNK_BYTES, PRESERVED_LIMIT_BYTES, now, |refs| {
                    let small = split_large(refs, &mut large);
                    enc.chunk(&small, &mut buf)
                })
            }
            .map_err(encode_err)?;
            let took = began.elapsed();
            {
                let mut st = ctl.stats.borrow_mut();
                st.step_max_us = st.step_max_us.max(took.as_micros() as u64);
            }
            if buf.len() >= WRITE_BYTES || step.done {
                file.write_blocks(&mut buf).await.map_err(io("write"))?;
            }
            for v in large.drain(..) {
                write_large(cfg.shard_id, &mut enc, &mut buf, &mut file, &v).await?;
            }
            if buf.capacity() > WRITE_BUFFER_KEEP_BYTES {
                // A chunk with a long key grew it: keep only the bound.
                buf.shrink_to(WRITE_BUFFER_KEEP_BYTES);
            }
            if step.done {
                return Ok(());
            }
            // Let commands run between steps. A plain yield is not enough: the task would be
            // ready again at once, and glommio reaps network completions only when its run
            // queue empties or the task queue's quantum (100 ms by default) ends, so GETs
            // waited up to 100 ms behind a walk (measured: p99 306 ms with snapshots back to
            // back, 2.7 ms without). A timer takes the task off the run queue, so the executor
            // polls io_uring between every two steps; on a busy shard the pause is long enough
            // to leave it three quarters of its time (BUSY_SHARE_PERCENT).
            glommio::timer::sleep(pause_after(took, busy)).await;
        }
    }
    .await;
    if let Err(e) = result {
        file.discard().await;
        return Err(e);
    }
    let entries = enc.entries();
    if let Err(e) = enc.finish(lsn, &mut buf) {
        file.discard().await;
        return Err(encode_err(e));
    }
    let bytes = file.finish(buf).await.map_err(io("write and fdatasync"))?;
    Ok((entries, bytes))
}

/// A large value a walk step handed over, to be written after the step.
struct LargeValue {
    /// A copy of the key (keys are short; a long one costs its own size once).
    key: Vec<u8>,
    /// The entry's value buffer, shared.
    value: Bytes,
    expire_at_ms: Option<u64>,
}

/// Takes the entries with a shared (large) value out of `refs` into `large`; returns the others.
fn split_large<'a>(refs: &[EntryRef<'a>], large: &mut Vec<LargeValue>) -> Vec<EntryRef<'a>> {
    let mut small = Vec::with_capacity(refs.len());
    for r in refs {
        match r.shared {
            Some(v) => large.push(LargeValue { key: r.key.to_vec(), value: v.clone(), expire_at_ms: r.expire_at_ms }),
            None => small.push(*r),
        }
    }
    small
}

/// Streams one large value into the file as a large-value frame: [`LARGE_PIECE_BYTES`] at a
/// time through `buf`, which is written out whenever it holds [`WRITE_BYTES`], so the value
/// never exists a second time in full. The shard serves commands during each write.
async fn write_large(
    shard: u32,
    enc: &mut Encoder,
    buf: &mut Vec<u8>,
    file: &mut SnapshotFile,
    v: &LargeValue,
) -> Result<(), SnapshotError> {
    let encode_err = |e: EncodeError| SnapshotError::Encode { shard, detail: e.to_string() };
    let path = file.path().to_path_buf();
    let write_err = |e: std::io::Error| SnapshotError::Io { op: "write", path: path.clone(), detail: e.to_string() };
    enc.begin_large(v.key.len(), v.value.len(), v.expire_at_ms, buf).map_err(encode_err)?;
    for piece in v.key.chunks(LARGE_PIECE_BYTES).chain(v.value.chunks(LARGE_PIECE_BYTES)) {
        enc.large_body(piece, buf).map_err(encode_err)?;
        if buf.len() >= WRITE_BYTES {
            file.write_blocks(buf).await.map_err(write_err)?;
        }
    }
    enc.end_large(buf).map_err(encode_err)
}

/// The pause after a step that took `took`: [`STEP_PAUSE`] on an idle shard, on a busy one long
/// enough that the walk takes [`BUSY_SHARE_PERCENT`] of the time.
pub fn pause_after(took: Duration, busy: bool) -> Duration {
    if !busy {
        return STEP_PAUSE;
    }
    let share = BUSY_SHARE_PERCENT.clamp(1, 100);
    (took * (100 - share) / share).max(STEP_PAUSE)
}

/// Retention then compaction in `dir`: keeps the newest `retain` snapshots, deletes log
/// segments wholly covered by the oldest kept one. Each phase ends with a directory fsync.
/// Returns (snapshots deleted, segments deleted).
pub async fn retain_and_compact(dir: &Path, retain: usize) -> Result<(u64, u64), SnapshotError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| SnapshotError::Io { op, path, detail: e.to_string() }
    };
    let snaps =
        load::list(dir).map_err(|e| SnapshotError::Io { op: "list", path: dir.into(), detail: e.to_string() })?;
    let lsns: Vec<u64> = snaps.iter().map(|(l, _)| *l).collect();
    let (kept, doomed) = plan_retention(&lsns, retain);
    for l in &doomed {
        let p = dir.join(snapshot_file_name(*l));
        glommio::io::remove(&p).await.map_err(io_err).map_err(io("remove", &p))?;
    }
    if !doomed.is_empty() {
        sync_dir_async(dir).await.map_err(io("fsync", dir))?;
    }
    let Some(&oldest) = kept.first() else {
        return Ok((doomed.len() as u64, 0));
    };
    let segments: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io("list", dir))?
        .flatten()
        .filter_map(|e| parse_segment_file_name(&e.file_name().to_string_lossy()))
        .collect();
    let delete = plan_compaction(&segments, oldest);
    for l in &delete {
        let p = dir.join(crate::wal::segment_file_name(*l));
        glommio::io::remove(&p).await.map_err(io_err).map_err(io("remove", &p))?;
    }
    if !delete.is_empty() {
        sync_dir_async(dir).await.map_err(io("fsync", dir))?;
        tracing::info!(dir = %dir.display(), segments = delete.len(), up_to_lsn = oldest, "log compacted");
    }
    Ok((doomed.len() as u64, delete.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_paces_itself_only_on_a_busy_shard() {
        let step = Duration::from_micros(300);
        assert_eq!(pause_after(step, false), STEP_PAUSE);
        // A quarter of a busy shard: the pause is three times the step.
        assert_eq!(pause_after(step, true), Duration::from_micros(900));
        // A step shorter than the minimal pause still pauses that long.
        assert_eq!(pause_after(Duration::from_micros(1), true), STEP_PAUSE);
    }
}

#[cfg(test)]
mod large_tests {
    use super::*;
    use crate::store::Entry;

    /// The walk hands a large value over as a reference to the entry's own buffer, also when
    /// the entry was replaced after the snapshot began (the preserved old version), and
    /// `split_large` keeps that reference instead of copying.
    #[test]
    fn the_walk_hands_large_values_over_by_reference() {
        let mut store = Store::new(1);
        let old = crate::large::LargeBuf::copy_of(&vec![1u8; 2 << 20]).unwrap();
        store.put(Entry::from_bytes(b"big", old.clone(), None), 0);
        store.put(Entry::from_bytes(b"other", crate::large::LargeBuf::copy_of(&[2u8; 1 << 20]).unwrap(), None), 0);
        store.set(b"small", b"v", None, 0);
        assert!(store.begin_snapshot());
        // Replaced before the walk reached it: the old version is preserved, shared.
        store.put(Entry::from_bytes(b"big", bytes::Bytes::from(vec![3u8; 2 << 20]), None), 0);
        let mut large = Vec::new();
        let mut small = Vec::new();
        loop {
            let step = store
                .snapshot_step(STEP_BUCKETS, CHUNK_BYTES, PRESERVED_LIMIT_BYTES, 0, |refs| {
                    small.extend(split_large(refs, &mut large).iter().map(|r| r.key.to_vec()));
                    Ok::<(), ()>(())
                })
                .unwrap();
            if step.done {
                break;
            }
        }
        assert_eq!(small, vec![b"small".to_vec()]);
        large.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(large.iter().map(|l| l.key.as_slice()).collect::<Vec<_>>(), [&b"big"[..], b"other"]);
        assert_eq!(large[0].value.as_ptr(), old.as_ptr(), "the snapshot holds the old version, not a copy");
        assert!(large[1].value.iter().all(|&b| b == 2));
    }
}
