//! Tests of what restoring and loading a checkpoint leave behind (the promise, the log's
//! start), of the status round's quorum, and of paths no other test pins down exactly: a
//! primary's own durability, a learner's lower-ballot step, and a pipelined replica's
//! watermark and promise.

use super::tests::{config, id};
use super::*;
use crate::paxos::{AcceptAll, SEC};

const IDS: [&str; 3] = ["1", "2", "3"];

fn checkpoint(next_vote: Arc<Message>, max_ballot: Ballot) -> Checkpoint {
    Checkpoint { decree: 4, next_vote, max_ballot, config: config(&IDS), state_saved: true }
}

fn vote(sender: &str, decree: u64, ballot: Ballot) -> Arc<Message> {
    let body = VoteBody { requests: vec![Bytes::from_static(b"x")], ..Default::default() };
    Arc::new(Message::new(Header::new(Version::V6, id(sender), decree, 1, ballot), Body::Vote(body)))
}

fn status(d: u64, b: Ballot, from: &str) -> Arc<Message> {
    let s = StatusBody {
        query_decree: d,
        query_ballot: b,
        last_received_ago_ms: 0,
        min_decree_in_log: 0,
        checkpointed_decree: 0,
        checkpoint_size: 0,
        max_ballot: b,
        state: 4,
    };
    Arc::new(Message::new(Header::new(Version::V6, id(from), d, 1, b), Body::StatusResponse(s)))
}

fn deliver(r: &mut Replica, from: &str, msg: Arc<Message>) -> Vec<Action> {
    let mut out = Vec::new();
    r.step(SEC, Input::Message { from: id(from), msg }, &mut AcceptAll, &mut out);
    out
}

/// Replica "1" of {1, 2, 3}, started, having logged `promise` (if any) before.
fn started(promise: Option<Ballot>) -> Replica {
    let mut r = Replica::new(CoreConfig::default(), id("1"), config(&IDS), 7);
    let mut out = Vec::new();
    if let Some(b) = promise {
        let prepare = Message::new(Header::new(Version::V6, b.member, 0, 1, b), Body::Prepare(Bytes::new()));
        r.replay(&Arc::new(prepare), &mut out).unwrap();
    }
    r.start(0, &mut AcceptAll, &mut out);
    r
}

/// That replica, having promised (9, 2), loads a peer's checkpoint of decree 4.
fn loaded(cp: Checkpoint) -> (Replica, Vec<Action>) {
    let mut r = started(Some(Ballot::new(9, id("2"))));
    let mut out = Vec::new();
    r.step(SEC, Input::CheckpointFetched(Some((cp, 100))), &mut AcceptAll, &mut out);
    assert!(out.iter().any(|a| matches!(a, Action::LoadCheckpoint(_))));
    (r, out)
}

#[test]
fn a_restored_checkpoint_keeps_its_promise() {
    let mut r = Replica::new(CoreConfig::default(), id("1"), config(&IDS), 7);
    let promise = Ballot::new(5, id("2"));
    r.restore_checkpoint(&checkpoint(placeholder(Version::V6, 5, 1), promise), 0);
    assert_eq!(r.max_ballot(), promise);
}

#[test]
fn loading_a_checkpoint_relogs_a_higher_promise() {
    let (_, out) = loaded(checkpoint(placeholder(Version::V6, 5, 1), Ballot::new(2, id("2"))));
    let relogged = out.iter().any(|a| {
        matches!(a, Action::Persist { record, .. } if record.kind() == MsgKind::Prepare && record.header.ballot == Ballot::new(9, id("2")))
    });
    assert!(relogged, "{out:?}");
}

#[test]
fn after_loading_the_log_starts_past_the_checkpoint() {
    let (mut r, _) = loaded(checkpoint(placeholder(Version::V6, 5, 1), Ballot::new(2, id("2"))));
    let query = Message::new(Header::new(Version::V6, id("2"), 0, 1, Ballot::EMPTY), Body::StatusQuery);
    let min = deliver(&mut r, "2", Arc::new(query)).iter().find_map(|a| match a {
        Action::Send { msg, .. } => match &msg.body {
            Body::StatusResponse(s) => Some(s.min_decree_in_log),
            _ => None,
        },
        _ => None,
    });
    assert_eq!(min, Some(5));
}

#[test]
fn a_loaded_checkpoint_promises_at_least_its_next_votes_ballot() {
    let mut r = started(None);
    let ballot = Ballot::new(3, id("3"));
    let cp = checkpoint(vote("3", 5, ballot), Ballot::new(1, id("2")));
    r.step(SEC, Input::CheckpointFetched(Some((cp, 100))), &mut AcceptAll, &mut Vec::new());
    assert!(r.max_ballot() >= ballot);
}

#[test]
fn a_status_round_of_five_waits_for_a_majority() {
    let mut r = Replica::new(CoreConfig::default(), id("1"), config(&["1", "2", "3", "4", "5"]), 7);
    r.start(0, &mut AcceptAll, &mut Vec::new());
    assert_eq!(r.role(), Role::Initializing);
    let (d, b) = r.position();
    deliver(&mut r, "2", status(d, b, "2"));
    assert_eq!(r.statuses.len(), 1, "the answer counts");
    assert_eq!(r.next_election, Micros::MAX, "one answer of five decides nothing");
    deliver(&mut r, "3", status(d, b, "3"));
    assert_ne!(r.next_election, Micros::MAX, "two (and ourselves) do");
}

fn executed(out: &[Action]) -> Vec<u64> {
    out.iter()
        .filter_map(|a| match a {
            Action::Execute { vote, .. } => Some(vote.header.decree),
            _ => None,
        })
        .collect()
}

#[test]
fn a_primary_chooses_nothing_before_its_own_vote_is_durable() {
    let mut r = started(None);
    let mut out = Vec::new();
    r.step(SEC, Input::AttemptPromotion, &mut AcceptAll, &mut out);
    let (d, b) = r.position();
    deliver(&mut r, "2", status(d, b, "2"));
    assert_eq!(r.role(), Role::Preparing);
    let ballot = r.max_ballot();
    let header = |from: &str| Header::new(Version::V6, id(from), 0, 1, ballot);
    let promise = Message::new(header("2"), Body::PrepareAccepted(Box::new((*placeholder(Version::V6, 0, 1)).clone())));
    deliver(&mut r, "2", Arc::new(promise));
    r.step(SEC, Input::Durable(1), &mut AcceptAll, &mut out);
    assert_eq!(r.role(), Role::Primary, "it re-proposes decree 0, logged as record 2");
    out.clear();
    for from in ["2", "3"] {
        out.extend(deliver(&mut r, from, Arc::new(Message::new(header(from), Body::VoteAccepted))));
    }
    assert_eq!(executed(&out), [0; 0], "both peers accepted, but our own record is not durable");
    r.step(SEC, Input::Durable(2), &mut AcceptAll, &mut out);
    assert_eq!(executed(&out), [0]);
}

/// Today the first learned record must be at our own decree anyway; this pins what the proof
/// itself needs, should that rule loosen.
#[test]
fn a_learner_takes_a_lower_ballot_next_decree_only_after_the_peers_vote_at_its_own() {
    let mine = Ballot::new(3, id("3"));
    let mut r = Replica::new(CoreConfig::default(), id("1"), config(&IDS), 7);
    r.restore_checkpoint(&checkpoint(vote("3", 5, mine), mine), 0);
    r.start(0, &mut AcceptAll, &mut Vec::new());
    let lower = Ballot::new(1, id("2"));
    let mut out = Vec::new();
    r.apply_learned(SEC, vec![vote("2", 6, lower)], &mut out);
    assert_eq!(r.accepted(), (5, mine), "nothing proves our vote at 5 chosen");
    r.apply_learned(SEC, vec![vote("2", 5, lower), vote("2", 6, lower)], &mut out);
    assert_eq!(r.accepted(), (6, lower), "the peer's 5 then 6 prove 5 chosen");
}

/// Replica "1" of {1, 2, 3} at version 7, a secondary that has executed nothing.
fn pipelined_secondary() -> Replica {
    let cfg = CoreConfig { version: Version::V7, window: 16, ..CoreConfig::default() };
    let mut r = Replica::new(cfg, id("1"), config(&IDS), 7);
    r.start(0, &mut AcceptAll, &mut Vec::new());
    r.become_secondary();
    r
}

fn pipelined_vote(sender: &str, decree: u64, ballot: Ballot, watermark: u64) -> Arc<Message> {
    let mut header = Header::new(Version::V7, id(sender), decree, 1, ballot);
    header.payload = watermark;
    let body = VoteBody { requests: vec![Bytes::from_static(b"x")], ..Default::default() };
    Arc::new(Message::new(header, Body::Vote(body)))
}

#[test]
fn a_watermark_executes_only_votes_held_at_its_ballot_or_above() {
    let (old, new) = (Ballot::new(1, id("2")), Ballot::new(2, id("3")));
    // Under `old`, decree 0 may hold another value than the one `new`'s primary had chosen.
    for (sender, held, executes) in [("2", old, &[][..]), ("3", new, &[0][..])] {
        let mut r = pipelined_secondary();
        let mut out = deliver(&mut r, sender, pipelined_vote(sender, 0, held, 0));
        out.extend(deliver(&mut r, "3", pipelined_vote("3", 1, new, 1)));
        assert_eq!(executed(&out), executes, "decree 0 held at {held}");
    }
}

#[test]
fn a_promise_reports_the_executed_vote_at_the_prepares_own_decree() {
    let mut ring = super::directed::Ring::new();
    ring.promote(0);
    ring.submit(0, b"a");
    ring.run();
    let r = ring.r(0);
    let p = r.vouched;
    assert!(p < r.next_execute(), "the primary executed decree {p} and nothing since vouched for it");
    let ballot = Ballot::new(r.max_ballot().id + 1, id("2"));
    let prepare = Message::new(Header::new(Version::V7, id("2"), p, 1, ballot), Body::Prepare(Bytes::new()));
    let (now, mut out) = (ring.now, Vec::new());
    ring.r_mut(0).step(now, Input::Message { from: id("2"), msg: Arc::new(prepare) }, &mut AcceptAll, &mut out);
    let reported: Vec<(u64, Vec<Bytes>)> = out
        .iter()
        .filter_map(|a| match a {
            Action::Send { msg, .. } => match &msg.body {
                Body::PrepareAccepted(vote) => Some((vote.header.decree, vote.as_vote()?.requests.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(reported, [(p, vec![Bytes::from_static(b"a")])], "the value chosen there, not an empty answer");
}
