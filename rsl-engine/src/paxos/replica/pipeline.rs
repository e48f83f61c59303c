//! Protocol version 7: several decrees in flight. Votes carry the primary's chosen watermark
//! (every decree below it is chosen), acceptors keep every accepted vote not yet executed, and
//! a Prepare re-decides every decree from the candidate's first unexecuted one
//! (docs/core.md has the safety argument).

use super::*;

/// How far ahead of its execution an acceptor takes votes; beyond, it learns instead.
pub(super) const MAX_AHEAD: u64 = 4096;

/// How far beyond a Prepare's decree an answer may report a vote. An acceptor answers only a
/// Prepare at or above the point its log vouches for, and holds votes at most `MAX_AHEAD`
/// beyond its execution, which that point trails by no more than the votes in flight: an
/// answer reporting further is not counted (the new primary would re-propose that whole range
/// at once).
const MAX_REPORTED_AHEAD: u64 = MAX_AHEAD;

impl Replica {
    /// Logs `vote` (unless it is already the one pending at its decree) and keeps it until it
    /// executes. Returns the persist that holds it.
    pub(super) fn accept_pending(&mut self, now: Micros, vote: Arc<Message>, out: &mut Vec<Action>) -> u64 {
        debug_assert!(self.pipelined(), "before version 7 the accepted vote is the only one");
        let (d, b) = decree_ballot(&vote);
        assert!(d >= self.next_execute, "decree {d} already executed");
        assert!(!b.is_empty(), "votes carry a ballot");
        assert!(self.pending.get(&d).is_none_or(|(v, _)| v.header.ballot <= b), "the vote logged at {d} replaced by a lower ballot {b}");
        let seq = match self.pending.get(&d) {
            Some((v, seq)) if v.header.ballot == b => *seq,
            _ => self.persist(vote.clone(), out),
        };
        self.pending.insert(d, (vote.clone(), seq));
        if (d, b) >= self.accepted() {
            (self.accepted, self.accepted_seq, self.accepted_at) = (vote.clone(), seq, now);
        }
        let config = vote.header.config;
        if config > 1 && config - 1 > self.highest_defunct {
            self.highest_defunct = config - 1;
            out.push(Action::Defunct(self.highest_defunct));
        }
        self.set_max_ballot(now, b, seq);
        debug_assert!(self.max_ballot >= b, "accepted ({d},{b}) above the promise {}", self.max_ballot);
        debug_assert!(self.pending.get(&d).is_some_and(|(v, s)| v.header.ballot == b && *s == seq), "the vote kept is the one logged");
        self.maybe_save(out);
        seq
    }

    /// The primary's next vote, logged (a re-proposal of a decree we executed is logged but
    /// not kept: it only makes our log vouch for it).
    pub(super) fn propose_pipelined(&mut self, now: Micros, body: VoteBody, out: &mut Vec<Action>) -> (Arc<Message>, u64) {
        debug_assert!(self.pipelined() && self.role == Role::Primary, "only a version 7 primary proposes here");
        let decree = self.next_propose;
        debug_assert!(decree >= self.vouched, "re-proposing decree {decree}, which our log already proves");
        // A decree we executed is chosen: re-proposed, it must carry the value we executed.
        let executed = self.recent.get(&decree).and_then(|(v, _)| v.as_vote()).map(|v| (&v.requests, &v.reconfig));
        debug_assert!(executed.is_none_or(|e| e == (&body.requests, &body.reconfig)), "decree {decree} re-proposed with another value");
        self.next_propose += 1;
        let mut header = self.header(decree, self.max_ballot);
        header.payload = self.next_execute;
        let vote = Arc::new(Message::new(header, Body::Vote(body)));
        let seq =
            if decree >= self.next_execute { self.accept_pending(now, vote.clone(), out) } else { self.log_executed(now, &vote, out) };
        self.advance_vouched(self.max_ballot, self.next_execute);
        (vote, seq)
    }

    /// Logs a vote for a decree we executed (its value is the chosen one) so that our log
    /// vouches for it.
    fn log_executed(&mut self, now: Micros, vote: &Arc<Message>, out: &mut Vec<Action>) -> u64 {
        let (d, b) = decree_ballot(vote);
        debug_assert!(d < self.next_execute);
        debug_assert!(self.pipelined(), "only version 7 logs votes for executed decrees");
        let seq = self.persist(vote.clone(), out);
        if let Some((_, logged)) = self.recent.get_mut(&d) {
            *logged = (*logged).max(b);
        }
        self.set_max_ballot(now, b, seq);
        debug_assert!(self.max_ballot >= b, "logged ({d},{b}) above the promise {}", self.max_ballot);
        seq
    }

    /// Moves `vouched` over executed decrees whose logged ballot is at least `ballot`: a vote
    /// of `ballot`'s primary with a watermark past them, now in our log, proves them chosen.
    fn advance_vouched(&mut self, ballot: Ballot, watermark: u64) {
        while self.vouched < watermark.min(self.next_execute) && self.recent.get(&self.vouched).is_some_and(|(_, b)| *b >= ballot) {
            self.vouched += 1;
        }
        self.recent = self.recent.split_off(&self.vouched);
        debug_assert!(self.vouched <= self.next_execute, "vouched {} for a decree not executed", self.vouched);
        debug_assert!(self.recent.keys().next().is_none_or(|&d| d >= self.vouched), "executed votes kept below the vouched point");
    }

    /// A checkpoint of ours of `decree` (saved, or copied from a peer) vouches for every decree
    /// up to it: a restart now would load it and start `vouched` past it, so going on as that
    /// restart would is as safe. Without it, a decree our log cannot prove (executed on a
    /// watermark before the vote that proves it was logged, and not re-proposed by the next
    /// primary) held `vouched` back for good, and once the peers' logs had moved past it, we
    /// found nobody to learn from (v7 soak seed 31683).
    pub(super) fn vouch_checkpointed(&mut self, decree: u64) {
        assert!(decree < self.next_execute, "a checkpoint of a decree not executed");
        if self.pipelined() && decree >= self.vouched {
            self.vouched = decree + 1;
            self.recent = self.recent.split_off(&self.vouched);
        }
        debug_assert!(self.vouched <= self.next_execute);
    }

    /// Executes every decree below `watermark` that a vote of `ballot`'s primary vouches for:
    /// one we hold at that ballot or a higher one (a proposal above the ballot that chose a
    /// value carries that value), and vouches for them: the vote is in our log. Returns whether
    /// execution got all the way.
    pub(super) fn apply_watermark(&mut self, ballot: Ballot, watermark: u64, out: &mut Vec<Action>) -> bool {
        debug_assert!(self.pipelined(), "watermarks are version 7's");
        debug_assert!(ballot <= self.max_ballot, "a watermark under {ballot}, above our promise {}", self.max_ballot);
        let start = self.next_execute;
        while self.next_execute < watermark {
            let decree = self.next_execute;
            let held = self.pending.get(&decree).filter(|(v, _)| v.header.ballot >= ballot).map(|(v, _)| v.clone());
            let Some(vote) = held else { break };
            if vote.as_vote().is_some_and(|v| v.reconfig.is_some()) {
                // A watermark past a reconfiguration would mean the old configuration went on
                // beyond it, which no honest primary's does (the decision alone executes it): the
                // vote we hold there was forged. Drop it and learn the decree.
                self.pending.remove(&decree);
                self.reject(vote.header.sender, MsgKind::Vote, Rejection::Inconsistent, out);
                break;
            }
            self.pending.remove(&decree);
            self.execute(vote, Vec::new(), None, out);
        }
        self.advance_vouched(ballot, watermark);
        self.maybe_save(out);
        debug_assert!(self.next_execute <= watermark.max(start), "executed past the watermark {watermark}");
        self.next_execute >= watermark
    }

    /// Applies a decision `(d, b)` (a message, or a record of a peer's log) at once if it can
    /// apply whole: every decree from our next one to `d` held at a ballot of at least `b`, and
    /// only `d`'s vote a reconfiguration. Then the decrees below it execute and the decision is
    /// logged with them, so replay repeats it. Otherwise nothing executes (we learn): decrees
    /// executed on a decision that is not logged, a forged one, could not be replayed, and
    /// vouching for them let our Prepares skip decrees our log could not prove to the replicas
    /// that missed them.
    pub(super) fn apply_decision(&mut self, now: Micros, decision: Arc<Message>, out: &mut Vec<Action>) -> bool {
        debug_assert_eq!(decision.kind(), MsgKind::ReconfigurationDecision);
        debug_assert!(self.pipelined(), "before version 7 a decision decides the accepted vote (log_decision)");
        let (d, b) = decree_ballot(&decision);
        let at_least_b = self.pending.get(&d).filter(|(v, _)| v.header.ballot >= b);
        if at_least_b.is_some_and(|(v, _)| v.as_vote().is_none_or(|v| v.reconfig.is_none())) {
            // By Paxos the vote there carries the decided value: this decision is forged.
            self.reject(decision.header.sender, MsgKind::ReconfigurationDecision, Rejection::Inconsistent, out);
            return false;
        }
        let held = |k: u64| {
            self.pending.get(&k).is_some_and(|(v, _)| v.header.ballot >= b && (k == d) == v.as_vote().is_some_and(|v| v.reconfig.is_some()))
        };
        // Stops at the first decree not held: at most one step past `pending`.
        if d < self.next_execute || !(self.next_execute..=d).all(held) {
            return false;
        }
        self.apply_watermark(b, d, out);
        let applied = self.log_decision(now, decision, true, None, out);
        debug_assert!(!applied || self.next_execute == d + 1, "decision {d} applied, execution at {}", self.next_execute);
        applied
    }

    pub(super) fn on_vote_pipelined(
        &mut self,
        now: Micros,
        from: MemberId,
        vote: Arc<Message>,
        app: &mut dyn Application,
        out: &mut Vec<Action>,
    ) {
        let (d, b) = decree_ballot(&vote);
        debug_assert!(self.members.contains(&from) && from != self.me, "admit lets in votes from the other members only");
        if b < self.max_ballot {
            return self.not_accepted(from, out);
        }
        if self.role == Role::Primary {
            self.step_down(out);
        }
        if d >= self.next_execute + MAX_AHEAD {
            self.cache.clear();
            return self.start_initializing(now, app, out);
        }
        // A decree we executed is chosen: its re-proposal carries the same value. It is still
        // logged, so that our log vouches for that decree to a replica learning from it.
        let seq = if d >= self.next_execute { self.accept_pending(now, vote.clone(), out) } else { self.log_executed(now, &vote, out) };
        self.next_election = now.saturating_add(self.election_delay);
        assert_eq!(self.max_ballot, b, "a vote at {b} acknowledged under another promise");
        let cookie = vote.as_vote().map(|v| v.cookie.clone()).unwrap_or_default();
        let mut relinquished = false;
        if self.accept_check(app, &vote.header.sender, &cookie) {
            let mut msg = Message::new(self.header(d, b), Body::VoteAccepted);
            msg.header.payload = self.vote_payload;
            let after = seq.max(self.max_ballot_seq);
            self.send(Dest::One(from), msg, after, out);
            relinquished = vote.as_vote().is_some_and(|v| v.relinquish);
        }
        self.become_secondary();
        // After `become_secondary`, which clears it: the primary is going away, stand at once.
        self.force_reelection = relinquished;
        debug_assert!(self.role == Role::Secondary && !self.is_primary, "following a vote means not leading");
        if !self.apply_watermark(b, vote.header.payload, out) {
            // We miss a decree the primary says is chosen: fetch it.
            self.start_initializing(now, app, out);
        }
    }

    /// A Prepare re-decides everything from its decree on: answer with every vote we hold
    /// there, one PrepareAccepted each, each saying how many to expect.
    pub(super) fn on_prepare_pipelined(
        &mut self,
        now: Micros,
        from: MemberId,
        prep: Arc<Message>,
        app: &mut dyn Application,
        out: &mut Vec<Action>,
    ) {
        let (p, b) = decree_ballot(&prep);
        if b < self.max_ballot || p < self.vouched {
            // Below our promise, or behind what our log proves: the candidate learns first.
            return self.not_accepted(from, out);
        }
        let Some(answer) = self.take_promise(now, from, &prep, app, out) else { return };
        assert_eq!(self.max_ballot, b, "a Prepare answered without being our promise");
        if answer {
            // What we executed from there (the chosen values) and what we hold beyond.
            let executed = self.recent.range(p..).map(|(_, (v, _))| v.clone());
            let votes: Vec<Arc<Message>> = executed.chain(self.pending.range(p..).map(|(_, (v, _))| v.clone())).collect();
            debug_assert!(votes.iter().all(|v| v.header.ballot <= b), "reporting a vote above the promise it answers");
            let after = self.persist_seq;
            let count = votes.len() as u64;
            let votes = if votes.is_empty() { vec![placeholder(self.version, p, self.paxos_config.number)] } else { votes };
            for vote in votes {
                let mut msg = Message::new(self.header(p, b), Body::PrepareAccepted(Box::new((*vote).clone())));
                msg.header.payload = count;
                self.send(Dest::One(from), msg, after, out);
            }
        }
        if self.role == Role::Primary {
            return;
        }
        if p > self.next_execute {
            self.start_initializing(now, app, out);
        } else {
            self.become_secondary();
        }
    }

    pub(super) fn on_prepare_accepted_pipelined(&mut self, now: Micros, from: MemberId, msg: &Message, out: &mut Vec<Action>) {
        debug_assert!(self.members.contains(&from) && from != self.me, "admit lets in answers from the other members only");
        let (Some(c), Body::PrepareAccepted(vote)) = (&mut self.candidacy, &msg.body) else { return };
        let (p, b) = decree_ballot(&c.prepare);
        let (vd, vb) = decree_ballot(vote);
        if decree_ballot(msg) != (p, b) || b != self.max_ballot || vd < p || vb > b {
            return; // not an answer to our Prepare, or an invalid one
        }
        if vd >= p + MAX_REPORTED_AHEAD {
            return self.reject(from, MsgKind::PrepareAccepted, Rejection::Inconsistent, out);
        }
        let (expected, got) = c.answers.entry(from).or_insert_with(|| (msg.header.payload, BTreeSet::new()));
        if !vb.is_empty() {
            got.insert(vd);
            if c.best.get(&vd).is_none_or(|v| v.header.ballot < vb) {
                c.best.insert(vd, Arc::new((**vote).clone()));
            }
        }
        if got.len() as u64 >= *expected {
            c.promises.insert(from);
        }
        debug_assert!(c.best.keys().next().is_none_or(|&d| d >= p), "a report before the Prepare's decree {p}");
        self.check_prepared(now, out);
    }

    /// Re-proposes, under our ballot, every decree from the Prepare's on up to the highest any
    /// answer held: the highest-ballot vote reported for each, or an empty vote for a gap. A
    /// reconfiguration vote ends the range (nothing is proposed beyond it), unless a vote beyond
    /// it was reported at a higher ballot: then it was never chosen and gives way to an empty
    /// vote (docs/core.md, "Reconfiguration").
    pub(super) fn become_primary_pipelined(&mut self, now: Micros, c: Candidacy, out: &mut Vec<Action>) {
        debug_assert_eq!(c.prepare.header.ballot, self.max_ballot, "elected under a ballot we no longer promise");
        let plan = self.reproposals(&c);
        let last = plan.last().map(|(d, _)| *d).expect("at least the first decree");
        self.role = Role::Primary;
        self.led_at = now;
        self.force_reelection = false;
        self.recovering = Some(last);
        self.next_propose = plan[0].0;
        for (_, body) in plan {
            self.propose(now, body, Vec::new(), None, out);
            if self.role != Role::Primary {
                return;
            }
        }
        debug_assert_eq!(self.next_propose, last + 1);
    }

    /// What a new primary re-proposes, decree by decree (see `become_primary_pipelined`).
    pub(super) fn reproposals(&self, c: &Candidacy) -> Vec<(u64, VoteBody)> {
        // From what our log proves on: decrees we executed keep the value we executed.
        let first = c.prepare.header.decree.max(self.vouched);
        assert!(first <= self.next_execute, "the Prepare named a decree we had executed or the next");
        let last = c.best.keys().next_back().copied().unwrap_or(first).max(first).max(self.next_execute.saturating_sub(1));
        let mut plan = Vec::new();
        for decree in first..=last {
            let chosen = self.recent.get(&decree).map(|(v, _)| v.clone());
            let reported = chosen.or_else(|| c.best.get(&decree).cloned());
            let mut body = reported.as_ref().and_then(|v| v.as_vote().cloned()).unwrap_or_default();
            body.cookie = self.primary_cookie.clone();
            body.relinquish = false;
            let ballot = reported.map_or(Ballot::EMPTY, |v| v.header.ballot);
            let reconfig = body.reconfig.is_some();
            debug_assert!(!reconfig || decree >= self.next_execute, "an executed reconfiguration switched the configuration");
            let outbid = reconfig && c.best.range(decree + 1..).any(|(_, v)| v.header.ballot > ballot);
            if outbid {
                body = VoteBody { cookie: body.cookie, ..Default::default() };
            }
            plan.push((decree, body));
            if reconfig && !outbid {
                break;
            }
        }
        debug_assert!(plan.first().is_some_and(|(d, _)| *d == first));
        debug_assert!(plan.windows(2).all(|w| w[1].0 == w[0].0 + 1), "re-proposals with a gap");
        debug_assert!(plan.iter().all(|(_, body)| !body.relinquish), "a new primary re-proposing a relinquish");
        plan
    }

    /// Learning from a peer's log: every vote is kept, and each watermark executes what it
    /// vouches for. Succeeds if execution reached the first vote waiting in the cache, or
    /// moved at all when none waits.
    pub(super) fn apply_learned_pipelined(&mut self, now: Micros, records: Vec<Arc<Message>>, out: &mut Vec<Action>) -> bool {
        debug_assert!(self.pipelined(), "a version 7 log");
        let start = (self.next_execute, self.vouched);
        for rec in records {
            debug_assert_eq!(self.check_record(&rec, validate::MAX_BALLOT_ID), Ok(()), "a learned record not validated");
            // A pipelined log interleaves configurations: votes the old one held beyond its
            // reconfiguration precede its decision, the new one's follow it. Each is read in
            // the configuration it belongs to.
            if rec.header.config != self.paxos_config.number {
                continue;
            }
            let (d, b) = decree_ballot(&rec);
            match rec.kind() {
                MsgKind::Prepare if b > self.max_ballot => {
                    let seq = self.persist(rec, out);
                    self.set_max_ballot(now, b, seq);
                }
                MsgKind::Vote if !b.is_empty() => {
                    if d < self.next_execute {
                        self.log_executed(now, &rec, out);
                    } else if self.pending.get(&d).is_none_or(|(v, _)| v.header.ballot <= b) {
                        self.accept_pending(now, rec.clone(), out);
                    } else if let Some((held, _)) = self.pending.get(&d) {
                        // We hold a higher ballot there: this vote is not kept, but if its
                        // watermark lets us vouch for more, it is logged, since our log must
                        // hold what we vouch for, or peers that see us ahead learn from us,
                        // over and over, what it cannot prove (the props seeds of
                        // `a_watermark_learned_below_a_held_ballot_is_logged`). If ours is
                        // still pending it is logged again after it: the execution spill
                        // re-reads the newest vote of a decree, which must be the one we hold
                        // (runtime/spill.rs). (Executed on this watermark, or dropped as a
                        // forged reconfiguration, it is not.)
                        let (held, vouched) = (held.clone(), self.vouched);
                        self.apply_watermark(b, rec.header.payload, out);
                        if self.vouched > vouched {
                            self.persist(rec.clone(), out);
                            if self.pending.get(&d).is_some_and(|(v, _)| Arc::ptr_eq(v, &held)) {
                                self.persist(held, out);
                            }
                        }
                        continue;
                    }
                    self.apply_watermark(b, rec.header.payload, out);
                }
                MsgKind::ReconfigurationDecision => {
                    self.apply_decision(now, rec, out);
                }
                _ => {}
            }
        }
        debug_assert!((self.next_execute, self.vouched) >= start, "learning went back");
        match self.cache.front() {
            Some((_, v)) => self.next_execute >= v.header.decree,
            None => (self.next_execute, self.vouched) > start,
        }
    }

    /// Replay, once the vote at our next decree is in: the watermarks of votes we hold beyond
    /// it. A log is not in decree order: a vote whose watermark covers a decree can precede the
    /// vote for that decree, which arrived later (resent, or learned), after which execution went
    /// on with that watermark. (Only honest ballots here: the simulator's adversary soak found a
    /// log that replay could not get past, seed 5848.)
    /// None of them is applied past a reconfiguration vote held (no honest one reaches past
    /// it; a forged one would have it dropped).
    fn apply_earlier_watermarks(&mut self, out: &mut Vec<Action>) {
        let is_reconfig = |v: &Message| v.as_vote().is_some_and(|v| v.reconfig.is_some());
        loop {
            let Some((next, _)) = self.pending.get(&self.next_execute) else { return };
            let reconfig = self.pending.range(self.next_execute..).find(|(_, (v, _))| is_reconfig(v)).map(|(d, _)| *d);
            let covering = self.pending.values().map(|(v, _)| (v.header.ballot, v.header.payload.min(reconfig.unwrap_or(u64::MAX))));
            let best = covering.filter(|(b, w)| *w > self.next_execute && *b <= next.header.ballot).max_by_key(|(_, w)| *w);
            let Some((ballot, watermark)) = best else { return };
            let before = self.next_execute;
            self.apply_watermark(ballot, watermark, out);
            debug_assert!(self.next_execute <= watermark.max(before), "executed past the watermark {watermark}");
            if self.next_execute == before {
                return;
            }
        }
    }

    /// Replays one durable record of a pipelined log. Records of another configuration (a
    /// checkpoint's carried-over tail) are not this configuration's votes.
    pub(super) fn replay_pipelined(&mut self, record: &Arc<Message>, out: &mut Vec<Action>) -> Result<(), ReplayError> {
        debug_assert!(self.pipelined() && self.persist_seq == 0, "replaying a version 7 log before start");
        let (d, b) = decree_ballot(record);
        if record.header.config != self.paxos_config.number {
            return Ok(());
        }
        self.max_ballot = self.max_ballot.max(b);
        match record.kind() {
            MsgKind::Vote if !b.is_empty() => {
                if d < self.next_execute {
                    if let Some((_, logged)) = self.recent.get_mut(&d) {
                        *logged = (*logged).max(b);
                    }
                } else if self.pending.get(&d).is_none_or(|(v, _)| v.header.ballot <= b) {
                    self.pending.insert(d, (record.clone(), 0));
                    if (d, b) >= self.accepted() {
                        self.accepted = record.clone();
                    }
                }
                self.apply_watermark(b, record.header.payload, out);
                if d == self.next_execute {
                    self.apply_earlier_watermarks(out);
                }
            }
            MsgKind::ReconfigurationDecision => {
                // We logged it only once every decree below it had executed, and a vote of ours
                // holds each executed value at its highest logged ballot. A log that does not
                // is not ours to trust.
                let out_of_sequence = ReplayError { kind: record.kind(), decree: d, after_decree: self.next_execute };
                self.apply_watermark(b, d, out);
                while self.next_execute < d {
                    let Some((vote, _)) = self.pending.remove(&self.next_execute) else { return Err(out_of_sequence) };
                    if vote.as_vote().is_some_and(|v| v.reconfig.is_some()) {
                        return Err(out_of_sequence);
                    }
                    self.execute(vote, Vec::new(), None, out);
                }
                if !self.log_decision(0, record.clone(), false, None, out) {
                    return Err(out_of_sequence);
                }
                debug_assert_eq!(self.next_execute, d + 1, "a replayed decision executes its decree");
            }
            _ => {}
        }
        debug_assert!(self.max_ballot >= b, "replayed {b} above the promise {}", self.max_ballot);
        Ok(())
    }
}
