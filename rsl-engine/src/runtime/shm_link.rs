//! The Paxos port's shared-memory path (issue 16): packets from one replica to another on the
//! same host go through a ring buffer in a file both map (`ringbuf::shm`), set up over the
//! peer's ordinary TCP connection, which stays open as the session's lifeline and for packets
//! too large for the ring. A peer that does not offer or accept it speaks TCP.
//!
//! Set-up on the connection the writer opened (all integers little-endian):
//!
//! 1. writer → reader, the offer, [`OFFER_LEN`] bytes: four zero bytes (a packet size of 0, which
//!    every Paxos port, ours or the original's, refuses as a packet), [`OFFER_MAGIC`], the
//!    writer's host identity (Linux's boot id, 36 ASCII bytes), what it offers ([`OFFER_SHM`] or
//!    [`OFFER_RDMA`]) and, for RDMA, its verbs endpoint ([`ENDPOINT_LEN`] bytes; zeros otherwise).
//! 2. reader → writer, the answer, `ANSWER_LEN` bytes: the kind (0 decline, 1 shared memory,
//!    2 RDMA), the session epoch (u16), a length (u8) and, zero-padded to `MAX_NAME`, the ring
//!    file's name or the reader's verbs endpoint. The reader accepts shared memory only from a
//!    writer on its own host, and creates the ring file (0600) in its ring directory; RDMA only
//!    with the `rdma` feature, a device and `ShmOptions::rdma`.
//! 3. writer → reader, the confirmation, [`CONFIRM_LEN`] bytes: 1 if it mapped the ring (in its
//!    own ring directory: the name is a bare file name) or connected its queue pair, 0 if not;
//!    then, for a mapped ring, the nonce (u64) the reader wrote into the file's header (zeros
//!    otherwise). Only a process that could open the 0600 file knows the nonce, so a local
//!    process of another user cannot confirm a ring it never mapped and hold the reader's thread
//!    idle; a wrong nonce is [`LinkError::BadNonce`]. The reader then unlinks the file, so
//!    nothing else can open it, and reads the ring on a thread of its own until the connection
//!    ends.
//!
//! Everything in the ring is checked as the TCP path checks a packet (`RingReader` bounds every
//! record, [`check_frame`] the frame inside), and any error ends the session with its TCP
//! connection; the writer reconnects.

use super::ringbuf::shm::{random_nonce, ShmError, ShmRing};
use super::ringbuf::{LocalMemory, RingReader, RingWriter, SendError};
use crate::format::packet;
use bytes::{Bytes, BytesMut};
use std::io;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What follows the four zero bytes of an offer.
pub const OFFER_MAGIC: [u8; 8] = *b"RSLSHMv2";
/// Bytes of a host identity (a boot id: a UUID in ASCII).
const HOST_ID_LEN: usize = 36;
/// Bytes of a verbs endpoint (`ringbuf::verbs::Endpoint::LEN`).
pub const ENDPOINT_LEN: usize = 46;
/// What an offer offers: a shared-memory ring, or an RDMA ring (with the writer's endpoint).
pub const OFFER_SHM: u8 = 1;
/// What an offer offers: an RDMA ring (with the writer's endpoint).
pub const OFFER_RDMA: u8 = 2;
/// Bytes of an offer.
pub const OFFER_LEN: usize = 4 + OFFER_MAGIC.len() + HOST_ID_LEN + 1 + ENDPOINT_LEN;
/// Where the offered kind and the endpoint start in an offer.
const OFFER_KIND_AT: usize = 4 + OFFER_MAGIC.len() + HOST_ID_LEN;
/// Bytes of a confirmation: yes or no, and the nonce read from the ring file.
pub const CONFIRM_LEN: usize = 1 + 8;
/// The longest ring file name.
const MAX_NAME: usize = 64;
/// Bytes of an answer.
const ANSWER_LEN: usize = 4 + MAX_NAME;
/// How long each step of the set-up may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the reader polls an empty ring after its last packet before it sleeps on the
/// doorbell: a busy ring's next packet usually comes within it, and catching it saves the futex
/// sleep and the writer's wake-up call. Bounded by time, not by a count of polls (200 yields
/// lasted many time slices on a loaded machine, or burnt a core on an idle one). Each poll
/// yields rather than `spin_loop`s: with more busy threads than cores, a spin keeps the core from
/// the very thread that produces the next packet (`benches/shm.rs` on two loaded cores: a 30 µs
/// spin took the one-in-flight round trip from 8 to 40-70 µs and its CPU from 8 to 60 µs, 5 µs
/// of spin before the yields to 18 µs); a yield hands the core over, and holds it only while no
/// other thread wants it.
const POLL: Duration = Duration::from_micros(200);
/// Bytes of the reader's buffer: each record is read into it and split off as the packet, and a
/// new one is allocated once it is used up (amortised over many packets, as the TCP reader's).
const READ_BUFFER: usize = 64 * 1024;
/// The longest sleep on the doorbell: how soon a reader notices that its session ended.
const PARK: Duration = Duration::from_millis(50);

/// Where and how large this replica's rings are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmOptions {
    /// Directory of the ring files: both replicas must name the same one (`/dev/shm`, memory).
    pub dir: PathBuf,
    /// Data bytes of each ring (a multiple of 8): packets larger than a ring go over TCP.
    pub capacity: u64,
    /// Offer RDMA rings instead of shared memory, and accept offers of them (feature `rdma`,
    /// with a device; without, nothing is offered and RDMA offers are declined).
    pub rdma: bool,
}

impl ShmOptions {
    /// `/dev/shm` where there is one (else `fallback`), with 4 MiB rings.
    pub fn default_in(fallback: &Path) -> ShmOptions {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() { shm.to_path_buf() } else { fallback.to_path_buf() };
        ShmOptions { dir, capacity: 4 << 20, rdma: false }
    }
}

/// This host's identity: replicas offer the ring only to peers that share it.
fn host_id() -> &'static [u8; HOST_ID_LEN] {
    static ID: OnceLock<[u8; HOST_ID_LEN]> = OnceLock::new();
    ID.get_or_init(|| {
        let mut id = [b'?'; HOST_ID_LEN];
        if let Ok(boot) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
            let boot = boot.trim().as_bytes();
            let n = boot.len().min(HOST_ID_LEN);
            id[..n].copy_from_slice(&boot[..n]);
        }
        id
    })
}

/// The offer a writer sends first: `kind` and, for RDMA, the writer's endpoint.
fn offer(kind: u8, endpoint: [u8; ENDPOINT_LEN]) -> [u8; OFFER_LEN] {
    let mut out = [0u8; OFFER_LEN];
    out[4..12].copy_from_slice(&OFFER_MAGIC);
    out[12..OFFER_KIND_AT].copy_from_slice(host_id());
    out[OFFER_KIND_AT] = kind;
    out[OFFER_KIND_AT + 1..].copy_from_slice(&endpoint);
    out
}

/// Whether a connection's first four bytes begin an offer rather than a packet.
pub fn is_offer(prefix: &[u8; 4]) -> bool {
    *prefix == [0; 4]
}

/// Why a session could not be set up or ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The ring's file or the TCP connection failed during set-up.
    #[error("shared-memory set-up: {0}")]
    Io(#[from] io::Error),
    /// The ring could not be created or opened.
    #[error("shared-memory set-up: {0}")]
    Ring(#[from] ShmError),
    /// The peer's offer does not start with the offer magic (the bytes found).
    #[error("shared-memory set-up: the offer's magic is {0:02x?}")]
    BadMagic([u8; 8]),
    /// The reader's answer is malformed.
    #[error("shared-memory set-up: bad answer (kind {kind}, epoch {epoch}, name length {len})")]
    BadAnswer {
        /// The answer's kind byte.
        kind: u8,
        /// The session epoch it names.
        epoch: u16,
        /// The ring name's length.
        len: usize,
    },
    /// The writer's confirmation byte is neither yes nor no (the byte found).
    #[error("shared-memory set-up: bad confirmation byte {0}")]
    BadConfirm(u8),
    /// The writer confirmed with another nonce than the ring file holds: it did not map it.
    #[error("shared-memory set-up: the confirmation's nonce is not the ring's")]
    BadNonce,
    /// The offer's kind is neither shared memory nor RDMA (the byte found).
    #[error("shared-memory set-up: unknown offer kind {0}")]
    BadKind(u8),
    /// The peer did not finish the set-up in time.
    #[error("shared-memory set-up timed out")]
    TimedOut,
}

/// A confirmation: whether the writer took the ring, and the nonce it read there (0: none).
fn confirmation(mapped: bool, nonce: u64) -> [u8; CONFIRM_LEN] {
    let mut out = [0u8; CONFIRM_LEN];
    out[0] = mapped.into();
    out[1..].copy_from_slice(&nonce.to_le_bytes());
    out
}

/// The reader: reads the writer's confirmation. Whether it took the ring, which it proves with
/// `nonce` (0 where the writer cannot read one: RDMA); a "no" carries zeros.
async fn read_confirmation<S: AsyncRead + Unpin>(stream: &mut S, nonce: u64) -> Result<bool, LinkError> {
    let mut got = [0u8; CONFIRM_LEN];
    within(stream.read_exact(&mut got)).await?;
    match (got[0], u64::from_le_bytes(got[1..].try_into().expect("8 bytes"))) {
        (0, 0) => Ok(false),
        (1, echoed) if echoed == nonce => Ok(true),
        (0 | 1, _) => Err(LinkError::BadNonce),
        (other, _) => Err(LinkError::BadConfirm(other)),
    }
}

async fn within<T>(step: impl std::future::Future<Output = io::Result<T>>) -> Result<T, LinkError> {
    tokio::time::timeout(SETUP_TIMEOUT, step).await.map_err(|_| LinkError::TimedOut)?.map_err(LinkError::Io)
}

/// The writing end of a ring session, whatever memory carries the ring: what the Paxos port's
/// `RingLink` (`transport/link.rs`) copies packets into. Implemented by the shared-memory
/// [`ShmSender`] here and by `RingWriter<VerbsRemote>` (`ringbuf::verbs`).
pub trait RingSender: Send + std::fmt::Debug {
    /// Appends one packet frame to the peer's ring.
    fn send(&mut self, packet: &[u8]) -> Result<(), SendError>;
}

/// The reading end's memory: the ring's words, and how the reader waits for the doorbell.
pub trait RingMemory: LocalMemory + Send {
    /// Sleeps until the doorbell may no longer say `seen`, for at most `timeout`.
    fn doze(&self, seen: u64, timeout: Duration);
}

/// The writing end of a shared-memory session: the ring in the peer's file.
#[derive(Debug)]
pub struct ShmSender {
    ring: RingWriter<ShmRing>,
}

impl RingSender for ShmSender {
    /// Appends one packet and wakes the reader if it sleeps.
    fn send(&mut self, packet: &[u8]) -> Result<(), SendError> {
        self.ring.try_send(packet)?;
        self.ring.memory().wake_reader();
        Ok(())
    }
}

impl RingMemory for ShmRing {
    fn doze(&self, seen: u64, timeout: Duration) {
        self.park(seen, timeout);
    }
}

/// What came of an offer.
pub enum Offered {
    /// The peer accepted and the ring is mapped: packets go through it.
    Ring(Box<dyn RingSender>),
    /// The peer declined, or its ring could not be mapped here (said why): TCP on this connection.
    Tcp(String),
}

/// The writer's side of the set-up, on a freshly connected stream. An error means the peer does
/// not speak it (it closed the connection, as a peer without the shared-memory path does) or
/// broke it: the caller gives up shared memory for this peer and reconnects.
pub async fn offer_ring<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, opts: &ShmOptions) -> Result<Offered, LinkError> {
    if opts.rdma {
        return rdma::offer_verbs(stream, opts).await;
    }
    within(stream.write_all(&offer(OFFER_SHM, [0; ENDPOINT_LEN]))).await?;
    let mut answer = [0u8; ANSWER_LEN];
    within(stream.read_exact(&mut answer)).await?;
    let (kind, epoch, len) = (answer[0], u16::from_le_bytes([answer[1], answer[2]]), answer[3] as usize);
    let bad = LinkError::BadAnswer { kind, epoch, len };
    if kind == 0 && epoch == 0 && len == 0 {
        return Ok(Offered::Tcp("the peer declined".into()));
    }
    let (Some(epoch), Some(name)) = (NonZeroU16::new(epoch).filter(|_| kind == OFFER_SHM), answer.get(4..4 + len)) else {
        return Err(bad);
    };
    if !valid_name(name) {
        return Err(bad);
    }
    let path = opts.dir.join(std::str::from_utf8(name).expect("checked ASCII"));
    match ShmRing::open(&path) {
        Ok(ring) => {
            within(stream.write_all(&confirmation(true, ring.nonce()))).await?;
            Ok(Offered::Ring(Box::new(ShmSender { ring: RingWriter::new(ring, epoch) })))
        }
        Err(e) => {
            within(stream.write_all(&confirmation(false, 0))).await?;
            Ok(Offered::Tcp(format!("cannot map the peer's ring {}: {e}", path.display())))
        }
    }
}

/// A ring file name: a bare name of safe characters, so that a peer can name no other file.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name[0] != b'.' && name.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

/// The reading end of a session: the ring's memory (for shared memory, our own file, already
/// unlinked) and the session's epoch.
pub struct RingSession<M> {
    ring: M,
    epoch: NonZeroU16,
}

/// A shared-memory session.
pub type ShmSession = RingSession<ShmRing>;

/// A session the reader accepted.
pub enum Accepted {
    /// A shared-memory ring.
    Shm(ShmSession),
    /// An RDMA ring.
    #[cfg(feature = "rdma")]
    Verbs(RingSession<super::ringbuf::verbs::VerbsLocal>),
}

/// The reader's side of the set-up, after the four zero bytes: reads the rest of the offer,
/// answers, and on the writer's confirmation returns the session (None: declined, or the writer
/// could not map the ring; the connection goes on as TCP). `opts` None: this replica does not
/// offer rings, and declines.
pub async fn answer_offer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    opts: Option<&ShmOptions>,
) -> Result<Option<Accepted>, LinkError> {
    let mut magic = [0u8; 8];
    within(stream.read_exact(&mut magic)).await?;
    answer_offer_after(stream, magic, opts).await
}

/// [`answer_offer`], the offer's magic read already (the Paxos port tells offers apart by it).
pub async fn answer_offer_after<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    magic: [u8; 8],
    opts: Option<&ShmOptions>,
) -> Result<Option<Accepted>, LinkError> {
    if magic != OFFER_MAGIC {
        return Err(LinkError::BadMagic(magic));
    }
    let mut rest = [0u8; OFFER_LEN - 12];
    within(stream.read_exact(&mut rest)).await?;
    let (host, kind) = (&rest[..OFFER_KIND_AT - 12], rest[OFFER_KIND_AT - 12]);
    let endpoint: [u8; ENDPOINT_LEN] = rest[OFFER_KIND_AT - 11..].try_into().expect("an endpoint");
    let opts = match kind {
        OFFER_SHM => opts.filter(|o| !o.rdma && host == host_id()),
        OFFER_RDMA => opts.filter(|o| o.rdma),
        other => return Err(LinkError::BadKind(other)),
    };
    let Some(opts) = opts else {
        within(stream.write_all(&[0; ANSWER_LEN])).await?;
        return Ok(None);
    };
    if kind == OFFER_RDMA {
        return rdma::answer_verbs(stream, opts, &endpoint).await;
    }
    let (name, epoch) = fresh_name();
    let path = opts.dir.join(&name);
    // A failed create leaves no file; a made one goes once the writer has mapped it, or the
    // set-up failed (never a file of the same name this did not make).
    let ring = ShmRing::create(&path, opts.capacity)?;
    let _unlink = Unlink(&path);
    let nonce = random_nonce()?;
    ring.set_nonce(nonce);
    let mut answer = [0u8; ANSWER_LEN];
    answer[0] = 1;
    answer[1..3].copy_from_slice(&epoch.get().to_le_bytes());
    answer[3] = name.len() as u8;
    answer[4..4 + name.len()].copy_from_slice(name.as_bytes());
    within(stream.write_all(&answer)).await?;
    Ok(read_confirmation(stream, nonce).await?.then_some(Accepted::Shm(ShmSession { ring, epoch })))
}

/// The RDMA set-up (feature `rdma`): the same exchange carrying verbs endpoints.
#[cfg(feature = "rdma")]
mod rdma {
    use super::*;
    use crate::runtime::ringbuf::verbs::{Device, Endpoint, VerbsError, VerbsLocal, VerbsRemote};

    /// This process's RDMA device, opened once (None: there is none, or it failed to open).
    fn device() -> Option<Arc<Device>> {
        static DEVICE: OnceLock<Option<Arc<Device>>> = OnceLock::new();
        DEVICE
            .get_or_init(|| Device::open_first().map_err(|e| tracing::info!(error = %e, "no RDMA device: Paxos packets go over TCP")).ok())
            .clone()
    }

    fn verbs(e: VerbsError) -> LinkError {
        LinkError::Io(io::Error::other(e))
    }

    /// The writer: offers an RDMA ring with its endpoint; without a device, offers nothing.
    pub(super) async fn offer_verbs<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, opts: &ShmOptions) -> Result<Offered, LinkError> {
        let Some(dev) = device() else { return Ok(Offered::Tcp("no RDMA device".into())) };
        let mut remote = VerbsRemote::new(&dev, opts.capacity).map_err(verbs)?;
        within(stream.write_all(&offer(OFFER_RDMA, remote.endpoint().encode()))).await?;
        let mut answer = [0u8; ANSWER_LEN];
        within(stream.read_exact(&mut answer)).await?;
        let (kind, epoch, len) = (answer[0], u16::from_le_bytes([answer[1], answer[2]]), answer[3] as usize);
        if kind == 0 && epoch == 0 && len == 0 {
            return Ok(Offered::Tcp("the peer declined".into()));
        }
        let bad = LinkError::BadAnswer { kind, epoch, len };
        let Some(epoch) = NonZeroU16::new(epoch).filter(|_| kind == OFFER_RDMA && len == Endpoint::LEN) else { return Err(bad) };
        let peer: [u8; Endpoint::LEN] = answer[4..4 + Endpoint::LEN].try_into().expect("an endpoint");
        match Endpoint::decode(&peer, 0).and_then(|peer| remote.connect(&peer)) {
            Ok(()) => {
                within(stream.write_all(&confirmation(true, 0))).await?;
                Ok(Offered::Ring(Box::new(RingWriter::new(remote, epoch))))
            }
            Err(e) => {
                within(stream.write_all(&confirmation(false, 0))).await?;
                Ok(Offered::Tcp(format!("cannot connect to the peer's RDMA ring: {e}")))
            }
        }
    }

    /// The reader: registers a ring, connects a queue pair to the writer's endpoint, answers
    /// with its own; without a device, declines.
    pub(super) async fn answer_verbs<S: AsyncRead + AsyncWrite + Unpin>(
        stream: &mut S,
        opts: &ShmOptions,
        endpoint: &[u8; ENDPOINT_LEN],
    ) -> Result<Option<Accepted>, LinkError> {
        let local = device().ok_or(VerbsError::NoDevice).and_then(|dev| {
            let writer = Endpoint::decode(endpoint, 8)?;
            VerbsLocal::new(&dev, opts.capacity, &writer)
        });
        let local = match local {
            Ok(local) => local,
            Err(e) => {
                tracing::info!(error = %e, "RDMA ring declined");
                within(stream.write_all(&[0; ANSWER_LEN])).await?;
                return Ok(None);
            }
        };
        let (_, epoch) = fresh_name();
        let mut answer = [0u8; ANSWER_LEN];
        (answer[0], answer[3]) = (OFFER_RDMA, Endpoint::LEN as u8);
        answer[1..3].copy_from_slice(&epoch.get().to_le_bytes());
        answer[4..4 + Endpoint::LEN].copy_from_slice(&local.endpoint().encode());
        within(stream.write_all(&answer)).await?;
        // No nonce: the writer cannot read the reader's memory (see docs/rdma.md).
        Ok(read_confirmation(stream, 0).await?.then_some(Accepted::Verbs(RingSession { ring: local, epoch })))
    }
}

/// Without the `rdma` feature: nothing is offered, and RDMA offers are declined.
#[cfg(not(feature = "rdma"))]
mod rdma {
    use super::*;

    pub(super) async fn offer_verbs<S>(_: &mut S, _: &ShmOptions) -> Result<Offered, LinkError> {
        Ok(Offered::Tcp("built without the rdma feature".into()))
    }

    pub(super) async fn answer_verbs<S: AsyncWrite + Unpin>(
        stream: &mut S,
        _: &ShmOptions,
        _: &[u8; ENDPOINT_LEN],
    ) -> Result<Option<Accepted>, LinkError> {
        within(stream.write_all(&[0; ANSWER_LEN])).await?;
        Ok(None)
    }
}

/// Removes a ring file when dropped.
struct Unlink<'a>(&'a Path);

impl Drop for Unlink<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// A new ring file name (process id and a counter: unique on the host) and a nonzero epoch.
fn fresh_name() -> (String, NonZeroU16) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let epoch = NonZeroU16::new((nanos as u16) | 1).expect("odd, so nonzero");
    let name = format!("rsl-ring-{}-{n}-{nanos:08x}", std::process::id());
    debug_assert!(valid_name(name.as_bytes()));
    (name, epoch)
}

/// Deletes the ring files in `dir` left by replicas that died between making one and its set-up
/// ending (kill -9 in that instant): this user's `rsl-ring-<pid>-…` files whose process is gone.
/// Best effort; a file of a live process, or of another user, is left alone.
pub fn sweep_stale_rings(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    // This process's user: the owner of its /proc directory.
    let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else { return };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("rsl-ring-")).and_then(|rest| rest.split('-').next()) else { continue };
        let dead = pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        let mine = entry.metadata().is_ok_and(|m| m.is_file() && m.uid() == me);
        if dead && mine {
            tracing::info!(file = %entry.path().display(), "deleting a ring file its dead replica left");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Checks that a ring record holds exactly one packet frame of at most `max_packet` bytes, as the
/// TCP reader checks its stream, before the frame is decoded.
pub fn check_frame(record: &[u8], max_packet: usize) -> io::Result<()> {
    match packet::peek_size(record, max_packet) {
        Ok(Some(size)) if size == record.len() => Ok(()),
        Ok(size) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("ring record of {} bytes holds a packet of {size:?} bytes", record.len()),
        )),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// Why a reader thread ended.
#[derive(Debug, thiserror::Error)]
pub enum ReadEnd {
    /// Told to stop: the connection that set up the session closed.
    #[error("the connection closed")]
    Stopped,
    /// Nothing arrived for this long (the ring's idle limit).
    #[error("no packet for {0:?}")]
    Idle(Duration),
    /// The ring is corrupt, another session took it, or its memory failed (an RDMA queue pair).
    #[error("ring: {0}")]
    Ring(#[from] super::ringbuf::RecvError),
    /// A packet read from the ring was refused (malformed, or too large).
    #[error("ring packet: {0}")]
    Packet(#[from] io::Error),
}

/// Reads the session's ring until `stop` is set, the ring or a packet in it is bad, or nothing
/// arrives for `idle`; hands each packet (a checked frame) to `deliver`. Runs on its own thread:
/// it sleeps on the doorbell when the ring stays empty.
pub fn read_ring<M: RingMemory>(
    session: RingSession<M>,
    stop: &AtomicBool,
    idle: Duration,
    mut deliver: impl FnMut(Bytes) -> io::Result<()>,
) -> ReadEnd {
    let RingSession { ring, epoch } = session;
    let capacity = LocalMemory::capacity(&ring) as u64;
    // Credits go back every quarter ring (and whenever the ring is found empty).
    let mut reader = RingReader::open(ring, epoch, capacity / 4);
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut last = Instant::now();
    loop {
        if stop.load(Relaxed) {
            return ReadEnd::Stopped;
        }
        // The doorbell before the look: a record published after this load makes the doze
        // below return at once, so none waits out a PARK.
        let seen = reader.memory().doorbell();
        if buf.capacity() < READ_BUFFER / 4 {
            buf.reserve(READ_BUFFER);
        }
        match reader.try_recv(&mut buf) {
            Ok(true) => {
                if let Err(e) = deliver(buf.split().freeze()) {
                    return ReadEnd::Packet(e);
                }
                last = Instant::now();
            }
            Ok(false) if last.elapsed() < POLL => std::thread::yield_now(),
            Ok(false) => {
                if last.elapsed() >= idle {
                    return ReadEnd::Idle(idle);
                }
                reader.memory().doze(seen, PARK);
            }
            Err(e) => return ReadEnd::Ring(e),
        }
    }
}

/// Stops a session's reader thread when dropped (the connection ended).
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ringbuf::RecvError;
    use tokio::io::duplex;

    fn opts(dir: &Path) -> ShmOptions {
        ShmOptions { dir: dir.to_path_buf(), capacity: 4096, rdma: false }
    }

    fn frame(body: &[u8]) -> Bytes {
        let mut out = bytes::BytesMut::new();
        packet::encode_into(body, &mut out);
        out.freeze()
    }

    #[tokio::test]
    async fn set_up_then_packets_flow_and_the_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = duplex(1024);
        let o = opts(dir.path());
        let writer = tokio::spawn(async move { offer_ring(&mut a, &o).await.map(|r| (r, a)) });
        let mut prefix = [0u8; 4];
        b.read_exact(&mut prefix).await.unwrap();
        assert!(is_offer(&prefix));
        let Some(Accepted::Shm(session)) = answer_offer(&mut b, Some(&opts(dir.path()))).await.unwrap() else { panic!("declined") };
        let Ok((Offered::Ring(mut tx), _a)) = writer.await.unwrap() else { panic!("no ring") };
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the ring file is unlinked once mapped");
        let stop = Arc::new(AtomicBool::new(false));
        let (got, rx) = std::sync::mpsc::channel();
        let stopper = stop.clone();
        let thread =
            std::thread::spawn(move || read_ring(session, &stopper, Duration::from_secs(60), |p| got.send(p).map_err(io::Error::other)));
        let packets: Vec<Bytes> = (0..500).map(|i| frame(&vec![i as u8; i % 300])).collect();
        for p in &packets {
            while let Err(e) = tx.send(p) {
                assert_eq!(e, SendError::WouldBlock);
                std::thread::yield_now();
            }
        }
        for p in &packets {
            let record = rx.recv_timeout(Duration::from_secs(60)).unwrap();
            check_frame(&record, 1 << 20).unwrap();
            assert_eq!(&record, p);
        }
        stop.store(true, Relaxed);
        assert!(matches!(thread.join().unwrap(), ReadEnd::Stopped));
    }

    #[tokio::test]
    async fn a_peer_without_shared_memory_declines_and_tcp_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = duplex(1024);
        let o = opts(dir.path());
        let writer = tokio::spawn(async move { offer_ring(&mut a, &o).await });
        let mut prefix = [0u8; 4];
        b.read_exact(&mut prefix).await.unwrap();
        assert!(answer_offer(&mut b, None).await.unwrap().is_none());
        assert!(matches!(writer.await.unwrap(), Ok(Offered::Tcp(_))));
    }

    #[tokio::test]
    async fn hostile_answers_and_offers_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (kind, epoch, name) in [(1u8, 0u16, &b"x"[..]), (1, 3, b"../etc/passwd"), (1, 3, b""), (2, 3, b"x"), (1, 3, b".hidden")] {
            let (mut a, mut b) = duplex(1024);
            let o = opts(dir.path());
            let writer = tokio::spawn(async move { offer_ring(&mut a, &o).await });
            let mut got = [0u8; OFFER_LEN];
            b.read_exact(&mut got).await.unwrap();
            let mut answer = [0u8; ANSWER_LEN];
            answer[0] = kind;
            answer[1..3].copy_from_slice(&epoch.to_le_bytes());
            answer[3] = name.len() as u8;
            answer[4..4 + name.len()].copy_from_slice(name);
            b.write_all(&answer).await.unwrap();
            assert!(matches!(writer.await.unwrap(), Err(LinkError::BadAnswer { .. })), "{kind} {epoch} {name:?}");
        }
        // A name length past the answer.
        let (mut a, mut b) = duplex(1024);
        let o = opts(dir.path());
        let writer = tokio::spawn(async move { offer_ring(&mut a, &o).await });
        b.read_exact(&mut [0u8; OFFER_LEN]).await.unwrap();
        let mut answer = [0u8; ANSWER_LEN];
        (answer[0], answer[1], answer[3]) = (1, 1, 255);
        b.write_all(&answer).await.unwrap();
        assert!(matches!(writer.await.unwrap(), Err(LinkError::BadAnswer { len: 255, .. })));
        // A wrong magic, and a writer naming a file that is not a ring.
        let (mut a, mut b) = duplex(1024);
        a.write_all(&[b'x'; OFFER_LEN - 4]).await.unwrap();
        assert!(matches!(answer_offer(&mut b, Some(&opts(dir.path()))).await, Err(LinkError::BadMagic(_))));
        std::fs::write(dir.path().join("notaring"), [7u8; 4096]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("notaring"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let (mut a, mut b) = duplex(1024);
        let o = opts(dir.path());
        let writer = tokio::spawn(async move { offer_ring(&mut a, &o).await });
        b.read_exact(&mut [0u8; OFFER_LEN]).await.unwrap();
        let mut answer = [0u8; ANSWER_LEN];
        (answer[0], answer[1], answer[3]) = (1, 1, 8);
        answer[4..12].copy_from_slice(b"notaring");
        b.write_all(&answer).await.unwrap();
        assert!(matches!(writer.await.unwrap(), Ok(Offered::Tcp(why)) if why.contains("magic")));
        let mut confirm = [9u8; CONFIRM_LEN];
        b.read_exact(&mut confirm).await.unwrap();
        assert_eq!(confirm, [0; CONFIRM_LEN], "the writer says it did not map the ring");
    }

    /// A writer that never mapped the ring (a local process of another user cannot open the
    /// 0600 file) cannot make up its nonce: a wrong echo ends the set-up, and the file is gone.
    #[tokio::test]
    async fn a_confirmation_without_the_rings_nonce_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (mapped, nonce) in [(1u8, 0u64), (1, 0x5eed), (0, 1)] {
            let (mut a, mut b) = duplex(1024);
            a.write_all(&offer_rest(OFFER_SHM)).await.unwrap();
            let o = opts(dir.path());
            let reader = tokio::spawn(async move { answer_offer(&mut b, Some(&o)).await.map(|s| s.is_some()) });
            a.read_exact(&mut [0u8; ANSWER_LEN]).await.unwrap();
            let mut confirm = confirmation(true, nonce);
            confirm[0] = mapped;
            a.write_all(&confirm).await.unwrap();
            assert!(matches!(reader.await.unwrap(), Err(LinkError::BadNonce)), "{mapped} {nonce:#x}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the ring file is gone");
        }
        let (mut a, mut b) = duplex(1024);
        a.write_all(&offer_rest(OFFER_SHM)).await.unwrap();
        let o = opts(dir.path());
        let reader = tokio::spawn(async move { answer_offer(&mut b, Some(&o)).await.map(|s| s.is_some()) });
        a.read_exact(&mut [0u8; ANSWER_LEN]).await.unwrap();
        a.write_all(&[2; CONFIRM_LEN]).await.unwrap();
        assert!(matches!(reader.await.unwrap(), Err(LinkError::BadConfirm(2))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the ring file is gone");
    }

    use crate::runtime::ringbuf::tests::Failing;

    impl RingMemory for Failing {
        fn doze(&self, _: u64, timeout: Duration) {
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
        }
    }

    #[test]
    fn a_failed_ring_memory_ends_the_reading_session() {
        let (w, r) = crate::runtime::ringbuf::InProcess::pair(4096).unwrap();
        let failed = Arc::new(AtomicBool::new(false));
        let epoch = NonZeroU16::new(3).unwrap();
        let session = RingSession { ring: Failing { mem: r, failed: failed.clone() }, epoch };
        let (got, rx) = std::sync::mpsc::channel();
        let stop = AtomicBool::new(false);
        let mut writer = RingWriter::new(w, epoch);
        let end = std::thread::scope(|s| {
            let reader = s.spawn(|| read_ring(session, &stop, Duration::from_secs(600), |p| got.send(p).map_err(io::Error::other)));
            while writer.try_send(&frame(b"before")) == Err(SendError::WouldBlock) {
                std::thread::yield_now();
            }
            assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), frame(b"before"));
            failed.store(true, Relaxed);
            reader.join().unwrap()
        });
        assert!(matches!(end, ReadEnd::Ring(RecvError::MemoryFailed)), "{end}");
    }

    #[test]
    fn ring_files_of_dead_replicas_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22: this pid cannot be running.
        let dead = dir.path().join("rsl-ring-4294967-1-00000000");
        let live = dir.path().join(format!("rsl-ring-{}-1-00000000", std::process::id()));
        let other = dir.path().join("unrelated");
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"x").unwrap();
        }
        sweep_stale_rings(dir.path());
        assert!(!dead.exists() && live.exists() && other.exists());
    }

    /// An offer of `kind` with this host's id, after its four zero bytes.
    fn offer_rest(kind: u8) -> Vec<u8> {
        offer(kind, [0; ENDPOINT_LEN])[4..].to_vec()
    }

    #[tokio::test]
    async fn offers_of_a_kind_not_served_are_declined_and_unknown_kinds_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shm = opts(dir.path());
        let rdma = ShmOptions { rdma: true, ..opts(dir.path()) };
        // An RDMA offer to a shared-memory replica or one without rings; a shared-memory offer
        // to an RDMA replica. Without the feature (or a device) an RDMA replica declines RDMA too.
        let mut cases = vec![(OFFER_RDMA, Some(&shm)), (OFFER_RDMA, None), (OFFER_SHM, Some(&rdma)), (OFFER_SHM, None)];
        if !cfg!(feature = "rdma") {
            cases.push((OFFER_RDMA, Some(&rdma)));
        }
        for (kind, served) in cases {
            let (mut a, mut b) = duplex(1024);
            a.write_all(&offer_rest(kind)).await.unwrap();
            assert!(answer_offer(&mut b, served).await.unwrap().is_none(), "kind {kind}");
            let mut answer = [9u8; ANSWER_LEN];
            a.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer, [0; ANSWER_LEN], "kind {kind}: declined");
        }
        let (mut a, mut b) = duplex(1024);
        a.write_all(&offer_rest(7)).await.unwrap();
        assert!(matches!(answer_offer(&mut b, Some(&shm)).await, Err(LinkError::BadKind(7))));
    }

    #[cfg(feature = "rdma")]
    #[tokio::test]
    async fn without_an_rdma_device_nothing_is_offered() {
        if crate::runtime::ringbuf::verbs::Device::open_first().is_ok() {
            return; // a machine with a device: this is about the fallback
        }
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = duplex(1024);
        let rdma = ShmOptions { rdma: true, ..opts(dir.path()) };
        assert!(matches!(offer_ring(&mut a, &rdma).await, Ok(Offered::Tcp(why)) if why.contains("no RDMA device")));
        drop(a);
        let mut sent = Vec::new();
        b.read_to_end(&mut sent).await.unwrap();
        assert!(sent.is_empty(), "no offer went out: the connection is plain TCP");
    }

    #[test]
    fn a_record_must_be_exactly_one_frame() {
        let p = frame(b"hello");
        check_frame(&p, 1 << 20).unwrap();
        assert!(check_frame(&p[..p.len() - 1], 1 << 20).is_err(), "shorter than its size field");
        assert!(check_frame(&[p.to_vec(), vec![0]].concat(), 1 << 20).is_err(), "longer than its size field");
        assert!(check_frame(&p[..10], 1 << 20).is_err(), "shorter than a header");
        assert!(check_frame(&p, 10).is_err(), "above the largest packet");
    }
}
