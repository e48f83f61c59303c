//! The process-test harness: a cluster of real `rsl-kv replica` processes on 127.0.0.1 (ports,
//! spawning, kill -9, signals, resource readings from /proc) and the checks that replicas
//! hold every acknowledged write and agree. Shared by `tests/cluster.rs` and `tests/hostile.rs`,
//! which each declare the `client` and `proto` modules of `rsl-kv` this uses.
#![allow(dead_code)] // each test binary uses its own part of the harness

use crate::client::{self, Conn, LoadSpec, Progress, ReplicaStatus};
use crate::proto::Status;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ports for one cluster: replica i uses base+3i (Paxos), +1 (learn), +2 (clients).
///
/// They lie below the kernel's ephemeral range. A port in it is free for any outgoing
/// connection while its replica is down, and a client socket on it (open, or in TIME_WAIT for
/// a minute after it closed) makes the restarted replica's bind fail, SO_REUSEADDR or not.
pub fn free_base(span: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const LOW: u16 = 10_000;
    let window = ephemeral_low().checked_sub(LOW + span).filter(|w| *w >= 4000).expect("ephemeral ports start above 14,000");
    loop {
        let offset = ((std::process::id() % 200) as u16 * 100 + NEXT.fetch_add(span, Relaxed) % 3000) % window;
        let base = LOW + offset;
        let free = (0..span).all(|k| TcpListener::bind((Ipv4Addr::LOCALHOST, base + k)).is_ok());
        if free {
            return base;
        }
    }
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`; Linux's default if
/// unreadable).
pub fn ephemeral_low() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32_768)
}

/// How one replica is started besides the cluster's common arguments.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    pub args: Vec<String>,
    /// Shell commands run before `exec`ing the replica (`ulimit -n 128`, `trap "" XFSZ`).
    pub shell: Option<String>,
    /// A command the replica runs under (`ip netns exec <ns>`); it must `exec` the replica.
    pub wrap: Vec<String>,
}

/// Lines of each replica's stderr a diagnosis shows.
const DIAGNOSIS_LINES: usize = 40;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub base: u16,
    pub members: String,
    pub procs: Vec<Option<Child>>,
    pub extra: Vec<String>,
    pub launch: Vec<Launch>,
    /// Each replica's stderr goes to `<dir>/<id>.stderr` (the default: a failed wait shows its
    /// tail) instead of the test's.
    pub log_to_files: bool,
    /// Each replica's address (127.0.0.1 unless `set_hosts`).
    pub hosts: Vec<Ipv4Addr>,
}

impl Cluster {
    /// `n` replicas in the first configuration, `spares` more that start outside it.
    pub fn start(n: usize, spares: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster::new(n, spares, extra);
        for i in 0..n {
            c.spawn(i, true);
        }
        c
    }

    /// The cluster without starting anything, to set `launch` and `log_to_files` first.
    pub fn new(n: usize, spares: usize, extra: &[&str]) -> Cluster {
        let rings = extra.iter().position(|a| *a == "--rings").map_or(1, |i| extra[i + 1].parse::<u16>().expect("rings"));
        let base = free_base(10 * (rings - 1) + 3 * (n + spares) as u16);
        let members = (0..n).map(|i| format!("{}={}", i + 1, base + 3 * i as u16)).collect::<Vec<_>>().join(",");
        Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            base,
            members,
            procs: (0..n + spares).map(|_| None).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            launch: vec![Launch::default(); n + spares],
            log_to_files: true,
            hosts: vec![Ipv4Addr::LOCALHOST; n + spares],
        }
    }

    /// Gives each replica its own address (before any is started).
    pub fn set_hosts(&mut self, hosts: &[Ipv4Addr]) {
        assert_eq!(hosts.len(), self.procs.len(), "one address per replica");
        let n = self.members.split(',').count();
        self.hosts = hosts.to_vec();
        self.members = (0..n).map(|i| format!("{}={}", i + 1, self.paxos(i))).collect::<Vec<_>>().join(",");
        for (launch, host) in self.launch.iter_mut().zip(hosts) {
            launch.args.extend(["--host".to_string(), host.to_string()]);
        }
    }

    pub fn spawn(&mut self, i: usize, member: bool) {
        assert!(self.procs[i].is_none(), "replica {} already runs", i + 1);
        let port = self.base + 3 * i as u16;
        let exe = env!("CARGO_BIN_EXE_rsl-kv");
        let launch = &self.launch[i];
        assert!(launch.wrap.is_empty() || launch.shell.is_none(), "a wrapper or a shell, not both");
        let mut cmd = match &launch.shell {
            // `exec "$0" "$@"`: the replica replaces the shell, so its pid is the child's.
            Some(prefix) => {
                let mut sh = Command::new("sh");
                sh.arg("-c").arg(format!("{prefix}; exec \"$0\" \"$@\"")).arg(exe);
                sh
            }
            None if !launch.wrap.is_empty() => {
                let mut wrapped = Command::new(&launch.wrap[0]);
                wrapped.args(&launch.wrap[1..]).arg(exe);
                wrapped
            }
            None => Command::new(exe),
        };
        cmd.args(["replica", "--id", &(i + 1).to_string(), "--port", &port.to_string(), "--client-port", &(port + 2).to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .args(&launch.args)
            .stdin(Stdio::null());
        if member {
            cmd.args(["--members", &self.members]);
        }
        if self.log_to_files {
            let log = File::options().create(true).append(true).open(self.stderr_path(i)).expect("stderr file");
            cmd.stderr(log).env("NO_COLOR", "1");
            if std::env::var_os("RSL_LOG").is_none() {
                // Connections made and lost, role changes: what a diagnosis needs.
                cmd.env("RSL_LOG", "info");
            }
        }
        self.procs[i] = Some(cmd.spawn().expect("spawn rsl-kv replica"));
    }

    pub fn kill9(&mut self, i: usize) {
        let mut child = self.procs[i].take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    pub fn client(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.hosts[i], self.base + 3 * i as u16 + 2))
    }

    pub fn paxos(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.hosts[i], self.base + 3 * i as u16))
    }

    pub fn learn(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.hosts[i], self.base + 3 * i as u16 + 1))
    }

    pub fn running(&self) -> Vec<SocketAddr> {
        (0..self.procs.len()).filter(|&i| self.procs[i].is_some()).map(|i| self.client(i)).collect()
    }

    /// The indices of the replicas started and not killed.
    pub fn started(&self) -> Vec<usize> {
        (0..self.procs.len()).filter(|&i| self.procs[i].is_some()).collect()
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join((i + 1).to_string())
    }

    pub fn index_of(&self, addr: SocketAddr) -> usize {
        (0..self.procs.len()).find(|&i| self.client(i) == addr).expect("one of ours")
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.procs[i].as_ref().expect("running").id()
    }

    /// How replica `i` ended, if it has.
    pub fn exited(&mut self, i: usize) -> Option<ExitStatus> {
        self.procs[i].as_mut().expect("started").try_wait().expect("try_wait")
    }

    /// Waits up to `within` for replica `i` to end; it is reaped and forgotten if it did.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.exited(i) {
                self.procs[i] = None;
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM (std has only SIGKILL; `kill(1)` needs no new dependency).
    pub fn sigterm(&self, i: usize) {
        let ok = Command::new("kill").args(["-TERM", &self.pid(i).to_string()]).status().expect("kill(1)").success();
        assert!(ok, "kill -TERM replica {}", i + 1);
    }

    /// Sends `sig` (`STOP`, `CONT`, ...) to replica `i` through `kill(1)`.
    pub fn signal(&self, i: usize, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid(i).to_string()]).status().expect("kill(1)").success();
        assert!(ok, "kill -{sig} replica {}", i + 1);
    }

    pub fn stderr_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.stderr", i + 1))
    }

    /// What replica `i` wrote to stderr (with `log_to_files`).
    pub fn stderr(&self, i: usize) -> String {
        std::fs::read(self.stderr_path(i)).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// What every replica is doing, to explain a failed wait: whether its process runs (or how
    /// it ended), the status it answers now, its panic and error lines and the tail of its stderr.
    pub fn diagnosis(&self) -> String {
        let mut out = String::new();
        for i in 0..self.procs.len() {
            let text = self.stderr(i);
            let all: Vec<&str> = text.lines().collect();
            if self.procs[i].is_none() && all.is_empty() {
                continue; // a spare never started
            }
            out += &format!("\n  replica {}: {}; status now: {}", i + 1, self.process_state(i), self.status_now(i));
            // A panic's message is on the line after its location.
            let notable = |k: usize| all[k].contains("panicked") || all[k].contains("ERROR") || (k > 0 && all[k - 1].contains("panicked"));
            let lines: Vec<&str> = (0..all.len()).filter(|&k| notable(k)).map(|k| all[k]).take(6).collect();
            if !lines.is_empty() {
                out += &format!("\n    panics and errors: {}", lines.join(" | "));
            }
            if !all.is_empty() {
                let tail = &all[all.len().saturating_sub(DIAGNOSIS_LINES)..];
                out += &format!("\n    last {} of {} stderr lines:\n      {}", tail.len(), all.len(), tail.join("\n      "));
            }
        }
        out
    }

    /// Whether replica `i`'s process runs, from /proc (no reaping: `&self` is enough).
    fn process_state(&self, i: usize) -> String {
        let Some(child) = &self.procs[i] else { return "not running (killed or reaped by the test)".into() };
        let pid = child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name: the state is field 3, the wait status field 52.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        match fields.first() {
            Some(&"Z") => match fields.get(49).and_then(|w| w.parse::<i32>().ok()) {
                Some(w) if w & 0x7f != 0 => format!("EXITED (pid {pid}, killed by signal {})", w & 0x7f),
                Some(w) => format!("EXITED (pid {pid}, exit code {})", (w >> 8) & 0xff),
                None => format!("EXITED (pid {pid})"),
            },
            Some(state) => format!("alive (pid {pid}, state {state})"),
            None => format!("gone (pid {pid})"),
        }
    }

    /// The status replica `i` answers within 2 s, asked from a thread of its own (the caller
    /// may be inside a runtime, and cannot wait on it there).
    fn status_now(&self, i: usize) -> String {
        let addr = self.client(i);
        let ask = move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(
                async move { tokio::time::timeout(Duration::from_secs(2), async { Conn::connect(addr).await?.status().await }).await },
            )
        };
        match std::thread::spawn(ask).join().expect("status thread") {
            Ok(Ok(s)) => format!("{s:?}"),
            Ok(Err(e)) => format!("none ({e})"),
            Err(_) => "none (no answer within 2 s)".into(),
        }
    }

    /// Every started replica is still running.
    pub fn assert_alive(&mut self) {
        for i in self.started() {
            if let Some(status) = self.exited(i) {
                panic!("replica {} died: {status}{}", i + 1, self.diagnosis());
            }
        }
    }

    /// No replica's stderr shows a panic.
    pub fn assert_no_panic(&self) {
        for i in 0..self.procs.len() {
            let text = self.stderr(i);
            if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
                panic!("replica {} panicked: {line}{}", i + 1, self.diagnosis());
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.procs.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A field of /proc/<pid>/status in KiB (`VmRSS`, `VmSize`); 0 once the process is gone.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'));
    line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// The descriptors a process holds.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

pub fn spec(requests: u64) -> LoadSpec {
    LoadSpec { outstanding: 32, connections: 2, size: 64, keys: u64::MAX, start: 0, requests: Some(requests), record_acked: true }
}

pub async fn primary(c: &Cluster) -> usize {
    match client::wait_for_primary(&c.running(), Duration::from_secs(60)).await {
        Some(p) => c.index_of(p),
        None => panic!("no primary within 60 s{}", c.diagnosis()),
    }
}

/// Waits (bounded) until the load `progress` tracks has `n` acknowledged requests.
pub async fn wait_done(c: &Cluster, progress: &Progress, n: u64) {
    let until = Instant::now() + Duration::from_secs(120);
    while progress.done.load(Relaxed) < n {
        assert!(Instant::now() < until, "load stalled at {}{}", progress.done.load(Relaxed), c.diagnosis());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the replica at `addr` reports, if it answers within 2 s (a stopped one never would).
pub async fn status(addr: SocketAddr) -> Option<ReplicaStatus> {
    let ask = async { Conn::connect(addr).await.ok()?.status().await.ok() };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()
}

/// Every replica in `replicas` converges on one state holding every acknowledged write.
pub async fn verify(c: &Cluster, replicas: &[usize], acked: &[u64], spec: &LoadSpec) -> u64 {
    let addrs: Vec<_> = replicas.iter().map(|&i| c.client(i)).collect();
    check(&addrs, acked, spec, Duration::from_secs(60), || c.diagnosis()).await
}

/// `verify` for replicas given by client address; returns the state digest they agree on.
pub async fn verify_at(replicas: &[SocketAddr], acked: &[u64], spec: &LoadSpec) -> u64 {
    verify_within(replicas, acked, spec, Duration::from_secs(60)).await
}

/// `verify_at`, with the replicas given `within` to converge.
pub async fn verify_within(replicas: &[SocketAddr], acked: &[u64], spec: &LoadSpec, within: Duration) -> u64 {
    check(replicas, acked, spec, within, String::new).await
}

/// `verify_within`; a failure to converge is explained by `diagnosis`.
async fn check(replicas: &[SocketAddr], acked: &[u64], spec: &LoadSpec, within: Duration, diagnosis: impl Fn() -> String) -> u64 {
    let until = Instant::now() + within;
    let states = loop {
        let mut states = Vec::new();
        for &addr in replicas {
            states.push(status(addr).await);
        }
        let same = states
            .iter()
            .all(|s| s.as_ref().is_some_and(|s| (s.digest, s.keys) == states[0].as_ref().map_or((0, 0), |f| (f.digest, f.keys))));
        // A primary answers a write as it executes it and publishes its key count just after:
        // all three can agree, for a moment, on the state before the last acknowledged write.
        let complete = states[0].as_ref().is_some_and(|s| s.keys >= acked.len() as u64);
        if same && complete {
            break states;
        }
        let keys = states[0].as_ref().map_or(0, |s| s.keys);
        assert!(!same || Instant::now() < until, "{keys} keys for {} acknowledged writes{}", acked.len(), diagnosis());
        assert!(Instant::now() < until, "replicas {replicas:?} never converged: {states:?}{}", diagnosis());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let state = states[0].as_ref().expect("converged");
    for &addr in replicas {
        let mut conn = Conn::connect(addr).await.expect("connect");
        for &n in acked {
            let (key, value) = client::request_kv(n, spec);
            // The key count can be complete one write early (keys written outside `acked`, as
            // an attack's), so a replica may still be executing the last acknowledged write:
            // it must show before the deadline; a lost one never does.
            loop {
                let (st, got) = conn.get(0, &key).await.expect("get");
                assert_eq!(st, Status::Ok, "replica at {addr}: read of write {n}");
                if got[..] == value[..] {
                    break;
                }
                assert!(got.is_empty() && Instant::now() < until, "replica at {addr} lost or changed acknowledged write {n}: {got:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    state.digest
}

/// Runs `spec` against the cluster while `during` acts on it once a third is acknowledged.
pub async fn load_while(c: &mut Cluster, spec: &LoadSpec, during: impl AsyncFnOnce(&mut Cluster, &Progress)) -> Vec<u64> {
    let progress = Arc::new(Progress::default());
    let addrs: Vec<_> = (0..c.procs.len()).map(|i| c.client(i)).collect();
    let load = tokio::spawn(client::load(addrs, spec.clone(), progress.clone()));
    wait_done(c, &progress, spec.requests.unwrap_or(0) / 3).await;
    during(c, &progress).await;
    let Ok(result) = tokio::time::timeout(Duration::from_secs(120), load).await else {
        panic!("the load did not finish within 120 s: {} acknowledged{}", progress.done.load(Relaxed), c.diagnosis());
    };
    let result = result.expect("load task");
    assert_eq!(result.acked.len() as u64, spec.requests.unwrap_or(0), "every request acknowledged eventually");
    result.acked
}

/// In a 3-replica cluster: stops a secondary, writes `writes` 4 KiB requests (with `--max-log-mb 1` the logs roll and
/// checkpoints are taken past everything it has), restarts it and checks that it caught up by
/// fetching a checkpoint, every acknowledged write on every replica. Returns the lagging replica.
pub async fn catch_up_from_a_checkpoint(c: &mut Cluster, writes: u64) -> usize {
    let p = primary(c).await;
    let behind = (p + 1) % 3;
    c.kill9(behind);
    let spec = LoadSpec { size: 4096, ..spec(writes) };
    let acked = load_while(c, &spec, async |_, _| {}).await;
    c.spawn(behind, true);
    verify(c, &[0, 1, 2], &acked, &spec).await;
    let codex = std::fs::read_dir(c.data_dir(behind)).expect("dir").flatten().any(|e| e.path().extension().is_some_and(|x| x == "codex"));
    assert!(codex, "the lagging replica holds a checkpoint it fetched");
    behind
}
