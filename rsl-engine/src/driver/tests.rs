use super::*;
use crate::format::message::JoinBody;
use crate::format::{Ballot, Version};
use crate::paxos::{AcceptAll, CoreConfig};
use std::net::Ipv6Addr;

const HOME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn id(s: &str) -> MemberId {
    MemberId::new(s).unwrap()
}

fn node(s: &str, ip: Ipv4Addr) -> Node {
    Node { id: id(s), ip, rsl_port: 20_000, learn_port: 20_001, app_port: 0, host_name: Bytes::new() }
}

/// Records what the driver asked of it.
#[derive(Default)]
struct Recorder {
    sent: Vec<(Vec<MemberId>, u64)>,
    persisted: Vec<u64>,
    roll_at: Option<u64>,
    fail_persist: bool,
    executed: usize,
    rejected: Vec<Rejection>,
    failed: Vec<String>,
    peers: Vec<MemberId>,
    /// Where the last `set_peers` put each peer.
    peer_ips: Vec<(MemberId, Ipv4Addr)>,
}

impl Host for Recorder {
    fn now(&self) -> Micros {
        0
    }
    fn send(&mut self, to: &[MemberId], msg: &Arc<Message>) {
        self.sent.push((to.to_vec(), msg.header.decree));
    }
    fn persist(&mut self, seq: u64, _: &Arc<Message>) -> Result<Option<u64>, String> {
        if self.fail_persist {
            return Err("disk full".into());
        }
        self.persisted.push(seq);
        Ok(self.roll_at.take())
    }
    fn execute(&mut self, _: Execution) {
        self.executed += 1;
    }
    /// Executes at once.
    fn executed(&self) -> (u64, bool) {
        (u64::MAX, false)
    }
    fn truncate_log(&mut self, decree: u64) -> u64 {
        decree + 1
    }
    fn roll_log(&mut self) {}
    fn load_checkpoint(&mut self, _: &Checkpoint) -> Result<(), String> {
        Ok(())
    }
    fn write_defunct(&mut self, _: u32) -> Result<(), String> {
        Ok(())
    }
    fn fetch_votes(&mut self, _: &Node, _: Message) {}
    fn fetch_checkpoint(&mut self, _: &Node, _: Message, _: u64, _: bool) {}
    fn rejected(&mut self, _: MemberId, _: MsgKind, reason: Rejection, _: Option<IpAddr>) {
        self.rejected.push(reason);
    }
    fn set_peers(&mut self, peers: &[&Node]) {
        self.peers = peers.iter().map(|n| n.id).collect();
        self.peer_ips = peers.iter().map(|n| (n.id, n.ip)).collect();
    }
    fn fail(&mut self, reason: String) {
        self.failed.push(reason);
    }
}

/// Replica "1" of the ring {1, 2, 3} on loopback, as the legacy member list starts it.
fn driver() -> Driver {
    let nodes = ["1", "2", "3"].map(|s| node(s, Ipv4Addr::LOCALHOST)).to_vec();
    let config = ConfigInfo { number: 1, initial_decree: 0, members: MemberSet { nodes, cookie: Bytes::new() } };
    let core = Replica::new(CoreConfig::default(), id("1"), config, 7);
    Driver::new(core, Box::new(AcceptAll), false)
}

fn msg(decree: u64) -> Arc<Message> {
    Arc::new(Message::new(Header::new(Version::V6, id("1"), decree, 1, Ballot::EMPTY), Body::FetchVotes))
}

#[test]
fn sends_wait_for_their_persist_and_go_out_in_order_to_the_other_members() {
    let (mut d, mut host) = (driver(), Recorder::default());
    d.start(&mut host);
    assert_eq!(host.peers, vec![id("2"), id("3")], "the peers are the other members");
    host.sent.clear();
    let mut out = vec![
        Action::Send { to: Dest::All, msg: msg(10), after: 5 },
        Action::Send { to: Dest::One(id("2")), msg: msg(11), after: 6 },
        Action::Send { to: Dest::One(id("3")), msg: msg(12), after: 0 },
    ];
    d.carry_out(&mut out, &mut host);
    assert_eq!(host.sent, vec![(vec![id("3")], 12)], "only the ungated send goes at once");
    d.durable = 5;
    d.release_held(&mut host);
    assert_eq!(host.sent[1..], [(vec![id("2"), id("3")], 10)], "Dest::All is the other members");
    assert_eq!(d.held.len(), 1, "the send gated on persist 6 still waits");
    d.durable = 6;
    d.release_held(&mut host);
    assert_eq!(host.sent[2..], [(vec![id("2")], 11)]);
    assert!(d.held.is_empty());
}

#[test]
fn follow_ups_run_in_the_order_the_actions_produced_them() {
    let (mut d, mut host) = (driver(), Recorder { roll_at: Some(40), ..Recorder::default() });
    let mut out = vec![
        Action::Persist { seq: 1, record: msg(40) },
        Action::FetchVotes { from: id("9"), decree: 3 },
        Action::FetchCheckpoint { from: id("2"), decree: 0, size: 0, load: true },
    ];
    d.carry_out(&mut out, &mut host);
    let kinds: Vec<String> = d.followups.iter().map(|i| format!("{i:?}").split([' ', '(']).next().unwrap().to_string()).collect();
    assert_eq!(kinds, ["LogRolled", "Learned", "CheckpointFetched"]);
    assert_eq!(host.persisted, vec![1]);
}

#[test]
fn a_failed_persist_stops_the_replica_once() {
    let (mut d, mut host) = (driver(), Recorder { fail_persist: true, ..Recorder::default() });
    let mut out = vec![Action::Persist { seq: 1, record: msg(1) }];
    d.carry_out(&mut out, &mut host);
    assert!(d.stopped());
    assert_eq!(host.failed.len(), 1);
    assert!(host.failed[0].contains("disk full"), "{:?}", host.failed);
}

#[test]
fn a_message_from_another_address_or_certificate_is_refused_before_the_core() {
    let (mut d, mut host) = (driver(), Recorder::default());
    d.start(&mut host);
    let from_2 = Arc::new(Message::new(Header::new(Version::V6, id("2"), 1, 1, Ballot::EMPTY), Body::StatusQuery));
    let remote = Inbound { ip: IpAddr::V4(HOME), certified: None };
    d.on_message(from_2.clone(), remote, &mut host);
    let names = ["3".to_string()];
    let uncertified = Inbound { ip: IpAddr::V4(Ipv4Addr::LOCALHOST), certified: Some(&names) };
    d.on_message(from_2, uncertified, &mut host);
    assert_eq!(host.rejected, vec![Rejection::WrongAddress, Rejection::NotCertified]);
}

#[test]
fn a_relocated_member_is_reached_and_heard_at_its_new_address_only() {
    let (mut d, mut host) = (driver(), Recorder::default());
    d.start(&mut host);
    d.relocate(node("2", HOME), &mut host);
    assert_eq!(host.peer_ips, vec![(id("2"), HOME), (id("3"), Ipv4Addr::LOCALHOST)]);
    let from_2 = Arc::new(Message::new(Header::new(Version::V6, id("2"), 1, 1, Ballot::EMPTY), Body::StatusQuery));
    d.on_message(from_2.clone(), Inbound { ip: IpAddr::V4(Ipv4Addr::LOCALHOST), certified: None }, &mut host);
    d.on_message(from_2, Inbound { ip: IpAddr::V4(HOME), certified: None }, &mut host);
    assert_eq!(host.rejected, vec![Rejection::WrongAddress], "the old address no longer speaks for it; the new one does");
    host.peer_ips.clear();
    d.relocate(node("9", HOME), &mut host);
    assert!(host.peer_ips.is_empty(), "a member the replica does not know is not added");
    // A Join from a stranger (anyone can send one without TLS) adds it, and moves no member back.
    let join = JoinBody { learn_port: 7001, min_decree_in_log: 0, checkpointed_decree: 0, checkpoint_size: 0 };
    let from_9 = Arc::new(Message::new(Header::new(Version::V6, id("9"), 0, 5, Ballot::EMPTY), Body::Join(join)));
    d.on_message(from_9, Inbound { ip: IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)), certified: None }, &mut host);
    assert!(host.peer_ips.contains(&(id("2"), HOME)), "member 2 stays where it moved: {:?}", host.peer_ips);
    assert!(host.peer_ips.contains(&(id("9"), Ipv4Addr::new(10, 9, 9, 9))), "the joiner is a peer: {:?}", host.peer_ips);
}

#[test]
fn a_certificate_naming_a_member_speaks_for_it_only() {
    let ring: BTreeMap<MemberId, Node> = ["1", "2", "3"].iter().map(|s| (id(s), node(s, Ipv4Addr::LOCALHOST))).collect();
    let cert = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(certified_other(|id| ring.contains_key(id), &id("2"), Some(&cert(&["2"]))), None);
    assert_eq!(certified_other(|id| ring.contains_key(id), &id("3"), Some(&cert(&["2"]))), Some(id("2")));
    // Any member id it names will do; names that are no member's bind nothing.
    assert_eq!(certified_other(|id| ring.contains_key(id), &id("3"), Some(&cert(&["host.example", "2", "3"]))), None);
    assert_eq!(certified_other(|id| ring.contains_key(id), &id("4"), Some(&cert(&["host.example", "2"]))), Some(id("2")));
    // A shared service certificate, and no TLS at all: no binding.
    assert_eq!(certified_other(|id| ring.contains_key(id), &id("3"), Some(&cert(&["rsl-service", "9"]))), None);
    assert_eq!(certified_other(|id| ring.contains_key(id), &id("3"), None), None);
}

#[test]
fn a_member_is_heard_only_from_its_own_address() {
    assert!(from_its_address(HOME, IpAddr::V4(HOME), false));
    assert!(!from_its_address(HOME, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), false), "another host claiming the member");
    assert!(!from_its_address(HOME, IpAddr::V4(Ipv4Addr::LOCALHOST), false), "this host claiming a remote member");
    // The same address seen through an IPv6 socket.
    assert!(from_its_address(HOME, IpAddr::V6(HOME.to_ipv6_mapped()), false));
    assert!(!from_its_address(HOME, IpAddr::V6(Ipv6Addr::LOCALHOST), false));
}

#[test]
fn any_loopback_address_stands_for_another() {
    let loopback = Ipv4Addr::new(127, 0, 0, 2);
    assert!(from_its_address(loopback, IpAddr::V4(Ipv4Addr::LOCALHOST), false));
    assert!(from_its_address(Ipv4Addr::LOCALHOST, IpAddr::V6(Ipv6Addr::LOCALHOST), false));
    assert!(from_its_address(Ipv4Addr::LOCALHOST, IpAddr::V6(loopback.to_ipv6_mapped()), false));
    assert!(!from_its_address(Ipv4Addr::LOCALHOST, IpAddr::V4(HOME), false), "a remote host claiming a local member");
}

#[test]
fn listening_on_all_addresses_skips_the_check() {
    assert!(from_its_address(HOME, IpAddr::V4(Ipv4Addr::new(192, 168, 1, 9)), true));
    assert!(from_its_address(HOME, IpAddr::V4(Ipv4Addr::LOCALHOST), true));
}

fn joiner(n: u32) -> Node {
    node(&format!("joiner{n}"), HOME)
}

#[test]
fn at_most_eight_joiners_are_remembered_the_oldest_forgotten_first() {
    let (mut joiners, mut nodes) = (VecDeque::new(), BTreeMap::new());
    for n in 1..=MAX_JOINERS as u32 {
        add_joiner(&mut joiners, &mut nodes, joiner(n), |_| false);
    }
    assert_eq!((joiners.len(), nodes.len()), (MAX_JOINERS, MAX_JOINERS));
    let ninth = joiner(MAX_JOINERS as u32 + 1);
    add_joiner(&mut joiners, &mut nodes, ninth.clone(), |_| false);
    assert_eq!((joiners.len(), nodes.len()), (MAX_JOINERS, MAX_JOINERS), "the ninth does not grow the set");
    assert!(!nodes.contains_key(&joiner(1).id), "the oldest joiner is forgotten");
    assert!(nodes.contains_key(&ninth.id) && joiners.back() == Some(&ninth.id));
    // A forgotten joiner that a configuration names since keeps its node.
    let second = joiner(2).id;
    add_joiner(&mut joiners, &mut nodes, joiner(100), |id| *id == second);
    assert!(nodes.contains_key(&second) && !joiners.contains(&second));
    assert_eq!(joiners.len(), MAX_JOINERS);
}
