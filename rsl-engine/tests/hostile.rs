//! Issue 9's attacks on a live 3-replica `rsl-kv` cluster on 127.0.0.1, made as a host on the
//! same network would: garbage, forged and extreme Paxos messages, floods of connections,
//! giant partial frames and never-reading clients on every port, a joiner without a
//! checkpoint, a failing disk. After each attack every replica is alive, writes succeed
//! within `WRITE_BOUND`, no replica's resident memory passes `RSS_BOUND_KIB` and the
//! replicas agree. Forged messages are built with the crate's own encoders
//! (`rsl_engine::format`); only the malformed ones are put together by hand.

#[path = "../src/bin/rsl-kv/client.rs"]
mod client;
#[path = "../src/bin/rsl-kv/proto.rs"]
mod proto;
mod support;

use bytes::{BufMut, Bytes, BytesMut};
use client::{Conn, LoadSpec, Progress};
use proto::Status;
use rsl_engine::format::message::StatusBody;
use rsl_engine::format::{Ballot, Body, Checksum, Header, MemberId, MemberSet, Message, MsgKind, Version, VoteBody};
use rsl_engine::runtime::transport::frame;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{fd_count, proc_kib, rt, status, verify_within, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

/// Writes must succeed within this after each attack (two election delays and then some).
const WRITE_BOUND: Duration = Duration::from_secs(20);
/// Replicas must hold the same state within this after the last write.
const AGREE_BOUND: Duration = Duration::from_secs(30);
/// No replica's resident memory may pass this. A debug-build replica holds about 10 MiB
/// idle and 30 MiB under full load; four 90 MiB partial frames would take it past 380 MiB.
const RSS_BOUND_KIB: u64 = 300 << 10;
/// A frame that never completes is closed within this (`slow_sender_timeout_sec`, 30 s, and
/// some slack).
const SLOW_BOUND: Duration = Duration::from_secs(45);
/// A connection that sends nothing is closed within this (`idle_connection_timeout_sec`, 60 s,
/// and some slack).
const IDLE_BOUND: Duration = Duration::from_secs(75);
/// Descriptors a replica may hold while 5,000 connections are opened to each of two of its
/// ports: the per-port connection cap (assumed at most about 1,000) plus its own files.
const FD_BOUND: usize = 3_000;

// ---------------------------------------------------------------------------------------------
// The cluster under attack, writes, memory.

/// A 3-replica cluster (and `spares` outside it) whose replicas log to files; `setup` may
/// change how each is launched before it starts.
fn cluster(spares: usize, setup: impl FnOnce(&mut Cluster)) -> Cluster {
    let mut c = Cluster::new(3, spares, &[]);
    c.log_to_files = true;
    setup(&mut c);
    for i in 0..3 {
        c.spawn(i, true);
    }
    c
}

/// Waits (bounded) for a primary, failing at once if a replica died.
async fn leader(c: &mut Cluster) -> usize {
    let until = Instant::now() + WRITE_BOUND;
    loop {
        c.assert_alive();
        if let Ok(Some(p)) = timeout(Duration::from_secs(5), client::find_primary(&c.running())).await {
            return c.index_of(p);
        }
        assert!(Instant::now() < until, "no primary within {WRITE_BOUND:?}{}", c.diagnosis());
        sleep(Duration::from_millis(50)).await;
    }
}

/// Single writes, each of a new key, and the ones acknowledged (for the agreement check).
struct Writes {
    spec: LoadSpec,
    next: u64,
    acked: Vec<u64>,
}

impl Writes {
    fn new() -> Writes {
        // Keys far from those of `client::load` runs (which start at 0).
        Writes { spec: support::spec(0), next: 1 << 40, acked: Vec::new() }
    }

    /// Puts one new key through whichever replica is primary; fails the test if that takes
    /// longer than `WRITE_BOUND`. Returns how long it took.
    async fn one(&mut self, c: &mut Cluster, after: &str) -> Duration {
        let started = Instant::now();
        let n = self.next;
        self.next += 1;
        let (key, value) = client::request_kv(n, &self.spec);
        let attempt = || async {
            let Ok(Some(p)) = timeout(Duration::from_secs(5), client::find_primary(&c.running())).await else { return false };
            let Ok(Ok(mut conn)) = timeout(Duration::from_secs(2), Conn::connect(p)).await else { return false };
            matches!(timeout(Duration::from_secs(3), conn.put(&key, &value)).await, Ok(Ok((Status::Ok, _))))
        };
        loop {
            let left = WRITE_BOUND.saturating_sub(started.elapsed());
            if timeout(left, attempt()).await == Ok(true) {
                self.acked.push(n);
                return started.elapsed();
            }
            assert!(started.elapsed() < WRITE_BOUND, "no write succeeded within {WRITE_BOUND:?} after {after}{}", c.diagnosis());
            sleep(Duration::from_millis(50)).await;
        }
    }

    async fn some(&mut self, c: &mut Cluster, n: usize, after: &str) {
        for _ in 0..n {
            self.one(c, after).await;
        }
    }
}

/// Every replica in `replicas` is alive, none panicked, and they reach one state (bounded)
/// that holds every write `w` acknowledged.
async fn agree(c: &mut Cluster, replicas: &[usize], w: &Writes) {
    let addrs: Vec<_> = replicas.iter().map(|&i| c.client(i)).collect();
    let until = Instant::now() + AGREE_BOUND;
    loop {
        c.assert_alive();
        c.assert_no_panic();
        let mut states = Vec::new();
        for &addr in &addrs {
            states.push(timeout(Duration::from_secs(2), status(addr)).await.ok().flatten().map(|s| (s.digest, s.keys)));
        }
        if states[0].is_some() && states.iter().all(|s| *s == states[0]) {
            break;
        }
        assert!(Instant::now() < until, "replicas {replicas:?} never agreed within {AGREE_BOUND:?}: {states:?}{}", c.diagnosis());
        sleep(Duration::from_millis(100)).await;
    }
    verify_within(&addrs, &w.acked, &w.spec, Duration::from_secs(5)).await;
}

/// Samples the resident memory of every replica running when it starts, every 50 ms, in the
/// background, and keeps each one's peak.
struct RssWatch {
    pids: Vec<(usize, u32)>,
    peaks: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn new(c: &Cluster) -> RssWatch {
        let pids: Vec<(usize, u32)> = c.started().into_iter().map(|i| (i, c.pid(i))).collect();
        let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pids, peaks, stop) = (pids.clone(), peaks.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    for (peak, &(_, pid)) in peaks.iter().zip(&pids) {
                        peak.fetch_max(proc_kib(pid, "VmRSS"), Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        RssWatch { pids, peaks, stop, thread: Some(thread) }
    }

    /// The first replica whose peak passed the bound, with that peak in KiB.
    fn over(&self) -> Option<(usize, u64)> {
        self.pids.iter().zip(self.peaks.iter()).map(|(&(i, _), p)| (i, p.load(Relaxed))).find(|&(_, kib)| kib > RSS_BOUND_KIB)
    }

    fn assert_under(&self, when: &str) {
        if let Some((i, kib)) = self.over() {
            panic!("replica {} reached {} MiB of resident memory {when} (bound {} MiB)", i + 1, kib >> 10, RSS_BOUND_KIB >> 10);
        }
    }

    fn peaks_mib(&self) -> Vec<u64> {
        self.peaks.iter().map(|p| p.load(Relaxed) >> 10).collect()
    }

    /// Stops sampling (before the replicas watched are killed); the peaks stay.
    fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What an attack works with: the cluster, the replica that was primary when it began, the
/// writes acknowledged so far and the watch on every replica's memory.
struct Attack {
    c: Cluster,
    p: usize,
    w: Writes,
    rss: RssWatch,
}

/// Runs one `attack`, named `name`, on a 3-replica cluster (`setup` as for [`cluster`]) once
/// a primary took three writes and with memory watched; then checks that the cluster survived
/// it: all alive, writes go through, memory under the bound, all agree.
fn attacked(name: &str, setup: impl FnOnce(&mut Cluster), attack: impl AsyncFnOnce(&mut Attack)) {
    rt().block_on(async {
        let mut c = cluster(0, setup);
        let p = leader(&mut c).await;
        let mut w = Writes::new();
        w.some(&mut c, 3, "start").await;
        let rss = RssWatch::new(&c);
        let mut a = Attack { c, p, w, rss };
        attack(&mut a).await;
        let Attack { mut c, mut w, rss, .. } = a;
        c.assert_alive();
        w.some(&mut c, 3, name).await;
        rss.assert_under(&format!("during or after {name}"));
        let all = c.started();
        agree(&mut c, &all, &w).await;
        eprintln!("{name}: peak resident memory per replica {:?} MiB", rss.peaks_mib());
    });
}

// ---------------------------------------------------------------------------------------------
// Speaking the formats.

fn id(s: &str) -> MemberId {
    MemberId::new(s).expect("a valid member id")
}

/// The largest member id there is: 63 nines (ids order by length first).
fn max_id() -> MemberId {
    id(&"9".repeat(MemberId::MAX_LEN))
}

fn message(sender: MemberId, decree: u64, config: u32, ballot: Ballot, body: Body) -> Message {
    Message::new(Header::new(Version::V6, sender, decree, config, ballot), body)
}

/// `msg` as it goes on the Paxos port.
fn packet(msg: &Message) -> Bytes {
    frame(msg, &mut BytesMut::new())
}

/// A packet with a valid size and checksum around any bytes.
fn wrap(message: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    rsl_engine::format::packet::encode_into(message, &mut out);
    out.to_vec()
}

/// Sends `bytes` on a fresh connection, half-closes it and waits (bounded) for the replica to
/// close its end too: by then it has read everything or given up on the connection.
async fn send_raw(addr: SocketAddr, bytes: &[u8]) {
    let mut s = timeout(Duration::from_secs(5), TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
    let _ = timeout(Duration::from_secs(10), s.write_all(bytes)).await;
    let _ = s.shutdown().await;
    let mut sink = vec![0u8; 64 << 10];
    let _ = timeout(Duration::from_secs(10), async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// `n` elections in turn: each time the primary is killed (-9), writes must go through the
/// new one, and the old one comes back.
async fn force_elections(c: &mut Cluster, w: &mut Writes, n: usize, attack: &str) {
    for k in 1..=n {
        let p = leader(c).await;
        c.kill9(p);
        w.some(c, 1, &format!("{attack}, then election {k} (replica {} killed)", p + 1)).await;
        c.spawn(p, true);
    }
}

/// A replica's highest executed decree, as its client port reports it.
async fn seq_of(c: &Cluster, i: usize) -> u64 {
    status(c.client(i)).await.expect("status").seq
}

/// xorshift64*: reproducible garbage without a dependency.
struct Garbage(u64);

impl Garbage {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Garbage on every port (these pass before issue 9; they guard against regressions).

#[test]
fn garbage_on_every_port_is_shrugged_off() {
    attacked(
        "garbage on every port",
        |_| {},
        async |a| {
            let mut g = Garbage(0x5eed_0001);
            let vote = Message::new(
                Header::new(Version::V6, id("1"), 7, 1, Ballot::new(1, id("1"))),
                Body::Vote(VoteBody { requests: vec![Bytes::from_static(b"x")], ..Default::default() }),
            );
            let good = packet(&vote);
            for i in 0..3 {
                // Paxos port: random bytes, a bad checksum, a truncated frame, sizes out of range,
                // a checksummed packet around random bytes, around a cut message, an unknown type.
                let mut bad_sum = good.to_vec();
                bad_sum[15] ^= 0xff;
                let raw = vote.encode(Checksum::Default).expect("encode").to_vec();
                let mut unknown_type = raw.clone();
                unknown_type[18] = 99;
                let tiny = [19u32.to_le_bytes(), [0; 4], [0; 4], [0; 4], [0; 4]].concat();
                let huge = [u32::MAX.to_le_bytes(), [0; 4], [0; 4], [0; 4], [0; 4]].concat();
                for bytes in [
                    g.bytes(64 << 10),
                    bad_sum,
                    good[..good.len() / 2].to_vec(),
                    tiny,
                    huge,
                    wrap(&g.bytes(4000)),
                    wrap(&raw[..raw.len() - 3]),
                    wrap(&unknown_type),
                ] {
                    send_raw(a.c.paxos(i), &bytes).await;
                }
                // Learn port: random bytes, a bad version, a length below a header, a cut request,
                // a whole request of random bytes.
                let mut prefix = |v: u16, len: u32, rest: usize| [&v.to_le_bytes()[..], &len.to_le_bytes(), &g.bytes(rest)].concat();
                for bytes in [prefix(0x6666, 200, 194), prefix(6, 10, 4), prefix(6, 1000, 10), prefix(6, 400, 394)] {
                    send_raw(a.c.learn(i), &bytes).await;
                }
                send_raw(a.c.learn(i), &g.bytes(64 << 10)).await;
                // Client port: random bytes, lengths out of range, an unknown op, a short GET, a
                // frame cut short.
                let frame_of = |len: u32, op: u8, body: &[u8]| [&len.to_le_bytes()[..], &[op], &7u64.to_le_bytes(), body].concat();
                for bytes in [
                    g.bytes(64 << 10),
                    frame_of(0, 1, b""),
                    frame_of(5, 1, b""),
                    frame_of(u32::MAX, 1, b"abc"),
                    frame_of(9, 0xee, b""),
                    frame_of(12, proto::OP_GET, b"abc"),
                    frame_of(100, proto::OP_GET, b"cut"),
                ] {
                    send_raw(a.c.client(i), &bytes).await;
                }
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Finding 1: a ballot that cannot be outbid.

/// One Prepare with ballot (u32::MAX, 63 nines) per claimed sender, to every replica.
async fn send_unbeatable_prepare(c: &Cluster) {
    let ballot = Ballot::new(u32::MAX, max_id());
    for i in 0..3 {
        let decree = seq_of(c, i).await + 1;
        for sender in ["1", "2", "3", "666"] {
            send_raw(c.paxos(i), &packet(&message(id(sender), decree, 1, ballot, Body::Prepare(Bytes::new())))).await;
        }
    }
}

#[test]
fn a_prepare_with_the_maximal_ballot_is_refused_and_survives_a_restart() {
    let attack = "a Prepare with ballot (u32::MAX, 63 nines) from members and an outsider";
    attacked(
        attack,
        |_| {},
        async |a| {
            send_unbeatable_prepare(&a.c).await;
            a.c.assert_alive();
            a.w.some(&mut a.c, 3, attack).await;
            a.rss.assert_under(attack);
            // Elections: a replica that adopted the ballot could never win one.
            force_elections(&mut a.c, &mut a.w, 1, attack).await;
            a.rss.stop();
            // The Prepare may be in every log: restart them all.
            for i in 0..3 {
                a.c.kill9(i);
            }
            for i in 0..3 {
                a.c.spawn(i, true);
            }
            a.rss = RssWatch::new(&a.c);
            a.w.some(&mut a.c, 3, &format!("{attack}, then all replicas restarted")).await;
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Finding 5 and deliverable 1: outsiders and extreme fields.

#[test]
fn a_defunct_configuration_from_an_outsider_does_not_unseat_the_primary() {
    attacked(
        "DefunctConfiguration from an outsider",
        |_| {},
        async |a| {
            for config in [1, 2, 1000] {
                let defunct = packet(&message(id("666"), 0, config, Ballot::EMPTY, Body::DefunctConfiguration));
                send_raw(a.c.paxos(a.p), &defunct.repeat(4)).await;
                // Watch the primary for half a second after each burst (an answer that is late
                // under load proves nothing either way).
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until {
                    if let Ok(Some(s)) = timeout(Duration::from_secs(2), status(a.c.client(a.p))).await {
                        let who = a.p + 1;
                        assert!(
                            s.primary,
                            "replica {who} stopped being primary after DefunctConfiguration(config {config}) from outsider \"666\": {s:?}"
                        );
                    }
                    sleep(Duration::from_millis(20)).await;
                }
            }
            assert_eq!(leader(&mut a.c).await, a.p, "the primary changed");
        },
    );
}

#[test]
fn forged_messages_with_plausible_fields_stall_writes_only_briefly() {
    attacked(
        "forged messages with plausible fields",
        |_| {},
        async |a| {
            // Without authentication these cannot be told from real ones, so only a short stall is
            // asked for (and measured). First a Prepare claiming a secondary's id, with a ballot
            // well within 2^24 of a young cluster's, twice.
            let claimed = id(&((a.p + 1) % 3 + 1).to_string());
            let mut forged = Vec::new();
            for ballot_id in [1_000u32, 2_000] {
                let ballot = Ballot::new(ballot_id, claimed);
                let decree = seq_of(&a.c, a.p).await + 1;
                forged.push((
                    format!("Prepare {ballot} from member {claimed}"),
                    message(claimed, decree, 1, ballot, Body::Prepare(Bytes::new())),
                ));
            }
            // Then what an outsider may send with ordinary fields, and a Join for a configuration
            // just ahead, from an outsider and from a member's id.
            let (outsider, empty) = (id("666"), Ballot::EMPTY);
            let join =
                rsl_engine::format::message::JoinBody { learn_port: 1, min_decree_in_log: 0, checkpointed_decree: 0, checkpoint_size: 0 };
            let members = MemberSet {
                nodes: vec![rsl_engine::runtime::api::node("666", Ipv4Addr::LOCALHOST, 1).expect("node")],
                ..Default::default()
            };
            forged.extend([
                ("StatusQuery from an outsider".into(), message(outsider, 1, 1, empty, Body::StatusQuery)),
                ("JoinRequest from an outsider".into(), message(outsider, 0, 1, empty, Body::JoinRequest)),
                ("Bootstrap from an outsider".into(), message(outsider, 0, 0, empty, Body::Bootstrap(members))),
                ("Join (configuration 2) from an outsider".into(), message(outsider, 0, 2, empty, Body::Join(join.clone()))),
                (format!("Join (configuration 3) from member {claimed}"), message(claimed, 0, 3, empty, Body::Join(join))),
            ]);
            for (what, msg) in forged {
                for i in 0..3 {
                    send_raw(a.c.paxos(i), &packet(&msg)).await;
                }
                let stall = a.w.one(&mut a.c, &what).await;
                eprintln!("forged {what}: the next write took {} ms", stall.as_millis());
            }
        },
    );
}

/// Well-formed messages whose fields are at the edges: decrees near u64::MAX, configuration
/// numbers far ahead, ballots far above any promise, senders that are not members.
fn extreme_messages() -> Vec<Message> {
    let far = 1u32 << 31;
    let outsiders =
        MemberSet { nodes: vec![rsl_engine::runtime::api::node("666", Ipv4Addr::LOCALHOST, 1).expect("node")], ..Default::default() };
    let mut out = Vec::new();
    for sender in [id("2"), id("666"), max_id()] {
        let high = Ballot::new(u32::MAX - 1, sender);
        for (decree, config) in [(u64::MAX, 1), (u64::MAX - 1, 1), (1 << 62, 1), (0, u32::MAX), (5, far), (u64::MAX, u32::MAX)] {
            let at = |ballot, body| message(sender, decree, config, ballot, body);
            let vote = at(high, Body::Vote(VoteBody { requests: vec![Bytes::from_static(b"forged")], ..Default::default() }));
            let status = StatusBody {
                query_decree: u64::MAX,
                query_ballot: high,
                last_received_ago_ms: i64::MIN,
                min_decree_in_log: u64::MAX,
                checkpointed_decree: u64::MAX,
                checkpoint_size: u64::MAX,
                max_ballot: high,
                state: u32::MAX,
            };
            let join = rsl_engine::format::message::JoinBody {
                learn_port: 1,
                min_decree_in_log: u64::MAX,
                checkpointed_decree: u64::MAX,
                checkpoint_size: u64::MAX,
            };
            out.extend([
                at(Ballot::new(1, sender), vote.body.clone()),
                at(high, Body::Prepare(Bytes::new())),
                at(high, Body::VoteAccepted),
                at(high, Body::NotAccepted),
                at(high, Body::PrepareAccepted(Box::new(vote.clone()))),
                vote,
                at(Ballot::EMPTY, Body::StatusQuery),
                at(high, Body::StatusResponse(status)),
                at(high, Body::ReconfigurationDecision),
                at(Ballot::EMPTY, Body::Join(join)),
                at(Ballot::EMPTY, Body::JoinRequest),
                at(Ballot::EMPTY, Body::Bootstrap(outsiders.clone())),
                at(Ballot::EMPTY, Body::FetchVotes),
                at(Ballot::EMPTY, Body::FetchCheckpoint),
            ]);
        }
        // A configuration far ahead declared defunct (a low one is a member's word; see the
        // test above for outsiders).
        out.push(message(sender, 0, far, Ballot::EMPTY, Body::DefunctConfiguration));
    }
    // Version 1 (numeric ids): the largest id a u64 holds.
    let numeric = id(&u64::MAX.to_string());
    let v1 = |decree, body| Message::new(Header::new(Version::V1, numeric, decree, 1, Ballot::new(u32::MAX - 1, numeric)), body);
    out.push(v1(u64::MAX, Body::Vote(VoteBody { requests: vec![Bytes::from_static(b"forged")], ..Default::default() })));
    out.push(v1(u64::MAX, Body::Prepare(Bytes::new())));
    out.push(v1(u64::MAX, Body::NotAccepted));
    out
}

#[test]
fn messages_with_extreme_fields_and_outsider_senders_are_dropped() {
    let messages = extreme_messages();
    let kinds: std::collections::HashSet<MsgKind> = messages.iter().map(Message::kind).collect();
    let attack = format!("{} messages with extreme fields ({} kinds) to every replica", messages.len(), kinds.len());
    attacked(
        &attack,
        |_| {},
        async |a| {
            let bytes: Vec<u8> = messages.iter().flat_map(|m| packet(m).to_vec()).collect();
            for i in 0..3 {
                send_raw(a.c.paxos(i), &bytes).await;
            }
            a.w.some(&mut a.c, 3, &attack).await;
            // Elections after it: a ballot adopted from those messages would leave none to win.
            a.rss.assert_under(&attack);
            a.rss.stop();
            force_elections(&mut a.c, &mut a.w, 3, &attack).await;
            a.rss = RssWatch::new(&a.c);
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Finding 4: resources at the Paxos and learn ports.

/// A connection from 127.0.0.2, another host of the loopback network: the thousands of
/// ephemeral ports a flood takes can then never be ones a replica (re)binds on 127.0.0.1.
async fn connect_from_elsewhere(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 2], 0)))?;
    socket.connect(addr).await
}

/// Up to `n` connections to `addr`; stops early once connecting keeps failing.
async fn open_many(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let (mut conns, mut failures) = (Vec::with_capacity(n), 0);
    while conns.len() < n && failures < 20 {
        match timeout(Duration::from_millis(500), connect_from_elsewhere(addr)).await {
            Ok(Ok(s)) => conns.push(s),
            _ => failures += 1,
        }
    }
    conns
}

/// How many of `conns` the other end has closed (checked without blocking).
fn closed_by_peer(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 16];
    let closed = |s: &&TcpStream| match s.try_read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    conns.iter().filter(closed).count()
}

#[test]
fn thousands_of_idle_connections_are_capped_and_peers_keep_working() {
    attacked(
        "5,000 idle connections to each of the Paxos and learn ports",
        |_| {},
        async |a| {
            let before = fd_count(a.c.pid(a.p));
            let paxos = open_many(a.c.paxos(a.p), 5_000).await;
            let learn = open_many(a.c.learn(a.p), 5_000).await;
            let held = fd_count(a.c.pid(a.p));
            eprintln!(
            "idle flood: {} Paxos and {} learn connections opened, {} and {} closed by the replica; it holds {held} descriptors ({before} before)",
            paxos.len(),
            learn.len(),
            closed_by_peer(&paxos),
            closed_by_peer(&learn)
        );
            // The members' own connections were open before the flood: they keep working.
            a.w.some(&mut a.c, 3, "opening 5,000 idle connections to each of the primary's Paxos and learn ports").await;
            assert!(
            held <= FD_BOUND,
            "the primary holds {held} descriptors with {} + {} idle connections open to its Paxos and learn ports (bound {FD_BOUND}): no connection cap",
            paxos.len(),
            learn.len()
        );
            drop((paxos, learn));
        },
    );
}

/// Gives a replica time to read what an attack sent: waits until its resident memory has not
/// grown for a second, or passes the bound, or 10 s have gone by.
async fn settle(rss: &RssWatch, pid: u32) {
    let until = Instant::now() + Duration::from_secs(10);
    let (mut last, mut since) = (proc_kib(pid, "VmRSS"), Instant::now());
    while Instant::now() < until && rss.over().is_none() && since.elapsed() < Duration::from_secs(1) {
        sleep(Duration::from_millis(100)).await;
        let now = proc_kib(pid, "VmRSS");
        if now > last + 1024 {
            (last, since) = (now, Instant::now());
        }
    }
}

/// Waits (bounded) until the replica closes `s`: a read sees EOF or an error.
async fn closed_within(mut s: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[test]
fn partial_giant_frames_and_slow_senders_on_the_paxos_port_are_bounded_and_timed_out() {
    attacked(
        "partial giant packets and slow senders on the Paxos port",
        |_| {},
        async |a| {
            const CLAIMED: usize = 90 << 20;
            const SENT: usize = 89 << 20;
            // Four connections each send all but the last MiB of a 90 MiB packet, then hold.
            let mut giants = Vec::new();
            for _ in 0..4 {
                let addr = a.c.paxos(a.p);
                giants.push(tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.expect("connect");
                    let mut header = BytesMut::new();
                    header.put_u32_le(CLAIMED as u32);
                    header.put_bytes(0, 16);
                    let chunk = vec![0u8; 1 << 20];
                    let _ = timeout(Duration::from_secs(10), async {
                        s.write_all(&header).await?;
                        for _ in 0..SENT >> 20 {
                            s.write_all(&chunk).await?;
                        }
                        Ok::<_, std::io::Error>(())
                    })
                    .await;
                    s
                }));
            }
            // One connection sends nothing; one sends a 1 KiB packet a byte a second.
            let idle = TcpStream::connect(a.c.paxos(a.p)).await.expect("connect");
            let trickle = TcpStream::connect(a.c.paxos(a.p)).await.expect("connect");
            let (trickle_rd, mut trickle_wr) = trickle.into_split();
            let trickler = tokio::spawn(async move {
                let mut header = BytesMut::new();
                header.put_u32_le(1024);
                header.put_bytes(0, 16);
                for byte in header.iter().chain(std::iter::repeat(&0u8)) {
                    if trickle_wr.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    sleep(Duration::from_secs(1)).await;
                }
            });
            let mut giants_held = Vec::new();
            for g in giants {
                giants_held.push(g.await.expect("sender"));
            }
            settle(&a.rss, a.c.pid(a.p)).await;
            a.rss.assert_under("while four 90 MiB packets are held incomplete on its Paxos port");
            a.w.some(&mut a.c, 3, "four partial 90 MiB packets held on the primary's Paxos port").await;
            // Every one of those connections is closed by the replica within the bound.
            let started = Instant::now();
            let mut waits = Vec::new();
            for s in giants_held {
                waits.push(tokio::spawn(closed_within(s, SLOW_BOUND)));
            }
            waits.push(tokio::spawn(closed_within(idle, IDLE_BOUND)));
            let trickle_closed = tokio::spawn(async move {
                let mut rd = trickle_rd;
                let mut buf = [0u8; 64];
                timeout(SLOW_BOUND, async { while !matches!(rd.read(&mut buf).await, Ok(0) | Err(_)) {} }).await.is_ok()
            });
            let mut open = Vec::new();
            for (k, wait) in waits.into_iter().enumerate() {
                if !wait.await.expect("waiter") {
                    open.push(if k < 4 { format!("partial 90 MiB packet {}", k + 1) } else { "idle connection".into() });
                }
            }
            if !trickle_closed.await.expect("waiter") {
                open.push("a 1 KiB packet sent a byte a second".into());
            }
            trickler.abort();
            assert!(open.is_empty(), "still open after {SLOW_BOUND:?} (frames) or {IDLE_BOUND:?} (idle): {open:?}");
            eprintln!("slow senders on the Paxos port closed after {:?}", started.elapsed());
        },
    );
}

#[test]
fn learn_requests_claiming_100_mib_allocate_only_what_arrives() {
    attacked(
        "learn requests claiming 100 MiB",
        |_| {},
        async |a| {
            let vm_before = proc_kib(a.c.pid(a.p), "VmSize");
            // Eight requests whose 6-byte prefix claims 100 MiB, each followed by 16 MiB.
            let claim = 100u32 << 20;
            let mut held = Vec::new();
            for _ in 0..8 {
                let mut s = TcpStream::connect(a.c.learn(a.p)).await.expect("connect");
                let prefix = [&6u16.to_le_bytes()[..], &claim.to_le_bytes()].concat();
                let _ = timeout(Duration::from_secs(5), async {
                    s.write_all(&prefix).await?;
                    s.write_all(&vec![0u8; 16 << 20]).await
                })
                .await;
                held.push(s);
            }
            settle(&a.rss, a.c.pid(a.p)).await;
            let vm_peak = proc_kib(a.c.pid(a.p), "VmSize");
            a.rss.assert_under("while eight learn requests claiming 100 MiB are held");
            let grown_mib = vm_peak.saturating_sub(vm_before) >> 10;
            eprintln!("learn claims: address space grew by {grown_mib} MiB for 8 x 100 MiB claimed, 8 x 16 MiB sent");
            assert!(grown_mib < 400, "the learn port reserved {grown_mib} MiB of address space for 8 requests claiming 100 MiB each (16 MiB sent each): it allocates by the claimed length");
            drop(held);
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Finding 6: rsl-kv's client port.

#[test]
fn a_client_that_pipelines_and_never_reads_cannot_bloat_the_primary() {
    attacked(
        "a client that pipelines and never reads",
        |_| {},
        async |a| {
            // Status requests (answered at once) with a put every 64 KiB, for 10 s or until the
            // primary passes the bound.
            let mut batch = BytesMut::new();
            for id in 0..5_000u64 {
                proto::status_request(&mut batch, id);
            }
            proto::put_request(&mut batch, 1 << 50, b"pipelined", b"never read");
            let mut s = TcpStream::connect(a.c.client(a.p)).await.expect("connect");
            let (started, mut sent, mut at, mut blocked) = (Instant::now(), 0usize, 0usize, Duration::ZERO);
            while started.elapsed() < Duration::from_secs(10) && a.rss.over().is_none() {
                // Plain writes from where the last one stopped: frames stay whole across stalls.
                let t = Instant::now();
                match timeout(Duration::from_millis(500), s.write(&batch[at..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => (sent, at) = (sent + n, (at + n) % batch.len()),
                    Err(_) => blocked += t.elapsed(),
                }
            }
            eprintln!(
                "never-reading client: {} MiB of requests sent in {:?}, {:?} of it blocked by backpressure",
                sent >> 20,
                started.elapsed(),
                blocked
            );
            a.rss.assert_under("while a client pipelines requests and never reads the answers");
            drop(s);
        },
    );
}

/// A put whose key length (1000) runs past its body (5 bytes).
fn overrunning_put(id: u64) -> Vec<u8> {
    let body = [&1000u16.to_le_bytes()[..], b"short"].concat();
    [&((9 + body.len()) as u32).to_le_bytes()[..], &[proto::OP_PUT], &id.to_le_bytes(), &body].concat()
}

/// The first answer on `s`, within `within`.
async fn answer(s: &mut TcpStream, within: Duration) -> Option<(u64, Status)> {
    let mut buf = BytesMut::new();
    timeout(within, async {
        loop {
            if let Ok(Some(frame)) = proto::take_frame(&mut buf) {
                let (id, status, _) = proto::parse_response(frame);
                return Some((id, status));
            }
            if matches!(s.read_buf(&mut buf).await, Ok(0) | Err(_)) {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[test]
fn a_put_whose_key_overruns_its_body_is_answered_with_an_error() {
    attacked(
        "puts whose key overruns the body",
        |_| {},
        async |a| {
            let fds_before = fd_count(a.c.pid(a.p));
            for k in 0..20u64 {
                let mut s = TcpStream::connect(a.c.client(a.p)).await.expect("connect");
                s.write_all(&overrunning_put(k)).await.expect("send");
                let got = answer(&mut s, Duration::from_secs(5)).await;
                assert!(
                    matches!(got, Some((id, st)) if id == k && st != Status::Ok),
                    "a PUT whose key length overruns its body got {got:?} within 5 s; want an error answer{}",
                    a.c.diagnosis()
                );
            }
            // Those connections are closed: the replica lets go of them (bounded wait).
            let until = Instant::now() + Duration::from_secs(10);
            while fd_count(a.c.pid(a.p)) > fds_before + 2 {
                assert!(
                    Instant::now() < until,
                    "the primary still holds {} descriptors 10 s after 20 clients left ({fds_before} before): leaked connections",
                    fd_count(a.c.pid(a.p))
                );
                sleep(Duration::from_millis(50)).await;
            }
        },
    );
}

/// Every configuration change in replica `i`'s logs (a reconfiguration vote or decision).
fn reconfigurations(c: &Cluster, i: usize) -> usize {
    let dir = std::fs::read_dir(c.data_dir(i)).expect("data dir");
    let logs = dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "log"));
    logs.map(|log| {
        let contents = rsl_engine::format::log::read_log_file(&log).expect("log");
        let reconfig = |m: &Message| m.as_vote().is_some_and(|v| v.reconfig.is_some()) || m.kind() == MsgKind::ReconfigurationDecision;
        contents.records.iter().filter(|r| reconfig(&r.message)).count()
    })
    .sum()
}

#[test]
fn change_configuration_is_refused_on_the_data_port_without_allow_admin() {
    attacked(
        "ChangeConfiguration from a client",
        |_| {},
        async |a| {
            // The attacker's wish: a configuration whose only member is theirs.
            let mut conn = Conn::connect(a.c.client(a.p)).await.expect("connect");
            let got = timeout(Duration::from_secs(10), conn.change_configuration("666=1")).await;
            let refused = matches!(got, Ok(Ok(st)) if st != Status::Ok);
            assert!(
                refused,
                "ChangeConfiguration to {{666}} on the data port of a replica started without --allow-admin: {got:?}; want a refusal"
            );
            a.w.some(&mut a.c, 3, "a refused ChangeConfiguration").await;
            for i in 0..3 {
                assert_eq!(reconfigurations(&a.c, i), 0, "replica {} logged a configuration change", i + 1);
            }
        },
    );
}

#[test]
fn the_client_port_survives_running_out_of_descriptors() {
    // An idle replica holds about 25 descriptors: 64 run out after some 40 connections,
    // fewer than any sensible per-port cap.
    const LIMIT: usize = 64;
    attacked(
        "running out of descriptors",
        |c| c.launch[0].shell = Some(format!("ulimit -n {LIMIT}")),
        async |a| {
            // Connections to all three of its ports in turn, until it is out of descriptors.
            let (ports, mut conns) = ([a.c.client(0), a.c.paxos(0), a.c.learn(0)], Vec::new());
            for k in 0..300 {
                if fd_count(a.c.pid(0)) >= LIMIT - 2 {
                    break;
                }
                if let Ok(Ok(s)) = timeout(Duration::from_millis(500), connect_from_elsewhere(ports[k % 3])).await {
                    conns.push(s);
                }
            }
            // Past the limit, the pending connections meet EMFILE in every accept loop.
            let until = Instant::now() + Duration::from_secs(5);
            while fd_count(a.c.pid(0)) < LIMIT - 2 {
                assert!(Instant::now() < until, "replica 1 never ran out of descriptors: {} held", fd_count(a.c.pid(0)));
                sleep(Duration::from_millis(50)).await;
            }
            let more = open_many(a.c.client(0), 10).await;
            eprintln!("descriptor exhaustion: {} + {} connections opened to replica 1 (limit {LIMIT})", conns.len(), more.len());
            drop((conns, more));
            // Its client port accepts and serves again (bounded).
            let freed = Instant::now();
            let until = freed + Duration::from_secs(10);
            loop {
                if let Ok(Some(s)) = timeout(Duration::from_secs(2), status(a.c.client(0))).await {
                    eprintln!("replica 1 serves again {:?} after its descriptors were freed: {s:?}", freed.elapsed());
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "replica 1's client port no longer serves 10 s after its descriptors were freed{}",
                    a.c.diagnosis()
                );
                sleep(Duration::from_millis(50)).await;
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Finding 3: a member added before any checkpoint exists.

#[test]
fn members_added_before_any_checkpoint_catch_up() {
    rt().block_on(async {
        let mut c = cluster(2, |c| c.launch.iter_mut().for_each(|l| l.args = vec!["--allow-admin".into()]));
        let p = leader(&mut c).await;
        let mut w = Writes::new();
        w.some(&mut c, 20, "start").await;
        let codex = (0..3)
            .any(|i| std::fs::read_dir(c.data_dir(i)).expect("dir").flatten().any(|e| e.path().extension().is_some_and(|x| x == "codex")));
        assert!(!codex, "a checkpoint exists already");
        // Replica 4 starts from the first configuration, which it is not in; replica 5 from
        // none (it waits to be added). The primary's Join says checkpoint 0 of size 0.
        c.spawn(3, true);
        c.spawn(4, false);
        let rss = RssWatch::new(&c);
        let removed = (p + 2) % 3;
        let keep = [p, (p + 1) % 3, 3, 4];
        let members = keep.iter().map(|&i| format!("{}={}", i + 1, c.paxos(i).port())).collect::<Vec<_>>().join(",");
        let mut conn = Conn::connect(c.client(p)).await.expect("connect");
        let got = timeout(WRITE_BOUND, conn.change_configuration(&members)).await;
        assert!(matches!(got, Ok(Ok(Status::Ok))), "ChangeConfiguration to {members} through the primary: {got:?}");
        c.kill9(removed);
        w.some(&mut c, 20, "the configuration change").await;
        rss.assert_under("while members join");
        agree(&mut c, &keep, &w).await;
    });
}

// ---------------------------------------------------------------------------------------------
// 7. Finding 2: fail-stop at the process level.

#[test]
fn a_replica_whose_disk_fails_exits_with_code_3_and_sigterm_is_prompt() {
    rt().block_on(async {
        // Replica 1's files may not pass 512 KiB (1024 blocks of 512 bytes); with SIGXFSZ ignored
        // a journal write past that fails with EFBIG.
        let mut c = cluster(0, |c| c.launch[0].shell = Some("trap '' XFSZ; ulimit -f 1024".into()));
        leader(&mut c).await;
        // 1 KB writes: 2,000 of them are four times the limit.
        let spec = LoadSpec { size: 1000, ..support::spec(4000) };
        let progress = Arc::new(Progress::default());
        let load = tokio::spawn(client::load(c.running(), spec.clone(), progress.clone()));
        let until = Instant::now() + Duration::from_secs(60);
        while progress.done.load(Relaxed) < 2_000 {
            assert!(Instant::now() < until, "the load stalled at {} writes{}", progress.done.load(Relaxed), c.diagnosis());
            sleep(Duration::from_millis(20)).await;
        }
        let exit = c.wait_exit(0, Duration::from_secs(10)).await;
        progress.stop.store(true, Relaxed);
        assert!(
            exit.is_some_and(|s| s.code() == Some(3)),
            "replica 1 (disk full) is {} 10 s after 2,000 KB were written; want exit code 3{}",
            exit.map_or("still running".into(), |s| format!("ended with {s}")),
            c.diagnosis()
        );
        let acked = timeout(Duration::from_secs(60), load).await.expect("the load stops").expect("load").acked;
        let mut w = Writes { spec, acked, ..Writes::new() };
        w.some(&mut c, 3, "replica 1's disk failed").await;
        agree(&mut c, &[1, 2], &w).await;
        let sent = Instant::now();
        c.sigterm(1);
        let exit = c.wait_exit(1, Duration::from_secs(5)).await;
        assert!(exit.is_some_and(|s| s.success()), "a healthy replica given SIGTERM: {exit:?} after 5 s; want a clean exit");
        eprintln!("SIGTERM: a healthy replica exited in {:?}", sent.elapsed());
    });
}
