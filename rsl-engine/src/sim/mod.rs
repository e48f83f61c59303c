//! The deterministic simulator: replicas of one ring on a virtual clock, with a seeded network
//! (delay, reordering, duplication, loss, symmetric and one-way partitions), disks that lose
//! or keep unsynced records when a process crashes, restarts, and slow disks; optionally an
//! adversary that forges messages. The [`checker`] judges every step. A seed fully determines a
//! run.

mod adversary;
pub mod checker;

use crate::format::{Ballot, Body, ConfigInfo, MemberId, MemberSet, Message, MsgKind, Node as MemberNode, Version};
use crate::paxos::{Action, Application, Checkpoint, CoreConfig, Dest, Input, Micros, Rejection, Replica, SplitMix64, MS, SEC};
use bytes::{BufMut, Bytes, BytesMut};
use checker::{Checker, Proc};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The shape of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Members of the first configuration.
    pub replicas: usize,
    /// Nodes outside it that reconfigurations may add.
    pub spares: usize,
    /// Start unbootstrapped and `Bootstrap` the ring (v4) instead of the legacy member list.
    pub bootstrap: bool,
    /// Reconfigurations happen during the faults.
    pub churn: bool,
    /// Decrees in flight; more than 1 runs protocol version 7.
    pub window: usize,
    /// Faults are injected until this time; then everything heals.
    pub faults_until: Micros,
    /// After healing, progress must be made within this long.
    pub progress_within: Micros,
    pub loss: f64,
    pub duplication: f64,
    pub max_delay: Micros,
    pub request_interval: Micros,
    /// Forged messages with extreme field values are injected during the faults
    /// (`adversary.rs`). The checks forged votes can break are then off.
    pub adversary: bool,
}

impl SimConfig {
    pub fn new(seed: u64, replicas: usize) -> SimConfig {
        SimConfig {
            seed,
            replicas,
            spares: 2,
            bootstrap: seed % 4 == 1,
            churn: seed.is_multiple_of(2),
            window: 1,
            faults_until: 20 * SEC,
            progress_within: 25 * SEC,
            loss: 0.05,
            duplication: 0.02,
            max_delay: 20 * MS,
            request_interval: 10 * MS,
            adversary: false,
        }
    }

    /// The same run with the adversary on or off.
    pub fn with_adversary(mut self, on: bool) -> SimConfig {
        self.adversary = on;
        self
    }

    /// The same run with `window` decrees in flight.
    pub fn with_window(mut self, window: usize) -> SimConfig {
        self.window = window;
        self
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --profile soak -p rsl-engine --bin rsl-sim -- --seed {} --replicas {} --window {}{}",
            self.seed,
            self.replicas,
            self.window,
            if self.adversary { " --adversary" } else { "" }
        )
    }
}

/// The protocol timings of simulated replicas: RSL's, scaled down twentyfold so that a run
/// covers many elections.
pub fn sim_core_config() -> CoreConfig {
    CoreConfig {
        heartbeat_interval: 100 * MS,
        election_delay: 500 * MS,
        election_randomize_pct: 10,
        max_election_randomize: 50 * MS,
        new_leader_grace_period: 750 * MS,
        initialize_retry_interval: 50 * MS,
        resend_interval: 50 * MS,
        ..CoreConfig::default()
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: usize,
        from: usize,
        msg: Arc<Message>,
    },
    DiskDone {
        node: usize,
        incarnation: u32,
        seq: u64,
    },
    Learned {
        node: usize,
        incarnation: u32,
        from: MemberId,
        records: Vec<Arc<Message>>,
    },
    Crash(usize),
    Restart(usize),
    Partition {
        blocked: Vec<(usize, usize)>,
        until: Micros,
    },
    /// The primary, if any, is asked to relinquish.
    Relinquish,
    /// The primary, if any, crashes (restarting after `down`), or is cut off with one follower.
    StrikePrimary {
        crash: bool,
        down: Micros,
        until: Micros,
    },
    /// The primary, if any, is asked to change the configuration to these nodes.
    Reconfigure(Vec<usize>),
    /// Node 0 is asked to bootstrap the first configuration.
    Bootstrap,
    LogRolled {
        node: usize,
        incarnation: u32,
        first_decree: u64,
    },
    CheckpointWritten {
        node: usize,
        incarnation: u32,
        cp: Checkpoint,
    },
    CheckpointFetched {
        node: usize,
        incarnation: u32,
        fetched: Option<(Checkpoint, u64)>,
        load: bool,
    },
    Heal,
    /// The adversary sends a forged message to a random replica.
    Inject,
}

struct Node {
    id: MemberId,
    replica: Option<Replica>,
    incarnation: u32,
    durable: Vec<Arc<Message>>,
    /// Persists not yet durable, in order, with their sequence numbers.
    pending: VecDeque<(u64, Arc<Message>)>,
    durable_seq: u64,
    /// A flush is in flight (group commit: it covers every record queued before it started).
    flushing: bool,
    /// Sends waiting for a persist to become durable.
    held: Vec<(u64, Dest, Arc<Message>)>,
    slow_disk: bool,
    /// The newest checkpoint and its size; the log before its next vote is gone.
    checkpoint: Option<(Checkpoint, u64)>,
    /// Votes for new decrees logged since the last log roll, and how many make a roll.
    since_roll: usize,
    roll_every: usize,
    last_logged: u64,
    /// `defunct.txt`.
    defunct: u32,
}

/// Answers the application's questions: always yes.
struct SimApp;
impl Application for SimApp {}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    pub decrees: usize,
    pub acknowledged: usize,
    /// How often a replica became primary, relinquished, crashed, learned votes from a peer,
    /// saved a checkpoint, caught up by loading a peer's, and (as primary) copied one.
    pub elections: usize,
    pub relinquished: usize,
    pub crashes: usize,
    pub learned: usize,
    pub checkpoints_saved: usize,
    pub checkpoints_loaded: usize,
    pub checkpoints_copied: usize,
    /// The highest configuration number any replica reached.
    pub configurations: u32,
    /// Messages the adversary injected, and messages or records the replicas refused.
    pub injected: usize,
    pub rejected: usize,
    pub violations: Vec<String>,
}

pub struct Sim {
    cfg: SimConfig,
    core: CoreConfig,
    rng: SplitMix64,
    now: Micros,
    nodes: Vec<Node>,
    events: BinaryHeap<Reverse<(Micros, u64, usize)>>,
    payloads: Vec<Option<Event>>,
    event_seq: u64,
    blocked: BTreeSet<(usize, usize)>,
    loss: f64,
    duplication: f64,
    checker: Checker,
    next_request: u64,
    next_submit: Micros,
    healed_at: Option<Micros>,
    /// Pipelined: a reconfiguration that found no primary, for the next one to be elected.
    deferred_reconfiguration: Option<Vec<usize>>,
    actions: Vec<Action>,
    counts: [usize; 7],
    adversary: Option<adversary::Adversary>,
    rejected: usize,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let window = cfg.window;
        let ids: Vec<MemberId> = (1..=cfg.replicas + cfg.spares).map(|i| MemberId::new(&i.to_string()).expect("numeric id")).collect();
        let nodes = ids
            .iter()
            .map(|&id| Node {
                id,
                replica: None,
                incarnation: 0,
                durable: Vec::new(),
                pending: VecDeque::new(),
                durable_seq: 0,
                flushing: false,
                held: Vec::new(),
                slow_disk: false,
                checkpoint: None,
                since_roll: 0,
                roll_every: usize::MAX,
                last_logged: 0,
                defunct: 0,
            })
            .collect();
        let mut sim = Sim {
            rng: SplitMix64::new(cfg.seed),
            loss: cfg.loss,
            duplication: cfg.duplication,
            cfg,
            core: CoreConfig { window, version: if window > 1 { Version::V7 } else { Version::V6 }, ..sim_core_config() },
            now: 0,
            nodes,
            events: BinaryHeap::new(),
            payloads: Vec::new(),
            event_seq: 0,
            blocked: BTreeSet::new(),
            checker: Checker::default(),
            next_request: 1,
            next_submit: SEC,
            healed_at: None,
            deferred_reconfiguration: None,
            actions: Vec::new(),
            counts: [0; 7],
            adversary: None,
            rejected: 0,
        };
        if sim.cfg.adversary {
            let ids = sim.nodes.iter().map(|n| n.id).collect();
            let sets = (1..=sim.nodes.len()).map(|n| sim.member_set(&(0..n).collect::<Vec<_>>())).collect();
            sim.adversary = Some(adversary::Adversary::new(sim.cfg.seed, ids, sets));
            sim.checker.lenient = true;
        }
        if sim.cfg.bootstrap {
            sim.schedule(300 * MS, Event::Bootstrap);
        }
        // The first configuration is number 1 either way.
        sim.checker.configuration(1, sim.cfg.replicas);
        for i in 0..sim.nodes.len() {
            sim.nodes[i].slow_disk = sim.rng.chance(0.3);
            sim.nodes[i].roll_every = 20 + sim.rng.below(300) as usize;
            sim.boot(i);
        }
        sim.schedule_faults();
        sim
    }

    fn schedule(&mut self, at: Micros, event: Event) {
        self.event_seq += 1;
        self.payloads.push(Some(event));
        self.events.push(Reverse((at, self.event_seq, self.payloads.len() - 1)));
    }

    /// A fault schedule drawn from the seed: crashes with restarts, partitions, and then heal.
    fn schedule_faults(&mut self) {
        let n = self.nodes.len();
        let until = self.cfg.faults_until;
        let faults = 3 + self.rng.below(8);
        for _ in 0..faults {
            let at = SEC + self.rng.below(until - SEC);
            match self.rng.below(if self.cfg.churn { 6 } else { 5 }) {
                3 => self.schedule(at, Event::Relinquish),
                5 => {
                    // Aimed at the leader: values in flight at a change of leader are where
                    // Paxos earns its keep.
                    let (down, until) = (50 * MS + self.rng.below(2 * SEC), at + 100 * MS + self.rng.below(3 * SEC));
                    let crash = self.rng.chance(0.5);
                    self.schedule(at, Event::StrikePrimary { crash, down, until });
                }
                4 => {
                    let size = 1 + self.rng.below(n as u64) as usize;
                    let mut nodes: Vec<usize> = (0..n).collect();
                    for i in 0..n {
                        nodes.swap(i, i + self.rng.below((n - i) as u64) as usize);
                    }
                    nodes.truncate(size);
                    self.schedule(at, Event::Reconfigure(nodes));
                }
                0 => {
                    let node = self.rng.below(n as u64) as usize;
                    self.schedule(at, Event::Crash(node));
                    let down = 50 * MS + self.rng.below(3 * SEC);
                    self.schedule(at + down, Event::Restart(node));
                }
                1 => {
                    // Symmetric: a random minority or majority cut off from the rest.
                    let side: Vec<bool> = (0..n).map(|_| self.rng.chance(0.5)).collect();
                    let blocked = (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).filter(|&(a, b)| side[a] != side[b]).collect();
                    let until = at + 100 * MS + self.rng.below(4 * SEC);
                    self.schedule(at, Event::Partition { blocked, until });
                }
                _ => {
                    // One-way: a cannot reach b.
                    let a = self.rng.below(n as u64) as usize;
                    let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                    let until = at + 100 * MS + self.rng.below(4 * SEC);
                    self.schedule(at, Event::Partition { blocked: vec![(a, b)], until });
                }
            }
        }
        self.schedule(until, Event::Heal);
        self.schedule_injections();
    }

    /// The adversary's messages, spread over the fault period (drawn from its own stream).
    fn schedule_injections(&mut self) {
        let Some(adversary) = self.adversary.as_mut() else { return };
        let until = self.cfg.faults_until;
        let times: Vec<Micros> = (0..100 + adversary.below(400)).map(|_| SEC + adversary.below(until - SEC)).collect();
        for at in times {
            self.schedule(at, Event::Inject);
        }
    }

    /// Forges a message for a random live replica and delivers it there.
    fn inject(&mut self) {
        let Some(adversary) = self.adversary.as_mut() else { return };
        let node = adversary.below(self.nodes.len() as u64) as usize;
        let Some(r) = self.nodes[node].replica.as_ref() else { return };
        let target = adversary::Target {
            version: self.core.version,
            max_ballot: r.max_ballot(),
            next_execute: r.next_execute(),
            config: r.paxos_configuration().number,
        };
        let (from, msg) = adversary.forge(&target);
        self.step(node, Input::Message { from, msg: Arc::new(msg) });
    }

    /// The member set of these nodes (addresses are nominal: the simulator routes by id).
    fn member_set(&self, nodes: &[usize]) -> MemberSet {
        let node = |i: usize| MemberNode {
            id: self.nodes[i].id,
            ip: Ipv4Addr::new(127, 0, 0, i as u8 + 1),
            rsl_port: 20000 + 10 * i as u16,
            learn_port: 20001 + 10 * i as u16,
            app_port: 0,
            host_name: Bytes::from(format!("node{i}")),
        };
        MemberSet { nodes: nodes.iter().map(|&i| node(i)).collect(), cookie: Bytes::new() }
    }

    /// What a process starts from before its checkpoint and log: the legacy member list of
    /// the first configuration, or nothing when the ring is bootstrapped.
    fn initial_config(&self) -> ConfigInfo {
        if self.cfg.bootstrap {
            return ConfigInfo::default();
        }
        let first: Vec<usize> = (0..self.cfg.replicas).collect();
        ConfigInfo { number: 1, initial_decree: 0, members: self.member_set(&first) }
    }

    fn proc(&self, node: usize) -> Proc {
        (node, self.nodes[node].incarnation)
    }

    /// Starts a process on a node from its durable log.
    fn boot(&mut self, i: usize) {
        let seed = self.cfg.seed ^ ((i as u64) << 32) ^ self.nodes[i].incarnation as u64;
        let mut replica = Replica::new(self.core.clone(), self.nodes[i].id, self.initial_config(), seed);
        replica.restore_defunct(self.nodes[i].defunct);
        if let Some((cp, size)) = &self.nodes[i].checkpoint {
            replica.restore_checkpoint(cp, *size);
            self.checker.loaded_checkpoint(self.proc(i), cp.decree);
        }
        let mut out = std::mem::take(&mut self.actions);
        for record in self.nodes[i].durable.clone() {
            if let Err(e) = replica.replay(&record, &mut out) {
                self.checker.violation(format!("node {i} cannot replay its log: {e}"));
            }
        }
        replica.start(self.now, &mut SimApp, &mut out);
        self.nodes[i].replica = Some(replica);
        self.apply(i, out);
    }

    /// Runs the seed to the end and judges it.
    pub fn run(mut self) -> Report {
        let end = self.cfg.faults_until + self.cfg.progress_within;
        let stop_submitting = end - 5 * SEC;
        let (mut same_instant, mut last_now, mut steps) = (0u32, 0, 0u64);
        while self.now < end && self.checker.violations().is_empty() {
            steps += 1;
            if steps > 20_000_000 {
                self.checker.violation(format!("runaway: 20 million steps by {}us", self.now));
                break;
            }
            // A replica that keeps asking to be woken without time passing is spinning.
            same_instant = if self.now == last_now { same_instant + 1 } else { 0 };
            last_now = self.now;
            if same_instant > 100_000 {
                let roles: Vec<_> = self.nodes.iter().map(|n| n.replica.as_ref().map(|r| (r.role(), r.next_wakeup()))).collect();
                self.checker.violation(format!("livelock at {}us: {roles:?}", self.now));
                break;
            }
            let wake = (0..self.nodes.len())
                .filter_map(|i| self.nodes[i].replica.as_ref().map(|r| (r.next_wakeup(), i)))
                .min()
                .unwrap_or((Micros::MAX, 0));
            let event_at = self.events.peek().map_or(Micros::MAX, |Reverse((at, _, _))| *at);
            let submit_at = if self.next_submit < stop_submitting { self.next_submit } else { Micros::MAX };
            let at = wake.0.min(event_at).min(submit_at).min(end);
            self.now = self.now.max(at);
            if at == end {
                break;
            }
            if at == event_at {
                let Reverse((_, _, slot)) = self.events.pop().expect("peeked");
                let event = self.payloads[slot].take().expect("each event runs once");
                self.handle(event);
            } else if at == submit_at {
                self.submit();
            } else {
                self.step(wake.1, Input::Tick);
            }
        }
        if self.checker.violations().is_empty() {
            let newest = self.nodes.iter().filter_map(|n| n.replica.as_ref()).map(|r| r.paxos_configuration()).max_by_key(|c| c.number);
            let members: Vec<MemberId> = newest.map(|c| c.members.nodes.iter().map(|n| n.id).collect()).unwrap_or_default();
            let live: Vec<Proc> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].replica.is_some() && members.contains(&self.nodes[i].id))
                .map(|i| self.proc(i))
                .collect();
            self.checker.check_progress(self.healed_at.unwrap_or(end), &live);
        }
        let mut violations = self.checker.violations().to_vec();
        if !violations.is_empty() {
            violations.push(format!("state at {}us: {}", self.now, self.describe()));
        }
        let [elections, relinquished, crashes, learned, checkpoints_saved, checkpoints_loaded, checkpoints_copied] = self.counts;
        let configurations =
            self.nodes.iter().filter_map(|n| n.replica.as_ref()).map(|r| r.paxos_configuration().number).max().unwrap_or(0);
        Report {
            decrees: self.checker.decrees(),
            acknowledged: self.checker.acknowledged(),
            elections,
            relinquished,
            crashes,
            learned,
            checkpoints_saved,
            checkpoints_loaded,
            checkpoints_copied,
            configurations,
            injected: self.adversary.as_ref().map_or(0, |a| a.injected),
            rejected: self.rejected,
            violations,
        }
    }

    /// Each replica's role, accepted vote, promise and execution point, for failure reports.
    fn describe(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.replica {
                Some(r) => {
                    let (d, b) = r.accepted();
                    let c = r.paxos_configuration();
                    let members: Vec<String> = c.members.nodes.iter().map(|n| n.id.to_string()).collect();
                    out += &format!(
                        "\n    node {i}: {:?} accepted ({d},{b}) promised {} next_execute {} configuration {} {{{}}}",
                        r.role(),
                        r.max_ballot(),
                        r.next_execute(),
                        c.number,
                        members.join(",")
                    );
                }
                None => out += &format!("\n    node {i}: down"),
            }
        }
        out
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, from, msg } => {
                let from = self.nodes[from].id;
                self.step(to, Input::Message { from, msg });
            }
            Event::DiskDone { node, incarnation, seq } => {
                if self.nodes[node].incarnation != incarnation || self.nodes[node].replica.is_none() {
                    return;
                }
                let n = &mut self.nodes[node];
                let id = n.id;
                while n.pending.front().is_some_and(|(s, _)| *s <= seq) {
                    let (_, record) = n.pending.pop_front().expect("checked");
                    if record.kind() == MsgKind::Vote && record.header.sender == id && record.header.ballot.member == id {
                        self.checker.vote_acknowledged(id, record.header.decree, record.header.ballot, record.header.config);
                    }
                    n.durable.push(record);
                }
                n.durable_seq = seq;
                n.flushing = false;
                if !n.pending.is_empty() {
                    self.start_flush(node);
                }
                let n = &mut self.nodes[node];
                let ready: Vec<_> = n.held.iter().filter(|(after, _, _)| *after <= seq).cloned().collect();
                n.held.retain(|(after, _, _)| *after > seq);
                for (_, to, msg) in ready {
                    self.transmit(node, to, msg);
                }
                self.step(node, Input::Durable(seq));
            }
            Event::Learned { node, incarnation, from, records } => {
                if self.nodes[node].incarnation == incarnation {
                    self.step(node, Input::Learned { from, records });
                }
            }
            Event::Crash(node) => self.crash(node),
            Event::LogRolled { node, incarnation, first_decree } => {
                if self.nodes[node].incarnation == incarnation {
                    self.step(node, Input::LogRolled { first_decree });
                }
            }
            Event::CheckpointWritten { node, incarnation, cp } => {
                if self.nodes[node].incarnation == incarnation && self.nodes[node].replica.is_some() {
                    self.install_checkpoint(node, cp, false);
                }
            }
            Event::CheckpointFetched { node, incarnation, fetched, load } => {
                if self.nodes[node].incarnation != incarnation || self.nodes[node].replica.is_none() {
                    return;
                }
                match fetched {
                    Some((cp, size)) if load => self.step(node, Input::CheckpointFetched(Some((cp, size)))),
                    Some((mut cp, _)) => {
                        self.counts[6] += 1;
                        cp.max_ballot = cp.max_ballot.max(self.nodes[node].replica.as_ref().expect("live").max_ballot());
                        self.install_checkpoint(node, cp, true);
                    }
                    None => self.step(node, Input::CheckpointFetched(None)),
                }
            }
            Event::Reconfigure(nodes) => match self.primary() {
                Some(node) => {
                    let members = self.member_set(&nodes);
                    let cookie = self.next_request;
                    self.next_request += 1;
                    let mut out = std::mem::take(&mut self.actions);
                    let replica = self.nodes[node].replica.as_mut().expect("primary");
                    if replica.change_configuration(self.now, members, cookie, &mut out).is_ok() {
                        self.checker.submitted_config_change(self.proc(node), cookie);
                        self.strike_reconfiguring_primary();
                    }
                    self.apply(node, out);
                }
                // Pipelined: the next primary is asked right after its election, when stale votes
                // of the old one may lie beyond the reconfiguration decree.
                None if self.cfg.window > 1 => self.deferred_reconfiguration = Some(nodes),
                None => {}
            },
            Event::Bootstrap => {
                let members = self.member_set(&(0..self.cfg.replicas).collect::<Vec<_>>());
                let mut out = std::mem::take(&mut self.actions);
                let replica = self.nodes[0].replica.as_mut().expect("faults start later");
                if let Err(e) = replica.bootstrap(self.now, members, &mut SimApp, &mut out) {
                    self.checker.violation(format!("bootstrap failed: {e:?}"));
                }
                self.apply(0, out);
            }
            Event::StrikePrimary { crash, down, until } => {
                let Some(primary) = self.primary() else { return };
                if crash {
                    self.crash(primary);
                    self.schedule(self.now + down, Event::Restart(primary));
                } else {
                    let n = self.nodes.len();
                    let friend = (primary + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                    let side = |i: usize| i == primary || i == friend;
                    let blocked = (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).filter(|&(a, b)| side(a) != side(b)).collect();
                    self.handle(Event::Partition { blocked, until });
                }
            }
            Event::Relinquish => {
                if let Some(node) = self.primary() {
                    self.step(node, Input::RelinquishPrimary);
                }
            }
            Event::Restart(node) => {
                if self.nodes[node].replica.is_none() {
                    self.boot(node);
                }
            }
            Event::Partition { blocked, until } if blocked.is_empty() => {
                let _ = until;
                self.blocked.clear();
            }
            Event::Partition { blocked, until } => {
                self.blocked.extend(blocked);
                // Lift it later, unless the heal comes first.
                if until < self.cfg.faults_until {
                    self.schedule(until, Event::Partition { blocked: Vec::new(), until });
                }
            }
            Event::Inject => self.inject(),
            Event::Heal => {
                self.blocked.clear();
                self.loss = 0.0;
                self.duplication = 0.0;
                self.healed_at = Some(self.now);
                for node in 0..self.nodes.len() {
                    self.nodes[node].slow_disk = false;
                    if self.nodes[node].replica.is_none() {
                        self.boot(node);
                    }
                }
            }
        }
    }

    /// Pipelined: half the time, the primary is struck soon after it asks to reconfigure, while
    /// the window drains or the reconfiguration vote is in flight, so that a new primary meets
    /// it among the votes it re-proposes. (Window 1 keeps the schedules its regression seeds
    /// were found with; so does the deferral of a reconfiguration to the next primary.)
    fn strike_reconfiguring_primary(&mut self) {
        if self.cfg.window == 1 || !self.rng.chance(0.5) {
            return;
        }
        let at = self.now + self.rng.below(30 * MS);
        if at >= self.cfg.faults_until {
            return; // faults end at the heal
        }
        let (down, until) = (50 * MS + self.rng.below(2 * SEC), at + 100 * MS + self.rng.below(3 * SEC));
        let crash = self.rng.chance(0.5);
        self.schedule(at, Event::StrikePrimary { crash, down, until });
    }

    /// Writes and syncs everything queued, as one flush.
    fn start_flush(&mut self, node: usize) {
        let latency = if self.nodes[node].slow_disk { 5 * MS + self.rng.below(50 * MS) } else { 100 + self.rng.below(2 * MS) };
        let n = &mut self.nodes[node];
        let (seq, _) = n.pending.back().expect("something to flush");
        let (seq, incarnation) = (*seq, n.incarnation);
        n.flushing = true;
        self.schedule(self.now + latency, Event::DiskDone { node, incarnation, seq });
    }

    fn checkpoint_size(&self, cp: &Checkpoint) -> u64 {
        1024 + cp.decree * 16
    }

    /// Keeps `cp` as the node's checkpoint and drops the log before its first record beyond it
    /// (what log truncation after a checkpoint does, at its most aggressive). A record beyond
    /// it that is not a vote stays too: a Prepare logged after the checkpoint was taken holds
    /// a promise the checkpoint does not, and truncation never drops the current log.
    fn install_checkpoint(&mut self, node: usize, cp: Checkpoint, copied: bool) {
        let size = self.checkpoint_size(&cp);
        let n = &mut self.nodes[node];
        if n.checkpoint.as_ref().is_some_and(|(c, _)| c.decree >= cp.decree) {
            return self.step(node, Input::CheckpointSaved { decree: cp.decree, size, min_decree_in_log: 0 });
        }
        let keep_from = n.durable.iter().position(|r| r.header.decree > cp.decree).unwrap_or(n.durable.len());
        if !copied || keep_from > 0 {
            n.durable.drain(..keep_from);
        }
        // A pipelined log is not in decree order: it holds votes from its lowest decree past the
        // checkpoint on (a re-proposal of an older decree does not make it hold those before).
        let beyond = n.durable.iter().filter(|r| r.kind() == MsgKind::Vote && r.header.decree > cp.decree);
        let min_decree_in_log = beyond.map(|r| r.header.decree).min().unwrap_or(cp.decree + 1);
        let decree = cp.decree;
        n.checkpoint = Some((cp, size));
        self.step(node, Input::CheckpointSaved { decree, size, min_decree_in_log });
    }

    /// A process dies: unsynced records survive only as a prefix (a torn append loses the
    /// rest), held sends are gone, and so are its cookies.
    fn crash(&mut self, node: usize) {
        if self.nodes[node].replica.is_none() {
            return;
        }
        self.counts[2] += 1;
        let proc = self.proc(node);
        let keep = self.rng.below(self.nodes[node].pending.len() as u64 + 1) as usize;
        let n = &mut self.nodes[node];
        n.replica = None;
        let kept: Vec<_> = n.pending.drain(..).take(keep).map(|(_, r)| r).collect();
        n.durable.extend(kept);
        n.held.clear();
        n.durable_seq = 0;
        n.flushing = false;
        n.incarnation += 1;
        self.checker.crashed(proc);
    }

    fn primary(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.nodes[i].replica.as_ref().is_some_and(|r| r.is_primary()))
    }

    fn submit(&mut self) {
        self.next_submit = self.now + self.cfg.request_interval;
        let Some(node) = self.primary() else { return };
        let id = self.next_request;
        self.next_request += 1;
        let mut request = BytesMut::with_capacity(16);
        request.put_u64_le(id);
        request.put_u64_le(self.cfg.seed);
        let cookie = id;
        let mut out = std::mem::take(&mut self.actions);
        let now = self.now;
        let replica = self.nodes[node].replica.as_mut().expect("found above");
        let exclusive = self.rng.chance(0.05);
        if replica.submit(now, Bytes::from(request), cookie, exclusive, &mut out).is_ok() {
            self.checker.submitted(self.proc(node), id, cookie, now);
        }
        self.apply(node, out);
    }

    fn step(&mut self, node: usize, input: Input) {
        let Some(replica) = self.nodes[node].replica.as_mut() else { return };
        let mut out = std::mem::take(&mut self.actions);
        replica.step(self.now, input, &mut SimApp, &mut out);
        let ballot = replica.max_ballot();
        self.checker.observe_ballot(self.proc(node), ballot);
        self.apply(node, out);
    }

    /// Carries out a replica's actions.
    fn apply(&mut self, node: usize, mut out: Vec<Action>) {
        let proc = self.proc(node);
        for action in out.drain(..) {
            match action {
                Action::Send { to, msg, after } => {
                    if after > self.nodes[node].durable_seq {
                        self.nodes[node].held.push((after, to, msg));
                    } else {
                        self.transmit(node, to, msg);
                    }
                }
                Action::Persist { seq, record } => {
                    if record.kind() == MsgKind::Vote {
                        self.checker.vote_logged(&record);
                    }
                    let n = &mut self.nodes[node];
                    if record.kind() == MsgKind::Vote && record.header.decree > n.last_logged {
                        n.last_logged = record.header.decree;
                        n.since_roll += 1;
                        if n.since_roll >= n.roll_every {
                            n.since_roll = 0;
                            let (incarnation, first_decree) = (n.incarnation, record.header.decree);
                            self.schedule(self.now, Event::LogRolled { node, incarnation, first_decree });
                        }
                    }
                    self.nodes[node].pending.push_back((seq, record));
                    if !self.nodes[node].flushing {
                        self.start_flush(node);
                    }
                }
                Action::Execute { vote, cookies } => self.checker.executed(proc, &vote, &cookies, self.now),
                Action::Abort { cookie, .. } => {
                    self.checker.return_cookie(proc, cookie, None);
                }
                Action::NotifyStatus { primary: true } => {
                    let ballot = self.nodes[node].replica.as_ref().expect("acting").max_ballot();
                    self.checker.became_primary(proc, ballot);
                    self.counts[0] += 1;
                    if let Some(nodes) = self.deferred_reconfiguration.take().filter(|_| self.now < self.cfg.faults_until) {
                        self.schedule(self.now, Event::Reconfigure(nodes));
                    }
                }
                Action::NotifyStatus { primary: false } | Action::NotifyPrimaryRecovered => {}
                Action::ConfigurationChanged { cookie, config } => {
                    self.checker.configuration(config.number, config.members.nodes.len());
                    if let Some(cookie) = cookie {
                        self.checker.return_cookie(proc, cookie, None);
                    }
                }
                Action::Defunct(n) => self.nodes[node].defunct = n,
                Action::FetchVotes { from, decree } => {
                    self.counts[3] += 1;
                    self.fetch_votes(node, from, decree)
                }
                Action::LoadCheckpoint(mut cp) => {
                    let decree = cp.decree;
                    self.counts[5] += 1;
                    self.checker.loaded_checkpoint(proc, cp.decree);
                    cp.max_ballot = cp.max_ballot.max(self.nodes[node].replica.as_ref().expect("acting").max_ballot());
                    let size = self.checkpoint_size(&cp);
                    self.nodes[node].checkpoint = Some((cp, size));
                    // The logs before the checkpoint are dropped; the new one starts with the
                    // Persist that follows. What lies beyond it (accepted votes a pipelined
                    // replica holds there, a decision) is carried over.
                    self.nodes[node].durable.retain(|r| r.header.decree > decree);
                }
                Action::SaveCheckpoint(cp) => {
                    self.counts[4] += 1;
                    let at = self.now + MS + self.rng.below(20 * MS);
                    let incarnation = self.nodes[node].incarnation;
                    self.schedule(at, Event::CheckpointWritten { node, incarnation, cp });
                }
                Action::FetchCheckpoint { from, decree, load, .. } => {
                    // From a node that exists (a forged Join may name one that does not).
                    let src = self.nodes.iter().position(|n| n.id == from);
                    let reachable = src.filter(|&src| self.reachable(node, src));
                    let fetched = reachable.and_then(|src| self.nodes[src].checkpoint.clone()).filter(|(cp, _)| cp.decree == decree);
                    let at = self.now + MS + self.rng.below(self.cfg.max_delay);
                    let incarnation = self.nodes[node].incarnation;
                    self.schedule(at, Event::CheckpointFetched { node, incarnation, fetched, load });
                }
                Action::Rejected { from, kind, reason } => {
                    self.rejected += 1;
                    // Honest replicas send nothing implausible. They do send to non-members here:
                    // `Dest::All` reaches every node, spares and replicas left out included (the
                    // runtime sends to the members only), and those answer.
                    if !self.cfg.adversary && reason != Rejection::NotAMember {
                        let what = format!("node {node} rejected an honest {kind:?} from {from:?}: {reason}");
                        self.checker.violation(what);
                    }
                }
                Action::ShutDown => {
                    self.counts[1] += 1;
                    // A clean exit: everything written is kept. A supervisor restarts it.
                    let n = &mut self.nodes[node];
                    n.durable.extend(n.pending.drain(..).map(|(_, r)| r));
                    self.crash(node);
                    let at = self.now + 100 * MS + self.rng.below(SEC);
                    self.schedule(at, Event::Restart(node));
                    break;
                }
            }
        }
        self.actions = out;
    }

    /// Serves a FetchVotes from `from`'s durable log: from its newest vote for `decree` on.
    fn fetch_votes(&mut self, node: usize, from: MemberId, decree: u64) {
        let at = self.now + self.rng.below(self.cfg.max_delay) + MS;
        let incarnation = self.nodes[node].incarnation;
        // A forged Join may name a node that does not exist: nothing comes back.
        let Some(src) = self.nodes.iter().position(|n| n.id == from) else {
            let records = Vec::new();
            return self.schedule(at, Event::Learned { node, incarnation, from, records });
        };
        let reachable = self.reachable(node, src);
        let log = &self.nodes[src].durable;
        // A pipelined log is not in decree order: serve from the first vote at or after the
        // decree. Before version 7, from the newest vote for it.
        let start = if self.core.version.is_pipelined() {
            log.iter().position(|r| r.kind() == MsgKind::Vote && r.header.decree >= decree)
        } else {
            log.iter().rposition(|r| r.kind() == MsgKind::Vote && r.header.decree == decree)
        };
        let records = match (reachable, start) {
            (true, Some(start)) => log[start..].to_vec(),
            _ => Vec::new(),
        };
        self.schedule(at, Event::Learned { node, incarnation, from, records });
    }

    /// Both ways open, and the source up.
    fn reachable(&self, node: usize, src: usize) -> bool {
        self.nodes[src].replica.is_some() && !self.blocked.contains(&(node, src)) && !self.blocked.contains(&(src, node))
    }

    /// What an acknowledgement promises must already be on the sender's disk: the vote a
    /// VoteAccepted answers; the promise and the reported vote of a PrepareAccepted.
    fn check_durable(&mut self, from: usize, msg: &Message) {
        let n = &self.nodes[from];
        let logged = |d: u64, b: Ballot| {
            b.is_empty()
                || n.durable.iter().rev().any(|r| r.kind() == MsgKind::Vote && (r.header.decree, r.header.ballot) == (d, b))
                || n.checkpoint
                    .as_ref()
                    .is_some_and(|(cp, _)| (cp.next_vote.header.decree, cp.next_vote.header.ballot) == (d, b) || cp.decree >= d)
        };
        let promised = |b: Ballot| {
            n.durable.iter().rev().any(|r| r.header.ballot >= b) || n.checkpoint.as_ref().is_some_and(|(cp, _)| cp.max_ballot >= b)
        };
        let (d, b) = (msg.header.decree, msg.header.ballot);
        let missing = match &msg.body {
            Body::VoteAccepted => !logged(d, b),
            Body::PrepareAccepted(vote) => !promised(b) || !logged(vote.header.decree, vote.header.ballot),
            _ => false,
        };
        if missing {
            let what = format!("durability: node {from} sent {:?} ({d},{b}) before logging what it promises", msg.kind());
            self.checker.violation(what);
        }
        if let Body::VoteAccepted = msg.body {
            self.checker.vote_acknowledged(n.id, d, b, msg.header.config);
        }
    }

    fn transmit(&mut self, from: usize, to: Dest, msg: Arc<Message>) {
        self.check_durable(from, &msg);
        let targets: Vec<usize> = match to {
            Dest::All => (0..self.nodes.len()).filter(|&i| i != from).collect(),
            Dest::One(id) => self.nodes.iter().position(|n| n.id == id).into_iter().collect(),
        };
        for to in targets {
            if self.blocked.contains(&(from, to)) || self.rng.chance(self.loss) {
                continue;
            }
            let copies = if self.rng.chance(self.duplication) { 2 } else { 1 };
            for _ in 0..copies {
                let at = self.now + 100 + self.rng.below(self.cfg.max_delay);
                self.schedule(at, Event::Deliver { to, from, msg: msg.clone() });
            }
        }
    }
}

/// Runs one seed; `Err` carries the violations (or the assertion that failed) and the
/// command that replays the run.
pub fn run_seed(cfg: SimConfig) -> Result<Report, String> {
    let command = cfg.replay_command();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Sim::new(cfg).run()));
    let violations = match outcome {
        Ok(report) if report.violations.is_empty() => return Ok(report),
        Ok(report) => report.violations,
        Err(panic) => {
            let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            vec![format!("assertion failed: {}", what.unwrap_or_default())]
        }
    };
    Err(format!("{}\n  replay: {command}", violations.join("\n  ")))
}
