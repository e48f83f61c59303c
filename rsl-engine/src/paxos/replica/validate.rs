//! What input must satisfy before the protocol reads it (docs/core.md, "Hostile input"): every
//! field of a message, learned or replayed record and checkpoint is plausible and well formed,
//! and the sender may send that message type. What fails is dropped and reported as
//! `Action::Rejected`; the protocol's `assert!`s then guard only this replica's own invariants.

use super::*;
use crate::format::{CONFIGURATION_LIMIT, DECREE_LIMIT};
use crate::paxos::Rejection;

/// How far above the highest ballot id this replica has promised or seen (`ballot_mark`) a
/// ballot may be. Ballot ids only grow: a replica that promised a ballot nothing can outbid (id
/// `u32::MAX`, issue 9 finding 1) could never stand again, and would refuse every candidate, so
/// one packet would stall the ring for good. With the cap, any promise leaves ids above it, and a
/// candidate's next ballot (one above what it has seen) is one its peers take. Honest rings move
/// ids by one per election: 2^24 is 194 days of an election every second that a replica slept
/// through. What the cap cannot stop without peer authentication: an impersonator of a member
/// that sends 256 accepted jumps of 2^24 uses the ids up (docs/security.md).
pub(crate) const MAX_BALLOT_JUMP: u32 = 1 << 24;

/// The highest ballot id anyone may use: `u32::MAX` cannot be outbid. A candidate whose next
/// ballot would need it does not stand.
pub(crate) const MAX_BALLOT_ID: u32 = u32::MAX - 1;

/// Ballot ids at or above this are never taken on the evidence of members (`note_jump`): an
/// honest ring gets there after 68 years of an election every second, so evidence of one is an
/// impersonator's, and following it would leave the ring few ids. What remains above it takes
/// 128 accepted jumps to use up.
const JUMP_EVIDENCE_LIMIT: u32 = 1 << 31;

/// The most members a configuration may have (real rings have 3 to 9): a bigger set is refused
/// rather than turned into a connection per member.
pub(crate) const MAX_MEMBERS: usize = 256;

/// The highest `state` a StatusResponse may carry (Initializing; `Role::status_code`).
pub(super) const MAX_STATUS_STATE: u32 = 4;

/// A member set that can be a configuration: 1 to `MAX_MEMBERS` members, ids non-empty and
/// distinct.
pub(super) fn valid_member_set(set: &MemberSet) -> bool {
    let valid = !set.nodes.is_empty() && set.nodes.len() <= MAX_MEMBERS && set.flaw().is_none();
    // What `set_paxos_config` relies on: ids are distinct.
    debug_assert!(
        !valid || set.nodes.iter().map(|n| n.id).collect::<BTreeSet<_>>().len() == set.nodes.len(),
        "a member named twice passed"
    );
    valid
}

fn check_decree(decree: u64) -> Result<(), Rejection> {
    if decree < DECREE_LIMIT {
        Ok(())
    } else {
        Err(Rejection::Decree)
    }
}

fn check_config(number: u32) -> Result<(), Rejection> {
    if number < CONFIGURATION_LIMIT {
        Ok(())
    } else {
        Err(Rejection::Configuration)
    }
}

/// No ballot id above `MAX_BALLOT_ID`, nor more than `MAX_BALLOT_JUMP` above `mark`.
fn check_ballot(ballot: Ballot, mark: u32) -> Result<(), Rejection> {
    if ballot.id > MAX_BALLOT_ID || ballot.id > mark.saturating_add(MAX_BALLOT_JUMP) {
        Err(Rejection::Ballot)
    } else {
        Ok(())
    }
}

/// The types `on_message` handles before `admit` (which records the ballots it sees).
fn bypasses_admit(kind: MsgKind) -> bool {
    matches!(kind, MsgKind::StatusQuery | MsgKind::DefunctConfiguration | MsgKind::Bootstrap | MsgKind::Join | MsgKind::JoinRequest)
}

/// A Prepare or decision message carries its sender's own ballot.
fn check_own_ballot(h: &Header) -> Result<(), Rejection> {
    if h.ballot.is_empty() || h.ballot.member != h.sender {
        Err(Rejection::Malformed)
    } else {
        Ok(())
    }
}

fn check_status(s: &StatusBody, mark: u32) -> Result<(), Rejection> {
    for decree in [s.query_decree, s.min_decree_in_log, s.checkpointed_decree] {
        check_decree(decree)?;
    }
    check_ballot(s.query_ballot, mark)?;
    check_ballot(s.max_ballot, mark)?;
    if s.state > MAX_STATUS_STATE {
        return Err(Rejection::Malformed);
    }
    Ok(())
}

/// The fields every record and message has. The decree is left to the caller: a Join's is not
/// read (and is `u64::MAX` for a configuration starting at decree 0).
fn check_header(h: &Header, mark: u32) -> Result<(), Rejection> {
    check_ballot(h.ballot, mark)?;
    check_config(h.config)
}

/// A vote's header and body: as a message or a log record it carries its proposer's ballot; the
/// one a PrepareAccepted reports or a checkpoint holds may be the empty placeholder.
fn check_vote(vote: &Message, mark: u32, pipelined: bool, placeholder_ok: bool) -> Result<(), Rejection> {
    let Body::Vote(body) = &vote.body else { return Err(Rejection::Malformed) };
    let h = &vote.header;
    check_header(h, mark)?;
    check_decree(h.decree)?;
    if pipelined {
        check_decree(h.payload)?; // the chosen watermark
    }
    let empty = h.ballot.is_empty();
    let bad_ballot = if empty { !placeholder_ok } else { h.ballot.member != h.sender };
    let bad_requests = body.requests.iter().any(|r| r.is_empty());
    let bad_reconfig = body.reconfig.as_ref().is_some_and(|set| !valid_member_set(set) || !body.requests.is_empty());
    if bad_ballot || bad_requests || bad_reconfig {
        return Err(Rejection::Malformed);
    }
    Ok(())
}

impl Replica {
    /// The highest ballot id this replica has promised or seen: what `MAX_BALLOT_JUMP` counts from.
    pub(super) fn ballot_mark(&self) -> u32 {
        self.max_ballot.id.max(self.max_seen_ballot.id)
    }

    /// Before version 7 every version is taken, as in RSL: a ring moves to a newer one by its
    /// primary's votes, and each replica raises its own once it executes one (docs/spec/behavior.md
    /// §2.29, `Replica::execute`). Votes are logged, and embedded in PrepareAccepted, in their
    /// own version. A pipelined message means something else to a replica that is not (and back).
    fn check_version(&self, v: Version) -> Result<(), Rejection> {
        if v.is_pipelined() != self.pipelined() {
            Err(Rejection::Version)
        } else {
            Ok(())
        }
    }

    /// Every field of a message from a peer, before any rule reads it. The jump cap applies
    /// where a ballot is adopted or seen: messages of our configuration that go through
    /// `admit`. Of another configuration, a replica that slept through a jump must still answer
    /// the newer one's votes with JoinRequest to find it; and a status query's ballot is only
    /// its sender's position, echoed back (a replica that took a forged jump the others did not
    /// must still be answered, to learn from them).
    pub(super) fn check_fields(&self, msg: &Message) -> Result<(), Rejection> {
        let h = &msg.header;
        let mark = if h.config == self.paxos_config.number && !bypasses_admit(msg.kind()) { self.ballot_mark() } else { MAX_BALLOT_ID };
        self.check_version(h.version)?;
        check_header(h, mark)?;
        if msg.kind() != MsgKind::Join {
            check_decree(h.decree)?;
        }
        match &msg.body {
            Body::Vote(_) => check_vote(msg, mark, self.pipelined(), false),
            Body::Prepare(_) | Body::ReconfigurationDecision => check_own_ballot(h),
            Body::PrepareAccepted(vote) => {
                self.check_version(vote.header.version)?;
                check_vote(vote, mark, self.pipelined(), true)
            }
            Body::StatusResponse(s) => check_status(s, mark),
            Body::Join(j) => check_decree(j.min_decree_in_log).and(check_decree(j.checkpointed_decree)),
            Body::Bootstrap(set) if !valid_member_set(set) => Err(Rejection::Malformed),
            // The learn port's requests never travel on the Paxos port.
            Body::FetchVotes | Body::FetchCheckpoint => Err(Rejection::Malformed),
            _ => Ok(()),
        }
    }

    /// Who may send the types that bypass `admit`'s configuration checks (those get theirs
    /// there: a member of our configuration). Per type, from how each is produced:
    /// - DefunctConfiguration answers a message of ours whose configuration the sender knows
    ///   has ended: our own went to the members of our configuration, and only they can tell
    ///   us it ended. (A member of a newer configuration answering our answer to its query is
    ///   left out: that only hurries a re-initialization its votes or Joins bring anyway.)
    /// - Bootstrap comes from a replica that names itself in the set it sends.
    /// - A StatusQuery of our configuration number comes from one of its members. One of
    ///   another configuration cannot be checked; the answer changes nothing here and is how a
    ///   replica left behind finds the newer configuration (JoinRequest, then Join).
    /// - Join and JoinRequest come from replicas of a configuration we may not know (a newer
    ///   one, or replicas it left out): nothing to check against. A primary ignores a Join from
    ///   outside its configuration (`on_message`).
    pub(super) fn check_sender(&self, from: &MemberId, msg: &Message) -> Result<(), Rejection> {
        if *from == self.me || msg.header.sender != *from {
            return Err(Rejection::NotAMember);
        }
        debug_assert!(msg.header.sender == *from && *from != self.me, "what every handler may take for granted of a sender");
        let member = self.members.contains(from);
        let allowed = match &msg.body {
            Body::DefunctConfiguration => member,
            Body::Bootstrap(set) => set.nodes.iter().any(|n| n.id == *from),
            Body::StatusQuery => member || msg.header.config != self.paxos_config.number,
            _ => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(Rejection::NotAMember)
        }
    }

    /// A log record, replayed (`mark` = `MAX_BALLOT_ID`: only the unbeatable ballot is refused)
    /// or learned from a peer's log.
    pub(super) fn check_record(&self, rec: &Message, mark: u32) -> Result<(), Rejection> {
        if !rec.kind().is_log_record() {
            return Err(Rejection::Malformed);
        }
        let h = &rec.header;
        check_header(h, mark)?;
        check_decree(h.decree)?;
        let verdict = match rec.kind() {
            MsgKind::Vote => check_vote(rec, mark, self.pipelined(), false),
            // A Prepare record may hold a promise adopted from a NotAccepted: another's ballot.
            _ if h.ballot.is_empty() => Err(Rejection::Malformed),
            _ => Ok(()),
        };
        // Every record the protocol reads carries a ballot (replay and learning rely on it).
        debug_assert!(verdict.is_err() || !h.ballot.is_empty(), "a {:?} record without a ballot passed", rec.kind());
        verdict
    }

    /// The longest prefix of `records` (a peer's log) that passes `check_record`, and what
    /// stopped it. No jump cap: the ring's ballots are what a replica that slept through a
    /// jump must catch up through, and the peer is one we chose to learn from (a member's log
    /// is read from its configured address, not from whoever sends packets in its name). A
    /// forged log could do worse than any ballot: hand us values to execute.
    pub(super) fn valid_records(&self, mut records: Vec<Arc<Message>>) -> (Vec<Arc<Message>>, Option<(MsgKind, Rejection)>) {
        if let Some(i) = records.iter().position(|rec| self.check_record(rec, MAX_BALLOT_ID).is_err()) {
            let refused = self.check_record(&records[i], MAX_BALLOT_ID).err().map(|reason| (records[i].kind(), reason));
            debug_assert!(refused.is_some(), "a record refused, and no reason why");
            records.truncate(i);
            return (records, refused);
        }
        debug_assert!(records.iter().all(|rec| rec.kind().is_log_record()), "a message that is no log record passed");
        (records, None)
    }

    /// A checkpoint fetched from a peer: its configuration and next vote. (The reader has
    /// checked the header's numbers and member set.) Like a peer's log (`valid_records`), it
    /// is held to no jump cap: it is what a replica that slept through one catches up from.
    pub(super) fn check_checkpoint(&self, cp: &Checkpoint) -> Result<(), Rejection> {
        let mark = MAX_BALLOT_ID;
        check_decree(cp.decree)?;
        check_decree(cp.config.initial_decree)?;
        check_config(cp.config.number)?;
        check_ballot(cp.max_ballot, mark)?;
        check_vote(&cp.next_vote, mark, self.pipelined(), true)?;
        if !valid_member_set(&cp.config.members) {
            return Err(Rejection::Malformed);
        }
        debug_assert!(cp.next_vote.kind() == MsgKind::Vote && cp.max_ballot.id <= MAX_BALLOT_ID, "an implausible checkpoint passed");
        Ok(())
    }

    /// What our own checkpoint may hold that we refuse now: the unbeatable ballot (an older
    /// build adopted it, finding 1) or a next vote that cannot be one. Each is dropped, and
    /// reported when the replica starts.
    pub(super) fn sanitize_checkpoint(&mut self, cp: &Checkpoint) -> Checkpoint {
        let mut cp = cp.clone();
        if check_ballot(cp.max_ballot, MAX_BALLOT_ID).is_err() {
            self.skipped.push((MsgKind::Prepare, Rejection::Ballot));
            cp.max_ballot = Ballot::EMPTY;
        }
        if let Err(reason) = check_vote(&cp.next_vote, MAX_BALLOT_ID, self.pipelined(), true) {
            self.skipped.push((MsgKind::Vote, reason));
            cp.next_vote = placeholder(self.version, cp.decree + 1, cp.config.number);
        }
        // What restore reads: both now pass, the placeholder included.
        debug_assert!(cp.max_ballot.id <= MAX_BALLOT_ID, "the unbeatable ballot kept");
        debug_assert_eq!(check_vote(&cp.next_vote, MAX_BALLOT_ID, self.pipelined(), true), Ok(()), "a next vote restore refuses");
        cp
    }

    /// A message from a member of our configuration refused for a ballot beyond
    /// `MAX_BALLOT_JUMP`. Once enough members have shown ballots that far ahead, the ring moved
    /// on without us (one accepted jump spreads among the replicas within reach of it) and we
    /// take the lowest of theirs as seen: we can then follow, and stand above it. "Enough" is
    /// more than the members outside a quorum (`members - quorum + 1`): with fewer, the
    /// replicas still below would be a quorum and carry the ring themselves; with more, refusing
    /// would deadlock it, neither side a quorum. An impersonator must claim that many ids (one
    /// in a configuration of two), and gets no further than `JUMP_EVIDENCE_LIMIT`.
    pub(super) fn note_jump(&mut self, from: MemberId, msg: &Message) {
        let mut shown = msg.header.ballot;
        if let Body::StatusResponse(s) = &msg.body {
            shown = shown.max(s.max_ballot);
        }
        let ours = msg.header.config == self.paxos_config.number && self.check_sender(&from, msg).is_ok() && self.members.contains(&from);
        let jump = shown.id < JUMP_EVIDENCE_LIMIT && shown.id > self.ballot_mark().saturating_add(MAX_BALLOT_JUMP);
        if !ours || !jump {
            return;
        }
        let noted = self.jumps.entry(from).or_insert(shown);
        *noted = (*noted).max(shown);
        let enough = self.members.len() - self.quorum() + 1;
        debug_assert!(enough >= 1 && enough <= self.members.len(), "{enough} members of {} to believe", self.members.len());
        debug_assert!(self.jumps.keys().all(|m| self.members.contains(m) && *m != self.me), "a jump noted from a non-member");
        if self.jumps.len() >= enough {
            let mut shown: Vec<Ballot> = self.jumps.values().copied().collect();
            shown.sort_unstable_by(|a, b| b.cmp(a));
            self.max_seen_ballot = self.max_seen_ballot.max(shown[enough - 1]);
            self.jumps.clear();
            debug_assert!(self.max_seen_ballot.id < JUMP_EVIDENCE_LIMIT, "a jump taken past the evidence limit");
        }
    }

    /// Drops a message, learned record or checkpoint, and says so.
    pub(super) fn reject(&self, from: MemberId, kind: MsgKind, reason: Rejection, out: &mut Vec<Action>) {
        debug_assert!(!matches!(reason, Rejection::WrongAddress | Rejection::NotCertified), "the driver's reason, given by the core");
        out.push(Action::Rejected { from, kind, reason });
    }
}
