//! One replica process: the RSL replica with the key-value machine, and the client port.

use crate::machine::{Clients, Kv, Summary};
use crate::proto::{self, Request, Status};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use rsl_engine::format::{MemberId, MemberSet, Node, Version};
use rsl_engine::runtime::transport::{accept_each, grow_within, Budget, RateLimited};
use rsl_engine::runtime::{
    AdmitAll, JournalGroup, NetworkGroup, NvmJournal, PaxosTransport, Persistence, ResponseCode, RslConfig, RslReplica,
};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{debug, warn, Instrument};

/// Client connections served at once; more are closed as they arrive.
const MAX_CLIENTS: usize = 1024;
/// Requests of one connection taken and not yet answered: its reader stops there. Far above
/// what a client that reads its answers has in flight (`rsl-kv cluster`: 64 a connection).
const MAX_UNANSWERED: usize = 1024;
/// Response bytes of one connection waiting to be written: its reader stops there too.
const MAX_QUEUED_BYTES: usize = 4 << 20;
/// Bytes of partly received requests all connections hold together beyond their first
/// `READ_CHUNK`; a connection whose request would need more is closed.
const MAX_PARTIAL_BYTES: usize = 256 << 20;
/// A request begun must arrive whole within this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const READ_CHUNK: usize = 64 << 10;

#[derive(Args, Clone, Debug)]
pub struct ReplicaArgs {
    /// This replica's member id.
    #[arg(long)]
    pub id: String,
    /// Paxos port (the learn port is the next one).
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub client_port: u16,
    /// The address this replica listens on and is known by (the fault tests give each replica
    /// its own, in its own network namespace).
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    pub host: Ipv4Addr,
    /// The initial members as `id=port,...` on 127.0.0.1 (or `id=ip:port,...`); without it the
    /// replica waits to be added by a configuration change.
    #[arg(long)]
    pub members: Option<String>,
    /// Working directory; the replica's data goes in `<dir>/<id>`.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 6)]
    pub version: u16,
    #[arg(long, default_value_t = 1)]
    pub window: u32,
    /// Turn fdatasync off (benchmarks only: acknowledged writes can be lost). Not with `--nvm`,
    /// whose persistent log releases records only once the log files are synced.
    #[arg(long, conflicts_with = "nvm")]
    pub no_sync: bool,
    /// Benchmarks only, never in production: hold each Paxos packet this many microseconds
    /// before it is written (a one-way delay between the replicas).
    #[arg(long, default_value_t = 0)]
    pub net_delay_us: u32,
    /// What carries Paxos packets to the other replicas: tcp, shm (a shared-memory ring to each
    /// replica on this host that accepts one, TCP to the others) or rdma (verbs, with the `rdma`
    /// feature: RDMA rings to peers that accept them, TCP without a device; never run on hardware).
    #[arg(long, value_enum, default_value_t = TransportArg::Tcp)]
    pub transport: TransportArg,
    #[arg(long, default_value_t = 2)]
    pub election_delay: u32,
    #[arg(long, default_value_t = 1)]
    pub heartbeat: u32,
    #[arg(long, default_value_t = 100)]
    pub max_log_mb: u32,
    /// Independent rings in this process: ring k shifts every port by 10k and keeps its data
    /// in `<dir>/ring<k>`.
    #[arg(long, default_value_t = 1)]
    pub rings: u16,
    /// Who writes the rings' journals: writer threads the rings share (`shared`: at most 8
    /// for any number of rings, each ring's records in its own files) or a thread per ring
    /// (`per-ring`).
    #[arg(long, value_enum, default_value_t = Sharing::Shared)]
    pub journal_writer: Sharing,
    /// Who runs the rings' Paxos ports, learn ports and peer connections: network threads the
    /// rings share (`shared`: one per core) or a thread per ring (`per-ring`).
    #[arg(long, value_enum, default_value_t = Sharing::Shared)]
    pub network: Sharing,
    /// With shared network threads: one connection per peer process that all the rings share
    /// (`shared`, if the peer's rings share theirs too) or a connection per ring (`per-ring`).
    #[arg(long, value_enum, default_value_t = Sharing::Shared)]
    pub peer_connections: Sharing,
    /// Stop on SIGTERM only: `rsl-kv cluster` stops its replicas itself after Ctrl-C, once it
    /// has checked that they agree.
    #[arg(long, hide = true)]
    pub ignore_sigint: bool,
    /// Accept administrative requests (ChangeConfiguration) on the client port; without it they
    /// are answered `Refused`, for any client could otherwise remove every member.
    #[arg(long)]
    pub allow_admin: bool,
    /// Every put as `replicate_request_exclusive_vote`: a decree of its own, never batched
    /// (benchmarks of pipelining: what a service whose requests each need their own decree sees).
    #[arg(long)]
    pub exclusive_votes: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Serve the Prometheus text of every ring of this process at `http://ADDR/metrics`
    /// (port 0: one from the OS; the address is printed as `metrics on ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub nvm: NvmArgs,
}

/// `--journal-writer`, `--network`: with several rings, threads they share or a thread each.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    Shared,
    PerRing,
}

impl std::fmt::Display for Sharing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sharing::Shared => "shared",
            Sharing::PerRing => "per-ring",
        })
    }
}

/// The NVM journal's flags.
#[derive(Args, Clone, Debug)]
pub struct NvmArgs {
    /// The NVM journal (docs/nvm.md): a write is acknowledged once its record is in this
    /// persistent log, a memory-mapped file (on /dev/shm; on a DAX mount with
    /// `--nvm-persistence cache-flush`); the log files are written from it behind. A relative
    /// path is inside the replica's data directory; with several rings, ring N's is PATH.ringN.
    #[arg(long, value_name = "PATH")]
    pub nvm: Option<PathBuf>,
    /// The persistent log's size: what may be acknowledged before it is in the log files.
    #[arg(long, value_name = "MB", default_value_t = 64)]
    pub nvm_size: u32,
    /// What makes the persistent log durable.
    #[arg(long, value_enum, default_value_t = NvmPersistence::ProcessCrash)]
    pub nvm_persistence: NvmPersistence,
}

/// `Persistence` on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvmPersistence {
    /// The page cache holds it: survives kill -9, not a crash of the machine.
    ProcessCrash,
    /// msync at each commit: survives power loss.
    Msync,
    /// Cache-line flushes to persistent memory on a DAX file system: survives power loss.
    CacheFlush,
}

impl NvmArgs {
    fn journal(&self) -> Option<NvmJournal> {
        let persistence = match self.nvm_persistence {
            NvmPersistence::ProcessCrash => Persistence::ProcessCrash,
            NvmPersistence::Msync => Persistence::Msync,
            NvmPersistence::CacheFlush => Persistence::CacheFlush,
        };
        self.nvm.as_ref().map(|path| NvmJournal { path: path.clone(), size_mb: self.nvm_size, persistence })
    }
}

/// Shifts every port of a member list by `by`.
fn shift_members(spec: &str, by: u16) -> String {
    spec.split(',')
        .map(|m| match m.split_once('=') {
            Some((id, at)) => {
                let (ip, port) = at.rsplit_once(':').map_or(("", at), |(ip, port)| (ip, port));
                let port = port.parse::<u16>().map_or(0, |p| p + by);
                if ip.is_empty() {
                    format!("{id}={port}")
                } else {
                    format!("{id}={ip}:{port}")
                }
            }
            None => m.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `id=port,...` on 127.0.0.1, or `id=ip:port,...`.
pub fn parse_members(spec: &str) -> Result<MemberSet, String> {
    let nodes = spec
        .split(',')
        .map(|m| {
            let (id, at) = m.split_once('=').ok_or(format!("bad member {m:?}: want id=port"))?;
            let (ip, port) = match at.rsplit_once(':') {
                Some((ip, port)) => (ip.parse().map_err(|_| format!("bad address in {m:?}"))?, port),
                None => (Ipv4Addr::LOCALHOST, at),
            };
            let port: u16 = port.parse().map_err(|_| format!("bad port in {m:?}"))?;
            rsl_engine::runtime::api::node(id, ip, port).ok_or(format!("bad member id {id:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MemberSet { nodes, cookie: Bytes::new() })
}

/// Exit code of a process whose replica failed (or was failing when a signal came).
pub const EXIT_FAILED: u8 = 3;
/// Exit code of a process that had to be ended because unloading did not finish in time.
pub const EXIT_FORCED: u8 = 4;
/// How long unloading may take once the process is stopping. With the failure poll below, the
/// process ends within 5 s of a signal or a failure, whatever state it is in.
const UNLOAD_DEADLINE: Duration = Duration::from_millis(4500);
/// How often the replicas are checked for a failure.
const FAILURE_POLL: Duration = Duration::from_millis(100);

/// Runs the replicas until SIGTERM (or SIGINT) or until one of them fails; returns the exit
/// code: 0 after a clean stop, [`EXIT_FAILED`] if a replica failed. Should unloading hang, a
/// watchdog ends the process with [`EXIT_FAILED`] or [`EXIT_FORCED`].
pub fn run(args: ReplicaArgs) -> Result<u8, String> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| e.to_string())?;
    if let Some(at) = args.metrics {
        let listener = rt.block_on(TcpListener::bind(at)).map_err(|e| format!("cannot listen on {at} (metrics): {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        rt.spawn(rsl_engine::runtime::metrics::serve(listener));
        println!("metrics on {bound}");
    }
    let mut replicas = Vec::new();
    let group = (args.rings > 1 && args.journal_writer == Sharing::Shared).then(JournalGroup::new);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let network = (args.rings > 1 && args.network == Sharing::Shared)
        .then(|| NetworkGroup::new(cores))
        .transpose()
        .map_err(|e| e.to_string())?
        .map(|group| if args.peer_connections == Sharing::Shared { group.with_shared_connections() } else { group });
    for k in 0..args.rings {
        let mut ring = args.clone();
        if args.rings > 1 {
            ring.port += 10 * k;
            ring.client_port += 10 * k;
            ring.members = args.members.as_deref().map(|m| shift_members(m, 10 * k));
            ring.dir = args.dir.join(format!("ring{k}"));
            ring.nvm.nvm = args.nvm.nvm.as_ref().map(|p| PathBuf::from(format!("{}.ring{k}", p.display())));
        }
        // The client port first: a port that is taken fails before the replica starts.
        let listener = rt
            .block_on(TcpListener::bind((ring.host, ring.client_port)))
            .map_err(|e| format!("cannot listen on {}:{} (client port): {e}", ring.host, ring.client_port))?;
        // The same on every replica of the ring: logs and metrics group by it.
        let ring_name = format!("ring{k}");
        let (replica, server) = start(ring.clone(), &ring_name, group.clone(), network.clone())?;
        // The client port's lines name the ring and member, as the replica's own do.
        let span = tracing::error_span!("rsl", ring = %ring_name, member = %ring.id);
        rt.spawn(server.accept(listener).instrument(span));
        replicas.push(replica);
        println!("listening on {}:{} (Paxos), :{} (learn), :{} (clients)", ring.host, ring.port, ring.port + 1, ring.client_port);
    }
    let mut failure = rt.block_on(async {
        tokio::select! {
            () = wait_for_signal(args.ignore_sigint) => None,
            why = wait_for_failure(&replicas) => Some(why),
        }
    });
    if let Some(why) = &failure {
        eprintln!("rsl-kv: {why}");
    }
    watchdog(if failure.is_some() { EXIT_FAILED } else { EXIT_FORCED });
    for replica in &replicas {
        replica.unload();
    }
    if failure.is_none() {
        // A failure that raced with the signal still counts.
        failure = first_failure(&replicas);
        if let Some(why) = &failure {
            eprintln!("rsl-kv: {why}");
        }
    }
    Ok(if failure.is_some() { EXIT_FAILED } else { 0 })
}

fn first_failure(replicas: &[Arc<RslReplica>]) -> Option<String> {
    replicas.iter().find_map(|r| r.failure().map(|why| format!("replica {} failed: {why}", r.me().id)))
}

/// Resolves once any replica has failed, saying which and why.
async fn wait_for_failure(replicas: &[Arc<RslReplica>]) -> String {
    let mut poll = tokio::time::interval(FAILURE_POLL);
    loop {
        poll.tick().await;
        if let Some(why) = first_failure(replicas) {
            return why;
        }
    }
}

/// Ends the process with `code` unless it has exited by itself within [`UNLOAD_DEADLINE`].
fn watchdog(code: u8) {
    std::thread::spawn(move || {
        std::thread::sleep(UNLOAD_DEADLINE);
        eprintln!("rsl-kv: stopping took longer than {UNLOAD_DEADLINE:?}; exiting with code {code}");
        std::process::exit(code.into());
    });
}

/// The protocol flags shared by `rsl-kv replica` and `rsl-kv cluster`, checked by the rules
/// [`RslConfig::validate`] applies, plus one of ours: a window above 1 needs version 7, for
/// the original's versions run one decree at a time and would ignore it.
pub fn check_protocol(version: u16, window: u32, net_delay_us: u32) -> Result<Version, String> {
    let v = Version::new(version).ok_or(format!("--version {version}: supported versions are 1 to 7 (7 pipelines)"))?;
    let cfg = RslConfig { working_dir: ".".into(), pipeline_window: window, net_delay_us, ..RslConfig::default() };
    cfg.validate().map_err(|e| match e.field() {
        "pipeline_window" => format!("--window {window}: {e}"),
        "net_delay_us" => format!("--net-delay-us {net_delay_us}: {e}"),
        _ => e.to_string(),
    })?;
    if window > 1 && !v.is_pipelined() {
        return Err(format!("--window {window} needs --version 7: version {version} runs one decree at a time"));
    }
    Ok(v)
}

/// `--transport`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportArg {
    Tcp,
    Shm,
    Rdma,
}

impl std::fmt::Display for TransportArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportArg::Tcp => "tcp",
            TransportArg::Shm => "shm",
            TransportArg::Rdma => "rdma",
        })
    }
}

/// Checks `--transport` against the other flags: shared memory is neither with TLS (TLS means
/// every Paxos byte is encrypted and authenticated) nor with a net delay.
pub fn check_transport(transport: TransportArg, tls: bool, net_delay_us: u32) -> Result<PaxosTransport, String> {
    match transport {
        TransportArg::Tcp => Ok(PaxosTransport::Tcp),
        TransportArg::Shm if tls => Err("--transport shm: not with TLS (the ring is not encrypted; see docs/security.md)".into()),
        TransportArg::Shm if net_delay_us > 0 => Err("--transport shm: not with --net-delay-us".into()),
        TransportArg::Shm => Ok(PaxosTransport::Shm),
        TransportArg::Rdma if !cfg!(feature = "rdma") => Err("--transport rdma: this rsl-kv was built without the `rdma` feature".into()),
        TransportArg::Rdma if tls => Err("--transport rdma: not with TLS (the ring is not encrypted; see docs/security.md)".into()),
        TransportArg::Rdma if net_delay_us > 0 => Err("--transport rdma: not with --net-delay-us".into()),
        TransportArg::Rdma => Ok(PaxosTransport::Rdma),
    }
}

/// Starts one ring's replica and the server for its clients.
fn start(
    args: ReplicaArgs,
    ring_name: &str,
    journal_group: Option<JournalGroup>,
    network_group: Option<NetworkGroup>,
) -> Result<(Arc<RslReplica>, Server), String> {
    let version = check_protocol(args.version, args.window, args.net_delay_us)?;
    let tls = args.tls.settings()?;
    let paxos_transport = check_transport(args.transport, tls.is_some(), args.net_delay_us)?;
    let me: Node = rsl_engine::runtime::api::node(&args.id, args.host, args.port).ok_or("bad member id")?;
    let members = args.members.as_deref().map(parse_members).transpose()?;
    let cfg = RslConfig {
        working_dir: args.dir.clone(),
        election_delay_sec: args.election_delay,
        heart_beat_interval_sec: args.heartbeat,
        new_leader_grace_period_sec: args.election_delay,
        max_log_len_mb: args.max_log_mb,
        pipeline_window: args.window,
        sync_writes: !args.no_sync,
        net_delay_us: args.net_delay_us,
        fast_read_seq_threshold: 1_000_000,
        tls,
        ring_name: ring_name.to_string(),
        nvm_journal: args.nvm.journal(),
        paxos_transport,
        journal_group,
        network_group,
        ..RslConfig::default()
    };
    let (clients, summary) = (Arc::new(Clients::default()), Arc::new(Summary::default()));
    let handle: Arc<OnceLock<Weak<RslReplica>>> = Arc::default();
    let seq = {
        let handle = handle.clone();
        Arc::new(move || handle.get().and_then(Weak::upgrade).map_or(0, |r| r.current_sequence_number()))
    };
    let kv = Kv::new(clients.clone(), summary.clone(), seq);
    let replica = RslReplica::initialize(cfg, me, version, Box::new(kv), Arc::new(AdmitAll), members).map_err(|e| e.to_string())?;
    let replica = Arc::new(replica);
    let _ = handle.set(Arc::downgrade(&replica));
    let server = Server::new(replica.clone(), clients, summary, args.allow_admin, args.exclusive_votes);
    Ok((replica, server))
}

async fn wait_for_signal(ignore_sigint: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    loop {
        tokio::select! {
            _ = int.recv() => if !ignore_sigint { return },
            _ = term.recv() => return,
        }
    }
}

#[derive(Clone)]
struct Server {
    replica: Arc<RslReplica>,
    clients: Arc<Clients>,
    summary: Arc<Summary>,
    allow_admin: bool,
    exclusive_votes: bool,
    port: Arc<PortState>,
    /// Peer messages and TLS handshakes refused since start (each statistics snapshot
    /// takes the counts since the previous one).
    refused: Arc<Mutex<(u64, u64)>>,
}

/// What every connection of the client port shares.
struct PortState {
    /// Partly received requests.
    partial: Budget,
    warnings: RateLimited,
}

impl PortState {
    fn new() -> PortState {
        PortState { partial: Budget::new(MAX_PARTIAL_BYTES), warnings: RateLimited::new() }
    }

    /// A connection closed for breaking a bound; warned about, rate-limited.
    fn refuse(&self, from: SocketAddr, why: &str) {
        if let Some(held_back) = self.warnings.allow() {
            warn!(%from, held_back, "client connection closed: {why}");
        }
    }
}

impl Server {
    fn new(replica: Arc<RslReplica>, clients: Arc<Clients>, summary: Arc<Summary>, allow_admin: bool, exclusive_votes: bool) -> Server {
        Server { replica, clients, summary, allow_admin, exclusive_votes, port: Arc::new(PortState::new()), refused: Arc::default() }
    }

    /// Serves the client port: at most `MAX_CLIENTS` connections, accept errors (out of
    /// descriptors, say) logged and retried, never the end of the port.
    async fn accept(self, listener: TcpListener) {
        accept_each(listener, "client", MAX_CLIENTS, move |conn: TcpStream, from| {
            let _ = conn.set_nodelay(true);
            let server = self.clone();
            async move {
                let (rd, wr) = conn.into_split();
                if let Err(why) = serve_conn(rd, wr, &server.port.partial, |frame, outbox| server.handle(frame, outbox)).await {
                    server.port.refuse(from, why);
                }
            }
            .instrument(tracing::Span::current())
        })
        .await
    }

    /// Answers a request at once (an error, a status) or hands it to the replica with a
    /// cookie the state machine answers through.
    fn handle(&self, frame: Bytes, outbox: &Arc<Outbox>) {
        let (id, request) = match proto::parse_request(frame) {
            Ok(parsed) => parsed,
            Err(id) => return outbox.respond(id, Status::Invalid, &[]),
        };
        let code = match request {
            Request::Put { body } => {
                let cookie = self.clients.register(outbox, id);
                let code = if self.exclusive_votes {
                    self.replica.replicate_request_exclusive_vote(body, cookie, false)
                } else {
                    self.replica.replicate_request(body, cookie)
                };
                self.submitted(cookie, code)
            }
            Request::Get { max_seen, key } => {
                let cookie = self.clients.register(outbox, id);
                self.submitted(cookie, self.replica.fast_read_request(max_seen, key, cookie, Duration::from_secs(2)))
            }
            Request::Status => return outbox.respond(id, Status::Ok, &self.status()),
            Request::Change { .. } if !self.allow_admin => Status::Refused,
            Request::Change { members } => match parse_members(&String::from_utf8_lossy(&members)) {
                Ok(members) => {
                    let cookie = self.clients.register(outbox, id);
                    self.submitted(cookie, self.replica.change_configuration(members, cookie))
                }
                Err(_) => Status::Invalid,
            },
        };
        if code != Status::Ok {
            outbox.respond(id, code, &[]);
        }
    }

    /// On success the state machine answers through the cookie; otherwise the caller does.
    fn submitted(&self, cookie: u64, code: ResponseCode) -> Status {
        if code == ResponseCode::Success {
            return Status::Ok;
        }
        self.clients.forget(cookie);
        match code {
            ResponseCode::NotPrimary => Status::NotPrimary,
            ResponseCode::FastReadStale => Status::Stale,
            ResponseCode::ShuttingDown => Status::ShuttingDown,
            _ => Status::Invalid,
        }
    }

    fn status(&self) -> Vec<u8> {
        let s = &self.summary;
        let mut out = Vec::with_capacity(49 + 64);
        out.put_u64_le(self.replica.current_sequence_number());
        out.put_u64_le(s.keys.load(Relaxed));
        out.put_u64_le(s.digest.load(Relaxed));
        out.put_u64_le(s.duplicates.load(Relaxed));
        out.put_u8(self.replica.is_primary() as u8);
        let (rejected, tls_refused) = self.refused_totals();
        out.put_u64_le(rejected);
        out.put_u64_le(tls_refused);
        let primary = self.replica.current_primary().unwrap_or(MemberId::EMPTY);
        out.put_slice(primary.as_bytes());
        out
    }

    /// Peer messages dropped before the protocol, and TLS handshakes refused, since start.
    fn refused_totals(&self) -> (u64, u64) {
        let stats = self.replica.statistics_snapshot();
        let mut totals = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        totals.0 += stats.messages_rejected;
        totals.1 += stats.tls_refused;
        *totals
    }
}

/// One client connection's responses on their way out. Anyone answers through it without
/// waiting (the execute thread does, through [`Clients`]): the response is encoded straight
/// into the connection's pending bytes, and the writer is woken only when they were empty, so
/// a burst of answers is one wake-up and one write, with no allocation per answer. The
/// connection's reader takes no more requests while `MAX_UNANSWERED` are unanswered or
/// `MAX_QUEUED_BYTES` of responses wait, so a client that pipelines requests and never reads
/// the answers costs a bounded amount: at most `MAX_UNANSWERED` responses past the byte
/// budget, whose long bodies (values) are shared with the store, not copied. The writer ends
/// once every `Outbox` is gone and what they answered is written.
pub struct Outbox {
    pipe: Arc<Pipe>,
}

/// What an outbox shares with its connection's writer.
#[derive(Default)]
struct Pipe {
    pending: Mutex<Pending>,
    /// Signalled when the pending bytes stop being empty, and when the outbox is dropped.
    ready: Notify,
    flow: Flow,
}

/// Answers not yet written: `shared` (if any) first, then `bytes`.
#[derive(Default)]
struct Pending {
    /// Earlier bytes, and long values shared with the store rather than copied, in order.
    shared: Vec<Bytes>,
    bytes: BytesMut,
    responses: usize,
    /// The outbox is gone: nothing more will be answered.
    dropped: bool,
}

/// A body longer than this is queued as the store's own `Bytes`, not copied: a client that
/// pipelines reads of a large value and never reads the answers then holds references, not
/// copies.
const COPIED_BODY_MAX: usize = 1024;
/// A writer's buffer grown past this (a burst of answers) is not kept for the next.
const KEPT_BATCH_BYTES: usize = 1 << 20;

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Swaps the pending bytes into `batch` (empty), so that the buffers are not allocated
    /// again once grown; returns the shared parts to write before them, how many responses
    /// all that holds, and whether the outbox is gone.
    fn take(&self, batch: &mut BytesMut) -> (Vec<Bytes>, usize, bool) {
        debug_assert!(batch.is_empty(), "the last batch was written");
        let mut pending = self.lock();
        std::mem::swap(&mut pending.bytes, batch);
        (std::mem::take(&mut pending.shared), std::mem::take(&mut pending.responses), pending.dropped)
    }
}

impl Outbox {
    pub fn respond(&self, id: u64, status: Status, body: &[u8]) {
        self.push(body.len(), |pending| proto::put_response(&mut pending.bytes, id, status, body));
    }

    /// The same with a body that may be long and is shared rather than copied.
    pub fn respond_shared(&self, id: u64, status: Status, body: Bytes) {
        if body.len() <= COPIED_BODY_MAX {
            return self.respond(id, status, &body);
        }
        self.push(body.len(), |pending| {
            proto::put_response_head(&mut pending.bytes, id, status, body.len());
            let head = pending.bytes.split().freeze();
            pending.shared.extend([head, body]);
        });
    }

    /// Appends one response with a body of `body_len` bytes, counts it against the
    /// connection's budget, and wakes the writer if it is the first waiting.
    fn push(&self, body_len: usize, put: impl FnOnce(&mut Pending)) {
        let mut pending = self.pipe.lock();
        put(&mut pending);
        self.pipe.flow.queued.fetch_add(proto::RESPONSE_HEAD_LEN + body_len, Relaxed);
        pending.responses += 1;
        let first = pending.responses == 1;
        drop(pending);
        if first {
            self.pipe.ready.notify_one();
        }
    }
}

#[cfg(test)]
impl Pending {
    fn queued_bytes(&self) -> usize {
        self.shared.iter().map(Bytes::len).sum::<usize>() + self.bytes.len()
    }
}

#[cfg(test)]
impl Outbox {
    /// An outbox with no connection behind it.
    pub fn detached() -> Arc<Outbox> {
        Arc::new(Outbox { pipe: Arc::default() })
    }

    /// What it was answered so far.
    pub fn take_pending(&self) -> BytesMut {
        let mut pending = self.pipe.lock();
        pending.responses = 0;
        let mut all = BytesMut::new();
        std::mem::take(&mut pending.shared).iter().for_each(|part| all.extend_from_slice(part));
        all.extend_from_slice(&pending.bytes.split());
        all
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.pipe.lock().dropped = true;
        self.pipe.ready.notify_one();
    }
}

/// What a connection's reader and writer share.
#[derive(Default)]
struct Flow {
    /// Requests taken whose responses are not written yet.
    unanswered: AtomicUsize,
    /// Response bytes queued, not written yet.
    queued: AtomicUsize,
    /// Signalled when the writer has written some, or stopped.
    drained: Notify,
    closed: AtomicBool,
}

impl Flow {
    fn full(&self) -> bool {
        self.unanswered.load(Relaxed) >= MAX_UNANSWERED || self.queued.load(Relaxed) >= MAX_QUEUED_BYTES
    }

    fn written(&self, responses: usize, bytes: usize) {
        debug_assert!(self.unanswered.load(Relaxed) >= responses, "every response answers a request");
        self.unanswered.fetch_sub(responses, Relaxed);
        self.queued.fetch_sub(bytes, Relaxed);
        self.drained.notify_one();
    }

    fn close(&self) {
        self.closed.store(true, Relaxed);
        self.drained.notify_one();
    }
}

/// Reads one connection's requests and hands each to `handle`, which answers it (now or later)
/// through the outbox exactly once. Stops reading while the answers back up; ends at EOF, and
/// with the reason on a frame it cannot parse, on a request not whole within
/// `REQUEST_TIMEOUT`, or when the request would need more of the `partial` budget than is
/// left. Responses already due are still written.
async fn serve_conn<R, W>(mut rd: R, wr: W, partial: &Budget, handle: impl Fn(Bytes, &Arc<Outbox>)) -> Result<(), &'static str>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let pipe = Arc::new(Pipe::default());
    let outbox = Arc::new(Outbox { pipe: pipe.clone() });
    let flow = &pipe.flow;
    tokio::spawn(write_responses(wr, pipe.clone()));
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut held = partial.hold();
    let mut deadline = None;
    loop {
        while flow.full() && !flow.closed.load(Relaxed) {
            flow.drained.notified().await;
        }
        if flow.closed.load(Relaxed) {
            return Ok(());
        }
        match proto::take_frame(&mut buf) {
            Ok(Some(frame)) => {
                deadline = None;
                flow.unanswered.fetch_add(1, Relaxed);
                handle(frame, &outbox);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                debug!(error = %e, "a frame that does not parse");
                return Err("a frame that does not parse");
            }
        }
        let need = proto::frame_need(&buf).expect("take_frame checked it");
        if !grow_within(&mut buf, need, READ_CHUNK, &mut held) {
            return Err("partly received requests fill the port's budget");
        }
        let n = if buf.is_empty() {
            rd.read_buf(&mut buf).await
        } else {
            let until = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + REQUEST_TIMEOUT);
            match tokio::time::timeout_at(until, rd.read_buf(&mut buf)).await {
                Ok(n) => n,
                Err(_) => return Err("a request did not arrive whole in time"),
            }
        };
        if matches!(n, Ok(0) | Err(_)) {
            return Ok(());
        }
    }
}

/// Writes responses as they come: everything pending at each wake-up in one system call.
async fn write_responses<W: AsyncWrite + Unpin>(mut wr: W, pipe: Arc<Pipe>) {
    let mut batch = BytesMut::with_capacity(64 << 10);
    loop {
        pipe.ready.notified().await;
        let (shared, responses, dropped) = pipe.take(&mut batch);
        if responses > 0 {
            let bytes = shared.iter().map(Bytes::len).sum::<usize>() + batch.len();
            let result = write_parts(&mut wr, &shared, &batch).await;
            pipe.flow.written(responses, bytes);
            if result.is_err() {
                return pipe.flow.close();
            }
            batch.clear();
            if batch.capacity() > KEPT_BATCH_BYTES {
                batch = BytesMut::with_capacity(64 << 10);
            }
        }
        if dropped {
            return;
        }
    }
}

async fn write_parts<W: AsyncWrite + Unpin>(wr: &mut W, shared: &[Bytes], rest: &[u8]) -> std::io::Result<()> {
    for part in shared {
        wr.write_all(part).await?;
    }
    wr.write_all(rest).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{duplex, split, DuplexStream};

    /// A connection served by `serve_conn` whose handler answers every request at once with
    /// `body_len` bytes; reports how many it handled and the most unanswered it saw.
    fn answering(body_len: usize) -> (DuplexStream, Arc<Mutex<(usize, usize)>>) {
        let (client, server) = duplex(64 << 10);
        let seen = Arc::new(Mutex::new((0, 0)));
        let record = seen.clone();
        tokio::spawn(async move {
            let (rd, wr) = split(server);
            let partial = Budget::new(MAX_PARTIAL_BYTES);
            let _ = serve_conn(rd, wr, &partial, |frame, outbox| {
                let (id, _) = proto::parse_request(frame).unwrap();
                let mut seen = record.lock().unwrap();
                *seen = (seen.0 + 1, seen.1.max(outbox.pipe.flow.unanswered.load(Relaxed)));
                outbox.respond(id, Status::Ok, &vec![0; body_len]);
            })
            .await;
        });
        (client, seen)
    }

    /// Lets every task run until all wait (the clock is paused: it moves only when all are idle).
    async fn settle() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_its_answers_stops_being_read() {
        const N: u64 = 20_000;
        let (client, seen) = answering(100);
        let (mut responses, mut requests) = split(client);
        let pipelining = tokio::spawn(async move {
            let mut out = BytesMut::new();
            (1..=N).for_each(|id| proto::status_request(&mut out, id));
            requests.write_all(&out).await.unwrap();
            requests
        });
        settle().await;
        let (handled, most_unanswered) = *seen.lock().unwrap();
        assert!(most_unanswered <= MAX_UNANSWERED, "{most_unanswered} requests unanswered at once");
        assert!(handled < N as usize, "all {handled} requests taken while their answers went unread");
        // Reading the answers lets the rest through, in order.
        let mut buf = BytesMut::new();
        for id in 1..=N {
            let frame = loop {
                if let Some(frame) = proto::take_frame(&mut buf).unwrap() {
                    break frame;
                }
                assert!(responses.read_buf(&mut buf).await.unwrap() > 0, "closed before answer {id}");
            };
            assert_eq!(proto::parse_response(frame).0, id);
        }
        drop(pipelining.await.unwrap());
        assert_eq!(seen.lock().unwrap().0, N as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn large_unread_answers_stop_the_reading_sooner() {
        let (client, seen) = answering(1 << 20);
        let (_responses, mut requests) = split(client);
        let mut out = BytesMut::new();
        (1..=100).for_each(|id| proto::status_request(&mut out, id));
        requests.write_all(&out).await.unwrap();
        settle().await;
        let handled = seen.lock().unwrap().0;
        // The first MiB goes into a batch being written; then 4 MiB queue, then reading stops.
        assert!(handled <= 2 + MAX_QUEUED_BYTES / (1 << 20), "{handled} MiB of answers taken on");
    }

    #[test]
    fn long_values_are_answered_by_reference_in_order_with_the_rest() {
        let outbox = Outbox::detached();
        let value = Bytes::from(vec![7u8; 64 << 10]);
        outbox.respond(1, Status::Ok, b"short");
        outbox.respond_shared(2, Status::Ok, value.clone());
        outbox.respond_shared(3, Status::Ok, Bytes::from_static(b"copied"));
        outbox.respond_shared(4, Status::Ok, value.clone());
        {
            let pending = outbox.pipe.lock();
            let long: Vec<_> = pending.shared.iter().filter(|part| part.len() == value.len()).collect();
            assert!(long.len() == 2 && long.iter().all(|part| part.as_ptr() == value.as_ptr()), "shared, not copied");
            assert_eq!(outbox.pipe.flow.queued.load(Relaxed), pending.queued_bytes());
        }
        let mut all = outbox.take_pending();
        let bodies: Vec<(u64, Bytes)> = std::iter::from_fn(|| proto::take_frame(&mut all).unwrap())
            .map(proto::parse_response)
            .map(|(id, _, body)| (id, body))
            .collect();
        let expected: [&[u8]; 4] = [b"short", &value, b"copied", &value];
        assert_eq!(bodies.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(bodies.iter().zip(expected).all(|((_, got), want)| got[..] == *want), "every body whole, in order");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_begun_must_arrive_whole_in_time() {
        let (mut client, _seen) = answering(0);
        let mut out = BytesMut::new();
        proto::put_request(&mut out, 1, b"key", &[7; 1000]);
        client.write_all(&out[..500]).await.unwrap();
        let mut rest = [0u8; 16];
        // The clock jumps to the deadline once everything is idle; the connection closes.
        let n = tokio::time::timeout(REQUEST_TIMEOUT * 2, client.read(&mut rest)).await.expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }

    #[tokio::test]
    async fn a_frame_that_does_not_parse_closes_the_connection() {
        let (mut client, seen) = answering(0);
        let mut out = BytesMut::new();
        proto::status_request(&mut out, 1);
        out.put_u32_le(3); // shorter than any request
        client.write_all(&out).await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut all)).await.expect("closed in time").unwrap();
        let frame = proto::take_frame(&mut BytesMut::from(&all[..])).unwrap().expect("the first answered");
        assert_eq!((proto::parse_response(frame).0, seen.lock().unwrap().0), (1, 1));
    }
}
