//! The deterministic simulator: replicas of one ring on a virtual clock, with a seeded network
//! (delay, reordering, duplication, loss, symmetric and one-way partitions), disks with group
//! commit that lose or keep unsynced records when a process crashes, restarts, slow disks and
//! slow executors whose queue spills to the log past a small memory bound; optionally an
//! adversary that forges messages. Each replica runs through the runtime's own [`Driver`](crate::driver::Driver) and
//! execute-queue [`Backlog`](crate::driver::backlog::Backlog); the simulator is their host. The [`checker`](crate::sim::checker) judges every step. A
//! seed fully determines a run.

mod adversary;
pub mod checker;

use crate::driver::backlog::{decree_bytes, Backlog, ExecQueue};
use crate::driver::{Driver, Execution, Host, Inbound};
use crate::format::{Ballot, ConfigInfo, MemberId, MemberSet, Message, MsgKind, Node as MemberNode, Version};
use crate::paxos::{Action, Application, Checkpoint, Cookie, CoreConfig, Input, Micros, Rejection, Replica, SplitMix64, MS, SEC};
use bytes::{BufMut, Bytes, BytesMut};
use checker::{Checker, Proc};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// The shape of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed every random choice derives from: a run repeats exactly from it.
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
    /// Probability that a message is lost (0 to 1) while faults are on.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplication: f64,
    /// The most a message is delayed.
    pub max_delay: Micros,
    /// How often a client submits a request.
    pub request_interval: Micros,
    /// Forged messages with extreme field values are injected during the faults
    /// (`adversary.rs`). The checks forged votes can break are then off.
    pub adversary: bool,
}

impl SimConfig {
    /// A run of `replicas` members from `seed`, with the default faults and timing.
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
        prepare_retry_interval: 50 * MS,
        vote_retry_interval: 50 * MS,
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
    /// The executor runs what is queued.
    Execute {
        node: usize,
        incarnation: u32,
    },
    /// The executor finished writing a checkpoint.
    Saved {
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
    Heal,
    /// The adversary sends a forged message to a random replica.
    Inject,
}

/// A machine: what outlives its process (the disk) and the process's executor.
struct Node {
    id: MemberId,
    /// A process runs here (its driver is in `Sim::procs`).
    up: bool,
    incarnation: u32,
    durable: Vec<Arc<Message>>,
    /// Persists not yet durable, in order, with their sequence numbers.
    pending: VecDeque<(u64, Arc<Message>)>,
    /// A flush is in flight (group commit: it covers every record queued before it started).
    flushing: bool,
    slow_disk: bool,
    /// The newest checkpoint and its size; the log before its next vote is gone.
    checkpoint: Option<(Checkpoint, u64)>,
    /// Votes for new decrees logged since the last log roll, and how many make a roll.
    since_roll: usize,
    roll_every: usize,
    last_logged: u64,
    /// `defunct.txt`.
    defunct: u32,
    /// The executor's queue, and whether it is running (or writing a checkpoint).
    exec: VecDeque<Execution>,
    exec_busy: bool,
    slow_exec: bool,
    /// Bytes of decrees in `exec`, and the bound past which decrees wait in the log.
    exec_bytes: u64,
    exec_limit: u64,
    /// Votes truncation or a load took out of the log while decrees waited in it: the runtime
    /// keeps the logs they were in until those decrees execute (runtime/spill.rs).
    retired: Vec<Arc<Message>>,
    /// Every decree below it has executed in this process life (`Host::executed`).
    executed_below: u64,
}

/// Where a spilled decree's vote is in a simulated log: its decree and ballot.
type VotePos = (u64, Ballot);

/// A process's execute queue: what waits in the log past its bound.
type SimBacklog = Backlog<Execution, VotePos>;

/// Answers the application's questions: always yes.
struct SimApp;
impl Application for SimApp {}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    /// Decrees chosen.
    pub decrees: usize,
    /// Requests acknowledged to their client (executed with their cookie).
    pub acknowledged: usize,
    /// How often a replica became primary, relinquished, crashed, learned votes from a peer,
    /// saved a checkpoint, caught up by loading a peer's, and (as primary) copied one.
    pub elections: usize,
    /// Primaries that relinquished.
    pub relinquished: usize,
    /// Replica crashes.
    pub crashes: usize,
    /// Times a replica learned votes from a peer.
    pub learned: usize,
    /// Checkpoints saved.
    pub checkpoints_saved: usize,
    /// Peers' checkpoints loaded to catch up.
    pub checkpoints_loaded: usize,
    /// Checkpoints a primary copied instead of saving one.
    pub checkpoints_copied: usize,
    /// The highest configuration number any replica reached.
    pub configurations: u32,
    /// Messages the adversary injected, and messages or records the replicas refused.
    pub injected: usize,
    /// Messages or records the replicas refused.
    pub rejected: usize,
    /// Chosen decrees that waited in the log because the execute queue was full.
    pub spilled: usize,
    /// Safety or liveness properties broken, each described: empty for a good run.
    pub violations: Vec<String>,
}

/// One simulated run: the nodes, the network and the clock, stepped from the seed.
pub struct Sim {
    /// Each node's process, while it runs, and its execute queue's backlog.
    procs: Vec<Option<Driver>>,
    backlogs: Vec<SimBacklog>,
    world: World,
}

/// Everything but the processes: the machines, the network, the clock, the schedule, the
/// checker. Each process's host is the world seen from its node ([`Machine`]).
struct World {
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
    counts: [usize; 7],
    adversary: Option<adversary::Adversary>,
    rejected: usize,
    spilled: usize,
}

/// The host of node `node`'s process.
struct Machine<'a> {
    w: &'a mut World,
    node: usize,
    backlog: &'a mut SimBacklog,
}

/// Node `node`'s executor and log, as its backlog sees them.
struct SimExec<'a> {
    w: &'a mut World,
    node: usize,
}

/// The nominal address of node `i` (the simulator routes by id; the driver checks addresses).
fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, i as u8 + 1)
}

impl Sim {
    /// A run of `cfg`, not yet stepped.
    pub fn new(cfg: SimConfig) -> Sim {
        let window = cfg.window;
        // Odd seeds let a replica stand while decrees wait to execute; even seeds wait for them.
        let allow_promotion_while_catching_up = cfg.seed % 2 == 1;
        let ids: Vec<MemberId> = (1..=cfg.replicas + cfg.spares).map(|i| MemberId::new(&i.to_string()).expect("numeric id")).collect();
        let nodes: Vec<Node> = ids
            .iter()
            .map(|&id| Node {
                id,
                up: false,
                incarnation: 0,
                durable: Vec::new(),
                pending: VecDeque::new(),
                flushing: false,
                slow_disk: false,
                checkpoint: None,
                since_roll: 0,
                roll_every: usize::MAX,
                last_logged: 0,
                defunct: 0,
                exec: VecDeque::new(),
                exec_busy: false,
                slow_exec: false,
                exec_bytes: 0,
                exec_limit: u64::MAX,
                retired: Vec::new(),
                executed_below: 0,
            })
            .collect();
        let procs = nodes.iter().map(|_| None).collect();
        let backlogs = nodes.iter().map(|_| Backlog::new(u64::MAX)).collect();
        let world = World {
            rng: SplitMix64::new(cfg.seed),
            loss: cfg.loss,
            duplication: cfg.duplication,
            cfg,
            core: CoreConfig {
                window,
                version: if window > 1 { Version::V7 } else { Version::V6 },
                allow_promotion_while_catching_up,
                ..sim_core_config()
            },
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
            counts: [0; 7],
            adversary: None,
            rejected: 0,
            spilled: 0,
        };
        let mut sim = Sim { procs, backlogs, world };
        let w = &mut sim.world;
        if w.cfg.adversary {
            let ids = w.nodes.iter().map(|n| n.id).collect();
            let sets = (1..=w.nodes.len()).map(|n| w.member_set(&(0..n).collect::<Vec<_>>())).collect();
            w.adversary = Some(adversary::Adversary::new(w.cfg.seed, ids, sets));
            w.checker.lenient = true;
        }
        if w.cfg.bootstrap {
            w.schedule(300 * MS, Event::Bootstrap);
        }
        // The first configuration is number 1 either way.
        w.checker.configuration(1, w.cfg.replicas);
        for i in 0..sim.procs.len() {
            let w = &mut sim.world;
            w.nodes[i].slow_disk = w.rng.chance(0.3);
            w.nodes[i].roll_every = 20 + w.rng.below(300) as usize;
            w.nodes[i].slow_exec = w.rng.chance(0.2);
            w.nodes[i].exec_limit = exec_limit(w.cfg.seed, i, w.nodes[i].slow_exec);
            sim.boot(i);
        }
        sim.world.schedule_faults();
        sim
    }

    /// Starts a process on a node from its disk: the checkpoint, then the log, replayed as the
    /// runtime restores (executions run at once, before the protocol starts).
    fn boot(&mut self, i: usize) {
        let w = &mut self.world;
        let seed = w.cfg.seed ^ ((i as u64) << 32) ^ w.nodes[i].incarnation as u64;
        let mut replica = Replica::new(w.core.clone(), w.nodes[i].id, w.initial_config(), seed);
        replica.restore_defunct(w.nodes[i].defunct);
        let proc = w.proc(i);
        if let Some((cp, size)) = &w.nodes[i].checkpoint {
            replica.restore_checkpoint(cp, *size);
            w.checker.loaded_checkpoint(proc, cp.decree);
        }
        let mut out = Vec::new();
        for record in w.nodes[i].durable.clone() {
            if let Err(e) = replica.replay(&record, &mut out) {
                w.checker.violation(format!("node {i} cannot replay its log: {e}"));
            }
            for action in out.drain(..) {
                match action {
                    Action::Execute { vote, cookies } => w.checker.executed(proc, &vote, &cookies, w.now),
                    Action::ConfigurationChanged { config, .. } => w.checker.configuration(config.number, config.members.nodes.len()),
                    _ => {}
                }
            }
        }
        // The replayed decrees executed at once.
        (w.nodes[i].up, w.nodes[i].executed_below) = (true, replica.next_execute());
        self.backlogs[i] = Backlog::new(w.nodes[i].exec_limit);
        self.procs[i] = Some(Driver::new(replica, Box::new(SimApp), false));
        self.drive(i, |d, m| d.start(m));
    }

    /// Runs `f` on node `i`'s process, if it is up, and ends the turn with a refill of its
    /// executor, as the runtime does; then checks its promise never went down, and ends the
    /// process if it stopped.
    fn drive(&mut self, i: usize, f: impl FnOnce(&mut Driver, &mut Machine<'_>)) {
        let Some(driver) = self.procs[i].as_mut() else { return };
        f(driver, &mut Machine { w: &mut self.world, node: i, backlog: &mut self.backlogs[i] });
        self.refill(i);
        let driver = self.procs[i].as_ref().expect("a refill does not end the process");
        let ballot = driver.core().max_ballot();
        let proc = self.world.proc(i);
        self.world.checker.observe_ballot(proc, ballot);
        if driver.stopped() {
            self.exit(i);
        }
    }

    /// Decrees waiting in node `i`'s log go to its executor as the bound allows, once the
    /// executor is down to half of it. A failure is the replica's, as in the runtime.
    fn refill(&mut self, i: usize) {
        let Some(driver) = self.procs[i].as_ref() else { return };
        let (durable, backlog) = (driver.durable_seq(), &mut self.backlogs[i]);
        if let Err(e) = backlog.refill(durable, &mut SimExec { w: &mut self.world, node: i }) {
            self.world.checker.violation(format!("node {i} failed: {e}"));
        }
        if backlog.idle() {
            self.world.nodes[i].retired.clear();
        }
    }

    /// Node `i`'s executor runs what is queued; then its backlog refills it.
    fn run_executor(&mut self, i: usize) {
        self.world.run_executor(i, false);
        self.refill(i);
    }

    fn step(&mut self, i: usize, input: Input) {
        self.drive(i, |d, m| d.step(input, m));
    }

    /// A process that stopped on its own (`ShutDown`) exits cleanly, as the runtime does: the
    /// driver stops (what the core holds is aborted), everything written is kept, the decrees
    /// waiting in the log and then the executor's queue run. A supervisor restarts it.
    fn exit(&mut self, i: usize) {
        if let Some(driver) = self.procs[i].as_mut() {
            driver.stop(&mut Machine { w: &mut self.world, node: i, backlog: &mut self.backlogs[i] });
        }
        let n = &mut self.world.nodes[i];
        n.durable.extend(n.pending.drain(..).map(|(_, r)| r));
        if let Err(e) = self.backlogs[i].drain(u64::MAX, &mut SimExec { w: &mut self.world, node: i }) {
            self.world.checker.violation(format!("node {i} failed at its stop: {e}"));
        }
        self.world.run_executor(i, true);
        self.crash(i);
        let at = self.world.now + 100 * MS + self.world.rng.below(SEC);
        self.world.schedule(at, Event::Restart(i));
    }

    /// A process dies: unsynced records survive only as a prefix (a torn append loses the
    /// rest); held sends, the executor's queue and the cookies go with it.
    fn crash(&mut self, node: usize) {
        if self.procs[node].take().is_none() {
            return;
        }
        let w = &mut self.world;
        w.counts[2] += 1;
        let proc = w.proc(node);
        let keep = w.rng.below(w.nodes[node].pending.len() as u64 + 1) as usize;
        let n = &mut w.nodes[node];
        n.up = false;
        let kept: Vec<_> = n.pending.drain(..).take(keep).map(|(_, r)| r).collect();
        n.durable.extend(kept);
        n.flushing = false;
        n.exec.clear();
        n.exec_busy = false;
        n.exec_bytes = 0;
        n.retired.clear();
        self.backlogs[node] = Backlog::new(n.exec_limit);
        n.executed_below = 0;
        n.incarnation += 1;
        w.checker.crashed(proc);
    }

    /// The primary a client finds: of the configuration that is newest among primaries (one
    /// left out of a reconfiguration it missed still believes it leads the old one: nothing
    /// tells it, as in RSL, and its requests never complete).
    fn primary(&self) -> Option<usize> {
        let primaries = (0..self.procs.len()).filter_map(|i| Some((self.procs[i].as_ref()?.core(), i))).filter(|(c, _)| c.is_primary());
        primaries.max_by_key(|(c, i)| (c.paxos_configuration().number, std::cmp::Reverse(*i))).map(|(_, i)| i)
    }

    /// Whether an event for this process life still applies.
    fn current(&self, node: usize, incarnation: u32) -> bool {
        self.procs[node].is_some() && self.world.nodes[node].incarnation == incarnation
    }

    /// Runs the seed to the end and judges it.
    pub fn run(mut self) -> Report {
        let end = self.world.cfg.faults_until + self.world.cfg.progress_within;
        let stop_submitting = end - 5 * SEC;
        let (mut same_instant, mut last_now, mut steps) = (0u32, 0, 0u64);
        while self.world.now < end && self.world.checker.violations().is_empty() {
            steps += 1;
            if steps > 20_000_000 {
                self.world.checker.violation(format!("runaway: 20 million steps by {}us", self.world.now));
                break;
            }
            // A replica that keeps asking to be woken without time passing is spinning.
            same_instant = if self.world.now == last_now { same_instant + 1 } else { 0 };
            last_now = self.world.now;
            if same_instant > 100_000 {
                let roles: Vec<_> = self.procs.iter().map(|p| p.as_ref().map(|d| (d.core().role(), d.core().next_wakeup()))).collect();
                self.world.checker.violation(format!("livelock at {}us: {roles:?}", self.world.now));
                break;
            }
            let wake = (0..self.procs.len())
                .filter_map(|i| self.procs[i].as_ref().map(|d| (d.core().next_wakeup(), i)))
                .min()
                .unwrap_or((Micros::MAX, 0));
            let event_at = self.world.events.peek().map_or(Micros::MAX, |Reverse((at, _, _))| *at);
            let submit_at = if self.world.next_submit < stop_submitting { self.world.next_submit } else { Micros::MAX };
            let at = wake.0.min(event_at).min(submit_at).min(end);
            self.world.now = self.world.now.max(at);
            if at == end {
                break;
            }
            if at == event_at {
                let Reverse((_, _, slot)) = self.world.events.pop().expect("peeked");
                let event = self.world.payloads[slot].take().expect("each event runs once");
                self.handle(event);
            } else if at == submit_at {
                self.submit();
            } else {
                self.step(wake.1, Input::Tick);
            }
        }
        self.judge(end)
    }

    fn judge(mut self, end: Micros) -> Report {
        let w = &mut self.world;
        if w.checker.violations().is_empty() {
            // The newest configuration; of two with its number (a forged one, under the
            // adversary), the one more replicas hold.
            let configs: Vec<&ConfigInfo> = self.procs.iter().flatten().map(|d| d.core().paxos_configuration()).collect();
            let held_by = |c: &ConfigInfo| configs.iter().filter(|o| o.number == c.number && o.members == c.members).count();
            let newest = configs.iter().max_by_key(|c| (c.number, held_by(c)));
            let members: Vec<MemberId> = newest.map(|c| c.members.nodes.iter().map(|n| n.id).collect()).unwrap_or_default();
            let live: Vec<Proc> =
                (0..w.nodes.len()).filter(|&i| self.procs[i].is_some() && members.contains(&w.nodes[i].id)).map(|i| w.proc(i)).collect();
            w.checker.check_progress(w.healed_at.unwrap_or(end), &live);
        }
        let (mut violations, now) = (w.checker.violations().to_vec(), w.now);
        if !violations.is_empty() {
            violations.push(format!("state at {now}us: {}", self.describe()));
        }
        let w = &self.world;
        let [elections, relinquished, crashes, learned, checkpoints_saved, checkpoints_loaded, checkpoints_copied] = w.counts;
        let configurations = self.procs.iter().flatten().map(|d| d.core().paxos_configuration().number).max().unwrap_or(0);
        Report {
            decrees: w.checker.decrees(),
            acknowledged: w.checker.acknowledged(),
            elections,
            relinquished,
            crashes,
            learned,
            checkpoints_saved,
            checkpoints_loaded,
            checkpoints_copied,
            configurations,
            injected: w.adversary.as_ref().map_or(0, |a| a.injected),
            rejected: w.rejected,
            spilled: w.spilled,
            violations,
        }
    }

    /// Each replica's role, accepted vote, promise and execution point, for failure reports.
    fn describe(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.procs.iter().enumerate() {
            match p.as_ref().map(Driver::core) {
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

    fn submit(&mut self) {
        let w = &mut self.world;
        w.next_submit = w.now + w.cfg.request_interval;
        let Some(node) = self.primary() else { return };
        let w = &mut self.world;
        let id = w.next_request;
        w.next_request += 1;
        let mut request = BytesMut::with_capacity(16);
        request.put_u64_le(id);
        request.put_u64_le(w.cfg.seed);
        let (cookie, exclusive, proc, now) = (id, w.rng.chance(0.05), w.proc(node), w.now);
        // The checker hears of the request first: its executions come later, through the
        // executor's queue.
        let mut taken = false;
        self.drive(node, |d, m| {
            taken = d.submit(Bytes::from(request), cookie, exclusive, false, m).is_ok();
            if taken {
                m.w.checker.submitted(proc, id, cookie, now);
            }
        });
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, from, msg } => {
                let origin = Inbound { ip: IpAddr::V4(address(from)), certified: None };
                self.drive(to, |d, m| d.on_message(msg, origin, m));
            }
            Event::DiskDone { node, incarnation, seq } if self.current(node, incarnation) => {
                self.world.flushed(node, seq);
                self.drive(node, |d, m| d.durable(seq, m));
            }
            Event::Learned { node, incarnation, from, records } if self.current(node, incarnation) => {
                self.step(node, Input::Learned { from, records });
            }
            Event::Execute { node, incarnation } if self.current(node, incarnation) => self.run_executor(node),
            Event::Saved { node, incarnation, cp } if self.current(node, incarnation) => {
                let (decree, size) = (cp.decree, checkpoint_size(&cp));
                self.world.keep_checkpoint(node, cp);
                self.drive(node, |d, m| d.checkpoint_done(decree, size, false, m));
                self.run_executor(node);
            }
            Event::CheckpointFetched { node, incarnation, fetched, load } if self.current(node, incarnation) => match fetched {
                Some((cp, size)) if load => self.step(node, Input::CheckpointFetched(Some((cp, size)))),
                Some((mut cp, size)) => {
                    self.world.counts[6] += 1;
                    cp.max_ballot = cp.max_ballot.max(self.procs[node].as_ref().expect("current").core().max_ballot());
                    let decree = cp.decree;
                    self.world.keep_checkpoint(node, cp);
                    self.drive(node, |d, m| d.checkpoint_done(decree, size, true, m));
                }
                None => self.step(node, Input::CheckpointFetched(None)),
            },
            Event::DiskDone { .. }
            | Event::Learned { .. }
            | Event::Execute { .. }
            | Event::Saved { .. }
            | Event::CheckpointFetched { .. } => {}
            Event::Crash(node) => self.crash(node),
            Event::Restart(node) => {
                if self.procs[node].is_none() {
                    self.boot(node);
                }
            }
            Event::Reconfigure(nodes) => self.reconfigure(nodes),
            Event::Bootstrap => {
                let members = self.world.member_set(&(0..self.world.cfg.replicas).collect::<Vec<_>>());
                self.drive(0, |d, m| {
                    if let Err(e) = d.bootstrap(members, m) {
                        m.w.checker.violation(format!("bootstrap failed: {e:?}"));
                    }
                });
            }
            Event::StrikePrimary { crash, down, until } => {
                let Some(primary) = self.primary() else { return };
                if crash {
                    self.crash(primary);
                    self.world.schedule(self.world.now + down, Event::Restart(primary));
                } else {
                    let n = self.procs.len();
                    let friend = (primary + 1 + self.world.rng.below(n as u64 - 1) as usize) % n;
                    let side = |i: usize| i == primary || i == friend;
                    let blocked = (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).filter(|&(a, b)| side(a) != side(b)).collect();
                    self.world.partition(blocked, until);
                }
            }
            Event::Relinquish => {
                if let Some(node) = self.primary() {
                    self.step(node, Input::RelinquishPrimary);
                }
            }
            Event::Partition { blocked, until } => self.world.partition(blocked, until),
            Event::Inject => self.inject(),
            Event::Heal => {
                let w = &mut self.world;
                w.blocked.clear();
                w.loss = 0.0;
                w.duplication = 0.0;
                w.healed_at = Some(w.now);
                for node in 0..self.procs.len() {
                    self.world.nodes[node].slow_disk = false;
                    self.world.nodes[node].slow_exec = false;
                    if self.procs[node].is_none() {
                        self.boot(node);
                    }
                }
            }
        }
    }

    fn reconfigure(&mut self, nodes: Vec<usize>) {
        match self.primary() {
            Some(node) => {
                let w = &mut self.world;
                let members = w.member_set(&nodes);
                let cookie = w.next_request;
                w.next_request += 1;
                let proc = w.proc(node);
                let mut taken = false;
                self.drive(node, |d, m| {
                    taken = d.change_configuration(members, cookie, m).is_ok();
                    if taken {
                        m.w.checker.submitted_config_change(proc, cookie);
                    }
                });
                if taken {
                    self.world.strike_reconfiguring_primary();
                }
            }
            // Pipelined: the next primary is asked right after its election, when stale votes
            // of the old one may lie beyond the reconfiguration decree.
            None if self.world.cfg.window > 1 => self.world.deferred_reconfiguration = Some(nodes),
            None => {}
        }
    }

    /// Forges a message for a random live replica and delivers it there, as if from its
    /// claimed sender's address.
    fn inject(&mut self) {
        let w = &mut self.world;
        let Some(adversary) = w.adversary.as_mut() else { return };
        let node = adversary.below(w.nodes.len() as u64) as usize;
        let Some(r) = self.procs[node].as_ref().map(Driver::core) else { return };
        let target = adversary::Target {
            version: w.core.version,
            max_ballot: r.max_ballot(),
            next_execute: r.next_execute(),
            config: r.paxos_configuration().number,
        };
        let (_, msg) = adversary.forge(&target);
        let from = w.nodes.iter().position(|n| n.id == msg.header.sender).map_or(Ipv4Addr::new(127, 0, 0, 250), address);
        let origin = Inbound { ip: IpAddr::V4(from), certified: None };
        self.drive(node, |d, m| d.on_message(Arc::new(msg), origin, m));
    }
}

impl World {
    /// The executor runs its queue in order, until it meets a checkpoint to save: writing it
    /// holds the executor for a while (what follows waits), then the driver hears of it.
    /// `exiting`: the process is going away; a checkpoint it would save is not.
    fn run_executor(&mut self, node: usize, exiting: bool) {
        let w = self;
        let proc = w.proc(node);
        while let Some(item) = w.nodes[node].exec.pop_front() {
            match item {
                Execution::Decree { vote, cookies } => {
                    w.nodes[node].exec_bytes -= decree_bytes(&vote);
                    w.checker.executed(proc, &vote, &cookies, w.now);
                    w.nodes[node].executed_below = vote.header.decree + 1;
                }
                Execution::Abort { cookie, .. } | Execution::ConfigChanged { cookie: Some(cookie), .. } => {
                    w.checker.return_cookie(proc, cookie, None);
                }
                Execution::Load(cp) => {
                    w.checker.loaded_checkpoint(proc, cp.decree);
                    w.nodes[node].executed_below = cp.decree + 1;
                }
                Execution::Save(_) if exiting => {}
                Execution::Save(cp) => {
                    w.counts[4] += 1;
                    let at = w.now + MS + w.rng.below(20 * MS);
                    let incarnation = w.nodes[node].incarnation;
                    return w.schedule(at, Event::Saved { node, incarnation, cp });
                }
                Execution::Status(_) | Execution::PrimaryRecovered | Execution::ConfigChanged { .. } | Execution::Copied { .. } => {}
            }
        }
        w.nodes[node].exec_busy = false;
    }

    fn schedule(&mut self, at: Micros, event: Event) {
        self.event_seq += 1;
        self.payloads.push(Some(event));
        self.events.push(Reverse((at, self.event_seq, self.payloads.len() - 1)));
    }

    fn proc(&self, node: usize) -> Proc {
        (node, self.nodes[node].incarnation)
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

    /// Blocks these links until `until` (or the heal); an empty set lifts every partition.
    fn partition(&mut self, blocked: Vec<(usize, usize)>, until: Micros) {
        if blocked.is_empty() {
            return self.blocked.clear();
        }
        self.blocked.extend(blocked);
        if until < self.cfg.faults_until {
            self.schedule(until, Event::Partition { blocked: Vec::new(), until });
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

    /// The member set of these nodes (addresses are nominal: the simulator routes by id).
    fn member_set(&self, nodes: &[usize]) -> MemberSet {
        let node = |i: usize| MemberNode {
            id: self.nodes[i].id,
            ip: address(i),
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

    /// Writes and syncs everything queued, as one flush.
    fn start_flush(&mut self, node: usize) {
        let latency = if self.nodes[node].slow_disk { 5 * MS + self.rng.below(50 * MS) } else { 100 + self.rng.below(2 * MS) };
        let n = &mut self.nodes[node];
        let (seq, _) = n.pending.back().expect("something to flush");
        let (seq, incarnation) = (*seq, n.incarnation);
        n.flushing = true;
        self.schedule(self.now + latency, Event::DiskDone { node, incarnation, seq });
    }

    /// A flush is on disk: what it covered is durable, and the next flush takes what queued
    /// behind it. A proposer's own vote counts as its acceptance, unless its disk already
    /// holds a promise above the vote's ballot: then the vote is a copy learned back from a
    /// peer's log (logged below the promise, as learning does), not an acceptance, and
    /// counting it "chose" a vote no quorum accepted (seed 85840).
    fn flushed(&mut self, node: usize, seq: u64) {
        let n = &mut self.nodes[node];
        let id = n.id;
        while n.pending.front().is_some_and(|(s, _)| *s <= seq) {
            let (_, record) = n.pending.pop_front().expect("checked");
            let (d, b) = (record.header.decree, record.header.ballot);
            if record.kind() == MsgKind::Vote && record.header.sender == id && b.member == id {
                let outbid =
                    n.durable.iter().any(|r| r.header.ballot > b) || n.checkpoint.as_ref().is_some_and(|(cp, _)| cp.max_ballot > b);
                if !outbid {
                    self.checker.vote_acknowledged(id, d, b, record.header.config);
                }
            }
            n.durable.push(record);
        }
        n.flushing = false;
        if !n.pending.is_empty() {
            self.start_flush(node);
        }
    }

    /// Keeps `cp` as the node's checkpoint, unless it has a newer one.
    fn keep_checkpoint(&mut self, node: usize, cp: Checkpoint) {
        let n = &mut self.nodes[node];
        if n.checkpoint.as_ref().is_none_or(|(c, _)| c.decree < cp.decree) {
            let size = checkpoint_size(&cp);
            n.checkpoint = Some((cp, size));
        }
    }

    /// Serves a FetchVotes from `src`'s durable log: from its newest vote for `decree` on.
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
        self.nodes[src].up && !self.blocked.contains(&(node, src)) && !self.blocked.contains(&(src, node))
    }

    /// What an acknowledgement promises must already be on the sender's disk (`Checker::sent`).
    fn check_durable(&mut self, from: usize, msg: &Message) {
        let n = &self.nodes[from];
        let checkpoint = n.checkpoint.as_ref().map(|(cp, _)| cp);
        self.checker.sent(from, n.id, msg, &n.durable, checkpoint);
    }

    fn transmit(&mut self, from: usize, to: &[MemberId], msg: &Arc<Message>) {
        self.check_durable(from, msg);
        for id in to {
            // A forged Join may have named a node that does not exist.
            let Some(to) = self.nodes.iter().position(|n| n.id == *id) else { continue };
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

fn checkpoint_size(cp: &Checkpoint) -> u64 {
    1024 + cp.decree * 16
}

/// Node `i`'s execute-queue bound, from its own stream (the seed's schedule stays as it was):
/// a few decrees, fewer on a slow executor, so that some seeds spill heavily; a quarter of
/// the fast executors never spill.
fn exec_limit(seed: u64, i: usize, slow: bool) -> u64 {
    let mut rng = SplitMix64::new(seed ^ 0x5e11_0000_0000 ^ i as u64);
    let decree = 300; // about `decree_bytes` of a decree of one request
    match (slow, rng.below(4)) {
        (false, 0) => u64::MAX,
        (true, _) => decree * (1 + rng.below(3)),
        _ => decree * (1 + rng.below(12)),
    }
}

impl ExecQueue for SimExec<'_> {
    type Work = Execution;
    type Location = VotePos;

    fn in_memory(&self) -> u64 {
        self.w.nodes[self.node].exec_bytes
    }

    /// Queued; the executor starts after a while if it is idle.
    fn hand(&mut self, work: Execution) -> bool {
        let n = &mut self.w.nodes[self.node];
        n.exec.push_back(work);
        if !n.exec_busy {
            n.exec_busy = true;
            let (incarnation, slow) = (n.incarnation, n.slow_exec);
            let latency = if slow { MS + self.w.rng.below(10 * MS) } else { self.w.rng.below(200) };
            self.w.schedule(self.w.now + latency, Event::Execute { node: self.node, incarnation });
        }
        true
    }

    fn hand_decree(&mut self, vote: Arc<Message>, cookies: Vec<Cookie>) -> bool {
        self.w.nodes[self.node].exec_bytes += decree_bytes(&vote);
        self.hand(Execution::Decree { vote, cookies })
    }

    /// Only what is durable can be read back; what a load or truncation retired still is.
    fn read(&mut self, &(decree, ballot): &VotePos) -> Result<Arc<Message>, String> {
        let n = &self.w.nodes[self.node];
        let is = |r: &&Arc<Message>| r.kind() == MsgKind::Vote && (r.header.decree, r.header.ballot) == (decree, ballot);
        let found = n.durable.iter().rev().find(is).or_else(|| n.retired.iter().rev().find(is));
        found.cloned().ok_or_else(|| "not in the durable log".to_string())
    }

    fn describe(&self, &(decree, ballot): &VotePos) -> String {
        format!("node {}'s log, the vote ({decree},{ballot})", self.node)
    }

    /// At a stop the executor runs what it holds at once.
    fn wait(&mut self) -> Result<(), String> {
        self.w.run_executor(self.node, true);
        Ok(())
    }
}

impl Machine<'_> {
    /// The newest record of `vote` in the log, and the persist that appended it (0: durable).
    fn locate(q: &SimExec<'_>, vote: &Message) -> Option<(VotePos, u64)> {
        let n = &q.w.nodes[q.node];
        let at = (vote.header.decree, vote.header.ballot);
        let is = |r: &Arc<Message>| r.kind() == MsgKind::Vote && (r.header.decree, r.header.ballot) == at;
        let pending = n.pending.iter().rev().find(|(_, r)| is(r)).map(|(seq, _)| *seq);
        pending.or_else(|| n.durable.iter().rev().any(is).then_some(0)).map(|seq| (at, seq))
    }

    /// Records leaving the log: the votes among them stay readable while decrees wait.
    fn retire(&mut self, gone: Vec<Arc<Message>>) {
        if !self.backlog.idle() {
            let votes = gone.into_iter().filter(|r| r.kind() == MsgKind::Vote);
            self.w.nodes[self.node].retired.extend(votes);
        }
    }
}

impl Host for Machine<'_> {
    fn now(&self) -> Micros {
        self.w.now
    }

    fn send(&mut self, to: &[MemberId], msg: &Arc<Message>) {
        self.w.transmit(self.node, to, msg);
    }

    /// Queues the record behind the flush in flight (group commit); a vote for a new decree
    /// may roll the log.
    fn persist(&mut self, seq: u64, record: &Arc<Message>) -> Result<Option<u64>, String> {
        let vote = record.kind() == MsgKind::Vote;
        if vote {
            self.w.checker.vote_logged(record);
        }
        let n = &mut self.w.nodes[self.node];
        let mut rolled = None;
        if vote && record.header.decree > n.last_logged {
            n.last_logged = record.header.decree;
            n.since_roll += 1;
            if n.since_roll >= n.roll_every {
                n.since_roll = 0;
                rolled = Some(record.header.decree);
            }
        }
        n.pending.push_back((seq, record.clone()));
        if !n.flushing {
            self.w.start_flush(self.node);
        }
        Ok(rolled)
    }

    /// Through the backlog: past the bound, decrees wait in the log.
    fn execute(&mut self, item: Execution) {
        let q = &mut SimExec { w: self.w, node: self.node };
        match item {
            Execution::Decree { vote, cookies } => {
                let before = self.backlog.spilled();
                self.backlog.execute(vote, cookies, q, Machine::locate);
                q.w.spilled += self.backlog.spilled() - before;
            }
            work => drop(self.backlog.hand(work, q)),
        }
    }

    fn executed(&self) -> (u64, bool) {
        (self.w.nodes[self.node].executed_below, false)
    }

    /// Drops the log before its first record beyond the checkpoint (what log truncation after
    /// a checkpoint does, at its most aggressive). A record beyond it that is not a vote stays
    /// too: a Prepare logged after the checkpoint was taken holds a promise the checkpoint
    /// does not, and truncation never drops the current log.
    fn truncate_log(&mut self, decree: u64) -> u64 {
        let n = &mut self.w.nodes[self.node];
        let keep_from = n.durable.iter().position(|r| r.header.decree > decree).unwrap_or(n.durable.len());
        let gone = n.durable.drain(..keep_from).collect();
        self.retire(gone);
        let n = &mut self.w.nodes[self.node];
        // A pipelined log is not in decree order: it holds votes from its lowest decree past the
        // checkpoint on (a re-proposal of an older decree does not make it hold those before).
        let beyond = n.durable.iter().filter(|r| r.kind() == MsgKind::Vote && r.header.decree > decree);
        beyond.map(|r| r.header.decree).min().unwrap_or(decree + 1)
    }

    /// The next vote for a new decree rolls the log.
    fn roll_log(&mut self) {
        let n = &mut self.w.nodes[self.node];
        n.since_roll = n.roll_every.saturating_sub(1);
    }

    /// The logs before the checkpoint are dropped; the new one starts with the Persist that
    /// follows. What lies beyond it (accepted votes a pipelined replica holds there, a
    /// decision) is carried over.
    fn load_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), String> {
        self.w.counts[5] += 1;
        let (cp, decree, size) = (cp.clone(), cp.decree, checkpoint_size(cp));
        let n = &mut self.w.nodes[self.node];
        n.checkpoint = Some((cp, size));
        let (kept, gone) = std::mem::take(&mut n.durable).into_iter().partition(|r| r.header.decree > decree);
        n.durable = kept;
        self.retire(gone);
        Ok(())
    }

    fn write_defunct(&mut self, highest: u32) -> Result<(), String> {
        self.w.nodes[self.node].defunct = highest;
        Ok(())
    }

    fn fetch_votes(&mut self, node: &MemberNode, request: Message) {
        self.w.counts[3] += 1;
        self.w.fetch_votes(self.node, node.id, request.header.decree);
    }

    /// From a node that exists (a forged Join may name one that does not), reachable, whose
    /// checkpoint is the one asked for.
    fn fetch_checkpoint(&mut self, node: &MemberNode, request: Message, _size: u64, load: bool) {
        let w = &mut *self.w;
        let decree = request.header.decree;
        let src = w.nodes.iter().position(|n| n.id == node.id).filter(|&src| w.reachable(self.node, src));
        let fetched = src.and_then(|src| w.nodes[src].checkpoint.clone()).filter(|(cp, _)| cp.decree == decree);
        let at = w.now + MS + w.rng.below(w.cfg.max_delay);
        let incarnation = w.nodes[self.node].incarnation;
        w.schedule(at, Event::CheckpointFetched { node: self.node, incarnation, fetched, load });
    }

    /// Honest replicas send nothing implausible. They do send to non-members: a replica left
    /// out of a configuration, or one behind, still speaks to the members it knows.
    fn rejected(&mut self, from: MemberId, kind: MsgKind, reason: Rejection, _: Option<IpAddr>) {
        self.w.rejected += 1;
        if !self.w.cfg.adversary && reason != Rejection::NotAMember {
            let what = format!("node {} rejected an honest {kind:?} from {from:?}: {reason}", self.node);
            self.w.checker.violation(what);
        }
    }

    fn set_peers(&mut self, _: &[&MemberNode]) {}

    fn fail(&mut self, reason: String) {
        self.w.checker.violation(format!("node {} failed: {reason}", self.node));
    }

    fn observe(&mut self, core: &Replica, action: &Action) {
        let proc = self.w.proc(self.node);
        match action {
            Action::NotifyStatus { primary: true } => {
                // `core` is as the whole step left it: a primary whose recovery vote was a
                // reconfiguration that left it out has switched already, and its ballot went
                // with its configuration (seed 11378 at window 16).
                if core.is_primary() {
                    self.w.checker.became_primary(proc, core.max_ballot());
                }
                self.w.counts[0] += 1;
                if let Some(nodes) = self.w.deferred_reconfiguration.take().filter(|_| self.w.now < self.w.cfg.faults_until) {
                    self.w.schedule(self.w.now, Event::Reconfigure(nodes));
                }
            }
            Action::ConfigurationChanged { config, .. } => self.w.checker.configuration(config.number, config.members.nodes.len()),
            Action::ShutDown => self.w.counts[1] += 1,
            _ => {}
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
