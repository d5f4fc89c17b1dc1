//! `ringcache check --data-dir DIR`: the offline verifier (like `fsck` or `redis-check-aof`).
//!
//! Reads every snapshot and log segment of the current generation without changing anything,
//! and prints, per shard, what a recovery would do: the snapshot it would load, the records it
//! would replay, and every torn or corrupt spot with its file and offset. The exit status is 0
//! only when nothing at all is damaged, even damage recovery works around (a torn tail, a corrupt
//! snapshot with an older one to fall back to, a stray temporary file): 1 when something is, 2
//! when the directory cannot be checked. Run it on a stopped server's directory, or on a copy.
//!
//! `ringcache repair --data-dir DIR [--recovery tolerate-corruption]` carries out the repairs
//! recovery would make (the decision tables of `docs/WAL.md` and `docs/SNAPSHOT.md`) without
//! starting the server.

use crate::snapshot::format;
use crate::wal::format::parse_segment_file_name;
use crate::wal::recovery::{LogOutcome, LogScanner};
use crate::wal::replay::Layout;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Options of `ringcache check`.
#[derive(clap::Parser, Debug)]
#[command(name = "ringcache check", about = "Verify a data directory offline and print what recovery would do")]
pub struct CheckArgs {
    /// The data directory to check.
    #[arg(long = "data-dir", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// Options of `ringcache repair`.
#[derive(clap::Parser, Debug)]
#[command(name = "ringcache repair", about = "Carry out what recovery would do to a data directory, offline")]
pub struct RepairArgs {
    /// The data directory to repair.
    #[arg(long = "data-dir", default_value = "./data")]
    pub data_dir: PathBuf,
    /// `strict` refuses mid-log corruption; `tolerate-corruption` cuts the log there and sets
    /// the rest aside (never deleted), as the server's option of the same name.
    #[arg(long, value_enum, default_value = "strict")]
    pub recovery: crate::config::RecoveryArg,
}

/// `ringcache repair`: runs the server's own recovery on every shard of the current
/// generation, with its repairs (torn tails truncated, damaged snapshots renamed
/// `*.snap.corrupt`, stray `.tmp` removed, and with `tolerate-corruption` damaged log tails set
/// aside), without starting the server. Takes the directory's lock, so it never runs beside a
/// server. Returns the text to print and the exit status (0 repaired or clean, 1 refused, 2 not
/// a usable directory).
pub fn repair(data_dir: &Path, mode: crate::wal::RecoveryMode) -> (String, i32) {
    use std::os::fd::AsRawFd;
    let lock = match std::fs::OpenOptions::new().write(true).open(data_dir.join("LOCK")) {
        Ok(f) => f,
        Err(e) => {
            return (format!("{}: cannot open LOCK: {e} (not a ringcache data directory?)\n", data_dir.display()), 2)
        }
    };
    // SAFETY: flock on an fd we own; released when `lock` is dropped at the end.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return (format!("{} is locked by a running server: stop it first\n", data_dir.display()), 2);
    }
    let layout = match Layout::read(data_dir) {
        Ok(Some(l)) => l,
        Ok(None) => return (format!("{}: no LAYOUT file: nothing to repair\n", data_dir.display()), 2),
        Err(e) => return (format!("{e}\n"), 2),
    };
    let mut out = String::new();
    let mut code = 0;
    for shard in 0..layout.shards {
        let mut store = crate::store::Store::new(0);
        match crate::wal::replay::recover_shard(data_dir, Some(layout), shard, layout.shards, mode, &mut store) {
            Ok(st) => {
                let _ = writeln!(
                    out,
                    "shard {shard}: ok: snapshot LSN {} ({} damaged skipped), {} record(s) replayed, {} torn tail(s) \
                     truncated, {} corrupt tail(s) set aside, {} keys, next LSN {}",
                    st.snapshot_lsn,
                    st.snapshot_fallbacks,
                    st.records,
                    st.torn_tails,
                    st.corrupt_segments,
                    st.keys_loaded,
                    st.next_lsn
                );
            }
            Err(e) => {
                let _ = writeln!(out, "shard {shard}: refused: {e}");
                code = 1;
            }
        }
    }
    drop(lock);
    (out, code)
}

/// What checking one shard found.
#[derive(Debug, Default)]
pub struct ShardReport {
    /// Human-readable lines.
    pub lines: Vec<String>,
    /// Damage found (anything but a clean state).
    pub damage: usize,
}

/// Checks the whole directory; returns the text to print and the exit status.
pub fn check(data_dir: &Path) -> (String, i32) {
    let mut out = String::new();
    let layout = match Layout::read(data_dir) {
        Ok(Some(l)) => l,
        Ok(None) => {
            return (
                format!("{}: no LAYOUT file: not a ringcache data directory (or never started)\n", data_dir.display()),
                2,
            )
        }
        Err(e) => return (format!("{e}\n"), 2),
    };
    let _ = writeln!(out, "{}: {} shards, generation {}", data_dir.display(), layout.shards, layout.generation);
    let mut damage = 0;
    for shard in 0..layout.shards {
        let dir = Layout::shard_dir(data_dir, layout.generation, shard);
        let r = check_shard(&dir, shard, layout.shards);
        damage += r.damage;
        let _ = writeln!(out, "shard {shard} ({}):", dir.display());
        for l in r.lines {
            let _ = writeln!(out, "  {l}");
        }
    }
    let _ = writeln!(
        out,
        "{}",
        if damage == 0 { "no damage found".to_string() } else { format!("{damage} problem(s) found") }
    );
    (out, if damage == 0 { 0 } else { 1 })
}

/// Checks one shard directory.
pub fn check_shard(dir: &Path, shard_id: u32, shard_count: u32) -> ShardReport {
    let mut r = ShardReport::default();
    let names: Vec<(String, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(e) => e.flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect(),
        Err(e) => {
            r.lines.push(format!("cannot list: {e}"));
            r.damage += 1;
            return r;
        }
    };
    for (name, _) in names.iter().filter(|(n, _)| n.starts_with("snap-") && n.ends_with(".tmp")) {
        r.lines.push(format!("{name}: interrupted snapshot (recovery removes it)"));
        r.damage += 1;
    }
    for (name, _) in names.iter().filter(|(n, _)| n.ends_with(".corrupt")) {
        r.lines.push(format!("{name}: damaged data set aside by an earlier recovery (kept for inspection)"));
    }
    // Snapshots, newest first: the first valid one is what recovery loads.
    let mut snaps: Vec<(u64, &PathBuf, &String)> =
        names.iter().filter_map(|(n, p)| format::parse_snapshot_file_name(n).map(|l| (l, p, n))).collect();
    snaps.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut chosen: Option<u64> = None;
    for (lsn, path, name) in snaps {
        match verify_snapshot(path, lsn, shard_id, shard_count) {
            Ok(s) => {
                let role = if chosen.is_none() { "recovery loads this one" } else { "kept for fallback" };
                r.lines.push(format!(
                    "{name}: ok, version {}, LSN {lsn}, {} entries in {} chunks and {} large values ({role})",
                    s.version, s.entries, s.chunks, s.large_values
                ));
                chosen.get_or_insert(lsn);
            }
            Err(e) => {
                r.lines.push(format!(
                    "{name}: DAMAGED: {e}{}",
                    if chosen.is_none() { " (recovery falls back)" } else { "" }
                ));
                r.damage += 1;
            }
        }
    }
    let from = chosen.unwrap_or(0);
    if chosen.is_none() {
        r.lines.push("no valid snapshot: recovery replays the whole log".to_string());
    }
    // The log from `from + 1`, as recovery reads it.
    let mut segs: Vec<(u64, &PathBuf)> =
        names.iter().filter_map(|(n, p)| parse_segment_file_name(n).map(|l| (l, p))).collect();
    segs.sort();
    let skip = segs.windows(2).take_while(|w| w[1].0 <= from.saturating_add(1)).count();
    if skip > 0 {
        r.lines.push(format!("{skip} segment(s) wholly covered by the snapshot (not read; compaction deletes them)"));
    }
    let segs = &segs[skip..];
    if let Some((first, _)) = segs.first() {
        if *first > from.saturating_add(1) {
            r.lines.push(format!(
                "DAMAGED: the log starts at LSN {first}, after LSN {}: records are missing; recovery refuses to start",
                from + 1
            ));
            r.damage += 1;
            return r;
        }
    }
    let mut scanner = LogScanner::new(shard_id, shard_count);
    let mut records = 0u64;
    for (lsn, path) in segs {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                r.lines.push(format!("{}: unreadable: {e}", path.display()));
                r.damage += 1;
                return r;
            }
        };
        match scanner.push(*lsn, &bytes) {
            Ok(Some(scan)) => records += scan.records().filter(|rec| rec.lsn > from).count() as u64,
            Ok(None) => {}
            Err(e) => {
                r.lines.push(format!("{}: {e}; recovery refuses to start", path.display()));
                r.damage += 1;
                return r;
            }
        }
    }
    let seg_name = |l: u64| crate::wal::segment_file_name(l);
    match scanner.finish() {
        LogOutcome::Clean { next_lsn } => r.lines.push(format!(
            "log: {} segment(s), {records} record(s) to replay after LSN {from}, clean end; next LSN {}",
            segs.len(),
            next_lsn.unwrap_or(1).max(from + 1)
        )),
        LogOutcome::TornTail { segment_lsn, damage } => {
            r.lines.push(format!(
                "log: {records} record(s) to replay; TORN TAIL in {} at offset {} (LSN {}): {}; recovery truncates \
                 there (never acknowledged)",
                seg_name(segment_lsn),
                damage.flush_offset,
                damage.flush_lsn,
                damage.reason
            ));
            r.damage += 1;
        }
        LogOutcome::Corruption(c) => {
            r.lines.push(format!(
                "log: CORRUPTION in {} at offset {} (LSN {}): {}; evidence: {}. Recovery refuses to start; with \
                 --recovery tolerate-corruption it cuts at offset {} (LSN {}) and sets the rest aside",
                seg_name(c.segment_lsn),
                c.damage.offset,
                c.damage.lsn,
                c.damage.reason,
                c.evidence,
                c.damage.flush_offset,
                c.damage.flush_lsn
            ));
            r.damage += 1;
        }
    }
    r
}

/// Verifies a snapshot completely (checksums, then every chunk's archive). Returns the
/// footer's summary.
fn verify_snapshot(path: &Path, lsn: u64, shard_id: u32, shard_count: u32) -> Result<format::Summary, String> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| format!("unreadable: {e}");
    let mut f = std::fs::File::open(path).map_err(unreadable)?;
    let len = usize::try_from(f.metadata().map_err(unreadable)?.len()).map_err(|e| e.to_string())?;
    // Read straight into an aligned buffer (archives are accessed in place): one copy of the
    // file in memory.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(len);
    aligned.resize(len, 0);
    f.read_exact(&mut aligned).map_err(unreadable)?;
    let (h, summary) = format::verify(&aligned).map_err(|c| c.to_string())?;
    if h.lsn != lsn {
        return Err(format!("header LSN {} differs from the file name", h.lsn));
    }
    if h.shard_id != shard_id || h.shard_count != shard_count {
        return Err(format!("written by shard {} of {} (recovery refuses to start)", h.shard_id, h.shard_count));
    }
    let mut scratch = rkyv::util::AlignedVec::new();
    for frame in format::frames(&aligned) {
        // Large values' checksums were checked by `verify`; chunks' archives are checked here.
        if let format::Frame::Chunk(c) = frame.map_err(|e| e.to_string())? {
            format::entries(&c, &mut scratch).map_err(|e| e.to_string())?;
        }
    }
    Ok(summary)
}
