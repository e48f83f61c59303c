//! The acceptor side: which votes and prepares a replica accepts, logs and answers
//! (docs/spec/behavior.md §2.8), and the vote cache kept while initializing.

use super::*;

impl Replica {
    /// Votes cached while initializing are handled as soon as the replica is out of it.
    pub(super) fn drain_cache(&mut self, now: Micros, app: &mut dyn Application, out: &mut Vec<Action>) {
        while self.role != Role::Initializing {
            let Some((from, vote)) = self.cache.pop_front() else { break };
            self.on_vote(now, from, vote, app, out);
        }
        if self.cache.is_empty() {
            self.cache_bytes = 0;
        }
        debug_assert!(self.role == Role::Initializing || self.cache.is_empty(), "votes left cached outside initializing");
    }

    /// `LogAndAcceptVote`: the vote becomes the highest accepted one; if it is the next decree
    /// at the same ballot (or `proven`: learning showed our decree chosen), the one it follows
    /// is chosen and executes.
    pub(super) fn log_and_accept(&mut self, now: Micros, vote: Arc<Message>, proven: bool, out: &mut Vec<Action>) {
        debug_assert!(!self.pipelined(), "version 7 keeps its votes with accept_pending");
        let (d, b) = decree_ballot(&vote);
        let (ad, ab) = self.accepted();
        assert!(is_next((d, b), (ad, ab)) || (proven && d == ad + 1), "accepting ({d},{b}) after ({ad},{ab})");
        assert!(!b.is_empty(), "votes carry a ballot");
        if d == ad + 1 {
            if self.next_execute == ad {
                self.execute(self.accepted.clone(), Vec::new(), None, out);
            }
            let wait = if self.max_ballot.member == self.me { self.cfg.heartbeat_interval } else { self.election_delay };
            self.next_election = now.saturating_add(wait);
        }
        if (d, b) != (ad, ab) {
            self.accepted_seq = self.persist(vote.clone(), out);
        }
        // Logging a vote of configuration c proves c - 1 defunct.
        let config = vote.header.config;
        if config > 1 && config - 1 > self.highest_defunct {
            self.highest_defunct = config - 1;
            out.push(Action::Defunct(self.highest_defunct));
        }
        self.accepted = vote;
        self.accepted_at = now;
        self.set_max_ballot(now, b, self.accepted_seq);
        debug_assert!(self.max_ballot >= b, "accepted ({d},{b}) above the promise {}", self.max_ballot);
        debug_assert!(d != ad + 1 || self.next_execute > ad, "decree {ad} is chosen by ({d},{b}) but did not execute");
        debug_assert!(config <= 1 || self.highest_defunct >= config - 1, "configuration {} not recorded defunct", config - 1);
        self.maybe_save(out);
    }

    /// What handling a Prepare shares across protocol versions: nothing while initializing;
    /// otherwise step down and log the promise if it is higher, and ask whether to answer.
    pub(super) fn take_promise(
        &mut self,
        now: Micros,
        from: MemberId,
        prep: &Arc<Message>,
        app: &mut dyn Application,
        out: &mut Vec<Action>,
    ) -> Option<bool> {
        if self.role == Role::Initializing {
            return None;
        }
        let b = prep.header.ballot;
        debug_assert!(prep.kind() == MsgKind::Prepare && b.member == from, "a Prepare validated as its sender's ballot");
        if self.role == Role::Primary && b > self.max_ballot {
            self.step_down(out);
        }
        if b > self.max_ballot {
            let seq = self.persist(prep.clone(), out);
            self.set_max_ballot(now, b, seq);
        }
        debug_assert!(self.max_ballot >= b, "a Prepare at {b} taken without its promise");
        debug_assert!(self.role != Role::Primary || self.max_ballot.member == self.me, "a primary kept its role under {b}");
        let cookie = match &prep.body {
            Body::Prepare(c) => c.clone(),
            _ => Bytes::new(),
        };
        Some(self.accept_check(app, &from, &cookie))
    }

    pub(super) fn accept_check(&mut self, app: &mut dyn Application, from: &MemberId, cookie: &[u8]) -> bool {
        if self.cfg.use_global_accept_flag {
            self.accept_flag
        } else {
            app.accept_message(from, cookie)
        }
    }

    pub(super) fn cache_vote(&mut self, from: MemberId, vote: Arc<Message>) {
        debug_assert_eq!(self.role, Role::Initializing, "votes are cached only while initializing");
        debug_assert!(vote.kind() == MsgKind::Vote && vote.header.sender == from, "a vote validated as its sender's");
        if let Some((_, tail)) = self.cache.back() {
            let t = decree_ballot(tail);
            if is_lower(decree_ballot(&vote), t) || decree_ballot(&vote) == t {
                return;
            }
        }
        self.cache_bytes += vote.as_vote().map_or(0, vote_size) + 200;
        self.cache.push_back((from, vote));
        if self.cache_bytes > self.cfg.max_cache_bytes {
            self.cache.clear();
            self.cache_bytes = 0;
        }
    }

    /// `HandleNewVotes` for one vote (docs/spec/behavior.md §2.8).
    pub(super) fn on_vote(&mut self, now: Micros, from: MemberId, vote: Arc<Message>, app: &mut dyn Application, out: &mut Vec<Action>) {
        debug_assert_ne!(self.role, Role::Initializing);
        debug_assert!(self.members.contains(&from) && from != self.me, "admit lets in votes from the other members only");
        if self.pipelined() {
            return self.on_vote_pipelined(now, from, vote, app, out);
        }
        let db = decree_ballot(&vote);
        let (ad, _) = self.accepted();
        if is_lower(db, self.accepted()) {
            if db.1 < self.max_ballot || db.0 + 1 < ad {
                self.not_accepted(from, out);
            }
            return;
        }
        if db == (ad + 1, self.accepted.header.ballot) && self.past_reconfiguration(db.0) {
            return;
        }
        if !is_next(db, self.accepted()) {
            // A gap: we missed decrees. Learn them.
            self.cache.clear();
            self.cache_bytes = 0;
            return self.start_initializing(now, app, out);
        }
        if self.role == Role::Primary {
            self.step_down(out);
        }
        self.log_and_accept(now, vote.clone(), false, out);
        debug_assert_eq!(self.accepted(), db, "the vote logged is the accepted one");
        let reply = if db.1 < self.max_ballot {
            // Logged, yet refused: it is below our promise.
            Some(Body::NotAccepted)
        } else {
            let body = vote.as_vote().expect("a vote");
            let cookie = body.cookie.clone();
            self.accept_check(app, &vote.header.sender, &cookie).then_some(Body::VoteAccepted)
        };
        let mut relinquished = false;
        if let Some(body) = reply {
            let accepted_body = body == Body::VoteAccepted;
            // Acknowledging a vote below our promise would let a value be chosen that a
            // higher ballot's candidate was told had no vote here.
            assert!(!accepted_body || db.1 == self.max_ballot, "VoteAccepted for {} under the promise {}", db.1, self.max_ballot);
            let mut msg = Message::new(self.header(self.accepted.header.decree, self.max_ballot), body);
            msg.header.payload = if accepted_body { self.vote_payload } else { 0 };
            let after = self.accepted_seq.max(self.max_ballot_seq);
            self.send(Dest::One(from), msg, after, out);
            relinquished = accepted_body && vote.as_vote().is_some_and(|v| v.relinquish);
        }
        self.become_secondary();
        // After `become_secondary`, which clears it: the primary is going away, stand at once.
        self.force_reelection = relinquished;
    }

    /// Whether decree `d` follows our accepted reconfiguration vote in its own configuration.
    /// No honest primary proposes such a vote (that decree belongs to the next configuration),
    /// and taking it would execute the reconfiguration without its decision, leaving the
    /// state's configuration ahead of the Paxos one.
    pub(super) fn past_reconfiguration(&self, d: u64) -> bool {
        d == self.accepted.header.decree + 1 && self.accepted.as_vote().is_some_and(|v| v.reconfig.is_some())
    }

    pub(super) fn become_secondary(&mut self) {
        debug_assert_ne!(self.role, Role::Primary, "step down first");
        debug_assert!(!self.is_primary && self.outstanding.is_empty(), "a follower with votes of its own in flight");
        debug_assert!(self.members.contains(&self.me), "only a member follows");
        self.role = Role::Secondary;
        self.candidacy = None;
        self.force_reelection = false;
        self.action_deadline = Micros::MAX;
    }

    /// `HandlePrepareMsg` (docs/spec/behavior.md §2.8).
    pub(super) fn on_prepare(&mut self, now: Micros, from: MemberId, prep: Arc<Message>, app: &mut dyn Application, out: &mut Vec<Action>) {
        if self.pipelined() {
            return self.on_prepare_pipelined(now, from, prep, app, out);
        }
        let (d, b) = decree_ballot(&prep);
        let ad = self.accepted.header.decree;
        if is_lower((d, b), (ad, self.max_ballot)) {
            if d + 1 < ad || b < self.max_ballot {
                self.not_accepted(from, out);
            }
            return;
        }
        let Some(answer) = self.take_promise(now, from, &prep, app, out) else { return };
        assert_eq!(self.max_ballot, b, "a Prepare answered without being our promise");
        if answer {
            debug_assert!(self.accepted.header.ballot <= b && self.accepted.header.decree <= d, "reporting a vote ahead of the Prepare");
            let body = Body::PrepareAccepted(Box::new((*self.accepted).clone()));
            let after = self.accepted_seq.max(self.max_ballot_seq);
            self.send(Dest::One(from), Message::new(self.header(d, b), body), after, out);
        }
        if self.role == Role::Primary {
            // Our own ballot again (a resent Prepare of ours cannot reach us): nothing to do.
            return;
        }
        if d > ad {
            self.start_initializing(now, app, out);
        } else {
            self.become_secondary();
        }
    }

    /// `HandleNotAcceptedMsg`.
    pub(super) fn on_not_accepted(&mut self, now: Micros, msg: &Message, app: &mut dyn Application, out: &mut Vec<Action>) {
        let (d, b) = decree_ballot(msg);
        debug_assert!(self.members.contains(&msg.header.sender), "admit lets in answers from members only");
        // Before version 7 the decree is the responder's highest accepted one; from 7 on, the
        // first it has not executed.
        let stale = !self.pipelined() && is_lower((d, b), self.accepted());
        if stale || self.role == Role::Initializing {
            return;
        }
        let behind = if self.pipelined() { d > self.vouched } else { d > self.accepted.header.decree };
        if behind {
            self.start_initializing(now, app, out);
        } else if b > self.max_ballot {
            if self.role == Role::Primary {
                self.step_down(out);
            }
            // Adopt the promise, as a Prepare record.
            let prep = Message::new(
                Header::new(msg.header.version, msg.header.sender, d, self.paxos_config.number, b),
                Body::Prepare(Bytes::new()),
            );
            let seq = self.persist(Arc::new(prep), out);
            self.set_max_ballot(now, b, seq);
            debug_assert!(self.max_ballot == b && self.max_ballot_seq == seq, "the adopted promise is the one logged");
            self.become_secondary();
        }
    }
}
