//! The order of the execute queue under its memory bound (docs/spec/behavior.md §2.6), written once for
//! the runtime (runtime/spill.rs) and the simulator: which chosen decrees wait in the log
//! rather than in memory, what work waits behind them, and when each is handed on. Reading a
//! vote back and the queue itself are the host's ([`ExecQueue`]).
//!
//! Past the bound a passed decree is kept only as where its vote is in the log (or, if it is
//! not there, as passed). Work handed meanwhile waits behind the decrees it followed, so the
//! executor sees exactly the order it would have without the bound. Once the executor holds at
//! most half the bound, the waiting decrees are read back in decree order, each only once the
//! persist that appended it is durable, and checked to be the vote that was passed: a decree
//! is never skipped nor replaced by another value.

use crate::format::{Ballot, Message, MsgKind};
use crate::paxos::Cookie;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Counted for a decree besides its requests: its header and bookkeeping.
const DECREE_OVERHEAD: u64 = 256;

/// The bytes a chosen decree holds while it waits to execute.
pub fn decree_bytes(vote: &Message) -> u64 {
    let body = vote.as_vote().map_or(0, |v| v.requests.iter().map(|r| r.len() as u64 + 4).sum::<u64>() + v.cookie.len() as u64);
    DECREE_OVERHEAD + body
}

/// The host's side: the executor's queue and the log the waiting votes are read back from.
pub trait ExecQueue {
    /// What the executor is handed besides decrees.
    type Work;
    /// Where a vote is in the log.
    type Location;
    /// Bytes of decrees handed to the executor and not executed yet.
    fn in_memory(&self) -> u64;
    /// False if the executor is gone.
    fn hand(&mut self, work: Self::Work) -> bool;
    /// False if the executor is gone.
    fn hand_decree(&mut self, vote: Arc<Message>, cookies: Vec<Cookie>) -> bool;
    /// The record at `at`, or why it cannot be read.
    fn read(&mut self, at: &Self::Location) -> Result<Arc<Message>, String>;
    /// `at`, for an error.
    fn describe(&self, at: &Self::Location) -> String;
    /// Asks the executor to say when it is down to half the bound (the runtime's wake).
    fn arm(&self) {}
    /// At a stop, waits for the executor to work down; Err if it is gone.
    fn wait(&mut self) -> Result<(), String>;
}

/// A passed decree not handed yet.
pub(crate) enum Spilled<L> {
    /// Its vote, of `ballot`, is in the log at `at`, appended by persist `seq` or an earlier one.
    Logged { decree: u64, ballot: Ballot, at: L, seq: u64 },
    /// Not in the log: kept as passed.
    Held(Arc<Message>),
}

impl<L> Spilled<L> {
    fn decree(&self) -> u64 {
        match self {
            Spilled::Logged { decree, .. } => *decree,
            Spilled::Held(vote) => vote.header.decree,
        }
    }
}

/// Everything handed to the executor goes through here (see the module's doc).
pub struct Backlog<W, L> {
    limit: u64,
    pub(crate) spilled: VecDeque<Spilled<L>>,
    /// The cookies of spilled decrees that carry some (proposed here), by decree.
    cookies: BTreeMap<u64, Vec<Cookie>>,
    /// Work handed while decrees were spilled, each after how many spilled decrees it came.
    later: VecDeque<(u64, W)>,
    /// Spilled decrees queued and handed since the start: `later`'s positions.
    queued: u64,
    handed: u64,
}

const GONE: &str = "the execute thread is gone";

impl<W, L> Backlog<W, L> {
    /// `limit` bytes of decrees in memory at most (plus the one that crosses it).
    pub fn new(limit: u64) -> Self {
        Backlog { limit, spilled: VecDeque::new(), cookies: BTreeMap::new(), later: VecDeque::new(), queued: 0, handed: 0 }
    }

    /// Nothing waits: what comes is handed straight on.
    pub fn idle(&self) -> bool {
        self.spilled.is_empty() && self.later.is_empty()
    }

    /// Chosen decrees waiting in the log (or held) only.
    pub fn spilled(&self) -> usize {
        self.spilled.len()
    }

    /// Hands `work` to the executor, or queues it behind the spilled decrees. False if the
    /// executor is gone.
    pub fn hand<Q: ExecQueue<Work = W, Location = L>>(&mut self, work: W, q: &mut Q) -> bool {
        if self.idle() {
            return q.hand(work);
        }
        self.later.push_back((self.queued, work));
        true
    }

    /// A chosen decree: handed if it fits in memory and nothing waits before it, otherwise
    /// remembered by where `locate` finds its vote in the log (and the persist that appended
    /// it, or a later one), or as passed. False if the executor is gone.
    pub fn execute<Q: ExecQueue<Work = W, Location = L>>(
        &mut self,
        vote: Arc<Message>,
        cookies: Vec<Cookie>,
        q: &mut Q,
        locate: impl FnOnce(&Q, &Message) -> Option<(L, u64)>,
    ) -> bool {
        if self.idle() && q.in_memory() < self.limit {
            return q.hand_decree(vote, cookies);
        }
        let decree = vote.header.decree;
        debug_assert!(self.spilled.back().is_none_or(|s| s.decree() < decree), "decrees pass in order");
        let spilled = match locate(q, &vote) {
            Some((at, seq)) => Spilled::Logged { decree, ballot: vote.header.ballot, at, seq },
            None => Spilled::Held(vote),
        };
        if !cookies.is_empty() {
            self.cookies.insert(decree, cookies);
        }
        self.spilled.push_back(spilled);
        self.queued += 1;
        true
    }

    /// Once the executor holds at most half the bound, hands it the spilled decrees in order
    /// (and the work queued behind them) up to the bound, reading those whose records are
    /// durable (persists up to `durable`). Err: the replica cannot go on.
    pub fn refill<Q: ExecQueue<Work = W, Location = L>>(&mut self, durable: u64, q: &mut Q) -> Result<(), String> {
        while !self.idle() {
            if self.above_half(q) {
                // Armed before looking again, so a wake is not lost to the executor getting
                // down to half in between.
                q.arm();
                if self.above_half(q) {
                    break;
                }
            }
            self.hand_spilled(durable, q)?;
            if !self.above_half(q) {
                break; // all handed, or the next record is not durable yet (a Durable follows)
            }
        }
        Ok(())
    }

    /// Hands the spilled decrees, and the work behind them, until the bound is reached or the
    /// next record is not durable yet.
    fn hand_spilled<Q: ExecQueue<Work = W, Location = L>>(&mut self, durable: u64, q: &mut Q) -> Result<(), String> {
        loop {
            while self.later.front().is_some_and(|(after, _)| *after <= self.handed) {
                let (_, work) = self.later.pop_front().expect("checked");
                if !q.hand(work) {
                    return Err(GONE.into());
                }
            }
            let Some(next) = self.spilled.front() else { return Ok(()) };
            let in_memory = q.in_memory();
            if (in_memory > 0 && in_memory >= self.limit) || matches!(next, Spilled::Logged { seq, .. } if *seq > durable) {
                return Ok(());
            }
            let vote = match next {
                Spilled::Logged { decree, ballot, at, .. } => read_vote(q, *decree, *ballot, at)?,
                Spilled::Held(vote) => vote.clone(),
            };
            self.spilled.pop_front();
            self.handed += 1;
            let cookies = self.cookies.remove(&vote.header.decree).unwrap_or_default();
            if !q.hand_decree(vote, cookies) {
                return Err(GONE.into());
            }
        }
    }

    fn above_half<Q: ExecQueue>(&self, q: &Q) -> bool {
        q.in_memory() > self.limit / 2
    }

    /// The replica stops: every spilled decree, and the work queued behind it, is handed
    /// (waiting between chunks for the executor to work down to half the bound), so all chosen
    /// decrees execute as without the bound. `durable`: the persists known durable. Err if a
    /// decree cannot be read (or is not durable), or the executor is gone; then
    /// [`Backlog::abandon`] takes what is left.
    pub fn drain<Q: ExecQueue<Work = W, Location = L>>(&mut self, durable: u64, q: &mut Q) -> Result<(), String> {
        while !self.idle() {
            if let Some(Spilled::Logged { decree, seq, .. }) = self.spilled.front() {
                if *seq > durable {
                    return Err(format!("decree {decree} to execute: its vote is not durable (persist {seq}, durable {durable})"));
                }
            }
            self.refill(durable, q)?;
            while !self.idle() && self.above_half(q) {
                q.wait()?;
            }
        }
        Ok(())
    }

    /// Empties the backlog after a failed [`Backlog::drain`]: the cookies of the decrees still
    /// waiting, and the work queued behind them, in order.
    pub fn abandon(&mut self) -> (Vec<Cookie>, Vec<W>) {
        self.spilled.clear();
        let cookies = std::mem::take(&mut self.cookies).into_values().flatten().collect();
        (cookies, std::mem::take(&mut self.later).into_iter().map(|(_, work)| work).collect())
    }
}

/// Reads `decree`'s vote of `ballot` back from `at`: another record there is another vote,
/// possibly of another value.
fn read_vote<Q: ExecQueue>(q: &mut Q, decree: u64, ballot: Ballot, at: &Q::Location) -> Result<Arc<Message>, String> {
    let fail = |q: &Q, what: &dyn std::fmt::Display| format!("decree {decree} to execute: {}: {what}", q.describe(at));
    let record = q.read(at).map_err(|e| fail(q, &e))?;
    let found = &record.header;
    if record.kind() == MsgKind::Vote && found.decree == decree && found.ballot == ballot {
        return Ok(record);
    }
    let kind = record.kind();
    Err(fail(q, &format_args!("a {kind:?} record for decree {} of ballot {}, not the vote of ballot {ballot}", found.decree, found.ballot)))
}
