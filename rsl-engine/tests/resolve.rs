//! `ResolveNode` (docs/spec/behavior.md §2.2): a member whose process moves to another port is found
//! again through the service's resolver, and the ring replicates to it there.

mod inproc;

use bytes::Bytes;
use inproc::{free_pairs, three, wait, Three};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{MemberId, MemberSet, Node, Version};
use rsl_engine::runtime::{Admission, ReplicaHealth, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Counts what it executes.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl StateMachine for Counter {
    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        let mut buf = [0u8; 8];
        let n = reader.map_or(Ok(0), |r| r.get_data(&mut buf)).unwrap_or(0);
        self.0.store(if n == 8 { u64::from_le_bytes(buf) } else { 0 }, Relaxed);
        true
    }
    fn execute_replicated_request(&mut self, _request: &[u8], _cookie: Option<u64>, _save: &mut bool) {
        self.0.fetch_add(1, Relaxed);
    }
    fn execute_fast_read_request(&self, _request: &[u8], _cookie: u64) {}
    fn abort_request(&mut self, _status: ResponseCode, _cookie: u64) {}
    fn save_state(&self, writer: &mut CheckpointWriter) {
        writer.write(&self.0.load(Relaxed).to_le_bytes()).unwrap();
    }
    fn notify_status(&mut self, _is_primary: bool) {}
    fn notify_configuration_changed(&mut self, _cookie: Option<u64>) {}
    fn abort_change_configuration(&mut self, _status: ResponseCode, _cookie: u64) {}
    fn shut_down(&mut self, _status: ResponseCode) {}
}

/// Where each member is now, as the service's name service knows it (`None`: not known now).
type Directory = Arc<Mutex<HashMap<MemberId, Option<Node>>>>;

/// One replica's resolver: answers from the directory and records whom it was asked about.
struct Resolving {
    directory: Directory,
    asked: Mutex<Vec<MemberId>>,
}

impl Admission for Resolving {
    fn resolves_nodes(&self) -> bool {
        true
    }
    fn resolve_node(&self, node: &Node) -> Option<Node> {
        self.asked.lock().unwrap().push(node.id);
        self.directory.lock().unwrap().get(&node.id).cloned().flatten()
    }
}

impl Resolving {
    fn times_asked(&self, id: &MemberId) -> usize {
        self.asked.lock().unwrap().iter().filter(|a| *a == id).count()
    }
}

struct Ring {
    _dir: tempfile::TempDir,
    cfg: RslConfig,
    members: MemberSet,
    directory: Directory,
    machines: Vec<Counter>,
    resolvers: Vec<Arc<Resolving>>,
    replicas: Vec<Option<RslReplica>>,
}

impl Ring {
    fn new() -> Ring {
        let dir = tempfile::tempdir().unwrap();
        let Three { nodes, members, cfg } = three(dir.path());
        let directory: Directory = Arc::new(Mutex::new(nodes.iter().map(|n| (n.id, Some(n.clone()))).collect()));
        let mut ring = Ring {
            _dir: dir,
            cfg,
            members,
            directory,
            machines: (0..3).map(|_| Counter::default()).collect(),
            resolvers: Vec::new(),
            replicas: vec![None, None, None],
        };
        for (i, node) in nodes.into_iter().enumerate() {
            ring.resolvers.push(Arc::new(Resolving { directory: ring.directory.clone(), asked: Mutex::default() }));
            ring.start(i, node);
        }
        ring
    }

    fn id(&self, i: usize) -> MemberId {
        self.members.nodes[i].id
    }

    /// Starts member `i` listening at `node` (its configured place, or where it moved).
    fn start(&mut self, i: usize, node: Node) {
        let admission = self.resolvers[i].clone();
        let r = RslReplica::initialize(
            self.cfg.clone(),
            node,
            Version::V6,
            Box::new(self.machines[i].clone()),
            admission,
            Some(self.members.clone()),
        );
        self.replicas[i] = Some(r.unwrap());
    }

    fn stop(&mut self, i: usize) {
        let r = self.replicas[i].take().expect("running");
        r.unload();
        wait(LONG, || r.is_stopped().then_some(()));
    }

    fn r(&self, i: usize) -> &RslReplica {
        self.replicas[i].as_ref().expect("running")
    }

    fn primary(&self) -> usize {
        wait(LONG, || (0..3).find(|&i| self.replicas[i].as_ref().is_some_and(|r| r.is_primary())))
    }

    /// Replicates `n` requests through the primary and waits until it executed them.
    fn replicate(&self, p: usize, n: u64) {
        let before = self.machines[p].0.load(Relaxed);
        for i in 0..n {
            wait(LONG, || (self.r(p).replicate_request(Bytes::from(format!("r{i}")), i) == ResponseCode::Success).then_some(()));
        }
        wait(LONG, || (self.machines[p].0.load(Relaxed) >= before + n).then_some(()));
    }

    fn health(&self, p: usize, of: usize) -> Option<ReplicaHealth> {
        self.r(p).replicas_information().into_iter().find(|h| h.member_id == self.id(of))
    }
}

/// Every replica resolves its (persisted) peers when it starts. A secondary's process moves to
/// another port: while the name service does not know it yet, the primary reports it
/// `needs_resolve`; once it does, the failed connections make the primary ask again, the ring
/// follows the member to its new port, and writes replicate to it there.
#[test]
fn a_member_that_moves_to_another_port_is_followed_by_the_ring() {
    let mut ring = Ring::new();
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            wait(LONG, || (ring.resolvers[i].times_asked(&ring.id(j)) > 0).then_some(()));
        }
    }
    let p = ring.primary();
    let m = (p + 1) % 3;
    ring.replicate(p, 5);
    wait(LONG, || (ring.machines[m].0.load(Relaxed) >= 5).then_some(()));
    wait(LONG, || ring.health(p, m).filter(|h| h.connected && !h.needs_resolve && h.consecutive_failures == 0));

    // The member goes down and the name service forgets it: the primary's connection attempts
    // fail and each asks again, in vain.
    ring.directory.lock().unwrap().insert(ring.id(m), None);
    ring.stop(m);
    let asked = ring.resolvers[p].times_asked(&ring.id(m));
    let h = wait(LONG, || ring.health(p, m).filter(|h| h.needs_resolve && !h.connected));
    wait(LONG, || (ring.resolvers[p].times_asked(&ring.id(m)) > asked).then_some(()));
    assert!(h.consecutive_failures > 0, "{h:?}");
    ring.replicate(p, 5);

    // It comes back on another port, and the name service knows.
    let port = free_pairs(1)[0];
    let mut moved = ring.members.nodes[m].clone();
    (moved.rsl_port, moved.learn_port) = (port, port + 1);
    ring.directory.lock().unwrap().insert(ring.id(m), Some(moved.clone()));
    ring.start(m, moved);
    // (An election the member started while nobody could reach it may move the primary.)
    ring.replicate(ring.primary(), 5);
    // Each request executes once everywhere: 15 in all, on the member that moved too.
    wait(LONG, || ring.machines.iter().all(|c| c.0.load(Relaxed) == 15).then_some(()));
    let p = ring.primary();
    if p != m {
        let h = wait(LONG, || ring.health(p, m).filter(|h| h.connected && !h.needs_resolve));
        assert!(!h.is_primary && h.consecutive_failures == 0, "{h:?}");
    }
    for i in 0..3 {
        ring.stop(i);
    }
}
