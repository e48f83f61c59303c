//! One replica's protocol state and its transitions, following RSL (docs/spec/behavior.md §2): the
//! acceptor rules, elections through a status quorum and a Prepare, one outstanding vote with
//! requests batched behind it, heartbeats, and catch-up by fetching votes.
//!
//! Durability is explicit: every record to keep is a `Persist` action with a sequence number,
//! and anything that promises what a record holds (VoteAccepted, PrepareAccepted) is a `Send`
//! gated on that number. The primary sends its vote while its own write is in flight and
//! counts itself only once `Durable` says the write is done.

use super::{
    AbortReason, Action, Application, BootstrapError, Checkpoint, Cookie, CoreConfig, Dest, Input, Micros, Rejection, SplitMix64,
    SubmitError,
};
use crate::format::message::{JoinBody, StatusBody};
use crate::format::{Ballot, Body, ConfigInfo, Header, MemberId, MemberSet, Message, MsgKind, Version, VoteBody};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

mod acceptor;
#[cfg(test)]
mod catalogue;
#[cfg(test)]
mod directed;
#[cfg(test)]
mod hostile;
mod leader;
#[cfg(test)]
mod loading;
mod membership;
mod pipeline;
#[cfg(test)]
mod props;
mod recovery;
mod stop;
mod validate;
mod window;

/// RSL's replica states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not a member of its configuration, or not bootstrapped yet (`PaxosInactive`).
    Inactive,
    /// Learning where the ring is: a status quorum, then learn, elect, or follow.
    Initializing,
    /// Standing for election with a Prepare.
    Preparing,
    /// Elected: proposes votes and serves requests.
    Primary,
    /// Follows a primary, accepting its votes.
    Secondary,
}

impl Role {
    /// Initializing, unless inactive: learning or loading does not make a replica a member.
    fn min_active(self) -> Role {
        if self == Role::Inactive {
            Role::Inactive
        } else {
            Role::Initializing
        }
    }

    /// The `state` field of a StatusResponse.
    fn status_code(self) -> u32 {
        let code = match self {
            Role::Primary => 1,
            Role::Secondary => 2,
            Role::Preparing => 3,
            Role::Initializing => 4,
            Role::Inactive => 0,
        };
        debug_assert!(code <= validate::MAX_STATUS_STATE, "state {code}, which peers refuse");
        code
    }
}

/// Requests waiting for the outstanding vote to be chosen; they become the next vote.
struct Pending {
    body: VoteBody,
    cookies: Vec<Cookie>,
    bytes: usize,
    /// An exclusive vote takes nothing more.
    closed: bool,
    /// A reconfiguration vote's `ChangeConfiguration` cookie.
    config_cookie: Option<Cookie>,
    /// When its first request arrived (`window`: how long it has waited).
    since: Micros,
}

/// A member's progress as the primary sees it (RSL's `RecordVoteAcceptedFromReplica`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberProgress {
    /// When its last VoteAccepted arrived, on the caller's clock.
    pub voted_at: Micros,
    /// The highest decree any of its VoteAccepteds named.
    pub decree: u64,
    /// The payload of its last VoteAccepted (`SetVotePayload`; 0 before v6).
    pub payload: u64,
}

/// The primary's vote in flight.
struct Outstanding {
    vote: Arc<Message>,
    /// Its persist: the primary counts itself once this is durable.
    seq: u64,
    acks: BTreeSet<MemberId>,
    cookies: Vec<Cookie>,
    config_cookie: Option<Cookie>,
    /// When it was proposed, and when its persist was durable (`Micros::MAX`: not yet): the
    /// times its `window::Pace` is measured from.
    proposed_at: Micros,
    durable_at: Micros,
}

/// A candidate's Prepare in flight.
struct Candidacy {
    prepare: Arc<Message>,
    seq: u64,
    promises: BTreeSet<MemberId>,
    /// The vote at our decree with the highest ballot among the answers (ours to start).
    freshest: Arc<Message>,
    deadline: Micros,
    /// Pipelined: the highest-ballot vote reported for each decree, and each member's answers
    /// so far against how many it announced.
    best: BTreeMap<u64, Arc<Message>>,
    answers: BTreeMap<MemberId, (u64, BTreeSet<u64>)>,
}

/// What `check_step` compares an input's outcome against.
struct Mark {
    actions: usize,
    max_ballot: Ballot,
    next_execute: u64,
    persist_seq: u64,
    durable_seq: u64,
    version: Version,
    accepted_decree: u64,
}

/// Why a log could not be replayed: a record that does not follow the one before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log record out of sequence: {kind:?} at decree {decree} after decree {after_decree}")]
pub struct ReplayError {
    /// The type of the record out of sequence.
    pub kind: MsgKind,
    /// Its decree.
    pub decree: u64,
    /// The decree of the record before it.
    pub after_decree: u64,
}

/// One replica of one ring.
pub struct Replica {
    cfg: CoreConfig,
    me: MemberId,
    /// The Paxos configuration: it changes when a reconfiguration decision is logged.
    paxos_config: ConfigInfo,
    /// Its members' ids (this one included, if a member).
    members: Vec<MemberId>,
    /// The state's configuration: it changes when the reconfiguration decree executes.
    state_config: ConfigInfo,
    highest_defunct: u32,
    next_join: Micros,
    /// A member set given by `Bootstrap` and not yet persisted, and until when to keep
    /// sending it to the other members.
    bootstrap: Option<MemberSet>,
    bootstrap_resend: Micros,
    version: Version,
    rng: SplitMix64,
    role: Role,
    /// The highest ballot promised, and the persist that recorded it.
    max_ballot: Ballot,
    max_ballot_seq: u64,
    /// The highest ballot seen in any admitted message.
    max_seen_ballot: Ballot,
    /// Ballots refused as jumps (`MAX_BALLOT_JUMP`), the highest per member of our
    /// configuration (`note_jump`).
    jumps: BTreeMap<MemberId, Ballot>,
    /// The highest accepted vote (a placeholder with an empty ballot before any), its persist
    /// and when it arrived.
    accepted: Arc<Message>,
    accepted_seq: u64,
    accepted_at: Micros,
    /// As primary, when it last saw a vote chosen (or became primary). One that has led
    /// nothing for an election delay listens to a Join from outside its configuration
    /// (`on_join`).
    led_at: Micros,
    /// The next decree to execute; every decree below it has been handed out to execute.
    next_execute: u64,
    /// Every decree below it has finished executing, as the execute side last reported
    /// (`Input::Executed`) or the restored state says; and whether chosen decrees wait in
    /// the log rather than in memory. Elections wait on them (`execute_queue_ready`).
    executed_below: u64,
    exec_spilled: bool,
    next_election: Micros,
    election_delay: Micros,
    action_deadline: Micros,
    force_reelection: bool,
    accept_flag: bool,
    statuses: BTreeMap<MemberId, Arc<Message>>,
    candidacy: Option<Candidacy>,
    /// The primary's votes in flight, in decree order (at most one before version 7).
    outstanding: VecDeque<Outstanding>,
    /// Pipelined: accepted votes not yet executed, by decree, with their persists.
    pending: BTreeMap<u64, (Arc<Message>, u64)>,
    /// Pipelined: the decree the primary proposes next.
    next_propose: u64,
    /// Pipelined: every decree below it is executed and our log proves it (a vote for it is
    /// followed by a vote whose watermark passes it at a ballot no higher). It can lag
    /// `next_execute` (a primary executes on its quorum); Prepares start from here.
    vouched: u64,
    /// Pipelined: the executed votes from `vouched` on, with the highest ballot logged for
    /// each decree since.
    recent: BTreeMap<u64, (Arc<Message>, Ballot)>,
    to_send: VecDeque<Pending>,
    /// The primary's last chosen decree, timed (`window`): when the batch behind the votes in
    /// flight goes out.
    pace: Option<window::Pace>,
    /// The request bytes in `to_send`; a request that would take it past `max_cache_bytes`
    /// is refused (`SubmitError::Full`).
    to_send_bytes: usize,
    /// `NotifyStatus(true)` has been raised (and not yet taken back).
    is_primary: bool,
    /// The decree a new primary re-proposed, until it executes.
    recovering: Option<u64>,
    primary_cookie: Bytes,
    last_proposed: Micros,
    persist_seq: u64,
    durable_seq: u64,
    /// Votes that arrived while initializing, newest last.
    cache: VecDeque<(MemberId, Arc<Message>)>,
    cache_bytes: usize,
    learning: Option<MemberId>,
    log_min_decree: u64,
    /// The relinquish vote has been proposed: nothing more is, and peers are ignored.
    relinquishing: bool,
    /// The last decree was submitted (`submit_last`): no more requests, heartbeats or
    /// candidacies; the replica still accepts votes.
    shutting_down: bool,
    vote_payload: u64,
    /// What the primary heard last from each member's VoteAccepted (`ReplicaHealth`); only
    /// members of the configuration have an entry.
    progress: BTreeMap<MemberId, MemberProgress>,
    checkpointed: u64,
    checkpoint_size: u64,
    /// A checkpoint to save once this decree has executed and the next vote is accepted.
    save_at: Option<u64>,
    saving: bool,
    /// The primary copies a peer's checkpoint of at least this decree instead of saving.
    copy_at: Option<u64>,
    copying: bool,
    copy_query_at: Micros,
    /// Fetching a peer's checkpoint to catch up.
    loading: Option<MemberId>,
    /// When a time-based checkpoint is due (`Micros::MAX`: never), the first decree of the
    /// newest log as far as we know, and whether a roll was asked for and not yet reported.
    next_checkpoint_time: Micros,
    log_first: u64,
    roll_asked: bool,
    /// The time of the input being stepped.
    clock: Micros,
    /// What restoring and replaying refused (kind of record, why), reported by `start`.
    skipped: Vec<(MsgKind, Rejection)>,
}

/// The empty accepted vote a configuration starts with.
fn placeholder(version: Version, decree: u64, config: u32) -> Arc<Message> {
    Arc::new(Message::new(Header::new(version, MemberId::EMPTY, decree, config, Ballot::EMPTY), Body::Vote(VoteBody::default())))
}

fn decree_ballot(m: &Message) -> (u64, Ballot) {
    (m.header.decree, m.header.ballot)
}

/// RSL's `IsNextDecree`: the same decree at a ballot at least as high, or the next decree at
/// the same ballot (which makes the current one chosen).
fn is_next((d, b): (u64, Ballot), (cd, cb): (u64, Ballot)) -> bool {
    let next = (d == cd && b >= cb) || (d == cd.wrapping_add(1) && b == cb);
    // `on_vote` tells a lower vote from the next one before anything else: never both.
    debug_assert!(!next || !is_lower((d, b), (cd, cb)), "({d},{b}) both follows and is below ({cd},{cb})");
    next
}

/// RSL's `IsLowerDecree`.
fn is_lower((d, b): (u64, Ballot), (cd, cb): (u64, Ballot)) -> bool {
    d < cd || b < cb
}

/// RSL's `IsHigherDecree`.
fn is_higher((d, b): (u64, Ballot), (cd, cb): (u64, Ballot)) -> bool {
    let higher = (d > cd && b >= cb) || (d == cd && b > cb);
    debug_assert!(!higher || !is_lower((d, b), (cd, cb)), "({d},{b}) both above and below ({cd},{cb})");
    higher
}

/// The configured election delay, moved by up to its randomisation either way.
/// Saturating: `ChangeElectionDelay` hands the core whatever delay a caller asked for.
fn randomized_election_delay(cfg: &CoreConfig, rng: &mut SplitMix64) -> Micros {
    let spread = (cfg.election_delay.saturating_mul(cfg.election_randomize_pct) / 100).min(cfg.max_election_randomize);
    let delay = cfg.election_delay.saturating_sub(spread).saturating_add(rng.below(spread.saturating_mul(2).saturating_add(1)));
    debug_assert!(delay.abs_diff(cfg.election_delay) <= spread, "election delay {delay} strays beyond {spread} of the configured one");
    delay
}

fn vote_size(body: &VoteBody) -> usize {
    body.requests.iter().map(|r| r.len() + 4).sum::<usize>() + body.cookie.len()
}

impl Replica {
    /// A replica in `config` with nothing accepted: configuration 1 with initial decree 0 is the
    /// legacy `Initialize` with a member list; configuration 0 (no members) is a replica that
    /// waits to be bootstrapped. Call [`restore_checkpoint`](Self::restore_checkpoint) and
    /// [`replay`](Self::replay) for what is durable, then [`start`](Self::start).
    pub fn new(cfg: CoreConfig, me: MemberId, config: ConfigInfo, seed: u64) -> Replica {
        let mut rng = SplitMix64::new(seed);
        let election_delay = randomized_election_delay(&cfg, &mut rng);
        let placeholder = placeholder(cfg.version, config.initial_decree, config.number);
        let next_execute = config.initial_decree;
        let mut replica = Replica {
            version: cfg.version,
            cfg,
            me,
            members: Vec::new(),
            paxos_config: ConfigInfo::default(),
            state_config: config.clone(),
            highest_defunct: 0,
            next_join: 0,
            bootstrap: None,
            bootstrap_resend: Micros::MAX,
            rng,
            role: Role::Initializing,
            max_ballot: Ballot::EMPTY,
            max_ballot_seq: 0,
            max_seen_ballot: Ballot::EMPTY,
            jumps: BTreeMap::new(),
            accepted: placeholder,
            accepted_seq: 0,
            accepted_at: 0,
            led_at: 0,
            next_execute,
            executed_below: next_execute,
            exec_spilled: false,
            next_election: Micros::MAX,
            election_delay,
            action_deadline: Micros::MAX,
            force_reelection: false,
            accept_flag: true,
            statuses: BTreeMap::new(),
            candidacy: None,
            outstanding: VecDeque::new(),
            pending: BTreeMap::new(),
            next_propose: 0,
            vouched: next_execute,
            recent: BTreeMap::new(),
            to_send: VecDeque::new(),
            pace: None,
            to_send_bytes: 0,
            is_primary: false,
            recovering: None,
            primary_cookie: Bytes::new(),
            last_proposed: 0,
            persist_seq: 0,
            durable_seq: 0,
            cache: VecDeque::new(),
            cache_bytes: 0,
            learning: None,
            log_min_decree: 0,
            relinquishing: false,
            shutting_down: false,
            vote_payload: 0,
            progress: BTreeMap::new(),
            checkpointed: 0,
            checkpoint_size: 0,
            save_at: None,
            saving: false,
            copy_at: None,
            copying: false,
            copy_query_at: Micros::MAX,
            loading: None,
            next_checkpoint_time: Micros::MAX,
            log_first: 0,
            roll_asked: false,
            clock: 0,
            skipped: Vec::new(),
        };
        replica.set_paxos_config(config);
        assert_eq!(replica.accepted.header.decree, replica.next_execute, "a new replica's first vote is for its next decree");
        debug_assert!(replica.accepted.header.ballot.is_empty() && replica.max_ballot.is_empty(), "a new replica has promised nothing");
        replica
    }

    fn set_paxos_config(&mut self, config: ConfigInfo) {
        self.members = config.members.nodes.iter().map(|n| n.id).collect();
        debug_assert_eq!(self.members.iter().collect::<BTreeSet<_>>().len(), self.members.len(), "members are distinct");
        let members = &self.members;
        self.progress.retain(|id, _| members.contains(id));
        self.paxos_config = config;
        debug_assert!(self.progress.keys().all(|id| self.members.contains(id)), "progress of a member that left");
    }

    /// This replica's member id.
    pub fn me(&self) -> MemberId {
        self.me
    }

    /// The protocol version this replica speaks: the configured one, raised by executing a vote
    /// of a newer one (docs/spec/behavior.md §2.29).
    pub fn version(&self) -> Version {
        self.version
    }

    /// Where the replica is in the protocol.
    pub fn role(&self) -> Role {
        self.role
    }

    /// `NotifyStatus(true)` has been raised: requests are taken.
    pub fn is_primary(&self) -> bool {
        self.is_primary
    }

    /// The highest ballot it has promised or accepted.
    pub fn max_ballot(&self) -> Ballot {
        self.max_ballot
    }

    /// The decree and ballot of the highest accepted vote.
    pub fn accepted(&self) -> (u64, Ballot) {
        decree_ballot(&self.accepted)
    }

    /// When the highest accepted vote was accepted (on a primary: proposed).
    pub fn accepted_at(&self) -> Micros {
        self.accepted_at
    }

    /// The payload this replica's VoteAccepteds carry (`SetVotePayload`).
    pub fn vote_payload(&self) -> u64 {
        self.vote_payload
    }

    /// What this replica, while primary, heard last from each member's VoteAccepted. Entries
    /// outlive a term, as in RSL; a member that leaves the configuration loses its entry.
    pub fn progress(&self) -> &BTreeMap<MemberId, MemberProgress> {
        &self.progress
    }

    /// The next decree to execute (the application's sequence number is one less).
    pub fn next_execute(&self) -> u64 {
        self.next_execute
    }

    fn quorum(&self) -> usize {
        let quorum = self.members.len() / 2 + 1;
        // Any two quorums share a member: that is what makes a chosen value stay chosen.
        debug_assert!(2 * quorum > self.members.len(), "a quorum of {quorum} out of {} is no majority", self.members.len());
        quorum
    }

    /// Where this replica is, as status rounds compare it: its highest accepted vote before
    /// version 7; from 7 on, where its execution is (it may hold votes it cannot execute yet).
    fn position(&self) -> (u64, Ballot) {
        if self.pipelined() {
            (self.vouched, Ballot::EMPTY)
        } else {
            self.accepted()
        }
    }

    /// Several decrees in flight with an explicit watermark (protocol version 7).
    fn pipelined(&self) -> bool {
        self.version.is_pipelined()
    }

    /// How many votes the primary keeps in flight: acceptors take votes at most `MAX_AHEAD`
    /// beyond their execution, so a wider window would only make them learn instead.
    fn window(&self) -> usize {
        let window = if self.pipelined() { self.cfg.window.clamp(1, pipeline::MAX_AHEAD as usize) } else { 1 };
        debug_assert!(window >= 1 && (self.pipelined() || window == 1), "window {window} before version 7");
        window
    }

    /// Whether an idle primary proposes empty votes to keep its secondaries following: not
    /// once it relinquishes or submitted its last decree (they should elect someone else).
    fn heartbeats(&self) -> bool {
        self.is_primary && !self.relinquishing && !self.shutting_down
    }

    /// Starts the protocol: a status round to find the ring.
    pub fn start(&mut self, now: Micros, app: &mut dyn Application, out: &mut Vec<Action>) {
        assert_eq!(self.persist_seq, 0, "start once");
        assert!(self.max_ballot >= self.accepted.header.ballot, "restore and replay left the promise below the accepted vote");
        debug_assert!(self.outstanding.is_empty() && self.candidacy.is_none(), "nothing is in flight before start");
        self.clock = now;
        // The first deadline is spread wider than later ones, as in the original.
        self.schedule_checkpoint(now, 50);
        for (kind, reason) in std::mem::take(&mut self.skipped) {
            self.reject(MemberId::EMPTY, kind, reason, out);
        }
        self.accepted_at = now;
        self.start_initializing(now, app, out);
        self.check_invariants();
    }

    /// When the replica next needs a `Tick`, if nothing else arrives first.
    pub fn next_wakeup(&self) -> Micros {
        let join = if self.join_due() { self.next_join } else { Micros::MAX };
        let bootstrap = if self.bootstrap.is_some() { self.bootstrap_resend } else { Micros::MAX };
        self.role_wakeup().min(join).min(bootstrap)
    }

    fn role_wakeup(&self) -> Micros {
        match self.role {
            Role::Inactive => Micros::MAX,
            Role::Secondary if self.force_reelection => 0,
            Role::Secondary => self.next_election,
            Role::Initializing if self.learning.is_some() || self.loading.is_some() => Micros::MAX,
            Role::Initializing => self.action_deadline,
            Role::Preparing => self.action_deadline.min(self.candidacy.as_ref().map_or(Micros::MAX, |c| c.deadline)),
            Role::Primary => {
                let copy = if self.copy_at.is_some() && !self.copying { self.copy_query_at } else { Micros::MAX };
                let next = if !self.outstanding.is_empty() {
                    self.action_deadline.min(self.next_batch_at().unwrap_or(Micros::MAX))
                } else if self.heartbeats() {
                    self.last_proposed.saturating_add(self.cfg.heartbeat_interval)
                } else {
                    Micros::MAX
                };
                next.min(copy)
            }
        }
    }

    /// Feeds one input.
    pub fn step(&mut self, now: Micros, input: Input, app: &mut dyn Application, out: &mut Vec<Action>) {
        self.clock = now;
        let before = self.progress_mark(out);
        match input {
            Input::Tick => self.tick(now, app, out),
            Input::Message { from, msg } => self.on_message(now, from, msg, app, out),
            Input::Durable(seq) => {
                assert!(seq <= self.persist_seq, "durable {seq} beyond the {} persists asked for", self.persist_seq);
                self.durable_seq = self.durable_seq.max(seq);
                debug_assert!(self.durable_seq >= seq, "a durable mark went back");
                self.note_durable(now);
                self.check_chosen(now, out);
                self.check_prepared(now, out);
            }
            Input::Learned { from, records } => self.on_learned(now, from, records, app, out),
            Input::AttemptPromotion => self.force_reelection = true,
            Input::RelinquishPrimary => self.relinquish(now, out),
            Input::SetVotePayload(payload) => self.vote_payload = payload,
            Input::ChangeElectionDelay(delay) => {
                self.cfg.election_delay = delay;
                self.election_delay = randomized_election_delay(&self.cfg, &mut self.rng);
            }
            Input::LogRolled { first_decree } => self.on_log_rolled(now, first_decree, out),
            Input::CheckpointSaved { decree, size, min_decree_in_log, copied } => {
                let last = self.checkpointed;
                // A saved checkpoint is of an executed decree; a copied one may be ahead of us.
                debug_assert!(decree < self.next_execute || copied, "a checkpoint of an executed decree");
                if decree > self.checkpointed {
                    self.schedule_checkpoint(now, 20);
                }
                if decree >= self.checkpointed {
                    (self.checkpointed, self.checkpoint_size) = (decree, size);
                }
                if decree < self.next_execute {
                    self.vouch_checkpointed(decree);
                }
                self.log_min_decree = self.log_min_decree.max(min_decree_in_log);
                // Each ends its own kind only: a save of ours may complete while a copy is in
                // flight, and the copy, when it lands, may be ahead of us (v7 seed 25863).
                if copied {
                    self.copying = false;
                } else {
                    self.saving = false;
                }
                self.copy_at = self.copy_at.filter(|&at| at > decree);
                debug_assert!(self.checkpointed >= last, "the checkpoint we hold went back from {last}");
            }
            Input::CheckpointFetched(fetched) => self.on_checkpoint_fetched(now, fetched, app, out),
            Input::SetAcceptMessages(accept) => self.accept_flag = accept,
            Input::Executed { below, spilled } => {
                // A restart or a load starts the host's count afresh: the state says at least this.
                self.executed_below = self.executed_below.max(below);
                self.exec_spilled = spilled;
            }
        }
        self.drain_cache(now, app, out);
        self.check_step(&before, out);
    }

    /// What only grows across an input, and where its actions start (`check_step`).
    fn progress_mark(&self, out: &[Action]) -> Mark {
        Mark {
            actions: out.len(),
            max_ballot: self.max_ballot,
            next_execute: self.next_execute,
            persist_seq: self.persist_seq,
            durable_seq: self.durable_seq,
            version: self.version,
            accepted_decree: self.accepted.header.decree,
        }
    }

    /// After an input: the invariants, nothing that only grows went back, and the actions it
    /// produced are in an order the driver can carry out: persists numbered on from the last
    /// one, each held send behind a persist already asked for, executions contiguous (each
    /// decree the previous + 1, a loaded checkpoint moving past its decree), and each saved
    /// checkpoint of exactly what has executed before it in the stream.
    fn check_step(&self, before: &Mark, out: &[Action]) {
        assert!(self.max_ballot >= before.max_ballot, "promise lowered from {} to {}", before.max_ballot, self.max_ballot);
        assert!(self.next_execute >= before.next_execute, "execution went back from {} to {}", before.next_execute, self.next_execute);
        debug_assert!(self.persist_seq >= before.persist_seq && self.durable_seq >= before.durable_seq, "sequence numbers went back");
        debug_assert!(self.version >= before.version, "the protocol version went down");
        // Pipelined, a switch drops the old configuration's votes beyond its decision.
        debug_assert!(self.pipelined() || self.accepted.header.decree >= before.accepted_decree, "the accepted decree went back");
        self.check_invariants();
        if !cfg!(debug_assertions) {
            return;
        }
        let (mut persisted, mut executed) = (before.persist_seq, before.next_execute);
        let (mut notified, mut fetched_votes, mut fetched_checkpoint, mut changed) = (None, None, None, None);
        let saved = out[before.actions..].iter().any(|a| matches!(a, Action::SaveCheckpoint(_)));
        for action in &out[before.actions..] {
            match action {
                Action::Persist { seq, record } => {
                    debug_assert_eq!(*seq, persisted + 1, "persists are numbered one after another");
                    debug_assert!(record.header.ballot <= self.max_ballot, "logged {} above the promise", record.header.ballot);
                    persisted = *seq;
                }
                Action::Send { after, msg, .. } => {
                    debug_assert!(*after <= persisted, "a send held for persist {after}, not yet asked for");
                    debug_assert!(msg.header.sender == self.me, "a {:?} sent in another's name", msg.kind());
                    // Whatever we say is at most our promise: anything higher would not be on disk.
                    debug_assert!(msg.header.ballot <= self.max_ballot, "a {:?} at {} above the promise", msg.kind(), msg.header.ballot);
                }
                Action::Execute { vote, .. } => {
                    debug_assert_eq!(vote.header.decree, executed, "decree {} executed out of order", vote.header.decree);
                    executed += 1;
                }
                Action::LoadCheckpoint(cp) => {
                    debug_assert!(cp.decree >= executed, "a loaded checkpoint {} behind execution {executed}", cp.decree);
                    executed = cp.decree + 1;
                }
                Action::NotifyStatus { primary } => notified = Some(*primary),
                Action::FetchVotes { from, .. } => fetched_votes = Some(*from),
                Action::FetchCheckpoint { from, load: true, .. } => fetched_checkpoint = Some(*from),
                Action::ConfigurationChanged { config, .. } => changed = Some(config),
                Action::ShutDown => debug_assert!(self.relinquishing, "shut down without relinquishing"),
                Action::Defunct(n) => debug_assert!(*n <= self.highest_defunct, "defunct {n} recorded, {} kept", self.highest_defunct),
                // The bootstrap checkpoint holds no state: it starts the count.
                Action::SaveCheckpoint(cp) if !cp.state_saved => executed = cp.decree + 1,
                Action::SaveCheckpoint(cp) => {
                    debug_assert_eq!(cp.decree + 1, executed, "a checkpoint of {} where {executed} is next to execute", cp.decree)
                }
                _ => {}
            }
        }
        debug_assert_eq!(persisted, self.persist_seq, "a persist asked for was not handed out");
        debug_assert_eq!(executed, self.next_execute, "a decree handed out to execute is missing from the actions");
        // What the actions told the driver is what the replica now holds.
        debug_assert!(notified.is_none_or(|p| p == self.is_primary), "NotifyStatus({notified:?}) but primary: {}", self.is_primary);
        debug_assert!(fetched_votes.is_none() || self.learning == fetched_votes, "fetching votes, and not learning from them");
        debug_assert!(fetched_checkpoint.is_none() || self.loading == fetched_checkpoint, "fetching a checkpoint to load, and not loading");
        debug_assert!(changed.is_none_or(|c| *c == self.state_config), "the configuration announced is not the state's");
        debug_assert!(!saved || self.saving, "a save in flight not tracked: a second could start");
    }

    fn check_invariants(&self) {
        // Every check here is a debug one; a release build skips the work they need (the
        // votes in flight are collected below) on every input.
        if !cfg!(debug_assertions) {
            return;
        }
        debug_assert!(self.max_ballot >= self.accepted.header.ballot, "promise below the accepted ballot");
        debug_assert!(self.durable_seq <= self.persist_seq);
        debug_assert!(
            self.next_execute == self.accepted.header.decree
                || self.next_execute == self.accepted.header.decree + 1
                || (self.pipelined() && self.next_execute <= self.accepted.header.decree),
            "execution {} is not at the accepted decree {}",
            self.next_execute,
            self.accepted.header.decree
        );
        debug_assert!(self.role == Role::Primary || (self.outstanding.is_empty() && self.to_send.is_empty() && !self.is_primary));
        debug_assert!(self.pending.keys().next().is_none_or(|&d| d >= self.next_execute), "pending votes were executed");
        debug_assert!(self.vouched <= self.next_execute, "vouched for a decree not executed");
        debug_assert!(self.recent.keys().all(|&d| d >= self.vouched && d < self.next_execute));
        debug_assert!((self.role == Role::Preparing) == self.candidacy.is_some());
        debug_assert!(self.accepted_seq <= self.persist_seq && self.max_ballot_seq <= self.persist_seq, "a record not asked for");
        // Roles and membership.
        let active = matches!(self.role, Role::Primary | Role::Secondary | Role::Preparing);
        debug_assert!(!active || self.members.contains(&self.me), "{:?} outside its configuration", self.role);
        debug_assert!(self.role != Role::Primary || self.max_ballot.member == self.me, "a primary under another's ballot");
        debug_assert!(self.recovering.is_none() || self.role == Role::Primary, "recovering without being primary");
        debug_assert!(!self.relinquishing || self.role == Role::Primary, "relinquishing without being primary");
        let a = &self.accepted.header;
        debug_assert!(a.ballot.is_empty() || a.ballot.member == a.sender, "the accepted vote is not its proposer's");
        debug_assert!(!(self.is_primary && self.recovering.is_some()), "primary to the application before its re-proposal was chosen");
        debug_assert!(self.progress.keys().all(|id| self.members.contains(id)), "progress of a non-member");
        debug_assert!(self.state_config.number == self.paxos_config.number, "the state's configuration and the Paxos one diverged");
        // Catching up is one thing at a time, and only while finding the ring.
        let finding = matches!(self.role, Role::Initializing | Role::Inactive);
        debug_assert!(self.learning.is_none() || finding, "learning while {:?}", self.role);
        debug_assert!(self.loading.is_none() || finding, "loading a checkpoint while {:?}", self.role);
        debug_assert!(self.learning.is_none() || self.loading.is_none(), "learning and loading at once");
        // The votes in flight: ours, at our ballot, consecutive, logged.
        let outstanding: Vec<(u64, Ballot)> = self.outstanding.iter().map(|o| decree_ballot(&o.vote)).collect();
        debug_assert!(outstanding.iter().all(|(_, b)| *b == self.max_ballot), "a vote in flight under an old ballot");
        debug_assert!(outstanding.windows(2).all(|w| w[1].0 == w[0].0 + 1), "votes in flight not consecutive: {outstanding:?}");
        debug_assert!(self.outstanding.iter().all(|o| o.seq <= self.persist_seq && !o.acks.contains(&self.me)));
        debug_assert!(self.pipelined() || self.outstanding.len() <= 1, "more than one vote in flight before version 7");
        debug_assert!(self.pipelined() || outstanding.first().is_none_or(|db| *db == self.accepted()), "the vote in flight is not ours");
        debug_assert!(
            !self.pipelined() || self.role != Role::Primary || outstanding.last().is_none_or(|(d, _)| d + 1 == self.next_propose),
            "the next proposal does not follow the votes in flight"
        );
        debug_assert_eq!(self.to_send_bytes, self.to_send.iter().map(|p| p.bytes).sum::<usize>(), "the send queue's size is kept");
        // Every cookie queued comes back once: one per request, a reconfiguration's alone.
        let alone = |b: &VoteBody| b.reconfig.is_some() || b.relinquish;
        debug_assert!(self.to_send.iter().all(|p| p.closed || !alone(&p.body)), "a vote that goes alone is open to requests");
        debug_assert!(self.to_send.iter().all(|p| p.cookies.len() == p.body.requests.len()), "queued cookies and requests differ");
        debug_assert!(
            self.to_send.iter().all(|p| self.vote_overhead() + p.bytes <= self.cfg.max_vote_bytes || p.body.requests.len() == 1),
            "a batch past the vote size"
        );
        debug_assert!(self
            .outstanding
            .iter()
            .all(|o| o.cookies.is_empty() || o.cookies.len() == o.vote.as_vote().map_or(0, |v| v.requests.len())));
        let reconfig = |o: &Outstanding| o.vote.as_vote().is_some_and(|v| v.reconfig.is_some());
        debug_assert!(self.outstanding.iter().all(|o| o.config_cookie.is_none() || reconfig(o)), "a config cookie on a plain vote");
        // The acceptor's votes: none above the promise, none above the accepted one.
        debug_assert!(self.pipelined() || (self.pending.is_empty() && self.recent.is_empty()), "pipelined state before version 7");
        debug_assert!(self.pending.values().all(|(v, _)| v.header.ballot <= self.max_ballot), "a pending vote above the promise");
        debug_assert!(self.pending.values().all(|(v, _)| decree_ballot(v) <= self.accepted()), "a pending vote above the accepted one");
        debug_assert!(self.pending.iter().all(|(d, (v, seq))| *d == v.header.decree && *seq <= self.persist_seq));
        debug_assert!(self.recent.iter().all(|(d, (v, logged))| *d == v.header.decree && *logged >= v.header.ballot));
        // The candidacy: our ballot, our promise.
        if let Some(c) = &self.candidacy {
            debug_assert!(c.freshest.header.ballot <= self.max_ballot, "a fresher vote than our own ballot");
            debug_assert!(
                self.pipelined()
                    || (c.prepare.header.decree == self.accepted.header.decree && c.freshest.header.decree == c.prepare.header.decree),
                "a Prepare for another decree than our accepted vote's"
            );
            debug_assert!(c.prepare.header.ballot == self.max_ballot && self.max_ballot.member == self.me, "a candidacy outbid");
            debug_assert!(c.seq <= self.persist_seq && !c.promises.contains(&self.me), "a candidacy's own promise");
            debug_assert!(c.promises.iter().all(|m| self.members.contains(m)), "a promise from a non-member");
        }
        // (An inactive replica keeps its last round's, unread, until it initializes again.)
        let round_of_members = self.statuses.keys().all(|m| self.members.contains(m) && *m != self.me);
        debug_assert!(self.role != Role::Initializing || round_of_members, "a status from a non-member");
        debug_assert!(self.outstanding.iter().all(|o| o.acks.iter().all(|m| self.members.contains(m))), "an ack from a non-member");
        debug_assert!(
            self.cache.iter().all(|(from, v)| v.header.sender == *from && self.members.contains(from)),
            "a cached vote of a non-member"
        );
        debug_assert!(self.to_send.is_empty() || self.is_primary, "requests queued on a replica that never took them");
        // A leader executes each of its votes as it is chosen, and proposes what it executes.
        debug_assert!(
            self.pipelined()
                || self.role != Role::Primary
                || !self.outstanding.is_empty()
                || self.relinquishing
                || self.next_execute == self.accepted.header.decree + 1,
            "an idle primary has not executed its last vote"
        );
        debug_assert!(
            !self.pipelined() || self.role != Role::Primary || self.next_execute <= self.next_propose,
            "a primary executed what it never proposed"
        );
        // The vote cache: strictly rising, and within its bound.
        debug_assert!(!self.cache.is_empty() || self.cache_bytes == 0, "an empty cache holds bytes");
        debug_assert!(self.cache_bytes <= self.cfg.max_cache_bytes, "the cache passed its bound");
        debug_assert!(
            self.cache.iter().zip(self.cache.iter().skip(1)).all(|((_, a), (_, b))| {
                let (a, b) = (decree_ballot(a), decree_ballot(b));
                a != b && !is_lower(b, a)
            }),
            "cached votes out of order"
        );
    }

    fn persist(&mut self, record: Arc<Message>, out: &mut Vec<Action>) -> u64 {
        debug_assert!(record.kind().is_log_record());
        // Written here, read back by `replay`: what we log must be what replay takes.
        debug_assert_eq!(self.check_record(&record, validate::MAX_BALLOT_ID), Ok(()), "logging a record replay would refuse");
        if record.kind() == MsgKind::Vote {
            self.maybe_roll_for_time(out);
        }
        self.persist_seq += 1;
        out.push(Action::Persist { seq: self.persist_seq, record });
        self.persist_seq
    }

    fn send(&self, to: Dest, msg: Message, after: u64, out: &mut Vec<Action>) {
        debug_assert!(after <= self.persist_seq, "held for persist {after}, not yet asked for");
        debug_assert!(to != Dest::One(self.me) && msg.header.sender == self.me, "a message to ourselves, or in another's name");
        out.push(Action::Send { to, msg: Arc::new(msg), after });
    }

    fn header(&self, decree: u64, ballot: Ballot) -> Header {
        debug_assert!(decree < crate::format::DECREE_LIMIT, "sending decree {decree}, which every peer refuses");
        Header::new(self.version, self.me, decree, self.paxos_config.number, ballot)
    }

    /// NotAccepted names where we are (our highest accepted decree, or from version 7 our
    /// vouched point) and our promise.
    fn not_accepted(&self, to: MemberId, out: &mut Vec<Action>) {
        let msg = Message::new(self.header(self.position().0, self.max_ballot), Body::NotAccepted);
        self.send(Dest::One(to), msg, 0, out);
    }

    /// Returns a vote's cookies unexecuted: its requests' and, for a reconfiguration, the
    /// `ChangeConfiguration` cookie.
    fn abort_cookies(cookies: Vec<Cookie>, config_cookie: Option<Cookie>, reason: AbortReason, out: &mut Vec<Action>) {
        out.extend(cookies.into_iter().map(|cookie| Action::Abort { cookie, reason, config: false }));
        out.extend(config_cookie.map(|cookie| Action::Abort { cookie, reason, config: true }));
    }

    fn execute(&mut self, vote: Arc<Message>, cookies: Vec<Cookie>, config_cookie: Option<Cookie>, out: &mut Vec<Action>) {
        let decree = vote.header.decree;
        assert_eq!(decree, self.next_execute, "decrees execute in order, each once");
        assert!(!vote.header.ballot.is_empty(), "only a proposed vote can be chosen");
        debug_assert!(cookies.is_empty() || cookies.len() == vote.as_vote().map_or(0, |v| v.requests.len()));
        debug_assert!(!self.pending.contains_key(&decree), "decree {decree} executes while still pending");
        debug_assert!(
            config_cookie.is_none() || vote.as_vote().is_some_and(|v| v.reconfig.is_some()),
            "a ChangeConfiguration cookie on a plain vote"
        );
        self.next_execute = decree + 1;
        // RSL's `AddToExecutionQueue`: a chosen vote of a newer version raises ours for good
        // (docs/spec/behavior.md §2.29). Never into or out of 7: `check_version` keeps the pipelined
        // protocol apart, so only 1 to 6 rise this way; 7 is configured.
        if vote.header.version > self.version {
            debug_assert_eq!(vote.header.version.is_pipelined(), self.pipelined());
            self.version = vote.header.version;
        }
        if self.pipelined() {
            self.recent.insert(decree, (vote.clone(), vote.header.ballot));
        }
        debug_assert!(self.version >= vote.header.version || vote.header.version.is_pipelined(), "executed a newer version's vote");
        let new_members = vote.as_vote().and_then(|v| v.reconfig.clone());
        let number = vote.header.config + 1;
        out.push(Action::Execute { vote, cookies });
        if let Some(members) = new_members {
            self.state_config = ConfigInfo { number, initial_decree: decree + 1, members };
            out.push(Action::ConfigurationChanged { config: self.state_config.clone(), cookie: config_cookie });
        }
    }

    fn set_max_ballot(&mut self, now: Micros, ballot: Ballot, seq: u64) {
        debug_assert!(ballot.id <= validate::MAX_BALLOT_ID, "the unbeatable ballot {ballot} got past validation");
        debug_assert!(seq <= self.persist_seq, "a promise backed by persist {seq}, not yet asked for");
        if ballot <= self.max_ballot {
            return;
        }
        self.max_ballot = ballot;
        self.max_ballot_seq = seq;
        let wait = if ballot.member == self.me { self.cfg.heartbeat_interval } else { self.cfg.new_leader_grace_period };
        self.next_election = self.next_election.max(now.saturating_add(wait));
    }

    fn tick(&mut self, now: Micros, app: &mut dyn Application, out: &mut Vec<Action>) {
        if self.bootstrap.is_some() && now >= self.bootstrap_resend {
            self.resend_bootstrap(now, out);
        }
        if self.join_due() && now >= self.next_join {
            self.next_join = now.saturating_add(self.cfg.join_interval);
            self.send_join(Dest::All, out);
        }
        match self.role {
            Role::Inactive => {}
            Role::Secondary => {
                if self.force_reelection || now >= self.next_election {
                    self.start_initializing(now, app, out);
                }
            }
            Role::Initializing => {
                if self.learning.is_none() && self.loading.is_none() && now >= self.action_deadline {
                    self.start_initializing(now, app, out);
                }
            }
            Role::Preparing => {
                let c = self.candidacy.as_ref().expect("preparing has a candidacy");
                if now >= c.deadline {
                    self.start_initializing(now, app, out);
                } else if now >= self.action_deadline {
                    for m in self.members.iter().filter(|m| **m != self.me && !c.promises.contains(m)) {
                        out.push(Action::Send { to: Dest::One(*m), msg: c.prepare.clone(), after: 0 });
                    }
                    self.action_deadline = now.saturating_add(self.cfg.prepare_retry_interval);
                }
            }
            Role::Primary => {
                if self.copy_at.is_some() && !self.copying && now >= self.copy_query_at {
                    self.copy_query_at = now.saturating_add(self.cfg.checkpoint_query_interval);
                    let (ad, ab) = self.position();
                    self.send(Dest::All, Message::new(self.header(ad, ab), Body::StatusQuery), 0, out);
                }
                if !self.outstanding.is_empty() {
                    if now >= self.action_deadline {
                        for o in &self.outstanding {
                            for m in self.members.iter().filter(|m| **m != self.me && !o.acks.contains(m)) {
                                out.push(Action::Send { to: Dest::One(*m), msg: o.vote.clone(), after: 0 });
                            }
                        }
                        self.action_deadline = now.saturating_add(self.cfg.vote_retry_interval);
                    }
                    // A batch waiting behind the votes in flight may have fallen due (`window`).
                    self.send_next(now, out);
                } else if self.heartbeats() && now >= self.last_proposed.saturating_add(self.cfg.heartbeat_interval) {
                    debug_assert!(self.to_send.is_empty());
                    let heartbeat = VoteBody { cookie: self.primary_cookie.clone(), ..Default::default() };
                    self.propose(now, heartbeat, Vec::new(), None, out);
                }
            }
        }
    }

    fn start_initializing(&mut self, now: Micros, app: &mut dyn Application, out: &mut Vec<Action>) {
        if self.role == Role::Primary {
            self.step_down(out);
        }
        if !self.members.contains(&self.me) {
            (self.role, self.candidacy, self.learning, self.loading) = (Role::Inactive, None, None, None);
            self.action_deadline = Micros::MAX;
            return;
        }
        self.role = Role::Initializing;
        self.candidacy = None;
        self.learning = None;
        self.loading = None;
        self.statuses.clear();
        self.action_deadline = now.saturating_add(self.cfg.initialize_retry_interval);
        debug_assert!(self.outstanding.is_empty() && !self.is_primary, "stepped down first");
        if self.quorum() == 1 {
            self.next_election = 0;
            return self.move_to_secondary_or_prepare(now, app, out);
        }
        let (ad, ab) = self.position();
        self.send(Dest::All, Message::new(self.header(ad, ab), Body::StatusQuery), 0, out);
        debug_assert!(self.role == Role::Initializing && self.statuses.is_empty(), "a status round starts afresh");
    }

    /// `MoveToSecondaryOrPrepare` (docs/spec/behavior.md §2.9).
    fn move_to_secondary_or_prepare(&mut self, now: Micros, app: &mut dyn Application, out: &mut Vec<Action>) {
        debug_assert_eq!(self.role, Role::Initializing);
        debug_assert!(self.candidacy.is_none() && self.learning.is_none() && self.loading.is_none(), "not done finding the ring");
        let stand = now >= self.next_election || self.max_ballot.member == self.me || self.force_reelection;
        // With no ballot left that peers take (`MAX_BALLOT_ID`), or shutting down, it leaves the
        // primary role to the others, as a veto would (and waits as long).
        if stand && (self.shutting_down || self.next_ballot().is_none()) {
            self.next_election = now.saturating_add(self.cfg.heartbeat_interval);
        } else if stand {
            // A log-roll checkpoint not yet started gives way to the election; one being
            // written blocks it.
            self.save_at = None;
            if let Some(cookie) = if self.saving || !self.execute_queue_ready() { None } else { app.can_become_primary() } {
                self.primary_cookie = cookie;
                return self.start_preparing(now, out);
            }
            self.next_election = now.saturating_add(self.cfg.heartbeat_interval);
        }
        self.become_secondary();
    }

    /// RSL's `IsExecuteQueueReady`: every chosen decree waiting to execute is in memory, and
    /// unless configured otherwise none waits (a new primary's state then includes everything
    /// earlier primaries passed before it is asked `CanBecomePrimary`).
    fn execute_queue_ready(&self) -> bool {
        !self.exec_spilled && (self.cfg.allow_promotion_while_catching_up || self.executed_below >= self.next_execute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Node;
    use crate::paxos::{AcceptAll, SEC};
    use std::net::Ipv4Addr;

    pub(super) fn id(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }

    pub(super) fn config(ids: &[&str]) -> ConfigInfo {
        let node = |s: &str| Node { id: id(s), ip: Ipv4Addr::LOCALHOST, rsl_port: 1, learn_port: 2, app_port: 0, host_name: Bytes::new() };
        ConfigInfo {
            number: 1,
            initial_decree: 0,
            members: MemberSet { nodes: ids.iter().map(|s| node(s)).collect(), cookie: Bytes::new() },
        }
    }

    fn vote(sender: &str, decree: u64, ballot: Ballot, request: &'static [u8]) -> Arc<Message> {
        let body = VoteBody { requests: vec![Bytes::from_static(request)], ..Default::default() };
        Arc::new(Message::new(Header::new(Version::V6, id(sender), decree, 1, ballot), Body::Vote(body)))
    }

    /// Replica "1" of {1, 2, 3}, restored from a checkpoint whose next vote is `accepted`.
    fn replica_at(accepted: Arc<Message>) -> Replica {
        let mut r = Replica::new(CoreConfig::default(), id("1"), config(&["1", "2", "3"]), 7);
        let decree = accepted.header.decree - 1;
        let max_ballot = accepted.header.ballot;
        r.restore_checkpoint(
            &Checkpoint { decree, next_vote: accepted, max_ballot, config: config(&["1", "2", "3"]), state_saved: true },
            0,
        );
        r
    }

    /// That replica, asked to stand for election.
    fn candidate(accepted: Arc<Message>) -> (Replica, Vec<Action>) {
        let mut r = replica_at(accepted);
        let mut out = Vec::new();
        r.start(0, &mut AcceptAll, &mut out);
        r.step(0, Input::AttemptPromotion, &mut AcceptAll, &mut out);
        let (d, b) = r.accepted();
        let status = StatusBody {
            query_decree: d,
            query_ballot: b,
            last_received_ago_ms: 0,
            min_decree_in_log: 0,
            checkpointed_decree: 0,
            checkpoint_size: 0,
            max_ballot: b,
            state: 2,
        };
        let reply = Message::new(Header::new(Version::V6, id("2"), d, 1, b), Body::StatusResponse(status));
        out.clear();
        r.step(SEC, Input::Message { from: id("2"), msg: Arc::new(reply) }, &mut AcceptAll, &mut out);
        assert_eq!(r.role(), Role::Preparing);
        (r, out)
    }

    fn proposed(out: &[Action]) -> Vec<Arc<Message>> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send { to: Dest::All, msg, .. } if msg.kind() == MsgKind::Vote => Some(msg.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_new_primary_reproposes_the_freshest_value_it_hears_of() {
        let (mut r, out) = candidate(vote("2", 5, Ballot::new(1, id("2")), b"mine"));
        let seq = out.iter().find_map(|a| matches!(a, Action::Persist { record, .. } if record.kind() == MsgKind::Prepare).then_some(()));
        assert!(seq.is_some(), "the Prepare is logged");
        let ballot = r.max_ballot();
        assert_eq!(ballot.member, id("1"));
        // Member 2 accepted another value at the same decree under a higher ballot than ours.
        let fresher = vote("3", 5, Ballot::new(1, id("3")), b"theirs");
        let promise = Message::new(Header::new(Version::V6, id("2"), 5, 1, ballot), Body::PrepareAccepted(Box::new((*fresher).clone())));
        let mut out = Vec::new();
        r.step(SEC, Input::Message { from: id("2"), msg: Arc::new(promise) }, &mut AcceptAll, &mut out);
        assert!(proposed(&out).is_empty(), "not primary before its own Prepare is durable");
        r.step(SEC, Input::Durable(1), &mut AcceptAll, &mut out);
        assert_eq!(r.role(), Role::Primary);
        let votes = proposed(&out);
        assert_eq!(votes.len(), 1);
        assert_eq!((votes[0].header.decree, votes[0].header.ballot), (5, ballot));
        assert_eq!(votes[0].as_vote().unwrap().requests, [Bytes::from_static(b"theirs")]);
        // Not primary to the application until the re-proposal is chosen.
        assert!(!r.is_primary());
        assert_eq!(r.submit(SEC, Bytes::from_static(b"x"), 1, false, &mut out), Err(SubmitError::NotPrimary));
    }

    #[test]
    fn an_answer_ahead_of_the_prepare_is_ignored() {
        let (mut r, _) = candidate(vote("3", 5, Ballot::new(1, id("3")), b"mine"));
        let ballot = r.max_ballot();
        let ahead = vote("2", 6, Ballot::new(1, id("3")), b"later");
        let promise = Message::new(Header::new(Version::V6, id("2"), 5, 1, ballot), Body::PrepareAccepted(Box::new((*ahead).clone())));
        let mut out = Vec::new();
        r.step(SEC, Input::Message { from: id("2"), msg: Arc::new(promise) }, &mut AcceptAll, &mut out);
        r.step(SEC, Input::Durable(1), &mut AcceptAll, &mut out);
        assert_eq!(r.role(), Role::Preparing, "an invalid promise does not count");
    }

    #[test]
    fn votes_below_the_promise_are_logged_but_refused() {
        let mut r = replica_at(vote("3", 5, Ballot::new(1, id("3")), b"a"));
        let mut out = Vec::new();
        let prepare = Message::new(Header::new(Version::V6, id("2"), 5, 1, Ballot::new(3, id("2"))), Body::Prepare(Bytes::new()));
        r.replay(&Arc::new(prepare), &mut out).unwrap();
        r.start(0, &mut AcceptAll, &mut out);
        r.become_secondary();
        out.clear();
        // The next decree under the old ballot: logged (it follows ours) but answered NotAccepted.
        r.step(SEC, Input::Message { from: id("3"), msg: vote("3", 6, Ballot::new(1, id("3")), b"b") }, &mut AcceptAll, &mut out);
        assert!(out.iter().any(|a| matches!(a, Action::Persist { record, .. } if record.header.decree == 6)));
        let reply = out.iter().find_map(|a| match a {
            Action::Send { msg, after, .. } => Some((msg.kind(), *after)),
            _ => None,
        });
        assert_eq!(reply, Some((MsgKind::NotAccepted, 1)), "refused, once the record is durable");
        // And decree 5 executed: 6 followed it at the same ballot.
        assert!(out.iter().any(|a| matches!(a, Action::Execute { vote, .. } if vote.header.decree == 5)));
    }

    /// A pipelined replica "1" of {1, 2, 3} that has executed nothing, and a candidacy whose
    /// Prepare at decree 0 drew these reports.
    fn pipelined_candidacy(reports: &[Arc<Message>]) -> (Replica, Candidacy) {
        let cfg = CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() };
        let r = Replica::new(cfg, id("1"), config(&["1", "2", "3"]), 7);
        let prepare = Arc::new(Message::new(Header::new(Version::V7, id("1"), 0, 1, Ballot::new(9, id("1"))), Body::Prepare(Bytes::new())));
        let best = reports.iter().map(|v| (v.header.decree, v.clone())).collect();
        let freshest = r.accepted.clone();
        (r, Candidacy { prepare, seq: 1, promises: BTreeSet::new(), freshest, deadline: 0, best, answers: BTreeMap::new() })
    }

    fn reconfiguration(decree: u64, ballot: Ballot) -> Arc<Message> {
        let body = VoteBody { reconfig: Some(config(&["1", "2"]).members), ..Default::default() };
        Arc::new(Message::new(Header::new(Version::V7, id("2"), decree, 1, ballot), Body::Vote(body)))
    }

    #[test]
    fn a_new_primary_proposes_nothing_beyond_a_reported_reconfiguration() {
        let (b1, b2) = (Ballot::new(1, id("2")), Ballot::new(2, id("3")));
        let later = vote("2", 2, b1, b"older, below the reconfiguration's ballot");
        let (r, c) = pipelined_candidacy(&[vote("3", 0, b2, b"a"), reconfiguration(1, b2), later]);
        let plan = r.reproposals(&c);
        assert_eq!(plan.iter().map(|(d, _)| *d).collect::<Vec<_>>(), [0, 1], "the range ends at the reconfiguration");
        assert!(plan[1].1.reconfig.is_some());
    }

    /// A pipelined log is not in decree order: a vote whose watermark covers a decree can come
    /// before the vote for that decree (which arrived later, resent or learned). Replay executes
    /// it once it is in (the adversary soak found a log replay could not get past, seed 5848).
    #[test]
    fn replay_applies_a_watermark_logged_before_the_votes_it_covers() {
        let cfg = CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() };
        let mut r = Replica::new(cfg, id("1"), config(&["1", "2", "3"]), 7);
        let b = Ballot::new(1, id("2"));
        let vote = |decree: u64, watermark: u64| {
            let body = VoteBody { requests: vec![Bytes::from_static(b"x")], ..Default::default() };
            let mut header = Header::new(Version::V7, id("2"), decree, 1, b);
            header.payload = watermark;
            Arc::new(Message::new(header, Body::Vote(body)))
        };
        let mut out = Vec::new();
        for record in [vote(1, 0), vote(2, 0), vote(3, 3), vote(0, 0)] {
            r.replay(&record, &mut out).expect("replays");
        }
        assert_eq!(r.next_execute(), 3, "decrees 0 to 2 executed on decree 3's watermark");
        assert_eq!(out.iter().filter(|a| matches!(a, Action::Execute { .. })).count(), 3);
    }

    #[test]
    fn a_reconfiguration_outbid_beyond_it_was_never_chosen_and_gives_way() {
        let (b1, b2) = (Ballot::new(1, id("2")), Ballot::new(2, id("3")));
        let (r, c) = pipelined_candidacy(&[reconfiguration(0, b1), vote("3", 1, b2, b"b")]);
        let plan = r.reproposals(&c);
        assert_eq!(plan.iter().map(|(d, _)| *d).collect::<Vec<_>>(), [0, 1]);
        assert!(plan[0].1.reconfig.is_none() && plan[0].1.requests.is_empty(), "an empty vote in its place");
        assert_eq!(plan[1].1.requests, [Bytes::from_static(b"b")]);
    }
}
