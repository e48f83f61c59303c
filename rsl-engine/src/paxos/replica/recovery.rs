//! Finding the ring and catching up: start-up from a checkpoint and the log, status quorums,
//! learning votes from a peer, and the checkpoint policy (save, copy, load in place).

use super::*;

impl Replica {
    /// Starts from a checkpoint (before replaying the logs after it): the application's state
    /// is that of `cp.decree`, and `cp.next_vote` is the highest accepted vote.
    /// A field refused by `sanitize_checkpoint` is dropped and reported by `start`.
    pub fn restore_checkpoint(&mut self, cp: &Checkpoint, size: u64) {
        assert_eq!(self.persist_seq, 0, "restore comes before start");
        assert!(cp.decree < crate::format::DECREE_LIMIT, "the checkpoint reader refuses such a decree");
        let cp = &self.sanitize_checkpoint(cp);
        self.next_execute = cp.decree + 1;
        self.executed_below = self.next_execute;
        // A checkpoint of version 1 or 2 records no configuration (number 0): the replica keeps
        // the members it was started with, as the original's legacy `Initialize` does.
        let config = if cp.config.number == 0 { self.state_config.clone() } else { cp.config.clone() };
        self.set_paxos_config(config.clone());
        self.state_config = config;
        self.accepted = self.next_vote_or_placeholder(cp);
        self.max_ballot = cp.max_ballot.max(self.accepted.header.ballot);
        (self.checkpointed, self.checkpoint_size, self.log_min_decree) = (cp.decree, size, cp.decree + 1);
        self.keep_next_vote(0);
        assert!(self.max_ballot >= self.accepted.header.ballot, "restored a vote above the restored promise");
        debug_assert_eq!(self.accepted.header.decree, self.next_execute, "a checkpoint's next vote is for the decree after it");
    }

    /// Pipelined: after a checkpoint, its next vote is the first pending one, and the votes we
    /// accepted beyond it stay (an acceptor never forgets what it acknowledged).
    fn keep_next_vote(&mut self, seq: u64) {
        let next = self.next_execute;
        debug_assert!(seq <= self.persist_seq, "the next vote's record {seq} not yet asked for");
        self.pending.retain(|d, _| *d >= next);
        self.recent.clear();
        self.vouched = next;
        if !self.pipelined() || self.accepted.header.ballot.is_empty() {
            return;
        }
        debug_assert_eq!(self.accepted.header.decree, next, "the next vote is for the first decree not executed");
        let vote = self.accepted.clone();
        if self.pending.get(&next).is_none_or(|(v, _)| v.header.ballot <= vote.header.ballot) {
            self.pending.insert(next, (vote, seq));
        }
        if let Some((_, (v, s))) = self.pending.iter().next_back() {
            (self.accepted, self.accepted_seq) = (v.clone(), *s);
        }
        debug_assert!(self.pending.contains_key(&next), "the vote after the checkpoint forgotten");
    }

    pub(super) fn next_vote_or_placeholder(&self, cp: &Checkpoint) -> Arc<Message> {
        let vote = if cp.next_vote.header.decree == cp.decree + 1 {
            cp.next_vote.clone()
        } else {
            placeholder(self.version, cp.decree + 1, self.paxos_config.number)
        };
        debug_assert_eq!(vote.header.decree, cp.decree + 1, "the vote after a checkpoint is for the next decree");
        vote
    }

    /// Applies one durable log record at start-up: Prepares raise the promise, each vote that
    /// follows its predecessor at the same ballot executes that predecessor. The last vote is
    /// never executed: it is not known to be chosen. Records older than the accepted vote (a
    /// checkpoint's) are skipped.
    ///
    /// A record with a ballot no proposer may use (id `u32::MAX`: an older build adopted it
    /// from a forged Prepare, issue 9 finding 1) is skipped and reported by `start`. Skipping
    /// that promise is safe: a promise only matters against proposals at lower ballots from
    /// candidates that must not succeed, and no candidate following these rules ever holds that
    /// ballot (`MAX_BALLOT_ID`), so no vote or prepare of a real one was refused because of it,
    /// nor will be. Keeping it would keep the replica from ever standing again.
    pub fn replay(&mut self, record: &Arc<Message>, out: &mut Vec<Action>) -> Result<(), ReplayError> {
        assert_eq!(self.persist_seq, 0, "replay comes before start");
        let (d, b) = decree_ballot(record);
        let (ad, ab) = self.accepted();
        match self.check_record(record, validate::MAX_BALLOT_ID) {
            Ok(()) => {}
            Err(Rejection::Ballot) => {
                self.skipped.push((record.kind(), Rejection::Ballot));
                return Ok(());
            }
            Err(_) => return Err(ReplayError { kind: record.kind(), decree: d, after_decree: ad }),
        }
        if self.pipelined() {
            return self.replay_pipelined(record, out);
        }
        match record.kind() {
            MsgKind::Prepare => self.max_ballot = self.max_ballot.max(b),
            // A vote for the next decree follows at the same ballot, or at another one where
            // learning proved our decree chosen (see `apply_learned`).
            MsgKind::Vote if !b.is_empty() && (d == ad + 1 || is_next((d, b), (ad, ab))) => {
                if d == ad + 1 && self.next_execute == ad {
                    self.execute(self.accepted.clone(), Vec::new(), None, out);
                }
                self.accepted = record.clone();
                self.max_ballot = self.max_ballot.max(b);
            }
            MsgKind::Vote if !b.is_empty() && is_lower((d, b), (ad, ab)) => {}
            MsgKind::ReconfigurationDecision => {
                // One that does not match our vote was logged by nobody: skip it.
                self.log_decision(0, record.clone(), false, None, out);
            }
            kind => return Err(ReplayError { kind, decree: d, after_decree: ad }),
        }
        debug_assert!(self.max_ballot >= self.accepted.header.ballot);
        // Replay executes everything but the last vote, which is not known to be chosen.
        debug_assert!(self.next_execute <= self.accepted.header.decree + 1, "replay executed past the accepted vote");
        Ok(())
    }

    /// The policy of docs/spec/behavior.md §2.14 on a log roll: a secondary (or a lone replica) saves
    /// at the decree before the new log; a primary copies a secondary's checkpoint instead.
    pub(super) fn on_log_rolled(&mut self, now: Micros, first_decree: u64, out: &mut Vec<Action>) {
        (self.log_first, self.roll_asked) = (first_decree, false);
        let busy = self.saving || self.save_at.is_some() || self.copy_at.is_some() || self.role == Role::Preparing;
        if first_decree <= self.checkpointed + 1 || busy {
            return;
        }
        let target = first_decree - 1;
        if self.role == Role::Primary && self.quorum() > 1 {
            self.copy_at = Some(target);
            self.copy_query_at = now;
        } else {
            self.save_at = Some(target);
            self.maybe_save(out);
        }
        debug_assert!(self.copy_at.is_none() || self.save_at.is_none(), "saving and copying at once");
        debug_assert!(target > self.checkpointed, "a checkpoint asked for at or below the last one");
    }

    /// Time-based checkpoints (docs/spec/behavior.md §2.14, checked as each vote is logged): once the
    /// deadline has passed and the log has not rolled since the last checkpoint (so a slow or
    /// failing checkpoint does not start a stream of logs), the log rolls at the next vote for
    /// a new decree, and the roll asks for a checkpoint like one by size.
    pub(super) fn maybe_roll_for_time(&mut self, out: &mut Vec<Action>) {
        if self.roll_asked || self.clock <= self.next_checkpoint_time || self.checkpointed + 1 < self.log_first {
            return;
        }
        self.roll_asked = true;
        out.push(Action::RollLog);
    }

    /// The next time-based checkpoint: the interval from `now`, give or take `pct` percent.
    pub(super) fn schedule_checkpoint(&mut self, now: Micros, pct: u64) {
        let interval = self.cfg.max_checkpoint_interval;
        if interval == 0 {
            return;
        }
        let spread = (u128::from(interval) * u128::from(pct) / 100) as u64;
        debug_assert!(spread <= interval, "a spread of {pct} % passes the interval");
        let delay = (interval - spread).saturating_add(self.rng.below(spread.saturating_mul(2).saturating_add(1)));
        self.next_checkpoint_time = now.saturating_add(delay);
        debug_assert!(delay.abs_diff(interval) <= spread, "checkpoint delay {delay} strays beyond {spread} of {interval}");
    }

    /// Saves the pending checkpoint once its decree has executed and the vote after it (the
    /// checkpoint's "next vote") is the accepted one; if execution went further, at the
    /// current decree.
    pub(super) fn maybe_save(&mut self, out: &mut Vec<Action>) {
        let Some(at) = self.save_at else { return };
        let next_vote = if self.pipelined() {
            self.pending.get(&self.next_execute).map(|(v, _)| v.clone())
        } else {
            (self.accepted.header.decree == self.next_execute).then(|| self.accepted.clone())
        };
        let Some(next_vote) = next_vote.filter(|_| !self.saving && self.next_execute > at) else { return };
        debug_assert!(!self.pipelined() || !next_vote.header.ballot.is_empty(), "a pending vote without a ballot");
        debug_assert!(self.next_execute > 0);
        self.save_at = None;
        self.saving = true;
        let cp = Checkpoint {
            decree: self.next_execute - 1,
            next_vote,
            max_ballot: self.max_ballot,
            config: self.state_config.clone(),
            state_saved: true,
        };
        assert!(cp.decree < self.next_execute && cp.decree >= at, "a checkpoint of {} where {at} is due", cp.decree);
        debug_assert_eq!(cp.next_vote.header.decree, cp.decree + 1, "a checkpoint's next vote follows it");
        // Saved here, fetched by a peer (`check_checkpoint`) or restored by us: it must pass.
        debug_assert_eq!(self.check_checkpoint(&cp), Ok(()), "saving a checkpoint a peer would refuse");
        out.push(Action::SaveCheckpoint(cp));
    }

    /// A peer's checkpoint arrived: load it in place if it is still ahead of us (the original
    /// exits the process instead). Either way, find the ring again.
    pub(super) fn on_checkpoint_fetched(
        &mut self,
        now: Micros,
        fetched: Option<(Checkpoint, u64)>,
        app: &mut dyn Application,
        out: &mut Vec<Action>,
    ) {
        let was_loading = self.loading.take();
        if fetched.is_none() && was_loading.is_none() {
            self.copying = false; // a primary's copy failed; the next status round retries
            return;
        }
        let from = was_loading.unwrap_or(MemberId::EMPTY);
        if let Some(reason) = fetched.as_ref().and_then(|(cp, _)| self.check_checkpoint(cp).err()) {
            self.reject(from, MsgKind::FetchCheckpoint, reason, out);
            return self.start_initializing(now, app, out);
        }
        if let Some((cp, size)) = fetched.filter(|(cp, _)| cp.decree >= self.next_execute) {
            if self.role == Role::Primary {
                self.step_down(out);
            }
            out.push(Action::LoadCheckpoint(cp.clone()));
            let first_seq = self.persist_seq + 1;
            self.next_execute = cp.decree + 1;
            let same_configuration = cp.config.number == self.paxos_config.number;
            if !same_configuration {
                // The votes we hold of the configuration the checkpoint passed are moot: it
                // ended at its reconfiguration decree, and its ballots say nothing in this one.
                self.pending.retain(|_, (v, _)| v.header.config == cp.config.number);
                self.set_paxos_config(cp.config.clone());
                self.max_seen_ballot = Ballot::EMPTY;
            }
            self.state_config = cp.config.clone();
            self.accepted = self.next_vote_or_placeholder(&cp);
            self.accepted_at = now;
            // The runtime starts a new log with the next vote (docs/spec/formats.md §8.1).
            self.accepted_seq =
                if self.accepted.header.ballot.is_empty() { self.persist_seq } else { self.persist(self.accepted.clone(), out) };
            self.keep_next_vote(self.accepted_seq);
            let ballot = cp.max_ballot.max(self.accepted.header.ballot);
            self.set_max_ballot(now, ballot, self.accepted_seq);
            if same_configuration && self.max_ballot > ballot {
                // Our promise is beyond the checkpoint's and the new log's: the record that
                // holds it is in a log a restart no longer reads. Logged again, as a Prepare
                // record (what adopting a promise logs), or a restart would forget it.
                let h = &self.accepted.header;
                let header = Header::new(self.version, self.max_ballot.member, h.decree, self.paxos_config.number, self.max_ballot);
                self.max_ballot_seq = self.persist(Arc::new(Message::new(header, Body::Prepare(Bytes::new()))), out);
            }
            debug_assert!(self.max_ballot >= self.accepted.header.ballot && self.max_ballot_seq <= self.persist_seq);
            // A restart reads the checkpoint and the new log only: our promise must be in one.
            let recoverable = self.max_ballot <= ballot || self.max_ballot_seq >= first_seq;
            assert!(!same_configuration || recoverable, "promise {} held only by a log a restart no longer reads", self.max_ballot);
            debug_assert!(self.pending.keys().all(|&d| d > cp.decree), "a vote kept for a decree the checkpoint covers");
            (self.checkpointed, self.checkpoint_size, self.log_min_decree) = (cp.decree, size, cp.decree + 1);
            // The new log starts after the checkpoint (the journal forgets a roll asked for).
            (self.log_first, self.roll_asked) = (cp.decree + 1, false);
            self.schedule_checkpoint(now, 20);
            self.cache.retain(|(_, v)| v.header.decree > cp.decree && v.header.config == cp.config.number);
        }
        self.start_initializing(now, app, out);
    }

    pub(super) fn on_status_query(&mut self, now: Micros, from: MemberId, query: &Message, out: &mut Vec<Action>) {
        let status = StatusBody {
            query_decree: query.header.decree,
            query_ballot: query.header.ballot,
            last_received_ago_ms: (now.saturating_sub(self.accepted_at) / 1000) as i64,
            min_decree_in_log: self.log_min_decree,
            checkpointed_decree: self.checkpointed,
            checkpoint_size: self.checkpoint_size,
            max_ballot: self.max_ballot,
            state: self.role.status_code(),
        };
        // What peers' `check_status` takes.
        debug_assert!(status.state <= 4 && status.last_received_ago_ms >= 0, "a status response peers would refuse");
        debug_assert_eq!(query.kind(), MsgKind::StatusQuery, "answering something else");
        let (ad, ab) = self.position();
        self.send(Dest::One(from), Message::new(self.header(ad, ab), Body::StatusResponse(status)), 0, out);
    }

    /// `HandleStatusResponseMsg` (docs/spec/behavior.md §2.11).
    pub(super) fn on_status_response(
        &mut self,
        now: Micros,
        from: MemberId,
        msg: Arc<Message>,
        app: &mut dyn Application,
        out: &mut Vec<Action>,
    ) {
        let Body::StatusResponse(s) = &msg.body else { return };
        // A primary that wants a checkpoint copies the first one that is recent enough (even if
        // it has just lost the primary role, as in the original).
        if self.copy_at.is_some_and(|at| s.checkpointed_decree >= at) && !self.copying {
            self.copying = true;
            out.push(Action::FetchCheckpoint { from, decree: s.checkpointed_decree, size: s.checkpoint_size, load: false });
        }
        debug_assert!(self.members.contains(&from) && from != self.me, "admit lets in answers from the other members only");
        let busy = self.learning.is_some() || self.loading.is_some();
        if self.role == Role::Primary || busy || (s.query_decree, s.query_ballot) != self.position() {
            return;
        }
        let (ad, ab) = self.position();
        if self.role != Role::Initializing {
            // A minority ahead of a majority would otherwise livelock elections.
            let (d, b) = decree_ballot(&msg);
            let ahead = if self.pipelined() { d > ad } else { d == ad + 1 && b >= ab };
            if ahead && self.cache.is_empty() {
                self.learn(from, out);
            }
            return;
        }
        self.statuses.insert(from, msg);
        debug_assert!(self.statuses.keys().all(|m| self.members.contains(m) && *m != self.me), "a status counted from a non-member");
        if self.statuses.len() + 1 < self.quorum() {
            return;
        }
        let candidates = self.learn_candidates(ad, ab);
        if !candidates.is_empty() {
            let pick = candidates[self.rng.below(candidates.len() as u64) as usize];
            return self.learn(pick, out);
        }
        if self.statuses.values().any(|m| self.is_ahead(decree_ballot(m), (ad, ab))) {
            // Someone is ahead but nobody still logs our decree: load a checkpoint that covers
            // it, or wait for more answers.
            self.load_from_statuses(ad, out);
            return;
        }
        if self.next_election == Micros::MAX {
            let min_ago = self
                .statuses
                .values()
                .filter_map(|m| match &m.body {
                    Body::StatusResponse(s) => Some(s.last_received_ago_ms.max(0) as u64),
                    _ => None,
                })
                .min()
                .unwrap_or(0)
                .min(now / 1000);
            self.next_election = now - min_ago * 1000 + self.election_delay;
        }
        debug_assert_ne!(self.next_election, Micros::MAX, "a follower that never times out");
        self.move_to_secondary_or_prepare(now, app, out);
    }

    /// The peers of the status round whose logs hold what we miss: from our decree, up to the
    /// first vote waiting in the cache if they reach it, else any beyond our position.
    fn learn_candidates(&self, ad: u64, ab: Ballot) -> Vec<MemberId> {
        let min_needed = self.cache.front().map(|(_, v)| v.header.decree).filter(|&d| d > ad).unwrap_or(u64::MAX);
        let logged_higher = |than: (u64, Ballot)| -> Vec<MemberId> {
            self.statuses
                .iter()
                .filter(|(_, m)| {
                    matches!(&m.body, Body::StatusResponse(s) if s.min_decree_in_log <= ad) && self.is_ahead(decree_ballot(m), than)
                })
                .map(|(id, _)| *id)
                .collect()
        };
        let candidates = logged_higher((min_needed - 1, ab));
        let candidates = if candidates.is_empty() { logged_higher((ad, ab)) } else { candidates };
        debug_assert!(candidates.iter().all(|m| self.statuses.contains_key(m)), "a candidate outside the status round");
        candidates
    }

    /// Fetches, to load, the checkpoint of a peer of the status round that covers our decree,
    /// if one has it. Only one that takes us past what we executed: an older one would be
    /// fetched whole and then not loaded (`on_checkpoint_fetched`), round after round.
    fn load_from_statuses(&mut self, ad: u64, out: &mut Vec<Action>) -> bool {
        debug_assert!(self.role == Role::Initializing && self.learning.is_none() && self.loading.is_none(), "one catch-up at a time");
        let least = ad.max(self.next_execute);
        let with_checkpoint: Vec<(MemberId, u64, u64)> = self
            .statuses
            .iter()
            .filter_map(|(id, m)| match &m.body {
                Body::StatusResponse(s) if s.checkpointed_decree >= least => Some((*id, s.checkpointed_decree, s.checkpoint_size)),
                _ => None,
            })
            .collect();
        if with_checkpoint.is_empty() {
            return false;
        }
        let (from, decree, size) = with_checkpoint[self.rng.below(with_checkpoint.len() as u64) as usize];
        self.loading = Some(from);
        out.push(Action::FetchCheckpoint { from, decree, size, load: true });
        true
    }

    /// Whether a peer at `(d, b)` holds decrees we miss: `IsHigherDecree`, or before version 7
    /// any later decree whatever its ballot. With one decree in flight, a vote for `d` is
    /// proposed only once `d - 1` is chosen, so the peer's log proves ours chosen, and
    /// `apply_learned` moves past it even when our vote there has the higher ballot. (Such a
    /// peer at our next decree is honest: a primary that never heard of its vote re-proposed
    /// ours. One further ahead at a lower ballot arises only from a forged vote we accepted,
    /// which would otherwise keep us from ever learning past it.)
    fn is_ahead(&self, (d, b): (u64, Ballot), (ad, ab): (u64, Ballot)) -> bool {
        is_higher((d, b), (ad, ab)) || (!self.pipelined() && d > ad)
    }

    pub(super) fn learn(&mut self, from: MemberId, out: &mut Vec<Action>) {
        debug_assert!(self.learning.is_none() && self.role != Role::Primary);
        debug_assert!(from != self.me && self.loading.is_none(), "learning from ourselves, or while loading");
        self.learning = Some(from);
        self.candidacy = None;
        self.role = self.role.min_active();
        let decree = self.position().0;
        debug_assert!(matches!(self.role, Role::Initializing | Role::Inactive), "learning while {:?}", self.role);
        out.push(Action::FetchVotes { from, decree });
    }

    pub(super) fn on_learned(
        &mut self,
        now: Micros,
        from: MemberId,
        records: Vec<Arc<Message>>,
        app: &mut dyn Application,
        out: &mut Vec<Action>,
    ) {
        if self.learning != Some(from) {
            return;
        }
        self.learning = None;
        let (records, refused) = self.valid_records(records);
        if let Some((kind, reason)) = refused {
            self.reject(from, kind, reason, out);
        }
        let learned = self.apply_learned(now, records, out);
        debug_assert!(self.learning.is_none() && self.role != Role::Primary, "learning made us lead");
        if !self.members.contains(&self.me) {
            self.role = Role::Inactive;
        } else if !learned || self.role == Role::Inactive {
            self.start_initializing(now, app, out);
        } else {
            // The votes cached meanwhile continue from where learning stopped (`drain_cache`).
            self.become_secondary();
            if self.next_election == Micros::MAX {
                // Learned before any status round armed it: a follower must still time out.
                self.next_election = now.saturating_add(self.election_delay);
            }
        }
        debug_assert!(self.learning.is_none(), "a fetch answered, and another one asked for in its place");
        debug_assert!(self.role != Role::Inactive || !self.members.contains(&self.me), "a member left inactive by learning");
    }

    /// `LearnVotes`: applies a peer's log from our decree on. Succeeds once it has reached the
    /// first cached vote.
    pub(super) fn apply_learned(&mut self, now: Micros, records: Vec<Arc<Message>>, out: &mut Vec<Action>) -> bool {
        if self.pipelined() {
            return self.apply_learned_pipelined(now, records, out);
        }
        let min_needed = self.cache.front().map(|(_, v)| v.header.decree);
        let mut last: Option<(u64, Ballot)> = None;
        for rec in records {
            debug_assert_eq!(self.check_record(&rec, validate::MAX_BALLOT_ID), Ok(()), "a learned record not validated");
            if rec.header.config != self.paxos_config.number {
                return false;
            }
            let (d, b) = decree_ballot(&rec);
            match rec.kind() {
                MsgKind::Prepare => {
                    if b > self.max_ballot {
                        let seq = self.persist(rec, out);
                        self.set_max_ballot(now, b, seq);
                    }
                }
                MsgKind::Vote => {
                    if self.past_reconfiguration(d) {
                        return false;
                    }
                    let (ad, ab) = self.accepted();
                    // The next decree may follow at another ballot: a vote for it is proposed
                    // only once the decree before is chosen, and a peer that learned that
                    // (`proven` below) logged it after its own, higher-ballot vote there.
                    let in_sequence = match last {
                        Some(l) => (is_next((d, b), l) || d == l.0 + 1) && (d == ad || d == ad + 1),
                        None => d == ad,
                    };
                    if !in_sequence {
                        return false;
                    }
                    let prev = last.replace((d, b));
                    // The peer's vote at ad followed by (ad + 1, b) proves ad chosen at a ballot
                    // no higher than b: b's primary proposed ad + 1 once its vote at ad was
                    // chosen. Our vote at ad has a higher ballot, so by Paxos it carries the
                    // same value: ours is chosen too, and we move on to ad + 1 though its ballot
                    // is lower. (The original skips it, and such a replica never catches up.)
                    let proven = b < ab && d == ad + 1 && prev.is_some_and(|(pd, _)| pd == ad);
                    if b < ab && !proven {
                        continue;
                    }
                    if !is_next((d, b), (ad, ab)) && !proven {
                        // The original logs a copy under our ballot here, which would mark our
                        // vote chosen without proof; refusing (and learning again) is safe.
                        return false;
                    }
                    self.log_and_accept(now, rec, proven, out);
                    debug_assert_eq!(self.accepted(), (d, b), "the learned vote is the accepted one");
                    if min_needed.is_some_and(|m| m <= d) {
                        return true;
                    }
                }
                MsgKind::ReconfigurationDecision => {
                    // The next vote starts the new configuration at its first decree.
                    if self.log_decision(now, rec, true, None, out) {
                        last = None;
                    }
                }
                _ => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{config, id};
    use super::*;
    use crate::paxos::{AcceptAll, SEC};

    /// A lone replica heartbeating for `secs` seconds (its log never rolls by size); the host
    /// rolls the log when asked and, if `answer`, reports each save at once. Returns the
    /// checkpoints saved and the rolls asked for.
    fn time_based(interval: Micros, secs: u64, answer: bool) -> (usize, usize) {
        let cfg = CoreConfig { max_checkpoint_interval: interval, ..CoreConfig::default() };
        let mut r = Replica::new(cfg, id("1"), config(&["1"]), 7);
        let (mut now, mut out) = (SEC, Vec::new());
        r.start(now, &mut AcceptAll, &mut out);
        let (mut saved, mut asked, mut roll, mut file) = (0, 0, false, 0);
        while now < secs * SEC {
            let mut inputs = Vec::new();
            for action in out.drain(..) {
                match action {
                    Action::RollLog => (asked, roll) = (asked + 1, true),
                    Action::Persist { seq, record } => {
                        let d = record.header.decree;
                        if roll && record.kind() == MsgKind::Vote && d > file {
                            (roll, file) = (false, d);
                            inputs.push(Input::LogRolled { first_decree: d });
                        }
                        inputs.push(Input::Durable(seq));
                    }
                    Action::SaveCheckpoint(cp) => {
                        saved += 1;
                        if answer {
                            inputs.push(Input::CheckpointSaved { decree: cp.decree, size: 1, min_decree_in_log: file, copied: false });
                        }
                    }
                    _ => {}
                }
            }
            if inputs.is_empty() {
                now = r.next_wakeup().max(now);
                inputs.push(Input::Tick);
            }
            for input in inputs {
                r.step(now, input, &mut AcceptAll, &mut out);
            }
        }
        (saved, asked)
    }

    #[test]
    fn checkpoints_follow_the_interval() {
        assert_eq!(time_based(0, 60, true), (0, 0), "off: no log rolls by size, no checkpoints");
        let (every_4s, _) = time_based(4 * SEC, 60, true);
        let (every_20s, _) = time_based(20 * SEC, 60, true);
        // One every interval (±20 %) plus up to a heartbeat to roll and one to execute past it.
        assert!((8..=15).contains(&every_4s), "{every_4s} checkpoints in a minute, one due every 4 s");
        assert!((2..=3).contains(&every_20s), "{every_20s} checkpoints in a minute, one due every 20 s");
    }

    #[test]
    fn a_checkpoint_that_never_finishes_rolls_the_log_once() {
        // (The first roll is past decree 1: a log from decree 1 would still count as "no roll
        // since the checkpoint of decree 0".)
        assert_eq!(time_based(10 * SEC, 120, false), (1, 1));
    }
}
