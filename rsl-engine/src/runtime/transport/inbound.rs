//! The Paxos port's inbound side: accepting connections, and the two sources of packet frames
//! (a connection's byte stream, `read_packets`; a peer's ring, `RingRead`), both handing each
//! checked frame to one delivery path (`Inbound::deliver`), with the readers' shared bounds
//! (`Reading`, `Budget`).

use super::super::shm_link::{self, ShmOptions};
use super::super::tls::Tls;
use super::mux::{self, Mux, Route};
use super::{OnMessage, Origin, RateLimited, TransportOptions};
use crate::format::message::{Message, MsgKind};
use crate::format::packet::{self, Frame, HEADER_SIZE};
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

/// How much a reader asks of the socket at a time while packets are small.
pub(super) const READ_CHUNK: usize = 64 * 1024;

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
            // In the acceptor's span (a ring's, on a runtime shared by rings).
            Ok((conn, from)) => drop(tasks.spawn(serve(conn, from).in_current_span())),
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

/// Serves one inbound connection: the handshake first, with TLS (bounded by its timeout, and
/// holding one of the port's places meanwhile), then its packets.
pub(super) async fn read_inbound(stream: TcpStream, from: SocketAddr, reading: Arc<Reading>, on_message: OnMessage, tls: Option<Arc<Tls>>) {
    let _ = stream.set_nodelay(true);
    let ip = from.ip();
    let Ok(local) = stream.local_addr().map(|a| a.ip()) else { return };
    let result = match tls {
        None => read_plain(stream, from, local, &reading, &on_message).await,
        Some(tls) => match tls.accept(stream).await {
            Ok((stream, identity)) => {
                let origin = Origin { ip, peer: Some(Arc::new(identity)) };
                let inbound = Inbound { reading: &reading, on_message: &on_message, side: Side::Inbound, origin: &origin, route: None };
                match read_opening(stream, local, &inbound).await {
                    Ok(Opening::Packets(mut stream)) => read_packets(&mut stream, &inbound, Some(reading.idle_timeout)).await,
                    Ok(Opening::Offer(..)) => Err(reading.refuse(ip, io::ErrorKind::InvalidData, "a shared-memory offer over TLS")),
                    Ok(Opening::Closed) => Ok(()),
                    Err(e) => Err(e),
                }
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

/// How an inbound connection opened.
enum Opening<S> {
    /// With packets, the first bytes read put back in front.
    Packets(tokio::io::Chain<std::io::Cursor<[u8; 4]>, S>),
    /// With an offer of a shared-memory ring, whose magic was read.
    Offer(S, [u8; 8]),
    /// Closed before anything was sent.
    Closed,
}

/// Reads how an inbound connection opens: packets, or four zero bytes (never a packet's start)
/// and a magic, which is either an offer to share the connection between rings (served here
/// to its end, `mux.rs`) or a shared-memory offer (the caller's).
/// `local` is the address the peer reached.
async fn read_opening<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, local: IpAddr, inbound: &Inbound<'_>) -> io::Result<Opening<S>> {
    let reading = inbound.reading;
    let idle = reading.idle_timeout;
    let mut prefix = [0u8; 4];
    match tokio::time::timeout(idle, stream.read_exact(&mut prefix)).await {
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "idle")),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Opening::Closed),
        Ok(read) => read?,
    };
    if !shm_link::is_offer(&prefix) {
        return Ok(Opening::Packets(AsyncReadExt::chain(std::io::Cursor::new(prefix), stream)));
    }
    let mut magic = [0u8; 8];
    tokio::time::timeout(reading.frame_timeout, stream.read_exact(&mut magic))
        .await
        .map_err(|_| reading.refuse(inbound.origin.ip, io::ErrorKind::TimedOut, "an offer did not arrive whole in time"))??;
    if magic != mux::MUX_MAGIC {
        return Ok(Opening::Offer(stream, magic));
    }
    let Some((mux, route)) = reading.mux.as_ref().and_then(|mux| Some((mux, mux.route(reading.port, reading, local)?))) else {
        return Err(reading.refuse(inbound.origin.ip, io::ErrorKind::InvalidData, "an offer to share the connection, not taken here"));
    };
    mux::answer(&mut stream, mux, &route).await?;
    debug!(from = %inbound.origin.ip, "shared connection accepted");
    let shared = Inbound { route: Some(&route), ..*inbound };
    read_packets(&mut stream, &shared, Some(idle)).await?;
    Ok(Opening::Closed)
}

/// Serves a plain inbound connection: packets, or first an offer (`read_opening`). An accepted
/// shared-memory ring is read by a thread of its own, while this task reads the connection
/// (packets too large for the ring) and ends the session when either ends.
async fn read_plain(stream: TcpStream, from: SocketAddr, local: IpAddr, reading: &Arc<Reading>, on_message: &OnMessage) -> io::Result<()> {
    let origin = Origin { ip: from.ip(), peer: None };
    let inbound = Inbound { reading, on_message, side: Side::Inbound, origin: &origin, route: None };
    let idle = reading.idle_timeout;
    let (mut stream, magic) = match read_opening(stream, local, &inbound).await? {
        Opening::Packets(mut stream) => return read_packets(&mut stream, &inbound, Some(idle)).await,
        Opening::Closed => return Ok(()),
        Opening::Offer(stream, magic) => (stream, magic),
    };
    let session = shm_link::answer_offer_after(&mut stream, magic, reading.shm.as_ref()).await.map_err(|e| {
        if let Some(held_back) = reading.warnings.allow() {
            warn!(%from, error = %e, held_back, "Paxos connection closed: shared-memory set-up failed");
        }
        io::Error::new(io::ErrorKind::InvalidData, e)
    })?;
    let Some(session) = session else {
        return read_packets(&mut stream, &inbound, Some(idle)).await;
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
        r = read_packets(&mut stream, &inbound, None) => r,
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
            let inbound = Inbound { reading: &reading, on_message: &on_message, side: Side::Inbound, origin: &origin, route: None };
            let end = shm_link::read_ring(session, &stop, reading.idle_timeout, |packet| {
                shm_link::check_frame(&packet, reading.max_packet)?;
                inbound.deliver(packet)
            });
            let _ = ended.send(end);
        })?;
        Ok(())
    }
}

/// Which end of a connection we are: the original's client side (our outbound connection)
/// only takes response types (docs/spec/behavior.md §2.30); the server side takes everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
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
pub(super) struct Reading {
    pub(super) max_packet: usize,
    pub(super) idle_timeout: Duration,
    pub(super) frame_timeout: Duration,
    pub(super) budget: Budget,
    pub(super) warnings: RateLimited,
    /// `TransportOptions::shm`: whether offers of a ring are accepted, and where rings go.
    pub(super) shm: Option<ShmOptions>,
    pub(super) alert_packet: usize,
    /// Packets larger than `alert_packet` received so far.
    pub(super) oversized: AtomicU64,
    pub(super) alerts: RateLimited,
    /// `TransportOptions::mux`: the rings a shared connection accepted here may carry.
    mux: Option<Arc<Mux>>,
    /// The port this transport serves.
    port: u16,
}

impl Reading {
    pub(super) fn new(opts: &TransportOptions, port: u16) -> Reading {
        Reading {
            mux: opts.mux.clone(),
            port,
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
pub(super) async fn read_packets<R: AsyncRead + Unpin>(
    rd: &mut R,
    inbound: &Inbound<'_>,
    idle_timeout: Option<Duration>,
) -> io::Result<()> {
    let (reading, from) = (inbound.reading, inbound.origin.ip);
    let max_packet = reading.max_packet;
    let chunk = READ_CHUNK.min(max_packet);
    // A shared connection's frames begin with their ring's position.
    let lead = usize::from(inbound.route.is_some());
    let mut buf = BytesMut::with_capacity(chunk);
    let mut held = reading.budget.hold();
    let mut frame_deadline = None;
    loop {
        let need = match packet::peek_size(buf.get(lead..).unwrap_or_default(), max_packet).map_err(invalid_data)? {
            Some(size) if buf.len() >= lead + size => {
                inbound.deliver_frame(buf.split_to(lead + size).freeze())?;
                held.set(buf.capacity().saturating_sub(chunk));
                frame_deadline = None;
                continue;
            }
            Some(size) => lead + size,
            None => lead + HEADER_SIZE,
        };
        if !grow_within(&mut buf, need, chunk, &mut held) {
            return Err(reading.refuse(from, io::ErrorKind::OutOfMemory, "partly received packets fill the buffer budget"));
        }
        debug_assert!(buf.len() < need && buf.capacity() <= (lead + max_packet).max(chunk), "one packet at a time");
        // An outbound connection is ours to keep: the peer answers on it only when asked.
        let deadline = if buf.is_empty() {
            idle_timeout.map(|idle| tokio::time::Instant::now() + idle)
        } else {
            Some(*frame_deadline.get_or_insert_with(|| tokio::time::Instant::now() + reading.frame_timeout))
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

/// Where one connection's packet frames go, whichever source read them (its byte stream or
/// its ring): the one delivery path.
#[derive(Clone, Copy)]
pub(super) struct Inbound<'a> {
    pub(super) reading: &'a Reading,
    pub(super) on_message: &'a OnMessage,
    pub(super) side: Side,
    pub(super) origin: &'a Origin,
    /// A shared connection's rings: each frame begins with its ring's position (`mux.rs`).
    pub(super) route: Option<&'a Route>,
}

impl Inbound<'_> {
    /// Delivers a frame read from a connection: a packet, or on a shared connection a ring's
    /// position and a packet, delivered as that ring's own port would.
    fn deliver_frame(&self, frame: Bytes) -> io::Result<()> {
        let Some(route) = self.route else { return self.deliver(frame) };
        let ring = route.ring(frame[0])?;
        let inbound = Inbound { reading: &ring.reading, on_message: &ring.on_message, route: None, ..*self };
        inbound.deliver(frame.slice(1..))
    }

    /// Delivers one complete packet frame, whose size its source checked: the size alert, the
    /// frame's checksum, and the message, if it decodes and this side takes its kind, to
    /// `on_message`. An error (a bad frame) closes the connection; an undecodable message is
    /// dropped.
    fn deliver(&self, packet: Bytes) -> io::Result<()> {
        self.reading.check_size(packet.len(), self.origin.ip);
        let Frame::Packet { message, consumed } = packet::decode(&packet, self.reading.max_packet).map_err(invalid_data)? else {
            unreachable!("the packet is complete");
        };
        debug_assert_eq!(consumed, packet.len());
        match Message::decode(&message) {
            Ok(msg) if self.side.accepts(msg.kind()) => (self.on_message)(Arc::new(msg), self.origin.clone()),
            Ok(msg) => debug!(kind = ?msg.kind(), "a request on an outbound connection: dropped"),
            Err(e) => warn!(error = %e, "undecodable message dropped"),
        }
        Ok(())
    }
}

fn invalid_data(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Makes room in `buf` to read towards `need` bytes (the frame it holds the start of). The
/// buffer grows geometrically with what has arrived, never straight to `need`, so a hostile
/// size field costs only the bytes actually sent; it never exceeds `max(need, chunk)`.
pub(in crate::runtime) fn grow_for(buf: &mut BytesMut, need: usize, chunk: usize) {
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
