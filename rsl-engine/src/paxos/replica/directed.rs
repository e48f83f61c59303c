//! Directed multi-replica tests of the paths the randomized simulator does not reach on its
//! own: a new primary on a pipelined ring meeting a reconfiguration vote among the votes it
//! re-proposes (docs/core.md, "Reconfiguration"), and the last decree of
//! `ReplicateRequestExclusiveVote`; and the effect of each configured interval on the timers
//! it drives (heartbeats, elections, retries, joins, checkpoint queries).
//!
//! `Ring` is a small deterministic harness: three replicas, a FIFO network with zero delay
//! whose links can be cut per message kind, disks that are durable at once (so a crash loses
//! nothing but the process), and a virtual clock that only moves when a test says so. Each
//! scenario is built step by step; the harness checks agreement on every execution.

use super::tests::config;
use super::*;
use crate::paxos::{AcceptAll, SEC};

const IDS: [&str; 3] = ["1", "2", "3"];

pub(super) fn id(i: usize) -> MemberId {
    super::tests::id(IDS[i])
}

/// Configuration 1 from decree 0, of all three nodes (a reconfiguration keeps them all).
fn ring_config() -> ConfigInfo {
    config(&IDS)
}

/// What a vote decides, whoever proposed it: its requests, or the members it reconfigures to.
type Value = (Vec<Bytes>, Option<Vec<MemberId>>);

fn value(vote: &Message) -> Value {
    let body = vote.as_vote().expect("a vote");
    (body.requests.clone(), body.reconfig.as_ref().map(|m| m.nodes.iter().map(|n| n.id).collect()))
}

pub(super) struct Proc {
    replica: Option<Replica>,
    /// Every record this node ever persisted, in order: its durable log.
    pub(super) log: Vec<Arc<Message>>,
    /// What the current process life executed, in order.
    pub(super) executed: Vec<Arc<Message>>,
    /// A paused executor queues decrees here instead of running them (`pause_executor`).
    paused: Option<Vec<Arc<Message>>>,
    life: u64,
}

impl Proc {
    /// What the core hears before every input, as a driver's host reports it.
    fn executed_below(&self) -> Input {
        let below = self.executed.last().map_or(0, |v| v.header.decree + 1);
        Input::Executed { below, spilled: false }
    }
}

pub(super) struct Ring {
    pub(super) now: Micros,
    cfg: CoreConfig,
    pub(super) procs: Vec<Proc>,
    /// Messages in flight, oldest first: (from, to, message).
    net: VecDeque<(usize, usize, Arc<Message>)>,
    /// Answers to FetchVotes, in order: (learner, source, records).
    learned: VecDeque<(usize, usize, Vec<Arc<Message>>)>,
    /// Links that drop everything (`None`) or one kind of message, from → to.
    cut: std::collections::HashSet<(usize, usize, Option<MsgKind>)>,
    /// The value each decree executed with, first seen anywhere (agreement).
    decided: BTreeMap<u64, Value>,
    /// Every message each node sent, in order (what the tests look at).
    sent: Vec<(usize, Arc<Message>)>,
}

impl Ring {
    /// Three replicas of configuration 1 (from decree 0) at protocol version 7, window 16,
    /// started and settled as secondaries.
    pub(super) fn new() -> Ring {
        Ring::with(CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() })
    }

    pub(super) fn with(cfg: CoreConfig) -> Ring {
        let procs = (0..3).map(|_| Proc { replica: None, log: Vec::new(), executed: Vec::new(), paused: None, life: 0 }).collect();
        let mut ring = Ring {
            now: SEC,
            cfg,
            procs,
            net: VecDeque::new(),
            learned: VecDeque::new(),
            cut: Default::default(),
            decided: BTreeMap::new(),
            sent: Vec::new(),
        };
        for i in 0..3 {
            ring.boot(i);
        }
        ring.run();
        ring
    }

    pub(super) fn r(&self, i: usize) -> &Replica {
        self.procs[i].replica.as_ref().expect("node is up")
    }

    pub(super) fn r_mut(&mut self, i: usize) -> &mut Replica {
        self.procs[i].replica.as_mut().expect("node is up")
    }

    /// Starts node `i` from its durable log (no checkpoint: everything replays from decree 0).
    pub(super) fn boot(&mut self, i: usize) {
        let config = ring_config();
        let p = &mut self.procs[i];
        p.life += 1;
        p.executed.clear();
        p.paused = None;
        let mut replica = Replica::new(self.cfg.clone(), id(i), config, 100 * i as u64 + p.life);
        let mut out = Vec::new();
        for record in &p.log {
            replica.replay(record, &mut out).expect("the log replays");
        }
        replica.start(self.now, &mut AcceptAll, &mut out);
        p.replica = Some(replica);
        self.apply(i, out);
    }

    /// The process on node `i` dies; its durable log stays.
    pub(super) fn crash(&mut self, i: usize) {
        self.procs[i].replica = None;
    }

    pub(super) fn restart(&mut self, i: usize) {
        self.crash(i);
        self.boot(i);
    }

    pub(super) fn cut(&mut self, from: usize, to: usize, kind: Option<MsgKind>) {
        self.cut.insert((from, to, kind));
    }

    pub(super) fn isolate(&mut self, i: usize) {
        for j in (0..3).filter(|&j| j != i) {
            self.cut(i, j, None);
            self.cut(j, i, None);
        }
    }

    pub(super) fn heal(&mut self) {
        self.cut.clear();
    }

    pub(super) fn dropped(&self, from: usize, to: usize, msg: &Message) -> bool {
        self.procs[to].replica.is_none() || self.cut.contains(&(from, to, None)) || self.cut.contains(&(from, to, Some(msg.kind())))
    }

    pub(super) fn step(&mut self, i: usize, input: Input) {
        if self.procs[i].replica.is_none() {
            return;
        }
        let mut out = Vec::new();
        let now = self.now;
        let executed = self.procs[i].executed_below();
        self.r_mut(i).step(now, executed, &mut AcceptAll, &mut out);
        self.r_mut(i).step(now, input, &mut AcceptAll, &mut out);
        self.apply(i, out);
    }

    /// Node `i`'s executor stops running decrees (a slow `ExecuteReplicatedRequest`); they
    /// wait until `resume_executor`.
    pub(super) fn pause_executor(&mut self, i: usize) {
        self.procs[i].paused.get_or_insert_with(Vec::new);
    }

    pub(super) fn resume_executor(&mut self, i: usize) {
        for vote in self.procs[i].paused.take().unwrap_or_default() {
            self.executed(i, vote);
        }
    }

    /// Carries out a replica's actions. Persists are durable at once; sends go on the network
    /// in order (the gated ones after their persist, which is already durable).
    pub(super) fn apply(&mut self, i: usize, out: Vec<Action>) {
        let mut durable = None;
        for action in out {
            match action {
                Action::Send { to, msg, .. } => {
                    self.sent.push((i, msg.clone()));
                    match to {
                        Dest::All => (0..3).filter(|&j| j != i).for_each(|j| self.net.push_back((i, j, msg.clone()))),
                        // An id outside the ring (a forged sender's) reaches nobody.
                        Dest::One(m) => self.net.extend((0..3).find(|&j| id(j) == m).map(|j| (i, j, msg))),
                    }
                }
                Action::Persist { seq, record } => {
                    self.procs[i].log.push(record);
                    durable = Some(seq);
                }
                Action::Execute { vote, .. } => match &mut self.procs[i].paused {
                    Some(queued) => queued.push(vote),
                    None => self.executed(i, vote),
                },
                Action::FetchVotes { from, decree } => {
                    // From the first vote at or after `decree` (a pipelined log is not in
                    // decree order; before version 7, from the newest vote for it), if the
                    // source is up and reachable.
                    let src = (0..3).find(|&j| id(j) == from).expect("a node");
                    let reachable = self.procs[src].replica.is_some() && !self.cut.contains(&(src, i, None));
                    let log = &self.procs[src].log;
                    let start = if self.cfg.version.is_pipelined() {
                        log.iter().position(|r| r.kind() == MsgKind::Vote && r.header.decree >= decree)
                    } else {
                        log.iter().rposition(|r| r.kind() == MsgKind::Vote && r.header.decree == decree)
                    };
                    let records = match start.filter(|_| reachable) {
                        Some(start) => log[start..].to_vec(),
                        None => Vec::new(),
                    };
                    self.learned.push_back((i, src, records));
                }
                Action::FetchCheckpoint { .. } | Action::SaveCheckpoint(_) | Action::LoadCheckpoint(_) => {
                    panic!("no checkpoints in these scenarios")
                }
                _ => {}
            }
        }
        if let Some(seq) = durable {
            self.step(i, Input::Durable(seq));
        }
    }

    /// Agreement across every node and process life, and contiguous execution per life.
    pub(super) fn executed(&mut self, i: usize, vote: Arc<Message>) {
        let d = vote.header.decree;
        let p = &mut self.procs[i];
        if let Some(prev) = p.executed.last() {
            assert_eq!(prev.header.decree + 1, d, "node {i} executed out of order");
        }
        p.executed.push(vote.clone());
        let v = value(&vote);
        let first = self.decided.entry(d).or_insert_with(|| v.clone());
        assert_eq!(*first, v, "agreement: decree {d} executed with two values");
    }

    /// Delivers messages and learned records until nothing is in flight.
    pub(super) fn run(&mut self) {
        for _ in 0..100_000 {
            if let Some((from, to, msg)) = self.net.pop_front() {
                if !self.dropped(from, to, &msg) {
                    self.step(to, Input::Message { from: id(from), msg });
                }
            } else if let Some((i, src, records)) = self.learned.pop_front() {
                self.step(i, Input::Learned { from: id(src), records });
            } else {
                return;
            }
        }
        panic!("the network never went quiet");
    }

    /// Moves the clock forward by `dt`, ticking each replica when it asks to be.
    pub(super) fn advance(&mut self, dt: Micros) {
        let end = self.now + dt;
        loop {
            let next = (0..3).filter_map(|i| self.procs[i].replica.as_ref().map(|r| (r.next_wakeup(), i))).min();
            match next {
                Some((at, i)) if at <= end => {
                    self.now = self.now.max(at);
                    self.step(i, Input::Tick);
                    self.run();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Makes node `i` stand for election now, and runs the election.
    pub(super) fn promote(&mut self, i: usize) {
        for _ in 0..5 {
            self.step(i, Input::AttemptPromotion);
            self.step(i, Input::Tick);
            self.run();
            if self.r(i).role() == Role::Primary {
                return;
            }
            // Refused (a higher promise, or a status round still open): try again later.
            self.advance(SEC / 2);
        }
        panic!("node {i} could not be elected: {:?}", self.r(i).role());
    }

    pub(super) fn submit(&mut self, i: usize, request: &'static [u8]) {
        let mut out = Vec::new();
        let now = self.now;
        self.r_mut(i).submit(now, Bytes::from_static(request), 0, true, &mut out).expect("the primary takes requests");
        self.apply(i, out);
    }

    pub(super) fn change_configuration(&mut self, i: usize) {
        let mut out = Vec::new();
        let now = self.now;
        self.r_mut(i).change_configuration(now, ring_config().members, 0, &mut out).expect("the primary reconfigures");
        self.apply(i, out);
    }

    /// Where the record of sent messages is now (a `mark` for the queries below).
    pub(super) fn mark(&self) -> usize {
        self.sent.len()
    }

    /// How many messages of `kind` node `i` sent since `mark` (a broadcast counts once).
    pub(super) fn count_sent(&self, i: usize, mark: usize, kind: MsgKind) -> usize {
        self.sent[mark..].iter().filter(|(s, m)| *s == i && m.kind() == kind).count()
    }

    /// The votes node `i` sent since `mark` (an index into `sent`).
    pub(super) fn votes_sent(&self, i: usize, mark: usize) -> Vec<Arc<Message>> {
        self.sent[mark..].iter().filter(|(s, m)| *s == i && m.kind() == MsgKind::Vote).map(|(_, m)| m.clone()).collect()
    }

    /// The (decree, ballot) of every vote node `i` reported in a PrepareAccepted since `mark`.
    pub(super) fn reported(&self, i: usize, mark: usize) -> Vec<(u64, Ballot)> {
        let votes = self.sent[mark..].iter().filter(|(s, _)| *s == i).filter_map(|(_, m)| match &m.body {
            Body::PrepareAccepted(v) if !v.header.ballot.is_empty() => Some(decree_ballot(v)),
            _ => None,
        });
        votes.collect()
    }

    /// Every node's executed sequence, as (decree, value).
    pub(super) fn history(&self, i: usize) -> Vec<(u64, Value)> {
        self.procs[i].executed.iter().map(|v| (v.header.decree, value(v))).collect()
    }

    /// Elects `primary`, gets a request through, and lets heartbeats carry every node to the
    /// same executed sequence.
    pub(super) fn converge(&mut self, primary: usize, request: &'static [u8]) {
        self.promote(primary);
        self.submit(primary, request);
        self.run();
        self.advance(5 * SEC);
        let h = self.history(primary);
        assert!(h.iter().any(|(_, (reqs, _))| reqs.iter().any(|r| r == request)), "the request executed");
        for i in 0..3 {
            // A secondary executes a decree on the next vote's watermark: it may trail by one.
            let hi = self.history(i);
            assert!(hi.len() + 1 >= h.len() && h.len() + 1 >= hi.len(), "node {i} did not converge");
            let n = hi.len().min(h.len());
            assert_eq!(hi[..n], h[..n], "node {i} executed another sequence");
        }
    }

    pub(super) fn executed_anywhere(&self, request: &[u8]) -> bool {
        self.decided.values().any(|(reqs, _)| reqs.iter().any(|r| r == request))
    }
}

fn is_reconfig(v: &Message) -> bool {
    v.as_vote().is_some_and(|b| b.reconfig.is_some())
}

/// Case (a) up to the decision: returns the ring and the reconfiguration's decree.
///
/// - Node 0 is primary at b1 and everything up to d - 1 is chosen. Cut off, it proposes three
///   votes at d, d + 1, d + 2 that only its own log holds, and crashes.
/// - Node 1 is elected at r > b1 by {1, 2}, re-proposes to d - 1, and proposes the
///   reconfiguration R at d; node 2 accepts it, its acknowledgement is lost, node 1 crashes
///   before any decision.
/// - Node 0 restarts; node 2 is elected by {0, 2}. Its Prepare collects R at (d, r) (its own)
///   and node 0's votes at d + 1, d + 2 at b1 < r.
fn case_a_until_decision() -> (Ring, u64) {
    let mut ring = Ring::new();
    ring.promote(0);
    ring.submit(0, b"a1");
    ring.submit(0, b"a2");
    ring.run();
    let b1 = ring.r(0).max_ballot();
    let d = ring.r(0).next_propose;
    assert_eq!(ring.r(0).next_execute(), d, "everything node 0 proposed is chosen");

    ring.isolate(0);
    for orphan in [b"orphan-d" as &'static [u8], b"orphan-d+1", b"orphan-d+2"] {
        ring.submit(0, orphan);
    }
    ring.run();
    assert_eq!(ring.r(0).pending.range(d..).map(|(k, _)| *k).collect::<Vec<_>>(), [d, d + 1, d + 2]);
    ring.crash(0);
    ring.heal();

    ring.promote(1);
    let r = ring.r(1).max_ballot();
    assert!(r > b1);
    assert!(ring.r(1).is_primary(), "its re-proposals were chosen");
    assert_eq!(ring.r(1).next_propose, d, "the reconfiguration lands on node 0's orphaned decree");
    ring.cut(2, 1, Some(MsgKind::VoteAccepted));
    ring.change_configuration(1);
    ring.run();
    let held = ring.r(2).pending.get(&d).map(|(v, _)| v.clone()).expect("node 2 accepted R");
    assert!(is_reconfig(&held) && held.header.ballot == r);
    assert_eq!(ring.r(1).paxos_configuration().number, 1, "no decision yet");
    ring.crash(1);
    ring.heal();

    ring.boot(0);
    ring.run();
    // Node 0 still holds its own votes beyond d at b1 (it may also have learned R).
    let beyond: Vec<_> = ring.r(0).pending.range(d + 1..).map(|(k, (v, _))| (*k, v.header.ballot)).collect();
    assert_eq!(beyond, [(d + 1, b1), (d + 2, b1)]);

    // Hold node 0's acknowledgements: the decision must wait, and we watch what node 2 proposes
    // meanwhile.
    ring.cut(0, 2, Some(MsgKind::VoteAccepted));
    let mark = ring.sent.len();
    ring.promote(2);
    let c = ring.r(2).max_ballot();
    assert!(c > r);
    let reported = ring.reported(0, mark);
    assert!(reported.contains(&(d + 1, b1)) && reported.contains(&(d + 2, b1)), "node 0 reported its votes beyond d");
    ring.advance(5 * SEC); // resends, no heartbeats: the vote is outstanding
    let votes = ring.votes_sent(2, mark);
    assert!(!votes.is_empty());
    for v in &votes {
        assert_eq!((v.header.decree, v.header.ballot), (d, c), "node 2 proposes nothing beyond R");
        assert!(is_reconfig(v), "node 2 re-proposes R at d");
    }
    assert_eq!(ring.r(2).next_propose, d + 1);
    assert!(ring.r(2).to_send.is_empty() && ring.r(2).outstanding.len() == 1);
    // Node 0 accepted the re-proposal and still holds its old votes beyond it.
    assert!(ring.r(0).pending.get(&d).is_some_and(|(v, _)| v.header.ballot == c));
    assert_eq!(ring.r(0).pending.range(d + 1..).count(), 2);

    ring.heal();
    ring.advance(2 * SEC); // the next resend is acknowledged: chosen, decided, switched
    for i in [0, 2] {
        let r = ring.r(i);
        assert_eq!(r.paxos_configuration().number, 2, "node {i} switched");
        assert_eq!(r.configuration().initial_decree, d + 1);
        assert!(r.pending.values().all(|(v, _)| v.header.config == 2), "node {i} dropped the votes beyond d");
        let decision = ring.procs[i].log.iter().any(|m| m.kind() == MsgKind::ReconfigurationDecision && m.header.decree == d);
        assert!(decision, "node {i} logged the decision");
        let last = ring.procs[i].executed.iter().rev().find(|v| v.header.config == 1).expect("executed");
        assert!(last.header.decree == d && is_reconfig(last), "node {i} executed R at d");
    }
    (ring, d)
}

#[test]
fn case_a_a_new_primary_reproposes_a_reconfiguration_and_nothing_beyond_it() {
    let (mut ring, d) = case_a_until_decision();
    // Node 1 comes back in configuration 1 holding R at (d, r); a Join brings it the decision.
    ring.boot(1);
    ring.advance(3 * SEC);
    assert_eq!(ring.r(1).paxos_configuration().number, 2, "node 1 learned the decision");
    ring.converge(0, b"after");
    for i in 0..3 {
        assert_eq!(ring.r(i).configuration().number, 2);
        assert!(ring.history(i).iter().any(|(k, v)| *k == d && v.1.is_some()), "node {i} executed R at d");
    }
    for orphan in [b"orphan-d" as &[u8], b"orphan-d+1", b"orphan-d+2"] {
        assert!(!ring.executed_anywhere(orphan), "a vote beyond R was dropped, never executed");
    }
}

#[test]
fn case_a_the_decision_replays_after_a_crash() {
    let (mut ring, d) = case_a_until_decision();
    // Node 0's log holds, in order: its old votes beyond d (configuration 1), R re-proposed at
    // d, the decision. Node 2's holds R twice and the decision.
    for i in [0, 2] {
        let before = ring.history(i);
        let next = ring.r(i).next_execute();
        ring.restart(i);
        let r = ring.r(i);
        assert_eq!((r.paxos_configuration().number, r.configuration().number), (2, 2), "node {i} replays into configuration 2");
        assert_eq!(r.next_execute(), next);
        assert_eq!(r.next_execute(), d + 1);
        assert!(r.pending.is_empty(), "nothing of configuration 1 survives the replay");
        assert_eq!(ring.history(i), before, "node {i} replays the same sequence, R included");
    }
    ring.boot(1);
    ring.advance(3 * SEC);
    ring.converge(2, b"after restart");
    // And once more from logs that now hold configuration 2's votes after the decision.
    for i in 0..3 {
        let before = ring.history(i);
        ring.restart(i);
        assert_eq!(ring.r(i).configuration().number, 2);
        let after = ring.history(i);
        assert!(before.starts_with(&after) && after.len() + 1 >= before.len(), "node {i} replays what it executed");
    }
}

/// Case (b): R proposed at d under r and never chosen; a primary of a higher ballot that never
/// saw R proposes beyond d; a third primary's Prepare reports both.
///
/// - Node 1 is primary at r; cut off, it proposes R at d, which nobody else receives; it crashes.
/// - Node 0 is elected at a > r by {0, 2} (neither saw R), and proposes x at d and y at d + 1;
///   x is lost on its way to node 2, y arrives. Node 0 crashes: x is in its log only.
/// - Node 1 restarts and is elected by {1, 2}: its own R at (d, r), node 2's y at (d + 1, a).
#[test]
fn case_b_an_outbid_reconfiguration_gives_way_to_an_empty_vote() {
    let mut ring = Ring::new();
    ring.promote(0);
    ring.submit(0, b"a1");
    ring.run();
    ring.promote(1);
    ring.submit(1, b"b1");
    ring.run();
    let r = ring.r(1).max_ballot();
    let d = ring.r(1).next_propose;
    ring.isolate(1);
    ring.change_configuration(1);
    ring.run();
    assert!(ring.r(1).pending.get(&d).is_some_and(|(v, _)| is_reconfig(v) && v.header.ballot == r));
    ring.crash(1);
    ring.heal();

    ring.promote(0);
    let a = ring.r(0).max_ballot();
    assert!(a > r);
    assert!(ring.r(0).is_primary());
    assert_eq!(ring.r(0).next_propose, d, "node 0 never saw R and proposes at d");
    ring.cut(0, 2, None);
    ring.submit(0, b"x");
    ring.run();
    ring.heal();
    ring.cut(2, 0, Some(MsgKind::VoteAccepted)); // x stays unchosen whatever 2 answers
    ring.submit(0, b"y");
    ring.run();
    assert!(ring.r(0).pending.contains_key(&d));
    assert!(!ring.r(2).pending.contains_key(&d) && ring.r(2).pending.get(&(d + 1)).is_some_and(|(v, _)| v.header.ballot == a));
    ring.crash(0);
    ring.heal();

    // Node 1's ballot r is its own: restarting, it stands for election at once.
    let mark = ring.sent.len();
    ring.boot(1);
    ring.run();
    assert_eq!(ring.r(1).role(), Role::Primary);
    let e = ring.r(1).max_ballot();
    assert!(e > a);
    let votes = ring.votes_sent(1, mark);
    assert!(ring.reported(2, mark).contains(&(d + 1, a)), "node 2 reported y at (d + 1, a)");
    assert!(!ring.reported(2, mark).iter().any(|(k, _)| *k == d), "and nothing at d: R at (d, r) is the highest there");
    let at = |k: u64| votes.iter().find(|v| v.header.decree == k).cloned().unwrap_or_else(|| panic!("nothing proposed at {k}"));
    let (vd, vd1) = (at(d), at(d + 1));
    assert!(!is_reconfig(&vd) && value(&vd).0.is_empty(), "an empty vote at d, not R");
    assert_eq!(vd.header.ballot, e);
    assert_eq!(value(&vd1).0, [Bytes::from_static(b"y")], "and y carried on beyond d");
    assert!(ring.r(1).next_execute() > d + 1, "both chosen and executed");
    assert_eq!(ring.r(1).paxos_configuration().number, 1);

    ring.boot(0);
    ring.advance(SEC);
    ring.converge(1, b"after");
    for i in 0..3 {
        assert_eq!(ring.r(i).configuration().number, 1, "no replica switched");
        assert!(ring.history(i).iter().all(|(_, v)| v.1.is_none()), "node {i} never executed R");
    }
    assert!(!ring.executed_anywhere(b"x"), "x was never chosen");
    assert!(ring.executed_anywhere(b"y"));
}

#[test]
fn the_last_decree_stops_heartbeats_and_hands_the_ring_over() {
    for window in [1, 16] {
        last_decree(CoreConfig { version: Version::V7, window, ..CoreConfig::default() });
    }
    last_decree(CoreConfig::default()); // version 6, the original's rules
}

fn last_decree(cfg: CoreConfig) {
    let mut ring = Ring::with(cfg);
    ring.promote(0);
    ring.submit(0, b"a1");
    let mut out = Vec::new();
    let now = ring.now;
    ring.r_mut(0).submit_last(now, Bytes::from_static(b"last"), 7, &mut out).expect("taken");
    ring.apply(0, out);
    let mut out = Vec::new();
    assert_eq!(ring.r_mut(0).submit(now, Bytes::from_static(b"late"), 8, false, &mut out), Err(SubmitError::ShuttingDown));
    assert_eq!(ring.r_mut(0).change_configuration(now, ring_config().members, 9, &mut out), Err(SubmitError::ShuttingDown));
    assert!(out.is_empty(), "a refused submit keeps its cookie");
    let mark = ring.sent.len();
    ring.run();
    let last = ring.procs[0].executed.last().cloned().expect("executed");
    assert_eq!(value(&last).0, [Bytes::from_static(b"last")], "the last vote is chosen and executes on the primary");
    let last_decree = last.header.decree;
    assert!(ring.votes_sent(0, mark).iter().all(|v| v.header.decree <= last_decree));

    // No heartbeats: node 0 proposes nothing more, and the others elect another primary.
    let mark = ring.sent.len();
    ring.advance(8 * SEC);
    assert!(ring.votes_sent(0, mark).is_empty(), "no vote after the last decree");
    ring.advance(10 * SEC);
    assert!(ring.votes_sent(0, mark).is_empty());
    let primaries: Vec<usize> = (1..3).filter(|&i| ring.r(i).role() == Role::Primary).collect();
    assert_eq!(primaries.len(), 1, "a secondary took over");
    assert_ne!(ring.r(0).role(), Role::Primary);
    let p = primaries[0];
    ring.submit(p, b"next");
    ring.run();
    ring.advance(5 * SEC);
    for i in 0..3 {
        let h = ring.history(i);
        assert!(h.iter().any(|(_, v)| v.0 == [Bytes::from_static(b"last")]), "node {i} executed the last decree");
    }
    assert!(ring.executed_anywhere(b"next"));
    let mut out = Vec::new();
    let now = ring.now;
    assert_eq!(ring.r_mut(0).submit(now, Bytes::from_static(b"late"), 8, false, &mut out), Err(SubmitError::ShuttingDown));
    assert_ne!(ring.r(0).role(), Role::Primary, "a replica shutting down does not stand again");
}

/// The primary's send queue holds at most `max_cache_bytes` of requests: past it a request is
/// refused with its cookie kept, and once the votes in flight are chosen the queue drains and
/// takes requests again.
#[test]
fn the_send_queue_refuses_requests_past_its_bound() {
    let mut ring = Ring::with(CoreConfig { max_cache_bytes: 3500, ..CoreConfig::default() });
    ring.promote(0);
    for j in [1, 2] {
        ring.cut(0, j, Some(MsgKind::Vote));
    }
    let submit = |ring: &mut Ring, cookie| {
        let (now, mut out) = (ring.now, Vec::new());
        let result = ring.r_mut(0).submit(now, Bytes::from(vec![b'x'; 996]), cookie, false, &mut out);
        ring.apply(0, out);
        result
    };
    assert_eq!(submit(&mut ring, 1), Ok(()), "proposed: outstanding, not queued");
    assert_eq!(ring.r(0).queued_bytes(), 0);
    for cookie in 2..=4 {
        assert_eq!(submit(&mut ring, cookie), Ok(()));
    }
    assert_eq!(ring.r(0).queued_bytes(), 3000);
    let mut out = Vec::new();
    let now = ring.now;
    assert_eq!(ring.r_mut(0).submit(now, Bytes::from(vec![b'x'; 996]), 5, false, &mut out), Err(SubmitError::Full));
    assert!(out.is_empty(), "a refused submit keeps its cookie");
    assert_eq!(ring.r(0).queued_bytes(), 3000);

    ring.heal();
    ring.advance(3 * SEC); // the outstanding vote is resent and chosen, then the queued one
    assert_eq!(ring.r(0).queued_bytes(), 0);
    assert_eq!(submit(&mut ring, 6), Ok(()));
    ring.run();
    ring.advance(3 * SEC);
    let executed: usize = ring.history(0).iter().map(|(_, (reqs, _))| reqs.len()).sum();
    assert_eq!(executed, 5, "every request taken executed, the refused one did not");
}

/// A batch stays within `max_vote_bytes` encoded, header and cookie counted (RSL's
/// `GetMarshalLen`), and a request whose vote alone would pass `max_message_bytes` is refused:
/// no member could accept it, so it would hold the ring up forever.
#[test]
fn votes_fit_the_batch_bound_and_every_members_packet_bound() {
    let cfg = CoreConfig { max_vote_bytes: 1000, max_message_bytes: 1500, ..CoreConfig::default() };
    let mut ring = Ring::with(cfg);
    ring.promote(0);
    let mark = ring.mark();
    let submit = |ring: &mut Ring, len: usize, cookie| {
        let (now, mut out) = (ring.now, Vec::new());
        let result = ring.r_mut(0).submit(now, Bytes::from(vec![b'x'; len]), cookie, false, &mut out);
        ring.apply(0, out);
        result
    };
    let overhead = ring.r(0).vote_overhead();
    assert_eq!(submit(&mut ring, 1500 - overhead - 4 + 1, 1), Err(SubmitError::InvalidRequest), "one byte too long for any vote");
    assert_eq!(submit(&mut ring, 1500 - overhead - 4, 2), Ok(()), "just fits a vote of its own");
    for cookie in 3..40 {
        assert_eq!(submit(&mut ring, 100, cookie), Ok(()));
    }
    ring.run();
    let votes = ring.votes_sent(0, mark);
    let sizes: Vec<usize> = votes.iter().map(|v| v.encode(crate::format::message::Checksum::Default).unwrap().len()).collect();
    assert!(sizes.iter().any(|&n| n > 1000) && sizes.iter().all(|&n| n <= 1500), "{sizes:?}");
    let batched = votes.iter().zip(&sizes).filter(|(v, _)| matches!(&v.body, Body::Vote(b) if b.requests.len() > 1));
    assert!(batched.clone().count() >= 4 && batched.clone().all(|(_, &n)| n <= 1000), "batches within the bound: {sizes:?}");
    let executed: usize = ring.history(0).iter().map(|(_, (reqs, _))| reqs.len()).sum();
    assert_eq!(executed, 38, "every request taken executed");
}

/// The primary records each member's last VoteAccepted: when, the highest decree, and the
/// payload `SetVotePayload` set there (v6 and the pipelined v7); secondaries record nothing.
#[test]
fn the_primary_records_each_members_vote_progress() {
    for cfg in [CoreConfig::default(), CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() }] {
        let mut ring = Ring::with(cfg);
        ring.step(1, Input::SetVotePayload(41));
        ring.step(2, Input::SetVotePayload(42));
        ring.promote(0);
        ring.advance(SEC);
        ring.submit(0, b"a");
        ring.run();
        let at = ring.now;
        let top = ring.history(0).last().map(|(d, _)| *d).expect("executed");
        for (j, payload) in [(1, 41), (2, 42)] {
            let p = ring.r(0).progress()[&id(j)];
            assert_eq!(p.payload, payload, "{j}'s payload");
            assert!(p.decree >= top && p.voted_at > 0 && p.voted_at <= at, "{j}: {p:?} (top {top})");
            assert!(ring.r(j).progress().is_empty(), "a secondary records nothing");
        }
        assert!(!ring.r(0).progress().contains_key(&id(0)), "not itself");
        assert_eq!(ring.r(0).vote_payload(), 0);
        ring.step(1, Input::SetVotePayload(7));
        ring.submit(0, b"b");
        ring.run();
        assert_eq!(ring.r(0).progress()[&id(1)].payload, 7, "the latest payload replaces the last");
    }
}

/// `ChangeElectionDelay` takes effect at the next timer a secondary sets: with the delay
/// raised to an hour, the primary's silence goes unanswered for the configured 10 s and is
/// answered within an hour; lowered again, within seconds.
#[test]
fn a_changed_election_delay_sets_the_next_election_timer() {
    let hour = 3600 * SEC;
    let mut ring = Ring::with(CoreConfig::default());
    ring.promote(0);
    for i in 1..3 {
        ring.step(i, Input::ChangeElectionDelay(hour));
    }
    ring.submit(0, b"a");
    ring.run();
    ring.crash(0);
    ring.advance(60 * SEC);
    assert!((1..3).all(|i| ring.r(i).role() == Role::Secondary), "no election within a minute");
    ring.advance(hour);
    assert!((1..3).any(|i| ring.r(i).role() == Role::Primary), "an election within the hour");

    let mut ring = Ring::with(CoreConfig { election_delay: hour, ..CoreConfig::default() });
    ring.promote(0);
    for i in 1..3 {
        ring.step(i, Input::ChangeElectionDelay(2 * SEC));
    }
    ring.submit(0, b"a");
    ring.run();
    ring.crash(0);
    ring.advance(60 * SEC);
    assert!((1..3).any(|i| ring.r(i).role() == Role::Primary), "an election within a minute");
}

/// A caller may ask for any delay (`Duration::MAX` from the C ABI): the core saturates rather
/// than overflowing, and the replica keeps running without calling an election.
#[test]
fn an_unbounded_election_delay_from_a_caller_saturates() {
    let mut ring = Ring::with(CoreConfig::default());
    ring.promote(0);
    for i in 1..3 {
        ring.step(i, Input::ChangeElectionDelay(Micros::MAX));
    }
    ring.submit(0, b"a");
    ring.run();
    ring.crash(0);
    ring.advance(60 * SEC);
    assert!((1..3).all(|i| ring.r(i).role() == Role::Secondary), "no election");
}

/// `allow_promotion_while_catching_up` (docs/spec/behavior.md §2.9 step 2, Errata D1): a replica whose
/// executor has not yet run a chosen decree does not stand for election, even when asked to,
/// unless the flag lets it; once its executor catches up it stands. Allowed, it is elected
/// while the decree still waits, and `NotifyPrimaryRecovered` waits for it.
#[test]
fn a_replica_with_decrees_waiting_to_execute_stands_only_if_allowed() {
    for allow in [false, true] {
        let mut ring = Ring::with(CoreConfig { allow_promotion_while_catching_up: allow, ..CoreConfig::default() });
        ring.converge(0, b"a");
        ring.pause_executor(1);
        ring.submit(0, b"b");
        ring.run();
        ring.advance(3 * SEC); // a heartbeat makes "b" chosen, and executable, at node 1
        let waiting = |ring: &Ring| ring.procs[1].paused.as_ref().map_or(0, Vec::len);
        assert!(waiting(&ring) > 0, "node 1 holds a chosen decree it has not executed");
        ring.crash(0);
        let mark = ring.mark();
        ring.step(1, Input::AttemptPromotion);
        ring.step(1, Input::Tick);
        ring.run();
        assert_eq!(ring.count_sent(1, mark, MsgKind::StatusQuery), 1, "node 1 looked for the ring");
        let stood = ring.count_sent(1, mark, MsgKind::Prepare) > 0;
        assert_eq!(stood, allow, "node 1 stands while a decree waits only if allowed");
        if allow {
            assert_eq!(ring.r(1).role(), Role::Primary);
            assert!(waiting(&ring) > 0, "elected before the decree executed");
        } else {
            assert_eq!(ring.r(1).role(), Role::Secondary);
            ring.advance(SEC); // it retries after a heartbeat interval: still waiting
            assert_eq!(ring.count_sent(1, mark, MsgKind::Prepare), 0);
            ring.resume_executor(1);
            ring.promote(1);
        }
        ring.resume_executor(1);
        ring.submit(1, b"c");
        ring.run();
        let requests: Vec<Bytes> = ring.history(1).into_iter().flat_map(|(_, (reqs, _))| reqs).collect();
        assert_eq!(requests, [&b"a"[..], b"b", b"c"].map(Bytes::from_static), "everything executed, in order");
    }
}

/// The protocol-version raise (docs/spec/behavior.md §2.29): a ring at version 5 whose primary comes
/// back at 6 moves to 6 as its votes execute, and never back (a replica restarted at 5 replays
/// them and is at 6 again). A raised secondary answers in version 6.
#[test]
fn executing_a_newer_vote_raises_the_version_for_good() {
    let mut ring = Ring::with(CoreConfig { version: Version::V5, ..CoreConfig::default() });
    ring.converge(0, b"a");
    ring.cfg.version = Version::V6;
    ring.restart(0);
    ring.cfg.version = Version::V5;
    assert_eq!((ring.r(0).version(), ring.r(1).version()), (Version::V6, Version::V5), "a vote, not a peer, raises it");
    ring.converge(0, b"b");
    assert!((0..3).all(|i| ring.r(i).version() == Version::V6), "raised by executing the primary's votes");
    let mark = ring.mark();
    ring.submit(0, b"c");
    ring.run();
    let answers: Vec<Version> =
        ring.sent[mark..].iter().filter(|(s, m)| *s == 1 && m.kind() == MsgKind::VoteAccepted).map(|(_, m)| m.header.version).collect();
    assert!(!answers.is_empty() && answers.iter().all(|v| *v == Version::V6), "node 1 answers in version 6: {answers:?}");
    ring.restart(1);
    assert_eq!(ring.r(1).version(), Version::V6, "replaying the votes raises it again");
}

/// `m_heartBeatIntervalSec`: an idle primary proposes an empty vote (a heartbeat) once per
/// interval, so halving the interval doubles the heartbeats in the same ten seconds.
#[test]
fn an_idle_primary_sends_a_heartbeat_every_heartbeat_interval() {
    let heartbeats = |heartbeat_interval| {
        let mut ring = Ring::with(CoreConfig { heartbeat_interval, ..CoreConfig::default() });
        ring.converge(0, b"a");
        let mark = ring.mark();
        ring.advance(10 * SEC);
        ring.count_sent(0, mark, MsgKind::Vote)
    };
    assert_eq!((heartbeats(SEC), heartbeats(2 * SEC), heartbeats(5 * SEC)), (10, 5, 2));
}

/// How long each secondary of a ring whose primary crashed stays a secondary, the two of
/// them cut off from each other so that neither's election moves the other.
fn silences_before_standing(cfg: CoreConfig) -> [Micros; 2] {
    let mut ring = Ring::with(cfg);
    ring.converge(0, b"a");
    ring.submit(0, b"b");
    ring.run();
    ring.crash(0);
    ring.cut(1, 2, None);
    ring.cut(2, 1, None);
    let start = ring.now;
    let mut stood = [None; 2];
    while stood.iter().any(Option::is_none) {
        ring.advance(SEC / 100);
        assert!(ring.now - start < 60 * SEC, "a secondary never stood");
        for (k, i) in [1, 2].into_iter().enumerate() {
            if stood[k].is_none() && ring.r(i).role() != Role::Secondary {
                stood[k] = Some(ring.now - start);
            }
        }
    }
    stood.map(|s| s.expect("stood"))
}

/// `m_electionRandomize` and `m_maxElectionRandomizeSec`: a secondary stands once the
/// election delay randomised by ± the percentage, capped at the maximum, has passed without
/// a vote. With either at 0, both secondaries stand after exactly the delay; with both, each
/// at its own time within the bound.
#[test]
fn the_election_delay_is_randomised_by_the_percentage_up_to_the_maximum() {
    let exact = [10 * SEC, 10 * SEC];
    let cfg = |election_randomize_pct, max_election_randomize| CoreConfig {
        election_randomize_pct,
        max_election_randomize,
        ..CoreConfig::default()
    };
    assert_eq!(silences_before_standing(cfg(0, 5 * SEC)), exact);
    assert_eq!(silences_before_standing(cfg(50, 0)), exact);
    let [a, b] = silences_before_standing(cfg(50, 5 * SEC));
    assert_ne!(a, b, "each replica randomises its own delay");
    assert!([a, b].iter().all(|s| (5 * SEC..=15 * SEC).contains(s)), "within 10 s ± 5 s: {a} {b}");
    let [a, b] = silences_before_standing(cfg(50, SEC / 2));
    assert!([a, b].iter().all(|s| (9 * SEC + SEC / 2..=10 * SEC + SEC / 2).contains(s)), "within 10 s ± 0.5 s: {a} {b}");
}

/// `m_newLeaderGracePeriodSec`: a secondary that promised a new primary's ballot but never
/// got a vote from it waits this long, not the election delay, before standing.
#[test]
fn a_secondary_gives_a_new_primary_the_grace_period_before_standing() {
    for grace in [15 * SEC, 30 * SEC] {
        let cfg = CoreConfig { new_leader_grace_period: grace, election_randomize_pct: 0, ..CoreConfig::default() };
        let mut ring = Ring::with(cfg);
        for j in [1, 2] {
            ring.cut(0, j, Some(MsgKind::Vote));
        }
        ring.promote(0);
        ring.crash(0);
        ring.cut(1, 2, None);
        ring.cut(2, 1, None);
        let start = ring.now;
        ring.advance(grace - SEC);
        assert!((1..3).all(|i| ring.r(i).role() == Role::Secondary), "still waiting {} s after the promise", grace / SEC - 1);
        ring.advance(2 * SEC);
        assert!((1..3).all(|i| ring.r(i).role() != Role::Secondary), "stood {} s after the promise", (ring.now - start) / SEC);
    }
}

/// `m_initializeRetryIntervalSec`: a replica that cannot reach the others keeps asking for
/// their status (StatusQuery) once per interval.
#[test]
fn an_initializing_replica_asks_for_status_every_initialize_retry_interval() {
    let queries = |initialize_retry_interval| {
        let mut ring = Ring::with(CoreConfig { initialize_retry_interval, ..CoreConfig::default() });
        ring.isolate(1);
        ring.advance(12 * SEC);
        assert_eq!(ring.r(1).role(), Role::Initializing);
        let mark = ring.mark();
        ring.advance(12 * SEC);
        ring.count_sent(1, mark, MsgKind::StatusQuery)
    };
    assert_eq!((queries(SEC), queries(2 * SEC), queries(4 * SEC)), (12, 6, 3));
}

/// `m_useGlobalAcceptMessagesFlag`: set, a replica takes or refuses every message by the flag
/// `SetAcceptMessages` sets rather than by asking the application (which here accepts all):
/// two secondaries refusing leave the primary without a quorum.
#[test]
fn the_global_accept_flag_replaces_the_applications_answer_only_when_configured() {
    for global in [false, true] {
        let mut ring = Ring::with(CoreConfig { use_global_accept_flag: global, ..CoreConfig::default() });
        ring.converge(0, b"a");
        for i in [1, 2] {
            ring.step(i, Input::SetAcceptMessages(false));
        }
        ring.submit(0, b"b");
        ring.run();
        ring.advance(SEC);
        assert_eq!(ring.executed_anywhere(b"b"), !global, "use_global_accept_flag = {global}");
    }
}

/// `m_joinMessagesIntervalSec`: a replica that switched to a new configuration but has not yet
/// logged a vote of it (so it cannot know the old one defunct) announces the new one (Join)
/// once per interval.
#[test]
fn a_replica_not_sure_its_configuration_is_established_joins_every_join_interval() {
    let joins = |join_interval| {
        let mut ring = Ring::with(CoreConfig { join_interval, ..CoreConfig::default() });
        ring.converge(0, b"a");
        ring.cut(0, 2, Some(MsgKind::Vote));
        ring.change_configuration(0);
        ring.run();
        ring.advance(SEC / 2);
        let mark = ring.mark();
        ring.advance(10 * SEC);
        assert!(ring.r(2).join_due(), "node 2 has not logged a vote of configuration 2");
        assert!(!ring.r(1).join_due(), "node 1 has");
        ring.count_sent(2, mark, MsgKind::Join)
    };
    assert_eq!((joins(SEC), joins(2 * SEC), joins(5 * SEC)), (10, 5, 2));
}

/// `m_cPQueryRetryIntervalSec`: a primary whose log rolled wants a checkpoint to copy; while
/// no secondary has one, it asks them (StatusQuery) once per interval.
#[test]
fn a_primary_asks_for_a_checkpoint_to_copy_every_query_interval() {
    let queries = |checkpoint_query_interval| {
        let mut ring = Ring::with(CoreConfig { checkpoint_query_interval, ..CoreConfig::default() });
        ring.converge(0, b"a");
        let first_decree = ring.r(0).next_execute();
        let mark = ring.mark();
        ring.step(0, Input::LogRolled { first_decree });
        ring.run();
        ring.advance(20 * SEC - 1);
        ring.count_sent(0, mark, MsgKind::StatusQuery)
    };
    assert_eq!((queries(SEC), queries(2 * SEC), queries(5 * SEC)), (20, 10, 4));
}
