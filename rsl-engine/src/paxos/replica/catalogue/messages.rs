//! The original's message-handling tests (api-behavior §3.1 rows 1–10, §3.2 rows 31–32), each
//! named after the original test, on the single-replica [`Bench`].

use super::*;

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
    let mut bench = Bench::new();
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
    let mut bench = Bench::new();
    let sequence = [
        Secondary, Initialize, Prepare, Primary, Prepare, Secondary, Secondary, Prepare, Initialize, Primary, Primary, Initialize,
        Secondary, Prepare, Prepare, Primary, Secondary, Primary, Initialize,
    ];
    assert_eq!(sequence.len(), 19);
    for state in sequence {
        bench.move_to(state);
    }
}
