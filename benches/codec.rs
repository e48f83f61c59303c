//! Encode and decode cost of a batched vote: the message the hot path builds, logs and sends.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rsl_engine::format::{Ballot, Body, Checksum, Header, MemberId, Message, Version, VoteBody};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let id = MemberId::new("replica-1").unwrap();
    let requests: Vec<Bytes> = (0..1000u32).map(|i| Bytes::from(vec![i as u8; 64])).collect();
    let vote =
        Message::new(Header::new(Version::V6, id, 42, 1, Ballot::new(7, id)), Body::Vote(VoteBody { requests, ..Default::default() }));
    let encoded = vote.encode(Checksum::Default).unwrap();
    let mut group = c.benchmark_group("vote_1000x64B");
    group.throughput(Throughput::Elements(1000));
    let mut out = BytesMut::with_capacity(encoded.len());
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&vote).encode_into(&mut out, Checksum::Default).unwrap()
        })
    });
    group.bench_function("decode", |b| b.iter(|| Message::decode(black_box(&encoded)).unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
