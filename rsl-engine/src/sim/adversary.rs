//! The simulator's adversary (`SimConfig::with_adversary`): during the fault period it injects
//! well-formed messages of every type with extreme field values into random replicas, claiming
//! real member ids or ids outside the configuration. It knows what a replica's messages would
//! show an eavesdropper (its ballot, decree and configuration), as an attacker on a plaintext
//! network does. No replica may panic, and the ring must make progress once the faults heal.

use crate::format::message::{JoinBody, StatusBody};
use crate::format::{Ballot, Body, Header, MemberId, MemberSet, Message, MsgKind, Node, Version, VoteBody};
use crate::paxos::SplitMix64;
use bytes::{BufMut, Bytes, BytesMut};

/// How far above a replica's ballot the informed jumps go (the core refuses more than 2^24).
const BALLOT_JUMP: u32 = 1 << 24;

/// The largest request a forged vote carries: big, within the batch limit.
const HUGE_REQUEST: usize = 256 << 10;

/// Request ids at or above this are forged: nobody submitted them.
pub const FORGED_REQUEST: u64 = 1 << 63;

/// What the adversary sees of the replica it aims at.
pub struct Target {
    pub version: Version,
    pub max_ballot: Ballot,
    pub next_execute: u64,
    pub config: u32,
}

/// The forger: its own random stream, so that a run without it keeps its schedule.
pub struct Adversary {
    rng: SplitMix64,
    /// Every node the simulator has, members and spares.
    ids: Vec<MemberId>,
    /// A member set of each node count from 1 up, of real nodes.
    sets: Vec<MemberSet>,
    /// Messages injected so far.
    pub injected: usize,
}

/// Ids that no configuration names: the longest one, the one of finding 1, and others.
fn outsider(rng: &mut SplitMix64) -> MemberId {
    match rng.below(4) {
        0 => MemberId::new(&"9".repeat(MemberId::MAX_LEN)).expect("63 nines"),
        1 => MemberId::new("evil").expect("an id"),
        2 => MemberId::new(&(1000 + rng.below(1000)).to_string()).expect("an id"),
        _ => MemberId::new(&"z".repeat(1 + rng.below(MemberId::MAX_LEN as u64) as usize)).expect("an id"),
    }
}

impl Adversary {
    pub fn new(seed: u64, ids: Vec<MemberId>, sets: Vec<MemberSet>) -> Adversary {
        Adversary { rng: SplitMix64::new(seed ^ 0xAD7E_25A4_7E55_0001), ids, sets, injected: 0 }
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    /// A forged message for `target`, and the id the network says it comes from (usually the
    /// one the header claims).
    pub fn forge(&mut self, target: &Target) -> (MemberId, Message) {
        self.injected += 1;
        let kind = MsgKind::from_code(1 + self.rng.below(14) as u16).expect("codes 1 to 14");
        let header = self.header(target, kind);
        let body = self.body(target, kind);
        let from = if self.rng.chance(0.1) { self.id() } else { header.sender };
        (from, Message::new(header, body))
    }

    fn header(&mut self, t: &Target, kind: MsgKind) -> Header {
        let version = if self.rng.chance(0.1) { Version::new(1 + self.rng.below(7) as u16).expect("1 to 7") } else { t.version };
        let sender = self.id();
        let mut ballot = self.ballot(t);
        if matches!(kind, MsgKind::Vote | MsgKind::Prepare | MsgKind::ReconfigurationDecision) && self.rng.chance(0.8) {
            ballot.member = sender; // what the core expects of a proposer
        }
        let mut header = Header::new(version, sender, self.decree(t), self.config(t), ballot);
        header.payload = self.decree(t);
        header
    }

    fn body(&mut self, t: &Target, kind: MsgKind) -> Body {
        match kind {
            MsgKind::Vote => Body::Vote(self.vote_body()),
            MsgKind::VoteAccepted => Body::VoteAccepted,
            MsgKind::Prepare => Body::Prepare(self.bytes(16)),
            MsgKind::PrepareAccepted => {
                let header = self.header(t, MsgKind::Vote);
                let embedded = if self.rng.chance(0.05) { Body::NotAccepted } else { Body::Vote(self.vote_body()) };
                Body::PrepareAccepted(Box::new(Message::new(header, embedded)))
            }
            MsgKind::NotAccepted => Body::NotAccepted,
            MsgKind::StatusQuery => Body::StatusQuery,
            MsgKind::StatusResponse => Body::StatusResponse(self.status(t)),
            MsgKind::FetchVotes => Body::FetchVotes,
            MsgKind::FetchCheckpoint => Body::FetchCheckpoint,
            MsgKind::ReconfigurationDecision => Body::ReconfigurationDecision,
            MsgKind::DefunctConfiguration => Body::DefunctConfiguration,
            MsgKind::Join => Body::Join(JoinBody {
                learn_port: self.rng.below(1 << 16) as u16,
                min_decree_in_log: self.decree(t),
                checkpointed_decree: self.decree(t),
                checkpoint_size: self.size(),
            }),
            MsgKind::JoinRequest => Body::JoinRequest,
            MsgKind::Bootstrap => Body::Bootstrap(self.member_set()),
        }
    }

    /// A real member id most of the time (forged), else one outside every configuration.
    fn id(&mut self) -> MemberId {
        if self.rng.chance(0.6) {
            self.ids[self.rng.below(self.ids.len() as u64) as usize]
        } else {
            outsider(&mut self.rng)
        }
    }

    fn ballot(&mut self, t: &Target) -> Ballot {
        let member = self.id();
        let mark = t.max_ballot.id;
        let id = match self.rng.below(8) {
            0 => return Ballot::EMPTY,
            1 => u32::MAX,
            2 => u32::MAX - 1,
            3 => self.rng.next_u64() as u32,
            // The boundary of the jump the core takes (rarely: each jump it takes uses ids up).
            4 if self.rng.chance(0.1) => mark.saturating_add(BALLOT_JUMP - 1 + self.rng.below(3) as u32),
            // Plausible: a takeover of the current ballot, or one just below it.
            _ => mark.saturating_add(self.rng.below(50) as u32).saturating_sub(10),
        };
        Ballot::new(id, member)
    }

    fn decree(&mut self, t: &Target) -> u64 {
        match self.rng.below(8) {
            0 => 0,
            1 => u64::MAX - self.rng.below(3),
            2 => (1 << 62) - 2 + self.rng.below(4),
            3 => self.rng.next_u64(),
            4 => t.next_execute + 4090 + self.rng.below(10),
            _ => (t.next_execute + self.rng.below(6)).saturating_sub(3),
        }
    }

    fn config(&mut self, t: &Target) -> u32 {
        match self.rng.below(10) {
            0 => 0,
            1 => (1 << 31) - 1 + self.rng.below(2) as u32,
            2 => u32::MAX,
            3 => t.config + 2 + self.rng.below(1000) as u32,
            4 => t.config + 1,
            5 => t.config.saturating_sub(1),
            _ => t.config,
        }
    }

    fn size(&mut self) -> u64 {
        match self.rng.below(3) {
            0 => 0,
            1 => u64::MAX - self.rng.below(2),
            _ => self.rng.below(1 << 40),
        }
    }

    fn bytes(&mut self, max: u64) -> Bytes {
        let n = self.rng.below(max + 1) as usize;
        Bytes::from((0..n).map(|_| self.rng.next_u64() as u8).collect::<Vec<u8>>())
    }

    /// A request the checker can tell is forged: it starts with an id at or above `FORGED_REQUEST`.
    fn request(&mut self) -> Bytes {
        let len = match self.rng.below(20) {
            0 => 0, // malformed: requests are never empty
            1 => HUGE_REQUEST,
            _ => 8 + self.rng.below(56) as usize,
        };
        let mut r = BytesMut::with_capacity(len.max(8));
        r.put_u64_le(FORGED_REQUEST | self.rng.next_u64());
        r.resize(len.max(8), 0xEE);
        let r = r.freeze();
        if len == 0 {
            Bytes::new()
        } else {
            r
        }
    }

    fn vote_body(&mut self) -> VoteBody {
        let reconfig = self.rng.chance(0.05).then(|| self.member_set());
        let n = if reconfig.is_some() { 0 } else { self.rng.below(4) };
        VoteBody { cookie: self.bytes(16), reconfig, relinquish: self.rng.chance(0.05), requests: (0..n).map(|_| self.request()).collect() }
    }

    fn status(&mut self, t: &Target) -> StatusBody {
        StatusBody {
            query_decree: self.decree(t),
            query_ballot: self.ballot(t),
            last_received_ago_ms: self.rng.next_u64() as i64,
            min_decree_in_log: self.decree(t),
            checkpointed_decree: self.decree(t),
            checkpoint_size: self.size(),
            max_ballot: self.ballot(t),
            state: if self.rng.chance(0.5) { self.rng.below(5) as u32 } else { self.rng.next_u64() as u32 },
        }
    }

    /// Real nodes (a set that could be chosen: the ring would follow it), or one the core must
    /// refuse: empty, an id named twice, an empty id, or too many members. (A well-formed set of
    /// outsiders, once chosen, would hand the ring to nodes that do not exist: that is a forged
    /// vote breaking safety, which is not claimed, rather than input to refuse.)
    fn member_set(&mut self) -> MemberSet {
        let mut set = self.sets[self.rng.below(self.sets.len() as u64) as usize].clone();
        match self.rng.below(6) {
            0 => set.nodes.clear(),
            1 => set.nodes.push(set.nodes[0].clone()),
            2 => set.nodes[0].id = MemberId::EMPTY,
            3 => {
                let node = set.nodes[0].clone();
                set.nodes = (0..300).map(|i| Node { id: MemberId::new(&format!("x{i}")).expect("an id"), ..node.clone() }).collect();
            }
            _ => {}
        }
        set
    }
}
