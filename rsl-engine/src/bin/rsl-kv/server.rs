//! One replica process: the RSL replica with the key-value machine, and the client port.

use crate::machine::{Clients, Kv, Summary};
use crate::proto::{self, Status};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use rsl_engine::format::{MemberId, MemberSet, Node, Version};
use rsl_engine::runtime::{AdmitAll, ResponseCode, RslConfig, RslReplica};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

pub const OP_CHANGE: u8 = 4;

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
    /// The initial members as `id=port,...` on 127.0.0.1; without it the replica waits to be
    /// added by a configuration change.
    #[arg(long)]
    pub members: Option<String>,
    /// Working directory; the replica's data goes in `<dir>/<id>`.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 6)]
    pub version: u16,
    #[arg(long, default_value_t = 1)]
    pub window: u32,
    #[arg(long)]
    pub no_sync: bool,
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
    /// Stop on SIGTERM only: `rsl-kv cluster` stops its replicas itself after Ctrl-C, once it
    /// has checked that they agree.
    #[arg(long, hide = true)]
    pub ignore_sigint: bool,
}

/// Shifts every port of a member list by `by`.
fn shift_members(spec: &str, by: u16) -> String {
    spec.split(',')
        .map(|m| match m.split_once('=') {
            Some((id, port)) => format!("{id}={}", port.parse::<u16>().map_or(0, |p| p + by)),
            None => m.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `id=port,...` on 127.0.0.1.
pub fn parse_members(spec: &str) -> Result<MemberSet, String> {
    let nodes = spec
        .split(',')
        .map(|m| {
            let (id, port) = m.split_once('=').ok_or(format!("bad member {m:?}: want id=port"))?;
            let port: u16 = port.parse().map_err(|_| format!("bad port in {m:?}"))?;
            rsl_engine::runtime::api::node(id, Ipv4Addr::LOCALHOST, port).ok_or(format!("bad member id {id:?}"))
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
    let mut replicas = Vec::new();
    for k in 0..args.rings {
        let mut ring = args.clone();
        if args.rings > 1 {
            ring.port += 10 * k;
            ring.client_port += 10 * k;
            ring.members = args.members.as_deref().map(|m| shift_members(m, 10 * k));
            ring.dir = args.dir.join(format!("ring{k}"));
        }
        let (replica, server) = start(ring.clone())?;
        let listener = rt
            .block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, ring.client_port)))
            .map_err(|e| format!("client port {}: {e}", ring.client_port))?;
        rt.spawn(server.accept(listener));
        replicas.push(replica);
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

/// Starts one ring's replica and the server for its clients.
fn start(args: ReplicaArgs) -> Result<(Arc<RslReplica>, Server), String> {
    let version = Version::new(args.version).ok_or("unknown protocol version")?;
    let me: Node = rsl_engine::runtime::api::node(&args.id, Ipv4Addr::LOCALHOST, args.port).ok_or("bad member id")?;
    let members = args.members.as_deref().map(parse_members).transpose()?;
    let cfg = RslConfig {
        working_dir: args.dir.clone(),
        election_delay_sec: args.election_delay,
        heart_beat_interval_sec: args.heartbeat,
        new_leader_grace_period_sec: args.election_delay,
        max_log_len_mb: args.max_log_mb,
        pipeline_window: args.window,
        sync_writes: !args.no_sync,
        fast_read_seq_threshold: 1_000_000,
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
    let server = Server { replica: replica.clone(), clients, summary };
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
}

impl Server {
    async fn accept(self, listener: TcpListener) {
        while let Ok((conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(self.clone().serve(conn));
        }
    }

    async fn serve(self, conn: TcpStream) {
        let (mut rd, wr) = conn.into_split();
        let (tx, rx) = unbounded_channel();
        tokio::spawn(write_responses(wr, rx));
        let mut buf = BytesMut::with_capacity(64 << 10);
        loop {
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            loop {
                match proto::take_frame(&mut buf) {
                    Ok(Some(frame)) => self.handle(frame, &tx),
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }

    fn handle(&self, frame: Bytes, tx: &UnboundedSender<Bytes>) {
        let (op, id, body) = proto::parse_request(frame);
        let code = match op {
            proto::OP_PUT => {
                let cookie = self.clients.register(tx, id);
                self.submitted(cookie, self.replica.replicate_request(body, cookie))
            }
            proto::OP_GET if body.len() >= 8 => {
                let max_seen = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                let cookie = self.clients.register(tx, id);
                self.submitted(cookie, self.replica.fast_read_request(max_seen, body.slice(8..), cookie, Duration::from_secs(2)))
            }
            proto::OP_STATUS => {
                let _ = tx.send(proto::response(id, Status::Ok, &self.status()));
                return;
            }
            OP_CHANGE => {
                let Ok(members) = parse_members(&String::from_utf8_lossy(&body)) else {
                    let _ = tx.send(proto::response(id, Status::Invalid, &[]));
                    return;
                };
                let cookie = self.clients.register(tx, id);
                self.submitted(cookie, self.replica.change_configuration(members, cookie))
            }
            _ => Status::Invalid,
        };
        if code != Status::Ok {
            let _ = tx.send(proto::response(id, code, &[]));
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
        let mut out = Vec::with_capacity(33 + 64);
        out.put_u64_le(self.replica.current_sequence_number());
        out.put_u64_le(s.keys.load(Relaxed));
        out.put_u64_le(s.digest.load(Relaxed));
        out.put_u64_le(s.duplicates.load(Relaxed));
        out.put_u8(self.replica.is_primary() as u8);
        let primary = self.replica.current_primary().unwrap_or(MemberId::EMPTY);
        out.put_slice(primary.as_bytes());
        out
    }
}

/// Writes responses as they come, many per system call.
async fn write_responses(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: UnboundedReceiver<Bytes>) {
    let mut batch = BytesMut::with_capacity(64 << 10);
    while let Some(first) = rx.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < (1 << 20) {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if wr.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
}
