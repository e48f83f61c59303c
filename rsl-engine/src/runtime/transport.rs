//! The Paxos port: framed RSL messages over TCP, one outbound connection per peer and a reader
//! for every connection peers open to us (docs/spec/formats.md §7.1, docs/spec/behavior.md §2.30).
//!
//! The protocol thread calls [`Transport::send`], which never blocks. While a plain TCP
//! connection's task has nothing queued or being written, the packet goes straight into the
//! socket with one non-blocking write; otherwise it is queued and the task gathers everything
//! queued into vectored writes. Every connection's reader decodes on the tokio threads and
//! hands each message to the `on_message` callback.
//!
//! With TLS, every connection starts with a handshake (in its own task, never the accept
//! loop) and each message carries the certified identity of the connection it came on.

use super::health::{from_unix_micros, unix_micros};
use super::ringbuf::SendError;
use super::shm_link::{self, Offered, RingSender, ShmOptions};
use super::tls::{PeerIdentity, Tls};
use crate::format::message::{Checksum, Message, MsgKind};
use crate::format::packet::{self, Frame, DEFAULT_MAX_PACKET, HEADER_SIZE};
use crate::format::types::MemberId;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

/// What every connection's reader calls with each message it decodes. It runs on a tokio
/// thread, so it must hand the message off rather than work on it.
/// Takes each message with where it came from (a Join from a member we do not know yet is
/// answered by learning from that address).
pub type OnMessage = Arc<dyn Fn(Arc<Message>, Origin) + Send + Sync>;
/// Told the member whose outbound connection attempt failed or whose connection broke.
pub type OnConnectFailure = Arc<dyn Fn(MemberId) + Send + Sync>;

/// The connection a message arrived on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The peer's IP address.
    pub ip: IpAddr,
    /// The certificate the peer presented, on an authenticated connection (with TLS); for a
    /// message read on our outbound connection, the server's.
    pub peer: Option<Arc<PeerIdentity>>,
}

/// How much a reader asks of the socket at a time while packets are small.
const READ_CHUNK: usize = 64 * 1024;
/// The most packets (slices) one vectored write carries; Linux allows 1024.
const MAX_IOV: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed shared-memory set-up, how long a peer's connections are plain TCP.
const SHM_RETRY: Duration = Duration::from_secs(60);

/// The Paxos-port transport's limits and timeouts, from [`RslConfig`](super::RslConfig).
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// The largest packet accepted, header included (`m_maxMessageSizeMB` MiB + 1024).
    pub max_packet: usize,
    /// Bytes a peer's send queue may hold; `send` drops beyond it (Paxos resends).
    pub max_queue_bytes: usize,
    /// The first and the largest wait between connection attempts to a peer.
    pub backoff_min: Duration,
    /// The largest wait between connection attempts (the wait grows from `backoff_min`,
    /// exponentially).
    pub backoff_max: Duration,
    /// Inbound connections served at once; more are closed as they arrive.
    pub max_inbound: usize,
    /// An inbound connection on which nothing arrives for this long is closed.
    pub idle_timeout: Duration,
    /// A packet begun must have arrived whole within this long (the slow-sender bound).
    pub frame_timeout: Duration,
    /// Bytes of partly received packets every reader together may hold beyond the first
    /// `READ_CHUNK` of each; a reader that would pass it is closed.
    pub max_buffered: usize,
    /// A packet received larger than this many bytes raises an Alert (0: none); RSL's
    /// `m_maxMessageAlertSizeMB`.
    pub alert_packet: usize,
    /// [`Transport::broadcast`] skips a peer with this many packets unsent
    /// (`m_maxOutstandingPerReplica`).
    pub max_outstanding: usize,
    /// A packet not written within this long of being queued is dropped; if it was being
    /// written, the connection fails with it (`m_sendTimeoutSec`).
    pub send_timeout: Duration,
    /// Benchmarks only, never in production: each packet is held this long after it is
    /// queued before it is written, as a network with this one-way delay would (tokio's
    /// timer rounds the hold up to its 1 ms tick). Zero: no hold.
    pub delay: Duration,
    /// Offer peers on this host a shared-memory ring for what we send them, and accept theirs
    /// (`runtime/shm_link.rs`); None: TCP only (and offers are declined). Ignored with TLS or
    /// a `delay`.
    pub shm: Option<ShmOptions>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            max_packet: DEFAULT_MAX_PACKET,
            max_queue_bytes: 64 * 1024 * 1024,
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            max_inbound: 256,
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(30),
            max_buffered: 200 << 20,
            alert_packet: 0,
            max_outstanding: 10,
            send_timeout: Duration::from_secs(5),
            delay: Duration::ZERO,
            shm: None,
        }
    }
}

/// One peer's connection state and counters, for health and statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's member id.
    pub member: MemberId,
    /// The address its connections go to.
    pub addr: SocketAddr,
    /// An outbound connection to it is up.
    pub connected: bool,
    /// The connection carries packets through a shared-memory ring (`TransportOptions::shm`).
    pub shm: bool,
    /// Connections made to the peer so far.
    pub connections: u64,
    /// Packets written to it.
    pub sent_packets: u64,
    /// Bytes written to it.
    pub sent_bytes: u64,
    /// Packets dropped: timed out unsent, or skipped or refused by a full queue.
    pub dropped_packets: u64,
    /// Bytes those packets held.
    pub dropped_bytes: u64,
    /// Bytes waiting in the queue now.
    pub queued_bytes: usize,
    /// Packets queued or being written now (RSL's `m_numOutstanding`).
    pub outstanding: u64,
    /// Failed connection attempts and broken connections since the last packet sent; at
    /// [`FAILURES_TO_FAIL`] the peer counts as failed.
    pub consecutive_failures: u32,
    /// When the peer last counted as failed (None: never).
    pub failed_at: Option<SystemTime>,
    /// When a write to the peer last completed (None: never).
    pub last_sent_at: Option<SystemTime>,
}

/// Consecutive failures that mark a peer failed, as in RSL.
pub const FAILURES_TO_FAIL: u32 = 3;

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
    reading: Arc<Reading>,
    on_message: OnMessage,
    tls: Option<Arc<Tls>>,
    local_addr: SocketAddr,
    peers: Mutex<HashMap<MemberId, PeerEntry>>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    on_failure: OnceLock<OnConnectFailure>,
}

impl Transport {
    /// Binds `listen` (an error here is the caller's to report) and starts accepting. With
    /// `tls`, every connection, either way, is authenticated first.
    pub fn start(
        rt: &Handle,
        listen: SocketAddr,
        opts: TransportOptions,
        tls: Option<Arc<Tls>>,
        on_message: OnMessage,
    ) -> io::Result<Transport> {
        assert!(opts.max_packet > HEADER_SIZE, "a packet must be able to carry a message");
        assert!(opts.backoff_min > Duration::ZERO && opts.backoff_min <= opts.backoff_max, "backoff bounds out of order");
        assert!(opts.max_inbound > 0, "at least one inbound connection");
        let listener = bind(rt, listen)?;
        let local_addr = listener.local_addr()?;
        let mut opts = opts;
        if tls.is_some() || !opts.delay.is_zero() {
            // Rings are for plain, undelayed ports (RslConfig::validate refuses the mix).
            opts.shm = None;
        }
        if let Some(shm) = &opts.shm {
            shm_link::sweep_stale_rings(&shm.dir);
        }
        let reading = Arc::new(Reading::new(&opts));
        let (accepted, deliver, auth) = (reading.clone(), on_message.clone(), tls.clone());
        let serve = move |stream, from| read_inbound(stream, from, accepted.clone(), deliver.clone(), auth.clone());
        let acceptor = rt.spawn(accept_each(listener, "Paxos", opts.max_inbound, serve));
        Ok(Transport {
            rt: rt.clone(),
            opts,
            reading,
            on_message,
            tls,
            local_addr,
            peers: Mutex::new(HashMap::new()),
            acceptor: Mutex::new(Some(acceptor)),
            on_failure: OnceLock::new(),
        })
    }

    /// From now on, each failed outbound connection (attempt) is reported to `f` (the
    /// resolver's trigger). Set once, before the first `set_peers`.
    pub fn on_connect_failure(&self, f: OnConnectFailure) {
        let set = self.on_failure.set(f);
        debug_assert!(set.is_ok(), "set once");
    }

    /// The address the Paxos port is bound to (its port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Packets received larger than `alert_packet` so far (each one raised an Alert, or was
    /// held back by the Alert's rate limit).
    pub fn oversized_packets(&self) -> u64 {
        self.reading.oversized.load(Relaxed)
    }

    /// Bytes of partly received packets the readers hold against `max_buffered` now.
    pub fn buffered_bytes(&self) -> usize {
        self.reading.budget.used()
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
                let link = Link {
                    reading: self.reading.clone(),
                    on_message: self.on_message.clone(),
                    tls: self.tls.clone(),
                    on_failure: self.on_failure.get().cloned(),
                    delay: self.opts.delay,
                    shm: self.opts.shm.clone(),
                };
                let task = self.rt.spawn(run_peer(id, peer.clone(), self.opts.clone(), link));
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

    /// [`send`](Self::send) to each of `to`, skipping those with `max_outstanding` packets
    /// unsent already (RSL's `SendRequestToAll`: Paxos resends to them later). How many
    /// were skipped.
    pub fn broadcast(&self, to: &[MemberId], packet: &Bytes) -> usize {
        let map = self.peers.lock().expect("peer map poisoned");
        let mut skipped = 0;
        for entry in to.iter().filter_map(|id| map.get(id)) {
            if entry.peer.outstanding() >= self.opts.max_outstanding {
                skipped += 1;
            } else {
                entry.peer.enqueue(packet.clone(), self.opts.max_queue_bytes);
            }
        }
        skipped
    }

    /// Read by a metrics scrape: a poisoned map is still read, never a panic there.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let map = self.peers.lock().unwrap_or_else(|e| e.into_inner());
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
    packets: Batch,
    bytes: usize,
    /// The connection's socket while its task waits with nothing queued or being written (plain
    /// TCP only): a sender writes to it directly, under this queue's lock so that bytes never
    /// interleave, instead of waking the task, which costs a thread hand-off per packet on the
    /// commit path. Taken back (None) as soon as anything is queued.
    idle: Option<Arc<OwnedWriteHalf>>,
    /// The connection's shared-memory ring, while its task lends it as it lends `idle`.
    ring: Option<Box<dyn RingSender>>,
    /// Whether senders may write to `ring` now: nothing is queued or being written.
    ring_idle: bool,
}

/// Packets to write, oldest first, with when each was queued (for the send timeout).
#[derive(Default)]
struct Batch {
    packets: VecDeque<Bytes>,
    queued_at: VecDeque<tokio::time::Instant>,
}

impl Batch {
    fn len(&self) -> usize {
        self.packets.len()
    }

    fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    fn push(&mut self, packet: Bytes) {
        self.packets.push_back(packet);
        self.queued_at.push_back(tokio::time::Instant::now());
    }

    /// Drops the packets queued before `cutoff`; returns how many and their bytes.
    fn expire(&mut self, cutoff: tokio::time::Instant) -> (usize, usize) {
        let (mut packets, mut bytes) = (0, 0);
        while self.queued_at.front().is_some_and(|at| *at < cutoff) {
            self.queued_at.pop_front();
            bytes += self.packets.pop_front().expect("one time per packet").len();
            packets += 1;
        }
        debug_assert_eq!(self.packets.len(), self.queued_at.len());
        (packets, bytes)
    }

    /// Removes `written` bytes from the front; returns how many packets completed.
    fn consume(&mut self, written: usize) -> usize {
        let done = consume(&mut self.packets, written);
        self.queued_at.drain(..done);
        done
    }

    fn bytes(&self) -> usize {
        self.packets.iter().map(Bytes::len).sum()
    }
}

/// What the protocol thread and a peer's connection task share.
struct Peer {
    addr: SocketAddr,
    queue: Mutex<SendQueue>,
    /// Signalled when the queue goes from empty to non-empty.
    wake: Notify,
    connected: AtomicBool,
    counters: Counters,
    /// Warnings of handshakes the peer refused.
    refusals: RateLimited,
    /// Until when (`monotonic_micros`) the peer's connections are plain TCP without an offer: the
    /// last set-up failed (a peer without it closes the connection on an offer). 0: offer.
    shm_off_until: AtomicU64,
    /// The connection now carries packets through a ring.
    on_ring: AtomicBool,
}

/// What the transport counted for a peer.
#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    sent_packets: AtomicU64,
    sent_bytes: AtomicU64,
    dropped_packets: AtomicU64,
    dropped_bytes: AtomicU64,
    /// Packets taken from the queue whose write has not completed.
    writing: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Unix microseconds; 0 is never.
    failed_at: AtomicU64,
    last_sent_at: AtomicU64,
}

impl Peer {
    fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            queue: Mutex::default(),
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            counters: Counters::default(),
            refusals: RateLimited::new(),
            shm_off_until: AtomicU64::new(0),
            on_ring: AtomicBool::new(false),
        }
    }

    fn enqueue(&self, mut packet: Bytes, max_queue_bytes: usize) -> bool {
        let mut q = self.queue.lock().expect("send queue poisoned");
        if q.bytes + packet.len() > max_queue_bytes {
            drop(q);
            self.count_dropped(1, packet.len());
            return false;
        }
        if q.ring_idle {
            let ring = q.ring.as_mut().expect("a ring is idle only while lent");
            // A copy into shared memory: the lock is held for no system call but a wake-up.
            if ring.send(&packet).is_ok() {
                drop(q);
                self.counters.sent(1, packet.len());
                return true;
            }
            // Full, too large or broken: the task takes it from here.
            q.ring_idle = false;
        }
        if let Some(socket) = q.idle.take() {
            debug_assert!(q.packets.is_empty(), "a connection is idle only with nothing queued");
            // A non-blocking write, so the lock is held for one system call at most.
            match socket.try_write(&packet) {
                Ok(n) if n == packet.len() => {
                    q.idle = Some(socket);
                    drop(q);
                    self.counters.sent(1, n);
                    return true;
                }
                // The rest goes to the task, which writes it first.
                Ok(n) => {
                    packet.advance(n);
                    self.counters.sent(0, n);
                }
                // Socket full: the task waits for room. Any other error: the task's own write
                // meets it and the connection fails, as if the task had written this.
                Err(_) => {}
            }
        }
        let len = packet.len();
        q.bytes += len;
        q.packets.push(packet);
        debug_assert!(q.bytes <= max_queue_bytes);
        let first = q.packets.len() == 1;
        drop(q);
        if first {
            self.wake.notify_one();
        }
        true
    }

    /// Moves everything queued into `batch` (which must be empty): one lock per batch. With
    /// nothing queued, the connection's plain TCP socket (`direct`) is lent to the senders
    /// until the next call; with something queued, it is taken back first.
    fn take_all(&self, batch: &mut Batch, direct: Option<&Arc<OwnedWriteHalf>>) {
        assert!(batch.is_empty(), "the previous batch is written first");
        let mut q = self.queue.lock().expect("send queue poisoned");
        std::mem::swap(&mut q.packets, batch);
        q.bytes = 0;
        q.idle = if batch.is_empty() { direct.cloned() } else { None };
    }

    /// [`take_all`](Self::take_all) for a connection with a ring: the ring comes back to `ring`
    /// from the senders, and is lent to them again if nothing is queued.
    fn take_all_ring(&self, batch: &mut Batch, ring: &mut Option<Box<dyn RingSender>>) {
        assert!(batch.is_empty(), "the previous batch is written first");
        let mut q = self.queue.lock().expect("send queue poisoned");
        std::mem::swap(&mut q.packets, batch);
        q.bytes = 0;
        if ring.is_none() {
            *ring = q.ring.take();
        }
        q.ring_idle = batch.is_empty();
        if q.ring_idle {
            q.ring = ring.take();
        }
        debug_assert!(ring.is_some() != q.ring.is_some(), "one owner of the ring");
    }

    /// The connection ended: nothing may be written to its socket or ring any more.
    fn take_back_socket(&self) {
        let mut q = self.queue.lock().expect("send queue poisoned");
        (q.idle, q.ring, q.ring_idle) = (None, None, false);
    }

    /// Drops the queued packets older than `timeout` (RSL's send timeout), counting them.
    fn expire(&self, timeout: Duration) {
        let Some(cutoff) = tokio::time::Instant::now().checked_sub(timeout) else { return };
        let mut q = self.queue.lock().expect("send queue poisoned");
        let (packets, bytes) = q.packets.expire(cutoff);
        q.bytes -= bytes;
        drop(q);
        if packets > 0 {
            self.count_dropped(packets, bytes);
            debug!(peer = %self.addr, packets, "unsent packets timed out");
        }
    }

    /// Packets queued or being written (RSL's `m_numOutstanding`).
    fn outstanding(&self) -> usize {
        let queued = self.queue.lock().expect("send queue poisoned").packets.len();
        queued + self.counters.writing.load(Relaxed) as usize
    }

    fn count_dropped(&self, packets: usize, bytes: usize) {
        self.counters.dropped_packets.fetch_add(packets as u64, Relaxed);
        self.counters.dropped_bytes.fetch_add(bytes as u64, Relaxed);
    }

    /// A connection attempt failed or a connection broke.
    fn failed(&self) {
        if self.counters.consecutive_failures.fetch_add(1, Relaxed) + 1 == FAILURES_TO_FAIL {
            self.counters.failed_at.store(unix_micros(SystemTime::now()), Relaxed);
        }
    }

    fn stats(&self, member: MemberId) -> PeerStats {
        let q = self.queue.lock().expect("send queue poisoned");
        let (queued_bytes, queued) = (q.bytes, q.packets.len() as u64);
        drop(q);
        PeerStats {
            member,
            addr: self.addr,
            connected: self.connected.load(Relaxed),
            shm: self.on_ring.load(Relaxed),
            connections: self.counters.connections.load(Relaxed),
            sent_packets: self.counters.sent_packets.load(Relaxed),
            sent_bytes: self.counters.sent_bytes.load(Relaxed),
            dropped_packets: self.counters.dropped_packets.load(Relaxed),
            dropped_bytes: self.counters.dropped_bytes.load(Relaxed),
            queued_bytes,
            outstanding: queued + self.counters.writing.load(Relaxed),
            consecutive_failures: self.counters.consecutive_failures.load(Relaxed),
            failed_at: from_unix_micros(self.counters.failed_at.load(Relaxed)),
            last_sent_at: from_unix_micros(self.counters.last_sent_at.load(Relaxed)),
        }
    }
}

impl Counters {
    /// `bytes` reached the socket, completing `packets` packets.
    fn sent(&self, packets: usize, bytes: usize) {
        self.consecutive_failures.store(0, Relaxed);
        self.last_sent_at.store(unix_micros(SystemTime::now()), Relaxed);
        self.sent_packets.fetch_add(packets as u64, Relaxed);
        self.sent_bytes.fetch_add(bytes as u64, Relaxed);
    }
}

/// What every connection of one transport shares: its readers' bounds, where messages go, and
/// whether connections are authenticated.
struct Link {
    reading: Arc<Reading>,
    on_message: OnMessage,
    tls: Option<Arc<Tls>>,
    on_failure: Option<OnConnectFailure>,
    /// `TransportOptions::delay` (benchmarks only).
    delay: Duration,
    /// `TransportOptions::shm`.
    shm: Option<ShmOptions>,
}

/// A peer's connection task: connect (and authenticate) with exponential backoff, serve the
/// connection until it breaks, repeat. Packets queued meanwhile wait (bounded); those a broken
/// connection was writing are lost. Only a connection that lasted resets the backoff: a peer
/// that closes at once (full, or refusing our certificate after a TLS 1.3 handshake that
/// looked complete) is not redialled in a tight loop.
async fn run_peer(id: MemberId, peer: Arc<Peer>, opts: TransportOptions, link: Link) {
    let mut backoff = opts.backoff_min;
    loop {
        let began = tokio::time::Instant::now();
        // What waited too long for this connection is not sent on it.
        peer.expire(opts.send_timeout);
        let served = connect_and_serve(&peer, &link, opts.send_timeout).await;
        if served.as_ref().is_none_or(|r| r.is_err()) {
            peer.failed();
            if let Some(report) = &link.on_failure {
                report(id);
            }
        }
        if let Some(result) = served {
            if began.elapsed() >= opts.backoff_max {
                backoff = opts.backoff_min;
            }
            peer.connected.store(false, Relaxed);
            info!(peer = %peer.addr, ?result, "connection closed");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}

/// Connects to the peer and serves the connection until it breaks; None if none was made (a
/// refused handshake counts as none, so that a peer refusing us is retried with backoff).
async fn connect_and_serve(peer: &Peer, link: &Link, send_timeout: Duration) -> Option<io::Result<()>> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(peer = %peer.addr, error = %e, "connect failed");
            return None;
        }
        Err(_) => {
            debug!(peer = %peer.addr, "connect timed out");
            return None;
        }
    };
    let _ = stream.set_nodelay(true);
    let ip = peer.addr.ip();
    let Some(tls) = &link.tls else {
        let mut stream = stream;
        let ring = match &link.shm {
            Some(opts) if peer.shm_off_until.load(Relaxed) <= monotonic_micros() => {
                match shm_link::offer_ring(&mut stream, opts).await {
                    Ok(Offered::Ring(ring)) => Some(ring),
                    Ok(Offered::Tcp(why)) => {
                        info!(peer = %peer.addr, why, "no shared-memory ring: TCP");
                        None
                    }
                    Err(e) => {
                        // A peer without the set-up closes the connection on an offer: TCP for a while
                        // (a peer that was restarted meanwhile, or upgraded, gets an offer again).
                        warn!(peer = %peer.addr, error = %e, retry = ?SHM_RETRY, "shared-memory set-up failed: TCP to this peer for now");
                        peer.shm_off_until.store(monotonic_micros() + SHM_RETRY.as_micros() as u64, Relaxed);
                        return None;
                    }
                }
            }
            _ => None,
        };
        info!(peer = %peer.addr, shm = ring.is_some(), "connected");
        let (rd, wr) = stream.into_split();
        let wr = SharedWrite(Arc::new(wr));
        // A delay is the write task's to apply: no sender may write around it.
        let direct = link.delay.is_zero().then(|| wr.0.clone());
        return Some(serve_outbound(peer, rd, wr, direct, ring, link, Origin { ip, peer: None }, send_timeout).await);
    };
    match tls.connect(stream).await {
        Ok((stream, identity)) => {
            info!(peer = %peer.addr, names = ?identity.names, "connected (TLS)");
            let (rd, wr) = tokio::io::split(stream);
            Some(serve_outbound(peer, rd, wr, None, None, link, Origin { ip, peer: Some(Arc::new(identity)) }, send_timeout).await)
        }
        Err(e) => {
            if let Some(held_back) = peer.refusals.allow() {
                warn!(peer = %peer.addr, error = %e, held_back, "TLS handshake with a peer failed");
            }
            None
        }
    }
}

/// Writes the queue to the connection (or its `ring`) and reads the responses the peer sends
/// back on it. `direct`, the plain TCP socket `wr` writes to, is lent to senders while nothing
/// is queued.
#[allow(clippy::too_many_arguments)]
async fn serve_outbound<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    peer: &Peer,
    mut rd: R,
    wr: W,
    direct: Option<Arc<OwnedWriteHalf>>,
    ring: Option<Box<dyn RingSender>>,
    link: &Link,
    origin: Origin,
    send_timeout: Duration,
) -> io::Result<()> {
    peer.connected.store(true, Relaxed);
    peer.on_ring.store(ring.is_some(), Relaxed);
    peer.counters.connections.fetch_add(1, Relaxed);
    let mut batch = Batch::default();
    let write = async {
        match (link.delay, ring) {
            (_, Some(ring)) => write_ring(peer, wr, ring, &mut batch, send_timeout).await,
            (Duration::ZERO, None) => write_queued(peer, wr, direct.as_ref(), &mut batch, send_timeout).await,
            (delay, None) => write_delayed(peer, wr, &mut batch, send_timeout, delay).await,
        }
    };
    let result = tokio::select! {
        r = read_packets(&mut rd, &link.reading, &link.on_message, Side::Outbound, &origin, None) => r,
        r = write => r,
    };
    peer.take_back_socket();
    peer.on_ring.store(false, Relaxed);
    // Whichever side failed, what was being written is lost.
    peer.count_dropped(batch.len(), batch.bytes());
    peer.counters.writing.store(0, Relaxed);
    result
}

async fn write_queued<W: AsyncWrite + Unpin>(
    peer: &Peer,
    mut wr: W,
    direct: Option<&Arc<OwnedWriteHalf>>,
    batch: &mut Batch,
    send_timeout: Duration,
) -> io::Result<()> {
    loop {
        peer.take_all(batch, direct);
        if let Some(cutoff) = tokio::time::Instant::now().checked_sub(send_timeout) {
            let (packets, bytes) = batch.expire(cutoff);
            peer.count_dropped(packets, bytes);
        }
        peer.counters.writing.store(batch.len() as u64, Relaxed);
        if batch.is_empty() {
            // TLS may hold the end of the last batch until flushed; for TCP this does nothing.
            wr.flush().await?;
            peer.wake.notified().await;
            continue;
        }
        write_batch(peer, &mut wr, batch, send_timeout).await?;
    }
}

/// How long a writer waits before it looks at a full ring's credits again (tokio rounds it up to
/// its 1 ms tick): a full ring means the reader is behind, so no latency is lost.
const RING_FULL_WAIT: Duration = Duration::from_micros(200);

/// [`write_queued`] over a shared-memory ring: each packet is copied into the peer's ring (or,
/// larger than the ring, written to the TCP connection `wr`). A full ring is retried until the
/// send timeout; a ring error (the reader's session over, its credits inconsistent) fails the
/// connection, and the peer is reconnected.
async fn write_ring<W: AsyncWrite + Unpin>(
    peer: &Peer,
    mut wr: W,
    ring: Box<dyn RingSender>,
    batch: &mut Batch,
    send_timeout: Duration,
) -> io::Result<()> {
    let mut ring = Some(ring);
    loop {
        peer.take_all_ring(batch, &mut ring);
        if let Some(cutoff) = tokio::time::Instant::now().checked_sub(send_timeout) {
            let (packets, bytes) = batch.expire(cutoff);
            peer.count_dropped(packets, bytes);
        }
        peer.counters.writing.store(batch.len() as u64, Relaxed);
        let Some(sender) = ring.as_mut() else {
            peer.wake.notified().await;
            continue;
        };
        while let Some(packet) = batch.packets.front() {
            match sender.send(packet) {
                Ok(()) => {}
                Err(SendError::TooLarge { .. }) => match tokio::time::timeout(send_timeout, wr.write_all(packet)).await {
                    Ok(written) => written?,
                    Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "send timeout")),
                },
                Err(SendError::WouldBlock) => {
                    let queued = *batch.queued_at.front().expect("one time per packet");
                    if queued.elapsed() >= send_timeout {
                        warn!(peer = %peer.addr, timeout = ?send_timeout, "the peer's ring stayed full: the connection fails");
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "send timeout"));
                    }
                    tokio::time::sleep(RING_FULL_WAIT).await;
                    continue;
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            }
            let len = packet.len();
            batch.consume(len);
            peer.counters.writing.fetch_sub(1, Relaxed);
            peer.counters.sent(1, len);
        }
    }
}

/// Benchmarks only (`TransportOptions::delay`): [`write_queued`], each packet held `delay`
/// after it was queued. Held packets are on the simulated wire: they count neither as
/// outstanding (a broadcast does not skip the peer for them) nor against the send timeout (it
/// runs from their release), and a broken connection loses them. Nothing bounds them but the
/// send rate times the delay (at most 1 s, `RslConfig::net_delay_us`).
async fn write_delayed<W: AsyncWrite + Unpin>(
    peer: &Peer,
    mut wr: W,
    batch: &mut Batch,
    send_timeout: Duration,
    delay: Duration,
) -> io::Result<()> {
    let mut held = Batch::default();
    loop {
        peer.take_all(batch, None);
        held.packets.append(&mut batch.packets);
        held.queued_at.append(&mut batch.queued_at);
        let now = tokio::time::Instant::now();
        while held.queued_at.front().is_some_and(|at| *at + delay <= now) {
            batch.queued_at.extend(held.queued_at.pop_front().map(|at| at + delay));
            batch.packets.extend(held.packets.pop_front());
        }
        debug_assert_eq!(held.packets.len(), held.queued_at.len(), "one time per held packet");
        if !batch.is_empty() {
            peer.counters.writing.store(batch.len() as u64, Relaxed);
            write_batch(peer, &mut wr, batch, send_timeout).await?;
            continue;
        }
        wr.flush().await?;
        match held.queued_at.front() {
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(*at + delay) => {}
                _ = peer.wake.notified() => {}
            },
            None => peer.wake.notified().await,
        }
    }
}

/// Writes `batch` with as few vectored writes as the kernel allows, counting what was sent
/// (tokio-rustls takes vectored writes too, sealing them into as few records as fit). A write
/// that does not complete within `send_timeout` of its first packet being queued fails the
/// connection, as a send timing out fails RSL's.
async fn write_batch<W: AsyncWrite + Unpin>(peer: &Peer, wr: &mut W, batch: &mut Batch, send_timeout: Duration) -> io::Result<()> {
    while !batch.is_empty() {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = batch.len().min(MAX_IOV);
        for (slot, packet) in iov.iter_mut().zip(batch.packets.iter()) {
            *slot = IoSlice::new(packet);
        }
        debug_assert!(n > 0 && batch.packets.iter().take(n).all(|p| !p.is_empty()), "every slice carries bytes");
        let deadline = batch.queued_at.front().expect("not empty").checked_add(send_timeout);
        let write = wr.write_vectored(&iov[..n]);
        let written = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, write).await.map_err(|_| {
                warn!(peer = %peer.addr, timeout = ?send_timeout, "a packet was not sent in time: the connection fails");
                io::Error::new(io::ErrorKind::TimedOut, "send timeout")
            })??,
            None => write.await?,
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let done = batch.consume(written);
        peer.counters.writing.fetch_sub(done as u64, Relaxed);
        peer.counters.sent(done, written);
    }
    Ok(())
}

/// The write side of a plain TCP connection, shared by its task (through this) and the senders
/// it is lent to while idle ([`SendQueue::idle`]).
struct SharedWrite(Arc<OwnedWriteHalf>);

impl SharedWrite {
    fn poll_with<T>(&self, cx: &mut Context<'_>, mut write: impl FnMut(&TcpStream) -> io::Result<T>) -> Poll<io::Result<T>> {
        let stream: &TcpStream = (*self.0).as_ref();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match write(stream) {
                // The readiness was stale: `try_write` cleared it, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for SharedWrite {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The write side shuts down when the last holder drops the socket.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
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

/// Where [`accept_each`] takes connections from: a TCP listener, or a test's failing one.
pub trait Listener: Send + 'static {
    /// A connection taken.
    type Conn: Send + 'static;
    /// The next connection and its peer's address.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Conn, SocketAddr)>> + Send;
}

impl Listener for TcpListener {
    type Conn = TcpStream;
    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// The wait after a failed accept: the error (out of descriptors, say) lasts a while, and
/// retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections on the `port` (named in warnings) until aborted, serving each on a task
/// of its own. The tasks belong to this one, so aborting it closes the listener and every
/// connection. With `max` connections served, one more is closed as soon as it is accepted:
/// the peers already connected keep their places. An accept error is logged and retried after
/// a pause; it never ends the loop.
pub async fn accept_each<L: Listener, F: Future<Output = ()> + Send + 'static>(
    listener: L,
    port: &'static str,
    max: usize,
    serve: impl Fn(L::Conn, SocketAddr) -> F,
) {
    assert!(max > 0, "a port serves at least one connection");
    let (mut tasks, refusals, failures) = (JoinSet::new(), RateLimited::new(), RateLimited::new());
    loop {
        while tasks.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((conn, from)) if tasks.len() >= max => {
                drop(conn);
                if let Some(held_back) = refusals.allow() {
                    warn!(port, %from, max, held_back, "connection refused: the port serves its maximum already");
                }
            }
            Ok((conn, from)) => drop(tasks.spawn(serve(conn, from))),
            Err(e) => {
                if let Some(held_back) = failures.allow() {
                    warn!(port, error = %e, held_back, "accept failed; retrying");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        debug_assert!(tasks.len() <= max);
    }
}

/// A warning that repeats at most every [`RateLimited::EVERY`] (or a chosen interval),
/// counting those it held back. Shared by tasks: lock-free.
pub struct RateLimited {
    start: Instant,
    every_ms: u64,
    /// When the next warning may go out, in milliseconds since `start`.
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

impl Default for RateLimited {
    fn default() -> Self {
        RateLimited::new()
    }
}

impl RateLimited {
    /// The default interval between warnings.
    pub const EVERY: Duration = Duration::from_secs(10);

    /// A limiter at [`RateLimited::EVERY`].
    pub fn new() -> Self {
        RateLimited::every(Self::EVERY)
    }

    /// At most one warning per `interval`.
    pub fn every(interval: Duration) -> Self {
        let every_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        RateLimited { start: Instant::now(), every_ms, next_ms: AtomicU64::new(0), held_back: AtomicU64::new(0) }
    }

    /// Some(warnings held back since the last one) if this one may go out.
    pub fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Relaxed);
        if now >= next && self.next_ms.compare_exchange(next, now.saturating_add(self.every_ms), Relaxed, Relaxed).is_ok() {
            return Some(self.held_back.swap(0, Relaxed));
        }
        self.held_back.fetch_add(1, Relaxed);
        None
    }
}

/// Serves one inbound connection: the handshake first, with TLS (bounded by its timeout, and
/// holding one of the port's places meanwhile), then its packets.
async fn read_inbound(stream: TcpStream, from: SocketAddr, reading: Arc<Reading>, on_message: OnMessage, tls: Option<Arc<Tls>>) {
    let _ = stream.set_nodelay(true);
    let ip = from.ip();
    let result = match tls {
        None => read_plain(stream, from, &reading, &on_message).await,
        Some(tls) => match tls.accept(stream).await {
            Ok((mut stream, identity)) => {
                let origin = Origin { ip, peer: Some(Arc::new(identity)) };
                read_packets(&mut stream, &reading, &on_message, Side::Inbound, &origin, Some(reading.idle_timeout)).await
            }
            Err(e) => {
                if let Some(held_back) = reading.warnings.allow() {
                    warn!(%from, error = %e, held_back, "Paxos connection refused: TLS handshake failed");
                }
                Err(e)
            }
        },
    };
    debug!(%from, ?result, "inbound connection closed");
}

/// Serves a plain inbound connection: packets, or first a shared-memory offer (four zero bytes,
/// never a packet's start). An accepted ring is read by a thread of its own, while this task reads
/// the connection (packets too large for the ring) and ends the session when either ends.
async fn read_plain(mut stream: TcpStream, from: SocketAddr, reading: &Arc<Reading>, on_message: &OnMessage) -> io::Result<()> {
    let origin = Origin { ip: from.ip(), peer: None };
    let idle = reading.idle_timeout;
    let mut prefix = [0u8; 4];
    match tokio::time::timeout(idle, stream.read_exact(&mut prefix)).await {
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
        Ok(read) => read?,
    };
    if !shm_link::is_offer(&prefix) {
        return read_packets(&mut AsyncReadExt::chain(&prefix[..], stream), reading, on_message, Side::Inbound, &origin, Some(idle)).await;
    }
    let session = shm_link::answer_offer(&mut stream, reading.shm.as_ref()).await.map_err(|e| {
        if let Some(held_back) = reading.warnings.allow() {
            warn!(%from, error = %e, held_back, "Paxos connection closed: shared-memory set-up failed");
        }
        io::Error::new(io::ErrorKind::InvalidData, e)
    })?;
    let Some(session) = session else {
        return read_packets(&mut stream, reading, on_message, Side::Inbound, &origin, Some(idle)).await;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = shm_link::StopOnDrop(stop.clone());
    let (ended, end) = tokio::sync::oneshot::channel();
    let read = RingRead { stop, reading: reading.clone(), on_message: on_message.clone(), origin: origin.clone(), ended };
    match session {
        shm_link::Accepted::Shm(session) => read.spawn(session)?,
        #[cfg(feature = "rdma")]
        shm_link::Accepted::Verbs(session) => read.spawn(session)?,
    }
    info!(%from, "shared-memory ring session opened");
    // The ring's reader applies the idle timeout: the connection is quiet while the ring works.
    tokio::select! {
        r = read_packets(&mut stream, reading, on_message, Side::Inbound, &origin, None) => r,
        end = end => {
            let end = end.map_or_else(|_| "the reader thread ended".to_string(), |e| e.to_string());
            info!(%from, end, "shared-memory ring session ended");
            Err(io::Error::new(io::ErrorKind::InvalidData, end))
        }
    }
}

/// What a ring's reader thread needs: when to stop, how to check and deliver, whom to tell it
/// ended.
struct RingRead {
    stop: Arc<AtomicBool>,
    reading: Arc<Reading>,
    on_message: OnMessage,
    origin: Origin,
    ended: tokio::sync::oneshot::Sender<shm_link::ReadEnd>,
}

impl RingRead {
    /// Reads `session`'s ring on a thread of its own (`rsl-shm-reader`) until it ends.
    fn spawn<M: shm_link::RingMemory + 'static>(self, session: shm_link::RingSession<M>) -> io::Result<()> {
        std::thread::Builder::new().name("rsl-shm-reader".into()).spawn(move || {
            let RingRead { stop, reading, on_message, origin, ended } = self;
            let max_packet = reading.max_packet;
            let end = shm_link::read_ring(session, &stop, reading.idle_timeout, |packet| {
                shm_link::check_frame(&packet, max_packet)?;
                reading.check_size(packet.len(), origin.ip);
                deliver(packet, max_packet, &on_message, Side::Inbound, &origin)
            });
            let _ = ended.send(end);
        })?;
        Ok(())
    }
}

/// Which end of a connection we are: the original's client side (our outbound connection)
/// only takes response types (docs/spec/behavior.md §2.30); the server side takes everything.
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

/// What every reader of one transport shares: its bounds, and the budget of bytes its partly
/// received packets may hold.
struct Reading {
    max_packet: usize,
    idle_timeout: Duration,
    frame_timeout: Duration,
    budget: Budget,
    warnings: RateLimited,
    /// `TransportOptions::shm`: whether offers of a ring are accepted, and where rings go.
    shm: Option<ShmOptions>,
    alert_packet: usize,
    /// Packets larger than `alert_packet` received so far.
    oversized: AtomicU64,
    alerts: RateLimited,
}

impl Reading {
    fn new(opts: &TransportOptions) -> Reading {
        Reading {
            max_packet: opts.max_packet,
            idle_timeout: opts.idle_timeout,
            frame_timeout: opts.frame_timeout,
            budget: Budget::new(opts.max_buffered),
            warnings: RateLimited::new(),
            shm: opts.shm.clone(),
            alert_packet: opts.alert_packet,
            oversized: AtomicU64::new(0),
            alerts: RateLimited::new(),
        }
    }

    /// RSL's `m_maxMessageAlertSizeMB`: a packet of `size` bytes larger than `alert_packet`
    /// raises an Alert (rate-limited; every one counted).
    fn check_size(&self, size: usize, from: IpAddr) {
        if self.alert_packet > 0 && size > self.alert_packet {
            self.oversized.fetch_add(1, Relaxed);
            if let Some(held_back) = self.alerts.allow() {
                crate::alert!(%from, size, max = self.alert_packet, held_back, "packet larger than the maximum message alert size");
            }
        }
    }

    /// The error that closes a connection for breaking a bound; warned about, rate-limited.
    fn refuse(&self, from: IpAddr, kind: io::ErrorKind, why: &'static str) -> io::Error {
        if let Some(held_back) = self.warnings.allow() {
            warn!(%from, held_back, "Paxos connection closed: {why}");
        }
        io::Error::new(kind, why)
    }
}

/// Bytes shared by many readers: the transport's readers of partly received packets. A reader
/// that cannot take what it needs is closed rather than made to wait: waiting readers would
/// hold what they have while waiting for each other, and closing frees its bytes at once (a
/// peer reconnects and Paxos resends).
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes, none taken.
    pub fn new(limit: usize) -> Budget {
        Budget { limit, used: AtomicUsize::new(0) }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// A holder of none of it yet.
    pub fn hold(&self) -> Held<'_> {
        Held { budget: self, bytes: 0 }
    }
}

/// What one reader holds of a [`Budget`]; given back when it is dropped.
pub struct Held<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Held<'_> {
    /// Makes the reader hold `bytes`; false (and nothing changed) if the budget lacks them.
    pub fn set(&mut self, bytes: usize) -> bool {
        if bytes > self.bytes {
            let more = bytes - self.bytes;
            let taken = self.budget.used.fetch_update(Relaxed, Relaxed, |used| used.checked_add(more).filter(|&u| u <= self.budget.limit));
            if taken.is_err() {
                return false;
            }
        } else {
            self.budget.used.fetch_sub(self.bytes - bytes, Relaxed);
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Reads packets until EOF, delivering each message. A bad packet is an error, which closes the
/// connection (§7.1); a packet whose message does not decode is dropped. The connection is also
/// closed if a packet begun does not complete within `frame_timeout`, if an inbound connection
/// stays silent for `idle_timeout` (None: an outbound connection, or one whose ring carries its
/// traffic), or if the packet needs more of the budget than is left. A
/// reader's first `READ_CHUNK` bytes are its own, so small packets (every message but votes
/// carrying large requests) never wait on the budget.
async fn read_packets<R: AsyncRead + Unpin>(
    rd: &mut R,
    reading: &Reading,
    on_message: &OnMessage,
    side: Side,
    origin: &Origin,
    idle_timeout: Option<Duration>,
) -> io::Result<()> {
    let from = origin.ip;
    let max_packet = reading.max_packet;
    let chunk = READ_CHUNK.min(max_packet);
    let mut buf = BytesMut::with_capacity(chunk);
    let mut held = reading.budget.hold();
    let mut frame_deadline = None;
    loop {
        let need = match packet::peek_size(&buf, max_packet).map_err(invalid_data)? {
            Some(size) if buf.len() >= size => {
                reading.check_size(size, from);
                deliver(buf.split_to(size).freeze(), max_packet, on_message, side, origin)?;
                held.set(buf.capacity().saturating_sub(chunk));
                frame_deadline = None;
                continue;
            }
            Some(size) => size,
            None => HEADER_SIZE,
        };
        if !grow_within(&mut buf, need, chunk, &mut held) {
            return Err(reading.refuse(from, io::ErrorKind::OutOfMemory, "partly received packets fill the buffer budget"));
        }
        debug_assert!(buf.len() < need && buf.capacity() <= max_packet.max(chunk), "one packet at a time");
        // An outbound connection is ours to keep: the peer answers on it only when asked.
        let deadline = match (buf.is_empty(), side) {
            (false, _) => Some(*frame_deadline.get_or_insert_with(|| tokio::time::Instant::now() + reading.frame_timeout)),
            (true, _) => idle_timeout.map(|idle| tokio::time::Instant::now() + idle),
        };
        let read = rd.read_buf(&mut buf);
        let n = match deadline {
            None => read.await?,
            Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
                Ok(n) => n?,
                Err(_) if buf.is_empty() => return Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
                Err(_) => return Err(reading.refuse(from, io::ErrorKind::TimedOut, "a packet did not arrive whole in time")),
            },
        };
        if n == 0 {
            return if buf.is_empty() { Ok(()) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
    }
}

fn deliver(packet: Bytes, max_packet: usize, on_message: &OnMessage, side: Side, origin: &Origin) -> io::Result<()> {
    let Frame::Packet { message, consumed } = packet::decode(&packet, max_packet).map_err(invalid_data)? else {
        unreachable!("the packet is complete");
    };
    debug_assert_eq!(consumed, packet.len());
    match Message::decode(&message) {
        Ok(msg) if side.accepts(msg.kind()) => on_message(Arc::new(msg), origin.clone()),
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
    if let Some(capacity) = grown_capacity(buf, need, chunk) {
        regrow(buf, capacity);
    }
}

/// `grow_for`, with what `buf` holds beyond its first `chunk` bytes charged to `held`; false
/// (and `buf` unchanged) if the budget lacks it. The copy into a grown buffer holds the old one
/// too, and is charged for both while it lasts: the budget bounds what the buffers hold at every
/// instant, not only between copies.
pub fn grow_within(buf: &mut BytesMut, need: usize, chunk: usize, held: &mut Held<'_>) -> bool {
    // Bytes split off since the last call are the taker's now.
    let holds = buf.capacity().saturating_sub(chunk);
    if holds < held.bytes {
        held.set(holds);
    }
    if let Some(capacity) = grown_capacity(buf, need, chunk) {
        if !held.set((buf.capacity() + capacity).saturating_sub(chunk)) {
            return false;
        }
        regrow(buf, capacity);
        held.set(capacity.saturating_sub(chunk));
    }
    debug_assert!(held.bytes == buf.capacity().saturating_sub(chunk), "the budget counts what the buffer holds");
    true
}

/// The capacity [`grow_for`] gives `buf`, or None if it has room enough already.
fn grown_capacity(buf: &BytesMut, need: usize, chunk: usize) -> Option<usize> {
    assert!(buf.len() < need, "the frame is not complete yet");
    let room = (need - buf.len()).min(chunk);
    if buf.capacity() - buf.len() >= room {
        return None;
    }
    Some((buf.len() * 2).max(chunk).clamp(buf.len() + room, need.max(chunk)))
}

fn regrow(buf: &mut BytesMut, capacity: usize) {
    debug_assert!(capacity > buf.len());
    let mut fresh = BytesMut::with_capacity(capacity);
    fresh.extend_from_slice(buf);
    *buf = fresh;
}

/// A TLS configuration for tests: a certificate naming `name` issued by `ca` (written to
/// `dir`), admitting every peer whose chain leads to `ca`.
/// Microseconds since this process first asked: a clock that never steps back, for the
/// shared-memory back-off (the wall clock would reopen or hold it when set).
fn monotonic_micros() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) fn test_tls(dir: &std::path::Path, ca: &super::tls::issue::Ca, name: &str) -> Arc<Tls> {
    use super::tls::{issue, IdentitySource, PeerRules, TlsSettings};
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let leaf = ca.issue(&issue::LeafSpec { name, not_before: now - day, not_after: now + day });
    let (cert, key) = issue::write_by_thumbprint(dir, &leaf).unwrap();
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let peers = PeerRules { ca: Some(ca_path), require_chain: true, ..Default::default() };
    Arc::new(Tls::load(&TlsSettings { identity: IdentitySource::Files { cert, key }, peers }).unwrap())
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
        wait_until("both rings", || a.peer_stats()[0].shm && b.peer_stats()[0].shm).await;
        const N: u64 = 5000;
        let (a, b) = (Arc::new(a), Arc::new(b));
        exchange(&a, &b, &mut rx_a, &mut rx_b, N).await;
        // Larger than the ring: over the TCP connection, which the ring leaves open.
        assert!(a.send(&id(2), framed(&big_vote(N + 1, 10_000))));
        assert_eq!(*recv(&mut rx_b).await, big_vote(N + 1, 10_000));
        let stats = a.peer_stats();
        assert!(stats[0].shm && stats[0].connections == 1, "one connection, on the ring: {stats:?}");
        assert_eq!((stats[0].sent_packets, stats[0].dropped_packets), (N + 2, 0));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "ring files are unlinked once mapped");
    }

    #[tokio::test]
    async fn a_peer_without_shared_memory_gets_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _rx_a) = start(any_port(), with_shm(dir.path()));
        let (b, mut rx_b) = start(any_port(), TransportOptions::default());
        a.set_peers(&[(id(2), b.local_addr())]);
        for d in 1..=100 {
            assert!(a.send(&id(2), framed(&vote(1, d))));
        }
        for d in 1..=100 {
            assert_eq!(*recv(&mut rx_b).await, vote(1, d));
        }
        let stats = a.peer_stats();
        assert!(!stats[0].shm && stats[0].connections == 1, "declined on the same connection: {stats:?}");
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
        let (a, _rx_a) = start(any_port(), rdma.clone());
        let (b, mut rx_b) = start(any_port(), rdma);
        a.set_peers(&[(id(2), b.local_addr())]);
        for d in 1..=100 {
            assert!(a.send(&id(2), framed(&vote(1, d))));
        }
        for d in 1..=100 {
            assert_eq!(*recv(&mut rx_b).await, vote(1, d));
        }
        let stats = a.peer_stats();
        assert!(!stats[0].shm && stats[0].connections == 1, "plain TCP on the first connection: {stats:?}");
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
        let deadline = tokio::time::Instant::now() + WAIT;
        while a.peer_stats()[0].connections < 2 {
            assert!(tokio::time::Instant::now() < deadline, "the idle connection was never closed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
        let deadline = tokio::time::Instant::now() + WAIT;
        while tls.refused() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the refusal was never counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
        assert_eq!(consume(&mut batch, 4), 1);
        assert_eq!(batch, [Bytes::from_static(b"e"), Bytes::from_static(b"fgh")]);
        assert_eq!(consume(&mut batch, 4), 2);
        assert!(batch.is_empty());
    }
}
