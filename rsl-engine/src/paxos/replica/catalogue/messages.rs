//! The original's message-handling tests (docs/spec/behavior.md §3.1 rows 1–10, §3.2 rows 31–32), each
//! named after the original test, on the single-replica [`Bench`]. TestInvalidMessages (row 4)
//! is `hostile.rs` and `tests/hostile.rs`.
//!
//! The decree × ballot matrices are tables of cells in the original's order ([`Step`]), each
//! with its exact outcome: the reply, what is logged, and the replica's role, accepted vote
//! and promise after it. The original sends each cell of `MsgCombinations` twice, to its
//! client and its server port; the core has no ports, so once. It runs at protocol version 1
//! raised as it goes; these run at 6, whose rules for these messages are the same.
//!
//! Where our outcome differs from the original's, the cell says why; in short: a replica that
//! learns counts as Initializing meanwhile (a Join of a newer configuration included, for
//! which a primary steps down), a status round learns from any later decree whatever its
//! ballot, learning moves past a decree the peer's log proves chosen at a lower ballot, each
//! cached vote is answered rather than the last of a run, and a DefunctConfiguration is
//! recorded at most two below our configuration (docs/core.md, "Deliberate differences").

use super::*;
use Bal::*;
use Reply::*;
use Role::{Inactive, Initializing as Init, Preparing as Prep, Primary as Prim, Secondary as Sec};
use Step::{Move, Snapshot};

/// TestInitialize: the replica starts, follows, accepts the next decree and answers it.
#[test]
fn test_initialize() {
    let mut bench = Bench::new();
    bench.move_to_secondary();
    let Status { decree: d, ballot: b, .. } = bench.status();
    let vote = bench.vote(d + 1, b);
    let out = bench.deliver(vote);
    assert_eq!(sent(&out), [Sent::to(FAKE, MsgKind::VoteAccepted, d + 1, b)]);
    assert_eq!(executed(&out), [d], "the next decree at the same ballot makes ours chosen");
    assert_eq!(bench.status(), Status { role: Role::Secondary, decree: d + 1, ballot: b, max_ballot: b });
}

/// TestTransitions: every ordered pair of the six test states, each move checking every
/// message sent on the way.
#[test]
fn test_transitions() {
    let mut bench = Bench::initialized();
    for from in STATES {
        for to in STATES {
            bench.move_to(from);
            bench.move_to(to);
        }
    }
}

/// TestRandomTransitions: the original's fixed sequence of 19 moves, self-moves included.
#[test]
fn test_random_transitions() {
    use TestState::*;
    let mut bench = Bench::initialized();
    let sequence = [
        Secondary, Initialize, Prepare, Primary, Prepare, Secondary, Secondary, Prepare, Initialize, Primary, Primary, Initialize,
        Secondary, Prepare, Prepare, Primary, Secondary, Primary, Initialize,
    ];
    assert_eq!(sequence.len(), 19);
    for state in sequence {
        bench.move_to(state);
    }
}

/// A ballot named after the status at the last snapshot (the original's `m_status`): the
/// accepted ballot `A` and the promise `M`, exactly; `Low`/`High`: one id below or above,
/// under the fake's id (the original's `LowerBallot`/`HighBallot`).
#[derive(Clone, Copy, Debug)]
enum Bal {
    LowA,
    A,
    HighA,
    LowM,
    M,
    HighM,
    /// `A`'s id under the fake's id.
    AId,
}

impl Bal {
    fn of(self, s: &Status) -> Ballot {
        let fake = |n: u32| Ballot::new(n, id(FAKE));
        match self {
            Bal::LowA => fake(s.ballot.id - 1),
            Bal::A => s.ballot,
            Bal::HighA => fake(s.ballot.id + 1),
            Bal::LowM => fake(s.max_ballot.id - 1),
            Bal::M => s.max_ballot,
            Bal::HighM => fake(s.max_ballot.id + 1),
            Bal::AId => fake(s.ballot.id),
        }
    }
}

/// What the replica sends back for one cell, decrees relative to the snapshot's.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// To the fake: this kind at (decree, ballot).
    Back(MsgKind, i64, Bal),
    /// To the fake: PrepareAccepted at (decree, ballot), carrying the vote accepted before.
    Promise(i64, Bal),
    /// To all: a StatusQuery at the position before the cell (it went to Initializing).
    Query,
}

/// One step of a matrix, in the original's order.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The fake sends the test's message at (snapshot decree + `dec`, `bal`). The replica
    /// answers `reply`, persists the message's (decree, ballot) if `logged` (a vote as a vote,
    /// a Prepare or an adopted NotAccepted promise as a Prepare record), and ends at `after`:
    /// (role, accepted decree, accepted ballot, promise).
    Send { dec: i64, bal: Bal, reply: &'static [Reply], logged: bool, after: (Role, i64, Bal, Bal) },
    /// `MoveToState` again, and a new snapshot.
    Move,
    /// `GetStatus`: a new snapshot where the replica is.
    Snapshot,
}

const fn send(dec: i64, bal: Bal, reply: &'static [Reply], logged: bool, after: (Role, i64, Bal, Bal)) -> Step {
    Step::Send { dec, bal, reply, logged, after }
}

/// The message of `kind` the original's `GenerateMessage` makes for (decree, ballot). A
/// PrepareAccepted reports a vote one ballot id below, from that ballot's owner.
fn fake_message(bench: &Bench, kind: MsgKind, decree: u64, ballot: Ballot) -> Arc<Message> {
    match kind {
        MsgKind::Vote => bench.vote(decree, ballot),
        MsgKind::Prepare => bench.prepare(decree, ballot),
        MsgKind::PrepareAccepted => {
            let reported = bench.vote(decree, Ballot::new(ballot.id - 1, ballot.member));
            bench.prepare_accepted(FAKE, decree, ballot, &reported)
        }
        MsgKind::NotAccepted => bench.msg(id(FAKE), decree, ballot, Body::NotAccepted),
        MsgKind::VoteAccepted => bench.msg(id(FAKE), decree, ballot, Body::VoteAccepted),
        _ => unreachable!("no matrix of {kind:?}"),
    }
}

/// Moves to `state` and plays `script` with messages of `kind`, checking every cell.
fn run(bench: &mut Bench, state: TestState, kind: MsgKind, script: &[Step]) {
    bench.move_to(state);
    let mut snap = bench.status();
    for (i, step) in script.iter().enumerate() {
        let Step::Send { dec, bal, reply, logged, after } = *step else {
            if matches!(step, Step::Move) {
                bench.move_to(state);
            }
            snap = bench.status();
            continue;
        };
        let before = bench.status();
        let decree = snap.decree.checked_add_signed(dec).expect("a decree");
        let ballot = bal.of(&snap);
        let msg = fake_message(bench, kind, decree, ballot);
        let out = bench.deliver(msg);
        let cell = format!("{state:?}, step {i}: {kind:?} at ({decree}, {ballot:?}), from {before:?}");
        let at = |d: i64| snap.decree.checked_add_signed(d).expect("a decree");
        let expected: Vec<Sent> = reply
            .iter()
            .map(|r| match *r {
                Reply::Back(k, d, b) => Sent::to(FAKE, k, at(d), b.of(&snap)),
                Reply::Promise(d, b) => Sent::to(FAKE, MsgKind::PrepareAccepted, at(d), b.of(&snap)),
                Reply::Query => Sent::all(MsgKind::StatusQuery, before.decree, before.ballot),
            })
            .collect();
        assert_eq!(sent(&out), expected, "{cell}");
        for promise in out.iter().filter_map(|a| match a {
            Action::Send { msg, .. } => match &msg.body {
                Body::PrepareAccepted(vote) => Some(decree_ballot(vote)),
                _ => None,
            },
            _ => None,
        }) {
            assert_eq!(promise, (before.decree, before.ballot), "{cell}: a promise carries the accepted vote");
        }
        let record = if kind == MsgKind::Vote { MsgKind::Vote } else { MsgKind::Prepare };
        let expected = if logged { vec![(record, decree, ballot)] } else { Vec::new() };
        assert_eq!(persisted(&out), expected, "{cell}");
        let (role, d, b, m) = after;
        let expected = Status { role, decree: at(d), ballot: b.of(&snap), max_ballot: m.of(&snap) };
        assert_eq!(bench.status(), expected, "{cell}");
        let chosen = if expected.decree == before.decree + 1 { vec![before.decree] } else { Vec::new() };
        assert_eq!(executed(&out), chosen, "{cell}: a vote for the next decree at the same ballot makes ours chosen");
    }
}

/// The original's `MsgCombinations`: the message of `kind` at every (decree ± 1, ballot id ± 1)
/// around (our decree, `base`), each ignored: nothing sent, persisted or changed.
fn ignored_around(bench: &mut Bench, kind: MsgKind, base: Ballot) {
    let before = bench.status();
    for dec in -1..=1 {
        for inc in -1..=1 {
            let decree = before.decree.checked_add_signed(dec).expect("a decree");
            let ballot = Ballot::new(base.id.checked_add_signed(inc).expect("an id"), base.member);
            let msg = fake_message(bench, kind, decree, ballot);
            let out = bench.deliver(msg);
            let cell = format!("{kind:?} at ({decree}, {ballot:?}), from {before:?}");
            assert!(sent(&out).is_empty() && persisted(&out).is_empty(), "{cell}: {out:?}");
            assert_eq!(bench.status(), before, "{cell}");
        }
    }
}

/// The original's `MsgCombinations` with a response: every cell answered with `reply` at
/// (our decree, our promise), nothing changed.
fn refused_around(bench: &mut Bench, kind: MsgKind, base: Ballot, reply: MsgKind) {
    let before = bench.status();
    for dec in -1..=1 {
        for inc in -1..=1 {
            let decree = before.decree.checked_add_signed(dec).expect("a decree");
            let ballot = Ballot::new(base.id.checked_add_signed(inc).expect("an id"), base.member);
            let msg = fake_message(bench, kind, decree, ballot);
            let out = bench.deliver(msg);
            let cell = format!("{kind:?} at ({decree}, {ballot:?}), from {before:?}");
            assert_eq!(sent(&out), [Sent::to(FAKE, reply, before.decree, before.max_ballot)], "{cell}");
            assert!(persisted(&out).is_empty(), "{cell}");
            assert_eq!(bench.status(), before, "{cell}");
        }
    }
}

/// A cell the replica ignores: nothing sent or persisted, and it stays where the snapshot is.
const fn ignored(dec: i64, bal: Bal, role: Role) -> Step {
    send(dec, bal, &[], false, (role, 0, A, M))
}

/// A cell answered NotAccepted at our decree and promise, with nothing changed.
const fn refused(dec: i64, bal: Bal, role: Role) -> Step {
    send(dec, bal, &[Back(MsgKind::NotAccepted, 0, M)], false, (role, 0, A, M))
}

/// A cell that sends the replica to Initializing: a StatusQuery at its position, nothing else.
const fn initializes(dec: i64, bal: Bal) -> Step {
    send(dec, bal, &[Query], false, (Init, 0, A, M))
}

/// TestNotAcceptedMsg in a non-prepared state whose role is `role` (Primary, Secondary).
/// Same ballot: the next decree sends it to Initializing. Lower ballots are ignored. A higher
/// ballot at our decree is a promise to adopt (logged as a Prepare record) and follow; at the
/// next decree, Initializing.
fn not_accepted_unprepared(role: Role) -> [Step; 13] {
    [
        ignored(-1, A, role),
        ignored(0, A, role),
        initializes(1, A),
        Move,
        ignored(-1, LowA, role),
        ignored(0, LowA, role),
        ignored(1, LowA, role),
        ignored(-1, HighA, role),
        send(0, HighA, &[], true, (Sec, 0, A, HighA)),
        Move,
        initializes(1, HighA),
        Move,
        Snapshot,
    ]
}

/// TestNotAcceptedMsg in a prepared state (Preparing, SecondaryPrepared): one id above the
/// accepted ballot is still below the promise, so ignored at our decree; then the cells
/// around the promise.
fn not_accepted_prepared(role: Role) -> [Step; 21] {
    [
        ignored(-1, A, role),
        ignored(0, A, role),
        initializes(1, A),
        Move,
        ignored(-1, LowA, role),
        ignored(0, LowA, role),
        ignored(1, LowA, role),
        ignored(-1, HighA, role),
        ignored(0, HighA, role),
        initializes(1, HighA),
        Move,
        ignored(-1, M, role),
        ignored(-1, LowM, role),
        ignored(-1, HighM, role),
        ignored(0, M, role),
        ignored(0, LowM, role),
        send(0, HighM, &[], true, (Sec, 0, A, HighM)),
        Move,
        // The next decree under a ballot between the accepted one and the promise, or at or
        // above the promise: behind, so Initializing.
        initializes(1, M),
        Move,
        initializes(1, LowM),
    ]
}

#[test]
fn test_not_accepted_msg() {
    let mut bench = Bench::initialized();
    let not_accepted = MsgKind::NotAccepted;
    run(&mut bench, TestState::Primary, not_accepted, &not_accepted_unprepared(Prim));
    run(&mut bench, TestState::Secondary, not_accepted, &not_accepted_unprepared(Sec));
    for (state, role) in [(TestState::Prepare, Prep), (TestState::SecondaryPrepared, Sec)] {
        run(&mut bench, state, not_accepted, &not_accepted_prepared(role));
        run(&mut bench, state, not_accepted, &[initializes(1, HighM)]);
    }
}

/// TestNotAcceptedMsgInInitialize: every cell around the promise, and around the accepted
/// ballot when the promise is above it, ignored.
#[test]
fn test_not_accepted_msg_in_initialize() {
    let mut bench = Bench::initialized();
    for state in [TestState::Initialize, TestState::InitializePrepared] {
        bench.move_to(state);
        let s = bench.status();
        ignored_around(&mut bench, MsgKind::NotAccepted, Ballot::new(s.max_ballot.id, id(FAKE)));
        if s.max_ballot > s.ballot {
            ignored_around(&mut bench, MsgKind::NotAccepted, Ballot::new(s.ballot.id, id(FAKE)));
        }
    }
}

/// The replica as TestInitialize leaves it, one decree further (at decree 2), so that a cell
/// can send the decree two before ours.
fn two_decrees_in() -> Bench {
    let mut bench = Bench::initialized();
    let Status { decree, ballot, .. } = bench.status();
    let vote = bench.vote(decree + 1, ballot);
    assert_eq!(sent(&bench.deliver(vote)), [Sent::to(FAKE, MsgKind::VoteAccepted, decree + 1, ballot)]);
    bench
}

/// TestVoteMsg in Secondary, where the accepted ballot is the fake's.
const VOTE_IN_SECONDARY: [Step; 13] = [
    // The decree before at our ballot: silence, deliberately (docs/spec/behavior.md §2.8).
    ignored(-1, A, Sec),
    // Beyond the original's grid: two decrees behind is refused.
    refused(-2, A, Sec),
    // A duplicate is answered again, not logged again (erratum O3).
    send(0, A, &[Back(MsgKind::VoteAccepted, 0, A)], false, (Sec, 0, A, M)),
    send(1, A, &[Back(MsgKind::VoteAccepted, 1, A)], true, (Sec, 1, A, A)),
    Move,
    refused(-1, LowA, Sec),
    refused(0, LowA, Sec),
    refused(1, LowA, Sec),
    ignored(-1, HighA, Sec),
    send(0, HighA, &[Back(MsgKind::VoteAccepted, 0, HighA)], true, (Sec, 0, HighA, HighA)),
    Move,
    // A gap: the next decree under another ballot.
    initializes(1, HighA),
    Move,
];

/// TestVoteMsg in Primary (its re-proposal outstanding): the accepted ballot is its own, so
/// the fake sends only lower and higher ones; a higher one makes it step down and follow.
const VOTE_IN_PRIMARY: [Step; 8] = [
    refused(-1, LowA, Prim),
    refused(0, LowA, Prim),
    refused(1, LowA, Prim),
    ignored(-1, HighA, Prim),
    send(0, HighA, &[Back(MsgKind::VoteAccepted, 0, HighA)], true, (Sec, 0, HighA, HighA)),
    Move,
    initializes(1, HighA),
    Move,
];

#[test]
fn test_vote_msg() {
    let mut bench = two_decrees_in();
    run(&mut bench, TestState::Primary, MsgKind::Vote, &VOTE_IN_PRIMARY);
    run(&mut bench, TestState::Secondary, MsgKind::Vote, &VOTE_IN_SECONDARY);
}

/// TestVoteMsgInPrepared from the cell below the promise on, in a state whose role is `role`.
/// A vote between the accepted ballot and the promise is logged but answered NotAccepted
/// (docs/spec/behavior.md §2.8); the next decree at that ballot then makes ours chosen, and is itself
/// logged and refused. The replica follows: Preparing gives up its candidacy (the original
/// does not check the role here).
fn vote_below_promise(role: Role) -> [Step; 9] {
    [
        refused(-1, LowM, role),
        send(0, LowM, &[Back(MsgKind::NotAccepted, 0, M)], true, (Sec, 0, LowM, M)),
        send(1, LowM, &[Back(MsgKind::NotAccepted, 1, M)], true, (Sec, 1, LowM, M)),
        Snapshot,
        ignored(-1, HighM, Sec),
        send(0, HighM, &[Back(MsgKind::VoteAccepted, 0, HighM)], true, (Sec, 0, HighM, HighM)),
        Move,
        initializes(1, HighM),
        Move,
    ]
}

#[test]
fn test_vote_msg_in_prepared() {
    let mut bench = Bench::initialized();
    // Preparing: the promise is the replica's own ballot, which no fake's vote carries.
    run(&mut bench, TestState::Prepare, MsgKind::Vote, &vote_below_promise(Prep));
    // SecondaryPrepared: the promise is the fake's.
    let at_promise = [
        ignored(-1, M, Sec),
        send(0, M, &[Back(MsgKind::VoteAccepted, 0, M)], true, (Sec, 0, M, M)),
        Move,
        // The next decree under another ballot than the accepted one: a gap.
        initializes(1, M),
        Move,
    ];
    let script: Vec<Step> = at_promise.into_iter().chain(vote_below_promise(Sec)).collect();
    run(&mut bench, TestState::SecondaryPrepared, MsgKind::Vote, &script);
}

/// TestVoteAcceptedMsg: outside the primary role a VoteAccepted is ignored, whatever its
/// decree and ballot (around the accepted ballot, and around the promise under either id).
#[test]
fn test_vote_accepted_msg() {
    let mut bench = Bench::initialized();
    for state in
        [TestState::Secondary, TestState::SecondaryPrepared, TestState::Prepare, TestState::Initialize, TestState::InitializePrepared]
    {
        bench.move_to(state);
        let s = bench.status();
        if s.ballot < s.max_ballot {
            ignored_around(&mut bench, MsgKind::VoteAccepted, Ballot::new(s.ballot.id, id(FAKE)));
        }
        ignored_around(&mut bench, MsgKind::VoteAccepted, Ballot::new(s.max_ballot.id, id(FAKE)));
        ignored_around(&mut bench, MsgKind::VoteAccepted, Ballot::new(s.max_ballot.id, id(REAL)));
    }
}

/// TestPrepareMsg from the cells below the promise on, in a state whose role is `role`. Below
/// the promise: NotAccepted at our decree and promise. Above it: the promise is logged and
/// answered with our accepted vote; at our decree the replica follows, at the next one it
/// goes to Initializing. The decree before, above the promise: silence.
fn prepare_around_promise(role: Role) -> [Step; 9] {
    [
        refused(-1, LowM, role),
        refused(0, LowM, role),
        refused(1, LowM, role),
        ignored(-1, HighM, role),
        // Beyond the original's grid: two decrees behind, refused whatever the ballot.
        refused(-2, HighM, role),
        send(0, HighM, &[Promise(0, HighM)], true, (Sec, 0, A, HighM)),
        Move,
        send(1, HighM, &[Promise(1, HighM), Query], true, (Init, 0, A, HighM)),
        Move,
    ]
}

/// The cells at the promise itself, when it is the fake's (a Prepare carries its sender's
/// ballot): answered, nothing logged (it is no higher).
const PREPARE_AT_PROMISE: [Step; 4] =
    [send(0, M, &[Promise(0, M)], false, (Sec, 0, A, M)), Move, send(1, M, &[Promise(1, M), Query], false, (Init, 0, A, M)), Move];

#[test]
fn test_prepare_msg() {
    let mut bench = two_decrees_in();
    // Primary: the accepted ballot and the promise are its own; the fake's ballot of the same
    // id is below them.
    let below: [Step; 3] = [refused(-1, AId, Prim), refused(-1, LowA, Prim), ignored(-1, HighA, Prim)];
    let script: Vec<Step> = below.into_iter().chain(prepare_around_promise(Prim)).collect();
    run(&mut bench, TestState::Primary, MsgKind::Prepare, &script);
    // Secondary: the decree before at our ballot or above it gets silence, below it NotAccepted.
    let below: [Step; 3] = [ignored(-1, AId, Sec), refused(-1, LowA, Sec), ignored(-1, HighA, Sec)];
    let script: Vec<Step> = below.into_iter().chain(PREPARE_AT_PROMISE).chain(prepare_around_promise(Sec)).collect();
    run(&mut bench, TestState::Secondary, MsgKind::Prepare, &script);
    // Prepared states: everything around the accepted ballot is below the promise.
    for (state, role) in [(TestState::Prepare, Prep), (TestState::SecondaryPrepared, Sec)] {
        bench.move_to(state);
        let s = bench.status();
        refused_around(&mut bench, MsgKind::Prepare, Ballot::new(s.ballot.id, id(FAKE)), MsgKind::NotAccepted);
        let at_promise: &[Step] = if s.max_ballot.member == id(FAKE) { &PREPARE_AT_PROMISE } else { &[] };
        let script: Vec<Step> = at_promise.iter().copied().chain(prepare_around_promise(role)).collect();
        run(&mut bench, state, MsgKind::Prepare, &script);
    }
}

/// TestPrepareMsgInInitialize: an initializing replica answers no Prepare, and logs none,
/// except NotAccepted to one below its promise (at the decree before, only below it).
#[test]
fn test_prepare_msg_in_initialize() {
    let mut bench = Bench::initialized();
    let unanswered: [Step; 8] = [
        ignored(0, M, Init),
        ignored(1, M, Init),
        refused(-1, LowM, Init),
        refused(0, LowM, Init),
        refused(1, LowM, Init),
        ignored(-1, HighM, Init),
        ignored(0, HighM, Init),
        ignored(1, HighM, Init),
    ];
    let below: [Step; 3] = [ignored(-1, AId, Init), refused(-1, LowA, Init), ignored(-1, HighA, Init)];
    let script: Vec<Step> = below.into_iter().chain(unanswered).collect();
    run(&mut bench, TestState::Initialize, MsgKind::Prepare, &script);
    bench.move_to(TestState::InitializePrepared);
    let s = bench.status();
    refused_around(&mut bench, MsgKind::Prepare, Ballot::new(s.ballot.id, id(FAKE)), MsgKind::NotAccepted);
    run(&mut bench, TestState::InitializePrepared, MsgKind::Prepare, &unanswered);
}

/// TestPrepareAcceptedMsg outside Preparing: ignored, whatever its decree and ballot.
#[test]
fn test_prepare_accepted_msg() {
    let mut bench = Bench::initialized();
    for state in
        [TestState::Primary, TestState::Secondary, TestState::SecondaryPrepared, TestState::Initialize, TestState::InitializePrepared]
    {
        bench.move_to(state);
        let s = bench.status();
        if s.max_ballot > s.ballot {
            ignored_around(&mut bench, MsgKind::PrepareAccepted, Ballot::new(s.ballot.id, id(FAKE)));
        }
        ignored_around(&mut bench, MsgKind::PrepareAccepted, Ballot::new(s.max_ballot.id, id(FAKE)));
        ignored_around(&mut bench, MsgKind::PrepareAccepted, Ballot::new(s.max_ballot.id, id(REAL)));
    }
    prepare_accepted_in_preparing(&mut bench);
}

/// TestPrepareAcceptedMsg in Preparing: only an answer at our (decree, ballot) counts; one
/// whose vote is ahead of the Prepare is rejected; among the others, a vote at our decree
/// under a higher ballot than ours is the value re-proposed, any other leaves ours.
fn prepare_accepted_in_preparing(bench: &mut Bench) {
    bench.move_to(TestState::Prepare);
    let s = bench.status();
    ignored_around(bench, MsgKind::PrepareAccepted, Ballot::new(s.ballot.id, id(FAKE)));
    ignored_around(bench, MsgKind::PrepareAccepted, Ballot::new(s.max_ballot.id, id(FAKE)));
    for dec in -1..=1 {
        for inc in -1..=1 {
            if (dec, inc) == (0, 0) {
                continue;
            }
            let decree = s.decree.checked_add_signed(dec).expect("a decree");
            let msg =
                fake_message(bench, MsgKind::PrepareAccepted, decree, Ballot::new(s.max_ballot.id.saturating_add_signed(inc), id(REAL)));
            let out = bench.deliver(msg);
            assert!(sent(&out).is_empty() && persisted(&out).is_empty(), "({dec}, {inc}): {out:?}");
            assert_eq!(bench.status(), s);
        }
    }
    // Each case: the reports sent in order, and the value the new primary re-proposes (the
    // report's, or its own accepted vote's).
    let fake = |id_: u32| Ballot::new(id_, id(FAKE));
    // (decree offset, ballot id offset from the accepted ballot) of each report's vote, and
    // whether the last report's value wins.
    type Reports = &'static [(i64, i64)];
    let cases: [(Reports, bool); 5] =
        [(&[(0, 0)], false), (&[(-1, 0)], false), (&[(1, 0), (0, 1)], true), (&[(1, 1), (0, -1)], false), (&[(-1, -1)], false)];
    for (reports, theirs) in cases {
        bench.move_to(TestState::Prepare);
        let s = bench.status();
        let ours = bench.r.accepted.as_vote().expect("a vote").requests.clone();
        let mut proposed = None;
        for (i, &(dec, inc)) in reports.iter().enumerate() {
            let vote = bench.vote(s.decree.checked_add_signed(dec).expect("a decree"), fake(s.ballot.id.saturating_add_signed(inc as i32)));
            let promise = bench.prepare_accepted(FAKE, s.decree, s.max_ballot, &vote);
            let out = bench.deliver(promise);
            let last = i + 1 == reports.len();
            let expected = if last { vec![Sent::all(MsgKind::Vote, s.decree, s.max_ballot)] } else { Vec::new() };
            assert_eq!(sent(&out), expected, "{reports:?}: report {i}");
            if last {
                let value = |vote: &Message| vote.as_vote().expect("a vote").requests.clone();
                proposed = out.iter().find_map(|a| match a {
                    Action::Send { msg, .. } => Some(value(msg)),
                    _ => None,
                });
                let expected_value = if theirs { value(&vote) } else { ours.clone() };
                assert_eq!(proposed.as_ref(), Some(&expected_value), "{reports:?}: the value re-proposed");
            }
        }
        assert!(proposed.is_some());
        assert_eq!(bench.status(), Status { role: Prim, decree: s.decree, ballot: s.max_ballot, max_ballot: s.max_ballot });
    }
}

/// The decrees and ballots of `records`, as fake votes.
fn votes(bench: &Bench, records: &[(u64, Ballot)]) -> Vec<Arc<Message>> {
    records.iter().map(|&(d, b)| bench.vote(d, b)).collect()
}

/// The aborts among `out`: (cookie, reason).
fn aborts(out: &[Action]) -> Vec<(Cookie, AbortReason)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Abort { cookie, reason, .. } => Some((*cookie, *reason)),
            _ => None,
        })
        .collect()
}

fn notifications(out: &[Action]) -> Vec<&Action> {
    out.iter().filter(|a| matches!(a, Action::NotifyStatus { .. } | Action::NotifyPrimaryRecovered)).collect()
}

/// TestVoteAcceptedMsgInPrimary: a new primary whose re-proposed decree was accepted but not
/// executed under the old ballot. Only a VoteAccepted at (decree, our ballot) completes it,
/// and it executes at once; while a decree is in flight submissions wait and go out together
/// as the next vote; a NotAccepted with a higher ballot makes the primary step down and abort
/// what was not chosen, executing nothing more.
#[test]
fn test_vote_accepted_msg_in_primary() {
    let mut bench = Bench::initialized();
    bench.move_to_secondary();
    let s = bench.status();
    let vote = bench.vote(s.decree + 1, s.ballot);
    let out = bench.deliver(vote);
    assert_eq!(sent(&out), [Sent::to(FAKE, MsgKind::VoteAccepted, s.decree + 1, s.ballot)]);
    assert_eq!(executed(&out), [s.decree]);
    bench.move_to_primary();
    let s = bench.status();
    let m = s.max_ballot;
    assert_eq!(bench.r.next_execute(), s.decree, "the re-proposed decree has not executed");
    for dec in -1..=1 {
        for inc in -1..=1 {
            // The original leaves out a lower decree at a higher ballot and the reverse.
            if (dec < 0 && inc > 0) || (dec > 0 && inc < 0) {
                continue;
            }
            let decree = s.decree.checked_add_signed(dec).expect("a decree");
            let ballot = Ballot::new(m.id.checked_add_signed(inc).expect("an id"), m.member);
            let msg = bench.msg(id(FAKE), decree, ballot, Body::VoteAccepted);
            let out = bench.deliver(msg);
            let cell = format!("VoteAccepted at ({decree}, {ballot:?})");
            assert!(sent(&out).is_empty(), "{cell}: {out:?}");
            if (dec, inc) == (0, 0) {
                assert_eq!(executed(&out), [s.decree], "{cell}: chosen, executed at once");
                let notified = notifications(&out);
                assert!(matches!(notified.as_slice(), [Action::NotifyStatus { primary: true }, Action::NotifyPrimaryRecovered]), "{cell}");
            } else {
                assert!(executed(&out).is_empty() && notifications(&out).is_empty(), "{cell}: {out:?}");
            }
        }
    }
    assert_eq!(bench.status(), s);
    assert!(bench.r.is_primary());
    let out = bench.submit(b"first", 1);
    assert_eq!(sent(&out), [Sent::all(MsgKind::Vote, s.decree + 1, m)]);
    let out = bench.submit(b"second", 2);
    assert!(sent(&out).is_empty(), "waits for the vote in flight");
    let accepted = bench.msg(id(FAKE), s.decree + 1, m, Body::VoteAccepted);
    let out = bench.deliver(accepted);
    assert_eq!(executed(&out), [s.decree + 1]);
    assert_eq!(sent(&out), [Sent::all(MsgKind::Vote, s.decree + 2, m)]);
    let out = bench.submit(b"third", 3);
    assert!(sent(&out).is_empty());
    let higher = Ballot::new(m.id + 1, id(FAKE));
    let refusal = bench.msg(id(FAKE), s.decree + 2, higher, Body::NotAccepted);
    let out = bench.deliver(refusal);
    assert_eq!(aborts(&out), [(2, AbortReason::NotPrimary), (3, AbortReason::NotPrimary)]);
    assert!(matches!(notifications(&out).as_slice(), [Action::NotifyStatus { primary: false }]));
    assert!(executed(&out).is_empty());
    assert_eq!(persisted(&out), [(MsgKind::Prepare, s.decree + 2, higher)], "the promise adopted");
    assert_eq!(bench.status(), Status { role: Sec, decree: s.decree + 2, ballot: m, max_ballot: higher });
    assert_eq!(bench.r.next_execute(), s.decree + 2, "the sequence number stays");
}

/// Delivers a status reply from the fake `at` (decree, ballot) to the query at `query`, and
/// checks the replica asks the fake for its log from `query`'s decree.
fn learn_from_fake(bench: &mut Bench, at: (u64, Ballot), query: (u64, Ballot)) {
    let reply = bench.status_response(FAKE, at, query, i64::MAX);
    let out = bench.deliver(reply);
    assert!(sent(&out).is_empty(), "{out:?}");
    assert!(
        matches!(out.as_slice(), [Action::FetchVotes { from, decree }] if *from == id(FAKE) && *decree == query.0),
        "learns from the fake: {out:?}"
    );
}

/// Answers the fetch with `records`.
fn learned(bench: &mut Bench, records: &[(u64, Ballot)]) -> Vec<Action> {
    let records = votes(bench, records);
    bench.input(Input::Learned { from: id(FAKE), records })
}

fn fake(ballot_id: u32) -> Ballot {
    Ballot::new(ballot_id, id(FAKE))
}

/// TestStatusResponseMsg: replies to another query are ignored; a primary ignores every
/// reply; a stable replica that hears of a peer one decree ahead learns from it.
#[test]
fn test_status_response_msg() {
    let mut bench = Bench::initialized();
    for state in [TestState::Primary, TestState::Secondary, TestState::SecondaryPrepared, TestState::Prepare] {
        bench.move_to(state);
        let s = bench.status();
        let (d, a, m) = (s.decree, s.ballot, s.max_ballot);
        let high_a = fake(a.id + 1);
        // The last, beyond the original: a reply to a query at our decree under another ballot.
        let mut replies = vec![
            bench.status_response(FAKE, (d, a), (d + 1, a), i64::MAX),
            bench.status_response(FAKE, (d, a), (d - 1, a), i64::MAX),
            bench.status_response(FAKE, (d, a), (d, high_a), i64::MAX),
        ];
        if state == TestState::Primary {
            replies.push(bench.status_response(FAKE, (d + 1, high_a), (d, a), i64::MAX));
        }
        for reply in replies {
            let out = bench.deliver(reply);
            assert!(out.is_empty(), "{state:?}: {out:?}");
            assert_eq!(bench.status(), s);
        }
        if state == TestState::Primary {
            continue;
        }
        // One decree ahead at a higher ballot: learn. Learning, our replica counts as
        // Initializing. Its log holds our vote, the next decree at our ballot, and that decree
        // again at its own; with nothing cached to reach, another status round follows
        // (erratum O9).
        learn_from_fake(&mut bench, (d + 1, high_a), (d, a));
        assert_eq!(bench.r.role(), Init);
        let out = learned(&mut bench, &[(d, a), (d + 1, a), (d + 1, high_a)]);
        assert_eq!(persisted(&out), [(MsgKind::Vote, d + 1, a), (MsgKind::Vote, d + 1, high_a)]);
        assert_eq!(executed(&out), [d]);
        assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, d + 1, high_a)]);
        assert_eq!(bench.status(), Status { role: Init, decree: d + 1, ballot: high_a, max_ballot: m.max(high_a) });
        // Again, with a stale vote arriving while it learns: cached, then refused once the
        // learned votes reach it.
        bench.move_to(state);
        let s = bench.status();
        let (d, a, m) = (s.decree, s.ballot, s.max_ballot);
        learn_from_fake(&mut bench, (d + 1, fake(a.id + 1)), (d, a));
        let stale = bench.vote(d - 1, fake(a.id - 1));
        assert!(bench.deliver(stale).is_empty(), "cached");
        let out = learned(&mut bench, &[(d, a)]);
        assert_eq!(sent(&out), [Sent::to(FAKE, MsgKind::NotAccepted, d, m)]);
        assert!(persisted(&out).is_empty());
        assert_eq!(bench.status(), Status { role: Sec, ..s });
    }
}

/// A status reply whose sender's log starts at `min_decree_in_log` and whose checkpoint is of
/// `checkpointed` (100 KB).
fn with_log(msg: &Message, min_decree_in_log: u64, checkpointed: u64) -> Arc<Message> {
    let mut msg = msg.clone();
    if let Body::StatusResponse(s) = &mut msg.body {
        (s.min_decree_in_log, s.checkpointed_decree, s.checkpoint_size) = (min_decree_in_log, checkpointed, 100 * 1024);
    }
    Arc::new(msg)
}

/// TestStatusResponseMsgInInitialize, in Initialize and InitializePrepared.
#[test]
fn test_status_response_msg_in_initialize() {
    let mut bench = Bench::initialized();
    let scenarios: [fn(&mut Bench, TestState); 8] = [
        replies_to_other_queries_are_ignored,
        stands_when_nobody_is_ahead,
        learns_from_a_later_decree_at_a_lower_ballot,
        learns_our_decree_under_a_higher_ballot,
        learns_only_from_logs_in_sequence,
        learns_ten_decrees_ahead,
        fetches_a_checkpoint_past_a_truncated_log,
        learns_up_to_a_cached_vote_after_a_failed_checkpoint,
    ];
    for state in [TestState::Initialize, TestState::InitializePrepared] {
        for scenario in scenarios {
            scenario(&mut bench, state);
        }
    }
}

/// Replies to a query other than our last are ignored.
fn replies_to_other_queries_are_ignored(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    let (d, a) = (s.decree, s.ballot);
    // The last, beyond the original: a query at our decree under another ballot.
    for query in [(d + 1, a), (d - 1, a), (d, fake(a.id + 1))] {
        let reply = bench.status_response(FAKE, (d, a), query, i64::MAX);
        assert!(bench.deliver(reply).is_empty(), "a reply to another query is ignored");
        assert_eq!(bench.status(), s);
    }
}

/// Nobody ahead (a lower decree, a lower ballot, a lower decree at a higher ballot): the
/// replica stands (its election is due: see the harness).
fn stands_when_nobody_is_ahead(bench: &mut Bench, state: TestState) {
    for (dec, inc) in [(-1, 0), (0, -1), (-1, 1)] {
        bench.move_to(state);
        let s = bench.status();
        let at = (s.decree.checked_add_signed(dec).expect("a decree"), fake(s.ballot.id.checked_add_signed(inc).expect("an id")));
        bench.election_due();
        let ballot = bench.candidate_ballot();
        let reply = bench.status_response(FAKE, at, (s.decree, s.ballot), i64::MAX);
        let out = bench.deliver(reply);
        assert_eq!(sent(&out), [Sent::all(MsgKind::Prepare, s.decree, ballot)], "at {at:?}");
        assert_eq!(bench.status(), Status { role: Prep, max_ballot: ballot, ..s });
    }
}

/// The next decree at a lower ballot. The original stands; ours learns: a vote for a decree
/// is proposed only once the one before it is chosen, so that log proves ours (docs/core.md,
/// "Deliberate differences": any later decree, whatever its ballot). Nothing to learn here.
fn learns_from_a_later_decree_at_a_lower_ballot(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    learn_from_fake(bench, (s.decree + 1, fake(s.ballot.id - 1)), (s.decree, s.ballot));
    let out = learned(bench, &[]);
    assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, s.decree, s.ballot)]);
    assert_eq!(bench.status(), Status { role: Init, ..s });
}

/// Prepared: our decree under a ballot between ours and our promise: learn it.
fn learns_our_decree_under_a_higher_ballot(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    let (d, a, m) = (s.decree, s.ballot, s.max_ballot);
    if m > a {
        learn_from_fake(bench, (d, fake(m.id - 1)), (d, a));
        let out = learned(bench, &[(d, a), (d, m)]);
        assert_eq!(persisted(&out), [(MsgKind::Vote, d, m)]);
        assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, d, m)]);
        assert_eq!(bench.status(), Status { role: Init, decree: d, ballot: m, max_ballot: m });
    }
}

/// A peer one decree ahead at a higher ballot, whose log does not start at our decree, or has
/// a gap, or lies below our ballot.
fn learns_only_from_logs_in_sequence(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    let (d, a, m) = (s.decree, s.ballot, s.max_ballot);
    let high_a = fake(a.id + 1);
    // A log that does not start at our decree, then one with a gap: nothing learned, another
    // round (the original runs these without moving in between).
    for records in [vec![(d - 1, a), (d, a), (d + 1, a)], vec![(d, a), (d + 1, high_a)]] {
        learn_from_fake(bench, (d + 1, high_a), (d, a));
        let out = learned(bench, &records);
        assert!(persisted(&out).is_empty(), "{records:?}");
        assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, d, a)], "{records:?}");
        assert_eq!(bench.status(), s);
    }
    // A log below our ballot: the original learns nothing from it. Ours: the next decree at
    // the same ballot proves our decree chosen, so we move on to it (docs/core.md, "Deliberate
    // differences": learning past a vote at a higher ballot than the chosen one).
    let low_a = fake(a.id - 1);
    learn_from_fake(bench, (d + 1, high_a), (d, a));
    let out = learned(bench, &[(d, low_a), (d + 1, low_a)]);
    assert_eq!(persisted(&out), [(MsgKind::Vote, d + 1, low_a)]);
    assert_eq!(executed(&out), [d]);
    assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, d + 1, low_a)]);
    assert_eq!(bench.status(), Status { role: Init, decree: d + 1, ballot: low_a, max_ballot: m });
    // The same followed by the next decree at a higher ballot: both end at that vote (the
    // original gets there by logging a copy of it under our ballot).
    bench.move_to(state);
    let s = bench.status();
    let (d, a, m) = (s.decree, s.ballot, s.max_ballot);
    let (low_a, high_a) = (fake(a.id - 1), fake(a.id + 1));
    learn_from_fake(bench, (d + 1, high_a), (d, a));
    let out = learned(bench, &[(d, low_a), (d + 1, low_a), (d + 1, high_a)]);
    assert_eq!(persisted(&out), [(MsgKind::Vote, d + 1, low_a), (MsgKind::Vote, d + 1, high_a)]);
    assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, d + 1, high_a)]);
    assert_eq!(bench.status(), Status { role: Init, decree: d + 1, ballot: high_a, max_ballot: m.max(high_a) });
}

/// Ten decrees ahead, its log still holding ours: learn them all.
fn learns_ten_decrees_ahead(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    let (d, a) = (s.decree, s.ballot);
    let reply = with_log(&bench.status_response(FAKE, (d + 10, a), (d, a), i64::MAX), d, 0);
    let out = bench.deliver(reply);
    assert!(matches!(out.as_slice(), [Action::FetchVotes { decree, .. }] if *decree == d), "{out:?}");
    let records: Vec<(u64, Ballot)> = (d..=d + 10).map(|n| (n, a)).collect();
    let out = learned(bench, &records);
    assert_eq!(executed(&out), (d..d + 10).collect::<Vec<_>>());
    assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, d + 10, a)]);
}

/// Ten ahead, its log truncated past our decree: wait for a checkpoint that covers it,
/// fetch it, and when that fails, start again.
fn fetches_a_checkpoint_past_a_truncated_log(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    let (d, a) = (s.decree, s.ballot);
    let reply = bench.status_response(FAKE, (d + 10, a), (d, a), i64::MAX);
    assert!(bench.deliver(with_log(&reply, d + 1, 0)).is_empty(), "no checkpoint covers our decree: wait");
    let out = bench.deliver(with_log(&reply, d + 1, d));
    let fetch = Action::FetchCheckpoint { from: id(FAKE), decree: d, size: 100 * 1024, load: true };
    assert_eq!(format!("{out:?}"), format!("{:?}", [fetch]));
    let out = bench.input(Input::CheckpointFetched(None));
    assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, d, a)]);
}

/// With a vote cached three decrees ahead: the checkpoint fails again, then a peer whose
/// log reaches the cached vote is learned from, and the cached vote answered.
fn learns_up_to_a_cached_vote_after_a_failed_checkpoint(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    let (d, a, m) = (s.decree, s.ballot, s.max_ballot);
    let ahead = bench.vote(d + 3, a);
    assert!(bench.deliver(ahead).is_empty(), "cached");
    let reply = bench.status_response(FAKE, (d + 10, a), (d, a), i64::MAX);
    let out = bench.deliver(with_log(&reply, d + 1, d + 1));
    assert!(matches!(out.as_slice(), [Action::FetchCheckpoint { decree, .. }] if *decree == d + 1), "{out:?}");
    let out = bench.input(Input::CheckpointFetched(None));
    assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, d, a)]);
    learn_from_fake(bench, (d + 3, a), (d, a));
    let records: Vec<(u64, Ballot)> = (d..=d + 3).map(|n| (n, a)).collect();
    let out = learned(bench, &records);
    let answer = if a == m { MsgKind::VoteAccepted } else { MsgKind::NotAccepted };
    assert_eq!(sent(&out), [Sent::to(FAKE, answer, d + 3, m)]);
    assert_eq!(executed(&out), [d, d + 1, d + 2]);
    assert_eq!(bench.status(), Status { role: Sec, decree: d + 3, ballot: a, max_ballot: m });
}

/// Delivers each vote while the replica initializes: all cached, none answered.
fn cache(bench: &mut Bench, records: &[(u64, Ballot)]) {
    for vote in votes(bench, records) {
        let out = bench.deliver(vote);
        assert!(out.is_empty(), "cached: {out:?}");
    }
}

/// Our replica answers each cached vote as it drains the cache; the original answers only the
/// last of a run of votes from one sender (docs/spec/behavior.md §2.8). The last answer is the one the
/// original sends. `answered`: the (decree, ballot) of each vote answered, in order, from
/// the status `s`.
fn answers(s: &Status, answered: &[(u64, Ballot)]) -> Vec<Sent> {
    let mut promise = s.max_ballot;
    answered
        .iter()
        .map(|&(d, b)| {
            promise = promise.max(b);
            let kind = if b < promise { MsgKind::NotAccepted } else { MsgKind::VoteAccepted };
            Sent::to(FAKE, kind, d, promise)
        })
        .collect()
}

/// TestVoteMsgInInitialize: an initializing replica caches votes (dropping any not newer than
/// the last cached), learns up to the first of them, then takes them in order, learning again
/// past a gap.
#[test]
fn test_vote_msg_in_initialize() {
    let mut bench = Bench::initialized();
    let scenarios: [fn(&mut Bench, TestState); 4] =
        [a_stale_cached_vote, cached_votes_ahead, cached_votes_at_a_higher_ballot, a_gap_among_cached_votes];
    for state in [TestState::Initialize, TestState::InitializePrepared] {
        for scenario in scenarios {
            scenario(&mut bench, state);
        }
    }
}

/// A vote for the decree before ours: learning stops at once at our decree, and the cached
/// vote is stale (refused if below the promise, silence otherwise).
fn a_stale_cached_vote(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    let (d, a, m) = (s.decree, s.ballot, s.max_ballot);
    cache(bench, &[(d - 1, a)]);
    learn_from_fake(bench, (d + 1, a), (d, a));
    let out = learned(bench, &[(d, a), (d + 1, a)]);
    let refusal = if m > a { vec![Sent::to(FAKE, MsgKind::NotAccepted, d, m)] } else { Vec::new() };
    assert_eq!(sent(&out), refusal);
    assert!(persisted(&out).is_empty());
    assert_eq!(bench.status(), Status { role: Sec, ..s });
}

/// Votes ahead, a duplicate among them, the last at a higher ballot: learning fills in up to
/// the first, the rest follow from the cache.
fn cached_votes_ahead(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    let (d, a, m) = (s.decree, s.ballot, s.max_ballot);
    let high_a = fake(a.id + 1);
    cache(bench, &[(d + 1, a), (d + 2, a), (d + 2, a), (d + 3, a), (d + 3, high_a)]);
    learn_from_fake(bench, (d + 1, a), (d, a));
    let out = learned(bench, &[(d, a), (d + 1, a)]);
    let logged = [(d + 1, a), (d + 2, a), (d + 3, a), (d + 3, high_a)];
    assert_eq!(sent(&out), answers(&s, &logged));
    assert_eq!(persisted(&out), logged.map(|(d, b)| (MsgKind::Vote, d, b)));
    assert_eq!(executed(&out), [d, d + 1, d + 2]);
    assert_eq!(bench.status(), Status { role: Sec, decree: d + 3, ballot: high_a, max_ballot: m.max(high_a) });
}

/// Votes at a higher ballot from our decree on, with lower and older ones between them
/// (dropped from the cache): learning our own decree is enough.
fn cached_votes_at_a_higher_ballot(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    let (d, a, m) = (s.decree, s.ballot, s.max_ballot);
    let high_a = fake(a.id + 1);
    cache(bench, &[(d, high_a), (d + 1, high_a), (d + 1, a), (d, high_a), (d, a), (d + 2, high_a)]);
    assert_eq!(bench.r.cache.len(), 3, "only votes newer than the last cached are kept");
    learn_from_fake(bench, (d + 1, a), (d, a));
    let out = learned(bench, &[(d, a)]);
    let logged = [(d, high_a), (d + 1, high_a), (d + 2, high_a)];
    assert_eq!(sent(&out), answers(&s, &logged));
    assert_eq!(persisted(&out), logged.map(|(d, b)| (MsgKind::Vote, d, b)));
    assert_eq!(executed(&out), [d, d + 1]);
    assert_eq!(bench.status(), Status { role: Sec, decree: d + 2, ballot: high_a, max_ballot: m.max(high_a) });
}

/// A gap among the cached votes: taken up to it, then learning again past it. (The original
/// answers none of the votes before the gap: the gap clears the run unanswered.)
fn a_gap_among_cached_votes(bench: &mut Bench, state: TestState) {
    bench.move_to(state);
    let s = bench.status();
    let (d, a, m) = (s.decree, s.ballot, s.max_ballot);
    cache(bench, &[(d + 1, a), (d + 2, a), (d + 4, a), (d + 5, a)]);
    learn_from_fake(bench, (d + 1, a), (d, a));
    let out = learned(bench, &[(d, a), (d + 1, a), (d + 2, a)]);
    let mut expected = answers(&s, &[(d + 1, a), (d + 2, a)]);
    expected.push(Sent::all(MsgKind::StatusQuery, d + 2, a));
    assert_eq!(sent(&out), expected);
    assert_eq!(persisted(&out), [(MsgKind::Vote, d + 1, a), (MsgKind::Vote, d + 2, a)]);
    assert_eq!(bench.status(), Status { role: Init, decree: d + 2, ballot: a, max_ballot: m });
    assert!(bench.r.cache.is_empty(), "the gap drops the cache");
    cache(bench, &[(d + 5, a)]);
    learn_from_fake(bench, (d + 5, a), (d + 2, a));
    let records: Vec<(u64, Ballot)> = (d + 2..=d + 5).map(|n| (n, a)).collect();
    let out = learned(bench, &records);
    assert_eq!(sent(&out), answers(&s, &[(d + 5, a)]));
    assert_eq!(executed(&out), [d + 2, d + 3, d + 4]);
    assert_eq!(bench.status(), Status { role: Sec, decree: d + 5, ballot: a, max_ballot: m });
}

/// A Join from the fake announcing configuration `config`, whose log starts at
/// `min_decree_in_log` and whose checkpoint is of `checkpointed` (100 KB).
fn join(bench: &Bench, config: u32, min_decree_in_log: u64, checkpointed: u64) -> Arc<Message> {
    let body = JoinBody { learn_port: 2, min_decree_in_log, checkpointed_decree: checkpointed, checkpoint_size: 100 * 1024 };
    Arc::new(Message::new(Header::new(bench.r.version(), id(FAKE), 0, config, Ballot::EMPTY), Body::Join(body)))
}

/// `msg` as a message of configuration `config`.
fn in_config(msg: &Message, config: u32) -> Arc<Message> {
    let mut msg = msg.clone();
    msg.header.config = config;
    Arc::new(msg)
}

/// The configuration numbers of the DefunctConfiguration replies to the fake among `out`;
/// nothing else may be sent.
fn defunct_replies(out: &[Action]) -> Vec<u32> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to, msg, .. } => {
                assert_eq!((to, msg.kind()), (&Dest::One(id(FAKE)), MsgKind::DefunctConfiguration), "only Defunct replies: {out:?}");
                Some(msg.header.config)
            }
            _ => None,
        })
        .collect()
}

/// The replica left out of configuration 1 ({1, 3, 4} from decree 5): inactive.
fn inactive_bench() -> Bench {
    let members = super::super::tests::config(&["1", "3", "4"]).members;
    let bench = Bench::with(ConfigInfo { number: 1, initial_decree: 5, members }, 0);
    bench.expect_role(Inactive);
    bench
}

/// TestJoinMessages in one state (`None`: inactive), from where `enter` puts the replica.
fn joins(bench: &mut Bench, enter: &dyn Fn(&mut Bench)) {
    enter(bench);
    let s = bench.status();
    let (c, hd) = (bench.r.paxos_configuration().number, bench.r.highest_defunct);
    // Our configuration or an older one: a Defunct reply if it is at most one above the
    // highest defunct, else nothing; nothing changes.
    for config in [c - 1, c] {
        for min_log in [s.decree - 1, s.decree, s.decree + 1] {
            for checkpointed in [s.decree - 1, s.decree, s.decree + 1] {
                let msg = join(bench, config, min_log, checkpointed);
                let out = bench.deliver(msg);
                let expected = if config <= hd + 1 { vec![hd] } else { Vec::new() };
                assert_eq!(defunct_replies(&out), expected, "configuration {config}");
                assert_eq!(out.len(), expected.len(), "{out:?}");
                assert_eq!(bench.status(), s);
            }
        }
    }
    joins_of_a_newer_configuration(bench, enter);
}

/// A Join of a newer configuration: learn from the sender's log if it holds our decree, else
/// fetch its checkpoint if it covers our decree, else nothing. Nothing is sent. Unlike the
/// original, our replica learns as it does from a status round: Initializing meanwhile (a
/// primary steps down first: a Join from a member of ours says our configuration ended), and
/// a failed fetch leaves it there, our position unchanged.
fn joins_of_a_newer_configuration(bench: &mut Bench, enter: &dyn Fn(&mut Bench)) {
    let c = bench.r.paxos_configuration().number;
    let busy = if bench.r.role() == Inactive { Inactive } else { Init };
    for dmin in -1..=1i64 {
        for dcp in -1..=1i64 {
            enter(bench);
            let s = bench.status();
            let (min_log, checkpointed) = (s.decree.wrapping_add_signed(dmin), s.decree.wrapping_add_signed(dcp));
            let msg = join(bench, c + 1, min_log, checkpointed);
            let out = bench.deliver(msg);
            let cell = format!("Join of configuration {} (log from {min_log}, checkpoint {checkpointed}) at {s:?}", c + 1);
            assert!(sent(&out).is_empty(), "{cell}: {out:?}");
            let fetch = if dmin <= 0 {
                Some(Action::FetchVotes { from: id(FAKE), decree: s.decree })
            } else if dcp >= 0 {
                Some(Action::FetchCheckpoint { from: id(FAKE), decree: checkpointed, size: 100 * 1024, load: true })
            } else {
                None
            };
            assert_eq!(format!("{out:?}"), format!("{:?}", fetch.iter().collect::<Vec<_>>()), "{cell}");
            let Some(fetch) = fetch else {
                assert_eq!(bench.status(), s, "{cell}");
                continue;
            };
            assert_eq!(bench.status(), Status { role: busy, ..s }, "{cell}");
            let failed = match fetch {
                Action::FetchVotes { .. } => Input::Learned { from: id(FAKE), records: Vec::new() },
                _ => Input::CheckpointFetched(None),
            };
            let out = bench.input(failed);
            let query = if busy == Inactive { Vec::new() } else { vec![Sent::all(MsgKind::StatusQuery, s.decree, s.ballot)] };
            assert_eq!(sent(&out), query, "{cell}: the fetch failed");
            assert_eq!(bench.status(), Status { role: busy, ..s }, "{cell}");
        }
    }
}

/// TestJoinMessages: Join handling while inactive and in each test state.
#[test]
fn test_join_messages() {
    let mut bench = inactive_bench();
    joins(&mut bench, &|_| {});
    let mut bench = Bench::initialized();
    for state in STATES {
        joins(&mut bench, &|bench| bench.move_to(state));
    }
}

/// A DefunctConfiguration from the fake naming `number`.
fn defunct(bench: &Bench, number: u32) -> Arc<Message> {
    Arc::new(Message::new(Header::new(bench.r.version(), id(FAKE), 0, number, Ballot::EMPTY), Body::DefunctConfiguration))
}

/// A replica in configuration 3 of `members` that knows configuration 2 defunct.
fn bench_in_configuration_3(members: &[&str]) -> Bench {
    let mut config = super::super::tests::config(members);
    config.number = 3;
    Bench::with(config, 2)
}

/// TestDefunctMessages.
#[test]
fn test_defunct_messages() {
    defunct_notices(true);
    defunct_notices(false);
    let enter: [(&[&str], Option<TestState>); 4] = [
        (&["1", "3", "4"], None),
        (&["1", "2", "3"], Some(TestState::Primary)),
        (&["1", "2", "3"], Some(TestState::Prepare)),
        (&["1", "2", "3"], Some(TestState::Initialize)),
    ];
    for (members, state) in enter {
        let mut bench = bench_in_configuration_3(members);
        if let Some(state) = state {
            bench.move_to(state);
        }
        messages_of_a_defunct_configuration(&mut bench);
    }
}

/// `SendDefunctMessages`: DefunctConfiguration notices below, at and above the highest
/// defunct configuration (2, ours being 3), inactive or a secondary. Only one above changes
/// anything: an active replica goes to Initializing (and, with a status round, follows
/// again). Unlike the original, the number is not recorded: we record at most two below our
/// configuration (docs/core.md, "Deliberate differences"), so inactive nothing changes.
fn defunct_notices(inactive: bool) {
    let mut bench = bench_in_configuration_3(if inactive { &["1", "3", "4"] } else { &["1", "2", "3"] });
    if !inactive {
        bench.move_to_secondary();
    }
    let s = bench.status();
    for number in [1, 2] {
        let notice = defunct(&bench, number);
        assert!(bench.deliver(notice).is_empty(), "defunct {number}");
        assert_eq!((bench.status(), bench.r.highest_defunct), (s, 2));
    }
    let notice = defunct(&bench, 3);
    let out = bench.deliver(notice);
    assert_eq!(bench.r.highest_defunct, 2);
    if inactive {
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(bench.status(), s);
        return;
    }
    assert_eq!(sent(&out), [Sent::all(MsgKind::StatusQuery, s.decree, s.ballot)]);
    assert_eq!(bench.status(), Status { role: Init, ..s });
    let reply = bench.status_response(FAKE, (s.decree, s.ballot), (s.decree, s.ballot), 0);
    assert!(sent(&bench.deliver(reply)).is_empty());
    assert_eq!(bench.status(), s);
}

/// `ReceiveDefunctMessages`: every message type of a defunct configuration gets a
/// DefunctConfiguration reply naming the highest defunct, except a StatusQuery (answered as
/// ever) and a DefunctConfiguration (ignored); nothing changes.
fn messages_of_a_defunct_configuration(bench: &mut Bench) {
    let s = bench.status();
    let hd = bench.r.highest_defunct;
    let (d, b) = (s.decree, bench.fake_ballot(10));
    let vote = bench.vote(d, b);
    let members = super::super::tests::config(&["1", "2", "3"]).members;
    let reconfiguration = bench.msg(id(FAKE), d, b, Body::Vote(VoteBody { reconfig: Some(members), ..Default::default() }));
    let answered = [
        vote.clone(),
        reconfiguration,
        bench.msg(id(FAKE), d, b, Body::ReconfigurationDecision),
        bench.prepare(d, b),
        bench.prepare_accepted(FAKE, d, b, &vote),
        bench.msg(id(FAKE), d, b, Body::NotAccepted),
        bench.status_response(FAKE, (s.decree, s.ballot), (s.decree, s.ballot), 0),
        join(bench, hd, d, d),
        bench.msg(id(FAKE), 0, Ballot::EMPTY, Body::JoinRequest),
    ];
    for msg in answered {
        let kind = msg.kind();
        let out = bench.deliver(in_config(&msg, hd));
        assert_eq!(defunct_replies(&out), [hd], "{kind:?}");
        assert_eq!(bench.status(), s, "{kind:?}");
    }
    let query = bench.msg(id(FAKE), s.decree, s.ballot, Body::StatusQuery);
    let out = bench.deliver(in_config(&query, hd));
    let [Action::Send { to, msg, .. }] = out.as_slice() else { panic!("answered: {out:?}") };
    assert_eq!(to, &Dest::One(id(FAKE)));
    let Body::StatusResponse(status) = &msg.body else { panic!("a StatusResponse: {msg:?}") };
    assert_eq!((status.query_decree, status.query_ballot), (s.decree, s.ballot), "the query echoed");
    assert_eq!(msg.header.config, bench.r.paxos_configuration().number);
    let notice = defunct(bench, hd - 1);
    assert!(bench.deliver(notice).is_empty());
    assert_eq!(bench.status(), s);
}
