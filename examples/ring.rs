//! A minimal replicated service on `RslReplica` and `StateMachine`: three replicas in this
//! process form a ring on 127.0.0.1 (every port from the OS), the primary replicates three
//! requests, and each replica prints the state it reached. Its files go to a temporary
//! directory, removed at the end.
//!
//! `cargo run --example ring`

use bytes::Bytes;
use rsl::engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl::engine::format::{MemberSet, Node, Version};
use rsl::engine::runtime::api::node;
use rsl::engine::runtime::{AdmitAll, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REQUESTS: [&str; 3] = ["hello", "replicated", "world"];
/// The example gives up (and fails) if the ring has not done its work by then.
const DEADLINE: Duration = Duration::from_secs(60);

/// What a replica tells `main`: its index, and that it became primary or executed a request.
enum Event {
    Primary(usize),
    Executed(usize),
}

/// The replicated state: the requests executed, in order. `main` reads it through `words`.
struct Words {
    me: usize,
    words: Arc<Mutex<Vec<String>>>,
    events: Sender<Event>,
}

impl Words {
    fn tell(&self, event: Event) {
        // `main` may have stopped listening (it failed); the replica goes on regardless.
        let _ = self.events.send(event);
    }
}

impl StateMachine for Words {
    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        let mut words = self.words.lock().expect("not poisoned");
        words.clear();
        let Some(reader) = reader else { return true };
        let mut data = vec![0; reader.size() as usize];
        match reader.get_data(&mut data) {
            Ok(n) if n == data.len() => {}
            _ => return false,
        }
        let Ok(text) = String::from_utf8(data) else { return false };
        words.extend(text.lines().map(str::to_owned));
        true
    }

    fn execute_replicated_request(&mut self, request: &[u8], _cookie: Option<u64>, _save_state: &mut bool) {
        self.words.lock().expect("not poisoned").push(String::from_utf8_lossy(request).into_owned());
        self.tell(Event::Executed(self.me));
    }

    fn execute_fast_read_request(&self, _request: &[u8], _cookie: u64) {}

    fn abort_request(&mut self, status: ResponseCode, cookie: u64) {
        eprintln!("replica {}: request {cookie} aborted: {status:?}", self.me + 1);
    }

    fn save_state(&self, writer: &mut CheckpointWriter) {
        let text: String = self.words.lock().expect("not poisoned").iter().map(|w| format!("{w}\n")).collect();
        // A failed write fails the checkpoint; the replica reports it.
        let _ = writer.write(text.as_bytes());
    }

    fn notify_status(&mut self, is_primary: bool) {
        if is_primary {
            self.tell(Event::Primary(self.me));
        }
    }

    fn notify_configuration_changed(&mut self, _cookie: Option<u64>) {}
    fn abort_change_configuration(&mut self, _status: ResponseCode, _cookie: u64) {}
    fn shut_down(&mut self, _status: ResponseCode) {}
}

/// Three nodes on 127.0.0.1, each Paxos and learn port picked by the OS. All six are held
/// until all are picked, so they differ; the replicas bind them right after.
fn ring_nodes() -> std::io::Result<Vec<Node>> {
    let held: Vec<TcpListener> = (0..6).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).collect::<Result<_, _>>()?;
    let ports: Vec<u16> = held.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?;
    let nodes = (0..3).map(|i| {
        let mut n = node(&(i + 1).to_string(), Ipv4Addr::LOCALHOST, ports[2 * i]).expect("a valid member id");
        n.learn_port = ports[2 * i + 1];
        n
    });
    Ok(nodes.collect())
}

/// The next event, or an error once the deadline has passed.
fn next(events: &Receiver<Event>, until: Instant) -> Result<Event, String> {
    events.recv_timeout(until.saturating_duration_since(Instant::now())).map_err(|_| format!("the ring did not finish within {DEADLINE:?}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let nodes = ring_nodes()?;
    let members = MemberSet { nodes: nodes.clone(), cookie: Bytes::new() };
    // Short timers: a local ring elects its primary in a few seconds.
    let cfg = RslConfig {
        working_dir: dir.path().into(),
        heart_beat_interval_sec: 1,
        election_delay_sec: 3,
        new_leader_grace_period_sec: 1,
        ..RslConfig::default()
    };
    let (tx, events) = channel();
    let mut replicas = Vec::new();
    let mut states = Vec::new();
    for (i, me) in nodes.into_iter().enumerate() {
        let words = Arc::new(Mutex::new(Vec::new()));
        states.push(words.clone());
        let sm = Box::new(Words { me: i, words, events: tx.clone() });
        replicas.push(RslReplica::initialize(cfg.clone(), me, Version::V6, sm, Arc::new(AdmitAll), Some(members.clone()))?);
    }

    let until = Instant::now() + DEADLINE;
    let primary = loop {
        if let Event::Primary(i) = next(&events, until)? {
            break i;
        }
    };
    println!("replica {} is primary", primary + 1);
    for (cookie, request) in REQUESTS.iter().enumerate() {
        let code = replicas[primary].replicate_request(Bytes::from_static(request.as_bytes()), cookie as u64);
        if code != ResponseCode::Success {
            return Err(format!("replicate_request({request}): {code:?}").into());
        }
    }
    let mut executed = [0; 3];
    while executed.iter().any(|&n| n < REQUESTS.len()) {
        if let Event::Executed(i) = next(&events, until)? {
            executed[i] += 1;
        }
    }

    for (i, (replica, words)) in replicas.iter().zip(&states).enumerate() {
        let role = if replica.is_primary() { "primary" } else { "secondary" };
        let words = words.lock().expect("not poisoned");
        println!("replica {} ({role}): state [{}]", i + 1, words.join(", "));
    }
    replicas.iter().for_each(RslReplica::unload);
    Ok(())
}
