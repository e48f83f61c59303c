//! The adaptive window (version 7): when a primary proposes the batch waiting behind its votes
//! in flight rather than letting it grow until they are chosen.
//!
//! Every decree costs the ring a round of messages, a journal write on each member and an
//! execution, whatever it carries. Before version 7 the batch waits for the vote in flight, so
//! it grows with the load. A pipelined primary that proposed each batch at once would spend
//! its CPU on many small decrees where one large one would do (slower than version 6 on a
//! machine the replicas saturate). So with votes in flight it proposes the waiting batch only
//! when waiting gains nothing more: the batch is full (a vote's size reached, or the next
//! request closed it), or the round trip dominates the decree's time, so that decrees queued
//! one disk write apart keep the replicas busy instead of idle; otherwise it waits as version
//! 6 would, at most a commit time. The core has no clock: the times are the `now` of the
//! inputs, and `Replica::next_wakeup` asks for a `Tick` when a waiting batch falls due.

use super::*;

/// How long the primary's last chosen decree took, from its proposal: until its own write was
/// durable (`local`) and until a quorum had it (`commit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pace {
    local: Micros,
    commit: Micros,
}

/// The round trip dominates a decree's time when the wait for the quorum after our own write
/// is at least this many times that write (a remote member writes as long as we do, so a
/// ratio of 1 is the cost of a loopback cluster on one disk, not a network).
const ROUND_TRIP_FACTOR: Micros = 2;

/// Commit times a batch waits behind the votes in flight when the round trip does not
/// dominate: by then they are chosen and the batch goes with them, as in version 6, even when a
/// saturated machine makes one decree's commit slower than the last's.
const SLOW_COMMITS: Micros = 2;

impl Pace {
    /// The times of a decree proposed at `proposed`, durable here at `durable`, chosen at
    /// `chosen`.
    pub(super) fn measure(proposed: Micros, durable: Micros, chosen: Micros) -> Pace {
        // The caller's clock is not trusted to be monotonic: a step back measures as zero.
        let chosen = chosen.max(proposed);
        let durable = durable.clamp(proposed, chosen);
        let pace = Pace { local: durable - proposed, commit: chosen - proposed };
        debug_assert!(pace.local <= pace.commit, "durable after chosen: {pace:?}");
        debug_assert!(proposed.saturating_add(pace.commit) == chosen, "a commit time not measured from the proposal");
        pace
    }

    /// Whether the decree's time was mostly the wait for the other members.
    fn round_trip_dominates(&self) -> bool {
        let remote = self.commit - self.local;
        let dominates = remote >= self.local.saturating_mul(ROUND_TRIP_FACTOR) && remote > 0;
        debug_assert!(self.commit >= self.local, "measured durable after chosen");
        debug_assert!(!dominates || self.commit > self.local, "a round trip of nothing dominates");
        dominates
    }

    /// How long a batch waits for more requests while votes are in flight: one write of ours
    /// when the round trip dominates (a batch per disk write keeps the pipeline full without
    /// outrunning the disk), a whole commit time otherwise (as version 6: by then the votes in
    /// flight are normally chosen, and the batch goes with them).
    pub(super) fn batch_wait(&self) -> Micros {
        let wait = if self.round_trip_dominates() { self.local } else { self.commit.saturating_mul(SLOW_COMMITS) };
        debug_assert!(wait <= self.commit.saturating_mul(SLOW_COMMITS), "a batch waits longer than its bound");
        debug_assert!(wait >= self.commit || self.round_trip_dominates(), "a short wait without a dominating round trip");
        wait
    }
}

impl Replica {
    /// Whether this primary may propose a batch while its votes in flight are not yet chosen:
    /// a pipelined primary whose last decree's round trip dominated (`Pace::batch_wait`), or
    /// whose next batch is already full. Otherwise it waits for the votes in flight as version
    /// 6 does, so its host loses nothing by syncing the journal on the protocol thread (one
    /// thread hand-off less per batch).
    pub fn proposes_ahead(&self) -> bool {
        let ahead = self.role == Role::Primary
            && self.window() > 1
            && (self.pace.is_some_and(|p| p.round_trip_dominates())
                || self.to_send.front().is_some_and(|b| b.closed)
                || self.to_send.len() > 1);
        debug_assert!(!ahead || self.pipelined(), "proposing ahead before version 7");
        debug_assert!(self.window() == 1 || self.pipelined(), "a window above 1 before version 7");
        ahead
    }

    /// When the front of the send queue may be proposed: at once (0) with nothing in flight or
    /// when it is full, after its wait (`Pace::batch_wait`) from its first request otherwise,
    /// and `None` while it must wait for votes in flight to be chosen (the window is full, a
    /// vote that goes alone is in flight or next, no decree measured yet, or not primary).
    pub(super) fn next_batch_at(&self) -> Option<Micros> {
        // (A new primary's re-proposals may fill more than the window: nothing more goes then.)
        debug_assert!(self.role == Role::Primary || self.outstanding.is_empty(), "votes in flight off the primary role");
        if self.role != Role::Primary || !self.is_primary || self.relinquishing || self.outstanding.len() >= self.window() {
            return None;
        }
        let next = self.to_send.front()?;
        let alone = |b: &VoteBody| b.reconfig.is_some() || b.relinquish;
        let last_alone = self.outstanding.back().and_then(|o| o.vote.as_vote()).is_some_and(alone);
        if last_alone || (alone(&next.body) && !self.outstanding.is_empty()) {
            return None;
        }
        let full = next.closed || self.to_send.len() > 1;
        let at = if self.outstanding.is_empty() || full { Some(0) } else { self.pace.map(|p| next.since.saturating_add(p.batch_wait())) };
        debug_assert!(self.pipelined() || self.outstanding.is_empty(), "a second vote in flight before version 7");
        debug_assert!(at.is_none_or(|t| t == 0 || t >= next.since), "a batch due before its first request");
        at
    }

    /// Notes when the votes in flight became durable here, up to `durable_seq`: the times a
    /// decree's `Pace` is measured from.
    pub(super) fn note_durable(&mut self, now: Micros) {
        let durable = self.durable_seq;
        for o in self.outstanding.iter_mut().filter(|o| o.seq <= durable && o.durable_at == Micros::MAX) {
            // A clock that stepped back measures as durable at once, as `measure` takes it.
            o.durable_at = now.max(o.proposed_at);
        }
        debug_assert!(self.outstanding.iter().all(|o| (o.seq <= durable) == (o.durable_at != Micros::MAX)), "durable times out of step");
        debug_assert!(self.outstanding.iter().all(|o| o.durable_at == Micros::MAX || o.durable_at >= o.proposed_at));
    }
}

#[cfg(test)]
mod tests {
    use super::super::directed::Ring;
    use super::*;
    use crate::paxos::SEC;

    #[test]
    fn a_dominating_round_trip_waits_one_write_and_otherwise_two_commits() {
        // Written in 300 µs, chosen 2.3 ms after it was proposed: the network's share dominates.
        let far = Pace::measure(1_000, 1_300, 3_300);
        assert_eq!((far.local, far.commit), (300, 2_300));
        assert_eq!(far.batch_wait(), 300);
        // Written in 300 µs, chosen 400 µs later: the disk and the CPU dominate.
        assert_eq!(Pace::measure(1_000, 1_300, 1_700).batch_wait(), 1_400);
        // Durable reported with the quorum: nothing is known to be remote.
        assert_eq!(Pace::measure(0, 500, 500).batch_wait(), 1_000);
    }

    /// A window-16 ring whose primary is node 0, with `pace` as its last measured decree.
    fn ring(cfg: CoreConfig, pace: Option<Pace>) -> Ring {
        let mut ring = Ring::with(cfg);
        ring.promote(0);
        ring.r_mut(0).pace = pace;
        ring
    }

    fn v7(max_vote_bytes: usize) -> CoreConfig {
        CoreConfig { version: Version::V7, window: 16, max_vote_bytes, ..CoreConfig::default() }
    }

    /// Submits `request` to node 0 (open to batching) without delivering any message; the votes
    /// in flight after it.
    fn submit(ring: &mut Ring, request: &[u8], cookie: Cookie) -> usize {
        let mut out = Vec::new();
        let now = ring.now;
        ring.r_mut(0).submit(now, Bytes::copy_from_slice(request), cookie, false, &mut out).expect("the primary takes requests");
        ring.apply(0, out);
        ring.r(0).outstanding.len()
    }

    /// Ticks node 0 at `at`, delivering nothing; the votes in flight after it.
    fn tick_at(ring: &mut Ring, at: Micros) -> usize {
        ring.now = at;
        ring.step(0, Input::Tick);
        ring.r(0).outstanding.len()
    }

    #[test]
    fn with_a_vote_in_flight_a_batch_waits_two_commits_while_the_disk_dominates() {
        let mut ring = ring(v7(1 << 20), Some(Pace::measure(0, 300, 700)));
        assert_eq!(submit(&mut ring, b"a", 1), 1, "the first request goes at once");
        ring.now += 50;
        let since = ring.now;
        for cookie in 2..6 {
            assert_eq!(submit(&mut ring, b"b", cookie), 1, "the others wait behind it");
        }
        assert_eq!(ring.r(0).next_batch_at(), Some(since + 1_400), "two commit times after its first request");
        assert!(!ring.r(0).proposes_ahead(), "the host may sync inline meanwhile");
        assert!(ring.r(0).next_wakeup() <= since + 1_400, "a tick is asked for when it falls due");
        assert_eq!(tick_at(&mut ring, since + 1_399), 1, "not before");
        assert_eq!(tick_at(&mut ring, since + 1_400), 2, "then it goes, the first vote still in flight");
        assert_eq!(ring.r(0).outstanding[1].cookies, [2, 3, 4, 5], "as one vote");
        ring.run();
        assert!(ring.r(0).outstanding.is_empty(), "both chosen");
    }

    #[test]
    fn with_a_dominating_round_trip_a_batch_waits_one_write() {
        let mut ring = ring(v7(1 << 20), Some(Pace::measure(0, 300, 2_300)));
        assert_eq!(submit(&mut ring, b"a", 1), 1);
        let since = ring.now;
        assert_eq!(submit(&mut ring, b"b", 2), 1);
        assert_eq!(ring.r(0).next_batch_at(), Some(since + 300));
        assert!(ring.r(0).proposes_ahead(), "its host syncs on the writer thread, not inline");
        assert_eq!(tick_at(&mut ring, since + 300), 2);
    }

    #[test]
    fn an_unmeasured_primary_waits_for_its_vote_as_version_6_does() {
        let mut ring = ring(v7(1 << 20), None);
        assert_eq!(submit(&mut ring, b"a", 1), 1);
        assert_eq!(submit(&mut ring, b"b", 2), 1);
        assert_eq!(ring.r(0).next_batch_at(), None);
        let later = ring.now + 60 * SEC;
        assert_eq!(tick_at(&mut ring, later), 1, "however long it waits");
        // Once the vote in flight is chosen the batch goes, and the decrees are measured.
        ring.run();
        assert!(ring.r(0).outstanding.is_empty() && ring.r(0).to_send.is_empty(), "everything chosen");
        assert!(ring.r(0).pace.is_some(), "the chosen decrees were measured");
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        // 20-byte requests (24 with their length): two fill a vote of 48 bytes besides its
        // header and cookie, a third starts the next.
        let overhead = ring(v7(1 << 20), None).r(0).vote_overhead();
        let mut ring = ring(v7(overhead + 48), None);
        let request = [7u8; 20];
        assert_eq!(submit(&mut ring, &request, 1), 1);
        assert_eq!(submit(&mut ring, &request, 2), 1);
        assert_eq!(submit(&mut ring, &request, 3), 1, "one batch waiting, not yet full");
        assert_eq!(submit(&mut ring, &request, 4), 2, "the full batch went at once");
        assert_eq!(ring.r(0).to_send.len(), 1, "the next one waits");
    }

    #[test]
    fn version_6_keeps_one_vote_in_flight_whatever_it_measured() {
        let mut ring = ring(CoreConfig::default(), Some(Pace::measure(0, 100, 10_000)));
        assert_eq!(submit(&mut ring, b"a", 1), 1);
        assert_eq!(submit(&mut ring, b"b", 2), 1);
        assert_eq!(ring.r(0).next_batch_at(), None);
        let later = ring.now + SEC;
        assert_eq!(tick_at(&mut ring, later), 1, "still the one vote");
    }
}
