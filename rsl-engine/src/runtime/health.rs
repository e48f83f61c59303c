//! Health and statistics beyond plain counters: the timed families of `RSLStats` (log reads,
//! log writes, voting time), the timing of the primary's votes, and the per-member progress
//! the protocol thread publishes for `ReplicaHealth` (docs/spec/behavior.md §1.3, §2.26, §2.27).

use crate::format::{Ballot, Body, MemberId};
use crate::paxos::{Action, Dest, MemberProgress, Micros, Replica, Role};
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One timed family of counters, shared by the threads that measure, the statistics snapshot
/// (which takes the values since the previous one) and the metrics (which read the totals).
#[derive(Default, Debug)]
pub struct Timing {
    count: AtomicU64,
    bytes: AtomicU64,
    micros: AtomicU64,
    max_micros: AtomicU64,
    /// `count`, `bytes` and `micros` at the last take.
    taken: [AtomicU64; 3],
}

/// A family's values over one capture period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timed {
    /// Operations.
    pub count: u64,
    /// Bytes they moved (0 where the family has none: voting).
    pub bytes: u64,
    /// Their total duration.
    pub micros: u64,
    /// The longest one.
    pub max_micros: u64,
}

impl Timing {
    pub(crate) fn record(&self, bytes: u64, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        self.micros.fetch_add(us, Relaxed);
        self.max_micros.fetch_max(us, Relaxed);
    }

    /// The values since the last take, which start again from zero. The totals go on.
    pub(crate) fn take(&self) -> Timed {
        let totals = self.totals();
        let since = |mark: &AtomicU64, now: u64| now.saturating_sub(mark.fetch_max(now, Relaxed));
        Timed {
            count: since(&self.taken[0], totals.count),
            bytes: since(&self.taken[1], totals.bytes),
            micros: since(&self.taken[2], totals.micros),
            max_micros: self.max_micros.swap(0, Relaxed),
        }
    }

    /// Every operation since the start (`max_micros`: the longest since the last take).
    pub(crate) fn totals(&self) -> Timed {
        Timed {
            count: self.count.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            micros: self.micros.load(Relaxed),
            max_micros: self.max_micros.load(Relaxed),
        }
    }
}

/// The voting time of RSL: from the moment the primary proposes a vote until it knows the
/// vote chosen. Proposal is the first send of the vote to all; chosen is its `Execute`, which
/// the core raises on the primary exactly when a quorum has accepted it.
#[derive(Default)]
pub(crate) struct VoteTimer {
    /// Votes proposed and not yet chosen, oldest first: (decree, ballot, proposed at).
    proposed: Mutex<VecDeque<(u64, Ballot, Micros)>>,
}

/// More votes than any window keeps in flight; older ones were overtaken (a new term).
const MAX_TIMED: usize = 256;

impl VoteTimer {
    /// When the oldest vote of `ballot` still unchosen was proposed.
    pub fn oldest(&self, ballot: Ballot) -> Option<Micros> {
        let proposed = self.proposed.lock().unwrap_or_else(|e| e.into_inner());
        proposed.iter().filter(|&&(_, b, _)| b == ballot).map(|&(_, _, at)| at).min()
    }

    /// Sees each action the protocol thread carries out (`Host::observe`).
    pub fn observe(&self, core: &Replica, action: &Action, now: Micros, voting: &Timing) {
        let mut proposed = self.proposed.lock().unwrap_or_else(|e| e.into_inner());
        match action {
            Action::Send { to: Dest::All, msg, .. } if core.role() == Role::Primary && matches!(msg.body, Body::Vote(_)) => {
                let key = (msg.header.decree, msg.header.ballot);
                if !proposed.iter().any(|&(d, b, _)| (d, b) == key) {
                    if proposed.len() == MAX_TIMED {
                        proposed.pop_front();
                    }
                    proposed.push_back((key.0, key.1, now));
                }
            }
            Action::Execute { vote, .. } => {
                let key = (vote.header.decree, vote.header.ballot);
                if let Some(&(_, _, at)) = proposed.iter().find(|&&(d, b, _)| (d, b) == key) {
                    voting.record(0, Duration::from_micros(now.saturating_sub(at)));
                }
                proposed.retain(|&(d, _, _)| d > key.0);
            }
            _ => {}
        }
        debug_assert!(proposed.len() <= MAX_TIMED);
    }
}

/// What the primary knows of the members' votes, on the wall clock (`ReplicaHealth`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct VotesSeen {
    /// Each member's last VoteAccepted.
    pub members: Vec<(MemberId, Seen)>,
    /// This replica's own highest accepted vote and payload.
    pub own: Seen,
}

/// A vote seen: when (None: never), its decree and payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    pub at: Option<SystemTime>,
    pub decree: u64,
    pub payload: u64,
}

/// The protocol thread's side of [`VotesSeen`]: publishes only when the core's values change.
#[derive(Default)]
pub(crate) struct Publisher {
    last: Option<(Vec<(MemberId, MemberProgress)>, MemberProgress)>,
}

impl Publisher {
    /// Publishes the core's progress into `seen` if it changed; `now` is the core's clock.
    pub fn publish(&mut self, core: &Replica, now: Micros, seen: &Mutex<VotesSeen>) {
        let (accepted, _) = core.accepted();
        let own = MemberProgress { voted_at: core.accepted_at(), decree: accepted, payload: core.vote_payload() };
        let progress = core.progress();
        if self.last.as_ref().is_some_and(|(m, o)| *o == own && m.iter().map(|(id, p)| (id, p)).eq(progress)) {
            return;
        }
        let last = (progress.iter().map(|(id, p)| (*id, *p)).collect::<Vec<_>>(), own);
        let wall = SystemTime::now();
        let to_wall = |p: &MemberProgress| Seen {
            at: (p.voted_at > 0).then(|| wall - Duration::from_micros(now.saturating_sub(p.voted_at))),
            decree: p.decree,
            payload: p.payload,
        };
        let published = VotesSeen { members: last.0.iter().map(|(id, p)| (*id, to_wall(p))).collect(), own: to_wall(&last.1) };
        *seen.lock().unwrap_or_else(|e| e.into_inner()) = published;
        self.last = Some(last);
    }
}

/// Microseconds since the Unix epoch (0 never occurs after 1970; it means "never").
pub(crate) fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The inverse of [`unix_micros`]: 0 is never.
pub(crate) fn from_unix_micros(us: u64) -> Option<SystemTime> {
    (us > 0).then(|| UNIX_EPOCH + Duration::from_micros(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_take_returns_the_period_and_resets_it() {
        let t = Timing::default();
        t.record(10, Duration::from_micros(5));
        t.record(30, Duration::from_micros(20));
        assert_eq!(t.take(), Timed { count: 2, bytes: 40, micros: 25, max_micros: 20 });
        assert_eq!(t.take(), Timed::default());
        t.record(1, Duration::from_micros(3));
        assert_eq!(t.take().max_micros, 3, "the max restarts with the period");
        assert_eq!((t.totals().count, t.totals().bytes, t.totals().micros), (3, 41, 28), "the totals go on");
    }

    #[test]
    fn wall_times_round_trip() {
        assert_eq!(from_unix_micros(0), None);
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123);
        assert_eq!(from_unix_micros(unix_micros(t)), Some(t));
    }
}
