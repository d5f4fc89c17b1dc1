//! WAL benchmarks: encoding records into a flush buffer, sealing flushes, scanning a segment
//! back (pure, no I/O), and appending to a real shard log on disk (`wal_log`).
//!
//! Run with `cargo bench --bench wal`. The format benches report bytes of encoded records (or of
//! segment) per second, so the numbers compare directly with disk bandwidth; the log benches
//! report time per record.
//!
//! # The log benches (`wal_log/*`)
//! They open a real [`ShardLog`] the way a shard does (same `LogConfig` defaults: 64 MiB
//! preallocated segments, O_DIRECT | O_DSYNC writes, 1 MiB buffer) inside a glommio
//! `LocalExecutor` created by the bench, with the flusher task running beside it. The log lives
//! in a fresh directory under `$RINGCACHE_BENCH_DIR` (default `/var/tmp`, which is on disk on
//! Debian; `/tmp` may be tmpfs, where O_DIRECT is refused and the log would fall back to
//! buffered writes into memory). The directory and the I/O mode are printed, and the directory
//! is removed at the end.
//! - `append_no_wait/{async,sync}`: `ShardLog::append` of one SET (16-byte key, 256-byte
//!   value), the cost on the command path. Only the appends are timed; every 1024 appends the
//!   bench waits (untimed) for the log to be durable, so memory stays bounded.
//! - `append_wait_durable_1`: append one record, then wait until it is durable: one flush per
//!   record, i.e. one 4 KiB O_DIRECT|O_DSYNC write (the WAL's write+fdatasync) plus the task
//!   switches to the flusher and back. This is the floor of a `sync` reply at 1 connection.
//! - `group_commit_64`: 64 appends, then one wait: one flush of 64 records (~19 KiB, 5 blocks).
//!   Reported per record (`elements/s`).
//! - `raw_write_4k/{glommio_dma_dsync,pwrite_dsync}`: the I/O under the log without the log: one
//!   4 KiB write into a fallocated file opened O_DIRECT | O_DSYNC, sequential, through the
//!   log's own file layer (`LogFile::write_durable`: glommio, io_uring) and through a blocking
//!   `pwrite` on the same kind of file. `append_wait_durable_1` minus the first is the log's own
//!   cost; the first minus the second is what the io_uring path costs. (On a kernel that
//!   finishes an O_DSYNC direct write in a per-CPU workqueue, the async path also needs that
//!   CPU to be free: see docs/perf/durability-analysis.txt.)

use std::hint::black_box;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcache::shard::LocalEvent;
use ringcache::wal::file::{probe_direct_io, IoMode, LogFile};
use ringcache::wal::{
    scan_segment, Durability, FlushBuf, LogConfig, LogScanner, Record, SegmentHeader, ShardLog, BLOCK_SIZE,
    SEGMENT_SIZE_BYTES_DEFAULT,
};

const SEGMENT_ID: u64 = 0x0123_4567_89AB_CDEF;
const KEY: &[u8; 16] = b"key:000000000042";

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn set_16_256() -> Record<'static> {
    static VALUE: [u8; 256] = [b'x'; 256];
    Record::Set { key: KEY, value: &VALUE, expire_at_ms: None }
}

/// A segment of `flushes` flushes of `per_flush` SET records, as the writer would produce it,
/// followed by `tail_blocks` zero-filled (preallocated) blocks.
fn build_segment(flushes: usize, per_flush: usize, tail_blocks: usize) -> Vec<u8> {
    let header = SegmentHeader { shard_id: 0, shard_count: 1, first_lsn: 1, segment_id: SEGMENT_ID };
    let mut seg = header.to_block().expect("valid header");
    let mut fb = FlushBuf::with_capacity(1, 1 << 20);
    let record = set_16_256();
    for _ in 0..flushes {
        fb.reset(fb.next_lsn());
        for _ in 0..per_flush {
            fb.append(&record).expect("fits");
        }
        let at = seg.len() as u64;
        seg.extend_from_slice(&fb.finish(SEGMENT_ID, at).expect("aligned").to_vec());
    }
    seg.resize(seg.len() + tail_blocks * BLOCK_SIZE, 0);
    seg
}

fn encode(c: &mut Criterion) {
    let record = set_16_256();
    let record_bytes = record.encoded_len().expect("within limits") as u64;
    let mut g = c.benchmark_group("wal_encode");

    // Appending alone: the cost on the command path.
    const BATCH: usize = 1024;
    g.throughput(Throughput::Bytes(record_bytes * BATCH as u64));
    g.bench_function("append_set_16b_key_256b_value_x1024", |b| {
        let mut fb = FlushBuf::with_capacity(0, 1 << 20);
        b.iter(|| {
            fb.reset(fb.next_lsn());
            for _ in 0..BATCH {
                black_box(fb.append(black_box(&record)).expect("fits"));
            }
        })
    });

    // Appending plus sealing (checksums, flush header, padding): the whole CPU cost of a flush,
    // for a small group commit and a large one.
    for per_flush in [16usize, 1024] {
        g.throughput(Throughput::Bytes(record_bytes * per_flush as u64));
        g.bench_function(format!("append_and_finish_{per_flush}_sets"), |b| {
            let mut fb = FlushBuf::with_capacity(0, 1 << 20);
            b.iter(|| {
                fb.reset(fb.next_lsn());
                for _ in 0..per_flush {
                    fb.append(&record).expect("fits");
                }
                black_box(fb.finish(SEGMENT_ID, BLOCK_SIZE as u64).expect("aligned").len_bytes())
            })
        });
    }
    g.finish();
}

fn scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_scan");
    // About 4 MiB of records in 64-record flushes, then 4 MiB of preallocated zeros that the
    // scan also walks (looking for valid flushes after the end).
    let seg = build_segment(220, 64, 1024);
    g.throughput(Throughput::Bytes(seg.len() as u64));
    g.bench_function("scan_segment_8mib", |b| {
        b.iter(|| {
            let scan = scan_segment(black_box(&seg)).expect("valid header");
            black_box((scan.valid_end, scan.record_count))
        })
    });
    g.bench_function("scan_and_iterate_records_8mib", |b| {
        b.iter(|| {
            let scan = scan_segment(black_box(&seg)).expect("valid header");
            let mut value_bytes = 0usize;
            for r in scan.records() {
                if let Record::Set { value, .. } = r.record {
                    value_bytes += value.len();
                }
            }
            black_box(value_bytes)
        })
    });
    g.bench_function("log_scanner_push_8mib", |b| {
        b.iter_batched(
            || LogScanner::new(0, 1),
            |mut log| {
                let scan = log.push(1, black_box(&seg)).expect("same shard");
                black_box(scan.map(|s| s.record_count));
                black_box(log.finish())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A fresh directory on disk for the log benches (see the module docs), removed on drop.
struct BenchDir(PathBuf);

impl BenchDir {
    fn new() -> BenchDir {
        let base = std::env::var_os("RINGCACHE_BENCH_DIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        let dir = base.join(format!("ringcache-wal-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the bench directory (set RINGCACHE_BENCH_DIR)");
        BenchDir(dir)
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shard log in its own subdirectory of `root`, configured as the server's defaults would
/// (`--wal-segment-bytes 64MiB --wal-buffer-bytes 1MiB --wal-flush-interval-ms 100`), with its
/// flusher task spawned on the current executor. Returns the log and the flusher's stop event.
fn open_log(root: &std::path::Path, name: &str, durability: Durability) -> (Rc<ShardLog>, Rc<LocalEvent>) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("create log dir");
    let io_mode = probe_direct_io(&dir).expect("probe O_DIRECT");
    let cfg = LogConfig {
        dir,
        shard_id: 0,
        shard_count: 1,
        durability,
        io_mode,
        segment_bytes: SEGMENT_SIZE_BYTES_DEFAULT,
        buffer_bytes: 1 << 20,
        flush_interval_ms: 100,
    };
    let log = ShardLog::new(cfg, 1);
    let stop = Rc::new(LocalEvent::default());
    glommio::spawn_local(log.clone().run_flusher(stop.clone())).detach();
    (log, stop)
}

/// A file opened O_DIRECT | O_DSYNC for blocking writes, fallocated to `bytes` and synced.
fn raw_pwrite_file(path: &std::path::Path, bytes: u64) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)
        .expect("open O_DIRECT");
    // SAFETY: a valid open fd.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
    f.sync_all().expect("fsync");
    f
}

fn log_append(c: &mut Criterion) {
    let dir = BenchDir::new();
    let mode = probe_direct_io(&dir.0).expect("probe O_DIRECT");
    eprintln!("wal_log: logs under {} ({mode:?} I/O)", dir.0.display());
    let ex = glommio::LocalExecutorBuilder::default().make().expect("glommio executor");
    let record = set_16_256();
    let mut g = c.benchmark_group("wal_log");
    // Disk-bound benches take ~0.1-1 ms an iteration: fewer, longer samples.
    g.sample_size(30).measurement_time(Duration::from_secs(5));

    g.throughput(Throughput::Elements(1));
    for (name, durability) in [("async", Durability::Async), ("sync", Durability::Sync)] {
        let (log, stop) = ex.run(async { open_log(&dir.0, &format!("append-{name}"), durability) });
        g.bench_function(format!("append_no_wait/{name}"), |b| {
            b.iter_custom(|iters| {
                ex.run(async {
                    let mut timed = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(1024);
                        let t = Instant::now();
                        for _ in 0..n {
                            black_box(log.append(black_box(&record)));
                        }
                        timed += t.elapsed();
                        left -= n;
                        log.wait_all_durable().await.expect("log write failed");
                    }
                    timed
                })
            })
        });
        ex.run(async {
            stop.set();
            log.wait_all_durable().await.expect("log write failed");
        });
    }

    let (log, stop) = ex.run(async { open_log(&dir.0, "sync-1", Durability::Sync) });
    g.bench_function("append_wait_durable_1", |b| {
        b.iter_custom(|iters| {
            ex.run(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let lsn = log.append(&record);
                    log.wait_durable(lsn).await.expect("log write failed");
                }
                t.elapsed()
            })
        })
    });
    ex.run(async { stop.set() });

    const GROUP: u64 = 64;
    g.throughput(Throughput::Elements(GROUP));
    let (log, stop) = ex.run(async { open_log(&dir.0, "sync-64", Durability::Sync) });
    g.bench_function("group_commit_64", |b| {
        b.iter_custom(|iters| {
            ex.run(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let mut lsn = 0;
                    for _ in 0..GROUP {
                        lsn = log.append(&record);
                    }
                    log.wait_durable(lsn).await.expect("log write failed");
                }
                t.elapsed()
            })
        })
    });
    ex.run(async { stop.set() });

    // The I/O alone, into fallocated space as a segment's writes are. The files are 256 MiB
    // (65536 writes); a longer run wraps around and overwrites from the start.
    g.throughput(Throughput::Elements(1));
    const RAW_BYTES: u64 = 256 << 20;
    let block = vec![0xA5u8; BLOCK_SIZE];
    if mode == IoMode::Direct {
        let path = dir.0.join("raw-glommio.log");
        let file = ex.run(async {
            let f = LogFile::create(&path, IoMode::Direct).await.expect("create");
            f.preallocate(RAW_BYTES).await.expect("fallocate");
            f
        });
        let mut pos = 0u64;
        g.bench_function("raw_write_4k/glommio_dma_dsync", |b| {
            b.iter_custom(|iters| {
                ex.run(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        file.write_durable(&block, pos).await.expect("write");
                        pos = (pos + BLOCK_SIZE as u64) % RAW_BYTES;
                    }
                    t.elapsed()
                })
            })
        });
        ex.run(async { file.close().await.expect("close") });

        let file = raw_pwrite_file(&dir.0.join("raw-pwrite.log"), RAW_BYTES);
        let mut aligned = vec![0u8; 2 * BLOCK_SIZE];
        let off = aligned.as_ptr().align_offset(BLOCK_SIZE);
        let aligned = &mut aligned[off..off + BLOCK_SIZE];
        aligned.copy_from_slice(&block);
        let mut pos = 0u64;
        g.bench_function("raw_write_4k/pwrite_dsync", |b| {
            b.iter(|| {
                use std::os::unix::fs::FileExt;
                file.write_at(aligned, pos).expect("pwrite");
                pos = (pos + BLOCK_SIZE as u64) % RAW_BYTES;
            })
        });
    }
    g.finish();
    // Let the flushers see their stop events and exit before the files go.
    ex.run(glommio::timer::sleep(Duration::from_millis(10)));
    drop(dir);
}

criterion_group!(benches, encode, scan, log_append);
criterion_main!(benches);
