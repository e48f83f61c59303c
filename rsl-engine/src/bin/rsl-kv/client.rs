//! The key-value service's client: single calls (status, put, get) and a load generator that
//! keeps many requests in flight against whichever replica is primary. (The process tests
//! use it too, so not everything here is used by the binary.)
#![allow(dead_code)]

use crate::proto::{self, Status};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One client connection with one call at a time.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u64,
}

/// What a replica reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub seq: u64,
    pub keys: u64,
    pub digest: u64,
    pub duplicates: u64,
    pub primary: bool,
    /// Peer messages dropped before the protocol since the replica started.
    pub messages_rejected: u64,
    /// TLS handshakes refused since the replica started.
    pub tls_refused: u64,
    pub primary_id: String,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: BytesMut::with_capacity(4096), next_id: 1 })
    }

    async fn call(&mut self, build: impl FnOnce(&mut BytesMut, u64)) -> io::Result<(Status, Bytes)> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = BytesMut::new();
        build(&mut out, id);
        self.stream.write_all(&out).await?;
        loop {
            if let Some(frame) = proto::take_frame(&mut self.buf).map_err(io::Error::other)? {
                let (rid, status, body) = proto::parse_response(frame);
                if rid == id {
                    return Ok((status, body));
                }
                continue;
            }
            make_room(&mut self.buf)?;
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub async fn status(&mut self) -> io::Result<ReplicaStatus> {
        let (_, mut b) = self.call(proto::status_request).await?;
        if b.len() < 49 {
            return Err(io::Error::other("short status"));
        }
        let (seq, keys, digest, duplicates, primary) = (b.get_u64_le(), b.get_u64_le(), b.get_u64_le(), b.get_u64_le(), b.get_u8() == 1);
        let (messages_rejected, tls_refused) = (b.get_u64_le(), b.get_u64_le());
        let primary_id = String::from_utf8_lossy(&b).into_owned();
        Ok(ReplicaStatus { seq, keys, digest, duplicates, primary, messages_rejected, tls_refused, primary_id })
    }

    /// A put; on success, the sequence number it executed at.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<(Status, u64)> {
        let (status, mut body) = self.call(|out, id| proto::put_request(out, id, key, value)).await?;
        Ok((status, if body.len() >= 8 { body.get_u64_le() } else { 0 }))
    }

    pub async fn get(&mut self, max_seen: u64, key: &[u8]) -> io::Result<(Status, Bytes)> {
        self.call(|out, id| proto::get_request(out, id, max_seen, key)).await
    }

    /// Asks the primary to change the configuration to `members` (`id=port,...`).
    pub async fn change_configuration(&mut self, members: &str) -> io::Result<Status> {
        let body = members.as_bytes();
        let (status, _) = self
            .call(|out, id| {
                out.put_u32_le((9 + body.len()) as u32);
                out.put_u8(proto::OP_CHANGE);
                out.put_u64_le(id);
                out.put_slice(body);
            })
            .await?;
        Ok(status)
    }
}

/// Room in `buf` for the rest of the frame at its front (a client believes its server's
/// lengths) and for a good read besides.
fn make_room(buf: &mut BytesMut) -> io::Result<()> {
    let need = proto::frame_need(buf).map_err(io::Error::other)?;
    let want = need.saturating_sub(buf.len()).max(4096);
    if buf.capacity() - buf.len() < want {
        buf.reserve(want.max(64 << 10));
    }
    Ok(())
}

/// The replica that says it is primary, if any answers so.
pub async fn find_primary(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    for addr in addrs {
        // A stopped (SIGSTOP) replica accepts connections but never answers: ask the next.
        if let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(1), Conn::connect(*addr)).await {
            if tokio::time::timeout(Duration::from_secs(1), c.status()).await.is_ok_and(|s| s.is_ok_and(|s| s.primary)) {
                return Some(*addr);
            }
        }
    }
    None
}

/// Waits until some replica is primary.
pub async fn wait_for_primary(addrs: &[SocketAddr], within: Duration) -> Option<SocketAddr> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Some(p) = find_primary(addrs).await {
            return Some(p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The shape of a load run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub outstanding: usize,
    pub connections: usize,
    pub size: usize,
    pub keys: u64,
    /// The number of the first request (request n writes key n modulo `keys`).
    pub start: u64,
    /// Stop after this many acknowledged requests (or when `stop` is set).
    pub requests: Option<u64>,
    /// Keep the ids of acknowledged requests (for verification).
    pub record_acked: bool,
}

/// Shared progress of a load run.
pub struct Progress {
    pub done: AtomicU64,
    pub stop: AtomicBool,
    pub window: Mutex<Histogram<u64>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { done: AtomicU64::new(0), stop: AtomicBool::new(false), window: Mutex::new(histogram()) }
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// What a load run measured.
pub struct LoadResult {
    pub latency_us: Histogram<u64>,
    pub acked: Vec<u64>,
    pub elapsed: Duration,
    pub retries: u64,
}

/// The key and value of request `n`: keys cycle through `keys`; the request is `size` bytes.
pub fn request_kv(n: u64, spec: &LoadSpec) -> (Vec<u8>, Vec<u8>) {
    let key = format!("k{:015}", n % spec.keys).into_bytes();
    let value_len = spec.size.saturating_sub(2 + key.len()).max(1);
    let mut value = n.to_le_bytes().repeat(value_len / 8 + 1);
    value.truncate(value_len);
    (key, value)
}

/// Runs load until `spec.requests` are acknowledged or `progress.stop` is set.
pub async fn load(addrs: Vec<SocketAddr>, spec: LoadSpec, progress: Arc<Progress>) -> LoadResult {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(spec.start));
    let per_conn = spec.outstanding.div_ceil(spec.connections.max(1)).max(1);
    let workers: Vec<_> = (0..spec.connections.max(1))
        .map(|_| tokio::spawn(worker(addrs.clone(), spec.clone(), per_conn, next.clone(), progress.clone())))
        .collect();
    let mut result = LoadResult { latency_us: histogram(), acked: Vec::new(), elapsed: Duration::ZERO, retries: 0 };
    for w in workers {
        if let Ok((hist, acked, retries)) = w.await {
            result.latency_us.add(&hist).expect("same bounds");
            result.acked.extend(acked);
            result.retries += retries;
        }
    }
    result.elapsed = started.elapsed();
    result
}

/// One connection's share of the load: keeps `depth` requests in flight, resubmitting any
/// that come back unexecuted (puts are idempotent) to the new primary.
async fn worker(
    addrs: Vec<SocketAddr>,
    spec: LoadSpec,
    depth: usize,
    next: Arc<AtomicU64>,
    progress: Arc<Progress>,
) -> (Histogram<u64>, Vec<u64>, u64) {
    let (mut hist, mut acked, mut retries) = (histogram(), Vec::new(), 0u64);
    let mut in_flight: HashMap<u64, (u64, Instant)> = HashMap::new();
    let mut redo: Vec<u64> = Vec::new();
    let budget = spec.requests.map_or(u64::MAX, |r| spec.start + r);
    'reconnect: while !progress.stop.load(Relaxed) {
        let Some(primary) = find_primary(&addrs).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(stream) = TcpStream::connect(primary).await else { continue };
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        redo.extend(in_flight.drain().map(|(_, (n, _))| n));
        let (mut buf, mut out) = (BytesMut::with_capacity(64 << 10), BytesMut::with_capacity(64 << 10));
        let mut id = 0u64;
        loop {
            while in_flight.len() < depth && !progress.stop.load(Relaxed) {
                let n = match redo.pop() {
                    Some(n) => n,
                    None => match next.fetch_add(1, Relaxed) {
                        n if n < budget => n,
                        _ => break,
                    },
                };
                let (key, value) = request_kv(n, &spec);
                id += 1;
                proto::put_request(&mut out, id, &key, &value);
                in_flight.insert(id, (n, Instant::now()));
            }
            if in_flight.is_empty() {
                break 'reconnect;
            }
            if !out.is_empty() && wr.write_all(&out).await.is_err() {
                continue 'reconnect;
            }
            out.clear();
            if make_room(&mut buf).is_err() {
                continue 'reconnect;
            }
            match tokio::time::timeout(Duration::from_secs(5), rd.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    retries += 1;
                    continue 'reconnect;
                }
            }
            let mut window = Vec::new();
            while let Ok(Some(frame)) = proto::take_frame(&mut buf) {
                let (rid, status, _) = proto::parse_response(frame);
                let Some((n, sent)) = in_flight.remove(&rid) else { continue };
                if status == Status::Ok {
                    let us = sent.elapsed().as_micros() as u64;
                    hist.saturating_record(us.max(1));
                    window.push(us.max(1));
                    if spec.record_acked {
                        acked.push(n);
                    }
                } else {
                    retries += 1;
                    redo.push(n);
                }
            }
            progress.done.fetch_add(window.len() as u64, Relaxed);
            if let Ok(mut w) = progress.window.lock() {
                window.iter().for_each(|us| w.saturating_record(*us));
            }
            if !redo.is_empty() && in_flight.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue 'reconnect;
            }
        }
    }
    (hist, acked, retries)
}

/// `1.23 ms`-style rendering of microseconds.
pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}
