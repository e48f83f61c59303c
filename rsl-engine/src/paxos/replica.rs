//! One replica's protocol state and its transitions, following RSL (api-behavior §2): the
//! acceptor rules, elections through a status quorum and a Prepare, one outstanding vote with
//! requests batched behind it, heartbeats, and catch-up by fetching votes.
//!
//! Durability is explicit: every record to keep is a `Persist` action with a sequence number,
//! and anything that promises what a record holds (VoteAccepted, PrepareAccepted) is a `Send`
//! gated on that number. The primary sends its vote while its own write is in flight and
//! counts itself only once `Durable` says the write is done.

use super::{AbortReason, Action, Application, BootstrapError, Checkpoint, Cookie, CoreConfig, Dest, Input, Micros, SplitMix64, SubmitError};
use crate::format::message::{JoinBody, StatusBody};
use crate::format::{Ballot, Body, ConfigInfo, Header, MemberId, MemberSet, Message, MsgKind, Version, VoteBody};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// RSL's replica states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not a member of its configuration, or not bootstrapped yet (`PaxosInactive`).
    Inactive,
    /// Learning where the ring is: a status quorum, then learn, elect, or follow.
    Initializing,
    /// Standing for election with a Prepare.
    Preparing,
    Primary,
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
        match self {
            Role::Primary => 1,
            Role::Secondary => 2,
            Role::Preparing => 3,
            Role::Initializing => 4,
            Role::Inactive => 0,
        }
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
}

/// The primary's vote in flight.
struct Outstanding {
    vote: Arc<Message>,
    /// Its persist: the primary counts itself once this is durable.
    seq: u64,
    acks: BTreeSet<MemberId>,
    cookies: Vec<Cookie>,
    config_cookie: Option<Cookie>,
}

/// A candidate's Prepare in flight.
struct Candidacy {
    prepare: Arc<Message>,
    seq: u64,
    promises: BTreeSet<MemberId>,
    /// The vote at our decree with the highest ballot among the answers (ours to start).
    freshest: Arc<Message>,
    deadline: Micros,
}

/// Why a log could not be replayed: a record that does not follow the one before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log record out of sequence: {kind:?} at decree {decree} after decree {after_decree}")]
pub struct ReplayError {
    pub kind: MsgKind,
    pub decree: u64,
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
    /// The highest accepted vote (a placeholder with an empty ballot before any), its persist
    /// and when it arrived.
    accepted: Arc<Message>,
    accepted_seq: u64,
    accepted_at: Micros,
    /// The next decree to execute; every decree below it has been handed out to execute.
    next_execute: u64,
    next_election: Micros,
    election_delay: Micros,
    action_deadline: Micros,
    force_reelection: bool,
    accept_flag: bool,
    statuses: BTreeMap<MemberId, Arc<Message>>,
    candidacy: Option<Candidacy>,
    outstanding: Option<Outstanding>,
    to_send: VecDeque<Pending>,
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
    vote_payload: u64,
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
    (d == cd && b >= cb) || (d == cd.wrapping_add(1) && b == cb)
}

/// RSL's `IsLowerDecree`.
fn is_lower((d, b): (u64, Ballot), (cd, cb): (u64, Ballot)) -> bool {
    d < cd || b < cb
}

/// RSL's `IsHigherDecree`.
fn is_higher((d, b): (u64, Ballot), (cd, cb): (u64, Ballot)) -> bool {
    (d > cd && b >= cb) || (d == cd && b > cb)
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
        let spread = (cfg.election_delay * cfg.election_randomize_pct / 100).min(cfg.max_election_randomize);
        let election_delay = cfg.election_delay - spread + rng.below(2 * spread + 1);
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
            accepted: placeholder,
            accepted_seq: 0,
            accepted_at: 0,
            next_execute,
            next_election: Micros::MAX,
            election_delay,
            action_deadline: Micros::MAX,
            force_reelection: false,
            accept_flag: true,
            statuses: BTreeMap::new(),
            candidacy: None,
            outstanding: None,
            to_send: VecDeque::new(),
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
            vote_payload: 0,
            checkpointed: 0,
            checkpoint_size: 0,
            save_at: None,
            saving: false,
            copy_at: None,
            copying: false,
            copy_query_at: Micros::MAX,
            loading: None,
        };
        replica.set_paxos_config(config);
        replica
    }

    fn set_paxos_config(&mut self, config: ConfigInfo) {
        self.members = config.members.nodes.iter().map(|n| n.id).collect();
        debug_assert_eq!(self.members.iter().collect::<BTreeSet<_>>().len(), self.members.len(), "members are distinct");
        self.paxos_config = config;
    }

    /// Sets the highest defunct configuration number read from `defunct.txt` at start-up.
    pub fn restore_defunct(&mut self, highest: u32) {
        assert_eq!(self.persist_seq, 0, "restore comes before start");
        self.highest_defunct = highest;
    }

    /// The configuration the state is in (`GetConfiguration`).
    pub fn configuration(&self) -> &ConfigInfo {
        &self.state_config
    }

    /// A vote with a real ballot has been accepted, or the decree is past the first: what
    /// `Bootstrap` waits for.
    pub fn is_bootstrapped(&self) -> bool {
        self.paxos_config.number > 0 && (self.accepted.header.ballot.id > 0 || self.accepted.header.decree > 1)
    }

    pub fn me(&self) -> MemberId {
        self.me
    }
    pub fn role(&self) -> Role {
        self.role
    }
    /// `NotifyStatus(true)` has been raised: requests are taken.
    pub fn is_primary(&self) -> bool {
        self.is_primary
    }
    pub fn max_ballot(&self) -> Ballot {
        self.max_ballot
    }
    /// The decree and ballot of the highest accepted vote.
    pub fn accepted(&self) -> (u64, Ballot) {
        decree_ballot(&self.accepted)
    }
    /// The next decree to execute (the application's sequence number is one less).
    pub fn next_execute(&self) -> u64 {
        self.next_execute
    }

    fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// Starts from a checkpoint (before replaying the logs after it): the application's state
    /// is that of `cp.decree`, and `cp.next_vote` is the highest accepted vote.
    pub fn restore_checkpoint(&mut self, cp: &Checkpoint, size: u64) {
        assert_eq!(self.persist_seq, 0, "restore comes before start");
        assert_eq!(cp.next_vote.kind(), MsgKind::Vote, "a checkpoint's next vote is a vote");
        self.next_execute = cp.decree + 1;
        self.set_paxos_config(cp.config.clone());
        self.state_config = cp.config.clone();
        self.accepted = self.next_vote_or_placeholder(cp);
        self.max_ballot = cp.max_ballot.max(self.accepted.header.ballot);
        (self.checkpointed, self.checkpoint_size, self.log_min_decree) = (cp.decree, size, cp.decree + 1);
    }

    fn next_vote_or_placeholder(&self, cp: &Checkpoint) -> Arc<Message> {
        if cp.next_vote.header.decree == cp.decree + 1 {
            return cp.next_vote.clone();
        }
        placeholder(self.version, cp.decree + 1, self.paxos_config.number)
    }

    /// Applies one durable log record at start-up: Prepares raise the promise, each vote that
    /// follows its predecessor at the same ballot executes that predecessor. The last vote is
    /// never executed: it is not known to be chosen. Records older than the accepted vote (a
    /// checkpoint's) are skipped.
    pub fn replay(&mut self, record: &Arc<Message>, out: &mut Vec<Action>) -> Result<(), ReplayError> {
        assert_eq!(self.persist_seq, 0, "replay comes before start");
        let (d, b) = decree_ballot(record);
        let (ad, ab) = self.accepted();
        match record.kind() {
            MsgKind::Prepare => self.max_ballot = self.max_ballot.max(b),
            // A vote for the next decree follows at the same ballot, or at another one where
            // learning proved our decree chosen (see `apply_learned`).
            MsgKind::Vote if !b.is_empty() && (d == ad + 1 || is_next((d, b), (ad, ab))) => {
                if d == ad + 1 && self.next_execute == ad {
                    self.execute(self.accepted.clone(), Vec::new(), None, out);
                }
                self.accepted = record.clone();
                self.max_ballot = self.max_ballot.max(b);
            }
            MsgKind::Vote if !b.is_empty() && is_lower((d, b), (ad, ab)) => {}
            MsgKind::ReconfigurationDecision => {
                // One that does not match our vote was logged by nobody: skip it.
                self.log_decision(0, record.clone(), false, None, out);
            }
            kind => return Err(ReplayError { kind, decree: d, after_decree: ad }),
        }
        debug_assert!(self.max_ballot >= self.accepted.header.ballot);
        Ok(())
    }

    /// Starts the protocol: a status round to find the ring.
    pub fn start(&mut self, now: Micros, app: &mut dyn Application, out: &mut Vec<Action>) {
        assert_eq!(self.persist_seq, 0, "start once");
        self.accepted_at = now;
        self.start_initializing(now, app, out);
    }

    /// `ChangeConfiguration` (v3+, primary only): a reconfiguration vote, never batched with
    /// anything. `cookie` comes back through `ConfigurationChanged` or an abort.
    pub fn change_configuration(&mut self, now: Micros, members: MemberSet, cookie: Cookie, out: &mut Vec<Action>) -> Result<(), SubmitError> {
        if !self.version.has_config() {
            return Err(SubmitError::Unsupported);
        }
        let ids: BTreeSet<MemberId> = members.nodes.iter().map(|n| n.id).collect();
        if ids.is_empty() || ids.len() != members.nodes.len() || ids.contains(&MemberId::EMPTY) {
            return Err(SubmitError::InvalidRequest);
        }
        if !self.is_primary || self.relinquishing {
            return Err(SubmitError::NotPrimary);
        }
        let body = VoteBody { reconfig: Some(members), cookie: self.primary_cookie.clone(), ..Default::default() };
        self.to_send.push_back(Pending { body, cookies: Vec::new(), bytes: 0, closed: true, config_cookie: Some(cookie) });
        self.send_next(now, out);
        Ok(())
    }

    /// `Bootstrap` (v4+): gives a replica that has no configuration its first one. Validated
    /// as the original does; the set is then persisted as configuration 1 and sent to the
    /// other members until this replica has taken part in a vote.
    pub fn bootstrap(&mut self, now: Micros, members: MemberSet, app: &mut dyn Application, out: &mut Vec<Action>) -> Result<(), BootstrapError> {
        self.accept_bootstrap(members)?;
        self.bootstrap_resend = now;
        self.check_bootstrap(now, app, out);
        Ok(())
    }

    fn accept_bootstrap(&mut self, members: MemberSet) -> Result<(), BootstrapError> {
        let ids: BTreeSet<MemberId> = members.nodes.iter().map(|n| n.id).collect();
        if !self.version.has_string_ids() || ids.is_empty() || ids.len() != members.nodes.len() {
            return Err(BootstrapError::InvalidParameter);
        }
        if self.is_bootstrapped() {
            return Err(BootstrapError::AlreadyBootstrapped);
        }
        let same = |known: &MemberSet| {
            known.nodes.len() == members.nodes.len()
                && known.nodes.iter().all(|k| {
                    members.nodes.iter().any(|n| n.id == k.id && n.ip == k.ip && n.rsl_port == k.rsl_port && n.host_name.eq_ignore_ascii_case(&k.host_name))
                })
        };
        let known = if self.paxos_config.number > 0 { Some(&self.paxos_config.members) } else { self.bootstrap.as_ref() };
        if !ids.contains(&self.me) || known.is_some_and(|k| !same(k)) {
            return Err(BootstrapError::Failed);
        }
        self.bootstrap = Some(members);
        Ok(())
    }

    /// `CheckBootstrap` + `PersistMemberSet`: configuration 1 from decree 1, recorded by a
    /// checkpoint of decree 0 that holds no state.
    fn check_bootstrap(&mut self, now: Micros, app: &mut dyn Application, out: &mut Vec<Action>) {
        if self.role != Role::Inactive || self.paxos_config.number != 0 {
            return;
        }
        let Some(members) = self.bootstrap.clone() else { return };
        let config = ConfigInfo { number: 1, initial_decree: 1, members };
        self.accepted = placeholder(self.version, 1, 1);
        self.next_execute = 1;
        self.saving = true;
        let cp = Checkpoint { decree: 0, next_vote: self.accepted.clone(), max_ballot: Ballot::EMPTY, config: config.clone(), state_saved: false };
        out.push(Action::SaveCheckpoint(cp));
        self.state_config = config.clone();
        self.set_paxos_config(config.clone());
        out.push(Action::ConfigurationChanged { config, cookie: None });
        self.role = Role::Initializing;
        self.start_initializing(now, app, out);
    }

    /// `LogReconfigurationDecision`: when it decides our accepted vote, log it (unless
    /// replaying), execute the vote and switch to the new configuration.
    fn log_decision(&mut self, now: Micros, decision: Arc<Message>, persist: bool, cookie: Option<Cookie>, out: &mut Vec<Action>) -> bool {
        let (d, b) = decree_ballot(&decision);
        let members = self.accepted.as_vote().and_then(|v| v.reconfig.clone());
        let Some(members) = members.filter(|_| (d, b) == self.accepted() && decision.header.config == self.paxos_config.number) else {
            return false;
        };
        if self.role == Role::Primary {
            self.step_down(out);
        }
        if persist {
            self.accepted_seq = self.persist(decision, out);
        }
        if self.next_execute == d {
            self.execute(self.accepted.clone(), Vec::new(), cookie, out);
        }
        self.switch_config(now, ConfigInfo { number: self.paxos_config.number + 1, initial_decree: d + 1, members });
        true
    }

    /// `ChangePaxosConfiguration`: ballots restart above the old ones with an empty accepted
    /// vote at the new configuration's first decree; members find the ring at the next tick.
    fn switch_config(&mut self, now: Micros, config: ConfigInfo) {
        debug_assert_ne!(self.role, Role::Primary, "stepped down first");
        debug_assert_eq!(self.next_execute, config.initial_decree);
        self.accepted = placeholder(self.version, config.initial_decree, config.number);
        self.max_ballot = Ballot::new(self.max_ballot.id.saturating_add(1), MemberId::EMPTY);
        self.max_seen_ballot = Ballot::EMPTY;
        self.set_paxos_config(config);
        self.cache.clear();
        self.cache_bytes = 0;
        self.statuses.clear();
        (self.candidacy, self.learning, self.next_join) = (None, None, 0);
        self.role = if self.members.contains(&self.me) { Role::Initializing } else { Role::Inactive };
        self.action_deadline = now;
    }

    /// When the replica next needs a `Tick`, if nothing else arrives first.
    pub fn next_wakeup(&self) -> Micros {
        let join = if self.join_due() { self.next_join } else { Micros::MAX };
        let bootstrap = if self.bootstrap.is_some() { self.bootstrap_resend } else { Micros::MAX };
        self.role_wakeup().min(join).min(bootstrap)
    }

    /// A configuration not yet known to be established is announced with Join messages to its
    /// members, also by replicas it left out: that is how members that missed the decision
    /// (or never had a log) learn about it.
    fn join_due(&self) -> bool {
        self.paxos_config.number > self.highest_defunct + 1
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
                let next = if self.outstanding.is_some() {
                    self.action_deadline
                } else if self.is_primary && !self.relinquishing {
                    self.last_proposed.saturating_add(self.cfg.heartbeat_interval)
                } else {
                    Micros::MAX
                };
                next.min(copy)
            }
        }
    }

    /// `ReplicateRequest` (or, with `exclusive`, `ReplicateRequestExclusiveVote`).
    pub fn submit(&mut self, now: Micros, request: Bytes, cookie: Cookie, exclusive: bool, out: &mut Vec<Action>) -> Result<(), SubmitError> {
        if request.is_empty() {
            return Err(SubmitError::InvalidRequest);
        }
        if !self.is_primary {
            return Err(SubmitError::NotPrimary);
        }
        debug_assert_eq!(self.role, Role::Primary);
        let size = request.len() + 4;
        match self.to_send.back_mut() {
            Some(tail) if !tail.closed && !exclusive && tail.bytes + size <= self.cfg.max_vote_bytes => {
                tail.body.requests.push(request);
                tail.cookies.push(cookie);
                tail.bytes += size;
            }
            _ => self.to_send.push_back(Pending {
                body: VoteBody { requests: vec![request], ..Default::default() },
                cookies: vec![cookie],
                bytes: size,
                closed: exclusive,
                config_cookie: None,
            }),
        }
        self.send_next(now, out);
        Ok(())
    }

    /// Feeds one input.
    pub fn step(&mut self, now: Micros, input: Input, app: &mut dyn Application, out: &mut Vec<Action>) {
        match input {
            Input::Tick => self.tick(now, app, out),
            Input::Message { from, msg } => self.on_message(now, from, msg, app, out),
            Input::Durable(seq) => {
                assert!(seq <= self.persist_seq, "durable {seq} beyond the {} persists asked for", self.persist_seq);
                self.durable_seq = self.durable_seq.max(seq);
                self.check_chosen(now, out);
                self.check_prepared(now, out);
            }
            Input::Learned { from, records } => self.on_learned(now, from, records, app, out),
            Input::AttemptPromotion => self.force_reelection = true,
            Input::RelinquishPrimary => self.relinquish(now, out),
            Input::SetVotePayload(payload) => self.vote_payload = payload,
            Input::LogRolled { first_decree } => self.on_log_rolled(now, first_decree, out),
            Input::CheckpointSaved { decree, size, min_decree_in_log } => {
                // A saved checkpoint is of an executed decree; a copied one may be ahead of us.
                debug_assert!(decree < self.next_execute || self.copying, "a checkpoint of an executed decree");
                if decree >= self.checkpointed {
                    (self.checkpointed, self.checkpoint_size) = (decree, size);
                }
                self.log_min_decree = self.log_min_decree.max(min_decree_in_log);
                (self.saving, self.copying) = (false, false);
                self.copy_at = self.copy_at.filter(|&at| at > decree);
            }
            Input::CheckpointFetched(fetched) => self.on_checkpoint_fetched(now, fetched, app, out),
            Input::SetAcceptMessages(accept) => self.accept_flag = accept,
        }
        self.drain_cache(now, app, out);
        self.check_invariants();
    }

    /// Votes cached while initializing are handled as soon as the replica is out of it.
    fn drain_cache(&mut self, now: Micros, app: &mut dyn Application, out: &mut Vec<Action>) {
        while self.role != Role::Initializing {
            let Some((from, vote)) = self.cache.pop_front() else { break };
            self.on_vote(now, from, vote, app, out);
        }
        if self.cache.is_empty() {
            self.cache_bytes = 0;
        }
    }

    fn check_invariants(&self) {
        debug_assert!(self.max_ballot >= self.accepted.header.ballot, "promise below the accepted ballot");
        debug_assert!(self.durable_seq <= self.persist_seq);
        debug_assert!(
            self.next_execute == self.accepted.header.decree || self.next_execute == self.accepted.header.decree + 1,
            "execution {} is not at the accepted decree {}",
            self.next_execute,
            self.accepted.header.decree
        );
        debug_assert!(self.role == Role::Primary || (self.outstanding.is_none() && self.to_send.is_empty() && !self.is_primary));
        debug_assert!((self.role == Role::Preparing) == self.candidacy.is_some());
    }

    // ---- outputs ------------------------------------------------------------------------

    fn persist(&mut self, record: Arc<Message>, out: &mut Vec<Action>) -> u64 {
        debug_assert!(record.kind().is_log_record());
        self.persist_seq += 1;
        out.push(Action::Persist { seq: self.persist_seq, record });
        self.persist_seq
    }

    fn send(&self, to: Dest, msg: Message, after: u64, out: &mut Vec<Action>) {
        debug_assert!(after <= self.persist_seq);
        out.push(Action::Send { to, msg: Arc::new(msg), after });
    }

    fn header(&self, decree: u64, ballot: Ballot) -> Header {
        Header::new(self.version, self.me, decree, self.paxos_config.number, ballot)
    }

    fn not_accepted(&self, to: MemberId, out: &mut Vec<Action>) {
        let msg = Message::new(self.header(self.accepted.header.decree, self.max_ballot), Body::NotAccepted);
        self.send(Dest::One(to), msg, 0, out);
    }

    fn execute(&mut self, vote: Arc<Message>, cookies: Vec<Cookie>, config_cookie: Option<Cookie>, out: &mut Vec<Action>) {
        let decree = vote.header.decree;
        assert_eq!(decree, self.next_execute, "decrees execute in order, each once");
        assert!(!vote.header.ballot.is_empty(), "only a proposed vote can be chosen");
        debug_assert!(cookies.is_empty() || cookies.len() == vote.as_vote().map_or(0, |v| v.requests.len()));
        self.next_execute = decree + 1;
        let new_members = vote.as_vote().and_then(|v| v.reconfig.clone());
        let number = vote.header.config + 1;
        out.push(Action::Execute { vote, cookies });
        if let Some(members) = new_members {
            self.state_config = ConfigInfo { number, initial_decree: decree + 1, members };
            out.push(Action::ConfigurationChanged { config: self.state_config.clone(), cookie: config_cookie });
        }
    }

    // ---- promises and acceptance --------------------------------------------------------

    fn set_max_ballot(&mut self, now: Micros, ballot: Ballot, seq: u64) {
        if ballot <= self.max_ballot {
            return;
        }
        self.max_ballot = ballot;
        self.max_ballot_seq = seq;
        let wait = if ballot.member == self.me { self.cfg.heartbeat_interval } else { self.cfg.new_leader_grace_period };
        self.next_election = self.next_election.max(now.saturating_add(wait));
    }

    /// `LogAndAcceptVote`: the vote becomes the highest accepted one; if it is the next decree
    /// at the same ballot (or `proven`: learning showed our decree chosen), the one it follows
    /// is chosen and executes.
    fn log_and_accept(&mut self, now: Micros, vote: Arc<Message>, proven: bool, out: &mut Vec<Action>) {
        let (d, b) = decree_ballot(&vote);
        let (ad, ab) = self.accepted();
        assert!(is_next((d, b), (ad, ab)) || (proven && d == ad + 1), "accepting ({d},{b}) after ({ad},{ab})");
        assert!(!b.is_empty(), "votes carry a ballot");
        if d == ad + 1 {
            if self.next_execute == ad {
                self.execute(self.accepted.clone(), Vec::new(), None, out);
            }
            let wait = if self.max_ballot.member == self.me { self.cfg.heartbeat_interval } else { self.election_delay };
            self.next_election = now.saturating_add(wait);
        }
        if (d, b) != (ad, ab) {
            self.accepted_seq = self.persist(vote.clone(), out);
        }
        // Logging a vote of configuration c proves c - 1 defunct.
        let config = vote.header.config;
        if config > 1 && config - 1 > self.highest_defunct {
            self.highest_defunct = config - 1;
            out.push(Action::Defunct(self.highest_defunct));
        }
        self.accepted = vote;
        self.accepted_at = now;
        self.set_max_ballot(now, b, self.accepted_seq);
        self.maybe_save(out);
    }

    // ---- checkpoints ----------------------------------------------------------------------

    /// The policy of api-behavior §2.14 on a log roll: a secondary (or a lone replica) saves
    /// at the decree before the new log; a primary copies a secondary's checkpoint instead.
    fn on_log_rolled(&mut self, now: Micros, first_decree: u64, out: &mut Vec<Action>) {
        let busy = self.saving || self.save_at.is_some() || self.copy_at.is_some() || self.role == Role::Preparing;
        if first_decree <= self.checkpointed + 1 || busy {
            return;
        }
        let target = first_decree - 1;
        if self.role == Role::Primary && self.quorum() > 1 {
            self.copy_at = Some(target);
            self.copy_query_at = now;
        } else {
            self.save_at = Some(target);
            self.maybe_save(out);
        }
    }

    /// Saves the pending checkpoint once its decree has executed and the vote after it (the
    /// checkpoint's "next vote") is the accepted one; if execution went further, at the
    /// current decree.
    fn maybe_save(&mut self, out: &mut Vec<Action>) {
        let Some(at) = self.save_at else { return };
        if self.saving || self.next_execute <= at || self.accepted.header.decree != self.next_execute {
            return;
        }
        debug_assert!(self.next_execute > 0);
        self.save_at = None;
        self.saving = true;
        let cp = Checkpoint {
            decree: self.next_execute - 1,
            next_vote: self.accepted.clone(),
            max_ballot: self.max_ballot,
            config: self.state_config.clone(),
            state_saved: true,
        };
        out.push(Action::SaveCheckpoint(cp));
    }

    /// A peer's checkpoint arrived: load it in place if it is still ahead of us (the original
    /// exits the process instead). Either way, find the ring again.
    fn on_checkpoint_fetched(&mut self, now: Micros, fetched: Option<(Checkpoint, u64)>, app: &mut dyn Application, out: &mut Vec<Action>) {
        let was_loading = self.loading.take().is_some();
        if fetched.is_none() && !was_loading {
            self.copying = false; // a primary's copy failed; the next status round retries
            return;
        }
        if let Some((cp, size)) = fetched.filter(|(cp, _)| cp.decree >= self.next_execute) {
            if self.role == Role::Primary {
                self.step_down(out);
            }
            out.push(Action::LoadCheckpoint(cp.clone()));
            self.next_execute = cp.decree + 1;
            if cp.config.number != self.paxos_config.number {
                self.set_paxos_config(cp.config.clone());
                self.max_seen_ballot = Ballot::EMPTY;
            }
            self.state_config = cp.config.clone();
            self.accepted = self.next_vote_or_placeholder(&cp);
            self.accepted_at = now;
            // The runtime starts a new log with the next vote (formats.md §8.1).
            self.accepted_seq = if self.accepted.header.ballot.is_empty() { self.persist_seq } else { self.persist(self.accepted.clone(), out) };
            let ballot = cp.max_ballot.max(self.accepted.header.ballot);
            self.set_max_ballot(now, ballot, self.accepted_seq);
            (self.checkpointed, self.checkpoint_size, self.log_min_decree) = (cp.decree, size, cp.decree + 1);
            self.cache.retain(|(_, v)| v.header.decree > cp.decree);
        }
        self.start_initializing(now, app, out);
    }

    fn accept_check(&mut self, app: &mut dyn Application, from: &MemberId, cookie: &[u8]) -> bool {
        if self.cfg.use_global_accept_flag {
            self.accept_flag
        } else {
            app.accept_message(from, cookie)
        }
    }

    // ---- messages -----------------------------------------------------------------------

    /// `VerifyMessage` (api-behavior §2.17.5 with erratum D7): a message of a defunct
    /// configuration is answered with DefunctConfiguration, one of a newer configuration with
    /// a JoinRequest, and anything else must come from another member of ours.
    fn admit(&mut self, from: &MemberId, msg: &Message, out: &mut Vec<Action>) -> bool {
        let config = msg.header.config;
        if config <= self.highest_defunct {
            let defunct = Message::new(Header::new(self.version, self.me, 0, self.highest_defunct, Ballot::EMPTY), Body::DefunctConfiguration);
            self.send(Dest::One(*from), defunct, 0, out);
            return false;
        }
        if matches!(msg.kind(), MsgKind::Join | MsgKind::JoinRequest) {
            return true;
        }
        if config > self.paxos_config.number {
            let request = Message::new(Header::new(self.version, self.me, 0, config, Ballot::EMPTY), Body::JoinRequest);
            self.send(Dest::One(*from), request, 0, out);
            return false;
        }
        if config < self.paxos_config.number || self.role == Role::Inactive {
            return false;
        }
        if *from == self.me || msg.header.sender != *from || !self.members.contains(from) {
            return false;
        }
        self.max_seen_ballot = self.max_seen_ballot.max(msg.header.ballot);
        true
    }

    fn on_message(&mut self, now: Micros, from: MemberId, msg: Arc<Message>, app: &mut dyn Application, out: &mut Vec<Action>) {
        // Unlike the original, a relinquishing primary still answers status queries: a member
        // that is initializing needs them to follow, and so to accept the relinquish vote.
        let ignored_while_relinquishing = matches!(msg.kind(), MsgKind::Vote | MsgKind::Prepare);
        if from == self.me || (self.relinquishing && ignored_while_relinquishing) {
            return;
        }
        // These bypass the configuration checks.
        match &msg.body {
            Body::Bootstrap(members) => {
                if self.accept_bootstrap(members.clone()).is_ok() {
                    self.check_bootstrap(now, app, out);
                }
                return;
            }
            Body::DefunctConfiguration => return self.on_defunct(now, msg.header.config, app, out),
            Body::StatusQuery => return self.on_status_query(now, from, &msg, out),
            _ => {}
        }
        if !self.admit(&from, &msg, out) {
            return;
        }
        match msg.kind() {
            MsgKind::Vote if self.role == Role::Initializing => self.cache_vote(from, msg),
            MsgKind::Vote => self.on_vote(now, from, msg, app, out),
            MsgKind::VoteAccepted => self.on_vote_accepted(now, from, &msg, out),
            MsgKind::Prepare => self.on_prepare(now, from, msg, app, out),
            MsgKind::PrepareAccepted => self.on_prepare_accepted(now, from, &msg, out),
            MsgKind::NotAccepted => self.on_not_accepted(now, &msg, app, out),
            MsgKind::StatusResponse => self.on_status_response(now, from, msg, app, out),
            MsgKind::ReconfigurationDecision => {
                self.log_decision(now, msg, true, None, out);
            }
            MsgKind::Join => self.on_join(now, from, &msg, out),
            MsgKind::JoinRequest if msg.header.config == self.paxos_config.number => self.send_join(Dest::One(from), out),
            _ => {}
        }
    }

    /// `UpdateDefunctInfo`: a replica still active in a configuration now defunct looks for
    /// the newer one instead.
    fn on_defunct(&mut self, now: Micros, defunct: u32, app: &mut dyn Application, out: &mut Vec<Action>) {
        if defunct <= self.highest_defunct {
            return;
        }
        if self.paxos_config.number <= defunct && self.role != Role::Inactive {
            return self.start_initializing(now, app, out);
        }
        self.highest_defunct = defunct;
        out.push(Action::Defunct(defunct));
    }

    fn send_join(&self, to: Dest, out: &mut Vec<Action>) {
        let learn_port = self.paxos_config.members.nodes.iter().find(|n| n.id == self.me).map_or(0, |n| n.learn_port);
        let body = Body::Join(JoinBody {
            learn_port,
            min_decree_in_log: self.log_min_decree,
            checkpointed_decree: self.checkpointed,
            checkpoint_size: self.checkpoint_size,
        });
        let header = Header::new(self.version, self.me, self.paxos_config.initial_decree.wrapping_sub(1), self.paxos_config.number, Ballot::EMPTY);
        self.send(to, Message::new(header, body), 0, out);
    }

    /// `HandleJoinMsg`: a member of a newer configuration announces it; catch up from it.
    fn on_join(&mut self, now: Micros, from: MemberId, msg: &Message, out: &mut Vec<Action>) {
        let Body::Join(join) = &msg.body else { return };
        if msg.header.config <= self.paxos_config.number {
            if msg.header.config <= self.highest_defunct + 1 {
                let defunct = Message::new(Header::new(self.version, self.me, 0, self.highest_defunct, Ballot::EMPTY), Body::DefunctConfiguration);
                self.send(Dest::One(from), defunct, 0, out);
            }
            return;
        }
        if self.learning.is_some() || self.loading.is_some() {
            return;
        }
        if self.role == Role::Primary {
            self.step_down(out);
        }
        let ad = self.accepted.header.decree;
        if ad >= join.min_decree_in_log && self.paxos_config.number > 0 {
            self.learn(from, out);
        } else if join.checkpointed_decree >= ad {
            self.role = self.role.min_active();
            self.loading = Some(from);
            out.push(Action::FetchCheckpoint { from, decree: join.checkpointed_decree, size: join.checkpoint_size, load: true });
        }
        let _ = now;
    }

    fn cache_vote(&mut self, from: MemberId, vote: Arc<Message>) {
        if let Some((_, tail)) = self.cache.back() {
            let t = decree_ballot(tail);
            if is_lower(decree_ballot(&vote), t) || decree_ballot(&vote) == t {
                return;
            }
        }
        self.cache_bytes += vote.as_vote().map_or(0, vote_size) + 200;
        self.cache.push_back((from, vote));
        if self.cache_bytes > self.cfg.max_cache_bytes {
            self.cache.clear();
            self.cache_bytes = 0;
        }
    }

    /// `HandleNewVotes` for one vote (api-behavior §2.8).
    fn on_vote(&mut self, now: Micros, from: MemberId, vote: Arc<Message>, app: &mut dyn Application, out: &mut Vec<Action>) {
        debug_assert_ne!(self.role, Role::Initializing);
        let db = decree_ballot(&vote);
        let (ad, _) = self.accepted();
        if is_lower(db, self.accepted()) {
            if db.1 < self.max_ballot || db.0 + 1 < ad {
                self.not_accepted(from, out);
            }
            return;
        }
        if !is_next(db, self.accepted()) {
            // A gap: we missed decrees. Learn them.
            self.cache.clear();
            self.cache_bytes = 0;
            return self.start_initializing(now, app, out);
        }
        if self.role == Role::Primary {
            self.step_down(out);
        }
        self.log_and_accept(now, vote.clone(), false, out);
        let reply = if db.1 < self.max_ballot {
            // Logged, yet refused: it is below our promise.
            Some(Body::NotAccepted)
        } else {
            let body = vote.as_vote().expect("a vote");
            let cookie = body.cookie.clone();
            self.accept_check(app, &vote.header.sender, &cookie).then_some(Body::VoteAccepted)
        };
        if let Some(body) = reply {
            let accepted_body = body == Body::VoteAccepted;
            let mut msg = Message::new(self.header(self.accepted.header.decree, self.max_ballot), body);
            msg.header.payload = if accepted_body { self.vote_payload } else { 0 };
            let after = self.accepted_seq.max(self.max_ballot_seq);
            self.send(Dest::One(from), msg, after, out);
            if accepted_body && vote.as_vote().is_some_and(|v| v.relinquish) {
                self.force_reelection = true;
            }
        }
        self.become_secondary();
    }

    fn on_vote_accepted(&mut self, now: Micros, from: MemberId, msg: &Message, out: &mut Vec<Action>) {
        if self.role != Role::Primary {
            return;
        }
        let current = (self.accepted.header.decree, self.max_ballot);
        match &mut self.outstanding {
            Some(o) if decree_ballot(msg) == current && decree_ballot(&o.vote) == current => {
                o.acks.insert(from);
            }
            _ => return,
        }
        self.check_chosen(now, out);
    }

    /// The outstanding vote is chosen once this replica's own write is durable and a quorum
    /// counting it has accepted.
    fn check_chosen(&mut self, now: Micros, out: &mut Vec<Action>) {
        let needed = self.quorum() - 1;
        match &self.outstanding {
            Some(o) if self.durable_seq >= o.seq && o.acks.len() >= needed => {}
            _ => return,
        }
        let o = self.outstanding.take().expect("checked above");
        debug_assert_eq!(self.role, Role::Primary);
        debug_assert_eq!(decree_ballot(&o.vote), self.accepted());
        self.action_deadline = Micros::MAX;
        let decree = o.vote.header.decree;
        if self.recovering == Some(decree) {
            self.is_primary = true;
            out.push(Action::NotifyStatus { primary: true });
        }
        if o.vote.as_vote().is_some_and(|v| v.relinquish) {
            // The original exits here without executing it; what was queued behind it goes back.
            let queued = std::mem::take(&mut self.to_send);
            let cookies = queued.into_iter().flat_map(|p| p.cookies.into_iter().chain(p.config_cookie));
            out.extend(cookies.map(|cookie| Action::Abort { cookie, reason: AbortReason::ShuttingDown }));
            out.push(Action::ShutDown);
            return;
        }
        if o.vote.as_vote().is_some_and(|v| v.reconfig.is_some()) {
            // Chosen: announce and log the decision, which executes it and switches over.
            let decision = Arc::new(Message::new(self.header(decree, self.max_ballot), Body::ReconfigurationDecision));
            out.push(Action::Send { to: Dest::All, msg: decision.clone(), after: 0 });
            self.log_decision(now, decision, true, o.config_cookie, out);
            return;
        }
        if self.next_execute == decree {
            self.execute(o.vote, o.cookies, None, out);
        }
        if self.recovering.take_if(|d| *d == decree).is_some() {
            out.push(Action::NotifyPrimaryRecovered);
        }
        self.send_next(now, out);
    }

    /// `RelinquishPrimary`: queues the last vote, closed to appending (unlike the original,
    /// whose later requests could join it and never return their cookies).
    fn relinquish(&mut self, now: Micros, out: &mut Vec<Action>) {
        if !self.version.has_relinquish() || !self.is_primary || self.to_send.iter().any(|p| p.body.relinquish) {
            return;
        }
        let body = VoteBody { relinquish: true, cookie: self.primary_cookie.clone(), ..Default::default() };
        self.to_send.push_back(Pending { body, cookies: Vec::new(), bytes: 0, closed: true, config_cookie: None });
        self.send_next(now, out);
    }

    /// Proposes the next queued vote if none is outstanding.
    fn send_next(&mut self, now: Micros, out: &mut Vec<Action>) {
        if self.role != Role::Primary || self.outstanding.is_some() || !self.is_primary || self.relinquishing {
            return;
        }
        if let Some(p) = self.to_send.pop_front() {
            self.propose(now, p.body, p.cookies, p.config_cookie, out);
        }
    }

    /// `SendNextVote`: stamps the vote, persists it, and sends it in parallel.
    fn propose(&mut self, now: Micros, body: VoteBody, cookies: Vec<Cookie>, config_cookie: Option<Cookie>, out: &mut Vec<Action>) {
        assert!(self.role == Role::Primary && self.outstanding.is_none(), "one outstanding vote");
        assert_eq!(self.max_ballot.member, self.me, "only the ballot's owner proposes");
        let (ad, ab) = self.accepted();
        let decree = if self.max_ballot == ab { ad + 1 } else { ad };
        self.relinquishing |= body.relinquish;
        let vote = Arc::new(Message::new(self.header(decree, self.max_ballot), Body::Vote(body)));
        self.log_and_accept(now, vote.clone(), false, out);
        let seq = self.accepted_seq;
        out.push(Action::Send { to: Dest::All, msg: vote.clone(), after: 0 });
        self.outstanding = Some(Outstanding { vote, seq, acks: BTreeSet::new(), cookies, config_cookie });
        self.action_deadline = now.saturating_add(self.cfg.resend_interval);
        self.last_proposed = now;
        self.check_chosen(now, out);
    }

    /// Leaving the primary role: everything not yet chosen goes back to the application.
    fn step_down(&mut self, out: &mut Vec<Action>) {
        debug_assert_eq!(self.role, Role::Primary);
        let outstanding = self.outstanding.take();
        let queued = std::mem::take(&mut self.to_send);
        if self.is_primary {
            self.is_primary = false;
            let cookies = outstanding
                .into_iter()
                .flat_map(|o| o.cookies.into_iter().chain(o.config_cookie))
                .chain(queued.into_iter().flat_map(|p| p.cookies.into_iter().chain(p.config_cookie)));
            out.extend(cookies.map(|cookie| Action::Abort { cookie, reason: AbortReason::NotPrimary }));
            out.push(Action::NotifyStatus { primary: false });
        }
        self.recovering = None;
        // A relinquish vote that was not chosen before we lost the ballot is moot.
        self.relinquishing = false;
        self.role = Role::Secondary;
        self.action_deadline = Micros::MAX;
    }

    fn become_secondary(&mut self) {
        debug_assert_ne!(self.role, Role::Primary, "step down first");
        debug_assert!(self.members.contains(&self.me), "only a member follows");
        self.role = Role::Secondary;
        self.candidacy = None;
        self.force_reelection = false;
        self.action_deadline = Micros::MAX;
    }

    /// `HandlePrepareMsg` (api-behavior §2.8).
    fn on_prepare(&mut self, now: Micros, from: MemberId, prep: Arc<Message>, app: &mut dyn Application, out: &mut Vec<Action>) {
        let (d, b) = decree_ballot(&prep);
        let ad = self.accepted.header.decree;
        if is_lower((d, b), (ad, self.max_ballot)) {
            if d + 1 < ad || b < self.max_ballot {
                self.not_accepted(from, out);
            }
            return;
        }
        if self.role == Role::Initializing {
            return;
        }
        if self.role == Role::Primary && b > self.max_ballot {
            self.step_down(out);
        }
        if b > self.max_ballot {
            let seq = self.persist(prep.clone(), out);
            self.set_max_ballot(now, b, seq);
        }
        let cookie = match &prep.body {
            Body::Prepare(c) => c.clone(),
            _ => Bytes::new(),
        };
        if self.accept_check(app, &from, &cookie) {
            let body = Body::PrepareAccepted(Box::new((*self.accepted).clone()));
            let after = self.accepted_seq.max(self.max_ballot_seq);
            self.send(Dest::One(from), Message::new(self.header(d, b), body), after, out);
        }
        if self.role == Role::Primary {
            // Our own ballot again (a resent Prepare of ours cannot reach us): nothing to do.
            return;
        }
        if d > ad {
            self.start_initializing(now, app, out);
        } else {
            self.become_secondary();
        }
    }

    fn on_prepare_accepted(&mut self, now: Micros, from: MemberId, msg: &Message, out: &mut Vec<Action>) {
        let current = (self.accepted.header.decree, self.max_ballot);
        let (Some(c), Body::PrepareAccepted(vote)) = (&mut self.candidacy, &msg.body) else { return };
        if decree_ballot(msg) != current || decree_ballot(&c.prepare) != current {
            return;
        }
        let (vd, vb) = decree_ballot(vote);
        if vd > current.0 || vb > current.1 {
            return; // an invalid answer: ahead of the prepare it answers
        }
        if vd == c.freshest.header.decree && vb > c.freshest.header.ballot {
            c.freshest = Arc::new((**vote).clone());
        }
        c.promises.insert(from);
        self.check_prepared(now, out);
    }

    fn check_prepared(&mut self, now: Micros, out: &mut Vec<Action>) {
        let needed = self.quorum() - 1;
        match &self.candidacy {
            Some(c) if self.durable_seq >= c.seq && c.promises.len() >= needed => {}
            _ => return,
        }
        let c = self.candidacy.take().expect("checked above");
        assert_eq!(c.freshest.header.decree, self.accepted.header.decree, "re-proposing at our decree");
        assert_eq!(self.max_ballot.member, self.me);
        // Re-propose the freshest value at the same decree under our ballot.
        let mut body = c.freshest.as_vote().cloned().unwrap_or_default();
        body.cookie = self.primary_cookie.clone();
        body.relinquish = false;
        self.role = Role::Primary;
        self.force_reelection = false;
        self.recovering = Some(self.accepted.header.decree);
        self.propose(now, body, Vec::new(), None, out);
    }

    /// `HandleNotAcceptedMsg`.
    fn on_not_accepted(&mut self, now: Micros, msg: &Message, app: &mut dyn Application, out: &mut Vec<Action>) {
        let (d, b) = decree_ballot(msg);
        if is_lower((d, b), self.accepted()) || self.role == Role::Initializing {
            return;
        }
        if d > self.accepted.header.decree {
            self.start_initializing(now, app, out);
        } else if b > self.max_ballot {
            if self.role == Role::Primary {
                self.step_down(out);
            }
            // Adopt the promise, as a Prepare record.
            let prep = Message::new(Header::new(msg.header.version, msg.header.sender, d, self.paxos_config.number, b), Body::Prepare(Bytes::new()));
            let seq = self.persist(Arc::new(prep), out);
            self.set_max_ballot(now, b, seq);
            self.become_secondary();
        }
    }

    fn on_status_query(&mut self, now: Micros, from: MemberId, query: &Message, out: &mut Vec<Action>) {
        let status = StatusBody {
            query_decree: query.header.decree,
            query_ballot: query.header.ballot,
            last_received_ago_ms: (now.saturating_sub(self.accepted_at) / 1000) as i64,
            min_decree_in_log: self.log_min_decree,
            checkpointed_decree: self.checkpointed,
            checkpoint_size: self.checkpoint_size,
            max_ballot: self.max_ballot,
            state: self.role.status_code(),
        };
        let (ad, ab) = self.accepted();
        self.send(Dest::One(from), Message::new(self.header(ad, ab), Body::StatusResponse(status)), 0, out);
    }

    /// `HandleStatusResponseMsg` (api-behavior §2.11).
    fn on_status_response(&mut self, now: Micros, from: MemberId, msg: Arc<Message>, app: &mut dyn Application, out: &mut Vec<Action>) {
        let Body::StatusResponse(s) = &msg.body else { return };
        // A primary that wants a checkpoint copies the first one that is recent enough (even if
        // it has just lost the primary role, as in the original).
        if self.copy_at.is_some_and(|at| s.checkpointed_decree >= at) && !self.copying {
            self.copying = true;
            out.push(Action::FetchCheckpoint { from, decree: s.checkpointed_decree, size: s.checkpoint_size, load: false });
        }
        let busy = self.learning.is_some() || self.loading.is_some();
        if self.role == Role::Primary || busy || (s.query_decree, s.query_ballot) != self.accepted() {
            return;
        }
        let (ad, ab) = self.accepted();
        if self.role != Role::Initializing {
            // A minority ahead of a majority would otherwise livelock elections.
            let (d, b) = decree_ballot(&msg);
            if d == ad + 1 && b >= ab && self.cache.is_empty() {
                self.learn(from, out);
            }
            return;
        }
        self.statuses.insert(from, msg);
        if self.statuses.len() + 1 < self.quorum() {
            return;
        }
        let min_needed = self.cache.front().map(|(_, v)| v.header.decree).filter(|&d| d > ad).unwrap_or(u64::MAX);
        let logged_higher = |than: (u64, Ballot)| -> Vec<MemberId> {
            self.statuses
                .iter()
                .filter(|(_, m)| matches!(&m.body, Body::StatusResponse(s) if s.min_decree_in_log <= ad) && is_higher(decree_ballot(m), than))
                .map(|(id, _)| *id)
                .collect()
        };
        let mut candidates = logged_higher((min_needed - 1, ab));
        if candidates.is_empty() {
            candidates = logged_higher((ad, ab));
        }
        if !candidates.is_empty() {
            let pick = candidates[self.rng.below(candidates.len() as u64) as usize];
            return self.learn(pick, out);
        }
        if self.statuses.values().any(|m| is_higher(decree_ballot(m), (ad, ab))) {
            // Someone is ahead but nobody still logs our decree: load a checkpoint that covers
            // it, or wait for more answers.
            let with_checkpoint: Vec<(MemberId, u64, u64)> = self
                .statuses
                .iter()
                .filter_map(|(id, m)| match &m.body {
                    Body::StatusResponse(s) if s.checkpointed_decree >= ad => Some((*id, s.checkpointed_decree, s.checkpoint_size)),
                    _ => None,
                })
                .collect();
            if !with_checkpoint.is_empty() {
                let (from, decree, size) = with_checkpoint[self.rng.below(with_checkpoint.len() as u64) as usize];
                self.loading = Some(from);
                out.push(Action::FetchCheckpoint { from, decree, size, load: true });
            }
            return;
        }
        if self.next_election == Micros::MAX {
            let min_ago = self
                .statuses
                .values()
                .filter_map(|m| match &m.body {
                    Body::StatusResponse(s) => Some(s.last_received_ago_ms.max(0) as u64),
                    _ => None,
                })
                .min()
                .unwrap_or(0)
                .min(now / 1000);
            self.next_election = now - min_ago * 1000 + self.election_delay;
        }
        self.move_to_secondary_or_prepare(now, app, out);
    }

    fn learn(&mut self, from: MemberId, out: &mut Vec<Action>) {
        debug_assert!(self.learning.is_none() && self.role != Role::Primary);
        self.learning = Some(from);
        self.candidacy = None;
        self.role = self.role.min_active();
        out.push(Action::FetchVotes { from, decree: self.accepted.header.decree });
    }

    fn on_learned(&mut self, now: Micros, from: MemberId, records: Vec<Arc<Message>>, app: &mut dyn Application, out: &mut Vec<Action>) {
        if self.learning != Some(from) {
            return;
        }
        self.learning = None;
        let learned = self.apply_learned(now, records, out);
        if !self.members.contains(&self.me) {
            self.role = Role::Inactive;
        } else if !learned || self.role == Role::Inactive {
            self.start_initializing(now, app, out);
        } else {
            // The votes cached meanwhile continue from where learning stopped (`drain_cache`).
            self.become_secondary();
        }
    }

    /// `LearnVotes`: applies a peer's log from our decree on. Succeeds once it has reached the
    /// first cached vote.
    fn apply_learned(&mut self, now: Micros, records: Vec<Arc<Message>>, out: &mut Vec<Action>) -> bool {
        let min_needed = self.cache.front().map(|(_, v)| v.header.decree);
        let mut last: Option<(u64, Ballot)> = None;
        for rec in records {
            if rec.header.config != self.paxos_config.number {
                return false;
            }
            let (d, b) = decree_ballot(&rec);
            match rec.kind() {
                MsgKind::Prepare => {
                    if b > self.max_ballot {
                        let seq = self.persist(rec, out);
                        self.set_max_ballot(now, b, seq);
                    }
                }
                MsgKind::Vote => {
                    let (ad, ab) = self.accepted();
                    let in_sequence = match last {
                        Some(l) => is_next((d, b), l) && (d == ad || d == ad + 1),
                        None => d == ad,
                    };
                    if !in_sequence {
                        return false;
                    }
                    let prev = last.replace((d, b));
                    // The peer's (ad, b) followed by (ad + 1, b) proves (ad, b) chosen. Our vote
                    // at ad has a ballot at least b, so by Paxos it carries the same value: ours
                    // is chosen too, and we move on to ad + 1 though its ballot is lower. (The
                    // original skips it, and such a replica never catches up.)
                    let proven = b < ab && d == ad + 1 && prev == Some((ad, b));
                    if b < ab && !proven {
                        continue;
                    }
                    if !is_next((d, b), (ad, ab)) && !proven {
                        // The original logs a copy under our ballot here, which would mark our
                        // vote chosen without proof; refusing (and learning again) is safe.
                        return false;
                    }
                    self.log_and_accept(now, rec, proven, out);
                    if min_needed.is_some_and(|m| m <= d) {
                        return true;
                    }
                }
                MsgKind::ReconfigurationDecision => {
                    // The next vote starts the new configuration at its first decree.
                    if self.log_decision(now, rec, true, None, out) {
                        last = None;
                    }
                }
                _ => return false,
            }
        }
        false
    }

    // ---- timers and transitions -----------------------------------------------------------

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
                    self.action_deadline = now.saturating_add(self.cfg.resend_interval);
                }
            }
            Role::Primary => {
                if self.copy_at.is_some() && !self.copying && now >= self.copy_query_at {
                    self.copy_query_at = now.saturating_add(self.cfg.checkpoint_query_interval);
                    let (ad, ab) = self.accepted();
                    self.send(Dest::All, Message::new(self.header(ad, ab), Body::StatusQuery), 0, out);
                }
                if let Some(o) = &self.outstanding {
                    if now >= self.action_deadline {
                        for m in self.members.iter().filter(|m| **m != self.me && !o.acks.contains(m)) {
                            out.push(Action::Send { to: Dest::One(*m), msg: o.vote.clone(), after: 0 });
                        }
                        self.action_deadline = now.saturating_add(self.cfg.resend_interval);
                    }
                } else if self.is_primary && !self.relinquishing && now >= self.last_proposed.saturating_add(self.cfg.heartbeat_interval) {
                    debug_assert!(self.to_send.is_empty());
                    self.propose(now, VoteBody::default(), Vec::new(), None, out);
                }
            }
        }
    }

    /// `Bootstrap` keeps sending the set to the other members until this replica takes part.
    fn resend_bootstrap(&mut self, now: Micros, out: &mut Vec<Action>) {
        if self.is_bootstrapped() {
            self.bootstrap = None;
            return;
        }
        let members = self.bootstrap.clone().expect("bootstrapping");
        for node in members.nodes.iter().filter(|n| n.id != self.me) {
            let header = Header::new(self.version, self.me, 0, 0, Ballot::EMPTY);
            self.send(Dest::One(node.id), Message::new(header, Body::Bootstrap(members.clone())), 0, out);
        }
        self.bootstrap_resend = now.saturating_add(self.cfg.initialize_retry_interval);
    }

    /// The Paxos configuration (the one being voted in).
    pub fn paxos_configuration(&self) -> &ConfigInfo {
        &self.paxos_config
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
        if self.quorum() == 1 {
            self.next_election = 0;
            return self.move_to_secondary_or_prepare(now, app, out);
        }
        let (ad, ab) = self.accepted();
        self.send(Dest::All, Message::new(self.header(ad, ab), Body::StatusQuery), 0, out);
    }

    /// `MoveToSecondaryOrPrepare` (api-behavior §2.9).
    fn move_to_secondary_or_prepare(&mut self, now: Micros, app: &mut dyn Application, out: &mut Vec<Action>) {
        debug_assert_eq!(self.role, Role::Initializing);
        if now >= self.next_election || self.max_ballot.member == self.me || self.force_reelection {
            // A log-roll checkpoint not yet started gives way to the election; one being
            // written blocks it.
            self.save_at = None;
            if let Some(cookie) = if self.saving { None } else { app.can_become_primary() } {
                self.primary_cookie = cookie;
                return self.start_preparing(now, out);
            }
            self.next_election = now.saturating_add(self.cfg.heartbeat_interval);
        }
        self.become_secondary();
    }

    fn start_preparing(&mut self, now: Micros, out: &mut Vec<Action>) {
        let mut ballot = Ballot::new(self.max_ballot.id.saturating_add(1), self.me);
        if ballot < self.max_seen_ballot {
            ballot.id = self.max_seen_ballot.id.saturating_add(1);
        }
        assert!(ballot > self.max_ballot, "a new ballot exceeds every promise");
        let (ad, _) = self.accepted();
        let prepare = Arc::new(Message::new(self.header(ad, ballot), Body::Prepare(self.primary_cookie.clone())));
        // As in the original, the Prepare goes out before it is logged; we count ourselves
        // only once it is durable.
        out.push(Action::Send { to: Dest::All, msg: prepare.clone(), after: 0 });
        let seq = self.persist(prepare.clone(), out);
        self.set_max_ballot(now, ballot, seq);
        self.role = Role::Preparing;
        let deadline = now.saturating_add(self.election_delay.saturating_mul(30));
        self.candidacy = Some(Candidacy { prepare, seq, promises: BTreeSet::new(), freshest: self.accepted.clone(), deadline });
        self.action_deadline = now.saturating_add(self.cfg.resend_interval);
        self.check_prepared(now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Node;
    use crate::paxos::{AcceptAll, SEC};
    use std::net::Ipv4Addr;

    fn id(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }

    fn config(ids: &[&str]) -> ConfigInfo {
        let node = |s: &str| Node { id: id(s), ip: Ipv4Addr::LOCALHOST, rsl_port: 1, learn_port: 2, app_port: 0, host_name: Bytes::new() };
        ConfigInfo { number: 1, initial_decree: 0, members: MemberSet { nodes: ids.iter().map(|s| node(s)).collect(), cookie: Bytes::new() } }
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
        r.restore_checkpoint(&Checkpoint { decree, next_vote: accepted, max_ballot, config: config(&["1", "2", "3"]), state_saved: true }, 0);
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
}
