//! The nemesis: real `rsl-kv` replica processes under continuous load while faults strike —
//! kill -9 (the primary, a random replica, two at once), whole-cluster restarts, SIGSTOP
//! pauses, a full disk (each replica's data on its own small tmpfs) and network partitions —
//! at v6 and at v7 with a window of 16, with 3 and 5 replicas. At the end every acknowledged
//! write is read back with its exact value from every replica, no replica holds a value that
//! was never written, all digests are equal, and one summary line per configuration gives the
//! faults by kind, the writes acknowledged and the longest time from a primary failure to
//! the next acknowledged write.
//!
//! Partitions: each replica runs in its own network namespace (`ip netns exec`) with its own
//! address (`rsl-kv replica --host`), linked through a bridge in a hub namespace; a partition
//! is blackhole routes inside the replicas' namespaces, so the machine's own network is never
//! touched. (No iptables here, and a proxy could not sit between replicas that dial the port
//! their peers listen on.) Where namespaces or tmpfs mounts cannot be made (not root), that
//! fault kind is skipped and the summary line says why.
//!
//! CI runs `nemesis_short` (a few seconds of faults per configuration). Long runs:
//!
//! ```text
//! NEMESIS_SECS=600 cargo test --release -p rsl-engine --test nemesis -- --ignored --nocapture
//! ```
//!
//! `NEMESIS_SECS` is per configuration; `NEMESIS_SETUP=v7w16n5` runs only that one;
//! `NEMESIS_SEED` repeats a run's choices (each run prints its seed).

#[path = "../src/bin/rsl-kv/client.rs"]
mod client;
#[path = "../src/bin/rsl-kv/proto.rs"]
mod proto;

mod support;

use bytes::BytesMut;
use client::{LoadResult, LoadSpec, Progress};
use proto::Status;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{rt, status, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillPrimary,
    KillRandom,
    KillTwo,
    RestartAll,
    Pause,
    FullDisk,
    Partition,
}

const FAULTS: [Fault; 7] =
    [Fault::KillPrimary, Fault::KillRandom, Fault::KillTwo, Fault::RestartAll, Fault::Pause, Fault::FullDisk, Fault::Partition];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillPrimary => "kill-primary",
            Fault::KillRandom => "kill-random",
            Fault::KillTwo => "kill-two",
            Fault::RestartAll => "restart-all",
            Fault::Pause => "pause",
            Fault::FullDisk => "full-disk",
            Fault::Partition => "partition",
        }
    }
}

/// A cluster configuration under test.
#[derive(Clone, Copy)]
struct Setup {
    version: u16,
    window: u32,
    replicas: usize,
}

const SETUPS: [Setup; 4] = [
    Setup { version: 6, window: 1, replicas: 3 },
    Setup { version: 7, window: 16, replicas: 3 },
    Setup { version: 6, window: 1, replicas: 5 },
    Setup { version: 7, window: 16, replicas: 5 },
];

impl Setup {
    fn name(&self) -> String {
        format!("v{}w{}n{}", self.version, self.window, self.replicas)
    }
}

/// A small deterministic generator (xorshift64*): a printed seed repeats a run's choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// What one configuration's run saw.
#[derive(Default)]
struct Tally {
    faults: BTreeMap<Fault, u32>,
    /// Fault kinds this machine cannot produce, with the reason.
    skipped: BTreeMap<Fault, String>,
    /// Time from each primary failure to the next acknowledged write.
    outages: Vec<(Fault, Duration)>,
    /// Full-disk faults after which the replica's process ended by itself / stayed up.
    disk_exits: u32,
    disk_stayed_up: u32,
}

/// Each replica's data directory on its own small tmpfs, lazily unmounted when dropped.
struct Disks {
    mounts: Vec<PathBuf>,
}

/// Each replica's tmpfs: its state grows with every write (each writes a new key), and it
/// holds logs (`--max-log-mb 8`), two checkpoints and one being saved: three copies of a
/// state that grew by up to 1.5 MB/s on this 2-core machine (a 600 s run at 2 MB/s of tmpfs
/// per second filled its disk after 5 minutes). A fault fills whatever is left. The size is a
/// cap: memory holds only what is written.
fn disk_mb(secs: u64) -> u64 {
    256 + 6 * secs
}

impl Disks {
    fn mount(c: &Cluster, secs: u64) -> Result<Disks, String> {
        let mut disks = Disks { mounts: Vec::new() };
        for i in 0..c.procs.len() {
            let dir = c.data_dir(i);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={}m", disk_mb(secs)), "tmpfs"])
                .arg(&dir)
                .output()
                .map_err(|e| format!("mount(8): {e}"))?;
            if !out.status.success() {
                return Err(format!("mount -t tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            disks.mounts.push(dir);
        }
        Ok(disks)
    }

    fn ballast(&self, i: usize) -> PathBuf {
        self.mounts[i].join("ballast")
    }

    /// Fills replica `i`'s disk to the last byte.
    fn fill(&self, i: usize) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.ballast(i)).expect("ballast file");
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        // Whatever a full chunk left over, in small pieces.
        while f.write_all(&chunk[..512]).is_ok() {}
        let _ = f.write_all(&chunk[..1]);
    }

    fn free(&self, i: usize) {
        std::fs::remove_file(self.ballast(i)).expect("remove ballast");
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        for dir in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
    }
}

/// The network: each replica in its own namespace, its veth on a bridge in a hub namespace
/// that also reaches this (the test's) namespace through one veth. Partitions are blackhole
/// routes inside the replicas' namespaces, so nothing outside the namespaces this makes
/// changes; deleting them at the end removes every link (the hub's veth takes its root end).
struct Net {
    names: Vec<String>,
    /// `10.a.b.0/24`: replica i is `.i+1`, this namespace `.254`.
    prefix: [u8; 3],
    /// The blackhole routes in place: (namespace index, address cut off).
    cuts: Vec<(usize, Ipv4Addr)>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip(8): {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
    }
}

impl Net {
    fn make(n: usize) -> Result<Net, String> {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let (pid, run) = (std::process::id(), RUNS.fetch_add(1, Relaxed));
        let tag = format!("nem{}x{run}", pid % 1_000_000);
        let mut net = Net { names: vec![format!("{tag}h")], prefix: [10, 200 + (pid >> 8) as u8 % 50, pid as u8], cuts: Vec::new() };
        let hub = net.names[0].clone();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        ip(&["link", "add", &tag, "type", "veth", "peer", "name", "up0", "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", "up0", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", net.addr(253)), "dev", &tag])?;
        ip(&["link", "set", &tag, "up"])?;
        for i in 0..n {
            let ns = format!("{tag}r{i}");
            ip(&["netns", "add", &ns])?;
            net.names.push(ns.clone());
            let port = format!("p{i}");
            ip(&["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.addr(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Replica i's address (253: this namespace's).
    fn addr(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, i as u8 + 1)
    }

    fn namespace(&self, i: usize) -> &str {
        &self.names[i + 1]
    }

    /// Cuts every link between `side` and the other replicas, both ways.
    fn split(&mut self, side: &[usize], n: usize) {
        for i in 0..n {
            for j in (0..n).filter(|j| side.contains(&i) != side.contains(j)) {
                let to = self.addr(j);
                ip(&["-n", self.namespace(i), "route", "add", "blackhole", &format!("{to}/32")]).expect("blackhole route");
                self.cuts.push((i, to));
            }
        }
    }

    fn heal(&mut self) {
        for (i, to) in std::mem::take(&mut self.cuts) {
            ip(&["-n", self.namespace(i), "route", "del", "blackhole", &format!("{to}/32")]).expect("remove blackhole route");
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The kernel frees a deleted namespace's links asynchronously: the root end goes now.
        let _ = ip(&["link", "del", self.names[0].trim_end_matches('h')]);
        for ns in self.names.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Client requests in flight at once.
const OUTSTANDING: usize = 32;

/// The longest stretch without an acknowledged write since it was last reset.
struct Gaps {
    last: Instant,
    seen: u64,
    longest: Duration,
}

/// Samples `progress` every millisecond into `gaps` until the load stops.
async fn watch_gaps(progress: Arc<Progress>, gaps: Arc<Mutex<Gaps>>) {
    while !progress.stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (done, now) = (progress.done.load(Relaxed), Instant::now());
        let mut g = gaps.lock().expect("gaps");
        if done != g.seen {
            g.longest = g.longest.max(now - g.last);
            (g.last, g.seen) = (now, done);
        }
    }
}

/// One configuration's run: the cluster, its load and the faults dealt so far.
struct Run {
    // Unmounted and deleted before the cluster's directory goes (fields drop in order), after
    // `Drop for Run` has killed the processes.
    disks: Option<Disks>,
    net: Option<Net>,
    c: Cluster,
    progress: Arc<Progress>,
    gaps: Arc<Mutex<Gaps>>,
    rng: Rng,
    tally: Tally,
    pause_max_s: u64,
}

impl Run {
    fn start(setup: Setup, seed: u64, secs: u64) -> Run {
        let (v, w) = (setup.version.to_string(), setup.window.to_string());
        let mut c = Cluster::new(setup.replicas, 0, &["--version", &v, "--window", &w, "--max-log-mb", "8"]);
        c.log_to_files = true;
        let mut tally = Tally::default();
        let disks = Disks::mount(&c, secs).map_err(|why| tally.skipped.insert(Fault::FullDisk, why)).ok();
        let net = Net::make(setup.replicas).map_err(|why| tally.skipped.insert(Fault::Partition, why)).ok();
        if let Some(net) = &net {
            let hosts: Vec<Ipv4Addr> = (0..setup.replicas).map(|i| net.addr(i)).collect();
            c.set_hosts(&hosts);
            for i in 0..setup.replicas {
                c.launch[i].wrap = ["ip", "netns", "exec", net.namespace(i)].map(String::from).to_vec();
            }
        }
        for i in 0..setup.replicas {
            c.spawn(i, true);
        }
        let pause_max_s = (secs / 6).clamp(1, 10);
        let (progress, gaps) =
            (Arc::new(Progress::default()), Arc::new(Mutex::new(Gaps { last: Instant::now(), seen: 0, longest: Duration::ZERO })));
        tokio::spawn(watch_gaps(progress.clone(), gaps.clone()));
        Run { disks, net, c, progress, gaps, rng: Rng(seed | 1), tally, pause_max_s }
    }

    fn n(&self) -> usize {
        self.c.procs.len()
    }

    fn pick(&mut self) -> usize {
        self.rng.below(self.n() as u64) as usize
    }

    /// Waits until writes flow again after a failure that saw `done` acknowledged; returns
    /// the longest stretch without an acknowledgement since. Up to `OUTSTANDING` more may
    /// have been sent before the failure (they sat in the client's socket buffers).
    async fn resumed(&self, done: u64) -> Duration {
        let since = Instant::now();
        while self.progress.done.load(Relaxed) <= done + OUTSTANDING as u64 {
            assert!(since.elapsed() < Duration::from_secs(90), "no write acknowledged 90 s after a fault{}", diagnosis(&self.c));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.gaps.lock().expect("gaps").longest
    }

    /// The replica that says it is primary (waits for one).
    async fn primary(&self) -> usize {
        let addrs = self.c.running();
        let p = client::wait_for_primary(&addrs, Duration::from_secs(60)).await;
        self.c.index_of(p.unwrap_or_else(|| panic!("no primary within 60 s{}", diagnosis(&self.c))))
    }

    /// Deals one fault and heals it; returns once writes are acknowledged again.
    async fn strike(&mut self, fault: Fault) {
        let p = self.primary().await;
        let outage = match fault {
            Fault::KillPrimary => self.kill_and_restart(&[p], p).await,
            Fault::KillRandom => {
                let i = self.pick();
                self.kill_and_restart(&[i], p).await
            }
            Fault::KillTwo => {
                let i = self.pick();
                let j = (i + 1 + self.rng.below(self.n() as u64 - 1) as usize) % self.n();
                self.kill_and_restart(&[i, j], p).await
            }
            Fault::RestartAll => {
                let all: Vec<usize> = (0..self.n()).collect();
                self.kill_and_restart(&all, p).await
            }
            Fault::Pause => {
                let i = if self.rng.below(2) == 0 { p } else { self.pick() };
                self.pause(i, p).await
            }
            Fault::FullDisk => {
                let i = if self.rng.below(2) == 0 { p } else { self.pick() };
                self.full_disk(i, p).await
            }
            Fault::Partition => self.partition(p).await,
        };
        *self.tally.faults.entry(fault).or_default() += 1;
        if let Some(outage) = outage {
            self.tally.outages.push((fault, outage));
        }
        for i in self.c.started() {
            if let Some(status) = self.c.exited(i) {
                panic!("replica {} died: {status}{}", i + 1, diagnosis(&self.c));
            }
        }
    }

    /// Marks a failure: the writes acknowledged by now; gaps are measured afresh (the one in
    /// progress, begun at the last acknowledgement, counts whole).
    fn failed_now(&self) -> u64 {
        self.gaps.lock().expect("gaps").longest = Duration::ZERO;
        self.progress.done.load(Relaxed)
    }

    /// Kills `victims` at once and starts them again: once writes resume without them if a
    /// majority is left, else after a moment. The outage if the primary `p` was among them.
    async fn kill_and_restart(&mut self, victims: &[usize], p: usize) -> Option<Duration> {
        for &i in victims {
            self.c.kill9(i);
        }
        let done = self.failed_now();
        let outage = if victims.len() * 2 < self.n() {
            let outage = self.resumed(done).await;
            victims.iter().for_each(|&i| self.c.spawn(i, true));
            outage
        } else {
            tokio::time::sleep(self.rng.millis(100, 2000)).await;
            victims.iter().for_each(|&i| self.c.spawn(i, true));
            self.resumed(done).await
        };
        victims.contains(&p).then_some(outage)
    }

    /// Stops replica `i` for 1 s to `pause_max_s`; the outage if it was the primary `p`.
    async fn pause(&mut self, i: usize, p: usize) -> Option<Duration> {
        self.c.signal(i, "STOP");
        let done = self.failed_now();
        tokio::time::sleep(self.rng.millis(1000, 1000 * self.pause_max_s)).await;
        self.c.signal(i, "CONT");
        let outage = self.resumed(done).await;
        (i == p).then_some(outage)
    }

    /// Fills replica `i`'s disk; once it has stopped (or was killed for not stopping), frees
    /// the space and starts it again. The outage, from its stop, if it was the primary `p`.
    async fn full_disk(&mut self, i: usize, p: usize) -> Option<Duration> {
        // Writes go on until the log's last page is full too; the outage is the longest gap.
        self.disks.as_ref().expect("mounted").fill(i);
        if self.c.wait_exit(i, Duration::from_secs(15)).await.is_some() {
            self.tally.disk_exits += 1;
        } else {
            // A replica that has stopped must end its process; count it if it does not.
            self.tally.disk_stayed_up += 1;
            self.c.kill9(i);
        }
        let done = self.failed_now();
        self.disks.as_ref().expect("mounted").free(i);
        self.c.spawn(i, true);
        let outage = self.resumed(done).await;
        (i == p).then_some(outage)
    }

    /// Cuts the network in two for 1 s to `pause_max_s`: the primary alone, or a random
    /// minority. The outage if the primary `p` was on the minority side.
    async fn partition(&mut self, p: usize) -> Option<Duration> {
        let n = self.n();
        let size = 1 + self.rng.below((n as u64 - 1) / 2) as usize;
        let first = if self.rng.below(2) == 0 { p } else { self.pick() };
        let side: Vec<usize> = (0..size).map(|k| (first + k) % n).collect();
        self.net.as_mut().expect("namespaces").split(&side, n);
        let done = self.failed_now();
        tokio::time::sleep(self.rng.millis(1000, 1000 * self.pause_max_s)).await;
        self.net.as_mut().expect("namespaces").heal();
        let outage = self.resumed(done).await;
        side.contains(&p).then_some(outage)
    }

    fn possible(&self, fault: Fault) -> bool {
        !self.tally.skipped.contains_key(&fault)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Nothing may hold the tmpfs mounts or live in the namespaces once they go.
        for child in self.c.procs.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last lines each replica logged (earlier errors are mostly the full-disk faults dealt).
fn diagnosis(c: &Cluster) -> String {
    let mut out = String::new();
    for i in 0..c.procs.len() {
        let text = c.stderr(i);
        let lines: Vec<&str> = text.lines().collect();
        out += &format!("\n  replica {} stderr, last lines:\n    {}", i + 1, lines[lines.len().saturating_sub(4)..].join("\n    "));
    }
    out
}

/// Reads back every write from `0..upper` on one replica, pipelined: the number of keys held,
/// the acknowledged writes missing or changed, the values held that were never written.
async fn read_back(addr: SocketAddr, acked: &[bool], spec: &LoadSpec) -> (u64, u64, u64) {
    const DEPTH: u64 = 512;
    let mut stream = TcpStream::connect(addr).await.expect("connect for read-back");
    let (mut held, mut lost, mut unwritten) = (0, 0, 0);
    let mut buf = BytesMut::with_capacity(1 << 20);
    let upper = acked.len() as u64;
    let mut first = 0;
    while first < upper {
        let last = (first + DEPTH).min(upper);
        let mut out = BytesMut::new();
        for n in first..last {
            proto::get_request(&mut out, n + 1, 0, &client::request_kv(n, spec).0);
        }
        stream.write_all(&out).await.expect("send gets");
        let mut answered = 0;
        while answered < last - first {
            let Some(frame) = proto::take_frame(&mut buf).expect("a valid frame") else {
                buf.reserve(64 << 10);
                assert!(stream.read_buf(&mut buf).await.expect("read gets") > 0, "replica at {addr} hung up");
                continue;
            };
            let (id, st, value) = proto::parse_response(frame);
            assert_eq!(st, Status::Ok, "replica at {addr}: read of write {}", id - 1);
            let n = id - 1;
            answered += 1;
            let present = !value.is_empty();
            held += u64::from(present);
            if acked[n as usize] && value[..] != client::request_kv(n, spec).1[..] {
                lost += 1;
            } else if present && value[..] != client::request_kv(n, spec).1[..] {
                unwritten += 1;
            }
        }
        first = last;
    }
    (held, lost, unwritten)
}

/// Waits until every replica reports the same digest and key count; returns them.
async fn converged(c: &Cluster) -> (u64, u64) {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let mut states = Vec::new();
        for addr in c.running() {
            states.push(status(addr).await.map(|s| (s.digest, s.keys)));
        }
        if states.len() == c.procs.len() && states.iter().all(|s| s.is_some() && *s == states[0]) {
            return states[0].expect("reported");
        }
        assert!(Instant::now() < until, "replicas never converged: {states:?}{}", diagnosis(c));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// Runs `secs` of faults against one configuration, checks the outcome, prints the summary.
async fn nemesis(setup: Setup, secs: u64, seed: u64, next_fault: &mut usize) {
    let mut run = Run::start(setup, seed, secs);
    let spec =
        LoadSpec { outstanding: OUTSTANDING, connections: 2, size: 64, keys: u64::MAX, start: 0, requests: None, record_acked: true };
    run.primary().await;
    let addrs: Vec<_> = (0..run.n()).map(|i| run.c.client(i)).collect();
    let load = tokio::spawn(client::load(addrs, spec.clone(), run.progress.clone()));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        let fault = FAULTS[*next_fault % FAULTS.len()];
        *next_fault += 1;
        if run.possible(fault) {
            run.strike(fault).await;
            tokio::time::sleep(run.rng.millis(200, 1000)).await;
        }
    }
    run.progress.stop.store(true, Relaxed);
    let result: LoadResult = tokio::time::timeout(Duration::from_secs(60), load).await.expect("load stops").expect("load task");
    let (digest, keys) = converged(&run.c).await;
    // Every write issued is acknowledged or was still in flight: 0..upper holds them all.
    let issued = result.acked.iter().max().map_or(0, |&n| n + 1).max(result.acked.len() as u64 + spec.outstanding as u64 + 1);
    let mut acked = vec![false; issued as usize];
    for &n in &result.acked {
        acked[n as usize] = true;
    }
    let (mut lost, mut unwritten) = (0, 0);
    for addr in run.c.running() {
        let (held, l, u) = read_back(addr, &acked, &spec).await;
        assert_eq!(held, keys, "replica at {addr} holds keys outside the writes issued");
        (lost, unwritten) = (lost.max(l), unwritten.max(u));
    }
    print_summary(&setup, &run, started.elapsed(), seed, result.acked.len(), (lost, unwritten, digest));
    assert_eq!((lost, unwritten), (0, 0), "acknowledged writes lost / values never written{}", diagnosis(&run.c));
}

fn print_summary(setup: &Setup, run: &Run, took: Duration, seed: u64, acked: usize, (lost, unwritten, digest): (u64, u64, u64)) {
    let t = &run.tally;
    let faults: Vec<String> = t.faults.iter().map(|(f, k)| format!("{}={k}", f.name())).collect();
    let skipped: String = t.skipped.iter().map(|(f, why)| format!(" [{} skipped: {why}]", f.name())).collect();
    let longest = t.outages.iter().max_by_key(|(_, d)| *d);
    let longest = longest.map_or("none".into(), |(f, d)| format!("{:.2} s (after {})", d.as_secs_f64(), f.name()));
    let outages: Vec<String> = t.outages.iter().map(|(f, d)| format!("{}:{:.2}", f.name(), d.as_secs_f64())).collect();
    println!("nemesis {} outages s: {}", setup.name(), outages.join(" "));
    println!(
        "nemesis {} {:.0}s seed {seed}: faults {}{}; acknowledged {acked}, lost {lost}, never written {unwritten}; \
         agreement {} replicas digest {digest:016x}; longest unavailability {longest}; full disk: {} stopped, {} stayed up",
        setup.name(),
        took.as_secs_f64(),
        faults.join(" "),
        skipped,
        run.n(),
        t.disk_exits,
        t.disk_stayed_up,
    );
}

/// The configurations `NEMESIS_SETUP` selects (all by default), each for `secs`.
fn nemesis_all(secs: u64) {
    let seed = env_u64("NEMESIS_SEED").unwrap_or_else(|| std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(1, |d| d.as_nanos() as u64));
    let only = std::env::var("NEMESIS_SETUP").ok();
    let mut next_fault = (seed % FAULTS.len() as u64) as usize;
    rt().block_on(async {
        for setup in SETUPS.iter().filter(|s| only.as_ref().is_none_or(|o| *o == s.name())) {
            nemesis(*setup, secs, seed, &mut next_fault).await;
        }
    });
}

/// CI's budget: a few seconds of faults per configuration, each kind dealt at least once
/// over the four.
#[test]
fn nemesis_short() {
    nemesis_all(env_u64("NEMESIS_SHORT_SECS").unwrap_or(8));
}

/// The long run: `NEMESIS_SECS` (600 by default) per configuration.
#[test]
#[ignore = "long: NEMESIS_SECS=600 cargo test --release -p rsl-engine --test nemesis -- --ignored --nocapture"]
fn nemesis_long() {
    nemesis_all(env_u64("NEMESIS_SECS").unwrap_or(600));
}
