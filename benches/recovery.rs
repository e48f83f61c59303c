//! Recovery speed: how fast a replica restarting on a large journal replays it, against how
//! fast the same disk reads those log files sequentially.
//!
//! A one-member ring (protocol version 6, fdatasync on) replicates `RECOVERY_MB` MiB of
//! 64 KiB requests (default 1024) with checkpoints held off, so that the whole journal is what
//! a restart replays. The replica is unloaded, the page cache dropped (when the process may:
//! root on Linux; otherwise both figures are from memory and the summary says so), and a new
//! replica started on the same directory: the clock runs from `initialize` until every logged
//! request has executed again. Before each restart the log files are read front to back with
//! 1 MiB reads, the cache dropped first. On a shared machine (and a virtual disk whose host
//! may still be writing the journal back) both vary from one try to the next, so this is done
//! `RECOVERY_ROUNDS` times (default 3): each round's figures are printed, and the summary
//! compares the best replay with the best read (issue: at least 0.5). A last restart with the
//! files still cached shows the replay's speed with no disk under it.
//!
//! `cargo bench --bench recovery`. Environment: `RECOVERY_MB`, `RECOVERY_ROUNDS`,
//! `RECOVERY_DIR` (a directory on the disk to measure; default `$TMPDIR`).

use bytes::Bytes;
use rsl_engine::format::checkpoint::{CheckpointReader, CheckpointWriter};
use rsl_engine::format::{MemberSet, Version};
use rsl_engine::runtime::api::node;
use rsl_engine::runtime::{AdmitAll, ResponseCode, RslConfig, RslReplica, StateMachine};
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REQUEST: usize = 64 << 10;
/// Requests submitted and not yet executed, at most.
const IN_FLIGHT: u64 = 64;

/// Counts what executes; keeps nothing (the state machine is not what is measured).
struct Counter(Arc<AtomicU64>);

impl StateMachine for Counter {
    fn load_state(&mut self, _: Option<&mut CheckpointReader>) -> bool {
        true
    }
    fn execute_replicated_request(&mut self, request: &[u8], _: Option<u64>, _: &mut bool) {
        if request.len() == REQUEST {
            self.0.fetch_add(1, Relaxed);
        }
    }
    fn execute_fast_read_request(&self, _: &[u8], _: u64) {}
    fn abort_request(&mut self, _: ResponseCode, _: u64) {}
    fn save_state(&self, _: &mut CheckpointWriter) {}
    fn notify_status(&mut self, _: bool) {}
    fn notify_configuration_changed(&mut self, _: Option<u64>) {}
    fn abort_change_configuration(&mut self, _: ResponseCode, _: u64) {}
    fn shut_down(&mut self, _: ResponseCode) {}
}

/// A port from the OS whose successor (the learn port) is free too.
fn port_pair() -> u16 {
    let mut held = Vec::new();
    loop {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a port");
        let port = first.local_addr().expect("bound").port();
        held.push(first);
        if port.checked_add(1).is_some_and(|next| TcpListener::bind((Ipv4Addr::LOCALHOST, next)).is_ok()) {
            return port;
        }
    }
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < until, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Drops the page cache; false when this process may not.
fn drop_caches() -> bool {
    let synced = std::process::Command::new("sync").status().is_ok_and(|s| s.success());
    synced && std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = walk(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "log")).collect();
    logs.sort();
    logs
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Seconds to read `files` front to back with 1 MiB reads.
fn read_all(files: &[PathBuf]) -> f64 {
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    for file in files {
        let mut f = std::fs::File::open(file).expect("open a log");
        while f.read(&mut buf).expect("read a log") > 0 {}
    }
    start.elapsed().as_secs_f64()
}

struct Ring {
    cfg: RslConfig,
    members: MemberSet,
}

impl Ring {
    fn start(&self, executed: &Arc<AtomicU64>) -> RslReplica {
        let me = self.members.nodes[0].clone();
        let sm = Box::new(Counter(executed.clone()));
        RslReplica::initialize(self.cfg.clone(), me, Version::V6, sm, Arc::new(AdmitAll), Some(self.members.clone())).expect("initialize")
    }
}

fn main() {
    let mb: u64 = std::env::var("RECOVERY_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let base = std::env::var_os("RECOVERY_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("a directory");
    let requests = (mb << 20) / REQUEST as u64;
    let cfg = RslConfig {
        working_dir: dir.path().into(),
        election_delay_sec: 1,
        heart_beat_interval_sec: 1,
        new_leader_grace_period_sec: 1,
        // No checkpoint: the restart replays the whole journal.
        max_log_len_mb: 102_400,
        max_votes_in_log: i32::MAX as u32,
        max_checkpoint_interval_sec: 1 << 40,
        ..RslConfig::default()
    };
    let members = MemberSet { nodes: vec![node("1", Ipv4Addr::LOCALHOST, port_pair()).expect("a node")], cookie: Bytes::new() };
    let ring = Ring { cfg, members };

    let executed = Arc::new(AtomicU64::new(0));
    let replica = ring.start(&executed);
    wait_until("primary", Duration::from_secs(60), || replica.is_primary());
    let request = Bytes::from(vec![0x5a; REQUEST]);
    let write = Instant::now();
    let mut submitted = 0;
    while submitted < requests {
        if submitted - executed.load(Relaxed) >= IN_FLIGHT {
            std::thread::yield_now();
            continue;
        }
        match replica.replicate_request(request.clone(), submitted) {
            ResponseCode::Success => submitted += 1,
            other => panic!("replicate_request: {other:?}"),
        }
    }
    wait_until("the writes execute", Duration::from_secs(600), || executed.load(Relaxed) == requests);
    let write_secs = write.elapsed().as_secs_f64();
    replica.unload();
    drop(replica);

    let logs = log_files(dir.path());
    let log_bytes: u64 = logs.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum();
    let mib = log_bytes as f64 / f64::from(1 << 20);
    println!("recovery: {} log files, {mib:.0} MiB, {requests} requests of {REQUEST} bytes written in {write_secs:.1} s", logs.len());
    let cold = drop_caches();
    println!("  page cache dropped before each read: {}", if cold { "yes" } else { "no (not root): both from memory" });
    let rounds: usize = std::env::var("RECOVERY_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let (mut best_read, mut best_replay) = (f64::MAX, f64::MAX);
    for round in 1..=rounds {
        drop_caches();
        let read_secs = read_all(&logs);
        drop_caches();
        let (replay_secs, cpu_secs) = restart(&ring, requests);
        println!(
            "  round {round}: read {read_secs:.2} s, {:.0} MiB/s; replay {replay_secs:.2} s, {:.0} MiB/s, {cpu_secs:.2} CPU s; replay / read = {:.2}",
            mib / read_secs,
            mib / replay_secs,
            read_secs / replay_secs
        );
        (best_read, best_replay) = (best_read.min(read_secs), best_replay.min(replay_secs));
    }
    // The files are in the page cache after the last replay: this restart shows what the
    // replay costs with no disk under it.
    let (warm_secs, warm_cpu) = restart(&ring, requests);
    println!("  from the page cache: replay {warm_secs:.2} s, {:.0} MiB/s, {warm_cpu:.2} CPU s", mib / warm_secs);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "  best of {rounds}: read {:.0} MiB/s, replay {:.0} MiB/s: replay / read = {:.2}   (load average {})",
        mib / best_read,
        mib / best_replay,
        best_read / best_replay,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}

/// Restarts the ring on its journal: seconds until the logged requests have executed again,
/// and the CPU seconds the process spent meanwhile (on both cores, all threads).
fn restart(ring: &Ring, requests: u64) -> (f64, f64) {
    let replayed = Arc::new(AtomicU64::new(0));
    let cpu = cpu_secs();
    let start = Instant::now();
    let replica = ring.start(&replayed);
    // The last logged decree executes once a primary is chosen again; all before it replay.
    wait_until("the replay", Duration::from_secs(600), || replayed.load(Relaxed) + IN_FLIGHT >= requests);
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu;
    replica.unload();
    drop(replica);
    (secs, cpu)
}

/// User and system CPU seconds of this process so far (`/proc/self/stat`, 100 ticks a second).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which ends at the last ')': utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    ticks as f64 / 100.0
}
