use super::super::ringbuf::SendError;
use super::inbound::READ_CHUNK;
use super::*;
use crate::format::message::{Body, Header, VoteBody};
use crate::format::types::{Ballot, Version};
use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn id(n: u64) -> MemberId {
    MemberId::from_numeric(n)
}

fn vote(from: u64, decree: u64) -> Message {
    let body = VoteBody { requests: vec![Bytes::from(format!("request {decree} from {from}"))], ..Default::default() };
    Message::new(Header::new(Version::V6, id(from), decree, 1, Ballot::new(2, id(from))), Body::Vote(body))
}

fn reply(kind: Body, decree: u64) -> Message {
    Message::new(Header::new(Version::V6, id(9), decree, 1, Ballot::new(2, id(9))), kind)
}

fn framed(msg: &Message) -> Bytes {
    frame(msg, &mut BytesMut::new())
}

/// A transport whose messages arrive on the returned channel.
type Rx = UnboundedReceiver<Arc<Message>>;

fn start(addr: SocketAddr, opts: TransportOptions) -> (Transport, Rx) {
    let (tx, rx) = unbounded_channel();
    let t = Transport::start(&Handle::current(), addr, opts, None, Arc::new(move |m, _| drop(tx.send(m)))).unwrap();
    (t, rx)
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An address nothing listens on (for now).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind(any_port()).unwrap().local_addr().unwrap()
}

async fn recv(rx: &mut UnboundedReceiver<Arc<Message>>) -> Arc<Message> {
    timeout(WAIT, rx.recv()).await.expect("a message in time").expect("transport alive")
}

async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let n = timeout(WAIT, stream.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "connection still open: {n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_messages_both_ways_arrive_intact_and_in_order() {
    let (a, mut rx_a) = start(any_port(), TransportOptions::default());
    let (b, mut rx_b) = start(any_port(), TransportOptions::default());
    a.set_peers(&[(id(2), b.local_addr())]);
    b.set_peers(&[(id(1), a.local_addr())]);
    const N: u64 = 5000;
    let (a, b) = (Arc::new(a), Arc::new(b));
    exchange(&a, &b, &mut rx_a, &mut rx_b, N).await;
    wait_until("every packet counted", || a.peer_stats()[0].sent_packets == N).await;
    let stats = a.peer_stats();
    assert_eq!(stats.len(), 1);
    assert!(stats[0].connected);
    assert_eq!((stats[0].sent_packets, stats[0].dropped_packets, stats[0].queued_bytes), (N, 0, 0));
}

/// Votes 1..=n each way, sent from plain threads as the protocol thread sends; each side
/// receives all of the other's, intact and in order.
async fn exchange(a: &Arc<Transport>, b: &Arc<Transport>, rx_a: &mut Rx, rx_b: &mut Rx, n: u64) {
    let senders: Vec<_> = [(a.clone(), 1, 2), (b.clone(), 2, 1)]
        .into_iter()
        .map(|(t, from, to)| std::thread::spawn(move || (1..=n).all(|d| t.send(&id(to), framed(&vote(from, d))))))
        .collect();
    for s in senders {
        assert!(s.join().unwrap(), "every send was queued");
    }
    for (rx, from) in [(rx_b, 1), (rx_a, 2)] {
        for d in 1..=n {
            assert_eq!(*recv(rx).await, vote(from, d));
        }
    }
}

fn with_shm(dir: &std::path::Path) -> TransportOptions {
    TransportOptions { shm: Some(ShmOptions { dir: dir.to_path_buf(), capacity: 4096, rdma: false }), ..TransportOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_go_through_a_shared_memory_ring_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut rx_a) = start(any_port(), with_shm(dir.path()));
    let (b, mut rx_b) = start(any_port(), with_shm(dir.path()));
    a.set_peers(&[(id(2), b.local_addr())]);
    b.set_peers(&[(id(1), a.local_addr())]);
    // The first packet may go before the ring is set up: wait for it.
    assert!(a.send(&id(2), framed(&vote(1, 0))));
    assert_eq!(*recv(&mut rx_b).await, vote(1, 0));
    wait_until("both rings", || a.peer_stats()[0].link == Some(LinkKind::Shm) && b.peer_stats()[0].link == Some(LinkKind::Shm)).await;
    const N: u64 = 5000;
    let (a, b) = (Arc::new(a), Arc::new(b));
    exchange(&a, &b, &mut rx_a, &mut rx_b, N).await;
    // Larger than the ring: over the TCP connection, which the ring leaves open.
    assert!(a.send(&id(2), framed(&big_vote(N + 1, 10_000))));
    assert_eq!(*recv(&mut rx_b).await, big_vote(N + 1, 10_000));
    // The sender counts a packet once its write returns, which may be after it arrived.
    wait_until("every packet counted", || a.peer_stats()[0].sent_packets == N + 2).await;
    let stats = a.peer_stats();
    assert!(stats[0].link == Some(LinkKind::Shm) && stats[0].connections == 1, "one connection, on the ring: {stats:?}");
    assert_eq!((stats[0].sent_packets, stats[0].dropped_packets), (N + 2, 0));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "ring files are unlinked once mapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_larger_than_the_socket_takes_goes_whole_over_tcp_between_ring_packets() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _rx_a) = start(any_port(), with_shm(dir.path()));
    let (b, mut rx_b) = start(any_port(), with_shm(dir.path()));
    a.set_peers(&[(id(2), b.local_addr())]);
    assert!(a.send(&id(2), framed(&vote(1, 0))));
    assert_eq!(*recv(&mut rx_b).await, vote(1, 0));
    wait_until("the ring", || a.peer_stats()[0].link == Some(LinkKind::Shm)).await;
    // 16 MiB: more than a loopback socket takes at once, so the TCP part of the ring's link
    // writes it in pieces, and the packet after it waits until it is all out.
    let sent = [vote(1, 1), big_vote(2, 16 << 20), vote(1, 3)];
    for msg in &sent {
        assert!(a.send(&id(2), framed(msg)));
    }
    // The large packet may overtake the first or be overtaken by the last (docs/rdma.md).
    let mut got: Vec<u64> = Vec::new();
    for _ in &sent {
        let msg = recv(&mut rx_b).await;
        let i = sent.iter().position(|m| *m == *msg).expect("a packet that was sent");
        got.push(i as u64);
    }
    got.sort();
    assert_eq!(got, [0, 1, 2], "each packet once");
    let stats = a.peer_stats();
    assert_eq!((stats[0].link, stats[0].connections, stats[0].dropped_packets), (Some(LinkKind::Shm), 1, 0), "{stats:?}");
}

#[tokio::test]
async fn a_peer_without_shared_memory_gets_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let stats = hundred_votes(with_shm(dir.path()), TransportOptions::default()).await;
    assert!(stats.link == Some(LinkKind::Tcp) && stats.connections == 1, "declined on the same connection: {stats:?}");
}

/// Sends 100 votes from a transport with `from` to one with `to`, checks each arrives in
/// order, and returns the sender's statistics of that peer.
async fn hundred_votes(from: TransportOptions, to: TransportOptions) -> PeerStats {
    let (a, _rx_a) = start(any_port(), from);
    let (b, mut rx_b) = start(any_port(), to);
    a.set_peers(&[(id(2), b.local_addr())]);
    for d in 1..=100 {
        assert!(a.send(&id(2), framed(&vote(1, d))));
    }
    for d in 1..=100 {
        assert_eq!(*recv(&mut rx_b).await, vote(1, d));
    }
    a.peer_stats().remove(0)
}

#[cfg(feature = "rdma")]
#[tokio::test]
async fn rdma_without_a_device_speaks_tcp() {
    if crate::runtime::ringbuf::verbs::Device::open_first().is_ok() {
        return; // a machine with a device: this is about the fallback
    }
    let dir = tempfile::tempdir().unwrap();
    let rdma =
        TransportOptions { shm: Some(ShmOptions { rdma: true, ..ShmOptions::default_in(dir.path()) }), ..TransportOptions::default() };
    let stats = hundred_votes(rdma.clone(), rdma).await;
    assert!(stats.link == Some(LinkKind::Tcp) && stats.connections == 1, "plain TCP on the first connection: {stats:?}");
}

#[tokio::test]
async fn a_peer_that_closes_on_an_offer_gets_tcp_from_then_on() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let (a, _rx_a) = start(any_port(), with_shm(dir.path()));
    a.set_peers(&[(id(2), listener.local_addr().unwrap())]);
    assert!(a.send(&id(2), framed(&vote(1, 1))));
    // An older port: the offer's zero size is a bad packet, so it closes the connection.
    let (mut first, _) = listener.accept().await.unwrap();
    let mut prefix = [0u8; 4];
    first.read_exact(&mut prefix).await.unwrap();
    assert!(shm_link::is_offer(&prefix));
    drop(first);
    let (mut second, _) = listener.accept().await.unwrap();
    let packet = framed(&vote(1, 1));
    let mut got = vec![0u8; packet.len()];
    second.read_exact(&mut got).await.unwrap();
    assert_eq!(got, packet, "the next connection is plain TCP");
}

#[tokio::test]
async fn a_hostile_ring_record_ends_the_session_and_the_next_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut rx_b) = start(any_port(), with_shm(dir.path()));
    let opts = ShmOptions { dir: dir.path().to_path_buf(), capacity: 4096, rdma: false };
    for hostile in [&b"not a packet"[..], &framed(&vote(1, 1))[..30], &[framed(&vote(1, 1)).to_vec(), vec![0; 8]].concat()] {
        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        let Offered::Ring(mut ring) = shm_link::offer_ring(&mut raw, &opts).await.unwrap() else { panic!("declined") };
        while ring.send(hostile) == Err(SendError::WouldBlock) {
            tokio::task::yield_now().await; // until the reader opens the session
        }
        expect_closed(&mut raw).await;
    }
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    let Offered::Ring(mut ring) = shm_link::offer_ring(&mut raw, &opts).await.unwrap() else { panic!("declined") };
    while ring.send(&framed(&vote(1, 7))) == Err(SendError::WouldBlock) {
        tokio::task::yield_now().await;
    }
    assert_eq!(*recv(&mut rx_b).await, vote(1, 7));
    assert!(rx_b.try_recv().is_err(), "nothing hostile was delivered");
}

#[tokio::test]
async fn a_delayed_transport_holds_each_packet_for_the_delay_and_keeps_the_order() {
    let delay = Duration::from_millis(30);
    let (a, _rx) = start(any_port(), TransportOptions { delay, ..TransportOptions::default() });
    let (b, mut rx_b) = start(any_port(), TransportOptions::default());
    a.set_peers(&[(id(2), b.local_addr())]);
    // Connected and flowing first, so that the hold is all that is measured below.
    assert!(a.send(&id(2), framed(&vote(1, 0))));
    assert_eq!(recv(&mut rx_b).await.header.decree, 0);
    let mut queued = Vec::new();
    for d in 1..=20 {
        queued.push(Instant::now());
        assert_eq!(a.broadcast(&[id(2)], &framed(&vote(1, d))), 0, "held packets are on the wire, not outstanding");
        if d % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
    }
    for d in 1..=20u64 {
        let msg = recv(&mut rx_b).await;
        assert_eq!(msg.header.decree, d, "in order");
        assert!(queued[d as usize - 1].elapsed() >= delay, "packet {d} arrived before its delay");
    }
    assert_eq!(a.peer_stats()[0].dropped_packets, 0);
}

#[tokio::test]
async fn a_peer_that_starts_later_gets_what_was_queued() {
    let later = free_addr();
    let (a, _rx) = start(any_port(), TransportOptions::default());
    a.set_peers(&[(id(2), later)]);
    for d in 1..=10 {
        assert!(a.send(&id(2), framed(&vote(1, d))));
    }
    let (_b, mut rx_b) = start(later, TransportOptions::default());
    for d in 1..=10 {
        assert_eq!(*recv(&mut rx_b).await, vote(1, d));
    }
}

/// Starts a transport on `addr`, which a transport just shut down may hold for a moment.
async fn restart_on(addr: SocketAddr) -> (Transport, UnboundedReceiver<Arc<Message>>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (tx, rx) = unbounded_channel();
        match Transport::start(&Handle::current(), addr, TransportOptions::default(), None, Arc::new(move |m, _| drop(tx.send(m)))) {
            Ok(t) => return (t, rx),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tokio::time::Instant::now() < deadline => tokio::task::yield_now().await,
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected() {
    let (a, _rx) = start(any_port(), TransportOptions::default());
    let (b, mut rx_b) = start(any_port(), TransportOptions::default());
    let addr = b.local_addr();
    a.set_peers(&[(id(2), addr)]);
    for d in 1..=100 {
        assert!(a.send(&id(2), framed(&vote(1, d))));
    }
    for d in 1..=100 {
        assert_eq!(recv(&mut rx_b).await.header.decree, d);
    }
    b.shutdown();
    drop(b);
    let (_b2, mut rx_b2) = restart_on(addr).await;
    // Packets written into the dead connection are lost; Paxos resends, and so does this.
    let deadline = tokio::time::Instant::now() + WAIT;
    for d in 1000.. {
        assert!(tokio::time::Instant::now() < deadline, "never reconnected");
        a.send(&id(2), framed(&vote(1, d)));
        if let Ok(Some(m)) = timeout(Duration::from_millis(50), rx_b2.recv()).await {
            assert!(m.header.decree >= 1000, "only packets sent after the restart reach the new peer");
            break;
        }
    }
    assert!(a.peer_stats()[0].connected);
}

#[tokio::test]
async fn a_full_queue_drops_and_stays_bounded() {
    let opts = TransportOptions { max_queue_bytes: 10_000, ..Default::default() };
    let (a, _rx) = start(any_port(), opts);
    a.set_peers(&[(id(2), free_addr())]);
    let packet = framed(&vote(1, 1));
    let accepted = (0..1000).take_while(|_| a.send(&id(2), packet.clone())).count();
    assert_eq!(accepted, 10_000 / packet.len());
    assert!(!a.send(&id(2), packet.clone()));
    let stats = &a.peer_stats()[0];
    assert!(stats.queued_bytes <= 10_000 && !stats.connected);
    assert_eq!((stats.dropped_packets, stats.dropped_bytes), (2, 2 * packet.len() as u64));
    assert!(!a.send(&id(3), packet), "an unknown peer");
}

#[tokio::test]
async fn a_corrupt_packet_closes_the_connection_and_the_next_one_works() {
    let (b, mut rx_b) = start(any_port(), TransportOptions::default());
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    let good = framed(&vote(1, 1));
    let mut bad = good.to_vec();
    bad[40] ^= 1;
    // Two good packets in one write with a bad one between: the first arrives, then the
    // connection closes.
    raw.write_all(&[&good[..], &bad, &good].concat()).await.unwrap();
    assert_eq!(*recv(&mut rx_b).await, vote(1, 1));
    expect_closed(&mut raw).await;
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    raw.write_all(&framed(&vote(1, 2))).await.unwrap();
    assert_eq!(*recv(&mut rx_b).await, vote(1, 2));
    assert!(rx_b.try_recv().is_err(), "nothing after the bad packet was delivered");
}

#[tokio::test]
async fn hostile_size_fields_close_without_allocating() {
    let (b, _rx) = start(any_port(), TransportOptions::default());
    for size in [u32::MAX, 19, (DEFAULT_MAX_PACKET + 1) as u32] {
        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        let mut header = [0u8; HEADER_SIZE];
        header[..4].copy_from_slice(&size.to_le_bytes());
        raw.write_all(&header).await.unwrap();
        expect_closed(&mut raw).await;
    }
    // A size within the limit is believed only as far as bytes arrive.
    let mut buf = BytesMut::from(&[0u8; HEADER_SIZE][..]);
    for arrived in [HEADER_SIZE, READ_CHUNK, 10 * READ_CHUNK] {
        buf.resize(arrived, 0);
        grow_for(&mut buf, DEFAULT_MAX_PACKET, READ_CHUNK);
        assert!(buf.capacity() <= 2 * arrived + READ_CHUNK, "{arrived} bytes arrived, {} reserved", buf.capacity());
    }
}

#[tokio::test]
async fn set_peers_removal_closes_the_connection_and_drops_sends() {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let (a, mut rx_a) = start(any_port(), TransportOptions::default());
    a.set_peers(&[(id(2), listener.local_addr().unwrap())]);
    assert!(a.send(&id(2), framed(&vote(1, 7))));
    let (mut raw, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let mut buf = vec![0u8; framed(&vote(1, 7)).len()];
    raw.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, framed(&vote(1, 7)));
    // Responses come back on the outbound connection; requests there are dropped.
    raw.write_all(&[framed(&vote(2, 1)), framed(&reply(Body::VoteAccepted, 7))].concat()).await.unwrap();
    assert_eq!(*recv(&mut rx_a).await, reply(Body::VoteAccepted, 7));
    a.set_peers(&[]);
    expect_closed(&mut raw).await;
    assert!(!a.send(&id(2), framed(&vote(1, 8))));
    assert!(a.peer_stats().is_empty());
}

#[tokio::test]
async fn shutdown_closes_listener_and_connections() {
    let (b, _rx) = start(any_port(), TransportOptions::default());
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    b.shutdown();
    expect_closed(&mut raw).await;
    b.set_peers(&[(id(1), free_addr())]);
    assert!(b.peer_stats().is_empty(), "a stopped transport takes no peers");
}

/// Options with short bounds, for tests of the limits.
fn tight(f: impl FnOnce(&mut TransportOptions)) -> TransportOptions {
    let mut opts = TransportOptions::default();
    f(&mut opts);
    opts
}

fn big_vote(decree: u64, len: usize) -> Message {
    let body = VoteBody { requests: vec![Bytes::from(vec![7u8; len])], ..Default::default() };
    Message::new(Header::new(Version::V6, id(1), decree, 1, Ballot::new(2, id(1))), Body::Vote(body))
}

#[tokio::test]
async fn a_packet_begun_must_arrive_whole_in_time() {
    let (b, mut rx_b) = start(any_port(), tight(|o| o.frame_timeout = Duration::from_millis(300)));
    // Most of a packet, then nothing (a 90 MiB one held open was buffered forever).
    let packet = framed(&big_vote(1, 200_000));
    let mut stalled = TcpStream::connect(b.local_addr()).await.unwrap();
    stalled.write_all(&packet[..150_000]).await.unwrap();
    // A byte at a time, steadily: progress, but the packet never completes in time.
    let mut trickle = TcpStream::connect(b.local_addr()).await.unwrap();
    let dripping = async {
        for byte in packet.iter() {
            if trickle.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = timeout(WAIT, dripping).await;
    expect_closed(&mut trickle).await;
    expect_closed(&mut stalled).await;
    // One in time gets through.
    let mut prompt = TcpStream::connect(b.local_addr()).await.unwrap();
    prompt.write_all(&packet).await.unwrap();
    assert_eq!(*recv(&mut rx_b).await, big_vote(1, 200_000));
}

#[tokio::test]
async fn a_silent_inbound_connection_is_closed_and_the_peer_reconnects() {
    let idle = tight(|o| o.idle_timeout = Duration::from_millis(200));
    let (b, mut rx_b) = start(any_port(), idle.clone());
    let mut silent = TcpStream::connect(b.local_addr()).await.unwrap();
    expect_closed(&mut silent).await;
    // A peer whose connection went quiet: closed by `b`, reconnected, still delivering.
    let (a, _rx_a) = start(any_port(), idle);
    a.set_peers(&[(id(2), b.local_addr())]);
    assert!(a.send(&id(2), framed(&vote(1, 1))));
    assert_eq!(*recv(&mut rx_b).await, vote(1, 1));
    wait_until("the idle connection closed", || a.peer_stats()[0].connections >= 2).await;
    assert!(a.send(&id(2), framed(&vote(1, 2))));
    assert_eq!(recv(&mut rx_b).await.header.decree, 2);
}

#[tokio::test]
async fn inbound_connections_beyond_the_cap_are_refused() {
    let (b, mut rx_b) = start(any_port(), tight(|o| o.max_inbound = 2));
    let mut kept = Vec::new();
    for d in 1..=2 {
        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        raw.write_all(&framed(&vote(1, d))).await.unwrap();
        assert_eq!(recv(&mut rx_b).await.header.decree, d);
        kept.push(raw);
    }
    let mut extra = TcpStream::connect(b.local_addr()).await.unwrap();
    expect_closed(&mut extra).await;
    // The connections already served keep working.
    for (d, raw) in (3..).zip(&mut kept) {
        raw.write_all(&framed(&vote(1, d))).await.unwrap();
        assert_eq!(recv(&mut rx_b).await.header.decree, d);
    }
    // Once one closes, its place is free again (the acceptor notices when it next accepts).
    drop(kept.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the freed place was never given out");
        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        if raw.write_all(&framed(&vote(1, 9))).await.is_ok() {
            if let Ok(Some(m)) = timeout(Duration::from_millis(100), rx_b.recv()).await {
                assert_eq!(m.header.decree, 9);
                break;
            }
        }
    }
}

#[tokio::test]
async fn partial_packets_share_a_bounded_budget() {
    // Room for one of the two large packets in flight, copies of its growing buffer
    // included (512 KiB and 700 KB at once), not both.
    const BUDGET: usize = 3 << 19;
    let (b, mut rx_b) = start(any_port(), tight(|o| o.max_buffered = BUDGET));
    let (one, two) = (framed(&big_vote(1, 700_000)), framed(&big_vote(2, 700_000)));
    let mut a1 = TcpStream::connect(b.local_addr()).await.unwrap();
    let mut a2 = TcpStream::connect(b.local_addr()).await.unwrap();
    a1.write_all(&one[..600_000]).await.unwrap();
    a2.write_all(&two[..600_000]).await.unwrap();
    // Small packets take no budget: they go through meanwhile.
    let mut small = TcpStream::connect(b.local_addr()).await.unwrap();
    small.write_all(&framed(&vote(1, 3))).await.unwrap();
    assert_eq!(recv(&mut rx_b).await.header.decree, 3);
    let (mut buf1, mut buf2) = ([0u8; 1], [0u8; 1]);
    let refused = timeout(WAIT, async {
        tokio::select! {
            _ = a1.read(&mut buf1) => 1,
            _ = a2.read(&mut buf2) => 2,
        }
    })
    .await
    .expect("both partial packets held at once, past the budget");
    assert!(b.buffered_bytes() <= BUDGET);
    let (kept, rest, decree) = if refused == 1 { (&mut a2, &two[600_000..], 2) } else { (&mut a1, &one[600_000..], 1) };
    kept.write_all(rest).await.unwrap();
    assert_eq!(*recv(&mut rx_b).await, big_vote(decree, 700_000));
    small.write_all(&framed(&vote(1, 4))).await.unwrap();
    assert_eq!(recv(&mut rx_b).await.header.decree, 4);
    assert_eq!(b.buffered_bytes(), 0, "what was held is given back");
}

/// A listener whose first accepts fail as they do when the process is out of descriptors.
struct Failing {
    inner: TcpListener,
    failures: Arc<AtomicUsize>,
}

impl Listener for Failing {
    type Conn = TcpStream;
    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        let fail = self.failures.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_ok();
        async move {
            match fail {
                true => Err(io::Error::from_raw_os_error(24)), // EMFILE
                false => self.inner.accept().await,
            }
        }
    }
}

#[tokio::test]
async fn the_acceptor_survives_accept_errors() {
    let inner = TcpListener::bind(any_port()).await.unwrap();
    let addr = inner.local_addr().unwrap();
    let failures = Arc::new(AtomicUsize::new(3));
    let listener = Failing { inner, failures: failures.clone() };
    let greet = |mut conn: TcpStream, _| async move { drop(conn.write_all(b"hello").await) };
    let acceptor = tokio::spawn(accept_each(listener, "test", 4, greet));
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut hello = [0u8; 5];
    timeout(WAIT, conn.read_exact(&mut hello)).await.expect("served in time").unwrap();
    assert_eq!((&hello, failures.load(Relaxed)), (b"hello", 0), "served after every failure");
    acceptor.abort();
}

/// A transport with TLS whose messages arrive, with their origin, on the returned channel.
fn start_tls(tls: &Arc<Tls>) -> (Transport, UnboundedReceiver<(Arc<Message>, Origin)>) {
    let (tx, rx) = unbounded_channel();
    let deliver = Arc::new(move |m, origin| drop(tx.send((m, origin))));
    (Transport::start(&Handle::current(), any_port(), TransportOptions::default(), Some(tls.clone()), deliver).unwrap(), rx)
}

async fn recv_from(rx: &mut UnboundedReceiver<(Arc<Message>, Origin)>) -> (Arc<Message>, Vec<String>) {
    let (m, origin) = timeout(WAIT, rx.recv()).await.expect("a message in time").expect("transport alive");
    (m, origin.peer.expect("an authenticated connection").names.clone())
}

#[tokio::test]
async fn over_tls_packets_flow_both_ways_with_the_peers_identity() {
    let (dir, ca) = (tempfile::tempdir().unwrap(), super::super::tls::issue::Ca::new("test CA"));
    let [one, two, three] = ["1", "2", "3"].map(|name| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        test_tls(&sub, &ca, name)
    });
    let ((a, mut rx_a), (b, mut rx_b)) = (start_tls(&one), start_tls(&two));
    a.set_peers(&[(id(2), b.local_addr())]);
    b.set_peers(&[(id(1), a.local_addr())]);
    for d in 1..=100 {
        assert!(a.send(&id(2), framed(&vote(1, d))) && b.send(&id(1), framed(&vote(2, d))));
    }
    for d in 1..=100 {
        let ((m1, names1), (m2, names2)) = (recv_from(&mut rx_b).await, recv_from(&mut rx_a).await);
        assert_eq!((&*m1, &*m2), (&vote(1, d), &vote(2, d)));
        assert!(names1.contains(&"1".to_string()) && names2.contains(&"2".to_string()), "{names1:?} {names2:?}");
    }
    // An answer read on our outbound connection carries the server's identity.
    let listener = TcpListener::bind(any_port()).await.unwrap();
    a.set_peers(&[(id(3), listener.local_addr().unwrap())]);
    assert!(a.send(&id(3), framed(&vote(1, 7))));
    let (raw, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let (mut server, client) = three.accept(raw).await.unwrap();
    assert!(client.names.contains(&"1".to_string()));
    let mut buf = vec![0u8; framed(&vote(1, 7)).len()];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, framed(&vote(1, 7)));
    server.write_all(&framed(&reply(Body::VoteAccepted, 7))).await.unwrap();
    server.flush().await.unwrap();
    let (m, names) = recv_from(&mut rx_a).await;
    assert_eq!((&*m, names.contains(&"3".to_string())), (&reply(Body::VoteAccepted, 7), true));
}

#[tokio::test]
async fn a_plain_packet_to_a_tls_port_is_refused_and_counted() {
    let (dir, ca) = (tempfile::tempdir().unwrap(), super::super::tls::issue::Ca::new("test CA"));
    let tls = test_tls(dir.path(), &ca, "2");
    let (b, mut rx_b) = start_tls(&tls);
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    raw.write_all(&framed(&vote(1, 1))).await.unwrap();
    // Closed, perhaps after a TLS alert.
    let mut alert = Vec::new();
    let _ = timeout(WAIT, raw.read_to_end(&mut alert)).await.expect("closed in time");
    wait_until("the refusal counted", || tls.refused() > 0).await;
    assert!(rx_b.try_recv().is_err(), "nothing was delivered");
}

/// Waits for `cond`, panicking with `what` after `WAIT`.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: never happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn packets_above_the_alert_size_are_counted() {
    let (small, large) = (framed(&vote(1, 1)), framed(&big_vote(2, 200_000)));
    for (alert_packet, expected) in [(0, 0), (100_000, 1), (10, 2), (300_000, 0)] {
        let (b, mut rx_b) = start(any_port(), tight(|o| o.alert_packet = alert_packet));
        let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
        raw.write_all(&[&small[..], &large].concat()).await.unwrap();
        assert_eq!(recv(&mut rx_b).await.header.decree, 1);
        assert_eq!(recv(&mut rx_b).await.header.decree, 2, "an oversized packet is still delivered");
        assert_eq!(b.oversized_packets(), expected, "alert size {alert_packet}");
    }
}

/// `m_maxMessageSizeMB` (`max_packet`): a packet above it closes the connection unread; a
/// larger limit takes the same packet.
#[tokio::test]
async fn a_packet_above_the_maximum_message_size_closes_the_connection() {
    let large = framed(&big_vote(2, 200_000));
    let (b, mut rx_b) = start(any_port(), tight(|o| o.max_packet = 300_000));
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    raw.write_all(&large).await.unwrap();
    assert_eq!(recv(&mut rx_b).await.header.decree, 2);
    let (b, mut rx_b) = start(any_port(), tight(|o| o.max_packet = 100_000));
    let mut raw = TcpStream::connect(b.local_addr()).await.unwrap();
    // The peer may close before every byte is written.
    let _ = raw.write_all(&large).await;
    expect_closed(&mut raw).await;
    assert!(rx_b.try_recv().is_err(), "the packet above the limit was not delivered");
}

#[tokio::test]
async fn broadcasts_skip_a_peer_with_max_outstanding_packets_unsent() {
    // Nothing listens at the peer's address: what is queued stays unsent.
    for max_outstanding in [3, 10] {
        let opts = tight(|o| (o.max_outstanding, o.send_timeout) = (max_outstanding, Duration::from_secs(3600)));
        let (a, _rx) = start(any_port(), opts);
        a.set_peers(&[(id(2), free_addr())]);
        let skipped: Vec<usize> = (1..=12).map(|d| a.broadcast(&[id(2)], &framed(&vote(1, d)))).collect();
        assert_eq!(skipped.iter().sum::<usize>(), 12 - max_outstanding);
        assert!(skipped[..max_outstanding].iter().all(|&n| n == 0), "{skipped:?}");
        assert_eq!(a.peer_stats()[0].outstanding, max_outstanding as u64);
        // A direct send (an answer, a resend to one member) is not limited.
        assert!(a.send(&id(2), framed(&vote(1, 13))));
        assert_eq!(a.peer_stats()[0].outstanding, max_outstanding as u64 + 1);
    }
}

#[tokio::test]
async fn an_unsent_packet_times_out_and_a_stalled_write_fails_the_connection() {
    // Queued for a peer that cannot be reached: dropped after the send timeout.
    let short = tight(|o| o.send_timeout = Duration::from_millis(300));
    let long = tight(|o| o.send_timeout = Duration::from_secs(3600));
    let (a, _ra) = start(any_port(), short.clone());
    let (c, _rc) = start(any_port(), long.clone());
    let dead = free_addr();
    a.set_peers(&[(id(2), dead)]);
    c.set_peers(&[(id(2), dead)]);
    assert!(a.send(&id(2), framed(&vote(1, 1))) && c.send(&id(2), framed(&vote(1, 1))));
    wait_until("the unsent packet dropped", || a.peer_stats()[0].dropped_packets == 1).await;
    assert_eq!((a.peer_stats()[0].outstanding, c.peer_stats()[0].outstanding), (0, 1), "the longer timeout keeps it");
    // A peer that accepts and never reads: once the socket buffers are full, a write waits
    // past the timeout and the connection fails (the peer is dialled again).
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let (a, _ra) = start(any_port(), short);
    let (c, _rc) = start(any_port(), long);
    a.set_peers(&[(id(2), listener.local_addr().unwrap())]);
    c.set_peers(&[(id(2), listener.local_addr().unwrap())]);
    let packet = framed(&big_vote(1, 1 << 20));
    for _ in 0..40 {
        assert!(a.send(&id(2), packet.clone()) && c.send(&id(2), packet.clone()));
    }
    let mut held = Vec::new();
    let accepting = async {
        loop {
            held.push(listener.accept().await.unwrap().0);
        }
    };
    let failed = wait_until("the stalled connection failed", || a.peer_stats()[0].consecutive_failures > 0);
    tokio::select! {
        () = failed => {}
        () = accepting => unreachable!(),
    }
    let (stalled, waiting) = (a.peer_stats().remove(0), c.peer_stats().remove(0));
    assert!(stalled.dropped_packets > 0, "{stalled:?}");
    assert_eq!((waiting.consecutive_failures, waiting.dropped_packets, waiting.connections), (0, 0, 1), "{waiting:?}");
}

#[test]
fn consume_advances_across_packets() {
    let mut batch: VecDeque<Bytes> = [&b"abc"[..], b"de", b"fgh"].into_iter().map(Bytes::from_static).collect();
    assert_eq!(consume(&mut batch, 4), (1, true));
    assert_eq!(batch, [Bytes::from_static(b"e"), Bytes::from_static(b"fgh")]);
    assert_eq!(consume(&mut batch, 4), (2, false));
    assert!(batch.is_empty());
}

/// A link that takes `room` bytes of a packet, then nothing.
struct Partial {
    room: usize,
}

impl PacketLink for Partial {
    fn kind(&self) -> LinkKind {
        LinkKind::Tcp
    }
    fn try_send(&mut self, packet: &[u8]) -> usize {
        let n = packet.len().min(self.room);
        self.room -= n;
        n
    }
    fn poll_send(&mut self, _: &mut std::task::Context<'_>, _: &[IoSlice<'_>]) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Pending
    }
}

/// The rest of a packet a sender began on a lent link never goes out on another connection
/// (the peer would read it as a header), nor is it expired alone on its own.
#[test]
fn the_rest_of_a_packet_begun_on_a_connection_ends_with_it() {
    let peer = Peer::new("127.0.0.1:1".parse().unwrap());
    peer.queue.lock().unwrap().lent = Some(Box::new(Partial { room: 10 }));
    assert!(peer.enqueue(Bytes::from(vec![1u8; 30]), 1 << 20));
    assert!(peer.enqueue(Bytes::from(vec![2u8; 5]), 1 << 20), "queued behind the rest");
    {
        let mut q = peer.queue.lock().unwrap();
        assert_eq!((q.packets.len(), q.bytes, q.packets.front_started), (2, 25, true));
        // However old, a started front is not expired: only the connection's end drops it.
        let later = tokio::time::Instant::now() + Duration::from_secs(3600);
        assert_eq!(q.packets.expire(later), (0, 0));
    }
    peer.take_back_link();
    let q = peer.queue.lock().unwrap();
    assert_eq!((q.packets.len(), q.bytes, q.packets.front_started), (1, 5, false), "only the whole packet is left");
    assert_eq!(q.packets.packets[0], Bytes::from(vec![2u8; 5]));
    assert!(q.lent.is_none());
    drop(q);
    assert_eq!(peer.counters.dropped_packets.load(Relaxed), 1);
}

/// A TLS stream's write side as a sender meets it on a full socket: it seals every packet it is
/// given into its buffer, and writes the buffer out only once the socket has room.
#[derive(Clone, Default)]
struct Sealing(Arc<std::sync::Mutex<Wire>>);

#[derive(Default)]
struct Wire {
    sealed: Vec<u8>,
    sent: Vec<u8>,
    socket_full: bool,
    /// The next write fails after sealing part of its packet.
    fail: bool,
}

impl tokio::io::AsyncWrite for Sealing {
    fn poll_write(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<io::Result<usize>> {
        let mut wire = self.0.lock().unwrap();
        if wire.fail {
            wire.sealed.extend_from_slice(&buf[..buf.len() / 2]);
            return std::task::Poll::Ready(Err(io::ErrorKind::Other.into()));
        }
        wire.sealed.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        let mut wire = self.0.lock().unwrap();
        if wire.socket_full {
            return std::task::Poll::Pending;
        }
        let sealed = std::mem::take(&mut wire.sealed);
        wire.sent.extend(sealed);
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A peer whose idle TLS link, over `Sealing` set up by `set`, is lent to the senders.
fn lent_tls(set: impl FnOnce(&mut Wire)) -> (Sealing, Peer) {
    let tls = Sealing::default();
    set(&mut tls.0.lock().unwrap());
    let peer = Peer::new("127.0.0.1:1".parse().unwrap());
    peer.queue.lock().unwrap().lent = Some(Box::new(TlsLink::new(tls.clone())));
    (tls, peer)
}

/// A sender writes into an idle TLS link itself; a record the socket did not take whole stays
/// in the link, the task is woken, takes the link back and keeps it until it has flushed it,
/// and only then lends it again, so nothing waits in the link unseen.
#[tokio::test]
async fn a_tls_record_a_sender_could_not_flush_brings_the_link_back_to_its_task() {
    let (tls, peer) = lent_tls(|wire| wire.socket_full = true);
    assert!(peer.enqueue(Bytes::from_static(b"first"), 1 << 20), "taken by the link");
    assert_eq!(tls.0.lock().unwrap().sealed, b"first", "sealed, not on the wire");
    timeout(WAIT, peer.wake.notified()).await.expect("the task is woken to flush it");
    let (mut batch, mut link) = (Batch::default(), None);
    peer.take_all(&mut batch, Some(&mut link));
    assert!(batch.is_empty() && link.as_ref().is_some_and(|l| l.holds_back()));
    assert!(peer.queue.lock().unwrap().lent.is_none(), "not lent while it holds a record back");
    // Meanwhile a sender queues for the task instead of writing around the held record.
    assert!(peer.enqueue(Bytes::from_static(b"second"), 1 << 20));
    assert_eq!(peer.queue.lock().unwrap().packets.len(), 1);
    tls.0.lock().unwrap().socket_full = false;
    peer.take_all(&mut batch, Some(&mut link));
    write_batch(&peer, link.as_deref_mut().unwrap(), &mut batch, WAIT).await.unwrap();
    assert_eq!(tls.0.lock().unwrap().sent, b"firstsecond", "both on the wire, in order");
    peer.take_all(&mut batch, Some(&mut link));
    assert!(link.is_none() && peer.queue.lock().unwrap().lent.is_some(), "lent again once flushed");
}

/// A sender's TLS write that fails after sealing part of its packet ends the connection: the
/// packet is not queued again (its first half would reach the peer twice), and the task's next
/// flush fails.
#[tokio::test]
async fn a_tls_write_that_fails_midway_ends_the_connection_instead_of_resending() {
    let (tls, peer) = lent_tls(|wire| wire.fail = true);
    assert!(peer.enqueue(Bytes::from_static(b"abcdef"), 1 << 20));
    assert!(peer.queue.lock().unwrap().packets.is_empty(), "not queued again");
    timeout(WAIT, peer.wake.notified()).await.expect("the task is woken");
    tls.0.lock().unwrap().fail = false;
    let (mut batch, mut link) = (Batch::default(), None);
    peer.take_all(&mut batch, Some(&mut link));
    assert!(write_batch(&peer, link.as_deref_mut().unwrap(), &mut batch, WAIT).await.is_err(), "the connection ends");
    assert_eq!(tls.0.lock().unwrap().sealed, b"abc", "nothing written after the failure");
}

fn sharing(mux: &Arc<Mux>) -> TransportOptions {
    TransportOptions { mux: Some(mux.clone()), ..TransportOptions::default() }
}

/// Two rings in each of two "processes" (one `Mux` each), each ring's member 1 and member 2 in
/// different processes.
type Ring = (Arc<Transport>, Rx);

fn two_processes_two_rings() -> ([Arc<Mux>; 2], [[Ring; 2]; 2]) {
    let muxes = [Arc::new(Mux::default()), Arc::new(Mux::default())];
    let rings = muxes.clone().map(|mux| [0, 1].map(|_| start(any_port(), sharing(&mux))).map(|(t, rx)| (Arc::new(t), rx)));
    for ((a, _), (b, _)) in rings[0].iter().zip(&rings[1]) {
        a.set_peers(&[(id(2), b.local_addr())]);
        b.set_peers(&[(id(1), a.local_addr())]);
    }
    (muxes, rings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rings_of_two_processes_share_one_connection_each_way_and_keep_their_own_packets() {
    let (muxes, [[(a1, mut rx_a1), (a2, mut rx_a2)], [(b1, mut rx_b1), (b2, mut rx_b2)]]) = two_processes_two_rings();
    const N: u64 = 2000;
    // Ring 2's decrees are offset, so that a packet delivered to the wrong ring shows.
    let senders: Vec<_> = [(a1.clone(), 1, 2, 0), (a2.clone(), 1, 2, N), (b1.clone(), 2, 1, 0), (b2.clone(), 2, 1, N)]
        .into_iter()
        .map(|(t, from, to, base)| std::thread::spawn(move || (1..=N).all(|d| t.send(&id(to), framed(&vote(from, base + d))))))
        .collect();
    for s in senders {
        assert!(s.join().unwrap(), "every send was queued");
    }
    for (rx, from, base) in [(&mut rx_b1, 1, 0), (&mut rx_b2, 1, N), (&mut rx_a1, 2, 0), (&mut rx_a2, 2, N)] {
        for d in 1..=N {
            assert_eq!(*recv(rx).await, vote(from, base + d));
        }
    }
    assert_eq!(muxes.each_ref().map(|m| m.connections()), [1, 1], "one connection each way");
    for t in [&a1, &a2, &b1, &b2] {
        wait_until("every packet counted", || t.peer_stats()[0].sent_packets == N).await;
        let stats = &t.peer_stats()[0];
        // Each ring dials its peer's port once; a newer connection to a process retires the older.
        assert!(stats.shared && stats.connections <= 2 && stats.link == Some(LinkKind::Tcp), "{stats:?}");
        assert_eq!((stats.sent_packets, stats.dropped_packets, stats.outstanding), (N, 0, 0), "{stats:?}");
    }
    // A ring that leaves takes its peer off the connection; the other ring goes on over it.
    a2.set_peers(&[]);
    assert!(a1.send(&id(2), framed(&vote(1, N + 1))));
    assert_eq!(*recv(&mut rx_b1).await, vote(1, N + 1));
    assert_eq!(muxes[0].connections(), 1);
    // Once no ring sends over it, it closes.
    a1.set_peers(&[]);
    wait_until("the shared connection closed", || muxes[0].connections() == 0).await;
}

#[tokio::test]
async fn a_ring_unloaded_ends_the_shared_connection_and_the_others_dial_again() {
    let (muxes, [[(a1, _), (a2, _)], [(_b1, mut rx_b1), (b2, _)]]) = two_processes_two_rings();
    // Ring 2's votes come from member 3: one delivered to ring 1 would show.
    assert!(a1.send(&id(2), framed(&vote(1, 1))) && a2.send(&id(2), framed(&vote(3, 1))));
    assert_eq!(*recv(&mut rx_b1).await, vote(1, 1));
    wait_until("both rings on one connection", || muxes[0].connections() == 1 && a2.peer_stats()[0].shared).await;
    let before = a1.peer_stats()[0].connections;
    // Whichever port the connection was dialled to, it ends: that port closes, or ring 2's next
    // frame names a ring gone. Packets written behind that frame are lost (Paxos resends).
    b2.shutdown();
    drop(b2);
    let mut d = 1;
    wait_until("ring 1 on a connection dialled again", || {
        d += 1;
        a1.send(&id(2), framed(&vote(1, d)));
        a2.send(&id(2), framed(&vote(3, d)));
        let stats = &a1.peer_stats()[0];
        stats.connections > before && stats.shared
    })
    .await;
    // Packets can still be lost as the connection ends: send a last one until it arrives.
    let mut last = 1_000_000;
    loop {
        assert!(a1.send(&id(2), framed(&vote(1, last))));
        let m = recv(&mut rx_b1).await;
        assert_eq!(m.header.sender, id(1), "only ring 1's votes reach ring 1");
        if m.header.decree >= 1_000_000 {
            break;
        }
        last += 1;
    }
}

#[tokio::test]
async fn a_peer_that_does_not_share_gets_a_connection_per_ring() {
    let mux = Arc::new(Mux::default());
    let (a, _rx_a) = start(any_port(), sharing(&mux));
    let (b, mut rx_b) = start(any_port(), TransportOptions::default());
    a.set_peers(&[(id(2), b.local_addr())]);
    for d in 1..=50 {
        assert!(a.send(&id(2), framed(&vote(1, d))));
    }
    for d in 1..=50 {
        assert_eq!(*recv(&mut rx_b).await, vote(1, d));
    }
    let stats = &a.peer_stats()[0];
    assert!(!stats.shared && stats.connections == 1 && stats.link == Some(LinkKind::Tcp), "{stats:?}");
    assert_eq!(mux.connections(), 0);
}

/// What a sharing port answered an offer: its process's id and the rings (port, load) listed.
struct Answer {
    id: [u8; 8],
    rings: Vec<(u16, u64)>,
}

impl Answer {
    fn ports(&self) -> Vec<u16> {
        self.rings.iter().map(|(port, _)| *port).collect()
    }

    fn load_of(&self, port: SocketAddr) -> u64 {
        self.rings.iter().find(|(p, _)| *p == port.port()).expect("listed").1
    }

    /// The bytes of an answer with this id listing `rings` instead.
    fn claiming(&self, rings: &[(u16, u64)]) -> Vec<u8> {
        let mut bytes = [&mux::MUX_MAGIC[..], &self.id, &[rings.len() as u8]].concat();
        for (port, load) in rings {
            bytes.extend_from_slice(&port.to_le_bytes());
            bytes.extend_from_slice(&load.to_le_bytes());
        }
        bytes
    }
}

/// Opens a shared connection to `port` by hand; what it answered.
async fn offer_by_hand(port: SocketAddr) -> (TcpStream, Answer) {
    let mut raw = TcpStream::connect(port).await.unwrap();
    raw.write_all(&[&[0u8; 4][..], &mux::MUX_MAGIC].concat()).await.unwrap();
    let mut head = [0u8; 17];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(head[..8], mux::MUX_MAGIC);
    let mut rings = vec![0u8; 10 * head[16] as usize];
    raw.read_exact(&mut rings).await.unwrap();
    let ring = |r: &[u8]| (u16::from_le_bytes([r[0], r[1]]), u64::from_le_bytes(r[2..].try_into().unwrap()));
    (raw, Answer { id: head[8..16].try_into().unwrap(), rings: rings.chunks(10).map(ring).collect() })
}

/// A process on `listener` that answers offers with `answer` (only the first connection's, if
/// `once`, then gives the port up) and reports what it reads: None once it has answered, then
/// each frame's ring position.
fn squat(listener: TcpListener, answer: Vec<u8>, once: bool) -> UnboundedReceiver<Option<u8>> {
    let (seen_tx, seen) = unbounded_channel();
    tokio::spawn(async move {
        let mut listener = Some(listener);
        while let Some((mut conn, _)) = match &listener {
            Some(l) => l.accept().await.ok(),
            None => None,
        } {
            if once {
                listener = None;
            }
            let (seen_tx, answer) = (seen_tx.clone(), answer.clone());
            tokio::spawn(async move {
                let mut offer = [0u8; 12];
                if conn.read_exact(&mut offer).await.is_err() || conn.write_all(&answer).await.is_err() {
                    return;
                }
                let _ = seen_tx.send(None);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut chunk).await {
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(size) = buf.get(1..).and_then(|rest| packet::peek_size(rest, usize::MAX).ok().flatten()) {
                        if buf.len() < 1 + size {
                            break;
                        }
                        let _ = seen_tx.send(Some(buf[0]));
                        buf.drain(..1 + size);
                    }
                }
            });
        }
    });
    seen
}

/// The ring positions a squatter read until now.
async fn positions_read(seen: &mut UnboundedReceiver<Option<u8>>) -> Vec<u8> {
    let mut positions = Vec::new();
    while let Ok(Some(position)) = timeout(Duration::from_millis(200), seen.recv()).await {
        positions.extend(position);
    }
    positions
}

#[tokio::test]
async fn a_shared_connection_delivers_by_position_and_closes_on_a_bad_one() {
    let mux = Arc::new(Mux::default());
    let ((b1, mut rx_b1), (b2, mut rx_b2)) = (start(any_port(), sharing(&mux)), start(any_port(), sharing(&mux)));
    let (mut raw, answer) = offer_by_hand(b2.local_addr()).await;
    assert_eq!(answer.ports(), [b2.local_addr().port(), b1.local_addr().port()], "the dialled port first");
    assert_ne!(answer.load_of(b1.local_addr()), answer.load_of(b2.local_addr()));
    let frame = |position: u8, d| [&[position][..], &framed(&vote(1, d))].concat();
    raw.write_all(&[frame(1, 1), frame(0, 2)].concat()).await.unwrap();
    assert_eq!(*recv(&mut rx_b1).await, vote(1, 1));
    assert_eq!(*recv(&mut rx_b2).await, vote(1, 2));
    // A position past the list closes the connection; nothing after it is delivered.
    raw.write_all(&[frame(2, 3), frame(1, 4)].concat()).await.unwrap();
    expect_closed(&mut raw).await;
    // So does a corrupt packet at a good position.
    let (mut raw, _) = offer_by_hand(b1.local_addr()).await;
    let mut bad = frame(0, 5);
    bad[41] ^= 1;
    raw.write_all(&[frame(0, 4), bad].concat()).await.unwrap();
    assert_eq!(*recv(&mut rx_b1).await, vote(1, 4));
    expect_closed(&mut raw).await;
    // And a frame for a ring unloaded since the connection was set up.
    let (mut raw, _) = offer_by_hand(b1.local_addr()).await;
    b2.shutdown();
    raw.write_all(&frame(1, 6)).await.unwrap();
    expect_closed(&mut raw).await;
    assert!(rx_b1.try_recv().is_err() && rx_b2.try_recv().is_err(), "nothing else was delivered");
    // A port whose rings share nothing closes on an offer, as the original's does.
    let (plain, _rx) = start(any_port(), TransportOptions::default());
    let mut raw = TcpStream::connect(plain.local_addr()).await.unwrap();
    raw.write_all(&[&[0u8; 4][..], &mux::MUX_MAGIC].concat()).await.unwrap();
    expect_closed(&mut raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_rings_share_a_connection_only_under_the_same_trust_and_keep_the_identity() {
    let (dir, ca) = (tempfile::tempdir().unwrap(), super::super::tls::issue::Ca::new("test CA"));
    let [one, two, other] = ["1", "2", "2b"].map(|name| {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        test_tls(&sub, &ca, name.trim_end_matches('b'))
    });
    let start_shared = |tls: &Arc<Tls>, mux: &Arc<Mux>| {
        let (tx, rx) = unbounded_channel();
        let deliver = Arc::new(move |m, origin| drop(tx.send((m, origin))));
        (Transport::start(&Handle::current(), any_port(), sharing(mux), Some(tls.clone()), deliver).unwrap(), rx)
    };
    let (ma, mb) = (Arc::new(Mux::default()), Arc::new(Mux::default()));
    let ((a1, _), (a2, _), (a3, _)) = (start_shared(&one, &ma), start_shared(&one, &ma), start_shared(&one, &ma));
    // b3 trusts by a configuration of its own: never on the connection b1 and b2 share.
    let ((b1, mut rx1), (b2, mut rx2), (b3, mut rx3)) = (start_shared(&two, &mb), start_shared(&two, &mb), start_shared(&other, &mb));
    for (a, b) in [(&a1, &b1), (&a2, &b2), (&a3, &b3)] {
        a.set_peers(&[(id(2), b.local_addr())]);
        assert!(a.send(&id(2), framed(&vote(1, 1))));
    }
    for rx in [&mut rx1, &mut rx2, &mut rx3] {
        let (m, names) = recv_from(rx).await;
        assert_eq!((&*m, names), (&vote(1, 1), vec!["1".to_string()]));
    }
    wait_until("b1's and b2's rings on one TLS connection, b3's on another", || {
        ma.connections() == 2 && [&a1, &a2, &a3].iter().all(|a| a.peer_stats()[0].shared && a.peer_stats()[0].link == Some(LinkKind::Tls))
    })
    .await;
}

#[tokio::test]
async fn a_ring_loaded_later_in_the_peer_process_brings_every_ring_onto_one_connection() {
    let (ma, mb) = (Arc::new(Mux::default()), Arc::new(Mux::default()));
    let ((a1, _), (a2, _)) = (start(any_port(), sharing(&ma)), start(any_port(), sharing(&ma)));
    let (b1, mut rx1) = start(any_port(), sharing(&mb));
    a1.set_peers(&[(id(2), b1.local_addr())]);
    assert!(a1.send(&id(2), framed(&vote(1, 1))));
    assert_eq!(*recv(&mut rx1).await, vote(1, 1));
    // b2 is loaded after the connection listed b's rings: a2 dials it, and the answer lists
    // both, so the older connection hands ring 1 over.
    let (b2, mut rx2) = start(any_port(), sharing(&mb));
    a2.set_peers(&[(id(2), b2.local_addr())]);
    assert!(a2.send(&id(2), framed(&vote(1, 2))));
    assert_eq!(*recv(&mut rx2).await, vote(1, 2));
    wait_until("ring 1 moved onto the newer connection", || a1.peer_stats()[0].connections == 2 && a1.peer_stats()[0].shared).await;
    assert_eq!(ma.connections(), 1);
    assert!(a1.send(&id(2), framed(&vote(1, 3))));
    assert_eq!(*recv(&mut rx1).await, vote(1, 3));
    wait_until("both counted", || a1.peer_stats()[0].sent_packets == 2).await;
    assert_eq!(a1.peer_stats()[0].dropped_packets, 0, "nothing lost in the move");
}

#[tokio::test]
async fn a_shared_connection_carries_a_packet_of_the_largest_size() {
    let packet = framed(&big_vote(1, 3 * READ_CHUNK));
    let mux = Arc::new(Mux::default());
    let (b, mut rx) = start(any_port(), TransportOptions { max_packet: packet.len(), ..sharing(&mux) });
    let (mut raw, _) = offer_by_hand(b.local_addr()).await;
    raw.write_all(&[&[0u8][..], &packet].concat()).await.unwrap();
    assert_eq!(*recv(&mut rx).await, big_vote(1, 3 * READ_CHUNK));
}

#[tokio::test]
async fn a_port_number_taken_by_another_ring_of_the_process_shares_nothing() {
    let mux = Arc::new(Mux::default());
    let (first, _rx) = start(any_port(), sharing(&mux));
    let other: SocketAddr = format!("127.0.0.2:{}", first.local_addr().port()).parse().unwrap();
    let (second, mut rx) = start(other, sharing(&mux));
    let mut raw = TcpStream::connect(second.local_addr()).await.unwrap();
    raw.write_all(&[&[0u8; 4][..], &mux::MUX_MAGIC].concat()).await.unwrap();
    expect_closed(&mut raw).await;
    // Its own packets still arrive on connections of its own.
    let (a, _rx_a) = start(any_port(), sharing(&Arc::new(Mux::default())));
    a.set_peers(&[(id(2), second.local_addr())]);
    assert!(a.send(&id(2), framed(&vote(1, 1))));
    assert_eq!(*recv(&mut rx).await, vote(1, 1));
    assert!(!a.peer_stats()[0].shared);
}

#[tokio::test]
async fn a_process_that_lists_another_ones_port_does_not_get_its_packets_even_with_its_id() {
    let (mb, ma) = (Arc::new(Mux::default()), Arc::new(Mux::default()));
    let (b, mut rx_b) = start(any_port(), sharing(&mb));
    // A liar: learns b's process id and load by dialling it, then answers every offer with
    // them, listing its own port and b's; it reports the ring position of every frame it reads.
    let liar = TcpListener::bind(any_port()).await.unwrap();
    let (liar_port, b_addr) = (liar.local_addr().unwrap(), b.local_addr());
    let (_, asked) = offer_by_hand(b_addr).await;
    let mut seen = squat(liar, asked.claiming(&[(liar_port.port(), 7), (b_addr.port(), asked.load_of(b_addr))]), false);
    let ((a1, _), (a2, _)) = (start(any_port(), sharing(&ma)), start(any_port(), sharing(&ma)));
    a2.set_peers(&[(id(2), b.local_addr())]);
    assert!(a2.send(&id(2), framed(&vote(1, 1))));
    assert_eq!(*recv(&mut rx_b).await, vote(1, 1));
    a1.set_peers(&[(id(2), liar_port)]);
    assert!(a1.send(&id(2), framed(&vote(1, 1))));
    wait_until("a1 on the liar's connection", || a1.peer_stats()[0].shared).await;
    for d in 2..=20 {
        assert!(a2.send(&id(2), framed(&vote(1, d))));
        assert_eq!(*recv(&mut rx_b).await, vote(1, d), "b's packets go to b");
    }
    // The liar's answer listed b's port, so a2's connection was retired for it; but b's own
    // answer, asked again, does not vouch for the liar's: a2 dialled b again.
    assert_eq!(ma.connections(), 2, "the liar's connection, and a2's own");
    drop((a1, a2));
    assert_eq!(positions_read(&mut seen).await, [0], "the liar read its own ring's frame, and nothing for b");
}

#[tokio::test]
async fn rings_a_peer_process_lists_apart_keep_a_connection_each_instead_of_retiring_each_other() {
    let (ma, mb) = (Arc::new(Mux::default()), Arc::new(Mux::default()));
    let ((a1, _), (a2, _)) = (start(any_port(), sharing(&ma)), start(any_port(), sharing(&ma)));
    // A different largest packet: b's port lists each of its rings apart.
    let (b1, mut rx1) = start(any_port(), sharing(&mb));
    let (b2, mut rx2) = start(any_port(), TransportOptions { max_packet: DEFAULT_MAX_PACKET / 2, ..sharing(&mb) });
    a1.set_peers(&[(id(2), b1.local_addr())]);
    a2.set_peers(&[(id(2), b2.local_addr())]);
    for d in 1..=100 {
        assert!(a1.send(&id(2), framed(&vote(1, d))) && a2.send(&id(2), framed(&vote(1, d))));
        assert_eq!(*recv(&mut rx1).await, vote(1, d));
        assert_eq!(*recv(&mut rx2).await, vote(1, d));
    }
    assert_eq!(ma.connections(), 2);
    for a in [&a1, &a2] {
        let stats = &a.peer_stats()[0];
        assert!(stats.shared && stats.connections == 1, "never moved: {stats:?}");
    }
}

/// The squatter cases' start: a1 and a2 share a connection to b's ring x; a2 leaves; b
/// unloads ring y and a squatter takes its port, answering as b did (b's id and loads, as
/// anyone may learn them), for every connection or (`once`) only the first; a2 is given y
/// again, so its next frame names y on the connection to x, which b ends, and it dials y: the
/// squatter. a1 looks for a connection again only after that (its backoff is long).
struct Squatted {
    ma: Arc<Mux>,
    mb: Arc<Mux>,
    a1: Transport,
    rx_b1: Rx,
    x: SocketAddr,
    y: SocketAddr,
    seen: UnboundedReceiver<Option<u8>>,
    _keep: (Transport, Transport, Rx),
}

async fn squatted(once: bool) -> Squatted {
    let (ma, mb) = (Arc::new(Mux::default()), Arc::new(Mux::default()));
    let ((b1, mut rx_b1), (b2, _)) = (start(any_port(), sharing(&mb)), start(any_port(), sharing(&mb)));
    let (x, y) = (b1.local_addr(), b2.local_addr());
    let (a1, _) = start(any_port(), TransportOptions { backoff_min: Duration::from_secs(1), ..sharing(&ma) });
    let (a2, rx_a2) = start(any_port(), sharing(&ma));
    a1.set_peers(&[(id(2), x)]);
    assert!(a1.send(&id(2), framed(&vote(1, 1))));
    assert_eq!(*recv(&mut rx_b1).await, vote(1, 1));
    a2.set_peers(&[(id(2), y)]);
    assert!(a2.send(&id(2), framed(&vote(3, 1))));
    wait_until("a2 on a1's connection, dialled to x", || ma.connections() == 1 && a2.peer_stats()[0].shared).await;
    a2.set_peers(&[]);
    let (_, asked) = offer_by_hand(x).await;
    if let Some(done) = b2.shutdown() {
        let _ = done.await;
    }
    drop(b2);
    let claim = asked.claiming(&[(y.port(), asked.load_of(y)), (x.port(), asked.load_of(x))]);
    let mut seen = squat(TcpListener::bind(y).await.unwrap(), claim, once);
    a2.set_peers(&[(id(2), y)]);
    assert!(a2.send(&id(2), framed(&vote(3, 2))));
    assert_eq!(timeout(WAIT, seen.recv()).await.unwrap(), Some(None), "a2 met the squatter");
    Squatted { ma, mb, a1, rx_b1, x, y, seen, _keep: (b1, a2, rx_a2) }
}

/// a1's votes `decrees` all reach b's ring x, and the squatter reads none of x's frames.
async fn x_packets_go_to_b_only(a1: &Transport, rx_b1: &mut Rx, seen: &mut UnboundedReceiver<Option<u8>>, decrees: RangeInclusive<u64>) {
    for d in decrees.clone() {
        assert!(a1.send(&id(2), framed(&vote(1, d))));
    }
    for d in decrees {
        assert_eq!(*recv(rx_b1).await, vote(1, d), "x's packets go to b");
    }
    let positions = positions_read(seen).await;
    assert!(!positions.contains(&1), "the squatter read x's frames: {positions:?}");
}

/// The reviewer's case: what b answered before it unloaded ring y (listing it) vouches for
/// nothing answered since, so a1 dials b again rather than joining the squatter's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_over_after_its_ring_left_gets_none_of_the_other_rings_packets() {
    let Squatted { a1, mut rx_b1, mut seen, _keep: _held, .. } = squatted(false).await;
    x_packets_go_to_b_only(&a1, &mut rx_b1, &mut seen, 2..=10).await;
}

/// The squatter gives the port back, keeping its connection, with a2 on it, and b loads a
/// ring there again: what the new ring receives.
async fn given_back(sq: &mut Squatted) -> (Transport, Rx) {
    assert!(sq.a1.send(&id(2), framed(&vote(1, 2))));
    assert_eq!(*recv(&mut sq.rx_b1).await, vote(1, 2));
    wait_until("a1 on its own connection, a2 on the squatter's", || sq.ma.connections() == 2).await;
    start(sq.y, sharing(&sq.mb))
}

/// The second reviewer's case: when a1 then looks for a connection, b's fresh answer lists y
/// again, with another load than the squatter claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_given_back_after_a_squatter_answered_on_it_does_not_vouch_for_the_squatter() {
    let mut sq = squatted(true).await;
    let _b2 = given_back(&mut sq).await;
    let Squatted { ma, a1, mut rx_b1, x, mut seen, _keep: _held, .. } = sq;
    a1.set_peers(&[]);
    wait_until("a1's connection closed", || ma.connections() == 1).await;
    a1.set_peers(&[(id(2), x)]);
    x_packets_go_to_b_only(&a1, &mut rx_b1, &mut seen, 3..=12).await;
}

/// The third reviewer's case: another ring of ours whose peer is at y then gets a connection
/// to b's new ring, not the squatter's, although that one was dialled to y.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dialled_to_a_port_carries_another_ring_to_it_only_if_the_port_vouches_for_it() {
    let mut sq = squatted(true).await;
    let (_b2, mut rx_b2) = given_back(&mut sq).await;
    let (a3, _rx_a3) = start(any_port(), sharing(&sq.ma));
    a3.set_peers(&[(id(2), sq.y)]);
    for d in 1..=5 {
        assert!(a3.send(&id(2), framed(&vote(5, d))));
    }
    for d in 1..=5 {
        assert_eq!(*recv(&mut rx_b2).await, vote(5, d), "a3's packets go to b's new ring");
    }
    let positions = positions_read(&mut sq.seen).await;
    // (a2's one frame since it was given y again went to b, which ended the connection for it.)
    assert_eq!(positions, [], "the squatter read none of a3's frames");
}

/// Eight rings a side, all dialling at once (the second reviewer's model found that dials
/// spread wider than a drain could retire each other without end): each side settles on one
/// connection, and every ring's packets arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_rings_a_side_dialling_at_once_settle_on_one_connection_each_way() {
    let muxes = [Arc::new(Mux::default()), Arc::new(Mux::default())];
    let mut sides: Vec<Vec<(Transport, Rx)>> = muxes.iter().map(|m| (0..8).map(|_| start(any_port(), sharing(m))).collect()).collect();
    for ((a, _), (b, _)) in sides[0].iter().zip(&sides[1]) {
        a.set_peers(&[(id(2), b.local_addr())]);
        b.set_peers(&[(id(1), a.local_addr())]);
    }
    // Each ring's decrees are its own: a packet delivered to another ring would show.
    let decree = |ring: usize, d: u64| 1000 * ring as u64 + d;
    for d in 1..=20 {
        for (side, (from, to)) in [(0, (1, 2)), (1, (2, 1))] {
            for (ring, (t, _)) in sides[side].iter().enumerate() {
                assert!(t.send(&id(to), framed(&vote(from, decree(ring, d)))));
            }
        }
    }
    for (side, from) in [(1, 1), (0, 2)] {
        for (ring, (_, rx)) in sides[side].iter_mut().enumerate() {
            for d in 1..=20 {
                assert_eq!(*recv(rx).await, vote(from, decree(ring, d)));
            }
        }
    }
    wait_until("one connection each way", || muxes.iter().all(|m| m.connections() == 1)).await;
    wait_until("every ring on it", || sides.iter().flatten().all(|(t, _)| t.peer_stats()[0].shared)).await;
}
