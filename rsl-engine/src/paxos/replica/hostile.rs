//! Directed tests of hostile input: forged or implausible messages, log records and checkpoints
//! meet a refusal, never a panic, and the ring carries on (issue 9, findings 1 and 5).
//!
//! They run on the three-replica harness of `directed.rs`, under the original's rules
//! (version 6) and pipelined (version 7, window 16).

use super::directed::{id, Ring};
use super::tests::config;
use super::*;
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
fn inject(ring: &mut Ring, to: usize, from: MemberId, msg: Arc<Message>) {
    ring.step(to, Input::Message { from, msg });
    ring.run();
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
        inject(&mut ring, 1, id(2), evil);
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
        inject(&mut ring, 0, id(1), Arc::new(msg));
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
        inject(&mut ring, 0, outsider, Arc::new(msg));
        // (Stepping down, it would be elected again at once, under a new ballot.)
        assert_eq!(ring.r(0).max_ballot(), ballot, "the primary did not step down");
        assert!(ring.r(0).is_primary());
    }
}
