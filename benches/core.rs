//! Throughput of the sans-IO Paxos core alone: three replicas in one process, an in-memory
//! FIFO transport that loses nothing, and in-memory storage on which every `Persist` is durable
//! the moment it is asked for. No encoding, no syscalls, no threads: what is measured is the
//! protocol core (plus this driver), i.e. the ceiling the core puts on a real ring.
//!
//! A primary is elected on a virtual clock, then 64-byte requests are submitted in bursts so
//! that thousands stay queued behind the outstanding vote and batch into decrees as RSL
//! batches them. The clock stops when every request has executed on all three replicas.
//!
//! `cargo bench --bench core` prints requests/second and the average batch size. Environment:
//! `CORE_BENCH_REQUESTS` (default 4,000,000), `CORE_BENCH_BURST` (default 4096),
//! `CORE_BENCH_QUEUED` (default 65,536: submit only while fewer are waiting), `CORE_BENCH_RUNS`
//! (default 3; the best and the median run are reported).

use bytes::Bytes;
use rsl_engine::format::{ConfigInfo, MemberId, MemberSet, Message, MsgKind, Node as Member};
use rsl_engine::paxos::{Action, Application, Dest, Input, Micros, Replica};
use rsl_engine::sim::sim_core_config;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const REQUEST_BYTES: usize = 64;
/// Records kept per replica for `FetchVotes` (only needed if a replica falls behind, which a
/// lossless FIFO network never causes; kept so the driver is complete).
const LOG_KEEP: usize = 64;

struct BenchApp;
impl Application for BenchApp {}

struct Node {
    replica: Replica,
    /// In-memory "disk": the newest records, oldest first.
    log: VecDeque<Arc<Message>>,
    /// The highest persist asked for; it is durable at once.
    persisted: u64,
    durable: u64,
    /// Sends gated on a persist (`after` > `durable`), released when it is acknowledged.
    held: Vec<(u64, Dest, Arc<Message>)>,
    /// Requests and decrees this replica executed, and cookies returned to it.
    executed_requests: u64,
    executed_decrees: u64,
    nonempty_decrees: u64,
    cookies_returned: u64,
}

struct Cluster {
    now: Micros,
    ids: Vec<MemberId>,
    nodes: Vec<Node>,
    /// The network: (to, from, message), delivered in order, never lost.
    net: VecDeque<(usize, usize, Arc<Message>)>,
    /// Scratch action buffer, reused.
    scratch: Vec<Action>,
    /// Learned records to hand back: (node, from, records).
    learned: VecDeque<(usize, usize, Vec<Arc<Message>>)>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let ids: Vec<MemberId> = (1..=n).map(|i| MemberId::new(&format!("replica-{i}")).unwrap()).collect();
        let cfg = sim_core_config();
        // Configuration 1 from decree 0: the legacy member list (addresses are nominal).
        let members = MemberSet {
            nodes: ids
                .iter()
                .enumerate()
                .map(|(i, &id)| Member {
                    id,
                    ip: Ipv4Addr::new(127, 0, 0, i as u8 + 1),
                    rsl_port: 20000 + 10 * i as u16,
                    learn_port: 20001 + 10 * i as u16,
                    app_port: 0,
                    host_name: Bytes::from(format!("node{i}")),
                })
                .collect(),
            cookie: Bytes::new(),
        };
        let config = ConfigInfo { number: 1, initial_decree: 0, members };
        let nodes = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Node {
                replica: Replica::new(cfg.clone(), id, config.clone(), 0x5eed ^ i as u64),
                log: VecDeque::new(),
                persisted: 0,
                durable: 0,
                held: Vec::new(),
                executed_requests: 0,
                executed_decrees: 0,
                nonempty_decrees: 0,
                cookies_returned: 0,
            })
            .collect();
        let mut c = Cluster { now: 0, ids, nodes, net: VecDeque::new(), scratch: Vec::new(), learned: VecDeque::new() };
        for i in 0..n {
            let mut out = std::mem::take(&mut c.scratch);
            c.nodes[i].replica.start(c.now, &mut BenchApp, &mut out);
            c.apply(i, out);
        }
        c
    }

    fn index(&self, id: MemberId) -> usize {
        self.ids.iter().position(|m| *m == id).expect("a member")
    }

    fn step(&mut self, i: usize, input: Input) {
        let mut out = std::mem::take(&mut self.scratch);
        self.nodes[i].replica.step(self.now, input, &mut BenchApp, &mut out);
        self.apply(i, out);
    }

    fn transmit(&mut self, from: usize, to: Dest, msg: Arc<Message>) {
        match to {
            Dest::All => {
                for t in 0..self.nodes.len() {
                    if t != from {
                        self.net.push_back((t, from, msg.clone()));
                    }
                }
            }
            Dest::One(id) => {
                let t = self.index(id);
                self.net.push_back((t, from, msg));
            }
        }
    }

    /// Carries out a replica's actions; every persist is durable as soon as the batch of
    /// actions has been applied, which is acknowledged with `Input::Durable`.
    fn apply(&mut self, i: usize, mut out: Vec<Action>) {
        for action in out.drain(..) {
            match action {
                Action::Send { to, msg, after } => {
                    if after > self.nodes[i].durable {
                        self.nodes[i].held.push((after, to, msg));
                    } else {
                        self.transmit(i, to, msg);
                    }
                }
                Action::Persist { seq, record } => {
                    let n = &mut self.nodes[i];
                    n.persisted = seq;
                    if n.log.len() == LOG_KEEP {
                        n.log.pop_front();
                    }
                    n.log.push_back(record);
                }
                Action::Execute { vote, cookies } => {
                    let n = &mut self.nodes[i];
                    let requests = vote.as_vote().map_or(0, |v| v.requests.len()) as u64;
                    n.executed_requests += requests;
                    n.executed_decrees += 1;
                    n.nonempty_decrees += (requests > 0) as u64;
                    n.cookies_returned += cookies.len() as u64;
                }
                Action::Abort { .. } => panic!("no request is aborted in a fault-free run"),
                Action::ShutDown => panic!("nobody relinquishes in this run"),
                Action::Rejected { reason, .. } => panic!("an honest ring's message was refused: {reason:?}"),
                Action::ConfigurationChanged { .. } | Action::Defunct(_) => {}
                Action::SaveCheckpoint(_) | Action::FetchCheckpoint { .. } | Action::LoadCheckpoint(_) | Action::RollLog => {
                    panic!("no checkpoint is taken: the bench never rolls the log")
                }
                Action::NotifyStatus { .. } | Action::NotifyPrimaryRecovered => {}
                Action::FetchVotes { from, decree } => {
                    let src = self.index(from);
                    let log = &self.nodes[src].log;
                    let start = log.iter().rposition(|r| r.kind() == MsgKind::Vote && r.header.decree == decree);
                    let records = start.map_or(Vec::new(), |s| log.iter().skip(s).cloned().collect());
                    self.learned.push_back((i, src, records));
                }
            }
        }
        self.scratch = out;
        // The disk is instantaneous: everything asked for is durable now.
        let n = &mut self.nodes[i];
        if n.persisted > n.durable {
            let seq = n.persisted;
            n.durable = seq;
            let held = std::mem::take(&mut n.held);
            for (_, to, msg) in held {
                self.transmit(i, to, msg);
            }
            self.step(i, Input::Durable(seq));
        }
    }

    /// Delivers the messages in flight now (not those they cause): one network round.
    fn deliver_round(&mut self) -> usize {
        let n = self.net.len();
        for _ in 0..n {
            let (to, from, msg) = self.net.pop_front().expect("counted");
            let from = self.ids[from];
            self.step(to, Input::Message { from, msg });
        }
        while let Some((node, from, records)) = self.learned.pop_front() {
            let from = self.ids[from];
            self.step(node, Input::Learned { from, records });
        }
        n
    }

    /// Delivers until nothing is in flight.
    fn settle(&mut self) {
        while self.deliver_round() > 0 || !self.learned.is_empty() {}
    }

    /// Ticks every replica whose timer is due.
    fn tick_due(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.next_wakeup() <= self.now {
                self.step(i, Input::Tick);
            }
        }
    }

    fn primary(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.nodes[i].replica.is_primary())
    }

    /// Runs the virtual clock, timer to timer, until a primary is elected.
    fn elect(&mut self) -> usize {
        for _ in 0..100_000 {
            self.settle();
            if let Some(p) = self.primary() {
                return p;
            }
            let wake = self.nodes.iter().map(|n| n.replica.next_wakeup()).min().expect("nodes");
            self.now = self.now.max(wake).max(self.now + 1);
            self.tick_due();
        }
        panic!("no primary elected");
    }
}

struct Run {
    requests: u64,
    elapsed: Duration,
    nonempty_decrees: u64,
    decrees: u64,
}

fn run(total: u64, burst: u64, max_queued: u64) -> Run {
    let mut c = Cluster::new(3);
    let p = c.elect();
    let base_requests: Vec<u64> = c.nodes.iter().map(|n| n.executed_requests).collect();
    let base_decrees = (c.nodes[p].executed_decrees, c.nodes[p].nonempty_decrees);
    let executed_all = |c: &Cluster| -> u64 { c.nodes.iter().zip(&base_requests).map(|(n, b)| n.executed_requests - b).min().unwrap() };

    let started = Instant::now();
    let mut submitted = 0u64;
    let mut out = Vec::new();
    let mut req = [0xabu8; REQUEST_BYTES];
    while executed_all(&c) < total {
        let waiting = submitted - (c.nodes[p].executed_requests - base_requests[p]);
        if submitted < total && waiting < max_queued {
            let n = burst.min(total - submitted);
            for _ in 0..n {
                // A distinct 64-byte request, as an application would hand one over.
                req[..8].copy_from_slice(&submitted.to_le_bytes());
                let request = Bytes::copy_from_slice(&req);
                c.nodes[p].replica.submit(c.now, request, submitted, false, &mut out).expect("the primary takes requests");
                submitted += 1;
            }
            c.apply(p, std::mem::take(&mut out));
        }
        if c.deliver_round() == 0 && submitted == total {
            // Everything is chosen; the secondaries execute the last decree once the next one
            // arrives: let the primary's heartbeat carry it.
            c.now = c.nodes[p].replica.next_wakeup().max(c.now);
            c.tick_due();
        } else {
            c.now += 1;
        }
    }
    let elapsed = started.elapsed();
    let primary = &c.nodes[p];
    assert_eq!(primary.cookies_returned, total, "every cookie returns through an execution on the primary");
    assert!(c.nodes.iter().all(|n| n.replica.next_execute() >= primary.replica.next_execute() - 1));
    Run {
        requests: total,
        elapsed,
        decrees: primary.executed_decrees - base_decrees.0,
        nonempty_decrees: primary.nonempty_decrees - base_decrees.1,
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing, and then one small
    // run is enough to show the bench works.
    let benching = std::env::args().any(|a| a == "--bench");
    let total = if benching { env("CORE_BENCH_REQUESTS", 4_000_000) } else { 100_000 };
    let burst = env("CORE_BENCH_BURST", 4096);
    let max_queued = env("CORE_BENCH_QUEUED", 65_536);
    let runs = if benching { env("CORE_BENCH_RUNS", 3).max(1) } else { 1 };

    println!("core: 3 replicas, in-memory FIFO transport, instantly durable in-memory log");
    println!("core: {total} requests of {REQUEST_BYTES} bytes, bursts of {burst}, at most {max_queued} waiting");
    let mut rates = Vec::new();
    for i in 0..runs {
        let r = run(total, burst, max_queued);
        let rate = r.requests as f64 / r.elapsed.as_secs_f64();
        println!(
            "core run {}: {} requests executed on all 3 replicas in {:.3} s = {:.0} requests/s; {} decrees ({} with requests), {:.1} requests per decree",
            i + 1,
            r.requests,
            r.elapsed.as_secs_f64(),
            rate,
            r.decrees,
            r.nonempty_decrees,
            r.requests as f64 / r.nonempty_decrees.max(1) as f64,
        );
        rates.push(rate);
    }
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("core: throughput {:.0} requests/s (median of {runs}), best {:.0} requests/s", rates[rates.len() / 2], rates[rates.len() - 1]);
}
