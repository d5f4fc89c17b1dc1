//! Snapshot format benchmarks: encoding a chunk of entries (rkyv archive, optional lz4, framing
//! and checksums) and decoding it back (checksum, optional decompression, checked access, and a
//! walk over every entry as recovery does before inserting).
//!
//! Run with `cargo bench --bench snapshot`. Throughput is in bytes of keys and values per
//! second, so the numbers compare directly with disk bandwidth and with recovery's MB/s.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcache::snapshot::format::{entries, frames, verify, Compression, Encoder, EntryRef, Frame, Header};
use rkyv::util::AlignedVec;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// About one chunk's worth (256 KiB of keys and values): 16-byte keys, 64-byte values with some
/// repetition, as a cache of small strings holds.
fn items() -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..3300u32)
        .map(|i| (format!("key:{i:012}").into_bytes(), format!("value-{i}-{}", "abcdefgh".repeat(7)).into_bytes()))
        .collect()
}

fn encode(items: &[(Vec<u8>, Vec<u8>)], compression: Compression) -> AlignedVec {
    let refs: Vec<EntryRef<'_>> = items.iter().map(|(k, v)| EntryRef::new(k, v, None)).collect();
    let header = Header { shard_id: 0, shard_count: 1, lsn: 1, created_ms: 0, compression };
    let mut out = Vec::with_capacity(1 << 20);
    let mut enc = Encoder::new(&header, &mut out);
    enc.chunk(&refs, &mut out).expect("encodes");
    enc.finish(1, &mut out).expect("finishes");
    let mut a = AlignedVec::new();
    a.extend_from_slice(&out);
    a
}

fn bench(c: &mut Criterion) {
    let items = items();
    let payload: usize = items.iter().map(|(k, v)| k.len() + v.len()).sum();
    let refs: Vec<EntryRef<'_>> = items.iter().map(|(k, v)| EntryRef::new(k, v, None)).collect();
    let mut g = c.benchmark_group("snapshot_chunk");
    g.throughput(Throughput::Bytes(payload as u64));
    for (name, compression) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
        let header = Header { shard_id: 0, shard_count: 1, lsn: 1, created_ms: 0, compression };
        let mut out = Vec::with_capacity(1 << 20);
        g.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| {
                out.clear();
                let mut enc = Encoder::new(&header, &mut out);
                enc.chunk(black_box(&refs), &mut out).expect("encodes");
                black_box(out.len())
            })
        });
        let file = encode(&items, compression);
        eprintln!("{name}: {payload} bytes of entries -> {} bytes of file", file.len());
        let mut scratch = AlignedVec::new();
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                verify(black_box(&file)).expect("valid");
                let mut n = 0usize;
                for frame in frames(&file) {
                    let Frame::Chunk(chunk) = frame.expect("valid frame") else { continue };
                    for e in entries(&chunk, &mut scratch).expect("valid archive").iter() {
                        n += e.key_bytes().len() + e.value_bytes().len() + e.expire_at().is_some() as usize;
                    }
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
