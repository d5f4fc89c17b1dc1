//! Power loss and I/O faults under the real log writer (issue 8).
//!
//! The real [`ShardLog`] (group commit, rotation, preallocation, fail-stop) runs on a glommio
//! executor over the simulated disk of `src/wal/sim.rs`, which keeps what was written apart
//! from what was synced. A small workload of concurrent writers appends records (SET of sizes
//! from a few bytes to several blocks, DEL, EXPIRE, FLUSHALL) and waits for each to be durable,
//! as a `sync` connection does; tiny segments make it rotate often.
//!
//! - **Power loss**: for every operation of the run, and for each way the last write can be
//!   torn at a sector boundary, the disk as a power loss there leaves it is written to a real
//!   directory and recovered with the real recovery code (`replay_dir`, with repair). Then
//!   acknowledged ⊆ recovered ⊆ issued, the recovered records are exactly the first ones
//!   issued (no holes, no changed byte), no crash point looks like corruption, and a real
//!   writer reopened on the repaired directory appends and recovers cleanly.
//! - **I/O faults**: for every k, the k-th disk operation fails with EIO, once, and from then
//!   on. No record is acknowledged unless it is durable; after the failure the log never
//!   touches the disk again (fail-stop, "fsyncgate"); both what a process restart and what a
//!   power loss would find recover with acknowledged ⊆ recovered ⊆ issued, and reopen cleanly.

use glommio::LocalExecutorBuilder;
use ringcache::shard::LocalEvent;
use ringcache::wal::file::{probe_direct_io, IoMode};
use ringcache::wal::replay::{replay_dir, RecoveryStats};
use ringcache::wal::sim::{materialize, SimDisk, SimFault, SimOp};
use ringcache::wal::{Durability, LogConfig, LogFault, Record, RecoveryMode, ShardLog};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// A record the workload appends, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rec {
    Set(Vec<u8>, Vec<u8>, Option<u64>),
    Del(Vec<u8>),
    Expire(Vec<u8>, Option<u64>),
    FlushAll,
}

impl Rec {
    fn record(&self) -> Record<'_> {
        match self {
            Rec::Set(k, v, e) => Record::Set { key: k, value: v, expire_at_ms: *e },
            Rec::Del(k) => Record::Del { key: k },
            Rec::Expire(k, e) => Record::Expire { key: k, expire_at_ms: *e },
            Rec::FlushAll => Record::FlushAll,
        }
    }

    fn of(r: &Record<'_>) -> Rec {
        match r {
            Record::Set { key, value, expire_at_ms } => Rec::Set(key.to_vec(), value.to_vec(), *expire_at_ms),
            Record::Del { key } => Rec::Del(key.to_vec()),
            Record::Expire { key, expire_at_ms } => Rec::Expire(key.to_vec(), *expire_at_ms),
            Record::FlushAll => Rec::FlushAll,
        }
    }
}

const TASKS: usize = 4;
const PER_TASK: usize = 12;
/// 16 KiB segments: three data blocks each, so the run rotates every few flushes.
const SEGMENT_BYTES: u64 = 16 * 1024;

/// Record `i` of task `t`: mostly SETs, of sizes from 10 bytes to about two blocks (a flush
/// then spans several blocks, and two flushes sometimes do not fit a segment).
fn workload_record(t: usize, i: usize) -> Rec {
    let key = format!("t{t}:k{}", i % 4).into_bytes();
    match (t * 7 + i * 3) % 10 {
        0 => Rec::Del(key),
        1 => Rec::Expire(key, Some(4_000_000_000_000 + i as u64)),
        2 if t == 0 && i == 5 => Rec::FlushAll,
        _ => {
            let len = [10, 300, 3000, 7000, 50][(t + i) % 5];
            let byte = b'a' + ((t * PER_TASK + i) % 26) as u8;
            Rec::Set(key, vec![byte; len], None)
        }
    }
}

/// What a workload run did, with the disk's operation count at each step.
#[derive(Debug, Default)]
struct Run {
    /// `(lsn, record, op count when appended)`.
    issued: Vec<(u64, Rec, usize)>,
    /// `(lsn, op count when its durability was reported)`.
    acked: Vec<(u64, usize)>,
    /// A wait that returned an error, or an append refused: the run saw the log fail.
    saw_failure: bool,
    fault: Option<LogFault>,
}

fn cfg(dir: &Path, io_mode: IoMode) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        shard_id: 0,
        shard_count: 1,
        durability: Durability::Sync,
        io_mode,
        segment_bytes: SEGMENT_BYTES,
        buffer_bytes: 1 << 20,
        flush_interval_ms: 10,
    }
}

/// Runs the workload through the real writer on `disk`, as log `dir` starting at `next_lsn`.
async fn run_workload(disk: Rc<SimDisk>, dir: &Path) -> Run {
    let log = ShardLog::on_sim_disk(cfg(dir, IoMode::Direct), 1, disk.clone());
    let stop = Rc::new(LocalEvent::default());
    let flusher = glommio::spawn_local(log.clone().run_flusher(stop.clone()));
    let run = Rc::new(RefCell::new(Run::default()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (log, disk, run) = (log.clone(), disk.clone(), run.clone());
            glommio::spawn_local(async move {
                for i in 0..PER_TASK {
                    // The server refuses a write command when the log does (`write_refusal`).
                    if log.write_refusal().is_some() {
                        run.borrow_mut().saw_failure = true;
                        return;
                    }
                    let rec = workload_record(t, i);
                    let lsn = log.append(&rec.record());
                    run.borrow_mut().issued.push((lsn, rec, disk.op_count()));
                    match log.wait_durable(lsn).await {
                        Ok(()) => run.borrow_mut().acked.push((lsn, disk.op_count())),
                        Err(_) => {
                            run.borrow_mut().saw_failure = true;
                            return;
                        }
                    }
                    if i % 3 == t % 3 {
                        // Let others append meanwhile: group commit puts them in one flush.
                        futures_lite::future::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    stop.set();
    flusher.await;
    let mut r = std::mem::take(&mut *run.borrow_mut());
    r.fault = log.fault();
    r.issued.sort_by_key(|(lsn, ..)| *lsn);
    r
}

/// Recovers `dir` with the real recovery code (repairing as the server does): the records
/// replayed and the LSN the log continues from.
fn recover(dir: &Path) -> Result<(Vec<Rec>, u64, RecoveryStats), String> {
    let mut stats = RecoveryStats::default();
    let mut recs = Vec::new();
    let next = replay_dir(dir, 0, 1, RecoveryMode::Strict, true, 0, &mut stats, |r| recs.push(Rec::of(r)))
        .map_err(|e| e.to_string())?;
    Ok((recs, next, stats))
}

/// acknowledged ⊆ recovered ⊆ issued, and recovered is exactly the first records issued.
fn check_recovered(what: &str, run: &Run, recs: &[Rec], next: u64, acked_upto: usize, issued_upto: usize) {
    let acked = run.acked.iter().filter(|(_, at)| *at <= acked_upto).map(|(lsn, _)| *lsn).max().unwrap_or(0);
    let issued = run.issued.iter().filter(|(.., at)| *at <= issued_upto).count();
    assert!(recs.len() as u64 >= acked, "{what}: acknowledged LSN {acked} lost: only {} records recovered", recs.len());
    assert!(recs.len() <= issued, "{what}: {} records recovered but only {issued} issued", recs.len());
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(run.issued[i].0, i as u64 + 1);
        assert_eq!(r, &run.issued[i].1, "{what}: record {} differs from the one issued", i + 1);
    }
    assert_eq!(next, recs.len() as u64 + 1, "{what}: the log must continue right after the last record");
}

/// A real writer on the recovered `dir` appends two records; recovery then finds all of them.
async fn reopen_and_append(what: &str, dir: &Path, recs: &[Rec], next: u64, io_mode: IoMode) {
    let log = ShardLog::new(cfg(dir, io_mode), next);
    let stop = Rc::new(LocalEvent::default());
    let flusher = glommio::spawn_local(log.clone().run_flusher(stop.clone()));
    let more = [Rec::Set(b"after".to_vec(), b"reopen".to_vec(), None), Rec::Del(b"t0:k1".to_vec())];
    for r in &more {
        let lsn = log.append(&r.record());
        log.wait_durable(lsn).await.unwrap_or_else(|e| panic!("{what}: write after reopen failed: {e}"));
    }
    stop.set();
    flusher.await;
    let (again, _, stats) = recover(dir).unwrap_or_else(|e| panic!("{what}: recovery after reopen: {e}"));
    let want: Vec<Rec> = recs.iter().chain(more.iter()).cloned().collect();
    assert_eq!(again, want, "{what}: the reopened log lost or changed records");
    assert_eq!((stats.torn_tails, stats.corrupt_segments), (0, 0), "{what}: after reopen");
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringcache-powerloss-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn on_executor<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default().spawn(f).expect("start executor").join().expect("executor panicked");
}

/// The simulated directory the writer believes it writes to.
const SIM_DIR: &str = "/sim/gen-0/shard-000";

#[test]
fn power_loss_at_every_sync_point_keeps_acknowledged_records_and_nothing_else() {
    let root = scratch("sweep");
    let r2 = root.clone();
    on_executor(move || async move {
        let root = r2;
        let io_mode = probe_direct_io(&root).expect("probe O_DIRECT");
        let disk = Rc::new(SimDisk::new());
        let run = run_workload(disk.clone(), Path::new(SIM_DIR)).await;
        assert!(run.fault.is_none() && !run.saw_failure);
        assert_eq!(run.acked.len(), TASKS * PER_TASK);
        let ops = disk.ops();
        let syncs = ops.iter().filter(|o| o.is_sync()).count();
        let (mut points, mut torn_points, mut torn_tails, mut flushes_multi) = (0, 0, 0, 0);
        for n in 0..=ops.len() {
            let sectors = disk.write_sectors_before(n).unwrap_or(0);
            flushes_multi += (sectors > 8) as usize;
            // The last write not yet synced: lost whole, or torn after 1, half, all but 1 sectors.
            let mut tears = vec![0];
            if sectors > 1 {
                tears.extend([1, sectors / 2, sectors - 1]);
                tears.dedup();
            }
            for t in tears {
                let what = format!("power loss after op {n} of {} (torn after {t} sectors)", ops.len());
                let dir = root.join(format!("p{n}-{t}"));
                std::fs::create_dir_all(&dir).unwrap();
                materialize(&disk.crash_image(n, t), Path::new(SIM_DIR), &dir).unwrap();
                let (recs, next, stats) = recover(&dir).unwrap_or_else(|e| panic!("{what}: refused: {e}"));
                assert_eq!(stats.corrupt_segments, 0, "{what}");
                torn_tails += stats.torn_tails;
                check_recovered(&what, &run, &recs, next, n, n);
                // Reopening costs real O_DIRECT writes: at every fourth point and every tear.
                if n % 4 == 0 || t > 0 {
                    reopen_and_append(&what, &dir, &recs, next, io_mode).await;
                }
                std::fs::remove_dir_all(&dir).unwrap();
                points += 1;
                torn_points += (t > 0) as usize;
            }
        }
        eprintln!(
            "power loss: {} records ({} acknowledged) in {} disk operations ({syncs} syncs); {points} crash images \
             ({torn_points} with a torn write, {flushes_multi} multi-block writes), {torn_tails} torn tails truncated",
            run.issued.len(),
            run.acked.len(),
            ops.len()
        );
        assert!(syncs >= 20 && torn_points >= 20, "the workload is too small to mean anything");
    });
    let _ = std::fs::remove_dir_all(&root);
}

fn fault_sweep(name: &str, fault: fn(u64) -> SimFault) {
    let root = scratch(name);
    let r2 = root.clone();
    let name = name.to_string();
    on_executor(move || async move {
        let root = r2;
        let io_mode = probe_direct_io(&root).expect("probe O_DIRECT");
        // The number of operations of a run without faults bounds k.
        let clean = Rc::new(SimDisk::new());
        run_workload(clean.clone(), Path::new(SIM_DIR)).await;
        let total = clean.attempts();
        let mut failed_runs = 0;
        for k in 1..=total {
            let what = format!("{name}: op {k} of {total} fails");
            let disk = Rc::new(SimDisk::failing(fault(k)));
            let run = glommio::timer::timeout(Duration::from_secs(20), async {
                Ok::<_, glommio::GlommioError<()>>(run_workload(disk.clone(), Path::new(SIM_DIR)).await)
            })
            .await
            .unwrap_or_else(|e| panic!("{what}: the workload hung: {e}"));
            assert_eq!(disk.failures(), 1, "{what}");
            // Fail-stop: the failed operation was the last one the log attempted.
            assert_eq!(disk.attempts(), k, "{what}: the log touched the disk again after a failure");
            assert!(matches!(run.fault, Some(LogFault::Failed(_))), "{what}: log fault {:?}", run.fault);
            assert!(run.saw_failure, "{what}: no writer saw the failure");
            failed_runs += 1;
            let all = disk.op_count();
            // No acknowledgement without durability: every acknowledged record survives a power
            // loss right now, and a process restart (everything that reached the kernel).
            for (image, label) in [(disk.crash_image(all, 0), "power loss"), (disk.current_image(), "restart")] {
                let what = format!("{what}, then {label}");
                let dir = root.join(format!("k{k}-{label}"));
                std::fs::create_dir_all(&dir).unwrap();
                materialize(&image, Path::new(SIM_DIR), &dir).unwrap();
                let (recs, next, stats) = recover(&dir).unwrap_or_else(|e| panic!("{what}: refused: {e}"));
                assert_eq!(stats.corrupt_segments, 0, "{what}");
                check_recovered(&what, &run, &recs, next, all, all);
                reopen_and_append(&what, &dir, &recs, next, io_mode).await;
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
        eprintln!("{name}: failed each of the {total} disk operations of the workload in turn ({failed_runs} runs)");
        assert!(total >= 20);
    });
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn kth_io_operation_failing_once_never_acknowledges_without_durability() {
    fault_sweep("once", SimFault::Once);
}

#[test]
fn kth_io_operation_failing_for_good_never_acknowledges_without_durability() {
    fault_sweep("from", SimFault::From);
}

/// A SET of a value larger than two write chunks (`WRITE_CHUNK_BYTES`), shared with the log as
/// the store's `Bytes` (not copied), between small records. Its flush is written as three
/// `O_DIRECT | O_DSYNC` chunks; a power loss after any operation, the last write torn or not,
/// recovers exactly the records acknowledged before it (the big one only once its last chunk
/// is durable) and nothing of a flush cut between or inside chunks.
#[test]
fn power_loss_inside_a_multi_chunk_flush_of_a_shared_value_recovers_the_prefix() {
    use ringcache::wal::file::WRITE_CHUNK_BYTES;
    let root = scratch("chunks");
    let r2 = root.clone();
    on_executor(move || async move {
        let root = r2;
        let disk = Rc::new(SimDisk::new());
        let log = ShardLog::on_sim_disk(cfg(Path::new(SIM_DIR), IoMode::Direct), 1, disk.clone());
        let stop = Rc::new(LocalEvent::default());
        let flusher = glommio::spawn_local(log.clone().run_flusher(stop.clone()));
        let value: bytes::Bytes =
            (0..2 * WRITE_CHUNK_BYTES + 9000).map(|i| (i / 511) as u8 ^ i as u8).collect::<Vec<u8>>().into();
        let recs = [
            Rec::Set(b"a".to_vec(), vec![1; 300], None),
            Rec::Del(b"b".to_vec()),
            Rec::Set(b"big".to_vec(), value.to_vec(), Some(4_000_000_000_000)),
            Rec::Set(b"c".to_vec(), vec![2; 5000], None),
        ];
        let mut run = Run::default();
        for r in &recs {
            let shared = matches!(r, Rec::Set(k, ..) if k == b"big").then_some(&value);
            let lsn = log.append_with(&r.record(), shared);
            run.issued.push((lsn, r.clone(), disk.op_count()));
            log.wait_durable(lsn).await.unwrap();
            run.acked.push((lsn, disk.op_count()));
        }
        stop.set();
        flusher.await;
        let ops = disk.ops();
        // The big flush's chunks: the data writes (not a segment header at offset 0) between
        // its append and its acknowledgement. `n` is the operation count just after the write.
        let (appended_at, acked_at) = (run.issued[2].2, run.acked[2].1);
        let big_writes: Vec<usize> = (appended_at + 1..=acked_at)
            .filter(|&n| matches!(&ops[n - 1], SimOp::Write { pos, .. } if *pos > 0))
            .collect();
        assert_eq!(big_writes.len(), 3, "the big flush must be written as three chunks");
        let (big_lsn, big_acked_at) = run.acked[2];
        assert_eq!(big_lsn, 3);
        assert!(big_acked_at > *big_writes.last().unwrap(), "acknowledged before the last chunk was durable");
        let (mut images, mut torn_tails) = (0, 0);
        for n in 0..=ops.len() {
            let sectors = disk.write_sectors_before(n).unwrap_or(0);
            let mut tears = vec![0];
            if big_writes.contains(&n) {
                tears.extend([1, sectors / 2, sectors - 1]);
            }
            for t in tears {
                let what = format!("power loss after op {n} of {} (torn after {t} sectors)", ops.len());
                let dir = root.join(format!("p{n}-{t}"));
                std::fs::create_dir_all(&dir).unwrap();
                materialize(&disk.crash_image(n, t), Path::new(SIM_DIR), &dir).unwrap();
                let (got, next, stats) = recover(&dir).unwrap_or_else(|e| panic!("{what}: refused: {e}"));
                assert_eq!(stats.corrupt_segments, 0, "{what}");
                check_recovered(&what, &run, &got, next, n, n);
                if n >= big_writes[0] && n <= *big_writes.last().unwrap() {
                    // Inside the big flush (its last chunk not yet synced): nothing of it, and
                    // whatever part of it reached the disk is truncated as a torn tail.
                    assert_eq!(got.len(), 2, "{what}: a partly written flush was applied");
                    let nothing_on_disk = n == big_writes[0] && t == 0;
                    assert_eq!(stats.torn_tails, u64::from(!nothing_on_disk), "{what}: the partial flush is torn");
                }
                torn_tails += stats.torn_tails;
                if t > 0 && n == big_writes[1] {
                    reopen_and_append(&what, &dir, &got, next, IoMode::Buffered).await;
                }
                std::fs::remove_dir_all(&dir).unwrap();
                images += 1;
            }
        }
        eprintln!("multi-chunk flush: {} disk operations, {images} crash images, {torn_tails} torn tails", ops.len());
        assert!(torn_tails >= 6);
    });
    let _ = std::fs::remove_dir_all(&root);
}
