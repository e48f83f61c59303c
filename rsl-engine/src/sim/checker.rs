//! The simulator's judge: the safety properties checked after every step, and progress once
//! faults heal.

use crate::format::{Ballot, MemberId, Message, VoteBody};
use crate::paxos::{Cookie, Micros};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

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

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

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

    pub fn acknowledged(&self) -> usize {
        self.acknowledged.len()
    }

    pub fn decrees(&self) -> usize {
        self.chosen.len()
    }
}
