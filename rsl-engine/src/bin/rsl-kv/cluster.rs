//! `rsl-kv cluster`: replica processes on 127.0.0.1 (3 by default; with `--tls`, speaking
//! mutual TLS), load against the primary, and a live progress line; then throughput and
//! latency percentiles, and whether the replicas agree. Every flag is checked before anything
//! starts, and the load begins only once every replica has said it is listening.

use crate::client::{self, ms, Conn, LoadSpec, Progress};
use crate::ClusterArgs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Replica processes one cluster starts: a local test bed, not a deployment.
const REPLICAS: RangeInclusive<usize> = 1..=64;
/// Bytes per request: the 2-byte key length, the 16-byte key and at least one byte of value,
/// up to a size that still fits a Paxos message with room to spare.
const SIZES: RangeInclusive<usize> = 19..=1 << 20;
const OUTSTANDING: RangeInclusive<usize> = 1..=65_536;
/// A replica serves 1024 client connections at once (`server::MAX_CLIENTS`).
const CONNECTIONS: RangeInclusive<usize> = 1..=1024;
/// Rings per replica process (`rsl-kv replica --rings`).
const RINGS: RangeInclusive<u16> = 1..=32;
/// `rsl-kv replica --rings` shifts ring k's ports by this times k.
const RING_SHIFT: u16 = 10;
/// Starts on free ports: a port another program takes between the pick and the bind costs
/// one attempt.
const ATTEMPTS: usize = 3;
/// How long a replica may take to bind its ports (it replays its logs first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Checks every flag before anything starts; the error names the flag and what it allows.
fn validate(args: &ClusterArgs) -> Result<(), String> {
    crate::server::check_protocol(args.version, args.window, args.net_delay_us)?;
    crate::server::check_transport(args.transport, args.tls, args.net_delay_us)?;
    within("--replicas", args.replicas, REPLICAS)?;
    within("--outstanding", args.outstanding, OUTSTANDING)?;
    within("--connections", args.connections, CONNECTIONS)?;
    within("--size", args.size, SIZES)?;
    if args.keys == 0 {
        return Err("--keys 0: must be at least 1".into());
    }
    within("--rings", args.rings, RINGS)?;
    if args.outstanding < args.rings as usize {
        return Err(format!("--outstanding {}: at least one request in flight per ring (--rings {})", args.outstanding, args.rings));
    }
    if let Some(base) = args.base_port {
        fixed_ports(base, args.replicas)?;
    }
    if args.rings > 1 {
        check_rings(args)?;
    }
    Ok(())
}

/// Several rings per process take fixed ports: ring k's are the first ring's shifted by 10k,
/// so a replica's three ports must fit in the shift and the last ring's within u16.
fn check_rings(args: &ClusterArgs) -> Result<(), String> {
    let Some(base) = args.base_port else { return Err(format!("--rings {}: needs --base-port", args.rings)) };
    if 3 * args.replicas > usize::from(RING_SHIFT) {
        return Err(format!("--rings {}: at most 3 replicas (ring k's ports are shifted by {RING_SHIFT}k)", args.rings));
    }
    let last = u64::from(base) + u64::from(RING_SHIFT) * u64::from(args.rings - 1) + 3 * args.replicas as u64 - 1;
    if last > u64::from(u16::MAX) {
        return Err(format!("--base-port {base}: {} rings need ports up to {last}, within 1..=65535", args.rings));
    }
    Ok(())
}

fn within<T: PartialOrd + std::fmt::Display>(flag: &str, value: T, range: RangeInclusive<T>) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!("{flag} {value}: must be within {}..={}", range.start(), range.end()))
    }
}

/// One replica's ports on 127.0.0.1; its learn port is `paxos + 1`.
#[derive(Clone, Copy)]
struct Ports {
    paxos: u16,
    client: u16,
}

/// `--base-port`: replica i at base+3i (Paxos), +1 (learn), +2 (clients), all within u16.
fn fixed_ports(base: u16, replicas: usize) -> Result<Vec<Ports>, String> {
    let last = u64::from(base) + 3 * replicas as u64 - 1;
    if base == 0 || last > u64::from(u16::MAX) {
        return Err(format!("--base-port {base}: {replicas} replicas need ports {base}..={last}, within 1..=65535"));
    }
    Ok((0..replicas as u16).map(|i| Ports { paxos: base + 3 * i, client: base + 3 * i + 2 }).collect())
}

/// Ports the OS reports free: each replica's Paxos port with the next one (its learn port) and
/// a client port. Every probe stays bound until all are picked, so no two replicas share one;
/// they are released just before the replicas start. Another program may take one in that
/// instant: the replica then fails to bind, and [`start`] reports its error instead of
/// waiting for a `listening` line that never comes. So a start can fail (and is tried again
/// on new ports) but never drives someone else's replicas: the client and agreement traffic
/// begins only once each of our own processes holds its ports, which no other socket can then
/// share (no `SO_REUSEPORT`). The alternative, each replica binding port 0 and reporting,
/// would not do: the members' addresses must be known when they start (the initial
/// configuration) and the learn port must be the Paxos port plus one.
fn free_ports(replicas: usize) -> Result<Vec<Ports>, String> {
    let bind = |port| TcpListener::bind((Ipv4Addr::LOCALHOST, port));
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..replicas {
        // An OS-chosen port whose successor is free as well; a bounded search. The ports tried
        // stay held, so that the OS does not offer them again.
        let mut paxos = None;
        for _ in 0..100 {
            let first = bind(0).map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
            let p = port(&first).map_err(|e| e.to_string())?;
            held.push(first);
            if let Some(next) = p.checked_add(1).and_then(|n| bind(n).ok()) {
                held.push(next);
                paxos = Some(p);
                break;
            }
        }
        let paxos = paxos.ok_or("no two consecutive free ports on 127.0.0.1")?;
        let client = bind(0).and_then(|l| port(&l).map(|p| (p, l))).map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
        held.push(client.1);
        ports.push(Ports { paxos, client: client.0 });
    }
    Ok(ports)
}

/// The replica processes; killed if still running when this is dropped.
struct Processes(Vec<Child>);

impl Processes {
    /// SIGTERM, so each replica unloads cleanly, then wait.
    fn stop(&mut self) {
        for child in &self.0 {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a replica's stdout said: its `listening` line, or nothing before it closed.
enum Report {
    Listening(usize),
    Closed(usize),
}

/// Copies replica `id`'s stderr to ours, each line marked with the replica, and returns its last
/// line once it closes.
fn relay_stderr(child: &mut Child, id: &str) -> Option<JoinHandle<String>> {
    let stderr = child.stderr.take()?;
    let mark = format!("[replica {id}]");
    Some(std::thread::spawn(move || {
        let mut last = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{mark} {line}");
            if !line.trim().is_empty() {
                last = line;
            }
        }
        last
    }))
}

/// Reports replica `i`'s `listening` line, then keeps reading its stdout (so that it never
/// blocks on a full pipe) and reports when it closes.
fn watch_stdout(child: &mut Child, i: usize, reports: mpsc::Sender<Report>) {
    let Some(stdout) = child.stdout.take() else { return drop(reports.send(Report::Closed(i))) };
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("listening on ") {
                let _ = reports.send(Report::Listening(i));
            }
        }
        let _ = reports.send(Report::Closed(i));
    });
}

/// Starts the replicas and waits until each reports that it holds its ports. A replica that
/// exits (a port taken, a bad directory) or stays silent fails the start with its own error.
fn start(args: &ClusterArgs, dir: &std::path::Path, ports: &[Ports], tls: Option<&[crate::tls::Files]>) -> Result<Processes, String> {
    let members: Vec<String> = ports.iter().enumerate().map(|(i, p)| format!("{}={}", i + 1, p.paxos)).collect();
    let ids: Vec<String> = (1..=ports.len()).map(|i| i.to_string()).collect();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (reports, listening) = mpsc::channel();
    let mut procs = Processes(Vec::new());
    let mut stderr = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let mut cmd = Command::new(&exe);
        cmd.args(["replica", "--id", &ids[i], "--port", &p.paxos.to_string(), "--client-port", &p.client.to_string()])
            .args(["--members", &members.join(","), "--version", &args.version.to_string(), "--window", &args.window.to_string()])
            .args(["--net-delay-us", &args.net_delay_us.to_string(), "--transport", &args.transport.to_string()])
            .args([
                "--rings",
                &args.rings.to_string(),
                "--journal-writer",
                &args.journal_writer.to_string(),
                "--network",
                &args.network.to_string(),
                "--peer-connections",
                &args.peer_connections.to_string(),
            ])
            .arg("--dir")
            .arg(dir)
            .arg("--ignore-sigint")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if args.no_sync {
            cmd.arg("--no-sync");
        }
        if args.exclusive_votes {
            cmd.arg("--exclusive-votes");
        }
        if let Some(nvm) = &args.nvm {
            use clap::ValueEnum;
            let persistence = args.nvm_persistence.to_possible_value().expect("every mode has a name");
            cmd.arg("--nvm").arg(nvm.join(format!("{}.nvm", ids[i])));
            cmd.args(["--nvm-size", &args.nvm_size.to_string(), "--nvm-persistence", persistence.get_name()]);
        }
        if let Some(files) = tls {
            cmd.args(files[i].args(&ids));
        }
        let mut child = cmd.spawn().map_err(|e| format!("starting replica {}: {e}", i + 1))?;
        stderr.push(relay_stderr(&mut child, &ids[i]));
        watch_stdout(&mut child, i, reports.clone());
        procs.0.push(child);
    }
    let until = Instant::now() + READY_TIMEOUT;
    // Per replica: one with several rings prints a line for each.
    let mut waiting = vec![args.rings; ports.len()];
    while waiting.iter().any(|&w| w > 0) {
        match listening.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Report::Listening(i)) => waiting[i] = waiting[i].saturating_sub(1),
            Ok(Report::Closed(i)) => {
                let status = procs.0[i].wait().map_or_else(|e| e.to_string(), |s| s.to_string());
                let why = stderr[i].take().and_then(|t| t.join().ok()).unwrap_or_default();
                let why = why.strip_prefix("rsl-kv: ").unwrap_or(&why);
                return Err(format!("replica {} did not start ({status}): {why}", i + 1));
            }
            Err(_) => {
                return Err(format!(
                    "{} of {} replicas listening after {READY_TIMEOUT:?}",
                    waiting.iter().filter(|&&w| w == 0).count(),
                    ports.len()
                ))
            }
        }
    }
    Ok(procs)
}

/// [`start`] on `--base-port`, or on free ports. Free ports are tried [`ATTEMPTS`] times when
/// the replicas' directories (and persistent logs) are new: when another program took one of
/// them between the pick and the bind, the replicas that did start are stopped, their data
/// (made for the ports given up) deleted, and new ports picked.
fn start_on_some_ports(
    args: &ClusterArgs,
    dir: &std::path::Path,
    ids: &[String],
    tls: Option<&[crate::tls::Files]>,
) -> Result<(Processes, Vec<Ports>), String> {
    if let Some(base) = args.base_port {
        let ports = fixed_ports(base, args.replicas)?;
        return start(args, dir, &ports, tls).map(|procs| (procs, ports));
    }
    // Only data this command made is deleted for a retry: none of the replicas' directories
    // may exist before the first attempt (a `--dir` of an earlier run keeps its data).
    let nvm_logs: Vec<_> = args.nvm.iter().flat_map(|nvm| ids.iter().map(|id| nvm.join(format!("{id}.nvm")))).collect();
    let fresh = ids.iter().all(|id| !dir.join(id).exists()) && nvm_logs.iter().all(|log| !log.exists());
    let mut attempt = 1;
    loop {
        let ports = free_ports(args.replicas)?;
        match start(args, dir, &ports, tls) {
            Ok(procs) => return Ok((procs, ports)),
            Err(why) if fresh && attempt < ATTEMPTS && why.contains("cannot listen on") => {
                eprintln!("rsl-kv: {why}; trying other ports");
                for id in ids {
                    let _ = std::fs::remove_dir_all(dir.join(id));
                }
                // A persistent log outlives its data directory only to be written back into it.
                for log in &nvm_logs {
                    let _ = std::fs::remove_file(log);
                }
                attempt += 1;
            }
            Err(why) => return Err(why),
        }
    }
}

pub fn run(args: ClusterArgs) -> Result<(), String> {
    validate(&args)?;
    let dir = args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("rsl-kv-{}", std::process::id())));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ids: Vec<String> = (1..=args.replicas).map(|i| i.to_string()).collect();
    let tls = if args.tls { Some(crate::tls::throwaway(&dir, &ids)?) } else { None };
    if tls.is_some() && !args.json {
        eprintln!("mutual TLS between the replicas: a throwaway CA and their certificates in {}", dir.join("tls").display());
    }
    let result = start_on_some_ports(&args, &dir, &ids, tls.as_deref()).and_then(|(mut procs, ports)| {
        let clients: Vec<SocketAddr> = ports.iter().map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p.client))).collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| e.to_string())?;
        let pids: Vec<u32> = procs.0.iter().map(Child::id).collect();
        let result = rt.block_on(drive(&args, clients, &pids));
        procs.stop();
        result
    });
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// CPU time the processes `pids` have used so far, in microseconds (user and system, from
/// `/proc/<pid>/stat`, whose clock ticks are Linux's fixed USER_HZ of 100 per second); 0 where
/// it cannot be read.
fn cpu_us(pids: &[u32]) -> u64 {
    let ticks = |pid: &u32| -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    pids.iter().filter_map(ticks).sum::<u64>() * 10_000
}

/// Ring k's client addresses: the first ring's shifted by 10k.
fn ring_clients(clients: &[SocketAddr], k: u16) -> Vec<SocketAddr> {
    clients.iter().map(|a| SocketAddr::new(a.ip(), a.port() + RING_SHIFT * k)).collect()
}

/// Ring k's share of `total` (requests in flight, connections): as even as it divides, each
/// ring at least one.
fn share(total: usize, rings: u16, k: u16) -> usize {
    let (rings, k) = (usize::from(rings), usize::from(k));
    (total / rings + usize::from(k < total % rings)).max(1)
}

async fn drive(args: &ClusterArgs, clients: Vec<SocketAddr>, pids: &[u32]) -> Result<(), String> {
    let rings: Vec<Vec<SocketAddr>> = (0..args.rings).map(|k| ring_clients(&clients, k)).collect();
    let mut primaries = Vec::new();
    for (k, addrs) in rings.iter().enumerate() {
        let primary = client::wait_for_primary(addrs, Duration::from_secs(60)).await;
        primaries.push(primary.ok_or(format!("ring {k}: no primary was elected within 60 s"))?);
    }
    if !args.json {
        let on = primaries.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        eprintln!("{} replicas up, primaries at {on}; {} requests of {} B in flight", clients.len(), args.outstanding, args.size);
    }
    let progress = Arc::new(Progress::default());
    let cpu_before = cpu_us(pids);
    let loads: Vec<_> = (0..args.rings)
        .map(|k| {
            let outstanding = share(args.outstanding, args.rings, k);
            let connections = share(args.connections, args.rings, k).min(outstanding);
            let spec =
                LoadSpec { outstanding, connections, size: args.size, keys: args.keys, start: 0, requests: None, record_acked: false };
            tokio::spawn(client::load(rings[usize::from(k)].clone(), spec, progress.clone()))
        })
        .collect();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let done = progress.done.load(Relaxed);
        if !args.json {
            let mut w = progress.window.lock().expect("window");
            eprint!(
                "\r[{:>4}s] {:>9} req/s   p50 {:>9}  p99 {:>9}  total {done}   ",
                started.elapsed().as_secs(),
                done - last,
                ms(w.value_at_quantile(0.5)),
                ms(w.value_at_quantile(0.99))
            );
            w.reset();
        }
        last = done;
        if args.duration > 0 && started.elapsed() >= Duration::from_secs(args.duration) {
            break;
        }
    }
    progress.stop.store(true, Relaxed);
    let mut results = Vec::new();
    for load in loads {
        results.push(load.await.map_err(|e| e.to_string())?);
    }
    let mut lat = client::histogram();
    results.iter().for_each(|r| lat.add(&r.latency_us).expect("same bounds"));
    let elapsed = results.iter().map(|r| r.elapsed).max().unwrap_or_default();
    // The replicas' CPU per request: what a busy shared machine's load changes least.
    let cpu_per_request = cpu_us(pids).saturating_sub(cpu_before) as f64 / lat.len().max(1) as f64;
    let ops = lat.len() as f64 / elapsed.as_secs_f64();
    let mut agree = Ok(0);
    for addrs in &rings {
        agree = agree.and(agreement(addrs).await);
    }
    if args.json {
        let nvm = match args.nvm {
            None => "off".to_string(),
            Some(_) => format!("{:?}", args.nvm_persistence),
        };
        // Each ring's figures after the totals, whose names a reader finds first.
        let per_ring: Vec<String> = results
            .iter()
            .map(|r| {
                let (l, secs) = (&r.latency_us, r.elapsed.as_secs_f64());
                format!(
                    "{{\"ops_per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{}}}",
                    l.len() as f64 / secs,
                    l.value_at_quantile(0.5),
                    l.value_at_quantile(0.99)
                )
            })
            .collect();
        println!(
            "{{\"requests\":{},\"seconds\":{:.3},\"ops_per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"size\":{},\"outstanding\":{},\"sync\":{},\"version\":{},\"window\":{},\"net_delay_us\":{},\"exclusive_votes\":{},\"replica_cpu_us_per_request\":{:.2},\"tls\":{},\"nvm\":\"{}\",\"replicas_agree\":{},\"rings\":{},\"per_ring\":[{}]}}",
            lat.len(), elapsed.as_secs_f64(), ops, lat.value_at_quantile(0.5), lat.value_at_quantile(0.99), lat.value_at_quantile(0.999),
            args.size, args.outstanding, !args.no_sync, args.version, args.window, args.net_delay_us, args.exclusive_votes, cpu_per_request, args.tls, nvm, agree.is_ok(),
            args.rings, per_ring.join(",")
        );
    } else {
        eprintln!();
        println!("{} requests in {:.1} s: {ops:.0} req/s, {cpu_per_request:.1} µs of replica CPU each", lat.len(), elapsed.as_secs_f64());
        println!(
            "latency p50 {}  p99 {}  p999 {}  max {}",
            ms(lat.value_at_quantile(0.5)),
            ms(lat.value_at_quantile(0.99)),
            ms(lat.value_at_quantile(0.999)),
            ms(lat.max())
        );
        for (k, r) in results.iter().enumerate().filter(|_| args.rings > 1) {
            let l = &r.latency_us;
            let ops = l.len() as f64 / r.elapsed.as_secs_f64();
            println!("ring {k}: {ops:.0} req/s, p50 {}  p99 {}", ms(l.value_at_quantile(0.5)), ms(l.value_at_quantile(0.99)));
        }
        match &agree {
            Ok(digest) => println!("all {} replicas hold the same state (digest {digest:016x})", clients.len()),
            Err(e) => println!("replicas disagree: {e}"),
        }
    }
    agree.map(|_| ())
}

/// Waits (up to 10 s) until every replica reports the same state digest.
async fn agreement(clients: &[SocketAddr]) -> Result<u64, String> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut digests = Vec::new();
        for addr in clients {
            let status = async { Conn::connect(*addr).await?.status().await }.await;
            digests.push(status.map(|s| (s.digest, s.keys)).map_err(|e| format!("{addr}: {e}")));
        }
        let ok: Vec<_> = digests.iter().filter_map(|d| d.as_ref().ok()).collect();
        if ok.len() == clients.len() && ok.windows(2).all(|w| w[0] == w[1]) {
            return Ok(ok[0].0);
        }
        if Instant::now() > until {
            return Err(format!("{digests:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
