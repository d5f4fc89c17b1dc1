//! WAL format benchmarks: encoding records into a flush buffer, sealing flushes, and scanning
//! a segment back.
//!
//! Run with `cargo bench --bench wal`. Throughput is reported in bytes of encoded records (or of
//! segment) per second, so the numbers compare directly with disk bandwidth.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcache::wal::{scan_segment, FlushBuf, LogScanner, Record, SegmentHeader, BLOCK_SIZE};

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
        seg.extend_from_slice(fb.finish(SEGMENT_ID, at).expect("aligned"));
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
                black_box(fb.finish(SEGMENT_ID, BLOCK_SIZE as u64).expect("aligned").len())
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

criterion_group!(benches, encode, scan);
criterion_main!(benches);
