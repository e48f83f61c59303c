//! Configurations: the checks every message passes, reconfiguration decisions, defunct
//! configurations, Join and JoinRequest, and Bootstrap.

use super::*;

impl Replica {
    /// Sets the highest defunct configuration number read from `defunct.txt` at start-up. One
    /// at or above `CONFIGURATION_LIMIT` is ignored, and reported by `start`.
    pub fn restore_defunct(&mut self, highest: u32) {
        assert_eq!(self.persist_seq, 0, "restore comes before start");
        if highest < crate::format::CONFIGURATION_LIMIT {
            self.highest_defunct = highest;
        } else {
            self.skipped.push((MsgKind::DefunctConfiguration, Rejection::Configuration));
        }
        debug_assert!(self.highest_defunct < crate::format::CONFIGURATION_LIMIT, "an implausible defunct number kept");
    }

    /// The configuration the state is in (`GetConfiguration`).
    pub fn configuration(&self) -> &ConfigInfo {
        &self.state_config
    }

    /// A vote with a real ballot has been accepted, or the decree is past the first: what
    /// `Bootstrap` waits for.
    pub fn is_bootstrapped(&self) -> bool {
        self.paxos_config.number > 0 && (self.accepted.header.ballot.id > 0 || self.accepted.header.decree > 1)
    }

    /// `Bootstrap` (v4+): gives a replica that has no configuration its first one. Validated
    /// as the original does; the set is then persisted as configuration 1 and sent to the
    /// other members until this replica has taken part in a vote.
    pub fn bootstrap(
        &mut self,
        now: Micros,
        members: MemberSet,
        app: &mut dyn Application,
        out: &mut Vec<Action>,
    ) -> Result<(), BootstrapError> {
        self.accept_bootstrap(members)?;
        self.bootstrap_resend = now;
        self.check_bootstrap(now, app, out);
        debug_assert!(self.paxos_config.number > 0 || self.role != Role::Inactive, "bootstrapped, and still without a configuration");
        self.check_invariants();
        Ok(())
    }

    pub(super) fn accept_bootstrap(&mut self, members: MemberSet) -> Result<(), BootstrapError> {
        if !self.version.has_string_ids() || !validate::valid_member_set(&members) {
            return Err(BootstrapError::InvalidParameter);
        }
        if self.is_bootstrapped() {
            return Err(BootstrapError::AlreadyBootstrapped);
        }
        let same = |known: &MemberSet| {
            known.nodes.len() == members.nodes.len()
                && known.nodes.iter().all(|k| {
                    members
                        .nodes
                        .iter()
                        .any(|n| n.id == k.id && n.ip == k.ip && n.rsl_port == k.rsl_port && n.host_name.eq_ignore_ascii_case(&k.host_name))
                })
        };
        let known = if self.paxos_config.number > 0 { Some(&self.paxos_config.members) } else { self.bootstrap.as_ref() };
        if !members.nodes.iter().any(|n| n.id == self.me) || known.is_some_and(|k| !same(k)) {
            return Err(BootstrapError::Failed);
        }
        debug_assert!(self.paxos_config.number == 0 || same(&self.paxos_config.members), "bootstrapping another ring than ours");
        self.bootstrap = Some(members);
        Ok(())
    }

    /// `CheckBootstrap` + `PersistMemberSet`: configuration 1 from decree 1, recorded by a
    /// checkpoint of decree 0 that holds no state.
    pub(super) fn check_bootstrap(&mut self, now: Micros, app: &mut dyn Application, out: &mut Vec<Action>) {
        if self.role != Role::Inactive || self.paxos_config.number != 0 {
            return;
        }
        debug_assert!(!self.is_bootstrapped() && self.persist_seq == 0, "bootstrapping a replica that took part in votes");
        let Some(members) = self.bootstrap.clone() else { return };
        let config = ConfigInfo { number: 1, initial_decree: 1, members };
        self.accepted = placeholder(self.version, 1, 1);
        (self.next_execute, self.vouched, self.executed_below) = (1, 1, 1);
        self.saving = true;
        let cp = Checkpoint {
            decree: 0,
            next_vote: self.accepted.clone(),
            max_ballot: Ballot::EMPTY,
            config: config.clone(),
            state_saved: false,
        };
        out.push(Action::SaveCheckpoint(cp));
        self.state_config = config.clone();
        self.set_paxos_config(config.clone());
        out.push(Action::ConfigurationChanged { config, cookie: None });
        self.role = Role::Initializing;
        self.start_initializing(now, app, out);
        debug_assert_eq!(self.paxos_config.number, 1, "bootstrap starts configuration 1");
        debug_assert!(self.next_execute == 1 && self.role != Role::Inactive, "a bootstrapped member starts at decree 1");
    }

    /// `LogReconfigurationDecision`: when it decides our accepted vote, log it (unless
    /// replaying), execute the vote and switch to the new configuration.
    pub(super) fn log_decision(
        &mut self,
        now: Micros,
        decision: Arc<Message>,
        persist: bool,
        cookie: Option<Cookie>,
        out: &mut Vec<Action>,
    ) -> bool {
        debug_assert_eq!(decision.kind(), MsgKind::ReconfigurationDecision);
        if self.pipelined() {
            return self.log_decision_pipelined(now, decision, persist, cookie, out);
        }
        let (d, b) = decree_ballot(&decision);
        let (ad, ab) = self.accepted();
        let members = self.accepted.as_vote().and_then(|v| v.reconfig.clone());
        // It decides our vote at its decree if that vote's ballot is at least its own: by Paxos,
        // a proposal there above the ballot that chose a value carries that value. (A new
        // primary may have re-proposed the reconfiguration, and we accepted that, before the
        // decision reached us; requiring its ballot, we never took the decision, stood again
        // at once on learning it, and stepped down at once for the newer configuration's Join.)
        // Everything before the reconfiguration executes first (pipelined replicas may still
        // miss some: they learn, and meet the decision again in a peer's log).
        let ready = d == ad && ab >= b && decision.header.config == self.paxos_config.number && self.next_execute >= d;
        let Some(members) = members.filter(|_| ready) else {
            return false;
        };
        if self.role == Role::Primary {
            self.step_down(out);
        }
        if persist {
            self.accepted_seq = self.persist(decision, out);
        }
        if self.next_execute == d {
            self.pending.remove(&d);
            self.execute(self.accepted.clone(), Vec::new(), cookie, out);
        }
        assert_eq!(self.next_execute, d + 1, "the reconfiguration decree {d} did not execute before the switch");
        self.switch_config_live(now, d, members, persist, out);
        debug_assert_eq!(self.paxos_config.initial_decree, d + 1, "the new configuration starts after its decree");
        true
    }

    /// Pipelined: the decision decides the vote we hold at its decree if that vote's ballot is
    /// at least the deciding one (a proposal there above the ballot that chose a value carries
    /// it), and applies once every decree below it has executed. Votes beyond it belong to a
    /// configuration that ends at it: none was chosen (docs/core.md), and they are dropped.
    fn log_decision_pipelined(
        &mut self,
        now: Micros,
        decision: Arc<Message>,
        persist: bool,
        cookie: Option<Cookie>,
        out: &mut Vec<Action>,
    ) -> bool {
        debug_assert_eq!(decision.kind(), MsgKind::ReconfigurationDecision);
        let (d, b) = decree_ballot(&decision);
        if decision.header.config != self.paxos_config.number || self.next_execute != d {
            return false;
        }
        let Some((vote, _)) = self.pending.get(&d).filter(|(v, _)| v.header.ballot >= b) else {
            return false;
        };
        let vote = vote.clone();
        let Some(members) = vote.as_vote().and_then(|v| v.reconfig.clone()) else {
            // By Paxos the vote there carries the decided value: this decision is forged.
            self.reject(decision.header.sender, MsgKind::ReconfigurationDecision, Rejection::Inconsistent, out);
            return false;
        };
        if self.role == Role::Primary {
            self.step_down(out);
        }
        if persist {
            self.accepted_seq = self.persist(decision, out);
        }
        self.pending.remove(&d);
        self.execute(vote, Vec::new(), cookie, out);
        self.switch_config_live(now, d, members, persist, out);
        debug_assert!(self.pending.is_empty() && self.paxos_config.initial_decree == d + 1, "the old configuration's votes outlived it");
        true
    }

    /// Switches to the configuration the reconfiguration decree `d` chose. A member new to it
    /// can catch up only by fetching a checkpoint: it has no log of the old configuration to
    /// learn from, and may know no configuration at all. A ring that never saved one (started
    /// from a member list, its log never rolled) would offer it nothing, and the original
    /// leaves it waiting until one exists; here every member saves one at a live switch, of
    /// `d`, with the new configuration's empty first vote next (as the bootstrap checkpoint).
    fn switch_config_live(&mut self, now: Micros, d: u64, members: MemberSet, live: bool, out: &mut Vec<Action>) {
        let added = members.nodes.iter().any(|n| !self.members.contains(&n.id));
        self.switch_config(now, ConfigInfo { number: self.paxos_config.number + 1, initial_decree: d + 1, members });
        debug_assert_eq!(self.paxos_config, self.state_config, "the decree executed and the decision logged chose the same configuration");
        if !live || !added || self.checkpoint_size > 0 || self.saving {
            return;
        }
        debug_assert!(self.accepted.header.ballot.is_empty() && self.next_execute == d + 1);
        (self.save_at, self.saving) = (None, true);
        let next_vote = self.accepted.clone();
        let cp = Checkpoint { decree: d, next_vote, max_ballot: self.max_ballot, config: self.state_config.clone(), state_saved: true };
        debug_assert_eq!(self.check_checkpoint(&cp), Ok(()), "saving a checkpoint a new member would refuse");
        out.push(Action::SaveCheckpoint(cp));
    }

    /// `ChangePaxosConfiguration`: ballots restart above the old ones with an empty accepted
    /// vote at the new configuration's first decree; members find the ring at the next tick.
    pub(super) fn switch_config(&mut self, now: Micros, config: ConfigInfo) {
        debug_assert_ne!(self.role, Role::Primary, "stepped down first");
        debug_assert_eq!(self.next_execute, config.initial_decree);
        assert!(config.number > self.paxos_config.number, "configuration {} after {}", config.number, self.paxos_config.number);
        let promised = self.max_ballot;
        self.accepted = placeholder(self.version, config.initial_decree, config.number);
        self.max_ballot = Ballot::new(self.max_ballot.id.saturating_add(1), MemberId::EMPTY);
        self.max_seen_ballot = Ballot::EMPTY;
        self.jumps.clear();
        self.next_propose = config.initial_decree;
        let config_first = config.initial_decree;
        // What is held beyond the decision is the old configuration's, which ended at it (none
        // of it can be chosen: docs/core.md); votes of the new one arrive only after the switch.
        debug_assert!(self.pending.values().all(|(v, _)| v.header.config < config.number));
        self.pending.clear();
        self.set_paxos_config(config);
        self.recent.clear();
        self.vouched = config_first;
        self.cache.clear();
        self.cache_bytes = 0;
        self.statuses.clear();
        (self.candidacy, self.learning, self.next_join) = (None, None, 0);
        self.role = if self.members.contains(&self.me) { Role::Initializing } else { Role::Inactive };
        self.action_deadline = now;
        debug_assert!(self.max_ballot > promised, "ballots restart above the old configuration's");
    }

    /// A configuration not yet known to be established is announced with Join messages to its
    /// members, also by replicas it left out: that is how members that missed the decision
    /// (or never had a log) learn about it.
    pub(super) fn join_due(&self) -> bool {
        self.paxos_config.number > self.highest_defunct + 1
    }

    /// `VerifyMessage` (docs/spec/behavior.md §2.17.5 with erratum D7): a message of a defunct
    /// configuration is answered with DefunctConfiguration, one of a newer configuration with
    /// a JoinRequest, one of an older configuration or to an inactive replica is dropped, and
    /// anything else must come from a member of ours (an error to report).
    pub(super) fn admit(&mut self, from: &MemberId, msg: &Message, out: &mut Vec<Action>) -> Result<bool, Rejection> {
        let config = msg.header.config;
        if config <= self.highest_defunct {
            let defunct =
                Message::new(Header::new(self.version, self.me, 0, self.highest_defunct, Ballot::EMPTY), Body::DefunctConfiguration);
            self.send(Dest::One(*from), defunct, 0, out);
            return Ok(false);
        }
        if matches!(msg.kind(), MsgKind::Join | MsgKind::JoinRequest) {
            return Ok(true);
        }
        if config > self.paxos_config.number {
            let request = Message::new(Header::new(self.version, self.me, 0, config, Ballot::EMPTY), Body::JoinRequest);
            self.send(Dest::One(*from), request, 0, out);
            return Ok(false);
        }
        if config < self.paxos_config.number || self.role == Role::Inactive {
            return Ok(false);
        }
        if !self.members.contains(from) {
            return Err(Rejection::NotAMember);
        }
        debug_assert!(config == self.paxos_config.number && self.role != Role::Inactive, "admitted outside our configuration");
        self.max_seen_ballot = self.max_seen_ballot.max(msg.header.ballot);
        Ok(true)
    }

    /// A message from a peer: checked field by field and for who may send it
    /// (`check_fields`, `check_sender`, `admit`), then handled.
    pub(super) fn on_message(&mut self, now: Micros, from: MemberId, msg: Arc<Message>, app: &mut dyn Application, out: &mut Vec<Action>) {
        if let Err(reason) = self.check_fields(&msg).and_then(|()| self.check_sender(&from, &msg)) {
            if reason == Rejection::Ballot {
                self.note_jump(from, &msg);
            }
            return self.reject(from, msg.kind(), reason, out);
        }
        // What every handler may take for granted of a message it is given.
        let h = &msg.header;
        debug_assert!(h.sender == from && from != self.me, "validated: a peer's message in its own name");
        let plausible = h.ballot.id <= validate::MAX_BALLOT_ID && h.config < crate::format::CONFIGURATION_LIMIT;
        debug_assert!(
            plausible && (msg.kind() == MsgKind::Join || h.decree < crate::format::DECREE_LIMIT),
            "an implausible {:?} passed",
            msg.kind()
        );
        debug_assert_eq!(h.version.is_pipelined(), self.pipelined(), "a message of the other protocol passed");
        // Unlike the original, a relinquishing primary still answers status queries: a member
        // that is initializing needs them to follow, and so to accept the relinquish vote.
        let ignored_while_relinquishing = matches!(msg.kind(), MsgKind::Vote | MsgKind::Prepare);
        if self.relinquishing && ignored_while_relinquishing {
            return;
        }
        // These bypass the configuration checks.
        match &msg.body {
            Body::Bootstrap(members) => {
                if self.accept_bootstrap(members.clone()).is_ok() {
                    self.check_bootstrap(now, app, out);
                }
                return;
            }
            Body::DefunctConfiguration => return self.on_defunct(now, msg.header.config, app, out),
            Body::StatusQuery => return self.on_status_query(now, from, &msg, out),
            _ => {}
        }
        match self.admit(&from, &msg, out) {
            Ok(true) => {}
            Ok(false) => return,
            Err(reason) => return self.reject(from, msg.kind(), reason, out),
        }
        let joining = matches!(msg.kind(), MsgKind::Join | MsgKind::JoinRequest);
        debug_assert!(joining || self.role != Role::Inactive, "a {:?} admitted to an inactive replica", msg.kind());
        match msg.kind() {
            MsgKind::Vote if self.role == Role::Initializing => self.cache_vote(from, msg),
            MsgKind::Vote => self.on_vote(now, from, msg, app, out),
            MsgKind::VoteAccepted => self.on_vote_accepted(now, from, &msg, out),
            MsgKind::Prepare => self.on_prepare(now, from, msg, app, out),
            MsgKind::PrepareAccepted => self.on_prepare_accepted(now, from, &msg, out),
            MsgKind::NotAccepted => self.on_not_accepted(now, &msg, app, out),
            MsgKind::StatusResponse => self.on_status_response(now, from, msg, app, out),
            MsgKind::ReconfigurationDecision if self.pipelined() => self.on_decision_pipelined(now, from, msg, out),
            MsgKind::ReconfigurationDecision => {
                self.log_decision(now, msg, true, None, out);
            }
            MsgKind::Join => self.on_join(now, from, &msg, out),
            MsgKind::JoinRequest if msg.header.config == self.paxos_config.number => self.send_join(Dest::One(from), out),
            _ => {}
        }
    }

    /// A decision (version 7): everything before the reconfiguration was chosen before it was.
    /// If we miss the vote or decrees before it, the sender's log has them.
    fn on_decision_pipelined(&mut self, now: Micros, from: MemberId, decision: Arc<Message>, out: &mut Vec<Action>) {
        debug_assert!(self.members.contains(&from) && from != self.me, "admit lets in decisions from the other members only");
        if self.apply_decision(now, decision, out) || self.learning.is_some() || self.loading.is_some() {
            return;
        }
        if self.role == Role::Primary {
            self.step_down(out);
        }
        self.learn(from, out);
        debug_assert_eq!(self.learning, Some(from), "a decision we cannot apply: learn from its sender");
    }

    /// `UpdateDefunctInfo`: a replica still active in a configuration now defunct looks for
    /// the newer one instead.
    ///
    /// Unlike the original, the number recorded is at most two below our configuration's: what
    /// we know without being told (ours exists, so the one before it was established and the
    /// one before that is defunct). Only a vote of our configuration, logged here, proves ours
    /// established (`log_and_accept`). On a peer's word, which a forged message can give, this
    /// replica would stop announcing its configuration with Join (a replica it left out may be
    /// the only one left that knows of it), or with a higher number answer every configuration
    /// up to it with DefunctConfiguration, persistently, and never join one of them. The price:
    /// a replica left out keeps sending Join, each answered with DefunctConfiguration.
    pub(super) fn on_defunct(&mut self, now: Micros, defunct: u32, app: &mut dyn Application, out: &mut Vec<Action>) {
        if defunct <= self.highest_defunct {
            return;
        }
        if self.paxos_config.number <= defunct && self.role != Role::Inactive {
            return self.start_initializing(now, app, out);
        }
        let defunct = defunct.min(self.paxos_config.number.saturating_sub(2));
        if defunct <= self.highest_defunct {
            return;
        }
        self.highest_defunct = defunct;
        debug_assert!(defunct + 1 < self.paxos_config.number, "our own configuration, or the one before, recorded defunct");
        out.push(Action::Defunct(defunct));
    }

    pub(super) fn send_join(&self, to: Dest, out: &mut Vec<Action>) {
        debug_assert!(self.paxos_config.number > self.highest_defunct, "announcing a defunct configuration");
        debug_assert!(self.join_due() || to != Dest::All, "announcing to all a configuration known established");
        let learn_port = self.paxos_config.members.nodes.iter().find(|n| n.id == self.me).map_or(0, |n| n.learn_port);
        let body = Body::Join(JoinBody {
            learn_port,
            min_decree_in_log: self.log_min_decree,
            checkpointed_decree: self.checkpointed,
            checkpoint_size: self.checkpoint_size,
        });
        let header =
            Header::new(self.version, self.me, self.paxos_config.initial_decree.wrapping_sub(1), self.paxos_config.number, Ballot::EMPTY);
        self.send(to, Message::new(header, body), 0, out);
    }

    /// `HandleJoinMsg`: a member of a newer configuration announces it; catch up from it.
    ///
    /// Unlike the original, a primary ignores a Join from outside its configuration, which
    /// nothing can verify (issue 9 finding 5: it would make the primary step down). A primary
    /// needs none: the members of its configuration that decided a newer one send Joins too,
    /// until a vote of it is logged, and from then on answer its votes with
    /// DefunctConfiguration.
    pub(super) fn on_join(&mut self, now: Micros, from: MemberId, msg: &Message, out: &mut Vec<Action>) {
        let Body::Join(join) = &msg.body else { return };
        if msg.header.config <= self.paxos_config.number {
            if msg.header.config <= self.highest_defunct + 1 {
                let defunct =
                    Message::new(Header::new(self.version, self.me, 0, self.highest_defunct, Ballot::EMPTY), Body::DefunctConfiguration);
                self.send(Dest::One(from), defunct, 0, out);
            }
            return;
        }
        // A primary ignores a Join from outside its configuration (nothing verifies it, and
        // stepping down for it would hand the adversary a lever), unless it has led nothing
        // for an election delay: then its members may all have moved to a configuration that
        // left them out, and only a member of the newer one can tell it.
        let leading = now < self.led_at.saturating_add(self.election_delay);
        let outsider = self.role == Role::Primary && !self.members.contains(&from) && leading;
        let ad = self.position().0;
        let learnable = ad >= join.min_decree_in_log && self.paxos_config.number > 0;
        // Nothing to fetch from it: ignored, and a primary stays primary.
        let useless = !learnable && join.checkpointed_decree < ad;
        if self.learning.is_some() || self.loading.is_some() || outsider || useless {
            return;
        }
        if self.role == Role::Primary {
            self.step_down(out);
        }
        debug_assert!(self.role != Role::Primary && self.learning.is_none() && self.loading.is_none(), "one catch-up at a time");
        if learnable {
            self.learn(from, out);
        } else if join.checkpointed_decree >= ad {
            (self.role, self.candidacy) = (self.role.min_active(), None);
            self.loading = Some(from);
            out.push(Action::FetchCheckpoint { from, decree: join.checkpointed_decree, size: join.checkpoint_size, load: true });
        }
        debug_assert_ne!(self.role, Role::Primary, "a primary that heard of a newer configuration kept leading");
    }

    /// `Bootstrap` keeps sending the set to the other members until this replica takes part.
    pub(super) fn resend_bootstrap(&mut self, now: Micros, out: &mut Vec<Action>) {
        if self.is_bootstrapped() {
            self.bootstrap = None;
            return;
        }
        let members = self.bootstrap.clone().expect("bootstrapping");
        debug_assert!(members.nodes.iter().any(|n| n.id == self.me), "resending a set we are not in");
        for node in members.nodes.iter().filter(|n| n.id != self.me) {
            let header = Header::new(self.version, self.me, 0, 0, Ballot::EMPTY);
            self.send(Dest::One(node.id), Message::new(header, Body::Bootstrap(members.clone())), 0, out);
        }
        self.bootstrap_resend = now.saturating_add(self.cfg.initialize_retry_interval);
    }

    /// The Paxos configuration (the one being voted in).
    pub fn paxos_configuration(&self) -> &ConfigInfo {
        &self.paxos_config
    }
}
