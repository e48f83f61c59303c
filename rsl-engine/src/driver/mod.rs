//! The driver: carries out one replica's core actions (sends held until their persist is
//! durable, persists, executions, checkpoint saves, loads and fetches, follow-up inputs)
//! against a [`Host`], and feeds the core what comes back. The runtime's protocol thread and
//! the simulator both drive replicas through it, so every simulated seed runs this code.
//!
//! Like the core it is sans-IO: the host owns the disk, the network, the clock and the
//! executor; the driver owns the order things happen in.

pub mod backlog;

use crate::format::{Body, ConfigInfo, Header, MemberId, MemberSet, Message, MsgKind, Node};
use crate::paxos::{
    AbortReason, Action, Application, BootstrapError, Checkpoint, Cookie, Dest, Input, Micros, Rejection, Replica, SubmitError,
};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// At most this many member ids are remembered from Joins announcing a configuration newer
/// than ours (the oldest is forgotten first). Learning from a joiner needs its address, which
/// the Join gives; but nothing verifies a Join, so any id could otherwise add a node.
const MAX_JOINERS: usize = 8;

/// What the executor (the owner of the state machine) receives from the core, in order.
#[derive(Debug)]
pub enum Execution {
    /// Run a chosen decree (`ExecuteReplicatedRequest` for each request, or a reconfiguration).
    Decree {
        /// The chosen vote.
        vote: Arc<Message>,
        /// This replica's cookies for its requests, in order (empty unless it proposed them).
        cookies: Vec<Cookie>,
    },
    /// Hand a cookie back unexecuted (`AbortRequest`, `AbortChangeConfiguration`).
    Abort {
        /// The cookie.
        cookie: Cookie,
        /// Why it comes back.
        reason: AbortReason,
        /// A configuration change's cookie rather than a request's.
        config: bool,
    },
    /// `NotifyStatus`: the replica became primary (true) or stopped being it.
    Status(bool),
    /// `NotifyPrimaryRecovered`: the decree the new primary re-proposed has executed.
    PrimaryRecovered,
    /// The state configuration became `config`.
    ConfigChanged {
        /// The new configuration.
        config: ConfigInfo,
        /// The `ChangeConfiguration` cookie, on the replica that asked for it.
        cookie: Option<Cookie>,
    },
    /// Save a checkpoint; the host reports it through [`Driver::checkpoint_done`].
    Save(Checkpoint),
    /// Replace the state with this checkpoint, already in place ([`Host::load_checkpoint`]).
    Load(Checkpoint),
    /// The primary copied the checkpoint of this decree from a peer instead of saving one.
    Copied {
        /// The copied checkpoint's decree.
        decree: u64,
    },
}

/// The world around one replica. Results of the long operations come back later through
/// the driver: durability as [`Driver::durable`], fetched votes as `Input::Learned`, a fetched
/// checkpoint as `Input::CheckpointFetched` (to load) or [`Driver::checkpoint_done`] (copied).
pub trait Host {
    /// Now, on the clock the core's timers run on.
    fn now(&self) -> Micros;
    /// Sends a message to each of these members (never to this replica).
    fn send(&mut self, to: &[MemberId], msg: &Arc<Message>);
    /// Sends a message to every other member of the configuration: a host may skip a member
    /// still holding many unsent packets (RSL's `m_maxOutstandingPerReplica`); the protocol
    /// resends what a member missed.
    fn broadcast(&mut self, to: &[MemberId], msg: &Arc<Message>) {
        self.send(to, msg)
    }
    /// Appends a record to the journal; durability is reported later, in `seq` order.
    /// `Some(first decree)` when this record started a new log file.
    fn persist(&mut self, seq: u64, record: &Arc<Message>) -> Result<Option<u64>, String>;
    /// Queues work for the executor; it runs in the order queued.
    fn execute(&mut self, item: Execution);
    /// How far the executor is: every decree below `.0` has finished executing (a new
    /// process may count afresh from 0), and `.1` says queued decrees wait on disk rather
    /// than in memory. Asked before every input; the core hears of changes.
    fn executed(&self) -> (u64, bool);
    /// Drops the logs a checkpoint of `decree` covers; returns the lowest decree still logged.
    fn truncate_log(&mut self, decree: u64) -> u64;
    /// The next vote for a new decree starts a new log file, whatever the current one's
    /// length (a time-based checkpoint is due); `persist` reports that roll.
    fn roll_log(&mut self);
    /// A fetched checkpoint becomes this replica's: its logs restart after it (the core logs
    /// its vote and promise there again).
    fn load_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), String>;
    /// Persists the highest defunct configuration number (`defunct.txt`).
    fn write_defunct(&mut self, highest: u32) -> Result<(), String>;
    /// Asks `node` for its logged votes from the request's decree on.
    fn fetch_votes(&mut self, node: &Node, request: Message);
    /// Downloads `node`'s checkpoint named by the request (`size` bytes).
    fn fetch_checkpoint(&mut self, node: &Node, request: Message, size: u64, load: bool);
    /// A message (from `peer`) or a record of our own that was refused.
    fn rejected(&mut self, from: MemberId, kind: MsgKind, reason: Rejection, peer: Option<IpAddr>);
    /// The nodes this replica talks to changed (every node of both configurations, joiners).
    fn set_peers(&mut self, peers: &[&Node]);
    /// The replica cannot go on: it stops, and the reason is reported.
    fn fail(&mut self, reason: String);
    /// Sees each action before it is carried out, with the core that produced it.
    fn observe(&mut self, _core: &Replica, _action: &Action) {}
}

/// Where a peer's message came from.
pub struct Inbound<'a> {
    /// The peer's address, checked against the member it claims to be.
    pub ip: IpAddr,
    /// The names (subject CN, DNS SANs) of the certificate the connection authenticated, if any.
    pub certified: Option<&'a [String]>,
}

/// One replica: its core and what carrying out its actions needs to remember.
pub struct Driver {
    core: Replica,
    app: Box<dyn Application + Send>,
    /// Every node ever named by a configuration, and remembered joiners: where a member is.
    nodes: BTreeMap<MemberId, Node>,
    /// Ids remembered from Joins (`MAX_JOINERS`), oldest first.
    joiners: VecDeque<MemberId>,
    /// The configuration numbers the host's peers were last set for.
    peers_for: (u32, u32),
    /// Sends waiting for a persist to be durable, in the order they were asked for.
    held: VecDeque<(u64, Dest, Arc<Message>)>,
    durable: u64,
    actions: Vec<Action>,
    /// Inputs that actions produced (a log roll, a fetch that cannot start), stepped in order
    /// after the actions that produced them.
    followups: VecDeque<Input>,
    /// The address of the message whose actions are being carried out (for rejections).
    inbound: Option<IpAddr>,
    /// The host listens on every address: a peer's source address says nothing.
    listen_on_all_ips: bool,
    targets: Vec<MemberId>,
    stopped: bool,
    /// What the core last heard of the executor's progress (`Host::executed`).
    executed: (u64, bool),
}

impl Driver {
    /// A driver for `core`, asking `app` on the protocol path; `listen_on_all_ips` turns off the
    /// source-address check of peers.
    pub fn new(core: Replica, app: Box<dyn Application + Send>, listen_on_all_ips: bool) -> Driver {
        Driver {
            core,
            app,
            nodes: BTreeMap::new(),
            joiners: VecDeque::new(),
            peers_for: (u32::MAX, u32::MAX),
            held: VecDeque::new(),
            durable: 0,
            actions: Vec::new(),
            followups: VecDeque::new(),
            inbound: None,
            listen_on_all_ips,
            targets: Vec::new(),
            stopped: false,
            executed: (0, false),
        }
    }

    /// The protocol core, for inspection.
    pub fn core(&self) -> &Replica {
        &self.core
    }

    /// The highest persist known durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable
    }

    /// The replica shut down (`ShutDown`, a last decree) or failed: drive it no more.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Starts the protocol.
    pub fn start(&mut self, host: &mut impl Host) {
        self.refresh_peers(host);
        self.drive(host, |core, now, app, out| core.start(now, app, out));
    }

    /// Feeds one input.
    pub fn step(&mut self, input: Input, host: &mut impl Host) {
        self.drive(host, |core, now, app, out| core.step(now, input, app, out));
    }

    /// Persists up to `seq` are on disk: the sends they gated go out, then the core hears it.
    pub fn durable(&mut self, seq: u64, host: &mut impl Host) {
        debug_assert!(seq >= self.durable, "durability is reported in order");
        self.durable = self.durable.max(seq);
        self.release_held(host);
        self.step(Input::Durable(seq), host);
    }

    /// Sends every held message whose persist is now durable, in the order they were asked
    /// for; the others keep waiting, in order. (Gates are not monotonic: an answer gated on an
    /// old promise can follow a vote gated on a newer persist, and must not wait for it.)
    fn release_held(&mut self, host: &mut impl Host) {
        let before = self.held.len();
        for _ in 0..before {
            let (after, to, msg) = self.held.pop_front().expect("counted");
            if after <= self.durable {
                self.send(&to, &msg, host);
            } else {
                self.held.push_back((after, to, msg));
            }
        }
        debug_assert!(self.held.len() <= before && self.held.iter().all(|(after, _, _)| *after > self.durable));
    }

    /// A peer's message: from the member its connection's certificate names, if it names one;
    /// from the address configured for the member it names, if we know it; then the core
    /// checks the rest.
    pub fn on_message(&mut self, msg: Arc<Message>, origin: Inbound<'_>, host: &mut impl Host) {
        let (from, ip) = (msg.header.sender, origin.ip);
        if certified_other(|id| self.nodes.contains_key(id), &from, origin.certified).is_some() {
            return host.rejected(from, msg.kind(), Rejection::NotCertified, Some(ip));
        }
        let listen_on_all_ips = self.listen_on_all_ips;
        if !self.nodes.get(&from).is_none_or(|node| from_its_address(node.ip, ip, listen_on_all_ips)) {
            return host.rejected(from, msg.kind(), Rejection::WrongAddress, Some(ip));
        }
        if let Body::Join(join) = &msg.body {
            let newer = msg.header.config > self.core.paxos_configuration().number;
            if newer && !self.nodes.contains_key(&from) {
                self.remember_joiner(from, ip, join.learn_port, host);
            }
        }
        self.inbound = Some(ip);
        self.step(Input::Message { from, msg }, host);
    }

    /// `ReplicateRequest` (`last`: `isLastDecree`, the replica shuts down behind it).
    pub fn submit(&mut self, request: Bytes, cookie: Cookie, exclusive: bool, last: bool, host: &mut impl Host) -> Result<(), SubmitError> {
        self.drive(
            host,
            |core, now, _, out| {
                if last {
                    core.submit_last(now, request, cookie, out)
                } else {
                    core.submit(now, request, cookie, exclusive, out)
                }
            },
        )
    }

    /// `ChangeConfiguration`: proposes `members` as the next configuration (primary only); `cookie`
    /// comes back through `Execution::ConfigChanged` or an abort.
    pub fn change_configuration(&mut self, members: MemberSet, cookie: Cookie, host: &mut impl Host) -> Result<(), SubmitError> {
        self.drive(host, |core, now, _, out| core.change_configuration(now, members, cookie, out))
    }

    /// `Bootstrap`: gives a replica without a configuration its first one.
    pub fn bootstrap(&mut self, members: MemberSet, host: &mut impl Host) -> Result<(), BootstrapError> {
        for node in &members.nodes {
            self.nodes.insert(node.id, node.clone());
        }
        self.drive(host, |core, now, app, out| core.bootstrap(now, members, app, out))
    }

    /// A checkpoint of `decree` is in place (saved here, or `copied` from a peer by the
    /// primary): the logs it covers go, and the core hears of it.
    pub fn checkpoint_done(&mut self, decree: u64, size: u64, copied: bool, host: &mut impl Host) {
        let min_decree_in_log = host.truncate_log(decree);
        if copied {
            host.execute(Execution::Copied { decree });
        }
        self.step(Input::CheckpointSaved { decree, size, min_decree_in_log, copied }, host);
    }

    /// The service's resolver found member `node.id` elsewhere (`ResolveNode`): our messages
    /// go there and its messages must come from there, until a configuration names it again.
    /// A member no longer known is ignored.
    pub fn relocate(&mut self, node: Node, host: &mut impl Host) {
        match self.nodes.get_mut(&node.id) {
            Some(known) if *known != node => *known = node,
            _ => return,
        }
        self.set_host_peers(host);
    }

    /// The replica stops: what it still holds is aborted (as `ShuttingDown`).
    pub fn stop(&mut self, host: &mut impl Host) {
        let mut out = std::mem::take(&mut self.actions);
        self.core.stop(&mut out);
        for action in out.drain(..) {
            if let Action::Abort { cookie, reason, config } = action {
                host.execute(Execution::Abort { cookie, reason, config });
            }
        }
        self.actions = out;
        self.stopped = true;
    }

    /// Runs one call into the core, carries out its actions, then the inputs they produced,
    /// in order, until none is left.
    fn drive<R>(
        &mut self,
        host: &mut impl Host,
        call: impl FnOnce(&mut Replica, Micros, &mut dyn Application, &mut Vec<Action>) -> R,
    ) -> R {
        let mut out = std::mem::take(&mut self.actions);
        debug_assert!(out.is_empty() && self.followups.is_empty(), "one call at a time");
        let executed = host.executed();
        if executed != self.executed {
            self.executed = executed;
            let (below, spilled) = executed;
            self.core.step(host.now(), Input::Executed { below, spilled }, &mut *self.app, &mut out);
        }
        let result = call(&mut self.core, host.now(), &mut *self.app, &mut out);
        self.carry_out(&mut out, host);
        // Follow-ups are this replica's own doing, not the inbound message's.
        self.inbound = None;
        while let Some(input) = self.followups.pop_front() {
            self.core.step(host.now(), input, &mut *self.app, &mut out);
            self.carry_out(&mut out, host);
        }
        debug_assert!(out.is_empty());
        // A send waits only for a persist not yet durable: none is held past its gate.
        debug_assert!(self.held.iter().all(|(after, _, _)| *after > self.durable), "a send held past its persist's durability");
        self.actions = out;
        result
    }

    fn carry_out(&mut self, out: &mut Vec<Action>, host: &mut impl Host) {
        for action in out.drain(..) {
            host.observe(&self.core, &action);
            self.act(action, host);
        }
        self.refresh_peers(host);
    }

    fn act(&mut self, action: Action, host: &mut impl Host) {
        match action {
            Action::Send { to, msg, after } if after <= self.durable => self.send(&to, &msg, host),
            Action::Send { to, msg, after } => self.held.push_back((after, to, msg)),
            Action::Persist { seq, record } => match host.persist(seq, &record) {
                Ok(Some(first_decree)) => self.followups.push_back(Input::LogRolled { first_decree }),
                Ok(None) => {}
                Err(e) => self.fail(format!("journal append failed: {e}"), host),
            },
            Action::Execute { vote, cookies } => host.execute(Execution::Decree { vote, cookies }),
            Action::Abort { cookie, reason, config } => host.execute(Execution::Abort { cookie, reason, config }),
            Action::NotifyStatus { primary } => host.execute(Execution::Status(primary)),
            Action::NotifyPrimaryRecovered => host.execute(Execution::PrimaryRecovered),
            Action::ConfigurationChanged { config, cookie } => {
                for node in &config.members.nodes {
                    self.nodes.insert(node.id, node.clone());
                }
                host.execute(Execution::ConfigChanged { config, cookie });
            }
            Action::FetchVotes { from, decree } => match self.nodes.get(&from) {
                Some(node) => host.fetch_votes(node, self.request(decree, Body::FetchVotes)),
                None => self.followups.push_back(Input::Learned { from, records: Vec::new() }),
            },
            Action::FetchCheckpoint { from, decree, size, load } => self.fetch_checkpoint(from, decree, size, load, host),
            Action::SaveCheckpoint(cp) => host.execute(Execution::Save(cp)),
            Action::RollLog => host.roll_log(),
            Action::LoadCheckpoint(cp) => match host.load_checkpoint(&cp) {
                Ok(()) => host.execute(Execution::Load(cp)),
                Err(e) => self.fail(e, host),
            },
            Action::Defunct(n) => {
                if let Err(e) = host.write_defunct(n) {
                    self.fail(format!("defunct.txt could not be written: {e}"), host);
                }
            }
            Action::Rejected { from, kind, reason } => {
                let peer = self.inbound.or_else(|| self.nodes.get(&from).map(|n| IpAddr::V4(n.ip)));
                host.rejected(from, kind, reason, peer);
            }
            Action::ShutDown => self.stopped = true,
        }
    }

    fn fail(&mut self, reason: String, host: &mut impl Host) {
        self.stopped = true;
        host.fail(reason);
    }

    /// `Dest::All` is every other member of the Paxos configuration. The host's peers are
    /// brought up to date first: an action just before may have changed the configuration,
    /// and a send to a node the host does not know yet would be lost.
    fn send(&mut self, to: &Dest, msg: &Arc<Message>, host: &mut impl Host) {
        self.refresh_peers(host);
        self.targets.clear();
        match to {
            Dest::One(id) => self.targets.push(*id),
            Dest::All => {
                let me = self.core.me();
                self.targets.extend(self.core.paxos_configuration().members.nodes.iter().map(|n| n.id).filter(|id| *id != me));
            }
        }
        debug_assert!(!self.targets.contains(&self.core.me()) || matches!(to, Dest::One(_)));
        match to {
            Dest::All => host.broadcast(&self.targets, msg),
            Dest::One(_) => host.send(&self.targets, msg),
        }
    }

    fn fetch_checkpoint(&mut self, from: MemberId, decree: u64, size: u64, load: bool, host: &mut impl Host) {
        match self.nodes.get(&from) {
            // A peer that never saved a checkpoint announces decree 0, size 0 (a ring started
            // from a member list has none until its logs roll): there is nothing to copy. The
            // original tries and fails; the core goes on as after any failed fetch.
            Some(_) if size == 0 => self.followups.push_back(Input::CheckpointFetched(None)),
            Some(node) => host.fetch_checkpoint(node, self.request(decree, Body::FetchCheckpoint), size, load),
            None => self.followups.push_back(Input::CheckpointFetched(None)),
        }
    }

    /// A learn-port request in this replica's name.
    fn request(&self, decree: u64, body: Body) -> Message {
        let (_, ballot) = self.core.accepted();
        let header = Header::new(self.core.version(), self.core.me(), decree, self.core.paxos_configuration().number, ballot);
        Message::new(header, body)
    }

    /// A Join from a member of a configuration we have not seen yet: its learn port is in the
    /// message and its address is where it came from (as the original does). It becomes a
    /// peer too, so that our JoinRequests reach it: a replica that was never bootstrapped
    /// knows no other node. Bounded by `MAX_JOINERS`; a joiner that a configuration names
    /// since is no longer one.
    fn remember_joiner(&mut self, id: MemberId, ip: IpAddr, learn_port: u16, host: &mut impl Host) {
        let IpAddr::V4(ip) = ip.to_canonical() else { return };
        let node = Node { id, ip, rsl_port: learn_port.saturating_sub(1), learn_port, app_port: 0, host_name: Bytes::new() };
        let core = &self.core;
        let configured =
            |id: &MemberId| [core.paxos_configuration(), core.configuration()].iter().any(|c| c.members.nodes.iter().any(|n| n.id == *id));
        add_joiner(&mut self.joiners, &mut self.nodes, node, configured);
        // Only the joiners changed: the members keep where they are, relocations included (a
        // Join, which anyone can send without TLS, must not move a member back).
        self.set_host_peers(host);
    }

    /// Keeps the host's peers to every node of the Paxos and state configurations.
    fn refresh_peers(&mut self, host: &mut impl Host) {
        let key = (self.core.paxos_configuration().number, self.core.configuration().number);
        if key == self.peers_for {
            return;
        }
        self.peers_for = key;
        for node in self.core.paxos_configuration().members.nodes.iter().chain(&self.core.configuration().members.nodes) {
            self.nodes.insert(node.id, node.clone());
        }
        self.set_host_peers(host);
    }

    /// The host's peers: every node known but this replica.
    fn set_host_peers(&self, host: &mut impl Host) {
        let me = self.core.me();
        let peers: Vec<&Node> = self.nodes.values().filter(|n| n.id != me).collect();
        host.set_peers(&peers);
    }
}

/// Identity binding: a connection whose certificate names (CN or DNS SAN) a member we know
/// speaks for that member only. The member it names, if the message's `sender` is not one of
/// those it names; None when it may speak (no TLS, or a certificate naming no member, such as
/// one service certificate shared by every replica: it binds nothing). The learn client holds
/// a server to the same rule (`runtime/learn.rs`).
pub(crate) fn certified_other(is_member: impl Fn(&MemberId) -> bool, sender: &MemberId, names: Option<&[String]>) -> Option<MemberId> {
    let mut named = names?.iter().filter_map(|name| MemberId::new(name)).filter(|id| is_member(id));
    let first = named.next()?;
    (first != *sender && named.all(|id| id != *sender)).then_some(first)
}

/// `GetReplica` (docs/spec/behavior.md §5 item 15): whether a message from `ip` may speak for the node
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

#[cfg(test)]
mod tests;
