//! Throughput of the journal with group commit: one thread appends votes carrying one 64-byte
//! request each, with `fdatasync` on. `streaming` appends without waiting and stops the clock
//! when the last is durable (batches grow as large as the disk makes them); `one_at_a_time`
//! waits for each record to be durable before the next (one sync per record: the disk's sync
//! latency). Criterion reports records/second; the bench also prints syncs/second and records
//! per sync.
//!
//! `eight_rings/own_writers` and `eight_rings/shared_writer`: eight journals in their own
//! directories, each appended to by a thread of its own one record at a time (eight idle rings'
//! commits), each journal with a writer thread of its own, then all eight sharing one
//! `JournalGroup`. Criterion reports the records/second of the eight together.
//!
//! `cargo bench --bench journal`. The logs go to a directory under `$TMPDIR` (removed after).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rsl_engine::format::{Ballot, Body, Header, MemberId, Message, Version, VoteBody};
use rsl_engine::runtime::journal::{Journal, JournalGroup, JournalOptions};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The highest durable sequence number, and a condvar to wait for it.
#[derive(Default)]
struct Durable {
    seq: Mutex<u64>,
    changed: Condvar,
}

impl Durable {
    fn wait_for(&self, seq: u64) {
        let mut at = self.seq.lock().unwrap();
        while *at < seq {
            at = self.changed.wait(at).unwrap();
        }
    }
}

/// A journal in a fresh directory, the vote it appends, and what was measured.
struct Bench {
    journal: Journal,
    durable: Arc<Durable>,
    vote: Message,
    seq: u64,
    elapsed: Duration,
    records: u64,
    syncs_before: u64,
}

impl Bench {
    fn new(dir: &std::path::Path) -> Bench {
        Bench::in_group(dir, None)
    }

    fn in_group(dir: &std::path::Path, group: Option<JournalGroup>) -> Bench {
        let durable = Arc::new(Durable::default());
        let reported = durable.clone();
        let on_durable = move |seq| {
            *reported.seq.lock().unwrap() = seq;
            reported.changed.notify_all();
        };
        let opts = JournalOptions { sync: true, group, ..JournalOptions::new(dir) };
        let (journal, _) = Journal::open(opts, None, on_durable, |e| panic!("journal failed: {e}")).expect("journal opens");
        let id = MemberId::new("1").unwrap();
        let body = Body::Vote(VoteBody { requests: vec![Bytes::from(vec![7u8; 64])], ..Default::default() });
        let vote = Message::new(Header::new(Version::V6, id, 0, 1, Ballot::new(1, id)), body);
        let syncs_before = journal.syncs();
        Bench { journal, durable, vote, seq: 0, elapsed: Duration::ZERO, records: 0, syncs_before }
    }

    fn append(&mut self) {
        self.seq += 1;
        self.vote.header.decree = self.seq;
        self.journal.append(self.seq, &self.vote).expect("append");
    }

    fn run(&mut self, iters: u64, wait_each: bool) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            self.append();
            if wait_each {
                self.durable.wait_for(self.seq);
            }
        }
        self.durable.wait_for(self.seq);
        let took = start.elapsed();
        self.elapsed += took;
        self.records += iters;
        took
    }

    fn report(self, name: &str) {
        let syncs = self.journal.syncs() - self.syncs_before;
        self.journal.close().expect("journal closes");
        let secs = self.elapsed.as_secs_f64();
        eprintln!(
            "journal/{name}: {} records in {secs:.2} s: {:.0} records/s, {:.0} syncs/s, {:.1} records per sync",
            self.records,
            self.records as f64 / secs,
            syncs as f64 / secs,
            self.records as f64 / syncs.max(1) as f64
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(6));
    for (name, wait_each) in [("streaming", false), ("one_at_a_time", true)] {
        let dir = std::env::temp_dir().join(format!("rsl-journal-bench-{}-{name}", std::process::id()));
        let mut bench = Bench::new(&dir);
        group.bench_function(name, |b| b.iter_custom(|iters| bench.run(iters, wait_each)));
        bench.report(name);
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

/// Eight journals, each with its appending thread, one record at a time: own writer threads
/// against one shared writer.
fn eight_rings(c: &mut Criterion) {
    let mut group = c.benchmark_group("eight_rings");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(6));
    for (name, shared) in [("own_writers", false), ("shared_writer", true)] {
        let root = std::env::temp_dir().join(format!("rsl-journal-bench-{}-{name}", std::process::id()));
        let writer = shared.then(JournalGroup::new);
        let benches: Vec<Mutex<Bench>> = (0..8).map(|k| Mutex::new(Bench::in_group(&root.join(k.to_string()), writer.clone()))).collect();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for bench in &benches {
                        s.spawn(|| bench.lock().unwrap().run(iters.div_ceil(8), true));
                    }
                });
                start.elapsed()
            })
        });
        let (records, syncs): (u64, u64) = benches
            .iter()
            .map(|b| b.lock().unwrap())
            .map(|b| (b.records, b.journal.syncs() - b.syncs_before))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        eprintln!("eight_rings/{name}: {records} records, {syncs} syncs");
        benches.into_iter().for_each(|b| b.into_inner().unwrap().journal.close().expect("journal closes"));
        let _ = std::fs::remove_dir_all(&root);
    }
    group.finish();
}

criterion_group!(benches, bench, eight_rings);
criterion_main!(benches);
