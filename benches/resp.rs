//! RESP parser and encoder throughput: a pipeline of 16 SETs (256-byte values), parsed whole
//! and byte-split, and the encoding of GET replies.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringcache::resp::{Limits, Parser, Protocol, ReplyWriter};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pipeline(n: usize, value_bytes: usize) -> Vec<u8> {
    let value = vec![b'x'; value_bytes];
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("key:{i:012}");
        out.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n", key.len(), value.len()).as_bytes());
        out.extend_from_slice(&value);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn parse(c: &mut Criterion) {
    let input = pipeline(16, 256);
    let mut g = c.benchmark_group("resp_parse");
    g.throughput(Throughput::Elements(16));
    g.bench_function("pipeline_16_set_256b", |b| {
        let mut parser = Parser::new(Limits::default());
        let mut cmds = Vec::with_capacity(16);
        b.iter_batched(
            || BytesMut::from(&input[..]),
            |mut buf| {
                parser.parse(&mut buf, &mut cmds).expect("valid");
                assert_eq!(cmds.len(), 16);
                cmds.clear();
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("pipeline_16_set_256b_in_64b_reads", |b| {
        let mut parser = Parser::new(Limits::default());
        let mut cmds = Vec::with_capacity(16);
        b.iter(|| {
            let mut buf = BytesMut::with_capacity(input.len());
            for chunk in input.chunks(64) {
                buf.extend_from_slice(chunk);
                parser.parse(&mut buf, &mut cmds).expect("valid");
            }
            assert_eq!(cmds.len(), 16);
            cmds.clear();
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let value = vec![b'v'; 256];
    let mut g = c.benchmark_group("resp_encode");
    g.throughput(Throughput::Elements(16));
    g.bench_function("16_bulk_replies_256b", |b| {
        let mut out = Vec::with_capacity(8192);
        b.iter(|| {
            out.clear();
            let mut w = ReplyWriter::new(&mut out, Protocol::Resp2);
            for _ in 0..16 {
                w.bulk(&value);
            }
            criterion::black_box(out.len());
        })
    });
    g.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
