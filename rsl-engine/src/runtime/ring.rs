//! The protocol thread of one replica: owns the sans-IO core and the journal, feeds the core
//! every event (messages, durability, requests, timers, catch-up results) and carries out
//! its actions against the journal, the transport, the learn port and the execute thread.

use super::api::{Admission, ResponseCode};
use super::checkpoints::{core_checkpoint, Catalog};
use super::exec::{abort_code, Work};
use super::journal::{write_defunct, Journal};
use super::learn;
use super::queue::{Inbox, Queue, CAPACITY};
use super::spill::ExecBacklog;
use super::tls::{PeerIdentity, Tls};
use super::transport::{frame, Origin, RateLimited, Transport};
use super::{spawn_task, Shared};
use crate::format::MsgKind;
use crate::format::{Body, Header, MemberId, MemberSet, Message, Node, Version};
use crate::paxos::{Action, Application, Cookie, Dest, Input, Micros, Rejection, Replica, Role, SubmitError};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rejected messages are logged at most this often; the others in between are only counted.
const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// At most this many member ids are remembered from Joins announcing a configuration newer
/// than ours (the oldest is forgotten first). Learning from a joiner needs its address, which
/// the Join gives; but nothing verifies a Join, so any id could otherwise add a node.
const MAX_JOINERS: usize = 8;

/// Everything the protocol thread reacts to.
pub(crate) enum Event {
    /// A peer's message and the connection it came on.
    Message(Arc<Message>, Origin),
    Durable(u64),
    Submit {
        request: Bytes,
        cookie: Cookie,
        exclusive: bool,
        /// `isLastDecree`: the replica shuts down behind this (exclusive) request.
        last: bool,
    },
    ChangeConfiguration {
        members: MemberSet,
        cookie: Cookie,
        reply: SyncSender<ResponseCode>,
    },
    Bootstrap {
        members: MemberSet,
        reply: SyncSender<ResponseCode>,
    },
    Input(Input),
    /// A checkpoint file is in place: saved here, or copied from a peer by the primary.
    CheckpointDone {
        decree: u64,
        size: u64,
        path: PathBuf,
        copied: bool,
    },
    /// Something the replica cannot go on after (a journal write failed, a background task
    /// panicked): the replica fails (`RslReplica::failure`) and stops cleanly.
    Fatal(String),
    Stop,
    /// Tests: the protocol thread waits here until the sender is dropped (or sends).
    #[cfg(test)]
    Pause(std::sync::mpsc::Receiver<()>),
}

/// The core's synchronous questions, answered by the service's [`Admission`].
struct Admit(Arc<dyn Admission>);

impl Application for Admit {
    fn can_become_primary(&mut self) -> Option<Bytes> {
        self.0.can_become_primary().map(Bytes::from)
    }
    fn accept_message(&mut self, from: &MemberId, primary_cookie: &[u8]) -> bool {
        self.0.accept_message_from_replica(from, primary_cookie)
    }
}

/// The learn port's and the transport's timeouts and limits.
pub(crate) struct Limits {
    pub receive_timeout: Duration,
    pub max_learn_bytes: usize,
    pub execution_queue_bytes: u64,
}

/// The protocol thread's state.
pub(crate) struct Ring {
    pub core: Replica,
    pub journal: Journal,
    pub transport: Arc<Transport>,
    pub rt: tokio::runtime::Handle,
    pub work: Queue<Work>,
    pub events: Queue<Event>,
    pub shared: Arc<Shared>,
    /// The checkpoint store as its owner (the execute thread) last published it.
    pub checkpoints: Arc<Catalog>,
    pub dir: PathBuf,
    pub version: Version,
    pub limits: Limits,
    pub start: Instant,
    /// For the learn clients (the transport and the learn server hold their own).
    tls: Option<Arc<Tls>>,
    admit: Admit,
    /// Every node ever named by a configuration: where to reach a member by id.
    nodes: BTreeMap<MemberId, Node>,
    peers_for: (u32, u32),
    /// The primary and role last written to the shared view.
    published: (Option<MemberId>, Option<Role>),
    /// Sends waiting for a persist to be durable, in the order they were asked for.
    held: VecDeque<(u64, Dest, Bytes)>,
    durable: u64,
    frame_buf: BytesMut,
    actions: Vec<Action>,
    /// Inputs that actions produced (a log roll), stepped after the actions.
    followups: Vec<Input>,
    /// The address of the message whose actions are being carried out (for rejections).
    inbound: Option<IpAddr>,
    /// Warnings of rejections: at most one per `REJECTION_LOG_INTERVAL`.
    rejections: RateLimited,
    /// Ids remembered from Joins (`MAX_JOINERS`), oldest first.
    joiners: VecDeque<MemberId>,
    stopped: bool,
    /// What goes to the execute thread, within its memory bound.
    backlog: ExecBacklog,
}

impl Ring {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: Replica,
        journal: Journal,
        transport: Arc<Transport>,
        rt: tokio::runtime::Handle,
        work: Queue<Work>,
        events: Queue<Event>,
        shared: Arc<Shared>,
        checkpoints: Arc<Catalog>,
        dir: PathBuf,
        admission: Arc<dyn Admission>,
        version: Version,
        limits: Limits,
        tls: Option<Arc<Tls>>,
        start: Instant,
    ) -> Ring {
        Ring {
            backlog: ExecBacklog::new(limits.execution_queue_bytes, dir.clone(), shared.clone()),
            version,
            core,
            journal,
            transport,
            rt,
            work,
            events,
            shared,
            checkpoints,
            dir,
            limits,
            start,
            tls,
            admit: Admit(admission),
            nodes: BTreeMap::new(),
            peers_for: (u32::MAX, u32::MAX),
            published: (None, None),
            held: VecDeque::new(),
            durable: 0,
            frame_buf: BytesMut::with_capacity(64 << 10),
            actions: Vec::new(),
            followups: Vec::new(),
            inbound: None,
            rejections: RateLimited::every(REJECTION_LOG_INTERVAL),
            joiners: VecDeque::new(),
            stopped: false,
        }
    }

    fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    /// Runs the replica until it stops; then the execute thread delivers `ShutDown`.
    pub fn run(mut self, events: Inbox<Event>) {
        let now = self.now();
        let mut out = std::mem::take(&mut self.actions);
        self.core.start(now, &mut self.admit, &mut out);
        self.apply(out);
        self.refresh_peers();
        while !self.stopped {
            let wake = self.core.next_wakeup();
            let now = self.now();
            let wait = Duration::from_micros(wake.saturating_sub(now).min(100_000));
            match events.recv_timeout(wait) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Take everything already queued before acting: requests batch into one vote, and
            // one journal sync covers every record they produce.
            for event in std::iter::from_fn(|| events.try_recv().ok()).take(CAPACITY) {
                if self.stopped {
                    break;
                }
                self.handle(event);
            }
            if !self.stopped && self.now() >= self.core.next_wakeup() {
                self.step(Input::Tick);
            }
            if let Err(e) = self.backlog.refill(self.durable, &self.work) {
                self.fail(e);
            }
            self.publish();
        }
        self.shutdown();
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Message(msg, origin) => {
                // Marks each arrival, for measuring stalls (tests/checkpoint_gap.rs).
                tracing::trace!(target: "rsl_engine::paxos_in", me = %self.core.me(), "paxos message");
                self.on_message(msg, origin)
            }
            Event::Durable(seq) => {
                self.durable = self.durable.max(seq);
                self.release_held();
                self.step(Input::Durable(seq));
            }
            Event::Submit { request, cookie, exclusive, last } => self.submit(request, cookie, exclusive, last),
            Event::ChangeConfiguration { members, cookie, reply } => {
                let code = self.change_configuration(members, cookie);
                let _ = reply.send(code);
            }
            Event::Bootstrap { members, reply } => {
                let code = self.bootstrap(members);
                let _ = reply.send(code);
            }
            Event::Input(input) => self.step(input),
            Event::CheckpointDone { decree, size, path, copied } => self.checkpoint_done(decree, size, path, copied),
            Event::Fatal(reason) => self.fail(reason),
            Event::Stop => self.stopped = true,
            #[cfg(test)]
            Event::Pause(until) => drop(until.recv()),
        }
    }

    /// A peer's message: from the member its connection's certificate names, if it names one;
    /// from the address configured for the member it names, if we know it; then the core
    /// checks the rest.
    fn on_message(&mut self, msg: Arc<Message>, origin: Origin) {
        let (from, ip) = (msg.header.sender, origin.ip);
        if let Some(certified) = certified_other(&self.nodes, &from, origin.peer.as_deref()) {
            if let Some(since) = self.count_rejection() {
                let kind = msg.kind();
                tracing::warn!(peer = %ip, claimed = %from, %certified, ?kind, unlogged_since = since,
                    "message rejected: its sender is not the member its connection's certificate names");
            }
            return;
        }
        self.inbound = Some(ip);
        if !self.sent_from_its_address(&from, ip) {
            self.rejected(from, msg.kind(), Rejection::WrongAddress);
            self.inbound = None;
            return;
        }
        if let Body::Join(join) = &msg.body {
            let newer = msg.header.config > self.core.paxos_configuration().number;
            if newer && !self.nodes.contains_key(&from) {
                self.remember_joiner(from, ip, join.learn_port);
            }
        }
        self.step(Input::Message { from, msg })
    }

    /// A message naming a node we know comes from that node's address ([`from_its_address`]).
    fn sent_from_its_address(&self, id: &MemberId, ip: IpAddr) -> bool {
        let listen_on_all_ips = self.transport.local_addr().ip().is_unspecified();
        self.nodes.get(id).is_none_or(|node| from_its_address(node.ip, ip, listen_on_all_ips))
    }

    /// Counts a rejected message (or record), and logs it unless one was logged within
    /// `REJECTION_LOG_INTERVAL`.
    fn rejected(&mut self, from: MemberId, kind: MsgKind, reason: Rejection) {
        let Some(since) = self.count_rejection() else { return };
        match self.inbound.or_else(|| self.nodes.get(&from).map(|n| IpAddr::V4(n.ip))) {
            Some(peer) => tracing::warn!(%peer, member = %from, ?kind, %reason, unlogged_since = since, "message rejected"),
            None => tracing::warn!(?kind, %reason, unlogged_since = since, "skipped a record or field of our own log or checkpoint"),
        }
    }

    /// Counts a rejection; Some(rejections not logged since the last) if this one may be
    /// logged (`REJECTION_LOG_INTERVAL`).
    fn count_rejection(&mut self) -> Option<u64> {
        self.shared.stats.messages_rejected.fetch_add(1, Relaxed);
        self.rejections.allow()
    }

    fn step(&mut self, input: Input) {
        let now = self.now();
        let mut out = std::mem::take(&mut self.actions);
        self.core.step(now, input, &mut self.admit, &mut out);
        self.apply(out);
    }

    fn submit(&mut self, request: Bytes, cookie: Cookie, exclusive: bool, last: bool) {
        let now = self.now();
        let mut out = std::mem::take(&mut self.actions);
        let result = if last {
            self.core.submit_last(now, request, cookie, &mut out)
        } else {
            self.core.submit(now, request, cookie, exclusive, &mut out)
        };
        self.apply(out);
        if let Err(e) = result {
            if e == SubmitError::Full {
                self.shared.stats.requests_refused.fetch_add(1, Relaxed);
            }
            let code = if e == SubmitError::ShuttingDown { ResponseCode::ShuttingDown } else { ResponseCode::NotPrimary };
            let _ = self.work.send(Work::Abort { cookie, code });
        }
    }

    fn change_configuration(&mut self, members: MemberSet, cookie: Cookie) -> ResponseCode {
        let now = self.now();
        let mut out = std::mem::take(&mut self.actions);
        let result = self.core.change_configuration(now, members, cookie, &mut out);
        self.apply(out);
        match result {
            Ok(()) => ResponseCode::Success,
            Err(SubmitError::NotPrimary) => ResponseCode::NotPrimary,
            Err(SubmitError::ShuttingDown) => ResponseCode::ShuttingDown,
            Err(_) => ResponseCode::InvalidParameter,
        }
    }

    fn bootstrap(&mut self, members: MemberSet) -> ResponseCode {
        use crate::paxos::BootstrapError;
        for node in &members.nodes {
            self.nodes.insert(node.id, node.clone());
        }
        let now = self.now();
        let mut out = std::mem::take(&mut self.actions);
        let result = self.core.bootstrap(now, members, &mut self.admit, &mut out);
        self.apply(out);
        self.refresh_peers();
        match result {
            Ok(()) => ResponseCode::Success,
            Err(BootstrapError::AlreadyBootstrapped) => ResponseCode::AlreadyBootstrapped,
            Err(BootstrapError::Failed) => ResponseCode::BootstrapFailed,
            Err(BootstrapError::InvalidParameter) => ResponseCode::InvalidParameter,
        }
    }

    /// Carries out the core's actions, in order; then the inputs they produced.
    fn apply(&mut self, mut out: Vec<Action>) {
        for action in out.drain(..) {
            self.act(action);
        }
        self.inbound = None;
        self.actions = out;
        while let Some(input) = self.followups.pop() {
            self.step(input);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Send { to, msg, after } => {
                let packet = frame(&msg, &mut self.frame_buf);
                if after <= self.durable {
                    self.deliver(&to, packet);
                } else {
                    self.held.push_back((after, to, packet));
                }
            }
            Action::Persist { seq, record } => match self.journal.append(seq, &record) {
                Ok(rolled) => {
                    self.shared.stats.votes_logged.fetch_add(1, Relaxed);
                    if let Some(first_decree) = rolled {
                        self.followups.push(Input::LogRolled { first_decree });
                    }
                }
                Err(e) => self.fail(format!("journal append failed: {e}")),
            },
            Action::Execute { vote, cookies } => {
                self.shared.passed_seq.fetch_max(vote.header.decree, Relaxed);
                self.shared.stats.decrees_executed.fetch_add(1, Relaxed);
                self.stopped |= !self.backlog.execute(vote, cookies, &self.journal, &self.work);
            }
            Action::Abort { cookie, reason, config: true } => self.hand_to_exec(Work::AbortConfig { cookie, code: abort_code(reason) }),
            Action::Abort { cookie, reason, config: false } => self.hand_to_exec(Work::Abort { cookie, code: abort_code(reason) }),
            Action::NotifyStatus { primary } => {
                self.shared.is_primary.store(primary, Relaxed);
                self.hand_to_exec(Work::Status(primary));
            }
            Action::NotifyPrimaryRecovered => self.hand_to_exec(Work::PrimaryRecovered),
            Action::FetchVotes { from, decree } => self.fetch_votes(from, decree),
            Action::ShutDown => self.stopped = true,
            Action::ConfigurationChanged { config, cookie } => {
                for node in &config.members.nodes {
                    self.nodes.insert(node.id, node.clone());
                }
                self.hand_to_exec(Work::ConfigChanged { config, cookie });
            }
            Action::Defunct(n) => {
                if let Err(e) = write_defunct(&self.dir, n) {
                    self.fail(format!("defunct.txt could not be written: {e}"));
                }
            }
            Action::SaveCheckpoint(cp) => self.hand_to_exec(Work::Save(cp)),
            Action::Rejected { from, kind, reason } => self.rejected(from, kind, reason),
            Action::FetchCheckpoint { from, decree, size, load } => self.fetch_checkpoint(from, decree, size, load),
            Action::LoadCheckpoint(cp) => {
                let path = self.checkpoints.path_of(cp.decree);
                if !path.exists() {
                    return self.fail(format!("{}: the fetched checkpoint to load is gone", path.display()));
                }
                self.journal.restart_at(cp.decree + 1);
                self.hand_to_exec(Work::Load { checkpoint: cp, path });
            }
        }
        self.refresh_peers();
    }

    /// The replica cannot go on: it fails (the reason is kept for `RslReplica::failure`) and
    /// this thread stops as on `unload`.
    fn fail(&mut self, reason: String) {
        self.shared.fail(reason);
        self.stopped = true;
    }

    fn hand_to_exec(&mut self, work: Work) {
        if !self.backlog.hand(work, &self.work) {
            self.stopped = true;
        }
    }

    fn deliver(&mut self, to: &Dest, packet: Bytes) {
        match to {
            Dest::One(id) => {
                self.transport.send(id, packet);
            }
            Dest::All => {
                let me = self.core.me();
                for node in self.core.paxos_configuration().members.nodes.iter().filter(|n| n.id != me) {
                    self.transport.send(&node.id, packet.clone());
                }
            }
        }
    }

    fn release_held(&mut self) {
        while self.held.front().is_some_and(|(after, _, _)| *after <= self.durable) {
            let (_, to, packet) = self.held.pop_front().expect("checked");
            self.deliver(&to, packet);
        }
    }

    /// A Join from a member of a configuration we have not seen yet: its learn port is in the
    /// message and its address is where it came from (as the original does). It becomes a
    /// transport peer too, so that our JoinRequests reach it: a replica that was never
    /// bootstrapped knows no other node. Bounded by `MAX_JOINERS`; a joiner that a
    /// configuration names since is no longer one.
    fn remember_joiner(&mut self, id: MemberId, ip: IpAddr, learn_port: u16) {
        let IpAddr::V4(ip) = ip.to_canonical() else { return };
        let node = Node { id, ip, rsl_port: learn_port.saturating_sub(1), learn_port, app_port: 0, host_name: Bytes::new() };
        let core = &self.core;
        let configured =
            |id: &MemberId| [core.paxos_configuration(), core.configuration()].iter().any(|c| c.members.nodes.iter().any(|n| n.id == *id));
        add_joiner(&mut self.joiners, &mut self.nodes, node, configured);
        self.peers_for = (u32::MAX, u32::MAX);
    }

    /// Keeps the transport's peers to every node of the Paxos and state configurations.
    fn refresh_peers(&mut self) {
        let key = (self.core.paxos_configuration().number, self.core.configuration().number);
        if key == self.peers_for {
            return;
        }
        self.peers_for = key;
        for node in self.core.paxos_configuration().members.nodes.iter().chain(&self.core.configuration().members.nodes) {
            self.nodes.insert(node.id, node.clone());
        }
        let me = self.core.me();
        let peers: Vec<_> = self.nodes.values().filter(|n| n.id != me).map(|n| (n.id, paxos_addr(n))).collect();
        self.transport.set_peers(&peers);
    }

    fn request(&self, decree: u64, body: Body) -> Message {
        let (_, ballot) = self.core.accepted();
        Message::new(Header::new(self.version, self.core.me(), decree, self.core.paxos_configuration().number, ballot), body)
    }

    fn fetch_votes(&mut self, from: MemberId, decree: u64) {
        let Some(addr) = self.nodes.get(&from).map(learn_addr) else {
            return self.followups.push(Input::Learned { from, records: Vec::new() });
        };
        let request = self.request(decree, Body::FetchVotes);
        let (events, limit, timeout) = (self.events.clone(), self.limits.max_learn_bytes, self.limits.receive_timeout);
        let tls = self.tls.clone();
        let task = async move {
            let peer = learn::Peer { addr, tls: tls.as_deref() };
            let records = learn::fetch_votes(peer, &request, limit, timeout).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "learning votes failed");
                Vec::new()
            });
            let _ = events.send(Event::Input(Input::Learned { from, records }));
        };
        spawn_task(&self.rt, task, self.fatal(format!("learning votes from {from}")));
    }

    /// What a background task's panic becomes: this replica's failure.
    fn fatal(&self, what: String) -> impl FnOnce(String) + Send + 'static {
        let events = self.events.clone();
        move |panic| drop(events.send(Event::Fatal(format!("{what} panicked: {panic}"))))
    }

    fn fetch_checkpoint(&mut self, from: MemberId, decree: u64, size: u64, load: bool) {
        let Some(addr) = self.nodes.get(&from).map(learn_addr) else {
            return self.followups.push(Input::CheckpointFetched(None));
        };
        if size == 0 {
            // A peer that never saved a checkpoint announces decree 0, size 0 (a ring started
            // from a member list has none until its logs roll): there is nothing to copy. The
            // original tries and fails; the core goes on as after any failed fetch.
            tracing::debug!(peer = %from, decree, "the peer has no checkpoint to offer");
            return self.followups.push(Input::CheckpointFetched(None));
        }
        let request = self.request(decree, Body::FetchCheckpoint);
        let (events, work, timeout) = (self.events.clone(), self.work.clone(), self.limits.receive_timeout);
        let temp = self.checkpoints.temp_path();
        let fatal = self.fatal(format!("fetching checkpoint {decree} from {from}"));
        let tls = self.tls.clone();
        let task = async move {
            let peer = learn::Peer { addr, tls: tls.as_deref() };
            let installed = match learn::fetch_checkpoint(peer, &request, size, &temp, timeout, 5).await {
                Ok(()) => super::exec::install(&work, temp, decree).await,
                Err(e) => Err(e.to_string()),
            };
            let event = match installed {
                Ok((saved, header)) if load => Event::Input(Input::CheckpointFetched(Some((core_checkpoint(header), saved.size)))),
                Ok((saved, _)) => Event::CheckpointDone { decree, size: saved.size, path: saved.path, copied: true },
                Err(e) => {
                    tracing::warn!(error = %e, decree, "fetching a checkpoint failed");
                    Event::Input(Input::CheckpointFetched(None))
                }
            };
            let _ = events.send(event);
        };
        spawn_task(&self.rt, task, fatal);
    }

    /// A checkpoint is in place: truncate the logs it covers and tell the core.
    fn checkpoint_done(&mut self, decree: u64, size: u64, path: PathBuf, copied: bool) {
        // The execute thread may have placed (and pruned down to) newer checkpoints since it
        // reported this one: the logs this one needs are kept all the same.
        let oldest = self.checkpoints.oldest().unwrap_or(decree).min(decree);
        let executed = self.shared.current_seq.load(Relaxed);
        let min_decree_in_log = self.journal.truncate(decree, oldest, executed);
        if copied {
            self.hand_to_exec(Work::Copied { seq: decree, path: Some(path), cookie: None });
        }
        self.step(Input::CheckpointSaved { decree, size, min_decree_in_log });
    }

    /// What API calls read without asking this thread.
    /// Takes the view's lock only when something in it changed.
    fn publish(&mut self) {
        self.shared.stats.log_syncs.store(self.journal.syncs(), Relaxed);
        self.shared.queued_bytes.store(self.core.queued_bytes() as u64, Relaxed);
        let (_, ballot) = self.core.accepted();
        let now = ((!ballot.is_empty()).then_some(ballot.member), Some(self.core.role()));
        if now != self.published {
            self.published = now;
            let mut view = self.shared.view();
            (view.primary, view.role) = now;
        }
    }

    fn shutdown(mut self) {
        let mut out = std::mem::take(&mut self.actions);
        self.core.stop(&mut out);
        for action in out {
            if let Action::Abort { .. } = action {
                self.act(action);
            }
        }
        self.shared.is_primary.store(false, Relaxed);
        self.shared.shutting_down.store(true, Relaxed);
        self.backlog.stop(&self.work);
        let _ = self.work.send(Work::Stop);
        self.transport.shutdown();
        // A stopped journal's cause is already the replica's failure, reported once.
        if let (Err(e), None) = (self.journal.close(), self.shared.failure.get()) {
            tracing::error!(error = %e, "journal close");
        }
    }
}

/// Identity binding: a connection whose certificate names (CN or DNS SAN) a member we know
/// speaks for that member only. The member it names, if the message's `sender` is not one of
/// those it names; None when it may speak (no TLS, or a certificate naming no member, such as
/// one service certificate shared by every replica: it binds nothing).
fn certified_other(nodes: &BTreeMap<MemberId, Node>, sender: &MemberId, peer: Option<&PeerIdentity>) -> Option<MemberId> {
    let mut named = peer?.names.iter().filter_map(|name| MemberId::new(name)).filter(|id| nodes.contains_key(id));
    let first = named.next()?;
    (first != *sender && named.all(|id| id != *sender)).then_some(first)
}

/// `GetReplica` (api-behavior §5 item 15): whether a message from `ip` may speak for the node
/// configured at `configured`. Any loopback address stands for any other (a peer on this host
/// connects from 127.0.0.1 whatever its own address). A replica that listens on every address
/// (`listen_on_all_ips`) runs on a host with several, as its peers may: there the address a
/// peer connects from says nothing, and only the core's membership checks apply.
fn from_its_address(configured: Ipv4Addr, ip: IpAddr, listen_on_all_ips: bool) -> bool {
    let ip = ip.to_canonical();
    listen_on_all_ips || ip == IpAddr::V4(configured) || (ip.is_loopback() && configured.is_loopback())
}

/// Puts a joiner's node among the known `nodes`, remembering at most `MAX_JOINERS` joiners:
/// past that the oldest is forgotten, and so is its node unless a configuration names it since.
fn add_joiner(joiners: &mut VecDeque<MemberId>, nodes: &mut BTreeMap<MemberId, Node>, node: Node, configured: impl Fn(&MemberId) -> bool) {
    if joiners.len() >= MAX_JOINERS {
        let oldest = joiners.pop_front().expect("full");
        if !configured(&oldest) {
            nodes.remove(&oldest);
        }
    }
    joiners.push_back(node.id);
    nodes.insert(node.id, node);
    debug_assert!(joiners.len() <= MAX_JOINERS);
}

fn paxos_addr(node: &Node) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(node.ip, node.rsl_port))
}

/// A learn port of 0 means the Paxos port plus one.
pub(crate) fn learn_addr(node: &Node) -> SocketAddr {
    let port = if node.learn_port == 0 { node.rsl_port.wrapping_add(1) } else { node.learn_port };
    SocketAddr::V4(SocketAddrV4::new(node.ip, port))
}

#[cfg(test)]
mod binding_tests {
    use super::super::tls::Thumbprint;
    use super::*;
    use std::net::Ipv4Addr;

    fn id(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }

    fn nodes(ids: &[&str]) -> BTreeMap<MemberId, Node> {
        ids.iter().map(|s| (id(s), crate::runtime::api::node(s, Ipv4Addr::LOCALHOST, 1000).unwrap())).collect()
    }

    fn cert(names: &[&str]) -> PeerIdentity {
        PeerIdentity { thumbprint: Thumbprint([0; 20]), names: names.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn a_certificate_naming_a_member_speaks_for_it_only() {
        let ring = nodes(&["1", "2", "3"]);
        assert_eq!(certified_other(&ring, &id("2"), Some(&cert(&["2"]))), None);
        assert_eq!(certified_other(&ring, &id("3"), Some(&cert(&["2"]))), Some(id("2")));
        // Any member id it names will do; names that are no member's bind nothing.
        assert_eq!(certified_other(&ring, &id("3"), Some(&cert(&["host.example", "2", "3"]))), None);
        assert_eq!(certified_other(&ring, &id("4"), Some(&cert(&["host.example", "2"]))), Some(id("2")));
        // A shared service certificate, and no TLS at all: no binding.
        assert_eq!(certified_other(&ring, &id("3"), Some(&cert(&["rsl-service", "9"]))), None);
        assert_eq!(certified_other(&ring, &id("3"), None), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const HOME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    #[test]
    fn a_member_is_heard_only_from_its_own_address() {
        assert!(from_its_address(HOME, IpAddr::V4(HOME), false));
        assert!(!from_its_address(HOME, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), false), "another host claiming the member");
        assert!(!from_its_address(HOME, IpAddr::V4(Ipv4Addr::LOCALHOST), false), "this host claiming a remote member");
        // The same address seen through an IPv6 socket.
        assert!(from_its_address(HOME, IpAddr::V6(HOME.to_ipv6_mapped()), false));
        assert!(!from_its_address(HOME, IpAddr::V6(Ipv6Addr::LOCALHOST), false));
    }

    #[test]
    fn any_loopback_address_stands_for_another() {
        let loopback = Ipv4Addr::new(127, 0, 0, 2);
        assert!(from_its_address(loopback, IpAddr::V4(Ipv4Addr::LOCALHOST), false));
        assert!(from_its_address(Ipv4Addr::LOCALHOST, IpAddr::V6(Ipv6Addr::LOCALHOST), false));
        assert!(from_its_address(Ipv4Addr::LOCALHOST, IpAddr::V6(loopback.to_ipv6_mapped()), false));
        assert!(!from_its_address(Ipv4Addr::LOCALHOST, IpAddr::V4(HOME), false), "a remote host claiming a local member");
    }

    #[test]
    fn listening_on_all_addresses_skips_the_check() {
        assert!(from_its_address(HOME, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 9)), true));
        assert!(from_its_address(HOME, IpAddr::V4(Ipv4Addr::LOCALHOST), true));
    }

    #[test]
    fn rejection_warnings_are_rate_limited_and_count_what_they_held_back() {
        let limit = RateLimited::every(REJECTION_LOG_INTERVAL);
        assert_eq!(limit.allow(), Some(0), "the first rejection is logged");
        for _ in 0..5 {
            assert_eq!(limit.allow(), None, "the next ones within the interval are only counted");
        }
        // A short interval to see the next warning report what was held back (waiting on the
        // condition, not on a clock).
        let limit = RateLimited::every(Duration::from_millis(20));
        assert_eq!(limit.allow(), Some(0));
        let mut held = 0;
        let reported = loop {
            match limit.allow() {
                Some(n) => break n,
                None => held += 1,
            }
            std::thread::yield_now();
        };
        assert_eq!(reported, held);
        assert!(RateLimited::every(Duration::ZERO).allow().is_some() && RateLimited::every(Duration::MAX).allow().is_some());
    }

    fn joiner(n: u32) -> Node {
        let id = MemberId::new(&format!("joiner{n}")).expect("id");
        Node { id, ip: HOME, rsl_port: 20_000, learn_port: 20_001, app_port: 0, host_name: Bytes::new() }
    }

    #[test]
    fn at_most_eight_joiners_are_remembered_the_oldest_forgotten_first() {
        let (mut joiners, mut nodes) = (VecDeque::new(), BTreeMap::new());
        for n in 1..=MAX_JOINERS as u32 {
            add_joiner(&mut joiners, &mut nodes, joiner(n), |_| false);
        }
        assert_eq!((joiners.len(), nodes.len()), (MAX_JOINERS, MAX_JOINERS));
        let ninth = joiner(MAX_JOINERS as u32 + 1);
        add_joiner(&mut joiners, &mut nodes, ninth.clone(), |_| false);
        assert_eq!((joiners.len(), nodes.len()), (MAX_JOINERS, MAX_JOINERS), "the ninth does not grow the set");
        assert!(!nodes.contains_key(&joiner(1).id), "the oldest joiner is forgotten");
        assert!(nodes.contains_key(&ninth.id) && joiners.back() == Some(&ninth.id));
        // A forgotten joiner that a configuration names since keeps its node.
        let second = joiner(2).id;
        add_joiner(&mut joiners, &mut nodes, joiner(100), |id| *id == second);
        assert!(nodes.contains_key(&second) && !joiners.contains(&second));
        assert_eq!(joiners.len(), MAX_JOINERS);
    }
}
