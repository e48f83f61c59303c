//! Injected disk faults (the fail points of `rsl_engine::faults`) at every journal and
//! checkpoint system call, in-process through the Rust API on one-member rings. For each: the
//! replica stops without acknowledging anything that is not durable, `failure()` says why and
//! `unload` returns (nothing lingers), the failing disk logs one error line for the cause, and
//! a restart on the same directory recovers every acknowledged request.
//!
//! Fail points are process-wide: each test holds a `fail::FailScenario`, which runs them one
//! at a time and disarms every point at its end.

mod inproc;

use bytes::Bytes;
use rsl_engine::faults::{self, POINTS};
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{MemberSet, Version};
use rsl_engine::runtime::api::node;
use rsl_engine::runtime::{AdmitAll, InitError, JournalGroup, NetworkGroup, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What the state machine saw: the requests executed, in order, and those acknowledged (run
/// with their cookie on the primary).
#[derive(Default)]
struct Seen {
    state: Vec<Vec<u8>>,
    acked: Vec<Vec<u8>>,
}

/// Appends each request to its state; saves and loads it as length-prefixed records.
struct Kv(Arc<Mutex<Seen>>);

impl Kv {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StateMachine for Kv {
    fn load_state(&mut self, reader: Option<&mut CheckpointReader>) -> bool {
        let mut state = Vec::new();
        if let Some(r) = reader {
            let mut data = vec![0; r.size() as usize];
            let mut at = 0;
            while at < data.len() {
                match r.get_data(&mut data[at..]) {
                    Ok(n) if n > 0 => at += n,
                    _ => return false, // an unreadable checkpoint is refused, not half loaded
                }
            }
            let mut rest = &data[..];
            while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                let len = u32::from_le_bytes(*len) as usize;
                state.push(tail[..len].to_vec());
                rest = &tail[len..];
            }
        }
        self.seen().state = state;
        true
    }
    fn execute_replicated_request(&mut self, request: &[u8], cookie: Option<u64>, save: &mut bool) {
        *save = request == b"save";
        let mut seen = self.seen();
        seen.state.push(request.to_vec());
        if cookie.is_some() {
            seen.acked.push(request.to_vec());
        }
    }
    fn execute_fast_read_request(&self, _request: &[u8], _cookie: u64) {}
    fn abort_request(&mut self, _status: ResponseCode, _cookie: u64) {}
    fn save_state(&self, writer: &mut CheckpointWriter) {
        let seen = self.seen();
        for r in &seen.state {
            // A failed write is the writer's to report: it fails the checkpoint at close.
            if writer.write(&(r.len() as u32).to_le_bytes()).and_then(|()| writer.write(r)).is_err() {
                return;
            }
        }
    }
    fn notify_status(&mut self, _is_primary: bool) {}
    fn notify_configuration_changed(&mut self, _cookie: Option<u64>) {}
    fn abort_change_configuration(&mut self, _status: ResponseCode, _cookie: u64) {}
    fn shut_down(&mut self, _status: ResponseCode) {}
    fn state_saved(&mut self, _seq: u64, _file: &Path) {}
    fn state_copied(&mut self, _seq: u64, _file: Option<&Path>, _cookie: Option<u64>) {}
}

/// Every WARN and ERROR line the replicas log, as text.
fn log_lines() -> &'static Mutex<Vec<u8>> {
    static LINES: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LINES.get_or_init(|| {
        struct Capture;
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                log_lines().lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_ansi(false).with_writer(|| Capture);
        tracing::subscriber::set_global_default(subscriber.finish()).expect("the only subscriber");
        Mutex::new(Vec::new())
    })
}

/// The lines logged since the last call.
fn take_lines() -> Vec<String> {
    let text = std::mem::take(&mut *log_lines().lock().unwrap_or_else(|e| e.into_inner()));
    String::from_utf8_lossy(&text).lines().map(str::to_owned).collect()
}

/// The ERROR lines logged since the last call.
fn take_errors() -> Vec<String> {
    take_lines().into_iter().filter(|l| l.contains(" ERROR ")).collect()
}

/// Polls `done` until it holds, failing after `within`.
fn wait(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < until, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const BOUND: Duration = Duration::from_secs(20);

/// A port whose successor (the learn port) is free too.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
}

/// A one-member ring's data directory and port, started as often as a test likes.
struct Disk {
    dir: tempfile::TempDir,
    port: u16,
    max_log_len_mb: u32,
    /// The journal writer it shares with other rings of this process, if any.
    journal_group: Option<JournalGroup>,
    /// The network threads it shares with other rings of this process, if any.
    network_group: Option<NetworkGroup>,
}

/// A running replica and what its state machine saw.
struct Running {
    replica: RslReplica,
    seen: Arc<Mutex<Seen>>,
}

impl Disk {
    fn new(max_log_len_mb: u32) -> Disk {
        Disk { dir: tempfile::tempdir().unwrap(), port: free_port(), max_log_len_mb, journal_group: None, network_group: None }
    }

    fn start(&self) -> Result<Running, InitError> {
        let me = node("1", Ipv4Addr::LOCALHOST, self.port).unwrap();
        let members = MemberSet { nodes: vec![me.clone()], cookie: Bytes::new() };
        let cfg = RslConfig {
            working_dir: self.dir.path().into(),
            election_delay_sec: 1,
            heart_beat_interval_sec: 1,
            new_leader_grace_period_sec: 1,
            max_log_len_mb: self.max_log_len_mb,
            journal_group: self.journal_group.clone(),
            network_group: self.network_group.clone(),
            ..RslConfig::default()
        };
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sm = Box::new(Kv(seen.clone()));
        let replica = RslReplica::initialize(cfg, me, Version::V6, sm, Arc::new(AdmitAll), Some(members))?;
        Ok(Running { replica, seen })
    }
}

impl Running {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Submits `requests` and waits until each is acknowledged.
    fn write_acked(&self, requests: &[Vec<u8>]) {
        wait("primary", BOUND, || {
            assert_eq!(self.replica.failure(), None);
            self.replica.is_primary()
        });
        let before = self.seen().acked.len();
        for (i, r) in requests.iter().enumerate() {
            assert_eq!(self.replica.replicate_request(Bytes::from(r.clone()), i as u64), ResponseCode::Success);
        }
        wait("acknowledged", BOUND, || self.seen().acked.len() == before + requests.len());
    }

    /// Submits `requests` until the replica refuses them (it failed); returns its reason once
    /// it has stopped, with every call refused and `unload` returning.
    fn write_until_failed(self, requests: &[Vec<u8>]) -> (String, Vec<Vec<u8>>) {
        for (i, r) in requests.iter().enumerate() {
            if self.replica.replicate_request(Bytes::from(r.clone()), 1000 + i as u64) != ResponseCode::Success {
                break;
            }
        }
        wait("failure", BOUND, || self.replica.failure().is_some());
        assert!(self.replica.is_stopped());
        assert_eq!(self.replica.replicate_request(Bytes::from_static(b"late"), 1), ResponseCode::ShuttingDown);
        let reason = self.replica.failure().unwrap();
        self.replica.unload();
        assert_eq!(self.replica.failure().as_ref(), Some(&reason), "the reason stays after unload");
        let acked = std::mem::take(&mut self.seen().acked);
        (reason, acked)
    }
}

fn requests(prefix: &str, n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{prefix}{i:06}").into_bytes().repeat(len / 7 + 1)[..len.max(7)].to_vec()).collect()
}

/// Restarts on `disk` and checks the state: every acknowledged request, in order, and only
/// requests that were submitted; then one more write is acknowledged.
fn recovers(disk: &Disk, acked: &[Vec<u8>], submitted: &BTreeSet<Vec<u8>>) {
    let r = disk.start().unwrap_or_else(|e| panic!("restart: {e}"));
    let marker = b"after restart".to_vec();
    r.write_acked(std::slice::from_ref(&marker));
    let state = r.seen().state.clone();
    assert_eq!(state.last(), Some(&marker));
    assert!(state.len() > acked.len(), "{} recovered, {} acknowledged", state.len() - 1, acked.len());
    assert!(state[..acked.len()] == *acked, "every acknowledged request is recovered, in order");
    assert!(state.iter().all(|r| *r == marker || submitted.contains(r)), "nothing that was never written");
    r.replica.unload();
}

/// The scenario for a fault while running: acknowledged writes, the point armed, the writes
/// (with `save` a checkpoint request first) that make the replica touch the disk and fail.
/// Checks the reason, the single error line and the recovery; returns the reason and what
/// the restart logged.
fn fails_while_running(point: &str, action: &str, save: bool, max_log_len_mb: u32, write_len: usize) -> (String, Vec<String>) {
    let _scenario = fail::FailScenario::setup();
    take_errors();
    let disk = Disk::new(max_log_len_mb);
    let r = disk.start().unwrap();
    let before = requests("a", 20, write_len);
    r.write_acked(&before);
    fail::cfg(point, action).unwrap();
    let mut after = if save { vec![b"save".to_vec()] } else { Vec::new() };
    after.extend(requests("b", 200, write_len));
    let (reason, acked) = r.write_until_failed(&after);
    assert!(reason.contains(&format!("(injected at {point})")), "{point}: {reason}");
    let errors = take_errors();
    assert_eq!(errors.len(), 1, "{point}: one error line for the cause: {errors:#?}");
    assert!(errors[0].contains(point), "{point}: the line names the cause: {}", errors[0]);
    fail::remove(point);
    recovers(&disk, &acked, &before.iter().chain(&after).cloned().collect());
    (reason, take_lines())
}

/// The scenario for a fault at startup: a clean run (with a checkpoint), the point armed, a
/// restart. Returns the restart's error, if it had one; either way the next restart, unarmed,
/// recovers everything.
fn at_startup(point: &str, action: &str) -> Option<String> {
    let _scenario = fail::FailScenario::setup();
    take_errors();
    let disk = Disk::new(100);
    let r = disk.start().unwrap();
    let mut written = requests("a", 10, 20);
    written.push(b"save".to_vec());
    r.write_acked(&written);
    // The checkpoint is saved once the next decree is chosen: a later write.
    let later = requests("b", 10, 20);
    r.write_acked(&later);
    written.extend(later);
    r.replica.unload();
    assert!(disk.dir.path().join("1").read_dir().unwrap().any(|e| e.unwrap().path().extension().is_some_and(|x| x == "codex")));
    fail::cfg(point, action).unwrap();
    let error = match disk.start() {
        Err(e) => Some(e.to_string()),
        Ok(r) => {
            // It started without what it could not read, saying so: from the logs, which
            // hold it all.
            let lines = take_lines();
            assert!(lines.iter().any(|l| l.contains(" WARN ") && l.contains("checkpoint skipped")), "{point}: {lines:#?}");
            r.write_acked(&[b"armed".to_vec()]);
            assert!(r.seen().state[..written.len()] == written, "{point}: recovered from the logs");
            r.replica.unload();
            written.push(b"armed".to_vec());
            None
        }
    };
    assert_eq!(take_errors(), Vec::<String>::new(), "{point}: the error is initialize's to report, or a warning");
    fail::remove(point);
    recovers(&disk, &written, &written.iter().cloned().collect());
    error
}

#[test]
fn every_point_is_covered_here() {
    let source = include_str!("faults.rs");
    for point in POINTS {
        let name = point.replace("::", "_").to_uppercase();
        assert!(source.matches(&format!("faults::{name}")).count() >= 1, "{point} has no test");
    }
}

#[test]
fn a_failing_log_write_stops_the_replica() {
    // 300-byte requests: a record's message then runs past the first half of its 512-byte
    // page. A shorter one fits in that half, and the rest of the page is padding, zeros the
    // journal wrote ahead already: a half write leaves it whole.
    for action in ["return", "return(enospc)", "return(short)"] {
        let (reason, restart) = fails_while_running(faults::JOURNAL_WRITE, action, false, 100, 300);
        assert!(reason.starts_with("journal write failed: "), "{action}: {reason}");
        // Half a batch reached the disk: the restart cuts it off.
        let cut = restart.iter().any(|l| l.contains("cutting a torn tail"));
        assert_eq!(cut, action == "return(short)", "{action}: {restart:#?}");
    }
}

#[test]
fn a_failing_log_fsync_stops_the_replica() {
    let (reason, _) = fails_while_running(faults::JOURNAL_FSYNC, "return", false, 100, 20);
    assert!(reason.contains("Input/output error"), "{reason}");
}

#[test]
fn a_log_that_cannot_be_created_at_a_roll_stops_the_replica() {
    // 1 MB logs and 16 KB writes: the log rolls within the 200 writes after the point is armed.
    let (reason, _) = fails_while_running(faults::JOURNAL_OPEN, "return", false, 1, 16 << 10);
    assert!(reason.contains(".log: Input/output error"), "{reason}");
}

#[test]
fn logs_that_cannot_be_opened_or_read_fail_the_restart() {
    for (point, action) in [(faults::JOURNAL_OPEN, "return"), (faults::JOURNAL_READ, "return"), (faults::JOURNAL_READ, "return(enospc)")] {
        let error = at_startup(point, action).unwrap_or_else(|| panic!("{point}: started without its logs"));
        assert!(error.contains(".log: ") && error.contains(&format!("(injected at {point})")), "{point}: {error}");
    }
}

#[test]
fn a_checkpoint_that_cannot_be_saved_stops_the_replica() {
    for (point, action) in [
        (faults::CHECKPOINT_OPEN, "return"),
        (faults::CHECKPOINT_WRITE, "return"),
        (faults::CHECKPOINT_WRITE, "return(enospc)"),
        (faults::CHECKPOINT_WRITE, "return(short)"),
        (faults::CHECKPOINT_FSYNC, "return"),
        (faults::CHECKPOINT_RENAME, "return"),
        // Reading it back to verify it.
        (faults::CHECKPOINT_READ, "return"),
    ] {
        let (reason, _) = fails_while_running(point, action, true, 100, 20);
        assert!(reason.starts_with("checkpoint ") && reason.contains("could not be saved"), "{point} {action}: {reason}");
    }
}

#[test]
fn a_checkpoint_that_cannot_be_read_at_restart_is_skipped_for_the_logs() {
    // Once: replaying the logs saves the checkpoint again, which must then work.
    for point in [faults::CHECKPOINT_OPEN, faults::CHECKPOINT_READ] {
        assert_eq!(at_startup(point, "1*return"), None, "{point}");
    }
}

/// The process as a supervisor sees it: `rsl-kv replica` with a fail point armed through
/// `FAILPOINTS` (its 4th log fsync fails) exits with code 3, having logged one error line
/// for the cause; restarted on the same directory without it, it runs again.
#[test]
fn rsl_kv_with_a_failing_fsync_exits_with_one_error_line() {
    use std::process::{Command, Stdio};
    let disk = Disk::new(100);
    let client = free_port();
    let run = |failpoints: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rsl-kv"));
        let port = disk.port.to_string();
        cmd.args(["replica", "--id", "1", "--port", &port, "--client-port", &client.to_string()])
            .args(["--members", &format!("1={port}"), "--election-delay", "1", "--heartbeat", "1"])
            .arg("--dir")
            .arg(disk.dir.path())
            .env_remove("FAILPOINTS")
            .env_remove("RSL_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        Reap(cmd.spawn().expect("spawn rsl-kv replica"))
    };
    let mut failing = run(Some(&format!("{}=3*off->return", faults::JOURNAL_FSYNC)));
    let mut pipe = failing.0.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        text
    });
    // Heartbeats write a vote a second: the 4th sync comes within seconds.
    let mut status = None;
    wait("rsl-kv exits", BOUND, || {
        status = failing.0.try_wait().unwrap();
        status.is_some()
    });
    let stderr = reader.join().unwrap();
    assert_eq!(status.unwrap().code(), Some(3), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("injected at journal::fsync"), "{stderr}");
    // Restarted without the fault, it replays its log and writes on (its log grows).
    let log = disk.dir.path().join("1").join("0.log");
    let len = std::fs::metadata(&log).unwrap().len();
    let mut healthy = run(None);
    wait("the restarted replica writes", BOUND, || {
        assert_eq!(healthy.0.try_wait().unwrap(), None, "the restarted replica exited");
        std::fs::metadata(&log).unwrap().len() > len
    });
}

/// A child process, killed and reaped when the test ends however it ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three rings share a journal writer and network threads; one ring's log fsync fails: it
/// stops alone, the others go on acknowledging on the same threads, and each recovers all it
/// acknowledged, the failed one on its own ports again (its listeners closed with it).
#[test]
fn rings_sharing_writer_and_network_threads_fail_alone() {
    let _scenario = fail::FailScenario::setup();
    take_errors();
    let (group, network) = (JournalGroup::new(), NetworkGroup::new(2).unwrap());
    let shared = || Disk { journal_group: Some(group.clone()), network_group: Some(network.clone()), ..Disk::new(100) };
    let disks: Vec<Disk> = (0..3).map(|_| shared()).collect();
    let rings: Vec<Running> = disks.iter().map(|d| d.start().unwrap()).collect();
    let before = requests("a", 20, 20);
    rings.iter().for_each(|r| r.write_acked(&before));
    let sick = disks[0].dir.path().join("1");
    fail::cfg(faults::JOURNAL_FSYNC, &format!("return(eio@{})", sick.display())).unwrap();
    let mut rings = rings.into_iter();
    let after = requests("b", 200, 20);
    let (reason, acked) = rings.next().unwrap().write_until_failed(&after);
    assert!(reason.contains("injected at journal::fsync") && reason.contains(&*sick.to_string_lossy()), "{reason}");
    // The other rings of the process go on, on the same writer.
    let later = requests("c", 50, 20);
    let healthy: Vec<Running> = rings.collect();
    healthy.iter().for_each(|r| r.write_acked(&later));
    let errors = take_errors();
    assert!(errors.len() == 1 && errors[0].contains("injected at journal::fsync"), "one error line: {errors:#?}");
    fail::remove(faults::JOURNAL_FSYNC);
    let healthy_acked: Vec<Vec<Vec<u8>>> = healthy.iter().map(|r| r.seen().acked.clone()).collect();
    healthy.into_iter().for_each(|r| r.replica.unload());
    // Every ring recovers what it acknowledged, the failed one too.
    let submitted: BTreeSet<Vec<u8>> = before.iter().chain(&after).chain(&later).cloned().collect();
    recovers(&disks[0], &acked, &submitted);
    for (disk, acked) in disks[1..].iter().zip(&healthy_acked) {
        assert_eq!(acked.len(), before.len() + later.len());
        recovers(disk, acked, &submitted);
    }
}

/// In a ring of three, the primary's log fsync fails (the fault names its directory): it
/// stops; the other two elect a primary and go on. Every write acknowledged by either
/// primary is in the new primary's state, in order, and the old one, restarted on its
/// directory, catches up to the same state.
#[test]
fn a_primary_whose_disk_fails_stops_and_the_ring_goes_on() {
    let _scenario = fail::FailScenario::setup();
    take_errors();
    let dir = tempfile::tempdir().unwrap();
    let ports = inproc::free_pairs(3);
    let nodes: Vec<_> = (1..=3).map(|i| node(&i.to_string(), Ipv4Addr::LOCALHOST, ports[i - 1]).unwrap()).collect();
    let members = MemberSet { nodes: nodes.clone(), cookie: Bytes::new() };
    let start = |i: usize| {
        // Heartbeats well inside the election delay: no election while the primary lives.
        let cfg = RslConfig {
            working_dir: dir.path().into(),
            election_delay_sec: 3,
            heart_beat_interval_sec: 1,
            new_leader_grace_period_sec: 3,
            ..RslConfig::default()
        };
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sm = Box::new(Kv(seen.clone()));
        let replica = RslReplica::initialize(cfg, nodes[i].clone(), Version::V6, sm, Arc::new(AdmitAll), Some(members.clone()));
        Running { replica: replica.unwrap(), seen }
    };
    let mut ring: Vec<Option<Running>> = (0..3).map(|i| Some(start(i))).collect();
    let primary = |ring: &[Option<Running>]| {
        let mut found = None;
        wait("a primary", BOUND, || {
            found = ring.iter().position(|r| r.as_ref().is_some_and(|r| r.replica.is_primary()));
            found.is_some()
        });
        found.unwrap()
    };
    let p = primary(&ring);
    let before = requests("a", 20, 20);
    ring[p].as_ref().unwrap().write_acked(&before);
    let p_dir = dir.path().join(nodes[p].id.to_string());
    fail::cfg(faults::JOURNAL_FSYNC, &format!("return(eio@{})", p_dir.display())).unwrap();
    let after = requests("b", 200, 20);
    let (reason, mut acked) = ring[p].take().unwrap().write_until_failed(&after);
    assert!(reason.contains("injected at journal::fsync") && reason.contains(&*p_dir.to_string_lossy()), "{reason}");

    let q = primary(&ring);
    let later = requests("c", 20, 20);
    let new = ring[q].as_ref().unwrap();
    new.write_acked(&later);
    acked.extend(new.seen().acked.iter().cloned());
    let state = new.seen().state.clone();
    let mut rest = state.iter();
    assert!(acked.iter().all(|a| rest.any(|s| s == a)), "every acknowledged write, in order");
    let submitted: BTreeSet<_> = before.iter().chain(&after).chain(&later).collect();
    assert!(state.iter().all(|s| submitted.contains(s)), "nothing that was never written");
    let errors = take_errors();
    assert!(errors.len() == 1 && errors[0].contains("injected at journal::fsync"), "one error line: {errors:#?}");

    fail::remove(faults::JOURNAL_FSYNC);
    ring[p] = Some(start(p));
    wait("the old primary catches up", BOUND, || ring[p].as_ref().unwrap().seen().state == state);
    for r in ring.into_iter().flatten() {
        r.replica.unload();
    }
}
