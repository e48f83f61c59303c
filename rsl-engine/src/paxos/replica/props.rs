//! Property tests of the replica's handlers (issue 13, item 2): the postconditions of
//! docs/spec/behavior.md §2.8–§2.11 and §2.17, checked on what one handler did with one generated
//! message in a generated state.
//!
//! A state is a short generated history (elections, requests, time, cut links, restarts,
//! reconfigurations) run on the three-replica `Ring` of `directed.rs`, then shaped for the
//! handler under test (a candidate, a primary with a vote in flight, a learner, ...). The
//! message is at the decree before, at or after the target's and at a ballot below, at or
//! above its accepted ballot or its promise. It is delivered to the target alone and its
//! actions are examined, not carried out.

use super::directed::{id, Ring};
use super::*;
use crate::paxos::{AcceptAll, MS, SEC};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

type Check = Result<(), TestCaseError>;

/// What a link can be cut for: everything, or one kind of message.
const CUTS: [Option<MsgKind>; 6] = [
    None,
    Some(MsgKind::Vote),
    Some(MsgKind::VoteAccepted),
    Some(MsgKind::Prepare),
    Some(MsgKind::PrepareAccepted),
    Some(MsgKind::ReconfigurationDecision),
];

/// One step of a generated history.
#[derive(Clone, Debug)]
enum Op {
    Elect(usize),
    Submit,
    Reconfigure,
    AdvanceMs(u64),
    Cut(usize, usize, usize),
    Heal,
    Restart(usize),
    /// The second node's Prepare reaches the first alone: a promise above its accepted vote.
    Promise(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize).prop_map(Op::Elect),
        4 => Just(Op::Submit),
        1 => Just(Op::Reconfigure),
        3 => (0..12_000u64).prop_map(Op::AdvanceMs),
        2 => (0..3usize, 1..3usize, 0..CUTS.len()).prop_map(|(a, off, k)| Op::Cut(a, (a + off) % 3, k)),
        1 => Just(Op::Heal),
        1 => (0..3usize).prop_map(Op::Restart),
        2 => (0..3usize, 1..3usize).prop_map(|(i, off)| Op::Promise(i, (i + off) % 3)),
    ]
}

fn history() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..10)
}

fn v6() -> CoreConfig {
    CoreConfig::default()
}

fn v7() -> CoreConfig {
    CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() }
}

/// The node that takes requests, if any.
fn primary(ring: &Ring) -> Option<usize> {
    (0..3).find(|&i| ring.r(i).is_primary() && !ring.r(i).relinquishing && !ring.r(i).shutting_down)
}

fn build(cfg: CoreConfig, ops: &[Op]) -> Ring {
    let mut ring = Ring::with(cfg);
    for op in ops {
        match *op {
            Op::Elect(i) => {
                ring.step(i, Input::AttemptPromotion);
                ring.step(i, Input::Tick);
                ring.run();
            }
            Op::Submit => {
                if let Some(i) = primary(&ring) {
                    ring.submit(i, b"r");
                    ring.run();
                }
            }
            Op::Reconfigure => {
                if let Some(i) = primary(&ring) {
                    ring.change_configuration(i);
                    ring.run();
                }
            }
            Op::AdvanceMs(ms) => ring.advance(ms * MS),
            Op::Cut(a, b, k) => ring.cut(a, b, CUTS[k]),
            Op::Heal => ring.heal(),
            Op::Restart(i) => ring.restart(i),
            Op::Promise(i, p) => promise(&mut ring, i, p),
        }
    }
    ring
}

/// Delivers to node `i` a Prepare of node `p` above every ballot `i` knows, at `i`'s decree.
fn promise(ring: &mut Ring, i: usize, p: usize) {
    let r = ring.r(i);
    let decree = if r.pipelined() { r.next_execute() } else { r.accepted().0 };
    let ballot = Ballot::new(r.ballot_mark() + 1, id(p));
    let prepare = message(r, id(p), decree, ballot, Body::Prepare(Bytes::new()));
    let out = deliver(ring, i, id(p), prepare);
    ring.apply(i, out);
    ring.run();
}

/// Makes node `i` primary if it can be, on a healed ring.
fn elect(ring: &mut Ring, i: usize) -> bool {
    ring.heal();
    for _ in 0..4 {
        ring.step(i, Input::AttemptPromotion);
        ring.step(i, Input::Tick);
        ring.run();
        if ring.r(i).role() == Role::Primary {
            return true;
        }
        ring.advance(SEC / 2);
    }
    false
}

/// The first node from `i` on that is not primary.
fn non_primary(ring: &Ring, i: usize) -> usize {
    (0..3).map(|k| (i + k) % 3).find(|&k| ring.r(k).role() != Role::Primary).expect("one primary at most per ballot")
}

/// A ballot around node `to`'s: its accepted ballot or its promise, exactly (when a peer owns
/// it, or `to` may own it: an answer's ballot is the receiver's), or its id one lower, the same
/// or one higher under the ballot of member `member`.
#[derive(Clone, Copy, Debug)]
struct BallotPick {
    of_promise: bool,
    exact: bool,
    delta: i32,
    member: usize,
}

fn ballot_pick() -> impl Strategy<Value = BallotPick> {
    let (of_promise, exact) = (prop::bool::weighted(0.6), prop::bool::weighted(0.6));
    (of_promise, exact, -1..=1i32, 0..3usize).prop_map(|(of_promise, exact, delta, member)| BallotPick { of_promise, exact, delta, member })
}

fn ballot_of(r: &Replica, to: usize, p: BallotPick, own_ok: bool) -> Ballot {
    let base = if p.of_promise { r.max_ballot() } else { r.accepted().1 };
    let owned_by_peer = (0..3).any(|i| i != to && id(i) == base.member);
    if p.exact && (owned_by_peer || (own_ok && base.member == id(to))) {
        return base;
    }
    Ballot::new(base.id.saturating_add_signed(p.delta), id(peer(to, p.member)))
}

/// `member`, or another if that is `to` itself.
fn peer(to: usize, member: usize) -> usize {
    if member == to {
        (to + 1) % 3
    } else {
        member
    }
}

/// One decree before, at or after, at even odds, or at it with even odds.
fn delta() -> impl Strategy<Value = i32> {
    prop_oneof![1 => Just(-1), 2 => Just(0), 1 => Just(1)]
}

fn around(decree: u64, delta: i32) -> u64 {
    decree.saturating_add_signed(delta.into())
}

fn message(r: &Replica, sender: MemberId, decree: u64, ballot: Ballot, body: Body) -> Message {
    Message::new(Header::new(r.version, sender, decree, r.paxos_configuration().number, ballot), body)
}

fn vote_body(value: &'static [u8]) -> Body {
    Body::Vote(VoteBody { requests: vec![Bytes::from_static(value)], ..Default::default() })
}

/// What node `to` was before the message.
struct Before {
    role: Role,
    accepted: Arc<Message>,
    max_ballot: Ballot,
    next_execute: u64,
    config: u32,
    /// Its durable log (the ring's disks are durable at once).
    log: Vec<Arc<Message>>,
}

impl Before {
    fn of(ring: &Ring, to: usize) -> Before {
        let r = ring.r(to);
        Before {
            role: r.role(),
            accepted: r.accepted.clone(),
            max_ballot: r.max_ballot(),
            next_execute: r.next_execute(),
            config: r.paxos_configuration().number,
            log: ring.procs[to].log.clone(),
        }
    }

    fn accepted(&self) -> (u64, Ballot) {
        decree_ballot(&self.accepted)
    }
}

/// Delivers `msg` to node `to` as if `from` sent it; returns what `to` did.
fn deliver(ring: &mut Ring, to: usize, from: MemberId, msg: Message) -> Vec<Action> {
    let (now, mut out) = (ring.now, Vec::new());
    ring.r_mut(to).step(now, Input::Message { from, msg: Arc::new(msg) }, &mut AcceptAll, &mut out);
    out
}

fn sent(out: &[Action], kind: MsgKind) -> Vec<(Dest, Arc<Message>, u64)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to, msg, after } if msg.kind() == kind => Some((to.clone(), msg.clone(), *after)),
            _ => None,
        })
        .collect()
}

fn persisted(out: &[Action]) -> Vec<(u64, Arc<Message>)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Persist { seq, record } => Some((*seq, record.clone())),
            _ => None,
        })
        .collect()
}

fn executed(out: &[Action]) -> Vec<Arc<Message>> {
    out.iter()
        .filter_map(|a| match a {
            Action::Execute { vote, .. } => Some(vote.clone()),
            _ => None,
        })
        .collect()
}

fn votes_persisted(out: &[Action]) -> Vec<(u64, Ballot)> {
    persisted(out).iter().filter(|(_, r)| r.kind() == MsgKind::Vote).map(|(_, r)| decree_ballot(r)).collect()
}

/// Some record on disk before the step, or persisted by it at or before `after`, satisfies `p`.
fn held(before: &Before, out: &[Action], after: u64, p: impl Fn(&Message) -> bool) -> bool {
    before.log.iter().any(|r| p(r)) || persisted(out).iter().any(|(seq, r)| *seq <= after && p(r))
}

fn is_vote_at(r: &Message, at: (u64, Ballot)) -> bool {
    r.kind() == MsgKind::Vote && decree_ballot(r) == at
}

/// What every handler keeps, whatever the message: nothing refused (the messages are well
/// formed), the promise never drops, an acknowledgement is released only once what it promises
/// is logged, NotAccepted carries the promise, decrees execute in order from the next one, and
/// the configuration moves by one at most.
fn universal(ring: &Ring, to: usize, before: &Before, out: &[Action]) -> Check {
    let r = ring.r(to);
    // (A generated message may contradict what the replica holds, as a forged one would.)
    let refused = |a: &Action| matches!(a, Action::Rejected { reason, .. } if *reason != Rejection::Inconsistent);
    prop_assert!(!out.iter().any(refused), "refused: {out:?}");
    prop_assert!(r.max_ballot() >= before.max_ballot, "the promise dropped from {} to {}", before.max_ballot, r.max_ballot());
    for (_, msg, after) in sent(out, MsgKind::VoteAccepted) {
        let at = decree_ballot(&msg);
        prop_assert!(held(before, out, after, |rec| is_vote_at(rec, at)), "VoteAccepted {at:?} released before its vote is logged");
    }
    for (_, msg, after) in sent(out, MsgKind::PrepareAccepted) {
        let Body::PrepareAccepted(vote) = &msg.body else { unreachable!() };
        let (b, reported) = (msg.header.ballot, decree_ballot(vote));
        prop_assert!(
            held(before, out, after, |rec| rec.header.ballot >= b),
            "PrepareAccepted at {b} released before its promise is logged"
        );
        prop_assert!(
            reported.1.is_empty() || held(before, out, after, |rec| is_vote_at(rec, reported)),
            "PrepareAccepted reports {reported:?} before it is logged"
        );
    }
    for (_, msg, _) in sent(out, MsgKind::NotAccepted) {
        // (Cached votes handled in the same step may raise it after.)
        let b = msg.header.ballot;
        prop_assert!(before.max_ballot <= b && b <= r.max_ballot(), "NotAccepted carries the promise: {b}");
    }
    let decrees: Vec<u64> = executed(out).iter().map(|v| v.header.decree).collect();
    let expected: Vec<u64> = (before.next_execute..).take(decrees.len()).collect();
    prop_assert_eq!(&decrees, &expected, "decrees execute in order from the next one");
    let config = r.paxos_configuration().number;
    prop_assert!(config == before.config || config == before.config + 1, "configuration {} -> {config}", before.config);
    if !r.pipelined() {
        prop_assert_eq!(r.next_execute(), before.next_execute + decrees.len() as u64, "executed is what it handed out");
    }
    Ok(())
}

/// The kinds of message a generated one can be.
const KINDS: [MsgKind; 7] = [
    MsgKind::Vote,
    MsgKind::Prepare,
    MsgKind::NotAccepted,
    MsgKind::VoteAccepted,
    MsgKind::PrepareAccepted,
    MsgKind::StatusResponse,
    MsgKind::ReconfigurationDecision,
];

/// A message of `kind` at (decree, ballot); one whose ballot must be its sender's comes from
/// the ballot's owner.
fn any_message(r: &Replica, to: usize, kind: MsgKind, decree: u64, ballot: Ballot, from: usize) -> (MemberId, Message) {
    let own = ballot.member;
    let (sender, body) = match kind {
        MsgKind::Vote => (own, vote_body(b"generated")),
        MsgKind::Prepare => (own, Body::Prepare(Bytes::new())),
        MsgKind::ReconfigurationDecision => (own, Body::ReconfigurationDecision),
        MsgKind::NotAccepted => (id(from), Body::NotAccepted),
        MsgKind::VoteAccepted => (id(from), Body::VoteAccepted),
        MsgKind::PrepareAccepted => {
            let vote = message(r, own, decree, ballot, vote_body(b"reported"));
            (id(from), Body::PrepareAccepted(Box::new(vote)))
        }
        _ => {
            let (qd, qb) = r.position();
            let status = StatusBody {
                query_decree: qd,
                query_ballot: qb,
                last_received_ago_ms: 0,
                min_decree_in_log: 0,
                checkpointed_decree: 0,
                checkpoint_size: 0,
                max_ballot: ballot,
                state: 2,
            };
            (id(from), Body::StatusResponse(status))
        }
    };
    debug_assert_ne!(sender, id(to));
    (sender, message(r, sender, decree, ballot, body))
}

fn check_any_message(cfg: CoreConfig, ops: &[Op], to: usize, kind: usize, delta: i32, pick: BallotPick, from: usize) -> Check {
    let mut ring = build(cfg, ops);
    let r = ring.r(to);
    let own_ok = !matches!(KINDS[kind], MsgKind::Vote | MsgKind::Prepare | MsgKind::ReconfigurationDecision);
    let ballot = ballot_of(r, to, pick, own_ok);
    let (sender, msg) = any_message(r, to, KINDS[kind], around(r.accepted().0, delta), ballot, peer(to, from));
    let before = Before::of(&ring, to);
    let out = deliver(&mut ring, to, sender, msg);
    universal(&ring, to, &before, &out)
}

/// §2.8 on a vote (before version 7): an older vote is dropped (NotAccepted below the promise
/// or far behind); the next vote is logged and accepted, answered VoteAccepted only at or above
/// the promise, and makes the one it follows at the same ballot chosen; a gap sends the
/// replica to learn. While initializing votes are cached, nothing more.
fn check_vote(ops: &[Op], to: usize, delta: i32, pick: BallotPick) -> Check {
    let mut ring = build(v6(), ops);
    let r = ring.r(to);
    let (d, b) = (around(r.accepted().0, delta), ballot_of(r, to, pick, false));
    let msg = message(r, b.member, d, b, vote_body(b"v"));
    let before = Before::of(&ring, to);
    let out = deliver(&mut ring, to, b.member, msg);
    universal(&ring, to, &before, &out)?;
    let r = ring.r(to);
    let ((ad, ab), mb) = (before.accepted(), before.max_ballot);
    let accepted_replies = sent(&out, MsgKind::VoteAccepted);
    let refusals = sent(&out, MsgKind::NotAccepted);
    prop_assert!(accepted_replies.is_empty() || b >= mb, "a vote below the promise is never accepted");
    if before.role == Role::Initializing {
        prop_assert!(out.is_empty(), "cached only: {out:?}");
        return Ok(());
    }
    if is_lower((d, b), (ad, ab)) {
        prop_assert!(persisted(&out).is_empty() && accepted_replies.is_empty());
        prop_assert_eq!(r.accepted(), (ad, ab));
        prop_assert_eq!(refusals.len(), usize::from(b < mb || d + 1 < ad), "NotAccepted only below the promise or far behind");
        prop_assert!(refusals.iter().all(|(_, m, _)| decree_ballot(m) == (ad, mb)), "NotAccepted (our decree, our promise)");
    } else if (d, b) == (ad + 1, ab) && before.accepted.as_vote().is_some_and(|v| v.reconfig.is_some()) {
        // No honest primary proposes past its reconfiguration in the same configuration.
        prop_assert!(out.is_empty(), "a vote past a reconfiguration is dropped: {out:?}");
        prop_assert_eq!(r.accepted(), (ad, ab));
    } else if !is_next((d, b), (ad, ab)) {
        prop_assert_eq!(r.role(), Role::Initializing, "a gap: learn");
        prop_assert!(votes_persisted(&out).is_empty() && accepted_replies.is_empty());
        prop_assert_eq!(r.accepted(), (ad, ab));
    } else {
        prop_assert_eq!(r.accepted(), (d, b), "the next vote is accepted");
        prop_assert_eq!(votes_persisted(&out), if (d, b) == (ad, ab) { vec![] } else { vec![(d, b)] }, "and logged");
        prop_assert_eq!(r.role(), Role::Secondary);
        if b < mb {
            prop_assert!(accepted_replies.is_empty() && refusals.len() == 1, "logged, yet refused below the promise");
        } else {
            prop_assert_eq!(accepted_replies.len(), 1);
            prop_assert_eq!(decree_ballot(&accepted_replies[0].1), (d, b));
            prop_assert_eq!(r.max_ballot(), b);
        }
        let chosen = d == ad + 1 && before.next_execute == ad;
        let first = executed(&out).first().map(|v| decree_ballot(v));
        prop_assert_eq!(first, chosen.then_some((ad, ab)), "the next decree makes ours chosen");
    }
    Ok(())
}

/// Version 7: a vote below the promise is refused and not logged; any other (near our
/// execution) is logged and accepted; decrees execute only on a watermark, in order.
fn check_vote_pipelined(ops: &[Op], to: usize, of_execution: bool, delta: i32, pick: BallotPick, watermark: i32) -> Check {
    let mut ring = build(v7(), ops);
    let r = ring.r(to);
    let base = if of_execution { r.next_execute() } else { r.accepted().0 };
    let (d, b) = (around(base, delta), ballot_of(r, to, pick, false));
    let mut msg = message(r, b.member, d, b, vote_body(b"v"));
    msg.header.payload = around(r.next_execute(), watermark).min(d);
    let before = Before::of(&ring, to);
    let out = deliver(&mut ring, to, b.member, msg);
    universal(&ring, to, &before, &out)?;
    if before.role == Role::Initializing {
        prop_assert!(out.is_empty(), "cached only: {out:?}");
        return Ok(());
    }
    let accepted_replies = sent(&out, MsgKind::VoteAccepted);
    if b < before.max_ballot {
        prop_assert!(persisted(&out).is_empty() && accepted_replies.is_empty());
        prop_assert_eq!(sent(&out, MsgKind::NotAccepted).len(), 1);
    } else {
        prop_assert!(votes_persisted(&out).contains(&(d, b)) || before.log.iter().any(|rec| is_vote_at(rec, (d, b))), "logged");
        prop_assert_eq!(accepted_replies.len(), 1);
        prop_assert_eq!(decree_ballot(&accepted_replies[0].1), (d, b));
    }
    Ok(())
}

/// §2.8 on a Prepare (before version 7): one below (our decree, our promise) is refused when
/// below the promise or far behind, and changes nothing; otherwise, unless initializing, its
/// ballot is promised (and logged if higher) and answered with our last vote.
fn check_prepare(ops: &[Op], to: usize, delta: i32, pick: BallotPick) -> Check {
    let mut ring = build(v6(), ops);
    let r = ring.r(to);
    let (d, b) = (around(r.accepted().0, delta), ballot_of(r, to, pick, false));
    let msg = message(r, b.member, d, b, Body::Prepare(Bytes::new()));
    let before = Before::of(&ring, to);
    let out = deliver(&mut ring, to, b.member, msg);
    universal(&ring, to, &before, &out)?;
    let r = ring.r(to);
    let ((ad, _), mb) = (before.accepted(), before.max_ballot);
    let answers = sent(&out, MsgKind::PrepareAccepted);
    if is_lower((d, b), (ad, mb)) {
        prop_assert!(answers.is_empty() && persisted(&out).is_empty());
        prop_assert_eq!(r.max_ballot(), mb);
        let refusals = sent(&out, MsgKind::NotAccepted);
        prop_assert_eq!(refusals.len(), usize::from(b < mb || d + 1 < ad), "NotAccepted only below the promise or far behind");
        prop_assert!(refusals.iter().all(|(_, m, _)| decree_ballot(m) == (ad, mb)), "NotAccepted (our decree, our promise)");
    } else if before.role == Role::Initializing {
        prop_assert!(out.is_empty(), "not answered while initializing: {out:?}");
    } else {
        prop_assert_eq!(r.max_ballot(), b, "promised");
        let prepares: Vec<Ballot> =
            persisted(&out).iter().filter(|(_, rec)| rec.kind() == MsgKind::Prepare).map(|(_, rec)| rec.header.ballot).collect();
        prop_assert_eq!(prepares, if b > mb { vec![b] } else { vec![] }, "a higher promise is logged");
        prop_assert_eq!(answers.len(), 1);
        let (dest, answer, _) = &answers[0];
        prop_assert_eq!(dest, &Dest::One(b.member));
        prop_assert_eq!(decree_ballot(answer), (d, b));
        let Body::PrepareAccepted(last) = &answer.body else { unreachable!() };
        prop_assert_eq!(&**last, &*before.accepted, "carrying the last vote");
        prop_assert_eq!(r.role(), if d > ad { Role::Initializing } else { Role::Secondary });
    }
    Ok(())
}

/// A ring whose node `to` (or the next that is not primary) stands for election and is
/// left preparing: its Prepares are lost.
fn candidate(ops: &[Op], to: usize) -> Option<(Ring, usize)> {
    let mut ring = build(v6(), ops);
    ring.heal();
    let j = non_primary(&ring, to);
    for k in (0..3).filter(|&k| k != j) {
        ring.cut(j, k, Some(MsgKind::Prepare));
    }
    for _ in 0..3 {
        ring.step(j, Input::AttemptPromotion);
        ring.step(j, Input::Tick);
        ring.run();
        if ring.r(j).role() == Role::Preparing {
            return Some((ring, j));
        }
        ring.advance(SEC / 2);
    }
    None
}

/// §2.9 steps 4–5: a PrepareAccepted counts only if it answers our Prepare (our decree, our
/// ballot) with a vote no further than our decree and no higher than our ballot; with it the
/// candidate has a quorum and re-proposes, at its decree under its ballot, the value of the
/// highest-ballot vote reported at that decree (its own to start).
fn check_prepare_accepted(
    ops: &[Op],
    to: usize,
    from: usize,
    delta: i32,
    pick: BallotPick,
    vote_delta: i32,
    vote_pick: BallotPick,
) -> Check {
    let Some((mut ring, j)) = candidate(ops, to) else { return Ok(()) };
    let r = ring.r(j);
    let (ad, mb) = (r.accepted().0, r.max_ballot());
    let freshest = r.candidacy.as_ref().expect("preparing").freshest.clone();
    let (d, b) = (around(ad, delta), ballot_of(r, j, pick, true));
    let (vd, vb) = (around(ad, vote_delta), ballot_of(r, j, vote_pick, true));
    let reported = message(r, vb.member, vd, vb, vote_body(b"reported"));
    let from = peer(j, from);
    let msg = message(r, id(from), d, b, Body::PrepareAccepted(Box::new(reported)));
    let before = Before::of(&ring, j);
    let out = deliver(&mut ring, j, id(from), msg);
    universal(&ring, j, &before, &out)?;
    let votes = sent(&out, MsgKind::Vote);
    let counts = (d, b) == (ad, mb) && vd <= ad && vb <= mb;
    if !counts {
        prop_assert_eq!(ring.r(j).role(), Role::Preparing, "an answer to another Prepare, or an invalid one, does not count");
        prop_assert!(votes.is_empty());
        return Ok(());
    }
    prop_assert_eq!(ring.r(j).role(), Role::Primary, "a quorum of two: itself and the answer");
    prop_assert_eq!(votes.len(), 1);
    let (dest, vote, _) = &votes[0];
    prop_assert_eq!(dest, &Dest::All);
    prop_assert_eq!(decree_ballot(vote), (ad, mb), "re-proposed at our decree under our ballot");
    let fresher = vd == ad && vb > freshest.header.ballot;
    let expected =
        if fresher { vec![Bytes::from_static(b"reported")] } else { freshest.as_vote().map(|v| v.requests.clone()).unwrap_or_default() };
    prop_assert_eq!(&vote.as_vote().expect("a vote").requests, &expected, "the freshest value");
    prop_assert!(!ring.r(j).is_primary(), "primary to the application only once the re-proposal is chosen");
    Ok(())
}

/// §3.1 test 7: a primary completes its vote in flight only on a VoteAccepted at its decree
/// and its ballot (with itself, a quorum of two), and executes it at once; anything else leaves
/// the vote in flight. A replica that is not primary ignores every VoteAccepted.
fn check_vote_accepted(ops: &[Op], to: usize, from: usize, delta: i32, pick: BallotPick, lead: bool) -> Check {
    let mut ring = build(v6(), ops);
    let j = if lead {
        if !elect(&mut ring, to) {
            return Ok(());
        }
        for k in (0..3).filter(|&k| k != to) {
            ring.cut(k, to, Some(MsgKind::VoteAccepted));
        }
        if !ring.r(to).is_primary() {
            return Ok(());
        }
        ring.submit(to, b"in flight");
        ring.run();
        to
    } else {
        non_primary(&ring, to)
    };
    let r = ring.r(j);
    let (ad, mb) = (r.accepted().0, r.max_ballot());
    let (d, b) = (around(ad, delta), ballot_of(r, j, pick, true));
    let from = peer(j, from);
    let msg = message(r, id(from), d, b, Body::VoteAccepted);
    let before = Before::of(&ring, j);
    let in_flight = r.outstanding.front().map(|o| decree_ballot(&o.vote));
    let out = deliver(&mut ring, j, id(from), msg);
    universal(&ring, j, &before, &out)?;
    let r = ring.r(j);
    if before.role != Role::Primary {
        prop_assert!(out.is_empty(), "ignored: {out:?}");
        prop_assert_eq!((r.accepted(), r.max_ballot(), r.role()), (before.accepted(), mb, before.role));
        return Ok(());
    }
    prop_assert_eq!(in_flight, Some((ad, mb)), "the vote in flight is the accepted one");
    let done: Vec<(u64, Ballot)> = executed(&out).iter().map(|v| decree_ballot(v)).collect();
    if (d, b) == (ad, mb) {
        prop_assert_eq!(done, vec![(ad, mb)], "chosen and executed at once");
        // Requests that waited behind it (the submit above, when a vote was already in
        // flight) go out at once as the next decree.
        let next = r.outstanding.front().map(|o| decree_ballot(&o.vote));
        prop_assert!(next.is_none_or(|n| n == (ad + 1, mb)), "{next:?} in flight after ({ad}, {mb})");
    } else {
        prop_assert!(done.is_empty(), "not chosen");
        prop_assert_eq!(r.outstanding.front().map(|o| decree_ballot(&o.vote)), in_flight);
    }
    Ok(())
}

/// §2.11: a status reply that does not echo our position is ignored, and a primary ignores
/// all; an initializing replica with a quorum learns from a responder ahead whose log holds our
/// decree, loads a checkpoint if none does, or else runs the election logic; a stable one
/// learns from a responder one decree ahead.
#[allow(clippy::too_many_arguments)]
fn check_status_response(
    ops: &[Op],
    to: usize,
    from: usize,
    isolate: bool,
    echo: bool,
    delta: i32,
    pick: BallotPick,
    log_from: i32,
    checkpointed: i32,
) -> Check {
    let mut ring = build(v6(), ops);
    ring.heal();
    if isolate {
        ring.isolate(to);
        ring.step(to, Input::AttemptPromotion);
        ring.step(to, Input::Tick);
    }
    let r = ring.r(to);
    let (ad, ab) = r.position();
    let (d, b) = (around(ad, delta), ballot_of(r, to, pick, true));
    let query = if echo { (ad, ab) } else { (ad + 1, ab) };
    let status = StatusBody {
        query_decree: query.0,
        query_ballot: query.1,
        last_received_ago_ms: 0,
        min_decree_in_log: around(ad, log_from),
        checkpointed_decree: around(ad, checkpointed),
        checkpoint_size: 1,
        max_ballot: b,
        state: 2,
    };
    let from = peer(to, from);
    let msg = message(r, id(from), d, b, Body::StatusResponse(status.clone()));
    let (busy, cache_empty, fresh) = (r.learning.is_some() || r.loading.is_some(), r.cache.is_empty(), r.statuses.is_empty());
    let before = Before::of(&ring, to);
    let out = deliver(&mut ring, to, id(from), msg);
    universal(&ring, to, &before, &out)?;
    let r = ring.r(to);
    let fetches: Vec<&Action> = out.iter().filter(|a| matches!(a, Action::FetchVotes { .. })).collect();
    let loads: Vec<&Action> = out.iter().filter(|a| matches!(a, Action::FetchCheckpoint { .. })).collect();
    if before.role == Role::Primary || busy || !echo {
        prop_assert!(fetches.is_empty() && loads.is_empty(), "ignored: {out:?}");
        prop_assert_eq!(r.role(), before.role);
        return Ok(());
    }
    let learn = |fetches: &[&Action]| matches!(fetches, [Action::FetchVotes { from: f, decree }] if *f == id(from) && *decree == ad);
    if before.role != Role::Initializing {
        let one_ahead = d == ad + 1 && b >= ab && cache_empty;
        prop_assert_eq!(learn(&fetches), one_ahead, "a stable replica learns from one a decree ahead: {:?}", out);
        prop_assert!(one_ahead || fetches.is_empty());
        return Ok(());
    }
    if !fresh {
        return Ok(()); // earlier replies of the round count too
    }
    let ahead = d > ad || is_higher((d, b), (ad, ab));
    let logged = status.min_decree_in_log <= ad;
    if ahead && logged {
        prop_assert!(learn(&fetches), "learns from the one ahead: {:?}", out);
        prop_assert_eq!(r.learning, Some(id(from)));
    } else if ahead {
        prop_assert!(fetches.is_empty());
        let covers = status.checkpointed_decree >= ad.max(before.next_execute);
        prop_assert_eq!(loads.len(), usize::from(covers), "loads a checkpoint that covers our decree, or waits");
    } else {
        prop_assert!(fetches.is_empty() && loads.is_empty());
        let role = r.role();
        prop_assert!(!cache_empty || matches!(role, Role::Preparing | Role::Secondary), "nobody ahead: the election logic, {role:?}");
        for (_, prepare, _) in sent(&out, MsgKind::Prepare) {
            prop_assert!(
                prepare.header.ballot > before.max_ballot && prepare.header.decree == ad,
                "stands above its promise at its decree"
            );
        }
    }
    Ok(())
}

/// One record of a generated log: a Prepare, or a vote `step` decrees after the previous one
/// at a ballot `delta` ids from our accepted one.
#[derive(Clone, Copy, Debug)]
struct Rec {
    prepare: bool,
    step: u64,
    delta: i32,
    member: usize,
}

fn rec() -> impl Strategy<Value = Rec> {
    (prop::bool::weighted(0.15), prop_oneof![2 => Just(0u64), 6 => Just(1u64), 1 => Just(2u64)], -1..=1i32, 0..3usize)
        .prop_map(|(prepare, step, delta, member)| Rec { prepare, step, delta, member })
}

const VALUES: [&[u8]; 4] = [b"a", b"b", b"c", b"d"];

/// §2.11 LearnVotes (before version 7): only an answer from the peer asked counts; the log must
/// start at our decree; decrees execute in order, each only once the next decree's vote is
/// learned (or was cached, and is handled once learning reaches it), with a value accepted
/// here or learned, and never past the last vote (which is not known chosen); the replica ends
/// following, or looking for the ring again.
fn check_learning(ops: &[Op], to: usize, from: usize, start: i32, recs: &[Rec], wrong_source: bool) -> Check {
    let mut ring = build(v6(), ops);
    ring.heal();
    let j = non_primary(&ring, to);
    let from = peer(j, from);
    let (ad, ab) = ring.r(j).accepted();
    let base = ab.id.max(1);
    let mut records = Vec::new();
    let mut decree = around(ad, start);
    for (k, rc) in recs.iter().enumerate() {
        let member = peer(j, rc.member);
        let ballot = Ballot::new(base.saturating_add_signed(rc.delta), id(member));
        let r = ring.r(j);
        if rc.prepare {
            records.push(Arc::new(message(r, id(member), decree, ballot, Body::Prepare(Bytes::new()))));
            continue;
        }
        if k > 0 {
            decree += rc.step;
        }
        records.push(Arc::new(message(r, id(member), decree, ballot, vote_body(VALUES[k % VALUES.len()]))));
    }
    let before = Before::of(&ring, j);
    // Votes cached while initializing continue from where learning stops.
    let cached: Vec<Arc<Message>> = ring.r(j).cache.iter().map(|(_, v)| v.clone()).collect();
    let (now, mut out) = (ring.now, Vec::new());
    ring.r_mut(j).learn(id(from), &mut out);
    let source = if wrong_source { id(3 - j - from) } else { id(from) };
    let learned = Input::Learned { from: source, records: records.clone() };
    let mut out = Vec::new();
    ring.r_mut(j).step(now, learned, &mut AcceptAll, &mut out);
    universal(&ring, j, &before, &out)?;
    let r = ring.r(j);
    if source != id(from) {
        prop_assert!(out.is_empty(), "an answer from another peer is ignored: {out:?}");
        prop_assert_eq!(r.learning, Some(id(from)));
        return Ok(());
    }
    prop_assert_eq!(r.learning, None);
    prop_assert!(matches!(r.role(), Role::Initializing | Role::Secondary), "{:?}", r.role());
    let learned: Vec<&Arc<Message>> = records.iter().filter(|rec| rec.kind() == MsgKind::Vote).collect();
    let votes: Vec<&Arc<Message>> = learned.iter().copied().chain(&cached).collect();
    let done = executed(&out);
    if learned.first().is_none_or(|v| v.header.decree != ad) {
        prop_assert!(done.is_empty() && votes_persisted(&out).is_empty(), "a log that does not start at our decree is refused");
        prop_assert_eq!(r.accepted(), (ad, ab));
    }
    prop_assert!(r.accepted().0 >= ad);
    for v in &done {
        let e = v.header.decree;
        prop_assert!(e < r.accepted().0, "decree {e} executed, yet it is the last accepted");
        prop_assert!(
            votes.iter().any(|n| n.header.decree == e + 1),
            "decree {e} executed before the next decree's vote was learned or cached"
        );
        let held = (e == ad && *v == before.accepted) || votes.contains(&v);
        prop_assert!(held, "decree {e} executed a value nobody accepted");
    }
    Ok(())
}

/// §2.17 steps 2–3: a ReconfigurationDecision that decides the vote we accepted, a
/// reconfiguration at its decree and at its ballot or above, moves the configuration number by
/// exactly one: the decision is logged, the vote executes, the replica starts the new
/// configuration at the next decree with an empty vote and a promise above the old, and looks
/// for its ring. Any other decision changes nothing.
fn check_decision(ops: &[Op], to: usize, delta: i32, pick: BallotPick, elsewhere: bool) -> Check {
    let mut ring = build(v6(), ops);
    let j = non_primary(&ring, to);
    let k = if elsewhere { (j + 1) % 3 } else { (j + 2) % 3 };
    if elect(&mut ring, k) && ring.r(k).is_primary() {
        for i in (0..3).filter(|&i| i != k) {
            ring.cut(k, i, Some(MsgKind::ReconfigurationDecision));
        }
        ring.change_configuration(k);
        ring.run();
    }
    let r = ring.r(j);
    let (d, b) = (around(r.accepted().0, delta), ballot_of(r, j, pick, false));
    let msg = message(r, b.member, d, b, Body::ReconfigurationDecision);
    let reconfig = r.accepted.as_vote().is_some_and(|v| v.reconfig.is_some());
    let before = Before::of(&ring, j);
    let out = deliver(&mut ring, j, b.member, msg);
    universal(&ring, j, &before, &out)?;
    let r = ring.r(j);
    let (ad, ab) = before.accepted();
    let decides = d == ad && ab >= b && reconfig && before.next_execute >= d;
    if !decides {
        prop_assert_eq!(r.paxos_configuration().number, before.config);
        prop_assert!(executed(&out).is_empty() && persisted(&out).is_empty(), "{out:?}");
        return Ok(());
    }
    let n = before.config + 1;
    prop_assert_eq!(r.paxos_configuration().number, n, "exactly one on");
    prop_assert_eq!(r.paxos_configuration().initial_decree, d + 1);
    prop_assert!(persisted(&out).iter().any(|(_, rec)| rec.kind() == MsgKind::ReconfigurationDecision && decree_ballot(rec) == (d, b)));
    if before.next_execute == d {
        prop_assert_eq!(executed(&out).len(), 1);
        let changed = out.iter().any(|a| matches!(a, Action::ConfigurationChanged { config, .. } if config.number == n));
        prop_assert!(changed, "the state moves to configuration {n}");
    }
    prop_assert_eq!(r.accepted(), (d + 1, Ballot::EMPTY));
    prop_assert!(r.max_ballot() > before.max_ballot);
    prop_assert_eq!(r.role(), Role::Initializing);
    Ok(())
}

// 256 cases each (proptest's default); PROPTEST_CASES=N runs more.
proptest! {

    #[test]
    fn any_message_keeps_the_common_postconditions(
        pipelined in any::<bool>(), ops in history(), to in 0..3usize, kind in 0..KINDS.len(),
        delta in delta(), pick in ballot_pick(), from in 0..3usize,
    ) {
        check_any_message(if pipelined { v7() } else { v6() }, &ops, to, kind, delta, pick, from)?;
    }

    #[test]
    fn a_vote_is_accepted_only_at_or_above_the_promise_and_in_sequence(
        ops in history(), to in 0..3usize, delta in delta(), pick in ballot_pick(),
    ) {
        check_vote(&ops, to, delta, pick)?;
    }

    #[test]
    fn a_pipelined_vote_is_logged_and_accepted_unless_below_the_promise(
        ops in history(), to in 0..3usize, of_execution in any::<bool>(), delta in delta(), pick in ballot_pick(),
        watermark in -1..=1i32,
    ) {
        check_vote_pipelined(&ops, to, of_execution, delta, pick, watermark)?;
    }

    #[test]
    fn a_prepare_is_promised_and_answered_with_the_last_vote_unless_stale(
        ops in history(), to in 0..3usize, delta in delta(), pick in ballot_pick(),
    ) {
        check_prepare(&ops, to, delta, pick)?;
    }

    #[test]
    fn a_candidate_counts_only_valid_answers_and_reproposes_the_freshest_value(
        ops in history(), to in 0..3usize, from in 0..3usize, delta in delta(), pick in ballot_pick(),
        vote_delta in delta(), vote_pick in ballot_pick(),
    ) {
        check_prepare_accepted(&ops, to, from, delta, pick, vote_delta, vote_pick)?;
    }

    #[test]
    fn a_primary_completes_a_decree_only_on_an_acknowledgement_at_its_own_ballot(
        ops in history(), to in 0..3usize, from in 0..3usize, delta in delta(), pick in ballot_pick(), lead in any::<bool>(),
    ) {
        check_vote_accepted(&ops, to, from, delta, pick, lead)?;
    }

    #[test]
    fn a_status_reply_leads_to_learning_loading_or_an_election_as_it_shows(
        ops in history(), to in 0..3usize, from in 0..3usize, isolate in any::<bool>(), echo in prop::bool::weighted(0.8),
        delta in delta(), pick in ballot_pick(), log_from in -1..=1i32, checkpointed in -1..=1i32,
    ) {
        check_status_response(&ops, to, from, isolate, echo, delta, pick, log_from, checkpointed)?;
    }

    #[test]
    fn a_learner_executes_in_order_and_never_past_a_gap(
        ops in history(), to in 0..3usize, from in 0..3usize, start in prop_oneof![1 => Just(-1i32), 6 => Just(0), 1 => Just(1)],
        recs in prop::collection::vec(rec(), 0..6), wrong_source in prop::bool::weighted(0.1),
    ) {
        check_learning(&ops, to, from, start, &recs, wrong_source)?;
    }

    #[test]
    fn a_reconfiguration_decision_moves_the_configuration_by_exactly_one(
        ops in history(), to in 0..3usize, delta in delta(), pick in ballot_pick(), elsewhere in any::<bool>(),
    ) {
        check_decision(&ops, to, delta, pick, elsewhere)?;
    }
}

/// Found by `a_primary_completes_a_decree_only_on_an_acknowledgement_at_its_own_ballot`
/// (the first seed in proptest-regressions/paxos/replica/props.txt). Node 2's reconfiguration
/// at decree 1 was chosen by nodes 2 and 0, and node 2 switched; the decision never reached
/// nodes 0 and 1. Node 0, elected in configuration 1, re-proposes the reconfiguration under
/// its own, higher ballot; node 2's Join makes it step down and learn, and the decision it
/// learns names the lower ballot that chose the value. Requiring the decision to match the
/// accepted ballot exactly, node 0 never took it: it stood again, and again, without time
/// passing (the network never went quiet).
#[test]
fn a_reconfiguration_reproposed_under_a_higher_ballot_takes_the_decision_of_the_lower() {
    let mut ring = build(v6(), &[Op::Cut(2, 0, 5), Op::Elect(2), Op::Cut(2, 1, 0), Op::Reconfigure]);
    assert_eq!([0, 1, 2].map(|i| ring.r(i).paxos_configuration().number), [1, 1, 2]);
    assert!(ring.r(0).accepted.as_vote().is_some_and(|v| v.reconfig.is_some()), "node 0 holds the reconfiguration");
    ring.heal();
    ring.step(0, Input::AttemptPromotion);
    ring.step(0, Input::Tick);
    ring.run();
    assert_eq!(ring.r(0).paxos_configuration().number, 2, "node 0 applied the decision");
    ring.advance(30 * SEC);
    assert_eq!([0, 1, 2].map(|i| ring.r(i).paxos_configuration().number), [2, 2, 2]);
    assert!(primary(&ring).is_some(), "configuration 2 elected a primary");
}

/// Found by `a_learner_executes_in_order_and_never_past_a_gap` (the seed e424551c in
/// proptest-regressions/paxos/replica/props.txt). Node 0, primary at b1, executed decree 0 and
/// proposed decree 1; node 1, whose messages node 0 never hears, was elected at b2 and
/// re-proposed decree 0. Node 2, standing, learned decree 1 at b1 from node 0: that proved its
/// own vote at decree 0 (at b2) chosen, and it logged (1, b1) after (0, b2). Node 1, learning
/// from node 2's log, refused that sequence (the next decree at a lower ballot) and looked for
/// the ring again at once, forever: node 0, the only other log, does not hear it.
#[test]
fn a_learner_takes_the_next_decree_at_a_lower_ballot_from_a_log_that_proved_it_chosen() {
    let mut ring = build(v6(), &[Op::AdvanceMs(10134), Op::Cut(1, 0, 0), Op::Elect(1), Op::Submit]);
    let (b1, b2) = (ring.r(0).max_ballot(), ring.r(1).max_ballot());
    assert!(ring.r(0).accepted() == (1, b1) && ring.r(2).accepted() == (0, b2) && b1 < b2);
    ring.step(2, Input::AttemptPromotion);
    ring.step(2, Input::Tick);
    ring.run();
    let node2_log: Vec<(u64, Ballot)> = ring.procs[2].log.iter().filter(|r| r.kind() == MsgKind::Vote).map(|r| decree_ballot(r)).collect();
    assert!(node2_log.windows(2).any(|w| w == [(0, b2), (1, b1)]), "node 2 logged (1, b1) after (0, b2): {node2_log:?}");
    assert_eq!(ring.r(2).role(), Role::Primary);
    assert_eq!(ring.r(1).role(), Role::Secondary, "node 1 learned from node 2");
    assert_eq!(ring.r(1).accepted(), ring.r(2).accepted());
}

/// Found by `a_pipelined_vote_is_logged_and_accepted_unless_below_the_promise` (in CI, and two
/// more seeds in proptest-regressions/paxos/replica/props.txt). Node 2, primary at b1, executed
/// decree 0 and proposed decree 1 at b1 with watermark 1; node 0, promised to b2, refused it,
/// then accepted node 2's decree 1 at b3, whose watermark covers only votes at b3. Learning
/// from node 2, node 0 met (1, b1) below the b3 vote it holds: it executed decree 0 on that
/// watermark and vouched for it without logging the vote. Node 1, cut off from node 2, saw
/// node 0 ahead and learned from its log, which could not prove decree 0, over and over
/// without time passing. Not vouching instead made node 0 stand from decree 0, be sent to
/// learn by node 2, and stand again, forever. The vote is now logged (not kept), so node 0's
/// log proves what it vouches for, and node 0's own vote after it, so that the newest vote of
/// decree 1, which learners are served from, is the highest.
#[test]
fn a_watermark_learned_below_a_held_ballot_is_logged() {
    let ring = build(v7(), &[Op::Elect(2), Op::Promise(0, 2), Op::Cut(2, 1, 0), Op::AdvanceMs(1606), Op::AdvanceMs(9027)]);
    let b1 = ring.procs[2].log.iter().find(|r| r.kind() == MsgKind::Vote).expect("node 2's first vote").header.ballot;
    let node0: Vec<(u64, Ballot)> = ring.procs[0].log.iter().filter(|r| r.kind() == MsgKind::Vote).map(|r| decree_ballot(r)).collect();
    let b3 = ring.r(0).pending.get(&1).map(|(v, _)| v.header.ballot).expect("node 0 holds decree 1");
    assert!(b3 > b1, "node 0 kept the higher vote");
    assert!(node0.ends_with(&[(1, b3), (1, b1), (1, b3)]), "(1, b1) logged, then its own vote again: {node0:?}");
    assert_eq!((ring.r(0).next_execute(), ring.r(0).vouched), (1, 1));
    assert_eq!(ring.r(1).next_execute(), 1, "node 1 learned decree 0 from node 0");

    let ring = build(v7(), &[Op::Elect(2), Op::Promise(1, 2), Op::Promise(0, 2), Op::AdvanceMs(10310), Op::Elect(0)]);
    assert!((0..3).all(|i| ring.r(i).next_execute() >= 1), "everyone executed decree 0");
}
