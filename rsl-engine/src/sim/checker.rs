//! The simulator's judge: the safety properties checked after every step, and progress once
//! faults heal.

use crate::format::{Ballot, Body, MemberId, Message, MsgKind, VoteBody};
use crate::paxos::{Checkpoint, Cookie, Micros};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

/// A replica process: its index and incarnation (restart count).
pub type Proc = (usize, u32);

#[derive(Debug)]
enum CookieState {
    Held { proc: Proc, request: u64 },
    Returned,
}

/// What the simulated services did, and what it must satisfy.
#[derive(Default)]
pub struct Checker {
    /// Each executed decree's request ids, as first executed anywhere.
    chosen: BTreeMap<u64, Vec<u64>>,
    /// The decree each request id executed at.
    request_decree: HashMap<u64, u64>,
    submitted: HashMap<u64, Micros>,
    cookies: HashMap<Cookie, CookieState>,
    /// Each process's last executed decree, and when it executed it.
    executed: HashMap<Proc, u64>,
    executed_at: HashMap<Proc, Micros>,
    /// The process that became primary in each ballot.
    primaries: BTreeMap<Ballot, Proc>,
    max_ballots: HashMap<Proc, Ballot>,
    /// Requests whose submitter saw them executed (with their cookie), and when.
    acknowledged: Vec<(u64, Micros)>,
    /// Each proposal's value and the members that acknowledged it, until it is chosen.
    proposals: HashMap<(u64, Ballot), (Value, Vec<MemberId>)>,
    /// Values chosen in the Paxos sense (a quorum acknowledged them), by decree, with the
    /// ballot that chose them.
    paxos_chosen: BTreeMap<u64, (Ballot, Value)>,
    /// Each configuration's size.
    config_sizes: HashMap<u32, usize>,
    violations: Vec<String>,
    /// Forged messages are in play (the adversary): agreement, validity and the Paxos invariant
    /// are not checked, since forged votes break them; nor that every live process executes
    /// every acknowledged request, only that each executes after the heal: a replica that
    /// promised a forged ballot the others refuse (one above their jump cap) follows by
    /// learning, in bursts. Everything else is, and the ring must make progress after the heal.
    pub lenient: bool,
}

/// What identifies a vote's value: its requests, or the members of a reconfiguration.
pub type Value = (Vec<u64>, Option<Vec<MemberId>>);

fn value_of(body: &VoteBody) -> Value {
    let requests = body.requests.iter().map(|r| request_id(r)).collect();
    (requests, body.reconfig.as_ref().map(|set| set.nodes.iter().map(|n| n.id).collect()))
}

/// The request id a simulated request carries in its first 8 bytes (a forged one may be
/// shorter: zero-padded).
pub fn request_id(request: &[u8]) -> u64 {
    let mut id = [0; 8];
    let n = request.len().min(8);
    id[..n].copy_from_slice(&request[..n]);
    u64::from_le_bytes(id)
}

impl Checker {
    /// Records a violation found outside the checker's own bookkeeping.
    pub fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    fn violate(&mut self, what: String) {
        self.violation(what);
    }

    /// Every property violation found so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// A client submitted `request` to `proc` with `cookie` at `now`.
    pub fn submitted(&mut self, proc: Proc, request: u64, cookie: Cookie, now: Micros) {
        assert!(self.submitted.insert(request, now).is_none(), "request ids are unique");
        self.cookies.insert(cookie, CookieState::Held { proc, request });
    }

    /// A `ChangeConfiguration` cookie is held by `proc`.
    pub fn submitted_config_change(&mut self, proc: Proc, cookie: Cookie) {
        self.cookies.insert(cookie, CookieState::Held { proc, request: 0 });
    }

    /// A process ran a chosen decree.
    pub fn executed(&mut self, proc: Proc, vote: &Message, cookies: &[Cookie], now: Micros) {
        let decree = vote.header.decree;
        let ids: Vec<u64> = vote.as_vote().map(|v| v.requests.iter().map(|r| request_id(r)).collect()).unwrap_or_default();
        // Executed decrees are contiguous within a process's life.
        let expected = self.executed.get(&proc).map_or(decree, |d| d + 1);
        if decree != expected {
            self.violate(format!("{proc:?} executed decree {decree}, expected {expected}"));
        }
        self.executed.insert(proc, decree);
        self.executed_at.insert(proc, now);
        // Agreement: one value per decree.
        match self.chosen.get(&decree) {
            _ if self.lenient => {
                self.chosen.entry(decree).or_insert(ids.clone());
                for id in &ids {
                    self.request_decree.entry(*id).or_insert(decree);
                }
            }
            Some(first) if *first != ids => {
                let msg = format!("agreement: {proc:?} executed {ids:?} at decree {decree}, others {first:?}");
                self.violate(msg);
            }
            Some(_) => {}
            None => {
                // Validity: only submitted requests, each at one decree.
                for id in &ids {
                    if !self.submitted.contains_key(id) {
                        self.violate(format!("validity: decree {decree} executes request {id} that nobody submitted"));
                    }
                    if let Some(other) = self.request_decree.insert(*id, decree) {
                        self.violate(format!("validity: request {id} executed at decrees {other} and {decree}"));
                    }
                }
                self.chosen.insert(decree, ids.clone());
            }
        }
        if !cookies.is_empty() && cookies.len() != ids.len() {
            self.violate(format!("{proc:?} executed decree {decree} with {} cookies for {} requests", cookies.len(), ids.len()));
        }
        for (cookie, id) in cookies.iter().zip(&ids) {
            if self.return_cookie(proc, *cookie, Some(*id)) {
                self.acknowledged.push((*id, now));
            }
        }
    }

    /// A cookie came back; `executed` names the request it came back with. Returns whether it
    /// was a valid first return.
    pub fn return_cookie(&mut self, proc: Proc, cookie: Cookie, executed: Option<u64>) -> bool {
        match self.cookies.insert(cookie, CookieState::Returned) {
            Some(CookieState::Held { proc: holder, request }) if holder == proc && executed.is_none_or(|id| id == request) => true,
            other => {
                self.violate(format!("cookie {cookie} returned by {proc:?} with {executed:?}, was {other:?}"));
                false
            }
        }
    }

    /// A process's state became a checkpoint of `decree`: its execution continues after it.
    pub fn loaded_checkpoint(&mut self, proc: Proc, decree: u64) {
        // Decree 0 also names the empty state of a bootstrap checkpoint.
        if decree > 0 && !self.chosen.contains_key(&decree) {
            self.violate(format!("{proc:?} loaded a checkpoint of decree {decree}, which never executed"));
        }
        if self.executed.get(&proc).is_some_and(|d| *d > decree) {
            self.violate(format!("{proc:?} loaded a checkpoint of decree {decree}, behind its state"));
        }
        self.executed.insert(proc, decree);
    }

    /// Configuration `number` has `size` members (for quorum checks).
    pub fn configuration(&mut self, number: u32, size: usize) {
        self.config_sizes.insert(number, size);
    }

    /// A vote was proposed or logged. Once a value is chosen at a decree, every proposal
    /// there at a higher ballot must carry it (the Paxos invariant), whether or not it is ever
    /// executed.
    pub fn vote_logged(&mut self, vote: &Message) {
        let Some(body) = vote.as_vote().filter(|_| !self.lenient) else { return };
        let (decree, ballot) = (vote.header.decree, vote.header.ballot);
        let value = value_of(body);
        if let Some((chosen_ballot, chosen)) = self.paxos_chosen.get(&decree) {
            if ballot > *chosen_ballot && value != *chosen {
                let msg = format!("paxos: decree {decree} chose {chosen:?} at {chosen_ballot}, yet ballot {ballot} proposes {value:?}");
                self.violate(msg);
            }
        }
        // The proposer counts once its own write is durable (`vote_acknowledged` then).
        if vote.header.sender == ballot.member {
            self.proposals.entry((decree, ballot)).or_insert_with(|| (value, Vec::new()));
        }
    }

    /// Node `node` (member `member`) sent `msg`, its disk holding `durable` and `checkpoint`.
    /// What an acknowledgement promises must already be there: the vote a VoteAccepted answers;
    /// the promise and the reported vote of a PrepareAccepted. A VoteAccepted also counts
    /// towards its vote's quorum.
    pub fn sent(&mut self, node: usize, member: MemberId, msg: &Message, durable: &[Arc<Message>], checkpoint: Option<&Checkpoint>) {
        let logged = |d: u64, b: Ballot| {
            b.is_empty()
                || durable.iter().rev().any(|r| r.kind() == MsgKind::Vote && (r.header.decree, r.header.ballot) == (d, b))
                || checkpoint.is_some_and(|cp| (cp.next_vote.header.decree, cp.next_vote.header.ballot) == (d, b) || cp.decree >= d)
        };
        let promised = |b: Ballot| durable.iter().rev().any(|r| r.header.ballot >= b) || checkpoint.is_some_and(|cp| cp.max_ballot >= b);
        let (d, b) = (msg.header.decree, msg.header.ballot);
        let missing = match &msg.body {
            Body::VoteAccepted => !logged(d, b),
            Body::PrepareAccepted(vote) => !promised(b) || !logged(vote.header.decree, vote.header.ballot),
            _ => false,
        };
        if missing {
            self.violate(format!("durability: node {node} sent {:?} ({d},{b}) before logging what it promises", msg.kind()));
        }
        if let Body::VoteAccepted = msg.body {
            self.vote_acknowledged(member, d, b, msg.header.config);
        }
    }

    /// `from` acknowledged the vote at (decree, ballot).
    pub fn vote_acknowledged(&mut self, from: MemberId, decree: u64, ballot: Ballot, config: u32) {
        if self.lenient {
            return;
        }
        let Some((value, acks)) = self.proposals.get_mut(&(decree, ballot)) else { return };
        if !acks.contains(&from) {
            acks.push(from);
        }
        let quorum = self.config_sizes.get(&config).map(|n| n / 2 + 1);
        if quorum.is_some_and(|q| acks.len() >= q) {
            let value = value.clone();
            match self.paxos_chosen.get(&decree) {
                Some((_, chosen)) if *chosen != value => {
                    let msg = format!("paxos: decree {decree} chosen twice: {chosen:?} and {value:?} at {ballot}");
                    self.violate(msg);
                }
                Some(_) => {}
                None => {
                    self.paxos_chosen.insert(decree, (ballot, value));
                }
            }
        }
    }

    /// `proc` became primary with `ballot`: no other may have the same ballot.
    pub fn became_primary(&mut self, proc: Proc, ballot: Ballot) {
        if let Some(other) = self.primaries.insert(ballot, proc) {
            if other != proc {
                self.violate(format!("two primaries in ballot {ballot}: {other:?} and {proc:?}"));
            }
        }
    }

    /// Ballots only grow within a process's life.
    pub fn observe_ballot(&mut self, proc: Proc, ballot: Ballot) {
        let prev = self.max_ballots.insert(proc, ballot);
        if prev.is_some_and(|p| p > ballot) {
            self.violate(format!("{proc:?} max ballot went down from {} to {ballot}", prev.expect("checked")));
        }
    }

    /// A process died: the cookies it held die with it.
    pub fn crashed(&mut self, proc: Proc) {
        for state in self.cookies.values_mut() {
            if matches!(state, CookieState::Held { proc: p, .. } if *p == proc) {
                *state = CookieState::Returned;
            }
        }
    }

    /// After the faults healed at `healed`: a request acknowledged since then must exist, every
    /// acknowledged request must have executed on every live process, and every live process's
    /// cookies must have come back.
    pub fn check_progress(&mut self, healed: Micros, live: &[Proc]) {
        let Some(&(last, _)) = self.acknowledged.iter().rev().find(|(_, at)| *at >= healed) else {
            return self.violate(format!("no progress: no request acknowledged after the faults healed at {healed}us"));
        };
        let decree = self.request_decree[&last];
        for proc in live {
            if self.lenient {
                if self.executed_at.get(proc).is_none_or(|at| *at < healed) {
                    self.violate(format!("stalled: {proc:?} executed nothing after the faults healed at {healed}us"));
                }
                continue;
            }
            if self.executed.get(proc).is_none_or(|d| *d < decree) {
                let msg = format!(
                    "durability: {proc:?} has not executed decree {decree} (request {last}), reached {:?}",
                    self.executed.get(proc)
                );
                self.violate(msg);
            }
        }
        let mut held = String::new();
        for (cookie, state) in &self.cookies {
            if let CookieState::Held { proc, request } = state {
                if live.contains(proc) {
                    let _ = write!(held, " {cookie}(req {request} on {proc:?})");
                }
            }
        }
        if !held.is_empty() {
            self.violate(format!("cookies never returned:{held}"));
        }
    }

    /// Requests acknowledged to their client.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.len()
    }

    /// Decrees chosen.
    pub fn decrees(&self) -> usize {
        self.chosen.len()
    }
}

/// Each invariant the checker judges, fed a history that breaks it (exactly that violation is
/// reported) and a companion history that keeps it (none is).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{ConfigInfo, Header, Version};
    use bytes::Bytes;

    const P: Proc = (0, 0);
    const Q: Proc = (1, 0);

    fn member(i: usize) -> MemberId {
        MemberId::new(&(i + 1).to_string()).expect("numeric id")
    }

    fn ballot(id: u32, i: usize) -> Ballot {
        Ballot::new(id, member(i))
    }

    /// A vote from `ballot`'s proposer carrying `requests` (each a request id).
    fn vote(decree: u64, ballot: Ballot, requests: &[u64]) -> Message {
        let requests = requests.iter().map(|id| Bytes::copy_from_slice(&id.to_le_bytes())).collect();
        let header = Header::new(Version::V6, ballot.member, decree, 1, ballot);
        Message::new(header, Body::Vote(VoteBody { requests, ..Default::default() }))
    }

    /// A checker of a three-member configuration 1, with requests 1 to 9 submitted on `P`
    /// (request `r` holds cookie `100 + r`).
    fn checker() -> Checker {
        let mut c = Checker::default();
        c.configuration(1, 3);
        for r in 1..10 {
            c.submitted(P, r, 100 + r, 0);
        }
        c
    }

    /// The only violation reported names `what`.
    #[track_caller]
    fn only(c: &Checker, what: &str) {
        assert_eq!(c.violations().len(), 1, "one violation, of {what}: {:?}", c.violations());
        assert!(c.violations()[0].contains(what), "{what} expected: {:?}", c.violations());
    }

    #[track_caller]
    fn clean(c: &Checker) {
        assert!(c.violations().is_empty(), "{:?}", c.violations());
    }

    #[test]
    fn executions_out_of_order_within_a_life_are_reported() {
        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1]), &[], 1);
        c.executed(P, &vote(2, ballot(1, 0), &[2]), &[], 2);
        only(&c, "executed decree 2, expected 1");

        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1]), &[], 1);
        c.executed(P, &vote(1, ballot(1, 0), &[2]), &[], 2);
        c.executed((0, 1), &vote(0, ballot(1, 0), &[1]), &[], 3); // a new life starts over
        c.executed(Q, &vote(1, ballot(1, 0), &[2]), &[], 3); // a first execution may start anywhere
        clean(&c);
    }

    #[test]
    fn two_values_at_one_decree_break_agreement() {
        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1]), &[], 1);
        c.executed(Q, &vote(0, ballot(2, 1), &[2]), &[], 2);
        only(&c, "agreement");

        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1]), &[], 1);
        c.executed(Q, &vote(0, ballot(2, 1), &[1]), &[], 2); // the same value under another ballot
        clean(&c);
    }

    #[test]
    fn a_request_nobody_submitted_breaks_validity() {
        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1, 42]), &[], 1);
        only(&c, "validity: decree 0 executes request 42 that nobody submitted");

        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1, 2]), &[], 1);
        c.executed(P, &vote(1, ballot(1, 0), &[]), &[], 2); // a heartbeat
        clean(&c);
    }

    #[test]
    fn a_request_chosen_at_two_decrees_breaks_validity() {
        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1]), &[], 1);
        c.executed(P, &vote(1, ballot(1, 0), &[1]), &[], 2);
        only(&c, "validity: request 1 executed at decrees 0 and 1");

        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1]), &[], 1);
        c.executed(P, &vote(1, ballot(1, 0), &[2]), &[], 2);
        clean(&c);
    }

    #[test]
    fn cookies_must_match_the_requests_they_execute() {
        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1, 2]), &[101], 1);
        only(&c, "with 1 cookies for 2 requests");

        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1, 2]), &[101, 102], 1);
        clean(&c);
        assert_eq!(c.acknowledged(), 2, "both submitters saw their request execute");
    }

    #[test]
    fn a_cookie_comes_back_once_to_its_holder_with_its_request() {
        // Twice.
        let mut c = checker();
        assert!(c.return_cookie(P, 101, None));
        assert!(!c.return_cookie(P, 101, None));
        only(&c, "cookie 101 returned by (0, 0) with None, was Some(Returned)");
        // By another process.
        let mut c = checker();
        assert!(!c.return_cookie(Q, 101, None));
        only(&c, "cookie 101 returned by (1, 0)");
        // With another request.
        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[2]), &[101], 1);
        only(&c, "cookie 101 returned by (0, 0) with Some(2)");
        // One never handed out.
        let mut c = checker();
        assert!(!c.return_cookie(P, 7, None));
        only(&c, "cookie 7 returned");

        let mut c = checker();
        assert!(c.return_cookie(P, 101, None), "an abort");
        c.submitted_config_change(P, 500);
        assert!(c.return_cookie(P, 500, None));
        c.executed(P, &vote(0, ballot(1, 0), &[2]), &[102], 1);
        clean(&c);
    }

    #[test]
    fn a_checkpoint_of_a_decree_never_executed_is_reported() {
        let mut c = checker();
        c.loaded_checkpoint(Q, 3);
        only(&c, "loaded a checkpoint of decree 3, which never executed");

        let mut c = checker();
        c.loaded_checkpoint(Q, 0); // a bootstrap checkpoint's empty state
        for d in 0..4 {
            c.executed(P, &vote(d, ballot(1, 0), &[d + 1]), &[], 1);
        }
        c.loaded_checkpoint(Q, 3);
        c.executed(Q, &vote(4, ballot(1, 0), &[5]), &[], 2); // and execution continues after it
        clean(&c);
    }

    #[test]
    fn a_checkpoint_behind_the_state_is_reported() {
        let mut c = checker();
        for d in 0..4 {
            c.executed(P, &vote(d, ballot(1, 0), &[d + 1]), &[], 1);
        }
        c.loaded_checkpoint(P, 1);
        only(&c, "loaded a checkpoint of decree 1, behind its state");

        let mut c = checker();
        for d in 0..2 {
            c.executed(P, &vote(d, ballot(1, 0), &[d + 1]), &[], 1);
        }
        c.executed(Q, &vote(0, ballot(1, 0), &[1]), &[], 1);
        c.loaded_checkpoint(Q, 1);
        clean(&c);
    }

    /// Decree 0 chosen with request 1 at ballot 1 (the proposer, member 1, and member 2 acked).
    fn chosen_at_ballot_1() -> Checker {
        let mut c = checker();
        let b1 = ballot(1, 0);
        c.vote_logged(&vote(0, b1, &[1]));
        c.vote_acknowledged(member(0), 0, b1, 1);
        c.vote_acknowledged(member(1), 0, b1, 1);
        c
    }

    #[test]
    fn a_higher_ballot_proposing_another_value_at_a_chosen_decree_breaks_paxos() {
        let mut c = chosen_at_ballot_1();
        c.vote_logged(&vote(0, ballot(2, 1), &[2]));
        only(&c, "paxos: decree 0 chose");

        let mut c = chosen_at_ballot_1();
        c.vote_logged(&vote(0, ballot(2, 1), &[1])); // re-proposes the chosen value
        c.vote_logged(&vote(1, ballot(2, 1), &[2])); // another decree is free
        clean(&c);
        // Only a quorum chooses: one acknowledgement of three leaves decree 0 open.
        let mut c = checker();
        c.vote_logged(&vote(0, ballot(1, 0), &[1]));
        c.vote_acknowledged(member(0), 0, ballot(1, 0), 1);
        c.vote_acknowledged(member(0), 0, ballot(1, 0), 1); // a repeat is not a second member
        c.vote_logged(&vote(0, ballot(2, 1), &[2]));
        clean(&c);
    }

    #[test]
    fn two_values_chosen_at_one_decree_break_paxos() {
        let mut c = chosen_at_ballot_1();
        // A proposal at a lower ballot (not checked against the chosen value) reaches a quorum.
        let b0 = ballot(0, 2);
        c.vote_logged(&vote(0, b0, &[2]));
        c.vote_acknowledged(member(2), 0, b0, 1);
        c.vote_acknowledged(member(1), 0, b0, 1);
        only(&c, "paxos: decree 0 chosen twice");

        let mut c = chosen_at_ballot_1();
        let b2 = ballot(2, 2);
        c.vote_logged(&vote(0, b2, &[1]));
        c.vote_acknowledged(member(2), 0, b2, 1);
        c.vote_acknowledged(member(1), 0, b2, 1);
        clean(&c);
    }

    #[test]
    fn two_primaries_in_one_ballot_are_reported() {
        let mut c = checker();
        c.became_primary(P, ballot(1, 0));
        c.became_primary(Q, ballot(1, 0));
        only(&c, "two primaries in ballot (1,1)");

        let mut c = checker();
        c.became_primary(P, ballot(1, 0));
        c.became_primary(P, ballot(1, 0)); // the same process again
        c.became_primary(Q, ballot(2, 1));
        clean(&c);
    }

    #[test]
    fn a_max_ballot_going_down_within_a_life_is_reported() {
        let mut c = checker();
        c.observe_ballot(P, ballot(2, 1));
        c.observe_ballot(P, ballot(1, 2));
        only(&c, "(0, 0) max ballot went down from (2,2) to (1,3)");

        let mut c = checker();
        c.observe_ballot(P, ballot(1, 2));
        c.observe_ballot(P, ballot(1, 2));
        c.observe_ballot(P, ballot(2, 1));
        c.observe_ballot((0, 1), ballot(1, 0)); // a new life restores from its log
        clean(&c);
    }

    /// Request 1 (cookie 101) executed on `P` at 10 us, after the heal at 5 us; the other
    /// cookies came back aborted.
    fn acknowledged_after_heal() -> Checker {
        let mut c = checker();
        c.executed(P, &vote(0, ballot(1, 0), &[1]), &[101], 10);
        for r in 2..10 {
            c.return_cookie(P, 100 + r, None);
        }
        c
    }

    #[test]
    fn no_request_acknowledged_after_the_heal_is_no_progress() {
        let mut c = acknowledged_after_heal();
        c.check_progress(11, &[P]);
        only(&c, "no progress: no request acknowledged after the faults healed at 11us");

        let mut c = acknowledged_after_heal();
        c.check_progress(5, &[P]);
        clean(&c);
    }

    #[test]
    fn a_live_process_missing_an_acknowledged_request_breaks_durability() {
        let mut c = acknowledged_after_heal();
        c.executed(Q, &vote(0, ballot(1, 0), &[1]), &[], 10);
        c.check_progress(5, &[P, Q, (2, 0)]);
        only(&c, "durability: (2, 0) has not executed decree 0 (request 1), reached None");

        let mut c = acknowledged_after_heal();
        c.executed(Q, &vote(0, ballot(1, 0), &[1]), &[], 10);
        c.check_progress(5, &[P, Q]); // node 2 is down or out of the configuration
        clean(&c);
    }

    #[test]
    fn a_cookie_a_live_process_never_returned_is_reported() {
        let mut c = acknowledged_after_heal();
        c.submitted(Q, 10, 110, 7);
        c.executed(Q, &vote(0, ballot(1, 0), &[1]), &[], 10);
        c.check_progress(5, &[P, Q]);
        only(&c, "cookies never returned: 110(req 10 on (1, 0))");

        // Cookies die with their process; the next life holds none of them.
        let mut c = acknowledged_after_heal();
        c.submitted(Q, 10, 110, 7);
        c.executed(Q, &vote(0, ballot(1, 0), &[1]), &[], 10);
        c.crashed(Q);
        c.executed((1, 1), &vote(0, ballot(1, 0), &[1]), &[], 10);
        c.check_progress(5, &[P, (1, 1)]);
        clean(&c);
    }

    #[test]
    fn under_the_adversary_a_live_process_that_executed_nothing_since_the_heal_is_stalled() {
        let mut c = Checker { lenient: true, ..acknowledged_after_heal() };
        c.executed(Q, &vote(0, ballot(1, 0), &[1]), &[], 4);
        c.check_progress(5, &[P, Q]);
        only(&c, "stalled: (1, 0) executed nothing after the faults healed at 5us");

        // Lenient: forged votes may break agreement, validity and the Paxos invariant, and a
        // process may trail the acknowledged decree; none of that is reported.
        let mut c = Checker { lenient: true, ..chosen_at_ballot_1() };
        for r in 2..10 {
            c.return_cookie(P, 100 + r, None);
        }
        c.vote_logged(&vote(0, ballot(2, 1), &[2]));
        c.executed(P, &vote(0, ballot(1, 0), &[1]), &[101], 10);
        c.executed(P, &vote(1, ballot(1, 0), &[1, 77]), &[], 10);
        c.executed(Q, &vote(0, ballot(2, 1), &[2]), &[], 10);
        c.check_progress(5, &[P, Q]);
        clean(&c);
    }

    /// What node 0 (member 1) has on disk: the vote (3, b1) and the promise b2 logged as a
    /// Prepare.
    fn disk() -> Vec<Arc<Message>> {
        let prepare = Message::new(Header::new(Version::V6, member(1), 3, 1, ballot(2, 1)), Body::Prepare(Bytes::new()));
        vec![Arc::new(vote(3, ballot(1, 0), &[1])), Arc::new(prepare)]
    }

    fn accepted(decree: u64, b: Ballot) -> Message {
        Message::new(Header::new(Version::V6, member(0), decree, 1, b), Body::VoteAccepted)
    }

    fn prepare_accepted(b: Ballot, reported: Message) -> Message {
        Message::new(Header::new(Version::V6, member(0), 3, 1, b), Body::PrepareAccepted(Box::new(reported)))
    }

    #[test]
    fn a_vote_accepted_before_its_vote_is_logged_breaks_durability() {
        let mut c = checker();
        c.sent(0, member(0), &accepted(4, ballot(1, 0)), &disk(), None);
        only(&c, "durability: node 0 sent VoteAccepted (4,(1,1)) before logging what it promises");

        let mut c = checker();
        c.sent(0, member(0), &accepted(3, ballot(1, 0)), &disk(), None);
        // Or held by the checkpoint: its next vote, or any decree it covers.
        let cp = Checkpoint {
            decree: 5,
            next_vote: Arc::new(vote(6, ballot(1, 0), &[2])),
            max_ballot: ballot(1, 0),
            config: ConfigInfo::default(),
            state_saved: true,
        };
        c.sent(0, member(0), &accepted(6, ballot(1, 0)), &[], Some(&cp));
        c.sent(0, member(0), &accepted(4, ballot(1, 0)), &[], Some(&cp));
        clean(&c);
    }

    #[test]
    fn a_prepare_accepted_before_its_promise_or_its_vote_is_logged_breaks_durability() {
        let mut c = checker();
        c.sent(0, member(0), &prepare_accepted(ballot(3, 2), vote(3, ballot(1, 0), &[1])), &disk(), None);
        only(&c, "durability: node 0 sent PrepareAccepted (3,(3,3))");
        let mut c = checker();
        c.sent(0, member(0), &prepare_accepted(ballot(2, 1), vote(3, ballot(2, 0), &[1])), &disk(), None);
        only(&c, "durability: node 0 sent PrepareAccepted (3,(2,2))");

        let mut c = checker();
        c.sent(0, member(0), &prepare_accepted(ballot(2, 1), vote(3, ballot(1, 0), &[1])), &disk(), None);
        c.sent(0, member(0), &prepare_accepted(ballot(1, 2), vote(3, Ballot::EMPTY, &[])), &disk(), None); // a placeholder
        clean(&c);
    }

    #[test]
    fn a_vote_accepted_counts_towards_its_quorum() {
        let mut c = checker();
        let b1 = ballot(1, 0);
        c.vote_logged(&vote(3, b1, &[1]));
        let d = disk();
        c.sent(0, member(0), &accepted(3, b1), &d, None);
        c.sent(1, member(1), &accepted(3, b1), &d, None);
        c.vote_logged(&vote(3, ballot(2, 1), &[2]));
        only(&c, "paxos: decree 3 chose");
    }
}
