//! How a peer's packets leave: [`PacketLink`], the outbound side of one connection to a peer,
//! and its implementations: a plain TCP socket ([`TcpLink`]), a TLS stream ([`TlsLink`]), and a
//! ring in the peer's memory ([`RingLink`]: shared memory or RDMA, with the TCP connection it
//! was set up on for packets too large for the ring).

use super::super::ringbuf::SendError;
use super::super::shm_link::RingSender;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Sleep;

/// What carries a connection's packets (`PeerStats::link`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A plain TCP connection.
    Tcp,
    /// A TLS connection.
    Tls,
    /// A shared-memory ring (a file both replicas map), set up on a TCP connection.
    Shm,
    /// An RDMA ring (feature `rdma`), set up on a TCP connection.
    Rdma,
}

/// The outbound side of one connection to a peer: what every Paxos packet to it goes through.
/// The peer's connection task owns it and writes batches with [`poll_send`](Self::poll_send);
/// while nothing is queued, it lends it to the senders (the protocol thread), which try
/// [`try_send`](Self::try_send) first. An error from `poll_send` means the link is broken: the
/// task ends the connection and reconnects.
pub(super) trait PacketLink: Send {
    /// What carries the packets.
    fn kind(&self) -> LinkKind;

    /// Sends what of `packet` goes now, without blocking: the bytes taken (a ring takes a packet
    /// whole or not at all; a socket may take a prefix). Errors are not reported here: the
    /// task's next `poll_send` meets them.
    fn try_send(&mut self, packet: &[u8]) -> usize;

    /// Sends packets from the front of `packets`, waiting for room, and returns the bytes taken
    /// as `AsyncWrite::poll_write_vectored` does (a socket may stop inside a packet; the rest of
    /// it comes first in the next call).
    fn poll_send(&mut self, cx: &mut Context<'_>, packets: &[IoSlice<'_>]) -> Poll<io::Result<usize>>;

    /// Pushes out what the link holds back (TLS records); most links hold nothing.
    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the sending direction (a shared connection retired): the peer reads to its end.
    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Whether a sender's `try_send` left output in the link that the socket did not take
    /// (sealed TLS records): the task flushes it before the link is lent again.
    fn holds_back(&self) -> bool {
        false
    }
}

/// A plain TCP connection's write half: a sender writes to it with one non-blocking system call.
pub(super) struct TcpLink(pub OwnedWriteHalf);

impl PacketLink for TcpLink {
    fn kind(&self) -> LinkKind {
        LinkKind::Tcp
    }

    fn try_send(&mut self, packet: &[u8]) -> usize {
        // Socket full: the task waits for room. Any other error: the task's own write meets it
        // and the connection fails, as if the task had written this.
        self.0.try_write(packet).unwrap_or(0)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, packets: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, packets)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A TLS connection's write half: tokio-rustls seals vectored writes into as few records as fit.
/// A sender seals its packet into a record on its own thread and writes it with one
/// non-blocking write; what the socket does not take stays in the connection, for the task to
/// flush ([`holds_back`](PacketLink::holds_back)).
pub(super) struct TlsLink<W> {
    out: W,
    /// A sender's record is not all written yet.
    held: bool,
    /// A sender's write failed after sealing an unknown part of its packet: the stream can
    /// only be ended, and the task's next write or flush ends it.
    broken: bool,
}

/// A longer packet is left to the connection's task: sealing it would hold the sender (the
/// protocol thread) under the peer's queue lock for as long.
const MAX_LENT_PACKET: usize = 64 << 10;

impl<W> TlsLink<W> {
    pub(super) fn new(out: W) -> TlsLink<W> {
        TlsLink { out, held: false, broken: false }
    }

    fn broken() -> io::Error {
        io::Error::other("a sender's TLS write failed; the connection is ended")
    }
}

impl<W: AsyncWrite + Send + Unpin> PacketLink for TlsLink<W> {
    fn kind(&self) -> LinkKind {
        LinkKind::Tls
    }

    fn try_send(&mut self, packet: &[u8]) -> usize {
        if packet.len() > MAX_LENT_PACKET || self.broken {
            return 0;
        }
        // Nothing waits on this waker: whatever would have waited (a full socket) is left to
        // the task, which polls with its own.
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut self.out).poll_write(&mut cx, packet) {
            Poll::Ready(Ok(taken)) => {
                self.held = !matches!(Pin::new(&mut self.out).poll_flush(&mut cx), Poll::Ready(Ok(())));
                taken
            }
            // Nothing sealed.
            Poll::Pending => 0,
            // Part of the packet may be sealed, even sent: the rest cannot follow it. Taken as
            // sent, and the task, woken to flush, ends the connection (Paxos resends).
            Poll::Ready(Err(_)) => {
                (self.broken, self.held) = (true, true);
                packet.len()
            }
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, packets: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.broken {
            return Poll::Ready(Err(Self::broken()));
        }
        Pin::new(&mut self.out).poll_write_vectored(cx, packets)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(Self::broken()));
        }
        let flushed = ready!(Pin::new(&mut self.out).poll_flush(cx));
        self.held &= flushed.is_err();
        Poll::Ready(flushed)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.out).poll_shutdown(cx)
    }

    fn holds_back(&self) -> bool {
        self.held
    }
}

/// How long a writer waits before it looks at a full ring's credits again (tokio rounds it up to
/// its 1 ms tick): a full ring means the reader is behind, so no latency is lost.
const RING_FULL_WAIT: Duration = Duration::from_micros(200);

/// A ring in the peer's memory (`shm_link::RingSender`: shared memory or verbs) on the TCP
/// connection that set it up, which carries the packets too large for the ring. Such a packet
/// can overtake packets still in the ring; Paxos tolerates it (docs/rdma.md, "Ordering of
/// packets").
pub(super) struct RingLink {
    ring: Box<dyn RingSender>,
    kind: LinkKind,
    tcp: TcpLink,
    /// Bytes of the packet at the front still owed to `tcp`: it began there, so it ends there.
    tcp_rest: usize,
    /// While the ring is full: when to look at its credits again.
    full: Option<Pin<Box<Sleep>>>,
}

impl RingLink {
    /// A link of `kind` ([`LinkKind::Shm`] or [`LinkKind::Rdma`]) through `ring`, set up on `tcp`.
    pub(super) fn new(ring: Box<dyn RingSender>, kind: LinkKind, tcp: OwnedWriteHalf) -> RingLink {
        debug_assert!(matches!(kind, LinkKind::Shm | LinkKind::Rdma), "a ring is shared memory or RDMA");
        RingLink { ring, kind, tcp: TcpLink(tcp), tcp_rest: 0, full: None }
    }

    /// Sends the front packet (too large for the ring) over TCP, as far as it goes now.
    fn poll_send_tcp(&mut self, cx: &mut Context<'_>, packet: &IoSlice<'_>) -> Poll<io::Result<usize>> {
        let rest = if self.tcp_rest > 0 { self.tcp_rest } else { packet.len() };
        debug_assert_eq!(rest, packet.len(), "the front packet is the one TCP carries");
        let n = ready!(self.tcp.poll_send(cx, std::slice::from_ref(packet)))?;
        self.tcp_rest = rest - n;
        Poll::Ready(Ok(n))
    }
}

impl PacketLink for RingLink {
    fn kind(&self) -> LinkKind {
        self.kind
    }

    fn try_send(&mut self, packet: &[u8]) -> usize {
        // A copy into the ring and, if the reader sleeps, one wake-up. Full, too large or
        // broken: the task takes it from here.
        if self.tcp_rest == 0 && self.ring.send(packet).is_ok() {
            packet.len()
        } else {
            0
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, packets: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let Some(front) = packets.first() else { return Poll::Ready(Ok(0)) };
        if self.tcp_rest > 0 {
            return self.poll_send_tcp(cx, front);
        }
        loop {
            match self.copy(packets) {
                Ok(sent) => {
                    self.full = None;
                    return Poll::Ready(Ok(sent));
                }
                Err(SendError::WouldBlock) => {
                    let full = self.full.get_or_insert_with(|| Box::pin(tokio::time::sleep(RING_FULL_WAIT)));
                    ready!(full.as_mut().poll(cx));
                    self.full = None;
                }
                Err(SendError::TooLarge { .. }) => return self.poll_send_tcp(cx, front),
                Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, e))),
            }
        }
    }
}

impl RingLink {
    /// Copies packets from the front of `packets` into the ring: the bytes copied, or the first
    /// packet's error if none went (what went is reported; the next call meets the error again).
    fn copy(&mut self, packets: &[IoSlice<'_>]) -> Result<usize, SendError> {
        let mut sent = 0;
        for packet in packets {
            match self.ring.send(packet) {
                Ok(()) => sent += packet.len(),
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }
}
