//! The Paxos port: framed RSL messages over TCP, one outbound connection per peer and a reader
//! for every connection peers open to us (formats.md §7.1, api-behavior.md §2.30).
//!
//! The protocol thread calls [`Transport::send`], which only enqueues: the peer's connection
//! task gathers everything queued into vectored writes. Every connection's reader decodes on
//! the tokio threads and hands each message to the `on_message` callback.

use crate::format::message::{Checksum, Message, MsgKind};
use crate::format::packet::{self, Frame, DEFAULT_MAX_PACKET, HEADER_SIZE};
use crate::format::types::MemberId;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

/// What every connection's reader calls with each message it decodes. It runs on a tokio
/// thread, so it must hand the message off rather than work on it.
/// Takes each message with the IP it came from (a Join from a member we do not know yet is
/// answered by learning from that address).
pub type OnMessage = Arc<dyn Fn(Arc<Message>, IpAddr) + Send + Sync>;

/// How much a reader asks of the socket at a time while packets are small.
const READ_CHUNK: usize = 64 * 1024;
/// The most packets (slices) one vectored write carries; Linux allows 1024.
const MAX_IOV: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// The largest packet accepted, header included (`m_maxMessageSizeMB` MiB + 1024).
    pub max_packet: usize,
    /// Bytes a peer's send queue may hold; `send` drops beyond it (Paxos resends).
    pub max_queue_bytes: usize,
    /// The first and the largest wait between connection attempts to a peer.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            max_packet: DEFAULT_MAX_PACKET,
            max_queue_bytes: 64 * 1024 * 1024,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// One peer's connection state and counters, for health and statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    pub member: MemberId,
    pub addr: SocketAddr,
    pub connected: bool,
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// Bytes waiting in the queue now.
    pub queued_bytes: usize,
}

/// Encodes `msg` as it goes on the Paxos port (message checksum only for votes) and wraps it
/// in a packet. `out` is scratch space the caller keeps to amortise allocations.
pub fn frame(msg: &Message, out: &mut BytesMut) -> Bytes {
    assert!(out.is_empty(), "`out` is scratch space");
    msg.encode_into(out, Checksum::Default).expect("the protocol only builds encodable messages");
    let body = out.split();
    packet::encode_into(&body, out);
    debug_assert_eq!(out.len(), HEADER_SIZE + body.len());
    out.split().freeze()
}

/// The Paxos port of one ring.
pub struct Transport {
    rt: Handle,
    opts: TransportOptions,
    on_message: OnMessage,
    local_addr: SocketAddr,
    peers: Mutex<HashMap<MemberId, PeerEntry>>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl Transport {
    /// Binds `listen` (an error here is the caller's to report) and starts accepting.
    pub fn start(rt: &Handle, listen: SocketAddr, opts: TransportOptions, on_message: OnMessage) -> io::Result<Transport> {
        assert!(opts.max_packet > HEADER_SIZE, "a packet must be able to carry a message");
        assert!(opts.backoff_min > Duration::ZERO && opts.backoff_min <= opts.backoff_max, "backoff bounds out of order");
        let listener = bind(rt, listen)?;
        let local_addr = listener.local_addr()?;
        let (max_packet, deliver) = (opts.max_packet, on_message.clone());
        let acceptor = rt.spawn(accept_each(listener, move |stream, from| read_inbound(stream, from, max_packet, deliver.clone())));
        Ok(Transport {
            rt: rt.clone(),
            opts,
            on_message,
            local_addr,
            peers: Mutex::new(HashMap::new()),
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Makes `peers` the peer set: new peers get a connection task, peers no longer listed
    /// (or at a new address) lose their connection and queue.
    pub fn set_peers(&self, peers: &[(MemberId, SocketAddr)]) {
        debug_assert!(peers.iter().enumerate().all(|(i, (id, _))| peers[..i].iter().all(|(p, _)| p != id)), "one address per peer");
        let mut map = self.peers.lock().expect("peer map poisoned");
        if self.acceptor.lock().expect("acceptor poisoned").is_none() {
            return; // shut down
        }
        map.retain(|id, entry| peers.iter().any(|(p, addr)| p == id && *addr == entry.peer.addr));
        for &(id, addr) in peers {
            map.entry(id).or_insert_with(|| {
                let peer = Arc::new(Peer::new(addr));
                let task = self.rt.spawn(run_peer(peer.clone(), self.opts.clone(), self.on_message.clone()));
                PeerEntry { peer, task }
            });
        }
        debug_assert!(map.len() <= peers.len());
    }

    /// Queues an already framed packet for `to`; never blocks. False (the packet dropped) if
    /// `to` is not a peer or its queue would pass `max_queue_bytes`.
    pub fn send(&self, to: &MemberId, packet: Bytes) -> bool {
        debug_assert!(packet::peek_size(&packet, usize::MAX).ok().flatten() == Some(packet.len()), "send takes a framed packet");
        let map = self.peers.lock().expect("peer map poisoned");
        let Some(entry) = map.get(to) else { return false };
        entry.peer.enqueue(packet, self.opts.max_queue_bytes)
    }

    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let map = self.peers.lock().expect("peer map poisoned");
        map.iter().map(|(id, entry)| entry.peer.stats(*id)).collect()
    }

    /// Closes the listener and every connection; their tasks end. Sends fail from here on.
    pub fn shutdown(&self) {
        if let Some(acceptor) = self.acceptor.lock().expect("acceptor poisoned").take() {
            acceptor.abort();
        }
        self.peers.lock().expect("peer map poisoned").clear();
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds synchronously, so that the caller sees the error, and registers with `rt`.
pub(super) fn bind(rt: &Handle, addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let _guard = rt.enter();
    TcpListener::from_std(listener)
}

/// A peer in the map; removing it ends its connection task.
struct PeerEntry {
    peer: Arc<Peer>,
    task: JoinHandle<()>,
}

impl Drop for PeerEntry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct SendQueue {
    packets: VecDeque<Bytes>,
    bytes: usize,
}

/// What the protocol thread and a peer's connection task share.
struct Peer {
    addr: SocketAddr,
    queue: Mutex<SendQueue>,
    /// Signalled when the queue goes from empty to non-empty.
    wake: Notify,
    connected: AtomicBool,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    sent_packets: AtomicU64,
    sent_bytes: AtomicU64,
    dropped_packets: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl Peer {
    fn new(addr: SocketAddr) -> Peer {
        Peer { addr, queue: Mutex::default(), wake: Notify::new(), connected: AtomicBool::new(false), counters: Counters::default() }
    }

    fn enqueue(&self, packet: Bytes, max_queue_bytes: usize) -> bool {
        let len = packet.len();
        let mut q = self.queue.lock().expect("send queue poisoned");
        if q.bytes + len > max_queue_bytes {
            drop(q);
            self.count_dropped(1, len);
            return false;
        }
        q.bytes += len;
        q.packets.push_back(packet);
        debug_assert!(q.bytes <= max_queue_bytes);
        let first = q.packets.len() == 1;
        drop(q);
        if first {
            self.wake.notify_one();
        }
        true
    }

    /// Moves everything queued into `batch` (which must be empty): one lock per batch.
    fn take_all(&self, batch: &mut VecDeque<Bytes>) {
        assert!(batch.is_empty(), "the previous batch is written first");
        let mut q = self.queue.lock().expect("send queue poisoned");
        std::mem::swap(&mut q.packets, batch);
        q.bytes = 0;
    }

    fn count_dropped(&self, packets: usize, bytes: usize) {
        self.counters.dropped_packets.fetch_add(packets as u64, Relaxed);
        self.counters.dropped_bytes.fetch_add(bytes as u64, Relaxed);
    }

    fn stats(&self, member: MemberId) -> PeerStats {
        PeerStats {
            member,
            addr: self.addr,
            connected: self.connected.load(Relaxed),
            sent_packets: self.counters.sent_packets.load(Relaxed),
            sent_bytes: self.counters.sent_bytes.load(Relaxed),
            dropped_packets: self.counters.dropped_packets.load(Relaxed),
            dropped_bytes: self.counters.dropped_bytes.load(Relaxed),
            queued_bytes: self.queue.lock().expect("send queue poisoned").bytes,
        }
    }
}

/// A peer's connection task: connect with exponential backoff, serve the connection until it
/// breaks, repeat. Packets queued meanwhile wait (bounded); those a broken connection was
/// writing are lost.
async fn run_peer(peer: Arc<Peer>, opts: TransportOptions, on_message: OnMessage) {
    let mut backoff = opts.backoff_min;
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer.addr)).await {
            Ok(Ok(stream)) => {
                backoff = opts.backoff_min;
                info!(peer = %peer.addr, "connected");
                let result = serve_outbound(&peer, stream, opts.max_packet, &on_message).await;
                peer.connected.store(false, Relaxed);
                info!(peer = %peer.addr, ?result, "connection closed");
            }
            Ok(Err(e)) => debug!(peer = %peer.addr, error = %e, "connect failed"),
            Err(_) => debug!(peer = %peer.addr, "connect timed out"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}

/// Writes the queue to the connection and reads the responses the peer sends back on it.
async fn serve_outbound(peer: &Peer, stream: TcpStream, max_packet: usize, on_message: &OnMessage) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, wr) = stream.into_split();
    peer.connected.store(true, Relaxed);
    let mut batch = VecDeque::new();
    let result = tokio::select! {
        r = read_packets(&mut rd, max_packet, on_message, Side::Outbound, peer.addr.ip()) => r,
        r = write_queued(peer, wr, &mut batch) => r,
    };
    // Whichever side failed, what was being written is lost.
    peer.count_dropped(batch.len(), batch.iter().map(Bytes::len).sum());
    result
}

async fn write_queued(peer: &Peer, mut wr: OwnedWriteHalf, batch: &mut VecDeque<Bytes>) -> io::Result<()> {
    loop {
        peer.take_all(batch);
        if batch.is_empty() {
            peer.wake.notified().await;
            continue;
        }
        write_batch(peer, &mut wr, batch).await?;
    }
}

/// Writes `batch` with as few vectored writes as the kernel allows, counting what was sent.
async fn write_batch(peer: &Peer, wr: &mut OwnedWriteHalf, batch: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !batch.is_empty() {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = batch.len().min(MAX_IOV);
        for (slot, packet) in iov.iter_mut().zip(batch.iter()) {
            *slot = IoSlice::new(packet);
        }
        debug_assert!(n > 0 && batch.iter().take(n).all(|p| !p.is_empty()), "every slice carries bytes");
        let written = wr.write_vectored(&iov[..n]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let done = consume(batch, written);
        peer.counters.sent_packets.fetch_add(done as u64, Relaxed);
        peer.counters.sent_bytes.fetch_add(written as u64, Relaxed);
    }
    Ok(())
}

/// Removes `written` bytes from the front of `batch`; returns how many packets completed.
fn consume(batch: &mut VecDeque<Bytes>, mut written: usize) -> usize {
    let mut done = 0;
    while written > 0 {
        let front = batch.front_mut().expect("the kernel wrote no more than it was given");
        if front.len() > written {
            front.advance(written);
            break;
        }
        written -= front.len();
        batch.pop_front();
        done += 1;
    }
    done
}

/// Accepts connections until aborted, serving each on a task of its own. The tasks belong to
/// this one, so aborting it closes the listener and every connection.
pub(super) async fn accept_each<F: Future<Output = ()> + Send + 'static>(
    listener: TcpListener,
    serve: impl Fn(TcpStream, SocketAddr) -> F,
) {
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, from)) => drop(tasks.spawn(serve(stream, from))),
            Err(e) => {
                // Out of descriptors, say: pause rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn read_inbound(mut stream: TcpStream, from: SocketAddr, max_packet: usize, on_message: OnMessage) {
    let _ = stream.set_nodelay(true);
    let result = read_packets(&mut stream, max_packet, &on_message, Side::Inbound, from.ip()).await;
    debug!(%from, ?result, "inbound connection closed");
}

/// Which end of a connection we are: the original's client side (our outbound connection)
/// only takes response types (api-behavior.md §2.30); the server side takes everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Outbound,
    Inbound,
}

impl Side {
    fn accepts(self, kind: MsgKind) -> bool {
        use MsgKind::*;
        self == Side::Inbound
            || matches!(kind, VoteAccepted | PrepareAccepted | NotAccepted | StatusResponse | DefunctConfiguration | Join | JoinRequest)
    }
}

/// Reads packets until EOF, delivering each message. A bad packet is an error, which closes the
/// connection (§7.1); a packet whose message does not decode is dropped.
async fn read_packets<R: AsyncRead + Unpin>(
    rd: &mut R,
    max_packet: usize,
    on_message: &OnMessage,
    side: Side,
    from: IpAddr,
) -> io::Result<()> {
    let chunk = READ_CHUNK.min(max_packet);
    let mut buf = BytesMut::with_capacity(chunk);
    loop {
        let need = match packet::peek_size(&buf, max_packet).map_err(invalid_data)? {
            Some(size) if buf.len() >= size => {
                deliver(buf.split_to(size).freeze(), max_packet, on_message, side, from)?;
                continue;
            }
            Some(size) => size,
            None => HEADER_SIZE,
        };
        grow_for(&mut buf, need, chunk);
        debug_assert!(buf.len() < need && buf.capacity() <= max_packet.max(chunk), "one packet at a time");
        if rd.read_buf(&mut buf).await? == 0 {
            return if buf.is_empty() { Ok(()) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
    }
}

fn deliver(packet: Bytes, max_packet: usize, on_message: &OnMessage, side: Side, from: IpAddr) -> io::Result<()> {
    let Frame::Packet { message, consumed } = packet::decode(&packet, max_packet).map_err(invalid_data)? else {
        unreachable!("the packet is complete");
    };
    debug_assert_eq!(consumed, packet.len());
    match Message::decode(&message) {
        Ok(msg) if side.accepts(msg.kind()) => on_message(Arc::new(msg), from),
        Ok(msg) => debug!(kind = ?msg.kind(), "a request on an outbound connection: dropped"),
        Err(e) => warn!(error = %e, "undecodable message dropped"),
    }
    Ok(())
}

fn invalid_data(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Makes room in `buf` to read towards `need` bytes (the frame it holds the start of). The
/// buffer grows geometrically with what has arrived, never straight to `need`, so a hostile
/// size field costs only the bytes actually sent; it never exceeds `max(need, chunk)`.
pub(super) fn grow_for(buf: &mut BytesMut, need: usize, chunk: usize) {
    assert!(buf.len() < need, "the frame is not complete yet");
    let room = (need - buf.len()).min(chunk);
    if buf.capacity() - buf.len() >= room {
        return;
    }
    let cap = (buf.len() * 2).max(chunk).clamp(buf.len() + room, need.max(chunk));
    let mut fresh = BytesMut::with_capacity(cap);
    fresh.extend_from_slice(buf);
    *buf = fresh;
    debug_assert!(buf.capacity() - buf.len() >= room);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::message::{Body, Header, VoteBody};
    use crate::format::types::{Ballot, Version};
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
    fn start(addr: SocketAddr, opts: TransportOptions) -> (Transport, UnboundedReceiver<Arc<Message>>) {
        let (tx, rx) = unbounded_channel();
        let t = Transport::start(&Handle::current(), addr, opts, Arc::new(move |m, _| drop(tx.send(m)))).unwrap();
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
        // Send from plain threads, as the protocol thread does.
        let (a, b) = (Arc::new(a), Arc::new(b));
        let senders: Vec<_> = [(a.clone(), 1, 2), (b.clone(), 2, 1)]
            .into_iter()
            .map(|(t, from, to)| std::thread::spawn(move || (1..=N).all(|d| t.send(&id(to), framed(&vote(from, d))))))
            .collect();
        for s in senders {
            assert!(s.join().unwrap(), "every send was queued");
        }
        for (rx, from) in [(&mut rx_b, 1), (&mut rx_a, 2)] {
            for d in 1..=N {
                assert_eq!(*recv(rx).await, vote(from, d));
            }
        }
        let stats = a.peer_stats();
        assert_eq!(stats.len(), 1);
        assert!(stats[0].connected);
        assert_eq!((stats[0].sent_packets, stats[0].dropped_packets, stats[0].queued_bytes), (N, 0, 0));
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
            match Transport::start(&Handle::current(), addr, TransportOptions::default(), Arc::new(move |m, _| drop(tx.send(m)))) {
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

    #[test]
    fn consume_advances_across_packets() {
        let mut batch: VecDeque<Bytes> = [&b"abc"[..], b"de", b"fgh"].into_iter().map(Bytes::from_static).collect();
        assert_eq!(consume(&mut batch, 4), 1);
        assert_eq!(batch, [Bytes::from_static(b"e"), Bytes::from_static(b"fgh")]);
        assert_eq!(consume(&mut batch, 4), 2);
        assert!(batch.is_empty());
    }
}
