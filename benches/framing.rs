//! RFC 4571 framing, by frame size: cutting a read into frames (in place), and framing an
//! egress packet (writing the 2-byte prefix into its headroom).

use std::hint::black_box;

use corecast::wire::framing::{FrameReader, PREFIX_LEN, write_prefix};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A 64 KiB read holding as many whole `size`-byte frames as fit, then half of one more.
fn stream_of(size: usize) -> Vec<u8> {
    let mut stream = Vec::new();
    while stream.len() + PREFIX_LEN + size <= 65536 {
        stream.extend_from_slice(&(size as u16).to_be_bytes());
        stream.extend(std::iter::repeat_n(0x42u8, size));
    }
    stream.extend_from_slice(&(size as u16).to_be_bytes());
    stream.extend(std::iter::repeat_n(0x42u8, size / 2));
    stream
}

fn cut(c: &mut Criterion) {
    for size in [100usize, 500, 1200] {
        let stream = stream_of(size);
        let frames = stream.len() / (size + PREFIX_LEN);
        let mut group = c.benchmark_group(format!("framing/cut/{size}B"));
        group.throughput(Throughput::Elements(frames as u64));
        let mut buf = stream.clone();
        group.bench_function("feed_64KiB_read", |b| {
            b.iter(|| {
                let mut reader = FrameReader::new(2048);
                let mut count = 0usize;
                reader
                    .feed(black_box(&mut buf), |f| count += f.len())
                    .unwrap();
                black_box(count)
            })
        });
        group.finish();
    }
}

fn frame(c: &mut Criterion) {
    let mut buffer = vec![0u8; 2048];
    let mut group = c.benchmark_group("framing/write_prefix");
    group.throughput(Throughput::Elements(1));
    group.bench_function("1200B", |b| {
        b.iter(|| {
            write_prefix(black_box(&mut buffer), black_box(1200));
        })
    });
    group.finish();
}

criterion_group!(benches, cut, frame);
criterion_main!(benches);
