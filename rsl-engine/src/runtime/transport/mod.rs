//! The Paxos port's peers: per peer, a bounded send queue and a connection task that connects,
//! chooses the connection's link (TCP, TLS, or a ring it offers) and reconnects when it breaks;
//! framed RSL messages (docs/spec/formats.md §7.1, docs/spec/behavior.md §2.30).
//!
//! The protocol thread calls [`Transport::send`], which never blocks. Every packet goes through
//! the connection's `PacketLink` (`link.rs`): while its task has nothing queued or being
//! written, the link is lent to the senders, so the packet goes straight into the socket with
//! one non-blocking write (or into the ring with one copy); otherwise it is queued and the task
//! sends everything queued in vectored batches. Every connection's reader (`inbound.rs`)
//! decodes on the tokio threads, or a ring's reader thread, and hands each message to the
//! `on_message` callback.
//!
//! With TLS, every connection starts with a handshake (in its own task, never the accept
//! loop) and each message carries the certified identity of the connection it came on.

mod inbound;
mod link;
mod mux;

pub(in crate::runtime) use inbound::grow_for;
pub use inbound::{accept_each, grow_within, Budget, Held, Listener};
use inbound::{read_inbound, read_packets, Inbound, Reading, Side};
pub use link::LinkKind;
use link::{PacketLink, RingLink, TcpLink, TlsLink};
pub use mux::Mux;

use super::health::{from_unix_micros, unix_micros};
use super::shm_link::{self, Offered, ShmOptions};
use super::tls::{PeerIdentity, Tls};
use crate::format::message::{Checksum, Message};
use crate::format::packet::{self, DEFAULT_MAX_PACKET, HEADER_SIZE};
use crate::format::types::MemberId;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

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
    /// Share one connection per peer process with the other rings of this process that share
    /// it (`transport/mux.rs`); None: a connection per ring. Ignored with `shm` or a `delay`.
    pub mux: Option<Arc<Mux>>,
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
            mux: None,
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
    /// What carries the packets of that connection (None: none is up): TCP, TLS, or a ring
    /// (`TransportOptions::shm`).
    pub link: Option<LinkKind>,
    /// That connection is shared with the other rings of this process that send to the peer's
    /// process (`TransportOptions::mux`).
    pub shared: bool,
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
    /// This port's entry in `opts.mux`, withdrawn at shutdown.
    served: Weak<mux::Served>,
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
        if opts.shm.is_some() || !opts.delay.is_zero() {
            // A ring per peer, or a delay per connection, leaves nothing to share.
            opts.mux = None;
        }
        if let Some(shm) = &opts.shm {
            shm_link::sweep_stale_rings(&shm.dir);
        }
        let reading = Arc::new(Reading::new(&opts, local_addr.port()));
        let served = match &opts.mux {
            Some(mux) => mux.serve(
                local_addr.port(),
                mux::Served { reading: reading.clone(), on_message: on_message.clone(), tls: tls.clone(), ip: local_addr.ip() },
            ),
            None => Weak::new(),
        };
        let (accepted, deliver, auth) = (reading.clone(), on_message.clone(), tls.clone());
        let serve = move |stream, from| read_inbound(stream, from, accepted.clone(), deliver.clone(), auth.clone());
        let acceptor = rt.spawn(accept_each(listener, "Paxos", opts.max_inbound, serve).in_current_span());
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
            served,
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
                    mux: self.opts.mux.clone(),
                };
                let task = self.rt.spawn(run_peer(id, peer.clone(), self.opts.clone(), link).in_current_span());
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
    /// The listener's task ends once its runtime drops it (at its next turn): the handle says
    /// when (None if it was shut down before).
    pub fn shutdown(&self) -> Option<JoinHandle<()>> {
        let acceptor = self.acceptor.lock().expect("acceptor poisoned").take();
        if let Some(mux) = &self.opts.mux {
            mux.withdraw(self.local_addr.port(), &self.served);
        }
        self.peers.lock().expect("peer map poisoned").clear();
        acceptor.inspect(JoinHandle::abort)
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        drop(self.shutdown());
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
    /// The connection's link while its task waits with nothing queued or being written: a
    /// sender tries it directly while nothing is queued (one non-blocking socket write, or one
    /// copy into a ring), under this queue's lock so that bytes never interleave, instead of
    /// waking the task, which costs a thread hand-off per packet on the commit path. The task
    /// takes it back with the next batch.
    lent: Option<Box<dyn PacketLink>>,
    /// Where a first packet is signalled while a shared connection carries the queue (its
    /// writer's wake-up, `mux.rs`) instead of `Peer::wake`.
    redirect: Option<Arc<Notify>>,
}

/// Packets to write, oldest first, with when each was queued (for the send timeout).
#[derive(Default)]
struct Batch {
    packets: VecDeque<Bytes>,
    queued_at: VecDeque<tokio::time::Instant>,
    /// The front packet's first bytes are on the wire: the rest must follow them on the same
    /// connection, and never be dropped alone while it lasts (the peer would read the next
    /// packet as the rest of this one).
    front_started: bool,
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

    /// Drops the packets queued before `cutoff`; returns how many and their bytes. A started
    /// front packet stays, and so does everything behind it: its write's own deadline fails the
    /// connection instead.
    fn expire(&mut self, cutoff: tokio::time::Instant) -> (usize, usize) {
        let (mut packets, mut bytes) = (0, 0);
        while !self.front_started && self.queued_at.front().is_some_and(|at| *at < cutoff) {
            self.queued_at.pop_front();
            bytes += self.packets.pop_front().expect("one time per packet").len();
            packets += 1;
        }
        debug_assert_eq!(self.packets.len(), self.queued_at.len());
        (packets, bytes)
    }

    /// Removes `written` bytes from the front; returns how many packets completed.
    fn consume(&mut self, written: usize) -> usize {
        let (done, partial) = consume(&mut self.packets, written);
        self.queued_at.drain(..done);
        self.front_started = partial || (self.front_started && done == 0);
        done
    }

    /// The connection ended: a started front packet cannot be finished on another one. Returns
    /// its length if one was dropped.
    fn drop_started(&mut self) -> Option<usize> {
        if !std::mem::take(&mut self.front_started) {
            return None;
        }
        self.queued_at.pop_front();
        self.packets.pop_front().map(|p| p.len())
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
    /// What carries the packets of the connection that is up (None: none is).
    link: Mutex<Option<LinkKind>>,
    counters: Counters,
    /// Warnings of handshakes the peer refused.
    refusals: RateLimited,
    /// Until when (`monotonic_micros`) the peer's connections are plain TCP without an offer: the
    /// last set-up failed (a peer without it closes the connection on an offer). 0: offer.
    shm_off_until: AtomicU64,
    /// Until when its connections are the ring's own: the peer declined to share one. 0: offer.
    mux_off_until: AtomicU64,
    /// A shared connection carries the queue now.
    shared: AtomicBool,
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
            link: Mutex::new(None),
            counters: Counters::default(),
            refusals: RateLimited::new(),
            shm_off_until: AtomicU64::new(0),
            mux_off_until: AtomicU64::new(0),
            shared: AtomicBool::new(false),
        }
    }

    fn enqueue(&self, mut packet: Bytes, max_queue_bytes: usize) -> bool {
        let mut q = self.queue.lock().expect("send queue poisoned");
        if q.bytes + packet.len() > max_queue_bytes {
            drop(q);
            self.count_dropped(1, packet.len());
            return false;
        }
        let (sent, held) = match (q.packets.is_empty(), q.lent.as_mut()) {
            // Never past a queued packet: the order is the queue's.
            (true, Some(link)) => (link.try_send(&packet), link.holds_back()),
            _ => (0, false),
        };
        if sent == packet.len() {
            drop(q);
            self.counters.sent(1, sent);
            if held {
                // The socket did not take it all: the task takes the link back to flush it.
                self.wake.notify_one();
            }
            return true;
        }
        // The rest goes to the task, which sends it first.
        let len = packet.len() - sent;
        q.bytes += len;
        if sent > 0 {
            packet.advance(sent);
            self.counters.sent(0, sent);
            debug_assert!(q.packets.is_empty(), "only an empty queue lends its link");
            q.packets.front_started = true;
        }
        q.packets.push(packet);
        debug_assert!(q.bytes <= max_queue_bytes);
        if q.packets.len() == 1 {
            match &q.redirect {
                // Under the lock: the shared connection that carries the queue may end meanwhile.
                Some(shared) => shared.notify_one(),
                None => {
                    drop(q);
                    self.wake.notify_one();
                }
            }
        }
        true
    }

    /// For a shared connection's turn: hands `each` the packets queued first, with when each was
    /// queued, up to the first to reach `max_bytes`; how many.
    fn take_up_to(&self, max_bytes: usize, mut each: impl FnMut(Bytes, tokio::time::Instant)) -> usize {
        let mut q = self.queue.lock().expect("send queue poisoned");
        debug_assert!(q.lent.is_none() && !q.packets.front_started, "a shared connection lends no link");
        let (mut bytes, mut taken) = (0, 0);
        while bytes < max_bytes {
            let Some(packet) = q.packets.packets.pop_front() else { break };
            bytes += packet.len();
            taken += 1;
            each(packet, q.packets.queued_at.pop_front().expect("one time per packet"));
        }
        q.bytes -= bytes;
        debug_assert_eq!(q.packets.packets.len(), q.packets.queued_at.len());
        taken
    }

    /// Moves everything queued into `batch` (which must be empty): one lock per batch. With
    /// `link` (a task that lends it), the link comes back to it from the senders, and is lent
    /// to them again until the next call if nothing was queued.
    fn take_all(&self, batch: &mut Batch, link: Option<&mut Option<Box<dyn PacketLink>>>) {
        assert!(batch.is_empty(), "the previous batch is written first");
        let mut q = self.queue.lock().expect("send queue poisoned");
        std::mem::swap(&mut q.packets, batch);
        q.bytes = 0;
        if let Some(link) = link {
            if link.is_none() {
                *link = q.lent.take();
            }
            // Lent again only once it holds nothing back (its task flushes that first).
            if batch.is_empty() && !link.as_deref().is_some_and(|l| l.holds_back()) {
                q.lent = link.take();
            }
            debug_assert!(link.is_some() != q.lent.is_some(), "one owner of the link");
        }
    }

    /// The connection ended: nothing may be sent through its link any more, and the rest of a
    /// packet a sender began on it is dropped. The link is dropped outside the lock (a verbs
    /// ring's teardown can take milliseconds, and senders wait on this lock).
    fn take_back_link(&self) {
        let mut q = self.queue.lock().expect("send queue poisoned");
        let link = q.lent.take();
        let dropped = q.packets.drop_started();
        if let Some(len) = dropped {
            q.bytes -= len;
        }
        drop(q);
        drop(link);
        if let Some(len) = dropped {
            self.count_dropped(1, len);
        }
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
        let link = *self.link.lock().unwrap_or_else(|e| e.into_inner());
        PeerStats {
            member,
            addr: self.addr,
            connected: link.is_some(),
            link,
            shared: self.shared.load(Relaxed),
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
    /// `TransportOptions::mux`.
    mux: Option<Arc<Mux>>,
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
        let shared = match &link.mux {
            Some(mux) if peer.mux_off_until.load(Relaxed) <= monotonic_micros() => mux.carry(&peer, &link, opts.send_timeout).await,
            _ => mux::Carried::Declined,
        };
        let served = match shared {
            mux::Carried::Declined => connect_and_serve(&peer, &link, opts.send_timeout).await,
            // A newer connection to the peer's process carries it: no failure, no pause.
            mux::Carried::Moved => continue,
            mux::Carried::NotConnected => None,
            mux::Carried::Ended(result) => Some(result),
        };
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
                    Ok(Offered::Ring(ring)) => Some((ring, if opts.rdma { LinkKind::Rdma } else { LinkKind::Shm })),
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
        let out: Box<dyn PacketLink> = match ring {
            Some((ring, kind)) => Box::new(RingLink::new(ring, kind, wr)),
            None => Box::new(TcpLink(wr)),
        };
        return Some(serve_outbound(peer, rd, out, link, Origin { ip, peer: None }, send_timeout).await);
    };
    match tls.connect(stream).await {
        Ok((stream, identity)) => {
            info!(peer = %peer.addr, names = ?identity.names, "connected (TLS)");
            let (rd, wr) = tokio::io::split(stream);
            Some(
                serve_outbound(peer, rd, Box::new(TlsLink::new(wr)), link, Origin { ip, peer: Some(Arc::new(identity)) }, send_timeout)
                    .await,
            )
        }
        Err(e) => {
            if let Some(held_back) = peer.refusals.allow() {
                warn!(peer = %peer.addr, error = %e, held_back, "TLS handshake with a peer failed");
            }
            None
        }
    }
}

/// Sends the queue through the connection's link `out` and reads the responses the peer sends
/// back on the connection (`rd`).
async fn serve_outbound<R: AsyncRead + Unpin>(
    peer: &Peer,
    mut rd: R,
    out: Box<dyn PacketLink>,
    link: &Link,
    origin: Origin,
    send_timeout: Duration,
) -> io::Result<()> {
    *peer.link.lock().expect("link kind poisoned") = Some(out.kind());
    peer.counters.connections.fetch_add(1, Relaxed);
    let mut batch = Batch::default();
    let write = async {
        match link.delay {
            Duration::ZERO => write_queued(peer, out, &mut batch, send_timeout).await,
            delay => write_delayed(peer, out, &mut batch, send_timeout, delay).await,
        }
    };
    let inbound = Inbound { reading: &link.reading, on_message: &link.on_message, side: Side::Outbound, origin: &origin, route: None };
    let result = tokio::select! {
        r = read_packets(&mut rd, &inbound, None) => r,
        r = write => r,
    };
    peer.take_back_link();
    *peer.link.lock().expect("link kind poisoned") = None;
    // Whichever side failed, what was being written is lost.
    peer.count_dropped(batch.len(), batch.bytes());
    peer.counters.writing.store(0, Relaxed);
    result
}

/// Sends what is queued through `link`, batch by batch, lending the link to the senders
/// whenever nothing is queued. An error (a write timing out, the link broken) fails the
/// connection.
async fn write_queued(peer: &Peer, link: Box<dyn PacketLink>, batch: &mut Batch, send_timeout: Duration) -> io::Result<()> {
    let mut link = Some(link);
    loop {
        peer.take_all(batch, Some(&mut link));
        if let Some(cutoff) = tokio::time::Instant::now().checked_sub(send_timeout) {
            let (packets, bytes) = batch.expire(cutoff);
            peer.count_dropped(packets, bytes);
        }
        peer.counters.writing.store(batch.len() as u64, Relaxed);
        match link.as_deref_mut() {
            Some(out) if !batch.is_empty() || out.holds_back() => write_batch(peer, out, batch, send_timeout).await?,
            // Lent to the senders, or (everything queued expired) to be lent with the next call.
            _ => peer.wake.notified().await,
        }
    }
}

/// Benchmarks only (`TransportOptions::delay`): [`write_queued`], each packet held `delay`
/// after it was queued, and the link never lent (no sender may write around the delay). Held
/// packets are on the simulated wire: they count neither as outstanding (a broadcast does not
/// skip the peer for them) nor against the send timeout (it runs from their release), and a
/// broken connection loses them. Nothing bounds them but the send rate times the delay (at most
/// 1 s, `RslConfig::net_delay_us`).
async fn write_delayed(
    peer: &Peer,
    mut link: Box<dyn PacketLink>,
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
            write_batch(peer, link.as_mut(), batch, send_timeout).await?;
            continue;
        }
        match held.queued_at.front() {
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(*at + delay) => {}
                _ = peer.wake.notified() => {}
            },
            None => peer.wake.notified().await,
        }
    }
}

/// Sends `batch` through `link` with as few writes as it takes (vectored, up to [`MAX_IOV`]
/// packets each), counting what was sent, then flushes it. A write that does not complete
/// within `send_timeout` of its first packet being queued (a stalled socket, a ring that stays
/// full) fails the connection, as a send timing out fails RSL's.
async fn write_batch(peer: &Peer, link: &mut dyn PacketLink, batch: &mut Batch, send_timeout: Duration) -> io::Result<()> {
    while !batch.is_empty() {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = batch.len().min(MAX_IOV);
        for (slot, packet) in iov.iter_mut().zip(batch.packets.iter()) {
            *slot = IoSlice::new(packet);
        }
        debug_assert!(n > 0 && batch.packets.iter().take(n).all(|p| !p.is_empty()), "every slice carries bytes");
        let deadline = batch.queued_at.front().expect("not empty").checked_add(send_timeout);
        let write = std::future::poll_fn(|cx| link.poll_send(cx, &iov[..n]));
        let written = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, write).await.map_err(|_| {
                warn!(peer = %peer.addr, timeout = ?send_timeout, link = ?link.kind(), "a packet was not sent in time: the connection fails");
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
    // TLS may hold the end of the batch until flushed (other links hold nothing), under the
    // same send timeout: a peer that stopped reading must fail the connection here too.
    let flush = std::future::poll_fn(|cx| link.poll_flush(cx));
    tokio::time::timeout(send_timeout, flush).await.map_err(|_| {
        warn!(peer = %peer.addr, timeout = ?send_timeout, link = ?link.kind(), "a flush did not finish in time: the connection fails");
        io::Error::new(io::ErrorKind::TimedOut, "send timeout")
    })?
}

/// Removes `written` bytes from the front of `batch`; returns how many packets completed, and
/// whether the write ended inside the next one.
fn consume(batch: &mut VecDeque<Bytes>, mut written: usize) -> (usize, bool) {
    let mut done = 0;
    while written > 0 {
        let front = batch.front_mut().expect("the kernel wrote no more than it was given");
        if front.len() > written {
            front.advance(written);
            return (done, true);
        }
        written -= front.len();
        batch.pop_front();
        done += 1;
    }
    (done, false)
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

/// Microseconds since this process first asked: a clock that never steps back, for the
/// shared-memory back-off (the wall clock would reopen or hold it when set).
fn monotonic_micros() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A TLS configuration for tests: a certificate naming `name` issued by `ca` (written to
/// `dir`), admitting every peer whose chain leads to `ca`.
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
mod tests;
