//! Store operations on a table of 1M keys (15-byte keys, 32-byte values, the memory
//! benchmark's shape): GET hits, SET overwrites, inserts with growth, and a full SCAN.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcache::store::Store;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEYS: u64 = 1_000_000;

fn key(i: u64) -> [u8; 15] {
    let mut k = *b"key:00000000000";
    let mut n = i;
    for d in k[4..].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

fn filled() -> Store {
    let mut s = Store::new(42);
    for i in 0..KEYS {
        s.set(&key(i), &[b'v'; 32], None, 0);
    }
    s
}

fn ops(c: &mut Criterion) {
    let mut store = filled();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("get_hit_1m_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            criterion::black_box(store.get(&key(i), 0).map(|e| e.value_len()));
        })
    });
    g.bench_function("set_overwrite_1m_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            store.set(&key(i), &[b'w'; 32], None, 0);
        })
    });
    g.bench_function("get_miss_1m_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            criterion::black_box(store.get(&key(KEYS + i), 0).is_some());
        })
    });
    g.finish();

    let mut g = c.benchmark_group("store_bulk");
    g.sample_size(10);
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("insert_100k_with_growth", |b| {
        b.iter_batched(
            || Store::new(1),
            |mut s| {
                for i in 0..100_000 {
                    s.set(&key(i), &[b'v'; 32], None, 0);
                }
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.throughput(Throughput::Elements(KEYS));
    g.bench_function("scan_1m_keys", |b| {
        b.iter(|| {
            let mut cursor = 0;
            let mut n = 0u64;
            loop {
                cursor = store.scan(cursor, 0, |_| n += 1);
                if cursor == 0 {
                    break;
                }
            }
            assert_eq!(n, KEYS);
        })
    });
    g.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);
