//! The process-wide list of live rings and their statistics and health as Prometheus text.
//!
//! Each replica registers a `Probe` (a weak reference: a dropped replica leaves the list at
//! the next scrape). A scrape reads the counters the threads already keep (atomics, totals
//! since the start: a statistics snapshot does not reset them) and the published health; the
//! threads themselves take no lock and allocate nothing for it. The metric names are listed in
//! docs/operations.md.

use super::health::{Timed, Timing};
use super::queue::Depth;
use super::tls::Tls;
use super::transport::Transport;
use super::Shared;
use crate::format::Node;
use crate::paxos::Role;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The `Content-Type` of [`render`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The longest ring name a label carries.
const MAX_RING_NAME: usize = 64;

/// Every live ring's probe. Locked only to register a ring and to scrape.
static RINGS: Mutex<Vec<Weak<Probe>>> = Mutex::new(Vec::new());

/// One page is rendered at a time: a scrape that times out leaves at most this one blocking
/// render behind, however many connections give up.
static RENDERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// What a scrape reads of one replica; the replica holds it, the list a weak reference.
pub(crate) struct Probe {
    pub ring: String,
    pub member: String,
    pub shared: Arc<Shared>,
    pub events: Arc<Depth>,
    pub work: Arc<Depth>,
    pub transport: Arc<Transport>,
    pub tls: Option<Arc<Tls>>,
}

/// The `ring` label and span field: the configured name, else the Paxos port.
pub(crate) fn ring_label(name: &str, me: &Node) -> String {
    if name.is_empty() {
        return me.rsl_port.to_string();
    }
    name.chars().take(MAX_RING_NAME).collect()
}

impl Probe {
    /// Adds the probe to the process's list (and drops the entries of replicas gone).
    pub fn register(self: &Arc<Self>) {
        let mut rings = RINGS.lock().unwrap_or_else(|e| e.into_inner());
        rings.retain(|r| r.strong_count() > 0);
        rings.push(Arc::downgrade(self));
    }

    fn sample(&self) -> Sample {
        let s = &self.shared;
        let (primary, role, config, ballot) = {
            let view = s.view();
            (view.primary, view.role, (view.config.number, view.config.members.nodes.len()), view.promise.id)
        };
        let is_primary = s.is_primary.load(Relaxed);
        let own = s.votes_seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let peers = self.transport.peer_stats().into_iter().map(|p| {
            let voted = own.members.iter().find(|(id, _)| *id == p.member).map(|(_, seen)| seen.decree);
            PeerSample {
                peer: p.member.to_string(),
                connected: p.connected,
                sent_packets: p.sent_packets,
                sent_bytes: p.sent_bytes,
                dropped_packets: p.dropped_packets,
                outstanding: p.outstanding,
                consecutive_failures: p.consecutive_failures.into(),
                lag: voted.filter(|_| is_primary).map(|d| own.own.decree.saturating_sub(d)),
            }
        });
        let c = &s.stats;
        Sample {
            ring: self.ring.clone(),
            member: self.member.clone(),
            primary: is_primary,
            primary_id: primary.map(|p| p.to_string()).unwrap_or_default(),
            secondary: role == Some(Role::Secondary),
            failed: s.failure.get().is_some(),
            stopped: s.shutting_down.load(Relaxed),
            executed: s.current_seq.load(Relaxed),
            passed: s.passed_seq.load(Relaxed),
            ballot: ballot.into(),
            config_number: config.0.into(),
            members: config.1 as u64,
            counters: [
                c.decrees_executed.load(Relaxed),
                c.requests_executed.load(Relaxed),
                c.votes_logged.load(Relaxed),
                c.log_syncs.load(Relaxed),
                c.fast_reads.load(Relaxed),
                c.checkpoints_saved.load(Relaxed),
                c.messages_rejected.load(Relaxed),
                c.messages_dropped.load(Relaxed),
                c.requests_refused.load(Relaxed),
                self.tls.as_ref().map_or(0, |t| t.refused()),
            ],
            timed: [&s.log_reads, &*s.log_writes, &s.voting].map(Timing::totals),
            queues: [self.events.now(), self.work.now(), s.queued_bytes.load(Relaxed), s.exec_queue.in_memory(), s.exec_queue.spilled()],
            peers: peers.collect(),
        }
    }
}

/// One ring as a scrape found it.
#[derive(Debug)]
struct Sample {
    ring: String,
    member: String,
    primary: bool,
    primary_id: String,
    secondary: bool,
    failed: bool,
    stopped: bool,
    executed: u64,
    passed: u64,
    ballot: u64,
    config_number: u64,
    members: u64,
    /// In the order of [`COUNTERS`].
    counters: [u64; 10],
    /// Log reads, log writes, voting.
    timed: [Timed; 3],
    /// In the order of [`QUEUES`].
    queues: [u64; 5],
    peers: Vec<PeerSample>,
}

#[derive(Debug)]
struct PeerSample {
    peer: String,
    connected: bool,
    sent_packets: u64,
    sent_bytes: u64,
    dropped_packets: u64,
    outstanding: u64,
    consecutive_failures: u64,
    /// On the primary: decrees between its own highest accepted vote and the peer's.
    lag: Option<u64>,
}

/// The counters of `Stats`, as totals (the text adds `_total`).
pub(crate) const COUNTERS: [(&str, &str); 10] = [
    ("rsl_decrees_executed", "Decrees executed."),
    ("rsl_requests_executed", "Replicated requests executed."),
    ("rsl_votes_logged", "Votes written to the log."),
    ("rsl_log_syncs", "fdatasync calls of the journal."),
    ("rsl_fast_reads", "Fast reads executed."),
    ("rsl_checkpoints_saved", "Checkpoints saved."),
    ("rsl_messages_rejected", "Peer messages dropped before the protocol (malformed, from a non-member, ...)."),
    ("rsl_messages_dropped", "Peer messages dropped because the protocol thread's queue was full."),
    ("rsl_requests_refused", "Requests and fast reads refused because their queue was full."),
    ("rsl_tls_refused", "TLS handshakes refused on the Paxos and learn ports."),
];

/// Log reads, log writes, voting: (operations, bytes, seconds) names and help.
const TIMED: [[(&str, &str); 3]; 3] = [
    [
        ("rsl_log_reads", "Decrees read back from the log, and files served to learners."),
        ("rsl_log_read_bytes", "Bytes read from the log."),
        ("rsl_log_read_seconds", "Time spent reading the log."),
    ],
    [
        ("rsl_log_writes", "Batches written and synced by the journal."),
        ("rsl_log_write_bytes", "Bytes written to the log."),
        ("rsl_log_write_seconds", "Time spent writing and syncing the log."),
    ],
    [
        ("rsl_votes_chosen", "Votes this replica proposed as primary and saw chosen."),
        ("", ""),
        ("rsl_voting_seconds", "Time from proposing each vote until a quorum accepted it."),
    ],
];

const QUEUES: [(&str, &str); 5] = [
    ("rsl_event_queue_depth", "Events queued for the protocol thread."),
    ("rsl_work_queue_depth", "Work queued for the execute thread."),
    ("rsl_queued_request_bytes", "Bytes of requests the primary queues behind its votes in flight."),
    ("rsl_execution_queue_bytes", "Bytes of chosen decrees in memory waiting to execute."),
    ("rsl_execution_queue_spilled", "Chosen decrees waiting to execute that are only in the log."),
];

/// The Prometheus text (format 0.0.4) of every live ring in the process: empty without one.
pub fn render() -> String {
    let samples: Vec<Sample> = {
        let mut rings = RINGS.lock().unwrap_or_else(|e| e.into_inner());
        rings.retain(|r| r.strong_count() > 0);
        rings.iter().filter_map(Weak::upgrade).collect::<Vec<_>>()
    }
    .iter()
    .map(|probe| probe.sample())
    .collect();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Rings(samples)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[derive(Debug)]
struct Rings(Vec<Sample>);

impl Collector for Rings {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        self.health(&mut enc)?;
        for (i, (name, help)) in COUNTERS.iter().enumerate() {
            self.counter(&mut enc, name, help, |s| s.counters[i])?;
        }
        for (i, family) in TIMED.iter().enumerate() {
            self.counter(&mut enc, family[0].0, family[0].1, |s| s.timed[i].count)?;
            if !family[1].0.is_empty() {
                self.counter(&mut enc, family[1].0, family[1].1, |s| s.timed[i].bytes)?;
            }
            self.counter(&mut enc, family[2].0, family[2].1, |s| s.timed[i].micros as f64 / 1e6)?;
        }
        for (i, (name, help)) in QUEUES.iter().enumerate() {
            self.gauge(&mut enc, name, help, |s| s.queues[i] as i64)?;
        }
        self.peers(&mut enc)
    }
}

impl Rings {
    fn health(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        self.gauge(enc, "rsl_primary", "1 on the primary, else 0.", |s| s.primary.into())?;
        self.gauge(enc, "rsl_secondary", "1 on a secondary that follows a primary, else 0.", |s| s.secondary.into())?;
        self.gauge(enc, "rsl_failed", "1 once the replica failed (it stops), else 0.", |s| s.failed.into())?;
        self.gauge(enc, "rsl_stopped", "1 once the replica stops (unloaded, or failed), else 0.", |s| s.stopped.into())?;
        self.gauge(enc, "rsl_decree_executed", "The last decree executed.", |s| s.executed as i64)?;
        self.gauge(enc, "rsl_decree_passed", "The highest decree known chosen.", |s| s.passed as i64)?;
        self.gauge(enc, "rsl_ballot", "The highest ballot number promised.", |s| s.ballot as i64)?;
        self.gauge(enc, "rsl_configuration_number", "The configuration in force.", |s| s.config_number as i64)?;
        self.gauge(enc, "rsl_members", "Members of the configuration in force.", |s| s.members as i64)?;
        self.gauge(enc, "rsl_peers_connected", "Peers whose outbound connection is up.", |s| {
            s.peers.iter().filter(|p| p.connected).count() as i64
        })?;
        let mut family =
            enc.encode_descriptor("rsl_primary_member", "The member this replica takes for primary (1).", None, MetricType::Gauge)?;
        for s in &self.0 {
            let labels = [("ring", s.ring.as_str()), ("member", s.member.as_str()), ("primary", s.primary_id.as_str())];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn peers(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        type PeerValue = fn(&PeerSample) -> Option<i64>;
        let gauges: [(&str, &str, PeerValue); 4] = [
            ("rsl_peer_connected", "1 while the outbound connection to the peer is up.", |p| Some(p.connected.into())),
            ("rsl_peer_outstanding", "Packets to the peer queued or being written.", |p| Some(p.outstanding as i64)),
            ("rsl_peer_consecutive_failures", "Failed connections to the peer since a packet last went out.", |p| {
                Some(p.consecutive_failures as i64)
            }),
            ("rsl_peer_lag_decrees", "On the primary: decrees the peer's last accepted vote is behind its own.", |p| {
                p.lag.map(|l| l as i64)
            }),
        ];
        for (name, help, value) in gauges {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (s, p) in self.0.iter().flat_map(|s| s.peers.iter().map(move |p| (s, p))) {
                if let Some(v) = value(p) {
                    ConstGauge::new(v).encode(family.encode_family(&peer_labels(s, p))?)?;
                }
            }
        }
        type PeerCount = fn(&PeerSample) -> u64;
        let counters: [(&str, &str, PeerCount); 3] = [
            ("rsl_peer_sent_packets", "Packets written to the peer.", |p| p.sent_packets),
            ("rsl_peer_sent_bytes", "Bytes written to the peer.", |p| p.sent_bytes),
            ("rsl_peer_dropped_packets", "Packets to the peer dropped unsent.", |p| p.dropped_packets),
        ];
        for (name, help, value) in counters {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (s, p) in self.0.iter().flat_map(|s| s.peers.iter().map(move |p| (s, p))) {
                ConstCounter::new(value(p)).encode(family.encode_family(&peer_labels(s, p))?)?;
            }
        }
        Ok(())
    }

    fn gauge(&self, enc: &mut DescriptorEncoder, name: &str, help: &str, value: impl Fn(&Sample) -> i64) -> fmt::Result {
        let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for s in &self.0 {
            ConstGauge::new(value(s)).encode(family.encode_family(&labels(s))?)?;
        }
        Ok(())
    }

    fn counter<V>(&self, enc: &mut DescriptorEncoder, name: &str, help: &str, value: impl Fn(&Sample) -> V) -> fmt::Result
    where
        ConstCounter<V>: EncodeMetric,
    {
        let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for s in &self.0 {
            ConstCounter::new(value(s)).encode(family.encode_family(&labels(s))?)?;
        }
        Ok(())
    }
}

fn labels(s: &Sample) -> [(&'static str, &str); 2] {
    [("ring", s.ring.as_str()), ("member", s.member.as_str())]
}

fn peer_labels<'a>(s: &'a Sample, p: &'a PeerSample) -> [(&'static str, &'a str); 3] {
    [("ring", s.ring.as_str()), ("member", s.member.as_str()), ("peer", p.peer.as_str())]
}

/// Connections the metrics endpoint serves at once.
pub const MAX_SCRAPERS: usize = 16;
/// The longest request head the endpoint reads.
const MAX_REQUEST: usize = 8 << 10;
/// A request must arrive whole, and its answer be written, within this long.
const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves [`render`] as `GET /metrics` over HTTP/1.1 on `listener` until the task is dropped:
/// one request per connection, at most [`MAX_SCRAPERS`] connections, request heads of at most
/// 8 KiB that must arrive (and be answered) within 5 s. Anything else is answered 404, 405,
/// 400 or 431.
pub async fn serve(listener: tokio::net::TcpListener) {
    super::transport::accept_each(listener, "metrics", MAX_SCRAPERS, |conn, _from| scrape(conn)).await
}

/// One connection: its request answered, or closed at [`SCRAPE_TIMEOUT`].
async fn scrape<C: AsyncRead + AsyncWrite + Unpin>(conn: C) {
    let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(conn)).await;
}

async fn answer<C: AsyncRead + AsyncWrite + Unpin>(mut conn: C) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        if head.len() + n > MAX_REQUEST {
            return respond(&mut conn, "431 Request Header Fields Too Large", "request too large\n").await;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path, version) = (parts.next(), parts.next().map(|p| p.split(|&b| b == b'?').next().unwrap_or_default()), parts.next());
    let http1 = version.is_some_and(|v| v.starts_with(b"HTTP/1."));
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) if http1 => {
            // Read on a blocking thread: a scrape takes short locks the replicas share. The
            // permit goes with the render, so a timed-out scrape's render still counts.
            let permit = RENDERING.acquire().await.map_err(std::io::Error::other)?;
            let render = move || {
                let _permit = permit;
                render()
            };
            let text = tokio::task::spawn_blocking(render).await.map_err(std::io::Error::other)?;
            return respond_with(&mut conn, "200 OK", CONTENT_TYPE, &text).await;
        }
        (Some(b"GET"), Some(_)) if http1 => ("404 Not Found", "not found: try /metrics\n"),
        (Some(_), Some(_)) if http1 => ("405 Method Not Allowed", "only GET\n"),
        _ => ("400 Bad Request", "bad request\n"),
    };
    respond(&mut conn, status, body).await
}

async fn respond<C: AsyncWrite + Unpin>(conn: &mut C, status: &str, body: &str) -> std::io::Result<()> {
    respond_with(conn, status, "text/plain; charset=utf-8", body).await
}

async fn respond_with<C: AsyncWrite + Unpin>(conn: &mut C, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// Sends `request` to a connection served by `scrape` and returns all it answers.
    async fn ask(request: &[u8]) -> String {
        let (mut client, server) = duplex(64 << 10);
        let served = tokio::spawn(scrape(server));
        client.write_all(request).await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        served.await.unwrap();
        answer
    }

    #[tokio::test]
    async fn the_endpoint_answers_get_metrics_and_refuses_the_rest() {
        let page = ask(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n") && page.contains(CONTENT_TYPE), "{page}");
        let status = |answer: String| answer.lines().next().unwrap_or_default().to_string();
        assert_eq!(status(ask(b"GET / HTTP/1.1\r\n\r\n").await), "HTTP/1.1 404 Not Found");
        assert_eq!(status(ask(b"PUT /metrics HTTP/1.0\r\n\r\n").await), "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(status(ask(b"hello\r\n\r\n").await), "HTTP/1.1 400 Bad Request");
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST + 10, b'a');
        assert_eq!(status(ask(&huge).await), "HTTP/1.1 431 Request Header Fields Too Large");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_ends_is_closed() {
        let (mut client, server) = duplex(1024);
        let served = tokio::spawn(scrape(server));
        let began = tokio::time::Instant::now();
        client.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let mut answer = Vec::new();
        // The paused clock jumps to the timeout once all is idle: closed, unanswered.
        client.read_to_end(&mut answer).await.unwrap();
        served.await.unwrap();
        assert!(answer.is_empty());
        assert!(began.elapsed() >= SCRAPE_TIMEOUT, "closed at the timeout, not before");
    }
}
