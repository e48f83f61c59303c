//! The original's scenario tests that had no directed equivalent (docs/spec/behavior.md §3.1 to §3.3;
//! docs/testing.md maps every one): CanBecomePrimary, AcceptMessageFromReplica, learning from a
//! bad stream, checkpointing's hold on elections, a one-member ring, reconfigurations that keep
//! or drop a member, and bootstrap by message, by API, by checkpoint and by joining later. Each
//! test is named after the original's.
//!
//! Most run as the original's do: one real replica, "1" of {1, 2, 3}, fed messages by hand as
//! if from peers 2 and 3 (`Lone`). Unlike the catalogue's `Bench`, whose application accepts
//! everything, `Lone`'s answers `CanBecomePrimary` and `AcceptMessageFromReplica` as the test
//! sets them, and it can start a replica with no configuration or from a checkpoint. The
//! reconfigurations run on the three-replica `Ring` of `directed.rs`.

use super::super::directed::Ring;
use super::super::tests::{config, id};
use super::super::*;
use crate::paxos::SEC;

/// An application whose answers the test sets, and which records what it was asked.
struct Script {
    can_become_primary: bool,
    accept: bool,
    primary_cookie: Bytes,
    asked_primary: usize,
    /// Each `AcceptMessageFromReplica`: the sender and the primary cookie it carried.
    asked_accept: Vec<(MemberId, Bytes)>,
}

impl Default for Script {
    fn default() -> Self {
        Script { can_become_primary: true, accept: true, primary_cookie: Bytes::new(), asked_primary: 0, asked_accept: Vec::new() }
    }
}

impl Application for Script {
    fn can_become_primary(&mut self) -> Option<Bytes> {
        self.asked_primary += 1;
        self.can_become_primary.then(|| self.primary_cookie.clone())
    }

    fn accept_message(&mut self, from: &MemberId, primary_cookie: &[u8]) -> bool {
        self.asked_accept.push((*from, Bytes::copy_from_slice(primary_cookie)));
        self.accept
    }
}

/// Replica "1" alone, its peers played by the test. Every persist is durable at once, and
/// every decree handed out has executed by the next input.
struct Lone {
    r: Replica,
    now: Micros,
    app: Script,
}

impl Lone {
    /// Replica "1" of `members` (configuration 1 from decree 0), started.
    fn new(members: &[&str]) -> (Lone, Vec<Action>) {
        Lone::start(Replica::new(CoreConfig::default(), id("1"), config(members), 1))
    }

    /// Replica "1" with no configuration yet: it waits to be bootstrapped.
    fn unbootstrapped() -> (Lone, Vec<Action>) {
        Lone::start(Replica::new(CoreConfig::default(), id("1"), ConfigInfo::default(), 1))
    }

    /// Starts `r`, restored already if at all.
    fn start(mut r: Replica) -> (Lone, Vec<Action>) {
        let (now, mut app, mut out) = (SEC, Script::default(), Vec::new());
        r.start(now, &mut app, &mut out);
        let mut lone = Lone { r, now, app };
        let out = lone.settle(out);
        (lone, out)
    }

    fn step(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        let executed = Input::Executed { below: self.r.next_execute(), spilled: false };
        self.r.step(self.now, executed, &mut self.app, &mut out);
        self.r.step(self.now, input, &mut self.app, &mut out);
        self.settle(out)
    }

    /// Makes every persist in `out` durable, adding what that does.
    fn settle(&mut self, mut out: Vec<Action>) -> Vec<Action> {
        let mut from = 0;
        while let Some(seq) = out[from..]
            .iter()
            .filter_map(|a| match a {
                Action::Persist { seq, .. } => Some(*seq),
                _ => None,
            })
            .max()
        {
            from = out.len();
            self.r.step(self.now, Input::Durable(seq), &mut self.app, &mut out);
        }
        out
    }

    /// A message from peer `sender`, in our configuration and version.
    fn peer(&mut self, sender: &str, decree: u64, ballot: Ballot, body: Body) -> Vec<Action> {
        let config = self.r.paxos_configuration().number;
        self.peer_in(sender, config, decree, ballot, body)
    }

    fn peer_in(&mut self, sender: &str, config: u32, decree: u64, ballot: Ballot, body: Body) -> Vec<Action> {
        let header = Header::new(self.r.version(), id(sender), decree, config, ballot);
        self.step(Input::Message { from: id(sender), msg: Arc::new(Message::new(header, body)) })
    }

    /// Peer `sender`'s answer to our StatusQuery: it is at `(decree, ballot)` and logs from
    /// `min_decree_in_log`.
    fn status(&mut self, sender: &str, (decree, ballot): (u64, Ballot), min_decree_in_log: u64) -> Vec<Action> {
        let (query_decree, query_ballot) = self.r.position();
        let body = StatusBody {
            query_decree,
            query_ballot,
            last_received_ago_ms: 0,
            min_decree_in_log,
            checkpointed_decree: 0,
            checkpoint_size: 0,
            max_ballot: ballot,
            state: Role::Secondary.status_code(),
        };
        self.peer(sender, decree, ballot, Body::StatusResponse(body))
    }

    /// Peer 2 answers the status round as our equal: not due for an election, we follow.
    fn follow(&mut self) {
        let at = self.r.position();
        self.status("2", at, 0);
        assert_eq!(self.r.role(), Role::Secondary);
    }

    /// Stands for election and wins it with peer 2's promise and acceptance; returns the ballot.
    fn elect(&mut self) -> Ballot {
        self.step(Input::AttemptPromotion);
        self.step(Input::Tick);
        let at = self.r.position();
        self.status("2", at, 0);
        assert_eq!(self.r.role(), Role::Preparing);
        let (d, ballot) = (self.r.accepted().0, self.r.max_ballot());
        let ours = (*self.r.accepted).clone();
        let out = self.peer("2", d, ballot, Body::PrepareAccepted(Box::new(ours)));
        assert_eq!(self.r.role(), Role::Primary);
        let reproposal = sent(&out, MsgKind::Vote).pop().expect("the re-proposal");
        let out = self.peer("2", reproposal.header.decree, ballot, Body::VoteAccepted);
        assert!(self.r.is_primary() && notified(&out) == [true]);
        ballot
    }

    /// `members` as a Bootstrap message from peer 2.
    fn bootstrap_message(&mut self, members: &[&str]) -> Vec<Action> {
        self.peer_in("2", 0, 0, Ballot::EMPTY, Body::Bootstrap(config(members).members))
    }

    /// `members` through the API.
    fn bootstrap_api(&mut self, members: &[&str]) -> (Result<(), BootstrapError>, Vec<Action>) {
        let mut out = Vec::new();
        let result = self.r.bootstrap(self.now, config(members).members, &mut self.app, &mut out);
        (result, self.settle(out))
    }
}

fn vote(requests: &[&'static [u8]], cookie: &Bytes) -> Body {
    Body::Vote(VoteBody {
        requests: requests.iter().map(|r| Bytes::from_static(r)).collect(),
        cookie: cookie.clone(),
        ..Default::default()
    })
}

fn sent(out: &[Action], kind: MsgKind) -> Vec<Arc<Message>> {
    let sends = out.iter().filter_map(|a| match a {
        Action::Send { msg, .. } if msg.kind() == kind => Some(msg.clone()),
        _ => None,
    });
    sends.collect()
}

fn any_sent(out: &[Action]) -> bool {
    out.iter().any(|a| matches!(a, Action::Send { .. }))
}

fn persisted(out: &[Action], kind: MsgKind) -> Vec<Arc<Message>> {
    let records = out.iter().filter_map(|a| match a {
        Action::Persist { record, .. } if record.kind() == kind => Some(record.clone()),
        _ => None,
    });
    records.collect()
}

fn executed(out: &[Action]) -> Vec<(u64, Vec<Bytes>, Vec<Cookie>)> {
    let runs = out.iter().filter_map(|a| match a {
        Action::Execute { vote, cookies } => Some((vote.header.decree, vote.as_vote().expect("a vote").requests.clone(), cookies.clone())),
        _ => None,
    });
    runs.collect()
}

fn notified(out: &[Action]) -> Vec<bool> {
    let notes = out.iter().filter_map(|a| match a {
        Action::NotifyStatus { primary } => Some(*primary),
        _ => None,
    });
    notes.collect()
}

fn saved(out: &[Action]) -> Option<Checkpoint> {
    out.iter().find_map(|a| match a {
        Action::SaveCheckpoint(cp) => Some(cp.clone()),
        _ => None,
    })
}

/// TestCanBecomePrimary: while `CanBecomePrimary` says no, a replica due for election ends a
/// status round as a secondary instead of preparing, whether it was primary before or comes
/// from Initializing; asked again once it says yes, it stands.
#[test]
fn test_can_become_primary() {
    let (mut lone, _) = Lone::new(&["1", "2", "3"]);
    lone.elect();
    let (d, b) = lone.r.accepted();
    let promised = lone.r.max_ballot();
    // A NotAccepted from a peer at a later decree: the primary is behind and looks for the ring.
    let out = lone.peer("2", d + 1, b, Body::NotAccepted);
    assert_eq!((lone.r.role(), notified(&out)), (Role::Initializing, vec![false]));
    assert_eq!(sent(&out, MsgKind::StatusQuery).len(), 1);

    lone.app.can_become_primary = false;
    for from in ["a former primary", "Initializing"] {
        let asked = lone.app.asked_primary;
        // Our ballot is the promised one, so we are due; a peer at our decree, lower ballot.
        let out = lone.status("2", (d, Ballot::EMPTY), 0);
        assert_eq!(lone.app.asked_primary, asked + 1, "{from}: asked");
        assert_eq!(lone.r.role(), Role::Secondary, "{from}: vetoed, it follows");
        assert!(sent(&out, MsgKind::Prepare).is_empty() && persisted(&out, MsgKind::Prepare).is_empty(), "{from}: no Prepare");
        assert_eq!((lone.r.accepted(), lone.r.max_ballot()), ((d, b), promised), "{from}: nothing changed");
        // MoveToInitializing, as the original's helper does.
        let out = lone.peer("2", d + 1, b, Body::NotAccepted);
        assert_eq!(lone.r.role(), Role::Initializing);
        assert_eq!(sent(&out, MsgKind::StatusQuery).len(), 1);
    }

    lone.app.can_become_primary = true;
    let out = lone.status("2", (d, Ballot::EMPTY), 0);
    assert_eq!(lone.r.role(), Role::Preparing, "allowed again, it stands");
    let prepare = sent(&out, MsgKind::Prepare).pop().expect("a Prepare");
    assert!(prepare.header.ballot > promised);
}

/// TestAcceptMessageFromReplica: while the application refuses a peer's messages, its Prepare
/// and votes are still logged (the promise and the decree advance) but not answered; once it
/// accepts, VoteAccepted replies resume. The primary cookie reaches the callback intact.
#[test]
fn test_accept_message_from_replica() {
    let (mut lone, _) = Lone::new(&["1", "2", "3"]);
    lone.follow();
    lone.app.accept = false;
    let cookie = Bytes::from((0..1024u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
    let (d, _) = lone.r.accepted();
    let high = Ballot::new(lone.r.max_ballot().id + 10, id("2"));

    let out = lone.peer("2", d, high, Body::Prepare(cookie.clone()));
    assert_eq!(persisted(&out, MsgKind::Prepare).len(), 1, "the promise is logged");
    assert!(!any_sent(&out), "and not answered: {out:?}");
    assert_eq!((lone.r.role(), lone.r.max_ballot()), (Role::Secondary, high));

    for (k, request) in [(d, b"a" as &'static [u8]), (d + 1, b"b")] {
        let out = lone.peer("2", k, high, vote(&[request], &cookie));
        assert_eq!(persisted(&out, MsgKind::Vote).len(), 1, "the vote at {k} is logged");
        assert!(!any_sent(&out), "and not answered");
    }
    assert_eq!(lone.r.accepted(), (d + 1, high));
    assert_eq!(lone.r.next_execute(), d + 1, "decree {d} chosen and executed");

    lone.app.accept = true;
    let out = lone.peer("2", d + 2, high, vote(&[b"c"], &cookie));
    let answer = sent(&out, MsgKind::VoteAccepted).pop().expect("answered");
    assert_eq!((answer.header.decree, answer.header.ballot), (d + 2, high));
    assert_eq!(lone.app.asked_accept.len(), 4, "asked for the Prepare and each vote");
    assert!(lone.app.asked_accept.iter().all(|(from, c)| *from == id("2") && *c == cookie), "the cookie arrives intact");
}

/// TestAcceptMessageFromReplica, the primary's side: every vote it proposes carries the cookie
/// its `CanBecomePrimary` gave (the re-proposal, a batch of requests, a heartbeat), as its
/// Prepare does, so that the peers' `AcceptMessageFromReplica` sees it on each. (Request votes
/// and heartbeats carried an empty cookie: found by this test and `tests/catalogue.rs`.)
#[test]
fn every_vote_of_a_primary_carries_its_primary_cookie() {
    let (mut lone, _) = Lone::new(&["1", "2", "3"]);
    let cookie = Bytes::from_static(b"the primary cookie of 1");
    lone.app.primary_cookie = cookie.clone();
    lone.step(Input::AttemptPromotion);
    let at = lone.r.position();
    let out = lone.status("2", at, 0);
    let prepare = sent(&out, MsgKind::Prepare).pop().expect("a Prepare");
    assert_eq!(prepare.body, Body::Prepare(cookie.clone()));
    let ballot = lone.r.max_ballot();
    let ours = (*lone.r.accepted).clone();
    let mut votes = sent(&lone.peer("2", at.0, ballot, Body::PrepareAccepted(Box::new(ours))), MsgKind::Vote);
    let reproposal = votes[0].header.decree;
    lone.peer("2", reproposal, ballot, Body::VoteAccepted);
    let mut out = Vec::new();
    lone.r.submit(lone.now, Bytes::from_static(b"x"), 1, false, &mut out).expect("the primary takes it");
    let request = sent(&lone.settle(out), MsgKind::Vote).pop().expect("a request vote");
    votes.push(request.clone());
    lone.peer("2", request.header.decree, ballot, Body::VoteAccepted);
    lone.now += CoreConfig::default().heartbeat_interval;
    votes.extend(sent(&lone.step(Input::Tick), MsgKind::Vote));
    assert_eq!(votes.len(), 3, "the re-proposal, the request's vote, a heartbeat");
    for v in votes {
        assert_eq!(v.as_vote().expect("a vote").cookie, cookie, "the vote at {}", v.header.decree);
    }
}

/// TestReadNextMessage, at the core: a peer's log that ends early, starts out of sequence, or
/// holds a record refused on sight ends learning where it goes wrong; the replica keeps what
/// came before and looks for the ring again (a new StatusQuery). The stream's own failures (a
/// partial message, a bad checksum, an unknown message id) end it at the learn client:
/// `runtime/learn.rs::fetch_votes_stops_at_the_first_bad_record`.
#[test]
fn test_read_next_message() {
    let (mut lone, _) = Lone::new(&["1", "2", "3"]);
    let b = Ballot::new(1, id("2"));
    let none = Bytes::new();
    let log: Vec<Arc<Message>> =
        (0..=5).map(|d| Arc::new(Message::new(Header::new(Version::V6, id("2"), d, 1, b), vote(&[b"x"], &none)))).collect();
    let mut refused = (*log[0]).clone();
    refused.body = vote(&[b""], &none); // an empty request
    let cases: [(&str, Vec<Arc<Message>>, u64); 4] = [
        ("nothing", Vec::new(), 0),
        ("a stream out of sequence", log[2..].to_vec(), 0),
        ("a record refused on sight", vec![Arc::new(refused)], 0),
        ("a stream cut short", log[..2].to_vec(), 1),
    ];
    for (what, records, reached) in cases {
        let out = lone.status("2", (5, b), 0);
        assert!(
            out.iter().any(|a| matches!(a, Action::FetchVotes { from, decree } if *from == id("2") && *decree == lone.r.accepted().0)),
            "{what}: peer 2 is ahead and logs our decree: fetch its votes"
        );
        let out = lone.step(Input::Learned { from: id("2"), records });
        assert_eq!(lone.r.role(), Role::Initializing, "{what}");
        assert_eq!(sent(&out, MsgKind::StatusQuery).len(), 1, "{what}: a new status round");
        assert_eq!(lone.r.accepted().0, reached, "{what}: kept what came before");
    }
    lone.status("2", (5, b), 0);
    lone.step(Input::Learned { from: id("2"), records: log[1..].to_vec() });
    assert_eq!((lone.r.accepted(), lone.r.next_execute()), ((5, b), 5), "a good stream is learned to its end");
}

/// TestCheckpointing, TestCheckpointingInPrimary: a secondary whose log rolled saves a
/// checkpoint of the decree before the new log once the vote after it is accepted; while it
/// saves it accepts and answers votes but does not stand for election (not even asking
/// `CanBecomePrimary`), and once saved it stands. A primary whose log rolled asks for status
/// and copies the checkpoint a secondary advertises.
#[test]
fn test_checkpointing() {
    let (mut lone, _) = Lone::new(&["1", "2", "3"]);
    lone.follow();
    let b = Ballot::new(1, id("2"));
    let none = Bytes::new();
    for d in 0..=2 {
        lone.peer("2", d, b, vote(&[b"x"], &none));
    }
    let out = lone.step(Input::LogRolled { first_decree: 2 });
    let cp = saved(&out).expect("a checkpoint");
    assert_eq!((cp.decree, cp.next_vote.header.decree), (1, 2), "of the decree before the new log, once it executed");
    let out = lone.peer("2", 3, b, vote(&[b"y"], &none));
    assert_eq!(sent(&out, MsgKind::VoteAccepted).len(), 1, "votes are answered while it saves");

    let asked = lone.app.asked_primary;
    lone.step(Input::AttemptPromotion);
    let out = lone.step(Input::Tick);
    assert_eq!(sent(&out, MsgKind::StatusQuery).len(), 1);
    let out = lone.status("2", (3, b), 0);
    assert_eq!(lone.r.role(), Role::Secondary, "no election while saving");
    assert!(sent(&out, MsgKind::Prepare).is_empty());
    assert_eq!(lone.app.asked_primary, asked, "not even asked");

    lone.step(Input::CheckpointSaved { decree: 1, size: 100, min_decree_in_log: 2, copied: false });
    lone.now += CoreConfig::default().heartbeat_interval;
    lone.step(Input::Tick);
    lone.status("2", (3, b), 0);
    assert_eq!(lone.r.role(), Role::Preparing, "saved, it stands after a heartbeat interval");

    // The primary's side.
    let (mut lone, _) = Lone::new(&["1", "2", "3"]);
    let ballot = lone.elect();
    let mut out = Vec::new();
    lone.r.submit(lone.now, Bytes::from_static(b"x"), 1, false, &mut out).expect("the primary takes it");
    let proposed = sent(&lone.settle(out), MsgKind::Vote).pop().expect("proposed");
    lone.peer("2", proposed.header.decree, ballot, Body::VoteAccepted);
    let first = lone.r.accepted().0 + 1;
    assert!(first > 1, "a roll past the checkpoint (none yet) and the decree after it");
    let out = lone.step(Input::LogRolled { first_decree: first });
    assert!(saved(&out).is_none(), "a primary of several members copies instead of saving");
    let out = lone.step(Input::Tick);
    assert_eq!(sent(&out, MsgKind::StatusQuery).len(), 1, "it asks who has a checkpoint");
    let (query_decree, query_ballot) = lone.r.position();
    let advert = StatusBody {
        query_decree,
        query_ballot,
        last_received_ago_ms: 0,
        min_decree_in_log: 0,
        checkpointed_decree: first - 1,
        checkpoint_size: 4096,
        max_ballot: lone.r.max_ballot(),
        state: Role::Secondary.status_code(),
    };
    let out = lone.peer("2", query_decree, query_ballot, Body::StatusResponse(advert));
    let fetch = out.iter().find_map(|a| match a {
        Action::FetchCheckpoint { from, decree, size, load } => Some((*from, *decree, *size, *load)),
        _ => None,
    });
    assert_eq!(fetch, Some((id("2"), first - 1, 4096, false)), "copied as its own, not loaded");
}

/// TestSingleReplica: a one-member ring elects itself without a message and executes the
/// requests submitted to it, in order, each with its cookie.
#[test]
fn test_single_replica() {
    let (mut lone, out) = Lone::new(&["1"]);
    assert!(lone.r.is_primary(), "elected at start: {:?}", lone.r.role());
    assert_eq!(notified(&out), [true]);
    assert_eq!(lone.app.asked_primary, 1);
    assert!(!out.iter().any(|a| matches!(a, Action::Send { to: Dest::One(_), .. })), "no message to anyone");
    let mut runs = Vec::new();
    for cookie in 0..10u64 {
        let mut out = Vec::new();
        let request = Bytes::from(format!("request {cookie}"));
        lone.r.submit(lone.now, request, cookie, false, &mut out).expect("the primary takes it");
        runs.extend(executed(&lone.settle(out)));
    }
    runs.extend(executed(&lone.step(Input::Tick)));
    let requests: Vec<(Bytes, Cookie)> =
        runs.iter().flat_map(|(_, reqs, cookies)| reqs.iter().cloned().zip(cookies.iter().copied())).collect();
    let expected: Vec<(Bytes, Cookie)> = (0..10u64).map(|c| (Bytes::from(format!("request {c}")), c)).collect();
    assert_eq!(requests, expected);
    assert!(runs.windows(2).all(|w| w[0].0 + 1 == w[1].0), "decrees in order, none skipped");
}

/// TestNoChanges: reconfiguring to the same members raises the configuration number and
/// forces a new election at a higher ballot; the ring then goes on (and, TestAddNewReplica
/// as primary and as secondary, every member follows the change: the issuing primary and the
/// secondaries all end in configuration + 1 with a primary elected there).
#[test]
fn test_no_changes() {
    for cfg in [CoreConfig::default(), CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() }] {
        let mut ring = Ring::with(cfg);
        ring.converge(0, b"before");
        let before = ring.r(0).max_ballot();
        ring.change_configuration(0);
        ring.run();
        ring.advance(30 * SEC);
        for i in 0..3 {
            let r = ring.r(i);
            assert_eq!((r.configuration().number, r.paxos_configuration().number), (2, 2), "node {i} switched");
            assert_eq!(r.configuration().members, config(&["1", "2", "3"]).members);
        }
        let primaries: Vec<usize> = (0..3).filter(|&i| ring.r(i).is_primary()).collect();
        assert_eq!(primaries.len(), 1, "one primary in configuration 2");
        assert!(ring.r(primaries[0]).max_ballot() > before, "elected anew, at a higher ballot");
        ring.converge(primaries[0], b"after");
    }
}

/// TestRemoveReplica: a primary removes a secondary; the removed one follows the decision out
/// and is inactive, the others elect and go on without it, and it stays inactive when it
/// restarts from its log (TestConfigChangesDuringRestore's "leaving").
#[test]
fn test_remove_replica() {
    for cfg in [CoreConfig::default(), CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() }] {
        let mut ring = Ring::with(cfg);
        ring.converge(0, b"before");
        let (now, mut out) = (ring.now, Vec::new());
        ring.r_mut(0).change_configuration(now, config(&["1", "2"]).members, 9, &mut out).expect("the primary reconfigures");
        ring.apply(0, out);
        ring.run();
        ring.advance(30 * SEC);
        for i in 0..3 {
            assert_eq!(ring.r(i).paxos_configuration().number, 2, "node {i} switched");
        }
        assert_eq!(ring.r(2).role(), Role::Inactive, "the removed member is inactive");
        let p = (0..2).find(|&i| ring.r(i).is_primary()).expect("the remaining two elect a primary");
        let executed_before = ring.history(2).len();
        ring.submit(p, b"without node 3");
        ring.run();
        ring.advance(5 * SEC);
        assert!(ring.history(1 - p).iter().any(|(_, (reqs, _))| reqs.iter().any(|r| r == "without node 3")));
        assert_eq!(ring.history(2).len(), executed_before, "the removed member executes nothing more");
        ring.restart(2);
        assert_eq!((ring.r(2).role(), ring.r(2).configuration().number), (Role::Inactive, 2), "restored inactive");
    }
}

/// The sets the original tries against a bootstrapped replica: one missing, an id changed,
/// one extra, and the replica itself missing.
const WRONG_SETS: [&[&str]; 4] = [&["1", "2"], &["1", "2", "4"], &["1", "2", "3", "4"], &["2", "3"]];

/// Each wrong set is ignored as a message and gets `expected` from the API; nothing changes.
fn try_bootstrap_again(lone: &mut Lone, expected: BootstrapError) {
    let before = (lone.r.role(), lone.r.configuration().clone(), lone.r.accepted());
    for set in WRONG_SETS {
        let out = lone.bootstrap_message(set);
        assert!(out.is_empty(), "{set:?} by message is ignored: {out:?}");
        assert_eq!(lone.bootstrap_api(set).0, Err(expected), "{set:?} by the API");
        assert_eq!((lone.r.role(), lone.r.configuration().clone(), lone.r.accepted()), before, "{set:?} changed nothing");
    }
}

/// `PrepareAndPassVote`: peer 2 answers the status round, prepares decree 1 at (1, "2") and
/// passes a vote there; the replica promises and accepts.
fn prepare_and_pass_vote(lone: &mut Lone) -> Ballot {
    let b = Ballot::new(1, id("2"));
    lone.status("2", (1, Ballot::EMPTY), 0);
    let out = lone.peer("2", 1, b, Body::Prepare(Bytes::new()));
    assert_eq!(sent(&out, MsgKind::PrepareAccepted).len(), 1);
    let out = lone.peer("2", 1, b, vote(&[b"first"], &Bytes::new()));
    assert_eq!(sent(&out, MsgKind::VoteAccepted).len(), 1);
    assert_eq!((lone.r.role(), lone.r.accepted()), (Role::Secondary, (1, b)));
    b
}

/// The bootstrap checkpoint's save completes.
fn bootstrap_saved(lone: &mut Lone, out: &[Action]) -> Checkpoint {
    let cp = saved(out).expect("the bootstrap checkpoint");
    assert!(!cp.state_saved && cp.decree == 0 && cp.config.number == 1);
    lone.step(Input::CheckpointSaved { decree: 0, size: 512, min_decree_in_log: 1, copied: false });
    cp
}

/// BootstrapByMessage: a replica with no configuration is inactive with an empty set; a
/// Bootstrap message from a member of the set makes it Initializing at decree 1 in
/// configuration 1. Then other sets are ignored by message and fail through the API; after a
/// Prepare and a vote it is a secondary, and bootstrapping again says it already is.
#[test]
fn bootstrap_by_message() {
    let (mut lone, _) = Lone::unbootstrapped();
    assert_eq!(lone.r.role(), Role::Inactive);
    assert!(lone.r.configuration().members.nodes.is_empty() && lone.r.configuration().number == 0);
    let out = lone.bootstrap_message(&["1", "2", "3"]);
    bootstrap_saved(&mut lone, &out);
    assert_eq!((lone.r.role(), lone.r.accepted().0, lone.r.configuration().number), (Role::Initializing, 1, 1));
    assert_eq!(lone.r.configuration().members, config(&["1", "2", "3"]).members);
    assert_eq!(sent(&out, MsgKind::StatusQuery).len(), 1, "it looks for the ring");
    try_bootstrap_again(&mut lone, BootstrapError::Failed);
    prepare_and_pass_vote(&mut lone);
    assert!(lone.r.is_bootstrapped());
    try_bootstrap_again(&mut lone, BootstrapError::AlreadyBootstrapped);
    assert_eq!(lone.bootstrap_api(&["1", "2", "3"]).0, Err(BootstrapError::AlreadyBootstrapped));
}

/// BootstrapByAPI: the same through `Bootstrap()`, which the runtime holds until the replica is
/// bootstrapped (`is_bootstrapped`): not on the set alone, but once the first vote passes. The
/// set goes to the other members as Bootstrap messages until then.
#[test]
fn bootstrap_by_api() {
    let (mut lone, _) = Lone::unbootstrapped();
    let (result, out) = lone.bootstrap_api(&["1", "2", "3"]);
    assert_eq!(result, Ok(()));
    bootstrap_saved(&mut lone, &out);
    assert!(out.iter().any(|a| matches!(a, Action::ConfigurationChanged { config, .. } if config.number == 1)));
    assert_eq!((lone.r.role(), lone.r.accepted().0), (Role::Initializing, 1));
    assert!(!lone.r.is_bootstrapped(), "not until a vote passes");
    let out = lone.step(Input::Tick);
    let told: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Send { to: Dest::One(to), msg, .. } if msg.kind() == MsgKind::Bootstrap => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(told, [id("2"), id("3")], "the set goes to the other members");
    try_bootstrap_again(&mut lone, BootstrapError::Failed);
    prepare_and_pass_vote(&mut lone);
    assert!(lone.r.is_bootstrapped());
    try_bootstrap_again(&mut lone, BootstrapError::AlreadyBootstrapped);
}

/// BootstrapByCheckpoint: a replica started without a configuration on another's files (the
/// bootstrap checkpoint and the log after it) is bootstrapped already: Initializing at decree
/// 1 of configuration 1 with the promise it logged, and every bootstrap attempt says so.
#[test]
fn bootstrap_by_checkpoint() {
    let (mut first, _) = Lone::unbootstrapped();
    let out = first.bootstrap_message(&["1", "2", "3"]);
    let mut log = persisted(&out, MsgKind::Prepare);
    let cp = bootstrap_saved(&mut first, &out);
    let ballot = Ballot::new(1, id("2"));
    let b = ballot;
    first.status("2", (1, Ballot::EMPTY), 0);
    for body in [Body::Prepare(Bytes::new()), vote(&[b"first"], &Bytes::new())] {
        let out = first.peer("2", 1, b, body);
        log.extend(out.iter().filter_map(|a| match a {
            Action::Persist { record, .. } => Some(record.clone()),
            _ => None,
        }));
    }
    assert_eq!(log.len(), 2, "the promise and the vote are logged");

    let mut r = Replica::new(CoreConfig::default(), id("1"), ConfigInfo::default(), 2);
    r.restore_checkpoint(&cp, 512);
    let mut out = Vec::new();
    for record in &log {
        r.replay(record, &mut out).expect("the log replays");
    }
    let (mut second, _) = Lone::start(r);
    assert_eq!((second.r.role(), second.r.accepted(), second.r.configuration().number), (Role::Initializing, (1, ballot), 1));
    assert_eq!(second.r.max_ballot(), ballot);
    try_bootstrap_again(&mut second, BootstrapError::AlreadyBootstrapped);
    assert_eq!(second.bootstrap_api(&["1", "2", "3"]).0, Err(BootstrapError::AlreadyBootstrapped));
}

/// TestReplicaJoinClusterLater: a replica with no configuration that gets a vote of
/// configuration 1 asks for it (JoinRequest); the Join that answers makes it fetch the
/// sender's checkpoint, not its votes (with no configuration it has no log to extend), and
/// the checkpoint brings it into configuration 1.
#[test]
fn test_replica_join_cluster_later() {
    let (mut lone, _) = Lone::unbootstrapped();
    let b = Ballot::new(1, id("2"));
    let out = lone.peer_in("2", 1, 2, b, vote(&[b"later"], &Bytes::new()));
    let request = sent(&out, MsgKind::JoinRequest).pop().expect("a JoinRequest");
    assert_eq!(request.header.config, 1);
    assert!(persisted(&out, MsgKind::Vote).is_empty() && lone.r.role() == Role::Inactive, "the vote itself is not taken");

    let join = JoinBody { learn_port: 2, min_decree_in_log: 0, checkpointed_decree: 0, checkpoint_size: 512 };
    let out = lone.peer_in("2", 1, 1, Ballot::EMPTY, Body::Join(join));
    assert!(out.iter().all(|a| !matches!(a, Action::FetchVotes { .. })), "no votes to learn in configuration 0");
    let fetch = out.iter().find_map(|a| match a {
        Action::FetchCheckpoint { from, decree, size, load } => Some((*from, *decree, *size, *load)),
        _ => None,
    });
    assert_eq!(fetch, Some((id("2"), 0, 512, true)));

    // Peer 2's bootstrap checkpoint arrives: the replica loads it and looks for the ring.
    let members = config(&["1", "2", "3"]).members;
    let next_vote = placeholder(Version::V6, 1, 1);
    let cp = Checkpoint {
        decree: 0,
        next_vote,
        max_ballot: Ballot::EMPTY,
        config: ConfigInfo { number: 1, initial_decree: 1, members },
        state_saved: false,
    };
    let out = lone.step(Input::CheckpointFetched(Some((cp, 512))));
    assert!(out.iter().any(|a| matches!(a, Action::LoadCheckpoint(_))));
    assert_eq!((lone.r.role(), lone.r.paxos_configuration().number), (Role::Initializing, 1));
}

/// The requests each vote `out` proposes carries.
fn proposed_requests(out: &[Action]) -> Vec<Vec<Bytes>> {
    sent(out, MsgKind::Vote).iter().map(|v| v.as_vote().expect("a vote").requests.clone()).collect()
}

/// §3.7, `ReplicateRequestExclusiveVote` (not the last decree): the request gets a vote of
/// its own, with nothing batched before or after it; plain requests batch behind the vote in
/// flight as before.
#[test]
fn replicate_request_exclusive_vote() {
    let (mut lone, _) = Lone::new(&["1", "2", "3"]);
    let ballot = lone.elect();
    let mut out = Vec::new();
    for (cookie, (request, exclusive)) in
        [(b"a" as &'static [u8], false), (b"b", false), (b"c", true), (b"d", false), (b"e", false)].into_iter().enumerate()
    {
        lone.r.submit(lone.now, Bytes::from_static(request), cookie as u64, exclusive, &mut out).expect("taken");
    }
    let mut votes = proposed_requests(&lone.settle(out));
    while let Some(decree) = lone.r.outstanding.front().map(|o| o.vote.header.decree) {
        votes.extend(proposed_requests(&lone.peer("2", decree, ballot, Body::VoteAccepted)));
    }
    let expected: Vec<Vec<Bytes>> =
        [&[&b"a"[..]][..], &[b"b"], &[b"c"], &[b"d", b"e"]].iter().map(|v| v.iter().map(|r| Bytes::copy_from_slice(r)).collect()).collect();
    assert_eq!(votes, expected, "a alone (in flight), b queued behind it, c on its own, d and e together");
}

/// §3.7, `RelinquishPrimary`: the primary proposes a last, empty vote marked relinquish and
/// proposes nothing after it; once it is chosen the replica shuts down (`ShutDown`). A
/// secondary that accepts a relinquish vote looks for a new primary at once rather than after
/// the election delay.
#[test]
fn relinquish_primary() {
    let (mut lone, _) = Lone::new(&["1", "2", "3"]);
    let ballot = lone.elect();
    let out = lone.step(Input::RelinquishPrimary);
    let last = sent(&out, MsgKind::Vote).pop().expect("the relinquish vote");
    let body = last.as_vote().expect("a vote");
    assert!(body.relinquish && body.requests.is_empty());
    let mut more = Vec::new();
    lone.r.submit(lone.now, Bytes::from_static(b"late"), 9, false, &mut more).expect("taken");
    assert!(sent(&lone.settle(more), MsgKind::Vote).is_empty(), "nothing is proposed after it");
    let out = lone.peer("2", last.header.decree, ballot, Body::VoteAccepted);
    assert!(out.iter().any(|a| matches!(a, Action::ShutDown)), "chosen: the replica shuts down");
    let abort = out.iter().any(|a| matches!(a, Action::Abort { cookie: 9, reason: AbortReason::ShuttingDown, .. }));
    assert!(abort, "the request taken after it comes back");

    let (mut lone, _) = Lone::new(&["1", "2", "3"]);
    lone.follow();
    let b = Ballot::new(1, id("2"));
    lone.peer("2", 0, b, vote(&[b"x"], &Bytes::new()));
    let relinquish = Body::Vote(VoteBody { relinquish: true, ..Default::default() });
    let out = lone.peer("2", 1, b, relinquish);
    assert_eq!(sent(&out, MsgKind::VoteAccepted).len(), 1, "accepted and answered");
    assert_eq!(lone.r.next_wakeup(), 0, "due at once");
    let out = lone.step(Input::Tick);
    assert_eq!((lone.r.role(), sent(&out, MsgKind::StatusQuery).len()), (Role::Initializing, 1), "it looks for a new primary");
}

/// §3.7 and docs/spec/behavior.md §2.10, the "outcome unknown" abort: a primary outbid while its vote is
/// in flight returns the vote's cookies (`NotPrimary`) and says it is no longer primary; the
/// new primary, told of the vote by the old one's promise, re-proposes it, and it executes
/// everywhere, on the old primary too (without its cookie, which already came back).
#[test]
fn an_aborted_request_may_still_execute() {
    let (mut lone, _) = Lone::new(&["1", "2", "3"]);
    lone.elect();
    let mut out = Vec::new();
    lone.r.submit(lone.now, Bytes::from_static(b"in flight"), 7, false, &mut out).expect("taken");
    let mine = sent(&lone.settle(out), MsgKind::Vote).pop().expect("proposed");
    let d = mine.header.decree;
    let higher = Ballot::new(lone.r.max_ballot().id + 1, id("2"));
    let out = lone.peer("2", d, higher, Body::Prepare(Bytes::new()));
    let aborted: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Abort { cookie, reason, .. } => Some((*cookie, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(aborted, [(7, AbortReason::NotPrimary)]);
    assert_eq!(notified(&out), [false]);
    let promise = sent(&out, MsgKind::PrepareAccepted).pop().expect("promised");
    let Body::PrepareAccepted(reported) = &promise.body else { unreachable!() };
    assert_eq!(reported.as_vote().expect("a vote").requests, [Bytes::from_static(b"in flight")], "the promise reports it");
    // Peer 2 re-proposes it at d, then proposes d + 1: d is chosen and executes here.
    lone.peer("2", d, higher, vote(&[b"in flight"], &Bytes::new()));
    let out = lone.peer("2", d + 1, higher, vote(&[b"next"], &Bytes::new()));
    assert_eq!(executed(&out), [(d, vec![Bytes::from_static(b"in flight")], Vec::new())], "executed, without the cookie");
}

/// §3.7, `RelinquishPrimary` on a ring, under the original's rules and pipelined: once the
/// relinquish vote is chosen the other two elect a new primary within a second, well inside
/// the election delay (10 s) they would otherwise wait, and the ring goes on without the
/// primary that left. (They waited the whole delay: the flag was cleared as it was set.)
#[test]
fn a_relinquished_ring_elects_at_once() {
    for cfg in [CoreConfig::default(), CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() }] {
        let mut ring = Ring::with(cfg);
        ring.converge(0, b"before");
        ring.step(0, Input::RelinquishPrimary);
        ring.run();
        ring.crash(0); // its ShutDown
        ring.advance(SEC);
        let p = (1..3).find(|&i| ring.r(i).is_primary()).expect("a new primary within a second");
        ring.submit(p, b"after");
        ring.run();
        assert!(ring.executed_anywhere(b"after"));
    }
}

/// TestPrimaryChangeDuringReconfiguration (a): the replica starts a change as primary, loses
/// the ring before its vote is chosen, and another member finishes it. The change's cookie
/// comes back aborted (`AbortChangeConfiguration`) once the replica learns its configuration
/// is defunct, and it still ends in the new configuration. Cases (b) and (c) are
/// `directed.rs::case_a_*` and `::case_b_*`.
#[test]
fn test_primary_change_during_reconfiguration() {
    for cfg in [CoreConfig::default(), CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() }] {
        let mut ring = Ring::with(cfg);
        ring.converge(0, b"before");
        for j in [1, 2] {
            ring.cut(j, 0, None); // node 0 hears no acceptance: it never sees its change chosen
        }
        let (now, mut out) = (ring.now, Vec::new());
        ring.r_mut(0).change_configuration(now, config(&["1", "2", "3"]).members, 9, &mut out).expect("the primary reconfigures");
        ring.apply(0, out);
        ring.run();
        for j in [1, 2] {
            ring.cut(0, j, None);
        }
        ring.step(1, Input::AttemptPromotion);
        ring.step(1, Input::Tick);
        ring.run();
        ring.advance(3 * SEC);
        assert!((1..3).all(|i| ring.r(i).paxos_configuration().number == 2), "node 1 finished the change");
        assert_eq!(ring.r(0).paxos_configuration().number, 1);

        // Told its configuration is defunct, node 0 gives the change's cookie back.
        let r0 = ring.r(0);
        let defunct = Message::new(Header::new(r0.version(), id("2"), 0, 1, Ballot::EMPTY), Body::DefunctConfiguration);
        let (now, mut out) = (ring.now, Vec::new());
        ring.r_mut(0).step(now, Input::Message { from: id("2"), msg: Arc::new(defunct) }, &mut crate::paxos::AcceptAll, &mut out);
        let aborted: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::Abort { cookie, config: true, .. } => Some(*cookie),
                _ => None,
            })
            .collect();
        assert_eq!(aborted, [9], "AbortChangeConfiguration on the replica that started it");
        assert_eq!(notified(&out), [false]);
        ring.apply(0, out);
        ring.heal();
        ring.advance(5 * SEC);
        assert_eq!(ring.r(0).paxos_configuration().number, 2, "and it ends in the new configuration");
    }
}
