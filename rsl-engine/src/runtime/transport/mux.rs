//! One connection per peer process: the rings of a process that share a [`Mux`]
//! (`NetworkGroup::with_shared_connections`) send to another such process over one connection,
//! whichever of its rings' ports it was dialled to, instead of a connection per ring.
//!
//! Set-up, on a connection to one of the peer process's Paxos ports (after the handshake, with
//! TLS):
//!
//! 1. dialler → port: four zero bytes (a packet size of 0, which every Paxos port, ours or the
//!    original's, refuses as a packet), then [`MUX_MAGIC`].
//! 2. port → dialler: [`MUX_MAGIC`], the process's id (u64, random), a count n (u8, 1 to 255)
//!    and n rings, each a Paxos port (u16) and its load (u64, random, drawn when the ring's
//!    port joined; integers little-endian): the process's rings this connection may carry, the
//!    dialled one first. A ring is listed only if it has the dialled
//!    ring's TLS configuration (the same trust: the connection's authenticated identity means to
//!    it what it means to the dialled ring), its largest packet, and the dialled address (or
//!    every address).
//! 3. From then on, dialler → port only, frames: the ring's position in that list (u8), then a
//!    packet (docs/spec/formats.md §7.1). A position past the list, or naming a ring unloaded
//!    since, ends the connection, as a bad packet does. Each packet is checked and delivered as
//!    the ring's own port would, with the connection's identity, which that ring checks against
//!    its own members: a peer trusted by one ring cannot speak for another.
//!
//! The dialler believes a list only as far as it has checked it: it carries a peer's packets
//! over a connection another ring dialled only once it has dialled the peer's own port, after
//! that connection's answer, and met the same process there (the same id and, with TLS, the
//! same certificate) listing the ring that connection was dialled to, at the load that
//! connection's answer gave. A process cannot make another list it, so it cannot draw
//! another's traffic by listing its ports, even with its id; an answer given before the
//! process unloaded a ring vouches for nothing a newcomer on that port answers, and one given
//! after it loaded a ring there again names another load.
//!
//! A ring with no connection its port vouches for dials its port: if the answer vouches for a
//! connection another ring made, it joins that one and closes its own, which only asked; if
//! another ring's connection to the process was set up while it asked, it asks again (at most
//! [`ASK_AGAIN`] times). Each newer connection to a process retires the older ones whose every
//! ring it lists, unless they list the same rings (so that connections set up at once do not
//! retire each other in turn); this brings in the rings the process loaded since. Their rings
//! move once the older has written its last turn and the port has read it all (so a ring's
//! packets keep their order; a port that does not read it all within the send timeout counts
//! as a failed connection), each asking its port again. A port without the extension (the
//! original's, or one whose rings share no `Mux`) closes the connection on the zero size:
//! that peer gets a connection per ring for [`MUX_RETRY`].
//!
//! Each ring's packets wait in its own bounded queue for the peer (`Peer`); the connection's
//! writer takes at most [`ROUND_BYTES`] from each queue in turn, so one ring's backlog cannot
//! starve the others. Its link is never lent to the senders: the rings' protocol threads would
//! contend for it. Its send timeout is the dialling ring's. What its failure costs: every
//! ring's packets being written on it; a ring unloaded on either side ends it (the accepting
//! side's frames for that ring have nowhere to go), and its other rings dial again.

use super::link::{LinkKind, PacketLink, TcpLink, TlsLink};
use super::{consume, monotonic_micros, Link, OnMessage, Peer, Reading, CONNECT_TIMEOUT, MAX_IOV};
use crate::runtime::tls::{Thumbprint, Tls};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

/// What follows the four zero bytes of an offer to share a connection, and begins the answer.
pub const MUX_MAGIC: [u8; 8] = *b"RSLMUXv1";
/// After a peer declined to share connections, how long its rings get one each.
pub(super) const MUX_RETRY: Duration = Duration::from_secs(60);
/// The most bytes of one ring's packets a shared connection's writer takes per turn.
const ROUND_BYTES: usize = 256 << 10;
/// Bytes of an answer before its rings: the magic, the process id, the count.
const ANSWER_HEAD: usize = MUX_MAGIC.len() + 8 + 1;
/// Bytes of each ring in an answer: its port and its load.
const ANSWER_RING: usize = 2 + 8;
/// A dialled port that answered while another ring's connection to the same process was being
/// set up asks again, up to this many times, rather than setting up one more. (It stops once
/// no ring sets a connection up while it asks: in a peer process whose rings stay, at once.)
const ASK_AGAIN: usize = 8;
/// Bounds the set-up exchange, as the shared-memory offer's.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// A frame's first byte, for each ring position: written from here, never copied into a packet.
static POSITIONS: [u8; 256] = {
    let mut all = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        all[i] = i as u8;
        i += 1;
    }
    all
};

/// The rings of one process that share connections to peer processes: each ring's port, as a
/// shared connection accepted by any of them delivers to it, and the connections dialled.
pub struct Mux {
    /// This process's id in answers: tells the dialler which ports are one process.
    id: u64,
    /// Each ring's port, with its load.
    served: Mutex<HashMap<u16, (Arc<Served>, u64)>>,
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Peers' ports as dialled: what each answered.
    known: Mutex<HashMap<SocketAddr, Met>>,
    /// Answers received so far: orders each answer against the connections made.
    answers: AtomicU64,
    /// One dial at a time per peer port, so that the rings sending to it find the connection
    /// the first one made.
    dialing: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

impl Default for Mux {
    fn default() -> Mux {
        Mux {
            // Unique, not secret: it is sent to whoever dials.
            id: random_word(),
            served: Mutex::default(),
            conns: Mutex::default(),
            known: Mutex::default(),
            answers: AtomicU64::new(0),
            dialing: Mutex::default(),
        }
    }
}

/// The process met at a peer's port: the id it answered and, with TLS, its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Process {
    id: u64,
    cert: Option<Thumbprint>,
}

/// A word from the system's secure generator: a load that a process which saw the port's
/// earlier answers cannot guess.
fn random_word() -> u64 {
    use ring::rand::SecureRandom;
    let mut word = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut word).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        word = (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    u64::from_le_bytes(word)
}

/// A peer process's rings as an answer lists them, the dialled one first: each one's Paxos
/// port and load.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rings(Vec<(u16, u64)>);

impl Rings {
    fn dialled(&self) -> (u16, u64) {
        self.0[0]
    }

    fn position(&self, port: u16) -> Option<usize> {
        self.0.iter().position(|(p, _)| *p == port)
    }
}

/// What a peer's port answered when dialled: the process, and the rings it listed.
struct Met {
    process: Process,
    rings: Rings,
    /// How many answers had been received when this port was asked.
    asked_after: u64,
}

impl Met {
    /// Whether a connection to `conn`'s process may carry packets for the port this answered
    /// for: the same process listed the ring `conn` was dialled to (perhaps this very port), at
    /// the load `conn`'s answer gave, when asked after that answer. An older answer is not
    /// enough: the process may have unloaded that ring since, and another taken its port; nor
    /// is another load: the port may have been taken and given back since. (The ring that
    /// dialled a connection is attached to it without asking again.)
    fn vouches_for(&self, conn: &Conn) -> bool {
        self.process == conn.process && self.asked_after >= conn.answer && self.rings.0.contains(&conn.rings.dialled())
    }
}

impl fmt::Debug for Mux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let served = self.served.lock().map(|s| s.len()).unwrap_or_default();
        let conns = self.conns.lock().map(|c| c.len()).unwrap_or_default();
        f.debug_struct("Mux").field("rings", &served).field("connections", &conns).finish()
    }
}

/// A ring's Paxos port, to the shared connections accepted by any ring of the process.
pub(super) struct Served {
    pub reading: Arc<Reading>,
    pub on_message: OnMessage,
    pub tls: Option<Arc<Tls>>,
    /// The address the port is bound to.
    pub ip: IpAddr,
}

/// The rings an accepted shared connection carries, by position: port, load, ring.
pub(super) struct Route {
    rings: Vec<(u16, u64, Weak<Served>)>,
}

impl Route {
    /// The ring at `position`; an error (which ends the connection) if there is none or it
    /// was unloaded.
    pub fn ring(&self, position: u8) -> io::Result<Arc<Served>> {
        let (port, _, ring) = self.rings.get(usize::from(position)).ok_or_else(|| invalid("a frame names no ring of this connection"))?;
        ring.upgrade().ok_or_else(|| invalid(format!("the ring at port {port} was unloaded")))
    }
}

fn invalid(why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn same_tls(a: &Option<Arc<Tls>>, b: &Option<Arc<Tls>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_trust(b),
        _ => false,
    }
}

impl Mux {
    /// A ring's port joins (`Transport::start`); a weak handle says which entry is its own.
    pub(super) fn serve(&self, port: u16, ring: Served) -> Weak<Served> {
        let ring = Arc::new(ring);
        let own = Arc::downgrade(&ring);
        let mut served = self.served.lock().expect("mux poisoned");
        // A port taken twice (bound on two addresses): the first keeps it.
        served.entry(port).or_insert_with(|| (ring, random_word()));
        own
    }

    /// A ring's port leaves (`Transport::shutdown`): the shared connections that carry it end
    /// at their next frame for it.
    pub(super) fn withdraw(&self, port: u16, own: &Weak<Served>) {
        let mut served = self.served.lock().expect("mux poisoned");
        if served.get(&port).is_some_and(|(ring, _)| std::ptr::eq(Arc::as_ptr(ring), own.as_ptr())) {
            served.remove(&port);
        }
    }

    /// What a connection accepted on `port` (at `local`, by the transport that reads with
    /// `reading`) may carry, `port`'s ring first. None if that transport is not the one serving
    /// the port here (a port number bound on two addresses: the first keeps it).
    pub(super) fn route(&self, port: u16, reading: &Reading, local: IpAddr) -> Option<Route> {
        let served = self.served.lock().expect("mux poisoned");
        let (own, own_load) = served.get(&port).filter(|(own, _)| std::ptr::eq(&*own.reading, reading))?;
        let mut others: Vec<_> = served
            .iter()
            .filter(|(p, (ring, _))| {
                **p != port
                    && same_tls(&ring.tls, &own.tls)
                    && ring.reading.max_packet == own.reading.max_packet
                    && (ring.ip == local || ring.ip.is_unspecified())
            })
            .map(|(p, (ring, load))| (*p, *load, Arc::downgrade(ring)))
            .collect();
        others.sort_unstable_by_key(|(p, _, _)| *p);
        let first = (port, *own_load, Arc::downgrade(own));
        let rings: Vec<_> = std::iter::once(first).chain(others).take(POSITIONS.len() - 1).collect();
        debug_assert!(!rings.is_empty() && rings.len() < 256 && rings[0].0 == port);
        Some(Route { rings })
    }

    /// Outbound connections shared now (for tests and statistics).
    pub fn connections(&self) -> usize {
        self.conns.lock().expect("mux poisoned").len()
    }

    /// Carries `peer`'s packets over this process's shared connection to the peer's process,
    /// dialling the peer's port unless a connection its port vouches for carries it, until that
    /// connection ends.
    pub(super) async fn carry(self: &Arc<Self>, peer: &Arc<Peer>, link: &Link, send_timeout: Duration) -> Carried {
        if let Some(attached) = self.find(peer, link) {
            return attached.ended().await;
        }
        let gate = {
            let mut dialing = self.dialing.lock().expect("mux poisoned");
            dialing.retain(|_, gate| Arc::strong_count(gate) > 1);
            dialing.entry(peer.addr).or_default().clone()
        };
        let dialing = gate.lock_owned().await;
        let mut asked = 0;
        loop {
            // Another ring may have dialled the port meanwhile, or set a connection up while
            // it was last asked.
            if let Some(attached) = self.find(peer, link) {
                drop(dialing);
                return attached.ended().await;
            }
            let asked_after = self.answers.load(Relaxed);
            let up = match dial(peer, link).await {
                Dialled::Up(up) => up,
                Dialled::Failed => return Carried::NotConnected,
                Dialled::Declined(why) => {
                    info!(peer = %peer.addr, why, retry = ?MUX_RETRY, "the peer shares no connection: one for this ring");
                    peer.mux_off_until.store(monotonic_micros() + MUX_RETRY.as_micros() as u64, Relaxed);
                    return Carried::Declined;
                }
            };
            let answer = self.answers.fetch_add(1, Relaxed) + 1;
            let met = Met { process: up.process, rings: up.rings.clone(), asked_after };
            self.known.lock().expect("mux poisoned").insert(peer.addr, met);
            // The answer may vouch for another ring's connection: then the port was only asked.
            if let Some(attached) = self.find(peer, link) {
                drop(dialing);
                up.close().await;
                return attached.ended().await;
            }
            let ask_again_after = (asked < ASK_AGAIN).then_some(asked_after);
            let Some((conn, attached)) = self.register(peer, link, &up, answer, ask_again_after) else {
                asked += 1;
                up.close().await;
                continue;
            };
            drop(dialing);
            tokio::spawn(
                run_conn(Ending { mux: self.clone(), conn, frames: Frames::default() }, up.rd, up.out, send_timeout).in_current_span(),
            );
            return attached.ended().await;
        }
    }

    /// A new shared connection to the process `up` met, carrying `peer` first; it retires the
    /// older connections to the process whose every ring it lists, unless they list the same
    /// rings (a new connection then adds one, rather than retiring the others in turn). Their
    /// rings move to it only if their own ports, asked again, vouch for it (`carry`). Rings a
    /// process lists apart (other packet limits) keep a connection each. None, and nothing
    /// set up, if `ask_again_after` is given and a connection to the process carrying `peer`
    /// was set up after that many answers: the port is better asked again (the answer then
    /// vouches for that connection or not).
    fn register<'a>(
        &self,
        peer: &'a Arc<Peer>,
        link: &Link,
        up: &Up,
        answer: u64,
        ask_again_after: Option<u64>,
    ) -> Option<(Arc<Conn>, Attached<'a>)> {
        let mut conns = self.conns.lock().expect("mux poisoned");
        let (ip, port) = (peer.addr.ip(), peer.addr.port());
        let to_process = |c: &&Arc<Conn>| c.process == up.process && c.ip == ip && same_tls(&c.tls, &link.tls);
        if let Some(asked_after) = ask_again_after {
            if conns.iter().filter(to_process).any(|c| c.answer > asked_after && c.rings.position(port).is_some()) {
                return None;
            }
        }
        info!(peer = %peer.addr, rings = up.rings.0.len(), "shared connection up");
        let (ended, _) = watch::channel(None);
        let conn = Arc::new(Conn {
            ip,
            tls: link.tls.clone(),
            process: up.process,
            rings: up.rings.clone(),
            answer,
            kind: up.out.kind(),
            wake: Arc::new(Notify::new()),
            attached: Mutex::new(Some(Vec::new())),
            retired: AtomicBool::new(false),
            ended,
        });
        let attached = conn.clone().attach(peer).expect("not closed yet");
        let same_rings = |old: &Conn| old.rings.0.len() == conn.rings.0.len() && old.rings.0.iter().all(|r| conn.rings.0.contains(r));
        for old in conns.iter().filter(to_process).filter(|c| !same_rings(c)) {
            // Retired under its lock, so that no ring the new one does not list attaches meanwhile.
            let attached = old.attached.lock().unwrap_or_else(|e| e.into_inner());
            if attached.iter().flatten().all(|(_, peer)| conn.rings.position(peer.addr.port()).is_some()) {
                old.retired.store(true, Relaxed);
                old.wake.notify_one();
            }
        }
        conns.retain(|c| !c.retired.load(Relaxed));
        conns.push(conn.clone());
        Some((conn, attached))
    }

    /// `peer` attached to a live connection its port vouches for, if one carries it.
    fn find<'a>(&self, peer: &'a Arc<Peer>, link: &Link) -> Option<Attached<'a>> {
        self.vouched(peer, link)?.attach(peer)
    }

    /// A live connection `peer`'s port vouches for that carries it: that lists its ring at the
    /// load its port answered (a ring the peer process loaded again since the connection was
    /// set up would end it at the first frame).
    fn vouched(&self, peer: &Peer, link: &Link) -> Option<Arc<Conn>> {
        let known = self.known.lock().expect("mux poisoned");
        let met = known.get(&peer.addr)?;
        let conns = self.conns.lock().expect("mux poisoned");
        conns
            .iter()
            .find(|c| {
                c.ip == peer.addr.ip()
                    && same_tls(&c.tls, &link.tls)
                    && !c.retired.load(Relaxed)
                    && c.rings.0.contains(&met.rings.dialled())
                    && met.vouches_for(c)
            })
            .cloned()
    }
}

/// How carrying a peer's packets over a shared connection went.
pub(super) enum Carried {
    /// No connection was made.
    NotConnected,
    /// The peer's port refused to share: a connection of the ring's own.
    Declined,
    /// The connection was retired for a newer one to the same process: move over at once.
    Moved,
    /// The shared connection carried the peer's packets until it ended, as this says.
    Ended(io::Result<()>),
}

/// Peers whose packets a shared connection carries, each with its ring's position.
type Sources = Vec<(u8, Arc<Peer>)>;

/// One connection to a peer process, shared by the rings of this one that send to its rings.
struct Conn {
    ip: IpAddr,
    tls: Option<Arc<Tls>>,
    /// The process met at the dialled port.
    process: Process,
    /// The peer process's rings it carries: a frame's first byte is a position here.
    rings: Rings,
    /// Its answer's number among the answers received (`Met::asked_after`).
    answer: u64,
    kind: LinkKind,
    /// Where the attached peers' queues signal a first packet.
    wake: Arc<Notify>,
    /// The peers whose packets it carries, with their positions; None once it has ended.
    attached: Mutex<Option<Sources>>,
    /// A newer connection to the process carries all its rings, or it carries none: it ends
    /// after the turn it is writing, and its peers move over; no peer attaches to it any more.
    retired: AtomicBool,
    /// Set once, to how it ended.
    ended: watch::Sender<Option<Ended>>,
}

impl Conn {
    /// Makes the connection carry `peer`'s queue; None if it has ended.
    fn attach<'a>(self: Arc<Self>, peer: &'a Arc<Peer>) -> Option<Attached<'a>> {
        let position = self.rings.position(peer.addr.port()).expect("the connection carries the port");
        let mut attached = self.attached.lock().expect("mux poisoned");
        let list = attached.as_mut().filter(|_| !self.retired.load(Relaxed))?;
        debug_assert!(list.iter().all(|(_, p)| !Arc::ptr_eq(p, peer)), "attached once");
        list.push((position as u8, peer.clone()));
        let waiting = {
            let mut q = peer.queue.lock().expect("send queue poisoned");
            debug_assert!(q.lent.is_none() && !q.packets.front_started, "no connection of its own is up");
            q.redirect = Some(self.wake.clone());
            !q.packets.is_empty()
        };
        drop(attached);
        if waiting {
            self.wake.notify_one();
        }
        *peer.link.lock().expect("link kind poisoned") = Some(self.kind);
        peer.shared.store(true, Relaxed);
        peer.counters.connections.fetch_add(1, Relaxed);
        Some(Attached { conn: self, peer })
    }

    /// The peers attached now; None once it has ended, is retired, or carries no one (then it
    /// is retired under the same lock, so that no peer attaches to it as it closes).
    fn sources(&self) -> Option<Sources> {
        let attached = self.attached.lock().expect("mux poisoned");
        let sources = attached.as_ref().filter(|list| !list.is_empty() && !self.retired.load(Relaxed)).cloned();
        if sources.is_none() {
            self.retired.store(true, Relaxed);
        }
        sources
    }
}

/// A peer carried by a shared connection; dropping it (the peer removed, its ring shut down)
/// takes the peer off the connection, which ends once it carries no one.
struct Attached<'a> {
    conn: Arc<Conn>,
    peer: &'a Arc<Peer>,
}

/// How a shared connection ended.
#[derive(Clone, Debug)]
enum Ended {
    Retired,
    Closed(Result<(), String>),
}

impl Attached<'_> {
    /// Waits for the connection to end (its task always says how, even if it panicked).
    async fn ended(self) -> Carried {
        let mut ended = self.conn.ended.subscribe();
        let how = ended.wait_for(Option::is_some).await.map(|how| how.clone().expect("set"));
        match how {
            Ok(Ended::Retired) => Carried::Moved,
            Ok(Ended::Closed(result)) => Carried::Ended(result.map_err(io::Error::other)),
            Err(_) => Carried::Ended(Err(io::Error::other("the shared connection is gone"))),
        }
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let mut attached = self.conn.attached.lock().unwrap_or_else(|e| e.into_inner());
        let alone = attached.as_mut().is_some_and(|list| {
            list.retain(|(_, p)| !Arc::ptr_eq(p, self.peer));
            list.is_empty()
        });
        drop(attached);
        let mut q = self.peer.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.redirect.as_ref().is_some_and(|w| Arc::ptr_eq(w, &self.conn.wake)) {
            q.redirect = None;
        }
        drop(q);
        *self.peer.link.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.peer.shared.store(false, Relaxed);
        if alone {
            self.conn.wake.notify_one();
        }
    }
}

/// What dialling a peer's port for a shared connection gave.
enum Dialled {
    Up(Up),
    Failed,
    Declined(String),
}

/// A connection to a peer's port that answered the offer.
struct Up {
    rd: Box<dyn AsyncRead + Send + Unpin>,
    out: Box<dyn PacketLink>,
    /// The process met.
    process: Process,
    /// Its rings the connection may carry.
    rings: Rings,
}

impl Up {
    /// Closes a connection that only asked: the port reads its end.
    async fn close(mut self) {
        let _ = tokio::time::timeout(SETUP_TIMEOUT, std::future::poll_fn(|cx| self.out.poll_shutdown(cx))).await;
    }
}

/// Connects (and authenticates, with TLS) to `peer`'s port and offers to share the connection.
async fn dial(peer: &Peer, link: &Link) -> Dialled {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(peer = %peer.addr, error = %e, "connect failed");
            return Dialled::Failed;
        }
        Err(_) => {
            debug!(peer = %peer.addr, "connect timed out");
            return Dialled::Failed;
        }
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = &link.tls else {
        let mut stream = stream;
        return match offer(&mut stream, peer.addr).await {
            Ok((id, rings)) => {
                let (rd, wr) = stream.into_split();
                Dialled::Up(Up { rd: Box::new(rd), out: Box::new(TcpLink(wr)), process: Process { id, cert: None }, rings })
            }
            Err(e) => Dialled::Declined(e.to_string()),
        };
    };
    let (mut stream, cert) = match tls.connect(stream).await {
        Ok((stream, identity)) => (stream, identity.thumbprint),
        Err(e) => {
            if let Some(held_back) = peer.refusals.allow() {
                warn!(peer = %peer.addr, error = %e, held_back, "TLS handshake with a peer failed");
            }
            return Dialled::Failed;
        }
    };
    match offer(&mut stream, peer.addr).await {
        Ok((id, rings)) => {
            let (rd, wr) = tokio::io::split(stream);
            Dialled::Up(Up { rd: Box::new(rd), out: Box::new(TlsLink::new(wr)), process: Process { id, cert: Some(cert) }, rings })
        }
        Err(e) => Dialled::Declined(e.to_string()),
    }
}

/// The dialler's side of the set-up: the peer process's id and the rings the connection may
/// carry.
async fn offer<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, to: SocketAddr) -> io::Result<(u64, Rings)> {
    let exchange = async {
        let mut offer = [0u8; 4 + MUX_MAGIC.len()];
        offer[4..].copy_from_slice(&MUX_MAGIC);
        stream.write_all(&offer).await?;
        stream.flush().await?;
        let mut head = [0u8; ANSWER_HEAD];
        stream.read_exact(&mut head).await?;
        if head[..8] != MUX_MAGIC || head[16] == 0 {
            return Err(invalid("not an answer to the offer"));
        }
        let id = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let mut listed = vec![0u8; ANSWER_RING * usize::from(head[16])];
        stream.read_exact(&mut listed).await?;
        let ring = |r: &[u8]| (u16::from_le_bytes([r[0], r[1]]), u64::from_le_bytes(r[2..].try_into().expect("8 bytes")));
        let rings = Rings(listed.chunks_exact(ANSWER_RING).map(ring).collect());
        if rings.dialled().0 != to.port() {
            return Err(invalid("the answer does not list the dialled port first"));
        }
        Ok((id, rings))
    };
    tokio::time::timeout(SETUP_TIMEOUT, exchange).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer to the offer"))?
}

/// The port's side of the set-up, after the zero size and the magic: the process's id and the
/// rings it carries.
pub(super) async fn answer<S: AsyncWrite + Unpin>(stream: &mut S, mux: &Mux, route: &Route) -> io::Result<()> {
    let mut answer = Vec::with_capacity(ANSWER_HEAD + ANSWER_RING * route.rings.len());
    answer.extend_from_slice(&MUX_MAGIC);
    answer.extend_from_slice(&mux.id.to_le_bytes());
    answer.push(route.rings.len() as u8);
    for (port, load, _) in &route.rings {
        answer.extend_from_slice(&port.to_le_bytes());
        answer.extend_from_slice(&load.to_le_bytes());
    }
    let write = async {
        stream.write_all(&answer).await?;
        stream.flush().await
    };
    tokio::time::timeout(SETUP_TIMEOUT, write).await.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "answer not taken"))?
}

/// A shared connection's task: writes the attached rings' packets until the connection fails,
/// carries no one, or is retired; then tells the attached peers how it ended.
async fn run_conn(mut ending: Ending, mut rd: Box<dyn AsyncRead + Send + Unpin>, mut out: Box<dyn PacketLink>, send_timeout: Duration) {
    let how = tokio::select! {
        r = expect_nothing(&mut rd) => Ended::Closed(r.map_err(|e| e.to_string())),
        r = write_rounds(&ending.conn, out.as_mut(), &mut ending.frames, send_timeout) => match r {
            Err(e) => Ended::Closed(Err(e.to_string())),
            // Retired or unused: its peers move to another connection once the port has read
            // everything this one carried (it closes at its end), so their order holds; if it
            // does not close in time, they are told it failed, as order is not known to hold.
            Ok(()) => {
                let drained = async {
                    std::future::poll_fn(|cx| out.poll_shutdown(cx)).await?;
                    expect_nothing(&mut rd).await
                };
                match tokio::time::timeout(send_timeout, drained).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())) {
                    Ok(()) => Ended::Retired,
                    Err(e) => Ended::Closed(Err(format!("retired, but the port did not read it all: {e}"))),
                }
            }
        },
    };
    debug!(how = ?how, "shared connection ended");
    ending.finish(how);
}

/// A shared connection's end, whichever way its task ends (returning, or panicking, or
/// dropped with its runtime: then as closed).
struct Ending {
    mux: Arc<Mux>,
    conn: Arc<Conn>,
    frames: Frames,
}

impl Ending {
    /// The connection leaves the registry, what it was writing is counted as dropped, and then
    /// its peers are told `how` it ended (once).
    fn finish(&mut self, how: Ended) {
        self.mux.conns.lock().unwrap_or_else(|e| e.into_inner()).retain(|c| !Arc::ptr_eq(c, &self.conn));
        *self.conn.attached.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.frames.drop_unsent();
        self.conn.ended.send_if_modified(|ended| ended.is_none() && ended.replace(how).is_none());
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.finish(Ended::Closed(Err("the shared connection's task ended".into())));
    }
}

/// The port sends nothing back on a shared connection: its end, or an error.
async fn expect_nothing(rd: &mut (dyn AsyncRead + Send + Unpin)) -> io::Result<()> {
    match rd.read(&mut [0u8; 1]).await? {
        0 => Ok(()),
        _ => Err(invalid("the port wrote on a shared connection")),
    }
}

/// Turn after turn, up to [`ROUND_BYTES`] of each attached ring's packets, written in one go.
async fn write_rounds(conn: &Conn, out: &mut dyn PacketLink, frames: &mut Frames, send_timeout: Duration) -> io::Result<()> {
    loop {
        let Some(sources) = conn.sources() else { return Ok(()) };
        frames.sources = sources;
        frames.take_round(send_timeout);
        if frames.is_empty() {
            conn.wake.notified().await;
            continue;
        }
        frames.write(out, send_timeout).await?;
    }
}

/// One turn's frames: each a position byte and a packet, as slices, with whose it is.
#[derive(Default)]
struct Frames {
    /// The peers of this turn: a frame's `source` is an index here.
    sources: Sources,
    slices: VecDeque<Bytes>,
    frames: VecDeque<Frame>,
    /// The front frame's position byte is written.
    front_started: bool,
}

struct Frame {
    source: usize,
    len: usize,
    queued_at: Instant,
}

impl Frames {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn take_round(&mut self, send_timeout: Duration) {
        assert!(self.is_empty(), "the last turn is written first");
        for (source, (position, peer)) in self.sources.iter().enumerate() {
            peer.expire(send_timeout);
            let position = Bytes::from_static(&POSITIONS[usize::from(*position)..][..1]);
            let taken = peer.take_up_to(ROUND_BYTES, |packet, queued_at| {
                self.frames.push_back(Frame { source, len: packet.len(), queued_at });
                self.slices.push_back(position.clone());
                self.slices.push_back(packet);
            });
            peer.counters.writing.fetch_add(taken as u64, Relaxed);
        }
        debug_assert_eq!(self.slices.len(), 2 * self.frames.len());
    }

    /// Writes the turn (vectored, [`MAX_IOV`] slices at a time), counting each packet as sent
    /// to its ring's peer, then flushes; within the send timeout of the oldest packet unsent.
    async fn write(&mut self, out: &mut dyn PacketLink, send_timeout: Duration) -> io::Result<()> {
        while let Some(oldest) = self.frames.front() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = self.slices.len().min(MAX_IOV);
            for (slot, slice) in iov.iter_mut().zip(&self.slices) {
                *slot = IoSlice::new(slice);
            }
            let deadline = oldest.queued_at.checked_add(send_timeout).unwrap_or_else(|| Instant::now() + send_timeout);
            let write = std::future::poll_fn(|cx| out.poll_send(cx, &iov[..n]));
            let written = tokio::time::timeout_at(deadline, write).await.map_err(|_| timed_out())??;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.consume(written);
        }
        tokio::time::timeout(send_timeout, std::future::poll_fn(|cx| out.poll_flush(cx))).await.map_err(|_| timed_out())?
    }

    fn consume(&mut self, written: usize) {
        let (done, _) = consume(&mut self.slices, written);
        for _ in 0..done {
            // Slices alternate: a position byte, then its packet, which completes the frame.
            self.front_started = !self.front_started;
            if !self.front_started {
                let frame = self.frames.pop_front().expect("a frame per two slices");
                let peer = &self.sources[frame.source].1;
                peer.counters.writing.fetch_sub(1, Relaxed);
                peer.counters.sent(1, frame.len);
            }
        }
        debug_assert_eq!(self.slices.len(), 2 * self.frames.len() - usize::from(self.front_started));
    }

    /// The connection ended: what it was writing is lost, counted against each ring's peer.
    fn drop_unsent(&mut self) {
        for frame in self.frames.drain(..) {
            let peer = &self.sources[frame.source].1;
            peer.counters.writing.fetch_sub(1, Relaxed);
            peer.count_dropped(1, frame.len);
        }
        self.slices.clear();
    }
}

fn timed_out() -> io::Error {
    warn!("a packet on a shared connection was not sent in time: the connection fails");
    io::Error::new(io::ErrorKind::TimedOut, "send timeout")
}
