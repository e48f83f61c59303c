//! The learn port: raw TCP, one bare request per connection, answered with a byte stream
//! (docs/spec/formats.md §7.2, docs/spec/behavior.md §2.12). The server streams log ranges, checkpoint files and
//! status replies; the client fetches votes and (resumably) checkpoints. With TLS, both ends
//! authenticate every connection before the request, so the port serves only admitted peers.

use super::tls::Tls;
use super::transport::{accept_each, bind, grow_for, RateLimited};
use super::FileRange;
use crate::format::checkpoint::{CheckpointError, CheckpointReader};
use crate::format::codec::PAGE;
use crate::format::log::{read_record, Mode, RecordError, Step};
use crate::format::message::{Checksum, Header, Message, MsgKind, MAX_HEADER_SIZE};
use crate::format::types::{MemberId, Version};
use crate::format::EncodeError;
use crate::writeback::Writeback;
use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{debug, info, warn, Instrument};

/// File bytes moved per read and write.
const CHUNK: usize = 256 * 1024;
/// Bytes of the request read before its length is trusted: version and length.
const REQUEST_PREFIX: usize = 6;
/// The longest request served. Requests are bare headers (at most `MAX_HEADER_SIZE` bytes), so
/// a longer claim is refused before anything is read or allocated for it.
const MAX_REQUEST: usize = 1024;
const _: () = assert!(MAX_REQUEST >= MAX_HEADER_SIZE && MAX_HEADER_SIZE > REQUEST_PREFIX);

/// The learn server's bounds.
#[derive(Clone, Copy, Debug)]
pub struct LearnLimits {
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// How long the server waits for a request, and for each chunk of its reply to be taken.
    pub timeout: Duration,
}

impl Default for LearnLimits {
    fn default() -> Self {
        LearnLimits { max_connections: 256, timeout: Duration::from_secs(30) }
    }
}

/// What the learn server serves; the replica implements it over its logs and checkpoints.
/// Its methods run on tokio threads, so they must answer from memory, without blocking.
pub trait LearnSource: Send + Sync + 'static {
    /// File ranges to stream for FetchVotes(decree) (from a `pipelined` log, version 7's,
    /// when the request is of that version); None closes without data.
    fn votes_from(&self, decree: u64, pipelined: bool) -> Option<Vec<FileRange>>;
    /// The current checkpoint file, if its decree is `decree`.
    fn checkpoint(&self, decree: u64) -> Option<PathBuf>;
    /// The answer to a StatusQuery; None closes.
    fn status(&self, query: &Message) -> Option<Message>;
    /// A FetchVotes or FetchCheckpoint was answered: `bytes` read from disk in `disk`.
    fn served(&self, _bytes: u64, _disk: Duration) {}
}

/// A learn-port failure, naming the peer and what failed.
#[derive(Debug, Error)]
pub enum LearnError {
    /// The peer's learn port could not be reached.
    #[error("learn from {peer}: connect: {source}")]
    Connect {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
    /// The peer stopped answering for longer than `receive_timeout_sec`.
    #[error("learn from {peer}: timed out waiting to {what}")]
    Timeout {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// What was being waited for.
        what: &'static str,
    },
    /// The connection failed mid-transfer.
    #[error("learn from {peer}: {source}")]
    Io {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
    /// The request could not be encoded in the ring's protocol version.
    #[error("learn from {peer}: the request does not encode: {source}")]
    Request {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// Why.
        source: EncodeError,
    },
    /// A streamed vote record is corrupt.
    #[error("learn from {peer}: bad record at stream offset {offset}: {source}")]
    BadRecord {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// The record's byte offset in the stream.
        offset: u64,
        /// What is wrong with it.
        source: RecordError,
    },
    /// The stream ended before the length the peer announced.
    #[error("learn from {peer}: the stream ended after {received} of {expected} bytes")]
    Short {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The peer sent more than it announced.
    #[error("learn from {peer}: sent more than the {expected} bytes expected")]
    TooLong {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// Bytes announced.
        expected: u64,
    },
    /// The local file the transfer goes to could not be written.
    #[error("learn from {peer}: {}: {source}", path.display())]
    File {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// The local file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The copied checkpoint does not read back as a valid checkpoint.
    #[error("learn from {peer}: checkpoint rejected: {source}")]
    Checkpoint {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// What is wrong with it.
        source: CheckpointError,
    },
    /// The copied checkpoint is not the one asked for (its decree or size differs).
    #[error("learn from {peer}: the checkpoint's {what} is {actual}, expected {expected}")]
    Mismatch {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// The field that differs.
        what: &'static str,
        /// The value asked for.
        expected: u64,
        /// The value found.
        actual: u64,
    },
    /// The peer has no checkpoint to give.
    #[error("learn from {peer}: no checkpoint offered (size 0)")]
    NoCheckpoint {
        /// The peer's learn-port address.
        peer: SocketAddr,
    },
    /// The server's certificate names another member than the one asked.
    #[error("learn from {peer}: the server's certificate names member {named}, not {expected}")]
    NotCertified {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// The member meant to answer.
        expected: String,
        /// The member its certificate names.
        named: String,
    },
    /// The task verifying the copied checkpoint did not finish (it panicked or was cancelled).
    #[error("learn from {peer}: verifying the checkpoint failed: {reason}")]
    Verify {
        /// The peer's learn-port address.
        peer: SocketAddr,
        /// Why it failed.
        reason: String,
    },
}

impl LearnError {
    /// Whether another connection may do better: the network failed, not the peer's data.
    fn is_transient(&self) -> bool {
        matches!(self, LearnError::Connect { .. } | LearnError::Timeout { .. } | LearnError::Io { .. } | LearnError::Short { .. })
    }
}

/// A running learn-port listener; each connection is served on its own task.
pub struct LearnServer {
    local_addr: SocketAddr,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl LearnServer {
    /// Binds `listen` (an error here is the caller's to report) and starts serving; with
    /// `tls`, only peers that complete the handshake.
    pub fn start(
        rt: &Handle,
        listen: SocketAddr,
        source: Arc<dyn LearnSource>,
        limits: LearnLimits,
        tls: Option<Arc<Tls>>,
    ) -> io::Result<LearnServer> {
        assert!(limits.max_connections > 0 && limits.timeout > Duration::ZERO, "learn limits must let a request through");
        let listener = bind(rt, listen)?;
        let local_addr = listener.local_addr()?;
        let refusals = Arc::new(RateLimited::new());
        let serve = move |conn, from| serve_logged(conn, from, source.clone(), limits.timeout, tls.clone(), refusals.clone());
        let task = rt.spawn(accept_each(listener, "learn", limits.max_connections, serve).in_current_span());
        Ok(LearnServer { local_addr, task: std::sync::Mutex::new(Some(task)) })
    }

    /// The address the learn port is bound to (its port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the listener and every connection. The task ends once its runtime drops it
    /// (at its next turn): the handle says when.
    pub fn shutdown(&self) -> Option<JoinHandle<()>> {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        task.inspect(JoinHandle::abort)
    }
}

impl Drop for LearnServer {
    fn drop(&mut self) {
        drop(self.shutdown());
    }
}

async fn serve_logged(
    conn: TcpStream,
    from: SocketAddr,
    source: Arc<dyn LearnSource>,
    limit: Duration,
    tls: Option<Arc<Tls>>,
    refusals: Arc<RateLimited>,
) {
    let served = match tls {
        None => serve(conn, &*source, limit).await,
        Some(tls) => match tls.accept(conn).await {
            Ok((conn, _)) => serve(conn, &*source, limit).await,
            Err(e) => {
                if let Some(held_back) = refusals.allow() {
                    warn!(%from, error = %e, held_back, "learn connection refused: TLS handshake failed");
                }
                return;
            }
        },
    };
    if let Err(e) = served {
        debug!(%from, error = %e, "learn connection ended");
    }
}

/// Serves one request, then closes the connection.
async fn serve<C: AsyncRead + AsyncWrite + Unpin>(mut conn: C, source: &dyn LearnSource, limit: Duration) -> io::Result<()> {
    let request = in_time(limit, read_request(&mut conn)).await?;
    let decree = request.header.decree;
    match request.kind() {
        MsgKind::FetchVotes => {
            let ranges = source.votes_from(decree, request.header.version.is_pipelined()).unwrap_or_default();
            let (bytes, disk) = send_ranges(&mut conn, &ranges, limit).await?;
            source.served(bytes, disk);
        }
        MsgKind::FetchCheckpoint => {
            // To the end of the file, from the offset in the header's payload: our resume
            // extension (v6+; the original always sends 0 there).
            let start = request.header.payload;
            let ranges: Vec<_> = source.checkpoint(decree).map(|path| FileRange { path, start, end: u64::MAX }).into_iter().collect();
            let (bytes, disk) = send_ranges(&mut conn, &ranges, limit).await?;
            source.served(bytes, disk);
        }
        MsgKind::StatusQuery => {
            if let Some(reply) = source.status(&request) {
                let bytes = reply.encode(Checksum::Default).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                in_time(limit, conn.write_all(&bytes)).await?;
            }
        }
        other => debug!(kind = ?other, "not a learn-port request"),
    }
    conn.shutdown().await
}

/// Reads one bare message, checking its version and length (at most [`MAX_REQUEST`]) before
/// reading the rest, into a buffer that grows only with the bytes that arrive.
async fn read_request<R: AsyncRead + Unpin>(conn: &mut R) -> io::Result<Message> {
    let mut buf = Vec::with_capacity(REQUEST_PREFIX);
    (&mut *conn).take(REQUEST_PREFIX as u64).read_to_end(&mut buf).await?;
    let bad = |what| io::Error::new(io::ErrorKind::InvalidData, what);
    let Ok(prefix) = <[u8; REQUEST_PREFIX]>::try_from(&buf[..]) else { return Err(io::ErrorKind::UnexpectedEof.into()) };
    let version = Version::new(u16::from_le_bytes([prefix[0], prefix[1]])).ok_or_else(|| bad("bad request version"))?;
    let length = u32::from_le_bytes([prefix[2], prefix[3], prefix[4], prefix[5]]) as usize;
    if length < Header::size(version) || length > MAX_REQUEST {
        return Err(bad("bad request length"));
    }
    (&mut *conn).take((length - REQUEST_PREFIX) as u64).read_to_end(&mut buf).await?;
    if buf.len() < length {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    debug_assert!(buf.len() == length && length <= MAX_REQUEST);
    Message::decode(&Bytes::from(buf)).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Streams each range in turn; a file that is gone or shorter than its range ends the stream
/// (a range ending at `u64::MAX` runs to the end of its file). Returns the bytes read and
/// the time spent reading them (not sending).
async fn send_ranges<C: AsyncWrite + Unpin>(conn: &mut C, ranges: &[FileRange], limit: Duration) -> io::Result<(u64, Duration)> {
    let (mut bytes, mut disk) = (0, Duration::ZERO);
    let mut buf = vec![0u8; CHUNK];
    for range in ranges {
        assert!(range.start <= range.end, "a file range runs forwards");
        let path = range.path.clone();
        let file = match blocking(move || File::open(path)).await {
            Ok(f) => Arc::new(f),
            Err(e) => {
                info!(path = %range.path.display(), error = %e, "learn stream ends: file gone");
                return Ok((bytes, disk));
            }
        };
        let mut at = range.start;
        while at < range.end {
            let len = (range.end - at).min(CHUNK as u64) as usize;
            let (file, mut chunk) = (file.clone(), std::mem::take(&mut buf));
            let started = std::time::Instant::now();
            let n;
            (buf, n) = blocking(move || file.read_at(&mut chunk[..len], at).map(|n| (chunk, n))).await?;
            (bytes, disk) = (bytes + n as u64, disk + started.elapsed());
            if n == 0 {
                debug!(path = %range.path.display(), at, "learn stream ends: end of file");
                return Ok((bytes, disk));
            }
            in_time(limit, conn.write_all(&buf[..n])).await?;
            at += n as u64;
        }
    }
    Ok((bytes, disk))
}

/// A server step, given up (and the connection with it) if the client stalls it.
async fn in_time<T>(limit: Duration, step: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    timeout(limit, step).await.map_err(|_| io::ErrorKind::TimedOut)?
}

/// Runs blocking file work off the tokio threads (tokio's `fs` feature is not enabled).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)?
}

/// A learn client's connection: plain TCP, or TLS over it.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<C: AsyncRead + AsyncWrite + Unpin + Send> Conn for C {}

/// Where a learn client connects, and whether it authenticates (and checks the server) first.
#[derive(Clone, Copy)]
pub struct Peer<'a> {
    /// The peer's learn-port address.
    pub addr: SocketAddr,
    /// This replica's TLS, to authenticate and check the server; `None`: plain TCP.
    pub tls: Option<&'a Tls>,
    /// With TLS, the member meant to answer and every member this replica knows (itself
    /// included): a server whose certificate names another of them is refused, as a Paxos
    /// connection's messages are (identity binding, docs/security.md).
    pub binding: Option<(MemberId, &'a [MemberId])>,
}

impl Peer<'_> {
    /// A peer reached over plain TCP.
    pub fn plain(addr: SocketAddr) -> Peer<'static> {
        Peer { addr, tls: None, binding: None }
    }

    /// The server's certificate names a member other than the one meant to answer.
    fn impersonates(&self, names: &[String]) -> Option<LearnError> {
        let (expected, known) = self.binding?;
        let named = crate::driver::certified_other(|id| known.contains(id), &expected, Some(names))?;
        Some(LearnError::NotCertified { peer: self.addr, expected: expected.to_string(), named: named.to_string() })
    }

    /// Connects, with the handshake when TLS is on (a refused one is a connect error).
    async fn connect(&self, limit: Duration) -> Result<Box<dyn Conn>, LearnError> {
        let peer = self.addr;
        let conn = timeout(limit, TcpStream::connect(peer))
            .await
            .map_err(|_| LearnError::Timeout { peer, what: "connect" })?
            .map_err(|source| LearnError::Connect { peer, source })?;
        match self.tls {
            None => Ok(Box::new(conn)),
            Some(tls) => match tls.connect(conn).await {
                Ok((conn, identity)) => match self.impersonates(&identity.names) {
                    Some(e) => Err(e),
                    None => Ok(Box::new(conn)),
                },
                Err(source) => Err(LearnError::Connect { peer, source }),
            },
        }
    }
}

async fn send_request(to: Peer<'_>, request: &Message, limit: Duration) -> Result<Box<dyn Conn>, LearnError> {
    let peer = to.addr;
    let bytes = request.encode(Checksum::Default).map_err(|source| LearnError::Request { peer, source })?;
    let mut conn = to.connect(limit).await?;
    timeout(limit, conn.write_all(&bytes))
        .await
        .map_err(|_| LearnError::Timeout { peer, what: "send the request" })?
        .map_err(|source| LearnError::Io { peer, source })?;
    Ok(conn)
}

/// Asks `peer`'s learn port for its status (a StatusQuery `request`): how far its log and
/// checkpoint go. A reply is a few hundred bytes; a longer one is refused.
pub async fn fetch_status(to: Peer<'_>, request: &Message, limit: Duration) -> Result<Message, LearnError> {
    debug_assert_eq!(request.kind(), MsgKind::StatusQuery);
    let peer = to.addr;
    let conn = send_request(to, request, limit).await?;
    let mut reply = Vec::with_capacity(512);
    let mut limited = conn.take(STATUS_REPLY_MAX as u64 + 1);
    timeout(limit, limited.read_to_end(&mut reply))
        .await
        .map_err(|_| LearnError::Timeout { peer, what: "status" })?
        .map_err(|source| LearnError::Io { peer, source })?;
    if reply.len() > STATUS_REPLY_MAX {
        return Err(LearnError::TooLong { peer, expected: STATUS_REPLY_MAX as u64 });
    }
    let reply =
        Message::decode(&Bytes::from(reply)).map_err(|e| LearnError::Io { peer, source: io::Error::new(io::ErrorKind::InvalidData, e) })?;
    match reply.kind() {
        MsgKind::StatusResponse => Ok(reply),
        _ => Err(LearnError::Io { peer, source: io::Error::new(io::ErrorKind::InvalidData, "not a StatusResponse") }),
    }
}

/// The largest StatusResponse a client reads.
const STATUS_REPLY_MAX: usize = 4096;

/// Fetches the votes a FetchVotes `request` asks for from `peer`, checking every record as the
/// log scanner does in strict mode. Stops at EOF, at the first bad record (the records before it
/// are returned and the rest of the stream ignored: learning ends there), or once `max_bytes`
/// have arrived (the caller asks again from where it got to). A failure before any record is an
/// error; after, it ends the stream and what arrived is returned. `limit` bounds each wait:
/// connecting, sending the request, and every read.
pub async fn fetch_votes(to: Peer<'_>, request: &Message, max_bytes: usize, limit: Duration) -> Result<Vec<Arc<Message>>, LearnError> {
    assert_eq!(request.kind(), MsgKind::FetchVotes, "fetch_votes sends a FetchVotes");
    assert!(max_bytes >= PAGE, "max_bytes must hold a record");
    let peer = to.addr;
    let mut conn = send_request(to, request, limit).await?;
    let mut stream = RecordStream::new();
    let mut records = Vec::new();
    let ended = loop {
        if stream.received >= max_bytes as u64 {
            break Ok(());
        }
        let n = match timeout(limit, stream.read_from(&mut conn)).await {
            Err(_) => break Err(LearnError::Timeout { peer, what: "receive votes" }),
            Ok(Err(source)) => break Err(LearnError::Io { peer, source }),
            Ok(Ok(n)) => n,
        };
        let parsed = stream.parse(&mut records).map_err(|(offset, source)| LearnError::BadRecord { peer, offset, source });
        if let Err(e) = parsed {
            break Err(e);
        }
        if n == 0 {
            break stream.finish().map_err(|(offset, source)| LearnError::BadRecord { peer, offset, source });
        }
    };
    match ended {
        Err(e) if records.is_empty() => Err(e),
        Err(e) => {
            info!(%peer, records = records.len(), reason = %e, "vote stream ends early");
            Ok(records)
        }
        Ok(()) => Ok(records),
    }
}

/// The incremental record parser of a vote stream: a receive buffer whose complete records are
/// split off and sliced, never copied one by one.
struct RecordStream {
    buf: BytesMut,
    /// Bytes `buf` must hold before the next record can be parsed.
    need: usize,
    /// The stream offset of `buf[0]`.
    offset: u64,
    received: u64,
}

impl RecordStream {
    fn new() -> Self {
        RecordStream { buf: BytesMut::new(), need: PAGE, offset: 0, received: 0 }
    }

    async fn read_from<C: AsyncRead + Unpin + ?Sized>(&mut self, conn: &mut C) -> io::Result<usize> {
        debug_assert!(self.buf.len() < self.need, "parse takes every complete record");
        grow_for(&mut self.buf, self.need, CHUNK);
        let n = conn.read_buf(&mut self.buf).await?;
        self.received += n as u64;
        Ok(n)
    }

    /// Appends every complete record in the buffer to `out`; a bad one is an error at its
    /// stream offset.
    fn parse(&mut self, out: &mut Vec<Arc<Message>>) -> Result<(), (u64, RecordError)> {
        if self.buf.len() < self.need {
            return Ok(());
        }
        let data = self.buf.split().freeze();
        let mut at = 0;
        let result = loop {
            match read_record(&data, at, Mode::Strict, false) {
                Ok(Step::Record(record)) => {
                    at += record.disk_len();
                    out.push(Arc::new(record.message));
                }
                Ok(Step::NeedMore(end)) => break Ok(end - at),
                Ok(Step::End) => unreachable!("a stream still arriving never ends"),
                Err(e) => break Err((self.offset + e.offset as u64, e)),
            }
        };
        debug_assert!(at <= data.len() && at % PAGE == 0);
        self.offset += at as u64;
        // Only the start of one incomplete record is carried over.
        self.buf.extend_from_slice(&data[at..]);
        self.need = result?;
        Ok(())
    }

    /// At EOF: anything left over is a record cut short.
    fn finish(&mut self) -> Result<(), (u64, RecordError)> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let rest = self.buf.split().freeze();
        let step = read_record(&rest, 0, Mode::Strict, true).map_err(|e| (self.offset, e))?;
        debug_assert!(false, "parse left a complete record behind: {step:?}");
        Ok(())
    }
}

/// Fetches a checkpoint into `dest` (created or truncated) and verifies it. A broken transfer is
/// retried, up to `attempts` connections in all, asking (v6+) for the rest from where it broke;
/// before v6 the header has no room for an offset and the file is fetched again from the start.
/// The result must be `expected_size` bytes and a checkpoint for the request's decree whose
/// every block checksum passes; anything else (nothing offered, a file too short for a header,
/// a stub) is an error, never a panic. `limit` bounds each wait, as for [`fetch_votes`].
pub async fn fetch_checkpoint(
    to: Peer<'_>,
    request: &Message,
    expected_size: u64,
    dest: &Path,
    limit: Duration,
    attempts: u32,
) -> Result<(), LearnError> {
    assert_eq!(request.kind(), MsgKind::FetchCheckpoint, "fetch_checkpoint sends a FetchCheckpoint");
    assert!(attempts >= 1, "at least one attempt");
    let peer = to.addr;
    if expected_size == 0 {
        return Err(LearnError::NoCheckpoint { peer });
    }
    let file_err = |source| LearnError::File { peer, path: dest.into(), source };
    let path = dest.to_path_buf();
    let file = blocking(move || File::create(path)).await.map_err(file_err)?;
    let mut download = Download {
        file: Arc::new(file),
        path: dest.into(),
        pending: Vec::with_capacity(CHUNK),
        written: 0,
        writeback: Writeback::default(),
    };
    let resumable = request.header.version.has_payload();
    let mut request = request.clone();
    for attempt in 1..=attempts {
        if download.written > 0 && !resumable {
            download.restart().await.map_err(file_err)?;
        }
        request.header.payload = download.written;
        let result = receive_checkpoint(to, &request, &mut download, expected_size, limit).await;
        // Keep what arrived before a break: the next attempt resumes after it.
        download.flush().await.map_err(file_err)?;
        match result {
            Ok(()) => break,
            Err(e) if e.is_transient() && attempt < attempts => {
                warn!(%peer, attempt, received = download.written, error = %e, "checkpoint transfer broke; retrying")
            }
            Err(e) => return Err(e),
        }
    }
    assert_eq!(download.written, expected_size, "a transfer succeeds only once complete");
    let file = download.file.clone();
    blocking(move || file.sync_all()).await.map_err(file_err)?;
    let (path, decree) = (dest.to_path_buf(), request.header.decree);
    tokio::task::spawn_blocking(move || verify_checkpoint(peer, &path, expected_size, decree))
        .await
        .unwrap_or_else(|e| Err(LearnError::Verify { peer, reason: e.to_string() }))
}

/// A checkpoint arriving on disk: bytes gather in `pending` and go to the file a chunk at a time.
struct Download {
    file: Arc<File>,
    path: PathBuf,
    pending: Vec<u8>,
    /// Bytes already in the file.
    written: u64,
    /// Received data goes to the disk as it comes, not all at the final sync.
    writeback: Writeback,
}

impl Download {
    fn received(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (file, path, at) = (self.file.clone(), self.path.clone(), self.written);
        let (chunk, mut writeback) = (std::mem::take(&mut self.pending), std::mem::take(&mut self.writeback));
        (self.pending, self.writeback) = blocking(move || {
            file.write_all_at(&chunk, at)?;
            writeback.advance(&file, &path, at + chunk.len() as u64)?;
            Ok((chunk, writeback))
        })
        .await?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Empties the file, to fetch it again from the start.
    async fn restart(&mut self) -> io::Result<()> {
        let file = self.file.clone();
        blocking(move || file.set_len(0)).await?;
        self.pending.clear();
        self.written = 0;
        self.writeback = Writeback::default();
        Ok(())
    }
}

/// One connection's worth of a checkpoint transfer, from `download.written` on.
async fn receive_checkpoint(
    to: Peer<'_>,
    request: &Message,
    download: &mut Download,
    expected: u64,
    limit: Duration,
) -> Result<(), LearnError> {
    let peer = to.addr;
    let mut conn = send_request(to, request, limit).await?;
    loop {
        debug_assert!(download.received() <= expected, "checked after every read");
        if download.pending.len() == download.pending.capacity() {
            download.flush().await.map_err(|source| LearnError::File { peer, path: download.path.clone(), source })?;
        }
        let n = match timeout(limit, conn.read_buf(&mut download.pending)).await {
            // Everything is here and the peer just has not closed: nothing more is coming.
            Err(_) if download.received() == expected => 0,
            Err(_) => return Err(LearnError::Timeout { peer, what: "receive the checkpoint" }),
            Ok(r) => r.map_err(|source| LearnError::Io { peer, source })?,
        };
        let received = download.received();
        if n == 0 {
            return if received == expected { Ok(()) } else { Err(LearnError::Short { peer, received, expected }) };
        }
        if received > expected {
            return Err(LearnError::TooLong { peer, expected });
        }
    }
}

/// Opens the checkpoint (header and size checks) and reads all its data (block checksums).
fn verify_checkpoint(peer: SocketAddr, path: &Path, expected_size: u64, decree: u64) -> Result<(), LearnError> {
    let rejected = |source| LearnError::Checkpoint { peer, source };
    let mut reader = CheckpointReader::open(path).map_err(rejected)?;
    let header = reader.header();
    for (what, expected, actual) in [("size", expected_size, header.size), ("decree", decree, header.last_executed)] {
        if expected != actual {
            return Err(LearnError::Mismatch { peer, what, expected, actual });
        }
    }
    loop {
        match reader.get_data_pointer(CHUNK) {
            Ok(_) => {}
            Err(CheckpointError::Eof) => return Ok(()),
            Err(e) => return Err(rejected(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::log::encode_record;
    use crate::format::message::{Body, StatusBody, VoteBody};
    use crate::format::{Ballot, CheckpointHeader, CheckpointWriter, ConfigInfo, MemberId};
    use bytes::Bytes;
    use std::sync::Mutex;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    const WAIT: Duration = Duration::from_secs(10);
    const CP_DECREE: u64 = 40;

    fn me() -> MemberId {
        MemberId::from_numeric(1)
    }

    fn message(version: Version, decree: u64, body: Body) -> Message {
        Message::new(Header::new(version, me(), decree, 1, Ballot::new(2, me())), body)
    }

    fn vote(decree: u64, request_len: usize) -> Message {
        let request = Bytes::from(vec![decree as u8; request_len]);
        message(Version::V6, decree, Body::Vote(VoteBody { requests: vec![request], ..Default::default() }))
    }

    /// A log file holding votes for `decrees`, each with a request of `request_len` bytes.
    fn write_log(path: &Path, decrees: std::ops::RangeInclusive<u64>, request_len: usize) -> u64 {
        let mut out = BytesMut::new();
        for d in decrees {
            encode_record(&vote(d, request_len), &mut out).unwrap();
        }
        std::fs::write(path, &out).unwrap();
        out.len() as u64
    }

    #[derive(Default)]
    struct Source {
        votes: Vec<FileRange>,
        checkpoint: Option<(u64, PathBuf)>,
    }

    impl LearnSource for Source {
        fn votes_from(&self, _decree: u64, _pipelined: bool) -> Option<Vec<FileRange>> {
            Some(self.votes.clone()).filter(|v| !v.is_empty())
        }
        fn checkpoint(&self, decree: u64) -> Option<PathBuf> {
            self.checkpoint.clone().filter(|(d, _)| *d == decree).map(|(_, path)| path)
        }
        fn status(&self, query: &Message) -> Option<Message> {
            let body = StatusBody {
                query_decree: query.header.decree,
                query_ballot: query.header.ballot,
                last_received_ago_ms: 5,
                min_decree_in_log: 1,
                checkpointed_decree: CP_DECREE,
                checkpoint_size: 0,
                max_ballot: Ballot::new(3, me()),
                state: 2,
            };
            Some(message(Version::V6, 7, Body::StatusResponse(body)))
        }
    }

    fn serve(source: Source) -> LearnServer {
        serve_within(source, LearnLimits::default())
    }

    fn serve_within(source: Source, limits: LearnLimits) -> LearnServer {
        LearnServer::start(&Handle::current(), "127.0.0.1:0".parse().unwrap(), Arc::new(source), limits, None).unwrap()
    }

    fn range(path: &Path, start: u64, end: u64) -> FileRange {
        FileRange { path: path.into(), start, end }
    }

    fn fetch_votes_request(decree: u64) -> Message {
        message(Version::V6, decree, Body::FetchVotes)
    }

    fn decrees(records: &[Arc<Message>]) -> Vec<u64> {
        records.iter().map(|m| m.header.decree).collect()
    }

    #[tokio::test]
    async fn fetch_votes_streams_ranges_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("1.log"), dir.path().join("6.log"));
        let len1 = write_log(&first, 1..=5, 100);
        let len2 = write_log(&second, 6..=10, 100);
        // Decree 3 starts at the third record; the stream goes on into the next file.
        let server = serve(Source { votes: vec![range(&first, 2 * 512, len1), range(&second, 0, len2)], ..Default::default() });
        let records = fetch_votes(Peer::plain(server.local_addr()), &fetch_votes_request(3), 1 << 20, WAIT).await.unwrap();
        assert_eq!(decrees(&records), (3..=10).collect::<Vec<_>>());
        assert_eq!(*records[4], vote(7, 100));
        // A file that vanished ends the stream there.
        let server = serve(Source {
            votes: vec![range(&first, 0, len1), range(&dir.path().join("gone.log"), 0, 512), range(&second, 0, len2)],
            ..Default::default()
        });
        let records = fetch_votes(Peer::plain(server.local_addr()), &fetch_votes_request(1), 1 << 20, WAIT).await.unwrap();
        assert_eq!(decrees(&records), (1..=5).collect::<Vec<_>>());
        // No log holds the decree: nothing is sent.
        let server = serve(Source::default());
        assert!(fetch_votes(Peer::plain(server.local_addr()), &fetch_votes_request(99), 1 << 20, WAIT).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn fetch_votes_stops_at_the_first_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        let len = write_log(&path, 1..=6, 3000);
        let record = len as usize / 6;
        assert_eq!(record, 7 * PAGE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4 * record + 700] ^= 1; // inside decree 5's request
        bytes.extend_from_slice(&[0; 1024]); // and a zero tail, as log files have
        std::fs::write(&path, &bytes).unwrap();
        let server = serve(Source { votes: vec![range(&path, 0, len + 1024)], ..Default::default() });
        let records = fetch_votes(Peer::plain(server.local_addr()), &fetch_votes_request(1), 1 << 20, WAIT).await.unwrap();
        assert_eq!(decrees(&records), [1, 2, 3, 4]);
        // A stream that is bad from its first record is an error naming the offset.
        let server = serve(Source { votes: vec![range(&path, 4 * record as u64, len)], ..Default::default() });
        let err = fetch_votes(Peer::plain(server.local_addr()), &fetch_votes_request(5), 1 << 20, WAIT).await.unwrap_err();
        assert!(matches!(err, LearnError::BadRecord { offset: 0, .. }), "{err}");
        // So is one cut short.
        let server = serve(Source { votes: vec![range(&path, 0, 1000)], ..Default::default() });
        let err = fetch_votes(Peer::plain(server.local_addr()), &fetch_votes_request(1), 1 << 20, WAIT).await.unwrap_err();
        assert!(matches!(err, LearnError::BadRecord { offset: 0, .. }), "{err}");
    }

    #[tokio::test]
    async fn fetch_votes_stops_after_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        let len = write_log(&path, 1..=200, 10_000); // 20 pages a record, 2 MB in all
        assert_eq!(len, 200 * 20 * 512);
        let server = serve(Source { votes: vec![range(&path, 0, len)], ..Default::default() });
        let max = 300_000;
        let records = fetch_votes(Peer::plain(server.local_addr()), &fetch_votes_request(1), max, WAIT).await.unwrap();
        assert!(!records.is_empty() && records.len() * 10_240 <= max + CHUNK, "{} records", records.len());
        assert_eq!(decrees(&records), (1..=records.len() as u64).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn status_query_and_bad_requests() {
        let server = serve(Source::default());
        // A client that never sends its request does not hold up the others.
        let _stalled = TcpStream::connect(server.local_addr()).await.unwrap();
        let query = message(Version::V6, 12, Body::StatusQuery);
        let mut conn = send_request(Peer::plain(server.local_addr()), &query, WAIT).await.unwrap();
        let mut reply = Vec::new();
        timeout(WAIT, conn.read_to_end(&mut reply)).await.unwrap().unwrap();
        let reply = Message::decode(&Bytes::from(reply)).unwrap();
        assert!(matches!(&reply.body, Body::StatusResponse(s) if s.query_decree == 12 && s.checkpointed_decree == CP_DECREE));
        // A request of another type, and a length no request has: closed without a byte.
        let hostile = [6, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        let vote = vote(1, 10).encode(Checksum::Default).unwrap();
        for request in [&vote[..], &hostile] {
            let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
            conn.write_all(request).await.unwrap();
            let mut reply = Vec::new();
            let _ = timeout(WAIT, conn.read_to_end(&mut reply)).await.unwrap();
            assert!(reply.is_empty());
        }
    }

    /// A v6 checkpoint for CP_DECREE with 64 KiB blocks and about 3 MiB of data; its size.
    fn write_checkpoint(path: &Path) -> u64 {
        write_checkpoint_of(path, 3000)
    }

    /// A checkpoint of `kb` thousand bytes of data.
    fn write_checkpoint_of(path: &Path, kb: u32) -> u64 {
        let vote = message(Version::V6, CP_DECREE + 1, Body::Vote(VoteBody::default()));
        let header = CheckpointHeader {
            version: Version::V6,
            member: me(),
            last_executed: CP_DECREE,
            max_ballot: Ballot::new(2, me()),
            config: ConfigInfo { number: 1, initial_decree: 1, ..Default::default() },
            state_saved: true,
            size: 0,
            block_size: 64 * 1024,
            next_vote: vote,
        };
        let mut w = CheckpointWriter::create(path, header).unwrap();
        for i in 0..kb {
            w.write(&[(i % 251) as u8; 1000]).unwrap();
        }
        w.close().unwrap().size
    }

    async fn expect_closed(conn: &mut TcpStream) {
        let mut buf = [0u8; 64];
        let n = timeout(WAIT, conn.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "connection still open: {n:?}");
    }

    /// The 6 bytes that start a request: version 6 and the claimed length.
    fn request_prefix(length: u32) -> Vec<u8> {
        [&6u16.to_le_bytes()[..], &length.to_le_bytes()].concat()
    }

    #[tokio::test]
    async fn a_request_claiming_a_large_length_is_refused_before_anything_is_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        let len = write_log(&path, 1..=3, 100);
        let server = serve(Source { votes: vec![range(&path, 0, len)], ..Default::default() });
        // The claim alone once cost its size in memory, held until the request timed out.
        for claim in [512 << 10, 100 << 20, u32::MAX] {
            let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
            conn.write_all(&request_prefix(claim)).await.unwrap();
            expect_closed(&mut conn).await;
        }
        let records = fetch_votes(Peer::plain(server.local_addr()), &fetch_votes_request(1), 1 << 20, WAIT).await.unwrap();
        assert_eq!(decrees(&records), [1, 2, 3]);
    }

    #[tokio::test]
    async fn read_request_takes_only_the_bytes_that_arrive() {
        let request = fetch_votes_request(5).encode(Checksum::Default).unwrap();
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&request).await.unwrap();
        assert_eq!(read_request(&mut server).await.unwrap(), fetch_votes_request(5));
        // Cut short: an error, not a wait for bytes that never come.
        client.write_all(&request[..request.len() - 1]).await.unwrap();
        drop(client);
        assert_eq!(read_request(&mut server).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn learn_connections_beyond_the_cap_are_refused_and_stalled_ones_time_out() {
        let limits = LearnLimits { max_connections: 2, timeout: Duration::from_millis(300) };
        let server = serve_within(Source::default(), limits);
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
            conn.write_all(&request_prefix(100)).await.unwrap();
            stalled.push(conn);
        }
        // Both places are taken (the acceptor has seen both once it answers a third).
        let mut extra = TcpStream::connect(server.local_addr()).await.unwrap();
        expect_closed(&mut extra).await;
        for conn in &mut stalled {
            expect_closed(conn).await;
        }
        // Their places are free again.
        let status = fetch_status(Peer::plain(server.local_addr()), &message(Version::V6, 3, Body::StatusQuery), WAIT).await.unwrap();
        assert_eq!(status.kind(), MsgKind::StatusResponse);
    }

    #[tokio::test]
    async fn a_vote_stream_claiming_a_huge_record_stops_at_max_bytes() {
        // A peer that claims a 4 GiB record and streams junk: the fetch ends once `max_bytes`
        // arrived, holding no more than it received.
        let mut record = BytesMut::new();
        encode_record(&vote(1, 100), &mut record).unwrap();
        record[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            read_request(&mut conn).await.unwrap();
            conn.write_all(&record).await.unwrap();
            let junk = vec![0u8; 1 << 16];
            while conn.write_all(&junk).await.is_ok() {}
        });
        let records = fetch_votes(Peer::plain(addr), &fetch_votes_request(1), 1 << 20, WAIT).await.unwrap();
        assert!(records.is_empty());
    }

    fn fetch_checkpoint_request(version: Version, decree: u64) -> Message {
        message(version, decree, Body::FetchCheckpoint)
    }

    #[tokio::test]
    async fn fetch_checkpoint_copies_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("40.codex");
        let size = write_checkpoint(&path);
        let server = serve(Source { checkpoint: Some((CP_DECREE, path.clone())), ..Default::default() });
        let dest = dir.path().join("copy.codex");
        let request = fetch_checkpoint_request(Version::V6, CP_DECREE);
        fetch_checkpoint(Peer::plain(server.local_addr()), &request, size, &dest, WAIT, 1).await.unwrap();
        assert!(std::fs::read(&dest).unwrap() == std::fs::read(&path).unwrap());
        // Another decree gets nothing.
        let err = fetch_checkpoint(Peer::plain(server.local_addr()), &fetch_checkpoint_request(Version::V6, 39), size, &dest, WAIT, 2)
            .await
            .unwrap_err();
        assert!(matches!(err, LearnError::Short { received: 0, .. }), "{err}");
        // Expecting less than the peer sends is an error.
        let err = fetch_checkpoint(Peer::plain(server.local_addr()), &request, size - 1, &dest, WAIT, 1).await.unwrap_err();
        assert!(matches!(err, LearnError::TooLong { .. }), "{err}");
    }

    /// A peer that offers no checkpoint (size 0, the Join of a ring that never saved one) or
    /// one too short to hold a header: a typed failure, never a panic.
    #[tokio::test]
    async fn fetch_checkpoint_of_nothing_or_a_stub_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("copy.codex");
        let server = serve(Source::default());
        let err = fetch_checkpoint(Peer::plain(server.local_addr()), &fetch_checkpoint_request(Version::V6, 0), 0, &dest, WAIT, 1)
            .await
            .unwrap_err();
        assert!(matches!(err, LearnError::NoCheckpoint { .. }), "{err}");
        let stub = dir.path().join("40.codex");
        std::fs::write(&stub, b"not a checkpoint").unwrap();
        let server = serve(Source { checkpoint: Some((CP_DECREE, stub)), ..Default::default() });
        let request = fetch_checkpoint_request(Version::V6, CP_DECREE);
        let err = fetch_checkpoint(Peer::plain(server.local_addr()), &request, 16, &dest, WAIT, 1).await.unwrap_err();
        assert!(matches!(err, LearnError::Checkpoint { .. }), "{err}");
    }

    #[tokio::test]
    async fn fetch_checkpoint_rejects_a_bad_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("40.codex");
        let size = write_checkpoint(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[size as usize - 100_000] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let server = serve(Source { checkpoint: Some((CP_DECREE, path)), ..Default::default() });
        let request = fetch_checkpoint_request(Version::V6, CP_DECREE);
        let err =
            fetch_checkpoint(Peer::plain(server.local_addr()), &request, size, &dir.path().join("copy.codex"), WAIT, 1).await.unwrap_err();
        assert!(matches!(err, LearnError::Checkpoint { source: CheckpointError::BlockChecksum { .. }, .. }), "{err}");
    }

    /// A proxy in front of `upstream` that cuts its first connection after `cut` reply bytes and
    /// reports the resume offset (header payload) of every request it forwards.
    async fn cutting_proxy(upstream: SocketAddr, cut: usize) -> (SocketAddr, UnboundedReceiver<u64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = unbounded_channel();
        let first = Arc::new(Mutex::new(true));
        tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let request = read_request(&mut client).await.unwrap();
                tx.send(request.header.payload).unwrap();
                let mut server = send_request(Peer::plain(upstream), &request, WAIT).await.unwrap();
                let limit = if std::mem::replace(&mut *first.lock().unwrap(), false) { cut as u64 } else { u64::MAX };
                tokio::io::copy(&mut (&mut server).take(limit), &mut client).await.unwrap();
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn fetch_checkpoint_resumes_after_a_broken_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("40.codex");
        let size = write_checkpoint(&path);
        let server = serve(Source { checkpoint: Some((CP_DECREE, path.clone())), ..Default::default() });
        let cut = 1_000_000;
        // v6 resumes where the stream broke; v5 has no payload field and starts over.
        for (version, second_from) in [(Version::V6, cut as u64), (Version::V5, 0)] {
            let (proxy, mut offsets) = cutting_proxy(server.local_addr(), cut).await;
            let dest = dir.path().join(format!("copy{version}.codex"));
            fetch_checkpoint(Peer::plain(proxy), &fetch_checkpoint_request(version, CP_DECREE), size, &dest, WAIT, 3).await.unwrap();
            assert!(std::fs::read(&dest).unwrap() == std::fs::read(&path).unwrap());
            assert_eq!((offsets.recv().await, offsets.recv().await), (Some(0), Some(second_from)));
            assert!(offsets.try_recv().is_err(), "two connections");
        }
    }

    #[tokio::test]
    async fn a_download_larger_than_a_writeback_step_resumes_or_restarts_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("40.codex");
        let size = write_checkpoint_of(&path, (crate::writeback::STEP * 3 / 2 / 1000) as u32);
        let server = serve(Source { checkpoint: Some((CP_DECREE, path.clone())), ..Default::default() });
        // Cut past the first step: v6 goes on writing back from there, v5 starts the file over.
        let cut = crate::writeback::STEP as usize + (1 << 20);
        for version in [Version::V6, Version::V5] {
            let (proxy, _offsets) = cutting_proxy(server.local_addr(), cut).await;
            let dest = dir.path().join(format!("copy{version}.codex"));
            fetch_checkpoint(Peer::plain(proxy), &fetch_checkpoint_request(version, CP_DECREE), size, &dest, WAIT, 3).await.unwrap();
            assert!(std::fs::read(&dest).unwrap() == std::fs::read(&path).unwrap(), "{version}");
        }
    }

    #[tokio::test]
    async fn over_tls_only_authenticated_peers_learn() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::runtime::tls::issue::Ca::new("test CA");
        let [server_tls, client_tls] = ["1", "2"].map(|name| {
            let sub = dir.path().join(name);
            std::fs::create_dir(&sub).unwrap();
            crate::runtime::transport::test_tls(&sub, &ca, name)
        });
        let (log, cp) = (dir.path().join("1.log"), dir.path().join("40.codex"));
        let len = write_log(&log, 1..=5, 3000);
        let size = write_checkpoint(&cp);
        let source = Arc::new(Source { votes: vec![range(&log, 0, len)], checkpoint: Some((CP_DECREE, cp.clone())) });
        let server = LearnServer::start(
            &Handle::current(),
            "127.0.0.1:0".parse().unwrap(),
            source,
            LearnLimits::default(),
            Some(server_tls.clone()),
        )
        .unwrap();
        let known = ["1", "2", "3"].map(|m| MemberId::new(m).unwrap());
        let peer = Peer { addr: server.local_addr(), tls: Some(&client_tls), binding: Some((known[0], &known)) };
        let records = fetch_votes(peer, &fetch_votes_request(1), 1 << 20, WAIT).await.unwrap();
        assert_eq!(decrees(&records), [1, 2, 3, 4, 5]);
        let dest = dir.path().join("copy.codex");
        fetch_checkpoint(peer, &fetch_checkpoint_request(Version::V6, CP_DECREE), size, &dest, WAIT, 1).await.unwrap();
        assert!(std::fs::read(&dest).unwrap() == std::fs::read(&cp).unwrap());
        let status = fetch_status(peer, &message(Version::V6, 3, Body::StatusQuery), WAIT).await.unwrap();
        assert_eq!(status.kind(), MsgKind::StatusResponse);
        assert_eq!(server_tls.refused(), 0);
        // Identity binding: member 1's certificate does not answer for member 3 ...
        let as_3 = Peer { binding: Some((known[2], &known)), ..peer };
        let err = fetch_status(as_3, &message(Version::V6, 3, Body::StatusQuery), WAIT).await.unwrap_err();
        assert!(matches!(&err, LearnError::NotCertified { expected, named, .. } if expected == "3" && named == "1"), "{err}");
        assert!(fetch_checkpoint(as_3, &fetch_checkpoint_request(Version::V6, CP_DECREE), size, &dest, WAIT, 1).await.is_err());
        // ... unless it names no member this replica knows (a shared service certificate).
        let unknown = Peer { binding: Some((known[2], &known[1..])), ..peer };
        assert!(fetch_status(unknown, &message(Version::V6, 3, Body::StatusQuery), WAIT).await.is_ok());
        // Plain requests get nothing.
        let plain = Peer::plain(server.local_addr());
        assert!(fetch_votes(plain, &fetch_votes_request(1), 1 << 20, WAIT).await.map_or(true, |r| r.is_empty()));
        assert!(fetch_status(plain, &message(Version::V6, 3, Body::StatusQuery), WAIT).await.is_err());
        assert!(fetch_checkpoint(plain, &fetch_checkpoint_request(Version::V6, CP_DECREE), size, &dest, WAIT, 1).await.is_err());
        let deadline = tokio::time::Instant::now() + WAIT;
        while server_tls.refused() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "refusals not counted: {}", server_tls.refused());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn golden_log_and_multiblock_checkpoint() {
        let golden = crate::golden_dir();
        let log = golden.join("log_v6/5.log");
        let expected = crate::format::log::read_log_file(&log).unwrap().records;
        let len = std::fs::metadata(&log).unwrap().len();
        let cp = golden.join("cp_multiblock_v4/100.codex");
        let size = std::fs::metadata(&cp).unwrap().len();
        let server = serve(Source { votes: vec![range(&log, 0, len)], checkpoint: Some((100, cp.clone())) });
        let records = fetch_votes(Peer::plain(server.local_addr()), &fetch_votes_request(5), 1 << 20, WAIT).await.unwrap();
        assert_eq!(records.iter().map(|m| (**m).clone()).collect::<Vec<_>>(), expected.into_iter().map(|r| r.message).collect::<Vec<_>>());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("100.codex");
        fetch_checkpoint(Peer::plain(server.local_addr()), &fetch_checkpoint_request(Version::V4, 100), size, &dest, WAIT, 1)
            .await
            .unwrap();
        assert!(std::fs::read(&dest).unwrap() == std::fs::read(&cp).unwrap());
    }

    /// `m_receiveTimeoutSec` is the client's limit: a source that takes the request and never
    /// answers fails the fetch once the limit passes, not before.
    #[tokio::test]
    async fn a_fetch_from_a_silent_source_times_out_at_the_receive_timeout() {
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                conns.push(silent.accept().await.unwrap().0);
            }
        });
        let request = fetch_votes_request(1);
        let fetch = |limit| fetch_votes(Peer::plain(addr), &request, 1 << 20, limit);
        let failed = timeout(WAIT, fetch(Duration::from_millis(200))).await.expect("the 200 ms limit ended the fetch");
        assert!(matches!(failed, Err(LearnError::Timeout { .. })), "{failed:?}");
        assert!(timeout(Duration::from_millis(600), fetch(Duration::from_secs(30))).await.is_err(), "a 30 s limit still waits");
    }
}
