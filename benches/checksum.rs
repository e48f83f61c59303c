//! Throughput of the RSL checksum (slice-by-16, long inputs in two lanes) against the bytewise
//! definition.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rsl_engine::format::checksum;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum");
    for size in [64usize, 4096, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("update", size), &data, |b, d| b.iter(|| checksum::checksum(black_box(d))));
        if size == 4096 {
            group.bench_with_input(BenchmarkId::new("bytewise", size), &data, |b, d| {
                b.iter(|| checksum::update_bytewise(checksum::INIT, black_box(d)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
