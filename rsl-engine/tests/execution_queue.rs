//! The original's TestExecutionQueueOnDisk, in one process: a secondary whose state machine is
//! blocked keeps at most `in_memory_execution_queue_size_mb` of chosen decrees in memory (plus
//! the one that crosses it) while the ring goes on; the rest wait in its log. Unblocked, it
//! executes every decree once, in order, as the others did, and the checkpoint it took along
//! the way restores to the same state. Unloaded while still blocked, it executes every
//! decree before `shut_down`, as the original (whose queue has no bound) does. With the NVM
//! journal, a spilled decree is read back once its record is drained into the log file.

mod inproc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use inproc::{three, wait, Three};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::Version;
use rsl_engine::runtime::{AdmitAll, NvmJournal, Persistence, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const REQUESTS: u64 = 400;
const REQUEST_BYTES: usize = 8 << 10;

/// A state machine whose state is the requests it executed, and whose executions wait while
/// its gate is shut.
#[derive(Clone, Default)]
struct Blockable {
    state: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The decrees of the checkpoints it saved.
    saved: Arc<Mutex<Vec<u64>>>,
    /// Whether it started from a checkpoint.
    loaded: Arc<Mutex<bool>>,
    gate: Arc<(Mutex<bool>, Condvar)>,
    /// How many requests it had executed when `shut_down` came.
    shut_down_after: Arc<Mutex<Option<usize>>>,
}

impl Blockable {
    fn shut(&self, shut: bool) {
        *self.gate.0.lock().unwrap() = shut;
        self.gate.1.notify_all();
    }

    fn executed(&self) -> usize {
        self.state.lock().unwrap().len()
    }
}

impl StateMachine for Blockable {
    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        let mut state = self.state.lock().unwrap();
        state.clear();
        let Some(r) = reader else { return true };
        *self.loaded.lock().unwrap() = true;
        let mut data = vec![0; r.size() as usize];
        let mut at = 0;
        while at < data.len() {
            at += r.get_data(&mut data[at..]).unwrap();
        }
        let mut buf = Bytes::from(data);
        while buf.has_remaining() {
            let n = buf.get_u32_le() as usize;
            state.push(buf.split_to(n).to_vec());
        }
        true
    }
    fn execute_replicated_request(&mut self, request: &[u8], _cookie: Option<u64>, _save: &mut bool) {
        let (shut, opened) = &*self.gate;
        drop(opened.wait_while(shut.lock().unwrap(), |shut| *shut).unwrap());
        self.state.lock().unwrap().push(request.to_vec());
    }
    fn execute_fast_read_request(&self, _request: &[u8], _cookie: u64) {}
    fn abort_request(&mut self, _status: ResponseCode, _cookie: u64) {}
    fn save_state(&self, writer: &mut CheckpointWriter) {
        let mut buf = BytesMut::new();
        for r in self.state.lock().unwrap().iter() {
            buf.put_u32_le(r.len() as u32);
            buf.put_slice(r);
        }
        writer.write(&buf).unwrap();
    }
    fn notify_status(&mut self, _is_primary: bool) {}
    fn notify_configuration_changed(&mut self, _cookie: Option<u64>) {}
    fn abort_change_configuration(&mut self, _status: ResponseCode, _cookie: u64) {}
    fn shut_down(&mut self, _status: ResponseCode) {
        *self.shut_down_after.lock().unwrap() = Some(self.executed());
    }
    fn state_saved(&mut self, seq: u64, _file: &Path) {
        self.saved.lock().unwrap().push(seq);
    }
}

fn request(i: u64) -> Vec<u8> {
    let mut r = format!("request {i}:").into_bytes();
    r.resize(REQUEST_BYTES, b'.');
    r
}

/// `unload_blocked`: the blocked replica is unloaded before its gate opens. `nvm`: the replicas
/// journal on the NVM journal (a 1 MiB persistent log in each data directory).
fn a_blocked_replica_spills_chosen_decrees_to_its_log_and_executes_them_in_order(
    version: Version,
    window: u32,
    unload_blocked: bool,
    nvm: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let Three { nodes, members, cfg } = three(dir.path());
    let cfg = RslConfig {
        // The 3 MB of requests roll 1 MB logs: the blocked replica is asked for checkpoints.
        max_log_len_mb: 1,
        in_memory_execution_queue_size_mb: 1,
        pipeline_window: window,
        nvm_journal: nvm.then(|| NvmJournal { path: "journal.nvm".into(), size_mb: 1, persistence: Persistence::ProcessCrash }),
        ..cfg
    };
    let start = |i: usize, sm: &Blockable| {
        RslReplica::initialize(cfg.clone(), nodes[i].clone(), version, Box::new(sm.clone()), Arc::new(AdmitAll), Some(members.clone()))
            .unwrap()
    };
    let machines: Vec<Blockable> = (0..3).map(|_| Blockable::default()).collect();
    let mut replicas: Vec<RslReplica> = (0..3).map(|i| start(i, &machines[i])).collect();
    let p = wait(Duration::from_secs(30), || replicas.iter().position(|r| r.is_primary()));
    let blocked = (p + 1) % 3;
    machines[blocked].shut(true);

    // One request per decree (each waits for the primary to execute the one before), so that
    // "one decree" past the bound is one request.
    let decree_bytes = REQUEST_BYTES as u64 + 4 + 256;
    let (mut most_in_memory, mut most_spilled) = (0, 0);
    for i in 0..REQUESTS {
        while replicas[p].replicate_request(Bytes::from(request(i)), i) != ResponseCode::Success {
            std::thread::sleep(Duration::from_millis(5));
        }
        wait(Duration::from_secs(20), || (machines[p].executed() as u64 == i + 1).then_some(()));
        let stats = replicas[blocked].statistics_snapshot();
        most_in_memory = most_in_memory.max(stats.execution_queue_bytes);
        most_spilled = most_spilled.max(stats.execution_queue_spilled);
    }
    let expected: Vec<Vec<u8>> = (0..REQUESTS).map(request).collect();
    let others = (p + 2) % 3;
    wait(Duration::from_secs(30), || (machines[others].executed() as u64 == REQUESTS).then_some(()));
    assert_eq!(machines[blocked].executed(), 0, "the blocked replica executed nothing yet");
    let stats = replicas[blocked].statistics_snapshot();
    most_in_memory = most_in_memory.max(stats.execution_queue_bytes);
    assert!(most_spilled > 0 && stats.execution_queue_spilled > 0, "decrees waited in the log ({most_spilled})");
    assert!(most_in_memory <= (1 << 20) + decree_bytes, "{most_in_memory} bytes of decrees in memory: more than the bound + one");

    // Unblocked: every decree executes, once each, in order, as on the others.
    if unload_blocked {
        // It has heard that every decree is chosen (from version 7 the last one's watermark
        // comes with the primary's next vote or heartbeat, which may still be on its way).
        let chosen = replicas[others].view().current_sequence_number();
        wait(Duration::from_secs(20), || (replicas[blocked].view().highest_passed_sequence_number() >= chosen).then_some(()));
        // Its stop waits for the decrees in the log to execute, in bounded chunks.
        std::thread::scope(|scope| {
            let stopping = scope.spawn(|| replicas[blocked].unload());
            wait(Duration::from_secs(10), || {
                (replicas[blocked].replicate_request(Bytes::from_static(b"x"), 0) == ResponseCode::ShuttingDown).then_some(())
            });
            machines[blocked].shut(false);
            stopping.join().unwrap();
        });
        let after = *machines[blocked].shut_down_after.lock().unwrap();
        assert_eq!(after, Some(REQUESTS as usize), "every chosen decree executed before shut_down");
    } else {
        machines[blocked].shut(false);
    }
    wait(Duration::from_secs(60), || (machines[blocked].executed() as u64 == REQUESTS).then_some(()));
    for m in [p, others, blocked] {
        assert!(*machines[m].state.lock().unwrap() == expected, "replica {m}'s state");
    }
    wait(Duration::from_secs(10), || (replicas[blocked].statistics_snapshot().execution_queue_spilled == 0).then_some(()));
    let saved = machines[blocked].saved.lock().unwrap().clone();
    eprintln!("{version:?}: at most {most_in_memory} bytes in memory, {most_spilled} decrees spilled; checkpoints {saved:?}");
    assert!(!saved.is_empty(), "the blocked replica saved a checkpoint on the way");
    assert_eq!(replicas[blocked].failure(), None);

    // Its checkpoints hold the state of their decrees: restarted, it loads the newest and
    // replays its log after it to the same state.
    replicas.remove(blocked).unload();
    let restarted = Blockable::default();
    let again = start(blocked, &restarted);
    assert!(*restarted.loaded.lock().unwrap(), "restarted from a checkpoint");
    wait(Duration::from_secs(30), || (restarted.executed() as u64 == REQUESTS).then_some(()));
    assert!(*restarted.state.lock().unwrap() == expected, "the restarted replica's state");
    again.unload();
    for r in replicas {
        r.unload();
    }
}

#[test]
fn execution_queue_on_disk_v6() {
    a_blocked_replica_spills_chosen_decrees_to_its_log_and_executes_them_in_order(Version::V6, 1, false, false);
}

#[test]
fn execution_queue_on_disk_v7_window_16() {
    a_blocked_replica_spills_chosen_decrees_to_its_log_and_executes_them_in_order(Version::V7, 16, true, false);
}

#[test]
fn execution_queue_on_disk_with_the_nvm_journal() {
    a_blocked_replica_spills_chosen_decrees_to_its_log_and_executes_them_in_order(Version::V6, 1, false, true);
}
