//! The original's test catalogue (docs/spec/behavior.md §3) as directed tests of the core, and the
//! single-replica harness they share, rebuilt after the original's `RslStateMachine` suite
//! (docs/spec/behavior.md §3.0): one real replica, member "2" of {1, 2, 3}, driven by hand-crafted
//! messages from fake legislators "1" and "3".
//!
//! [`Bench`] holds the replica and a virtual clock that moves only when a test says so; its
//! disk is durable at once and its executor runs each decree as soon as it is handed out, so
//! every input comes back as the complete list of what the replica did about it. Every
//! interval is 60 s, as in the original's harness, so no timer fires on its own: every
//! transition is driven by a message.
//!
//! The six test states of the original ([`TestState`]) and [`Bench::move_to`] between them:
//! each move is itself a check of the transition rules (it asserts every message the replica
//! sends on the way, and where it ends). A fake legislator's ballot is always 10 ids above the
//! replica's promise (`fake_ballot`), as the original's `IncrementBallot(10)`.
//!
//! The API, for the scenario tests: [`Bench::new`] (started, Initializing), [`Bench::initialized`]
//! (as TestInitialize leaves it) or [`Bench::with`] (another configuration, a highest defunct);
//! [`Bench::deliver`] a fake's message (built with `msg`, `vote`, `prepare`, `status_response`,
//! `prepare_accepted`), [`Bench::input`] any other input, [`Bench::submit`] a request; read the
//! answer with [`sent`], [`persisted`] and [`executed`], and the replica with [`Bench::status`]
//! (the original's `WaitForState` fields). The bench's `log` and `executed` keep everything so
//! far; `now` moves only by hand ([`Bench::election_due`]).
//!
//! Where our harness differs from the original's: the original makes an election due with a
//! status reply whose `lastReceivedAgo` is `I64_MAX`, which only arms a timer that has never
//! been armed; `initializing_to_preparing` moves the clock to the election time instead. A
//! fake's vote carries its proposer's ballot, and an embedded vote its proposer's id (our
//! `validate` refuses anything else); the original's fakes sometimes send votes under the
//! replica's ballot.

use super::*;
use crate::paxos::{AcceptAll, SEC};

mod messages;
mod scenarios;

/// The fake legislator the tests speak for, and the replica under test.
pub(super) const FAKE: &str = "1";
pub(super) const REAL: &str = "2";

pub(super) fn id(s: &str) -> MemberId {
    MemberId::new(s).expect("a member id")
}

/// The original's six test states (`LegislatorTest::State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TestState {
    /// StablePrimary with its re-proposal outstanding (not yet primary to the application).
    Primary,
    Secondary,
    /// StableSecondary having promised a ballot 10 ids above the accepted one.
    SecondaryPrepared,
    /// Preparing: its Prepare is out, no promise back yet.
    Prepare,
    Initialize,
    /// Initializing with a promise 10 ids above the accepted ballot.
    InitializePrepared,
}

pub(super) const STATES: [TestState; 6] = [
    TestState::Primary,
    TestState::Secondary,
    TestState::SecondaryPrepared,
    TestState::Prepare,
    TestState::Initialize,
    TestState::InitializePrepared,
];

/// What the original reads back with a status query (`WaitForState`): the replica's state, its
/// highest accepted vote and its promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Status {
    pub role: Role,
    pub decree: u64,
    pub ballot: Ballot,
    pub max_ballot: Ballot,
}

/// A message the replica sent, as the tests compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Sent {
    pub to: Dest,
    pub kind: MsgKind,
    pub decree: u64,
    pub ballot: Ballot,
}

impl Sent {
    pub(super) fn to(member: &str, kind: MsgKind, decree: u64, ballot: Ballot) -> Sent {
        Sent { to: Dest::One(id(member)), kind, decree, ballot }
    }

    pub(super) fn all(kind: MsgKind, decree: u64, ballot: Ballot) -> Sent {
        Sent { to: Dest::All, kind, decree, ballot }
    }
}

/// The messages among `out`, in order.
pub(super) fn sent(out: &[Action]) -> Vec<Sent> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to, msg, .. } => {
                Some(Sent { to: to.clone(), kind: msg.kind(), decree: msg.header.decree, ballot: msg.header.ballot })
            }
            _ => None,
        })
        .collect()
}

/// The records among `out`: (kind, decree, ballot).
pub(super) fn persisted(out: &[Action]) -> Vec<(MsgKind, u64, Ballot)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Persist { record, .. } => Some((record.kind(), record.header.decree, record.header.ballot)),
            _ => None,
        })
        .collect()
}

/// The decrees executed among `out`.
pub(super) fn executed(out: &[Action]) -> Vec<u64> {
    out.iter()
        .filter_map(|a| match a {
            Action::Execute { vote, .. } => Some(vote.header.decree),
            _ => None,
        })
        .collect()
}

/// The harness's configuration: every interval 60 s (docs/spec/behavior.md §3.0).
fn harness_config() -> CoreConfig {
    let minute = 60 * SEC;
    CoreConfig {
        heartbeat_interval: minute,
        election_delay: minute,
        new_leader_grace_period: minute,
        initialize_retry_interval: minute,
        prepare_retry_interval: minute,
        vote_retry_interval: minute,
        checkpoint_query_interval: minute,
        join_interval: minute,
        ..CoreConfig::default()
    }
}

/// One real replica ("2" of {1, 2, 3}, protocol version 6) on the bench.
pub(super) struct Bench {
    pub r: Replica,
    pub now: Micros,
    /// Every record the replica persisted, in order: its log.
    pub log: Vec<Arc<Message>>,
    /// Every decree it executed, in order.
    pub executed: Vec<u64>,
    /// The highest ballot the fakes have shown the replica in messages of its configuration
    /// that it records (the original's `MaxSentBallotId`).
    pub max_sent_ballot: Ballot,
}

impl Bench {
    /// The replica, started: Initializing, its first status query answered by nobody.
    pub(super) fn new() -> Bench {
        Bench::with(super::tests::config(&["1", "2", "3"]), 0)
    }

    /// The replica as TestInitialize leaves it for the tests after it: a secondary that has
    /// accepted decree 1 (so that every test can send decree − 1).
    pub(super) fn initialized() -> Bench {
        let mut bench = Bench::new();
        bench.move_to_secondary();
        let Status { decree, ballot, .. } = bench.status();
        let vote = bench.vote(decree + 1, ballot);
        let out = bench.deliver(vote);
        assert_eq!(sent(&out), [Sent::to(FAKE, MsgKind::VoteAccepted, decree + 1, ballot)]);
        bench
    }

    /// A replica of `config` (which may leave it out) that knows configurations up to
    /// `highest_defunct` defunct, started.
    pub(super) fn with(config: ConfigInfo, highest_defunct: u32) -> Bench {
        let now = 1_000 * SEC;
        let mut r = Replica::new(harness_config(), id(REAL), config, 2);
        r.restore_defunct(highest_defunct);
        let mut out = Vec::new();
        r.start(now, &mut AcceptAll, &mut out);
        let mut bench = Bench { r, now, log: Vec::new(), executed: Vec::new(), max_sent_ballot: Ballot::EMPTY };
        bench.absorb(&out);
        bench
    }

    pub(super) fn status(&self) -> Status {
        let (decree, ballot) = self.r.accepted();
        Status { role: self.r.role(), decree, ballot, max_ballot: self.r.max_ballot() }
    }

    /// Feeds one input at the current time, and returns everything the replica did about it:
    /// its persists are made durable at once (the original's synchronous log writes), and
    /// the execute side has run every decree handed out before.
    pub(super) fn input(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        let below = self.r.next_execute();
        self.r.step(self.now, Input::Executed { below, spilled: false }, &mut AcceptAll, &mut out);
        self.r.step(self.now, input, &mut AcceptAll, &mut out);
        self.settle(&mut out);
        out
    }

    /// `ReplicateRequest` on the replica (it must be primary to the application).
    pub(super) fn submit(&mut self, request: &'static [u8], cookie: Cookie) -> Vec<Action> {
        let mut out = Vec::new();
        self.r.submit(self.now, Bytes::from_static(request), cookie, false, &mut out).expect("the primary takes the request");
        self.settle(&mut out);
        out
    }

    /// Makes every persist durable, and records what was persisted and executed.
    fn settle(&mut self, out: &mut Vec<Action>) {
        if self.r.durable_seq < self.r.persist_seq {
            let seq = self.r.persist_seq;
            self.r.step(self.now, Input::Durable(seq), &mut AcceptAll, out);
        }
        self.absorb(out);
    }

    fn absorb(&mut self, out: &[Action]) {
        for a in out {
            match a {
                Action::Persist { record, .. } => self.log.push(record.clone()),
                Action::Execute { vote, .. } => self.executed.push(vote.header.decree),
                _ => {}
            }
        }
    }

    /// Delivers `msg` as sent by its header's sender.
    pub(super) fn deliver(&mut self, msg: Arc<Message>) -> Vec<Action> {
        let unrecorded = [MsgKind::StatusQuery, MsgKind::Join, MsgKind::JoinRequest, MsgKind::DefunctConfiguration, MsgKind::Bootstrap];
        if msg.header.config == self.r.paxos_configuration().number && !unrecorded.contains(&msg.kind()) {
            self.max_sent_ballot = self.max_sent_ballot.max(msg.header.ballot);
        }
        let from = msg.header.sender;
        let out = self.input(Input::Message { from, msg });
        assert!(!out.iter().any(|a| matches!(a, Action::Rejected { .. })), "a fake's message is well formed: {out:?}");
        out
    }

    /// A message of our configuration from `sender`.
    pub(super) fn msg(&self, sender: MemberId, decree: u64, ballot: Ballot, body: Body) -> Arc<Message> {
        let header = Header::new(self.r.version(), sender, decree, self.r.paxos_configuration().number, ballot);
        Arc::new(Message::new(header, body))
    }

    /// A vote for `decree` from the ballot's owner, with a request naming both.
    pub(super) fn vote(&self, decree: u64, ballot: Ballot) -> Arc<Message> {
        let request = Bytes::from(format!("decree {decree} ballot {}", ballot.id));
        let body = Body::Vote(VoteBody { requests: vec![request], ..Default::default() });
        self.msg(ballot.member, decree, ballot, body)
    }

    /// A Prepare from the ballot's owner.
    pub(super) fn prepare(&self, decree: u64, ballot: Ballot) -> Arc<Message> {
        self.msg(ballot.member, decree, ballot, Body::Prepare(Bytes::new()))
    }

    /// A fake's status reply `at` its (decree, ballot) to a query at `query`, received
    /// `ago_ms` ago (`i64::MAX` is the original's -1).
    pub(super) fn status_response(&self, sender: &str, at: (u64, Ballot), query: (u64, Ballot), ago_ms: i64) -> Arc<Message> {
        let body = StatusBody {
            query_decree: query.0,
            query_ballot: query.1,
            last_received_ago_ms: ago_ms,
            min_decree_in_log: 0,
            checkpointed_decree: 0,
            checkpoint_size: 0,
            max_ballot: at.1,
            state: Role::Secondary.status_code(),
        };
        self.msg(id(sender), at.0, at.1, Body::StatusResponse(body))
    }

    /// A PrepareAccepted from `sender` answering the Prepare at (decree, ballot), reporting `vote`.
    pub(super) fn prepare_accepted(&self, sender: &str, decree: u64, ballot: Ballot, vote: &Message) -> Arc<Message> {
        self.msg(id(sender), decree, ballot, Body::PrepareAccepted(Box::new(vote.clone())))
    }

    /// A ballot of the fake's, `inc` ids above the replica's promise (`IncrementBallot`).
    pub(super) fn fake_ballot(&self, inc: u32) -> Ballot {
        Ballot::new(self.r.max_ballot().id + inc, id(FAKE))
    }

    /// `MoveToState`.
    pub(super) fn move_to(&mut self, state: TestState) {
        match state {
            TestState::Primary => self.move_to_primary(),
            TestState::Secondary => self.move_to_secondary(),
            TestState::SecondaryPrepared => self.move_to_secondary_prepared(),
            TestState::Prepare => self.move_to_preparing(),
            TestState::Initialize => self.move_to_initializing(),
            TestState::InitializePrepared => self.move_to_initializing_prepared(),
        }
    }

    /// `MoveToSecondary`: from a stable state or Preparing, the fake's vote at our decree
    /// under a higher ballot; from Initializing, a status round that makes it learn.
    pub(super) fn move_to_secondary(&mut self) {
        match self.r.role() {
            Role::Primary | Role::Secondary | Role::Preparing => {
                let d = self.status().decree;
                let b = self.fake_ballot(10);
                let vote = self.vote(d, b);
                let out = self.deliver(vote);
                assert_eq!(sent(&out), [Sent::to(FAKE, MsgKind::VoteAccepted, d, b)]);
                assert_eq!(persisted(&out), [(MsgKind::Vote, d, b)]);
            }
            Role::Initializing => self.initializing_to_secondary(),
            Role::Inactive => panic!("an inactive replica has no test state"),
        }
        self.expect_role(Role::Secondary);
    }

    /// `InitializingToSecondary`: a status reply at our decree under a higher ballot; the
    /// replica learns that vote, has nothing cached to reach so starts another round
    /// (erratum O9), and with nobody ahead follows.
    fn initializing_to_secondary(&mut self) {
        let Status { decree: d, ballot: a, .. } = self.status();
        let b = self.fake_ballot(10);
        let reply = self.status_response(FAKE, (d, b), (d, a), 0);
        let out = self.deliver(reply);
        assert!(sent(&out).is_empty(), "{out:?}");
        assert!(matches!(out.as_slice(), [Action::FetchVotes { from, decree }] if *from == id(FAKE) && *decree == d), "{out:?}");
        let vote = self.vote(d, b);
        let out = self.input(Input::Learned { from: id(FAKE), records: vec![vote] });
        assert_eq!(persisted(&out), [(MsgKind::Vote, d, b)]);
        assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, d, b)]);
        self.expect_role(Role::Initializing);
        let reply = self.status_response(FAKE, (d, b), (d, b), 0);
        let out = self.deliver(reply);
        assert!(sent(&out).is_empty() && persisted(&out).is_empty(), "{out:?}");
    }

    /// `MoveToSecondaryPrepared`: a Prepare at our decree 10 ids above our promise.
    pub(super) fn move_to_secondary_prepared(&mut self) {
        self.move_to_secondary();
        let d = self.status().decree;
        let b = self.fake_ballot(10);
        let prepare = self.prepare(d, b);
        let out = self.deliver(prepare);
        assert_eq!(sent(&out), [Sent::to(FAKE, MsgKind::PrepareAccepted, d, b)]);
        assert_eq!(persisted(&out), [(MsgKind::Prepare, d, b)]);
        self.expect_role(Role::Secondary);
        assert!(self.status().max_ballot > self.status().ballot);
    }

    /// `MoveToInitializing`: from Secondary, a vote one decree ahead under a higher ballot
    /// (a gap).
    pub(super) fn move_to_initializing(&mut self) {
        self.move_to_secondary();
        self.gap_vote();
    }

    pub(super) fn move_to_initializing_prepared(&mut self) {
        self.move_to_secondary_prepared();
        self.gap_vote();
    }

    fn gap_vote(&mut self) {
        let before = self.status();
        let vote = self.vote(before.decree + 1, self.fake_ballot(10));
        let out = self.deliver(vote);
        assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, before.decree, before.ballot)]);
        assert!(persisted(&out).is_empty());
        assert_eq!(self.status(), Status { role: Role::Initializing, ..before });
    }

    /// `MoveToPreparing`: from InitializePrepared, a status round with nobody ahead.
    pub(super) fn move_to_preparing(&mut self) {
        self.move_to_initializing_prepared();
        self.initializing_to_preparing();
    }

    /// `InitializingToPreparing`: the election is due (see the module doc) and a status reply
    /// at our own position arrives: the replica stands, sending its Prepare before logging it,
    /// under one id above its promise, or above the highest ballot shown if that is still
    /// higher (erratum D5: the original's test expects `MaxSentBallotId() + 1` only where the
    /// two agree).
    fn initializing_to_preparing(&mut self) {
        self.expect_role(Role::Initializing);
        self.election_due();
        let Status { decree: d, ballot: a, .. } = self.status();
        let ballot = self.candidate_ballot();
        let reply = self.status_response(FAKE, (d, a), (d, a), i64::MAX);
        let out = self.deliver(reply);
        assert_eq!(sent(&out), [Sent::all(MsgKind::Prepare, d, ballot)]);
        assert_eq!(persisted(&out), [(MsgKind::Prepare, d, ballot)]);
        assert_eq!(self.status(), Status { role: Role::Preparing, decree: d, ballot: a, max_ballot: ballot });
    }

    /// The ballot the replica stands with now: one id above its promise, or above the highest
    /// ballot the fakes showed it if that is still higher (erratum D5).
    pub(super) fn candidate_ballot(&self) -> Ballot {
        let mut ballot = Ballot::new(self.r.max_ballot().id + 1, id(REAL));
        if ballot < self.max_sent_ballot {
            ballot.id = self.max_sent_ballot.id + 1;
        }
        ballot
    }

    /// Moves the clock to when the replica's election timer is due (no timer fires: nothing
    /// ticks).
    pub(super) fn election_due(&mut self) {
        if self.r.next_election != Micros::MAX {
            self.now = self.now.max(self.r.next_election);
        }
    }

    /// `PreparingToPrimary`: the fake promises, reporting our own accepted vote; the replica
    /// becomes primary and re-proposes it at the same decree under its ballot.
    fn preparing_to_primary(&mut self) {
        self.expect_role(Role::Preparing);
        let Status { decree: d, ballot: a, max_ballot: m, .. } = self.status();
        let reported = self.vote(d, a);
        let promise = self.prepare_accepted(FAKE, d, m, &reported);
        let out = self.deliver(promise);
        assert_eq!(sent(&out), [Sent::all(MsgKind::Vote, d, m)]);
        assert_eq!(persisted(&out), [(MsgKind::Vote, d, m)]);
        assert_eq!(self.status(), Status { role: Role::Primary, decree: d, ballot: m, max_ballot: m });
        assert!(!self.r.is_primary(), "primary to the application only once the re-proposal is chosen");
    }

    /// `MoveToPrimary`.
    pub(super) fn move_to_primary(&mut self) {
        match self.r.role() {
            Role::Primary | Role::Secondary => {
                self.move_to_initializing();
                self.initializing_to_preparing();
            }
            Role::Initializing => self.initializing_to_preparing(),
            Role::Preparing => {}
            Role::Inactive => panic!("an inactive replica has no test state"),
        }
        self.preparing_to_primary();
    }

    pub(super) fn expect_role(&self, role: Role) {
        assert_eq!(self.r.role(), role, "at {:?}", self.status());
    }
}
