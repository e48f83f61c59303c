//! Catch-up by checkpoint (docs/spec/behavior.md §2.11): a replica stopped while its ring writes past
//! every log it could learn from copies a peer's checkpoint, then either stops so that its
//! restart loads it (`CatchUp::Restart`, the original's) or loads it in place
//! (`CatchUp::LoadInPlace`). Either way it ends with every request, in order.

mod inproc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use inproc::{three, wait, Three};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{MemberSet, Node, Version};
use rsl_engine::runtime::{AdmitAll, CatchUp, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Load(bool),
    Saved,
    Copied(u64, bool, Option<u64>),
    ShutDown(ResponseCode),
}

/// The state is every request executed, in order; the callbacks that matter here are recorded.
#[derive(Clone, Default)]
struct Service {
    state: Arc<Mutex<Vec<Bytes>>>,
    events: Arc<Mutex<Vec<Ev>>>,
}

impl Service {
    fn push(&self, ev: Ev) {
        self.events.lock().unwrap().push(ev);
    }
    fn events(&self) -> Vec<Ev> {
        self.events.lock().unwrap().clone()
    }
    fn len(&self) -> usize {
        self.state.lock().unwrap().len()
    }
}

impl StateMachine for Service {
    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        self.push(Ev::Load(reader.is_some()));
        let mut state = self.state.lock().unwrap();
        state.clear();
        let Some(r) = reader else { return true };
        let mut data = vec![0; r.size() as usize];
        let mut at = 0;
        while at < data.len() {
            at += r.get_data(&mut data[at..]).unwrap();
        }
        let mut buf = Bytes::from(data);
        while buf.has_remaining() {
            let n = buf.get_u32_le() as usize;
            state.push(buf.split_to(n));
        }
        true
    }
    fn execute_replicated_request(&mut self, request: &[u8], _: Option<u64>, _: &mut bool) {
        self.state.lock().unwrap().push(Bytes::copy_from_slice(request));
    }
    fn execute_fast_read_request(&self, _: &[u8], _: u64) {}
    fn abort_request(&mut self, _: ResponseCode, _: u64) {}
    fn save_state(&self, writer: &mut CheckpointWriter) {
        let mut buf = BytesMut::new();
        for r in self.state.lock().unwrap().iter() {
            buf.put_u32_le(r.len() as u32);
            buf.put_slice(r);
        }
        writer.write(&buf).unwrap();
    }
    fn notify_status(&mut self, _: bool) {}
    fn notify_configuration_changed(&mut self, _: Option<u64>) {}
    fn abort_change_configuration(&mut self, _: ResponseCode, _: u64) {}
    fn shut_down(&mut self, status: ResponseCode) {
        self.push(Ev::ShutDown(status));
    }
    fn state_saved(&mut self, _: u64, _: &Path) {
        self.push(Ev::Saved);
    }
    fn state_copied(&mut self, seq: u64, file: Option<&Path>, cookie: Option<u64>) {
        self.push(Ev::Copied(seq, file.is_some_and(Path::exists), cookie));
    }
}

struct Ring {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    members: MemberSet,
    cfg: RslConfig,
    replicas: Vec<RslReplica>,
    services: Vec<Service>,
}

impl Ring {
    /// Logs of 1 MB: a few MB of requests roll them, and the checkpoints the members take
    /// drop the old ones from what learners may fetch.
    fn start() -> Ring {
        let dir = tempfile::tempdir().unwrap();
        let Three { nodes, members, cfg } = three(dir.path());
        let cfg = RslConfig { max_log_len_mb: 1, c_p_query_retry_interval_sec: 1, ..cfg };
        let mut ring = Ring { _dir: dir, nodes, members, cfg, replicas: Vec::new(), services: Vec::new() };
        for i in 0..3 {
            let (replica, service) = ring.replica(i, ring.cfg.clone());
            ring.replicas.push(replica);
            ring.services.push(service);
        }
        ring
    }

    fn replica(&self, i: usize, cfg: RslConfig) -> (RslReplica, Service) {
        let service = Service::default();
        let sm = Box::new(service.clone());
        let replica =
            RslReplica::initialize(cfg, self.nodes[i].clone(), Version::V6, sm, Arc::new(AdmitAll), Some(self.members.clone())).unwrap();
        (replica, service)
    }

    fn primary(&self) -> usize {
        wait(WAIT, || self.replicas.iter().position(|r| r.is_primary()))
    }

    /// Replicates `requests` through the primary, retrying while it is busy, and waits until
    /// it has executed them.
    fn write(&self, requests: impl Iterator<Item = Bytes>) {
        let p = self.primary();
        let mut n = self.services[p].len();
        for (cookie, request) in requests.enumerate() {
            wait(WAIT, || (self.replicas[p].replicate_request(request.clone(), cookie as u64) == ResponseCode::Success).then_some(()));
            n += 1;
        }
        wait(WAIT, || (self.services[p].len() == n).then_some(()));
    }

    /// Waits until replica `i` holds what the primary holds.
    fn converged(&self, i: usize) -> Vec<Bytes> {
        let p = self.primary();
        wait(WAIT, || {
            let (mine, theirs) = (self.services[i].state.lock().unwrap().clone(), self.services[p].state.lock().unwrap().clone());
            (mine == theirs).then_some(mine)
        })
    }
}

fn request(tag: &str, i: usize) -> Bytes {
    Bytes::from(format!("{tag}{i:08}").repeat(400))
}

/// Stops a secondary, writes 4 MB and more (well past its logs) until the other secondary has
/// saved a checkpoint and the primary copied one, so that neither still serves the votes it
/// lacks, and restarts it with `catch_up`: it must copy a checkpoint. Returns it and the number
/// of requests written.
fn fall_behind_and_restart(ring: &mut Ring, catch_up: CatchUp) -> (usize, usize) {
    let p = ring.primary();
    ring.write((0..10).map(|i| request("early", i)));
    let lag = (p + 1) % 3;
    ring.converged(lag);
    ring.replicas[lag].unload();
    let other = 3 - p - lag;
    let checkpointed = |ring: &Ring| {
        ring.services[other].events().contains(&Ev::Saved)
            && ring.services[p].events().iter().any(|e| matches!(e, Ev::Copied(_, true, None)))
    };
    let mut written = 10;
    // The logs roll at randomized lengths: the primary copies once a secondary's checkpoint
    // reaches its own first roll, which may take another roll of the secondary's. On a loaded
    // machine the checkpoints lag the writes, so this goes on until a generous deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while std::time::Instant::now() < deadline {
        let n = if written == 10 { 800 } else { 200 };
        ring.write((written..written + n).map(|i| request("behind", i)));
        written += n;
        if wait_a_little(|| checkpointed(ring)) {
            break;
        }
    }
    assert!(checkpointed(ring), "no checkpoints after {written} requests");
    let (replica, service) = ring.replica(lag, RslConfig { catch_up, ..ring.cfg.clone() });
    (ring.replicas[lag], ring.services[lag]) = (replica, service);
    (lag, written)
}

/// Whether `f` holds within a few seconds (the primary's checkpoint query runs every second).
fn wait_a_little(f: impl Fn() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn restart_stops_the_replica_after_the_copy_and_its_restart_loads_it() {
    let mut ring = Ring::start();
    let (lag, written) = fall_behind_and_restart(&mut ring, CatchUp::Restart);
    let decree = wait(WAIT, || ring.replicas[lag].restart_to_catch_up());
    wait(WAIT, || ring.replicas[lag].is_stopped().then_some(()));
    assert_eq!(ring.replicas[lag].failure(), None, "a stop to catch up is no failure");
    // Its own state loaded at the start (no checkpoint of its own), then the copy, then the stop:
    // the running state machine never loads the copied checkpoint.
    let events = ring.services[lag].events();
    assert_eq!(events, [Ev::Load(false), Ev::Copied(decree, true, None), Ev::ShutDown(ResponseCode::ShuttingDown)]);
    assert_eq!(ring.services[lag].len(), 10, "the stopped replica's state is what it had");
    ring.replicas[lag].unload();

    // The restart on the same directory loads the copied checkpoint, and goes on from there.
    let (replica, service) = ring.replica(lag, RslConfig { catch_up: CatchUp::Restart, ..ring.cfg.clone() });
    (ring.replicas[lag], ring.services[lag]) = (replica, service);
    assert_eq!(ring.services[lag].events().first(), Some(&Ev::Load(true)), "the restart loads the checkpoint");
    assert!(ring.replicas[lag].current_sequence_number() >= decree);
    ring.write((0..10).map(|i| request("after", i)));
    let state = ring.converged(lag);
    assert_eq!(state.len(), written + 10, "nothing lost");
    assert_eq!(ring.replicas[lag].restart_to_catch_up(), None);
    assert!(!ring.replicas[lag].is_stopped());
}

#[test]
fn load_in_place_loads_the_copy_into_the_running_state_machine() {
    let mut ring = Ring::start();
    let (lag, written) = fall_behind_and_restart(&mut ring, CatchUp::LoadInPlace);
    let copied =
        wait(WAIT, || ring.services[lag].events().iter().find_map(|e| if let Ev::Copied(seq, true, None) = e { Some(*seq) } else { None }));
    assert_eq!(ring.services[lag].events()[..3], [Ev::Load(false), Ev::Load(true), Ev::Copied(copied, true, None)]);
    ring.write((0..10).map(|i| request("after", i)));
    let state = ring.converged(lag);
    assert_eq!(state.len(), written + 10, "nothing lost");
    assert_eq!(ring.replicas[lag].restart_to_catch_up(), None);
    assert!(!ring.replicas[lag].is_stopped() && !ring.services[lag].events().iter().any(|e| matches!(e, Ev::ShutDown(_))));
}
