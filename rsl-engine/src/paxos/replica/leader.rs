//! The leader side: submitting requests, batching them into votes, the votes in flight and
//! their quorums, elections through a Prepare, re-proposing the freshest value, stepping down.

use super::*;

impl Replica {
    /// `ChangeConfiguration` (v3+, primary only): a reconfiguration vote, never batched with
    /// anything. `cookie` comes back through `ConfigurationChanged` or an abort.
    pub fn change_configuration(
        &mut self,
        now: Micros,
        members: MemberSet,
        cookie: Cookie,
        out: &mut Vec<Action>,
    ) -> Result<(), SubmitError> {
        if !self.version.has_config() {
            return Err(SubmitError::Unsupported);
        }
        if !validate::valid_member_set(&members) {
            return Err(SubmitError::InvalidRequest);
        }
        if self.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        if !self.is_primary || self.relinquishing {
            return Err(SubmitError::NotPrimary);
        }
        debug_assert_eq!(self.role, Role::Primary, "primary to the application, primary to the protocol");
        let body = VoteBody { reconfig: Some(members), cookie: self.primary_cookie.clone(), ..Default::default() };
        self.to_send.push_back(Pending { body, cookies: Vec::new(), bytes: 0, closed: true, config_cookie: Some(cookie), since: now });
        self.send_next(now, out);
        // Its own write is not yet durable, so it cannot have been chosen: the cookie is held.
        debug_assert!(
            self.to_send.iter().any(|p| p.config_cookie == Some(cookie))
                || self.outstanding.iter().any(|o| o.config_cookie == Some(cookie)),
            "ChangeConfiguration cookie {cookie} held nowhere"
        );
        self.check_invariants();
        Ok(())
    }

    /// `ReplicateRequest` (or, with `exclusive`, `ReplicateRequestExclusiveVote`).
    pub fn submit(
        &mut self,
        now: Micros,
        request: Bytes,
        cookie: Cookie,
        exclusive: bool,
        out: &mut Vec<Action>,
    ) -> Result<(), SubmitError> {
        self.check_submit(&request)?;
        let size = request.len() + 4;
        self.enqueue(now, request, cookie, exclusive, out);
        // The original queues without a bound; one request still goes when nothing waits.
        debug_assert!(self.to_send_bytes <= self.cfg.max_cache_bytes.max(size), "the send queue passed its bound");
        self.check_invariants();
        Ok(())
    }

    /// `ReplicateRequestExclusiveVote(isLastDecree = true)` (docs/spec/behavior.md §2.19): the request
    /// gets a vote of its own, and the replica is shutting down from now on. Later submits
    /// fail with `ShuttingDown`; once the votes in flight are chosen it proposes nothing more
    /// (no heartbeats), and it no longer stands for election, so the secondaries time out and
    /// elect another primary. It keeps accepting votes as any member does.
    pub fn submit_last(&mut self, now: Micros, request: Bytes, cookie: Cookie, out: &mut Vec<Action>) -> Result<(), SubmitError> {
        self.check_submit(&request)?;
        self.enqueue(now, request, cookie, true, out);
        self.shutting_down = true;
        debug_assert!(!self.heartbeats(), "a replica shutting down proposes no heartbeats");
        self.check_invariants();
        Ok(())
    }

    fn check_submit(&self, request: &Bytes) -> Result<(), SubmitError> {
        if self.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        if request.is_empty() || self.vote_overhead() + request.len() + 4 > self.cfg.max_message_bytes {
            return Err(SubmitError::InvalidRequest);
        }
        if !self.is_primary {
            return Err(SubmitError::NotPrimary);
        }
        // The original queues without a bound; one request still goes when nothing waits.
        if !self.to_send.is_empty() && self.to_send_bytes + request.len() + 4 > self.cfg.max_cache_bytes {
            return Err(SubmitError::Full);
        }
        debug_assert_eq!(self.role, Role::Primary, "primary to the application, primary to the protocol");
        Ok(())
    }

    /// What a vote of requests encodes besides them: the header, the cookie (its length and
    /// bytes) and the reconfiguration and relinquish flags (docs/spec/formats.md §5.1).
    pub(super) fn vote_overhead(&self) -> usize {
        crate::format::message::MAX_HEADER_SIZE + 4 + self.primary_cookie.len() + 2
    }

    /// The bytes of the requests queued behind the votes in flight.
    pub fn queued_bytes(&self) -> usize {
        self.to_send_bytes
    }

    /// Empties the send queue (its cookies are the caller's to return).
    pub(super) fn take_to_send(&mut self) -> VecDeque<Pending> {
        debug_assert_eq!(self.to_send_bytes, self.to_send.iter().map(|p| p.bytes).sum::<usize>(), "the send queue's size is kept");
        self.to_send_bytes = 0;
        std::mem::take(&mut self.to_send)
    }

    fn enqueue(&mut self, now: Micros, request: Bytes, cookie: Cookie, exclusive: bool, out: &mut Vec<Action>) {
        debug_assert_eq!(self.role, Role::Primary);
        let size = request.len() + 4;
        self.to_send_bytes += size;
        let room = self.cfg.max_vote_bytes.saturating_sub(self.vote_overhead());
        match self.to_send.back_mut() {
            Some(tail) if !tail.closed && !exclusive && tail.bytes + size <= room => {
                tail.body.requests.push(request);
                tail.cookies.push(cookie);
                tail.bytes += size;
            }
            _ => self.to_send.push_back(Pending {
                body: VoteBody { requests: vec![request], cookie: self.primary_cookie.clone(), ..Default::default() },
                cookies: vec![cookie],
                bytes: size,
                closed: exclusive,
                config_cookie: None,
                since: now,
            }),
        }
        self.send_next(now, out);
        // Inside the assertion: a release build must not scan every queued cookie per request.
        debug_assert!(
            self.to_send.iter().any(|p| p.cookies.contains(&cookie)) || self.outstanding.iter().any(|o| o.cookies.contains(&cookie)),
            "request cookie {cookie} held nowhere"
        );
    }

    pub(super) fn on_vote_accepted(&mut self, now: Micros, from: MemberId, msg: &Message, out: &mut Vec<Action>) {
        if self.role != Role::Primary {
            return;
        }
        debug_assert!(self.members.contains(&from) && from != self.me, "admit lets in answers from the other members only");
        self.record_progress(now, from, msg);
        // Before version 7 a VoteAccepted names the acceptor's highest vote, which must be ours
        // and current; from 7 on it names the decree it acknowledges.
        let current = if self.pipelined() { (msg.header.decree, self.max_ballot) } else { (self.accepted.header.decree, self.max_ballot) };
        if decree_ballot(msg) != current {
            return;
        }
        match self.outstanding.iter_mut().find(|o| decree_ballot(&o.vote) == current) {
            Some(o) => o.acks.insert(from),
            None => return,
        };
        self.check_chosen(now, out);
    }

    /// Every VoteAccepted counts for health, current or not (RSL records it before checking).
    fn record_progress(&mut self, now: Micros, from: MemberId, msg: &Message) {
        if !self.members.contains(&from) {
            return;
        }
        debug_assert_ne!(from, self.me, "progress of our own");
        let p = self.progress.entry(from).or_default();
        (p.voted_at, p.decree, p.payload) = (now, p.decree.max(msg.header.decree), msg.header.payload);
        debug_assert!(self.progress.len() <= self.members.len(), "only members have progress");
    }

    /// A vote in flight is chosen once this replica's own write is durable and a quorum
    /// counting it has accepted; they take effect in decree order.
    pub(super) fn check_chosen(&mut self, now: Micros, out: &mut Vec<Action>) {
        while self.role == Role::Primary && self.outstanding.front().is_some_and(|o| self.quorum_reached(o.seq, &o.acks)) {
            self.vote_chosen(now, out);
        }
        self.send_next(now, out);
        // A vote proposed just now waits for its own write: nothing chosen is left unapplied.
        let unapplied = self.outstanding.front().is_some_and(|o| self.quorum_reached(o.seq, &o.acks));
        debug_assert!(self.role != Role::Primary || !unapplied, "a chosen vote left in flight");
    }

    fn quorum_reached(&self, seq: u64, acks: &BTreeSet<MemberId>) -> bool {
        debug_assert!(!acks.contains(&self.me), "we count ourselves once, by our own write");
        debug_assert!(acks.iter().all(|m| self.members.contains(m)), "a quorum counting a non-member");
        self.durable_seq >= seq && acks.len() + 1 >= self.quorum()
    }

    fn vote_chosen(&mut self, now: Micros, out: &mut Vec<Action>) {
        let o = self.outstanding.pop_front().expect("checked by the caller");
        assert!(self.durable_seq >= o.seq, "vote {} chosen before our own write {} was durable", o.vote.header.decree, o.seq);
        assert!(
            o.acks.len() + 1 >= self.quorum(),
            "vote {} chosen by {} of {}",
            o.vote.header.decree,
            o.acks.len() + 1,
            self.members.len()
        );
        self.led_at = now;
        self.pace = Some(window::Pace::measure(o.proposed_at, o.durable_at, now));
        debug_assert_eq!(self.role, Role::Primary);
        debug_assert!(self.pipelined() || decree_ballot(&o.vote) == self.accepted());
        if self.outstanding.is_empty() {
            self.action_deadline = Micros::MAX;
        }
        let decree = o.vote.header.decree;
        if self.recovering == Some(decree) {
            self.is_primary = true;
            out.push(Action::NotifyStatus { primary: true });
        }
        if o.vote.as_vote().is_some_and(|v| v.relinquish) {
            debug_assert!(self.relinquishing, "a relinquish vote chosen after relinquishing ended");
            // The original exits here without executing it; what was queued behind it goes back.
            for p in self.take_to_send() {
                Self::abort_cookies(p.cookies, p.config_cookie, AbortReason::ShuttingDown, out);
            }
            out.push(Action::ShutDown);
            self.outstanding.clear();
            return;
        }
        if o.vote.as_vote().is_some_and(|v| v.reconfig.is_some()) {
            // Chosen: announce and log the decision, which executes it and switches over. It
            // went alone, so everything before it has executed here.
            debug_assert!(self.outstanding.is_empty(), "nothing is proposed beyond a reconfiguration vote");
            debug_assert_eq!(self.next_execute, decree, "everything before the reconfiguration executed here");
            let decision = Arc::new(Message::new(self.header(decree, self.max_ballot), Body::ReconfigurationDecision));
            // To each member of the configuration it ends, named now: `Dest::All` would be
            // resolved after the switch, to the new configuration's members, and the old ones
            // would never learn their decree was chosen (one left out of the new configuration
            // has no other way to).
            for member in self.members.iter().filter(|m| **m != self.me) {
                out.push(Action::Send { to: Dest::One(*member), msg: decision.clone(), after: 0 });
            }
            let switched = self.log_decision(now, decision, true, o.config_cookie, out);
            assert!(switched, "the primary logs the decision of the reconfiguration it saw chosen");
            return;
        }
        if self.next_execute == decree {
            self.pending.remove(&decree);
            self.execute(o.vote, o.cookies, None, out);
        }
        // Chosen in order, each executed as it is: a gap here would never be filled.
        debug_assert!(self.next_execute > decree, "decree {decree} chosen, {} next to execute", self.next_execute);
        if self.recovering.take_if(|d| *d == decree).is_some() {
            out.push(Action::NotifyPrimaryRecovered);
        }
    }

    /// `RelinquishPrimary`: queues the last vote, closed to appending (unlike the original,
    /// whose later requests could join it and never return their cookies).
    pub(super) fn relinquish(&mut self, now: Micros, out: &mut Vec<Action>) {
        if !self.version.has_relinquish() || !self.is_primary || self.to_send.iter().any(|p| p.body.relinquish) {
            return;
        }
        let body = VoteBody { relinquish: true, cookie: self.primary_cookie.clone(), ..Default::default() };
        self.to_send.push_back(Pending { body, cookies: Vec::new(), bytes: 0, closed: true, config_cookie: None, since: now });
        self.send_next(now, out);
        debug_assert!(self.relinquishing || self.to_send.iter().any(|p| p.body.relinquish), "the relinquish vote was lost");
    }

    /// Proposes queued votes while the window has room and each is due (`next_batch_at`: at
    /// once with nothing in flight; otherwise when full or waited enough). A reconfiguration
    /// or relinquish vote goes alone: nothing else is in flight with it.
    pub(super) fn send_next(&mut self, now: Micros, out: &mut Vec<Action>) {
        debug_assert_eq!(self.to_send_bytes, self.to_send.iter().map(|p| p.bytes).sum::<usize>(), "the send queue's size is kept");
        while self.next_batch_at().is_some_and(|at| at <= now) {
            let p = self.to_send.pop_front().expect("a batch is due");
            self.to_send_bytes -= p.bytes;
            self.propose(now, p.body, p.cookies, p.config_cookie, out);
        }
        debug_assert!(self.next_batch_at().is_none_or(|at| at > now), "a batch due left waiting");
    }

    /// `SendNextVote`: stamps the vote, persists it, and sends it in parallel.
    pub(super) fn propose(
        &mut self,
        now: Micros,
        body: VoteBody,
        cookies: Vec<Cookie>,
        config_cookie: Option<Cookie>,
        out: &mut Vec<Action>,
    ) {
        assert!(self.role == Role::Primary, "only a primary proposes");
        assert_eq!(self.max_ballot.member, self.me, "only the ballot's owner proposes");
        debug_assert!(!self.relinquishing, "nothing is proposed after the relinquish vote");
        self.relinquishing |= body.relinquish;
        let (vote, seq) = if self.pipelined() {
            self.propose_pipelined(now, body, out)
        } else {
            assert!(self.outstanding.is_empty(), "one outstanding vote before version 7");
            let (ad, ab) = self.accepted();
            let decree = if self.max_ballot == ab { ad + 1 } else { ad };
            let vote = Arc::new(Message::new(self.header(decree, self.max_ballot), Body::Vote(body)));
            self.log_and_accept(now, vote, false, out);
            (self.accepted.clone(), self.accepted_seq)
        };
        debug_assert!(vote.header.ballot == self.max_ballot && seq == self.persist_seq, "the vote proposed is ours, just logged");
        out.push(Action::Send { to: Dest::All, msg: vote.clone(), after: 0 });
        let durable_at = if self.durable_seq >= seq { now } else { Micros::MAX };
        let proposed = Outstanding { vote, seq, acks: BTreeSet::new(), cookies, config_cookie, proposed_at: now, durable_at };
        self.outstanding.push_back(proposed);
        if self.outstanding.len() == 1 {
            self.action_deadline = now.saturating_add(self.cfg.vote_retry_interval);
        }
        self.last_proposed = now;
        while self.outstanding.front().is_some_and(|o| self.quorum_reached(o.seq, &o.acks)) {
            self.vote_chosen(now, out);
        }
        // Nothing is proposed beyond a reconfiguration or relinquish vote.
        let alone = |o: &Outstanding| o.vote.as_vote().is_some_and(|b| b.reconfig.is_some() || b.relinquish);
        debug_assert!(self.outstanding.iter().rev().skip(1).all(|o| !alone(o)), "a vote in flight beyond one that goes alone");
    }

    /// Leaving the primary role: everything not yet chosen goes back to the application.
    pub(super) fn step_down(&mut self, out: &mut Vec<Action>) {
        debug_assert_eq!(self.role, Role::Primary);
        let outstanding = std::mem::take(&mut self.outstanding);
        let queued = self.take_to_send();
        if self.is_primary {
            self.is_primary = false;
            let votes = outstanding.into_iter().map(|o| (o.cookies, o.config_cookie));
            for (cookies, config_cookie) in votes.chain(queued.into_iter().map(|p| (p.cookies, p.config_cookie))) {
                Self::abort_cookies(cookies, config_cookie, AbortReason::NotPrimary, out);
            }
            out.push(Action::NotifyStatus { primary: false });
        }
        self.recovering = None;
        // A relinquish vote that was not chosen before we lost the ballot is moot.
        self.relinquishing = false;
        self.role = Role::Secondary;
        self.action_deadline = Micros::MAX;
        debug_assert!(!self.is_primary && self.outstanding.is_empty() && self.to_send.is_empty(), "a cookie kept past stepping down");
    }

    pub(super) fn on_prepare_accepted(&mut self, now: Micros, from: MemberId, msg: &Message, out: &mut Vec<Action>) {
        if self.pipelined() {
            return self.on_prepare_accepted_pipelined(now, from, msg, out);
        }
        debug_assert!(self.members.contains(&from) && from != self.me, "admit lets in answers from the other members only");
        let current = (self.accepted.header.decree, self.max_ballot);
        let (Some(c), Body::PrepareAccepted(vote)) = (&mut self.candidacy, &msg.body) else { return };
        if decree_ballot(msg) != current || decree_ballot(&c.prepare) != current {
            return;
        }
        let (vd, vb) = decree_ballot(vote);
        if vd > current.0 || vb > current.1 {
            return; // an invalid answer: ahead of the prepare it answers
        }
        if vd == c.freshest.header.decree && vb > c.freshest.header.ballot {
            c.freshest = Arc::new((**vote).clone());
        }
        c.promises.insert(from);
        self.check_prepared(now, out);
    }

    pub(super) fn check_prepared(&mut self, now: Micros, out: &mut Vec<Action>) {
        match &self.candidacy {
            Some(c) if self.quorum_reached(c.seq, &c.promises) => {}
            _ => return,
        }
        let c = self.candidacy.take().expect("checked above");
        assert!(self.durable_seq >= c.seq, "elected before our own Prepare {} was durable", c.seq);
        assert!(c.promises.len() + 1 >= self.quorum(), "elected by {} of {}", c.promises.len() + 1, self.members.len());
        if self.pipelined() {
            return self.become_primary_pipelined(now, c, out);
        }
        assert_eq!(c.freshest.header.decree, self.accepted.header.decree, "re-proposing at our decree");
        assert_eq!(self.max_ballot.member, self.me);
        assert!(c.freshest.header.ballot <= self.max_ballot, "re-proposing a value from above our own ballot");
        // Re-propose the freshest value at the same decree under our ballot.
        let mut body = c.freshest.as_vote().cloned().unwrap_or_default();
        body.cookie = self.primary_cookie.clone();
        body.relinquish = false;
        self.role = Role::Primary;
        self.led_at = now;
        self.force_reelection = false;
        self.recovering = Some(self.accepted.header.decree);
        self.propose(now, body, Vec::new(), None, out);
    }

    /// The ballot to stand with (erratum D5: one above our promise, or above the highest seen if
    /// that is higher); `None` if it would pass `MAX_BALLOT_ID`, which peers refuse.
    pub(super) fn next_ballot(&self) -> Option<Ballot> {
        let mut ballot = Ballot::new(self.max_ballot.id.checked_add(1)?, self.me);
        if ballot < self.max_seen_ballot {
            ballot.id = self.max_seen_ballot.id.checked_add(1)?;
        }
        debug_assert!(ballot > self.max_ballot && ballot >= self.max_seen_ballot, "{ballot} does not outbid what we promised or saw");
        (ballot.id <= validate::MAX_BALLOT_ID).then_some(ballot)
    }

    pub(super) fn start_preparing(&mut self, now: Micros, out: &mut Vec<Action>) {
        debug_assert!(self.execute_queue_ready() && !self.shutting_down && !self.saving, "standing while not ready to lead");
        let ballot = self.next_ballot().expect("the caller stands only with a ballot to stand with");
        assert!(ballot > self.max_ballot, "a new ballot exceeds every promise");
        // Before version 7 a Prepare names our highest accepted decree; from 7 on, the first
        // decree we have not executed: everything from there is re-decided.
        let decree = if self.pipelined() { self.vouched } else { self.accepted.header.decree };
        let prepare = Arc::new(Message::new(self.header(decree, ballot), Body::Prepare(self.primary_cookie.clone())));
        // As in the original, the Prepare goes out before it is logged; we count ourselves
        // only once it is durable.
        out.push(Action::Send { to: Dest::All, msg: prepare.clone(), after: 0 });
        let seq = self.persist(prepare.clone(), out);
        self.set_max_ballot(now, ballot, seq);
        debug_assert!(self.max_ballot == ballot && self.max_ballot_seq == seq, "a candidate's promise is its own ballot, logged");
        self.role = Role::Preparing;
        let deadline = now.saturating_add(self.election_delay.saturating_mul(30));
        let best = self.pending.iter().map(|(d, (v, _))| (*d, v.clone())).collect();
        let freshest = self.accepted.clone();
        self.candidacy = Some(Candidacy { prepare, seq, promises: BTreeSet::new(), freshest, deadline, best, answers: BTreeMap::new() });
        self.action_deadline = now.saturating_add(self.cfg.prepare_retry_interval);
        self.check_prepared(now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::directed::Ring;
    use super::*;
    use crate::paxos::SEC;

    /// What node 0 resends in four seconds, as a candidate whose Prepares are lost and as a
    /// primary whose vote is: (Prepares, votes) after the first of each.
    fn resends(prepare_retry_interval: Micros, vote_retry_interval: Micros) -> (usize, usize) {
        let mut ring = Ring::with(CoreConfig { prepare_retry_interval, vote_retry_interval, ..CoreConfig::default() });
        for j in [1, 2] {
            ring.cut(0, j, Some(MsgKind::Prepare));
        }
        let mark = ring.mark();
        ring.step(0, Input::AttemptPromotion);
        ring.step(0, Input::Tick);
        ring.run();
        assert_eq!(ring.r(0).role(), Role::Preparing);
        ring.advance(4 * SEC);
        let prepares = ring.count_sent(0, mark, MsgKind::Prepare) - 1;
        ring.heal();
        ring.promote(0);
        for j in [1, 2] {
            ring.cut(0, j, Some(MsgKind::Vote));
        }
        let mark = ring.mark();
        ring.submit(0, b"r");
        ring.advance(4 * SEC);
        (prepares, ring.count_sent(0, mark, MsgKind::Vote) - 1)
    }

    #[test]
    fn prepares_and_votes_are_resent_at_their_own_intervals() {
        // Each round goes to the two members that have not answered.
        assert_eq!(resends(SEC, 3 * SEC), (8, 2));
        assert_eq!(resends(3 * SEC, SEC), (2, 8));
        assert_eq!(resends(2 * SEC, 2 * SEC), (4, 4));
    }
}
