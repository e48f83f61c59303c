//! The learn port: raw TCP, one bare request per connection, answered with a byte stream
//! (formats.md §7.2, api-behavior.md §2.12). The server streams log ranges, checkpoint files and
//! status replies; the client fetches votes and (resumably) checkpoints.

use super::transport::grow_for;
use super::FileRange;
use crate::format::checkpoint::{CheckpointError, CheckpointReader};
use crate::format::codec::PAGE;
use crate::format::log::{read_record, Mode, RecordError, Step};
use crate::format::message::{Checksum, Header, Message, MsgKind};
use crate::format::types::Version;
use crate::format::EncodeError;
use bytes::BytesMut;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{debug, info, warn};

/// How long the server waits for a request, and for each chunk of its reply to be taken.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);
/// File bytes moved per read and write.
const CHUNK: usize = 256 * 1024;
/// Bytes of the request read before its length is trusted: version and length.
const REQUEST_PREFIX: usize = 6;

/// What the learn server serves; the replica implements it over its logs and checkpoints.
/// Its methods run on tokio threads, so they must answer from memory, without blocking.
pub trait LearnSource: Send + Sync + 'static {
    /// File ranges to stream for FetchVotes(decree); None closes without data.
    fn votes_from(&self, decree: u64) -> Option<Vec<FileRange>>;
    /// The current checkpoint file, if its decree is `decree`.
    fn checkpoint(&self, decree: u64) -> Option<PathBuf>;
    /// The answer to a StatusQuery; None closes.
    fn status(&self, query: &Message) -> Option<Message>;
}

/// A learn-port failure, naming the peer and what failed.
#[derive(Debug, Error)]
pub enum LearnError {
    #[error("learn from {peer}: connect: {source}")]
    Connect { peer: SocketAddr, source: io::Error },
    #[error("learn from {peer}: timed out waiting to {what}")]
    Timeout { peer: SocketAddr, what: &'static str },
    #[error("learn from {peer}: {source}")]
    Io { peer: SocketAddr, source: io::Error },
    #[error("learn from {peer}: the request does not encode: {source}")]
    Request { peer: SocketAddr, source: EncodeError },
    #[error("learn from {peer}: bad record at stream offset {offset}: {source}")]
    BadRecord { peer: SocketAddr, offset: u64, source: RecordError },
    #[error("learn from {peer}: the stream ended after {received} of {expected} bytes")]
    Short { peer: SocketAddr, received: u64, expected: u64 },
    #[error("learn from {peer}: sent more than the {expected} bytes expected")]
    TooLong { peer: SocketAddr, expected: u64 },
    #[error("learn from {peer}: {}: {source}", path.display())]
    File { peer: SocketAddr, path: PathBuf, source: io::Error },
    #[error("learn from {peer}: checkpoint rejected: {source}")]
    Checkpoint { peer: SocketAddr, source: CheckpointError },
    #[error("learn from {peer}: the checkpoint says it is {actual} bytes, expected {expected}")]
    SizeMismatch { peer: SocketAddr, expected: u64, actual: u64 },
    #[error("learn from {peer}: checkpoint is for decree {actual}, asked for {expected}")]
    WrongDecree { peer: SocketAddr, expected: u64, actual: u64 },
}

impl LearnError {
    /// Whether another connection may do better: the network failed, not the peer's data.
    fn is_transient(&self) -> bool {
        matches!(self, LearnError::Connect { .. } | LearnError::Timeout { .. } | LearnError::Io { .. } | LearnError::Short { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// Server

/// A running learn-port listener; each connection is served on its own task.
pub struct LearnServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LearnServer {
    /// Binds `listen` (an error here is the caller's to report) and starts serving.
    pub fn start(rt: &Handle, listen: SocketAddr, source: Arc<dyn LearnSource>, max_message: usize) -> io::Result<LearnServer> {
        assert!(max_message >= Header::size(Version::V6), "a request must fit");
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let listener = {
            let _guard = rt.enter();
            TcpListener::from_std(std_listener)?
        };
        let task = rt.spawn(accept_loop(listener, source, max_message));
        Ok(LearnServer { local_addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting. Transfers under way run to their end (or their timeout).
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

impl Drop for LearnServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, source: Arc<dyn LearnSource>, max_message: usize) {
    loop {
        match listener.accept().await {
            Ok((conn, from)) => {
                let source = source.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(conn, &*source, max_message).await {
                        debug!(%from, error = %e, "learn connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "learn port accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one request, then closes the connection.
async fn serve(mut conn: TcpStream, source: &dyn LearnSource, max_message: usize) -> io::Result<()> {
    let request = timeout(SERVER_TIMEOUT, read_request(&mut conn, max_message)).await.map_err(|_| io::ErrorKind::TimedOut)??;
    let decree = request.header.decree;
    match request.kind() {
        MsgKind::FetchVotes => {
            let ranges = source.votes_from(decree).unwrap_or_default();
            send_ranges(&mut conn, &ranges).await?;
        }
        MsgKind::FetchCheckpoint => {
            if let Some(path) = source.checkpoint(decree) {
                // Our resume extension: the offset to start from, in the header's payload (v6+).
                let meta_path = path.clone();
                let len = blocking(move || std::fs::metadata(meta_path)).await?.len();
                let start = request.header.payload;
                if start <= len {
                    send_ranges(&mut conn, &[FileRange { path, start, end: len }]).await?;
                }
            }
        }
        MsgKind::StatusQuery => {
            if let Some(reply) = source.status(&request) {
                let bytes = reply.encode(Checksum::Default).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                timeout(SERVER_TIMEOUT, conn.write_all(&bytes)).await.map_err(|_| io::ErrorKind::TimedOut)??;
            }
        }
        other => debug!(kind = ?other, "not a learn-port request"),
    }
    conn.shutdown().await
}

/// Reads one bare message, checking its version and length before reading (or allocating for)
/// the rest.
async fn read_request(conn: &mut TcpStream, max_message: usize) -> io::Result<Message> {
    let mut prefix = [0u8; REQUEST_PREFIX];
    conn.read_exact(&mut prefix).await?;
    let bad = |what| io::Error::new(io::ErrorKind::InvalidData, what);
    let version = Version::new(u16::from_le_bytes([prefix[0], prefix[1]])).ok_or_else(|| bad("bad request version"))?;
    let length = u32::from_le_bytes(prefix[2..].try_into().expect("4 bytes")) as usize;
    if length < Header::size(version) || length > max_message {
        return Err(bad("bad request length"));
    }
    let mut buf = BytesMut::zeroed(length);
    buf[..REQUEST_PREFIX].copy_from_slice(&prefix);
    conn.read_exact(&mut buf[REQUEST_PREFIX..]).await?;
    Message::decode(&buf.freeze()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Streams each range in turn; a file that is gone or shorter than its range ends the stream.
async fn send_ranges(conn: &mut TcpStream, ranges: &[FileRange]) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    for range in ranges {
        assert!(range.start <= range.end, "a file range runs forwards");
        let path = range.path.clone();
        let file = match blocking(move || File::open(path)).await {
            Ok(f) => Arc::new(f),
            Err(e) => {
                info!(path = %range.path.display(), error = %e, "learn stream ends: file gone");
                return Ok(());
            }
        };
        let mut at = range.start;
        while at < range.end {
            let len = (range.end - at).min(CHUNK as u64) as usize;
            let (file, mut chunk) = (file.clone(), std::mem::take(&mut buf));
            let n;
            (buf, n) = blocking(move || file.read_at(&mut chunk[..len], at).map(|n| (chunk, n))).await?;
            if n == 0 {
                info!(path = %range.path.display(), "learn stream ends: file shorter than its range");
                return Ok(());
            }
            timeout(SERVER_TIMEOUT, conn.write_all(&buf[..n])).await.map_err(|_| io::ErrorKind::TimedOut)??;
            at += n as u64;
        }
    }
    Ok(())
}

/// Runs blocking file work off the tokio threads (tokio's `fs` feature is not enabled).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)?
}

// ---------------------------------------------------------------------------------------------
// Client

async fn send_request(peer: SocketAddr, request: &Message, limit: Duration) -> Result<TcpStream, LearnError> {
    let bytes = request.encode(Checksum::Default).map_err(|source| LearnError::Request { peer, source })?;
    let mut conn = timeout(limit, TcpStream::connect(peer))
        .await
        .map_err(|_| LearnError::Timeout { peer, what: "connect" })?
        .map_err(|source| LearnError::Connect { peer, source })?;
    timeout(limit, conn.write_all(&bytes))
        .await
        .map_err(|_| LearnError::Timeout { peer, what: "send the request" })?
        .map_err(|source| LearnError::Io { peer, source })?;
    Ok(conn)
}

/// Fetches the votes a FetchVotes `request` asks for from `peer`, checking every record as the
/// log scanner does in strict mode. Stops at EOF, at the first bad record (the records before it
/// are returned and the rest of the stream ignored: learning ends there), or once `max_bytes`
/// have arrived (the caller asks again from where it got to). A failure before any record is an
/// error; after, it ends the stream and what arrived is returned.
pub async fn fetch_votes(
    peer: SocketAddr,
    request: &Message,
    max_bytes: usize,
    limit: Duration,
) -> Result<Vec<Arc<Message>>, LearnError> {
    assert_eq!(request.kind(), MsgKind::FetchVotes, "fetch_votes sends a FetchVotes");
    assert!(max_bytes >= PAGE, "max_bytes must hold a record");
    let mut conn = send_request(peer, request, limit).await?;
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

    async fn read_from(&mut self, conn: &mut TcpStream) -> io::Result<usize> {
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
/// every block checksum passes.
pub async fn fetch_checkpoint(
    peer: SocketAddr,
    request: &Message,
    expected_size: u64,
    dest: &Path,
    limit: Duration,
    attempts: u32,
) -> Result<(), LearnError> {
    assert_eq!(request.kind(), MsgKind::FetchCheckpoint, "fetch_checkpoint sends a FetchCheckpoint");
    assert!(attempts >= 1, "at least one attempt");
    let file_err = |source| LearnError::File { peer, path: dest.into(), source };
    let path = dest.to_path_buf();
    let file = blocking(move || File::create(path)).await.map_err(file_err)?;
    let mut download = Download { file: Arc::new(file), path: dest.into(), pending: Vec::with_capacity(CHUNK), written: 0 };
    let resumable = request.header.version.has_payload();
    let mut request = request.clone();
    for attempt in 1..=attempts {
        if download.written > 0 && !resumable {
            download.restart().await.map_err(file_err)?;
        }
        request.header.payload = download.written;
        let result = receive_checkpoint(peer, &request, &mut download, expected_size, limit).await;
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
        .expect("checkpoint verification does not panic")
}

/// A checkpoint arriving on disk: bytes gather in `pending` and go to the file a chunk at a time.
struct Download {
    file: Arc<File>,
    path: PathBuf,
    pending: Vec<u8>,
    /// Bytes already in the file.
    written: u64,
}

impl Download {
    fn received(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (file, at, chunk) = (self.file.clone(), self.written, std::mem::take(&mut self.pending));
        self.pending = blocking(move || file.write_all_at(&chunk, at).map(|()| chunk)).await?;
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
        Ok(())
    }
}

/// One connection's worth of a checkpoint transfer, from `download.written` on.
async fn receive_checkpoint(peer: SocketAddr, request: &Message, download: &mut Download, expected: u64, limit: Duration) -> Result<(), LearnError> {
    let mut conn = send_request(peer, request, limit).await?;
    loop {
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
    if header.size != expected_size {
        return Err(LearnError::SizeMismatch { peer, expected: expected_size, actual: header.size });
    }
    if header.last_executed != decree {
        return Err(LearnError::WrongDecree { peer, expected: decree, actual: header.last_executed });
    }
    loop {
        match reader.get_data_pointer(CHUNK) {
            Ok(_) => {}
            Err(CheckpointError::Eof) => return Ok(()),
            Err(e) => return Err(rejected(e)),
        }
    }
}
