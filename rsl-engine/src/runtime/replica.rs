//! [`RslReplica`]: one replica of one ring, as a service sees it (RSL's `RSLStateMachine`
//! public methods): start-up and restore, requests, reads, membership, and unload.

use super::api::{Admission, ReplicaHealth, ResponseCode, StateMachine, Stats};
use super::checkpoints::CheckpointStore;
use super::config::{ConfigError, RslConfig};
use super::exec::{Executor, Work};
use super::journal::{read_defunct, Journal, JournalOptions};
use super::learn::{self, LearnServer, LearnSource};
use super::ring::{learn_addr, Event, Limits, Ring};
use super::transport::{Transport, TransportOptions};
use super::{FileRange, Shared};
use crate::format::message::StatusBody;
use crate::format::{Ballot, Body, ConfigInfo, Header, MemberId, MemberSet, Message, Node, Version};
use crate::paxos::{Action, Cookie, Input, Replica, Role};
use bytes::Bytes;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why `initialize` failed.
#[derive(Debug, Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Storage(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("the state machine could not load any checkpoint, and the logs do not start at decree 0")]
    NoState,
    #[error("{0}")]
    Invalid(&'static str),
}

/// A running replica. Every method may be called from any thread.
pub struct RslReplica {
    shared: Arc<Shared>,
    events: Sender<Event>,
    work: Sender<Work>,
    me: Node,
    version: Version,
    fast_read_threshold: u64,
    transport: Arc<Transport>,
    store: Arc<Mutex<CheckpointStore>>,
    receive_timeout: Duration,
    threads: Mutex<Vec<JoinHandle<()>>>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    _learn: LearnServer,
    dir: PathBuf,
}

/// What the learn port serves: this replica's logs and newest checkpoint.
struct Files {
    log: super::journal::LogReader,
    store: Arc<Mutex<CheckpointStore>>,
    me: MemberId,
    version: Version,
}

impl LearnSource for Files {
    fn votes_from(&self, decree: u64) -> Option<Vec<FileRange>> {
        self.log.votes_from(decree)
    }
    fn checkpoint(&self, decree: u64) -> Option<PathBuf> {
        self.store.lock().ok()?.newest().filter(|(d, _)| *d == decree).map(|(_, p)| p)
    }
    /// What `CopyStateFromReplica` asks: how far this replica's log and checkpoint go.
    fn status(&self, query: &Message) -> Option<Message> {
        let (checkpointed_decree, checkpoint_size) = match self.store.lock().ok()?.newest() {
            Some((decree, path)) => (decree, std::fs::metadata(path).ok()?.len()),
            None => (0, 0),
        };
        let body = StatusBody {
            query_decree: query.header.decree,
            query_ballot: query.header.ballot,
            last_received_ago_ms: 0,
            min_decree_in_log: self.log.min_decree(),
            checkpointed_decree,
            checkpoint_size,
            max_ballot: Ballot::EMPTY,
            state: 0,
        };
        let header = Header::new(self.version, self.me, query.header.decree, query.header.config, Ballot::EMPTY);
        Some(Message::new(header, Body::StatusResponse(body)))
    }
}

impl RslReplica {
    /// `Initialize`: restores the state (newest loadable checkpoint, then the chosen decrees
    /// of the logs, executed on the calling thread), then starts the protocol. `members` is the
    /// legacy form's initial member list; without it (v4+) a replica that has never been
    /// bootstrapped waits inactive for [`bootstrap`](Self::bootstrap).
    pub fn initialize(
        cfg: RslConfig,
        me: Node,
        version: Version,
        mut sm: Box<dyn StateMachine>,
        admission: Arc<dyn Admission>,
        members: Option<MemberSet>,
    ) -> Result<RslReplica, InitError> {
        cfg.validate()?;
        if members.is_none() && version.get() < 4 {
            return Err(InitError::Invalid("a replica without an initial member list needs protocol version 4 or later"));
        }
        let dir = data_dir(&cfg, &me.id);
        std::fs::create_dir_all(&dir).map_err(|e| InitError::Storage(format!("{}: {e}", dir.display())))?;
        let storage = |e: &dyn std::fmt::Display| InitError::Storage(e.to_string());
        let store = CheckpointStore::open(&dir, cfg.max_checkpoints as usize).map_err(|e| storage(&e))?;
        let loaded = store.load_newest(|reader| sm.load_state(reader)).map_err(|e| storage(&e))?;
        if loaded.is_none() {
            sm.load_state(None);
        }
        let store = Arc::new(Mutex::new(store));
        let start = Instant::now();
        let shared = Arc::new(Shared::new(loaded.as_ref().map_or(0, |(cp, _)| cp.decree)));
        let (events_tx, events_rx) = mpsc::channel();
        let (work_tx, work_rx) = mpsc::channel();

        let on_durable = {
            let events = events_tx.clone();
            move |seq| drop(events.send(Event::Durable(seq)))
        };
        let on_error = {
            let events = events_tx.clone();
            move |e: std::io::Error| drop(events.send(Event::Fatal(format!("journal write failed: {e}"))))
        };
        let opts = JournalOptions {
            dir: dir.clone(),
            max_log_len: cfg.max_log_len_bytes(),
            log_len_randomize_pct: cfg.log_len_randomize,
            max_logs: cfg.max_logs as usize,
            max_pending_bytes: (cfg.max_cache_length_mb as usize) << 20,
            sync: cfg.sync_writes,
            seed: seed(&me.id),
        };
        let (journal, records) =
            Journal::open(opts, loaded.as_ref().map(|(cp, _)| cp.decree), on_durable, on_error).map_err(|e| storage(&e))?;

        let initial = match &members {
            Some(set) => ConfigInfo { number: 1, initial_decree: 0, members: set.clone() },
            None => ConfigInfo::default(),
        };
        let mut core = Replica::new(cfg.core_config(version), me.id, initial, seed(&me.id) ^ 0x5eed);
        core.restore_defunct(read_defunct(&dir).map_err(|e| storage(&e))?);
        if let Some((cp, size)) = &loaded {
            core.restore_checkpoint(cp, *size);
        }
        let mut exec = Executor::new(sm, shared.clone(), store.clone(), me.id, version, events_tx.clone());
        replay(&mut core, &records, &mut exec)?;
        shared.view.lock().expect("view").config = core.configuration().clone();
        shared.passed_seq.store(shared.current_seq.load(Relaxed), Relaxed);

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rsl-net")
            .enable_all()
            .build()
            .map_err(|e| storage(&e))?;
        let bind_ip = if cfg.listen_on_all_ips { std::net::Ipv4Addr::UNSPECIFIED } else { me.ip };
        let paxos = SocketAddr::V4(SocketAddrV4::new(bind_ip, me.rsl_port));
        let deliver = {
            let events = events_tx.clone();
            Arc::new(move |msg: Arc<Message>, ip| drop(events.send(Event::Message(msg, ip))))
        };
        let topts = TransportOptions { max_packet: cfg.max_message_bytes(), ..TransportOptions::default() };
        let transport = Arc::new(
            Transport::start(runtime.handle(), paxos, topts, deliver).map_err(|source| InitError::Listen { addr: paxos, source })?,
        );
        let learn_at = SocketAddr::new(bind_ip.into(), learn_addr(&me).port());
        let files = Arc::new(Files { log: journal.reader(), store: store.clone(), me: me.id, version });
        let learn = LearnServer::start(runtime.handle(), learn_at, files, cfg.max_message_bytes())
            .map_err(|source| InitError::Listen { addr: learn_at, source })?;

        let limits = Limits { receive_timeout: Duration::from_secs(cfg.receive_timeout_sec.into()), max_learn_bytes: 64 << 20 };
        let ring = Ring::new(
            core,
            journal,
            transport.clone(),
            runtime.handle().clone(),
            work_tx.clone(),
            events_tx.clone(),
            shared.clone(),
            store.clone(),
            dir.clone(),
            admission,
            version,
            limits,
            start,
        );
        let threads = vec![spawn("rsl-exec", move || exec.run(work_rx)), spawn("rsl-paxos", move || ring.run(events_rx))];
        Ok(RslReplica {
            shared,
            events: events_tx,
            work: work_tx,
            me,
            version,
            fast_read_threshold: cfg.fast_read_seq_threshold.into(),
            transport,
            store,
            receive_timeout: Duration::from_secs(cfg.receive_timeout_sec.into()),
            threads: Mutex::new(threads),
            runtime: Mutex::new(Some(runtime)),
            _learn: learn,
            dir,
        })
    }

    /// `Replay`: read-only. Rebuilds `sm` from the data directory of replica `me` (the newest
    /// checkpoint at or below `max_seq`, then the logs' chosen decrees up to `max_seq`) on the
    /// calling thread, with no network and no writes. Returns the last executed decree.
    pub fn replay(cfg: &RslConfig, me: &MemberId, version: Version, sm: &mut dyn StateMachine, max_seq: u64) -> Result<u64, InitError> {
        super::replay::replay(&data_dir(cfg, me), version, sm, max_seq)
    }

    /// The replica's data directory (working directory, plus the member id if configured).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    pub fn protocol_version(&self) -> Version {
        self.version
    }

    fn check_submit(&self, request: &[u8]) -> Option<ResponseCode> {
        if self.shared.shutting_down.load(Relaxed) {
            Some(ResponseCode::ShuttingDown)
        } else if !self.shared.is_primary.load(Relaxed) {
            Some(ResponseCode::NotPrimary)
        } else if request.is_empty() {
            Some(ResponseCode::InvalidParameter)
        } else {
            None
        }
    }

    /// `ReplicateRequest`: on Success the cookie comes back exactly once, through
    /// `execute_replicated_request` here or `abort_request`.
    pub fn replicate_request(&self, request: Bytes, cookie: Cookie) -> ResponseCode {
        self.submit(request, cookie, false, false)
    }

    /// `ReplicateRequestExclusiveVote`: the request gets a vote of its own. With
    /// `is_last_decree`, the replica refuses every later request (ShuttingDown), and the core
    /// sends no heartbeat after the vote, so the secondaries elect another primary
    /// (api-behavior §2.19).
    pub fn replicate_request_exclusive_vote(&self, request: Bytes, cookie: Cookie, is_last_decree: bool) -> ResponseCode {
        let code = self.submit(request, cookie, true, is_last_decree);
        if code == ResponseCode::Success && is_last_decree {
            // Refuse at once on the caller's side too; the core refuses whatever races past.
            self.shared.shutting_down.store(true, Relaxed);
        }
        code
    }

    fn submit(&self, request: Bytes, cookie: Cookie, exclusive: bool, last: bool) -> ResponseCode {
        if let Some(code) = self.check_submit(&request) {
            return code;
        }
        match self.events.send(Event::Submit { request, cookie, exclusive, last }) {
            Ok(()) => ResponseCode::Success,
            Err(_) => ResponseCode::ShuttingDown,
        }
    }

    /// `FastReadRequest`: runs `execute_fast_read_request` on this replica once its state has
    /// reached `max_seen_seq_no`, waiting up to `timeout` if it lags by no more than
    /// `m_fastReadSeqThreshold` (api-behavior §2.18).
    pub fn fast_read_request(&self, max_seen_seq_no: u64, request: Bytes, cookie: Cookie, timeout: Duration) -> ResponseCode {
        if self.shared.shutting_down.load(Relaxed) {
            return ResponseCode::ShuttingDown;
        }
        let lag = max_seen_seq_no.saturating_sub(self.shared.current_seq.load(Acquire));
        if lag > 0 && (lag > self.fast_read_threshold || timeout.is_zero() || self.shared.saving.load(Relaxed)) {
            return ResponseCode::FastReadStale;
        }
        let deadline = Instant::now() + timeout;
        match self.work.send(Work::FastRead { max_seen: max_seen_seq_no, request, cookie, deadline }) {
            Ok(()) => ResponseCode::Success,
            Err(_) => ResponseCode::ShuttingDown,
        }
    }

    /// `GetCurrentSequenceNumber`: the last executed decree.
    pub fn current_sequence_number(&self) -> u64 {
        self.shared.current_seq.load(Acquire)
    }

    /// `GetHighestPassedSequenceNumber`: the highest decree known chosen.
    pub fn highest_passed_sequence_number(&self) -> u64 {
        self.shared.passed_seq.load(Relaxed)
    }

    /// `GetConfiguration`: the state configuration's members and number.
    pub fn configuration(&self) -> (MemberSet, u32) {
        let view = self.shared.view.lock().expect("view");
        (view.config.members.clone(), view.config.number)
    }

    /// `GetCurrentPrimary`: the owner of the highest accepted ballot (a hint).
    pub fn current_primary(&self) -> Option<MemberId> {
        self.shared.view.lock().expect("view").primary
    }

    /// Primary, secondary, or on the way (None until the protocol thread has run).
    pub fn role(&self) -> Option<Role> {
        self.shared.view.lock().expect("view").role
    }

    pub fn is_primary(&self) -> bool {
        self.shared.is_primary.load(Relaxed)
    }

    /// `ChangeConfiguration`: primary only; the cookie comes back through
    /// `notify_configuration_changed` or `abort_change_configuration`.
    pub fn change_configuration(&self, members: MemberSet, cookie: Cookie) -> ResponseCode {
        self.ask(|reply| Event::ChangeConfiguration { members, cookie, reply })
    }

    /// `Bootstrap` (v4+): gives a never-bootstrapped replica its first member set.
    pub fn bootstrap(&self, members: MemberSet) -> ResponseCode {
        self.ask(|reply| Event::Bootstrap { members, reply })
    }

    fn ask(&self, event: impl FnOnce(mpsc::SyncSender<ResponseCode>) -> Event) -> ResponseCode {
        if self.shared.shutting_down.load(Relaxed) {
            return ResponseCode::ShuttingDown;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        if self.events.send(event(tx)).is_err() {
            return ResponseCode::ShuttingDown;
        }
        rx.recv().unwrap_or(ResponseCode::ShuttingDown)
    }

    fn input(&self, input: Input) {
        let _ = self.events.send(Event::Input(input));
    }

    /// `RelinquishPrimary` (v5+): a last vote, then this replica shuts down.
    pub fn relinquish_primary(&self) {
        self.input(Input::RelinquishPrimary)
    }

    /// `AttemptPromotion`: stand for election at the next opportunity.
    pub fn attempt_promotion(&self) {
        self.input(Input::AttemptPromotion)
    }

    /// `SetVotePayload` (v6+).
    pub fn set_vote_payload(&self, payload: u64) {
        self.input(Input::SetVotePayload(payload))
    }

    /// `SetAcceptMessages`: the global accept flag (with `m_useGlobalAcceptMessagesFlag`).
    pub fn set_accept_messages(&self, accept: bool) {
        self.input(Input::SetAcceptMessages(accept))
    }

    /// `AllowSaveState`: automatic checkpoints on or off (not persisted).
    pub fn allow_save_state(&self, allow: bool) {
        self.shared.allow_save.store(allow, Relaxed);
    }

    /// `CopyStateFromReplica`: in the background, copies a checkpoint at least as new as ours
    /// from a peer into the data directory (it takes effect at the next start) and reports
    /// through `state_copied` with `cookie` (sequence 0 and no file if no peer had one).
    pub fn copy_state_from_replica(&self, cookie: Cookie) -> ResponseCode {
        let Some(rt) = self.runtime.lock().expect("runtime").as_ref().map(|rt| rt.handle().clone()) else {
            return ResponseCode::ShuttingDown;
        };
        if self.shared.shutting_down.load(Relaxed) {
            return ResponseCode::ShuttingDown;
        }
        let peers: Vec<Node> = self.configuration().0.nodes.into_iter().filter(|n| n.id != self.me.id).collect();
        let (store, work, me, version, limit) = (self.store.clone(), self.work.clone(), self.me.id, self.version, self.receive_timeout);
        rt.spawn(async move {
            let copied = copy_state(peers, store, me, version, limit).await;
            let (seq, path) = copied.map_or((0, None), |(seq, path)| (seq, Some(path)));
            let _ = work.send(Work::Copied { seq, path, cookie: Some(cookie) });
        });
        ResponseCode::Success
    }

    /// `GetReplicasInformation`: on the primary, one entry per peer and then one for itself;
    /// empty elsewhere.
    pub fn replicas_information(&self) -> Vec<ReplicaHealth> {
        if !self.is_primary() {
            return Vec::new();
        }
        let peers = self.transport.peer_stats().into_iter().map(|p| ReplicaHealth {
            member_id: p.member,
            connected: p.connected,
            packets_sent: p.sent_packets,
            packets_dropped: p.dropped_packets,
            ..ReplicaHealth::default()
        });
        let me = ReplicaHealth { member_id: self.me.id, connected: true, is_primary: true, ..ReplicaHealth::default() };
        peers.chain([me]).collect()
    }

    /// `GetStatisticsSnapshot`: counters since the previous snapshot.
    pub fn statistics_snapshot(&self) -> Stats {
        let c = &self.shared.stats;
        let take = |a: &std::sync::atomic::AtomicU64| a.swap(0, Relaxed);
        Stats {
            decrees_executed: take(&c.decrees_executed),
            requests_executed: take(&c.requests_executed),
            votes_logged: take(&c.votes_logged),
            log_syncs: c.log_syncs.load(Relaxed),
            fast_reads: take(&c.fast_reads),
            checkpoints_saved: take(&c.checkpoints_saved),
            messages_rejected: take(&c.messages_rejected),
        }
    }

    /// The node this replica runs as.
    pub fn me(&self) -> &Node {
        &self.me
    }

    /// True once the replica has stopped (unload, relinquish, or a fatal error).
    pub fn is_stopped(&self) -> bool {
        self.threads.lock().expect("threads").iter().all(|t| t.is_finished())
    }

    /// `UnloadThisOne`: stops the replica. Requests in flight come back `ShuttingDown`, then
    /// `shut_down` runs; the threads are joined. The process keeps running. Later calls do
    /// nothing.
    pub fn unload(&self) {
        self.shared.shutting_down.store(true, Relaxed);
        let _ = self.events.send(Event::Stop);
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads"));
        for t in threads {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.lock().expect("runtime").take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for RslReplica {
    fn drop(&mut self) {
        self.unload();
    }
}

/// Tries each peer in turn for a checkpoint at least as new as ours; installs the first that
/// arrives intact.
async fn copy_state(
    peers: Vec<Node>,
    store: Arc<Mutex<CheckpointStore>>,
    me: MemberId,
    version: Version,
    limit: Duration,
) -> Option<(u64, PathBuf)> {
    let ours = store.lock().ok()?.newest().map_or(0, |(d, _)| d);
    for node in peers {
        let addr = learn_addr(&node);
        let query = Message::new(Header::new(version, me, 0, 0, Ballot::EMPTY), Body::StatusQuery);
        let Ok(reply) = learn::fetch_status(addr, &query, limit).await else { continue };
        let Body::StatusResponse(s) = reply.body else { continue };
        if s.checkpointed_decree == 0 || s.checkpointed_decree < ours {
            continue;
        }
        let request = Message::new(Header::new(version, me, s.checkpointed_decree, 0, Ballot::EMPTY), Body::FetchCheckpoint);
        let temp = store.lock().ok()?.temp_path();
        if learn::fetch_checkpoint(addr, &request, s.checkpoint_size, &temp, limit, 3).await.is_err() {
            continue;
        }
        let store = store.clone();
        let decree = s.checkpointed_decree;
        if let Ok(Ok(saved)) =
            tokio::task::spawn_blocking(move || store.lock().map_err(|_| ()).and_then(|mut s| s.install(&temp, decree).map_err(|_| ())))
                .await
        {
            return Some((saved.decree, saved.path));
        }
    }
    None
}

/// Restores what the logs hold: every chosen decree executes on the calling thread.
fn replay(core: &mut Replica, records: &[Arc<Message>], exec: &mut Executor) -> Result<(), InitError> {
    let mut out = Vec::new();
    for record in records {
        core.replay(record, &mut out).map_err(|e| InitError::Storage(e.to_string()))?;
        for action in out.drain(..) {
            match action {
                Action::Execute { vote, cookies } => exec.handle(Work::Execute { vote, cookies }),
                Action::ConfigurationChanged { config, .. } => exec.handle(Work::ConfigChanged { config, cookie: None }),
                other => tracing::debug!(?other, "ignored during replay"),
            }
        }
    }
    Ok(())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new().name(name.into()).spawn(f).expect("spawn a replica thread")
}

/// `m_workingDir`, plus the member id with `m_addMemberIdToWorkingDir`.
fn data_dir(cfg: &RslConfig, id: &MemberId) -> PathBuf {
    let root = cfg.working_dir.clone();
    if cfg.add_member_id_to_working_dir {
        root.join(String::from_utf8_lossy(id.as_bytes()).as_ref())
    } else {
        root
    }
}

/// The core's random source: seeded per replica and per start (timing jitter only).
fn seed(id: &MemberId) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    id.as_bytes().iter().fold(t ^ u64::from(std::process::id()), |h, b| h.rotate_left(5) ^ u64::from(*b))
}
