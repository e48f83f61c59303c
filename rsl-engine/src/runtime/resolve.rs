//! The resolver thread (`ResolveNode`, docs/spec/behavior.md §2.2): keeps each peer's address current
//! by asking the service's [`Admission::resolve_node`], as the original's `IPLookup` thread
//! does. A round runs every [`RESOLVE_INTERVAL`] and at once when the peers change or an
//! outbound connection to one fails; it asks about every peer whose address is 0.0.0.0 or
//! that needs resolving, with no lock held. A peer found elsewhere goes to the protocol
//! thread as [`Event::Relocated`], which moves the transport and the driver's source-address
//! check together. Runs only for a service that resolves ([`Admission::resolves_nodes`]).

use super::api::Admission;
use super::event::Event;
use super::queue::Queue;
use crate::format::{MemberId, Node};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the peers that need it are resolved again (the original's 30 s).
pub(crate) const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// What the other threads tell the resolver; bounded: the latest peer set, the set of peers
/// whose connection failed, and whether to stop.
#[derive(Default)]
struct Pending {
    peers: Option<Vec<Node>>,
    failed: BTreeSet<MemberId>,
    stop: bool,
    /// A `resolve_node` call is running (see [`Notes::quiesce`]).
    busy: bool,
}

/// The resolver's mailbox, and what it publishes for `ReplicaHealth`.
#[derive(Default)]
pub(crate) struct Notes {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The peers that need resolving (`m_needsResolve`), as of the last round.
    unresolved: Mutex<BTreeSet<MemberId>>,
}

impl Notes {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut self.pending());
        self.wake.notify_one();
    }

    /// The protocol thread's peers changed (a configuration, a relocation, joiners).
    pub fn peers(&self, peers: Vec<Node>) {
        self.note(|p| p.peers = Some(peers));
    }

    /// An outbound connection to `id` failed or broke (`ProcessConnect`).
    pub fn connect_failed(&self, id: MemberId) {
        self.note(|p| {
            p.failed.insert(id);
        });
    }

    pub fn stop(&self) {
        self.note(|p| p.stop = true);
    }

    /// Stops the resolver and waits, up to `limit`, until no `resolve_node` call is running:
    /// the replica's `shut_down` comes after this, and no callback may follow it. Bounded,
    /// because a service's resolver could block on the replica it is resolving for.
    pub fn quiesce(&self, limit: Duration) {
        let mut pending = self.pending();
        pending.stop = true;
        self.wake.notify_all();
        let (pending, waited) = self.wake.wait_timeout_while(pending, limit, |p| p.busy).unwrap_or_else(|e| e.into_inner());
        if waited.timed_out() && pending.busy {
            tracing::warn!(?limit, "resolve_node still running at shutdown: shutting down anyway");
        }
    }

    /// Marks a call as running, unless the resolver is stopped (then false: no call).
    fn begin_call(&self) -> bool {
        let mut pending = self.pending();
        pending.busy = !pending.stop;
        pending.busy
    }

    fn end_call(&self) {
        self.pending().busy = false;
        self.wake.notify_all();
    }

    /// Whether `id` needs resolving (`ReplicaHealth::needs_resolve`).
    pub fn needs_resolve(&self, id: &MemberId) -> bool {
        self.unresolved.lock().unwrap_or_else(|e| e.into_inner()).contains(id)
    }

    /// What was noted since the last call, waiting for something until `deadline`.
    fn wait(&self, deadline: Instant) -> Pending {
        let mut pending = self.pending();
        while !pending.stop && pending.peers.is_none() && pending.failed.is_empty() {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { break };
            pending = self.wake.wait_timeout(pending, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        Pending { peers: pending.peers.take(), failed: std::mem::take(&mut pending.failed), stop: pending.stop, busy: false }
    }
}

/// One peer as the resolver knows it.
struct Peer {
    node: Node,
    needs_resolve: bool,
}

/// The resolver thread's state; nothing in it is shared.
pub(crate) struct Resolver {
    admission: Arc<dyn Admission>,
    events: Queue<Event>,
    notes: Arc<Notes>,
    interval: Duration,
    peers: BTreeMap<MemberId, Peer>,
}

impl Resolver {
    pub fn new(admission: Arc<dyn Admission>, events: Queue<Event>, notes: Arc<Notes>, interval: Duration) -> Resolver {
        Resolver { admission, events, notes, interval, peers: BTreeMap::new() }
    }

    /// Runs until stopped: one round at a time, each after what was noted meanwhile.
    pub fn run(mut self) {
        let mut next = Instant::now() + self.interval;
        loop {
            let pending = self.notes.wait(next);
            if pending.stop {
                return;
            }
            let mut due = Instant::now() >= next;
            if let Some(peers) = pending.peers {
                due |= self.watch(peers);
            }
            for id in pending.failed {
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.needs_resolve = true;
                    due = true;
                }
            }
            if due {
                if !self.round() {
                    return;
                }
                next = Instant::now() + self.interval;
            }
        }
    }

    /// Takes the protocol thread's peer set. A peer new to the resolver, or at another address
    /// than it knows (a configuration's), is resolved in the next round, as the original
    /// resolves every member of a configuration it starts or restarts with. True if one is.
    fn watch(&mut self, nodes: Vec<Node>) -> bool {
        let mut due = false;
        let before = std::mem::take(&mut self.peers);
        for node in nodes {
            let known = before.get(&node.id).filter(|p| same_place(&p.node, &node));
            let needs_resolve = known.is_none_or(|p| p.needs_resolve);
            due |= known.is_none();
            self.peers.insert(node.id, Peer { node, needs_resolve });
        }
        self.publish();
        due
    }

    /// Asks the service about every peer at 0.0.0.0 or needing it; sends the protocol thread
    /// each one found elsewhere. No lock is held during the callback. False once the resolver
    /// is stopped or the protocol thread is gone: the thread ends.
    fn round(&mut self) -> bool {
        for peer in self.peers.values_mut().filter(|p| p.needs_resolve || p.node.ip.is_unspecified()) {
            peer.needs_resolve = true;
            if !self.notes.begin_call() {
                return false;
            }
            let found = self.admission.resolve_node(&peer.node);
            self.notes.end_call();
            let Some(found) = found else { continue };
            if found.id != peer.node.id || found.ip.is_unspecified() || found.rsl_port == 0 {
                tracing::warn!(member = %peer.node.id, ?found, "resolve_node answered another member or no address: ignored");
                continue;
            }
            peer.needs_resolve = false;
            if !same_place(&found, &peer.node) {
                tracing::info!(member = %found.id, from = %place(&peer.node), to = %place(&found), "a member moved");
                peer.node = found.clone();
                if self.events.send(Event::Relocated(found)).is_err() {
                    return false; // the protocol thread is gone
                }
            }
        }
        self.publish();
        true
    }

    fn publish(&self) {
        let unresolved = self.peers.values().filter(|p| p.needs_resolve || p.node.ip.is_unspecified()).map(|p| p.node.id).collect();
        *self.notes.unresolved.lock().unwrap_or_else(|e| e.into_inner()) = unresolved;
    }
}

/// The same address and ports: what the original compares before replacing a member.
fn same_place(a: &Node, b: &Node) -> bool {
    (a.ip, a.rsl_port, learn_port(a)) == (b.ip, b.rsl_port, learn_port(b))
}

/// A learn port of 0 is the Paxos port plus one.
fn learn_port(n: &Node) -> u16 {
    if n.learn_port == 0 {
        n.rsl_port.wrapping_add(1)
    } else {
        n.learn_port
    }
}

fn place(n: &Node) -> String {
    format!("{}:{}/{}", n.ip, n.rsl_port, learn_port(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::api::node;
    use crate::runtime::queue::bounded;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// Answers `to` for member "2" once `ready`, nothing before; counts the calls.
    struct Directory {
        to: Node,
        ready: std::sync::atomic::AtomicBool,
        asked: AtomicUsize,
    }

    impl Admission for Directory {
        fn resolves_nodes(&self) -> bool {
            true
        }
        fn resolve_node(&self, node: &Node) -> Option<Node> {
            self.asked.fetch_add(1, Relaxed);
            (node.id == self.to.id && self.ready.load(Relaxed)).then(|| self.to.clone())
        }
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < until, "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_failed_connection_resolves_at_once_and_a_move_reaches_the_protocol_thread() {
        let at = node("2", Ipv4Addr::LOCALHOST, 5000).unwrap();
        let to = node("2", Ipv4Addr::LOCALHOST, 6000).unwrap();
        let dir = Arc::new(Directory { to: to.clone(), ready: false.into(), asked: AtomicUsize::new(0) });
        let (events, inbox) = bounded(16);
        let notes = Arc::new(Notes::default());
        // Never periodic within the test: every round here is triggered.
        let resolver = Resolver::new(dir.clone(), events, notes.clone(), Duration::from_secs(3600));
        let thread = std::thread::spawn(move || resolver.run());

        notes.peers(vec![at.clone()]);
        wait_for("a new peer is resolved", || dir.asked.load(Relaxed) == 1);
        wait_for("an unanswered peer needs resolving", || notes.needs_resolve(&at.id));
        dir.ready.store(true, Relaxed);
        notes.connect_failed(at.id);
        let Ok(Event::Relocated(moved)) = inbox.recv() else { panic!("the move goes to the protocol thread") };
        assert_eq!(moved, to);
        wait_for("resolved", || !notes.needs_resolve(&at.id));
        // The protocol thread's peers now name the new place: nothing to resolve.
        let asked = dir.asked.load(Relaxed);
        notes.peers(vec![to.clone()]);
        // Taken by the resolver before it stops, and any round it started ends before the join.
        wait_for("the resolver takes the peers", || notes.pending().peers.is_none());
        notes.stop();
        thread.join().unwrap();
        assert_eq!(dir.asked.load(Relaxed), asked);
    }

    #[test]
    fn a_member_at_no_address_is_resolved_every_interval_until_found() {
        let mut unresolved = node("2", Ipv4Addr::UNSPECIFIED, 5000).unwrap();
        unresolved.host_name = "two".into();
        let dir = Arc::new(Directory { to: node("2", Ipv4Addr::LOCALHOST, 5000).unwrap(), ready: false.into(), asked: 0.into() });
        let (events, inbox) = bounded(16);
        let notes = Arc::new(Notes::default());
        let resolver = Resolver::new(dir.clone(), events, notes.clone(), Duration::from_millis(5));
        let thread = std::thread::spawn(move || resolver.run());
        notes.peers(vec![unresolved.clone()]);
        wait_for("asked again and again", || dir.asked.load(Relaxed) >= 3);
        assert!(notes.needs_resolve(&unresolved.id));
        dir.ready.store(true, Relaxed);
        let Ok(Event::Relocated(found)) = inbox.recv() else { panic!("found") };
        assert_eq!(found.ip, Ipv4Addr::LOCALHOST);
        wait_for("resolved", || !notes.needs_resolve(&found.id));
        let asked = dir.asked.load(Relaxed);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(dir.asked.load(Relaxed), asked, "a resolved member is not asked about again");
        notes.stop();
        thread.join().unwrap();
    }
}
