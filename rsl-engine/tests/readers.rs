//! Fast reads on `num_reader_threads` reader threads under RSL's callback lock (issue 12 item
//! 5): reads run concurrently with each other and with `SaveState`, never with an executing
//! decree, and a read that needs decree N runs once N has executed.

mod inproc;

use bytes::Bytes;
use inproc::{free_pairs, wait};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{MemberSet, Version};
use rsl_engine::runtime::api::node;
use rsl_engine::runtime::{AdmitAll, ReplicaView, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// How long a callback waits for something that may legitimately never happen; it then gives
/// up and records so (an outcome, not a timing assertion).
const GIVE_UP: Duration = Duration::from_secs(5);

/// What one read saw.
#[derive(Clone, Copy, Debug)]
struct Seen {
    cookie: u64,
    /// A `pair` read saw its partner start.
    partner: bool,
    executing: bool,
    saving: bool,
    /// The sequence number then.
    seq: u64,
    /// The `slow` request's effect was in the state.
    slow_applied: bool,
}

/// What the callbacks saw, for the test to assert on.
#[derive(Default)]
struct Probe {
    executing: AtomicBool,
    saving: AtomicBool,
    /// Reads that started; `pair` reads wait for each other through it.
    started: Mutex<u64>,
    turn: Condvar,
    reads: Mutex<Vec<Seen>>,
    /// A read ran while `save_state` was running (it waits for one).
    read_during_save: AtomicBool,
    /// `slow` decrees wait until this is set.
    release: AtomicBool,
    /// A `slow` request has been applied: its effect on the state.
    slow_applied: AtomicBool,
    aborted: Mutex<Vec<(u64, ResponseCode)>>,
    shut_down: AtomicBool,
    /// A callback ran after `shut_down`.
    late: AtomicBool,
    view: OnceLock<ReplicaView>,
}

impl Probe {
    /// Waits up to [`GIVE_UP`] for `done`; false if it never held.
    fn wait_for(&self, mut done: impl FnMut(&Probe, u64) -> bool) -> bool {
        let started = self.started.lock().unwrap();
        let (_started, timeout) = self.turn.wait_timeout_while(started, GIVE_UP, |n| !done(self, *n)).unwrap();
        !timeout.timed_out()
    }

    fn notify(&self) {
        let _guard = self.started.lock().unwrap();
        self.turn.notify_all();
    }
}

/// Requests: `slow` executes until released; `save` asks for a checkpoint. Reads: `pair`
/// waits for a second read to start; anything else just records what it saw.
struct Gate(Arc<Probe>);

impl StateMachine for Gate {
    fn attach(&mut self, view: ReplicaView) {
        let _ = self.0.view.set(view);
    }
    fn load_state(&mut self, _: Option<&mut CheckpointReader>) -> bool {
        true
    }
    fn execute_replicated_request(&mut self, request: &[u8], _: Option<u64>, save: &mut bool) {
        let p = &self.0;
        p.executing.store(true, SeqCst);
        p.notify();
        if request == b"slow" {
            p.wait_for(|p, _| p.release.load(SeqCst));
            p.slow_applied.store(true, SeqCst);
        }
        *save |= request == b"save";
        p.executing.store(false, SeqCst);
    }
    fn execute_fast_read_request(&self, request: &[u8], cookie: u64) {
        let p = &self.0;
        p.late.fetch_or(p.shut_down.load(SeqCst), SeqCst);
        let (executing, saving) = (p.executing.load(SeqCst), p.saving.load(SeqCst));
        if saving {
            p.read_during_save.store(true, SeqCst);
        }
        *p.started.lock().unwrap() += 1;
        p.notify();
        let partner = request == b"pair" && p.wait_for(|_, started| started >= 2);
        let seq = p.view.get().expect("attached").current_sequence_number();
        let slow_applied = p.slow_applied.load(SeqCst);
        p.reads.lock().unwrap().push(Seen { cookie, partner, executing, saving, seq, slow_applied });
        p.notify();
    }
    fn abort_request(&mut self, code: ResponseCode, cookie: u64) {
        let p = &self.0;
        p.late.fetch_or(p.shut_down.load(SeqCst), SeqCst);
        p.aborted.lock().unwrap().push((cookie, code));
    }
    fn save_state(&self, writer: &mut CheckpointWriter) {
        let p = &self.0;
        p.saving.store(true, SeqCst);
        p.notify();
        p.wait_for(|p, _| p.read_during_save.load(SeqCst));
        p.saving.store(false, SeqCst);
        writer.write(b"state").unwrap();
    }
    fn notify_status(&mut self, _: bool) {}
    fn notify_configuration_changed(&mut self, _: Option<u64>) {}
    fn abort_change_configuration(&mut self, _: ResponseCode, _: u64) {}
    fn shut_down(&mut self, _: ResponseCode) {
        self.0.shut_down.store(true, SeqCst);
    }
}

struct Lone {
    replica: RslReplica,
    probe: Arc<Probe>,
    _dir: tempfile::TempDir,
}

impl Lone {
    fn start(readers: u32) -> Lone {
        Lone::start_with(readers, 10)
    }

    fn start_with(readers: u32, fast_read_seq_threshold: u32) -> Lone {
        let dir = tempfile::tempdir().unwrap();
        let me = node("1", Ipv4Addr::LOCALHOST, free_pairs(1)[0]).unwrap();
        let members = MemberSet { nodes: vec![me.clone()], cookie: Bytes::new() };
        let cfg = RslConfig {
            working_dir: dir.path().into(),
            heart_beat_interval_sec: 1,
            num_reader_threads: readers,
            fast_read_seq_threshold,
            ..RslConfig::default()
        };
        let probe = Arc::new(Probe::default());
        let sm = Box::new(Gate(probe.clone()));
        let replica = RslReplica::initialize(cfg, me, Version::V6, sm, Arc::new(AdmitAll), Some(members)).unwrap();
        wait(WAIT, || replica.is_primary().then_some(()));
        Lone { replica, probe, _dir: dir }
    }

    fn read(&self, max_seen: u64, what: &'static [u8], cookie: u64) {
        let code = self.replica.fast_read_request(max_seen, Bytes::from_static(what), cookie, WAIT);
        assert_eq!(code, ResponseCode::Success);
    }

    fn replicate(&self, what: &'static [u8], cookie: u64) {
        assert_eq!(self.replica.replicate_request(Bytes::from_static(what), cookie), ResponseCode::Success);
    }

    /// The record of the read with `cookie`, once it ran.
    fn outcome(&self, cookie: u64) -> Seen {
        wait(WAIT, || self.probe.reads.lock().unwrap().iter().find(|r| r.cookie == cookie).copied())
    }
}

impl Drop for Lone {
    fn drop(&mut self) {
        self.probe.release.store(true, SeqCst);
        self.probe.notify();
        self.replica.unload();
    }
}

/// Two reads that each wait for the other to have started: they both see the other only on
/// two reader threads; on one, the first gives up (it would deadlock without its time limit).
fn pair(readers: u32) -> [bool; 2] {
    let lone = Lone::start(readers);
    lone.read(0, b"pair", 1);
    lone.read(0, b"pair", 2);
    [lone.outcome(1).partner, lone.outcome(2).partner]
}

#[test]
fn reads_run_concurrently_on_two_reader_threads() {
    assert_eq!(pair(2), [true, true]);
}

#[test]
fn reads_run_one_at_a_time_on_one_reader_thread() {
    assert_eq!(pair(1), [false, true], "the second starts only once the first has given up");
}

#[test]
fn a_read_runs_while_save_state_is_in_progress() {
    let lone = Lone::start(2);
    lone.replicate(b"save", 1);
    // The checkpoint is taken before the next decree (a heartbeat at the latest) executes.
    assert!(lone.probe.wait_for(|p, _| p.saving.load(SeqCst)), "a save started");
    lone.read(0, b"read", 7);
    let seen = lone.outcome(7);
    assert!(seen.saving && !seen.executing, "the read ran inside SaveState: {seen:?}");
    assert!(lone.probe.read_during_save.load(SeqCst));
}

#[test]
fn a_read_never_runs_during_an_executing_decree_and_waits_for_its_decree() {
    let lone = Lone::start(2);
    let before = lone.replica.current_sequence_number();
    lone.replicate(b"slow", 1);
    assert!(lone.probe.wait_for(|p, _| p.executing.load(SeqCst)), "the slow decree executes");
    let slow = lone.replica.current_sequence_number();
    assert!(slow > before);
    // One read the state already satisfies, one that asks for the slow decree (the sequence
    // number already says it), one that needs the decree after it.
    lone.read(before, b"read", 7);
    lone.read(slow, b"read", 9);
    lone.read(slow + 1, b"read", 8);
    // Give the readers every chance to run inside the decree before it ends.
    std::thread::sleep(Duration::from_millis(300));
    assert!(lone.probe.reads.lock().unwrap().is_empty(), "no read ran while the decree executed");
    lone.probe.release.store(true, SeqCst);
    lone.probe.notify();
    let seen = lone.outcome(7);
    assert!(!seen.executing && seen.seq >= slow, "the satisfied read ran once decree {slow} had executed: {seen:?}");
    let seen = lone.outcome(9);
    assert!(seen.slow_applied, "a read of decree {slow} saw its effect: {seen:?}");
    lone.replicate(b"next", 2);
    let seen = lone.outcome(8);
    assert!(!seen.executing && seen.seq > slow, "the read for decree {} ran once it had executed: {seen:?}", slow + 1);
}

/// `m_fastReadSeqThreshold`: a read for a state this replica has not reached waits for it
/// only if it lags by no more than the threshold; further behind (or at the default 0, any
/// lag) it is refused at once as stale.
#[test]
fn a_read_waits_for_its_state_only_within_the_fast_read_threshold() {
    let request = |lone: &Lone, ahead: u64| {
        let max_seen = lone.replica.current_sequence_number() + ahead;
        lone.replica.fast_read_request(max_seen, Bytes::from_static(b"read"), ahead, WAIT)
    };
    let lone = Lone::start_with(1, 0);
    assert_eq!(request(&lone, 3), ResponseCode::FastReadStale);
    drop(lone);
    let lone = Lone::start_with(1, 10);
    assert_eq!(request(&lone, 50), ResponseCode::FastReadStale);
    assert_eq!(request(&lone, 3), ResponseCode::Success, "it waits for the state 3 decrees on");
}

#[test]
fn reader_thread_counts_are_validated() {
    let base = RslConfig { working_dir: "/tmp".into(), ..RslConfig::default() };
    assert_eq!(base.num_reader_threads, 1, "the original's default");
    for ok in [0, 1, 100] {
        assert!(RslConfig { num_reader_threads: ok, ..base.clone() }.validate().is_ok(), "{ok}");
    }
    assert!(RslConfig { num_reader_threads: 101, ..base }.validate().is_err());
}

/// Unload with one read running (it waits for a partner that never starts) and more queued
/// behind it on the one reader thread: the running read ends, the queued ones come back
/// `ShuttingDown`, the one waiting for a decree too, and no callback follows `shut_down`.
#[test]
fn unload_ends_every_read_before_shut_down() {
    let lone = Lone::start(1);
    lone.read(0, b"pair", 1);
    lone.read(0, b"read", 2);
    lone.read(0, b"read", 3);
    lone.read(lone.replica.current_sequence_number() + 5, b"read", 4);
    lone.replica.unload();
    let p = &lone.probe;
    assert!(p.shut_down.load(SeqCst) && !p.late.load(SeqCst));
    let ran: Vec<u64> = p.reads.lock().unwrap().iter().map(|r| r.cookie).collect();
    let aborted = p.aborted.lock().unwrap().clone();
    assert!(aborted.iter().all(|a| a.1 == ResponseCode::ShuttingDown), "{aborted:?}");
    let mut all: Vec<u64> = ran.iter().copied().chain(aborted.iter().map(|a| a.0)).collect();
    all.sort();
    assert_eq!(all, [1, 2, 3, 4], "each read ran or was aborted, once: ran {ran:?}, aborted {aborted:?}");
}
