//! Directed tests of hostile input: forged or implausible messages, log records and checkpoints
//! meet a refusal, never a panic, and the ring carries on (issue 9, findings 1 and 5).
//!
//! Most run on the three-replica harness of `directed.rs`, under the original's rules
//! (version 6) and pipelined (version 7, window 16); the rest on a lone replica fed by hand.

use super::directed::{id, Ring};
use super::tests::config;
use super::validate::{MAX_BALLOT_ID, MAX_BALLOT_JUMP};
use super::*;
use crate::format::{CONFIGURATION_LIMIT, DECREE_LIMIT};
use crate::paxos::{AcceptAll, SEC};

/// The ballot of finding 1: no ballot is above it, so a replica that promised it can never
/// stand for election again.
fn unbeatable() -> Ballot {
    Ballot::new(u32::MAX, MemberId::new(&"9".repeat(MemberId::MAX_LEN)).expect("63 nines"))
}

fn rings() -> [Ring; 2] {
    [Ring::with(CoreConfig::default()), Ring::with(CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() })]
}

/// A Prepare that node `to` would take at face value: from member `sender`, at the decree a
/// candidate would name (our accepted one before version 7, our first unexecuted one from 7).
fn prepare_for(ring: &Ring, to: usize, sender: MemberId, ballot: Ballot) -> Arc<Message> {
    let r = ring.r(to);
    let decree = if r.version.is_pipelined() { r.next_execute() } else { r.accepted().0 };
    Arc::new(Message::new(Header::new(r.version, sender, decree, 1, ballot), Body::Prepare(Bytes::new())))
}

/// Delivers `msg` to node `to` as if member `from` had sent it, and runs the network dry.
/// Returns what node `to` did about it.
fn inject(ring: &mut Ring, to: usize, from: MemberId, msg: Arc<Message>) -> Vec<Action> {
    let mut out = Vec::new();
    let now = ring.now;
    ring.r_mut(to).step(now, Input::Message { from, msg }, &mut AcceptAll, &mut out);
    ring.apply(to, out.clone());
    ring.run();
    out
}

/// The reasons of the rejections among `out`.
fn rejections(out: &[Action]) -> Vec<Rejection> {
    out.iter()
        .filter_map(|a| match a {
            Action::Rejected { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn msg(r: &Replica, sender: MemberId, decree: u64, ballot: Ballot, body: Body) -> Arc<Message> {
    Arc::new(Message::new(Header::new(r.version, sender, decree, r.paxos_configuration().number, ballot), body))
}

fn no_record_holds(ring: &Ring, i: usize, id: u32) -> bool {
    ring.procs[i].log.iter().all(|r| r.header.ballot.id != id)
}

/// Finding 1: the Prepare is neither adopted nor logged; the primary keeps the ring, the
/// target follows it, and the target can still be elected.
#[test]
fn a_ballot_that_cannot_be_outbid_is_refused_not_adopted() {
    for mut ring in rings() {
        ring.converge(0, b"before");
        let promised = ring.r(1).max_ballot();
        let evil = prepare_for(&ring, 1, id(2), unbeatable());
        assert_eq!(rejections(&inject(&mut ring, 1, id(2), evil)), [Rejection::Ballot], "refused and reported");
        assert_eq!(ring.r(1).max_ballot(), promised, "not adopted");
        assert!(no_record_holds(&ring, 1, u32::MAX), "not logged");
        ring.converge(0, b"the primary carries on");
        ring.converge(1, b"the target is elected");
        assert!((0..3).all(|i| ring.r(i).max_ballot().id < u32::MAX));
    }
}

/// Finding 1 after a restart: a log written by the old code holds the promise as a Prepare
/// record. Replay skips it, and the replica can be elected.
#[test]
fn a_logged_ballot_that_cannot_be_outbid_is_skipped_at_replay() {
    for mut ring in rings() {
        ring.converge(0, b"before");
        let evil = prepare_for(&ring, 1, id(2), unbeatable());
        ring.procs[1].log.push(evil);
        let mut r = Replica::new(ring.r(1).cfg.clone(), id(1), super::tests::config(&["1", "2", "3"]), 9);
        let mut out = Vec::new();
        for record in &ring.procs[1].log {
            r.replay(record, &mut out).expect("the log replays");
        }
        r.start(ring.now, &mut AcceptAll, &mut out);
        assert!(rejections(&out).contains(&Rejection::Ballot), "the skipped record is reported at start");
        ring.restart(1);
        assert!(ring.r(1).max_ballot().id < u32::MAX, "the promise is not restored");
        ring.converge(1, b"the restarted replica is elected");
        ring.converge(0, b"and follows another");
    }
}

/// Finding 1 through a checkpoint written by the old code: its max ballot is ignored.
#[test]
fn a_checkpointed_ballot_that_cannot_be_outbid_is_ignored() {
    let ids = ["1", "2", "3"];
    let mut r = Replica::new(CoreConfig::default(), super::tests::id("1"), config(&ids), 7);
    let next_vote = placeholder(Version::V6, 5, 1);
    let cp = Checkpoint { decree: 4, next_vote, max_ballot: unbeatable(), config: config(&ids), state_saved: true };
    r.restore_checkpoint(&cp, 0);
    assert!(r.max_ballot().id < u32::MAX);
    let mut out = Vec::new();
    r.start(0, &mut AcceptAll, &mut out);
    assert_eq!(rejections(&out), [Rejection::Ballot], "reported at start");
    r.step(SEC, Input::AttemptPromotion, &mut AcceptAll, &mut out);
    r.step(SEC, Input::Tick, &mut AcceptAll, &mut out);
}

/// Finding 1's spread: a NotAccepted naming the ballot does not make the primary adopt it.
#[test]
fn a_not_accepted_with_a_ballot_that_cannot_be_outbid_is_refused() {
    for mut ring in rings() {
        ring.converge(0, b"before");
        let r = ring.r(0);
        let msg = Message::new(Header::new(r.version, id(1), r.accepted().0, 1, unbeatable()), Body::NotAccepted);
        assert_eq!(rejections(&inject(&mut ring, 0, id(1), Arc::new(msg))), [Rejection::Ballot]);
        assert!(ring.r(0).max_ballot().id < u32::MAX, "not adopted");
        assert_eq!(ring.r(0).role(), Role::Primary, "the primary stays");
        ring.converge(2, b"another is elected");
    }
}

/// Finding 5: a DefunctConfiguration from an id outside the configuration does not make the
/// primary step down.
#[test]
fn a_defunct_configuration_from_a_non_member_is_dropped() {
    for mut ring in rings() {
        ring.converge(0, b"before");
        let ballot = ring.r(0).max_ballot();
        let outsider = MemberId::new("7").expect("an id");
        let msg = Message::new(Header::new(ring.r(0).version, outsider, 0, 1, Ballot::EMPTY), Body::DefunctConfiguration);
        assert_eq!(rejections(&inject(&mut ring, 0, outsider, Arc::new(msg))), [Rejection::NotAMember]);
        // (Stepping down, it would be elected again at once, under a new ballot.)
        assert_eq!(ring.r(0).max_ballot(), ballot, "the primary did not step down");
        assert!(ring.r(0).is_primary());
    }
}

/// Every kind of implausible field is refused with its reason, and changes nothing.
#[test]
fn implausible_fields_are_refused_with_their_reason() {
    for mut ring in rings() {
        ring.converge(0, b"before");
        let r = ring.r(1);
        let (d, b, v) = (if r.version.is_pipelined() { r.next_execute() } else { r.accepted().0 }, r.max_ballot(), r.version);
        let jump = Ballot::new(r.ballot_mark() + MAX_BALLOT_JUMP + 1, id(2));
        let vote = |requests: Vec<Bytes>| Body::Vote(VoteBody { requests, ..Default::default() });
        let dup = MemberSet { nodes: vec![config(&["2"]).members.nodes[0].clone(); 2], cookie: Bytes::new() };
        let status = StatusBody {
            query_decree: 0,
            query_ballot: Ballot::EMPTY,
            last_received_ago_ms: 0,
            min_decree_in_log: 0,
            checkpointed_decree: 0,
            checkpoint_size: 0,
            max_ballot: Ballot::EMPTY,
            state: 9,
        };
        let mut newer = (*msg(r, id(2), d, b, Body::NotAccepted)).clone();
        newer.header.version = Version::new(v.get() + 1).unwrap_or(Version::V1);
        let cases: Vec<(Arc<Message>, Rejection)> = vec![
            (msg(r, id(2), DECREE_LIMIT, b, Body::NotAccepted), Rejection::Decree),
            (msg(r, id(2), d, jump, Body::Prepare(Bytes::new())), Rejection::Ballot),
            (msg(r, id(2), d, b, Body::FetchVotes), Rejection::Malformed),
            (msg(r, id(2), d, Ballot::EMPTY, vote(vec![Bytes::from_static(b"x")])), Rejection::Malformed),
            (msg(r, id(2), d, Ballot::new(b.id + 1, id(2)), vote(vec![Bytes::new()])), Rejection::Malformed),
            (msg(r, id(2), d, Ballot::new(b.id + 1, id(0)), Body::Prepare(Bytes::new())), Rejection::Malformed),
            (msg(r, id(2), d, b, Body::StatusResponse(status)), Rejection::Malformed),
            (msg(r, id(2), 0, Ballot::EMPTY, Body::Bootstrap(dup)), Rejection::Malformed),
            (msg(r, id(2), d, b, Body::PrepareAccepted(Box::new((*msg(r, id(2), d, b, Body::NotAccepted)).clone()))), Rejection::Malformed),
            (Arc::new(newer), Rejection::Version),
        ];
        let mut config_past = (*msg(r, id(2), d, b, Body::NotAccepted)).clone();
        config_past.header.config = CONFIGURATION_LIMIT;
        let cases = cases.into_iter().chain([(Arc::new(config_past), Rejection::Configuration)]);
        for (m, reason) in cases {
            let (promised, seq) = (ring.r(1).max_ballot(), ring.r(1).persist_seq);
            let kind = m.kind();
            assert_eq!(rejections(&inject(&mut ring, 1, id(2), m)), [reason], "{kind:?} at {v}");
            assert_eq!((ring.r(1).max_ballot(), ring.r(1).persist_seq), (promised, seq), "{kind:?} changed nothing");
        }
        ring.converge(0, b"after");
    }
}

/// The jump cap's boundary: exactly `MAX_BALLOT_JUMP` above the mark is taken.
#[test]
fn a_ballot_at_the_jump_cap_is_taken() {
    for mut ring in rings() {
        ring.converge(0, b"before");
        let at_cap = Ballot::new(ring.r(1).ballot_mark() + MAX_BALLOT_JUMP, id(2));
        let prepare = prepare_for(&ring, 1, id(2), at_cap);
        assert!(rejections(&inject(&mut ring, 1, id(2), prepare)).is_empty());
        assert_eq!(ring.r(1).max_ballot(), at_cap, "promised");
        ring.converge(1, b"and outbid by the next candidate");
    }
}

/// Who may send what: the types that bypass the configuration checks have their own rules.
#[test]
fn each_message_type_has_its_senders() {
    for mut ring in rings() {
        ring.converge(0, b"before");
        let outsider = MemberId::new("7").expect("an id");
        let r = ring.r(1);
        let (v, c) = (r.version, r.paxos_configuration().number);
        let header = |sender, config| Header::new(v, sender, 0, config, Ballot::EMPTY);
        let query = |sender, config| Arc::new(Message::new(header(sender, config), Body::StatusQuery));
        // A status query of our configuration from outside it: refused. Of another: answered.
        assert_eq!(rejections(&inject(&mut ring, 1, outsider, query(outsider, c))), [Rejection::NotAMember]);
        let out = inject(&mut ring, 1, outsider, query(outsider, c + 1));
        assert!(out.iter().any(|a| matches!(a, Action::Send { msg, .. } if msg.kind() == MsgKind::StatusResponse)), "answered");
        // Configuration-governed types from outside the configuration, or claiming our own id.
        let vote = Body::Vote(VoteBody { requests: vec![Bytes::from_static(b"x")], ..Default::default() });
        let ballot = Ballot::new(ring.r(1).max_ballot().id + 1, outsider);
        let forged = Arc::new(Message::new(Header::new(v, outsider, ring.r(1).next_execute(), c, ballot), vote));
        assert_eq!(rejections(&inject(&mut ring, 1, outsider, forged)), [Rejection::NotAMember]);
        assert_eq!(rejections(&inject(&mut ring, 1, id(1), query(id(1), c))), [Rejection::NotAMember], "our own id");
        assert_eq!(rejections(&inject(&mut ring, 1, id(2), query(id(0), c))), [Rejection::NotAMember], "another's id");
        // A Bootstrap from a node its set does not name.
        let boot = Arc::new(Message::new(header(outsider, 0), Body::Bootstrap(config(&["1", "2", "3"]).members)));
        assert_eq!(rejections(&inject(&mut ring, 1, outsider, boot)), [Rejection::NotAMember]);
        ring.converge(0, b"after");
    }
}

/// A status query's ballot is its sender's position, adopted by nobody: it is answered however
/// far above ours it is (the sender may be a replica that took forged jumps, and must learn).
#[test]
fn a_status_query_is_answered_whatever_its_ballot() {
    let mut r = lone_v7();
    let far = Ballot::new(r.ballot_mark() + MAX_BALLOT_JUMP + 1, id(1));
    let query = msg(&r, id(1), 0, far, Body::StatusQuery);
    let out = feed(&mut r, id(1), query);
    assert!(rejections(&out).is_empty());
    assert!(out.iter().any(|a| matches!(a, Action::Send { msg, .. } if msg.kind() == MsgKind::StatusResponse)));
    assert!(r.ballot_mark() < far.id, "not seen");
}

/// A primary ignores a Join of a newer configuration from outside its own (it would step down
/// to learn from it); one from a member it still follows.
#[test]
fn a_primary_ignores_a_join_from_outside_its_configuration() {
    for mut ring in rings() {
        ring.converge(0, b"before");
        let version = ring.r(0).version;
        let join = |sender| {
            let body = Body::Join(crate::format::message::JoinBody {
                learn_port: 1,
                min_decree_in_log: 0,
                checkpointed_decree: 0,
                checkpoint_size: 0,
            });
            Arc::new(Message::new(Header::new(version, sender, 9, 2, Ballot::EMPTY), body))
        };
        let outsider = MemberId::new("7").expect("an id");
        let out = inject(&mut ring, 0, outsider, join(outsider));
        assert!(out.is_empty(), "ignored: {out:?}");
        assert!(ring.r(0).is_primary());
        let out = inject(&mut ring, 0, id(1), join(id(1)));
        assert!(out.iter().any(|a| matches!(a, Action::FetchVotes { .. } | Action::FetchCheckpoint { .. })), "learns from a member");
    }
}

/// A replica that promised the highest ballot anyone may use does not stand (it would need
/// one its peers refuse), and follows the others instead of panicking.
#[test]
fn a_replica_with_no_ballot_left_does_not_stand() {
    for mut ring in rings() {
        ring.converge(0, b"before");
        let top = Ballot::new(MAX_BALLOT_ID, id(2));
        let prepare = prepare_for(&ring, 1, id(2), top);
        ring.procs[1].log.push(prepare);
        ring.restart(1);
        assert_eq!(ring.r(1).max_ballot(), top, "a promise the jump cap never saw is kept");
        assert_eq!(ring.r(1).next_ballot(), None);
        for _ in 0..3 {
            ring.step(1, Input::AttemptPromotion);
            ring.advance(2 * SEC);
            assert_ne!(ring.r(1).role(), Role::Preparing);
            assert_ne!(ring.r(1).role(), Role::Primary);
        }
    }
}

/// A lone pipelined replica "1" of {1, 2, 3}, started.
fn lone_v7() -> Replica {
    let cfg = CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() };
    let mut r = Replica::new(cfg, id(0), config(&["1", "2", "3"]), 7);
    r.start(0, &mut AcceptAll, &mut Vec::new());
    r
}

fn feed(r: &mut Replica, from: MemberId, msg: Arc<Message>) -> Vec<Action> {
    let mut out = Vec::new();
    r.step(SEC, Input::Message { from, msg }, &mut AcceptAll, &mut out);
    out
}

/// A decision for a decree whose vote holds another value (the original, and this code
/// before, asserted) is refused, and the vote stays.
#[test]
fn a_decision_contradicting_the_vote_held_is_refused() {
    let mut r = lone_v7();
    r.become_secondary();
    let b = Ballot::new(1, id(1));
    let vote = Body::Vote(VoteBody { requests: vec![Bytes::from_static(b"x")], ..Default::default() });
    let m = msg(&r, id(1), 0, b, vote);
    feed(&mut r, id(1), m);
    assert!(r.pending.contains_key(&0));
    let m = msg(&r, id(1), 0, b, Body::ReconfigurationDecision);
    let out = feed(&mut r, id(1), m);
    assert!(rejections(&out).contains(&Rejection::Inconsistent));
    assert_eq!(r.paxos_configuration().number, 1, "no switch");
}

/// A crafted pipelined log whose decision names decrees the log never held is an error, not a
/// panic ("our log holds what we executed").
#[test]
fn a_crafted_pipelined_log_is_a_replay_error() {
    let cfg = CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() };
    let mut r = Replica::new(cfg, id(0), config(&["1", "2", "3"]), 7);
    let decision = Message::new(Header::new(Version::V7, id(1), 5, 1, Ballot::new(1, id(1))), Body::ReconfigurationDecision);
    let err = r.replay(&Arc::new(decision), &mut Vec::new()).expect_err("refused");
    assert_eq!((err.kind, err.decree), (MsgKind::ReconfigurationDecision, 5));
}

/// A peer's log is applied up to its first refused record, which is reported.
#[test]
fn learning_stops_at_the_first_refused_record() {
    let mut r = lone_v7();
    r.learn(id(1), &mut Vec::new());
    let b = Ballot::new(1, id(1));
    let vote = |d: u64, ballot: Ballot| {
        let mut m =
            (*msg(&r, id(1), d, ballot, Body::Vote(VoteBody { requests: vec![Bytes::from_static(b"x")], ..Default::default() }))).clone();
        m.header.sender = ballot.member;
        m.header.payload = d;
        Arc::new(m)
    };
    let records = vec![vote(0, b), vote(1, b), vote(2, unbeatable()), vote(3, b)];
    let mut out = Vec::new();
    r.step(SEC, Input::Learned { from: id(1), records }, &mut AcceptAll, &mut out);
    assert_eq!(rejections(&out), [Rejection::Ballot]);
    assert_eq!(r.next_execute(), 1, "decree 0 executed on the watermark of decree 1's vote");
    assert!(!r.pending.contains_key(&2) && !r.pending.contains_key(&3), "nothing after the refused record");
    assert!(r.max_ballot().id < u32::MAX);
}

/// Ballots far above ours shown by enough members (two of three: more than the members
/// outside a quorum) are the ring's: we follow them. One member showing them is refused.
#[test]
fn a_jump_enough_members_show_is_followed() {
    let mut r = lone_v7();
    r.become_secondary();
    let far = r.ballot_mark() + MAX_BALLOT_JUMP + 100;
    let not_accepted = |r: &Replica, from: usize| msg(r, id(from), 0, Ballot::new(far, id(from)), Body::NotAccepted);
    let m = not_accepted(&r, 1);
    assert_eq!(rejections(&feed(&mut r, id(1), m)), [Rejection::Ballot]);
    let m = not_accepted(&r, 1);
    assert_eq!(rejections(&feed(&mut r, id(1), m)), [Rejection::Ballot], "the same member again is not more evidence");
    let m = not_accepted(&r, 2);
    assert_eq!(rejections(&feed(&mut r, id(2), m)), [Rejection::Ballot]);
    assert_eq!(r.ballot_mark(), far, "two members showed it: now seen");
    let m = not_accepted(&r, 2);
    assert!(rejections(&feed(&mut r, id(2), m)).is_empty(), "taken");
    assert!(r.next_ballot().is_some_and(|b| b.id == far + 1));
}

/// A DefunctConfiguration is recorded at most two below our configuration, however high its
/// number (a forged one would stop our Joins, or have us refuse every configuration to it).
#[test]
fn a_defunct_configuration_is_recorded_at_most_two_below_ours() {
    let mut c = config(&["2", "3"]);
    c.number = 5;
    let mut r = Replica::new(CoreConfig::default(), id(0), c, 7);
    r.start(0, &mut AcceptAll, &mut Vec::new());
    assert_eq!(r.role(), Role::Inactive, "left out of configuration 5");
    let defunct =
        Arc::new(Message::new(Header::new(Version::V6, id(1), 0, CONFIGURATION_LIMIT - 1, Ballot::EMPTY), Body::DefunctConfiguration));
    let out = feed(&mut r, id(1), defunct);
    assert_eq!(r.highest_defunct, 3);
    assert!(out.iter().any(|a| matches!(a, Action::Defunct(3))));
    assert!(r.join_due(), "it still announces configuration 5");
}

/// `defunct.txt` past the configuration limit is ignored and reported.
#[test]
fn a_defunct_number_past_the_limit_is_ignored() {
    let mut r = Replica::new(CoreConfig::default(), id(0), config(&["1", "2", "3"]), 7);
    r.restore_defunct(u32::MAX);
    let mut out = Vec::new();
    r.start(0, &mut AcceptAll, &mut out);
    assert_eq!(r.highest_defunct, 0);
    assert_eq!(rejections(&out), [Rejection::Configuration]);
}
